"""What every benchmark script shares: inputs, timers, per-op timing, run conditions, CSV.

Imported as ``_harness`` by the scripts in this folder (each puts the repository and this folder
on ``sys.path`` first). Nothing here imports ``adaptive_prune`` at import time, and nothing
changes a module attribute: backends are chosen with ``adaptive_prune.backend(...)`` by the
callers, and the ops are observed with a ``TorchDispatchMode`` (:class:`OpTimes`,
:class:`OpCapture`), which sees every ``torch.ops.adaptive_prune.*`` call without replacing it.

- inputs: :func:`real_576` (16 x 576 real 384-d tokens and a 43-token query), :func:`lift`
  (a seeded orthogonal map ``384 -> D``: norms and cosines kept), :func:`real_16x576` (both
  lifted, with ``text_rows`` query rows), :func:`real_nx576` (any number of real 576-token
  images: the 16 of :func:`real_576`, then seeded noisy copies), :func:`noisy`,
  :func:`synthetic` (clustered tokens with near-duplicate images);
- timers: :class:`Timer` (CUDA events for CUDA work, wall time otherwise), :func:`timed`,
  :func:`once`, :class:`OpTimes` (per-op split);
- conditions: :func:`conditions` (date, commit, machine, CPU, GPU, threads, load, versions,
  backends);
- output: :func:`append_csv` (one header per file, checked; new columns are added only here,
  at the end of the header), :func:`fmt_ms`.
"""

from __future__ import annotations

import csv
import datetime as _dt
import math
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
FIXTURE = REPO / "adaptive_prune" / "data" / "real_tokens.npz"
BENCH = REPO / "benchmarks" / "data" / "bench_tokens.npz"
IMAGES, TOKENS = 16, 576
NAMESPACE = "adaptive_prune"


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------
def real_576(images: int = IMAGES) -> tuple[np.ndarray, list[str], np.ndarray]:
    """``images`` (at most 16) x 576 real 384-d tokens (float32, concatenated), the image names,
    and the fixture's 43-token exemplar query.

    The tokens are real DINOv2-S/14 patch tokens: the eight 576-token images of the fixture
    ``adaptive_prune/data/real_tokens.npz`` and the eight 576-token views of
    ``benchmarks/data/bench_tokens.npz``. Four of the latter are exact copies of fixture images;
    they get seeded Gaussian noise of 5 % of each token's norm (name suffix ``~``), so they act
    as near-duplicate views instead of creating exact ties.
    """
    fx = np.load(FIXTURE, allow_pickle=False)
    parts, names = [], []
    cu = fx["cu_seqlens"]
    for i in range(len(cu) - 1):
        if cu[i + 1] - cu[i] == TOKENS:
            parts.append(fx["tokens"][cu[i] : cu[i + 1]].astype(np.float32))
            names.append(str(fx["names"][i]))
    bench = np.load(BENCH, allow_pickle=False)
    for prefix in bench["index"]:
        c = bench[f"{prefix}/cu_seqlens"]
        for i in range(len(c) - 1):
            if c[i + 1] - c[i] != TOKENS:
                continue
            t = bench[f"{prefix}/tokens"][c[i] : c[i + 1]].astype(np.float32)
            name = str(bench[f"{prefix}/names"][i])
            if any(np.array_equal(t, p) for p in parts):  # an exact copy: make it a near-dup
                rng = np.random.default_rng(len(parts))
                scale = 0.05 * np.linalg.norm(t, axis=1, keepdims=True) / math.sqrt(t.shape[1])
                t = t + (rng.standard_normal(t.shape) * scale).astype(np.float32)
                name += "~"
            parts.append(t)
            names.append(name)
    assert len(parts) == IMAGES, f"expected {IMAGES} images of {TOKENS} tokens, got {len(parts)}"
    parts, names = parts[:images], names[:images]
    return np.concatenate(parts), names, fx["query_tokens"].astype(np.float32)


def lift(x: np.ndarray, dim: int, seed: int = 0) -> torch.Tensor:
    """``x [*, d] -> [*, dim]`` (float32) by a fixed seeded orthogonal map ``Q [dim, d]``,
    ``Q^T Q = I``: every norm and cosine is kept, so the selection problem is the same at every
    ``dim`` (the lifted tokens have rank ``d``)."""
    if dim < x.shape[1]:
        raise ValueError(f"lift: dim={dim} is below the tokens' {x.shape[1]} dims")
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, x.shape[1], generator=g, dtype=torch.float64))
    return (torch.from_numpy(x).double() @ q.T).float()


def real_16x576(
    dim: int, text_rows: Optional[int] = None, images: int = IMAGES
) -> tuple[torch.Tensor, list[int], torch.Tensor]:
    """The real tokens and query of :func:`real_576`, lifted to ``dim``: ``(x [16*576, dim],
    counts, text)``. ``text_rows=None`` keeps the 43 query rows; a larger value appends seeded
    noisy copies (10 % noise) of query rows up to ``text_rows`` rows."""
    x_np, _, query = real_576(images)
    x, q = lift(x_np, dim), lift(query, dim)
    if text_rows is not None and text_rows != q.shape[0]:
        g = torch.Generator().manual_seed(1)
        extra = q[torch.randint(0, q.shape[0], (max(text_rows - q.shape[0], 0),), generator=g)]
        extra = extra + 0.1 * torch.randn(extra.shape, generator=g) * extra.std()
        q = torch.cat([q, extra])[:text_rows]
    return x, [TOKENS] * (x.shape[0] // TOKENS), q


def noisy(t: np.ndarray, seed: int, scale: float = 0.05) -> np.ndarray:
    """``t [m, d]`` plus seeded Gaussian noise of ``scale`` times each row's norm (spread over
    its ``d`` coordinates): a near-duplicate view of the same tokens."""
    rng = np.random.default_rng(seed)
    s = scale * np.linalg.norm(t, axis=1, keepdims=True) / math.sqrt(t.shape[1])
    return t + (rng.standard_normal(t.shape) * s).astype(np.float32)


def real_nx576(
    images: int, dim: int, text_rows: Optional[int] = None
) -> tuple[torch.Tensor, list[int], torch.Tensor]:
    """``images`` real 576-token images lifted to ``dim`` and the query, as
    :func:`real_16x576`: up to 16 images are exactly its inputs (the 12 distinct 576-token
    images of the bundled data and 4 near-duplicate views, :func:`real_576`); image ``k >= 16``
    is image ``k % 16`` with seeded 5 % noise (seed ``k``, added before the lift), so no two
    images are identical."""
    if images <= IMAGES:
        return real_16x576(dim, text_rows, images)
    x_np, _, _ = real_576(IMAGES)
    base = x_np.reshape(IMAGES, TOKENS, -1)
    parts = [base[k] if k < IMAGES else noisy(base[k % IMAGES], k) for k in range(images)]
    q = real_16x576(dim, text_rows, 1)[2]  # the query rows do not depend on the images
    return lift(np.concatenate(parts), dim), [TOKENS] * images, q


def synthetic(
    images: int, tokens: int, dim: int, seed: int = 0, text_rows: int = 64
) -> tuple[torch.Tensor, list[int], torch.Tensor]:
    """Clustered tokens ``(x [images*tokens, dim], counts, text [text_rows, dim])``: each image
    mixes 24 seeded directions plus noise; every 4th image is a noisy copy of the previous one
    (near-duplicates); the text rows are noisy copies of random tokens."""
    g = torch.Generator().manual_seed(seed)
    parts = []
    for k in range(images):
        if k % 4 == 3:
            prev = parts[-1]
            parts.append(prev + 0.05 * torch.randn(prev.shape, generator=g) * prev.std())
            continue
        centers = torch.randn(24, dim, generator=g)
        w = torch.rand(tokens, 24, generator=g) ** 4
        parts.append(w @ centers / 24 + 0.3 * torch.randn(tokens, dim, generator=g))
    x = torch.cat(parts)
    text = x[torch.randperm(x.shape[0], generator=g)[:text_rows]]
    text = text + 0.2 * torch.randn(text.shape, generator=g) * text.std()
    return x, [tokens] * images, text


def cu_seqlens(counts: Sequence[int]) -> torch.Tensor:
    """``[0, c0, c0+c1, ...]`` as an int64 CPU tensor."""
    return torch.tensor([0, *np.cumsum(counts).tolist()], dtype=torch.int64)


# --------------------------------------------------------------------------------------------
# timers
# --------------------------------------------------------------------------------------------
class Timer:
    """Time (ms) of a ``with`` block in ``.ms``: CUDA events on the current stream when
    ``cuda`` (the GPU time of the work queued in the block, host syncs inside included), else
    host wall time."""

    def __init__(self, cuda: bool = False):
        self.cuda = cuda

    def __enter__(self) -> Timer:
        if self.cuda:
            self.t0, self.t1 = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            self.t0.record()
        else:
            self.c0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self.t1.record()
            self.t1.synchronize()
            self.ms = self.t0.elapsed_time(self.t1)
        else:
            self.ms = (time.perf_counter() - self.c0) * 1e3


def timed(
    fn: Callable[[], object],
    runs: int,
    warmup: int = 1,
    cuda: bool = False,
    budget_s: float = 10.0,
) -> list[float]:
    """Times (ms) of up to ``runs`` calls of ``fn`` after ``warmup`` calls (at least one).

    A slow call gets fewer runs, so that the row takes about ``budget_s``; a first call slower
    than ``budget_s`` is the only measurement (its first-call costs are noise next to it)."""
    first = None
    for _ in range(max(warmup, 1)):
        if cuda:
            torch.cuda.synchronize()
        with Timer(cuda) as t:
            fn()
        first = t.ms if first is None else first
    if first > budget_s * 1e3:
        return [first]
    n = max(1, min(runs, int(budget_s * 1e3 / max(first, 1e-3))))
    out = []
    for _ in range(n):
        with Timer(cuda) as t:
            fn()
        out.append(t.ms)
    return out


def once(fn: Callable[[], object], cuda: bool = False) -> list[float]:
    """The time (ms) of one call, no warm-up (for rows too slow to repeat)."""
    if cuda:
        torch.cuda.synchronize()
    with Timer(cuda) as t:
        fn()
    return [t.ms]


def stats(times: Sequence[float]) -> dict:
    return {
        "ms_median": statistics.median(times),
        "ms_min": min(times),
        "ms_max": max(times),
        "runs": len(times),
    }


def _op_name(func) -> Optional[str]:
    """``greedy_select`` for ``adaptive_prune::greedy_select.default``; None for other ops."""
    name = func.name() if hasattr(func, "name") else str(func)
    ns, _, rest = name.partition("::")
    return rest.split(".")[0] if ns == NAMESPACE else None


class OpTimes(TorchDispatchMode):
    """Per-op split: accumulates in ``.ms`` the time (ms, :class:`Timer`) of every
    ``adaptive_prune::*`` op called inside the ``with`` block, and counts them in ``.calls``.

    A dispatch mode sees each op call as it is dispatched (the backend the routing picks runs
    inside), so nothing is replaced. Every other op passes through untimed; the mode's own
    overhead lands in what the ops do not account for (Python, checks). With ``cuda`` each op is
    timed with CUDA events, i.e. one sync per op: run it apart from the timed rows."""

    def __init__(self, cuda: bool = False):
        super().__init__()
        self.cuda = cuda
        self.ms: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _op_name(func)
        if name is None:
            return func(*args, **kwargs)
        with Timer(self.cuda) as t:
            out = func(*args, **kwargs)
        self.ms[name] = self.ms.get(name, 0.0) + t.ms
        self.calls[name] = self.calls.get(name, 0) + 1
        return out


class OpCapture(TorchDispatchMode):
    """Records in ``.args[op]`` the positional arguments of the last call of each
    ``adaptive_prune::*`` op named in ``ops`` inside the ``with`` block (the call itself runs
    unchanged)."""

    def __init__(self, ops: Iterable[str]):
        super().__init__()
        self.want = set(ops)
        self.args: dict[str, tuple] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = _op_name(func)
        if name in self.want:
            self.args[name] = tuple(args)
        return func(*args, **(kwargs or {}))


# --------------------------------------------------------------------------------------------
# run conditions
# --------------------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (else what ``platform`` knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(dirty: str = "+dirty", missing: str = "unknown") -> str:
    """Short HEAD of the repository, ``dirty`` appended when the tree has changes (or
    ``ADAPTIVE_PRUNE_BENCH_COMMIT`` when set: ``gpu_check.sh`` runs a copy without ``.git``)."""
    if os.environ.get("ADAPTIVE_PRUNE_BENCH_COMMIT"):
        return os.environ["ADAPTIVE_PRUNE_BENCH_COMMIT"]
    try:
        git = dict(cwd=REPO, capture_output=True, text=True, timeout=10)
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], **git).stdout.strip()
        changes = subprocess.run(["git", "status", "--porcelain"], **git).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return missing
    return (head or missing) + (dirty if changes else "")


def triton_version() -> str:
    try:
        import triton
    except ImportError:
        return "none"
    return triton.__version__


def load_average() -> str:
    """The 1-minute load average and the CPU count, e.g. ``0.42/2`` (how idle the machine
    was when the run started)."""
    try:
        return f"{os.getloadavg()[0]:.2f}/{os.cpu_count()}"
    except OSError:
        return "unknown"


def conditions(cuda: bool = False) -> dict:
    """The environment columns every CSV row starts with."""
    out = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "machine": platform.node(),
        "cpu": cpu_model(),
        "load": load_average(),
        "gpu": torch.cuda.get_device_name() if cuda else "none",
        "torch": torch.__version__,
        "triton": triton_version(),
        "cuda": torch.version.cuda or "none",
    }
    try:
        from adaptive_prune import backends

        why = backends.unavailable("cpp")
        out["cpp"] = "built" if why is None else f"missing ({why})"[:120]
    except Exception as exc:  # noqa: BLE001 (the package may not import; say so in the row)
        out["cpp"] = f"unknown ({type(exc).__name__})"
    return out


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------
def append_csv(path: Path, rows: Sequence[dict], fields: Sequence[str]) -> None:
    """Append ``rows`` (only ``fields``, in that order; missing ones empty) to the CSV at
    ``path``, writing the header when the file is new. An existing file with another header is
    an error (a CSV keeps one schema; move the old file aside), except a header that ``fields``
    extends at its end: the file is then rewritten once with the new columns (empty in the old
    rows), which is how a script adds a column to its CSV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.stat().st_size > 0:
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
        if len(header) < len(fields) and header == list(fields)[: len(header)]:
            _extend_header(path, list(fields))
            header = list(fields)
        if header != list(fields):
            raise ValueError(
                f"{path} has the columns {header}, this script writes {list(fields)}: "
                "move the old file aside (or pass another CSV path)"
            )
        new = False
    else:
        new = True
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore", restval="")
        if new:
            w.writeheader()
        w.writerows([{k: _cell(v) for k, v in r.items()} for r in rows])
        f.flush()
        os.fsync(f.fileno())


def _extend_header(path: Path, fields: list[str]) -> None:
    """Rewrite the CSV at ``path`` with the header ``fields`` (its old header plus new columns
    at the end); the old rows keep their cells and get empty ones in the new columns."""
    with path.open(newline="") as f:
        old = list(csv.DictReader(f))
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows(old)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.6g}"
    return "" if v is None else v


def fmt_ms(v: Optional[float]) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    if v < 10:
        return f"{v:.3f}"
    return f"{v:,.1f}" if v < 1000 else f"{v:,.0f}"
