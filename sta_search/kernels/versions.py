"""Which Triton versions the kernels here support, and whether the Gluon kernel's API is there.

Triton range: 3.6 up to (not including) 3.10, the versions that current torch releases pin (the
``triton`` line of pyproject.toml says the same; a test keeps the two in step). The Triton kernels run
under all of them, on CUDA and in the CPU interpreter (:mod:`._interpreter` patches the interpreter's
differences); CI runs the CPU kernel tests under 3.6 and 3.9.

Gluon (``sta/gluon_fwd.py``) is Triton's experimental lower-level language, whose API moves between
minor releases. The kernel is written against Triton 3.6's Gluon; observed with
``bench/inspect_sass.py`` (compiled for sm_90 without a GPU): it compiles unchanged under 3.6, 3.7 and
3.8, and under 3.9 it does not, because 3.9 removed ``tma.async_copy_global_to_shared`` and
``tma.async_copy_shared_to_global`` (renamed ``async_load`` / ``async_store`` in 3.8).
"""

from __future__ import annotations

import re

#: ``[low, high)`` (major, minor) of the supported Triton versions, as in pyproject.toml.
SUPPORTED_TRITON = ((3, 6), (3, 10))
SUPPORTED_TRITON_SPEC = ">=3.6,<3.10"
#: ``[low, high)`` of the versions whose Gluon API the Gluon kernel is written for.
GLUON_TRITON = ((3, 6), (3, 9))


def triton_version() -> tuple[int, int, int] | None:
    """``(major, minor, patch)`` of the Triton that ``import triton`` finds, or None if there is none."""
    try:
        import triton
    except ImportError:
        return None
    return parse_version(triton.__version__)


def parse_version(text: str) -> tuple[int, int, int]:
    """``"3.9.0"``, ``"3.6.0+git1a2b3c"``, ``"3.7"`` -> ``(3, 9, 0)``, ``(3, 6, 0)``, ``(3, 7, 0)``."""
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not match:
        raise ValueError(f"cannot read a Triton version from {text!r}")
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


def _name(version: tuple[int, int, int]) -> str:
    return ".".join(map(str, version))


def triton_supported() -> tuple[bool, str]:
    """Whether the installed Triton is in :data:`SUPPORTED_TRITON` (ok, why)."""
    version = triton_version()
    if version is None:
        return False, "Triton is not installed"
    low, high = SUPPORTED_TRITON
    if not low <= version[:2] < high:
        return False, f"Triton {_name(version)} is outside the supported range triton{SUPPORTED_TRITON_SPEC}"
    return True, "ok"


def gluon_supported() -> tuple[bool, str]:
    """Whether the Gluon kernel can be compiled with the installed Triton (ok, why).

    A version check only (no import of Gluon, no compilation): the kernel uses the Gluon API of
    Triton 3.6, which Triton 3.7 and 3.8 still have and 3.9 no longer does.
    """
    version = triton_version()
    if version is None:
        return False, "Triton is not installed"
    low, high = GLUON_TRITON
    if version[:2] < low:
        return False, (f"Triton {_name(version)} is too old for the Gluon kernel (needs Triton >= {_name(low)}); "
                       "use backend triton")
    if version[:2] >= high:
        return False, (f"Gluon kernel written for Triton 3.6's Gluon API; Triton {_name(version)} lacks its TMA "
                       "copies (Triton 3.9 removed tma.async_copy_global_to_shared / async_copy_shared_to_global, "
                       "now async_load / async_store); use backend triton")
    return True, "ok"
