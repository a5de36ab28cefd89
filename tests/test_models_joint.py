"""Joint-attention video families (text tokens in the video's self-attention) on tiny offline pipelines:
Mochi, EasyAnimate, HunyuanVideo 1.5, CogVideoX image-to-video, HunyuanVideo image-to-video transformers.
The hooked model with diffusers' own attention equals the unhooked one; the CLI runs profile -> select ->
generate --compare-dense end to end (in-process) with a config that selects full attention."""

from __future__ import annotations

import json
import math
from contextlib import nullcontext

import pytest
import torch

import tiny_pipes_joint as tj
from sta_search.artifacts import Profile
from sta_search.models import dense_attention, get_adapter, hook_attention, load_model
from tiny_pipes import hooked_dense_run

TEXT_LEN = {"mochi": 16, "easyanimate": 256, "hunyuan_video15": tj.HUNYUAN15_SHORT_TEXT_LEN}
TEXT_FIRST = {"mochi": False, "easyanimate": True, "hunyuan_video15": False}
MASKED = {"mochi": True, "easyanimate": False, "hunyuan_video15": True}
CANVAS = (3, 4, 4)


@pytest.fixture(scope="module")
def pipes():
    return {}


def _pipe(pipes, kind):
    if kind not in pipes:
        pipes[kind] = tj.tiny_joint_pipeline(kind)
    return pipes[kind]


def run_latents(pipe, kind, seed, **overrides):
    adapter = get_adapter(pipe.transformer).bind(pipe)
    kwargs = tj.joint_call_kwargs(kind, generator=torch.Generator("cpu").manual_seed(seed), output_type="latent",
                                  **{**dict(adapter.call_defaults), **overrides})
    with torch.no_grad():
        return pipe(**kwargs).frames


@pytest.mark.parametrize("kind", tj.JOINT_KINDS)
def test_hooked_dense_equals_unhooked(pipes, kind, seed):
    pipe = _pipe(pipes, kind)
    adapter = get_adapter(pipe.transformer).bind(pipe)
    info = adapter.info(pipe.transformer)
    assert adapter.canvas(pipe.transformer, 64, 64, tj.JOINT_FRAMES[kind]) == CANVAS
    # Mochi's diffusers op drops the padded text keys instead of masking them: fp32 rounding only
    reference, calls, state = hooked_dense_run(pipe, lambda: run_latents(pipe, kind, seed), atol=2e-5)
    assert state.num_layers == info.num_layers == 2
    assert calls and all(c.canvas == CANVAS and c.text_len == TEXT_LEN[kind] for c in calls)
    assert all(c.text_first == TEXT_FIRST[kind] for c in calls)
    assert all(c.q.shape[1:] == (info.num_heads, math.prod(CANVAS) + c.text_len, info.head_dim) for c in calls)
    if MASKED[kind]:
        assert all(c.text_mask is not None and c.text_mask.dtype == torch.bool for c in calls)
        counts = {int(n) for c in calls for n in c.text_mask.sum(-1)}
        assert max(counts) > 0 and min(counts) < TEXT_LEN[kind]  # real prompt tokens and real padding
    else:
        assert all(c.text_mask is None for c in calls)


@pytest.mark.parametrize("kind", tj.JOINT_KINDS)
def test_sta_full_window_equals_dense_and_sparse_differs(pipes, kind, seed):
    from sta_search.kernels.sta.api import sta_attention

    pipe = _pipe(pipes, kind)

    def sta(window):
        return lambda call: sta_attention(call.q, call.k, call.v, canvas=call.canvas, tile=(1, 4, 4), windows=window,
                                          text_len=call.text_len, text_first=call.text_first,
                                          text_mask=call.text_mask, backend="reference")

    reference = run_latents(pipe, kind, seed)
    with hook_attention(pipe, sta((3, 1, 1))):  # grid (3, 1, 1): full attention
        full = run_latents(pipe, kind, seed)
    torch.testing.assert_close(full, reference, atol=2e-5, rtol=1e-5)
    with hook_attention(pipe, sta((1, 1, 1))):
        sparse = run_latents(pipe, kind, seed)
    assert (sparse - reference).abs().max().item() > 1e-4


def _invoke(*args):
    from typer.testing import CliRunner

    from sta_search.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (result.output[-3000:], repr(result.exception))
    return result


@pytest.mark.parametrize("kind", tj.JOINT_KINDS)
def test_cli_profile_select_generate(kind, tmp_path):
    folder = tj.save_tiny_joint(kind, tmp_path / kind)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cat running on the beach\n")
    size = ["--height", 64, "--width", 64, "--frames", tj.JOINT_FRAMES[kind], "--tile", "1,4,4"]
    patch = tj.short_hunyuan15_text() if kind == "hunyuan_video15" else nullcontext()
    with patch:
        _invoke("profile", folder, "--prompts", prompts, "--steps", 2, "--profile-steps", "all",
                "--windows", "1,1,1", "--windows", "3,1,1", *size, "--out", tmp_path / "profile")
        header = Profile.load(tmp_path / "profile").header
        assert header["canvas"] == list(CANVAS) and header["text_first"] == TEXT_FIRST[kind]
        assert header["text_len"] == TEXT_LEN[kind] and header["model"]["family"] == kind
        _invoke("select", tmp_path / "profile", "--budget", 1.0, "--full-steps", 0, "--out", tmp_path / "mask.yaml")
        from sta_search.maskconfig import MaskConfig

        config = MaskConfig.load(tmp_path / "mask.yaml")
        assert config.density() == pytest.approx(1.0)  # budget 1: full attention everywhere
        _invoke("generate", folder, "--mask", tmp_path / "mask.yaml", "--prompt", "a red cat running on the beach",
                *size[:-2], "--steps", 2, "--backend", "reference", "--compare-dense", "--out", tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["model"]["family"] == kind
    psnr = report["videos"][0]["fidelity"]["psnr_db"]
    assert psnr == "inf" or psnr >= 60


# ---------------------------------------------------------------- image-to-video
# No `--image` option in this tree's CLI: the image-to-video paths are checked through the library.


def test_cogvideox_image_to_video_uses_the_cogvideox_adapter(pipes, tmp_path, seed):
    """`CogVideoXImageToVideoPipeline` concatenates the image latents on the channels: same transformer
    class, same canvas and text layout; the existing CogVideoX adapter hooks it exactly."""
    pipe = _pipe(pipes, "cogvideox_i2v")
    adapter = get_adapter(pipe.transformer).bind(pipe)
    assert adapter.family == "cogvideox" and adapter.canvas(pipe.transformer, 64, 64, 9) == CANVAS
    reference, calls, _ = hooked_dense_run(pipe, lambda: run_latents(pipe, "cogvideox_i2v", seed))
    assert {(c.canvas, c.text_len, c.text_first) for c in calls} == {(CANVAS, 16, True)}
    # the image changes the output (it is really conditioned on), and the folder loads through load_model
    other = run_latents(pipe, "cogvideox_i2v", seed, image=tj.tiny_image(seed=1))
    assert (other - reference).abs().max().item() > 1e-4
    pipe.save_pretrained(tmp_path / "i2v")
    loaded = load_model(str(tmp_path / "i2v"))
    assert type(loaded.pipeline).__name__ == "CogVideoXImageToVideoPipeline"
    assert loaded.canvas(64, 64, 9) == CANVAS
    kwargs = loaded.adapter.pipeline_kwargs("a cat", 64, 64, 9, 2, torch.Generator("cpu").manual_seed(seed),
                                            image=tj.tiny_image(), output_type="latent")
    with torch.no_grad(), hook_attention(loaded, dense_attention):
        assert loaded.pipeline(**kwargs).frames.shape == reference.shape


@pytest.mark.parametrize("condition", ["latent_concat", "token_replace"])
def test_hunyuan_video_image_to_video_transformers(condition, seed):
    """HunyuanVideo-I2V uses `HunyuanVideoTransformer3DModel` with ``image_condition_type``: latent_concat
    (image latent on the channels) or token_replace (first latent frame = the image latent, modulated
    with t=0). The image's CLIP tokens join the text stream (the Llava encoder), after the video, masked.
    Both variants keep the video canvas; the HunyuanVideo adapter hooks them exactly."""
    transformer = tj.tiny_hunyuan_i2v_transformer(condition)
    adapter = get_adapter(transformer)
    assert adapter.family == "hunyuan_video"
    generator = torch.Generator("cpu").manual_seed(seed)
    batch, text = 2, 12
    inputs = dict(
        hidden_states=torch.randn(batch, transformer.config.in_channels, 3, 8, 8, generator=generator),
        timestep=torch.tensor([700.0, 700.0]),
        encoder_hidden_states=torch.randn(batch, text, 16, generator=generator),
        encoder_attention_mask=torch.tensor([[1] * 9 + [0] * 3, [1] * 4 + [0] * 8]),
        pooled_projections=torch.randn(batch, 8, generator=generator),
        guidance=torch.tensor([6000.0, 6000.0]),
        return_dict=False,
    )
    with torch.no_grad():
        _, calls, _ = hooked_dense_run(transformer, lambda: transformer(**inputs)[0])
    assert len(calls) == 2 and {(c.canvas, c.text_len, c.text_first) for c in calls} == {(CANVAS, text, False)}
    assert all(torch.equal(c.text_mask, inputs["encoder_attention_mask"].bool()) for c in calls)


def test_consisid_transformer_uses_the_cogvideox_joint_attention(seed):
    """`ConsisIDTransformer3DModel` (identity-preserving I2V): CogVideoX joint attention, text first, no mask;
    the face perceiver cross-attention (is_train_face) is not hooked. Checked on the transformer (its
    pipeline needs face-analysis models)."""
    from diffusers import ConsisIDTransformer3DModel

    torch.manual_seed(0)
    transformer = ConsisIDTransformer3DModel(
        num_attention_heads=2, attention_head_dim=32, in_channels=8, out_channels=4, time_embed_dim=8,
        text_embed_dim=32, num_layers=2, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
        max_text_seq_length=16, use_rotary_positional_embeddings=True, use_learned_positional_embeddings=False,
    ).eval().requires_grad_(False)
    adapter = get_adapter(transformer)
    assert adapter.family == "consisid" and adapter.text_first
    assert adapter.canvas(transformer, 64, 64, 9) == CANVAS and adapter.info(transformer).patch_size == (1, 2, 2)
    generator = torch.Generator("cpu").manual_seed(seed)
    inputs = dict(hidden_states=torch.randn(2, 3, 8, 8, 8, generator=generator),
                  encoder_hidden_states=torch.randn(2, 16, 32, generator=generator),
                  timestep=torch.tensor([500, 500]), return_dict=False)
    with torch.no_grad():
        _, calls, _ = hooked_dense_run(transformer, lambda: transformer(**inputs)[0])
    assert len(calls) == 2 and {(c.canvas, c.text_len, c.text_first) for c in calls} == {(CANVAS, 16, True)}
