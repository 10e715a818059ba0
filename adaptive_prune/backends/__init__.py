"""Backends of the ops: per-device implementations (C++ CPU core, Triton)."""
