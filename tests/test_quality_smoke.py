"""Fast checks of the search-quality bench (bench/quality.py): its STA attention equals the project's
reference STA path, and its baselines honour their density caps (synthetic profile, no model)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_profile import synthetic_profile  # noqa: E402

from sta_search.accelerate import MaskAttention  # noqa: E402
from sta_search.maskconfig import MaskConfig  # noqa: E402
from sta_search.models import AttentionCall  # noqa: E402

BENCH = Path(__file__).resolve().parent.parent / "bench" / "quality.py"


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("quality_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _config(profile, seed):
    rng = np.random.default_rng(seed)
    L, H, steps = profile.num_layers, profile.num_heads, profile.steps
    grid = np.asarray(profile.grid)
    windows = rng.integers(1, grid + 1, size=(steps, L, H, 3)).astype(np.int32)
    windows[0, 0, 0] = grid  # one full-window head next to sparse ones
    return MaskConfig(model={k: profile.model[k] for k in ("family", "transformer_class", "num_layers", "num_heads")},
                      canvas=profile.canvas, tile=profile.tile, text_len=0, steps=steps, dense_steps=(1,),
                      windows=windows, summary={})


def test_config_attention_matches_reference_mask_attention(quality, seed):
    profile = synthetic_profile(prompts=2, rng=seed)
    config = _config(profile, seed)
    ours, reference = quality.ConfigAttention(config), MaskAttention(config, backend="reference")
    gen = torch.Generator().manual_seed(seed)
    S = int(np.prod(profile.canvas))
    for step, layer in ((0, 0), (0, 1), (1, 0), (2, 1)):
        q, k, v = (torch.randn(2, profile.num_heads, S, 16, generator=gen) for _ in range(3))
        call = AttentionCall(step=step, layer=layer, q=q, k=k, v=v, canvas=tuple(profile.canvas), text_len=0,
                             text_first=False, text_mask=None, forward_index=0)
        torch.testing.assert_close(ours(call), reference(call), atol=1e-5, rtol=1e-5)


def test_baselines_respect_their_caps(quality, seed):
    profile = synthetic_profile(prompts=3, rng=seed)
    info = type("Info", (), {k: profile.model[k] for k in ("family", "transformer_class", "num_layers", "num_heads")})
    dense_steps = (0, 1)
    for budget in (0.2, 0.5):
        capped = quality.capped_argmin(profile, info, budget, dense_steps)
        assert capped.density() <= budget + 1e-9
        assert capped.dense_steps == dense_steps
        uniform = quality.best_uniform(profile, info, budget, dense_steps, "test")
        assert uniform.density() <= budget + 1e-9
        assert len({tuple(w) for w in uniform.windows[list(uniform.sparse_steps)].reshape(-1, 3).tolist()}) == 1
        # the chosen uniform window has the lowest in-sample error among those that fit
        g = profile.geometry
        fits = [w for w in profile.error_windows if g.density(tuple(w)) <= budget + 1e-12]
        costs = [quality.insample_cost(profile, MaskConfig.uniform(info, profile.canvas, profile.tile, 0, profile.steps,
                                                                   tuple(w), dense_steps=dense_steps)) for w in fits]
        assert uniform.summary["predicted_error"] == pytest.approx(min(costs))


def test_aggregate_over_seeds_pairs_configs_per_seed(quality):
    def entry(psnrs, ssim=0.9, density=0.25):
        return {"density": density, "mean_psnr_db": float(np.mean(psnrs)), "mean_ssim": ssim,
                "per_prompt": [{"prompt": str(i), "psnr_db": p, "ssim": ssim} for i, p in enumerate(psnrs)]}

    per_seed = {
        "0": {"configs": {"argmin-capped@0.3": entry([20.0, 22.0]), "solver-error-step@argmin-capped0.3": entry([21.0, 22.5]),
                          "solver-error-step@0.3": entry([24.0, 24.0], density=0.3), "uniform@0.3": entry([21.0, 21.0])}},
        "1": {"configs": {"argmin-capped@0.3": entry([20.0, 20.0]), "solver-error-step@argmin-capped0.3": entry([19.5, 20.0]),
                          "solver-error-step@0.3": entry([23.0, 23.0], density=0.3), "uniform@0.3": entry([21.0, 21.0])}},
        "2": {"configs": {}},  # a seed skipped for time does not count
    }
    agg = quality.aggregate(per_seed, [0.3])
    assert agg["seeds"] == [0, 1]
    d = agg["differences"]["solver_minus_argmin_capped_matched@0.3"]
    assert d["per_seed"]["0"]["psnr_db"] == pytest.approx(0.75) and d["per_seed"]["1"]["psnr_db"] == pytest.approx(-0.25)
    assert d["psnr_db"]["mean"] == pytest.approx(0.25) and d["psnr_db"]["std"] == pytest.approx(np.std([0.75, -0.25], ddof=1))
    assert d["pooled_prompt_psnr_db"]["n"] == 4 and d["prompts_where_a_beats_b"] == "2/4"
    u = agg["differences"]["solver_minus_best_uniform@0.3"]
    assert u["psnr_db"]["mean"] == pytest.approx(2.5)
    assert agg["configs"]["uniform@0.3"]["psnr_db"]["std"] == pytest.approx(0.0)
    assert "solver_minus_argmin_matched" not in agg["differences"]  # no argmin config in these seeds
