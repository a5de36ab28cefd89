"""The Wan lineage (tests/tiny_pipes_wan.py): hooked == unhooked, canvases, the CLI loop with and without
--image, and the two-expert split of Wan 2.2 A14B through profile, select, merge, mask config and generate."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

import tiny_pipes_wan as tiny
from sta_search.errors import UserError
from sta_search.models import dense_attention, get_adapter, hook_attention
from tiny_pipes import hooked_dense_run

TILE = "1,4,4"  # canvas (3, 4, 4) -> grid (3, 1, 1)


def _latents(pipe, kind, **overrides):
    return pipe(**tiny.tiny_call_kwargs(kind, output_type="latent", **overrides)).frames


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-wan")
    cache = {}

    def folder(kind):
        if kind not in cache:
            cache[kind] = tiny.save_tiny(kind, root / kind)
        return cache[kind]

    return folder


# ------------------------------------------------------------------------------------------ the hook
@pytest.mark.parametrize("kind", tiny.KINDS)
def test_hooked_dense_equals_unhooked_and_the_hook_is_used(kind):
    pipe = tiny.tiny_pipeline(kind)
    _, calls, state = hooked_dense_run(pipe, lambda: _latents(pipe, kind), atol=0)  # bit-identical
    canvas = (2, 4, 4) if kind == "chronoedit" else (3, 4, 4)  # ChronoEdit always runs 5 frames without reasoning
    assert {tuple(c.canvas) for c in calls} == {canvas} and {c.text_len for c in calls} == {0}
    layers = {"wan22_a14b": 4, "wan_vace": 3}.get(kind, 2)  # both experts; 2 blocks + 1 VACE block
    assert state.num_layers == layers and {c.layer for c in calls} == set(range(layers))
    assert {c.step for c in calls} == {0, 1}
    assert all(not hasattr(m.processor, "runtime") for m in get_adapter(pipe.transformer).attention_modules(pipe.transformer))


def test_canvases_of_the_lineage():
    ti2v = tiny.tiny_pipeline("wan22_ti2v")
    adapter = get_adapter(ti2v.transformer).bind(ti2v)
    assert (adapter.vae_scale_spatial, ti2v.transformer.config.in_channels) == (16, 48)
    assert adapter.canvas(ti2v.transformer, 128, 128, 9) == (3, 4, 4)
    assert adapter.canvas(ti2v.transformer, 704, 1280, 121) == (31, 22, 40)  # Wan 2.2 TI2V 5B at 720p
    with pytest.raises(UserError, match="multiple of 32"):
        adapter.canvas(ti2v.transformer, 64 + 16, 128, 9)
    chrono = tiny.tiny_pipeline("chronoedit")
    adapter = get_adapter(chrono.transformer).bind(chrono)
    assert adapter.family == "chronoedit" and adapter.canvas(chrono.transformer, 64, 64, 81) == (2, 4, 4)


def test_skyreels_block_causal_mask_is_refused():
    pipe = tiny.tiny_pipeline("skyreels_v2_df")
    with hook_attention(pipe, dense_attention):
        with pytest.raises(UserError, match="block-causal"):
            _latents(pipe, "skyreels_v2_df", causal_block_size=3)


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
    assert result.exception is None and result.exit_code == 0, (result.exception, result.output)
    return result


def _size(kind):
    size = tiny.SIZE.get(kind, 64)
    return ["--height", size, "--width", size, "--frames", 9]


def _loop(kind, folder, tmp_path, steps=2, full_steps=0, image=None):
    """profile -> select (budget 1: every layer picks the full window, error 0) -> generate --compare-dense."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cat running on the beach\n")
    extra = ["--image", image] if image is not None else []
    _ok("profile", folder, "--prompts", prompts, "--steps", steps, *_size(kind), "--tile", TILE,
        "--windows", "1,1,1;3,1,1", "--device", "cpu", "--out", tmp_path / "profile", *extra)
    _ok("select", tmp_path / "profile", "--budget", "1", "--full-steps", full_steps, "--out", tmp_path / "mask.yaml")
    _ok("generate", folder, "--mask", tmp_path / "mask.yaml", "--prompt", "a red cat running on the beach",
        *_size(kind), "--compare-dense", "--backend", "reference", "--device", "cpu", "--out", tmp_path / "out", *extra)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    (video,) = report["videos"]
    psnr = video["fidelity"]["psnr_db"]
    assert psnr == "inf" or psnr >= 60
    return report


@pytest.mark.parametrize("kind", [k for k in tiny.KINDS if k != "wan22_a14b"])
def test_cli_loop_all_full_is_lossless(kind, folders, tmp_path):
    image = None
    if kind in tiny.IMAGE_KINDS:
        image = tmp_path / "first.png"
        tiny.tiny_image(image)
    report = _loop(kind, folders(kind), tmp_path, image=image)
    assert report["density_used"]["overall"] == 1.0
    assert report["settings"]["image"] == (str(image) if image else None)


def test_image_option_errors(folders, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n")
    base = ["--prompts", prompts, "--steps", 1, *_size("wan_i2v"), "--tile", TILE, "--device", "cpu"]
    message = str(_cli("profile", folders("wan_i2v"), *base, "--out", tmp_path / "a").exception)
    assert "WanImageToVideoPipeline" in message and "--image" in message
    not_image = tmp_path / "notes.png"
    not_image.write_text("not a picture")
    message = str(_cli("profile", folders("wan_i2v"), *base, "--image", not_image, "--out", tmp_path / "b").exception)
    assert "not an image" in message and "notes.png" in message
    message = str(_cli("profile", folders("wan_i2v"), *base, "--image", tmp_path / "nope.png",
                       "--out", tmp_path / "c").exception)
    assert "no such file" in message
    picture = tmp_path / "p.png"
    tiny.tiny_image(picture)
    message = str(_cli("profile", folders("skyreels_v2"), *base, "--image", picture, "--out", tmp_path / "d").exception)
    assert "takes no image" in message and "SkyReelsV2Pipeline" in message


def test_read_image_reads_pil_and_rejects_text(tmp_path):
    from sta_search.options import read_image

    tiny.tiny_image(tmp_path / "x.jpg", size=32)
    image = read_image(tmp_path / "x.jpg")
    assert image.mode == "RGB" and image.size == (32, 32)
    (tmp_path / "y.txt").write_text("hello")
    with pytest.raises(UserError, match="not an image"):
        read_image(tmp_path / "y.txt")


# ------------------------------------------------------------------------------------------ two experts
def test_wan22_two_experts_profile_select_mask_generate(folders, tmp_path):
    """4 steps, boundary 0.5 (timestep 500), FlowMatch shift 3 (timesteps 1000, 858, 602, 9): transformer runs
    steps 0-2 (layers 0-1), transformer_2 step 3 (layers 2-3)."""
    from sta_search.artifacts import Profile, merge_profiles
    from sta_search.experts import ExpertSplit
    from sta_search.maskconfig import MaskConfig
    from sta_search.select import SelectOptions, select_windows

    folder = folders("wan22_a14b")
    report = _loop("wan22_a14b", folder, tmp_path, steps=4, full_steps=1)
    profile = Profile.load(tmp_path / "profile")
    split = ExpertSplit.from_header(profile.header)
    assert profile.header["expert_switch_step"] == 3 == split.switch_step
    assert split.layers == ((0, 2), (2, 4)) and split.steps == ((0, 3), (3, 4))
    assert report["density_used"]["overall"] == 1.0
    config = MaskConfig.load(tmp_path / "mask.yaml")
    assert config.experts == split

    # the budget counts only the layers that run: at 0.5 a tight choice spends it on them alone
    selection = select_windows(profile, SelectOptions(budget=0.5, full_steps=1))
    cfg = selection.config
    density = cfg.density_table()
    active = split.active()
    assert abs(float(density[1:][active[1:]].mean()) - selection.summary["density"]) < 1e-5
    assert abs(cfg.density() - selection.summary["density"]) < 1e-5
    assert selection.summary["density"] <= 0.5 + 1e-9 and selection.summary["expert_switch_step"] == 3
    text = cfg.to_yaml()
    assert "experts:" in text and MaskConfig.loads(text) == cfg
    for step, layers in cfg.to_dict()["step_overrides"].items():  # a resting expert never gets an override
        assert all(active[step, layer] for layer in layers)

    # merge refuses profiles whose expert switch step differs
    other = copy.deepcopy(profile.header)
    other["expert_switch_step"] = 2
    other["experts"] = ExpertSplit(split.names, split.layers, ((0, 2), (2, 4))).to_list()
    other["prompts"] = ["another prompt"]
    moved = Profile(other, profile.tensors)
    with pytest.raises(UserError, match="expert_switch_step: 3 vs 2"):
        merge_profiles([profile, moved])

    # generate refuses a config whose switch step differs from the pipeline's, before running
    moved_config = cfg.replace(experts=ExpertSplit(split.names, split.layers, ((0, 1), (1, 4))))
    moved_config.save(tmp_path / "moved.yaml")
    result = _cli("generate", folder, "--mask", tmp_path / "moved.yaml", "--prompt", "a cat", *_size("wan22_a14b"),
                  "--backend", "reference", "--device", "cpu", "--out", tmp_path / "out2")
    assert "switches to transformer_2 at step 1" in str(result.exception) and "step 3 of 4" in str(result.exception)


def test_mask_attention_refuses_a_call_of_the_resting_expert():
    from sta_search.accelerate import MaskAttention
    from sta_search.experts import ExpertSplit
    from sta_search.maskconfig import MaskConfig
    from sta_search.models import AttentionCall

    split = ExpertSplit(("transformer", "transformer_2"), ((0, 2), (2, 4)), ((0, 2), (2, 4)))
    info = {"family": "wan", "transformer_class": "WanTransformer3DModel", "num_layers": 4, "num_heads": 2}
    config = MaskConfig.uniform(info, (3, 4, 4), (1, 4, 4), 0, 4, (3, 1, 1), experts=split)
    attention = MaskAttention(config, backend="reference")
    q = torch.randn(1, 2, 48, 8)
    ok = AttentionCall(step=3, layer=2, q=q, k=q, v=q, canvas=(3, 4, 4), text_len=0, text_first=False,
                       text_mask=None, forward_index=0)
    assert attention(ok).shape == q.shape
    with pytest.raises(UserError, match="ran transformer at step 3"):
        attention(AttentionCall(step=3, layer=0, q=q, k=q, v=q, canvas=(3, 4, 4), text_len=0, text_first=False,
                                text_mask=None, forward_index=0))
    # resting (step, layer) rows are canonical: a uniform config has no overrides, densities ignore them
    assert config.to_dict()["step_overrides"] == {} and config.density() == pytest.approx(1.0)


def test_expert_split_from_runs():
    from sta_search.experts import ExpertSplit

    split = ExpertSplit.from_runs([40, 40], [0] * 12 + [1] * 28)
    assert split.to_list() == [{"name": "transformer", "layers": [0, 40], "steps": [0, 12]},
                               {"name": "transformer_2", "layers": [40, 80], "steps": [12, 40]}]
    assert ExpertSplit.from_runs([2, 2], [1, 1]).steps == ((0, 0), (0, 2))  # only the low-noise expert ran
    with pytest.raises(RuntimeError, match="in order"):
        ExpertSplit.from_runs([2, 2], [0, 1, 0])
    active = split.active()
    assert active.shape == (40, 80) and active[11, 39] and not active[11, 40] and active[12, 40]
    assert np.array_equal(active.sum(axis=1), np.full(40, 40))
