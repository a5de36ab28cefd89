"""Configs that carry to other canvases: transfer rules, select --canvas, multi-canvas mask configs."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from sta_search.cli import app
from sta_search.errors import UserError
from sta_search.kernels.geometry import Geometry
from sta_search.maskconfig import MASK_SCHEMA_MULTI, MaskConfig
from sta_search.select import SelectOptions
from sta_search.transfer import (canvas_from_pixels, offset_recall, resolve_from_offsets, same_fraction, same_tiles,
                                 scale_axis)
from synthetic_profile import synthetic_profile

INFO = {"family": "wan", "transformer_class": "WanTransformer3DModel", "num_layers": 2, "num_heads": 3}


def random_config(canvas=(4, 8, 8), tile=(2, 4, 2), steps=5, dense=(0,), seed=0):
    geometry = Geometry(canvas, tile)
    rng = np.random.default_rng(seed)
    windows = np.stack([rng.integers(1, n + 1, size=(steps, 2, 3)) for n in geometry.grid], axis=-1)
    return MaskConfig(dict(INFO), canvas, tile, 0, steps, dense, windows, {"density": 0.0, "budget": 0.3})


# ---------------------------------------------------------------------------------------------- rules
@pytest.mark.parametrize("rule", [same_tiles, same_fraction])
@pytest.mark.parametrize("canvas", [(5, 13, 11), (3, 7, 21), (4, 8, 8)])
def test_config_rules_give_valid_windows_with_exact_density(rule, canvas):
    source = random_config()
    out = rule(source, canvas)
    geometry = Geometry(canvas, source.tile)
    sparse = np.asarray(out.windows)[list(out.sparse_steps)]
    assert out.canvas == canvas and out.tile == source.tile and out.dense_steps == source.dense_steps
    assert sparse.min() >= 1 and (sparse <= np.asarray(geometry.grid)).all()
    expected = np.mean([geometry.density(tuple(w)) for w in sparse.reshape(-1, 3).tolist()])
    assert out.density() == pytest.approx(expected)
    assert out.summary["density"] == pytest.approx(expected, rel=1e-5)
    assert out.summary["transferred_from"]["canvas"] == [4, 8, 8]
    assert out.summary["transferred_from"]["rule"] == rule.__name__
    assert "budget" not in out.summary  # the source's budget does not hold on the new canvas
    if rule is same_tiles:  # same tile counts, clipped
        np.testing.assert_array_equal(sparse, np.minimum(np.asarray(source.windows)[list(out.sparse_steps)], geometry.grid))


def test_same_fraction_axis_rule():
    np.testing.assert_array_equal(scale_axis([1, 2, 3, 4], 4, 6), [1, 3, 5, 6])  # 1.5->1, 3->3, 4.5->5, full->full
    np.testing.assert_array_equal(scale_axis([1, 2, 3], 3, 7), [3, 5, 7])  # 2.33->3, 4.67->5, full
    np.testing.assert_array_equal(scale_axis([1, 2, 4, 6], 6, 3), [1, 1, 3, 3])  # 0.5->1, 1->1, 2->3 (tie up), full
    np.testing.assert_array_equal(scale_axis([2, 4, 9], 4, 4), [2, 4, 4])  # same grid: unchanged (clipped)


def brute_force_recall(affinity, grid, canvas, tile, window):
    """Mean over real query tokens of sum_{keys in window} a(k - q) / sum_{all keys} a(k - q)."""
    geometry = Geometry(canvas, tile)
    starts = geometry.window_starts(window)
    clipped = geometry.clip_window(window)
    tokens = [np.minimum(t, c - np.arange(n) * t) for c, t, n in zip(canvas, tile, grid)]
    total = weight = 0.0
    for q in np.ndindex(*grid):
        inside = full = 0.0
        for k in np.ndindex(*grid):
            a = affinity[tuple(k[d] - q[d] + grid[d] - 1 for d in range(3))]
            full += a
            if all(starts[d][q[d]] <= k[d] < starts[d][q[d]] + clipped[d] for d in range(3)):
                inside += a
        w = tokens[0][q[0]] * tokens[1][q[1]] * tokens[2][q[2]]
        total += w * inside / full
        weight += w
    return total / weight


def test_offset_recall_matches_brute_force_on_a_padded_grid():
    canvas, tile = (5, 7, 9), (2, 4, 2)
    geometry = Geometry(canvas, tile)
    grid = geometry.grid  # (3, 2, 5)
    rng = np.random.default_rng(1)
    affinity = rng.random((2,) + tuple(2 * n - 1 for n in grid))
    text = np.array([0.0, 0.25])
    recall = offset_recall(affinity, text, grid, geometry)
    for window in [(1, 1, 1), (2, 1, 3), (3, 2, 2), (1, 2, 5), (3, 2, 5)]:
        for g in range(2):
            expected = text[g] + (1 - text[g]) * brute_force_recall(affinity[g], grid, canvas, tile, window)
            assert recall[g][tuple(w - 1 for w in window)] == pytest.approx(expected, rel=1e-10)
    assert np.allclose(recall[:, -1, -1, -1], 1.0)


def test_offset_recall_beyond_the_old_grid():
    """A larger new grid: offsets past the old reach take the nearest measured affinity (edge) or none (zero)."""
    old = (2, 2, 2)
    geometry = Geometry((4, 24, 24), (2, 4, 4))  # grid (2, 6, 6)
    rng = np.random.default_rng(2)
    affinity = rng.random((1, 3, 3, 3)) + 0.1
    edge = offset_recall(affinity, np.zeros(1), old, geometry, "edge")
    zero = offset_recall(affinity, np.zeros(1), old, geometry, "zero")
    grid = geometry.grid
    lifted = {}
    for mode in ("edge", "zero"):  # the affinity on the new grid's offsets, built by hand
        a = np.zeros(tuple(2 * n - 1 for n in grid))
        for o in np.ndindex(*a.shape):
            off = [o[d] - (grid[d] - 1) for d in range(3)]
            if mode == "zero" and any(abs(off[d]) > old[d] - 1 for d in range(3)):
                continue
            a[o] = affinity[0][tuple(min(max(off[d], -(old[d] - 1)), old[d] - 1) + old[d] - 1 for d in range(3))]
        lifted[mode] = a
    for window in [(1, 1, 1), (1, 3, 3), (2, 2, 5), (2, 6, 1)]:
        for mode, r in (("edge", edge), ("zero", zero)):
            expected = brute_force_recall(lifted[mode], grid, geometry.canvas, geometry.tile, window)
            assert r[0][tuple(w - 1 for w in window)] == pytest.approx(expected, rel=1e-10)
    assert (zero[0, :, :3, :3] > edge[0, :, :3, :3]).sum() > 0  # the modes differ
    assert zero[0, -1, 2, 2] == pytest.approx(1.0)  # reach +-1 tile covers every measured offset: all mass
    for r in (edge, zero):  # recall grows with the window on every axis
        assert (np.diff(r, axis=2) >= -1e-12).all() and (np.diff(r, axis=3) >= -1e-12).all()
    with pytest.raises(UserError):
        offset_recall(affinity, np.zeros(1), old, geometry, "bogus")


@pytest.mark.parametrize("canvas", [(5, 13, 11), (3, 5, 7)])
def test_resolve_meets_the_budget_on_the_new_canvas(canvas):
    profile = synthetic_profile(3)
    selection = resolve_from_offsets(profile, canvas, SelectOptions(budget=0.45))
    config = selection.config
    geometry = Geometry(canvas, profile.tile)
    sparse = np.asarray(config.windows)[list(config.sparse_steps)].reshape(-1, 3)
    assert config.canvas == canvas and (sparse <= np.asarray(geometry.grid)).all() and sparse.min() >= 1
    exact = np.mean([geometry.density(tuple(w)) for w in sparse.tolist()])
    assert exact <= 0.45 + 1e-9 and exact == pytest.approx(config.density())
    assert config.summary["density"] == pytest.approx(exact, rel=1e-5)
    assert config.summary["transferred_from"] == {"canvas": [4, 8, 8], "tile": [2, 4, 2], "rule": "resolve",
                                                  "beyond_old_grid": "edge"}
    assert config.dense_steps == (0, 1)  # select's default: round(0.24 * 8)


def test_resolve_takes_the_per_step_budget_scope():
    profile, canvas = synthetic_profile(3), (5, 13, 11)
    geometry = Geometry(canvas, profile.tile)
    config = resolve_from_offsets(profile, canvas, SelectOptions(budget=0.45, budget_scope="step")).config
    per_step = [np.mean([geometry.density(tuple(w)) for w in np.asarray(config.windows)[s].reshape(-1, 3).tolist()])
                for s in config.sparse_steps]
    assert max(per_step) <= 0.45 + 1e-9 and config.summary["budget_scope"] == "step"
    with pytest.raises(UserError, match="needs --granularity step"):
        resolve_from_offsets(profile, canvas, SelectOptions(budget=0.45, budget_scope="step", granularity="layer"))


def test_resolve_takes_the_step_weights():
    profile, canvas = synthetic_profile(3), (5, 13, 11)
    geometry = Geometry(canvas, profile.tile)
    P = len(profile.profile_steps)

    def late_density(config):
        late = [s for s in config.sparse_steps if s >= config.steps - 2]
        return np.mean([geometry.density(tuple(w)) for s in late
                        for w in np.asarray(config.windows)[s].reshape(-1, 3).tolist()])

    plain = resolve_from_offsets(profile, canvas, SelectOptions(budget=0.45)).config
    heavy_late = resolve_from_offsets(profile, canvas, SelectOptions(budget=0.45,
                                                                     step_weights=(1.0,) * (P - 1) + (50.0,))).config
    assert heavy_late.summary["step_weights"][-1] == 50.0 and late_density(heavy_late) > late_density(plain)
    with pytest.raises(UserError, match=f"1 given, the profile has {P}"):
        resolve_from_offsets(profile, canvas, SelectOptions(budget=0.45, step_weights=(1.0,)))


def test_canvas_from_pixels():
    header = synthetic_profile(1).header  # canvas (4, 8, 8), 128x128 px, 13 frames, patch (1, 2, 2): VAE 8 / 4
    assert canvas_from_pixels(header, None, None, None) == (4, 8, 8)
    assert canvas_from_pixels(header, 192, 256, 21) == (6, 12, 16)
    with pytest.raises(UserError, match="--width 100"):
        canvas_from_pixels(header, None, 100, None)


# ---------------------------------------------------------------------------------------------- multi-canvas files
def test_multi_canvas_round_trip_and_for_canvas(tmp_path):
    a, b = random_config(), random_config((5, 13, 11), seed=1)
    multi = MaskConfig.combine([a, b])
    assert multi.canvases == ((4, 8, 8), (5, 13, 11))
    path = tmp_path / "multi.yaml"
    multi.save(path)
    doc = yaml.safe_load(path.read_text())
    assert doc["schema"] == MASK_SCHEMA_MULTI and doc["entries"] == {"canvases": 2} and len(doc["canvases"]) == 2
    loaded = MaskConfig.load(path)
    assert loaded == multi and loaded.for_canvas((5, 13, 11)) == b and loaded.for_canvas([4, 8, 8]) == a
    with pytest.raises(UserError) as info:
        loaded.for_canvas((8, 24, 24))
    message = str(info.value)
    assert "[8, 24, 24]" in message and "[4, 8, 8]" in message and "[5, 13, 11]" in message
    with pytest.raises(UserError, match=r"canvas: config has \[4, 8, 8\] and \[5, 13, 11\], run has \[9, 9, 9\]"):
        loaded.validate(INFO, (9, 9, 9), 5)
    loaded.validate(INFO, (5, 13, 11), 5)
    # single-canvas files keep the v2 form
    single = tmp_path / "single.yaml"
    a.save(single)
    assert yaml.safe_load(single.read_text())["schema"] == "sta-search/mask/v2" and MaskConfig.load(single) == a
    with pytest.raises(UserError, match="two mask configs for canvas"):
        MaskConfig.combine([a, multi])
    assert MaskConfig.combine([multi, a.replace(summary={"x": 1})], replace=True).for_canvas((4, 8, 8)).summary == {"x": 1}


def _multi_text():
    return MaskConfig.combine([random_config(), random_config((5, 13, 11), seed=1)]).to_yaml()


@pytest.mark.parametrize("edit, match", [
    (lambda t: t.replace("canvas: [5, 13, 11]", "canvas: [4, 8, 8]"), r"canvases\[1\] and canvases\[0\] are both for canvas \[4, 8, 8\]"),
    (lambda t: t[:t.index("- canvas: [5, 13, 11]")], "entries.canvases says 2 canvas entries, the file holds 1"),
    (lambda t: t.replace("entries: {canvases: 2}", "entries: {canvases: 3}"), "entries.canvases says 3"),
    (lambda t: t.replace("schema: sta-search/mask/v3", "schema: sta-search/mask/v2"), "needs 'sta-search/mask/v3'"),
    (lambda t: t.replace("  tile: [2, 4, 2]\n", "  tile: [2, 4, 2]\n  model: {}\n", 1), r"canvases\[0\] repeats model"),
    (lambda t: t.replace("- canvas: [5, 13, 11]", "- canvas: &c [5, 13, 11]"), "anchors"),
    (lambda t: t.replace("  steps: 5\n", "  steps: 5\n  steps: 6\n", 1), "duplicate key 'steps'"),
    (lambda t: t.replace("  entries: {layers", "  nope: {layers", 1), r"canvases\[0\]: .*missing entries"),
    (lambda t: t.replace("canvas: [5, 13, 11]", "canvas: [5, 13, 0]"), r"canvases\[1\]: canvas must be three positive"),
    (lambda t: t + "extra: 1\n", "unknown keys extra"),
    (lambda t: t.replace("num_layers: 2, num_heads: 3", "num_layers: 20, num_heads: 30").replace("  steps: 5\n", "  steps: 5000\n"),
     "summed over the canvas entries = 6000000"),  # each entry (3,000,000) is within the bound, the file is not
])
def test_multi_canvas_hardening(edit, match):
    text = edit(_multi_text())
    with pytest.raises(UserError, match=match):
        MaskConfig.loads(text)


# ---------------------------------------------------------------------------------------------- CLI
def test_select_canvas_cli(tmp_path):
    synthetic_profile(3).save(tmp_path / "prof")
    runner = CliRunner()
    multi = tmp_path / "multi.yaml"
    base = ["select", str(tmp_path / "prof"), "--budget", "0.45"]
    result = runner.invoke(app, base + ["--add-to", str(multi)])
    assert result.exit_code == 0, result.output
    for rule, canvas in (("resolve", "5,13,11"), ("same_fraction", "3,5,7"), ("same_tiles", "6,16,16")):
        out = tmp_path / f"{rule}.yaml"
        result = runner.invoke(app, base + ["--canvas", canvas, "--transfer", rule, "--out", str(out)])
        assert result.exit_code == 0, result.output
        config = MaskConfig.load(out)
        assert config.canvas == tuple(int(c) for c in canvas.split(","))
        assert config.summary["transferred_from"]["rule"] == rule
        assert runner.invoke(app, ["merge", str(multi), str(out), "--out", str(multi), "--force"]).exit_code == 0
    assert MaskConfig.load(multi).canvases == ((4, 8, 8), (5, 13, 11), (3, 5, 7), (6, 16, 16))
    # pixel sizes with the profile header's patch and VAE factors; --add-to replaces that canvas's entry
    result = runner.invoke(app, base + ["--height", "192", "--frames", "21", "--add-to", str(multi)])
    assert result.exit_code == 0, result.output
    assert MaskConfig.load(multi).canvases[-1] == (6, 12, 8)
    result = runner.invoke(app, ["select", "--from-mask", str(tmp_path / "same_tiles.yaml"), "--canvas", "4,8,8",
                                 "--out", str(tmp_path / "back.yaml")])
    assert result.exit_code == 0, result.output
    assert MaskConfig.load(tmp_path / "back.yaml").summary["transferred_from"]["rule"] == "same_fraction"
    for args, match in ((["--canvas", "4,8,8", "--height", "64"], "not both"),
                        (["--transfer", "bogus", "--canvas", "4,8,9"], "--transfer 'bogus'"),
                        (["--transfer", "resolve"], "--transfer needs --canvas"),
                        (["--canvas", "4,8"], "--canvas")):
        result = runner.invoke(app, base + args)
        assert isinstance(result.exception, UserError) and match in str(result.exception), (args, result.output)
    result = runner.invoke(app, ["select", "--from-mask", str(multi), "--canvas", "4,8,8", "--transfer", "resolve"])
    assert isinstance(result.exception, UserError) and "give a profile" in str(result.exception)
    done = subprocess.run([sys.executable, "-m", "sta_search", *base, "--canvas", "4,8,8", "--height", "64"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "not both" in done.stderr and "Traceback" not in done.stderr


# ---------------------------------------------------------------------------------------------- generate
@pytest.fixture(scope="module")
def tiny_wan(tmp_path_factory):
    from tiny_pipes import save_tiny

    return save_tiny("wan", tmp_path_factory.mktemp("tiny") / "wan")


def _uniform(folder, canvas, window=(1, 1, 1), steps=1):
    from sta_search.models import load_model

    loaded = load_model(str(folder), device="cpu", dtype=torch.float32)
    return MaskConfig.uniform(loaded.adapter.info(loaded.transformer), canvas, (1, 4, 4), 0, steps, window)


def test_generate_refuses_another_canvas_and_runs_a_multi_canvas_file(tiny_wan, tmp_path):
    from sta_search.generate import GenerateSettings, generate

    # 128 x 128 px, 9 frames -> canvas (3, 8, 8) on the tiny Wan pipeline of tests/tiny_pipes.py
    other = _uniform(tiny_wan, (3, 16, 16))
    other.save(tmp_path / "other.yaml")
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    result = subprocess.run([sys.executable, "-m", "sta_search", "generate", str(tiny_wan), "--mask",
                             str(tmp_path / "other.yaml"), "--prompt", "a cat", "--height", "128", "--width", "128",
                             "--frames", "9", "--steps", "1", "--backend", "reference", "--out", str(tmp_path / "o1")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "[3, 16, 16]" in result.stderr and "[3, 8, 8]" in result.stderr and "Traceback" not in result.stderr

    multi = MaskConfig.combine([other, _uniform(tiny_wan, (3, 8, 8), window=(1, 1, 1))])
    multi.save(tmp_path / "multi.yaml")
    report = generate(GenerateSettings(model=str(tiny_wan), mask=str(tmp_path / "multi.yaml"), prompts=("a cat",),
                                       out=str(tmp_path / "o2"), height=128, width=128, frames=9, steps=1,
                                       backend="reference"))
    assert report["mask"]["canvas"] == [3, 8, 8]
    assert report["density_used"]["per_step"][0] < 1.0  # the (3, 8, 8) entry's sparse window ran
    assert report["videos"][0]["sta"]["attention_calls"]["sparse"] > 0
