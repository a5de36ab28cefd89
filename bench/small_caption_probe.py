"""Does the bundled `small` model listen to the motion word? A conditioning probe for issue #15 (CPU or GPU).

    python3 bench/small_caption_probe.py --scenes 6 --out FILE.json [--device cpu]

`small` follows colour but not motion (held-out captions: colour 1.0, motion 0.38-0.48) and more sampling steps do
not help (`small_sampling_steps.py`). Two explanations predict different things:

- the text does not reach the motion (weak conditioning): changing only the main object's motion word, with the
  same noise, barely changes where that object goes;
- the model cannot render the motion it is told (weak generation): the object's path does change with the word,
  but often the wrong way or not far enough, and worse in busy scenes than in plain ones.

For ``--scenes`` held-out scenes (`train_small.EVAL_SEED`), the main object's motion is swept over all five
motions with everything else fixed, from the same initial noise (one batch per motion, same seed), in two
conditions: as sampled (``full``: textured floor, camera moves, light changes as drawn) and ``plain`` (the same
objects on a plain floor, camera still, light steady). Per video the evaluator's checks of the main object and its
centroid displacement (first two to last two visible frames, pixels) are recorded; per condition the motion
accuracy per motion word, and how far the displacement moves with the word: the spread of the five motions' mean
displacements against the spread of displacements within one motion (across scenes); the same numbers for the
data generator's own videos of the same captions (``ground_truth_summary``) show what following the words looks
like. And the text encoder's side: how far
its output at the word moves when one motion word replaces another (``text_encoder_separation``; a colour swap for
scale).
Generates at the small canvas (8x64x96 px), 16 steps, guidance 4, float32; ~30 s a video on the 2-core CPU box.
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


def displacement(frames: np.ndarray, color: int) -> tuple[float, float] | None:
    """The main object's centroid motion (dx, dy) in pixels between its first two and last two visible frames."""
    from sta_search.small import evaluate

    labels = evaluate.color_labels(frames)
    mask = evaluate._denoise(labels == color)
    f, height, width = mask.shape
    scale = min(height, width) / 64.0
    visible = np.flatnonzero(mask.sum(axis=(1, 2)) >= evaluate.MIN_PIXELS * scale * scale)
    if len(visible) < 2:
        return None
    ys, xs = np.mgrid[:height, :width]
    cy = np.array([ys[mask[i]].mean() for i in visible])
    cx = np.array([xs[mask[i]].mean() for i in visible])
    head, tail = slice(0, min(2, len(visible) - 1)), slice(max(len(visible) - 2, 1), None)
    return float(cx[tail].mean() - cx[head].mean()), float(cy[tail].mean() - cy[head].mean())


def summarise(rows: list[dict], words) -> dict:
    """Accuracy per motion word; mean displacement per word; the spread of those means (how far the word moves
    the object) against the typical spread within one word (across scenes)."""
    per_word, means, within = {}, {}, []
    for word in words:
        mine = [r for r in rows if r["word"] == word]
        found = np.array([r["displacement"] for r in mine if r["displacement"] is not None])
        per_word[word] = float(np.mean([r["motion_ok"] for r in mine]))
        if len(found):
            means[word] = found.mean(0).round(2).tolist()
            within.append(float(np.sqrt(((found - found.mean(0)) ** 2).sum(1).mean())))
    centre = np.mean(list(means.values()), axis=0) if means else np.zeros(2)
    between = float(np.sqrt(np.mean([((np.array(m) - centre) ** 2).sum() for m in means.values()]))) if means else 0.0
    return {"motion_accuracy": float(np.mean([r["motion_ok"] for r in rows])),
            "color_accuracy": float(np.mean([r["color_ok"] for r in rows])),
            "motion_accuracy_per_word": per_word, "mean_displacement_px": means,
            "spread_between_words_px": round(between, 2),
            "spread_within_word_px": round(float(np.mean(within)), 2) if within else None}


def reference_summary(base, frames: int = 8, height: int = 64, width: int = 96) -> dict:
    """The same sweep on the data generator's own videos (what a model that follows the words would give)."""
    from sta_search.small import data, evaluate

    rows = []
    for motion in range(len(data.MOTIONS)):
        scenes = [s.with_main(motion=motion) for s in base]
        videos = data.render(scenes, frames=frames, height=height, width=width,
                             generator=torch.Generator().manual_seed(0))
        for scene, video in zip(scenes, evaluate.videos_to_frames(videos)):
            check = evaluate.check_video(video, scene.caption)[0]
            rows.append({"word": data.MOTIONS[motion], "motion_ok": check.motion, "color_ok": check.color,
                         "displacement": displacement(video, scene.main.color)})
    return summarise(rows, data.MOTIONS)


def text_separation(text_encoder, scenes) -> dict:
    """How far the text encoder's output at the swapped word moves when one word of the main object changes (relative
    to its norm, mean over ``scenes``): every pair of motion words of the same length, and a colour swap for scale."""
    from sta_search.small import data
    from sta_search.small.text import encode_words

    def encoded(captions):
        ids = encode_words(captions).to(next(text_encoder.parameters()).device)
        with torch.no_grad():
            out = text_encoder(ids, attention_mask=(ids != 0).long())
        return out[0] if isinstance(out, (tuple, list)) else getattr(out, "last_hidden_state", out)

    def moved(variants, i):
        out = []
        for scene in scenes:
            a, b = encoded([variants[0](scene).caption, variants[1](scene).caption])
            out.append(float((a[i] - b[i]).float().norm() / a[i].float().norm()))
        return round(float(np.mean(out)), 3)

    # token positions in "a big red triangle moves left, ...": the colour is 2, the word after "moves" 5
    result = {}
    for i, w1 in enumerate(data.MOTIONS[:4]):
        for w2 in data.MOTIONS[i + 1:4]:
            result[f"{w1} / {w2}"] = moved([lambda s, m=data.MOTIONS.index(w1): s.with_main(motion=m),
                                            lambda s, m=data.MOTIONS.index(w2): s.with_main(motion=m)], 5)
    recolour = [lambda s: s, lambda s: s.with_main(color=(s.main.color + 1) % len(data.COLORS))]
    result["colour swap"] = moved(recolour, 2)
    return result


def main(argv=None) -> int:
    import train_small
    from small_caption_loss import CANVAS
    from sta_search.small import data, evaluate

    args, components, scenes = train_small.probe_setup(__doc__, 6, argv)
    conditions = {"full": scenes,
                  "plain": [s.as_plain() for s in scenes]}
    result = {"bench": "small_caption_probe", "utc": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
              "model": str(args.folder or "bundled small"), "max_objects": args.max_objects,
              "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "torch": torch.__version__, "threads": torch.get_num_threads(), "canvas_px": list(CANVAS),
              "steps": args.steps, "guidance": args.guidance, "motions": list(data.MOTIONS), "conditions": {}}
    result["text_encoder_separation"] = text_separation(components["text_encoder"], scenes)
    print("text encoder output change at the swapped word:", result["text_encoder_separation"], flush=True)
    t0 = time.time()
    for name, base in conditions.items():
        rows = []
        for motion in range(len(data.MOTIONS)):
            captions = [scene.with_main(motion=motion).caption for scene in base]
            videos = train_small.generate(components, captions, CANVAS, args.steps, args.guidance, 0,
                                          batch=len(captions))  # one batch, one seed: the same noise per scene
            frames = evaluate.videos_to_frames(videos)
            for index, (caption, video) in enumerate(zip(captions, frames)):
                check = evaluate.check_video(video, caption)[0]
                rows.append({"scene": index, "word": data.MOTIONS[motion], "caption": caption,
                             "held_out": data.is_held_out(caption),
                             **{f"{k}_ok": v for k, v in dataclasses.asdict(check).items()},
                             "displacement": displacement(video, base[index].main.color)})
            print(f"[{time.time() - t0:.0f} s] {name} {data.MOTIONS[motion]}: motion ok "
                  f"{np.mean([r['motion_ok'] for r in rows[-len(captions):]]):.2f}", flush=True)
        result["conditions"][name] = {"summary": summarise(rows, data.MOTIONS),
                                      "ground_truth_summary": reference_summary(base), "videos": rows}
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
