"""Tiny, offline, random-init diffusers pipelines of the cross-attention video families (text enters through
cross-attention, self-attention over the video tokens only): LTX-Video (text-to-video and image-to-video) and
Allegro.

Like `tiny_pipes`, every builder constructs the real diffusers 0.42 pipeline class from small configs with a
fixed seed, keeping each family's real patch size and VAE compression, so the canvas is computed as for the
full-size models:

    LTX-Video: VAE 32x spatial, 8x temporal, patch 1:  128 x 128, 17 frames -> canvas (3, 4, 4)
    Allegro:   VAE 8x spatial, 4x temporal, patch (1, 2, 2):  64 x 64, 9 frames -> canvas (3, 4, 4)

Allegro's VAE decodes only in tiles of 24 frames x 128 pixels (tiny `sample_size`; the real one 320 x 24
frames), so a decoded Allegro video needs >= 24 frames and >= 128 pixels: `CROSS_DECODE_SIZE`.
`CROSS_CALLS[kind]` holds the small call; `save_tiny_cross(kind, folder)` writes a diffusers pipeline folder.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tiny_pipes import _finish, _vocab_size, _word_level_tokenizer, random_image

CROSS_KINDS = ("ltx_video", "ltx_video_i2v", "allegro")
CROSS_CALLS = {
    "ltx_video": dict(height=128, width=128, frames=17, steps=2),
    "ltx_video_i2v": dict(height=128, width=128, frames=17, steps=2),
    "allegro": dict(height=64, width=64, frames=9, steps=2),
}
CROSS_CANVAS = (3, 4, 4)
CROSS_DECODE_SIZE = {"ltx_video": dict(height=128, width=256, frames=17, canvas=(3, 4, 8)),
                     "allegro": dict(height=128, width=128, frames=24, canvas=(6, 8, 8))}
TEXT_LEN = 16  # max_sequence_length of the tiny calls (cross-attention keys; never in the self-attention)


def _t5():
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    return T5EncoderModel(T5Config(
        vocab_size=_vocab_size(), d_model=32, d_kv=8, d_ff=32, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    ))


def tiny_ltx_pipeline(image_to_video: bool = False):
    """Tiny `LTXPipeline` (or `LTXImageToVideoPipeline`): 2 layers, 2 heads, head_dim 32, patch 1, VAE with the
    real 32x spatial / 8x temporal compression (patch 4 x three 2x scalings), T5 text encoder."""
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXImageToVideoPipeline,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )

    torch.manual_seed(0)
    transformer = LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=32,
        cross_attention_dim=64, num_layers=2, caption_channels=32,
    )
    torch.manual_seed(0)
    vae = AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, True, False),
        decoder_spatio_temporal_scaling=(True, True, True, False),
        decoder_inject_noise=(False, False, False, False, False), upsample_residual=(False, False, False, False),
        upsample_factor=(1, 1, 1, 1), timestep_conditioning=False, patch_size=4, patch_size_t=1,
        encoder_causal=True, decoder_causal=False,
    )
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    cls = LTXImageToVideoPipeline if image_to_video else LTXPipeline
    pipe = cls(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=_t5(),
               tokenizer=_word_level_tokenizer(bos=0), transformer=transformer)
    return _finish(pipe)


def tiny_allegro_pipeline():
    """Tiny `AllegroPipeline`: 2 layers, 2 heads, head_dim 48 (Allegro's RoPE splits it in 3 even parts), patch (1, 2, 2), VAE 8x spatial / 4x temporal."""
    from diffusers import AllegroPipeline, AllegroTransformer3DModel, AutoencoderKLAllegro
    from diffusers import EulerAncestralDiscreteScheduler

    torch.manual_seed(0)
    transformer = AllegroTransformer3DModel(
        num_attention_heads=2, attention_head_dim=48, in_channels=4, out_channels=4, num_layers=2,
        cross_attention_dim=96, sample_width=8, sample_height=8, sample_frames=9, caption_channels=32,
    )
    torch.manual_seed(0)
    vae = AutoencoderKLAllegro(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8),
        down_block_types=("AllegroDownBlock3D",) * 4, up_block_types=("AllegroUpBlock3D",) * 4,
        layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4, sample_size=128,
    )
    vae.enable_tiling()  # the pipeline cannot decode without it (diffusers' own example enables it)
    pipe = AllegroPipeline(tokenizer=_word_level_tokenizer(bos=0), text_encoder=_t5(), vae=vae,
                           transformer=transformer, scheduler=EulerAncestralDiscreteScheduler())
    return _finish(pipe)


_BUILDERS = {
    "ltx_video": tiny_ltx_pipeline,
    "ltx_video_i2v": lambda: tiny_ltx_pipeline(image_to_video=True),
    "allegro": tiny_allegro_pipeline,
}


def tiny_cross_pipeline(kind: str):
    """Build the tiny pipeline of `kind` (one of `CROSS_KINDS`)."""
    if kind not in _BUILDERS:
        raise ValueError(f"unknown tiny pipeline kind {kind!r}; choose from {', '.join(CROSS_KINDS)}")
    return _BUILDERS[kind]()


def save_tiny_cross(kind: str, folder) -> Path:
    """Write the tiny pipeline of `kind` as a diffusers pipeline folder (safetensors); returns the folder."""
    folder = Path(folder)
    tiny_cross_pipeline(kind).save_pretrained(folder, safe_serialization=True)
    return folder


def tiny_image(size: int = 128):
    """A fixed RGB test image (PIL) for image-to-video calls."""
    return random_image(size)


def tiny_cross_call_kwargs(kind: str, generator=None, **overrides) -> dict:
    """Keyword arguments for calling the tiny pipeline of `kind` directly (2 steps, CFG on)."""
    call = CROSS_CALLS[kind]
    kwargs = dict(
        prompt="a red cat running on the beach",
        height=call["height"], width=call["width"], num_frames=call["frames"],
        num_inference_steps=call["steps"],
        generator=generator if generator is not None else torch.Generator("cpu").manual_seed(0),
        output_type="np", max_sequence_length=TEXT_LEN,
    )
    if kind == "ltx_video_i2v":
        kwargs["image"] = tiny_image(call["height"])
    kwargs.update(overrides)
    return kwargs
