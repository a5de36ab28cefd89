"""The profile stage: run a diffusers video pipeline with dense attention over a prompt set and record,
for every profiled (step, layer, head), the recall of every STA window, the attention mass by tile offset
and the output error of a window shortlist (docs/profile-format.md).

The denoising trajectory stays dense: the hook returns the dense attention output. Statistics are summed
(not averaged) so that profiles merge exactly; the artifact is rewritten atomically after every prompt,
and ``resume=True`` continues a folder left by a crash or Ctrl-C, losing at most the prompt in flight.
Prompt ``i`` of the prompt list is generated with seed ``seed + i``, so a resumed run is bit-identical
to an uninterrupted one (on the same machine and software).
"""

from __future__ import annotations

import inspect
import math
import os
import time
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from .artifacts import HEADER_FILE, STATS_FILE, Profile, model_identity
from .errors import Interrupted, UserError
from .kernels.geometry import DEFAULT_TILE, Geometry
from .options import PROPORTIONAL_WINDOWS, check_profile_forwards, dtype_name, parse_profile_steps, resolve_device
from .report import (PROFILER_BUDGET, OutputLock, check_fits_in_memory, check_output_folder, estimate_memory_bytes,
                     out_of_memory_errors, out_of_memory_message, sigint_deferred, writing)
from .kernels.recall import resolve_recall_backend
from .stats import AttentionProfiler, CallStats, clip_windows, default_error_windows, proportional_error_windows

#: header ``statistics``: which path computed a profile's statistics (the recall backend ``auto`` resolved to)
STATISTICS_PATHS = {
    "gluon": "gluon: fused dense + tile-mass pass (Hopper), Gluon STA shortlist",
    "triton": "triton: dense pass with log-sum-exp, Triton recall pass, STA shortlist",
    "reference": "reference: PyTorch float32 (CPU)",
}

Triple = tuple[int, int, int]

#: Test-only: ``"P:S"`` makes the process SIGKILL itself at the first attention call of step S of prompt P
#: (prompt index in the prompt list), to test crash recovery deterministically.
KILL_ENV = "STA_SEARCH_TEST_KILL_AT"

# Header fields that must match for --resume (besides the model identity).
_RESUME_KEYS = ("canvas", "tile", "height", "width", "frames", "steps", "seed", "dtype", "profile_steps",
                "error_windows", "image", "cache", "profile_forwards")
_RESUME_MODEL_KEYS = ("family", "transformer_class", "source", "num_layers", "num_heads", "head_dim", "patch_size")


# ----------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class ProfileSettings:
    """What to profile. ``None`` sizes come from the pipeline's defaults; ``windows=None`` is the default
    shortlist, ``"proportional"`` that list scaled to the grid (``stats.proportional_error_windows``);
    ``device=None`` is CUDA when available; ``dtype=None`` is bfloat16 on CUDA, float32 on CPU."""

    model: str
    prompts: tuple[str, ...]
    steps: int = 50
    height: int | None = None
    width: int | None = None
    frames: int | None = None
    seed: int = 0
    profile_steps: str | int = "all"
    tile: Triple = DEFAULT_TILE
    windows: tuple[Triple, ...] | None = None
    device: str | None = None
    dtype: str | None = None
    backend: str = "auto"
    image: str | None = None  # conditioning image file (image-to-video pipelines)
    cache: object = "none"  # a diffusers step cache to profile under (sta_search.caches): name or config
    profile_forwards: str = "all"  # "first": only the first transformer forward of a profiled step (CFG: cond)

    def __post_init__(self):
        if not self.prompts:
            raise UserError("no prompts to profile")
        check_profile_forwards(self.profile_forwards)
        if self.steps < 1:
            raise UserError(f"--steps must be >= 1, got {self.steps}")
        for name in ("height", "width", "frames"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name} must be >= 1, got {value}")


class ProgressSink:
    """Progress callbacks of :func:`run_profile`; the default does nothing."""

    def start(self, total_prompts: int, done_prompts: int, steps: int) -> None: ...
    def prompt_started(self, index: int, prompt: str) -> None: ...
    def step_done(self, step: int) -> None: ...
    def prompt_done(self, index: int, profile: Profile) -> None: ...


class LogProgress(ProgressSink):
    """Progress as plain lines, for logs (a live bar hides itself when stderr is not a terminal): one line per
    finished prompt, and within a long prompt one line per group of steps at most every `interval` seconds,
    each with the elapsed time. `write` takes one line."""

    def __init__(self, write, interval: float = 60.0, clock=time.monotonic):
        self.write, self.interval, self.clock = write, float(interval), clock
        self.total = self.steps = 0
        self.began = self.prompt_began = self.last_line = 0.0
        self.index, self.first_step = 0, 0

    def start(self, total_prompts, done_prompts, steps):
        self.total, self.steps, self.began = total_prompts, steps, self.clock()
        already = f", {done_prompts} already done" if done_prompts else ""
        self.write(f"profiling {total_prompts - done_prompts} of {total_prompts} prompts{already}, "
                   f"{steps} steps each")

    def prompt_started(self, index, prompt):
        self.index, self.first_step = index, 0
        self.prompt_began = self.last_line = self.clock()

    def step_done(self, step):
        now = self.clock()
        if now - self.last_line >= self.interval and step + 1 < self.steps:
            self.write(f"prompt {self.index + 1}/{self.total}: steps {self.first_step + 1}-{step + 1} of "
                       f"{self.steps} done ({now - self.prompt_began:.0f} s; {_clock(now - self.began)} elapsed)")
            self.last_line, self.first_step = now, step + 1

    def prompt_done(self, index, profile):
        now = self.clock()
        self.write(f"prompt {index + 1}/{self.total} done in {now - self.prompt_began:.1f} s "
                   f"({_clock(now - self.began)} elapsed)")
        self.last_line = now


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# ----------------------------------------------------------------------------------- accumulation
@dataclass
class _PromptSums:
    """Sums of one prompt over its forwards (CFG) and batch items, on the CPU."""

    profile_steps: list[int]
    num_layers: int
    num_heads: int
    grid: Triple
    num_windows: int
    recall: torch.Tensor = field(init=False)
    offsets: torch.Tensor = field(init=False)
    error: torch.Tensor = field(init=False)
    shortlist_recall: torch.Tensor = field(init=False)
    samples: torch.Tensor = field(init=False)

    def __post_init__(self):
        P, L, H, K = len(self.profile_steps), self.num_layers, self.num_heads, self.num_windows
        nt, nh, nw = self.grid
        self.recall = torch.zeros(P, L, H, nt, nh, nw)
        self.offsets = torch.zeros(P, L, H, 2 * nt - 1, 2 * nh - 1, 2 * nw - 1)
        self.error = torch.zeros(P, L, H, K, dtype=torch.float64)
        self.shortlist_recall = torch.zeros(P, L, H, K, dtype=torch.float64)
        self.samples = torch.zeros(P, L, dtype=torch.long)

    def add(self, slot: int, layer: int, stats: CallStats) -> None:
        if not 0 <= layer < self.num_layers:
            raise RuntimeError(f"attention hook reported layer {layer}, the model has {self.num_layers}")
        self.recall[slot, layer] += stats.recall.float().cpu()
        self.offsets[slot, layer] += stats.offset_mass.float().cpu()
        self.error[slot, layer] += stats.error.cpu()
        self.shortlist_recall[slot, layer] += stats.shortlist_recall.cpu()
        self.samples[slot, layer] += stats.samples

    def finish(self, experts: int = 1, cached: list[tuple[bool, int, int]] | None = None) -> tuple[dict, list[list[int]]]:
        """This prompt's tensors for ``Profile.add_prompt`` and, per profiled step, the ``[first, last + 1)``
        layer range that ran (all layers, except for two-expert models where one expert runs per step;
        the other expert's layers keep zero sums at that step).

        ``cached`` (under a step cache): per profiled step (computed, first, last + 1): the expert's layer
        range and whether all its layers ran; steps the cache skipped are not checked, and each layer's
        error/recall is averaged over its own calls (a cache may run some layers, or forwards, and not others)."""
        if cached is not None:
            return self._finish_cached(cached)
        samples = self.samples
        active_ranges = []
        for slot, step in enumerate(self.profile_steps):
            active = torch.nonzero(samples[slot] > 0).squeeze(1)
            if active.numel() == 0:
                raise RuntimeError(f"profiled step {step} saw no attention call: the pipeline ran fewer steps "
                                   "than --steps or the attention hook did not run")
            lo, hi = int(active[0]), int(active[-1]) + 1
            if active.numel() != hi - lo or (experts == 1 and (lo, hi) != (0, self.num_layers)):
                raise RuntimeError(f"at profiled step {step} only layers {active.tolist()} of {self.num_layers} "
                                   "saw attention calls; the hook missed some layers")
            if bool((samples[slot, lo:hi] != samples[slot, lo]).any()):
                raise RuntimeError(f"layers saw different numbers of attention calls at step {step}: "
                                   f"{samples[slot].tolist()}")
            active_ranges.append([lo, hi])
        per = samples.max(dim=1).values.to(torch.float64)
        shape = (-1, 1, 1, 1)
        tensors = dict(recall_sum=self.recall, offset_mass_sum=self.offsets,
                       error=(self.error / per.view(shape)).float(),
                       recall=(self.shortlist_recall / per.view(shape)).float(), count=per)
        return tensors, active_ranges

    def _finish_cached(self, cached) -> tuple[dict, list[list[int]]]:
        for slot, (computed, lo, hi) in enumerate(cached):
            if computed and not bool((self.samples[slot, lo:hi] > 0).all()):
                raise RuntimeError(f"profiled step {self.profile_steps[slot]} counted as computed but layers "
                                   f"{self.samples[slot].tolist()} saw no call")
        samples = self.samples.clamp(min=1).to(torch.float64)  # skipped cells: zero sums over a count of 1
        per_layer = samples[:, :, None, None]
        count = samples.max(dim=1).values
        # sums rescaled so that sum / count is each layer's mean over its own calls (a cache may run a layer
        # in one CFG forward and not in the other)
        scale = (count[:, None] / samples).view(*samples.shape, *(1,) * (self.recall.ndim - 2))
        tensors = dict(recall_sum=(self.recall * scale).float(), offset_mass_sum=(self.offsets * scale).float(),
                       error=(self.error / per_layer).float(), recall=(self.shortlist_recall / per_layer).float(),
                       count=count)
        return tensors, [[lo, hi] for _, lo, hi in cached]


# ----------------------------------------------------------------------------------- the stage
def _default_sizes(pipeline, transformer) -> dict[str, int | None]:
    """Height, width and frames the pipeline uses when not told (its ``__call__`` defaults)."""
    params = inspect.signature(type(pipeline).__call__).parameters
    sizes = {}
    for ours, theirs in (("height", "height"), ("width", "width"), ("frames", "num_frames")):
        default = params[theirs].default if theirs in params else None
        sizes[ours] = default if isinstance(default, int) else None
    config = getattr(transformer, "config", None)
    spatial = getattr(pipeline, "vae_scale_factor_spatial", None)
    if config is not None and spatial:
        if sizes["height"] is None and getattr(config, "sample_height", None):
            sizes["height"] = int(config.sample_height) * int(spatial)
        if sizes["width"] is None and getattr(config, "sample_width", None):
            sizes["width"] = int(config.sample_width) * int(spatial)
    return sizes


def _kill_point() -> tuple[int, int] | None:
    value = os.environ.get(KILL_ENV)
    if not value:
        return None
    prompt, step = value.split(":")
    return int(prompt), int(step)


def _compare_for_resume(old: dict, new: dict) -> list[str]:
    diffs = []
    for key in _RESUME_MODEL_KEYS:
        a, b = old.get("model", {}).get(key), new["model"].get(key)
        if a != b:
            diffs.append(f"model.{key}: {a!r} in the profile vs {b!r} now")
    for key in _RESUME_KEYS:
        a, b = old.get(key), new.get(key)
        if a != b:
            diffs.append(f"{key}: {a!r} in the profile vs {b!r} now")
    return diffs


def run_profile(settings: ProfileSettings, out, *, resume: bool = False, progress: ProgressSink | None = None,
                loaded=None) -> Profile:
    """Profile ``settings.model`` over ``settings.prompts`` into the folder ``out``; returns the profile.

    ``loaded``: an already loaded :class:`sta_search.models.LoadedModel` (tests), else ``load_model``.
    Raises UserError for bad input (see the command's help), for a folder that holds a profile of a
    different setup when resuming, for a folder another process is writing (:class:`~sta_search.report.
    OutputLock`), for a full disk (the profile on disk keeps the prompts finished before) and for CUDA out
    of memory (naming the size and an estimate of the memory it needs). Ctrl-C raises
    :class:`~sta_search.errors.Interrupted` saying how many prompts are saved (``resume=True`` continues).
    """
    out = check_output_folder(out)  # before the lock file is made beside it
    with OutputLock(out, "--out"):
        return _run_profile(settings, out, resume=resume, progress=progress or ProgressSink(), loaded=loaded)


def _run_profile(settings: ProfileSettings, out: Path, *, resume: bool, progress: ProgressSink,
                 loaded) -> Profile:
    from .models import dense_attention, hook_attention, load_model

    device = str(resolve_device(settings.device))
    dtype_text = dtype_name(settings.dtype, device)
    dtype = getattr(torch, dtype_text)
    existing = None
    if (out / STATS_FILE).exists() or (out / HEADER_FILE).exists():
        if not resume:
            raise UserError(f"{out} already holds a profile; pass --resume to continue it or choose another --out")
        existing = Profile.load(out)
    elif out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")

    if loaded is None:
        loaded = load_model(settings.model, device, dtype)
    if loaded.pipeline is None:
        raise UserError(f"profiling runs the whole pipeline, but {settings.model} holds only a transformer; "
                        "pass a diffusers pipeline folder (with model_index.json)")
    from .caches import ComputedCells, PipelineSteps, resolve_cache, use_cache

    cache_name = resolve_cache(settings.cache, loaded).name  # UserError naming the cache before anything runs
    pipeline, transformer, adapter = loaded.pipeline, loaded.transformer, loaded.adapter
    defaults = _default_sizes(pipeline, transformer)
    sizes = {name: getattr(settings, name) or defaults[name] for name in ("height", "width", "frames")}
    missing = [name for name, value in sizes.items() if value is None]
    if missing:
        raise UserError(f"cannot tell the default {', '.join(missing)} of this pipeline; pass "
                        + " ".join(f"--{m}" for m in missing))
    canvas = tuple(int(c) for c in loaded.canvas(sizes["height"], sizes["width"], sizes["frames"]))
    try:
        geometry = Geometry(canvas, settings.tile)
    except ValueError as exc:
        raise UserError(f"--tile {settings.tile}: {exc}") from None
    info = loaded.info  # both experts' layers for Wan 2.2
    if settings.windows == PROPORTIONAL_WINDOWS:
        windows = proportional_error_windows(geometry)
    elif settings.windows:
        windows = clip_windows(geometry, settings.windows)
    else:
        windows = default_error_windows(geometry)
    profile_steps = parse_profile_steps(settings.profile_steps, settings.steps)
    sums_bytes = 4 * len(profile_steps) * int(info.num_layers) * int(info.num_heads) * (
        math.prod(geometry.grid) + math.prod(2 * n - 1 for n in geometry.grid))
    check_fits_in_memory(estimate_memory_bytes(loaded, canvas, 0, dtype, extra=sums_bytes + PROFILER_BUDGET), device,
                         f"{sizes['height']}x{sizes['width']}, {sizes['frames']} frames (canvas {canvas}, "
                         f"{math.prod(canvas)} video tokens)")
    header = {
        "model": {"family": info.family, "transformer_class": info.transformer_class, **model_identity(settings.model),
                  "num_layers": int(info.num_layers), "num_heads": int(info.num_heads),
                  "head_dim": int(info.head_dim), "patch_size": [int(p) for p in info.patch_size]},
        "canvas": list(canvas), "tile": list(geometry.tile), "text_len": None, "text_first": None,
        "height": int(sizes["height"]), "width": int(sizes["width"]), "frames": int(sizes["frames"]),
        "steps": int(settings.steps), "seed": int(settings.seed), "dtype": dtype_text,
        "profile_steps": profile_steps, "error_windows": [list(w) for w in windows], "prompts": [],
        "forwards_per_step": None,
    }
    if cache_name != "none":
        header["cache"] = cache_name  # and "computed_steps" after the first prompt
    if settings.profile_forwards != "all":
        header["profile_forwards"] = settings.profile_forwards
    if loaded.transformer_2 is not None:
        header["model"]["experts"] = 2
    if settings.image is not None:
        header["image"] = image_identity(settings.image)
    image_kwargs = pipeline_image_kwargs(pipeline, settings.image,  # UserError: none / bad / not taken
                                         (sizes["height"], sizes["width"], sizes["frames"]), adapter)
    expert_layers = [len(adapter.attention_modules(t)) for t in (loaded.transformer, loaded.transformer_2)
                     if t is not None]
    prompts = list(settings.prompts)
    profile = existing
    if existing is not None:
        diffs = _compare_for_resume(existing.header, header)
        if diffs:
            raise UserError(f"cannot resume {out}: its settings differ: " + "; ".join(diffs))
        done = list(existing.prompts)
        if prompts[: len(done)] != done:
            raise UserError(f"cannot resume {out}: its {len(done)} finished prompts are not the first "
                            f"{len(done)} prompts of the prompts file")
        for key in ("text_len", "text_first", "forwards_per_step"):
            header[key] = existing.header.get(key)

    profiler = AttentionProfiler(geometry, windows, backend=settings.backend)
    slots = {step: i for i, step in enumerate(profile_steps)}
    first_forward_only = settings.profile_forwards == "first"
    kill_at = _kill_point()
    start = profile.num_prompts if profile is not None else 0
    progress.start(len(prompts), start, settings.steps)
    if hasattr(pipeline, "set_progress_bar_config"):
        pipeline.set_progress_bar_config(disable=True)
    call_params = inspect.signature(type(pipeline).__call__).parameters

    state = {"profile": profile}  # the last profile saved
    try:
        for index in range(start, len(prompts)):
            prompt = prompts[index]
            progress.prompt_started(index, prompt)
            sums = _PromptSums(profile_steps, int(info.num_layers), int(info.num_heads), geometry.grid,
                               len(windows))
            seen = {"text": None, "forwards": {}, "expert": {}}

            def attention_fn(call, index=index, sums=sums, seen=seen):
                if kill_at is not None and kill_at == (index, call.step):
                    os.kill(os.getpid(), signal.SIGKILL)
                if tuple(call.canvas) != canvas:
                    raise UserError(f"the model attended over a {tuple(call.canvas)} canvas, expected {canvas} "
                                    f"from --height/--width/--frames")
                text = (int(call.text_len), bool(call.text_first))
                if seen["text"] is None:
                    seen["text"] = text
                elif seen["text"] != text:
                    raise RuntimeError(f"text tokens changed between attention calls: {seen['text']} vs {text}")
                seen["expert"].setdefault(call.step, set()).add(int(call.layer >= expert_layers[0]))
                slot = slots.get(call.step)
                if slot is None:
                    return dense_attention(call)
                if call.layer == 0:
                    seen["forwards"][call.step] = seen["forwards"].get(call.step, 0) + 1
                if first_forward_only and call.forward_index > 0:
                    return dense_attention(call)
                if "statistics" not in seen:
                    seen["statistics"] = STATISTICS_PATHS[resolve_recall_backend(settings.backend, call.q, geometry)]
                on_cpu = call.q.device.type != "cuda"
                out, stats = profiler(call.q, call.k, call.v, text_len=call.text_len, text_first=call.text_first,
                                      text_mask=call.text_mask, dense_out=dense_attention(call) if on_cpu else None)
                sums.add(slot, call.layer, stats)
                return out.to(call.q.dtype)

            generator = torch.Generator(device="cpu").manual_seed(int(settings.seed) + index)
            kwargs = dict(adapter.pipeline_kwargs(prompt, sizes["height"], sizes["width"], sizes["frames"],
                                                  settings.steps, generator))
            kwargs.update(image_kwargs)
            kwargs["output_type"] = "latent"  # statistics only: skip the VAE decode
            if "callback_on_step_end" in call_params:
                def on_step_end(pipe, step, timestep, callback_kwargs):
                    progress.step_done(int(step))
                    return callback_kwargs

                kwargs["callback_on_step_end"] = on_step_end
            cells = ComputedCells(int(settings.steps), int(info.num_layers))
            try:
                with use_cache(loaded, settings.cache), PipelineSteps(loaded) as pipeline_steps, \
                        hook_attention(loaded, pipeline_steps.wrap(cells.wrap(attention_fn)), adapter,
                                       check_finite=True):
                    with torch.inference_mode():
                        pipeline(**kwargs)
            except out_of_memory_errors():
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                done = state["profile"].num_prompts if state["profile"] is not None else 0
                text_len = (seen["text"] or (0, False))[0]
                raise UserError(out_of_memory_message(loaded, sizes["height"], sizes["width"], sizes["frames"],
                                                      canvas, text_len, dtype,
                                                      device=getattr(loaded.transformer, "device", None))
                                + (f"; the {done} finished prompt(s) are kept in {out} (--resume continues)"
                                   if done else "; nothing was written")) from None
            cached = None
            if cache_name != "none":
                ranges = _expert_ranges(loaded, adapter, pipeline_steps.experts, settings.steps)
                computed = cells.computed_steps(ranges)
                cached = [(computed[step], *ranges[step]) for step in profile_steps]
            result, active_layers = sums.finish(experts=2 if loaded.transformer_2 is not None else 1,
                                                cached=cached)
            split = _expert_split(expert_layers, seen["expert"], settings.steps)
            text_len, text_first = seen["text"]
            forwards = max(seen["forwards"].values()) if seen["forwards"] else None
            if profile is None:
                header.update(text_len=text_len, text_first=text_first, forwards_per_step=forwards)
                if seen.get("statistics"):
                    header["statistics"] = seen["statistics"]
                if split is not None:
                    header["active_layers"] = active_layers  # per profiled step: the expert's [first, last+1) layers
                    header["experts"] = split.to_list()  # each expert's layers and the steps it runs
                    header["expert_switch_step"] = split.switch_step
                profile = Profile.empty(header)
            elif split is not None and (profile.header.get("active_layers") != active_layers
                                        or profile.header.get("experts") != split.to_list()):
                raise RuntimeError(f"the expert switch moved between prompts: {split.describe()} now, "
                                   f"{profile.header.get('experts')} before")
            elif (profile.header.get("text_len"), profile.header.get("text_first")) != (text_len, text_first):
                raise UserError(f"text tokens {text_len} (first={text_first}) differ from the profile's "
                                f"{profile.header.get('text_len')} (first={profile.header.get('text_first')})")
            profile = profile.add_prompt(prompt, **result)
            if cached is not None:  # a step counts as computed when the cache computed it for every prompt
                before = profile.header.get("computed_steps") or [True] * len(computed)
                profile = Profile(dict(profile.header, computed_steps=[a and b for a, b in zip(before, computed)]),
                                  profile.tensors)
            kept = (f"the profile in it still holds the {state['profile'].num_prompts} prompt(s) finished before"
                    if state["profile"] is not None else "nothing was written")
            with writing(out, "the profile", kept=kept), sigint_deferred():  # Ctrl-C waits for the renames
                profile.save(out)
                state["profile"] = profile  # before a held Ctrl-C is raised: this prompt is on disk
            progress.prompt_done(index, profile)
    except KeyboardInterrupt:
        done = state["profile"].num_prompts if state["profile"] is not None else 0
        if done == 0:
            raise Interrupted(f"no prompt was finished; nothing was written to {out}") from None
        raise Interrupted(f"{done} of {len(prompts)} prompts are saved in {out}"
                          + ("; run again with --resume to continue" if done < len(prompts) else "")) from None
    if profile is None:  # nothing left to do and nothing done: cannot happen (prompts non-empty)
        raise UserError("no prompts were profiled")
    return profile


def _expert_split(expert_layers: list[int], step_experts: dict[int, set], steps: int):
    """The expert split seen over all steps of a prompt (None with one transformer)."""
    from .experts import ExpertSplit

    if len(expert_layers) < 2:
        return None
    missing = [s for s in range(steps) if s not in step_experts]
    mixed = [s for s, e in step_experts.items() if len(e) != 1]
    if missing or mixed:
        raise RuntimeError(f"expert per step unclear: steps {missing} saw no attention, steps {mixed} saw both experts")
    return ExpertSplit.from_runs(expert_layers, [next(iter(step_experts[s])) for s in range(steps)])


def image_identity(path) -> dict:
    """What a profile records of its conditioning image: the path and the file's sha256."""
    import hashlib

    return {"path": str(path), "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}


def pipeline_image_kwargs(pipeline, image_path, size, adapter=None) -> dict:
    """The call arguments that condition `pipeline` on the image file `image_path` for a video of `size`
    ``(height, width, frames)`` (``adapter.image_call_kwargs``: ``{"image": PIL image}`` for most pipelines,
    ``video``/``mask_video`` for EasyAnimate's inpaint pipeline); ``{}`` without --image for one that does not
    need it. UserError when the pipeline needs an image and none is given, takes none but one is given, the
    file is not an image, or the pipeline cannot make a video of `size` from it."""
    from .models import get_adapter
    from .options import read_image

    adapter = adapter if adapter is not None else get_adapter(pipeline.transformer).bind(pipeline)
    takes, needs = adapter.image_input(pipeline)
    name = type(pipeline).__name__
    if image_path is None:
        if needs:
            raise UserError(f"{name} is an image-to-video pipeline: pass the conditioning image with --image PATH")
        return {}
    if not takes:
        raise UserError(f"--image {image_path}: {name} takes no image (it is not an image-to-video pipeline)")
    return adapter.image_call_kwargs(pipeline, read_image(image_path), *(int(s) for s in size))


def _expert_ranges(loaded, adapter, experts_by_step: dict, steps: int) -> list[tuple[int, int]]:
    """Per step, the ``[first, last + 1)`` layers of the transformer that ran it (both experts: Wan 2.2)."""
    first = len(list(adapter.attention_modules(loaded.transformer)))
    total = int(loaded.info.num_layers)
    spans = [(0, first), (first, total)]
    return [spans[experts_by_step.get(step, 0)] if loaded.transformer_2 is not None else (0, total)
            for step in range(steps)]


# ----------------------------------------------------------------------------------- summary
def summary_windows(profile: Profile, targets: Sequence[float] = (0.05, 0.15, 0.3, 0.5)) -> list[Triple]:
    """A few shortlist windows near the given tile densities (for the summary table)."""
    g = profile.geometry
    chosen: list[Triple] = []
    for target in targets:
        w = min(profile.error_windows, key=lambda w: abs(g.tile_density(w) - target))
        if w not in chosen:
            chosen.append(w)
    return chosen


def summary_rows(profile: Profile, windows: Sequence[Triple]) -> list[tuple[int, list[float]]]:
    """Per layer, the mean recall (over the profiled steps where the layer ran, heads and samples) of each
    window."""
    recall = profile.mean_recall()  # (P, L, H, nt, nh, nw)
    active = torch.ones(recall.shape[0], recall.shape[1], dtype=torch.bool)
    ranges = profile.header.get("active_layers")
    if ranges:
        active[:] = False
        for slot, (lo, hi) in enumerate(ranges):
            active[slot, lo:hi] = True
    computed = profile.header.get("computed_steps")
    if computed:  # steps a cache skipped hold no statistics
        active &= torch.tensor([bool(computed[s]) for s in profile.profile_steps])[:, None]
    rows = []
    for layer in range(profile.num_layers):
        steps = active[:, layer]
        values = [float(recall[steps, layer, :, w[0] - 1, w[1] - 1, w[2] - 1].mean()) if bool(steps.any())
                  else float("nan") for w in windows]
        rows.append((layer, values))
    return rows
