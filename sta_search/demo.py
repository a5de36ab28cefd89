"""`sta-search demo`: the whole profile -> select -> generate loop on a bundled model (default `tiny`).

1. profile the model's attention on `quick` prompts (recall of every window, error of the shortlist);
2. select per-(step, layer, head) windows at a density budget (our budget solver);
3. generate two held-out prompts with dense attention and with the selected STA windows (same seed),
   and compare them (PSNR / SSIM, and the attention and denoising-step time of both, measured in the same
   run on this device; off CUDA ``auto`` runs the ``gather`` STA kernel against plain SDPA);
4. write heatmaps, the mask config, videos and ``report.md`` / ``report.json`` under the output folder.

The prompts come from the model's own caption grammar (``prompt_set`` of `sta_search.tiny.data`, or of
`sta_search.small.data` for the small model): the profiled and the held-out prompts are disjoint.

On CPU the torch thread count comes from `sta_search.cpu_threads` (``--threads``; default min(physical
cores, cores the load average leaves idle)); it is recorded in the report with the load average.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .options import resolve_device, resolve_dtype
from .report import atomic_write_text, check_output_folder, provenance, write_json

# Shortlist whose errors are measured (the CPU cost of profiling grows with its length): densities on the
# (4, 4, 4) tile grid 0.06 .. 0.5, along every axis.
DEMO_ERROR_WINDOWS = ((1, 2, 2), (2, 2, 2), (4, 2, 2), (2, 3, 3), (1, 4, 4), (3, 3, 3), (2, 4, 4))
QUICK_PROMPT_SEED = 11
HELDOUT_PROMPT_SEED = 23


def _prompt_grammar(model: str = "tiny"):
    """The module whose ``prompt_set(count, seed)`` writes captions the model was trained on."""
    import json

    from .models.loading import resolve_model_path

    folder, _ = resolve_model_path(model)
    try:
        pipeline_class = json.loads((folder / "model_index.json").read_text()).get("_class_name")
    except (OSError, ValueError):
        pipeline_class = None
    if pipeline_class == "SmallVideoPipeline":
        from .small import data
    else:
        from .tiny import data
    return data


def _check_sta_backend(backend: str, loaded, device: str, dtype, size, tile) -> None:
    """UserError (exit 2) before any work when ``--backend`` cannot run this model here, as `generate` says it."""
    import torch

    from .generate import _check_backend
    from .kernels.geometry import Geometry

    info = loaded.adapter.info(loaded.transformer, loaded.transformer_2)
    height, width, frames = size
    canvas = tuple(int(c) for c in loaded.adapter.canvas(loaded.transformer, height, width, frames))
    _check_backend(backend, info, torch.device(device), dtype, Geometry(canvas, tuple(tile)))


def demo_prompts(quick: int = 4, heldout: int = 2, model: str = "tiny") -> tuple[list[str], list[str]]:
    """(`quick` prompts to profile, `heldout` other prompts to generate), deterministic."""
    data = _prompt_grammar(model)
    profiled = data.prompt_set(quick, QUICK_PROMPT_SEED)
    others = [p for p in data.prompt_set(heldout + quick, HELDOUT_PROMPT_SEED) if p not in profiled]
    return profiled, others[:heldout]


@dataclass(frozen=True)
class DemoSettings:
    """``None`` sizes/steps/tile come from the model's ``sta_search.json``; ``threads`` None: automatic on CPU."""

    out: str = "outputs/demo"
    model: str = "tiny"
    budget: float = 0.3
    quick_prompts: int = 4
    heldout_prompts: int = 2
    steps: int | None = None
    height: int | None = None
    width: int | None = None
    frames: int | None = None
    tile: tuple[int, int, int] | None = None
    full_steps: int | None = None
    profile_every: int = 4  # profile every k-th step (select maps other steps to the nearest profiled one)
    error_windows: tuple[tuple[int, int, int], ...] = DEMO_ERROR_WINDOWS
    seed: int = 0
    device: str | None = None
    backend: str = "auto"
    overwrite: bool = False
    threads: int | None = None
    calibrate_steps: bool = False  # measure step weights after profiling (sta_search.sensitivity) and select with them


def run_demo(settings: DemoSettings = DemoSettings(), console=None) -> dict:
    """Run the demo; returns the report dict (also written to ``<out>/report.json`` and ``report.md``)."""
    from rich.console import Console

    from .generate import GenerateSettings, generate
    from .inspect import plot_mask, plot_profile
    from .models import load_model
    from .profile import LogProgress, ProfileSettings, run_profile
    from .select import SelectOptions, resolve_full_steps, select_windows

    console = console or Console(stderr=True)
    if not 0 < settings.budget <= 1:
        raise UserError(f"--budget {settings.budget} must be a density in (0, 1]")
    if settings.quick_prompts < 1 or settings.heldout_prompts < 1:
        raise UserError("--quick-prompts and --heldout-prompts must be >= 1")
    out = Path(settings.out)
    if out.exists() and out.is_dir() and any(out.iterdir()) and not settings.overwrite:
        raise UserError(f"--out {out} is not empty; pass --overwrite to replace it")
    check_output_folder(out)

    from .models import model_defaults

    defaults = model_defaults(settings.model)  # UserError for an unknown name or a missing folder
    steps = settings.steps or defaults.get("steps")
    height = settings.height or defaults.get("height")
    width = settings.width or defaults.get("width")
    frames = settings.frames or defaults.get("frames")
    tile = settings.tile or defaults.get("tile")
    missing = [name for name, value in (("--steps", steps), ("--height", height), ("--width", width),
                                        ("--frames", frames), ("tile", tile)) if value is None]
    if missing:
        from .models.loading import MODEL_DEFAULTS_FILE, resolve_model_path

        folder, _ = resolve_model_path(settings.model)
        if not (folder / "model_index.json").is_file():
            raise UserError(f"--model {settings.model!r} is not a diffusers pipeline folder (no model_index.json); "
                            "the demo runs the bundled models (tiny, small) or a pipeline folder")
        raise UserError(f"--model {settings.model!r} has no {MODEL_DEFAULTS_FILE} with its recommended steps, size "
                        f"and tile (missing: {', '.join(m.lstrip('-') for m in missing)}); the demo runs the bundled "
                        f"models (tiny, small) or pipeline folders that have one (use profile/select/generate, "
                        "which take these as options)")
    tile = tuple(int(t) for t in tile)
    if settings.full_steps is not None:  # before any work (select would say it after profiling)
        resolve_full_steps(settings.full_steps, steps, "the demo")
    device = str(resolve_device(settings.device))
    threads = None
    if device == "cpu" or settings.threads is not None:
        from .cpu_threads import apply_threads

        threads = apply_threads(settings.threads)
    dtype = resolve_dtype(None, device)
    loaded = load_model(settings.model, device, dtype)
    _check_sta_backend(settings.backend, loaded, device, dtype, (height, width, frames), tile)
    if out.exists() and any(out.iterdir()):  # --overwrite; only after every check passed
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    quick, heldout = demo_prompts(settings.quick_prompts, settings.heldout_prompts, settings.model)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    where = f"{device}, {threads.threads} thread{'s' if threads.threads > 1 else ''}" if threads else device
    console.print(f"[bold]1/4 profile[/] {settings.model} on {len(quick)} prompts, {steps} steps, tile {tile} "
                  f"({where})")
    from .kernels.recall import RECALL_BACKENDS

    profile = run_profile(
        ProfileSettings(model=settings.model, prompts=tuple(quick), steps=steps, height=height,
                        width=width, frames=frames, seed=settings.seed, tile=tile,
                        profile_steps=settings.profile_every, windows=tuple(settings.error_windows),
                        device=device,  # --backend is the STA kernel's; the profiler's own pass picks itself
                        backend=settings.backend if settings.backend in RECALL_BACKENDS else "auto"),
        out / "profile", loaded=loaded,
        progress=LogProgress(lambda line: console.print("  " + line, markup=False, highlight=False)))
    timings["profile_s"] = time.perf_counter() - t0

    weights = None
    if settings.calibrate_steps:
        from .sensitivity import calibrate_profile

        console.print(f"  step weights: probing each profiled step's effect on the final video "
                      f"({len(quick)} prompts)", markup=False, highlight=False)
        tc = time.perf_counter()
        sensitivity = calibrate_profile(out / "profile", loaded, settings.budget, full_steps=settings.full_steps)
        weights = sensitivity.weights
        timings["calibrate_s"] = time.perf_counter() - tc
        console.print("  " + sensitivity.weights_line(), markup=False, highlight=False)

    console.print(f"[bold]2/4 select[/] windows at density budget {settings.budget}")
    t1 = time.perf_counter()
    selection = select_windows(profile, SelectOptions(budget=settings.budget, full_steps=settings.full_steps,
                                                      step_weights=weights))
    mask_path = out / "mask.yaml"
    selection.config.save(mask_path)
    timings["select_s"] = time.perf_counter() - t1

    console.print("[bold]3/4 heatmaps[/]")
    t2 = time.perf_counter()
    pictures = plot_profile(profile, out / "heatmaps") + plot_mask(selection.config, out / "heatmaps")
    timings["plots_s"] = time.perf_counter() - t2

    console.print(f"[bold]4/4 generate[/] {len(heldout)} held-out prompts, dense vs STA")
    t3 = time.perf_counter()
    del loaded
    gen_report = generate(GenerateSettings(model=settings.model, mask=str(mask_path), prompts=tuple(heldout),
                                           out=str(out / "videos"), seed=settings.seed, device=device,
                                           steps=steps, height=height, width=width, frames=frames,
                                           compare_dense=True, backend=settings.backend,
                                           threads=threads.threads if threads else None), console=console)
    timings["generate_s"] = time.perf_counter() - t3
    strip = _frame_strip(out / "videos", gen_report.get("videos", []), out / "frames.png")
    timings["total_s"] = time.perf_counter() - t0

    summary = selection.summary
    videos = gen_report.get("videos", [])
    report = {
        "schema": "sta-search/demo-report/v2",
        **provenance(device),
        "model": settings.model,
        "device": device,
        "threads": threads.to_json() if threads else None,
        "loadavg_end": _loadavg(),
        "steps": steps,
        "tile": list(tile),
        "canvas": list(profile.canvas),
        "budget": settings.budget,
        "profiled_prompts": quick,
        "heldout_prompts": heldout,
        "selection": {k: summary.get(k) for k in ("density", "overall_density", "predicted_error",
                                                  "heldout_error", "dense_step_count", "step_weights")},
        "prediction": _prediction(summary),
        "measured": _measured(gen_report, device),
        "videos": [{"prompt": v["prompt"], "video": f"videos/{v['video']}",
                    "dense_video": f"videos/{v['dense_video']}" if "dense_video" in v else None,
                    "side_by_side": f"videos/{v['side_by_side']}" if "side_by_side" in v else None,
                    "fidelity": v.get("fidelity"), "speedup": v.get("speedup"),
                    "kernels": (v.get("sta") or {}).get("kernels"), "loadavg": v.get("loadavg")} for v in videos],
        "heatmaps": [str(Path(p).relative_to(out)) for p in pictures],
        "mask": "mask.yaml",
        "frames_png": strip.name if strip else None,
        "timings": {k: round(v, 2) for k, v in timings.items()},
    }
    write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", _markdown(report))
    console.print(f"demo written to {out} in {timings['total_s']:.0f} s (report.md)")
    return report


def _loadavg() -> list[float] | None:
    from .cpu_threads import load_average

    load = load_average()
    return None if load is None else [round(x, 2) for x in load]


def _prediction(summary: dict) -> dict:
    """The selector's cost-model speedup, with the GPU its calibration was measured on (not this device)."""
    from .costmodel import calibration_device

    try:
        calibrated_on = calibration_device()
    except Exception:  # noqa: BLE001 - a missing calibration only loses the label
        calibrated_on = None
    return {"attention_speedup": summary.get("predicted_speedup"), "calibrated_on": calibrated_on}


def _measured(gen_report: dict, device: str) -> dict:
    """Dense vs STA seconds measured in the generate stage on this device, summed over the held-out prompts:
    attention and denoising-step time of the sparse steps (the config's dense steps run the same code in both
    runs; step 0 is left out, it pays one-off warm-up costs), and the whole denoising loop."""
    videos = [v for v in gen_report.get("videos", []) if "dense" in v and "sta" in v]
    if not videos:
        return {}

    def total(side: str, key: str, steps=None) -> float:
        seconds = 0.0
        for v in videos:
            values = v[side][key]
            chosen = v["speedup"].get("sparse_steps") if steps else None
            seconds += sum(values[s] for s in chosen if s < len(values)) if chosen is not None else sum(values)
        return seconds

    def ratio(a, b):
        return a / b if a and b else None

    kernels = sorted({k for v in videos for k in (v["sta"].get("kernels") or [])})
    attention = {"dense_s": total("dense", "attention_step_seconds", True),
                 "sta_s": total("sta", "attention_step_seconds", True)}
    step = {"dense_s": total("dense", "step_seconds", True), "sta_s": total("sta", "step_seconds", True)}
    loop = {"dense_s": total("dense", "step_seconds"), "sta_s": total("sta", "step_seconds")}
    for part in (attention, step, loop):
        part["speedup"] = ratio(part["dense_s"], part["sta_s"])
    settings = gen_report.get("settings", {})
    return {"device": device, "threads": settings.get("threads"), "sta_kernels": kernels,
            "dense_kernel": "torch SDPA without a mask (fast_dense_attention)",
            "sparse_steps": videos[0]["speedup"].get("sparse_steps"),
            "attention_sparse_steps": attention, "step_sparse_steps": step, "denoising_loop": loop,
            "loadavg": [v.get("loadavg") for v in videos]}


def _frame_strip(folder: Path, videos: list[dict], target: Path) -> Path | None:
    """One PNG to look at without a video player: a row per prompt, each frame as dense | STA."""
    import imageio.v3 as iio
    import numpy as np

    from .video import read_mp4

    rows = []
    for entry in videos:
        name = entry.get("side_by_side")
        if not name:
            continue
        frames = read_mp4(folder / name)  # (F, H, W', 3) with dense on the left, STA on the right
        gutter = np.full((frames.shape[1], 6, 3), 255, dtype=np.uint8)
        rows.append(np.concatenate([x for f in frames for x in (f, gutter)][:-1], axis=1))
    if not rows:
        return None
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    iio.imwrite(target, np.concatenate(rows, axis=0))
    return target


def _fmt(value, spec=".3f") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (int, float)):
        return format(value, spec)
    return str(value)


def _markdown(report: dict) -> str:
    sel, pred, measured = report["selection"], report.get("prediction") or {}, report.get("measured") or {}
    threads = report.get("threads") or {}
    device = report["device"]
    lines = [
        f"# sta-search demo (model `{report['model']}`)",
        "",
        f"Device `{device}`, {report['steps']} steps, canvas {report['canvas']}, tile {report['tile']}.",
    ]
    if threads:
        load = threads.get("loadavg")
        lines.append(f"CPU threads: {threads['threads']} ({threads['why']}); load average at start "
                     f"{load if load else 'n/a'}, at the end {report.get('loadavg_end') or 'n/a'}.")
    lines += [
        "",
        "## Selection",
        "",
        f"- budget (density of the sparse steps): {report['budget']}",
        f"- density of the chosen windows: {_fmt(sel['density'])}; overall with "
        f"{sel['dense_step_count']} dense steps: {_fmt(sel['overall_density'])}",
        f"- predicted relative error (profiled prompts): {_fmt(sel['predicted_error'])}; "
        f"held-out (cross-validated): {_fmt(sel['heldout_error'])}",
        ("- step weights (profiled steps' errors, measured on the profiled prompts): "
         + ", ".join(f"{w:.2f}" for w in sel["step_weights"])) if sel.get("step_weights")
        else "- step weights: none (every step's errors count the same)",
    ]
    gpu = pred.get("calibrated_on") or "a GPU"
    if device.startswith("cuda"):
        lines.append(f"- predicted attention speedup on {gpu} (the cost model's calibration GPU, not "
                     f"necessarily this one): {_fmt(pred.get('attention_speedup'), '.2f')}x")
    else:
        lines.append(f"- (the cost model's predicted attention speedup is calibrated on {gpu} and says nothing "
                     f"about this {device}; it is in report.json under `prediction`)")
    lines += ["", f"## Speed measured in this run on `{device}`", ""]
    if measured:
        att, step, loop = measured["attention_sparse_steps"], measured["step_sparse_steps"], measured["denoising_loop"]
        kernels = ", ".join(measured["sta_kernels"]) or "none (every layer dense)"
        lines += [
            f"Dense: {measured['dense_kernel']}. STA kernel that ran: `{kernels}`. Sums over the held-out prompts; "
            f"sparse steps {measured['sparse_steps']} (step 0 and the config's dense steps run the same code both ways).",
            "",
            "| what | dense s | STA s | speedup |",
            "|---|---|---|---|",
            f"| attention, sparse steps | {_fmt(att['dense_s'])} | {_fmt(att['sta_s'])} | {_fmt(att['speedup'], '.2f')}x |",
            f"| denoising step, sparse steps | {_fmt(step['dense_s'])} | {_fmt(step['sta_s'])} | "
            f"{_fmt(step['speedup'], '.2f')}x |",
            f"| whole denoising loop | {_fmt(loop['dense_s'])} | {_fmt(loop['sta_s'])} | {_fmt(loop['speedup'], '.2f')}x |",
            "",
            f"Load average after each prompt: {measured.get('loadavg')} (other work on this machine slows "
            "either side; compare dense and STA of the same prompt).",
        ]
    else:
        lines.append("No dense comparison ran.")
    lines += [
        "",
        "## Held-out prompts: STA vs dense (same seed)",
        "",
        "| prompt | PSNR dB | SSIM | attention speedup | step speedup (sparse steps) | videos |",
        "|---|---|---|---|---|---|",
    ]
    for v in report["videos"]:
        fid = v.get("fidelity") or {}
        speed = v.get("speedup") or {}
        lines.append(f"| {v['prompt']} | {_fmt(fid.get('psnr_db'), '.2f')} | {_fmt(fid.get('ssim'), '.4f')} | "
                     f"{_fmt(speed.get('sparse_attention'), '.2f')} | {_fmt(speed.get('sparse_step'), '.2f')} | "
                     f"[STA]({v['video']}) [dense]({v['dense_video']}) [side by side]({v['side_by_side']}) |")
    if report.get("frames_png"):
        lines += ["", "Frames (each pair: dense | STA):", "", f"![frames]({report['frames_png']})"]
    lines += ["", "## Files", "", f"- mask config: [{report['mask']}]({report['mask']})",
              *[f"- ![{p}]({p})" for p in report["heatmaps"]], "- profile: profile/",
              "", "## Stage timings (s)", "", *[f"- {k}: {v}" for k, v in report["timings"].items()], ""]
    return "\n".join(lines)
