"""Sliding Tile Attention forward pass in Gluon for Hopper (sm_90): warp-specialized, FA3-style.

Same contract, masking and program order as :mod:`.triton_fwd`, in both layouts (tile order, and the
natural T-major order read and written in place through 5-D TMA boxes of whole tile planes), but the
pipeline is written out instead of left to Triton's scheduler, which on Hopper emits one
warpgroup-synchronous loop whose tensor core idles during every softmax (bench/NOTES.md):

- a producer warp streams the program's K/V blocks (text blocks first, then the window's video blocks)
  through TMA into a ring of ``STAGES`` shared-memory slots, handed over with ``ready``/``empty`` mbarriers;
- two consumer warpgroups own 64 query rows each and run the online softmax independently, so one
  warpgroup's softmax runs while the other's wgmma keeps the tensor core busy;
- within a warpgroup, the QK^T wgmma of block ``j`` is issued before the PV wgmma of block ``j - 1``,
  and the softmax of ``j`` starts while that PV is in flight (FA3's intra-warpgroup overlap).

Runs bf16/fp16 with head dim 64 or 128 and tiles whose volume is a multiple of 128 on sm_90 only;
:func:`sta_search.kernels.backends.can_run_gluon` says why it refuses anything else.
"""

from __future__ import annotations

import functools

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from ..geometry import Geometry
from .tables import device_windows
from . import triton_fwd
from .row_gather import run_compact

# Scalar / elementwise index math shared with the Triton kernel, compiled as Gluon.
_clamped_window = gluon.jit(triton_fwd._clamped_window.fn)
_padding_ok = gluon.jit(triton_fwd._padding_ok.fn)
_real_tokens = gluon.jit(triton_fwd._real_tokens.fn)
_next_compact_block = gluon.jit(triton_fwd._next_compact_block.fn)
_compact_blocks = gluon.jit(triton_fwd._compact_blocks.fn)

LOG2E = 1.4426950408889634
QUERY_ROWS = 64  # query rows per consumer warpgroup (one m64 wgmma row block); two warpgroups per program
BLOCK_N = 128
# K/V ring depth per head dim. One stage is a K and a V block of BLOCK_N rows: 64 KB at d=128 (3 stages + 32 KB of Q =
# 224 KB of the 227 KB an sm_90 block may use), 32 KB at d=64 (up to 6 fit; 4 is a guess, bench/d64_check.py sweeps it).
# Registers limit either to one program per SM, so deeper rings cost nothing but the shared memory.
DEFAULT_STAGES = {128: 3, 64: 4}
SMEM_LIMIT = 227 * 1024
WG_ROWS = gl.constexpr(QUERY_ROWS)


@gluon.jit
def _video_row(j, n_first, spans, last_spans, st, sh, sw, wh, ww, dense, NH: gl.constexpr, NW: gl.constexpr,
               TILE_VOL: gl.constexpr, BLOCK_N: gl.constexpr, BPT: gl.constexpr, BPT_LAST: gl.constexpr):
    """Tile-order row of the ``j``-th video key block of a program (same walk as triton_fwd._window_block)."""
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
    return tile * TILE_VOL + sub * BLOCK_N


@gluon.jit
def _walk_row(walk, st, sh, sw, NH: gl.constexpr, NW: gl.constexpr, TILE_VOL: gl.constexpr, BLOCK_N: gl.constexpr):
    """Tile-order row of the video key block at ``walk`` = (sub-block, tile offsets dw, dh, dt in the window)."""
    sub, dw, dh, dt = walk
    return (((st + dt) * NH + sh + dh) * NW + sw + dw) * TILE_VOL + sub * BLOCK_N


@gluon.jit
def _walk_next(j, walk, n_first, wh, ww, BPT: gl.constexpr, BPT_LAST: gl.constexpr):
    """:func:`_video_row`'s walk one block on (from block ``j`` to ``j + 1``) without its integer divisions: sub-blocks
    of a tile, then tiles along W (``ww``), H (``wh``), T; tiles of the last t-row (from block ``n_first``) have
    ``BPT_LAST`` blocks. Text queries walk every tile with ``wh, ww = NH, NW``, which is the same order."""
    sub, dw, dh, dt = walk
    sub = sub + 1
    wrap = sub == gl.where(j >= n_first, BPT_LAST, BPT)
    sub = gl.where(wrap, 0, sub)
    dw = dw + wrap.to(gl.int32)
    wrap = dw == ww
    dw = gl.where(wrap, 0, dw)
    dh = dh + wrap.to(gl.int32)
    wrap = dh == wh
    dh = gl.where(wrap, 0, dh)
    dt = dt + wrap.to(gl.int32)
    return sub, dw, dh, dt


@gluon.jit
def _copy_video_rows(desc, bh, row, bar, dst, NH: gl.constexpr, NW: gl.constexpr, TT: gl.constexpr,
                     TH: gl.constexpr, TW: gl.constexpr, NATURAL: gl.constexpr):
    """TMA copy of video rows ``row ..`` (tile order) of head ``bh`` into ``dst`` (2-D ``[rows, D]``)."""
    if NATURAL:  # a box of whole (TH, TW) planes of one tile of the [T, H, W] canvas arrives in tile order
        TILE_VOL: gl.constexpr = TT * TH * TW
        tile = row // TILE_VOL
        t0 = (tile // (NH * NW)) * TT + (row % TILE_VOL) // (TH * TW)
        tma.async_copy_global_to_shared(desc, [bh, t0, ((tile // NW) % NH) * TH, (tile % NW) * TW, 0], bar,
                                        dst.reshape(desc.block_type.shape))
    else:
        tma.async_copy_global_to_shared(desc, [bh, row, 0], bar, dst.reshape(desc.block_type.shape))


@gluon.jit
def _producer(q_desc, k_desc, v_desc, qt_desc, kt_desc, vt_desc, q_smem, k_smem, v_smem, q_bar, ready, empty, bh,
              q_row, text_query, n_text, n_total, n_first, spans, last_spans, st, sh, sw, wh, ww,
              NT: gl.constexpr, NH: gl.constexpr, NW: gl.constexpr, TT: gl.constexpr, TH: gl.constexpr,
              TW: gl.constexpr, REM_T: gl.constexpr, REM_H: gl.constexpr, REM_W: gl.constexpr, BPT_LAST: gl.constexpr,
              BLOCK_N: gl.constexpr, STAGES: gl.constexpr, NATURAL: gl.constexpr, COMPACT: gl.constexpr):
    TILE_VOL: gl.constexpr = TT * TH * TW
    mbarrier.expect(q_bar, 2 * WG_ROWS * q_smem.shape[2] * q_smem.dtype.primitive_bitwidth // 8)
    for i in gl.static_range(2):
        if text_query:
            tma.async_copy_global_to_shared(qt_desc, [bh, q_row + i * WG_ROWS, 0], q_bar,
                                            q_smem.index(i).reshape(qt_desc.block_type.shape))
        else:
            _copy_video_rows(q_desc, bh, q_row + i * WG_ROWS, q_bar, q_smem.index(i), NH, NW, TT, TH, TW, NATURAL)
    kv_bytes: gl.constexpr = 2 * BLOCK_N * k_smem.shape[2] * k_smem.dtype.primitive_bitwidth // 8
    if COMPACT:  # text blocks, then the window's blocks in compact tile order (_next_compact_block)
        for it in range(n_text):
            s = it % STAGES
            mbarrier.wait(empty.index(s), ((it // STAGES) & 1) ^ 1)
            mbarrier.expect(ready.index(s), kv_bytes)
            tma.async_copy_global_to_shared(kt_desc, [bh, it * BLOCK_N, 0], ready.index(s),
                                            k_smem.index(s).reshape(kt_desc.block_type.shape))
            tma.async_copy_global_to_shared(vt_desc, [bh, it * BLOCK_N, 0], ready.index(s),
                                            v_smem.index(s).reshape(vt_desc.block_type.shape))
        kt = st
        kh = sh
        kw = sw
        sub = 0
        n_real = _real_tokens(kt, kh, kw, NT, NH, NW, TT, TH, TW, REM_T, REM_H, REM_W)
        for it in range(n_text, n_total):
            s = it % STAGES
            mbarrier.wait(empty.index(s), ((it // STAGES) & 1) ^ 1)
            mbarrier.expect(ready.index(s), kv_bytes)
            row = ((kt * NH + kh) * NW + kw) * TILE_VOL + sub * BLOCK_N
            tma.async_copy_global_to_shared(k_desc, [bh, row, 0], ready.index(s),
                                            k_smem.index(s).reshape(k_desc.block_type.shape))
            tma.async_copy_global_to_shared(v_desc, [bh, row, 0], ready.index(s),
                                            v_smem.index(s).reshape(v_desc.block_type.shape))
            kt, kh, kw, sub, n_real = _next_compact_block(kt, kh, kw, sub, n_real, sh, sw, wh, ww, NT, NH, NW, TT, TH,
                                                          TW, REM_T, REM_H, REM_W, BLOCK_N)
    else:
        for it in range(n_total):
            s = it % STAGES
            mbarrier.wait(empty.index(s), ((it // STAGES) & 1) ^ 1)
            mbarrier.expect(ready.index(s), kv_bytes)
            if it < n_text:  # rows past the text are zeros (the text descriptors end at text_len): masked anyway
                tma.async_copy_global_to_shared(kt_desc, [bh, it * BLOCK_N, 0], ready.index(s),
                                                k_smem.index(s).reshape(kt_desc.block_type.shape))
                tma.async_copy_global_to_shared(vt_desc, [bh, it * BLOCK_N, 0], ready.index(s),
                                                v_smem.index(s).reshape(vt_desc.block_type.shape))
            else:
                row = _video_row(it - n_text, n_first, spans, last_spans, st, sh, sw, wh, ww, text_query, NH, NW,
                                 TILE_VOL, BLOCK_N, TILE_VOL // BLOCK_N, BPT_LAST)
                _copy_video_rows(k_desc, bh, row, ready.index(s), k_smem.index(s), NH, NW, TT, TH, TW, NATURAL)
                _copy_video_rows(v_desc, bh, row, ready.index(s), v_smem.index(s), NH, NW, TT, TH, TW, NATURAL)


@gluon.jit
def _softmax(s_acc, m_i, l_i, qk_scale, key_ok, MASKED: gl.constexpr, LOG2_MUL: gl.constexpr = 0.0,
             SLACK: gl.constexpr = 0.0):
    """One key block of the online softmax (base 2, scores scaled by ``qk_scale``): ``p``, the rescale factor of the
    running sums, the new row max and row sum. With ``LOG2_MUL`` (the FP8 kernel) ``p`` and the row sum come out
    multiplied by ``2**LOG2_MUL`` by shifting the exponent, which costs nothing per element. With ``SLACK`` a row
    keeps its reference max until a block's max exceeds it by more than ``SLACK`` (log2 units; FlashAttention-4's
    lazy rescaling): ``p <= 2**SLACK`` and ``alpha`` is exactly 1 for rows that kept it, so the accumulator's
    rescale can be skipped when no row of the warpgroup moved (:func:`_rescale`)."""
    if MASKED:
        s_acc = gl.where(key_ok, s_acc, float("-inf"))
    m_new = gl.maximum(m_i, gl.max(s_acc, 1) * qk_scale)
    if SLACK > 0.0:
        m_new = gl.where(m_new > m_i + SLACK, m_new, m_i)
    if MASKED:  # a row with no valid key yet: exp2(-inf - -inf) would be NaN
        m_use = gl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_use = m_new
    p = gl.exp2(s_acc * qk_scale - gl.expand_dims(m_use - LOG2_MUL, 1))
    alpha = gl.exp2(m_i - m_use)
    l_i = l_i * alpha + gl.sum(p, 1)
    return p, alpha, m_new, l_i


@gluon.jit
def _rescale(acc, alpha, o_rows: gl.constexpr, SLACK: gl.constexpr):
    """``acc`` times ``alpha`` per row; with ``SLACK`` only when some row of the warpgroup moved its max (a
    warpgroup-wide min: one branch for all its threads)."""
    if SLACK > 0.0:
        if gl.min(alpha, 0) < 1.0:
            acc = acc * gl.expand_dims(gl.convert_layout(alpha, o_rows), 1)
    else:
        acc = acc * gl.expand_dims(gl.convert_layout(alpha, o_rows), 1)
    return acc


@gluon.jit
def _mask_padding(s_acc, row, offs_n, NT: gl.constexpr, NH: gl.constexpr, NW: gl.constexpr, TT: gl.constexpr,
                  TH: gl.constexpr, TW: gl.constexpr, REM_T: gl.constexpr, REM_H: gl.constexpr, REM_W: gl.constexpr):
    """``s_acc`` with canvas-padding keys at -inf; only blocks of border tiles along padded axes pay for it."""
    TILE_VOL: gl.constexpr = TT * TH * TW
    tile = row // TILE_VOL
    border = (((tile // (NH * NW)) == NT - 1) & (REM_T < TT)) | ((((tile // NW) % NH) == NH - 1) & (REM_H < TH)) \
        | (((tile % NW) == NW - 1) & (REM_W < TW))
    if border:
        key_ok = _padding_ok(tile, row % TILE_VOL + offs_n, NH, NW, TH, TW, NT, REM_T, REM_H, REM_W)
        s_acc = gl.where(gl.expand_dims(key_ok, 0), s_acc, float("-inf"))
    return s_acc


@gluon.jit
def _mask_partial_block(s_acc, n_valid, offs_n, BLOCK_N: gl.constexpr):
    """Compact tile order: the keys of a block past its tile's ``n_valid`` real tokens at -inf."""
    if n_valid < BLOCK_N:
        s_acc = gl.where(gl.expand_dims(offs_n < n_valid, 0), s_acc, float("-inf"))
    return s_acc


@gluon.jit
def _record_tile_mass(t_i, p, alpha, m_i, row, mass_ptr, record, NT: gl.constexpr, NH: gl.constexpr,
                      NW: gl.constexpr, TILE_VOL: gl.constexpr, BLOCK_N: gl.constexpr, BPT: gl.constexpr,
                      BPT_LAST: gl.constexpr):
    """Adds block ``row``'s softmax row sums to its key tile's; after the tile's last block, stores
    ``m_i + log2(sum)`` per row and restarts the sum."""
    t_i = t_i * alpha + gl.sum(p, 1)
    tile = row // TILE_VOL
    bpt = gl.where(tile // (NH * NW) == NT - 1, BPT_LAST, BPT)
    last = (row % TILE_VOL) // BLOCK_N == bpt - 1
    if last & record:
        gl.store(mass_ptr + tile * p.shape[0], m_i + gl.log2(t_i))
    return gl.where(last, 0.0, t_i)


@gluon.jit
def _add_tile_mass(t_i, p, alpha, m_i, tile, last, mass_ptr, record):
    """:func:`_record_tile_mass` for compact tile order, where the walk knows the key tile and whether this is its
    last block."""
    t_i = t_i * alpha + gl.sum(p, 1)
    if last & record:
        gl.store(mass_ptr + tile * p.shape[0], m_i + gl.log2(t_i))
    return gl.where(last, 0.0, t_i)


@gluon.jit
def _take_turn(turn, k_it, WG: gl.constexpr):
    """PINGPONG: wait until this warpgroup may issue the wgmmas of its ``k_it``-th video loop iteration (warpgroup 0
    goes first; neither can get two phases ahead of the other, so parity waits are safe)."""
    if WG == 0:
        if k_it > 0:
            mbarrier.wait(turn.index(0), (k_it - 1) & 1)
    else:
        mbarrier.wait(turn.index(1), k_it & 1)


@gluon.jit
def _pass_turn(turn, WG: gl.constexpr):
    """PINGPONG: hand the turn to the other warpgroup once this one's wgmmas are issued."""
    mbarrier.arrive(turn.index(1 - WG), count=1)


@gluon.jit
def _consumer(o_desc, ot_desc, q_smem, k_smem, v_smem, q_bar, ready, empty, turn, TextMask, MassLog, LseOut, bh, b, q_row,
              text_query, n_text, n_total, text_len, stride_tb, stride_tm, qk_scale, n_first, spans, last_spans, st, sh,
              sw, wh, ww, NT: gl.constexpr, NH: gl.constexpr, NW: gl.constexpr, TT: gl.constexpr, TH: gl.constexpr,
              TW: gl.constexpr, REM_T: gl.constexpr, REM_H: gl.constexpr, REM_W: gl.constexpr,
              BPT_LAST: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, HAS_PADDING: gl.constexpr,
              HAS_TEXT_MASK: gl.constexpr, NATURAL: gl.constexpr, MASS: gl.constexpr, COMPACT: gl.constexpr,
              WG: gl.constexpr, PINGPONG: gl.constexpr, SLACK: gl.constexpr):
    TILE_VOL: gl.constexpr = TT * TH * TW
    HEAD_DIM: gl.constexpr = q_smem.shape[2]
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    o_rows: gl.constexpr = gl.SliceLayout(1, o_layout)
    dtype: gl.constexpr = q_smem.dtype

    q = q_smem.index(WG)
    m_i = gl.full([WG_ROWS], float("-inf"), gl.float32, gl.SliceLayout(1, s_layout))
    l_i = gl.zeros([WG_ROWS], gl.float32, gl.SliceLayout(1, s_layout))
    acc = gl.zeros([WG_ROWS, HEAD_DIM], gl.float32, o_layout)
    s_zero = gl.zeros([WG_ROWS, BLOCK_N], gl.float32, s_layout)
    offs_n = gl.arange(0, BLOCK_N, gl.SliceLayout(0, s_layout))
    # MASS (profiler): per row, the log2 of its softmax sum over each key tile (then over all text keys) is
    # written when the tile's last block is done, relative to the running max of that moment; with the final
    # log-sum-exp it gives the row's mass on every tile (kernels/recall/gluon_fused.py reduces the rows).
    NUM_TILES: gl.constexpr = NT * NH * NW
    t_i = gl.zeros([WG_ROWS], gl.float32, gl.SliceLayout(1, s_layout))
    record = text_query == 0
    if MASS:
        mass_rows = gl.arange(0, WG_ROWS, gl.SliceLayout(1, s_layout))
        row64 = bh.to(gl.int64) * (NUM_TILES * TILE_VOL // WG_ROWS) + (q_row + WG * WG_ROWS) // WG_ROWS
        mass_ptr = MassLog + row64 * ((NUM_TILES + 1) * WG_ROWS) + mass_rows
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
        if MASS:
            t_i = t_i * alpha + gl.sum(p, 1)
        acc = acc * gl.expand_dims(gl.convert_layout(alpha, o_rows), 1)
        acc = warpgroup_mma(gl.convert_layout(p.to(dtype), p_layout), v_smem.index(s), acc, is_async=True)
        acc = warpgroup_mma_wait(0, deps=(acc, ))
        mbarrier.arrive(empty.index(s), count=1)
    if MASS:
        if record:  # -inf where no text key is valid (or there is no text)
            gl.store(mass_ptr + NUM_TILES * WG_ROWS, m_i + gl.log2(t_i))
        t_i = t_i * 0.0

    # Video key blocks: QK^T of block j is issued before PV of block j - 1; softmax j overlaps that PV.
    BPT: gl.constexpr = TILE_VOL // BLOCK_N
    if n_total > n_text:
        if COMPACT:  # the producer's walk (_next_compact_block): only a tile's last block may hold padding
            kt = st
            kh = sh
            kw = sw
            sub = 0
            n_real = _real_tokens(kt, kh, kw, NT, NH, NW, TT, TH, TW, REM_T, REM_H, REM_W)
        s = n_text % STAGES
        mbarrier.wait(ready.index(s), (n_text // STAGES) & 1)
        s_acc = warpgroup_mma(q, k_smem.index(s).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        s_acc = warpgroup_mma_wait(0, deps=(s_acc, ))
        if COMPACT:
            s_acc = _mask_partial_block(s_acc, n_real - sub * BLOCK_N, offs_n, BLOCK_N)
        # Every video block holds a real key for every row (all-padding blocks are never visited), so the
        # running max is finite from here on and the unguarded softmax is exact.
        if HAS_PADDING or (MASS and not COMPACT):
            row = _video_row(0, n_first, spans, last_spans, st, sh, sw, wh, ww, text_query, NH, NW, TILE_VOL,
                             BLOCK_N, BPT, BPT_LAST)
        if HAS_PADDING:
            s_acc = _mask_padding(s_acc, row, offs_n, NT, NH, NW, TT, TH, TW, REM_T, REM_H, REM_W)
        p, alpha, m_i, l_i = _softmax(s_acc, m_i, l_i, qk_scale, 0, False, 0.0, SLACK)
        if MASS:
            if COMPACT:
                t_i = _add_tile_mass(t_i, p, alpha, m_i, (kt * NH + kh) * NW + kw, (sub + 1) * BLOCK_N >= n_real,
                                     mass_ptr, record)
            else:
                t_i = _record_tile_mass(t_i, p, alpha, m_i, row, mass_ptr, record, NT, NH, NW, TILE_VOL, BLOCK_N,
                                        BPT, BPT_LAST)
        acc = _rescale(acc, alpha, o_rows, SLACK)
        p_op = gl.convert_layout(p.to(dtype), p_layout)
        s_prev = s
        for it in range(n_text + 1, n_total):
            s = it % STAGES
            mbarrier.wait(ready.index(s), (it // STAGES) & 1)
            if PINGPONG:  # FA3's order: the warpgroups take turns to issue, so one's softmax runs under the other's MMAs
                _take_turn(turn, it - n_text - 1, WG)
            s_acc = warpgroup_mma(q, k_smem.index(s).permute((1, 0)), s_zero, use_acc=False, is_async=True)
            acc = warpgroup_mma(p_op, v_smem.index(s_prev), acc, is_async=True)
            if PINGPONG:
                _pass_turn(turn, WG)
            if HAS_PADDING or (MASS and not COMPACT):  # scalar index math while the wgmmas run
                row = _video_row(it - n_text, n_first, spans, last_spans, st, sh, sw, wh, ww, text_query, NH, NW,
                                 TILE_VOL, BLOCK_N, BPT, BPT_LAST)
            if COMPACT:
                kt, kh, kw, sub, n_real = _next_compact_block(kt, kh, kw, sub, n_real, sh, sw, wh, ww, NT, NH, NW, TT,
                                                              TH, TW, REM_T, REM_H, REM_W, BLOCK_N)
            s_acc = warpgroup_mma_wait(1, deps=(s_acc, ))
            if COMPACT:
                s_acc = _mask_partial_block(s_acc, n_real - sub * BLOCK_N, offs_n, BLOCK_N)
            if HAS_PADDING:
                s_acc = _mask_padding(s_acc, row, offs_n, NT, NH, NW, TT, TH, TW, REM_T, REM_H, REM_W)
            p, alpha, m_i, l_i = _softmax(s_acc, m_i, l_i, qk_scale, 0, False, 0.0, SLACK)
            if MASS:
                if COMPACT:
                    t_i = _add_tile_mass(t_i, p, alpha, m_i, (kt * NH + kh) * NW + kw,
                                         (sub + 1) * BLOCK_N >= n_real, mass_ptr, record)
                else:
                    t_i = _record_tile_mass(t_i, p, alpha, m_i, row, mass_ptr, record, NT, NH, NW, TILE_VOL,
                                            BLOCK_N, BPT, BPT_LAST)
            acc = warpgroup_mma_wait(0, deps=(acc, ))
            mbarrier.arrive(empty.index(s_prev), count=1)
            acc = _rescale(acc, alpha, o_rows, SLACK)
            p_op = gl.convert_layout(p.to(dtype), p_layout)
            s_prev = s
        acc = warpgroup_mma(p_op, v_smem.index(s_prev), acc, is_async=True)
        acc = warpgroup_mma_wait(0, deps=(acc, ))
        mbarrier.arrive(empty.index(s_prev), count=1)

    if MASS:
        if record:  # log2-sum-exp2 of the scaled scores; +inf for query blocks of canvas padding (no keys)
            gl.store(LseOut + row64 * WG_ROWS + mass_rows, gl.where(l_i == 0.0, float("inf"), m_i + gl.log2(l_i)))
    l_i = gl.where(l_i == 0.0, 1.0, l_i)  # query blocks of canvas padding (no keys): finite zeros
    out = acc / gl.expand_dims(gl.convert_layout(l_i, o_rows), 1)
    o_smem = q_smem.index(WG)  # every wgmma reading this warpgroup's Q has completed
    o_smem.store(out.to(dtype))
    fence_async_shared()
    if text_query:  # rows past the text are dropped by the descriptor's bounds
        tma.async_copy_shared_to_global(ot_desc, [bh, q_row + WG * WG_ROWS, 0],
                                        o_smem.reshape(ot_desc.block_type.shape))
    elif NATURAL:  # rows past the canvas edge are dropped by the descriptor's bounds
        row = q_row + WG * WG_ROWS
        tile = row // TILE_VOL
        t0 = (tile // (NH * NW)) * TT + (row % TILE_VOL) // (TH * TW)
        tma.async_copy_shared_to_global(o_desc, [bh, t0, ((tile // NW) % NH) * TH, (tile % NW) * TW, 0],
                                        o_smem.reshape(o_desc.block_type.shape))
    else:
        tma.async_copy_shared_to_global(o_desc, [bh, q_row + WG * WG_ROWS, 0], o_smem.reshape(o_desc.block_type.shape))
    tma.store_wait(0)


@gluon.jit
def _sta_fwd_gluon_kernel(
    q_desc, k_desc, v_desc, o_desc, qt_desc, kt_desc, vt_desc, ot_desc, Windows, HeadOrder, TextMask, MassLog, LseOut,
    stride_tb, stride_tm, qk_scale, heads, text_len, text_programs,
    NT: gl.constexpr, NH: gl.constexpr, NW: gl.constexpr, TT: gl.constexpr, TH: gl.constexpr, TW: gl.constexpr,
    REM_T: gl.constexpr, REM_H: gl.constexpr, REM_W: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr,
    STAGES: gl.constexpr, HAS_PADDING: gl.constexpr, HAS_TEXT_MASK: gl.constexpr, NATURAL: gl.constexpr,
    PRODUCER_REGS: gl.constexpr, CONSUMER_REGS: gl.constexpr, MASS: gl.constexpr = False, COMPACT: gl.constexpr = False,
    PINGPONG: gl.constexpr = False, SLACK: gl.constexpr = 0.0,
):
    BLOCK_M: gl.constexpr = 2 * WG_ROWS
    TILE_VOL: gl.constexpr = TT * TH * TW
    Q_PER_TILE: gl.constexpr = TILE_VOL // BLOCK_M
    VIDEO_Q_BLOCKS: gl.constexpr = NT * NH * NW * Q_PER_TILE
    BPT: gl.constexpr = TILE_VOL // BLOCK_N
    # Tiles of the last t-row hold only REM_T t-planes: their key blocks past those are all padding, skipped.
    BPT_LAST: gl.constexpr = (REM_T * TH * TW + BLOCK_N - 1) // BLOCK_N
    Q_LAST: gl.constexpr = (REM_T * TH * TW + BLOCK_M - 1) // BLOCK_M

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
        if COMPACT:
            n_total = n_text + _compact_blocks(0, 0, 0, NT, NH, NW, NT, NH, NW, TT, TH, TW, REM_T, REM_H, REM_W, BLOCK_N)
        else:
            n_total = n_text + n_first + NH * NW * BPT_LAST
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
        if COMPACT:  # a tile's real query rows come first; blocks past them are all padding
            q_padded = q_sub * BLOCK_M >= _real_tokens(ct, ch, cw, NT, NH, NW, TT, TH, TW, REM_T, REM_H, REM_W)
            n_video = _compact_blocks(st, sh, sw, spans // wh, wh, ww, NT, NH, NW, TT, TH, TW, REM_T, REM_H, REM_W,
                                      BLOCK_N)
        else:
            q_padded = (ct == NT - 1) & (q_sub >= Q_LAST)  # every row is canvas padding: no keys at all
            n_video = n_first + last_spans * ww * BPT_LAST
        n_text = gl.where(q_padded, 0, n_text)
        n_total = gl.where(q_padded, 0, n_text + n_video)
    b = bh // heads

    smem_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, HEAD_DIM], q_desc.dtype)
    q_smem = gl.allocate_shared_memory(q_desc.dtype, [2, WG_ROWS, HEAD_DIM], smem_layout)
    k_smem = gl.allocate_shared_memory(q_desc.dtype, [STAGES, BLOCK_N, HEAD_DIM], smem_layout)
    v_smem = gl.allocate_shared_memory(q_desc.dtype, [STAGES, BLOCK_N, HEAD_DIM], smem_layout)
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

    # (Argument tuples are written out: a tuple built by concatenation loses its constexpr entries.)
    gl.warp_specialize([
        (_consumer, (o_desc, ot_desc, q_smem, k_smem, v_smem, q_bar, ready, empty, turn, TextMask, MassLog, LseOut,
                     bh, b, q_row, text_query, n_text, n_total, text_len, stride_tb, stride_tm, qk_scale, n_first,
                     spans, last_spans, st, sh, sw, wh, ww, NT, NH, NW, TT, TH, TW, REM_T, REM_H, REM_W, BPT_LAST,
                     BLOCK_N, STAGES, HAS_PADDING, HAS_TEXT_MASK, NATURAL, MASS, COMPACT, 0, PINGPONG, SLACK)),
        (_consumer, (o_desc, ot_desc, q_smem, k_smem, v_smem, q_bar, ready, empty, turn, TextMask, MassLog, LseOut,
                     bh, b, q_row, text_query, n_text, n_total, text_len, stride_tb, stride_tm, qk_scale, n_first,
                     spans, last_spans, st, sh, sw, wh, ww, NT, NH, NW, TT, TH, TW, REM_T, REM_H, REM_W, BPT_LAST,
                     BLOCK_N, STAGES, HAS_PADDING, HAS_TEXT_MASK, NATURAL, MASS, COMPACT, 1, PINGPONG, SLACK)),
        (_producer, (q_desc, k_desc, v_desc, qt_desc, kt_desc, vt_desc, q_smem, k_smem, v_smem, q_bar, ready, empty,
                     bh, q_row, text_query, n_text, n_total, n_first, spans, last_spans, st, sh, sw, wh, ww, NT, NH,
                     NW, TT, TH, TW, REM_T, REM_H, REM_W, BPT_LAST, BLOCK_N, STAGES, NATURAL, COMPACT)),
    ], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])


# ----------------------------------------------------------------------------------------------- host side
def _inputs_ok(q: torch.Tensor, geometry: Geometry) -> tuple[bool, str]:
    """Whether the kernel runs these inputs (either layout); why not. Called by ``kernels.backends`` only."""
    if q.device.type != "cuda" or torch.cuda.get_device_capability(q.device) != (9, 0):
        return False, "needs a Hopper (sm_90) GPU"
    if q.dtype not in (torch.bfloat16, torch.float16):
        return False, f"dtype {q.dtype} (bf16 or fp16 only)"
    if q.shape[-1] not in DEFAULT_STAGES:  # == backends.GLUON_HEAD_DIMS (a test keeps them equal)
        return False, f"head dim {q.shape[-1]} ({' or '.join(map(str, sorted(DEFAULT_STAGES)))} only)"
    tv = geometry.tile_volume
    if tv % (2 * QUERY_ROWS) or tv % BLOCK_N:
        return False, f"tile volume {tv} is not a multiple of {max(2 * QUERY_ROWS, BLOCK_N)}"
    return True, "ok"


def _natural_boxes_ok(geometry: Geometry) -> tuple[bool, str]:
    """Whether query and key blocks are TMA boxes of whole tile planes (the in-place natural-order path)."""
    tt, th, tw = geometry.tile
    plane = th * tw
    if QUERY_ROWS % plane or BLOCK_N % plane or tt % (BLOCK_N // plane) or tt % (QUERY_ROWS // plane):
        return False, f"blocks of {QUERY_ROWS} and {BLOCK_N} tokens are not boxes of whole ({th}, {tw}) planes"
    return True, "ok"


def _layout(block, torch_dtype):
    return _layout_of(tuple(block), torch_dtype)


@functools.lru_cache(maxsize=64)
def _layout_of(block: tuple, torch_dtype):
    return gl.NVMMASharedLayout.get_default_for(list(block), gl.bfloat16 if torch_dtype == torch.bfloat16
                                                else gl.float16)


def _rows_descriptor(x: torch.Tensor, start: int, length: int, block: int) -> TensorDescriptor:
    """3-D ``[batch*heads, length, D]`` view of rows ``start ..`` of ``x`` (B, H, S, D); loads past it read zeros."""
    B, H, _, D = x.shape
    view = x.narrow(2, start, length)
    return TensorDescriptor(view, [B * H, length, D], [x.stride(1), x.stride(2), 1], [1, block, D],
                            _layout([1, block, D], x.dtype))


def _canvas_descriptor(x: torch.Tensor, geometry: Geometry, start: int, block: int) -> TensorDescriptor:
    """5-D ``[batch*heads, T, H, W, D]`` view of the natural-order video tokens of ``x`` (B, H, S, D)."""
    B, H, _, D = x.shape
    T, Hc, W = geometry.canvas
    _, th, tw = geometry.tile
    ss = x.stride(2)
    box = [1, block // (th * tw), th, tw, D]
    return TensorDescriptor(x.narrow(2, start, geometry.video_len), [B * H, T, Hc, W, D],
                            [x.stride(1), Hc * W * ss, W * ss, ss, 1], box, _layout(box, x.dtype))


#: FA3's ping-pong between the two consumer warpgroups (they take turns to issue their wgmmas; mbarrier handshake).
#: Off: measured on an H200 (bench/results/pingpong-check-h200-20261202T124343Z.json) at 0.97-1.00x of the
#: free-running warpgroups at every shape, bit-identical; kept as a switch for other GPUs. Tests run both.
DEFAULT_PINGPONG = False

#: FlashAttention-4's lazy rescaling in the video key loop (``_softmax``'s ``SLACK``, log2 units): a row's reference
#: max moves only when a block's max exceeds it by more than this, and the accumulator is rescaled only when some row
#: of the warpgroup moved. 0.0: rescale every block (exact online softmax).
DEFAULT_RESCALE_SLACK = 0.0


def _launch(q, k, v, out, geometry: Geometry, windows, text_len, text_start, video_start, text_mask, scale, natural,
            stages, mass_log: torch.Tensor | None = None, lse_out: torch.Tensor | None = None, compact: bool = False,
            pingpong: bool | None = None):
    """``mass_log``/``lse_out`` (float32, ``B*heads*padded_len*(num_tiles + 1)`` / ``B*heads*padded_len``): the
    profiler's per-row tile sums (kernels/recall/gluon_fused.py); the kernel then records them. ``compact``: the
    video rows are in compact tile order (``Geometry.compact_tile_index``; tile-order descriptors)."""
    from .triton_fwd import _head_order

    compact = compact and not geometry.is_divisible
    if compact and natural:
        raise ValueError("compact tile order runs on tile-order descriptors")

    B, heads, S, D = q.shape
    stages = stages or DEFAULT_STAGES[D]
    smem = (2 * QUERY_ROWS + 2 * stages * BLOCK_N) * D * q.element_size()
    if smem > SMEM_LIMIT:
        raise ValueError(f"{stages} K/V stages at head dim {D} need {smem} bytes of shared memory (> {SMEM_LIMIT})")
    windows = device_windows(windows, q.device)
    if natural:
        video = [_canvas_descriptor(x, geometry, video_start, blk)
                 for x, blk in ((q, QUERY_ROWS), (k, BLOCK_N), (v, BLOCK_N), (out, QUERY_ROWS))]
    else:
        video = [_rows_descriptor(x, 0, geometry.padded_len, blk)
                 for x, blk in ((q, QUERY_ROWS), (k, BLOCK_N), (v, BLOCK_N), (out, QUERY_ROWS))]
    if text_len:
        text = [_rows_descriptor(x, text_start, text_len, blk)
                for x, blk in ((q, QUERY_ROWS), (k, BLOCK_N), (v, BLOCK_N), (out, QUERY_ROWS))]
    else:  # never read: any descriptors of the right block shapes
        text = [_rows_descriptor(x, 0, S, blk) for x, blk in ((q, QUERY_ROWS), (k, BLOCK_N), (v, BLOCK_N),
                                                              (out, QUERY_ROWS))]
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
        *video, *text, windows, _head_order(windows, geometry.grid), mask_arg,
        windows if mass_log is None else mass_log, windows if lse_out is None else lse_out, stride_tb, stride_tm,
        scale * LOG2E, heads, text_len, text_programs,
        NT=nt, NH=nh, NW=nw, TT=tt, TH=th, TW=tw, REM_T=rem[0], REM_H=rem[1], REM_W=rem[2], HEAD_DIM=D,
        BLOCK_N=BLOCK_N, STAGES=stages, HAS_PADDING=not geometry.is_divisible and not compact,
        HAS_TEXT_MASK=bool(text_len) and text_mask is not None, NATURAL=natural, PRODUCER_REGS=24,
        CONSUMER_REGS=240, MASS=mass_log is not None, COMPACT=compact,
        PINGPONG=DEFAULT_PINGPONG if pingpong is None else bool(pingpong), SLACK=float(DEFAULT_RESCALE_SLACK),
        num_warps=4,
    )
    return out


def require_runnable(q: torch.Tensor, geometry: Geometry, natural: bool, kernel: str = "gluon") -> None:
    """ValueError unless the Gluon kernels (this one and ``gluon_fp8``) run ``q``, and with ``natural`` read and
    write natural order in place (for entries called directly; ``kernels.backends`` decides for sta_attention)."""
    ok, why = _inputs_ok(q, geometry)
    if ok and natural:
        ok, why = _natural_boxes_ok(geometry)
    if not ok:
        raise ValueError(f"the {kernel} STA kernel cannot run: {why}")


def _prepare(q, k, v, out, geometry, natural):
    require_runnable(q, geometry, natural)
    def tma_ready(x):  # batch and heads merge into one TMA dimension; 16-byte aligned base and strides
        return ((x.shape[0] == 1 or x.stride(0) == x.shape[1] * x.stride(1)) and x.stride(-1) == 1
                and x.data_ptr() % 16 == 0 and all(st * x.element_size() % 16 == 0 for st in x.stride()[:-1]))

    q, k, v = (x if tma_ready(x) else x.contiguous() for x in (q, k, v))
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    elif out.shape != q.shape or out.dtype != q.dtype or out.device != q.device or not tma_ready(out):
        raise ValueError(f"out must match q ({tuple(q.shape)}, {q.dtype}, {q.device}) in a TMA-compatible layout "
                         "(last dim contiguous, batch and heads mergeable, 16-byte aligned)")
    return q, k, v, out


def sta_gluon_tiled(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, geometry: Geometry, windows: torch.Tensor,
                    text_len: int, text_mask: torch.Tensor | None, scale: float | None, *,
                    out: torch.Tensor | None = None, stages: int | None = None) -> torch.Tensor:
    """STA on tile-order inputs ``[padded video tiles | text]``; contract of :func:`.triton_fwd.sta_triton_tiled`.

    ``stages``: K/V ring depth; default :data:`DEFAULT_STAGES` for the head dim."""
    B, heads, L, D = q.shape
    if L != geometry.padded_len + text_len:
        raise ValueError(f"tiled sequence length {L} != padded video {geometry.padded_len} + text_len {text_len}")
    q, k, v, out = _prepare(q, k, v, out, geometry, natural=False)
    return _launch(q, k, v, out, geometry, windows, text_len, geometry.padded_len, 0, text_mask, scale,
                   natural=False, stages=stages)


#: How :func:`sta_gluon_natural` runs a padded canvas: ``"compact"`` (copy into compact tile order, where only the
#: last key block of a border tile holds padding; bench/NOTES.md, session 8) or ``"in-place"`` (5-D TMA boxes of
#: tile planes, padding computed and masked per key).
PADDED_CANVAS_PATHS = ("compact", "in-place")
DEFAULT_PADDED_CANVAS_PATH = "compact"


def sta_gluon_natural(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, geometry: Geometry, windows: torch.Tensor,
                      text_len: int, text_first: bool, text_mask: torch.Tensor | None, scale: float | None, *,
                      out: torch.Tensor | None = None, stages: int | None = None,
                      padded: str | None = None) -> torch.Tensor:
    """STA on natural-order tokens ``(B, heads, T*H*W + text_len, D)`` (text before or after the video).

    Divisible canvases run in place: video tokens are read and written as 5-D TMA boxes of whole tile planes of
    the ``[T, H, W]`` canvas. Padded canvases run as ``padded`` says (default
    :data:`DEFAULT_PADDED_CANVAS_PATH`): ``"compact"`` copies the video tokens into compact tile order
    (:func:`sta_gluon_compact`); ``"in-place"`` reads boxes crossing the canvas edge as zeros (masked as
    padding) and writes nothing past it.
    """
    B, heads, S, D = q.shape
    if S != geometry.video_len + text_len:
        raise ValueError(f"sequence length {S} != canvas volume {geometry.video_len} + text_len {text_len}")
    padded = padded or DEFAULT_PADDED_CANVAS_PATH
    if padded not in PADDED_CANVAS_PATHS:
        raise ValueError(f"padded must be one of {PADDED_CANVAS_PATHS}, got {padded!r}")
    if not geometry.is_divisible and (padded == "compact" or not _natural_boxes_ok(geometry)[0]):
        return sta_gluon_compact(q, k, v, geometry, windows, text_len, text_first, text_mask, scale, out=out,
                                 stages=stages)
    q, k, v, out = _prepare(q, k, v, out, geometry, natural=True)
    video_start, text_start = (text_len, 0) if text_first else (0, geometry.video_len)
    return _launch(q, k, v, out, geometry, windows, text_len, text_start, video_start, text_mask, scale,
                   natural=True, stages=stages)


def sta_gluon_compact(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, geometry: Geometry, windows: torch.Tensor,
                      text_len: int, text_first: bool, text_mask: torch.Tensor | None, scale: float | None, *,
                      out: torch.Tensor | None = None, stages: int | None = None) -> torch.Tensor:
    """STA on natural-order tokens through compact tile order (``Geometry.compact_tile_index``): each tile's real
    tokens first, so the kernel skips every all-padding key and query block and masks only a border tile's last
    key block. Costs one gather of q, k, v and one of the output; on padded canvases it executes fewer token
    pairs than the in-place path (wan-480p with tile (6,8,8) at (3,3,3): 1.23x the attended pairs instead of
    1.33x)."""
    S, V = q.shape[2], geometry.video_len
    if S != V + text_len:
        raise ValueError(f"sequence length {S} != canvas volume {V} + text_len {text_len}")
    require_runnable(q, geometry, natural=False)

    def run(qt, kt, vt):
        return _launch(qt, kt, vt, torch.empty_like(qt), geometry, windows, text_len, geometry.padded_len, 0,
                       text_mask, scale, natural=False, stages=stages, compact=True)

    return run_compact(q, k, v, geometry, text_len, text_first, run, out)


sta_fwd_gluon_kernel = _sta_fwd_gluon_kernel  # the JIT function, for tools that compile it without launching
