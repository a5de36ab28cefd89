"""One module per STA backend (``triton_fwd``, ``gluon_fwd``, ``flex``, ``gather``, ``reference``) and the public
entry point ``api``.

The public names below are resolved on first access (PEP 562), so importing one kernel module (which
``kernels/backends.py`` does to run its low-level checks) does not import the entry point, which imports
``backends``: no import cycle, and ``from sta_search.kernels.sta import sta_attention`` keeps working.
"""

import importlib

_EXPORTS = {
    "BACKENDS": "..backends", "can_run_flex": "..backends", "can_run_gather": "..backends",
    "can_run_gluon": "..backends", "can_run_gluon_fp8": "..backends", "can_run_reference": "..backends", "can_run_triton": "..backends",
    "normalize_windows": ".api", "sta_attention": ".api", "sta_attention_tiled": ".api",
    "sta_mask": ".reference", "sta_reference": ".reference",
}
_RENAMED = {"SUPPORTED_HEAD_DIMS": ("..backends", "TRITON_HEAD_DIMS")}

__all__ = sorted([*_EXPORTS, *_RENAMED])


def __getattr__(name):
    if name in _EXPORTS:
        module, attribute = _EXPORTS[name], name
    elif name in _RENAMED:
        module, attribute = _RENAMED[name]
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), attribute)
