"""Sliding Tile Attention geometry (docs/geometry.md).

A canvas ``(T, H, W)`` of video tokens is cut into tiles ``(tt, th, tw)``; the canvas is padded up to
``grid = ceil(canvas / tile)`` tiles per axis. In *tile order* tiles follow each other in T-major order
of their tile coordinates and, inside a tile, tokens are T-major in their in-tile offsets. A window
``(wt, wh, ww)`` counted in tiles lets query tile ``q`` see, along axis ``d``, the ``min(w, n)`` key
tiles starting at ``clamp(q - (w - 1) // 2, 0, n - min(w, n))``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

Triple = tuple[int, int, int]

DEFAULT_TILE: Triple = (6, 8, 8)


def _as_triple(value, name: str) -> Triple:
    try:
        triple = tuple(int(v) for v in value)
    except TypeError:
        raise ValueError(f"{name} must be three integers, got {value!r}") from None
    if len(triple) != 3 or any(int(v) != v for v in value):
        raise ValueError(f"{name} must be three integers, got {value!r}")
    return triple  # type: ignore[return-value]


@dataclass(frozen=True)
class Geometry:
    """A video canvas cut into tiles. Hashable, so everything derived from it is cached per geometry."""

    canvas: Triple
    tile: Triple = DEFAULT_TILE

    def __post_init__(self):
        canvas = _as_triple(self.canvas, "canvas")
        tile = _as_triple(self.tile, "tile")
        if min(canvas) < 1:
            raise ValueError(f"canvas entries must be >= 1, got {canvas}")
        if min(tile) < 1:
            raise ValueError(f"tile entries must be >= 1, got {tile}")
        if math.prod(tile) % 16:
            raise ValueError(f"tile volume must be a multiple of 16, got tile {tile} (volume {math.prod(tile)})")
        object.__setattr__(self, "canvas", canvas)
        object.__setattr__(self, "tile", tile)

    @property
    def grid(self) -> Triple:
        """Tiles per axis, ``ceil(canvas / tile)``."""
        return tuple(-(-c // t) for c, t in zip(self.canvas, self.tile))  # type: ignore[return-value]

    @property
    def padded_canvas(self) -> Triple:
        return tuple(n * t for n, t in zip(self.grid, self.tile))  # type: ignore[return-value]

    @property
    def tile_volume(self) -> int:
        return math.prod(self.tile)

    @property
    def num_tiles(self) -> int:
        return math.prod(self.grid)

    @property
    def video_len(self) -> int:
        """Tokens on the canvas (natural order, no padding)."""
        return math.prod(self.canvas)

    @property
    def padded_len(self) -> int:
        """Tokens in tile order, padding included."""
        return self.num_tiles * self.tile_volume

    @property
    def is_divisible(self) -> bool:
        return self.canvas == self.padded_canvas

    # ------------------------------------------------------------------ windows
    def clip_window(self, window) -> Triple:
        """The window with each entry clipped to the grid (same key tiles, canonical form)."""
        w = _check_window(window)
        return tuple(min(wd, n) for wd, n in zip(w, self.grid))  # type: ignore[return-value]

    def is_full(self, window) -> bool:
        return all(wd >= n for wd, n in zip(_check_window(window), self.grid))

    def window_starts(self, window) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per axis, the first key tile seen by every query tile coordinate."""
        return tuple(
            _axis_starts(n, wd) for n, wd in zip(self.grid, self.clip_window(window))
        )  # type: ignore[return-value]

    def key_tiles(self, window) -> np.ndarray:
        """``(num_tiles, prod(clipped window))`` key tile ids of every query tile, ascending."""
        return _key_tiles(self, self.clip_window(window))

    def tile_density(self, window) -> float:
        """Fraction of key tiles each query tile sees: ``prod(min(w, n)) / prod(n)``."""
        return math.prod(self.clip_window(window)) / self.num_tiles

    def density(self, window) -> float:
        """Exact fraction of (query, key) video token pairs attended, padding accounted for."""
        return _exact_density(self, self.clip_window(window))

    # ------------------------------------------------------------- permutation
    def tile_index(self) -> torch.Tensor:
        """``(padded_len,)`` int64: the natural T-major index of each tile-order position, -1 for padding."""
        return _tile_index(self)

    def untile_index(self) -> torch.Tensor:
        """``(video_len,)`` int64: the tile-order position of each natural video token."""
        return _untile_index(self)

    def key_valid(self) -> torch.Tensor:
        """``(padded_len,)`` bool: True where a tile-order position holds a real token."""
        return self.tile_index() >= 0

    # ------------------------------------------------------- compact tile order (padded canvases)
    def real_tokens_per_tile(self) -> np.ndarray:
        """``(num_tiles,)`` int64: the real (canvas) tokens of each tile; border tiles of a padded canvas hold fewer."""
        return _real_tokens_per_tile(self)

    def compact_tile_index(self) -> torch.Tensor:
        """Like :meth:`tile_index` for *compact tile order*: every tile keeps its ``tile_volume`` slots, but holds
        its real tokens first (T-major in their in-tile offsets) and its padding after them, so that in a border
        tile only the last block is partly padding and the blocks after it are all padding. Equal to
        :meth:`tile_index` on divisible canvases. The Gluon kernel uses it on padded canvases
        (``docs/kernel.md``); the public tile order stays the one above."""
        return _compact_tile_index(self)

    def compact_untile_index(self) -> torch.Tensor:
        """``(video_len,)`` int64: the compact tile-order position of each natural video token."""
        return _compact_untile_index(self)


def _check_window(window) -> Triple:
    w = _as_triple(window, "window")
    if min(w) < 1:
        raise ValueError(f"window entries must be >= 1, got {w}")
    return w


def _axis_starts(n: int, w: int) -> np.ndarray:
    w = min(w, n)
    q = np.arange(n)
    return np.clip(q - (w - 1) // 2, 0, n - w)


@functools.lru_cache(maxsize=256)
def _key_tiles(geometry: Geometry, window: Triple) -> np.ndarray:
    nt, nh, nw = geometry.grid
    per_axis = []
    for n, w in zip(geometry.grid, window):
        starts = _axis_starts(n, w)
        per_axis.append(starts[:, None] + np.arange(w)[None, :])  # (n, w)
    kt, kh, kw = per_axis
    ids = (
        kt[:, None, None, :, None, None] * (nh * nw)
        + kh[None, :, None, None, :, None] * nw
        + kw[None, None, :, None, None, :]
    )
    ids = ids.reshape(nt * nh * nw, -1).astype(np.int32)
    ids.flags.writeable = False
    return ids


@functools.lru_cache(maxsize=256)
def _exact_density(geometry: Geometry, window: Triple) -> float:
    pairs = 1
    for c, t, n, w in zip(geometry.canvas, geometry.tile, geometry.grid, window):
        starts = _axis_starts(n, w)
        q_tile = np.arange(c) // t
        lo = starts[q_tile] * t
        hi = np.minimum((starts[q_tile] + w) * t, c)
        pairs *= int((hi - lo).sum())
    return pairs / geometry.video_len**2


@functools.lru_cache(maxsize=64)
def _tile_index(geometry: Geometry) -> torch.Tensor:
    (nt, nh, nw), (tt, th, tw), (T, H, W) = geometry.grid, geometry.tile, geometry.canvas
    t = torch.arange(nt)[:, None, None, None, None, None] * tt + torch.arange(tt)[None, None, None, :, None, None]
    h = torch.arange(nh)[None, :, None, None, None, None] * th + torch.arange(th)[None, None, None, None, :, None]
    w = torch.arange(nw)[None, None, :, None, None, None] * tw + torch.arange(tw)[None, None, None, None, None, :]
    natural = t * (H * W) + h * W + w
    valid = (t < T) & (h < H) & (w < W)
    return torch.where(valid, natural, -1).reshape(-1)


@functools.lru_cache(maxsize=64)
def _real_tokens_per_tile(geometry: Geometry) -> np.ndarray:
    per_axis = [np.minimum(t, c - np.arange(n) * t) for c, t, n in zip(geometry.canvas, geometry.tile, geometry.grid)]
    real = (per_axis[0][:, None, None] * per_axis[1][None, :, None] * per_axis[2][None, None, :]).reshape(-1)
    real.flags.writeable = False
    return real


@functools.lru_cache(maxsize=64)
def _compact_tile_index(geometry: Geometry) -> torch.Tensor:
    index = _tile_index(geometry).view(geometry.num_tiles, geometry.tile_volume)
    real_first = torch.argsort((index < 0).to(torch.int8), dim=1, stable=True)
    return index.gather(1, real_first).reshape(-1)


def _inverse_index(index: torch.Tensor, video_len: int) -> torch.Tensor:
    positions = torch.nonzero(index >= 0).squeeze(1)
    inverse = torch.empty(video_len, dtype=torch.long)
    inverse[index[positions]] = positions
    return inverse


@functools.lru_cache(maxsize=64)
def _compact_untile_index(geometry: Geometry) -> torch.Tensor:
    return _inverse_index(_compact_tile_index(geometry), geometry.video_len)


@functools.lru_cache(maxsize=64)
def _untile_index(geometry: Geometry) -> torch.Tensor:
    return _inverse_index(_tile_index(geometry), geometry.video_len)


@functools.lru_cache(maxsize=64)
def tile_index_on(geometry: Geometry, device: torch.device) -> torch.Tensor:
    """:meth:`Geometry.tile_index` on ``device``, cached."""
    return geometry.tile_index().to(device)


@functools.lru_cache(maxsize=64)
def untile_index_on(geometry: Geometry, device: torch.device) -> torch.Tensor:
    """:meth:`Geometry.untile_index` on ``device``, cached."""
    return geometry.untile_index().to(device)


@functools.lru_cache(maxsize=64)
def compact_index_on(geometry: Geometry, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """:meth:`Geometry.compact_tile_index` and its inverse (natural token -> compact position) on ``device``."""
    return geometry.compact_tile_index().to(device), geometry.compact_untile_index().to(device)


def to_tiles(geometry: Geometry, x: torch.Tensor, dim: int = -2, compact: bool = False) -> torch.Tensor:
    """Reorder the natural video tokens of ``x`` along ``dim`` into tile order; padding is zero.

    ``compact``: into compact tile order instead (:meth:`Geometry.compact_tile_index`)."""
    dim = dim % x.ndim
    if x.shape[dim] != geometry.video_len:
        raise ValueError(f"expected {geometry.video_len} video tokens along dim {dim}, got {x.shape[dim]}")
    if geometry.is_divisible:
        return _permute_tiles(geometry, x, dim, to_tile_order=True)
    index = compact_index_on(geometry, x.device)[0] if compact else tile_index_on(geometry, x.device)
    gathered = x.index_select(dim, index.clamp_min(0))
    if not geometry.is_divisible:
        shape = [1] * x.ndim
        shape[dim] = -1
        gathered = gathered * (index >= 0).view(shape).to(x.dtype)
    return gathered


def from_tiles(geometry: Geometry, x: torch.Tensor, dim: int = -2, compact: bool = False) -> torch.Tensor:
    """Inverse of :func:`to_tiles` (with the same ``compact``): back to natural T-major order, padding dropped."""
    dim = dim % x.ndim
    if x.shape[dim] != geometry.padded_len:
        raise ValueError(f"expected {geometry.padded_len} tile-order tokens along dim {dim}, got {x.shape[dim]}")
    if geometry.is_divisible:
        return _permute_tiles(geometry, x, dim, to_tile_order=False)
    untile = compact_index_on(geometry, x.device)[1] if compact else untile_index_on(geometry, x.device)
    return x.index_select(dim, untile)


def _permute_tiles(geometry: Geometry, x: torch.Tensor, dim: int, to_tile_order: bool) -> torch.Tensor:
    """Divisible canvases: the reorder as one strided copy (view, permute, reshape) instead of a token gather;
    the same values as the index path (a test compares them), a new contiguous tensor."""
    (nt, nh, nw), (tt, th, tw) = geometry.grid, geometry.tile
    natural, tiled = (nt, tt, nh, th, nw, tw), (nt, nh, nw, tt, th, tw)
    split = natural if to_tile_order else tiled
    order = (0, 2, 4, 1, 3, 5) if to_tile_order else (0, 3, 1, 4, 2, 5)  # natural -> tiled, or back
    y = x.reshape(*x.shape[:dim], *split, *x.shape[dim + 1:])
    permutation = (*range(dim), *(dim + i for i in order), *range(dim + 6, y.ndim))
    return y.permute(permutation).reshape(x.shape)
