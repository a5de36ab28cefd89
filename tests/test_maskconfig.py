"""Mask config: exact YAML round trips, compact form, validation naming every mismatch, robust loading."""

import copy

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sta_search.errors import UserError
from sta_search.kernels.geometry import Geometry
from sta_search.maskconfig import MASK_SCHEMA, MaskConfig

INFO = {"family": "wan", "transformer_class": "WanTransformer3DModel", "num_layers": 3, "num_heads": 4}
CANVAS, TILE = (4, 8, 8), (2, 4, 2)  # grid (2, 2, 4)


def random_config(rng, steps=6, dense=2, L=3, H=4, distinct=4) -> MaskConfig:
    palette = np.stack([rng.integers(1, [3, 3, 5]) for _ in range(distinct)])
    windows = palette[rng.integers(0, distinct, size=(steps, L, H))]
    model = dict(INFO, num_layers=L, num_heads=H)
    summary = {"density": float(rng.random()), "note": "random"}
    return MaskConfig(model, CANVAS, TILE, 0, steps, tuple(range(dense)), windows, summary)


def test_random_tables_round_trip_exactly(tmp_path, seed):
    rng = np.random.default_rng(seed)
    for index in range(20):
        config = random_config(rng, steps=int(rng.integers(1, 8)), dense=0, L=int(rng.integers(1, 4)),
                               H=int(rng.integers(1, 5)), distinct=int(rng.integers(1, 5)))
        dense = tuple(sorted(rng.choice(config.steps, size=int(rng.integers(0, config.steps)), replace=False).tolist()))
        config = config.replace(dense_steps=dense)
        path = tmp_path / f"m{index}.yaml"
        config.save(path)
        loaded = MaskConfig.load(path)
        assert loaded == config
        for step in config.sparse_steps:
            assert np.array_equal(loaded.window_table(step), config.windows[step])
        for step in config.dense_steps:
            assert loaded.window_table(step) is None


def test_uniform_config_is_compact():
    config = MaskConfig.uniform(INFO, CANVAS, TILE, 0, 10, (1, 2, 3), dense_steps=(0, 1, 2))
    doc = yaml.safe_load(config.to_yaml())
    assert doc["schema"] == MASK_SCHEMA
    assert doc["default_window"] == [1, 2, 3]
    assert doc["layers"] == {} and doc["step_overrides"] == {}
    assert doc["dense_steps"] == [0, 1, 2]
    assert MaskConfig.loads(config.to_yaml()) == config
    assert config.density() == pytest.approx(Geometry(CANVAS, TILE).density((1, 2, 3)))
    assert config.overall_density() == pytest.approx((3 + 7 * config.density()) / 10)


def test_compact_form_lists_only_differences():
    config = MaskConfig.uniform(INFO, CANVAS, TILE, 0, 5, (1, 1, 1), dense_steps=(0,))
    windows = config.windows.copy()
    windows[1:, 2] = (2, 2, 4)  # layer 2, every sparse step, every head
    windows[3, 0, 1] = (1, 2, 3)  # one head of one step
    config = config.replace(windows=windows)
    doc = yaml.safe_load(config.to_yaml())
    assert doc["layers"] == {2: "2,2,4"}
    assert doc["step_overrides"] == {3: {0: ["1,1,1", "1,2,3", "1,1,1", "1,1,1"]}}
    assert MaskConfig.loads(config.to_yaml()) == config


def test_density_is_the_mean_exact_density_of_the_sparse_entries(seed):
    rng = np.random.default_rng(seed)
    config = random_config(rng)
    geometry = Geometry(CANVAS, TILE)
    sparse = config.windows[list(config.sparse_steps)].reshape(-1, 3)
    expected = np.mean([geometry.density(tuple(w)) for w in sparse])
    assert config.density() == pytest.approx(expected, rel=1e-12)


def test_validate_names_every_mismatch():
    config = MaskConfig.uniform(INFO, CANVAS, TILE, 0, 10, (1, 1, 1))
    config.validate(INFO, CANVAS, 10)
    other = dict(INFO, num_layers=5, num_heads=8, transformer_class="HunyuanVideoTransformer3DModel")
    with pytest.raises(UserError) as info:
        config.validate(other, (4, 8, 16), steps=30)
    message = str(info.value)
    for part in ("num_layers: config has 3, model has 5", "num_heads", "transformer_class", "canvas", "steps: config has 10"):
        assert part in message


def test_validate_accepts_model_info_objects():
    from types import SimpleNamespace

    config = MaskConfig.uniform(INFO, CANVAS, TILE, 0, 4, (1, 1, 1))
    config.validate(SimpleNamespace(**INFO, head_dim=64), CANVAS)
    with pytest.raises(UserError, match="num_heads"):
        config.validate(SimpleNamespace(**dict(INFO, num_heads=2)), CANVAS)


def _valid_doc():
    rng = np.random.default_rng(0)
    return yaml.safe_load(random_config(rng).to_yaml())


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(schema="sta-search/mask/v0"), "schema"),
        (lambda d: d.pop("canvas"), "missing canvas"),
        (lambda d: d.update(layers={7: "1,1,1"}), "layer 7 outside"),
        (lambda d: d.update(layers={0: ["1,1,1"] * 5}), "5 windows for 4 heads"),
        (lambda d: d.update(default_window=[0, 1, 1]), "default_window"),
        (lambda d: d.update(step_overrides={0: {0: "1,1,1"}}), "dense step"),
        (lambda d: d.update(step_overrides={99: {0: "1,1,1"}}), "step 99 outside"),
        (lambda d: d.update(dense_steps=[0, 50]), "dense_steps"),
        (lambda d: d["model"].update(num_heads="four"), "num_heads"),
        (lambda d: d.update(tile=[2, 2, 2]), "multiple of 16"),
        (lambda d: d.update(extra=1), "unknown keys"),
    ],
)
def test_invalid_documents_are_named(edit, message):
    doc = _valid_doc()
    edit(doc)
    with pytest.raises(UserError, match=message):
        MaskConfig.loads(yaml.safe_dump(doc))


def test_several_problems_are_reported_together():
    doc = _valid_doc()
    doc["schema"] = "nope"
    doc["layers"] = {9: "1,1,1"}
    doc["steps"] = 0
    with pytest.raises(UserError) as info:
        MaskConfig.loads(yaml.safe_dump(doc))
    assert "schema" in str(info.value) and "steps" in str(info.value)


def test_file_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        MaskConfig.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("schema: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        MaskConfig.load(bad)
    good = tmp_path / "good.yaml"
    random_config(np.random.default_rng(1)).save(good)
    text = good.read_text()
    for cut in (10, len(text) // 3, len(text) // 2):
        bad.write_text(text[:cut])
        with pytest.raises(UserError):
            MaskConfig.load(bad)
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(UserError):
        MaskConfig.load(bad)


# ------------------------------------------------------------------------ property-based
yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=True), st.text(max_size=12),
    st.sampled_from(["1,1,1", "3,3,3", "2x2x2", "0,1,1", "1,2", "a,b,c"]),
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.one_of(st.integers(-3, 60), st.text(max_size=8)), children, max_size=5),
    ),
    max_leaves=20,
)
KEYS = ["schema", "model", "canvas", "tile", "text_len", "steps", "dense_steps", "default_window", "layers",
        "step_overrides", "summary", "family", "num_layers", "num_heads", "0", 0, 1, 3]


def _load_or_user_error(text: str):
    try:
        MaskConfig.loads(text)
    except UserError:
        pass


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_random_text_loads_or_raises_user_error(text):
    _load_or_user_error(text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.lists(st.sampled_from(KEYS), min_size=1, max_size=3),
                          st.one_of(st.just("delete"), yaml_values)), min_size=1, max_size=4))
def test_random_edits_of_a_valid_config_load_or_raise_user_error(edits):
    doc = copy.deepcopy(_valid_doc())
    for path, value in edits:
        node = doc
        for key in path[:-1]:
            if isinstance(node, dict) and key in node:
                node = node[key]
            elif isinstance(node, list) and isinstance(key, int) and -len(node) <= key < len(node):
                node = node[key]
            else:
                break
        last = path[-1]
        if isinstance(node, dict):
            if value == "delete":
                node.pop(last, None)
            else:
                node[last] = value
        elif isinstance(node, list) and isinstance(last, int) and -len(node) <= last < len(node):
            if value == "delete":
                del node[last]
            else:
                node[last] = value
    try:
        text = yaml.safe_dump(doc)
    except yaml.YAMLError:
        return
    _load_or_user_error(text)


@settings(max_examples=100, deadline=None)
@given(yaml_values)
def test_random_documents_load_or_raise_user_error(value):
    _load_or_user_error(yaml.safe_dump(value))
