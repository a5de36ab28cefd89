"""Tiny, offline, random-init pipelines of the Wan lineage (diffusers 0.42), beside tests/tiny_pipes.py.

Kinds (all: 2 heads of 32, patch (1,2,2), umT5 text encoder, 4x temporal VAE compression):

- ``wan22_a14b``: `WanPipeline` with two experts (`transformer`, `transformer_2`, ``boundary_ratio`` 0.5);
  call with 4 steps: the first expert runs steps 0-1, the second 2-3 (FlowMatch shift 3).
- ``wan22_ti2v``: `WanPipeline` with ``expand_timesteps`` (Wan 2.2 TI2V 5B): 48-channel residual VAE with
  patch 2, i.e. 16x spatial compression: 128x128, 9 frames -> latent (3, 8, 8) -> canvas (3, 4, 4).
- ``wan_i2v``: `WanImageToVideoPipeline` (Wan 2.1 I2V layout): CLIP image tokens through ``image_embedder``
  and ``add_k_proj`` in the cross-attention; conditioning latents + mask on the channels (36 in).
- ``wan_vace``: `WanVACEPipeline`, 2 blocks + 1 VACE block.
- ``skyreels_v2``: `SkyReelsV2Pipeline`; ``skyreels_v2_df``: `SkyReelsV2DiffusionForcingPipeline`.
- ``chronoedit``: `ChronoEditPipeline` (image editing as image-to-video).

`TINY_WAN_CALL` sizes (64x64 for 8x VAEs, 128x128 for the 16x one) give a (3, 4, 4) canvas.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tiny_pipes import _finish, _vocab_size, _word_level_tokenizer

KINDS = ("wan22_a14b", "wan22_ti2v", "wan_i2v", "wan_vace", "skyreels_v2", "skyreels_v2_df", "chronoedit")
IMAGE_KINDS = ("wan_i2v", "chronoedit")
SIZE = {"wan22_ti2v": 128}  # pixels a side; 64 for the others
TINY_WAN_CALL = dict(frames=9, steps=2)
CLIP_DIM = 16


def stub_ftfy() -> None:
    """diffusers 0.42's image-to-video Wan/ChronoEdit pipelines call ``ftfy.fix_text`` even when ftfy is not
    installed (WanPipeline guards it); give those modules an identity stand-in (the tiny prompts are ASCII,
    which ftfy leaves unchanged) when ftfy is missing."""
    import importlib
    import types

    from diffusers.utils import is_ftfy_available

    if is_ftfy_available():
        return
    for name in ("diffusers.pipelines.wan.pipeline_wan_i2v", "diffusers.pipelines.chronoedit.pipeline_chronoedit",
                 "diffusers.pipelines.wan.pipeline_wan_vace", "diffusers.pipelines.skyreels_v2.pipeline_skyreels_v2",
                 "diffusers.pipelines.skyreels_v2.pipeline_skyreels_v2_diffusion_forcing"):
        module = importlib.import_module(name)
        if not hasattr(module, "ftfy"):
            module.ftfy = types.SimpleNamespace(fix_text=lambda text: text)


stub_ftfy()


def _text_encoder():
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    return UMT5EncoderModel(UMT5Config(
        vocab_size=_vocab_size(), d_model=32, d_kv=8, d_ff=32, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))


def _vae(z_dim: int = 16, residual: bool = False):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    if not residual:
        return AutoencoderKLWan(base_dim=3, z_dim=z_dim, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                temperal_downsample=[False, True, True])
    return AutoencoderKLWan(base_dim=8, decoder_base_dim=8, z_dim=z_dim, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True], is_residual=True, patch_size=2,
                            in_channels=12, out_channels=12,  # RGB x patch 2 x 2, as Wan2.2-TI2V-5B's VAE
                            scale_factor_spatial=16, latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim)


def _transformer_config(**extra) -> dict:
    config = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32, in_channels=16,
                  out_channels=16, text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True,
                  qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    config.update(extra)
    return config


def _image_encoder():
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    encoder = CLIPVisionModel(CLIPVisionConfig(hidden_size=CLIP_DIM, intermediate_size=32, num_hidden_layers=2,
                                               num_attention_heads=2, image_size=32, patch_size=8,
                                               projection_dim=CLIP_DIM))
    processor = CLIPImageProcessor(crop_size={"height": 32, "width": 32}, size={"shortest_edge": 32})
    return encoder, processor


def _schedulers():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(shift=3.0)


def tiny_wan22_a14b():
    from diffusers import WanPipeline, WanTransformer3DModel

    text_encoder, vae = _text_encoder(), _vae()
    torch.manual_seed(0)
    first = WanTransformer3DModel(**_transformer_config())
    second = WanTransformer3DModel(**_transformer_config())
    return _finish(WanPipeline(tokenizer=_word_level_tokenizer(bos=0), text_encoder=text_encoder, vae=vae,
                               scheduler=_schedulers(), transformer=first, transformer_2=second, boundary_ratio=0.5))


def tiny_wan22_ti2v():
    from diffusers import WanPipeline, WanTransformer3DModel

    text_encoder, vae = _text_encoder(), _vae(z_dim=48, residual=True)
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(**_transformer_config(in_channels=48, out_channels=48))
    return _finish(WanPipeline(tokenizer=_word_level_tokenizer(bos=0), text_encoder=text_encoder, vae=vae,
                               scheduler=_schedulers(), transformer=transformer, expand_timesteps=True))


def tiny_wan_i2v():
    from diffusers import WanImageToVideoPipeline, WanTransformer3DModel

    text_encoder, vae = _text_encoder(), _vae()
    image_encoder, image_processor = _image_encoder()
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(**_transformer_config(in_channels=36, image_dim=CLIP_DIM,
                                                              added_kv_proj_dim=64))
    return _finish(WanImageToVideoPipeline(tokenizer=_word_level_tokenizer(bos=0), text_encoder=text_encoder, vae=vae,
                                           scheduler=_schedulers(), image_processor=image_processor,
                                           image_encoder=image_encoder, transformer=transformer))


def tiny_wan_vace():
    from diffusers import WanVACEPipeline, WanVACETransformer3DModel

    text_encoder, vae = _text_encoder(), _vae()
    torch.manual_seed(0)
    transformer = WanVACETransformer3DModel(**_transformer_config(vace_layers=[0], vace_in_channels=96))
    return _finish(WanVACEPipeline(tokenizer=_word_level_tokenizer(bos=0), text_encoder=text_encoder, vae=vae,
                                   scheduler=_schedulers(), transformer=transformer))


def tiny_skyreels_v2(diffusion_forcing: bool = False):
    from diffusers import (SkyReelsV2DiffusionForcingPipeline, SkyReelsV2Pipeline, SkyReelsV2Transformer3DModel,
                           UniPCMultistepScheduler)

    text_encoder, vae = _text_encoder(), _vae()
    torch.manual_seed(0)
    transformer = SkyReelsV2Transformer3DModel(**_transformer_config(inject_sample_info=diffusion_forcing))
    cls = SkyReelsV2DiffusionForcingPipeline if diffusion_forcing else SkyReelsV2Pipeline
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    return _finish(cls(tokenizer=_word_level_tokenizer(bos=0), text_encoder=text_encoder, vae=vae,
                       scheduler=scheduler, transformer=transformer))


def tiny_chronoedit():
    from diffusers import ChronoEditPipeline, ChronoEditTransformer3DModel

    text_encoder, vae = _text_encoder(), _vae()
    image_encoder, image_processor = _image_encoder()
    torch.manual_seed(0)
    transformer = ChronoEditTransformer3DModel(**_transformer_config(in_channels=36, image_dim=CLIP_DIM,
                                                                     added_kv_proj_dim=64))
    return _finish(ChronoEditPipeline(tokenizer=_word_level_tokenizer(bos=0), text_encoder=text_encoder,
                                      image_encoder=image_encoder, image_processor=image_processor,
                                      transformer=transformer, vae=vae, scheduler=_schedulers()))


_BUILDERS = {
    "wan22_a14b": tiny_wan22_a14b,
    "wan22_ti2v": tiny_wan22_ti2v,
    "wan_i2v": tiny_wan_i2v,
    "wan_vace": tiny_wan_vace,
    "skyreels_v2": tiny_skyreels_v2,
    "skyreels_v2_df": lambda: tiny_skyreels_v2(diffusion_forcing=True),
    "chronoedit": tiny_chronoedit,
}


def tiny_pipeline(kind: str):
    if kind not in _BUILDERS:
        raise ValueError(f"unknown tiny Wan-lineage kind {kind!r}; choose from {', '.join(KINDS)}")
    return _BUILDERS[kind]()


def save_tiny(kind: str, folder) -> Path:
    folder = Path(folder)
    tiny_pipeline(kind).save_pretrained(folder, safe_serialization=True)
    return folder


def tiny_image(path=None, size: int = 64):
    """A small deterministic RGB test image (a gradient with a square); saved as PNG when `path` is given."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size]
    array = np.stack([x * 255 // size, y * 255 // size, np.full_like(x, 90)], axis=-1).astype(np.uint8)
    array[size // 4: size // 2, size // 4: size // 2] = (250, 30, 30)
    image = Image.fromarray(array)
    if path is not None:
        image.save(path)
    return image


def tiny_call_kwargs(kind: str, generator=None, **overrides) -> dict:
    """Direct call of the tiny pipeline of `kind` (2 steps, 9 frames, np output; an image where needed)."""
    size = SIZE.get(kind, 64)
    kwargs = dict(prompt="a red cat running on the beach", height=size, width=size,
                  num_frames=TINY_WAN_CALL["frames"], num_inference_steps=TINY_WAN_CALL["steps"],
                  generator=generator if generator is not None else torch.Generator("cpu").manual_seed(0),
                  output_type="np", max_sequence_length=16, guidance_scale=5.0)
    if kind in IMAGE_KINDS:
        kwargs["image"] = tiny_image(size=size)
    kwargs.update(overrides)
    return kwargs
