"""Tiny, offline, random-init Kandinsky 5 pipelines (diffusers 0.42), beside tests/tiny_pipes.py.

Kinds (1 text block + 2 visual blocks, 2 heads of 32 (axes 8 + 12 + 12), patch (1, 2, 2), HunyuanVideo VAE
with the real 4x temporal / 8x spatial compression, Qwen2.5-VL text model + CLIP pooled text):

- ``kandinsky5``: `Kandinsky5T2VPipeline`;
- ``kandinsky5_i2v``: `Kandinsky5I2VPipeline` (``visual_cond=True``: image latent in frame 0 plus a mask channel).

    64 x 64, 9 frames -> latent (3, 8, 8) -> canvas (3, 4, 4); image-to-video 17 frames -> canvas (5, 4, 4)

The pipeline's `tokenizer` is a Qwen2-VL processor in the release; it is only called as
``tokenizer(text=..., images=None, videos=None, ...)``, which the WordLevel tokenizer answers as well (the
Qwen2-VL processor itself needs torchvision, not a dependency here). With one ``<s>`` the fixed system template is
exactly the 128 tokens the pipeline crops (``prompt_template_encode_start_idx``), as with the real tokenizer, so
the cross-attention sees the prompt tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tiny_pipes import _finish, _vocab_size, _word_level_tokenizer, random_image

KANDINSKY5_KINDS = ("kandinsky5", "kandinsky5_i2v")
KANDINSKY5_CALLS = {
    "kandinsky5": dict(height=64, width=64, frames=9, steps=2, canvas=(3, 4, 4)),
    # the I2V pipeline renormalises latent frames 0-3 against frames 4-8 (NaN without any): 5 latent frames
    "kandinsky5_i2v": dict(height=64, width=64, frames=17, steps=2, canvas=(5, 4, 4)),
}


def _components():
    from transformers import CLIPTextConfig, CLIPTextModel, Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel

    from diffusers import AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler

    torch.manual_seed(0)
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        act_fn="silu", norm_num_groups=4, scaling_factor=0.476986, spatial_compression_ratio=8,
        temporal_compression_ratio=4, mid_block_add_attention=True,
    )
    torch.manual_seed(0)
    text_encoder = Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(
        vocab_size=_vocab_size(), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=1024,
        rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]},
    ))
    torch.manual_seed(0)
    text_encoder_2 = CLIPTextModel(CLIPTextConfig(
        vocab_size=_vocab_size(), hidden_size=8, intermediate_size=16, num_attention_heads=2, num_hidden_layers=2,
        max_position_embeddings=77, projection_dim=8, bos_token_id=3, eos_token_id=1, pad_token_id=0,
    ))
    return dict(vae=vae, text_encoder=text_encoder, tokenizer=_word_level_tokenizer(bos=1),
                text_encoder_2=text_encoder_2, tokenizer_2=_word_level_tokenizer(),
                scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0))


def _transformer(visual_cond: bool, **extra):
    from diffusers import Kandinsky5Transformer3DModel

    from diffusers.models.transformers.transformer_kandinsky import Kandinsky5Modulation

    torch.manual_seed(0)
    transformer = Kandinsky5Transformer3DModel(
        in_visual_dim=4, out_visual_dim=4, in_text_dim=16, in_text_dim2=8, time_dim=16, patch_size=(1, 2, 2),
        model_dim=64, ff_dim=64, num_text_blocks=1, num_visual_blocks=2, axes_dims=(8, 12, 12),
        visual_cond=visual_cond, **extra,
    )
    # diffusers zero-initialises the modulations (shift, scale, gate): every block would be the identity and the
    # attention would not reach the output. Random modulations make the tiny model use its attention.
    with torch.no_grad():
        for module in transformer.modules():
            if isinstance(module, Kandinsky5Modulation):
                module.out_layer.weight.normal_(std=0.2)
                module.out_layer.bias.normal_(std=0.2)
    return transformer


def tiny_kandinsky5_pipeline(image_to_video: bool = False, **transformer_config):
    """Tiny `Kandinsky5T2VPipeline` (or `Kandinsky5I2VPipeline`); `transformer_config` overrides the
    transformer's (e.g. ``attention_type="nabla"``)."""
    from diffusers import Kandinsky5I2VPipeline, Kandinsky5T2VPipeline

    cls = Kandinsky5I2VPipeline if image_to_video else Kandinsky5T2VPipeline
    pipe = cls(transformer=_transformer(visual_cond=image_to_video, **transformer_config), **_components())
    return _finish(pipe)


def tiny_kandinsky5(kind: str):
    """Build the tiny pipeline of `kind` (one of `KANDINSKY5_KINDS`)."""
    if kind not in KANDINSKY5_KINDS:
        raise ValueError(f"unknown tiny Kandinsky 5 kind {kind!r}; choose from {', '.join(KANDINSKY5_KINDS)}")
    return tiny_kandinsky5_pipeline(image_to_video=kind == "kandinsky5_i2v")


def save_tiny_kandinsky5(kind: str, folder) -> Path:
    """Write the tiny pipeline of `kind` as a diffusers pipeline folder (safetensors); returns the folder."""
    folder = Path(folder)
    tiny_kandinsky5(kind).save_pretrained(folder, safe_serialization=True)
    return folder



def kandinsky5_call_kwargs(kind: str, generator=None, **overrides) -> dict:
    """Keyword arguments for calling the tiny pipeline of `kind` directly (2 steps, CFG on, np output)."""
    call = KANDINSKY5_CALLS[kind]
    kwargs = dict(
        prompt="a red cat running on the beach",
        height=call["height"], width=call["width"], num_frames=call["frames"],
        num_inference_steps=call["steps"],
        generator=generator if generator is not None else torch.Generator("cpu").manual_seed(0),
        output_type="np", max_sequence_length=16,
    )
    if kind == "kandinsky5_i2v":
        kwargs["image"] = random_image(call["height"])
    kwargs.update(overrides)
    return kwargs
