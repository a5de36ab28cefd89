"""Does issuing each QK^T one key block ahead make the FP8 STA kernel faster? (issue #18's FP8 target; GPU only,
~1.5 minutes on an H200)

    python3 bench/fp8_ahead_check.py --out DIR [--rounds 5] [--iters 10]

Session 11 found the FP8 kernel's floor outside both the tensor core and L2: without any softmax it takes the same
1.11 us per key block as bf16, whose wgmmas alone need that long, while FP8's need half (bench/NOTES.md). In the
default loop a warpgroup waits for the QK^T of block j right after issuing it, so that wgmma's latency is exposed
every block. With ``gluon_fp8.DEFAULT_QK_AHEAD`` the QK^T of block j + 1 is issued before the softmax of block j,
so a QK^T is always in flight during a softmax; it holds one more ring slot, so deeper rings (4, 5 stages) are
timed too.

Per shape, in one process: cuDNN dense SDPA (the baseline), the bf16 Gluon kernel (the 1.5x target's reference),
and the FP8 kernel alone (pre-pass excluded, natural-order output) with and without the look-ahead at each ring
depth, alternated over ``--rounds`` rounds of ``--iters`` timed calls (two input sets rotated, medians). Outputs of
every FP8 variant are compared bit for bit with the default one. Shapes: hunyuan-720p (30x48x80, 24 heads, d=128)
at (3,3,3), at (5,5,5), and at (3,3,3) with 256 text tokens after the video.

Writes ``DIR/fp8-ahead-check-<utc>.json``: device, versions, per shape the medians (ms) and the ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = [
    # name, canvas, heads, windows, text tokens
    ("hunyuan-720p-333", (30, 48, 80), 24, (3, 3, 3), 0),
    ("hunyuan-720p-555", (30, 48, 80), 24, (5, 5, 5), 0),
    ("hunyuan-720p-333-text256", (30, 48, 80), 24, (3, 3, 3), 256),
]
VARIANTS = [("fp8", False, 3), ("fp8-stages4", False, 4), ("fp8-ahead", True, 3), ("fp8-ahead-stages4", True, 4),
            ("fp8-ahead-stages5", True, 5)]


def run_shape(canvas, heads, windows, text_len, rounds, iters) -> dict:
    import torch
    import torch.nn.functional as F

    from sta_search.benchmark import median_ms
    from sta_search.kernels import Geometry
    from sta_search.kernels.sta import gluon_fp8, gluon_fwd, normalize_windows

    geometry = Geometry(canvas, (6, 8, 8))
    table = normalize_windows(windows, heads, device="cuda")
    S = geometry.video_len + text_len
    inputs = [[torch.randn(1, heads, S, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3)] for _ in range(2)]
    quantized = [gluon_fp8.quantize_fp8(*s, geometry, text_len, layout="natural") for s in inputs]
    outs = [torch.empty_like(s[0]) for s in inputs]
    row: dict = {"canvas": list(canvas), "heads": heads, "head_dim": 128, "tile": [6, 8, 8], "windows": list(windows),
                 "text_len": text_len, "density": geometry.density(tuple(windows)), "ms": {}, "rounds": {}}

    def fp8(ahead, stages):
        def call(i):
            gluon_fp8.DEFAULT_QK_AHEAD = ahead
            return gluon_fp8._run(inputs[i][0], None, None, geometry, table, text_len, None, None, layout="natural",
                                  text_first=False, stages=stages, quantized=quantized[i], out=outs[i])
        return call

    def bf16(i):
        return gluon_fwd.sta_gluon_natural(*inputs[i], geometry, table, text_len, False, None, None, out=outs[i])

    def cudnn(i):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return F.scaled_dot_product_attention(*inputs[i])

    fns = {name: fp8(ahead, stages) for name, ahead, stages in VARIANTS}
    reference = fns["fp8"](0).clone()
    row["bit_identical_to_fp8"] = {name: bool(torch.equal(fn(0), reference)) for name, fn in fns.items()}
    fns["bf16-gluon"] = bf16
    per = {name: [] for name in fns}
    order = list(fns.items())
    for r in range(rounds):  # alternate the order, so drift (clocks, heat) hits every variant alike
        for name, fn in (order if r % 2 == 0 else order[::-1]):
            per[name].append(median_ms(fn, [[0], [1]], 2, iters)[0])
    gluon_fp8.DEFAULT_QK_AHEAD = False
    for name, values in per.items():
        row["rounds"][name] = [round(v, 4) for v in values]
        row["ms"][name] = statistics.median(values)
    try:
        row["ms"]["cudnn-dense"] = median_ms(cudnn, [[0], [1]], 1, 3)[0]
    except Exception as exc:  # noqa: BLE001
        row["errors"] = {"cudnn-dense": f"{type(exc).__name__}: {exc}"[:400]}
    ms = row["ms"]
    row["vs_bf16_gluon"] = {name: ms["bf16-gluon"] / ms[name] for name, _, _ in VARIANTS}
    if "cudnn-dense" in ms:
        row["vs_cudnn"] = {name: ms["cudnn-dense"] / ms[name] for name in fns}
    del inputs, quantized, outs
    torch.cuda.empty_cache()
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args(argv)

    import torch
    import triton

    result = {"bench": "fp8_ahead_check", "utc": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
              "device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "shapes": {}}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"fp8-ahead-check-{result['utc']}.json"
    for name, *spec in SHAPES:
        try:
            row = run_shape(*spec, args.rounds, args.iters)
        except Exception as exc:  # noqa: BLE001  (recorded; the next shape still runs)
            row = {"error": f"{type(exc).__name__}: {exc}"[:1500]}
        result["shapes"][name] = row
        print(name, json.dumps({k: row.get(k) for k in ("ms", "vs_bf16_gluon", "vs_cudnn", "bit_identical_to_fp8",
                                                         "error")}), flush=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
