"""The Wan lineage: self-attention ``blocks[i].attn1`` with RoPE and across-heads RMS q/k norms, full 3D
attention over the video tokens (no joint text: ``text_len=0``); the text, and the CLIP image tokens of the
image-to-video models (``image_embedder`` + ``add_k_proj``), enter through the cross-attention ``attn2``,
which is never hooked.

- Wan 2.1 / 2.2 (`WanTransformer3DModel`): `WanPipeline` (text-to-video, also Wan 2.2 TI2V 5B with
  ``expand_timesteps``: 48-channel VAE, 16x spatial / 4x temporal, patch (1,2,2); the per-token timesteps
  put the first frame at 0), `WanImageToVideoPipeline` (the conditioning latents are concatenated on the
  channels, so the canvas is the video's), `WanVideoToVideoPipeline`. Wan 2.2 A14B pipelines have a second
  expert ``transformer_2``: `hook_attention` numbers its layers after the first expert's and
  :mod:`sta_search.experts` records which steps each expert runs.
- VACE (`WanVACETransformer3DModel`): the main blocks, then the VACE blocks, whose self-attention runs over
  the control tokens (padded to the video's token count: the same canvas).
- SkyReels-V2 (`SkyReelsV2Transformer3DModel`), text/image-to-video and the diffusion-forcing pipelines in
  synchronous mode (``ar_step=0``, ``causal_block_size`` 1, one window of frames): with a causal block size
  above 1 diffusers adds a block-causal mask to the self-attention, which STA does not express; the hook
  refuses it.
- ChronoEdit (`ChronoEditTransformer3DModel`): image editing as a Wan image-to-video model (the edited
  image is the last frame). Temporal reasoning (``enable_temporal_reasoning``) cuts the latent frames
  mid-run, i.e. changes the canvas; run without it.
"""

from __future__ import annotations

import copy

import torch

from diffusers.models.transformers.transformer_wan import _get_qkv_projections

from ..errors import UserError
from .base import ModelAdapter, register_adapter
from .parallel import ulysses_attention


class WanSelfAttnProcessor:
    """`diffusers.models.transformers.transformer_wan.WanAttnProcessor` (self-attention path) with the
    attention op handed to the hook runtime."""

    def __init__(self, runtime, layer: int):
        self.runtime = runtime
        self.layer = layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if attention_mask is not None:  # SkyReels-V2 diffusion forcing with causal_block_size > 1
            raise UserError("this model runs its self-attention with a block-causal mask (SkyReels-V2 diffusion "
                            "forcing with causal_block_size > 1); STA supports plain full attention only: use "
                            "causal_block_size=1")
        if encoder_hidden_states is not None or attn.add_k_proj is not None:
            raise RuntimeError("the hooked Wan processor only handles self-attention (attn1)")
        query, key, value = _get_qkv_projections(attn, hidden_states, None)

        query = attn.norm_q(query)
        key = attn.norm_k(key)

        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))

        if rotary_emb is not None:
            query = _apply_rotary_emb(query, *rotary_emb)
            key = _apply_rotary_emb(key, *rotary_emb)

        parallel_config = self.runtime.state.parallel_config
        if parallel_config is not None and getattr(parallel_config, "context_parallel_config", None) is not None:
            # diffusers context parallelism: this rank holds a slice of the sequence; Ulysses all-to-all
            # gives the attention function the full sequence for a slice of the heads, and back.
            hidden_states = ulysses_attention(self.runtime, self.layer, query, key, value, parallel_config)
        else:
            # (B, S, H, D) -> (B, H, S, D) views, as diffusers' native backend permutes them for SDPA
            out = self.runtime.attend(self.layer, query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))
            hidden_states = out.transpose(1, 2)
        hidden_states = hidden_states.flatten(2, 3)
        hidden_states = hidden_states.type_as(query)

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        return hidden_states


def _apply_rotary_emb(hidden_states: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor):
    # verbatim from WanAttnProcessor.__call__ (diffusers 0.42)
    x1, x2 = hidden_states.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(hidden_states)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(hidden_states)


@register_adapter
class WanAdapter(ModelAdapter):
    """Wan 2.1 / 2.2 text-to-video. Latent input ``(B, C, F, H, W)``; no joint text (``text_len=0``)."""

    family = "wan"
    transformer_classes = ("WanTransformer3DModel",)
    text_first = False
    pipelines = ("WanPipeline", "WanImageToVideoPipeline")
    text_handling = "cross-attention (attn2); no text in the self-attention"
    checkpoints = (("Wan 2.1 T2V 1.3B", 12, 128), ("Wan 2.1/2.2 14B", 40, 128), ("Wan 2.2 TI2V 5B", 24, 128))

    def attention_modules(self, transformer):
        return [block.attn1 for block in transformer.blocks]

    def make_processor(self, runtime, layer):
        return WanSelfAttnProcessor(runtime, layer)

    def _patch_size(self, transformer):
        return tuple(int(p) for p in transformer.config.patch_size)

    def _latent_frames(self, transformer, frames):
        t = self.vae_scale_temporal
        if t > 1 and frames % t != 1:  # WanPipeline rounds num_frames to 4k + 1
            frames = frames // t * t + 1
        return (max(frames, 1) - 1) // t + 1


@register_adapter
class WanVACEAdapter(WanAdapter):
    """Wan VACE: ``blocks[i].attn1`` then ``vace_blocks[j].attn1`` (control tokens, the video's canvas)."""

    family = "wan_vace"
    pipelines = ("WanVACEPipeline",)
    checkpoints = (("Wan 2.1 VACE 1.3B", 12, 128), ("Wan 2.1 VACE 14B", 40, 128))
    transformer_classes = ("WanVACETransformer3DModel",)

    def attention_modules(self, transformer):
        return [block.attn1 for block in transformer.blocks] + [block.attn1 for block in transformer.vace_blocks]


@register_adapter
class SkyReelsV2Adapter(WanAdapter):
    """SkyReels-V2 (text/image-to-video and synchronous diffusion forcing); 24 fps, 97 frames by default."""

    family = "skyreels_v2"
    pipelines = ("SkyReelsV2Pipeline", "SkyReelsV2DiffusionForcingPipeline")
    checkpoints = (("SkyReels-V2 1.3B", 12, 128), ("SkyReels-V2 14B", 40, 128))
    transformer_classes = ("SkyReelsV2Transformer3DModel",)


@register_adapter
class ChronoEditAdapter(WanAdapter):
    """ChronoEdit (image editing through a Wan image-to-video model; run without temporal reasoning)."""

    family = "chronoedit"
    pipelines = ("ChronoEditPipeline",)
    checkpoints = (("ChronoEdit 14B", 40, 128),)
    transformer_classes = ("ChronoEditTransformer3DModel",)

    def _latent_frames(self, transformer, frames):
        # ChronoEditPipeline runs 5 frames (2 latent frames) whatever num_frames says, unless temporal
        # reasoning is on (which then cuts the latents mid-run: not supported)
        return super()._latent_frames(transformer, 5)


def predicted_switch_step(pipeline, steps: int) -> int | None:
    """The first step a two-expert Wan 2.2 pipeline runs ``transformer_2`` at, for `steps` steps: the number
    of scheduler timesteps at or above ``boundary_ratio * num_train_timesteps`` (as `WanPipeline` and
    `WanImageToVideoPipeline` choose the expert). None when the pipeline has no boundary or the scheduler
    cannot be asked (the attention hook then checks the expert of every call)."""
    ratio = getattr(getattr(pipeline, "config", None), "boundary_ratio", None)
    if ratio is None or getattr(pipeline, "transformer_2", None) is None:
        return None
    try:
        scheduler = copy.deepcopy(pipeline.scheduler)
        scheduler.set_timesteps(int(steps), device="cpu")
        boundary = float(ratio) * float(scheduler.config.num_train_timesteps)
        return int(sum(float(t) >= boundary for t in scheduler.timesteps[: int(steps)]))
    except Exception:  # noqa: BLE001 - schedulers needing extra arguments: checked at run time instead
        return None
