"""``sta-search inspect``: tables (and pictures with --plot) of a profile or a mask config."""

from __future__ import annotations

from typing import Optional

import typer

from .. import options


def register(app: typer.Typer) -> None:
    @app.command("inspect")
    def inspect_command(
        path: str = typer.Argument(..., help="A profile folder or a mask config YAML."),
        layer: Optional[int] = options.non_negative_option(None, "--layer", help="Only this layer in the tables; the layer of the offset-mass picture (default 0)."),
        head: Optional[int] = options.non_negative_option(None, "--head", help="Head of the offset-mass picture (default 0)."),
        window: Optional[str] = options.triple_option(None, "--window", help="Window t,h,w (tiles) for the recall table and heatmap (default 3,3,3 clipped to the grid)."),
        step: Optional[int] = options.non_negative_option(None, "--step", help="One denoising step (profiles: the nearest profiled step) instead of the mean."),
        plot: Optional[str] = typer.Option(None, "--plot", help="Folder to write PNG pictures into."),
    ):
        """Show recall per layer and head, density per layer, a window histogram; --plot writes PNGs."""
        from ..report import check_output_folder, removed_if_left_empty

        if plot is not None:
            check_output_folder(plot, "--plot")  # before any work
        from rich.console import Console

        from ..inspect import inspect_path

        with removed_if_left_empty(plot) if plot is not None else _nothing():
            tables, pictures = inspect_path(path, window=window, layer=layer, head=head, step=step, plot=plot)
        console = Console()
        for table in tables:
            console.print(table)
        for picture in pictures:
            console.print(f"wrote {picture}", markup=False, highlight=False)


def _nothing():
    import contextlib

    return contextlib.nullcontext()
