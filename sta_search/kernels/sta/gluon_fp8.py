"""Opt-in 8-bit STA forward for Hopper: a quantization pre-pass, then the warp-specialized Gluon kernel of
:mod:`.gluon_fwd` with both products on the 8-bit tensor cores (issue #18):

- ``sta_attention(..., precision="fp8")``: Q, K, V and P in e4m3 (the fastest);
- ``precision="int8"``: Q and K in int8 instead (SageAttention2's recipe: 7 bits for the scores instead of e4m3's
  3; QK^T exact in int32, then one int-to-float conversion per score), V and P in e4m3 as for ``fp8``.

Recipe (SageAttention / FA3-FP8), all scales float32:

- **pre-pass** (:func:`quantize_fp8`, one small Triton kernel per tensor, plus two torch reductions over
  tokens): reads q, k, v in either layout (natural T-major order with text before or after, or tile order)
  and writes three fp8 buffers in tile order ``[padded video tiles | text rounded up to 128 rows]``, zeros
  at canvas and text padding:
  - Q per block of 64 query rows (one consumer warpgroup's rows): ``q8 = q / sq``, ``sq = amax|q| / 448``
    (int8: ``amax / 127`` and rounded half away from zero; K likewise);
  - K smoothed then per key block of 128 rows: ``k' = k - mean_tokens(k)`` (per batch and head; subtracting
    one vector from every key shifts each query row's scores by the same constant, so softmax is unchanged
    exactly, and it removes the channel bias that makes K hard to quantize), ``k8 = k' / sk``;
  - V per channel over all tokens of the head, stored transposed ``[D, rows]``: Hopper's FP8 wgmma wants
    its B operand K-major, and for PV the reduction dimension is the token axis (FA3 transposes V in the
    kernel; here the pre-pass writes V^T), its columns in `v_column` order within each 128-key block (so P
    needs no shuffles on its way to the PV operand, below). The channel scale ``sv[d]`` multiplies output
    column ``d`` after the loop.
- **kernel**: ``S = (q8 k8^T) * sq * sk_j`` (the scales fold into the softmax scale of each block pair),
  fp32 online softmax as in the bf16 kernel but with ``P`` and its row sum ``l`` x 256 (an exponent shift;
  an exact power of two, so probabilities down to about 2^-14 keep a normal e4m3 exponent), ``P`` relabelled
  by `v_column` and rounded to e4m3 in the PV operand's layout without leaving its threads, PV in FP8 with fp32
  accumulators, ``out = acc * sv / l`` rounded to q's dtype (bf16 or fp16). The row sum is of the fp32
  probabilities (SageAttention does the same). Against the plain recipe (a separate x 256, P moved by
  shuffles) this takes 538 instead of 635 instructions per key block and warp, 6-8% of the kernel's time
  (bench/NOTES.md, session 11).

The natural-order entry reads natural order (the pre-pass gathers tiles) and writes the output straight to
natural order through the bf16 kernel's 5-D TMA boxes of whole tile planes; where those do not fit,
``sta_attention`` runs the tile-order entry behind tile/untile copies, as for the bf16 kernel
(``kernels.backends.runs_in_place``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from ..geometry import Geometry
from .tables import device_windows
from . import gluon_fwd
from .gluon_fwd import (BLOCK_N, LOG2E, QUERY_ROWS, WG_ROWS, _clamped_window, _mask_padding,
                        _pass_turn, _rescale, _softmax, _take_turn, _video_row, _walk_next, _walk_row)

FP8_MAX = 448.0  # largest finite e4m3 (float8_e4m3fn)
INT8_MAX = 127.0  # symmetric int8 (precision="int8": Q and K)
P_SCALE = 256.0  # probabilities in [0, 1] are stored as p * 256 in e4m3
TEXT_ROUND = 128  # text rows of the fp8 buffers are rounded up to whole query and key blocks


# ------------------------------------------------------------------------------------------- pre-pass
def v_column(position):
    """Where the key at ``position`` of a 128-key block sits among V^T's columns: bits 1, 2 and 3 rotated (bit 1 ->
    2 -> 3 -> 1), the relabelling under which the QK^T accumulator's column pattern across lanes is the PV
    operand's (`_p_operand`). Operators only, so it serves torch tensors and, as `_v_column`, the pre-pass kernel."""
    c = position % 128  # BLOCK_N
    return position - c + ((c & 0b1110001) | (((c >> 1) & 1) << 2) | (((c >> 2) & 1) << 3) | (((c >> 3) & 1) << 1))


_v_column = triton.jit(v_column)


@triton.jit
def _quantize_kernel(X, Out, Scale, Shift, ChannelScale, stride_b, stride_h, stride_s, heads, L8, text_len,
                     video_start, text_start, padded_len, NT: tl.constexpr, NH: tl.constexpr, NW: tl.constexpr,
                     TT: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr, CT: tl.constexpr, CH: tl.constexpr,
                     CW: tl.constexpr, D: tl.constexpr, ROWS: tl.constexpr, NATURAL: tl.constexpr,
                     MODE: tl.constexpr, INT8: tl.constexpr = False):
    """One block of ``ROWS`` rows of the tile-order fp8 buffer of one (batch, head).

    MODE 0 (Q): one scale per block. MODE 1 (K): ``Shift[bh]`` subtracted first, one scale per block.
    MODE 2 (V): divided by ``ChannelScale[bh, d]``, stored transposed ``Out[bh, d, row]``.
    INT8 (modes 0 and 1): ``amax / 127`` scales and int8 values rounded half away from zero.
    """
    blk = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // heads
    h = bh % heads
    rows = blk * ROWS + tl.arange(0, ROWS)
    offs_d = tl.arange(0, D)
    TILE_VOL: tl.constexpr = TT * TH * TW
    video = rows < padded_len
    tile = rows // TILE_VOL
    within = rows % TILE_VOL
    t = (tile // (NH * NW)) * TT + within // (TH * TW)
    y = ((tile // NW) % NH) * TH + (within // TW) % TH
    x = (tile % NW) * TW + within % TW
    real_video = video & (t < CT) & (y < CH) & (x < CW)
    text_row = rows - padded_len
    real_text = (rows >= padded_len) & (text_row < text_len)
    if NATURAL:
        token = tl.where(video, video_start + (t * CH + y) * CW + x, text_start + text_row)
    else:  # tile order in, text after the padded video
        token = rows
    real = real_video | real_text
    token = tl.where(real, token, 0).to(tl.int64)
    ptrs = X + b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h + token[:, None] * stride_s + offs_d[None, :]
    val = tl.load(ptrs, mask=real[:, None], other=0.0).to(tl.float32)
    if MODE == 1:
        val = val - tl.load(Shift + bh * D + offs_d)[None, :]
        val = tl.where(real[:, None], val, 0.0)
    if MODE == 2:
        val = val / tl.load(ChannelScale + bh * D + offs_d)[None, :]
        q8 = val.to(Out.dtype.element_ty)
        tl.store(Out + bh.to(tl.int64) * D * L8 + offs_d[None, :].to(tl.int64) * L8 + _v_column(rows)[:, None], q8)
    else:
        amax = tl.max(tl.max(tl.abs(val), 1), 0)
        if INT8:
            scale = tl.maximum(amax, 1e-30) / 127.0
            x = val / scale
            x = tl.where(x >= 0, x + 0.5, x - 0.5)
            q8 = tl.minimum(tl.maximum(x, -127.0), 127.0).to(tl.int8)
        else:
            scale = tl.maximum(amax, 1e-30) / 448.0
            q8 = (val / scale).to(Out.dtype.element_ty)
        tl.store(Out + bh.to(tl.int64) * L8 * D + rows[:, None].to(tl.int64) * D + offs_d[None, :], q8)
        n_blocks = L8 // ROWS
        tl.store(Scale + bh * n_blocks + blk, scale)


def fp8_rows(geometry: Geometry, text_len: int) -> int:
    """Rows of the tile-order fp8 buffers: the padded video, then the text rounded up to whole blocks."""
    return geometry.padded_len + -(-text_len // TEXT_ROUND) * TEXT_ROUND


def _token_views(x, geometry: Geometry, text_len: int, layout: str, text_first: bool):
    """Strides and starts the pre-pass reads ``x`` (B, heads, S, D) with (last dim made contiguous)."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    if layout == "natural":
        video_start, text_start = (text_len, 0) if text_first else (0, geometry.video_len)
    else:
        video_start, text_start = 0, geometry.padded_len
    return x, video_start, text_start


def quantize_fp8(q, k, v, geometry: Geometry, text_len: int, *, layout: str = "natural", text_first: bool = False,
                 qk_int8: bool = False):
    """The pre-pass: ``(q8, k8, v8t, q_scale, k_scale, v_scale)`` (see the module docstring).

    ``q8``, ``k8``: ``(B*heads, L8, D)`` e4m3 (int8 with ``qk_int8``: scales ``amax / 127``) in tile order
    (``L8 = fp8_rows``), ``v8t``: ``(B*heads, D, L8)`` e4m3;
    ``q_scale``: ``(B*heads, L8 // 64)``, ``k_scale``: ``(B*heads, L8 // 128)``, ``v_scale``: ``(B*heads, D)``.
    Triton kernel on CUDA (or CPU under ``TRITON_INTERPRET=1``).
    """
    B, heads, S, D = q.shape
    L8 = fp8_rows(geometry, text_len)
    BH = B * heads
    dev = q.device
    (nt, nh, nw), (tt, th, tw), (ct, ch, cw) = geometry.grid, geometry.tile, geometry.canvas
    f8 = torch.float8_e4m3fn
    qk_dtype = torch.int8 if qk_int8 else f8
    q8 = torch.empty(BH, L8, D, device=dev, dtype=qk_dtype)
    k8 = torch.empty(BH, L8, D, device=dev, dtype=qk_dtype)
    v8t = torch.empty(BH, D, L8, device=dev, dtype=f8)
    q_scale = torch.empty(BH, L8 // QUERY_ROWS, device=dev, dtype=torch.float32)
    k_scale = torch.empty(BH, L8 // BLOCK_N, device=dev, dtype=torch.float32)
    real = _real_tokens(k, geometry, text_len, layout, text_first)
    # Per (batch, head) over real tokens: K's mean (the smoothing shift) and V's channel amax (its scale).
    k_mean = (k[:, :, real].mean(dim=2, dtype=torch.float32) if real is not None
              else k.mean(dim=2, dtype=torch.float32)).reshape(BH, D).contiguous()
    v_min, v_max = torch.aminmax(v[:, :, real] if real is not None else v, dim=2)  # one pass, no |v| copy
    v_amax = torch.maximum(v_max, -v_min).float().reshape(BH, D)
    v_scale = (v_amax.clamp_min(1e-30) / FP8_MAX).contiguous()
    for x, out, scale, rows, mode in ((q, q8, q_scale, QUERY_ROWS, 0), (k, k8, k_scale, BLOCK_N, 1),
                                      (v, v8t, k_scale, BLOCK_N, 2)):
        x, video_start, text_start = _token_views(x, geometry, text_len, layout, text_first)
        _quantize_kernel[(L8 // rows, BH)](
            x, out, scale, k_mean, v_scale, x.stride(0), x.stride(1), x.stride(2), heads, L8, text_len, video_start,
            text_start, geometry.padded_len, NT=nt, NH=nh, NW=nw, TT=tt, TH=th, TW=tw, CT=ct, CH=ch, CW=cw, D=D,
            ROWS=rows, NATURAL=layout == "natural", MODE=mode, INT8=qk_int8 and mode < 2,
            num_warps=8 if rows == 128 else 4)
    return q8, k8, v8t, q_scale, k_scale, v_scale


def _real_tokens(x, geometry: Geometry, text_len: int, layout: str, text_first: bool):
    """Index of the real tokens along dim 2 (None: all of them), for the per-head reductions."""
    if layout == "natural":
        return None
    idx = torch.cat([torch.nonzero(geometry.key_valid()).flatten(),
                     torch.arange(geometry.padded_len, geometry.padded_len + text_len)])
    return idx.to(x.device)


def quantize_fp8_torch(q, k, v, geometry: Geometry, text_len: int, *, text_first: bool = False,
                       qk_int8: bool = False):
    """The same pre-pass in plain torch ops on natural-order inputs (the tests' independent reference)."""
    from ..geometry import to_tiles

    B, heads, S, D = q.shape
    L8 = fp8_rows(geometry, text_len)
    V = geometry.video_len
    video, text = (slice(text_len, None), slice(0, text_len)) if text_first else (slice(0, V), slice(V, None))

    def tile_rows(x):
        rows = torch.zeros(B, heads, L8, D, dtype=torch.float32, device=x.device)
        rows[:, :, : geometry.padded_len] = to_tiles(geometry, x[:, :, video].float())
        rows[:, :, geometry.padded_len: geometry.padded_len + text_len] = x[:, :, text].float()
        return rows.reshape(B * heads, L8, D)

    def blocks(x, n):
        xb = x.reshape(B * heads, L8 // n, n, D)
        scale = xb.abs().amax(dim=(2, 3)).clamp_min(1e-30) / (INT8_MAX if qk_int8 else FP8_MAX)
        xb = xb / scale[:, :, None, None]
        xb = (xb + 0.5 * xb.sign()).trunc().clamp(-INT8_MAX, INT8_MAX).to(torch.int8) if qk_int8 else \
            xb.to(torch.float8_e4m3fn)
        return xb.reshape(B * heads, L8, D), scale

    q8, q_scale = blocks(tile_rows(q), QUERY_ROWS)
    k_mean = k.float().mean(dim=2).reshape(B * heads, 1, D)
    kr = tile_rows(k)
    valid = torch.zeros(L8, dtype=torch.bool, device=k.device)
    valid[: geometry.padded_len] = geometry.key_valid().to(k.device)
    valid[geometry.padded_len: geometry.padded_len + text_len] = True
    k8, k_scale = blocks(torch.where(valid[None, :, None], kr - k_mean, 0.0), BLOCK_N)
    v_scale = v.abs().amax(dim=2).float().reshape(B * heads, D).clamp_min(1e-30) / FP8_MAX
    v8t = (tile_rows(v) / v_scale[:, None, :]).to(torch.float8_e4m3fn).transpose(1, 2).contiguous()
    v8t = v8t[:, :, v_column_order(L8, v8t.device)].contiguous()
    return q8, k8, v8t, q_scale, k_scale, v_scale


def v_column_order(rows: int, device=None) -> torch.Tensor:
    """Indices with ``natural[..., order]`` = V^T's columns in `v_column` order, for ``rows`` columns."""
    positions = torch.arange(rows, device=device)
    order = torch.empty_like(positions)
    order[v_column(positions)] = positions
    return order


# --------------------------------------------------------------------------------------------- kernel
@gluon.jit
def _producer_fp8(q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bar, ready, empty, bh, q_row, padded_len,
                  text_query, n_text, n_total, n_first, spans, last_spans, st, sh, sw, wh, ww, NH: gl.constexpr,
                  NW: gl.constexpr, TT: gl.constexpr, TH: gl.constexpr, TW: gl.constexpr, BPT_LAST: gl.constexpr,
                  BLOCK_N: gl.constexpr, STAGES: gl.constexpr):
    TILE_VOL: gl.constexpr = TT * TH * TW
    mbarrier.expect(q_bar, 2 * WG_ROWS * q_smem.shape[2])
    for i in gl.static_range(2):
        tma.async_copy_global_to_shared(q_desc, [bh, q_row + i * WG_ROWS, 0], q_bar,
                                        q_smem.index(i).reshape(q_desc.block_type.shape))
    kv_bytes: gl.constexpr = 2 * BLOCK_N * k_smem.shape[2]  # one byte an element
    for it in range(n_total):
        s = it % STAGES
        mbarrier.wait(empty.index(s), ((it // STAGES) & 1) ^ 1)
        mbarrier.expect(ready.index(s), kv_bytes)
        if it < n_text:
            row = padded_len + it * BLOCK_N
        else:
            row = _video_row(it - n_text, n_first, spans, last_spans, st, sh, sw, wh, ww, text_query, NH, NW,
                             TILE_VOL, BLOCK_N, TILE_VOL // BLOCK_N, BPT_LAST)
        tma.async_copy_global_to_shared(k_desc, [bh, row, 0], ready.index(s),
                                        k_smem.index(s).reshape(k_desc.block_type.shape))
        tma.async_copy_global_to_shared(v_desc, [bh, 0, row], ready.index(s),
                                        v_smem.index(s).reshape(v_desc.block_type.shape))


@gluon.jit
def _p_operand(p, p_layout: gl.constexpr, fp8: gl.constexpr):
    """P (fp32, already x 256, in the QK^T accumulator's layout) rounded to e4m3 in the PV wgmma's A-operand layout.

    The columns are first relabelled by :func:`v_column` (bits 1, 2, 3 of the key position rotated), which maps the
    accumulator's lane-to-column pattern onto the operand's, so the move only renames registers (no shuffles); the
    pre-pass wrote V^T's columns in the same order, so PV sums the same products."""
    ROWS: gl.constexpr = p.shape[0]
    p = p.reshape([ROWS, 2, 2, 2, 2, 2, 2, 2]).permute((0, 1, 2, 3, 5, 6, 4, 7)).reshape([ROWS, p.shape[1]])
    return gl.convert_layout(p, p_layout).to(fp8)


@gluon.jit
def _scores(s_acc, QK_INT8: gl.constexpr):
    """QK^T's accumulator as fp32 (exact from int32: the sums stay below 2^24)."""
    if QK_INT8:
        s = s_acc.to(gl.float32)
    else:
        s = s_acc
    return s


@gluon.jit
def _consumer_fp8(o_desc, ot_desc, q_smem, k_smem, v_smem, o_smem, q_bar, ready, empty, turn, TextMask, QScale, KScale,
                  VScale, bh, b, q_row, q_load, padded_len, n_qblocks, n_kblocks, text_query, n_text, n_total, text_len,
                  stride_tb, stride_tm, qk_scale, n_first, spans, last_spans, st, sh, sw, wh, ww,
                  NT: gl.constexpr, NH: gl.constexpr, NW: gl.constexpr, TT: gl.constexpr, TH: gl.constexpr,
                  TW: gl.constexpr, REM_T: gl.constexpr, REM_H: gl.constexpr, REM_W: gl.constexpr,
                  BPT_LAST: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, HAS_PADDING: gl.constexpr,
                  HAS_TEXT_MASK: gl.constexpr, OUT_NATURAL: gl.constexpr, WG: gl.constexpr,
                  PINGPONG: gl.constexpr, SLACK: gl.constexpr, QK_INT8: gl.constexpr):
    TILE_VOL: gl.constexpr = TT * TH * TW
    HEAD_DIM: gl.constexpr = q_smem.shape[2]
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 32])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HEAD_DIM, 32])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=4)
    o_rows: gl.constexpr = gl.SliceLayout(1, o_layout)
    fp8: gl.constexpr = v_smem.dtype
    # P x 2^(8 - SLACK) (exact power of two; P <= 2^SLACK): at most 256 (e4m3 max 448), and probabilities down to
    # ~2^(SLACK - 14) stay normal in e4m3
    LOG2_P_MUL: gl.constexpr = 8.0 - SLACK

    q = q_smem.index(WG)
    # This warpgroup's 64 query rows start at row q_load + WG * 64 of the fp8 buffer: one Q scale.
    q_scale = qk_scale * gl.load(QScale + bh * n_qblocks + q_load // WG_ROWS + WG)
    k_scales = KScale + bh * n_kblocks
    m_i = gl.full([WG_ROWS], float("-inf"), gl.float32, gl.SliceLayout(1, s_layout))
    l_i = gl.zeros([WG_ROWS], gl.float32, gl.SliceLayout(1, s_layout))
    acc = gl.zeros([WG_ROWS, HEAD_DIM], gl.float32, o_layout)
    # QK_INT8: int8 Q and K, QK^T exact in int32 (|sum| <= 127^2 * 128 < 2^24, so converting to fp32 is exact too)
    s_zero = gl.zeros([WG_ROWS, BLOCK_N], gl.int32 if QK_INT8 else gl.float32, s_layout)
    offs_n = gl.arange(0, BLOCK_N, gl.SliceLayout(0, s_layout))
    mbarrier.wait(q_bar, 0)

    # Text key blocks (bounds and key-padding masked), one at a time.
    for it in range(n_text):
        s = it % STAGES
        scale_j = q_scale * gl.load(k_scales + padded_len // BLOCK_N + it)
        mbarrier.wait(ready.index(s), (it // STAGES) & 1)
        s_acc = warpgroup_mma(q, k_smem.index(s).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        s_acc = _scores(warpgroup_mma_wait(0, deps=(s_acc, )), QK_INT8)
        cols = it * BLOCK_N + offs_n
        key_ok = cols < text_len
        if HAS_TEXT_MASK:
            key_ok = key_ok & (gl.load(TextMask + b * stride_tb + cols * stride_tm, mask=key_ok, other=0) != 0)
        p, alpha, m_i, l_i = _softmax(s_acc, m_i, l_i, scale_j, gl.expand_dims(key_ok, 0), True, LOG2_P_MUL)
        acc = acc * gl.expand_dims(gl.convert_layout(alpha, o_rows), 1)
        acc = warpgroup_mma(_p_operand(p, p_layout, fp8), v_smem.index(s).permute((1, 0)), acc,
                            is_async=True)
        acc = warpgroup_mma_wait(0, deps=(acc, ))
        mbarrier.arrive(empty.index(s), count=1)

    # Video key blocks: QK^T of block j is issued before PV of block j - 1; softmax j overlaps that PV.
    BPT: gl.constexpr = TILE_VOL // BLOCK_N
    if n_total > n_text:
        s = n_text % STAGES
        walk = (0, 0, 0, 0)  # _video_row's walk, stepped without divisions (the key block scales are per row)
        row = _walk_row(walk, st, sh, sw, NH, NW, TILE_VOL, BLOCK_N)
        scale_j = q_scale * gl.load(k_scales + row // BLOCK_N)
        mbarrier.wait(ready.index(s), (n_text // STAGES) & 1)
        s_acc = warpgroup_mma(q, k_smem.index(s).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        s_acc = _scores(warpgroup_mma_wait(0, deps=(s_acc, )), QK_INT8)
        if HAS_PADDING:
            s_acc = _mask_padding(s_acc, row, offs_n, NT, NH, NW, TT, TH, TW, REM_T, REM_H, REM_W)
        p, alpha, m_i, l_i = _softmax(s_acc, m_i, l_i, scale_j, 0, False, LOG2_P_MUL, SLACK)
        acc = _rescale(acc, alpha, o_rows, SLACK)
        s_prev = s
        for it in range(n_text + 1, n_total):
            s = it % STAGES
            walk = _walk_next(it - n_text - 1, walk, n_first, wh, ww, BPT, BPT_LAST)
            row = _walk_row(walk, st, sh, sw, NH, NW, TILE_VOL, BLOCK_N)
            k_scale = gl.load(k_scales + row // BLOCK_N)  # in flight while this block's K arrives
            mbarrier.wait(ready.index(s), (it // STAGES) & 1)
            if PINGPONG:  # the warpgroups take turns to issue (gluon_fwd._consumer)
                _take_turn(turn, it - n_text - 1, WG)
            s_acc = warpgroup_mma(q, k_smem.index(s).permute((1, 0)), s_zero, use_acc=False, is_async=True)
            # P of the previous block is rounded here, under this block's QK^T: its e4m3 bytes then go straight
            # into the PV wgmma's registers (carried over the loop edge they would be unpacked and repacked)
            acc = warpgroup_mma(_p_operand(p, p_layout, fp8), v_smem.index(s_prev).permute((1, 0)), acc,
                                is_async=True)
            if PINGPONG:
                _pass_turn(turn, WG)
            s_acc = _scores(warpgroup_mma_wait(1, deps=(s_acc, )), QK_INT8)
            if HAS_PADDING:
                s_acc = _mask_padding(s_acc, row, offs_n, NT, NH, NW, TT, TH, TW, REM_T, REM_H, REM_W)
            p, alpha, m_i, l_i = _softmax(s_acc, m_i, l_i, q_scale * k_scale, 0, False, LOG2_P_MUL, SLACK)
            acc = warpgroup_mma_wait(0, deps=(acc, ))
            mbarrier.arrive(empty.index(s_prev), count=1)
            acc = _rescale(acc, alpha, o_rows, SLACK)
            s_prev = s
        acc = warpgroup_mma(_p_operand(p, p_layout, fp8), v_smem.index(s_prev).permute((1, 0)), acc, is_async=True)
        acc = warpgroup_mma_wait(0, deps=(acc, ))
        mbarrier.arrive(empty.index(s_prev), count=1)

    l_i = gl.where(l_i == 0.0, 1.0, l_i)  # query blocks of canvas padding (no keys): finite zeros
    v_scale = gl.load(VScale + bh * HEAD_DIM + gl.arange(0, HEAD_DIM, gl.SliceLayout(0, o_layout)))
    out = acc * gl.expand_dims(v_scale, 0) / gl.expand_dims(gl.convert_layout(l_i, o_rows), 1)  # P, l: x 256
    o_tile = o_smem.index(WG)
    o_tile.store(out.to(o_smem.dtype))
    fence_async_shared()
    if text_query:  # rows past the text are dropped by the descriptor's bounds
        tma.async_copy_shared_to_global(ot_desc, [bh, q_row + WG * WG_ROWS, 0],
                                        o_tile.reshape(ot_desc.block_type.shape))
    elif OUT_NATURAL:  # rows past the canvas edge are dropped by the descriptor's bounds
        row = q_row + WG * WG_ROWS
        tile = row // TILE_VOL
        t0 = (tile // (NH * NW)) * TT + (row % TILE_VOL) // (TH * TW)
        tma.async_copy_shared_to_global(o_desc, [bh, t0, ((tile // NW) % NH) * TH, (tile % NW) * TW, 0],
                                        o_tile.reshape(o_desc.block_type.shape))
    else:
        tma.async_copy_shared_to_global(o_desc, [bh, q_row + WG * WG_ROWS, 0], o_tile.reshape(o_desc.block_type.shape))
    tma.store_wait(0)


@gluon.jit
def _sta_fwd_gluon_fp8_kernel(
    q_desc, k_desc, v_desc, o_desc, ot_desc, QScale, KScale, VScale, Windows, HeadOrder, TextMask,
    stride_tb, stride_tm, qk_scale, heads, text_len, text_programs, n_qblocks, n_kblocks,
    NT: gl.constexpr, NH: gl.constexpr, NW: gl.constexpr, TT: gl.constexpr, TH: gl.constexpr, TW: gl.constexpr,
    REM_T: gl.constexpr, REM_H: gl.constexpr, REM_W: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr,
    STAGES: gl.constexpr, HAS_PADDING: gl.constexpr, HAS_TEXT_MASK: gl.constexpr, OUT_NATURAL: gl.constexpr,
    PRODUCER_REGS: gl.constexpr, CONSUMER_REGS: gl.constexpr, PINGPONG: gl.constexpr = False,
    SLACK: gl.constexpr = 0.0, QK_INT8: gl.constexpr = False,
):
    BLOCK_M: gl.constexpr = 2 * WG_ROWS
    TILE_VOL: gl.constexpr = TT * TH * TW
    Q_PER_TILE: gl.constexpr = TILE_VOL // BLOCK_M
    VIDEO_Q_BLOCKS: gl.constexpr = NT * NH * NW * Q_PER_TILE
    BPT: gl.constexpr = TILE_VOL // BLOCK_N
    BPT_LAST: gl.constexpr = (REM_T * TH * TW + BLOCK_N - 1) // BLOCK_N
    Q_LAST: gl.constexpr = (REM_T * TH * TW + BLOCK_M - 1) // BLOCK_M
    padded_len: gl.constexpr = NT * NH * NW * TILE_VOL

    pid = gl.program_id(0)
    text_query = pid < text_programs
    n_text = gl.cdiv(text_len, BLOCK_N)
    if text_query:  # every text block, then every (non-padding) video block
        text_q_blocks = gl.cdiv(text_len, BLOCK_M)
        bh = pid // text_q_blocks
        q_row = (pid % text_q_blocks) * BLOCK_M  # within the text
        n_first = (NT - 1) * NH * NW * BPT
        spans = NT * NH
        last_spans = NH
        st = 0
        sh = 0
        sw = 0
        wh = NH
        ww = NW
        n_total = n_text + n_first + NH * NW * BPT_LAST
        q_load = padded_len + q_row
    else:  # the head's window around the query tile (clamped to the grid), then the text
        p = pid - text_programs
        slot = p // VIDEO_Q_BLOCKS
        h = gl.load(HeadOrder + slot % heads)
        bh = (slot // heads) * heads + h
        tile = (p % VIDEO_Q_BLOCKS) // Q_PER_TILE
        q_sub = p % Q_PER_TILE
        q_row = tile * TILE_VOL + q_sub * BLOCK_M
        ct = tile // (NH * NW)
        ch = (tile // NW) % NH
        cw = tile % NW
        st, sh, sw, wh, ww, spans, last_spans, n_first = _clamped_window(Windows, h, ct, ch, cw, NT, NH, NW, BPT)
        q_padded = (ct == NT - 1) & (q_sub >= Q_LAST)
        n_text = gl.where(q_padded, 0, n_text)
        n_total = gl.where(q_padded, 0, n_text + n_first + last_spans * ww * BPT_LAST)
        q_load = q_row
    b = bh // heads

    qk_dtype: gl.constexpr = gl.int8 if QK_INT8 else gl.float8e4nv
    qk_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, HEAD_DIM], qk_dtype)
    vt_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([HEAD_DIM, BLOCK_N], gl.float8e4nv)
    o_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([WG_ROWS, HEAD_DIM], o_desc.dtype)
    q_smem = gl.allocate_shared_memory(qk_dtype, [2, WG_ROWS, HEAD_DIM], qk_layout)
    k_smem = gl.allocate_shared_memory(qk_dtype, [STAGES, BLOCK_N, HEAD_DIM], qk_layout)
    v_smem = gl.allocate_shared_memory(gl.float8e4nv, [STAGES, HEAD_DIM, BLOCK_N], vt_layout)
    o_smem = gl.allocate_shared_memory(o_desc.dtype, [2, WG_ROWS, HEAD_DIM], o_layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    turn = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())  # PINGPONG: whose turn to issue
    mbarrier.init(q_bar, count=1)
    mbarrier.init(turn.index(0), count=1)
    mbarrier.init(turn.index(1), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=2)  # one arrival per consumer warpgroup
    fence_async_shared()

    gl.warp_specialize([
        (_consumer_fp8, (o_desc, ot_desc, q_smem, k_smem, v_smem, o_smem, q_bar, ready, empty, turn, TextMask, QScale,
                         KScale, VScale, bh, b, q_row, q_load, padded_len, n_qblocks, n_kblocks, text_query, n_text, n_total,
                         text_len, stride_tb, stride_tm, qk_scale, n_first, spans, last_spans, st, sh, sw, wh, ww,
                         NT, NH, NW, TT, TH, TW, REM_T, REM_H, REM_W, BPT_LAST, BLOCK_N, STAGES, HAS_PADDING,
                         HAS_TEXT_MASK, OUT_NATURAL, 0, PINGPONG, SLACK, QK_INT8)),
        (_consumer_fp8, (o_desc, ot_desc, q_smem, k_smem, v_smem, o_smem, q_bar, ready, empty, turn, TextMask, QScale,
                         KScale, VScale, bh, b, q_row, q_load, padded_len, n_qblocks, n_kblocks, text_query, n_text, n_total,
                         text_len, stride_tb, stride_tm, qk_scale, n_first, spans, last_spans, st, sh, sw, wh, ww,
                         NT, NH, NW, TT, TH, TW, REM_T, REM_H, REM_W, BPT_LAST, BLOCK_N, STAGES, HAS_PADDING,
                         HAS_TEXT_MASK, OUT_NATURAL, 1, PINGPONG, SLACK, QK_INT8)),
        (_producer_fp8, (q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bar, ready, empty, bh, q_load,
                         padded_len, text_query, n_text, n_total, n_first, spans, last_spans, st, sh, sw, wh, ww,
                         NH, NW, TT, TH, TW, BPT_LAST, BLOCK_N, STAGES)),
    ], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])


sta_fwd_gluon_fp8_kernel = _sta_fwd_gluon_fp8_kernel  # the JIT function, for tools that compile it without launching


# ----------------------------------------------------------------------------------------------- host side
#: Head dims the FP8 kernel accepts (64: verified on an H200 in session 12 by
#: tests/test_kernel_fp8.py::test_fp8_matches_float64_reference_in_both_layouts[*-d64]).
HEAD_DIMS = (64, 128)

#: ``gluon_fwd._softmax``'s lazy rescaling for the FP8 kernel (log2 units). P is stored times 2^(8 - SLACK), so a
#: larger slack trades small probabilities (flushed below ~2^(SLACK - 17)) for fewer accumulator rescales.
RESCALE_SLACK = 0.0


def _fp8_inputs_ok(q: torch.Tensor, geometry: Geometry) -> tuple[bool, str]:
    """What the FP8 kernel needs beyond the bf16 Gluon kernel's checks; why not. Called by ``kernels.backends``
    only (``can_run_gluon_fp8``)."""
    if not hasattr(torch, "float8_e4m3fn"):
        return False, f"torch {torch.__version__} has no float8_e4m3fn"
    if q.shape[-1] not in HEAD_DIMS:
        return False, f"head dim {q.shape[-1]} (the FP8 kernel runs {' and '.join(map(str, HEAD_DIMS))})"
    return True, "ok"


def _f8_descriptor(x: torch.Tensor, block) -> TensorDescriptor:
    dtype = gl.int8 if x.dtype == torch.int8 else gl.float8e4nv
    return TensorDescriptor(x, list(x.shape), list(x.stride()), block, gl.NVMMASharedLayout.get_default_for(block, dtype))


def _run(q, k, v, geometry: Geometry, windows, text_len, text_mask, scale, *, layout, text_first, stages,
         quantized=None, out=None, qk_int8: bool = False):
    """The 8-bit kernel on ``quantize_fp8``'s buffers (``quantized``, else quantized here with ``qk_int8``); QK^T
    runs in int8 or e4m3 as those buffers hold Q and K."""
    from .triton_fwd import _head_order

    gluon_fwd.require_runnable(q, geometry, natural=layout == "natural", kernel="gluon fp8")
    ok, why = _fp8_inputs_ok(q, geometry)
    if not ok:
        raise ValueError(f"the gluon fp8 STA kernel cannot run: {why}")
    B, heads, S, D = q.shape
    q8, k8, v8t, q_scale, k_scale, v_scale = quantized or quantize_fp8(q, k, v, geometry, text_len, layout=layout,
                                                                       text_first=text_first, qk_int8=qk_int8)
    L8 = q8.shape[1]
    if out is None:
        out = torch.empty(B, heads, S, D, device=q.device, dtype=q.dtype)
    elif out.shape != q.shape or out.dtype != q.dtype or out.device != q.device or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {q.dtype} tensor of q's shape {tuple(q.shape)} on {q.device}")
    out_natural = layout == "natural"
    if out_natural:  # video rows through the bf16 kernel's 5-D boxes of whole tile planes
        video_start, text_start = (text_len, 0) if text_first else (0, geometry.video_len)
        o_desc = gluon_fwd._canvas_descriptor(out, geometry, video_start, QUERY_ROWS)
    else:
        text_start = geometry.padded_len
        o_desc = gluon_fwd._rows_descriptor(out, 0, geometry.padded_len, QUERY_ROWS)
    # without text the descriptor is never read: any one of the right block shape (as gluon_fwd does)
    ot_desc = (gluon_fwd._rows_descriptor(out, text_start, text_len, QUERY_ROWS) if text_len
               else gluon_fwd._rows_descriptor(out, 0, S, QUERY_ROWS))
    windows = device_windows(windows, q.device)
    if text_len and text_mask is not None:
        mask_arg = text_mask.to(device=q.device, dtype=torch.int8).contiguous()
        stride_tb, stride_tm = mask_arg.stride()
    else:
        mask_arg, stride_tb, stride_tm = windows, 0, 0
    (nt, nh, nw), (tt, th, tw) = geometry.grid, geometry.tile
    rem = [c - (n - 1) * t for c, n, t in zip(geometry.canvas, geometry.grid, geometry.tile)]
    text_programs = B * heads * triton.cdiv(text_len, 2 * QUERY_ROWS)
    video_programs = B * heads * (geometry.padded_len // (2 * QUERY_ROWS))
    scale = D**-0.5 if scale is None else float(scale)
    _sta_fwd_gluon_fp8_kernel[(text_programs + video_programs,)](
        _f8_descriptor(q8, [1, QUERY_ROWS, D]), _f8_descriptor(k8, [1, BLOCK_N, D]), _f8_descriptor(v8t, [1, D, BLOCK_N]),
        o_desc, ot_desc, q_scale, k_scale, v_scale, windows, _head_order(windows, geometry.grid), mask_arg,
        stride_tb, stride_tm, scale * LOG2E, heads, text_len, text_programs, L8 // QUERY_ROWS, L8 // BLOCK_N,
        NT=nt, NH=nh, NW=nw, TT=tt, TH=th, TW=tw, REM_T=rem[0], REM_H=rem[1], REM_W=rem[2], HEAD_DIM=D,
        BLOCK_N=BLOCK_N, STAGES=stages, HAS_PADDING=not geometry.is_divisible,
        HAS_TEXT_MASK=bool(text_len) and text_mask is not None, OUT_NATURAL=out_natural, PRODUCER_REGS=24,
        CONSUMER_REGS=240, PINGPONG=gluon_fwd.DEFAULT_PINGPONG, SLACK=float(RESCALE_SLACK),
        QK_INT8=q8.dtype == torch.int8, num_warps=4,
    )
    return out


def sta_gluon_fp8_natural(q, k, v, geometry: Geometry, windows, text_len, text_first, text_mask, scale, *,
                          out=None, stages: int = 3, qk_int8: bool = False):
    """FP8 STA on natural-order tokens ``(B, heads, T*H*W + text_len, D)``; output in q's dtype and layout
    (written into ``out`` when given: contiguous, q's shape and dtype). ``qk_int8``: QK^T from int8 Q and K
    (``precision="int8"``)."""
    if q.shape[2] != geometry.video_len + text_len:
        raise ValueError(f"sequence length {q.shape[2]} != canvas volume {geometry.video_len} + text_len {text_len}")
    return _run(q, k, v, geometry, windows, text_len, text_mask, scale, layout="natural", text_first=text_first,
                stages=stages, out=out, qk_int8=qk_int8)


def sta_gluon_fp8_tiled(q, k, v, geometry: Geometry, windows, text_len, text_mask, scale, *, out=None,
                        stages: int = 3, qk_int8: bool = False):
    """FP8 STA on tile-order tokens ``[padded video tiles | text]``; padded rows of the output are unspecified."""
    if q.shape[2] != geometry.padded_len + text_len:
        raise ValueError(f"tiled sequence length {q.shape[2]} != padded video {geometry.padded_len} + text_len "
                         f"{text_len}")
    return _run(q, k, v, geometry, windows, text_len, text_mask, scale, layout="tiled", text_first=False,
                stages=stages, out=out, qk_int8=qk_int8)


def sta_gluon_int8_natural(q, k, v, geometry: Geometry, windows, text_len, text_first, text_mask, scale, *,
                           out=None, stages: int = 3):
    """:func:`sta_gluon_fp8_natural` with QK^T from int8 Q and K (``precision="int8"``)."""
    return sta_gluon_fp8_natural(q, k, v, geometry, windows, text_len, text_first, text_mask, scale, out=out,
                                 stages=stages, qk_int8=True)


def sta_gluon_int8_tiled(q, k, v, geometry: Geometry, windows, text_len, text_mask, scale, *, out=None,
                         stages: int = 3):
    """:func:`sta_gluon_fp8_tiled` with QK^T from int8 Q and K (``precision="int8"``)."""
    return sta_gluon_fp8_tiled(q, k, v, geometry, windows, text_len, text_mask, scale, out=out, stages=stages,
                               qk_int8=True)
