"""Merge quality studies run over disjoint seeds (e.g. one device call per group of seeds) into one result.

    python bench/quality_merge.py A.json B.json --out MERGED.json   # also writes MERGED.png

Each seed of `bench/quality.py --seeds ...` is an independent study (its own profile, selection and generation), so
seeds run in separate processes combine exactly: the merge refuses inputs that differ in schema, plan, model,
prompt split, library versions, device or per-seed settings (other than the seed itself), or that share a seed, and
then recomputes the aggregate, the v2 targets and the plot with `bench/quality.py`'s own functions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality  # noqa: E402

MUST_MATCH = ("schema", "plan", "model", "model_kind", "vary_prompts", "seed_meaning", "versions", "device")
SEED_SPECIFIC = ("generation_seed", "profile_seed")


def merge(results: list[dict], sources: list[str]) -> dict:
    if len(results) < 2:
        raise ValueError("give at least two quality results to merge")
    first = results[0]
    for source, r in zip(sources[1:], results[1:]):
        if "per_seed" not in r or "per_seed" not in first:
            raise ValueError(f"{source}: not a multi-seed quality result (no per_seed)")
        for key in MUST_MATCH:
            if r.get(key) != first.get(key):
                raise ValueError(f"{source}: {key} {r.get(key)!r} differs from {sources[0]}'s {first.get(key)!r}")
    merged = {k: v for k, v in first.items() if k not in ("per_seed", "aggregate", "targets", "timings",
                                                           "seeds", "seeds_skipped_for_time", "time_budget_s")}
    merged["per_seed"], merged["merged_from"] = {}, []
    reference_settings = None
    for source, r in zip(sources, results):
        for seed, block in r["per_seed"].items():
            if not block.get("configs"):
                continue
            if seed in merged["per_seed"]:
                raise ValueError(f"{source}: seed {seed} is also in an earlier input")
            settings = {k: v for k, v in block.get("settings", {}).items() if k not in SEED_SPECIFIC}
            if reference_settings is None:
                reference_settings = settings
            elif settings != reference_settings:
                changed = sorted(k for k in settings.keys() | reference_settings.keys()
                                 if settings.get(k) != reference_settings.get(k))
                raise ValueError(f"{source}: seed {seed}'s settings differ in {', '.join(changed)}")
            merged["per_seed"][seed] = block
        merged["merged_from"].append({"file": Path(source).name, "created_utc": r.get("created_utc"),
                                      "seeds_with_results": r.get("aggregate", {}).get("seeds"),
                                      "time_budget_s": r.get("time_budget_s"),
                                      "total_s": r.get("timings", {}).get("total_s")})
    merged["per_seed"] = dict(sorted(merged["per_seed"].items(), key=lambda kv: int(kv[0])))
    merged["seeds"] = [int(s) for s in merged["per_seed"]]
    densities = reference_settings["densities"]
    merged["aggregate"] = quality.aggregate(merged["per_seed"], densities, merged["plan"])
    if merged["plan"] == "v2":
        merged["targets"] = quality.v2_targets(merged)
    merged["timings"] = {"total_s": round(sum(m["total_s"] or 0.0 for m in merged["merged_from"]), 1)}
    return merged


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", type=Path, help="quality JSON files over disjoint seeds")
    parser.add_argument("--out", type=Path, required=True, help="merged JSON (the plot goes beside it as .png)")
    args = parser.parse_args(argv)
    try:
        merged = merge([json.loads(p.read_text()) for p in args.inputs], [str(p) for p in args.inputs])
    except (ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.write_text(json.dumps(merged, indent=1) + "\n")
    quality.plot(merged, args.out.with_suffix(".png"))
    for name, target in merged.get("targets", {}).items():
        print(f"{name}: {target}")
    print(f"wrote {args.out} (seeds {merged['seeds']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
