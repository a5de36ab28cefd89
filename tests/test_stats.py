"""Recall tables, offset mass and shortlist errors on synthetic q/k with planted locality."""

import math

import pytest
import torch
import torch.nn.functional as F

from sta_search.errors import UserError
from sta_search.kernels.geometry import Geometry
from sta_search.kernels.sta import sta_attention, sta_mask
from sta_search.stats import (
    AttentionProfiler,
    clip_windows,
    default_error_windows,
    offset_mass,
    parse_windows,
    window_recall,
)
from sta_search.kernels.recall import tile_mass_reference

CANVAS, TILE = (4, 6, 16), (2, 2, 4)  # grid (2, 3, 4): 24 tiles of 16 tokens
PLANTED = [(1, 1, 1), (2, 1, 3), (1, 3, 2), (2, 2, 2)]


def _planted_qk(geometry: Geometry, windows, text_len=0, dim=32, sharpness=80.0, noise=0.05):
    """Keys carry an orthonormal code of their tile; each query sums the codes of the key tiles inside its
    head's planted window, so its softmax mass sits (almost) entirely in that window."""
    assert geometry.num_tiles <= dim
    codes = torch.linalg.qr(torch.randn(dim, dim))[0][: geometry.num_tiles]  # (tiles, dim), orthonormal rows
    natural_tile = torch.empty(geometry.video_len, dtype=torch.long)
    valid = geometry.key_valid()
    natural_tile[geometry.tile_index()[valid]] = torch.nonzero(valid).squeeze(1) // geometry.tile_volume
    heads = []
    for w in windows:
        kt = torch.from_numpy(geometry.key_tiles(w).astype("int64"))  # (tiles, kt)
        q_codes = codes[kt].sum(1)  # (tiles, dim)
        q = sharpness * q_codes[natural_tile] + noise * torch.randn(geometry.video_len, dim)
        k = codes[natural_tile] + noise * torch.randn(geometry.video_len, dim)
        if text_len:
            q = torch.cat([q, torch.randn(text_len, dim)])
            k = torch.cat([k, 0.1 * torch.randn(text_len, dim)])
        heads.append((q, k))
    q = torch.stack([h[0] for h in heads])[None]
    k = torch.stack([h[1] for h in heads])[None]
    return q, k, torch.randn_like(k)


def _all_windows(grid):
    return [(a, b, c) for a in range(1, grid[0] + 1) for b in range(1, grid[1] + 1) for c in range(1, grid[2] + 1)]


@pytest.mark.parametrize("text_len", [0, 12])
def test_planted_window_is_found(seed, text_len):
    g = Geometry(CANVAS, TILE)
    q, k, _ = _planted_qk(g, PLANTED, text_len)
    mass = tile_mass_reference(q, k, canvas=CANVAS, tile=TILE, text_len=text_len)
    table = window_recall(mass, g)[0]  # (heads, nt, nh, nw)
    for h, planted in enumerate(PLANTED):
        t = table[h]
        assert t[planted[0] - 1, planted[1] - 1, planted[2] - 1] >= 0.9
        # the sparsest window reaching 0.9 is the planted one
        good = [w for w in _all_windows(g.grid) if t[w[0] - 1, w[1] - 1, w[2] - 1] >= 0.9]
        assert min(good, key=lambda w: (math.prod(w), w)) == planted
        # recall never drops when a window grows along any axis
        for axis in range(3):
            assert bool((t.diff(dim=axis) >= -1e-9).all())
        assert t[-1, -1, -1].item() == pytest.approx(1.0, abs=1e-6)


def test_window_recall_matches_explicit_masks(seed):
    """Recall of every window from the tile mass equals the softmax mass under the element-level mask of docs/geometry.md."""
    canvas, tile, text_len = (3, 5, 6), (2, 2, 4), 5  # padded grid (2, 3, 2)
    g = Geometry(canvas, tile)
    S = g.video_len + text_len
    q, k = torch.randn(1, 2, S, 16) * 2, torch.randn(1, 2, S, 16)
    text_mask = torch.tensor([[True, True, False, True, False]])
    mass = tile_mass_reference(q, k, canvas=canvas, tile=tile, text_len=text_len, text_mask=text_mask)
    table = window_recall(mass, g)[0]
    full = sta_mask(canvas, tile, torch.tensor([[9, 9, 9]] * 2), text_len, False, text_mask)
    probs = torch.softmax((q @ k.transpose(-1, -2) / 4).masked_fill(~full, float("-inf")), dim=-1)[0]
    for w in _all_windows(g.grid):
        inside = sta_mask(canvas, tile, torch.tensor([w, w]), text_len, False, text_mask)[0]
        expected = (probs * inside)[:, : g.video_len].sum(-1).mean(-1)  # mean over video queries
        got = table[:, w[0] - 1, w[1] - 1, w[2] - 1]
        torch.testing.assert_close(got, expected.double(), rtol=1e-5, atol=1e-6)


def test_offset_mass(seed):
    g = Geometry(CANVAS, TILE)
    q, k, _ = _planted_qk(g, [(1, 1, 1)])
    mass = tile_mass_reference(q, k, canvas=CANVAS, tile=TILE)
    offsets = offset_mass(mass, g)[0, 0]
    assert offsets.shape == tuple(2 * n - 1 for n in g.grid)
    assert offsets.sum().item() == pytest.approx(1.0, abs=1e-6)  # no text: all mass is on video tiles
    centre = tuple(n - 1 for n in g.grid)
    assert offsets[centre].item() >= 0.9  # planted (1,1,1): mass on the query's own tile
    # offset mass is the same tile mass summed along diagonals: check one off-centre entry by hand
    m = mass[0, 0, :, : g.num_tiles].double()
    nt, nh, nw = g.grid
    coords = torch.stack(torch.meshgrid(torch.arange(nt), torch.arange(nh), torch.arange(nw), indexing="ij"), -1)
    coords = coords.reshape(-1, 3)
    delta = coords[None, :, :] - coords[:, None, :]  # key - query
    pick = (delta == torch.tensor([1, -1, 2])).all(-1)
    assert offsets[nt, nh - 2, nw + 1].item() == pytest.approx((m * pick).sum().item() / g.video_len, abs=1e-9)


def _profile(backend, sta_backend, canvas, tile, q, k, v, windows, text_len=0, text_mask=None, text_first=False):
    profiler = AttentionProfiler(Geometry(canvas, tile), windows, backend=backend, sta_backend=sta_backend)
    return profiler(q, k, v, text_len=text_len, text_first=text_first, text_mask=text_mask)


def test_error_shortlist_consistent_with_kernel(seed):
    canvas, tile, text_len = (3, 5, 6), (2, 2, 4), 6
    g = Geometry(canvas, tile)
    S = g.video_len + text_len
    q, k, v = (torch.randn(2, 3, S, 32) for _ in range(3))
    text_mask = torch.rand(2, text_len) > 0.3
    windows = clip_windows(g, [(1, 1, 1), (2, 1, 2), (1, 3, 1), (9, 9, 9)])
    out, stats = _profile("reference", "auto", canvas, tile, q, k, v, windows, text_len, text_mask)
    full = sta_mask(canvas, tile, torch.tensor([[9, 9, 9]] * 3), text_len, False, text_mask, batch=2)
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=full)
    torch.testing.assert_close(out, dense, rtol=1e-5, atol=1e-5)
    assert stats.samples == 2 and stats.error.shape == (3, len(windows))
    full_index = windows.index(g.grid)
    assert bool((stats.error[:, full_index] == 0).all())
    # the full window's STA output is the dense output: skipping it as error 0 is exact up to rounding
    o_full = sta_attention(q, k, v, canvas=canvas, tile=tile, windows=(9, 9, 9), text_len=text_len,
                           text_mask=text_mask, backend="reference")
    assert (o_full - dense).norm() / dense.norm() < 1e-5
    V = g.video_len
    for i, w in enumerate(windows):
        if w == g.grid:
            continue
        o = sta_attention(q, k, v, canvas=canvas, tile=tile, windows=w, text_len=text_len, text_mask=text_mask,
                          backend="reference")
        per_item = torch.stack([(o[b, :, :V] - dense[b, :, :V]).flatten(1).norm(dim=1)
                                / dense[b, :, :V].flatten(1).norm(dim=1) for b in range(2)])  # (B, heads)
        torch.testing.assert_close(stats.error[:, i], per_item.sum(0).double(), rtol=1e-4, atol=1e-6)
        assert bool((stats.error[:, i] > 0).all())
    # shortlist recall is read from the all-window table
    for i, w in enumerate(windows):
        torch.testing.assert_close(stats.shortlist_recall[:, i], stats.recall[:, w[0] - 1, w[1] - 1, w[2] - 1])


def test_tiled_path_matches_reference_path(seed):
    """The GPU code path (Triton recall pass + tile-order STA, here interpreted / flex on CPU) gives the
    same statistics as the reference path, with padding, masked text after the video and head chunking."""
    canvas, tile, text_len = (3, 5, 6), (2, 2, 4), 7
    g = Geometry(canvas, tile)
    S = g.video_len + text_len
    q, k, v = (torch.randn(1, 3, S, 32) for _ in range(3))
    text_mask = torch.rand(1, text_len) > 0.3
    windows = default_error_windows(g)
    out_r, ref = _profile("reference", "auto", canvas, tile, q, k, v, windows, text_len, text_mask)
    # recall pass: one head per chunk (tile-order q and k of a head exceed it); shortlist: two heads per chunk
    profiler = AttentionProfiler(g, windows, backend="triton", sta_backend="flex", memory_budget=4 * S * 32 * 4)
    out_t, tiled = profiler(q, k, v, text_len=text_len, text_mask=text_mask)
    torch.testing.assert_close(out_t, out_r, rtol=1e-5, atol=1e-5)
    for name in ("recall", "offset_mass", "error", "shortlist_recall"):
        torch.testing.assert_close(getattr(tiled, name), getattr(ref, name), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("text_first", [False, True])
def test_tiled_path_runs_the_shortlist_on_natural_order(seed, monkeypatch, text_first):
    """The shortlist's STA calls get views of the caller's q, k, v (no tile-order copies) and the default
    backend (gather in place on CPU); the statistics still match the reference path."""
    import sta_search.stats as stats_module

    canvas, tile, text_len = (3, 5, 6), (2, 2, 4), 5
    g = Geometry(canvas, tile)
    S = g.video_len + text_len
    q, k, v = (torch.randn(1, 2, S, 32) for _ in range(3))
    text_mask = torch.tensor([[True, False, True, True, False]])
    windows = clip_windows(g, [(1, 1, 1), (2, 1, 2), (9, 9, 9)])
    seen = []
    real = stats_module.sta_attention

    def spy(qq, kk, vv, **kw):
        seen.append(all(a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
                        for a, b in ((qq, q), (kk, k), (vv, v))))
        return real(qq, kk, vv, **kw)

    monkeypatch.setattr(stats_module, "sta_attention", spy)
    kw = dict(text_len=text_len, text_first=text_first, text_mask=text_mask)
    _, got = AttentionProfiler(g, windows, backend="triton")(q, k, v, **kw)
    assert seen == [True, True]  # two partial windows, full window skipped
    _, ref = AttentionProfiler(g, windows, backend="reference")(q, k, v, **kw)
    for name in ("recall", "offset_mass", "error", "shortlist_recall"):
        torch.testing.assert_close(getattr(got, name), getattr(ref, name), rtol=1e-4, atol=1e-5)


def test_squared_distance_against_float64(seed):
    from sta_search.stats import squared_distance

    x = torch.randn(2, 3, 50, 16).to(torch.bfloat16).transpose(1, 2).contiguous().transpose(1, 2)  # odd strides
    ref = (x.float() + 1e-3 * torch.randn(2, 3, 50, 16)).to(torch.bfloat16)
    expected = (x.double() - ref.double()).square().sum(dim=(-2, -1))
    got = squared_distance(x, ref, chunk_bytes=4 * 2 * 3 * 16 * 7)  # chunks of 7 tokens
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=0)
    assert bool((got > 0).all())
    torch.testing.assert_close(squared_distance(x, None).double(), x.double().square().sum(dim=(-2, -1)), rtol=1e-5,
                               atol=0)
    y = torch.randn(1, 2, 9, 4)
    before = y.clone()
    squared_distance(y, None, chunk_bytes=16)
    assert torch.equal(y, before)  # float32 input is not squared in place


def test_tile_order_indices_match_to_tiles(seed):
    from sta_search.kernels.geometry import to_tiles
    from sta_search.stats import _tile_order_indices

    g = Geometry((3, 5, 6), (2, 2, 4))
    for text_len, text_first in ((0, False), (4, False), (4, True)):
        x = torch.randn(1, 2, g.video_len + text_len, 8)
        video = slice(text_len, None) if text_first else slice(0, g.video_len)
        text = slice(0, text_len) if text_first else slice(g.video_len, None)
        video_index, key_index, padding = _tile_order_indices(g, text_len, text_first, x.device)
        keys = x.index_select(2, key_index).index_fill_(2, padding, 0)
        torch.testing.assert_close(keys, torch.cat([to_tiles(g, x[:, :, video]), x[:, :, text]], dim=2))
        torch.testing.assert_close(x.index_select(2, video_index).index_fill_(2, padding, 0),
                                   to_tiles(g, x[:, :, video]))


def test_shortlist_clipping_and_parsing():
    g = Geometry((30, 48, 80), (6, 8, 8))  # grid (5, 6, 10)
    windows = default_error_windows(g)
    assert windows[0] == (1, 1, 1) and windows[-1] == (5, 6, 10)
    assert (1, 6, 10) in windows and (5, 1, 10) in windows
    assert len(set(windows)) == len(windows)
    densities = [g.tile_density(w) for w in windows]
    assert densities == sorted(densities)
    small = Geometry((4, 6, 16), (2, 2, 4))  # grid (2, 3, 4): many defaults collapse after clipping
    clipped = default_error_windows(small)
    assert len(set(clipped)) == len(clipped) < len(windows)
    assert all(all(a <= n for a, n in zip(w, small.grid)) for w in clipped)
    assert parse_windows(["1,1,1;3,3,3", "2x2x2"]) == ((1, 1, 1), (3, 3, 3), (2, 2, 2))
    with pytest.raises(UserError, match="0,1,1"):
        parse_windows(["0,1,1"])
    with pytest.raises(UserError, match="a,b"):
        parse_windows(["a,b"])


@pytest.mark.gpu
@pytest.mark.parametrize("recall", ["auto", "triton"])  # auto on Hopper: the fused Gluon dense + tile-mass pass
@pytest.mark.parametrize("head_dim", [64, 128])  # 128 in bf16 on Hopper: the shortlist runs the Gluon kernel
def test_cuda_profiler_matches_cpu_reference(head_dim, recall, seed):
    """The CUDA paths (fused Gluon pass, or dense+LSE then the Triton recall pass; STA shortlist) against the fp32
    CPU path."""
    canvas, tile, text_len = (6, 16, 24), (6, 8, 8), 40
    g = Geometry(canvas, tile)
    S = g.video_len + text_len
    q, k, v = (torch.randn(1, 4, S, head_dim) for _ in range(3))
    q = q * 2
    text_mask = torch.rand(1, text_len) > 0.3
    windows = default_error_windows(g)
    _, ref = _profile("reference", "auto", canvas, tile, q, k, v, windows, text_len, text_mask)
    cuda = [x.cuda().to(torch.bfloat16) for x in (q, k, v)]
    _, got = AttentionProfiler(g, windows, backend=recall)(*cuda, text_len=text_len, text_mask=text_mask.cuda())
    torch.testing.assert_close(got.recall.cpu(), ref.recall, rtol=0, atol=1e-2)
    torch.testing.assert_close(got.offset_mass.cpu(), ref.offset_mass, rtol=0, atol=1e-2)
    torch.testing.assert_close(got.error.cpu(), ref.error, rtol=0.1, atol=2e-2)


def test_error_when_the_window_misses_all_the_mass(seed):
    """Queries look only at the *next* tile with logits ~1000 above the rest: inside a (1,1,1) window the
    weights of a shared exp underflow, and the reference path must still give the window's own softmax."""
    canvas, tile = (4, 6, 16), (2, 2, 4)
    g = Geometry(canvas, tile)
    dim = 32
    codes = torch.linalg.qr(torch.randn(dim, dim))[0][: g.num_tiles]
    natural_tile = torch.empty(g.video_len, dtype=torch.long)
    natural_tile[g.tile_index()[g.key_valid()]] = torch.nonzero(g.key_valid()).squeeze(1) // g.tile_volume
    q = 6000.0 * codes[(natural_tile + 1) % g.num_tiles]
    k = codes[natural_tile] + 0.01 * torch.randn(g.video_len, dim)
    q, k = q[None, None], k[None, None]
    v = torch.randn_like(k)
    windows = ((1, 1, 1), (2, 3, 4))
    dense = F.scaled_dot_product_attention(q, k, v)
    _, stats = AttentionProfiler(g, windows, backend="reference")(q, k, v, dense_out=dense)
    o = sta_attention(q, k, v, canvas=canvas, tile=tile, windows=(1, 1, 1), backend="reference")
    expected = (o - dense).norm() / dense.norm()
    assert torch.isfinite(stats.error).all() and expected > 0.5
    assert stats.error[0, 0].item() == pytest.approx(expected.item(), rel=1e-4)
    assert stats.error[0, 1].item() == 0


@pytest.mark.parametrize("tiles_per_chunk", [100, 4, 2, 1])  # whole frames, whole rows, runs of a row, one tile
def test_tile_order_cpu_path_in_chunks(seed, tiles_per_chunk):
    """The CPU path's tile-order chunks (boxes of query tiles) give the tile mass of ``tile_mass_reference``
    and the windows' errors of ``sta_attention(backend="reference")``: canvas not divisible by the tile,
    masked text before the video."""
    canvas, tile, text_len = (5, 7, 9), (2, 4, 4), 6  # grid (3, 2, 3)
    g = Geometry(canvas, tile)
    S = g.video_len + text_len
    q, k, v = (torch.randn(2, 2, S, 32) for _ in range(3))
    q = 2 * q
    text_mask = torch.rand(2, text_len) > 0.3
    text_mask[:, 0] = False
    windows = clip_windows(g, [(1, 1, 1), (2, 1, 2), (1, 2, 3), (3, 1, 1)])
    profiler = AttentionProfiler(g, windows, backend="reference")
    dense = F.scaled_dot_product_attention(
        q, k, v, attn_mask=sta_mask(canvas, tile, torch.tensor([[9, 9, 9]] * 2), text_len, True, text_mask, batch=2))
    chunk_bytes = tiles_per_chunk * 4 * (g.padded_len + text_len) * 2 * 2 * g.tile_volume
    mass, errors = profiler._reference_fused(q, k, v, dense, [0, 1, 2, 3], text_len, True, text_mask, 32**-0.5,
                                             chunk_bytes=chunk_bytes)
    expected_mass = tile_mass_reference(q, k, canvas=canvas, tile=tile, text_len=text_len, text_first=True,
                                        text_mask=text_mask)
    torch.testing.assert_close(mass, expected_mass, rtol=1e-4, atol=1e-5)
    video = slice(text_len, S)
    for i, w in enumerate(windows):
        o = sta_attention(q, k, v, canvas=canvas, tile=tile, windows=w, text_len=text_len, text_first=True,
                          text_mask=text_mask, backend="reference")
        expected = (o[:, :, video] - dense[:, :, video]).flatten(2).norm(dim=-1) \
            / dense[:, :, video].flatten(2).norm(dim=-1)
        torch.testing.assert_close(errors[..., i], expected.double(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("canvas", [(21, 30, 52), (21, 45, 80), (16, 24, 40), (60, 96, 160)],
                         ids=["wan480p", "wan720p", "small-ish", "large-grid"])
def test_proportional_shortlist_keeps_the_default_densities(canvas):
    """`--windows proportional`: the default list scaled to the grid. It is the default list on the grid it was
    laid out for, ends with the full window, and on other grids keeps the partial windows' density sum near the
    reference grid's instead of drifting with clipping (Wan 480p: 3.79 clipped)."""
    from sta_search.stats import DEFAULT_WINDOWS_GRID, default_error_windows, proportional_error_windows

    reference = Geometry(tuple(n * t for n, t in zip(DEFAULT_WINDOWS_GRID, (6, 8, 8))), (6, 8, 8))
    assert proportional_error_windows(reference) == default_error_windows(reference)
    target = sum(reference.tile_density(w) for w in default_error_windows(reference) if not reference.is_full(w))
    geometry = Geometry(canvas, (6, 8, 8))
    windows = proportional_error_windows(geometry)
    assert geometry.is_full(windows[-1]) and len(set(windows)) == len(windows)
    assert all(1 <= w <= n for window in windows for w, n in zip(window, geometry.grid))
    partial = [w for w in windows if not geometry.is_full(w)]
    total = sum(geometry.tile_density(w) for w in partial)
    assert abs(total - target) < 0.5, (total, target)
    assert max(geometry.tile_density(w) for w in partial) < 0.7
