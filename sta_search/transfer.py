"""Carry a mask config or a profile made at one canvas to another canvas (docs/mask-config.md, "Transfer").

A config is bound to the canvas it was chosen for: a window counts tiles, and the tile grid changes with
the resolution and the frame count. Three rules give windows for a canvas that was not profiled; all
keep the source's model, tile, step count and dense steps, and every density they report is the exact
density on the *new* canvas (:meth:`Geometry.density`, padding accounted for).

``same_tiles`` (:func:`same_tiles`)
    Every window keeps its tile counts, clipped to the new grid. A head that looked 3 tiles wide still
    looks 3 tiles wide: the same reach in tokens, so on a larger canvas it is sparser.

``same_fraction`` (:func:`same_fraction`)
    Every window keeps its share of the tile grid per axis: ``w' = w * n'/n`` rounded to the nearest odd
    integer (ties to the larger; odd windows are centred), at least 1, at most ``n'``. An axis whose grid
    did not change keeps its window unchanged (even or not), and a window that covered the whole axis still
    does. Density stays roughly the same; the reach in tokens grows with the canvas.

``resolve`` (:func:`resolve_from_offsets`, needs a profile)
    Re-solve on the new grid from the profile's attention mass by tile offset (``offset_mass``: mean over
    queries of the mass on key tiles at offset ``key - query``). Model: the mass a query puts at an offset
    does not depend on where the query sits (translation invariance), so

    1. the *affinity* of offset ``o`` is the profiled mean mass at ``o`` divided by the share of query tokens
       that could see ``o`` on the old grid (border queries cannot look past the edge);
    2. a query tile ``q`` of the new grid sees the offsets of its valid key tiles; its recall for window
       ``w`` is ``text + (1 - text) * sum(affinity in window) / sum(affinity over valid keys)`` (``text`` the
       profiled text share, 0 for Wan); the window's recall is the mean over the new canvas's real query
       tokens;
    3. offsets beyond the old grid (``|o_d| > n_d - 1``, only when the new grid is larger) have no measured
       mass. ``beyond="edge"`` (default) gives them the affinity of the nearest measured offset (clamped
       per axis): a flat tail, which, for attention that decays with distance, over-states far mass and so
       errs towards wider windows. ``beyond="zero"`` gives them none (assumes all mass lies within the old
       reach; errs towards narrow windows);
    4. cost ``1 - recall`` of every window of the new grid per (profiled step, layer, head), then the same
       groups, dense steps and budget solver as ``sta-search select`` (:func:`sta_search.select.solve_budget`
       or ``argmin``; the budget from ``--budget``/``--sparsity``/``--speedup`` on the new canvas's densities).

    Errors are only measured on the old canvas for its shortlist, so ``resolve`` optimises recall, never the
    output error.

Each result's summary records where it came from: ``transferred_from: {canvas, tile, rule}`` (plus the
source summary's density for config rules), and ``density``/``sparsity``/``overall_density`` recomputed on
the new canvas.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import UserError
from .maskconfig import MaskConfig

RULES = ("same_tiles", "same_fraction", "resolve")
BEYOND = ("edge", "zero")
Triple = tuple[int, int, int]


# ============================================================================ config rules
def same_tiles(config: MaskConfig, canvas: Sequence[int], tile: Sequence[int] | None = None) -> MaskConfig:
    """``config``'s windows on ``canvas``: same tile counts, clipped to the new grid (module docstring)."""
    source, geometry = _source_and_geometry(config, canvas, tile)
    windows = np.minimum(source.windows, np.asarray(geometry.grid, np.int32))
    return _transferred(source, geometry, windows, "same_tiles")


def same_fraction(config: MaskConfig, canvas: Sequence[int], tile: Sequence[int] | None = None) -> MaskConfig:
    """``config``'s windows on ``canvas``: the same share of the tile grid per axis, odd (module docstring)."""
    source, geometry = _source_and_geometry(config, canvas, tile)
    old_grid = source.geometry.grid
    windows = np.array(source.windows, dtype=np.int32)
    for axis, (n_old, n_new) in enumerate(zip(old_grid, geometry.grid)):
        windows[..., axis] = scale_axis(windows[..., axis], n_old, n_new)
    return _transferred(source, geometry, windows, "same_fraction")


def scale_axis(w: np.ndarray, n_old: int, n_new: int) -> np.ndarray:
    """Per-axis rule of :func:`same_fraction` on an array of window entries."""
    w = np.minimum(np.asarray(w, dtype=np.int64), n_old)
    if n_old == n_new:
        return w.astype(np.int32)
    scaled = w * n_new / n_old
    odd = 2 * np.floor((scaled - 1) / 2 + 0.5) + 1  # nearest odd, ties to the larger
    out = np.clip(odd, 1, n_new).astype(np.int64)
    return np.where(w >= n_old, n_new, out).astype(np.int32)


def transfer_config(config: MaskConfig, canvas: Sequence[int], rule: str, tile: Sequence[int] | None = None) -> MaskConfig:
    """Apply a config rule (``same_tiles`` or ``same_fraction``) by name."""
    if rule == "same_tiles":
        return same_tiles(config, canvas, tile)
    if rule == "same_fraction":
        return same_fraction(config, canvas, tile)
    if rule == "resolve":
        raise UserError("--transfer resolve re-solves from a profile's attention mass by tile offset; give a profile "
                        "(a mask config alone can use same_tiles or same_fraction)")
    raise UserError(f"--transfer {rule!r} is not one of {', '.join(RULES)}")


def _source_and_geometry(config: MaskConfig, canvas, tile):
    from .kernels.geometry import Geometry

    if not isinstance(config, MaskConfig):
        raise TypeError(f"expected a MaskConfig, got {type(config).__name__}")
    source = config.entries()[0] if config.alternates else config
    tile = tuple(int(v) for v in (tile or source.tile))
    try:
        geometry = Geometry(tuple(int(v) for v in canvas), tile)
    except ValueError as exc:
        raise UserError(f"canvas {list(canvas)} with tile {list(tile)}: {exc}") from None
    return source, geometry


def _transferred(source: MaskConfig, geometry, windows: np.ndarray, rule: str) -> MaskConfig:
    kept = ("strategy", "objective", "granularity", "candidates", "dense_step_count", "prompts", "profile_steps",
            "step_mapping", "tool_version", "imported_from")
    summary = {k: v for k, v in source.summary.items() if k in kept}
    summary["transferred_from"] = {"canvas": list(source.canvas), "tile": list(source.tile), "rule": rule,
                                   "source_density": _round(source.density())}
    config = source.replace(canvas=geometry.canvas, tile=geometry.tile, windows=windows, summary={})
    summary.update(density_summary(config))  # the source's budget and predictions do not hold on this canvas
    return config.replace(summary=summary)


def density_summary(config: MaskConfig) -> dict:
    """``density``, ``sparsity``, ``overall_density`` of ``config`` on its own canvas (exact)."""
    density = config.density()
    return {"density": _round(density), "sparsity": _round(1.0 - density), "overall_density": _round(config.overall_density())}


def _round(value: float) -> float:
    return float(f"{float(value):.6g}")


# ============================================================================ re-solve from offset mass
def offset_affinity(profile) -> np.ndarray:
    """``(P, L, H, 2nt-1, 2nh-1, 2nw-1)`` float64: mean mass at each tile offset among the query tokens that
    can see that offset on the profile's grid (step 1 of ``resolve`` in the module docstring)."""
    mass = profile.mean_offset_mass().double().numpy()
    geometry = profile.geometry
    share = [_visible_share(c, t, n) for c, t, n in zip(geometry.canvas, geometry.tile, geometry.grid)]
    visible = share[0][:, None, None] * share[1][None, :, None] * share[2][None, None, :]
    return np.where(visible > 0, mass / np.where(visible > 0, visible, 1.0), 0.0)


def _visible_share(canvas: int, tile: int, n: int) -> np.ndarray:
    """``(2n-1,)``: share of the axis's real query tokens whose tile ``q`` has ``0 <= q + o < n``."""
    tokens = _tile_tokens(canvas, tile, n)
    offsets = np.arange(-(n - 1), n)
    q = np.arange(n)
    ok = (q[None, :] + offsets[:, None] >= 0) & (q[None, :] + offsets[:, None] < n)
    return (ok * tokens[None, :]).sum(1) / canvas


def _tile_tokens(canvas: int, tile: int, n: int) -> np.ndarray:
    """Real tokens in each tile along one axis (the last may be partial)."""
    return np.minimum(tile, canvas - np.arange(n) * tile).astype(np.float64)


def offset_recall(affinity: np.ndarray, text_share: np.ndarray, old_grid: Sequence[int], geometry,
                  beyond: str = "edge", max_bytes: int = 256 << 20) -> np.ndarray:
    """Estimated recall of every window of ``geometry``'s grid (steps 2-3 of ``resolve``).

    Args:
        affinity: ``(G, 2nt-1, 2nh-1, 2nw-1)`` on the old grid (:func:`offset_affinity`, groups flattened).
        text_share: ``(G,)`` text mass (recall counts text keys as inside every window).
        old_grid: the grid ``affinity`` was measured on.

    Returns:
        ``(G, nt', nh', nw')`` float64: entry ``[g, i, j, k]`` is the recall of window ``(i+1, j+1, k+1)``.
    """
    if beyond not in BEYOND:
        raise UserError(f"beyond {beyond!r} is not one of {', '.join(BEYOND)}")
    G = affinity.shape[0]
    new_grid = geometry.grid
    # affinity on the new grid's offsets: [-(n'-1), n'-1] per axis, measured entries copied, others edge/zero
    lifted = affinity
    for axis, (n_old, n_new) in enumerate(zip(old_grid, new_grid)):
        offsets = np.arange(-(n_new - 1), n_new)
        index = np.clip(offsets + n_old - 1, 0, 2 * n_old - 2)
        lifted = np.take(lifted, index, axis=axis + 1)
        if beyond == "zero":
            inside = (np.abs(offsets) <= n_old - 1).astype(np.float64)
            shape = [1] * lifted.ndim
            shape[axis + 1] = -1
            lifted = lifted * inside.reshape(shape)
    # summed-volume table with a zero border: box sums in O(1)
    table = np.zeros((G,) + tuple(2 * n for n in new_grid), dtype=np.float64)
    table[:, 1:, 1:, 1:] = lifted.cumsum(1).cumsum(2).cumsum(3)
    # per axis, (query coordinate, window) -> the offset-index interval [lo, hi) of the keys seen
    bounds = []
    for n in new_grid:
        q = np.arange(n)[:, None]
        w = np.arange(1, n + 1)[None, :]
        start = np.clip(q - (w - 1) // 2, 0, n - w)
        lo = start - q + n - 1
        bounds.append((lo, lo + w))  # (n, n) each: [query, window]
    weights = [_tile_tokens(c, t, n) for c, t, n in zip(geometry.canvas, geometry.tile, new_grid)]
    query_weight = weights[0][:, None, None] * weights[1][None, :, None] * weights[2][None, None, :]
    query_weight = query_weight / query_weight.sum()
    nt, nh, nw = new_grid
    per_group = (nt * nh * nw) ** 2 * 8 * 3
    chunk = max(1, int(max_bytes // max(per_group, 1)))
    out = np.empty((G, nt, nh, nw), dtype=np.float64)
    (lt, ht), (lh, hh), (lw, hw) = bounds
    # index arrays broadcast to (qt, wt, qh, wh, qw, ww)
    T = lambda a: a[:, :, None, None, None, None]  # noqa: E731
    Hh = lambda a: a[None, None, :, :, None, None]  # noqa: E731
    W = lambda a: a[None, None, None, None, :, :]  # noqa: E731
    for g0 in range(0, G, chunk):
        s = table[g0:g0 + chunk]
        box = np.zeros((s.shape[0], nt, nt, nh, nh, nw, nw))
        for at, sign_t in ((ht, 1), (lt, -1)):
            for ah, sign_h in ((hh, 1), (lh, -1)):
                for aw, sign_w in ((hw, 1), (lw, -1)):
                    box += (sign_t * sign_h * sign_w) * s[:, T(at), Hh(ah), W(aw)]
        valid = box[:, :, -1:, :, -1:, :, -1:]  # the full window: every valid key of the query tile
        ratio = np.divide(box, valid, out=np.zeros_like(box), where=valid > 0)
        ratio = np.where(valid > 0, ratio, 1.0)  # no measured mass at all: count the window as complete
        # mean over query tiles (token weighted) -> (g, wt, wh, ww)
        out[g0:g0 + chunk] = np.einsum("gaibjck,abc->gijk", ratio, query_weight)
    text = np.asarray(text_share, dtype=np.float64).reshape(G, 1, 1, 1)
    return text + (1.0 - text) * out


def resolve_from_offsets(profile, canvas: Sequence[int], options=None, *, tile: Sequence[int] | None = None,
                         beyond: str = "edge", cost_model=None):
    """Re-solve windows for ``canvas`` from ``profile``'s offset mass (module docstring, rule ``resolve``).

    ``options``: a :class:`sta_search.select.SelectOptions` (budget / sparsity / speedup, full steps,
    granularity, strategy; objective and candidates are fixed: recall over every window of the new grid).
    Returns a :class:`sta_search.select.Selection` whose config is for ``canvas``.
    """
    from .costmodel import load_cost_model
    from .kernels.geometry import Geometry
    from .report import tool_version
    from .select import (Selection, SelectOptions, StepLayout, _choice_table, check_options, resolve_budget,
                         resolve_full_steps, resolve_step_weights, solve_groups)

    options = options or SelectOptions()
    check_options(options)
    step_weights = resolve_step_weights(options.step_weights, profile)  # UserError naming a wrong count or value
    if profile.num_prompts == 0:
        raise UserError("the profile holds no prompts yet: profile at least one prompt")
    tile = tuple(int(v) for v in (tile or profile.tile))
    try:
        geometry = Geometry(tuple(int(v) for v in canvas), tile)
    except ValueError as exc:
        raise UserError(f"canvas {list(canvas)} with tile {list(tile)}: {exc}") from None
    cost_model = cost_model or load_cost_model(options.results_dir)
    steps = profile.steps
    full_steps = resolve_full_steps(options.full_steps, steps)
    dense_steps = tuple(range(full_steps))
    sparse_steps = tuple(range(full_steps, steps))
    layout = StepLayout.of(profile, sparse_steps)  # nearest profiled step (of the layer's expert, two experts)
    L, H, S = profile.num_layers, profile.num_heads, len(sparse_steps)

    affinity = offset_affinity(profile)  # (P, L, H, ...)
    P = affinity.shape[0]
    text = 1.0 - profile.mean_offset_mass().double().numpy().reshape(P * L * H, -1).sum(1)
    text = np.clip(text, 0.0, 1.0)
    recall = offset_recall(affinity.reshape((P * L * H,) + affinity.shape[3:]), text, profile.grid, geometry, beyond)
    nt, nh, nw = geometry.grid
    windows = tuple((i + 1, j + 1, k + 1) for i in range(nt) for j in range(nh) for k in range(nw))
    densities = np.array([geometry.density(w) for w in windows])
    full = np.array([geometry.is_full(w) for w in windows])
    cost = (1.0 - recall).reshape(P, L, H, len(windows))
    budget = resolve_budget(options, float(densities.min()), S, full_steps, cost_model)
    choice, solution = solve_groups(cost, layout, densities, full, budget, options)
    table = _choice_table(choice, options.granularity, S, L, H, layout)
    chosen = np.empty((steps, L, H, 3), dtype=np.int32)
    chosen[:] = np.asarray(geometry.grid, dtype=np.int32)
    chosen[list(sparse_steps)] = np.asarray(windows, dtype=np.int32)[table]
    density = float(densities[table][layout.active].mean())
    picked = np.take_along_axis(layout.costs(cost), table[..., None], axis=-1)[..., 0][layout.active]
    summary = {
        "strategy": options.strategy,
        "objective": "recall (estimated from offset mass)",
        "granularity": options.granularity,
        "budget_scope": options.budget_scope,
        **({"step_weights": np.round(step_weights, 4).tolist()} if step_weights is not None else {}),
        "candidates": f"all ({len(windows)} windows)",
        "budget": budget,
        "density": density,
        "sparsity": 1.0 - density,
        "overall_density": (density * S + full_steps) / steps,
        "dense_step_count": full_steps,
        "predicted_speedup": cost_model.speedup(density, S, full_steps),
        "cost_model": cost_model.source,
        "predicted_recall": 1.0 - float(picked.mean()),
        "predicted_error": None,
        "transferred_from": {"canvas": list(profile.canvas), "tile": list(profile.tile), "rule": "resolve",
                             "beyond_old_grid": beyond},
        "prompts": profile.num_prompts,
        "profile_steps": list(profile.profile_steps),
        "step_mapping": "each sparse step uses the statistics of the nearest profiled step",
        "tool_version": tool_version(),
    }
    if solution is not None:
        summary["optimality_gap_bound"] = solution.gap_bound / (S * L * H)
    summary = {k: (_round(v) if isinstance(v, float) else v) for k, v in summary.items()}
    config = MaskConfig(
        model={k: profile.model[k] for k in ("family", "transformer_class", "num_layers", "num_heads")},
        canvas=geometry.canvas, tile=geometry.tile, text_len=int(profile.header.get("text_len", 0)), steps=steps,
        dense_steps=dense_steps, windows=chosen, summary=summary)
    return Selection(config, config.summary, solution, table, None)


# ============================================================================ pixel sizes -> canvas
def canvas_from_pixels(header, height: int | None, width: int | None, frames: int | None) -> Triple:
    """The token canvas of a ``frames x height x width`` video for the model a profile header describes.

    Missing sizes default to the header's. The VAE factors are the ones the header's own sizes imply
    (``height / (canvas_H * patch_h)``; the temporal factor the one of 1, 2, 4, 8 that reproduces the
    header's canvas under the family's frame rule), the patch size is ``model.patch_size``.
    """
    model = header.get("model", {})
    patch = model.get("patch_size")
    canvas = header.get("canvas")
    sizes = [header.get(k) for k in ("height", "width", "frames")]
    if not (isinstance(patch, (list, tuple)) and len(patch) == 3) or not all(isinstance(v, int) for v in sizes):
        raise UserError("the profile header lacks model.patch_size or height/width/frames; give --canvas T,H,W instead")
    p_t, p_h, p_w = (int(v) for v in patch)
    h0, w0, f0 = sizes
    spatial = h0 // (canvas[1] * p_h)
    if spatial < 1 or h0 != canvas[1] * p_h * spatial or w0 != canvas[2] * p_w * spatial:
        raise UserError(f"cannot infer the VAE factor from the profile ({h0}x{w0} px -> canvas {canvas}); give --canvas")
    family = str(model.get("family", ""))
    temporal = next((f for f in (4, 1, 2, 8) if _canvas_t(family, f0, f, p_t) == canvas[0]), None)
    if temporal is None:
        raise UserError(f"cannot infer the temporal VAE factor from the profile ({f0} frames -> T = {canvas[0]}); "
                        "give --canvas")
    height, width, frames = int(height or h0), int(width or w0), int(frames or f0)
    for name, value, patch_d in (("--height", height, p_h), ("--width", width, p_w)):
        if value < 1 or value % (spatial * patch_d):
            raise UserError(f"{name} {value} is not a positive multiple of {spatial * patch_d} "
                            f"(VAE factor {spatial} x patch {patch_d})")
    if frames < 1:
        raise UserError(f"--frames must be >= 1, got {frames}")
    return (_canvas_t(family, frames, temporal, p_t), height // spatial // p_h, width // spatial // p_w)


def _canvas_t(family: str, frames: int, factor: int, p_t: int) -> int:
    """Canvas T of ``frames`` video frames (the adapters' rules: Wan rounds to 4k+1, CogVideoX pads)."""
    if family == "wan" and factor > 1 and frames % factor != 1:
        frames = frames // factor * factor + 1
    latent = (max(frames, 1) - 1) // factor + 1
    if family == "cogvideox" and latent % p_t:
        latent += p_t - latent % p_t
    return -(-latent // p_t)


__all__ = ["RULES", "BEYOND", "same_tiles", "same_fraction", "scale_axis", "transfer_config", "offset_affinity",
           "offset_recall", "resolve_from_offsets", "canvas_from_pixels", "density_summary"]
