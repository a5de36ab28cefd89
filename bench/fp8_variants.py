"""Which FP8 softmax changes make the FP8 STA kernel faster? (issue #18's FP8 target; GPU only, ~1.5 min on an H200)

    python3 bench/fp8_variants.py --out DIR [--rounds 5] [--iters 10]

Session 11 ruled out the exponentials, warpgroup turn-taking, QK^T latency and L2 as the FP8 floor (bench/NOTES.md)
and found the FP8 loop 44% longer than bf16's in SASS (635 against 442 instructions per key block and warp). Three
changes, each a switch in ``sta_search.kernels.sta.gluon_fp8`` (SASS per key block and warp, compiled on the CPU box):

- ``permuted-v`` (``DEFAULT_PERMUTED_V``): the pre-pass writes V^T's columns with bits 1-3 of the key position
  rotated, under which the QK^T accumulator's lane pattern is the PV operand's: P reaches the operand layout
  without shuffles (SHFL 24 -> 8, 586 instructions with the next one);
- ``scale-ahead`` (``DEFAULT_SCALE_AHEAD``): each key block's scale is loaded one block ahead (a global load per
  block that the QK^T wait may not hide);
- ``fast-p`` (``DEFAULT_FAST_P``, with permuted-v): P x 256 inside the exponent instead of a separate multiply
  (64 FMUL fewer; 538 instructions with the other two).

Per shape, in one process: cuDNN dense SDPA, the bf16 Gluon kernel, and the FP8 kernel alone (its pre-pass
excluded; each variant with its own pre-pass output) per variant, alternated over ``--rounds`` rounds of
``--iters`` timed calls, medians; plus each variant's relative RMS against the bf16 kernel and the default FP8.
Writes ``DIR/fp8-variants-<utc>.json``.
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

SHAPES = [("hunyuan-720p-333", (30, 48, 80), 24, (3, 3, 3), 0),
          ("hunyuan-720p-555", (30, 48, 80), 24, (5, 5, 5), 0),
          ("hunyuan-720p-333-text256", (30, 48, 80), 24, (3, 3, 3), 256)]
VARIANTS = {"fp8": {}, "fp8-scale-ahead": dict(DEFAULT_SCALE_AHEAD=True),
            "fp8-permuted-v": dict(DEFAULT_PERMUTED_V=True),
            "fp8-permuted-v-fast-p": dict(DEFAULT_PERMUTED_V=True, DEFAULT_FAST_P=True),
            "fp8-all": dict(DEFAULT_PERMUTED_V=True, DEFAULT_FAST_P=True, DEFAULT_SCALE_AHEAD=True)}
SWITCHES = ("DEFAULT_PERMUTED_V", "DEFAULT_FAST_P", "DEFAULT_SCALE_AHEAD")


def _set(gluon_fp8, switches: dict) -> None:
    for name in SWITCHES:
        setattr(gluon_fp8, name, bool(switches.get(name, False)))


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
    outs = [torch.empty_like(s[0]) for s in inputs]
    row: dict = {"canvas": list(canvas), "heads": heads, "head_dim": 128, "tile": [6, 8, 8], "windows": list(windows),
                 "text_len": text_len, "density": geometry.density(tuple(windows)), "variants": VARIANTS, "ms": {},
                 "rounds": {}, "rel_rms_vs_bf16": {}, "rel_rms_vs_fp8": {}}

    def rel(a, b):
        return float((a.float() - b.float()).norm() / b.float().norm())

    fns = {}
    for name, switches in VARIANTS.items():
        _set(gluon_fp8, switches)
        quantized = [gluon_fp8.quantize_fp8(*s, geometry, text_len, layout="natural") for s in inputs]

        def call(i, switches=switches, quantized=quantized):
            _set(gluon_fp8, switches)
            return gluon_fp8._run(inputs[i][0], None, None, geometry, table, text_len, None, None, layout="natural",
                                  text_first=False, stages=3, quantized=quantized[i], out=outs[i])
        fns[name] = call

    def bf16(i):
        return gluon_fwd.sta_gluon_natural(*inputs[i], geometry, table, text_len, False, None, None, out=outs[i])

    def cudnn(i):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return F.scaled_dot_product_attention(*inputs[i])

    reference = bf16(0).clone()
    default = fns["fp8"](0).clone()
    for name, fn in fns.items():
        out = fn(0)
        row["rel_rms_vs_bf16"][name] = rel(out, reference)
        row["rel_rms_vs_fp8"][name] = rel(out, default)
    fns["bf16-gluon"] = bf16
    per = {name: [] for name in fns}
    order = list(fns.items())
    for r in range(rounds):  # alternate the order, so drift (clocks, heat) hits every variant alike
        for name, fn in (order if r % 2 == 0 else order[::-1]):
            per[name].append(median_ms(fn, [[0], [1]], 2, iters)[0])
    _set(gluon_fp8, {})
    for name, values in per.items():
        row["rounds"][name] = [round(v, 4) for v in values]
        row["ms"][name] = statistics.median(values)
    try:
        row["ms"]["cudnn-dense"] = median_ms(cudnn, [[0], [1]], 1, 3)[0]
    except Exception as exc:  # noqa: BLE001
        row["errors"] = {"cudnn-dense": f"{type(exc).__name__}: {exc}"[:400]}
    ms = row["ms"]
    row["vs_bf16_gluon"] = {name: ms["bf16-gluon"] / ms[name] for name in VARIANTS}
    if "cudnn-dense" in ms:
        row["vs_cudnn"] = {name: ms["cudnn-dense"] / ms[name] for name in fns}
    del inputs, outs, fns
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

    result = {"bench": "fp8_variants", "utc": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
              "device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "shapes": {}}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"fp8-variants-{result['utc']}.json"
    for name, *spec in SHAPES:
        try:
            row = run_shape(*spec, args.rounds, args.iters)
        except Exception as exc:  # noqa: BLE001  (recorded; the next shape still runs)
            row = {"error": f"{type(exc).__name__}: {exc}"[:1500]}
        result["shapes"][name] = row
        print(name, json.dumps({k: row.get(k) for k in ("ms", "vs_bf16_gluon", "vs_cudnn", "rel_rms_vs_bf16",
                                                         "rel_rms_vs_fp8", "error")}), flush=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
