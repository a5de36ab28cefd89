"""What every model family shares: the attention call record, model info, the adapter base class and
the adapter registry.

A family adapter knows three things about a diffusers video transformer: which attention modules are
its *self*-attention layers (in a fixed order), how to read the token canvas from the transformer's input,
and which processor replaces diffusers' processor so that q, k, v are computed exactly as diffusers does
and the attention op itself is handed to an :data:`AttentionFn`.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch

from ..errors import UserError


@dataclass
class AttentionCall:
    """One self-attention op of one transformer forward, as diffusers would run it.

    `q`, `k`, `v` are ``(batch, heads, tokens, head_dim)`` after the q/k norms and RoPE, with the video
    tokens in diffusers' natural T-major order and `text_len` joint text tokens after them (HunyuanVideo)
    or before them (CogVideoX, ``text_first=True``); Wan has no joint text (``text_len=0``).
    `text_mask` is ``(batch, text_len)`` bool, True for a real text key (None: every text key is real).
    `step` is the 0-based denoising step, shared by the conditional and unconditional forwards of a step;
    `forward_index` counts the transformer forwards inside the step (CFG: 0 then 1).
    `layer` is the self-attention layer in adapter order; with two experts (Wan 2.2 ``transformer_2``)
    the second expert's layers continue after the first's.

    Under Ulysses context parallelism (diffusers ``ContextParallelConfig(ulysses_degree=N)``) each rank
    attends over the full sequence for a slice of the heads: `q`, `k`, `v` hold heads
    ``head_offset .. head_offset + q.shape[1] - 1`` of the layer's `total_heads`. A per-head table
    (e.g. STA windows) is indexed with these global head indices
    (:func:`sta_search.models.parallel.windows_for_call`). Without parallelism ``head_offset=0`` and
    ``total_heads == q.shape[1]``.
    """

    step: int
    layer: int
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    canvas: tuple[int, int, int]
    text_len: int
    text_first: bool
    text_mask: torch.Tensor | None
    forward_index: int
    head_offset: int = 0
    total_heads: int | None = None

    def __post_init__(self):
        if self.total_heads is None:
            self.total_heads = int(self.q.shape[1])

    @property
    def local_heads(self) -> int:
        """Heads held by this call (``q.shape[1]``)."""
        return int(self.q.shape[1])


AttentionFn = Callable[[AttentionCall], torch.Tensor]
"""Takes an :class:`AttentionCall`, returns the attention output ``(batch, heads, tokens, head_dim)``."""


@dataclass(frozen=True)
class ModelInfo:
    """What a mask config or a profile is checked against."""

    family: str
    transformer_class: str
    num_layers: int
    num_heads: int
    head_dim: int
    patch_size: tuple[int, int, int]

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["patch_size"] = list(self.patch_size)
        return data


@dataclass(frozen=True)
class ModelAdapter:
    """Base class of the per-family adapters (see `wan.py`, `hunyuan_video.py`, `cogvideox.py`).

    An adapter instance carries the few pipeline facts the canvas and the call arguments depend on: the VAE
    compression factors and fixed call defaults. ``get_adapter(transformer)`` returns one with the
    family's standard factors (4x temporal, 8x spatial); ``load_model`` returns one bound to the loaded
    pipeline (``adapter.bind(pipeline)``), e.g. factors 1 for a pixel-space pipeline.

    Subclasses set `family`, `transformer_classes`, `text_first` and implement `attention_modules`,
    `runtime_canvas`, `make_processor`, `_patch_size`, and `_latent_frames` where the pipeline differs.
    """

    family: ClassVar[str] = ""
    transformer_classes: ClassVar[tuple[str, ...]] = ()
    text_first: ClassVar[bool] = False
    # Catalog metadata (``sta-search models``): the diffusers pipelines that run this transformer, how the text
    # reaches the video tokens, and released checkpoints as (name, heads, head_dim).
    pipelines: ClassVar[tuple[str, ...]] = ()
    text_handling: ClassVar[str] = ""
    checkpoints: ClassVar[tuple[tuple[str, int, int], ...]] = ()

    vae_scale_temporal: int = 4
    vae_scale_spatial: int = 8
    call_defaults: tuple[tuple[str, object], ...] = ()

    # ------------------------------------------------------------------ per family
    def attention_modules(self, transformer) -> list[torch.nn.Module]:
        """The self-attention modules to hook, in layer order."""
        raise NotImplementedError

    def runtime_canvas(self, transformer, hidden_states: torch.Tensor) -> tuple[int, int, int]:
        """Token canvas ``(T, H, W)`` of a forward, from the transformer's latent input: by default a
        ``(B, C, T, H, W)`` latent divided by `_patch_size`; families with another layout override it."""
        p_t, p_h, p_w = self._patch_size(transformer)
        _, _, frames, height, width = hidden_states.shape
        return (frames // p_t, height // p_h, width // p_w)

    def forward_canvas(self, transformer, args: tuple, kwargs: dict) -> tuple[int, int, int]:
        """Token canvas of a forward from the transformer's call arguments; default: `runtime_canvas` of the
        latent input. Families whose latent input is already packed into tokens (LTX-Video) override it."""
        hidden_states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        return self.runtime_canvas(transformer, hidden_states)

    def make_processor(self, runtime, layer: int):
        """A diffusers attention processor for layer `layer` that calls ``runtime.attend(...)``."""
        raise NotImplementedError

    def _patch_size(self, transformer) -> tuple[int, int, int]:
        raise NotImplementedError

    def _latent_frames(self, transformer, frames: int) -> int:
        """Latent frames of a `frames`-frame video, as the family's pipeline computes them."""
        return (frames - 1) // self.vae_scale_temporal + 1

    def _bind_defaults(self, transformer, pipeline) -> dict:
        """Family-specific call defaults read from the loaded pipeline / transformer."""
        return {}

    # ------------------------------------------------------------------ shared
    def info(self, transformer, transformer_2=None) -> ModelInfo:
        """Layers, heads, head dim and patch of `transformer` (plus `transformer_2`'s layers, Wan 2.2)."""
        transformer = unwrap(transformer)
        config = transformer.config
        num_layers = len(self.attention_modules(transformer))
        if transformer_2 is not None:
            num_layers += len(self.attention_modules(transformer_2))
        return ModelInfo(
            family=self.family,
            transformer_class=type(transformer).__name__,
            num_layers=num_layers,
            num_heads=int(config.num_attention_heads),
            head_dim=int(config.attention_head_dim),
            patch_size=self._patch_size(transformer),
        )

    def canvas(self, transformer, height: int, width: int, frames: int, pipeline=None) -> tuple[int, int, int]:
        """Token canvas ``(T, H, W)`` the pipeline will produce for a ``frames x height x width`` video.

        Uses this adapter's VAE factors (or `pipeline`'s, when given) and the transformer's patch size.
        UserError when height/width are not multiples of VAE factor x patch, or frames < 1.
        """
        adapter = self.bind(pipeline) if pipeline is not None else self
        return adapter._canvas(transformer, int(height), int(width), int(frames))

    def _canvas(self, transformer, height: int, width: int, frames: int) -> tuple[int, int, int]:
        p_t, p_h, p_w = self._patch_size(transformer)
        s = self.vae_scale_spatial
        for name, value, patch in (("height", height, p_h), ("width", width, p_w)):
            if value < 1 or value % (s * patch):
                raise UserError(
                    f"{name} {value} is not a positive multiple of {s * patch} "
                    f"(VAE factor {s} x patch {patch}) for {self.family}"
                )
        if frames < 1:
            raise UserError(f"frames must be >= 1, got {frames}")
        latent_frames = self._latent_frames(transformer, frames)
        return (-(-latent_frames // p_t), height // s // p_h, width // s // p_w)

    def pipeline_kwargs(self, prompt, height, width, frames, steps, generator, **overrides) -> dict:
        """Keyword arguments for ``pipeline(**kwargs)``: prompt, size, steps, generator, ``output_type="np"``,
        the adapter's call defaults (e.g. CogVideoX's text length), then `overrides`."""
        kwargs = dict(
            prompt=prompt,
            height=int(height),
            width=int(width),
            num_frames=int(frames),
            num_inference_steps=int(steps),
            generator=generator,
            output_type="np",
        )
        kwargs.update(dict(self.call_defaults))
        kwargs.update(overrides)
        return kwargs

    def image_input(self, pipeline) -> tuple[bool, bool]:
        """``(takes, needs)``: whether `pipeline`'s call takes a conditioning image (``--image``) and whether it
        requires one. Default: its ``image`` argument, required when it has no default value."""
        params = inspect.signature(type(pipeline).__call__).parameters
        takes = "image" in params
        return takes, takes and params["image"].default is inspect.Parameter.empty

    def image_call_kwargs(self, pipeline, image, height: int, width: int, frames: int) -> dict:
        """Call arguments that condition `pipeline` on the PIL `image` for a ``frames x height x width`` video,
        as the pipeline's own image-to-video usage does; default ``{"image": image}``."""
        return {"image": image}

    def bind(self, pipeline=None, transformer=None) -> "ModelAdapter":
        """A copy of this adapter with `pipeline`'s VAE factors and call defaults (None: unchanged)."""
        if pipeline is None and transformer is None:
            return self
        transformer = transformer if transformer is not None else getattr(pipeline, "transformer", None)
        temporal = getattr(pipeline, "vae_scale_factor_temporal", None)
        spatial = getattr(pipeline, "vae_scale_factor_spatial", None)
        defaults = dict(self.call_defaults)
        if transformer is not None:
            defaults.update(self._bind_defaults(transformer, pipeline))
        return dataclasses.replace(
            self,
            vae_scale_temporal=int(temporal) if temporal else self.vae_scale_temporal,
            vae_scale_spatial=int(spatial) if spatial else self.vae_scale_spatial,
            call_defaults=tuple(sorted(defaults.items())),
        )


_REGISTRY: dict[str, type[ModelAdapter]] = {}



def project_qkv(attn, states: torch.Tensor, added: bool = False):
    """``q, k, v`` of ``states`` as ``(B, S, heads, head_dim)``, q and k normalised, as diffusers' joint-attention
    processors compute them: the main projections (``to_q/k/v``, ``norm_q/k``) or, with ``added``, the text
    stream's (``add_q/k/v_proj``, ``norm_added_q/k``). A missing norm is skipped."""
    if added:
        projections, norms = (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj), ("norm_added_q", "norm_added_k")
    else:
        projections, norms = (attn.to_q, attn.to_k, attn.to_v), ("norm_q", "norm_k")
    query, key, value = (project(states).unflatten(2, (attn.heads, -1)) for project in projections)
    norm_q, norm_k = (getattr(attn, name, None) for name in norms)
    if norm_q is not None:
        query = norm_q(query)
    if norm_k is not None:
        key = norm_k(key)
    return query, key, value

def register_adapter(cls: type[ModelAdapter]) -> type[ModelAdapter]:
    """Class decorator: make `cls` the adapter for each class name in ``cls.transformer_classes``."""
    for name in cls.transformer_classes:
        _REGISTRY[name] = cls
    return cls


def supported_transformer_classes() -> list[str]:
    """Names of the diffusers transformer classes an adapter exists for."""
    return sorted(_REGISTRY)


def adapter_for_class(class_name: str) -> ModelAdapter:
    """Adapter for a transformer class name; UserError listing the supported classes otherwise."""
    cls = _REGISTRY.get(class_name)
    if cls is None:
        raise UserError(
            f"unsupported transformer class {class_name!r}; supported: {', '.join(supported_transformer_classes())}"
        )
    return cls()


def unwrap(module):
    """The module inside a ``torch.compile`` wrapper (or `module` itself)."""
    return getattr(module, "_orig_mod", module)


def get_adapter(transformer) -> ModelAdapter:
    """Adapter for a transformer instance (standard VAE factors); UserError for unsupported classes."""
    transformer = unwrap(transformer)
    for klass in type(transformer).__mro__:  # subclasses of a supported class use its adapter
        if klass.__name__ in _REGISTRY:
            return _REGISTRY[klass.__name__]()
    return adapter_for_class(type(transformer).__name__)
