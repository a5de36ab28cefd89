"""What FP8 attention costs in the videos of the bundled ``small`` model (issue #18: PSNR of FP8-STA against
bf16-STA >= 35 dB, reported next to the speed).

    python3 bench/fp8_video_psnr.py --out DIR          # H200: about a minute, mostly Gluon compiles

For each window (uniform over every head; the selector's default dense first steps) the held-out prompts are
generated from the same initial noise: dense (SDPA), STA through the bf16 Gluon kernel, and STA through the 8-bit
Gluon kernel at each ``--variants`` precision (``fp8``, ``int8``: ``MaskAttention(..., backend="gluon",
precision=...)``). Reported per window and seed: PSNR / SSIM (8-bit frames, bench/quality.py's ``video_metrics``) of
each 8-bit run against bf16-STA (the price of 8 bits), and of each against dense (the price of the window). ``small`` has head dim 64 and tile
(4,4,4); the Gluon kernels need a tile volume that is a multiple of 128, so the configs use tile (4,4,8)
(canvas 16x24x40 -> 4x6x5 tiles). Writes ``DIR/fp8-video-psnr-<device>-<utc>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench/results")
    p.add_argument("--model", default="small")
    p.add_argument("--tile", default="4,4,8")
    p.add_argument("--windows", nargs="+", default=["3,3,3", "3,5,5"])
    p.add_argument("--prompts", type=int, default=8, help="held-out captions, generated as one batch")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--variants", nargs="+", choices=["fp8", "int8"], default=["fp8", "int8"],
                   help="8-bit precisions compared with bf16-STA: fp8 (e4m3 QK^T and PV), int8 (int8 QK^T, e4m3 PV)")
    p.add_argument("--smoke", action="store_true",
                   help="CPU plumbing check: float32, 8x64x96, 2 prompts, 2 steps, window 1,3,3, the gather "
                        "backend for both sides")
    args = p.parse_args(argv)

    import quality  # bench/quality.py: prompts, generate_batch, video_metrics
    from sta_search.accelerate import MaskAttention, fast_dense_attention
    from sta_search.maskconfig import MaskConfig, parse_window
    from sta_search.models import load_model, resolve_model_path
    from sta_search.select import resolve_full_steps

    device = torch.device("cpu" if args.smoke else "cuda")
    folder, _ = resolve_model_path(args.model)
    smoke_size = dict(steps=2, frames=8, height=64, width=96) if args.smoke else {}
    settings = quality.study_settings(argparse.Namespace(**smoke_size), folder)
    loaded = load_model(args.model, device.type, torch.float32 if args.smoke else torch.bfloat16)
    if args.smoke:
        args.prompts, args.seeds, args.windows = 2, args.seeds[:1], ["1,3,3"]
    device_name = "cpu" if args.smoke else torch.cuda.get_device_name()
    canvas = tuple(int(c) for c in loaded.adapter.canvas(loaded.transformer, settings.height, settings.width,
                                                         settings.frames))
    tile = parse_window(args.tile, "tile")
    steps = int(settings.steps)
    dense_steps = tuple(range(resolve_full_steps(None, steps)))  # the selector's default dense first steps
    _, heldout = quality.prompts(0, args.prompts, kind=quality.model_kind(folder))
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    report = {"schema": "sta-search/fp8-video-psnr/v1", "created_utc": stamp,
              "device": device_name, "smoke": args.smoke, "versions": quality._versions(), "model": str(args.model),
              "canvas": list(canvas), "tile": list(tile), "steps": steps, "dense_steps": list(dense_steps),
              "guidance": settings.guidance_scale, "size": [settings.frames, settings.height, settings.width],
              "prompts": heldout, "seeds": args.seeds, "results": []}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"fp8-video-psnr-{device_name.split()[-1].lower()}-{stamp}.json"

    def videos(seed, attention):
        frames = quality.generate_batch(loaded, settings, heldout, steps, seed, attention)
        return torch.from_numpy(frames).permute(0, 1, 4, 2, 3).to(device)  # (N, F, 3, H, W)

    def summary(metrics):
        return {key: sum(m[key] for m in metrics) / len(metrics) for key in ("psnr_db", "ssim", "tpsnr_db")}

    for seed in args.seeds:
        dense = videos(seed, fast_dense_attention)
        for window in args.windows:
            config = MaskConfig.uniform(loaded.info, canvas, tile, 0, steps, window, dense_steps=dense_steps)
            t0 = time.perf_counter()
            runs = {}
            kernels = {}
            for variant in ("bf16", *args.variants):
                attention = (MaskAttention(config, backend="gather") if args.smoke
                             else MaskAttention(config, backend="gluon", precision=variant))
                runs[variant] = videos(seed, attention)
                kernels[variant] = dict(attention.calls)
            row = {"seed": seed, "window": window, "density": float(config.density()),
                   "bf16_vs_dense": summary(quality.video_metrics(runs["bf16"], dense))}
            for variant in args.variants:
                vs_bf16 = quality.video_metrics(runs[variant], runs["bf16"])
                row[f"{variant}_vs_bf16"] = summary(vs_bf16)
                row[f"{variant}_vs_dense"] = summary(quality.video_metrics(runs[variant], dense))
                row[f"{variant}_vs_bf16_min_psnr_db"] = min(m["psnr_db"] for m in vs_bf16)
            row.update(calls=kernels, seconds=round(time.perf_counter() - t0, 1))
            report["results"].append(row)
            print(json.dumps(row), flush=True)
            path.write_text(json.dumps(report, indent=1))
    print(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()
