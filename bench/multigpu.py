"""Several GPUs: Ulysses STA (one denoising step) and sharded profiling throughput, 2 ranks vs 1.

Launched once by torchrun with 2 processes; every comparison runs inside that one launch, so both sides
share the processes, the weights and the compiled kernels:

    torchrun --nproc-per-node 2 bench/multigpu.py --out bench/results/multigpu-h100x2.json

1. **Ulysses** (``wan-1.3b-480p``: random-init Wan 2.1 1.3B transformer, bf16, latent (21, 60, 104) ->
   canvas (21, 30, 52) = 32,760 tokens, 12 heads): one transformer forward (Wan runs two per denoising
   step under CFG; both run alike) timed on one GPU (rank 0 alone; rank 1 waits), then on two GPUs after
   ``sta_search.distributed.enable_ulysses(transformer, 2)``. Each side dense (diffusers' own processors,
   cuDNN SDPA first; under context parallelism diffusers' Ulysses path) and STA with a uniform window
   (hooked processors, Triton kernel; under Ulysses the STA runs inside diffusers' all-to-all).
   Weights are broadcast from rank 0, so both sides compute the same function; the 2-GPU STA output
   with per-head windows that differ is compared with the 1-GPU output (relative L2, bf16).
2. **Sharded profile** (``sta_search.distributed.sharded_profile``): a WanPipeline around the same
   random-init 1.3B transformer (tiny text encoder with the real 4096-wide output, tiny VAE: only the
   transformer's work counts), ``--profile-prompts`` prompts at ``--profile-size``, all steps profiled,
   default error shortlist; rank 0 alone (a one-rank context) vs both ranks. The recall pass uses a
   fixed Triton configuration (``STA_SEARCH_RECALL_CONFIG``) instead of tuning, identical on both sides.
   After one warm-up prompt per rank; wall time from a barrier to the combined profile on disk.

Timings: wall clock between barriers around ``torch.cuda.synchronize()``, median of ``--reps``
after ``--warmup`` forwards. The JSON is rewritten after every phase.

``--smoke`` runs the same code on CPU with a tiny Wan (gloo, flex/reference backends) to check the
script, not to measure anything.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # tiny_pipes: tokenizer, tiny VAE

WAN_13B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
               out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
               qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
TINY_WAN = dict(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=32, in_channels=16,
                out_channels=16, text_dim=4096, freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
PROMPTS = ("a red car driving through a city street at night", "a dog running on the beach, tracking shot",
           "aerial view of a forest river in the morning", "a woman dancing in a quiet room, close up",
           "snow falling over a mountain village", "a boat on the ocean under golden light",
           "a crowd walking across a busy street", "neon sign reflection in the rain")


def log(context, *msg):
    print(f"[rank {context.rank}] {time.strftime('%H:%M:%S')}", *msg, flush=True)


def build_transformer(config: dict, device, dtype):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device), torch.no_grad():
            model = WanTransformer3DModel(**config)
    finally:
        torch.set_default_dtype(previous)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    for name, module in model.named_modules():  # like from_pretrained(torch_dtype=...)
        if any(part in (model._keep_in_fp32_modules or []) for part in name.split(".")):
            module.float()
    if dist.is_initialized():
        for tensor in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(tensor.data, src=0)
    return model


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, warmup: int, reps: int, collective: bool):
    """Median wall seconds of fn() (between barriers when `collective`)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if collective:
            dist.barrier()
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        if collective:
            dist.barrier()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "times_s": times}


def sta_attention_fn(tables, tile, backend):
    from sta_search.kernels import sta_attention
    from sta_search.models.parallel import windows_for_call

    def attention(call):
        return sta_attention(call.q, call.k, call.v, canvas=call.canvas, tile=tile,
                             windows=windows_for_call(tables[call.layer], call), backend=backend)

    return torch.compiler.disable(attention)


def mixed_tables(layers: int, heads: int, grid) -> torch.Tensor:
    """Per-head windows that differ (cycling anisotropic windows), for the 1 vs 2 GPU output check."""
    choices = [(3, 3, 3), (1, 3, 5), (3, 1, 3), (2, 4, 2), (1, 1, 7), (4, 2, 3)]
    rows = [[min(c, n) for c, n in zip(choices[(layer + h) % len(choices)], grid)] for layer in range(layers)
            for h in range(heads)]
    return torch.tensor(rows, dtype=torch.int32).reshape(layers, heads, 3)


# ------------------------------------------------------------------------------------------ Ulysses
def bench_ulysses(context, args, result, save):
    from sta_search.accelerate import sdpa_cudnn_first
    from sta_search.distributed import enable_ulysses
    from sta_search.kernels.geometry import Geometry
    from sta_search.models import hook_attention

    device, smoke = context.device, args.smoke
    dtype = torch.float32 if smoke else torch.bfloat16
    config, latent, tile = (TINY_WAN, (1, 16, 4, 32, 32), (1, 4, 4)) if smoke else (WAN_13B, (1, 16, 21, 60, 104),
                                                                                      (6, 8, 8))
    backend = "reference" if smoke else "auto"
    window = tuple(args.window)
    model = build_transformer(config, device, dtype)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*latent, generator=g).to(device, dtype)
    text = torch.randn(1, 512, 4096, generator=g).to(device, dtype)
    t = torch.tensor([500], device=device, dtype=torch.long)
    p = config["patch_size"]
    canvas = (latent[2] // p[0], latent[3] // p[1], latent[4] // p[2])
    geometry = Geometry(canvas, tile)
    layers, heads = config["num_layers"], config["num_attention_heads"]
    uniform = torch.tensor(geometry.clip_window(window), dtype=torch.int32).expand(layers, heads, 3).to(device)
    mixed = mixed_tables(layers, heads, geometry.grid).to(device)
    info = {"model": "wan-1.3b-480p (random init)" if not smoke else "tiny wan (smoke)", "latent": list(latent),
            "canvas": list(canvas), "tile": list(tile), "heads": heads, "layers": layers, "window": list(window),
            "density": geometry.density(geometry.clip_window(window)), "dtype": str(dtype), "backend": backend}
    result["ulysses"] = {"setup": info}

    def forward():
        with torch.no_grad():
            return model(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]

    def run_sta(tables):
        with hook_attention(model, sta_attention_fn(tables, tile, backend)):
            return forward()

    with sdpa_cudnn_first(device):
        one = {}
        if context.rank == 0:  # one GPU: rank 0 alone
            one["dense"] = timed(forward, device, args.warmup, args.reps, collective=False)
            log(context, "1 GPU dense", one["dense"]["median_s"])
            one["sta"] = timed(lambda: run_sta(uniform), device, args.warmup, args.reps, collective=False)
            log(context, "1 GPU sta", one["sta"]["median_s"])
            reference = run_sta(mixed).float()
        dist.barrier()
        enable_ulysses(model, context.world_size, canvas=canvas)
        two = {"dense": timed(forward, device, args.warmup, args.reps, collective=True)}
        log(context, f"{context.world_size} GPU dense", two["dense"]["median_s"])
        two["sta"] = timed(lambda: run_sta(uniform), device, args.warmup, args.reps, collective=True)
        log(context, f"{context.world_size} GPU sta", two["sta"]["median_s"])
        parallel = run_sta(mixed).float()
    if context.rank == 0:
        rel = float((parallel - reference).norm() / reference.norm())
        result["ulysses"].update({
            "one_gpu": one, f"{context.world_size}_gpus": two,
            "speedup_sta": one["sta"]["median_s"] / two["sta"]["median_s"],
            "target_speedup_sta": 1.6,
            "speedup_dense": one["dense"]["median_s"] / two["dense"]["median_s"],
            "sta_vs_dense_one_gpu": one["dense"]["median_s"] / one["sta"]["median_s"],
            "mixed_windows_rel_l2_ulysses_vs_one_gpu": rel,
            "mixed_windows_max_abs_diff": float((parallel - reference).abs().max()),
        })
        save()
    del model


# ------------------------------------------------------------------------------------------ profile
def build_pipeline(context, smoke: bool):
    from tiny_pipes import _vocab_size, _word_level_tokenizer
    from transformers import UMT5Config, UMT5EncoderModel

    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline
    from sta_search.models import LoadedModel, get_adapter

    device = context.device
    dtype = torch.float32 if smoke else torch.bfloat16
    transformer = build_transformer(TINY_WAN if smoke else WAN_13B, device, dtype)
    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    torch.manual_seed(0)
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=_vocab_size(), d_model=4096, d_kv=8, d_ff=32,
                                               num_layers=1, num_heads=2, relative_attention_num_buckets=8,
                                               pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    pipe = WanPipeline(tokenizer=_word_level_tokenizer(bos=0), text_encoder=text_encoder, vae=vae,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), transformer=transformer)
    pipe.to(device=device, dtype=dtype)
    for module in (text_encoder, vae, transformer):  # as from_pretrained leaves them: no dropout
        module.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    adapter = get_adapter(transformer).bind(pipe)
    return LoadedModel(pipeline=pipe, transformer=transformer, adapter=adapter,
                       source="random-init Wan2.1-1.3B" if not smoke else "tiny wan")


def bench_profile(context, args, result, save):
    from sta_search.distributed import DistContext, sharded_profile
    from sta_search.profile import ProfileSettings

    if not args.smoke:
        os.environ.setdefault("STA_SEARCH_RECALL_CONFIG", args.recall_config)
    loaded = build_pipeline(context, args.smoke)
    height, width, frames = args.profile_size
    prompts = PROMPTS[: args.profile_prompts]
    settings = ProfileSettings(model=loaded.source, prompts=prompts, steps=args.profile_steps, height=height,
                               width=width, frames=frames, seed=0, tile=(1, 4, 4) if args.smoke else (6, 8, 8),
                               device=str(context.device), dtype="float32" if args.smoke else "bfloat16")
    alone = DistContext(0, 1, context.local_rank, context.device, None)
    # one folder all ranks see (one host): sharded_profile's shards and the combined profile
    root = Path(tempfile.gettempdir()) / f"sta-mgpu-{os.environ.get('MASTER_PORT', '0')}"
    if context.rank == 0:
        shutil.rmtree(root, ignore_errors=True)
    dist.barrier()
    # warm-up: one prompt per rank, each alone (kernel compiles)
    warm = dataclasses.replace(settings, prompts=prompts[:1])
    sharded_profile(warm, root / f"warm{context.rank}", loaded=loaded,
                    context=DistContext(0, 1, context.local_rank, context.device, None))
    dist.barrier()
    log(context, "warm")
    seconds = {}
    if context.rank == 0:
        t0 = time.perf_counter()
        sharded_profile(settings, root / "one", loaded=loaded, context=alone)
        seconds[1] = time.perf_counter() - t0
        log(context, "1 rank", seconds[1])
    dist.barrier()
    t0 = time.perf_counter()
    combined = sharded_profile(settings, root / "many", loaded=loaded, context=context)
    seconds[context.world_size] = time.perf_counter() - t0
    log(context, f"{context.world_size} ranks", seconds[context.world_size])
    if context.rank == 0:
        from sta_search.artifacts import Profile

        single = Profile.load(root / "one")
        worst = max(float((combined.tensors[n].double() - single.tensors[n].double()).abs().max()
                          / single.tensors[n].double().abs().max().clamp_min(1e-30))
                    for n in ("recall_sum", "offset_mass_sum", "error", "recall"))
        result["profile"] = {
            "setup": {"model": loaded.source, "prompts": len(prompts), "steps": args.profile_steps,
                      "size": [height, width, frames], "canvas": combined.header["canvas"],
                      "tile": combined.header["tile"], "error_windows": combined.header["error_windows"],
                      "forwards_per_step": combined.header["forwards_per_step"],
                      "recall_config": os.environ.get("STA_SEARCH_RECALL_CONFIG")},
            "seconds": {str(k): v for k, v in seconds.items()},
            "prompts_per_second": {str(k): len(prompts) / v for k, v in seconds.items()},
            "speedup": seconds[1] / seconds[context.world_size],
            "target_speedup": 1.9,
            "headers_equal": combined.header == single.header,
            "max_abs_diff_over_max_vs_one_rank": worst,
        }
        save()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--parts", nargs="+", default=["ulysses", "profile"], choices=["ulysses", "profile"])
    parser.add_argument("--window", type=lambda s: [int(v) for v in s.split(",")], default=[3, 3, 3])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--profile-prompts", type=int, default=4)
    parser.add_argument("--profile-steps", type=int, default=2)
    parser.add_argument("--profile-size", type=lambda s: [int(v) for v in s.split(",")], default=[480, 832, 33],
                        help="height,width,frames")
    parser.add_argument("--recall-config", default="128,64,4,3,0,0")
    parser.add_argument("--smoke", action="store_true", help="CPU/gloo check of this script (tiny model)")
    args = parser.parse_args()
    if args.smoke:
        args.profile_size, args.warmup, args.reps = [64, 128, 9], 1, 2

    from sta_search.distributed import init_from_env, shutdown

    context = init_from_env("cpu" if args.smoke else None)
    if context.world_size < 2:
        raise SystemExit("launch with torchrun --nproc-per-node 2 (or more)")
    result = {
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "world_size": context.world_size, "backend": context.backend,
        "device": torch.cuda.get_device_name(context.device) if context.device.type == "cuda" else platform.processor() or "cpu",
        "versions": {"torch": torch.__version__, "triton": _version("triton"), "diffusers": _version("diffusers")},
        "nccl_env": {k: v for k, v in os.environ.items() if k.startswith("NCCL_")},
    }

    def save():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")

    if context.rank == 0:
        save()
    for part in args.parts:
        try:
            (bench_ulysses if part == "ulysses" else bench_profile)(context, args, result, save)
        except Exception as exc:  # keep the other part's numbers
            result[f"{part}_error"] = f"{type(exc).__name__}: {exc}"
            log(context, part, "failed:", result[f"{part}_error"])
            if context.rank == 0:
                save()
        if context.device.type == "cuda":
            torch.cuda.empty_cache()
    shutdown()


def _version(name):
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


if __name__ == "__main__":
    main()
