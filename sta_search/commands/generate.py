"""``sta-search generate``: videos with a mask config, optionally against dense attention."""

from __future__ import annotations

from typing import Optional

import typer

from .. import options


def register(app: typer.Typer) -> None:
    @app.command("generate")
    def generate_command(
        model: str = typer.Argument(..., help="Local diffusers pipeline folder, or the bundled model's name."),
        mask: str = typer.Option(..., "--mask", help="Mask config YAML (from `sta-search select`)."),
        prompt: Optional[str] = typer.Option(None, "--prompt", help="One prompt."),
        prompts: Optional[str] = typer.Option(None, "--prompts", help="File with one prompt a line, or a bundled "
                                              "set: 'default' (16) or 'quick' (4)."),
        seed: int = options.seed_option(help="Random seed (the dense comparison uses the same)."),
        steps: Optional[int] = options.positive_option(None, "--steps", help="Denoising steps (default: the config's).", maximum=options.MAX_STEPS),
        height: Optional[int] = options.positive_option(None, "--height", help="Video height in pixels (default: "
                                                        "from the config's canvas).", maximum=options.MAX_PIXELS),
        width: Optional[int] = options.positive_option(None, "--width", help="Video width in pixels (default: "
                                                       "from the config's canvas).", maximum=options.MAX_PIXELS),
        frames: Optional[int] = options.positive_option(None, "--frames", help="Number of frames (default: from "
                                                        "the config's canvas).", maximum=options.MAX_FRAMES),
        dtype: Optional[str] = options.dtype_option(),
        device: Optional[str] = options.device_option(),
        out: str = typer.Option("sta-out", "--out", help="Output folder for the mp4 files and report.json."),
        compare_dense: bool = options.flag(False, "--compare-dense", help="Also run dense attention with the same "
                                           "seed: PSNR/SSIM, side-by-side video, speedup."),
        compile: bool = options.flag(False, "--compile", help="torch.compile the transformer blocks (both sides "
                                     "of a comparison)."),
        backend: str = options.backend_option(),
        precision: str = options.precision_option(),
        fps: Optional[int] = options.positive_option(None, "--fps", help="Frames per second of the mp4 files "
                                                     "(default: per model family).", maximum=1000),
        warmup_steps: int = options.non_negative_option(0, "--warmup-steps", help="Untimed short run(s) of this "
                                                        "many steps first (recommended with --compile and for "
                                                        "timing comparisons).", maximum=options.MAX_STEPS),
        ulysses: int = options.positive_option(1, "--ulysses", help="Sequence-parallel degree (Wan): launch with "
                                               "`torchrun --nproc-per-node N -m sta_search generate ... --ulysses N`.", maximum=1024),
        image: Optional[str] = options.image_option(),
        cache: str = options.cache_option(),
        threads: Optional[int] = options.threads_option(),
        force: bool = options.flag(False, "--force", help="Replace the videos and report.json of an earlier run in "
                                   "--out (other files there are left alone)."),
    ):
        """Generate videos with the Sliding Tile Attention windows of a mask config."""
        prompt_list = options.prompts_from(prompt, prompts)  # before the heavy imports: a bad file fails at once
        from ..report import check_output_folder, earlier_run_files, removed_if_left_empty

        check_output_folder(out)
        earlier = earlier_run_files(out)
        if earlier and not force:
            from ..errors import UserError

            raise UserError(f"--out {out} already holds a run ({', '.join(p.name for p in earlier[:3])}"
                            f"{', ...' if len(earlier) > 3 else ''}); pass --force to replace it or choose another --out")
        from .. import distributed
        from ..generate import GenerateSettings, generate

        settings = GenerateSettings(model=model, mask=mask, prompts=prompt_list, out=out,
                                    seed=seed, steps=steps, height=height, width=width, frames=frames, dtype=dtype,
                                    device=device, compare_dense=compare_dense, compile=compile, backend=backend,
                                    precision=precision,
                                    fps=fps, warmup_steps=warmup_steps, ulysses=ulysses, image=image, cache=cache,
                                    threads=threads)
        if earlier and distributed.is_main_process():  # --force: only the earlier run's own files
            for path in earlier:
                path.unlink(missing_ok=True)
        with distributed.session(), removed_if_left_empty(out):
            report = generate(settings)
        if distributed.is_main_process():
            typer.echo(f"wrote {len(report['videos'])} video(s) and report.json to {out}")
