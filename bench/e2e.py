"""End-to-end speed: one denoising step's transformer forward, dense vs Sliding Tile Attention.

Random-init transformers of the real architectures (weights do not change speed), built directly on
the GPU in bf16:

- ``hunyuan-720p``: ``HunyuanVideoTransformer3DModel`` with its default (13B) config, 720p 117 frames:
  latent (30, 96, 160) -> canvas (30, 48, 80) = 115,200 video tokens + 256 joint text tokens.
- ``wan-1.3b-480p``: ``WanTransformer3DModel`` with the Wan 2.1 1.3B config, 480p 81 frames:
  latent (21, 60, 104) -> canvas (21, 30, 52) = 32,760 video tokens (text is cross-attention).
- ``wan-14b-720p``: ``WanTransformer3DModel`` with the Wan 2.1 14B config (40 layers, 40 heads x 128, FFN
  13824), 720p (720 x 1280) 81 frames: latent (21, 90, 160) -> canvas (21, 45, 80) = 75,600 video tokens
  (tile (6, 8, 8): grid (4, 6, 10), padded to 24 x 48 x 80).
- ``hunyuan15-720p``: ``HunyuanVideo15Transformer3DModel`` with the HunyuanVideo 1.5 720p text-to-video config
  (diffusers' scripts/convert_hunyuan_video1_5_to_diffusers.py ``720p_t2v``: 54 dual-stream layers, 16 heads x
  128, patch 1, 65 input channels = 32 latent + 32 condition + 1 mask), 720 x 1280, 121 frames, VAE 16x/4x:
  latent (31, 45, 80) = canvas = 111,600 video tokens + 1,985 joint text tokens (Qwen 1000 + ByT5 256 + SigLIP
  729) of which ``text_valid`` (160 Qwen tokens; no glyph text; no image: text-to-video) are valid, so dense is
  SDPA with a boolean key mask, as in ``sta-search generate`` (``--all-text-valid``: every text token valid).
  (diffusers' own processor builds a (S, S) mask, 12.9 GB a layer at this size: leave ``dense-native`` off.)

Modes, all in one process and on one GPU (one transformer forward = one denoising step for
guidance-distilled HunyuanVideo; Wan under CFG runs two of them per step):

- ``dense-native``: diffusers' own attention processors, SDPA with cuDNN attention first in priority.
- ``dense``: the sta-search hook with ``dense_attention`` (what diffusers computes: SDPA with the text key
  mask; same SDPA priority), timed per attention call with CUDA events: gives the attention share.
- ``dense-nomask`` (``--dense-nomask``): the same without an all-true text mask (``fast_dense_attention``,
  what ``sta-search generate`` runs for dense steps and for ``--compare-dense``).
- ``sta-gluon-WWW`` / ``sta-triton-WWW``: ``sta_search.accelerate`` with a uniform mask config of window WWW,
  the warp-specialized Gluon kernel (Hopper) or the Triton kernel.
- ``sta-flex-WWW``: the same through FlexAttention (what a user has today).

each eager and, with ``--compile``, again after regional ``torch.compile`` of the transformer blocks
(attention itself stays outside the graphs). Per mode: warm-up, then ``--reps`` timed forwards (CUDA
events, median), attention seconds per forward, peak GPU memory of the timed forward. The JSON
(``--out``) is rewritten after every mode, so a run cut short keeps what it measured.

    python bench/e2e.py --models hunyuan-720p wan-1.3b-480p --windows 5,5,5 3,3,3 --compile both \
        --out bench/results/e2e-h100.json
    # 720p dense vs STA (3,3,3), compiled, one timed forward each (``--spec`` = ``--models``):
    python bench/e2e.py --spec wan-14b-720p hunyuan15-720p --windows 3,3,3 --backends gluon --compile on \
        --compiled-backends gluon --no-native --reps 1 --warmup 1 --out bench/results/e2e-h200-720p.json
    # CPU smoke run of the same code paths on scaled-down specs:
    python bench/e2e.py --spec tiny-wan tiny-hunyuan15 --windows 3,3,3 --backends flex --compile off --no-native \
        --reps 1 --device cpu --out /tmp/e2e-smoke.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

TILE = (6, 8, 8)

MODELS = {
    "hunyuan-720p": dict(
        cls="HunyuanVideoTransformer3DModel",
        config={},  # diffusers' defaults are HunyuanVideo 13B: 20 dual + 40 single blocks, 24 heads x 128
        latent=(1, 16, 30, 96, 160),
        canvas=(30, 48, 80),
        text_len=256,
        text_dim=4096,
        pooled_dim=768,
        forwards_per_step=1,
    ),
    "wan-1.3b-480p": dict(
        cls="WanTransformer3DModel",
        config=dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                    out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30,
                    cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024),
        latent=(1, 16, 21, 60, 104),
        canvas=(21, 30, 52),
        text_len=512,  # cross-attention context (Wan's umT5 length), not joint tokens
        text_dim=4096,
        forwards_per_step=2,
    ),
    "wan-14b-720p": dict(
        cls="WanTransformer3DModel",
        config=dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16,
                    out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40,
                    cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024),
        latent=(1, 16, 21, 90, 160),
        canvas=(21, 45, 80),
        text_len=512,  # cross-attention context (Wan's umT5 length), not joint tokens
        text_dim=4096,
        forwards_per_step=2,
    ),
    "hunyuan15-720p": dict(
        cls="HunyuanVideo15Transformer3DModel",
        config=dict(in_channels=65, out_channels=32, num_attention_heads=16, attention_head_dim=128, num_layers=54,
                    num_refiner_layers=2, mlp_ratio=4.0, patch_size=1, patch_size_t=1, qk_norm="rms_norm",
                    text_embed_dim=3584, text_embed_2_dim=1472, image_embed_dim=1152, rope_theta=256.0,
                    rope_axes_dim=(16, 56, 56), use_meanflow=False, target_size=960, task_type="t2v"),
        latent=(1, 65, 31, 45, 80),
        canvas=(31, 45, 80),
        text_len=1000 + 256 + 729,  # joint: Qwen (text_dim wide) + ByT5 (text_2) + SigLIP image tokens
        text_dim=3584,
        text_2=(256, 1472),
        image_tokens=(729, 1152),
        text_valid=(160, 0, 0),  # valid Qwen, ByT5, image tokens (text-to-video, no glyph text)
        forwards_per_step=2,  # classifier-free guidance (guidance scale 6)
    ),
    # CPU smoke tests of this script (tiny shapes; flex/reference backends)
    "tiny-wan": dict(
        cls="WanTransformer3DModel",
        config=dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32, in_channels=4,
                    out_channels=4, text_dim=16, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True,
                    qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=64),
        latent=(1, 4, 6, 32, 32),
        canvas=(6, 16, 16),
        tile=(2, 4, 4),  # grid (3, 4, 4): window (3, 3, 3) keeps 56 % of the tiles
        text_len=8,
        text_dim=16,
        forwards_per_step=2,
    ),
    "tiny-hunyuan15": dict(
        cls="HunyuanVideo15Transformer3DModel",
        config=dict(in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=32, num_layers=2,
                    num_refiner_layers=1, patch_size=1, patch_size_t=1, text_embed_dim=16, text_embed_2_dim=32,
                    image_embed_dim=16, rope_axes_dim=(8, 12, 12), task_type="t2v"),
        latent=(1, 9, 6, 16, 16),
        canvas=(6, 16, 16),
        tile=(2, 4, 4),
        text_len=12 + 6 + 4,
        text_dim=16,
        text_2=(6, 32),
        image_tokens=(4, 16),
        text_valid=(5, 0, 0),
        forwards_per_step=2,
    ),
    "tiny-hunyuan": dict(
        cls="HunyuanVideoTransformer3DModel",
        config=dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=32, num_layers=1,
                    num_single_layers=1, num_refiner_layers=1, mlp_ratio=2.0, patch_size=2, patch_size_t=1,
                    text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(8, 12, 12)),
        latent=(1, 4, 6, 32, 32),
        canvas=(6, 16, 16),
        text_len=16,
        text_dim=16,
        pooled_dim=8,
        forwards_per_step=1,
    ),
}


def spec_tile(spec: dict) -> tuple[int, int, int]:
    return tuple(spec.get("tile", TILE))


def parse_window(text: str) -> tuple[int, int, int]:
    values = tuple(int(v) for v in text.replace("x", ",").split(","))
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"window {text!r} is not t,h,w")
    return values  # type: ignore[return-value]


def build_transformer(spec: dict, device: torch.device, dtype: torch.dtype):
    import diffusers

    cls = getattr(diffusers, spec["cls"])
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device, torch.no_grad():
            model = cls(**spec["config"])
    finally:
        torch.set_default_dtype(previous)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    # like from_pretrained(torch_dtype=...): the modules the class keeps in float32 stay float32
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    for name, module in model.named_modules():
        if any(part in keep for part in name.split(".")):
            module.float()
    return model


def make_inputs(spec: dict, device: torch.device, dtype: torch.dtype, seed: int = 0,
                all_text_valid: bool = False) -> dict:
    g = torch.Generator(device="cpu").manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    inputs = dict(hidden_states=randn(*spec["latent"]),
                  timestep=torch.tensor([500], device=device, dtype=torch.long),
                  encoder_hidden_states=randn(1, spec["text_len"], spec["text_dim"]),
                  return_dict=False)
    if spec["cls"] == "HunyuanVideo15Transformer3DModel":
        text_len = spec["text_len"] - spec["text_2"][0] - spec["image_tokens"][0]
        valid = (text_len, *spec["text_2"][:1], spec["image_tokens"][0]) if all_text_valid else spec["text_valid"]

        def mask(n, valid_n):
            return (torch.arange(n, device=device) < valid_n)[None]

        inputs["timestep"] = torch.tensor([500.0], device=device, dtype=dtype)  # it casts its embedding to this dtype
        inputs["encoder_hidden_states"] = randn(1, text_len, spec["text_dim"])
        inputs["encoder_attention_mask"] = mask(text_len, valid[0])
        inputs["encoder_hidden_states_2"] = randn(1, *spec["text_2"])
        inputs["encoder_attention_mask_2"] = mask(spec["text_2"][0], valid[1])
        # the transformer marks image tokens valid unless they are all zero (text-to-video)
        inputs["image_embeds"] = randn(1, *spec["image_tokens"]) * float(valid[2] > 0)
    elif spec["cls"].startswith("Hunyuan"):
        inputs["encoder_attention_mask"] = torch.ones(1, spec["text_len"], device=device, dtype=torch.bool)
        inputs["pooled_projections"] = randn(1, spec["pooled_dim"])
        inputs["guidance"] = torch.tensor([6016.0], device=device, dtype=dtype)
    return inputs


def sdpa_backend_probe(spec: dict, device: torch.device, dtype: torch.dtype) -> dict:
    """Which SDPA backend serves the dense attention shape (with and without the text key mask)."""
    if device.type != "cuda":
        return {}
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    heads = spec["config"].get("num_attention_heads", 24)
    dim = spec["config"].get("attention_head_dim", 128)
    S = math.prod(spec["canvas"]) + (spec["text_len"] if spec["cls"].startswith("Hunyuan") else 0)
    q = torch.randn(1, heads, min(S, 4096), dim, device=device, dtype=dtype)
    mask = torch.ones(1, 1, 1, q.shape[2], device=device, dtype=torch.bool)
    found = {}
    for label, m in (("no_mask", None), ("bool_key_mask", mask)):
        usable = []
        for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
            try:
                with sdpa_kernel([backend]):
                    F.scaled_dot_product_attention(q, q, q, attn_mask=m)
                usable.append(backend.name)
            except RuntimeError:
                pass
        found[label] = usable
    return found


class Bench:
    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[args.dtype]
        self.t0 = time.perf_counter()
        self.results = {
            "schema": "sta-search/bench-e2e/v1",
            "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else platform.processor(),
            "versions": versions(),
            "dtype": args.dtype, "sta_precision": args.precision,
            "tile": list(TILE),  # unless a model entry says otherwise
            "reps": args.reps,
            "notes": "one transformer forward (one denoising step for HunyuanVideo; Wan runs two per step under CFG). "
                     "dense = SDPA with cuDNN first in priority; speedup = dense (hooked) median / mode median.",
            "models": {},
        }

    # ------------------------------------------------------------------ bookkeeping
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def save(self):
        out = Path(self.args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(self.results, indent=2) + "\n")

    def log(self, *parts):
        print(f"[{self.elapsed():7.1f}s]", *parts, flush=True)

    # ------------------------------------------------------------------ timing
    def time_forward(self, model, inputs, timer=None, reps=None):
        reps = reps or self.args.reps
        times, attention = [], []
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        for _ in range(reps):
            before = timer.total_seconds() if timer is not None else 0.0
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                model(**inputs)
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1000)
            else:
                t = time.perf_counter()
                model(**inputs)
                times.append(time.perf_counter() - t)
            if timer is not None:
                attention.append(timer.total_seconds() - before)
        row = {"seconds": times, "median_seconds": statistics.median(times)}
        if attention:
            row["attention_seconds"] = statistics.median(attention)
            row["attention_share"] = row["attention_seconds"] / row["median_seconds"]
        if cuda:
            row["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        return row

    def run_mode(self, name, model, inputs, spec, info, full_warmup: bool):
        """Time one mode. ``full_warmup``: warm up with whole forwards (first mode of a phase: cuBLAS,
        cuDNN, torch.compile); otherwise one attention call on the recorded shapes warms the kernel up."""
        from sta_search.accelerate import AttentionTimer, accelerate, sdpa_cudnn_first
        from sta_search.maskconfig import MaskConfig
        from sta_search.models import dense_attention, get_adapter, hook_attention

        adapter = get_adapter(model)
        timer = AttentionTimer()
        if name == "dense-native":
            ctx = contextlib.nullcontext()
            timer = None
        elif name == "dense":
            ctx = hook_attention(model, torch.compiler.disable(timer.wrap(dense_attention)), adapter=adapter)
        elif name == "dense-nomask":
            ctx = hook_attention(model, torch.compiler.disable(timer.wrap(_dense_without_full_mask)), adapter=adapter)
        else:
            _, backend, window = name.split("-")
            window = tuple(int(c) for c in window)
            precision = self.args.precision
            if backend in ("gluonfp8", "gluonint8"):
                backend, precision = "gluon", backend.removeprefix("gluon")
            text_len = spec["text_len"] if spec["cls"].startswith("Hunyuan") else 0
            config = MaskConfig.uniform(info, spec["canvas"], spec_tile(spec), text_len, 64, window)
            ctx = accelerate(model, config, backend=backend, timer=timer, precision=precision)
        with sdpa_cudnn_first(self.device), torch.inference_mode(), ctx as acc:
            t = time.perf_counter()
            if full_warmup or self.call_shape is None:
                record = self._record_call_shape(acc) if name in ("dense", "dense-nomask") else contextlib.nullcontext()
                with record:
                    for _ in range(max(1, self.args.warmup)):
                        model(**inputs)
            elif hasattr(acc, "attention"):
                acc.attention(self._fake_call())
            elif name == "dense-nomask":
                _dense_without_full_mask(self._fake_call())
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            warm = time.perf_counter() - t
            if timer is not None:
                timer.reset()
            if hasattr(acc, "attention"):
                acc.attention.calls.clear()
            graphs_before = _unique_graphs()
            row = self.time_forward(model, inputs, timer)
            if _unique_graphs() != graphs_before:  # torch.compile recompiled inside the timed forwards: again
                graphs_before = _unique_graphs()
                if timer is not None:
                    timer.reset()
                first = row["seconds"]
                if hasattr(acc, "attention"):
                    acc.attention.calls.clear()
                row = self.time_forward(model, inputs, timer)
                row["discarded_seconds_with_recompile"] = first
            row["warmup_seconds"] = warm
            row["warmup"] = "forward" if (full_warmup or self.call_shape is None) else "attention call"
            row["compiled_during_timing"] = _unique_graphs() != graphs_before
            if hasattr(acc, "attention"):
                row["density"] = acc.attention.density(1)["overall"]
                row["attention_calls_per_forward"] = {k: v // self.args.reps for k, v in acc.attention.calls.items()}
            if self.args.kernel_profile:  # after the counts above: this forward is not one of the timed ones
                row["kernel_profile"] = self.kernel_profile(model, inputs)
        return row

    def kernel_profile(self, model, inputs, top: int = 20) -> dict:
        """One more forward under torch.profiler: what took the most time (ms per forward, calls). On CUDA the GPU
        kernels (device time); on CPU the operators' self time."""
        from torch.profiler import ProfilerActivity, profile

        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
            model(**inputs)
            if cuda:
                torch.cuda.synchronize()
        totals: dict[str, list] = {}
        for event in prof.events():
            if cuda and event.device_type != torch.autograd.DeviceType.CUDA:
                continue
            entry = totals.setdefault(event.name[:120], [0.0, 0])
            entry[0] += (event.time_range.elapsed_us() if cuda else event.self_cpu_time_total) / 1000
            entry[1] += 1
        ranked = sorted(totals.items(), key=lambda kv: -kv[1][0])
        return {"timeline": "gpu kernels" if cuda else "cpu operators, self time",
                "ms_total": sum(v[0] for v in totals.values()),
                "top": [{"name": name, "ms": round(ms, 3), "calls": n} for name, (ms, n) in ranked[:top]]}

    @contextlib.contextmanager
    def _record_call_shape(self, state):
        """Wrap the hooked attention function to remember one call's shapes and text mask."""
        runtime = None
        for module in self._attention_modules:
            runtime = getattr(module.processor, "runtime", None)
            if runtime is not None:
                break
        if runtime is None:
            yield
            return
        original = runtime.attention_fn

        def recording(call):
            if self.call_shape is None:
                self.call_shape = dict(shape=tuple(call.q.shape), dtype=call.q.dtype, canvas=call.canvas,
                                       text_len=call.text_len, text_first=call.text_first,
                                       text_mask=None if call.text_mask is None else call.text_mask.clone())
            return original(call)

        runtime.attention_fn = recording
        try:
            yield
        finally:
            runtime.attention_fn = original

    def _fake_call(self):
        from sta_search.models import AttentionCall

        c = self.call_shape
        q, k, v = (torch.randn(c["shape"], device=self.device, dtype=c["dtype"]) for _ in range(3))
        return AttentionCall(step=0, layer=0, q=q, k=k, v=v, canvas=c["canvas"], text_len=c["text_len"],
                             text_first=c["text_first"], text_mask=c["text_mask"], forward_index=0)

    # ------------------------------------------------------------------ per model
    def run_model(self, key: str):
        from sta_search.accelerate import compile_transformer
        from sta_search.kernels.geometry import Geometry
        from sta_search.models import get_adapter

        spec = MODELS[key]
        t = time.perf_counter()
        model = build_transformer(spec, self.device, self.dtype)
        build_seconds = time.perf_counter() - t
        info = get_adapter(model).info(model)
        inputs = make_inputs(spec, self.device, self.dtype, all_text_valid=self.args.all_text_valid)
        geometry = Geometry(spec["canvas"], spec_tile(spec))
        entry = self.results["models"][key] = {
            "transformer_class": spec["cls"], "config": {k: list(v) if isinstance(v, tuple) else v for k, v in spec["config"].items()},
            "parameters_billion": sum(p.numel() for p in model.parameters()) / 1e9,
            "latent": list(spec["latent"]), "canvas": list(spec["canvas"]), "text_len": spec["text_len"],
            "forwards_per_step": spec["forwards_per_step"], "build_seconds": build_seconds,
            "tile": list(geometry.tile), "grid": list(geometry.grid),
            "window_density": {",".join(map(str, w)): geometry.density(w) for w in self.args.windows},
            "sdpa_backends_usable": sdpa_backend_probe(spec, self.device, self.dtype),
            "eager": {}, "compiled": {},
        }
        self.log(key, f"built {entry['parameters_billion']:.2f}B params in {build_seconds:.1f}s")
        self.call_shape = None
        self._attention_modules = get_adapter(model).attention_modules(model)
        modes = ["dense", "dense-nomask"] if self.args.dense_nomask else ["dense"]
        if self.args.skip_masked_dense:
            modes = ["dense-nomask"]
        for backend in self.args.backends:
            for window in self.args.windows:
                modes.append(f"sta-{backend}-{''.join(map(str, window))}")
        if self.args.native:
            modes.append("dense-native")
        phases = {"off": [False], "on": [True], "both": [False, True]}[self.args.compile]
        for compiled in phases:
            section = entry["compiled" if compiled else "eager"]
            if compiled:
                section["compiled_blocks"] = compile_transformer(model)
            for mode in modes:
                if compiled and (mode == "dense-native" or
                                 (mode.startswith("sta-") and mode.split("-")[1] not in self.args.compiled_backends)):
                    continue
                if self.elapsed() > self.args.time_budget:
                    self.log("time budget spent; skipping", key, mode, "compiled" if compiled else "eager")
                    section[mode] = {"skipped": "time budget"}
                    continue
                try:
                    row = self.run_mode(mode, model, inputs, spec, info, full_warmup=(mode == modes[0]))
                except Exception as exc:  # keep the other modes' numbers
                    import traceback

                    traceback.print_exc()
                    row = {"error": f"{type(exc).__name__}: {exc}"[:500]}
                section[mode] = row
                self._speedups(section)
                self.log(key, "compiled" if compiled else "eager", mode,
                         {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if k != "seconds"})
                self.save()
                gc.collect()
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        del model
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @staticmethod
    def _speedups(section: dict):
        for baseline, key in (("dense", "speedup_vs_dense"), ("dense-nomask", "speedup_vs_dense_nomask")):
            base = section.get(baseline, {}).get("median_seconds")
            if not base:
                continue
            for name, row in section.items():
                if isinstance(row, dict) and row.get("median_seconds"):
                    row[key] = base / row["median_seconds"]

    def run(self):
        for key in self.args.models:
            self.run_model(key)
        self.results["wall_seconds"] = self.elapsed()
        self.save()
        self.log("wrote", self.args.out)


def _dense_without_full_mask(call):
    """Dense SDPA that drops the text key mask when every text key is valid (same result; lets SDPA use
    its fastest kernels: with a boolean mask it may fall back to slower ones)."""
    from sta_search.accelerate import fast_dense_attention

    return fast_dense_attention(call)


def _unique_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"].get("unique_graphs", 0))


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    for name in ("triton", "diffusers"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001
            out[name] = None
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", "--spec", nargs="+", default=["hunyuan-720p", "wan-1.3b-480p"], choices=sorted(MODELS))
    parser.add_argument("--all-text-valid", action="store_true",
                        help="hunyuan15-*: every joint text token valid (no key mask) instead of the spec's text_valid")
    parser.add_argument("--windows", nargs="+", type=parse_window, default=[(5, 5, 5), (3, 3, 3)])
    parser.add_argument("--backends", nargs="+", default=["triton", "flex"],
                        choices=["gluon", "gluonfp8", "gluonint8", "triton", "auto", "flex", "reference"],
                        help="STA backends (gluonfp8 / gluonint8: the 8-bit Gluon kernel, i.e. gluon with precision fp8 / "
                             "int8)")
    parser.add_argument("--compile", choices=["off", "on", "both"], default="both")
    parser.add_argument("--compiled-backends", nargs="+", default=["triton"],
                        choices=["gluon", "gluonfp8", "gluonint8", "triton", "auto", "flex", "reference"],
                        help="STA backends timed again after torch.compile")
    parser.add_argument("--native", action=argparse.BooleanOptionalAction, default=True,
                        help="also time diffusers' own processors (dense-native)")
    parser.add_argument("--dense-nomask", action="store_true",
                        help="also time dense SDPA without the (all-valid) text key mask")
    parser.add_argument("--skip-masked-dense", action="store_true",
                        help="time dense only without the all-true text mask (dense-nomask), not diffusers' masked SDPA")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp8", "int8"],
                        help="precision of the STA modes' sparse calls (fp8: the FP8 Gluon kernel, --backends gluon)")
    parser.add_argument("--kernel-profile", action="store_true",
                        help="after timing each mode, one more forward under torch.profiler: its top GPU kernels")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--time-budget", type=float, default=1e9, help="seconds; later modes are skipped after it")
    parser.add_argument("--out", default="bench/results/e2e.json")
    args = parser.parse_args(argv)
    Bench(args).run()


if __name__ == "__main__":
    sys.exit(main())
