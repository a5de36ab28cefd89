"""Triton pass: per-(query block, key tile) attention mass from QK^T and a known log-sum-exp.

Inputs are in tile order (``[padded video tiles | text]`` for keys, padded video tiles for queries), so
every ``BLOCK_M`` query rows lie in one query tile and every ``BLOCK_N`` key columns in one key tile.
One program owns one query block of one (batch, head): it walks all key blocks once, turns scores into
probabilities with the dense pass's log-sum-exp (``p = exp2(s * scale * log2(e) - lse * log2(e))``), sums
them per key tile and writes one float per key tile (plus one for all text keys). No ``S x S`` matrix
and no ``P @ V`` product: about half the FLOPs of the dense attention that produced the log-sum-exp.
"""

from __future__ import annotations

import functools
import math
import os

import torch
import triton
import triton.language as tl

from .._interpreter import patch_interpreter
from ..geometry import Geometry

LOG2E = 1.4426950408889634


patch_interpreter()


@triton.jit
def _probabilities(s, FAST_EXP: tl.constexpr):
    """``exp2(s)`` for ``s <= 0`` (scores minus the log-sum-exp). FAST_EXP (opt-in): two values per MUFU op
    through ``ex2.approx.f16x2``; on an H100 it was no faster and moved recall by up to 3.5e-3."""
    if FAST_EXP:
        p = tl.inline_asm_elementwise("ex2.approx.f16x2 $0, $1;", "=r,r", [s.to(tl.float16)],
                                      dtype=tl.float16, is_pure=True, pack=2)
        return p.to(tl.float32)
    else:
        return tl.math.exp2(s)


@triton.jit
def _tile_mass_kernel(
    Q, K, LSE, KEY_VALID, TEXT_VALID, OUT,
    stride_qb, stride_qh, stride_qs,
    stride_kb, stride_kh, stride_ks,
    stride_lb, stride_lh,
    stride_tb,
    H, num_key_blocks, text_len, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCKS_PER_TILE: tl.constexpr, VIDEO_PADDED: tl.constexpr, HAS_TEXT: tl.constexpr,
    HAS_TEXT_MASK: tl.constexpr, NESTED_LOOPS: tl.constexpr, FAST_EXP: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    num_m = tl.num_programs(0)
    b = (pid_bh // H).to(tl.int64)  # batch/head offsets can pass 2**31 elements
    h = (pid_bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qs + offs_d[None, :])
    lse2 = tl.load(LSE + b * stride_lb + h * stride_lh + offs_m) * 1.4426950408889634
    if VIDEO_PADDED:
        q_valid = tl.load(KEY_VALID + offs_m) != 0
        lse2 = tl.where(q_valid, lse2, float("inf"))
    k_base = K + b * stride_kb + h * stride_kh
    num_tiles = num_key_blocks // BLOCKS_PER_TILE
    out_row = OUT + (pid_bh * num_m + pid_m) * (num_tiles + 1)
    if NESTED_LOOPS:
        # one loop over key tiles, an inner loop over the key blocks of a tile
        for kt in range(0, num_tiles):
            acc = tl.zeros([BLOCK_M], dtype=tl.float32)
            for j in range(0, BLOCKS_PER_TILE):
                offs_n = (kt * BLOCKS_PER_TILE + j) * BLOCK_N + tl.arange(0, BLOCK_N)
                k = tl.load(k_base + offs_n[None, :] * stride_ks + offs_d[:, None])
                p = _probabilities(tl.dot(q, k) * qk_scale - lse2[:, None], FAST_EXP)
                if VIDEO_PADDED:
                    p = tl.where((tl.load(KEY_VALID + offs_n) != 0)[None, :], p, 0.0)
                acc += tl.sum(p, 1)
            tl.store(out_row + kt, tl.sum(acc, 0))
        acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    else:
        # one flat loop over all key blocks (better software pipelining), storing at each tile's end
        acc = tl.zeros([BLOCK_M], dtype=tl.float32)
        for kb in range(0, num_key_blocks):
            offs_n = kb * BLOCK_N + tl.arange(0, BLOCK_N)
            k = tl.load(k_base + offs_n[None, :] * stride_ks + offs_d[:, None])
            p = _probabilities(tl.dot(q, k) * qk_scale - lse2[:, None], FAST_EXP)
            if VIDEO_PADDED:
                p = tl.where((tl.load(KEY_VALID + offs_n) != 0)[None, :], p, 0.0)
            acc += tl.sum(p, 1)
            if kb % BLOCKS_PER_TILE == BLOCKS_PER_TILE - 1:
                tl.store(out_row + kb // BLOCKS_PER_TILE, tl.sum(acc, 0))
                acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    if HAS_TEXT:
        text_base = num_key_blocks * BLOCK_N
        for start in range(0, text_len, BLOCK_N):
            offs_t = start + tl.arange(0, BLOCK_N)
            inside = offs_t < text_len
            k = tl.load(k_base + (text_base + offs_t)[None, :] * stride_ks + offs_d[:, None],
                        mask=inside[None, :], other=0.0)
            s = tl.dot(q, k) * qk_scale - lse2[:, None]
            if HAS_TEXT_MASK:
                inside = inside & (tl.load(TEXT_VALID + b * stride_tb + offs_t, mask=inside, other=0) != 0)
            p = tl.where(inside[None, :], tl.math.exp2(s), 0.0)
            acc += tl.sum(p, 1)
    tl.store(out_row + num_tiles, tl.sum(acc, 0))


# (BLOCK_M, BLOCK_N, num_warps, num_stages, nested loops, fast exp) tried on CUDA, first call per shape.
# Measured on an H100 at hunyuan-720p (bench/results/profile-h100.json): (128, 64, 8, 3) won; the nested
# loops were ~7% slower and the f16x2 exp no faster (and 3.5e-3 off in recall), so neither is tried by
# default; both stay selectable through ``config=`` or STA_SEARCH_RECALL_CONFIG.
_CUDA_CONFIGS = (
    (128, 64, 8, 3, False, False), (128, 64, 4, 3, False, False), (64, 128, 4, 3, False, False),
    (128, 128, 8, 3, False, False), (64, 64, 4, 3, False, False),
)
_INTERPRET_CONFIG = (16, 16, 4, 1, False, False)
_TUNED: dict = {}
#: per tuned shape key: {config: milliseconds or error text}, for benchmarks
TUNING_LOG: dict = {}
CONFIG_ENV = "STA_SEARCH_RECALL_CONFIG"  # e.g. "128,64,4,3,0,0": skip tuning (tests, debugging)


def _divides(block: int, tile_volume: int) -> bool:
    return tile_volume % block == 0


def _launch(config, q, k, lse, key_valid, text_valid, geometry: Geometry, text_len: int, scale: float):
    block_m, block_n, num_warps, num_stages, nested, fast_exp = config
    if geometry.tile_volume % block_m or geometry.tile_volume % block_n:
        raise ValueError(f"BLOCK_M {block_m} and BLOCK_N {block_n} must divide the tile volume {geometry.tile_volume}")
    B, H, _, D = q.shape
    num_q_blocks = geometry.padded_len // block_m
    out = torch.empty(B * H * num_q_blocks * (geometry.num_tiles + 1), dtype=torch.float32, device=q.device)
    has_mask = text_valid is not None
    tv = text_valid if has_mask else key_valid
    _tile_mass_kernel[(num_q_blocks, B * H)](
        q, k, lse, key_valid, tv, out,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        lse.stride(0), lse.stride(1),
        tv.stride(0) if has_mask else 0,
        H, geometry.padded_len // block_n, text_len, scale * LOG2E,
        HEAD_DIM=D, BLOCK_M=block_m, BLOCK_N=block_n, BLOCKS_PER_TILE=geometry.tile_volume // block_n,
        VIDEO_PADDED=not geometry.is_divisible, HAS_TEXT=text_len > 0, HAS_TEXT_MASK=has_mask, NESTED_LOOPS=nested,
        FAST_EXP=fast_exp,
        num_warps=num_warps, num_stages=num_stages,
    )
    return out.view(B, H, geometry.num_tiles, geometry.tile_volume // block_m, geometry.num_tiles + 1).sum(3)


@functools.lru_cache(maxsize=64)
def _key_valid_on(geometry: Geometry, device: torch.device) -> torch.Tensor:
    return geometry.key_valid().to(device=device, dtype=torch.int8)


def tile_mass_triton_tiled(q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, geometry: Geometry,
                           text_len: int = 0, text_mask: torch.Tensor | None = None,
                           scale: float | None = None, config=None) -> torch.Tensor:
    """Per-(query tile, key tile) attention mass from tile-order inputs.

    Args:
        q: ``(B, heads, >= padded_len, D)``: the video queries in tile order come first (extra rows ignored).
        k: ``(B, heads, padded_len + text_len, D)``: ``[padded video tiles | text]``.
        lse: ``(B, heads, >= padded_len)`` float32 natural-log log-sum-exp of each video query over all its
            valid keys (values at padded positions are ignored).
        text_mask: ``(B, text_len)`` bool, True = real text key.
        config: ``(BLOCK_M, BLOCK_N, num_warps, num_stages, nested_loops, fast_exp)``; default: tuned once per shape on CUDA.

    Returns:
        ``(B, heads, num_tiles, num_tiles + 1)`` float32 (last column: text keys), as
        :func:`tile_mass_reference`.
    """
    B, H, Sq, D = q.shape
    if k.shape[2] != geometry.padded_len + text_len:
        raise ValueError(f"k has {k.shape[2]} tokens, expected padded video {geometry.padded_len} + text {text_len}")
    if Sq < geometry.padded_len or lse.shape[2] < geometry.padded_len:
        raise ValueError("q and lse need at least padded_len video rows in tile order")
    if D & (D - 1) or D < 16:
        raise ValueError(f"head dim {D} is not a power of two >= 16")
    if q.stride(3) != 1 or k.stride(3) != 1:
        raise ValueError("q and k need a contiguous last dimension")
    scale = D**-0.5 if scale is None else float(scale)
    lse = lse.float()
    if lse.stride(2) != 1:
        lse = lse.contiguous()
    key_valid = _key_valid_on(geometry, q.device)
    text_valid = None
    if text_len and text_mask is not None:
        text_valid = text_mask.to(device=q.device, dtype=torch.int8).contiguous()
    args = (q, k, lse, key_valid, text_valid, geometry, text_len, scale)
    if config is not None:
        return _launch(config, *args)
    if q.device.type != "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        # the CPU interpreter computes bf16/fp16 dots wrongly (overflowing scores): interpret in fp32
        args = (q.float(), k.float(), *args[2:])
        block = math.gcd(geometry.tile_volume, _INTERPRET_CONFIG[0])
        return _launch((block, block, *_INTERPRET_CONFIG[2:]), *args)
    forced = os.environ.get(CONFIG_ENV)
    if forced:
        return _launch(tuple(int(x) if i < 4 else bool(int(x)) for i, x in enumerate(forced.split(","))), *args)
    key = (geometry, B, H, D, text_len, q.dtype, text_valid is not None, str(q.device))
    if key not in _TUNED:
        _TUNED[key] = _tune(args, key)
    return _launch(_TUNED[key], *args)


def tuned_configs() -> list:
    """The configs the CUDA tuner picked so far in this process, one per shape key (empty before any tuning)."""
    return list(_TUNED.values())


def candidate_configs(geometry: Geometry, head_dim: int):
    return [c for c in _CUDA_CONFIGS if _divides(c[0], geometry.tile_volume) and _divides(c[1], geometry.tile_volume)
            and not (head_dim > 128 and c[0] * c[1] > 64 * 64)]


def _tune(args, key):
    from triton.testing import do_bench

    geometry, head_dim = args[5], args[0].shape[-1]
    best, best_ms = None, float("inf")
    log = TUNING_LOG.setdefault(key, {})
    for config in candidate_configs(geometry, head_dim) or [(16, 16, 4, 2, False, False)]:
        try:
            ms = do_bench(lambda: _launch(config, *args), warmup=3, rep=15)
        except Exception as exc:  # out of shared memory / registers, or no f16x2 exp on this GPU
            log[config] = f"{type(exc).__name__}: {str(exc)[:200]}"
            continue
        log[config] = ms
        if ms < best_ms:
            best, best_ms = config, ms
    if best is None:
        raise RuntimeError("no Triton configuration of the recall pass could run on this device")
    return best
