"""Cosmos (`CosmosTransformer3DModel`: Cosmos 1.0 Diffusion, Cosmos Predict 2.0 and Predict 2.5): self-attention
``transformer_blocks[i].attn1`` over the video tokens only (RMS q/k norms per head, 3D RoPE, no mask); the text
(T5, or Qwen2.5-VL hidden states through ``crossattn_proj`` in 2.5) enters through the cross-attention ``attn2``
with its key-padding mask, which is never hooked (``text_len=0``).

Canvas: latent ``(B, C, T, H, W)`` divided by the patch ``(1, 2, 2)``; the condition-mask and padding-mask
channels the transformer concatenates change only C. Video-to-world (`CosmosVideoToWorldPipeline`,
`Cosmos2VideoToWorldPipeline`, `Cosmos2_5_PredictBasePipeline` with ``image``/``video``): the conditioning frames
are encoded into the first latent frames *inside* the canvas (clean latents, per-frame timestep
``[B, 1, T, 1, 1]`` near 0), so canvas and windows are those of text-to-world. The step is read from the largest
per-frame timestep (the generated frames').

Every Cosmos pipeline requires its guardrail (``safety_checker``, package ``cosmos_guardrail``); sta-search never
removes it. Cosmos 1.0 compresses 8x in time and space (`AutoencoderKLCosmos`), 2.0/2.5 4x / 8x (Wan VAE); the
bound adapter reads the factors from the pipeline.
"""

from __future__ import annotations

from diffusers.models.embeddings import apply_rotary_emb

from .base import ModelAdapter, register_adapter


class CosmosSelfAttnProcessor:
    """`diffusers.models.transformers.transformer_cosmos.CosmosAttnProcessor2_0` (self-attention path) with the
    attention op handed to the hook runtime."""

    def __init__(self, runtime, layer: int):
        self.runtime = runtime
        self.layer = layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        if encoder_hidden_states is not None or attention_mask is not None:
            raise RuntimeError("the hooked Cosmos processor only handles self-attention (attn1) without a mask")
        query = attn.to_q(hidden_states).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        key = attn.to_k(hidden_states).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1)).transpose(1, 2)

        query = attn.norm_q(query)
        key = attn.norm_k(key)

        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, use_real=True, use_real_unbind_dim=-2)
            key = apply_rotary_emb(key, image_rotary_emb, use_real=True, use_real_unbind_dim=-2)

        # diffusers' "GQA" repeat_interleave over the head dim is a no-op here (q, k, v share the head dim)
        hidden_states = self.runtime.attend(self.layer, query, key, value)
        hidden_states = hidden_states.transpose(1, 2).flatten(2, 3).type_as(query)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        return hidden_states


@register_adapter
class CosmosAdapter(ModelAdapter):
    """Cosmos text/video-to-world. Latent input ``(B, C, T, H, W)``; no joint text."""

    family = "cosmos"
    transformer_classes = ("CosmosTransformer3DModel",)
    text_first = False
    pipelines = ("CosmosTextToWorldPipeline", "CosmosVideoToWorldPipeline", "Cosmos2VideoToWorldPipeline",
                 "Cosmos2_5_PredictBasePipeline")
    text_handling = ("cross-attention (attn2, text key-padding mask); conditioning frames are the first latent "
                     "frames of the canvas")
    checkpoints = (("Cosmos 1.0 Diffusion 7B", 32, 128), ("Cosmos 1.0 Diffusion 14B", 40, 128),
                   ("Cosmos Predict 2.0 / 2.5 2B", 16, 128), ("Cosmos Predict 2.0 / 2.5 14B", 40, 128))

    def attention_modules(self, transformer):
        return [block.attn1 for block in transformer.transformer_blocks]

    def make_processor(self, runtime, layer):
        return CosmosSelfAttnProcessor(runtime, layer)

    def _patch_size(self, transformer):
        return tuple(int(p) for p in transformer.config.patch_size)
