"""Attention time as a function of density, for turning ``--speedup`` into a density budget.

The model is linear: the time of one STA attention call, relative to the dense call on the same
shape, is ``a + b * density`` with ``a + b = 1`` (density 1 costs exactly a dense call). ``a`` is the
fixed overhead a sparse kernel pays whatever the window (launch, text keys, the tail of the grid).

Where ``bench/results/kernel-*.json`` files exist, ``a`` and ``b`` are fitted by least squares to every
record there that carries a density and a time together with a dense time of the same shape (see
:func:`records_from_json`). Otherwise the documented default is used: ``a = 0.03``, ``b = 0.97``,
i.e. the kernel keeps ~97% of dense throughput on the work it does, as the STA paper reports for its
H100 kernel (its kernel-level speedup tracks 1/density closely). The source is always reported.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

DEFAULT_OVERHEAD = 0.03
TIME_KEYS = ("median_ms", "time_ms", "ms", "triton_ms", "sta_ms", "median_time_ms")
DENSE_TIME_KEYS = ("dense_ms", "dense_median_ms", "baseline_ms", "sdpa_ms", "flash_ms", "full_ms")


@dataclass(frozen=True)
class CostModel:
    """Relative attention time ``a + b * density`` (``a + b = 1``)."""

    overhead: float = DEFAULT_OVERHEAD
    source: str = "default (a=0.03, b=0.97: STA paper's kernel efficiency)"
    points: int = 0

    @property
    def slope(self) -> float:
        return 1.0 - self.overhead

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


def records_from_json(doc: Any) -> list[tuple[float, float]]:
    """``(density, time relative to dense)`` pairs found anywhere in a benchmark JSON document.

    A record is a JSON object with a numeric ``density`` and a time (one of ``TIME_KEYS``) plus a dense
    time of the same shape: either in the same object (one of ``DENSE_TIME_KEYS``) or in a sibling
    record of the same list with ``density`` 1.0 (or ``window`` "full") and the same ``shape``.
    """
    pairs: list[tuple[float, float]] = []

    def time_of(obj) -> float | None:
        for key in TIME_KEYS:
            value = obj.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                return float(value)
        return None

    def walk(node):
        if isinstance(node, dict):
            density, t = node.get("density"), time_of(node)
            if isinstance(density, (int, float)) and t is not None:
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
            for item in node:
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
    """Least-squares ``a`` of ``r = a + (1 - a) d`` (r - d = a (1 - d)); None without informative points."""
    pairs = [(d, r) for d, r in pairs if d < 1]
    if len(pairs) < 2:
        return None
    num = sum((r - d) * (1 - d) for d, r in pairs)
    den = sum((1 - d) ** 2 for d, _ in pairs)
    if den <= 0:
        return None
    overhead = min(max(num / den, 0.0), 0.99)
    return CostModel(overhead=overhead, source=source, points=len(pairs))


def load_cost_model(results_dir: str | Path | None = None) -> CostModel:
    """Fit to ``results_dir/kernel-*.json`` (default ``bench/results`` of the working directory or the
    repository), or return the documented default when nothing usable is there."""
    candidates = []
    if results_dir is not None:
        candidates.append(Path(results_dir))
    else:
        candidates.append(Path.cwd() / "bench" / "results")
        candidates.append(Path(__file__).resolve().parent.parent / "bench" / "results")
    for folder in candidates:
        files = sorted(folder.glob("kernel-*.json")) if folder.is_dir() else []
        pairs: list[tuple[float, float]] = []
        for file in files:
            try:
                pairs += records_from_json(json.loads(file.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                continue
        model = fit(pairs, source=f"fitted to {len(files)} file(s) {folder}/kernel-*.json")
        if model is not None:
            return model
    return CostModel()


__all__ = ["CostModel", "load_cost_model", "records_from_json", "fit", "DEFAULT_OVERHEAD"]
