"""STA by gathering each query tile's window: batched SDPA over (query tile, its key tiles + valid text).

Every query tile of a head with window ``w`` sees exactly ``K = prod(min(w_d, n_d))`` key tiles (SPEC 1), so
per group of heads with the same clipped window the key positions form a ``(num_tiles, K * tile_volume)``
table and one :func:`torch.nn.functional.scaled_dot_product_attention` call runs all query tiles at once:
queries ``(B*heads, tiles, tile_volume, D)`` against gathered keys ``(B*heads, tiles, K*tile_volume + text, D)``.
Only the window's key tiles are computed, so on CPU the work is the window's density times dense.

- Keys and values are gathered straight from the caller's layout (natural T-major or tile order) with one
  ``index_select`` each, text keys included, so there is no separate tiling pass for them.
- Padded key tokens (canvas not divisible by the tile) are masked; only query tiles whose window touches a
  tile holding padding get a boolean ``attn_mask``, the others run unmasked. Padded query rows are dropped.
- Padded text keys are left out of the gathered table; when the rows of ``text_mask`` differ, each batch
  row runs with its own table (no per-key text mask at all).
- Text queries attend to every valid key: one dense SDPA call.
- Gathering copies every key ``K`` times, so query tiles are processed in chunks sized to keep the
  gathered keys and values under :data:`GATHER_BUDGET_BYTES`.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from ..geometry import Geometry, untile_index_on

GATHER_BUDGET_BYTES = 256 * 2**20
LAYOUTS = ("natural", "tiled")


def can_run_gather(q: torch.Tensor, geometry: Geometry, layout: str = "natural") -> tuple[bool, str]:
    """Whether :func:`sta_gather` runs these inputs, and why (not).

    It runs on any device and floating dtype, any head dim and any geometry: it is plain PyTorch indexing
    and SDPA. It refuses only an unknown ``layout`` or a non-floating dtype.
    """
    if layout not in LAYOUTS:
        return False, f"layout must be one of {LAYOUTS}, got {layout!r}"
    if not q.is_floating_point():
        return False, f"dtype {q.dtype} is not a floating dtype"
    return True, f"gathered window keys + batched SDPA on {q.device.type}"


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
@functools.lru_cache(maxsize=128)
def _tables(geometry: Geometry, window: tuple[int, int, int], text_len: int, text_first: bool, layout: str):
    """Index tables (CPU int64) of one clipped window in one layout.

    Returns ``(q_pos, key_pos, clean_tiles, padded_tiles, key_ok)``:
    ``q_pos`` (num_tiles, tv) sequence position of every tile-order query row (padding -> a real row, dropped);
    ``key_pos`` (num_tiles, K*tv) sequence positions of every query tile's window keys (padding -> a real key);
    ``clean_tiles``/``padded_tiles`` query tiles whose window holds no / some padded key;
    ``key_ok`` (len(padded_tiles), K*tv) bool validity of those tiles' keys.
    """
    nt, tv = geometry.num_tiles, geometry.tile_volume
    key_tiles = torch.from_numpy(geometry.key_tiles(window).astype(np.int64))  # (nt, K)
    slots = (key_tiles[:, :, None] * tv + torch.arange(tv)).reshape(nt, -1)  # tile-order slots (nt, K*tv)
    valid = geometry.key_valid()  # (padded_len,)
    if layout == "natural":
        video0 = text_len if text_first else 0
        natural = geometry.tile_index()
        first_real = int(natural[valid][0])
        position = torch.where(valid, natural, first_real) + video0  # tile-order slot -> sequence position
    else:
        position = torch.arange(geometry.padded_len)
    q_pos = position.view(nt, tv)
    key_pos = position[slots]
    key_ok = valid[slots]
    has_pad = ~key_ok.all(dim=1)
    padded_tiles = torch.nonzero(has_pad).squeeze(1)
    clean_tiles = torch.nonzero(~has_pad).squeeze(1)
    return q_pos, key_pos, clean_tiles, padded_tiles, key_ok[padded_tiles]


@functools.lru_cache(maxsize=128)
def _tables_on(geometry, window, text_len, text_first, layout, device: torch.device):
    return tuple(t.to(device) for t in _tables(geometry, window, text_len, text_first, layout))


def _text_slice(geometry: Geometry, text_len: int, text_first: bool, layout: str) -> slice:
    if layout == "tiled":
        return slice(geometry.padded_len, geometry.padded_len + text_len)
    return slice(0, text_len) if text_first else slice(geometry.video_len, geometry.video_len + text_len)


# ------------------------------------------------------------------------------------------- core
def _run(q, k, v, geometry, windows, text_len, text_first, text_mask, scale, layout):
    B, heads, S, D = q.shape
    device = q.device
    text = _text_slice(geometry, text_len, text_first, layout)
    out = torch.empty_like(q)
    if layout == "tiled":
        video = slice(0, geometry.padded_len)
    else:
        video = slice(text_len, text_len + geometry.video_len) if text_first else slice(0, geometry.video_len)

    # Which text keys each batch row sees: one shared list when the rows agree, else one list per row.
    if text_len and text_mask is not None:
        text_ok = text_mask.to(device=device, dtype=torch.bool)
        rows_agree = bool((text_ok == text_ok[:1]).all())
    else:
        text_ok, rows_agree = None, True
    text_all = torch.arange(text.start, text.stop, device=device)
    batches = [(slice(0, B), text_all if text_ok is None else text_all[text_ok[0]])] if rows_agree else \
        [(slice(b, b + 1), text_all[text_ok[b]]) for b in range(B)]

    groups: dict[tuple[int, int, int], list[int]] = {}
    for h, w in enumerate(windows.tolist()):
        groups.setdefault(geometry.clip_window(w), []).append(h)
    for window, head_list in groups.items():
        tables = _tables_on(geometry, window, text_len, text_first, layout, device)
        if len(head_list) == heads:
            hq, hk, hv = q, k, v
        else:
            index = torch.tensor(head_list, device=device)
            hq, hk, hv = (x.index_select(1, index) for x in (q, k, v))
        for rows, text_keys in batches:
            video_out = _video_queries(hq[rows], hk[rows], hv[rows], tables, text_keys, geometry, scale)
            result = _untile(video_out, geometry, layout)
            if len(head_list) == heads:
                out[rows, :, video] = result
            else:
                out[rows][:, head_list, video] = result

    if text_len:  # text queries: dense over every valid key
        padded_video = layout == "tiled" and not geometry.is_divisible
        mask = None
        if padded_video or (text_ok is not None and not bool(text_ok.all())):
            key_ok = torch.ones(B, S, dtype=torch.bool, device=device)
            if text_ok is not None:
                key_ok[:, text] = text_ok
            if padded_video:
                key_ok[:, video] = geometry.key_valid().to(device)
            mask = key_ok[:, None, None, :]
        out[:, :, text] = F.scaled_dot_product_attention(q[:, :, text], k, v, attn_mask=mask, scale=scale)
    return out


def _video_queries(q, k, v, tables, text_keys, geometry: Geometry, scale) -> torch.Tensor:
    """``(B, h, num_tiles, tv, D)`` outputs of every query tile (padded rows hold garbage)."""
    q_pos, key_pos, clean_tiles, padded_tiles, key_ok = tables
    B, h, S, D = q.shape
    nt, tv = q_pos.shape
    window_keys = key_pos.shape[1]
    n_text = text_keys.numel()
    key_len = window_keys + n_text
    out = q.new_empty(B, h, nt, tv, D)
    # Gathered k and v per query tile: 2 * B * h * key_len * D elements.
    per_tile = 2 * B * h * key_len * D * q.element_size()
    chunk = max(1, GATHER_BUDGET_BYTES // per_tile)
    for tiles, ok in ((clean_tiles, None), (padded_tiles, key_ok)):
        for start in range(0, tiles.numel(), chunk):
            ids = tiles[start: start + chunk]
            c = ids.numel()
            keys = key_pos.index_select(0, ids)
            if n_text:
                keys = torch.cat([keys, text_keys.expand(c, n_text)], dim=1)
            keys = keys.reshape(-1)
            qc = q.index_select(2, q_pos.index_select(0, ids).reshape(-1)).view(B * h, c, tv, D)
            kc = k.index_select(2, keys).view(B * h, c, key_len, D)
            vc = v.index_select(2, keys).view(B * h, c, key_len, D)
            mask = None
            if ok is not None:
                chunk_ok = ok[start: start + c]
                if n_text:
                    chunk_ok = torch.cat([chunk_ok, chunk_ok.new_ones(c, n_text)], dim=1)
                mask = chunk_ok[None, :, None, :]
            oc = F.scaled_dot_product_attention(qc, kc, vc, attn_mask=mask, scale=scale)
            out.index_copy_(2, ids, oc.view(B, h, c, tv, D))
    return out


def _untile(video_out: torch.Tensor, geometry: Geometry, layout: str) -> torch.Tensor:
    """Tile-order query outputs ``(B, h, nt, tv, D)`` -> the video rows of the caller's layout."""
    flat = video_out.view(*video_out.shape[:2], geometry.padded_len, video_out.shape[-1])
    if layout == "natural":
        return flat.index_select(2, untile_index_on(geometry, flat.device))
    if geometry.is_divisible:
        return flat
    return flat * geometry.key_valid().to(flat.device)[:, None].to(flat.dtype)  # padded rows -> 0
