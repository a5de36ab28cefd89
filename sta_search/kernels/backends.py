"""Which STA kernel runs a call: the one owner of every backend decision.

Every question "can backend X run this?", "what does ``auto`` pick?", "does X read the natural token
order in place?" and "what does the user see when X cannot run?" is answered here and nowhere else.
``sta_attention``, ``MaskAttention``, ``generate``, the profiler and the benchmark call these functions.

Each backend has one check with one signature, NATTEN-style::

    can_run_<name>(q, geometry, layout) -> (ok, why)

- ``q``: ``(B, heads, S, D)``; only its head dim, dtype and device are read, except by the dense
  reference (token count), so an empty ``(1, 1, 0, D)`` tensor works for checks made before any
  input exists (``generate`` does this before the first step);
- ``geometry``: the call's :class:`~sta_search.kernels.Geometry` (canvas and tile);
- ``layout``: ``"natural"`` (T-major tokens, what ``sta_attention`` takes) or ``"tiled"`` (tile order,
  what ``sta_attention_tiled`` takes).

Adding a backend is one :class:`Backend` entry in :data:`TABLE` plus its ``can_run_<name>`` function
(and, for an in-place natural-order path, a check of it). The Gluon and Triton kernel files keep their
own low-level checks (TMA boxes, alignment) as private helpers; only this module calls them.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from typing import Callable

import torch

from .geometry import Geometry

logger = logging.getLogger("sta_search.kernels")

LAYOUTS = ("natural", "tiled")
TRITON_HEAD_DIMS = (32, 64, 128)
#: Head dims the Gluon kernel runs (``sta/gluon_fwd.py`` keeps a K/V ring depth for each); the one switch.
GLUON_HEAD_DIMS = (64, 128)
REFERENCE_MAX_TOKENS = 4096
#: The profiler's fused pass (``recall/gluon_fused.py``) on padded canvases in compact tile order (each tile's real
#: tokens first): the kernel then skips all-padding blocks instead of masking padding per key. At wan-480p on an
#: H200 the pass takes 15.0 ms against 23.1 ms with tile-plane boxes, and a whole profiled call 76 ms against 87 ms
#: (``bench/results/profile-speed-wan480p-{compact,boxes}-h200-20261202T0727Z.json``); its GPU tests
#: (``tests/test_recall_gluon.py``, parametrized over this switch) pass. False restores the boxes.
FUSED_RECALL_COMPACT_PADDED = True

Verdict = tuple[bool, str]


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


# ----------------------------------------------------------------------------------------- can_run_*
def can_run_gluon(q: torch.Tensor, geometry: Geometry, layout: str) -> Verdict:
    """The warp-specialized Gluon kernel: Hopper (sm_90) only, bf16/fp16, head dim in :data:`GLUON_HEAD_DIMS`
    (64 or 128), tile volume a multiple of 128. Either layout (natural-order tokens it cannot read in place are
    copied into tile order)."""
    _check_layout(layout)
    if q.device.type != "cuda":
        return False, "needs a Hopper (sm_90) GPU"
    from .versions import gluon_supported

    ok, why = gluon_supported()
    if not ok:
        return False, why
    try:
        from .sta import gluon_fwd
    except ImportError as exc:  # a Triton without Gluon
        return False, f"Gluon is not available ({exc})"
    return gluon_fwd._inputs_ok(q, geometry)


def can_run_fused_recall(q: torch.Tensor, geometry: Geometry) -> Verdict:
    """The profiler's fused dense + tile-mass pass (``kernels/recall/gluon_fused.py``): the Gluon kernel with the
    full window, reading natural-order tokens in place, so what :func:`can_run_gluon` needs and tile planes that
    fit its TMA boxes (on padded canvases with :data:`FUSED_RECALL_COMPACT_PADDED`: compact tile order instead)."""
    ok, why = can_run_gluon(q, geometry, "natural")
    if not ok:
        return False, why
    if FUSED_RECALL_COMPACT_PADDED and not geometry.is_divisible:
        return True, "padded canvas: the fused pass gathers compact tile order"
    return gluon_reads_tile_planes(geometry)


def can_run_gluon_fp8(q: torch.Tensor, geometry: Geometry, layout: str) -> Verdict:
    """The 8-bit Gluon kernel (``precision="fp8"`` or ``"int8"``): what :func:`can_run_gluon` needs (Hopper,
    bf16/fp16 inputs, head dim 64 or 128, tile volume a multiple of 128) and a torch with ``float8_e4m3fn``. Either
    layout (a quantization pre-pass reads either and writes 8-bit copies in tile order)."""
    ok, why = can_run_gluon(q, geometry, layout)
    if not ok:
        return False, why
    from .sta import gluon_fp8

    return gluon_fp8._fp8_inputs_ok(q, geometry)


def can_run_triton(q: torch.Tensor, geometry: Geometry, layout: str) -> Verdict:
    """The Triton kernel: head dim 32, 64 or 128; CUDA, or CPU under ``TRITON_INTERPRET=1``. Either layout."""
    _check_layout(layout)
    if q.shape[-1] not in TRITON_HEAD_DIMS:
        return False, f"head dim {q.shape[-1]} is not one of {TRITON_HEAD_DIMS}"
    if q.device.type == "cuda":
        return True, "CUDA tensors"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True, "TRITON_INTERPRET=1 on CPU"
    return False, f"needs a CUDA device (or TRITON_INTERPRET=1 on CPU), got {q.device.type} tensors"


def can_run_flex(q: torch.Tensor, geometry: Geometry, layout: str) -> Verdict:
    """PyTorch FlexAttention: any device, dtype and head dim, either layout."""
    _check_layout(layout)
    return True, "FlexAttention runs on any device"


def can_run_gather(q: torch.Tensor, geometry: Geometry, layout: str) -> Verdict:
    """Gathered window key tiles + batched SDPA (plain PyTorch): any device, floating dtype, head dim and
    geometry, either layout. Only the window's key tiles are computed, so on CPU it beats dense SDPA below
    about density 0.7 (``bench/cpu_attention.py``)."""
    _check_layout(layout)
    if not q.is_floating_point():
        return False, f"dtype {q.dtype} is not a floating dtype"
    return True, f"gathered window key tiles + batched SDPA on {q.device.type}"


def can_run_reference(q: torch.Tensor, geometry: Geometry, layout: str) -> Verdict:
    """Dense SDPA under an explicit ``(S, S)`` mask: natural order only, at most ``REFERENCE_MAX_TOKENS`` tokens
    (at least the canvas's video tokens are counted, so an empty ``q`` is checked against the model's canvas)."""
    _check_layout(layout)
    if layout != "natural":
        return False, "the dense reference takes natural-order tokens (use sta_attention)"
    tokens = max(q.shape[2], geometry.video_len)
    if tokens > REFERENCE_MAX_TOKENS:
        return False, f"{tokens} tokens is too many for the dense reference (at most {REFERENCE_MAX_TOKENS})"
    return True, "small enough for a dense mask"


# ------------------------------------------------------------------------- in-place natural-order paths
def gluon_reads_tile_planes(geometry: Geometry) -> Verdict:
    """Whether the Gluon kernel can read natural order in place through TMA boxes of whole tile planes. On padded
    canvases its natural entry gathers compact tile order instead, unless asked for ``padded="in-place"``."""
    from .sta import gluon_fwd

    return gluon_fwd._natural_boxes_ok(geometry)


def _gluon_boxes_in_place(q, k, v, geometry: Geometry) -> Verdict:
    return gluon_reads_tile_planes(geometry)


def _gluon_in_place(q, k, v, geometry: Geometry) -> Verdict:
    """Divisible canvases: in place through TMA boxes of tile planes. Padded canvases: the natural entry copies the
    video tokens into compact tile order itself (fewer padded pairs than either the boxes or the public tile
    order), so ``sta_attention`` hands it natural order there too."""
    if not geometry.is_divisible:
        return True, "padded canvas: the Gluon natural entry gathers compact tile order itself"
    return _gluon_boxes_in_place(q, k, v, geometry)


def _gather_in_place(q, k, v, geometry: Geometry) -> Verdict:
    return True, "gathers whole tiles straight from natural order (one index_select per tensor)"


def _triton_in_place(q, k, v, geometry: Geometry) -> Verdict:
    """TMA boxes of tile planes where the config and strides allow; else, on padded canvases, the natural entry
    gathers compact tile order itself (fewer padded pairs than the public tile order's copies)."""
    from .sta import triton_fwd

    config = triton_fwd.default_config(geometry.tile_volume, q.shape[-1], q.dtype, q.device.type == "cuda")
    ok, why = triton_fwd._natural_layout_ok(q, k, v, geometry, config)
    if not ok and not geometry.is_divisible:
        return True, f"padded canvas: the Triton natural entry gathers compact tile order itself ({why} in place)"
    return ok, why


# ----------------------------------------------------------------------------------------------- table
@dataclass(frozen=True)
class Backend:
    """One STA backend.

    ``natural``/``tiled``: ``"module:function"`` (relative to ``sta_search.kernels.sta``) of its entry on
    natural-order tokens ``(q, k, v, geometry, windows, text_len, text_first, text_mask, scale)`` and on
    tile-order tokens ``(q, k, v, geometry, windows, text_len, text_mask, scale)``; None where it has none.
    With both, the natural entry runs where ``in_place`` allows and the tiled one (behind tile/untile
    copies) elsewhere; with only ``natural`` it always runs on natural order (no in-place kernel path).
    ``auto_on``: device kinds (``"cuda"``, ``"other"``) where ``auto`` may pick it, lower ``auto_rank`` first.
    """

    name: str
    can_run: Callable[[torch.Tensor, Geometry, str], Verdict]
    summary: str
    natural: str | None = None
    tiled: str | None = None
    in_place: Callable[..., Verdict] | None = None
    auto_on: frozenset = frozenset()
    auto_rank: int = 100

    def entry(self, layout: str) -> Callable:
        """The function that runs ``layout`` (``"natural"`` or ``"tiled"``) tokens."""
        module, function = getattr(self, layout).split(":")
        return getattr(importlib.import_module(f"sta_search.kernels.sta.{module}"), function)


TABLE: dict[str, Backend] = {b.name: b for b in (
    Backend("gluon", can_run_gluon, "warp-specialized Gluon kernel (Hopper, bf16/fp16, head dim 64 or 128)",
            natural="gluon_fwd:sta_gluon_natural", tiled="gluon_fwd:sta_gluon_tiled", in_place=_gluon_in_place,
            auto_on=frozenset({"cuda"}), auto_rank=0),
    Backend("triton", can_run_triton, "Triton kernel (CUDA, or CPU under TRITON_INTERPRET=1)",
            natural="triton_fwd:sta_triton_natural", tiled="triton_fwd:sta_triton_tiled", in_place=_triton_in_place,
            auto_on=frozenset({"cuda"}), auto_rank=1),
    Backend("flex", can_run_flex, "PyTorch FlexAttention (any device)", tiled="flex:sta_flex_tiled",
            auto_on=frozenset({"cuda", "other"}), auto_rank=9),
    Backend("gather", can_run_gather, "gathered window key tiles + batched SDPA (any device; fastest on CPU)",
            natural="gather:sta_gather", tiled="gather:sta_gather_tiled", in_place=_gather_in_place,
            auto_on=frozenset({"other"}), auto_rank=1),
    Backend("reference", can_run_reference, f"dense SDPA with an explicit mask (at most {REFERENCE_MAX_TOKENS} tokens)",
            natural="reference:sta_reference_natural", auto_on=frozenset({"other"}), auto_rank=2),
)}

BACKENDS = ("auto", *TABLE)

#: Compute precisions of ``sta_attention(..., precision=...)``. ``bf16`` computes in the inputs' dtype (every
#: backend); ``fp8`` quantizes q, k, v to e4m3 with float32 block scales and runs both products in FP8; ``int8`` is
#: the same with Q and K in int8 (QK^T on the int8 tensor cores: more accurate, a little slower). Both 8-bit
#: precisions are opt-in, only on the ``gluon`` backend (which ``auto`` resolves to); output in the inputs' dtype.
PRECISIONS = ("bf16", "fp8", "int8")

#: Backends that run ``precision="fp8"``, same fields as :data:`TABLE` (only ``gluon``).
FP8_TABLE: dict[str, Backend] = {b.name: b for b in (
    Backend("gluon", can_run_gluon_fp8,
            "FP8 (e4m3) Gluon kernel after a quantization pre-pass (Hopper, head dim 64 or 128)",
            natural="gluon_fp8:sta_gluon_fp8_natural", tiled="gluon_fp8:sta_gluon_fp8_tiled",
            in_place=_gluon_boxes_in_place),
)}

#: Backends that run ``precision="int8"`` (int8 QK^T, e4m3 PV), same fields as :data:`TABLE`.
INT8_TABLE: dict[str, Backend] = {b.name: b for b in (
    Backend("gluon", can_run_gluon_fp8,
            "8-bit Gluon kernel, QK^T in int8 and PV in e4m3, after a quantization pre-pass (Hopper, head dim 64 "
            "or 128)", natural="gluon_fp8:sta_gluon_int8_natural", tiled="gluon_fp8:sta_gluon_int8_tiled",
            in_place=_gluon_boxes_in_place),
)}

_QUANTIZED = {"fp8": FP8_TABLE, "int8": INT8_TABLE}


def _entry(backend: str) -> Backend:
    if backend not in TABLE:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return TABLE[backend]


def can_run(backend: str, q: torch.Tensor, geometry: Geometry, layout: str) -> Verdict:
    """``can_run_<backend>(q, geometry, layout)`` by name."""
    return _entry(backend).can_run(q, geometry, layout)


def compatible_backends(q: torch.Tensor, geometry: Geometry, layout: str) -> dict[str, Verdict]:
    """Every backend with its verdict ``(ok, why)`` for these inputs: those that can run, and why the others cannot."""
    return {name: backend.can_run(q, geometry, layout) for name, backend in TABLE.items()}


def choose_backend(q: torch.Tensor, geometry: Geometry, layout: str = "natural") -> tuple[str, str]:
    """What ``auto`` resolves to, and why: on CUDA Gluon where it runs, else Triton, else flex; elsewhere the
    gather backend (only the window's key tiles, batched SDPA)."""
    device = "cuda" if q.device.type == "cuda" else "other"
    passed = []
    for backend in sorted(TABLE.values(), key=lambda b: b.auto_rank):
        if device not in backend.auto_on:
            continue
        ok, why = backend.can_run(q, geometry, layout)
        if ok:
            where = "CUDA tensors" if device == "cuda" else f"{q.device.type.upper()} tensors"
            return backend.name, "; ".join([f"{where}, {why}", *passed])
        passed.append(f"not {backend.name}: {why}")
    raise RuntimeError(f"no STA backend can run these inputs ({'; '.join(passed)})")  # flex always can


def runs_in_place(backend: str, q: torch.Tensor, k: torch.Tensor | None, v: torch.Tensor | None,
                  geometry: Geometry, precision: str = "bf16") -> Verdict:
    """Whether ``backend`` (resolved, not ``auto``) reads and writes natural-order ``q, k, v`` in place, without
    tile/untile copies. ``k``/``v`` default to ``q`` (their strides matter to the Triton kernel's TMA boxes)."""
    entry = _entry(backend) if precision == "bf16" else backend_for(backend, precision)
    k = q if k is None else k
    v = q if v is None else v
    if entry.in_place is None:
        return False, f"{backend} has no in-place natural-order path"
    ok, why = entry.can_run(q, geometry, "natural")
    if not ok:
        return False, why
    return entry.in_place(q, k, v, geometry)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def backend_for(backend: str, precision: str = "bf16") -> Backend:
    """The :class:`Backend` entry that runs a resolved ``backend`` at ``precision``."""
    return _QUANTIZED.get(check_precision(precision), TABLE)[backend]


def resolve(backend: str, q: torch.Tensor, geometry: Geometry, layout: str, precision: str = "bf16") -> str:
    """``backend`` checked (ValueError naming why it cannot run) or ``auto`` chosen (logged at INFO).

    ``precision="fp8"`` or ``"int8"``: ``auto`` and ``gluon`` resolve to the 8-bit Gluon kernel where
    :func:`can_run_gluon_fp8` passes, else ValueError saying why (never a silent fall back to bf16); other backends
    have no 8-bit path.
    """
    if check_precision(precision) in _QUANTIZED:
        table = _QUANTIZED[precision]
        if backend not in ("auto", *table):
            _entry(backend)
            raise ValueError(f"backend {backend!r} has no precision={precision!r} path (only {', '.join(table)}; "
                             "or auto)")
        name = "gluon" if backend == "auto" else backend
        ok, why = table[name].can_run(q, geometry, layout)
        if not ok:
            raise ValueError(f"precision {precision!r} cannot run: {why} (backend {name}; use precision='bf16')")
        if backend == "auto":
            logger.info("sta_attention: backend=%s precision=%s (%s)", name, precision, why)
        return name
    if backend == "auto":
        backend, why = choose_backend(q, geometry, layout)
        logger.info("sta_attention: backend=%s (%s)", backend, why)
        return backend
    ok, why = can_run(backend, q, geometry, layout)
    if not ok:
        raise ValueError(f"backend {backend!r} cannot run: {why}")
    return backend


def require_backend(backend: str, q: torch.Tensor, geometry: Geometry, layout: str = "natural", *,
                    option: str = "--backend", what: str = "these inputs", precision: str = "bf16") -> None:
    """The user's exit-2 error for a ``--backend`` value that cannot run: raises
    :class:`~sta_search.errors.UserError` naming the backend, the reason and what to use instead.

    Call it before any work (``q`` may be an empty ``(1, 1, 0, head_dim)`` tensor of the model's dtype and device).
    """
    from ..errors import UserError

    if backend not in BACKENDS:
        raise UserError(f"{option} {backend!r} is not one of {', '.join(BACKENDS)}")
    if precision != "bf16":
        try:
            resolve(backend, q, geometry, layout, precision)
        except ValueError as exc:
            raise UserError(f"--precision {precision} cannot run {what} here: {exc}") from None
        return
    if backend == "auto":
        return
    ok, why = can_run(backend, q, geometry, layout)
    if not ok:
        instead, _ = choose_backend(q, geometry, layout)
        raise UserError(f"{option} {backend} cannot run {what} here: {why} (use {option} {instead}, which "
                        f"{option} auto picks here)")


__all__ = [
    "BACKENDS", "FP8_TABLE", "GLUON_HEAD_DIMS", "INT8_TABLE", "LAYOUTS", "PRECISIONS", "TABLE", "Backend", "backend_for",
    "can_run", "can_run_flex", "can_run_gather", "can_run_gluon", "can_run_gluon_fp8", "can_run_reference",
    "can_run_triton", "check_precision", "choose_backend", "compatible_backends", "gluon_reads_tile_planes",
    "require_backend", "resolve",
    "runs_in_place",
]
