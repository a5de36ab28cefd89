"""Shared pieces of the kernel tests: the error measure and the inputs of the model-shape GPU checks."""

from __future__ import annotations

import torch

from sta_search.kernels import Geometry

TILE = (6, 8, 8)
MIXED_CHOICES = [(1, 2, 3), (3, 3, 3), (5, 6, 10), (2, 3, 5), (3, 5, 5), (1, 1, 1)]


def float64_reference(q, k, v, kw: dict) -> torch.Tensor:
    """The float64 reference of ``sta_attention(q, k, v, **kw)`` (``kw`` as passed to it: canvas, tile, windows,
    text arguments)."""
    from sta_search.kernels.sta import normalize_windows, sta_reference

    windows = normalize_windows(kw["windows"], q.shape[1])
    return sta_reference(q.double(), k.double(), v.double(), **{**kw, "windows": windows})


def tile_order(geometry, x, text_len: int = 0, text_first: bool = False) -> torch.Tensor:
    """Natural-order tokens ``(B, heads, video + text, D)`` as the tiled entries take them: ``[padded video tiles |
    text]``."""
    from sta_search.kernels import to_tiles

    V = geometry.video_len
    video, text = (slice(text_len, None), slice(0, text_len)) if text_first else (slice(0, V), slice(V, None))
    return torch.cat([to_tiles(geometry, x[:, :, video]), x[:, :, text]], 2)


def natural_order(geometry, rows, text_len: int = 0, text_first: bool = False) -> torch.Tensor:
    """The inverse of :func:`tile_order`: rows ``[padded video tiles | text | anything after]`` back in natural order,
    the canvas padding and the rows past the text dropped."""
    from sta_search.kernels import from_tiles

    video = from_tiles(geometry, rows[:, :, : geometry.padded_len])
    text = rows[:, :, geometry.padded_len: geometry.padded_len + text_len]
    return torch.cat([text, video] if text_first else [video, text], 2)


def fp8_dequantized(q, k, v, geometry, text_len: int = 0, text_first: bool = False, dtype=torch.float64,
                    qk_int8: bool = False):
    """The FP8 recipe's inputs to its two products, in natural order: Q, smoothed K and V as the torch pre-pass
    (`gluon_fp8.quantize_fp8_torch`) rounds them to e4m3 (Q and K to int8 with ``qk_int8``), dequantized with their
    block and channel scales."""
    from sta_search.kernels.sta.gluon_fp8 import BLOCK_N, QUERY_ROWS, quantize_fp8_torch, v_column

    B, heads, S, D = q.shape
    q8, k8, v8t, q_scale, k_scale, v_scale = quantize_fp8_torch(q, k, v, geometry, text_len, text_first=text_first,
                                                                qk_int8=qk_int8)
    L8 = q8.shape[1]

    def blocks(x8, scale, rows):
        return (x8.to(dtype).reshape(B * heads, -1, rows, D) * scale.to(dtype)[:, :, None, None]).reshape(-1, L8, D)

    def natural(rows):
        return natural_order(geometry, rows.reshape(B, heads, L8, D), text_len, text_first)

    columns = v_column(torch.arange(L8, device=v8t.device))
    deq_v = v8t.to(dtype)[:, :, columns].transpose(1, 2) * v_scale.to(dtype)[:, None, :]
    return natural(blocks(q8, q_scale, QUERY_ROWS)), natural(blocks(k8, k_scale, BLOCK_N)), natural(deq_v)


def rel_rms(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    assert torch.isfinite(out).all(), "non-finite output"
    return ((out - ref).norm() / ref.norm()).item()


def model_shape_case(case: str, device="cuda"):
    """bf16, d=128 inputs named by a test id: ``hunyuan-720p-*`` (24 heads) or ``wan-480p-*`` (12 heads); ``mixed``
    for per-head windows, else (3,3,3); ``text256`` for 256 text tokens after the video, the last 56 padded.

    Returns ``(geometry, (q, k, v), kwargs for sta_attention)``.
    """
    canvas, heads = ((21, 30, 52), 12) if case.startswith("wan") else ((30, 48, 80), 24)
    geometry = Geometry(canvas, TILE)
    table = [MIXED_CHOICES[h % len(MIXED_CHOICES)] for h in range(heads)] if "mixed" in case else (3, 3, 3)
    text_len = 256 if "text" in case else 0
    text_mask = None
    if text_len:
        text_mask = torch.ones(1, text_len, dtype=torch.bool, device=device)
        text_mask[:, 200:] = False
    qkv = tuple(torch.randn(1, heads, geometry.video_len + text_len, 128, device=device, dtype=torch.bfloat16)
                for _ in range(3))
    return geometry, qkv, dict(canvas=canvas, tile=TILE, windows=table, text_len=text_len, text_mask=text_mask)
