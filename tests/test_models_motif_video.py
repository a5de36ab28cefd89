"""Motif-Video (joint attention, text after the video, boolean key-padding mask) on a tiny offline pipeline: the
hooked model with diffusers' own attention equals the unhooked one, decoder single-stream blocks stay unhooked,
image tokens join the text stream, and the CLI runs profile -> select -> generate --compare-dense end to end
(in-process) with a config that selects full attention."""

from __future__ import annotations

import json
import math

import pytest
import torch

import tiny_pipes_motif_video as tm
from sta_search.artifacts import Profile
from sta_search.models import AttentionCall, dense_attention, get_adapter, hook_attention
from tiny_pipes import hooked_dense_run


@pytest.fixture(scope="module")
def pipe():
    return tm.tiny_motif_pipeline()


def run_latents(pipe, seed):
    kwargs = tm.motif_call_kwargs(generator=torch.Generator("cpu").manual_seed(seed), output_type="latent")
    with torch.no_grad():
        return pipe(**kwargs).frames


def test_hooked_dense_equals_unhooked(pipe, seed):
    adapter = get_adapter(pipe.transformer).bind(pipe)
    info = adapter.info(pipe.transformer)
    assert adapter.family == "motif_video" and info.patch_size == (1, 2, 2)
    assert adapter.canvas(pipe.transformer, 64, 64, 9) == tm.MOTIF_CANVAS
    # 1 dual + 1 encoder single-stream block; the decoder block (video + video) is not hooked
    assert info.num_layers == 2
    decoder_attn = pipe.transformer.single_transformer_blocks[-1].attn
    assert all(module is not decoder_attn for module in adapter.attention_modules(pipe.transformer))

    _, calls, state = hooked_dense_run(pipe, lambda: run_latents(pipe, seed), atol=2e-5, shift=1.0)
    assert state.num_layers == 2
    # 2 steps x 2 guider forwards (cond, uncond) x 2 layers
    assert len(calls) == 8 and {c.layer for c in calls} == {0, 1}
    assert all(c.canvas == tm.MOTIF_CANVAS and c.text_len == tm.MOTIF_TEXT_LEN and not c.text_first for c in calls)
    assert all(c.q.shape[1:] == (2, math.prod(tm.MOTIF_CANVAS) + tm.MOTIF_TEXT_LEN, 32) for c in calls)
    assert all(c.text_mask is not None and c.text_mask.dtype == torch.bool for c in calls)
    counts = {int(n) for c in calls for n in c.text_mask.sum(-1)}
    assert max(counts) > 0 and min(counts) < tm.MOTIF_TEXT_LEN  # real prompt tokens and real padding


def test_sta_full_window_equals_dense_and_sparse_differs(pipe, seed):
    from sta_search.kernels.sta.api import sta_attention

    def sta(window):
        return lambda call: sta_attention(call.q, call.k, call.v, canvas=call.canvas, tile=(1, 4, 4), windows=window,
                                          text_len=call.text_len, text_first=call.text_first,
                                          text_mask=call.text_mask, backend="reference")

    reference = run_latents(pipe, seed)
    with hook_attention(pipe, sta((3, 1, 1))):  # grid (3, 1, 1): full attention
        full = run_latents(pipe, seed)
    torch.testing.assert_close(full, reference, atol=2e-5, rtol=1e-5)
    with hook_attention(pipe, sta((1, 1, 1))):
        sparse = run_latents(pipe, seed)
    assert (sparse - reference).abs().max().item() > 1e-4


def test_image_tokens_join_the_text_stream(seed):
    """Image-to-video: `image_embeds` (the vision tower's tokens) are prepended to the text stream, always valid;
    the canvas stays the video's. Checked on the transformer with a 1 dual + 1 encoder single-stream layout."""
    transformer = tm.tiny_motif_transformer(num_decoder_layers=0, image_embed_dim=24)
    generator = torch.Generator("cpu").manual_seed(seed)
    image_tokens, text = 5, 12
    inputs = dict(
        hidden_states=torch.randn(2, 33, 3, 8, 8, generator=generator),
        timestep=torch.tensor([700.0, 700.0]),
        encoder_hidden_states=torch.randn(2, text, 32, generator=generator),
        encoder_attention_mask=torch.tensor([[1] * 9 + [0] * 3, [1] * 4 + [0] * 8]),
        image_embeds=torch.randn(2, image_tokens, 24, generator=generator),
        return_dict=False,
    )
    with torch.no_grad():
        reference = transformer(**inputs)[0]
        calls: list[AttentionCall] = []
        with hook_attention(transformer, lambda call: calls.append(call) or dense_attention(call)):
            hooked = transformer(**inputs)[0]
    assert (hooked - reference).abs().max().item() <= 1e-5
    assert len(calls) == 3 and {(c.canvas, c.text_len) for c in calls} == {(tm.MOTIF_CANVAS, image_tokens + text)}
    expected = torch.cat([torch.ones(2, image_tokens, dtype=torch.bool), inputs["encoder_attention_mask"].bool()], 1)
    assert all(torch.equal(c.text_mask, expected) for c in calls)


def _invoke(*args):
    from typer.testing import CliRunner

    from sta_search.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (result.output[-3000:], repr(result.exception))
    return result


def test_cli_profile_select_generate(tmp_path):
    folder = tm.save_tiny_motif(tmp_path / "motif")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cat running on the beach\n")
    size = ["--height", 64, "--width", 64, "--frames", 9, "--tile", "1,4,4"]
    _invoke("profile", folder, "--prompts", prompts, "--steps", 2, "--profile-steps", "all",
            "--windows", "1,1,1", "--windows", "3,1,1", *size, "--out", tmp_path / "profile")
    header = Profile.load(tmp_path / "profile").header
    assert header["canvas"] == list(tm.MOTIF_CANVAS) and header["text_first"] is False
    assert header["text_len"] == 512 and header["model"]["family"] == "motif_video"  # the pipeline's default
    _invoke("select", tmp_path / "profile", "--budget", 1.0, "--full-steps", 0, "--out", tmp_path / "mask.yaml")
    from sta_search.maskconfig import MaskConfig

    assert MaskConfig.load(tmp_path / "mask.yaml").density() == pytest.approx(1.0)
    _invoke("generate", folder, "--mask", tmp_path / "mask.yaml", "--prompt", "a red cat running on the beach",
            *size[:-2], "--steps", 2, "--backend", "reference", "--compare-dense", "--out", tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["model"]["family"] == "motif_video"
    psnr = report["videos"][0]["fidelity"]["psnr_db"]
    assert psnr == "inf" or psnr >= 60


def test_listed_by_sta_search_models():
    from sta_search.models.catalog import supported_families

    entry = {e.family: e for e in supported_families()}["motif_video"]
    assert entry.transformer_classes == ("MotifVideoTransformer3DModel",)
    assert entry.pipelines == ("MotifVideoPipeline", "MotifVideoImage2VideoPipeline")
    assert "text after the video" in entry.text_handling
