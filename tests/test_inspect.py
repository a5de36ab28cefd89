"""inspect: tables render for profiles and mask configs; the PNG pictures exist and show something."""

import io

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from sta_search.cli import app
from sta_search.errors import UserError
from sta_search.inspect import inspect_path, recall_at, window_histogram
from sta_search.select import SelectOptions, select_windows
from synthetic_profile import synthetic_profile


def _render(tables) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, width=160)
    for table in tables:
        console.print(table)
    return buffer.getvalue()


def _assert_picture(path):
    from matplotlib.image import imread

    assert path.is_file() and path.stat().st_size > 3000
    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels[..., :3].std() > 0.05  # not a blank canvas
    assert len(np.unique(pixels[..., :3].reshape(-1, 3), axis=0)) > 20


@pytest.fixture
def artifacts(tmp_path, seed):
    profile = synthetic_profile(prompts=2, rng=seed, num_layers=3, num_heads=4)
    profile.save(tmp_path / "profile")
    config = select_windows(profile, SelectOptions(budget=0.4, folds=2)).config
    config.save(tmp_path / "mask.yaml")
    return profile, config, tmp_path


def test_profile_tables_and_pictures(artifacts):
    profile, _, folder = artifacts
    tables, pictures = inspect_path(folder / "profile", window="1,2,2", plot=str(folder / "plots"), layer=2, head=3)
    text = _render(tables)
    assert "recall at window 1,2,2" in text and "per layer" in text
    recall = recall_at(profile, (1, 2, 2))
    assert f"{recall[2, 3]:.3f}" in text
    assert sorted(p.name for p in pictures) == ["offset_mass_L2_H3.png", "recall_heatmap.png"]
    for picture in pictures:
        _assert_picture(picture)


def test_recall_table_grows_with_window(artifacts):
    profile = artifacts[0]
    small, large = recall_at(profile, (1, 1, 1)), recall_at(profile, (2, 2, 2))
    assert (large >= small - 1e-6).all()
    assert np.allclose(recall_at(profile, profile.grid), 1.0, atol=1e-5)


def test_mask_tables_and_pictures(artifacts):
    _, config, folder = artifacts
    tables, pictures = inspect_path(folder / "mask.yaml", plot=str(folder / "mplots"))
    text = _render(tables)
    assert "density per layer" in text and "window histogram" in text and "selection summary" in text
    histogram = window_histogram(config)
    assert sum(n for _, n in histogram) == len(config.sparse_steps) * config.num_layers * config.num_heads
    assert f"{histogram[0][0][0]},{histogram[0][0][1]},{histogram[0][0][2]}" in text
    assert sorted(p.name for p in pictures) == ["density_heatmap.png", "window_histogram.png"]
    for picture in pictures:
        _assert_picture(picture)


def test_inspect_cli(artifacts):
    folder = artifacts[2]
    result = CliRunner().invoke(app, ["inspect", str(folder / "profile"), "--layer", "1", "--step", "3"])
    assert result.exit_code == 0, result.output
    assert "recall at window" in result.output
    result = CliRunner().invoke(app, ["inspect", str(folder / "mask.yaml")])
    assert result.exit_code == 0, result.output


def test_inspect_errors(artifacts):
    folder = artifacts[2]
    with pytest.raises(UserError, match="--layer 9"):
        inspect_path(folder / "profile", layer=9)
    with pytest.raises(UserError, match="--head 4"):
        inspect_path(folder / "profile", head=4)
    with pytest.raises(UserError, match="--window"):
        inspect_path(folder / "profile", window="0,1,1")
    with pytest.raises(UserError, match="neither"):
        inspect_path(folder / "nothing")
