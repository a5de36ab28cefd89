"""Swap a video transformer's self-attention processors for ones that hand the attention op to a
Python function, and reproduce diffusers' own attention for that function (`dense_attention`)."""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from ..errors import UserError
from .base import AttentionCall, AttentionFn, ModelAdapter, get_adapter, unwrap


@dataclass
class HookState:
    """Where the hooked model is: updated before every transformer forward.

    `step` is the denoising step (a new timestep value starts the next step; a timestep *larger* than the
    previous one starts a new pipeline call at step 0, since samplers count timesteps down), `forward_index`
    the forward inside the step (0, then 1 for the second CFG forward), `canvas` the token grid of the current
    forward, `forwards` the forwards seen, `num_layers` the self-attention layers hooked (both experts).
    Call `reset()` to start counting steps from 0 again explicitly.
    """

    step: int = -1
    forward_index: int = -1
    canvas: tuple[int, int, int] | None = None
    timestep: float | None = None
    forwards: int = 0
    num_layers: int = 0
    transformer_index: int = -1
    parallel_config: object = None  # diffusers ParallelConfig of the transformer now running (enable_parallelism)

    def reset(self) -> None:
        self.step, self.forward_index, self.timestep, self.canvas = -1, -1, None, None


class _HookRuntime:
    """Shared by the processors of one `hook_attention` context."""

    def __init__(self, attention_fn: AttentionFn, state: HookState, text_first: bool, check_finite: bool):
        self.attention_fn = attention_fn
        self.state = state
        self.text_first = text_first
        self.check_finite = check_finite

    # Both run eagerly under torch.compile (a deliberate graph break): they read Python state and the
    # timestep value, and the attention function brings its own kernels.
    @torch.compiler.disable
    def before_forward(self, adapter: ModelAdapter, transformer_index: int, module, args, kwargs):
        hidden_states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        timestep = kwargs["timestep"] if "timestep" in kwargs else (args[1] if len(args) > 1 else None)
        state = self.state
        t = _timestep_value(timestep)
        if t is None:  # no timestep to go by: every forward is a step
            state.step, state.forward_index = state.step + 1, 0
        elif state.timestep is None or t > state.timestep:  # first forward of a pipeline call
            state.step, state.forward_index = 0, 0
        elif t == state.timestep:  # another forward of the same step (CFG)
            state.forward_index += 1
        else:
            state.step, state.forward_index = state.step + 1, 0
        state.timestep = t
        state.forwards += 1
        state.transformer_index = transformer_index
        state.parallel_config = getattr(module, "_parallel_config", None)
        state.canvas = tuple(int(n) for n in adapter.forward_canvas(module, args, kwargs))

    @torch.compiler.disable
    def attend(self, layer: int, q, k, v, text_len: int = 0, text_mask=None, head_offset: int = 0,
               total_heads: int | None = None) -> torch.Tensor:
        """Run the attention function on ``(batch, heads, tokens, head_dim)`` q, k, v of `layer`.

        Under Ulysses context parallelism q, k, v hold the full sequence for heads
        ``head_offset .. head_offset + heads - 1`` of `total_heads` (see `AttentionCall`)."""
        state = self.state
        if state.canvas is None:
            raise RuntimeError("a hooked attention layer ran outside a hooked transformer forward")
        video_len = math.prod(state.canvas)
        if q.shape[2] != video_len + text_len:
            raise RuntimeError(
                f"layer {layer}: {q.shape[2]} tokens but canvas {state.canvas} ({video_len} tokens) + "
                f"{text_len} text tokens; this transformer variant is not supported"
            )
        if self.check_finite:
            sums = torch.stack([x.sum(dtype=torch.float32) for x in (q, k, v)])
            finite = torch.isfinite(sums).tolist()
            if not all(finite):
                names = "/".join(n for n, ok in zip("qkv", finite) if not ok)
                raise UserError(
                    f"non-finite attention input ({names}) at layer {layer}, step {state.step} "
                    f"(forward {state.forward_index}): the model produced NaN/Inf; try another --dtype"
                )
        call = AttentionCall(
            step=state.step,
            layer=layer,
            q=q,
            k=k,
            v=v,
            canvas=state.canvas,
            text_len=int(text_len),
            text_first=self.text_first,
            text_mask=text_mask,
            forward_index=state.forward_index,
            head_offset=int(head_offset),
            total_heads=int(total_heads) if total_heads is not None else None,
        )
        out = self.attention_fn(call)
        if tuple(out.shape) != tuple(q.shape):
            raise RuntimeError(f"attention function returned shape {tuple(out.shape)} for q of shape {tuple(q.shape)}")
        return out if out.dtype == q.dtype else out.to(q.dtype)


def _timestep_value(timestep) -> float | None:
    if timestep is None:
        return None
    if isinstance(timestep, torch.Tensor):
        # Wan 2.2 TI2V passes per-token timesteps (first frame 0): the largest is the step's timestep.
        return float(timestep.detach().reshape(-1).max())
    return float(timestep)


def _transformers_and_adapter(model, adapter):
    """(transformers, adapter) for a transformer, a list of transformers, a pipeline or a LoadedModel."""
    if isinstance(model, torch.nn.Module):
        transformers = [model]
    elif isinstance(model, (list, tuple)):
        transformers = [t for t in model if t is not None]
    else:  # a diffusers pipeline or a LoadedModel
        transformers = [t for t in (getattr(model, "transformer", None), getattr(model, "transformer_2", None))
                        if t is not None]
        if adapter is None and isinstance(getattr(model, "adapter", None), ModelAdapter):
            adapter = model.adapter
    if not transformers:
        raise TypeError(f"no transformer to hook in {type(model).__name__}")
    transformers = [unwrap(t) for t in transformers]  # hooks go on the module inside torch.compile
    if adapter is None:
        adapter = get_adapter(transformers[0]).bind(model if not isinstance(model, (torch.nn.Module, list, tuple))
                                                    else None)
    for transformer in transformers[1:]:
        if get_adapter(transformer).family != adapter.family:
            raise UserError(f"cannot hook {type(transformer).__name__} together with a {adapter.family} transformer")
    return transformers, adapter


def _set_processor(module, processor) -> None:
    if hasattr(module, "set_processor"):
        module.set_processor(processor)
    else:
        module.processor = processor


@contextmanager
def hook_attention(transformer, attention_fn: AttentionFn, adapter: ModelAdapter | None = None, *,
                   check_finite: bool = False):
    """Hand every self-attention op of a diffusers video transformer to `attention_fn`.

    `transformer` is a transformer module, a list of them, a diffusers pipeline or a `LoadedModel`; for the
    last two both ``transformer`` and ``transformer_2`` (Wan 2.2's second expert) are hooked, the second
    expert's layers numbered after the first's (``AttentionCall.layer`` runs over ``0..num_layers-1`` of
    ``adapter.info(transformer, transformer_2)``).

    The installed processors compute q, k, v exactly like diffusers 0.42 (projections, q/k norms, RoPE),
    call ``attention_fn(AttentionCall(...))`` instead of the attention op, and finish exactly like
    diffusers (output projections, text/video split). Only self-attention is hooked: Wan's ``attn1`` (never
    the cross-attention ``attn2``), HunyuanVideo's dual- and single-stream joint attention (not the token
    refiner), CogVideoX's joint attention. A forward pre-hook on each transformer reads the canvas from the
    latent input and tracks the step from the timestep (see `HookState`).

    With ``check_finite=True`` each layer checks q, k, v for NaN/Inf (one sum each) and raises UserError
    naming the layer and step. Original processors and hooks are restored on exit, also on error.
    Yields the `HookState`.
    """
    transformers, adapter = _transformers_and_adapter(transformer, adapter)
    state = HookState()
    runtime = _HookRuntime(attention_fn, state, adapter.text_first, check_finite)
    saved: list[tuple[torch.nn.Module, object]] = []
    handles = []
    try:
        layer = 0
        for index, module in enumerate(transformers):
            handles.append(module.register_forward_pre_hook(partial(runtime.before_forward, adapter, index),
                                                            with_kwargs=True))
            for attention in adapter.attention_modules(module):
                saved.append((attention, attention.processor))
                _set_processor(attention, adapter.make_processor(runtime, layer))
                layer += 1
        state.num_layers = layer
        yield state
    finally:
        for handle in handles:
            handle.remove()
        for attention, processor in reversed(saved):
            _set_processor(attention, processor)


def text_key_mask(call: AttentionCall) -> torch.Tensor | None:
    """``(batch, 1, 1, tokens)`` bool key mask of `call` (video keys and real text keys True), or None."""
    if call.text_mask is None or call.text_len == 0:
        return None
    batch, tokens = call.q.shape[0], call.q.shape[2]
    valid = torch.ones(batch, tokens, dtype=torch.bool, device=call.q.device)
    text = call.text_mask.to(device=call.q.device, dtype=torch.bool)
    if call.text_first:
        valid[:, : call.text_len] = text
    else:
        valid[:, tokens - call.text_len :] = text
    return valid[:, None, None, :]


def dense_attention(call: AttentionCall) -> torch.Tensor:
    """What diffusers computes: SDPA over all tokens with the text key-padding mask (if any)."""
    return F.scaled_dot_product_attention(call.q, call.k, call.v, attn_mask=text_key_mask(call))
