"""Mask config loading that a hostile or broken file cannot fool: YAML bombs, duplicate keys, truncation,
huge counts, edited lines; configs for another run refused by name; FastVideo export says what to do."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from sta_search.errors import UserError
from sta_search.maskconfig import MASK_SCHEMA, MASK_SCHEMA_V1, MaskConfig

INFO = {"family": "wan", "transformer_class": "WanTransformer3DModel", "num_layers": 3, "num_heads": 4}
CANVAS, TILE = (4, 8, 8), (2, 4, 2)  # grid (2, 2, 4)
FAST = 5.0  # seconds; generous: a refused bomb takes milliseconds, the unhardened loader minutes


def realistic_config(seed=0) -> MaskConfig:
    """Per-head layer rows, per-step overrides, dense steps and a nested summary: every section non-empty."""
    rng = np.random.default_rng(seed)
    steps, L, H = 6, 3, 4
    windows = np.broadcast_to(np.array([1, 2, 2]), (steps, L, H, 3)).copy()
    windows[:, 1] = rng.integers(1, [3, 3, 5], size=(H, 3))  # layer 1: per-head row on every step
    windows[:, 2] = (2, 2, 4)
    windows[3, 0, 2] = (1, 1, 3)  # overrides on sparse steps 3 and 5
    windows[5, 2] = (1, 2, 1)
    summary = {"density": 0.4, "heldout": {"error": 0.1, "folds": [0.1, 0.2]}, "profile_steps": [0, 2, 4],
               "strategy": "budget"}
    return MaskConfig(dict(INFO), CANVAS, TILE, 0, steps, (0, 1), windows, summary)


def _timed_refusal(text: str, match: str | None = None) -> str:
    start = time.perf_counter()
    with pytest.raises(UserError, match=match) as info:
        MaskConfig.loads(text)
    assert time.perf_counter() - start < FAST
    return str(info.value)


def billion_laughs(levels=12, fan=9) -> str:
    lines = ["  l0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"  l{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * fan) + "]" for i in range(1, levels)]
    base = realistic_config().to_yaml().split("\nsummary:")[0]
    return base + "\nsummary:\n" + "\n".join(lines) + "\n"


def test_billion_laughs_is_refused_fast(tmp_path):
    text = billion_laughs()
    assert len(text) < 2000  # 9**12 strings once expanded
    message = _timed_refusal(text, "anchors|aliases")
    assert "line" in message
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    start = time.perf_counter()
    with pytest.raises(UserError, match="not allowed"):
        MaskConfig.load(path)
    assert time.perf_counter() - start < FAST


@pytest.mark.parametrize("text, match", [
    ("a: &x 1\nb: *x\n", "anchors"),
    ("schema: sta-search/mask/v2\nsummary: {<<: {a: 1}}\n", "merge keys"),
    ("x: " + "[" * 5000 + "]" * 5000 + "\n", "nested deeper"),
    ("x: " + "- " * 3000 + "1\n", "nested deeper|not valid YAML"),
])
def test_aliases_merge_keys_and_deep_nesting_are_refused(text, match):
    _timed_refusal(text, match)


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.update(steps=10**9), "steps must be an integer in"),
    (lambda d: d["model"].update(num_layers=10**9), "num_layers must be an integer in"),
    (lambda d: d["model"].update(num_heads=10**7), "num_heads must be an integer in"),
    (lambda d: (d.update(steps=90_000), d["model"].update(num_layers=9_000, num_heads=9_000)), "exceeds"),
])
def test_huge_counts_are_refused_before_allocating(edit, match):
    doc = realistic_config().to_dict()
    edit(doc)
    doc.pop("entries")
    doc["schema"] = MASK_SCHEMA_V1
    _timed_refusal(yaml.safe_dump(doc), match)


def test_a_config_for_another_model_is_refused_before_building_its_table():
    text = realistic_config().to_yaml()
    with pytest.raises(UserError, match="num_heads: config has 4, model has 24"):
        MaskConfig.loads(text, expect=dict(INFO, num_heads=24))
    assert MaskConfig.loads(text, expect=INFO) == realistic_config()


def test_oversized_files_are_refused(tmp_path):
    from sta_search import maskconfig

    path = tmp_path / "big.yaml"
    path.write_bytes(b"#" * (maskconfig.MAX_FILE_BYTES + 1))
    with pytest.raises(UserError, match="larger than"):
        MaskConfig.load(path)


@pytest.mark.parametrize("appended, key", [("steps: 999\n", "steps"), ("tile: [1, 4, 4]\n", "tile")])
def test_duplicate_keys_are_refused_naming_key_and_lines(appended, key):
    text = realistic_config().to_yaml()
    first = next(i for i, line in enumerate(text.splitlines(), 1) if line.startswith(f"{key}:"))
    last = len(text.splitlines()) + 1
    message = _timed_refusal(text + appended, "duplicate key")
    assert f"duplicate key {key!r} at line {last} (first at line {first})" in message


def test_duplicate_keys_inside_nested_mappings_are_refused():
    text = realistic_config().to_yaml().replace("layers:\n", "layers:\n  1: '9,9,9'\n", 1)
    _timed_refusal(text, "duplicate key 1 at line 13 \\(first at line 11\\)")


def test_entries_are_written_and_a_disagreeing_count_names_both_numbers():
    config = realistic_config()
    doc = yaml.safe_load(config.to_yaml())
    assert doc["schema"] == MASK_SCHEMA
    assert doc["entries"] == {"layers": 2, "step_overrides": 2, "summary": 18}
    text = config.to_yaml().replace("layers: 2,", "layers: 3,", 1)
    assert "layers: 3," in text
    _timed_refusal(text, "entries.layers says 3 layer entries, the file holds 2")


def test_old_files_without_entries_still_load_new_ones_must_have_them():
    config = realistic_config()
    doc = config.to_dict()
    doc.pop("entries")
    assert MaskConfig.loads(yaml.safe_dump(dict(doc, schema=MASK_SCHEMA_V1), sort_keys=False)) == config
    _timed_refusal(yaml.safe_dump(doc, sort_keys=False), "missing entries")


def test_truncation_at_every_line_boundary_loads_identically_or_fails():
    config = realistic_config()
    text = config.to_yaml()
    lines = text.splitlines(keepends=True)
    assert len(lines) > 15  # block-style layers, overrides and summary: truncation can hit inside each
    identical = 0
    for cut in range(len(lines) + 1):
        try:
            loaded = MaskConfig.loads("".join(lines[:cut]))
        except UserError:
            continue
        assert loaded == config, f"truncated after line {cut} loads as a different config"
        identical += 1
    assert identical == 1  # only the whole file


def _edit_lines(lines: list[str], rng) -> list[str]:
    lines = list(lines)
    for _ in range(int(rng.integers(1, 4))):
        i = int(rng.integers(0, len(lines)))
        action = rng.integers(0, 4)
        if action == 0 and len(lines) > 1:
            del lines[i]
        elif action == 1:
            lines.insert(i, lines[i])
        elif action == 2:  # alter one character
            line = lines[i]
            if line.strip():
                j = int(rng.integers(0, len(line)))
                lines[i] = line[:j] + str(rng.choice(list("0123456789,[]{}:- &*'x"))) + line[j + 1:]
        else:  # swap with a neighbour
            k = min(i + 1, len(lines) - 1)
            lines[i], lines[k] = lines[k], lines[i]
    return lines


def test_randomly_edited_files_load_as_valid_configs_or_raise_user_error(seed):
    rng = np.random.default_rng(seed)
    lines = realistic_config().to_yaml().splitlines(keepends=True)
    outcomes = {"loaded": 0, "refused": 0}
    for _ in range(150):
        text = "".join(_edit_lines(lines, rng))
        start = time.perf_counter()
        try:
            loaded = MaskConfig.loads(text)
        except UserError:
            outcomes["refused"] += 1
        else:
            assert isinstance(loaded, MaskConfig) and loaded.windows.min() >= 1
            outcomes["loaded"] += 1
        assert time.perf_counter() - start < FAST
    assert outcomes["refused"] > 0


# ------------------------------------------------------------------------ no local paths in records
def test_model_identity_records_a_name_and_config_hash_not_a_path(tmp_path):
    from sta_search.artifacts import display_path, model_identity

    folder = tmp_path / "my-model"
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text('{"_class_name": "WanPipeline"}')
    (folder / "transformer" / "config.json").write_text('{"num_layers": 2}')
    identity = model_identity(str(folder))
    assert identity["source"] == "my-model" and str(tmp_path) not in str(identity)
    (folder / "transformer" / "config.json").write_text('{"num_layers": 3}')
    assert model_identity(str(folder))["config_sha256"] != identity["config_sha256"]
    assert model_identity("tiny")["source"] == "tiny"
    assert not display_path(tmp_path / "bench" / "results").startswith("/")


def test_cost_model_source_in_a_mask_summary_is_not_absolute(tmp_path):
    import json

    from sta_search.costmodel import load_cost_model

    results = tmp_path / "results"
    results.mkdir()
    records = [{"density": d, "sta_ms": 0.05 + 0.95 * d, "dense_ms": 1.0} for d in (0.1, 0.3, 0.6)]
    (results / "kernel-x.json").write_text(json.dumps({"records": records}))
    source = load_cost_model(results).source
    assert source.startswith("fitted to 3 records") and "results/kernel-*.json" in source
    assert str(tmp_path) not in source


# ------------------------------------------------------------------------ configs for another run
def test_check_config_names_every_mismatch_with_both_values():
    from sta_search.accelerate import check_config

    config = realistic_config()
    check_config(config, INFO, CANVAS, 6, tile=TILE)
    other = dict(INFO, transformer_class="HunyuanVideoTransformer3DModel", num_layers=5, num_heads=8)
    with pytest.raises(UserError) as info:
        check_config(config, other, (4, 8, 16), 30, tile=(1, 4, 4), declared="from sta_search.json")
    message = str(info.value)
    for part in ("transformer_class: config has 'WanTransformer3DModel', model has 'HunyuanVideoTransformer3DModel'",
                 "num_layers: config has 3, model has 5", "num_heads: config has 4, model has 8",
                 "canvas: config has [4, 8, 8], run has [4, 8, 16]", "steps: config has 6, run has 30",
                 "tile: config has [2, 4, 2], run has [1, 4, 4]", "from sta_search.json"):
        assert part in message


def test_generate_refuses_a_config_for_another_canvas_of_the_bundled_model(tmp_path):
    """The bundled model declares 64x64, 8 frames (canvas 8,16,16) and tile 2,4,4; a config for another
    canvas used to run (minutes on CPU). Now exit 2 naming both canvases, before any step."""
    info = {"family": "wan", "transformer_class": "WanTransformer3DModel", "num_layers": 6, "num_heads": 6}
    config = MaskConfig.uniform(info, (8, 32, 32), (2, 4, 4), 0, 8, (1, 1, 1))
    config.save(tmp_path / "mask.yaml")
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-m", "sta_search", "generate", "tiny", "--mask", str(tmp_path / "mask.yaml"),
                             "--prompt", "x", "--device", "cpu", "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    message = " ".join(result.stderr.split())
    assert "canvas: config has [8, 32, 32], run has [8, 16, 16]" in message
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "out").glob("*.mp4"))


# ------------------------------------------------------------------------ FastVideo export
def demo_like_config() -> MaskConfig:
    info = {"family": "wan", "transformer_class": "WanTransformer3DModel", "num_layers": 2, "num_heads": 3}
    config = MaskConfig.uniform(info, (8, 16, 16), (2, 4, 4), 0, 4, (2, 2, 2), dense_steps=(0,))
    windows = config.windows.copy()
    windows[2, 1] = [(1, 2, 3), (4, 4, 4), (2, 1, 1)]
    return config.replace(windows=windows)


def test_fastvideo_export_names_failing_constraints_and_the_nearest_config():
    from sta_search.convert import mask_to_fastvideo, nearest_fastvideo_config

    config = demo_like_config()
    with pytest.raises(UserError) as info:
        mask_to_fastvideo(config)
    message = str(info.value)
    assert "tile 6,8,8, this config uses 2,4,4" in message and "--nearest" in message and "density" in message
    near = nearest_fastvideo_config(config)
    assert near.tile == (6, 8, 8) and near.dense_steps == config.dense_steps
    doc, widened = mask_to_fastvideo(config, nearest=True)
    assert widened > 0 and len(doc) == 4 * 2 * 3
    grid = np.asarray(near.geometry.grid)
    old_extent = np.minimum(config.windows * np.asarray(config.tile), np.asarray(config.canvas))
    for key, window in doc.items():
        t, l, h = (int(v) for v in key.split("_"))
        window = np.asarray(window)
        assert np.all((window % 2 == 1) | (window >= grid))  # nothing FastVideo would read differently
        if t not in config.dense_steps:  # covers at least the original tokens along every axis
            assert np.all(np.minimum(window * np.asarray((6, 8, 8)), config.canvas) >= old_extent[t, l, h])


def test_fastvideo_export_with_even_windows_suggests_round_even_up():
    from sta_search.convert import mask_to_fastvideo

    info = {"family": "wan", "transformer_class": "WanTransformer3DModel", "num_layers": 1, "num_heads": 2}
    config = MaskConfig.uniform(info, (30, 48, 80), (6, 8, 8), 0, 2, (2, 3, 3))
    with pytest.raises(UserError, match="even window w < n.*--round-even-up"):
        mask_to_fastvideo(config)
    assert mask_to_fastvideo(config, nearest=True)[0]["0_0_0"] == [3, 3, 3]


def test_mask_naming_a_folder_says_it_is_a_folder(tmp_path):
    from sta_search.accelerate import load_mask

    with pytest.raises(UserError, match="is a folder, not a YAML file"):
        load_mask(tmp_path)
    with pytest.raises(UserError, match="not found"):
        load_mask(tmp_path / "missing.yaml")
