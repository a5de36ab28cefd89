"""Kernel benchmark: STA (our Triton and Gluon kernels, FlexAttention) against dense SDPA (cuDNN, FlashAttention-2) on one GPU.

Everything runs in one process on the same inputs: medians of per-call CUDA-event timings after
warm-up, with the inputs rotated over several independent sets so L2 never holds the last call's
data. Effective TFLOP/s counts only attended (query, key) pairs: ``4 * D * pairs`` per head.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from .errors import UserError
from .options import parse_triple  # the CLI parser: "t,h,w" text or an already parsed triple

Triple = tuple[int, int, int]


@dataclass(frozen=True)
class BenchShape:
    """One attention call: a video canvas (plus optional joint text) with per-head windows."""

    name: str
    canvas: Triple
    heads: int
    head_dim: int = 128
    tile: Triple = (6, 8, 8)
    batch: int = 1
    windows: tuple[Triple, ...] = ((3, 3, 3),)  # one entry for every head, or one per head
    text_len: int = 0
    text_valid: int | None = None  # real text keys per row (the rest padded out); None = all real
    dtype: str = "bfloat16"

    def window_table(self) -> list[Triple]:
        return list(self.windows) * self.heads if len(self.windows) == 1 else list(self.windows)


NAMED_SHAPES = {
    "hunyuan-720p": BenchShape("hunyuan-720p", (30, 48, 80), 24),
    "wan-480p": BenchShape("wan-480p", (21, 30, 52), 12),
    "wan-720p": BenchShape("wan-720p", (21, 45, 80), 40),
}

# Per-head windows whose mean tile volume equals (3,3,3)'s 27 (45, 9, 45, 9, 27, 27).
MIXED_WINDOWS: tuple[Triple, ...] = ((3, 3, 5), (1, 3, 3), (5, 3, 3), (3, 3, 1), (3, 3, 3), (1, 3, 9))


def make_shape(name: str | None = "hunyuan-720p", *, canvas: str | None = None, heads: int | None = None,
               window: str | None = None, text_len: int | None = None, head_dim: int | None = None,
               tile: str | None = None, batch: int | None = None) -> BenchShape:
    """A named shape with overrides. ``window`` is ``t,h,w`` or ``mixed`` (a per-head table)."""
    if name is not None and name not in NAMED_SHAPES:
        raise UserError(f"unknown shape {name!r}; choose one of {', '.join(NAMED_SHAPES)}")
    shape = NAMED_SHAPES[name] if name else BenchShape("custom", (30, 48, 80), 24)
    if canvas is not None:
        shape = replace(shape, name=f"{shape.name}+canvas", canvas=parse_triple(canvas, "--canvas"))
    if tile is not None:
        shape = replace(shape, tile=parse_triple(tile, "--tile"))
        if math.prod(shape.tile) % 16:
            raise UserError(f"--tile volume must be a multiple of 16, got {tile}")
    if heads is not None:
        if heads < 1:
            raise UserError(f"--heads must be >= 1, got {heads}")
        shape = replace(shape, heads=heads)
    if head_dim is not None:
        if head_dim not in (32, 64, 128):
            raise UserError(f"--head-dim must be 32, 64 or 128, got {head_dim}")
        shape = replace(shape, head_dim=head_dim)
    if batch is not None:
        shape = replace(shape, batch=batch)
    if window is not None:
        if window == "mixed":
            table = tuple(MIXED_WINDOWS[h % len(MIXED_WINDOWS)] for h in range(shape.heads))
            shape = replace(shape, windows=table)
        else:
            shape = replace(shape, windows=(parse_triple(window, "--window"),))
    if text_len is not None:
        if text_len < 0:
            raise UserError(f"--text-len must be >= 0, got {text_len}")
        # A realistic prompt: the last fifth of the text slots are padding.
        shape = replace(shape, text_len=text_len, text_valid=text_len - text_len // 5 if text_len else None)
    return shape


def attended_pairs(shape: BenchShape) -> tuple[int, int]:
    """(attended (query, key) pairs summed over heads, dense pairs summed over heads), batch included."""
    from .kernels import Geometry

    geometry = Geometry(shape.canvas, shape.tile)
    V, T = geometry.video_len, shape.text_len
    Tv = T if shape.text_valid is None else shape.text_valid
    pairs = 0
    for window in shape.window_table():
        video = round(geometry.density(window) * V * V)
        pairs += video + V * Tv + T * (V + Tv)
    S = V + T
    return pairs * shape.batch, shape.heads * S * S * shape.batch


def _text_mask(shape: BenchShape, device: torch.device) -> torch.Tensor | None:
    """``(batch, text_len)`` key-padding mask with the first ``text_valid`` text keys real; None without text."""
    if not shape.text_len:
        return None
    mask = torch.zeros(shape.batch, shape.text_len, dtype=torch.bool, device=device)
    mask[:, : shape.text_valid] = True
    return mask


# Rows of our kernels: tile-order tokens, natural order through tile/untile copies, natural order in place.
# Padded canvases add the Gluon kernel alone on compact tile order and the in-place boxes path (which
# ``gluon-natural`` no longer takes there: it gathers compact tile order).
STA_ROWS = ("triton", "triton+permutes", "triton-natural", "gluon", "gluon+permutes", "gluon-natural",
            "gluon-compact-kernel", "gluon-natural-boxes", "gluon-fp8-natural", "gluon-fp8-kernel",
            "gluon-int8-natural", "gluon-int8-kernel")


def median_ms(fn, input_sets, warmup: int, iters: int) -> tuple[float, list[float]]:
    """Median CUDA-event time (ms) of ``fn(*input_sets[i % len])`` over ``iters`` calls after ``warmup``, and all times."""
    for i in range(warmup):
        fn(*input_sets[i % len(input_sets)])
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for i in range(iters):
        args = input_sets[i % len(input_sets)]
        starts[i].record()
        fn(*args)
        ends[i].record()
    torch.cuda.synchronize()
    times = [s.elapsed_time(e) for s, e in zip(starts, ends)]
    return statistics.median(times), times


def _rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm()).item()


@dataclass
class BenchResult:
    shape: dict
    density: float
    attended_tflop: float
    dense_tflop: float
    ms: dict = field(default_factory=dict)
    tflops: dict = field(default_factory=dict)
    speedup: dict = field(default_factory=dict)
    flex_mask_build_ms: float | None = None
    flex_first_call_s: float | None = None
    triton_first_call_s: float | None = None
    triton_vs_flex_rel_rms: list = field(default_factory=list)
    kernel_config: dict | None = None
    extra: dict = field(default_factory=dict)


def run_shape(shape: BenchShape, *, iters: int = 20, dense_iters: int = 6, warmup: int = 3, rotate: int = 3,
              baselines: bool = True, flex: bool = True, gluon: bool = True, fp8: bool = True, config=None,
              log=print) -> BenchResult:
    """Time every implementation on ``shape``; see the module docstring."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from .kernels import Geometry, from_tiles, to_tiles
    from .kernels.sta import normalize_windows, sta_attention
    from .kernels.sta.flex import build_block_mask
    from .kernels.sta.triton_fwd import default_config, sta_triton_tiled

    if not torch.cuda.is_available():
        raise UserError("the kernel benchmark needs a CUDA GPU")
    device = torch.device("cuda")
    dtype = getattr(torch, shape.dtype)
    geometry = Geometry(shape.canvas, shape.tile)
    B, H, D, T = shape.batch, shape.heads, shape.head_dim, shape.text_len
    S = geometry.video_len + T
    windows = normalize_windows(shape.window_table(), H, device=device)
    text_mask = _text_mask(shape, device)

    pairs, dense_pairs = attended_pairs(shape)
    attended_flop, dense_flop = 4.0 * D * pairs, 4.0 * D * dense_pairs
    result = BenchResult(shape=asdict(shape), density=pairs / dense_pairs, attended_tflop=attended_flop / 1e12,
                         dense_tflop=dense_flop / 1e12)
    cfg = config or default_config(geometry.tile_volume, D, dtype, True)
    result.kernel_config = asdict(cfg)

    def natural_set():
        return [torch.randn(B, H, S, D, device=device, dtype=dtype) for _ in range(3)]

    def tiled(x):
        if not T:
            return to_tiles(geometry, x)
        return torch.cat([to_tiles(geometry, x[:, :, : geometry.video_len]), x[:, :, geometry.video_len:]], 2)

    natural_sets = [natural_set() for _ in range(rotate)]
    tiled_sets = [[tiled(x) for x in s] for s in natural_sets]

    def triton_tiled(q, k, v):
        return sta_triton_tiled(q, k, v, geometry, windows, T, text_mask, None, config=cfg)

    def in_place(backend):
        """``sta_attention`` on natural-order tokens (the kernel reads them in place where it can)."""
        def run(q, k, v):
            return sta_attention(q, k, v, canvas=geometry.canvas, tile=geometry.tile, windows=windows, text_len=T,
                                 text_mask=text_mask, backend=backend)
        return run

    def with_permutes(run_tiled):
        """Tile, run in tile order, untile: what a caller pays without the in-place (natural) path."""
        def run(q, k, v):
            out = run_tiled(*(tiled(x) for x in (q, k, v)))
            video = from_tiles(geometry, out[:, :, : geometry.padded_len])
            return torch.cat([video, out[:, :, geometry.padded_len:]], 2) if T else video
        return run

    triton_natural, triton_permuted = in_place("triton"), with_permutes(triton_tiled)

    t0 = time.perf_counter()
    triton_tiled(*tiled_sets[0])
    torch.cuda.synchronize()
    result.triton_first_call_s = time.perf_counter() - t0

    def record(name, ms, flop):
        result.ms[name] = ms
        result.tflops[name] = flop / ms / 1e9
        log(f"  {name:<22} {ms:9.3f} ms  {flop / ms / 1e9:7.1f} TFLOP/s")

    record("triton", median_ms(triton_tiled, tiled_sets, warmup, iters)[0], attended_flop)
    record("triton+permutes", median_ms(triton_permuted, natural_sets, warmup, iters)[0], attended_flop)
    record("triton-natural", median_ms(triton_natural, natural_sets, warmup, iters)[0], attended_flop)
    natural_out, permuted_out = triton_natural(*natural_sets[0]), triton_permuted(*natural_sets[0])
    result.extra["natural_equals_tiled"] = bool(torch.equal(natural_out, permuted_out))
    result.extra["natural_vs_tiled_rel_rms"] = _rel_rms(natural_out, permuted_out)
    log(f"  natural == tiled path: {result.extra['natural_equals_tiled']} "
        f"(rel RMS {result.extra['natural_vs_tiled_rel_rms']:.1e})")
    del natural_out, permuted_out

    gluon_ok = False
    if gluon:
        from .kernels.backends import can_run_gluon

        gluon_ok, why = can_run_gluon(tiled_sets[0][0], geometry, "tiled")
        result.extra["gluon"] = why

    if gluon_ok:
        from .kernels.sta.gluon_fwd import sta_gluon_tiled

        def gluon_tiled(q, k, v):
            return sta_gluon_tiled(q, k, v, geometry, windows, T, text_mask, None)

        gluon_natural, gluon_permuted = in_place("gluon"), with_permutes(gluon_tiled)

        t0 = time.perf_counter()
        gluon_tiled(*tiled_sets[0])
        torch.cuda.synchronize()
        result.extra["gluon_first_call_s"] = time.perf_counter() - t0
        record("gluon", median_ms(gluon_tiled, tiled_sets, warmup, iters)[0], attended_flop)
        record("gluon+permutes", median_ms(gluon_permuted, natural_sets, warmup, iters)[0], attended_flop)
        record("gluon-natural", median_ms(gluon_natural, natural_sets, warmup, iters)[0], attended_flop)
        natural_out, triton_out = gluon_natural(*natural_sets[0]), triton_natural(*natural_sets[0])
        result.extra["gluon_natural_equals_tiled"] = bool(torch.equal(natural_out, gluon_permuted(*natural_sets[0])))
        result.extra["gluon_vs_triton_rel_rms"] = _rel_rms(natural_out, triton_out)
        log(f"  gluon natural == tiled path: {result.extra['gluon_natural_equals_tiled']}; gluon vs triton rel RMS "
            f"{result.extra['gluon_vs_triton_rel_rms']:.1e}")
        del natural_out, triton_out
        if not geometry.is_divisible:
            _time_padded_paths(result, geometry, windows, T, text_mask, natural_sets, gluon_natural, record, warmup,
                               iters, attended_flop, log)
        if fp8:
            _time_fp8(result, geometry, windows, T, text_mask, natural_sets, gluon_natural, record, warmup, iters,
                      attended_flop, log)

    if flex:
        from .kernels.sta import flex as flex_module

        # Time FlexAttention itself: mask built once (timed separately), inputs pre-padded to its block size.
        L = geometry.padded_len + T
        bs = flex_module.flex_block_size(geometry)
        Lp = -(-L // bs) * bs
        key_valid = torch.zeros(B, Lp, dtype=torch.bool, device=device)
        key_valid[:, : geometry.padded_len] = geometry.key_valid().to(device)
        if T:
            key_valid[:, geometry.padded_len: L] = text_mask
        flex_module.clear_mask_cache()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        mask = build_block_mask(geometry, windows, T, key_valid, tiled_sets[0][0].device)
        torch.cuda.synchronize()
        result.flex_mask_build_ms = (time.perf_counter() - t0) * 1e3
        compiled = flex_module.flex_function(device)
        padded_sets = [[torch.nn.functional.pad(x, (0, 0, 0, Lp - L)) if Lp != L else x for x in s]
                       for s in tiled_sets]

        def flex_tiled(q, k, v):
            return compiled(q, k, v, block_mask=mask)

        t0 = time.perf_counter()
        flex_tiled(*padded_sets[0])
        torch.cuda.synchronize()
        result.flex_first_call_s = time.perf_counter() - t0
        record("flex", median_ms(flex_tiled, padded_sets, warmup, iters)[0], attended_flop)
        valid = torch.cat([geometry.key_valid(), torch.ones(T, dtype=torch.bool)]).to(device)
        gluon_vs_flex = []
        for s, ps in zip(tiled_sets, padded_sets):
            triton_out, flex_out = triton_tiled(*s), flex_tiled(*ps)[:, :, :L]
            result.triton_vs_flex_rel_rms.append(_rel_rms(triton_out[:, :, valid], flex_out[:, :, valid]))
            if gluon_ok:
                gluon_vs_flex.append(_rel_rms(gluon_tiled(*s)[:, :, valid], flex_out[:, :, valid]))
        log(f"  triton vs flex rel RMS: {max(result.triton_vs_flex_rel_rms):.2e}")
        if gluon_ok:
            result.extra["gluon_vs_flex_rel_rms"] = gluon_vs_flex
            log(f"  gluon vs flex rel RMS: {max(gluon_vs_flex):.2e}")
        del triton_out, flex_out, padded_sets

    if baselines:
        for name, backend in (("cudnn-dense", SDPBackend.CUDNN_ATTENTION), ("fa2-dense", SDPBackend.FLASH_ATTENTION)):
            def dense(q, k, v, backend=backend):
                with sdpa_kernel(backend):
                    return torch.nn.functional.scaled_dot_product_attention(q, k, v)
            try:
                record(name, median_ms(dense, natural_sets, 1, dense_iters)[0], dense_flop)
            except RuntimeError as exc:  # a backend missing from this build
                result.extra[f"{name}-error"] = str(exc).splitlines()[0]
                log(f"  {name}: not available ({result.extra[f'{name}-error']})")

    for base in ("cudnn-dense", "fa2-dense", "flex"):
        if base in result.ms:
            for row in STA_ROWS:
                if row in result.ms:
                    result.speedup[f"{row} vs {base}"] = result.ms[base] / result.ms[row]
    return result


def _time_padded_paths(result, geometry, windows, T, text_mask, natural_sets, gluon_natural, record, warmup, iters,
                       attended_flop, log):
    """Padded canvases: the Gluon kernel alone on compact tile order (``gluon-compact-kernel``: what the natural entry
    pays without its gathers) and the in-place path through TMA boxes of tile planes (``gluon-natural-boxes``)."""
    from .kernels.backends import gluon_reads_tile_planes
    from .kernels.sta import gluon_fwd
    from .kernels.sta.row_gather import compact_gathers, gather_rows

    forward, _ = compact_gathers(geometry, T, False, natural_sets[0][0].device)
    compact_sets = [gather_rows(*s, index=forward) for s in natural_sets]
    outs = [torch.empty_like(s[0]) for s in compact_sets]

    def compact_kernel(i):
        q, k, v = compact_sets[i]
        return gluon_fwd._launch(q, k, v, outs[i], geometry, windows, T, geometry.padded_len, 0, text_mask, None,
                                 natural=False, stages=None, compact=True)

    record("gluon-compact-kernel", median_ms(compact_kernel, [[i] for i in range(len(compact_sets))], warmup,
                                             iters)[0], attended_flop)
    del compact_sets, outs
    if gluon_reads_tile_planes(geometry)[0]:
        def boxes(q, k, v):
            return gluon_fwd.sta_gluon_natural(q, k, v, geometry, windows, T, False, text_mask, None, padded="in-place")

        record("gluon-natural-boxes", median_ms(boxes, natural_sets, warmup, iters)[0], attended_flop)
        result.extra["gluon_compact_vs_boxes_rel_rms"] = _rel_rms(gluon_natural(*natural_sets[0]),
                                                                  boxes(*natural_sets[0]))
        log(f"  gluon compact vs boxes rel RMS {result.extra['gluon_compact_vs_boxes_rel_rms']:.2e}")


def _time_fp8(result, geometry, windows, T, text_mask, natural_sets, gluon_natural, record, warmup, iters,
              attended_flop, log):
    """Rows of the opt-in 8-bit Gluon kernel at ``precision="fp8"`` and ``"int8"``: whole call (pre-pass included),
    the pre-pass alone, the kernel alone on pre-quantized inputs; its rel RMS against the bf16 Gluon kernel.
    Failures are recorded, never raised (the other rows still count)."""
    from .kernels.backends import can_run_gluon_fp8

    ok, why = can_run_gluon_fp8(natural_sets[0][0], geometry, "natural")
    result.extra["gluon_fp8"] = why
    if not ok:
        return
    from .kernels.sta import gluon_fp8

    for precision, qk_int8 in (("fp8", False), ("int8", True)):
        try:
            def natural(q, k, v, qk_int8=qk_int8):
                return gluon_fp8.sta_gluon_fp8_natural(q, k, v, geometry, windows, T, False, text_mask, None,
                                                       qk_int8=qk_int8)

            def prepass(q, k, v, qk_int8=qk_int8):
                return gluon_fp8.quantize_fp8(q, k, v, geometry, T, layout="natural", qk_int8=qk_int8)

            quantized = [prepass(*s) for s in natural_sets]

            def kernel_only(i, quantized=quantized):  # the kernel follows the quantized inputs' dtype
                q = natural_sets[i][0]
                return gluon_fp8._run(q, None, None, geometry, windows, T, text_mask, None, layout="natural",
                                      text_first=False, stages=3, quantized=quantized[i])

            t0 = time.perf_counter()
            natural(*natural_sets[0])
            torch.cuda.synchronize()
            result.extra[f"gluon_{precision}_first_call_s"] = time.perf_counter() - t0
            record(f"gluon-{precision}-natural", median_ms(natural, natural_sets, warmup, iters)[0], attended_flop)
            record(f"gluon-{precision}-kernel",
                   median_ms(kernel_only, [[i] for i in range(len(natural_sets))], warmup, iters)[0], attended_flop)
            result.extra[f"{precision}_prepass_ms"] = median_ms(prepass, natural_sets, warmup, iters)[0]
            log(f"  {precision} pre-pass          {result.extra[f'{precision}_prepass_ms']:9.3f} ms")
            result.extra[f"gluon_{precision}_vs_gluon_rel_rms"] = _rel_rms(natural(*natural_sets[0]),
                                                                           gluon_natural(*natural_sets[0]))
            log(f"  gluon {precision} vs bf16 gluon rel RMS "
                f"{result.extra[f'gluon_{precision}_vs_gluon_rel_rms']:.2e}")
            del quantized, kernel_only
        except Exception as exc:  # noqa: BLE001 - keep the other rows
            result.extra[f"gluon_{precision}_error"] = f"{type(exc).__name__}: {exc}"[:500]
            log(f"  gluon {precision} failed: {result.extra[f'gluon_{precision}_error']}")


def sweep_configs(shape: BenchShape, configs, *, iters: int = 15, warmup: int = 2, rotate: int = 3, log=print,
                  layout: str = "tiled"):
    """Time the Triton kernel alone under several launch configs (same inputs); returns [(config dict, ms)].

    ``layout``: ``tiled`` (tile-order kernel on tile-order tokens), ``natural`` (the in-place kernel on
    natural-order ``(B, H, S, D)`` tokens), ``bshd`` (the in-place kernel on ``(B, S, H, D)`` tensors seen
    as ``(B, H, S, D)`` views, which is how diffusers' processors hand them over) or ``bshd-copy`` (the
    same, copied to contiguous ``(B, H, S, D)`` first, copies timed).
    """
    from .kernels import Geometry
    from .kernels.sta import normalize_windows
    from .kernels.sta.triton_fwd import sta_triton_natural, sta_triton_tiled

    if layout not in ("tiled", "natural", "bshd", "bshd-copy"):
        raise ValueError(f"unknown layout {layout!r}")
    device = torch.device("cuda")
    dtype = getattr(torch, shape.dtype)
    geometry = Geometry(shape.canvas, shape.tile)
    L = (geometry.padded_len if layout == "tiled" else geometry.video_len) + shape.text_len
    windows = normalize_windows(shape.window_table(), shape.heads, device=device)
    B, H, D = shape.batch, shape.heads, shape.head_dim
    if layout.startswith("bshd"):
        sets = [[torch.randn(B, L, H, D, device=device, dtype=dtype).transpose(1, 2) for _ in range(3)]
                for _ in range(rotate)]
    else:
        sets = [[torch.randn(B, H, L, D, device=device, dtype=dtype) for _ in range(3)] for _ in range(rotate)]
    text_mask = _text_mask(shape, device)
    pairs, _ = attended_pairs(shape)
    out = []
    for cfg in configs:
        try:
            if layout == "tiled":
                def fn(q, k, v, cfg=cfg):
                    return sta_triton_tiled(q, k, v, geometry, windows, shape.text_len, text_mask, None, config=cfg)
            else:
                def fn(q, k, v, cfg=cfg):
                    if layout == "bshd-copy":
                        q, k, v = (x.contiguous() for x in (q, k, v))
                    out = sta_triton_natural(q, k, v, geometry, windows, shape.text_len, False, text_mask, None,
                                             config=cfg)
                    if out is None:
                        raise ValueError("natural layout not supported for this config")
                    return out
            ms = median_ms(fn, sets, warmup, iters)[0]
        except Exception as exc:  # e.g. out of shared memory for this config
            log(f"  {cfg}: failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
            out.append((asdict(cfg), None))
            continue
        log(f"  [{layout}] {cfg}: {ms:.3f} ms  {4 * shape.head_dim * pairs / ms / 1e9:.1f} TFLOP/s")
        out.append((asdict(cfg), ms))
    return out


def paired_overhead(base: BenchShape, other: BenchShape, *, rounds: int = 7, iters: int = 10, backend: str = "triton",
                    log=print) -> dict:
    """Time the in-place kernel on ``base`` and ``other`` alternately (``rounds`` x ``iters`` calls each), so
    clock and thermal drift hit both alike; returns per-round medians and the median of per-round ratios."""
    from .kernels import Geometry
    from .kernels.sta import normalize_windows, sta_attention

    device = torch.device("cuda")
    fns, sets = [], []
    for shape in (base, other):
        geometry = Geometry(shape.canvas, shape.tile)
        S = geometry.video_len + shape.text_len
        mask = _text_mask(shape, device)
        windows = normalize_windows(shape.window_table(), shape.heads, device=device)
        sets.append([[torch.randn(shape.batch, shape.heads, S, shape.head_dim, device=device,
                                  dtype=getattr(torch, shape.dtype)) for _ in range(3)] for _ in range(2)])
        fns.append(lambda q, k, v, g=geometry, w=windows, m=mask, t=shape.text_len: sta_attention(
            q, k, v, canvas=g.canvas, tile=g.tile, windows=w, text_len=t, text_mask=m, backend=backend))
    per_round = []
    for r in range(rounds):
        a = median_ms(fns[0], sets[0], 2, iters)[0]
        b = median_ms(fns[1], sets[1], 2, iters)[0]
        per_round.append((a, b))
        log(f"  round {r}: {a:.3f} ms vs {b:.3f} ms ({b / a - 1:+.1%})")
    ratios = sorted(b / a for a, b in per_round)
    return {"backend": backend, "base": asdict(base), "other": asdict(other), "ms_per_round": per_round,
            "median_ratio": statistics.median(ratios), "min_ratio": ratios[0], "max_ratio": ratios[-1]}


def environment() -> dict:
    import triton

    props = torch.cuda.get_device_properties(0) if torch.cuda.is_available() else None
    return {
        "device": torch.cuda.get_device_name(0) if props else "cpu",
        "sm_count": props.multi_processor_count if props else None,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def write_results(results: list[BenchResult], out_dir: Path, tag: str = "kernel", extra: dict | None = None) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    env = environment()
    stamp = env["utc"].replace(":", "").replace("-", "")
    path = out_dir / f"{tag}-{stamp}.json"
    payload = {"environment": env, "results": [asdict(r) for r in results], **(extra or {})}
    path.write_text(json.dumps(payload, indent=1))
    return path


def results_table(results: list[BenchResult]):
    from rich.table import Table

    table = Table(title="STA attention forward (median ms, effective TFLOP/s)")
    for col in ("shape", "windows", "text", "density", "impl", "ms", "TFLOP/s", "cuDNN / this"):
        table.add_column(col, justify="right" if col not in ("shape", "impl", "windows") else "left")
    for r in results:
        windows = r.shape["windows"]
        wtext = "x".join(map(str, windows[0])) if len(windows) == 1 else f"mixed({len(windows)})"
        base = r.ms.get("cudnn-dense")
        for i, (impl, ms) in enumerate(r.ms.items()):
            table.add_row(r.shape["name"] if i == 0 else "", wtext if i == 0 else "",
                          str(r.shape["text_len"]) if i == 0 else "", f"{r.density:.3f}" if i == 0 else "",
                          impl, f"{ms:.2f}", f"{r.tflops[impl]:.0f}", f"{base / ms:.2f}x" if base else "-")
    return table
