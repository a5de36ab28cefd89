"""Pure-PyTorch per-(query tile, key tile) attention mass: the ground truth for the Triton pass.

Materialises the softmax for a chunk of queries at a time (all of them when the shape is small), so it
needs no log-sum-exp from elsewhere. Natural token order in, tile order out.
"""

from __future__ import annotations

import functools

import torch

from ..geometry import Geometry


@functools.lru_cache(maxsize=64)
def _token_tile(geometry: Geometry) -> torch.Tensor:
    """``(video_len,)`` int64: the tile id (tile order) of each natural video token."""
    return geometry.untile_index() // geometry.tile_volume


def video_and_text_slices(video_len: int, text_len: int, text_first: bool) -> tuple[slice, slice]:
    if text_first:
        return slice(text_len, text_len + video_len), slice(0, text_len)
    return slice(0, video_len), slice(video_len, video_len + text_len)


def tile_mass_reference(q: torch.Tensor, k: torch.Tensor, *, canvas, tile, text_len: int = 0,
                        text_first: bool = False, text_mask: torch.Tensor | None = None,
                        scale: float | None = None, chunk_bytes: int = 64 << 20) -> torch.Tensor:
    """Attention mass of the video queries of every query tile, by key tile.

    Args:
        q, k: ``(B, heads, S, D)``, ``S = T*H*W + text_len``, natural T-major video order.
        text_mask: ``(B, text_len)`` bool, True = real text key (padded text keys are never attended).
        chunk_bytes: fp32 score memory per query chunk.

    Returns:
        ``(B, heads, num_tiles, num_tiles + 1)`` float32: entry ``[b, h, i, j]`` is the softmax mass, summed
        over the real video queries of query tile ``i``, that lands on the real video keys of key tile ``j``
        (tile order); the last column is the mass on all valid text keys. Each row sums to the number of
        real tokens in its query tile.
    """
    geometry = Geometry(canvas, tile)
    B, H, S, D = q.shape
    V = geometry.video_len
    if S != V + text_len:
        raise ValueError(f"sequence length {S} != canvas volume {V} + text_len {text_len}")
    scale = D**-0.5 if scale is None else scale
    video, text = video_and_text_slices(V, text_len, text_first)
    n = geometry.num_tiles
    token_tile = _token_tile(geometry).to(q.device)
    # key -> column: video keys to their tile, text keys to column n
    column = torch.full((S,), n, dtype=torch.long, device=q.device)
    column[video] = token_tile
    key_bias = torch.zeros(B, 1, S, dtype=torch.float32, device=q.device)
    if text_len and text_mask is not None:
        key_bias[:, :, text] = torch.where(text_mask.to(q.device, torch.bool), 0.0, float("-inf"))[:, None, :]
    kf = k.float()
    qv = q[:, :, video].float()
    mass = torch.zeros(B, H, n, n + 1, dtype=torch.float32, device=q.device)
    rows = max(1, chunk_bytes // (4 * S * B * H))
    for start in range(0, V, rows):
        stop = min(V, start + rows)
        scores = torch.matmul(qv[:, :, start:stop], kf.transpose(-1, -2)) * scale + key_bias[:, None]
        probs = torch.softmax(scores, dim=-1)  # (B, H, r, S)
        by_key_tile = torch.zeros(B, H, stop - start, n + 1, dtype=torch.float32, device=q.device)
        by_key_tile.index_add_(3, column, probs)
        mass.index_add_(2, token_tile[start:stop], by_key_tile)
    return mass


def attention_lse_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, text_len: int = 0,
                            text_first: bool = False, text_mask: torch.Tensor | None = None,
                            scale: float | None = None, chunk_bytes: int = 64 << 20
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense attention (valid keys only) and its natural-log log-sum-exp ``(B, heads, S)`` float32, in chunks."""
    B, H, S, D = q.shape
    scale = D**-0.5 if scale is None else scale
    key_bias = torch.zeros(B, 1, S, dtype=torch.float32, device=q.device)
    if text_len and text_mask is not None:
        V = S - text_len
        _, text = video_and_text_slices(V, text_len, text_first)
        key_bias[:, :, text] = torch.where(text_mask.to(q.device, torch.bool), 0.0, float("-inf"))[:, None, :]
    kf, vf = k.float(), v.float()
    out = torch.empty_like(q)
    lse = torch.empty(B, H, S, dtype=torch.float32, device=q.device)
    rows = max(1, chunk_bytes // (4 * S * B * H))
    for start in range(0, S, rows):
        stop = min(S, start + rows)
        scores = torch.matmul(q[:, :, start:stop].float(), kf.transpose(-1, -2)) * scale + key_bias[:, None]
        lse[:, :, start:stop] = torch.logsumexp(scores, dim=-1)
        out[:, :, start:stop] = torch.matmul(torch.softmax(scores, dim=-1), vf).to(q.dtype)
    return out, lse
