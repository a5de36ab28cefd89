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
