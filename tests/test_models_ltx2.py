"""LTX-2 (audio + video) on a tiny offline pipeline: only the video self-attention ``attn1`` is hooked (audio
self-attention, text cross-attention and audio<->video cross-attention keep diffusers' processors); the hooked
model with diffusers' own attention equals the unhooked one (video and audio); STG-perturbed blocks are
reproduced; image-to-video keeps the canvas; calls off the grid are refused; and the CLI runs profile -> select
-> generate --compare-dense end to end (in-process) with a config that selects full attention."""

from __future__ import annotations

import json
import math

import pytest
import torch

import tiny_pipes_ltx2 as tl
from sta_search.artifacts import Profile
from sta_search.errors import UserError
from sta_search.models import AttentionCall, dense_attention, get_adapter, hook_attention
from tiny_pipes import hooked_dense_run

DENSE_MODULES = ("audio_attn1", "attn2", "audio_attn2", "audio_to_video_attn", "video_to_audio_attn")


@pytest.fixture(scope="module")
def pipe():
    return tl.tiny_ltx2_pipeline()


def run(pipe, seed, **overrides):
    kwargs = tl.ltx2_call_kwargs(generator=torch.Generator("cpu").manual_seed(seed), output_type="latent",
                                 **overrides)
    with torch.no_grad():
        out = pipe(**kwargs)
    return out.frames, out.audio


def test_hooked_dense_equals_unhooked_and_only_video_attn1_is_hooked(pipe, seed):
    adapter = get_adapter(pipe.transformer).bind(pipe)
    info = adapter.info(pipe.transformer)
    assert adapter.family == "ltx2" and (adapter.vae_scale_temporal, adapter.vae_scale_spatial) == (8, 32)
    assert adapter.canvas(pipe.transformer, 128, 128, 17) == tl.LTX2_CANVAS
    assert (info.num_layers, info.num_heads, info.head_dim) == (2, 2, 32)  # the video stream's heads

    blocks = pipe.transformer.transformer_blocks
    before = {name: [type(getattr(b, name).processor) for b in blocks] for name in DENSE_MODULES}

    def unchanged_processors(call):
        # the audio and cross-modal attentions still run diffusers' processors inside the hooked forward
        assert {name: [type(getattr(b, name).processor) for b in blocks] for name in DENSE_MODULES} == before

    # video and audio both bit-identical hooked, and both moved by dense + 1.0 (audio via video->audio attention)
    _, calls, state = hooked_dense_run(pipe, lambda: run(pipe, seed), atol=0, shift=1.0, on_call=unchanged_processors)
    assert state.num_layers == 2
    # 2 steps x 3 forwards (CFG batch of 2, STG, modality isolation) x 2 layers, video tokens only
    assert len(calls) == 12 and {(c.forward_index, c.q.shape[0]) for c in calls} == {(0, 2), (1, 1), (2, 1)}
    assert all(c.canvas == tl.LTX2_CANVAS and c.text_len == 0 and c.text_mask is None for c in calls)
    assert all(c.q.shape[1:] == (2, math.prod(tl.LTX2_CANVAS), 32) for c in calls)


def test_sta_full_window_equals_dense_and_sparse_differs(pipe, seed):
    from sta_search.kernels.sta.api import sta_attention

    def sta(window):
        return lambda call: sta_attention(call.q, call.k, call.v, canvas=call.canvas, tile=(1, 4, 4), windows=window,
                                          text_len=0, backend="reference")

    video, _ = run(pipe, seed)
    with hook_attention(pipe, sta((3, 1, 1))):  # grid (3, 1, 1): full attention
        full, _ = run(pipe, seed)
    torch.testing.assert_close(full, video, atol=2e-5, rtol=1e-5)
    with hook_attention(pipe, sta((1, 1, 1))):
        sparse, _ = run(pipe, seed)
    assert (sparse - video).abs().max().item() > 1e-4


def _transformer_inputs(transformer, seed, frames=3, height=4, width=4, batch=2):
    generator = torch.Generator("cpu").manual_seed(seed)
    tokens, audio_tokens, text = frames * height * width, 6, 8
    return dict(
        hidden_states=torch.randn(batch, tokens, 4, generator=generator),
        audio_hidden_states=torch.randn(batch, audio_tokens, 4, generator=generator),
        encoder_hidden_states=torch.randn(batch, text, 32, generator=generator),
        audio_encoder_hidden_states=torch.randn(batch, text, 32, generator=generator),
        timestep=torch.full((batch,), 700.0), encoder_attention_mask=torch.ones(batch, text),
        audio_encoder_attention_mask=torch.ones(batch, text), num_frames=frames, height=height, width=width,
        audio_num_frames=audio_tokens, return_dict=False,
    )


@pytest.mark.parametrize("mask", ["all", "partial"])
def test_spatio_temporal_guidance_blocks_are_reproduced(mask, seed):
    """`perturbed_attn=True` (LTX-2.3): STG blocks skip the attention for perturbed batch items (value projection
    instead); all perturbed: no attention call at all for that layer."""
    transformer = tl.tiny_ltx2_transformer(perturbed_attn=True)
    inputs = _transformer_inputs(transformer, seed)
    inputs.update(spatio_temporal_guidance_blocks=[1],
                  perturbation_mask=torch.zeros(2) if mask == "all" else torch.tensor([0.0, 1.0]))
    with torch.no_grad():
        reference = transformer(**inputs)
        calls: list[AttentionCall] = []
        with hook_attention(transformer, lambda call: calls.append(call) or dense_attention(call)):
            hooked = transformer(**inputs)
        unperturbed = transformer(**{**inputs, "spatio_temporal_guidance_blocks": None})
    assert torch.equal(hooked[0], reference[0]) and torch.equal(hooked[1], reference[1])
    assert (unperturbed[0] - reference[0]).abs().max().item() > 1e-4  # the perturbation does something
    assert [c.layer for c in calls] == ([0] if mask == "all" else [0, 1])


def test_image_to_video_keeps_the_canvas(pipe, seed):
    """`LTX2ImageToVideoPipeline`: the image is the first latent frame inside the canvas (per-token timestep 0)."""
    from diffusers import LTX2ImageToVideoPipeline
    from tiny_pipes import random_image

    expected, optional = LTX2ImageToVideoPipeline._get_signature_keys(LTX2ImageToVideoPipeline)
    i2v = LTX2ImageToVideoPipeline(**{k: v for k, v in pipe.components.items() if k in expected or k in optional})
    i2v.set_progress_bar_config(disable=True)
    image = random_image(128)
    kwargs = tl.ltx2_call_kwargs(generator=torch.Generator("cpu").manual_seed(seed), output_type="latent", image=image,
                                 image_crf=0)  # no H.264 re-compression of the image (needs PyAV)
    with torch.no_grad():
        reference = i2v(**kwargs).frames
        calls: list[AttentionCall] = []
        kwargs["generator"] = torch.Generator("cpu").manual_seed(seed)
        with hook_attention(i2v, lambda call: calls.append(call) or dense_attention(call)):
            hooked = i2v(**kwargs).frames
    assert torch.equal(hooked, reference)
    assert calls and {c.canvas for c in calls} == {tl.LTX2_CANVAS}


def test_calls_off_the_grid_are_refused(seed):
    transformer = tl.tiny_ltx2_transformer()
    inputs = _transformer_inputs(transformer, seed)
    extra = dict(inputs, hidden_states=torch.cat([inputs["hidden_states"], inputs["hidden_states"][:, :4]], 1))
    with hook_attention(transformer, dense_attention), pytest.raises(UserError, match="frame 0"):
        transformer(**extra)
    masked = dict(inputs, video_self_attention_mask=torch.ones(2, 48, 48))
    with hook_attention(transformer, dense_attention), pytest.raises(UserError, match="IC-LoRA"):
        transformer(**masked)


def _invoke(*args):
    from typer.testing import CliRunner

    from sta_search.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (result.output[-3000:], repr(result.exception))
    return result


def test_cli_profile_select_generate(tmp_path):
    folder = tl.save_tiny_ltx2(tmp_path / "ltx2")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cat running on the beach\n")
    size = ["--height", 128, "--width", 128, "--frames", 17, "--tile", "1,4,4"]
    _invoke("profile", folder, "--prompts", prompts, "--steps", 2, "--profile-steps", "all",
            "--windows", "1,1,1", "--windows", "3,1,1", *size, "--out", tmp_path / "profile")
    header = Profile.load(tmp_path / "profile").header
    assert header["canvas"] == list(tl.LTX2_CANVAS) and header["text_len"] == 0
    assert header["model"]["family"] == "ltx2"
    _invoke("select", tmp_path / "profile", "--budget", 1.0, "--full-steps", 0, "--out", tmp_path / "mask.yaml")
    from sta_search.maskconfig import MaskConfig

    assert MaskConfig.load(tmp_path / "mask.yaml").density() == pytest.approx(1.0)
    _invoke("generate", folder, "--mask", tmp_path / "mask.yaml", "--prompt", "a red cat running on the beach",
            *size[:-2], "--steps", 2, "--backend", "reference", "--compare-dense", "--out", tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["model"]["family"] == "ltx2"
    psnr = report["videos"][0]["fidelity"]["psnr_db"]
    assert psnr == "inf" or psnr >= 60


def test_listed_by_sta_search_models():
    from sta_search.models.catalog import supported_families

    entry = {e.family: e for e in supported_families()}["ltx2"]
    assert entry.transformer_classes == ("LTX2VideoTransformer3DModel",)
    assert "LTX2ImageToVideoPipeline" in entry.pipelines and "audio" in entry.text_handling
    assert entry.checkpoints == (("LTX-2 19B (video stream)", 32, 128, "gluon"),)
