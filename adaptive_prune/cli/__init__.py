"""Command-line tools: ``python -m adaptive_prune demo`` and ``info``."""
