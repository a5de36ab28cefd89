"""Reports and files that must never be half written: provenance, JSON-safe values, atomic writes.

- :func:`provenance`: what produced an artifact (tool version, Python / torch / triton / diffusers /
  transformers versions, the device's name, the time in UTC), the same fields in every report;
- :func:`json_safe`: a value made JSON-clean (``inf``/``nan`` as strings, numpy scalars and arrays as
  Python values, tuples as lists);
- :func:`atomic_write_text` / :func:`write_json`: write a temporary file in the target's folder, fsync,
  rename over the target (readers see the old file or the new one, never a partial one);
- output paths, checked before any work: :func:`check_output_file` (``--force`` to replace a file),
  :func:`check_output_folder`, :func:`removed_if_left_empty` (no empty folder after a failed run),
  :func:`writing` (a full disk or a vanished folder as one line naming the path);
- :class:`OutputLock`: one writer per output folder (a second ``profile`` on the same ``--out`` is refused);
- :func:`sigint_deferred`: Ctrl-C held while an artifact's files are renamed into place.

Importing this module imports neither torch nor numpy; the functions import what they need.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import math
import os
import platform
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any

from .errors import UserError

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


# ------------------------------------------------------------------------------------------- output paths
def _nearest_existing(path: Path) -> Path:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def _probe_writable(folder: Path, path: Path, what: str) -> None:
    """UserError unless a file can be created (and removed) in the existing folder `folder`."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".sta-search-write-test-", dir=folder)
    except OSError as exc:
        raise UserError(f"{what} {path} cannot be written: {folder} does not accept files "
                        f"({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(tmp)


def _check_ancestors(path: Path, what: str) -> None:
    existing = _nearest_existing(path.parent if path.parent != path else path)
    if not existing.is_dir():
        raise UserError(f"{what} {path} cannot be written: {existing} is a file, not a folder")
    _probe_writable(existing, path, what)


def check_output_file(path, what: str = "--out", *, force: bool | None = None) -> Path:
    """UserError (one line naming `path`) unless a file can be written at `path`: it must not be a folder, the
    nearest existing folder above it must accept files, and an existing file is refused unless `force` is
    True (``force=None``: replacing is this command's normal behaviour). Nothing is created; call it before
    any work."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} cannot be written: it is a folder, not a file")
    if path.exists() and force is False:
        raise UserError(f"{what} {path} exists; pass --force to replace it")
    _check_ancestors(path, what)
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{what} {path} cannot be written: permission denied")
    return path


def check_output_folder(path, what: str = "--out") -> Path:
    """UserError (one line naming `path`) unless `path` is a folder that accepts files or can be created as
    one. Nothing is created; call it before any work."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{what} {path} cannot be written: it is a file, not a folder")
        _probe_writable(path, path, what)
        return path
    _check_ancestors(path, what)
    return path


#: what `sta-search generate` writes into its --out folder (videos, a .gif where imageio-ffmpeg is missing)
GENERATE_OUTPUTS = ("report.json", "*.mp4", "*.gif")


def earlier_run_files(path, patterns=GENERATE_OUTPUTS) -> list[Path]:
    """Files of an earlier run in the folder `path` (top level, by `patterns`), sorted; [] when there is none."""
    path = Path(path)
    if not path.is_dir():
        return []
    return sorted({p for pattern in patterns for p in path.glob(pattern) if p.is_file()})


@contextlib.contextmanager
def removed_if_left_empty(path):
    """Around a command that creates the folder `path`: when the block fails and `path` did not exist
    before and holds nothing, remove it (and the empty parents the block created), so an input error
    leaves no empty output folder behind."""
    path = Path(path)
    missing = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    try:
        yield path
    except BaseException:
        for folder in missing:  # deepest first
            try:
                folder.rmdir()  # only an empty folder
            except OSError:
                break
        raise


def no_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


@contextlib.contextmanager
def writing(path, what: str = "output", kept: str = "the previous files are unchanged"):
    """Turn an OSError while writing `path` (a full disk, a folder that vanished, permissions) into a one-line
    UserError naming it; `kept` says what survived (atomic writes leave the previous version)."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)) or \
                no_space(exc) or exc.errno in (errno.EROFS, errno.EIO):
            reason = "no space left on the device" if no_space(exc) else (exc.strerror or str(exc))
            raise UserError(f"cannot write {what} {path}: {reason}; {kept}") from None
        raise


# ------------------------------------------------------------------------------------------- signals
@contextlib.contextmanager
def sigint_deferred():
    """Hold Ctrl-C (SIGINT) during a block that must not be cut in half (renaming the files of an artifact);
    a SIGINT that arrived meanwhile is raised as KeyboardInterrupt when the block ends. Outside the main
    thread (where handlers cannot be set) the block runs as is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    except (ValueError, OSError):
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            raise KeyboardInterrupt


# ------------------------------------------------------------------------------------------- locks
class OutputLock:
    """An exclusive lock on an output path, held by one process: ``.<name>.lock`` beside it, locked with
    ``fcntl.flock`` (released by the OS when the process dies, so a stale file of a dead process is taken
    over) and holding the owner's pid (for the message). Use as a context manager; a second holder gets a
    UserError naming the path and the pid."""

    def __init__(self, path, what: str = "--out"):
        self.path = Path(path)
        self.file = self.path.parent / f".{self.path.name}.lock"
        self.what = what
        self._fd: int | None = None
        self._made: list[Path] = []

    def acquire(self) -> "OutputLock":
        import fcntl

        probe = self.file.parent
        while not probe.exists() and probe != probe.parent:
            self._made.append(probe)
            probe = probe.parent
        self.file.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read_pid(fd)
                os.close(fd)
                self._remove_made()
                raise UserError(f"{self.what} {self.path} is being written by another sta-search process"
                                + (f" (pid {holder})" if holder else "") + "; wait for it to finish or choose "
                                "another folder") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.file).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the previous holder removed the file after we opened it: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.file)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None
        self._remove_made()

    def _remove_made(self) -> None:
        for folder in self._made:
            try:
                folder.rmdir()
            except OSError:
                break
        self._made = []

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------------- out of memory
def out_of_memory_errors() -> tuple[type, ...]:
    """The exception types of CUDA out of memory (``torch.OutOfMemoryError`` and its older name)."""
    import torch

    return tuple({getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), torch.cuda.OutOfMemoryError})


#: Activation elements a transformer block holds per token and hidden unit at its peak (residual, norms,
#: q/k/v/out, the 4x MLP); a rough factor for :func:`estimate_memory_bytes`.
ACTIVATIONS_PER_TOKEN_HIDDEN = 16
#: Working memory of the profiler's statistics (sta_search.stats.DEFAULT_MEMORY_BUDGET).
PROFILER_BUDGET = 1536 << 20


def estimate_memory_bytes(loaded, canvas, text_len: int, dtype, *, batch: int = 2, extra: int = PROFILER_BUDGET) -> int:
    """A rough estimate of the memory a dense denoising step needs at `canvas`: the pipeline's weights plus the
    activations of one transformer block for `batch` forwards (CFG) over the video and text tokens, plus
    `extra` working memory. Rough: for messages, and to refuse sizes beyond the device's whole memory."""
    import torch

    modules = [c for c in (getattr(getattr(loaded, "pipeline", None), "components", None) or {}).values()
               if isinstance(c, torch.nn.Module)]
    for transformer in (getattr(loaded, "transformer", None), getattr(loaded, "transformer_2", None)):
        if transformer is not None and not any(transformer is m for m in modules):
            modules.append(transformer)
    weights = sum(t.numel() * t.element_size() for m in modules for t in (*m.parameters(), *m.buffers()))
    info = loaded.info
    tokens = math.prod(int(c) for c in canvas) + int(text_len or 0)
    element = torch.empty((), dtype=dtype).element_size()
    activations = ACTIVATIONS_PER_TOKEN_HIDDEN * batch * tokens * int(info.num_heads) * int(info.head_dim) * element
    return int(weights + activations + extra)


def device_memory_bytes(device) -> int | None:
    """The whole memory of a CUDA device, or the machine's physical memory for the CPU (None if unknown)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return None


def check_fits_in_memory(need: int, device, size: str) -> None:
    """UserError when the estimated `need` (bytes) exceeds the device's whole memory: such a size could only fail
    after minutes of work (an allocation error or the OOM killer), so it is refused before the first step."""
    have = device_memory_bytes(device)
    if have is not None and need > have:
        where = "the GPU" if str(device).startswith("cuda") else "this machine"
        raise UserError(f"{size} needs about {need / 2**30:.1f} GiB (estimated from the shapes), more than the "
                        f"{have / 2**30:.1f} GiB of {where}; pass a smaller --height/--width/--frames")


def out_of_memory_message(loaded, height, width, frames, canvas, text_len: int, dtype, device=None,
                          extra: int = PROFILER_BUDGET) -> str:
    """One line for CUDA out of memory: the size, its tokens, the estimated need and the GPU's memory."""
    import torch

    need = estimate_memory_bytes(loaded, canvas, text_len, dtype, extra=extra)
    have = ""
    if device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available():
        have = f", the GPU has {torch.cuda.get_device_properties(torch.device(device)).total_memory / 2**30:.1f} GiB"
    return (f"out of GPU memory at {height}x{width}, {frames} frames (canvas {tuple(canvas)}, "
            f"{math.prod(canvas)} video tokens): it needs about {need / 2**30:.2f} GiB (estimated from the "
            f"shapes){have}; pass a smaller --height/--width/--frames")
