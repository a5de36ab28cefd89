"""diffusers' step caches (``diffusers.hooks``) together with Sliding Tile Attention.

A cache hook and STA act on different things: the cache decides *whether* a block or attention module
computes at a step (and reuses or predicts its output otherwise); STA decides *how* the self-attention that
does run is computed. The two compose because the cache hooks wrap modules (blocks, attention modules, the
transformer forward) while STA swaps attention *processors* (:func:`sta_search.models.hook_attention`);
either may be installed first.

Names (``--cache``), each a diffusers 0.42.1 config with its defaults unless said otherwise:

=============  ======================================================================================
none           no cache
first-block    ``FirstBlockCacheConfig(threshold=0.05)``: the first block always runs; when its
               residual changed little the other blocks are skipped for the step (data-dependent)
taylorseer     ``TaylorSeerCacheConfig()`` (full steps 0-2, then one in 5; the others predicted by a
               Taylor series). Its default module patterns (``^blocks.*attn``, matched whole) match no
               Wan module (``attn1``/``attn2``): for such models the same patterns with a trailing
               ``\\d*`` are used, so the attention modules diffusers meant are the cached ones
taylorseer-   ``TaylorSeerCacheConfig(use_lite_mode=True)``: on predicted steps the transformer blocks do
lite           not run at all and only ``proj_out``'s output is predicted, so it stores one tensor's
               factors instead of every block's (HunyuanVideo 13B at 720p: the full TaylorSeer and STA
               together ran out of memory on a 140 GB H200); needs a ``proj_out`` module
mag            ``MagCacheConfig`` needs magnitude ratios calibrated for the checkpoint (diffusers ships
               Flux's only): from the command line it is refused; library users pass their own
               ``MagCacheConfig`` to :func:`sta_search.accelerate` (``cache=``)
faster         ``FasterCacheConfig`` (diffusers' documented CogVideoX settings); it needs the conditional
               and unconditional inputs batched in one forward (CogVideoX), so Wan/HunyuanVideo are refused
pab            ``PyramidAttentionBroadcastConfig`` (spatial skip range 2 within timesteps (100, 800)); its
               counter runs per forward, so with CFG as two forwards (Wan) the unconditional forward would
               reuse the conditional one's attention: refused for such pipelines
=============  ======================================================================================

Steps. :class:`PipelineSteps` gives every attention call the denoising step index *the pipeline* is at:
the ``step_index`` the pipeline passes to ``transformer.cache_context`` (Wan), else the position of the
pipeline's ``current_timestep`` in ``scheduler.timesteps``; only when neither exists the hook's own count
(a new timestep value starts a step). A skipped block or step therefore never shifts the window schedule.

``torch.compile``: regional compile (``--compile``) compiles each block's call, which includes the cache
hook's Python (its decisions are data-dependent: graph breaks and guards on the hook state). It runs and
gives the same result (tests/test_caches.py checks this with dynamo's eager backend); how much it gains on
top of a cache is measured by bench/e2e_cache.py, not promised here.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, replace
from functools import partial

import torch

from .errors import UserError

CACHE_NAMES = ("none", "first-block", "taylorseer", "taylorseer-lite", "mag", "faster", "pab")

#: Families whose pipelines run the classifier-free-guidance branches as separate transformer forwards.
_SEPARATE_CFG_FAMILIES = ("wan",)


@dataclass(frozen=True)
class CacheChoice:
    """A resolved cache: its name and one diffusers config per transformer (None for ``none``)."""

    name: str
    configs: tuple = ()

    @property
    def enabled(self) -> bool:
        return self.name != "none"


# ----------------------------------------------------------------------------------- checks
def _family(transformer) -> str:
    from .models import get_adapter

    try:
        return get_adapter(transformer).family
    except Exception:  # noqa: BLE001 - an unknown transformer: no family-specific rules
        return type(transformer).__name__


def _block_lists(transformer) -> list[tuple[str, torch.nn.ModuleList]]:
    from diffusers.hooks._common import _ALL_TRANSFORMER_BLOCK_IDENTIFIERS

    return [(name, child) for name, child in transformer.named_children()
            if name in _ALL_TRANSFORMER_BLOCK_IDENTIFIERS and isinstance(child, torch.nn.ModuleList)]


def _unregistered_blocks(transformer) -> list[str]:
    from diffusers.hooks._helpers import TransformerBlockRegistry

    missing = []
    for _, blocks in _block_lists(transformer):
        for block in blocks:
            try:
                TransformerBlockRegistry.get(type(block))
            except ValueError:
                missing.append(type(block).__name__)
    return sorted(set(missing))


def _taylorseer_patterns(transformer) -> list[str] | None:
    """None: diffusers' default patterns match some module; else the defaults with a trailing ``\\d*``."""
    from diffusers.hooks.taylorseer_cache import _TRANSFORMER_BLOCK_IDENTIFIERS

    names = [name for name, _ in transformer.named_modules()]
    if any(re.fullmatch(p, n) for p in _TRANSFORMER_BLOCK_IDENTIFIERS for n in names):
        return None
    patterns = [p + r"\d*" for p in _TRANSFORMER_BLOCK_IDENTIFIERS]
    return patterns if any(re.fullmatch(p, n) for p in patterns for n in names) else []


def can_use_cache(name: str, transformer, pipeline=None) -> tuple[bool, str]:
    """Whether cache ``name`` can run on ``transformer`` (driven by ``pipeline``, if given): (ok, why not)."""
    if name not in CACHE_NAMES:
        return False, f"unknown cache {name!r}; choose one of {', '.join(CACHE_NAMES)}"
    if name == "none":
        return True, ""
    from diffusers.models.cache_utils import CacheMixin

    cls = type(transformer).__name__
    if not isinstance(transformer, CacheMixin):
        return False, f"{cls} has no diffusers cache support (not a CacheMixin)"
    family = _family(transformer)
    if name in ("first-block", "mag"):
        if not _block_lists(transformer):
            return False, f"{cls} has no transformer block list the {name} cache knows"
        missing = _unregistered_blocks(transformer)
        if missing:
            return False, f"diffusers 0.42.1 has no block metadata for {', '.join(missing)} ({cls})"
    if name == "mag":
        return False, ("MagCache needs magnitude ratios calibrated for this checkpoint (diffusers 0.42.1 ships "
                       "Flux's only); calibrate with diffusers.MagCacheConfig(calibrate=True) and pass your "
                       "MagCacheConfig to sta_search.accelerate(..., cache=config)")
    if name == "taylorseer" and _taylorseer_patterns(transformer) == []:
        return False, f"its module patterns match no attention module of {cls}"
    if name == "taylorseer-lite":
        from diffusers.hooks.taylorseer_cache import _BLOCK_IDENTIFIERS, _PROJ_OUT_IDENTIFIERS

        names = [n for n, _ in transformer.named_modules()]
        for what, patterns in (("proj_out", _PROJ_OUT_IDENTIFIERS), ("transformer block", _BLOCK_IDENTIFIERS)):
            if not any(re.fullmatch(p, n) for p in patterns for n in names):
                return False, f"its lite mode needs a {what} module ({', '.join(patterns)}), and {cls} has none"
    if name in ("faster", "pab"):
        if pipeline is None or not hasattr(type(pipeline), "current_timestep"):
            return False, "it needs the pipeline's current timestep (run a whole pipeline, not a bare transformer)"
        if family in _SEPARATE_CFG_FAMILIES:
            what = ("expects the unconditional and conditional inputs batched in one forward" if name == "faster"
                    else "counts forwards, not steps, so the unconditional forward would reuse the conditional one's "
                    "attention")
            return False, f"it {what}; {type(pipeline).__name__} runs guidance as two forwards per step"
        if name == "faster" and family != "cogvideox":
            return False, (f"it expects the unconditional and conditional inputs batched in one forward "
                           f"(CogVideoX pipelines); not known to hold for {cls}")
    return True, ""


def _make_config(name: str, transformer, pipeline):
    import diffusers

    if name == "first-block":
        return diffusers.FirstBlockCacheConfig()
    if name == "taylorseer":
        patterns = _taylorseer_patterns(transformer)
        return diffusers.TaylorSeerCacheConfig(cache_identifiers=patterns) if patterns else diffusers.TaylorSeerCacheConfig()
    if name == "taylorseer-lite":
        return diffusers.TaylorSeerCacheConfig(use_lite_mode=True)
    timestep = lambda: pipeline.current_timestep  # noqa: E731 - read at every call
    if name == "pab":
        return diffusers.PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=2,
                                                         spatial_attention_timestep_skip_range=(100, 800),
                                                         current_timestep_callback=timestep)
    if name == "faster":  # diffusers' FasterCache docs, CogVideoX
        return diffusers.FasterCacheConfig(
            spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1, 681),
            low_frequency_weight_update_timestep_range=(99, 641), high_frequency_weight_update_timestep_range=(-1, 301),
            spatial_attention_block_identifiers=["transformer_blocks"], attention_weight_callback=lambda _: 0.3,
            tensor_format="BFCHW", current_timestep_callback=timestep)
    raise AssertionError(name)


def _parts(model):
    """(transformers, pipeline) of a pipeline, a ``LoadedModel`` or a bare transformer."""
    if isinstance(model, torch.nn.Module):
        return [model], None
    transformers = [t for t in (getattr(model, "transformer", None), getattr(model, "transformer_2", None))
                    if isinstance(t, torch.nn.Module)]
    if not transformers:
        raise TypeError(f"no transformer in {type(model).__name__}")
    return transformers, getattr(model, "pipeline", model)


def resolve_cache(cache, model) -> CacheChoice:
    """``cache`` (a name of :data:`CACHE_NAMES`, None, or a diffusers cache config object) for ``model``.

    UserError naming the cache and the reason when it cannot run on this model."""
    transformers, pipeline = _parts(model)
    if cache is None or cache == "none":
        return CacheChoice("none")
    if not isinstance(cache, str):  # a diffusers config object: the caller chose its settings
        return CacheChoice(type(cache).__name__, tuple(cache for _ in transformers))
    for transformer in transformers:
        ok, why = can_use_cache(cache, transformer, pipeline)
        if not ok:
            raise UserError(f"--cache {cache}: {why}")
    return CacheChoice(cache, tuple(_make_config(cache, t, pipeline) for t in transformers))


def enable_cache(model, cache) -> CacheChoice:
    """Enable ``cache`` (see :func:`resolve_cache`) on the transformer(s) of ``model`` and leave it on
    (for a model that is thrown away afterwards; :func:`use_cache` undoes it). UserError when it cannot run."""
    choice = resolve_cache(cache, model)
    transformers, _ = _parts(model)
    enabled = []
    try:
        for transformer, config in zip(transformers, choice.configs):
            if getattr(transformer, "is_cache_enabled", False):
                raise UserError(f"{type(transformer).__name__} already has a cache enabled "
                                f"({type(transformer._cache_config).__name__}); disable it first or pass no cache")
            try:
                transformer.enable_cache(config)
            except (ValueError, TypeError) as exc:
                raise UserError(f"--cache {choice.name}: diffusers refused it for {type(transformer).__name__}: "
                                f"{exc}") from None
            enabled.append(transformer)
    except BaseException:
        for transformer in reversed(enabled):
            transformer.disable_cache()
        raise
    reset_cache(model)
    return choice


def reset_cache(model) -> None:
    """Forget the cached state of every enabled cache of ``model`` (pipelines also do this after each call)."""
    transformers, _ = _parts(model)
    for transformer in transformers:
        if getattr(transformer, "is_cache_enabled", False):
            transformer._reset_stateful_cache()


@contextlib.contextmanager
def use_cache(model, cache):
    """Enable ``cache`` (see :func:`resolve_cache`) on the transformer(s) of ``model`` inside the block.

    A transformer that already has a cache enabled keeps it (then ``cache`` must be None/"none"). The cache
    state is reset on entry; the cache is disabled on exit, also on error. Yields the CacheChoice."""
    choice = enable_cache(model, cache)
    try:
        yield choice
    finally:
        if choice.enabled:
            for transformer in reversed(_parts(model)[0]):
                transformer.disable_cache()


# ----------------------------------------------------------------------------------- steps
class PipelineSteps:
    """The denoising step index the *pipeline* is at, read once per transformer forward.

    Sources, in order: the ``step_index`` the pipeline passes to ``transformer.cache_context`` (diffusers
    0.42.1 Wan pipelines); the position of ``pipeline.current_timestep`` in ``pipeline.scheduler.timesteps``;
    otherwise ``None`` (callers then keep the hook's own step). Use as a context manager around the pipeline
    call; :meth:`wrap` gives an attention function whose calls carry this step.
    """

    def __init__(self, model):
        self.transformers, self.pipeline = _parts(model)
        self.step: int | None = None
        self.experts: dict[int, int] = {}  # step -> index of the transformer that ran it (Wan 2.2 experts)
        self._context_step: int | None = None
        self._last_timestep = None
        self._last_index = 0
        self._timestep_values: tuple[object, list[float]] | None = None
        self._handles: list = []
        self._patched: list = []

    def __enter__(self):
        from .models.base import unwrap

        for index, transformer in enumerate(self.transformers):
            original = getattr(transformer, "cache_context", None)
            if original is not None and "cache_context" not in vars(transformer):
                transformer.cache_context = self._context_wrapper(original)
                self._patched.append(transformer)
            self._handles.append(unwrap(transformer).register_forward_pre_hook(partial(self._before_forward, index)))
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        for transformer in self._patched:
            vars(transformer).pop("cache_context", None)
        self._handles, self._patched = [], []
        return False

    def _context_wrapper(self, original):
        @contextlib.contextmanager
        def cache_context(name, *args, **kwargs):
            previous = self._context_step
            step = kwargs.get("step_index")
            self._context_step = int(step) if step is not None else None
            try:
                with original(name, *args, **kwargs):
                    yield
            finally:
                self._context_step = previous

        return cache_context

    @torch.compiler.disable
    def _before_forward(self, transformer_index, module, args):
        step = self._context_step
        if step is None and self.pipeline is not None:
            step = self._timestep_index(getattr(self.pipeline, "_current_timestep", None))
        self.step = step
        if step is not None:
            self.experts[step] = transformer_index

    def _timestep_index(self, timestep) -> int | None:
        if timestep is None:
            return None
        if timestep is self._last_timestep:  # the same tensor: another forward of this step (CFG)
            return self.step
        timesteps = getattr(getattr(self.pipeline, "scheduler", None), "timesteps", None)
        if timesteps is None:
            return None
        if self._timestep_values is None or self._timestep_values[0] is not timesteps:
            self._timestep_values = (timesteps, [float(t) for t in torch.as_tensor(timesteps).reshape(-1).tolist()])
            self._last_index = 0
        values = self._timestep_values[1]
        value = float(timestep.reshape(-1)[0]) if isinstance(timestep, torch.Tensor) else float(timestep)
        start = self._last_index
        for lo, hi in ((start, len(values)), (0, start)):  # forwards first (samplers walk the list once)
            for index in range(lo, hi):
                if values[index] == value:
                    self._last_timestep, self._last_index = timestep, index
                    return index
        return None

    def wrap(self, attention_fn):
        """``attention_fn`` with ``call.step`` replaced by the pipeline's step where known."""
        def with_pipeline_step(call):
            step = self.step
            if step is not None and step != call.step:
                call = replace(call, step=step)
            return attention_fn(call)

        return with_pipeline_step


# ----------------------------------------------------------------------------------- computed steps
class ComputedCells:
    """Which (step, layer) self-attention ops ran: the cells a cache did not skip."""

    def __init__(self, steps: int, num_layers: int):
        self.ran = torch.zeros(steps, num_layers, dtype=torch.bool)

    def wrap(self, attention_fn):
        def recorded(call):
            if 0 <= call.step < self.ran.shape[0] and 0 <= call.layer < self.ran.shape[1]:
                self.ran[call.step, call.layer] = True
            return attention_fn(call)

        return recorded

    def computed_steps(self, active_layers: list[tuple[int, int]] | None = None) -> list[bool]:
        """Per step: did every layer (of the step's active expert, ``[first, last+1)``) run?"""
        out = []
        for step in range(self.ran.shape[0]):
            lo, hi = active_layers[step] if active_layers else (0, self.ran.shape[1])
            out.append(bool(self.ran[step, lo:hi].all()))
        return out


__all__ = ["CACHE_NAMES", "CacheChoice", "can_use_cache", "resolve_cache", "enable_cache", "reset_cache", "use_cache", "PipelineSteps",
           "ComputedCells"]
