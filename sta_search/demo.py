"""`sta-search demo`: the whole profile -> select -> generate loop on the bundled tiny model.

1. profile the model's attention on `quick` prompts (recall of every window, error of the shortlist);
2. select per-(step, layer, head) windows at a density budget (our budget solver);
3. generate two held-out prompts with dense attention and with the selected STA windows (same seed),
   and compare them (PSNR / SSIM, speed);
4. write heatmaps, the mask config, videos and ``report.md`` / ``report.json`` under the output folder.

The prompts come from the model's own caption grammar (`sta_search.tiny.data.prompt_set`): the profiled
and the held-out prompts are disjoint.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .options import resolve_device, resolve_dtype
from .report import atomic_write_text, check_output_folder, provenance, write_json
from .tiny import data, recommended_settings

# Shortlist whose errors are measured (the CPU cost of profiling grows with its length): densities on the
# (4, 4, 4) tile grid 0.06 .. 0.5, along every axis.
DEMO_ERROR_WINDOWS = ((1, 2, 2), (2, 2, 2), (4, 2, 2), (2, 3, 3), (1, 4, 4), (3, 3, 3), (2, 4, 4))
QUICK_PROMPT_SEED = 11
HELDOUT_PROMPT_SEED = 23


def demo_prompts(quick: int = 4, heldout: int = 2) -> tuple[list[str], list[str]]:
    """(`quick` prompts to profile, `heldout` other prompts to generate), deterministic."""
    profiled = data.prompt_set(quick, QUICK_PROMPT_SEED)
    others = [p for p in data.prompt_set(heldout + quick, HELDOUT_PROMPT_SEED) if p not in profiled]
    return profiled, others[:heldout]


@dataclass(frozen=True)
class DemoSettings:
    """``None`` sizes/steps/tile come from the model's ``sta_search.json``."""

    out: str = "outputs/demo"
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


def run_demo(settings: DemoSettings = DemoSettings(), console=None) -> dict:
    """Run the demo; returns the report dict (also written to ``<out>/report.json`` and ``report.md``)."""
    from rich.console import Console

    from .generate import GenerateSettings, generate
    from .inspect import plot_mask, plot_profile
    from .models import load_model
    from .profile import ProfileSettings, run_profile
    from .select import SelectOptions, select_windows

    console = console or Console(stderr=True)
    if not 0 < settings.budget <= 1:
        raise UserError(f"--budget {settings.budget} must be a density in (0, 1]")
    if settings.quick_prompts < 1 or settings.heldout_prompts < 1:
        raise UserError("--quick-prompts and --heldout-prompts must be >= 1")
    out = Path(settings.out)
    if out.exists() and out.is_dir() and any(out.iterdir()) and not settings.overwrite:
        raise UserError(f"--out {out} is not empty; pass --overwrite to replace it")
    check_output_folder(out)

    defaults = recommended_settings()
    steps = settings.steps or defaults.steps
    height = settings.height or defaults.height
    width = settings.width or defaults.width
    frames = settings.frames or defaults.frames
    tile = tuple(settings.tile or defaults.tile)
    device = str(resolve_device(settings.device))
    if out.exists() and any(out.iterdir()):  # --overwrite; only after every check passed
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    quick, heldout = demo_prompts(settings.quick_prompts, settings.heldout_prompts)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    console.print(f"[bold]1/4 profile[/] tiny on {len(quick)} prompts, {steps} steps, tile {tile} ({device})")
    dtype = resolve_dtype(None, device)
    loaded = load_model("tiny", device, dtype)
    profile = run_profile(
        ProfileSettings(model="tiny", prompts=tuple(quick), steps=steps, height=height,
                        width=width, frames=frames, seed=settings.seed, tile=tile,
                        profile_steps=settings.profile_every, windows=tuple(settings.error_windows),
                        device=device, backend=settings.backend),
        out / "profile", loaded=loaded)
    timings["profile_s"] = time.perf_counter() - t0

    console.print(f"[bold]2/4 select[/] windows at density budget {settings.budget}")
    t1 = time.perf_counter()
    selection = select_windows(profile, SelectOptions(budget=settings.budget, full_steps=settings.full_steps))
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
    gen_report = generate(GenerateSettings(model="tiny", mask=str(mask_path), prompts=tuple(heldout),
                                           out=str(out / "videos"), seed=settings.seed, device=device,
                                           steps=steps, height=height, width=width, frames=frames,
                                           compare_dense=True, backend=settings.backend), console=console)
    timings["generate_s"] = time.perf_counter() - t3
    strip = _frame_strip(out / "videos", gen_report.get("videos", []), out / "frames.png")
    timings["total_s"] = time.perf_counter() - t0

    summary = selection.summary
    videos = gen_report.get("videos", [])
    report = {
        "schema": "sta-search/demo-report/v1",
        **provenance(device),
        "model": "tiny",
        "device": device,
        "steps": steps,
        "tile": list(tile),
        "canvas": list(profile.canvas),
        "budget": settings.budget,
        "profiled_prompts": quick,
        "heldout_prompts": heldout,
        "selection": {k: summary.get(k) for k in ("density", "overall_density", "predicted_speedup",
                                                  "predicted_error", "heldout_error", "dense_step_count")},
        "videos": [{"prompt": v["prompt"], "video": f"videos/{v['video']}",
                    "dense_video": f"videos/{v['dense_video']}" if "dense_video" in v else None,
                    "side_by_side": f"videos/{v['side_by_side']}" if "side_by_side" in v else None,
                    "fidelity": v.get("fidelity"), "speedup": v.get("speedup")} for v in videos],
        "heatmaps": [str(Path(p).relative_to(out)) for p in pictures],
        "mask": "mask.yaml",
        "frames_png": strip.name if strip else None,
        "timings": {k: round(v, 2) for k, v in timings.items()},
    }
    write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", _markdown(report))
    console.print(f"demo written to {out} in {timings['total_s']:.0f} s (report.md)")
    return report


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
    sel = report["selection"]
    lines = [
        "# sta-search demo (bundled tiny model)",
        "",
        f"Device `{report['device']}`, {report['steps']} steps, canvas {report['canvas']}, tile {report['tile']}.",
        "",
        "## Selection",
        "",
        f"- budget (density of the sparse steps): {report['budget']}",
        f"- density of the chosen windows: {_fmt(sel['density'])}; overall with "
        f"{sel['dense_step_count']} dense steps: {_fmt(sel['overall_density'])}",
        f"- predicted attention speedup: {_fmt(sel['predicted_speedup'], '.2f')}x",
        f"- predicted relative error (profiled prompts): {_fmt(sel['predicted_error'])}; "
        f"held-out (cross-validated): {_fmt(sel['heldout_error'])}",
        "",
        "## Held-out prompts: STA vs dense (same seed)",
        "",
        "| prompt | PSNR dB | SSIM | speedup (median step) | videos |",
        "|---|---|---|---|---|",
    ]
    for v in report["videos"]:
        fid = v.get("fidelity") or {}
        speed = (v.get("speedup") or {}).get("median_step")
        lines.append(f"| {v['prompt']} | {_fmt(fid.get('psnr_db'), '.2f')} | {_fmt(fid.get('ssim'), '.4f')} | "
                     f"{_fmt(speed, '.2f')} | [STA]({v['video']}) [dense]({v['dense_video']}) "
                     f"[side by side]({v['side_by_side']}) |")
    if report.get("frames_png"):
        lines += ["", "Frames (each pair: dense | STA):", "", f"![frames]({report['frames_png']})"]
    lines += ["", "## Files", "", f"- mask config: [{report['mask']}]({report['mask']})",
              *[f"- ![{p}]({p})" for p in report["heatmaps"]], "- profile: profile/",
              "", "## Timings (s)", "", *[f"- {k}: {v}" for k, v in report["timings"].items()], ""]
    return "\n".join(lines)
