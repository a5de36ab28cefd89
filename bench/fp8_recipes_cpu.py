"""Which low-precision attention recipe would keep `small`'s STA videos within 35 dB of exact STA? (CPU emulation,
issue #18's FP8 quality target; ~15 minutes on the 2-core box.)

    python3 bench/fp8_recipes_cpu.py --out FILE.json [--prompts 4] [--window 1,3,3]

The GPU run (`bench/fp8_video_psnr.py`) measured the shipped FP8 kernel at 31-33 dB against bf16-STA on `small`.
This script emulates recipes in float32 torch ("fake quantization": values rounded to the format, then computed in
float32) as a `hook_attention` function on the STA mask, and generates the same held-out prompts from the same noise
with each, at the small canvas (8x64x96 px, tile (4,4,8), grid 2x4x3), the first 4 of 16 steps dense:

- ``exact``: STA in float32 (the reference every PSNR is against);
- ``fp8``: the shipped recipe (`gluon_fp8.quantize_fp8_torch`: Q per 64 rows, K smoothed per 128 rows, V per channel,
  all e4m3; P x 256 rounded to e4m3);
- ``fp8-qk``: Q, K as in ``fp8``; P and V in bf16 (PV on bf16 wgmma);
- ``int8-qk``: Q, K rounded to int8 per block (SageAttention's QK^T), P and V as in ``fp8``;
- ``int8-qk-bf16-pv``: int8 Q, K; P and V in bf16.

It ranks recipes by their price in dB; the absolute numbers belong to this canvas and window, not to the GPU run's
(16x96x160, (3,3,3)). Writes per recipe the mean PSNR / SSIM against ``exact`` and the attention-output error of one
recorded call.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

RECIPES = ("exact", "fp8", "fp8-qk", "int8-qk", "int8-qk-bf16-pv")


def fake_quantize(q, k, v, geometry, recipe: str):
    """Dequantized natural-order ``(q, k, v)`` (float32) and how P is rounded (``"fp8"``, ``"bf16"`` or None)."""
    from kernel_cases import fp8_dequantized  # tests/: the FP8 kernel tests' emulation of the same pre-pass
    from sta_search.kernels.sta.gluon_fp8 import BLOCK_N, QUERY_ROWS, fp8_rows
    from sta_search.kernels.geometry import from_tiles

    if recipe == "exact":
        return q, k, v, None
    qn, kn, vn = fp8_dequantized(q, k, v, geometry, dtype=torch.float32)
    if recipe.startswith("int8"):  # the same blocks and K smoothing, rounded to int8 instead of e4m3
        B, heads, S, D = q.shape
        L8 = fp8_rows(geometry, 0)
        q32, k32 = _smoothed_rows(q, k, geometry, L8)
        qn, kn = (from_tiles(geometry, _int8_blocks(x, n).reshape(B, heads, L8, D)[:, :, : geometry.padded_len])
                  for x, n in ((q32, QUERY_ROWS), (k32, BLOCK_N)))
    if recipe in ("fp8", "int8-qk"):
        return qn, kn, vn, "fp8"
    return qn, kn, v.to(torch.bfloat16).float(), "bf16"


def _smoothed_rows(q, k, geometry, L8):
    """Q and smoothed K (K minus its mean over tokens) in tile order, float32, zeros at padding rows."""
    from sta_search.kernels.geometry import to_tiles

    B, heads, S, D = q.shape

    def tile_rows(x):
        rows = torch.zeros(B, heads, L8, D)
        rows[:, :, : geometry.padded_len] = to_tiles(geometry, x.float())
        return rows.reshape(B * heads, L8, D)

    valid = torch.zeros(L8, dtype=torch.bool)
    valid[: geometry.padded_len] = geometry.key_valid()
    k_rows = torch.where(valid[None, :, None], tile_rows(k) - k.float().mean(dim=2).reshape(B * heads, 1, D), 0.0)
    return tile_rows(q), k_rows


def _int8_blocks(x, n):
    rows, L8, D = x.shape
    xb = x.reshape(rows, L8 // n, n, D)
    s = xb.abs().amax(dim=(2, 3), keepdim=True).clamp_min(1e-30) / 127.0
    return ((xb / s).round().clamp(-127, 127) * s).reshape(rows, L8, D)


def recipe_attention(config, recipe: str, record: list | None = None):
    """A `hook_attention` function: dense on the config's dense steps, else STA under the reference mask with the
    recipe's rounding. ``record``: the first sparse call's (q, k, v) are appended for the error table."""
    from sta_search.accelerate import fast_dense_attention
    from sta_search.kernels.geometry import Geometry
    from sta_search.kernels.sta.reference import sta_mask

    geometry = Geometry(tuple(config.canvas), tuple(config.tile))
    masks: dict = {}

    def attention(call):
        table = config.window_table(call.step)
        if table is None:
            return fast_dense_attention(call)
        windows = torch.as_tensor(table[call.layer])
        key = windows.numpy().tobytes()
        if key not in masks:
            masks[key] = sta_mask(geometry.canvas, geometry.tile, windows, 0, False, None, batch=1)
        if record is not None and not record:
            record.append((call.q.detach().clone(), call.k.detach().clone(), call.v.detach().clone(), windows))
        return sta_recipe(call.q, call.k, call.v, geometry, masks[key], recipe).to(call.q.dtype)

    return attention


def sta_recipe(q, k, v, geometry, mask, recipe: str):
    from sta_search.kernels.sta.gluon_fp8 import P_SCALE

    qn, kn, vn, p_format = fake_quantize(q, k, v, geometry, recipe)
    s = (qn @ kn.transpose(-1, -2)) * q.shape[-1] ** -0.5
    s = s.masked_fill(~mask, float("-inf"))
    p = torch.exp(s - s.amax(-1, keepdim=True))
    l = p.sum(-1, keepdim=True)
    if p_format == "fp8":
        p = (p * P_SCALE).to(torch.float8_e4m3fn).float() / P_SCALE
    elif p_format == "bf16":
        p = p.to(torch.bfloat16).float()
    return (p @ vn) / l


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--window", default="1,3,3")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    import quality
    from sta_search.kernels.geometry import Geometry
    from sta_search.kernels.sta.reference import sta_mask
    from sta_search.maskconfig import MaskConfig
    from sta_search.select import resolve_full_steps
    from sta_search.models import load_model

    from sta_search.models import resolve_model_path

    folder, _ = resolve_model_path("small")
    settings = quality.study_settings(argparse.Namespace(frames=8, height=64, width=96), folder)
    loaded = load_model("small", "cpu", torch.float32)
    canvas = tuple(int(c) for c in loaded.adapter.canvas(loaded.transformer, settings.height, settings.width,
                                                         settings.frames))
    steps = int(settings.steps)
    config = MaskConfig.uniform(loaded.info, canvas, (4, 4, 8), 0, steps, args.window,
                                dense_steps=tuple(range(resolve_full_steps(None, steps))))
    _, prompts = quality.prompts(0, args.prompts, kind="small")
    result = {"bench": "fp8_recipes_cpu", "utc": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "canvas": list(canvas),
              "tile": [4, 4, 8], "window": args.window, "density": config.density(), "steps": steps,
              "dense_steps": list(config.dense_steps), "prompts": prompts, "recipes": {}}
    videos = {}
    record: list = []
    one_call = None  # the first sparse call of the exact run, its mask and float64 output
    t0 = time.time()
    for recipe in args.recipes:
        frames = quality.generate_batch(loaded, settings, prompts, steps, 0,
                                        recipe_attention(config, recipe, record if recipe == "exact" else None))
        videos[recipe] = torch.from_numpy(frames).permute(0, 1, 4, 2, 3)
        row = {"seconds": round(time.time() - t0, 1)}
        if record and one_call is None:
            q, k, v, windows = record[0]
            geometry = Geometry(canvas, (4, 4, 8))
            mask = sta_mask(canvas, (4, 4, 8), windows, 0, False, None, batch=1)
            ref = sta_recipe(q.double(), k.double(), v.double(), geometry, mask, "exact")
            one_call = (q, k, v, geometry, mask, ref)
        if recipe != "exact" and "exact" in videos:
            metrics = quality.video_metrics(videos[recipe], videos["exact"])
            row.update({key: sum(m[key] for m in metrics) / len(metrics) for key in ("psnr_db", "ssim")})
            row["psnr_db_min"] = min(m["psnr_db"] for m in metrics)
            if one_call is not None:
                q, k, v, geometry, mask, ref = one_call
                out = sta_recipe(q, k, v, geometry, mask, recipe).double()
                row["attention_rel_rms_one_call"] = float((out - ref).norm() / ref.norm())
        result["recipes"][recipe] = row
        print(f"[{time.time() - t0:.0f} s] {recipe}: {json.dumps(row)}", flush=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
