"""Mochi 1 (`MochiTransformer3DModel`): asymmetric joint attention ``transformer_blocks[i].attn1`` (video
and text have their own q/k/v projections and norms; the last block is ``context_pre_only``), text tokens
AFTER the video tokens, RoPE on the video tokens only.

diffusers runs SDPA per batch item over the video tokens plus the *valid* text tokens only (gathered
with the prompt attention mask), then writes the valid text rows first and zeros after them. That is joint
attention with a key-padding mask (padded text keys never attended), which is what the hooked processor
hands over (``text_mask``); it then rebuilds diffusers' text rows (valid rows compacted, zeros after).

Canvas: latent ``(B, C, F, H, W)``, patch ``(1, p, p)``; the pipeline compresses 6x in time and 8x in
space (``MochiPipeline.vae_temporal_scale_factor = 6``), so ``latent frames = (frames - 1) // 6 + 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import ModelAdapter, project_qkv, register_adapter


def _mochi_rope(x, freqs_cos, freqs_sin):
    """diffusers' `MochiAttnProcessor2_0` RoPE (interleaved pairs, computed in float32)."""
    x_even = x[..., 0::2].float()
    x_odd = x[..., 1::2].float()
    cos = (x_even * freqs_cos - x_odd * freqs_sin).to(x.dtype)
    sin = (x_even * freqs_sin + x_odd * freqs_cos).to(x.dtype)
    return torch.stack([cos, sin], dim=-1).flatten(-2)


class MochiJointAttnProcessor:
    """`diffusers.models.attention_processor.MochiAttnProcessor2_0` with the attention op handed to the hook
    runtime (one masked joint call over the whole batch instead of diffusers' per-item valid-token calls)."""

    def __init__(self, runtime, layer: int):
        self.runtime = runtime
        self.layer = layer

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb=None):
        query, key, value = project_qkv(attn, hidden_states)
        encoder_query, encoder_key, encoder_value = project_qkv(attn, encoder_hidden_states, added=True)

        if image_rotary_emb is not None:
            query = _mochi_rope(query, *image_rotary_emb)
            key = _mochi_rope(key, *image_rotary_emb)

        sequence_length = query.shape[1]
        encoder_sequence_length = encoder_query.shape[1]
        query = torch.cat([query, encoder_query], dim=1).transpose(1, 2)
        key = torch.cat([key, encoder_key], dim=1).transpose(1, 2)
        value = torch.cat([value, encoder_value], dim=1).transpose(1, 2)

        text_mask = attention_mask.bool().reshape(query.shape[0], encoder_sequence_length)
        out = self.runtime.attend(self.layer, query, key, value, text_len=encoder_sequence_length,
                                  text_mask=text_mask)
        video_out, text_out = out[:, :, :sequence_length], out[:, :, sequence_length:]
        text_out = _compact_valid_rows(text_out, text_mask)
        hidden_states = torch.cat([video_out, text_out], dim=2).transpose(1, 2).flatten(2, 3)

        hidden_states, encoder_hidden_states = hidden_states.split_with_sizes(
            (sequence_length, encoder_sequence_length), dim=1
        )

        # linear proj
        hidden_states = attn.to_out[0](hidden_states)
        # dropout
        hidden_states = attn.to_out[1](hidden_states)

        if hasattr(attn, "to_add_out"):
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states)

        return hidden_states, encoder_hidden_states


def _compact_valid_rows(text_out: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
    """diffusers' text rows: each item's valid rows first (in order), then zeros. ``(B, H, T, D)``."""
    if bool(text_mask.all()):
        return text_out
    rows = torch.zeros_like(text_out)
    for index in range(text_out.shape[0]):
        valid = torch.nonzero(text_mask[index], as_tuple=False).flatten()
        rows[index, :, : valid.numel()] = text_out[index, :, valid]
    return rows


@register_adapter
@dataclass(frozen=True)
class MochiAdapter(ModelAdapter):
    """Mochi text-to-video. Latent input ``(B, C, F, H, W)``; text after video, key-padding mask; VAE 6x/8x."""

    family = "mochi"
    pipelines = ("MochiPipeline",)
    checkpoints = (("Mochi 1 10B", 24, 128),)
    transformer_classes = ("MochiTransformer3DModel",)
    text_first = False

    vae_scale_temporal: int = 6  # MochiPipeline names its factors differently; bind() keeps these

    def attention_modules(self, transformer):
        return [block.attn1 for block in transformer.transformer_blocks]

    def make_processor(self, runtime, layer):
        return MochiJointAttnProcessor(runtime, layer)

    def _patch_size(self, transformer):
        p = int(transformer.config.patch_size)
        return (1, p, p)

    def _bind_defaults(self, transformer, pipeline):
        # The pipeline pads the prompt to max_sequence_length (default 256, the real model's); use the
        # transformer's configured text length so that tiny models stay tiny.
        return {"max_sequence_length": int(transformer.config.max_sequence_length)}
