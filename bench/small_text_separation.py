"""How far apart `small`'s text encoder keeps the motion words, for several checkpoints and a fresh initialisation.

    python bench/small_text_separation.py [--folder NAME=FOLDER ...] [--scenes 8] [--out JSON]

For each encoder: the relative change of its output at the swapped word when the main object's motion word changes
(every pair of the four directions) and, for scale, when its colour changes (`small_caption_probe.text_separation`,
mean over held-out scenes). Session 21: a jointly trained encoder merges words the denoiser does not read yet, so
this is the cheap check of whether a run can still learn them (`train_small.py --freeze-text-encoder` keeps them
apart by construction). Always measured: ``init`` (a fresh encoder, torch seed 0) and the bundled `small`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", action="append", default=[], metavar="NAME=FOLDER",
                        help="a small-format pipeline folder (e.g. a train_small checkpoint) and its label")
    parser.add_argument("--scenes", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    for item in args.folder:
        if "=" not in item or not Path(item.split("=", 1)[1]).is_dir():
            parser.error(f"--folder wants NAME=FOLDER with an existing folder, got {item!r}")

    import train_small
    from small_caption_probe import text_separation
    from sta_search.small import data
    from sta_search.small.pipeline import build_components

    scenes = [data.parse_caption(c) for c in data.prompt_set(args.scenes, train_small.EVAL_SEED)]
    torch.manual_seed(0)
    encoders = {"init (torch seed 0)": build_components()["text_encoder"]}
    for name, folder in [("bundled small", None)] + [tuple(item.split("=", 1)) for item in args.folder]:
        encoders[name] = train_small.bundled_components("cpu", folder)["text_encoder"]
    result = {}
    for name, encoder in encoders.items():
        result[name] = text_separation(encoder.eval(), scenes)
        print(name, json.dumps(result[name]), flush=True)
    stamp = time.strftime("%Y%m%dT%H%MZ", time.gmtime())
    out = args.out or ROOT / "bench" / "results" / f"small-text-separation-{stamp}.json"
    out.write_text(json.dumps({"bench": "small_text_separation", "scenes": args.scenes, "torch": torch.__version__,
                               "folders": dict(item.split("=", 1) for item in args.folder),
                               "separation": result}, indent=1) + "\n")
    print("wrote", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
