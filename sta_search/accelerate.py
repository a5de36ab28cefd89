"""Run a diffusers video pipeline (or a bare transformer) with the windows of a mask config.

    import sta_search
    with sta_search.accelerate(pipe, "mask.yaml"):
        video = pipe(prompt, num_inference_steps=50, ...).frames[0]

Inside the ``with`` block every self-attention layer of ``pipe.transformer`` (and of Wan 2.2's
``pipe.transformer_2``) runs Sliding Tile Attention with the window the config gives its (step, layer,
head), full attention on the config's dense steps and on layers whose every head has a full window; on
exit (also on error) the original attention processors are back. The config is checked against the model on entry and against the
canvas and step count as soon as they are known (pass ``height``/``width``/``frames``/``steps`` to
check everything before the first step).
"""

from __future__ import annotations

import contextlib
import sys
import time
import types
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import UserError


# --------------------------------------------------------------------------------------- configs
def load_mask(mask):
    """A :class:`~sta_search.maskconfig.MaskConfig`, or a path to its YAML file, -> MaskConfig."""
    from .maskconfig import MaskConfig

    if isinstance(mask, MaskConfig):
        return mask
    if isinstance(mask, (str, Path)):
        path = Path(mask)
        return MaskConfig.load(path)  # UserError naming the path: missing, a folder, unreadable, not a config
    raise TypeError(f"mask must be a MaskConfig or a path to a mask YAML, got {type(mask).__name__}")


def check_config(config, info, canvas=None, steps: int | None = None, *, tile=None, declared: str = ""):
    """Raise :class:`UserError` naming every way ``config`` does not fit this run, with both values.

    Compared: model family and transformer class, layers and heads (``info``), ``canvas`` and ``steps`` of
    the run when given, and ``tile`` when the model declares one (``declared`` says where such expected
    values came from, e.g. the model folder's ``sta_search.json``, and is added to the message).

    Returns the config to run: for a multi-canvas config the entry for ``canvas`` (``config`` itself when
    ``canvas`` is None or it has one canvas).
    """
    from .kernels.geometry import Geometry

    if canvas is not None and getattr(config, "alternates", ()) and tuple(int(c) for c in canvas) in config.canvases:
        config = config.for_canvas(canvas)

    try:
        config.validate(info, config.canvas if canvas is None else canvas, steps, tile=tile)
    except UserError as exc:
        text, hints = str(exc), []
        if declared and ("canvas:" in text or "tile:" in text):  # where the run's size or tile came from
            hints.append(declared)
        if "canvas:" in text and canvas is not None:
            hints.append("a config for this canvas: sta-search select PROFILE --canvas "
                         f"{','.join(str(int(c)) for c in canvas)} --add-to MASK")
        raise UserError(text + (f" ({'; '.join(hints)})" if hints else "")) from None
    try:
        Geometry(tuple(config.canvas), tuple(config.tile))
    except ValueError as exc:
        raise UserError(f"mask config tile {tuple(config.tile)} does not fit canvas {tuple(config.canvas)}: {exc}") from None
    return config


def _model_parts(pipe_or_transformer):
    """(transformer, transformer_2 or None, pipeline or None) of a diffusers pipeline, a ``LoadedModel``
    or a bare transformer module (Wan 2.2 pipelines carry a second expert, ``transformer_2``)."""
    transformer = getattr(pipe_or_transformer, "transformer", None)
    if isinstance(transformer, torch.nn.Module):
        pipeline = getattr(pipe_or_transformer, "pipeline", pipe_or_transformer)
        return transformer, getattr(pipe_or_transformer, "transformer_2", None), pipeline
    if isinstance(pipe_or_transformer, torch.nn.Module):
        return pipe_or_transformer, None, None
    raise TypeError(f"expected a diffusers pipeline or a transformer module, got {type(pipe_or_transformer).__name__}")


# --------------------------------------------------------------------------------------- timing
class AttentionTimer:
    """Time spent inside attention calls, per denoising step.

    On CUDA each call is bracketed by CUDA events (no synchronisation in the hot path; results are
    read when asked for); on CPU by ``time.perf_counter``.
    """

    def __init__(self):
        self._events: list[tuple[int, torch.cuda.Event, torch.cuda.Event]] = []
        self._cpu_seconds: dict[int, float] = defaultdict(float)
        self.calls = 0

    def wrap(self, attention_fn):
        def timed(call):
            self.calls += 1
            if call.q.is_cuda:
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                out = attention_fn(call)
                end.record()
                self._events.append((call.step, start, end))
                return out
            t0 = time.perf_counter()
            out = attention_fn(call)
            self._cpu_seconds[call.step] += time.perf_counter() - t0
            return out

        return timed

    def reset(self) -> None:
        """Forget what was recorded (e.g. after warm-up); wrapped functions keep recording into this timer."""
        self._events.clear()
        self._cpu_seconds.clear()
        self.calls = 0

    def seconds_per_step(self) -> dict[int, float]:
        totals = defaultdict(float, self._cpu_seconds)
        if self._events:
            torch.cuda.synchronize()
            for step, start, end in self._events:
                totals[step] += start.elapsed_time(end) / 1000.0
        return dict(sorted(totals.items()))

    def total_seconds(self) -> float:
        return float(sum(self.seconds_per_step().values()))


# --------------------------------------------------------------------------------------- attention
@dataclass
class MaskAttention:
    """The :data:`~sta_search.models.AttentionFn` of a mask config.

    Per call (step, layer): full attention (:func:`fast_dense_attention`: SDPA like diffusers) on the config's
    dense steps and on layers whose every head's window covers the whole grid; otherwise
    :func:`sta_search.kernels.sta_attention` with the layer's ``(heads, 3)`` window table (kept on the
    call's device, one tensor per distinct table). Inputs larger than ``max_chunk_bytes`` per tensor
    run a few heads at a time (the kernel entry copies q, k, v into tile order; chunking bounds those
    copies so peak memory stays at the dense level); ``None`` runs all heads in one call.
    """

    config: object
    backend: str = "auto"
    precision: str = "bf16"  # "fp8" / "int8": the opt-in 8-bit Gluon kernel (kernels.backends.PRECISIONS)
    max_chunk_bytes: int | None = 64 * 2**20
    calls: Counter = field(default_factory=Counter)
    check_experts: bool = True  # two-expert configs: refuse a call of the expert the config says rests
    trace: list | None = None  # a list: one (step, layer, forward_index, (heads, 3) table or None) per call

    def __post_init__(self):
        self._source = self.config  # a multi-canvas config: every entry; the one for the call's canvas runs
        self._bind(self.config)

    def _bind(self, config) -> None:
        from .kernels.geometry import Geometry

        self.config = config
        self.geometry = Geometry(tuple(self.config.canvas), tuple(self.config.tile))
        self._plans: dict[int, list[bytes | None]] = {}
        self._tables: dict[bytes, np.ndarray] = {}
        self._on_device: dict[tuple[bytes, str], torch.Tensor] = {}
        self._decisions: dict[tuple, tuple[str, bool]] = {}

    def plan(self, step: int) -> list[np.ndarray | None]:
        """Per layer of ``step``: the ``(heads, 3)`` int32 window table, or None for full attention."""
        return [None if key is None else self._tables[key] for key in self._plan_keys(step)]

    def _plan_keys(self, step: int) -> list[bytes | None]:
        keys = self._plans.get(step)
        if keys is not None:
            return keys
        table = self.config.window_table(step)
        if table is None:
            keys = [None] * int(np.asarray(self.config.windows).shape[1])
        else:
            keys = []
            for layer_windows in np.asarray(table):
                clipped = np.array([self.geometry.clip_window(w) for w in layer_windows.tolist()], dtype=np.int32)
                if all(self.geometry.is_full(w) for w in clipped.tolist()):
                    keys.append(None)
                    continue
                key = clipped.tobytes()
                self._tables.setdefault(key, clipped)
                keys.append(key)
        self._plans[step] = keys
        return keys

    def density(self, steps: int | None = None) -> dict:
        """Exact video-video attention density this config runs with, averaged over steps, layers, heads."""
        steps = int(self.config.steps) if steps is None else steps
        per_step = []
        experts = getattr(self.config, "experts", None)
        for step in range(steps):
            layers = []
            for layer, table in enumerate(self.plan(step)):
                if experts is not None and step < experts.num_steps and not experts.runs(step, layer):
                    continue  # the resting expert's layers
                layers.append(1.0 if table is None else float(np.mean([self.geometry.density(w) for w in table.tolist()])))
            per_step.append(float(np.mean(layers)) if layers else 1.0)
        sparse = [d for s, d in enumerate(per_step) if self.config.window_table(s) is not None]
        return {"overall": float(np.mean(per_step)) if per_step else 1.0,
                "sparse_steps": float(np.mean(sparse)) if sparse else 1.0,
                "per_step": per_step}

    def __call__(self, call) -> torch.Tensor:
        from .kernels import sta_attention
        from .models.parallel import windows_for_call

        if tuple(call.canvas) != self.geometry.canvas and tuple(call.canvas) in getattr(self._source, "canvases", ()):
            self._bind(self._source.for_canvas(call.canvas))  # another entry of a multi-canvas config
        if tuple(call.canvas) != self.geometry.canvas:
            held = " and ".join(str(tuple(c)) for c in getattr(self._source, "canvases", (self.geometry.canvas,)))
            raise UserError(f"mask config is for canvas {held} but the model runs on canvas {tuple(call.canvas)}; "
                            "profile and select again for this resolution/frame count, or transfer a config "
                            "(`sta-search select --canvas`)")
        if call.step >= int(self.config.steps):
            raise UserError(f"mask config is for {self.config.steps} denoising steps but the pipeline runs step "
                            f"{call.step + 1}; use --steps {self.config.steps} or select a config for this step count")
        keys = self._plan_keys(call.step)
        if call.layer >= len(keys):
            raise UserError(f"mask config has {len(keys)} layers but the model called attention layer {call.layer}")
        experts = getattr(self.config, "experts", None)
        if experts is not None and self.check_experts and not experts.runs(call.step, call.layer):
            raise UserError(f"the pipeline ran {experts.names[experts.expert_of_layer(call.layer)]} at step "
                            f"{call.step}, but the mask config's expert split is {experts.describe()}: "
                            "profile and select again for this pipeline's expert switch")
        key = keys[call.layer]
        if self.trace is not None:
            self.trace.append((call.step, call.layer, call.forward_index, None if key is None else self._tables[key]))
        if key is None:
            self.calls["dense"] += 1
            return fast_dense_attention(call)
        self.calls["sparse"] += 1
        device_key = (key, str(call.q.device))
        windows = self._on_device.get(device_key)
        if windows is None:
            windows = torch.from_numpy(self._tables[key]).to(call.q.device)
            self._on_device[device_key] = windows
        windows = windows_for_call(windows, call)  # this rank's heads under Ulysses; all heads otherwise
        q, k, v = call.q, call.k, call.v
        kernel, copies = self._decide(q, k, v)
        # which STA kernel ran, for reports (and at which precision, when not the model's dtype)
        self.calls[f"kernel:{kernel}" if self.precision == "bf16" else f"kernel:{kernel}-{self.precision}"] += 1
        kwargs = dict(canvas=self.geometry.canvas, tile=self.geometry.tile, text_len=call.text_len,
                      text_first=call.text_first, text_mask=call.text_mask, backend=kernel,
                      precision=self.precision)
        heads = q.shape[1]
        per_head_bytes = q[:, :1].numel() * q.element_size()
        chunk = max(1, self.max_chunk_bytes // per_head_bytes) if self.max_chunk_bytes else heads
        if chunk >= heads or not copies:
            return sta_attention(q, k, v, windows=windows, **kwargs)
        # Large inputs: a few heads at a time, so the tile-order copies stay a small fraction of q
        # and the whole call allocates little more than the output SDPA would allocate.
        out = torch.empty_like(q)
        for h0 in range(0, heads, chunk):
            h1 = min(heads, h0 + chunk)
            out[:, h0:h1] = sta_attention(q[:, h0:h1], k[:, h0:h1], v[:, h0:h1], windows=windows[h0:h1], **kwargs)
        return out

    def _decide(self, q, k, v) -> tuple[str, bool]:
        """(resolved kernel, whether it copies into tile order), decided once per input signature (device, dtype,
        shape, strides): every layer of every step asks the same question, and ``auto`` logs its choice."""
        signature = (q.device, q.dtype, tuple(q.shape), q.stride(), k.stride(), v.stride())
        decision = self._decisions.get(signature)
        if decision is None:
            kernel = self._kernel_for(q)
            decision = self._decisions[signature] = (kernel, self._copies_needed(kernel, q, k, v))
        return decision

    def _kernel_for(self, q) -> str:
        """The STA backend that runs ``q`` (``auto`` resolved by ``kernels.backends``, logged at INFO)."""
        from .kernels import backends

        return backends.resolve(self.backend, q, self.geometry, "natural", self.precision)

    def _copies_needed(self, backend: str, q, k, v) -> bool:
        """Whether ``backend`` (resolved) copies q, k, v into tile order (False: it reads the natural layout in
        place, so chunking heads would only add launches)."""
        from .kernels import backends

        return not backends.runs_in_place(backend, q, k, v, self.geometry, self.precision)[0]


def fast_dense_attention(call) -> torch.Tensor:
    """Full attention, as fast as SDPA allows: diffusers' ``dense_attention`` (SDPA with the text key mask),
    except that an all-true text mask is dropped. Same result; with a boolean mask SDPA leaves its
    fastest kernels (measured on an H100, HunyuanVideo 720p: 418 ms a layer with the mask, 265 ms without).
    """
    import torch.nn.functional as F

    from .models import dense_attention

    if call.text_mask is not None and not bool(call.text_mask.all()):
        return dense_attention(call)
    with sdpa_cudnn_first(call.q.device):
        return F.scaled_dot_product_attention(call.q, call.k, call.v)


def sdpa_cudnn_first(device):
    """A context making SDPA try cuDNN attention first, then flash, memory-efficient, math (no-op off CUDA).

    On an H100 at hunyuan-720p cuDNN runs 262 ms a layer and FlashAttention-2 466 ms
    (bench/results/kernel-*.json); torch's default order may pick the latter.
    """
    if torch.device(device).type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    try:
        return sdpa_kernel(order, set_priority=True)
    except TypeError:  # a torch without set_priority: its own order among the same backends
        return sdpa_kernel(order)


def timed_dense_attention(timer: AttentionTimer | None = None):
    """:func:`fast_dense_attention` (optionally timed), kept out of torch.compile graphs like the STA path."""
    fn = timer.wrap(fast_dense_attention) if timer is not None else fast_dense_attention
    return torch.compiler.disable(fn)


# --------------------------------------------------------------------------------------- compile
def compile_transformer(transformer: torch.nn.Module, **compile_kwargs) -> int:
    """Regional ``torch.compile``: compile every repeated transformer block in place.

    The attention call inside each block is excluded from the graph (a graph break), so the same compiled
    blocks serve dense and STA attention; the fusable work around attention (norms, modulation, RoPE,
    gates, MLP activations) is what gets faster. Returns the number of blocks compiled.
    """
    repeated = set(getattr(transformer, "_repeated_blocks", None) or ())
    compiled = 0
    for module in transformer.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 1:
            names = {type(block).__name__ for block in module}
            if len(names) == 1 and (not repeated or names & repeated or "Block" in next(iter(names))):
                for block in module:
                    block.compile(**compile_kwargs)
                    compiled += 1
    if not compiled:
        transformer.compile(**compile_kwargs)
        compiled = 1
    return compiled


# --------------------------------------------------------------------------------------- public API
@dataclass
class Acceleration:
    """What :func:`accelerate` yields: the config, the attention function, the hook state and timings."""

    config: object
    attention: MaskAttention
    timer: AttentionTimer
    info: object
    state: object = None
    cache: object = None  # sta_search.caches.CacheChoice

    @property
    def step(self) -> int:
        return getattr(self.state, "step", 0)


@contextlib.contextmanager
def accelerate(pipe_or_transformer, mask, *, backend: str = "auto", height: int | None = None,
               width: int | None = None, frames: int | None = None, steps: int | None = None,
               timer: AttentionTimer | None = None, cache=None, precision: str = "bf16"):
    """Run ``pipe_or_transformer`` with the Sliding Tile Attention windows of ``mask`` inside the block.

    Args:
        pipe_or_transformer: a diffusers video pipeline (its ``transformer``, and ``transformer_2`` for
            Wan 2.2, are hooked; the second expert's layers follow the first's), a ``LoadedModel`` or a
            bare transformer module.
        mask: a :class:`~sta_search.maskconfig.MaskConfig` or the path of a mask YAML.
        backend: STA kernel backend, ``"auto"`` (Gluon on Hopper, else Triton on CUDA), ``"gluon"``,
            ``"triton"``, ``"flex"`` or ``"reference"``.
        height, width, frames: pipeline call sizes; when all three are given the config's canvas is checked
            on entry, otherwise at the first attention call (before any sparse attention runs).
        steps: number of denoising steps the pipeline will run; checked on entry when given.
        timer: an :class:`AttentionTimer` collecting the time spent in attention.
        cache: a diffusers step cache to run together with STA inside the block: a name of
            :data:`sta_search.caches.CACHE_NAMES` or a diffusers cache config (e.g. a calibrated
            ``MagCacheConfig``); enabled on entry, disabled on exit. A cache the caller enabled already works
            too. Either way each call's window comes from the step index the pipeline is at (see
            :class:`sta_search.caches.PipelineSteps`), so steps a cache skips do not shift the schedule.
        precision: ``"bf16"`` (the model's dtype), ``"fp8"`` or ``"int8"``: the opt-in 8-bit Gluon kernel for the
            sparse calls (Hopper, head dim 64 or 128; ``int8`` computes QK^T from int8 Q and K; a refusal raises
            ValueError at the first call, never a silent bf16 run).

    Yields:
        :class:`Acceleration`. The original attention processors are restored on exit, also on error.

    Raises:
        UserError: the config is for another model (class, layers, heads), canvas, tile or step count.
    """
    from .models import ModelAdapter, get_adapter, hook_attention

    config = load_mask(mask)
    transformer, transformer_2, pipeline = _model_parts(pipe_or_transformer)
    adapter = getattr(pipe_or_transformer, "adapter", None)
    if not isinstance(adapter, ModelAdapter):
        adapter = get_adapter(transformer).bind(pipeline)
    info = adapter.info(transformer, transformer_2)
    canvas = None
    if height is not None and width is not None and frames is not None:
        canvas = tuple(adapter.canvas(transformer, height, width, frames))
    config = check_config(config, info, canvas, steps)
    attention = MaskAttention(config, backend=backend, precision=precision)
    timer = timer if timer is not None else AttentionTimer()
    acceleration = Acceleration(config=config, attention=attention, timer=timer, info=info)
    from .caches import PipelineSteps, use_cache

    target = transformer if pipeline is None else [transformer, transformer_2]
    with contextlib.ExitStack() as stack:
        acceleration.cache = stack.enter_context(use_cache(pipe_or_transformer, cache))
        pipeline_steps = stack.enter_context(PipelineSteps(pipe_or_transformer))
        attention_fn = torch.compiler.disable(pipeline_steps.wrap(timer.wrap(attention)))
        state = stack.enter_context(hook_attention(target, attention_fn, adapter=adapter))
        acceleration.state = state
        yield acceleration


class _CallableModule(types.ModuleType):
    """``sta_search.accelerate`` is both this module and the context manager: once the submodule is
    imported, Python binds the package attribute to the module, so the module forwards calls."""

    def __call__(self, *args, **kwargs):
        return accelerate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
