"""Tiny, offline, random-init Motif-Video pipeline (`MotifVideoPipeline`, diffusers 0.42.1): the real pipeline
class from small configs with fixed seeds, the real patch (1, 2, 2) and the Wan VAE's 4x temporal / 8x spatial
compression, nothing downloaded. 64 x 64 pixels, 9 frames -> latent (3, 8, 8) -> canvas (3, 4, 4).

Layers: 1 dual-stream block, 2 single-stream blocks of which the last is a *decoder* block
(``num_decoder_layers=1``: video + video, not hooked), so 2 hooked layers. Text: a 1-layer T5Gemma2 encoder,
prompts padded to ``max_sequence_length`` tokens (`MOTIF_TEXT_LEN` in the direct calls, the pipeline's 512 in
the CLI) with a boolean mask; classifier-free guidance through diffusers'
``ClassifierFreeGuidance`` guider (two forwards per step).
"""

from __future__ import annotations

from pathlib import Path

import torch

from tiny_pipes import _finish, _vocab_size, _word_level_tokenizer

MOTIF_TEXT_LEN = 16
MOTIF_CALL = dict(height=64, width=64, frames=9, steps=2)
MOTIF_CANVAS = (3, 4, 4)


def _t5gemma2_encoder():
    from transformers import T5Gemma2Encoder, T5Gemma2EncoderConfig, T5Gemma2TextConfig

    text_config = T5Gemma2TextConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, head_dim=16,
                                     num_key_value_heads=2, intermediate_size=64, vocab_size=_vocab_size(),
                                     max_position_embeddings=1024)
    text_config.dropout_rate, text_config.layer_norm_epsilon, text_config.dense_act_fn = 0.0, 1e-6, "gelu"
    torch.manual_seed(0)
    return T5Gemma2Encoder(T5Gemma2EncoderConfig(text_config=text_config))


def tiny_motif_transformer(num_decoder_layers: int = 1, image_embed_dim: int | None = None):
    """Tiny `MotifVideoTransformer3DModel`: 2 heads of 32, patch (1, 2, 2), 33 input channels (16 noisy + 16
    condition + 1 mask, as the pipelines concatenate them), 1 dual + 2 single-stream blocks."""
    from diffusers import MotifVideoTransformer3DModel

    torch.manual_seed(0)
    return MotifVideoTransformer3DModel(
        in_channels=33, out_channels=16, num_attention_heads=2, attention_head_dim=32, num_layers=1,
        num_single_layers=2, num_decoder_layers=num_decoder_layers, patch_size=2, patch_size_t=1, text_embed_dim=32,
        image_embed_dim=image_embed_dim, rope_axes_dim=(8, 12, 12),
    ).eval().requires_grad_(False)


def tiny_motif_pipeline():
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, MotifVideoPipeline
    from diffusers.guiders import ClassifierFreeGuidance

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    pipe = MotifVideoPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae, text_encoder=_t5gemma2_encoder(),
        tokenizer=_word_level_tokenizer(bos=0), transformer=tiny_motif_transformer(),
        guider=ClassifierFreeGuidance(guidance_scale=5.0),
    )
    return _finish(pipe)


def save_tiny_motif(folder) -> Path:
    """Write the tiny pipeline as a diffusers pipeline folder (safetensors); returns the folder."""
    folder = Path(folder)
    tiny_motif_pipeline().save_pretrained(folder, safe_serialization=True)
    return folder


def motif_call_kwargs(generator=None, **overrides) -> dict:
    kwargs = dict(prompt="a red cat running on the beach", height=MOTIF_CALL["height"], width=MOTIF_CALL["width"],
                  num_frames=MOTIF_CALL["frames"], num_inference_steps=MOTIF_CALL["steps"],
                  max_sequence_length=MOTIF_TEXT_LEN,
                  generator=generator if generator is not None else torch.Generator("cpu").manual_seed(0),
                  output_type="np")
    kwargs.update(overrides)
    return kwargs
