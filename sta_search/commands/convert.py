"""``sta-search convert``: FastVideo mask strategy JSON <-> our mask config YAML."""

from __future__ import annotations

from typing import Optional

import typer

from .. import options


def register(app: typer.Typer) -> None:
    @app.command("convert")
    def convert_command(
        file: str = typer.Argument(..., help="FastVideo JSON (with --to yaml) or mask config YAML (with --to fastvideo)."),
        to: str = typer.Option(..., "--to", help="yaml: import FastVideo JSON; fastvideo: export a mask config."),
        out: Optional[str] = typer.Option(None, "--out", help="Output file (default: FILE with .yaml or .json); an "
                                          "existing file only with --force."),
        force: bool = options.flag(False, "--force", help="Replace the output file if it exists."),
        canvas: Optional[str] = options.triple_option(None, "--canvas", help="Token canvas T,H,W (import; required)."),
        tile: str = options.tile_option("6,8,8", help="Tile size (import; FastVideo uses 6,8,8)."),
        layers: Optional[int] = options.positive_option(None, "--layers", help="Self-attention layers of the model (import) (default: from --model or the file).", maximum=10_000),
        heads: Optional[int] = options.positive_option(None, "--heads", help="Attention heads (import) (default: from --model or the file).", maximum=4096),
        steps: Optional[int] = options.positive_option(None, "--steps", help="Denoising steps (import) (default: from the file).", maximum=options.MAX_STEPS),
        model: Optional[str] = typer.Option(None, "--model", help="Diffusers folder to read family, class, layers and heads from (import)."),
        family: Optional[str] = typer.Option(None, "--family", help="Model family (import): wan, hunyuan_video, cogvideox."),
        transformer_class: Optional[str] = typer.Option(None, "--transformer-class", help="diffusers transformer class (import)."),
        text_len: int = options.non_negative_option(0, "--text-len", help="Joint text tokens (import; informative).", maximum=1 << 20),
        round_even_up: bool = options.flag(False, "--round-even-up", help="Export: write even windows w < n as w + 1 (FastVideo's reading)."),
        nearest: bool = options.flag(False, "--nearest", help="Export: write the nearest exportable config (tile 6,8,8, odd windows covering at least the same tokens)."),
    ):
        """Convert FastVideo's mask strategy JSON to a mask config YAML and back."""
        import json
        from pathlib import Path

        from ..convert import fastvideo_to_mask, load_fastvideo, mask_to_fastvideo, model_from_folder
        from ..errors import UserError
        from ..maskconfig import MaskConfig
        from ..report import atomic_write_text, check_output_file, writing

        if to not in ("yaml", "fastvideo"):
            raise UserError(f"--to {to!r} is not one of yaml, fastvideo")
        target = out or str(Path(file).with_suffix(".yaml" if to == "yaml" else ".json"))
        if Path(target).resolve() == Path(file).resolve():
            raise UserError(f"the output {target} is the input file; pass another --out")
        check_output_file(target, "output file" if out is None else "--out", force=force)  # before any work
        if to == "yaml":
            if canvas is None:
                raise UserError("--canvas T,H,W is required to import a FastVideo mask (the file does not record it)")
            info = model_from_folder(model) if model else {}
            for key, value in (("num_layers", layers), ("num_heads", heads), ("family", family),
                               ("transformer_class", transformer_class)):
                if value is not None:
                    info[key] = value
            report = fastvideo_to_mask(load_fastvideo(file), canvas=canvas, model=info,
                                       steps=steps, tile=tile, text_len=text_len)
            with writing(target, "the mask config", kept="nothing was written"):
                report.config.save(target)
            notes = []
            if report.inferred:
                notes.append("taken from the file: " + ", ".join(report.inferred))
            if report.even_converted:
                notes.append(f"{report.even_converted} even window entries widened to w + 1")
            typer.echo(f"wrote {target}: {report.config.steps} steps ({len(report.config.dense_steps)} dense), "
                       f"{report.config.num_layers} layers x {report.config.num_heads} heads"
                       + (f" ({'; '.join(notes)})" if notes else ""))
        elif to == "fastvideo":
            config = MaskConfig.load(file)
            mapping, widened = mask_to_fastvideo(config, round_even_up=round_even_up, nearest=nearest)
            with writing(target, "the FastVideo mask", kept="nothing was written"):
                atomic_write_text(target, json.dumps(mapping, indent=4) + "\n")
            typer.echo(f"wrote {target}: {len(mapping)} entries" + (f" ({widened} entries widened)" if widened else ""))
