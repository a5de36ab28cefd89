"""``sta-search profile``: measure attention locality of a diffusers video model over a prompt set."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("profile")
    def profile(
        model: str = typer.Argument(..., help="Local diffusers pipeline folder, or the name of a bundled model (e.g. tiny)."),
        prompts: str = typer.Option(..., "--prompts", help="Prompts file: one a line, '#' comments and blank lines "
                                    "skipped; or a bundled set: 'default' (16) or 'quick' (4)."),
        steps: Optional[int] = typer.Option(None, "--steps", help="Denoising steps (default: the model folder's "
                                            "sta_search.json, else 50)."),
        height: Optional[int] = typer.Option(None, "--height", help="Video height in pixels (default: sta_search.json, else the pipeline's)."),
        width: Optional[int] = typer.Option(None, "--width", help="Video width in pixels (default: sta_search.json, else the pipeline's)."),
        frames: Optional[int] = typer.Option(None, "--frames", help="Number of frames (default: sta_search.json, else the pipeline's)."),
        seed: int = typer.Option(0, "--seed", help="Prompt i uses seed + i."),
        profile_steps: str = typer.Option("all", "--profile-steps", help="'all', or k: profile every k-th step (0, k, 2k, ...)."),
        tile: Optional[str] = typer.Option(None, "--tile", help="STA tile t,h,w in tokens (product a multiple of 16; "
                                           "default: the model folder's sta_search.json, else 6,8,8)."),
        windows: Optional[List[str]] = typer.Option(None, "--windows", help="Error shortlist windows t,h,w (repeat, or "
                                                    "separate with ';'); default: one tile to full, incl. anisotropic."),
        out: Path = typer.Option(Path("sta-profile"), "--out", help="Profile folder to write."),
        resume: bool = typer.Option(False, "--resume", help="Continue the profile in --out (same settings required)."),
        device: Optional[str] = typer.Option(None, "--device", help="cuda, cuda:1 or cpu (default: cuda when available)."),
        dtype: Optional[str] = typer.Option(None, "--dtype", help="bfloat16 | float16 | float32 (default bf16 on CUDA, fp32 on CPU)."),
    ):
        """Run MODEL with full attention over a prompt set and record, for every profiled (step, layer, head),
        the recall of every STA window, the attention mass by tile offset and the output error of a window
        shortlist. The artifact is rewritten atomically after each prompt; --resume continues it."""
        from rich.console import Console
        from rich.table import Table

        from ..profile import ProfileSettings, parse_tile, read_prompts, run_profile, summary_rows, summary_windows
        from ..stats import parse_windows

        console = Console(stderr=True)
        _quiet_loading_bars()
        from ..models import model_defaults

        defaults = model_defaults(model)
        settings = ProfileSettings(
            model=model, prompts=tuple(read_prompts(prompts)), steps=steps or int(defaults.get("steps", 50)),
            height=height or defaults.get("height"), width=width or defaults.get("width"),
            frames=frames or defaults.get("frames"), seed=seed, profile_steps=profile_steps,
            tile=parse_tile(tile or defaults.get("tile", (6, 8, 8))),
            windows=parse_windows(windows) if windows else None, device=device, dtype=dtype,
        )
        from ..distributed import launched_by_torchrun, sharded_profile

        if launched_by_torchrun():  # torchrun --nproc-per-node N: prompts sharded over the ranks
            rank0 = os.environ.get("RANK", "0") == "0"
            with _RichProgress(console, enabled=rank0) as sink:
                result = sharded_profile(settings, out, resume=resume, progress=sink)
            if result is None:  # ranks other than 0: rank 0 combines the shards and prints the summary
                return
        else:
            with _RichProgress(console) as sink:
                result = run_profile(settings, out, resume=resume, progress=sink)
        chosen = summary_windows(result)
        table = Table(title=f"mean recall per layer ({result.num_prompts} prompts, "
                            f"{len(result.profile_steps)} profiled steps)")
        table.add_column("layer", justify="right")
        for w in chosen:
            table.add_column(f"{w[0]},{w[1]},{w[2]} ({result.geometry.tile_density(w):.0%})", justify="right")
        for layer, values in summary_rows(result, chosen):
            table.add_row(str(layer), *(f"{v:.3f}" for v in values))
        Console().print(table)
        Console().print(f"profile written to {out}")


def _quiet_loading_bars() -> None:
    """diffusers/transformers print their own loading bars; ours are enough."""
    try:
        import diffusers.utils.logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
        import transformers.utils.logging as transformers_logging

        transformers_logging.disable_progress_bar()
    except Exception:  # cosmetic only
        pass


class _RichProgress:
    """Rich progress bars over prompts and over the steps of the current prompt."""

    def __init__(self, console, enabled: bool = True):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), console=console, transient=False, disable=not enabled)
        self._prompts = None
        self._steps = None
        self._num_steps = 0

    def __enter__(self):
        self._progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self._progress.__exit__(*exc)

    def start(self, total_prompts, done_prompts, steps):
        self._num_steps = steps
        self._prompts = self._progress.add_task("prompts", total=total_prompts, completed=done_prompts)
        self._steps = self._progress.add_task("steps", total=steps)

    def prompt_started(self, index, prompt):
        short = prompt if len(prompt) <= 48 else prompt[:45] + "..."
        self._progress.reset(self._steps, total=self._num_steps, description=f"steps  [dim]{short}[/]")

    def step_done(self, step):
        self._progress.update(self._steps, completed=step + 1)

    def prompt_done(self, index, profile):
        self._progress.update(self._prompts, completed=index + 1)
