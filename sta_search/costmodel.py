"""Attention time as a function of density, for turning ``--speedup`` into a density budget.

The model is linear: the time of one STA attention call, relative to the dense attention call of the
same shape (what the dense steps run: cuDNN / FlashAttention SDPA), is ``a + b * density``. ``a`` is the
fixed overhead a sparse call pays whatever the window (token permutes, launch, text keys), ``b`` the cost
of the attended work relative to the dense kernel's rate.

By default ``a`` and ``b`` come from the calibration shipped with the package
(``sta_search/calibration/costmodel-h100.json``, written by ``bench/fit_costmodel.py``): a least-squares
fit to one committed H100 benchmark run, using the rows of the kernel that generation runs (the Gluon
kernel in place on natural-order tokens, ``gluon-natural``) against cuDNN dense attention
(``cudnn-dense``). The file records the GPU, the source run, ``a``, ``b`` and the points.

``load_cost_model(folder)`` fits to a folder of ``kernel-*.json`` benchmark files instead
(``sta-search select --bench-results``): every record with a density, an STA time and a dense time of
the same shape (see :func:`records_from_json`); with two or more distinct densities both are fitted,
with one the default shape (``a = 0.03``, ``b = 0.97``: the STA paper's H100 kernel efficiency) is
scaled through it. The source is always reported.

``precision="fp8"`` / ``"int8"`` (``select --precision``): the 8-bit Gluon kernel's calls. From ``--bench-results``
the fit uses its rows (``gluon-fp8-natural`` / ``gluon-int8-natural``); by default the bf16 line is scaled by the
8-bit kernel's measured speed relative to the bf16 kernel and its quantization pre-pass is added
(``sta_search/calibration/precision-h200.json``, written by ``bench/fit_precision.py`` from one H200 run).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from .errors import UserError

DEFAULT_OVERHEAD = 0.03
DEFAULT_SLOPE = 0.97
TIME_KEYS = ("median_ms", "time_ms", "triton_ms", "sta_ms", "median_time_ms")
DENSE_TIME_KEYS = ("dense_ms", "dense_median_ms", "baseline_ms", "sdpa_ms", "flash_ms", "full_ms")
# `sta-search bench` records: {"density": d, "ms": {"gluon-natural": t, "triton-natural": t, "cudnn-dense": t, ...}}.
# The first STA row present is used, in-place rows (what generation runs) first. Results written before the
# Triton rows were renamed call them "ours", "ours+permutes", "ours-natural"; those are still read.
BENCH_STA_KEYS = ("gluon-natural", "triton-natural", "ours-natural", "triton+permutes", "ours+permutes", "triton",
                  "ours")
BENCH_DENSE_KEYS = ("cudnn-dense", "fa2-dense")
CALIBRATION_PACKAGE = "sta_search.calibration"
CALIBRATION_FILE = "costmodel-h100.json"
PRECISION_FILE = "precision-h200.json"
#: ``sta-search bench`` rows of the 8-bit kernel, per precision (bf16 uses ``BENCH_STA_KEYS``)
PRECISION_STA_KEYS = {"fp8": ("gluon-fp8-natural",), "int8": ("gluon-int8-natural",)}


@dataclass(frozen=True)
class CostModel:
    """Relative attention time ``overhead + slope * density`` (1.0 = one dense attention call)."""

    overhead: float = DEFAULT_OVERHEAD
    slope: float = DEFAULT_SLOPE
    source: str = "default (a=0.03, b=0.97: STA paper's kernel efficiency)"
    points: int = 0

    def relative_time(self, density: float) -> float:
        """Time of an attention call at ``density`` relative to a dense call."""
        return self.overhead + self.slope * float(density)

    def speedup(self, sparse_density: float, sparse_steps: int, dense_steps: int) -> float:
        """End-to-end attention speedup over all steps (dense steps cost 1 each)."""
        total = dense_steps + sparse_steps
        return total / (dense_steps + sparse_steps * self.relative_time(sparse_density))

    def density_for_speedup(self, speedup: float, sparse_steps: int, dense_steps: int) -> float:
        """Mean density of the sparse steps that gives attention ``speedup`` over all steps."""
        total = dense_steps + sparse_steps
        if sparse_steps == 0:
            return math.nan
        per_step = (total / float(speedup) - dense_steps) / sparse_steps
        return (per_step - self.overhead) / self.slope

    def max_speedup(self, min_density: float, sparse_steps: int, dense_steps: int) -> float:
        return self.speedup(min_density, sparse_steps, dense_steps)


def records_from_json(doc: Any, sta_keys: tuple[str, ...] = BENCH_STA_KEYS) -> list[tuple[float, float]]:
    """``(density, time relative to dense)`` pairs found anywhere in a benchmark JSON document.

    A record is a JSON object with a numeric ``density`` and a time (one of ``TIME_KEYS``) plus a dense
    time of the same shape: either in the same object (one of ``DENSE_TIME_KEYS``) or in a sibling
    record of the same list with ``density`` 1.0 (or ``window`` "full") and the same ``shape``; or a
    ``sta-search bench`` case, whose STA time is the first of ``sta_keys`` present. With ``sta_keys`` other than
    the default only ``sta-search bench`` cases count (the generic records carry no kernel name).
    """
    generic = sta_keys == BENCH_STA_KEYS
    pairs: list[tuple[float, float]] = []

    def time_of(obj) -> float | None:
        for key in TIME_KEYS:
            value = obj.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                return float(value)
        return None

    def walk(node):
        if isinstance(node, dict) and isinstance(node.get("ms"), dict) and isinstance(node.get("density"), (int, float)):
            times = node["ms"]
            sta = next((times[k] for k in sta_keys if isinstance(times.get(k), (int, float))), None)
            dense = next((times[k] for k in BENCH_DENSE_KEYS if isinstance(times.get(k), (int, float))), None)
            if sta and dense and sta > 0 and dense > 0:
                pairs.append((float(node["density"]), float(sta) / float(dense)))
            return
        if isinstance(node, dict):
            density, t = node.get("density"), time_of(node)
            if generic and isinstance(density, (int, float)) and t is not None:
                for key in DENSE_TIME_KEYS:
                    dense = node.get(key)
                    if isinstance(dense, (int, float)) and dense > 0:
                        pairs.append((float(density), t / float(dense)))
                        break
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            dense_by_shape = {}
            for item in node:
                if isinstance(item, dict) and time_of(item) is not None:
                    if item.get("density") == 1.0 or item.get("window") == "full":
                        dense_by_shape[json.dumps(item.get("shape"), sort_keys=True)] = time_of(item)
            for item in node if generic else ():
                if isinstance(item, dict) and isinstance(item.get("density"), (int, float)):
                    if any(k in item for k in DENSE_TIME_KEYS):
                        continue  # handled by the dict branch
                    dense = dense_by_shape.get(json.dumps(item.get("shape"), sort_keys=True))
                    t = time_of(item)
                    if dense and t is not None:
                        pairs.append((float(item["density"]), t / dense))
            for item in node:
                walk(item)

    walk(doc)
    return [(d, r) for d, r in pairs if 0 < d <= 1 and math.isfinite(r) and r > 0]


def fit(pairs: Iterable[tuple[float, float]], source: str) -> CostModel | None:
    """Least-squares ``r = a + b d``; one distinct density scales the default; None without points."""
    pairs = [(float(d), float(r)) for d, r in pairs]
    if not pairs:
        return None
    densities = sorted({d for d, _ in pairs})
    if len(densities) == 1:
        scale = sum(r for _, r in pairs) / len(pairs) / (DEFAULT_OVERHEAD + DEFAULT_SLOPE * densities[0])
        return CostModel(DEFAULT_OVERHEAD * scale, DEFAULT_SLOPE * scale,
                         f"{source} (one density: default shape scaled x{scale:.3g})", len(pairs))
    n = len(pairs)
    mean_d = sum(d for d, _ in pairs) / n
    mean_r = sum(r for _, r in pairs) / n
    slope = sum((d - mean_d) * (r - mean_r) for d, r in pairs) / sum((d - mean_d) ** 2 for d, _ in pairs)
    overhead = mean_r - slope * mean_d
    if slope <= 0 or overhead < 0:  # noise on a narrow density range: keep the model physical
        overhead = max(overhead, 0.0)
        slope = max(sum(r - overhead for _, r in pairs) / max(sum(d for d, _ in pairs), 1e-12), 1e-6)
    return CostModel(overhead, slope, f"{source} (a={overhead:.3g}, b={slope:.3g})", n)


@functools.lru_cache(maxsize=1)
def calibration() -> dict:
    """The packaged calibration record: ``device``, ``source``, ``sta_row``, ``dense_row``, ``overhead`` (a),
    ``slope`` (b) and ``points`` (see ``bench/fit_costmodel.py``)."""
    text = resources.files(CALIBRATION_PACKAGE).joinpath(CALIBRATION_FILE).read_text(encoding="utf-8")
    return json.loads(text)


def calibration_device() -> str:
    """The GPU the packaged calibration was measured on (e.g. ``NVIDIA H100 80GB HBM3``)."""
    return str(calibration()["device"])


def calibrated_cost_model() -> CostModel:
    """The packaged calibration as a :class:`CostModel`."""
    cal = calibration()
    return CostModel(float(cal["overhead"]), float(cal["slope"]),
                     f"calibrated on {cal['device']} ({cal['source']}: {cal['sta_row']} vs {cal['dense_row']}, "
                     f"a={cal['overhead']:.3g}, b={cal['slope']:.3g})", len(cal["points"]))


@functools.lru_cache(maxsize=1)
def precision_calibration() -> dict:
    """The packaged 8-bit factors: ``device``, ``source`` and per precision ``kernel_ratio`` (8-bit kernel time /
    bf16 kernel time) and ``prepass_relative`` (pre-pass time / dense time) (see ``bench/fit_precision.py``)."""
    text = resources.files(CALIBRATION_PACKAGE).joinpath(PRECISION_FILE).read_text(encoding="utf-8")
    return json.loads(text)


def at_precision(model: CostModel, precision: str) -> CostModel:
    """``model`` (bf16 calls) turned into the 8-bit kernel's: ``kernel_ratio * (a + b d) + prepass``."""
    if precision == "bf16":
        return model
    cal = precision_calibration()
    factors = cal["precisions"][precision]
    ratio, prepass = float(factors["kernel_ratio"]), float(factors["prepass_relative"])
    return CostModel(model.overhead * ratio + prepass, model.slope * ratio,
                     f"{model.source}; {precision}: kernel x{ratio:.3g} + pre-pass {prepass:.3g} (measured on "
                     f"{cal['device']}, {cal['source']})", model.points)


def load_cost_model(results_dir: str | Path | None = None, precision: str = "bf16") -> CostModel:
    """The packaged calibration, or (``results_dir`` given) a fit to ``results_dir/kernel-*.json``; for the 8-bit
    precisions the fit uses their rows, and the packaged calibration is scaled by :func:`at_precision`.

    UserError when ``results_dir`` holds no usable record."""
    from .artifacts import display_path

    if precision not in ("bf16", *PRECISION_STA_KEYS):
        raise UserError(f"--precision {precision!r} is not one of bf16, {', '.join(PRECISION_STA_KEYS)}")
    if results_dir is None:
        return at_precision(calibrated_cost_model(), precision)
    folder = Path(results_dir)
    files = sorted(folder.glob("kernel-*.json")) if folder.is_dir() else []
    keys = PRECISION_STA_KEYS.get(precision, BENCH_STA_KEYS)
    pairs: list[tuple[float, float]] = []
    for file in files:
        try:
            pairs += records_from_json(json.loads(file.read_text(encoding="utf-8")), keys)
        except (OSError, ValueError):
            continue
    model = fit(pairs, source=f"fitted to {len(pairs)} records of {len(files)} file(s) {display_path(folder)}/kernel-*.json"
                + ("" if precision == "bf16" else f" ({keys[0]} rows)"))
    if model is None:
        rows = "" if precision == "bf16" else f" with {keys[0]} rows"
        raise UserError(f"--bench-results {folder}: no kernel-*.json benchmark there has a density with an STA{rows} "
                        "and a dense time; give a folder written by `sta-search bench`, or leave the option out to use "
                        f"the packaged calibration ({calibration_device()})")
    return model


__all__ = ["CostModel", "DEFAULT_OVERHEAD", "at_precision", "calibrated_cost_model", "calibration",
           "calibration_device", "fit", "load_cost_model", "precision_calibration", "records_from_json"]
