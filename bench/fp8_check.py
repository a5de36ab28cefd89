"""One-shot GPU check of the opt-in FP8 Gluon STA kernel (issue #18): correctness, speed, what it compiled to.

    python3 bench/fp8_check.py --out DIR            # on the H200: about 70 s, mostly JIT compiles
    python3 bench/fp8_check.py --out DIR --smoke    # anywhere: offline sm_90 compile report + the CPU checks only

Writes ``DIR/fp8-check-<utc>.json`` after every step (a run cut short keeps what it finished) and prints
progress. Every case is caught and recorded; a watchdog thread writes the JSON and exits the process
(code 3) when ``--deadline`` seconds (default 120) pass, so a hung kernel never hangs the job.

1. correctness (3 shapes, bf16, d=128): relative RMS of ``sta_attention(..., precision="fp8")`` against the
   float64 reference, against the recipe computed exactly from the same fp8 values (tests/test_kernel_fp8.py
   explains the 0.08 bound), and (first case) the tile-order path into a NaN-poisoned output;
2. timing at hunyuan-720p (30x48x80, 24 heads), (3,3,3), in one process on the same inputs: bf16 Gluon
   (natural order, in place); at ``precision="fp8"`` and ``"int8"`` the whole call (pre-pass included), the pre-pass
   alone and the kernel alone; cuDNN dense SDPA; and each 8-bit output's rel RMS against bf16;
``--model-call`` (session 13, not yet run): the same three precisions at HunyuanVideo's shape as the model hands
   it over ((B, S, H, D) views, 256 text tokens, 205 valid): whole call, pre-pass, kernel, with and without text;
3. the compiled kernels: registers, spills, shared memory (``metadata.shared``), and in SASS the QGMMA
   (fp8 wgmma) and HGMMA counts (Triton's own cuobjdump / nvdisasm).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo (not an installed copy)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

REPORT: dict = {"steps": {}}
OUT: Path | None = None
T0 = time.time()


def log(*args):
    print(f"[{time.time() - T0:6.1f}s]", *args, flush=True)


def save():
    if OUT is None:
        return
    REPORT["elapsed_s"] = round(time.time() - T0, 2)
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(json.dumps(REPORT, indent=2, default=str) + "\n")
    tmp.replace(OUT)


def step(name):
    """Decorator: run, record the result or the exception under REPORT['steps'][name], save."""
    def wrap(fn):
        def run(*a, **kw):
            log(f"== {name}")
            REPORT["current_step"] = name
            t = time.time()
            try:
                REPORT["steps"][name] = {"ok": True, "result": fn(*a, **kw)}
            except Exception as exc:  # noqa: BLE001 - record and go on
                REPORT["steps"][name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000],
                                         "traceback": traceback.format_exc()[-4000:]}
                log(f"   FAILED: {type(exc).__name__}: {str(exc)[:300]}")
            REPORT["steps"][name]["seconds"] = round(time.time() - t, 2)
            REPORT.pop("current_step", None)
            save()
        return run
    return wrap


def watchdog(deadline: float):
    def fire():
        REPORT["timed_out"] = f"deadline {deadline:.0f} s passed during step {REPORT.get('current_step')!r}"
        log(REPORT["timed_out"])
        save()
        os._exit(3)
    timer = threading.Timer(deadline, fire)
    timer.daemon = True
    timer.start()


# ------------------------------------------------------------------------------------------- SASS report
def _tool(name: str) -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def sass_report(cubin: bytes) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        usage = subprocess.run([_tool("cuobjdump"), "-res-usage", str(path)], capture_output=True, text=True,
                               timeout=60).stdout
        sass = subprocess.run([_tool("nvdisasm"), "-c", str(path)], capture_output=True, text=True, timeout=60).stdout
    regs, local = re.search(r"REG:(\d+)", usage), re.search(r"LOCAL:(\d+)", usage)
    lines = [ln.split("*/", 1)[-1].strip() for ln in sass.splitlines() if "*/" in ln]
    return {"registers": int(regs.group(1)) if regs else None, "local_bytes": int(local.group(1)) if local else None,
            "spill_instructions": sum(bool(re.match(r"(@\S+ )?(STL|LDL)\b", ln)) for ln in lines),
            "qgmma": sum("QGMMA" in ln for ln in lines), "hgmma": sum("HGMMA" in ln for ln in lines),
            "qgmma_a_from_registers": sum(bool(re.match(r"QGMMA\S* R\d+, R\d+", ln)) for ln in lines),
            "wgmma_waits_leaving_one": sum("WARPGROUP.DEPBAR.LE gsb0, 0x1" in ln for ln in lines),
            "prmt": sum(bool(re.match(r"(@\S+ )?PRMT\b", ln)) for ln in lines),
            "f2fp": sum(bool(re.match(r"(@\S+ )?F2FP\b", ln)) for ln in lines),
            "instructions": len(lines)}


def compile_offline(variant: dict) -> dict:
    """The FP8 kernel compiled for sm_90 without a GPU (what --smoke reports)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon._runtime import GluonASTSource

    from sta_search.kernels.sta import gluon_fp8

    def desc(dtype, shape):
        gdt = {"fp8e4nv": gl.float8e4nv, "i8": gl.int8, "bf16": gl.bfloat16}[dtype]
        return f"tensordesc<{dtype}[{', '.join(map(str, shape))}],{gl.NVMMASharedLayout.get_default_for(shape, gdt)!r}>"

    c = dict(NT=5, NH=6, NW=10, TT=6, TH=8, TW=8, REM_T=6, REM_H=8, REM_W=8, HEAD_DIM=128, BLOCK_N=128, STAGES=3,
             HAS_PADDING=False, HAS_TEXT_MASK=False, OUT_NATURAL=True, PRODUCER_REGS=24, CONSUMER_REGS=240,
             PINGPONG=False, SLACK=0.0, QK_INT8=False)
    c.update(variant)
    qk = "i8" if c["QK_INT8"] else "fp8e4nv"
    kernel = gluon_fp8.sta_fwd_gluon_fp8_kernel
    sig = {n: "i32" for n in kernel.arg_names}
    sig.update(q_desc=desc(qk, [1, 64, 128]), k_desc=desc(qk, [1, 128, 128]),
               v_desc=desc("fp8e4nv", [1, 128, 128]), ot_desc=desc("bf16", [1, 64, 128]),
               o_desc=desc("bf16", [1, 64 // (c["TH"] * c["TW"]), c["TH"], c["TW"], 128] if c["OUT_NATURAL"]
                           else [1, 64, 128]),
               QScale="*fp32", KScale="*fp32", VScale="*fp32", Windows="*i32", HeadOrder="*i32", TextMask="*i8",
               qk_scale="fp32")
    for n in c:
        sig[n] = "constexpr"
    src = GluonASTSource(fn=kernel, signature=sig, constexprs={(kernel.arg_names.index(n),): v for n, v in c.items()})
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4))
    row = sass_report(compiled.asm["cubin"])
    row["shared_bytes"] = compiled.metadata.shared
    row["fits_227KB"] = compiled.metadata.shared <= 227 * 1024
    return row


def jit_kernels_report() -> list[dict]:
    """Every FP8 kernel the JIT compiled in this process: regs, spills, shared memory, SASS counts."""
    from sta_search.kernels.sta import gluon_fp8

    rows = []
    for device, caches in getattr(gluon_fp8.sta_fwd_gluon_fp8_kernel, "device_caches", {}).items():
        for key, kernel in caches[0].items():
            try:
                kernel._init_handles()
            except Exception:  # noqa: BLE001
                pass
            row = {"device": str(device), "n_regs": getattr(kernel, "n_regs", None),
                   "n_spills": getattr(kernel, "n_spills", None), "shared_bytes": kernel.metadata.shared}
            try:
                row.update(sass_report(kernel.asm["cubin"]))
            except Exception as exc:  # noqa: BLE001
                row["sass_error"] = str(exc)[:300]
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------- checks
CORRECTNESS = [
    # id, canvas, heads, windows, text_len, text_first, masked text, batch
    ("pad-mixed-text200-first-masked-b2", (10, 13, 20), 2, [(2, 2, 2), (1, 2, 3)], 200, True, True, 2),
    ("pad-text130-after-nomask", (9, 17, 11), 2, (1, 3, 2), 130, False, False, 1),
    ("div-mixed-text40-after-masked", (12, 16, 16), 3, [(1, 1, 1), (2, 2, 2), (1, 2, 1)], 40, False, True, 1),
]


def correctness_case(case, device, tiled: bool = True) -> dict:
    import torch

    from sta_search.kernels import Geometry
    from sta_search.kernels.sta import normalize_windows, sta_attention, sta_reference
    from sta_search.kernels.sta.gluon_fp8 import sta_gluon_fp8_tiled
    from test_kernel_fp8 import FP8_TOLERANCE, TILE, emulate_fp8, make_case
    from kernel_cases import natural_order, rel_rms, tile_order

    _, canvas, heads, windows, text_len, text_first, masked, batch = case
    geometry = Geometry(canvas, TILE)
    q, k, v, mask = make_case(canvas, heads, text_len, text_first, masked, batch, device=device, seed=1)
    table = normalize_windows(windows, heads)
    kw = dict(canvas=canvas, tile=TILE, windows=table, text_len=text_len, text_first=text_first, text_mask=mask)
    ref = sta_reference(q.double(), k.double(), v.double(), **kw)
    row = {"tokens": q.shape[2], "tolerance": FP8_TOLERANCE,
           "recipe_rel_rms": rel_rms(emulate_fp8(q, k, v, **kw), ref)}
    if device == "cuda":
        out = sta_attention(q, k, v, **kw, precision="fp8")
        torch.cuda.synchronize()
        row["finite"] = bool(torch.isfinite(out).all())
        row["rel_rms"] = rel_rms(out, ref) if row["finite"] else None
        row["pass"] = bool(row["finite"] and row["rel_rms"] < FP8_TOLERANCE
                           and row["rel_rms"] < 1.3 * row["recipe_rel_rms"])
        if not tiled:  # (each path compiles its own kernels: the tile-order check runs on the first case only)
            log("  ", {k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()})
            return row
        tiled_in = [tile_order(geometry, x, text_len, text_first) for x in (q, k, v)]
        poisoned = torch.full_like(tiled_in[0], float("nan"))
        sta_gluon_fp8_tiled(*tiled_in, geometry, table, text_len, mask, None, out=poisoned)
        tiled = natural_order(geometry, poisoned, text_len, text_first)
        row["tiled_poisoned_finite"] = bool(torch.isfinite(tiled).all())
        row["tiled_vs_natural_rel_rms"] = rel_rms(tiled, out) if row["tiled_poisoned_finite"] else None
        row["pass"] = bool(row["pass"] and row["tiled_poisoned_finite"] and row["tiled_vs_natural_rel_rms"] < 1e-2)
    log("  ", {k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()})
    return row


def timing(iters: int) -> dict:
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from sta_search.benchmark import median_ms
    from sta_search.kernels import Geometry
    from sta_search.kernels.sta import gluon_fp8, normalize_windows, sta_attention

    geometry = Geometry((30, 48, 80), (6, 8, 8))
    heads, D = 24, 128
    windows = normalize_windows((3, 3, 3), heads, device="cuda")
    sets = [[torch.randn(1, heads, geometry.video_len, D, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
            for _ in range(2)]
    kw = dict(canvas=geometry.canvas, tile=geometry.tile, windows=windows)
    rows: dict = {"shape": "hunyuan-720p (30,48,80) x 24 heads, d=128, bf16, windows (3,3,3), natural order",
                  "iters": iters, "ms": {}}

    def bf16(q, k, v):
        return sta_attention(q, k, v, **kw, backend="gluon")

    def fp8(q, k, v):
        return sta_attention(q, k, v, **kw, backend="gluon", precision="fp8")

    def int8(q, k, v):
        return sta_attention(q, k, v, **kw, backend="gluon", precision="int8")

    def prepass(q, k, v, qk_int8=False):
        return gluon_fp8.quantize_fp8(q, k, v, geometry, 0, layout="natural", qk_int8=qk_int8)

    def int8_prepass(q, k, v):
        return prepass(q, k, v, qk_int8=True)

    def dense(q, k, v):
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    for name, fn in (("gluon-bf16-natural", bf16), ("gluon-fp8-natural", fp8), ("fp8-prepass", prepass),
                     ("gluon-int8-natural", int8), ("int8-prepass", int8_prepass)):
        try:
            t = time.time()
            fn(*sets[0])
            torch.cuda.synchronize()
            rows.setdefault("first_call_s", {})[name] = round(time.time() - t, 3)
            rows["ms"][name] = median_ms(fn, sets, 2, iters)[0]
            log(f"   {name:<22} {rows['ms'][name]:9.3f} ms")
        except Exception as exc:  # noqa: BLE001
            rows.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"[:1000]
            log(f"   {name} FAILED: {exc}")
    for label, qk_int8 in (("fp8", False), ("int8", True)):  # the kernels alone, on pre-quantized inputs
        try:
            quantized = [prepass(*s, qk_int8=qk_int8) for s in sets]

            def kernel_only(i, quantized=quantized):  # the kernel follows the quantized inputs' dtype
                return gluon_fp8._run(sets[i][0], None, None, geometry, windows, 0, None, None, layout="natural",
                                      text_first=False, stages=3, quantized=quantized[i])
            rows["ms"][f"{label}-kernel-only"] = median_ms(kernel_only, [[0], [1]], 2, iters)[0]
            log(f"   {label + '-kernel-only':<22} {rows['ms'][f'{label}-kernel-only']:9.3f} ms")
            del quantized, kernel_only
        except Exception as exc:  # noqa: BLE001
            rows.setdefault("errors", {})[f"{label}-kernel-only"] = f"{type(exc).__name__}: {exc}"[:1000]
    for label, fn in (("fp8", fp8), ("int8", int8)):
        try:
            a, b = fn(*sets[0]), bf16(*sets[0])
            rows[f"{label}_vs_bf16_rel_rms"] = ((a.float() - b.float()).norm() / b.float().norm()).item()
            log(f"   {label} vs bf16 gluon rel RMS {rows[f'{label}_vs_bf16_rel_rms']:.3e}")
            del a, b
        except Exception as exc:  # noqa: BLE001
            rows.setdefault("errors", {})[f"{label}_vs_bf16"] = f"{type(exc).__name__}: {exc}"[:1000]
    try:
        rows["ms"]["cudnn-dense"] = median_ms(dense, sets, 1, 4)[0]
        log(f"   {'cudnn-dense':<22} {rows['ms']['cudnn-dense']:9.3f} ms")
    except Exception as exc:  # noqa: BLE001
        rows.setdefault("errors", {})["cudnn-dense"] = f"{type(exc).__name__}: {exc}"[:1000]
    ms = rows["ms"]
    if "cudnn-dense" in ms:
        rows["speedup_vs_cudnn"] = {k: ms["cudnn-dense"] / v for k, v in ms.items() if k != "cudnn-dense"}
    if "gluon-bf16-natural" in ms:
        rows["speedup_vs_bf16_gluon"] = {k: ms["gluon-bf16-natural"] / v for k, v in ms.items()
                                         if k.startswith(("gluon-fp8", "fp8-kernel", "gluon-int8", "int8-kernel"))}
    log("   speedups vs cuDNN:", {k: round(v, 2) for k, v in rows.get("speedup_vs_cudnn", {}).items()})
    return rows


def timing_model_call(iters: int) -> dict:
    """Where an 8-bit call's time goes at HunyuanVideo's shape as the model hands it over: q, k, v as (B, S, H, D)
    projections viewed as (B, H, S, D), 256 text tokens after the video with 205 valid (e2e runs measured 24.4 ms a
    call for fp8 in the model against 18.3 ms for the bare kernel). Per precision: the whole ``sta_attention`` call,
    the pre-pass alone, the kernel alone; the same without text; the bf16 kernel on the same inputs."""
    import torch

    from sta_search.benchmark import median_ms
    from sta_search.kernels import Geometry
    from sta_search.kernels.sta import gluon_fp8, normalize_windows, sta_attention

    geometry = Geometry((30, 48, 80), (6, 8, 8))
    heads, D, text_len = 24, 128, 256
    windows = normalize_windows((3, 3, 3), heads, device="cuda")
    mask = torch.zeros(1, text_len, dtype=torch.bool, device="cuda")
    mask[:, :205] = True
    S = geometry.video_len + text_len
    sets = [[torch.randn(1, S, heads, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2) for _ in range(3)]
            for _ in range(2)]
    rows: dict = {"shape": "hunyuan-720p (30,48,80) + 256 text (205 valid) x 24 heads, d=128, bf16, (B,S,H,D) views",
                  "iters": iters, "ms": {}}

    def record(name, fn, input_sets):
        try:
            rows["ms"][name] = median_ms(fn, input_sets, 2, iters)[0]
            log(f"   {name:<28} {rows['ms'][name]:9.3f} ms")
        except Exception as exc:  # noqa: BLE001
            rows.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"[:500]
            log(f"   {name} FAILED: {exc}")

    for T in (text_len, 0):
        tag = "text256" if T else "notext"
        inputs = sets if T else [[x[:, :, : geometry.video_len] for x in s] for s in sets]
        kw = dict(canvas=geometry.canvas, tile=geometry.tile, windows=windows, text_len=T,
                  text_mask=mask if T else None)
        record(f"bf16-call-{tag}", lambda q, k, v, kw=kw: sta_attention(q, k, v, **kw, backend="gluon"), inputs)
        for precision, qk_int8 in (("fp8", False), ("int8", True)):
            record(f"{precision}-call-{tag}",
                   lambda q, k, v, kw=kw, p=precision: sta_attention(q, k, v, **kw, backend="gluon", precision=p),
                   inputs)
            record(f"{precision}-prepass-{tag}",
                   lambda q, k, v, T=T, i8=qk_int8: gluon_fp8.quantize_fp8(q, k, v, geometry, T, qk_int8=i8), inputs)
            quantized = [gluon_fp8.quantize_fp8(*s, geometry, T, qk_int8=qk_int8) for s in inputs]
            record(f"{precision}-kernel-{tag}",
                   lambda i, T=T, qz=quantized: gluon_fp8._run(
                       inputs[i][0], None, None, geometry, windows, T, mask if T else None, None, layout="natural",
                       text_first=False, stages=3, quantized=qz[i]), [[0], [1]])
            del quantized
    return rows


def main(argv=None) -> int:
    global OUT
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="no GPU: offline sm_90 compile + CPU-side checks only")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--model-call", action="store_true",
                        help="also break an 8-bit call down at HunyuanVideo's shape as the model hands it over "
                             "((B,S,H,D) views, 256 text tokens): whole call, pre-pass, kernel; with and without text")
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds before the watchdog writes and exits")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    OUT = args.out / f"fp8-check-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}.json"
    watchdog(args.deadline)
    os.environ.pop("TRITON_INTERPRET", None)

    import torch
    import triton

    cuda = torch.cuda.is_available()
    REPORT["environment"] = {"torch": torch.__version__, "triton": triton.__version__, "python": sys.version.split()[0],
                             "device": torch.cuda.get_device_name() if cuda else "cpu",
                             "capability": list(torch.cuda.get_device_capability()) if cuda else None,
                             "smoke": args.smoke}
    log("environment", REPORT["environment"])
    save()
    hopper = cuda and torch.cuda.get_device_capability() == (9, 0)
    if args.smoke or not hopper:
        if not args.smoke:
            REPORT["note"] = "no Hopper GPU: ran the smoke steps only"
        step("compile_offline_hunyuan")(lambda: compile_offline({}))()
        step("compile_offline_hunyuan_int8")(lambda: compile_offline({"QK_INT8": True}))()
        step("compile_offline_padding_text")(lambda: compile_offline(
            dict(NT=4, NH=4, NW=7, REM_T=3, REM_H=6, REM_W=4, HAS_PADDING=True, HAS_TEXT_MASK=True)))()
        for case in CORRECTNESS[:1]:
            step(f"recipe_cpu_{case[0]}")(lambda c=case: correctness_case(c, "cpu"))()
    else:
        # Most of the time is JIT compilation (one Gluon kernel per geometry and path, ~5 s each): the first
        # case (both paths), then the timing, then the other cases.
        first, *rest = CORRECTNESS
        step(f"correctness_{first[0]}")(lambda: correctness_case(first, "cuda"))()
        step("timing_hunyuan_720p_333")(lambda: timing(args.iters))()
        if args.model_call:
            step("timing_model_call")(lambda: timing_model_call(args.iters))()
        for case in rest:
            step(f"correctness_{case[0]}")(lambda c=case: correctness_case(c, "cuda", tiled=False))()
        step("compiled_kernels")(jit_kernels_report)()
        for row in REPORT["steps"]["compiled_kernels"].get("result") or []:
            log("  ", row)
    REPORT["all_ok"] = all(s.get("ok") and (not isinstance(s.get("result"), dict) or s["result"].get("pass", True))
                           for s in REPORT["steps"].values())
    save()
    log(f"wrote {OUT}; all_ok={REPORT['all_ok']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
