"""Reports and files that must never be half written: provenance, JSON-safe values, atomic writes.

- :func:`provenance`: what produced an artifact (tool version, Python / torch / triton / diffusers /
  transformers versions, the device's name, the time in UTC), the same fields in every report;
- :func:`json_safe`: a value made JSON-clean (``inf``/``nan`` as strings, numpy scalars and arrays as
  Python values, tuples as lists);
- :func:`atomic_write_text` / :func:`write_json`: write a temporary file in the target's folder, fsync,
  rename over the target (readers see the old file or the new one, never a partial one).

Importing this module imports neither torch nor numpy; the functions import what they need.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

#: Libraries whose versions :func:`versions` reports (None when one is not installed).
REPORTED_LIBRARIES = ("torch", "triton", "diffusers", "transformers")


def tool_version() -> str:
    from . import __version__

    return __version__


def utc_now() -> str:
    """The current time, UTC, ISO 8601 to the second."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def versions() -> dict[str, str | None]:
    """Python and library versions (None for a library that is not installed or cannot be imported)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in REPORTED_LIBRARIES:
        try:
            out[name] = str(__import__(name).__version__)
        except Exception:  # noqa: BLE001 - a broken optional library must not break a report
            out[name] = None
    return out


def device_name(device) -> str:
    """The GPU's name for a CUDA device, the processor (or ``"cpu"``) otherwise."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or device.type


def provenance(device=None) -> dict:
    """``{"tool_version", "created_utc", "versions"}`` for a report, plus ``"device_name"`` when `device` is given."""
    out = {"tool_version": tool_version(), "created_utc": utc_now(), "versions": versions()}
    if device is not None:
        out["device_name"] = device_name(device)
    return out


def json_safe(value: Any) -> Any:
    """`value` with non-finite floats as strings (``"inf"``), numpy values as Python ones, tuples as lists."""
    if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if type(value).__module__ == "numpy":
        value = value.tolist() if hasattr(value, "tolist") else value
        return json_safe(value) if isinstance(value, (list, float)) else value
    return value


def atomic_write_text(path, text: str) -> Path:
    """Write a text file atomically (temp file in the same folder, fsync, rename); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def write_json(path, data: Any, *, indent: int = 2) -> Path:
    """:func:`atomic_write_text` of ``json.dumps(json_safe(data))`` with a trailing newline."""
    return atomic_write_text(path, json.dumps(json_safe(data), indent=indent, default=str) + "\n")


def fsync_dir(path) -> None:
    """fsync a folder (so a rename in it survives a crash); silently skipped where the OS does not allow it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
