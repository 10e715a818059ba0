"""Op ``adaptive_prune::token_alignment``: mean/max cosine of selected tokens to their
request's text rows. Definition, fake and reference.

The adaptive method does not call it: ``budget_scores`` returns the same alignment for every
token from the cosines of its attention pass. This op serves a subset of the tokens."""

from __future__ import annotations

import torch

from .. import _checks as C
from . import _contract as X
from ._common import bounds, define, normalize

_OP = "token_alignment"


def check(
    vision: torch.Tensor,
    rows: torch.Tensor,
    row_offsets: torch.Tensor,
    text: torch.Tensor,
    text_offsets: torch.Tensor,
    reduce: str,
    eps: float,
) -> bool:
    """The op's contract: rows in ``[0, N)``, one text segment per row segment."""
    X.tensor(_OP, "vision", vision, 2, X.FLOATS, "a float type")
    X.tensor(_OP, "rows", rows, 1, (torch.int64,), "int64")
    X.tensor(_OP, "text", text, 2, X.FLOATS, "a float type")
    X.same_space(_OP, vision, text)
    ro = X.offsets(_OP, "row_offsets", row_offsets, rows.shape[0], "K (entries of rows)")
    to = X.offsets(_OP, "text_offsets", text_offsets, text.shape[0], "M (rows of text)")
    if len(to) != len(ro):
        X.fail(_OP, f"text_offsets has {len(to)} entries, row_offsets {len(ro)} (one per request)")
    X.choice(_OP, "reduce", reduce, ("mean", "max"))
    X.option(_OP, "eps", eps, C.EPS)
    if X.readable(rows) and rows.numel():
        lo, hi = torch.aminmax(rows)
        if int(lo) < 0 or int(hi) >= vision.shape[0]:
            X.fail(_OP, f"rows holds rows outside [0, {vision.shape[0]}) (rows of vision)")
    return False


def reference(
    vision: torch.Tensor,
    rows: torch.Tensor,
    row_offsets: torch.Tensor,
    text: torch.Tensor,
    text_offsets: torch.Tensor,
    reduce: str,
    eps: float,
) -> torch.Tensor:
    """``a [K]`` float32: mean (``reduce="mean"``) or max over the request's text rows of
    ``cos(x_i, t)`` for every selected row ``i = rows[j]``; 0 for requests without text."""
    ro, to = bounds(row_offsets), bounds(text_offsets)
    out = torch.zeros(rows.shape[0], dtype=torch.float32, device=vision.device)
    for r in range(len(ro) - 1):
        if ro[r + 1] == ro[r] or to[r + 1] == to[r]:
            continue
        sim = (
            normalize(vision[rows[ro[r] : ro[r + 1]]], eps)
            @ normalize(text[to[r] : to[r + 1]], eps).T
        )
        out[ro[r] : ro[r + 1]] = (sim.mean(1) if reduce == "mean" else sim.max(1).values).float()
    return out


op = define("token_alignment", reference, check)


@op.register_fake
def _(vision, rows, row_offsets, text, text_offsets, reduce, eps):
    return vision.new_empty((rows.shape[0],), dtype=torch.float32)
