"""STA through PyTorch FlexAttention, with a BlockMask built directly from per-head key-tile tables.

Blocks are ``gcd(tile_volume, 128)`` tokens so one tile is a whole number of flex blocks. Key blocks
wholly made of real tokens are "full" blocks (no mask_mod call); border blocks holding padding and
the text blocks go through a mask_mod that reads a per-(batch, key) validity vector.
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from ..geometry import Geometry

_compiled_flex = None


def _eager_flex(*args, **kwargs):
    # Off CUDA, flex runs its unfused reference path on purpose (small shapes); its advice to compile is noise.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return flex_attention(*args, **kwargs)


def _flex_fn(device: torch.device):
    global _compiled_flex
    if device.type != "cuda":
        return _eager_flex
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


def flex_function(device: torch.device):
    """The ``flex_attention`` that :func:`sta_flex_tiled` calls on ``device`` (compiled once on CUDA; eager elsewhere)."""
    return _flex_fn(device)


def clear_mask_cache() -> None:
    """Forget every cached BlockMask and block pattern (to time a mask build from scratch)."""
    _MASK_CACHE.clear()
    _block_pattern.cache_clear()


def flex_block_size(geometry: Geometry) -> int:
    return math.gcd(geometry.tile_volume, 128)


@functools.lru_cache(maxsize=64)
def _block_pattern(geometry: Geometry, windows: tuple[tuple[int, int, int], ...], text_blocks: int) -> torch.Tensor:
    """``(heads, nB, nB)`` bool: which key blocks each query block visits (text blocks dense)."""
    r = geometry.tile_volume // flex_block_size(geometry)
    n_video = geometry.num_tiles * r
    n = n_video + text_blocks
    pattern = torch.zeros(len(windows), n, n, dtype=torch.bool)
    for h, window in enumerate(windows):
        key_tiles = torch.from_numpy(geometry.key_tiles(window).astype("int64"))  # (tiles, kt)
        blocks = (key_tiles[:, :, None] * r + torch.arange(r)).reshape(key_tiles.shape[0], -1)
        blocks = blocks.repeat_interleave(r, dim=0)  # all q blocks of a tile see the same key blocks
        pattern[h, :n_video].scatter_(1, blocks, True)
    pattern[:, :, n_video:] = True
    pattern[:, n_video:, :] = True
    return pattern


_MASK_CACHE: dict = {}


def build_block_mask(geometry: Geometry, windows: torch.Tensor, text_len: int, key_valid: torch.Tensor,
                     device: torch.device) -> BlockMask:
    """BlockMask for the tile-order sequence ``[video tiles | text | pad]``; ``key_valid`` is (B, L) bool."""
    bs = flex_block_size(geometry)
    B, L = key_valid.shape
    win = tuple(geometry.clip_window(w) for w in windows.tolist())
    key = (geometry, win, text_len, L, str(device), key_valid.cpu().numpy().tobytes(), B)
    cached = _MASK_CACHE.get(key)
    if cached is not None:
        return cached
    n_blocks = L // bs
    pattern = _block_pattern(geometry, win, n_blocks - geometry.padded_len // bs).to(device)
    block_full = key_valid.view(B, n_blocks, bs).all(dim=2).to(device)  # (B, nB)
    pattern = pattern.unsqueeze(0)  # (1, H, nB, nB)
    full = pattern & block_full[:, None, None, :]
    partial = pattern & ~block_full[:, None, None, :]

    def compact(m):
        num = m.sum(-1, dtype=torch.int32)
        idx = torch.argsort((~m).to(torch.int8), dim=-1, stable=True).to(torch.int32)
        return num, idx

    kv_num, kv_idx = compact(partial)
    full_num, full_idx = compact(full)
    mask_mod = _make_mask_mod(geometry, win, key_valid.to(device), device)

    mask = BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=bs, mask_mod=mask_mod,
                                    seq_lengths=(L, L))
    if len(_MASK_CACHE) > 32:
        _MASK_CACHE.clear()
    _MASK_CACHE[key] = mask
    return mask


def _make_mask_mod(geometry: Geometry, windows, key_valid: torch.Tensor, device):
    """Element-level mask (window and key validity) matching the block tables exactly.

    Compiled flex evaluates it only on partial blocks; eager flex (CPU) evaluates it everywhere.
    """
    nt, nh, nw = geometry.grid
    tv, video = geometry.tile_volume, geometry.padded_len
    starts = [torch.tensor(np.stack([geometry.window_starts(w)[axis] for w in windows]), device=device)
              for axis in range(3)]  # each (heads, n_axis)
    sizes = torch.tensor(windows, device=device)  # (heads, 3), clipped

    def mask_mod(b, h, q_idx, kv_idx):
        q_tile = torch.clamp(q_idx // tv, max=geometry.num_tiles - 1)
        k_tile = torch.clamp(kv_idx // tv, max=geometry.num_tiles - 1)
        inside = (q_idx >= video) | (kv_idx >= video)
        q_c = (q_tile // (nh * nw), (q_tile // nw) % nh, q_tile % nw)
        k_c = (k_tile // (nh * nw), (k_tile // nw) % nh, k_tile % nw)
        in_window = None
        for axis in range(3):
            start = starts[axis][h, q_c[axis]]
            ok = (k_c[axis] >= start) & (k_c[axis] < start + sizes[h, axis])
            in_window = ok if in_window is None else in_window & ok
        return key_valid[b, kv_idx] & (inside | in_window)

    return mask_mod


def sta_flex_tiled(q, k, v, geometry: Geometry, windows: torch.Tensor, text_len: int,
                   text_mask: torch.Tensor | None, scale: float | None) -> torch.Tensor:
    """Tile-order inputs ``[video tiles | text]``; returns the same layout."""
    B, heads, S, D = q.shape
    bs = flex_block_size(geometry)
    L = -(-S // bs) * bs
    key_valid = torch.zeros(B, L, dtype=torch.bool, device=q.device)
    key_valid[:, : geometry.padded_len] = geometry.key_valid().to(q.device)
    if text_len:
        key_valid[:, geometry.padded_len: S] = True if text_mask is None else text_mask.to(q.device, torch.bool)
    if L != S:
        pad = (0, 0, 0, L - S)
        q, k, v = (torch.nn.functional.pad(x, pad) for x in (q, k, v))
    mask = build_block_mask(geometry, windows, text_len, key_valid, q.device)
    out = _flex_fn(q.device)(q, k, v, block_mask=mask, scale=scale)
    return out[:, :, :S]
