"""LTX-2 (`LTX2VideoTransformer3DModel`, audio + video): STA on the **video stream's self-attention only**.

Each `LTX2VideoTransformerBlock` runs six attentions. Hooked: ``attn1``, the video self-attention over the
packed video tokens (full 3D attention, RoPE from the video coordinates, across-heads RMS q/k norms, optional
per-head output gates). Not hooked, left to diffusers' own processors (dense): ``audio_attn1`` (audio
self-attention over a 1-D audio sequence: no 3D canvas), ``attn2`` / ``audio_attn2`` (cross-attention to the
text from the Gemma connectors, with its key-padding mask), and ``audio_to_video_attn`` / ``video_to_audio_attn``
(cross-modal attention: video queries to audio keys and back). So `text_len` is 0 and the audio never reaches
the STA kernels; only the layers listed by `attention_modules` have their processors swapped.

Spatio-temporal guidance (STG, the pipelines' extra forward with ``spatio_temporal_guidance_blocks``) is
reproduced: a perturbed block with every batch item perturbed skips the attention (output = value projection)
and hands nothing to the hook; a partial ``perturbation_mask`` attends and then blends like diffusers.

Canvas: the latent reaches the transformer packed ``(B, T*H*W, C)`` (T-major), so the canvas is the call's
``num_frames``/``height``/``width`` (latent sizes, divided by the patch) or, without them, the distinct
start coordinates of ``video_coords``. VAE 8x temporal, 32x spatial, patch 1: 512 x 768, 121 frames -> canvas
(16, 16, 24). Image-to-video / conditions at frame 0 (`LTX2ImageToVideoPipeline`, `LTX2ConditionPipeline`)
put the image latent into the first latent frame of the canvas (clean tokens, per-token timestep 0), so canvas
and windows are those of text-to-video. Calls whose video tokens are not exactly that grid (keyframe
conditions appended after the grid, IC-LoRA reference tokens with ``video_self_attention_mask``) are refused
with a one-line error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from diffusers.models.transformers.transformer_ltx2 import apply_interleaved_rotary_emb, apply_split_rotary_emb

from ..errors import UserError
from .base import register_adapter
from .ltx_video import LTXVideoAdapter
from .parallel import ulysses_attention


class LTX2VideoSelfAttnProcessor:
    """`LTX2AudioVideoAttnProcessor` / `LTX2PerturbedAttnProcessor` (diffusers 0.42.1, self-attention path of
    the video ``attn1``) with the attention op handed to the hook runtime."""

    def __init__(self, runtime, layer: int):
        self.runtime = runtime
        self.layer = layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, query_rotary_emb=None,
                 key_rotary_emb=None, perturbation_mask=None, all_perturbed=None):
        if encoder_hidden_states is not None or attention_mask is not None:
            raise RuntimeError("the hooked LTX-2 processor only handles the unmasked video self-attention (attn1)")
        gate_logits = attn.to_gate_logits(hidden_states) if attn.to_gate_logits is not None else None
        value = attn.to_v(hidden_states)
        if all_perturbed is None:
            all_perturbed = torch.all(perturbation_mask == 0) if perturbation_mask is not None else False

        if all_perturbed:  # STG: skip the attention, keep the value projection
            hidden_states = value
        else:
            query = attn.norm_q(attn.to_q(hidden_states))
            key = attn.norm_k(attn.to_k(hidden_states))
            if query_rotary_emb is not None:
                rotate = apply_interleaved_rotary_emb if attn.rope_type == "interleaved" else apply_split_rotary_emb
                query = rotate(query, query_rotary_emb)
                key = rotate(key, key_rotary_emb if key_rotary_emb is not None else query_rotary_emb)

            query = query.unflatten(2, (attn.heads, -1))
            key = key.unflatten(2, (attn.heads, -1))
            heads_value = value.unflatten(2, (attn.heads, -1))

            parallel_config = self.runtime.state.parallel_config
            if parallel_config is not None and getattr(parallel_config, "context_parallel_config", None) is not None:
                hidden_states = ulysses_attention(self.runtime, self.layer, query, key, heads_value, parallel_config)
            else:
                out = self.runtime.attend(self.layer, query.transpose(1, 2), key.transpose(1, 2),
                                          heads_value.transpose(1, 2))
                hidden_states = out.transpose(1, 2)
            hidden_states = hidden_states.flatten(2, 3).to(query.dtype)
            if perturbation_mask is not None:
                hidden_states = torch.lerp(value, hidden_states, perturbation_mask)

        if gate_logits is not None:  # per-head gates, 2 * sigmoid (1 at zero logits)
            gates = 2.0 * torch.sigmoid(gate_logits)
            hidden_states = (hidden_states.unflatten(2, (attn.heads, -1)) * gates.unsqueeze(-1)).flatten(2, 3)

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        return hidden_states


def _canvas_from_coords(video_coords: torch.Tensor) -> tuple[int, int, int]:
    """(T, H, W) from LTX-2 ``video_coords`` ``(B, 3, S, 2)`` (per-axis [start, end) bounds): the distinct starts."""
    starts = video_coords[0, :, :, 0]
    return tuple(int(torch.unique(starts[axis]).numel()) for axis in range(3))


@register_adapter
@dataclass(frozen=True)
class LTX2Adapter(LTXVideoAdapter):
    """LTX-2 audio+video. Packed video latent ``(B, S, C)``; VAE 8x temporal, 32x spatial (the loaded pipeline's
    ratios when bound); only the video self-attention ``attn1`` is hooked, no joint text."""

    family = "ltx2"
    transformer_classes = ("LTX2VideoTransformer3DModel",)
    text_first = False
    pipelines = ("LTX2Pipeline", "LTX2ImageToVideoPipeline", "LTX2ConditionPipeline")
    text_handling = ("cross-attention (attn2, Gemma key-padding mask); only the video self-attention attn1 is "
                     "sparsified: audio self-attention and audio<->video cross-attention stay dense")
    # diffusers' LTX2VideoTransformer3DModel defaults (the LTX-2 release): video 32 x 128, audio 32 x 64 (dense)
    checkpoints = (("LTX-2 19B (video stream)", 32, 128),)

    def attention_modules(self, transformer):
        return [block.attn1 for block in transformer.transformer_blocks]

    def make_processor(self, runtime, layer):
        return LTX2VideoSelfAttnProcessor(runtime, layer)

    def forward_canvas(self, transformer, args, kwargs):
        if kwargs.get("video_self_attention_mask") is not None:
            raise UserError("LTX-2 forwards with a video_self_attention_mask (IC-LoRA reference tokens) are not "
                            "supported: the reference tokens are not part of the video canvas")
        hidden_states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        p_t, p_h, p_w = self._patch_size(transformer)
        if kwargs.get("num_frames") is not None and kwargs.get("height") is not None:
            canvas = (int(kwargs["num_frames"]) // p_t, int(kwargs["height"]) // p_h, int(kwargs["width"]) // p_w)
        elif kwargs.get("video_coords") is not None:
            canvas = _canvas_from_coords(kwargs["video_coords"])
        else:
            raise RuntimeError("LTX-2 forward without num_frames/height/width or video_coords: no canvas")
        tokens = int(hidden_states.shape[1])
        split = getattr(transformer, "_parallel_config", None) is not None  # context parallel: a token slice
        if not split and tokens != math.prod(canvas):
            raise UserError(
                f"LTX-2 forward with {tokens} video tokens is not the {canvas[0]}x{canvas[1]}x{canvas[2]} video "
                "grid: conditions appended after the grid (keyframe conditions at frames other than 0) add tokens "
                "outside the canvas; put conditions at frame 0"
            )
        return canvas
