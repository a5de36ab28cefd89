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
from .kernels.geometry import Geometry, to_tiles
from .kernels.recall import (
    attention_lse_reference,
    attention_with_lse,
    resolve_recall_backend,
    tile_mass_triton_tiled,
)
from .kernels.recall.reference import _token_tile, video_and_text_slices

Triple = tuple[int, int, int]

#: Default error shortlist before clipping to the grid: one tile up to full attention, isotropic and
#: anisotropic (all frames / all rows / all columns of a local neighbourhood). (99, 99, 99) is full.
DEFAULT_ERROR_WINDOWS: tuple[Triple, ...] = (
    (1, 1, 1), (1, 2, 2), (2, 2, 2), (1, 3, 3), (3, 3, 3), (2, 3, 5), (3, 3, 5), (2, 4, 6), (3, 5, 7),
    (1, 6, 10), (5, 1, 10), (5, 6, 1), (3, 6, 10), (5, 4, 6), (99, 99, 99),
)

DEFAULT_MEMORY_BUDGET = 1536 << 20


# ------------------------------------------------------------------------------------ windows
def parse_window(text: str) -> Triple:
    """``"3,3,5"`` (or ``3x3x5``) -> ``(3, 3, 5)``; UserError naming the bad value."""
    parts = text.replace("x", ",").replace(" ", "").split(",")
    try:
        window = tuple(int(p) for p in parts)
    except ValueError:
        raise UserError(f"window {text!r} must be three integers t,h,w") from None
    if len(window) != 3 or min(window) < 1:
        raise UserError(f"window {text!r} must be three integers t,h,w, each >= 1")
    return window  # type: ignore[return-value]


def parse_windows(items) -> tuple[Triple, ...]:
    """Windows from CLI strings; each string may hold several separated by ';' or spaces."""
    windows = []
    for item in items:
        for piece in item.replace(";", " ").split():
            windows.append(parse_window(piece))
    if not windows:
        raise UserError("--windows needs at least one window t,h,w")
    return tuple(windows)


def clip_windows(geometry: Geometry, windows) -> tuple[Triple, ...]:
    """Clip each window to the grid, drop duplicates (first kept), order by density then as given."""
    seen: dict[Triple, None] = {}
    for w in windows:
        seen.setdefault(geometry.clip_window(w), None)
    return tuple(sorted(seen, key=lambda w: (geometry.tile_density(w),)))


def default_error_windows(geometry: Geometry) -> tuple[Triple, ...]:
    return clip_windows(geometry, DEFAULT_ERROR_WINDOWS)


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

    ``backend``: recall pass, ``"auto"`` (Triton on CUDA, PyTorch reference on CPU), ``"triton"``,
    ``"reference"``. ``sta_backend``: backend of the shortlist's STA outputs on the tile-order (Triton recall)
    path, ``"auto"`` = triton on CUDA, flex elsewhere; the reference path computes them from its own scores.
    ``memory_budget``: bytes of extra activations (tile-order copies, one STA output) per head chunk.
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
        backend = resolve_recall_backend(self.backend, q)
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
            dense_out, lse = attention_with_lse(q, k, v, text_len=text_len, text_first=text_first,
                                                text_mask=text_mask, scale=scale)
            mass = torch.empty(B, H, g.num_tiles, g.num_tiles + 1, dtype=torch.float32, device=q.device)
            per_head = 5 * B * S * D * q.element_size()
            chunk = max(1, min(H, self.memory_budget // per_head))
            for h0 in range(0, H, chunk):
                heads = slice(h0, min(H, h0 + chunk))
                mass[:, heads], chunk_err = self._tiled_chunk(q[:, heads], k[:, heads], v[:, heads],
                                                              dense_out[:, heads], lse[:, heads], partial,
                                                              text_len, text_first, text_mask, scale)
                if partial:
                    errors[:, heads.start:heads.stop, partial] = chunk_err
        table = window_recall(mass, g)  # (B, H, nt, nh, nw)
        shortlist = torch.stack([table[..., w[0] - 1, w[1] - 1, w[2] - 1] for w in self.error_windows], dim=-1) \
            if K else torch.zeros(B, H, 0, dtype=torch.float64, device=q.device)
        stats = CallStats(recall=table.sum(0), offset_mass=offset_mass(mass, g).sum(0), error=errors.sum(0),
                          shortlist_recall=shortlist.sum(0), samples=B)
        return dense_out, stats

    # --------------------------------------------------------------------------- helpers
    def _reference_fused(self, q, k, v, dense_out, partial, text_len, text_first, text_mask, scale,
                         chunk_bytes: int = 64 << 20):
        """CPU path: per chunk of video queries, one fp32 ``QK^T`` gives the tile mass and, through
        per-window tile masks (SPEC section 1), every shortlist window's STA output. Same results as
        ``tile_mass_reference`` and ``sta_attention(backend="reference")``, without a mask per window."""
        g = self.geometry
        B, H, S, D = q.shape
        V, n = g.video_len, g.num_tiles
        video, text = video_and_text_slices(V, text_len, text_first)
        token_tile = _token_tile(g).to(q.device)
        column = torch.full((S,), n, dtype=torch.long, device=q.device)  # key -> tile (text keys: column n)
        column[video] = token_tile
        key_bias = torch.zeros(B, 1, 1, S, dtype=torch.float32, device=q.device)
        if text_len and text_mask is not None:
            key_bias[:, 0, 0, text] = torch.where(text_mask.to(q.device, torch.bool), 0.0, float("-inf"))
        allowed = []  # per window: (n + 1 query tiles, n + 1 key columns) bool; text columns always allowed
        for i in partial:
            table = torch.zeros(n, n + 1, dtype=torch.bool)
            table.scatter_(1, torch.from_numpy(g.key_tiles(self.error_windows[i]).astype("int64")), True)
            table[:, n] = True
            allowed.append(table.to(q.device))
        key_valid = (key_bias > float("-inf")).float() if text_len and text_mask is not None else None
        key_onehot = torch.nn.functional.one_hot(column, n + 1).float()  # (S, n + 1)
        kf, vf = k.float(), v.float()
        qv, ref = q[:, :, video].float(), dense_out[:, :, video].float()
        mass = torch.zeros(B, H, n, n + 1, dtype=torch.float32, device=q.device)
        diff2 = torch.zeros(B, H, len(partial), dtype=torch.float64, device=q.device)
        rows = max(1, chunk_bytes // (4 * S * B * H))
        for start in range(0, V, rows):
            stop = min(V, start + rows)
            scores = torch.matmul(qv[:, :, start:stop], kf.transpose(-1, -2)) * scale + key_bias
            # one exp for the dense softmax and every window: exp(s - rowmax) restricted to a window and
            # renormalised is that window's softmax. The floor e^-80 keeps denormals (very slow on CPUs) out;
            # it moves no sum by more than keys * 2e-35. Windows whose weights sum below 1e-20 are redone
            # with their own exact softmax.
            weights = torch.exp((scores - scores.amax(dim=-1, keepdim=True)).clamp_min_(-80.0))
            if key_valid is not None:
                weights = weights * key_valid  # masked text keys: weight 0, not the floor
            by_key_tile = torch.matmul(weights / weights.sum(dim=-1, keepdim=True), key_onehot)
            mass.index_add_(2, token_tile[start:stop], by_key_tile)
            del by_key_tile
            q_tiles = token_tile[start:stop]
            for j, table in enumerate(allowed):
                inside = table[q_tiles][:, column]  # (rows, S)
                windowed = weights * inside
                denom = windowed.sum(dim=-1, keepdim=True)
                if bool((denom < 1e-20).any()):
                    windowed = torch.softmax(scores.masked_fill(~inside, float("-inf")), dim=-1)
                    denom = 1.0
                out = torch.matmul(windowed, vf) / denom
                diff2[:, :, j] += (out - ref[:, :, start:stop]).square().sum(dim=(-2, -1)).double()
        if not partial:
            return mass, None
        norm = torch.linalg.vector_norm(ref, dim=(-2, -1)).double()
        return mass, diff2.sqrt() / norm.clamp_min(1e-30)[..., None]

    def _tiled_chunk(self, q, k, v, dense_out, lse, partial, text_len, text_first, text_mask, scale):
        g = self.geometry
        video, text = video_and_text_slices(g.video_len, text_len, text_first)

        def tiled(x):
            xv = to_tiles(g, x[:, :, video])
            return torch.cat([xv, x[:, :, text]], dim=2) if text_len else xv

        q_t, k_t = tiled(q), tiled(k)
        lse_t = to_tiles(g, lse[:, :, video], dim=-1)
        mass = tile_mass_triton_tiled(q_t, k_t, lse_t, g, text_len, text_mask, scale)
        del lse_t
        if not partial:
            return mass, None
        from .kernels.sta import sta_attention_tiled

        v_t = tiled(v)
        ref = to_tiles(g, dense_out[:, :, video])
        rows = None if g.is_divisible else torch.nonzero(g.key_valid()).squeeze(1).to(q.device)
        B, H = q.shape[:2]
        norm = torch.stack([self._row_norm(ref[:, h], None, rows) for h in range(H)], dim=1)
        sta_backend = self.sta_backend
        if sta_backend == "auto":
            sta_backend = "triton" if q.device.type == "cuda" else "flex"
        out = []
        for i in partial:
            o = sta_attention_tiled(q_t, k_t, v_t, geometry=g, windows=self.error_windows[i], text_len=text_len,
                                    text_mask=text_mask, scale=scale, backend=sta_backend)
            diff = torch.stack([self._row_norm(o[:, h, : g.padded_len], ref[:, h], rows) for h in range(H)], dim=1)
            out.append(diff / norm.clamp_min(1e-30))
            del o
        return mass, torch.stack(out, dim=-1)

    @staticmethod
    def _row_norm(x, ref, rows):
        """``||x - ref||`` over real video rows, per batch item, in float32 (one head at a time)."""
        x = x.float() if ref is None else x.float() - ref.float()
        if rows is not None:
            x = x.index_select(1, rows)
        return torch.linalg.vector_norm(x, dim=(-2, -1)).double()
