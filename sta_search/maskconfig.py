"""The mask config (docs/mask-config.md): which STA window every (step, layer, head) uses.

In memory a :class:`MaskConfig` holds the full table ``windows[step, layer, head] = (wt, wh, ww)``; on
disk it is a compact, self-describing YAML file::

    schema: sta-search/mask/v2
    model: {family: wan, transformer_class: WanTransformer3DModel, num_layers: 30, num_heads: 12}
    canvas: [21, 30, 52]          # video token grid (T, H, W) the windows were chosen for
    tile: [6, 8, 8]               # tile size in tokens; windows count tiles
    text_len: 0                   # joint text tokens (informative; text keys are always attended)
    steps: 50                     # denoising steps
    dense_steps: [0, 1, 2]        # steps that run full attention
    default_window: [3, 3, 3]     # window of every head not listed below
    entries: {layers: 1, step_overrides: 1, summary: 8}  # counts of what follows (truncation check)
    layers:                       # layers whose heads differ from the default: one entry per head,
      0: ["3,3,3", "1,6,10", ...] #   or a single "t,h,w" string for all heads of the layer
    step_overrides:               # sparse steps whose table differs from `layers`, layer by layer
      30: {4: "5,6,10"}
    summary: {density: 0.31, ...} # what the selector predicted (informative)

Two-expert models (Wan 2.2 A14B) add ``experts`` before ``entries`` (:mod:`sta_search.experts`): each
expert's layer range and the steps it runs, e.g. ``[{name: transformer, layers: [0, 40], steps: [0, 12]},
{name: transformer_2, layers: [40, 80], steps: [12, 40]}]``. A (step, layer) whose expert does not run at
that step carries no meaning: like dense rows it is set to the layer's row (never an override), and
densities count only the (step, layer) pairs that run.

The compact form is canonical: ``default_window`` is the most common window of the sparse steps,
``layers`` holds, per layer, the most common per-head row over the sparse steps, and ``step_overrides``
only the sparse (step, layer) rows that differ from it. Rows of dense steps carry no meaning; they are
set to the per-layer rows so that saving and loading round-trip exactly.

Schema versions. ``sta-search/mask/v2`` (written now) is v1 plus a required ``entries`` line before
``layers``: ``entries: {layers: N, step_overrides: M, summary: K}`` counts the ``layers`` entries, the
(step, layer) rows of ``step_overrides``, and the nodes of ``summary`` (every key, value and list item,
nested ones included). A file whose counts disagree with what it holds (e.g. one truncated at a line
boundary, which would otherwise load as a more uniform mask) is refused, naming both numbers. A v1 file
(no ``entries``) still loads unchecked; a v2 file without ``entries`` is refused.

``sta-search/mask/v3`` is the multi-canvas form (one file serving a model at several resolutions): the
top level holds only ``schema``, ``model``, ``entries: {canvases: N}`` and ``canvases``, a list of N
entries, each a v2 body without ``schema`` and ``model`` (``canvas``, ``tile``, ``steps``, ``dense_steps``,
``default_window``, its own ``entries`` counts, ``layers``, ``step_overrides``, ``summary``)::

    schema: sta-search/mask/v3
    model: {family: wan, transformer_class: WanTransformer3DModel, num_layers: 30, num_heads: 12}
    entries: {canvases: 2}
    canvases:
    - {canvas: [21, 30, 52], tile: [6, 8, 8], steps: 50, ..., summary: {...}}
    - {canvas: [21, 45, 80], tile: [6, 8, 8], steps: 50, ..., summary: {...}}

Every entry goes through the same checks as a single-canvas file (each entry's ``entries`` counts are
required); two entries for the same canvas are refused; the whole file holds at most
:data:`MAX_CANVASES` entries and :data:`MAX_TABLE_ENTRIES` (step, layer, head) entries in all. Single-
canvas configs are still written as v2, so older readers keep reading them; a v3 file is refused by a
reader that only knows v1/v2 instead of being misread. In memory the first entry is the config itself
and the others are its ``alternates``; :meth:`MaskConfig.for_canvas` picks one.

Loading is hardened against hostile or broken files: at most :data:`MAX_FILE_BYTES` bytes, no YAML
anchors, aliases or merge keys (a few hundred bytes of nested aliases would otherwise expand to
gigabytes), nesting at most :data:`MAX_YAML_DEPTH` deep, no duplicate keys (UserError naming the key
and both lines), and every count (steps, layers, heads, their product) bounded before anything of
that size is allocated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from .errors import UserError

MASK_SCHEMA = "sta-search/mask/v2"
MASK_SCHEMA_V1 = "sta-search/mask/v1"  # no `entries` counts; still loads
MASK_SCHEMA_MULTI = "sta-search/mask/v3"  # several canvases in one file (`canvases:` list)
MODEL_KEYS = ("family", "transformer_class", "num_layers", "num_heads")
# Sane limits, far above any real model (HunyuanVideo: 60 layers x 24 heads x 50 steps = 72,000 entries,
# a mask file of at most ~0.5 MB), that keep a hostile file cheap to refuse.
MAX_STEPS = 100_000
MAX_LAYERS = 10_000
MAX_HEADS = 10_000
MAX_TABLE_ENTRIES = 4_000_000  # steps * layers * heads: the (steps, layers, heads, 3) int32 table is <= 48 MB
MAX_WINDOW = 1_000_000
MAX_FILE_BYTES = 8 * 1024 * 1024
MAX_YAML_DEPTH = 16
MAX_CANVASES = 64


def model_fields(info: Any) -> dict:
    """``family, transformer_class, num_layers, num_heads`` of a ``ModelInfo``, a dict, or a header."""
    if isinstance(info, Mapping):
        get = info.get
    else:
        def get(key, default=None):
            return getattr(info, key, default)
    out = {k: get(k) for k in MODEL_KEYS}
    missing = [k for k, v in out.items() if v is None]
    if missing:
        raise UserError(f"model description lacks {', '.join(missing)}")
    out["family"], out["transformer_class"] = str(out["family"]), str(out["transformer_class"])
    out["num_layers"], out["num_heads"] = int(out["num_layers"]), int(out["num_heads"])
    return out


def format_window(window: Iterable[int]) -> str:
    return ",".join(str(int(v)) for v in window)


def parse_window(text: Any, what: str = "window") -> tuple[int, int, int]:
    """``"3,3,3"``, ``"3x3x3"``, ``[3, 3, 3]`` -> ``(3, 3, 3)``; UserError naming ``what`` otherwise."""
    if isinstance(text, str):
        parts = text.replace("x", ",").replace(" ", "").strip("()[]").split(",")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise UserError(f"{what}: {text!r} is not three integers t,h,w") from None
    elif isinstance(text, (list, tuple)) and all(_is_int(v) for v in text):
        values = [int(v) for v in text]
    else:
        raise UserError(f"{what}: {text!r} is not three integers t,h,w")
    if len(values) != 3:
        raise UserError(f"{what}: {text!r} is not three integers t,h,w")
    if min(values) < 1 or max(values) > MAX_WINDOW:
        raise UserError(f"{what}: {text!r} has entries outside [1, {MAX_WINDOW}]")
    return tuple(values)  # type: ignore[return-value]


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass(frozen=True, eq=False)
class MaskConfig:
    """Per (step, layer, head) STA windows for one model, canvas and number of steps.

    ``windows`` is ``(steps, num_layers, num_heads, 3)`` int32 (read-only); rows of ``dense_steps``
    carry no meaning. ``summary`` holds what the selector predicted (density, speedup, errors).
    """

    model: dict
    canvas: tuple[int, int, int]
    tile: tuple[int, int, int]
    text_len: int
    steps: int
    dense_steps: tuple[int, ...]
    windows: np.ndarray = field(repr=False)
    summary: dict = field(default_factory=dict)
    experts: Any = None  # sta_search.experts.ExpertSplit of a two-expert model, else None
    alternates: tuple = ()  # entries for other canvases (single-canvas MaskConfigs of the same model)

    def __post_init__(self):
        problems: list[str] = []
        model = _check_model(self.model, problems)
        canvas = _check_triple(self.canvas, "canvas", problems)
        tile = _check_triple(self.tile, "tile", problems)
        if tile is not None and math.prod(tile) % 16:
            problems.append(f"tile {list(tile)} has volume {math.prod(tile)}, not a multiple of 16")
        steps = self.steps if _is_int(self.steps) and self.steps >= 1 else None
        if steps is None:
            problems.append(f"steps must be a positive integer, got {self.steps!r}")
        if not _is_int(self.text_len) or self.text_len < 0:
            problems.append(f"text_len must be a non-negative integer, got {self.text_len!r}")
        dense = _check_dense_steps(self.dense_steps, steps, problems)
        windows = np.asarray(self.windows)
        if model is not None and steps is not None:
            expected = (steps, model["num_layers"], model["num_heads"], 3)
            if windows.shape != expected:
                problems.append(f"window table has shape {windows.shape}, expected (steps, layers, heads, 3) = {expected}")
            elif windows.size and (not np.issubdtype(windows.dtype, np.integer) or windows.min() < 1):
                problems.append("window entries must be integers >= 1")
            elif windows.size and windows.max() > MAX_WINDOW:
                problems.append(f"window entries must be <= {MAX_WINDOW}")
        if not isinstance(self.summary, Mapping):
            problems.append(f"summary must be a mapping, got {type(self.summary).__name__}")
        active = None
        if self.experts is not None and model is not None and steps is not None:
            from .experts import ExpertSplit

            if not isinstance(self.experts, ExpertSplit):
                problems.append(f"experts must be an ExpertSplit, got {type(self.experts).__name__}")
            elif (self.experts.num_layers, self.experts.num_steps) != (model["num_layers"], steps):
                problems.append(f"experts cover {self.experts.num_layers} layers and {self.experts.num_steps} steps, "
                                f"the config has {model['num_layers']} layers and {steps} steps")
            else:
                active = self.experts.active()
        alternates = _check_alternates(self.alternates, model, canvas, problems)
        if problems:
            raise UserError("invalid mask config: " + "; ".join(problems))
        windows = _canonical_dense_rows(windows.astype(np.int32), dense, active)
        windows.flags.writeable = False
        object.__setattr__(self, "model", model)
        object.__setattr__(self, "canvas", canvas)
        object.__setattr__(self, "tile", tile)
        object.__setattr__(self, "text_len", int(self.text_len))
        object.__setattr__(self, "steps", int(steps))
        object.__setattr__(self, "dense_steps", dense)
        object.__setattr__(self, "windows", windows)
        object.__setattr__(self, "summary", _plain(dict(self.summary)))
        object.__setattr__(self, "alternates", alternates)

    # ------------------------------------------------------------------ views
    def __eq__(self, other) -> bool:
        if not isinstance(other, MaskConfig):
            return NotImplemented
        return (
            self.model == other.model
            and self.canvas == other.canvas
            and self.tile == other.tile
            and self.text_len == other.text_len
            and self.steps == other.steps
            and self.dense_steps == other.dense_steps
            and np.array_equal(self.windows, other.windows)
            and self.summary == other.summary
            and self.experts == other.experts
            and len(self.alternates) == len(other.alternates)
            and all(a == b for a, b in zip(self.alternates, other.alternates))
        )

    __hash__ = None  # type: ignore[assignment]

    @property
    def num_layers(self) -> int:
        return self.model["num_layers"]

    @property
    def num_heads(self) -> int:
        return self.model["num_heads"]

    @property
    def canvases(self) -> tuple[tuple[int, int, int], ...]:
        """Every canvas this config has windows for: its own first, then its alternates'."""
        return (self.canvas,) + tuple(a.canvas for a in self.alternates)

    @property
    def is_multi_canvas(self) -> bool:
        return bool(self.alternates)

    def entries(self) -> tuple["MaskConfig", ...]:
        """One single-canvas config per canvas, in file order."""
        return (self.replace(alternates=()),) + tuple(self.alternates)

    def for_canvas(self, canvas) -> "MaskConfig":
        """The single-canvas entry for ``canvas``; UserError naming it and the canvases this config holds."""
        wanted = tuple(int(v) for v in canvas)
        if wanted == self.canvas:
            return self.replace(alternates=()) if self.alternates else self
        for entry in self.alternates:
            if entry.canvas == wanted:
                return entry
        raise UserError(f"mask config has no windows for canvas {list(wanted)}; it holds "
                        f"{_canvas_list(self.canvases)} (select again for this canvas, or transfer a config with "
                        "`sta-search select ... --canvas T,H,W`)")

    @classmethod
    def combine(cls, configs: Iterable["MaskConfig"], *, replace: bool = False) -> "MaskConfig":
        """One multi-canvas config holding every entry of ``configs`` (in order; the first becomes the primary).

        All must be for the same model. Two entries for one canvas: UserError, unless ``replace``, where the
        later one takes the earlier one's place.
        """
        entries: list[MaskConfig] = []
        for config in configs:
            for entry in config.entries():
                same = [i for i, e in enumerate(entries) if e.canvas == entry.canvas]
                if same and not replace:
                    raise UserError(f"two mask configs for canvas {list(entry.canvas)}; a multi-canvas file holds "
                                    "one entry per canvas")
                if same:
                    entries[same[0]] = entry
                else:
                    entries.append(entry)
        if not entries:
            raise UserError("no mask configs to combine")
        different = [e for e in entries[1:] if e.model != entries[0].model]
        if different:
            raise UserError(f"mask configs for different models cannot share a file: {entries[0].model} "
                            f"(canvas {list(entries[0].canvas)}) vs {different[0].model} (canvas {list(different[0].canvas)})")
        return entries[0].replace(alternates=tuple(entries[1:]))

    @property
    def sparse_steps(self) -> tuple[int, ...]:
        dense = set(self.dense_steps)
        return tuple(s for s in range(self.steps) if s not in dense)

    @property
    def geometry(self):
        from .kernels.geometry import Geometry

        return Geometry(self.canvas, self.tile)

    def window_table(self, step: int) -> np.ndarray | None:
        """``(layers, heads, 3)`` windows of ``step``, or None when the step runs full attention."""
        if not 0 <= int(step) < self.steps:
            raise IndexError(f"step {step} outside [0, {self.steps})")
        if int(step) in self.dense_steps:
            return None
        return self.windows[int(step)]

    def active_table(self) -> np.ndarray:
        """``(steps, layers)`` bool: whether the layer runs at the step (all True without experts)."""
        if self.experts is None:
            return np.ones(self.windows.shape[:2], dtype=bool)
        return self.experts.active()

    def density_table(self) -> np.ndarray:
        """``(steps, layers, heads)`` exact density of every entry; dense steps are 1.0 (entries of an expert
        that does not run at the step too; :meth:`density` leaves them out)."""
        geometry = self.geometry
        unique, inverse = np.unique(self.windows.reshape(-1, 3), axis=0, return_inverse=True)
        dens = np.array([geometry.density(tuple(int(v) for v in w)) for w in unique])
        table = dens[np.asarray(inverse).reshape(-1)].reshape(self.windows.shape[:3])
        if self.dense_steps:
            table[list(self.dense_steps)] = 1.0
        table[~self.active_table()] = 1.0
        return table

    def density(self) -> float:
        """Mean exact density over the sparse steps, the layers that run at them, and heads (1.0 if every
        step is dense)."""
        sparse = list(self.sparse_steps)
        if not sparse:
            return 1.0
        return float(self.density_table()[sparse][self.active_table()[sparse]].mean())

    def overall_density(self) -> float:
        """Mean exact density over all steps and the layers that run at them, dense steps counting 1.0."""
        return float(self.density_table()[self.active_table()].mean())

    def _active_or_none(self):
        return None if self.experts is None else self.experts.active()

    # ------------------------------------------------------------------ constructors
    @classmethod
    def uniform(cls, info, canvas, tile, text_len, steps, window, dense_steps=(), summary=None,
                experts=None) -> "MaskConfig":
        """The same ``window`` for every head of every sparse step."""
        model = model_fields(info)
        w = parse_window(list(window) if not isinstance(window, str) else window)
        table = np.broadcast_to(np.asarray(w, np.int32), (int(steps), model["num_layers"], model["num_heads"], 3))
        return cls(model, tuple(canvas), tuple(tile), int(text_len), int(steps), tuple(dense_steps), table.copy(), summary or {},
                   experts)

    def replace(self, **changes) -> "MaskConfig":
        values = {
            "model": self.model, "canvas": self.canvas, "tile": self.tile, "text_len": self.text_len,
            "steps": self.steps, "dense_steps": self.dense_steps, "windows": self.windows, "summary": self.summary,
            "experts": self.experts,
            "alternates": self.alternates,
        }
        values.update(changes)
        return MaskConfig(**values)

    # ------------------------------------------------------------------ compact form
    def to_dict(self) -> dict:
        """The compact YAML document (see module docstring)."""
        default, base = _base_rows(self.windows, self.sparse_steps, self._active_or_none())
        """The compact YAML document (see module docstring): v2 for one canvas, v3 for several."""
        if self.alternates:
            bodies = []
            for entry in self.entries():
                body = entry.to_dict()
                del body["schema"], body["model"]
                bodies.append(body)
            return {"schema": MASK_SCHEMA_MULTI, "model": dict(self.model), "entries": {"canvases": len(bodies)},
                    "canvases": bodies}
        default, base = _base_rows(self.windows, self.sparse_steps)
        layers = {}
        for layer in range(self.num_layers):
            if not np.all(base[layer] == default):
                layers[layer] = _row_text(base[layer])
        overrides: dict[int, dict] = {}
        for step in self.sparse_steps:
            diff = {}
            for layer in range(self.num_layers):
                if not np.array_equal(self.windows[step, layer], base[layer]):  # (never for a resting expert)
                    diff[layer] = _row_text(self.windows[step, layer])
            if diff:
                overrides[step] = diff
        doc = {
            "schema": MASK_SCHEMA,
            "model": dict(self.model),
            "canvas": list(self.canvas),
            "tile": list(self.tile),
            "text_len": self.text_len,
            "steps": self.steps,
            "dense_steps": list(self.dense_steps),
            "default_window": [int(v) for v in default],
        }
        if self.experts is not None:
            doc["experts"] = self.experts.to_list()
        return {
            **doc,
            "entries": {"layers": len(layers), "step_overrides": sum(len(d) for d in overrides.values()),
                        "summary": _node_count(self.summary)},
            "layers": layers,
            "step_overrides": overrides,
            "summary": self.summary,
        }

    @classmethod
    def from_dict(cls, doc: Any, source: str = "mask config", *, expect=None) -> "MaskConfig":
        """Parse the compact form; UserError naming every problem found.

        ``expect`` (a ``ModelInfo`` or a mapping with ``num_layers``/``num_heads``) is checked before the
        window table is allocated, so a file for another model is refused without building anything.
        """
        if not isinstance(doc, Mapping):
            raise UserError(f"{source}: expected a YAML mapping at the top, got {type(doc).__name__}")
        if "canvases" in doc or doc.get("schema") == MASK_SCHEMA_MULTI:
            return cls._from_multi(doc, source, expect)
        problems: list[str] = []
        required = ("schema", "model", "canvas", "tile", "steps", "dense_steps", "default_window")
        missing = [k for k in required if k not in doc]
        if missing:
            problems.append(f"missing {', '.join(missing)}")
        unknown = [str(k) for k in doc if k not in required + ("text_len", "experts", "entries", "layers",
                                                                  "step_overrides", "summary")]
        if unknown:
            problems.append(f"unknown keys {', '.join(unknown)}")
        schema = doc.get("schema")
        if "schema" in doc and schema not in (MASK_SCHEMA, MASK_SCHEMA_V1):
            problems.append(f"schema {schema!r} is not {MASK_SCHEMA!r} (or the older {MASK_SCHEMA_V1!r})")
        if schema == MASK_SCHEMA and "entries" not in doc:
            problems.append(f"missing entries (required by {MASK_SCHEMA}; the file may be truncated)")
        model = _check_model(doc.get("model"), problems) if "model" in doc else None
        if model is not None and expect is not None:
            for key in ("num_layers", "num_heads"):
                wanted = _get(expect, key)
                if wanted is not None and int(wanted) != model[key]:
                    problems.append(f"{key}: config has {model[key]}, model has {int(wanted)}")
                    model = None
                    break
        canvas = _check_triple(doc["canvas"], "canvas", problems) if "canvas" in doc else None
        tile = _check_triple(doc["tile"], "tile", problems) if "tile" in doc else None
        text_len = doc.get("text_len", 0)
        if not _is_int(text_len) or text_len < 0:
            problems.append(f"text_len must be a non-negative integer, got {text_len!r}")
        steps = doc.get("steps")
        if "steps" in doc and (not _is_int(steps) or not 1 <= steps <= MAX_STEPS):
            problems.append(f"steps must be an integer in [1, {MAX_STEPS}], got {steps!r}")
            steps = None
        dense = _check_dense_steps(doc["dense_steps"], steps, problems) if "dense_steps" in doc else ()
        default = None
        if "default_window" in doc:
            try:
                default = parse_window(doc["default_window"], "default_window")
            except UserError as exc:
                problems.append(str(exc))
        summary = doc.get("summary") or {}
        if not isinstance(summary, Mapping):
            problems.append(f"summary must be a mapping, got {type(summary).__name__}")
            summary = {}
        if model is not None and steps is not None and steps * model["num_layers"] * model["num_heads"] > MAX_TABLE_ENTRIES:
            problems.append(f"steps x layers x heads = {steps * model['num_layers'] * model['num_heads']} "
                            f"exceeds {MAX_TABLE_ENTRIES}")
            model = None
        overrides = doc.get("step_overrides") or {}
        if not isinstance(overrides, Mapping):
            problems.append(f"step_overrides must map step -> {{layer: windows}}, got {type(overrides).__name__}")
            overrides = {}
        count_problems: list[str] = []  # reported with the others, after them
        if "entries" in doc:
            _check_entries(doc["entries"], doc.get("layers"), overrides, doc.get("summary"), count_problems)
        if model is None or steps is None or default is None:  # nothing to build; other problems surface below
            raise UserError(f"{source}: " + "; ".join(problems + count_problems or ["incomplete"]))
        L, H = model["num_layers"], model["num_heads"]
        base = np.broadcast_to(np.asarray(default, np.int32), (L, H, 3)).copy()
        for layer, row in _layer_rows(doc.get("layers"), "layers", L, H, problems).items():
            base[layer] = row
        windows = np.broadcast_to(base, (steps, L, H, 3)).copy()
        for step, layers in overrides.items():
            if not _is_int(step) or not 0 <= step < steps:
                problems.append(f"step_overrides: step {step!r} outside [0, {steps})")
                continue
            if step in dense:
                problems.append(f"step_overrides: step {step} is a dense step")
                continue
            for layer, row in _layer_rows(layers, f"step_overrides[{step}]", L, H, problems).items():
                windows[step, layer] = row
        experts = None
        if doc.get("experts") is not None:
            from .experts import ExpertSplit

            try:
                experts = ExpertSplit.from_list(doc["experts"])
                experts.check(L, steps, "experts")
            except UserError as exc:
                problems.append(str(exc))
                experts = None
        if problems or count_problems:
            raise UserError(f"{source}: " + "; ".join(problems + count_problems))
        return cls(model, canvas, tile, int(text_len), int(steps), dense, windows, dict(summary), experts)

    @classmethod
    def _from_multi(cls, doc: Mapping, source: str, expect) -> "MaskConfig":
        """The v3 form: shared ``schema``/``model``, ``entries: {canvases: N}``, a list of v2 bodies."""
        problems: list[str] = []
        allowed = ("schema", "model", "entries", "canvases")
        missing = [k for k in allowed if k not in doc]
        if missing:
            problems.append(f"missing {', '.join(missing)} (required by {MASK_SCHEMA_MULTI}; the file may be truncated)")
        unknown = [str(k) for k in doc if k not in allowed]
        if unknown:
            problems.append(f"unknown keys {', '.join(unknown)} (a multi-canvas file keeps each canvas's fields "
                            "inside its `canvases` entry)")
        if "schema" in doc and doc["schema"] != MASK_SCHEMA_MULTI:
            problems.append(f"schema {doc['schema']!r}: a `canvases` list needs {MASK_SCHEMA_MULTI!r}")
        items = doc.get("canvases")
        if "canvases" in doc and (not isinstance(items, list) or not items):
            problems.append(f"canvases must be a non-empty list of canvas entries, got {type(items).__name__}")
            items = None
        elif isinstance(items, list) and len(items) > MAX_CANVASES:
            problems.append(f"{len(items)} canvas entries exceed {MAX_CANVASES}")
            items = None
        entries = doc.get("entries")
        if "entries" in doc and isinstance(items, list):
            if not isinstance(entries, Mapping) or set(entries) != {"canvases"} or not _is_int(entries["canvases"]):
                problems.append(f"entries must be {{canvases: N}} (an integer), got {entries!r}")
            elif entries["canvases"] != len(items):
                problems.append(f"entries.canvases says {entries['canvases']} canvas entries, the file holds "
                                f"{len(items)} (truncated or edited?)")
        model = _check_model(doc.get("model"), problems) if "model" in doc else None
        if problems or model is None or items is None:
            raise UserError(f"{source}: " + "; ".join(problems or ["incomplete"]))
        total = 0
        for index, item in enumerate(items):
            if not isinstance(item, Mapping):
                problems.append(f"canvases[{index}] must be a mapping, got {type(item).__name__}")
                continue
            shared = [k for k in ("schema", "model") if k in item]
            if shared:
                problems.append(f"canvases[{index}] repeats {', '.join(shared)} (given once at the top)")
            steps = item.get("steps")
            if _is_int(steps) and steps > 0:
                total += int(steps) * model["num_layers"] * model["num_heads"]
        if total > MAX_TABLE_ENTRIES:
            problems.append(f"steps x layers x heads summed over the canvas entries = {total} exceeds {MAX_TABLE_ENTRIES}")
        if problems:
            raise UserError(f"{source}: " + "; ".join(problems))
        built: list[MaskConfig] = []
        seen: dict[tuple, int] = {}
        for index, item in enumerate(items):
            where = f"{source}: canvases[{index}]"
            entry = cls.from_dict({"schema": MASK_SCHEMA, "model": dict(model), **item}, where, expect=expect)
            if entry.canvas in seen:
                raise UserError(f"{source}: canvases[{index}] and canvases[{seen[entry.canvas]}] are both for canvas "
                                f"{list(entry.canvas)}; one entry per canvas")
            seen[entry.canvas] = index
            built.append(entry)
        return built[0].replace(alternates=tuple(built[1:]))

    # ------------------------------------------------------------------ files
    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=1_000_000, allow_unicode=True)

    def save(self, path) -> None:
        """Write the compact YAML atomically."""
        from .artifacts import atomic_write_text

        atomic_write_text(path, self.to_yaml())

    @classmethod
    def loads(cls, text: str, source: str = "mask config", *, expect=None) -> "MaskConfig":
        """Parse YAML text (see the module docstring for what a hostile file is refused for)."""
        import yaml

        if len(text) > MAX_FILE_BYTES:
            raise UserError(f"{source} is larger than {MAX_FILE_BYTES} bytes; not a mask config")
        try:
            doc = yaml.load(text, Loader=_strict_loader())
        except _RefusedYAML as exc:
            raise UserError(f"{source}: {exc}") from None
        except yaml.YAMLError as exc:
            raise UserError(f"{source} is not valid YAML: {' '.join(str(exc).split())}") from None
        except (RecursionError, ValueError, TypeError, OverflowError) as exc:
            raise UserError(f"{source} is not a valid mask config ({type(exc).__name__}: {exc})") from None
        return cls.from_dict(doc, source, expect=expect)

    @classmethod
    def load(cls, path, *, expect=None) -> "MaskConfig":
        """Read and check a YAML mask config; UserError naming every problem.

        ``expect``: the model it will be applied to (``ModelInfo`` or mapping), checked before allocating.
        """
        path = Path(path)
        if path.is_dir():
            raise UserError(f"mask config {path} is a folder, not a YAML file (select writes e.g. mask.yaml)")
        if not path.is_file():
            raise UserError(f"mask config not found: {path}")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise UserError(f"{path} is larger than {MAX_FILE_BYTES} bytes; not a mask config")
        try:
            with open(path, "rb") as handle:
                data = handle.read(MAX_FILE_BYTES + 1)  # the file may grow between stat and read
            text = data.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read {path}: {exc}") from None
        return cls.loads(text, str(path), expect=expect)

    # ------------------------------------------------------------------ validation
    def validate(self, info, canvas, steps: int | None = None, *, tile=None) -> None:
        """UserError listing every difference between this config and the model/canvas/steps it is applied to."""
        model = model_fields(info)
        problems = []
        run_canvas = tuple(int(v) for v in canvas)
        if self.alternates and run_canvas in self.canvases:
            return self.for_canvas(run_canvas).validate(info, canvas, steps, tile=tile)
        for key in MODEL_KEYS:
            if self.model[key] != model[key]:
                problems.append(f"{key}: config has {self.model[key]!r}, model has {model[key]!r}")
        if run_canvas != self.canvas:
            problems.append(f"canvas: config has {_canvas_list(self.canvases)}, run has {list(run_canvas)}")
        if steps is not None and int(steps) != self.steps:
            problems.append(f"steps: config has {self.steps}, run has {int(steps)}")
        if tile is not None and tuple(int(v) for v in tile) != self.tile:
            problems.append(f"tile: config has {list(self.tile)}, run has {[int(v) for v in tile]}")
        if problems:
            raise UserError("mask config does not match: " + "; ".join(problems))


# ---------------------------------------------------------------------- helpers
def _canvas_list(canvases) -> str:
    return " and ".join(str(list(c)) for c in canvases)


def _check_alternates(alternates: Any, model: dict | None, canvas, problems: list[str]) -> tuple:
    """Flattened, checked alternates: MaskConfigs of the same model, one per canvas, none for ``canvas``."""
    if not isinstance(alternates, (tuple, list)):
        problems.append(f"alternates must be a tuple of MaskConfigs, got {type(alternates).__name__}")
        return ()
    flat: list[MaskConfig] = []
    for alt in alternates:
        if not isinstance(alt, MaskConfig):
            problems.append(f"alternates must be MaskConfigs, got {type(alt).__name__}")
            return ()
        flat.extend(alt.entries())
    if len(flat) + 1 > MAX_CANVASES:
        problems.append(f"{len(flat) + 1} canvas entries exceed {MAX_CANVASES}")
    seen = {canvas}
    for alt in flat:
        if model is not None and alt.model != model:
            problems.append(f"the entry for canvas {list(alt.canvas)} is for model {alt.model}, not {model}")
        if alt.canvas in seen:
            problems.append(f"two entries for canvas {list(alt.canvas)}")
        seen.add(alt.canvas)
    return tuple(flat)


def _check_model(model: Any, problems: list[str]) -> dict | None:
    if not isinstance(model, Mapping):
        problems.append(f"model must be a mapping with {', '.join(MODEL_KEYS)}, got {model!r}")
        return None
    out = {}
    for key in ("family", "transformer_class"):
        if not isinstance(model.get(key), str) or not model.get(key):
            problems.append(f"model.{key} must be a non-empty string, got {model.get(key)!r}")
        out[key] = model.get(key)
    for key, limit in (("num_layers", MAX_LAYERS), ("num_heads", MAX_HEADS)):
        value = model.get(key)
        if not _is_int(value) or not 1 <= value <= limit:
            problems.append(f"model.{key} must be an integer in [1, {limit}], got {value!r}")
            out[key] = None
        else:
            out[key] = int(value)
    extra = [str(k) for k in model if k not in MODEL_KEYS]
    if extra:
        problems.append(f"model has unknown keys {', '.join(extra)}")
    if any(v is None or v == "" for v in out.values()) or extra:
        return None
    return out


def _check_triple(value: Any, what: str, problems: list[str]) -> tuple[int, int, int] | None:
    if isinstance(value, (list, tuple)) and len(value) == 3 and all(_is_int(v) and 1 <= v <= MAX_WINDOW for v in value):
        return tuple(int(v) for v in value)  # type: ignore[return-value]
    problems.append(f"{what} must be three positive integers, got {value!r}")
    return None


def _check_dense_steps(value: Any, steps: int | None, problems: list[str]) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(_is_int(v) for v in value):
        problems.append(f"dense_steps must be a list of step indices, got {value!r}")
        return ()
    dense = sorted(set(int(v) for v in value))
    if len(dense) != len(value):
        problems.append("dense_steps lists a step twice")
    if steps is not None:
        bad = [s for s in dense if not 0 <= s < steps]
        if bad:
            problems.append(f"dense_steps {bad} outside [0, {steps})")
            dense = [s for s in dense if 0 <= s < steps]
    return tuple(dense)


def _layer_rows(value: Any, where: str, L: int, H: int, problems: list[str]) -> dict[int, np.ndarray]:
    """``{layer: "t,h,w" | [per-head windows]}`` -> ``{layer: (H, 3) array}``."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.append(f"{where} must map layer -> windows, got {type(value).__name__}")
        return {}
    rows = {}
    for layer, heads in value.items():
        if not _is_int(layer) or not 0 <= layer < L:
            problems.append(f"{where}: layer {layer!r} outside [0, {L}) (the model has {L} layers)")
            continue
        try:
            if isinstance(heads, str) or (isinstance(heads, list) and len(heads) == 3 and all(_is_int(v) for v in heads)):
                rows[int(layer)] = np.broadcast_to(np.asarray(parse_window(heads), np.int32), (H, 3))
            elif isinstance(heads, list):
                if len(heads) != H:
                    problems.append(f"{where}[{layer}]: {len(heads)} windows for {H} heads")
                    continue
                rows[int(layer)] = np.asarray(
                    [parse_window(w, f"{where}[{layer}] head {h}") for h, w in enumerate(heads)], np.int32
                )
            else:
                problems.append(f"{where}[{layer}]: expected \"t,h,w\" or a list of {H} such windows, got {heads!r}")
        except UserError as exc:
            problems.append(str(exc))
    return rows


def _mode_rows(rows: np.ndarray) -> np.ndarray:
    """Most common row of a 2-D array (ties: the lexicographically smallest)."""
    unique, counts = np.unique(rows, axis=0, return_counts=True)
    return unique[int(np.argmax(counts))]


def _base_rows(windows: np.ndarray, sparse_steps: Iterable[int],
               active: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(default window (3,), per-layer base rows (L, H, 3)) of the sparse steps (all steps if none); with
    ``active`` ((steps, L) bool, two experts) only the steps each layer runs at count (all steps if none)."""
    steps = list(sparse_steps) or list(range(windows.shape[0]))
    picked = windows[steps]  # (S', L, H, 3)
    S, L, H, _ = picked.shape
    if active is None:
        default = _mode_rows(picked.reshape(-1, 3))
        rows = [picked[:, layer] for layer in range(L)]
    else:
        runs = active[steps]  # (S', L)
        default = _mode_rows(picked[runs].reshape(-1, 3)) if runs.any() else _mode_rows(picked.reshape(-1, 3))
        # a layer that runs at no sparse step: the default window (its rows mean nothing)
        rows = [picked[runs[:, layer], layer] if runs[:, layer].any() else np.broadcast_to(default, (1, H, 3))
                for layer in range(L)]
    base = np.stack([_mode_rows(row.reshape(len(row), H * 3)).reshape(H, 3) for row in rows]) if L else (
        np.zeros((0, H, 3), np.int32)
    )
    return default, base


def _canonical_dense_rows(windows: np.ndarray, dense: tuple[int, ...], active: np.ndarray | None = None) -> np.ndarray:
    """Rows that carry no meaning (dense steps; with experts, (step, layer) pairs whose expert rests) set to
    the layer's base row, so that saving and loading round-trip exactly."""
    windows = np.array(windows, dtype=np.int32, copy=True)
    resting = active is not None and not active.all()
    if (dense or resting) and windows.shape[0] and windows.shape[1] and windows.shape[2]:
        sparse = [s for s in range(windows.shape[0]) if s not in set(dense)]
        _, base = _base_rows(windows, sparse, active)
        if dense:
            windows[list(dense)] = base
        if resting:
            steps, layers = np.nonzero(~active)
            windows[steps, layers] = base[layers]
    return windows


def _row_text(row: np.ndarray):
    """A layer row for YAML: one string when all heads agree, else a list of per-head strings."""
    if np.all(row == row[0]):
        return format_window(row[0])
    return [format_window(w) for w in row]


def _get(info: Any, key: str):
    return info.get(key) if isinstance(info, Mapping) else getattr(info, key, None)


def _node_count(value: Any) -> int:
    """Nodes of a plain YAML value: 1 for itself plus its keys and the nodes of its values/items."""
    if isinstance(value, Mapping):
        return 1 + sum(1 + _node_count(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return 1 + sum(_node_count(v) for v in value)
    return 1


def _check_entries(entries: Any, layers: Any, overrides: Mapping, summary: Any, problems: list[str]) -> None:
    """Compare the ``entries`` counts with what the file holds (a truncated file holds fewer)."""
    keys = ("layers", "step_overrides", "summary")
    if not isinstance(entries, Mapping) or set(entries) != set(keys) or not all(_is_int(entries[k]) for k in keys):
        problems.append(f"entries must be {{layers: N, step_overrides: M, summary: K}} (integers), got {entries!r}")
        return
    found = {
        "layers": len(layers) if isinstance(layers, Mapping) else 0,
        "step_overrides": sum(len(v) if isinstance(v, Mapping) else 1 for v in overrides.values()),
        "summary": _node_count(summary or {}),
    }
    for key in keys:
        if entries[key] != found[key]:
            what = {"layers": "layer entries", "step_overrides": "step override rows", "summary": "summary nodes"}[key]
            problems.append(f"entries.{key} says {entries[key]} {what}, the file holds {found[key]} "
                            "(truncated or edited?)")


class _RefusedYAML(Exception):
    """A YAML construct a mask config never uses and a hostile file would (aliases, duplicate keys...)."""


_LOADER = None


def _strict_loader():
    """A SafeLoader that refuses anchors, aliases, merge keys, deep nesting and duplicate keys.

    Events come from libyaml when available (fast, and its parser does not recurse); composition is
    PyYAML's Python composer (libyaml's own composer recurses in C and crashes on deep nesting).
    """
    global _LOADER
    if _LOADER is not None:
        return _LOADER
    import yaml
    from yaml.composer import Composer
    from yaml.constructor import SafeConstructor
    from yaml.resolver import Resolver

    def line(node_or_event) -> int:
        mark = getattr(node_or_event, "start_mark", None)
        return mark.line + 1 if mark is not None else 0

    class StrictMixin:
        _depth = 0

        def compose_node(self, parent, index):
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent):
                raise _RefusedYAML(f"line {line(event)}: YAML aliases (*{event.anchor}) are not allowed in a mask config")
            if getattr(event, "anchor", None) is not None:
                raise _RefusedYAML(f"line {line(event)}: YAML anchors (&{event.anchor}) are not allowed in a mask config")
            self._depth += 1
            try:
                if self._depth > MAX_YAML_DEPTH:
                    raise _RefusedYAML(f"line {line(event)}: nested deeper than {MAX_YAML_DEPTH} levels")
                return Composer.compose_node(self, parent, index)
            finally:
                self._depth -= 1

        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen: dict = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        raise _RefusedYAML(f"line {line(key_node)}: YAML merge keys (<<) are not allowed in a mask config")
                    key = self.construct_object(key_node, deep=True)
                    try:
                        first = seen.get(key)
                    except TypeError:
                        continue  # unhashable key: SafeConstructor reports it
                    if first is not None:
                        raise _RefusedYAML(f"duplicate key {key!r} at line {line(key_node)} (first at line {first})")
                    seen[key] = line(key_node)
            return SafeConstructor.construct_mapping(self, node, deep)

    try:
        from yaml._yaml import CParser  # libyaml events

        class StrictLoader(StrictMixin, Composer, CParser, SafeConstructor, Resolver):
            def __init__(self, stream):
                CParser.__init__(self, stream)
                SafeConstructor.__init__(self)
                Resolver.__init__(self)
                Composer.__init__(self)

            # the Python composer, not CParser's C one
            get_single_node = Composer.get_single_node
            check_node = Composer.check_node
            get_node = Composer.get_node
    except ImportError:  # PyYAML without libyaml
        class StrictLoader(StrictMixin, yaml.SafeLoader):  # type: ignore[no-redef]
            pass

    _LOADER = StrictLoader
    return _LOADER


def _plain(value: Any) -> Any:
    """Convert numpy scalars/arrays and tuples to plain YAML-safe Python values."""
    if isinstance(value, Mapping):
        return {str(k) if not isinstance(k, (int, str)) else k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


__all__ = ["MASK_SCHEMA", "MASK_SCHEMA_MULTI", "MaskConfig", "format_window", "parse_window", "model_fields"]
