"""EasyAnimate V5.1 (`EasyAnimateTransformer3DModel`): joint attention ``transformer_blocks[i].attn1`` with the
text tokens BEFORE the video tokens (MMDiT blocks project the text separately; other blocks concatenate
it first), LayerNorm q/k norms, 3D RoPE on the video tokens, no key-padding mask (the transformer is not
given the prompt mask: it attends to all ``max_sequence_length`` text tokens, padding included).

Canvas: latent ``(B, C, F, H, W)``, patch ``(1, p, p)``; VAE factors from the pipeline's
``vae_temporal_compression_ratio`` / ``vae_spatial_compression_ratio`` (Magvit VAE: 4x, 8x).
Image-to-video (`EasyAnimateInpaintPipeline`) and control pipelines concatenate their latents on the
channels inside the transformer (``inpaint_latents`` / ``control_latents``): same tokens, same canvas. The
inpaint pipeline takes no ``image``: ``--image`` becomes its ``video`` (the image repeated over the frames) and
``mask_video`` (0 on the first frame, kept; 255 on the others, generated), as diffusers'
``get_image_to_video_latent`` builds them in its example. Without ``--image`` it generates from text alone.
"""

from __future__ import annotations

import dataclasses
import inspect

import torch

from diffusers.models.embeddings import apply_rotary_emb

from .base import ModelAdapter, project_qkv, register_adapter


class EasyAnimateJointAttnProcessor:
    """`diffusers.models.transformers.transformer_easyanimate.EasyAnimateAttnProcessor2_0` with the attention
    op handed to the hook runtime."""

    def __init__(self, runtime, layer: int):
        self.runtime = runtime
        self.layer = layer

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None):
        if attention_mask is not None:
            raise RuntimeError("the hooked EasyAnimate processor does not support an attention mask")
        if encoder_hidden_states is None:
            raise RuntimeError("the hooked EasyAnimate processor needs the joint text tokens")
        if attn.add_q_proj is None:
            hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)

        # 1. QKV projections
        # 2. QK normalization (over the head dim: the same before or after diffusers' transpose)
        query, key, value = (x.transpose(1, 2) for x in project_qkv(attn, hidden_states))

        # 3. Encoder condition QKV projection and normalization
        if attn.add_q_proj is not None:
            encoder_query, encoder_key, encoder_value = (
                x.transpose(1, 2) for x in project_qkv(attn, encoder_hidden_states, added=True))

            query = torch.cat([encoder_query, query], dim=2)
            key = torch.cat([encoder_key, key], dim=2)
            value = torch.cat([encoder_value, value], dim=2)

        text_len = encoder_hidden_states.shape[1]
        if image_rotary_emb is not None:
            query[:, :, text_len:] = apply_rotary_emb(query[:, :, text_len:], image_rotary_emb)
            if not attn.is_cross_attention:
                key[:, :, text_len:] = apply_rotary_emb(key[:, :, text_len:], image_rotary_emb)

        # 5. Attention (handed over)
        hidden_states = self.runtime.attend(self.layer, query, key, value, text_len=text_len)
        hidden_states = hidden_states.transpose(1, 2).flatten(2, 3)
        hidden_states = hidden_states.to(query.dtype)

        # 6. Output projection
        encoder_hidden_states, hidden_states = hidden_states[:, :text_len], hidden_states[:, text_len:]
        if getattr(attn, "to_out", None) is not None:
            hidden_states = attn.to_out[0](hidden_states)
            hidden_states = attn.to_out[1](hidden_states)
        if getattr(attn, "to_add_out", None) is not None:
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        return hidden_states, encoder_hidden_states


@register_adapter
@dataclasses.dataclass(frozen=True)
class EasyAnimateAdapter(ModelAdapter):
    """EasyAnimate text/image-to-video. Latent input ``(B, C, F, H, W)``; text first, no key-padding mask."""

    family = "easyanimate"
    pipelines = ("EasyAnimatePipeline", "EasyAnimateInpaintPipeline")
    transformer_classes = ("EasyAnimateTransformer3DModel",)
    text_first = True

    # diffusers 0.42's EasyAnimate pipelines fail under CFG without a negative prompt (they iterate over None)
    call_defaults: tuple[tuple[str, object], ...] = (("negative_prompt", ""),)

    def attention_modules(self, transformer):
        return [block.attn1 for block in transformer.transformer_blocks]

    def make_processor(self, runtime, layer):
        return EasyAnimateJointAttnProcessor(runtime, layer)

    def _patch_size(self, transformer):
        p = int(transformer.config.patch_size)
        return (1, p, p)

    def image_input(self, pipeline):
        if _is_inpaint(pipeline):
            return True, False  # the image is optional: without it the inpaint model generates from text
        return super().image_input(pipeline)

    def image_call_kwargs(self, pipeline, image, height, width, frames):
        if not _is_inpaint(pipeline):
            return super().image_call_kwargs(pipeline, image, height, width, frames)
        from diffusers.pipelines.easyanimate.pipeline_easyanimate_inpaint import get_image_to_video_latent

        video, mask_video = get_image_to_video_latent(image, None, frames, (height, width))
        return {"video": video, "mask_video": mask_video}

    def bind(self, pipeline=None, transformer=None):
        bound = super().bind(pipeline, transformer)
        temporal = getattr(pipeline, "vae_temporal_compression_ratio", None)  # EasyAnimate's attribute names
        spatial = getattr(pipeline, "vae_spatial_compression_ratio", None)
        return dataclasses.replace(
            bound,
            vae_scale_temporal=int(temporal) if temporal else bound.vae_scale_temporal,
            vae_scale_spatial=int(spatial) if spatial else bound.vae_scale_spatial,
        )


def _is_inpaint(pipeline) -> bool:
    """Whether `pipeline` is conditioned through ``video`` + ``mask_video`` (`EasyAnimateInpaintPipeline`)."""
    params = inspect.signature(type(pipeline).__call__).parameters
    return "video" in params and "mask_video" in params
