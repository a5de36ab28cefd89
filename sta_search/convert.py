"""FastVideo mask strategy JSON <-> our mask config (docs/mask-config.md).

FastVideo's file maps ``"t_l_h"`` (step, layer, head) to ``[wt, wh, ww]`` in tiles of (6, 8, 8), one entry
for every step including the first ``skip_time_steps`` that run full attention (their window then
covers the whole grid, e.g. ``[3, 6, 10]`` for Wan at 69x768x1280). FastVideo's kernel treats an even
window ``w`` like ``w + 1`` tiles, so importing converts every even ``w < n`` to ``w + 1`` (docs/mask-config.md).

Import: a step whose windows all cover the grid becomes a dense step; other entries keep their windows
(converted as above). Export: dense steps are written as the grid ``[nt, nh, nw]``, other windows clipped
to the grid; an even ``w < n`` has no FastVideo equivalent and is refused unless ``round_even_up`` is set,
which writes ``w + 1`` (a superset of our window) and counts those entries.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .errors import UserError
from .maskconfig import MaskConfig, format_window, model_fields

FASTVIDEO_TILE = (6, 8, 8)

# diffusers transformer class -> (family, how to count self-attention layers from its config.json)
_FAMILIES = {
    "WanTransformer3DModel": ("wan", ("num_layers",)),
    "WanVACETransformer3DModel": ("wan", ("num_layers",)),
    "HunyuanVideoTransformer3DModel": ("hunyuan_video", ("num_layers", "num_single_layers")),
    "CogVideoXTransformer3DModel": ("cogvideox", ("num_layers",)),
}


@dataclass(frozen=True)
class ImportReport:
    config: MaskConfig
    even_converted: int  # entries whose even window was widened to w + 1
    inferred: tuple[str, ...]  # dimensions taken from the JSON keys rather than given


def model_from_folder(folder) -> dict:
    """``family, transformer_class, num_layers, num_heads`` from a diffusers folder's transformer config.

    Reads ``transformer/config.json`` (pipeline folder) or ``config.json`` (transformer folder); a Wan 2.2
    pipeline's ``transformer_2`` adds its layers after the first expert's (our adapter order).
    """
    folder = Path(folder)
    configs = []
    for sub in ("transformer", "transformer_2"):
        path = folder / sub / "config.json"
        if path.is_file():
            configs.append(path)
    if not configs and (folder / "config.json").is_file():
        configs.append(folder / "config.json")
    if not configs:
        raise UserError(f"{folder} is not a diffusers folder: no transformer/config.json or config.json")
    total_layers, first = 0, None
    for path in configs:
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read {path}: {exc}") from None
        cls = config.get("_class_name")
        if cls not in _FAMILIES:
            raise UserError(f"{path}: transformer class {cls!r} is not supported ({', '.join(sorted(_FAMILIES))})")
        family, layer_keys = _FAMILIES[cls]
        total_layers += sum(int(config.get(k) or 0) for k in layer_keys)
        if first is None:
            first = {"family": family, "transformer_class": cls, "num_heads": int(config["num_attention_heads"])}
    return {**first, "num_layers": total_layers}


def _parse_key(key: str) -> tuple[int, int, int]:
    parts = str(key).split("_")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 0:
        raise UserError(f"FastVideo key {key!r} is not 't_l_h' with non-negative integers")
    return values  # type: ignore[return-value]


def fastvideo_to_mask(
    doc: Mapping[str, Any],
    *,
    canvas,
    model: Mapping[str, Any] | None = None,
    steps: int | None = None,
    tile=FASTVIDEO_TILE,
    text_len: int = 0,
) -> ImportReport:
    """Import a FastVideo mask strategy (a ``{"t_l_h": [wt, wh, ww]}`` mapping).

    ``model`` gives ``family, transformer_class, num_layers, num_heads`` (missing layer/head counts and
    ``steps`` are taken from the keys; UserError for keys beyond given counts or missing entries).
    """
    if not isinstance(doc, Mapping) or not doc:
        raise UserError("a FastVideo mask strategy is a non-empty JSON object {\"t_l_h\": [wt, wh, ww], ...}")
    from .kernels.geometry import Geometry

    try:
        geometry = Geometry(tuple(int(v) for v in canvas), tuple(int(v) for v in tile))
    except (TypeError, ValueError) as exc:
        raise UserError(f"canvas/tile: {exc}") from None
    entries = {}
    for key, value in doc.items():
        t, l, h = _parse_key(key)
        if not (isinstance(value, (list, tuple)) and len(value) == 3
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
            raise UserError(f"FastVideo entry {key!r}: {value!r} is not three positive integers")
        entries[(t, l, h)] = tuple(value)
    keys = np.array(list(entries))
    model = dict(model or {})
    inferred = []
    T, L, H = (int(keys[:, i].max()) + 1 for i in range(3))
    for name, found in (("num_layers", L), ("num_heads", H)):
        if model.get(name) is None:
            model[name] = found
            inferred.append(name)
    if steps is None:
        steps = T
        inferred.append("steps")
    model.setdefault("family", "unknown")
    model.setdefault("transformer_class", "unknown")
    model = model_fields(model)
    problems = []
    if T > steps:
        problems.append(f"steps up to {T - 1} in the file, but {steps} steps given")
    if L > model["num_layers"]:
        problems.append(f"layer {L - 1} in the file, but the model has {model['num_layers']} layers")
    if H > model["num_heads"]:
        problems.append(f"head {H - 1} in the file, but the model has {model['num_heads']} heads")
    if problems:
        raise UserError("FastVideo mask does not fit the model: " + "; ".join(problems))
    expected = steps * model["num_layers"] * model["num_heads"]
    if len(entries) != expected:
        missing = [f"{t}_{l}_{h}" for t in range(steps) for l in range(model["num_layers"])
                   for h in range(model["num_heads"]) if (t, l, h) not in entries]
        raise UserError(f"FastVideo mask has {len(entries)} of {expected} entries; missing e.g. {', '.join(missing[:5])}")
    windows = np.zeros((steps, model["num_layers"], model["num_heads"], 3), dtype=np.int64)
    for (t, l, h), w in entries.items():
        windows[t, l, h] = w
    grid = np.asarray(geometry.grid)
    even = (windows % 2 == 0) & (windows < grid)
    windows = np.where(even, windows + 1, windows)
    windows = np.minimum(windows, grid)  # canonical: a window never exceeds the grid
    full = (windows >= grid).all(axis=-1)  # (steps, L, H)
    dense_steps = tuple(int(t) for t in range(steps) if full[t].all())
    config = MaskConfig(model, tuple(geometry.canvas), tuple(geometry.tile), int(text_len), int(steps), dense_steps,
                        windows.astype(np.int32), {"imported_from": "fastvideo", "even_windows_widened": int(even.sum())})
    return ImportReport(config, int(even.sum()), tuple(inferred))


def fastvideo_problems(config: MaskConfig) -> list[str]:
    """The FastVideo constraints ``config`` breaks (empty when it exports as it is)."""
    problems = []
    if tuple(config.tile) != FASTVIDEO_TILE:
        problems.append(f"FastVideo's kernel uses tile {format_window(FASTVIDEO_TILE)}, this config uses "
                        f"{format_window(config.tile)}")
    else:
        windows = _clipped(config)
        even = ((windows % 2 == 0) & (windows < np.asarray(config.geometry.grid))).any(axis=-1)
        if even.any():
            t, l, h = (int(v) for v in np.argwhere(even)[0])
            problems.append(f"{int(even.sum())} entries have an even window w < n (first: step {t} layer {l} head {h} "
                            f"window {format_window(windows[t, l, h])}), which FastVideo runs as w + 1")
    return problems


def nearest_fastvideo_config(config: MaskConfig) -> MaskConfig:
    """The exportable config nearest to ``config``: tile (6, 8, 8) and, per entry, the smallest odd (or
    full-grid) window whose tokens cover the original window's extent along every axis (so it attends to
    at least the same keys); dense steps stay dense."""
    from .kernels.geometry import Geometry

    geometry = Geometry(tuple(config.canvas), FASTVIDEO_TILE)
    grid = np.asarray(geometry.grid)
    extent = np.minimum(_clipped(config) * np.asarray(config.tile), np.asarray(config.canvas))  # tokens per axis
    windows = -(-extent // np.asarray(FASTVIDEO_TILE))  # tiles of (6, 8, 8) covering that extent
    windows = windows + ((windows % 2 == 0) & (windows < grid))  # odd, or the whole grid
    windows = np.minimum(windows, grid)
    summary = {"converted_from_tile": list(config.tile), "density_before": config.density()}
    return config.replace(tile=FASTVIDEO_TILE, windows=windows.astype(np.int32), summary=summary)


def _clipped(config: MaskConfig) -> np.ndarray:
    grid = np.asarray(config.geometry.grid)
    windows = np.minimum(config.windows.astype(np.int64), grid)
    if config.dense_steps:
        windows[list(config.dense_steps)] = grid
    return windows


def mask_to_fastvideo(config: MaskConfig, round_even_up: bool = False, nearest: bool = False) -> tuple[dict, int]:
    """Export to FastVideo's ``{"t_l_h": [wt, wh, ww]}``; returns the mapping and the count of widened
    entries. UserError naming every FastVideo constraint the config breaks (tile other than (6,8,8), even
    windows ``w < n``) and the nearest exportable config, unless ``round_even_up`` (even windows written
    as ``w + 1``) or ``nearest`` (export :func:`nearest_fastvideo_config`) allows the change."""
    widened_by_nearest = 0
    if nearest and fastvideo_problems(config):
        near = nearest_fastvideo_config(config)
        widened_by_nearest = int(np.any(near.windows * np.asarray(FASTVIDEO_TILE)
                                        > config.windows * np.asarray(config.tile), axis=-1).sum())
        config = near
    problems = fastvideo_problems(config)
    if tuple(config.tile) == FASTVIDEO_TILE and round_even_up:
        problems = []
    if problems:
        near = nearest_fastvideo_config(config)
        change = f"density {config.density():.3g} -> {near.density():.3g}"
        if tuple(config.tile) == FASTVIDEO_TILE:
            hint = f"pass --round-even-up (or --nearest) to write each even w as w + 1 ({change})"
        else:
            hint = (f"the nearest exportable config has tile {format_window(FASTVIDEO_TILE)}, each window widened to the "
                    f"smallest odd one covering at least the same tokens ({change}); pass --nearest to export that")
        raise UserError("cannot export to FastVideo: " + "; ".join(problems) + f"; {hint}")
    windows = _clipped(config)
    grid = np.asarray(config.geometry.grid)
    even = (windows % 2 == 0) & (windows < grid)
    windows = np.where(even, windows + 1, windows)
    out = {}
    S, L, H, _ = windows.shape
    for t in range(S):
        for l in range(L):
            for h in range(H):
                out[f"{t}_{l}_{h}"] = [int(v) for v in windows[t, l, h]]
    return out, int(even.any(axis=-1).sum()) + widened_by_nearest


def load_fastvideo(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path} is not valid JSON: {exc}") from None


__all__ = ["fastvideo_to_mask", "mask_to_fastvideo", "fastvideo_problems", "nearest_fastvideo_config", "model_from_folder", "load_fastvideo", "ImportReport", "FASTVIDEO_TILE"]
