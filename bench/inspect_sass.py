"""Compile the STA kernel for Hopper (sm_90) on any machine, no GPU needed, and report what the GPU would run.

    python bench/inspect_sass.py [--out DIR] [--variant NAME ...]

For each variant (hunyuan-720p constexprs, tile-order TMA path, bf16, d=128 unless named ``-d64``) this prints and writes to
``DIR/sass-report.json``:

- registers per thread, local-memory spills, shared memory (from the cubin, via Triton's cuobjdump);
- in the window loop's SASS: the HGMMA (wgmma) instructions, where the warpgroup waits for them
  (``WARPGROUP.DEPBAR``), the CTA-wide barriers (``BAR.SYNC``) and the ``MUFU.EX2`` count;
- whether two variants compile to the same instructions (e.g. ``tl.range(warp_specialize=True)`` on
  sm_90); compared without the line info that the cubin bytes also hold.

The ``gluon*`` variants compile the warp-specialized Gluon kernel (sta_search/kernels/sta/gluon_fwd.py) the same way:
its consumer warpgroups sync only among their own 128 threads (``BAR.SYNC id, 0x80``) and wait for QK^T
with PV still in flight (``WARPGROUP.DEPBAR.LE gsb0, 0x1``).

It is the evidence behind the Triton kernel's "matmul-rate ceiling" in bench/NOTES.md: one loop iteration waits for its
QK^T wgmma before the softmax, and CTA-wide barriers around the TMA issue keep both warpgroups of the
CTA in step, so softmax and MMA never overlap (FA3's ping-pong does exactly that overlap).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile for real, even where tests set the interpreter

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from sta_search.kernels.sta import triton_fwd  # noqa: E402

HUNYUAN = dict(NT=5, NH=6, NW=10, TT=6, TH=8, TW=8, REM_T=6, REM_H=8, REM_W=8, HEAD_DIM=128, BLOCK_M=128,
               BLOCK_N=128, HAS_PADDING=False, HAS_TEXT=False, HAS_TEXT_MASK=False, DOT_PRECISION="tf32",
               UPCAST_DOTS=False, USE_TMA=True, NATURAL=False, WARP_SPECIALIZE=False, TEXT_TMA=False,
               TEXT_BEFORE=False)
VARIANTS = {
    "default": ({}, dict(num_warps=8, num_stages=3)),
    "warp-specialize": (dict(WARP_SPECIALIZE=True), dict(num_warps=8, num_stages=3)),
    "text-before": (dict(HAS_TEXT=True, HAS_TEXT_MASK=True, TEXT_TMA=True, TEXT_BEFORE=True),
                    dict(num_warps=8, num_stages=3)),
    # a padded canvas (wan-480p) in compact tile order: the state-machine walk, a mask on partial blocks only
    "compact-wan480p": (dict(NT=4, NH=4, NW=7, REM_T=3, REM_H=6, REM_W=4, COMPACT=True, HAS_TEXT=True,
                             HAS_TEXT_MASK=True), dict(num_warps=8, num_stages=3)),
    "padded-wan480p": (dict(NT=4, NH=4, NW=7, REM_T=3, REM_H=6, REM_W=4, HAS_PADDING=True, HAS_TEXT=True,
                            HAS_TEXT_MASK=True), dict(num_warps=8, num_stages=3)),
}


GLUON = dict(NT=5, NH=6, NW=10, TT=6, TH=8, TW=8, REM_T=6, REM_H=8, REM_W=8, HEAD_DIM=128, BLOCK_N=128, STAGES=3,
             HAS_PADDING=False, HAS_TEXT_MASK=False, NATURAL=False, PRODUCER_REGS=24, CONSUMER_REGS=240,
             MASS=False, COMPACT=False, PINGPONG=False, SLACK=0.0)
WAN_480P = dict(NT=4, NH=4, NW=7, REM_T=3, REM_H=6, REM_W=4, HAS_PADDING=True)
GLUON_VARIANTS = {
    "gluon": {},
    "gluon-natural": dict(NATURAL=True),
    "gluon-natural-text": dict(NATURAL=True, HAS_TEXT_MASK=True),
    "gluon-natural-wan480p": dict(NATURAL=True, **WAN_480P),
    # head dim 64 (CogVideoX, LTX-Video): the default ring of 4 K/V stages, and 6 (the most that fits 227 KB)
    "gluon-d64": dict(HEAD_DIM=64, STAGES=4),
    "gluon-d64-natural": dict(HEAD_DIM=64, STAGES=4, NATURAL=True),
    "gluon-d64-natural-text": dict(HEAD_DIM=64, STAGES=4, NATURAL=True, HAS_TEXT_MASK=True),
    "gluon-d64-natural-wan480p": dict(HEAD_DIM=64, STAGES=4, NATURAL=True, **WAN_480P),
    "gluon-d64-stages6": dict(HEAD_DIM=64, STAGES=6),
    # the profiler's fused dense pass with per-tile softmax mass (kernels/recall/gluon_fused.py)
    "gluon-mass-natural-text": dict(NATURAL=True, HAS_TEXT_MASK=True, MASS=True),
    "gluon-mass-natural-wan480p": dict(NATURAL=True, MASS=True, **WAN_480P),
    # padded canvases in compact tile order (real tokens first in every tile)
    "gluon-compact-wan480p": {**WAN_480P, "COMPACT": True, "HAS_PADDING": False},
    "gluon-compact-wan480p-text": {**WAN_480P, "COMPACT": True, "HAS_PADDING": False, "HAS_TEXT_MASK": True},
    "gluon-tiled-wan480p": dict(**WAN_480P),
    "gluon-mass-compact-wan480p": {**WAN_480P, "COMPACT": True, "HAS_PADDING": False, "MASS": True},
    # FA3's ping-pong: the consumer warpgroups take turns to issue their wgmmas (an mbarrier handshake)
    "gluon-pingpong": dict(PINGPONG=True),
    "gluon-pingpong-natural-text": dict(NATURAL=True, HAS_TEXT_MASK=True, PINGPONG=True),
    "gluon-pingpong-compact-wan480p": {**WAN_480P, "COMPACT": True, "HAS_PADDING": False, "PINGPONG": True},
    # FlashAttention-4's lazy rescaling: the accumulator is rescaled only when a row's max grew by > SLACK (log2)
    "gluon-lazy8": dict(SLACK=8.0),
    "gluon-lazy8-natural": dict(NATURAL=True, SLACK=8.0),
    "gluon-lazy8-mass-natural-text": dict(NATURAL=True, HAS_TEXT_MASK=True, MASS=True, SLACK=8.0),
}


def compile_gluon_variant(constexprs: dict):
    """The warp-specialized Gluon kernel (sta_search/kernels/sta/gluon_fwd.py) with these constexprs, for sm_90."""
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon._runtime import GluonASTSource

    from sta_search.kernels.sta import gluon_fwd

    def desc(shape):
        return f"tensordesc<bf16[{', '.join(map(str, shape))}],{gl.NVMMASharedLayout.get_default_for(shape, gl.bfloat16)!r}>"

    kernel = gluon_fwd.sta_fwd_gluon_kernel
    signature = {name: "i32" for name in kernel.arg_names}
    plane = constexprs["TH"] * constexprs["TW"]
    d = constexprs["HEAD_DIM"]
    for names, rows in ((("q_desc", "o_desc"), gluon_fwd.QUERY_ROWS), (("k_desc", "v_desc"), constexprs["BLOCK_N"])):
        video = [1, rows // plane, constexprs["TH"], constexprs["TW"], d] if constexprs["NATURAL"] else [1, rows, d]
        for name in names:
            signature[name] = desc(video)
            signature[name[0] + "t_desc"] = desc([1, rows, d])
    signature.update(Windows="*i32", HeadOrder="*i32", TextMask="*i8", MassLog="*fp32", LseOut="*fp32", qk_scale="fp32")
    for name in constexprs:
        signature[name] = "constexpr"
    source = GluonASTSource(fn=kernel, signature=signature,
                            constexprs={(kernel.arg_names.index(n),): v for n, v in constexprs.items()})
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4))


def compile_variant(constexprs: dict, options: dict):
    kernel = triton_fwd.sta_fwd_kernel
    signature = {name: "i32" for name in kernel.arg_names}
    for name in ("Q", "K", "V", "Out", "QDesc", "ODesc"):
        signature[name] = "*bf16"
    for name in ("Windows", "HeadOrder", "TextMask"):
        signature[name] = "*i32"
    block = f"tensordesc<bf16[1, 1, {constexprs['BLOCK_N']}, {constexprs['HEAD_DIM']}]>"
    signature["KDesc"] = signature["VDesc"] = block
    signature["KTDesc"] = signature["VTDesc"] = block if constexprs["TEXT_TMA"] else "*bf16"
    signature["qk_scale"] = "fp32"
    for name in constexprs:
        signature[name] = "constexpr"
    source = ASTSource(fn=kernel, signature=signature,
                       constexprs={(kernel.arg_names.index(n),): v for n, v in constexprs.items()})
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)


def tool(name: str) -> str:
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def analyse(cubin: bytes, work: Path, tag: str) -> dict:
    path = work / f"{tag}.cubin"
    path.write_bytes(cubin)
    usage = subprocess.run([tool("cuobjdump"), "-res-usage", str(path)], capture_output=True, text=True).stdout
    sass = subprocess.run([tool("nvdisasm"), "-c", str(path)], capture_output=True, text=True).stdout
    (work / f"{tag}.sass").write_text(sass)
    regs = re.search(r"REG:(\d+)", usage)
    local = re.search(r"LOCAL:(\d+)", usage)
    lines = [ln.split("*/", 1)[-1].strip().rstrip(" ;") for ln in sass.splitlines() if "*/" in ln]
    return {
        "registers": int(regs.group(1)) if regs else None,
        "local_bytes": int(local.group(1)) if local else None,
        "spill_instructions": sum(1 for ln in lines if re.match(r"(@\S+ )?(STL|LDL)\b", ln)),
        "hgmma": sum("HGMMA" in ln for ln in lines),
        "hgmma_waits": sum("WARPGROUP.DEPBAR" in ln for ln in lines),
        # a wait that leaves one wgmma group in flight: the softmax of block j overlapping PV of j - 1
        "hgmma_waits_leaving_one": sum("WARPGROUP.DEPBAR.LE gsb0, 0x1" in ln for ln in lines),
        "named_barriers_128_threads": sum(bool(re.match(r"(@\S+ )?BAR.SYNC\S* 0x\w+, 0x80", ln)) for ln in lines),
        "cta_barriers": sum("BAR.SYNC" in ln for ln in lines),
        "mufu_ex2": sum("MUFU.EX2" in ln for ln in lines),
        "cubin_sha1": hashlib.sha1(cubin).hexdigest(),
        # instructions only (the cubin also holds line info, which moves with unrelated source edits)
        "sass_sha1": hashlib.sha1("\n".join(re.sub(r"\s+", " ", ln.split("/*")[0]) for ln in lines).encode()).hexdigest(),
        "instructions": len(lines),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/sass"))
    parser.add_argument("--variant", nargs="+", default=list(VARIANTS) + list(GLUON_VARIANTS),
                        choices=list(VARIANTS) + list(GLUON_VARIANTS))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"triton": triton.__version__, "target": "cuda sm_90", "variants": {}}
    for tag in args.variant:
        if tag in GLUON_VARIANTS:
            options = dict(num_warps=4, partitions="2 consumer warpgroups + 1 producer warp")
            compiled = compile_gluon_variant({**GLUON, **GLUON_VARIANTS[tag]})
        else:
            overrides, options = VARIANTS[tag]
            compiled = compile_variant({**HUNYUAN, **overrides}, options)
        row = analyse(compiled.asm["cubin"], args.out, tag)
        row.update(shared_bytes=compiled.metadata.shared, **options)
        report["variants"][tag] = row
        print(tag, row, flush=True)
    shas = {tag: row["sass_sha1"] for tag, row in report["variants"].items()}
    if "default" in shas and "warp-specialize" in shas:
        report["warp_specialize_changes_sass"] = shas["default"] != shas["warp-specialize"]
        print("warp_specialize changes the sm_90 instructions:", report["warp_specialize_changes_sass"])
    (args.out / "sass-report.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
