"""Tiny, offline, random-init Cosmos pipelines (diffusers 0.42), beside tests/tiny_pipes.py.

Kinds (2 layers, 2 heads of 32, patch (1, 2, 2), real VAE compression, T5 text encoder):

- ``cosmos2_v2w``: `Cosmos2VideoToWorldPipeline` (Cosmos Predict 2.0 video-to-world; Wan VAE 4x temporal,
  8x spatial). Call it with ``image=`` (or ``video=``): the conditioning frame is the first latent frame.
- ``cosmos_t2w``: `CosmosTextToWorldPipeline` (Cosmos 1.0; `AutoencoderKLCosmos`, 8x temporal and spatial).
- ``cosmos25``: `Cosmos2_5_PredictBasePipeline` (Cosmos Predict 2.5) called as text-to-world: its image/video
  path converts the image with torchvision, which is not installed here (same VAE and canvas as ``cosmos2_v2w``).

    cosmos2_v2w, cosmos25: 64 x 64, 9 frames  -> latent (3, 8, 8) -> canvas (3, 4, 4)
    cosmos_t2w:            64 x 64, 17 frames -> latent (3, 8, 8) -> canvas (3, 4, 4)

The guardrail: every Cosmos pipeline builds the real `cosmos_guardrail.CosmosSafetyChecker` when it is given no
``safety_checker`` (and refuses to run with ``safety_checker=None``), which needs that package and its large
models. The tiny pipelines get `PassThroughSafetyChecker` instead, the stand-in diffusers' own Cosmos tests use:
it accepts every prompt and returns every video unchanged. A saved tiny folder names it in ``model_index.json``
as ``["tiny_pipes_cosmos", "PassThroughSafetyChecker"]``, so it loads wherever this module is importable (the
tests). The transformers are built with ``concat_padding_mask=False`` (the real ones use True, which needs
torchvision, not a dependency here); that changes the input channels only, not the attention.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.modeling_utils import ModelMixin

from tiny_pipes import _finish, _vocab_size, _word_level_tokenizer, random_image

COSMOS_KINDS = ("cosmos2_v2w", "cosmos_t2w", "cosmos25")
COSMOS_CALLS = {
    "cosmos2_v2w": dict(height=64, width=64, frames=9, steps=2),
    "cosmos25": dict(height=64, width=64, frames=9, steps=2),
    "cosmos_t2w": dict(height=64, width=64, frames=17, steps=2),
}
COSMOS_CANVAS = (3, 4, 4)
TEXT_LEN = 16  # max_sequence_length of the tiny calls (cross-attention keys only)


class PassThroughSafetyChecker(ModelMixin, ConfigMixin):
    """Test stand-in for the Cosmos guardrail: every prompt is safe, every video is returned unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("_device_tracker", torch.zeros(1))  # saved, so that the folder has weights to load

    def check_text_safety(self, prompt: str) -> bool:
        return True

    def check_video_safety(self, frames: np.ndarray) -> np.ndarray:
        return frames


def _t5():
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    return T5EncoderModel(T5Config(
        vocab_size=_vocab_size(), d_model=32, d_kv=8, d_ff=32, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    ))


def _transformer(in_channels: int, **extra):
    from diffusers import CosmosTransformer3DModel

    torch.manual_seed(0)
    return CosmosTransformer3DModel(
        in_channels=in_channels, out_channels=16, num_attention_heads=2, attention_head_dim=32, num_layers=2,
        mlp_ratio=2, text_embed_dim=32, adaln_lora_dim=8, max_size=(8, 32, 32), patch_size=(1, 2, 2),
        concat_padding_mask=False, **extra,
    )


def tiny_cosmos2_video2world_pipeline():
    """Tiny `Cosmos2VideoToWorldPipeline`: 17 input channels (16 latent + the condition mask), no learnable
    position embedding (as Cosmos Predict 2.0), Wan VAE, FlowMatch Euler with Karras sigmas."""
    from diffusers import AutoencoderKLWan, Cosmos2VideoToWorldPipeline, FlowMatchEulerDiscreteScheduler

    transformer = _transformer(17, rope_scale=(1.0, 3.0, 3.0), extra_pos_embed_type=None)
    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    pipe = Cosmos2VideoToWorldPipeline(
        text_encoder=_t5(), tokenizer=_word_level_tokenizer(bos=0), transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True), safety_checker=PassThroughSafetyChecker(),
    )
    return _finish(pipe)


def tiny_cosmos_text2world_pipeline():
    """Tiny `CosmosTextToWorldPipeline` (Cosmos 1.0): 16 input channels, learnable position embedding,
    `AutoencoderKLCosmos` with the real 8x temporal / 8x spatial compression, EDM Euler scheduler."""
    from diffusers import AutoencoderKLCosmos, CosmosTextToWorldPipeline, EDMEulerScheduler

    transformer = _transformer(16, extra_pos_embed_type="learnable")
    torch.manual_seed(0)
    vae = AutoencoderKLCosmos(
        in_channels=3, out_channels=3, latent_channels=16, encoder_block_out_channels=(8, 8, 8, 8),
        decode_block_out_channels=(8, 8, 8, 8), attention_resolutions=(8,), resolution=64, num_layers=1,
        patch_size=4, patch_type="haar", scaling_factor=1.0, spatial_compression_ratio=8,
        temporal_compression_ratio=8,
    )
    scheduler = EDMEulerScheduler(sigma_min=0.002, sigma_max=80, sigma_data=0.5, sigma_schedule="karras",
                                  num_train_timesteps=1000, prediction_type="epsilon", rho=7.0,
                                  final_sigmas_type="sigma_min")
    pipe = CosmosTextToWorldPipeline(
        text_encoder=_t5(), tokenizer=_word_level_tokenizer(bos=0), transformer=transformer, vae=vae,
        scheduler=scheduler, safety_checker=PassThroughSafetyChecker(),
    )
    return _finish(pipe)


def tiny_cosmos_pipeline(kind: str):
    """Build the tiny pipeline of `kind` (one of `COSMOS_KINDS`)."""
    if kind not in _BUILDERS:
        raise ValueError(f"unknown tiny Cosmos pipeline kind {kind!r}; choose from {', '.join(COSMOS_KINDS)}")
    return _BUILDERS[kind]()


def save_tiny_cosmos(kind: str, folder) -> Path:
    """Write the tiny pipeline of `kind` as a diffusers pipeline folder (safetensors); returns the folder."""
    folder = Path(folder)
    tiny_cosmos_pipeline(kind).save_pretrained(folder, safe_serialization=True)
    return folder



def cosmos_call_kwargs(kind: str, generator=None, **overrides) -> dict:
    """Keyword arguments for calling the tiny pipeline of `kind` directly (2 steps, CFG on, np output)."""
    call = COSMOS_CALLS[kind]
    kwargs = dict(
        prompt="a red cat running on the beach",
        height=call["height"], width=call["width"], num_frames=call["frames"],
        num_inference_steps=call["steps"],
        generator=generator if generator is not None else torch.Generator("cpu").manual_seed(0),
        output_type="np", max_sequence_length=TEXT_LEN,
    )
    if kind == "cosmos2_v2w":
        kwargs["image"] = random_image(call["height"])
    kwargs.update(overrides)
    return kwargs


def tiny_cosmos25_predict_pipeline():
    """Tiny `Cosmos2_5_PredictBasePipeline` (Cosmos Predict 2.5): the text is every Qwen2.5-VL layer's normalised
    hidden states concatenated (2 layers x 16) and projected by ``crossattn_proj``; Wan VAE; flow UniPC."""
    from transformers import Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel

    from diffusers import AutoencoderKLWan, Cosmos2_5_PredictBasePipeline, UniPCMultistepScheduler

    transformer = _transformer(17, rope_scale=(1.0, 3.0, 3.0), extra_pos_embed_type=None,
                               use_crossattn_projection=True, crossattn_proj_in_channels=32,
                               encoder_hidden_states_channels=32)
    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    torch.manual_seed(0)
    text_encoder = Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(
        vocab_size=_vocab_size(), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=1024,
        rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]},
    ))
    tokenizer = _word_level_tokenizer(bos=0)
    tokenizer.chat_template = ("{% for message in messages %}{% for part in message['content'] %}{{ part['text'] }} "
                               "{% endfor %}{% endfor %}")
    scheduler = UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=1.0)
    pipe = Cosmos2_5_PredictBasePipeline(text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
                                         vae=vae, scheduler=scheduler, safety_checker=PassThroughSafetyChecker())
    return _finish(pipe)


_BUILDERS = {"cosmos2_v2w": tiny_cosmos2_video2world_pipeline, "cosmos_t2w": tiny_cosmos_text2world_pipeline,
             "cosmos25": tiny_cosmos25_predict_pipeline}
