"""Bundled real-data fixture: DINOv2-S/14-derived patch tokens of 13 public-domain/CC0 images.

``load_fixture()`` returns the arrays of ``real_tokens.npz`` (numpy only). Image ``i`` owns
``tokens[cu_seqlens[i]:cu_seqlens[i+1]]`` on a ``grid_hw[i]`` patch grid (256 or 576 tokens,
dim 384, float16); ``thumbs[i]`` is the exact crop the model saw, and ``query_tokens`` is an
exemplar query made from a different view of ``query_source``. The features are not
text-aligned. ``scripts/make_fixture.py`` in the repository (run with the tooling venv)
records the provenance, the licences and the full key list.
"""

from __future__ import annotations

from importlib import resources

import numpy as np

FIXTURE_NAME = "real_tokens.npz"

__all__ = ["FIXTURE_NAME", "load_fixture"]


def load_fixture() -> dict[str, np.ndarray]:
    """Load the bundled fixture as a dict of numpy arrays (strings as 0-d ``str`` arrays)."""
    with resources.files(__name__).joinpath(FIXTURE_NAME).open("rb") as f:
        with np.load(f, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
