"""``sta-search merge``: combine profiles of the same setup exactly (sums added, prompts appended), or mask
configs of the same model for different canvases into one multi-canvas mask config."""

from __future__ import annotations

from typing import List

import typer

from .. import options


def register(app: typer.Typer) -> None:
    @app.command("merge")
    def merge_command(
        profiles: List[str] = typer.Argument(..., help="Profile folders of the same model, canvas, tile, steps and windows; or mask config YAML files of one model for different canvases."),
        out: str = typer.Option(..., "--out", help="Folder for the merged profile (or YAML file for merged mask configs)."),
        force: bool = options.flag(False, "--force", help="Replace --out if it exists."),
    ):
        """Merge profiles exactly (sums and counts added, per-prompt statistics concatenated), or mask configs
        for different canvases into one multi-canvas config (one entry per canvas; the first file's first)."""
        from pathlib import Path

        from ..errors import UserError
        from ..report import check_output_folder, writing

        if len(profiles) < 2:
            raise UserError("merge needs two or more profiles (or mask configs)")
        target = Path(out)
        if target.exists() and not force:
            raise UserError(f"--out {out} exists; pass --force to replace it")
        files = [Path(p).is_file() for p in profiles]
        if any(files):
            if not all(files):
                raise UserError("merge takes profile folders or mask config files, not both: "
                                + ", ".join(p for p, f in zip(profiles, files) if f))
            from ..maskconfig import MaskConfig
            from ..report import check_output_file

            check_output_file(target, force=force)  # before any work
            combined = MaskConfig.combine([MaskConfig.load(p) for p in profiles])
            with writing(target, "the merged mask config"):
                combined.save(target)
            typer.echo(f"merged {len(profiles)} mask configs into {out}: canvases "
                       + ", ".join(str(list(c)) for c in combined.canvases))
            return
        check_output_folder(target)  # before any work
        from ..artifacts import Profile, merge_profiles

        merged = merge_profiles([Profile.load(p) for p in profiles])
        with writing(target, "the merged profile"):
            merged.save(target)
        typer.echo(f"merged {len(profiles)} profiles ({merged.num_prompts} prompts) into {out}")
