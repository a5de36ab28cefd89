"""Model adapters and the self-attention hook (docs/geometry.md, text tokens).

Supported families (diffusers 0.42; `sta-search models` lists them): Wan 2.1/2.2 (`WanTransformer3DModel`,
both experts; text-, image- and video-to-video), Wan VACE, SkyReels-V2, ChronoEdit (wan.py), HunyuanVideo
(`HunyuanVideoTransformer3DModel`, also its image-to-video variants), CogVideoX (`CogVideoXTransformer3DModel`,
also image-to-video); joint attention: Mochi (`MochiTransformer3DModel`), EasyAnimate
(`EasyAnimateTransformer3DModel`), HunyuanVideo 1.5 (`HunyuanVideo15Transformer3DModel`), ConsisID
(`ConsisIDTransformer3DModel`); cross-attention: LTX-Video (`LTXVideoTransformer3DModel`), Allegro
(`AllegroTransformer3DModel`); LTX-2 (`LTX2VideoTransformer3DModel`, video self-attention only; audio dense),
Motif-Video (`MotifVideoTransformer3DModel`, joint attention); Cosmos (`CosmosTransformer3DModel`, also video-to-world);
Kandinsky 5 (`Kandinsky5Transformer3DModel`, full-attention mode, also image-to-video).

    from sta_search.models import load_model, hook_attention, dense_attention
    loaded = load_model("path/to/pipeline", "cuda", torch.bfloat16)
    with hook_attention(loaded, my_attention_fn) as state:   # my_attention_fn(AttentionCall) -> out
        loaded.pipeline(**loaded.adapter.pipeline_kwargs(prompt, 480, 832, 81, 50, generator))

Adding a family: write `sta_search/models/<family>.py` with a processor that copies the diffusers processor
but hands q, k, v (after norms and RoPE) to ``runtime.attend(layer, q, k, v, text_len=..., text_mask=...)``,
and a `ModelAdapter` subclass decorated with `@register_adapter` (family, transformer_classes, text_first,
attention_modules, runtime_canvas, make_processor, _patch_size); import it below; add a tiny builder to
tests/tiny_pipes.py and the family to tests/test_models.py.
"""

from .base import (
    AttentionCall,
    AttentionFn,
    ModelAdapter,
    ModelInfo,
    adapter_for_class,
    get_adapter,
    register_adapter,
    supported_transformer_classes,
)
from .hook import HookState, dense_attention, hook_attention, text_key_mask
from . import cogvideox, hunyuan_video, wan  # noqa: F401  (register the adapters)
from . import allegro, ltx_video  # noqa: F401  (cross-attention families)
from . import cosmos, kandinsky5  # noqa: F401  (cross-attention families: Cosmos, Kandinsky 5)
from . import consisid, easyanimate, hunyuan_video15, mochi  # noqa: F401  (joint-attention families)
from . import ltx2, motif_video  # noqa: F401  (LTX-2 audio+video, Motif-Video)
from .cogvideox import CogVideoXAdapter
from .hunyuan_video import HunyuanVideoAdapter
from .wan import ChronoEditAdapter, SkyReelsV2Adapter, WanAdapter, WanVACEAdapter
from .loading import LoadedModel, bundled_names, load_model, model_defaults, register_bundled, resolve_model_path

__all__ = [
    "model_defaults",
    "AttentionCall",
    "AttentionFn",
    "CogVideoXAdapter",
    "HookState",
    "HunyuanVideoAdapter",
    "LoadedModel",
    "ModelAdapter",
    "ModelInfo",
    "WanAdapter",
    "WanVACEAdapter",
    "SkyReelsV2Adapter",
    "ChronoEditAdapter",
    "adapter_for_class",
    "bundled_names",
    "dense_attention",
    "get_adapter",
    "hook_attention",
    "load_model",
    "register_adapter",
    "register_bundled",
    "resolve_model_path",
    "supported_transformer_classes",
    "text_key_mask",
]
