"""The command line: help, one-line user errors with exit code 2, --debug anywhere, literal error text, and the
values parsed by sta_search.options (in-process where no subprocess is needed)."""

import os
import subprocess
import sys
import time

import pytest

from sta_search.errors import UserError


def _run(*args, timeout=300):
    env = dict(os.environ, COLUMNS="1000")
    return subprocess.run([sys.executable, "-m", "sta_search", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def _entry(*args):
    """The console entry (cli.run) in-process: its exit code."""
    from sta_search import cli

    try:
        cli.run([str(a) for a in args])
    except SystemExit as exc:
        return exc.code
    return 0


def _user_error(*args):
    """The UserError a command raises while its options are parsed or checked (typer's CliRunner), or None."""
    from typer.testing import CliRunner

    from sta_search.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, (UserError, SystemExit)), repr(result.exception)
    return result.exception if isinstance(result.exception, UserError) else None


def test_help_lists_every_stage_and_flags_show_no_type():
    result = _run("--help")
    assert result.returncode == 0
    for command in ("profile", "select", "inspect", "generate", "bench", "convert", "merge", "demo"):
        assert command in result.stdout
    from typer.testing import CliRunner

    from sta_search.cli import app

    for command in ("profile", "generate"):
        text = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"}).output
        assert "--steps" in text and "<int>" in text  # value options keep their type
        assert "<bool>" not in text, text  # flags (--resume, --compare-dense, --help) take no value


@pytest.mark.parametrize("args, named", [
    (["profile", "tiny", "--prompts", "quick", "--steps", "0"], "--steps must be >= 1, got 0"),
    (["profile", "tiny", "--prompts", "quick", "--height", "0"], "--height must be >= 1, got 0"),
    (["profile", "tiny", "--prompts", "quick", "--width", "-4"], "--width must be >= 1, got -4"),
    (["profile", "tiny", "--prompts", "quick", "--frames", "0"], "--frames must be >= 1, got 0"),
    (["generate", "tiny", "--mask", "m.yaml", "--prompt", "x", "--steps", "0"], "--steps must be >= 1, got 0"),
    (["generate", "tiny", "--mask", "m.yaml", "--prompt", "x", "--frames", "0"], "--frames must be >= 1, got 0"),
    (["profile", "tiny", "--prompts", "quick", "--tile", "1,3,3"], "--tile '1,3,3'"),
    (["profile", "tiny", "--prompts", "quick", "--tile", "6,8"], "--tile '6,8'"),
    (["profile", "tiny", "--prompts", "quick", "--windows", "1,1,1;0,1,1"], "--windows '0,1,1'"),
    (["profile", "tiny", "--prompts", "quick", "--dtype", "int8"], "--dtype 'int8'"),
    (["profile", "tiny", "--prompts", "quick", "--profile-steps", "0"], "--profile-steps"),
    (["generate", "tiny", "--mask", "m.yaml", "--prompt", "x", "--backend", "cudnn"], "--backend 'cudnn'"),
    (["generate", "tiny", "--mask", "m.yaml"], "--prompt"),
    (["inspect", "x", "--window", "3,a,3"], "--window '3,a,3'"),
    (["bench", "--canvas", "30,48"], "--canvas '30,48'"),
    (["demo", "--budget", "0"], "--budget"),
    (["demo", "--quick-prompts", "0"], "--quick-prompts must be >= 1, got 0"),
    (["select", "p", "--folds", "0"], "--folds must be >= 1, got 0"),
])
def test_bad_values_are_rejected_naming_the_value(args, named):
    """Parsed by sta_search.options while typer reads the command line: no silent default for 0."""
    error = _user_error(*args)
    assert error is not None and named in str(error), error


def test_bad_value_exits_2_with_one_line(capsys):
    assert _entry("profile", "tiny", "--prompts", "quick", "--steps", "0") == 2
    err = capsys.readouterr().err
    assert err == "error: --steps must be >= 1, got 0\n", repr(err)  # one line, nothing (no blank line) before


def test_unknown_option_exits_2_without_traceback(capsys):
    assert _entry("select", "--budgt", "0.3", "somewhere") == 2
    err = capsys.readouterr().err
    assert "--budgt" in err and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("error:") and "sta-search select --help" in err, repr(err)
    for args in (["selekt"], ["select", "--budget", "abc"], ["generate", "tiny"]):
        assert _entry(*args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error:"), repr(err)


def test_user_error_text_is_printed_literally(tmp_path, capsys):
    """Rich markup in a user's path is neither an error ([/b] closes nothing) nor swallowed ([bold])."""
    for name in ("a[/b]b.txt", "[bold]x[/bold].txt", "[red]y.txt"):
        path = tmp_path / name
        assert _entry("profile", "tiny", "--prompts", path) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: prompts file not found: ") and str(path) in err, repr(err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_user_error_is_one_line_and_debug_before_or_after_shows_traceback(tmp_path):
    missing = tmp_path / "no-such-profile"
    result = _run("select", missing, "--budget", "0.3")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(missing) in lines[0]
    for args in (["--debug", "select", missing, "--budget", "0.3"], ["select", missing, "--budget", "0.3", "--debug"]):
        debug = _run(*args)
        assert debug.returncode != 0 and "Traceback" in debug.stderr and "UserError" in debug.stderr, args


def test_split_debug():
    from sta_search.cli import split_debug

    assert split_debug(["select", "p", "--debug"]) == (["select", "p"], True)
    assert split_debug(["--debug", "select"]) == (["select"], True)
    assert split_debug(["select", "p"]) == (["select", "p"], False)
    assert split_debug(["x", "--", "--debug"]) == (["x", "--", "--debug"], False)  # after -- it is an argument


def _seconds(*args) -> float:
    start = time.perf_counter()
    result = _run(*args)
    elapsed = time.perf_counter() - start
    return elapsed, result


def test_bad_input_exits_as_fast_as_help():
    """An input error ends before torch, diffusers or the distributed runtime load: the time of `--help` plus
    a few seconds (it was ~8 s more, when the error path imported torch._dynamo through distributed)."""
    help_times, error_times = [], []
    for _ in range(2):  # the best of two each, against a busy machine
        elapsed, result = _seconds("--help")
        assert result.returncode == 0
        help_times.append(elapsed)
        elapsed, result = _seconds("profile", "tiny", "--prompts", "quick", "--steps", "0")
        assert result.returncode == 2 and "--steps" in result.stderr
        error_times.append(elapsed)
    assert min(error_times) < min(help_times) + 3.0, (help_times, error_times)


def test_options_parsers():
    from sta_search import options

    assert options.parse_triple("3,3,5", "--window") == (3, 3, 5) == options.parse_window("3x3x5")
    assert options.parse_triple((1, 2, 3), "w") == (1, 2, 3)
    with pytest.raises(UserError, match="must be three integers"):
        options.parse_triple((1.5, 2, 3), "w")
    assert options.parse_tile("6,8,8") == (6, 8, 8)
    with pytest.raises(UserError, match="1,3,3"):
        options.parse_tile("1,3,3")
    assert options.parse_windows(["1,1,1;3,3,3", "2x2x2 4,4,4"]) == ((1, 1, 1), (3, 3, 3), (2, 2, 2), (4, 4, 4))
    with pytest.raises(UserError, match="at least one"):
        options.parse_windows([" ; "])
    assert options.dtype_name(None, "cpu") == "float32" and options.dtype_name(None, "cuda:1") == "bfloat16"
    assert options.dtype_name("BF16", "cpu") == "bfloat16" and options.dtype_name("torch.float16") == "float16"
    with pytest.raises(UserError, match="int8"):
        options.dtype_name("int8", "cpu")
    assert options.positive_int(None, "--steps") is None and options.positive_int(3, "--steps") == 3
    with pytest.raises(UserError, match="--steps must be >= 1, got 0"):
        options.positive_int(0, "--steps")
    assert options.parse_profile_steps("all", 4) == [0, 1, 2, 3] and options.parse_profile_steps("3", 10) == [0, 3, 6, 9]
    with pytest.raises(UserError, match="-1"):
        options.parse_profile_steps("-1", 4)
    assert options.parse_numbers("0,1000", "--seeds", int) == [0, 1000] and options.parse_numbers("3,1.5", "s") == [3.0, 1.5]
    with pytest.raises(UserError, match=r"^--seeds: expected comma-separated integers, got '1,2\.5'$"):
        options.parse_numbers("1,2.5", "--seeds", int)
    with pytest.raises(UserError, match="--guidance: expected comma-separated numbers"):
        options.parse_numbers("4,", "--guidance")
    import torch

    assert options.resolve_device("cpu") == torch.device("cpu")
    assert options.resolve_dtype(None, torch.device("cpu")) == torch.float32
    with pytest.raises(UserError, match="banana"):
        options.resolve_device("banana")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            options.resolve_device("cuda:0")


def test_profile_error_inside_the_run_has_no_blank_line_before_it(capsys, tmp_path):
    """The progress display starts with the first prompt: an error before it is the only line on stderr."""
    assert _entry("profile", "tiny", "--prompts", "quick", "--device", "banana", "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --device 'banana'") and err.count("\n") == 1, repr(err)
