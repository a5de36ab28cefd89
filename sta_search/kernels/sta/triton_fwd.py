"""Sliding Tile Attention forward pass in Triton: one launch for every (batch, head, query block).

Two layouts, one kernel (``NATURAL`` compile-time flag):

- tile order, ``[padded video tiles | text]`` (docs/geometry.md): :func:`sta_triton_tiled`;
- natural T-major order with text before or after the video: :func:`sta_triton_natural`, which reads
  and writes the video tokens in place through 5-D TMA boxes of whole tile planes (a 128-token
  block of a (6,8,8) tile is a (2,8,8) box of the canvas and arrives T-major, i.e. in tile order), so
  no tile/untile copies are needed. ``sta_attention`` uses it on CUDA when the layout allows.

A query block of ``BLOCK_M`` rows lies inside one tile (``BLOCK_M`` divides the tile volume), so all
its rows see the same key tiles. The key tiles are computed in the kernel from the tile coordinates
and the head's window (a ``(heads, 3)`` int32 table): along each axis the window starts at
``clamp(q - (w - 1) // 2, 0, n - min(w, n))``. The window is walked as one flat loop of ``BLOCK_N``
key blocks (spans of ``ww`` tiles along W, kt-major), which keeps Triton's software pipelining over
the whole window.

Blocks are dense: the only masking is

- padded tokens of border tiles when the canvas is not divisible by the tile (``HAS_PADDING``, a
  compile-time flag: a divisible canvas compiles no mask at all); key blocks that are entirely
  padding (t-planes past the canvas in the last row of tiles) are not visited, and query blocks that
  are entirely padding do no work;
- text keys: beyond ``text_len`` and where ``text_mask`` is False.

Video queries attend to their window plus every valid text key; text queries attend to every valid
key. The softmax is online, in fp32, with ``exp2`` and ``log2(e)`` folded into the scale. Every
output element is written (tile order: padded video query rows get finite values). Text key blocks
go through TMA before the window loop on GPUs (after it, text keys cost 3x more: bench/NOTES.md); a
masked step whose rows have seen no valid key yet (all text keys padded) adds exact zeros.

Program order (1-D grid): text query blocks first (each is as costly as a dense row), then video
query blocks of heads sorted by window volume, heaviest first, query blocks of one head adjacent
(they share key tiles in L2). Measurements and the configs tried: ``bench/NOTES.md``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from .._interpreter import patch_interpreter
from ..geometry import Geometry
from .tables import device_windows

SUPPORTED_HEAD_DIMS = (32, 64, 128)
LOG2E = 1.4426950408889634


patch_interpreter()


@dataclass(frozen=True)
class KernelConfig:
    """Launch parameters. ``block_m`` and ``block_n`` must divide the tile volume."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    tma: bool = False  # K/V of the window loop through TMA tensor descriptors (Hopper+, CUDA only)
    warp_specialize: bool = False  # Triton's automatic warp specialization of the window loop
    text_tma: bool = False  # text key blocks through TMA in their own pipelined loop (TMA configs only)
    text_before: bool = False  # text key blocks before the window loop instead of after it


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
    # Measured and left off (bench/NOTES.md): warp specialization (within run-to-run noise either way); text
    # blocks in the window loop (31.3 -> 42.8 ms tile order, 32.1 -> 63.7 ms natural, text 256; removed).
    # Text blocks through TMA before the window loop: text 256 costs +6% over video only in place (+11.5%
    # median of a paired run; +10-16% with the text loop after the window loop), the arithmetic floor being +5%.
    return KernelConfig(bm, bn, warps, 3, tma=tma, text_tma=tma, text_before=tma)


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
    if MASKED:  # a row with no valid key so far (text first, all masked): exp2(-inf - -inf) would be NaN
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_use = m_new
    p = tl.math.exp2(qk * qk_scale - m_use[:, None])
    alpha = tl.math.exp2(m_i - m_use)
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
def _load_block(X, XDesc, b, h, bh, tile, sub, offs_n, offs_d, stride_xn,
                NH: tl.constexpr, NW: tl.constexpr, TT: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
                HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, USE_TMA: tl.constexpr, NATURAL: tl.constexpr):
    """Block ``sub`` (``BLOCK_N`` tokens, tile order) of key tile ``tile`` of K or V."""
    if NATURAL:
        # A block is the (BLOCK_N / (TH*TW), TH, TW) box of the tile starting at t-plane sub*BT:
        # the TMA box comes back T-major, i.e. in tile order. Boxes past the canvas read zeros.
        BT: tl.constexpr = BLOCK_N // (TH * TW)
        kt = tile // (NH * NW)
        kh = (tile // NW) % NH
        kw = tile % NW
        x = XDesc.load([bh, kt * TT + sub * BT, kh * TH, kw * TW, 0]).reshape(BLOCK_N, HEAD_DIM)
    else:
        start = tile * (TT * TH * TW) + sub * BLOCK_N
        if USE_TMA:
            x = XDesc.load([b, h, start, 0]).reshape(BLOCK_N, HEAD_DIM)
        else:
            x = tl.load(X + (start + offs_n)[:, None] * stride_xn + offs_d[None, :])
    return x


@triton.jit
def _load_key_block(K, V, KDesc, VDesc, b, h, bh, tile, sub, offs_n, offs_d, stride_kn, stride_vn,
                    NH: tl.constexpr, NW: tl.constexpr, TT: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
                    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, USE_TMA: tl.constexpr, NATURAL: tl.constexpr):
    """Key/value block ``sub`` (``BLOCK_N`` tokens, tile order) of key tile ``tile``."""
    k = _load_block(K, KDesc, b, h, bh, tile, sub, offs_n, offs_d, stride_kn, NH, NW, TT, TH, TW, HEAD_DIM, BLOCK_N,
                    USE_TMA, NATURAL)
    v = _load_block(V, VDesc, b, h, bh, tile, sub, offs_n, offs_d, stride_vn, NH, NW, TT, TH, TW, HEAD_DIM, BLOCK_N,
                    USE_TMA, NATURAL)
    return k, v


@triton.jit
def _clamped_window(Windows, h, ct, ch, cw, NT: tl.constexpr, NH: tl.constexpr, NW: tl.constexpr,
                    BPT: tl.constexpr):
    """Head ``h``'s window around query tile ``(ct, ch, cw)``, clamped to the grid, as the window loop walks it:
    start ``(st, sh, sw)``, extent ``(wh, ww)``, ``spans`` (kt, kh) rows of ``ww`` tiles, kt-major, of which
    the ``last_spans`` of the last t-row (if the window reaches it) come last, and the ``n_first`` key
    blocks before those. Scalar only: the Gluon kernel compiles the same function."""
    wt = tl.minimum(tl.maximum(tl.load(Windows + h * 3 + 0), 1), NT)  # an unchecked GPU table: below 1 reads as 1
    wh = tl.minimum(tl.maximum(tl.load(Windows + h * 3 + 1), 1), NH)
    ww = tl.minimum(tl.maximum(tl.load(Windows + h * 3 + 2), 1), NW)
    st = tl.minimum(tl.maximum(ct - (wt - 1) // 2, 0), NT - wt)
    sh = tl.minimum(tl.maximum(ch - (wh - 1) // 2, 0), NH - wh)
    sw = tl.minimum(tl.maximum(cw - (ww - 1) // 2, 0), NW - ww)
    spans = wt * wh
    last_spans = tl.where(st + wt == NT, wh, 0)
    n_first = (spans - last_spans) * ww * BPT
    return st, sh, sw, wh, ww, spans, last_spans, n_first


@triton.jit
def _real_tokens(kt, kh, kw, NT: tl.constexpr, NH: tl.constexpr, NW: tl.constexpr, TT: tl.constexpr,
                 TH: tl.constexpr, TW: tl.constexpr, REM_T: tl.constexpr, REM_H: tl.constexpr, REM_W: tl.constexpr):
    """Real (canvas) tokens of tile ``(kt, kh, kw)``: fewer in border tiles of a padded canvas."""
    return (tl.where(kt == NT - 1, REM_T, TT) * tl.where(kh == NH - 1, REM_H, TH)
            * tl.where(kw == NW - 1, REM_W, TW))


@triton.jit
def _next_compact_block(kt, kh, kw, sub, n_real, sh, sw, wh, ww, NT: tl.constexpr, NH: tl.constexpr,
                        NW: tl.constexpr, TT: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr, REM_T: tl.constexpr,
                        REM_H: tl.constexpr, REM_W: tl.constexpr, BLOCK_N: tl.constexpr):
    """The window walk in compact tile order (``Geometry.compact_tile_index``), one key block on: a tile's blocks
    holding real tokens (its ``cdiv(n_real, BLOCK_N)`` first), tiles in spans of ``ww`` along W, spans kh-minor:
    ascending tile ids. Scalar only (the Gluon kernel compiles the same function); returns the new state and the
    new tile's real tokens."""
    sub = sub + 1
    tile_done = sub * BLOCK_N >= n_real
    sub = tl.where(tile_done, 0, sub)
    kw = tl.where(tile_done, kw + 1, kw)
    span_done = kw == sw + ww
    kw = tl.where(span_done, sw, kw)
    kh = tl.where(span_done, kh + 1, kh)
    row_done = kh == sh + wh
    kh = tl.where(row_done, sh, kh)
    kt = tl.where(row_done, kt + 1, kt)
    return kt, kh, kw, sub, _real_tokens(kt, kh, kw, NT, NH, NW, TT, TH, TW, REM_T, REM_H, REM_W)


@triton.jit
def _compact_blocks(st, sh, sw, wt, wh, ww, NT: tl.constexpr, NH: tl.constexpr, NW: tl.constexpr,
                    TT: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr, REM_T: tl.constexpr, REM_H: tl.constexpr,
                    REM_W: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key blocks of a clamped window in compact tile order: per axis the window holds full tiles and at most one
    border tile (the grid's last), so eight products of (tiles of each kind) x (blocks of such a tile)."""
    bt = tl.where(st + wt == NT, 1, 0)
    bh = tl.where(sh + wh == NH, 1, 0)
    bw = tl.where(sw + ww == NW, 1, 0)
    ft = wt - bt
    fh = wh - bh
    fw = ww - bw
    B_FFF: tl.constexpr = (TT * TH * TW + BLOCK_N - 1) // BLOCK_N
    B_FFB: tl.constexpr = (TT * TH * REM_W + BLOCK_N - 1) // BLOCK_N
    B_FBF: tl.constexpr = (TT * REM_H * TW + BLOCK_N - 1) // BLOCK_N
    B_FBB: tl.constexpr = (TT * REM_H * REM_W + BLOCK_N - 1) // BLOCK_N
    B_BFF: tl.constexpr = (REM_T * TH * TW + BLOCK_N - 1) // BLOCK_N
    B_BFB: tl.constexpr = (REM_T * TH * REM_W + BLOCK_N - 1) // BLOCK_N
    B_BBF: tl.constexpr = (REM_T * REM_H * TW + BLOCK_N - 1) // BLOCK_N
    B_BBB: tl.constexpr = (REM_T * REM_H * REM_W + BLOCK_N - 1) // BLOCK_N
    return (ft * fh * (fw * B_FFF + bw * B_FFB) + ft * bh * (fw * B_FBF + bw * B_FBB)
            + bt * fh * (fw * B_BFF + bw * B_BFB) + bt * bh * (fw * B_BBF + bw * B_BBB))


@triton.jit
def _window_block(j, n_first, spans, last_spans, st, sh, sw, wh, ww, NH: tl.constexpr, NW: tl.constexpr,
                  BPT: tl.constexpr, BPT_LAST: tl.constexpr):
    """(key tile, block in tile) of the window loop's ``j``-th key block (spans of ``ww`` tiles, kt-major)."""
    if BPT_LAST == BPT:
        per_span = ww * BPT
        span = j // per_span
        r = j - span * per_span
        kw_off = r // BPT
        sub = r - kw_off * BPT
    else:
        last = j >= n_first
        jj = tl.where(last, j - n_first, j)
        bpt = tl.where(last, BPT_LAST, BPT)
        per_span = ww * bpt
        span = tl.where(last, spans - last_spans, 0) + jj // per_span
        r = jj % per_span
        kw_off = r // bpt
        sub = r % bpt
    return ((st + span // wh) * NH + sh + span % wh) * NW + sw + kw_off, sub


@triton.jit
def _attend_video_block(acc, m_i, l_i, q, K, V, KDesc, VDesc, b, h, bh, tile, sub, offs_n, offs_d, stride_kn,
                        stride_vn, qk_scale, NT: tl.constexpr, NH: tl.constexpr, NW: tl.constexpr,
                        TT: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr, REM_T: tl.constexpr,
                        REM_H: tl.constexpr, REM_W: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
                        USE_TMA: tl.constexpr, NATURAL: tl.constexpr, HAS_PADDING: tl.constexpr,
                        DOT_PRECISION: tl.constexpr, UPCAST_DOTS: tl.constexpr, n_valid=0,
                        COMPACT: tl.constexpr = False):
    """One online-softmax step over video key block ``sub`` of key tile ``tile``; padding masked if any
    (``COMPACT``: the block's keys past ``n_valid`` are its tile's padding)."""
    k, v = _load_key_block(K, V, KDesc, VDesc, b, h, bh, tile, sub, offs_n, offs_d, stride_kn, stride_vn,
                           NH, NW, TT, TH, TW, HEAD_DIM, BLOCK_N, USE_TMA, NATURAL)
    if COMPACT:
        if n_valid < BLOCK_N:
            acc, m_i, l_i = _online_softmax_step(acc, m_i, l_i, q, k, v, qk_scale, (offs_n < n_valid)[None, :], True,
                                                 DOT_PRECISION, UPCAST_DOTS)
        else:
            acc, m_i, l_i = _online_softmax_step(acc, m_i, l_i, q, k, v, qk_scale, 0, False, DOT_PRECISION,
                                                 UPCAST_DOTS)
    elif HAS_PADDING:
        key_ok = _padding_ok(tile, sub * BLOCK_N + offs_n, NH, NW, TH, TW, NT, REM_T, REM_H, REM_W)
        acc, m_i, l_i = _online_softmax_step(acc, m_i, l_i, q, k, v, qk_scale, key_ok[None, :], True, DOT_PRECISION,
                                             UPCAST_DOTS)
    else:
        acc, m_i, l_i = _online_softmax_step(acc, m_i, l_i, q, k, v, qk_scale, 0, False, DOT_PRECISION, UPCAST_DOTS)
    return acc, m_i, l_i


@triton.jit
def _attend_text(acc, m_i, l_i, q, Kb, Vb, KTDesc, VTDesc, Tb, b, h, offs_n, offs_d, stride_kn, stride_vn, stride_tm,
                 qk_scale, text_len_here, text_len, text_start, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
                 HAS_TEXT_MASK: tl.constexpr, TEXT_TMA: tl.constexpr, DOT_PRECISION: tl.constexpr,
                 UPCAST_DOTS: tl.constexpr):
    """Online-softmax steps over the first ``text_len_here`` text keys (bounds and key-padding masked)."""
    if TEXT_TMA:
        # Rows past the text are zeros (text after video) or video rows (text first): masked either way.
        for start in tl.range(0, text_len_here, BLOCK_N, num_stages=2):
            cols = start + offs_n
            key_ok = cols < text_len
            if HAS_TEXT_MASK:
                key_ok = key_ok & (tl.load(Tb + cols * stride_tm, mask=key_ok, other=0) != 0)
            k = KTDesc.load([b, h, text_start + start, 0]).reshape(BLOCK_N, HEAD_DIM)
            v = VTDesc.load([b, h, text_start + start, 0]).reshape(BLOCK_N, HEAD_DIM)
            acc, m_i, l_i = _online_softmax_step(acc, m_i, l_i, q, k, v, qk_scale, key_ok[None, :], True,
                                                 DOT_PRECISION, UPCAST_DOTS)
    else:
        for start in range(0, text_len_here, BLOCK_N):
            cols = start + offs_n
            in_text = cols < text_len
            key_ok = in_text
            if HAS_TEXT_MASK:
                key_ok = key_ok & (tl.load(Tb + cols * stride_tm, mask=in_text, other=0) != 0)
            krows = text_start + cols
            k = tl.load(Kb + krows[:, None] * stride_kn + offs_d[None, :], mask=in_text[:, None], other=0.0)
            v = tl.load(Vb + krows[:, None] * stride_vn + offs_d[None, :], mask=in_text[:, None], other=0.0)
            acc, m_i, l_i = _online_softmax_step(acc, m_i, l_i, q, k, v, qk_scale, key_ok[None, :], True,
                                                 DOT_PRECISION, UPCAST_DOTS)
    return acc, m_i, l_i


@triton.jit
def _sta_fwd_kernel(
    Q, K, V, Out, QDesc, KDesc, VDesc, ODesc, KTDesc, VTDesc, Windows, HeadOrder, TextMask,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    stride_tb, stride_tm,
    qk_scale, heads, text_len, text_start, text_programs,
    NT: tl.constexpr, NH: tl.constexpr, NW: tl.constexpr,
    TT: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
    REM_T: tl.constexpr, REM_H: tl.constexpr, REM_W: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_PADDING: tl.constexpr, HAS_TEXT: tl.constexpr, HAS_TEXT_MASK: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST_DOTS: tl.constexpr, USE_TMA: tl.constexpr, NATURAL: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr, TEXT_TMA: tl.constexpr, TEXT_BEFORE: tl.constexpr, COMPACT: tl.constexpr = False,
):
    TILE_VOL: tl.constexpr = TT * TH * TW
    NUM_TILES: tl.constexpr = NT * NH * NW
    Q_PER_TILE: tl.constexpr = TILE_VOL // BLOCK_M
    VIDEO_Q_BLOCKS: tl.constexpr = NUM_TILES * Q_PER_TILE
    BPT: tl.constexpr = TILE_VOL // BLOCK_N  # key blocks per tile
    # Tiles of the last t-row hold only REM_T t-planes: their key blocks past those are all padding, skipped.
    BPT_LAST: tl.constexpr = (REM_T * TH * TW + BLOCK_N - 1) // BLOCK_N
    Q_LAST: tl.constexpr = (REM_T * TH * TW + BLOCK_M - 1) // BLOCK_M

    pid = tl.program_id(0)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)

    if pid < text_programs:
        text_q_blocks = tl.cdiv(text_len, BLOCK_M)
        bh = pid // text_q_blocks
        b = bh // heads
        h = bh % heads
        q_sub = pid % text_q_blocks
        tile = 0
    else:
        p = pid - text_programs
        slot = p // VIDEO_Q_BLOCKS
        b = slot // heads
        h = tl.load(HeadOrder + slot % heads)
        bh = b * heads + h
        tile = (p % VIDEO_Q_BLOCKS) // Q_PER_TILE
        q_sub = p % Q_PER_TILE
    is_text_query = pid < text_programs
    ct = tile // (NH * NW)
    ch = (tile // NW) % NH
    cw = tile % NW

    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    Qb = Q + b64 * stride_qb + h64 * stride_qh
    Kb = K + b64 * stride_kb + h64 * stride_kh
    Vb = V + b64 * stride_vb + h64 * stride_vh
    Ob = Out + b64 * stride_ob + h64 * stride_oh
    Tb = TextMask + b64 * stride_tb

    if COMPACT:  # compact tile order: a tile's real rows first; blocks past them are all padding
        q_padded = (pid >= text_programs) & (q_sub * BLOCK_M >= _real_tokens(ct, ch, cw, NT, NH, NW, TT, TH, TW, REM_T,
                                                                                REM_H, REM_W))
    else:
        q_padded = (pid >= text_programs) & (ct == NT - 1) & (q_sub >= Q_LAST)
    # Rows addressed through pointers: text queries (both layouts) and video queries in tile order.
    rows = tl.where(is_text_query, text_start, tile * TILE_VOL) + q_sub * BLOCK_M + offs_m
    row_ok = (rows < text_start + text_len) | (pid >= text_programs)
    BTM: tl.constexpr = BLOCK_M // (TH * TW) if NATURAL else 1
    if is_text_query:
        q = tl.load(Qb + rows[:, None] * stride_qm + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    else:
        if NATURAL:
            q = QDesc.load([bh, ct * TT + q_sub * BTM, ch * TH, cw * TW, 0]).reshape(BLOCK_M, HEAD_DIM)
        else:
            q = tl.load(Qb + rows[:, None] * stride_qm + offs_d[None, :])

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)

    # Padding query blocks (tile order) skip the text.
    text_len_here = tl.where(q_padded, 0, text_len)
    if HAS_TEXT and TEXT_BEFORE:
        acc, m_i, l_i = _attend_text(acc, m_i, l_i, q, Kb, Vb, KTDesc, VTDesc, Tb, b, h, offs_n, offs_d, stride_kn,
                                     stride_vn, stride_tm, qk_scale, text_len_here, text_len, text_start, HEAD_DIM,
                                     BLOCK_N, HAS_TEXT_MASK, TEXT_TMA, DOT_PRECISION, UPCAST_DOTS)

    if COMPACT:  # the walk of _next_compact_block over the window (every tile for text queries)
        if is_text_query:
            st = tl.full([], 0, tl.int32)
            sh = st
            sw = st
            wt = st + NT
            wh = st + NH
            ww = st + NW
        else:
            st, sh, sw, wh, ww, spans, last_spans, n_first = _clamped_window(Windows, h64, ct, ch, cw, NT, NH, NW, BPT)
            wt = spans // wh
        n_total = tl.where(q_padded, 0, _compact_blocks(st, sh, sw, wt, wh, ww, NT, NH, NW, TT, TH, TW, REM_T, REM_H,
                                                         REM_W, BLOCK_N))
        kt = st
        kh = sh
        kw = sw
        sub = st * 0
        n_real = _real_tokens(st, sh, sw, NT, NH, NW, TT, TH, TW, REM_T, REM_H, REM_W)
        for j in tl.range(0, n_total, warp_specialize=WARP_SPECIALIZE):
            acc, m_i, l_i = _attend_video_block(acc, m_i, l_i, q, Kb, Vb, KDesc, VDesc, b, h, bh,
                                                (kt * NH + kh) * NW + kw, sub, offs_n, offs_d, stride_kn, stride_vn,
                                                qk_scale, NT, NH, NW, TT, TH, TW, REM_T, REM_H, REM_W, HEAD_DIM,
                                                BLOCK_N, USE_TMA, NATURAL, HAS_PADDING, DOT_PRECISION, UPCAST_DOTS,
                                                n_real - sub * BLOCK_N, COMPACT)
            kt, kh, kw, sub, n_real = _next_compact_block(kt, kh, kw, sub, n_real, sh, sw, wh, ww, NT, NH, NW, TT, TH,
                                                          TW, REM_T, REM_H, REM_W, BLOCK_N)
    elif is_text_query:
        # Dense over every key tile; tiles of the last t-row have fewer (non-padding) blocks.
        n_first: tl.constexpr = (NT - 1) * NH * NW * BPT
        for j in range(0, n_first + NH * NW * BPT_LAST):
            last = j >= n_first
            jj = tl.where(last, j - n_first, j)
            bpt = tl.where(last, BPT_LAST, BPT)
            key_tile = tl.where(last, (NT - 1) * NH * NW, 0) + jj // bpt
            sub = jj % bpt
            acc, m_i, l_i = _attend_video_block(acc, m_i, l_i, q, Kb, Vb, KDesc, VDesc, b, h, bh, key_tile, sub,
                                                offs_n, offs_d, stride_kn, stride_vn, qk_scale, NT, NH, NW, TT, TH,
                                                TW, REM_T, REM_H, REM_W, HEAD_DIM, BLOCK_N, USE_TMA, NATURAL,
                                                HAS_PADDING, DOT_PRECISION, UPCAST_DOTS)
    elif q_padded == 0:
        # The spans of the last t-row have BPT_LAST blocks per tile.
        st, sh, sw, wh, ww, spans, last_spans, n_first = _clamped_window(Windows, h64, ct, ch, cw, NT, NH, NW, BPT)
        n_total = n_first + last_spans * ww * BPT_LAST
        for j in tl.range(0, n_total, warp_specialize=WARP_SPECIALIZE):
            key_tile, sub = _window_block(j, n_first, spans, last_spans, st, sh, sw, wh, ww, NH, NW, BPT, BPT_LAST)
            acc, m_i, l_i = _attend_video_block(acc, m_i, l_i, q, Kb, Vb, KDesc, VDesc, b, h, bh, key_tile, sub,
                                                offs_n, offs_d, stride_kn, stride_vn, qk_scale, NT, NH, NW, TT, TH,
                                                TW, REM_T, REM_H, REM_W, HEAD_DIM, BLOCK_N, USE_TMA, NATURAL,
                                                HAS_PADDING, DOT_PRECISION, UPCAST_DOTS)

    if HAS_TEXT and not TEXT_BEFORE:
        acc, m_i, l_i = _attend_text(acc, m_i, l_i, q, Kb, Vb, KTDesc, VTDesc, Tb, b, h, offs_n, offs_d, stride_kn,
                                     stride_vn, stride_tm, qk_scale, text_len_here, text_len, text_start, HEAD_DIM,
                                     BLOCK_N, HAS_TEXT_MASK, TEXT_TMA, DOT_PRECISION, UPCAST_DOTS)

    if q_padded:  # a block of padding rows (tile order only; never launched work): finite zeros
        l_i = tl.full([BLOCK_M], 1.0, tl.float32)
    out = (acc / l_i[:, None]).to(Out.dtype.element_ty)
    if NATURAL:
        if is_text_query:
            tl.store(Ob + rows[:, None] * stride_om + offs_d[None, :], out, mask=row_ok[:, None])
        elif q_padded == 0:  # the TMA store drops the rows past the canvas
            ODesc.store([bh, ct * TT + q_sub * BTM, ch * TH, cw * TW, 0], out.reshape(1, BTM, TH, TW, HEAD_DIM))
    else:
        tl.store(Ob + rows[:, None] * stride_om + offs_d[None, :], out, mask=row_ok[:, None])


@functools.lru_cache(maxsize=16)
def _grid_on(grid, device: torch.device) -> torch.Tensor:
    return torch.tensor(grid, device=device, dtype=torch.int32)


def _head_order(windows: torch.Tensor, grid) -> torch.Tensor:
    """Heads sorted by clipped window volume, heaviest first (on device, no host sync)."""
    limits = _grid_on(tuple(grid), windows.device)
    volume = torch.minimum(windows, limits).prod(dim=1)
    return torch.argsort(volume, descending=True, stable=True).to(torch.int32)


def _launch(q, k, v, out, geometry: Geometry, windows, text_len, text_start, text_mask, scale, config: KernelConfig,
            natural: bool, video_start: int = 0, compact: bool = False):
    B, heads, _, D = q.shape
    compact = compact and not geometry.is_divisible
    if compact and natural:
        raise ValueError("compact tile order is a tile-order layout, not the natural one")
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
    if natural:
        descs = [_video_descriptor(x, geometry, video_start, block) for x, block in
                 ((q, config.block_m), (k, config.block_n), (v, config.block_n), (out, config.block_m))]
    elif config.tma:
        descs = [q, TensorDescriptor(k, list(k.shape), list(k.stride()), [1, 1, config.block_n, D]),
                 TensorDescriptor(v, list(v.shape), list(v.stride()), [1, 1, config.block_n, D]), out]
    else:
        descs = [q, k, v, out]  # unused
    text_tma = config.text_tma and text_len > 0 and (config.tma or natural)
    if text_tma:
        descs += [TensorDescriptor(x, list(x.shape), list(x.stride()), [1, 1, config.block_n, D]) for x in (k, v)]
    else:
        descs += [k, v]  # unused
    _sta_fwd_kernel[(text_programs + video_programs,)](
        q, k, v, out, *descs, windows, head_order, text_mask_arg,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
        stride_tb, stride_tm,
        scale * LOG2E, heads, text_len, text_start, text_programs,
        NT=nt, NH=nh, NW=nw, TT=tt, TH=th, TW=tw, REM_T=rem[0], REM_H=rem[1], REM_W=rem[2],
        HEAD_DIM=D, BLOCK_M=config.block_m, BLOCK_N=config.block_n,
        HAS_PADDING=not geometry.is_divisible and not compact, HAS_TEXT=text_len > 0,
        HAS_TEXT_MASK=text_len > 0 and text_mask is not None,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        UPCAST_DOTS=q.device.type != "cuda" and q.dtype == torch.bfloat16,
        USE_TMA=config.tma or natural, NATURAL=natural, WARP_SPECIALIZE=config.warp_specialize,
        TEXT_TMA=text_tma, TEXT_BEFORE=config.text_before, COMPACT=compact,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return out


def _video_descriptor(x: torch.Tensor, geometry: Geometry, video_start: int, block: int) -> TensorDescriptor:
    """5-D TMA view ``[batch*heads, T, H, W, D]`` of the natural-order video tokens of ``x``."""
    B, heads, _, D = x.shape
    T, H, W = geometry.canvas
    _, th, tw = geometry.tile
    ss = x.stride(2)
    video = x.narrow(2, video_start, geometry.video_len)
    return TensorDescriptor(video, [B * heads, T, H, W, D], [x.stride(1), H * W * ss, W * ss, ss, 1],
                            [1, block // (th * tw), th, tw, D])


def _check_common(q, geometry, windows, D, heads):
    if D not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head dim {D} is not supported by the triton backend; use one of {SUPPORTED_HEAD_DIMS}")
    if tuple(windows.shape) != (heads, 3):
        raise ValueError(f"windows must be a ({heads}, 3) table, got shape {tuple(windows.shape)}")


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
        Output in the same tile-order layout (padded video rows are finite: zero or meaningless).
    """
    B, heads, L, D = q.shape
    _check_common(q, geometry, windows, D, heads)
    if L != geometry.padded_len + text_len:
        raise ValueError(f"tiled sequence length {L} != padded video {geometry.padded_len} + text_len {text_len}")
    return _run_tiled(q, k, v, geometry, windows, text_len, text_mask, scale, out, config, compact=False)


def _run_tiled(q, k, v, geometry: Geometry, windows, text_len, text_mask, scale, out, config, compact: bool):
    D = q.shape[-1]
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    windows = device_windows(windows, q.device)
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    elif out.shape != q.shape or out.dtype != q.dtype or out.device != q.device or out.stride(-1) != 1:
        raise ValueError(f"out must match q ({tuple(q.shape)}, {q.dtype}, {q.device}) with a contiguous last dim")
    if config is None:
        config = default_config(geometry.tile_volume, D, q.dtype, q.device.type == "cuda")
    tv = geometry.tile_volume
    if tv % config.block_m or tv % config.block_n:
        raise ValueError(f"block sizes ({config.block_m}, {config.block_n}) must divide the tile volume {tv}")
    if config.tma and not _tma_compatible(k, v):
        # Pointer loads hold K/V stages in shared memory less compactly: 128-wide key blocks overflow it.
        config = replace(config, tma=False, block_n=math.gcd(config.block_n, 64))
    return _launch(q, k, v, out, geometry, windows, text_len, geometry.padded_len, text_mask, scale, config,
                   natural=False, compact=compact)


def _natural_layout_ok(q, k, v, geometry: Geometry, config: KernelConfig) -> tuple[bool, str]:
    """Whether :func:`sta_triton_natural` can read these tensors in place (TMA boxes of whole tile planes).
    Called by ``kernels.backends`` (and this module's own guard) only."""
    B, heads, _, D = q.shape
    _, th, tw = geometry.tile
    plane = th * tw
    if not config.tma:
        return False, "config without TMA"
    for name, block in (("block_m", config.block_m), ("block_n", config.block_n)):
        if block % plane or geometry.tile[0] % (block // plane) or block // plane > 256 or max(th, tw) > 256:
            return False, f"{name}={block} is not a box of whole ({th}, {tw}) tile planes"
    for x in (q, k, v):
        if x.stride(-1) != 1 or (B > 1 and x.stride(0) != heads * x.stride(1)):
            return False, "batch and heads cannot be merged into one TMA dimension"
    if not _tma_compatible(q, k, v):
        return False, "strides or base not 16-byte aligned"
    return True, "ok"


def _check_natural(q, geometry: Geometry, windows, text_len: int, config: KernelConfig | None) -> KernelConfig:
    """Validate natural-order inputs ``(B, heads, T*H*W + text_len, D)``; the launch config (default if None)."""
    B, heads, S, D = q.shape
    _check_common(q, geometry, windows, D, heads)
    if S != geometry.video_len + text_len:
        raise ValueError(f"sequence length {S} != canvas volume {geometry.video_len} + text_len {text_len}")
    return config or default_config(geometry.tile_volume, D, q.dtype, q.device.type == "cuda")


def sta_triton_natural(q, k, v, geometry: Geometry, windows: torch.Tensor, text_len: int, text_first: bool,
                       text_mask: torch.Tensor | None, scale: float | None, *, out: torch.Tensor | None = None,
                       config: KernelConfig | None = None) -> torch.Tensor | None:
    """STA straight on natural-order tokens (no tile/untile copies): ``(B, heads, T*H*W + text_len, D)``.

    Video tokens are read and written as TMA boxes of whole tile planes of the ``[T, H, W]`` canvas,
    which arrive in tile order; boxes crossing the canvas edge read zeros (masked as padding) and
    write nothing past it. Where the layout does not allow that: padded canvases go through compact tile order
    (:func:`sta_triton_compact`); divisible ones return None (see
    :func:`sta_search.kernels.backends.runs_in_place`), and the caller goes through tile order.
    """
    config = _check_natural(q, geometry, windows, text_len, config)
    if not _natural_layout_ok(q, k, v, geometry, config)[0]:
        if not geometry.is_divisible:
            return sta_triton_compact(q, k, v, geometry, windows, text_len, text_first, text_mask, scale, out=out,
                                      config=config)
        return None
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    elif out.shape != q.shape or out.dtype != q.dtype or not _natural_layout_ok(out, out, out, geometry,
                                                                                        config)[0]:
        raise ValueError(f"out must match q ({tuple(q.shape)}, {q.dtype}) in a TMA-compatible layout")
    windows = device_windows(windows, q.device)
    video_start, text_start = (text_len, 0) if text_first else (0, geometry.video_len)
    return _launch(q, k, v, out, geometry, windows, text_len, text_start, text_mask, scale, config, natural=True,
                   video_start=video_start)


def sta_triton_compact(q, k, v, geometry: Geometry, windows: torch.Tensor, text_len: int, text_first: bool,
                       text_mask: torch.Tensor | None, scale: float | None, *, out: torch.Tensor | None = None,
                       config: KernelConfig | None = None) -> torch.Tensor:
    """STA on natural-order tokens through compact tile order (each tile's real tokens first,
    ``Geometry.compact_tile_index``): the same copies as going through tile order, but the kernel skips every
    all-padding block and masks only a border tile's last real key block (``gluon_fwd.sta_gluon_compact``)."""
    from .row_gather import run_compact

    config = _check_natural(q, geometry, windows, text_len, config)

    def run(qt, kt, vt):
        return _run_tiled(qt, kt, vt, geometry, windows, text_len, text_mask, scale, None, config, compact=True)

    return run_compact(q, k, v, geometry, text_len, text_first, run, out)


sta_fwd_kernel = _sta_fwd_kernel  # the JIT function, for tools that compile it without launching (bench/inspect_sass.py)
