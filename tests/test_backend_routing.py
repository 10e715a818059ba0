"""The routing layer (adaptive_prune/backends/__init__.py): which backend serves an op call.

The ``backend()`` context is thread-local and nests; outside it the process default
``ADAPTIVE_PRUNE_BACKEND`` is read at every call; names and knobs are checked with clear
errors; float64 and empty inputs go to the reference; ``auto`` falls back to the reference
with one warning when the device's fast backend is unavailable; a backend asked for by name
that cannot serve the call raises.
"""

from __future__ import annotations

import threading
import warnings

import pytest
import torch
from _backends import call
from _inputs import CASES, EPS, offsets
from conftest import HAS_CUDA, TRITON_INTERPRET

import adaptive_prune
from adaptive_prune import backends, ops
from adaptive_prune.backends import cpp as cpp_backend
from adaptive_prune.backends import triton as triton_backend
from adaptive_prune.ops import reference as ref

X = CASES["no-text-zero-row"].x(torch.float32)  # [38, 32]
CU = CASES["no-text-zero-row"].cu_seqlens
GREEDY = (X, CU, torch.tensor([6, 3, 11]), "maxmin", EPS)


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)


@pytest.fixture
def fresh_warnings(monkeypatch):
    """Forget which fallbacks already warned (the warning is given once per process)."""
    monkeypatch.setattr(backends, "_WARNED", set())


# --------------------------------------------------------------------------------------------
# the context: thread-local, nesting, process default
# --------------------------------------------------------------------------------------------
def test_two_threads_use_different_backends():
    inside = threading.Barrier(3)
    done = threading.Barrier(3)
    seen: dict[str, tuple] = {}

    def worker(name, **knobs):
        with adaptive_prune.backend(name, **knobs):
            inside.wait(timeout=30)  # both threads are inside their blocks now
            seen[name] = (backends.current(), backends.serving("greedy_select", "cpu", GREEDY))
            done.wait(timeout=30)

    threads = [
        threading.Thread(target=worker, args=("reference",)),
        threading.Thread(target=worker, args=("auto",), kwargs={"greedy_window": 16}),
    ]
    for t in threads:
        t.start()
    inside.wait(timeout=30)
    main = backends.current()  # the main thread is in no block
    done.wait(timeout=30)
    for t in threads:
        t.join()
    assert main == ("auto", {})
    assert seen["reference"] == (("reference", {}), ("reference", {}))
    assert seen["auto"][0] == ("auto", {"greedy_window": 16})
    # auto on the CPU: the C++ backend when it is there (the Triton knob is not passed on)
    fast = "cpp" if backends.unavailable("cpp") is None else "reference"
    assert seen["auto"][1] == (fast, {})


def test_blocks_nest_and_restore():
    assert backends.current() == ("auto", {})
    with adaptive_prune.backend("triton", greedy_window=0):
        with adaptive_prune.backend("reference"):
            assert backends.current() == ("reference", {})
        assert backends.current() == ("triton", {"greedy_window": 0})
        with pytest.raises(KeyError):
            with adaptive_prune.backend("reference"):
                raise KeyError("inside")
        assert backends.current() == ("triton", {"greedy_window": 0})
    assert backends.current() == ("auto", {})


def test_names_are_case_and_space_insensitive():
    with adaptive_prune.backend(" Reference "):
        assert backends.current()[0] == "reference"


def test_process_default_is_read_at_every_call(monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, "reference")
    assert backends.serving("greedy_select", "cpu", GREEDY) == ("reference", {})
    if TRITON_INTERPRET:  # the interpreter serves CPU tensors
        monkeypatch.setenv(backends.ENV_VAR, "triton")
        assert backends.serving("greedy_select", "cpu", GREEDY)[0] == "triton"
    with adaptive_prune.backend("reference"):  # a block wins over the default
        assert backends.serving("greedy_select", "cpu", GREEDY)[0] == "reference"
    monkeypatch.setenv(backends.ENV_VAR, "")
    assert backends.current() == ("auto", {})
    monkeypatch.setenv(backends.ENV_VAR, "fastest")
    with pytest.raises(ValueError, match=r"ADAPTIVE_PRUNE_BACKEND: unknown backend 'fastest'"):
        torch.ops.adaptive_prune.greedy_select(*GREEDY)


# --------------------------------------------------------------------------------------------
# names and knobs
# --------------------------------------------------------------------------------------------
def test_unknown_backend_is_an_error():
    with pytest.raises(ValueError, match=r"unknown backend 'cuda'; expected one of"):
        with adaptive_prune.backend("cuda"):
            pass


BAD_KNOBS = [
    ("cpp", {"greedy_window": 16}, TypeError, r"no knob 'greedy_window'.*num_threads, proj_dim"),
    ("reference", {"proj_dim": 0}, TypeError, r"no knob 'proj_dim'; knobs: none"),
    ("triton", {"greedy_window": 48}, ValueError, r"greedy_window=48.*power of two"),
    ("triton", {"greedy_window": 256}, ValueError, r"power of two in \[16, 128\]"),
    ("triton", {"greedy_window": True}, ValueError, r"greedy_window=True"),
    ("triton", {"block_budget_mb": -1}, ValueError, r"block_budget_mb=-1.*finite number"),
    ("triton", {"block_budget_mb": float("nan")}, ValueError, r"block_budget_mb=nan"),
    ("cpp", {"proj_dim": -2}, ValueError, r"proj_dim=-2"),
    ("cpp", {"num_threads": 0}, ValueError, r"num_threads=0.*>= 1"),
    ("auto", {"block_size": 1}, TypeError, r"no knob 'block_size'"),
]


@pytest.mark.parametrize(
    "name, knobs, error, match",
    [
        pytest.param(*b, id=f"{b[0]}-" + ",".join(f"{k}={v}" for k, v in b[1].items()))
        for b in BAD_KNOBS
    ],
)
def test_bad_knobs_are_errors(name, knobs, error, match):
    with pytest.raises(error, match=match):
        with adaptive_prune.backend(name, **knobs):
            pass


def test_auto_takes_every_backends_knobs():
    knobs = dict(proj_dim=0, num_threads=1, greedy_window=0, block_budget_mb=1.5)
    with adaptive_prune.backend("auto", **knobs):
        assert backends.current() == ("auto", knobs)


# --------------------------------------------------------------------------------------------
# the shared guards
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["auto", "cpp", "triton"])
def test_float64_goes_to_the_reference(name):
    x64 = X.double()
    args = (x64, *GREEDY[1:])
    with adaptive_prune.backend(name):
        assert backends.serving("greedy_select", "cpu", args) == ("reference", {})
        got = torch.ops.adaptive_prune.greedy_select(*args)
    assert torch.equal(got, ref.greedy_select(*args))


@pytest.mark.parametrize("name", ["auto", "cpp", "triton"])
def test_empty_input_goes_to_the_reference(name):
    x = torch.zeros(0, 8)
    args = (x, offsets([0, 0]), torch.tensor([0, 0]), "maxmin", EPS)
    with adaptive_prune.backend(name):
        assert backends.serving("greedy_select", "cpu", args) == ("reference", {})
        assert torch.ops.adaptive_prune.greedy_select(*args).shape == (0,)
        scores = torch.ops.adaptive_prune.budget_scores(
            x, offsets([0, 0]), offsets([2]), None, None, 0.05, 10.0, EPS, "mean"
        )
    zeros = [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0], [[0.0] * 8, [0.0] * 8], []]
    assert [s.tolist() for s in scores] == zeros


# --------------------------------------------------------------------------------------------
# unavailable and unsuitable backends
# --------------------------------------------------------------------------------------------
def test_auto_falls_back_to_the_reference_with_one_warning(monkeypatch, fresh_warnings):
    monkeypatch.setattr(cpp_backend, "unavailable", lambda: "a test says so")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with adaptive_prune.backend("auto"):
            first = torch.ops.adaptive_prune.greedy_select(*GREEDY)
            second = torch.ops.adaptive_prune.greedy_select(*GREEDY)
            assert backends.serving("greedy_select", "cpu", GREEDY) == ("reference", {})
    ours = [w for w in caught if "adaptive_prune" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in ours]
    msg = str(ours[0].message)
    assert ours[0].category is RuntimeWarning
    assert "cpp backend is not available for cpu tensors (a test says so)" in msg
    assert "ADAPTIVE_PRUNE_BACKEND=reference" in msg
    want = ref.greedy_select(*GREEDY)
    assert torch.equal(first, want) and torch.equal(second, want)
    assert backends.status()["auto"]["cpu"] == "reference"


def test_reference_on_purpose_does_not_warn(monkeypatch, fresh_warnings):
    monkeypatch.setattr(cpp_backend, "unavailable", lambda: "a test says so")
    monkeypatch.setenv(backends.ENV_VAR, "reference")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.ops.adaptive_prune.greedy_select(*GREEDY)


def test_a_named_backend_that_is_unavailable_raises(monkeypatch):
    monkeypatch.setattr(cpp_backend, "unavailable", lambda: "a test says so")
    monkeypatch.setattr(triton_backend, "unavailable", lambda: "no triton in this test")
    with adaptive_prune.backend("cpp"):
        with pytest.raises(RuntimeError, match=r"backend 'cpp' is not available: a test says so"):
            torch.ops.adaptive_prune.greedy_select(*GREEDY)
    with adaptive_prune.backend("triton"):
        with pytest.raises(RuntimeError, match=r"'triton' is not available: no triton in this"):
            torch.ops.adaptive_prune.greedy_select(*GREEDY)


def test_cpp_cannot_serve_cuda_tensors():
    """The decision for CUDA tensors (the call itself needs a GPU: test below)."""
    with adaptive_prune.backend("cpp"):
        with pytest.raises(ValueError, match=r"'cpp' cannot serve cuda tensors.*runs on the CPU"):
            backends.serving("greedy_select", "cuda", GREEDY)


@pytest.mark.gpu
def test_cpp_on_cuda_tensors_raises():
    with adaptive_prune.backend("cpp"):
        with pytest.raises(ValueError, match=r"'cpp' cannot serve cuda tensors"):
            torch.ops.adaptive_prune.greedy_select(X.cuda(), *GREEDY[1:])


def test_triton_on_cpu_tensors_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with adaptive_prune.backend("triton"):
        with pytest.raises(ValueError, match=r"Triton needs CUDA tensors .or TRITON_INTERPRET=1"):
            torch.ops.adaptive_prune.greedy_select(*GREEDY)
    with adaptive_prune.backend("auto"):  # auto never picks Triton for CPU tensors
        assert backends.serving("greedy_select", "cpu", GREEDY)[0] in ("cpp", "reference")


# ops that no fast backend implements yet: the routing serves them with the reference
REFERENCE_ONLY: set[str] = set()


@pytest.mark.interpreter
def test_every_op_can_be_served_by_each_backend_here():
    x = torch.ones(3, 4)
    triton_on = "cuda" if HAS_CUDA and not TRITON_INTERPRET else "cpu"
    for name in ops.ALL_OPS:
        fast = name not in REFERENCE_ONLY
        with adaptive_prune.backend("triton"):
            want = "triton" if fast else "reference"
            assert backends.serving(name, triton_on, (x,))[0] == want, name
        with adaptive_prune.backend("reference"):
            assert backends.serving(name, "cpu", (x,))[0] == "reference", name
        if backends.unavailable("cpp") is None:
            with adaptive_prune.backend("cpp"):
                want = "cpp" if fast else "reference"
                assert backends.serving(name, "cpu", (x,))[0] == want, name


def test_status_reports_each_backend():
    st = backends.status()
    assert st["current"] == "auto" and st["env"] is None
    assert st["cpp"]["available"] == (backends.unavailable("cpp") is None)
    assert st["auto"]["cpu"] == ("cpp" if st["cpp"]["available"] else "reference")
    with adaptive_prune.backend("triton", block_budget_mb=8):
        st = backends.status()
        assert (st["current"], st["knobs"]) == ("triton", {"block_budget_mb": 8})


def test_cpp_projection_knob_keeps_the_result():
    """The C++ projection knob changes the speed, never the result (the filter is exact)."""
    if backends.unavailable("cpp") is not None:
        pytest.skip(f"the C++ backend is unavailable: {backends.unavailable('cpp')}")
    want = ref.greedy_select(*GREEDY)
    for proj in (-1, 0, 8):
        (got,) = call("cpp", "greedy_select", GREEDY, keep_cpu=(1, 2), proj_dim=proj)
        assert torch.equal(got, want), proj
