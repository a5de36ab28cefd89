"""Attention-locality statistics of one attention call: recall of every STA window, mass by tile offset,
and the output error of a shortlist of windows.

Everything starts from the per-(query tile, key tile) attention mass ``M`` of ``sta_search.kernels.recall``
(no ``S x S`` matrix). The key tiles a window shows a query tile are a product of one interval per axis,
so the mass inside *every* window ``(wt, wh, ww)``, ``1 <= w_d <= n_d``, comes from three small
contractions of ``M`` with per-axis indicator tensors ``A_d[q, w, k] = [start_d(q, w) <= k < start_d(q, w) + w]``
(exact sums, no prefix-sum cancellation). Text keys always count as inside a window.

Recall of a window = mean over the real video queries of the softmax mass inside it; query tiles are
thus weighted by their number of real tokens. Output error = ``||o_w - o_dense|| / ||o_dense||`` over the
real video queries, per (batch, head).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from .errors import UserError
from .options import parse_window, parse_windows  # noqa: F401  (CLI parsing lives in options; kept importable here)
from .kernels.geometry import Geometry, to_tiles
from .kernels.recall import (
    attention_lse_reference,
    attention_with_lse,
    dense_and_tile_mass,
    resolve_recall_backend,
    tile_mass_triton_tiled,
)
from .kernels.recall.reference import video_and_text_slices
from .kernels.sta import sta_attention

Triple = tuple[int, int, int]

#: Default error shortlist before clipping to the grid: one tile up to full attention, isotropic and
#: anisotropic (all frames / all rows / all columns of a local neighbourhood). (99, 99, 99) is full.
DEFAULT_ERROR_WINDOWS: tuple[Triple, ...] = (
    (1, 1, 1), (1, 2, 2), (2, 2, 2), (1, 3, 3), (3, 3, 3), (2, 3, 5), (3, 3, 5), (2, 4, 6), (3, 5, 7),
    (1, 6, 10), (5, 1, 10), (5, 6, 1), (3, 6, 10), (5, 4, 6), (99, 99, 99),
)

DEFAULT_MEMORY_BUDGET = 1536 << 20


# ------------------------------------------------------------------------------------ windows
def clip_windows(geometry: Geometry, windows) -> tuple[Triple, ...]:
    """Clip each window to the grid, drop duplicates (first kept), order by density then as given."""
    seen: dict[Triple, None] = {}
    for w in windows:
        seen.setdefault(geometry.clip_window(w), None)
    return tuple(sorted(seen, key=lambda w: (geometry.tile_density(w),)))


#: The tile grid DEFAULT_ERROR_WINDOWS was laid out for: HunyuanVideo 720p, canvas (30, 48, 80), tile (6, 8, 8).
DEFAULT_WINDOWS_GRID: Triple = (5, 6, 10)


def default_error_windows(geometry: Geometry) -> tuple[Triple, ...]:
    return clip_windows(geometry, DEFAULT_ERROR_WINDOWS)


def proportional_error_windows(geometry: Geometry) -> tuple[Triple, ...]:
    """DEFAULT_ERROR_WINDOWS scaled per axis from DEFAULT_WINDOWS_GRID to this grid (each extent rounded, at
    least 1 tile), so the shortlist keeps the same tile densities on every grid: clipping instead turns the
    list's large windows into near-full ones on small grids (Wan 480p, grid (4, 4, 7): density sum 3.79
    clipped against ~2.4 here) and leaves only small ones on large grids."""
    scaled = [tuple(max(1, round(w * n / ref)) for w, n, ref in zip(window, geometry.grid, DEFAULT_WINDOWS_GRID))
              if window != (99, 99, 99) else window for window in DEFAULT_ERROR_WINDOWS]
    return clip_windows(geometry, scaled)


# ------------------------------------------------------------------------------------ reductions
@functools.lru_cache(maxsize=64)
def _axis_window_indicator(n: int) -> torch.Tensor:
    """``(n_q, n_w, n_k)`` float64: does query tile coordinate q see key coordinate k under window w+1."""
    q = np.arange(n)[:, None, None]
    w = np.arange(1, n + 1)[None, :, None]
    k = np.arange(n)[None, None, :]
    start = np.clip(q - (w - 1) // 2, 0, n - w)
    return torch.from_numpy(((k >= start) & (k < start + w)).astype(np.float64))


@functools.lru_cache(maxsize=64)
def _axis_offset_indicator(n: int) -> torch.Tensor:
    """``(n_q, n_k, 2n-1)`` float64: one-hot of the offset ``k - q + n - 1``."""
    q = np.arange(n)[:, None, None]
    k = np.arange(n)[None, :, None]
    o = np.arange(2 * n - 1)[None, None, :]
    return torch.from_numpy((k - q + n - 1 == o).astype(np.float64))


def _video_mass(mass: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    nt, nh, nw = geometry.grid
    n = geometry.num_tiles
    return mass[..., :n].double().reshape(*mass.shape[:-2], nt, nh, nw, nt, nh, nw)


def window_recall(mass: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """Recall of every window from the tile mass.

    Args:
        mass: ``(..., num_tiles, num_tiles + 1)`` as returned by ``tile_mass`` (last column: text keys).

    Returns:
        ``(..., nt, nh, nw)`` float64; entry ``[i, j, k]`` is the mean over real video queries of the mass
        inside window ``(i+1, j+1, k+1)`` (text mass included).
    """
    dev = mass.device
    m = _video_mass(mass, geometry)
    at, ah, aw = (_axis_window_indicator(n).to(dev) for n in geometry.grid)
    r = torch.einsum("...abcxyz,aix->...ibcyz", m, at)
    r = torch.einsum("...ibcyz,bjy->...ijcz", r, ah)
    r = torch.einsum("...ijcz,clz->...ijl", r, aw)
    text = mass[..., geometry.num_tiles].double().sum(-1)
    return (r + text[..., None, None, None]) / geometry.video_len


def offset_mass(mass: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """``(..., 2nt-1, 2nh-1, 2nw-1)`` float64: mean over real video queries of the mass on key tiles at
    offset ``(key - query)`` (index ``offset + n - 1``). Text mass is not included."""
    dev = mass.device
    m = _video_mass(mass, geometry)
    bt, bh, bw = (_axis_offset_indicator(n).to(dev) for n in geometry.grid)
    r = torch.einsum("...abcxyz,axi->...ibcyz", m, bt)
    r = torch.einsum("...ibcyz,byj->...ijcz", r, bh)
    r = torch.einsum("...ijcz,czl->...ijl", r, bw)
    return r / geometry.video_len


def _query_boxes(grid: Triple, max_tiles: int) -> list[tuple[Triple, Triple]]:
    """Chunks ``[lo, hi)`` of query tiles, at most ``max_tiles`` (at least one tile) each, that are boxes and
    consecutive in tile order: whole frames of tiles, else whole rows of one frame, else runs of one row."""
    nt, nh, nw = grid
    if max_tiles >= nh * nw:
        step = max_tiles // (nh * nw)
        return [((t, 0, 0), (min(nt, t + step), nh, nw)) for t in range(0, nt, step)]
    if max_tiles >= nw:
        step = max_tiles // nw
        return [((t, h, 0), (t + 1, min(nh, h + step), nw)) for t in range(nt) for h in range(0, nh, step)]
    return [((t, h, w), (t + 1, h + 1, min(nw, w + max_tiles)))
            for t in range(nt) for h in range(nh) for w in range(0, nw, max_tiles)]


def _window_groups(window: Triple, starts, lo: Triple, hi: Triple):
    """The query tiles of the box ``[lo, hi)`` grouped by their window start on every axis: yields
    ``(query slices relative to lo, key tile slices)``, one box of key tiles per group."""
    per_axis = []
    for w, axis_starts, a, b in zip(window, starts, lo, hi):
        runs, begin = [], a
        for qc in range(a + 1, b + 1):
            if qc == b or axis_starts[qc] != axis_starts[begin]:
                s = int(axis_starts[begin])
                runs.append((slice(begin - a, qc - a), slice(s, s + w)))
                begin = qc
        per_axis.append(runs)
    for qt, kt in per_axis[0]:
        for qh, kh in per_axis[1]:
            for qw, kw in per_axis[2]:
                yield (qt, qh, qw), (kt, kh, kw)


# ------------------------------------------------------------------------------------ one call
@dataclass(frozen=True)
class CallStats:
    """Statistics of one attention call, summed over its batch (``samples`` items)."""

    recall: torch.Tensor           # (heads, nt, nh, nw) float64
    offset_mass: torch.Tensor      # (heads, 2nt-1, 2nh-1, 2nw-1) float64
    error: torch.Tensor            # (heads, K) float64
    shortlist_recall: torch.Tensor  # (heads, K) float64
    samples: int


@dataclass(frozen=True)
class AttentionProfiler:
    """Computes the dense output and :class:`CallStats` of attention calls on one geometry.

    ``backend``: recall pass, ``"auto"`` (on Hopper, where it runs, the fused Gluon dense pass that records the
    tile mass itself; else Triton on CUDA; PyTorch reference on CPU), ``"gluon"``, ``"triton"`` (a dense cuDNN
    pass, then a second QK^T pass), ``"reference"``. ``sta_backend``: backend of the shortlist's STA outputs on
    the GPU paths, run by ``sta_attention`` on the natural token order (``"auto"``: as
    ``kernels.backends.choose_backend`` picks, Gluon in place on Hopper); the reference path computes them from
    its own scores. ``memory_budget``: bytes of extra activations per head chunk: tile-order q and k of the
    recall pass (the fused pass: its row scratch), then one STA output (with its float32 error temporaries) of
    the shortlist.
    """

    geometry: Geometry
    error_windows: tuple[Triple, ...]
    backend: str = "auto"
    sta_backend: str = "auto"
    memory_budget: int = DEFAULT_MEMORY_BUDGET

    def __post_init__(self):
        object.__setattr__(self, "error_windows", tuple(self.geometry.clip_window(w) for w in self.error_windows))

    def __call__(self, q, k, v, *, text_len: int = 0, text_first: bool = False,
                 text_mask: torch.Tensor | None = None, scale: float | None = None,
                 dense_out: torch.Tensor | None = None) -> tuple[torch.Tensor, CallStats]:
        """Dense attention output ``(B, heads, S, D)`` and the statistics of this call.

        ``dense_out``: the dense output when the caller already has it (CPU path only; the Triton path
        computes it with the log-sum-exp it needs).
        """
        g = self.geometry
        B, H, S, D = q.shape
        if S != g.video_len + text_len:
            raise ValueError(f"sequence length {S} != canvas {g.canvas} volume {g.video_len} + text_len {text_len}")
        scale = D**-0.5 if scale is None else float(scale)
        backend = resolve_recall_backend(self.backend, q, g)
        K = len(self.error_windows)
        errors = torch.zeros(B, H, K, dtype=torch.float64, device=q.device)
        partial = [i for i, w in enumerate(self.error_windows) if not g.is_full(w)]
        if backend == "reference":
            if dense_out is None:
                dense_out, _ = attention_lse_reference(q, k, v, text_len=text_len, text_first=text_first,
                                                       text_mask=text_mask, scale=scale)
            mass, partial_errors = self._reference_fused(q, k, v, dense_out, partial, text_len, text_first,
                                                         text_mask, scale)
            if partial:
                errors[:, :, partial] = partial_errors
        else:
            if backend == "gluon":
                dense_out, mass = dense_and_tile_mass(q, k, v, g, text_len=text_len, text_first=text_first,
                                                      text_mask=text_mask, scale=scale,
                                                      memory_budget=self.memory_budget)
            else:
                dense_out, lse = attention_with_lse(q, k, v, text_len=text_len, text_first=text_first,
                                                    text_mask=text_mask, scale=scale)
                mass = torch.empty(B, H, g.num_tiles, g.num_tiles + 1, dtype=torch.float32, device=q.device)
                per_head = 2 * B * (g.padded_len + text_len) * D * q.element_size()  # tile-order q and k
                chunk = max(1, min(H, self.memory_budget // per_head))
                for h0 in range(0, H, chunk):
                    heads = slice(h0, min(H, h0 + chunk))
                    mass[:, heads] = self._recall_chunk(q[:, heads], k[:, heads], lse[:, heads], text_len,
                                                        text_first, text_mask, scale)
                del lse
            if partial:
                errors[:, :, partial] = self._shortlist_errors(q, k, v, dense_out, partial, text_len, text_first,
                                                               text_mask, scale)
        table = window_recall(mass, g)  # (B, H, nt, nh, nw)
        shortlist = torch.stack([table[..., w[0] - 1, w[1] - 1, w[2] - 1] for w in self.error_windows], dim=-1) \
            if K else torch.zeros(B, H, 0, dtype=torch.float64, device=q.device)
        stats = CallStats(recall=table.sum(0), offset_mass=offset_mass(mass, g).sum(0), error=errors.sum(0),
                          shortlist_recall=shortlist.sum(0), samples=B)
        return dense_out, stats

    # --------------------------------------------------------------------------- helpers
    def _reference_fused(self, q, k, v, dense_out, partial, text_len, text_first, text_mask, scale,
                         chunk_bytes: int = 64 << 20):
        """CPU path in tile order (docs/geometry.md). Per box of query tiles, one fp32 ``QK^T`` and one shared exp
        give the tile mass (per-key-tile sums of the weights) and every shortlist window's STA output. The key
        tiles of a window are a box per query tile, the same box for all query tiles sharing the window's
        start on every axis, so each such group is one matmul of a strided slice of the weights with a box of
        ``V``: a window of tile density ``d`` costs ``~d`` of a dense ``PV``, without index gathers. Same
        results as ``tile_mass_reference`` and ``sta_attention(backend="reference")``."""
        g = self.geometry
        B, H, S, D = q.shape
        n, tv, P, T = g.num_tiles, g.tile_volume, g.padded_len, text_len
        grid = g.grid
        dev = q.device
        video, text = video_and_text_slices(g.video_len, text_len, text_first)
        real_rows = g.key_valid().to(dev)  # (P,): tile-order positions that hold a real token
        key_bias = None  # -inf on padded video keys and masked text keys, so the row max only sees real keys
        if not g.is_divisible or (T and text_mask is not None):
            key_bias = torch.zeros(B, 1, 1, P + T, dtype=torch.float32, device=dev)
            key_bias[..., :P] = torch.where(real_rows, 0.0, float("-inf"))
            if T and text_mask is not None:
                key_bias[:, 0, 0, P:] = torch.where(text_mask.to(dev, torch.bool), 0.0, float("-inf"))
        key_weight = None if key_bias is None else (key_bias > float("-inf")).float()
        q_t = to_tiles(g, q[:, :, video].float()).mul_(scale)
        k_t = torch.cat([to_tiles(g, k[:, :, video].float()), k[:, :, text].float()], dim=2)  # [video tiles | text]
        v_box = to_tiles(g, v[:, :, video].float()).view(B, H, *grid, tv, D)
        v_text = v[:, :, text].float()
        ref = to_tiles(g, dense_out[:, :, video].float())  # padding rows are zero
        windows = [(j, self.error_windows[i], g.window_starts(self.error_windows[i])) for j, i in enumerate(partial)]
        mass = torch.zeros(B, H, n, n + 1, dtype=torch.float32, device=dev)
        diff2 = torch.zeros(B, H, len(partial), dtype=torch.float64, device=dev)
        for lo, hi in _query_boxes(grid, max(1, chunk_bytes // (4 * (P + T) * B * H * tv))):
            box = tuple(b - a for a, b in zip(lo, hi))
            first, count = (lo[0] * grid[1] + lo[1]) * grid[2] + lo[2], box[0] * box[1] * box[2]
            rows = slice(first * tv, (first + count) * tv)
            scores = torch.matmul(q_t[:, :, rows], k_t.transpose(-1, -2))
            if key_bias is not None:
                scores.add_(key_bias)
            # one exp for the dense softmax and every window: exp(s - rowmax) restricted to a window and
            # renormalised is that window's softmax. The floor e^-80 keeps denormals (very slow on CPUs) out;
            # it moves no sum by more than keys * 2e-35. Windows whose weights sum below 1e-20 on a real row
            # are redone with their own exact softmax.
            weights = scores.sub_(scores.amax(dim=-1, keepdim=True)).clamp_min_(-80.0).exp_()
            del scores
            if key_weight is not None:
                weights.mul_(key_weight)  # padded / masked keys: weight 0, not the floor
            tile_sums = weights[..., :P].unflatten(-1, (n, tv)).sum(dim=-1)  # (B, H, rows, n)
            text_sum = weights[..., P:].sum(dim=-1)
            real = real_rows[rows]
            per_row = real.float() / (tile_sums.sum(dim=-1) + text_sum)
            mass[:, :, first:first + count, :n] = (tile_sums * per_row[..., None]).unflatten(2, (count, tv)).sum(3)
            mass[:, :, first:first + count, n] = (text_sum * per_row).unflatten(2, (count, tv)).sum(3)
            if not partial:
                continue
            # query rows as (*box, tv), video keys as (*grid, tv): a window group is a strided slice
            w_box = weights[..., :P].unflatten(-1, (*grid, tv)).unflatten(2, (*box, tv))
            sums_box = tile_sums.unflatten(-1, grid).unflatten(2, (*box, tv))
            text_sum_box = text_sum.unflatten(2, (*box, tv))
            text_out = torch.matmul(weights[..., P:], v_text).unflatten(2, (*box, tv)) if T else None
            real_box, ref_box = real.view(*box, tv), ref[:, :, rows].unflatten(2, (*box, tv))
            every = (slice(None), slice(None))
            for j, window, starts in windows:
                groups = list(_window_groups(window, starts, lo, hi))
                denom = text_sum_box.clone()
                out = torch.empty(*denom.shape, D, dtype=torch.float32, device=dev)
                for qs, ks in groups:
                    denom[(*every, *qs)].add_(sums_box[(*every, *qs, slice(None), *ks)].sum(dim=(-3, -2, -1)))
                    w = w_box[(*every, *qs, slice(None), *ks)]
                    query_rows = w.shape[2] * w.shape[3] * w.shape[4] * tv
                    v_keys = v_box[(*every, *ks)].reshape(B, H, -1, D)
                    group_out = torch.matmul(w.reshape(B, H, query_rows, -1), v_keys)
                    out[(*every, *qs)].copy_(group_out.unflatten(2, w.shape[2:6]))
                if text_out is not None:
                    out.add_(text_out)
                out.div_(denom[..., None])
                underflow = (denom < 1e-20) & real_box
                if bool(underflow.any()):
                    for qs, ks in groups:
                        if bool(underflow[(*every, *qs)].any()):
                            v_keys = v_box[(*every, *ks)].reshape(B, H, -1, D)
                            out[(*every, *qs)] = self._exact_window_output(q_t, k_t, v_keys, v_text, key_bias, qs, ks,
                                                                           lo, tv, P)
                err = out.sub_(ref_box).square_().sum(dim=-1) * real_box
                diff2[:, :, j] += err.sum(dim=(-4, -3, -2, -1)).double()
        if not partial:
            return mass, None
        norm = torch.linalg.vector_norm(ref, dim=(-2, -1)).double()
        return mass, diff2.sqrt() / norm.clamp_min(1e-30)[..., None]

    def _exact_window_output(self, q_t, k_t, v_keys, v_text, key_bias, qs, ks, lo, tv, P):
        """Own softmax of one window group (query tiles ``qs`` of the box at ``lo``, key tiles ``ks``)."""
        grid = self.geometry.grid
        B, H, _, D = q_t.shape
        global_qs = tuple(slice(s.start + o, s.stop + o) for s, o in zip(qs, lo))
        queries = q_t.view(B, H, *grid, tv, D)[(slice(None), slice(None), *global_qs)]
        query_shape = queries.shape[2:6]
        queries = queries.reshape(B, H, -1, D)
        keys = k_t[:, :, :P].view(B, H, *grid, tv, D)[(slice(None), slice(None), *ks)].reshape(B, H, -1, D)
        scores = torch.cat([torch.matmul(queries, keys.transpose(-1, -2)),
                            torch.matmul(queries, k_t[:, :, P:].transpose(-1, -2))], dim=-1)
        if key_bias is not None:
            video_bias = key_bias[..., :P].view(B, 1, 1, *grid, tv)[(slice(None), slice(None), slice(None), *ks)]
            scores = scores + torch.cat([video_bias.reshape(B, 1, 1, -1), key_bias[..., P:]], dim=-1)
        p = torch.softmax(scores, dim=-1)
        out = torch.matmul(p[..., : keys.shape[2]], v_keys) + torch.matmul(p[..., keys.shape[2]:], v_text)
        return out.view(B, H, *query_shape, D)

    def _recall_chunk(self, q, k, lse, text_len, text_first, text_mask, scale):
        """Tile mass of some heads: the recall pass reads q (video) and k (``[video tiles | text]``) in tile order,
        each gathered by one ``index_select`` (the only copies it makes; padded positions zeroed in place)."""
        g = self.geometry
        video_index, key_index, padding = _tile_order_indices(g, text_len, text_first, q.device)
        q_t = q.index_select(2, video_index)
        k_t = k.index_select(2, key_index)
        if padding is not None:
            q_t.index_fill_(2, padding, 0)
            k_t.index_fill_(2, padding, 0)
        video, _ = video_and_text_slices(g.video_len, text_len, text_first)
        lse_t = to_tiles(g, lse[:, :, video], dim=-1)
        return tile_mass_triton_tiled(q_t, k_t, lse_t, g, text_len, text_mask, scale)

    def _shortlist_errors(self, q, k, v, dense_out, partial, text_len, text_first, text_mask, scale):
        """``(B, H, len(partial))`` float64 relative errors of the partial shortlist windows' STA outputs.

        Each window runs ``sta_attention`` on the natural token order (in place where the backend allows it,
        ``kernels.backends.runs_in_place``: no tile copies), on all heads at once unless one output per head
        chunk exceeds ``memory_budget``. Errors are over the video queries (natural order has no padded rows),
        squared distances summed in float32 for every (batch, head) at once."""
        g = self.geometry
        B, H, S, D = q.shape
        video, _ = video_and_text_slices(g.video_len, text_len, text_first)
        ref = dense_out[:, :, video]
        ref_norm = squared_distance(ref, None).double().sqrt()  # (B, H)
        chunk = max(1, min(H, self.memory_budget // (2 * B * S * D * q.element_size())))
        diff2 = torch.zeros(B, H, len(partial), dtype=torch.float64, device=q.device)
        for h0 in range(0, H, chunk):
            heads = slice(h0, min(H, h0 + chunk))
            qh, kh, vh = (x[:, heads] for x in (q, k, v))
            for j, i in enumerate(partial):
                o = sta_attention(qh, kh, vh, canvas=g.canvas, tile=g.tile, windows=self.error_windows[i],
                                  text_len=text_len, text_first=text_first, text_mask=text_mask, scale=scale,
                                  backend=self.sta_backend)
                diff2[:, heads, j] = squared_distance(o[:, :, video], ref[:, heads]).double()
                del o
        return diff2.sqrt() / ref_norm.clamp_min(1e-30)[..., None]


@functools.lru_cache(maxsize=32)
def _tile_order_indices(geometry: Geometry, text_len: int, text_first: bool, device: torch.device):
    """Indices into natural-order tokens of: the video in tile order, ``[video tiles | text]``, and the padded
    tile-order positions (None on a divisible canvas)."""
    video, text = video_and_text_slices(geometry.video_len, text_len, text_first)
    tiles = geometry.tile_index()
    video_index = tiles.clamp_min(0) + video.start
    key_index = torch.cat([video_index, torch.arange(text.start, text.stop)])
    padding = None if geometry.is_divisible else torch.nonzero(tiles < 0).squeeze(1).to(device)
    return video_index.to(device), key_index.to(device), padding


def squared_distance(x: torch.Tensor, ref: torch.Tensor | None, chunk_bytes: int = 256 << 20) -> torch.Tensor:
    """``sum((x - ref)**2)`` over the last two dims (``ref=None``: ``sum(x**2)``), ``(B, H)`` float32.

    Differences are taken in float32 (never in bf16) and summed in float32 over chunks of tokens of at most
    ``chunk_bytes`` of float32 temporaries, every (batch, head) in the same kernels; any strides."""
    if x.device.type == "cuda":
        from .kernels.recall.distance import squared_distance_triton_ok, squared_distance_triton

        if squared_distance_triton_ok(x, ref)[0]:
            return squared_distance_triton(x, ref)
    B, H, N, D = x.shape
    total = torch.zeros(B, H, dtype=torch.float32, device=x.device)
    step = max(1, chunk_bytes // (4 * B * H * D))
    for start in range(0, N, step):
        part = x[:, :, start:start + step].to(torch.float32, copy=True)
        if ref is not None:
            part.sub_(ref[:, :, start:start + step])
        total += part.square_().sum(dim=(-2, -1))
    return total
