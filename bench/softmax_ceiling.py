"""How much of the Gluon STA kernels' time is the softmax? An upper bound for FP8 (issue #18), GPU only.

    python3 bench/softmax_ceiling.py --out DIR          # H200/H100: ~2 minutes, one subprocess per mode
    python3 bench/softmax_ceiling.py --compile-only     # anywhere: compile each mode for sm_90, count SASS ops

At hunyuan-720p (30x48x80, 24 heads, d=128), (3,3,3), tile order, this times the bf16 Gluon kernel and the FP8
kernel alone (its quantization pre-pass excluded) with the online softmax swapped for cheaper code:

- ``exact``: the kernels as shipped;
- ``no-exp``: ``exp2`` replaced by a multiply-add (row max, row sum and the O rescale kept): what the MUFU unit
  costs;
- ``none``: no row max and no exponential (P = scaled scores, the rescale factor 1; the row sum kept so nothing
  is optimised away): what the whole softmax costs.
- ``no-mma`` (session 13): the opposite: no wgmma at all (QK^T's scores are the SM clock, read once per block,
  times the column index, so nothing folds; PV is skipped, so P's e4m3/bf16 packing goes dead), the softmax, the accumulator
  rescale and the TMA pipeline kept: what the softmax costs without the tensor core. If ``exact`` is close to
  ``none`` + ``no-mma``, softmax and MMAs run in series (the two consumer warpgroups do not hide each other's
  softmax); if it is close to the larger of the two, they overlap. Compiled for sm_90: the video loop keeps 393 of
  the bf16 kernel's 445 SASS instructions per block and 425 of FP8's 474 (all 66 ``MUFU.EX2``; no wgmma).

The outputs of the swapped modes are meaningless: only their times count. If FP8 gains little even with no
softmax, the floor is the pipeline (TMA issue, barriers, the producer), not the exponentials; if ``none`` is far
faster in FP8 than in bf16, FA3's softmax tricks (exp2 on the FMA units for part of a row, ping-pong between the
warpgroups) are where the remaining FP8 speed is. Each mode runs in a fresh process, because the swap happens
before the kernels are first compiled (Triton remembers the functions a kernel called).

Writes ``DIR/softmax-ceiling-<utc>.json``: device, versions, per mode the medians (ms) and ratios to ``exact``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = ("exact", "no-exp", "none", "no-mma")


def _install(mode: str) -> None:
    """Swap the kernels' softmax for ``mode`` (before their first compile)."""
    if mode == "exact":
        return
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl

    from sta_search.kernels.sta import gluon_fp8, gluon_fwd

    if mode == "no-exp":
        @gluon.jit
        def softmax(s_acc, m_i, l_i, qk_scale, key_ok, MASKED: gl.constexpr, LOG2_MUL: gl.constexpr = 0.0,
                    SLACK: gl.constexpr = 0.0):
            if MASKED:
                s_acc = gl.where(key_ok, s_acc, float("-inf"))
            m_new = gl.maximum(m_i, gl.max(s_acc, 1) * qk_scale)
            if MASKED:
                m_use = gl.where(m_new == float("-inf"), 0.0, m_new)
            else:
                m_use = m_new
            p = s_acc * qk_scale - gl.expand_dims(m_use, 1) + 1.0  # a multiply-add where exp2 was
            alpha = m_i - m_use + 1.0
            l_i = l_i * alpha + gl.sum(p, 1)
            return p, alpha, m_new, l_i
    elif mode == "none":
        @gluon.jit
        def softmax(s_acc, m_i, l_i, qk_scale, key_ok, MASKED: gl.constexpr, LOG2_MUL: gl.constexpr = 0.0,
                    SLACK: gl.constexpr = 0.0):
            p = s_acc * qk_scale
            alpha = m_i * 0.0 + 1.0
            l_i = l_i + gl.sum(p, 1)
            return p, alpha, m_i, l_i
    else:  # no-mma: the softmax stays, the wgmmas go
        @gluon.jit
        def fake_mma(a, b, acc, use_acc=True, is_async=False):
            if use_acc:  # PV: the accumulator passes through
                out = acc
            else:  # QK^T: the clock, once per block, times the column (values the compiler cannot know or share)
                t = gl.inline_asm_elementwise("mov.u32 $0, %clock;", "=r,r", [gl.program_id(0)], dtype=gl.int32,
                                              is_pure=False, pack=1)
                cols = gl.arange(0, acc.shape[1], layout=gl.SliceLayout(0, acc.type.layout))
                out = acc + gl.expand_dims(((t & 255) * cols).to(acc.dtype), 0)
            return out

        @gluon.jit
        def fake_wait(num_outstanding=0, deps=None):
            return deps[0]

        for module in (gluon_fwd, gluon_fp8):
            module.warpgroup_mma = fake_mma
            module.warpgroup_mma_wait = fake_wait
        return

    gluon_fwd._softmax = softmax
    gluon_fp8._softmax = softmax


def _time_mode(mode: str, iters: int) -> dict:
    import torch

    from sta_search.benchmark import median_ms
    from sta_search.kernels import Geometry, to_tiles
    from sta_search.kernels.sta import gluon_fp8, gluon_fwd, normalize_windows

    _install(mode)
    geometry = Geometry((30, 48, 80), (6, 8, 8))
    heads, D = 24, 128
    windows = normalize_windows((3, 3, 3), heads, device="cuda")
    natural = [[torch.randn(1, heads, geometry.video_len, D, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
               for _ in range(2)]
    tiled = [[to_tiles(geometry, x) for x in s] for s in natural]
    outs = [torch.empty_like(s[0]) for s in tiled]
    row: dict = {"ms": {}}

    def bf16(i):
        return gluon_fwd.sta_gluon_tiled(*tiled[i], geometry, windows, 0, None, None, out=outs[i])

    quantized = [gluon_fp8.quantize_fp8(*s, geometry, 0, layout="natural") for s in natural]

    def fp8(i):
        return gluon_fp8._run(natural[i][0], None, None, geometry, windows, 0, None, None, layout="natural",
                              text_first=False, stages=3, quantized=quantized[i])

    for name, fn in (("bf16-gluon-tiled", bf16), ("fp8-kernel-only", fp8)):
        try:
            row["ms"][name] = median_ms(fn, [[0], [1]], 2, iters)[0]
        except Exception as exc:  # noqa: BLE001  (recorded; the other kernel may still run)
            row.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"[:800]
    return row


def _compile_mode(mode: str) -> dict:
    """sm_90 compile of the bf16 kernel with this mode's softmax: registers, spills, MUFU.EX2 and HGMMA counts."""
    sys.path.insert(0, str(ROOT / "bench"))
    import inspect_sass

    import tempfile

    _install(mode)
    compiled = inspect_sass.compile_gluon_variant(dict(inspect_sass.GLUON))
    row = inspect_sass.analyse(compiled.asm["cubin"], Path(tempfile.mkdtemp()), mode)
    return {k: row[k] for k in ("registers", "spill_instructions", "instructions", "mufu_ex2", "hgmma",
                                "hgmma_waits_leaving_one", "sass_sha1")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--compile-only", action="store_true", help="sm_90 compile report of each mode, no GPU")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="modes to run (default: all)")
    parser.add_argument("--mode", choices=MODES, default=None, help=argparse.SUPPRESS)  # one subprocess's job
    args = parser.parse_args(argv)

    if args.mode is not None:  # child: one mode, JSON on stdout's last line
        row = _compile_mode(args.mode) if args.compile_only else _time_mode(args.mode, args.iters)
        print(json.dumps(row))
        return 0

    import torch
    import triton

    result = {"bench": "softmax_ceiling", "utc": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "none (compile only)",
              "torch": torch.__version__, "triton": triton.__version__,
              "shape": "hunyuan-720p (30,48,80) x 24 heads, d=128, (3,3,3), bf16 tile order / fp8 kernel alone",
              "compile_only": args.compile_only, "modes": {}}
    for mode in args.modes:
        cmd = [sys.executable, __file__, "--mode", mode, "--iters", str(args.iters)]
        if args.compile_only:
            cmd.append("--compile-only")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        try:
            result["modes"][mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            result["modes"][mode] = {"error": (proc.stderr or proc.stdout)[-1500:]}
        print(mode, json.dumps(result["modes"][mode]), flush=True)
    exact = result["modes"].get("exact", {}).get("ms", {})
    for mode, row in result["modes"].items():
        if mode != "exact" and "ms" in row:
            row["speedup_over_exact"] = {k: exact[k] / v for k, v in row["ms"].items() if k in exact}
    if exact.get("bf16-gluon-tiled") and exact.get("fp8-kernel-only"):
        result["fp8_over_bf16"] = {mode: row["ms"]["bf16-gluon-tiled"] / row["ms"]["fp8-kernel-only"]
                                   for mode, row in result["modes"].items()
                                   if {"bf16-gluon-tiled", "fp8-kernel-only"} <= set(row.get("ms", {}))}
    if not args.compile_only:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"softmax-ceiling-{result['utc']}.json"
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {path}")
    else:
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
