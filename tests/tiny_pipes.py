"""Tiny, offline, random-init diffusers video pipelines for tests.

Every builder constructs the real diffusers 0.42 pipeline class (`WanPipeline`, `HunyuanVideoPipeline`,
`CogVideoXPipeline`) from small configs with a fixed seed; nothing is downloaded. The tokenizers are
`tokenizers` WordLevel tokenizers wrapped in `PreTrainedTokenizerFast`, so they save and load offline.

The transformers keep the real patch sizes of each family (Wan (1,2,2), HunyuanVideo 2 x 1, CogVideoX 2),
and every VAE compresses 8x spatially and 4x temporally like the real ones, so the token canvas is computed
exactly as for the full-size models:

    height=width=64, frames=9  ->  latent (3, 8, 8)  ->  canvas (3, 4, 4) = 48 video tokens

`TINY_CALL` holds such a small call. Text tokens: HunyuanVideo has `max_sequence_length` joint text tokens
(default 256; pass a smaller one to speed tests up), CogVideoX `max_sequence_length` (default 226;
`TINY_COGVIDEOX_TEXT_LEN` = 16 is what the tiny transformer was configured for), Wan none (cross-attention).

`save_tiny(kind, folder)` writes a diffusers pipeline folder (`model_index.json` + components) that
`DiffusionPipeline.from_pretrained(folder)` and `sta_search.models.load_model(folder, ...)` load offline.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

# Small call that runs in well under a second per step on CPU for all three families.
TINY_CALL = dict(height=64, width=64, frames=9, steps=2)
TINY_COGVIDEOX_TEXT_LEN = 16
KINDS = ("wan", "wan22", "hunyuan_video", "cogvideox")
EXTRA_KINDS = ("cogvideox15",)  # variants built on request only

_SPECIALS = ("<pad>", "</s>", "<unk>", "<s>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
_WORDS = (
    "a an the of in on at to and with by from for over under into through is are was be this that it its "
    "cat dog bird fish horse monkey person man woman child people crowd car train boat plane city street "
    "forest river ocean beach mountain sky cloud sun moon rain snow fire water tree flower grass field road "
    "house room window door table light dark red green blue yellow white black orange purple golden bright "
    "slow fast running walking flying dancing jumping swimming driving falling rising spinning moving "
    "camera pan zoom tilt tracking shot close up wide aerial view scene video frame night day morning evening "
    "sign text letters word neon reflection shadow glass metal wood stone sand wave wind smoke dust "
    "big small tall long short old young happy calm busy quiet loud beautiful cinematic realistic detailed"
)


def _word_level_tokenizer(bos: int = 1):
    """A deterministic WordLevel tokenizer (lower-cased, whitespace + punctuation split, `</s>` appended)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

    template_words = re.findall(r"\w+|[^\w\s]+", DEFAULT_PROMPT_TEMPLATE["template"].lower())
    letters = list("abcdefghijklmnopqrstuvwxyz0123456789.,:;!?'\"-()")
    words = sorted(set(_WORDS.split()) | set(template_words) | set(letters) - set(_SPECIALS))
    vocab = {token: i for i, token in enumerate(_SPECIALS)}
    for word in words:
        vocab.setdefault(word, len(vocab))

    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()  # splits like r"\w+|[^\w\s]+"
    tokenizer.add_special_tokens(list(_SPECIALS))
    prefix = "<s> " * bos
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{prefix}$A </s>", special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        bos_token="<s>",
        model_max_length=4096,
        padding_side="right",
    )


def _vocab_size() -> int:
    return 512


def _llama_tokenizer():
    """Llama stand-in whose BOS run makes HunyuanVideo's default template prefix exactly `crop_start` (95)
    tokens long, as with the real Llama-3 tokenizer: the pipeline crops the system prompt away and the text
    key-padding mask then marks the prompt tokens (+ `<|eot_id|>`, `</s>`) only."""
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

    template = DEFAULT_PROMPT_TEMPLATE["template"]
    prefix_len = len(_word_level_tokenizer(bos=0)(template[: template.index("{}")]).input_ids) - 1  # no </s>
    crop_start = DEFAULT_PROMPT_TEMPLATE["crop_start"]
    assert 0 <= crop_start - prefix_len <= 32, prefix_len
    return _word_level_tokenizer(bos=crop_start - prefix_len)


def tiny_wan_pipeline(two_experts: bool = False):
    """Tiny `WanPipeline` (Wan 2.1 layout; `two_experts=True` adds `transformer_2` and a boundary ratio of
    0.5 like Wan 2.2 A14B, so a 2+ step call uses both experts). 2 layers, 2 heads, head_dim 32."""
    from transformers import UMT5Config, UMT5EncoderModel

    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    def transformer():
        return WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=32,
            in_channels=16,
            out_channels=16,
            text_dim=32,
            freq_dim=32,
            ffn_dim=32,
            num_layers=2,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32,
        )

    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    torch.manual_seed(0)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=_vocab_size(),
            d_model=32,
            d_kv=8,
            d_ff=32,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )
    torch.manual_seed(0)
    first = transformer()
    second = transformer() if two_experts else None
    pipe = WanPipeline(
        tokenizer=_word_level_tokenizer(bos=0),
        text_encoder=text_encoder,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        transformer=first,
        transformer_2=second,
        boundary_ratio=0.5 if two_experts else None,
    )
    return _finish(pipe)


def tiny_hunyuan_pipeline():
    """Tiny `HunyuanVideoPipeline`: 1 dual-stream + 1 single-stream block (+ 1 token-refiner block),
    2 heads, head_dim 32, patch 2 x 1, Llama (3 layers) + CLIP text encoders, guidance-distilled."""
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )

    torch.manual_seed(0)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=32,
        num_layers=1,
        num_single_layers=1,
        num_refiner_layers=1,
        mlp_ratio=2.0,
        patch_size=2,
        patch_size_t=1,
        guidance_embeds=True,
        text_embed_dim=16,
        pooled_projection_dim=8,
        rope_axes_dim=(8, 12, 12),
    )
    torch.manual_seed(0)
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        act_fn="silu",
        norm_num_groups=4,
        scaling_factor=0.476986,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
        mid_block_add_attention=True,
    )
    torch.manual_seed(0)
    text_encoder = LlamaModel(
        LlamaConfig(
            vocab_size=_vocab_size(),
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=4,
            num_key_value_heads=4,
            num_hidden_layers=3,
            max_position_embeddings=1024,
            bos_token_id=3,
            eos_token_id=1,
            pad_token_id=0,
        )
    )
    torch.manual_seed(0)
    text_encoder_2 = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=_vocab_size(),
            hidden_size=8,
            intermediate_size=16,
            num_attention_heads=2,
            num_hidden_layers=2,
            max_position_embeddings=77,
            projection_dim=8,
            bos_token_id=3,
            eos_token_id=1,
            pad_token_id=0,
        )
    )
    pipe = HunyuanVideoPipeline(
        text_encoder=text_encoder,
        tokenizer=_llama_tokenizer(),
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder_2=text_encoder_2,
        tokenizer_2=_word_level_tokenizer(),
    )
    return _finish(pipe)


def tiny_cogvideox_pipeline(temporal_patch: bool = False):
    """Tiny `CogVideoXPipeline` (CogVideoX-5B layout: rotary positions, patch 2), 2 layers, 2 heads,
    head_dim 32, T5 text encoder; call it with `max_sequence_length=TINY_COGVIDEOX_TEXT_LEN` (16).
    `temporal_patch=True` gives the CogVideoX 1.5 layout (patch_size_t=2: the pipeline pads the latent
    frames to an even count, e.g. 9 frames -> 3 latent -> 4 -> canvas T = 2)."""
    from transformers import T5Config, T5EncoderModel

    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )

    torch.manual_seed(0)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=32,
        in_channels=4,
        out_channels=4,
        time_embed_dim=8,
        text_embed_dim=32,
        num_layers=2,
        sample_width=8,
        sample_height=8,
        sample_frames=9,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=TINY_COGVIDEOX_TEXT_LEN,
        use_rotary_positional_embeddings=True,
        use_learned_positional_embeddings=False,
        patch_size_t=2 if temporal_patch else None,
        patch_bias=not temporal_patch,
    )
    torch.manual_seed(0)
    vae = AutoencoderKLCogVideoX(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
    )
    torch.manual_seed(0)
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=_vocab_size(),
            d_model=32,
            d_kv=8,
            d_ff=32,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )
    pipe = CogVideoXPipeline(
        tokenizer=_word_level_tokenizer(bos=0),
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=CogVideoXDDIMScheduler(),
    )
    return _finish(pipe)


def random_image(height: int = 64, width: int | None = None, seed: int = 0, path=None):
    """A deterministic random RGB PIL image (the conditioning frame of image-to-video tests), ``height`` x
    ``width`` (square by default); saved as PNG at ``path`` when given."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width or height, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    if path is not None:
        image.save(path)
    return image


def _finish(pipe):
    pipe.set_progress_bar_config(disable=True)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval().requires_grad_(False)
    return pipe


_BUILDERS = {
    "wan": tiny_wan_pipeline,
    "wan22": lambda: tiny_wan_pipeline(two_experts=True),
    "hunyuan_video": tiny_hunyuan_pipeline,
    "cogvideox": tiny_cogvideox_pipeline,
    "cogvideox15": lambda: tiny_cogvideox_pipeline(temporal_patch=True),
}


def tiny_pipeline(kind: str):
    """Build the tiny pipeline of `kind` ("wan", "wan22", "hunyuan_video", "cogvideox", "cogvideox15")."""
    if kind not in _BUILDERS:
        raise ValueError(f"unknown tiny pipeline kind {kind!r}; choose from {', '.join(KINDS + EXTRA_KINDS)}")
    return _BUILDERS[kind]()


def save_tiny(kind: str, folder) -> Path:
    """Write the tiny pipeline of `kind` as a diffusers pipeline folder (safetensors); returns the folder."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    folder = Path(folder)
    pipe = tiny_pipeline(kind)
    libraries = [lib for lib in (diffusers_logging, transformers_logging) if lib.is_progress_bar_enabled()]
    for library in libraries:
        library.disable_progress_bar()
    try:
        pipe.save_pretrained(folder, safe_serialization=True)
    finally:
        for library in libraries:
            library.enable_progress_bar()
    return folder


def tiny_call_kwargs(kind: str, generator=None, **overrides) -> dict:
    """Keyword arguments for calling the tiny pipeline of `kind` directly (small video, 2 steps, np output)."""
    kwargs = dict(
        prompt="a red cat running on the beach",
        height=TINY_CALL["height"],
        width=TINY_CALL["width"],
        num_frames=TINY_CALL["frames"],
        num_inference_steps=TINY_CALL["steps"],
        generator=generator if generator is not None else torch.Generator("cpu").manual_seed(0),
        output_type="np",
    )
    if kind.startswith("wan"):
        kwargs.update(max_sequence_length=16, guidance_scale=5.0)
    elif kind == "hunyuan_video":
        kwargs.update(max_sequence_length=32)
    elif kind.startswith("cogvideox"):
        kwargs.update(max_sequence_length=TINY_COGVIDEOX_TEXT_LEN, guidance_scale=6.0)
    kwargs.update(overrides)
    return kwargs


def hooked_dense_run(pipe, run, *, atol: float = 1e-5, shift: float = 0.1, on_call=None):
    """The hook check the model-family tests share. `run` is a zero-argument callable returning the latents (or
    a tuple of outputs, e.g. LTX-2's video and audio); `pipe` is anything `hook_attention` takes.

    Runs `run()` unhooked for the reference; then under `hook_attention(pipe, ...)` with dense attention,
    recording every `AttentionCall` (and calling `on_call(call)` inside the hook, if given), and asserts every
    output has the reference's shape and max abs diff <= `atol` (0: bit-identical); then with dense attention
    + `shift` and asserts every output moved by > 1e-3 (the hook really replaces the op).
    Returns ``(reference, calls, state)`` for the test's own assertions.
    """
    from sta_search.models import dense_attention, hook_attention

    def outputs(result):
        return result if isinstance(result, tuple) else (result,)

    reference = run()
    calls = []

    def recording(call):
        calls.append(call)
        if on_call is not None:
            on_call(call)
        return dense_attention(call)

    with hook_attention(pipe, recording) as state:
        hooked = run()
    for got, want in zip(outputs(hooked), outputs(reference), strict=True):
        assert got.shape == want.shape, f"hooked shape {tuple(got.shape)} != unhooked {tuple(want.shape)}"
        diff = (got - want).abs().max().item()
        assert diff <= atol, f"hooked dense differs from unhooked by {diff:.3g} > {atol:g}"
    with hook_attention(pipe, lambda call: dense_attention(call) + shift):
        perturbed = run()
    for got, want in zip(outputs(perturbed), outputs(reference), strict=True):
        diff = (got - want).abs().max().item()
        assert diff > 1e-3, f"dense + {shift:g} moved the output by only {diff:.3g}: is the hook the op?"
    return reference, calls, state
