"""Row gathers between natural order and compact tile order (``gluon_fwd.sta_gluon_compact``).

``gather_rows(q, k, v, index=index)`` returns, for each, ``y`` with ``y[:, :, i] = x[:, :, index[i]]`` (zeros where
``index[i] < 0``) for ``x`` of shape ``(B, heads, S, D)``, in one launch. On CUDA a Triton kernel copies whole rows (any batch/head strides, last dim
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
from ..geometry import Geometry

patch_interpreter()

BLOCK_ROWS = 32


@triton.jit
def _gather_rows_kernel(Src0, Src1, Src2, Dst0, Dst1, Dst2, Index, rows_out, heads,
                        ssb0, ssh0, sss0, ssb1, ssh1, sss1, ssb2, ssh2, sss2,
                        sdb0, sdh0, sds0, sdb1, sdh1, sds1, sdb2, sdh2, sds2,
                        HEAD_DIM: tl.constexpr, BLOCK_ROWS: tl.constexpr):
    """Rows ``Index`` of up to three ``(B, heads, S, D)`` tensors (grid axis 2 picks one), zeros for ``-1``."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    which = tl.program_id(2)
    b = (bh // heads).to(tl.int64)
    h = (bh % heads).to(tl.int64)
    first, second = which == 0, which == 1
    src = tl.where(first, Src0, tl.where(second, Src1, Src2))
    dst = tl.where(first, Dst0, tl.where(second, Dst1, Dst2))
    src += b * tl.where(first, ssb0, tl.where(second, ssb1, ssb2)) + h * tl.where(first, ssh0, tl.where(second, ssh1, ssh2))
    dst += b * tl.where(first, sdb0, tl.where(second, sdb1, sdb2)) + h * tl.where(first, sdh0, tl.where(second, sdh1, sdh2))
    src_row_stride = tl.where(first, sss0, tl.where(second, sss1, sss2)).to(tl.int64)
    dst_row_stride = tl.where(first, sds0, tl.where(second, sds1, sds2)).to(tl.int64)
    rows = pid * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    in_range = rows < rows_out
    src_rows = tl.load(Index + rows, mask=in_range, other=-1)
    cols = tl.arange(0, HEAD_DIM)
    x = tl.load(src + src_rows.to(tl.int64)[:, None] * src_row_stride + cols[None, :], mask=(src_rows >= 0)[:, None],
                other=0.0)
    tl.store(dst + rows.to(tl.int64)[:, None] * dst_row_stride + cols[None, :], x, mask=in_range[:, None])


def _kernel_takes(x: torch.Tensor) -> bool:
    D = x.shape[-1]
    runs_here = x.device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"
    return runs_here and x.stride(-1) == 1 and D >= 16 and D & (D - 1) == 0


def gather_rows(*xs: torch.Tensor, index: torch.Tensor, outs: list | None = None) -> list[torch.Tensor]:
    """For each ``x`` (``(B, heads, S, D)``, same shape and dtype): rows ``index`` of dim 2 (zeros for negative
    entries), ``(B, heads, len(index), D)``; written into ``outs`` when given. One launch for up to three."""
    B, H, _, D = xs[0].shape
    rows = index.shape[0]
    outs = list(outs) if outs is not None else [torch.empty(B, H, rows, D, device=x.device, dtype=x.dtype) for x in xs]
    if len(xs) > 3 or not all(_kernel_takes(t) and t.shape[:2] == (B, H) and t.dtype == xs[0].dtype
                              for t in (*xs, *outs)):
        valid = (index >= 0).view(1, 1, -1, 1)
        for x, out in zip(xs, outs):
            out.copy_(x.index_select(2, index.clamp_min(0)) * valid.to(x.dtype))
        return outs
    padded_xs, padded_outs = [*xs, *xs[-1:] * (3 - len(xs))], [*outs, *outs[-1:] * (3 - len(outs))]
    strides = [st for t in padded_xs for st in t.stride()[:3]] + [st for t in padded_outs for st in t.stride()[:3]]
    grid = (triton.cdiv(rows, BLOCK_ROWS), B * H, len(xs))
    _gather_rows_kernel[grid](*padded_xs, *padded_outs, index, rows, H, *strides, HEAD_DIM=D, BLOCK_ROWS=BLOCK_ROWS,
                              num_warps=4)
    return outs


@functools.lru_cache(maxsize=64)
def compact_gathers(geometry: Geometry, text_len: int, text_first: bool, device: torch.device
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """int32 row maps on ``device``: natural ``(T*H*W + text_len)`` rows -> ``[compact video tiles | text]`` and
    back (``-1``: padding slot)."""
    to_compact, to_natural = geometry.compact_tile_index(), geometry.compact_untile_index()
    V, P = geometry.video_len, geometry.padded_len
    video_offset, text_offset = (text_len, 0) if text_first else (0, V)
    text = torch.arange(text_len)
    forward = torch.cat([torch.where(to_compact >= 0, to_compact + video_offset, -1), text + text_offset])
    back_video, back_text = to_natural, P + text
    backward = torch.cat([back_text, back_video] if text_first else [back_video, back_text])
    return forward.to(device=device, dtype=torch.int32), backward.to(device=device, dtype=torch.int32)


def run_compact(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, geometry: Geometry, text_len: int,
                text_first: bool, run, out: torch.Tensor | None = None) -> torch.Tensor:
    """Natural-order ``q, k, v`` (``(B, heads, T*H*W + text_len, D)``) copied to ``[compact video tiles | text]`` in
    one launch, ``run(qt, kt, vt)`` on them (returns the output in that layout), and its rows copied back to
    natural order (into ``out`` when given)."""
    if out is not None and out.shape != q.shape:
        raise ValueError(f"out must have q's shape {tuple(q.shape)}, got {tuple(out.shape)}")
    forward, backward = compact_gathers(geometry, text_len, text_first, q.device)
    ot = run(*gather_rows(q, k, v, index=forward))  # padding slots are zeros, never attended
    return gather_rows(ot, index=backward, outs=None if out is None else [out])[0]
