"""Public entry point: validate, normalise, then dispatch to a backend (SPEC section 2)."""

from __future__ import annotations

import logging
import os

import torch

from ..geometry import Geometry, from_tiles, to_tiles

logger = logging.getLogger("sta_search.kernels")

BACKENDS = ("auto", "gluon", "triton", "flex", "reference")
SUPPORTED_HEAD_DIMS = (32, 64, 128)
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
REFERENCE_MAX_TOKENS = 4096


def normalize_windows(windows, heads: int, device=None) -> torch.Tensor:
    """``(3,)`` or ``(heads, 3)`` window(s) -> ``(heads, 3)`` int32 tensor, validated."""
    w = torch.as_tensor(windows)
    if w.is_floating_point() or w.is_complex():
        if not torch.equal(w, w.round()):
            raise ValueError(f"windows must be integers, got {w.tolist()}")
    w = w.to(torch.int64)
    if w.ndim == 1:
        if w.shape[0] != 3:
            raise ValueError(f"a single window must have 3 entries (t, h, w), got {w.tolist()}")
        w = w.expand(heads, 3)
    elif w.ndim != 2 or w.shape[1] != 3:
        raise ValueError(f"windows must have shape (3,) or (heads, 3), got {tuple(w.shape)}")
    elif w.shape[0] != heads:
        raise ValueError(f"windows table has {w.shape[0]} rows but the inputs have {heads} heads")
    if (w < 1).any():
        bad = w[(w < 1).any(dim=1)][0].tolist()
        raise ValueError(f"window entries must be >= 1, got {bad}")
    return w.to(torch.int32).contiguous() if device is None else w.to(device=device, dtype=torch.int32).contiguous()


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


# ----------------------------------------------------------------------------- backend checks
def can_run_triton(q: torch.Tensor) -> tuple[bool, str]:
    if q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        return False, f"head dim {q.shape[-1]} is not one of {SUPPORTED_HEAD_DIMS}"
    if q.device.type == "cuda":
        return True, "CUDA tensors"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True, "TRITON_INTERPRET=1 on CPU"
    return False, f"Triton needs CUDA tensors (or TRITON_INTERPRET=1 on CPU), got {q.device}"


def can_run_gluon(q: torch.Tensor, geometry: Geometry) -> tuple[bool, str]:
    """The warp-specialized Gluon kernel: Hopper only, bf16/fp16, head dim 128, tile volume a multiple of 128."""
    try:
        from .gluon_fwd import can_run_gluon as check
    except ImportError as exc:  # a Triton without Gluon
        return False, f"Gluon is not available ({exc})"
    return check(q, geometry)


def can_run_flex(q: torch.Tensor) -> tuple[bool, str]:
    return True, "FlexAttention runs on any device"


def can_run_reference(q: torch.Tensor) -> tuple[bool, str]:
    if q.shape[2] > REFERENCE_MAX_TOKENS:
        return False, f"{q.shape[2]} tokens is too many for the dense reference (at most {REFERENCE_MAX_TOKENS})"
    return True, "small enough for a dense mask"


def choose_backend(q: torch.Tensor, geometry: Geometry | None = None) -> tuple[str, str]:
    if q.device.type == "cuda":
        if geometry is not None:
            ok, why_not = can_run_gluon(q, geometry)
            if ok:
                return "gluon", "Hopper GPU, bf16/fp16, head dim 128"
        ok, why = can_run_triton(q)
        if geometry is not None:
            why = f"{why}; not gluon: {why_not}"
        return ("triton", why) if ok else ("flex", why)
    ok, why = can_run_reference(q)
    return ("reference", f"CPU tensors, {why}") if ok else ("flex", f"CPU tensors, {why}")


# ----------------------------------------------------------------------------- entry points
def sta_attention(q, k, v, *, canvas, tile=(6, 8, 8), windows, text_len: int = 0, text_first: bool = False,
                  text_mask: torch.Tensor | None = None, scale: float | None = None,
                  backend: str = "auto") -> torch.Tensor:
    """Sliding Tile Attention over video tokens in natural T-major order, with optional joint text.

    Args:
        q, k, v: ``(B, heads, S, D)`` with ``S = T*H*W + text_len``; fp32, bf16 or fp16; CPU or CUDA.
        canvas: ``(T, H, W)`` video token grid. tile: ``(tt, th, tw)``, volume a multiple of 16.
        windows: ``(3,)`` for every head or ``(heads, 3)``, in tiles, each entry >= 1 (see SPEC 1).
        text_len: joint text tokens, after the video (``text_first=False``) or before it.
        text_mask: ``(B, text_len)`` bool, True for real text keys; padded text keys are never attended.
            Video queries see their window plus every valid text key; text queries see every valid key.
        scale: softmax scale, default ``D ** -0.5``.
        backend: ``"gluon"`` (warp-specialized, Hopper only), ``"triton"``, ``"flex"``, ``"reference"`` or
            ``"auto"`` (gluon where it runs, else triton on CUDA; reference for small CPU inputs, flex for
            large ones; the choice is logged).

    Returns:
        ``(B, heads, S, D)`` in q's dtype and layout.
    """
    geometry = Geometry(canvas, tile)
    _validate(q, k, v, geometry, text_len, text_mask)
    windows = normalize_windows(windows, q.shape[1])
    backend = _resolve(backend, q, geometry)
    if backend == "reference":
        from .reference import sta_reference

        return sta_reference(q, k, v, canvas=geometry.canvas, tile=geometry.tile, windows=windows,
                             text_len=text_len, text_first=text_first, text_mask=text_mask, scale=scale)
    if backend == "triton":
        # Read and write the natural layout in place when TMA allows it (no tile/untile copies).
        from .triton_fwd import sta_triton_natural

        out = sta_triton_natural(q, k, v, geometry, windows.to(q.device), text_len, text_first, text_mask, scale)
        if out is not None:
            return out
    if backend == "gluon":
        from .gluon_fwd import can_run_gluon as check, sta_gluon_natural

        if check(q, geometry, natural=True)[0]:
            return sta_gluon_natural(q, k, v, geometry, windows, text_len, text_first, text_mask, scale)
    V = geometry.video_len
    if text_first:
        video = slice(text_len, text_len + V)
        text = slice(0, text_len)
    else:
        video, text = slice(0, V), slice(V, V + text_len)
    tiled = [torch.cat([to_tiles(geometry, x[:, :, video]), x[:, :, text]], dim=2) if text_len
             else to_tiles(geometry, x) for x in (q, k, v)]
    out = _run_tiled(backend, *tiled, geometry, windows, text_len, text_mask, scale)
    video_out = from_tiles(geometry, out[:, :, : geometry.padded_len])
    if not text_len:
        return video_out
    text_out = out[:, :, geometry.padded_len:]
    return torch.cat([text_out, video_out] if text_first else [video_out, text_out], dim=2)


def sta_attention_tiled(q, k, v, *, geometry: Geometry, windows, text_len: int = 0,
                        text_mask: torch.Tensor | None = None, scale: float | None = None,
                        backend: str = "auto") -> torch.Tensor:
    """Like :func:`sta_attention` for inputs already in tile order: ``[padded video tiles | text]``.

    ``S = geometry.padded_len + text_len``; padded video positions are never attended and their
    outputs are unspecified. Agrees exactly with :func:`sta_attention` on the real tokens.
    """
    if q.shape[2] != geometry.padded_len + text_len:
        raise ValueError(f"tiled sequence length {q.shape[2]} != padded video {geometry.padded_len} + text_len {text_len}")
    windows = normalize_windows(windows, q.shape[1])
    backend = _resolve(backend, q, geometry)
    if backend == "reference":
        raise ValueError("the reference backend takes natural-order inputs; use sta_attention")
    return _run_tiled(backend, q, k, v, geometry, windows, text_len, text_mask, scale)


def _resolve(backend: str, q: torch.Tensor, geometry: Geometry) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend, why = choose_backend(q, geometry)
        logger.info("sta_attention: backend=%s (%s)", backend, why)
        return backend
    if backend == "gluon":
        ok, why = can_run_gluon(q, geometry)
    else:
        ok, why = {"triton": can_run_triton, "flex": can_run_flex, "reference": can_run_reference}[backend](q)
    if not ok:
        raise ValueError(f"backend {backend!r} cannot run: {why}")
    return backend


def _run_tiled(backend, q, k, v, geometry, windows, text_len, text_mask, scale):
    if backend == "flex":
        from .flex import sta_flex_tiled

        return sta_flex_tiled(q, k, v, geometry, windows, text_len, text_mask, scale)
    if backend == "gluon":
        from .gluon_fwd import sta_gluon_tiled

        return sta_gluon_tiled(q, k, v, geometry, windows, text_len, text_mask, scale)
    from .triton_fwd import sta_triton_tiled

    return sta_triton_tiled(q, k, v, geometry, windows.to(q.device), text_len, text_mask, scale)
