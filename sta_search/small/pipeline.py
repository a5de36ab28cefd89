"""`SmallVideoPipeline`: tiny's pixel-space WanPipeline look-alike with the `small` grammar's tokenizer
and its longer captions (`MAX_LENGTH` tokens). Everything else is `TinyVideoPipeline`."""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoTransformer3DModel, WanTransformer3DModel

from sta_search.tiny.pipeline import TinyVideoPipeline
from sta_search.tiny.text import TinyTextEncoder

from .text import MAX_LENGTH, encode_words, vocab_map

# The shipped architecture (bench/train_small.py trains exactly this): 9.1 M parameters, 4 heads of
# dimension 64, patch 1x4x4 on RGB pixels; 16 frames x 96 x 160 px -> canvas 16 x 24 x 40 = 15,360 tokens.
TRANSFORMER_CONFIG = dict(
    patch_size=(1, 4, 4),
    num_attention_heads=4,
    attention_head_dim=64,
    in_channels=3,
    out_channels=3,
    text_dim=192,
    freq_dim=256,
    ffn_dim=1024,
    num_layers=8,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    rope_max_seq_len=256,
)
# The same width, canvas and patch as a `HunyuanVideoTransformer3DModel` (bench/train_small.py --family
# hunyuan_video; bench/NOTES.md session 17): 2 dual-stream + 6 single-stream blocks, 12.3 M parameters. Its text
# joins the video tokens in attention and, pooled, modulates every norm, where Wan's only enters by cross-attention.
HUNYUAN_TRANSFORMER_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    num_attention_heads=4,
    attention_head_dim=64,
    num_layers=2,
    num_single_layers=6,
    num_refiner_layers=1,
    mlp_ratio=4.0,
    patch_size=4,
    patch_size_t=1,
    qk_norm="rms_norm",
    guidance_embeds=False,
    text_embed_dim=192,
    pooled_projection_dim=192,
    rope_axes_dim=(16, 24, 24),
)
# family -> (transformer class, its config, the config keys that take the text encoder's width)
FAMILIES = {"wan": (WanTransformer3DModel, TRANSFORMER_CONFIG, ("text_dim",)),
            "hunyuan_video": (HunyuanVideoTransformer3DModel, HUNYUAN_TRANSFORMER_CONFIG,
                              ("text_embed_dim", "pooled_projection_dim"))}
TEXT_ENCODER_CONFIG = dict(dim=192, num_layers=2, num_heads=4, max_length=MAX_LENGTH)
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=3.0)


def build_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """The scheduler `small` is trained and sampled with (`SCHEDULER_CONFIG`)."""
    return FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG)


def build_components(transformer_overrides: dict | None = None, text_overrides: dict | None = None,
                     family: str = "wan") -> dict:
    """Freshly initialised transformer (``family``: a key of `FAMILIES`), text encoder and scheduler (random
    weights, current torch seed)."""
    text_config = {**TEXT_ENCODER_CONFIG, **(text_overrides or {})}
    transformer_class, config, text_keys = FAMILIES[family]
    transformer_config = {**config, **dict.fromkeys(text_keys, text_config["dim"]), **(transformer_overrides or {})}
    return dict(
        transformer=transformer_class(**transformer_config),
        text_encoder=TinyTextEncoder(vocab_size=len(vocab_map()), **text_config),
        scheduler=build_scheduler(),
    )


class SmallVideoPipeline(TinyVideoPipeline):
    """`TinyVideoPipeline` with ``max_sequence_length`` defaulting to the small grammar's `MAX_LENGTH`."""

    def _tokenize(self, texts: list[str], max_sequence_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.tokenizer is None:  # training machines without transformers: the same ids
            ids = encode_words(list(texts), max_sequence_length)
            return ids, (ids != 0).long()
        return super()._tokenize(texts, max_sequence_length)

    def encode_prompt(self, *args, **kwargs):
        if len(args) < 5:
            kwargs.setdefault("max_sequence_length", MAX_LENGTH)
        return super().encode_prompt(*args, **kwargs)

    def __call__(self, *args, **kwargs):
        kwargs.setdefault("max_sequence_length", MAX_LENGTH)
        return super().__call__(*args, **kwargs)
