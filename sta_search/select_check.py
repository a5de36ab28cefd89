"""Is a profile large enough to trust? The held-out check of ``sta-search select`` (docs/selection.md).

``select`` chooses windows that minimise the profiled error, so the error it predicts for them is biased
low: with few prompts the choice partly fits those prompts' noise (the winner's curse). The k-fold estimate
of :func:`sta_search.select.select_windows` measures that bias: per fold it chooses on the other prompts
and reports the error of that choice on the left-out prompts (``heldout_error``) next to its error on the
prompts it was chosen on (``cv_insample_error``). :func:`check_heldout` compares the two:

    gap = heldout_error / cv_insample_error - 1

and warns when ``gap > tolerance`` (default :data:`DEFAULT_TOLERANCE`, 10 %) and the two errors differ by
more than :data:`ABSOLUTE_FLOOR` (0.002 relative L2). Why these numbers:

- 10 %: on the bundled tiny model with 8 profiled prompts (5 folds) the gap was 0.1-5 % for every
  selection of ``bench/results/quality-multiseed-20261126.json`` (5 seeds x 8 budget configs; largest 4.9 %
  at density 0.75), so twice the largest gap of a profile that is large enough does not trip it. And 10 %
  more error is a visible loss: in the same study the budget solver's windows at density 0.3 had 12-16 %
  less in-sample error than FastVideo's capped argmin rule and 1-1.7 dB more PSNR on held-out prompts.
- 0.002: about half the bfloat16 round-off of an attention output (2^-8 = 0.0039 relative); differences
  below it are noise however large the ratio (e.g. near-dense budgets, where every error is tiny).
- One prompt: no held-out error exists; that is itself the warning (the windows may fit that prompt only).

The check never fails a run: ``select`` prints the warning and exits 0, and the numbers go into the mask
config's ``summary`` (``heldout_gap``, and ``profile_warning`` when it warns), a free-form mapping the
loader keeps as it is.

:func:`subset_profile` keeps some prompts and some profiled steps of a profile; a prefix of the prompts and
every k-th profiled step of a stride-1 profile is exactly what a smaller profiling run would have recorded
(``bench/profiling_amount.py`` derives its curves that way).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from .errors import UserError

DEFAULT_TOLERANCE = 0.10
ABSOLUTE_FLOOR = 0.002


@dataclass(frozen=True)
class HeldoutCheck:
    """Held-out against in-sample error of a selection, and the warning (None: the profile looks large enough).

    ``heldout_error``/``insample_error``: mean relative L2 error, over the k folds, of the windows chosen
    on the other prompts on the left-out prompts / on the prompts they were chosen on (None when not
    computable). ``prompts``: profiled prompts. ``folds``: as the summary reports it."""

    heldout_error: float | None
    insample_error: float | None
    prompts: int
    folds: object
    tolerance: float
    floor: float
    warning: str | None

    @property
    def ok(self) -> bool:
        return self.warning is None

    @property
    def gap(self) -> float | None:
        """``heldout / insample - 1`` (None when either is unknown or the in-sample error is 0)."""
        if self.heldout_error is None or self.insample_error is None or self.insample_error <= 0:
            return None
        return self.heldout_error / self.insample_error - 1.0

    def summary_fields(self) -> dict:
        """What goes into the mask config's summary: ``heldout_gap`` always, ``profile_warning`` when warning."""
        out: dict = {"heldout_gap": self.gap}
        if self.warning is not None:
            out["profile_warning"] = self.warning
        return out


def check_heldout(summary: Mapping, tolerance: float = DEFAULT_TOLERANCE, floor: float = ABSOLUTE_FLOOR) -> HeldoutCheck:
    """The check from a selection summary (its ``heldout_error``, ``cv_insample_error``, ``prompts``, ``folds``;
    ``prompts`` may be missing when the summary is still being built: pass it in ``summary`` anyway)."""
    if not tolerance >= 0:
        raise UserError(f"heldout tolerance {tolerance} must be >= 0")
    heldout = summary.get("heldout_error")
    inside = summary.get("cv_insample_error")
    prompts = int(summary.get("prompts") or 0)
    folds = summary.get("folds")
    warning = None
    if prompts == 1:
        warning = ("profile of 1 prompt: its held-out error cannot be measured (needs 2 or more prompts) and the "
                   "windows may fit this prompt only; profile more prompts (docs/selection.md)")
    elif heldout is not None and inside is not None:
        gap = heldout / inside - 1.0 if inside > 0 else (float("inf") if heldout > 0 else 0.0)
        if gap > tolerance and heldout - inside > floor:
            warning = (f"profile too small to trust: windows chosen on the other prompts have held-out error "
                       f"{heldout:.4g} vs {inside:.4g} on the prompts they were chosen on (+{gap:.0%}, tolerance "
                       f"{tolerance:.0%}; {prompts} prompts, {folds} folds); predicted_error is optimistic: "
                       f"profile more prompts (docs/selection.md)")
    return HeldoutCheck(heldout, inside, prompts, folds, float(tolerance), float(floor), warning)


def subset_profile(profile, prompts: Sequence[int] | None = None, steps: Sequence[int] | None = None):
    """The profile restricted to some prompts (indices into its prompt list) and some profiled steps (step
    indices, each one of its ``profile_steps``).

    Per-prompt tensors (``error``, ``recall``) keep exactly the rows of those prompts. The summed tensors
    (``recall_sum``, ``offset_mass_sum``, ``count``) are not per prompt, so a prompt subset keeps the sums of
    all prompts (they feed ``predicted_recall`` and ``--transfer resolve``, not the error objective's choice);
    a step subset keeps exactly the sums of those steps. So the first ``n`` prompts at every k-th profiled step
    of a stride-1 profile are what ``profile --profile-steps k`` on those prompts records (the denoising
    trajectory is dense, and prompt ``i`` always runs with seed ``seed + i``), up to the summed tensors.
    """
    from .artifacts import Profile

    header = dict(profile.header)
    tensors = dict(profile.tensors)
    if prompts is not None:
        profile = profile.select_prompts(prompts)
        header, tensors = dict(profile.header), dict(profile.tensors)
    if steps is not None:
        steps = [int(s) for s in steps]
        where = {s: i for i, s in enumerate(profile.profile_steps)}
        missing = [s for s in steps if s not in where]
        if missing:
            raise UserError(f"steps {missing} were not profiled (profiled: {list(profile.profile_steps)})")
        if not steps or sorted(set(steps)) != steps:
            raise UserError(f"steps must be a non-empty increasing list, got {steps}")
        index = [where[s] for s in steps]
        for name in ("recall_sum", "offset_mass_sum", "count"):
            tensors[name] = tensors[name][index]
        for name in ("error", "recall"):
            tensors[name] = tensors[name][:, index]
        header["profile_steps"] = steps
        for key in ("active_layers",):  # per profiled step
            if header.get(key):
                header[key] = [header[key][i] for i in index]
    return Profile(header, tensors)


__all__ = ["DEFAULT_TOLERANCE", "ABSOLUTE_FLOOR", "HeldoutCheck", "check_heldout", "subset_profile"]
