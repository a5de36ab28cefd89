"""Two-expert models (Wan 2.2 A14B: ``transformer`` for the high-noise steps, ``transformer_2`` after the
boundary): which layers belong to which expert and which denoising steps each expert runs.

Layers are numbered in adapter order: the first expert's self-attention layers ``0 .. L1-1``, the second's
``L1 .. L1+L2-1``. The pipeline switches experts once, when the timestep falls below
``boundary_ratio * num_train_timesteps``; timesteps fall step by step, so the first expert runs steps
``[0, switch_step)`` and the second ``[switch_step, steps)`` (either range may be empty). A window of a
(step, layer) whose expert does not run at that step means nothing: the profile holds no statistics for
it, `select` neither spends budget on it nor counts it in densities, the mask config stores no override
for it, and `generate` refuses to run a config whose switch step differs from the pipeline's.

On disk (profile header and mask config)::

    experts:
      - {name: transformer, layers: [0, 40], steps: [0, 12]}
      - {name: transformer_2, layers: [40, 80], steps: [12, 40]}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import UserError

EXPERT_NAMES = ("transformer", "transformer_2")


@dataclass(frozen=True)
class ExpertSplit:
    """Layer range ``[lo, hi)`` and step range ``[first, end)`` of each expert, in layer order."""

    names: tuple[str, ...]
    layers: tuple[tuple[int, int], ...]
    steps: tuple[tuple[int, int], ...]

    def __post_init__(self):
        n = len(self.names)
        if n < 2 or len(self.layers) != n or len(self.steps) != n:
            raise UserError(f"experts: need 2 or more experts with a layer and a step range each, got {n}")
        if self.layers[0][0] != 0 or any(a[1] != b[0] for a, b in zip(self.layers, self.layers[1:])) or any(
                lo >= hi for lo, hi in self.layers):
            raise UserError(f"experts: layer ranges {[list(r) for r in self.layers]} must tile [0, layers) in order")
        if self.steps[0][0] != 0 or any(a[1] != b[0] for a, b in zip(self.steps, self.steps[1:])) or any(
                lo > hi for lo, hi in self.steps):
            raise UserError(f"experts: step ranges {[list(r) for r in self.steps]} must tile [0, steps) in order")

    # ------------------------------------------------------------------ facts
    @property
    def num_layers(self) -> int:
        return self.layers[-1][1]

    @property
    def num_steps(self) -> int:
        return self.steps[-1][1]

    @property
    def switch_step(self) -> int:
        """First step of the second expert (two experts)."""
        return self.steps[1][0]

    def expert_of_layer(self, layer: int) -> int:
        for index, (lo, hi) in enumerate(self.layers):
            if lo <= layer < hi:
                return index
        raise IndexError(f"layer {layer} outside [0, {self.num_layers})")

    def expert_of_step(self, step: int) -> int:
        for index, (lo, hi) in enumerate(self.steps):
            if lo <= step < hi:
                return index
        raise IndexError(f"step {step} outside [0, {self.num_steps})")

    def runs(self, step: int, layer: int) -> bool:
        """Whether `layer` runs at `step`."""
        return self.expert_of_layer(layer) == self.expert_of_step(step)

    def active(self) -> np.ndarray:
        """``(steps, layers)`` bool: True where the layer's expert runs at the step."""
        table = np.zeros((self.num_steps, self.num_layers), dtype=bool)
        for (l0, l1), (s0, s1) in zip(self.layers, self.steps):
            table[s0:s1, l0:l1] = True
        return table

    def layer_counts(self) -> tuple[int, ...]:
        return tuple(hi - lo for lo, hi in self.layers)

    def describe(self) -> str:
        return ", ".join(f"{name} layers {lo}-{hi - 1} steps {s0}-{s1 - 1}" if s1 > s0 else
                         f"{name} layers {lo}-{hi - 1} no steps"
                         for name, (lo, hi), (s0, s1) in zip(self.names, self.layers, self.steps))

    # ------------------------------------------------------------------ constructors and files
    @classmethod
    def from_runs(cls, layer_counts: Sequence[int], step_experts: Sequence[int],
                  names: Sequence[str] = EXPERT_NAMES) -> "ExpertSplit":
        """From the experts' layer counts and the expert that ran each step (0-based, ``len == steps``).
        RuntimeError when the experts do not take the steps in order (one switch per expert)."""
        bounds, lo = [], 0
        for count in layer_counts:
            bounds.append((lo, lo + int(count)))
            lo += int(count)
        experts = [int(e) for e in step_experts]
        if any(b < a for a, b in zip(experts, experts[1:])):
            raise RuntimeError(f"the experts did not run in order over the steps: {experts}")
        steps = []
        for index in range(len(bounds)):
            taken = [s for s, e in enumerate(experts) if e == index]
            first = taken[0] if taken else (steps[-1][1] if steps else 0)
            steps.append((first, first + len(taken)))
        return cls(tuple(names[: len(bounds)]), tuple(bounds), tuple(steps))

    def to_list(self) -> list[dict]:
        return [{"name": name, "layers": list(layers), "steps": list(steps)}
                for name, layers, steps in zip(self.names, self.layers, self.steps)]

    @classmethod
    def from_list(cls, value: Any, where: str = "experts") -> "ExpertSplit":
        """Parse :meth:`to_list`'s form; UserError naming `where` otherwise."""
        def pair(item, key):
            got = item.get(key) if isinstance(item, Mapping) else None
            if not (isinstance(got, (list, tuple)) and len(got) == 2 and all(
                    isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in got)):
                raise UserError(f"{where}: {key} must be [first, end) integers, got {got!r}")
            return int(got[0]), int(got[1])

        if not isinstance(value, (list, tuple)) or not all(isinstance(item, Mapping) for item in value):
            raise UserError(f"{where} must be a list of {{name, layers, steps}} mappings, got {value!r}")
        for item in value:
            extra = set(item) - {"name", "layers", "steps"}
            if extra or not isinstance(item.get("name"), str):
                raise UserError(f"{where}: each expert needs a name, layers and steps only, got {dict(item)!r}")
        return cls(tuple(item["name"] for item in value), tuple(pair(item, "layers") for item in value),
                   tuple(pair(item, "steps") for item in value))

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> "ExpertSplit | None":
        """The split a profile header records (None for single-transformer profiles)."""
        value = header.get("experts")
        return None if value is None else cls.from_list(value, "profile header experts")

    def check(self, num_layers: int, steps: int, where: str) -> None:
        """UserError when the split does not cover `num_layers` layers and `steps` steps."""
        if self.num_layers != num_layers or self.num_steps != steps:
            raise UserError(f"{where}: experts cover {self.num_layers} layers and {self.num_steps} steps, "
                            f"expected {num_layers} layers and {steps} steps")


__all__ = ["ExpertSplit", "EXPERT_NAMES"]
