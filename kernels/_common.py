"""Shared pieces of the Triton kernels: interpreter flag, launch configs, host-side schedules,
host/device transfers that never synchronise, and small ``@triton.jit`` helpers.

Conventions of every kernel in this package (docs/kernels.md):

- Variable-length segments (images, requests, pools) follow the ``cu_seqlens`` convention: a
  segment ``g`` owns rows ``off[g]:off[g+1]``. The launcher reads the offsets **on the host**
  (free when they are CPU tensors, which is how :mod:`adaptive_prune.adaptive` passes them; one
  documented synchronisation otherwise), builds small schedules (cumulative tile counts per
  segment) and uploads them with one pinned, non-blocking copy. A program finds its segment by
  counting (:func:`_locate`), so no per-tile table is ever built.
- ``tl.program_id(...).to(tl.int64)`` before pointer arithmetic; offsets are int64 tensors.
- Accumulation in fp32; similarities are ``(x_i . x_j) * inv_i * inv_j`` with the raw input
  dtype in ``tl.dot`` (exact products for fp16/bf16) and ``input_precision="ieee"`` for fp32
  inputs, so the result matches the fp32 reference to ~1e-6 on every device.
- No autotuning: every launcher picks one config from the table below (so nothing benchmarks
  through the driver, the interpreter runs one config, and results are deterministic).
  Nothing here queries the driver at import.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import torch
import triton
import triton.language as tl


# The Triton interpreter is chosen when ``triton.jit`` decorates a kernel, i.e. at import of
# the kernel modules; record the mode they were built in.
def _interpreting() -> bool:
    knobs = getattr(triton, "knobs", None)  # triton >= 3.4; older ones read the env variable
    if knobs is not None and hasattr(knobs, "runtime"):
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


INTERPRET: bool = _interpreting()

# Largest segment the greedy kernels keep in registers (one program per segment). Beyond it,
# the running distances live in a global scratch and are processed in chunks of this size.
MAX_REG_BLOCK = 8192


# Window of the exact max-min engine (``_maxmin.py``): the greedy loops take up to this many
# picks per round from an on-chip ``L x L`` sub-block. 0 runs the one-pick-per-step loops
# instead (same outputs). Power of two.
DEFAULT_WINDOW = 64


# Greedy engine of the max-min loops: "blocks" (per-segment similarity blocks, then the windowed
# or step loops of _maxmin.py / the launchers) or "rows" (_engine.py: no block, distances
# recomputed on the fly by tensor-core dots, many programs per segment). Same outputs. "auto"
# (the default): "rows" for a call whose largest segment's block would exceed the block budget
# (where the blocks cannot be bounded by splitting the batch), else "blocks", until a GPU run
# has measured both engines (docs/kernels.md); callers choose per call (the routing layer's
# knob ``greedy_engine``).
ENGINES = ("auto", "blocks", "rows")
DEFAULT_ENGINE = "auto"


def check_engine(e: Optional[str]) -> str:
    """The greedy engine asked for: ``e``, else ``DEFAULT_ENGINE`` (possibly ``"auto"``)."""
    if e is None:
        e = DEFAULT_ENGINE
    if e not in ENGINES:
        raise ValueError(f"greedy engine must be one of {ENGINES}, got {e!r}")
    return e


def pick_engine(e: Optional[str], sizes: Sequence[int], budget_mb: Optional[float]) -> str:
    """``"blocks"`` or ``"rows"`` for a call over segments of ``sizes`` entries: ``e`` (checked),
    and for ``"auto"`` the row engine exactly when the largest segment's ``m x m`` fp32 block
    exceeds ``budget_mb`` (``block_groups`` can bound a batch's blocks, not one segment's)."""
    e = check_engine(e)
    if e != "auto":
        return e
    big = max(sizes, default=0)
    return "rows" if 4 * big * big > budget_bytes(budget_mb) else "blocks"


def budget_bytes(budget_mb: Optional[float]) -> int:
    """``budget_mb`` MiB (``DEFAULT_BLOCK_BUDGET_MB`` for None) in bytes, checked."""
    mb = DEFAULT_BLOCK_BUDGET_MB if budget_mb is None else float(budget_mb)
    if not 0 <= mb < float("inf"):
        raise ValueError(f"block_budget_mb must be a finite number >= 0, got {budget_mb!r}")
    return int(mb * 2**20)


def engine_tile(
    block: Optional[int],
    window: int,
    sizes: Sequence[int] = (),
    device: Optional[torch.device] = None,
) -> int:
    """Entries per tile of the row engine, a multiple of the window: ``block`` (tests), else on
    a GPU the smallest multiple of the window that cuts the ``sizes`` entries into at most
    about one tile per SM (so phase T spreads over the SMs: 128 for the 9216-entry pool of
    16 x 576 on 132 SMs, 72 tiles), capped by the config (512); the config's under the
    interpreter."""
    if block is not None:
        te = int(block)
    else:
        te = cfg("engine_tile")
        if device is not None and device.type == "cuda" and not INTERPRET:
            n_sm = torch.cuda.get_device_properties(device).multi_processor_count
            te = min(te, window * cdiv(max(sum(sizes), 1), n_sm * window))
    return max(window, cdiv(te, window) * window)


class Unsupported(Exception):
    """Raised by a launcher for an input its kernel does not take (the routing layer then runs
    the reference instead); the message says why."""


# The most memory (MiB) one launch's fp32 similarity blocks may take (see block_groups).
DEFAULT_BLOCK_BUDGET_MB = 2048


def check_window(w: Optional[int]) -> int:
    """The window to use: ``DEFAULT_WINDOW`` for None, else ``w`` checked."""
    w = DEFAULT_WINDOW if w is None else int(w)
    # above 128 the L x L sub-block spills registers on sm_90 (kernels/_compile_check.py)
    if w != 0 and (w < 16 or w > 128 or w & (w - 1)):
        raise ValueError(f"greedy window must be 0 or a power of two in [16, 128], got {w}")
    return w


def block_groups(sizes: Sequence[int], budget_mb: Optional[float]) -> list[tuple[int, int]]:
    """Consecutive ranges ``[a, b)`` of segments whose ``m x m`` fp32 similarity blocks fit
    ``budget_mb`` MiB together (``DEFAULT_BLOCK_BUDGET_MB`` for None); a segment over the
    budget forms a group of its own.

    The greedy launchers run one group after the other: the same results (segments are
    independent), with the scratch of a batch bounded by the budget or its largest block.
    """
    cap = budget_bytes(budget_mb)
    groups, a, total = [], 0, 0
    for i, m in enumerate(sizes):
        need = 4 * m * m
        if i > a and total + need > cap:
            groups.append((a, i))
            a, total = i, 0
        total += need
    groups.append((a, len(sizes)))
    return groups


def _triton_version() -> tuple[int, int]:
    try:
        return tuple(int(v) for v in triton.__version__.split(".")[:2])  # type: ignore[return-value]
    except ValueError:
        return (0, 0)


TRITON_VERSION = _triton_version()


# Launch configurations (data, not autotuning): (GPU value, interpreter value) and why. The GPU
# values were chosen with ``python -m adaptive_prune.kernels._compile_check`` (ptxas for sm_90,
# no GPU needed): the largest tiles that compile without register spills. The interpreter runs
# programs one by one, so there few big tiles are fastest.
CONFIGS = {
    # Similarity blocks, 16-bit inputs: 128x128 output tiles, K step 32, 8 warps (K step 64
    # spilled 228 stores; 4 warps spilled thousands). Triton before 3.9 spills 364-512 stores
    # at 128x128 (checked with 3.6) and none at 64x64: those versions get 64x64 tiles (the same
    # K step; each entry is still one fp32 dot over D, checked against the reference).
    "sim_block": (128 if TRITON_VERSION >= (3, 9) else 64, 64),
    "sim_k": (32, 64),
    "sim_warps": (8, 4),
    "sim_stages": (3, 1),
    # fp32 inputs go through ieee FMA dots: 64x64 tiles, K step 16, 8 warps (no spills).
    "sim_block_f32": (64, 64),
    "sim_k_f32": (16, 64),
    "sim_stages_f32": (2, 1),
    # Chunk of the windowed max-min engine's passes over its running distances (per-lane
    # partials, one block reduction per pass); with 8 warps, no spills for sm_90.
    "window_chunk": (2048, 8192),
    # Row engine (_engine.py): the most entries per tile (one program's slice of the running
    # distances; its best L come from merges of 2L keys); on a GPU fewer, so that the tiles
    # spread over the SMs (engine_tile).
    "engine_tile": (512, 64),
    # Row engine, phase W: keys per sort when merging the tiles' candidates into the window
    # (rows of L keys: the running best and rows - 1 tiles' candidates per sort).
    "engine_merge": (1024, 64),
    # Row tiles of the one-pass budget kernel: 64 rows x 64 columns per load, 8 warps.
    "rows_tile": (64, 64),
    "budget_cols": (64, 128),
    # Rows per program and columns per load of the inverse-norm pre-pass.
    "norm_rows": (32, 64),
    "norm_cols": (128, 128),
    # Row reductions: 64 queries x 64 keys, K step 32, 8 warps (K step 64 spilled).
    "rows_keys": (64, 64),
    "reduce_k": (32, 128),
    "reduce_warps": (8, 4),
    # Pareto: rows per program of the pairwise-rank kernel, chunk of the per-segment scans,
    # and the [PT, PU] tile of pairwise comparisons (kept small: it lives in registers).
    "pareto_tile": (128, 64),
    "pareto_chunk": (2048, 64),
    "pareto_pair_t": (256, 64),
    "pareto_pair_u": (32, 64),
}


def cfg(name: str) -> int:
    gpu, interp = CONFIGS[name]
    return interp if INTERPRET else gpu


def sim_config(dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(tile, K step, warps, stages) of the similarity-block kernel for an input dtype."""
    if dtype == torch.float32:
        return cfg("sim_block_f32"), cfg("sim_k_f32"), cfg("sim_warps"), cfg("sim_stages_f32")
    return cfg("sim_block"), cfg("sim_k"), cfg("sim_warps"), cfg("sim_stages")


def next_pow2(x: int) -> int:
    return 1 if x <= 1 else 1 << (int(x) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-int(a) // int(b))


def greedy_warps(block: int) -> int:
    """Warps for a one-program-per-segment greedy loop over ``block`` lanes."""
    if INTERPRET:
        return 1
    return 4 if block <= 512 else 8 if block <= 2048 else 16


# --------------------------------------------------------------------------------------------
# Host side: offsets, schedules and transfers
# --------------------------------------------------------------------------------------------
def host_ints(t: Optional[torch.Tensor]) -> Optional[list[int]]:
    """Values of a small integer tensor on the host.

    Free for CPU tensors. For a CUDA tensor this is a device-to-host copy, i.e. one host
    synchronisation: callers that care (``adaptive_prune.adaptive``) pass offsets on the CPU.
    """
    if t is None:
        return None
    return [int(v) for v in t.tolist()]


def upload(values: Sequence[int] | torch.Tensor, device: torch.device, dtype=torch.int64):
    """A host list (or CPU tensor) on ``device`` without a host synchronisation.

    CUDA: staged through pinned memory and copied with ``non_blocking=True`` (a pageable
    ``torch.tensor(..., device="cuda")`` synchronises the stream).
    """
    if isinstance(values, torch.Tensor) and values.device.type != "cpu":
        return values.to(device=device, dtype=dtype)
    cpu = (
        values.to(dtype) if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=dtype)
    )
    if device.type == "cpu":
        return cpu
    if device.type == "cuda":
        cpu = cpu.pin_memory()
    return cpu.to(device, non_blocking=True)


def pack(parts: Sequence[Sequence[int]], device: torch.device) -> list[torch.Tensor]:
    """Upload several int64 host lists with one copy; returns device views, one per list.

    Every view starts on a 16-byte boundary (even element offset), so the kernels are always
    compiled for aligned pointers (Triton specialises on alignment: no needless recompiles).
    """
    flat: list[int] = []
    starts = []
    for p in parts:
        starts.append(len(flat))
        flat.extend(int(v) for v in p)
        if len(flat) % 2:
            flat.append(0)
    dev = upload(flat if flat else [0], device)
    return [dev[a : a + len(p)] for a, p in zip(starts, parts)]


def group_ids(offsets: Sequence[int], device: torch.device) -> torch.Tensor:
    """``[offsets[-1] - offsets[0]]`` int64 on ``device``: the segment of every position, for
    host ``offsets``; built on the device from one pinned upload of the sizes (no sync)."""
    sizes = [b - a for a, b in zip(offsets, offsets[1:])]
    (sz,) = pack([sizes], device)
    return torch.repeat_interleave(
        torch.arange(len(sizes), device=device), sz, output_size=sum(sizes)
    )


def tile_cum(sizes: Sequence[int], tile: int, square: bool = False) -> list[int]:
    """Cumulative tile counts ``[0, t_0, t_0 + t_1, ...]`` of segments of ``sizes`` rows.

    ``t_g = ceil(m_g / tile)``, or its square for a segment's ``m x m`` similarity block.
    """
    out = [0]
    for m in sizes:
        t = cdiv(m, tile) if m > 0 else 0
        out.append(out[-1] + (t * t if square else t))
    return out


def sizes_of(offsets: Sequence[int]) -> list[int]:
    return [offsets[i + 1] - offsets[i] for i in range(len(offsets) - 1)]


def square_bases(sizes: Sequence[int]) -> list[int]:
    """Start of every segment's ``m x m`` block in a flat fp32 scratch; last entry = total."""
    out = [0]
    for m in sizes:
        out.append(out[-1] + m * m)
    return out


def dot_precision(dtype: torch.dtype) -> str:
    """``"ieee"`` for fp32 inputs (exact fp32 products, like the reference); 16-bit inputs use
    the tensor cores, whose products are exact anyway."""
    return "ieee" if dtype == torch.float32 else "tf32"


def kernel_input(x: torch.Tensor) -> torch.Tensor:
    """Row-contiguous input in a dtype the kernels take.

    The interpreter mishandles bf16 (NaN in elementwise ops, wrong ``tl.dot``), so under it
    bf16 is upcast to fp32 (exact). On a GPU bf16 goes to the tensor cores as is.
    """
    if x.dim() == 2 and x.stride(-1) != 1:
        x = x.contiguous()
    if INTERPRET and x.dtype == torch.bfloat16:
        x = x.float()
    return x


def set_device(device: torch.device):
    """Context that makes ``device`` current for the launch (multi-GPU safety)."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    import contextlib

    return contextlib.nullcontext()


def empty(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.empty`` (tests poison it through ``torch.use_deterministic_algorithms``, which
    fills fresh buffers with NaN / the largest integer, so an unwritten output shows up)."""
    return torch.empty(shape, dtype=dtype, device=device)


# --------------------------------------------------------------------------------------------
# Device helpers
# --------------------------------------------------------------------------------------------
@triton.jit
def _locate(cum_ptr, n, t, BLOCK_N: tl.constexpr):
    """Segment ``g`` with ``cum[g] <= t < cum[g+1]`` for a non-decreasing ``cum [n+1]``
    (``cum[0] == 0``): the number of ``j`` in ``1..n`` with ``cum[j] <= t``. Empty segments
    are skipped because their end equals the next one's start."""
    o_n = tl.arange(0, BLOCK_N)
    count = tl.zeros((), dtype=tl.int64)
    for b0 in range(0, n, BLOCK_N):
        o = b0 + 1 + o_n
        v = tl.load(cum_ptr + o, mask=o <= n, other=t + 1)
        count += tl.sum((v <= t).to(tl.int64), axis=0)
    return count


@triton.jit
def _max_combine(a, b):
    return tl.maximum(a, b)


@triton.jit
def _inv_norm(ssq, eps):
    """``1 / max(sqrt(ssq), eps)`` in fp32 (the reference's ``x / x.norm().clamp_min(eps)``)."""
    return tl.div_rn(1.0, tl.maximum(tl.sqrt_rn(ssq), eps))


# The greedy's pick tie band on the cosine scale (docs/METHOD.md, "Ties"; the same constant as
# ops/_common.py PICK_TIE and csrc/common.h kPickTie): every greedy step takes M = the largest
# score among the candidates and picks the LOWEST index among those with score >= M - band
# (band = PICK_TIE; max-sum: PICK_TIE * t after t picks), computed in fp32 like the reference.
PICK_TIE = tl.constexpr(1e-5)
_NO_INDEX = tl.constexpr(2**62)


@triton.jit
def band_first(v, idx, band):
    """The band rule over a block: the lowest ``idx`` among the entries with ``v >= max(v) -
    band`` (``-inf`` entries are no candidates; ``max = +inf`` keeps the ``+inf`` ones)."""
    top = tl.max(v, axis=0)
    return tl.min(tl.where(v >= top - band, idx.to(tl.int64), _NO_INDEX), axis=0)


@triton.jit
def first_at_least(p_ptr, n, thr, BLOCK: tl.constexpr):
    """The lowest ``i < n`` with ``p_ptr[i] >= thr`` (int64; ``2^62`` if none): the band rule's
    second pass over a scratch too long for registers."""
    o = tl.arange(0, BLOCK)
    best = tl.full((BLOCK,), _NO_INDEX, tl.int64)
    for c0 in range(0, n, BLOCK):
        oc = c0 + o
        v = tl.load(p_ptr + oc, mask=oc < n, other=float("-inf"))
        best = tl.minimum(best, tl.where((oc < n) & (v >= thr), oc.to(tl.int64), _NO_INDEX))
    return tl.min(best, axis=0)
