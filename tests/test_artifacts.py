"""Profile artifact: atomic save/load, exact merge, clear errors for bad files."""

import json

import numpy as np
import pytest
import torch

from sta_search.artifacts import HEADER_FILE, STATS_FILE, Profile, expected_shapes, merge_profiles
from sta_search.errors import UserError
from synthetic_profile import synthetic_header, synthetic_profile


def _random_prompt_data(header, rng):
    shapes = expected_shapes(header)
    return {
        "recall_sum": torch.from_numpy(rng.random(shapes["recall_sum"])).float(),
        "offset_mass_sum": torch.from_numpy(rng.random(shapes["offset_mass_sum"])).float(),
        "error": torch.from_numpy(rng.random(shapes["error"][1:])).float(),
        "recall": torch.from_numpy(rng.random(shapes["recall"][1:])).float(),
        "count": torch.full(shapes["count"], 2.0, dtype=torch.float64),
    }


def test_save_load_round_trip_is_exact(tmp_path, seed):
    profile = synthetic_profile(prompts=3, rng=seed)
    profile.save(tmp_path / "p")
    loaded = Profile.load(tmp_path / "p")
    assert loaded.header == profile.header
    assert set(loaded.tensors) == set(profile.tensors)
    for name, tensor in profile.tensors.items():
        assert loaded.tensors[name].dtype == tensor.dtype
        assert torch.equal(loaded.tensors[name], tensor), name
    written = json.loads((tmp_path / "p" / HEADER_FILE).read_text())
    assert len(written.pop("stats_sha256")) == 64  # the tensors' checksum, checked on load
    assert written == profile.header


def test_save_replaces_existing_profile_and_leaves_no_temp_files(tmp_path, seed):
    rng = np.random.default_rng(seed)
    header = synthetic_header()
    profile = Profile.empty(header)
    target = tmp_path / "p"
    for index in range(3):
        profile = profile.add_prompt(f"prompt {index}", **_random_prompt_data(header, rng))
        profile.save(target)
        assert Profile.load(target).prompts == profile.prompts
    assert sorted(p.name for p in target.iterdir()) == sorted([HEADER_FILE, STATS_FILE])
    assert [p.name for p in tmp_path.iterdir()] == ["p"]


def test_crash_between_the_two_renames_still_loads_the_new_stats(tmp_path, seed):
    rng = np.random.default_rng(seed)
    header = synthetic_header()
    one = Profile.empty(header).add_prompt("a", **_random_prompt_data(header, rng))
    two = one.add_prompt("b", **_random_prompt_data(header, rng))
    target = tmp_path / "p"
    one.save(target)
    stale_header = (target / HEADER_FILE).read_text()
    two.save(target)
    (target / HEADER_FILE).write_text(stale_header)  # as if the process died before renaming header.json
    loaded = Profile.load(target)
    assert loaded.prompts == ("a", "b")
    assert torch.equal(loaded.tensors["error"], two.tensors["error"])


def test_add_prompt_accumulates_sums_and_rows(seed):
    rng = np.random.default_rng(seed)
    header = synthetic_header()
    data = [_random_prompt_data(header, rng) for _ in range(3)]
    profile = Profile.empty(header)
    for index, d in enumerate(data):
        profile = profile.add_prompt(f"p{index}", **d)
    expected_sum = sum(d["recall_sum"].double() for d in data)
    torch.testing.assert_close(profile.tensors["recall_sum"].double(), expected_sum, rtol=1e-6, atol=1e-6)
    assert torch.equal(profile.tensors["error"], torch.stack([d["error"] for d in data]))
    assert torch.equal(profile.tensors["count"], torch.full_like(profile.tensors["count"], 6.0))
    torch.testing.assert_close(profile.mean_recall().double(), expected_sum / 6.0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(profile.mean_error(), torch.stack([d["error"] for d in data]).mean(0))


def test_merge_is_exact(seed):
    rng = np.random.default_rng(seed)
    header = synthetic_header()
    data = [_random_prompt_data(header, rng) for _ in range(4)]
    whole = Profile.empty(header)
    first = Profile.empty(header)
    second = Profile.empty(header)
    for index, d in enumerate(data):
        whole = whole.add_prompt(f"p{index}", **d)
        if index < 2:
            first = first.add_prompt(f"p{index}", **d)
        else:
            second = second.add_prompt(f"p{index}", **d)
    merged = merge_profiles([first, second])
    assert merged.prompts == whole.prompts
    for name in ("error", "recall"):
        assert torch.equal(merged.tensors[name], whole.tensors[name])
    assert torch.equal(merged.tensors["count"], whole.tensors["count"])
    for name in ("recall_sum", "offset_mass_sum"):  # float32 sums: equal up to the order of additions
        torch.testing.assert_close(merged.tensors[name], whole.tensors[name], rtol=1e-6, atol=1e-6)
        manual = first.tensors[name].double() + second.tensors[name].double()
        assert torch.equal(merged.tensors[name], manual.float())


@pytest.mark.parametrize(
    "change, named",
    [
        ({"canvas": (4, 8, 12)}, "canvas"),
        ({"tile": (2, 2, 4)}, "tile"),
        ({"num_layers": 3}, "model.num_layers"),
        ({"steps": 10}, "steps"),
        ({"profile_steps": [0, 3, 6]}, "profile_steps"),
        ({"error_windows": ((1, 1, 1), (2, 2, 2))}, "error_windows"),
        ({"transformer_class": "HunyuanVideoTransformer3DModel", "family": "hunyuan_video"}, "model.transformer_class"),
    ],
)
def test_merge_refuses_different_setups(change, named):
    a = synthetic_profile(prompts=1, rng=1)
    b = synthetic_profile(prompts=1, rng=2, **change)
    with pytest.raises(UserError, match=named.replace(".", r"\.")):
        merge_profiles([a, b])


def test_merge_refuses_the_same_prompt_and_seed_twice():
    a = synthetic_profile(prompts=2, rng=1)
    with pytest.raises(UserError, match="more than one profile"):
        merge_profiles([a, a])


def test_means_of_an_empty_profile_are_a_user_error():
    empty = Profile.empty(synthetic_header())
    with pytest.raises(UserError, match="no samples"):
        empty.mean_recall()
    with pytest.raises(UserError, match="no prompts"):
        empty.mean_error()


def test_load_errors(tmp_path, seed):
    with pytest.raises(UserError, match="not found"):
        Profile.load(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        Profile.load(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="missing"):
        Profile.load(tmp_path / "empty")

    profile = synthetic_profile(prompts=2, rng=seed)
    profile.save(tmp_path / "p")
    stats = tmp_path / "p" / STATS_FILE
    data = stats.read_bytes()
    for cut in (5, len(data) // 2, len(data) - 3):
        stats.write_bytes(data[:cut])
        with pytest.raises(UserError, match="corrupt or truncated"):
            Profile.load(tmp_path / "p")
    stats.write_bytes(b"\x00" * len(data))
    with pytest.raises(UserError):
        Profile.load(tmp_path / "p")


def test_inconsistent_header_and_tensors_are_refused(seed):
    profile = synthetic_profile(prompts=2, rng=seed)
    header = dict(profile.header, prompts=["only one"])
    with pytest.raises(UserError, match="shape"):
        Profile(header, profile.tensors)
    tensors = dict(profile.tensors, error=profile.tensors["error"].clone())
    tensors["error"][0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(UserError, match="non-finite"):
        Profile(profile.header, tensors)
    with pytest.raises(UserError, match="schema"):
        Profile(dict(profile.header, schema="other"), profile.tensors)
    with pytest.raises(UserError, match="profile_steps"):
        Profile(dict(profile.header, profile_steps=[0, 2, 4, 99]), profile.tensors)


# ------------------------------------------------------------------------ corrupted profiles
def _rewrite_embedded_header(folder, edit):
    """Edit the header embedded in stats.safetensors (authoritative on load) and header.json alike."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = folder / STATS_FILE
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    header = json.loads(metadata["sta_search_header"])
    header.pop("stats_sha256")  # as in a profile of an older version: the header checks alone must catch the edit
    edit(header)
    text = json.dumps(header)
    save_file(tensors, str(path), metadata={"sta_search_header": text})
    (folder / HEADER_FILE).write_text(text)


def _set(path, value):
    def edit(header):
        node = header
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


def _flip(offset_fraction):
    def corrupt(folder):
        path = folder / STATS_FILE
        data = bytearray(path.read_bytes())
        index = int(len(data) * offset_fraction)
        data[index] ^= 0x5A
        path.write_bytes(bytes(data))
    return corrupt


def _truncate(fraction, name=STATS_FILE):
    def corrupt(folder):
        path = folder / name
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * fraction)])
    return corrupt


def _header_edit(path, value):
    return lambda folder: _rewrite_embedded_header(folder, _set(path, value))


CORRUPTIONS = {
    **{f"truncate stats {f}": _truncate(f) for f in (0.0, 0.003, 0.05, 0.5, 0.99)},
    **{f"flip stats byte {f}": _flip(f) for f in (0.0, 0.004, 0.02, 0.3, 0.6, 0.999)},
    "delete stats": lambda folder: (folder / STATS_FILE).unlink(),
    "stats is a folder": lambda folder: ((folder / STATS_FILE).unlink(), (folder / STATS_FILE).mkdir()),
    "stats not safetensors": lambda folder: (folder / STATS_FILE).write_bytes(b"\xff" * 64),
    "huge header length": lambda folder: (folder / STATS_FILE).write_bytes((2**62).to_bytes(8, "little") + b"{}"),
    "steps string": _header_edit(["steps"], "8"),
    "steps negative": _header_edit(["steps"], -8),
    "steps huge": _header_edit(["steps"], 10**30),
    "steps bool": _header_edit(["steps"], True),
    "layers huge": _header_edit(["model", "num_layers"], 10**12),
    "layers bool": _header_edit(["model", "num_layers"], True),
    "heads float": _header_edit(["model", "num_heads"], 3.0),
    "heads null": _header_edit(["model", "num_heads"], None),
    "model list": _header_edit(["model"], [1, 2]),
    "canvas infinite": _header_edit(["canvas"], [float("inf"), 8, 8]),
    "canvas nan": _header_edit(["canvas"], [float("nan"), 8, 8]),
    "canvas huge": _header_edit(["canvas"], [10**18, 8, 8]),
    "canvas negative": _header_edit(["canvas"], [-4, 8, 8]),
    "canvas string": _header_edit(["canvas"], "4,8,8"),
    "tile nested": _header_edit(["tile"], [[2], 4, 2]),
    "profile steps out of range": _header_edit(["profile_steps"], [0, 2, 4, 99]),
    "profile steps dict": _header_edit(["profile_steps"], {"0": 1}),
    "error windows string": _header_edit(["error_windows"], "1,1,1"),
    "error window dict": _header_edit(["error_windows"], [{"a": 1, "b": 2, "c": 3}]),
    "prompts dropped": _header_edit(["prompts"], []),
    "prompts numbers": _header_edit(["prompts"], [1, 2]),
    "text_len negative": _header_edit(["text_len"], -1),
    "schema other": _header_edit(["schema"], "sta-search/profile/v9"),
    "checksum kept, header edited": lambda folder: _rewrite_embedded_header_text(
        folder, (folder / HEADER_FILE).read_text().replace('"family": "wan"', '"family": "cogvideox"')),
    "header a list": lambda folder: _rewrite_embedded_header_text(folder, "[1, 2]"),
    "header not json": lambda folder: _rewrite_embedded_header_text(folder, "{not json"),
    "header deeply nested": lambda folder: _rewrite_embedded_header_text(folder, "[" * 100_000 + "]" * 100_000),
}


def _rewrite_embedded_header_text(folder, text):
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = folder / STATS_FILE
    with safe_open(str(path), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    save_file(tensors, str(path), metadata={"sta_search_header": text})


@pytest.fixture(scope="module")
def saved_profile(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz") / "p"
    profile = synthetic_profile(prompts=2, rng=3)
    profile.save(folder)
    return profile, folder


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corrupted_profiles_raise_one_line_user_errors(name, saved_profile, tmp_path):
    import shutil

    profile, original = saved_profile
    folder = tmp_path / "p"
    shutil.copytree(original, folder)
    CORRUPTIONS[name](folder)
    try:
        loaded = Profile.load(folder)
    except UserError as exc:
        assert "\n" not in str(exc) and str(exc)
        return
    assert loaded.header == profile.header  # the only other outcome: the very same profile
    for key, tensor in profile.tensors.items():
        assert torch.equal(loaded.tensors[key], tensor), key


@pytest.mark.parametrize("corrupt", ["truncate", "flip", "garbage", "delete"])
def test_a_broken_header_json_beside_intact_stats_loads_the_same_profile(corrupt, saved_profile, tmp_path):
    import shutil

    profile, original = saved_profile
    folder = tmp_path / "p"
    shutil.copytree(original, folder)
    path = folder / HEADER_FILE
    text = path.read_text()
    if corrupt == "truncate":
        path.write_text(text[: len(text) // 2])
    elif corrupt == "flip":
        path.write_text(text.replace('"steps": 8', '"steps": 9'))
    elif corrupt == "garbage":
        path.write_bytes(b"\xff\xfe garbage")
    else:
        path.unlink()
    loaded = Profile.load(folder)
    assert loaded.header == profile.header


def test_flipped_statistics_fail_the_checksum(saved_profile, tmp_path):
    """A flipped byte inside the tensor data keeps every shape valid: only the checksum can tell."""
    import shutil

    _, original = saved_profile
    folder = tmp_path / "p"
    shutil.copytree(original, folder)
    path = folder / STATS_FILE
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # last tensor's data, far past the JSON header
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="checksum"):
        Profile.load(folder)
