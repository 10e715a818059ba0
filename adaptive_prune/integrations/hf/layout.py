"""Pure tensor logic of the Hugging Face integration: no transformers, no model, no hooks.

One pruned prefill, in the order :mod:`.hooks` runs it:

1. :func:`unit_positions` / :func:`contiguous_runs`: where each visual unit (an image, a video
   or a video frame) of a row sits; :func:`text_mask`: which tokens are the prompt's text.
2. :func:`row_minimums`: each row's per-unit minimums when the caller gave per-image ones;
   :func:`choose`: de-duplicate identical rows (:func:`deduplicate`; e.g. the beams of one
   sample), select all distinct ones with one :func:`adaptive_prune.prune_batch` call per
   distinct feasible minimum, plus one for all rows with per-image minimums (:func:`select`:
   :func:`sample_budget`, :func:`feasible_min`, :func:`pack`, :func:`split_by_budgets`), and map
   the choice back to positions of every row.
3. :func:`keep_mask` and :func:`compact_layout`: every row keeps its text and its chosen visual
   tokens, in order, right-aligned in ``Lp`` slots (left padding), and
4. everything the language model reads is gathered with that one index:
   :func:`gather_tokens` (embeddings), :func:`gather_positions` (position ids: each kept token
   keeps its original position), :func:`gather_deepstack` (Qwen3-VL's DeepStack features);
   :func:`next_positions` gives the first decode position of each row.

Shapes: ``B`` prefill rows, ``L`` unpruned length, ``Lp`` pruned length (the longest kept row),
``D`` hidden width, ``R`` rows of M-RoPE positions (3 or 4), ``n`` visual tokens of one row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable, Optional, Sequence

import torch

__all__ = [
    "Sample",
    "Compact",
    "contiguous_runs",
    "unit_positions",
    "text_mask",
    "same_sample",
    "deduplicate",
    "sample_budget",
    "feasible_min",
    "group_by_minimum",
    "row_minimums",
    "pack",
    "split_by_budgets",
    "select",
    "choose",
    "keep_mask",
    "compact_layout",
    "gather_tokens",
    "gather_positions",
    "next_positions",
    "gather_deepstack",
]

#: ``(vision [n, D], unit lengths, text [M, D] or None)``: one request of :func:`select`.
Request = tuple[torch.Tensor, list[int], Optional[torch.Tensor]]


# ---------------------------------------------------------------------------- units and text
def contiguous_runs(row: torch.Tensor) -> list[int]:
    """Lengths of the runs of ``True`` in a ``[L]`` bool row, left to right."""
    zero = row.new_zeros(1).int()
    edges = torch.diff(row.int(), prepend=zero, append=zero)
    starts = (edges == 1).nonzero().view(-1)
    ends = (edges == -1).nonzero().view(-1)
    return (ends - starts).tolist()


def unit_positions(
    masks: Sequence[torch.Tensor], lengths: Sequence[Sequence[int]]
) -> list[torch.Tensor]:
    """The visual units of one row as int64 position tensors, ordered by first position.

    Args:
        masks: per modality, ``[L]`` bool: this row's placeholder tokens of that modality.
        lengths: per modality, the unit lengths in placeholder order (summing to
            ``masks[m].sum()``); zero-length units are skipped.

    Units of all modalities are merged in placeholder order (images and videos interleave).
    """
    units = []
    for tok, lens in zip(masks, lengths):
        pos = tok.nonzero().view(-1)
        off = 0
        for n in lens:
            if n:
                units.append(pos[off : off + n])
            off += n
    units.sort(key=lambda p: int(p[0]))
    return units


def text_mask(
    ids: torch.Tensor, real: torch.Tensor, visual: torch.Tensor, exclude: torch.Tensor
) -> torch.Tensor:
    """``[B, L]`` bool: real (not padding), non-visual tokens whose id is not in ``exclude``."""
    return real & ~visual & ~torch.isin(ids, exclude)


# ---------------------------------------------------------------------------- de-duplication
@dataclass
class Sample:
    """What one prefill row gives the selection.

    - ``rows``: ``[n]`` int64, positions in the row of its visual tokens, unit after unit;
    - ``units``: unit lengths (images / frames) in that order, summing to ``n``;
    - ``vision``: ``[n, D]`` the embeddings at ``rows``; ``text``: ``[M, D]`` or None;
    - ``key``: a cheap fingerprint (the row's ids and mask): rows with different keys are never
      compared tensor by tensor;
    - ``minimums``: one minimum per unit (:func:`row_minimums`), or None for the handle's int
      ``min_per_image``.
    """

    rows: torch.Tensor
    units: list[int]
    vision: torch.Tensor
    text: Optional[torch.Tensor]
    key: Hashable
    minimums: Optional[tuple[int, ...]] = None

    def request(self) -> Request:
        return self.vision, self.units, self.text


def same_sample(a: Sample, b: Sample) -> bool:
    """Identical input to the selection: same units, minimums, visual tokens and text (or none)."""
    if a.units != b.units or a.minimums != b.minimums or not torch.equal(a.vision, b.vision):
        return False
    if a.text is None or b.text is None:
        return a.text is None and b.text is None
    return torch.equal(a.text, b.text)


def deduplicate(samples: Sequence[Optional[Sample]]) -> tuple[list[int], list[int]]:
    """``(unique, owner)``: ``unique`` lists the first of each group of identical samples
    (indices into ``samples``); ``owner[i]`` is the index into ``unique`` of sample ``i``'s group,
    or -1 where ``samples[i]`` is None (a row without visual tokens)."""
    seen: dict[Hashable, list[int]] = {}  # key -> indices into unique
    unique: list[int] = []
    owner: list[int] = []
    for i, s in enumerate(samples):
        if s is None:
            owner.append(-1)
            continue
        match = next((j for j in seen.get(s.key, []) if same_sample(samples[unique[j]], s)), -1)
        if match < 0:
            match = len(unique)
            unique.append(i)
            seen.setdefault(s.key, []).append(match)
        owner.append(match)
    return unique, owner


# ---------------------------------------------------------------------------- batched selection
def sample_budget(n: int, keep_ratio: Optional[float], budget: Optional[int]) -> int:
    """Visual tokens kept of a row with ``n``: ``floor(keep_ratio * n + 0.5)`` (as
    :func:`adaptive_prune.prune` rounds) or ``budget``, clipped to ``n``."""
    b = int(keep_ratio * n + 0.5) if budget is None else int(budget)
    return min(b, n)


def feasible_min(q: int, counts: Sequence[int], budget: int) -> int:
    """Largest ``q' <= q`` with ``sum(min(q', m)) <= budget`` (so short budgets never fail)."""
    while q > 0 and sum(min(q, m) for m in counts) > budget:
        q -= 1
    return q


def group_by_minimum(
    units: Sequence[Sequence[int]], budgets: Sequence[int], q: int
) -> dict[int, list[int]]:
    """Requests grouped by their feasible minimum (``{q': [request indices, ascending]}``),
    in order of first appearance: one ``prune_batch`` call per group."""
    groups: dict[int, list[int]] = {}
    for i, (u, b) in enumerate(zip(units, budgets)):
        groups.setdefault(feasible_min(q, u, b), []).append(i)
    return groups


def row_minimums(value: Any, units: Sequence[int]) -> list[Optional[tuple[int, ...]]]:
    """Each prefill row's per-unit minimums from the handle's ``min_per_image`` setting.

    Args:
        value: an int (every unit: the handle's ``min_per_image``, lowered where a budget is
            short; every row gets None), a tuple of ints (one per unit of every row that has
            visual units: each such row must have that many) or a tuple of int tuples (one per
            sample of the batch, in batch order; a sample's prefill rows are consecutive, as
            ``generate`` expands beams and returned sequences, so row ``i`` belongs to sample
            ``i // (rows // samples)``). Validated by the handle (ints >= 0).
        units: number of visual units (images, video frames) of each prefill row.

    Raises ``ValueError`` naming ``min_per_image`` when a length does not match.
    """
    n_rows = len(units)
    if isinstance(value, int):
        return [None] * n_rows
    if all(isinstance(v, int) for v in value):  # one list for every row
        out: list[Optional[tuple[int, ...]]] = []
        for i, k in enumerate(units):
            if k and len(value) != k:
                raise ValueError(
                    f"min_per_image has {len(value)} entries but prefill row {i} has {k} images "
                    "/ video frames (its visual units, in prompt order; handle.last_units lists "
                    "them after a prefill): give one minimum per unit, or one list per sample"
                )
            out.append(tuple(value) if k else None)
        return out
    n_samples = len(value)
    if n_samples == 0 or n_rows % n_samples:
        raise ValueError(
            f"min_per_image has {n_samples} per-sample lists but the prefill has {n_rows} rows "
            "(batch x num_beams x num_return_sequences): give one list per sample of the batch"
        )
    per = n_rows // n_samples
    out = []
    for i, k in enumerate(units):
        q = value[i // per]
        if len(q) != k:
            raise ValueError(
                f"min_per_image[{i // per}] has {len(q)} entries but sample {i // per} has {k} "
                "images / video frames (its visual units, in prompt order; handle.last_units "
                "lists them after a prefill)"
            )
        out.append(tuple(q) if k else None)
    return out


def pack(
    requests: Sequence[Request],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[Optional[torch.Tensor]]]:
    """``prune_batch``'s packing of ``requests``: ``(vision [N, D], cu_seqlens [n+1],
    request_offsets [R+1], texts)`` (int64 offsets on the CPU; one unit = one image)."""
    units = [u for _, us, _ in requests for u in us]
    cu = torch.zeros(len(units) + 1, dtype=torch.int64)
    cu[1:] = torch.tensor(units, dtype=torch.int64).cumsum(0)
    ro = [0]
    for _, us, _ in requests:
        ro.append(ro[-1] + len(us))
    vision = torch.cat([v for v, _, _ in requests])
    return vision, cu, torch.tensor(ro, dtype=torch.int64), [t for _, _, t in requests]


def split_by_budgets(
    indices: torch.Tensor, budgets: Sequence[int], starts: Sequence[int]
) -> list[torch.Tensor]:
    """Split a batched selection (``[sum(budgets)]`` global rows, request after request, as
    ``prune_batch`` returns them) into each request's own rows: request ``k`` owns
    ``budgets[k]`` entries and its rows start at global row ``starts[k]``. Slicing on the host:
    every request keeps exactly its budget, so no device sync."""
    out = []
    start = 0
    for b, first in zip(budgets, starts):
        out.append(indices[start : start + b] - first)
        start += b
    return out


def select(
    requests: Sequence[Request],
    prune_kwargs: dict[str, Any],
    minimums: Optional[Sequence[Optional[tuple[int, ...]]]] = None,
) -> list[torch.Tensor]:
    """Kept rows (ascending) of each request's ``vision``: one
    :func:`adaptive_prune.prune_batch` call for all of them (one per distinct feasible minimum,
    which differs only when a request's budget cannot give every unit ``min_per_image``, and
    one for all requests with per-unit ``minimums``).

    ``prune_kwargs``: ``keep_ratio`` or ``budget`` (the other None), ``min_per_image`` (an int),
    and what else goes to ``prune_batch`` (``method``, the method's options). ``minimums``: per
    request, None (``min_per_image``, lowered to what the budget allows) or one minimum per unit,
    which is never lowered: a request whose budget cannot give them raises ``ValueError``.
    """
    import adaptive_prune

    kw = dict(prune_kwargs)
    ratio = kw.pop("keep_ratio")
    budget = kw.pop("budget")
    q = kw.pop("min_per_image")
    minimums = [None] * len(requests) if minimums is None else list(minimums)
    budgets = [sample_budget(int(v.shape[0]), ratio, budget) for v, _, _ in requests]
    plain = [i for i, m in enumerate(minimums) if m is None]
    groups: dict[Any, list[int]] = {
        q_i: [plain[j] for j in members]
        for q_i, members in group_by_minimum(
            [requests[i][1] for i in plain], [budgets[i] for i in plain], q
        ).items()
    }
    per_unit = [i for i, m in enumerate(minimums) if m is not None]
    for i in per_unit:
        units, qs = requests[i][1], minimums[i]
        need = sum(min(a, m) for a, m in zip(qs, units))
        if need > budgets[i]:
            raise ValueError(
                f"min_per_image asks for {need} visual tokens (sum of min(minimum, tokens) over "
                f"the {len(units)} images / frames of a sample with {sum(units)} visual tokens) "
                f"but the sample keeps {budgets[i]}: raise keep_ratio / budget or lower "
                "min_per_image"
            )
    if per_unit:
        groups["per-unit"] = per_unit
    out: list[Optional[torch.Tensor]] = [None] * len(requests)
    for q_i, members in groups.items():
        vision, cu, ro, texts = pack([requests[i] for i in members])
        if q_i == "per-unit":
            q_i = [v for i in members for v in minimums[i]]  # one per image of the batch
        res = adaptive_prune.prune_batch(
            vision,
            cu,
            ro,
            texts,
            budget=[budgets[i] for i in members],
            min_per_image=q_i,
            **kw,
        )
        starts = [int(cu[ro[k]]) for k in range(len(members))]
        parts = split_by_budgets(res.indices, [budgets[i] for i in members], starts)
        for i, rows in zip(members, parts):
            out[i] = rows
    return out  # type: ignore[return-value]


def choose(
    samples: Sequence[Optional[Sample]], prune_kwargs: dict[str, Any]
) -> list[Optional[torch.Tensor]]:
    """Positions (in its row) of the visual tokens each row keeps, None for rows without any.

    Identical samples (e.g. the beams of one prompt) share one selection, so they are pruned
    alike even by a selector that is not deterministic; all distinct ones go to :func:`select`.
    """
    unique, owner = deduplicate(samples)
    chosen = (
        select(
            [samples[i].request() for i in unique],
            prune_kwargs,
            [samples[i].minimums for i in unique],
        )
        if unique
        else []
    )
    kept = []
    for i, c in zip(unique, chosen):
        rows = samples[i].rows
        kept.append(rows[c.to(rows.device)])
    return [kept[o] if o >= 0 else None for o in owner]


# ---------------------------------------------------------------------------- compact layout
def keep_mask(
    real: torch.Tensor, visual: torch.Tensor, kept: Sequence[Optional[torch.Tensor]]
) -> torch.Tensor:
    """``[B, L]`` bool: the tokens that reach the language model: every real text token plus
    the kept visual positions ``kept[i]`` of each row (None: none)."""
    keep = ~visual & real
    for i, rows in enumerate(kept):
        if rows is not None:
            keep[i, rows] = True
    return keep


@dataclass
class Compact:
    """The compact layout of a pruned prefill.

    - ``index``: ``[B, Lp]`` int64, the unpruned position each slot takes its token from (0 in
      the left padding);
    - ``mask``: ``[B, Lp]`` bool, the slots that hold a kept token (row ``i``'s last
      ``len(kept[i])`` slots);
    - ``kept``: per row, ``[k_i]`` int64, its kept positions, ascending.
    """

    index: torch.Tensor
    mask: torch.Tensor
    kept: list[torch.Tensor]

    @property
    def length(self) -> int:
        return int(self.index.shape[1])


def compact_layout(keep: torch.Tensor) -> Compact:
    """Row ``i`` holds its kept tokens (``keep [B, L]`` bool), in order, at its right end;
    ``Lp`` is the longest row. One host sync (``Lp`` sets the shape of what runs next)."""
    b = keep.shape[0]
    dev = keep.device
    counts = keep.sum(1)
    lp = int(counts.max())
    slot = torch.arange(lp, device=dev).expand(b, lp)
    mask = slot >= (lp - counts).view(-1, 1)
    index = torch.zeros(b, lp, dtype=torch.long, device=dev)
    kept = [keep[i].nonzero().view(-1) for i in range(b)]
    index[mask] = torch.cat(kept)
    return Compact(index, mask, kept)


def gather_tokens(embeds: torch.Tensor, compact: Compact) -> torch.Tensor:
    """``[B, L, D]`` -> ``[B, Lp, D]`` (the padding slots repeat position 0's embedding; the
    compact mask hides them)."""
    b, lp = compact.index.shape
    return embeds.gather(1, compact.index.view(b, lp, 1).expand(-1, -1, embeds.shape[-1]))


def gather_positions(positions: torch.Tensor, compact: Compact) -> torch.Tensor:
    """The kept tokens' original positions: ``[R, B, L]`` -> ``[R, B, Lp]`` or ``[B, L]`` ->
    ``[B, Lp]``, 0 in the padding slots."""
    index = compact.index
    if positions.ndim == 3:
        b, lp = index.shape
        index = index.view(1, b, lp).expand(positions.shape[0], -1, -1)
    return positions.gather(-1, index).masked_fill(~compact.mask, 0)


def next_positions(positions: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """``[B]``: 1 + the largest position of each row's real tokens (the first decode position
    the unpruned model would use). For 4 M-RoPE rows (Qwen3-VL: a text row then the 3 rotary
    rows) only the rotary rows count."""
    if positions.ndim == 3:
        b, length = real.shape
        rope = positions[1:] if positions.shape[0] == 4 else positions
        big = rope.masked_fill(~real.view(1, b, length), -1).amax(dim=(0, 2))
    else:
        big = positions.masked_fill(~real, -1).amax(dim=1)
    return big + 1


def gather_deepstack(
    visual_pos_masks: torch.Tensor,
    deepstack: Optional[Sequence[torch.Tensor]],
    keep: torch.Tensor,
    compact: Compact,
) -> tuple[torch.Tensor, Optional[list[torch.Tensor]]]:
    """Qwen3-VL's DeepStack inputs pruned with their tokens.

    ``visual_pos_masks [B, L]`` bool marks the visual tokens; each ``deepstack[j]`` holds one
    ``[V, D]`` row per marked token, row-major over the batch. Returns the mask in the compact
    layout ``[B, Lp]`` and each ``deepstack[j]`` restricted to the kept tokens, in order.
    """
    vpm = visual_pos_masks.to(keep.device)
    sel = keep[vpm]  # [V]: which visual tokens are kept, in the features' order
    new_mask = vpm.gather(1, compact.index) & compact.mask
    if deepstack is None:
        return new_mask, None
    return new_mask, [d[sel.to(d.device)] for d in deepstack]
