"""The gather backend (window keys gathered per key set + batched SDPA) against the dense-mask reference."""

from __future__ import annotations

import math

import pytest
import torch

from sta_search.kernels import Geometry, to_tiles
from sta_search.kernels.sta import normalize_windows, sta_reference
from sta_search.kernels.backends import can_run_gather
from sta_search.kernels.sta.gather import key_sets, sta_gather, sta_gather_tiled

from kernel_cases import rel_rms

TILE = (2, 4, 4)
# Relative RMS error against the float64 reference, per input dtype.
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2}

# name, canvas, windows (one or per head), text_len, text_first, batch, head_dim
CASES = [
    ("odd-mixed-text-after", (5, 7, 9), [(1, 2, 1), (2, 2, 3), (1, 2, 1)], 13, False, 2, 32),
    ("odd-mixed-text-before", (5, 7, 9), [(3, 1, 1), (1, 1, 2), (2, 2, 2)], 21, True, 2, 64),
    ("odd-video-only-full-and-local", (3, 9, 11), [(9, 9, 9), (1, 1, 1), (2, 3, 2)], 0, False, 1, 128),
    ("divisible-one-window", (4, 12, 16), (2, 3, 3), 0, False, 2, 32),
    ("divisible-text-before-mixed-and-full", (6, 8, 12), [(2, 3, 3), (1, 2, 3), (3, 1, 1), (9, 9, 9)], 40, True, 1, 64),
    ("even-windows-text-after", (4, 9, 12), [(2, 2, 2), (4, 2, 4)], 17, False, 2, 32),
    ("full-grid", (5, 7, 9), (50, 50, 50), 13, False, 2, 32),
]


def _inputs(canvas, windows, text_len, batch, head_dim, heads, dtype):
    S = math.prod(canvas) + text_len
    q, k, v = (torch.randn(batch, heads, S, head_dim, dtype=torch.float64) for _ in range(3))
    text_mask = None
    if text_len:
        text_mask = torch.rand(batch, text_len) > 0.35
        text_mask[:, 0] = True
        if batch > 1:
            text_mask[1, -3:] = False  # rows differ, so some text keys are padded in one row only
    return q, k, v, text_mask


def _heads(windows) -> int:
    return len(windows) if isinstance(windows, list) else 3


@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_gather_matches_reference(case, dtype, seed):
    _, canvas, windows, text_len, text_first, batch, head_dim = case
    heads = _heads(windows)
    geometry = Geometry(canvas, TILE)
    table = normalize_windows(windows, heads)
    q, k, v, text_mask = _inputs(canvas, windows, text_len, batch, head_dim, heads, dtype)
    ref = sta_reference(q, k, v, canvas=canvas, tile=TILE, windows=table, text_len=text_len, text_first=text_first,
                        text_mask=text_mask)
    out = sta_gather(*(x.to(dtype) for x in (q, k, v)), geometry, table, text_len, text_first, text_mask)
    assert out.shape == q.shape and out.dtype == dtype
    err = rel_rms(out, ref)
    assert err < TOLERANCE[dtype], f"seed {seed}: rel rms {err:.3g}"


@pytest.mark.parametrize("case", [c for c in CASES if not c[4]], ids=[c[0] for c in CASES if not c[4]])
def test_tiled_entry_matches_natural(case, seed):
    _, canvas, windows, text_len, _, batch, head_dim = case
    heads = _heads(windows)
    geometry = Geometry(canvas, TILE)
    table = normalize_windows(windows, heads)
    q, k, v, text_mask = _inputs(canvas, windows, text_len, batch, head_dim, heads, torch.float32)
    natural = sta_gather(q, k, v, geometry, table, text_len, False, text_mask)
    V = geometry.video_len
    tiled_in = [torch.cat([to_tiles(geometry, x[:, :, :V]), x[:, :, V:]], dim=2) for x in (q, k, v)]
    tiled = sta_gather_tiled(*tiled_in, geometry, table, text_len, text_mask)
    expect = torch.cat([to_tiles(geometry, natural[:, :, :V]), natural[:, :, V:]], dim=2)
    assert torch.allclose(tiled, expect, rtol=1e-5, atol=1e-6), f"seed {seed}"
    pad = ~geometry.key_valid()
    assert (tiled[:, :, : geometry.padded_len][:, :, pad] == 0).all()


def test_padded_keys_are_never_attended(seed):
    """Huge values on real tokens only: if a padded (zero) key were attended the output would move."""
    canvas, windows = (3, 5, 6), [(1, 1, 1), (2, 2, 2)]
    geometry = Geometry(canvas, TILE)
    assert not geometry.is_divisible
    table = normalize_windows(windows, 2)
    q, k, v, _ = _inputs(canvas, windows, 0, 1, 32, 2, torch.float64)
    q = q * 30  # sharp softmax: a zero-score padded key would be far from negligible otherwise ...
    k = k - 5 * q.sign()  # ... and every real key scores strongly negative, so a padded key (score 0) would win
    ref = sta_reference(q, k, v, canvas=canvas, tile=TILE, windows=table)
    out = sta_gather(q, k, v, geometry, table)
    assert rel_rms(out, ref) < 1e-12, f"seed {seed}"


def test_key_sets_cover_every_query_tile_once_with_its_window():
    geometry = Geometry((5, 7, 9), TILE)
    for window in [(1, 1, 1), (2, 2, 3), (3, 1, 2), (9, 9, 9)]:
        seen = {}
        for sets in key_sets(geometry, window):
            for queries, keys in zip(sets.query_tiles.tolist(), sets.key_tiles.tolist()):
                for tile in queries:
                    assert tile not in seen
                    seen[tile] = keys
        expected = geometry.key_tiles(window)
        assert sorted(seen) == list(range(geometry.num_tiles))
        for tile, keys in seen.items():
            assert keys == sorted(expected[tile].tolist()), (window, tile)


def test_full_window_is_one_key_set():
    geometry = Geometry((5, 7, 9), TILE)
    (only,) = key_sets(geometry, (9, 9, 9))
    assert only.query_tiles.shape == (1, geometry.num_tiles)


def test_can_run_gather():
    geometry = Geometry((4, 8, 8), TILE)
    q = torch.zeros(1, 1, geometry.video_len, 32, dtype=torch.bfloat16)
    assert can_run_gather(q, geometry, "natural")[0]
    assert can_run_gather(q, geometry, "tiled")[0]
    with pytest.raises(ValueError, match="layout"):
        can_run_gather(q, geometry, "sideways")
    ok, why = can_run_gather(q.to(torch.int32), geometry, "natural")
    assert not ok and "int32" in why


def test_reused_gather_buffer_works_in_and_out_of_inference_mode_and_with_autograd(seed):
    """The CPU gathers write into a reused buffer: a first call under inference_mode must not leave an
    inference tensor that a later normal call cannot write, and inputs that need gradients still get them."""
    from sta_search.kernels.sta import gather

    gather._WORKSPACE.buffers.clear()
    geometry = Geometry((4, 8, 8), TILE)
    windows = normalize_windows((2, 1, 2), 2)
    q, k, v = (torch.randn(1, 2, geometry.video_len, 32) for _ in range(3))
    reference = sta_reference(q, k, v, canvas=geometry.canvas, tile=TILE, windows=windows)
    with torch.inference_mode():
        inside = sta_gather(q, k, v, geometry, windows)
    outside = sta_gather(q, k, v, geometry, windows)
    assert rel_rms(inside, reference) < TOLERANCE[torch.float32]
    assert rel_rms(outside, reference) < TOLERANCE[torch.float32]
    qg = q.clone().requires_grad_()
    sta_gather(qg, k, v, geometry, windows).sum().backward()
    qr = q.clone().requires_grad_()
    sta_reference(qr, k, v, canvas=geometry.canvas, tile=TILE, windows=windows).sum().backward()
    assert rel_rms(qg.grad, qr.grad) < 1e-4
