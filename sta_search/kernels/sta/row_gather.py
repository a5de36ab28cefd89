"""Row gathers between natural order and compact tile order (``gluon_fwd.sta_gluon_compact``).

``gather_rows(x, index)`` returns ``y`` with ``y[:, :, i] = x[:, :, index[i]]`` (zeros where ``index[i] < 0``) for
``x`` of shape ``(B, heads, S, D)``. On CUDA a Triton kernel copies whole rows (any batch/head strides, last dim
contiguous): ``index_select`` on dim 2 moved about 1.2 TB/s on an H200 (bench/NOTES.md, session 8), a row copy
is bandwidth-bound. Elsewhere, or for layouts the kernel does not take, ``index_select``.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from .._interpreter import patch_interpreter
from ..geometry import Geometry, compact_index_on

patch_interpreter()

BLOCK_ROWS = 32


@triton.jit
def _gather_rows_kernel(Src, Dst, Index, rows_out, heads, stride_sb, stride_sh, stride_ss, stride_db, stride_dh,
                        stride_ds, HEAD_DIM: tl.constexpr, BLOCK_ROWS: tl.constexpr):
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // heads
    h = bh % heads
    rows = pid * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    in_range = rows < rows_out
    src_rows = tl.load(Index + rows, mask=in_range, other=-1)
    cols = tl.arange(0, HEAD_DIM)
    src = Src + b.to(tl.int64) * stride_sb + h.to(tl.int64) * stride_sh
    x = tl.load(src + src_rows.to(tl.int64)[:, None] * stride_ss + cols[None, :], mask=(src_rows >= 0)[:, None],
                other=0.0)
    dst = Dst + b.to(tl.int64) * stride_db + h.to(tl.int64) * stride_dh
    tl.store(dst + rows.to(tl.int64)[:, None] * stride_ds + cols[None, :], x, mask=in_range[:, None])


def _kernel_takes(x: torch.Tensor) -> bool:
    D = x.shape[-1]
    runs_here = x.device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"
    return runs_here and x.stride(-1) == 1 and D >= 16 and D & (D - 1) == 0


def gather_rows(x: torch.Tensor, index: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, heads, len(index), D)``: rows ``index`` of ``x`` (dim 2), zeros for negative entries."""
    B, H, _, D = x.shape
    rows = index.shape[0]
    if out is None:
        out = torch.empty(B, H, rows, D, device=x.device, dtype=x.dtype)
    if not _kernel_takes(x) or not _kernel_takes(out):
        valid = (index >= 0).view(1, 1, -1, 1)
        out.copy_(x.index_select(2, index.clamp_min(0)) * valid.to(x.dtype))
        return out
    grid = (triton.cdiv(rows, BLOCK_ROWS), B * H)
    _gather_rows_kernel[grid](x, out, index, rows, H, *x.stride()[:3], *out.stride()[:3], HEAD_DIM=D,
                              BLOCK_ROWS=BLOCK_ROWS, num_warps=4)
    return out


@functools.lru_cache(maxsize=64)
def compact_gathers(geometry: Geometry, text_len: int, text_first: bool, device: torch.device
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """int32 row maps on ``device``: natural ``(T*H*W + text_len)`` rows -> ``[compact video tiles | text]`` and
    back (``-1``: padding slot)."""
    to_compact, to_natural = (i.cpu() for i in compact_index_on(geometry, torch.device("cpu")))
    V, P = geometry.video_len, geometry.padded_len
    video_offset, text_offset = (text_len, 0) if text_first else (0, V)
    text = torch.arange(text_len)
    forward = torch.cat([torch.where(to_compact >= 0, to_compact + video_offset, -1), text + text_offset])
    back_video, back_text = to_natural, P + text
    backward = torch.cat([back_text, back_video] if text_first else [back_video, back_text])
    return forward.to(device=device, dtype=torch.int32), backward.to(device=device, dtype=torch.int32)
