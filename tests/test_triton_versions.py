"""The CPU kernel tests under the newest supported Triton, next to the one the test environment pins.

CI installs ``triton==3.6.0`` (the low end of the supported range, see :mod:`sta_search.kernels.versions`);
this test installs the high end, ``triton==3.9.0``, with ``pip install --no-deps --target`` into a cache
folder (``outputs/triton-versions/``, ignored by git, reused by later runs; the environment's Triton is
never touched) and runs a representative subset of the interpreter kernel tests in a subprocess with
that Triton first on ``PYTHONPATH``. Deselect with ``-m "not triton_versions"``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sta_search.kernels import versions

pytestmark = pytest.mark.triton_versions

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "outputs" / "triton-versions"
NEWEST = "3.9.0"

# Padding masks (odd canvas), int8 key-padding text masks, text before/after, batch 2, the natural-layout
# (descriptor-load) path with text through descriptors first, and the recall pass with masked text.
SUBSET = [
    "tests/test_kernel_triton.py::test_triton_fp32_matches_reference[odd-w111]",
    "tests/test_kernel_triton.py::test_triton_fp32_matches_reference[odd-text-after-masked-b2]",
    "tests/test_kernel_triton.py::test_triton_fp32_matches_reference[odd-text-before-masked]",
    "tests/test_kernel_triton.py::test_natural_layout_kernel_matches_reference[odd-text-before-text-tma]",
    "tests/test_kernel_triton.py::test_padded_key_tokens_are_never_attended",
    "tests/test_recall_kernel.py::test_triton_matches_reference[canvas1-tile1-10-False-True]",
]

# pip's words for "the index cannot be reached" (as opposed to "this version does not exist")
_OFFLINE = re.compile(r"NewConnectionError|Max retries exceeded|Temporary failure in name resolution|"
                      r"Name or service not known|Network is unreachable|ConnectTimeout|ProxyError|"
                      r"Connection refused|No route to host")


def _install(version: str) -> Path:
    """``triton==version`` in its own folder under the cache (installed once; a half-done install is redone)."""
    target = CACHE / f"triton-{version}"
    if (target / ".complete").exists():
        return target
    staging = CACHE / f"triton-{version}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--disable-pip-version-check",
                          "--target", str(staging), f"triton=={version}"], capture_output=True, text=True)
    if pip.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        log = pip.stdout + pip.stderr
        if _OFFLINE.search(log):
            pytest.skip(f"cannot reach the package index to install triton=={version}: {log.strip()[-300:]}")
        pytest.fail(f"pip could not install triton=={version}:\n{log[-3000:]}")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    (target / ".complete").write_text(version + "\n")
    return target


def test_pyproject_states_the_supported_range():
    """pyproject.toml's triton requirement is the range the code checks against."""
    (spec,) = re.findall(r'^\s*"triton\s*([<>=!~][^";]*)[;"]', (REPO / "pyproject.toml").read_text(), re.M)
    assert spec.strip() == versions.SUPPORTED_TRITON_SPEC
    low, high = versions.SUPPORTED_TRITON
    assert versions.SUPPORTED_TRITON_SPEC == f">={low[0]}.{low[1]},<{high[0]}.{high[1]}"
    assert low <= versions.parse_version(NEWEST)[:2] < high


def test_version_gates():
    assert versions.parse_version("3.6.0+git1a2b3c4") == (3, 6, 0)
    assert versions.parse_version("3.10") == (3, 10, 0)
    ok, why = versions.triton_supported()
    assert ok, why  # the test environment's Triton is in the range
    with pytest.MonkeyPatch.context() as mp:
        for version, triton_ok, gluon_ok in (("3.5.1", False, False), ("3.6.0", True, True), ("3.8.0", True, True),
                                             ("3.9.0", True, False), ("3.10.0", False, False)):
            mp.setattr(versions, "triton_version", lambda v=version: versions.parse_version(v))
            assert versions.triton_supported()[0] is triton_ok, version
            ok, why = versions.gluon_supported()
            assert ok is gluon_ok, version
            if not ok:
                assert version in why and "use backend triton" in why


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Triton wheels are built for Linux only")
@pytest.mark.timeout(900)
def test_cpu_kernels_pass_under_newest_supported_triton():
    target = _install(NEWEST)
    env = dict(os.environ, TRITON_INTERPRET="1",
               PYTHONPATH=os.pathsep.join([str(target), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    # The version line comes from the very process that runs the tests, so it is the Triton the kernels used.
    script = ("import sys, pytest, triton; print('TRITON', triton.__version__, triton.__file__, flush=True); "
              "sys.exit(pytest.main(sys.argv[1:]))")
    run = subprocess.run([sys.executable, "-c", script, "-q", "-p", "no:cacheprovider", "-o", "addopts=", *SUBSET],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=850)
    out = run.stdout + run.stderr
    seen = re.search(r"^TRITON (\S+) (\S+)$", run.stdout, re.M)
    assert seen, out[-3000:]
    assert seen.group(1) == NEWEST and Path(seen.group(2)).is_relative_to(target), seen.group(0)
    assert run.returncode == 0, f"CPU kernel tests fail under triton {NEWEST}:\n{out[-6000:]}"
    assert re.search(rf"\b{len(SUBSET)} passed\b", out) and "skipped" not in out, out[-3000:]
