"""End-to-end speed of a shortened denoising loop: dense vs a diffusers step cache vs STA vs cache + STA.

A random-init transformer of one of bench/e2e.py's specs (``--model``/``--spec``: ``hunyuan-720p``: HunyuanVideo
13B at 720p, ``wan-1.3b-480p``: Wan 2.1 1.3B at 480p, ``wan-14b-720p``, ``hunyuan15-720p``; weights do not change
speed), regionally compiled
(``sta_search.accelerate.compile_transformer``; ``--compile off`` to skip), runs the first ``--steps`` steps
of a ``--of``-step flow-matching schedule the way a diffusers pipeline does: per step, one forward per CFG
branch (Wan: cond + uncond, HunyuanVideo: one, guidance-distilled) inside
``transformer.cache_context(name, step_index=i, num_inference_steps=of)``, then an Euler update. Modes:

- ``dense``: diffusers' own attention processors, no cache;
- ``cache``: the same with the step cache (``--cache``, a name of ``sta_search.caches.CACHE_NAMES``);
- ``sta``: ``sta_search.accelerate`` with a uniform window (``--window``) on every timed step;
- ``cache+sta``: ``sta_search.accelerate(..., cache=NAME)``.

Each mode: one untimed warm-up loop (compilation, autotuning), then ``--reps`` timed loops (synchronised
wall clock; median). The JSON holds device, versions, the spec, the cache's skip pattern as measured
(which (step, layer) self-attention ops ran), times and speedups against ``dense``.

Caveats written into the JSON: the loop is the *first* ``--steps`` steps (cache warm-up included, no
dense STA steps: the STA paper keeps its first steps dense, which a full-run estimate must add back);
``first-block``/``mag`` decide from the data, so on random weights their skip pattern is not the real
model's (``taylorseer``, the default, skips by step index alone).

    python bench/e2e_cache.py --model hunyuan-720p --cache taylorseer --steps 10 --of 50 --window 3,6,10 \\
        --out bench/results/e2e-cache-h200.json
    python bench/e2e_cache.py --quick          # tiny CPU smoke run
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import statistics
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
MODES = ("dense", "cache", "sta", "cache+sta")


def _e2e():
    spec = importlib.util.spec_from_file_location("e2e_bench", HERE / "e2e.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def flow_schedule(total: int, shift: float = 1.0) -> list[float]:
    """Sigmas of a flow-matching schedule (``total`` steps + the final 0), shifted like diffusers' FlowMatch."""
    sigmas = [1.0 - i / total for i in range(total)]
    sigmas = [shift * s / (1 + (shift - 1) * s) for s in sigmas]
    return sigmas + [0.0]


def denoise(transformer, inputs: dict, spec: dict, steps: int, total: int) -> torch.Tensor:
    """The first ``steps`` steps of a ``total``-step Euler flow loop, each forward in a cache context."""
    sigmas = flow_schedule(total)
    latents = inputs["hidden_states"].clone()
    branches = ("cond", "uncond")[: spec["forwards_per_step"]]
    for i in range(steps):
        timestep = torch.full((latents.shape[0],), sigmas[i] * 1000.0, device=latents.device)
        outputs = []
        for name in branches:
            with transformer.cache_context(name, step_index=i, num_inference_steps=total):
                kwargs = dict(inputs, hidden_states=latents, timestep=timestep.to(inputs["timestep"].dtype))
                outputs.append(transformer(**kwargs)[0])
        velocity = outputs[0] if len(outputs) == 1 else outputs[1] + 5.0 * (outputs[0] - outputs[1])
        latents = latents + (sigmas[i + 1] - sigmas[i]) * velocity
    return latents


def main(argv=None) -> dict:
    e2e = _e2e()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", "--spec", default="hunyuan-720p", choices=sorted(e2e.MODELS))
    parser.add_argument("--cache", default="taylorseer")
    parser.add_argument("--window", type=e2e.parse_window, default=(3, 6, 10))
    parser.add_argument("--steps", type=int, default=10, help="timed steps: the first STEPS of the schedule")
    parser.add_argument("--of", type=int, default=50, help="steps of the whole schedule")
    parser.add_argument("--warmup-steps", type=int, default=None,
                        help="steps of each mode's untimed warm-up loop (default: --steps); at least 4 lets taylorseer "
                             "reach a predicted step (its 4th) before timing")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--compile", choices=["on", "off"], default="on")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                        help="modes to run, in this order (dense is needed for the speedups; a mode that fails, "
                             "e.g. out of memory, is recorded under 'failed' and the next one runs)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny CPU smoke run (tiny-hunyuan, 6 steps)")
    parser.add_argument("--out", default=None, help="JSON file (default: bench/results/e2e-cache-<time>.json)")
    parser.add_argument("--isolate", action="store_true",
                        help="run each mode in a fresh Python process (its own model build, compile and CUDA memory: "
                             "what one mode leaves cached cannot push the next out of memory), then merge the JSONs")
    args = parser.parse_args(argv)
    if args.isolate:
        return _run_isolated(args, argv)
    if args.quick:
        args.model, args.steps, args.of, args.window = "tiny-hunyuan", 6, 6, (1, 1, 1)
        args.backend, args.compile, args.dtype, args.device = "reference", "off", "float32", "cpu"
    out_channels = e2e.MODELS[args.model]["config"].get("out_channels")
    if out_channels is not None and out_channels != e2e.MODELS[args.model]["latent"][1]:
        parser.error(f"--model {args.model}: its input carries condition channels ({e2e.MODELS[args.model]['latent'][1]} "
                     f"in, {out_channels} out); this loop updates the input latent in place")
    if not 1 <= args.steps <= args.of:
        parser.error(f"--steps {args.steps} must be in [1, --of {args.of}]")

    import sta_search
    from sta_search.accelerate import compile_transformer
    from sta_search.caches import CACHE_NAMES, resolve_cache
    from sta_search.maskconfig import MaskConfig
    from sta_search.models import get_adapter

    if args.cache not in CACHE_NAMES or args.cache == "none":
        parser.error(f"--cache must be one of {', '.join(c for c in CACHE_NAMES if c != 'none')}")
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    spec = e2e.MODELS[args.model]
    transformer = e2e.build_transformer(spec, device, dtype)
    resolve_cache(args.cache, transformer)  # exits with the reason when this cache cannot run on the spec
    inputs = e2e.make_inputs(spec, device, dtype)
    info = get_adapter(transformer).info(transformer)
    text_len = spec["text_len"] if spec["cls"].startswith("Hunyuan") else 0
    mask = MaskConfig.uniform(info, spec["canvas"], e2e.spec_tile(spec) if not args.quick else (1, 4, 4), text_len, args.of,
                              args.window, dense_steps=())
    if args.compile == "on":
        compile_transformer(transformer)

    out_path = Path(args.out) if args.out else HERE / "results" / (
        f"e2e-cache-{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.json")
    result = {
        "bench": "e2e_cache", "time": dt.datetime.now(dt.timezone.utc).isoformat(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "versions": e2e.versions(), "model": args.model, "canvas": list(spec["canvas"]),
        "cache": args.cache, "window": list(args.window), "backend": args.backend, "compile": args.compile,
        "dtype": args.dtype, "steps": args.steps, "of_steps": args.of, "warmup_steps": args.warmup_steps or args.steps, "forwards_per_step": spec["forwards_per_step"],
        "caveats": ["timed: the first --steps steps of the schedule (cache warm-up included); no dense STA steps",
                    "first-block/mag decide from the data: on random weights their skip pattern is not the model's"],
        "modes": {},
    }

    def run(mode: str):
        cache = args.cache if "cache" in mode else None
        sta = "sta" in mode
        times, pattern = [], None
        for rep in range(args.reps + 1):  # rep 0: warm-up
            steps = args.steps if rep or args.warmup_steps is None else min(args.warmup_steps, args.steps)
            with torch.inference_mode():
                if sta:
                    with sta_search.accelerate(transformer, mask, backend=args.backend, cache=cache) as acc:
                        acc.attention.trace = []
                        _sync(device)
                        t0 = time.perf_counter()
                        denoise(transformer, inputs, spec, steps, args.of)
                        _sync(device)
                        trace = acc.attention.trace
                elif cache:
                    from sta_search.caches import use_cache

                    with use_cache(transformer, cache):
                        _sync(device)
                        t0 = time.perf_counter()
                        denoise(transformer, inputs, spec, steps, args.of)
                        _sync(device)
                else:
                    _sync(device)
                    t0 = time.perf_counter()
                    denoise(transformer, inputs, spec, steps, args.of)
                    _sync(device)
            if rep:
                times.append(time.perf_counter() - t0)
            if sta and cache:
                ran = sorted({(step, layer) for step, layer, *_ in trace})
                pattern = {"computed_steps": sorted({s for s, _ in ran if all((s, l) in ran for l in range(info.num_layers))}),
                           "attention_ops_run": len(ran), "attention_ops_total": args.steps * info.num_layers}
        entry = {"seconds": times, "median_seconds": statistics.median(times)}
        if pattern is not None:
            entry["skip_pattern"] = pattern
        result["modes"][mode] = entry
        if device.type == "cuda":
            torch.cuda.empty_cache()

    for mode in args.modes:
        try:
            run(mode)
        except torch.OutOfMemoryError as exc:
            result.setdefault("failed", {})[mode] = f"{type(exc).__name__}: {str(exc)[:300]}"
            print(f"{mode}: out of memory, recorded under 'failed'", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if "dense" in result["modes"]:
            dense = result["modes"]["dense"]["median_seconds"]
            result["speedup_vs_dense"] = {m: dense / v["median_seconds"] for m, v in result["modes"].items()}
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=2) + "\n")  # rewritten after every mode
    print(json.dumps({"out": str(out_path), "speedup_vs_dense": result.get("speedup_vs_dense"),
                      "failed": result.get("failed")}, indent=2))
    return result


def _run_isolated(args, argv) -> dict:
    """Each of ``args.modes`` through this script in its own process; one JSON with every mode and the speedups."""
    import subprocess
    import sys
    import tempfile

    argv = list(sys.argv[1:] if argv is None else argv)
    cleaned, skip = [], False
    for item in argv:  # drop --isolate, --modes and --out with their values
        if skip and not item.startswith("--"):
            continue
        skip = item in ("--modes", "--out")
        if not skip and item != "--isolate":
            cleaned.append(item)
    out_path = Path(args.out) if args.out else HERE / "results" / (
        f"e2e-cache-{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.json")
    merged: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            part = Path(tmp) / f"{mode.replace('+', '-')}.json"
            proc = subprocess.run([sys.executable, __file__, *cleaned, "--modes", mode, "--out", str(part)])
            if part.exists():
                result = json.loads(part.read_text())
                if not merged:
                    merged = {**result, "modes": {}, "isolated": "each mode in its own process"}
                merged["modes"].update(result.get("modes", {}))
                if result.get("failed"):
                    merged.setdefault("failed", {}).update(result["failed"])
            elif proc.returncode:
                merged.setdefault("failed", {})[mode] = f"its process exited with {proc.returncode} before writing"
            if "dense" in merged.get("modes", {}):
                dense = merged["modes"]["dense"]["median_seconds"]
                merged["speedup_vs_dense"] = {m: dense / v["median_seconds"] for m, v in merged["modes"].items()}
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps(merged, indent=2) + "\n")
    print(json.dumps({"out": str(out_path), "speedup_vs_dense": merged.get("speedup_vs_dense"),
                      "failed": merged.get("failed")}, indent=2))
    return merged


if __name__ == "__main__":
    main()
