"""Time, SM clock and board power of each attention kernel run back to back for a few seconds (one GPU, one process).

    python bench/power_check.py --out DIR [--seconds 4]

Why (bench/NOTES.md, session 14): in HunyuanVideo's compiled forwards the H200 sits at its power cap at 1.45-1.62 GHz,
and there the FP8 STA kernel takes 23.1 ms a call against 19.2 ms in isolation (bf16: 26.4 against 24.9). This script
says how much power each kernel draws when it runs alone and sustained, at which clock, and so what one call costs
in energy: hunyuan-720p (30x48x80, 24 heads, d=128, bf16 inputs in natural order), window (3,3,3), for the bf16 Gluon
kernel, the `fp8` and `int8` calls (pre-pass included), and cuDNN dense SDPA as the baseline of the same run; then
the same kernels again, each call after ``--gemms`` large bf16 matmuls (the model's rhythm), the attention timed alone.

`nvidia-smi` samples clock, power and the clock-event reasons every 100 ms in the background; a sample counts for
a kernel when it falls inside that kernel's timed window (the first second of each window, a warm-up, is left out).
Writes ``DIR/power-check-<utc>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

QUERY = "timestamp,clocks.sm,power.draw,temperature.gpu,clocks_event_reasons.active"


def parse_smi(text: str) -> list[tuple[float, float, float, float, int]]:
    """(unix time, SM MHz, watts, deg C, event-reason bits) per sample of ``nvidia-smi --format=csv,noheader``."""
    rows = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 5:
            continue
        try:
            stamp = dt.datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
            rows.append((stamp, float(parts[1].split()[0]), float(parts[2].split()[0]), float(parts[3]),
                         int(parts[4], 16)))
        except ValueError:
            continue
    return rows


def summarise(samples, start: float, end: float) -> dict:
    inside = [s for s in samples if start <= s[0] <= end]
    if not inside:
        return {"samples": 0}
    return {"samples": len(inside), "sm_mhz": statistics.mean(s[1] for s in inside),
            "watts": statistics.mean(s[2] for s in inside), "max_deg_c": max(s[3] for s in inside),
            "power_capped_share": sum(bool(s[4] & 0x4) for s in inside) / len(inside)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--seconds", type=float, default=4.0, help="sustained run per kernel (the first second warms up)")
    parser.add_argument("--idle", type=float, default=2.0, help="seconds idle before each kernel's run")
    parser.add_argument("--gemms", type=int, default=20,
                        help="second pass: 8192^3 bf16 matmuls before every attention call (20: ~35 ms, one layer's "
                             "GEMMs in HunyuanVideo 720p), attention timed alone")
    args = parser.parse_args(argv)

    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from sta_search.kernels import Geometry
    from sta_search.kernels.sta import normalize_windows, sta_attention

    geometry = Geometry((30, 48, 80), (6, 8, 8))
    heads, D = 24, 128
    q, k, v = (torch.randn(1, heads, geometry.video_len, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    windows = normalize_windows((3, 3, 3), heads, device="cuda")
    kw = dict(canvas=geometry.canvas, tile=geometry.tile, windows=windows, backend="gluon")

    def dense():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    kernels = {"gluon-bf16": lambda: sta_attention(q, k, v, **kw),
               "gluon-fp8 (call)": lambda: sta_attention(q, k, v, **kw, precision="fp8"),
               "gluon-int8 (call)": lambda: sta_attention(q, k, v, **kw, precision="int8"),
               "cudnn-dense": dense}
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)

    def gemms():  # about what one HunyuanVideo layer's linear layers cost (2.1 s of GEMMs / 60 layers)
        for _ in range(args.gemms):
            torch.mm(a, b)

    smi = subprocess.Popen(["nvidia-smi", f"--query-gpu={QUERY}", "--format=csv,noheader", "-lms", "100"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    windows_s, rows = {}, {}
    try:
        for name, fn in kernels.items():
            fn()
            torch.cuda.synchronize()
            time.sleep(args.idle)  # idle between kernels, so each starts from the same state
            begin = time.time()
            times = []
            while time.time() - begin < args.seconds:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append((time.time() - begin, start.elapsed_time(end)))
            windows_s[name] = (begin + 1.0, time.time())
            sustained = [ms for t, ms in times if t >= 1.0] or [ms for _, ms in times]
            first = [ms for t, ms in times if t < 0.3] or [times[0][1]]
            rows[name] = {"calls": len(times), "median_ms": statistics.median(sustained),
                          "median_ms_first_0.3s": statistics.median(first)}
            print(f"{name:<20} {rows[name]['median_ms']:9.3f} ms sustained, {rows[name]['median_ms_first_0.3s']:9.3f} "
                  "ms in the first 0.3 s", flush=True)
        for name, fn in kernels.items():  # as in a model: each call after a layer's worth of GEMMs
            key = f"{name} after GEMMs"
            time.sleep(args.idle)
            begin = time.time()
            times = []
            while time.time() - begin < args.seconds:
                gemms()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append((time.time() - begin, start.elapsed_time(end)))
            windows_s[key] = (begin + 1.0, time.time())
            sustained = [ms for t, ms in times if t >= 1.0] or [ms for _, ms in times]
            rows[key] = {"calls": len(times), "median_ms": statistics.median(sustained)}
            print(f"{key:<32} {rows[key]['median_ms']:9.3f} ms", flush=True)
    finally:
        time.sleep(0.3)
        smi.terminate()
        text, _ = smi.communicate(timeout=10)
    samples = parse_smi(text)
    for name, (start, end) in windows_s.items():
        rows[name].update(summarise(samples, start, end))
        if rows[name].get("watts"):
            rows[name]["joules_per_call"] = rows[name]["watts"] * rows[name]["median_ms"] / 1000
    for name, row in rows.items():
        base = rows["cudnn-dense after GEMMs" if name.endswith("after GEMMs") else "cudnn-dense"]["median_ms"]
        row["speedup_vs_cudnn"] = base / row["median_ms"]
        bf16 = rows["gluon-bf16 after GEMMs" if name.endswith("after GEMMs") else "gluon-bf16"]["median_ms"]
        row["speedup_vs_bf16_gluon"] = bf16 / row["median_ms"]
    result = {"schema": "sta-search/power-check/v1",
              "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "triton": __import__("triton").__version__,
              "shape": "hunyuan-720p (30,48,80) x 24 heads, d=128, bf16 in, natural order, window (3,3,3), no text",
              "seconds_per_kernel": args.seconds, "smi_samples": len(samples), "kernels": rows}
    out = Path(args.out) / f"power-check-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for name, row in rows.items():
        print(name, {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})
    print("wrote", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
