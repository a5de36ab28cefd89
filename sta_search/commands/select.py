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
        profiles: List[str] = typer.Argument(..., help="Profile folder(s) from `sta-search profile`; several are merged exactly."),
        budget: Optional[float] = options.density_option(None, "--budget", help="Mean attention density of the sparse steps, in (0, 1]."),
        sparsity: Optional[float] = options.fraction_option(None, "--sparsity", help="1 - density of the sparse steps."),
        speedup: Optional[float] = options.positive_float_option(None, "--speedup", help=f"Attention speedup over all steps (dense steps included), through the cost model calibrated on an {gpu} (Gluon kernel in place vs cuDNN dense; see --bench-results)."),
        full_steps: Optional[int] = options.non_negative_option(None, "--full-steps", help="Dense steps at the start (default: round(0.24 * steps), the paper's 12 of 50).", maximum=options.MAX_STEPS),
        granularity: str = typer.Option("step", "--granularity", help="step: a window per (step, layer, head); layer: one per (layer, head) for all sparse steps."),
        objective: str = typer.Option("error", "--objective", help="error: relative L2 output error; recall: 1 - attention recall."),
        strategy: str = typer.Option("budget", "--strategy", help="budget: optimal under the budget; argmin: FastVideo's per-head argmin (no budget)."),
        candidates: str = typer.Option("auto", "--candidates", help="shortlist (windows with measured errors) or all (every window; recall only) (default: shortlist for error, all for recall)."),
        folds: int = options.positive_option(5, "--folds", help="Folds over prompts for the held-out error (leave-one-out with fewer prompts).", maximum=options.MAX_PROMPTS),
        results: Optional[str] = typer.Option(None, "--bench-results", help=f"Folder of kernel-*.json benchmarks (`sta-search bench`) to fit the cost model to, for another GPU (default: the packaged calibration, measured on an {gpu})."),
        out: str = typer.Option("mask.yaml", "--out", help="Mask config YAML to write (an existing file only with --force)."),
        force: bool = options.flag(False, "--force", help="Replace --out if it exists."),
    ):
        """Choose a window for every (step, layer, head) that minimises error under a density budget."""
        from ..report import check_output_file, writing

        check_output_file(out, force=force)  # before any work
        from rich.console import Console

        from ..artifacts import Profile, merge_profiles
        from ..inspect import summary_table, window_histogram
        from ..maskconfig import format_window
        from ..select import SelectOptions, select_windows

        loaded = [Profile.load(p) for p in profiles]
        profile = merge_profiles(loaded)
        options = SelectOptions(budget=budget, sparsity=sparsity, speedup=speedup, full_steps=full_steps,
                                granularity=granularity, objective=objective, strategy=strategy,
                                candidates=candidates, folds=folds, results_dir=results)
        selection = select_windows(profile, options)
        with writing(out, "the mask config", kept="nothing was written"):
            selection.config.save(out)
        console = Console()
        title = f"selected windows ({len(loaded)} profile(s), {profile.num_prompts} prompt(s)) -> {out}"
        console.print(summary_table(selection.summary, title=title))
        histogram = window_histogram(selection.config)
        total = sum(n for _, n in histogram) or 1
        geometry = selection.config.geometry
        console.print("windows of the sparse steps: " + ", ".join(
            f"{format_window(w)} {n / total:.0%} (density {geometry.density(w):.3f})" for w, n in histogram[:8])
            + (f", ... ({len(histogram) - 8} more)" if len(histogram) > 8 else ""), highlight=False)
