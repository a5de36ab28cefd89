"""Procedural captioned videos for the bundled `small` model: several objects, textured floors, camera
pans and zooms, occlusion and light changes, with captions from a grammar.

A scene has 2 or 3 objects (distinct colours; each with a size, shape, motion and optional size
change), a floor (colour and texture), a camera move and a light change. Its caption names every object
(the first one is the *main* object the evaluator scores), then the floor, camera and light::

    a big red circle moves left and grows, a small blue square bounces, on a checkered gray floor,
    the camera pans right, the light dims

Clauses for a still camera or steady light are left out. Objects live in world coordinates; the camera
maps them to the screen (pan: the camera centre moves; zoom: the scale changes), so the floor texture
slides and scales with the camera and objects overlap and occlude each other in a random depth order.
The main object is always in front (it occludes the others, they never hide it).
Magnitudes are chosen so that every object stays fully on screen and its captioned on-screen motion
holds despite the camera (pans and zooms are smaller than object travel), which `evaluate` relies on.

Scenes are sampled from a CPU generator (deterministic per seed) and rendered as a batch with signed
distance functions on any device. Videos are ``(batch, 3, frames, height, width)`` in [-1, 1].
A fixed ~2 % of all captions (`is_held_out`) is never drawn for training; `prompt_set` draws from it.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from dataclasses import dataclass

import torch

SIZES = ("small", "big")
COLORS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink", "white")
SHAPES = ("circle", "square", "triangle", "ring")
MOTIONS = ("moves left", "moves right", "moves up", "moves down", "bounces")
SIZE_CHANGES = ("", "grows", "shrinks")
FLOOR_COLORS = ("black", "gray", "navy", "olive", "brown", "maroon")
PATTERNS = ("plain", "striped", "checkered", "dotted", "wavy")
CAMERAS = ("", "pans left", "pans right", "pans up", "pans down", "zooms in", "zooms out")
LIGHTS = ("", "dims", "brightens", "flickers")

OBJECT_RGB = {
    "red": (0.95, 0.15, 0.12),
    "orange": (1.0, 0.55, 0.05),
    "yellow": (0.98, 0.92, 0.15),
    "green": (0.2, 0.85, 0.25),
    "cyan": (0.15, 0.9, 0.95),
    "blue": (0.2, 0.35, 1.0),
    "purple": (0.7, 0.25, 0.95),
    "pink": (1.0, 0.5, 0.78),
    "white": (0.97, 0.97, 0.97),
}
# Two tones per floor (base, second tone of textures); all dark, so no floor pixel looks like an object.
FLOOR_TONES = {
    "black": ((0.04, 0.04, 0.05), (0.16, 0.16, 0.18)),
    "gray": ((0.3, 0.3, 0.32), (0.2, 0.2, 0.22)),
    "navy": ((0.06, 0.09, 0.33), (0.14, 0.18, 0.42)),
    "olive": ((0.26, 0.27, 0.07), (0.17, 0.18, 0.04)),
    "brown": ((0.33, 0.19, 0.08), (0.22, 0.12, 0.05)),
    "maroon": ((0.3, 0.05, 0.1), (0.4, 0.1, 0.16)),
}

# World radius ranges in pixels at the reference size min(height, width) = 64 (scaled with the canvas).
SIZE_RADIUS = {"small": (4.5, 6.0), "big": (7.5, 9.5)}
GROWTH = (0.55, 1.3)  # radius factor at the start / end of "grows" (reversed for "shrinks")
PAN = (0.06, 0.1)  # pan distance as a fraction of min(height, width)
ZOOM = (1.08, 1.15)  # zoom factor reached by "zooms in" (started from by "zooms out")
TRAVEL = (0.35, 0.55)  # object travel as a fraction of min(height, width), clamped to the safe box
PATTERN_PERIOD = 16.0  # texture period in pixels at the reference size
LIGHT_GAIN = {"dims": (1.0, 0.65), "brightens": (0.7, 1.1)}
HOLDOUT_MODULUS = 50
MAX_OBJECTS = (1, 2, 3)  # objects per scene: 2 or 3 by default; fewer for a curriculum (train_small --max-objects)


@dataclass(frozen=True)
class ObjectSpec:
    """One object's captioned attributes (indices into the vocab tuples)."""

    size: int
    color: int
    shape: int
    motion: int
    change: int = 0

    @property
    def phrase(self) -> str:
        change = f" and {SIZE_CHANGES[self.change]}" if self.change else ""
        return f"a {SIZES[self.size]} {COLORS[self.color]} {SHAPES[self.shape]} {MOTIONS[self.motion]}{change}"


@dataclass(frozen=True)
class Scene:
    """A caption's attributes: objects (the first is the main one), floor, texture, camera, light."""

    objects: tuple[ObjectSpec, ...]
    floor: int
    pattern: int
    camera: int = 0
    light: int = 0

    @property
    def main(self) -> ObjectSpec:
        return self.objects[0]

    def as_plain(self) -> "Scene":
        """This scene on an untextured floor, with a still camera and a steady light."""
        return dataclasses.replace(self, pattern=0, camera=0, light=0)

    def with_main(self, **changes) -> "Scene":
        """This scene with attributes of its main object replaced (``motion=...``, ``color=...``)."""
        return dataclasses.replace(self, objects=(dataclasses.replace(self.main, **changes), *self.objects[1:]))

    @property
    def caption(self) -> str:
        pattern = "" if self.pattern == 0 else PATTERNS[self.pattern] + " "
        clauses = [o.phrase for o in self.objects] + [f"on a {pattern}{FLOOR_COLORS[self.floor]} floor"]
        if self.camera:
            clauses.append(f"the camera {CAMERAS[self.camera]}")
        if self.light:
            clauses.append(f"the light {LIGHTS[self.light]}")
        return ", ".join(clauses)


def parse_pixel_canvas(text: str) -> tuple[int, int, int]:
    """``"FxHxW"`` in pixels (e.g. ``16x96x160``) -> (frames, height, width); ValueError naming ``text`` unless it
    is three positive integers."""
    try:
        canvas = tuple(int(n) for n in str(text).lower().split("x"))
    except ValueError:
        canvas = ()
    if len(canvas) != 3 or min(canvas) <= 0:
        raise ValueError(f"canvas {text!r}: expected FxHxW in pixels, e.g. 16x96x160")
    return canvas  # type: ignore[return-value]


def vocabulary() -> list[str]:
    """Every token the grammar produces (words and the comma), in a fixed order."""
    words: list[str] = []
    groups = ((",", "a", "and", "on", "floor", "the", "camera", "light"), SIZES, COLORS, SHAPES, MOTIONS,
              SIZE_CHANGES, FLOOR_COLORS, PATTERNS[1:], CAMERAS, LIGHTS)
    for group in groups:
        for phrase in group:
            for word in phrase.split():
                if word not in words:
                    words.append(word)
    return words


def _index(options: tuple[str, ...], phrase: str) -> int:
    return options.index(phrase)


def parse_caption(text: str) -> Scene:
    """Inverse of `Scene.caption` (ValueError for text outside the grammar)."""
    try:
        clauses = [c.strip().lower().split() for c in text.split(",")]
        objects, floor, pattern, camera, light = [], None, 0, 0, 0
        for words in clauses:
            if words[:2] == ["on", "a"] and words[-1] == "floor" and len(words) in (4, 5):
                floor = _index(FLOOR_COLORS, words[-2])
                pattern = _index(PATTERNS, words[2]) if len(words) == 5 else 0
                if len(words) == 5 and pattern == 0:
                    raise ValueError
            elif words[:2] == ["the", "camera"]:
                camera = _index(CAMERAS, " ".join(words[2:]))
            elif words[:2] == ["the", "light"]:
                light = _index(LIGHTS, " ".join(words[2:]))
            elif words[0] == "a" and floor is None:
                size, color, shape = _index(SIZES, words[1]), _index(COLORS, words[2]), _index(SHAPES, words[3])
                rest = " ".join(words[4:])
                motion_text, _, change_text = rest.partition(" and ")
                change = _index(SIZE_CHANGES, change_text) if change_text else 0
                if change_text and change == 0:
                    raise ValueError
                objects.append(ObjectSpec(size, color, shape, _index(MOTIONS, motion_text), change))
            else:
                raise ValueError
        if not objects or floor is None:
            raise ValueError
    except (ValueError, IndexError):
        raise ValueError(f"caption outside the small-model grammar: {text!r}") from None
    return Scene(tuple(objects), floor, pattern, camera, light)


_REVERSED_MOTION = {"moves left": "moves right", "moves right": "moves left", "moves up": "moves down",
                    "moves down": "moves up", "bounces": "bounces"}
_REVERSED_CAMERA = {"": "", "pans left": "pans right", "pans right": "pans left", "pans up": "pans down",
                    "pans down": "pans up", "zooms in": "zooms out", "zooms out": "zooms in"}
_REVERSED_LIGHT = {"": "", "dims": "brightens", "brightens": "dims", "flickers": "flickers"}


def reversed_scene(scene: Scene) -> Scene:
    """The scene whose video is ``scene``'s played backwards: motions, size changes, pans and zooms swapped, light
    dims <-> brightens (their gain ranges differ slightly: 1.0 -> 0.65 against 0.7 -> 1.1). Bounces and flicker are
    their own reversal."""
    objects = tuple(ObjectSpec(o.size, o.color, o.shape, MOTIONS.index(_REVERSED_MOTION[MOTIONS[o.motion]]),
                               {0: 0, 1: 2, 2: 1}[o.change]) for o in scene.objects)
    return Scene(objects, scene.floor, scene.pattern, CAMERAS.index(_REVERSED_CAMERA[CAMERAS[scene.camera]]),
                 LIGHTS.index(_REVERSED_LIGHT[LIGHTS[scene.light]]))


def is_held_out(caption: str) -> bool:
    """True for the fixed ~2 % of captions kept out of training (evaluation prompts come from these)."""
    return zlib.crc32(caption.encode()) % HOLDOUT_MODULUS == 0


def _choice(weights: list[float], generator: torch.Generator) -> int:
    return int(torch.multinomial(torch.tensor(weights, dtype=torch.float), 1, generator=generator))


def sample_scene(generator: torch.Generator, max_objects: int = 3, plain: bool = False) -> Scene:
    """One random scene: 2 or 3 objects of distinct colours (at most ``max_objects``, drawn from the same random
    stream), camera still in 30 % and light steady in 45 %; ``plain``: always an untextured floor, a still camera and
    a steady light (the direction toy's setting, for a curriculum or an ablation)."""
    if max_objects not in MAX_OBJECTS:
        raise ValueError(f"max_objects must be one of {MAX_OBJECTS}, got {max_objects!r}")
    count = min(2 + int(torch.randint(0, 2, (1,), generator=generator)), max_objects)
    colors = torch.randperm(len(COLORS), generator=generator)[:count].tolist()
    objects = []
    for color in colors:
        size, shape, motion = (int(torch.randint(0, n, (1,), generator=generator))
                               for n in (len(SIZES), len(SHAPES), len(MOTIONS)))
        change = _choice([0.5, 0.25, 0.25], generator)
        objects.append(ObjectSpec(size, color, shape, motion, change))
    floor = int(torch.randint(0, len(FLOOR_COLORS), (1,), generator=generator))
    pattern = int(torch.randint(0, len(PATTERNS), (1,), generator=generator))
    camera = _choice([0.3] + [0.7 / (len(CAMERAS) - 1)] * (len(CAMERAS) - 1), generator)
    light = _choice([0.45] + [0.55 / (len(LIGHTS) - 1)] * (len(LIGHTS) - 1), generator)
    scene = Scene(tuple(objects), floor, pattern, camera, light)
    return scene.as_plain() if plain else scene


def sample_scenes(count: int, generator: torch.Generator, held_out: bool | None = False,
                  max_objects: int = 3, plain: bool = False) -> list[Scene]:
    """`count` random scenes (`sample_scene`). ``held_out=False`` (training) never returns a held-out caption, ``True``
    returns only held-out ones, ``None`` does not filter."""
    scenes = []
    while len(scenes) < count:
        scene = sample_scene(generator, max_objects, plain)
        if held_out is None or is_held_out(scene.caption) == held_out:
            scenes.append(scene)
    return scenes


def prompt_set(count: int, seed: int, max_objects: int = 3, plain: bool = False) -> list[str]:
    """`count` distinct held-out captions, deterministic in `seed` (evaluation prompts)."""
    generator = torch.Generator().manual_seed(seed)
    captions: list[str] = []
    while len(captions) < count:
        caption = sample_scenes(1, generator, held_out=True, max_objects=max_objects, plain=plain)[0].caption
        if caption not in captions:
            captions.append(caption)
    return captions


def _object_sdf(shape: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Signed distance (world pixels) of each object's shape; `shape` (n,), the rest (n, F, H, W)."""
    dist = torch.sqrt(dx * dx + dy * dy)
    c30 = math.cos(math.pi / 6)
    sdfs = (
        dist - r,  # circle
        torch.maximum(dx.abs(), dy.abs()) - 0.85 * r,  # square
        torch.maximum(torch.maximum(dy, c30 * dx - 0.5 * dy), -c30 * dx - 0.5 * dy) - 0.575 * r,  # triangle, up
        (dist - 0.72 * r).abs() - 0.28 * r,  # ring
    )
    out = sdfs[0]
    for i in range(1, len(sdfs)):
        out = torch.where((shape == i).view(-1, 1, 1, 1), sdfs[i], out)
    return out


def _floor_second_tone(pattern, wx, wy, period, phase, angle) -> torch.Tensor:
    """Weight (n, F, H, W) in [0, 1] of the floor's second tone at world coordinates (wx, wy)."""
    view = (-1, 1, 1, 1)
    ph, cos, sin = phase.view(view), torch.cos(angle).view(view), torch.sin(angle).view(view)
    u, v = wx * cos + wy * sin + ph, -wx * sin + wy * cos + ph
    half = period / 2
    stripes = torch.floor(u / half) % 2
    checks = (torch.floor(u / half) + torch.floor(v / half)) % 2
    du, dv = (u / period) % 1.0 - 0.5, (v / period) % 1.0 - 0.5
    dots = (0.5 - (torch.sqrt(du * du + dv * dv) * period - 0.22 * period)).clamp(0.0, 1.0)
    waves = 0.5 + 0.5 * torch.sin(2 * math.pi * u / period + 1.5 * torch.sin(2 * math.pi * v / (2 * period)))
    p = pattern.view(view)
    return torch.where(p == 1, stripes, torch.where(p == 2, checks, torch.where(
        p == 3, dots, torch.where(p == 4, waves, torch.zeros_like(u)))))


EASES = {"linear": lambda s: s, "accel": lambda s: s * s}
"""How a monotone change progresses over a clip: ``linear`` (steady; the default, every bundled model's data) or
``accel`` (from rest, speeding up: played backwards, such a clip slows to a stop, so it has an arrow of time)."""


def _trajectories(scenes, frames, height, width, generator, ease="linear"):
    """Per-scene camera (cx, cy, zoom, gain) and per-object (x, y, r) tracks, CPU tensors. ``ease``: how the monotone
    changes (motions, size changes, pans, zooms, dimming and brightening) progress over the clip."""
    n, k = len(scenes), max(len(s.objects) for s in scenes)
    side = min(height, width)
    scale = side / 64.0
    clock = torch.linspace(0.0, 1.0, frames)
    s = EASES[ease](clock)

    def uniform(low, high):
        return low + (high - low) * float(torch.rand((), generator=generator))

    cam_x = torch.full((n, frames), width / 2)
    cam_y = torch.full((n, frames), height / 2)
    zoom = torch.ones(n, frames)
    gain = torch.ones(n, frames)
    xs, ys, rs = torch.zeros(n, k, frames), torch.zeros(n, k, frames), torch.zeros(n, k, frames)
    for i, scene in enumerate(scenes):
        camera, pan = CAMERAS[scene.camera], uniform(*PAN) * side
        if camera.startswith("pans"):
            sign = -1.0 if camera.endswith(("left", "up")) else 1.0
            target = cam_x if camera.endswith(("left", "right")) else cam_y
            target[i] += sign * pan * s
        elif camera.startswith("zooms"):
            z = uniform(*ZOOM)
            zoom[i] = 1 + (z - 1) * (s if camera == "zooms in" else 1 - s)
        light = LIGHTS[scene.light]
        if light in LIGHT_GAIN:
            a, b = LIGHT_GAIN[light]
            gain[i] = a + (b - a) * s
        elif light == "flickers":
            gain[i] = 0.82 + 0.18 * torch.cos(2 * math.pi * uniform(2.0, 3.0) * clock + uniform(0, 2 * math.pi))
        # World box visible in every frame (pans and zooms are monotone: first and last frame suffice).
        half_w = width / 2 / zoom[i, [0, -1]]
        half_h = height / 2 / zoom[i, [0, -1]]
        box_x = (float((cam_x[i, [0, -1]] - half_w).max()), float((cam_x[i, [0, -1]] + half_w).min()))
        box_y = (float((cam_y[i, [0, -1]] - half_h).max()), float((cam_y[i, [0, -1]] + half_h).min()))
        for j, obj in enumerate(scene.objects):
            low, high = SIZE_RADIUS[SIZES[obj.size]]
            radius = uniform(low, high) * scale
            change = SIZE_CHANGES[obj.change]
            factor = {"": torch.ones(frames), "grows": GROWTH[0] + (GROWTH[1] - GROWTH[0]) * s,
                      "shrinks": GROWTH[1] - (GROWTH[1] - GROWTH[0]) * s}[change]
            rs[i, j] = radius * factor
            margin = radius * float(factor.max()) + 1.0
            lo_x, hi_x = box_x[0] + margin, box_x[1] - margin
            lo_y, hi_y = box_y[0] + margin, box_y[1] - margin
            u, v = uniform(0, 1), uniform(0, 1)
            xs[i, j] = lo_x + u * (hi_x - lo_x)
            ys[i, j] = lo_y + v * (hi_y - lo_y)
            travel = uniform(*TRAVEL) * side
            motion = MOTIONS[obj.motion]
            if motion in ("moves left", "moves right"):
                d = min(travel, hi_x - lo_x)
                start = lo_x + u * (hi_x - lo_x - d)
                xs[i, j] = start + d * s if motion == "moves right" else start + d - d * s
            elif motion in ("moves up", "moves down"):
                d = min(travel, hi_y - lo_y)
                start = lo_y + v * (hi_y - lo_y - d)
                ys[i, j] = start + d * s if motion == "moves down" else start + d - d * s
            else:  # bounces: hops up from the bottom of the safe box, once or twice
                hop = min(uniform(0.3, 0.45) * height, hi_y - lo_y)
                hops = 1 + int(torch.randint(0, 2, (1,), generator=generator))
                ys[i, j] = hi_y - hop * torch.sin(math.pi * hops * clock).abs()
    return cam_x, cam_y, zoom, gain, xs, ys, rs


def render(scenes: list[Scene], *, frames: int, height: int, width: int, generator: torch.Generator,
           device: torch.device | str = "cpu", ease: str = "linear") -> torch.Tensor:
    """Render `scenes` as videos ``(len(scenes), 3, frames, height, width)`` in [-1, 1]; ``ease`` names the
    progress of every monotone change (`EASES`).

    Free parameters (positions, speeds, radii, camera and light amounts, texture phase and angle, depth
    order) come from `generator` (CPU), so the same generator state gives the same videos on any device.
    """
    n, k = len(scenes), max(len(s.objects) for s in scenes)
    dev = torch.device(device)
    cam_x, cam_y, zoom, gain, xs, ys, rs = (t.to(dev) for t in _trajectories(scenes, frames, height, width, generator,
                                                                            ease))
    phase = (torch.rand(n, generator=generator) * PATTERN_PERIOD).to(dev)
    angle = (torch.randint(0, 4, (n,), generator=generator).float() * math.pi / 4).to(dev)
    # Back to front: the others in a random order, the main object (slot 0) always in front.
    depth = torch.argsort(torch.rand(n, k, generator=generator) - (torch.arange(k) == 0) * 2.0, dim=1).flip(1)
    present = torch.tensor([[j < len(s.objects) for j in range(k)] for s in scenes], device=dev)

    def attr(name):
        return torch.tensor([[getattr(s.objects[j], name) if j < len(s.objects) else 0 for j in range(k)]
                             for s in scenes], device=dev)

    shape, color = attr("shape"), attr("color")
    py = torch.arange(height, device=dev, dtype=torch.float32).view(1, 1, -1, 1) + 0.5
    px = torch.arange(width, device=dev, dtype=torch.float32).view(1, 1, 1, -1) + 0.5
    z = zoom[..., None, None]
    wx = (px - width / 2) / z + cam_x[..., None, None]  # (n, F, H, W) world coordinates of each pixel
    wy = (py - height / 2) / z + cam_y[..., None, None]

    floor = torch.tensor([[s.floor for s in scenes]], device=dev).view(-1)
    tones = torch.tensor([FLOOR_TONES[c] for c in FLOOR_COLORS], device=dev)[floor]  # (n, 2, 3)
    pattern = torch.tensor([s.pattern for s in scenes], device=dev)
    second = _floor_second_tone(pattern, wx, wy, PATTERN_PERIOD * min(height, width) / 64.0, phase, angle)
    second = second[:, None]  # (n, 1, F, H, W)
    video = tones[:, 0, :, None, None, None] * (1 - second) + tones[:, 1, :, None, None, None] * second

    palette = torch.tensor([OBJECT_RGB[c] for c in COLORS], device=dev)
    rows = torch.arange(n, device=dev)
    for layer in range(k):
        j = depth[:, layer].to(dev)
        dx = wx - xs[rows, j][..., None, None]
        dy = wy - ys[rows, j][..., None, None]
        sdf = _object_sdf(shape[rows, j], dx, dy, rs[rows, j][..., None, None])
        alpha = (0.5 - sdf * z).clamp(0.0, 1.0) * present[rows, j].view(-1, 1, 1, 1)
        rgb = palette[color[rows, j]]  # (n, 3)
        video = video * (1 - alpha[:, None]) + rgb[:, :, None, None, None] * alpha[:, None]
    video = (video * gain[:, None, :, None, None]).clamp(0.0, 1.0)
    return video * 2.0 - 1.0


def sample_batch(batch: int, *, frames: int, height: int, width: int, generator: torch.Generator, device="cpu",
                 held_out: bool | None = False, reversal_pairs: bool = False,
                 ease: str = "linear", max_objects: int = 3, plain: bool = False) -> tuple[torch.Tensor, list[str]]:
    """A fresh batch of ``(videos, captions)`` (training captions by default), deterministic in the generator.

    ``reversal_pairs``: the second half of the batch is the first half played backwards, captioned by
    `reversed_scene` (a reversed caption that is held out is replaced by its scene's own, with its video forwards):
    the same pixels in both orders with opposite words, so only the caption tells the model which way time runs."""
    scenes = sample_scenes(batch - batch // 2 if reversal_pairs else batch, generator, held_out, max_objects, plain)
    videos = render(scenes, frames=frames, height=height, width=width, generator=generator, device=device, ease=ease)
    captions = [s.caption for s in scenes]
    if not reversal_pairs:
        return videos, captions
    backwards, back_captions = [], []
    for video, scene in list(zip(videos, scenes))[: batch // 2]:
        flipped = reversed_scene(scene)
        allowed = held_out is None or is_held_out(flipped.caption) == held_out
        backwards.append(video.flip(1) if allowed else video)
        back_captions.append(flipped.caption if allowed else scene.caption)
    return torch.cat([videos, torch.stack(backwards)]), captions + back_captions
