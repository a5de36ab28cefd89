"""diffusers step caches together with STA (sta_search/caches.py) on the tiny Wan pipeline (CPU).

For each cache that runs on Wan: (a) an all-full mask config + the cache equals the cache alone (>= 60 dB),
in both orders of installing the cache and the processor swap; (b) STA + the cache follows the per-step
window schedule at the steps the pipeline is really at (checked call by call against the scheduler's
timestep, with a config whose windows differ at every step); (c) CLI errors exit 2 naming the cache.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import sta_search
from sta_search.maskconfig import MaskConfig
from sta_search.models import get_adapter
from sta_search.video import fidelity

from tiny_pipes import save_tiny, tiny_call_kwargs, tiny_pipeline

STEPS = 6
CANVAS, TILE = (3, 4, 4), (1, 2, 8)  # tiny Wan call (64x64, 9 frames) -> grid (3, 2, 1)


def _configs():
    """Cache configs that certainly skip within 6 steps, and the steps whose layer 1 is computed."""
    from diffusers import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig

    return {
        # threshold far above any residual change: after step 0 only the first block runs
        "first-block": (lambda: FirstBlockCacheConfig(threshold=1e9), {0}),
        # ratios of 1 never add error: retention 1 step, then at most 3 skipped steps in a row
        "mag": (lambda: MagCacheConfig(mag_ratios=[1.0] * STEPS, num_inference_steps=STEPS), {0, 4}),
        "taylorseer": (lambda: _taylorseer(), None),
        "taylorseer-lite": (lambda: _taylorseer("taylorseer-lite"), None),
    }


def _taylorseer(name="taylorseer"):
    from sta_search.caches import resolve_cache

    config = resolve_cache(name, tiny_pipeline_cached()).configs[0]  # Wan patterns (attn1/attn2), or lite mode
    config.cache_interval, config.disable_cache_before_step = 2, 1
    return config


_PIPE = {}


def tiny_pipeline_cached():
    if "wan" not in _PIPE:
        _PIPE["wan"] = tiny_pipeline("wan")
    return _PIPE["wan"]


@pytest.fixture
def pipe():
    pipe = tiny_pipeline_cached()
    yield pipe
    for transformer in (pipe.transformer,):
        if transformer.is_cache_enabled:
            transformer.disable_cache()


def _config(pipe, per_step: bool) -> MaskConfig:
    info = get_adapter(pipe.transformer).info(pipe.transformer)
    base = MaskConfig.uniform(info, CANVAS, TILE, 0, STEPS, (9, 9, 9))
    if not per_step:
        return base
    windows = np.array(base.windows)
    windows[:, :, 1] = (1, 1, 1)
    for step in range(STEPS):  # a different window table at every step
        windows[step, :, 0] = (1 + step % 3, 1 + step // 3, 1)
    return MaskConfig(model=base.model, canvas=base.canvas, tile=base.tile, text_len=0, steps=STEPS, dense_steps=(),
                      windows=windows)


def _run(pipe):
    return pipe(**tiny_call_kwargs("wan", num_inference_steps=STEPS)).frames[0]


def test_cache_names_match_the_cli():
    from sta_search import caches, options

    assert options.CACHES == caches.CACHE_NAMES


@pytest.mark.parametrize("name", ["first-block", "mag", "taylorseer", "taylorseer-lite"])
def test_all_full_config_with_cache_equals_cache_alone(pipe, name):
    make, _ = _configs()[name]
    pipe.transformer.enable_cache(make())
    alone = _run(pipe)
    pipe.transformer.disable_cache()
    plain = _run(pipe)
    assert np.abs(alone - plain).max() > 0  # the cache really changes the output (else this test is void)
    config = _config(pipe, per_step=False)
    with sta_search.accelerate(pipe, config, backend="reference", cache=make()):  # cache first, then processors
        first = _run(pipe)
    assert not pipe.transformer.is_cache_enabled  # disabled again on exit
    with sta_search.accelerate(pipe, config, backend="reference"):  # processors first, then the cache
        pipe.transformer.enable_cache(make())
        second = _run(pipe)
    pipe.transformer.disable_cache()
    for out in (first, second):
        psnr = fidelity(alone, out).psnr_db
        assert psnr == "inf" or psnr >= 60


@pytest.mark.parametrize("name", ["first-block", "mag", "taylorseer", "taylorseer-lite"])
def test_sta_with_cache_follows_the_step_schedule(pipe, name):
    make, expected_layer1_steps = _configs()[name]
    config = _config(pipe, per_step=True)
    with sta_search.accelerate(pipe, config, backend="reference", cache=make()) as acc:
        acc.attention.trace = []
        _run(pipe)
    trace = acc.attention.trace
    assert trace, "no attention call was traced"
    steps_seen = {step for step, *_ in trace}
    layer1 = {step for step, layer, *_ in trace if layer == 1}
    for step, layer, _, table in trace:
        expected = config.windows[step, layer]
        assert table is not None and np.array_equal(table, np.minimum(expected, (3, 2, 1))), (step, layer)
    assert layer1 != set(range(STEPS)), "the cache skipped nothing: the test would not see a shifted schedule"
    if expected_layer1_steps is not None:
        assert layer1 == expected_layer1_steps
    if name == "first-block":
        assert steps_seen == set(range(STEPS))  # the first block runs at every step


def test_schedule_step_is_the_pipelines(pipe):
    """Each traced call's step is the index of the pipeline's current timestep in the scheduler's list."""
    make, _ = _configs()["mag"]
    config = _config(pipe, per_step=True)
    seen = []
    with sta_search.accelerate(pipe, config, backend="reference", cache=make()) as acc:
        acc.attention.trace = []

        def on_step_end(p, i, t, kwargs):
            seen.append((i, float(t)))
            return kwargs

        pipe(**tiny_call_kwargs("wan", num_inference_steps=STEPS), callback_on_step_end=on_step_end)
    assert [i for i, _ in seen] == list(range(STEPS))
    traced_steps = sorted({step for step, *_ in acc.attention.trace})
    assert traced_steps == [0, 4]  # a call counter would have called the second computed step "1"


def test_compile_with_cache_matches_eager(pipe):
    from sta_search.accelerate import compile_transformer

    make, _ = _configs()["first-block"]
    config = _config(pipe, per_step=True)
    with sta_search.accelerate(pipe, config, backend="reference", cache=make()):
        eager = _run(pipe)
    import copy

    compiled_pipe = copy.deepcopy(pipe)
    torch._dynamo.reset()
    compile_transformer(compiled_pipe.transformer, backend="eager")
    with sta_search.accelerate(compiled_pipe, config, backend="reference", cache=make()) as acc:
        acc.attention.trace = []
        compiled = _run(compiled_pipe)
    psnr = fidelity(eager, compiled).psnr_db
    assert psnr == "inf" or psnr >= 60
    assert {layer for step, layer, *_ in acc.attention.trace if step > 0} == {0}  # still skipping under compile


# ------------------------------------------------------------------------------------------- CLI / generate
@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
    return save_tiny("wan", tmp_path_factory.mktemp("tiny") / "wan")


def _exit_code(*args):
    from sta_search import cli

    old = sys.argv
    sys.argv = ["sta-search", *map(str, args)]
    try:
        cli.run()
    except SystemExit as exc:
        return exc.code
    finally:
        sys.argv = old
    return 0


@pytest.mark.parametrize("cache, words", [("bogus", ["bogus", "not one of"]),
                                          ("pab", ["pab", "two forwards"]),
                                          ("faster", ["faster", "batched"]),
                                          ("mag", ["mag", "calibrated"])])
def test_cache_that_cannot_run_exits_2(wan_folder, tmp_path, capsys, cache, words):
    mask = tmp_path / "mask.yaml"
    _config(tiny_pipeline_cached(), per_step=False).save(mask)
    code = _exit_code("generate", wan_folder, "--mask", mask, "--prompt", "a cat", "--height", 64, "--width", 64,
                      "--frames", 9, "--steps", STEPS, "--cache", cache, "--out", tmp_path / "out")
    err = capsys.readouterr().err
    assert code == 2, err
    assert all(word in err for word in words), err


def test_generate_cli_with_cache_compare_dense(wan_folder, tmp_path, capsys):
    """`generate --cache first-block --compare-dense` with an all-full config: both sides run the cache."""
    import json

    mask = tmp_path / "mask.yaml"
    _config(tiny_pipeline_cached(), per_step=False).save(mask)
    out = tmp_path / "out"
    code = _exit_code("generate", wan_folder, "--mask", mask, "--prompt", "a cat", "--height", 64, "--width", 64,
                      "--frames", 9, "--steps", STEPS, "--cache", "first-block", "--compare-dense",
                      "--backend", "reference", "--out", out)
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["cache"] == "first-block"
    psnr = report["videos"][0]["fidelity"]["psnr_db"]
    assert psnr == "inf" or psnr >= 60


# ------------------------------------------------------------------------------------------- profile / select
def test_profile_records_computed_steps_and_select_skips_them(wan_folder, tmp_path):
    from sta_search.models import load_model
    from sta_search.profile import ProfileSettings, run_profile
    from sta_search.select import SelectOptions, select_windows

    make, _ = _configs()["mag"]
    loaded = load_model(str(wan_folder), device="cpu", dtype=torch.float32)
    settings = ProfileSettings(model=str(wan_folder), prompts=("a cat", "a dog"), steps=STEPS, height=64, width=64,
                               frames=9, tile=TILE, windows=((1, 1, 1), (2, 2, 1), (3, 2, 1)), cache=make())
    profile = run_profile(settings, tmp_path / "profile", loaded=loaded)
    assert profile.header["cache"] == "MagCacheConfig"
    assert profile.header["computed_steps"] == [s in (0, 4) for s in range(STEPS)]
    assert np.isfinite(profile.tensors["error"].numpy()).all()
    selection = select_windows(profile, SelectOptions(budget=0.5, full_steps=0))
    summary, windows = selection.summary, np.asarray(selection.config.windows)
    assert summary["cache_skipped_steps"] == [1, 2, 3, 5]
    assert summary["density"] <= 0.5 + 1e-9
    for skipped, source in ((1, 0), (2, 0), (3, 4), (5, 4)):  # nearest computed step (ties: the earlier)
        assert np.array_equal(windows[skipped], windows[source])
    assert not loaded.transformer.is_cache_enabled


def test_step_caches_run_on_the_bundled_pipelines():
    """tiny/small pipelines enter ``transformer.cache_context`` as WanPipeline does; without it diffusers'
    TaylorSeer hook raised "No cache context is set" on the first forward."""
    import numpy as np

    from sta_search.caches import use_cache
    from sta_search.models import load_model

    loaded = load_model("tiny")
    kwargs = dict(loaded.adapter.pipeline_kwargs(["a big red circle moves left over a gray floor"], 64, 64, 8, 4,
                                                 torch.Generator().manual_seed(0)), output_type="np")
    plain = np.asarray(loaded.pipeline(**kwargs).frames)
    kwargs["generator"] = torch.Generator().manual_seed(0)
    with use_cache(loaded, "taylorseer"):
        cached = np.asarray(loaded.pipeline(**kwargs).frames)
    assert cached.shape == plain.shape and np.isfinite(cached).all()
