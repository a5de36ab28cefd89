"""CogVideoX (`CogVideoXTransformer3DModel`, 1.0 and 1.5): joint attention ``transformer_blocks[i].attn1``
with the text tokens BEFORE the video tokens, LayerNorm q/k norms, optional 3D RoPE on the video tokens,
no key-padding mask (the pipeline pads text to ``max_text_seq_length`` and attends to all of it)."""

from __future__ import annotations

import torch

from diffusers.models.embeddings import apply_rotary_emb

from .base import ModelAdapter, register_adapter


class CogVideoXJointAttnProcessor:
    """`diffusers.models.attention_processor.CogVideoXAttnProcessor2_0` (and its fused-QKV twin) with the
    attention op handed to the hook runtime."""

    def __init__(self, runtime, layer: int):
        self.runtime = runtime
        self.layer = layer

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None):
        if attention_mask is not None:
            raise RuntimeError("the hooked CogVideoX processor does not support an attention mask")
        text_seq_length = encoder_hidden_states.size(1)

        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)

        batch_size, sequence_length, _ = hidden_states.shape

        if getattr(attn, "fused_projections", False):
            qkv = attn.to_qkv(hidden_states)
            split_size = qkv.shape[-1] // 3
            query, key, value = torch.split(qkv, split_size, dim=-1)
        else:
            query = attn.to_q(hidden_states)
            key = attn.to_k(hidden_states)
            value = attn.to_v(hidden_states)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads

        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)

        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        # Apply RoPE if needed
        if image_rotary_emb is not None:
            query[:, :, text_seq_length:] = apply_rotary_emb(query[:, :, text_seq_length:], image_rotary_emb)
            if not attn.is_cross_attention:
                key[:, :, text_seq_length:] = apply_rotary_emb(key[:, :, text_seq_length:], image_rotary_emb)

        hidden_states = self.runtime.attend(self.layer, query, key, value, text_len=text_seq_length)

        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)

        # linear proj
        hidden_states = attn.to_out[0](hidden_states)
        # dropout
        hidden_states = attn.to_out[1](hidden_states)

        encoder_hidden_states, hidden_states = hidden_states.split(
            [text_seq_length, hidden_states.size(1) - text_seq_length], dim=1
        )
        return hidden_states, encoder_hidden_states


@register_adapter
class CogVideoXAdapter(ModelAdapter):
    """CogVideoX text-to-video. Latent input ``(B, F, C, H, W)`` (frames before channels); text first."""

    family = "cogvideox"
    transformer_classes = ("CogVideoXTransformer3DModel",)
    text_first = True
    pipelines = ("CogVideoXPipeline", "CogVideoXImageToVideoPipeline")
    text_handling = "joint attention: text before the video tokens, padded, no mask"
    checkpoints = (("CogVideoX-2b", 30, 64), ("CogVideoX-5b / 1.5-5B", 48, 64))

    def attention_modules(self, transformer):
        return [block.attn1 for block in transformer.transformer_blocks]

    def runtime_canvas(self, transformer, hidden_states):
        p_t, p_h, p_w = self._patch_size(transformer)
        _, frames, _, height, width = hidden_states.shape
        return (frames // p_t, height // p_h, width // p_w)

    def make_processor(self, runtime, layer):
        return CogVideoXJointAttnProcessor(runtime, layer)

    def _patch_size(self, transformer):
        config = transformer.config
        return (int(config.patch_size_t or 1), int(config.patch_size), int(config.patch_size))

    def _latent_frames(self, transformer, frames):
        latent = (frames - 1) // self.vae_scale_temporal + 1
        p_t = self._patch_size(transformer)[0]
        if latent % p_t:  # CogVideoX 1.5 pads the latent frames to a multiple of patch_size_t
            latent += p_t - latent % p_t
        return latent

    def _bind_defaults(self, transformer, pipeline):
        # The pipeline pads the prompt to max_sequence_length (default 226, the real models' value);
        # use the length the transformer was configured for.
        return {"max_sequence_length": int(transformer.config.max_text_seq_length)}
