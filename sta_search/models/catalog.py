"""The supported model families as data (``sta-search models``), read from the registered adapters' metadata.

Nothing here is a table of its own: a family appears once its adapter is registered (``@register_adapter``), with
the ``pipelines``, ``text_handling`` and ``checkpoints`` its adapter declares, and the STA kernel that runs each
checkpoint's head dim on Hopper follows the backend rules of :mod:`sta_search.kernels.backends`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..kernels.backends import GLUON_HEAD_DIMS, TRITON_HEAD_DIMS
from .base import ModelAdapter, adapter_for_class, supported_transformer_classes

GLUON_DTYPES = ("bfloat16", "float16")


def hopper_kernel(head_dim: int, dtype: str = "bfloat16") -> tuple[str, str]:
    """(backend, why) that ``--backend auto`` picks on a Hopper GPU for this head dim and dtype (the tile volume
    must also be a multiple of 128 for Gluon; the default 6,8,8 tile is)."""
    if head_dim in GLUON_HEAD_DIMS and dtype in GLUON_DTYPES:
        return "gluon", f"head dim {head_dim}, {dtype}"
    if head_dim in TRITON_HEAD_DIMS:
        gluon_dims = " or ".join(map(str, GLUON_HEAD_DIMS))
        why = f"head dim {head_dim}" + ("" if head_dim in GLUON_HEAD_DIMS else f" (Gluon needs {gluon_dims})")
        return "triton", why if dtype in GLUON_DTYPES else f"{dtype} (Gluon needs bf16/fp16)"
    return "flex", f"head dim {head_dim} is not one of {TRITON_HEAD_DIMS}"


@dataclass(frozen=True)
class FamilyEntry:
    """One supported family: its adapter's metadata and, per released checkpoint, the Hopper kernel."""

    family: str
    transformer_classes: tuple[str, ...]
    pipelines: tuple[str, ...]
    text_handling: str
    checkpoints: tuple[tuple[str, int, int, str], ...]  # (name, heads, head_dim, Hopper kernel)

    def to_dict(self) -> dict:
        return dict(
            family=self.family, transformer_classes=list(self.transformer_classes), pipelines=list(self.pipelines),
            text_handling=self.text_handling,
            checkpoints=[dict(name=n, heads=h, head_dim=d, hopper_kernel=k) for n, h, d, k in self.checkpoints],
        )


def _describe_text(adapter: ModelAdapter) -> str:
    if adapter.text_handling:
        return adapter.text_handling
    return "joint text " + ("before" if adapter.text_first else "after") + " the video tokens (or none)"


def supported_families(dtype: str = "bfloat16") -> list[FamilyEntry]:
    """Every registered family, sorted by name, with the kernel each checkpoint runs on Hopper in `dtype`."""
    adapters: dict[str, ModelAdapter] = {}
    classes: dict[str, list[str]] = {}
    for name in supported_transformer_classes():
        adapter = adapter_for_class(name)
        adapters.setdefault(adapter.family, adapter)
        classes.setdefault(adapter.family, []).append(name)
    entries = []
    for family in sorted(adapters):
        adapter = adapters[family]
        checkpoints = tuple((n, int(h), int(d), hopper_kernel(int(d), dtype)[0]) for n, h, d in adapter.checkpoints)
        entries.append(FamilyEntry(family=family, transformer_classes=tuple(classes[family]),
                                   pipelines=tuple(adapter.pipelines), text_handling=_describe_text(adapter),
                                   checkpoints=checkpoints))
    return entries
