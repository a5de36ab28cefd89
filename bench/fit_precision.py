"""Write the packaged 8-bit cost factors (``sta_search/calibration/precision-h200.json``) from one fp8_check run.

    python bench/fit_precision.py [--source bench/results/fp8-check-h200-20261202T182345Z.json] [--out FILE]

``select --speedup S --precision fp8|int8`` needs the 8-bit call's time as a function of density. Until a
``sta-search bench`` run with 8-bit rows at several densities is committed, the model is the bf16 line scaled by
the 8-bit kernel's measured speed relative to the bf16 kernel, plus its quantization pre-pass:

    relative_time_8bit(d) = kernel_ratio * (a + b * d) + prepass_ms / dense_ms

with ``kernel_ratio = kernel-only ms / bf16 Gluon ms`` and the pre-pass against cuDNN dense, all from the same run
(hunyuan-720p, (3,3,3)). The output records the device, the source run and every time used. No GPU needed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = ROOT / "bench" / "results" / "fp8-check-h200-20261202T182345Z.json"
DEFAULT_OUT = ROOT / "sta_search" / "calibration" / "precision-h200.json"


def precision_factors(doc: dict) -> dict:
    """``{precision: {kernel_ratio, prepass_relative, ...}}`` from an fp8_check JSON's timing step."""
    timing = doc["steps"]["timing_hunyuan_720p_333"]["result"]
    ms = timing["ms"]
    dense, bf16 = ms["cudnn-dense"], ms["gluon-bf16-natural"]
    factors = {}
    for precision in ("fp8", "int8"):
        kernel, prepass = ms[f"{precision}-kernel-only"], ms[f"{precision}-prepass"]
        factors[precision] = {"kernel_ratio": round(kernel / bf16, 6), "prepass_relative": round(prepass / dense, 6),
                              "kernel_ms": kernel, "prepass_ms": prepass, "whole_call_ms": ms[f"gluon-{precision}-natural"]}
    return {"shape": timing["shape"], "bf16_ms": bf16, "dense_ms": dense, "precisions": factors}


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    doc = json.loads(args.source.read_text(encoding="utf-8"))
    env = doc["environment"]
    record = {"schema": "sta-search/precision-cost/v1", "device": env["device"],
              "source": f"bench/results/{args.source.name}", "versions": {k: env.get(k) for k in ("torch", "triton")},
              "model": "relative_time_8bit(d) = kernel_ratio * (a + b * d) + prepass_relative",
              "fitted_by": "bench/fit_precision.py", **precision_factors(doc)}
    args.out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"{args.out}: " + ", ".join(f"{p} x{f['kernel_ratio']:.3f} + {f['prepass_relative']:.4f}"
                                     for p, f in record["precisions"].items()) + f" ({env['device']})")
    return args.out


if __name__ == "__main__":
    main()
