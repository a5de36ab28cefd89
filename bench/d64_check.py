"""Head dim 64 on the Gluon kernel (issue #18): correctness against float64 and speed against cuDNN, one GPU call.

    python3 bench/d64_check.py --out DIR            # H100/H200, about 60-90 s
    python3 bench/d64_check.py --out DIR --smoke    # any machine: tiny shapes, CPU stand-ins (harness check only)

Writes ``DIR/d64-check-<utc>.json`` after every case (a run cut short keeps what finished) and prints one line a case.

1. ``correctness``: ``sta_attention(backend="gluon")`` (natural order, in place) against the float64 dense
   reference (``sta_reference``, its own mask from docs/geometry.md), relative RMS, bound bf16 1e-2 / fp16 2e-3
   (docs/kernel.md); the tile-order entry (``sta_attention_tiled``) must give bit-identical real rows. Cases:
   d=64 padded canvas, mixed per-head windows, masked text after the video (bf16); d=64 divisible canvas,
   text before the video, batch 2 (fp16); d=128 the first case again (regression).
2. ``timing`` at hunyuan-720p's canvas (30, 48, 80) = 115,200 tokens, bf16, batch 1, natural order in place:
   d=64 with **48 heads** (the FLOPs of the 24 x 128 that hunyuan runs) and d=128 with 24 heads. Rows: cuDNN SDPA
   dense; Gluon full window (5, 6, 10) (dense attention through our kernel; target >= 0.9x cuDNN at d=64);
   Gluon (3, 3, 3) at the default K/V ring depth, then the other depths (the sweep behind
   ``gluon_fwd.DEFAULT_STAGES``); Triton (3, 3, 3) at d=64 (what ``auto`` ran at d=64 before). Each timing is the
   median of CUDA-event times of single calls after one warm-up call (which compiles; its wall time is recorded).
   Full-window Gluon is also compared with cuDNN's output, and Gluon (3, 3, 3) with Triton's (relative RMS).

Robustness: every case runs in try/except (the error goes into the JSON), cases past ``--budget`` seconds are
skipped (recorded), and a watchdog ends the process ``--budget + 60`` s after the start, whatever is running.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import faulthandler
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sta_search.kernels import Geometry, from_tiles, to_tiles  # noqa: E402
from sta_search.kernels.sta import normalize_windows, sta_attention, sta_attention_tiled, sta_reference  # noqa: E402

TILE = (6, 8, 8)
TOLERANCE = {torch.bfloat16: 1e-2, torch.float16: 2e-3}
# id, head dim, dtype, canvas, heads, windows, text_len, text_first, masked text, batch
CORRECTNESS = [
    ("d64-pad-mixed-text130-after-bf16", 64, torch.bfloat16, (10, 13, 20), 3, [(1, 1, 1), (2, 2, 3), (2, 1, 2)], 130,
     False, True, 1),
    ("d64-div-text200-first-b2-fp16", 64, torch.float16, (12, 16, 16), 2, [(2, 2, 2), (1, 2, 3)], 200, True, True, 2),
    ("d128-pad-mixed-text130-after-bf16", 128, torch.bfloat16, (10, 13, 20), 3, [(1, 1, 1), (2, 2, 3), (2, 1, 2)],
     130, False, True, 1),
]
SMOKE_CORRECTNESS = [
    ("d64-pad-mixed-text20-after-bf16", 64, torch.bfloat16, (7, 9, 10), 2, [(1, 1, 1), (2, 1, 2)], 20, False, True, 1),
    ("d128-div-text16-first-bf16", 128, torch.bfloat16, (6, 8, 16), 1, [(1, 1, 1)], 16, True, False, 1),
]
CANVAS = (30, 48, 80)  # hunyuan-720p: 115,200 video tokens
HEADS = {64: 48, 128: 24}  # equal FLOPs: 48 x 64 = 24 x 128
STAGE_SWEEP = {64: (2, 3, 6), 128: (2,)}  # besides the default depth


def rel_rms(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm()).item()


class Run:
    """The JSON report, rewritten after every case, and the time budget."""

    def __init__(self, out_dir: Path, budget_s: float, smoke: bool):
        out_dir.mkdir(parents=True, exist_ok=True)
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.path = out_dir / f"d64-check-{'smoke-' if smoke else ''}{stamp}.json"
        self.start = time.monotonic()
        self.budget_s = budget_s
        self.report: dict = {"environment": environment(), "smoke": smoke, "budget_s": budget_s,
                             "timing_shape": None, "correctness": {}, "timing": {}}
        self.write()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def write(self) -> None:
        self.report["elapsed_s"] = round(self.elapsed(), 2)
        self.path.write_text(json.dumps(self.report, indent=2) + "\n")

    def case(self, section: str, name: str, fn) -> dict | None:
        if self.elapsed() > self.budget_s:
            row = {"status": "skipped", "why": f"past the {self.budget_s:.0f} s budget"}
        else:
            self.report[section][name] = {"status": "running"}  # what a watchdog exit leaves: the case that hung
            self.write()
            t0 = time.perf_counter()
            try:
                row = {"status": "ok", **fn()}
            except Exception as exc:  # keep going: the error is the result
                row = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:1000]}
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
            row["wall_s"] = round(time.perf_counter() - t0, 2)
        self.report[section][name] = row
        self.write()
        brief = {k: v for k, v in row.items() if not isinstance(v, (list, dict))}
        print(f"[{self.elapsed():6.1f} s] {section} {name}: {brief}", flush=True)
        return row if row["status"] == "ok" else None


def environment() -> dict:
    import triton

    cuda = torch.cuda.is_available()
    return {"device": torch.cuda.get_device_name(0) if cuda else "cpu",
            "capability": list(torch.cuda.get_device_capability(0)) if cuda else None,
            "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
            "utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_ms(fn, device, target_s: float = 0.6, max_iters: int = 20) -> dict:
    """Median ms of single calls (CUDA events on GPU) after one warm-up call; as many calls as fit ``target_s``."""
    t0 = time.perf_counter()
    fn()
    sync(device)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    fn()
    sync(device)
    estimate = max(time.perf_counter() - t0, 1e-4)
    iters = max(3, min(max_iters, int(target_s / estimate)))
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return {"ms": statistics.median(times), "ms_min": min(times), "iters": iters, "first_call_s": round(first, 3)}


# --------------------------------------------------------------------------------------------- correctness
def correctness_case(case, device, backend: str) -> dict:
    _, head_dim, dtype, canvas, heads, windows, text_len, text_first, masked, batch = case
    geometry = Geometry(canvas, TILE)
    q, k, v = (torch.randn(batch, heads, geometry.video_len + text_len, head_dim, device=device, dtype=dtype)
               for _ in range(3))
    mask = None
    if masked:
        mask = torch.rand(batch, text_len, device=device) > 0.3
        mask[:, 0] = True
        mask[:, -1] = False
    table = normalize_windows(windows, heads)
    kw = dict(canvas=canvas, tile=TILE, windows=windows, text_len=text_len, text_first=text_first, text_mask=mask)
    ref = sta_reference(q.double(), k.double(), v.double(), **{**kw, "windows": table.to(device)})
    natural = sta_attention(q, k, v, **kw, backend=backend)
    err = rel_rms(natural, ref)
    finite = bool(torch.isfinite(natural).all())

    V = geometry.video_len
    video, text = (slice(text_len, None), slice(0, text_len)) if text_first else (slice(0, V), slice(V, None))
    tiled_in = [torch.cat([to_tiles(geometry, x[:, :, video]), x[:, :, text]], 2) for x in (q, k, v)]
    tiled = sta_attention_tiled(*tiled_in, geometry=geometry, windows=windows, text_len=text_len, text_mask=mask,
                                backend=backend)
    video_out = from_tiles(geometry, tiled[:, :, : geometry.padded_len])
    text_out = tiled[:, :, geometry.padded_len:]
    back = torch.cat([text_out, video_out] if text_first else [video_out, text_out], 2)
    tiled_equal = bool(torch.equal(back, natural))
    passed = finite and err < TOLERANCE[dtype] and (tiled_equal or backend != "gluon")
    return {"head_dim": head_dim, "dtype": str(dtype).split(".")[-1], "canvas": list(canvas), "heads": heads,
            "windows": [list(w) for w in windows], "text_len": text_len, "text_first": text_first,
            "masked_text": masked, "batch": batch, "backend": backend, "rel_rms_vs_float64": err,
            "tolerance": TOLERANCE[dtype], "finite": finite, "tiled_equals_natural": tiled_equal, "pass": passed}


# --------------------------------------------------------------------------------------------------- timing
def timing(run: Run, device, smoke: bool) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from sta_search.benchmark import attended_pairs, make_shape

    canvas = (6, 16, 24) if smoke else CANVAS
    heads = {64: 4, 128: 2} if smoke else HEADS
    geometry = Geometry(canvas, TILE)
    full = geometry.grid
    run.report["timing_shape"] = {"canvas": list(canvas), "tile": list(TILE), "tokens": geometry.video_len,
                                  "heads": {str(d): h for d, h in heads.items()}, "dtype": "bfloat16", "batch": 1,
                                  "layout": "natural order, in place", "full_window": list(full)}
    gluon = "gluon" if not smoke else None
    if gluon:
        from sta_search.kernels.sta.gluon_fwd import DEFAULT_STAGES, sta_gluon_natural
    else:
        DEFAULT_STAGES = {64: 4, 128: 3}

    def tflops(window, d, ms):
        shape = make_shape(None, canvas=",".join(map(str, canvas)), heads=heads[d], head_dim=d,
                           window=",".join(map(str, window)))
        pairs, dense = attended_pairs(shape)
        return 4.0 * d * pairs / ms / 1e9, 4.0 * d * dense / ms / 1e9

    def sta(q, k, v, window, stages=None, backend=None):
        d = q.shape[-1]
        table = normalize_windows(window, heads[d], device=device)
        if backend is None and gluon:
            return sta_gluon_natural(q, k, v, geometry, table, 0, False, None, None, stages=stages)
        return sta_attention(q, k, v, canvas=canvas, tile=TILE, windows=table, backend=backend or "gather")

    def dense(q, k, v):
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION if device.type == "cuda" else SDPBackend.MATH):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    # Most important first: at each head dim cuDNN, Gluon full window, Gluon (3,3,3) (d=64: and Triton); then the
    # ring-depth sweeps. Inputs are made once per head dim (the plan runs each head dim's rows together).
    plan = [(64, "cudnn-dense", None), (64, "gluon-full", None), (64, "gluon-333", None), (64, "triton-333", None),
            (128, "cudnn-dense", None), (128, "gluon-full", None), (128, "gluon-333", None)]
    plan += [(d, "gluon-333", s) for d in (64, 128) for s in STAGE_SWEEP[d]]

    inputs: dict = {}
    outs: dict = {}
    for d, impl, stages in plan:
        name = f"d{d}-{impl}" + (f"-stages{stages}" if stages else "")

        def one(d=d, impl=impl, stages=stages):
            if d not in inputs:
                inputs.clear()
                outs.clear()
                sync(device)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                torch.manual_seed(0)
                inputs[d] = [torch.randn(1, heads[d], geometry.video_len, d, device=device, dtype=torch.bfloat16)
                             for _ in range(3)]
            q, k, v = inputs[d]
            row = {"head_dim": d, "heads": heads[d]}
            if impl == "cudnn-dense":
                fn, window = (lambda: dense(q, k, v)), full
            elif impl == "gluon-full":
                fn, window = (lambda: sta(q, k, v, full)), full
            elif impl == "gluon-333":
                fn, window = (lambda: sta(q, k, v, (3, 3, 3), stages)), (3, 3, 3)
                row["stages"] = stages or DEFAULT_STAGES[d]
                row["default_stages"] = stages is None
            else:  # triton-333
                fn, window = (lambda: sta(q, k, v, (3, 3, 3), backend="triton" if gluon else "gather")), (3, 3, 3)
            row.update(time_ms(fn, device))
            row["tflops_attended"], row["tflops_dense_equiv"] = tflops(window, d, row["ms"])
            if impl in ("cudnn-dense", "gluon-full") or (impl == "gluon-333" and stages is None):
                outs[impl] = fn()
            if impl == "triton-333":
                other = fn()
                if "gluon-333" in outs:
                    row["rel_rms_vs_gluon"] = rel_rms(other, outs["gluon-333"])
                del other
            base = run.report["timing"].get(f"d{d}-cudnn-dense", {}).get("ms")
            if base:
                row["cudnn_dense_ms_over_this"] = base / row["ms"]
            if impl == "gluon-full" and "cudnn-dense" in outs:
                row["rel_rms_vs_cudnn"] = rel_rms(outs["gluon-full"], outs["cudnn-dense"])
                row["target_met"] = row["cudnn_dense_ms_over_this"] >= 0.9 if d == 64 and base else None
            if impl == "gluon-333" and stages:
                default = run.report["timing"].get(f"d{d}-gluon-333", {}).get("ms")
                if default:
                    row["default_ms_over_this"] = default / row["ms"]
            return row

        run.case("timing", name, one)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU stand-ins (gather backend, math SDPA)")
    parser.add_argument("--budget", type=float, default=85.0, help="skip cases that would start after this many s")
    parser.add_argument("--skip", nargs="*", default=[], choices=["correctness", "timing"])
    args = parser.parse_args(argv)
    faulthandler.dump_traceback_later(args.budget + 60, exit=True)  # never hang: JSON is written after every case
    run = Run(args.out, args.budget, args.smoke)
    print(f"writing {run.path}", flush=True)
    device = torch.device("cpu" if args.smoke else "cuda")
    if not args.smoke and not torch.cuda.is_available():
        run.report["error"] = "no CUDA device (use --smoke on CPU)"
        run.write()
        print(run.report["error"], file=sys.stderr)
        return 2
    backend = "gather" if args.smoke else "gluon"
    if "correctness" not in args.skip:
        for case in SMOKE_CORRECTNESS if args.smoke else CORRECTNESS:
            torch.manual_seed(1234)
            run.case("correctness", case[0], lambda case=case: correctness_case(case, device, backend))
    if "timing" not in args.skip:
        timing(run, device, args.smoke)
    rows = run.report["correctness"].values()
    run.report["all_correctness_pass"] = bool(rows) and all(r.get("pass") for r in rows)
    d64 = run.report["timing"].get("d64-gluon-full", {})
    run.report["d64_full_window_vs_cudnn"] = d64.get("cudnn_dense_ms_over_this")
    run.write()
    faulthandler.cancel_dump_traceback_later()
    print(f"done in {run.elapsed():.1f} s: correctness pass {run.report['all_correctness_pass']}, "
          f"d=64 Gluon full window = {d64.get('cudnn_dense_ms_over_this')} x cuDNN speed; wrote {run.path}",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
