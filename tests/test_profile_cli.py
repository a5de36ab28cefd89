"""`sta-search profile` end to end on tiny random-init Wan / HunyuanVideo / CogVideoX pipelines (CPU),
crash recovery with --resume, and the user errors (exit code 2)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sta_search.artifacts import Profile

sys.path.insert(0, str(Path(__file__).parent))
from tiny_pipes import save_tiny  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SIZE = ["--height", "64", "--width", "128", "--frames", "9", "--tile", "1,4,4"]  # canvas (3, 4, 8), grid (3, 1, 2)


def _cli(*args, env=None, timeout=240):
    full_env = dict(os.environ, COLUMNS="1000", **(env or {}))  # no wrapping of the one-line errors
    full_env.pop("TRITON_INTERPRET", None)  # the CPU path of the profiler is the PyTorch reference
    return subprocess.run([sys.executable, "-m", "sta_search", *map(str, args)], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_models")
    return {kind: save_tiny(kind, root / kind) for kind in ("wan", "hunyuan_video", "cogvideox")}


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# three prompts\na cat running in the street\n\nthe red car in the city\n"
                    "  a boat on the ocean at night  \n")
    return path


@pytest.mark.parametrize("kind", ["wan", "hunyuan_video", "cogvideox"])
def test_profile_end_to_end(tiny_models, prompts, tmp_path, kind):
    out = tmp_path / "profile"
    result = _cli("profile", tiny_models[kind], "--prompts", prompts, "--steps", "3", "--profile-steps", "2",
                  "--windows", "1,1,1;1,1,2", "--windows", "2,1,2", "--windows", "9,9,9", *SIZE, "--seed", "3",
                  "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mean recall per layer" in result.stdout
    assert "(statistics: reference)" in " ".join(result.stdout.split())
    profile = Profile.load(out)
    h = profile.header
    assert h["statistics"].startswith("reference: ")  # CPU: the PyTorch path
    assert h["model"]["family"] == kind
    assert h["canvas"] == [3, 4, 8] and h["tile"] == [1, 4, 4] and profile.grid == (3, 1, 2)
    assert h["profile_steps"] == [0, 2] and h["steps"] == 3 and h["seed"] == 3
    assert h["prompts"] == ["a cat running in the street", "the red car in the city", "a boat on the ocean at night"]
    assert h["error_windows"] == [[1, 1, 1], [1, 1, 2], [2, 1, 2], [3, 1, 2]]  # clipped, deduped, by density
    assert h["text_first"] == (kind == "cogvideox")
    assert (h["text_len"] > 0) == (kind != "wan")
    P, L, H = 2, h["model"]["num_layers"], h["model"]["num_heads"]
    items_per_forward = 2 if kind == "cogvideox" else 1  # CogVideoX batches cond + uncond in one forward
    count = profile.tensors["count"]
    assert count.shape == (P,) and bool((count == 3 * h["forwards_per_step"] * items_per_forward).all())
    recall = profile.mean_recall()
    assert recall.shape == (P, L, H, 3, 1, 2)
    assert bool((recall >= -1e-6).all()) and bool((recall <= 1 + 1e-5).all())
    torch.testing.assert_close(recall[..., -1, -1, -1], torch.ones(P, L, H), atol=1e-4, rtol=0)
    assert bool((recall.diff(dim=3) >= -1e-6).all()) and bool((recall.diff(dim=5) >= -1e-6).all())
    offsets = profile.mean_offset_mass()
    assert offsets.shape == (P, L, H, 5, 1, 3)
    text_mass = 1 - offsets.sum(dim=(-3, -2, -1))
    assert bool((text_mass >= -1e-4).all()) and (bool((text_mass > 1e-3).all()) == (kind != "wan"))
    error = profile.tensors["error"]
    assert error.shape == (3, P, L, H, 4)
    assert bool((error[..., -1] == 0).all())  # full window
    assert bool((error[..., :-1] > 0).all()) and bool(torch.isfinite(error).all())
    # per-prompt shortlist recall agrees with the summed all-window table
    short = profile.tensors["recall"].mean(0)
    windows = [tuple(w) for w in h["error_windows"]]
    for i, w in enumerate(windows):
        torch.testing.assert_close(short[..., i], recall[..., w[0] - 1, w[1] - 1, w[2] - 1], atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_kill_during_second_prompt_then_resume_is_bit_identical(tiny_models, prompts, tmp_path):
    args = ["profile", tiny_models["wan"], "--prompts", prompts, "--steps", "2", *SIZE, "--seed", "11"]
    crashed = tmp_path / "crashed"
    result = _cli(*args, "--out", crashed, env={"STA_SEARCH_TEST_KILL_AT": "1:1"})
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    partial = Profile.load(crashed)
    assert partial.prompts == ("a cat running in the street",)
    result = _cli(*args, "--out", crashed, "--resume")
    assert result.returncode == 0, result.stderr[-2000:]
    whole = tmp_path / "whole"
    result = _cli(*args, "--out", whole)
    assert result.returncode == 0, result.stderr[-2000:]
    resumed, uninterrupted = Profile.load(crashed), Profile.load(whole)
    assert resumed.header == uninterrupted.header
    for name, tensor in uninterrupted.tensors.items():
        assert torch.equal(resumed.tensors[name], tensor), name
    # resuming a finished profile does nothing; resuming with other settings is refused
    result = _cli(*args[:-2], "--seed", "12", "--out", crashed, "--resume")
    assert result.returncode == 2
    assert "seed: 11 in the profile vs 12 now" in result.stderr
    result = _cli(*args, "--out", crashed)  # no --resume on an existing profile
    assert result.returncode == 2 and "--resume" in result.stderr


def _in_process(*args):
    """The command in-process (CliRunner): returns the UserError it raised (cli.run maps it to exit 2,
    checked through subprocesses above and below), or None."""
    from typer.testing import CliRunner

    from sta_search.cli import app
    from sta_search.errors import UserError

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, UserError), repr(result.exception)
    return result.exception


def test_user_errors_exit_2(tiny_models, tmp_path, capsys):
    from sta_search import cli

    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(SystemExit) as exited:  # the console entry in-process: one line, exit code 2
        cli.run(["profile", str(tiny_models["wan"]), "--prompts", str(empty), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "holds no prompts" in err and "Traceback" not in err
    good = tmp_path / "p.txt"
    good.write_text("a cat\n")
    assert "nope" in str(_in_process("profile", tmp_path / "nope", "--prompts", good, "--out", tmp_path / "o"))
    not_diffusers = tmp_path / "plain"
    not_diffusers.mkdir()
    (not_diffusers / "weights.bin").write_bytes(b"\0" * 8)
    assert "plain" in str(_in_process("profile", not_diffusers, "--prompts", good, "--out", tmp_path / "o"))
    unsupported = tmp_path / "flux"
    (unsupported / "transformer").mkdir(parents=True)
    (unsupported / "model_index.json").write_text(json.dumps(
        {"_class_name": "FluxPipeline", "_diffusers_version": "0.42.1",
         "transformer": ["diffusers", "FluxTransformer2DModel"]}))
    (unsupported / "transformer" / "config.json").write_text(json.dumps({"_class_name": "FluxTransformer2DModel"}))
    message = str(_in_process("profile", unsupported, "--prompts", good, "--out", tmp_path / "o"))
    assert "FluxTransformer2DModel" in message and "WanTransformer3DModel" in message  # supported ones listed
    message = str(_in_process("profile", tiny_models["wan"], "--prompts", good, "--profile-steps", "zero",
                              "--out", tmp_path / "o"))
    assert "zero" in message
    assert "--tile" in str(_in_process("profile", tiny_models["wan"], "--prompts", good, "--tile", "1,3,3",
                                       "--out", tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_non_finite_attention_inputs_name_layer_and_step(tiny_models, tmp_path):
    from safetensors.torch import load_file, save_file
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_models["wan"], broken)
    weights = next((broken / "transformer").glob("*.safetensors"))
    state = load_file(str(weights))
    name = next(n for n in state if "blocks.1.attn1.to_k.weight" in n)
    state[name] = torch.full_like(state[name], float("nan"))
    save_file(state, str(weights))
    good = tmp_path / "p.txt"
    good.write_text("a cat\n")
    result = _cli("profile", broken, "--prompts", good, "--steps", "2", *SIZE, "--out", tmp_path / "o")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "non-finite" in result.stderr and "layer 1" in result.stderr and "step 0" in result.stderr
    assert not (tmp_path / "o").exists()


def test_prompt_files(tmp_path):
    """Bundled sets ship inside the package (package data, read through importlib.resources)."""
    from sta_search.errors import UserError
    from sta_search.options import bundled_prompts_file, read_prompts

    default, quick = read_prompts("default"), read_prompts("quick")
    assert len(default) == 16 and len(set(default)) == 16 and len(quick) == 4
    assert set(quick) <= set(default) and not any(p.startswith("#") for p in default)
    packaged = Path(str(bundled_prompts_file("quick")))
    assert packaged.parent == REPO / "sta_search" / "prompts" and read_prompts(packaged) == quick
    path = tmp_path / "p.txt"
    path.write_text("  # comment\n\nfirst prompt  \n\t\nsecond # not a comment\n")
    assert read_prompts(path) == ("first prompt", "second # not a comment")
    with pytest.raises(UserError, match="not found"):
        read_prompts(tmp_path / "missing.txt")
    (tmp_path / "quick").write_text("my own quick prompt\n")  # a file of that name wins over the bundled set
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert read_prompts("quick") == ("my own quick prompt",)
    finally:
        os.chdir(cwd)


def test_two_expert_wan22_in_process(tmp_path):
    """Wan 2.2: one expert runs per step; its layers carry the step's samples, the other's stay zero."""
    from sta_search.profile import ProfileSettings, run_profile, summary_rows

    folder = save_tiny("wan22", tmp_path / "wan22")
    settings = ProfileSettings(model=str(folder), prompts=("a cat running in the street",), steps=4,
                               height=64, width=128, frames=9, tile=(1, 4, 4), windows=((1, 1, 1),))
    profile = run_profile(settings, tmp_path / "out")
    h = profile.header
    L = h["model"]["num_layers"]
    ranges = h["active_layers"]
    assert h["model"]["experts"] == 2 and len(ranges) == 4
    assert {tuple(r) for r in ranges} == {(0, L // 2), (L // 2, L)}  # both experts ran, each on whole steps
    recall_sum = profile.tensors["recall_sum"]
    for slot, (lo, hi) in enumerate(ranges):
        active = recall_sum[slot, lo:hi]
        assert bool((active > 0).all())
        assert float(recall_sum[slot, :lo].abs().sum() + recall_sum[slot, hi:].abs().sum()) == 0.0
    rows = summary_rows(profile, [(1, 1, 1), (3, 1, 2)])
    assert len(rows) == L and all(0 < v <= 1 + 1e-5 for _, values in rows for v in values)
    assert Profile.load(tmp_path / "out").header == h


def test_profile_forwards_first_profiles_only_the_conditional_forward(tiny_models, prompts, tmp_path):
    """`--profile-forwards first` on a CFG pipeline (Wan: two forwards a step) profiles only forward 0: half
    the calls are counted, the header says so, the statistics differ from both forwards' average, a resume
    with the other setting is refused, and a bad value exits 2 naming it."""
    base = ["profile", tiny_models["wan"], "--prompts", prompts, "--steps", "3", "--profile-steps", "2",
            "--windows", "1,1,1;2,1,2", *SIZE]
    both, first = tmp_path / "both", tmp_path / "first"
    assert _in_process(*base, "--out", both) is None
    result = _cli(*base, "--profile-forwards", "first", "--out", first)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = Profile.load(both), Profile.load(first)
    assert "profile_forwards" not in a.header and b.header["profile_forwards"] == "first"
    assert a.header["forwards_per_step"] == b.header["forwards_per_step"] == 2  # the pipeline still runs both
    assert bool((a.tensors["count"] == 3 * 2).all()) and bool((b.tensors["count"] == 3 * 1).all())
    assert not torch.allclose(a.tensors["error"], b.tensors["error"])
    assert not torch.allclose(a.mean_recall(), b.mean_recall())
    recall = b.mean_recall()
    assert bool((recall >= -1e-6).all()) and bool((recall <= 1 + 1e-5).all())
    torch.testing.assert_close(recall[..., -1, -1, -1], torch.ones_like(recall[..., 0, 0, 0]), atol=1e-4, rtol=0)
    message = str(_in_process(*base, "--resume", "--out", first))
    assert "profile_forwards" in message and "first" in message
    bad = _cli(*base, "--profile-forwards", "second", "--out", tmp_path / "bad")
    assert bad.returncode == 2 and "--profile-forwards 'second'" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_windows_proportional_scales_the_default_shortlist(tiny_models, prompts, tmp_path):
    from sta_search.kernels import Geometry
    from sta_search.stats import default_error_windows, proportional_error_windows

    out = tmp_path / "proportional"
    assert _in_process("profile", tiny_models["wan"], "--prompts", prompts, "--steps", "2", *SIZE,
                       "--windows", "proportional", "--out", out) is None
    geometry = Geometry((3, 4, 8), (1, 4, 4))
    expected = [list(w) for w in proportional_error_windows(geometry)]
    assert expected != [list(w) for w in default_error_windows(geometry)]  # the test tells the two apart
    profile = Profile.load(out)
    assert profile.header["error_windows"] == expected
    assert profile.tensors["error"].shape[-1] == len(expected)
    message = str(_in_process("profile", tiny_models["wan"], "--prompts", prompts, *SIZE,
                              "--windows", "proportional;1,1,1", "--out", tmp_path / "bad"))
    assert "proportional" in message and not (tmp_path / "bad").exists()


def test_profile_calibrate_steps_feeds_select(tiny_models, prompts, tmp_path):
    """--calibrate-steps writes step_sensitivity.json; select weighs the steps by it unless --step-weights none."""
    out = tmp_path / "profile"
    result = _cli("profile", tiny_models["wan"], "--prompts", prompts, "--steps", "6", "--profile-steps", "2",
                  "--windows", "1,1,1;1,1,2;2,1,2", *SIZE, "--out", out, "--calibrate-steps", "--calibrate-budget", "0.5")
    assert result.returncode == 0, result.stderr[-3000:]
    doc = json.loads((out / "step_sensitivity.json").read_text())
    assert doc["profile_steps"] == [0, 2, 4] and doc["prompts"] == 3 and doc["budget"] == 0.5
    assert "step weights (profiled step: weight)" in result.stdout
    # dense step 0 (round(0.24 * 6)); sparse step 1 uses profiled step 0 (ties: the earlier), so all three are probed
    assert all(g is not None and g > 0 for g in doc["gains"]) and sum(doc["weights"]) == pytest.approx(3.0, abs=1e-4)
    weighted, plain = tmp_path / "w.yaml", tmp_path / "p.yaml"
    result = _cli("select", out, "--budget", "0.5", "--full-steps", "1", "--out", weighted)
    assert result.returncode == 0, result.stderr[-3000:]
    from sta_search.maskconfig import MaskConfig

    assert MaskConfig.load(weighted).summary["step_weights"] == pytest.approx(doc["weights"], abs=1e-4)
    result = _cli("select", out, "--budget", "0.5", "--full-steps", "1", "--step-weights", "none", "--out", plain)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step_weights" not in MaskConfig.load(plain).summary
    result = _cli("select", out, "--budget", "0.5", "--step-weights", "some", "--out", tmp_path / "x.yaml")
    assert result.returncode == 2 and "--step-weights 'some'" in result.stderr
    result = _cli("inspect", out)
    assert result.returncode == 0 and "step weights" in result.stdout and "profiled step" in result.stdout
    (out / "step_sensitivity.json").write_text("{not json")
    for args in (["select", out, "--budget", "0.5", "--out", tmp_path / "y.yaml"], ["inspect", out]):
        result = _cli(*args)
        assert result.returncode == 2 and "step_sensitivity.json" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
