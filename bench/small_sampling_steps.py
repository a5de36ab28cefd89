"""Does the bundled `small` follow its captions better with more sampling steps? (CPU or GPU)

    python3 bench/small_sampling_steps.py --prompts 16 --steps 16,48 --guidance 4 --out FILE.json

Generates the training script's held-out evaluation captions (`train_small.EVAL_SEED`) at ``--canvas`` (default the
small one, 8x64x96 px) with the bundled weights (or ``--folder``) in float32, at each number of sampling steps and guidance
scale and noise seed (``--seeds``), and scores them with `sta_search.small.evaluate` (colour, shape, motion, size of the main object;
``objects_*``: of every object; ``main_object``: the main object's checks per caption;
``shape_by_captioned_shape``: [passed, captions]). On the 2-core CPU box 16 captions take ~8 minutes at 16 steps
and ~25 at 48.
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
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--steps", default="16,48", help="comma-separated sampling step counts")
    parser.add_argument("--guidance", default="4", help="comma-separated guidance scales")
    parser.add_argument("--canvas", default="8x64x96",
                        help="FxHxW in pixels: 8x64x96 (the small canvas) or 16x96x160 (the large one)")
    parser.add_argument("--seeds", default="0",
                        help="comma-separated noise seeds, each a draw of its own (results key ...-seedN past 0); a batch of 8 "
                             "captions at offset i draws from seed + i, so keep seeds >= 48 apart (e.g. 0,1000,2000)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--folder", type=Path, default=None,
                        help="a small-format pipeline folder (e.g. an unpacked checkpoint) instead of the bundled one")
    args = parser.parse_args(argv)
    from sta_search.options import parse_numbers
    from sta_search.small import data, evaluate

    try:
        canvas = data.parse_pixel_canvas(args.canvas)
    except ValueError as exc:
        parser.error(f"--canvas: {exc}")
    try:
        step_counts = parse_numbers(args.steps, "--steps", int)
        guidances = parse_numbers(args.guidance, "--guidance")
        seeds = parse_numbers(args.seeds, "--seeds", int)
    except ValueError as exc:
        parser.error(str(exc))
    import train_small

    components = train_small.bundled_components(args.device, args.folder)
    prompts = data.prompt_set(args.prompts, train_small.EVAL_SEED)
    result = {"bench": "small_sampling_steps", "utc": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
              "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "torch": torch.__version__, "weights": str(args.folder or "bundled"),
              "threads": torch.get_num_threads(), "canvas_px": list(canvas),
              "prompts": prompts, "results": {}}
    for steps in step_counts:
        for guidance in guidances:
            for seed in seeds:
                t0 = time.time()
                videos = train_small.generate(components, prompts, canvas, steps, guidance, seed)
                checks = [evaluate.check_video(f, p) for f, p in zip(evaluate.videos_to_frames(videos), prompts)]
                scores = evaluate.summarize(checks)
                scores["seconds"] = round(time.time() - t0, 1)
                main = [c[0] for c in checks]
                scores["main_object"] = [{a: bool(getattr(c, a)) for a in evaluate.ATTRIBUTES} for c in main]
                by_shape: dict[str, list[bool]] = {}
                for caption, check in zip(prompts, main):
                    by_shape.setdefault(data.SHAPES[data.parse_caption(caption).main.shape], []).append(check.shape)
                scores["shape_by_captioned_shape"] = {k: [sum(v), len(v)] for k, v in sorted(by_shape.items())}
                key = f"steps{steps}-g{guidance:g}" + (f"-seed{seed}" if seed else "")
                result["results"][key] = scores
                print(key, json.dumps({k: v for k, v in scores.items() if k != "main_object"}), flush=True)
                args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
