"""The fused dense + tile-mass pass (kernels/recall/gluon_fused.py).

CPU: the row reduction and its scratch layout against ``tile_mass_reference``, from exact per-row sums; the
refusals and the backend resolution. GPU (Hopper, marked ``gpu``): the kernel's mass and dense output against
the float64 references on odd canvases, padding, text before/after with masked keys, batch 2.
"""

from __future__ import annotations

import math

import pytest
import torch

from sta_search.kernels import Geometry, to_tiles
from sta_search.kernels.recall import RECALL_BACKENDS, resolve_recall_backend, tile_mass_reference
from sta_search.kernels.backends import can_run_fused_recall
from sta_search.kernels.recall.gluon_fused import ROW_BLOCK, dense_and_tile_mass, reduce_row_mass
from sta_search.kernels.recall.reference import attention_lse_reference, video_and_text_slices

from kernel_cases import rel_rms

HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)
hopper = pytest.mark.skipif(not HOPPER, reason="needs a Hopper (sm_90) GPU")


def exact_row_values(q, k, geometry, text_len, text_first, text_mask, compact=False):
    """What the kernel writes, from float64 scores: per tile-order query row, log2 of its softmax sum on each key
    tile and on the valid text keys, and over all keys (scaled units: score * scale * log2 e). ``compact``: rows and
    keys in compact tile order."""
    H, S, D = q.shape[1:]
    n, P = geometry.num_tiles, geometry.padded_len
    video, text = video_and_text_slices(geometry.video_len, text_len, text_first)
    q_t = to_tiles(geometry, q[:, :, video].double(), compact=compact)
    k_t = to_tiles(geometry, k[:, :, video].double(), compact=compact)
    s = (q_t @ k_t.transpose(-1, -2))[0] * (D**-0.5 / math.log(2))  # (H, P, P)
    key_valid = (geometry.compact_tile_index() if compact else geometry.tile_index()) >= 0
    s = s.masked_fill(~key_valid[None, None, :], float("-inf"))
    per_tile = torch.logsumexp(s.unflatten(-1, (n, geometry.tile_volume)) * math.log(2), -1) / math.log(2)
    if text_len:
        st = (q_t @ k[:, :, text].double().transpose(-1, -2))[0] * (D**-0.5 / math.log(2))
        if text_mask is not None:
            st = st.masked_fill(~text_mask[0][None, None, :], float("-inf"))
        text_col = torch.logsumexp(st * math.log(2), -1, keepdim=True) / math.log(2)
    else:
        text_col = torch.full((H, P, 1), float("-inf"), dtype=torch.float64)
    rows = torch.cat([per_tile, text_col], -1)  # (H, P, n + 1)
    lse2 = torch.logsumexp(rows * math.log(2), -1) / math.log(2)
    layout = rows.view(H, P // ROW_BLOCK, ROW_BLOCK, n + 1).transpose(-1, -2).contiguous()
    return layout.float(), lse2.float()


CPU_CASES = [
    # id, canvas, tile, heads, text_len, text_first, masked
    ("div-notext", (4, 8, 8), (2, 4, 8), 2, 0, False, False),
    ("pad-text-after-masked", (3, 7, 10), (2, 4, 8), 2, 9, False, True),
    ("pad-text-first", (5, 6, 9), (1, 8, 8), 3, 5, True, False),
]


@pytest.mark.parametrize("layout", ["tile-order", "compact"])
@pytest.mark.parametrize("case", CPU_CASES, ids=[c[0] for c in CPU_CASES])
def test_row_reduction_gives_the_reference_tile_mass(case, layout, seed):
    _, canvas, tile, heads, text_len, text_first, masked = case
    g = Geometry(canvas, tile)
    q, k = (torch.randn(1, heads, g.video_len + text_len, 32) * 2 for _ in range(2))
    mask = None
    if masked:
        mask = torch.rand(1, text_len) > 0.4
        mask[0, 0] = True
    compact = layout == "compact"
    rows, lse2 = exact_row_values(q, k, g, text_len, text_first, mask, compact)
    got = reduce_row_mass(rows, lse2, g, compact)
    ref = tile_mass_reference(q, k, canvas=canvas, tile=tile, text_len=text_len, text_first=text_first,
                              text_mask=mask)[0]
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4, msg=f"seed {seed}")


def test_padding_rows_and_unvisited_blocks_carry_no_mass():
    """Rows of canvas padding (+inf log-sum-exp, zeroed scratch) and padded rows of real blocks add nothing."""
    g = Geometry((3, 4, 8), (2, 4, 8))  # the second t-row of tiles is half padding
    n, P = g.num_tiles, g.padded_len
    rows = torch.zeros(1, P // ROW_BLOCK, n + 1, ROW_BLOCK)
    lse2 = torch.zeros(1, P)
    mass = reduce_row_mass(rows, lse2, g)
    valid = g.key_valid().view(n, -1).sum(-1).float()
    # every row puts exp2(0 - 0) = 1 on each of the n + 1 columns: real rows only are counted
    torch.testing.assert_close(mass[0], valid[:, None].expand(n, n + 1))
    rows = torch.zeros(1, P // ROW_BLOCK, n + 1, ROW_BLOCK)
    mass = reduce_row_mass(rows, torch.full((1, P), float("inf")), g)
    assert (mass == 0).all()


def test_gluon_is_a_recall_backend_that_refuses_without_hopper():
    assert "gluon" in RECALL_BACKENDS
    g = Geometry((6, 8, 8), (6, 8, 8))
    q = torch.zeros(1, 1, g.video_len, 128, dtype=torch.bfloat16)
    ok, why = can_run_fused_recall(q, g)
    assert not ok and "Hopper" in why
    assert resolve_recall_backend("auto", q, g) == "reference"
    with pytest.raises(ValueError, match="gluon recall backend cannot run: needs a Hopper"):
        resolve_recall_backend("gluon", q, g)
    with pytest.raises(ValueError, match="cannot run"):
        dense_and_tile_mass(q, q, q, g)


GPU_CASES = [
    # id, canvas, heads, text_len, text_first, masked, batch, head_dim
    ("div-notext", (12, 16, 16), 2, 0, False, False, 1, 128),
    ("div-text40-after-masked", (12, 16, 16), 3, 40, False, True, 1, 128),
    ("pad-text200-first-b2", (10, 13, 20), 2, 200, True, True, 2, 128),
    ("pad-text130-after-nomask", (9, 17, 11), 2, 130, False, False, 1, 128),
    ("pad-d64-text70-masked", (7, 16, 23), 3, 70, False, True, 1, 64),
]


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("padded", ["boxes", "compact"])
@pytest.mark.parametrize("budget", ["one-head", "all-heads"])
@pytest.mark.parametrize("case", GPU_CASES, ids=[c[0] for c in GPU_CASES])
def test_fused_pass_matches_float64_references(case, budget, padded, seed, monkeypatch):
    """Both paths of padded canvases (``backends.FUSED_RECALL_COMPACT_PADDED``: tile-plane boxes, or compact tile
    order)."""
    from sta_search.kernels import backends

    _, canvas, heads, text_len, text_first, masked, batch, head_dim = case
    if padded == "compact" and canvas == (12, 16, 16):
        pytest.skip("divisible canvas: compact tile order is tile order")
    monkeypatch.setattr(backends, "FUSED_RECALL_COMPACT_PADDED", padded == "compact")
    tile = (6, 8, 8)
    g = Geometry(canvas, tile)
    S = g.video_len + text_len
    q, k, v = (torch.randn(batch, heads, S, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    q = q * 2  # peakier softmax: the per-tile masses differ a lot
    mask = None
    if masked:
        mask = torch.rand(batch, text_len, device="cuda") > 0.3
        mask[:, 0] = True
        mask[:, -1] = False
    out = torch.full_like(q, float("nan"))
    per_head = 4 * g.padded_len * (g.num_tiles + 2)
    out, mass = dense_and_tile_mass(q, k, v, g, text_len=text_len, text_first=text_first, text_mask=mask, out=out,
                                    memory_budget=per_head if budget == "one-head" else 1 << 30)
    qd, kd, vd = (x.double().cpu() for x in (q, k, v))
    mask_cpu = None if mask is None else mask.cpu()
    ref_out, _ = attention_lse_reference(qd, kd, vd, text_len=text_len, text_first=text_first, text_mask=mask_cpu)
    assert rel_rms(out.cpu(), ref_out) < 1e-2, f"seed {seed}"
    ref_mass = tile_mass_reference(qd, kd, canvas=canvas, tile=tile, text_len=text_len, text_first=text_first,
                                   text_mask=mask_cpu).double()
    # masses are sums over up to 384 query rows: compare per query row (the row sums are 1)
    rows = ref_mass.sum(-1, keepdim=True).clamp_min(1)
    err = ((mass.double().cpu() - ref_mass) / rows).abs().max().item()
    assert err < 2e-3, f"seed {seed}: max per-row mass error {err:.3g}"
    torch.testing.assert_close(mass.sum(-1).double().cpu(), ref_mass.sum(-1), rtol=2e-3, atol=1e-3)
