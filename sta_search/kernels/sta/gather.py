"""STA by gathering each query tile's window: batched SDPA over (query tile, its key tiles + valid text).

Every query tile of a head with window ``w`` sees exactly ``K = prod(min(w_d, n_d))`` key tiles (docs/geometry.md).
Near the borders the clamped windows coincide: query tiles whose window starts agree on every axis see the
same key tiles. Such tiles form a *key set*; along each axis a set holds 1 query coordinate inside the grid and
up to ``w//2 + 1`` at its edges. Key sets with the same number of query tiles batch into one
:func:`torch.nn.functional.scaled_dot_product_attention` call: queries ``(B*heads, sets, count*tile_volume, D)``
against gathered keys ``(B*heads, sets, K*tile_volume + text, D)``. Only the window's key tiles are computed,
so the work is the window's density times dense; sharing key sets cuts the gathered copies and gives SDPA
longer query blocks.

- Inputs go to tile order once; keys, values and queries are then gathered a whole tile at a time, heads and
  tiles in one ``index_select`` (mixed per-head windows need no per-head copies).
- Padded key tokens (canvas not divisible by the tile) are masked; only key sets holding a tile with padding
  get a boolean ``attn_mask``, the others run unmasked. Padded query rows are dropped.
- Padded text keys are left out of the gathered table; when the rows of ``text_mask`` differ, each batch
  row runs with its own table (no per-key text mask at all).
- Text queries attend to every valid key: one dense SDPA call. Heads whose window covers the whole grid
  (full attention) skip the tiling and run dense SDPA over the valid keys too.
- Gathering copies keys once per key set, so key sets are processed in chunks sized to keep the gathered
  keys and values under :data:`GATHER_BUDGET_BYTES`.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..geometry import Geometry, from_tiles, to_tiles

GATHER_BUDGET_BYTES = 256 * 2**20


class _Workspace(threading.local):
    """One reusable CPU buffer per dtype for the gathered q/k/v of a chunk (at most GATHER_BUDGET_BYTES).

    A fresh CPU allocation of this size is page-faulted in on first touch every call (measured at the tiny
    model's shape, 28 MB of key tiles: index_select 4.7 ms into a new tensor, 2.1 ms into a reused one).
    CUDA's caching allocator already reuses memory, so only CPU gathers use it."""

    def __init__(self):
        self.buffers: dict[torch.dtype, torch.Tensor] = {}

    def take(self, numel: int, dtype: torch.dtype) -> torch.Tensor:
        buffer = self.buffers.get(dtype)
        if buffer is None or buffer.numel() < numel:
            with torch.inference_mode(False):  # a normal tensor: writable in and out of inference mode
                buffer = self.buffers[dtype] = torch.empty(numel, dtype=dtype)
        return buffer[:numel]


_WORKSPACE = _Workspace()


def _gather_rows(rows: torch.Tensor, index: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    if out is None:
        return rows.index_select(0, index)
    return torch.index_select(rows, 0, index, out=out.view(index.numel(), rows.shape[1]))


def sta_gather(q, k, v, geometry: Geometry, windows: torch.Tensor, text_len: int = 0, text_first: bool = False,
               text_mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """STA on natural-order inputs ``(B, heads, S, D)``, ``S = video_len + text_len``; returns natural order.

    ``windows`` is ``(heads, 3)`` (already validated, e.g. by ``normalize_windows``); ``text_mask`` is
    ``(B, text_len)`` bool, True for real text keys. Same semantics as ``sta_reference``.
    """
    return _run(q, k, v, geometry, windows, text_len, text_first, text_mask, scale, layout="natural")


def sta_gather_tiled(q, k, v, geometry: Geometry, windows: torch.Tensor, text_len: int = 0,
                     text_mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """Like :func:`sta_gather` on tile-order inputs ``[padded video tiles | text]``; padded rows' outputs are 0."""
    return _run(q, k, v, geometry, windows, text_len, False, text_mask, scale, layout="tiled")


# ----------------------------------------------------------------------------------------- tables
@dataclass(frozen=True)
class KeySets:
    """Key sets of one window with the same number of query tiles (CPU int64 / bool tensors).

    ``query_tiles`` (sets, count) and ``key_tiles`` (sets, K) tile ids, ascending; ``padded`` (sets,) whether a
    set's key tiles hold padding; ``key_ok`` (sets, K * tile_volume) validity of every gathered key token.
    """

    query_tiles: torch.Tensor
    key_tiles: torch.Tensor
    padded: torch.Tensor
    key_ok: torch.Tensor


@functools.lru_cache(maxsize=128)
def key_sets(geometry: Geometry, window: tuple[int, int, int]) -> tuple[KeySets, ...]:
    """Every query tile in exactly one key set; sets grouped by their number of query tiles."""
    grid, tv = geometry.grid, geometry.tile_volume
    window = geometry.clip_window(window)
    per_axis = []  # per axis: [(start, [query coordinates])]
    for starts in geometry.window_starts(window):
        members: dict[int, list[int]] = {}
        for coordinate, start in enumerate(starts.tolist()):
            members.setdefault(start, []).append(coordinate)
        per_axis.append(sorted(members.items()))
    nh, nw = grid[1], grid[2]
    valid = geometry.key_valid().view(geometry.num_tiles, tv)
    by_count: dict[int, list[tuple[list[int], list[int]]]] = {}
    for st, qt in per_axis[0]:
        for sh, qh in per_axis[1]:
            for sw, qw in per_axis[2]:
                queries = [(t * nh + h) * nw + w for t in qt for h in qh for w in qw]
                keys = [(t * nh + h) * nw + w for t in range(st, st + window[0]) for h in range(sh, sh + window[1])
                        for w in range(sw, sw + window[2])]
                by_count.setdefault(len(queries), []).append((queries, keys))
    groups = []
    for count in sorted(by_count):
        query_tiles = torch.tensor([queries for queries, _ in by_count[count]], dtype=torch.int64)
        key_tiles = torch.tensor([keys for _, keys in by_count[count]], dtype=torch.int64)
        key_ok = valid[key_tiles].reshape(key_tiles.shape[0], -1)
        groups.append(KeySets(query_tiles, key_tiles, ~key_ok.all(dim=1), key_ok))
    return tuple(groups)


@functools.lru_cache(maxsize=128)
def _key_sets_on(geometry: Geometry, window: tuple[int, int, int], device: torch.device) -> tuple[KeySets, ...]:
    return tuple(KeySets(*(getattr(g, f).to(device) for f in ("query_tiles", "key_tiles", "padded", "key_ok")))
                 for g in key_sets(geometry, window))


# ------------------------------------------------------------------------------------------- core
def _run(q, k, v, geometry, windows, text_len, text_first, text_mask, scale, layout):
    B, heads, S, D = q.shape
    device = q.device
    nt, tv = geometry.num_tiles, geometry.tile_volume
    if layout == "tiled":
        video = slice(0, geometry.padded_len)
        text = slice(geometry.padded_len, geometry.padded_len + text_len)
    else:
        video = slice(text_len, text_len + geometry.video_len) if text_first else slice(0, geometry.video_len)
        text = slice(0, text_len) if text_first else slice(geometry.video_len, geometry.video_len + text_len)
    text_ok = text_mask.to(device=device, dtype=torch.bool) if text_len and text_mask is not None else None

    # Keys every text query (and every query of a full-window head) may see: (B, 1, 1, S) or None for all.
    padded_video = layout == "tiled" and not geometry.is_divisible
    key_mask = None
    if padded_video or (text_ok is not None and not bool(text_ok.all())):
        key_ok = torch.ones(B, S, dtype=torch.bool, device=device)
        if text_ok is not None:
            key_ok[:, text] = text_ok
        if padded_video:
            key_ok[:, video] = geometry.key_valid().to(device)
        key_mask = key_ok[:, None, None, :]

    groups: dict[tuple[int, int, int], list[int]] = {}
    for h, w in enumerate(windows.tolist()):
        groups.setdefault(geometry.clip_window(w), []).append(h)
    full_heads = [h for window, hs in groups.items() if geometry.is_full(window) for h in hs]
    sparse = {window: hs for window, hs in groups.items() if not geometry.is_full(window)}
    sparse_heads = sorted(h for hs in sparse.values() for h in hs)

    def heads_of(x, head_list):
        return x if len(head_list) == heads else x[:, head_list]

    if not sparse:  # every head sees the whole grid: plain dense attention over the valid keys
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, scale=scale)
        return _zero_padded_rows(out, geometry) if padded_video else out

    if layout == "tiled":
        tiled = [x[:, :, video] for x in (q, k, v)]
    else:
        tiled = [to_tiles(geometry, x[:, :, video]) for x in (q, k, v)]
    # (B * heads * tiles, tv * D): one row per (batch, head, tile), so one index_select along dim 0 (the path
    # ATen runs in parallel as row copies) gathers any batch rows' and heads' tiles.
    q_rows, k_rows, v_rows = (x.reshape(B * heads * nt, tv * D) for x in tiled)
    out_rows = torch.empty_like(q_rows)

    # Which text keys each batch row sees: one shared list when the rows agree, else one list per row.
    if text_ok is None:
        batches = [(slice(0, B), slice(None))]
    elif bool((text_ok == text_ok[:1]).all()):
        batches = [(slice(0, B), torch.nonzero(text_ok[0]).squeeze(1))]
    else:
        batches = [(slice(b, b + 1), torch.nonzero(text_ok[b]).squeeze(1)) for b in range(B)]

    for window, head_list in sparse.items():
        head_offsets = torch.tensor(head_list, device=device) * nt
        for rows, text_keys in batches:
            text_k = text_v = None
            if text_len:
                text_k, text_v = (heads_of(x[rows], head_list)[:, :, text][:, :, text_keys] for x in (k, v))
                if text_k.shape[2] == 0:
                    text_k = text_v = None
            batch_offsets = torch.arange(B, device=device)[rows] * (heads * nt)
            for sets in _key_sets_on(geometry, window, device):
                _attend_sets(q_rows, k_rows, v_rows, out_rows, sets, batch_offsets, head_offsets, text_k, text_v,
                             tv, D, scale)

    video_out = out_rows.view(B, heads, nt * tv, D)
    if layout == "natural":
        video_out = from_tiles(geometry, video_out)
    if text_len or full_heads:
        out = torch.empty_like(q)
        out[:, :, video] = video_out
    else:
        out = video_out
    if text_len:  # text queries of the sparse heads: dense over every valid key
        out_text = F.scaled_dot_product_attention(heads_of(q, sparse_heads)[:, :, text], heads_of(k, sparse_heads),
                                                  heads_of(v, sparse_heads), attn_mask=key_mask, scale=scale)
        if len(sparse_heads) == heads:
            out[:, :, text] = out_text
        else:
            out[:, sparse_heads, text] = out_text
    if full_heads:
        out[:, full_heads] = F.scaled_dot_product_attention(q[:, full_heads], k[:, full_heads], v[:, full_heads],
                                                            attn_mask=key_mask, scale=scale)
    return _zero_padded_rows(out, geometry) if padded_video else out


def _zero_padded_rows(out: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """Tile-order outputs: padded video rows -> 0."""
    out[:, :, : geometry.padded_len].masked_fill_(~geometry.key_valid().to(out.device)[:, None], 0)
    return out


def _attend_sets(q_rows, k_rows, v_rows, out_rows, sets: KeySets, batch_offsets, head_offsets, text_k, text_v, tv,
                 D, scale):
    """Attention of one batch of equal-size key sets for the batch rows at ``batch_offsets`` (b * heads *
    num_tiles) and the heads at ``head_offsets`` (head * num_tiles); ``*_rows`` are ``(B * heads * tiles, tv * D)``."""
    B, h = batch_offsets.numel(), head_offsets.numel()
    count, K = sets.query_tiles.shape[1], sets.key_tiles.shape[1]
    n_text = 0 if text_k is None else text_k.shape[2]
    key_len = K * tv + n_text
    per_set = (2 * key_len + 2 * count * tv) * B * h * D * q_rows.element_size()  # gathered k, v, q and out
    chunk = max(1, GATHER_BUDGET_BYTES // per_set)
    offsets = (batch_offsets[:, None] + head_offsets[None, :]).reshape(-1, 1, 1)  # (B * h, 1, 1)
    # out= gathers have no autograd; the buffer is only for CPU inference
    reuse = q_rows.device.type == "cpu" and not (torch.is_grad_enabled() and any(
        x.requires_grad for x in (q_rows, k_rows, v_rows)))
    padded = sets.padded
    if bool(padded.all()):
        parts = [torch.arange(padded.numel(), device=padded.device)]
    elif not bool(padded.any()):
        parts = [None]
    else:
        parts = [torch.nonzero(~padded).squeeze(1), torch.nonzero(padded).squeeze(1)]
    for part in parts:
        query_tiles = sets.query_tiles if part is None else sets.query_tiles[part]
        key_tiles = sets.key_tiles if part is None else sets.key_tiles[part]
        key_ok = None if part is None or not bool(padded[part[0]]) else sets.key_ok[part]
        for start in range(0, query_tiles.shape[0], chunk):
            m = min(chunk, query_tiles.shape[0] - start)
            q_index = (offsets + query_tiles[start: start + m]).reshape(-1)
            k_index = (offsets + key_tiles[start: start + m]).reshape(-1)
            q_numel, k_numel = q_index.numel() * q_rows.shape[1], k_index.numel() * k_rows.shape[1]
            space = _WORKSPACE.take(q_numel + 2 * k_numel, q_rows.dtype) if reuse else None
            qc = _gather_rows(q_rows, q_index, None if space is None else space[:q_numel])
            kc = _gather_rows(k_rows, k_index, None if space is None else space[q_numel:q_numel + k_numel])
            vc = _gather_rows(v_rows, k_index, None if space is None else space[q_numel + k_numel:])
            qc, kc, vc = qc.view(B * h, m, count * tv, D), kc.view(B, h, m, K * tv, D), vc.view(B, h, m, K * tv, D)
            if n_text:
                kc = torch.cat([kc, text_k[:, :, None].expand(B, h, m, n_text, D)], dim=3)
                vc = torch.cat([vc, text_v[:, :, None].expand(B, h, m, n_text, D)], dim=3)
            mask = None
            if key_ok is not None:
                ok = key_ok[start: start + m]
                if n_text:
                    ok = torch.cat([ok, ok.new_ones(m, n_text)], dim=1)
                mask = ok[None, :, None, :]
            oc = F.scaled_dot_product_attention(qc, kc.view(B * h, m, key_len, D), vc.view(B * h, m, key_len, D),
                                                attn_mask=mask, scale=scale)
            out_rows.index_copy_(0, q_index, oc.view(B * h * m * count, tv * D))
