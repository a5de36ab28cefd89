"""Cost of profiling one attention call (hunyuan-720p by default) against the fastest dense attention.

The yardstick is cuDNN SDPA *without* a mask on the same shape (all text keys; what the fastest dense
attention costs), measured in the same run. Every part of one ``AttentionProfiler`` call is timed on its own
with CUDA events (median after warm-up), then the whole call:

  - dense pass + log-sum-exp (``attention_with_lse``: cuDNN, else FA2, else efficient; padded text keys
    dropped per batch element), and FA2 for comparison;
  - recall pass: tile-order q/k gathers, and the Triton tile-mass kernel;
  - on Hopper, the fused pass the profiler runs there instead of those two (``dense_tile_mass_fused``: the
    Gluon dense kernel with the full window recording each row's mass per key tile), checked against them;
  - each partial shortlist window's ``sta_attention`` on natural order (backend ``auto``: Gluon in place on
    Hopper), and the error reductions (``squared_distance``) of one window;
  - one whole profiler call (its ``auto`` path; on Hopper also the two-pass path, ``profiler_call_two_pass``)
    and one with an empty shortlist, and peak memory above the dense call's.

Target (docs/targets.md): profiled call <= (1.6 + sum of partial shortlist tile densities) x dense cuDNN SDPA
without a mask; recall pass <= 0.5 x dense; memory <= 2 GB above the dense run. ``verdict`` holds the ratios
and pass/fail. The JSON is rewritten after every section, so a run cut short keeps what it measured.

    PYTHONPATH=$PWD python bench/profile_speed.py --out $OUT            # H200: well under 3 minutes
    PYTHONPATH=$PWD python bench/profile_speed.py --quick --out $OUT    # smaller canvas, a smoke run
    TRITON_INTERPRET=1 PYTHONPATH=$PWD python bench/profile_speed.py --canvas 2,8,8 --tile 1,4,4 --heads 2 \\
        --dim 32 --text-len 8 --text-valid 5 --device cpu --out /tmp/p.json   # CPU smoke test of the script
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
import traceback
from datetime import datetime, timezone

import torch
import torch.nn.functional as F

QUICK = {"canvas": "12,48,80", "heads": 8}


def _timer(device):
    def run(fn, warmup=2, reps=5):
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(reps):
            if device.type == "cuda":
                start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                stop.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(stop))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return {"median_ms": statistics.median(times), "min_ms": min(times), "runs": reps}
    return run


def _peak_bytes(device, fn):
    """Peak allocated bytes while ``fn`` runs, above what was allocated before (None off CUDA)."""
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


def _out_path(out: str | None, device_name: str, quick: bool) -> str | None:
    if not out:
        return None
    if out.endswith(".json"):
        return out
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    tag = "".join(c if c.isalnum() else "-" for c in device_name.lower()).strip("-")[:40]
    return os.path.join(out, f"profile-speed-{tag}{'-quick' if quick else ''}-{stamp}.json")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--canvas", default=None, help="T,H,W video tokens (default 30,48,80; --quick 12,48,80)")
    parser.add_argument("--tile", default="6,8,8")
    parser.add_argument("--heads", type=int, default=None, help="default 24 (--quick 8)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--text-len", type=int, default=256, help="joint text tokens after the video (HunyuanVideo)")
    parser.add_argument("--text-valid", type=int, default=64, help="real text tokens (the rest is padding)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help=f"smaller shape: {QUICK}")
    parser.add_argument("--out", default=None, help="a .json file, or a folder to write a stamped JSON into")
    parser.add_argument("--fused-compact", choices=("on", "off"), default=None,
                        help="force kernels.backends.FUSED_RECALL_COMPACT_PADDED (the fused pass on padded canvases in "
                             "compact tile order); default: the library's setting")
    parser.add_argument("-v", "--verbose", action="store_true", help="log kernel choices (dense kernel, backends)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")

    import triton

    from sta_search.kernels import backends
    from sta_search.kernels.geometry import Geometry
    from sta_search.kernels.recall import attention_with_lse, chosen_kernel, dense as dense_kernels
    from sta_search.kernels.backends import can_run_fused_recall
    from sta_search.kernels.recall.gluon_fused import dense_and_tile_mass
    from sta_search.kernels.recall import triton_kernel as rk
    from sta_search.kernels.sta import sta_attention
    from sta_search.stats import AttentionProfiler, _tile_order_indices, default_error_windows, squared_distance

    if args.fused_compact is not None:
        backends.FUSED_RECALL_COMPACT_PADDED = args.fused_compact == "on"
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    dtype = getattr(torch, args.dtype)
    canvas = tuple(int(c) for c in (args.canvas or (QUICK["canvas"] if args.quick else "30,48,80")).split(","))
    tile = tuple(int(t) for t in args.tile.split(","))
    g = Geometry(canvas, tile)
    B, H, D, T = args.batch, args.heads or (QUICK["heads"] if args.quick else 24), args.dim, args.text_len
    S = g.video_len + T
    timer = _timer(device)
    reps = args.reps if on_gpu else 2
    windows = default_error_windows(g)
    partial = [w for w in windows if not g.is_full(w)]
    sum_density = sum(g.tile_density(w) for w in partial)
    device_name = torch.cuda.get_device_name(device) if on_gpu else (platform.processor() or "cpu")
    out_path = _out_path(args.out, device_name, args.quick)
    result = {
        "bench": "profile_speed",
        "device": device_name,
        "torch": torch.__version__, "triton": triton.__version__, "python": sys.version.split()[0],
        "cudnn": torch.backends.cudnn.version() if on_gpu else None,
        "shape": {"batch": B, "heads": H, "head_dim": D, "canvas": list(canvas), "tile": list(tile),
                  "grid": list(g.grid), "video_tokens": g.video_len, "text_len": T,
                  "text_valid": min(args.text_valid, T), "dtype": args.dtype, "quick": args.quick},
        "fused_recall_compact_padded": backends.FUSED_RECALL_COMPACT_PADDED,
        "timing": f"{'CUDA events' if on_gpu else 'perf_counter'}, median of the runs after warm-up",
        "yardstick": "dense_cudnn_nomask: cuDNN SDPA without a mask on the same shape (all text keys)",
        "shortlist": {"windows": [list(w) for w in windows],
                      "tile_density": {",".join(map(str, w)): g.tile_density(w) for w in windows},
                      "sum_density_partial": sum_density,
                      "note": "the full window is dense attention: its error is 0 without running it"},
        "times": {}, "memory": {}, "errors": {}, "kernels": {},
    }
    times, memory = result["times"], result["memory"]

    def ms(name):
        return (times.get(name) or {}).get("median_ms")

    def save():
        verdict = {}
        dense = ms("dense_cudnn_nomask")
        result["dense_ms"] = dense
        result["dense_ms_is"] = "dense_cudnn_nomask"
        if not dense:  # cuDNN could not run here: SDPA's own choice without a mask, and the JSON says so
            dense = result["dense_ms"] = ms("dense_sdpa_nomask")
            result["dense_ms_is"] = "dense_sdpa_nomask (cuDNN failed: see errors)"
        if dense:
            shortlist_parts = {
                "shortlist_sta": sum(times.get("sta_shortlist_ms", {}).values()) or None,
                "norms": (ms("norms_one_window") or 0) * len(partial) + (ms("norms_reference") or 0) or None}
            two_pass = {"dense_lse": ms("dense_lse"), "recall_gathers": ms("recall_gathers"),
                        "recall_kernel": ms("recall_kernel"), **shortlist_parts}
            fused = {"dense_tile_mass_fused": ms("dense_tile_mass_fused"), **shortlist_parts}
            # the profiler's auto path: the fused Gluon pass where it ran, else the two passes
            parts = fused if ms("dense_tile_mass_fused") else two_pass
            verdict["profiler_path"] = "gluon fused" if parts is fused else "two-pass (cuDNN + Triton recall)"
            verdict["parts_over_dense"] = {k: (v / dense if v else None) for k, v in parts.items()}
            if all(parts.values()):
                verdict["parts_sum_over_dense"] = sum(parts.values()) / dense
            if parts is fused:
                verdict["two_pass_parts_over_dense"] = {k: (v / dense if v else None) for k, v in two_pass.items()}
                verdict["fused_over_dense_lse_plus_recall"] = ms("dense_tile_mass_fused") / sum(
                    ms(x) or 0 for x in ("dense_lse", "recall_gathers", "recall_kernel")) \
                    if ms("recall_kernel") else None
            for name in ("dense_sdpa_masked", "dense_flash_lse", "profiler_call", "profiler_call_two_pass",
                         "profiler_recall_only_call", "dense_tile_mass_fused"):
                if ms(name):
                    verdict[f"{name}_over_dense"] = ms(name) / dense
            if ms("recall_kernel"):
                verdict["recall_within_0.5"] = ms("recall_kernel") / dense <= 0.5
            verdict["target_over_dense"] = 1.6 + sum_density
            if ms("profiler_call"):
                verdict["within_target"] = ms("profiler_call") / dense <= verdict["target_over_dense"]
            sta = times.get("sta_shortlist_ms") or {}
            if sta:
                verdict["sta_shortlist_over_ideal"] = sum(sta.values()) / (dense * sum(
                    g.tile_density(tuple(int(x) for x in w.split(","))) for w in sta))
        if memory.get("extra_over_dense_GB") is not None:
            verdict["memory_within_2GB"] = memory["extra_over_dense_GB"] <= 2.0
        result["verdict"] = verdict
        if out_path:
            os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
            with open(out_path, "w") as f:
                f.write(json.dumps(result, indent=1) + "\n")

    def attempt(name, fn):
        try:
            return fn()
        except Exception as exc:  # keep measuring the rest; the JSON says what failed
            result["errors"][name] = f"{type(exc).__name__}: {str(exc)[:500]}"
            traceback.print_exc()
            return None

    def section(title):
        print(f"[{time.perf_counter() - t_start:6.1f} s] {title}", flush=True)

    t_start = time.perf_counter()
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, S, D, device=device, dtype=dtype) for _ in range(3))
    text_mask = attn_mask = None
    if T:
        text_mask = torch.zeros(B, T, dtype=torch.bool, device=device)
        text_mask[:, : args.text_valid] = True
        attn_mask = torch.ones(B, 1, 1, S, dtype=torch.bool, device=device)
        attn_mask[:, :, :, g.video_len:] = text_mask[:, None, None, :]

    # 1. dense attention: the yardstick (cuDNN, no mask), diffusers' masked SDPA, the profiler's dense pass
    section("dense attention")
    if on_gpu:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def cudnn_nomask():
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v)
    else:
        def cudnn_nomask():
            return F.scaled_dot_product_attention(q, k, v)
    times["dense_cudnn_nomask"] = attempt("dense_cudnn_nomask", lambda: timer(cudnn_nomask, reps=reps))
    times["dense_sdpa_nomask"] = attempt("dense_sdpa_nomask", lambda: timer(
        lambda: F.scaled_dot_product_attention(q, k, v), reps=reps))
    times["dense_sdpa_masked"] = attempt("dense_sdpa_masked", lambda: timer(
        lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask), reps=reps))
    times["dense_lse"] = attempt("dense_lse", lambda: timer(
        lambda: attention_with_lse(q, k, v, text_len=T, text_mask=text_mask), reps=reps))
    result["kernels"]["dense_lse"] = chosen_kernel(q) if on_gpu else "reference (CPU)"
    result["kernels"]["dense_lse_unusable"] = {"/".join(map(str, key)): why for key, why in
                                               dense_kernels.UNUSABLE.items()}
    if on_gpu:
        times["dense_flash_lse"] = attempt("dense_flash_lse", lambda: timer(
            lambda: attention_with_lse(q, k, v, text_len=T, text_mask=text_mask, kernel="flash"), reps=reps))
    memory["dense_cudnn_nomask_bytes"] = attempt("mem_dense", lambda: _peak_bytes(device, cudnn_nomask))
    save()

    # 2. recall pass: tile-order gathers of q and k, then the tile-mass kernel (its first call tunes the config)
    section("recall pass")
    out, lse = attention_with_lse(q, k, v, text_len=T, text_mask=text_mask)
    video_index, key_index, padding = _tile_order_indices(g, T, False, device)

    def gathers():
        q_t, k_t = q.index_select(2, video_index), k.index_select(2, key_index)
        if padding is not None:
            q_t.index_fill_(2, padding, 0)
            k_t.index_fill_(2, padding, 0)
        return q_t, k_t

    q_t, k_t = gathers()
    lse_t = lse[:, :, : g.video_len].index_select(2, video_index)
    t0 = time.perf_counter()
    attempt("recall_tune", lambda: rk.tile_mass_triton_tiled(q_t, k_t, lse_t, g, T, text_mask))
    result["recall_tuning_s"] = time.perf_counter() - t0
    result["kernels"]["recall_config"] = [list(c) for c in rk.tuned_configs()] or None
    result["kernels"]["recall_config_fields"] = ["BLOCK_M", "BLOCK_N", "num_warps", "num_stages", "nested_loops",
                                                 "fast_exp"]
    times["recall_gathers"] = attempt("recall_gathers", lambda: timer(gathers, reps=reps))
    times["recall_kernel"] = attempt("recall_kernel", lambda: timer(
        lambda: rk.tile_mass_triton_tiled(q_t, k_t, lse_t, g, T, text_mask), reps=reps))
    # 2b. the fused pass (Hopper): the dense kernel itself records every row's mass on every key tile
    if on_gpu and can_run_fused_recall(q, g)[0]:
        section("fused dense + tile mass (gluon)")
        mass_two_pass = attempt("recall_for_check", lambda: rk.tile_mass_triton_tiled(q_t, k_t, lse_t, g, T, text_mask))
        fused = attempt("fused_first_call", lambda: dense_and_tile_mass(q, k, v, g, text_len=T, text_mask=text_mask))
        if fused is not None and mass_two_pass is not None:
            f_out, f_mass = fused
            rows = mass_two_pass.sum(-1, keepdim=True).clamp_min(1)
            result["fused_check"] = {
                "max_row_mass_diff_vs_two_pass": float(((f_mass - mass_two_pass) / rows).abs().max()),
                "out_rel_rms_vs_cudnn_lse_pass": float((f_out.float() - out.float()).norm() / out.float().norm()),
                "note": "two-pass = cuDNN dense + log-sum-exp, then the Triton recall kernel (both bf16 inputs)"}
            del f_out, f_mass
        times["dense_tile_mass_fused"] = attempt("dense_tile_mass_fused", lambda: timer(
            lambda: dense_and_tile_mass(q, k, v, g, text_len=T, text_mask=text_mask), reps=reps))
        memory["fused_bytes"] = attempt("mem_fused", lambda: _peak_bytes(device, lambda: dense_and_tile_mass(
            q, k, v, g, text_len=T, text_mask=text_mask)))
        result["kernels"]["fused"] = "gluon dense + tile mass (kernels/recall/gluon_fused.py)"
    else:
        result["kernels"]["fused"] = f"not run: {can_run_fused_recall(q, g)[1]}" if on_gpu else "not run: CPU"
    del q_t, k_t, lse_t
    save()

    # 3. shortlist: each partial window's STA on natural order, and the error reductions
    section(f"shortlist ({len(partial)} windows)")
    backend, why = backends.choose_backend(q, g, "natural")
    result["kernels"]["sta_backend"] = backend
    result["kernels"]["sta_backend_why"] = why
    result["kernels"]["sta_in_place"] = list(backends.runs_in_place(backend, q, k, v, g))
    sta = {}
    times["sta_shortlist_ms"] = sta
    for w in partial:
        r = attempt(f"sta_{w}", lambda w=w: timer(lambda: sta_attention(
            q, k, v, canvas=canvas, tile=tile, windows=w, text_len=T, text_mask=text_mask, backend="auto"),
            warmup=1, reps=3))
        if r:
            sta[",".join(map(str, w))] = r["median_ms"]
        save()
    o = sta_attention(q, k, v, canvas=canvas, tile=tile, windows=partial[0], text_len=T, text_mask=text_mask) \
        if partial else out
    video = slice(0, g.video_len)
    times["norms_one_window"] = attempt("norms_one_window", lambda: timer(
        lambda: squared_distance(o[:, :, video], out[:, :, video]), reps=reps))
    times["norms_reference"] = attempt("norms_reference", lambda: timer(
        lambda: squared_distance(out[:, :, video], None), reps=reps))
    del o, out, lse
    save()

    # 4. whole profiler calls and their memory
    section("profiler calls")
    profiler = AttentionProfiler(g, windows)
    recall_only = AttentionProfiler(g, ())
    times["profiler_call"] = attempt("profiler_call", lambda: timer(
        lambda: profiler(q, k, v, text_len=T, text_mask=text_mask), warmup=1, reps=3 if on_gpu else 1))
    save()
    if ms("dense_tile_mass_fused"):  # the profiler's auto path was the fused one: time the two-pass one too
        two_pass = AttentionProfiler(g, windows, backend="triton")
        times["profiler_call_two_pass"] = attempt("profiler_call_two_pass", lambda: timer(
            lambda: two_pass(q, k, v, text_len=T, text_mask=text_mask), warmup=1, reps=3))
        save()
    times["profiler_recall_only_call"] = attempt("profiler_recall_only_call", lambda: timer(
        lambda: recall_only(q, k, v, text_len=T, text_mask=text_mask), warmup=1, reps=3 if on_gpu else 1))
    memory["profiler_call_bytes"] = attempt("mem_profiler", lambda: _peak_bytes(device, lambda: profiler(
        q, k, v, text_len=T, text_mask=text_mask)))
    if memory.get("dense_cudnn_nomask_bytes") is not None and memory.get("profiler_call_bytes") is not None:
        memory["extra_over_dense_GB"] = (memory["profiler_call_bytes"] - memory["dense_cudnn_nomask_bytes"]) / 1e9
    result["wall_s"] = time.perf_counter() - t_start
    save()
    section("done")
    print(json.dumps({"dense_ms": result.get("dense_ms"), "kernels": result["kernels"],
                      "verdict": result["verdict"], "memory": memory, "errors": result["errors"],
                      "out": out_path}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
