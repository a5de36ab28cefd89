"""The Triton tile-mass pass (under TRITON_INTERPRET=1 on CPU) against the pure-PyTorch reference."""

import math

import os

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


# ------------------------------------------------------------------ dense pass + LSE: kernel chain
def _exact(q, k, v, scale):
    """float64 attention and natural-log lse of unmasked q, k, v, in q's dtype / float32."""
    scores = q.double() @ k.double().transpose(-1, -2) * scale
    return (torch.softmax(scores, -1) @ v.double()).to(q.dtype), torch.logsumexp(scores, -1).float()


@pytest.fixture
def fresh_dense_state(monkeypatch):
    from sta_search.kernels.recall import dense

    monkeypatch.setattr(dense, "UNUSABLE", {})
    monkeypatch.setattr(dense, "_CHECKED", set())
    monkeypatch.setattr(dense, "RUNNERS", dict(dense.RUNNERS))
    return dense


def test_dense_chain_falls_back_once_and_remembers(seed, fresh_dense_state, caplog):
    """cuDNN raising and FlashAttention returning a base-2 lse are both caught by the once-per-process probe;
    the efficient kernel is used, and no rejected kernel is tried again."""
    dense = fresh_dense_state
    calls = {"cudnn": 0, "flash": 0, "efficient": 0}

    def cudnn(q, k, v, scale):
        calls["cudnn"] += 1
        raise RuntimeError("cuDNN Frontend error: no valid engine configs")

    def flash(q, k, v, scale):
        calls["flash"] += 1
        out, lse = _exact(q, k, v, scale)
        return out, lse / math.log(2)  # wrong base

    def efficient(q, k, v, scale):
        calls["efficient"] += 1
        out, lse = _exact(q, k, v, scale)
        padded = torch.full((*lse.shape[:2], 32 * -(-lse.shape[2] // 32)), float("nan"))
        padded[:, :, : lse.shape[2]] = lse
        return out, padded  # padded rows, as memory-efficient attention returns them

    dense.RUNNERS.update(cudnn=cudnn, flash=flash, efficient=efficient)
    q, k, v = (torch.randn(1, 2, 40, 16).to(torch.bfloat16) for _ in range(3))
    with caplog.at_level("INFO", logger="sta_search.kernels"):
        for _ in range(3):
            out, lse = dense.fused_attention_lse(q, k, v, 0.25)
    exp_out, exp_lse = _exact(q, k, v, 0.25)
    torch.testing.assert_close(out, exp_out)
    torch.testing.assert_close(lse, exp_lse)
    assert lse.shape == (1, 2, 40) and lse.dtype == torch.float32
    assert calls == {"cudnn": 1, "flash": 1, "efficient": 1 + 3}  # probes once each, then 3 real calls
    assert dense.chosen_kernel(q) == "efficient"
    assert "no valid engine configs" in caplog.text and "base-2" in caplog.text
    # another head dim is another key: probed afresh
    dense.fused_attention_lse(q[..., :8], k[..., :8], v[..., :8], 0.25)
    assert calls["cudnn"] == 2


def test_dense_chain_takes_a_4d_lse_and_remembers_runtime_failures(seed, fresh_dense_state):
    dense = fresh_dense_state
    big = {"fail": False}

    def cudnn(q, k, v, scale):
        if big["fail"]:
            raise RuntimeError("cuDNN: unsupported sequence length")
        out, lse = _exact(q, k, v, scale)
        return out, lse[..., None]  # (B, H, S, 1), as some PyTorch versions return cuDNN's stats

    dense.RUNNERS.update(cudnn=cudnn, flash=lambda q, k, v, s: _exact(q, k, v, s))
    q, k, v = (torch.randn(2, 3, 24, 16).to(torch.float16) for _ in range(3))
    out, lse = dense.fused_attention_lse(q, k, v, 0.3)
    torch.testing.assert_close(lse, _exact(q, k, v, 0.3)[1])
    assert dense.chosen_kernel(q) == "cudnn"
    big["fail"] = True
    out, lse = dense.fused_attention_lse(q, k, v, 0.3)  # falls back to flash for this and later calls
    torch.testing.assert_close(lse, _exact(q, k, v, 0.3)[1])
    assert dense.chosen_kernel(q) == "flash"
    with pytest.raises(ValueError, match="bf16/fp16"):
        dense.fused_attention_lse(q.float(), k.float(), v.float(), 0.3, kernel="cudnn")


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["auto", "cudnn", "flash", "efficient"])
@pytest.mark.parametrize("text", ["none", "padded_after", "padded_first", "holes"])
def test_cuda_dense_lse_matches_float64(seed, kernel, text):
    """Each dense kernel (and the chain) against float64, d=128 bf16, with and without padded text keys."""
    from sta_search.kernels.recall import chosen_kernel

    canvas, text_len, B, H, D = (2, 8, 24), 77, 2, 3, 128
    S = math.prod(canvas) + (0 if text == "none" else text_len)
    q, k, v = (torch.randn(B, H, S, D, device="cuda").to(torch.bfloat16) for _ in range(3))
    q = q * 1.5
    mask, tl, first = None, 0, False
    if text != "none":
        tl, first = text_len, text == "padded_first"
        mask = torch.zeros(B, text_len, dtype=torch.bool, device="cuda")
        mask[0, :20], mask[1, :64] = True, True  # real tokens first, padding after: the valid keys are one run
        if text == "holes":
            mask = torch.rand(B, text_len, device="cuda") > 0.5
            mask[:, 0] = True
    out, lse = attention_with_lse(q, k, v, text_len=tl, text_first=first, text_mask=mask, kernel=kernel)
    assert lse.shape == (B, H, S) and lse.dtype == torch.float32 and out.shape == q.shape
    bias = torch.zeros(B, 1, 1, S, dtype=torch.float64, device="cuda")
    if mask is not None:
        text_cols = slice(0, tl) if first else slice(S - tl, S)
        bias[:, 0, 0, text_cols] = torch.where(mask, 0.0, float("-inf")).double()
    scores = q.double() @ k.double().transpose(-1, -2) * D**-0.5 + bias
    ref_lse = torch.logsumexp(scores, -1)
    ref_out = torch.softmax(scores, -1) @ v.double()
    assert (lse.double() - ref_lse).abs().max() < 1e-2
    assert (out.double() - ref_out).abs().max() < 2e-2
    if kernel == "auto" and torch.cuda.get_device_capability()[0] >= 9:
        assert chosen_kernel(q) == "cudnn"  # the fast path is the one in use on Hopper


@pytest.mark.parametrize("shape", [(2, 3, 50, 16), (1, 5, 129, 64), (1, 1, 1, 128)], ids=["odd-50x16", "129x64", "one-token"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_squared_distance_triton_against_float64(shape, dtype, device):
    """The profiler's error reduction kernel (CUDA, or the interpreter on CPU) against float64, with odd strides
    (heads-last storage, as attention outputs come back) and without a reference."""
    from sta_search.kernels.recall.distance import squared_distance_triton_ok, squared_distance_triton

    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("CPU tensors need TRITON_INTERPRET=1 (set by conftest only where there is no GPU)")
    torch.manual_seed(int.from_bytes(os.urandom(4), "little"))
    B, H, N, D = shape
    x = torch.randn(B, N, H, D, device=device).to(dtype).transpose(1, 2)  # (B, H, N, D) view of (B, N, H, D)
    ref = (x.float() + 0.01 * torch.randn(B, H, N, D, device=device)).to(dtype)
    assert squared_distance_triton_ok(x, ref)[0]
    expected = (x.double() - ref.double()).square().sum(dim=(-2, -1))
    torch.testing.assert_close(squared_distance_triton(x, ref).double(), expected, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(squared_distance_triton(x, None).double(), x.double().square().sum(dim=(-2, -1)),
                               rtol=1e-5, atol=0)
    ok, why = squared_distance_triton_ok(x.transpose(2, 3), ref)
    assert not ok and "contiguous head dim" in why
