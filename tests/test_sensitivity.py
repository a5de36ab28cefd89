"""Step weights: the solver's step weighting and their measurement (sta_search.sensitivity) on synthetic profiles."""

import numpy as np
import pytest
import torch

from sta_search.errors import UserError
from sta_search.select import SelectOptions, nearest_profiled, select_windows
from sta_search.sensitivity import measure_step_sensitivity, relative_rms, step_probes, weights_from_gains
from synthetic_profile import synthetic_profile


def _step_densities(profile, config):
    g = profile.geometry
    return {s: float(np.mean([g.density(tuple(int(x) for x in w)) for w in config.windows[s].reshape(-1, 3)]))
            for s in config.sparse_steps}


def test_a_heavy_step_weight_draws_density_to_that_step(seed):
    profile = synthetic_profile(prompts=2, steps=10, profile_steps=[0, 3, 6, 9], rng=seed)
    plain = select_windows(profile, SelectOptions(budget=0.3))
    heavy = select_windows(profile, SelectOptions(budget=0.3, step_weights=(1.0, 1.0, 1.0, 50.0)))
    later = [s for s in plain.config.sparse_steps if s >= 8]  # the steps that use profiled step 9
    assert later and heavy.summary["step_weights"] == [1.0, 1.0, 1.0, 50.0]
    plain_d, heavy_d = _step_densities(profile, plain.config), _step_densities(profile, heavy.config)
    assert np.mean([heavy_d[s] for s in later]) > np.mean([plain_d[s] for s in later]) + 0.05
    assert heavy.summary["density"] <= 0.3 + 1e-12
    # equal weights are no weights: the choice cannot depend on their scale
    same = select_windows(profile, SelectOptions(budget=0.3, step_weights=(2.5,) * 4))
    assert np.array_equal(same.config.windows, plain.config.windows)


@pytest.mark.parametrize("weights, message", [((1.0, 1.0), "2 given, the profile has 4"),
                                              ((1.0, 0.0, 1.0, 1.0), "positive finite numbers, got 0.0"),
                                              ((1.0, float("nan"), 1.0, 1.0), "got nan")],
                         ids=["count", "zero", "nan"])
def test_step_weight_errors_name_the_bad_value(weights, message):
    profile = synthetic_profile(prompts=2, steps=10, profile_steps=[0, 3, 6, 9])
    with pytest.raises(UserError, match=message):
        select_windows(profile, SelectOptions(budget=0.3, step_weights=weights))


def test_weights_from_gains():
    assert weights_from_gains([None, 2.0, 1.0, 3.0]) == (1.0, 1.0, 0.5, 1.5)
    assert weights_from_gains([None, None]) == (1.0, 1.0)


def test_probes_are_sparse_only_at_their_steps_and_sum_the_profile_error(seed):
    profile = synthetic_profile(prompts=2, steps=10, profile_steps=[0, 3, 6, 9], rng=seed)
    config = select_windows(profile, SelectOptions(budget=0.3)).config
    probes = step_probes(profile, config)
    slots = nearest_profiled(list(config.sparse_steps), profile.profile_steps)
    assert sorted(s for p in probes for s in p.steps) == list(config.sparse_steps)
    g = profile.geometry
    error = profile.mean_error().double().numpy()
    index = {g.clip_window(tuple(w)): i for i, w in reversed(list(enumerate(profile.error_windows)))}
    for probe in probes:
        assert all(slots[list(config.sparse_steps).index(s)] == probe.slot for s in probe.steps)
        assert probe.config.sparse_steps == probe.steps
        assert np.array_equal(probe.config.windows[list(probe.steps)], config.windows[list(probe.steps)])
        expected = sum(error[probe.slot, l, h, index[g.clip_window(tuple(int(x) for x in config.windows[s, l, h]))]]
                       for s in probe.steps for l in range(profile.num_layers) for h in range(profile.num_heads)
                       if not g.is_full(g.clip_window(tuple(int(x) for x in config.windows[s, l, h]))))
        assert probe.attention_error == pytest.approx(expected, rel=1e-12)


def test_measured_gains_recover_a_planted_step_response(seed):
    """A fake renderer whose final error is a known multiple of the probe's attention error per profiled step."""
    profile = synthetic_profile(prompts=2, steps=10, profile_steps=[0, 3, 6, 9], rng=seed)
    config = select_windows(profile, SelectOptions(budget=0.3)).config
    planted = {0: 4.0, 1: 3.0, 2: 2.0, 3: 1.0}
    by_steps = {p.steps: p for p in step_probes(profile, config)}
    reference = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 3.0
    direction = torch.randn(reference.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    direction *= torch.linalg.vector_norm(reference) / torch.linalg.vector_norm(direction)
    calls = []

    def render(cfg):
        calls.append(cfg)
        if cfg is None:
            return reference
        probe = by_steps[cfg.sparse_steps]
        return reference + direction * planted[probe.slot] * probe.attention_error * 1e-3

    result = measure_step_sensitivity(profile, config, render)
    measured = [g for g in result.gains if g is not None]
    assert len(calls) == len(by_steps) + 1 and calls[0] is None
    for slot, gain in enumerate(result.gains):
        if gain is not None:
            assert gain == pytest.approx(planted[slot] * 1e-3, rel=1e-9)
    assert np.mean([w for w, g in zip(result.weights, result.gains) if g is not None]) == pytest.approx(1.0)
    assert len(measured) == len(by_steps)
    assert relative_rms(reference, reference) == 0.0


def test_probe_config_must_match_the_profile():
    profile = synthetic_profile(prompts=2, steps=10, profile_steps=[0, 3, 6, 9])
    other = synthetic_profile(prompts=2, steps=8, profile_steps=[0, 4])
    config = select_windows(other, SelectOptions(budget=0.3)).config
    with pytest.raises(UserError, match="does not match the profile"):
        step_probes(profile, config)


def test_calibration_replays_the_dense_prefix_exactly(tmp_path, monkeypatch):
    """calibrate_profile on the bundled tiny model: replaying the dense run's transformer outputs for each probe's
    dense prefix gives the same numbers as computing them, with fewer transformer forwards computed."""
    from sta_search import sensitivity
    from sta_search.models import load_model
    from sta_search.profile import ProfileSettings, run_profile

    loaded = load_model("tiny", "cpu", torch.float32)
    settings = ProfileSettings(model="tiny", prompts=("a big red square moves left",), steps=6, height=32, width=32,
                               frames=8, seed=5, profile_steps=2, tile=(2, 4, 4), windows=((1, 4, 4), (2, 2, 2)),
                               device="cpu")
    run_profile(settings, tmp_path / "p", loaded=loaded)
    made = []

    class Counted(sensitivity.ForwardReplay):
        def __init__(self, model):
            super().__init__(model)
            made.append(self)

    monkeypatch.setattr(sensitivity, "ForwardReplay", Counted)
    plain = sensitivity.calibrate_profile(tmp_path / "p", loaded, 0.5, replay=False)
    assert not made
    replayed = sensitivity.calibrate_profile(tmp_path / "p", loaded, 0.5, replay=True)
    assert replayed.final_error == pytest.approx(plain.final_error, rel=1e-6)
    assert replayed.weights == pytest.approx(plain.weights, rel=1e-6)
    # 6 steps, dense step 0 (round(0.24 * 6) = 1), probes of profiled steps 0, 2, 4 start at sparse steps 1, 2, 4:
    # their dense prefixes (1 + 2 + 4 steps, one forward each at guidance 1 or two with CFG) are replayed
    assert len(made) == 1
    forwards_per_step = (made[0].computed + made[0].replayed) // (4 * 6)  # 4 runs (dense + 3 probes) of 6 steps
    assert forwards_per_step in (1, 2) and made[0].replayed == (1 + 2 + 4) * forwards_per_step
    assert "forward" not in vars(loaded.transformer)  # unpatched afterwards


def test_saving_into_a_missing_folder_is_a_user_error_naming_it(tmp_path):
    from sta_search.sensitivity import StepSensitivity, save_sensitivity

    result = StepSensitivity((0, 2), (None, 0.1), (None, 2.0), (None, 0.05), (1.0, 1.0), "budget at density 0.3")
    with pytest.raises(UserError, match="gone.*step_sensitivity.json.*the profile beside it is unchanged"):
        save_sensitivity(result, tmp_path / "gone", prompts=1, budget=0.3)
    path = save_sensitivity(result, tmp_path, prompts=1, budget=0.3)
    assert path.read_text().count('"schema"') == 1 and not list(tmp_path.glob("*.tmp"))


def test_per_layer_weights_draw_density_to_that_layer(seed):
    profile = synthetic_profile(prompts=2, steps=10, profile_steps=[0, 3, 6, 9], rng=seed)
    g = profile.geometry
    P, L = len(profile.profile_steps), profile.num_layers
    table = np.ones((P, L))
    table[:, L - 1] = 50.0
    plain = select_windows(profile, SelectOptions(budget=0.3))
    heavy = select_windows(profile, SelectOptions(budget=0.3, step_weights=tuple(map(tuple, table.tolist()))))

    def layer_density(config, layer):
        return np.mean([g.density(tuple(int(x) for x in w)) for s in config.sparse_steps
                        for w in config.windows[s, layer]])

    assert layer_density(heavy.config, L - 1) > layer_density(plain.config, L - 1) + 0.05
    assert np.asarray(heavy.summary["step_weights"]).shape == (P, L)
    with pytest.raises(UserError, match=r"shape \(4, 1\) given"):
        select_windows(profile, SelectOptions(budget=0.3, step_weights=((1.0,),) * 4))


def test_layer_probes_keep_one_layer_sparse(seed):
    from sta_search.sensitivity import layer_probes, measure_layer_sensitivity

    profile = synthetic_profile(prompts=2, steps=10, profile_steps=[0, 3, 6, 9], rng=seed)
    config = select_windows(profile, SelectOptions(budget=0.3)).config
    probes = layer_probes(profile, config)
    g = profile.geometry
    assert [p.slot for p in probes] == list(range(profile.num_layers))
    for probe in probes:
        for s in config.sparse_steps:
            for layer in range(profile.num_layers):
                rows = probe.config.windows[s, layer]
                if layer == probe.slot:
                    assert np.array_equal(rows, config.windows[s, layer])
                else:
                    assert all(g.is_full(g.clip_window(tuple(int(x) for x in w))) for w in rows)
    planted = {layer: 1.0 + layer for layer in range(profile.num_layers)}
    by_layer = {p.slot: p for p in probes}
    reference = torch.ones(3, 4, dtype=torch.float64)

    def render(cfg):
        if cfg is None:
            return reference
        layer = next(l for l, p in by_layer.items() if np.array_equal(p.config.windows, cfg.windows))
        return reference * (1.0 + 1e-3 * planted[layer] * by_layer[layer].attention_error)

    result = measure_layer_sensitivity(profile, config, render)
    for layer, gain in enumerate(result.gains):
        assert gain == pytest.approx(1e-3 * planted[layer], rel=1e-9)
