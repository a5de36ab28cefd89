"""STA as dense attention over gathered query/key groups (the ``grouped`` backend).

Query tiles whose clamped windows start at the same key tile attend to the same keys. Along one axis
of ``n`` tiles a window of ``w`` has ``n - w + 1`` distinct starts, so a head has
``prod(n - w + 1)`` groups, and each group is a box of query tokens attending to a box of key tokens
(plus the valid text keys): a dense attention problem. Gathering each group's queries and keys and
handing them to SDPA (cuDNN / FlashAttention) gives exactly STA's output, at the cost of copying
``groups x window`` keys. That pays off for large windows on small grids, where there are few groups
and the dense kernels run at a higher rate than the Triton kernel: hunyuan-720p (5,5,5) has 12 groups
per head (keys copied 5x) and 58% of the dense work; (3,3,3) has 96 groups and copies keys 8.6x.
:func:`grouped_is_faster` holds the rule ``auto`` uses (bench/NOTES.md has the measurements).

Natural T-major order, text before or after the video, any batch; heads with the same window are
batched into one SDPA call per group size, a few heads at a time to bound the extra memory.
"""

from __future__ import annotations

import functools
import math
from itertools import product

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..geometry import Geometry, _axis_starts

# Extra memory allowed for one SDPA call's gathered keys and values (bytes).
GATHER_BUDGET_BYTES = 1 << 30


def _axis_groups(c: int, t: int, n: int, w: int) -> list[tuple[range, range]]:
    """Per distinct window start along one axis: (query token range, key token range)."""
    starts = _axis_starts(n, w)
    w = min(w, n)
    groups = []
    for s in np.unique(starts):
        tiles = np.nonzero(starts == s)[0]
        groups.append((range(int(tiles[0]) * t, min((int(tiles[-1]) + 1) * t, c)),
                       range(int(s) * t, min((int(s) + w) * t, c))))
    return groups


def _box(ranges, canvas) -> torch.Tensor:
    (rt, rh, rw), (_, H, W) = ranges, canvas
    t, h, w = (torch.tensor(list(r), dtype=torch.long) for r in (rt, rh, rw))
    return (t[:, None, None] * (H * W) + h[None, :, None] * W + w[None, None, :]).reshape(-1)


@functools.lru_cache(maxsize=64)
def group_plan(geometry: Geometry, window: tuple[int, int, int]) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """Groups of one window, batched by size: ``((query_index (G, Lq), key_index (G, Lk)), ...)``.

    Indices are natural video positions; every video token is in exactly one group's queries.
    """
    axes = [_axis_groups(c, t, n, w) for c, t, n, w in zip(geometry.canvas, geometry.tile, geometry.grid, window)]
    by_size: dict[tuple[int, int], tuple[list, list]] = {}
    for combo in product(*axes):
        qi = _box([q for q, _ in combo], geometry.canvas)
        ki = _box([k for _, k in combo], geometry.canvas)
        qs, ks = by_size.setdefault((len(qi), len(ki)), ([], []))
        qs.append(qi)
        ks.append(ki)
    return tuple((torch.stack(qs), torch.stack(ks)) for qs, ks in by_size.values())


# Rates for the ``auto`` rule, measured on H100 at hunyuan-720p (bench/NOTES.md): the Triton kernel runs
# ~500 TFLOP/s, cuDNN on large groups ~620; gathers move ~1.5 TB/s counting bytes written and read back.
TRITON_FLOPS, DENSE_FLOPS, GATHER_BYTES_PER_S = 500e12, 620e12, 1.5e12


def grouped_cost(geometry: Geometry, windows, text_len: int, head_dim: int, element_size: int) -> dict:
    """Predicted seconds of the grouped and Triton backends for one (batch element, all heads) call."""
    flops = copied_rows = 0.0
    for window in (geometry.clip_window(w) for w in windows):
        plan = group_plan(geometry, window)
        groups = sum(q.shape[0] for q, _ in plan)
        keys = sum(k.numel() for _, k in plan) + text_len * groups
        copied_rows += 2 * keys + 2 * geometry.video_len  # k and v gathered; q gathered, out scattered
        flops += 4 * head_dim * geometry.density(window) * geometry.video_len**2
    gather_s = copied_rows * head_dim * element_size * 2 / GATHER_BYTES_PER_S
    return {"grouped_s": flops / DENSE_FLOPS + gather_s, "triton_s": flops / TRITON_FLOPS}


def grouped_is_faster(geometry: Geometry, windows, text_len: int, head_dim: int,
                      element_size: int) -> tuple[bool, str]:
    """``auto`` on CUDA picks grouped when predicted at least 10% faster than the Triton kernel (small
    groups run the dense kernels below their large-problem rate, hence the margin)."""
    cost = grouped_cost(geometry, [tuple(w) for w in windows], text_len, head_dim, element_size)
    ratio = cost["grouped_s"] / cost["triton_s"]
    return ratio < 0.9, f"predicted grouped / triton time {ratio:.2f}"


def sta_grouped(q, k, v, geometry: Geometry, windows: torch.Tensor, text_len: int, text_first: bool,
                text_mask: torch.Tensor | None, scale: float | None,
                gather_budget_bytes: int = GATHER_BUDGET_BYTES) -> torch.Tensor:
    """STA on natural-order ``(B, heads, S, D)`` tensors through SDPA over gathered groups."""
    B, heads, S, D = q.shape
    V = geometry.video_len
    video_start, text_start = (text_len, 0) if text_first else (0, V)
    scale = D**-0.5 if scale is None else float(scale)
    out = torch.empty(B, heads, S, D, device=q.device, dtype=q.dtype)
    table = [geometry.clip_window(w) for w in windows.tolist()]
    head_sets: dict[tuple, list[int]] = {}
    for h, w in enumerate(table):
        head_sets.setdefault(w, []).append(h)
    for b in range(B):
        if text_len:
            valid = torch.ones(text_len, dtype=torch.bool, device=q.device) if text_mask is None else text_mask[b]
            text_keys = torch.nonzero(valid).squeeze(1) + text_start
        else:
            text_keys = torch.empty(0, dtype=torch.long, device=q.device)
        qb, kb, vb, ob = q[b], k[b], v[b], out[b]
        for window, hs in head_sets.items():
            for q_index, k_index in group_plan(geometry, window):
                q_index = _on(q_index, q.device) + video_start
                k_index = torch.cat([_on(k_index, q.device) + video_start,
                                     text_keys.expand(k_index.shape[0], -1)], dim=1)
                G, Lk = k_index.shape
                per_head = 2 * G * Lk * D * q.element_size()
                chunk = max(1, gather_budget_bytes // per_head)
                for h0 in range(0, len(hs), chunk):
                    h_index = torch.tensor(hs[h0:h0 + chunk], device=q.device)
                    qg = _gather(qb, h_index, q_index)  # (G, Hc, Lq, D)
                    kg = _gather(kb, h_index, k_index)
                    vg = _gather(vb, h_index, k_index)
                    _scatter(ob, h_index, q_index, _dense(qg, kg, vg, scale))
        if text_len:
            rows = slice(text_start, text_start + text_len)
            if text_mask is None or bool(text_mask[b].all()):
                kt, vt = kb, vb
            else:
                keys = torch.cat([torch.arange(video_start, video_start + V, device=q.device), text_keys])
                kt, vt = kb[:, keys], vb[:, keys]
            ob[:, rows] = _dense(qb[:, rows], kt, vt, scale)
    return out


def _flat_rows(x: torch.Tensor, heads: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Row numbers of ``x.view(-1, D)`` (x: (H, S, D) contiguous) for heads x (G, L) token index: (G*Hc*L,)."""
    return (heads[None, :, None] * x.shape[1] + index[:, None, :]).reshape(-1)


def _gather(x: torch.Tensor, heads: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[heads][:, index]`` as ``(G, Hc, L, D)``: one row gather (index_select) when x is contiguous."""
    G, L = index.shape
    if x.is_contiguous():
        rows = x.view(-1, x.shape[-1]).index_select(0, _flat_rows(x, heads, index))
        return rows.view(G, len(heads), L, x.shape[-1])
    return x[heads[None, :, None], index[:, None, :]]


def _scatter(out: torch.Tensor, heads: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> None:
    """``out[heads][:, index] = values`` for ``values`` of shape ``(G, Hc, L, D)``; out (H, S, D) contiguous."""
    out.view(-1, out.shape[-1]).index_copy_(0, _flat_rows(out, heads, index), values.reshape(-1, out.shape[-1]))


_DENSE_ORDER = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def _dense(q, k, v, scale):
    """SDPA without a mask, cuDNN first on CUDA (FA3-class on Hopper; FlashAttention-2 is ~40% slower)."""
    if q.device.type != "cuda":
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    with sdpa_kernel(_DENSE_ORDER, set_priority=True):
        return F.scaled_dot_product_attention(q, k, v, scale=scale)


@functools.lru_cache(maxsize=128)
def _on_cached(index: torch.Tensor, device: torch.device) -> torch.Tensor:
    return index.to(device)


def _on(index: torch.Tensor, device: torch.device) -> torch.Tensor:
    return index if index.device == device else _on_cached(index, device)
