"""The bundled `small` video model: a pixel-space diffusers `WanTransformer3DModel` (9.1 M parameters,
8 layers x 4 heads of dimension 64, patch 1x4x4) trained by ``bench/train_small.py`` on procedural
multi-object videos (`sta_search.small.data`, changes eased from rest: ``--ease accel``) with a text encoder
pretrained on the captions alone and then frozen (``bench/pretrain_text_encoder.py``), at two canvases:
16 x 96 x 160 px (token canvas 16 x 24 x 40 = 15,360) and 8 x 64 x 96 px (8 x 16 x 24), shipped as a pipeline
folder in ``sta_search/small/weights``.

    from sta_search.small import load_small, recommended_settings
    pipe = load_small(device="cpu")
    frames = pipe("a big red circle moves left, a small blue square bounces, on a gray floor",
                  **recommended_settings().call_kwargs()).frames

`recommended_settings()` reads ``sta_search.json`` next to the weights (tile, height, width, frames,
steps, guidance scale, and the trained ``resolutions``). A training checkpoint folder of
``train_small.py`` is such a pipeline folder too (its EMA weights), so ``load_small(folder=CKPT)`` works, also
for one trained with ``--family hunyuan_video`` (a `HunyuanVideoTransformer3DModel` in the same pipeline; every
sta-search command takes it through the HunyuanVideo adapter).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

SETTINGS_FILE = "sta_search.json"
PIPELINE_CLASS = "SmallVideoPipeline"


def bundled_path() -> Path:
    """Folder of the shipped pipeline (model_index.json, transformer/, text_encoder/, tokenizer/, scheduler/)."""
    return Path(__file__).resolve().parent / "weights"


def is_small_folder(folder: str | Path) -> bool:
    """True for a folder whose model_index.json names `SmallVideoPipeline`."""
    index = Path(folder) / "model_index.json"
    try:
        return index.is_file() and json.loads(index.read_text()).get("_class_name") == PIPELINE_CLASS
    except (OSError, ValueError):
        return False


@dataclass(frozen=True)
class SmallSettings:
    """Recommended defaults for the small model (stored next to its weights)."""

    tile: tuple[int, int, int]
    height: int
    width: int
    frames: int
    steps: int
    guidance_scale: float
    resolutions: tuple[tuple[int, int, int], ...] = ()  # (frames, height, width) it was trained at

    def call_kwargs(self) -> dict:
        return dict(height=self.height, width=self.width, num_frames=self.frames,
                    num_inference_steps=self.steps, guidance_scale=self.guidance_scale)


def _folder(folder) -> Path:
    folder = Path(folder or bundled_path())
    if not (folder / "model_index.json").is_file():
        from sta_search.errors import UserError

        raise UserError(f"small model folder {folder} has no model_index.json (weights missing? train them "
                        f"with bench/train_small.py)")
    return folder


def recommended_settings(folder: str | Path | None = None) -> SmallSettings:
    data = json.loads((_folder(folder) / SETTINGS_FILE).read_text())
    return SmallSettings(tile=tuple(data["tile"]), height=int(data["height"]), width=int(data["width"]),
                         frames=int(data["frames"]), steps=int(data["steps"]),
                         guidance_scale=float(data.get("guidance_scale", 4.0)),
                         resolutions=tuple(tuple(r) for r in data.get("resolutions", ())))


def load_small(folder: str | Path | None = None, device="cpu", dtype=None):
    """Load the bundled (or another small-format, e.g. a training checkpoint) pipeline folder offline onto
    `device` in `dtype` (default float32; the weights are stored in bf16)."""
    import torch

    from .pipeline import SmallVideoPipeline

    pipe = SmallVideoPipeline.from_pretrained(str(_folder(folder)), dtype=dtype or torch.float32,
                                              local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def __getattr__(name):
    if name == PIPELINE_CLASS:
        from .pipeline import SmallVideoPipeline

        return SmallVideoPipeline
    raise AttributeError(name)
