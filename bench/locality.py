"""Attention locality of a profiled model: how much attention mass each head keeps inside each window,
against that window's density (issue #15; the STA paper's Figure 3 question, asked of every window).

From a profile (``--profile DIR``, e.g. the one ``bench/quality.py`` leaves in its ``--work`` folder), or
from a fresh one of ``--model`` (default the bundled ``small``; ``--prompts`` training captions of its
grammar, every ``--profile-every``-th step, no error shortlist beyond full attention, so only the recall
pass runs), per (layer, head):

* ``mass kept`` of every window of the tile grid, from ``(1,1,1)`` to the grid: the profile's recall
  (mean over the real video queries of the softmax mass on the window's key tiles, docs/profile-format.md),
  averaged over profiled steps and prompts; next to the window's exact density (attended pairs / all
  pairs, ``Geometry.density``);
* its *frontier*: for each density level, the most mass any window of at most that density keeps (the
  "mass kept vs window density" curve), with the window that achieves it at 0.1, 0.2 and 0.3;
* the mass kept by windows with odd sizes or whole axes only (the centred windows a hand-picked schedule
  uses), whose frontier is a lower bound of the full one.

Summary: how many heads keep >= 70 / 80 / 90 % of their mass at density <= 0.1 / 0.2 / 0.3 (all windows,
and per profiled step), the spread across prompts of the shortlist windows' recall (the profile keeps
per-prompt recall only for those), and the comparison with the paper's claim for HunyuanVideo
(/work/shared/sta-paper-review.txt, Figure 3: "most heads show high recall" inside a (12, 24, 24) token
window, and a low standard deviation across 10 prompts): (12, 24, 24) of the (30, 48, 80) canvas is 6.0 %
of the video volume (0.4 x 0.5 x 0.3 per axis, about 6 % as a window density away from the borders); the
same per-axis fractions of this profile's canvas, rounded to whole tiles, give the matching window here.

Writes ``locality.json`` and ``locality.png`` into ``--out`` (names: ``--name``).

    python bench/locality.py --profile /tmp/sta-search-quality/profile --out OUT
    python bench/locality.py --model small --device cuda --prompts 4 --out OUT --time-budget 60
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
LEVELS = (0.1, 0.2, 0.3)
THRESHOLDS = (0.7, 0.8, 0.9)
PAPER_CANVAS = (30, 48, 80)  # HunyuanVideo 720p token canvas
PAPER_WINDOW = (12, 24, 24)  # tokens; Figure 3 of the STA paper


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default=None, help="an existing profile folder (else one is made from --model)")
    p.add_argument("--model", default="small")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    p.add_argument("--prompts", type=int, default=4, help="training captions to profile (with --model)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--profile-every", type=int, default=2)
    p.add_argument("--work", default="/tmp/sta-search-locality", help="where a fresh profile is written")
    p.add_argument("--out", required=True, help="folder for <name>.json and <name>.png")
    p.add_argument("--name", default="locality")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds: stop profiling further prompts once this much has passed (at least one runs)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------- profile
def training_prompts(count: int, model_folder) -> list[str]:
    """`count` distinct training captions of the model's grammar (small: never held out; tiny: its prompt set):
    the profiled half of bench/quality.py's split 0."""
    from sta_search.small import is_small_folder

    sys.path.insert(0, str(REPO / "bench"))
    import quality

    return quality.prompts(count, 0, kind="small" if is_small_folder(model_folder) else "tiny")[0]


def make_profile(args, t_start: float):
    """Profile ``args.model`` prompt by prompt (recall only) until done or the time budget is spent."""
    import dataclasses

    from sta_search.kernels.geometry import Geometry
    from sta_search.models import load_model, resolve_model_path
    from sta_search.profile import ProfileSettings, run_profile
    from sta_search.tiny import recommended_settings
    import torch

    folder, _ = resolve_model_path(args.model)
    settings = recommended_settings(folder)
    settings = dataclasses.replace(settings, **{k: getattr(args, k) for k in ("height", "width", "frames", "steps")
                                               if getattr(args, k)})
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if str(args.device).startswith("cuda") else "float32")
    loaded = load_model(args.model, args.device, getattr(torch, dtype))
    canvas = tuple(int(c) for c in loaded.canvas(settings.height, settings.width, settings.frames))
    grid = Geometry(canvas, tuple(settings.tile)).grid
    prompts = training_prompts(args.prompts, folder)
    work = Path(args.work)
    profile = None
    for i in range(1, len(prompts) + 1):
        if profile is not None and args.time_budget is not None and time.perf_counter() - t_start > args.time_budget:
            print(f"time budget spent after {profile.num_prompts} prompts", flush=True)
            break
        t0 = time.perf_counter()
        profile = run_profile(
            ProfileSettings(model=args.model, prompts=tuple(prompts[:i]), steps=settings.steps, height=settings.height,
                            width=settings.width, frames=settings.frames, seed=0, profile_steps=args.profile_every,
                            tile=tuple(settings.tile), windows=(tuple(grid),), device=args.device, dtype=dtype),
            work, resume=True, loaded=loaded)
        print(f"profiled prompt {i}/{len(prompts)} in {time.perf_counter() - t0:.1f} s", flush=True)
    return profile, work


# ----------------------------------------------------------------------------------- analysis
def odd_or_whole(window, grid) -> bool:
    return all(w % 2 == 1 or w == n for w, n in zip(window, grid))


def frontier(densities: np.ndarray, kept: np.ndarray, levels) -> np.ndarray:
    """``kept`` (..., K) over windows of ``densities`` (K,) -> (..., len(levels)): the most mass kept by any
    window of density <= each level (0 where none fits)."""
    out = np.zeros(kept.shape[:-1] + (len(levels),))
    for i, level in enumerate(levels):
        fits = densities <= level + 1e-12
        if fits.any():
            out[..., i] = kept[..., fits].max(-1)
    return out


def paper_matched_window(geometry) -> tuple[int, int, int]:
    """The paper's (12, 24, 24)-of-(30, 48, 80) window as the same per-axis fractions of this canvas, in whole
    tiles (at least 1), rounded to the nearest odd count or the whole axis."""
    out = []
    for w, n_paper, c, t, n in zip(PAPER_WINDOW, PAPER_CANVAS, geometry.canvas, geometry.tile, geometry.grid):
        tiles = max(1.0, w / n_paper * c / t)
        options = [k for k in range(1, n + 1) if k % 2 == 1 or k == n]
        out.append(min(options, key=lambda k: (abs(k - tiles), k)))
    return tuple(out)


def analyse(profile) -> dict:
    g = profile.geometry
    grid = tuple(g.grid)
    recall = profile.mean_recall().double().numpy()  # (P, L, H, nt, nh, nw)
    P, L, H = recall.shape[:3]
    windows = [(a + 1, b + 1, c + 1) for a in range(grid[0]) for b in range(grid[1]) for c in range(grid[2])]
    densities = np.array([g.density(w) for w in windows])
    odd = np.array([odd_or_whole(w, grid) for w in windows])
    per_step = recall.reshape(P, L, H, -1)  # (P, L, H, K), K in T-major window order
    kept = per_step.mean(0)  # (L, H, K): mean over profiled steps
    levels = np.round(np.linspace(0.0, 1.0, 101), 4)
    curve = frontier(densities, kept, levels)  # (L, H, 101)
    curve_odd = frontier(densities[odd], kept[..., odd], levels)

    def best_at(level):
        fits = np.flatnonzero(densities <= level + 1e-12)
        if not len(fits):
            return None
        idx = fits[kept[..., fits].argmax(-1)]  # (L, H)
        return [[{"window": list(windows[i]), "density": round(float(densities[i]), 4),
                  "mass_kept": round(float(kept[l, h, i]), 4)} for h, i in enumerate(row)] for l, row in enumerate(idx)]

    summary = {"heads": L * H, "levels": list(LEVELS), "thresholds": list(THRESHOLDS)}
    at = frontier(densities, kept, LEVELS)  # (L, H, 3)
    at_odd = frontier(densities[odd], kept[..., odd], LEVELS)
    at_step = frontier(densities, per_step, LEVELS)  # (P, L, H, 3)
    for ti, thr in enumerate(THRESHOLDS):
        for li, level in enumerate(LEVELS):
            key = f"heads_keeping_{int(thr * 100)}pct_at_density_le_{level:g}"
            summary[key] = int((at[..., li] >= thr).sum())
            summary[key + "_odd_windows"] = int((at_odd[..., li] >= thr).sum())
            summary[key + "_per_step"] = [int(x) for x in (at_step[..., li] >= thr).sum((1, 2))]
    summary["median_head_mass_kept_at_density_le"] = {f"{lv:g}": round(float(np.median(at[..., i])), 4)
                                                     for i, lv in enumerate(LEVELS)}
    summary["min_head_mass_kept_at_density_le"] = {f"{lv:g}": round(float(at[..., i].min()), 4)
                                                  for i, lv in enumerate(LEVELS)}

    # Spread across prompts (per-prompt recall exists for the shortlist windows only).
    spread = {}
    shortlist_recall = profile.tensors.get("recall")
    if shortlist_recall is not None and profile.num_prompts > 1:
        r = shortlist_recall.double().numpy().mean(1)  # (N, L, H, K): mean over steps per prompt
        for k, w in enumerate(profile.error_windows):
            if g.is_full(tuple(w)):
                continue
            std = r[..., k].std(0, ddof=1)  # (L, H)
            spread[",".join(map(str, w))] = {"density": round(g.density(tuple(w)), 4),
                                             "mean_over_heads_of_std_across_prompts": round(float(std.mean()), 4),
                                             "max_over_heads": round(float(std.max()), 4)}

    matched = paper_matched_window(g)
    mi = windows.index(matched)
    paper_fraction = math.prod(w / c for w, c in zip(PAPER_WINDOW, PAPER_CANVAS))
    matched_kept = kept[..., mi]
    comparison = {
        "paper": {"model": "HunyuanVideo 720p", "canvas_tokens": list(PAPER_CANVAS), "window_tokens": list(PAPER_WINDOW),
                  "window_volume_fraction": round(paper_fraction, 4),
                  "claim": "Figure 3: fraction of attention scores inside the (12, 24, 24) window across steps and "
                           "10 prompts; most heads show high recall, with a low std across prompts "
                           "(no numbers in /work/shared/sta-paper-review.txt)"},
        "matched_window_here": {"window_tiles": list(matched), "density": round(float(densities[mi]), 4),
                                "rule": "same per-axis fractions of this canvas, nearest odd tile count or whole axis"},
        "here_mass_kept_in_matched_window": {
            "median_over_heads": round(float(np.median(matched_kept)), 4),
            "min": round(float(matched_kept.min()), 4), "max": round(float(matched_kept.max()), 4),
            **{f"heads_ge_{int(t * 100)}pct": int((matched_kept >= t).sum()) for t in THRESHOLDS}},
        "here_best_window_at_density_le_paper_fraction": {
            "median_over_heads": round(float(np.median(frontier(densities, kept, [paper_fraction])[..., 0])), 4),
            **{f"heads_ge_{int(t * 100)}pct": int((frontier(densities, kept, [paper_fraction])[..., 0] >= t).sum())
               for t in THRESHOLDS}},
    }
    return {
        "grid": list(grid), "canvas": list(g.canvas), "tile": list(g.tile),
        "profile_steps": list(profile.profile_steps), "prompts": list(profile.prompts),
        "windows": [list(w) for w in windows], "window_density": [round(float(d), 6) for d in densities],
        "window_odd_or_whole": [bool(x) for x in odd],
        "mass_kept": np.round(kept, 4).tolist(),  # (L, H, K), mean over profiled steps
        "frontier": {"levels": levels.tolist(), "all_windows": np.round(curve, 4).tolist(),
                     "odd_or_whole_windows": np.round(curve_odd, 4).tolist()},
        "best_window_at": {f"{lv:g}": best_at(lv) for lv in LEVELS},
        "summary": summary,
        "spread_across_prompts": spread,
        "paper_comparison": comparison,
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept = np.asarray(result["mass_kept"])  # (L, H, K)
    L, H, _ = kept.shape
    dens = np.asarray(result["window_density"])
    levels = np.asarray(result["frontier"]["levels"])
    curve = np.asarray(result["frontier"]["all_windows"])
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    cmap = plt.get_cmap("viridis")
    for l in range(L):
        for h in range(H):
            ax.scatter(dens, kept[l, h], s=3, color=cmap(l / max(1, L - 1)), alpha=0.15, linewidths=0)
            ax.plot(levels, curve[l, h], color=cmap(l / max(1, L - 1)), lw=0.9, alpha=0.8,
                    label=f"layer {l}" if h == 0 else None)
    ax.axhline(0.8, color="gray", ls="--", lw=0.8)
    ax.axvline(0.2, color="gray", ls=":", lw=0.8)
    ax.set_xlabel("window density (attended pairs / all pairs)")
    ax.set_ylabel("attention mass kept (mean over steps, prompts)")
    s = result["summary"]
    ax.set_title(f"mass kept vs window density: dots = windows, lines = best per head\n"
                 f"{s['heads_keeping_80pct_at_density_le_0.2']}/{s['heads']} heads keep >= 80% at density <= 0.2",
                 fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(fontsize=6, ncol=2, loc="lower right")
    ax.grid(alpha=0.3)
    at02 = np.array([[e["mass_kept"] for e in row] for row in result["best_window_at"]["0.2"]])
    im = ax2.imshow(at02, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for l in range(L):
        for h in range(H):
            w = result["best_window_at"]["0.2"][l][h]["window"]
            ax2.text(h, l, f"{at02[l, h]:.2f}\n{w[0]},{w[1]},{w[2]}", ha="center", va="center", fontsize=6,
                     color="white" if at02[l, h] < 0.6 else "black")
    ax2.set_title("best window of density <= 0.2 per layer / head: mass kept", fontsize=9)
    ax2.set_xlabel("head")
    ax2.set_ylabel("layer")
    fig.colorbar(im, ax=ax2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> dict:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))
    from sta_search.artifacts import Profile

    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.profile:
        profile, source = Profile.load(args.profile), Path(args.profile)
    else:
        profile, source = make_profile(args, t_start)
    result = {"schema": "sta-search/locality/v1",
              "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
              "profile": str(source), "model": profile.model, "header_dtype": profile.header.get("dtype"),
              **analyse(profile)}
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    json_path = out / f"{args.name}.json"
    json_path.write_text(json.dumps(result) + "\n", encoding="utf-8")
    try:
        plot(result, out / f"{args.name}.png")
    except Exception as exc:  # the picture is a convenience; the JSON is the result
        print(f"plot skipped: {exc}")
    s = result["summary"]
    print(json.dumps({k: v for k, v in s.items() if not k.endswith("_per_step")}, indent=1))
    print(json.dumps(result["paper_comparison"], indent=1))
    print(f"wrote {json_path}")
    return result


if __name__ == "__main__":
    main()
