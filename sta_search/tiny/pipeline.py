"""`TinyVideoPipeline`: a pixel-space WanPipeline look-alike around a tiny `WanTransformer3DModel`.

Components: ``transformer`` (diffusers `WanTransformer3DModel`, 3 pixel channels in and out),
``text_encoder`` (`TinyTextEncoder`), ``tokenizer`` (`PreTrainedTokenizerFast`, word level) and
``scheduler`` (`FlowMatchEulerDiscreteScheduler`). There is no VAE: the "latents" are the RGB video in
[-1, 1], so ``vae_scale_factor_spatial = vae_scale_factor_temporal = 1`` and the token canvas is
``(num_frames, height / p_h, width / p_w)``. The call mirrors `WanPipeline.__call__` (two transformer
forwards per step under classifier-free guidance, conditional first) and returns frames in [0, 1]
shaped like WanPipeline's output. The transformer may also be a `HunyuanVideoTransformer3DModel` (the
text in joint attention and pooled; `denoise` says how it is called).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from diffusers import (DiffusionPipeline, FlowMatchEulerDiscreteScheduler, HunyuanVideoTransformer3DModel,
                       WanTransformer3DModel)
from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from .text import MAX_LENGTH, TinyTextEncoder, encode_words, vocab_map

# The shipped architecture (bench/train_tiny.py trains exactly this).
TRANSFORMER_CONFIG = dict(
    patch_size=(1, 4, 4),
    num_attention_heads=6,
    attention_head_dim=32,
    in_channels=3,
    out_channels=3,
    text_dim=128,
    freq_dim=128,
    ffn_dim=768,
    num_layers=6,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    rope_max_seq_len=256,
)
TEXT_ENCODER_CONFIG = dict(dim=128, num_layers=2, num_heads=4, max_length=MAX_LENGTH)
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=2.0)


def build_components(transformer_overrides: dict | None = None, text_overrides: dict | None = None) -> dict:
    """Freshly initialised transformer, text encoder and scheduler (random weights, current torch seed)."""
    transformer = WanTransformer3DModel(**{**TRANSFORMER_CONFIG, **(transformer_overrides or {})})
    text_config = {**TEXT_ENCODER_CONFIG, **(text_overrides or {})}
    text_encoder = TinyTextEncoder(vocab_size=len(vocab_map()), **text_config)
    return dict(
        transformer=transformer,
        text_encoder=text_encoder,
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
    )


def coordinate_channels(batch: int, frames: int, height: int, width: int, device=None,
                        dtype=torch.float32) -> torch.Tensor:
    """``(batch, 3, frames, height, width)``: each pixel's frame, row and column, scaled to [-1, 1] over the
    canvas. A transformer with 3 more input than output channels gets these after the video, as Wan's
    image-to-video transformers get their condition channels: the absolute position that RoPE alone cannot
    give (bench/NOTES.md, session 16)."""
    axes = [torch.linspace(-1, 1, n, device=device, dtype=dtype) for n in (frames, height, width)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))[None].expand(batch, 3, frames, height, width)


def with_coordinates(video: torch.Tensor, transformer) -> torch.Tensor:
    """``video`` as ``transformer`` takes it: unchanged when its in and out channels agree, followed by
    `coordinate_channels` when it takes 3 more."""
    extra = transformer.config.in_channels - transformer.config.out_channels
    if extra == 0:
        return video
    if extra != 3:
        raise ValueError(f"transformer takes {transformer.config.in_channels} channels for "
                         f"{transformer.config.out_channels} out: only 0 or 3 extra (coordinates) are known")
    b, _, f, h, w = video.shape
    return torch.cat([video, coordinate_channels(b, f, h, w, video.device, video.dtype)], dim=1)


def is_joint_attention(transformer) -> bool:
    """True for a `HunyuanVideoTransformer3DModel` (text joins the video tokens in attention and, pooled,
    modulates the norms); False for Wan (text through cross-attention only)."""
    return type(transformer).__name__ == "HunyuanVideoTransformer3DModel"


def prompt_mask(text: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` bool: the prompt's tokens in ``text`` ``(B, L, D)``, which the bundled text encoders zero past
    each prompt. Position 0 always counts (the empty prompt encodes to zeros and would leave nothing to attend
    to); padding is on the right, as HunyuanVideo's mask expects."""
    mask = text.ne(0).any(dim=-1)
    mask[:, 0] = True
    return mask


def patch_size(transformer) -> tuple[int, int, int]:
    """Pixels per video token (frames, height, width) of a bundled-family transformer, Wan or HunyuanVideo."""
    config = transformer.config
    if is_joint_attention(transformer):
        return config.patch_size_t, config.patch_size, config.patch_size
    return tuple(config.patch_size)


def joint_text_inputs(text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What HunyuanVideo takes besides the text tokens ``text`` ``(B, L, D)``: `prompt_mask` as its key-padding
    mask and, as its pooled projection, the mean of the prompt's token embeddings (zero for the empty prompt)."""
    mask = prompt_mask(text)
    return mask, text.sum(dim=1) / mask.sum(dim=1, keepdim=True).to(text.dtype)


def denoise(transformer, video: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor,
            attention_kwargs: dict | None = None, network=None) -> torch.Tensor:
    """``transformer``'s flow prediction for the pixel video ``video`` ``(B, 3, F, H, W)`` at ``timestep`` ``(B,)``
    (0-1000) under the text embeddings ``text`` ``(B, L, D)`` of a bundled text encoder. Wan takes the text
    through cross-attention (and `coordinate_channels` when it has 3 extra inputs); HunyuanVideo through joint
    attention and its pooled projection (`joint_text_inputs`). ``network``: what to call instead of ``transformer``
    (e.g. its ``torch.compile`` wrapper)."""
    network = network if network is not None else transformer
    video = with_coordinates(video, transformer)
    if not is_joint_attention(transformer):
        return network(hidden_states=video, timestep=timestep, encoder_hidden_states=text,
                       attention_kwargs=attention_kwargs, return_dict=False)[0]
    mask, pooled = joint_text_inputs(text)
    return network(hidden_states=video, timestep=timestep, encoder_hidden_states=text, encoder_attention_mask=mask,
                   pooled_projections=pooled, attention_kwargs=attention_kwargs, return_dict=False)[0]


class _WordTokenizer:
    """Stand-in used only when transformers is missing (training machines); same ids as the saved tokenizer."""

    model_max_length = MAX_LENGTH

    def __call__(self, texts, max_length=MAX_LENGTH, **_):
        ids = encode_words(list(texts), max_length)
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}


class TinyVideoPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "text_encoder->transformer"
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(self, tokenizer, text_encoder: TinyTextEncoder,
                 transformer: WanTransformer3DModel | HunyuanVideoTransformer3DModel,
                 scheduler: FlowMatchEulerDiscreteScheduler):
        super().__init__()
        self.register_modules(
            tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, scheduler=scheduler
        )
        self.vae_scale_factor_spatial = 1
        self.vae_scale_factor_temporal = 1

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1.0

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def current_timestep(self):
        return self._current_timestep

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    def _tokenize(self, texts: list[str], max_sequence_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        tokenizer = self.tokenizer if self.tokenizer is not None else _WordTokenizer()
        out = tokenizer(texts, padding="max_length", max_length=max_sequence_length, truncation=True,
                        return_tensors="pt")
        return torch.as_tensor(out["input_ids"]), torch.as_tensor(out["attention_mask"])

    @torch.no_grad()
    def encode_prompt(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        do_classifier_free_guidance: bool = True,
        num_videos_per_prompt: int = 1,
        max_sequence_length: int = MAX_LENGTH,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(prompt_embeds, negative_prompt_embeds)``, each ``(batch * num_videos, length, text_dim)``."""
        device = device or self._execution_device
        dtype = dtype or self.transformer.dtype
        prompt = [prompt] if isinstance(prompt, str) else list(prompt)

        def encode(texts):
            ids, mask = self._tokenize(texts, max_sequence_length)
            embeds = self.text_encoder(ids.to(device), attention_mask=mask.to(device))
            return embeds.to(dtype).repeat_interleave(num_videos_per_prompt, dim=0)

        negative = None
        if do_classifier_free_guidance:
            negative_prompt = negative_prompt or ""
            negative_prompt = [negative_prompt] * len(prompt) if isinstance(negative_prompt, str) else negative_prompt
            if len(negative_prompt) != len(prompt):
                raise ValueError(f"negative_prompt has {len(negative_prompt)} entries for {len(prompt)} prompts")
            negative = encode(list(negative_prompt))
        return encode(prompt), negative

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] = None,
        negative_prompt: str | list[str] | None = None,
        height: int = 64,
        width: int = 64,
        num_frames: int = 8,
        num_inference_steps: int = 8,
        guidance_scale: float = 4.0,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        max_sequence_length: int = MAX_LENGTH,
    ):
        """Generate videos; ``output_type`` "np" gives ``(batch, frames, height, width, 3)`` float32 in
        [0, 1], "pt" gives ``(batch, frames, 3, height, width)``, "latent" the raw [-1, 1] tensor
        ``(batch, 3, frames, height, width)``. Returns `WanPipelineOutput` (or a 1-tuple)."""
        p_t, p_h, p_w = patch_size(self.transformer)
        if height % p_h or width % p_w or num_frames % p_t:
            raise ValueError(
                f"height {height} and width {width} must be multiples of {p_h}x{p_w}, num_frames of {p_t}"
            )
        for k in callback_on_step_end_tensor_inputs:
            if k not in self._callback_tensor_inputs:
                raise ValueError(f"callback tensor input {k!r} not in {self._callback_tensor_inputs}")
        if output_type not in ("np", "pt", "latent", "pil"):
            raise ValueError(f"output_type must be np, pt, pil or latent, got {output_type!r}")
        self._guidance_scale = guidance_scale
        self._attention_kwargs = attention_kwargs
        self._current_timestep = None
        self._interrupt = False
        device = self._execution_device
        dtype = self.transformer.dtype

        if prompt_embeds is None:
            prompt_embeds, negative_prompt_embeds = self.encode_prompt(
                prompt, negative_prompt, self.do_classifier_free_guidance, num_videos_per_prompt,
                max_sequence_length, device, dtype,
            )
        elif self.do_classifier_free_guidance and negative_prompt_embeds is None:
            negative_prompt_embeds = torch.zeros_like(prompt_embeds)
        prompt_embeds = prompt_embeds.to(device, dtype)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.to(device, dtype)
        batch = prompt_embeds.shape[0]

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        shape = (batch, self.transformer.config.out_channels, num_frames, height, width)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        else:
            latents = latents.to(device, torch.float32)
        self.scheduler.set_begin_index(0)

        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                self._current_timestep = t
                model_input = latents.to(dtype)
                timestep = t.expand(batch)
                with self.transformer.cache_context("cond"):  # as WanPipeline: diffusers' step caches key on it
                    noise_pred = denoise(self.transformer, model_input, timestep, prompt_embeds, attention_kwargs)
                if self.do_classifier_free_guidance:
                    with self.transformer.cache_context("uncond"):
                        noise_uncond = denoise(self.transformer, model_input, timestep, negative_prompt_embeds,
                                               attention_kwargs)
                    noise_pred = noise_uncond + guidance_scale * (noise_pred - noise_uncond)
                latents = self.scheduler.step(noise_pred.float(), t, latents, return_dict=False)[0]

                if callback_on_step_end is not None:
                    local = {"latents": latents, "prompt_embeds": prompt_embeds,
                             "negative_prompt_embeds": negative_prompt_embeds}
                    outputs = callback_on_step_end(self, i, t, {k: local[k] for k in callback_on_step_end_tensor_inputs})
                    latents = outputs.pop("latents", latents)
                    prompt_embeds = outputs.pop("prompt_embeds", prompt_embeds)
                    negative_prompt_embeds = outputs.pop("negative_prompt_embeds", negative_prompt_embeds)
                progress_bar.update()

        self._current_timestep = None
        if output_type == "latent":
            video = latents
        else:
            video = ((latents.float() + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 1, 3, 4)  # (B, F, C, H, W)
            if output_type == "np":
                video = video.permute(0, 1, 3, 4, 2).cpu().numpy().astype(np.float32)
            elif output_type == "pil":
                from PIL import Image

                arr = (video.permute(0, 1, 3, 4, 2).cpu().numpy() * 255).round().astype(np.uint8)
                video = [[Image.fromarray(frame) for frame in clip] for clip in arr]
        self.maybe_free_model_hooks()
        if not return_dict:
            return (video,)
        return WanPipelineOutput(frames=video)
