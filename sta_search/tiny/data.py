"""Procedural captioned videos for the bundled tiny model.

One shape of one colour and size moves, bounces, grows or shrinks over a plain, striped or checkered
floor; its caption comes from a small grammar::

    a {small|big} {colour} {shape} {motion} over a [striped|checkered] {floor colour} floor

e.g. ``"a big red circle moves left over a checkered blue floor"``. Scenes are sampled as integer
attribute tensors (cheap, CPU, seeded) and rendered as a batch with signed distance functions on any
device, so training draws fresh videos on the GPU every step. Pixel values are in [-1, 1],
shape ``(batch, 3, frames, height, width)``; everything is a pure function of the seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SIZES = ("small", "big")
COLORS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "white")
SHAPES = ("circle", "square", "triangle", "ring")
MOTIONS = ("moves left", "moves right", "moves up", "moves down", "bounces", "grows", "shrinks")
FLOOR_COLORS = ("black", "gray", "blue", "green", "brown", "purple")
PATTERNS = ("plain", "striped", "checkered")

OBJECT_RGB = {
    "red": (0.95, 0.15, 0.12),
    "orange": (1.0, 0.55, 0.05),
    "yellow": (0.98, 0.92, 0.15),
    "green": (0.2, 0.85, 0.25),
    "cyan": (0.15, 0.9, 0.95),
    "blue": (0.2, 0.35, 1.0),
    "purple": (0.7, 0.25, 0.95),
    "white": (0.97, 0.97, 0.97),
}
FLOOR_RGB = {
    "black": (0.04, 0.04, 0.05),
    "gray": (0.42, 0.42, 0.44),
    "blue": (0.08, 0.12, 0.42),
    "green": (0.07, 0.32, 0.1),
    "brown": (0.38, 0.22, 0.08),
    "purple": (0.3, 0.08, 0.36),
}

# Radius range in pixels at the reference resolution (64 x 64); scaled with min(height, width) / 64.
SIZE_RADIUS = {"small": (5.5, 7.5), "big": (10.0, 13.0)}
PATTERN_PERIOD = 16.0  # stripe / check period in pixels at 64 x 64


@dataclass(frozen=True)
class Scene:
    """One caption's attributes (indices into the vocab tuples above)."""

    size: int
    color: int
    shape: int
    motion: int
    floor: int
    pattern: int

    @property
    def caption(self) -> str:
        pattern = "" if PATTERNS[self.pattern] == "plain" else PATTERNS[self.pattern] + " "
        return (
            f"a {SIZES[self.size]} {COLORS[self.color]} {SHAPES[self.shape]} {MOTIONS[self.motion]}"
            f" over a {pattern}{FLOOR_COLORS[self.floor]} floor"
        )


def vocabulary() -> list[str]:
    """Every word the grammar can produce, in a fixed order (the tokenizer's vocabulary after specials)."""
    words: list[str] = []
    for group in (("a", "over", "floor"), SIZES, COLORS, SHAPES, MOTIONS, FLOOR_COLORS, PATTERNS[1:]):
        for phrase in group:
            for word in phrase.split():
                if word not in words:
                    words.append(word)
    return words


def parse_caption(text: str) -> Scene:
    """Inverse of `Scene.caption` (ValueError for text outside the grammar)."""
    words = text.lower().split()
    try:
        if words[0] != "a":
            raise ValueError
        size, color, shape = SIZES.index(words[1]), COLORS.index(words[2]), SHAPES.index(words[3])
        rest = words[4:]
        over = rest.index("over")
        motion = MOTIONS.index(" ".join(rest[:over]))
        tail = rest[over + 1 :]
        if tail[0] != "a" or tail[-1] != "floor":
            raise ValueError
        pattern = PATTERNS.index(tail[1]) if len(tail) == 4 else 0
        if len(tail) not in (3, 4) or (len(tail) == 4 and pattern == 0):
            raise ValueError
        floor = FLOOR_COLORS.index(tail[-2])
    except (ValueError, IndexError):
        raise ValueError(f"caption outside the tiny-model grammar: {text!r}") from None
    return Scene(size, color, shape, motion, floor, pattern)


def sample_scenes(count: int, generator: torch.Generator) -> list[Scene]:
    """`count` random scenes; the floor never has the object's colour name."""
    draws = [torch.randint(0, n, (count,), generator=generator) for n in (
        len(SIZES), len(COLORS), len(SHAPES), len(MOTIONS), len(FLOOR_COLORS), len(PATTERNS))]
    scenes = []
    for size, color, shape, motion, floor, pattern in zip(*(d.tolist() for d in draws)):
        if FLOOR_COLORS[floor] == COLORS[color]:
            floor = (floor + 1) % len(FLOOR_COLORS)
        scenes.append(Scene(size, color, shape, motion, floor, pattern))
    return scenes


def prompt_set(count: int, seed: int) -> list[str]:
    """`count` distinct captions, deterministic in `seed` (used for quick and held-out prompt lists)."""
    generator = torch.Generator().manual_seed(seed)
    captions: list[str] = []
    while len(captions) < count:
        for scene in sample_scenes(count, generator):
            if scene.caption not in captions and len(captions) < count:
                captions.append(scene.caption)
    return captions


def render(
    scenes: list[Scene],
    *,
    frames: int,
    height: int,
    width: int,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Render `scenes` as videos ``(len(scenes), 3, frames, height, width)`` in [-1, 1].

    The free parameters (start position, speed, bounce height, radius, stripe phase) are drawn from
    `generator` (a CPU generator), so the same generator state gives the same videos on any device.
    """
    n = len(scenes)
    scale = min(height, width) / 64.0
    attr = torch.tensor([[s.size, s.color, s.shape, s.motion, s.floor, s.pattern] for s in scenes])
    size, color, shape, motion, floor, pattern = attr.unbind(1)

    def uniform(low, high):
        return low + (high - low) * torch.rand(n, generator=generator)

    r_lo = torch.tensor([SIZE_RADIUS[s][0] for s in SIZES])[size] * scale
    r_hi = torch.tensor([SIZE_RADIUS[s][1] for s in SIZES])[size] * scale
    radius = r_lo + (r_hi - r_lo) * torch.rand(n, generator=generator)
    travel = uniform(0.35, 0.55) * min(height, width)
    u, v = torch.rand(n, generator=generator), torch.rand(n, generator=generator)
    bounce_height = uniform(0.25, 0.45) * height
    bounces = torch.randint(1, 3, (n,), generator=generator).float()
    phase = uniform(0.0, 1.0) * PATTERN_PERIOD * scale

    s = torch.linspace(0.0, 1.0, frames)[None, :]  # (1, F) progress through the clip
    margin = radius[:, None] + 1.0
    cx = margin + u[:, None] * (width - 2 * margin)
    cy = margin + v[:, None] * (height - 2 * margin)
    r = radius[:, None].expand(n, frames).clone()
    cx, cy = cx.expand(n, frames).clone(), cy.expand(n, frames).clone()

    name = [MOTIONS[m] for m in motion.tolist()]
    for i, m in enumerate(name):
        d = float(travel[i])
        lo_x, hi_x = float(margin[i]), width - float(margin[i])
        lo_y, hi_y = float(margin[i]), height - float(margin[i])
        d_x, d_y = min(d, hi_x - lo_x), min(d, hi_y - lo_y)
        if m == "moves left":
            start = lo_x + d_x + float(u[i]) * (hi_x - lo_x - d_x)
            cx[i] = start - d_x * s[0]
        elif m == "moves right":
            start = lo_x + float(u[i]) * (hi_x - lo_x - d_x)
            cx[i] = start + d_x * s[0]
        elif m == "moves up":
            start = lo_y + d_y + float(v[i]) * (hi_y - lo_y - d_y)
            cy[i] = start - d_y * s[0]
        elif m == "moves down":
            start = lo_y + float(v[i]) * (hi_y - lo_y - d_y)
            cy[i] = start + d_y * s[0]
        elif m == "bounces":
            ground = hi_y
            hop = min(float(bounce_height[i]), hi_y - lo_y)
            cy[i] = ground - hop * torch.sin(math.pi * float(bounces[i]) * s[0]).abs()
        elif m == "grows":
            r[i] = radius[i] * (0.45 + 0.75 * s[0])
        elif m == "shrinks":
            r[i] = radius[i] * (1.2 - 0.75 * s[0])

    dev = torch.device(device)
    cx, cy, r = cx.to(dev), cy.to(dev), r.to(dev)
    ys = torch.arange(height, device=dev, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(width, device=dev, dtype=torch.float32)[None, :] + 0.5
    dx = xs[None, None] - cx[..., None, None]  # (n, F, H, W)
    dy = ys[None, None] - cy[..., None, None]
    rr = r[..., None, None]
    dist = torch.sqrt(dx * dx + dy * dy)
    sdf_circle = dist - rr
    sdf_square = torch.maximum(dx.abs(), dy.abs()) - 0.85 * rr
    tri_r = 1.15 * rr  # circumradius; the triangle points up (image y grows downwards)
    c30 = math.cos(math.pi / 6)
    sdf_triangle = torch.maximum(torch.maximum(dy, c30 * dx - 0.5 * dy), -c30 * dx - 0.5 * dy) - 0.5 * tri_r
    sdf_ring = (dist - 0.72 * rr).abs() - 0.28 * rr
    sdfs = torch.stack([sdf_circle, sdf_square, sdf_triangle, sdf_ring], dim=0)
    sdf = sdfs[shape.to(dev), torch.arange(n, device=dev)]
    alpha = (0.5 - sdf).clamp(0.0, 1.0)[:, None]  # (n, 1, F, H, W), one-pixel antialiasing

    obj = torch.tensor([OBJECT_RGB[c] for c in COLORS], device=dev)[color.to(dev)]  # (n, 3)
    base = torch.tensor([FLOOR_RGB[c] for c in FLOOR_COLORS], device=dev)[floor.to(dev)]
    alt = base * 0.55 + 0.22  # the second tone of stripes and checks
    period = PATTERN_PERIOD * scale
    ph = phase.to(dev)[:, None, None]
    stripe = (torch.floor((ys[None] + ph) / (period / 2)) % 2).expand(n, height, width)
    check = (torch.floor((ys[None] + ph) / (period / 2)) + torch.floor((xs[None] + ph) / (period / 2))) % 2
    pat = pattern.to(dev)[:, None, None]
    second = torch.where(pat == 1, stripe, torch.where(pat == 2, check, torch.zeros_like(check)))  # (n, H, W)
    floor_rgb = base[:, :, None, None] * (1 - second[:, None]) + alt[:, :, None, None] * second[:, None]
    video = floor_rgb[:, :, None] * (1 - alpha) + obj[:, :, None, None, None] * alpha
    return video * 2.0 - 1.0


def sample_batch(
    batch: int, *, frames: int, height: int, width: int, generator: torch.Generator, device="cpu"
) -> tuple[torch.Tensor, list[str]]:
    """A fresh batch of ``(videos, captions)``, deterministic in the generator state."""
    scenes = sample_scenes(batch, generator)
    videos = render(scenes, frames=frames, height=height, width=width, generator=generator, device=device)
    return videos, [s.caption for s in scenes]
