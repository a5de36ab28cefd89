"""``sta-search models``: the supported model families, from the registered adapters."""

from __future__ import annotations

import typer

from .. import options


def register(app: typer.Typer) -> None:
    @app.command("models")
    def models_command(
        dtype: str = typer.Option("bfloat16", "--dtype", help="Dtype the Hopper kernel column assumes "
                                  "(bfloat16, float16 or float32)."),
        as_json: bool = options.flag(False, "--json", help="Print JSON instead of a table."),
    ):
        """List every supported family: transformer classes, pipelines, how the text enters, released
        checkpoints' heads x head dim and the STA kernel `--backend auto` runs for them on Hopper."""
        import json

        from rich.console import Console
        from rich.table import Table

        from ..errors import UserError
        from ..models.catalog import supported_families

        if dtype not in ("bfloat16", "float16", "float32"):
            raise UserError(f"--dtype {dtype!r} is not one of bfloat16, float16, float32")
        entries = supported_families(dtype)
        console = Console(soft_wrap=as_json)
        if as_json:
            console.print_json(json.dumps([entry.to_dict() for entry in entries]))
            return
        table = Table(title=f"supported families (Hopper kernel for {dtype})")
        table.add_column("family", no_wrap=True)  # the name users type: never split
        for column in ("transformer", "pipelines", "text", "checkpoints: heads x dim -> kernel"):
            table.add_column(column, overflow="fold")
        for entry in entries:
            checkpoints = "\n".join(f"{n}: {h} x {d} -> {k}" for n, h, d, k in entry.checkpoints) or "-"
            table.add_row(entry.family, "\n".join(entry.transformer_classes), "\n".join(entry.pipelines) or "-",
                          entry.text_handling, checkpoints)
        console.print(table)
