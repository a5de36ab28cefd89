"""Motif-Video (`MotifVideoTransformer3DModel`): HunyuanVideo-like joint attention, text tokens AFTER the video
tokens, boolean key-padding mask, RoPE on the video tokens only.

Hooked layers: the dual-stream ``transformer_blocks[i].attn`` (separate text projections ``add_q/k/v_proj``) and
the *encoder* single-stream ``single_transformer_blocks[i].attn`` (video and text through the same projections).
The optional text cross-attention (``cross_attn``, ``enable_text_cross_attention_*``) is never hooked. The last
``num_decoder_layers`` single-stream blocks (0 in the class defaults) are not hooked either: there the "text"
stream is the encoder's video output (``encoder_hidden_states = hidden_states``), so the sequence is two copies
of the video, not canvas + text; they stay dense with diffusers' processor.

Mask: diffusers pads the text mask with True over the video keys and passes ``(B, 1, 1, video + text)`` bool;
the hook hands the text part over as `text_mask` (the same key-padding mask; text queries stay dense).

Image-to-video (`MotifVideoImage2VideoPipeline`): the image latent goes into the channels
(``[latents, condition, mask]``, 33 = 16 + 16 + 1) and, when the checkpoint has an image embedder, its vision
tokens are prepended to the text stream (always valid): the canvas is the video's, those tokens count as text.

Canvas: latent ``(B, C, F, H, W)`` divided by ``(patch_size_t, patch_size, patch_size)`` (1, 2, 2 by default);
the Wan VAE: 4x temporal, 8x spatial.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffusers.models.embeddings import apply_rotary_emb

from .base import ModelAdapter, project_qkv, register_adapter


class MotifVideoJointAttnProcessor:
    """`diffusers.models.transformers.transformer_motif_video.MotifVideoAttnProcessor2_0` with the attention op
    handed to the hook runtime."""

    def __init__(self, runtime, layer: int):
        self.runtime = runtime
        self.layer = layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        if encoder_hidden_states is None:
            raise RuntimeError("the hooked Motif-Video processor needs the joint text tokens")
        text_len = encoder_hidden_states.shape[1]
        single_stream = attn.add_q_proj is None
        if single_stream:  # one projection over [video, text]
            query, key, value = project_qkv(attn, torch.cat([hidden_states, encoder_hidden_states], dim=1))
        else:
            query, key, value = project_qkv(attn, hidden_states)

        if image_rotary_emb is not None:  # RoPE on the video tokens only
            if single_stream:
                query = torch.cat([apply_rotary_emb(query[:, :-text_len], image_rotary_emb, sequence_dim=1),
                                   query[:, -text_len:]], dim=1)
                key = torch.cat([apply_rotary_emb(key[:, :-text_len], image_rotary_emb, sequence_dim=1),
                                 key[:, -text_len:]], dim=1)
            else:
                query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
                key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        if not single_stream:
            encoder_query, encoder_key, encoder_value = project_qkv(attn, encoder_hidden_states, added=True)
            query = torch.cat([query, encoder_query], dim=1)
            key = torch.cat([key, encoder_key], dim=1)
            value = torch.cat([value, encoder_value], dim=1)

        text_mask = None
        if attention_mask is not None:  # (B, 1, 1, video + text) bool, True over the video keys
            text_mask = attention_mask.reshape(attention_mask.shape[0], -1)[:, -text_len:].bool()
            text_mask = text_mask.expand(query.shape[0], text_len)
        out = self.runtime.attend(self.layer, query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                  text_len=text_len, text_mask=text_mask)
        hidden_states = out.transpose(1, 2).flatten(2, 3).to(query.dtype)

        hidden_states, encoder_hidden_states = hidden_states[:, :-text_len], hidden_states[:, -text_len:]
        if attn.to_out is not None:
            hidden_states = attn.to_out[0](hidden_states)
            hidden_states = attn.to_out[1](hidden_states)
        if attn.to_add_out is not None:
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        return hidden_states, encoder_hidden_states


@register_adapter
@dataclass(frozen=True)
class MotifVideoAdapter(ModelAdapter):
    """Motif-Video text/image-to-video. Latent input ``(B, C, F, H, W)``; text after the video, boolean key-padding
    mask; dual-stream and encoder single-stream blocks hooked, decoder single-stream blocks dense."""

    family = "motif_video"
    transformer_classes = ("MotifVideoTransformer3DModel",)
    text_first = False
    pipelines = ("MotifVideoPipeline", "MotifVideoImage2VideoPipeline")
    text_handling = ("joint attention: text after the video tokens, boolean key-padding mask; "
                     "decoder single-stream blocks (video + video) stay dense")

    def attention_modules(self, transformer):
        single = list(transformer.single_transformer_blocks)
        encoder_single = single[: len(single) - int(transformer.config.num_decoder_layers)]
        return [block.attn for block in transformer.transformer_blocks] + [block.attn for block in encoder_single]

    def make_processor(self, runtime, layer):
        return MotifVideoJointAttnProcessor(runtime, layer)

    def _patch_size(self, transformer):
        config = transformer.config
        return (int(config.patch_size_t), int(config.patch_size), int(config.patch_size))
