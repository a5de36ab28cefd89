"""Allegro (`AllegroTransformer3DModel`): self-attention ``transformer_blocks[i].attn1`` over the video tokens only,
no q/k norms, Allegro's 3D RoPE (split t/h/w over the head dim, positions from the pipeline); the T5 text enters
through cross-attention ``attn2`` (with its key-padding mask), which is never hooked (``text_len=0``)."""

from __future__ import annotations

import math

from diffusers.models.embeddings import apply_rotary_emb_allegro

from .base import ModelAdapter, register_adapter


class AllegroSelfAttnProcessor:
    """`diffusers.models.attention_processor.AllegroAttnProcessor2_0` (self-attention path, 3D input) with the
    attention op handed to the hook runtime."""

    def __init__(self, runtime, layer: int):
        self.runtime = runtime
        self.layer = layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 image_rotary_emb=None):
        if encoder_hidden_states is not None or attention_mask is not None:
            raise RuntimeError("the hooked Allegro processor only handles self-attention (attn1) without a video mask")
        if attn.spatial_norm is not None or attn.group_norm is not None or hidden_states.ndim != 3:
            raise RuntimeError("this Allegro attention variant is not supported")
        residual = hidden_states
        batch_size = hidden_states.shape[0]

        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)

        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)

        if image_rotary_emb is not None:
            query = apply_rotary_emb_allegro(query, image_rotary_emb[0], image_rotary_emb[1])
            key = apply_rotary_emb_allegro(key, image_rotary_emb[0], image_rotary_emb[1])

        hidden_states = self.runtime.attend(self.layer, query, key, value)

        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@register_adapter
class AllegroAdapter(ModelAdapter):
    """Allegro text-to-video. Latent input ``(B, C, F, H, W)``; no joint text."""

    family = "allegro"
    transformer_classes = ("AllegroTransformer3DModel",)
    text_first = False
    pipelines = ("AllegroPipeline",)
    text_handling = "cross-attention (attn2, T5 key-padding mask)"
    checkpoints = (("Allegro 2.8B", 24, 96),)

    def attention_modules(self, transformer):
        return [block.attn1 for block in transformer.transformer_blocks]

    def make_processor(self, runtime, layer):
        return AllegroSelfAttnProcessor(runtime, layer)

    def _patch_size(self, transformer):
        config = transformer.config
        return (int(config.patch_size_t), int(config.patch_size), int(config.patch_size))

    def _latent_frames(self, transformer, frames):
        t = self.vae_scale_temporal  # AllegroPipeline.prepare_latents
        return math.ceil(frames / t) if frames % 2 == 0 else math.ceil((frames - 1) / t) + 1

    def _bind_defaults(self, transformer, pipeline):
        return {"clean_caption": False}  # caption cleaning needs bs4/ftfy and changes the prompt

    def bind(self, pipeline=None, transformer=None):
        # AllegroPipeline cannot decode without VAE tiling (diffusers raises NotImplementedError); its own example
        # calls `pipe.vae.enable_tiling()`, so a bound pipeline gets it too.
        vae = getattr(pipeline, "vae", None)
        if vae is not None and not getattr(vae, "use_tiling", True):
            vae.enable_tiling()
        return super().bind(pipeline, transformer)
