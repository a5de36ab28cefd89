"""Check and time the Gluon (warp-specialized) STA kernel against the Triton one, on an H100, in one process.

    python bench/gluon_probe.py [--out DIR] [--quick]

1. Correctness (bf16, d=128, tile (6,8,8)): Gluon vs the float64 dense reference on small canvases
   (divisible and padded, mixed per-head windows, text with a key-padding mask, batch 2), and Gluon vs
   the Triton kernel at hunyuan-720p.
2. Speed, tile order, inputs rotated: cuDNN SDPA dense, the Triton kernel and the Gluon kernel (2 and 3
   stages) at hunyuan-720p (3,3,3), (5,5,5), the full window (5,6,10) and (3,3,3) + 256 text tokens.

Writes ``DIR/gluon-probe-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from sta_search.benchmark import environment, median_ms
from sta_search.kernels import Geometry
from sta_search.kernels.sta import normalize_windows, sta_reference
from sta_search.kernels.sta.gluon_fwd import sta_gluon_tiled
from sta_search.kernels.sta.triton_fwd import sta_triton_tiled


def rel_rms(a, b):
    a, b = a.double(), b.double()
    return float("nan") if not torch.isfinite(a).all() else ((a - b).norm() / b.norm()).item()


def tiled_inputs(geometry, heads, text_len, batch=1, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(batch, heads, geometry.padded_len + text_len, 128, device="cuda", dtype=torch.bfloat16,
                        generator=g) for _ in range(3)]


def reference_tiled(q, k, v, geometry, windows, text_len, text_mask):
    """float64 reference on tile-order inputs (padding rows of the tile order ignored by the comparison)."""
    from sta_search.kernels import from_tiles, to_tiles
    nat = [torch.cat([from_tiles(geometry, x[:, :, : geometry.padded_len]), x[:, :, geometry.padded_len:]], 2)
           for x in (q, k, v)]
    ref = sta_reference(*(x.double() for x in nat), canvas=geometry.canvas, tile=geometry.tile,
                        windows=normalize_windows(windows, q.shape[1]), text_len=text_len, text_mask=text_mask)
    return torch.cat([to_tiles(geometry, ref[:, :, : geometry.video_len]), ref[:, :, geometry.video_len:]], 2)


def valid_rows(geometry, text_len, device):
    from sta_search.kernels import to_tiles
    ones = torch.ones(1, 1, geometry.video_len, 1, device=device)
    video = to_tiles(geometry, ones)[0, 0, :, 0] > 0
    return torch.cat([video, torch.ones(text_len, dtype=torch.bool, device=device)])


def correctness(log) -> list[dict]:
    rows = []
    cases = [
        ("div-333", (12, 16, 16), 2, (3, 3, 3), 0, False, 1),
        ("div-mixed-text40", (12, 16, 16), 3, [(1, 1, 1), (2, 2, 2), (1, 2, 1)], 40, True, 1),
        ("pad-mixed", (10, 13, 20), 3, [(1, 1, 1), (2, 2, 3), (2, 1, 2)], 0, False, 1),
        ("pad-text200-b2", (10, 13, 20), 2, [(2, 2, 2), (1, 2, 3)], 200, True, 2),
        ("div-text256-full", (12, 16, 16), 2, (9, 9, 9), 256, True, 1),
    ]
    for name, canvas, heads, windows, text_len, masked, batch in cases:
        geometry = Geometry(canvas, (6, 8, 8))
        q, k, v = tiled_inputs(geometry, heads, text_len, batch, seed=len(rows))
        text_mask = None
        if masked:
            text_mask = torch.rand(batch, text_len, device="cuda") > 0.3
            text_mask[:, 0] = True
            text_mask[:, -1] = False
        table = normalize_windows(windows, heads, "cuda")
        out = sta_gluon_tiled(q, k, v, geometry, table, text_len, text_mask, None)
        ref = reference_tiled(q, k, v, geometry, table, text_len, text_mask)
        tri = sta_triton_tiled(q, k, v, geometry, table, text_len, text_mask, None)
        keep = valid_rows(geometry, text_len, "cuda")
        err = rel_rms(out[:, :, keep], ref[:, :, keep])
        err_tri = rel_rms(tri[:, :, keep], ref[:, :, keep])
        rows.append(dict(case=name, gluon_vs_fp64=err, triton_vs_fp64=err_tri))
        log(f"{name}: gluon {err:.2e}  triton {err_tri:.2e} (rel RMS vs float64)")
    return rows


def speed(log, iters: int) -> list[dict]:
    rows = []
    geometry = Geometry((30, 48, 80), (6, 8, 8))
    heads = 24
    S = geometry.video_len
    dense_in = [[torch.randn(1, heads, S, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3)]]
    with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.CUDNN_ATTENTION]):
        cudnn_ms, _ = median_ms(lambda q, k, v: F.scaled_dot_product_attention(q, k, v), dense_in, 2, 5)
    dense_flop = 4 * S * S * 128 * heads
    log(f"cuDNN dense {cudnn_ms:.2f} ms = {dense_flop / cudnn_ms / 1e9:.0f} TFLOP/s")
    rows.append(dict(case="cudnn-dense", ms=cudnn_ms, tflops=dense_flop / cudnn_ms / 1e9))
    del dense_in
    for window, text_len in (((3, 3, 3), 0), ((5, 5, 5), 0), ((5, 6, 10), 0), ((3, 3, 3), 256)):
        table = normalize_windows(window, heads, "cuda")
        sets = [tiled_inputs(geometry, heads, text_len, seed=s) for s in range(3)]
        text_mask = None
        if text_len:
            text_mask = torch.zeros(1, text_len, dtype=torch.bool, device="cuda")
            text_mask[:, :205] = True
        frac = 1.0
        for n, w in zip(geometry.grid, window):
            frac *= min(w, n) / n
        flop = 4 * S * S * frac * 128 * heads
        variants = {
            "triton": lambda q, k, v: sta_triton_tiled(q, k, v, geometry, table, text_len, text_mask, None),
            "gluon-s2": lambda q, k, v: sta_gluon_tiled(q, k, v, geometry, table, text_len, text_mask, None,
                                                        stages=2),
            "gluon-s3": lambda q, k, v: sta_gluon_tiled(q, k, v, geometry, table, text_len, text_mask, None,
                                                        stages=3),
        }
        ref = variants["triton"](*sets[0])
        for name, fn in variants.items():
            try:
                err = rel_rms(fn(*sets[0]), ref)
                ms, times = median_ms(fn, sets, 3, iters)
            except Exception as exc:  # a variant that does not compile or launch is reported, not fatal
                log(f"{window} text {text_len} {name}: FAILED {type(exc).__name__}: {str(exc)[:300]}")
                rows.append(dict(window=list(window), text_len=text_len, variant=name, error=str(exc)[:500]))
                continue
            rows.append(dict(window=list(window), text_len=text_len, variant=name, ms=ms, times=times,
                             tflops=flop / ms / 1e9, vs_cudnn=cudnn_ms / ms, rel_rms_vs_triton=err))
            log(f"{window} text {text_len} {name}: {ms:.2f} ms = {flop / ms / 1e9:.0f} TFLOP/s, "
                f"{cudnn_ms / ms:.2f}x cuDNN, rel RMS vs triton {err:.1e}")
        del sets
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--part", choices=["all", "correctness", "speed"], default="all")
    args = parser.parse_args()
    log = lambda s: print(s, flush=True)  # noqa: E731
    started = time.time()
    result = dict(environment=environment())
    if args.part in ("all", "correctness"):
        result["correctness"] = correctness(log)
    if args.part in ("all", "speed"):
        result["speed"] = speed(log, args.iters)
    result["seconds"] = time.time() - started
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"gluon-probe-{args.part}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    path.write_text(json.dumps(result, indent=1))
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
