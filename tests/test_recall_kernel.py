"""The Triton tile-mass pass (under TRITON_INTERPRET=1 on CPU) against the pure-PyTorch reference."""

import math

import pytest
import torch
import torch.nn.functional as F

from sta_search.kernels.geometry import Geometry, to_tiles
from sta_search.kernels.recall import attention_with_lse, tile_mass, tile_mass_reference
from sta_search.kernels.sta import sta_mask

CASES = [
    # canvas, tile, text_len, text_first, masked text
    ((4, 4, 8), (2, 2, 4), 0, False, False),   # divisible, no text
    ((3, 5, 6), (2, 2, 4), 10, False, True),   # padded on every axis, text after video with padding mask
    ((3, 4, 4), (1, 4, 4), 7, True, False),    # text first (CogVideoX layout)
]


def _inputs(canvas, text_len, heads=2, batch=2, dim=32, dtype=torch.float32):
    S = math.prod(canvas) + text_len
    # a mix of sharp and flat heads: the scale of q varies per head
    q = torch.randn(batch, heads, S, dim) * torch.linspace(0.5, 3.0, heads).view(1, heads, 1, 1)
    return q.to(dtype), torch.randn(batch, heads, S, dim).to(dtype), torch.randn(batch, heads, S, dim).to(dtype)


def _text_mask(batch, text_len):
    mask = torch.rand(batch, text_len) > 0.4
    mask[:, 0] = True
    return mask


@pytest.mark.parametrize("canvas,tile,text_len,text_first,masked", CASES)
def test_triton_matches_reference(seed, canvas, tile, text_len, text_first, masked):
    q, k, _ = _inputs(canvas, text_len)
    mask = _text_mask(q.shape[0], text_len) if masked else None
    kw = dict(canvas=canvas, tile=tile, text_len=text_len, text_first=text_first, text_mask=mask)
    ref = tile_mass(q, k, backend="reference", **kw)
    tri = tile_mass(q, k, backend="triton", **kw)
    torch.testing.assert_close(tri, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("canvas,tile,text_len,text_first,masked", CASES)
def test_reference_is_the_softmax_mass(seed, canvas, tile, text_len, text_first, masked):
    """Independent of the reference's bookkeeping: a dense softmax, summed with explicit tile masks."""
    q, k, _ = _inputs(canvas, text_len, heads=1, batch=1)
    mask = _text_mask(1, text_len) if masked else None
    g = Geometry(canvas, tile)
    S, V = q.shape[2], g.video_len
    v0 = text_len if text_first else 0
    t0 = 0 if text_first else V
    bias = torch.zeros(S)
    if mask is not None:
        bias[t0:t0 + text_len] = torch.where(mask[0], 0.0, float("-inf"))
    probs = torch.softmax(q[0, 0] @ k[0, 0].T / math.sqrt(q.shape[-1]) + bias, dim=-1)
    video_probs = probs[v0:v0 + V]
    tile_of = torch.empty(V, dtype=torch.long)
    tile_of[g.tile_index()[g.key_valid()]] = torch.nonzero(g.key_valid()).squeeze(1) // g.tile_volume
    expected = torch.zeros(g.num_tiles, g.num_tiles + 1)
    for qi in range(g.num_tiles):
        rows = video_probs[tile_of == qi]
        for ki in range(g.num_tiles):
            expected[qi, ki] = rows[:, v0:v0 + V][:, tile_of == ki].sum()
        expected[qi, -1] = rows[:, t0:t0 + text_len].sum()
    got = tile_mass_reference(q, k, canvas=canvas, tile=tile, text_len=text_len, text_first=text_first,
                              text_mask=mask)[0, 0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # every row carries the whole mass of its real queries
    real = g.key_valid().view(g.num_tiles, g.tile_volume).sum(1).float()
    torch.testing.assert_close(got.sum(1), real, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", [(16, 16, 4, 1, True, False), (32, 16, 4, 1, False, False), (16, 32, 4, 1, True, False)])
def test_triton_loop_variants_and_blocks(seed, config):
    """Both loop structures the CUDA tuner picks from, and query/key blocks smaller than a tile."""
    canvas, tile, text_len = (3, 5, 6), (2, 2, 8), 9  # tile volume 32, padded
    g = Geometry(canvas, tile)
    q, k, _ = _inputs(canvas, text_len, heads=2, batch=1)
    mask = _text_mask(1, text_len)
    ref = tile_mass_reference(q, k, canvas=canvas, tile=tile, text_len=text_len, text_mask=mask)
    _, lse = attention_with_lse(q, k, k, text_len=text_len, text_mask=mask)
    tiled = lambda x: torch.cat([to_tiles(g, x[:, :, : g.video_len]), x[:, :, g.video_len:]], dim=2)
    from sta_search.kernels.recall import tile_mass_triton_tiled

    got = tile_mass_triton_tiled(tiled(q), tiled(k), to_tiles(g, lse[:, :, : g.video_len], dim=-1), g, text_len,
                                 mask, config=config)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_triton_bf16_and_chunked_reference(seed):
    canvas, tile = (2, 8, 8), (2, 4, 4)
    q, k, _ = _inputs(canvas, 0, heads=3, batch=1, dtype=torch.bfloat16)
    ref = tile_mass_reference(q, k, canvas=canvas, tile=tile, chunk_bytes=4096)  # many small chunks
    ref_one = tile_mass_reference(q, k, canvas=canvas, tile=tile)
    torch.testing.assert_close(ref, ref_one, rtol=1e-5, atol=1e-5)
    tri = tile_mass(q, k, canvas=canvas, tile=tile, backend="triton")
    torch.testing.assert_close(tri, ref, rtol=2e-2, atol=2e-2)


def test_attention_with_lse_matches_sdpa(seed):
    canvas, text_len = (2, 4, 4), 6
    q, k, v = _inputs(canvas, text_len, heads=2, batch=2)
    mask = _text_mask(2, text_len)
    out, lse = attention_with_lse(q, k, v, text_len=text_len, text_mask=mask)
    windows = torch.tensor([[9, 9, 9]] * 2)
    full = sta_mask(canvas, (1, 4, 4), windows, text_len, False, mask, batch=2)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=full)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    expected_lse = torch.logsumexp(scores.masked_fill(~full, float("-inf")), dim=-1)
    torch.testing.assert_close(lse, expected_lse, rtol=1e-5, atol=1e-5)


def test_tiled_entry_checks_shapes():
    g = Geometry((2, 4, 4), (1, 4, 4))
    q = torch.randn(1, 1, g.padded_len, 32)
    from sta_search.kernels.recall import tile_mass_triton_tiled

    with pytest.raises(ValueError, match="padded video"):
        tile_mass_triton_tiled(q, q[:, :, :-1], torch.zeros(1, 1, g.padded_len), g)
    with pytest.raises(ValueError, match="must divide the tile volume"):
        tile_mass_triton_tiled(q, q, torch.zeros(1, 1, g.padded_len), g, config=(32, 16, 4, 1, False, False))
    assert to_tiles(g, q[:, :, : g.video_len]).shape == q.shape


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_recall_pass_matches_reference(seed, dtype):
    """The compiled kernel (tuned config) on a real tile (6,8,8), d=128, masked text after the video."""
    canvas, tile, text_len = (6, 20, 24), (6, 8, 8), 77  # padded along h and w
    g = Geometry(canvas, tile)
    q, k, v = (x.cuda() for x in _inputs(canvas, text_len, heads=3, batch=2, dim=128, dtype=dtype))
    mask = _text_mask(2, text_len).cuda()
    out, lse = attention_with_lse(q, k, v, text_len=text_len, text_mask=mask)
    ref_out, ref_lse = attention_with_lse(q.cpu().float(), k.cpu().float(), v.cpu().float(), text_len=text_len,
                                          text_mask=mask.cpu())
    torch.testing.assert_close(lse.cpu(), ref_lse, rtol=1e-2, atol=2e-2)
    torch.testing.assert_close(out.cpu().float(), ref_out, rtol=2e-2, atol=2e-2)
    got = tile_mass(q, k, canvas=canvas, tile=tile, text_len=text_len, text_mask=mask, lse=lse, backend="triton")
    ref = tile_mass_reference(q.cpu(), k.cpu(), canvas=canvas, tile=tile, text_len=text_len, text_mask=mask.cpu())
    per_token = (got.cpu() - ref).abs() / g.tile_volume
    assert per_token.max() < 2e-3
