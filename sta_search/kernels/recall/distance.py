"""``sum((x - ref)**2)`` per (batch, head) in one pass: the profiler's output-error reduction.

``x`` and ``ref`` are ``(B, H, N, D)`` bf16/fp16/fp32 with any batch/head/token strides and contiguous head
dim. Each program reads a ``BLOCK_N x D`` box of both, squares the float32 difference and writes one partial
sum; the partials of a (batch, head) are summed in a fixed order, so the result is deterministic. One read of
each input and no float32 temporaries: the PyTorch path (``sta_search.stats.squared_distance``) writes and
rereads float32 copies of every chunk.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._interpreter import patch_interpreter

patch_interpreter()


@triton.jit
def _squared_distance_kernel(x_ptr, r_ptr, out_ptr, H, N, D,
                             sxb, sxh, sxn, srb, srh, srn,
                             HAS_REF: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    bh = tl.program_id(0)
    block = tl.program_id(1)
    b = bh // H
    h = bh % H
    rows = block * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < N) & (cols[None, :] < D)
    x = tl.load(x_ptr + b * sxb + h * sxh + rows[:, None] * sxn + cols[None, :], mask=mask, other=0.0)
    diff = x.to(tl.float32)
    if HAS_REF:
        r = tl.load(r_ptr + b * srb + h * srh + rows[:, None] * srn + cols[None, :], mask=mask, other=0.0)
        diff = diff - r.to(tl.float32)
    tl.store(out_ptr + bh * tl.num_programs(1) + block, tl.sum(diff * diff))


def squared_distance_triton_ok(x: torch.Tensor, ref: torch.Tensor | None) -> tuple[bool, str]:
    """CUDA tensors (or CPU under ``TRITON_INTERPRET=1``) of 4 dims with a contiguous last dim."""
    import os

    tensors = [x] if ref is None else [x, ref]
    if any(t.device.type != "cuda" for t in tensors) and os.environ.get("TRITON_INTERPRET") != "1":
        return False, "needs CUDA tensors (or TRITON_INTERPRET=1)"
    if any(t.ndim != 4 or t.stride(-1) != 1 for t in tensors):
        return False, "needs (B, H, N, D) tensors with a contiguous head dim"
    if ref is not None and ref.shape != x.shape:
        return False, f"shapes differ: {tuple(x.shape)} vs {tuple(ref.shape)}"
    return True, "ok"


def squared_distance_triton(x: torch.Tensor, ref: torch.Tensor | None, block_n: int = 64) -> torch.Tensor:
    """``(B, H)`` float32 ``sum((x - ref)**2)`` over tokens and head dim (``ref=None``: ``sum(x**2)``)."""
    B, H, N, D = x.shape
    blocks = triton.cdiv(N, block_n)
    partial = torch.empty(B * H, max(blocks, 1), dtype=torch.float32, device=x.device)
    if N == 0:
        return partial.zero_().sum(dim=1).view(B, H)
    r = x if ref is None else ref
    _squared_distance_kernel[(B * H, blocks)](
        x, r, partial, H, N, D, x.stride(0), x.stride(1), x.stride(2), r.stride(0), r.stride(1), r.stride(2),
        HAS_REF=ref is not None, BLOCK_N=block_n, BLOCK_D=triton.next_power_of_2(D))
    return partial.sum(dim=1).view(B, H)
