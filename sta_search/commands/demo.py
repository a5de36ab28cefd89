"""``sta-search demo``: profile -> select -> generate on a bundled model (default tiny), into outputs/demo/."""

from __future__ import annotations

from typing import Optional

import typer

from .. import options


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo_command(
        out: str = typer.Option("outputs/demo", "--out", help="Output folder (videos, heatmaps, mask.yaml, report.md)."),
        model: str = typer.Option("tiny", "--model", help="Bundled model name (tiny or small) or a "
                                  "pipeline folder with a sta_search.json of recommended settings."),
        budget: float = options.density_option(0.3, "--budget", help="Attention density budget of the sparse "
                                               "steps, in (0, 1]."),
        quick_prompts: int = options.positive_option(4, "--quick-prompts", help="Prompts to profile.", maximum=1000),
        heldout_prompts: int = options.positive_option(2, "--heldout-prompts", help="Held-out prompts to generate "
                                                       "dense and STA.", maximum=1000),
        steps: Optional[int] = options.positive_option(None, "--steps", help="Denoising steps (default: the "
                                                       "model's sta_search.json).", maximum=options.MAX_STEPS),
        full_steps: Optional[int] = options.non_negative_option(None, "--full-steps", help="Leading steps kept "
                                                                "dense (default: select's).", maximum=options.MAX_STEPS),
        profile_every: int = options.positive_option(4, "--profile-every", help="Profile every k-th denoising step.", maximum=options.MAX_STEPS),
        seed: int = options.seed_option(help="Random seed of every generation."),
        device: Optional[str] = options.device_option(),
        backend: str = options.backend_option(),
        overwrite: bool = options.flag(False, "--overwrite", help="Replace a non-empty --out folder."),
        threads: Optional[int] = options.threads_option(maximum=None),
        calibrate_steps: bool = typer.Option(False, "--calibrate-steps/--no-calibrate-steps", help="After profiling, "
                                             "measure how far each profiled step's attention error moves the final "
                                             "video (a few more runs of the profiled prompts) and select with those "
                                             "step weights (profile --calibrate-steps). Off by default: on the "
                                             "2-core CPU it adds 70 s to the demo on one thread (tiny)."),
    ):
        """Profile a bundled model (tiny), select windows at a budget, generate dense vs STA and report."""
        from ..report import check_output_folder, removed_if_left_empty

        check_output_folder(out)  # before any work
        from ..demo import DemoSettings, run_demo

        with removed_if_left_empty(out):
            run_demo(DemoSettings(out=out, budget=budget, quick_prompts=quick_prompts,
                                  heldout_prompts=heldout_prompts, steps=steps, full_steps=full_steps,
                                  profile_every=profile_every, seed=seed, device=device, backend=backend,
                                  overwrite=overwrite, model=model, threads=threads,
                                  calibrate_steps=calibrate_steps))
