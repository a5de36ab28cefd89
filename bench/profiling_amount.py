"""How much profiling does `select` need? Curves on a bundled model (issue #16, "cheaper search").

At one density budget (``--density``, default 0.3) this study measures, as a function of

* the number of profiled prompts ``n`` (``--counts``, default 1 2 4 8 16; every profiled step), and
* the profiled-step stride ``k`` (``--strides``, default 1 2 5 10; all ``max(counts)`` prompts),

1. the held-out error: the error, on a separate profile of held-out prompts (every step profiled), of the
   windows ``select`` chose from the smaller profile (mean over (sparse step, layer, head) of the held-out
   prompts' mean relative L2 error of the chosen window: ``quality.insample_cost`` on the held-out profile);
2. the PSNR vs dense of the held-out prompts' videos generated with those windows (same initial noise as the
   dense videos; STA by the package's kernels, ``accelerate.MaskAttention``, on CUDA, and as SDPA under the
   reference STA mask, ``quality.ConfigAttention``, on CPU: ``--sta``);
3. one more point, ``--forwards first`` (default on): the top prompt count at stride 1 profiled with
   ``--profile-forwards first`` (only the first transformer forward of each step; with classifier-free
   guidance, the conditional one), judged on the same held-out profile of both forwards;
4. one more, ``--shortlists proportional`` (default on): the top prompt count at stride 1 profiled with the
   profiler's ``--windows proportional`` (the default shortlist scaled to the grid); the held-out profile
   then records the union of both shortlists, so every point's windows have held-out errors;
5. ``select``'s own k-fold numbers (``heldout_error``, ``cv_insample_error``, ``heldout_gap``) and whether it
   warned that the profile is too small (``sta_search/select_check.py``).

Only one profile of the ``max(counts)`` prompts at stride 1 is recorded (plus the held-out profile); smaller
counts and larger strides are subsets of it (``select_check.subset_profile``): the first ``n`` prompts and
steps ``0, k, 2k, ...``. That is exactly what ``profile --profile-steps k`` on the first ``n`` prompts records
for the per-prompt error tensor the error objective chooses from (same seed per prompt, dense trajectory,
the statistics of a step do not depend on which other steps are profiled), up to GPU non-determinism; the
summed recall tensors of a prompt subset still hold every prompt (they only feed ``predicted_recall``).

The recommended default is read off the curves: the smallest prompt count and the largest stride whose mean
held-out PSNR is within ``--psnr-tolerance`` (0.3 dB) of the most-profiled config's (and, separately,
whose held-out error is within ``--error-tolerance``, 2 % relative, of it). One seed and a few held-out
prompts: differences of a few tenths of a dB are within noise; the JSON keeps per-prompt PSNRs.

    python3 bench/profiling_amount.py --device cuda --out OUT          # small, 16 + 4 prompts: estimated 1.5-2.5 min on one H200 (not yet measured)
    python3 bench/profiling_amount.py --quick --device cpu --out OUT  # CPU smoke: small at 8x64x96 px, 3 steps

Writes ``OUT/profiling-amount.json`` and ``OUT/profiling-amount.png``. ``--time-budget`` (seconds since
start) stops starting further generations; the error curves are always complete (they need no generation).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

import quality  # noqa: E402  (bench/quality.py: prompts, profile_stage, insample_cost, ConfigAttention, generate_batch)

TRAIN_PROMPT_SEED = quality.TRAIN_PROMPT_SEED
HELDOUT_PROMPT_SEED = quality.HELDOUT_PROMPT_SEED
PSNR_CAP_DB = 100.0  # identical frames have infinite PSNR; capped in means


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="small", help="bundled name (small, tiny) or a small/tiny pipeline folder")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="profile and generation dtype (default: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="profiled prompt counts")
    p.add_argument("--strides", type=int, nargs="+", default=[1, 2, 5, 10], help="profiled-step strides")
    p.add_argument("--heldout-prompts", type=int, default=4)
    p.add_argument("--density", type=float, default=0.3, help="density budget of the sparse steps")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile-backend", default="auto")
    p.add_argument("--psnr-tolerance", type=float, default=0.3, help="dB below the most-profiled config")
    p.add_argument("--error-tolerance", type=float, default=0.02, help="relative held-out error above it")
    p.add_argument("--sta", choices=("auto", "kernel", "mask"), default="auto",
                   help="STA in generation: kernel (sta_search.accelerate.MaskAttention, the package's kernels), mask "
                        "(quality.ConfigAttention: SDPA under the reference mask, ~1 GB per distinct layer table on the "
                        "small canvas); auto: kernel on CUDA, mask on CPU")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds: start no further generation once this much has passed (default 150; none with --quick)")
    p.add_argument("--work", default=None, help="profile folders (default: OUT/work; resumed when rerun)")
    p.add_argument("--out", required=True, help="folder for profiling-amount.json and .png")
    p.add_argument("--forwards", nargs="+", choices=("all", "first"), default=["all", "first"],
                   help="'first' adds a point profiled with --profile-forwards first (the conditional CFG forward only)")
    p.add_argument("--shortlists", nargs="+", choices=("default", "proportional"), default=["default", "proportional"],
                   help="'proportional' adds a point profiled with --windows proportional")
    p.add_argument("--quick", action="store_true",
                   help="CPU smoke run: 2 + 1 prompts, counts 1 2, strides 1 2, 3 steps, 3 shortlist windows, small at 8x64x96 px")
    return p.parse_args(argv)


def model_kind(model: str):
    """('small' | 'tiny', its package) for a bundled name or pipeline folder."""
    from sta_search.models import resolve_model_path
    from sta_search.small import is_small_folder

    folder, _ = resolve_model_path(model)
    if is_small_folder(folder):
        import sta_search.small as package

        return "small", package, folder
    import sta_search.tiny as package

    return "tiny", package, folder


def prompt_split(kind: str, train: int, heldout: int) -> tuple[list[str], list[str]]:
    """Disjoint profiled / held-out prompts (small: captions of sta_search.small.data; tiny: quality.prompts)."""
    if kind == "tiny":
        return quality.prompts(train, heldout)
    from sta_search.small import data

    training = data.prompt_set(train, TRAIN_PROMPT_SEED)
    others = [p for p in data.prompt_set(heldout + train, HELDOUT_PROMPT_SEED) if p not in training]
    return training, others[:heldout]


def shortlist_for(kind: str):
    from sta_search.stats import DEFAULT_ERROR_WINDOWS

    return quality.SHORTLIST if kind == "tiny" else DEFAULT_ERROR_WINDOWS


def profile(args, loaded, settings, prompts, shortlist, name: str, forwards: str = "all"):
    """quality.profile_stage at every step (stride 1), in ``args.dtype``, into WORK/name (resumed);
    ``forwards``: ``ProfileSettings.profile_forwards``."""
    from sta_search.profile import ProfileSettings, run_profile

    folder = Path(args.work) / name
    if folder.exists():
        print(f"profile {name}: resuming {folder} (its timing then counts only the prompts left)", flush=True)
    t0 = time.perf_counter()
    result = run_profile(
        ProfileSettings(model=args.model, prompts=tuple(prompts), steps=settings.steps, height=settings.height,
                        width=settings.width, frames=settings.frames, seed=args.seed, profile_steps=1,
                        tile=tuple(settings.tile), windows=tuple(shortlist), device=args.device, dtype=args.dtype,
                        backend=args.profile_backend, profile_forwards=forwards),
        folder, resume=True, loaded=loaded)
    seconds = time.perf_counter() - t0
    print(f"profile {name}: {result.num_prompts} prompts x {len(result.profile_steps)} steps in {seconds:.1f} s",
          flush=True)
    return result, seconds


def points(counts, strides) -> list[tuple[int, int]]:
    """(prompts, stride) of both curves, the most-profiled config first, then alternating extremes inwards so
    that a cut by --time-budget still leaves both curves' ends."""
    top = max(counts)
    prompt_curve = [(n, 1) for n in sorted(set(counts), reverse=True)]
    stride_curve = [(top, s) for s in sorted(set(strides))]
    ordered = [(top, 1)]
    a = [p for p in prompt_curve if p != (top, 1)][::-1]  # fewest prompts first
    b = [p for p in stride_curve if p != (top, 1)][::-1]  # largest stride first
    while a or b:
        for side in (a, b):
            if side:
                ordered.append(side.pop(0))
    return ordered


def recommend(entries: dict, curve: list[tuple[int, int]], key: str, better: str, tolerance: float,
              relative: bool, pick: str):
    """The cheapest point of `curve` within `tolerance` of the most-profiled point's `key`."""
    ref = entries.get(_name(*curve[0]), {}).get(key)
    if ref is None:
        return None
    ok = []
    for point in curve:
        value = entries.get(_name(*point), {}).get(key)
        if value is None:
            continue
        if better == "higher":
            good = value >= ref - tolerance
        else:
            good = value <= ref * (1 + tolerance) if relative else value <= ref + tolerance
        if good:
            ok.append(point)
    if not ok:
        return None
    return min(ok, key=lambda p: p[0]) if pick == "prompts" else max(ok, key=lambda p: p[1])


def _name(prompts: int, stride: int) -> str:
    return f"prompts{prompts}-stride{stride}"


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.time_budget is None and not args.quick:
        args.time_budget = 150.0
    from sta_search.maskconfig import MaskConfig  # noqa: F401  (import early: fails fast if the package is broken)
    from sta_search.models import dense_attention, load_model
    from sta_search.options import dtype_name, resolve_device
    from sta_search.select import DEFAULT_FULL_STEP_FRACTION, SelectOptions, select_windows
    from sta_search.select_check import subset_profile
    from sta_search.video import fidelity

    t_start = time.perf_counter()
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.work = args.work or str(out / "work")
    args.device = str(resolve_device(args.device))
    args.dtype = dtype_name(args.dtype, args.device)
    kind, package, folder = model_kind(args.model)
    settings = package.recommended_settings(folder)
    if args.quick:
        args.counts, args.strides, args.heldout_prompts = [1, 2], [1, 2], 1
        sizes = dict(height=64, width=96, frames=8) if kind == "small" else {}
        settings = dataclasses.replace(settings, steps=args.steps or 3, **sizes)
    sizes = {k: getattr(args, k) for k in ("height", "width", "frames") if getattr(args, k) is not None}
    settings = dataclasses.replace(settings, steps=args.steps or settings.steps, **sizes)
    if max(args.strides) >= settings.steps:
        raise SystemExit(f"--strides {args.strides}: each stride must be < the {settings.steps} steps")
    train_count = max(args.counts)
    dtype = getattr(torch, args.dtype)
    loaded = load_model(args.model, args.device, dtype)
    training, heldout = prompt_split(kind, train_count, args.heldout_prompts)
    shortlist = ((1, 2, 2), (2, 3, 3), (99, 99, 99)) if args.quick else shortlist_for(kind)
    tag = "-quick" if args.quick else ""
    train_profile, train_s = profile(args, loaded, settings, training, shortlist, f"train-{kind}{tag}")
    proportional = None
    heldout_shortlist, heldout_tag = shortlist, tag
    if "proportional" in args.shortlists:
        from sta_search.stats import proportional_error_windows

        proportional = proportional_error_windows(train_profile.geometry)
        heldout_shortlist = tuple(dict.fromkeys([*train_profile.error_windows, *proportional]))
        heldout_tag = tag + "-union"
    heldout_profile, heldout_s = profile(args, loaded, settings, heldout, heldout_shortlist,
                                         f"heldout-{kind}{heldout_tag}")
    steps = train_profile.steps
    full_steps = round(DEFAULT_FULL_STEP_FRACTION * steps)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    results: dict = {
        "schema": "sta-search/profiling-amount/v1", "created_utc": stamp, "versions": quality._versions(),
        "device": {"type": args.device, "name": torch.cuda.get_device_name() if args.device.startswith("cuda")
                   else platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()},
        "settings": {"model": str(args.model), "kind": kind, "canvas": list(train_profile.canvas),
                     "tile": list(train_profile.tile), "grid": list(train_profile.grid),
                     "height": settings.height, "width": settings.width, "frames": settings.frames, "steps": steps,
                     "dense_steps": full_steps, "guidance_scale": settings.guidance_scale, "dtype": args.dtype,
                     "density": args.density, "counts": sorted(set(args.counts)), "strides": sorted(set(args.strides)),
                     "seed": args.seed, "quick": bool(args.quick),
                     "error_shortlist": [list(w) for w in train_profile.error_windows],
                     "subsets": "one stride-1 profile of max(counts) prompts; a point (n, k) keeps its first n prompts "
                                "and profiled steps 0, k, 2k, ... (select_check.subset_profile): the per-prompt error "
                                "tensor equals what `profile --profile-steps k` on those prompts records",
                     "heldout_error": "mean over (sparse step, layer, head) of the held-out profile's mean relative L2 "
                                      "error of the chosen window (every step profiled)",
                     "psnr": "PSNR vs dense per frame (8-bit RGB), averaged over frames, held-out prompts in one "
                             "batch, same initial noise",
                     "recommendation": f"fewest prompts / largest stride within {args.psnr_tolerance} dB of the "
                                       f"most-profiled point's mean PSNR (and within {args.error_tolerance:.0%} of its "
                                       "held-out error)"},
        "prompts": {"profiled": training, "heldout": heldout},
        "resumed_profiles": bool(train_s + heldout_s < 1.0),  # both found complete in --work: timings say nothing
        "timings": {"profile_train_s": round(train_s, 1), "profile_heldout_s": round(heldout_s, 1),
                    "profile_s_per_prompt_all_steps": round((train_s + heldout_s) / (len(training) + len(heldout)), 2)},
        "points": {},
    }
    json_path, png_path = out / "profiling-amount.json", out / "profiling-amount.png"

    def write():
        results["timings"]["total_s"] = round(time.perf_counter() - t_start, 1)
        tmp = json_path.with_name(json_path.name + ".tmp")
        tmp.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        tmp.replace(json_path)

    # ---- selections and held-out errors (cheap: no generation)
    order = points(args.counts, args.strides)
    configs = {}
    for n, k in order:
        sub = subset_profile(train_profile, prompts=range(n), steps=range(0, steps, k))
        selection = select_windows(sub, SelectOptions(budget=args.density, full_steps=full_steps))
        config, summary = selection.config, selection.summary
        configs[(n, k)] = config
        results["points"][_name(n, k)] = {
            "prompts": n, "stride": k, "profiled_steps": list(sub.profile_steps),
            "profiled_cells": n * len(sub.profile_steps), "density": config.density(),
            "predicted_error": summary.get("predicted_error"),
            "heldout_error": quality.insample_cost(heldout_profile, config, "error"),
            "select_cv": {key: summary.get(key) for key in ("heldout_error", "cv_insample_error", "heldout_gap", "folds")},
            "select_warned": bool(summary.get("profile_warning")),
            "windows_used": quality.window_histogram(config),
        }
        e = results["points"][_name(n, k)]
        print(f"{_name(n, k)}: density {e['density']:.4f} predicted {e['predicted_error']:.4f} held-out "
              f"{e['heldout_error']:.4f} select warned: {e['select_warned']}", flush=True)
    generation = [(_name(n, k), configs[(n, k)]) for n, k in order]

    def variant_point(suffix: str, windows, forwards: str, timing_key: str, extra: dict, versus: str):
        """One more point: all training prompts at stride 1, profiled with another setting, scored on the
        held-out profile like the others."""
        top = max(args.counts)
        variant, seconds = profile(args, loaded, settings, training, windows, f"train-{suffix}-{kind}{tag}",
                                   forwards=forwards)
        results["timings"][timing_key] = round(seconds, 1)
        selection = select_windows(variant, SelectOptions(budget=args.density, full_steps=full_steps))
        name = f"{_name(top, 1)}-{suffix}"
        results["points"][name] = {
            "prompts": top, "stride": 1, **extra, "shortlist": [list(w) for w in variant.error_windows],
            "profiled_steps": list(variant.profile_steps),
            "density": selection.config.density(), "predicted_error": selection.summary.get("predicted_error"),
            "heldout_error": quality.insample_cost(heldout_profile, selection.config, "error"),
            "select_warned": bool(selection.summary.get("profile_warning")),
            "windows_used": quality.window_histogram(selection.config),
        }
        generation.append((name, selection.config))
        e = results["points"][name]
        print(f"{name}: density {e['density']:.4f} predicted {e['predicted_error']:.4f} held-out "
              f"{e['heldout_error']:.4f} (profile {seconds:.1f} s against {train_s:.1f} s {versus})", flush=True)

    if "first" in args.forwards:
        variant_point("first-forward", shortlist, "first", "profile_train_first_forward_s",
                      {"profile_forwards": "first"}, "for all forwards")
    if proportional is not None:
        variant_point("proportional-shortlist", proportional, "all", "profile_train_proportional_shortlist_s", {},
                      "for the default shortlist")
    write()

    # ---- generation: dense once, then each distinct window table
    if args.sta == "auto":
        args.sta = "kernel" if args.device.startswith("cuda") else "mask"

    def sta_attention(config):
        if args.sta == "mask":
            return quality.ConfigAttention(config)
        from sta_search.accelerate import MaskAttention

        return MaskAttention(config)

    results["settings"]["sta_for_generation"] = (
        "sta_search.accelerate.MaskAttention (backend auto)" if args.sta == "kernel"
        else "quality.ConfigAttention: SDPA under the reference STA mask")
    t0 = time.perf_counter()
    dense = quality.generate_batch(loaded, settings, heldout, steps, args.seed, dense_attention)
    sync()
    results["timings"]["dense_generate_s"] = round(time.perf_counter() - t0, 1)
    print(f"dense: {len(heldout)} prompts in {time.perf_counter() - t0:.1f} s", flush=True)
    done: dict[bytes, str] = {}
    for name, config in generation:
        entry = results["points"][name]
        key = np.asarray(config.windows)[list(config.sparse_steps)].tobytes()
        if key in done:
            same = results["points"][done[key]]
            entry.update({f: same[f] for f in ("per_prompt_psnr_db", "mean_psnr_db", "mean_ssim")}, same_as=done[key])
            continue
        if args.time_budget is not None and time.perf_counter() - t_start > args.time_budget:
            results.setdefault("skipped_for_time", []).append(name)
            continue
        t0 = time.perf_counter()
        video = quality.generate_batch(loaded, settings, heldout, steps, args.seed, sta_attention(config))
        sync()
        per = [fidelity(v, d) for v, d in zip(video, dense)]
        psnr = [min(f.psnr_db, PSNR_CAP_DB) for f in per]
        entry.update(per_prompt_psnr_db=[round(p, 3) for p in psnr], mean_psnr_db=float(np.mean(psnr)),
                     mean_ssim=float(np.mean([f.ssim for f in per])), generate_s=round(time.perf_counter() - t0, 1))
        done[key] = name
        print(f"{name}: PSNR {entry['mean_psnr_db']:.2f} dB [{entry['generate_s']:.1f} s]", flush=True)
        write()

    # ---- curves and the recommendation
    top = max(args.counts)
    prompt_curve = [(n, 1) for n in sorted(set(args.counts), reverse=True)]
    stride_curve = [(top, s) for s in sorted(set(args.strides))]
    pts = results["points"]
    results["curves"] = {
        "prompts": {"x": [n for n, _ in prompt_curve][::-1],
                    "heldout_error": [pts[_name(*p)]["heldout_error"] for p in prompt_curve][::-1],
                    "mean_psnr_db": [pts[_name(*p)].get("mean_psnr_db") for p in prompt_curve][::-1]},
        "stride": {"x": [s for _, s in stride_curve],
                   "heldout_error": [pts[_name(*p)]["heldout_error"] for p in stride_curve],
                   "mean_psnr_db": [pts[_name(*p)].get("mean_psnr_db") for p in stride_curve]},
    }
    rec: dict = {}
    for label, curve, pick in (("prompts", prompt_curve, "prompts"), ("stride", stride_curve, "stride")):
        by_psnr = recommend(pts, curve, "mean_psnr_db", "higher", args.psnr_tolerance, False, pick)
        by_error = recommend(pts, curve, "heldout_error", "lower", args.error_tolerance, True, pick)
        index = 0 if label == "prompts" else 1
        rec[label] = {"by_psnr": by_psnr[index] if by_psnr else None,
                      "by_heldout_error": by_error[index] if by_error else None}
    rec["note"] = ("fewest prompts at stride 1 and largest stride at all prompts, each within the tolerance of the "
                   "most-profiled point; one seed, few held-out prompts: compare per-prompt PSNRs before relying on it")
    results["recommendation"] = rec
    write()
    try:
        plot(results, png_path)
    except Exception as exc:  # the plot is a convenience; the JSON is the result
        print(f"plot skipped: {exc}")
    print(json.dumps({"recommendation": rec, "curves": results["curves"]}, indent=1))
    print(f"wrote {json_path}")
    return results


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (label, xlabel) in zip(axes, (("prompts", "profiled prompts (every step profiled)"),
                                          ("stride", "profiled-step stride (all prompts)"))):
        curve = results["curves"][label]
        ax.plot(curve["x"], curve["heldout_error"], "o-", color="tab:red", label="held-out error")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("held-out relative L2 error", color="tab:red")
        if label == "prompts":
            ax.set_xscale("log", base=2)
        ax.set_xticks(curve["x"])
        ax.set_xticklabels([str(x) for x in curve["x"]])
        twin = ax.twinx()
        xs = [x for x, y in zip(curve["x"], curve["mean_psnr_db"]) if y is not None]
        ys = [y for y in curve["mean_psnr_db"] if y is not None]
        twin.plot(xs, ys, "s--", color="tab:blue", label="PSNR vs dense")
        twin.set_ylabel("mean PSNR vs dense (dB), held-out prompts", color="tab:blue")
        ax.grid(alpha=0.3)
    s = results["settings"]
    fig.suptitle(f"{s['model']} {s['canvas']} at density {s['density']}: how much profiling?")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
