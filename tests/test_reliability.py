"""Faults and outputs: paths checked before any work, no silent overwrite, no empty folder after an input error,
Ctrl-C (exit 130, finished prompts kept, --resume continues), one writer per profile folder, a full disk,
CUDA out of memory, and progress lines when stderr is a log. The tiny bundled model at a small size keeps
each profiled prompt to a few CPU seconds."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sta_search.artifacts import HEADER_FILE, STATS_FILE, Profile
from sta_search.errors import UserError
from sta_search.report import OutputLock, check_output_file, check_output_folder

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_profile import synthetic_profile  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# 6 steps: the Ctrl-C test signals during the second prompt, which must outlast its polling (0.1 s a prompt at
# 1 step lost that race once the CPU path got faster)
SMALL = ["--steps", "6", "--windows", "1,1,1", "--height", "32", "--width", "32", "--frames", "4", "--tile", "1,4,4"]
PROMPTS = ("a red ball bouncing", "a blue cube turning")


def _entry(*args):
    """The console entry (cli.run) in-process: its exit code."""
    from sta_search import cli

    try:
        cli.run([str(a) for a in args])
    except SystemExit as exc:
        return exc.code
    return 0


def _one_line_error(capsys, code, expected_code=2, after_progress=False):
    """The one line of an error on stderr; `after_progress`: a fault while a run was under way, after its
    progress lines (which are not errors)."""
    err = capsys.readouterr().err
    assert code == expected_code, err
    lines = [line for line in err.splitlines() if line.strip()]
    if after_progress:
        lines = [line for line in lines if not line.startswith(("profiling ", "prompt "))]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


@pytest.fixture(scope="module")
def whole(tmp_path_factory, prompts_file):
    """An uninterrupted profile of PROMPTS on tiny, run in-process through CliRunner (stderr not a terminal),
    with what it printed."""
    from typer.testing import CliRunner

    from sta_search.cli import app

    out = tmp_path_factory.mktemp("whole") / "profile"
    result = CliRunner().invoke(app, ["profile", "tiny", "--prompts", str(prompts_file), *SMALL, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output


# ---------------------------------------------------------------------------------------------- output paths
def test_output_checks_name_the_path_and_create_nothing(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    with pytest.raises(UserError, match="a-file cannot be written: it is a file, not a folder"):
        check_output_folder(a_file)
    with pytest.raises(UserError, match="a-file is a file, not a folder"):
        check_output_folder(a_file / "sub" / "deeper")
    with pytest.raises(UserError, match="it is a folder, not a file"):
        check_output_file(tmp_path)
    with pytest.raises(UserError, match="--force"):
        check_output_file(a_file, force=False)
    assert check_output_file(a_file, force=True) == a_file and check_output_file(a_file) == a_file
    with pytest.raises(UserError, match="/proc/x"):
        check_output_file("/proc/x")
    with pytest.raises(UserError, match="/proc/x"):
        check_output_folder("/proc/x/y")
    target = tmp_path / "new" / "deeper"
    assert check_output_folder(target) == target and not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # the write probes left nothing


def test_select_refuses_to_overwrite_without_force(tmp_path, capsys):
    profile = tmp_path / "p"
    synthetic_profile(prompts=3).save(profile)
    mask = tmp_path / "mask.yaml"
    mask.write_text("precious\n")
    line = _one_line_error(capsys, _entry("select", profile, "--budget", "0.5", "--out", mask))
    assert str(mask) in line and "--force" in line and mask.read_text() == "precious\n"
    assert _entry("select", profile, "--budget", "0.5", "--out", mask, "--force") == 0
    assert "schema" in mask.read_text()


def test_convert_refuses_to_overwrite_without_force(tmp_path, capsys):
    from sta_search.maskconfig import MaskConfig

    profile = tmp_path / "p"
    synthetic_profile(prompts=3, canvas=(6, 16, 16), tile=(6, 8, 8)).save(profile)
    mask = tmp_path / "mask.yaml"
    assert _entry("select", profile, "--budget", "0.5", "--out", mask) == 0
    capsys.readouterr()
    target = tmp_path / "fv.json"
    target.write_text("{}")
    line = _one_line_error(capsys, _entry("convert", mask, "--to", "fastvideo", "--out", target, "--nearest"))
    assert str(target) in line and "--force" in line and target.read_text() == "{}"
    assert _entry("convert", mask, "--to", "fastvideo", "--out", target, "--nearest", "--force") == 0
    assert len(json.loads(target.read_text())) > 0
    assert MaskConfig.load(mask).steps == 8  # the input is untouched


def test_generate_and_demo_leave_no_folder_after_an_input_error(tmp_path, capsys):
    out = tmp_path / "gen" / "videos"
    _one_line_error(capsys, _entry("generate", "tiny", "--mask", tmp_path / "missing.yaml", "--prompt", "x",
                                   "--out", out))
    assert not (tmp_path / "gen").exists()
    demo = tmp_path / "demo"
    _one_line_error(capsys, _entry("demo", "--device", "banana", "--out", demo))
    assert not demo.exists()


def test_removed_if_left_empty_keeps_folders_with_files(tmp_path):
    from sta_search.report import removed_if_left_empty

    target = tmp_path / "a" / "b"
    with pytest.raises(RuntimeError):
        with removed_if_left_empty(target):
            target.mkdir(parents=True)
            raise RuntimeError("failed before writing")
    assert not (tmp_path / "a").exists()
    with pytest.raises(RuntimeError):
        with removed_if_left_empty(target):
            target.mkdir(parents=True)
            (target / "video.mp4").write_bytes(b"x")
            raise RuntimeError("failed after writing")
    assert (target / "video.mp4").exists()


# ---------------------------------------------------------------------------------------------- progress
def test_progress_lines_when_stderr_is_not_a_terminal(whole):
    _, output = whole
    assert "profiling 2 of 2 prompts, 6 steps each" in output
    assert "prompt 1/2 done in" in output and "prompt 2/2 done in" in output and "elapsed" in output


def test_log_progress_prints_step_groups_of_a_long_prompt():
    from sta_search.profile import LogProgress

    lines, now = [], [0.0]
    sink = LogProgress(lines.append, interval=60, clock=lambda: now[0])
    sink.start(3, 1, 10)
    sink.prompt_started(1, "a prompt")
    for step in range(10):
        now[0] += 25  # a step every 25 s: a line every third step (>= 60 s), none at the prompt's last step
        sink.step_done(step)
    sink.prompt_done(1, None)
    assert lines[0] == "profiling 2 of 3 prompts, 1 already done, 10 steps each"
    assert lines[1:4] == ["prompt 2/3: steps 1-3 of 10 done (75 s; 0:01:15 elapsed)",
                          "prompt 2/3: steps 4-6 of 10 done (150 s; 0:02:30 elapsed)",
                          "prompt 2/3: steps 7-9 of 10 done (225 s; 0:03:45 elapsed)"]
    assert lines[4] == "prompt 2/3 done in 250.0 s (0:04:10 elapsed)" and len(lines) == 5


# ---------------------------------------------------------------------------------------------- Ctrl-C
@pytest.mark.slow
def test_sigint_keeps_finished_prompts_and_resume_equals_an_uninterrupted_run(whole, prompts_file, tmp_path,
                                                                             capsys):
    reference, _ = whole
    out = tmp_path / "interrupted"
    env = dict(os.environ, COLUMNS="1000")
    env.pop("TRITON_INTERPRET", None)  # the CPU path of the profiler is the PyTorch reference
    process = subprocess.Popen([sys.executable, "-m", "sta_search", "profile", "tiny", "--prompts", str(prompts_file),
                                *SMALL, "--out", str(out)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               # as from a terminal: a test run started in the background (bash '&') ignores
                               # SIGINT, and a child would inherit that
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while not (out / STATS_FILE).exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, process.communicate()[1][-2000:]  # still on the second prompt
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("interrupted")]
    assert lines == [f"interrupted: 1 of 2 prompts are saved in {out}; run again with --resume to continue"], err
    assert "Traceback" not in err
    assert Profile.load(out).prompts == PROMPTS[:1]
    assert not list(out.parent.glob(".*.lock"))  # the lock went with the process
    assert _entry("profile", "tiny", "--prompts", prompts_file, *SMALL, "--out", out, "--resume") == 0
    resumed, uninterrupted = Profile.load(out), Profile.load(reference)
    assert resumed.header == uninterrupted.header
    for name, tensor in uninterrupted.tensors.items():
        assert torch.equal(resumed.tensors[name], tensor), name


# ---------------------------------------------------------------------------------------------- one writer
def test_a_second_profile_on_the_same_out_is_refused(tmp_path, prompts_file, capsys):
    out = tmp_path / "profile"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom sta_search.report import OutputLock\n"
                               f"lock = OutputLock({str(out)!r}).acquire()\nprint('locked', flush=True)\n"
                               "time.sleep(120)"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        line = _one_line_error(capsys, _entry("profile", "tiny", "--prompts", prompts_file, *SMALL, "--out", out))
        assert str(out) in line and f"pid {holder.pid}" in line and "another sta-search process" in line
    finally:
        holder.kill()
        holder.wait()
    # the dead holder's lock file stays behind; the next writer takes it over, and removes it when done
    lock_file = tmp_path / ".profile.lock"
    assert lock_file.read_text().strip() == str(holder.pid)
    with OutputLock(out):
        assert lock_file.read_text().strip() == str(os.getpid())
        with pytest.raises(UserError, match=f"pid {os.getpid()}"):
            OutputLock(out).acquire()  # a second holder in this process too (flock is per open file)
    assert not lock_file.exists() and not out.exists()


# ---------------------------------------------------------------------------------------------- full disk, OOM
def _copy_profile(source, target):
    shutil.copytree(source, target)
    return {name: (target / name).read_bytes() for name in (STATS_FILE, HEADER_FILE)}


def test_full_disk_during_the_save_keeps_the_previous_profile(whole, prompts_file, tmp_path, capsys, monkeypatch):
    out = tmp_path / "profile"
    before = _copy_profile(whole[0], out)
    three = tmp_path / "three.txt"
    three.write_text("\n".join(PROMPTS) + "\na green cone\n")

    def full_disk(self, target, header_text):
        with open(target, "wb") as handle:
            handle.write(b"\0" * 1000)  # half a file, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Profile, "_write_stats", full_disk)
    line = _one_line_error(capsys, _entry("profile", "tiny", "--prompts", three, *SMALL, "--out", out, "--resume"),
                           after_progress=True)
    assert str(out) in line and "no space" in line and "2 prompt(s)" in line
    assert {name: (out / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in out.iterdir()) == sorted(before)  # no temporary file left behind


def test_cuda_out_of_memory_names_the_size_and_keeps_finished_prompts(whole, tmp_path, capsys, monkeypatch):
    from sta_search.tiny.pipeline import TinyVideoPipeline

    out = tmp_path / "profile"
    before = _copy_profile(whole[0], out)
    three = tmp_path / "three.txt"
    three.write_text("\n".join(PROMPTS) + "\na green cone\n")

    def out_of_memory(self, *args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

    monkeypatch.setattr(TinyVideoPipeline, "__call__", out_of_memory)
    line = _one_line_error(capsys, _entry("profile", "tiny", "--prompts", three, *SMALL, "--out", out, "--resume"),
                           after_progress=True)
    assert "out of GPU memory at 32x32, 4 frames" in line and "GiB" in line and "estimated" in line
    assert "2 finished prompt(s) are kept" in line and str(out) in line
    assert {name: (out / name).read_bytes() for name in before} == before


def test_memory_estimate_grows_with_the_canvas():
    from types import SimpleNamespace

    from sta_search.report import PROFILER_BUDGET, estimate_memory_bytes
    from sta_search.stats import DEFAULT_MEMORY_BUDGET

    assert PROFILER_BUDGET == DEFAULT_MEMORY_BUDGET
    loaded = SimpleNamespace(pipeline=None, transformer=torch.nn.Linear(10, 10), transformer_2=None,
                             info=SimpleNamespace(num_heads=2, head_dim=8))
    small = estimate_memory_bytes(loaded, (2, 4, 4), 0, torch.float32, extra=0)
    assert small == 110 * 4 + 16 * 2 * 32 * 16 * 4
    assert estimate_memory_bytes(loaded, (4, 4, 4), 0, torch.float32, extra=0) - small == 16 * 2 * 32 * 16 * 4


# ---------------------------------------------------------------------------------------------- generate faults
@pytest.fixture(scope="module")
def tiny_small_mask(tmp_path_factory):
    """A one-step mask config for the bundled tiny model at 32x32 pixels, 4 frames."""
    from sta_search.maskconfig import MaskConfig
    from sta_search.models import load_model

    loaded = load_model("tiny", device="cpu", dtype=torch.float32)
    info = loaded.adapter.info(loaded.transformer)
    canvas = tuple(int(c) for c in loaded.adapter.canvas(loaded.transformer, 32, 32, 4))
    path = tmp_path_factory.mktemp("mask") / "mask.yaml"
    MaskConfig.uniform(info, canvas, (1, 4, 4), 0, 1, (1, 1, 1)).save(path)
    return path


@pytest.mark.parametrize("fault, code, words", [
    (KeyboardInterrupt, 130, ["interrupted: 1 of 2 prompts finished; their videos are kept in"]),
    (lambda: torch.cuda.OutOfMemoryError("CUDA out of memory"), 2,
     ["out of GPU memory at 32x32, 4 frames", "GiB", "the videos of the 1 finished prompt(s) are kept in"]),
])
def test_generate_fault_after_the_first_prompt_keeps_its_video(tiny_small_mask, tmp_path, capsys, monkeypatch,
                                                               fault, code, words):
    import sta_search.generate as generate_module

    real, calls = generate_module.run_pipeline, []

    def second_call_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise fault()
        return real(*args, **kwargs)

    monkeypatch.setattr(generate_module, "run_pipeline", second_call_fails)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red ball\na blue cube\n")
    out = tmp_path / "videos"
    exit_code = _entry("generate", "tiny", "--mask", tiny_small_mask, "--prompts", prompts, "--height", "32",
                       "--width", "32", "--frames", "4", "--backend", "reference", "--out", out)
    err = capsys.readouterr().err
    assert exit_code == code, err
    lines = [line for line in err.splitlines() if line.startswith(("error:", "interrupted"))]
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert sorted(p.name for p in out.iterdir()) == ["000-a-red-ball.mp4"]  # the finished prompt's video, whole
    from sta_search.video import read_mp4

    assert read_mp4(out / "000-a-red-ball.mp4").shape[0] == 4


def test_videos_fall_back_to_gif_without_imageio_ffmpeg(tmp_path, monkeypatch):
    """Where imageio-ffmpeg is missing the frames still land (GIF, with a warning) and read back the same."""
    import sys

    import numpy as np

    from sta_search import video

    frames = (np.random.default_rng(0).random((4, 10, 12, 3)) * 255).astype(np.uint8)
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import now raises ImportError
    with pytest.warns(UserWarning, match="GIF"):
        written = video.write_mp4(tmp_path / "clip.mp4", frames)
    assert written.suffix == ".gif" and not (tmp_path / "clip.mp4").exists()
    back = video.read_mp4(written)
    assert back.shape == frames.shape and np.abs(back.astype(int) - frames).mean() < 40
