"""Reference STA: dense SDPA under an explicit boolean mask built straight from docs/geometry.md.

Independent of the tile tables used by the fast backends; materialises ``(B, heads, S, S)`` booleans,
so small shapes only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _axis_allowed(c: int, t: int, w: int, device) -> torch.Tensor:
    """``(c, c)`` bool: along one axis, may query coordinate i see key coordinate j."""
    n = -(-c // t)
    w = min(w, n)
    q_tile = torch.arange(c, device=device) // t
    start = (q_tile - (w - 1) // 2).clamp(0, n - w)
    k_tile = torch.arange(c, device=device) // t
    return (k_tile[None, :] >= start[:, None]) & (k_tile[None, :] < start[:, None] + w)


def sta_mask(canvas, tile, windows: torch.Tensor, text_len: int = 0, text_first: bool = False,
             text_mask: torch.Tensor | None = None, batch: int = 1, device=None) -> torch.Tensor:
    """``(B, heads, S, S)`` bool mask in natural token order (True = attend)."""
    T, H, W = canvas
    video = T * H * W
    heads = windows.shape[0]
    S = video + text_len
    masks = []
    for wt, wh, ww in windows.tolist():
        at = _axis_allowed(T, tile[0], wt, device)
        ah = _axis_allowed(H, tile[1], wh, device)
        aw = _axis_allowed(W, tile[2], ww, device)
        m = (at[:, None, None, :, None, None] & ah[None, :, None, None, :, None] & aw[None, None, :, None, None, :])
        masks.append(m.reshape(video, video))
    video_mask = torch.stack(masks)  # (heads, V, V)
    full = torch.zeros(batch, heads, S, S, dtype=torch.bool, device=device)
    v0 = text_len if text_first else 0
    t0 = 0 if text_first else video
    full[:, :, v0:v0 + video, v0:v0 + video] = video_mask
    if text_len:
        valid = torch.ones(batch, text_len, dtype=torch.bool, device=device) if text_mask is None else text_mask.bool().to(device)
        full[:, :, :, t0:t0 + text_len] = valid[:, None, None, :]
        key_valid = torch.ones(batch, S, dtype=torch.bool, device=device)
        key_valid[:, t0:t0 + text_len] = valid
        full[:, :, t0:t0 + text_len, :] = key_valid[:, None, None, :]
    return full


def sta_reference(q, k, v, *, canvas, tile, windows, text_len=0, text_first=False, text_mask=None, scale=None):
    mask = sta_mask(canvas, tile, windows, text_len, text_first, text_mask, batch=q.shape[0], device=q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def sta_reference_natural(q, k, v, geometry, windows, text_len, text_first, text_mask, scale):
    """:func:`sta_reference` in the calling convention of the other backends' natural-order entries."""
    return sta_reference(q, k, v, canvas=geometry.canvas, tile=geometry.tile, windows=windows, text_len=text_len,
                         text_first=text_first, text_mask=text_mask, scale=scale)
