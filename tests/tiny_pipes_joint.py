"""Tiny, offline, random-init pipelines of the joint-attention video families (text tokens in the same
attention as the video tokens): Mochi, EasyAnimate, HunyuanVideo 1.5, CogVideoX image-to-video, and the
HunyuanVideo image-to-video transformer variants. Built like tests/tiny_pipes.py: the real diffusers 0.42
pipeline classes from small configs with fixed seeds, the real patch sizes and VAE compression factors,
nothing downloaded; `save_tiny_joint(kind, folder)` writes a folder `load_model` reads.

Canvases of `JOINT_CALL` (64 x 64 pixels): Mochi (13 frames, VAE 6x/8x, patch 2) -> latent (3, 8, 8) ->
canvas (3, 4, 4); EasyAnimate (9 frames, 4x/8x, patch 2) -> (3, 4, 4); HunyuanVideo 1.5 (9 frames, 4x/16x,
patch 1) -> (3, 4, 4); CogVideoX I2V (9 frames, 4x/8x, patch 2) -> (3, 4, 4).
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from pathlib import Path

import torch

from tiny_pipes import _finish, _vocab_size, _word_level_tokenizer, random_image

JOINT_KINDS = ("mochi", "easyanimate", "hunyuan_video15")
JOINT_FRAMES = {"mochi": 13, "easyanimate": 9, "hunyuan_video15": 9, "cogvideox_i2v": 9}
JOINT_TEXT_LEN = {"mochi": 16}
JOINT_CALL = dict(height=64, width=64, steps=2)


def _t5(d_model=32):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    return T5EncoderModel(
        T5Config(vocab_size=_vocab_size(), d_model=d_model, d_kv=8, d_ff=32, num_layers=2, num_heads=4,
                 relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    )


def tiny_mochi_pipeline():
    """Tiny `MochiPipeline`: 2 layers (the last one ``context_pre_only``), 2 heads of 32, patch 2, T5 text
    (16 tokens: ``max_sequence_length`` of the transformer), Mochi VAE with the real 6x temporal and 8x
    spatial expansion."""
    from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiPipeline, MochiTransformer3DModel

    torch.manual_seed(0)
    transformer = MochiTransformer3DModel(
        patch_size=2, num_attention_heads=2, attention_head_dim=32, num_layers=2, pooled_projection_dim=16,
        in_channels=12, text_embed_dim=32, time_embed_dim=8, max_sequence_length=JOINT_TEXT_LEN["mochi"],
    )
    torch.manual_seed(0)
    vae = AutoencoderKLMochi(
        latent_channels=12,  # MochiPipeline hard-codes 12 latent channels
        out_channels=3,
        encoder_block_out_channels=(32, 32, 32, 32),  # GroupNorm of 32 groups
        decoder_block_out_channels=(32, 32, 32, 32),
        layers_per_block=(1, 1, 1, 1, 1),
        add_attention_block=(False,) * 5,
        latents_mean=(0.0,) * 12,
        latents_std=(1.0,) * 12,
    )
    pipe = MochiPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=_t5(),
        tokenizer=_word_level_tokenizer(bos=0),
        transformer=transformer,
    )
    return _finish(pipe)


def _chat_tokenizer():
    """The WordLevel tokenizer with a minimal chat template (EasyAnimate formats prompts as chat turns)."""
    tokenizer = _word_level_tokenizer(bos=0)
    tokenizer.chat_template = (
        "{% for message in messages %}{% for part in message['content'] %}{{ part['text'] }}{% endfor %}"
        "{% endfor %}"
    )
    return tokenizer


def tiny_easyanimate_pipeline():
    """Tiny `EasyAnimatePipeline` (V5.1 layout: MMDiT blocks, 3D RoPE, patch 2): 2 layers (the first MMDiT,
    the second concatenating the text), 2 heads of 32, a BERT text encoder (the pipeline's non-Qwen option),
    Magvit VAE 4x/8x. Text: the pipeline's `max_sequence_length` (default 256) tokens, no mask."""
    from transformers import BertConfig, BertModel

    from diffusers import (
        AutoencoderKLMagvit,
        EasyAnimatePipeline,
        EasyAnimateTransformer3DModel,
        FlowMatchEulerDiscreteScheduler,
    )

    torch.manual_seed(0)
    transformer = EasyAnimateTransformer3DModel(
        num_attention_heads=2, attention_head_dim=32, in_channels=4, out_channels=4, patch_size=2,
        sample_width=8, sample_height=8, num_layers=2, mmdit_layers=1, time_embed_dim=16, text_embed_dim=16,
        add_norm_text_encoder=True,
    )
    torch.manual_seed(0)
    vae = AutoencoderKLMagvit(
        latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=2,
        spatial_group_norm=False,
    )
    torch.manual_seed(0)
    text_encoder = BertModel(BertConfig(vocab_size=_vocab_size(), hidden_size=16, num_hidden_layers=2,
                                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=512))
    pipe = EasyAnimatePipeline(vae=vae, text_encoder=text_encoder, tokenizer=_chat_tokenizer(),
                               transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler())
    return _finish(pipe)


HUNYUAN15_CROP_START = 108  # HunyuanVideo15Pipeline.prompt_template_encode_start_idx
HUNYUAN15_SHORT = dict(tokenizer_max_length=24, tokenizer_2_max_length=8, vision_num_semantic_tokens=8)
HUNYUAN15_SHORT_TEXT_LEN = sum(HUNYUAN15_SHORT.values())  # 40 joint text tokens instead of 1000 + 256 + 729


def shorten_hunyuan15_text(pipe):
    """Shrink the HunyuanVideo 1.5 pipeline's fixed text lengths (Qwen 1000, ByT5 256, SigLIP 729: plain
    attributes set in ``__init__``) to `HUNYUAN15_SHORT`: same layout, 40 text tokens; the tiny transformer
    otherwise spends seconds in its fixed 2048-wide ByT5 projection. Returns `pipe`."""
    for name, value in HUNYUAN15_SHORT.items():
        setattr(pipe, name, value)
    return pipe


@contextmanager
def short_hunyuan15_text():
    """Every `HunyuanVideo15Pipeline` built inside (e.g. by `load_model` in the CLI) gets `HUNYUAN15_SHORT`."""
    from diffusers import HunyuanVideo15Pipeline

    original = HunyuanVideo15Pipeline.__init__

    @functools.wraps(original)  # from_pretrained reads the signature
    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        shorten_hunyuan15_text(self)

    HunyuanVideo15Pipeline.__init__ = init
    try:
        yield
    finally:
        HunyuanVideo15Pipeline.__init__ = original


def tiny_hunyuan_video15_pipeline(short: bool = True):
    """Tiny `HunyuanVideo15Pipeline`: 2 dual-stream layers, 2 heads of 32, patch 1, a Qwen2.5-VL text model
    (16 wide) behind a chat-template tokenizer whose system turn is exactly the 108 tokens the pipeline crops
    (so the prompt tokens survive, as with the real tokenizer), a ByT5 glyph encoder (T5, 32 wide), the
    16x/4x HunyuanVideo 1.5 VAE. `short=True`: `shorten_hunyuan15_text` (40 text tokens); False: the
    release's 1985 (nearly all padding)."""
    from transformers import ByT5Tokenizer, Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel

    from diffusers import (
        AutoencoderKLHunyuanVideo15,
        ClassifierFreeGuidance,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideo15Pipeline,
        HunyuanVideo15Transformer3DModel,
    )

    torch.manual_seed(0)
    transformer = HunyuanVideo15Transformer3DModel(
        in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=32, num_layers=2,
        num_refiner_layers=1, patch_size=1, patch_size_t=1, text_embed_dim=16, text_embed_2_dim=32,
        image_embed_dim=16, rope_axes_dim=(8, 12, 12), task_type="t2v",
    )
    torch.manual_seed(0)
    vae = AutoencoderKLHunyuanVideo15(latent_channels=4, block_out_channels=(8, 8, 8, 8, 8), layers_per_block=1,
                                      spatial_compression_ratio=16, temporal_compression_ratio=4)
    torch.manual_seed(0)
    text_encoder = Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(
        vocab_size=_vocab_size(), hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=2048, rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]},
    ))
    tokenizer = _word_level_tokenizer(bos=0)
    tokenizer.chat_template = (
        "{% for message in messages %}{% if message['role'] == 'system' %}{{ 'system ' * "
        + str(HUNYUAN15_CROP_START) + " }}{% else %}{{ message['content'] }}{% endif %}{% endfor %}"
    )
    byt5 = ByT5Tokenizer()
    torch.manual_seed(0)
    from transformers import T5Config, T5EncoderModel

    text_encoder_2 = T5EncoderModel(T5Config(vocab_size=len(byt5), d_model=32, d_kv=8, d_ff=32, num_layers=1,
                                             num_heads=4, relative_attention_num_buckets=8, pad_token_id=0,
                                             eos_token_id=1, decoder_start_token_id=0))
    pipe = HunyuanVideo15Pipeline(
        text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=text_encoder_2, tokenizer_2=byt5,
        guider=ClassifierFreeGuidance(guidance_scale=6.0),
    )
    assert pipe.prompt_template_encode_start_idx == HUNYUAN15_CROP_START
    return _finish(shorten_hunyuan15_text(pipe) if short else pipe)


_BUILDERS = {
    "cogvideox_i2v": lambda: tiny_cogvideox_i2v_pipeline(),  # defined below
    "hunyuan_video15": tiny_hunyuan_video15_pipeline,
    "mochi": tiny_mochi_pipeline,
    "easyanimate": tiny_easyanimate_pipeline,
}


def tiny_cogvideox_i2v_pipeline():
    """Tiny `CogVideoXImageToVideoPipeline`: the tiny CogVideoX pipeline's components (tests/tiny_pipes.py)
    with a transformer of 8 input channels (4 noisy + 4 image latent channels, concatenated by the
    pipeline) and 4 output channels. Call it with ``image=tiny_image()``."""
    from diffusers import CogVideoXImageToVideoPipeline, CogVideoXTransformer3DModel

    from tiny_pipes import TINY_COGVIDEOX_TEXT_LEN, tiny_cogvideox_pipeline

    t2v = tiny_cogvideox_pipeline()
    torch.manual_seed(0)
    transformer = CogVideoXTransformer3DModel(
        **{**t2v.transformer.config, "in_channels": 8, "out_channels": 4,
           "max_text_seq_length": TINY_COGVIDEOX_TEXT_LEN}
    )
    pipe = CogVideoXImageToVideoPipeline(tokenizer=t2v.tokenizer, text_encoder=t2v.text_encoder, vae=t2v.vae,
                                         transformer=transformer, scheduler=t2v.scheduler)
    return _finish(pipe)


def tiny_image(height: int = 64, width: int = 64, seed: int = 0):
    """A deterministic random RGB PIL image (the conditioning frame of the image-to-video pipelines)."""
    return random_image(height, width, seed)


def tiny_hunyuan_i2v_transformer(image_condition_type: str):
    """Tiny `HunyuanVideoTransformer3DModel` of the HunyuanVideo-I2V layout: ``latent_concat`` (2 x 4 + 1 = 9
    input channels: noisy latents, image latent, mask) or ``token_replace`` (4 channels; first-frame tokens
    modulated with the t=0 embedding), 1 dual + 1 single stream layer, 2 heads of 32."""
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(0)
    return HunyuanVideoTransformer3DModel(
        in_channels=9 if image_condition_type == "latent_concat" else 4, out_channels=4, num_attention_heads=2,
        attention_head_dim=32, num_layers=1, num_single_layers=1, num_refiner_layers=1, patch_size=2,
        patch_size_t=1, guidance_embeds=True, text_embed_dim=16, pooled_projection_dim=8,
        rope_axes_dim=(8, 12, 12), image_condition_type=image_condition_type,
    ).eval().requires_grad_(False)


def tiny_joint_pipeline(kind: str):
    if kind not in _BUILDERS:
        raise ValueError(f"unknown tiny joint pipeline kind {kind!r}; choose from {', '.join(_BUILDERS)}")
    return _BUILDERS[kind]()


def save_tiny_joint(kind: str, folder) -> Path:
    """Write the tiny pipeline of `kind` as a diffusers pipeline folder (safetensors); returns the folder."""
    folder = Path(folder)
    tiny_joint_pipeline(kind).save_pretrained(folder, safe_serialization=True)
    return folder


def joint_call_kwargs(kind: str, generator=None, **overrides) -> dict:
    """Keyword arguments for calling the tiny pipeline of `kind` directly (64 x 64, 2 steps, np output)."""
    kwargs = dict(
        prompt="a red cat running on the beach",
        height=JOINT_CALL["height"],
        width=JOINT_CALL["width"],
        num_frames=JOINT_FRAMES[kind],
        num_inference_steps=JOINT_CALL["steps"],
        generator=generator if generator is not None else torch.Generator("cpu").manual_seed(0),
        output_type="np",
    )
    if kind == "cogvideox_i2v":
        from tiny_pipes import TINY_COGVIDEOX_TEXT_LEN

        kwargs.update(image=tiny_image(), max_sequence_length=TINY_COGVIDEOX_TEXT_LEN, guidance_scale=6.0)
    if kind in JOINT_TEXT_LEN:
        kwargs["max_sequence_length"] = JOINT_TEXT_LEN[kind]
    kwargs.update(overrides)
    return kwargs
