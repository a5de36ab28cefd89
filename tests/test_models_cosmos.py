"""Cosmos (`CosmosTransformer3DModel`: Cosmos 2 video-to-world with an image, Cosmos 1.0 text-to-world) on tiny
offline pipelines: hooked == unhooked, the canvas, full STA windows == dense, and the CLI end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch

import tiny_pipes_cosmos as tiny
from sta_search.models import dense_attention, get_adapter, hook_attention
from tiny_pipes import hooked_dense_run

CANVAS = tiny.COSMOS_CANVAS


@pytest.fixture(scope="module")
def pipes():
    return {kind: tiny.tiny_cosmos_pipeline(kind) for kind in tiny.COSMOS_KINDS}


def run_latents(pipe, kind, seed, **overrides):
    generator = torch.Generator("cpu").manual_seed(seed)
    with torch.no_grad():
        return pipe(**tiny.cosmos_call_kwargs(kind, generator=generator, output_type="latent", **overrides)).frames


@pytest.mark.parametrize("kind", tiny.COSMOS_KINDS)
def test_hooked_dense_equals_unhooked_and_sees_the_canvas(pipes, kind, seed):
    pipe = pipes[kind]
    adapter = get_adapter(pipe.transformer).bind(pipe)
    info = adapter.info(pipe.transformer)
    call = tiny.COSMOS_CALLS[kind]
    assert adapter.canvas(pipe.transformer, call["height"], call["width"], call["frames"]) == CANVAS
    reference, calls, state = hooked_dense_run(pipe, lambda: run_latents(pipe, kind, seed))  # + perturbation check
    assert state.num_layers == info.num_layers == 2 and (info.num_heads, info.head_dim) == (2, 32)
    # CFG runs two forwards per step (conditional, then unconditional); per-frame timesteps of the
    # video-to-world call (conditioning frame ~0) still count as one step per timestep
    assert [(c.step, c.forward_index, c.layer) for c in calls] == [
        (s, f, layer) for s in range(2) for f in range(2) for layer in range(2)]
    for c in calls:
        assert c.canvas == CANVAS and c.text_len == 0 and c.text_mask is None
        assert c.q.shape == (1, info.num_heads, math.prod(CANVAS), info.head_dim)


def test_video2world_conditioning_frame_is_the_first_canvas_frame(pipes, seed):
    """The image is encoded into latent frame 0, which stays in the canvas: changing the image changes the
    keys of the first canvas frame only at the first layer's input (the mask channel marks frame 0)."""
    pipe = pipes["cosmos2_v2w"]
    seen = {}

    def first_call_keys(name):
        def fn(c):
            if c.step == 0 and c.forward_index == 0 and c.layer == 0:
                seen[name] = c.k.detach().clone()
            return dense_attention(c)
        return fn

    for name, image_seed in (("a", 0), ("b", 1)):
        with hook_attention(pipe, first_call_keys(name)):
            run_latents(pipe, "cosmos2_v2w", seed, image=tiny.random_image(64, seed=image_seed))
    frame = math.prod(CANVAS[1:])
    diff = (seen["a"] - seen["b"]).abs().amax(dim=(0, 1, 3))  # per token
    assert diff[:frame].min().item() > 0 and diff[frame:].max().item() == 0


def test_sta_full_window_equals_dense_and_one_tile_differs(pipes, seed):
    from sta_search.kernels.sta.api import sta_attention

    def sta(window):
        return lambda c: sta_attention(c.q, c.k, c.v, canvas=c.canvas, tile=(1, 4, 4), windows=window,
                                       text_len=c.text_len, text_first=c.text_first, text_mask=c.text_mask,
                                       backend="reference")

    pipe = pipes["cosmos_t2w"]
    reference = run_latents(pipe, "cosmos_t2w", seed)
    with hook_attention(pipe, sta((3, 1, 1))):  # grid (3, 1, 1): full attention
        full = run_latents(pipe, "cosmos_t2w", seed)
    torch.testing.assert_close(full, reference, atol=1e-5, rtol=1e-5)
    with hook_attention(pipe, sta((1, 1, 1))):
        sparse = run_latents(pipe, "cosmos_t2w", seed)
    assert (sparse - reference).abs().max().item() > 1e-4


REAL_CONFIGS = [  # scripts/convert_cosmos_to_diffusers.py configs; default pipeline calls
    (dict(), (28, 32, 128, (1, 2, 2)), (8, 8), (704, 1280, 121), (16, 44, 80)),  # Cosmos 1.0 7B
    (dict(num_attention_heads=16, in_channels=17, rope_scale=(1.0, 3.0, 3.0), extra_pos_embed_type=None),
     (28, 16, 128, (1, 2, 2)), (4, 8), (704, 1280, 93), (24, 44, 80)),  # Cosmos Predict 2 / 2.5 2B
    (dict(num_attention_heads=40, num_layers=36, in_channels=17, extra_pos_embed_type=None),
     (36, 40, 128, (1, 2, 2)), (4, 8), (704, 1280, 93), (24, 44, 80)),  # Cosmos Predict 2 / 2.5 14B
]


@pytest.mark.parametrize("config, expected, vae, size, canvas", REAL_CONFIGS, ids=["1.0-7b", "2-2b", "2-14b"])
def test_real_architectures_on_meta_device(config, expected, vae, size, canvas):
    import dataclasses

    from diffusers import CosmosTransformer3DModel

    with torch.device("meta"):
        transformer = CosmosTransformer3DModel(**config)
    adapter = dataclasses.replace(get_adapter(transformer), vae_scale_temporal=vae[0], vae_scale_spatial=vae[1])
    info = adapter.info(transformer)
    assert (info.num_layers, info.num_heads, info.head_dim, info.patch_size) == expected
    assert adapter.canvas(transformer, *size) == canvas


def _cli(*args):
    from typer.testing import CliRunner

    from sta_search.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result


@pytest.mark.parametrize("kind", tiny.COSMOS_KINDS)
def test_cli_profile_select_generate_full_is_lossless(kind, tmp_path):
    """profile -> select --sparsity 0 (all windows full) -> generate --compare-dense: lossless (>= 60 dB).
    Video-to-world passes its conditioning image with --image."""
    folder = tiny.save_tiny_cosmos(kind, tmp_path / kind)
    call = tiny.COSMOS_CALLS[kind]
    size = ["--height", call["height"], "--width", call["width"], "--frames", call["frames"]]
    if kind == "cosmos2_v2w":
        tiny.random_image(call["height"], path=tmp_path / "first.png")
        size += ["--image", tmp_path / "first.png"]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat running in the street\n")
    _cli("profile", folder, "--prompts", prompts, "--steps", 2, "--tile", "1,4,4", "--windows", "1,1,1;3,1,1",
         *size, "--out", tmp_path / "profile")
    from sta_search.artifacts import Profile

    header = Profile.load(tmp_path / "profile").header
    assert header["model"]["family"] == "cosmos" and header["canvas"] == list(CANVAS) and header["text_len"] == 0
    _cli("select", tmp_path / "profile", "--sparsity", 0, "--out", tmp_path / "full.yaml")
    out = tmp_path / "out"
    _cli("generate", folder, "--mask", tmp_path / "full.yaml", "--prompt", "a cat running in the street", *size,
         "--steps", 2, "--backend", "reference", "--compare-dense", "--out", out)
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["family"] == "cosmos" and report["mask"]["canvas"] == list(CANVAS)
    assert report["density_used"]["overall"] == 1.0
    psnr = report["videos"][0]["fidelity"]["psnr_db"]
    assert psnr == "inf" or psnr >= 60


def test_missing_guardrail_is_one_line_user_error(tmp_path):
    """A Cosmos folder without a safety checker makes diffusers build the real guardrail; without the
    `cosmos_guardrail` package that is a one-line UserError naming the package, not a traceback."""
    from diffusers.utils import is_cosmos_guardrail_available

    from sta_search.errors import UserError
    from sta_search.models import load_model

    if is_cosmos_guardrail_available():
        pytest.skip("cosmos_guardrail is installed")
    folder = tiny.save_tiny_cosmos("cosmos_t2w", tmp_path / "t2w")
    index = json.loads((folder / "model_index.json").read_text())
    index["safety_checker"] = [None, None]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match="cosmos_guardrail"):
        load_model(str(folder))
