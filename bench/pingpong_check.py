"""Does FA3's ping-pong (or FA4's lazy rescaling) make the Gluon STA kernel faster? (issue #18's 12x stretch; GPU only,
~1.5 minutes on an H200 per switch)

    python3 bench/pingpong_check.py --out DIR [--rounds 5] [--iters 10] [--switch pingpong|lazy]

``--switch lazy`` (session 12) compares the default kernel with FlashAttention-4's lazy rescaling instead
(``gluon_fwd.DEFAULT_RESCALE_SLACK = 8``: a row's reference max moves only when a block's max exceeds it by more than
2^8, and the accumulator is rescaled only when some row of the warpgroup moved; for the FP8 kernel
``gluon_fp8.RESCALE_SLACK`` = ``--fp8-slack``). Its outputs are not bit-identical (P is exponentiated against a
stale max), so the JSON reports their relative RMS difference, and ``lazy_correctness`` the error against float64 on
small cases with plain (N(0, 1)) and peaked (q x 6, so maxima move by more than the slack) inputs.
``--switch qkint8`` (session 13; fp8 shapes only): the FP8 kernel against ``precision="int8"`` (QK^T from int8 Q and
K; inputs quantized both ways beforehand, the kernel follows their dtype).

The Gluon kernel's two consumer warpgroups run free (each overlaps its own softmax with its PV wgmma). With
``PINGPONG`` they take turns to issue their wgmmas (an mbarrier handshake per key block), so one warpgroup's softmax
runs while the other's MMAs keep the tensor core busy. ``bench/softmax_ceiling.py`` (session 10) measured the non-exp
softmax work at 36% of the kernel at hunyuan-720p (3,3,3): that is what ping-pong could hide.

Per shape, in one process: cuDNN dense SDPA (the baseline), FlexAttention STA, and the Gluon kernel with and without
ping-pong, alternated over ``--rounds`` rounds of ``--iters`` timed calls (two input sets rotated, medians). Outputs of
the two variants are compared bit for bit. Shapes: hunyuan-720p (30x48x80, 24 heads, d=128) at (3,3,3) in tile order
and in place, at (5,5,5), and mixed windows; wan-480p (21x30x52, 12 heads) at (3,3,3) through the compact path;
hunyuan-720p at d=64 (48 heads) at (3,3,3); the FP8 kernel alone at hunyuan-720p (3,3,3) (its 1.5x target
against bf16 needs the softmax hidden).

Writes ``DIR/pingpong-check-<utc>.json``: device, versions, per shape the medians (ms) and the speedups.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = [
    # name, canvas, heads, head dim, windows, path
    ("hunyuan-720p-333-tiled", (30, 48, 80), 24, 128, (3, 3, 3), "tiled"),
    ("hunyuan-720p-333-in-place", (30, 48, 80), 24, 128, (3, 3, 3), "natural"),
    ("hunyuan-720p-555-tiled", (30, 48, 80), 24, 128, (5, 5, 5), "tiled"),
    ("hunyuan-720p-mixed-tiled", (30, 48, 80), 24, 128, "mixed", "tiled"),
    ("wan-480p-333-compact", (21, 30, 52), 12, 128, (3, 3, 3), "natural"),
    ("hunyuan-720p-333-d64-tiled", (30, 48, 80), 48, 64, (3, 3, 3), "tiled"),
    ("hunyuan-720p-333-fp8-kernel", (30, 48, 80), 24, 128, (3, 3, 3), "fp8"),
]


def set_switch(switch: str, on: bool, fp8_slack: float = 4.0) -> None:
    from sta_search.kernels.sta import gluon_fp8, gluon_fwd

    if switch == "pingpong":
        gluon_fwd.DEFAULT_PINGPONG = on
    elif switch == "qkint8":  # nothing to set: the kernel follows the quantized inputs' dtype
        pass
    else:
        gluon_fwd.DEFAULT_RESCALE_SLACK = 8.0 if on else 0.0
        gluon_fp8.RESCALE_SLACK = fp8_slack if on else 0.0


def run_shape(name, canvas, heads, head_dim, windows, path, rounds, iters, switch="pingpong", fp8_slack=4.0) -> dict:
    import torch
    import torch.nn.functional as F

    from sta_search.benchmark import median_ms
    from sta_search.kernels import Geometry, to_tiles
    from sta_search.kernels.sta import gluon_fwd, normalize_windows

    geometry = Geometry(canvas, (6, 8, 8))
    if windows == "mixed":
        table = torch.tensor([(1 + h % 3, 1 + (h // 3) % 4, 2 + h % 4) for h in range(heads)], dtype=torch.int32)
        windows = table
    table = normalize_windows(windows, heads, device="cuda")
    natural = [[torch.randn(1, heads, geometry.video_len, head_dim, device="cuda", dtype=torch.bfloat16)
                for _ in range(3)] for _ in range(2)]
    tiled = [[to_tiles(geometry, x) for x in s] for s in natural] if path == "tiled" else None
    outs = [torch.empty_like((tiled or natural)[i][0]) for i in range(2)]
    row: dict = {"canvas": list(canvas), "heads": heads, "head_dim": head_dim, "tile": [6, 8, 8],
                 "windows": table.tolist() if heads <= 4 or isinstance(windows, torch.Tensor) else list(windows),
                 "path": path, "density": float(sum(geometry.density(tuple(w)) for w in table.tolist()) / heads),
                 "ms": {}, "rounds": {}}

    def gluon(on):
        def call(i):
            set_switch(switch, on, fp8_slack)
            if path == "tiled":
                return gluon_fwd.sta_gluon_tiled(*tiled[i], geometry, table, 0, None, None, out=outs[i])
            return gluon_fwd.sta_gluon_natural(*natural[i], geometry, table, 0, False, None, None, out=outs[i])
        return call

    def cudnn(i):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return F.scaled_dot_product_attention(*natural[i])

    if path == "fp8":  # the FP8 kernel alone (its quantization pre-pass excluded), natural-order output
        from sta_search.kernels.sta import gluon_fp8

        quantized = {on: [gluon_fp8.quantize_fp8(*s, geometry, 0, layout="natural", qk_int8=on) for s in natural]
                     for on in ((False, True) if switch == "qkint8" else (False, ))}

        def gluon(on):
            def call(i):
                set_switch(switch, on, fp8_slack)
                return gluon_fp8._run(natural[i][0], None, None, geometry, table, 0, None, None, layout="natural",
                                      text_first=False, stages=3, quantized=quantized[on and switch == "qkint8"][i])
            return call

    free, pingpong = gluon(False), gluon(True)
    a = free(0).clone()
    b = pingpong(0).clone()
    row[f"{switch}_bit_identical"] = bool(torch.equal(a, b))
    row[f"{switch}_rel_rms_vs_default"] = float((b.double() - a.double()).norm() / a.double().norm())
    other = f"gluon-{switch}"
    per = {"gluon": [], other: []}
    for r in range(rounds):  # alternate, so drift (clocks, heat) hits both alike
        for key, fn in (("gluon", free), (other, pingpong)) if r % 2 == 0 else ((other, pingpong), ("gluon", free)):
            per[key].append(median_ms(fn, [[0], [1]], 2, iters)[0])
    for key, values in per.items():
        row["rounds"][key] = [round(v, 4) for v in values]
        row["ms"][key] = statistics.median(values)
    try:
        row["ms"]["cudnn-dense"] = median_ms(cudnn, [[0], [1]], 1, 3)[0]
    except Exception as exc:  # noqa: BLE001
        row["errors"] = {"cudnn-dense": f"{type(exc).__name__}: {exc}"[:400]}
    ms = row["ms"]
    row[f"{switch}_speedup"] = ms["gluon"] / ms[other]
    if "cudnn-dense" in ms:
        row["vs_cudnn"] = {k: ms["cudnn-dense"] / ms[k] for k in ("gluon", other)}
    set_switch(switch, False)
    del natural, tiled, outs
    torch.cuda.empty_cache()
    return row


def lazy_correctness(fp8_slack: float) -> dict:
    """Relative RMS against float64 of the default and the lazy-rescaling kernels (bf16 Gluon at slack 8, FP8 at
    ``fp8_slack`` and 8) on a padded canvas with mixed windows and masked text, plain and peaked inputs."""
    import torch

    from sta_search.kernels import Geometry
    from sta_search.kernels.sta import normalize_windows, sta_attention, sta_reference

    canvas, tile, heads, text_len = (10, 13, 20), (6, 8, 8), 3, 200
    windows = [(1, 1, 1), (2, 2, 3), (2, 1, 2)]
    out = {}
    for head_dim in (128, 64):
        for kind, q_mul in (("plain", 1.0), ("peaked", 6.0)):
            g = torch.Generator(device="cuda").manual_seed(1234)
            n = Geometry(canvas, tile).video_len + text_len
            q, k, v = (torch.randn(1, heads, n, head_dim, device="cuda", generator=g, dtype=torch.bfloat16)
                       for _ in range(3))
            q = q * q_mul
            mask = torch.rand(1, text_len, device="cuda", generator=g) > 0.3
            mask[:, 0] = True
            kw = dict(canvas=canvas, tile=tile, windows=windows, text_len=text_len, text_first=True, text_mask=mask)
            ref = sta_reference(q.double(), k.double(), v.double(),
                                **{**kw, "windows": normalize_windows(windows, heads)})

            def err(x):
                return float((x.double() - ref).norm() / ref.norm())

            row = {}
            for label, precision, slack in (("bf16", "bf16", 0.0), ("bf16-lazy8", "bf16", 8.0),
                                            ("fp8", "fp8", 0.0), (f"fp8-lazy{fp8_slack:g}", "fp8", fp8_slack),
                                            ("fp8-lazy8", "fp8", 8.0)):
                from sta_search.kernels.sta import gluon_fp8, gluon_fwd

                gluon_fwd.DEFAULT_RESCALE_SLACK = slack if precision == "bf16" else 0.0
                gluon_fp8.RESCALE_SLACK = slack if precision == "fp8" else 0.0
                try:
                    row[label] = err(sta_attention(q, k, v, **kw, backend="gluon", precision=precision))
                except Exception as exc:  # noqa: BLE001
                    row[label] = f"{type(exc).__name__}: {exc}"[:300]
            set_switch("lazy", False)
            out[f"d{head_dim}-{kind}"] = row
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--shapes", nargs="+", default=None, help="names (default: all)")
    parser.add_argument("--switch", choices=["pingpong", "lazy", "qkint8"], default="pingpong")
    parser.add_argument("--fp8-slack", type=float, default=4.0, help="--switch lazy: gluon_fp8.RESCALE_SLACK")
    args = parser.parse_args(argv)

    import torch
    import triton

    result = {"bench": "pingpong_check", "switch": args.switch, "fp8_slack": args.fp8_slack,
              "utc": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()), "device": torch.cuda.get_device_name(),
              "torch": torch.__version__, "triton": triton.__version__, "shapes": {}}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = {"pingpong": "pingpong", "lazy": "lazy-rescale", "qkint8": "qk-int8"}[args.switch]
    path = args.out / f"{stem}-check-{result['utc']}.json"
    if args.switch == "lazy":
        result["lazy_correctness"] = lazy_correctness(args.fp8_slack)
        print("lazy_correctness", json.dumps(result["lazy_correctness"]), flush=True)
    for name, *spec in SHAPES:
        if args.shapes and name not in args.shapes:
            continue
        try:
            row = run_shape(name, *spec, args.rounds, args.iters, args.switch, args.fp8_slack)
        except Exception as exc:  # noqa: BLE001  (recorded; the next shape still runs)
            row = {"error": f"{type(exc).__name__}: {exc}"[:1500]}
        result["shapes"][name] = row
        print(name, json.dumps({k: row.get(k) for k in ("ms", f"{args.switch}_speedup", "vs_cudnn",
                                                        f"{args.switch}_bit_identical",
                                                        f"{args.switch}_rel_rms_vs_default", "error")}), flush=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
