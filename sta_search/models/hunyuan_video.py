"""HunyuanVideo (`HunyuanVideoTransformer3DModel`): joint attention of the dual-stream blocks
(``transformer_blocks[i].attn``, separate text projections) and single-stream blocks
(``single_transformer_blocks[i].attn``, text concatenated), text tokens AFTER the video tokens, RoPE on the
video tokens only, key-padding mask from the prompt attention mask. The token refiner's attention (text
only) is not hooked. Layers: dual-stream blocks first, then single-stream blocks."""

from __future__ import annotations

import torch

from diffusers.models.embeddings import apply_rotary_emb

from .base import ModelAdapter, project_qkv, register_adapter


class HunyuanVideoJointAttnProcessor:
    """`diffusers.models.transformers.transformer_hunyuan_video.HunyuanVideoAttnProcessor2_0` with the
    attention op handed to the hook runtime."""

    def __init__(self, runtime, layer: int):
        self.runtime = runtime
        self.layer = layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        if attn.add_q_proj is None and encoder_hidden_states is not None:
            hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)

        # 1. QKV projections and 2. QK normalization
        query, key, value = project_qkv(attn, hidden_states)

        # 3. Rotational positional embeddings applied to latent stream. Unlike diffusers, the concatenations
        # happen in (B, H, S, D): the copy they make anyway then yields contiguous per-head sequences, which the
        # Triton kernel reads faster than strided (B, S, H, D) views (bench/NOTES.md); values are identical.
        query, key, value = (x.transpose(1, 2) for x in (query, key, value))
        if image_rotary_emb is not None:
            if attn.add_q_proj is None and encoder_hidden_states is not None:
                text = encoder_hidden_states.shape[1]
                query = torch.cat([apply_rotary_emb(query[:, :, :-text], image_rotary_emb), query[:, :, -text:]], dim=2)
                key = torch.cat([apply_rotary_emb(key[:, :, :-text], image_rotary_emb), key[:, :, -text:]], dim=2)
            else:
                query = apply_rotary_emb(query, image_rotary_emb)
                key = apply_rotary_emb(key, image_rotary_emb)

        # 4. Encoder condition QKV projection and normalization
        if attn.add_q_proj is not None and encoder_hidden_states is not None:
            encoder_query, encoder_key, encoder_value = project_qkv(attn, encoder_hidden_states, added=True)

            query = torch.cat([query, encoder_query.transpose(1, 2)], dim=2)
            key = torch.cat([key, encoder_key.transpose(1, 2)], dim=2)
            value = torch.cat([value, encoder_value.transpose(1, 2)], dim=2)

        # 5. Attention (handed over; (B, H, S, D))
        text_len = 0 if encoder_hidden_states is None else encoder_hidden_states.shape[1]
        out = self.runtime.attend(
            self.layer,
            query,
            key,
            value,
            text_len=text_len,
            text_mask=_text_mask(attention_mask, query.shape[0], text_len),
        )
        hidden_states = out.transpose(1, 2).flatten(2, 3)
        hidden_states = hidden_states.to(query.dtype)

        # 6. Output projection
        if encoder_hidden_states is not None:
            hidden_states, encoder_hidden_states = (
                hidden_states[:, : -encoder_hidden_states.shape[1]],
                hidden_states[:, -encoder_hidden_states.shape[1] :],
            )

            if getattr(attn, "to_out", None) is not None:
                hidden_states = attn.to_out[0](hidden_states)
                hidden_states = attn.to_out[1](hidden_states)

            if getattr(attn, "to_add_out", None) is not None:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)

        return hidden_states, encoder_hidden_states


def _text_mask(attention_mask, batch: int, text_len: int):
    """Text part of HunyuanVideo's ``(B, 1, 1, video + text)`` key mask as ``(B, text_len)`` bool."""
    if attention_mask is None or text_len == 0:
        return None
    mask = attention_mask.reshape(attention_mask.shape[0], -1)[:, -text_len:]
    if mask.dtype != torch.bool:  # an additive mask: 0 keeps a key, -inf drops it
        mask = mask == 0
    return mask.expand(batch, text_len)


@register_adapter
class HunyuanVideoAdapter(ModelAdapter):
    """HunyuanVideo text-to-video. Latent input ``(B, C, F, H, W)``; text after video, key-padding mask."""

    family = "hunyuan_video"
    transformer_classes = ("HunyuanVideoTransformer3DModel",)
    text_first = False
    pipelines = ("HunyuanVideoPipeline", "HunyuanVideoImageToVideoPipeline")
    text_handling = "joint attention: text after the video tokens, boolean key-padding mask"
    checkpoints = (("HunyuanVideo 13B", 24, 128),)

    def attention_modules(self, transformer):
        return [block.attn for block in transformer.transformer_blocks] + [
            block.attn for block in transformer.single_transformer_blocks
        ]

    def make_processor(self, runtime, layer):
        return HunyuanVideoJointAttnProcessor(runtime, layer)

    def _patch_size(self, transformer):
        config = transformer.config
        return (int(config.patch_size_t), int(config.patch_size), int(config.patch_size))
