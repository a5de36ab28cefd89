"""CPU attention benchmark: dense SDPA vs STA backends (gather, flex, reference) on CPU.

    nice python bench/cpu_attention.py [--threads 1,2] [--cases tiny,large] [--out bench/results]

Times, per torch thread count, the medians of several runs (interleaved round-robin across backends) of dense
``torch.nn.functional.scaled_dot_product_attention`` (the model's own attention) and of STA through
``sta_gather`` and ``sta_attention(backend="flex" | "reference")`` at

- ``tiny``: the bundled tiny model's self-attention (canvas (8,16,16), tile (2,4,4), 6 heads, d=32) with
  per-head windows at density ~0.3 like its demo selects;
- ``large``: canvas (16,24,40), tile (4,8,8), window (2,3,3) (density 0.3), d=64, 2 heads (time budget);
- ``tiny-<window>``: the tiny shape with one window for every head, a density sweep (dense vs gather).

Each backend's output is first checked against the dense-mask reference (tiny) or against gather's
small-shape agreement (large: no reference at 15k tokens). Writes ``cpu-attention-<utc>.json`` under
``--out`` with the CPU name, torch version, load averages, shapes, densities, median times and speedups
over dense SDPA. The machine may be shared: the load averages before and after say how busy it was.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

from sta_search.kernels import Geometry
from sta_search.kernels.sta import normalize_windows, sta_attention, sta_reference
from sta_search.kernels.sta.gather import sta_gather

TINY_WINDOWS = [(2, 3, 3), (2, 3, 3), (3, 3, 3), (1, 4, 4), (2, 3, 3), (4, 2, 2)]

CASES = {
    # name: canvas, tile, heads, head dim, windows, batch, timed runs per backend, backends
    "tiny": dict(canvas=(8, 16, 16), tile=(2, 4, 4), heads=6, head_dim=32, windows=TINY_WINDOWS, batch=1,
                 runs=dict(default=15, flex=3, reference=5),
                 backends=("dense", "gather", "flex", "reference")),
    "large": dict(canvas=(16, 24, 40), tile=(4, 8, 8), heads=2, head_dim=64, windows=(2, 3, 3), batch=1,
                  runs=dict(default=3),
                  backends=("dense", "gather")),
}
# Density sweep at the tiny shape (uniform windows, dense vs gather only): where gather stops winning.
SWEEP_WINDOWS = [(1, 2, 2), (2, 2, 2), (2, 3, 3), (3, 3, 3), (4, 3, 3), (3, 4, 4), (4, 4, 4)]
for window in SWEEP_WINDOWS:
    CASES["tiny-" + "".join(map(str, window))] = dict(CASES["tiny"], windows=window, runs=dict(default=9),
                                                      backends=("dense", "gather"))
SKIPPED = {
    "large": {
        "flex": "eager FlexAttention on CPU materialises the full (S, S) scores and calls mask_mod everywhere: "
                "slower than dense and ~1 GB per head at 15,360 tokens",
        "reference": "dense SDPA under an explicit (S, S) mask: at least as slow as dense; limited to 4096 tokens",
    }
}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def interleaved_times(calls: dict, runs: dict) -> dict[str, list[float]]:
    """Round-robin timing: every round runs each backend once (while it still has runs left), so load
    changes on a shared machine hit every backend alike. One untimed warm-up call each first."""
    for fn in calls.values():
        fn()
    times = {name: [] for name in calls}
    for round_ in range(max(runs.values())):
        for name, fn in calls.items():
            if round_ < runs[name]:
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return times


def rel_rms(out, ref) -> float:
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm()).item()


def run_case(name: str, spec: dict, threads: list[int], log=print) -> dict:
    geometry = Geometry(spec["canvas"], spec["tile"])
    heads, d, batch = spec["heads"], spec["head_dim"], spec["batch"]
    table = normalize_windows(spec["windows"], heads)
    S = geometry.video_len
    torch.manual_seed(0)
    q, k, v = (torch.randn(batch, heads, S, d) for _ in range(3))
    kw = dict(canvas=geometry.canvas, tile=geometry.tile, windows=table)
    calls = {
        "dense": lambda: F.scaled_dot_product_attention(q, k, v),
        "gather": lambda: sta_gather(q, k, v, geometry, table),
        "flex": lambda: sta_attention(q, k, v, **kw, backend="flex"),
        "reference": lambda: sta_attention(q, k, v, **kw, backend="reference"),
    }
    densities = [geometry.density(w) for w in table.tolist()]
    result = {
        "case": name, "canvas": list(geometry.canvas), "tile": list(geometry.tile), "grid": list(geometry.grid),
        "tokens": S, "batch": batch, "heads": heads, "head_dim": d, "dtype": "float32",
        "windows": [list(w) for w in table.tolist()],
        "density": sum(densities) / heads, "tile_density": sum(geometry.tile_density(w) for w in table.tolist()) / heads,
        "skipped": SKIPPED.get(name, {}), "errors_vs_reference": {}, "threads": {},
    }
    torch.set_num_threads(max(threads))
    if S <= 4096:
        ref = sta_reference(q.double(), k.double(), v.double(), **kw)
        for backend in spec["backends"]:
            if backend != "dense":
                result["errors_vs_reference"][backend] = rel_rms(calls[backend](), ref)
    log(f"[{name}] canvas {geometry.canvas} tile {geometry.tile} heads {heads} d {d}: "
        f"density {result['density']:.3f}, errors {result['errors_vs_reference']}")
    for n in threads:
        torch.set_num_threads(n)
        times = interleaved_times({b: calls[b] for b in spec["backends"]},
                                  {b: spec["runs"].get(b, spec["runs"]["default"]) for b in spec["backends"]})
        row = {b: {"median_s": statistics.median(t), "times_s": t} for b, t in times.items()}
        for backend in spec["backends"]:
            row[backend]["speedup_vs_dense_sdpa"] = row["dense"]["median_s"] / row[backend]["median_s"]
        result["threads"][str(n)] = row
        log(f"[{name}] threads {n}: " + ", ".join(
            f"{b} {row[b]['median_s'] * 1e3:.1f} ms ({row[b]['speedup_vs_dense_sdpa']:.2f}x)" for b in row))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    parser.add_argument("--cases", default=",".join(["tiny", "large"] + ["tiny-" + "".join(map(str, w)) for w in SWEEP_WINDOWS]),
                        help=f"comma-separated, from {sorted(CASES)}")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    names = args.cases.split(",")
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {sorted(CASES)}")
    started = time.time()
    report = {
        "schema": "sta-search/cpu-attention/v1",
        "cpu": cpu_name(), "logical_cpus": os.cpu_count(), "torch": torch.__version__,
        "python": platform.python_version(), "threads": threads,
        "env": {name: os.environ.get(name) for name in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "KMP_BLOCKTIME")},
        "loadavg_before": list(os.getloadavg()),
        "note": "Shared machine: other agents ran on the same 2 cores during this benchmark (see loadavg), so "
                "absolute times are noisy; backends are timed round-robin per thread count. With the machine "
                "oversubscribed, 2 torch threads under OpenMP's default (active) wait policy pay heavily for every "
                "parallel region, which hurts gather (dozens of small ops) far more than one dense call; compare "
                "runs with OMP_WAIT_POLICY=PASSIVE (see env).",
        "cases": [run_case(n, CASES[n], threads) for n in names],
    }
    report["loadavg_after"] = list(os.getloadavg())
    report["wall_s"] = time.time() - started
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"cpu-attention-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path} ({report['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
