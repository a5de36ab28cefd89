"""Sliding Tile Attention forward pass in Triton: one launch for every (batch, head, query block).

Inputs are in tile order, ``[padded video tiles | text]`` (SPEC section 1). A query block of
``BLOCK_M`` rows lies inside one tile (``BLOCK_M`` divides the tile volume), so all its rows see the
same key tiles. The key tiles are computed in the kernel from the tile coordinates and the head's
window (a ``(heads, 3)`` int32 table): along each axis the window starts at
``clamp(q - (w - 1) // 2, 0, n - min(w, n))``. Tiles that are neighbours along W are neighbours in
memory, so a window is ``wt * wh`` contiguous key spans of ``ww`` tiles each; the kernel walks them
as one flat loop of ``BLOCK_N`` key blocks (one loop keeps Triton's software pipelining intact).

Blocks are dense: the only masking is

- padded tokens of border tiles when the canvas is not divisible by the tile (``HAS_PADDING``,
  a compile-time flag; a divisible canvas compiles no mask at all), and only on border blocks;
- text keys: beyond ``text_len`` and where ``text_mask`` is False.

Video queries attend to their window plus every valid text key; text queries attend to every valid
key. The softmax is online, in fp32, with ``exp2`` and ``log2(e)`` folded into the scale. Every
output element is written, including padded video query rows (finite: every key tile holds at
least its first token, so every row has a valid key in its first block).

Program order (1-D grid): text query blocks first (each is as costly as a dense row), then video
query blocks of heads sorted by window volume, heaviest first, query blocks of one head adjacent
(they share key tiles in L2).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from ..geometry import Geometry

SUPPORTED_HEAD_DIMS = (32, 64, 128)
LOG2E = 1.4426950408889634


def _patch_interpreter_for_numpy2() -> None:
    """Let Triton's CPU interpreter use run-time loop bounds under NumPy >= 2.4.

    The interpreter (Triton 3.6) holds scalars as 1-element arrays and implements ``__index__`` as
    ``int(array)``, which NumPy 2.4 rejects for 1-d arrays, so ``range(0, n)`` with a computed ``n``
    fails. Wrap its tensor patcher so ``__index__`` uses ``.item()``. Only when interpreting.
    """
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "_sta_patched", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._sta_patched = True
    interpreter._patch_lang_tensor = patched


if os.environ.get("TRITON_INTERPRET") == "1":
    _patch_interpreter_for_numpy2()


@dataclass(frozen=True)
class KernelConfig:
    """Launch parameters. ``block_m`` and ``block_n`` must divide the tile volume."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    tma: bool = False  # K/V of the window loop through TMA tensor descriptors (Hopper+, CUDA only)
    warp_specialize: bool = False  # Triton's automatic warp specialization of the window loop


def default_config(tile_volume: int, head_dim: int, dtype: torch.dtype, on_gpu: bool) -> KernelConfig:
    """A fixed config per (tile volume, head dim, dtype), from the H100 sweep in bench/NOTES.md.

    No autotuning at the first call. TMA descriptors are used on GPUs that have them (Hopper+);
    :func:`sta_triton_tiled` falls back to pointer loads when the strides do not allow them.
    """
    if not on_gpu:
        # Interpreter: the fewer programs and loop trips the faster; numpy does not care about registers.
        b = math.gcd(tile_volume, 128)
        return KernelConfig(b, b, 4, 1)
    if dtype == torch.float32:
        bm = math.gcd(tile_volume, 64)
        bn = math.gcd(tile_volume, 64 if head_dim <= 64 else 32)
        return KernelConfig(bm, bn, 4, 2)
    tma = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9
    bm = math.gcd(tile_volume, 128)
    bn = math.gcd(tile_volume, 128)
    # Measured on H100 at hunyuan-720p (3,3,3), d=128 bf16: TMA 128x128/8 warps/3 stages 27.7 ms,
    # pointer loads 128x64/8/3 39.5 ms, 128x128 pointer loads run out of shared memory.
    if not tma and bn == 128 and head_dim == 128:
        bn = 64
    warps = 8 if bm >= 128 else 4
    return KernelConfig(bm, bn, warps, 3, tma=tma)


def _tma_compatible(*tensors: torch.Tensor) -> bool:
    return all(x.data_ptr() % 16 == 0 and all((st * x.element_size()) % 16 == 0 for st in x.stride()[:-1])
               for x in tensors)


@triton.jit
def _online_softmax_step(acc, m_i, l_i, q, k, v, qk_scale, key_ok, MASKED: tl.constexpr,
                         DOT_PRECISION: tl.constexpr, UPCAST_DOTS: tl.constexpr):
    if UPCAST_DOTS:  # Triton's CPU interpreter multiplies bf16 bit patterns; exact products in fp32 instead
        qk = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision=DOT_PRECISION)
    else:
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
    if MASKED:
        qk = tl.where(key_ok, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    p = tl.math.exp2(qk * qk_scale - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    if UPCAST_DOTS:
        acc = tl.dot(p.to(v.dtype).to(tl.float32), v.to(tl.float32), acc, input_precision=DOT_PRECISION)
    else:
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
    return acc, m_new, l_i


@triton.jit
def _padding_ok(tile, offset, NH: tl.constexpr, NW: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
                NT: tl.constexpr, REM_T: tl.constexpr, REM_H: tl.constexpr, REM_W: tl.constexpr):
    """True where in-tile ``offset`` of key tile ``tile`` is a real token (not canvas padding)."""
    kt = tile // (NH * NW)
    kh = (tile // NW) % NH
    kw = tile % NW
    ot = offset // (TH * TW)
    oh = (offset // TW) % TH
    ow = offset % TW
    return (((kt < NT - 1) | (ot < REM_T)) & ((kh < NH - 1) | (oh < REM_H)) & ((kw < NW - 1) | (ow < REM_W)))


@triton.jit
def _text_keys(acc, m_i, l_i, q, K, V, TextMask, text_len, qk_scale, offs_n, offs_d, stride_kn, stride_vn,
               stride_tm, PADDED_LEN: tl.constexpr, BLOCK_N: tl.constexpr, HAS_TEXT_MASK: tl.constexpr,
               DOT_PRECISION: tl.constexpr, UPCAST_DOTS: tl.constexpr):
    for start in range(0, text_len, BLOCK_N):
        cols = start + offs_n
        in_text = cols < text_len
        key_ok = in_text
        if HAS_TEXT_MASK:
            key_ok = key_ok & (tl.load(TextMask + cols * stride_tm, mask=in_text, other=0) != 0)
        rows = PADDED_LEN + cols
        k = tl.load(K + rows[:, None] * stride_kn + offs_d[None, :], mask=in_text[:, None], other=0.0)
        v = tl.load(V + rows[:, None] * stride_vn + offs_d[None, :], mask=in_text[:, None], other=0.0)
        acc, m_i, l_i = _online_softmax_step(acc, m_i, l_i, q, k, v, qk_scale, key_ok[None, :], True, DOT_PRECISION,
                                             UPCAST_DOTS)
    return acc, m_i, l_i


@triton.jit
def _sta_fwd_kernel(
    Q, K, V, Out, Windows, HeadOrder, TextMask, KDesc, VDesc,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    stride_tb, stride_tm,
    qk_scale, heads, text_len, text_programs,
    NT: tl.constexpr, NH: tl.constexpr, NW: tl.constexpr,
    TT: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
    REM_T: tl.constexpr, REM_H: tl.constexpr, REM_W: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_PADDING: tl.constexpr, HAS_TEXT: tl.constexpr, HAS_TEXT_MASK: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST_DOTS: tl.constexpr, USE_TMA: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr,
):
    TILE_VOL: tl.constexpr = TT * TH * TW
    PADDED_LEN: tl.constexpr = NT * NH * NW * TILE_VOL
    VIDEO_Q_BLOCKS: tl.constexpr = PADDED_LEN // BLOCK_M
    BLOCKS_PER_TILE: tl.constexpr = TILE_VOL // BLOCK_N

    pid = tl.program_id(0)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)

    if pid < text_programs:
        text_q_blocks = tl.cdiv(text_len, BLOCK_M)
        bh = pid // text_q_blocks
        b = bh // heads
        h = bh % heads
        row0 = PADDED_LEN + (pid % text_q_blocks) * BLOCK_M
        is_text_query = True
    else:
        p = pid - text_programs
        slot = p // VIDEO_Q_BLOCKS
        b = slot // heads
        h = tl.load(HeadOrder + slot % heads)
        row0 = (p % VIDEO_Q_BLOCKS) * BLOCK_M
        is_text_query = False

    b = b.to(tl.int64)
    h = h.to(tl.int64)
    Qb = Q + b * stride_qb + h * stride_qh
    Kb = K + b * stride_kb + h * stride_kh
    Vb = V + b * stride_vb + h * stride_vh
    Ob = Out + b * stride_ob + h * stride_oh
    Tb = TextMask + b * stride_tb

    rows = row0 + offs_m
    row_ok = rows < PADDED_LEN + text_len
    q = tl.load(Qb + rows[:, None] * stride_qm + offs_d[None, :], mask=row_ok[:, None], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)

    if is_text_query:
        # Dense over every video key block; padding masked (index math) only if the canvas has any.
        for start in range(0, PADDED_LEN, BLOCK_N):
            cols = start + offs_n
            k = tl.load(Kb + cols[:, None] * stride_kn + offs_d[None, :])
            v = tl.load(Vb + cols[:, None] * stride_vn + offs_d[None, :])
            if HAS_PADDING:
                key_ok = _padding_ok(start // TILE_VOL, start % TILE_VOL + offs_n, NH, NW, TH, TW, NT,
                                     REM_T, REM_H, REM_W)
                acc, m_i, l_i = _online_softmax_step(acc, m_i, l_i, q, k, v, qk_scale, key_ok[None, :], True,
                                                     DOT_PRECISION, UPCAST_DOTS)
            else:
                acc, m_i, l_i = _online_softmax_step(acc, m_i, l_i, q, k, v, qk_scale, 0, False, DOT_PRECISION,
                                                     UPCAST_DOTS)
    else:
        tile = row0 // TILE_VOL
        ct = tile // (NH * NW)
        ch = (tile // NW) % NH
        cw = tile % NW
        wt = tl.minimum(tl.load(Windows + h * 3 + 0), NT)
        wh = tl.minimum(tl.load(Windows + h * 3 + 1), NH)
        ww = tl.minimum(tl.load(Windows + h * 3 + 2), NW)
        st = tl.minimum(tl.maximum(ct - (wt - 1) // 2, 0), NT - wt)
        sh = tl.minimum(tl.maximum(ch - (wh - 1) // 2, 0), NH - wh)
        sw = tl.minimum(tl.maximum(cw - (ww - 1) // 2, 0), NW - ww)
        blocks_per_span = ww * BLOCKS_PER_TILE
        for j in tl.range(0, wt * wh * blocks_per_span, warp_specialize=WARP_SPECIALIZE):
            span = j // blocks_per_span
            in_span = j - span * blocks_per_span
            kt = st + span // wh
            kh = sh + span % wh
            start = ((kt * NH + kh) * NW + sw) * TILE_VOL + in_span * BLOCK_N
            if USE_TMA:
                k = KDesc.load([b.to(tl.int32), h.to(tl.int32), start, 0]).reshape(BLOCK_N, HEAD_DIM)
                v = VDesc.load([b.to(tl.int32), h.to(tl.int32), start, 0]).reshape(BLOCK_N, HEAD_DIM)
            else:
                cols = start + offs_n
                k = tl.load(Kb + cols[:, None] * stride_kn + offs_d[None, :])
                v = tl.load(Vb + cols[:, None] * stride_vn + offs_d[None, :])
            if HAS_PADDING:
                key_ok = _padding_ok(start // TILE_VOL, start % TILE_VOL + offs_n, NH, NW, TH, TW, NT,
                                     REM_T, REM_H, REM_W)
                acc, m_i, l_i = _online_softmax_step(acc, m_i, l_i, q, k, v, qk_scale, key_ok[None, :], True,
                                                     DOT_PRECISION, UPCAST_DOTS)
            else:
                acc, m_i, l_i = _online_softmax_step(acc, m_i, l_i, q, k, v, qk_scale, 0, False, DOT_PRECISION,
                                                     UPCAST_DOTS)

    if HAS_TEXT:
        acc, m_i, l_i = _text_keys(acc, m_i, l_i, q, Kb, Vb, Tb, text_len, qk_scale, offs_n, offs_d, stride_kn,
                                   stride_vn, stride_tm, PADDED_LEN, BLOCK_N, HAS_TEXT_MASK, DOT_PRECISION,
                                   UPCAST_DOTS)

    out = acc / l_i[:, None]
    tl.store(Ob + rows[:, None] * stride_om + offs_d[None, :], out.to(Out.dtype.element_ty), mask=row_ok[:, None])


@functools.lru_cache(maxsize=16)
def _grid_on(grid, device: torch.device) -> torch.Tensor:
    return torch.tensor(grid, device=device, dtype=torch.int32)


def _head_order(windows: torch.Tensor, grid) -> torch.Tensor:
    """Heads sorted by clipped window volume, heaviest first (on device, no host sync)."""
    limits = _grid_on(tuple(grid), windows.device)
    volume = torch.minimum(windows, limits).prod(dim=1)
    return torch.argsort(volume, descending=True, stable=True).to(torch.int32)


def sta_triton_tiled(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, geometry: Geometry, windows: torch.Tensor,
                     text_len: int, text_mask: torch.Tensor | None, scale: float | None, *,
                     out: torch.Tensor | None = None, config: KernelConfig | None = None) -> torch.Tensor:
    """STA on tile-order inputs ``[padded video tiles | text]`` of shape ``(B, heads, padded_len + text_len, D)``.

    Args:
        windows: ``(heads, 3)`` int32 on q's device, entries >= 1 (clipped to the grid in the kernel).
        text_mask: ``(B, text_len)`` bool (True = real text key) or None (all text keys valid).
        out: optional preallocated output (same shape, dtype, device as q; last dim contiguous); tests
            poison it to prove every element is written.
        config: launch parameters; default from :func:`default_config`.

    Returns:
        Output in the same tile-order layout (padded video rows are finite but meaningless).
    """
    B, heads, L, D = q.shape
    if D not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head dim {D} is not supported by the triton backend; use one of {SUPPORTED_HEAD_DIMS}")
    if L != geometry.padded_len + text_len:
        raise ValueError(f"tiled sequence length {L} != padded video {geometry.padded_len} + text_len {text_len}")
    if tuple(windows.shape) != (heads, 3):
        raise ValueError(f"windows must be a ({heads}, 3) table, got shape {tuple(windows.shape)}")
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    windows = windows.to(device=q.device, dtype=torch.int32).contiguous()
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    elif out.shape != q.shape or out.dtype != q.dtype or out.device != q.device or out.stride(-1) != 1:
        raise ValueError(f"out must match q ({tuple(q.shape)}, {q.dtype}, {q.device}) with a contiguous last dim")
    if config is None:
        config = default_config(geometry.tile_volume, D, q.dtype, q.device.type == "cuda")
    tv = geometry.tile_volume
    if tv % config.block_m or tv % config.block_n:
        raise ValueError(f"block sizes ({config.block_m}, {config.block_n}) must divide the tile volume {tv}")

    if text_len and text_mask is not None:
        text_mask_arg = text_mask.to(device=q.device, dtype=torch.int8).contiguous()
        stride_tb, stride_tm = text_mask_arg.stride()
    else:
        text_mask_arg = windows  # never read
        stride_tb = stride_tm = 0
    head_order = _head_order(windows, geometry.grid)
    text_programs = B * heads * triton.cdiv(text_len, config.block_m)
    video_programs = B * heads * (geometry.padded_len // config.block_m)
    scale = D**-0.5 if scale is None else float(scale)
    (nt, nh, nw), (tt, th, tw) = geometry.grid, geometry.tile
    rem = [c - (n - 1) * t for c, n, t in zip(geometry.canvas, geometry.grid, geometry.tile)]

    if config.tma and not _tma_compatible(k, v):
        # Pointer loads hold K/V stages in shared memory less compactly: 128-wide key blocks overflow it.
        config = replace(config, tma=False, block_n=math.gcd(config.block_n, 64))
    if config.tma:
        block = [1, 1, config.block_n, D]
        k_desc = TensorDescriptor(k, list(k.shape), list(k.stride()), block)
        v_desc = TensorDescriptor(v, list(v.shape), list(v.stride()), block)
    else:
        k_desc, v_desc = k, v  # unused
    _sta_fwd_kernel[(text_programs + video_programs,)](
        q, k, v, out, windows, head_order, text_mask_arg, k_desc, v_desc,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
        stride_tb, stride_tm,
        scale * LOG2E, heads, text_len, text_programs,
        NT=nt, NH=nh, NW=nw, TT=tt, TH=th, TW=tw, REM_T=rem[0], REM_H=rem[1], REM_W=rem[2],
        HEAD_DIM=D, BLOCK_M=config.block_m, BLOCK_N=config.block_n,
        HAS_PADDING=not geometry.is_divisible, HAS_TEXT=text_len > 0,
        HAS_TEXT_MASK=text_len > 0 and text_mask is not None,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        UPCAST_DOTS=q.device.type != "cuda" and q.dtype == torch.bfloat16,
        USE_TMA=config.tma, WARP_SPECIALIZE=config.warp_specialize,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return out
