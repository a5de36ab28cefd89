"""The public entry point: backends agree, and bad input gives a ValueError naming the bad value."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from sta_search.kernels import Geometry, to_tiles
from sta_search.kernels.sta import normalize_windows, sta_attention, sta_attention_tiled, sta_reference

ODD = dict(canvas=(5, 7, 9), tile=(2, 4, 4))


def rel_rms(out, ref):
    out, ref = out.double(), ref.double()
    assert torch.isfinite(out).all()
    return ((out - ref).norm() / ref.norm()).item()


def qkv(batch=1, heads=2, tokens=315, head_dim=32, dtype=torch.float32, device="cpu"):
    return [torch.randn(batch, heads, tokens, head_dim, dtype=dtype, device=device) for _ in range(3)]


AGREEMENT = [
    ("odd-mixed-text-after", (5, 7, 9), [(1, 2, 1), (2, 2, 3)], 13, False, 2),
    ("odd-text-before", (5, 7, 9), [(3, 1, 1), (1, 1, 2)], 13, True, 1),
    ("odd-video-only", (5, 7, 9), [(2, 2, 2), (9, 9, 9)], 0, False, 1),
]


@pytest.mark.parametrize("case", AGREEMENT, ids=[c[0] for c in AGREEMENT])
def test_flex_and_triton_agree_with_reference(case, seed):
    _, canvas, windows, text_len, text_first, batch = case
    S = math.prod(canvas) + text_len
    q, k, v = qkv(batch, 2, S)
    text_mask = None
    if text_len:
        text_mask = torch.rand(batch, text_len) > 0.4
        text_mask[:, 0] = True
    kw = dict(canvas=canvas, tile=(2, 4, 4), windows=windows, text_len=text_len, text_first=text_first,
              text_mask=text_mask)
    ref = sta_reference(q.double(), k.double(), v.double(), **kw | dict(windows=normalize_windows(windows, 2)))
    flex = sta_attention(q, k, v, **kw, backend="flex")
    triton = sta_attention(q, k, v, **kw, backend="triton")
    assert rel_rms(flex, ref) < 1e-5, f"seed {seed}"
    assert rel_rms(triton, ref) < 1e-5, f"seed {seed}"
    assert rel_rms(triton, flex) < 1e-5, f"seed {seed}"


def test_auto_backend_logs_its_choice(caplog):
    q, k, v = qkv()
    with caplog.at_level(logging.INFO, logger="sta_search.kernels"):
        out = sta_attention(q, k, v, **ODD, windows=(1, 1, 1))
    assert out.shape == q.shape
    assert "backend=gather" in caplog.text


def test_tiled_entry_rejects_wrong_length():
    geometry = Geometry(**ODD)
    q, k, v = qkv(tokens=geometry.video_len)  # natural length, not padded
    with pytest.raises(ValueError, match=f"tiled sequence length {geometry.video_len}"):
        sta_attention_tiled(q, k, v, geometry=geometry, windows=(1, 1, 1), backend="flex")


def test_tiled_flex_matches_natural_flex(seed):
    geometry = Geometry(**ODD)
    q, k, v = qkv(tokens=geometry.video_len)
    natural = sta_attention(q, k, v, **ODD, windows=(2, 1, 2), backend="flex")
    tiled = sta_attention_tiled(*(to_tiles(geometry, x) for x in (q, k, v)), geometry=geometry, windows=(2, 1, 2),
                                backend="flex")
    assert torch.equal(to_tiles(geometry, natural)[:, :, geometry.key_valid()], tiled[:, :, geometry.key_valid()])


# ------------------------------------------------------------------------------------------ errors
def _call(backend="triton", canvas=(5, 7, 9), tile=(2, 4, 4), windows=(1, 1, 1), heads=2, tokens=315, head_dim=32,
          text_len=0, text_mask=None, dtypes=(torch.float32,) * 3, devices=("cpu",) * 3):
    q, k, v = (torch.randn(1, heads, tokens, head_dim, dtype=dt, device=dev) for dt, dev in zip(dtypes, devices))
    return sta_attention(q, k, v, canvas=canvas, tile=tile, windows=windows, text_len=text_len,
                         text_mask=text_mask, backend=backend)


BAD = [
    ("seq-len", dict(tokens=300), "sequence length 300 != canvas volume 315"),
    ("seq-len-text", dict(tokens=315, text_len=4), "sequence length 315 != canvas volume 315 .* text_len 4"),
    ("window-zero", dict(windows=(1, 0, 1)), r"window entries must be >= 1, got \[1, 0, 1\]"),
    ("window-negative-row", dict(windows=[(1, 1, 1), (2, -1, 2)]), r"window entries must be >= 1, got \[2, -1, 2\]"),
    ("window-table-heads", dict(windows=[(1, 1, 1)] * 3), "windows table has 3 rows but the inputs have 2 heads"),
    ("window-shape", dict(windows=(1, 1)), "3 entries"),
    ("tile-volume", dict(tile=(3, 3, 3)), "tile volume must be a multiple of 16.*27"),
    ("head-dim-48", dict(head_dim=48), "head dim 48"),
    ("dtype-mismatch", dict(dtypes=(torch.float32, torch.bfloat16, torch.float32)), "dtypes differ.*bfloat16"),
    ("dtype-float64", dict(dtypes=(torch.float64,) * 3), "dtype torch.float64 is not supported"),
    ("device-mismatch", dict(devices=("cpu", "meta", "cpu")), "devices differ.*meta"),
    ("text-mask-shape", dict(tokens=319, text_len=4, text_mask=torch.ones(1, 5, dtype=torch.bool)),
     r"text_mask must have shape \(batch, text_len\) = \(1, 4\)"),
    ("backend-name", dict(backend="cuda"), "backend must be one of"),
]


@pytest.mark.parametrize("kwargs, message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_raises_value_error_naming_it(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _call(**kwargs)


def test_user_error_is_a_value_error():
    from sta_search.errors import UserError

    assert issubclass(UserError, ValueError)


# ------------------------------------------------------------------------------- benchmark helpers
def test_bench_shapes_and_flop_counts():
    from sta_search.benchmark import MIXED_WINDOWS, attended_pairs, make_shape

    shape = make_shape("hunyuan-720p", window="3,3,3")
    pairs, dense = attended_pairs(shape)
    assert dense == 24 * 115200**2
    assert pairs / dense == pytest.approx(0.09)
    mixed = make_shape("hunyuan-720p", window="mixed")
    assert len(mixed.window_table()) == 24
    assert sum(math.prod(w) for w in MIXED_WINDOWS) / len(MIXED_WINDOWS) == 27
    assert attended_pairs(mixed)[0] == pytest.approx(pairs, rel=1e-12)  # same mean density as (3,3,3)
    text = make_shape("hunyuan-720p", window="3,3,3", text_len=256)
    assert text.text_valid == 205
    V = 115200
    assert attended_pairs(text)[0] == 24 * (round(0.09 * V * V) + V * 205 + 256 * (V + 205))


@pytest.mark.parametrize("args, message", [
    (["--shape", "foo"], "unknown shape 'foo'"),
    (["--window", "3,0,3"], "--window '3,0,3' must be three integers t,h,w, each >= 1"),
    (["--canvas", "30,48"], "--canvas '30,48' must be three integers"),
], ids=["shape", "window", "canvas"])
def test_bench_command_rejects_bad_options(args, message):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "sta_search", "bench", *args], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_host_window_tables_are_copied_to_a_device_once_per_distinct_table():
    from sta_search.kernels.sta import tables

    host = normalize_windows([(1, 2, 3), (3, 3, 3)], 2)
    assert host.dtype == torch.int32 and host.device.type == "cpu"
    assert tables.device_windows(host, "cpu").tolist() == [[1, 2, 3], [3, 3, 3]]
    first = tables._cached(((1, 2, 3), (3, 3, 3)), torch.device("cpu"))
    assert tables._cached(((1, 2, 3), (3, 3, 3)), torch.device("cpu")) is first
    assert tables._cached(((1, 2, 3), (3, 3, 4)), torch.device("cpu")) is not first


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_host_window_table_reaches_the_gpu_without_a_new_copy_per_call():
    from sta_search.kernels.sta import tables

    a = tables.device_windows(normalize_windows((3, 3, 3), 4), torch.device("cuda"))
    b = tables.device_windows(normalize_windows([3, 3, 3], 4), "cuda")
    assert a is b and a.device.type == "cuda" and a.dtype == torch.int32 and a.tolist() == [[3, 3, 3]] * 4
