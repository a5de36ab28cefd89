"""Attention mass by (query tile, key tile) without materialising the attention matrix.

``tile_mass`` gives, for every query tile, the softmax mass of its real video queries on every key tile
(plus one column for all valid text keys). From it the recall of every STA window and the mass by tile
offset follow by small reductions (``sta_search.stats``). Backends: ``"gluon"`` (Hopper: the dense pass itself
records the mass, :mod:`.gluon_fused`), ``"triton"`` (a QK^T pass that reuses the dense pass's log-sum-exp; CUDA,
or CPU under ``TRITON_INTERPRET=1``) and ``"reference"`` (pure PyTorch, materialises the softmax in query chunks).
``"auto"``: gluon where it runs, else triton on CUDA, else reference.
"""

from __future__ import annotations

import os

import torch

from ..backends import can_run_fused_recall
from ..geometry import Geometry, to_tiles
from .dense import DENSE_LSE_KERNELS, chosen_kernel, fused_attention_lse
from .gluon_fused import dense_and_tile_mass
from .reference import attention_lse_reference, tile_mass_reference, video_and_text_slices
from .triton_kernel import tile_mass_triton_tiled

RECALL_BACKENDS = ("auto", "gluon", "triton", "reference")


def resolve_recall_backend(backend: str, q: torch.Tensor, geometry: Geometry | None = None) -> str:
    """The backend ``backend`` means for inputs like ``q`` on ``geometry`` (needed for ``gluon``, which
    ``auto`` picks only when it is given and the fused pass can run); ValueError if it cannot run."""
    if backend not in RECALL_BACKENDS:
        raise ValueError(f"recall backend must be one of {RECALL_BACKENDS}, got {backend!r}")
    if backend == "auto":
        if geometry is not None and q.device.type == "cuda" and can_run_fused_recall(q, geometry)[0]:
            return "gluon"
        return "triton" if q.device.type == "cuda" else "reference"
    if backend == "gluon":
        ok, why = can_run_fused_recall(q, geometry) if geometry is not None else (False, "no geometry given")
        if not ok:
            raise ValueError(f"the gluon recall backend cannot run: {why}")
    if backend == "triton" and q.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("the triton recall backend needs CUDA tensors (or TRITON_INTERPRET=1 on CPU)")
    return backend


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, text_len: int = 0,
                       text_first: bool = False, text_mask: torch.Tensor | None = None,
                       scale: float | None = None, kernel: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Dense attention over all valid keys and the natural-log log-sum-exp of every query.

    On CUDA one fused kernel gives both: cuDNN SDPA, else FlashAttention-2, else memory-efficient attention
    (:mod:`.dense`; ``kernel`` forces one). None takes a key-padding mask at full speed, so padded text keys
    are dropped per batch element, which is exact (a masked key carries no mass): when the valid keys are one
    run (text after the video with its padding at the end) ``k``/``v`` are views, otherwise a copy of the valid
    keys of that batch element. On CPU a chunked PyTorch computation.

    Returns:
        ``out`` ``(B, heads, S, D)`` in q's dtype (strides as the kernel writes them), ``lse`` ``(B, heads, S)``
        float32.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if q.device.type != "cuda":
        return attention_lse_reference(q, k, v, text_len=text_len, text_first=text_first, text_mask=text_mask,
                                       scale=scale)
    if not text_len or text_mask is None or bool(text_mask.all()):
        return fused_attention_lse(q, k, v, scale, kernel)
    V = q.shape[2] - text_len
    video, text = video_and_text_slices(V, text_len, text_first)
    outs, lses = [], []
    for b in range(q.shape[0]):
        kb, vb = _valid_keys(k[b:b + 1], v[b:b + 1], text, text_mask[b])
        o, l = fused_attention_lse(q[b:b + 1], kb, vb, scale, kernel)
        outs.append(o)
        lses.append(l)
    if len(outs) == 1:
        return outs[0], lses[0]
    return torch.cat(outs), torch.cat(lses)


def _valid_keys(k: torch.Tensor, v: torch.Tensor, text: slice, text_valid: torch.Tensor):
    """``k``/``v`` of one batch element without its padded text keys: views when the valid keys are one run."""
    S = k.shape[2]
    valid = torch.ones(S, dtype=torch.bool, device=k.device)
    valid[text] = text_valid.to(k.device, torch.bool)
    idx = torch.nonzero(valid).squeeze(1)
    lo, hi = int(idx[0]), int(idx[-1]) + 1
    if hi - lo == idx.numel():
        return k[:, :, lo:hi], v[:, :, lo:hi]
    return k.index_select(2, idx), v.index_select(2, idx)


def tile_mass(q: torch.Tensor, k: torch.Tensor, *, canvas, tile, text_len: int = 0, text_first: bool = False,
              text_mask: torch.Tensor | None = None, scale: float | None = None,
              lse: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """Per-(query tile, key tile) attention mass of the video queries (natural-order inputs).

    Args:
        q, k: ``(B, heads, S, D)``, ``S = T*H*W + text_len``, video tokens in natural T-major order.
        lse: ``(B, heads, S)`` natural-log log-sum-exp of the dense attention (triton backend; computed
            here when missing).
        backend: ``"gluon"``, ``"triton"``, ``"reference"`` or ``"auto"`` (gluon on Hopper where it runs, else
            triton on CUDA, reference on CPU). ``gluon`` computes the dense pass anyway and ignores ``lse``.

    Returns:
        ``(B, heads, num_tiles, num_tiles + 1)`` float32; row ``i`` holds the mass of the real video
        queries of query tile ``i`` (tile order) on each key tile, then on all valid text keys.
    """
    geometry = Geometry(canvas, tile)
    backend = resolve_recall_backend(backend, q, geometry)
    if backend == "gluon":
        return dense_and_tile_mass(q, k, k, geometry, text_len=text_len, text_first=text_first, text_mask=text_mask,
                                   scale=scale)[1]
    if backend == "reference":
        return tile_mass_reference(q, k, canvas=geometry.canvas, tile=geometry.tile, text_len=text_len,
                                   text_first=text_first, text_mask=text_mask, scale=scale)
    if lse is None:
        _, lse = attention_with_lse(q, k, k, text_len=text_len, text_first=text_first, text_mask=text_mask,
                                    scale=scale)
    video, text = video_and_text_slices(geometry.video_len, text_len, text_first)
    q_tiled = to_tiles(geometry, q[:, :, video])
    k_tiled = to_tiles(geometry, k[:, :, video])
    if text_len:
        k_tiled = torch.cat([k_tiled, k[:, :, text]], dim=2)
    lse_tiled = to_tiles(geometry, lse[:, :, video], dim=-1)
    return tile_mass_triton_tiled(q_tiled, k_tiled, lse_tiled, geometry, text_len, text_mask, scale)


__all__ = [
    "DENSE_LSE_KERNELS", "RECALL_BACKENDS", "attention_lse_reference", "attention_with_lse", "can_run_fused_recall",
    "chosen_kernel", "dense_and_tile_mass", "fused_attention_lse", "resolve_recall_backend", "tile_mass",
    "tile_mass_reference", "tile_mass_triton_tiled",
]
