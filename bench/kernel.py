"""Kernel benchmark driver for one GPU session: correctness check, config sweep, the speed-target cases (docs/targets.md).

    python bench/kernel.py --out DIR [--cases all|quick|wan|d64|none] [--sweep] [--check] [--paired-text]
        [--paired-mixed]

Same logic as ``sta-search bench`` (``sta_search.benchmark``), batched so one device call covers
every case. The JSON (``kernel-<utc>.json`` under ``--out``) is rewritten after every case, so a run
cut short still leaves its finished cases; a plain-text table is printed last.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from sta_search.benchmark import make_shape, paired_overhead, run_shape, sweep_configs, write_results
from sta_search.kernels.sta.triton_fwd import KernelConfig

# Head dim 64 (CogVideoX, LTX-Video 2B) at hunyuan-720p's canvas: 48 heads x 64 = the FLOPs of 24 x 128.
D64 = dict(head_dim=64, heads=48)
CASES = {
    "none": [],
    "d64": [("hunyuan-720p", "3,3,3", 0, D64), ("hunyuan-720p", "5,6,10", 0, D64)],
    "quick": [("hunyuan-720p", "3,3,3", 0)],
    "wan": [("wan-480p", "3,3,3", 0), ("wan-720p", "3,3,3", 0), ("hunyuan-720p", "3,3,3", 0)],
    "all": [
        ("hunyuan-720p", "3,3,3", 0),
        ("hunyuan-720p", "5,5,5", 0),
        ("hunyuan-720p", "mixed", 0),
        ("hunyuan-720p", "3,3,3", 256),
        ("wan-480p", "3,3,3", 0),
        ("wan-720p", "3,3,3", 0),
        ("hunyuan-720p", "5,6,10", 0),  # the full window: our kernel as plain dense attention (Triton's ceiling)
        ("hunyuan-720p", "3,3,3", 0, D64),
        ("hunyuan-720p", "5,6,10", 0, D64),
    ],
}

K = KernelConfig
BASE = K(128, 128, 8, 3, tma=True)
# (sweep name, shape, window, text_len, layout, configs): each sweep times the same inputs under every config.
TEXT_AFTER = K(128, 128, 8, 3, tma=True, text_tma=True)
TEXT_BEFORE = K(128, 128, 8, 3, tma=True, text_tma=True, text_before=True)  # the default on Hopper
SWEEPS = [
    ("text-natural", "hunyuan-720p", "3,3,3", 256, "natural", [BASE, TEXT_AFTER, TEXT_BEFORE]),
    ("text-tiled", "hunyuan-720p", "3,3,3", 256, "tiled", [BASE, TEXT_AFTER, TEXT_BEFORE]),
    ("text-bshd", "hunyuan-720p", "3,3,3", 256, "bshd", [TEXT_BEFORE]),
    ("video-natural", "hunyuan-720p", "3,3,3", 0, "natural", [BASE]),
    ("video-bshd", "hunyuan-720p", "3,3,3", 0, "bshd", [BASE]),
    ("video-bshd-copy", "hunyuan-720p", "3,3,3", 0, "bshd-copy", [BASE]),
]


def check_against_flex(log=print) -> list[dict]:
    """GPU correctness check (docs/targets.md): triton vs flex at hunyuan-720p (bf16, d=128, 24 heads), uniform and mixed windows."""
    from sta_search.kernels import Geometry
    from sta_search.kernels.sta import sta_attention_tiled

    geometry = Geometry((30, 48, 80), (6, 8, 8))
    mixed = [[(1, 2, 3), (3, 3, 3), (5, 6, 10), (2, 3, 5), (3, 5, 5), (1, 1, 1)][h % 6] for h in range(24)]
    rows = []
    for name, table, text_len in (("uniform-333", (3, 3, 3), 0), ("mixed", mixed, 0), ("333-text256", (3, 3, 3), 256)):
        torch.manual_seed(int(time.time()))
        q, k, v = (torch.randn(1, 24, geometry.padded_len + text_len, 128, device="cuda", dtype=torch.bfloat16)
                   for _ in range(3))
        text_mask = None
        if text_len:
            text_mask = torch.ones(1, text_len, dtype=torch.bool, device="cuda")
            text_mask[:, 200:] = False
        ours = sta_attention_tiled(q, k, v, geometry=geometry, windows=table, text_len=text_len, text_mask=text_mask,
                                   backend="triton")
        flex = sta_attention_tiled(q, k, v, geometry=geometry, windows=table, text_len=text_len, text_mask=text_mask,
                                   backend="flex")
        err = ((ours.float() - flex.float()).norm() / flex.float().norm()).item()
        finite = bool(torch.isfinite(ours).all())
        log(f"check {name}: triton vs flex rel RMS {err:.3e} finite={finite}")
        rows.append({"case": name, "rel_rms_vs_flex": err, "finite": finite})
    return rows


def plain_table(results) -> str:
    lines = [f"{'shape':<14}{'d':>4} {'windows':<10}{'text':>5} {'impl':<15}{'ms':>9}{'TFLOP/s':>9}{'cudnn/x':>9}"]
    for r in results:
        w = r.shape["windows"]
        wtext = "x".join(map(str, w[0])) if len(w) == 1 else "mixed"
        base = r.ms.get("cudnn-dense")
        for impl, ms in r.ms.items():
            ratio = f"{base / ms:.2f}" if base else "-"
            lines.append(f"{r.shape['name']:<14}{r.shape['head_dim']:>4} {wtext:<10}{r.shape['text_len']:>5} "
                         f"{impl:<15}{ms:9.2f}"
                         f"{r.tflops[impl]:9.0f}{ratio:>9}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--cases", default="all", choices=sorted(CASES))
    parser.add_argument("--sweep", action="store_true", help="sweep launch configs on hunyuan-720p (3,3,3)")
    parser.add_argument("--check", action="store_true", help="triton vs flex at hunyuan-720p")
    parser.add_argument("--paired-text", action="store_true", help="text-256 overhead, alternating rounds")
    parser.add_argument("--only", nargs="+", default=None, help="run only the sweeps whose name contains one of these")
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--paired-mixed", action="store_true",
                        help="uniform (3,3,3) vs mixed windows of the same density, alternating rounds, per backend")
    args = parser.parse_args(argv)
    log = lambda *a: print(*a, flush=True)  # noqa: E731
    extra: dict = {}
    results: list = []
    path = None
    if args.check:
        extra["check"] = check_against_flex(log)
        path = write_results(results, args.out, extra=extra)
    if args.paired_text:
        for backend in ("triton", "gluon"):
            log(f"paired ({backend}): hunyuan-720p (3,3,3) in place, video only vs +256 text (205 real), "
                "alternating rounds")
            key = "paired_text" if backend == "triton" else f"paired_text_{backend}"
            extra[key] = paired_overhead(make_shape("hunyuan-720p", window="3,3,3"),
                                         make_shape("hunyuan-720p", window="3,3,3", text_len=256), backend=backend,
                                         log=log)
            log(f"  median text overhead {extra[key]['median_ratio'] - 1:+.1%}")
        path = write_results(results, args.out, extra=extra)
    if args.paired_mixed:
        for backend in ("triton", "gluon"):
            log(f"paired ({backend}): hunyuan-720p in place, uniform (3,3,3) vs mixed per-head windows of the same "
                "mean density, alternating rounds")
            key = f"paired_mixed_{backend}"
            extra[key] = paired_overhead(make_shape("hunyuan-720p", window="3,3,3"),
                                         make_shape("hunyuan-720p", window="mixed"), backend=backend, log=log)
            log(f"  median mixed overhead {extra[key]['median_ratio'] - 1:+.1%}")
        path = write_results(results, args.out, extra=extra)
    if args.sweep:
        for sweep_name, shape_name, window, text_len, layout, configs in SWEEPS:
            if args.only and not any(o in sweep_name for o in args.only):
                continue
            log(f"sweep {sweep_name}: {shape_name} ({window}) text {text_len}, layout {layout}")
            shape = make_shape(shape_name, window=window, text_len=text_len)
            extra.setdefault("sweeps", {})[sweep_name] = dict(
                shape=shape_name, window=window, text_len=text_len, layout=layout,
                results=sweep_configs(shape, configs, log=log, layout=layout))
            if path is not None:
                path.unlink(missing_ok=True)
            path = write_results(results, args.out, extra=extra)
    for name, window, text_len, *overrides in CASES[args.cases]:
        shape = make_shape(name, window=window, text_len=text_len, **(overrides[0] if overrides else {}))
        log(f"{shape.name} heads {shape.heads} x d={shape.head_dim} windows {window} text {text_len}")
        try:
            results.append(run_shape(shape, iters=args.iters, baselines=not args.no_baselines, log=log))
        except Exception as exc:  # keep the other cases
            log(f"  FAILED: {type(exc).__name__}: {str(exc)[:300]}")
            extra.setdefault("failed", []).append([name, window, text_len, shape.head_dim,
                                                   f"{type(exc).__name__}: {exc}"[:500]])
            torch.cuda.empty_cache()
            continue
        if path is not None:
            path.unlink(missing_ok=True)
        path = write_results(results, args.out, extra=extra)
    log(plain_table(results))
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
