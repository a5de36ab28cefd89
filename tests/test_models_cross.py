"""Cross-attention families (LTX-Video T2V/I2V, Allegro) on tiny offline pipelines, and `sta-search models`."""

from __future__ import annotations

import json
import math

import pytest
import torch

import tiny_pipes_cross as tiny
from sta_search.errors import UserError
from sta_search.models import get_adapter, hook_attention
from tiny_pipes import hooked_dense_run

CANVAS = tiny.CROSS_CANVAS


@pytest.fixture(scope="module")
def pipes():
    return {kind: tiny.tiny_cross_pipeline(kind) for kind in tiny.CROSS_KINDS}


def run_latents(pipe, kind, seed, **overrides):
    generator = torch.Generator("cpu").manual_seed(seed)
    with torch.no_grad():
        return pipe(**tiny.tiny_cross_call_kwargs(kind, generator=generator, output_type="latent", **overrides)).frames


@pytest.mark.parametrize("kind", tiny.CROSS_KINDS)
def test_hooked_dense_equals_unhooked_and_sees_the_canvas(pipes, kind, seed):
    pipe = pipes[kind]
    adapter = get_adapter(pipe.transformer).bind(pipe)
    info = adapter.info(pipe.transformer)
    call = tiny.CROSS_CALLS[kind]
    assert adapter.canvas(pipe.transformer, call["height"], call["width"], call["frames"]) == CANVAS
    reference, calls, state = hooked_dense_run(pipe, lambda: run_latents(pipe, kind, seed))  # + perturbation check
    assert state.num_layers == info.num_layers == 2
    # CFG is batched (one forward per step); the text never enters the self-attention
    assert [(c.step, c.forward_index, c.layer) for c in calls] == [(0, 0, 0), (0, 0, 1), (1, 0, 0), (1, 0, 1)]
    for c in calls:
        assert c.canvas == CANVAS and c.text_len == 0 and c.text_mask is None
        assert c.q.shape == (2, info.num_heads, math.prod(CANVAS), info.head_dim)


@pytest.mark.parametrize("kind", ("ltx_video", "allegro"))
def test_sta_full_window_equals_dense_and_one_tile_differs(pipes, kind, seed):
    from sta_search.kernels.sta.api import sta_attention

    def sta(window):
        return lambda c: sta_attention(c.q, c.k, c.v, canvas=c.canvas, tile=(1, 4, 4), windows=window,
                                       text_len=c.text_len, text_first=c.text_first, text_mask=c.text_mask,
                                       backend="reference")

    pipe = pipes[kind]
    reference = run_latents(pipe, kind, seed)
    with hook_attention(pipe, sta((3, 1, 1))):  # grid (3, 1, 1): full attention
        full = run_latents(pipe, kind, seed)
    torch.testing.assert_close(full, reference, atol=1e-5, rtol=1e-5)
    with hook_attention(pipe, sta((1, 1, 1))):
        sparse = run_latents(pipe, kind, seed)
    assert (sparse - reference).abs().max().item() > 1e-4


def test_ltx_canvas_from_video_coords_and_extra_condition_tokens(pipes):
    """LTXConditionPipeline passes only video_coords: the canvas is their distinct values; extra tokens refused."""
    adapter = get_adapter(pipes["ltx_video"].transformer)
    t, h, w = torch.meshgrid(torch.arange(3) * 8.0 / 25, torch.arange(4) * 32.0, torch.arange(5) * 32.0, indexing="ij")
    coords = torch.stack([t, h, w]).flatten(1)[None].repeat(2, 1, 1)
    hidden = torch.zeros(2, 60, 8)
    assert adapter.forward_canvas(pipes["ltx_video"].transformer, (), dict(hidden_states=hidden,
                                                                             video_coords=coords)) == (3, 4, 5)
    extra = torch.cat([coords[:, :, :20], coords], dim=2)  # a condition's tokens prepended
    with pytest.raises(UserError, match="frame 0"):
        adapter.forward_canvas(pipes["ltx_video"].transformer, (), dict(hidden_states=torch.zeros(2, 80, 8),
                                                                          video_coords=extra))
    assert adapter.canvas(pipes["ltx_video"].transformer, 512, 768, 121) == (16, 16, 24)  # LTX-Video 0.9 default call


REAL_CONFIGS = [
    ("LTXVideoTransformer3DModel", dict(), (28, 32, 64, (1, 1, 1)), (512, 704, 161), (21, 16, 22)),  # LTX-Video 2B
    ("AllegroTransformer3DModel", dict(), (32, 24, 96, (1, 2, 2)), (720, 1280, 88), (22, 45, 80)),  # Allegro
]


@pytest.mark.parametrize("class_name, config, expected, size, canvas", REAL_CONFIGS, ids=["ltx-2b", "allegro"])
def test_real_architectures_on_meta_device(class_name, config, expected, size, canvas):
    import diffusers

    with torch.device("meta"):
        transformer = getattr(diffusers, class_name)(**config)
    adapter = get_adapter(transformer)
    info = adapter.info(transformer)
    assert (info.num_layers, info.num_heads, info.head_dim, info.patch_size) == expected
    assert adapter.canvas(transformer, *size) == canvas


def _cli(*args):
    from typer.testing import CliRunner

    from sta_search.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result


@pytest.mark.parametrize("kind", ("ltx_video", pytest.param("allegro", marks=pytest.mark.slow)))
def test_cli_profile_select_generate_full_is_lossless(kind, tmp_path):
    """profile -> select --sparsity 0 (all windows full) -> generate --compare-dense: lossless (>= 60 dB).
    Allegro is slow (~40 s on 2 cores): its VAE decodes only 24-frame, 128-pixel tiles (see tiny_pipes_cross)."""
    folder = tiny.save_tiny_cross(kind, tmp_path / kind)
    call = tiny.CROSS_DECODE_SIZE[kind]
    size = ["--height", call["height"], "--width", call["width"], "--frames", call["frames"]]
    canvas = list(call["canvas"])
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat running in the street\n")
    _cli("profile", folder, "--prompts", prompts, "--steps", 2, "--tile", "1,4,4", "--windows", "1,1,1;9,9,9",
         *size, "--out", tmp_path / "profile")
    from sta_search.artifacts import Profile

    header = Profile.load(tmp_path / "profile").header
    assert header["model"]["family"] == kind and header["canvas"] == canvas and header["text_len"] == 0
    _cli("select", tmp_path / "profile", "--sparsity", 0, "--out", tmp_path / "full.yaml")
    out = tmp_path / "out"
    _cli("generate", folder, "--mask", tmp_path / "full.yaml", "--prompt", "a cat running in the street", *size,
         "--steps", 2, "--backend", "reference", "--compare-dense", "--out", out)
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["family"] == kind and report["mask"]["canvas"] == canvas
    assert report["density_used"]["overall"] == 1.0
    psnr = report["videos"][0]["fidelity"]["psnr_db"]
    assert psnr == "inf" or psnr >= 60


def test_models_command_lists_the_registered_families():
    from sta_search.models import supported_transformer_classes
    from sta_search.models.catalog import hopper_kernel, supported_families

    data = json.loads(_cli("models", "--json").output)
    families = {entry["family"]: entry for entry in data}
    assert {"ltx_video", "allegro", "wan", "hunyuan_video", "cogvideox"} <= set(families)
    listed = {name for entry in data for name in entry["transformer_classes"]}
    assert listed == set(supported_transformer_classes())
    ltx = families["ltx_video"]
    assert "LTXImageToVideoPipeline" in ltx["pipelines"] and "cross-attention" in ltx["text_handling"]
    assert {(c["head_dim"], c["hopper_kernel"]) for c in ltx["checkpoints"]} == {(64, "gluon"), (128, "gluon")}
    assert families["allegro"]["checkpoints"][0]["hopper_kernel"] == "flex"  # head dim 96
    assert hopper_kernel(128, "float32")[0] == "triton" and hopper_kernel(80)[0] == "flex"
    assert hopper_kernel(32) == ("triton", "head dim 32 (Gluon needs 64 or 128)")
    assert [e.family for e in supported_families("float32")] == sorted(families)
    table = _cli("models").output
    for family in families:
        assert family in table
    from typer.testing import CliRunner

    from sta_search.cli import app

    result = CliRunner().invoke(app, ["models", "--dtype", "int8"])
    assert isinstance(result.exception, UserError)
