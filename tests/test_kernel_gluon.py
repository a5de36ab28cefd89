"""The warp-specialized Gluon kernel (Hopper only): against the float64 reference, the Triton kernel and flex.

On machines without an sm_90 GPU only the refusal tests run; the GPU tests are marked ``gpu``.
"""

from __future__ import annotations

import pytest
import torch

from sta_search.kernels import Geometry, to_tiles
from sta_search.kernels.sta import normalize_windows, sta_attention, sta_reference
from sta_search.kernels.backends import can_run_gluon

from kernel_cases import TILE, float64_reference, model_shape_case, natural_order, rel_rms, tile_order

HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)
hopper = pytest.mark.skipif(not HOPPER, reason="needs a Hopper (sm_90) GPU")

# Relative RMS error against the float64 reference, per dtype (bf16/fp16 inputs, fp32 softmax and accumulators;
# P is rounded to the input dtype before the PV product, as in every FlashAttention-style kernel).
TOLERANCE = {torch.bfloat16: 1e-2, torch.float16: 2e-3}

CASES = [
    # id, canvas, heads, windows, text_len, text_first, masked text, batch
    ("div-333", (12, 16, 16), 2, (3, 3, 3), 0, False, False, 1),
    ("div-mixed-text40-after", (12, 16, 16), 3, [(1, 1, 1), (2, 2, 2), (1, 2, 1)], 40, False, True, 1),
    ("pad-mixed", (10, 13, 20), 3, [(1, 1, 1), (2, 2, 3), (2, 1, 2)], 0, False, False, 1),
    ("pad-text200-first-b2", (10, 13, 20), 2, [(2, 2, 2), (1, 2, 3)], 200, True, True, 2),
    ("pad-text130-after-nomask", (9, 17, 11), 2, (1, 3, 2), 130, False, False, 1),
    ("div-text256-full", (12, 16, 16), 2, (9, 9, 9), 256, False, True, 1),
]


def make_case(canvas, heads, text_len, masked, batch, dtype, head_dim=128):
    q, k, v = (torch.randn(batch, heads, Geometry(canvas, TILE).video_len + text_len, head_dim, device="cuda",
                           dtype=dtype) for _ in range(3))
    mask = None
    if masked:
        mask = torch.rand(batch, text_len, device="cuda") > 0.3
        mask[:, 0] = True  # at least one real text key (models always have the start token)
        mask[:, -1] = False
    return q, k, v, mask


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("head_dim", [128, 64], ids=["d128", "d64"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_gluon_matches_float64_reference_in_both_layouts(case, dtype, head_dim, seed):
    _, canvas, heads, windows, text_len, text_first, masked, batch = case
    geometry = Geometry(canvas, TILE)
    q, k, v, mask = make_case(canvas, heads, text_len, masked, batch, dtype, head_dim)
    kw = dict(canvas=canvas, tile=TILE, windows=windows, text_len=text_len, text_first=text_first, text_mask=mask)
    ref = sta_reference(q.double(), k.double(), v.double(), **{**kw, "windows": normalize_windows(windows, heads)})
    natural = sta_attention(q, k, v, **kw, backend="gluon")
    assert rel_rms(natural, ref) < TOLERANCE[dtype], f"seed {seed}"

    # Tile order, output poisoned first: every real row must be written, and equal the in-place result.
    tiled_in = [tile_order(geometry, x, text_len, text_first) for x in (q, k, v)]
    from sta_search.kernels.sta.gluon_fwd import sta_gluon_tiled

    out = torch.full_like(tiled_in[0], float("nan"))
    sta_gluon_tiled(*tiled_in, geometry, normalize_windows(windows, heads), text_len, mask, None, out=out)
    tiled_result = natural_order(geometry, out, text_len, text_first)
    if geometry.is_divisible:  # the same blocks in the same order: bit-identical
        assert torch.equal(tiled_result, natural)
    else:  # padded canvases: the natural entry runs compact tile order (tokens in another order within a block)
        assert rel_rms(tiled_result, ref) < TOLERANCE[dtype], f"seed {seed}"


COMPACT_CASES = [
    # id, canvas, tile, heads, windows, text_len, text_first, masked text, batch
    ("t688-pad-all-axes", (10, 13, 20), (6, 8, 8), 3, [(1, 1, 1), (2, 2, 3), (2, 1, 2)], 0, False, False, 1),
    ("t688-wan480p-like-text-after", (7, 11, 13), (6, 8, 8), 2, [(2, 2, 2), (1, 1, 2)], 77, False, True, 1),
    ("t288-text-first-b2", (5, 9, 21), (2, 8, 8), 2, [(3, 1, 3), (1, 2, 1)], 130, True, True, 2),
    ("t488-one-short-plane", (9, 8, 17), (4, 8, 8), 2, (2, 1, 2), 0, False, False, 1),
    ("t3168-no-boxes", (7, 20, 12), (3, 16, 8), 2, [(3, 2, 2), (1, 1, 1)], 64, False, False, 1),
    ("t688-full-window", (8, 9, 10), (6, 8, 8), 1, (9, 9, 9), 40, False, True, 1),
]


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("head_dim", [128, 64], ids=["d128", "d64"])
@pytest.mark.parametrize("case", COMPACT_CASES, ids=[c[0] for c in COMPACT_CASES])
def test_gluon_compact_tile_order_matches_float64_reference(case, head_dim, seed):
    """Padded canvases in compact tile order (real tokens first in each tile: partial border tiles, all-padding
    blocks skipped): odd canvases padded on every axis, tiles of 1 to 3 key blocks, text before and after with
    masked keys, batch 2, mixed windows, output poisoned first; also against the in-place boxes path."""
    from sta_search.kernels.backends import gluon_reads_tile_planes
    from sta_search.kernels.sta.gluon_fwd import sta_gluon_natural

    _, canvas, tile, heads, windows, text_len, text_first, masked, batch = case
    geometry = Geometry(canvas, tile)
    assert not geometry.is_divisible
    q, k, v, mask = make_case(canvas, heads, text_len, masked, batch, torch.bfloat16, head_dim)
    table = normalize_windows(windows, heads, device="cuda")
    ref = sta_reference(q.double(), k.double(), v.double(), canvas=canvas, tile=tile, windows=table.cpu(),
                        text_len=text_len, text_first=text_first, text_mask=mask)
    out = torch.full_like(q, float("nan"))
    compact = sta_gluon_natural(q, k, v, geometry, table, text_len, text_first, mask, None, out=out, padded="compact")
    assert compact is out and not out.isnan().any()
    assert rel_rms(compact, ref) < TOLERANCE[torch.bfloat16], f"seed {seed}"
    if gluon_reads_tile_planes(geometry)[0]:
        boxes = sta_gluon_natural(q, k, v, geometry, table, text_len, text_first, mask, None, padded="in-place")
        assert rel_rms(compact, boxes) < TOLERANCE[torch.bfloat16], f"seed {seed}"


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("case", ["hunyuan-720p-mixed-text256", "wan-480p-333"])
def test_gluon_matches_triton_and_flex_at_model_shapes(case, seed):
    _, (q, k, v), kw = model_shape_case(case)
    gluon = sta_attention(q, k, v, **kw, backend="gluon")
    flex = sta_attention(q, k, v, **kw, backend="flex")
    triton = sta_attention(q, k, v, **kw, backend="triton")
    print(f"{case}: gluon vs flex {rel_rms(gluon, flex):.2e}, vs triton {rel_rms(gluon, triton):.2e}")
    assert rel_rms(gluon, flex) < 1e-2, f"seed {seed}"
    assert rel_rms(gluon, triton) < 1e-2, f"seed {seed}"


def test_gluon_refusals_name_the_reason():
    geometry = Geometry((12, 16, 16), TILE)
    q = torch.zeros(1, 2, geometry.video_len, 128)
    ok, why = can_run_gluon(q, geometry, "natural")
    assert not ok and ("Hopper" in why or "Gluon" in why)
    with pytest.raises(ValueError, match="backend 'gluon' cannot run"):
        sta_attention(q, q, q, canvas=(12, 16, 16), tile=TILE, windows=(1, 1, 1), backend="gluon")


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("what", ["fp32", "head-dim-96", "head-dim-32", "tile-volume-96"])
def test_gluon_refuses_what_it_cannot_run_on_hopper(what):
    tile = (6, 4, 4) if what == "tile-volume-96" else TILE
    geometry = Geometry((12, 16, 16), tile)
    head_dim = int(what.rsplit("-", 1)[1]) if what.startswith("head-dim") else 128
    q = torch.zeros(1, 2, geometry.video_len, head_dim, device="cuda",
                    dtype=torch.float32 if what == "fp32" else torch.bfloat16)
    ok, why = can_run_gluon(q, geometry, "natural")
    assert not ok and {"fp32": "dtype", "tile-volume-96": "tile volume"}.get(what, "head dim") in why


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("head_dim", [64, 128])
def test_gluon_is_auto_for_its_head_dims_on_hopper(head_dim):
    from sta_search.kernels.backends import choose_backend

    geometry = Geometry((12, 16, 16), TILE)
    q = torch.zeros(1, 2, geometry.video_len, head_dim, device="cuda", dtype=torch.bfloat16)
    assert choose_backend(q, geometry, "natural")[0] == "gluon"


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("stages", [2, 6])
def test_gluon_d64_ring_depth_does_not_change_the_result(stages, seed):
    """Every K/V ring depth that fits gives the same sums (same blocks, same order): bit-identical outputs."""
    from sta_search.kernels.sta.gluon_fwd import sta_gluon_natural

    canvas, heads, windows, text_len = (10, 13, 20), 3, [(1, 1, 1), (2, 2, 3), (2, 1, 2)], 100
    geometry = Geometry(canvas, TILE)
    q, k, v, mask = make_case(canvas, heads, text_len, True, 1, torch.bfloat16, 64)
    table = normalize_windows(windows, heads, device="cuda")
    run = lambda n: sta_gluon_natural(q, k, v, geometry, table, text_len, False, mask, None, stages=n)  # noqa: E731
    assert torch.equal(run(stages), run(None))


def test_gluon_head_dims_have_a_ring_depth_that_fits_and_deeper_rings_are_refused(monkeypatch):
    """Host logic only (runs anywhere): every head dim the backend admits has a default K/V ring depth within the
    227 KB of shared memory an sm_90 block may use; a deeper ring is refused before any launch."""
    from sta_search.kernels.backends import GLUON_HEAD_DIMS
    from sta_search.kernels.sta import gluon_fwd

    assert set(gluon_fwd.DEFAULT_STAGES) == set(GLUON_HEAD_DIMS)
    monkeypatch.setattr(gluon_fwd, "_inputs_ok", lambda q, geometry: (True, "ok"))
    geometry = Geometry((6, 8, 8), TILE)
    for head_dim, too_deep in ((64, 7), (128, 4)):
        q = torch.zeros(1, 1, geometry.video_len, head_dim, dtype=torch.bfloat16)
        ring = gluon_fwd.DEFAULT_STAGES[head_dim]
        assert (2 * gluon_fwd.QUERY_ROWS + 2 * ring * gluon_fwd.BLOCK_N) * head_dim * 2 <= gluon_fwd.SMEM_LIMIT
        with pytest.raises(ValueError, match="shared memory"):
            gluon_fwd.sta_gluon_natural(q, q, q, geometry, torch.ones(1, 3, dtype=torch.int32), 0, False, None, None,
                                        stages=too_deep)


# Cases of the switch tests (ping-pong, lazy rescaling, row sums on the tensor core): CASES and three compact ones.
SWITCH_CASES = CASES + [c[:2] + c[3:] for c in COMPACT_CASES[:3]]
SWITCH_IDS = [c[0] for c in CASES] + [c[0] for c in COMPACT_CASES[:3]]


def switch_case(case, head_dim):
    """bf16 inputs of a SWITCH_CASES entry and sta_attention's keyword arguments (the compact cases' own tile)."""
    _, canvas, heads, windows, text_len, text_first, masked, batch = case
    tile = next((c[2] for c in COMPACT_CASES if c[0] == case[0]), TILE)
    q, k, v, mask = make_case(canvas, heads, text_len, masked, batch, torch.bfloat16, head_dim)
    kw = dict(canvas=canvas, tile=tile, windows=windows, text_len=text_len, text_first=text_first, text_mask=mask)
    return q, k, v, kw


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("head_dim", [128, 64], ids=["d128", "d64"])
@pytest.mark.parametrize("case", SWITCH_CASES, ids=SWITCH_IDS)
def test_gluon_pingpong_is_bit_identical_to_the_free_running_warpgroups(case, head_dim, seed, monkeypatch):
    """FA3's ping-pong (the consumer warpgroups take turns to issue their wgmmas) changes when each wgmma is issued,
    not what it computes: outputs equal the default kernel's bit for bit, in place, in tile order and compact."""
    from sta_search.kernels.sta import gluon_fwd

    q, k, v, kw = switch_case(case, head_dim)
    monkeypatch.setattr(gluon_fwd, "DEFAULT_PINGPONG", False)
    free = sta_attention(q, k, v, **kw, backend="gluon")
    monkeypatch.setattr(gluon_fwd, "DEFAULT_PINGPONG", True)
    pingpong = sta_attention(q, k, v, **kw, backend="gluon")
    assert torch.equal(pingpong, free), f"seed {seed}"
    ref = float64_reference(q, k, v, kw)
    assert rel_rms(pingpong, ref) < TOLERANCE[torch.bfloat16], f"seed {seed}"


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("q_mul", [1.0, 6.0], ids=["plain", "peaked"])
@pytest.mark.parametrize("head_dim", [128, 64], ids=["d128", "d64"])
@pytest.mark.parametrize("case", SWITCH_CASES, ids=SWITCH_IDS)
def test_gluon_lazy_rescale_matches_float64_and_the_exact_kernel(case, head_dim, q_mul, seed, monkeypatch):
    """FlashAttention-4's lazy rescaling (gluon_fwd.DEFAULT_RESCALE_SLACK = 8): against float64 and close to the
    kernel that rescales every block, on plain inputs (maxima settle after the first blocks) and peaked ones (q x 6:
    scores spread over ~12 log2 units, so maxima move by more than the slack and the rescale branch runs)."""
    from sta_search.kernels.sta import gluon_fwd

    q, k, v, kw = switch_case(case, head_dim)
    q = q * q_mul
    monkeypatch.setattr(gluon_fwd, "DEFAULT_RESCALE_SLACK", 0.0)
    exact = sta_attention(q, k, v, **kw, backend="gluon")
    monkeypatch.setattr(gluon_fwd, "DEFAULT_RESCALE_SLACK", 8.0)
    lazy = sta_attention(q, k, v, **kw, backend="gluon")
    ref = float64_reference(q, k, v, kw)
    assert rel_rms(lazy, ref) < TOLERANCE[torch.bfloat16], f"seed {seed}"
    # P exponentiated against another max is rounded to bf16 differently: two rounding-noise draws of ~2.2e-3 each
    # against float64 are ~3e-3 apart (measured on an H200: 3.1e-3 at hunyuan-720p)
    assert rel_rms(lazy, exact) < 6e-3, f"seed {seed}"
    assert rel_rms(lazy, ref) < 1.3 * rel_rms(exact, ref), f"seed {seed}"


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["gluon-d64-natural-wan480p", "gluon-compact-wan480p", "gluon-pingpong"])
def test_gluon_compiles_for_sm90_without_a_gpu_with_no_spills(variant, tmp_path):
    """The kernel compiled for sm_90 on any machine (bench/inspect_sass.py, no GPU needed): it fits the 227 KB of
    shared memory, wgmma (HGMMA) runs both products, the softmax overlaps PV, and nothing spills in the main loop."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(root / "bench" / "inspect_sass.py"), "--out", str(tmp_path),
                           "--variant", variant], env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode and "cuobjdump" in proc.stderr + proc.stdout:
        pytest.skip("Triton's CUDA tools are not installed here")
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads((tmp_path / "sass-report.json").read_text())["variants"][variant]
    assert row["shared_bytes"] <= 227 * 1024
    assert row["hgmma"] > 0 and row["hgmma_waits_leaving_one"] >= 1
    assert row["spill_instructions"] == 0 and row["local_bytes"] == 0


def test_gluon_host_side_keeps_tma_ready_views_and_refuses_a_bad_out(monkeypatch):
    """Host logic only (runs anywhere): (B, S, H, D) views are read in place when batch and heads merge into one
    TMA dimension (batch 1), copied otherwise, and a given ``out`` the kernel cannot write through TMA is refused."""
    from sta_search.kernels.sta import gluon_fwd

    monkeypatch.setattr(gluon_fwd, "_inputs_ok", lambda q, geometry: (True, "ok"))
    geometry = Geometry((12, 16, 16), TILE)
    one = torch.randn(1, geometry.video_len, 3, 128, dtype=torch.bfloat16).transpose(1, 2)
    q, _, _, out = gluon_fwd._prepare(one, one, one, None, geometry, natural=True)
    assert q.data_ptr() == one.data_ptr() and out.is_contiguous()
    two = torch.randn(2, geometry.video_len, 3, 128, dtype=torch.bfloat16).transpose(1, 2)
    q, _, _, _ = gluon_fwd._prepare(two, two, two, None, geometry, natural=True)
    assert q.is_contiguous() and torch.equal(q, two)
    bad_out = torch.empty(2, geometry.video_len, 3, 128, dtype=torch.bfloat16).transpose(1, 2)
    with pytest.raises(ValueError, match="TMA-compatible"):
        gluon_fwd._prepare(two, two, two, bad_out, geometry, natural=True)


@pytest.mark.parametrize("text_len,text_first", [(0, False), (37, False), (37, True)], ids=["no-text", "text-after",
                                                                                             "text-first"])
def test_compact_row_gathers_round_trip_through_the_triton_row_copy(text_len, text_first, seed):
    """The compact path's row copies (Triton kernel; CPU interpreter here) against index_select, on a (B, S, H, D)
    view (head and batch strides of a diffusers processor), and back to natural order exactly."""
    from sta_search.kernels.sta.row_gather import compact_gathers, gather_rows

    geometry = Geometry((5, 9, 11), (2, 8, 8))
    S = geometry.video_len + text_len
    x = torch.randn(2, S, 3, 32).transpose(1, 2)
    y, z = torch.randn(2, 3, S, 32), torch.randn(2, 3, S, 64)[..., :32]  # contiguous; row stride 64
    forward, backward = compact_gathers(geometry, text_len, text_first, x.device)
    tiled, *others = gather_rows(x, y, z, index=forward)
    for source, result in zip((x, y, z), (tiled, *others)):
        expected = source.index_select(2, forward.long().clamp_min(0)) * (forward >= 0).view(1, 1, -1, 1)
        assert result.shape == (2, 3, geometry.padded_len + text_len, 32) and torch.equal(result, expected)
    video = tiled[:, :, : geometry.padded_len]
    natural_video = x[:, :, text_len:] if text_first else x[:, :, : geometry.video_len]
    assert torch.equal(video, to_tiles(geometry, natural_video, compact=True))
    out = torch.empty(2, S, 3, 32).transpose(1, 2)
    assert torch.equal(gather_rows(tiled, index=backward, outs=[out])[0], x)
    assert torch.equal(gather_rows(*others, index=backward)[1], z)
