"""Study v2 of bench/quality.py and bench/locality.py (issue #15): metrics against scikit-image, the paper-style
window rule, the small model's prompt split, the shared dense prefix, the v2 targets and the locality frontier
(synthetic profiles and the bundled tiny model at a few steps; no GPU)."""

from __future__ import annotations

import importlib.util
import itertools
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_profile import synthetic_profile  # noqa: E402

from sta_search.kernels.geometry import Geometry  # noqa: E402
from sta_search.video import fidelity  # noqa: E402

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"{name}_bench", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quality():
    return _load("quality")


@pytest.fixture(scope="module")
def locality():
    return _load("locality")


def test_video_metrics_match_scikit_image(quality, seed):
    gen = torch.Generator().manual_seed(seed)
    ref = torch.rand(3, 5, 3, 20, 24, generator=gen)
    video = (ref + 0.08 * torch.randn(ref.shape, generator=gen)).clamp(0, 1)
    video[1, 2] = ref[1, 2]  # one identical frame: PSNR inf for it in both
    video[2] = ref[2]  # an identical video
    ours = quality.video_metrics(video, ref)
    for i in range(3):
        expected = fidelity(video[i].permute(0, 2, 3, 1).numpy(), ref[i].permute(0, 2, 3, 1).numpy())
        assert ours[i]["psnr_db"] == pytest.approx(expected.psnr_db, rel=1e-9, abs=1e-9) or \
            (math.isinf(ours[i]["psnr_db"]) and math.isinf(expected.psnr_db))
        assert ours[i]["ssim"] == pytest.approx(expected.ssim, abs=1e-9)
    assert math.isinf(ours[2]["tpsnr_db"]) and ours[2]["flicker_ratio"] == pytest.approx(1.0)
    # temporal-difference PSNR by hand
    x = (video[0].double() * 255).round()
    y = (ref[0].double() * 255).round()
    dx, dy = x[1:] - x[:-1], y[1:] - y[:-1]
    assert ours[0]["tpsnr_db"] == pytest.approx(10 * math.log10(255 ** 2 / float(((dx - dy) ** 2).mean())))
    assert ours[0]["flicker_ratio"] == pytest.approx(float(dx.abs().mean() / dy.abs().mean()))
    assert ours[0]["flicker_ratio"] > 1  # added noise flickers


def test_temporal_psnr_ignores_a_static_offset(quality):
    ref = torch.rand(1, 6, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 0.8
    shifted = ref + 20 / 255  # the same motion, every frame brighter by 20 levels
    m = quality.video_metrics(shifted, ref)[0]
    assert m["psnr_db"] < 25 and math.isinf(m["tpsnr_db"])


def test_paper_window_rule_on_the_small_grid(quality):
    g = Geometry((16, 24, 40), (4, 4, 4))
    assert g.grid == (4, 6, 10)
    picks = {d: quality.paper_window(g, d) for d in (0.1, 0.2, 0.3, 0.42)}
    assert picks[0.2] == (3, 3, 5) and picks[0.42] == (4, 5, 5)
    for d, w in picks.items():
        assert all(x % 2 == 1 or x == n for x, n in zip(w, g.grid))
        assert g.density(w) <= d + 1e-12
        # nothing odd/whole-axis and denser fits the budget
        sizes = [[k for k in range(1, n + 1) if k % 2 or k == n] for n in g.grid]
        best = max(g.density(v) for v in itertools.product(*sizes) if g.density(v) <= d + 1e-12)
        assert g.density(w) == pytest.approx(best)


def test_small_shortlist_is_valid_on_its_grid(quality):
    g = Geometry((16, 24, 40), (4, 4, 4))
    for w in quality.SMALL_SHORTLIST:
        assert g.clip_window(w) == tuple(w)
        assert all(x % 2 == 1 or x == n for x, n in zip(w, g.grid)), w
    assert g.is_full(quality.SMALL_SHORTLIST[-1])
    # a uniform window fits under every study density
    for d in quality.SMALL_DENSITIES:
        assert any(g.density(w) <= d for w in quality.SMALL_SHORTLIST[:-1])


def test_small_prompt_split_is_disjoint_and_held_out(quality):
    from sta_search.small import data

    training, heldout = quality.prompts(4, 16, split=3, kind="small")
    assert len(set(training)) == 4 and len(set(heldout)) == 16
    assert not set(training) & set(heldout)
    assert all(data.is_held_out(p) for p in heldout) and not any(data.is_held_out(p) for p in training)
    assert quality.prompts(4, 16, split=3, kind="small") == (training, heldout)
    assert quality.prompts(4, 16, split=4, kind="small")[1] != heldout


def test_v2_targets_and_aggregate(quality):
    def entry(psnr, density=0.2):
        return {"density": density, "mean_psnr_db": psnr, "mean_ssim": 0.9, "mean_tpsnr_db": psnr + 1,
                "per_prompt": [{"prompt": "p", "psnr_db": psnr, "ssim": 0.9}]}

    per_seed = {str(s): {"configs": {
        "solver-error-step@0.2": entry(30.0 + s), "uniform@0.2": entry(28.0 + s),
        "solver-error-step@argmin-capped0.2": entry(29.0), "argmin-capped@0.2": entry(28.8),
        "paper-fixed@0.2": entry(27.0), "solver-error-step@0.42": entry(31.0 + s, 0.42)}} for s in (0, 1)}
    results = {"per_seed": per_seed}
    results["aggregate"] = quality.aggregate(per_seed, [0.2, 0.42], "v2")
    diffs = results["aggregate"]["differences"]
    assert diffs["solver_minus_paper_fixed@0.2"]["psnr_db"]["mean"] == pytest.approx(3.5)
    assert diffs["solver_minus_best_uniform@0.2"]["tpsnr_db"]["mean"] == pytest.approx(2.0)
    targets = quality.v2_targets(results)
    assert targets["solver_minus_best_uniform@0.2"]["holds"] is True
    assert targets["solver_minus_best_uniform@0.2"]["value_db"] == pytest.approx(2.0)
    assert targets["solver_minus_argmin_capped_matched@0.2"]["holds"] is False  # +0.2 < +0.5
    assert targets["solver_minus_best_uniform@0.3"]["holds"] is None  # not run
    assert targets["solver_psnr@0.42_vs_paper"]["value_db"] == pytest.approx(31.5)
    assert targets["solver_psnr@0.42_vs_paper"]["holds"] is True


def test_v2_configs_respect_budgets(quality, seed):
    profile = synthetic_profile(prompts=3, rng=seed, canvas=(8, 12, 40), tile=(2, 2, 4),
                                error_windows=((1, 1, 1), (1, 3, 3), (3, 3, 3), (3, 3, 5), (3, 5, 5), (4, 6, 10)))
    info = type("Info", (), {k: profile.model[k] for k in ("family", "transformer_class", "num_layers", "num_heads")})
    configs = quality.build_configs_v2(profile, info, [0.2, 0.3], extra_objectives=("squared-error",),
                                       solver_variants=("budget-per-step", "layer"))
    names = [c[0] for c in configs]
    assert names[:3] == ["solver-error-step@0.3", "uniform@0.3", "paper-fixed@0.3"]
    assert names[3:8] == ["argmin-capped@0.3", "solver-error-step@argmin-capped0.3",
                          "solver-squared-error-step@argmin-capped0.3", "solver-error-step-per-step@argmin-capped0.3",
                          "solver-error-layer@argmin-capped0.3"]
    by_name = {c[0]: c[3] for c in configs}
    assert by_name["solver-squared-error-step@argmin-capped0.3"].summary["objective"] == "squared-error"
    assert by_name["solver-error-step-per-step@argmin-capped0.3"].summary["budget_scope"] == "step"
    assert by_name["solver-error-layer@argmin-capped0.3"].summary["granularity"] == "layer"
    labels = [c[0] for c in quality.comparisons([0.3], "v2")]
    assert "solver_error_step_per_step_minus_argmin_capped_matched@0.3" in labels
    for name, _, target, config in configs:
        assert config.dense_steps == configs[0][3].dense_steps
        if target is not None:
            assert config.density() <= target + 1e-6, name
        if name.startswith("paper-fixed"):
            rows = {tuple(w) for w in config.windows[list(config.sparse_steps)].reshape(-1, 3).tolist()}
            assert rows == {quality.paper_window(profile.geometry, target)}


def test_shared_dense_prefix_continues_the_same_trajectory(quality):
    """Configs that start from the cached dense prefix give the videos of a run from the noise."""
    from sta_search.accelerate import MaskAttention
    from sta_search.maskconfig import MaskConfig
    from sta_search.models import load_model
    from sta_search.tiny import recommended_settings
    import dataclasses

    loaded = load_model("tiny", "cpu", torch.float32)
    settings = dataclasses.replace(recommended_settings(), steps=3)
    canvas = tuple(loaded.canvas(settings.height, settings.width, settings.frames))
    info = loaded.info
    config = MaskConfig.uniform(info, canvas, settings.tile, 0, 3, (1, 1, 1), dense_steps=(0,))
    prompts = ["a red circle moves left", "a blue square bounces"][:2]
    shared = quality.HeldoutGenerator(loaded, settings, prompts, 3, 5, prefix_steps=1)
    fresh = quality.HeldoutGenerator(loaded, settings, prompts, 3, 5, prefix_steps=0)
    a = shared.run(MaskAttention(config, backend="reference"), dense_steps=(0,))
    b = fresh.run(MaskAttention(config, backend="reference"), dense_steps=(0,))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    from sta_search.models import dense_attention

    d = shared.run(dense_attention, dense_steps=(0,))
    assert (a - d).abs().max() > 1e-3  # the sparse steps did change the video


def test_locality_frontier_and_counts(locality, seed):
    profile = synthetic_profile(prompts=3, rng=seed, canvas=(8, 12, 40), tile=(2, 2, 4),
                                error_windows=((1, 1, 1), (3, 3, 3), (4, 6, 10)))
    result = locality.analyse(profile)
    kept = np.asarray(result["mass_kept"])
    dens = np.asarray(result["window_density"])
    L, H, K = kept.shape
    assert K == int(np.prod(profile.grid))
    curve = np.asarray(result["frontier"]["all_windows"])
    assert (np.diff(curve, axis=-1) >= -1e-12).all()  # more density never keeps less
    assert curve[..., -1] == pytest.approx(np.ones((L, H)), abs=1e-3)  # the full window keeps everything
    # brute force: heads keeping >= 80 % at density <= 0.2
    best = np.array([[max(kept[l, h, k] for k in range(K) if dens[k] <= 0.2 + 1e-12) for h in range(H)]
                     for l in range(L)])
    assert result["summary"]["heads_keeping_80pct_at_density_le_0.2"] == int((best >= 0.8).sum())
    assert result["summary"]["heads_keeping_80pct_at_density_le_0.2_odd_windows"] <= \
        result["summary"]["heads_keeping_80pct_at_density_le_0.2"]
    for row in result["best_window_at"]["0.2"]:
        for e in row:
            assert e["density"] <= 0.2 + 1e-6
    assert set(result["spread_across_prompts"]) == {"1,1,1", "3,3,3"}


def test_paper_matched_window(locality):
    # small canvas (16, 24, 40), tile 4: (0.4*16, 0.5*24, 0.3*40) / 4 = (1.6, 3, 3) tiles -> (1, 3, 3)
    assert locality.paper_matched_window(Geometry((16, 24, 40), (4, 4, 4))) == (1, 3, 3)
    # HunyuanVideo 720p itself, tile (6, 8, 8): (2, 3, 3) tiles -> nearest odd (1 or 3: ties to the smaller), 3, 3
    assert locality.paper_matched_window(Geometry((30, 48, 80), (6, 8, 8)))[1:] == (3, 3)


def test_step_calibrated_variant_takes_the_measured_weights(quality, seed):
    profile = synthetic_profile(prompts=3, rng=seed, steps=10, profile_steps=[0, 3, 6, 9], canvas=(8, 12, 40),
                                tile=(2, 2, 4),
                                error_windows=((1, 1, 1), (1, 3, 3), (3, 3, 3), (3, 3, 5), (3, 5, 5), (4, 6, 10)))
    info = type("Info", (), {k: profile.model[k] for k in ("family", "transformer_class", "num_layers", "num_heads")})
    weights = (1.0, 3.0, 1.0, 0.25)
    configs = quality.build_configs_v2(profile, info, [0.3], solver_variants=("step-calibrated",),
                                       variant_options={"step-calibrated": dict(step_weights=weights)})
    by_name = {c[0]: c for c in configs}
    assert [c[0] for c in configs][:2] == ["solver-error-step-calibrated@0.3", "solver-error-step@0.3"]
    for name in ("solver-error-step-calibrated@0.3", "solver-error-step-calibrated@argmin-capped0.3"):
        _, _, target, config = by_name[name]
        assert config.summary["step_weights"] == list(weights) and config.density() <= target + 1e-6
    assert "step_weights" not in by_name["solver-error-step@0.3"][3].summary
    per_seed = {"0": {"configs": {
        "solver-error-step-calibrated@argmin-capped0.3": {"density": 0.3, "mean_psnr_db": 25.0, "mean_ssim": 0.9,
                                                          "per_prompt": [{"prompt": "p", "psnr_db": 25.0, "ssim": 0.9}]},
        "argmin-capped@0.3": {"density": 0.3, "mean_psnr_db": 24.6, "mean_ssim": 0.9,
                              "per_prompt": [{"prompt": "p", "psnr_db": 24.6, "ssim": 0.9}]}}}}
    results = {"per_seed": per_seed, "aggregate": quality.aggregate(per_seed, [0.3], "v2")}
    target = quality.v2_targets(results)["solver_error_step_calibrated_minus_argmin_capped_matched@0.3"]
    assert target["value_db"] == pytest.approx(0.4) and target["holds"] is False and target["holds_in_seeds"] == "0/1"


def test_merge_of_seed_groups_equals_one_study(quality):
    merge = _load("quality_merge").merge

    def entry(psnr, density=0.2):
        return {"density": density, "mean_psnr_db": psnr, "mean_ssim": 0.9, "mean_tpsnr_db": psnr + 1,
                "per_prompt": [{"prompt": "p", "psnr_db": psnr, "ssim": 0.9}]}

    rng = np.random.default_rng()
    settings = {"densities": [0.2, 0.42], "steps": 16}
    per_seed = {str(s): {"settings": {**settings, "generation_seed": s, "profile_seed": s}, "configs": {
        "solver-error-step@0.2": entry(30.0 + rng.normal()), "uniform@0.2": entry(28.0 + rng.normal()),
        "solver-error-step@argmin-capped0.2": entry(29.0 + rng.normal()), "argmin-capped@0.2": entry(28.8),
        "paper-fixed@0.2": entry(27.0), "solver-error-step@0.42": entry(31.0 + rng.normal(), 0.42)}}
        for s in range(5)}
    head = {"schema": "sta-search/quality/v2", "plan": "v2", "model": "small", "model_kind": "small",
            "vary_prompts": True, "versions": {"torch": "x"}, "device": {"name": "gpu"}}
    part_a = {**head, "per_seed": {s: per_seed[s] for s in ("0", "1")}, "timings": {"total_s": 1.0}}
    part_b = {**head, "per_seed": {s: per_seed[s] for s in ("2", "3", "4")}, "timings": {"total_s": 2.0}}

    merged = merge([part_b, part_a], ["b.json", "a.json"])
    whole = {"per_seed": per_seed, "aggregate": quality.aggregate(per_seed, [0.2, 0.42], "v2")}
    assert merged["seeds"] == [0, 1, 2, 3, 4]
    assert merged["aggregate"] == whole["aggregate"]
    assert merged["targets"] == quality.v2_targets(whole)
    assert merged["timings"]["total_s"] == 3.0

    with pytest.raises(ValueError, match="seed 1 is also in"):
        merge([part_a, {**head, "per_seed": {"1": per_seed["1"]}}], ["a.json", "c.json"])
    changed = {"9": {**per_seed["4"], "settings": {**settings, "steps": 8}}}
    with pytest.raises(ValueError, match="settings differ in steps"):
        merge([part_a, {**head, "per_seed": changed}], ["a.json", "d.json"])
    with pytest.raises(ValueError, match="device"):
        merge([part_a, {**part_b, "device": {"name": "other"}}], ["a.json", "e.json"])
