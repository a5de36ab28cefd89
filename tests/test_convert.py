"""FastVideo mask strategy JSON <-> mask config YAML: exact round trips, even windows, clear errors."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from sta_search.cli import app
from sta_search.convert import fastvideo_to_mask, mask_to_fastvideo, model_from_folder
from sta_search.errors import UserError
from sta_search.maskconfig import MaskConfig

CANVAS = (18, 48, 80)  # Wan 69x768x1280 in FastVideo: grid (3, 6, 10) with tile (6, 8, 8)
GRID = (3, 6, 10)
MODEL = {"family": "wan", "transformer_class": "WanTransformer3DModel", "num_layers": 3, "num_heads": 4}
ODD_CANDIDATES = [[3, 1, 9], [1, 5, 7], [3, 3, 3], [1, 5, 5], [1, 3, 10], [3, 6, 1], [1, 1, 1]]


def fastvideo_doc(rng, steps=5, skip=2, L=3, H=4, candidates=ODD_CANDIDATES):
    doc = {}
    for t in range(steps):
        for l in range(L):
            for h in range(H):
                window = list(GRID) if t < skip else candidates[int(rng.integers(len(candidates)))]
                doc[f"{t}_{l}_{h}"] = window
    return doc


def test_fastvideo_json_round_trip_is_exact(tmp_path, seed):
    rng = np.random.default_rng(seed)
    doc = fastvideo_doc(rng)
    report = fastvideo_to_mask(doc, canvas=CANVAS, model=MODEL)
    assert report.config.dense_steps == (0, 1)
    assert report.even_converted == 0
    report.config.save(tmp_path / "m.yaml")
    back, widened = mask_to_fastvideo(MaskConfig.load(tmp_path / "m.yaml"))
    assert widened == 0
    assert back == doc
    assert list(back) == list(doc)  # same t_l_h order


def test_yaml_round_trip_through_fastvideo_is_exact(seed):
    rng = np.random.default_rng(seed)
    windows = np.asarray(ODD_CANDIDATES, dtype=np.int32)[rng.integers(len(ODD_CANDIDATES), size=(6, 3, 4))]
    config = MaskConfig(MODEL, CANVAS, (6, 8, 8), 0, 6, (0,), windows, {})
    doc, _ = mask_to_fastvideo(config)
    again = fastvideo_to_mask(doc, canvas=CANVAS, model=MODEL).config
    assert again.dense_steps == config.dense_steps
    sparse = list(config.sparse_steps)
    assert np.array_equal(again.windows[sparse], config.windows[sparse])


def test_even_windows_are_widened_on_import():
    doc = {f"0_{l}_{h}": [2, 4, 10] for l in range(3) for h in range(4)}
    doc["0_0_0"] = [1, 6, 8]
    report = fastvideo_to_mask(doc, canvas=CANVAS, model=MODEL)
    table = report.config.windows[0]
    assert table[0, 1].tolist() == [3, 5, 10]  # 2 -> 3, 4 -> 5, 10 >= n stays (full axis)
    assert table[0, 0].tolist() == [1, 6, 9]  # 6 == n stays, 8 -> 9
    assert report.even_converted == 2 * 12 - 1  # two even entries below n on each of 11 heads, one on head 0
    assert report.config.dense_steps == ()


def test_even_windows_are_refused_on_export_unless_asked():
    windows = np.zeros((2, 3, 4, 3), dtype=np.int32) + np.array([1, 2, 3])
    config = MaskConfig(MODEL, CANVAS, (6, 8, 8), 0, 2, (), windows, {})
    with pytest.raises(UserError, match="even window"):
        mask_to_fastvideo(config)
    doc, widened = mask_to_fastvideo(config, round_even_up=True)
    assert widened == 24 and doc["1_2_3"] == [1, 3, 3]


def test_import_errors():
    rng = np.random.default_rng(0)
    doc = fastvideo_doc(rng)
    with pytest.raises(UserError, match="layer 2 in the file, but the model has 2 layers"):
        fastvideo_to_mask(doc, canvas=CANVAS, model=dict(MODEL, num_layers=2))
    with pytest.raises(UserError, match="head 3 in the file, but the model has 3 heads"):
        fastvideo_to_mask(doc, canvas=CANVAS, model=dict(MODEL, num_heads=3))
    partial = dict(doc)
    partial.pop("3_1_2")
    with pytest.raises(UserError, match="missing e.g. 3_1_2"):
        fastvideo_to_mask(partial, canvas=CANVAS, model=MODEL)
    with pytest.raises(UserError, match="t_l_h"):
        fastvideo_to_mask({"a_b": [1, 1, 1]}, canvas=CANVAS, model=MODEL)
    with pytest.raises(UserError, match="three positive integers"):
        fastvideo_to_mask({"0_0_0": [1, 0, 1]}, canvas=CANVAS, model=MODEL)
    with pytest.raises(UserError, match="tile"):
        mask_to_fastvideo(MaskConfig.uniform(MODEL, CANVAS, (2, 4, 2), 0, 2, (1, 1, 1)))


def test_dimensions_from_a_model_folder(tmp_path):
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text(json.dumps({
        "_class_name": "HunyuanVideoTransformer3DModel", "num_layers": 2, "num_single_layers": 3,
        "num_attention_heads": 4,
    }))
    assert model_from_folder(tmp_path) == {"family": "hunyuan_video", "transformer_class": "HunyuanVideoTransformer3DModel",
                                           "num_heads": 4, "num_layers": 5}
    with pytest.raises(UserError, match="not a diffusers folder"):
        model_from_folder(tmp_path / "transformer" / "nothing")


def test_convert_cli_both_ways(tmp_path, seed):
    rng = np.random.default_rng(seed)
    doc = fastvideo_doc(rng)
    (tmp_path / "fv.json").write_text(json.dumps(doc))
    runner = CliRunner()
    result = runner.invoke(app, ["convert", str(tmp_path / "fv.json"), "--to", "yaml", "--canvas", "18,48,80",
                                 "--layers", "3", "--heads", "4", "--family", "wan",
                                 "--transformer-class", "WanTransformer3DModel", "--out", str(tmp_path / "m.yaml")])
    assert result.exit_code == 0, result.output
    config = MaskConfig.load(tmp_path / "m.yaml")
    config.validate(MODEL, CANVAS, 5)
    result = runner.invoke(app, ["convert", str(tmp_path / "m.yaml"), "--to", "fastvideo", "--out", str(tmp_path / "back.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "back.json").read_text()) == doc
    result = runner.invoke(app, ["convert", str(tmp_path / "fv.json"), "--to", "yaml"])
    assert isinstance(result.exception, UserError) and "--canvas" in str(result.exception)
