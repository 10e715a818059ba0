"""Integrations with model runtimes: Hugging Face transformers (:mod:`.hf`) and vLLM."""
