"""Does a video follow its caption? A caption-aware checker for the `small` model's grammar.

Extends the tiny model's checker to several objects, textured floors, camera moves and light changes.
Every pixel is labelled with the nearest palette colour (object colours and floor tones) along its
*colour ray*: the distance from the pixel to ``g * rgb`` for the best gain ``g`` in `GAIN_RANGE`, so a
dimmed or brightened object still matches its colour; a pixel is an object's only if that object colour
is the nearest and closer than `COLOR_TOLERANCE` (isolated pixels are dropped). Then, per captioned
object:

- ``color``: visible (>= `min_pixels`) in at least 3/4 of the frames;
- ``shape``: majority vote (a tie goes to the largest frame's label) over the frames where the object is largest
  (>= 70 % of its largest area, i.e. not occluded) of a classifier on its largest connected region: hollow centre -> ring, else box fill ratio ->
  square (~1), circle (~0.79), triangle (~0.5-0.65 with antialiased edges);
- ``motion``: the centroid (mean of the first two / last two visible frames) moves >= `MIN_TRAVEL`
  the captioned way and more along that axis than across it; bounces: goes up then comes down;
- ``size``: the largest area in the last quarter of the frames over that in the first quarter (largest,
  so a passing occluder does not count) is >= `GROW_RATIO` (grows), <= 1 / `GROW_RATIO` (shrinks) or
  within `STEADY_RATIO` either way (no size change; camera zooms change it by at most 1.15^2).

Headline scores are the main (first) object's; ``objects_*`` average over every captioned object.
On the data generator's own videos it scores >= 0.95 per attribute (a test checks that).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from .data import COLORS, FLOOR_COLORS, FLOOR_TONES, MOTIONS, OBJECT_RGB, SHAPES, SIZE_CHANGES, parse_caption

COLOR_TOLERANCE = 0.3
GAIN_RANGE = (0.55, 1.3)
MIN_TRAVEL = 6.0  # pixels at the reference size 64 (scaled with min(height, width) / 64)
MIN_PIXELS = 6.0  # likewise, scaled with the area
GROW_RATIO = 1.8
STEADY_RATIO = 1.5
ATTRIBUTES = ("color", "shape", "motion", "size")

_PALETTE = np.array([OBJECT_RGB[c] for c in COLORS] + [t for c in FLOOR_COLORS for t in FLOOR_TONES[c]])


@dataclass(frozen=True)
class ObjectCheck:
    color: bool
    shape: bool
    motion: bool
    size: bool

    @property
    def all(self) -> bool:
        return self.color and self.shape and self.motion and self.size


def color_labels(frames: np.ndarray) -> np.ndarray:
    """(F, H, W) palette index per pixel (object colours first, in `COLORS` order), -1 when no colour is near."""
    pix = frames.reshape(-1, 3).astype(np.float32)
    pal = _PALETTE.astype(np.float32)
    dot, norm2 = pix @ pal.T, (pal * pal).sum(1)  # (P, K), (K,)
    gain = np.clip(dot / norm2, *GAIN_RANGE)
    dist2 = (pix * pix).sum(1, keepdims=True) - 2 * gain * dot + gain * gain * norm2  # |pix - gain * pal|^2
    label = dist2.argmin(1)
    label[dist2[np.arange(len(pix)), label] >= COLOR_TOLERANCE ** 2] = -1
    return label.reshape(frames.shape[:-1])


def _denoise(mask: np.ndarray) -> np.ndarray:
    """Drop pixels with fewer than 3 of their 4 neighbours in the mask (thin lines: blended edges where
    two other colours meet, e.g. red over yellow looks orange)."""
    m = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
    neighbours = m[:, :-2, 1:-1].astype(int) + m[:, 2:, 1:-1] + m[:, 1:-1, :-2] + m[:, 1:-1, 2:]
    return mask & (neighbours >= 3)


def _dilate(mask: np.ndarray) -> np.ndarray:
    grown = mask.copy()
    grown[..., 1:, :] |= mask[..., :-1, :]
    grown[..., :-1, :] |= mask[..., 1:, :]
    grown[..., :, 1:] |= mask[..., :, :-1]
    grown[..., :, :-1] |= mask[..., :, 1:]
    return grown


def largest_component(mask: np.ndarray, max_components: int = 32) -> np.ndarray:
    """The largest 4-connected component of a single-frame (H, W) mask (by flood fill; only the first
    `max_components` components are tried, which bounds the time on noise)."""
    left, best = mask.copy(), np.zeros_like(mask)
    for _ in range(max_components):
        if not left.any():
            break
        region = np.zeros_like(mask)
        region.flat[np.flatnonzero(left)[0]] = True
        while True:
            grown = _dilate(region) & mask
            if (grown == region).all():
                break
            region = grown
        left &= ~region
        if region.sum() > best.sum():
            best = region
    return best


def classify_shape(mask: np.ndarray) -> str:
    """Shape name of a single-frame (H, W) mask (its largest component)."""
    mask = largest_component(mask)
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    h, w = y1 - y0, x1 - x0
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    core = mask[int(cy - 0.15 * h): int(np.ceil(cy + 0.15 * h)), int(cx - 0.15 * w): int(np.ceil(cx + 0.15 * w))]
    if core.size and core.mean() < 0.35:
        return "ring"
    fill = len(ys) / float(h * w)
    return "square" if fill > 0.89 else "circle" if fill > 0.71 else "triangle"


def majority_shape(votes: list[str]) -> str:
    """The most frequent label of ``votes``; a tie goes to the tied label voted first (callers order the votes
    largest frame first). Deterministic, unlike ``max(set(votes), key=votes.count)``, whose tie-break followed the
    process's string hashing (before session 27)."""
    return Counter(votes).most_common(1)[0][0]


def object_masks(labels: np.ndarray, color: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mask, outline, areas) of colour ``color`` in a label map (F, H, W): the denoised mask, the same with its
    one-pixel rim back (for shapes), and the mask's area per frame."""
    raw = labels == color
    mask = _denoise(raw)
    return mask, raw & _dilate(mask), mask.sum(axis=(1, 2)).astype(float)


def shape_voting_frames(areas: np.ndarray) -> np.ndarray:
    """The frames that vote on an object's shape: those where it covers >= 70 % of its largest area (not
    occluded), largest first, so that a tied vote goes to the largest frame's label (`majority_shape`)."""
    big = np.flatnonzero(areas >= 0.7 * areas.max())
    return big[np.argsort(-areas[big], kind="stable")]


def check_object(labels: np.ndarray, color: int, shape: int, motion: int, change: int) -> ObjectCheck:
    """Check one object (attribute indices as in `ObjectSpec`) against the label map of a video."""
    f, height, width = labels.shape
    scale = min(height, width) / 64.0
    mask, outline, areas = object_masks(labels, color)
    visible = areas >= MIN_PIXELS * scale * scale
    color_ok = visible.sum() >= max(1, round(0.75 * f))
    shape_ok = motion_ok = size_ok = False
    if not visible.any():
        return ObjectCheck(bool(color_ok), False, False, False)

    shape_ok = majority_shape([classify_shape(outline[i]) for i in shape_voting_frames(areas)]) == SHAPES[shape]

    idx = np.flatnonzero(visible)
    if len(idx) >= 2:
        ys, xs = np.mgrid[:height, :width]
        cy = np.array([ys[mask[i]].mean() for i in idx])
        cx = np.array([xs[mask[i]].mean() for i in idx])
        head, tail = slice(0, min(2, len(idx) - 1)), slice(max(len(idx) - 2, 1), None)
        dx, dy = cx[tail].mean() - cx[head].mean(), cy[tail].mean() - cy[head].mean()
        travel = MIN_TRAVEL * scale
        name = MOTIONS[motion]
        if name == "moves left":
            motion_ok = dx <= -travel and abs(dy) < abs(dx)
        elif name == "moves right":
            motion_ok = dx >= travel and abs(dy) < abs(dx)
        elif name == "moves up":
            motion_ok = dy <= -travel and abs(dx) < abs(dy)
        elif name == "moves down":
            motion_ok = dy >= travel and abs(dx) < abs(dy)
        elif name == "bounces":
            top = cy.min()
            motion_ok = bool(cy[0] - top >= travel / 2 and cy[-1] - top >= travel / 2) or bool(
                np.ptp(cy) >= travel and np.ptp(cx) < np.ptp(cy))

    quarter = max(1, f // 4)
    first, last = areas[:quarter].max(), areas[-quarter:].max()
    if first > 0 and last > 0:
        ratio = last / first
        kind = SIZE_CHANGES[change]
        size_ok = (ratio >= GROW_RATIO if kind == "grows" else ratio <= 1 / GROW_RATIO if kind == "shrinks"
                   else 1 / STEADY_RATIO < ratio < STEADY_RATIO)
    return ObjectCheck(bool(color_ok), bool(shape_ok), bool(motion_ok), bool(size_ok))


def check_video(frames: np.ndarray, caption: str) -> list[ObjectCheck]:
    """`frames`: (F, H, W, 3) in [0, 1] (the pipeline's "np" output for one prompt). One check per captioned
    object, the main object first."""
    scene = parse_caption(caption)
    labels = color_labels(np.asarray(frames))
    return [check_object(labels, o.color, o.shape, o.motion, o.change) for o in scene.objects]


def score(videos, captions: list[str]) -> dict:
    """Fraction of videos whose main object passes each check (and all of them), plus ``objects_*``: the
    same over every captioned object."""
    return summarize([check_video(v, c) for v, c in zip(videos, captions)])


def summarize(checks: list[list[ObjectCheck]]) -> dict:
    """`score` from already computed `check_video` results (one list per video, the main object first)."""
    main = [c[0] for c in checks]
    every = [o for c in checks for o in c]
    out: dict = {}
    for name in (*ATTRIBUTES, "all"):
        out[name] = sum(getattr(c, name) for c in main) / max(1, len(main))
    for name in (*ATTRIBUTES, "all"):
        out[f"objects_{name}"] = sum(getattr(c, name) for c in every) / max(1, len(every))
    out["videos"] = len(checks)
    return out


def videos_to_frames(videos) -> np.ndarray:
    """``(n, 3, F, H, W)`` tensors in [-1, 1] (data / pipeline "latent" output) -> ``(n, F, H, W, 3)`` in [0, 1]."""
    return ((videos.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 4, 1).cpu().numpy()
