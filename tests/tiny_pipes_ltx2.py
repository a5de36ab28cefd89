"""Tiny, offline, random-init LTX-2 pipeline (`LTX2Pipeline`, audio + video, diffusers 0.42.1): the real
pipeline class from small configs with fixed seeds, nothing downloaded. The video VAE keeps LTX-2's real
compression (patch 4, then spatial / temporal / 2 x spatiotemporal 2x downsamples: 32x spatial, 8x temporal;
the ratios passed explicitly as the released config does) and the transformer patch 1:
128 x 128 pixels, 17 frames -> latent (3, 4, 4) -> canvas (3, 4, 4).

Components: a 1-layer Gemma 3 text encoder (tiny SigLIP vision tower, unused for text), the LTX-2 text
connectors, a 2-layer transformer (video 2 heads x 32 with gated attention and split RoPE, audio 2 heads x 8), the
audio VAE and vocoder. The pipeline's defaults run three transformer forwards per step (CFG batch, STG,
modality isolation) and pad prompts to 1024 tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tiny_pipes import _finish, _vocab_size, _word_level_tokenizer

LTX2_CALL = dict(height=128, width=128, frames=17, steps=2)
LTX2_CANVAS = (3, 4, 4)


def _gemma3():
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    text = Gemma3TextConfig(vocab_size=_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=2048,
                            sliding_window=64)
    vision = SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                image_size=28, patch_size=14)
    torch.manual_seed(0)
    return Gemma3ForConditionalGeneration(Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4))


def tiny_ltx2_transformer(**overrides):
    """Tiny `LTX2VideoTransformer3DModel` (2 layers; video 2 heads x 32, audio 2 heads x 8; gated attention)."""
    from diffusers import LTX2VideoTransformer3DModel

    config = dict(in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2,
                  attention_head_dim=32, cross_attention_dim=64, audio_in_channels=4, audio_out_channels=4,
                  audio_num_attention_heads=2, audio_attention_head_dim=8, audio_cross_attention_dim=16, num_layers=2,
                  caption_channels=32, rope_double_precision=False, rope_type="split", gated_attn=True,
                  audio_gated_attn=True)
    config.update(overrides)
    torch.manual_seed(0)
    return LTX2VideoTransformer3DModel(**config).eval().requires_grad_(False)


def tiny_ltx2_pipeline():
    from diffusers import AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video, FlowMatchEulerDiscreteScheduler, LTX2Pipeline
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder

    torch.manual_seed(0)
    connectors = LTX2TextConnectors(
        caption_channels=32, text_proj_in_factor=2, video_connector_num_attention_heads=4,
        video_connector_attention_head_dim=8, video_connector_num_layers=1,
        video_connector_num_learnable_registers=None, audio_connector_num_attention_heads=4,
        audio_connector_attention_head_dim=8, audio_connector_num_layers=1,
        audio_connector_num_learnable_registers=None, connector_rope_base_seq_len=32, rope_theta=10000.0,
        rope_double_precision=False, causal_temporal_positioning=False, rope_type="split",
    )
    torch.manual_seed(0)
    vae = AutoencoderKLLTX2Video(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8), layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1),
        decoder_inject_noise=(False,) * 4, upsample_residual=(False,) * 3, upsample_factor=(1, 1, 1),
        timestep_conditioning=False, decoder_causal=False, spatial_compression_ratio=32, temporal_compression_ratio=8,
    )
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    torch.manual_seed(0)
    audio_vae = AutoencoderKLLTX2Audio(
        base_channels=4, output_channels=2, ch_mult=(1,), num_res_blocks=1, attn_resolutions=None, in_channels=2,
        resolution=32, latent_channels=2, norm_type="pixel", causality_axis="height", dropout=0.0,
        mid_block_add_attention=False, sample_rate=16000, mel_hop_length=160, is_causal=True, mel_bins=8,
    )
    torch.manual_seed(0)
    vocoder = LTX2Vocoder(
        in_channels=16, hidden_channels=32, out_channels=2, upsample_kernel_sizes=[4, 4], upsample_factors=[2, 2],
        resnet_kernel_sizes=[3], resnet_dilations=[[1, 3, 5]], leaky_relu_negative_slope=0.1,
        output_sampling_rate=16000,
    )
    pipe = LTX2Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, audio_vae=audio_vae,
                        text_encoder=_gemma3(), tokenizer=_word_level_tokenizer(bos=1), connectors=connectors,
                        transformer=tiny_ltx2_transformer(), vocoder=vocoder)
    return _finish(pipe)


def save_tiny_ltx2(folder) -> Path:
    """Write the tiny pipeline as a diffusers pipeline folder (safetensors); returns the folder."""
    folder = Path(folder)
    tiny_ltx2_pipeline().save_pretrained(folder, safe_serialization=True)
    return folder


def ltx2_call_kwargs(generator=None, **overrides) -> dict:
    """Keyword arguments for calling the tiny pipeline directly (128 x 128, 17 frames, 2 steps, short prompts)."""
    kwargs = dict(prompt="a red cat running on the beach", height=LTX2_CALL["height"], width=LTX2_CALL["width"],
                  num_frames=LTX2_CALL["frames"], num_inference_steps=LTX2_CALL["steps"], max_sequence_length=32,
                  generator=generator if generator is not None else torch.Generator("cpu").manual_seed(0),
                  output_type="np")
    kwargs.update(overrides)
    return kwargs
