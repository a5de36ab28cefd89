"""What a diffusers step cache and STA each cost in fidelity, alone and together, on the bundled `small` model.

For held-out captions (``sta_search.small.data``) this generates, from the same initial noise per caption:

* dense: full attention, no cache (the reference);
* cache: full attention with a diffusers step cache (``--caches``, e.g. taylorseer, first-block);
* sta: the STA windows that ``select`` chooses at ``--density`` from a profile of training captions;
* cache+sta: both;

and reports PSNR / SSIM of each against dense (``sta_search.video.fidelity``: per frame, 8-bit RGB, averaged
over frames), the transformer forwards each mode computed, and wall time on this device. Runs go through
``sta_search.generate.run_pipeline``, what ``sta-search generate`` runs, so the STA schedule follows the
pipeline's own step index when a cache skips work (``caches.PipelineSteps``).

    python bench/cache_quality.py --out DIR                       # small at its low canvas 8x64x96 px on CPU (~5 min)
    python bench/cache_quality.py --device cuda --height 96 --width 160 --frames 16 --out DIR
    python bench/cache_quality.py --quick --out DIR               # smoke: 1 caption, 4 steps

Writes ``DIR/cache-quality-<UTC stamp>.json``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

import quality  # noqa: E402  (bench/quality.py: _versions)
from profiling_amount import prompt_split  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="small")
    p.add_argument("--device", default="cpu")
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=96)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    p.add_argument("--profile-prompts", type=int, default=4)
    p.add_argument("--heldout-prompts", type=int, default=4)
    p.add_argument("--profile-every", type=int, default=2)
    p.add_argument("--density", type=float, default=0.3)
    p.add_argument("--caches", nargs="+", default=["taylorseer", "first-block"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--quick", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from sta_search.accelerate import AttentionTimer, MaskAttention
    from sta_search.caches import use_cache
    from sta_search.generate import run_pipeline
    from sta_search.models import dense_attention, load_model
    from sta_search.options import resolve_device
    from sta_search.profile import ProfileSettings, run_profile
    from sta_search.select import SelectOptions, select_windows
    from sta_search.small import recommended_settings
    from sta_search.video import fidelity

    device = resolve_device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    loaded = load_model(args.model, device, dtype)
    settings = recommended_settings()
    steps = 4 if args.quick else (args.steps or settings.steps)
    profile_count, heldout_count = (1, 1) if args.quick else (args.profile_prompts, args.heldout_prompts)
    training, heldout = prompt_split("small", profile_count, heldout_count)  # as profiling_amount.py
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    t_start = time.perf_counter()

    profile = run_profile(
        ProfileSettings(model=args.model, prompts=tuple(training), steps=steps, height=args.height, width=args.width,
                        frames=args.frames, seed=args.seed, profile_steps=args.profile_every, tile=settings.tile,
                        device=str(device), dtype="bfloat16" if dtype == torch.bfloat16 else "float32"),
        out / "profile", resume=True, loaded=loaded)
    config = select_windows(profile, SelectOptions(budget=args.density)).config
    print(f"profiled {len(training)} captions; config density {config.density():.3f}", flush=True)

    def run(caption: str, attention_fn) -> tuple[np.ndarray, float, int]:
        forwards = []
        handle = loaded.transformer.register_forward_pre_hook(lambda *_: forwards.append(1))
        try:
            kwargs = dict(loaded.adapter.pipeline_kwargs([caption], args.height, args.width, args.frames, steps,
                                                         torch.Generator().manual_seed(args.seed)))
            kwargs["guidance_scale"] = settings.guidance_scale
            timer = AttentionTimer()
            frames, timing = run_pipeline(loaded, kwargs, attention_fn, timer, device)
        finally:
            handle.remove()
        return frames, timing.total_seconds, len(forwards)

    modes: dict[str, dict] = {}
    dense_frames = {}
    for caption in heldout:
        dense_frames[caption], seconds, forwards = run(caption, dense_attention)
        modes.setdefault("dense", {"seconds": [], "forwards": []})
        modes["dense"]["seconds"].append(seconds)
        modes["dense"]["forwards"].append(forwards)

    def measure(name: str, attention_fn, cache: str | None) -> None:
        entry = modes.setdefault(name, {"seconds": [], "forwards": [], "psnr_db": [], "ssim": []})
        for caption in heldout:
            if cache:
                with use_cache(loaded, cache):
                    frames, seconds, forwards = run(caption, attention_fn)
            else:
                frames, seconds, forwards = run(caption, attention_fn)
            fid = fidelity(dense_frames[caption], frames)
            entry["seconds"].append(seconds)
            entry["forwards"].append(forwards)
            entry["psnr_db"].append(fid.psnr_db)
            entry["ssim"].append(fid.ssim)
        print(f"{name}: PSNR {np.mean(entry['psnr_db']):.2f} dB SSIM {np.mean(entry['ssim']):.3f} "
              f"({np.mean(entry['seconds']):.2f} s a video)", flush=True)

    measure("sta", MaskAttention(config), None)
    for cache in args.caches:
        measure(f"cache:{cache}", dense_attention, cache)
        measure(f"cache:{cache}+sta", MaskAttention(config), cache)

    for entry in modes.values():
        for key in ("psnr_db", "ssim", "seconds"):
            if entry.get(key):
                entry[f"mean_{key}"] = float(np.mean(entry[key]))
    dense_s = modes["dense"]["mean_seconds"]
    for entry in modes.values():
        entry["speed_vs_dense"] = dense_s / entry["mean_seconds"]
    result = {
        "schema": "sta-search/cache-quality/v1", "created_utc": stamp, "versions": quality._versions(),
        "device": {"type": device.type, "name": torch.cuda.get_device_name(device) if device.type == "cuda"
                   else platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()},
        "settings": {"model": args.model, "height": args.height, "width": args.width, "frames": args.frames,
                     "canvas": list(profile.canvas), "tile": list(profile.tile), "steps": steps,
                     "guidance_scale": settings.guidance_scale, "dtype": str(dtype).replace("torch.", ""),
                     "density_budget": args.density, "config_density": config.density(),
                     "dense_steps": "select's default", "seed": args.seed, "quick": args.quick},
        "prompts": {"profiled": training, "heldout": heldout},
        "modes": modes,
        "notes": "PSNR/SSIM against dense attention without a cache from the same noise; speed_vs_dense is wall time "
                 "on this device (CPU numbers are not GPU speed).",
        "total_seconds": time.perf_counter() - t_start,
    }
    path = out / f"cache-quality-{stamp}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
