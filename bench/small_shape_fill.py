"""Why does the bundled `small` miss squares? The evaluator's shape classifier on generated vs ground-truth clips.

    python3 bench/small_shape_fill.py --prompts 48 --canvas 8x64x96 --out FILE.json   # ~14 min on the 2-core CPU

For the held-out evaluation captions (`train_small.EVAL_SEED`) whose main object is one of ``--shapes`` (square,
circle), generates each (bundled weights, float32, ``--guidance`` 4, ``--steps`` 16) and renders its ground truth (`data.render`, accel ease), then
records for the main object, in every frame the evaluator votes on (>= 70% of its largest area), the box fill ratio
of its largest region, the box's height and width in pixels and the classifier's label
(`sta_search.small.evaluate.classify_shape`: fill > 0.89 square, > 0.71 circle). The summary groups the captions by
(shape, captioned size): how many the majority vote gets right, and the median fill, generated vs ground truth.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from sta_search.small import data, evaluate  # noqa: E402


def main_object_votes(frames: np.ndarray, caption: str) -> list[tuple[float, int, int, str]]:
    """(fill ratio, box height, box width, label) of the caption's main object in each frame the evaluator votes on,
    largest frame first (the order the evaluator's tie-break uses)."""
    _, outline, areas = evaluate.object_masks(evaluate.color_labels(frames), data.parse_caption(caption).main.color)
    if areas.max() == 0:
        return []
    votes = []
    for i in evaluate.shape_voting_frames(areas):
        region = evaluate.largest_component(outline[i])
        ys, xs = np.nonzero(region)
        h, w = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
        votes.append((round(len(ys) / float(h * w), 3), h, w, evaluate.classify_shape(outline[i])))
    return votes


def summarize(rows: list[dict]) -> dict:
    groups: dict[str, dict] = {}
    for row in rows:
        key = f"{row['size']} {row['shape']}"
        g = groups.setdefault(key, {"captions": 0, "right_generated": 0, "right_ground_truth": 0,
                                    "fills_generated": [], "fills_ground_truth": []})
        g["captions"] += 1
        for kind in ("generated", "ground_truth"):
            labels = [v[3] for v in row[kind]]
            g[f"right_{kind}"] += bool(labels) and evaluate.majority_shape(labels) == row["shape"]
            g[f"fills_{kind}"] += [v[0] for v in row[kind]]
    for g in groups.values():
        for kind in ("generated", "ground_truth"):
            fills = g.pop(f"fills_{kind}")
            g[f"median_fill_{kind}"] = round(float(np.median(fills)), 3) if fills else None
    return dict(sorted(groups.items()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--canvas", default="8x64x96", help="FxHxW in pixels")
    parser.add_argument("--shapes", default="square,circle", help="comma-separated main-object shapes to keep")
    parser.add_argument("--steps", type=int, default=16, help="sampling steps")
    parser.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance scale")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        frames, height, width = data.parse_pixel_canvas(args.canvas)
    except ValueError as exc:
        parser.error(f"--canvas: {exc}")
    shapes = args.shapes.split(",")
    unknown = [s for s in shapes if s not in data.SHAPES]
    if unknown:
        parser.error(f"--shapes: unknown shape {unknown[0]!r} (one of {', '.join(data.SHAPES)})")

    import train_small

    t0 = time.time()
    prompts = [p for p in data.prompt_set(args.prompts, train_small.EVAL_SEED)
               if data.SHAPES[data.parse_caption(p).main.shape] in shapes]
    components = train_small.bundled_components(args.device)
    generated = evaluate.videos_to_frames(train_small.generate(components, prompts, (frames, height, width), args.steps,
                                                               args.guidance, 0))
    truth = evaluate.videos_to_frames(data.render([data.parse_caption(p) for p in prompts], frames=frames,
                                                  height=height, width=width,
                                                  generator=torch.Generator().manual_seed(0), ease="accel"))
    rows = []
    for caption, gen, real in zip(prompts, generated, truth):
        main = data.parse_caption(caption).main
        rows.append({"caption": caption, "shape": data.SHAPES[main.shape], "size": data.SIZES[main.size],
                     "generated": main_object_votes(gen, caption), "ground_truth": main_object_votes(real, caption)})
    result = {"bench": "small_shape_fill", "utc": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
              "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "torch": torch.__version__, "canvas_px": [frames, height, width], "steps": args.steps, "guidance": args.guidance,
              "square_threshold": "fill > 0.89 (evaluate.classify_shape)", "summary": summarize(rows),
              "seconds": round(time.time() - t0), "rows": rows}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["summary"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
