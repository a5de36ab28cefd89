import subprocess
import sys


def _run(*args):
    return subprocess.run([sys.executable, "-m", "sta_search", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_every_stage():
    result = _run("--help")
    assert result.returncode == 0
    for command in ("profile", "select", "inspect", "generate", "bench", "convert", "merge", "demo"):
        assert command in result.stdout


def test_unknown_option_exits_2_without_traceback():
    result = _run("select", "--budgt", "0.3", "somewhere")
    assert result.returncode == 2
    assert "--budgt" in result.stderr
    assert "Traceback" not in result.stderr


def test_user_error_is_one_line_and_debug_shows_traceback(tmp_path):
    missing = tmp_path / "no-such-profile"
    result = _run("select", str(missing), "--budget", "0.3")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(missing) in lines[0]
    debug = _run("--debug", "select", str(missing), "--budget", "0.3")
    assert debug.returncode != 0 and "Traceback" in debug.stderr
