"""Fit the packaged cost model (``sta_search/calibration/costmodel-h100.json``) from a committed kernel benchmark.

    python bench/fit_costmodel.py [--source bench/results/kernel-20261127T000553Z.json] [--out FILE]

``select --speedup`` turns a speedup into a density budget through ``time(STA) / time(dense) = a + b * density``.
The fit uses the rows of the kernel that generation runs: the Gluon kernel in place on natural-order
tokens (``gluon-natural``; ``--sta-row`` to change) against cuDNN dense attention (``cudnn-dense``), one
point per benchmark case (shape, windows, text). The output records the GPU, the source file, the rows,
the fitted ``a`` (overhead) and ``b`` (slope) and every point. No GPU needed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sta_search.costmodel import fit

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = ROOT / "bench" / "results" / "kernel-20261127T000553Z.json"
DEFAULT_OUT = ROOT / "sta_search" / "calibration" / "costmodel-h100.json"


def calibration_points(doc: dict, sta_row: str, dense_row: str) -> list[dict]:
    """One point per result of a ``sta-search bench`` JSON that has both rows."""
    points = []
    for result in doc["results"]:
        ms = result["ms"]
        if sta_row in ms and dense_row in ms:
            shape = result["shape"]
            windows = shape["windows"]
            points.append({
                "shape": shape["name"],
                "windows": "x".join(map(str, windows[0])) if len(windows) == 1 else f"mixed({len(windows)})",
                "text_len": shape["text_len"],
                "density": result["density"],
                "sta_ms": ms[sta_row],
                "dense_ms": ms[dense_row],
                "relative_time": ms[sta_row] / ms[dense_row],
            })
    return points


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--sta-row", default="gluon-natural")
    parser.add_argument("--dense-row", default="cudnn-dense")
    args = parser.parse_args(argv)
    doc = json.loads(args.source.read_text(encoding="utf-8"))
    points = calibration_points(doc, args.sta_row, args.dense_row)
    if len({p["density"] for p in points}) < 2:
        raise SystemExit(f"{args.source} has fewer than two densities with rows {args.sta_row} and {args.dense_row}")
    model = fit([(p["density"], p["relative_time"]) for p in points], source=args.source.name)
    env = doc["environment"]
    record = {
        "schema": "sta-search/costmodel/v1",
        "device": env["device"],
        "source": f"bench/results/{args.source.name}",
        "versions": {k: env.get(k) for k in ("torch", "triton", "cuda")},
        "sta_row": args.sta_row,
        "dense_row": args.dense_row,
        "model": "relative_time = overhead + slope * density (least squares over the points)",
        "overhead": round(model.overhead, 6),
        "slope": round(model.slope, 6),
        "fitted_by": "bench/fit_costmodel.py",
        "points": points,
    }
    args.out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"{args.out}: a={model.overhead:.4f}, b={model.slope:.4f} from {len(points)} points ({env['device']})")
    return args.out


if __name__ == "__main__":
    main()
