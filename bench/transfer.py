"""Do mask configs carry to other canvases? Transfer rules measured on a bundled model (tiny on CPU, small on GPU).

``--model tiny`` (default): trained at 64x64 px, 8 frames (canvas (8, 16, 16), tile (2, 4, 4): grid (4, 4, 4)),
low canvas ``64x64``, high ``96x96`` (canvas (8, 24, 24), grid (4, 6, 6)). ``--model small``: tile (4, 4, 4),
trained at both canvases of the study: low ``8x64x96`` px (canvas (8, 16, 24), grid (2, 4, 6)), high
``16x96x160`` px (canvas (16, 24, 40), grid (4, 6, 10)); prompts from ``sta_search.small.data`` (profiling:
training captions, evaluation: held-out captions). Wan's RoPE lets either run at other sizes. This study

1. profiles the model on a few training prompts at the low canvas (``--low``, ``HxW`` or ``FxHxW`` px) and at
   the high canvas (``--high``), each with an error shortlist spanning its grid's densities;
2. selects at the low canvas (``select``, objective error, budget ``--density``) and carries that to the
   high canvas with ``same_tiles`` and ``same_fraction``, and re-solves at the high canvas from the low
   profile's offset mass (``resolve``, budget ``--density``, optionally ``--beyond zero`` too);
3. for every transferred config, selects *directly* on the high profile at the transferred config's exact
   density (the fair reference: same density, searched where it runs);
4. generates held-out prompts at the high canvas densely and with every config (same initial noise) and
   reports PSNR / SSIM vs dense, and per rule ``transferred - direct`` in dB (the issue's target, on the
   ``small`` model: within 0.5 dB);
5. (``--cli-check``, default on) checks the end-user path through the CLI in subprocesses:
   ``sta-search select LOW_PROFILE --canvas T,H,W`` and ``--frames/--height/--width`` write configs for the
   unprofiled high canvas, ``--add-to`` builds a two-canvas file (docs/mask-config.md v3), and
   ``sta-search generate MODEL --mask MULTI --compare-dense`` runs at both canvases with the right entry.

STA during generation: ``--sta-backend mask`` (default on CPU) is SDPA under the reference backend's mask
(bench/quality.py ``ConfigAttention``); a kernel backend name (``auto``, default on CUDA; ``triton``,
``gluon``, ``flex``) runs ``sta_search.accelerate.MaskAttention``, what ``sta-search generate`` runs.
``--time-budget S`` starts no further config (they run in pairs, rule by rule) and skips the CLI check once
S seconds have passed.

    nice python bench/transfer.py                       # tiny, ~10 min on 2 free CPU cores
    python bench/transfer.py --quick                    # smoke run
    python bench/transfer.py --model small --device cuda --time-budget 150 --out DIR/   # ~1.5-2.5 min, one H200
        (estimate, not measured: mostly Triton/Gluon JIT; 4 + 4 prompts, 16 steps, every 2nd profiled, bf16)
    python bench/transfer.py --model small --quick --low 4x32x48 --high 8x48x80 --steps 2   # CPU smoke of small

Writes ``bench/results/transfer-<UTC timestamp>.json`` (or ``--out``; a folder gets that file name in it).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

import quality  # noqa: E402  (bench/quality.py: tiny prompts, generate_batch, ConfigAttention)

RESULTS_DIR = REPO / "bench" / "results"
# error shortlists per tile grid: densities from 1/grid volume up to full, dense around 0.3
SHORTLISTS = {
    (4, 4, 4): ((1, 1, 1), (1, 2, 2), (2, 2, 2), (1, 3, 3), (2, 3, 3), (3, 3, 3), (2, 4, 4), (4, 4, 4)),  # tiny low
    (4, 6, 6): ((1, 1, 1), (1, 3, 3), (2, 3, 3), (3, 3, 3), (2, 4, 4), (3, 4, 4), (2, 5, 5), (3, 5, 5),
                (4, 6, 6)),  # tiny high
    (2, 4, 6): ((1, 1, 1), (1, 2, 2), (1, 2, 3), (2, 2, 2), (1, 3, 3), (2, 2, 3), (1, 3, 4), (2, 2, 4), (2, 3, 3),
                (2, 3, 4), (2, 3, 5), (2, 4, 6)),  # small low (densities 0.02 .. 0.62, full)
    (4, 6, 10): ((1, 1, 1), (1, 3, 3), (2, 3, 3), (2, 3, 5), (3, 3, 5), (2, 4, 6), (2, 5, 7), (3, 4, 6), (3, 5, 5),
                 (3, 5, 7), (4, 5, 7), (3, 6, 10), (4, 6, 10)),  # small high (0.004 .. 0.75, full)
}
DEFAULT_CANVASES = {"tiny": ("64x64", "96x96"), "small": ("8x64x96", "16x96x160")}
MODEL_KINDS = ("tiny", "small")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--low", default=None, help="low canvas pixel size HxW or FxHxW (the profile to transfer from; "
                   "default tiny 64x64, small 8x64x96)")
    p.add_argument("--high", default=None, help="high canvas pixel size HxW or FxHxW (where the configs run; "
                   "default tiny 96x96, small 16x96x160)")
    p.add_argument("--train-prompts", type=int, default=None, help="profiling prompts (default tiny 2, small 4)")
    p.add_argument("--heldout-prompts", type=int, default=None, help="evaluation prompts (default tiny 3, small 4)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's, tiny 8, small 16)")
    p.add_argument("--profile-every", type=int, default=2)
    p.add_argument("--density", type=float, default=0.3, help="density budget of the sparse steps")
    p.add_argument("--beyond-zero", action="store_true", help="also run resolve with --beyond zero")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="tiny", help="tiny, small, or a folder of either format")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="float32 (default on CPU) or bfloat16 (default on CUDA)")
    p.add_argument("--profile-backend", default="auto")
    p.add_argument("--sta-backend", default=None,
                   help="STA in generation: mask (SDPA + reference mask; default on CPU) or a kernel backend for "
                        "MaskAttention: auto (default on CUDA), triton, gluon, flex, reference")
    p.add_argument("--cli-check", action=argparse.BooleanOptionalAction, default=True,
                   help="also run select --canvas / --add-to and generate on both canvases through the CLI")
    p.add_argument("--cli-subprocess", action="store_true",
                   help="run the CLI check's commands as `python -m sta_search` subprocesses (default: in process)")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds: start no further config (nor the CLI check) once this much has passed")
    p.add_argument("--work", default="/tmp/sta-search-transfer")
    p.add_argument("--out", default=None, help="result JSON file, or a folder to write transfer-<stamp>.json in")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 + 1 prompts, 3 steps, small shortlists")
    return p.parse_args(argv)


def _size(text: str, frames: int) -> tuple[int, int, int]:
    """(frames, height, width) from ``HxW`` (frames: the model's) or ``FxHxW``."""
    parts = [int(v) for v in text.lower().split("x")]
    if len(parts) == 2:
        return (frames, *parts)
    if len(parts) == 3:
        return tuple(parts)
    raise SystemExit(f"canvas size {text!r} is not HxW or FxHxW")


def model_kind(folder: Path) -> str:
    from sta_search.small import is_small_folder

    return "small" if is_small_folder(folder) else "tiny"


def base_settings(folder: Path, kind: str):
    if kind == "small":
        from sta_search.small import recommended_settings
    else:
        from sta_search.tiny import recommended_settings
    return recommended_settings(folder)


def prompt_split(kind: str, train: int, heldout: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """(profiling prompts, evaluation prompts), disjoint: bench/quality.py's split (small: training captions,
    never held out, and held-out captions of ``sta_search.small.data``, split ``seed``; tiny: split 0)."""
    return quality.prompts(train, heldout, split=seed if kind == "small" else 0, kind=kind)


def shortlist_for(grid, quick: bool):
    from sta_search.stats import DEFAULT_ERROR_WINDOWS

    windows = SHORTLISTS.get(tuple(grid))
    if windows is None:  # another canvas: the profiler's default shortlist, clipped to the grid
        windows = tuple(dict.fromkeys(tuple(min(w, n) for w, n in zip(win, grid)) for win in DEFAULT_ERROR_WINDOWS))
    return windows[:3] + windows[-1:] if quick else windows


def profile_canvas(args, loaded, settings, training, suffix: str):
    """Profile ``training`` at ``settings``' size (resumed from ``--work`` when rerun with the same setup)."""
    from sta_search.profile import ProfileSettings, run_profile

    canvas = loaded.canvas(settings.height, settings.width, settings.frames)
    grid = tuple(-(-c // t) for c, t in zip(canvas, settings.tile))
    folder = Path(args.work) / f"profile-{args.kind}-{suffix}-{args.dtype}-s{args.steps}e{args.profile_every}"
    t0 = time.perf_counter()
    profile = run_profile(
        ProfileSettings(model=args.model, prompts=tuple(training), steps=args.steps, height=settings.height,
                        width=settings.width, frames=settings.frames, seed=args.seed,
                        profile_steps=args.profile_every, tile=tuple(settings.tile),
                        windows=tuple(shortlist_for(grid, args.quick)), device=args.device, dtype=args.dtype,
                        backend=args.profile_backend),
        folder, resume=True, loaded=loaded)
    seconds = time.perf_counter() - t0
    print(f"profile {suffix}: {profile.num_prompts} prompts in {seconds:.1f} s -> {folder}", flush=True)
    return profile, folder, seconds


def attention_for(config, backend: str):
    if backend == "mask":
        return quality.ConfigAttention(config)
    from sta_search.accelerate import MaskAttention

    return MaskAttention(config, backend=backend)


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def main(argv=None) -> dict:
    args = parse_args(argv)
    from sta_search.maskconfig import MaskConfig
    from sta_search.models import dense_attention, load_model, resolve_model_path
    from sta_search.select import SelectOptions, select_windows
    from sta_search.transfer import resolve_from_offsets, transfer_config
    from sta_search.video import fidelity

    t_start = time.perf_counter()
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    folder, _ = resolve_model_path(args.model)
    args.kind = kind = model_kind(folder)
    name = f"transfer-{kind}-{stamp}.json" if kind != "tiny" else f"transfer-{stamp}.json"
    out_path = Path(args.out) if args.out else RESULTS_DIR / name
    if out_path.is_dir() or (args.out and args.out.endswith(os.sep)):
        out_path = out_path / name
    base = base_settings(folder, kind)
    if args.train_prompts is None:
        args.train_prompts = 4 if kind == "small" else 2
    if args.heldout_prompts is None:
        args.heldout_prompts = 4 if kind == "small" else 3
    if args.quick:
        args.train_prompts, args.heldout_prompts = 1, 1
        args.steps = args.steps or 3
        args.profile_every = 1
    args.steps = steps = args.steps or base.steps
    on_cuda = str(args.device).startswith("cuda")
    args.dtype = args.dtype or ("bfloat16" if on_cuda else "float32")
    args.sta_backend = args.sta_backend or ("auto" if on_cuda else "mask")
    low_text, high_text = args.low or DEFAULT_CANVASES[kind][0], args.high or DEFAULT_CANVASES[kind][1]
    (lf, lh, lw), (hf, hh, hw) = _size(low_text, base.frames), _size(high_text, base.frames)
    loaded = load_model(args.model, args.device, getattr(torch, args.dtype))
    t_loaded = time.perf_counter() - t_start
    low = dataclasses.replace(base, height=lh, width=lw, frames=lf, steps=steps)
    high = dataclasses.replace(base, height=hh, width=hw, frames=hf, steps=steps)
    training, heldout = prompt_split(kind, args.train_prompts, args.heldout_prompts, args.seed)
    tag = "-quick" if args.quick else ""
    low_profile, low_folder, low_s = profile_canvas(args, loaded, low, training, f"{lf}x{lh}x{lw}{tag}")
    high_profile, _, high_s = profile_canvas(args, loaded, high, training, f"{hf}x{hh}x{hw}{tag}")
    target = tuple(high_profile.canvas)

    results: dict = {
        "schema": "sta-search/transfer-bench/v2", "created_utc": stamp, "versions": quality._versions(),
        "device": _device_json(args.device),
        "settings": {"model": str(args.model), "kind": kind,
                     "low": {"size": [lf, lh, lw], "canvas": list(low_profile.canvas), "grid": list(low_profile.grid)},
                     "high": {"size": [hf, hh, hw], "canvas": list(target), "grid": list(high_profile.grid)},
                     "frames": [lf, hf], "tile": list(base.tile), "steps": steps, "dtype": args.dtype,
                     "profile_steps": list(low_profile.profile_steps), "density": args.density,
                     "low_shortlist": [list(w) for w in low_profile.error_windows],
                     "high_shortlist": [list(w) for w in high_profile.error_windows],
                     "guidance_scale": base.guidance_scale, "seed": args.seed, "quick": bool(args.quick),
                     "time_budget_s": args.time_budget,
                     "sta_for_generation": ("SDPA under the reference backend's STA mask" if args.sta_backend == "mask"
                                            else f"sta_search.accelerate.MaskAttention, backend {args.sta_backend}"),
                     "fidelity": "PSNR / SSIM per frame vs dense at the high canvas, same initial noise"},
        "prompts": {"training": training, "heldout": heldout},
        "timings": {"load_s": round(t_loaded, 1), "profile_low_s": round(low_s, 1), "profile_high_s": round(high_s, 1)},
        "configs": {}, "comparisons": {}, "skipped": [],
    }

    def write():
        results["timings"]["total_s"] = round(time.perf_counter() - t_start, 1)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_name(out_path.name + ".tmp")
        tmp.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        tmp.replace(out_path)

    def over_budget() -> bool:
        return args.time_budget is not None and time.perf_counter() - t_start > args.time_budget

    opts = SelectOptions(budget=args.density)
    source = select_windows(low_profile, opts).config
    transferred = {
        "same_tiles": transfer_config(source, target, "same_tiles"),
        "same_fraction": transfer_config(source, target, "same_fraction"),
        "resolve": resolve_from_offsets(low_profile, target, opts).config,
    }
    if args.beyond_zero:
        transferred["resolve-zero"] = resolve_from_offsets(low_profile, target, opts, beyond="zero").config
    configs: list[tuple[str, MaskConfig, str]] = []  # in pairs: transferred, then its direct reference
    for rule, config in transferred.items():
        configs.append((f"transfer-{rule}", config, rule))
        density = config.density()
        least = min(high_profile.geometry.density(w) for w in high_profile.error_windows)
        budget = max(density, least)
        direct = select_windows(high_profile, SelectOptions(budget=min(budget * (1 + 1e-9), 1.0))).config
        configs.append((f"direct@{rule}", direct, rule))
    configs.append(("direct@budget", select_windows(high_profile, opts).config, "budget"))
    results["source_config"] = {"canvas": list(source.canvas), "density": source.density(),
                                "windows_used": quality.window_histogram(source)}

    t0 = time.perf_counter()
    dense = quality.generate_batch(loaded, high, heldout, steps, args.seed, dense_attention)
    _sync(args.device)
    results["timings"]["dense_generate_s"] = round(time.perf_counter() - t0, 1)
    print(f"dense at {hf}x{hh}x{hw}: {len(heldout)} prompts in {time.perf_counter() - t0:.1f} s", flush=True)
    done: dict[bytes, str] = {}
    for name, config, rule in configs:
        if over_budget():
            results["skipped"].append(name)
            print(f"{name}: skipped (--time-budget {args.time_budget:g} s)", flush=True)
            continue
        entry = {"rule": rule, "density": config.density(), "overall_density": config.overall_density(),
                 "windows_used": quality.window_histogram(config),
                 "summary": {k: v for k, v in config.summary.items()
                             if k in ("strategy", "objective", "budget", "predicted_recall", "predicted_error",
                                      "transferred_from")}}
        key = np.asarray(config.windows)[list(config.sparse_steps)].tobytes()
        if key in done:
            same = results["configs"][done[key]]
            entry.update({k: same[k] for k in ("per_prompt", "mean_psnr_db", "mean_ssim")}, same_as=done[key])
        else:
            t0 = time.perf_counter()
            video = quality.generate_batch(loaded, high, heldout, steps, args.seed, attention_for(config, args.sta_backend))
            _sync(args.device)
            per = [fidelity(v, d).to_json() for v, d in zip(video, dense)]
            entry.update(per_prompt=[{"prompt": p, "psnr_db": f["psnr_db"], "ssim": round(f["ssim"], 5)}
                                     for p, f in zip(heldout, per)],
                         mean_psnr_db=float(np.mean([f["psnr_db"] for f in per])),
                         mean_ssim=float(np.mean([f["ssim"] for f in per])),
                         generate_s=round(time.perf_counter() - t0, 1))
            done[key] = name
        results["configs"][name] = entry
        print(f"{name}: density {entry['density']:.4f} PSNR {entry['mean_psnr_db']:.2f} dB SSIM {entry['mean_ssim']:.4f}",
              flush=True)
        write()
    for rule in transferred:
        a, b = results["configs"].get(f"transfer-{rule}"), results["configs"].get(f"direct@{rule}")
        if a is None or b is None:
            continue
        diffs = [x["psnr_db"] - y["psnr_db"] for x, y in zip(a["per_prompt"], b["per_prompt"])]
        results["comparisons"][rule] = {
            "transferred_density": a["density"], "direct_density": b["density"],
            "psnr_transferred_db": a["mean_psnr_db"], "psnr_direct_db": b["mean_psnr_db"],
            "ssim_transferred": a["mean_ssim"], "ssim_direct": b["mean_ssim"],
            "delta_db": float(np.mean(diffs)), "per_prompt_delta_db": diffs,
            "within_0.5_db": bool(np.mean(diffs) >= -0.5),
        }
    write()
    if args.cli_check:
        if over_budget():
            results["skipped"].append("cli_check")
        else:
            t0 = time.perf_counter()
            results["cli_check"] = cli_check(args, low_folder, (lf, lh, lw), (hf, hh, hw), target,
                                             tuple(low_profile.canvas), heldout[0])
            results["timings"]["cli_check_s"] = round(time.perf_counter() - t0, 1)
        write()
    print(json.dumps(results["comparisons"], indent=1))
    if "cli_check" in results:
        print("cli check:", json.dumps({k: v for k, v in results["cli_check"].items() if k != "commands"}))
    print(f"wrote {out_path}")
    return results


# ----------------------------------------------------------------------------------- the CLI path
def _run_cli(argv: list[str], log: list, subprocess_mode: bool) -> int:
    """Run ``sta-search ARGV``: in this process through the typer app (default: no second import of torch and
    the model), or as ``python -m sta_search`` (``--cli-subprocess``). Returns the exit code."""
    t0 = time.perf_counter()
    if subprocess_mode:
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        done = subprocess.run([sys.executable, "-m", "sta_search", *argv], capture_output=True, text=True, env=env,
                              cwd=str(REPO), timeout=900)
        code, tail = done.returncode, done.stderr[-1500:]
    else:
        from typer.testing import CliRunner

        from sta_search.cli import app

        result = CliRunner().invoke(app, argv)
        code = result.exit_code
        tail = (result.output or "")[-1000:] + (f" {type(result.exception).__name__}: {result.exception}"
                                                 if result.exception else "")
    log.append({"argv": ["sta-search", *argv], "returncode": code, "seconds": round(time.perf_counter() - t0, 1),
                **({"output_tail": tail} if code else {})})
    return code


def cli_check(args, low_folder: Path, low_size, high_size, high_canvas, low_canvas, prompt: str) -> dict:
    """``select --canvas`` and ``--frames/--height/--width`` for the unprofiled high canvas from the low profile,
    ``--add-to`` for a two-canvas file, and ``generate`` with that file at both canvases (``--compare-dense``)."""
    from sta_search.maskconfig import MaskConfig

    work = Path(args.work) / f"cli-{args.kind}-{_dt.datetime.now().strftime('%H%M%S%f')}"
    work.mkdir(parents=True, exist_ok=True)
    log: list = []
    out: dict = {"commands": log, "ok": False, "mode": "subprocess" if args.cli_subprocess else "in-process (typer)"}
    select = ["select", str(low_folder), "--budget", f"{args.density:g}"]
    by_canvas, multi = work / "high-canvas.yaml", work / "multi.yaml"
    hf, hh, hw = high_size
    steps = [
        select + ["--canvas", ",".join(map(str, high_canvas)), "--out", str(by_canvas)],  # unprofiled canvas
        select + ["--add-to", str(multi)],  # the low (profiled) canvas
        select + ["--frames", str(hf), "--height", str(hh), "--width", str(hw), "--add-to", str(multi)],  # pixels
    ]
    for argv in steps:
        if _run_cli(argv, log, args.cli_subprocess):
            return out
    a, m = MaskConfig.load(by_canvas), MaskConfig.load(multi)
    b = m.for_canvas(tuple(high_canvas))
    out["select"] = {
        "canvas_route": {"canvas": list(a.canvas), "density": a.density(),
                         "rule": a.summary.get("transferred_from", {}).get("rule")},
        "pixel_route_same_config": bool(tuple(a.canvas) == tuple(b.canvas)
                                        and np.array_equal(np.asarray(a.windows), np.asarray(b.windows))),
        "multi_canvases": [list(c) for c in m.canvases],
    }
    out["generate"] = {}
    for label, (f, h, w), canvas in (("high", high_size, high_canvas), ("low", low_size, low_canvas)):
        folder = work / f"gen-{label}"
        code = _run_cli(["generate", str(args.model), "--mask", str(multi), "--prompt", prompt, "--frames", str(f),
                         "--height", str(h), "--width", str(w), "--steps", str(args.steps), "--seed", str(args.seed),
                         "--device", str(args.device), "--dtype", args.dtype, "--compare-dense",
                         "--backend", "reference" if args.sta_backend == "mask" else args.sta_backend,
                         "--out", str(folder)], log, args.cli_subprocess)
        if code:
            return out
        report = json.loads((folder / "report.json").read_text())
        video = report["videos"][0]
        fid = video.get("fidelity", {})
        out["generate"][label] = {
            "canvas_expected": list(canvas), "mask_canvas": report["mask"]["canvas"],
            "sparse_calls": video["sta"]["attention_calls"].get("sparse"),
            "psnr_db": fid.get("psnr_db"), "ssim": fid.get("ssim"),
        }
    g = out["generate"]
    out["ok"] = bool(len(m.canvases) == 2 and out["select"]["pixel_route_same_config"]
                     and all(v["mask_canvas"] == v["canvas_expected"] and (v["sparse_calls"] or 0) > 0 for v in g.values()))
    return out


def _device_json(device: str) -> dict:
    info = {"type": str(device), "torch_threads": torch.get_num_threads()}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["name"] = torch.cuda.get_device_name()
    return info


if __name__ == "__main__":
    main()
