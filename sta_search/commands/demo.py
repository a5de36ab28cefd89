"""``sta-search demo``: profile -> select -> generate on the bundled tiny model, into outputs/demo/."""

from __future__ import annotations

from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo_command(
        out: str = typer.Option("outputs/demo", "--out", help="Output folder (videos, heatmaps, mask.yaml, report.md)."),
        budget: float = typer.Option(0.3, "--budget", help="Attention density budget of the sparse steps, in (0, 1]."),
        quick_prompts: int = typer.Option(4, "--quick-prompts", help="Prompts to profile."),
        heldout_prompts: int = typer.Option(2, "--heldout-prompts", help="Held-out prompts to generate dense and STA."),
        steps: Optional[int] = typer.Option(None, "--steps", help="Denoising steps (default: the model's sta_search.json)."),
        full_steps: Optional[int] = typer.Option(None, "--full-steps", help="Leading steps kept dense (default: select's)."),
        profile_every: int = typer.Option(4, "--profile-every", help="Profile every k-th denoising step."),
        seed: int = typer.Option(0, "--seed", help="Random seed of every generation."),
        device: Optional[str] = typer.Option(None, "--device", help="torch device (default: cuda if available)."),
        backend: str = typer.Option("auto", "--backend", help="STA kernel backend: auto, gluon, triton, flex, reference."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out folder."),
    ):
        """Profile the bundled tiny model, select windows at a budget, generate dense vs STA and report."""
        from ..errors import UserError
        from ..tiny.demo import DemoSettings, run_demo

        if backend not in ("auto", "gluon", "triton", "flex", "reference"):
            raise UserError(f"--backend {backend!r} is not one of auto, gluon, triton, flex, reference")
        run_demo(DemoSettings(out=out, budget=budget, quick_prompts=quick_prompts, heldout_prompts=heldout_prompts,
                              steps=steps, full_steps=full_steps, profile_every=profile_every, seed=seed, device=device, backend=backend,
                              overwrite=overwrite))
