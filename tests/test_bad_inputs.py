"""Bad input to every command: missing and corrupt files, huge numbers, zero and negative counts, bad triples,
mismatched inputs, unwritable outputs. Each case must end with exit code 2 and exactly one line on stderr (no
traceback), before any long work: the console entry runs in-process, and no case profiles or generates."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_profile import synthetic_profile  # noqa: E402

HUGE = str(10**12)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Inputs shared by the cases (built once): good and broken profiles and masks, a file, a folder."""
    root = tmp_path_factory.mktemp("bad-inputs")
    f = {"root": root}
    f["profile"] = root / "profile"
    synthetic_profile(prompts=3).save(f["profile"])
    f["other_profile"] = root / "other-profile"  # another canvas: cannot merge with the first
    synthetic_profile(prompts=3, canvas=(4, 8, 16)).save(f["other_profile"])
    f["fastvideo_profile"] = root / "fv-profile"  # FastVideo's tile, so that its mask exports
    synthetic_profile(prompts=3, canvas=(6, 16, 16), tile=(6, 8, 8)).save(f["fastvideo_profile"])
    f["random"] = root / "random.bin"
    f["random"].write_bytes(os.urandom(4096))
    f["corrupt_profile"] = root / "corrupt-profile"
    f["corrupt_profile"].mkdir()
    for name in ("header.json", "stats.safetensors"):
        (f["corrupt_profile"] / name).write_bytes(os.urandom(2048))
    f["truncated_profile"] = root / "truncated-profile"
    synthetic_profile(prompts=3).save(f["truncated_profile"])
    stats = f["truncated_profile"] / "stats.safetensors"
    stats.write_bytes(stats.read_bytes()[: stats.stat().st_size // 2])
    f["file"] = root / "a-file.txt"
    f["file"].write_text("something\n")
    f["folder"] = root / "a-folder"
    f["folder"].mkdir()
    (f["folder"] / "keep.txt").write_text("x")
    f["run_folder"] = root / "a-run"  # what an earlier `generate` left
    f["run_folder"].mkdir()
    (f["run_folder"] / "report.json").write_text("{}")
    (f["run_folder"] / "000-x.mp4").write_bytes(b"")
    from sta_search import cli

    for source, mask in ((f["profile"], "mask"), (f["fastvideo_profile"], "fastvideo_mask")):
        f[mask] = root / f"{mask}.yaml"
        try:
            cli.run(["select", str(source), "--budget", "0.5", "--out", str(f[mask])])
        except SystemExit as exc:
            assert exc.code == 0
    f["tiny_mask_other_canvas"] = root / "tiny-other-canvas.yaml"
    _tiny_mask(f["tiny_mask_other_canvas"], canvas=(3, 6, 6))
    f["prompts"] = root / "prompts.txt"
    f["prompts"].write_text("a cat\n")
    f["fastvideo_bad"] = root / "fv-bad.json"
    f["fastvideo_bad"].write_text('{"0_0_0": [3, 3], "x_y": "z"}')
    return f


def _tiny_mask(path, canvas):
    """A mask for the bundled tiny model's class, layers and heads, at another canvas."""
    import torch

    from sta_search.maskconfig import MaskConfig
    from sta_search.models import load_model

    loaded = load_model("tiny", device="cpu", dtype=torch.float32)
    info = loaded.adapter.info(loaded.transformer)
    MaskConfig.uniform(info, canvas, (2, 4, 4), 0, 8, (1, 1, 1)).save(path)


# (case id, arguments with {name} for files[name], words the one line must hold: all of them)
CASES = [
    # ---- profile
    ("profile-missing-model", ["profile", "{root}/no-model", "--prompts", "{prompts}"], ["no-model"]),
    ("profile-missing-prompts", ["profile", "tiny", "--prompts", "{root}/nope.txt"], ["nope.txt"]),
    ("profile-corrupt-prompts", ["profile", "tiny", "--prompts", "{random}"], ["random.bin"]),
    ("profile-zero-steps", ["profile", "tiny", "--prompts", "{prompts}", "--steps", "0"], ["--steps", ">= 1"]),
    ("profile-negative-frames", ["profile", "tiny", "--prompts", "{prompts}", "--frames", "-3"], ["--frames"]),
    ("profile-huge-steps", ["profile", "tiny", "--prompts", "{prompts}", "--steps", HUGE], ["--steps", HUGE]),
    ("profile-huge-height", ["profile", "tiny", "--prompts", "{prompts}", "--height", HUGE], ["--height", HUGE]),
    ("profile-huge-seed", ["profile", "tiny", "--prompts", "{prompts}", "--seed", str(2**70)], ["--seed"]),
    ("profile-bad-tile", ["profile", "tiny", "--prompts", "{prompts}", "--tile", "0,4,4"], ["--tile", "0,4,4"]),
    ("profile-bad-windows", ["profile", "tiny", "--prompts", "{prompts}", "--windows", "1,a,1"], ["1,a,1"]),
    ("profile-bad-profile-steps", ["profile", "tiny", "--prompts", "{prompts}", "--profile-steps", "-2"],
     ["--profile-steps"]),
    ("profile-zero-calibrate-budget", ["profile", "tiny", "--prompts", "{prompts}", "--calibrate-steps",
                                       "--calibrate-budget", "0"], ["--calibrate-budget"]),
    ("profile-calibrate-with-cache", ["profile", "tiny", "--prompts", "{prompts}", "--calibrate-steps", "--cache",
                                      "mag", "--out", "{root}/pc"], ["--calibrate-steps", "--cache mag"]),
    ("profile-out-proc", ["profile", "tiny", "--prompts", "{prompts}", "--out", "/proc/x"], ["/proc/x"]),
    ("profile-out-file", ["profile", "tiny", "--prompts", "{prompts}", "--out", "{file}"], ["a-file.txt", "file"]),
    ("profile-out-under-file", ["profile", "tiny", "--prompts", "{prompts}", "--out", "{file}/p"], ["a-file.txt"]),
    ("profile-resume-other-model", ["profile", "tiny", "--prompts", "{prompts}", "--out", "{profile}", "--resume"],
     ["cannot resume"]),
    ("profile-without-resume", ["profile", "tiny", "--prompts", "{prompts}", "--out", "{profile}"], ["--resume"]),
    ("profile-huge-size", ["profile", "tiny", "--prompts", "{prompts}", "--height", "16384", "--width", "16384",
                           "--frames", "1024"], ["16384x16384", "GiB"]),
    # ---- select
    ("select-missing", ["select", "{root}/none", "--budget", "0.3"], ["none"]),
    ("select-random-file", ["select", "{random}", "--budget", "0.3"], ["random.bin"]),
    ("select-corrupt-profile", ["select", "{corrupt_profile}", "--budget", "0.3"], ["corrupt-profile"]),
    ("select-truncated-profile", ["select", "{truncated_profile}", "--budget", "0.3"], ["truncated-profile"]),
    ("select-zero-budget", ["select", "{profile}", "--budget", "0"], ["--budget"]),
    ("select-bad-step-weights", ["select", "{profile}", "--budget", "0.3", "--step-weights", "maybe"],
     ["--step-weights", "maybe"]),
    ("select-huge-budget", ["select", "{profile}", "--budget", HUGE], ["--budget"]),
    ("select-negative-sparsity", ["select", "{profile}", "--sparsity", "-1"], ["--sparsity"]),
    ("select-negative-speedup", ["select", "{profile}", "--speedup", "-2"], ["--speedup"]),
    ("select-huge-speedup", ["select", "{profile}", "--speedup", HUGE], ["speedup", "out of reach"]),
    ("select-no-target", ["select", "{profile}"], ["--budget"]),
    ("select-zero-folds", ["select", "{profile}", "--budget", "0.3", "--folds", "0"], ["--folds"]),
    ("select-huge-full-steps", ["select", "{profile}", "--budget", "0.3", "--full-steps", HUGE], ["--full-steps"]),
    ("select-bad-granularity", ["select", "{profile}", "--budget", "0.3", "--granularity", "pixel"], ["pixel"]),
    ("select-mismatched", ["select", "{profile}", "{other_profile}", "--budget", "0.3"], ["canvas"]),
    ("select-missing-bench", ["select", "{profile}", "--speedup", "2", "--bench-results", "{root}/nobench"],
     ["nobench"]),
    ("select-out-proc", ["select", "{profile}", "--budget", "0.3", "--out", "/proc/x"], ["/proc/x"]),
    ("select-out-folder", ["select", "{profile}", "--budget", "0.3", "--out", "{folder}"], ["a-folder", "folder"]),
    ("select-out-exists", ["select", "{profile}", "--budget", "0.3", "--out", "{file}"], ["a-file.txt", "--force"]),
    # ---- inspect
    ("inspect-missing", ["inspect", "{root}/none"], ["none"]),
    ("inspect-random", ["inspect", "{random}"], ["random.bin"]),
    ("inspect-corrupt-profile", ["inspect", "{corrupt_profile}"], ["corrupt-profile"]),
    ("inspect-huge-layer", ["inspect", "{profile}", "--layer", HUGE], ["--layer"]),
    ("inspect-huge-head", ["inspect", "{profile}", "--head", HUGE], ["--head"]),
    ("inspect-negative-step", ["inspect", "{profile}", "--step", "-1"], ["--step"]),
    ("inspect-huge-step", ["inspect", "{mask}", "--step", HUGE], ["--step"]),
    ("inspect-bad-window", ["inspect", "{profile}", "--window", "0,1,1"], ["--window"]),
    ("inspect-plot-proc", ["inspect", "{profile}", "--plot", "/proc/x"], ["/proc/x"]),
    ("inspect-plot-file", ["inspect", "{profile}", "--plot", "{file}"], ["a-file.txt"]),
    # ---- generate
    ("generate-missing-model", ["generate", "{root}/no-model", "--mask", "{mask}", "--prompt", "x"], ["no-model"]),
    ("generate-missing-mask", ["generate", "tiny", "--mask", "{root}/nomask.yaml", "--prompt", "x"], ["nomask"]),
    ("generate-random-mask", ["generate", "tiny", "--mask", "{random}", "--prompt", "x"], ["random.bin"]),
    ("generate-profile-as-mask", ["generate", "tiny", "--mask", "{profile}", "--prompt", "x"], ["profile"]),
    ("generate-mask-of-another-model", ["generate", "tiny", "--mask", "{mask}", "--prompt", "x"],
     ["num_layers"]),
    ("generate-mask-for-another-canvas", ["generate", "tiny", "--mask", "{tiny_mask_other_canvas}", "--prompt",
                                          "x"], ["canvas"]),
    ("generate-empty-prompt", ["generate", "tiny", "--mask", "{mask}", "--prompt", " "], ["--prompt"]),
    ("generate-corrupt-prompts", ["generate", "tiny", "--mask", "{mask}", "--prompts", "{random}"], ["random.bin"]),
    ("generate-zero-steps", ["generate", "tiny", "--mask", "{mask}", "--prompt", "x", "--steps", "0"], ["--steps"]),
    ("generate-huge-frames", ["generate", "tiny", "--mask", "{mask}", "--prompt", "x", "--frames", HUGE],
     ["--frames"]),
    ("generate-huge-seed", ["generate", "tiny", "--mask", "{mask}", "--prompt", "x", "--seed", "-1"], ["--seed"]),
    ("generate-zero-fps", ["generate", "tiny", "--mask", "{mask}", "--prompt", "x", "--fps", "0"], ["--fps"]),
    ("generate-zero-ulysses", ["generate", "tiny", "--mask", "{mask}", "--prompt", "x", "--ulysses", "0"],
     ["--ulysses"]),
    ("generate-out-proc", ["generate", "tiny", "--mask", "{mask}", "--prompt", "x", "--out", "/proc/x"], ["/proc/x"]),
    ("generate-out-file", ["generate", "tiny", "--mask", "{mask}", "--prompt", "x", "--out", "{file}"],
     ["a-file.txt"]),
    ("generate-out-holds-a-run", ["generate", "tiny", "--mask", "{mask}", "--prompt", "x", "--out", "{run_folder}"],
     ["--force", "report.json"]),
    # ---- convert
    ("convert-missing", ["convert", "{root}/none.json", "--to", "yaml", "--canvas", "6,16,16"], ["none.json"]),
    ("convert-random-json", ["convert", "{random}", "--to", "yaml", "--canvas", "6,16,16", "--out", "{root}/c1.yaml"],
     ["random.bin"]),
    ("convert-random-yaml", ["convert", "{random}", "--to", "fastvideo", "--out", "{root}/c2.json"], ["random.bin"]),
    ("convert-bad-entries", ["convert", "{fastvideo_bad}", "--to", "yaml", "--canvas", "6,16,16", "--out",
                             "{root}/c3.yaml"], ["0_0_0"]),
    ("convert-bad-to", ["convert", "{fastvideo_mask}", "--to", "xml"], ["--to", "xml"]),
    ("convert-no-canvas", ["convert", "{fastvideo_bad}", "--to", "yaml"], ["--canvas"]),
    ("convert-bad-canvas", ["convert", "{fastvideo_bad}", "--to", "yaml", "--canvas", "6,0,16"], ["--canvas"]),
    ("convert-bad-tile", ["convert", "{fastvideo_bad}", "--to", "yaml", "--canvas", "6,16,16", "--tile", "1,3,3"],
     ["--tile"]),
    ("convert-zero-layers", ["convert", "{fastvideo_bad}", "--to", "yaml", "--canvas", "6,16,16", "--layers", "0"],
     ["--layers"]),
    ("convert-out-proc", ["convert", "{fastvideo_mask}", "--to", "fastvideo", "--out", "/proc/x"], ["/proc/x"]),
    ("convert-out-folder", ["convert", "{fastvideo_mask}", "--to", "fastvideo", "--out", "{folder}"], ["a-folder"]),
    ("convert-out-exists", ["convert", "{fastvideo_mask}", "--to", "fastvideo", "--out", "{file}"], ["--force"]),
    ("convert-out-is-input", ["convert", "{fastvideo_mask}", "--to", "yaml", "--canvas", "6,16,16", "--out",
                              "{fastvideo_mask}"], ["input"]),
    # ---- merge
    ("merge-one", ["merge", "{profile}", "--out", "{root}/m1"], ["two or more"]),
    ("merge-missing", ["merge", "{profile}", "{root}/none", "--out", "{root}/m2"], ["none"]),
    ("merge-corrupt", ["merge", "{profile}", "{corrupt_profile}", "--out", "{root}/m3"], ["corrupt-profile"]),
    ("merge-mismatched", ["merge", "{profile}", "{other_profile}", "--out", "{root}/m4"], ["canvas"]),
    ("merge-out-proc", ["merge", "{profile}", "{profile}", "--out", "/proc/x"], ["/proc/x"]),
    ("merge-out-exists", ["merge", "{profile}", "{profile}", "--out", "{folder}"], ["--force"]),
    ("merge-out-file-forced", ["merge", "{profile}", "{profile}", "--out", "{file}", "--force"], ["a-file.txt"]),
    # ---- bench
    ("bench-bad-canvas", ["bench", "--canvas", "30,0,80"], ["--canvas"]),
    ("bench-zero-iters", ["bench", "--iters", "0"], ["--iters"]),
    ("bench-bad-window", ["bench", "--window", "3,3"], ["--window"]),
    ("bench-bad-shape", ["bench", "--shape", "imax-8k", "--out", "{root}/bench"], ["imax-8k"]),
    ("bench-out-proc", ["bench", "--out", "/proc/x"], ["/proc/x"]),
    ("bench-out-file", ["bench", "--out", "{file}"], ["a-file.txt"]),
    ("bench-huge-heads", ["bench", "--heads", HUGE, "--out", "{root}/bench"], ["--heads"]),
    ("bench-bad-head-dim", ["bench", "--head-dim", "96", "--out", "{root}/bench"], ["--head-dim", "96"]),
    # ---- demo
    ("demo-zero-budget", ["demo", "--budget", "0"], ["--budget"]),
    ("demo-huge-prompts", ["demo", "--quick-prompts", HUGE, "--out", "{root}/d1"], ["--quick-prompts"]),
    ("demo-zero-steps", ["demo", "--steps", "0", "--out", "{root}/d2"], ["--steps"]),
    ("demo-huge-steps", ["demo", "--steps", HUGE, "--out", "{root}/d3"], ["--steps"]),
    ("demo-bad-device", ["demo", "--device", "banana", "--out", "{root}/d4"], ["banana"]),
    ("demo-bad-backend", ["demo", "--backend", "cudnn", "--out", "{root}/d5"], ["cudnn"]),
    ("demo-out-proc", ["demo", "--out", "/proc/x"], ["/proc/x"]),
    ("demo-out-file", ["demo", "--out", "{file}"], ["a-file.txt"]),
    ("demo-out-not-empty", ["demo", "--out", "{folder}"], ["--overwrite"]),
    ("demo-gluon-on-cpu", ["demo", "--backend", "gluon", "--device", "cpu", "--out", "{root}/d6"],
     ["--backend gluon", "--backend gather"]),
    ("demo-full-steps-past-steps", ["demo", "--full-steps", "99", "--out", "{root}/d7"], ["--full-steps 99"]),
    ("demo-profile-as-model", ["demo", "--model", "{profile}", "--out", "{root}/d8"], ["model_index.json"]),
]


@pytest.mark.parametrize("case, args, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line(files, case, args, words, capsys):
    from sta_search import cli

    argv = [a.format(**{k: str(v) for k, v in files.items()}) for a in args]
    before = sorted(p.name for p in files["root"].iterdir())
    try:
        cli.run(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (argv, err[-3000:])
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert sorted(p.name for p in files["root"].iterdir()) == before  # nothing created, nothing left behind
