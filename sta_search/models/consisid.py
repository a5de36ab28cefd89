"""ConsisID (`ConsisIDTransformer3DModel`): a CogVideoX-5B-I2V transformer (same joint attention
``transformer_blocks[i].attn1`` with `CogVideoXAttnProcessor2_0`, text BEFORE the video, no key-padding
mask, image latent concatenated on the channels by the pipeline) plus identity conditioning: the face
perceiver cross-attention (``perceiver_cross_attention``, video queries over face tokens) runs between
blocks and is never hooked. Canvas: latent ``(B, F, C, H, W)``, patch ``(1, p, p)`` (no temporal patch)."""

from __future__ import annotations

from .base import register_adapter
from .cogvideox import CogVideoXAdapter


@register_adapter
class ConsisIDAdapter(CogVideoXAdapter):
    """ConsisID identity-preserving image-to-video: the CogVideoX joint attention and canvas."""

    family = "consisid"
    pipelines = ("ConsisIDPipeline",)
    checkpoints = (("ConsisID (CogVideoX-5b base)", 48, 64),)
    transformer_classes = ("ConsisIDTransformer3DModel",)

    def _patch_size(self, transformer):
        p = int(transformer.config.patch_size)
        return (1, p, p)
