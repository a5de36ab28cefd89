"""Wan 2.1 / 2.2 (`WanTransformer3DModel`): self-attention ``blocks[i].attn1`` with RoPE and
across-heads RMS q/k norms; the text enters through cross-attention ``attn2``, which is never hooked.
Wan 2.2 A14B pipelines have a second expert ``transformer_2``; `hook_attention` numbers its layers after
the first expert's."""

from __future__ import annotations

import torch

from diffusers.models.transformers.transformer_wan import _get_qkv_projections

from .base import ModelAdapter, register_adapter
from .parallel import ulysses_attention


class WanSelfAttnProcessor:
    """`diffusers.models.transformers.transformer_wan.WanAttnProcessor` (self-attention path) with the
    attention op handed to the hook runtime."""

    def __init__(self, runtime, layer: int):
        self.runtime = runtime
        self.layer = layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if encoder_hidden_states is not None or attention_mask is not None or attn.add_k_proj is not None:
            raise RuntimeError("the hooked Wan processor only handles self-attention (attn1)")
        query, key, value = _get_qkv_projections(attn, hidden_states, None)

        query = attn.norm_q(query)
        key = attn.norm_k(key)

        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))

        if rotary_emb is not None:
            query = _apply_rotary_emb(query, *rotary_emb)
            key = _apply_rotary_emb(key, *rotary_emb)

        parallel_config = self.runtime.state.parallel_config
        if parallel_config is not None and getattr(parallel_config, "context_parallel_config", None) is not None:
            # diffusers context parallelism: this rank holds a slice of the sequence; Ulysses all-to-all
            # gives the attention function the full sequence for a slice of the heads, and back.
            hidden_states = ulysses_attention(self.runtime, self.layer, query, key, value, parallel_config)
        else:
            # (B, S, H, D) -> (B, H, S, D) views, as diffusers' native backend permutes them for SDPA
            out = self.runtime.attend(self.layer, query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))
            hidden_states = out.transpose(1, 2)
        hidden_states = hidden_states.flatten(2, 3)
        hidden_states = hidden_states.type_as(query)

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        return hidden_states


def _apply_rotary_emb(hidden_states: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor):
    # verbatim from WanAttnProcessor.__call__ (diffusers 0.42)
    x1, x2 = hidden_states.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(hidden_states)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(hidden_states)


@register_adapter
class WanAdapter(ModelAdapter):
    """Wan 2.1 / 2.2 text-to-video. Latent input ``(B, C, F, H, W)``; no joint text (``text_len=0``)."""

    family = "wan"
    transformer_classes = ("WanTransformer3DModel",)
    text_first = False
    pipelines = ("WanPipeline",)
    text_handling = "cross-attention (attn2); no text in the self-attention"
    checkpoints = (("Wan 2.1 T2V 1.3B", 12, 128), ("Wan 2.1/2.2 14B", 40, 128), ("Wan 2.2 TI2V 5B", 24, 128))

    def attention_modules(self, transformer):
        return [block.attn1 for block in transformer.blocks]

    def runtime_canvas(self, transformer, hidden_states):
        p_t, p_h, p_w = self._patch_size(transformer)
        _, _, frames, height, width = hidden_states.shape
        return (frames // p_t, height // p_h, width // p_w)

    def make_processor(self, runtime, layer):
        return WanSelfAttnProcessor(runtime, layer)

    def _patch_size(self, transformer):
        return tuple(int(p) for p in transformer.config.patch_size)

    def _latent_frames(self, transformer, frames):
        t = self.vae_scale_temporal
        if t > 1 and frames % t != 1:  # WanPipeline rounds num_frames to 4k + 1
            frames = frames // t * t + 1
        return (max(frames, 1) - 1) // t + 1
