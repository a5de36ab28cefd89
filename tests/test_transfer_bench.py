"""Fast checks of bench/transfer.py's small mode and bench/profile_wholerun.py's setup (no generation, no timing)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_bench", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def transfer():
    return _load("transfer")


@pytest.fixture(scope="module")
def wholerun():
    return _load("profile_wholerun")


def test_small_canvases_grids_and_shortlists(transfer):
    from sta_search.kernels.geometry import Geometry
    from sta_search.models import resolve_model_path

    folder, _ = resolve_model_path("small")
    assert transfer.model_kind(folder) == "small"
    assert transfer.model_kind(resolve_model_path("tiny")[0]) == "tiny"
    base = transfer.base_settings(folder, "small")
    assert tuple(base.tile) == (4, 4, 4)
    low, high = (transfer._size(t, base.frames) for t in transfer.DEFAULT_CANVASES["small"])
    assert (low, high) == ((8, 64, 96), (16, 96, 160))
    assert transfer._size("64x64", 8) == (8, 64, 64)
    for (f, h, w), grid in ((low, (2, 4, 6)), (high, (4, 6, 10))):
        geometry = Geometry((f, h // 4, w // 4), (4, 4, 4))  # pixel space, patch 1x4x4
        assert geometry.grid == grid
        shortlist = transfer.shortlist_for(grid, quick=False)
        assert shortlist[-1] == grid and all(all(1 <= a <= n for a, n in zip(win, grid)) for win in shortlist)
        densities = sorted(geometry.density(win) for win in shortlist)
        assert densities[0] < 0.05 and any(0.2 <= d <= 0.3 for d in densities) and any(0.3 < d <= 0.45 for d in densities)
    odd = transfer.shortlist_for((3, 5, 7), quick=False)  # no hand-made list: the default, clipped, no repeats
    assert len(set(odd)) == len(odd) and all(win[0] <= 3 and win[1] <= 5 and win[2] <= 7 for win in odd)


def test_small_prompt_split_is_disjoint_and_held_out(transfer):
    from sta_search.small import data

    training, heldout = transfer.prompt_split("small", 4, 4)
    assert len(set(training)) == 4 and len(set(heldout)) == 4 and not set(training) & set(heldout)
    assert not any(data.is_held_out(p) for p in training) and all(data.is_held_out(p) for p in heldout)
    assert transfer.prompt_split("small", 4, 4) == (training, heldout)  # deterministic
    tiny_train, tiny_held = transfer.prompt_split("tiny", 2, 3)
    assert len(tiny_train) == 2 and len(tiny_held) == 3 and not set(tiny_train) & set(tiny_held)


def test_wholerun_pipeline_has_wan_480p_canvas_and_tokenizes_offline(wholerun, tmp_path):
    prompts = ["A red fox runs.", "Rain on a street at night."]
    tokenizer, vocab = wholerun.word_tokenizer(prompts)
    ids = tokenizer("a red fox runs.").input_ids
    assert ids[-1] == tokenizer.eos_token_id and tokenizer.unk_token_id not in ids and len(ids) == 6
    # the tiny Wan has the 1.3B's patch size and the Wan 2.1 VAE's scale factors, so its canvas is the 1.3B's
    pipe = wholerun.build_pipeline(wholerun.QUICK, prompts, torch.device("cpu"), torch.float32)
    loaded = wholerun.loaded_model(pipe, "wan")
    full = wholerun.FULL
    assert tuple(loaded.canvas(full["height"], full["width"], full["frames"])) == (21, 30, 52)
    assert wholerun.WAN_13B["patch_size"] == wholerun.WAN_TINY["patch_size"]
    folder = wholerun.config_folder(pipe, tmp_path / "model")
    assert (folder / "model_index.json").is_file() and (folder / "transformer" / "config.json").is_file()
    assert not list(folder.rglob("*.safetensors"))  # configs only
