"""Kandinsky 5 (`Kandinsky5Transformer3DModel`, Kandinsky 5.0 Video Lite / Pro): the visual blocks'
``visual_transformer_blocks[i].self_attention`` attends over the video tokens only (per-head RMS q/k norms, 3D
RoPE); the Qwen2.5-VL text enters through ``cross_attention``, which is never hooked (``text_len=0``), and the
text encoder blocks' self-attention over the text alone is not hooked either.

Canvas: the latent reaches the transformer channel-last, ``(B, T, H, W, C)``, divided by the patch
``(1, 2, 2)``; the pipeline rounds frames to ``4k + 1`` (so ``latent frames = frames // 4 + 1``). Image-to-video
(`Kandinsky5I2VPipeline`): the image latent replaces latent frame 0 and a mask channel marks it (``visual_cond``),
so the conditioning frame is the first canvas frame, as in text-to-video.

Sparse mode: checkpoints configured with ``attention_type="nabla"`` (the 10 s models) run diffusers' own
NABLA sparse attention (``sparse_params``) over tokens reordered into 8x8 spatial blocks (``to_fractal``).
STA replaces *full* attention only, so such forwards are refused with a one-line error naming the switch
(``"attention_type": "regular"`` in the transformer's config.json) rather than silently comparing STA against
another sparse method.
"""

from __future__ import annotations

import torch

from ..errors import UserError
from .base import ModelAdapter, ModelInfo, register_adapter, unwrap


def _apply_rotary(x, rope):
    # verbatim from diffusers' Kandinsky5AttnProcessor (0.42): computed in float32, returned in bfloat16
    x_ = x.reshape(*x.shape[:-1], -1, 1, 2).to(torch.float32)
    x_out = (rope * x_).sum(dim=-1)
    return x_out.reshape(*x.shape).to(torch.bfloat16)


class Kandinsky5SelfAttnProcessor:
    """`diffusers.models.transformers.transformer_kandinsky.Kandinsky5AttnProcessor` (full self-attention path)
    with the attention op handed to the hook runtime."""

    def __init__(self, runtime, layer: int):
        self.runtime = runtime
        self.layer = layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, rotary_emb=None, sparse_params=None):
        if encoder_hidden_states is not None:
            raise RuntimeError("the hooked Kandinsky 5 processor only handles the visual self-attention")
        if sparse_params is not None:
            raise RuntimeError("Kandinsky 5 NABLA sparse attention reached the hooked processor")
        query = attn.to_query(hidden_states)
        key = attn.to_key(hidden_states)
        value = attn.to_value(hidden_states)

        shape = query.shape[:-1]
        query = query.reshape(*shape, attn.num_heads, -1)
        key = key.reshape(*shape, attn.num_heads, -1)
        value = value.reshape(*shape, attn.num_heads, -1)

        query = attn.query_norm(query.float()).type_as(query)
        key = attn.key_norm(key.float()).type_as(key)

        if rotary_emb is not None:
            query = _apply_rotary(query, rotary_emb).type_as(query)
            key = _apply_rotary(key, rotary_emb).type_as(key)

        out = self.runtime.attend(self.layer, query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))
        hidden_states = out.transpose(1, 2).flatten(-2, -1)
        return attn.out_layer(hidden_states)


@register_adapter
class Kandinsky5Adapter(ModelAdapter):
    """Kandinsky 5 text/image-to-video (full attention). Latent input ``(B, T, H, W, C)``; no joint text."""

    family = "kandinsky5"
    transformer_classes = ("Kandinsky5Transformer3DModel",)
    text_first = False
    pipelines = ("Kandinsky5T2VPipeline", "Kandinsky5I2VPipeline")
    text_handling = ("cross-attention (Qwen2.5-VL tokens, no mask); image conditions are frame-0 tokens of the "
                     "canvas; NABLA (attention_type 'nabla') refused")
    checkpoints = (("Kandinsky 5.0 Video Lite 2B", 28, 64), ("Kandinsky 5.0 Video Pro 19B", 32, 128))

    def attention_modules(self, transformer):
        return [block.self_attention for block in transformer.visual_transformer_blocks]

    def forward_canvas(self, transformer, args, kwargs):
        if kwargs.get("sparse_params") is not None:
            raise UserError(
                "this Kandinsky 5 checkpoint runs NABLA sparse attention (attention_type 'nabla'); STA replaces "
                "full attention only: set \"attention_type\": \"regular\" in its transformer/config.json"
            )
        return super().forward_canvas(transformer, args, kwargs)

    def runtime_canvas(self, transformer, hidden_states):
        p_t, p_h, p_w = self._patch_size(transformer)
        _, frames, height, width, _ = hidden_states.shape  # channel-last
        return (frames // p_t, height // p_h, width // p_w)

    def make_processor(self, runtime, layer):
        return Kandinsky5SelfAttnProcessor(runtime, layer)

    def info(self, transformer, transformer_2=None):
        transformer = unwrap(transformer)
        config = transformer.config
        head_dim = int(sum(config.axes_dims))  # Kandinsky5Transformer3DModel: head dim = sum of the RoPE axes
        return ModelInfo(family=self.family, transformer_class=type(transformer).__name__,
                         num_layers=len(self.attention_modules(transformer)),
                         num_heads=int(config.model_dim) // head_dim, head_dim=head_dim,
                         patch_size=self._patch_size(transformer))

    def _patch_size(self, transformer):
        return tuple(int(p) for p in transformer.config.patch_size)

    def _latent_frames(self, transformer, frames):
        # Kandinsky5T2VPipeline rounds num_frames down to t * k + 1, then takes (num_frames - 1) // t + 1
        return frames // self.vae_scale_temporal + 1
