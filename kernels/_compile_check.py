"""Compile every kernel variant the launchers use on a GPU, for a chosen NVIDIA arch, without a
GPU: ``python -m adaptive_prune.kernels._compile_check [--arch 90]``.

Triton can lower a kernel to PTX and run ``ptxas`` for a target it is told about, no driver
needed. This catches what the interpreter cannot (types, layouts, the shared memory a config
asks for; register spills when ``ptxas -v`` is available) before the code meets a GPU. It must
run with the interpreter off (``TRITON_INTERPRET`` unset), since only compiled kernels lower.
Prints one line per variant; exits non-zero if one fails or asks for more shared memory than
the arch has (227 KiB on sm_90).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

SMEM_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}

# Integer arguments the kernels leave specialised (not in ``do_not_specialize``): on a GPU the
# runtime sees them divisible by 16 for the shapes that matter (D = 3584, contiguous rows), as it
# sees every pointer from the caching allocator 16-byte aligned. The check compiles that case.
ALIGNED_INTS = {"D", "stride_x", "stride_y", "stride_t"}


def aligned_attrs(fn, signature: dict) -> dict:
    """Triton's ``tt.divisibility = 16`` attribute for every pointer and ``ALIGNED_INTS`` arg."""
    return {
        (fn.arg_names.index(k),): [["tt.divisibility", 16]]
        for k, ty in signature.items()
        if ty.startswith("*") or (k in ALIGNED_INTS and ty.startswith("i"))
    }


def variants():
    """(name, kernel, signature, constexprs, options) of every launch configuration used."""
    from . import (
        _engine,
        allocate_budgets,
        budget_scores,
        global_greedy,
        greedy_select,
        pareto_select,
        refine_medoids,
        token_similarity,
    )
    from ._common import CONFIGS

    def g(name):
        return CONFIGS[name][0]

    out = []
    for dt, prec in (("bf16", "tf32"), ("fp16", "tf32"), ("fp32", "ieee")):
        f32 = "_f32" if dt == "fp32" else ""
        for gather in (False, True):
            out.append((
                f"similarity_blocks[{dt},gather={gather}]",
                token_similarity._token_similarity_blocks_kernel,
                {"x_ptr": f"*{dt}", "rows_ptr": "*i64", "seg_ptr": "*i64", "cum_ptr": "*i64",
                 "base_ptr": "*i64", "inv_ptr": "*fp32", "out_ptr": "*fp32", "n_seg": "i32",
                 "D": "i32", "stride_x": "i32"},
                {"GATHER": gather, "BM": g("sim_block" + f32), "BK": g("sim_k" + f32),
                 "BLOCK_N": 32, "PREC": prec},
                {"num_warps": g("sim_warps"), "num_stages": g("sim_stages" + f32)},
            ))  # fmt: skip
    for gather in (False, True):
        out.append((
            f"row_inv_norm[bf16,gather={gather}]",
            token_similarity._row_inv_norm_kernel,
            {"x_ptr": "*bf16", "rows_ptr": "*i64", "out_ptr": "*fp32", "Q": "i32", "D": "i32",
             "stride_x": "i32", "eps": "fp32"},
            {"GATHER": gather, "BR": g("norm_rows"), "BD": g("norm_cols")},
            {"num_warps": 4},
        ))  # fmt: skip
    for mode in range(4):
        out.append((
            f"similarity_reduce[bf16,mode={mode}]",
            token_similarity._token_similarity_reduce_kernel,
            {"x_ptr": "*bf16", "qrows_ptr": "*i64", "qseg_ptr": "*i64", "qcum_ptr": "*i64",
             "y_ptr": "*bf16", "krows_ptr": "*i64", "kseg_ptr": "*i64", "qgrp_ptr": "*i64",
             "kgrp_ptr": "*i64", "qinv_ptr": "*fp32", "kinv_ptr": "*fp32", "out_ptr": "*fp32",
             "n_seg": "i32", "D": "i32", "stride_x": "i32", "stride_y": "i32",
             "empty_value": "fp32"},
            {"QGATHER": True, "KGATHER": mode >= 2, "MODE": mode, "BM": g("rows_tile"),
             "BN": g("rows_keys"), "BK": g("reduce_k"), "BLOCK_N": 32, "PREC": "tf32"},
            {"num_warps": g("reduce_warps")},
        ))  # fmt: skip
    for dt, prec in (("bf16", "tf32"), ("fp32", "ieee")):
        out.append((
            f"refine_assign[{dt}]",
            refine_medoids._refine_assign_kernel,
            {"x_ptr": f"*{dt}", "rows_ptr": "*i64", "cpos_ptr": "*i64", "seg_ptr": "*i64",
             "cnt_ptr": "*i64", "cum_ptr": "*i64", "inv_ptr": "*fp32", "best_ptr": "*fp32",
             "arg_ptr": "*i64", "n_seg": "i32", "D": "i32", "stride_x": "i32"},
            {"BM": g("rows_tile"), "BN": g("rows_keys"),
             "BK": g("sim_k_f32" if dt == "fp32" else "reduce_k"), "BLOCK_N": 32, "PREC": prec},
            {"num_warps": g("reduce_warps")},
        ))  # fmt: skip
    for text in (False, True):
        out.append((
            f"budget_scores_tile[bf16,text={text}]",
            budget_scores._budget_scores_tile_kernel,
            {"x_ptr": "*bf16", "t_ptr": "*bf16", "cu_ptr": "*i64", "tcum_ptr": "*i64",
             "ireq_ptr": "*i64", "to_ptr": "*i64", "part_ptr": "*fp32", "sqp_ptr": "*fp32",
             "lmax_ptr": "*fp32", "lsum_ptr": "*fp32", "al_ptr": "*fp32", "n": "i32",
             "D": "i32", "stride_x": "i32", "stride_t": "i32", "MT": "i32", "eps": "fp32",
             "tau_a": "fp32"},
            {"HAS_TEXT": text, "ALIGN_MAX": False, "BT": g("rows_tile"), "BD": g("budget_cols"),
             "BMT": 64, "BLOCK_N": 32, "PREC": "tf32"},
            {"num_warps": 8},
        ))  # fmt: skip
        out.append((
            f"budget_scores_image[text={text}]",
            budget_scores._budget_scores_image_kernel,
            {"tcum_ptr": "*i64", "ireq_ptr": "*i64", "to_ptr": "*i64", "part_ptr": "*fp32",
             "sqp_ptr": "*fp32", "lmax_ptr": "*fp32", "lsum_ptr": "*fp32", "s_ptr": "*fp32",
             "sq_ptr": "*fp32", "limg_ptr": "*fp32", "zimg_ptr": "*fp32", "D": "i32",
             "MT": "i32"},
            {"HAS_TEXT": text, "BD": 256, "BMT": 64},
            {"num_warps": 4},
        ))  # fmt: skip
        out.append((
            f"budget_scores_request[text={text}]",
            budget_scores._budget_scores_request_kernel,
            {"cu_ptr": "*i64", "ro_ptr": "*i64", "to_ptr": "*i64", "s_ptr": "*fp32",
             "sq_ptr": "*fp32", "limg_ptr": "*fp32", "zimg_ptr": "*fp32", "dintra_ptr": "*fp32",
             "mult_ptr": "*fp32", "att_ptr": "*fp32", "dinter_ptr": "*fp32", "D": "i32",
             "MT": "i32", "sigma": "fp32", "eps": "fp32"},
            {"HAS_TEXT": text, "BN": 32, "BD": 32, "BMT": 64},
            {"num_warps": 8},
        ))  # fmt: skip
    for bn in (64, 2048):
        out.append((
            f"allocate_budgets[BN={bn}]",
            allocate_budgets._allocate_budgets_kernel,
            {"w_ptr": "*fp32", "cap_ptr": "*i64", "min_ptr": "*i64", "ro_ptr": "*i64",
             "tot_ptr": "*i64", "out_ptr": "*i64"},
            {"BN": bn},
            {"num_warps": 4 if bn <= 1024 else 8},
        ))  # fmt: skip
    for maxsum in (False, True):
        for single, block in ((True, 1024), (True, 8192), (False, 4096)):
            out.append((
                f"greedy_select[maxsum={maxsum},single={single},BLOCK={block}]",
                greedy_select._greedy_select_kernel,
                {"s_ptr": "*fp32", "base_ptr": "*i64", "cu_ptr": "*i64", "bud_ptr": "*i64",
                 "rank_ptr": "*i64", "acc_ptr": "*fp32", "eps": "fp32"},
                {"MAXSUM": maxsum, "SINGLE": single, "BLOCK": block,
                 "BJ": max(1, min(64, 8192 // block))},
                {"num_warps": 8 if block <= 2048 else 16},
            ))  # fmt: skip
    for single, block in ((True, 8192), (False, 4096)):
        out.append((
            f"global_greedy[single={single},BLOCK={block}]",
            global_greedy._global_greedy_kernel,
            {"s_ptr": "*fp32", "base_ptr": "*i64", "off_ptr": "*i64", "res_ptr": "*u8",
             "picks_ptr": "*i64", "ooff_ptr": "*i64", "order_ptr": "*i64", "gain_ptr": "*fp32",
             "acc_ptr": "*fp32"},
            {"SINGLE": single, "BLOCK": block},
            {"num_warps": 16},
        ))  # fmt: skip
    for block, window in ((512, 64), (2048, 64), (2048, 128)):
        warps = 4 if block <= 512 else 8 if block <= 2048 else 16
        out.append((
            f"greedy_select_window[BLOCK={block},L={window}]",
            greedy_select._greedy_select_window_kernel,
            {"s_ptr": "*fp32", "base_ptr": "*i64", "cu_ptr": "*i64", "bud_ptr": "*i64",
             "rank_ptr": "*i64", "acc_ptr": "*fp32", "win_ptr": "*i64", "wv_ptr": "*fp32",
             "stats_ptr": "*i64", "eps": "fp32"},
            {"BLOCK": block, "BJ": max(1, min(64, 8192 // block)), "L": window, "STATS": False},
            {"num_warps": warps},
        ))  # fmt: skip
        out.append((
            f"global_greedy_window[BLOCK={block},L={window}]",
            global_greedy._global_greedy_window_kernel,
            {"s_ptr": "*fp32", "base_ptr": "*i64", "off_ptr": "*i64", "res_ptr": "*u8",
             "picks_ptr": "*i64", "ooff_ptr": "*i64", "order_ptr": "*i64", "gain_ptr": "*fp32",
             "acc_ptr": "*fp32", "win_ptr": "*i64", "wv_ptr": "*fp32", "stats_ptr": "*i64"},
            {"BLOCK": block, "L": window, "STATS": False},
            {"num_warps": warps},
        ))  # fmt: skip
    out.append((
        "greedy_select_first_pick[BR=32,BD=128]",
        greedy_select._first_pick_kernel,
        {"x_ptr": "*bf16", "inv_ptr": "*fp32", "cu_ptr": "*i64", "bud_ptr": "*i64",
         "s_ptr": "*fp32", "rank_ptr": "*i64", "lst_ptr": "*i64", "lcnt_ptr": "*i64",
         "steps_ptr": "*i64", "sc_ptr": "*fp32", "D": "i32", "stride_x": "i32", "eps": "fp32"},
        {"BR": 32, "BD": 128},
        {"num_warps": 4},
    ))  # fmt: skip
    # the row engine: the persistent kernel (GPU path) and the per-phase kernels
    eng = {"x_ptr": "*bf16", "rows_ptr": "*i64", "gid_ptr": "*i64", "inv_ptr": "*fp32",
           "acc_ptr": "*fp32",
           "off_ptr": "*i64", "tcum_ptr": "*i64", "n_seg": "i32", "n_tiles": "i32",
           "lst_ptr": "*i64", "loff_ptr": "*i64", "lcnt_ptr": "*i64", "shift_ptr": "*i64",
           "sel_ptr": "*i64", "nsel_ptr": "*i64", "steps_ptr": "*i64", "done_ptr": "*i64",
           "cand_ptr": "*i64", "nxt_ptr": "*i64"}  # fmt: skip
    outs = {"out_ptr": "*i64", "gain_ptr": "*fp32", "obase_ptr": "*i64", "vbase_ptr": "*i64"}
    sk = {"sk_ptr": "*fp32", "rr_ptr": "*fp32", "sk_margin": "fp32"}
    te = g("engine_tile")
    for window in (32, 64):
        for rank in (True, False):
            out.append((
                f"engine_persistent[rank={rank},TE={te},L={window}]",
                _engine._engine_persistent_kernel,
                eng | outs | sk | {"tstat_ptr": "*i64", "wstat_ptr": "*i64",
                                   "bar_ptr": "*i32", "D": "i32", "stride_x": "i32"},
                {"RANK": rank, "GATHER": not rank, "GROUPS": not rank, "STATS": False,
                 "SKETCH": not rank, "DP": 32, "TE": te, "L": window, "BK": 32, "BLOCK_N": 32,
                 "PREC": "tf32", "MF": _engine.merge_rows(window)},
                {"num_warps": _engine.engine_warps(window), "launch_cooperative_grid": True},
            ))  # fmt: skip
        out.append((
            f"engine_tiles[TE={te},L={window}]",
            _engine._tiles_kernel,
            eng | sk | {"stat_ptr": "*i64", "D": "i32", "stride_x": "i32"},
            {"INIT": False, "CAND": True, "GATHER": True, "GROUPS": True, "STATS": False,
             "SKETCH": True, "DP": 32, "TE": te, "L": window, "BK": 32, "BLOCK_N": 32,
             "PREC": "tf32"},
            {"num_warps": _engine.engine_warps(window)},
        ))  # fmt: skip
    win = {k: v for k, v in eng.items() if k not in (
        "n_tiles", "lst_ptr", "loff_ptr", "lcnt_ptr", "shift_ptr")}  # fmt: skip
    out.append((
        "engine_window[L=64]",  # the phases-per-launch path (a refused cooperative launch)
        _engine._window_kernel,
        win | outs | {"stat_ptr": "*i64", "D": "i32", "stride_x": "i32"},
        {"RANK": False, "GATHER": True, "GROUPS": True, "STATS": False, "L": 64, "BK": 32,
         "PREC": "tf32", "MF": _engine.merge_rows(64)},
        {"num_warps": _engine.engine_warps(64)},
    ))  # fmt: skip
    out.append((
        "pareto_rank",
        pareto_select._pareto_rank_kernel,
        {"f1_ptr": "*fp32", "f2_ptr": "*fp32", "seg_ptr": "*i64", "cum_ptr": "*i64",
         "perm_ptr": "*i64", "sf1_ptr": "*fp32", "sf2_ptr": "*fp32", "gst_ptr": "*i64",
         "gsz_ptr": "*i64", "n_seg": "i32"},
        {"BT": g("pareto_tile"), "BJ": g("pareto_pair_u"), "BLOCK_N": 32},
        {"num_warps": 4},
    ))  # fmt: skip
    out.append((
        "pareto_select",
        pareto_select._pareto_select_kernel,
        {"seg_ptr": "*i64", "k_ptr": "*i64", "perm_ptr": "*i64", "sf1_ptr": "*fp32",
         "sf2_ptr": "*fp32", "gst_ptr": "*i64", "gsz_ptr": "*i64", "fr_ptr": "*i32",
         "comp_ptr": "*i64", "cd_ptr": "*fp64", "sel_ptr": "*i8", "keep_ptr": "*u8"},
        {"CH": g("pareto_chunk"), "PT": g("pareto_pair_t"), "PU": g("pareto_pair_u")},
        {"num_warps": 8},
    ))  # fmt: skip
    return out


def _ptxas_usage(ptx: str, arch: int) -> str:
    """``ptxas -v`` register / spill summary, or '' when ptxas cannot be run."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        try:
            ptxas = get_ptxas(arch).path
        except TypeError:  # older triton: get_ptxas() takes no arch
            ptxas = get_ptxas().path
    except Exception:
        return ""
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        sm = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        cmd = [ptxas, "-v", f"--gpu-name={sm}", src, "-o", os.path.join(d, "k.o")]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    regs = re.search(r"Used (\d+) registers", text)
    spill = re.search(r"(\d+) bytes spill stores", text)
    return f"regs={regs.group(1) if regs else '?'} spill_stores={spill.group(1) if spill else '?'}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90, help="SM version, e.g. 80 or 90")
    ap.add_argument("--only", default="", help="substring filter on variant names")
    args = ap.parse_args(argv)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from ._common import INTERPRET

    if INTERPRET:
        print("compile check needs TRITON_INTERPRET unset (the interpreter does not lower)")
        return 2
    target = GPUTarget("cuda", args.arch, 32)
    limit = SMEM_LIMIT.get(args.arch, 99 * 1024)
    bad = 0
    for name, fn, sig, const, opts in variants():
        if args.only and args.only not in name:
            continue
        signature = dict(sig)
        signature.update({k: "constexpr" for k in const})
        t0 = time.perf_counter()
        try:
            src = ASTSource(fn, signature, const, aligned_attrs(fn, sig))
            k = triton.compile(src, target=target, options=opts)
        except Exception as exc:  # report every failure, not just the first
            bad += 1
            msg = str(exc).strip().splitlines()
            print(f"FAIL {name}: {type(exc).__name__}: {msg[-1] if msg else ''}")
            continue
        smem = k.metadata.shared
        usage = _ptxas_usage(k.asm["ptx"], args.arch)
        flag = "ok  " if smem <= limit else "SMEM"
        bad += smem > limit
        print(f"{flag} {name}: shared={smem} B {usage} ({time.perf_counter() - t0:.1f} s)")
    print(f"{'all variants compile' if not bad else f'{bad} variant(s) failed'} for sm_{args.arch}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
