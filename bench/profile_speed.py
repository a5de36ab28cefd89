"""Cost of profiling one attention call at hunyuan-720p versus one dense attention (issue 4).

Measures, on one GPU with CUDA events (median of several runs after warm-up):
  - dense attention: SDPA as diffusers calls it, and the fused FlashAttention call that also returns the
    log-sum-exp (what the profiler uses as its dense pass);
  - the recall pass (Triton tile-mass kernel) on tile-order inputs, and with its tile-order copies;
  - each error-shortlist window's STA call;
  - one whole ``AttentionProfiler`` call (dense + recall + shortlist + reductions) and its peak memory
    above the dense call's.
Budget (issue 4): profiled attention work <= (1.6 + sum of shortlist densities) x dense; recall pass
<= 0.6 x dense; memory <= 2 GB above the dense run.

    python bench/profile_speed.py --out bench/results/profile-h100.json
    python bench/profile_speed.py --canvas 2,8,8 --tile 1,4,4 --heads 2 --dim 32 --text-len 8 --device cpu  # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback

import torch
import torch.nn.functional as F


def _timer(device):
    if device.type == "cuda":
        def run(fn, warmup=2, reps=5):
            for _ in range(warmup):
                fn()
            times = []
            for _ in range(reps):
                start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                stop.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(stop))
            return {"median_ms": statistics.median(times), "min_ms": min(times), "runs": reps}
    else:
        def run(fn, warmup=1, reps=2):
            for _ in range(warmup):
                fn()
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
            return {"median_ms": statistics.median(times), "min_ms": min(times), "runs": reps}
    return run


def _peak(device, fn):
    """Peak allocated bytes while ``fn`` runs, above what was allocated before."""
    if device.type != "cuda":
        fn()
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del result
    return peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--canvas", default="30,48,80")
    parser.add_argument("--tile", default="6,8,8")
    parser.add_argument("--heads", type=int, default=24)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--text-len", type=int, default=256, help="joint text tokens after the video (HunyuanVideo)")
    parser.add_argument("--text-valid", type=int, default=64, help="real text tokens (the rest is padding)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from sta_search.kernels.geometry import Geometry, to_tiles
    from sta_search.kernels.recall import attention_with_lse, tile_mass_reference
    from sta_search.kernels.recall.triton_kernel import _TUNED, tile_mass_triton_tiled
    from sta_search.kernels.sta import sta_attention_tiled
    from sta_search.stats import AttentionProfiler, default_error_windows, window_recall

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    canvas = tuple(int(c) for c in args.canvas.split(","))
    tile = tuple(int(t) for t in args.tile.split(","))
    g = Geometry(canvas, tile)
    B, H, D, T = 1, args.heads, args.dim, args.text_len
    S = g.video_len + T
    timer = _timer(device)
    reps = args.reps if device.type == "cuda" else 2
    result = {
        "bench": "profile_speed", "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "triton": __import__("triton").__version__, "python": sys.version.split()[0],
        "shape": {"batch": B, "heads": H, "head_dim": D, "canvas": list(canvas), "tile": list(tile), "grid": list(g.grid),
                  "video_tokens": g.video_len, "text_len": T, "text_valid": min(args.text_valid, T), "dtype": args.dtype},
        "timing": "CUDA events, median of %d runs after warm-up" % reps, "errors": {},
    }
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, S, D, device=device, dtype=dtype) for _ in range(3))
    text_mask = None
    if T:
        text_mask = torch.zeros(B, T, dtype=torch.bool, device=device)
        text_mask[:, : args.text_valid] = True
    windows = default_error_windows(g)
    partial = [w for w in windows if not g.is_full(w)]
    densities = {",".join(map(str, w)): g.tile_density(w) for w in windows}
    result["shortlist"] = {"windows": [list(w) for w in windows], "tile_density": densities,
                           "sum_density_computed": sum(g.tile_density(w) for w in partial),
                           "note": "the full window is dense attention: its error is 0 without computing it"}
    times = {}

    def attempt(name, fn):
        try:
            return fn()
        except Exception as exc:  # keep measuring the rest; the JSON says what failed
            result["errors"][name] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
            return None

    # --- dense baselines
    if T:
        bias_mask = torch.ones(B, 1, 1, S, dtype=torch.bool, device=device)
        bias_mask[:, :, :, g.video_len:] = text_mask[:, None, None, :]
    else:
        bias_mask = None
    times["dense_sdpa_masked"] = attempt("dense_sdpa_masked", lambda: timer(
        lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias_mask), reps=reps))
    times["dense_flash_lse"] = attempt("dense_flash_lse", lambda: timer(
        lambda: attention_with_lse(q, k, v, text_len=T, text_mask=text_mask), reps=reps))
    dense_ms = (times["dense_flash_lse"] or times["dense_sdpa_masked"] or {}).get("median_ms")
    result["dense_ms"] = dense_ms

    # --- recall pass
    out, lse = attention_with_lse(q, k, v, text_len=T, text_mask=text_mask)

    def tiled(x):
        xv = to_tiles(g, x[:, :, : g.video_len])
        return torch.cat([xv, x[:, :, g.video_len:]], dim=2) if T else xv

    q_t, k_t = tiled(q), tiled(k)
    lse_t = to_tiles(g, lse[:, :, : g.video_len], dim=-1)
    attempt("recall_tune", lambda: tile_mass_triton_tiled(q_t, k_t, lse_t, g, T, text_mask))
    result["recall_config"] = {str(key[0].canvas): list(cfg) for key, cfg in _TUNED.items()} if _TUNED else None
    times["recall_kernel"] = attempt("recall_kernel", lambda: timer(
        lambda: tile_mass_triton_tiled(q_t, k_t, lse_t, g, T, text_mask), reps=reps))
    times["recall_with_tiling"] = attempt("recall_with_tiling", lambda: timer(
        lambda: tile_mass_triton_tiled(tiled(q), tiled(k), to_tiles(g, lse[:, :, : g.video_len], dim=-1), g, T,
                                       text_mask), reps=reps))
    # every candidate config, as timed by the tuner (do_bench), and the fast-exp variant's accuracy
    from sta_search.kernels.recall.triton_kernel import TUNING_LOG, _launch

    sweep = {}
    for key, log in TUNING_LOG.items():
        sweep.update({str(cfg): ms for cfg, ms in log.items()})
    result["recall_config_sweep_ms"] = sweep
    timed = [(ms, cfg) for log in TUNING_LOG.values() for cfg, ms in log.items() if isinstance(ms, float)]

    def fast_vs_exact():
        exact = min((t for t in timed if not t[1][5]), default=None)
        fast = min((t for t in timed if t[1][5]), default=None)
        if exact is None or fast is None:
            return None
        launch_args = (q_t, k_t, lse_t.float().contiguous(), g.key_valid().to(device=device, dtype=torch.int8),
                       text_mask.to(torch.int8).contiguous() if text_mask is not None else None, g, T, D**-0.5)
        a, b = _launch(exact[1], *launch_args), _launch(fast[1], *launch_args)
        return {"exact_config": list(exact[1]), "fast_config": list(fast[1]),
                "max_abs_diff_per_token": float((a - b).abs().max() / g.tile_volume),
                "recall_table_max_abs_diff": float((window_recall(a, g) - window_recall(b, g)).abs().max())}
    result["fast_exp_accuracy"] = attempt("fast_vs_exact", fast_vs_exact)

    # --- accuracy of the recall pass on this shape: rows must sum to the real tokens of each query tile
    mass = attempt("recall_mass", lambda: tile_mass_triton_tiled(q_t, k_t, lse_t, g, T, text_mask))
    if mass is not None:
        real = g.key_valid().view(g.num_tiles, g.tile_volume).sum(1).to(device).float()
        result["recall_row_sum_max_rel_dev"] = float(((mass.sum(-1) - real) / real).abs().max())
    # and against the PyTorch reference on a few heads of a smaller canvas
    def small_check():
        gs = Geometry((tile[0], 2 * tile[1], 4 * tile[2]), tile)
        Ss = gs.video_len + T
        qs, ks = (torch.randn(1, 2, Ss, D, device=device, dtype=dtype) for _ in range(2))
        _, lses = attention_with_lse(qs, ks, ks, text_len=T, text_mask=text_mask)
        def t(x):
            xv = to_tiles(gs, x[:, :, : gs.video_len])
            return torch.cat([xv, x[:, :, gs.video_len:]], dim=2) if T else xv
        tri = tile_mass_triton_tiled(t(qs), t(ks), to_tiles(gs, lses[:, :, : gs.video_len], dim=-1), gs, T, text_mask)
        ref = tile_mass_reference(qs, ks, canvas=gs.canvas, tile=tile, text_len=T, text_mask=text_mask)
        return float((tri - ref).abs().max() / gs.tile_volume)
    result["recall_vs_reference_max_abs_err_per_token"] = attempt("small_check", small_check)
    del q_t, k_t, lse_t, mass

    # --- shortlist STA windows
    v_t, q_full_t = tiled(v), None
    q_full_t = tiled(q)
    k_t = tiled(k)
    sta = {}
    for w in partial:
        r = attempt(f"sta_{w}", lambda w=w: timer(lambda: sta_attention_tiled(
            q_full_t, k_t, v_t, geometry=g, windows=w, text_len=T, text_mask=text_mask, backend="triton"
            if device.type == "cuda" else "flex"), reps=3))
        if r:
            sta[",".join(map(str, w))] = r["median_ms"]
    times["sta_shortlist_ms"] = sta
    del q_full_t, k_t, v_t, out, lse

    # --- one whole profiler call, and memory
    profiler = AttentionProfiler(g, windows)
    recall_only = AttentionProfiler(g, ())
    times["profiler_call"] = attempt("profiler_call", lambda: timer(
        lambda: profiler(q, k, v, text_len=T, text_mask=text_mask), warmup=1, reps=max(2, reps // 2)))
    times["profiler_recall_only_call"] = attempt("profiler_recall_only_call", lambda: timer(
        lambda: recall_only(q, k, v, text_len=T, text_mask=text_mask), warmup=1, reps=reps))
    mem = {}
    mem["dense_sdpa_bytes"] = attempt("mem_dense", lambda: _peak(device, lambda: F.scaled_dot_product_attention(
        q, k, v, attn_mask=bias_mask)))
    mem["profiler_call_bytes"] = attempt("mem_profiler", lambda: _peak(device, lambda: profiler(
        q, k, v, text_len=T, text_mask=text_mask)))
    if mem["dense_sdpa_bytes"] is not None and mem["profiler_call_bytes"] is not None:
        mem["extra_over_dense_GB"] = (mem["profiler_call_bytes"] - mem["dense_sdpa_bytes"]) / 1e9
    result["memory"] = mem
    result["times"] = times

    # --- verdicts
    if dense_ms:
        verdict = {}
        rk = (times.get("recall_kernel") or {}).get("median_ms")
        rt = (times.get("recall_with_tiling") or {}).get("median_ms")
        if rk:
            verdict["recall_kernel_over_dense"] = rk / dense_ms
        if rt:
            verdict["recall_with_tiling_over_dense"] = rt / dense_ms
        pc = (times.get("profiler_call") or {}).get("median_ms")
        budget = 1.6 + result["shortlist"]["sum_density_computed"]
        if pc:
            verdict["profiler_call_over_dense"] = pc / dense_ms
            verdict["budget_over_dense"] = budget
            verdict["within_budget"] = pc / dense_ms <= budget
        if rk:
            verdict["recall_within_0.6"] = rk / dense_ms <= 0.6
        if "extra_over_dense_GB" in mem:
            verdict["memory_within_2GB"] = mem["extra_over_dense_GB"] <= 2.0
        result["verdict"] = verdict
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
