"""Sliding Tile Attention forward pass in Gluon for Hopper (sm_90): warp-specialized, FA3-style.

Same contract and program order as :mod:`.triton_fwd` on tile-order inputs (``sta_triton_tiled``), but the
pipeline is written out instead of left to Triton's scheduler (Triton 3.6 emits one warpgroup-synchronous
loop on Hopper whose tensor core idles during every softmax; bench/NOTES.md):

- a producer warp streams K/V blocks of the program's schedule (text blocks, then the window's video
  blocks) through TMA into a ring of ``STAGES`` shared-memory slots (``ready``/``empty`` mbarriers);
- two consumer warpgroups own 64 query rows each and run the online softmax independently, so one
  warpgroup's softmax runs while the other's wgmma occupies the tensor core;
- within a warpgroup, the QK^T wgmma of block ``j`` is issued before the PV wgmma of block ``j - 1``
  and the softmax of ``j`` runs while that PV is in flight (FA3's intra-warpgroup overlap).

Only the tile-order layout (``[padded video tiles | text]`` per (batch, head)), bf16/fp16 and head dim
128 are supported; :func:`can_run_gluon` says why it refuses anything else.
"""

from __future__ import annotations

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from ..geometry import Geometry

LOG2E = 1.4426950408889634
QUERY_ROWS = 64  # query rows per consumer warpgroup (one m64 wgmma row block)
WG_ROWS = gl.constexpr(QUERY_ROWS)


@gluon.jit
def _key_row(it, n_text, text_start, n_first, spans, last_spans, st, sh, sw, wh, ww, dense, NH: gl.constexpr,
             NW: gl.constexpr, TILE_VOL: gl.constexpr, BLOCK_N: gl.constexpr, BPT: gl.constexpr,
             BPT_LAST: gl.constexpr):
    """Row (within the (batch, head) sequence) of the ``it``-th key block of a program's schedule."""
    if it < n_text:
        row = text_start + it * BLOCK_N
    else:
        j = it - n_text
        last = j >= n_first
        jj = gl.where(last, j - n_first, j)
        bpt = gl.where(last, BPT_LAST, BPT)
        if dense:  # text queries: every key tile in order
            tile = gl.where(last, n_first // BPT, 0) + jj // bpt
            sub = jj % bpt
        else:  # spans of ww tiles along W, kt-major; spans of the last t-row (fewer blocks a tile) last
            per_span = ww * bpt
            span = gl.where(last, spans - last_spans, 0) + jj // per_span
            r = jj % per_span
            tile = ((st + span // wh) * NH + sh + span % wh) * NW + sw + r // bpt
            sub = r % bpt
        row = tile * TILE_VOL + sub * BLOCK_N
    return row


@gluon.jit
def _producer(k_desc, v_desc, q_desc, q_smem, k_smem, v_smem, q_bar, ready, empty, bh, q_row, n_text, n_total,
              text_start, n_first, spans, last_spans, st, sh, sw, wh, ww, dense, seq_len,
              NH: gl.constexpr, NW: gl.constexpr, TILE_VOL: gl.constexpr, BLOCK_N: gl.constexpr,
              BPT: gl.constexpr, BPT_LAST: gl.constexpr, STAGES: gl.constexpr):
    mbarrier.expect(q_bar, 2 * q_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(q_desc, [bh, q_row, 0], q_bar, q_smem.index(0))
    tma.async_copy_global_to_shared(q_desc, [bh, q_row + 64, 0], q_bar, q_smem.index(1))
    base = bh * seq_len
    for it in range(n_total):
        s = it % STAGES
        mbarrier.wait(empty.index(s), ((it // STAGES) & 1) ^ 1)
        row = _key_row(it, n_text, text_start, n_first, spans, last_spans, st, sh, sw, wh, ww, dense, NH, NW,
                       TILE_VOL, BLOCK_N, BPT, BPT_LAST)
        mbarrier.expect(ready.index(s), 2 * k_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(k_desc, [base + row, 0], ready.index(s), k_smem.index(s))
        tma.async_copy_global_to_shared(v_desc, [base + row, 0], ready.index(s), v_smem.index(s))


@gluon.jit
def _softmax(s_acc, m_i, l_i, qk_scale, key_ok, MASKED: gl.constexpr):
    if MASKED:
        s_acc = gl.where(key_ok, s_acc, float("-inf"))
    m_new = gl.maximum(m_i, gl.max(s_acc, 1) * qk_scale)
    if MASKED:  # a row with no valid key yet: exp2(-inf - -inf) would be NaN
        m_use = gl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_use = m_new
    p = gl.exp2(s_acc * qk_scale - gl.expand_dims(m_use, 1))
    alpha = gl.exp2(m_i - m_use)
    l_i = l_i * alpha + gl.sum(p, 1)
    return p, alpha, m_new, l_i


@gluon.jit
def _consumer(o_desc, q_smem, k_smem, v_smem, q_bar, ready, empty, TextMask, bh, b, q_row, n_text, n_total,
              text_len, stride_tb, stride_tm, qk_scale, n_first, spans, last_spans, st, sh, sw, wh, ww, dense,
              NT: gl.constexpr, NH: gl.constexpr, NW: gl.constexpr, TT: gl.constexpr, TH: gl.constexpr,
              TW: gl.constexpr, REM_T: gl.constexpr, REM_H: gl.constexpr, REM_W: gl.constexpr,
              HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, HAS_PADDING: gl.constexpr,
              HAS_TEXT_MASK: gl.constexpr, WG: gl.constexpr):
    TILE_VOL: gl.constexpr = TT * TH * TW
    BPT: gl.constexpr = TILE_VOL // BLOCK_N
    BPT_LAST: gl.constexpr = (REM_T * TH * TW + BLOCK_N - 1) // BLOCK_N
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_layout: gl.constexpr = gl.SliceLayout(1, s_layout)
    col_layout: gl.constexpr = gl.SliceLayout(0, s_layout)
    dtype: gl.constexpr = q_smem.dtype

    q = q_smem.index(WG).reshape([WG_ROWS, HEAD_DIM])
    m_i = gl.full([WG_ROWS], float("-inf"), gl.float32, row_layout)
    l_i = gl.zeros([WG_ROWS], gl.float32, row_layout)
    acc = gl.zeros([WG_ROWS, HEAD_DIM], gl.float32, o_layout)
    s_zero = gl.zeros([WG_ROWS, BLOCK_N], gl.float32, s_layout)
    offs_n = gl.arange(0, BLOCK_N, col_layout)
    mbarrier.wait(q_bar, 0)

    # Text key blocks (bounds and key-padding masked), one at a time.
    for it in range(n_text):
        s = it % STAGES
        mbarrier.wait(ready.index(s), (it // STAGES) & 1)
        s_acc = warpgroup_mma(q, k_smem.index(s).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        s_acc = warpgroup_mma_wait(0, deps=(s_acc, ))
        cols = it * BLOCK_N + offs_n
        key_ok = cols < text_len
        if HAS_TEXT_MASK:
            key_ok = key_ok & (gl.load(TextMask + b * stride_tb + cols * stride_tm, mask=key_ok, other=0) != 0)
        p, alpha, m_i, l_i = _softmax(s_acc, m_i, l_i, qk_scale, gl.expand_dims(key_ok, 0), True)
        acc = acc * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, o_layout)), 1)
        p_op = gl.convert_layout(p.to(dtype), p_layout)
        acc = warpgroup_mma(p_op, v_smem.index(s), acc, is_async=True)
        acc = warpgroup_mma_wait(0, deps=(acc, ))
        mbarrier.arrive(empty.index(s), count=1)

    # Video key blocks: QK^T of block j is issued before PV of block j - 1; softmax j overlaps that PV.
    n_video = n_total - n_text
    if n_video > 0:
        s = n_text % STAGES
        mbarrier.wait(ready.index(s), (n_text // STAGES) & 1)
        s_acc = warpgroup_mma(q, k_smem.index(s).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        s_acc = warpgroup_mma_wait(0, deps=(s_acc, ))
        key_ok = offs_n < BLOCK_N
        if HAS_PADDING:
            key_ok = _video_key_ok(0, offs_n, n_first, spans, last_spans, st, sh, sw, wh, ww, dense, NT, NH, NW,
                                   TT, TH, TW, REM_T, REM_H, REM_W, BLOCK_N)
        p, alpha, m_i, l_i = _softmax(s_acc, m_i, l_i, qk_scale, gl.expand_dims(key_ok, 0), HAS_PADDING)
        acc = acc * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, o_layout)), 1)
        p_op = gl.convert_layout(p.to(dtype), p_layout)
        s_prev = s
        for it in range(n_text + 1, n_total):
            s = it % STAGES
            mbarrier.wait(ready.index(s), (it // STAGES) & 1)
            s_acc = warpgroup_mma(q, k_smem.index(s).permute((1, 0)), s_zero, use_acc=False, is_async=True)
            acc = warpgroup_mma(p_op, v_smem.index(s_prev), acc, is_async=True)
            s_acc = warpgroup_mma_wait(1, deps=(s_acc, ))
            if HAS_PADDING:
                key_ok = _video_key_ok(it - n_text, offs_n, n_first, spans, last_spans, st, sh, sw, wh, ww, dense,
                                       NT, NH, NW, TT, TH, TW, REM_T, REM_H, REM_W, BLOCK_N)
            p, alpha, m_i, l_i = _softmax(s_acc, m_i, l_i, qk_scale, gl.expand_dims(key_ok, 0), HAS_PADDING)
            acc = warpgroup_mma_wait(0, deps=(acc, ))
            mbarrier.arrive(empty.index(s_prev), count=1)
            acc = acc * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, o_layout)), 1)
            p_op = gl.convert_layout(p.to(dtype), p_layout)
            s_prev = s
        acc = warpgroup_mma(p_op, v_smem.index(s_prev), acc, is_async=True)
        acc = warpgroup_mma_wait(0, deps=(acc, ))
        mbarrier.arrive(empty.index(s_prev), count=1)

    l_i = gl.where(l_i == 0.0, 1.0, l_i)  # padding query blocks (no keys): finite zeros
    out = acc / gl.expand_dims(gl.convert_layout(l_i, gl.SliceLayout(1, o_layout)), 1)
    o_smem = q_smem.index(WG)  # every wgmma reading this warpgroup's Q has completed
    o_smem.reshape([WG_ROWS, HEAD_DIM]).store(out.to(dtype))
    fence_async_shared()
    tma.async_copy_shared_to_global(o_desc, [bh, q_row + WG * WG_ROWS, 0], o_smem)
    tma.store_wait(0)


@gluon.jit
def _video_key_ok(j, offs_n, n_first, spans, last_spans, st, sh, sw, wh, ww, dense, NT: gl.constexpr,
                  NH: gl.constexpr, NW: gl.constexpr, TT: gl.constexpr, TH: gl.constexpr, TW: gl.constexpr,
                  REM_T: gl.constexpr, REM_H: gl.constexpr, REM_W: gl.constexpr, BLOCK_N: gl.constexpr):
    """True where key ``offs_n`` of the ``j``-th video key block is a real token (not canvas padding)."""
    TILE_VOL: gl.constexpr = TT * TH * TW
    BPT: gl.constexpr = TILE_VOL // BLOCK_N
    BPT_LAST: gl.constexpr = (REM_T * TH * TW + BLOCK_N - 1) // BLOCK_N
    row = _key_row(j, 0, 0, n_first, spans, last_spans, st, sh, sw, wh, ww, dense, NH, NW, TILE_VOL, BLOCK_N, BPT,
                   BPT_LAST)
    tile = row // TILE_VOL
    offset = row % TILE_VOL + offs_n
    kt = tile // (NH * NW)
    kh = (tile // NW) % NH
    kw = tile % NW
    ot = offset // (TH * TW)
    oh = (offset // TW) % TH
    ow = offset % TW
    return ((kt < NT - 1) | (ot < REM_T)) & ((kh < NH - 1) | (oh < REM_H)) & ((kw < NW - 1) | (ow < REM_W))


@gluon.jit
def _sta_fwd_gluon_kernel(
    q_desc, k_desc, v_desc, o_desc, Windows, HeadOrder, TextMask, stride_tb, stride_tm,
    qk_scale, heads, seq_len, text_len, text_start, text_programs,
    NT: gl.constexpr, NH: gl.constexpr, NW: gl.constexpr, TT: gl.constexpr, TH: gl.constexpr, TW: gl.constexpr,
    REM_T: gl.constexpr, REM_H: gl.constexpr, REM_W: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr,
    STAGES: gl.constexpr, HAS_PADDING: gl.constexpr, HAS_TEXT_MASK: gl.constexpr, PRODUCER_REGS: gl.constexpr,
    CONSUMER_REGS: gl.constexpr,
):
    BLOCK_M: gl.constexpr = 2 * WG_ROWS
    TILE_VOL: gl.constexpr = TT * TH * TW
    NUM_TILES: gl.constexpr = NT * NH * NW
    Q_PER_TILE: gl.constexpr = TILE_VOL // BLOCK_M
    VIDEO_Q_BLOCKS: gl.constexpr = NUM_TILES * Q_PER_TILE
    BPT: gl.constexpr = TILE_VOL // BLOCK_N
    BPT_LAST: gl.constexpr = (REM_T * TH * TW + BLOCK_N - 1) // BLOCK_N
    Q_LAST: gl.constexpr = (REM_T * TH * TW + BLOCK_M - 1) // BLOCK_M

    pid = gl.program_id(0)
    n_text = gl.cdiv(text_len, BLOCK_N)
    n_first = (NT - 1) * NH * NW * BPT
    if pid < text_programs:  # text queries: every text block, then every (non-padding) video block
        text_q_blocks = gl.cdiv(text_len, BLOCK_M)
        bh = pid // text_q_blocks
        q_row = text_start + (pid % text_q_blocks) * BLOCK_M
        dense = True
        spans = NT * NH
        last_spans = NH
        st = 0
        sh = 0
        sw = 0
        wh = NH
        ww = NW
        n_total = n_text + n_first + NH * NW * BPT_LAST
    else:
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
        wt = gl.minimum(gl.load(Windows + h * 3 + 0), NT)
        wh = gl.minimum(gl.load(Windows + h * 3 + 1), NH)
        ww = gl.minimum(gl.load(Windows + h * 3 + 2), NW)
        st = gl.minimum(gl.maximum(ct - (wt - 1) // 2, 0), NT - wt)
        sh = gl.minimum(gl.maximum(ch - (wh - 1) // 2, 0), NH - wh)
        sw = gl.minimum(gl.maximum(cw - (ww - 1) // 2, 0), NW - ww)
        dense = False
        spans = wt * wh
        last_spans = gl.where(st + wt == NT, wh, 0)
        n_first = (spans - last_spans) * ww * BPT
        q_padded = (ct == NT - 1) & (q_sub >= Q_LAST)  # all rows are canvas padding: no keys at all
        n_text = gl.where(q_padded, 0, n_text)
        n_total = gl.where(q_padded, 0, n_text + n_first + last_spans * ww * BPT_LAST)
    b = bh // heads

    q_smem = gl.allocate_shared_memory(q_desc.dtype, [2, 1, WG_ROWS, HEAD_DIM], q_desc.layout)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [STAGES, BLOCK_N, HEAD_DIM], k_desc.layout)
    v_smem = gl.allocate_shared_memory(v_desc.dtype, [STAGES, BLOCK_N, HEAD_DIM], v_desc.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=2)
    fence_async_shared()

    gl.warp_specialize([
        (_consumer, (o_desc, q_smem, k_smem, v_smem, q_bar, ready, empty, TextMask, bh, b, q_row, n_text, n_total,
                      text_len, stride_tb, stride_tm, qk_scale, n_first, spans, last_spans, st, sh, sw, wh, ww, dense,
                      NT, NH, NW, TT, TH, TW, REM_T, REM_H, REM_W, HEAD_DIM, BLOCK_N, STAGES, HAS_PADDING,
                      HAS_TEXT_MASK, 0)),
        (_consumer, (o_desc, q_smem, k_smem, v_smem, q_bar, ready, empty, TextMask, bh, b, q_row, n_text, n_total,
                      text_len, stride_tb, stride_tm, qk_scale, n_first, spans, last_spans, st, sh, sw, wh, ww, dense,
                      NT, NH, NW, TT, TH, TW, REM_T, REM_H, REM_W, HEAD_DIM, BLOCK_N, STAGES, HAS_PADDING,
                      HAS_TEXT_MASK, 1)),
        (_producer, (k_desc, v_desc, q_desc, q_smem, k_smem, v_smem, q_bar, ready, empty, bh, q_row, n_text,
                     n_total, text_start, n_first, spans, last_spans, st, sh, sw, wh, ww, dense, seq_len, NH, NW,
                     TILE_VOL, BLOCK_N, BPT, BPT_LAST, STAGES)),
    ], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])


def can_run_gluon(q: torch.Tensor, geometry: Geometry, block_n: int = 128) -> tuple[bool, str]:
    """Whether :func:`sta_gluon_tiled` runs these inputs; the reason when it does not."""
    if q.device.type != "cuda" or torch.cuda.get_device_capability(q.device)[0] != 9:
        return False, "needs a Hopper (sm_90) GPU"
    if q.dtype not in (torch.bfloat16, torch.float16):
        return False, f"dtype {q.dtype} (bf16 or fp16 only)"
    if q.shape[-1] != 128:
        return False, f"head dim {q.shape[-1]} (128 only)"
    tv = geometry.tile_volume
    if tv % (2 * QUERY_ROWS) or tv % block_n:
        return False, f"tile volume {tv} is not a multiple of {2 * QUERY_ROWS} and {block_n}"
    return True, "ok"


def sta_gluon_tiled(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, geometry: Geometry, windows: torch.Tensor,
                    text_len: int, text_mask: torch.Tensor | None, scale: float | None, *,
                    out: torch.Tensor | None = None, block_n: int = 128, stages: int = 2) -> torch.Tensor:
    """STA on tile-order inputs, same contract as :func:`.triton_fwd.sta_triton_tiled` (Hopper only)."""
    from .triton_fwd import _head_order

    ok, why = can_run_gluon(q, geometry, block_n)
    if not ok:
        raise ValueError(f"gluon STA kernel cannot run: {why}")
    B, heads, L, D = q.shape
    if L != geometry.padded_len + text_len:
        raise ValueError(f"tiled sequence length {L} != padded video {geometry.padded_len} + text_len {text_len}")
    q, k, v = (x.contiguous() for x in (q, k, v))
    out = torch.empty_like(q) if out is None else out
    windows = windows.to(device=q.device, dtype=torch.int32).contiguous()
    gl_dtype = gl.bfloat16 if q.dtype == torch.bfloat16 else gl.float16
    q_layout = gl.NVMMASharedLayout.get_default_for([1, QUERY_ROWS, D], gl_dtype)
    kv_layout = gl.NVMMASharedLayout.get_default_for([block_n, D], gl_dtype)
    q3, o3 = q.view(B * heads, L, D), out.view(B * heads, L, D)
    q_desc = TensorDescriptor.from_tensor(q3, [1, QUERY_ROWS, D], q_layout)
    o_desc = TensorDescriptor.from_tensor(o3, [1, QUERY_ROWS, D], q_layout)
    k_desc = TensorDescriptor.from_tensor(k.view(B * heads * L, D), [block_n, D], kv_layout)
    v_desc = TensorDescriptor.from_tensor(v.view(B * heads * L, D), [block_n, D], kv_layout)
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
    _sta_fwd_gluon_kernel[(text_programs + video_programs,)](
        q_desc, k_desc, v_desc, o_desc, windows, _head_order(windows, geometry.grid), mask_arg, stride_tb,
        stride_tm, scale * LOG2E, heads, L, text_len, geometry.padded_len, text_programs,
        NT=nt, NH=nh, NW=nw, TT=tt, TH=th, TW=tw, REM_T=rem[0], REM_H=rem[1], REM_W=rem[2], HEAD_DIM=D,
        BLOCK_N=block_n, STAGES=stages, HAS_PADDING=not geometry.is_divisible,
        HAS_TEXT_MASK=bool(text_len) and text_mask is not None, PRODUCER_REGS=24, CONSUMER_REGS=240,
        num_warps=4,
    )
    return out
