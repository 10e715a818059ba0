"""Counters of the GPU path that a CPU can measure, and what they predict for one H200.

Runs the real kernels (the Triton interpreter on a CPU) on the real 16 x 576 inputs of the
speed benchmarks, keep 25 %, 64 text tokens, and counts:

- per greedy stage and engine (``blocks``: similarity blocks + the windowed loop of
  ``_maxmin.py``; ``rows``: ``_engine.py``, no block): picks, rounds, picks per round, the
  (entry, pick) distances the row engine computes (its "rows recomputed", in units of one
  distance), and the bytes each pick reads from ``vision`` under a stated tile model;
- per ``prune`` call: Triton launches (by kernel) and the eager PyTorch ops of the composition
  between the ops (aten ops seen by a dispatch mode, which does not see inside a custom op's
  implementation), with each engine;
- that both engines return the same picks and gains.

Then it applies a small model (below, constants printed) to turn the counters into predicted
GPU times, so that the first GPU run (``benchmarks/gpu_check.sh`` + ``greedy_rounds.py``)
confirms or refutes it. Nothing here is a GPU measurement.

Usage::

    python benchmarks/gpu_counters.py             # writes benchmarks/results/gpu_counters.csv
    python benchmarks/gpu_counters.py --dry-run   # small synthetic input, nothing written

The real tokens are 384-dim (the speed benchmarks lift them to D = 3584 by an orthogonal map,
which keeps every cosine, so picks and counts are the same); byte and flop counts are given
for D = 3584 bf16.
"""

from __future__ import annotations

import argparse
import collections
import csv
import os
import sys
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [p for p in (str(REPO), str(REPO / "benchmarks")) if p not in sys.path]

import _harness as H  # noqa: E402

OUT = REPO / "benchmarks" / "results" / "gpu_counters.csv"
FIELDS = (
    "date git_commit machine cpu device torch triton shape keep_ratio what engine window tile "
    "value unit note"
).split()

# --- the model (assumptions, to be confirmed or refuted by the first GPU run) -----------------
D_MODEL = 3584  # hidden size of the benchmark (Qwen2.5-VL-7B)
BYTES = 2  # bf16
HBM_TBS = 4.8  # H200 HBM3e, datasheet
TC_TFLOPS = 600.0  # realistic dense bf16 tensor-core rate for 64x64 tiles (datasheet ~990)
BARRIER_US = 1.5  # one device-wide barrier over <= 132 resident programs (atomic + spin)
WINDOW_US = 4.0  # phase W of one round without the merges: L x L x D dot, L on-chip steps
MERGE_US = 4.0  # phase W: one tl.sort of MERGE_KEYS int64 keys (the running best + tiles' L each)
MERGE_KEYS = 1024  # keys per sort (CONFIGS["engine_merge"]): MERGE_KEYS / L - 1 tiles per sort
TILE = 512  # the most entries per tile on a GPU (CONFIGS["engine_tile"])
N_SM = 132  # SMs of an H200: a GPU tile cuts the entries into about one tile per SM


def tile_of(sizes: list[int], L: int) -> int:
    """The row engine's tile on an H200 for segments of ``sizes`` (``_common.engine_tile``)."""
    return max(L, min(TILE, L * -(-max(sum(sizes), 1) // (N_SM * L))))


LAUNCH_US = 4.0  # one kernel launch outside a CUDA graph
EAGER_US = 6.0  # one small eager PyTorch op (dispatch + launch)
SKETCH_DIM = 32  # dimension of the (simulated) sketch bound
SCAN_US = 0.5  # phase W's fallback scan: per 1024 entries of the segment's acc, one program


def engine_scratch(stage: str, sizes: list[int], D: int, L: int, groups: bool = True) -> int:
    """Bytes the row engine allocates besides its inputs and outputs (kernels/_engine.py and
    the two launchers) for segments of ``sizes``, tile ``tile_of(sizes, L)``, window ``L``: ``inv``,
    ``acc`` (4 Q), group ids (8 Q, stage 2 with groups), ``cand`` and ``nxt`` (8 T (L + 1)),
    ``sel`` (8 n L), the per-segment vectors, and stage 1's image sums (4 n D, the first
    pick). O(Q + n D): no term in K^2."""
    Q, n = sum(sizes), len(sizes)
    te = tile_of(sizes, L)
    T = sum(-(-m // te) for m in sizes)
    out = 4 * Q + 4 * Q + 8 * T * (L + 1) + 8 * T + 8 * n * L + 8 * n * 12 + 16 * (n + 1)
    if stage == "stage 1":
        out += 4 * n * D
    elif groups:
        out += 8 * Q
    return out


class LaunchCounter:
    """Counts Triton launches by kernel name and the aten ops dispatched outside them."""

    def __init__(self):
        self.launches = collections.Counter()
        self.eager = collections.Counter()
        self.inside = 0

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from triton.runtime.jit import KernelInterface

        counter = self
        self._orig = KernelInterface.__getitem__

        def getitem(kernel, grid):
            launch = counter._orig(kernel, grid)

            def run(*a, **k):
                name = getattr(kernel, "fn", kernel)
                counter.launches[getattr(name, "__name__", str(name))] += 1
                counter.inside += 1
                try:
                    return launch(*a, **k)
                finally:
                    counter.inside -= 1

            return run

        KernelInterface.__getitem__ = getitem

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if not counter.inside:
                    counter.eager[str(func.overloadpacket.__name__)] += 1
                return func(*args, **(kwargs or {}))

        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        from triton.runtime.jit import KernelInterface

        self._mode.__exit__(*exc)
        KernelInterface.__getitem__ = self._orig
        return False


def cuda_ms(fn, runs: int = 5):
    """Median CUDA-event time (ms) of ``fn`` after a warm-up; None without CUDA."""
    if not torch.cuda.is_available():
        return None
    fn()
    out = []
    for _ in range(runs):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        out.append(a.elapsed_time(b))
    return sorted(out)[len(out) // 2]


def captured_calls(x, cu, text, keep):
    """The greedy ops' arguments in one ``prune`` call (seen by a dispatch mode), with the
    method's groups of similar images (stage 2's ``group_offsets``; the row engine serves
    them)."""
    import adaptive_prune as ap

    with ap.backend("reference"), H.OpCapture(("greedy_select", "global_greedy")) as cap:
        ap.prune(x, cu, text, keep_ratio=keep)
    calls = dict(cap.args)
    calls["global_greedy"] = tuple(calls["global_greedy"])[:7]
    return calls


def prune_counts(x, cu, text, keep, engine):
    """Launches and eager ops of one ``prune`` call on the Triton backend with ``engine``."""
    import adaptive_prune as ap

    with ap.backend("triton", greedy_engine=engine), LaunchCounter() as c:
        ap.prune(x, cu, text, keep_ratio=keep)
    return c


PICK_TIE = 1e-5  # the engine's pick band (kernels/_engine.py)


def simulate(xh: torch.Tensor, init: list[int], steps: int, L: int, apply_init: bool,
             gid: torch.Tensor | None = None) -> dict:  # fmt: skip
    """The row engine's rounds on one segment, in PyTorch (fp32 distances ``1 - x̂ x̂^T``,
    ``+inf`` across groups ``gid``): the window (the ``L`` best in greedy order), the bound (the
    ``(L+1)``-th), the exact picks of a round by the band rule (``(M - PICK_TIE, lowest index
    in the band)`` must beat the bound; else one pick by the scan), and the work phase T does
    ((entry, pick) pairs of the ``L x L`` tiles of sub-tiles that hold a live entry and share
    a group with the picks). Returns rounds, scans, work, picks, gains."""
    K = xh.shape[0]
    dist = 1.0 - xh @ xh.T
    if gid is None:
        gid = torch.zeros(K, dtype=torch.int64)
    dist[gid[:, None] != gid[None, :]] = float("inf")
    # the sketch bound of docs/kernels.md (not built): the top-SKETCH_DIM principal directions
    # of the segment's x̂ (uncentred), cos(i, j) <= p_i . p_j + r_i r_j; a tile needs no exact
    # dot when 1 - ub - margin >= acc_i for all its live entries and the round's picks
    _, vecs = torch.linalg.eigh((xh.T @ xh).double())
    basis = vecs[:, -SKETCH_DIM:].float()
    pk = xh @ basis
    res = (1.0 - (pk * pk).sum(1)).clamp_min(0).sqrt()
    # the bound as built (kernels/_engine.sketch): a QR basis of SKETCH_DIM entries spread over
    # the segment, residual norms computed directly, and the kernel's margin at D_MODEL
    pick = torch.linspace(0, K - 1, steps=min(SKETCH_DIM, K)).round().long()
    q_b = torch.linalg.qr(xh[pick].T.double()).Q.float()
    pk_b = xh @ q_b
    res_b = torch.linalg.vector_norm(xh - pk_b @ q_b.T, dim=1)
    margin_b = 8.0 * (D_MODEL + SKETCH_DIM + 16) * 2.0**-24 + 1e-6
    skipped = skipped_b = 0
    acc = torch.full((K,), float("inf"))
    n_sub = -(-K // L)
    sub = torch.arange(K) // L
    g_lo = torch.stack([gid[s * L : (s + 1) * L].min() for s in range(n_sub)]) if K else gid
    g_hi = torch.stack([gid[s * L : (s + 1) * L].max() for s in range(n_sub)]) if K else gid
    tie = torch.tensor(PICK_TIE, dtype=torch.float32)

    def live_subtiles():
        live = torch.zeros(n_sub, dtype=torch.bool)
        live[sub[acc > float("-inf")]] = True
        return live

    def tile_work(picks):  # phase T: the live sub-tiles that share a group with a pick chunk
        live, w = live_subtiles(), 0
        for c0 in range(0, len(picks), L):
            gp = gid[picks[c0 : c0 + L]]
            near = ((gp[None, :] >= g_lo[:, None]) & (gp[None, :] <= g_hi[:, None])).any(1)
            w += int((live & near).sum()) * L * L
        return w

    work, rounds, scans, order, gains = 0, 0, 0, [], []
    if init and apply_init:  # stage 1: always its first pick; stage 2: reserved, with steps
        work += tile_work(init)
        acc = torch.minimum(acc, dist[:, init].min(dim=1).values)
        acc[init] = float("-inf")
    while len(order) < steps:
        srt = torch.sort(-acc, stable=True).indices  # greedy order: value desc, index asc
        srt = srt[acc[srt] > float("-inf")]
        w, rest = srt[:L], srt[L:]
        bound = (float(acc[rest[0]]), -int(rest[0])) if len(rest) else None
        loc = acc[w].clone()
        top = loc.max()
        took = []
        for _ in range(L):
            if len(order) >= steps:
                break
            live = loc > float("-inf")
            if not live.any():
                break
            tau = loc[live].max() - tie
            j = int(w[live & (loc >= tau)].min())
            p = int(torch.nonzero(w == j).flatten()[0])
            if bound is not None and not (float(tau), -j) > bound:
                break
            order.append(j)
            gains.append(float(loc[p]))
            took.append(j)
            loc = torch.minimum(loc, dist[w, j])
            loc[p] = float("-inf")
        if not took:  # the band reaches outside the window: one pick by the scan
            j = int(torch.nonzero((acc > float("-inf")) & (acc >= top - tie)).flatten()[0])
            order.append(j)
            gains.append(float(acc[j]))
            took.append(j)
            scans += 1
        rounds += 1
        work += tile_work(took)
        same = gid[:, None] == gid[took][None, :]
        live_now = live_subtiles()
        for p_, r_, m_, kind in ((pk, res, 1e-5, "pca"), (pk_b, res_b, margin_b, "built")):
            ub = p_ @ p_[took].T + r_[:, None] * r_[took][None, :]  # [K, picks]
            safe = (((1.0 - ub - m_) >= acc[:, None]) | ~same).all(dim=1)
            safe |= acc == float("-inf")
            ok_sub = torch.ones(n_sub, dtype=torch.bool)
            ok_sub[sub[~safe]] = False
            n_skip = int((ok_sub & live_now).sum()) * L * L
            if kind == "pca":
                skipped += n_skip
            else:
                skipped_b += n_skip
        acc = torch.minimum(acc, dist[:, took].min(dim=1).values)
        acc[took] = float("-inf")
    return dict(rounds=rounds, scans=scans, work=work, order=order, gains=gains, skipped=skipped,
                skipped_built=skipped_b)  # fmt: skip


def stage_counters(calls, L: int) -> dict:
    """Simulated rounds and work of both stages, and whether the picks match the reference."""
    from adaptive_prune.ops import reference as ref

    vision, cu_s, bud, mode, eps = calls["greedy_select"]
    _, pool, po, reserved, picks, _, go = calls["global_greedy"]
    x = vision.detach().cpu().float()
    gol = [int(v) for v in go] if go is not None else [int(v) for v in po]
    out = {}
    want = ref.greedy_select(x, cu_s.cpu(), bud.cpu(), mode, eps)
    rounds, work, same, chain, skipped, scans = [], 0, True, 0, 0, 0
    skipped_b = 0
    for k in range(cu_s.numel() - 1):
        a, e = int(cu_s[k]), int(cu_s[k + 1])
        b = min(int(bud[k]), e - a)
        if b <= 0:
            rounds.append(0)
            continue
        xh = ref.normalize(x[a:e], eps)
        j0 = int(torch.nonzero(want[a:e] == 0).flatten()[0])
        r = simulate(xh, [j0], b - 1, L, True)
        rounds.append(r["rounds"])
        work += r["work"]
        skipped += r["skipped"]
        skipped_b += r["skipped_built"]
        scans += r["scans"]
        chain = max(chain, b - 1)
        got = torch.full((e - a,), -1, dtype=torch.int64)
        got[[j0] + r["order"]] = torch.arange(b)
        same &= bool(torch.equal(got, want[a:e]))
    out["stage 1"] = dict(rounds=max(rounds), work=work, chain=chain, same=same,
                          picks=int((want >= 1).sum()), skipped=skipped, scans=scans,
                          skipped_built=skipped_b,
                          segments=len(rounds), sizes=(cu_s[1:] - cu_s[:-1]).tolist())  # fmt: skip
    wo, wg, _ = ref.global_greedy(x, pool.cpu(), po.cpu(), reserved.cpu(), picks, eps, go)
    rounds, work, same, chain, o0, skipped, scans = 0, 0, True, 0, 0, 0, 0
    skipped_b = 0
    for r_i in range(po.numel() - 1):
        a, e = int(po[r_i]), int(po[r_i + 1])
        P = int(picks[r_i])
        res = torch.nonzero(reserved[a:e].cpu()).flatten().tolist()
        steps = max(min(P, e - a) - len(res), 0)
        xh = ref.normalize(x[pool[a:e].cpu()], eps)
        gl = torch.tensor([v - a for v in gol if a <= v <= e])
        gid = torch.repeat_interleave(torch.arange(len(gl) - 1), gl.diff())
        r = simulate(xh, res, steps, L, steps > 0, gid)
        rounds += r["rounds"]
        work += r["work"]
        skipped += r["skipped"]
        skipped_b += r["skipped_built"]
        scans += r["scans"]
        chain += steps
        got = [a + j for j in res[:P]] + [a + j for j in r["order"]]
        ref_o = wo[o0 : o0 + P].tolist()
        if got != ref_o and same:  # where the fp32 simulation first parts from the reference
            t = next(i for i, (u, v) in enumerate(zip(got, ref_o)) if u != v)
            out["stage 2 first difference"] = (t, P, float(wg[o0 + t]), r["gains"][t - len(res)])
        same &= got == ref_o
        o0 += P
    out["stage 2"] = dict(rounds=rounds, work=work, chain=chain, same=same, picks=chain,
                          skipped=skipped, scans=scans, segments=po.numel() - 1,
                          skipped_built=skipped_b,
                          sizes=(po[1:] - po[:-1]).tolist(), groups=len(gol) - 1)  # fmt: skip
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--csv", type=Path, default=OUT)
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--dry-run", action="store_true", help="4 small synthetic images; no CSV")
    args = p.parse_args(argv)

    from adaptive_prune.kernels.global_greedy import global_greedy_fwd
    from adaptive_prune.kernels.greedy_select import greedy_select_fwd

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    keep, L = 0.25, args.window
    cu_of = lambda counts: torch.tensor([0] + torch.tensor(counts).cumsum(0).tolist())  # noqa: E731
    # 1. the kernels' own counters on a small input = the simulation's (so the simulation
    #    stands for the kernels on the real input, which the interpreter is too slow to run)
    xs, cs, ts = H.synthetic(4, 48, 64)
    xs, ts = xs.to(dev), ts.to(dev)
    small = captured_calls(xs, cu_of(cs), ts, keep)
    sim = stage_counters(small, L)
    vision, cu_s, bud, mode, eps = small["greedy_select"]
    _, pool, po, reserved, picks, _, go = small["global_greedy"]
    st1 = torch.zeros(cu_s.numel() - 1, 3, dtype=torch.int64, device=dev)
    greedy_select_fwd(vision, cu_s, bud, mode, eps, window=L, block=L, engine="rows", stats=st1)
    st2 = torch.zeros(po.numel() - 1, 3, dtype=torch.int64, device=dev)
    global_greedy_fwd(vision, pool, po, reserved, picks, eps, go, window=L, block=L,
                      engine="rows", stats=st2)  # fmt: skip
    check = {
        "stage 1": (int(st1[:, 0].max()), int(st1[:, 1].sum()), int(st1[:, 2].sum())),
        "stage 2": (int(st2[:, 0].sum()), int(st2[:, 1].sum()), int(st2[:, 2].sum())),
    }
    simc = {s: (sim[s]["rounds"], sim[s]["work"], sim[s]["scans"]) for s in check}
    agree = check == simc
    print(f"kernel counters (rounds, work, scans) {check}, simulated {simc}: agree = {agree}",
          flush=True)  # fmt: skip
    # 2. the counters on the real (or, dry run, the small) input
    if args.dry_run:
        x, counts, text = xs.cpu(), cs, ts.cpu()
    else:
        x, counts, text = H.real_16x576(384, text_rows=64)
    cu = cu_of(counts)
    shape = f"{len(counts)}x{counts[0]}"
    cond = H.conditions() | {
        "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu (interpreter)",
        "torch": torch.__version__,
        "triton": H.triton_version(),
        "shape": shape,
        "keep_ratio": keep,
        "window": L,
        "tile": L,
    }
    rows = []

    def row(what, engine, value, unit, note=""):
        rows.append(cond | dict(what=what, engine=engine, value=value, unit=unit, note=note))

    row("kernel counters = simulation (4x48 synthetic)", "rows", agree, "bool",
        f"kernels {check}")  # fmt: skip
    t0 = time.perf_counter()
    calls = captured_calls(x, cu, text, keep)
    counters = stage_counters(calls, L)
    print(f"simulated both stages in {time.perf_counter() - t0:.0f} s", flush=True)
    for stage, c in [(k, v) for k, v in counters.items() if k in ("stage 1", "stage 2")]:
        rounds, work, chain, n_picks = c["rounds"], c["work"], c["chain"], c["picks"]
        evals = work / (L * L)  # L x L distance tiles (entries x picks)
        byts = evals * 2 * L * D_MODEL * BYTES  # entry rows + pick rows of each tile
        flops = work * 2 * D_MODEL
        row(f"{stage} picks (longest chain)", "rows", chain, "picks")
        row(f"{stage} rounds", "rows", rounds, "rounds",
            "longest image (images run side by side)" if stage == "stage 1" else "")  # fmt: skip
        row(f"{stage} picks per round", "rows", round(chain / max(rounds, 1), 1), "picks")
        if stage == "stage 2":
            row("stage 2 rounds per request", "rows", round(rounds / max(c["segments"], 1), 1),
                "rounds", f"{c['segments']} requests, {c['groups']} groups")  # fmt: skip
        row(f"{stage} rounds picked by the fallback scan", "rows", c["scans"], "rounds",
            "band reaching outside the window: one pick, a scan of the segment's acc")  # fmt: skip
        row(f"{stage} distances computed", "rows", work, "pairs",
            f"{work / max(n_picks, 1):.0f} per pick, all segments")  # fmt: skip
        row(f"{stage} rows recomputed per round", "rows", round(work / max(rounds, 1)), "pairs",
            "live sub-tiles x L x L (entries x picks)")  # fmt: skip
        row(f"{stage} bytes read per pick (D=3584 bf16)", "rows", round(byts / max(n_picks, 1)),
            "bytes", "each L x L tile loads L entry + L pick rows")  # fmt: skip
        diff = counters.get(f"{stage} first difference")
        row(f"{stage} same picks as the reference", "rows", c["same"], "bool",
            "" if diff is None else "simulation in fp32 torch: first difference at pick "
            f"{diff[0]} of {diff[1]}, gain {diff[2]:.6g} (reference) vs {diff[3]:.6g}")  # fmt: skip
        row(f"{stage} sketch bound (d={SKETCH_DIM}, not built): round work it would skip",
            "rows", round(c["skipped"] / max(work, 1), 3), "fraction",
            "PCA of the segment, margin 1e-5; initial lists not counted")  # fmt: skip
        row(f"{stage} sketch bound as built (d={SKETCH_DIM}): round work it would skip", "rows",
            round(c["skipped_built"] / max(work, 1), 3), "fraction",
            f"QR of {SKETCH_DIM} entries spread over the segment, the kernel's margin at "
            f"D={D_MODEL}: {8.0 * (D_MODEL + SKETCH_DIM + 16) * 2.0**-24 + 1e-6:.2e}")  # fmt: skip
        # model: per round max(bytes / HBM, flops / MMA) over all SMs, plus 2 barriers and
        # phase W (stage 1: images side by side, so the longest image's rounds)
        mem_ms = byts / (HBM_TBS * 1e12) * 1e3
        mma_ms = flops / (TC_TFLOPS * 1e12) * 1e3
        seg = calls["greedy_select"][1] if stage == "stage 1" else calls["global_greedy"][2]
        m_seg = (seg[1:] - seg[:-1]).tolist()
        te = tile_of(m_seg, L)
        tiles = max(-(-m // te) for m in m_seg)
        sorts = -(-tiles // max(MERGE_KEYS // L - 1, 1))  # phase W's merge sorts per round
        fixed_ms = rounds * (2 * BARRIER_US + WINDOW_US + MERGE_US * sorts) * 1e-3
        fixed_ms += c["scans"] * SCAN_US * max(c["sizes"]) / 1024 * 1e-3
        row(f"{stage} model: predicted engine time", "rows",
            round(max(mem_ms, mma_ms) + fixed_ms, 3), "ms (H200)",
            f"max(mem {mem_ms:.3f}, mma {mma_ms:.3f}) + fixed {fixed_ms:.3f}")  # fmt: skip
        sizes = c["sizes"]
        row(f"{stage} scratch: similarity blocks", "blocks", 4 * sum(m * m for m in sizes),
            "bytes")  # fmt: skip
        row(f"{stage} scratch: row engine", "rows", engine_scratch(stage, sizes, D_MODEL, L),
            "bytes", f"engine_scratch(): O(N + n D), tile {tile_of(sizes, L)}")  # fmt: skip
        if dev.type == "cuda":  # what the model predicts, measured (D = 3584 bf16 lift)
            g = torch.Generator().manual_seed(0)
            q, _ = torch.linalg.qr(torch.randn(D_MODEL, x.shape[1], generator=g,
                                               dtype=torch.float64))  # fmt: skip
            xd = (x.double() @ q.T).to(torch.bfloat16).to(dev)
            a = calls["greedy_select"] if stage == "stage 1" else calls["global_greedy"]
            for engine in ("blocks", "rows"):
                fwd = greedy_select_fwd if stage == "stage 1" else global_greedy_fwd
                fn = lambda e=engine, f=fwd, xd=xd, a=a: f(xd, *a[1:], window=L, engine=e)  # noqa: E731
                row(f"{stage} measured op time", engine, cuda_ms(fn), "ms", "CUDA events")
            if stage == "stage 2":  # the tile size: SM spread (phase T) against merges (W)
                for te in (64, 512):
                    fn = (
                        lambda xd=xd, a=a, te=te: global_greedy_fwd(  # noqa: E731
                            xd, *a[1:], window=L, engine="rows", block=te
                        )
                    )
                    row(f"{stage} measured op time, tile {te}", "rows", cuda_ms(fn), "ms",
                        f"CUDA events; default tile {tile_of(sizes, L)}")  # fmt: skip
            # the built sketch bound (opt-in, d = 32): its time, and the work it skipped on the
            # real tokens as the kernels count it (same picks as without it, checked)
            fwd = greedy_select_fwd if stage == "stage 1" else global_greedy_fwd
            fn = lambda f=fwd, xd=xd, a=a: f(xd, *a[1:], window=L, engine="rows",  # noqa: E731
                                            sketch_dim=SKETCH_DIM)  # fmt: skip
            row(f"{stage} measured op time, sketch bound d={SKETCH_DIM}", "rows", cuda_ms(fn),
                "ms", "CUDA events")  # fmt: skip
            n_seg = a[1].numel() - 1 if stage == "stage 1" else a[2].numel() - 1
            st = torch.zeros(n_seg, 4, dtype=torch.int64, device=dev)
            got = fwd(xd, *a[1:], window=L, engine="rows", sketch_dim=SKETCH_DIM, stats=st)
            same = fwd(xd, *a[1:], window=L, engine="rows")
            same = all(torch.equal(u, v) for u, v in zip(
                got if isinstance(got, tuple) else (got,),
                same if isinstance(same, tuple) else (same,)))  # fmt: skip
            done, skip = int(st[:, 1].sum()), int(st[:, 3].sum())
            row(f"{stage} sketch bound (kernel, d={SKETCH_DIM}): work skipped", "rows",
                round(skip / max(done + skip, 1), 3), "fraction",
                f"same results as without it: {same}")  # fmt: skip
    # the scratch at 64 x 1024 (the issue's large case; stage 2's pool taken as all 65536
    # tokens of one request, in 64 groups: the worst case, the 17 GB block)
    for stage, sizes in (("stage 1", [1024] * 64), ("stage 2", [65536])):
        row(f"{stage} scratch at 64x1024, D=3584", "blocks", 4 * sum(m * m for m in sizes),
            "bytes", "the K x K fp32 similarity blocks")  # fmt: skip
        row(f"{stage} scratch at 64x1024, D=3584", "rows",
            engine_scratch(stage, sizes, D_MODEL, L, groups=stage == "stage 2"), "bytes",
            "engine_scratch(); stage 2: one request, pool = all 65536 tokens")  # fmt: skip
    # 3. launches and eager ops of one prune call (the counts do not depend on the input size:
    #    on a GPU the row engine is one launch per stage); the small input keeps it quick
    for engine in ("blocks", "rows"):
        c = prune_counts(xs, cu_of(cs), ts, keep, engine)
        n_launch = sum(c.launches.values())
        eng_launch = c.launches["_tiles_kernel"] + c.launches["_window_kernel"]
        gpu_launch = n_launch - eng_launch + (2 if engine == "rows" else 0)
        row("prune: Triton launches (interpreter)", engine, n_launch, "launches",
            " ".join(f"{k}={v}" for k, v in sorted(c.launches.items())))  # fmt: skip
        row(
            "prune: Triton launches (GPU)",
            engine,
            gpu_launch,
            "launches",
            "row engine: one persistent launch per stage" if engine == "rows" else "",
        )
        row("prune: host reads of tensor values", engine, c.eager["_local_scalar_dense"],
            "reads", "aten _local_scalar_dense seen outside the kernels (item/bool): a sync "
            "on a GPU when the tensor is on the device",
        )  # fmt: skip
        n_eager = sum(c.eager.values())
        row("prune: eager aten ops between the ops", engine, n_eager, "ops",
            " ".join(f"{k}={v}" for k, v in c.eager.most_common(12)))  # fmt: skip
        row("prune: model: launch + eager overhead", engine,
            round((gpu_launch * LAUNCH_US + n_eager * EAGER_US) * 1e-3, 3), "ms (H200)",
            "outside a CUDA graph")  # fmt: skip
        print(f"prune counted with engine {engine}", flush=True)
    print(f"\n{cond['device']}, {shape} {'synthetic' if args.dry_run else 'real'} tokens, keep "
          f"{keep:.0%}, window {L}; model: HBM {HBM_TBS} TB/s, MMA {TC_TFLOPS} TFLOP/s, "
          f"barrier {BARRIER_US} us, phase W {WINDOW_US} us + {MERGE_US} us per sort of "
          f"{MERGE_KEYS} candidate keys (tiles: about one per SM of {N_SM}, at most {TILE}), "
          f"scan {SCAN_US} us per 1024 entries, launch {LAUNCH_US} us, eager op "
          f"{EAGER_US} us\n")  # fmt: skip
    print("| what | engine | value | unit | note |")
    print("|---|---|---:|---|---|")
    for r in rows:
        print(f"| {r['what']} | {r['engine']} | {r['value']} | {r['unit']} | {r['note']} |")
    # the kernels' counters must equal the simulation's (the simulation's own fp32 picks may
    # part from the reference's at a near-tie; the kernels are tested against it)
    ok = agree
    if args.dry_run:
        return 0 if ok else 1
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    new = not args.csv.exists()
    with args.csv.open("a", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        if new:
            wr.writeheader()
        wr.writerows(rows)
    print(f"\nappended {len(rows)} rows to {args.csv}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
