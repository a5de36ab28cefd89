"""HunyuanVideo 1.5 (`HunyuanVideo15Transformer3DModel`): dual-stream joint attention
``transformer_blocks[i].attn`` (separate text projections, no single-stream blocks), text tokens AFTER the
video tokens, RoPE on the video tokens only.

Text layout: the transformer joins three condition streams per batch item as ``[valid image (SigLIP, 729
tokens; all invalid for text-to-video), valid ByT5 glyph tokens, valid Qwen tokens, invalid image, invalid
ByT5, invalid Qwen]`` with a boolean mask, so `text_mask` is True on a prefix of the text. diffusers
masks query AND key (``mask_q & mask_k``): a padded text query attends to nothing (SDPA returns 0 for such a
row). The hook hands the key-padding mask over (padded text queries see the video and valid text, per
docs/geometry.md); padded text tokens are never attended as keys by anything and never reach the output, so
the video output is the same (checked by the tests against the unhooked pipeline).

Image-to-video (`HunyuanVideo15ImageToVideoPipeline`): the image latent is concatenated on the channels
(``[latents, cond_latents, mask]``) and the image's SigLIP tokens join the text stream: the canvas is the
video's, the image tokens count as (valid) text tokens. That pipeline takes no height/width: it picks the
size bucket of ``target_size`` (the transformer config's; 640 px for 480p, 960 px for 720p) closest to the
image's aspect ratio and resizes the image to it. The adapter drops height/width from its call and refuses
(UserError naming the size to pass) a ``--height/--width`` that is not the size the pipeline will make.

Canvas: latent ``(B, C, F, H, W)``, patch ``(patch_size_t, patch_size, patch_size)`` (1, 1, 1 in the release);
VAE 4x temporal, 16x spatial (read from the pipeline).
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass

import torch

from diffusers.models.embeddings import apply_rotary_emb

from ..errors import UserError
from .base import ModelAdapter, project_qkv, register_adapter


class HunyuanVideo15JointAttnProcessor:
    """`diffusers.models.transformers.transformer_hunyuan_video15.HunyuanVideo15AttnProcessor2_0` with the
    attention op handed to the hook runtime."""

    def __init__(self, runtime, layer: int):
        self.runtime = runtime
        self.layer = layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        if encoder_hidden_states is None or attention_mask is None:
            raise RuntimeError("the hooked HunyuanVideo 1.5 processor needs the joint text tokens and their mask")
        # 1. QKV projections and 2. QK normalization
        query, key, value = project_qkv(attn, hidden_states)

        # 3. Rotational positional embeddings applied to latent stream
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        # 4. Encoder condition QKV projection and normalization
        encoder_query, encoder_key, encoder_value = project_qkv(attn, encoder_hidden_states, added=True)

        # concatenated in (B, H, S, D), as the hook runtime takes them
        query = torch.cat([query, encoder_query], dim=1).transpose(1, 2)
        key = torch.cat([key, encoder_key], dim=1).transpose(1, 2)
        value = torch.cat([value, encoder_value], dim=1).transpose(1, 2)

        # 5. Attention (handed over; the text part of diffusers' mask as a key-padding mask)
        text_len = encoder_hidden_states.shape[1]
        text_mask = attention_mask.reshape(attention_mask.shape[0], -1)[:, -text_len:].bool()
        out = self.runtime.attend(self.layer, query, key, value, text_len=text_len,
                                  text_mask=text_mask.expand(query.shape[0], text_len))
        hidden_states = out.transpose(1, 2).flatten(2, 3)
        hidden_states = hidden_states.to(query.dtype)

        # 6. Output projection
        hidden_states, encoder_hidden_states = hidden_states[:, :-text_len], hidden_states[:, -text_len:]
        if getattr(attn, "to_out", None) is not None:
            hidden_states = attn.to_out[0](hidden_states)
            hidden_states = attn.to_out[1](hidden_states)
        if getattr(attn, "to_add_out", None) is not None:
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        return hidden_states, encoder_hidden_states


@register_adapter
@dataclass(frozen=True)
class HunyuanVideo15Adapter(ModelAdapter):
    """HunyuanVideo 1.5 text/image-to-video. Latent input ``(B, C, F, H, W)``; text after video, boolean
    key-padding mask over the joined image/ByT5/Qwen text stream."""

    family = "hunyuan_video15"
    pipelines = ("HunyuanVideo15Pipeline", "HunyuanVideo15ImageToVideoPipeline")
    checkpoints = (("HunyuanVideo 1.5 8.3B", 16, 128),)
    transformer_classes = ("HunyuanVideo15Transformer3DModel",)
    text_first = False

    vae_scale_spatial: int = 16  # the HunyuanVideo 1.5 VAE (a loaded pipeline binds its own factors)
    sized_by_image: bool = False  # bound to HunyuanVideo15ImageToVideoPipeline: no height/width in its call

    def attention_modules(self, transformer):
        return [block.attn for block in transformer.transformer_blocks]

    def make_processor(self, runtime, layer):
        return HunyuanVideo15JointAttnProcessor(runtime, layer)

    def _patch_size(self, transformer):
        config = transformer.config
        return (int(config.patch_size_t), int(config.patch_size), int(config.patch_size))

    def bind(self, pipeline=None, transformer=None):
        bound = super().bind(pipeline, transformer)
        return dataclasses.replace(bound, sized_by_image=pipeline is not None and _sized_by_image(pipeline))

    def pipeline_kwargs(self, prompt, height, width, frames, steps, generator, **overrides) -> dict:
        kwargs = super().pipeline_kwargs(prompt, height, width, frames, steps, generator, **overrides)
        if self.sized_by_image:
            kwargs.pop("height", None)
            kwargs.pop("width", None)
        return kwargs

    def image_call_kwargs(self, pipeline, image, height, width, frames):
        if _sized_by_image(pipeline):
            target = int(pipeline.target_size)
            size = tuple(int(v) for v in pipeline.video_processor.calculate_default_height_width(
                image.height, image.width, target))
            if size != (height, width):
                raise UserError(
                    f"{type(pipeline).__name__} sizes the video from the image: a {image.width}x{image.height} "
                    f"(width x height) image gives {size[0]}x{size[1]} (height x width) at target size {target}, "
                    f"not {height}x{width}; pass --height {size[0]} --width {size[1]}")
        return super().image_call_kwargs(pipeline, image, height, width, frames)


def _sized_by_image(pipeline) -> bool:
    """Whether `pipeline`'s call takes no height/width (`HunyuanVideo15ImageToVideoPipeline`)."""
    params = inspect.signature(type(pipeline).__call__).parameters
    return "image" in params and "height" not in params and hasattr(pipeline, "target_size")
