"""Geometry (docs/geometry.md) checked against brute force written straight from its rules."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from sta_search.kernels import Geometry, from_tiles, to_tiles

GEOMETRIES = [
    Geometry((5, 7, 9), (2, 4, 4)),
    Geometry((4, 8, 8), (2, 4, 4)),
    Geometry((3, 5, 6), (1, 4, 4)),
    Geometry((21, 30, 52), (6, 8, 8)),
]
GEO_IDS = ["odd-5x7x9", "even-4x8x8", "odd-3x5x6-t144", "wan480p"]


def spec_start(q: int, w: int, n: int) -> int:
    w = min(w, n)
    return min(max(q - (w - 1) // 2, 0), n - w)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=GEO_IDS)
def test_grid_and_lengths(geometry):
    assert geometry.grid == tuple(math.ceil(c / t) for c, t in zip(geometry.canvas, geometry.tile))
    assert geometry.padded_len == geometry.num_tiles * geometry.tile_volume
    assert geometry.video_len == math.prod(geometry.canvas)
    assert int(geometry.key_valid().sum()) == geometry.video_len
    assert geometry.is_divisible == (geometry.padded_len == geometry.video_len)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=GEO_IDS)
def test_tile_order_is_t_major_tiles_then_t_major_offsets(geometry):
    index = geometry.tile_index()
    (T, H, W), (tt, th, tw) = geometry.canvas, geometry.tile
    nt, nh, nw = geometry.grid
    pos = 0
    for ct, ch, cw in itertools.product(range(nt), range(nh), range(nw)):
        for ot, oh, ow in itertools.product(range(tt), range(th), range(tw)):
            t, h, w = ct * tt + ot, ch * th + oh, cw * tw + ow
            expected = t * H * W + h * W + w if (t < T and h < H and w < W) else -1
            if pos % 97 == 0 or expected == -1:  # spot check (full loop is slow for the big canvas)
                assert int(index[pos]) == expected
            pos += 1
    assert pos == geometry.padded_len


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=GEO_IDS)
def test_tiles_round_trip(geometry, seed):
    x = torch.randn(2, geometry.video_len, 3)
    tiled = to_tiles(geometry, x, dim=1)
    assert tiled.shape == (2, geometry.padded_len, 3)
    assert torch.equal(tiled[:, ~geometry.key_valid()], torch.zeros_like(tiled[:, ~geometry.key_valid()]))
    assert torch.equal(from_tiles(geometry, tiled, dim=1), x)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=GEO_IDS)
def test_compact_tile_order_puts_each_tiles_real_tokens_first(geometry, seed):
    """Compact tile order: the same tiles in the same slots; inside a tile its real tokens first, in the tile
    order's relative order (T-major offsets), then its padding; equal to tile order on divisible canvases."""
    tile_order = geometry.tile_index().view(geometry.num_tiles, -1)
    compact = geometry.compact_tile_index().view(geometry.num_tiles, -1)
    real = geometry.real_tokens_per_tile()
    for i in range(geometry.num_tiles):
        expected = tile_order[i][tile_order[i] >= 0]
        assert len(expected) == real[i]
        assert torch.equal(compact[i, : real[i]], expected)
        assert (compact[i, real[i]:] == -1).all()
    if geometry.is_divisible:
        assert torch.equal(compact, tile_order)
    x = torch.randn(2, geometry.video_len, 3)
    tiled = to_tiles(geometry, x, dim=1, compact=True)
    assert torch.equal(tiled[:, geometry.compact_tile_index() < 0], torch.zeros(2, geometry.padded_len
                                                                                - geometry.video_len, 3))
    assert torch.equal(from_tiles(geometry, tiled, dim=1, compact=True), x)


def test_real_tokens_per_tile_brute_force():
    geometry = Geometry((5, 7, 9), (2, 4, 4))
    counts = (geometry.tile_index() >= 0).view(geometry.num_tiles, -1).sum(1).numpy()
    assert np.array_equal(geometry.real_tokens_per_tile(), counts)


@pytest.mark.parametrize("geometry", [g for g in GEOMETRIES if g.is_divisible] + [Geometry((6, 8, 12), (3, 4, 4))],
                         ids=["even-4x8x8", "6x8x12-t344"])
@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_divisible_reorder_equals_the_tile_index_gather(geometry, dim, seed):
    """Divisible canvases reorder by a strided copy; it must equal gathering by Geometry.tile_index (and its
    inverse), on any dim, for non-contiguous inputs too."""
    d = dim % 4
    shape = [3, 2, 5, 4]
    shape[d] = geometry.video_len
    if d != 3:  # a slice of a wider last dim (or first dim): a non-contiguous input
        x = torch.randn(*shape[:-1], shape[-1] + 1)[..., 1:]
    else:
        x = torch.randn(shape[0] + 1, *shape[1:])[1:].transpose(1, 2).contiguous().transpose(1, 2)
    assert not x.is_contiguous() and tuple(x.shape) == tuple(shape)
    tiled = to_tiles(geometry, x, dim=dim)
    assert torch.equal(tiled, x.index_select(d, geometry.tile_index()))
    assert torch.equal(from_tiles(geometry, tiled, dim=dim), x)
    assert torch.equal(from_tiles(geometry, tiled, dim=dim), tiled.index_select(d, geometry.untile_index()))


@pytest.mark.parametrize("geometry", GEOMETRIES[:3], ids=GEO_IDS[:3])
@pytest.mark.parametrize("window", [(1, 1, 1), (2, 2, 2), (3, 1, 2), (3, 3, 3), (9, 9, 9)],
                         ids=lambda w: "w" + "".join(map(str, w)))
def test_key_tiles_follow_the_spec_formula(geometry, window):
    nt, nh, nw = geometry.grid
    table = geometry.key_tiles(window)
    clipped = geometry.clip_window(window)
    assert table.shape == (geometry.num_tiles, math.prod(clipped))
    for tile, (ct, ch, cw) in enumerate(itertools.product(range(nt), range(nh), range(nw))):
        st, sh, sw = (spec_start(c, w, n) for c, w, n in zip((ct, ch, cw), window, (nt, nh, nw)))
        expected = sorted(
            (kt * nh + kh) * nw + kw
            for kt in range(st, st + clipped[0]) for kh in range(sh, sh + clipped[1]) for kw in range(sw, sw + clipped[2])
        )
        assert table[tile].tolist() == expected


def test_odd_window_start_is_clamped_centre():
    # For odd w the docs/geometry.md start equals the paper's clamp(q, w//2, n-1-w//2) - w//2.
    for n, w in itertools.product(range(1, 12), (1, 3, 5, 7)):
        for q in range(n):
            if w <= n:
                assert spec_start(q, w, n) == min(max(q, w // 2), n - 1 - w // 2) - w // 2
    assert Geometry((12, 8, 8), (6, 8, 8)).window_starts((3, 1, 1))[0].tolist() == [0, 0]


@pytest.mark.parametrize("geometry", GEOMETRIES[:3], ids=GEO_IDS[:3])
@pytest.mark.parametrize("window", [(1, 1, 1), (2, 1, 2), (3, 2, 3), (9, 9, 9)],
                         ids=lambda w: "w" + "".join(map(str, w)))
def test_density_counts_attended_pairs(geometry, window):
    from sta_search.kernels.sta import sta_mask

    mask = sta_mask(geometry.canvas, geometry.tile, torch.tensor([window]))
    assert geometry.density(window) == pytest.approx(mask.double().mean().item(), rel=1e-12)
    assert geometry.tile_density(window) == math.prod(geometry.clip_window(window)) / geometry.num_tiles
    assert geometry.is_full(window) == (mask.all().item())


def test_hunyuan_720p_333_is_91_percent_sparse():
    geometry = Geometry((30, 48, 80), (6, 8, 8))
    assert geometry.grid == (5, 6, 10)
    assert geometry.density((3, 3, 3)) == pytest.approx(0.09)
    assert geometry.density((5, 5, 5)) == pytest.approx(125 / 300)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(canvas=(5, 7, 9), tile=(3, 3, 3)), "multiple of 16"),
        (dict(canvas=(0, 7, 9), tile=(2, 4, 4)), "canvas entries must be >= 1"),
        (dict(canvas=(5, 7), tile=(2, 4, 4)), "canvas must be three integers"),
        (dict(canvas=(5, 7, 9), tile=(2, 4, 0)), "tile entries must be >= 1"),
    ],
    ids=["tile-volume-27", "zero-canvas", "two-axes", "zero-tile"],
)
def test_bad_geometry_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Geometry(**kwargs)


def test_bad_window_raises():
    geometry = Geometry((5, 7, 9), (2, 4, 4))
    with pytest.raises(ValueError, match="window entries must be >= 1"):
        geometry.key_tiles((0, 1, 1))
    assert np.array_equal(geometry.key_tiles((3, 9, 9)), geometry.key_tiles((3, 2, 3)))
