"""``sta-search select``: windows per (step, layer, head) under a compute budget, written as a mask config."""

from __future__ import annotations

from typing import List, Optional

import typer

from .. import options


def register(app: typer.Typer) -> None:
    from ..costmodel import calibration_device

    gpu = calibration_device()

    @app.command("select")
    def select_command(
        profiles: Optional[List[str]] = typer.Argument(None, help="Profile folder(s) from `sta-search profile`; several are merged exactly."),
        budget: Optional[float] = options.density_option(None, "--budget", help="Mean attention density of the sparse steps, in (0, 1]."),
        sparsity: Optional[float] = options.fraction_option(None, "--sparsity", help="1 - density of the sparse steps."),
        speedup: Optional[float] = options.positive_float_option(None, "--speedup", help=f"Attention speedup over all steps (dense steps included), through the cost model calibrated on an {gpu} (Gluon kernel in place vs cuDNN dense; see --bench-results)."),
        full_steps: Optional[int] = options.non_negative_option(None, "--full-steps", help="Dense steps at the start (default: round(0.24 * steps), the paper's 12 of 50).", maximum=options.MAX_STEPS),
        granularity: str = typer.Option("step", "--granularity", help="step: a window per (step, layer, head); layer: one per (layer, head) for all sparse steps."),
        objective: str = typer.Option("error", "--objective", help="error: relative L2 output error; squared-error: its square (the total then weighs the worst (step, layer, head) entries more, as a video's squared error would if the errors added independently); recall: 1 - attention recall."),
        step_weights: str = typer.Option("auto", "--step-weights", help="auto: weigh each profiled step's errors by how far they move the final video, where the profile folder holds that measurement (profile --calibrate-steps; several folders: their mean); none: every step counts the same."),
        budget_scope: str = typer.Option("run", "--budget-scope", help="run: the budget holds for the sparse steps together (the solver may give some steps more density than others); step: every sparse step holds it on its own (constant attention cost per step)."),
        strategy: str = typer.Option("budget", "--strategy", help="budget: optimal under the budget; argmin: FastVideo's per-head argmin (no budget)."),
        candidates: str = typer.Option("auto", "--candidates", help="shortlist (windows with measured errors) or all (every window; recall only) (default: shortlist for error, all for recall)."),
        folds: int = options.positive_option(5, "--folds", help="Folds over prompts for the held-out error (leave-one-out with fewer prompts).", maximum=options.MAX_PROMPTS),
        heldout_tolerance: float = options.positive_float_option(0.1, "--heldout-tolerance", help="Warn (exit 0) that the profile is too small to trust when the k-fold held-out error exceeds the in-sample error by more than this fraction (docs/selection.md)."),
        results: Optional[str] = typer.Option(None, "--bench-results", help=f"Folder of kernel-*.json benchmarks (`sta-search bench`) to fit the cost model to, for another GPU (default: the packaged calibration, measured on an {gpu})."),
        canvas: Optional[str] = options.canvas_option(help="Write the config for this token canvas T,H,W instead of the profile's (a transfer; see --transfer)."),
        height: Optional[int] = options.positive_option(None, "--height", help="Like --canvas, from pixel sizes (with the model's patch size and VAE factors from the profile header; missing ones default to the profile's)."),
        width: Optional[int] = options.positive_option(None, "--width", help="See --height."),
        frames: Optional[int] = options.positive_option(None, "--frames", help="See --height."),
        transfer: Optional[str] = typer.Option(None, "--transfer", help="How to carry windows to another canvas: resolve (re-solve from the profile's attention mass by tile offset; default with a profile), same_fraction (same share of the tile grid per axis; default with --from-mask), same_tiles (same tile counts, clipped)."),
        beyond: str = typer.Option("edge", "--beyond", help="resolve: mass at offsets beyond the profiled grid: edge (that of the nearest measured offset) or zero."),
        from_mask: Optional[str] = typer.Option(None, "--from-mask", help="Transfer this mask config to --canvas (same_tiles or same_fraction) instead of selecting from a profile."),
        add_to: Optional[str] = typer.Option(None, "--add-to", help="Add the result to this mask config file (created if missing) as one more canvas entry, replacing an entry for the same canvas; written to --out, default this file."),
        precision: str = options.precision_option(help="The precision generate will run at (--precision there), for --speedup's cost model: bf16; fp8 or int8 (the 8-bit Gluon kernel: its rows in --bench-results, else the packaged calibration scaled by the 8-bit kernel's speed measured on an H200). Needs --speedup."),
        out: Optional[str] = typer.Option(None, "--out", help="Mask config YAML to write (default: mask.yaml, or the --add-to file)."),
        force: bool = options.flag(False, "--force", help="Replace --out if it exists (with --add-to, the file added to may always be rewritten)."),
    ):
        """Choose a window for every (step, layer, head) that minimises error under a density budget.

        With --canvas (or --height/--width/--frames) the config is written for that canvas, carried over from
        the profile's by --transfer; --add-to keeps several canvases in one file.
        """
        from pathlib import Path

        import numpy as np

        from ..report import check_output_file, writing

        from rich.console import Console

        from ..artifacts import Profile, merge_profiles
        from ..inspect import summary_table, window_histogram
        from ..maskconfig import format_window
        from ..select import SelectOptions, select_windows
        from ..errors import UserError
        from ..maskconfig import MaskConfig
        from ..transfer import RULES, canvas_from_pixels, resolve_from_offsets, transfer_config

        if transfer is not None and transfer not in RULES:
            raise UserError(f"--transfer {transfer!r} is not one of {', '.join(RULES)}")
        target = options.canvas_from_option(canvas, height, width, frames)
        out = out or add_to or "mask.yaml"
        check_output_file(out, force=force or (add_to is not None and Path(out) == Path(add_to)))  # before any work
        if from_mask is not None:
            if profiles:
                raise UserError("give profile folders or --from-mask, not both")
            if target is None or target == "pixels":
                raise UserError("--from-mask needs --canvas T,H,W (a mask config does not record pixel sizes)")
            given = [f"--{n}" for n, v in (("budget", budget), ("sparsity", sparsity), ("speedup", speedup)) if v is not None]
            if given:
                raise UserError(f"{', '.join(given)}: a config rule keeps the source's windows; budgets need a profile")
            source = MaskConfig.load(from_mask)
            config = transfer_config(source, target, transfer or "same_fraction")
            summary, title = config.summary, f"{from_mask} -> canvas {list(config.canvas)} ({transfer or 'same_fraction'})"
        else:
            if not profiles:
                raise UserError("give one or more profile folders (or --from-mask FILE with --canvas)")
            loaded = [Profile.load(p) for p in profiles]
            profile = merge_profiles(loaded)
            if target == "pixels":
                target = canvas_from_pixels(profile.header, height, width, frames)
            if step_weights not in ("auto", "none"):
                raise UserError(f"--step-weights {step_weights!r} is not one of auto, none")
            weights = None
            if step_weights == "auto":
                from ..sensitivity import load_step_weights

                measured = [w for w in (load_step_weights(p, profile) for p in profiles) if w is not None]
                if measured:
                    weights = tuple(float(x) for x in np.mean([w for w, _ in measured], axis=0))
            if precision != "bf16" and speedup is None:
                raise UserError(f"--precision {precision} only changes --speedup's cost model; give --speedup, or "
                                "leave --precision out (generate --precision chooses the kernel)")
            opts = SelectOptions(budget=budget, sparsity=sparsity, speedup=speedup, full_steps=full_steps,
                                 budget_scope=budget_scope, step_weights=weights,
                                 granularity=granularity, objective=objective, strategy=strategy,
                                 candidates=candidates, folds=folds, results_dir=results, precision=precision,
                                 heldout_tolerance=heldout_tolerance)
            if transfer is not None and target is None:
                raise UserError("--transfer needs --canvas T,H,W (or --height/--width/--frames)")
            rule = None if target is None or tuple(target) == tuple(profile.canvas) else (transfer or "resolve")
            if rule == "resolve":
                config = resolve_from_offsets(profile, target, opts, beyond=beyond).config
            elif rule is not None:
                config = transfer_config(select_windows(profile, opts).config, target, rule)
            else:
                config = select_windows(profile, opts).config
            summary = config.summary
            title = f"selected windows ({len(loaded)} profile(s), {profile.num_prompts} prompt(s))" + (
                f", {rule} from canvas {list(profile.canvas)} to {list(config.canvas)}" if rule else "")
        written = config
        if add_to is not None:
            existing = MaskConfig.load(add_to) if Path(add_to).exists() else None
            if existing is not None:
                written = MaskConfig.combine([existing, config], replace=True)
        with writing(out, "the mask config", kept="nothing was written"):
            written.save(out)
        selection_config = config
        title += f" -> {out}" + (f" ({len(written.canvases)} canvases)" if written.alternates else "")
        console = Console()
        console.print(summary_table(summary, title=title))
        histogram = window_histogram(selection_config)
        total = sum(n for _, n in histogram) or 1
        geometry = selection_config.geometry
        console.print("windows of the sparse steps: " + ", ".join(
            f"{format_window(w)} {n / total:.0%} (density {geometry.density(w):.3f})" for w, n in histogram[:8])
            + (f", ... ({len(histogram) - 8} more)" if len(histogram) > 8 else ""), highlight=False)
        if summary.get("profile_warning"):  # too small a profile: a warning, not an error
            from rich.text import Text

            Console(stderr=True, soft_wrap=True).print(
                Text.assemble(("warning:", "bold yellow"), " ", str(summary["profile_warning"])), highlight=False)
