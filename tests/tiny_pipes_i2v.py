"""Tiny, offline, random-init image-to-video pipelines (diffusers 0.42), beside tests/tiny_pipes*.py.

Kinds (all 64 x 64 pixels, 9 frames -> token canvas (3, 4, 4)):

- ``hunyuan_i2v``: `HunyuanVideoImageToVideoPipeline`, ``latent_concat`` transformer (4 noisy + 4 image latent
  channels + 1 mask = 9 in; the "I2V-33ch" release layout), no guidance embedding. The text encoder is a tiny
  `LlavaForConditionalGeneration` (CLIP vision tower at 336 px, patch 14 -> the 576 image tokens of the default
  prompt template) behind a tokenizer whose template prefix is exactly the template's ``crop_start`` (103)
  tokens: the pipeline crops the system prompt as with the real Llama-3 tokenizer and joins every 2nd image
  state (288) before the 256 prompt tokens: 544 joint text tokens after the video, with a key-padding mask.
- ``hunyuan_i2v_token``: the same with a ``token_replace`` transformer (4 in; guidance-distilled, the
  "HunyuanVideo-I2V" release layout): the first latent frame is the clean image latent, every 4th image state.
- ``hunyuan_video15_i2v``: `HunyuanVideo15ImageToVideoPipeline`: image latent + mask on the channels (9 in),
  a tiny SigLIP vision model whose 16 image tokens join the text stream. Its size comes from the image's
  aspect ratio and the transformer's ``target_size`` (64 here: a square image gives 64 x 64).
- ``easyanimate_inpaint``: `EasyAnimateInpaintPipeline` (V5.1 inpaint layout: 4 latent + 1 mask + 4 masked
  video channels = 9 in, ``resize_inpaint_mask_directly``); image-to-video through ``video``/``mask_video``
  built by diffusers' ``get_image_to_video_latent`` (first frame kept, the rest generated).
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from pathlib import Path

import torch

from tiny_pipes import _finish, _vocab_size, _word_level_tokenizer, random_image

KINDS = ("hunyuan_i2v", "hunyuan_i2v_token", "hunyuan_video15_i2v", "easyanimate_inpaint")
FAMILY = {"hunyuan_i2v": "hunyuan_video", "hunyuan_i2v_token": "hunyuan_video",
          "hunyuan_video15_i2v": "hunyuan_video15", "easyanimate_inpaint": "easyanimate"}
PIPELINE = {"hunyuan_i2v": "HunyuanVideoImageToVideoPipeline", "hunyuan_i2v_token": "HunyuanVideoImageToVideoPipeline",
            "hunyuan_video15_i2v": "HunyuanVideo15ImageToVideoPipeline",
            "easyanimate_inpaint": "EasyAnimateInpaintPipeline"}
SIZE, FRAMES, CANVAS = 64, 9, (3, 4, 4)
# 576 image states every 2nd (latent_concat) / 4th (token_replace), + 256 prompt positions less the 4 cropped
# assistant-header tokens
HUNYUAN_I2V_TEXT_LEN = {"hunyuan_i2v": 576 // 2 + 252, "hunyuan_i2v_token": 576 // 4 + 252}


# ------------------------------------------------------------------------------------------ HunyuanVideo I2V
def _llava_tokenizer():
    """WordLevel tokenizer (tests/tiny_pipes.py) with ``<image>`` as one special token and newline runs as
    tokens (as Llama-3's ``\\n\\n``), 2 BOS: the I2V template prefix is then the template's ``crop_start`` (103)
    tokens, as with the real tokenizer, and ``<image>`` sits at position 6 (5 with Llama-3)."""
    from tokenizers import Regex, pre_tokenizers

    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video_image2video import DEFAULT_PROMPT_TEMPLATE

    tokenizer = _word_level_tokenizer(bos=2)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Split(
        Regex(r"\w+|[^\w\s]+|\n+"), behavior="removed", invert=True)
    template = DEFAULT_PROMPT_TEMPLATE["template"]
    prefix = len(tokenizer(template[: template.index("{}")]).input_ids) - 1  # without </s>
    assert prefix == DEFAULT_PROMPT_TEMPLATE["crop_start"], prefix
    return tokenizer


def _llava(image_token_index: int):
    """Tiny `LlavaForConditionalGeneration`: CLIP vision (336 px, patch 14: 576 patch features, 8 wide), Llama
    text model (3 layers, 16 wide; the pipeline reads the 3rd-last hidden state)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(hidden_size=8, intermediate_size=16, num_attention_heads=2, num_hidden_layers=2,
                              image_size=336, patch_size=14, projection_dim=8)
    text = LlamaConfig(vocab_size=_vocab_size(), hidden_size=16, intermediate_size=32, num_attention_heads=4,
                       num_key_value_heads=4, num_hidden_layers=3, max_position_embeddings=2048, bos_token_id=3,
                       eos_token_id=1, pad_token_id=0)
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text, pad_token_id=0,
                                                     image_token_index=image_token_index))


def tiny_hunyuan_i2v_pipeline(image_condition_type: str = "latent_concat"):
    from transformers import CLIPImageProcessor, CLIPTextConfig, CLIPTextModel

    from diffusers import (AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler,
                           HunyuanVideoImageToVideoPipeline, HunyuanVideoTransformer3DModel)

    tokenizer = _llava_tokenizer()
    text_encoder = _llava(tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=9 if image_condition_type == "latent_concat" else 4, out_channels=4, num_attention_heads=2,
        attention_head_dim=32, num_layers=1, num_single_layers=1, num_refiner_layers=1, mlp_ratio=2.0,
        patch_size=2, patch_size_t=1, guidance_embeds=image_condition_type == "token_replace", text_embed_dim=16,
        pooled_projection_dim=8, rope_axes_dim=(8, 12, 12), image_condition_type=image_condition_type)
    torch.manual_seed(0)
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        act_fn="silu", norm_num_groups=4, scaling_factor=0.476986, spatial_compression_ratio=8,
        temporal_compression_ratio=4, mid_block_add_attention=True)
    torch.manual_seed(0)
    text_encoder_2 = CLIPTextModel(CLIPTextConfig(
        vocab_size=_vocab_size(), hidden_size=8, intermediate_size=16, num_attention_heads=2, num_hidden_layers=2,
        max_position_embeddings=77, projection_dim=8, bos_token_id=3, eos_token_id=1, pad_token_id=0))
    image_processor = CLIPImageProcessor(crop_size={"height": 336, "width": 336}, size={"shortest_edge": 336})
    pipe = HunyuanVideoImageToVideoPipeline(
        text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=text_encoder_2,
        tokenizer_2=_word_level_tokenizer(), image_processor=image_processor)
    return _finish(pipe)


# ------------------------------------------------------------------------------------------ HunyuanVideo 1.5 I2V
HUNYUAN15_I2V_IMAGE_TOKENS = 16  # SigLIP 32 px / patch 8, squared
HUNYUAN15_I2V_TEXT_LEN = 24 + 8 + HUNYUAN15_I2V_IMAGE_TOKENS  # shortened Qwen + ByT5 (tiny_pipes_joint) + image
HUNYUAN15_I2V_TARGET = 64  # transformer.config.target_size: the pixel size bucket base (640 / 960 in the releases)


def tiny_hunyuan_video15_i2v_pipeline(short: bool = True):
    """The tiny HunyuanVideo 1.5 pipeline's components (tests/tiny_pipes_joint.py) with an ``i2v`` transformer
    (target size 64) and a tiny SigLIP vision model (32 px, patch 8: 16 image tokens, 16 wide = the
    transformer's ``image_embed_dim``). `short`: the shortened text lengths of tests/tiny_pipes_joint.py."""
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    from diffusers import HunyuanVideo15ImageToVideoPipeline, HunyuanVideo15Transformer3DModel

    from tiny_pipes_joint import shorten_hunyuan15_text, tiny_hunyuan_video15_pipeline

    t2v = tiny_hunyuan_video15_pipeline(short=False)
    torch.manual_seed(0)
    transformer = HunyuanVideo15Transformer3DModel(
        **{**t2v.transformer.config, "task_type": "i2v", "target_size": HUNYUAN15_I2V_TARGET})
    torch.manual_seed(0)
    image_encoder = SiglipVisionModel(SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                                         num_attention_heads=2, image_size=32, patch_size=8))
    feature_extractor = SiglipImageProcessor(size={"height": 32, "width": 32})
    pipe = HunyuanVideo15ImageToVideoPipeline(
        text_encoder=t2v.text_encoder, tokenizer=t2v.tokenizer, transformer=transformer, vae=t2v.vae,
        scheduler=t2v.scheduler, text_encoder_2=t2v.text_encoder_2, tokenizer_2=t2v.tokenizer_2, guider=t2v.guider,
        image_encoder=image_encoder, feature_extractor=feature_extractor)
    return _finish(shorten_hunyuan15_text(pipe) if short else pipe)


@contextmanager
def short_hunyuan15_i2v_text():
    """Every `HunyuanVideo15ImageToVideoPipeline` built inside (e.g. by `load_model` in the CLI) gets the
    shortened text lengths of tests/tiny_pipes_joint.py."""
    from diffusers import HunyuanVideo15ImageToVideoPipeline

    from tiny_pipes_joint import shorten_hunyuan15_text

    original = HunyuanVideo15ImageToVideoPipeline.__init__

    @functools.wraps(original)  # from_pretrained reads the signature
    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        shorten_hunyuan15_text(self)

    HunyuanVideo15ImageToVideoPipeline.__init__ = init
    try:
        yield
    finally:
        HunyuanVideo15ImageToVideoPipeline.__init__ = original


# ------------------------------------------------------------------------------------------ EasyAnimate inpaint
def tiny_easyanimate_inpaint_pipeline():
    """The tiny EasyAnimate pipeline's components (tests/tiny_pipes_joint.py) with a 9-channel inpaint
    transformer (4 noisy + 1 mask + 4 masked-video latent channels, ``resize_inpaint_mask_directly``: the
    EasyAnimate V5.1 InP layout, 16 + 1 + 16 = 33 in the release)."""
    from diffusers import EasyAnimateInpaintPipeline, EasyAnimateTransformer3DModel

    from tiny_pipes_joint import tiny_easyanimate_pipeline

    t2v = tiny_easyanimate_pipeline()
    torch.manual_seed(0)
    transformer = EasyAnimateTransformer3DModel(**{**t2v.transformer.config, "in_channels": 9, "out_channels": 4})
    # The inpaint call reads ``vae.config.cache_mag_vae``, which is no AutoencoderKLMagvit argument: the released
    # VAE configs carry it as an extra key (kept by from_pretrained); True as for the V5.1 Magvit VAE.
    t2v.vae.register_to_config(cache_mag_vae=True)
    pipe = EasyAnimateInpaintPipeline(vae=t2v.vae, text_encoder=t2v.text_encoder, tokenizer=t2v.tokenizer,
                                      transformer=transformer, scheduler=t2v.scheduler)
    return _finish(pipe)


_BUILDERS = {
    "easyanimate_inpaint": tiny_easyanimate_inpaint_pipeline,
    "hunyuan_video15_i2v": tiny_hunyuan_video15_i2v_pipeline,
    "hunyuan_i2v": tiny_hunyuan_i2v_pipeline,
    "hunyuan_i2v_token": lambda: tiny_hunyuan_i2v_pipeline("token_replace"),
}


def tiny_pipeline(kind: str):
    if kind not in _BUILDERS:
        raise ValueError(f"unknown tiny image-to-video kind {kind!r}; choose from {', '.join(KINDS)}")
    return _BUILDERS[kind]()


def save_tiny(kind: str, folder) -> Path:
    folder = Path(folder)
    tiny_pipeline(kind).save_pretrained(folder, safe_serialization=True)
    return folder


def tiny_image(path=None, size: int = SIZE, seed: int = 0):
    """A deterministic random RGB image (PNG at `path` when given)."""
    return random_image(size, seed=seed, path=path)
