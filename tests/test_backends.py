"""kernels.backends: the one owner of every STA backend decision (CPU; no GPU needed)."""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

import pytest
import torch

from sta_search.errors import UserError
from sta_search.kernels import Geometry, backends
from sta_search.kernels.backends import (TABLE, can_run_flex, can_run_gluon, can_run_reference, can_run_triton,
                                         choose_backend, compatible_backends, require_backend, runs_in_place)

from tiny_pipes import save_tiny

PACKAGE = Path(backends.__file__).resolve().parent.parent
SMALL = Geometry((5, 7, 9), (2, 4, 4))  # 315 tokens
LARGE = Geometry((16, 32, 32), (4, 8, 8))  # 16384 tokens: too many for the dense reference


def _q(geometry=SMALL, head_dim=32, dtype=torch.float32, tokens=None):
    return torch.zeros(1, 2, geometry.video_len if tokens is None else tokens, head_dim, dtype=dtype)


def test_every_can_run_has_one_signature():
    functions = {name: getattr(backends, f"can_run_{name}") for name in TABLE}
    assert set(functions) == {"gluon", "triton", "flex", "gather", "reference"} <= set(TABLE)
    for name, fn in functions.items():
        assert TABLE[name].can_run is fn
        assert list(inspect.signature(fn).parameters) == ["q", "geometry", "layout"], name
        for layout in ("natural", "tiled"):
            ok, why = fn(_q(), SMALL, layout)
            assert isinstance(ok, bool) and isinstance(why, str) and why, (name, layout)
        with pytest.raises(ValueError, match="layout"):
            fn(_q(), SMALL, "t-major")


@pytest.mark.parametrize("check, args, reason", [
    (can_run_gluon, (_q(head_dim=128, dtype=torch.bfloat16), SMALL, "natural"), "Hopper"),
    (can_run_triton, (_q(head_dim=80), SMALL, "natural"), "head dim 80"),
    (can_run_reference, (_q(LARGE), LARGE, "natural"), "16384 tokens"),
    (can_run_reference, (_q(), SMALL, "tiled"), "natural-order"),
    # an empty q (what generate checks before the first step) is counted as the canvas's video tokens
    (can_run_reference, (_q(LARGE, tokens=0), LARGE, "natural"), "too many"),
])
def test_refusals_say_why(check, args, reason):
    ok, why = check(*args)
    assert not ok and reason in why, why


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    ok, why = can_run_triton(_q(), SMALL, "natural")
    assert not ok and "needs a CUDA device" in why
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert can_run_triton(_q(), SMALL, "tiled") == (True, "TRITON_INTERPRET=1 on CPU")
    assert can_run_flex(_q(), SMALL, "tiled")[0]


def test_auto_on_cpu(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the interpreter runs Triton on CPU, but auto never picks it there
    for geometry in (SMALL, LARGE):  # gather computes only the window's key tiles: auto's CPU pick at any size
        for layout in ("natural", "tiled"):
            name, why = choose_backend(_q(geometry), geometry, layout)
            assert name == "gather" and "CPU tensors" in why, (geometry, layout, why)
    assert choose_backend(_q(dtype=torch.int32), SMALL, "natural")[0] == "reference"  # gather refuses non-floats


def test_compatible_backends_lists_every_backend_with_its_verdict(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    verdicts = compatible_backends(_q(), SMALL, "natural")
    assert list(verdicts) == list(TABLE)
    assert {name for name, (ok, _) in verdicts.items() if ok} == {"flex", "gather", "reference"}
    assert "Hopper" in verdicts["gluon"][1] and "CUDA" in verdicts["triton"][1]


def test_runs_in_place_on_cpu(monkeypatch):
    """Off CUDA only gather runs on natural order directly: the interpreter's Triton config has no TMA; flex and
    the reference have no in-place kernel path. On a padded canvas the Triton natural entry still takes natural
    order: it gathers compact tile order itself."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    divisible = Geometry((4, 8, 8), SMALL.tile)
    q = _q(divisible)
    for name in TABLE:
        ok, why = runs_in_place(name, q, q, q, divisible)
        assert ok == (name == "gather") and why, name
    assert "TMA" in runs_in_place("triton", q, None, None, divisible)[1]
    assert not SMALL.is_divisible
    ok, why = runs_in_place("triton", _q(SMALL), None, None, SMALL)
    assert ok and "compact tile order" in why and "TMA" in why
    assert "no in-place" in runs_in_place("flex", q, None, None, divisible)[1]
    with pytest.raises(ValueError, match="backend must be one of"):
        runs_in_place("auto", q, None, None, divisible)


def test_resolve_names_the_backend_and_logs_auto(caplog):
    with pytest.raises(ValueError, match="backend 'gluon' cannot run: needs a Hopper"):
        backends.resolve("gluon", _q(), SMALL, "natural")
    with pytest.raises(ValueError, match="backend must be one of"):
        backends.resolve("cudnn", _q(), SMALL, "natural")
    with caplog.at_level("INFO", logger="sta_search.kernels"):
        assert backends.resolve("auto", _q(), SMALL, "natural") == "gather"
    assert "backend=gather" in caplog.text


def test_require_backend_is_a_user_error_naming_backend_reason_and_alternative(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    empty = _q(tokens=0)
    with pytest.raises(UserError, match=r"--backend triton cannot run X here: needs a CUDA device.*use --backend "
                                        r"gather"):
        require_backend("triton", empty, SMALL, what="X")
    with pytest.raises(UserError, match=r"--backend reference cannot run .* too many .*use --backend gather"):
        require_backend("reference", _q(LARGE, tokens=0), LARGE)
    with pytest.raises(UserError, match="'cudnn' is not one of auto, gluon, triton, flex, gather, reference"):
        require_backend("cudnn", empty, SMALL)
    require_backend("auto", empty, SMALL)
    require_backend("flex", empty, SMALL)


def test_generate_refusal_exits_2_in_process(tmp_path, capsys, monkeypatch):
    """`generate --backend triton` on a CPU without the interpreter: one line from require_backend, exit 2, and
    no step run (nothing written)."""
    from sta_search import cli
    from sta_search.maskconfig import MaskConfig
    from sta_search.models import load_model

    folder = save_tiny("wan", tmp_path / "wan")
    loaded = load_model(str(folder), device="cpu", dtype=torch.float32)
    info = loaded.adapter.info(loaded.transformer)
    mask = tmp_path / "mask.yaml"
    MaskConfig.uniform(info, (3, 8, 8), (1, 4, 4), 0, 2, (1, 1, 1)).save(mask)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(sys, "argv", ["sta-search", "generate", str(folder), "--mask", str(mask), "--prompt", "x",
                                      "--height", "128", "--width", "128", "--frames", "9", "--device", "cpu",
                                      "--backend", "triton", "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_info:
        cli.run()
    err = " ".join(capsys.readouterr().err.split())
    assert exit_info.value.code == 2, err
    assert "--backend triton cannot run" in err and "needs a CUDA device" in err and "use --backend" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# Package source outside kernels/backends.py must not define or re-derive a backend decision.
DEFINITIONS = re.compile(r"^\s*def (can_run_\w*|choose_backend|compatible_backends|runs_in_place|"
                         r"natural_layout_supported)\(", re.M)
# The kernels' private low-level checks, callable from backends.py (and their own file) only.
PRIVATE_CHECKS = {"_inputs_ok": "gluon_fwd.py", "_natural_boxes_ok": "gluon_fwd.py", "_natural_layout_ok": "triton_fwd.py"}
# Re-derivations seen before: rewriting auto by device, or testing for the in-place kernels by name.
REDERIVED = re.compile(r"""backend\s*==\s*["']auto["']\s*and\s*\w+\.device|in\s*\(\s*["']triton["'],\s*["']gluon["']\)|"""
                       r"""in\s*\(\s*["']gluon["'],\s*["']triton["']\)""")


def _package_sources():
    return [p for p in PACKAGE.rglob("*.py") if p.name != "backends.py" or p.parent.name != "kernels"]


def test_no_backend_decision_outside_backends_py():
    sources = _package_sources()
    assert any(p.name == "accelerate.py" for p in sources) and any(p.name == "api.py" for p in sources)
    offences = []
    for path in sources:
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(PACKAGE.parent)
        offences += [f"{rel}: def {m.group(1)}" for m in DEFINITIONS.finditer(text)]
        offences += [f"{rel}: {m.group(0)}" for m in REDERIVED.finditer(text)]
        for helper, home in PRIVATE_CHECKS.items():
            if path.name != home and re.search(rf"\b{helper}\(", text):
                offences.append(f"{rel}: calls {helper}")
    assert not offences, offences


def test_the_grep_test_can_fail(tmp_path):
    """The patterns above catch the re-derivations this module replaced."""
    old = ['def can_run_gluon(q, geometry):', '    if sta_backend == "auto" and q.device.type != "cuda":',
           '    if backend not in ("triton", "gluon"):', '        def choose_backend(q):']
    assert len(DEFINITIONS.findall("\n".join(old))) == 2
    assert len(REDERIVED.findall("\n".join(old))) == 2


def test_cli_backend_names_match_the_table():
    """options.BACKENDS (torch-free, for the CLI's early check) names exactly the backends of the table."""
    from sta_search import options

    assert options.BACKENDS == backends.BACKENDS
