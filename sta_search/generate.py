"""The generate stage: videos from a mask config, their speed, and their fidelity against dense attention.

:func:`generate` loads a local diffusers pipeline folder (or the bundled model), checks the mask config
against the model, canvas, tile and step count before anything runs, then for every prompt runs the
pipeline with Sliding Tile Attention (and, with ``compare_dense``, once more with full attention and the
same seed), writes mp4 files and returns (and writes) a JSON report: per-step latency, total time, time
spent in attention and its share, peak GPU memory, the density used, PSNR/SSIM against dense, speedup,
and the provenance of the config and the model.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import re
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import UserError
from .options import resolve_device, resolve_dtype
from .report import check_output_folder, json_safe, provenance, write_json

REPORT_SCHEMA = "sta-search/generate-report/v1"
FAMILY_FPS = {"wan": 16, "hunyuan_video": 24, "cogvideox": 8}


@dataclass(frozen=True)
class GenerateSettings:
    """Everything one ``sta-search generate`` invocation needs. ``None`` sizes/steps come from the config."""

    model: str
    mask: str
    prompts: tuple[str, ...]
    out: str = "sta-out"
    seed: int = 0
    steps: int | None = None
    height: int | None = None
    width: int | None = None
    frames: int | None = None
    dtype: str | None = None          # default: bfloat16 on CUDA, float32 on CPU
    device: str | None = None         # default: cuda when available
    compare_dense: bool = False
    compile: bool = False
    backend: str = "auto"
    precision: str = "bf16"           # "fp8" / "int8": the opt-in 8-bit Gluon kernel for the STA calls
    fps: int | None = None
    warmup_steps: int = 0             # short untimed runs of each side before the timed ones
    ulysses: int = 1                  # sequence-parallel degree (torchrun with this many processes)
    threads: int | None = None        # torch CPU threads; default on CPU: sta_search.cpu_threads.choose_threads
    image: str | None = None          # conditioning image file (image-to-video pipelines)
    cache: object = "none"            # a diffusers step cache with STA (sta_search.caches: name or config)


@dataclass
class RunTiming:
    """Timing of one pipeline run (one prompt, one attention mode)."""

    step_seconds: list[float] = field(default_factory=list)
    attention_step_seconds: list[float] = field(default_factory=list)
    total_seconds: float = 0.0            # whole pipeline call (text encoding, denoising, VAE decode)
    peak_memory_bytes: int | None = None  # CUDA only

    @property
    def denoise_seconds(self) -> float:
        return float(sum(self.step_seconds))

    @property
    def attention_seconds(self) -> float:
        return float(sum(self.attention_step_seconds))

    def to_json(self) -> dict:
        steady = self.step_seconds[1:] or self.step_seconds
        return {
            "total_seconds": self.total_seconds,
            "denoise_seconds": self.denoise_seconds,
            "step_seconds": self.step_seconds,
            "median_step_seconds": statistics.median(steady) if steady else None,
            "attention_seconds": self.attention_seconds,
            "attention_step_seconds": self.attention_step_seconds,
            "attention_share": self.attention_seconds / self.denoise_seconds if self.denoise_seconds else None,
            "peak_memory_bytes": self.peak_memory_bytes,
        }


# ----------------------------------------------------------------------------------- small helpers
def prepare_output_folder(out) -> Path:
    """Create ``out`` and prove it can be written (UserError otherwise)."""
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-", delete=True):
            pass
    except OSError as exc:
        raise UserError(f"output folder {str(path)!r} cannot be written: {exc.strerror or exc}") from None
    return path


def slug(text: str, limit: int = 40) -> str:
    cleaned = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return cleaned[:limit].rstrip("-") or "prompt"


def infer_video_size(adapter, transformer, canvas, patch_size) -> tuple[int, int, int]:
    """Pipeline ``(height, width, frames)`` whose token canvas is ``canvas`` (for defaults from a config).

    Tries the adapter's VAE compression factors, then the usual ones (spatial 8/16/4/32/1/2, temporal
    4/8/1), and keeps the first combination the adapter maps back to ``canvas``.
    """
    T, H, W = (int(c) for c in canvas)
    pt, ph, pw = (int(p) for p in patch_size)
    spatials = dict.fromkeys([getattr(adapter, "vae_scale_spatial", 8), 8, 16, 4, 32, 1, 2])
    temporals = dict.fromkeys([getattr(adapter, "vae_scale_temporal", 4), 4, 8, 1])
    for spatial in spatials:
        for temporal in temporals:
            for frames in ((T * pt - 1) * temporal + 1, T * pt * temporal):
                height, width = H * ph * spatial, W * pw * spatial
                try:
                    if tuple(adapter.canvas(transformer, height, width, frames)) == (T, H, W):
                        return height, width, frames
                except Exception:  # noqa: BLE001 - an adapter may reject impossible sizes
                    continue
    raise UserError(f"cannot infer --height/--width/--frames for canvas {tuple(canvas)}; pass them explicitly")


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------- one pipeline run
def run_pipeline(loaded, call_kwargs: dict, attention_fn, timer, device: torch.device, progress=None,
                 description: str = "") -> tuple[np.ndarray, RunTiming]:
    """One pipeline call with ``attention_fn`` hooked into every self-attention layer.

    Per-step latency runs from the first transformer forward of a step to the pipeline's
    ``callback_on_step_end`` (synchronised on CUDA); attention time comes from ``timer``.
    """
    from .caches import PipelineSteps, reset_cache
    from .models import hook_attention
    from .video import to_uint8_frames

    timing = RunTiming()
    marks: list[float] = []
    steps = int(call_kwargs.get("num_inference_steps", 0)) or None
    task = progress.add_task(description, total=steps) if progress is not None else None

    def first_forward(_module, _args):
        if not marks:
            _sync(device)
            marks.append(time.perf_counter())

    def on_step_end(_pipe, step_index, _timestep, callback_kwargs):
        _sync(device)
        marks.append(time.perf_counter())
        if progress is not None:
            progress.update(task, advance=1)
        return callback_kwargs

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    transformers = [t for t in (loaded.transformer, loaded.transformer_2) if t is not None]
    handles = [t.register_forward_pre_hook(first_forward) for t in transformers]
    call_kwargs = {**call_kwargs, "output_type": "np"}
    scheduler = getattr(loaded.pipeline, "scheduler", None)
    if "callback_on_step_end" in inspect.signature(type(loaded.pipeline).__call__).parameters:
        call_kwargs["callback_on_step_end"] = on_step_end
    elif scheduler is not None:  # e.g. HunyuanVideo15Pipeline: a step ends with its scheduler step
        scheduler_step = scheduler.step

        def step_then_mark(*args, **kwargs):
            out = scheduler_step(*args, **kwargs)
            on_step_end(None, None, None, {})
            return out

        scheduler.step = step_then_mark
    try:
        reset_cache(loaded)  # each run starts with an empty step cache (if any)
        with PipelineSteps(loaded) as pipeline_steps, \
                hook_attention(transformers, pipeline_steps.wrap(attention_fn), adapter=loaded.adapter):
            _sync(device)
            t0 = time.perf_counter()
            with torch.inference_mode():
                result = loaded.pipeline(**call_kwargs)
            _sync(device)
            timing.total_seconds = time.perf_counter() - t0
    finally:
        for handle in handles:
            handle.remove()
        if scheduler is not None and "step" in vars(scheduler):
            del scheduler.step  # back to the class method
        if progress is not None:
            progress.remove_task(task)
    timing.step_seconds = [b - a for a, b in zip(marks, marks[1:])]
    per_step = timer.seconds_per_step()
    timing.attention_step_seconds = [per_step.get(i, 0.0) for i in range(len(timing.step_seconds))]
    if device.type == "cuda":
        timing.peak_memory_bytes = int(torch.cuda.max_memory_allocated(device))
    return to_uint8_frames(result.frames[0]), timing


# ----------------------------------------------------------------------------------- the stage
def generate(settings: GenerateSettings, console=None) -> dict:
    """Run the generate stage; returns the report (also written to ``<out>/report.json``).

    Raises:
        UserError: missing model folder or mask file, a config made for another model, canvas, tile or
            step count, an output folder that cannot be written, bad options.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .accelerate import AttentionTimer, MaskAttention, check_config, compile_transformer, load_mask, timed_dense_attention
    from .distributed import checks_on_every_rank, enable_ulysses, init_from_env, launched_by_torchrun
    from .kernels import Geometry
    from .models import load_model
    from .video import fidelity, side_by_side

    console = console or Console(stderr=True)
    context = None
    if settings.ulysses != 1 or launched_by_torchrun():
        context = init_from_env(settings.device)
    device = context.device if context is not None else resolve_device(settings.device)
    is_main = context is None or context.is_main
    threads = None
    if device.type == "cpu" or settings.threads is not None:
        from .cpu_threads import apply_threads

        threads = apply_threads(settings.threads)
    with checks_on_every_rank(context):  # under torchrun every rank prints its own error before any exits
        dtype = resolve_dtype(settings.dtype, device)
        if not settings.prompts:
            raise UserError("no prompts given")
        check_output_folder(settings.out)  # created after the checks: an input error leaves no empty folder
        config = load_mask(settings.mask)

        loaded = load_model(settings.model, device=str(device), dtype=dtype)
        if loaded.pipeline is None:
            raise UserError(f"{settings.model!r} is a bare transformer folder; generate needs a whole diffusers "
                            "pipeline folder (use sta_search.accelerate(transformer, mask) to script a bare "
                            "transformer)")
        info = loaded.adapter.info(loaded.transformer, loaded.transformer_2)

        steps = int(settings.steps) if settings.steps is not None else int(config.steps)
        declared = {}  # the size and tile the model folder declares (sta_search.json), unless sizes are given
        if settings.height is None or settings.width is None or settings.frames is None:
            from .models import model_defaults

            declared = model_defaults(settings.model)
            if all(isinstance(declared.get(k), int) for k in ("height", "width", "frames")):
                h, w, f = declared["height"], declared["width"], declared["frames"]
            else:
                h, w, f = infer_video_size(loaded.adapter, loaded.transformer, config.canvas, info.patch_size)
            height, width, frames = settings.height or h, settings.width or w, settings.frames or f
        else:
            height, width, frames = settings.height, settings.width, settings.frames
        for name, value in (("--height", height), ("--width", width), ("--frames", frames), ("--steps", steps)):
            if value < 1:
                raise UserError(f"{name} must be >= 1, got {value}")
        if settings.warmup_steps < 0:
            raise UserError(f"--warmup-steps must be >= 0, got {settings.warmup_steps}")
        canvas = tuple(int(c) for c in loaded.adapter.canvas(loaded.transformer, height, width, frames))
        from .profile import pipeline_image_kwargs

        image_kwargs = pipeline_image_kwargs(loaded.pipeline, settings.image, (height, width, frames),
                                             loaded.adapter)  # UserError: missing/bad/unwanted
        config = check_config(config, info, canvas, steps, tile=declared.get("tile"),
                              declared="the model's sta_search.json declares its default size and tile; pass "
                              "--height, --width and --frames to run at another size"
                              if declared and settings.height is None and settings.width is None
                              and settings.frames is None else "")
        check_experts(config, loaded, steps)  # of the entry for this canvas
        _check_backend(settings.backend, info, device, dtype, Geometry(canvas, tuple(config.tile)),
                       settings.precision)
        if context is not None:
            enable_ulysses(loaded, settings.ulysses, canvas=canvas)  # UserError on every rank for a bad degree
        from .caches import enable_cache

        cache = enable_cache(loaded, settings.cache)  # before compile; UserError naming the cache if it can't run

    out = prepare_output_folder(settings.out)
    attention = MaskAttention(config, backend=settings.backend, precision=settings.precision)
    if settings.compile:
        for transformer in (loaded.transformer, loaded.transformer_2):
            if transformer is not None:
                compile_transformer(transformer)
    fps = settings.fps or FAMILY_FPS.get(info.family, 16)

    origin = provenance(device)
    report = {
        "schema": REPORT_SCHEMA,
        **{key: value for key, value in origin.items() if key != "device_name"},
        "device": {"type": device.type, "processes": context.world_size if context is not None else 1,
                   "name": origin["device_name"]},
        "model": {"source": str(loaded.source), **_info_json(info)},
        "mask": {"path": str(Path(settings.mask).resolve()) if isinstance(settings.mask, (str, Path)) else None,
                 "sha256": _file_sha256(Path(settings.mask)) if isinstance(settings.mask, (str, Path)) else None,
                 "canvas": list(config.canvas), "tile": list(config.tile), "steps": int(config.steps),
                 "text_len": int(getattr(config, "text_len", 0)), "dense_steps": [int(s) for s in config.dense_steps],
                 "summary": json_safe(dict(getattr(config, "summary", {}) or {}))},
        "settings": {"seed": settings.seed, "steps": steps, "height": height, "width": width, "frames": frames,
                     "canvas": list(canvas), "dtype": str(dtype).replace("torch.", ""), "backend": settings.backend,
                     "precision": settings.precision,
                     "compile": settings.compile, "compare_dense": settings.compare_dense, "fps": fps,
                     "warmup_steps": settings.warmup_steps, "ulysses": settings.ulysses,
                     "threads": torch.get_num_threads(),
                     "image": str(settings.image) if settings.image is not None else None,
                     "cache": cache.name},
        "cpu_threads": threads.to_json() if threads is not None else None,
        "density_used": attention.density(steps),
        "videos": [],
    }

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    faults = _faults(loaded, (height, width, frames), canvas, dtype, device, out, report["videos"], settings.prompts)
    with faults, Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        if settings.warmup_steps:
            # Short runs first (output discarded) so that compilation, autotuning and allocator growth
            # land outside the timed runs of both sides.
            warm_kwargs = _call_kwargs(loaded, settings.prompts[0], height, width, frames,
                                       min(settings.warmup_steps, steps), settings.seed, device, image_kwargs)
            t0 = time.perf_counter()
            if settings.compare_dense:
                warm_timer = AttentionTimer()
                run_pipeline(loaded, warm_kwargs, timed_dense_attention(warm_timer), warm_timer, device, progress,
                             "warm-up dense")
            warm_timer = AttentionTimer()
            attention.check_experts = False  # a shorter run switches experts at another step
            run_pipeline(loaded, warm_kwargs, torch.compiler.disable(warm_timer.wrap(attention)), warm_timer, device,
                         progress, "warm-up STA")
            attention.check_experts = True
            report["warmup_seconds"] = time.perf_counter() - t0
        for index, prompt in enumerate(settings.prompts):
            stem = f"{index:03d}-{slug(prompt)}"
            kwargs = _call_kwargs(loaded, prompt, height, width, frames, steps, settings.seed, device, image_kwargs)

            entry = {"prompt": prompt, "seed": settings.seed}
            dense_frames = None
            if settings.compare_dense:
                dense_timer = AttentionTimer()
                dense_frames, dense_timing = run_pipeline(
                    loaded, _call_kwargs(loaded, prompt, height, width, frames, steps, settings.seed, device, image_kwargs),
                    timed_dense_attention(dense_timer), dense_timer, device, progress, f"dense  {stem}")
                entry["dense"] = dense_timing.to_json()
                entry["dense_video"] = _write(is_main, out / f"{stem}.dense.mp4", dense_frames, fps)

            sta_timer = AttentionTimer()
            attention.calls.clear()
            sta_fn = torch.compiler.disable(sta_timer.wrap(attention))
            sta_frames, sta_timing = run_pipeline(loaded, kwargs, sta_fn, sta_timer, device, progress, f"STA    {stem}")
            entry["sta"] = {**sta_timing.to_json(), "attention_calls": dict(attention.calls),
                            "kernels": sorted(k.split(":", 1)[1] for k in attention.calls if k.startswith("kernel:"))}
            entry["video"] = _write(is_main, out / f"{stem}.mp4", sta_frames, fps)
            entry["frames"] = int(sta_frames.shape[0])

            if dense_frames is not None:
                entry["fidelity"] = fidelity(sta_frames, dense_frames).to_json()
                entry["side_by_side"] = _write(is_main, out / f"{stem}.side-by-side.mp4",
                                               side_by_side(dense_frames, sta_frames) if is_main else None, fps)
                entry["speedup"] = _speedups(dense_timing, sta_timing, sparse_steps=[
                    s for s in range(steps) if config.window_table(s) is not None])
            entry["loadavg"] = _loadavg()
            report["videos"].append(entry)
            if is_main:
                console.print(_summary_line(entry), highlight=False)

    report = json_safe(report)
    if is_main:  # under torchrun every rank computes the same videos; rank 0 writes them
        write_json(out / "report.json", report)
    return report


def _check_backend(backend: str, info, device: torch.device, dtype: torch.dtype, geometry,
                   precision: str = "bf16") -> None:
    """UserError before the first step for a backend that cannot run this model on this device
    (``kernels.backends`` decides, on an empty q of the model's head dim, dtype and device)."""
    from .kernels.backends import require_backend

    q = torch.empty(1, 1, 0, info.head_dim, device=device, dtype=dtype)
    require_backend(backend, q, geometry, "natural", what=info.transformer_class, precision=precision)


def _write(is_main: bool, path: Path, frames, fps: int) -> str:
    from .report import sigint_deferred
    from .video import write_mp4

    if is_main:
        with sigint_deferred():  # Ctrl-C waits for the file: every video on disk is whole
            path = write_mp4(path, frames, fps=fps)  # a .gif where imageio-ffmpeg is missing
    return path.name


@contextlib.contextmanager
def _faults(loaded, size, canvas, dtype, device, out: Path, videos: list, prompts):
    """Ctrl-C and CUDA out of memory during the runs, as one line each (exit 130 / 2) saying what is kept."""
    from .errors import Interrupted
    from .report import out_of_memory_errors, out_of_memory_message

    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(f"{len(videos)} of {len(prompts)} prompts finished; their videos are kept in {out}"
                          if videos else f"no prompt was finished; nothing was written to {out}") from None
    except out_of_memory_errors():
        if device.type == "cuda":
            torch.cuda.empty_cache()
        kept = f"the videos of the {len(videos)} finished prompt(s) are kept in {out}" if videos else \
            "nothing was written"
        raise UserError(out_of_memory_message(loaded, *size, canvas, 0, dtype, device=device, extra=0)
                        + f"; {kept}") from None


def _call_kwargs(loaded, prompt, height, width, frames, steps, seed, device, image_kwargs=None) -> dict:
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    return dict(loaded.adapter.pipeline_kwargs(prompt, height, width, frames, steps, generator, **(image_kwargs or {})))


def check_experts(config, loaded, steps: int) -> None:
    """UserError before anything runs when the config's expert split (two-expert Wan 2.2) does not fit the
    model: a split on a one-transformer model, other layer counts per expert, or another switch step than
    the pipeline will take (when the pipeline can tell it in advance; otherwise the attention hook checks
    the expert of every call)."""
    from .models.wan import predicted_switch_step

    split = getattr(config, "experts", None)
    two = loaded.transformer_2 is not None
    if split is None:
        return
    if not two:
        raise UserError(f"the mask config is for a two-expert model ({split.describe()}) but "
                        f"{type(loaded.transformer).__name__} runs alone")
    counts = tuple(len(loaded.adapter.attention_modules(t)) for t in (loaded.transformer, loaded.transformer_2))
    if counts != split.layer_counts():
        raise UserError(f"mask config experts have {split.layer_counts()} layers, the model's {counts}")
    if int(steps) == split.num_steps:
        switch = predicted_switch_step(loaded.pipeline, int(steps))
        if switch is not None and switch != split.switch_step:
            raise UserError(f"mask config switches to transformer_2 at step {split.switch_step}, this pipeline at "
                            f"step {switch} of {steps}; profile and select again for this pipeline")


def _speedups(dense: RunTiming, sta: RunTiming, sparse_steps: list[int] | None = None) -> dict:
    """Dense time / STA time, measured in this run on this device: whole pipeline call, denoising loop,
    median step, attention over all steps, and (``sparse_steps``: the steps the config runs sparse) the
    steps and attention of the sparse steps alone (the config's dense steps run the same code both times)."""
    def ratio(a, b):
        return a / b if a and b else None

    def over(seconds: list[float], steps: list[int]) -> float:
        return float(sum(seconds[s] for s in steps if s < len(seconds)))

    dense_json, sta_json = dense.to_json(), sta.to_json()
    result = {"total": ratio(dense.total_seconds, sta.total_seconds),
              "denoise": ratio(dense.denoise_seconds, sta.denoise_seconds),
              "median_step": ratio(dense_json["median_step_seconds"], sta_json["median_step_seconds"]),
              "attention": ratio(dense.attention_seconds, sta.attention_seconds)}
    if sparse_steps is not None:
        # step 0 also pays one-off warm-up costs (allocator, first kernels): left out when others exist
        timed = [s for s in sparse_steps if s > 0] or list(sparse_steps)
        result["sparse_steps"] = timed
        result["sparse_step"] = ratio(over(dense.step_seconds, timed), over(sta.step_seconds, timed))
        result["sparse_attention"] = ratio(over(dense.attention_step_seconds, timed),
                                           over(sta.attention_step_seconds, timed))
    return result


def _loadavg() -> list[float] | None:
    from .cpu_threads import load_average

    load = load_average()
    return None if load is None else [round(x, 2) for x in load]


def _summary_line(entry: dict) -> str:
    sta = entry["sta"]
    parts = [f"{entry['video']}: {sta['denoise_seconds']:.2f} s denoising"]
    if sta.get("attention_share") is not None:
        parts.append(f"attention {100 * sta['attention_share']:.0f}%")
    if "fidelity" in entry:
        fid = entry["fidelity"]
        psnr = fid["psnr_db"]
        parts.append(f"PSNR {psnr if isinstance(psnr, str) else f'{psnr:.2f}'} dB, SSIM {fid['ssim']:.4f}")
        speedup = entry["speedup"]
        if speedup["median_step"]:
            parts.append(f"speedup {speedup['median_step']:.2f}x a step (median; {speedup['denoise']:.2f}x over all steps)")
        if speedup.get("attention"):
            kernels = "/".join(sta.get("kernels") or []) or "dense only"
            sparse = (f"{speedup['sparse_attention']:.2f}x over the sparse steps, "
                      if speedup.get("sparse_attention") else "")
            parts.append(f"attention {sparse}{speedup['attention']:.2f}x over all steps vs dense SDPA "
                         f"(STA kernel: {kernels})")
    return ", ".join(parts)


def _info_json(info) -> dict:
    try:
        data = asdict(info)
    except TypeError:
        data = dict(vars(info))
    return json_safe({k: list(v) if isinstance(v, tuple) else v for k, v in data.items()})
