"""Where the time of the Gluon kernel's compact natural-order path goes (wan-480p, (3,3,3), bf16), one run.

    python bench/compact_overhead.py [--out DIR]

For each piece: host time per call (``perf_counter`` over calls issued without synchronizing: what the CPU spends to
enqueue one call) and device time (median of CUDA events around single calls). Pieces: ``sta_attention`` on natural
order (the compact path), ``sta_gluon_compact`` called directly, the kernel launch alone on compact tensors, one row
gather, and the in-place boxes path. Then ``torch.profiler``'s CUDA kernel table of five ``sta_attention`` calls.
GPU only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sta_search.benchmark import environment  # noqa: E402
from sta_search.kernels import Geometry  # noqa: E402
from sta_search.kernels.sta import gluon_fwd, normalize_windows, sta_attention  # noqa: E402
from sta_search.kernels.sta.row_gather import compact_gathers, gather_rows  # noqa: E402


def host_and_device_ms(fn, calls: int = 50) -> dict:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    host = (time.perf_counter() - t0) / calls * 1e3
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / calls * 1e3
    times = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return {"host_ms_per_call": host, "throughput_ms_per_call": wall, "device_ms_single_call": statistics.median(times)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--canvas", default="21,30,52")
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                        help="also time hunyuan-720p (3,3,3) and report the effective-rate ratio")
    args = parser.parse_args(argv)
    canvas = tuple(int(x) for x in args.canvas.split(","))
    geometry = Geometry(canvas, (6, 8, 8))
    q, k, v = (torch.randn(1, args.heads, geometry.video_len, 128, device="cuda", dtype=torch.bfloat16)
               for _ in range(3))
    windows = normalize_windows((3, 3, 3), args.heads, device="cuda")
    forward, _ = compact_gathers(geometry, 0, False, q.device)
    qt, kt, vt = gather_rows(q, k, v, index=forward)
    ot = torch.empty_like(qt)
    pieces = {
        "sta_attention (compact)": lambda: sta_attention(q, k, v, canvas=canvas, tile=geometry.tile, windows=windows,
                                                         backend="gluon"),
        "sta_attention (compact), windows tuple": lambda: sta_attention(q, k, v, canvas=canvas, tile=geometry.tile,
                                                                        windows=(3, 3, 3), backend="gluon"),
        "sta_gluon_compact": lambda: gluon_fwd.sta_gluon_compact(q, k, v, geometry, windows, 0, False, None, None),
        "kernel launch only (compact)": lambda: gluon_fwd._launch(qt, kt, vt, ot, geometry, windows, 0,
                                                                  geometry.padded_len, 0, None, None, natural=False,
                                                                  stages=None, compact=True),
        "row gather of q": lambda: gather_rows(q, index=forward),
        "row gather of q, k, v (one launch)": lambda: gather_rows(q, k, v, index=forward),
        "index_select gather": lambda: q.index_select(2, forward.long().clamp_min(0)),
        "sta_gluon_natural in-place boxes": lambda: gluon_fwd.sta_gluon_natural(q, k, v, geometry, windows, 0, False,
                                                                               None, None, padded="in-place"),
    }
    report = {"environment": environment(), "canvas": canvas, "heads": args.heads, "window": [3, 3, 3], "pieces": {}}
    for name, fn in pieces.items():
        report["pieces"][name] = host_and_device_ms(fn)
        print(f"{name:<36} {json.dumps({k: round(v, 3) for k, v in report['pieces'][name].items()})}", flush=True)
    if args.reference:  # hunyuan-720p (3,3,3) through sta_attention: the rate the padded canvas is compared with
        ref = Geometry((30, 48, 80), (6, 8, 8))
        rq, rk, rv = (torch.randn(1, 24, ref.video_len, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        rw = normalize_windows((3, 3, 3), 24, device="cuda")
        report["reference"] = host_and_device_ms(lambda: sta_attention(rq, rk, rv, canvas=ref.canvas, tile=ref.tile,
                                                                       windows=rw, backend="gluon"), calls=20)
        pairs = {"padded": geometry.density((3, 3, 3)) * geometry.video_len ** 2 * args.heads,
                 "reference": ref.density((3, 3, 3)) * ref.video_len ** 2 * 24}
        rate = pairs["padded"] / report["pieces"]["sta_attention (compact)"]["throughput_ms_per_call"]
        report["rate_vs_reference"] = rate / (pairs["reference"] / report["reference"]["throughput_ms_per_call"])
        print(f"reference {report['reference']}; sta_attention rate vs hunyuan-720p {report['rate_vs_reference']:.3f}")
        del rq, rk, rv
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            pieces["sta_attention (compact)"]()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25)
    report["profiler_table"] = table
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = report["environment"]["utc"].replace(":", "").replace("-", "")
    path = out / f"compact-overhead-{stamp}.json"
    path.write_text(json.dumps(report, indent=1))
    print(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()
