"""The grouped backend (dense SDPA over gathered window groups) against the float64 dense reference."""

from __future__ import annotations

import pytest
import torch

from sta_search.kernels import Geometry
from sta_search.kernels.sta import normalize_windows, sta_attention
from sta_search.kernels.sta.api import choose_backend
from sta_search.kernels.sta.grouped import group_plan, grouped_cost, sta_grouped
from test_kernel_triton import EVEN, ODD, make_qkv, make_text_mask, reference64, rel_rms

CASES = [
    # id, geometry, heads, windows, text_len, text_first, batch, masked text
    ("odd-w111", ODD, 2, (1, 1, 1), 0, False, 1, False),
    ("odd-w232-text-after-masked", ODD, 2, (2, 3, 2), 7, False, 2, True),
    ("odd-mixed-text-before", ODD, 3, [(1, 2, 3), (3, 1, 1), (2, 2, 2)], 9, True, 1, True),
    ("even-full-window", EVEN, 2, (2, 2, 2), 0, False, 1, False),
    ("even-even-windows-text-unmasked", EVEN, 2, [(2, 1, 2), (1, 2, 1)], 5, False, 2, False),
    ("odd-tile-2x2x4", dict(canvas=(5, 6, 7), tile=(2, 2, 4)), 2, [(3, 2, 2), (1, 3, 3)], 4, True, 1, True),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_grouped_matches_reference(case, seed):
    _, geo, heads, windows, text_len, text_first, batch, masked = case
    geometry = Geometry(**geo)
    q, k, v = make_qkv(batch, heads, geometry.video_len + text_len, 32)
    text_mask = make_text_mask(batch, text_len) if masked else None
    out = sta_attention(q, k, v, **geo, windows=windows, text_len=text_len, text_first=text_first,
                        text_mask=text_mask, backend="grouped")
    ref = reference64(q, k, v, **geo, windows=windows, text_len=text_len, text_first=text_first, text_mask=text_mask)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert rel_rms(out, ref) < 1e-5, f"seed {seed}"


def test_grouped_bf16_and_small_gather_budget(seed):
    """Heads a few at a time (tiny budget) give the same output; bf16 within bf16 tolerance."""
    geometry = Geometry(**ODD)
    windows = normalize_windows([(2, 1, 3), (2, 1, 3), (1, 2, 2)], 3)
    q, k, v = make_qkv(1, 3, geometry.video_len + 6, 32)
    mask = make_text_mask(1, 6)
    whole = sta_grouped(q, k, v, geometry, windows, 6, False, mask, None)
    chunked = sta_grouped(q, k, v, geometry, windows, 6, False, mask, None, gather_budget_bytes=1)
    assert torch.equal(whole, chunked)
    strided = [x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v)]  # (B, S, H, D) storage
    assert torch.equal(sta_grouped(*strided, geometry, windows, 6, False, mask, None), whole)
    half = sta_grouped(*(x.bfloat16() for x in (q, k, v)), geometry, windows, 6, False, mask, None)
    assert rel_rms(half, whole) < 2e-2


def test_group_plan_covers_every_query_once():
    geometry = Geometry(canvas=(30, 48, 80), tile=(6, 8, 8))
    for window in [(5, 5, 5), (3, 3, 3), (1, 6, 10)]:
        plan = group_plan(geometry, window)
        queries = torch.cat([qi.reshape(-1) for qi, _ in plan])
        assert torch.equal(queries.sort().values, torch.arange(geometry.video_len))
        groups = sum(qi.shape[0] for qi, _ in plan)
        expected = 1
        for n, w in zip(geometry.grid, geometry.clip_window(window)):
            expected *= n - w + 1
        assert groups == expected
    assert sum(qi.shape[0] for qi, _ in group_plan(geometry, (5, 5, 5))) == 12


def test_auto_rule_prefers_grouped_only_for_large_windows():
    """The cost model: (5,5,5) at hunyuan-720p is grouped (12 groups/head), (3,3,3) stays on Triton."""
    geometry = Geometry(canvas=(30, 48, 80), tile=(6, 8, 8))
    large = grouped_cost(geometry, [(5, 5, 5)] * 24, 256, 128, 2)
    small = grouped_cost(geometry, [(3, 3, 3)] * 24, 256, 128, 2)
    assert large["grouped_s"] < 0.9 * large["triton_s"]
    assert small["grouped_s"] > small["triton_s"]
    # The rule only decides on CUDA; CPU tensors keep the CPU choice.
    assert choose_backend(torch.empty(1, 24, 8, 128), geometry, normalize_windows((5, 5, 5), 24), 256)[0] == "reference"


@pytest.mark.gpu
@pytest.mark.parametrize("window", [(5, 5, 5), (3, 3, 3)], ids=["555", "333"])
def test_grouped_matches_triton_at_hunyuan_720p(window, seed):
    """bf16 on the GPU, 256 text tokens of which 56 padded: both backends agree within bf16 tolerance."""
    geo = dict(canvas=(30, 48, 80), tile=(6, 8, 8))
    q, k, v = (torch.randn(1, 24, 115_200 + 256, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    mask = torch.ones(1, 256, dtype=torch.bool, device="cuda")
    mask[:, 200:] = False
    kwargs = dict(**geo, windows=window, text_len=256, text_mask=mask)
    grouped = sta_attention(q, k, v, **kwargs, backend="grouped")
    triton = sta_attention(q, k, v, **kwargs, backend="triton")
    assert rel_rms(grouped, triton) < 1e-2, f"seed {seed}"
