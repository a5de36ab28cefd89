"""Is `small`'s motion failure a binding failure? Held-out scenes generated as captioned and with every object given
the main object's motion, and with the main object alone (CPU, ~10 minutes on the 2-core box).

    python3 bench/small_binding_probe.py --out FILE.json [--scenes 16]

The training scenes hold 2 or 3 objects, each with its own motion word, so the denoiser has to bind each word to
its object's colour and shape. If it reads the words but cannot bind them, the main object's motion passes far more
often when every object has the same motion ("uniform") than as captioned ("mixed"); if it does not read them at
all, both score alike. "alone" (the main object only: never seen in training) is reported for reference. Same
noise per scene in every condition (one batch, one seed), 8x64x96 px, evaluator `sta_search.small.evaluate`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))


def _mean_or_none(values):
    return float(np.mean(values)) if values else None


def main(argv=None) -> int:
    import train_small
    from small_caption_loss import CANVAS
    from sta_search.small import data, evaluate

    args, components, scenes = train_small.probe_setup(__doc__, 16, argv)
    uniform = [dataclasses.replace(s, objects=tuple(dataclasses.replace(o, motion=s.main.motion) for o in s.objects))
               for s in scenes]
    conditions = {"mixed": scenes, "uniform": uniform,
                  "alone": [dataclasses.replace(s, objects=s.objects[:1]) for s in scenes]}
    result = {"bench": "small_binding_probe", "utc": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
              "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "torch": torch.__version__, "threads": torch.get_num_threads(), "canvas_px": list(CANVAS),
              "steps": args.steps, "guidance": args.guidance, "scenes": args.scenes, "conditions": {}}
    t0 = time.time()
    for name, base in conditions.items():
        captions = [scene.caption for scene in base]
        videos = train_small.generate(components, captions, CANVAS, args.steps, args.guidance, 0,
                                      batch=len(captions))
        rows = []
        for caption, video in zip(captions, evaluate.videos_to_frames(videos)):
            checks = evaluate.check_video(video, caption)
            rows.append({"caption": caption, "main": dataclasses.asdict(checks[0]),
                         "objects_motion": float(np.mean([c.motion for c in checks]))})
        summary = {"main_motion": float(np.mean([r["main"]["motion"] for r in rows])),
                   "main_color": float(np.mean([r["main"]["color"] for r in rows])),
                   "objects_motion": float(np.mean([r["objects_motion"] for r in rows])),
                   "main_motion_by_word": {w: _mean_or_none([r["main"]["motion"] for r, s in zip(rows, base)
                                                             if data.MOTIONS[s.main.motion] == w])
                                           for w in data.MOTIONS}}
        result["conditions"][name] = {"summary": summary, "videos": rows}
        print(f"[{time.time() - t0:.0f} s] {name}: {json.dumps(summary)}", flush=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
