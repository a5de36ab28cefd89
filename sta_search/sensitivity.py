"""How far an attention error at each denoising step moves the final video: step weights for the solver.

The budget solver (:mod:`sta_search.select`) sums the profile's relative attention errors over every (step,
layer, head) as if an error weighed the same at every step. It need not: an early error is partly undone by
the later denoising, or grows through it, and the step sizes of the sampler differ. This module measures it.

A *probe* config (a selection at the budget of interest) is run sparse only at the sparse steps that use one
profiled step's statistics (the nearest-profiled-step mapping of the solver) and dense everywhere else, from
the profiled prompts' own initial noise. That step's *gain* is the final video's relative RMS distance from
the dense video divided by the probe's summed profile error at those steps (first order: final error ~ gain x
attention error). The weights handed to ``SelectOptions(step_weights=...)`` are the measured gains over their
mean; profiled steps no sparse step uses, or whose probe changes nothing, get weight 1.

Cost: one generation of the profiled prompts per profiled step that sparse steps use, plus one dense one; each probe
replays the dense run's transformer outputs for the steps before its first sparse step (:class:`ForwardReplay`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .artifacts import Profile
from .errors import UserError
from .maskconfig import MaskConfig


@dataclass(frozen=True)
class StepProbe:
    """The probe config for one profiled step: sparse at ``steps`` (the sparse steps whose statistics come from
    ``profile_steps[slot]``), dense elsewhere; ``attention_error``: its windows' summed mean profile error there."""

    slot: int
    steps: tuple[int, ...]
    config: MaskConfig
    attention_error: float


@dataclass(frozen=True)
class StepSensitivity:
    """Per profiled step: the measured final-video error of its probe, the probe's summed attention error, their
    ratio (gain; None where not measured) and the solver weight (gain over the mean gain; 1 where None)."""

    profile_steps: tuple[int, ...]
    final_error: tuple[float | None, ...]
    attention_error: tuple[float | None, ...]
    gains: tuple[float | None, ...]
    weights: tuple[float, ...]
    probe: str

    def weights_line(self) -> str:
        """``step weights (profiled step: weight): 4: 1.83, 6: 1.51, ...`` for a console."""
        return "step weights (profiled step: weight): " + ", ".join(
            f"{s}: {w:.2f}" for s, w in zip(self.profile_steps, self.weights))

    def to_dict(self) -> dict:
        def rounded(values):
            return [None if v is None else float(f"{v:.6g}") for v in values]

        return {"profile_steps": list(self.profile_steps), "final_error": rounded(self.final_error),
                "attention_error": rounded(self.attention_error), "gains": rounded(self.gains),
                "weights": rounded(self.weights), "probe": self.probe}


def _sparse_slots(profile: Profile, config: MaskConfig) -> dict[int, tuple[int, ...]]:
    """profiled-step index -> the config's sparse steps that use its statistics (nearest profiled step)."""
    from .select import nearest_profiled

    sparse = list(config.sparse_steps)
    slots: dict[int, list[int]] = {}
    for step, slot in zip(sparse, nearest_profiled(sparse, profile.profile_steps).tolist() if sparse else []):
        slots.setdefault(int(slot), []).append(int(step))
    return {slot: tuple(steps) for slot, steps in sorted(slots.items())}


def _attention_errors(profile: Profile, config: MaskConfig) -> np.ndarray:
    """``(steps, layers)``: the summed mean profile error of ``config``'s windows at each sparse step and layer (the
    nearest profiled step's statistics; 0 at dense steps and for full windows). UserError when ``config`` is for
    another canvas, tile or step count, or uses a window the profile measured no error for."""
    from .select import nearest_profiled

    geometry = profile.geometry
    if tuple(config.canvas) != tuple(profile.canvas) or tuple(config.tile) != tuple(profile.tile) \
            or config.steps != profile.steps:
        raise UserError(f"probe config (canvas {list(config.canvas)}, tile {list(config.tile)}, {config.steps} steps) "
                        f"does not match the profile (canvas {list(profile.canvas)}, tile {list(profile.tile)}, "
                        f"{profile.steps} steps)")
    index = {}
    for i, window in enumerate(profile.error_windows):
        index.setdefault(geometry.clip_window(tuple(window)), i)
    error = profile.mean_error().double().numpy()  # (P, L, H, K)
    table = np.zeros((config.steps, profile.num_layers))
    sparse = list(config.sparse_steps)
    for step, slot in zip(sparse, nearest_profiled(sparse, profile.profile_steps).tolist() if sparse else []):
        for layer, row in enumerate(np.asarray(config.window_table(step)).tolist()):
            for head, window in enumerate(row):
                window = geometry.clip_window(tuple(window))
                if geometry.is_full(window):
                    continue
                if window not in index:
                    raise UserError(f"probe window {list(window)} (step {step}, layer {layer}, head {head}) has no "
                                    "measured error: probe with a selection over the profile's shortlist")
                table[step, layer] += float(error[slot, layer, head, index[window]])
    return table


def step_probes(profile: Profile, config: MaskConfig) -> list[StepProbe]:
    """One probe per profiled step that some sparse step of ``config`` uses (see the module docstring)."""
    errors = _attention_errors(profile, config)
    probes = []
    for slot, steps in _sparse_slots(profile, config).items():
        dense = tuple(s for s in range(config.steps) if s not in set(steps))
        probes.append(StepProbe(slot, steps, config.replace(dense_steps=dense), float(errors[list(steps)].sum())))
    return probes


def layer_probes(profile: Profile, config: MaskConfig) -> list[StepProbe]:
    """One probe per layer: ``config``'s windows for that layer at every sparse step, every other layer full
    (``slot`` is the layer here; ``attention_error`` the layer's summed profile error over the sparse steps)."""
    errors = _attention_errors(profile, config)
    full = np.asarray(profile.grid, dtype=np.int32)
    probes = []
    for layer in range(profile.num_layers):
        windows = np.array(config.windows, dtype=np.int32)
        windows[:, [l for l in range(profile.num_layers) if l != layer]] = full
        probes.append(StepProbe(layer, tuple(config.sparse_steps), config.replace(windows=windows),
                                float(errors[:, layer].sum())))
    return probes


def _probe_gains(probes: Sequence[StepProbe], slots: int, render: Callable[[MaskConfig | None], torch.Tensor],
                 progress: Callable[[StepProbe, float], None] | None = None):
    """(final error, attention error, gain) lists over ``slots`` from rendering each probe against the dense run;
    None where a slot has no probe or its probe changes nothing."""
    reference = render(None)
    final: list[float | None] = [None] * slots
    attention: list[float | None] = [None] * slots
    gains: list[float | None] = [None] * slots
    for item in probes:
        attention[item.slot] = item.attention_error
        if item.attention_error <= 0:
            continue
        final[item.slot] = relative_rms(render(item.config), reference)
        if final[item.slot] > 0:
            gains[item.slot] = final[item.slot] / item.attention_error
        if progress is not None:
            progress(item, final[item.slot])
    return tuple(final), tuple(attention), tuple(gains)


def measure_layer_sensitivity(profile: Profile, probe: MaskConfig,
                              render: Callable[[MaskConfig | None], torch.Tensor]) -> StepSensitivity:
    """Like :func:`measure_step_sensitivity`, per layer (:func:`layer_probes`): ``profile_steps`` holds the layer
    indices here."""
    final, attention, gains = _probe_gains(layer_probes(profile, probe), profile.num_layers, render)
    return StepSensitivity(tuple(range(profile.num_layers)), final, attention, gains, weights_from_gains(gains),
                           "layers")


def relative_rms(video: torch.Tensor, reference: torch.Tensor) -> float:
    """``||video - reference|| / ||reference||`` over all elements, in float64."""
    a, b = torch.as_tensor(video).double(), torch.as_tensor(reference).double()
    if a.shape != b.shape:
        raise ValueError(f"video shape {tuple(a.shape)} differs from the reference's {tuple(b.shape)}")
    norm = float(torch.linalg.vector_norm(b))
    return float(torch.linalg.vector_norm(a - b)) / max(norm, 1e-30)


def weights_from_gains(gains: Sequence[float | None]) -> tuple[float, ...]:
    """Gains over their mean (measured ones only); 1 where a gain is None, all 1 when none is measured."""
    measured = [g for g in gains if g is not None]
    if not measured:
        return tuple(1.0 for _ in gains)
    mean = float(np.mean(measured))
    return tuple(1.0 if g is None else float(g) / mean for g in gains)


def measure_step_sensitivity(profile: Profile, probe: MaskConfig,
                             render: Callable[[MaskConfig | None], torch.Tensor],
                             progress: Callable[[str], None] | None = None) -> StepSensitivity:
    """Measure the step weights with ``probe`` (module docstring). ``render(config)`` generates the profiled
    prompts from their profiling seed under ``config`` (None: dense attention) and returns the videos."""
    probes = step_probes(profile, probe)
    if not probes:
        raise UserError("the probe config has no sparse step: nothing to measure")

    def said(item, final):
        progress(f"profiled step {profile.profile_steps[item.slot]} (sparse steps {list(item.steps)}): final error "
                 f"{final:.4g}, attention error {item.attention_error:.4g}")

    final, attention, gains = _probe_gains(probes, len(profile.profile_steps), render,
                                           said if progress is not None else None)
    summary = probe.summary or {}
    label = f"{summary.get('strategy', 'config')} at density {probe.density():.4g}"
    return StepSensitivity(tuple(profile.profile_steps), final, attention, gains, weights_from_gains(gains), label)


#: where ``sta-search profile --calibrate-steps`` writes the measurement, inside the profile folder
SENSITIVITY_FILE = "step_sensitivity.json"
SENSITIVITY_SCHEMA = "sta-search/step-sensitivity/v1"
#: the probe's density budget by default: the middle of the densities people run STA at
DEFAULT_CALIBRATION_BUDGET = 0.3


def save_sensitivity(sensitivity: StepSensitivity, folder, *, prompts: int, budget: float) -> Path:
    """Write ``folder/step_sensitivity.json`` atomically; returns its path."""
    import json
    import os

    from .report import writing

    path = Path(folder) / SENSITIVITY_FILE
    doc = {"schema": SENSITIVITY_SCHEMA, **sensitivity.to_dict(), "prompts": int(prompts), "budget": float(budget)}
    tmp = path.with_name(path.name + ".tmp")
    with writing(path, "the step weights", kept="the profile beside it is unchanged"):
        try:
            tmp.write_text(json.dumps(doc, indent=1) + "\n")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return path


def load_step_weights(folder, profile: Profile) -> tuple[tuple[float, ...], dict] | None:
    """(weights, the file's contents) from ``folder/step_sensitivity.json``, or None without one. UserError when
    the file is unreadable or measured for other profiled steps than ``profile``'s."""
    import json

    path = Path(folder) / SENSITIVITY_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        weights = tuple(float(w) for w in doc["weights"])
        steps = [int(s) for s in doc["profile_steps"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: not a step sensitivity file ({exc}); delete it or profile again with "
                        "--calibrate-steps") from None
    if steps != list(profile.profile_steps) or len(weights) != len(steps):
        raise UserError(f"{path} was measured at profiled steps {steps}, the profile has {list(profile.profile_steps)}; "
                        "profile again with --calibrate-steps")
    return weights, doc


class ForwardReplay:
    """Records every transformer forward's output during one pipeline run (``record``), then in later runs from the
    same noise returns the recorded outputs for the forwards of steps before ``until`` instead of computing them
    (``replay``): a probe's dense prefix is the dense run's, exactly, so it need not be computed again.

    Keyed by (transformer, step, forward within the step); the step comes from `sta_search.caches.PipelineSteps`.
    Where a forward's step is unknown (a pipeline that does not say it) nothing is replayed."""

    def __init__(self, loaded):
        from .caches import _parts

        self.transformers, _ = _parts(loaded)
        self.outputs: dict[tuple[int, int, int], object] = {}
        self.replayed = 0
        self.computed = 0

    @contextlib.contextmanager
    def running(self, steps, *, record: bool = False, until: int = 0):
        """Inside: the transformers' forwards record (``record``) or replay steps ``< until``; ``steps`` is the
        run's `PipelineSteps`."""
        from .models.base import unwrap

        counts: dict[tuple[int, int], int] = {}
        patched = []

        def wrap(index, module, original):
            def forward(*args, **kwargs):
                step = steps.step
                if step is None:
                    self.computed += 1
                    return original(*args, **kwargs)
                call = counts.get((index, step), 0)
                counts[(index, step)] = call + 1
                key = (index, step, call)
                if not record and step < until and key in self.outputs:
                    self.replayed += 1
                    return _cloned(self.outputs[key])
                self.computed += 1
                out = original(*args, **kwargs)
                if record:
                    self.outputs[key] = _cloned(out)
                return out

            return forward

        try:
            for index, transformer in enumerate(self.transformers):
                module = unwrap(transformer)
                if "forward" in vars(module):
                    continue  # already wrapped by someone else: compute everything
                module.forward = wrap(index, module, module.forward)
                patched.append(module)
            yield self
        finally:
            for module in patched:
                vars(module).pop("forward", None)


def _cloned(value):
    """A copy of a forward's output whose tensors are not shared (tensors, tuples, lists, dicts, dataclasses)."""
    import dataclasses

    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_cloned(v) for v in value)
    if isinstance(value, dict):
        out = type(value)() if type(value) is not dict else {}
        for key, item in value.items():
            out[key] = _cloned(item)
        return out
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: _cloned(getattr(value, f.name)) for f in dataclasses.fields(value)
                                             if f.init})
    return value


def check_calibratable(cache: str | None, image, what: str = "--cache") -> None:
    """UserError unless step weights can be measured for a run under step cache ``cache`` and conditioning
    ``image``: the probes replay and compare whole denoising runs, which a step cache makes differ by design, and
    the image of an image-to-video profile is not kept with it."""
    if cache not in (None, "none"):
        raise UserError(f"--calibrate-steps runs without a step cache, got {what} {cache}")
    if image:
        raise UserError("--calibrate-steps does not support --image (image-to-video) yet")


def calibrate_profile(folder, loaded, budget: float = DEFAULT_CALIBRATION_BUDGET, *, full_steps: int | None = None,
                      progress: Callable[[str], None] | None = None, replay: bool = True) -> StepSensitivity:
    """Measure the step weights of the profile in ``folder`` on its own prompts and seeds (prompt i: seed + i)
    with ``loaded`` (the profiled model), the probe being the budget solver's selection at ``budget`` (with
    ``full_steps`` dense steps; None: select's default), and write them beside the profile
    (:data:`SENSITIVITY_FILE`). Generation runs to latents (no VAE decode); with ``replay`` each probe takes the
    dense run's transformer outputs for the steps before its first sparse step (:class:`ForwardReplay`) instead
    of computing them again (the same numbers, about half the work)."""
    from .accelerate import MaskAttention
    from .caches import PipelineSteps
    from .models import dense_attention, hook_attention
    from .profile import pipeline_image_kwargs
    from .select import SelectOptions, select_windows

    profile = Profile.load(folder)
    header = profile.header
    check_calibratable(header.get("cache"), header.get("image"), "the profile's cache")
    probe = select_windows(profile, SelectOptions(budget=budget, full_steps=full_steps)).config
    pipeline, adapter = loaded.pipeline, loaded.adapter
    if hasattr(pipeline, "set_progress_bar_config"):
        pipeline.set_progress_bar_config(disable=True)
    sizes = (int(header["height"]), int(header["width"]), int(header["frames"]))
    image_kwargs = pipeline_image_kwargs(pipeline, None, sizes, adapter)

    replays = [ForwardReplay(loaded) for _ in profile.prompts] if replay else None

    def render(config):
        attention = dense_attention if config is None else MaskAttention(config, backend="auto")
        first_sparse = min(config.sparse_steps) if config is not None and config.sparse_steps else 0
        videos = []
        for index, prompt in enumerate(profile.prompts):
            generator = torch.Generator(device="cpu").manual_seed(int(header["seed"]) + index)
            kwargs = dict(adapter.pipeline_kwargs(prompt, *sizes, int(header["steps"]), generator))
            kwargs.update(image_kwargs, output_type="latent")
            with contextlib.ExitStack() as stack:
                steps = stack.enter_context(PipelineSteps(loaded))
                stack.enter_context(hook_attention(loaded, steps.wrap(attention), adapter))
                if replays is not None:
                    stack.enter_context(replays[index].running(steps, record=config is None, until=first_sparse))
                with torch.inference_mode():
                    out = pipeline(**kwargs)
            frames = out.frames if hasattr(out, "frames") else out[0]
            videos.append(torch.as_tensor(frames).float().cpu())
        return torch.cat(videos)

    sensitivity = measure_step_sensitivity(profile, probe, render, progress=progress)
    if replays is not None:
        for item in replays:
            item.outputs.clear()
    save_sensitivity(sensitivity, folder, prompts=profile.num_prompts, budget=budget)
    return sensitivity


__all__ = ["DEFAULT_CALIBRATION_BUDGET", "SENSITIVITY_FILE", "StepProbe", "StepSensitivity", "calibrate_profile",
           "check_calibratable", "load_step_weights", "measure_layer_sensitivity", "measure_step_sensitivity",
           "layer_probes", "relative_rms", "save_sensitivity", "step_probes", "weights_from_gains"]
