"""Image-to-video pipelines on tiny offline builds (tests/tiny_pipes_i2v.py): HunyuanVideo I2V (latent_concat and
token_replace), HunyuanVideo 1.5 I2V, EasyAnimate inpaint. The hooked pipeline with diffusers' attention equals
the unhooked one, the image really conditions the output, and the CLI runs profile -> select -> generate
--compare-dense with ``--image`` end to end (in-process) with an all-full config."""

from __future__ import annotations

import json
from contextlib import nullcontext

import pytest
import torch

import tiny_pipes_i2v as ti
from sta_search.artifacts import Profile
from sta_search.errors import UserError
from sta_search.models import dense_attention, get_adapter, hook_attention, load_model
from sta_search.profile import pipeline_image_kwargs
from tiny_pipes import hooked_dense_run

PROMPT = "a red cat running on the beach"
# joint text tokens and whether the transformer gets a key-padding mask over them
TEXT = {"hunyuan_i2v": (ti.HUNYUAN_I2V_TEXT_LEN["hunyuan_i2v"], True),
        "hunyuan_i2v_token": (ti.HUNYUAN_I2V_TEXT_LEN["hunyuan_i2v_token"], True),
        "hunyuan_video15_i2v": (ti.HUNYUAN15_I2V_TEXT_LEN, True),
        "easyanimate_inpaint": (256, False)}


@pytest.fixture(scope="module")
def pipes():
    return {}


def _pipe(pipes, kind):
    if kind not in pipes:
        pipes[kind] = ti.tiny_pipeline(kind)
    return pipes[kind]


def _latents(pipe, kind, seed, image=None):
    """The pipeline's latents for the tiny call, conditioned as the CLI does (adapter kwargs + image kwargs)."""
    adapter = get_adapter(pipe.transformer).bind(pipe)
    image = image if image is not None else ti.tiny_image()
    kwargs = adapter.pipeline_kwargs(PROMPT, ti.SIZE, ti.SIZE, ti.FRAMES, 2, torch.Generator("cpu").manual_seed(seed),
                                     output_type="latent")
    kwargs.update(adapter.image_call_kwargs(pipe, image, ti.SIZE, ti.SIZE, ti.FRAMES))
    with torch.no_grad():
        return pipe(**kwargs).frames


@pytest.mark.parametrize("kind", ti.KINDS)
def test_hooked_dense_equals_unhooked_and_the_image_conditions(pipes, kind, seed):
    pipe = _pipe(pipes, kind)
    reference, calls, _ = hooked_dense_run(pipe, lambda: _latents(pipe, kind, seed), atol=0)  # bit-identical
    text_len, masked = TEXT[kind]
    assert {(tuple(c.canvas), c.text_len, c.text_mask is not None) for c in calls} == {(ti.CANVAS, text_len, masked)}
    assert {c.step for c in calls} == {0, 1} and {c.layer for c in calls} == {0, 1}
    other = _latents(pipe, kind, seed, image=ti.tiny_image(seed=1))  # the image conditions the video
    assert (other - reference).abs().max().item() > 1e-4


def test_hunyuan_i2v_text_mask_marks_image_and_prompt_tokens(pipes, seed):
    """The joint text of HunyuanVideo I2V: 288 image states (every 2nd of 576), all valid, then the 252 prompt
    positions of which only the prompt's own tokens are valid: the tokenizer's template prefix was cropped
    exactly (a wrong crop would leave system-prompt tokens valid or drop prompt tokens)."""
    pipe = _pipe(pipes, "hunyuan_i2v")
    masks = []
    with hook_attention(pipe, lambda call: masks.append(call.text_mask) or dense_attention(call)):
        _latents(pipe, "hunyuan_i2v", seed)
    mask = masks[0][0]
    prompt_tokens = len(PROMPT.split()) + 2  # + the "\n\n" after the assistant header, </s>
    assert mask[:288].all() and int(mask[288:].sum()) == prompt_tokens and mask[288:288 + prompt_tokens].all()


def test_hunyuan15_i2v_size_comes_from_the_image(pipes):
    """HunyuanVideo15ImageToVideoPipeline takes no height/width: the call drops them and a size other than the
    image's bucket is refused naming the size to pass."""
    pipe = _pipe(pipes, "hunyuan_video15_i2v")
    adapter = get_adapter(pipe.transformer).bind(pipe)
    kwargs = adapter.pipeline_kwargs(PROMPT, 64, 64, 9, 2, None)
    assert "height" not in kwargs and "width" not in kwargs and kwargs["num_frames"] == 9
    assert adapter.image_call_kwargs(pipe, ti.tiny_image(), 64, 64, 9).keys() == {"image"}
    with pytest.raises(UserError, match="pass --height 64 --width 64"):
        adapter.image_call_kwargs(pipe, ti.tiny_image(), 128, 64, 9)
    wide = ti.tiny_image(size=64).resize((128, 32))  # 4:1 -> the 32 x 128 bucket of target size 64
    with pytest.raises(UserError, match="gives 32x128"):
        adapter.image_call_kwargs(pipe, wide, 64, 64, 9)
    # the text-to-video pipeline keeps its height/width
    from tiny_pipes_joint import tiny_hunyuan_video15_pipeline

    t2v = tiny_hunyuan_video15_pipeline()
    assert get_adapter(t2v.transformer).bind(t2v).pipeline_kwargs(PROMPT, 64, 64, 9, 2, None)["height"] == 64


def test_easyanimate_inpaint_image_is_optional_and_becomes_video_and_mask(pipes, tmp_path):
    pipe = _pipe(pipes, "easyanimate_inpaint")
    assert pipeline_image_kwargs(pipe, None, (64, 64, 9)) == {}  # text-to-video with the inpaint model
    ti.tiny_image(tmp_path / "first.png")
    kwargs = pipeline_image_kwargs(pipe, tmp_path / "first.png", (64, 64, 9))
    assert kwargs.keys() == {"video", "mask_video"}
    assert kwargs["video"].shape == (1, 3, 9, 64, 64) and kwargs["mask_video"].shape == (1, 1, 9, 64, 64)
    assert (kwargs["mask_video"][:, :, 0] == 0).all() and (kwargs["mask_video"][:, :, 1:] == 255).all()


# ------------------------------------------------------------------------------------------ the CLI
def _cli(*args):
    from typer.testing import CliRunner

    from sta_search.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, UserError):
        raise result.exception
    return result


def _ok(*args):
    result = _cli(*args)
    assert result.exception is None and result.exit_code == 0, (result.exception, result.output[-3000:])
    return result


@pytest.mark.parametrize("kind", ["hunyuan_i2v", "hunyuan_video15_i2v", "easyanimate_inpaint"])
def test_cli_loop_with_image_all_full_is_lossless(kind, tmp_path):
    folder = ti.save_tiny(kind, tmp_path / kind)
    image = ti.tiny_image(tmp_path / "first.png")
    assert image.size == (ti.SIZE, ti.SIZE)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPT + "\n")
    size = ["--height", ti.SIZE, "--width", ti.SIZE, "--frames", ti.FRAMES]
    patch = ti.short_hunyuan15_i2v_text() if kind == "hunyuan_video15_i2v" else nullcontext()
    with patch:
        _ok("profile", folder, "--prompts", prompts, "--steps", 2, *size, "--tile", "1,4,4", "--windows", "1,1,1;3,1,1",
            "--device", "cpu", "--image", tmp_path / "first.png", "--out", tmp_path / "profile")
        header = Profile.load(tmp_path / "profile").header
        assert header["canvas"] == list(ti.CANVAS) and header["model"]["family"] == ti.FAMILY[kind]
        assert header["text_len"] == TEXT[kind][0] and header["image"]["path"] == str(tmp_path / "first.png")
        _ok("select", tmp_path / "profile", "--budget", "1", "--full-steps", 0, "--out", tmp_path / "mask.yaml")
        _ok("generate", folder, "--mask", tmp_path / "mask.yaml", "--prompt", PROMPT, *size, "--compare-dense",
            "--backend", "reference", "--device", "cpu", "--image", tmp_path / "first.png", "--out", tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["model"]["family"] == ti.FAMILY[kind] and report["density_used"]["overall"] == 1.0
    assert report["settings"]["image"] == str(tmp_path / "first.png")
    (video,) = report["videos"]
    psnr = video["fidelity"]["psnr_db"]
    assert psnr == "inf" or psnr >= 60
    loaded = load_model(str(folder))
    assert type(loaded.pipeline).__name__ == ti.PIPELINE[kind]


def test_cli_image_errors_of_the_image_to_video_pipelines(tmp_path):
    folder = ti.save_tiny("hunyuan_video15_i2v", tmp_path / "hv15")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPT + "\n")
    base = ["--prompts", prompts, "--steps", 1, "--frames", ti.FRAMES, "--tile", "1,4,4", "--device", "cpu"]
    message = str(_cli("profile", folder, *base, "--height", 64, "--width", 64, "--out", tmp_path / "a").exception)
    assert "HunyuanVideo15ImageToVideoPipeline" in message and "--image" in message
    ti.tiny_image(tmp_path / "first.png")
    message = str(_cli("profile", folder, *base, "--height", 128, "--width", 64, "--image", tmp_path / "first.png",
                       "--out", tmp_path / "b").exception)
    assert "pass --height 64 --width 64" in message
