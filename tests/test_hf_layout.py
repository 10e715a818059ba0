"""The pure tensor logic of the Hugging Face integration (``integrations/hf/layout.py``).

No model and no transformers: hand-built rows of text, image and video placeholders, checked
against brute-force expectations (Python loops over positions) and the properties the
integration relies on: kept tokens keep their original positions, identical samples share one
selection, DeepStack features travel with their tokens.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import adaptive_prune
from adaptive_prune.integrations.hf import layout as L

TXT, IMG, VID = 0, 1, 2  # token kinds of the hand-built rows


# ---------------------------------------------------------------------------- hand-built rows
def _row(items, g, lead=2, tail=3):
    """One unpadded row: text, then per item (kind, unit lengths) its placeholders, text.

    Returns (kinds [L], units) with units = [(kind, [positions])] in placeholder order.
    """
    kinds, units = [TXT] * lead, []
    for kind, lens in items:
        for n in lens:
            units.append((kind, list(range(len(kinds), len(kinds) + n))))
            kinds += [kind] * n
        kinds += [TXT] * int(torch.randint(1, 3, (1,), generator=g))
    kinds += [TXT] * tail
    return kinds, units


def _batch(rows, pad=True):
    """Left-pad rows of kinds into (kinds [B, L] with -1 for padding, real [B, L] bool)."""
    length = max(len(k) for k, _ in rows)
    kinds = torch.full((len(rows), length), -1, dtype=torch.long)
    for b, (k, _) in enumerate(rows):
        kinds[b, length - len(k) :] = torch.tensor(k)
    return kinds, kinds >= 0


def _shift(units, by):
    return [(k, [p + by for p in ps]) for k, ps in units]


def _rope_positions(kinds, real, grid=2):
    """Qwen-like M-RoPE ``[3, B, L]``: text advances all rows by one; a visual unit of n tokens
    is a (n // grid) x grid patch grid at a shared temporal index, and the text after it starts
    at 1 + the largest position used so far (so positions jump over a unit)."""
    b, length = kinds.shape
    pos = torch.zeros(3, b, length, dtype=torch.long)
    for i in range(b):
        nxt, j = 0, 0
        while j < length:
            if not real[i, j]:
                j += 1
                continue
            if kinds[i, j] == TXT:
                pos[:, i, j] = nxt
                nxt += 1
                j += 1
                continue
            e = j
            while e < length and kinds[i, e] == kinds[i, j]:
                e += 1
            for t in range(e - j):
                pos[0, i, j + t] = nxt
                pos[1, i, j + t] = nxt + t // grid
                pos[2, i, j + t] = nxt + t % grid
            nxt = int(pos[:, i, j:e].max()) + 1
            j = e
    return pos


# ---------------------------------------------------------------------------- units and text
@pytest.mark.parametrize("length", [1, 2, 7, 40])
def test_contiguous_runs_brute_force(length):
    g = torch.Generator().manual_seed(length)
    for _ in range(20):
        row = torch.rand(length, generator=g) < 0.5
        want = [len(list(grp)) for v, grp in itertools.groupby(row.tolist()) if v]
        assert L.contiguous_runs(row) == want
    assert L.contiguous_runs(torch.zeros(length, dtype=torch.bool)) == []
    assert L.contiguous_runs(torch.ones(length, dtype=torch.bool)) == [length]


def test_unit_positions_interleave_modalities():
    """Images and video frames of one row, interleaved, come back in placeholder order with
    their own positions; zero-length units are skipped."""
    g = torch.Generator().manual_seed(0)
    items = [(IMG, [4]), (VID, [3, 3, 4]), (IMG, [6]), (IMG, [1]), (VID, [5])]
    kinds, units = _row(items, g)
    kinds = torch.tensor(kinds)
    masks = [kinds == IMG, kinds == VID]
    lengths = [[4, 0, 6, 1], [3, 3, 4, 0, 5]]
    got = L.unit_positions(masks, lengths)
    assert [p.tolist() for p in got] == [ps for _, ps in units]
    assert all(p.dtype == torch.int64 for p in got)
    assert L.unit_positions([torch.zeros(5, dtype=torch.bool)] * 2, [[], []]) == []


def test_text_mask_brute_force():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 12, (3, 20), generator=g)
    real = torch.rand(3, 20, generator=g) < 0.8
    vis = torch.rand(3, 20, generator=g) < 0.3
    exclude = torch.tensor([2, 5, 7])
    got = L.text_mask(ids, real, vis, exclude)
    for b, j in itertools.product(range(3), range(20)):
        want = bool(real[b, j]) and not bool(vis[b, j]) and int(ids[b, j]) not in (2, 5, 7)
        assert bool(got[b, j]) == want


# ---------------------------------------------------------------------------- de-duplication
def _sample(g, units, text_len=3, key="k", d=8):
    n = sum(units)
    text = torch.randn(text_len, d, generator=g) if text_len else None
    return L.Sample(torch.arange(n) + 5, list(units), torch.randn(n, d, generator=g), text, key)


def _clone(s, **change):
    fields = dict(
        rows=s.rows.clone(),
        units=list(s.units),
        vision=s.vision.clone(),
        text=None if s.text is None else s.text.clone(),
        key=s.key,
        minimums=s.minimums,
    )
    fields.update(change)
    return L.Sample(**fields)


def test_deduplicate_brute_force():
    """Identical samples (equal tensors, not the same objects) share one group; anything that
    differs (a token, the units, the text, text vs none, the key) starts a new one."""
    g = torch.Generator().manual_seed(2)
    a = _sample(g, [3, 4])
    b = _sample(g, [7], text_len=0)
    vision = a.vision.clone()
    vision[2, 1] += 1e-3
    text = a.text.clone()
    text[0, 0] = -text[0, 0]
    variants = [
        a,
        None,
        _clone(a),
        b,
        _clone(a, vision=vision),
        _clone(a, units=[4, 3]),
        _clone(a, text=text),
        _clone(a, text=None),
        _clone(b),
        _clone(a, key="other"),
        None,
        _clone(a),
    ]
    unique, owner = L.deduplicate(variants)
    for i, s in enumerate(variants):
        if s is None:
            assert owner[i] == -1
            continue
        first = min(j for j, t in enumerate(variants) if t is not None and _equal(s, t))
        assert unique[owner[i]] == first  # the group's representative is its first member
    assert len(unique) == len(set(unique)) == 7  # a, b and the five variants of a
    assert owner[0] == owner[2] == owner[11] and owner[3] == owner[8]


def _equal(s, t):
    same_text = (s.text is None and t.text is None) or (
        s.text is not None and t.text is not None and torch.equal(s.text, t.text)
    )
    return s.key == t.key and s.units == t.units and torch.equal(s.vision, t.vision) and same_text


def test_deduplicate_empty():
    assert L.deduplicate([]) == ([], [])
    assert L.deduplicate([None, None]) == ([], [-1, -1])


# ---------------------------------------------------------------------------- batched selection
@pytest.mark.parametrize("n", [0, 1, 3, 10, 57, 100])
def test_sample_budget_rounds_like_prune(n):
    for ratio in (0.01, 0.1, 0.25, 0.3, 0.5, 0.75, 1.0):
        got = L.sample_budget(n, ratio, None)
        if n:  # the core's own rounding of keep_ratio on the same tokens
            v = torch.randn(n, 4, generator=torch.Generator().manual_seed(n))
            want = adaptive_prune.prune(
                v, torch.tensor([0, n]), keep_ratio=ratio, min_per_image=0, method="random"
            ).indices.numel()
            assert got == want
        assert 0 <= got <= n
    assert L.sample_budget(n, None, 7) == min(7, n)


def test_feasible_min_brute_force():
    g = torch.Generator().manual_seed(3)
    for _ in range(200):
        counts = torch.randint(0, 9, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g)
        counts = counts.tolist()
        budget = int(torch.randint(0, sum(counts) + 1, (1,), generator=g))
        q = int(torch.randint(0, 10, (1,), generator=g))
        want = max(p for p in range(q + 1) if p == 0 or sum(min(p, m) for m in counts) <= budget)
        assert L.feasible_min(q, counts, budget) == want


def test_group_by_minimum():
    units = [[5, 7, 4], [9], [3, 3, 3, 3, 2], [6, 6], [1, 1]]
    budgets = [3, 3, 3, 12, 2]
    groups = L.group_by_minimum(units, budgets, 2)
    assert sorted(i for m in groups.values() for i in m) == list(range(len(units)))
    for q, members in groups.items():
        assert members == sorted(members)
        assert all(L.feasible_min(2, units[i], budgets[i]) == q for i in members)
    assert list(groups) == [1, 2, 0]  # in order of first appearance


def test_pack_and_split_round_trip():
    """pack() lays requests out as prune_batch expects; split_by_budgets() undoes it for a
    selection laid out request after request."""
    g = torch.Generator().manual_seed(4)
    reqs = [
        (torch.randn(sum(u), 6, generator=g), u, t)
        for u, t in [([3, 2], torch.randn(2, 6)), ([4], None), ([1, 1, 5], torch.randn(1, 6))]
    ]
    vision, cu, ro, texts = L.pack(reqs)
    assert torch.equal(vision, torch.cat([v for v, _, _ in reqs]))
    assert cu.tolist() == [0, 3, 5, 9, 10, 11, 16] and ro.tolist() == [0, 2, 3, 6]
    assert texts[1] is None and texts[0] is reqs[0][2]
    local = [torch.tensor([0, 4]), torch.tensor([1, 2, 3]), torch.tensor([6])]
    starts = [int(cu[ro[r]]) for r in range(3)]
    flat = torch.cat([c + s for c, s in zip(local, starts)])
    parts = L.split_by_budgets(flat, [len(c) for c in local], starts)
    for c, p in zip(local, parts):
        assert torch.equal(c, p)
    for r, (v, _, _) in enumerate(reqs):  # the global rows are the request's own tokens
        assert torch.equal(vision[flat[sum(map(len, local[:r])) :][: len(local[r])]], v[local[r]])


def test_select_equals_prune_per_request():
    g = torch.Generator().manual_seed(5)
    units = [[5, 7, 4], [9], [3, 3, 3, 3, 2]]
    reqs = [
        (torch.randn(sum(u), 16, generator=g), u, torch.randn(4, 16, generator=g) if i else None)
        for i, u in enumerate(units)
    ]
    kw = dict(keep_ratio=None, budget=4, method="adaptive", min_per_image=1)
    got = L.select(reqs, kw)
    for (v, u, t), rows in zip(reqs, got):
        b = min(4, v.shape[0])
        q = L.feasible_min(1, u, b)
        cu = torch.tensor([0] + list(itertools.accumulate(u)))
        assert torch.equal(rows, adaptive_prune.prune(v, cu, t, budget=b, min_per_image=q).indices)


def test_select_with_per_unit_minimums_equals_prune_per_request(monkeypatch):
    """Requests with their own per-unit minimums go to one ``prune_batch`` call with one minimum
    per image, never lowered; the others keep the int minimum (lowered where short)."""
    g = torch.Generator().manual_seed(7)
    units = [[5, 7, 4], [9], [3, 3, 3, 3, 2], [6, 6]]
    reqs = [
        (torch.randn(sum(u), 16, generator=g), u, torch.randn(4, 16, generator=g) if i else None)
        for i, u in enumerate(units)
    ]
    minimums = [(0, 7, 0), None, (0, 0, 0, 3, 1), (2, 0)]
    kw = dict(keep_ratio=0.5, budget=None, method="adaptive", min_per_image=2)
    calls = []
    real = adaptive_prune.prune_batch

    def spy(*a, **k):
        calls.append((k["min_per_image"], len(a[2]) - 1))
        return real(*a, **k)

    monkeypatch.setattr(adaptive_prune, "prune_batch", spy)
    got = L.select(reqs, kw, minimums)
    assert calls == [(2, 1), ([0, 7, 0, 0, 0, 0, 3, 1, 2, 0], 3)], calls
    for (v, u, t), q, rows in zip(reqs, minimums, got):
        b = L.sample_budget(v.shape[0], 0.5, None)
        cu = torch.tensor([0] + list(itertools.accumulate(u)))
        want = adaptive_prune.prune(v, cu, t, budget=b, min_per_image=q or 2).indices
        assert torch.equal(rows, want)
        per_unit = torch.bucketize(rows, cu[1:], right=True).bincount(minlength=len(u))
        for k, m in enumerate(u):
            assert per_unit[k] >= min((q or (2,) * len(u))[k], m), (q, per_unit)
    # the protection binds: without it the 7-token image keeps fewer than all its tokens
    plain = L.select(reqs[:1], dict(kw, min_per_image=0))[0]
    assert int(((plain >= 5) & (plain < 12)).sum()) < 7
    assert int(((got[0] >= 5) & (got[0] < 12)).sum()) == 7


def test_row_minimums_forms_and_errors():
    assert L.row_minimums(3, [2, 0, 1]) == [None, None, None]
    assert L.row_minimums((4, 5), [2, 0, 2]) == [(4, 5), None, (4, 5)]  # every row with units
    # one list per sample; a sample's rows (beams) are consecutive and share it
    got = L.row_minimums(((1, 2), (), (3,)), [2, 2, 0, 0, 1, 1])
    assert got == [(1, 2), (1, 2), None, None, (3,), (3,)]
    with pytest.raises(ValueError, match="min_per_image has 2 entries but prefill row 1 has 3"):
        L.row_minimums((1, 2), [2, 3])
    with pytest.raises(ValueError, match="3 per-sample lists but the prefill has 4 rows"):
        L.row_minimums(((1,), (1,), (1,)), [1, 1, 1, 1])
    with pytest.raises(ValueError, match=r"min_per_image\[1\] has 1 entries but sample 1 has 2"):
        L.row_minimums(((1, 1), (1,)), [2, 2])
    v = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    kw = dict(keep_ratio=None, budget=3, method="adaptive", min_per_image=1)
    with pytest.raises(ValueError, match="min_per_image asks for 4 visual tokens .* keeps 3"):
        L.select([(v, [4, 4], None)], kw, [(2, 2)])


def test_choose_does_not_merge_rows_with_different_minimums(monkeypatch):
    calls = []
    real = adaptive_prune.prune_batch
    monkeypatch.setattr(
        adaptive_prune, "prune_batch", lambda *a, **k: calls.append(len(a[2]) - 1) or real(*a, **k)
    )
    a = _sample(torch.Generator().manual_seed(8), [6, 6], key="a")
    samples = [a, _clone(a), _clone(a, minimums=(0, 6)), _clone(a, minimums=(0, 6))]
    kept = L.choose(samples, dict(keep_ratio=None, budget=6, method="adaptive", min_per_image=1))
    assert calls == [1, 1]  # one request per distinct (sample, minimums)
    assert torch.equal(kept[0], kept[1]) and torch.equal(kept[2], kept[3])
    assert torch.equal(kept[2], a.rows[6:])  # the second image keeps all its 6 tokens


def _fickle(seeds):
    """A prune_batch that answers differently on every call (random rows per request)."""

    def run(vision, cu_seqlens, request_offsets, text=None, *, budget, **kw):
        g = torch.Generator().manual_seed(next(seeds))
        cu, ro = cu_seqlens.tolist(), request_offsets.tolist()
        parts = []
        for r, b in enumerate(budget):
            a, e = cu[ro[r]], cu[ro[r + 1]]
            parts.append((a + torch.randperm(e - a, generator=g)[:b]).sort().values)
        return SimpleNamespace(indices=torch.cat(parts))

    return run


def test_choose_identical_samples_share_one_selection(monkeypatch):
    """Beams: identical rows are selected once, so even a selector that answers differently on
    every call prunes them alike; rows without visual tokens get None."""
    calls = []
    fickle = _fickle(itertools.count())

    def spy(*a, **k):
        calls.append(len(a[2]) - 1)
        return fickle(*a, **k)

    monkeypatch.setattr(adaptive_prune, "prune_batch", spy)
    g = torch.Generator().manual_seed(6)
    a, b = _sample(g, [6, 6], key="a"), _sample(g, [10], key="b")
    samples = [a, _clone(a), _clone(a), None, b, _clone(b), _clone(b)]
    kept = L.choose(samples, dict(keep_ratio=0.5, budget=None, method="x", min_per_image=1))
    assert calls == [2]  # one batched call, one request per distinct sample
    assert kept[3] is None
    for i, j in [(0, 1), (0, 2), (4, 5), (4, 6)]:
        assert torch.equal(kept[i], kept[j])
    for s, k in zip(samples, kept):
        if s is not None:  # positions of the row, a subset of its visual rows, ascending
            assert len(k) == L.sample_budget(len(s.rows), 0.5, None)
            assert torch.isin(k, s.rows).all() and torch.equal(k, k.sort().values)
    assert L.choose([None], {}) == [None]


# ---------------------------------------------------------------------------- compact layout
def _random_keep(g, b, length):
    real = torch.zeros(b, length, dtype=torch.bool)
    for i in range(b):
        real[i, int(torch.randint(0, length, (1,), generator=g)) :] = True  # left padding
    keep = real & (torch.rand(b, length, generator=g) < 0.6)
    keep[:, -1] = True  # at least one kept token per row
    return real, keep


@pytest.mark.parametrize("b,length", [(1, 1), (1, 9), (3, 17), (5, 40)])
def test_compact_layout_brute_force(b, length):
    g = torch.Generator().manual_seed(b * 100 + length)
    _, keep = _random_keep(g, b, length)
    c = L.compact_layout(keep)
    kept = [[j for j in range(length) if keep[i, j]] for i in range(b)]
    lp = max(map(len, kept))
    assert c.length == lp and c.index.shape == c.mask.shape == (b, lp)
    for i in range(b):
        assert c.kept[i].tolist() == kept[i]
        pad = lp - len(kept[i])
        assert c.mask[i].tolist() == [False] * pad + [True] * len(kept[i])
        assert c.index[i].tolist() == [0] * pad + kept[i]
    emb = torch.randn(b, length, 5, generator=g)
    out = L.gather_tokens(emb, c)
    for i in range(b):
        assert torch.equal(out[i, lp - len(kept[i]) :], emb[i, kept[i]])


def test_keep_mask_brute_force():
    g = torch.Generator().manual_seed(7)
    real = torch.rand(3, 12, generator=g) < 0.8
    vis = torch.rand(3, 12, generator=g) < 0.5
    kept = [vis[0].nonzero().view(-1)[::2], None, vis[2].nonzero().view(-1)[:1]]
    got = L.keep_mask(real, vis, kept)
    for i, j in itertools.product(range(3), range(12)):
        chosen = kept[i] is not None and j in kept[i].tolist()
        assert bool(got[i, j]) == ((bool(real[i, j]) and not bool(vis[i, j])) or chosen)


def _pipeline(rows, ratio, seed):
    """The prefill's tensor path, as hooks.py runs it, with a random selector."""
    kinds, real = _batch(rows)
    vis = (kinds == IMG) | (kinds == VID)
    pad = [kinds.shape[1] - len(k) for k, _ in rows]
    samples = []
    for i, (_, units) in enumerate(rows):
        if not units:
            samples.append(None)
            continue
        masks = [kinds[i] == IMG, kinds[i] == VID]
        lengths = [[len(p) for k, p in units if k == m] for m in (IMG, VID)]
        pos = L.unit_positions(masks, lengths)
        assert [p.tolist() for p in pos] == [p for _, p in _shift(units, pad[i])]
        lens = [len(p) for p in pos]
        samples.append(L.Sample(torch.cat(pos), lens, torch.zeros(sum(lens), 1), None, i))
    kw = dict(keep_ratio=ratio, budget=None, method="x", min_per_image=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(adaptive_prune, "prune_batch", _fickle(itertools.count(seed)))
        kept = L.choose(samples, kw)
    keep = L.keep_mask(real, vis, kept)
    return kinds, real, keep, kept, L.compact_layout(keep)


@pytest.mark.parametrize("ratio", [0.2, 0.5, 1.0])
def test_positions_of_kept_tokens_are_the_original_ones(ratio):
    """After pruning, every kept token has its unpruned (M-)RoPE position: in particular the
    text after an image or video keeps its original positions, with a gap where dropped tokens
    were (never renumbered). Text always survives; padding never does."""
    g = torch.Generator().manual_seed(8)
    rows = [
        _row([(IMG, [8]), (VID, [4, 4, 4])], g),
        _row([(IMG, [6]), (IMG, [4]), (IMG, [10])], g, lead=4),
        _row([], g),  # text only, next to rows with images
    ]
    kinds, real, keep, kept, c = _pipeline(rows, ratio, seed=0)
    pos3 = _rope_positions(kinds, real)
    pos1 = (real.long().cumsum(1) - 1).clamp(min=0)  # plain 1-D positions, left-padded rows
    for pos in (pos3, pos1):
        new = L.gather_positions(pos, c)
        assert new.shape == pos.shape[:-1] + (c.length,)
        for i in range(len(rows)):
            k = c.kept[i]
            assert torch.equal(new[..., i, c.length - len(k) :], pos[..., i, k])
            assert (new[..., i, : c.length - len(k)] == 0).all()
    for i in range(len(rows)):
        k = c.kept[i].tolist()
        text = [j for j in range(kinds.shape[1]) if real[i, j] and kinds[i, j] == TXT]
        assert set(text) <= set(k) and all(real[i, j] for j in k)
        visual_kept = [j for j in k if kinds[i, j] != TXT]
        assert visual_kept == ([] if kept[i] is None else kept[i].tolist())
        if ratio < 1 and kept[i] is not None:  # the text after the last item: same position
            last = max(p for _, ps in _shift(rows[i][1], kinds.shape[1] - len(rows[i][0]))
                       for p in ps)  # fmt: skip
            after = next(j for j in text if j > last)
            slot = k.index(after) + c.length - len(k)
            assert int(L.gather_positions(pos1, c)[i, slot]) == int(pos1[i, after])
            assert int(pos1[i, after]) > k.index(after) - k.index(text[0]) + int(pos1[i, text[0]])


def test_next_positions_brute_force():
    g = torch.Generator().manual_seed(9)
    rows = [_row([(IMG, [8])], g), _row([(VID, [4, 4])], g, lead=5)]
    kinds, real = _batch(rows)
    pos3 = _rope_positions(kinds, real)
    text_row = torch.full((1,) + pos3.shape[1:], 10_000)  # Qwen3-VL's extra row: not counted
    pos4 = torch.cat([text_row, pos3])
    pos1 = (real.long().cumsum(1) - 1).clamp(min=0)
    for pos, rope in [(pos3, pos3), (pos4, pos3), (pos1, pos1[None])]:
        got = L.next_positions(pos, real)
        for i in range(len(rows)):
            want = 1 + max(int(rope[r, i, j]) for r in range(rope.shape[0])
                           for j in range(kinds.shape[1]) if real[i, j])  # fmt: skip
            assert int(got[i]) == want


def test_gather_deepstack_features_travel_with_their_tokens():
    """Each DeepStack feature row belongs to one visual token (row-major over the batch); after
    pruning, the i-th row left belongs to the i-th visual slot of the compact layout."""
    g = torch.Generator().manual_seed(10)
    rows = [_row([(IMG, [6]), (VID, [4, 4])], g), _row([(IMG, [4]), (IMG, [9])], g, lead=3)]
    kinds, real, keep, _, c = _pipeline(rows, 0.4, seed=3)
    vpm = (kinds == IMG) | (kinds == VID)
    owner = vpm.nonzero()  # [V, 2]: (row, position) of each feature row, row-major
    # feature j of level l encodes its token: 1000 * row + position, plus the level
    ds = [(1000 * owner[:, 0] + owner[:, 1]).float().view(-1, 1).repeat(1, 3) + lvl
          for lvl in range(3)]  # fmt: skip
    new_mask, new_ds = L.gather_deepstack(vpm, ds, keep, c)
    slots = new_mask.nonzero()  # the visual slots of the compact layout, row-major
    assert new_mask.shape == c.mask.shape and not (new_mask & ~c.mask).any()
    for lvl, d in enumerate(new_ds):
        assert d.shape == (len(slots), 3)
        for (i, s), feat in zip(slots.tolist(), d):
            assert (feat == 1000 * i + int(c.index[i, s]) + lvl).all()
    kept_visual = sum(int((keep[i] & vpm[i]).sum()) for i in range(len(rows)))
    assert len(slots) == kept_visual
    assert L.gather_deepstack(vpm, None, keep, c)[1] is None


# ---------------------------------------------------------------------------- imports
def test_layout_imports_without_transformers():
    """layout and models need torch only; attach() without transformers names the extra."""
    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "import adaptive_prune.integrations.hf as aphf\n"
        "from adaptive_prune.integrations.hf import layout, models\n"
        "assert 'adaptive_prune.integrations.hf.hooks' not in sys.modules\n"
        "try:\n"
        "    aphf.attach\n"
        "except ImportError as e:\n"
        "    assert 'adaptive_prune[hf]' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('attach imported without transformers')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
