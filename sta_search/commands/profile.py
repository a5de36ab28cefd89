"""``sta-search profile``: measure attention locality of a diffusers video model over a prompt set."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .. import options


def register(app: typer.Typer) -> None:
    @app.command("profile")
    def profile(
        model: str = typer.Argument(..., help="Local diffusers pipeline folder, or the name of a bundled model (e.g. tiny)."),
        prompts: str = typer.Option(..., "--prompts", help="Prompts file: one a line, '#' comments and blank lines "
                                    "skipped; or a bundled set: 'default' (16) or 'quick' (4)."),
        steps: Optional[int] = options.positive_option(None, "--steps", help="Denoising steps (default: the model "
                                                       "folder's sta_search.json, else 50).", maximum=options.MAX_STEPS),
        height: Optional[int] = options.positive_option(None, "--height", help="Video height in pixels (default: "
                                                        "sta_search.json, else the pipeline's).", maximum=options.MAX_PIXELS),
        width: Optional[int] = options.positive_option(None, "--width", help="Video width in pixels (default: "
                                                       "sta_search.json, else the pipeline's).", maximum=options.MAX_PIXELS),
        frames: Optional[int] = options.positive_option(None, "--frames", help="Number of frames (default: "
                                                        "sta_search.json, else the pipeline's).", maximum=options.MAX_FRAMES),
        seed: int = options.seed_option(help="Prompt i uses seed + i."),
        profile_steps: str = options.profile_steps_option(),
        profile_forwards: str = options.profile_forwards_option(),
        tile: Optional[str] = options.tile_option(help="STA tile t,h,w in tokens (product a multiple of 16; "
                                                  "default: the model folder's sta_search.json, else 6,8,8)."),
        windows: Optional[List[str]] = options.error_windows_option(
            help="Error shortlist windows t,h,w (repeat, or separate with ';'); default: one tile to full, incl. "
                 "anisotropic, laid out for a (5,6,10) tile grid and clipped to this one. 'proportional': the same "
                 "list scaled to this grid's proportions, so small grids do not get near-full windows (cheaper to "
                 "profile there)."),
        out: Path = typer.Option(Path("sta-profile"), "--out", help="Profile folder to write."),
        resume: bool = options.flag(False, "--resume", help="Continue the profile in --out (same settings required)."),
        device: Optional[str] = options.device_option(),
        dtype: Optional[str] = options.dtype_option(),
        image: Optional[str] = options.image_option(),
        cache: str = options.cache_option(help="diffusers step cache to profile under: none, first-block, "
                                          "taylorseer, taylorseer-lite, mag, faster, pab; steps it skips are "
                                          "recorded and select "
                                          "chooses windows for the computed steps only."),
        threads: Optional[int] = options.threads_option(),
        calibrate_steps: bool = options.flag(False, "--calibrate-steps", help="After profiling, measure how far an "
                                             "attention error at each profiled step moves the final video (a "
                                             "few more runs of the profiled prompts, sparse at one step at a time) "
                                             "and write step_sensitivity.json beside the profile; select then "
                                             "weighs each step's errors by it (--step-weights)."),
        calibrate_budget: float = options.density_option(0.3, "--calibrate-budget", help="Density of the probe "
                                                         "selection --calibrate-steps runs with."),
    ):
        """Run MODEL with full attention over a prompt set and record, for every profiled (step, layer, head),
        the recall of every STA window, the attention mass by tile offset and the output error of a window
        shortlist. The artifact is rewritten atomically after each prompt; --resume continues it."""
        prompt_list = options.read_prompts(prompts)  # before the heavy imports: a bad file fails at once
        from ..errors import UserError
        from ..report import check_output_folder

        check_output_folder(out)
        from rich.console import Console
        from rich.table import Table

        from .. import distributed
        from ..models import model_defaults
        from ..profile import ProfileSettings, run_profile, summary_rows, summary_windows

        defaults = model_defaults(model)

        def default(value, key, fallback=None):
            return value if value is not None else defaults.get(key, fallback)

        settings = ProfileSettings(
            model=model, prompts=prompt_list, steps=int(default(steps, "steps", 50)),
            height=default(height, "height"), width=default(width, "width"), frames=default(frames, "frames"),
            seed=seed, profile_steps=profile_steps,
            tile=tile if tile is not None else options.parse_tile(defaults.get("tile", (6, 8, 8)),
                                                                  "tile of the model's sta_search.json"),
            windows=options.error_windows_setting(windows), device=device, dtype=dtype, image=image, cache=cache,
            profile_forwards=profile_forwards,
        )
        _quiet_loading_bars()
        console = Console(stderr=True)
        choice = None
        if threads is not None or options.resolve_device(device).type == "cpu":
            from ..cpu_threads import apply_threads

            choice = apply_threads(threads)  # said with the result: an input error stays one line
        loaded = None
        if calibrate_steps:
            if distributed.launched_by_torchrun():
                raise UserError("--calibrate-steps runs in one process: profile under torchrun, then run "
                                "`sta-search profile ... --resume --calibrate-steps` without it")
            import torch

            from ..models import load_model
            from ..sensitivity import check_calibratable

            check_calibratable(cache, image)

            device_name = str(options.resolve_device(device))
            loaded = load_model(model, device_name, getattr(torch, options.dtype_name(dtype, device_name)))
        if distributed.launched_by_torchrun():  # torchrun --nproc-per-node N: prompts sharded over the ranks
            with distributed.session(), _RichProgress(console, enabled=distributed.is_main_process()) as sink:
                result = distributed.sharded_profile(settings, out, resume=resume, progress=sink)
            if result is None:  # ranks other than 0: rank 0 combines the shards and prints the summary
                return
        else:
            with _RichProgress(console) as sink:
                result = run_profile(settings, out, resume=resume, progress=sink, loaded=loaded)
        chosen = summary_windows(result)
        table = Table(title=f"mean recall per layer ({result.num_prompts} prompts, "
                            f"{len(result.profile_steps)} profiled steps)")
        table.add_column("layer", justify="right")
        for w in chosen:
            table.add_column(f"{w[0]},{w[1]},{w[2]} ({result.geometry.tile_density(w):.0%})", justify="right")
        for layer, values in summary_rows(result, chosen):
            table.add_row(str(layer), *(f"{v:.3f}" for v in values))
        Console().print(table)
        if calibrate_steps:
            from ..sensitivity import calibrate_profile

            console.print(f"calibrating step weights on {result.num_prompts} prompt(s) (probe: the budget solver at "
                          f"density {calibrate_budget:g})", markup=False, highlight=False)
            sensitivity = calibrate_profile(out, loaded, calibrate_budget,
                                            progress=lambda line: console.print("  " + line, markup=False,
                                                                                highlight=False))
            Console().print(sensitivity.weights_line(), highlight=False)
        where = result.header.get("statistics")
        Console().print(f"profile written to {out}" + (f" (statistics: {where.split(':')[0]})" if where else "")
                        + (f"; torch CPU threads: {choice.threads} ({choice.why})" if choice else ""),
                        markup=False, highlight=False)


def _quiet_loading_bars() -> None:
    """diffusers/transformers print their own loading bars; ours are enough."""
    try:
        import diffusers.utils.logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
        import transformers.utils.logging as transformers_logging

        transformers_logging.disable_progress_bar()
    except Exception:  # cosmetic only
        pass


def _RichProgress(console, enabled: bool = True):
    """Live bars on a terminal; plain lines (``profile.LogProgress``) when stderr is a log or a pipe, where
    rich hides its bars and a long prompt would otherwise print nothing for minutes."""
    if enabled and not console.is_terminal:
        from ..profile import LogProgress

        return _Plain(LogProgress(lambda line: console.print(line, markup=False, highlight=False)))
    return _LiveProgress(console, enabled)


class _Plain:
    def __init__(self, sink):
        self.sink = sink

    def __enter__(self):
        return self.sink

    def __exit__(self, *exc):
        return False


class _LiveProgress:
    """Rich progress bars over prompts and over the steps of the current prompt.

    The live display starts with the first progress callback, not on entering the block: a run that fails
    its checks before the first prompt leaves no empty bar (a blank line) above its error message."""

    def __init__(self, console, enabled: bool = True):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), console=console, transient=False, disable=not enabled)
        self._live = False
        self._prompts = None
        self._steps = None
        self._num_steps = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._live:
            self._progress.stop()
        return False

    def start(self, total_prompts, done_prompts, steps):
        if not self._live:
            self._progress.start()
            self._live = True
        self._num_steps = steps
        self._prompts = self._progress.add_task("prompts", total=total_prompts, completed=done_prompts)
        self._steps = self._progress.add_task("steps", total=steps)

    def prompt_started(self, index, prompt):
        from rich.markup import escape

        short = prompt if len(prompt) <= 48 else prompt[:45] + "..."
        self._progress.reset(self._steps, total=self._num_steps, description=f"steps  [dim]{escape(short)}[/]")

    def step_done(self, step):
        self._progress.update(self._steps, completed=step + 1)

    def prompt_done(self, index, profile):
        self._progress.update(self._prompts, completed=index + 1)
