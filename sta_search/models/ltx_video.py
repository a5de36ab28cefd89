"""LTX-Video (`LTXVideoTransformer3DModel`, 0.9.x): self-attention ``transformer_blocks[i].attn1`` over the video
tokens only, with across-heads RMS q/k norms and RoPE on the flat (B, S, heads*dim) projections; the text enters
through cross-attention ``attn2`` (with the T5 key-padding mask), which is never hooked (``text_len=0``).

The latent reaches the transformer already packed into tokens ``(B, T*H*W, C)`` (T-major), so the canvas comes
from the call's ``num_frames``/``height``/``width`` (`LTXPipeline`, `LTXImageToVideoPipeline`) or, when only
``video_coords`` is passed (`LTXConditionPipeline`, `LTXI2VLongMultiPromptPipeline`), from the distinct
coordinates. Image-to-video: the conditioning image is the first latent frame *inside* the canvas (clean tokens,
per-token timestep 0), so canvas and windows are those of text-to-video. `LTXConditionPipeline` conditions placed
at a frame other than 0 prepend extra tokens to the sequence; those calls are refused (no canvas fits them).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..errors import UserError
from .base import ModelAdapter, register_adapter
from .parallel import ulysses_attention


class LTXVideoSelfAttnProcessor:
    """`diffusers.models.transformers.transformer_ltx.LTXVideoAttnProcessor` (self-attention path) with the
    attention op handed to the hook runtime."""

    def __init__(self, runtime, layer: int):
        self.runtime = runtime
        self.layer = layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        if encoder_hidden_states is not None or attention_mask is not None:
            raise RuntimeError("the hooked LTX-Video processor only handles self-attention (attn1)")
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)

        query = attn.norm_q(query)
        key = attn.norm_k(key)

        if image_rotary_emb is not None:
            query = _apply_rotary_emb(query, image_rotary_emb)
            key = _apply_rotary_emb(key, image_rotary_emb)

        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))

        parallel_config = self.runtime.state.parallel_config
        if parallel_config is not None and getattr(parallel_config, "context_parallel_config", None) is not None:
            hidden_states = ulysses_attention(self.runtime, self.layer, query, key, value, parallel_config)
        else:
            out = self.runtime.attend(self.layer, query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))
            hidden_states = out.transpose(1, 2)
        hidden_states = hidden_states.flatten(2, 3)
        hidden_states = hidden_states.to(query.dtype)

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        return hidden_states


def _apply_rotary_emb(x, freqs):
    # verbatim from diffusers.models.transformers.transformer_ltx.apply_rotary_emb (0.42)
    cos, sin = freqs
    x_real, x_imag = x.unflatten(2, (-1, 2)).unbind(-1)
    x_rotated = torch.stack([-x_imag, x_real], dim=-1).flatten(2)
    return (x.float() * cos + x_rotated.float() * sin).to(x.dtype)


def _canvas_from_coords(video_coords: torch.Tensor, tokens: int) -> tuple[int, int, int]:
    """(T, H, W) from ``video_coords`` ``(B, 3, S)``: the distinct frame / row / column coordinates."""
    coords = video_coords[0]
    canvas = tuple(int(torch.unique(coords[axis]).numel()) for axis in range(3))
    if canvas[0] * canvas[1] * canvas[2] != tokens:
        raise UserError(
            f"LTX-Video forward with {tokens} tokens is not a {canvas[0]}x{canvas[1]}x{canvas[2]} video grid: "
            "conditions placed after frame 0 (LTXConditionPipeline) add tokens outside the canvas; "
            "put conditions at frame 0"
        )
    return canvas


@register_adapter
@dataclass(frozen=True)
class LTXVideoAdapter(ModelAdapter):
    """LTX-Video text/image-to-video. Packed latent input ``(B, S, C)``; VAE 8x temporal, 32x spatial; no joint text."""

    family = "ltx_video"
    transformer_classes = ("LTXVideoTransformer3DModel",)
    text_first = False
    pipelines = ("LTXPipeline", "LTXImageToVideoPipeline", "LTXConditionPipeline", "LTXI2VLongMultiPromptPipeline")
    text_handling = "cross-attention (attn2, T5 key-padding mask); image conditions are frame-0 tokens of the canvas"
    checkpoints = (("LTX-Video 2B 0.9.x", 32, 64), ("LTX-Video 13B 0.9.7", 32, 128))

    vae_scale_temporal: int = 8
    vae_scale_spatial: int = 32

    def attention_modules(self, transformer):
        return [block.attn1 for block in transformer.transformer_blocks]

    def forward_canvas(self, transformer, args, kwargs):
        hidden_states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        tokens = int(hidden_states.shape[1])
        if kwargs.get("num_frames") is not None:
            p_t, p_h, p_w = self._patch_size(transformer)
            return (int(kwargs["num_frames"]) // p_t, int(kwargs["height"]) // p_h, int(kwargs["width"]) // p_w)
        if kwargs.get("video_coords") is not None:
            return _canvas_from_coords(kwargs["video_coords"], tokens)
        raise RuntimeError("LTX-Video forward without num_frames/height/width or video_coords: no canvas")

    def runtime_canvas(self, transformer, hidden_states):
        raise RuntimeError("LTX-Video's latent input is packed; the canvas comes from forward_canvas")

    def make_processor(self, runtime, layer):
        return LTXVideoSelfAttnProcessor(runtime, layer)

    def _patch_size(self, transformer):
        config = transformer.config
        return (int(config.patch_size_t), int(config.patch_size), int(config.patch_size))

    def bind(self, pipeline=None, transformer=None):
        bound = super().bind(pipeline, transformer)
        temporal = getattr(pipeline, "vae_temporal_compression_ratio", None)
        spatial = getattr(pipeline, "vae_spatial_compression_ratio", None)
        return dataclasses.replace(
            bound,
            vae_scale_temporal=int(temporal) if temporal else bound.vae_scale_temporal,
            vae_scale_spatial=int(spatial) if spatial else bound.vae_scale_spatial,
        )
