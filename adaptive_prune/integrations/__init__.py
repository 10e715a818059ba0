"""Integrations of adaptive_prune with serving engines (optional; each imports its engine lazily)."""
