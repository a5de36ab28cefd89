"""Dense attention and the per-(query tile, key tile) softmax mass in one pass (Hopper, Gluon).

The profiler's dense pass and recall pass, fused. The warp-specialized STA kernel (:mod:`..sta.gluon_fwd`) run
with the full window visits every key tile of a query block once, in tile order (all text keys first). With
``MASS`` it also writes, per query row and key tile, ``m + log2(s)``: ``s`` is the row's sum of ``exp2(score - m)``
over the tile's keys and ``m`` the row's running max when the tile's last block is done (one more slot for all
valid text keys), and each row's final log2-sum-exp2. ``exp2(tile value - final)`` is then the row's softmax mass
on that tile, and summing the real rows of each query tile gives what :func:`.triton_kernel.tile_mass_triton_tiled`
computes with a second ``QK^T`` pass over the log-sum-exp. Inside the kernel that costs one multiply-add per row
and key block and one 64-float store per warpgroup and key tile; the row values pass through a float32 scratch
of ``4 * (num_tiles + 1)`` bytes per query row, so heads run in chunks that fit ``memory_budget``.
"""

from __future__ import annotations

import functools
import math

import torch

from ..geometry import Geometry

#: query rows per scratch row block (one consumer warpgroup of the kernel)
ROW_BLOCK = 64


@functools.lru_cache(maxsize=32)
def _row_valid(geometry: Geometry, device: torch.device, compact: bool = False) -> torch.Tensor:
    index = geometry.compact_tile_index() if compact else geometry.tile_index()
    return (index >= 0).to(device=device, dtype=torch.float32)


def reduce_row_mass(mass_log: torch.Tensor, lse2: torch.Tensor, geometry: Geometry,
                    compact: bool = False) -> torch.Tensor:
    """``(heads, num_tiles, num_tiles + 1)`` tile mass from the kernel's row values, in place on ``mass_log``.

    Args:
        mass_log: ``(heads, padded_len // 64, num_tiles + 1, 64)`` float32: per tile-order query row (last dim,
            within its block of 64) and key tile (then text), ``log2`` of the row's softmax sum over the tile in
            the scaled-score units of ``lse2``.
        lse2: ``(heads, padded_len)`` float32, each row's ``log2`` of its whole softmax sum (``+inf`` for rows
            that saw no key).
        compact: the query rows are in compact tile order (real rows first in each tile).
    """
    heads = mass_log.shape[0]
    n, P = geometry.num_tiles, geometry.padded_len
    blocks = P // ROW_BLOCK
    valid = _row_valid(geometry, mass_log.device, compact).view(1, blocks, 1, ROW_BLOCK)
    mass_log.sub_(lse2.view(heads, blocks, 1, ROW_BLOCK)).exp2_().mul_(valid)
    return mass_log.sum(-1).view(heads, n, geometry.tile_volume // ROW_BLOCK, n + 1).sum(2)


def dense_and_tile_mass(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, geometry: Geometry, *,
                        text_len: int = 0, text_first: bool = False, text_mask: torch.Tensor | None = None,
                        scale: float | None = None, memory_budget: int = 1 << 30,
                        out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense attention output and the tile mass of the video queries, from one kernel pass per head chunk.

    Args:
        q, k, v: ``(B, heads, T*H*W + text_len, D)`` natural token order (text before the video with
            ``text_first``), read in place.
        text_mask: ``(B, text_len)`` bool, True = real text key; masked keys get no mass.
        memory_budget: bytes of the row scratch (``4 * padded_len * (num_tiles + 2)`` per head); at least one
            head runs at a time.
        out: where to write the dense output (``q``'s shape, TMA-compatible); default a new tensor.

    Returns:
        ``out`` ``(B, heads, S, D)`` in q's dtype and ``mass`` ``(B, heads, num_tiles, num_tiles + 1)`` float32, as
        :func:`sta_search.kernels.recall.tile_mass` (last column: valid text keys).
    """
    from .. import backends
    from ..backends import can_run_fused_recall
    from ..sta import gluon_fwd
    from ..sta.api import normalize_windows
    from ..sta.row_gather import run_compact

    ok, why = can_run_fused_recall(q, geometry)
    if not ok:
        raise ValueError(f"the fused Gluon dense + tile mass pass cannot run: {why}")
    B, H, S, D = q.shape
    if S != geometry.video_len + text_len:
        raise ValueError(f"sequence length {S} != canvas volume {geometry.video_len} + text_len {text_len}")
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    n, P = geometry.num_tiles, geometry.padded_len
    per_head = 4 * P * (n + 2)
    most = max(1, min(H, memory_budget // per_head))
    chunk = math.ceil(H / math.ceil(H / most))  # even chunks: no small last launch
    scratch = torch.empty(chunk * P * (n + 1), dtype=torch.float32, device=q.device)
    lse2 = torch.empty(chunk * P, dtype=torch.float32, device=q.device)
    windows = normalize_windows(geometry.grid, H, device=q.device)  # the full window, one device copy per shape
    video_start, text_start = (text_len, 0) if text_first else (0, geometry.video_len)
    mass = torch.empty(B, H, n, n + 1, dtype=torch.float32, device=q.device)
    compact = backends.FUSED_RECALL_COMPACT_PADDED and not geometry.is_divisible
    for b in range(B):
        mask_b = text_mask[b:b + 1] if (text_len and text_mask is not None) else None
        for h0 in range(0, H, chunk):
            h1 = min(H, h0 + chunk)
            rows = scratch[: (h1 - h0) * P * (n + 1)].zero_()
            lse_rows = lse2[: (h1 - h0) * P]
            if compact:  # [compact video tiles | text], then the output rows back to natural order
                def run(qs, ks, vs, h0=h0, h1=h1, rows=rows, lse_rows=lse_rows, mask_b=mask_b):
                    return gluon_fwd._launch(qs, ks, vs, torch.empty_like(qs), geometry, windows[h0:h1], text_len, P,
                                             0, mask_b, scale, natural=False, stages=None, mass_log=rows,
                                             lse_out=lse_rows, compact=True)

                run_compact(*(x[b:b + 1, h0:h1] for x in (q, k, v)), geometry, text_len, text_first, run,
                            out[b:b + 1, h0:h1])
            else:
                qs, ks, vs, os_ = gluon_fwd._prepare(*(x[b:b + 1, h0:h1] for x in (q, k, v, out)), geometry,
                                                     natural=True)
                gluon_fwd._launch(qs, ks, vs, os_, geometry, windows[h0:h1], text_len, text_start, video_start,
                                  mask_b, scale, natural=True, stages=None, mass_log=rows, lse_out=lse_rows)
            mass[b, h0:h1] = reduce_row_mass(rows.view(h1 - h0, P // ROW_BLOCK, n + 1, ROW_BLOCK),
                                             lse_rows.view(h1 - h0, P), geometry, compact)
    return out, mass
