"""Window selection: the budget solver against brute force, FastVideo's argmin rule, the CLI and its errors."""

import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from sta_search.cli import app
from sta_search.costmodel import CostModel, load_cost_model
from sta_search.errors import UserError
from sta_search.kernels.geometry import Geometry
from sta_search.maskconfig import MaskConfig
from sta_search.select import (
    SelectOptions,
    build_candidates,
    lagrangian_choice,
    nearest_profiled,
    select_windows,
    solve_argmin,
    solve_budget,
)
from synthetic_profile import synthetic_profile


def brute_force(C, D, budget):
    G, K = C.shape
    D = np.broadcast_to(D, C.shape)
    best = np.inf
    for choice in itertools.product(range(K), repeat=G):
        choice = np.array(choice)
        if D[np.arange(G), choice].mean() <= budget + 1e-12:
            best = min(best, C[np.arange(G), choice].sum())
    return best


def random_instance(rng):
    G, K = int(rng.integers(1, 6)), int(rng.integers(1, 5))
    C = rng.random((G, K))
    if rng.random() < 0.3:  # exact ties in cost and density happen with shortlists: include them
        C = np.round(C, 1)
    D = rng.uniform(0.05, 1.0, size=K) if rng.random() < 0.5 else rng.uniform(0.05, 1.0, size=(G, K))
    return C, D


def test_solver_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    optimal = 0
    trials = 200
    for _ in range(trials):
        C, D = random_instance(rng)
        least = np.broadcast_to(D, C.shape).min(axis=1).mean()
        budget = float(rng.uniform(least, 1.0))
        solution = solve_budget(C, D, budget)
        best = brute_force(C, D, budget)
        chosen_density = np.broadcast_to(D, C.shape)[np.arange(C.shape[0]), solution.choice].mean()
        assert chosen_density <= budget + 1e-12  # the budget is always respected
        assert solution.density == pytest.approx(chosen_density)
        assert solution.cost == pytest.approx(C[np.arange(C.shape[0]), solution.choice].sum())
        assert solution.lower_bound <= best + 1e-9  # the reported bound is a true lower bound
        assert solution.cost >= best - 1e-9
        optimal += solution.cost <= best + 1e-9
    assert optimal >= 0.9 * trials, f"optimal in only {optimal}/{trials} random instances"


def test_solver_is_exact_on_the_convex_hull(seed):
    """Budgets at the density of a Lagrangian solution: the solver must find the brute-force optimum."""
    rng = np.random.default_rng(seed)
    for _ in range(150):
        C, D = random_instance(rng)
        multiplier = float(rng.exponential(2.0))
        Dg = np.broadcast_to(D, C.shape)
        if D.ndim == 1:  # lagrangian_choice expects shared densities sorted ascending
            order = np.argsort(D, kind="stable")
            choice = order[lagrangian_choice(C[:, order], D[order], multiplier)]
        else:
            choice = lagrangian_choice(C, D, multiplier)
        budget = float(Dg[np.arange(C.shape[0]), choice].mean())
        solution = solve_budget(C, D, budget)
        assert solution.cost == pytest.approx(brute_force(C, D, budget), abs=1e-9)


def test_unconstrained_budget_gives_the_per_group_minimum(seed):
    rng = np.random.default_rng(seed)
    C = rng.random((50, 6))
    solution = solve_budget(C, np.linspace(0.1, 1.0, 6), 1.0)
    assert solution.cost == pytest.approx(C.min(axis=1).sum())
    assert solution.gap_bound == pytest.approx(0.0, abs=1e-12)


def test_solver_scales_and_respects_budget(seed):
    rng = np.random.default_rng(seed)
    C = rng.random((20000, 12))
    D = np.sort(rng.uniform(0.02, 1.0, 12))
    C = C + (1.0 - D)[None, :]  # denser windows tend to be more accurate
    for fraction in (1e-9, 0.2, 0.45, 0.9):
        budget = D.min() + fraction * (D.max() - D.min())
        solution = solve_budget(C, D, budget)
        assert solution.density <= budget + 1e-12
        assert solution.gap_bound / C.shape[0] < 1e-3  # within 0.001 of optimal per group


def test_budget_below_smallest_density_is_a_user_error():
    with pytest.raises(UserError, match="below the smallest"):
        solve_budget(np.ones((3, 2)), np.array([0.2, 0.5]), 0.1)


def test_argmin_reproduces_fastvideo_rule(seed):
    """FastVideo's select_best_mask_strategy, transcribed: per head, argmin of the averaged loss over the
    sparse candidates (full attention last and excluded), first skip_time_steps full."""
    profile = synthetic_profile(prompts=3, rng=seed, steps=6, profile_steps=list(range(6)))
    skip = 2
    windows = [list(w) for w in profile.error_windows]
    full = windows[-1]
    assert Geometry(profile.canvas, profile.tile).is_full(full)
    losses = profile.mean_error().numpy()  # (P = steps, L, H, K)
    averaged = {str(w): losses[..., k].tolist() for k, w in enumerate(windows)}
    expected = {}
    for t in range(profile.steps):
        for l in range(profile.num_layers):
            for h in range(profile.num_heads):
                if t < skip:
                    strategy = full
                else:
                    head_losses = [averaged[str(s)][t][l][h] for s in windows[:-1]]
                    strategy = windows[int(np.argmin(head_losses))]
                expected[f"{t}_{l}_{h}"] = strategy
    selection = select_windows(profile, SelectOptions(strategy="argmin", full_steps=skip))
    config = selection.config
    assert config.dense_steps == (0, 1)
    for t in range(skip, profile.steps):
        for l in range(profile.num_layers):
            for h in range(profile.num_heads):
                assert config.windows[t, l, h].tolist() == expected[f"{t}_{l}_{h}"]


def test_argmin_ties_take_the_first_candidate():
    C = np.array([[0.5, 0.2, 0.2, 0.0], [0.1, 0.1, 0.3, 0.0]])
    allowed = np.array([True, True, True, False])
    assert solve_argmin(C, allowed).tolist() == [1, 0]


def test_select_respects_budget_and_reports(seed):
    profile = synthetic_profile(prompts=4, rng=seed)
    for granularity in ("step", "layer"):
        for objective in ("error", "squared-error", "recall"):
            selection = select_windows(profile, SelectOptions(budget=0.35, granularity=granularity, objective=objective))
            config, summary = selection.config, selection.summary
            assert config.density() <= 0.35 + 1e-12
            assert summary["density"] == pytest.approx(config.density(), rel=1e-5)
            assert summary["predicted_speedup"] > 1
            assert 0 <= summary["predicted_recall"] <= 1
            if granularity == "layer":
                sparse = config.windows[list(config.sparse_steps)]
                assert (sparse == sparse[:1]).all()
    summary = select_windows(profile, SelectOptions(budget=0.35)).summary
    assert summary["heldout_error"] is not None and summary["folds"] == "leave-one-out (4)"
    assert summary["predicted_error"] > 0


def test_more_budget_never_hurts(seed):
    profile = synthetic_profile(prompts=2, rng=seed)
    errors = [select_windows(profile, SelectOptions(budget=b, folds=2)).summary["predicted_error"]
              for b in (0.1, 0.3, 0.6, 1.0)]
    assert all(a >= b - 1e-6 for a, b in zip(errors, errors[1:]))
    assert errors[-1] == pytest.approx(0.0, abs=1e-6)  # the full window is in the shortlist


def test_budget_solution_beats_argmin_at_the_same_density(seed):
    profile = synthetic_profile(prompts=3, rng=seed)
    argmin = select_windows(profile, SelectOptions(strategy="argmin"))
    budget = select_windows(profile, SelectOptions(budget=argmin.config.density()))
    assert budget.config.density() <= argmin.config.density() + 1e-12
    assert budget.summary["predicted_error"] <= argmin.summary["predicted_error"] + 1e-6


def test_step_budget_scope_holds_the_budget_at_every_sparse_step(seed, tmp_path):
    profile = synthetic_profile(prompts=3, steps=10, profile_steps=[0, 3, 6, 9], rng=seed)
    g = profile.geometry

    def step_densities(config):
        return [np.mean([g.tile_density(tuple(int(x) for x in w)) for w in config.windows[s].reshape(-1, 3)])
                for s in config.sparse_steps]

    per_run = select_windows(profile, SelectOptions(budget=0.3))
    per_step = select_windows(profile, SelectOptions(budget=0.3, budget_scope="step"))
    assert per_step.summary["budget_scope"] == "step" and per_run.summary["budget_scope"] == "run"
    assert max(step_densities(per_step.config)) <= 0.3 + 1e-12
    # the run-wide solve may move density between steps, so it can only do better in total
    assert per_step.summary["predicted_error"] >= per_run.summary["predicted_error"] - 1e-9
    profile.save(tmp_path / "p")
    result = subprocess.run([sys.executable, "-m", "sta_search", "select", str(tmp_path / "p"), "--budget", "0.3",
                             "--budget-scope", "sometimes", "--out", str(tmp_path / "m.yaml")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "'sometimes'" in result.stderr, result.stderr
    assert not (tmp_path / "m.yaml").exists()


def test_heldout_needs_two_prompts():
    summary = select_windows(synthetic_profile(prompts=1), SelectOptions(budget=0.5)).summary
    assert summary["heldout_error"] is None


def test_nearest_profiled_step():
    assert nearest_profiled([0, 1, 2, 3, 5, 7], [0, 4]).tolist() == [0, 0, 0, 1, 1, 1]
    assert nearest_profiled([2], [0, 4]).tolist() == [0]  # ties go to the earlier profiled step


def test_default_full_steps_is_about_a_quarter():
    profile = synthetic_profile(prompts=1, steps=50, profile_steps=[0, 25, 49])
    config = select_windows(profile, SelectOptions(budget=0.5)).config
    assert config.dense_steps == tuple(range(12))


@pytest.mark.parametrize(
    "options, message",
    [
        (SelectOptions(budget=0.0), r"outside \(0, 1\]"),
        (SelectOptions(budget=1.5), r"outside \(0, 1\]"),
        (SelectOptions(budget=float("nan")), r"outside \(0, 1\]"),
        (SelectOptions(budget=0.01), "below the smallest"),
        (SelectOptions(sparsity=1.0), "sparsity"),
        (SelectOptions(speedup=1000.0), "out of reach"),
        (SelectOptions(speedup=0.5), ">= 1"),
        (SelectOptions(budget=0.3, sparsity=0.7), "exactly one"),
        (SelectOptions(), "exactly one"),
        (SelectOptions(budget=0.5, full_steps=8), "full-steps"),
        (SelectOptions(budget=0.5, objective="mse"), "objective"),
        (SelectOptions(budget=0.5, granularity="block"), "granularity"),
        (SelectOptions(budget=0.5, candidates="all"), "shortlist"),
        (SelectOptions(budget=0.5, strategy="argmin"), "has no budget"),
        (SelectOptions(budget=0.5, budget_scope="layer"), "budget scope 'layer' is not one of run, step"),
        (SelectOptions(budget=0.5, budget_scope="step", granularity="layer"), "needs --granularity step"),
    ],
)
def test_select_user_errors(options, message):
    with pytest.raises(UserError, match=message):
        select_windows(synthetic_profile(prompts=2), options)


def test_speedup_maps_through_the_cost_model():
    profile = synthetic_profile(prompts=2)
    model = CostModel(overhead=0.1, slope=0.9, source="test")
    selection = select_windows(profile, SelectOptions(speedup=1.5), cost_model=model)
    assert selection.summary["predicted_speedup"] >= 1.5 - 1e-9
    assert selection.summary["cost_model"] == "test"


def test_cost_model_fits_bench_results(tmp_path):
    records = [{"shape": "s", "density": d, "median_ms": 10 * (0.2 + 0.8 * d)} for d in (0.1, 0.3, 0.6)]
    records.append({"shape": "s", "density": 1.0, "median_ms": 10.0})
    (tmp_path / "kernel-test.json").write_text(json.dumps({"results": records}))
    model = load_cost_model(tmp_path)
    assert model.overhead == pytest.approx(0.2)
    assert model.slope == pytest.approx(0.8)
    assert "fitted" in model.source
    density = model.density_for_speedup(2.0, sparse_steps=38, dense_steps=12)
    assert model.speedup(density, 38, 12) == pytest.approx(2.0)
    with pytest.raises(UserError, match="no kernel-"):
        load_cost_model(tmp_path / "none")


def _bench_results(rows):
    return [{"shape": {"name": "hunyuan-720p"}, "density": d, "ms": rows(d)} for d in (0.09, 0.417, 0.25)]


def test_cost_model_reads_sta_search_bench_results(tmp_path):
    """The format `sta-search bench` writes: per case a density and times per implementation; the in-place row
    of the kernel generation runs is preferred (gluon-natural, else triton-natural)."""
    results = _bench_results(lambda d: {
        "triton": 100 * (0.02 + 1.1 * d), "triton+permutes": 100 * (0.05 + 1.1 * d),
        "triton-natural": 100 * (0.03 + 1.0 * d), "cudnn-dense": 100.0, "fa2-dense": 120.0, "flex": 300 * d})
    (tmp_path / "kernel-20260101T000000.json").write_text(json.dumps({"environment": {}, "results": results}))
    model = load_cost_model(tmp_path)
    assert model.overhead == pytest.approx(0.03) and model.slope == pytest.approx(1.0)
    assert model.points == 3
    for d in results:
        d["ms"]["gluon-natural"] = 100 * (0.01 + 0.9 * d["density"])
    (tmp_path / "kernel-20260101T000000.json").write_text(json.dumps({"environment": {}, "results": results}))
    model = load_cost_model(tmp_path)
    assert model.overhead == pytest.approx(0.01) and model.slope == pytest.approx(0.9)


def test_cost_model_reads_old_ours_rows(tmp_path):
    """Results written before the Triton rows were renamed (ours, ours+permutes, ours-natural) still fit."""
    results = _bench_results(lambda d: {"ours": 100 * (0.02 + 1.1 * d), "ours+permutes": 100 * (0.05 + 1.1 * d),
                                        "cudnn-dense": 100.0})
    (tmp_path / "kernel-20260101T000000.json").write_text(json.dumps({"environment": {}, "results": results}))
    model = load_cost_model(tmp_path)
    assert model.overhead == pytest.approx(0.05) and model.slope == pytest.approx(1.1)
    for d in results:
        d["ms"]["ours-natural"] = 100 * (0.04 + 1.0 * d["density"])
    (tmp_path / "kernel-20260101T000000.json").write_text(json.dumps({"environment": {}, "results": results}))
    assert load_cost_model(tmp_path).overhead == pytest.approx(0.04)


def test_packaged_calibration_is_the_default_and_matches_its_source():
    """Without --bench-results the model is the packaged H100 calibration, whatever the working directory holds,
    and refitting its recorded source run (gluon-natural vs cudnn-dense) gives the recorded a and b."""
    from pathlib import Path

    from sta_search.costmodel import calibration, calibration_device, fit

    cal = calibration()
    model = load_cost_model()
    assert calibration_device() == cal["device"] == "NVIDIA H100 80GB HBM3"
    assert (model.overhead, model.slope) == (cal["overhead"], cal["slope"])
    assert "H100" in model.source and cal["sta_row"] == "gluon-natural" and cal["dense_row"] == "cudnn-dense"
    source = Path(__file__).resolve().parent.parent / cal["source"]
    doc = json.loads(source.read_text())
    pairs = [(r["density"], r["ms"]["gluon-natural"] / r["ms"]["cudnn-dense"]) for r in doc["results"]]
    refit = fit(pairs, "x")
    assert refit.overhead == pytest.approx(cal["overhead"], abs=1e-6)
    assert refit.slope == pytest.approx(cal["slope"], abs=1e-6)
    assert len(cal["points"]) == len(pairs) >= 2


@pytest.mark.parametrize("precision", ["fp8", "int8"])
def test_8bit_cost_model_scales_the_bf16_line_by_the_measured_kernel(precision):
    """select --precision fp8|int8 without --bench-results: the bf16 calibration times the 8-bit kernel's measured
    speed relative to bf16, plus its pre-pass (both from one committed H200 run, refitted here from its JSON); a
    faster call leaves room for more density at the same speedup."""
    from pathlib import Path

    from sta_search.costmodel import precision_calibration

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import fit_precision

    cal = precision_calibration()
    source = json.loads((Path(__file__).resolve().parent.parent / cal["source"]).read_text())
    assert fit_precision.precision_factors(source)["precisions"] == cal["precisions"]
    factors = cal["precisions"][precision]
    bf16, model = load_cost_model(), load_cost_model(precision=precision)
    assert model.overhead == pytest.approx(bf16.overhead * factors["kernel_ratio"] + factors["prepass_relative"])
    assert model.slope == pytest.approx(bf16.slope * factors["kernel_ratio"])
    assert precision in model.source and cal["device"] in model.source
    assert model.density_for_speedup(3.0, 38, 12) > bf16.density_for_speedup(3.0, 38, 12)


def test_8bit_cost_model_fits_its_own_bench_rows(tmp_path):
    results = _bench_results(lambda d: {"gluon-natural": 100 * (0.01 + 0.9 * d),
                                        "gluon-fp8-natural": 100 * (0.02 + 0.7 * d), "cudnn-dense": 100.0})
    (tmp_path / "kernel-20260101T000000.json").write_text(json.dumps({"environment": {}, "results": results}))
    model = load_cost_model(tmp_path, "fp8")
    assert model.overhead == pytest.approx(0.02) and model.slope == pytest.approx(0.7)
    assert "gluon-fp8-natural" in model.source
    with pytest.raises(UserError, match="gluon-int8-natural rows"):
        load_cost_model(tmp_path, "int8")


def test_select_cli_precision(tmp_path, capsys):
    """--precision needs --speedup (exit 2, one line); with it the summary's cost model is the 8-bit one."""
    from sta_search import cli

    synthetic_profile(prompts=2, rng=1).save(tmp_path / "p")
    out = tmp_path / "mask.yaml"
    with pytest.raises(SystemExit) as exit_info:
        cli.run(["select", str(tmp_path / "p"), "--budget", "0.3", "--precision", "fp8", "--out", str(out)])
    err = " ".join(capsys.readouterr().err.split())
    assert exit_info.value.code == 2 and "only changes --speedup" in err and "Traceback" not in err
    assert not out.exists()
    result = CliRunner().invoke(app, ["select", str(tmp_path / "p"), "--speedup", "1.5", "--precision", "int8",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "int8: kernel x" in yaml.safe_load(out.read_text())["summary"]["cost_model"]


def test_select_help_names_the_calibration_gpu():
    result = CliRunner().invoke(app, ["select", "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0
    assert "H100 80GB HBM3" in " ".join(result.output.split())


# ------------------------------------------------------------------------ command line
def test_select_cli_writes_a_valid_config(tmp_path):
    a = synthetic_profile(prompts=2, rng=1)
    b = synthetic_profile(prompts=2, rng=1)
    b = b.select_prompts([0, 1])
    b = type(b)(dict(b.header, prompts=["other 0", "other 1"]), b.tensors)
    a.save(tmp_path / "a")
    b.save(tmp_path / "b")
    out = tmp_path / "mask.yaml"
    result = CliRunner().invoke(app, ["select", str(tmp_path / "a"), str(tmp_path / "b"), "--budget", "0.3",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "predicted_speedup" in result.output and "heldout_error" in result.output
    config = MaskConfig.load(out)
    assert config.density() <= 0.3 + 1e-12
    assert yaml.safe_load(out.read_text())["summary"]["prompts"] == 4
    config.validate(a.model, a.canvas, a.steps)


def test_merge_cli(tmp_path):
    a = synthetic_profile(prompts=1, rng=1)
    b = type(a)(dict(a.header, prompts=["second"]), a.tensors)
    a.save(tmp_path / "a")
    b.save(tmp_path / "b")
    result = CliRunner().invoke(app, ["merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    from sta_search.artifacts import Profile

    merged = Profile.load(tmp_path / "c")
    assert merged.prompts == (a.prompts[0], "second")


def _run(*args):
    return subprocess.run([sys.executable, "-m", "sta_search", *args], capture_output=True, text=True, timeout=120)


def test_cli_user_errors_exit_2(tmp_path):
    synthetic_profile(prompts=1, rng=1).save(tmp_path / "a")
    synthetic_profile(prompts=1, rng=2, canvas=(4, 8, 12)).save(tmp_path / "b")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "stats.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{trunc")
    cases = [
        (["select", str(tmp_path / "a"), "--budget", "1.5"], "--budget 1.5 must be in (0, 1]"),
        (["select", str(tmp_path / "a"), str(tmp_path / "b"), "--budget", "0.5"], "canvas"),
        (["select", str(tmp_path / "broken"), "--budget", "0.5"], "corrupt"),
        (["select", str(tmp_path / "a"), "--budget", "0.001"], "below the smallest"),
    ]
    for args, message in cases:
        result = _run(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr


def test_squared_error_objective_costs_are_the_squared_per_prompt_errors(seed):
    """The squared-error objective squares each prompt's error before averaging; the reported errors stay
    in error units, and with one group to upgrade it upgrades the worst one where the plain error may not."""
    profile = synthetic_profile(prompts=3, rng=seed)
    plain = build_candidates(profile, "error")
    squared = build_candidates(profile, "squared-error")
    np.testing.assert_allclose(squared.per_prompt_cost, plain.per_prompt_error ** 2)
    np.testing.assert_allclose(squared.mean_cost, (plain.per_prompt_error ** 2).mean(axis=0))
    np.testing.assert_allclose(squared.per_prompt_error, plain.per_prompt_error)
    with pytest.raises(UserError, match="squared-error needs measured errors"):
        build_candidates(profile, "squared-error", "all")
    # two groups, windows of density 0.1 and 0.5; budget for one upgrade (mean density 0.3)
    errors = np.array([[0.6, 0.35], [0.3, 0.0]])  # upgrading group 1 removes more error (0.3 > 0.25) ...
    densities = np.array([0.1, 0.5])
    assert solve_budget(errors, densities, 0.3).choice.tolist() == [0, 1]
    # ... but in squared error group 0 gains more (0.36 - 0.1225 > 0.09 - 0)
    assert solve_budget(errors ** 2, densities, 0.3).choice.tolist() == [1, 0]
