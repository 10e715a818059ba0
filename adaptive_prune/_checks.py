"""Input validation for the public API: every bad input gets a ValueError/TypeError that names
the argument, the value and what is expected, before any kernel runs."""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, Mapping, Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INDEX_DTYPES = (torch.int32, torch.int64)


class FiniteChecks:
    """Finiteness checks whose verdicts are read with one host read for all of them.

    On a GPU every read of a device value is a host synchronisation. ``add`` only queues a
    device flag; ``flags()`` hands the flags to a caller that reads device values anyway (the
    adaptive composition's one forced read), which then passes the values to ``verify``;
    ``check_now()`` reads them itself (one synchronisation for all tensors). Either way the
    error is the same: the tensor's name and its first bad row.
    """

    def __init__(self) -> None:
        self._items: list[tuple[str, torch.Tensor, torch.Tensor]] = []

    def add(self, name: str, x: torch.Tensor) -> None:
        if x.numel():
            # min/max propagate NaN and expose +-Inf and the largest magnitude: two scalars
            # instead of an [N, D] bool (NaN and Inf fail the comparison too)
            lim = max_abs(x)
            self._items.append((name, x, (torch.stack(torch.aminmax(x)).abs() < lim).all()))

    def flags(self, dtype: torch.dtype, device) -> torch.Tensor:
        """``[k]`` device tensor, 1 where the tensor is finite (``k`` = number queued)."""
        if not self._items:
            return torch.zeros(0, dtype=dtype, device=device)
        return torch.stack([f.to(device=device, dtype=dtype) for _, _, f in self._items])

    def verify(self, values: list) -> None:
        """Raise for the first queued tensor whose flag value (from ``flags``) is not 1."""
        if len(values) != len(self._items):
            raise RuntimeError("internal error: finiteness flags and checks do not match")
        for (name, x, _), v in zip(self._items, values):
            if not v:
                nonfinite = (~torch.isfinite(x)).any(dim=1)
                if bool(nonfinite.any()):
                    bad = int(nonfinite.nonzero()[0])
                    raise ValueError(f"{name} contains NaN or Inf values (first bad row: {bad})")
                lim = max_abs(x)
                bad = int((x.abs() >= lim).any(dim=1).nonzero()[0])
                raise ValueError(
                    f"{name} has values of magnitude {float(x[bad].abs().max()):.3g} (first such "
                    f"row: {bad}); the selection computes squared norms and dot products in "
                    f"{str(compute_dtype(x.dtype)).replace('torch.', '')}, which overflow for "
                    f"|values| >= {lim:.3g} at width {x.shape[1]}. Divide {name} by a constant "
                    "(cosine selection does not depend on scale)"
                )
        self._items.clear()

    def check_now(self) -> None:
        if self._items:
            self.verify(self.flags(torch.uint8, self._items[0][2].device).tolist())


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp16/bf16/fp32 inputs, fp64 for fp64 inputs (as the ops compute)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def max_abs(x: torch.Tensor) -> float:
    """The magnitude from which ``[rows, D]`` tokens are rejected: squared norms, dot products
    and squared distances (``||x - t||^2 <= 4 D max|v|^2``) of such values overflow the compute
    dtype. ``sqrt(finfo.max / (16 D))``: about ``4.6e18 / sqrt(D)`` in fp32."""
    width = x.shape[-1] if x.ndim else 1
    return math.sqrt(torch.finfo(compute_dtype(x.dtype)).max / (16.0 * max(width, 1)))


def check_storage(name: str, x: torch.Tensor) -> None:
    """A dense tensor with data: no sparse/other layout, no meta tensor."""
    if x.layout != torch.strided:
        raise TypeError(
            f"{name} must be a dense (strided) tensor, got layout {x.layout}; "
            f"pass {name}.to_dense()"
        )
    if x.device.type == "meta":
        raise TypeError(
            f"{name} is a meta tensor (it has no data to select from); pass a tensor on the "
            "CPU or a CUDA device"
        )


def check_tokens(
    name: str,
    x: Any,
    *,
    width: int | None = None,
    device=None,
    finite: FiniteChecks | None = None,
) -> torch.Tensor:
    """A ``[rows, D]`` floating tensor with finite values.

    The finiteness test reads a device value (a host synchronisation on a GPU); with
    ``finite=`` it is queued there instead, for one read later (see :class:`FiniteChecks`).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [rows, D], got {type(x).__name__}")
    if device is not None and x.device != device:
        raise ValueError(f"{name} is on {x.device} but vision is on {device}: move it there")
    check_storage(name, x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D [rows, D], got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be float16, bfloat16, float32 or float64, got dtype {x.dtype}"
        )
    if width is not None and x.shape[1] != width:
        raise ValueError(
            f"{name} has width {x.shape[1]} but vision has width {width}: both must live in "
            "the same embedding space"
        )
    if finite is not None:
        finite.add(name, x)
    else:
        now = FiniteChecks()
        now.add(name, x)
        now.check_now()
    return x


def check_offsets(name: str, off: Any, total: int, total_name: str, device=None) -> list[int]:
    """Offsets ``[k+1]`` (int32/int64): start at 0, non-decreasing, end at ``total``."""
    if not isinstance(off, torch.Tensor):
        raise TypeError(f"{name} must be an int32/int64 torch.Tensor, got {type(off).__name__}")
    check_storage(name, off)
    if off.ndim != 1 or off.shape[0] < 2:
        raise ValueError(
            f"{name} must be 1-D with at least 2 entries [0, ..., {total_name}], "
            f"got shape {tuple(off.shape)}"
        )
    if off.dtype not in INDEX_DTYPES:
        raise TypeError(f"{name} must have dtype int32 or int64, got {off.dtype}")
    if device is not None and off.device.type not in ("cpu", device.type):
        raise ValueError(f"{name} is on {off.device}; expected the CPU or {device}")
    vals = [int(v) for v in off.tolist()]
    if vals[0] != 0:
        raise ValueError(f"{name} must start at 0, got {name}[0] = {vals[0]}")
    for i in range(len(vals) - 1):
        if vals[i + 1] < vals[i]:
            raise ValueError(
                f"{name} must be non-decreasing, but {name}[{i + 1}] = {vals[i + 1]} < "
                f"{name}[{i}] = {vals[i]}"
            )
    if vals[-1] != total:
        raise ValueError(f"{name} must end at {total_name} = {total}, got {name}[-1] = {vals[-1]}")
    return vals


def check_keep(keep_ratio: Any, budget: Any, n_tokens: int, where: str = "") -> int:
    """Exactly one of keep_ratio in (0, 1] / budget in [0, N]; returns B."""
    if (keep_ratio is None) == (budget is None):
        raise ValueError(
            f"give exactly one of keep_ratio (in (0, 1]) or budget (in [0, N]){where}; got "
            f"keep_ratio={keep_ratio!r}, budget={budget!r}"
        )
    if keep_ratio is not None:
        if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, Real):
            raise TypeError(f"keep_ratio must be a float in (0, 1]{where}, got {keep_ratio!r}")
        kr = float(keep_ratio)
        if not (0.0 < kr <= 1.0) or math.isnan(kr):
            raise ValueError(f"keep_ratio must be in (0, 1]{where}, got {keep_ratio!r}")
        return int(math.floor(kr * n_tokens + 0.5))
    if isinstance(budget, bool) or not isinstance(budget, Integral):
        raise TypeError(f"budget must be an int in [0, N={n_tokens}]{where}, got {budget!r}")
    if not 0 <= int(budget) <= n_tokens:
        raise ValueError(f"budget must be in [0, N={n_tokens}]{where}, got {budget}")
    return int(budget)


def check_min_per_image(q: Any, n: int | None = None) -> int | tuple[int, ...]:
    """``min_per_image``: an int >= 0 for every image, or a sequence (list, tuple, 1-D integer
    tensor) of one int >= 0 per image (``n`` of them: over all images of the call)."""
    if isinstance(q, Integral) and not isinstance(q, bool):
        if int(q) < 0:
            raise ValueError(f"min_per_image must be an int >= 0, got {q!r}")
        return int(q)
    if isinstance(q, torch.Tensor):
        if q.ndim != 1 or q.dtype.is_floating_point or q.dtype == torch.bool:
            raise TypeError(
                "min_per_image as a tensor must be 1-D with an integer dtype, got "
                f"shape {tuple(q.shape)} and dtype {q.dtype}"
            )
        q = q.tolist()
    if isinstance(q, (str, bytes)) or not isinstance(q, Sequence):
        raise TypeError(
            "min_per_image must be an int >= 0 or a sequence of one int >= 0 per image, got "
            f"{type(q).__name__}"
        )
    vals = list(q)
    if n is not None and len(vals) != n:
        raise ValueError(
            f"min_per_image has {len(vals)} entries but there are {n} images (cu_seqlens has "
            f"{n + 1} entries): give one minimum per image"
        )
    for k, v in enumerate(vals):
        if isinstance(v, bool) or not isinstance(v, Integral) or int(v) < 0:
            raise ValueError(f"min_per_image[{k}] must be an int >= 0, got {v!r}")
    return tuple(int(v) for v in vals)


def image_minimums(q: int | Sequence[int], counts: Sequence[int]) -> list[int]:
    """``min(q_k, m_k)`` for every image (``q`` an int for all images or one per image)."""
    if isinstance(q, Integral):
        return [min(int(q), m) for m in counts]
    return [min(int(a), m) for a, m in zip(q, counts)]


def check_minimums(budget: int, counts: list[int], q, where: str = "") -> None:
    need = sum(image_minimums(q, counts))
    if budget < need:
        what = f"min_per_image={q}" if isinstance(q, Integral) else "the min_per_image entries"
        raise ValueError(
            f"budget {budget}{where} is below the sum of per-image minimums {need} "
            f"({what} over {sum(1 for m in counts if m)} nonempty images); raise the "
            "budget/keep_ratio or lower min_per_image"
        )


def check_options(
    method: str, options: Mapping[str, Any], spec: Mapping[str, tuple[Any, Any]]
) -> dict[str, Any]:
    """Merge ``options`` into the method's defaults; unknown names and bad values are errors.

    ``spec`` maps option name -> (default, validator); a validator returns an error string or
    None.
    """
    unknown = sorted(set(options) - set(spec))
    if unknown:
        raise TypeError(
            f"unknown option(s) {unknown} for method={method!r}; valid options: "
            f"{sorted(spec) or 'none'}"
        )
    out = {k: v[0] for k, v in spec.items()}
    for k, v in options.items():
        err = spec[k][1](v)
        if err:
            raise ValueError(f"option {k}={v!r} for method={method!r}: expected {err}")
        out[k] = v
    return out


def positive(v: Any) -> str | None:
    ok = isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) and v > 0
    return None if ok else "a finite number > 0"


def non_negative(v: Any) -> str | None:
    ok = isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
    return None if ok else "a finite number >= 0"


def at_least_one(v: Any) -> str | None:
    ok = isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) and v >= 1
    return None if ok else "a finite number >= 1"


def one_of(*choices: Any):
    def check(v: Any) -> str | None:
        return None if v in choices else f"one of {list(choices)}"

    return check


def is_bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "True or False"


def int_at_least(lo: int):
    def check(v: Any) -> str | None:
        ok = isinstance(v, Integral) and not isinstance(v, bool) and int(v) >= lo
        return None if ok else f"an int >= {lo}"

    return check


def cosine_threshold_or_none(v: Any) -> str | None:
    if v is None:
        return None
    ok = isinstance(v, Real) and not isinstance(v, bool) and -1.0 < v <= 1.0
    return None if ok else "None or a cosine threshold in (-1, 1]"


def unit_interval(v: Any) -> str | None:
    ok = isinstance(v, Real) and not isinstance(v, bool) and 0.0 <= v <= 1.0
    return None if ok else "a number in [0, 1]"


def positive_fraction(v: Any) -> str | None:
    ok = isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) and 0 < v <= 1
    return None if ok else "a number in (0, 1]"


def in_range(lo: float, hi: float, lo_open: bool = False):
    """A finite number in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``): the range that the ops'
    fp32 computation supports for that option (docs/METHOD.md, "Option ranges")."""
    left = "(" if lo_open else "["

    def check(v: Any) -> str | None:
        ok = isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)
        ok = ok and (v > lo if lo_open else v >= lo) and v <= hi
        return None if ok else f"a number in {left}{lo:g}, {hi:g}]"

    return check


# The ranges of the float options that the ops' fp32 computation supports (docs/METHOD.md,
# "Option ranges"). Shared by the method's option validation and the ops' own checks.
# sigma: exp(-(1 - C) / sigma) with the rounding of C_kk = 1 (about 1e-6) must stay near 1;
# tau_a: the attention logits tau_a * cos; beta: the budget weights m * (1 + beta * n * att);
# eps: a norm floor whose square (the kernels floor squared norms with eps^2) is a normal
# fp32 number (eps = 1e-30 made the C++ stage 0 divide 0 by 0), and that keeps unit rows unit.
SIGMA = in_range(1e-4, 1e6)
TAU_A = in_range(0.0, 1e4, lo_open=True)
BETA = in_range(0.0, 1e4)
LAM = in_range(0.0, 1e6)
GAMMA = in_range(1.0, 1e6)
EPS = in_range(1e-18, 1.0)
