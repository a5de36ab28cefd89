"""`sta-search generate` end to end on tiny offline pipelines saved to disk (CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from sta_search.errors import UserError
from sta_search.generate import GenerateSettings, generate
from sta_search.options import prompts_from
from sta_search.maskconfig import MaskConfig
from sta_search.video import read_mp4

from tiny_pipes import save_tiny

# 128 x 128 pixels, 9 frames -> canvas (3, 8, 8); tile (1, 4, 4) -> grid (3, 2, 2)
SIZE = ["--height", "128", "--width", "128", "--frames", "9"]
CANVAS, TILE, STEPS, FRAMES = (3, 8, 8), (1, 4, 4), 2, 9


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {kind: save_tiny(kind, root / kind) for kind in ("wan", "hunyuan_video", "cogvideox")}


def _mask(folder, path, window, steps=STEPS, canvas=CANVAS, tile=TILE, dense_steps=()):
    from sta_search.models import load_model

    loaded = load_model(str(folder), device="cpu", dtype=torch.float32)
    info = loaded.adapter.info(loaded.transformer)
    MaskConfig.uniform(info, canvas, tile, 0, steps, window, dense_steps=dense_steps).save(path)
    return path


def _cli(*args, cwd=None):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "sta_search", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


@pytest.mark.parametrize("kind", ["wan", "hunyuan_video", "cogvideox"])
def test_cli_end_to_end(kind, folders, tmp_path):
    mask = _mask(folders[kind], tmp_path / "mask.yaml", (1, 1, 1), dense_steps=(0,))
    out = tmp_path / "out"
    result = _cli("generate", folders[kind], "--mask", mask, "--prompt", "a red cat running on the beach",
                  *SIZE, "--steps", STEPS, "--backend", "reference", "--out", out, "--seed", 3)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    (video,) = report["videos"]
    frames = read_mp4(out / video["video"])
    assert frames.shape == (FRAMES, 128, 128, 3)
    sta = video["sta"]
    assert len(sta["step_seconds"]) == STEPS and all(s > 0 for s in sta["step_seconds"])
    assert 0 < sta["attention_share"] < 1
    assert sta["attention_calls"]["dense"] > 0 and sta["attention_calls"]["sparse"] > 0  # step 0 dense, step 1 sparse
    assert report["model"]["family"] == kind and report["mask"]["canvas"] == list(CANVAS)
    assert report["density_used"]["per_step"][0] == 1.0 and report["density_used"]["per_step"][1] < 1.0
    assert report["mask"]["sha256"] and report["settings"]["seed"] == 3


def test_cli_refuses_an_earlier_run_in_out_unless_forced(folders, tmp_path):
    mask = _mask(folders["wan"], tmp_path / "mask.yaml", (1, 1, 1))
    out = tmp_path / "out"
    args = ("generate", folders["wan"], "--mask", mask, *SIZE, "--steps", STEPS, "--backend", "reference",
            "--out", out, "--threads", 1)
    assert _cli(*args, "--prompt", "a cat", "--compare-dense").returncode == 0
    (out / "notes.txt").write_text("mine")
    before = sorted(p.name for p in out.iterdir())
    refused = _cli(*args, "--prompt", "a dog")
    assert refused.returncode == 2 and "--force" in refused.stderr
    assert sorted(p.name for p in out.iterdir()) == before  # nothing touched
    forced = _cli(*args, "--prompt", "a dog", "--force")
    assert forced.returncode == 0, forced.stderr
    report = json.loads((out / "report.json").read_text())
    assert [v["prompt"] for v in report["videos"]] == ["a dog"] and report["settings"]["threads"] == 1
    # the earlier run's dense and side-by-side videos are gone, the user's file stays
    assert sorted(p.name for p in out.iterdir()) == sorted(["notes.txt", "report.json", report["videos"][0]["video"]])


def test_compare_dense_with_full_windows_is_lossless(folders, tmp_path):
    mask = _mask(folders["wan"], tmp_path / "full.yaml", (9, 9, 9))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# comment\n\na dog in the snow\n")
    out = tmp_path / "out"
    report = generate(GenerateSettings(model=str(folders["wan"]), mask=str(mask), prompts=prompts_from(None, str(prompts)),
                                       out=str(out), height=128, width=128, frames=9, compare_dense=True,
                                       backend="reference"))
    assert [v["prompt"] for v in report["videos"]] == ["a dog in the snow"]
    for video in report["videos"]:
        psnr = video["fidelity"]["psnr_db"]
        assert psnr == "inf" or psnr >= 60
        assert video["fidelity"]["ssim"] > 0.999
        assert video["speedup"]["denoise"] > 0
        side = read_mp4(out / video["side_by_side"])
        assert side.shape[0] == FRAMES and side.shape[2] > 2 * 128
        assert read_mp4(out / video["dense_video"]).shape == (FRAMES, 128, 128, 3)
    assert report["density_used"]["overall"] == 1.0


def test_compare_dense_with_sparse_windows_reports_a_finite_psnr(folders, tmp_path):
    mask = _mask(folders["hunyuan_video"], tmp_path / "sparse.yaml", (1, 1, 1))
    report = generate(GenerateSettings(model=str(folders["hunyuan_video"]), mask=str(mask), prompts=("a cat",),
                                       out=str(tmp_path / "out"), height=128, width=128, frames=9,
                                       compare_dense=True, backend="flex", warmup_steps=1))
    assert report["warmup_seconds"] > 0 and report["settings"]["warmup_steps"] == 1
    fid = report["videos"][0]["fidelity"]
    assert fid["psnr_db"] != "inf" and fid["max_abs_diff"] > 0


def test_cpu_report_names_the_kernel_threads_and_sparse_step_speedups(folders, tmp_path):
    """auto runs gather off CUDA; the report records the thread count and splits out the config's sparse steps."""
    mask = _mask(folders["wan"], tmp_path / "sparse.yaml", (1, 1, 1), steps=3, dense_steps=(0,))
    report = generate(GenerateSettings(model=str(folders["wan"]), mask=str(mask), prompts=("a cat",),
                                       out=str(tmp_path / "out"), height=128, width=128, frames=9, steps=3,
                                       compare_dense=True, threads=1))
    assert report["settings"]["threads"] == 1 == torch.get_num_threads()
    assert report["cpu_threads"]["why"] == "--threads"
    video = report["videos"][0]
    assert video["sta"]["kernels"] == ["gather"] and video["sta"]["attention_calls"]["kernel:gather"] > 0
    speedup = video["speedup"]
    assert speedup["sparse_steps"] == [1, 2]  # step 0 is dense in the config
    assert speedup["sparse_step"] > 0 and speedup["sparse_attention"] > 0 and len(video["loadavg"]) == 3


def test_speedups_over_sparse_steps_leave_out_step_0_and_dense_steps():
    from sta_search.generate import RunTiming, _speedups

    dense = RunTiming(step_seconds=[9.0, 4.0, 4.0, 4.0], attention_step_seconds=[5.0, 2.0, 2.0, 2.0], total_seconds=21)
    sta = RunTiming(step_seconds=[9.0, 4.0, 2.0, 3.0], attention_step_seconds=[5.0, 2.0, 1.0, 0.5], total_seconds=18)
    result = _speedups(dense, sta, sparse_steps=[0, 2, 3])
    assert result["sparse_steps"] == [2, 3]
    assert result["sparse_step"] == pytest.approx(8 / 5) and result["sparse_attention"] == pytest.approx(4 / 1.5)
    assert result["attention"] == pytest.approx(11 / 8.5) and result["denoise"] == pytest.approx(21 / 18)


def test_choose_threads(monkeypatch):
    from sta_search import cpu_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpu_threads, "physical_cores", lambda: 4)
    monkeypatch.setattr(cpu_threads, "logical_cpus", lambda: 8)
    for load, expected in ((0.1, 4), (1.4, 3), (2.6, 1), (9.0, 1)):
        monkeypatch.setattr(cpu_threads, "load_average", lambda load=load: (load, load, load))
        choice = cpu_threads.choose_threads()
        assert choice.threads == expected and choice.loadavg == (load, load, load), (load, choice)
    assert cpu_threads.choose_threads(3).threads == 3 and cpu_threads.choose_threads(3).why == "--threads"
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert cpu_threads.choose_threads().threads == 2 and cpu_threads.choose_threads().why == "OMP_NUM_THREADS"
    with pytest.raises(UserError, match="--threads"):
        cpu_threads.choose_threads(0)
    assert 1 <= cpu_threads.physical_cores() <= cpu_threads.logical_cpus()


def test_sizes_and_steps_default_to_the_config(folders, tmp_path):
    mask = _mask(folders["cogvideox"], tmp_path / "mask.yaml", (1, 2, 2), steps=1)
    report = generate(GenerateSettings(model=str(folders["cogvideox"]), mask=str(mask), prompts=("a cat",),
                                       out=str(tmp_path / "out"), backend="reference"))
    settings = report["settings"]
    assert settings["canvas"] == list(CANVAS) and settings["steps"] == 1
    assert (settings["height"], settings["width"]) == (128, 128)


def _exit_code(*args):
    """Run the console entry in-process; return (exit code, stderr text)."""
    from sta_search import cli

    old = sys.argv
    sys.argv = ["sta-search", *map(str, args)]
    try:
        cli.run()
    except SystemExit as exc:
        return exc.code
    finally:
        sys.argv = old
    return 0


def test_user_errors_exit_2(folders, tmp_path, capsys):
    wan, cog = folders["wan"], folders["cogvideox"]
    good = _mask(wan, tmp_path / "wan.yaml", (1, 1, 1))
    cases = {
        "canvas": ["generate", wan, "--mask", good, "--prompt", "x", "--height", "64", "--width", "64", "--frames", "9"],
        "steps": ["generate", wan, "--mask", good, "--prompt", "x", *SIZE, "--steps", "3"],
        "transformer_class": ["generate", cog, "--mask", good, "--prompt", "x", *SIZE],
        "does not exist|not found": ["generate", tmp_path / "no-such-model", "--mask", good, "--prompt", "x"],
        "mask config": ["generate", wan, "--mask", tmp_path / "missing.yaml", "--prompt", "x"],
        "--prompt": ["generate", wan, "--mask", good],
        "--backend": ["generate", wan, "--mask", good, "--prompt", "x", "--backend", "cudnn"],
    }
    bad_tile = tmp_path / "tile.yaml"
    bad_tile.write_text(good.read_text().replace("tile: [1, 4, 4]", "tile: [1, 3, 4]"))
    assert "tile: [1, 3, 4]" in bad_tile.read_text()
    cases["tile"] = ["generate", wan, "--mask", bad_tile, "--prompt", "x", *SIZE]
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cases["cannot be written"] = ["generate", wan, "--mask", good, "--prompt", "x", *SIZE, "--out", blocker / "out"]
    for expected, args in cases.items():
        code = _exit_code(*args)
        err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
        assert code == 2, (expected, err)
        assert any(word in err for word in expected.split("|")), (expected, err)


def test_triton_backend_on_cpu_without_interpreter_exits_2(folders, tmp_path, capsys, monkeypatch):
    good = _mask(folders["wan"], tmp_path / "wan.yaml", (1, 1, 1))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    code = _exit_code("generate", folders["wan"], "--mask", good, "--prompt", "x", *SIZE, "--backend", "triton",
                      "--device", "cpu", "--out", tmp_path / "o")
    assert code == 2 and "needs a CUDA device" in " ".join(capsys.readouterr().err.split())


def test_gluon_backend_that_cannot_run_exits_2_before_any_step(folders, tmp_path, capsys):
    """The tiny Wan has head dim 32 on a CPU: the Gluon kernel's own check names why, one line, exit 2."""
    good = _mask(folders["wan"], tmp_path / "wan.yaml", (1, 1, 1))
    code = _exit_code("generate", folders["wan"], "--mask", good, "--prompt", "x", *SIZE, "--backend", "gluon",
                      "--device", "cpu", "--out", tmp_path / "o")
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "--backend gluon cannot run" in err and "Hopper" in err, err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_prompts_from(tmp_path):
    (tmp_path / "p.txt").write_text("# header\na dog in the snow\n\n  a boat on the river  \n")
    assert prompts_from(None, str(tmp_path / "p.txt")) == ("a dog in the snow", "a boat on the river")
    assert prompts_from("a cat", None) == ("a cat",)
    assert len(prompts_from(None, "quick")) == 4  # the bundled sets work for generate too


def test_prompts_from_errors(tmp_path):
    with pytest.raises(UserError, match="exactly one"):
        prompts_from(None, None)
    with pytest.raises(UserError, match="exactly one"):
        prompts_from("a", str(tmp_path / "p.txt"))
    with pytest.raises(UserError, match="empty"):
        prompts_from("  ", None)
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(UserError, match="no prompts"):
        prompts_from(None, str(tmp_path / "empty.txt"))


def test_report_provenance_json_and_atomic_writes(tmp_path):
    import math

    from sta_search import __version__
    from sta_search.report import atomic_write_text, json_safe, provenance, write_json

    origin = provenance("cpu")
    assert origin["tool_version"] == __version__ and origin["versions"]["torch"] == torch.__version__
    assert origin["device_name"] and origin["created_utc"].endswith("+00:00")
    assert json_safe({"a": (1, np.float32(0.5), np.arange(2)), "b": math.inf, 3: math.nan}) == \
        {"a": [1, 0.5, [0, 1]], "b": "inf", "3": "nan"}
    path = write_json(tmp_path / "sub" / "r.json", {"x": np.int64(3), "y": float("-inf")})
    assert json.loads(path.read_text()) == {"x": 3, "y": "-inf"}
    atomic_write_text(path, "replaced\n")
    assert path.read_text() == "replaced\n" and [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temp left

    with pytest.raises(TypeError):
        atomic_write_text(path, 42)  # a failed write leaves the old file and no temp file
    assert path.read_text() == "replaced\n" and [p.name for p in path.parent.iterdir()] == ["r.json"]


def test_e2e_bench_smoke(tmp_path):
    """bench/e2e.py end to end on a tiny HunyuanVideo transformer (CPU): every mode timed, JSON written."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "bench" / "e2e.py"
    spec = importlib.util.spec_from_file_location("e2e_bench", path)
    e2e = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(e2e)
    out = tmp_path / "e2e.json"
    e2e.main(["--models", "tiny-hunyuan", "--windows", "1,1,1", "--backends", "reference", "--compile", "off",
              "--reps", "1", "--dtype", "float32", "--device", "cpu", "--dense-nomask", "--kernel-profile",
              "--out", str(out)])
    section = json.loads(out.read_text())["models"]["tiny-hunyuan"]["eager"]
    assert set(section) == {"dense", "dense-nomask", "sta-reference-111", "dense-native"}
    sta = section["sta-reference-111"]
    assert sta["density"] == 0.25 and sta["attention_calls_per_forward"] == {"sparse": 2, "kernel:reference": 2}
    assert 0 < sta["attention_share"] < 1 and sta["median_seconds"] > 0 and sta["speedup_vs_dense"] > 0
    profiled = sta["kernel_profile"]  # one more forward under torch.profiler: CPU operators here
    assert profiled["timeline"] == "cpu operators, self time" and profiled["ms_total"] > 0
    assert any(row["name"] == "aten::scaled_dot_product_attention" or row["name"].startswith("aten::")
               for row in profiled["top"])
