"""Does a video follow its caption? A crude, caption-aware checker for the tiny model's grammar.

The object is segmented by colour (pixels within `COLOR_TOLERANCE` of the caption's object colour);
then per caption attribute:

- ``color``: the object is visible (>= `MIN_PIXELS` pixels) in at least 6 of 8 frames;
- ``floor``: most non-object pixels are nearest to a tone of the caption's floor colour (each floor
  colour has two tones: plain, and the lighter second tone of stripes and checks);
- ``motion``: the centroid moves >= `MIN_TRAVEL` pixels the right way along the caption's axis
  (left/right/up/down), goes up and comes down (bounces), or the area changes by >= 30 % the right
  way (grows/shrinks), measured first visible frame to last.

Run on rendered training videos it scores ~1.0 (a test checks that), so it measures the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data import COLORS, FLOOR_COLORS, FLOOR_RGB, MOTIONS, OBJECT_RGB, parse_caption

COLOR_TOLERANCE = 0.3
MIN_PIXELS = 6
MIN_TRAVEL = 6.0


@dataclass(frozen=True)
class CaptionCheck:
    color: bool
    floor: bool
    motion: bool

    @property
    def all(self) -> bool:
        return self.color and self.floor and self.motion


def check_video(frames: np.ndarray, caption: str) -> CaptionCheck:
    """`frames`: (F, H, W, 3) in [0, 1] (the pipeline's "np" output for one prompt)."""
    scene = parse_caption(caption)
    obj = np.asarray(OBJECT_RGB[COLORS[scene.color]])
    mask = np.linalg.norm(frames - obj, axis=-1) < COLOR_TOLERANCE  # (F, H, W)
    areas = mask.sum(axis=(1, 2))
    visible = areas >= MIN_PIXELS
    color_ok = visible.sum() >= max(1, round(0.75 * len(frames)))

    rest = frames[~mask]
    floor_ok = False
    if len(rest):
        names = [n for n in FLOOR_COLORS for _ in range(2)]
        tones = np.array([t for n in FLOOR_COLORS for t in (FLOOR_RGB[n], np.asarray(FLOOR_RGB[n]) * 0.55 + 0.22)])
        nearest = np.linalg.norm(rest[:, None, :] - tones[None], axis=-1).argmin(axis=1)
        votes = np.bincount(nearest, minlength=len(tones))
        per_floor = {n: votes[2 * i] + votes[2 * i + 1] for i, n in enumerate(FLOOR_COLORS)}
        floor_ok = max(per_floor, key=per_floor.get) == FLOOR_COLORS[scene.floor]

    motion_ok = False
    idx = np.flatnonzero(visible)
    if len(idx) >= 2:
        ys, xs = np.mgrid[: frames.shape[1], : frames.shape[2]]
        cy = np.array([ys[mask[f]].mean() for f in idx])
        cx = np.array([xs[mask[f]].mean() for f in idx])
        a = areas[idx].astype(float)
        motion = MOTIONS[scene.motion]
        dx, dy = cx[-1] - cx[0], cy[-1] - cy[0]
        if motion == "moves left":
            motion_ok = dx <= -MIN_TRAVEL and abs(dy) < abs(dx)
        elif motion == "moves right":
            motion_ok = dx >= MIN_TRAVEL and abs(dy) < abs(dx)
        elif motion == "moves up":
            motion_ok = dy <= -MIN_TRAVEL and abs(dx) < abs(dy)
        elif motion == "moves down":
            motion_ok = dy >= MIN_TRAVEL and abs(dx) < abs(dy)
        elif motion == "bounces":
            top = cy.min()
            motion_ok = cy[0] - top >= MIN_TRAVEL / 2 and cy[-1] - top >= MIN_TRAVEL / 2 or (
                np.ptp(cy) >= MIN_TRAVEL and np.ptp(cx) < np.ptp(cy))
        elif motion == "grows":
            motion_ok = a[-1] >= 1.3 * a[0]
        elif motion == "shrinks":
            motion_ok = a[-1] <= a[0] / 1.3
    return CaptionCheck(bool(color_ok), bool(floor_ok), bool(motion_ok))


def score(videos: np.ndarray, captions: list[str]) -> dict[str, float]:
    """Fraction of videos passing each check (and all of them)."""
    checks = [check_video(v, c) for v, c in zip(videos, captions)]
    n = max(1, len(checks))
    return {
        "color": sum(c.color for c in checks) / n,
        "floor": sum(c.floor for c in checks) / n,
        "motion": sum(c.motion for c in checks) / n,
        "all": sum(c.all for c in checks) / n,
        "videos": len(checks),
    }


def main() -> None:
    """``python -m sta_search.tiny.evaluate [--prompts N] [--steps S] [--guidance G] [--folder DIR] [--device D]
    [--out FILE]``: generate N grammar prompts with the bundled model (or the tiny pipeline folder DIR) and score
    how well the videos follow their captions."""
    import argparse
    import json
    import time
    from collections import defaultdict

    import torch

    from . import load_tiny, recommended_settings
    from .data import prompt_set

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--folder", default=None)
    folder = pre.parse_known_args()[0].folder
    settings = recommended_settings(folder)
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--folder", default=None, help="tiny pipeline folder (default: the bundled weights)")
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--steps", type=int, default=settings.steps)
    ap.add_argument("--guidance", type=float, default=settings.guidance_scale)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = load_tiny(device, folder=args.folder)
    prompts = prompt_set(args.prompts, 777)
    start = time.perf_counter()
    videos = []
    for i in range(0, len(prompts), args.batch):
        g = torch.Generator().manual_seed(args.seed + i)
        videos.append(pipe(prompts[i: i + args.batch], height=settings.height, width=settings.width,
                           num_frames=settings.frames, num_inference_steps=args.steps,
                           guidance_scale=args.guidance, generator=g).frames)
    frames = np.concatenate(videos)
    result = score(frames, prompts)
    by_motion = defaultdict(list)
    for v, c in zip(frames, prompts):
        by_motion[MOTIONS[parse_caption(c).motion]].append(check_video(v, c).motion)
    result.update(folder=str(args.folder or "bundled"), device=device, steps=args.steps, guidance=args.guidance, seed=args.seed, seconds=round(time.perf_counter() - start, 1),
                  motion_by_kind={k: f"{sum(x)}/{len(x)}" for k, x in sorted(by_motion.items())})
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
