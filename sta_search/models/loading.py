"""Load a model for sta-search: a local diffusers pipeline folder, a bare transformer folder, or a
bundled model name. Nothing is downloaded (``local_files_only=True``)."""

from __future__ import annotations

import importlib
import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..errors import UserError
from .base import ModelAdapter, ModelInfo, adapter_for_class, get_adapter, supported_transformer_classes

#: Models shipped with sta-search: name -> "module:function" returning the model's diffusers folder (with its
#: recommended settings in ``sta_search.json``). Imported only when the name is used.
BUNDLED_MODELS: dict[str, str] = {"tiny": "sta_search.tiny:bundled_path", "small": "sta_search.small:bundled_path"}
_BUNDLED: dict[str, Callable[[], Path]] = {}  # added at run time by register_bundled (tests, plugins)

# Pipeline classes that live outside diffusers: model_index.json `_class_name` -> "module:attribute".
_LOCAL_PIPELINE_CLASSES = {"TinyVideoPipeline": "sta_search.tiny.pipeline:TinyVideoPipeline",
                          "SmallVideoPipeline": "sta_search.small.pipeline:SmallVideoPipeline"}


@dataclass
class LoadedModel:
    """A loaded model: the pipeline (None for a bare transformer folder), its transformer(s) and adapter.

    `adapter` is bound to the pipeline (its VAE factors and call defaults), so
    ``adapter.canvas(transformer, height, width, frames)`` and ``adapter.pipeline_kwargs(...)`` fit it.
    """

    pipeline: object | None
    transformer: torch.nn.Module
    adapter: ModelAdapter
    source: str
    transformer_2: torch.nn.Module | None = None

    @property
    def info(self) -> ModelInfo:
        """Model info over both experts (Wan 2.2: ``num_layers`` counts ``transformer_2``'s layers too)."""
        return self.adapter.info(self.transformer, self.transformer_2)

    def canvas(self, height: int, width: int, frames: int) -> tuple[int, int, int]:
        return self.adapter.canvas(self.transformer, height, width, frames)


def register_bundled(name: str, path_fn: Callable[[], Path]) -> None:
    """Make `name` a model name that `load_model` resolves to the folder ``path_fn()`` (called lazily)."""
    _BUNDLED[name] = path_fn


def bundled_names() -> list[str]:
    return sorted({*BUNDLED_MODELS, *_BUNDLED})


def _bundled_folder(name: str) -> Path:
    if name in _BUNDLED:
        return Path(_BUNDLED[name]())
    module, attribute = BUNDLED_MODELS[name].split(":")
    return Path(getattr(importlib.import_module(module), attribute)())


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read {path}: {error}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a JSON object")
    return data


def resolve_model_path(model: str) -> tuple[Path, str]:
    """(folder, source) for a folder path or a bundled name; UserError if neither exists."""
    model = str(model)
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"model {model!r} is a file, not a diffusers folder")
        return path, str(path)
    if model in _BUNDLED or model in BUNDLED_MODELS:
        folder = _bundled_folder(model)
        if not folder.is_dir():
            raise UserError(f"bundled model {model!r} is missing its folder {folder}")
        return folder, model
    names = ", ".join(bundled_names()) or "none"
    raise UserError(f"model folder {model!r} does not exist (bundled model names: {names})")


MODEL_DEFAULTS_FILE = "sta_search.json"


def model_defaults(model: str) -> dict:
    """Run defaults a model folder recommends in its ``sta_search.json`` (tile, height, width, frames,
    steps, guidance_scale), e.g. the bundled tiny model's; ``{}`` when the folder has none."""
    folder, _ = resolve_model_path(model)
    path = folder / MODEL_DEFAULTS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"{path} is not valid JSON: {error}") from None
    return data if isinstance(data, dict) else {}


def _device(device) -> torch.device:
    from ..options import resolve_device

    return resolve_device(device)


def _pipeline_class(class_name: str):
    if class_name in _LOCAL_PIPELINE_CLASSES:
        module, attribute = _LOCAL_PIPELINE_CLASSES[class_name].split(":")
        return getattr(importlib.import_module(module), attribute)
    import diffusers

    cls = getattr(diffusers, class_name, None)
    if cls is None:
        raise UserError(f"unknown pipeline class {class_name!r} in model_index.json (not in diffusers)")
    return cls


def load_model(model: str, device="cpu", dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load `model` onto `device` in `dtype`.

    `model` is a local diffusers pipeline folder (``model_index.json`` with a ``transformer``), a bare
    transformer folder (``config.json`` of a supported transformer class), or a bundled model name
    registered with `register_bundled` (e.g. ``"tiny"``). The transformer class is checked before any
    weights are read. UserError (one line naming the bad value) for a missing folder, a folder that is
    not a diffusers folder, an unsupported transformer class (the message lists the supported ones),
    weights that fail to load, or an unusable device.
    """
    folder, source = resolve_model_path(model)
    torch_device = _device(device)
    if (folder / "model_index.json").is_file():
        return _load_pipeline(folder, source, torch_device, dtype)
    if (folder / "config.json").is_file():
        return _load_transformer(folder, source, torch_device, dtype)
    raise UserError(f"{folder} is not a diffusers folder (no model_index.json or config.json)")


def _load_pipeline(folder: Path, source: str, device: torch.device, dtype) -> LoadedModel:
    index = _read_json(folder / "model_index.json")
    class_name = index.get("_class_name")
    if not isinstance(class_name, str):
        raise UserError(f"{folder / 'model_index.json'} has no _class_name: not a diffusers pipeline folder")
    if "transformer" not in index:
        raise UserError(
            f"pipeline {class_name} in {folder} has no transformer; supported transformer classes: "
            f"{', '.join(supported_transformer_classes())}"
        )
    for name in ("transformer", "transformer_2"):
        entry = index.get(name)
        if isinstance(entry, list) and entry and entry[-1] is not None:
            config = folder / name / "config.json"
            transformer_class = _read_json(config).get("_class_name", entry[-1]) if config.is_file() else entry[-1]
            adapter_for_class(str(transformer_class))  # UserError for unsupported classes, before loading weights
    cls = _pipeline_class(class_name)
    try:
        with _quiet_loading():
            pipeline = cls.from_pretrained(str(folder), **_dtype_kwargs(dtype), local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError, ImportError) as error:  # ImportError: e.g. Cosmos guardrail
        raise UserError(f"cannot load pipeline {class_name} from {folder}: {_one_line(error)}") from None
    pipeline = pipeline.to(device)
    if hasattr(pipeline, "set_progress_bar_config"):
        pipeline.set_progress_bar_config(disable=True)
    transformer = getattr(pipeline, "transformer", None)
    if transformer is None:
        raise UserError(f"pipeline {class_name} in {folder} loaded without a transformer")
    transformer_2 = getattr(pipeline, "transformer_2", None)
    adapter = get_adapter(transformer).bind(pipeline)
    for module in (transformer, transformer_2):
        if module is not None:
            module.eval().requires_grad_(False)
    return LoadedModel(pipeline=pipeline, transformer=transformer, adapter=adapter, source=source,
                       transformer_2=transformer_2)


def _load_transformer(folder: Path, source: str, device: torch.device, dtype) -> LoadedModel:
    config = _read_json(folder / "config.json")
    class_name = config.get("_class_name")
    if not isinstance(class_name, str):
        raise UserError(f"{folder / 'config.json'} has no _class_name: not a diffusers model folder")
    adapter = adapter_for_class(class_name)
    import diffusers

    cls = getattr(diffusers, class_name)
    try:
        with _quiet_loading():
            transformer = cls.from_pretrained(str(folder), **_dtype_kwargs(dtype), local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise UserError(f"cannot load {class_name} from {folder}: {_one_line(error)}") from None
    transformer = transformer.to(device).eval().requires_grad_(False)
    return LoadedModel(pipeline=None, transformer=transformer, adapter=adapter.bind(transformer=transformer),
                       source=source)


@contextmanager
def _quiet_loading():
    """No diffusers / transformers loading progress bars or info logs (the CLI has its own progress)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    saved = []
    for library in (diffusers_logging, transformers_logging):
        saved.append((library, library.is_progress_bar_enabled(), library.get_verbosity()))
        library.disable_progress_bar()
        library.set_verbosity_error()
    try:
        yield
    finally:
        for library, bar, verbosity in saved:
            if bar:
                library.enable_progress_bar()
            library.set_verbosity(verbosity)


def _dtype_kwargs(dtype) -> dict:
    """diffusers >= 0.42 takes `dtype` (and deprecates `torch_dtype`); older versions take `torch_dtype`."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype}


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
