"""``sta-search merge``: combine profiles of the same setup exactly (sums added, prompts appended)."""

from __future__ import annotations

from typing import List

import typer

from .. import options


def register(app: typer.Typer) -> None:
    @app.command("merge")
    def merge_command(
        profiles: List[str] = typer.Argument(..., help="Profile folders of the same model, canvas, tile, steps and windows."),
        out: str = typer.Option(..., "--out", help="Folder for the merged profile."),
        force: bool = options.flag(False, "--force", help="Replace --out if it exists."),
    ):
        """Merge profiles exactly: sums and counts added, per-prompt statistics concatenated."""
        from pathlib import Path

        from ..errors import UserError
        from ..report import check_output_folder, writing

        if len(profiles) < 2:
            raise UserError("merge needs two or more profiles")
        target = Path(out)
        if target.exists() and not force:
            raise UserError(f"--out {out} exists; pass --force to replace it")
        check_output_folder(target)  # before any work
        from ..artifacts import Profile, merge_profiles

        merged = merge_profiles([Profile.load(p) for p in profiles])
        with writing(target, "the merged profile"):
            merged.save(target)
        typer.echo(f"merged {len(profiles)} profiles ({merged.num_prompts} prompts) into {out}")
