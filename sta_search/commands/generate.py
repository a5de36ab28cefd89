"""``sta-search generate``: videos with a mask config, optionally against dense attention."""

from __future__ import annotations

from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("generate")
    def generate_command(
        model: str = typer.Argument(..., help="Local diffusers pipeline folder, or the bundled model's name."),
        mask: str = typer.Option(..., "--mask", help="Mask config YAML (from `sta-search select`)."),
        prompt: Optional[str] = typer.Option(None, "--prompt", help="One prompt."),
        prompts: Optional[str] = typer.Option(None, "--prompts", help="File with one prompt a line."),
        seed: int = typer.Option(0, "--seed", help="Random seed (the dense comparison uses the same)."),
        steps: Optional[int] = typer.Option(None, "--steps", help="Denoising steps (default: the config's)."),
        height: Optional[int] = typer.Option(None, "--height", help="Video height in pixels (default: from the config's canvas)."),
        width: Optional[int] = typer.Option(None, "--width", help="Video width in pixels (default: from the config's canvas)."),
        frames: Optional[int] = typer.Option(None, "--frames", help="Number of frames (default: from the config's canvas)."),
        dtype: Optional[str] = typer.Option(None, "--dtype", help="float32, bfloat16 or float16 (default: bfloat16 on CUDA, float32 on CPU)."),
        device: Optional[str] = typer.Option(None, "--device", help="torch device (default: cuda if available)."),
        out: str = typer.Option("sta-out", "--out", help="Output folder for the mp4 files and report.json."),
        compare_dense: bool = typer.Option(False, "--compare-dense", help="Also run dense attention with the same seed: PSNR/SSIM, side-by-side video, speedup."),
        compile: bool = typer.Option(False, "--compile", help="torch.compile the transformer blocks (both sides of a comparison)."),
        backend: str = typer.Option("auto", "--backend", help="STA kernel backend: auto (gluon on Hopper, else triton on CUDA), gluon, triton, flex, reference."),
        fps: Optional[int] = typer.Option(None, "--fps", help="Frames per second of the mp4 files (default: per model family)."),
        warmup_steps: int = typer.Option(0, "--warmup-steps", help="Untimed short run(s) of this many steps first "
                                         "(recommended with --compile and for timing comparisons)."),
        ulysses: int = typer.Option(1, "--ulysses", help="Sequence-parallel degree (Wan): launch with "
                                    "`torchrun --nproc-per-node N -m sta_search generate ... --ulysses N`."),
    ):
        """Generate videos with the Sliding Tile Attention windows of a mask config."""
        from ..errors import UserError
        from ..generate import GenerateSettings, generate, read_prompts

        if backend not in ("auto", "gluon", "triton", "flex", "reference"):
            raise UserError(f"--backend {backend!r} is not one of auto, gluon, triton, flex, reference")
        settings = GenerateSettings(model=model, mask=mask, prompts=read_prompts(prompt, prompts), out=out, seed=seed,
                                    steps=steps, height=height, width=width, frames=frames, dtype=dtype, device=device,
                                    compare_dense=compare_dense, compile=compile, backend=backend, fps=fps,
                                    warmup_steps=warmup_steps, ulysses=ulysses)
        from ..distributed import shutdown

        try:
            report = generate(settings)
        except BaseException as exc:
            if not getattr(exc, "every_rank", False):  # such an error keeps the group: the ranks exit together
                shutdown()
            raise
        shutdown()
        import os

        if os.environ.get("RANK", "0") == "0":
            typer.echo(f"wrote {len(report['videos'])} video(s) and report.json to {out}")
