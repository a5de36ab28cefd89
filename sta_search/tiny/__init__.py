"""The bundled tiny video model ("tiny"): a pixel-space `WanTransformer3DModel` trained on procedural
captioned videos (see `sta_search.tiny.data`), shipped as a diffusers pipeline folder in
``sta_search/tiny/weights``.

    from sta_search.tiny import load_tiny, recommended_settings
    pipe = load_tiny("cpu", torch.float32)
    frames = pipe("a big red circle moves left over a blue floor", **recommended_settings().call_kwargs()).frames

`recommended_settings()` reads ``weights/sta_search.json`` (tile, height, width, frames, steps,
guidance scale): the defaults that profile / generate / demo use for this model.

This package is a leaf: it imports nothing from sta_search except ``sta_search.errors``.
`sta_search.models.loading` finds it through its static table of bundled models, and the demo that runs
the whole loop on it is `sta_search.demo`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

SETTINGS_FILE = "sta_search.json"


def bundled_path() -> Path:
    """Folder of the shipped pipeline (model_index.json, transformer/, text_encoder/, tokenizer/, scheduler/)."""
    return Path(__file__).resolve().parent / "weights"


def is_tiny_folder(folder: str | Path) -> bool:
    """True for a folder whose model_index.json names `TinyVideoPipeline`."""
    index = Path(folder) / "model_index.json"
    if not index.is_file():
        return False
    try:
        return json.loads(index.read_text()).get("_class_name") == "TinyVideoPipeline"
    except (OSError, ValueError):
        return False


@dataclass(frozen=True)
class TinySettings:
    """Recommended defaults for the tiny model (stored next to its weights)."""

    tile: tuple[int, int, int]
    height: int
    width: int
    frames: int
    steps: int
    guidance_scale: float

    def call_kwargs(self) -> dict:
        return dict(height=self.height, width=self.width, num_frames=self.frames,
                    num_inference_steps=self.steps, guidance_scale=self.guidance_scale)


def recommended_settings(folder: str | Path | None = None) -> TinySettings:
    data = json.loads((Path(folder or bundled_path()) / SETTINGS_FILE).read_text())
    return TinySettings(tile=tuple(data["tile"]), height=int(data["height"]), width=int(data["width"]),
                        frames=int(data["frames"]), steps=int(data["steps"]),
                        guidance_scale=float(data.get("guidance_scale", 4.0)))


def load_tiny(device="cpu", dtype=None, folder: str | Path | None = None):
    """Load the bundled (or another tiny-format) pipeline folder offline onto `device` in `dtype`."""
    import torch

    from .pipeline import TinyVideoPipeline

    folder = Path(folder or bundled_path())
    if not (folder / "model_index.json").is_file():
        from ..errors import UserError

        raise UserError(f"tiny model folder {folder} has no model_index.json (weights missing?)")
    pipe = TinyVideoPipeline.from_pretrained(str(folder), dtype=dtype or torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def __getattr__(name):
    if name == "TinyVideoPipeline":
        from .pipeline import TinyVideoPipeline

        return TinyVideoPipeline
    raise AttributeError(name)
