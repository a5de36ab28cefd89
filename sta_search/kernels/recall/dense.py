"""Dense attention with its log-sum-exp on CUDA: one fused kernel, the fastest that works here.

Kernels, tried in this order (``DENSE_LSE_KERNELS``): cuDNN SDPA (``aten._scaled_dot_product_cudnn_attention``
with ``compute_log_sumexp``), FlashAttention-2 (``aten._scaled_dot_product_flash_attention``), then
memory-efficient attention (any dtype and head dim). None of them takes a key-padding mask at full speed, so
the caller drops padded keys instead (:func:`sta_search.kernels.recall.attention_with_lse`).

Each kernel is checked once per process and (dtype, head dim, device) before its first use: it runs a tiny
problem against a float64 reference, which catches both failures and a log-sum-exp of another layout or
base (cuDNN's stats come as ``(B, H, S)`` or ``(B, H, S, 1)`` depending on the PyTorch version). A kernel that
fails there, or raises later, is remembered as unusable and the next one is used; why is logged at INFO
(``sta-search -v``).
"""

from __future__ import annotations

import logging
import math

import torch

logger = logging.getLogger("sta_search.kernels")

DENSE_LSE_KERNELS = ("cudnn", "flash", "efficient")
_HALF = (torch.float16, torch.bfloat16)
#: (kernel, dtype, head dim, device) -> why it cannot be used in this process
UNUSABLE: dict[tuple, str] = {}
#: (kernel, dtype, head dim, device) keys whose probe passed
_CHECKED: set[tuple] = set()
_PROBE_TOLERANCE = {"out": 3e-2, "lse": 2e-2}


def _cudnn(q, k, v, scale):
    out, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, False, False,
                                                                  scale=scale)[:2]
    return out, lse


def _flash(q, k, v, scale):
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=scale)[:2]
    return out, lse


def _efficient(q, k, v, scale):
    out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, False,
                                                                      scale=scale)[:2]
    return out, lse


#: name -> ``fn(q, k, v, scale) -> (out, raw lse)``; tests replace entries to exercise the fallback chain
RUNNERS = {"cudnn": _cudnn, "flash": _flash, "efficient": _efficient}


def static_check(name: str, q: torch.Tensor) -> tuple[bool, str]:
    """What can be told without running ``name``: dtype and head dim."""
    D = q.shape[-1]
    if name in ("cudnn", "flash"):
        if q.dtype not in _HALF:
            return False, f"dtype {q.dtype} (bf16/fp16 only)"
        if D % 8 or D > 256:
            return False, f"head dim {D} (a multiple of 8, at most 256)"
    return True, "ok"


def _normalized_lse(lse: torch.Tensor, rows: int) -> torch.Tensor:
    """``(B, H, rows)`` float32 from the kernels' ``(B, H, >= rows)`` or ``(B, H, rows, 1)``."""
    if lse.dim() == 4 and lse.shape[-1] == 1:
        lse = lse[..., 0]
    return lse[:, :, :rows].float()


def _key(name: str, q: torch.Tensor) -> tuple:
    return name, q.dtype, q.shape[-1], str(q.device)


def _probe(name: str, q: torch.Tensor, scale: float) -> None:
    """Run ``name`` on a tiny problem and compare with float64; raises ``RuntimeError`` saying what is off."""
    g = torch.Generator(device="cpu").manual_seed(0)
    D = q.shape[-1]
    qs, ks, vs = (torch.randn(1, 2, n, D, generator=g).to(q.device, q.dtype) for n in (80, 72, 72))
    qs = qs * 2
    out, lse = RUNNERS[name](qs, ks, vs, scale)
    out, lse = out.double(), _normalized_lse(lse, qs.shape[2]).double()
    scores = qs.double() @ ks.double().transpose(-1, -2) * scale
    ref_lse = torch.logsumexp(scores, dim=-1)
    ref_out = torch.softmax(scores, dim=-1) @ vs.double()
    if tuple(out.shape) != tuple(ref_out.shape) or tuple(lse.shape) != tuple(ref_lse.shape):
        raise RuntimeError(f"shapes out {tuple(out.shape)} lse {tuple(lse.shape)}, expected "
                           f"{tuple(ref_out.shape)} and {tuple(ref_lse.shape)}")
    lse_err = float((lse - ref_lse).abs().max())
    out_err = float((out - ref_out).abs().max())
    if not (lse_err <= _PROBE_TOLERANCE["lse"]) or not (out_err <= _PROBE_TOLERANCE["out"]):
        ratio = float((lse / ref_lse).median())
        raise RuntimeError(f"wrong results on a probe: max |lse - ref| {lse_err:.3g}, max |out - ref| {out_err:.3g} "
                           f"(lse / ref median {ratio:.4g}; 1/ln 2 = {1 / math.log(2):.4g} would be a base-2 lse)")


def _usable(name: str, q: torch.Tensor, scale: float) -> bool:
    key = _key(name, q)
    if key in UNUSABLE:
        return False
    if key in _CHECKED:
        return True
    ok, why = static_check(name, q)
    if ok:
        try:
            _probe(name, q, scale)
        except Exception as exc:  # not built in, unsupported shape/GPU, or wrong numbers
            ok, why = False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    if not ok:
        UNUSABLE[key] = why
        logger.info("dense attention + lse: %s unusable for %s head dim %d on %s (%s)", name, q.dtype, q.shape[-1],
                    q.device, why)
        return False
    _CHECKED.add(key)
    logger.info("dense attention + lse: %s for %s head dim %d on %s", name, q.dtype, q.shape[-1], q.device)
    return True


def fused_attention_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                        kernel: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """One fused dense attention over all of ``k``/``v`` (no mask): ``out`` ``(B, H, Sq, D)`` in q's dtype (any
    strides) and the natural-log ``lse`` ``(B, H, Sq)`` float32.

    ``kernel``: ``"auto"`` (the first usable of :data:`DENSE_LSE_KERNELS`) or one of them (no fallback: raises
    when it cannot run)."""
    if kernel != "auto":
        if kernel not in RUNNERS:
            raise ValueError(f"kernel must be 'auto' or one of {DENSE_LSE_KERNELS}, got {kernel!r}")
        ok, why = static_check(kernel, q)
        if not ok:
            raise ValueError(f"dense kernel {kernel} cannot run: {why}")
        out, lse = RUNNERS[kernel](q, k, v, scale)
        return out, _normalized_lse(lse, q.shape[2])
    for name in DENSE_LSE_KERNELS:
        if not _usable(name, q, scale):
            continue
        try:
            out, lse = RUNNERS[name](q, k, v, scale)
        except RuntimeError as exc:  # this shape or size: remember, use the next kernel from now on
            if "out of memory" in str(exc).lower():
                raise
            UNUSABLE[_key(name, q)] = f"RuntimeError at shape {tuple(q.shape)}: {str(exc).splitlines()[0][:300]}"
            logger.info("dense attention + lse: %s failed (%s); falling back", name, UNUSABLE[_key(name, q)])
            continue
        return out, _normalized_lse(lse, q.shape[2])
    raise RuntimeError("no fused dense attention kernel can run: "
                       + "; ".join(f"{n}: {UNUSABLE.get(_key(n, q), '?')}" for n in DENSE_LSE_KERNELS))


def chosen_kernel(q: torch.Tensor) -> str | None:
    """The kernel ``auto`` uses for tensors like ``q`` (after a first call), for reports."""
    for name in DENSE_LSE_KERNELS:
        key = _key(name, q)
        if key in _CHECKED and key not in UNUSABLE:
            return name
    return None
