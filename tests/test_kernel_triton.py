"""The Triton STA kernel against the dense reference (CPU: Triton interpreter; GPU-marked: H100 shapes).

Shapes are small because the interpreter runs every program in Python: the cost is about
batch * heads * query tiles * window tiles loop trips.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sta_search.kernels import Geometry, from_tiles, to_tiles
from sta_search.kernels.sta import normalize_windows, sta_attention, sta_attention_tiled, sta_reference
from sta_search.kernels.sta.triton_fwd import KernelConfig, sta_triton_natural, sta_triton_tiled

from kernel_cases import model_shape_case, rel_rms

ODD = dict(canvas=(5, 7, 9), tile=(2, 4, 4))  # grid (3, 2, 3), padding on every axis
EVEN = dict(canvas=(4, 8, 8), tile=(2, 4, 4))  # grid (2, 2, 2), divisible


def reference64(q, k, v, *, canvas, tile, windows, text_len=0, text_first=False, text_mask=None, scale=None):
    """The dense masked reference in float64."""
    return sta_reference(q.double(), k.double(), v.double(), canvas=canvas, tile=tile,
                         windows=normalize_windows(windows, q.shape[1]), text_len=text_len, text_first=text_first,
                         text_mask=text_mask, scale=scale)


def make_qkv(batch, heads, tokens, head_dim, dtype=torch.float32):
    return [torch.randn(batch, heads, tokens, head_dim).to(dtype) for _ in range(3)]


def make_text_mask(batch, text_len):
    mask = torch.rand(batch, text_len) > 0.3
    mask[:, 0] = True  # at least one real text key per row (models always have the start token)
    mask[:, -1] = False  # and at least one padded one
    return mask


CASES = [
    # id, geometry, heads, windows, text_len, text_first, batch, head_dim
    ("odd-w111", ODD, 2, (1, 1, 1), 0, False, 1, 32),
    ("odd-w212-even", ODD, 2, (2, 1, 2), 0, False, 1, 64),
    ("odd-w323-full", ODD, 1, (3, 2, 3), 0, False, 1, 32),
    ("odd-w999-overfull", ODD, 1, (9, 9, 9), 0, False, 1, 32),
    ("odd-mixed-heads", ODD, 3, [(1, 1, 1), (2, 2, 2), (3, 1, 2)], 0, False, 1, 32),
    ("odd-text-after-masked-b2", ODD, 2, [(1, 2, 1), (2, 1, 3)], 24, False, 2, 32),
    ("odd-text-before-masked", ODD, 2, (2, 1, 2), 19, True, 1, 64),
    ("even-w122-b2", EVEN, 2, (1, 2, 2), 0, False, 2, 32),
    ("even-mixed-text-after", EVEN, 2, [(1, 1, 2), (2, 2, 1)], 40, False, 1, 128),
    ("even-text-before-nomask", EVEN, 1, (1, 2, 1), 16, True, 1, 32),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_triton_fp32_matches_reference(case, seed):
    _, geo, heads, windows, text_len, text_first, batch, head_dim = case
    S = math.prod(geo["canvas"]) + text_len
    q, k, v = make_qkv(batch, heads, S, head_dim)
    text_mask = make_text_mask(batch, text_len) if text_len and case[0] != "even-text-before-nomask" else None
    kw = dict(**geo, windows=windows, text_len=text_len, text_first=text_first, text_mask=text_mask)
    out = sta_attention(q, k, v, **kw, backend="triton")
    ref = reference64(q, k, v, **kw)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert rel_rms(out, ref) < 1e-5, f"seed {seed}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_triton_half_precision_matches_fp32_reference(dtype, seed):
    heads, text_len = 2, 20
    S = math.prod(ODD["canvas"]) + text_len
    q, k, v = make_qkv(2, heads, S, 64, dtype)
    kw = dict(**ODD, windows=[(2, 1, 2), (1, 2, 3)], text_len=text_len, text_mask=make_text_mask(2, text_len))
    out = sta_attention(q, k, v, **kw, backend="triton")
    ref = sta_attention(q.float(), k.float(), v.float(), **kw, backend="reference")
    assert out.dtype == dtype
    assert rel_rms(out, ref) < 2e-2, f"seed {seed}"


def test_full_window_equals_plain_sdpa(seed):
    heads, text_len = 2, 16
    S = math.prod(ODD["canvas"]) + text_len
    q, k, v = make_qkv(1, heads, S, 32)
    out = sta_attention(q, k, v, **ODD, windows=(3, 2, 3), text_len=text_len, backend="triton")
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    assert rel_rms(out, ref) < 1e-5, f"seed {seed}"


def test_one_tile_window_equals_block_diagonal_attention(seed):
    geometry = Geometry(**EVEN)
    heads = 2
    q, k, v = make_qkv(2, heads, geometry.video_len, 32)
    out = sta_attention(q, k, v, **EVEN, windows=(1, 1, 1), backend="triton")
    # Independently: gather each tile's tokens with explicit coordinates, attend inside the tile only.
    (T, H, W), (tt, th, tw) = geometry.canvas, geometry.tile
    t, h, w = torch.meshgrid(torch.arange(T), torch.arange(H), torch.arange(W), indexing="ij")
    tile_id = ((t // tt) * (H // th) + h // th) * (W // tw) + w // tw
    ref = torch.empty(q.shape, dtype=torch.float64)
    for tile in range(geometry.num_tiles):
        idx = torch.nonzero(tile_id.reshape(-1) == tile).squeeze(1)
        assert idx.numel() == geometry.tile_volume
        ref[:, :, idx] = F.scaled_dot_product_attention(*(x[:, :, idx].double() for x in (q, k, v)))
    assert rel_rms(out, ref) < 1e-5, f"seed {seed}"


@pytest.mark.parametrize("text_len", [0, 21], ids=["video-only", "text-21"])
def test_every_output_element_is_written(text_len, seed):
    """Poison a preallocated output with NaN; every element, padded video rows too, must come back finite."""
    geometry = Geometry(**ODD)
    heads = 2
    S = geometry.padded_len + text_len
    q, k, v = make_qkv(2, heads, S, 32)
    windows = normalize_windows([(1, 2, 2), (2, 1, 1)], heads)
    text_mask = make_text_mask(2, text_len) if text_len else None
    out = torch.full_like(q, float("nan"))
    result = sta_triton_tiled(q, k, v, geometry, windows, text_len, text_mask, None, out=out)
    assert result is out
    assert torch.isfinite(out).all()
    # The real rows equal the reference computed on the untiled real tokens.
    natural = [torch.cat([from_tiles(geometry, x[:, :, : geometry.padded_len]), x[:, :, geometry.padded_len:]], 2)
               for x in (q, k, v)]
    ref = sta_reference(*(x.double() for x in natural), canvas=geometry.canvas, tile=geometry.tile, windows=windows,
                        text_len=text_len, text_mask=text_mask)
    got = torch.cat([from_tiles(geometry, out[:, :, : geometry.padded_len]), out[:, :, geometry.padded_len:]], 2)
    assert rel_rms(got, ref) < 1e-5, f"seed {seed}"


def test_padded_key_tokens_are_never_attended(seed):
    """Garbage (huge) values in padded key/value positions must not change the output."""
    geometry = Geometry(**ODD)
    q, k, v = make_qkv(1, 1, geometry.padded_len, 32)
    windows = normalize_windows((2, 2, 2), 1)
    pad = ~geometry.key_valid()
    clean = sta_triton_tiled(q, k, v, geometry, windows, 0, None, None)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, pad] = 1e4
    v2[:, :, pad] = 1e6
    dirty = sta_triton_tiled(q, k2, v2, geometry, windows, 0, None, None)
    valid = geometry.key_valid()
    assert torch.equal(clean[:, :, valid], dirty[:, :, valid])


def test_tiled_entry_agrees_with_natural_entry(seed):
    geometry = Geometry(**ODD)
    text_len = 9
    q, k, v = make_qkv(1, 2, geometry.video_len + text_len, 32)
    text_mask = make_text_mask(1, text_len)
    kw = dict(windows=[(1, 1, 2), (3, 1, 1)], text_len=text_len, text_mask=text_mask)
    natural = sta_attention(q, k, v, **ODD, **kw, backend="triton")
    tiled_in = [torch.cat([to_tiles(geometry, x[:, :, : geometry.video_len]), x[:, :, geometry.video_len:]], 2)
                for x in (q, k, v)]
    tiled = sta_attention_tiled(*tiled_in, geometry=geometry, **kw, backend="triton")
    # ODD is a padded canvas: off TMA the natural entry runs compact tile order (the same keys, summed in another
    # order within a block), so the two agree to float32 rounding, not bit for bit
    assert not geometry.is_divisible
    torch.testing.assert_close(from_tiles(geometry, tiled[:, :, : geometry.padded_len]),
                               natural[:, :, : geometry.video_len], rtol=1e-5, atol=1e-6, msg=f"seed {seed}")
    torch.testing.assert_close(tiled[:, :, geometry.padded_len:], natural[:, :, geometry.video_len:], rtol=1e-5,
                               atol=1e-6, msg=f"seed {seed}")


COMPACT_CASES = [
    # id, canvas, tile, windows, text_len, text_first
    ("odd-mixed-text-after", (5, 7, 9), (2, 4, 4), [(1, 1, 2), (3, 1, 1)], 9, False),
    ("t144-text-first", (3, 5, 6), (1, 4, 4), [(1, 2, 2), (3, 3, 3)], 7, True),
    ("full-window-no-text", (3, 5, 7), (2, 4, 4), [(9, 9, 9), (1, 1, 1)], 0, False),
]


@pytest.mark.parametrize("case", COMPACT_CASES, ids=[c[0] for c in COMPACT_CASES])
def test_compact_tile_order_matches_reference(case, seed):
    """Padded canvases through compact tile order (each tile's real tokens first; the kernel skips all-padding
    blocks and masks only a border tile's last real key block): against the dense reference, with masked text keys
    before or after the video, mixed windows, a given ``out`` on a (B, S, H, D) view poisoned first."""
    from sta_search.kernels.sta.triton_fwd import sta_triton_compact

    _, canvas, tile, windows, text_len, text_first = case
    geometry = Geometry(canvas, tile)
    q, k, v = make_qkv(2, 2, geometry.video_len + text_len, 32)
    text_mask = make_text_mask(2, text_len) if text_len else None
    table = normalize_windows(windows, 2)
    ref = sta_reference(q, k, v, canvas=canvas, tile=tile, windows=table, text_len=text_len, text_first=text_first,
                        text_mask=text_mask)
    out = torch.full((2, q.shape[2], 2, 32), float("nan")).transpose(1, 2)
    got = sta_triton_compact(q, k, v, geometry, table, text_len, text_first, text_mask, None, out=out)
    assert got is out and not out.isnan().any()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5, msg=f"seed {seed}")


def test_smaller_blocks_than_tile_agree(seed):
    """Several query and key blocks per tile (what the GPU configs do for 384-token tiles)."""
    geometry = Geometry(canvas=(3, 7, 9), tile=(2, 4, 4))
    text_len = 5
    q, k, v = make_qkv(1, 2, geometry.padded_len + text_len, 32)
    windows = normalize_windows([(1, 2, 2), (2, 1, 3)], 2)
    text_mask = make_text_mask(1, text_len)
    whole = sta_triton_tiled(q, k, v, geometry, windows, text_len, text_mask, 0.3)
    split = sta_triton_tiled(q, k, v, geometry, windows, text_len, text_mask, 0.3,
                             config=KernelConfig(block_m=16, block_n=16, num_warps=4, num_stages=1))
    real = torch.cat([geometry.key_valid(), torch.ones(text_len, dtype=torch.bool)])  # padded rows: unspecified
    assert torch.isfinite(split).all()
    assert rel_rms(split[:, :, real], whole[:, :, real]) < 1e-6


def test_descriptor_loads_and_strided_inputs_agree(seed):
    """The TMA-descriptor path (and warp-specialize flag) on inputs in a transposed (B, S, H, D) layout."""
    geometry = Geometry(**ODD)
    text_len = 7
    q, k, v = (x.transpose(1, 2).contiguous().transpose(1, 2)
               for x in make_qkv(1, 2, geometry.padded_len + text_len, 32))
    windows = normalize_windows([(1, 2, 2), (2, 1, 3)], 2)
    text_mask = make_text_mask(1, text_len)
    plain = sta_triton_tiled(q, k, v, geometry, windows, text_len, text_mask, None)
    tma = sta_triton_tiled(q, k, v, geometry, windows, text_len, text_mask, None,
                           config=KernelConfig(32, 32, 4, 1, tma=True, warp_specialize=True))
    assert torch.equal(plain, tma)
    text_tma = sta_triton_tiled(q, k, v, geometry, windows, text_len, text_mask, None,
                                config=KernelConfig(32, 32, 4, 1, tma=True, text_tma=True))
    assert torch.equal(plain, text_tma)
    text_first = sta_triton_tiled(q, k, v, geometry, windows, text_len, text_mask, None,
                                  config=KernelConfig(32, 32, 4, 1, tma=True, text_tma=True, text_before=True))
    assert rel_rms(text_first, plain) < 1e-6  # same sums in another order


NATURAL_CASES = [
    # id, geometry, windows, text_len, text_first, config (block_m, block_n, how text blocks are loaded)
    ("odd-text-after", ODD, [(1, 2, 2), (2, 1, 3)], 7, False, dict(block_m=32, block_n=16)),
    ("odd-text-before-16x32", ODD, [(3, 1, 1), (1, 1, 2)], 9, True, dict(block_m=16, block_n=32)),
    ("even-text-after-32x32", EVEN, [(1, 2, 1), (2, 2, 2)], 5, False, dict(block_m=32, block_n=32)),
    ("odd-text-before-text-tma", ODD, [(2, 2, 1), (1, 3, 2)], 9, True, dict(block_m=32, block_n=16, text_tma=True)),
    ("odd-text-after-text-tma-first", ODD, [(1, 2, 3), (3, 1, 1)], 37, False,
     dict(block_m=32, block_n=16, text_tma=True, text_before=True)),
    ("even-text-before-text-tma-first", EVEN, [(1, 2, 1), (3, 1, 2)], 37, True,
     dict(block_m=32, block_n=32, text_tma=True, text_before=True)),
]


@pytest.mark.parametrize("case", NATURAL_CASES, ids=[c[0] for c in NATURAL_CASES])
def test_natural_layout_kernel_matches_reference(case, seed):
    """The in-place path: TMA boxes of tile planes straight from the natural layout, NaN-poisoned output."""
    _, geo, windows, text_len, text_first, launch = case
    geometry = Geometry(**geo)
    batch = 2 if geo is EVEN else 1
    q, k, v = make_qkv(batch, 2, geometry.video_len + text_len, 32)
    text_mask = make_text_mask(batch, text_len) if text_len else None
    if launch.get("text_before") and text_mask is not None:
        text_mask[0] = False  # no valid text key at all: the first (text) steps must add exact zeros, not NaN
    table = normalize_windows(windows, 2)
    out = torch.full_like(q, float("nan"))
    config = KernelConfig(num_warps=4, num_stages=1, tma=True, warp_specialize=True, **launch)
    got = sta_triton_natural(q, k, v, geometry, table, text_len, text_first, text_mask, None, out=out, config=config)
    assert got is out
    ref = reference64(q, k, v, **geo, windows=windows, text_len=text_len, text_first=text_first, text_mask=text_mask)
    assert rel_rms(out, ref) < 1e-5, f"seed {seed}"
    # Exactly what the tile-order kernel computes with the same blocks.
    tiled_in = [torch.cat([to_tiles(geometry, x[:, :, : geometry.video_len]), x[:, :, geometry.video_len:]], 2)
                if not text_first else
                torch.cat([to_tiles(geometry, x[:, :, text_len:]), x[:, :, :text_len]], 2) for x in (q, k, v)]
    tiled = sta_triton_tiled(*tiled_in, geometry, table, text_len, text_mask, None, config=config)
    video = from_tiles(geometry, tiled[:, :, : geometry.padded_len])
    text = tiled[:, :, geometry.padded_len:]
    assert torch.equal(torch.cat([text, video] if text_first else [video, text], 2), out)


def test_natural_layout_declines_what_it_cannot_box():
    geometry = Geometry(canvas=(4, 8, 16), tile=(1, 4, 16))  # plane 64 > block 32; divisible (padded: compact)
    q, k, v = make_qkv(1, 1, geometry.video_len, 32)
    table = normalize_windows((1, 1, 1), 1)
    assert sta_triton_natural(q, k, v, geometry, table, 0, False, None, None,
                              config=KernelConfig(32, 32, 4, 1, tma=True)) is None
    assert sta_triton_natural(q, k, v, geometry, table, 0, False, None, None,
                              config=KernelConfig(64, 64, 4, 1, tma=False)) is None


def test_block_sizes_must_divide_tile_volume():
    geometry = Geometry(canvas=(2, 4, 4), tile=(2, 4, 4))
    q, k, v = make_qkv(1, 1, geometry.padded_len, 32)
    with pytest.raises(ValueError, match="divide the tile volume 32"):
        sta_triton_tiled(q, k, v, geometry, normalize_windows((1, 1, 1), 1), 0, None, None,
                         config=KernelConfig(block_m=64, block_n=32, num_warps=4, num_stages=1))


@pytest.mark.parametrize("head_dim", [16, 96])
def test_unsupported_head_dim_is_named(head_dim):
    geometry = Geometry(canvas=(2, 4, 4), tile=(2, 4, 4))
    q, k, v = make_qkv(1, 1, geometry.padded_len, head_dim)
    with pytest.raises(ValueError, match=f"head dim {head_dim}"):
        sta_triton_tiled(q, k, v, geometry, normalize_windows((1, 1, 1), 1), 0, None, None)


# ----------------------------------------------------------------------------------------------- GPU
HUNYUAN_720P = dict(canvas=(30, 48, 80), tile=(6, 8, 8))


@pytest.mark.gpu
@pytest.mark.parametrize("case", ["hunyuan-720p-333", "hunyuan-720p-mixed", "hunyuan-720p-333-text256",
                                  "wan-480p-333"])
def test_triton_matches_flex_at_model_shapes(case, seed):
    """GPU check at model shapes (docs/targets.md; bf16, d=128): the natural-order path, the tile-order path and flex agree."""
    geometry, (q, k, v), kw = model_shape_case(case)
    table, text_len, text_mask = kw["windows"], kw["text_len"], kw["text_mask"]
    natural = sta_attention(q, k, v, **kw, backend="triton")
    flex = sta_attention(q, k, v, **kw, backend="flex")
    error = rel_rms(natural, flex)
    print(f"{case}: triton vs flex rel RMS {error:.3e}")
    assert error < 1e-2, f"seed {seed}"
    tiled_in = [torch.cat([to_tiles(geometry, x[:, :, : geometry.video_len]), x[:, :, geometry.video_len:]], 2)
                for x in (q, k, v)]
    tiled = sta_attention_tiled(*tiled_in, geometry=geometry, windows=table, text_len=text_len, text_mask=text_mask,
                                backend="triton")
    assert torch.equal(from_tiles(geometry, tiled[:, :, : geometry.padded_len]), natural[:, :, : geometry.video_len])
