"""Public entry point: validate, normalise, then dispatch to a backend (docs/kernel.md)."""

from __future__ import annotations

import torch

from .. import backends
from ..geometry import Geometry, from_tiles, to_tiles
from .tables import device_windows

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def normalize_windows(windows, heads: int, device=None) -> torch.Tensor:
    """``(3,)`` or ``(heads, 3)`` window(s) -> ``(heads, 3)`` int32 tensor, validated.

    Values of a table already on a GPU are not checked (that would stop the host until the GPU catches up, once per
    attention call; bench/NOTES.md, session 8): pass integer tables there (``MaskAttention`` does, from a validated
    mask config); the Triton and Gluon kernels read an entry below 1 as 1."""
    w = torch.as_tensor(windows)
    on_host = w.device.type in ("cpu", "meta")
    if not on_host and (w.is_floating_point() or w.is_complex() or w.dtype == torch.bool):
        raise ValueError(f"a window table on {w.device} must have an integer dtype, got {w.dtype}")
    if w.is_floating_point() or w.is_complex():
        if not torch.equal(w, w.round()):
            raise ValueError(f"windows must be integers, got {w.tolist()}")
    if on_host:
        w = w.to(torch.int64)
    if w.ndim == 1:
        if w.shape[0] != 3:
            raise ValueError(f"a single window must have 3 entries (t, h, w), got {w.tolist()}")
        w = w.expand(heads, 3)
    elif w.ndim != 2 or w.shape[1] != 3:
        raise ValueError(f"windows must have shape (3,) or (heads, 3), got {tuple(w.shape)}")
    elif w.shape[0] != heads:
        raise ValueError(f"windows table has {w.shape[0]} rows but the inputs have {heads} heads")
    if on_host and (w < 1).any():
        bad = w[(w < 1).any(dim=1)][0].tolist()
        raise ValueError(f"window entries must be >= 1, got {bad}")
    return device_windows(w, w.device if device is None else device)


def _validate(q, k, v, geometry: Geometry, text_len: int, text_mask):
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != 4:
            raise ValueError(f"{name} must be (batch, heads, tokens, head_dim), got shape {tuple(x.shape)}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f"q, k, v shapes differ: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v devices differ: {q.device}, {k.device}, {v.device}")
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype {q.dtype} is not supported; use float32, bfloat16 or float16")
    if text_len < 0:
        raise ValueError(f"text_len must be >= 0, got {text_len}")
    S = q.shape[2]
    if S != geometry.video_len + text_len:
        raise ValueError(
            f"sequence length {S} != canvas volume {geometry.video_len} {tuple(geometry.canvas)} + text_len {text_len}"
        )
    if text_mask is not None:
        if text_len == 0:
            raise ValueError("text_mask given but text_len is 0")
        if tuple(text_mask.shape) != (q.shape[0], text_len):
            raise ValueError(f"text_mask must have shape (batch, text_len) = {(q.shape[0], text_len)}, got {tuple(text_mask.shape)}")
        if text_mask.device != q.device:
            raise ValueError(f"text_mask is on {text_mask.device} but q is on {q.device}")


# ----------------------------------------------------------------------------- entry points
def sta_attention(q, k, v, *, canvas, tile=(6, 8, 8), windows, text_len: int = 0, text_first: bool = False,
                  text_mask: torch.Tensor | None = None, scale: float | None = None,
                  backend: str = "auto", precision: str = "bf16") -> torch.Tensor:
    """Sliding Tile Attention over video tokens in natural T-major order, with optional joint text.

    Args:
        q, k, v: ``(B, heads, S, D)`` with ``S = T*H*W + text_len``; fp32, bf16 or fp16; CPU or CUDA.
        canvas: ``(T, H, W)`` video token grid. tile: ``(tt, th, tw)``, volume a multiple of 16.
        windows: ``(3,)`` for every head or ``(heads, 3)``, in tiles, each entry >= 1 (see docs/geometry.md).
        text_len: joint text tokens, after the video (``text_first=False``) or before it.
        text_mask: ``(B, text_len)`` bool, True for real text keys; padded text keys are never attended.
            Video queries see their window plus every valid text key; text queries see every valid key.
        scale: softmax scale, default ``D ** -0.5``.
        backend: ``"gluon"`` (warp-specialized, Hopper only), ``"triton"``, ``"flex"``, ``"reference"`` or
            ``"auto"`` (gluon where it runs, else triton on CUDA; reference for small CPU inputs, flex for
            large ones; the choice is logged).
        precision: ``"bf16"`` (default: products in the inputs' dtype), ``"fp8"`` (opt-in: q, k, v quantized
            to e4m3 with float32 block scales, both products on Hopper's FP8 tensor cores) or ``"int8"`` (the same
            with Q and K in int8: more accurate, a little slower). The 8-bit precisions are Gluon only (``auto``
            picks it; ValueError saying why where it cannot run). Output in q's dtype either way.

    Returns:
        ``(B, heads, S, D)`` in q's dtype and layout.
    """
    geometry = Geometry(canvas, tile)
    _validate(q, k, v, geometry, text_len, text_mask)
    windows = normalize_windows(windows, q.shape[1])
    backend = backends.resolve(backend, q, geometry, "natural", precision)
    entry = backends.backend_for(backend, precision)
    if entry.natural is not None and (entry.tiled is None
                                      or backends.runs_in_place(backend, q, k, v, geometry, precision)[0]):
        return entry.entry("natural")(q, k, v, geometry, windows, text_len, text_first, text_mask, scale)
    V = geometry.video_len
    if text_first:
        video = slice(text_len, text_len + V)
        text = slice(0, text_len)
    else:
        video, text = slice(0, V), slice(V, V + text_len)
    tiled = [torch.cat([to_tiles(geometry, x[:, :, video]), x[:, :, text]], dim=2) if text_len
             else to_tiles(geometry, x) for x in (q, k, v)]
    out = entry.entry("tiled")(*tiled, geometry, windows, text_len, text_mask, scale)
    video_out = from_tiles(geometry, out[:, :, : geometry.padded_len])
    if not text_len:
        return video_out
    text_out = out[:, :, geometry.padded_len:]
    return torch.cat([text_out, video_out] if text_first else [video_out, text_out], dim=2)


def sta_attention_tiled(q, k, v, *, geometry: Geometry, windows, text_len: int = 0,
                        text_mask: torch.Tensor | None = None, scale: float | None = None,
                        backend: str = "auto", precision: str = "bf16") -> torch.Tensor:
    """Like :func:`sta_attention` for inputs already in tile order: ``[padded video tiles | text]``.

    ``S = geometry.padded_len + text_len``; padded video positions are never attended and their
    outputs are unspecified. Agrees exactly with :func:`sta_attention` on the real tokens. The dense
    reference takes natural order only, so ``auto`` picks flex off CUDA (see :mod:`..backends`).
    """
    if q.shape[2] != geometry.padded_len + text_len:
        raise ValueError(f"tiled sequence length {q.shape[2]} != padded video {geometry.padded_len} + text_len {text_len}")
    windows = normalize_windows(windows, q.shape[1])
    backend = backends.resolve(backend, q, geometry, "tiled", precision)
    return backends.backend_for(backend, precision).entry("tiled")(q, k, v, geometry, windows, text_len, text_mask, scale)
