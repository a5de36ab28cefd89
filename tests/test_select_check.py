"""`select`'s held-out check (sta_search/select_check.py): too-small profiles warn, large consistent ones do not."""

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from sta_search.artifacts import Profile
from sta_search.cli import app
from sta_search.maskconfig import MaskConfig
from sta_search.select import SelectOptions, can_trust_profile, select_windows
from sta_search.select_check import (ABSOLUTE_FLOOR, DEFAULT_TOLERANCE, check_heldout,
                                     subset_profile)
from synthetic_profile import synthetic_profile


def profile_of(errors: np.ndarray, base: Profile) -> Profile:
    """`base`'s header and sums with these per-prompt errors ``(N, P, L, H, K)`` (recall: 1 - error^2)."""
    errors = np.clip(errors, 0, None)
    full = [i for i, w in enumerate(base.error_windows) if base.geometry.is_full(w)]
    errors[..., full] = 0.0
    header = dict(base.header, prompts=[f"prompt {i}" for i in range(len(errors))])
    tensors = dict(base.tensors, error=torch.from_numpy(errors).float(),
                   recall=torch.from_numpy(np.clip(1 - errors**2, 0, 1)).float())
    return Profile(header, tensors)


def consistent_profile(prompts: int, jitter: float, seed: int = 0) -> Profile:
    """Every prompt has the same planted errors up to a small multiplicative jitter."""
    base = synthetic_profile(prompts=1, rng=seed)
    rng = np.random.default_rng(seed + 100)
    error = base.tensors["error"].double().numpy()[0]
    return profile_of(error[None] * rng.uniform(1 - jitter, 1 + jitter, size=(prompts, *error.shape)), base)


def disagreeing_profile(seed: int = 0) -> Profile:
    """Two prompts whose heads disagree on which windows are cheap (prompt 1 = prompt 0 with heads and layers
    permuted), like two prompts with very different attention locality."""
    base = synthetic_profile(prompts=1, rng=seed, num_layers=3, num_heads=4)
    error = base.tensors["error"].double().numpy()[0]  # (P, L, H, K)
    other = np.roll(error[:, ::-1, ::-1], 1, axis=0)
    return profile_of(np.stack([error, other]), base)


def test_two_disagreeing_prompts_warn():
    selection = select_windows(disagreeing_profile(), SelectOptions(budget=0.3))
    summary = selection.summary
    assert summary["folds"] == "leave-one-out (2)"
    assert summary["heldout_error"] > summary["cv_insample_error"] * (1 + DEFAULT_TOLERANCE)
    assert summary["heldout_gap"] > DEFAULT_TOLERANCE
    assert "too small to trust" in summary["profile_warning"]
    assert f"{summary['heldout_error']:.4g}" in summary["profile_warning"]  # names the numbers
    ok, why = can_trust_profile(disagreeing_profile(), SelectOptions(budget=0.3))
    assert not ok and "held-out error" in why


def test_one_prompt_warns():
    summary = select_windows(synthetic_profile(prompts=1), SelectOptions(budget=0.3)).summary
    assert summary["heldout_error"] is None and summary["heldout_gap"] is None
    assert "1 prompt" in summary["profile_warning"]


@pytest.mark.parametrize("strategy", ["budget", "argmin"])
def test_large_consistent_profile_does_not_warn(strategy):
    profile = consistent_profile(prompts=24, jitter=0.03)
    options = SelectOptions(budget=0.3) if strategy == "budget" else SelectOptions(strategy="argmin")
    summary = select_windows(profile, options).summary
    assert summary["heldout_error"] is not None
    assert abs(summary["heldout_gap"]) < DEFAULT_TOLERANCE / 2
    assert "profile_warning" not in summary
    assert can_trust_profile(profile, options)[0]


def test_noisy_profile_warns_less_as_it_grows():
    """The same noise level: the gap shrinks with more prompts (it is the selection's optimism)."""
    gaps = [np.mean([select_windows(consistent_profile(n, jitter=0.5, seed=s), SelectOptions(budget=0.3))
                     .summary["heldout_gap"] for s in range(3)]) for n in (2, 6, 24)]
    assert gaps[0] > gaps[1] > gaps[2] > 0
    assert gaps[0] > DEFAULT_TOLERANCE


def test_check_thresholds():
    base = {"prompts": 4, "folds": "leave-one-out (4)"}
    assert check_heldout({**base, "heldout_error": 0.111, "cv_insample_error": 0.1}).warning is not None
    assert check_heldout({**base, "heldout_error": 0.109, "cv_insample_error": 0.1}).ok
    assert check_heldout({**base, "heldout_error": 0.109, "cv_insample_error": 0.1}, tolerance=0.05).warning is not None
    # large ratio but below the absolute floor: noise
    assert check_heldout({**base, "heldout_error": 0.001 + ABSOLUTE_FLOOR * 0.9, "cv_insample_error": 0.001}).ok
    assert check_heldout({**base, "heldout_error": 0.001 + ABSOLUTE_FLOOR * 1.1, "cv_insample_error": 0.001}).warning
    # held-out better than in-sample: fine
    assert check_heldout({**base, "heldout_error": 0.08, "cv_insample_error": 0.1}).ok
    # not computable with 2+ prompts (e.g. recall over all windows): no warning, no gap
    check = check_heldout({**base, "heldout_error": None, "cv_insample_error": None})
    assert check.ok and check.gap is None


def test_cli_warns_exits_0_and_records_the_numbers(tmp_path):
    disagreeing_profile().save(tmp_path / "p")
    out = tmp_path / "mask.yaml"
    result = CliRunner().invoke(app, ["select", str(tmp_path / "p"), "--budget", "0.3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "too small to trust" in result.output
    summary = yaml.safe_load(out.read_text())["summary"]
    assert summary["heldout_gap"] > DEFAULT_TOLERANCE and summary["heldout_error"] > summary["cv_insample_error"]
    config = MaskConfig.load(out)  # still a valid mask config
    assert config.summary["profile_warning"] == summary["profile_warning"]
    # a looser tolerance silences it
    result = CliRunner().invoke(app, ["select", str(tmp_path / "p"), "--budget", "0.3", "--out", str(out), "--force",
                                      "--heldout-tolerance", "100"])
    assert result.exit_code == 0 and "warning:" not in result.output


def test_cli_quiet_for_a_large_consistent_profile(tmp_path):
    consistent_profile(prompts=24, jitter=0.03).save(tmp_path / "p")
    result = CliRunner().invoke(app, ["select", str(tmp_path / "p"), "--budget", "0.3", "--out", str(tmp_path / "m.yaml")])
    assert result.exit_code == 0, result.output
    assert "warning:" not in result.output


def test_subset_profile_keeps_exactly_the_rows(tmp_path):
    profile = synthetic_profile(prompts=4, rng=3, steps=8, profile_steps=list(range(8)))
    sub = subset_profile(profile, prompts=[0, 1], steps=[0, 2, 4, 6])
    assert sub.prompts == profile.prompts[:2] and sub.profile_steps == (0, 2, 4, 6)
    assert torch.equal(sub.tensors["error"], profile.tensors["error"][:2][:, [0, 2, 4, 6]])
    assert torch.equal(sub.tensors["recall_sum"], profile.tensors["recall_sum"][[0, 2, 4, 6]])
    assert torch.equal(sub.tensors["count"], profile.tensors["count"][[0, 2, 4, 6]])
    sub.save(tmp_path / "s")
    assert Profile.load(tmp_path / "s").profile_steps == (0, 2, 4, 6)
    # select maps every sparse step to the nearest kept profiled step: odd steps use the even ones' statistics
    # (argmin: one choice per group from its costs alone, so equal statistics give equal windows)
    table = select_windows(sub, SelectOptions(strategy="argmin", full_steps=2)).config.windows
    assert (table[3] == table[2]).all() and (table[5] == table[4]).all() and (table[7] == table[6]).all()
    from sta_search.errors import UserError

    with pytest.raises(UserError, match="not profiled"):
        subset_profile(sub, steps=[1])


# ------------------------------------------------------------------------ bench/profiling_amount.py helpers
def _bench():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "bench" / "profiling_amount.py"
    spec = importlib.util.spec_from_file_location("profiling_amount_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_points_cover_both_curves_ends_first():
    bench = _bench()
    order = bench.points([1, 2, 4, 8, 16], [1, 2, 5, 10])
    assert order[0] == (16, 1) and len(order) == len(set(order)) == 8
    assert set(order) == {(n, 1) for n in (1, 2, 4, 8, 16)} | {(16, s) for s in (1, 2, 5, 10)}
    assert order[1:3] == [(1, 1), (16, 10)]  # the cheapest end of each curve right after the reference


def test_bench_recommendation_reads_the_curves():
    bench = _bench()
    name = bench._name
    pts = {name(16, 1): {"mean_psnr_db": 30.0, "heldout_error": 0.100},
           name(8, 1): {"mean_psnr_db": 29.8, "heldout_error": 0.101},
           name(4, 1): {"mean_psnr_db": 29.6, "heldout_error": 0.110},
           name(16, 5): {"mean_psnr_db": 29.75, "heldout_error": 0.1015},
           name(16, 10): {"mean_psnr_db": 28.0, "heldout_error": 0.130}}
    prompts = [(16, 1), (8, 1), (4, 1)]
    strides = [(16, 1), (16, 5), (16, 10)]
    assert bench.recommend(pts, prompts, "mean_psnr_db", "higher", 0.3, False, "prompts") == (8, 1)
    assert bench.recommend(pts, prompts, "mean_psnr_db", "higher", 0.5, False, "prompts") == (4, 1)
    assert bench.recommend(pts, strides, "mean_psnr_db", "higher", 0.3, False, "stride") == (16, 5)
    assert bench.recommend(pts, prompts, "heldout_error", "lower", 0.02, True, "prompts") == (8, 1)
    assert bench.recommend({}, prompts, "mean_psnr_db", "higher", 0.3, False, "prompts") is None
