"""Choose STA windows per (step, layer, head) under a compute budget (docs/selection.md).

The problem
-----------
Every *group* (a (step, layer, head) of the sparse steps, or a (layer, head) shared by all sparse steps
with ``granularity="layer"``) picks one candidate window ``k`` with cost ``C[g, k]`` (mean relative L2
output error over the profiled prompts, or ``1 - recall``) and exact density ``D[k]``
(:meth:`Geometry.density`). Minimise ``sum_g C[g, x_g]`` subject to ``mean_g D[x_g] <= budget``: a
multiple-choice knapsack.

The solver (:func:`solve_budget`)
---------------------------------
1. Lagrangian relaxation: for a multiplier ``lam >= 0`` every group independently takes
   ``argmin_k C[g,k] + lam * D[k]`` (ties to the lower density). The total density falls as ``lam``
   grows; bisection finds the smallest ``lam`` whose choice fits the budget. That choice is optimal
   among all choices of at most its own density (it lies on the convex hull of the problem), and
   ``max_lam sum_g min_k (C + lam D) - lam * G * budget`` is a lower bound on the true optimum.
2. Greedy fill: the budget left over (less than one hull segment) is spent move by move, each time on
   the single-group upgrade with the largest cost decrease per density increase that still fits.

The result carries the lower bound, so every selection reports how far from optimal it can be at most.
Tests compare against brute force on small random instances: equal whenever the budget sits on a hull
vertex, and within the bound otherwise.

FastVideo's rule (:func:`solve_argmin`, ``strategy="argmin"``)
---------------------------------------------------------------
FastVideo's ``STA_tuning`` (``select_best_mask_strategy`` in its ``STA_configuration.py``) averages, over
the searched prompts, each head's L2 loss (the mean squared difference of the sparse and dense attention
outputs of that head) for each of its sparse candidates, then for every step after the first
``skip_time_steps`` (which run full attention) takes, per (step, layer, head), the candidate with the
smallest averaged loss (``np.argmin``: the first candidate on ties). The full-attention window is never
a candidate. There is no budget; the sparsity is whatever falls out. ``strategy="argmin"`` applies that
rule to our profile: per group, the non-full shortlist window with the smallest mean cost, first in
shortlist order on ties. Our per-prompt loss is the *relative* L2 error (the root of FastVideo's mean
square over the dense output's norm), so with one prompt the choice is identical and with several prompts
it weighs prompts by relative rather than absolute error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .artifacts import Profile, merge_profiles
from .costmodel import CostModel, load_cost_model
from .errors import UserError
from .experts import ExpertSplit
from .maskconfig import MaskConfig
from .select_check import DEFAULT_TOLERANCE, check_heldout

OBJECTIVES = ("error", "squared-error", "recall")
#: objectives computed from the measured output errors (shortlist windows only)
ERROR_OBJECTIVES = ("error", "squared-error")
STRATEGIES = ("budget", "argmin")
GRANULARITIES = ("step", "layer")
#: where the density budget holds: over the whole run (the solver may move density between sparse steps), or at
#: every sparse step on its own (each step's (layer, head) groups solve their own knapsack at the same budget)
BUDGET_SCOPES = ("run", "step")
CANDIDATE_SETS = ("auto", "shortlist", "all")
DEFAULT_FULL_STEP_FRACTION = 0.24  # the STA paper keeps 12 of 50 steps dense


# ============================================================================ the optimisation problem
@dataclass(frozen=True)
class Solution:
    """A choice of one candidate per group and what is known about its optimality."""

    choice: np.ndarray  # (G,) candidate index per group
    cost: float  # sum of the chosen costs
    density: float  # mean of the chosen densities
    lower_bound: float  # no choice within the budget has a smaller summed cost
    multiplier: float  # the Lagrange multiplier of the hull solution (0 when the budget does not bind)
    hull_cost: float  # summed cost of the hull (Lagrangian) solution before the greedy fill
    greedy_moves: int = 0

    @property
    def gap_bound(self) -> float:
        """Upper bound on ``cost - optimum``."""
        return max(self.cost - self.lower_bound, 0.0)


def lagrangian_choice(costs: np.ndarray, densities: np.ndarray, multiplier: float) -> np.ndarray:
    """Per group ``argmin_k costs + multiplier * densities``, ties broken towards the lower density."""
    if densities.ndim == 1:  # shared densities sorted ascending (solve_budget arranges it): first minimum wins
        return (costs + multiplier * densities).argmin(axis=1)
    value = costs + multiplier * densities
    best = value.min(axis=1, keepdims=True)
    tied = value <= best + 1e-12 * (np.abs(best) + 1.0)
    return np.where(tied, np.broadcast_to(densities, costs.shape), np.inf).argmin(axis=1)


def _as_problem(costs, densities) -> tuple[np.ndarray, np.ndarray]:
    C = np.asarray(costs, dtype=np.float64)
    if C.ndim != 2 or C.shape[1] == 0:
        raise ValueError(f"costs must be (groups, candidates), got shape {C.shape}")
    D = np.broadcast_to(np.asarray(densities, dtype=np.float64), C.shape)
    if not (np.isfinite(C).all() and np.isfinite(D).all()):
        raise UserError("costs or densities hold non-finite values")
    return C, D


def _picked(matrix: np.ndarray, choice: np.ndarray) -> np.ndarray:
    return matrix[np.arange(matrix.shape[0]), choice]


def solve_budget(costs, densities, budget: float, max_bisections: int = 200) -> Solution:
    """Minimise ``sum_g costs[g, x_g]`` subject to ``mean_g densities[g, x_g] <= budget`` (module docstring).

    ``costs``: ``(G, K)``; ``densities``: ``(K,)`` or ``(G, K)``. UserError when even the least dense
    choice exceeds the budget.
    """
    shared = np.ndim(densities) == 1
    if shared:  # sort candidates by density once so that plain argmin breaks ties towards lower density
        order = np.argsort(np.asarray(densities, dtype=np.float64), kind="stable")
        solution = _solve_budget(np.asarray(costs, dtype=np.float64)[:, order], np.asarray(densities, np.float64)[order],
                                 budget, max_bisections, sorted_shared=True)
        return Solution(order[solution.choice], *[getattr(solution, f) for f in
                        ("cost", "density", "lower_bound", "multiplier", "hull_cost", "greedy_moves")])
    return _solve_budget(costs, densities, budget, max_bisections, sorted_shared=False)


def _solve_budget(costs, densities, budget, max_bisections, sorted_shared: bool) -> Solution:
    C, D = _as_problem(costs, densities)
    D_lagrange = D[0] if sorted_shared else D  # 1-D: candidates arrive sorted by density
    G = C.shape[0]
    capacity = float(budget) * G
    eps = 1e-12 * max(capacity, 1.0)
    least = D.min(axis=1).sum()
    if least > capacity + eps:
        raise UserError(
            f"budget {budget:.6g} is below the smallest reachable density {least / G:.6g} of the candidate windows"
        )

    def total_density(choice):
        return _picked(D, choice).sum()

    def dual(multiplier):
        return float((C + multiplier * D).min(axis=1).sum() - multiplier * capacity)

    free = lagrangian_choice(C, D_lagrange, 0.0)
    if total_density(free) <= capacity + eps:
        cost = float(_picked(C, free).sum())
        return Solution(free, cost, total_density(free) / G, cost, 0.0, cost)

    lo, hi = 0.0, 1.0
    spread = float(C.max() - C.min()) + 1.0
    while total_density(lagrangian_choice(C, D_lagrange, hi)) > capacity + eps:
        lo, hi = hi, hi * 2.0
        if hi > 1e30 * spread:  # cannot happen when the least dense choice fits; guards against NaN-like input
            raise UserError("the budget cannot be met by the candidate windows")
    for _ in range(max_bisections):
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi or hi - lo <= 1e-9 * hi:
            break
        if total_density(lagrangian_choice(C, D_lagrange, mid)) > capacity + eps:
            lo = mid
        else:
            hi = mid
    choice = lagrangian_choice(C, D_lagrange, hi)
    hull_cost = float(_picked(C, choice).sum())
    lower = max(dual(hi), dual(lo))
    choice, moves = _greedy_fill(C, D, choice, capacity, eps)
    choice = _drop_dominated(C, D, choice)
    cost = float(_picked(C, choice).sum())
    density_total = total_density(choice)
    assert density_total <= capacity + eps * 10, "solver exceeded the budget"
    return Solution(choice, cost, density_total / G, min(lower, cost), hi, hull_cost, moves)


def _greedy_fill(C, D, choice, capacity, eps) -> tuple[np.ndarray, int]:
    """Spend the remaining budget on the best cost-decrease-per-density upgrades, one at a time."""
    choice = choice.copy()
    G = C.shape[0]

    def best_moves(rows, remaining):
        c0 = C[rows, choice[rows]][:, None]
        d0 = D[rows, choice[rows]][:, None]
        dd = D[rows] - d0
        dc = c0 - C[rows]
        ok = (dd > 0) & (dc > 0) & (dd <= remaining + eps)
        ratio = np.where(ok, dc / np.where(dd > 0, dd, 1.0), -np.inf)
        k = ratio.argmax(axis=1)
        pick = np.arange(len(rows))
        return k, ratio[pick, k], dd[pick, k]

    remaining = capacity - _picked(D, choice).sum()
    all_rows = np.arange(G)
    move_k, move_ratio, move_dd = best_moves(all_rows, remaining)
    moves = 0
    for _ in range(G * C.shape[1]):
        g = int(move_ratio.argmax())
        if not np.isfinite(move_ratio[g]):
            break
        choice[g] = move_k[g]
        moves += 1
        remaining = capacity - _picked(D, choice).sum()
        stale = np.flatnonzero((np.isfinite(move_ratio) & (move_dd > remaining + eps)) | (all_rows == g))
        move_k[stale], move_ratio[stale], move_dd[stale] = best_moves(stale, remaining)
    return choice, moves


def _drop_dominated(C, D, choice) -> np.ndarray:
    """Switch any group to a candidate that is no denser and strictly cheaper (never hurts either side)."""
    c0 = _picked(C, choice)[:, None]
    d0 = _picked(D, choice)[:, None]
    better = (D <= d0) & (C < c0)
    if not better.any():
        return choice
    score = np.where(better, C, np.inf)
    alt = score.argmin(axis=1)
    return np.where(better.any(axis=1), alt, choice)


def solve_argmin(costs, allowed: np.ndarray | None = None) -> np.ndarray:
    """FastVideo's rule: per group the allowed candidate of smallest cost, the first one on ties."""
    C = np.asarray(costs, dtype=np.float64)
    if allowed is not None:
        allowed = np.broadcast_to(np.asarray(allowed, dtype=bool), C.shape)
        if not allowed.any(axis=1).all():
            raise UserError("argmin strategy: no sparse (non-full) candidate window to choose from")
        C = np.where(allowed, C, np.inf)
    return C.argmin(axis=1)


# ============================================================================ from a profile
@dataclass(frozen=True)
class SelectOptions:
    """What ``sta-search select`` was asked for (see the command's help)."""

    budget: float | None = None
    sparsity: float | None = None
    speedup: float | None = None
    full_steps: int | None = None
    granularity: str = "step"
    objective: str = "error"
    strategy: str = "budget"
    budget_scope: str = "run"
    candidates: str = "auto"
    folds: int = 5
    results_dir: str | None = None
    precision: str = "bf16"  # what generation will run (--speedup's cost model): bf16, fp8 or int8
    heldout_tolerance: float = DEFAULT_TOLERANCE  # warn when held-out error > (1 + this) x in-sample (select_check)
    #: one positive factor per profiled step (the profile's ``profile_steps`` order) multiplying that step's costs
    #: for the solver: how far an attention error at that step moves the final video
    #: (:mod:`sta_search.sensitivity`); or a (profiled steps, layers) table of them; None: every step counts the same
    step_weights: tuple | None = None


@dataclass(frozen=True)
class Candidates:
    """Candidate windows of a profile with their exact densities and mean/per-prompt costs."""

    windows: tuple[tuple[int, int, int], ...]  # clipped to the grid, unique
    densities: np.ndarray  # (K,)
    is_full: np.ndarray  # (K,) bool
    mean_cost: np.ndarray  # (P, L, H, K)
    per_prompt_cost: np.ndarray | None  # (N, P, L, H, K) or None where only sums exist
    per_prompt_error: np.ndarray | None  # (N, P, L, H, K) relative L2 error (shortlist candidates only)
    source: str  # "shortlist" or "all"


@dataclass(frozen=True)
class Selection:
    config: MaskConfig
    summary: dict
    solution: Solution | None = None
    choice: np.ndarray | None = field(default=None, repr=False)  # (S_sparse, L, H) candidate index
    candidates: Candidates | None = field(default=None, repr=False)


def nearest_profiled(steps: Sequence[int], profile_steps: Sequence[int]) -> np.ndarray:
    """Index into ``profile_steps`` of the nearest profiled step for each of ``steps`` (ties: the earlier)."""
    ps = np.asarray(profile_steps)
    return np.array([int(np.argmin(np.abs(ps - s))) for s in steps], dtype=np.int64)


def build_candidates(profile: Profile, objective: str, candidate_set: str = "auto") -> Candidates:
    """Candidate windows and their costs: the error shortlist, or every window of the grid (recall only)."""
    if objective not in OBJECTIVES:
        raise UserError(f"objective {objective!r} is not one of {', '.join(OBJECTIVES)}")
    if candidate_set not in CANDIDATE_SETS:
        raise UserError(f"candidates {candidate_set!r} is not one of {', '.join(CANDIDATE_SETS)}")
    if candidate_set == "auto":
        candidate_set = "all" if objective == "recall" else "shortlist"
    if objective in ERROR_OBJECTIVES and candidate_set == "all":
        raise UserError(f"objective {objective} needs measured errors: only the shortlist windows have them "
                        "(use --candidates shortlist)")
    geometry = profile.geometry
    if candidate_set == "shortlist":
        seen: dict[tuple[int, int, int], int] = {}
        for index, window in enumerate(profile.error_windows):
            seen.setdefault(geometry.clip_window(window), index)
        if not seen:
            raise UserError("the profile has no shortlist windows")
        windows = tuple(seen)
        index = np.array(list(seen.values()))
        per_prompt_error = profile.tensors["error"].double().numpy()[..., index]
        if objective == "error":
            per_prompt = per_prompt_error
        elif objective == "squared-error":  # each prompt's mean error, squared: weighs the worst heads more
            per_prompt = per_prompt_error ** 2
        else:
            per_prompt = 1.0 - profile.tensors["recall"].double().numpy()[..., index]
        if per_prompt.shape[0] == 0:
            raise UserError("the profile holds no prompts yet: profile at least one prompt")
        mean = per_prompt.mean(axis=0)
    else:
        nt, nh, nw = profile.grid
        windows = tuple((i + 1, j + 1, k + 1) for i in range(nt) for j in range(nh) for k in range(nw))
        recall = profile.mean_recall().double().numpy()
        P, L, H = recall.shape[:3]
        mean = 1.0 - recall.reshape(P, L, H, -1)
        per_prompt = per_prompt_error = None
    densities = np.array([geometry.density(w) for w in windows])
    full = np.array([geometry.is_full(w) for w in windows])
    return Candidates(windows, densities, full, mean, per_prompt, per_prompt_error, candidate_set)


@dataclass(frozen=True)
class StepLayout:
    """Which profiled step stands for each (sparse step, layer), and which of them run.

    ``slot[s, l]``: index into the profiled steps whose statistics (sparse step s, layer l) uses: the nearest
    profiled step, among those where the layer's expert ran for two-expert models. ``active[s, l]``: the
    layer runs at sparse step s (False for the resting expert's layers; all True with one transformer).
    Only active entries are groups of the problem, cost budget and count in densities and errors."""

    slot: np.ndarray  # (S, L) int
    active: np.ndarray  # (S, L) bool

    @classmethod
    def of(cls, profile: Profile, sparse_steps: Sequence[int], computed: Sequence[bool] | None = None) -> "StepLayout":
        """``computed``: per step, whether the step cache the profile ran under computed it (default: all);
        only computed profiled steps stand for sparse steps."""
        from .experts import ExpertSplit

        L, S = profile.num_layers, len(sparse_steps)
        computed = [True] * profile.steps if computed is None else list(computed)
        usable = [i for i, p in enumerate(profile.profile_steps) if computed[p]]
        if S and not usable:
            raise UserError(f"the {profile.header.get('cache', 'step')} cache skipped every profiled step of this "
                            "profile: no window to select (profile with a less aggressive cache)")
        split = ExpertSplit.from_header(profile.header)
        if split is None:
            picks = np.asarray(usable, dtype=np.int64)[nearest_profiled(sparse_steps, [profile.profile_steps[i] for i in usable])] \
                if S else np.zeros(0, dtype=np.int64)
            slot = np.broadcast_to(picks[:, None], (S, L)).copy()
            return cls(slot, np.ones((S, L), dtype=bool))
        split.check(L, profile.steps, "profile")
        slot = np.zeros((S, L), dtype=np.int64)
        active = split.active()[list(sparse_steps)] if S else np.zeros((0, L), dtype=bool)
        for index, ((l0, l1), (s0, s1)) in enumerate(zip(split.layers, split.steps)):
            runs = [s for s in sparse_steps if s0 <= s < s1]
            if not runs:
                continue
            own = [i for i in usable if s0 <= profile.profile_steps[i] < s1]
            if not own:
                raise UserError(f"{split.names[index]} runs steps {s0}-{s1 - 1} but none of them was profiled "
                                f"(profiled: {list(profile.profile_steps)}); profile with a smaller --profile-steps")
            picks = np.asarray(own)[nearest_profiled(runs, [profile.profile_steps[i] for i in own])]
            rows = [i for i, s in enumerate(sparse_steps) if s0 <= s < s1]
            slot[np.ix_(rows, range(l0, l1))] = picks[:, None]
        return cls(slot, active)

    def costs(self, cost: np.ndarray) -> np.ndarray:
        """``(S, L, H, K)``: ``cost[slot[s, l], l]`` for a ``(P, L, H, K)`` table."""
        return cost[self.slot, np.arange(self.slot.shape[1])[None, :]]


def _group_costs(mean_cost: np.ndarray, layout: StepLayout, granularity: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``(G, K)`` costs: per active (sparse step, layer, head), or per (layer, head) summed over the sparse
    steps the layer runs at; and per-group weights for the density budget (None: all equal), since with two
    experts the layers of one expert may run at fewer sparse steps than the other's."""
    K = mean_cost.shape[-1]
    per_step = layout.costs(mean_cost)  # (S, L, H, K)
    if granularity == "step":
        return per_step[layout.active].reshape(-1, K), None
    counts = layout.active.sum(axis=0)  # (L,)
    summed = np.einsum("sl,slhk->lhk", layout.active.astype(np.float64), per_step)
    H = mean_cost.shape[2]
    runs = counts > 0
    weights = np.repeat(counts[runs], H).astype(np.float64)
    return summed[runs].reshape(-1, K), (None if np.all(weights == weights[0]) else weights)


def _choice_table(choice: np.ndarray, granularity: str, S: int, L: int, H: int,
                  layout: StepLayout | None = None) -> np.ndarray:
    """``(S, L, H)`` candidate index per (sparse step, layer, head); 0 where the layer does not run."""
    active = layout.active if layout is not None else np.ones((S, L), dtype=bool)
    table = np.zeros((S, L, H), dtype=np.int64)
    if granularity == "step":
        table[active] = choice.reshape(-1, H)
        return table
    runs = active.any(axis=0)
    per_layer = np.zeros((L, H), dtype=np.int64)
    per_layer[runs] = choice.reshape(-1, H)
    table[:] = per_layer[None]
    table[~active] = 0
    return table


def evaluate(choice_table: np.ndarray, cost: np.ndarray, layout: StepLayout) -> float:
    """Mean over the active (sparse step, layer) and heads of ``cost[slot[s, l], l, h, choice[s, l, h]]``."""
    picked = np.take_along_axis(layout.costs(cost), choice_table[..., None], axis=-1)[..., 0]
    return float(picked[layout.active].mean())


def check_options(options: SelectOptions) -> None:
    """UserError naming an unknown strategy, granularity or budget scope, or a budget scope they cannot take."""
    for name, allowed in (("strategy", STRATEGIES), ("granularity", GRANULARITIES), ("budget_scope", BUDGET_SCOPES)):
        if getattr(options, name) not in allowed:
            raise UserError(f"{name.replace('_', ' ')} {getattr(options, name)!r} is not one of {', '.join(allowed)}")
    if options.budget_scope == "step" and (options.granularity != "step" or options.strategy != "budget"):
        raise UserError("budget scope 'step' needs --granularity step and --strategy budget (a per-step budget "
                        "splits the (step, layer, head) groups by step)")


def solve_groups(cost: np.ndarray, layout: StepLayout, densities: np.ndarray, is_full: np.ndarray,
                 budget: float | None, options: SelectOptions) -> tuple[np.ndarray, Solution | None]:
    """(candidate per group, the solution with its bound or None) for a ``(P, L, H, K)`` cost table, as
    ``options`` ask: FastVideo's argmin over the non-full candidates, or the budget solver over the whole run or
    step by step (``budget_scope``), each profiled step's costs times ``options.step_weights`` when given."""
    if options.step_weights is not None:
        weights = np.asarray(options.step_weights, dtype=np.float64)
        cost = cost * weights.reshape(weights.shape[0], weights.shape[1] if weights.ndim == 2 else 1, 1, 1)
    C, weights = _group_costs(cost, layout, options.granularity)
    if options.strategy == "argmin":
        return solve_argmin(C, ~is_full[None, :]), None
    if options.budget_scope == "step":  # C's rows are the active (step, layer, head) groups, step by step
        per_step = layout.active.sum(axis=1) * cost.shape[2]
        bounds = np.cumsum(np.concatenate([[0], per_step]))
        return np.concatenate([solve_budget(C[a:b], densities, budget).choice
                               for a, b in zip(bounds[:-1], bounds[1:]) if b > a]), None
    solution = _solve_weighted(C, densities, weights, budget)
    return solution.choice, solution


def _solve_weighted(C: np.ndarray, densities: np.ndarray, weights: np.ndarray | None, budget: float) -> Solution:
    """`solve_budget` with the density of group g counted ``weights[g]`` times (mean weight 1)."""
    if weights is None:
        return solve_budget(C, densities, budget)
    scaled = np.outer(weights / weights.mean(), densities)
    return solve_budget(C, scaled, budget)


def resolve_step_weights(step_weights: Sequence[float] | None, profile: Profile) -> np.ndarray | None:
    """``(profiled steps,)`` float64 weights, or None; UserError naming a wrong count or a weight that is not a
    positive finite number."""
    if step_weights is None:
        return None
    weights = np.asarray(step_weights, dtype=np.float64)
    if weights.ndim == 2:  # per (profiled step, layer)
        if weights.shape != (len(profile.profile_steps), profile.num_layers):
            raise UserError(f"step weights: shape {tuple(weights.shape)} given, the profile has "
                            f"({len(profile.profile_steps)}, {profile.num_layers}) profiled steps and layers")
    elif weights.ndim != 1 or weights.size != len(profile.profile_steps):
        raise UserError(f"step weights: {weights.size} given, the profile has {len(profile.profile_steps)} profiled "
                        f"steps {list(profile.profile_steps)}")
    bad = [float(w) for w in weights.reshape(-1) if not (np.isfinite(w) and w > 0)]
    if bad:
        raise UserError(f"step weights must be positive finite numbers, got {bad[0]!r}")
    return weights


def resolve_full_steps(full_steps: int | None, steps: int, whose: str = "the profile") -> int:
    """``--full-steps`` (None: the paper's share, :data:`DEFAULT_FULL_STEP_FRACTION`), checked against a run of
    ``steps`` steps (UserError naming the value; ``whose`` says where the steps come from)."""
    full_steps = round(DEFAULT_FULL_STEP_FRACTION * steps) if full_steps is None else int(full_steps)
    if not 0 <= full_steps < steps:
        raise UserError(f"--full-steps {full_steps} must be in [0, {steps}): {whose} has {steps} steps")
    return full_steps


def resolve_budget(options: SelectOptions, min_density: float, sparse_steps: int, dense_steps: int,
                   cost_model: CostModel) -> float | None:
    """The density budget of the sparse steps from --budget, --sparsity or --speedup (exactly one)."""
    given = [name for name in ("budget", "sparsity", "speedup") if getattr(options, name) is not None]
    if options.strategy == "argmin":
        if given:
            raise UserError("--strategy argmin (FastVideo's rule) has no budget; drop " + ", ".join(f"--{g}" for g in given))
        return None
    if len(given) != 1:
        raise UserError("give exactly one of --budget, --sparsity, --speedup" + (f" (got {', '.join(given)})" if given else ""))
    if options.budget is not None:
        budget, what = float(options.budget), f"budget {options.budget}"
        if not 0 < budget <= 1 or math.isnan(budget):
            raise UserError(f"budget {options.budget} is outside (0, 1]: it is the mean density of the sparse steps")
    elif options.sparsity is not None:
        sparsity = float(options.sparsity)
        if not 0 <= sparsity < 1 or math.isnan(sparsity):
            raise UserError(f"sparsity {options.sparsity} is outside [0, 1)")
        budget, what = 1.0 - sparsity, f"sparsity {options.sparsity}"
    else:
        speedup = float(options.speedup)
        reachable = cost_model.max_speedup(min_density, sparse_steps, dense_steps)
        if not speedup >= 1 or math.isnan(speedup):
            raise UserError(f"speedup {options.speedup} must be >= 1")
        if speedup > reachable * (1 + 1e-12):
            raise UserError(
                f"speedup {options.speedup} is out of reach: at most {reachable:.3f}x with {dense_steps} dense steps "
                f"and the smallest candidate density {min_density:.4g} (cost model: {cost_model.source})"
            )
        budget = min(cost_model.density_for_speedup(speedup, sparse_steps, dense_steps), 1.0)
        what = f"speedup {options.speedup} (density {budget:.4g})"
    if budget < min_density * (1 - 1e-12):
        raise UserError(f"{what} is below the smallest candidate window's density {min_density:.4g}")
    return budget


def select_windows(profiles: Profile | Sequence[Profile], options: SelectOptions = SelectOptions(),
                   cost_model: CostModel | None = None) -> Selection:
    """Choose windows from one or several (merged) profiles; see the module docstring."""
    profile = profiles if isinstance(profiles, Profile) else merge_profiles(list(profiles))
    check_options(options)
    if profile.num_prompts == 0:
        raise UserError("the profile holds no prompts yet: profile at least one prompt")
    cost_model = cost_model or load_cost_model(options.results_dir, options.precision)
    steps = profile.steps
    full_steps = resolve_full_steps(options.full_steps, steps)
    dense_steps = tuple(range(full_steps))
    computed = _computed_steps(profile)  # a step cache's skipped steps get no windows of their own
    sparse_steps = tuple(s for s in range(full_steps, steps) if computed[s])
    skipped = tuple(s for s in range(full_steps, steps) if not computed[s])
    if not sparse_steps:
        raise UserError(f"the {profile.header.get('cache', 'step')} cache skipped every sparse step of this profile: "
                        "no window to select (lower --full-steps or profile with a less aggressive cache)")
    layout = StepLayout.of(profile, sparse_steps, computed)
    L, H, S = profile.num_layers, profile.num_heads, len(sparse_steps)

    candidate_set = options.candidates
    if candidate_set == "auto" and options.strategy == "argmin":
        candidate_set = "shortlist"  # FastVideo's rule picks among a fixed candidate list
    cands = build_candidates(profile, options.objective, candidate_set)
    budget = resolve_budget(options, float(cands.densities.min()), S, full_steps, cost_model)

    step_weights = resolve_step_weights(options.step_weights, profile)

    def choose(mean_cost):
        return solve_groups(mean_cost, layout, cands.densities, cands.is_full, budget, options)

    choice, solution = choose(cands.mean_cost)
    table = _choice_table(choice, options.granularity, S, L, H, layout)
    chosen_windows = np.asarray(cands.windows, dtype=np.int32)[table]  # (S, L, H, 3)
    chosen_windows[~layout.active] = np.asarray(profile.grid, dtype=np.int32)  # resting expert: no meaning
    windows = np.empty((steps, L, H, 3), dtype=np.int32)
    windows[:] = np.asarray(profile.grid, dtype=np.int32)
    windows[list(sparse_steps)] = chosen_windows
    for step in skipped:  # whatever the cache does there; if it computes after all: the nearest computed step's
        windows[step] = windows[min(sparse_steps, key=lambda s: (abs(s - step), s))]

    density = float(cands.densities[table][layout.active].mean()) if layout.active.any() else 1.0
    dense_computed = sum(1 for s in dense_steps if computed[s])
    overall = (density * S + dense_computed) / (S + dense_computed)
    summary: dict = {
        "strategy": options.strategy,
        "objective": options.objective,
        "granularity": options.granularity,
        "budget_scope": options.budget_scope,
        "candidates": f"{cands.source} ({len(cands.windows)} windows)",
        "budget": budget,
        "density": density,
        "sparsity": 1.0 - density,
        "overall_density": overall,
        "dense_step_count": full_steps,
        "predicted_speedup": cost_model.speedup(density, S, dense_computed),
        "cost_model": cost_model.source,
    }
    if step_weights is not None:
        summary["step_weights"] = np.round(step_weights, 4).tolist()
    if profile.header.get("cache"):
        summary["cache"] = profile.header["cache"]
        summary["cache_skipped_steps"] = [s for s in range(steps) if not computed[s]]
    summary.update(_quality(profile, cands, table, layout))
    if solution is not None:
        groups = solution.choice.shape[0]
        per_group = int(layout.active.sum()) * H / groups  # layer granularity sums a layer's steps into one group
        summary["optimality_gap_bound"] = solution.gap_bound / (groups * per_group)
    summary.update(_cross_validate(profile, cands, options, layout, choose, S, L, H))
    summary["prompts"] = profile.num_prompts
    summary.update(check_heldout(summary, options.heldout_tolerance).summary_fields())
    summary["profile_steps"] = list(profile.profile_steps)
    summary["step_mapping"] = "each sparse step uses the statistics of the nearest profiled step"
    experts = ExpertSplit.from_header(profile.header)
    if experts is not None:
        summary["step_mapping"] += " where the layer's expert ran"
        summary["expert_switch_step"] = experts.switch_step
    from .report import tool_version

    summary["tool_version"] = tool_version()
    config = MaskConfig(
        model={k: profile.model[k] for k in ("family", "transformer_class", "num_layers", "num_heads")},
        canvas=profile.canvas,
        tile=profile.tile,
        text_len=int(profile.header.get("text_len", 0)),
        steps=steps,
        dense_steps=dense_steps,
        windows=windows,
        summary=_rounded(summary),
        experts=experts,
    )
    return Selection(config, config.summary, solution, table, cands)


def _computed_steps(profile: Profile) -> list[bool]:
    """Per step: computed (True), or skipped by the step cache the profile ran under (its header's
    ``computed_steps``; absent: every step computed)."""
    computed = profile.header.get("computed_steps")
    if computed is None:
        return [True] * profile.steps
    if len(computed) != profile.steps:
        raise UserError(f"profile header computed_steps has {len(computed)} entries for {profile.steps} steps")
    return [bool(c) for c in computed]


def _quality(profile: Profile, cands: Candidates, table: np.ndarray, layout: StepLayout) -> dict:
    """In-sample predicted error (where measured) and recall of the chosen windows."""
    out: dict = {}
    geometry = profile.geometry
    # recall of any window is known from recall_sum
    recall = profile.mean_recall().double().numpy()
    P, L, H = recall.shape[:3]
    flat = recall.reshape(P, L, H, -1)
    nt, nh, nw = profile.grid
    window_ids = np.array([(w[0] - 1) * nh * nw + (w[1] - 1) * nw + (w[2] - 1) for w in cands.windows])
    out["predicted_recall"] = evaluate(table, flat[..., window_ids], layout)
    # error is measured for shortlist windows only
    shortlist = {geometry.clip_window(w): i for i, w in reversed(list(enumerate(profile.error_windows)))}
    idx = [shortlist.get(w) for w in cands.windows]
    used = np.unique(table[layout.active])
    if all(idx[u] is not None for u in used):
        error = profile.mean_error().double().numpy()
        mapped = np.array([i if i is not None else 0 for i in idx])
        out["predicted_error"] = evaluate(table, error[..., mapped], layout)
    else:
        out["predicted_error"] = None
    return out


def _cross_validate(profile, cands, options, layout, choose, S, L, H) -> dict:
    """k-fold over prompts (leave-one-out when there are no more prompts than folds): choose on the
    training prompts, measure the error on the held-out ones, next to the error on the training ones."""
    N = profile.num_prompts
    if N < 2:
        return {"heldout_error": None, "heldout_note": "needs 2 or more prompts"}
    if cands.per_prompt_cost is None or cands.per_prompt_error is None:
        return {"heldout_error": None, "heldout_note": "per-prompt statistics exist only for the shortlist windows"}
    folds = max(2, min(int(options.folds), N))
    assignment = np.arange(N) % folds
    held, inside, held_cost, weights = [], [], [], []
    for fold in range(folds):
        train, test = assignment != fold, assignment == fold
        choice, _ = choose(cands.per_prompt_cost[train].mean(axis=0))
        table = _choice_table(choice, options.granularity, S, L, H, layout)
        held.append(evaluate(table, cands.per_prompt_error[test].mean(axis=0), layout))
        inside.append(evaluate(table, cands.per_prompt_error[train].mean(axis=0), layout))
        held_cost.append(evaluate(table, cands.per_prompt_cost[test].mean(axis=0), layout))
        weights.append(test.sum())
    w = np.asarray(weights, dtype=np.float64)
    out = {
        "heldout_error": float(np.average(held, weights=w)),
        "cv_insample_error": float(np.average(inside, weights=w)),
        "folds": folds if folds < N else f"leave-one-out ({N})",
    }
    if options.objective == "recall":
        out["heldout_recall"] = 1.0 - float(np.average(held_cost, weights=w))
    return out


def _rounded(summary: dict) -> dict:
    out = {}
    for key, value in summary.items():
        if isinstance(value, float):
            out[key] = float(f"{value:.6g}")
        else:
            out[key] = value
    return out


def can_trust_profile(profiles, options=None, tolerance: float = DEFAULT_TOLERANCE) -> tuple[bool, str]:
    """``(ok, why)``: select with ``options`` (a :class:`sta_search.select.SelectOptions`) and check the result."""
    selection = select_windows(profiles, options or SelectOptions(budget=0.3))
    check = check_heldout(selection.summary, tolerance)
    if check.ok:
        why = ("held-out error not computable" if check.gap is None else
               f"held-out error {check.heldout_error:.4g} vs in-sample {check.insample_error:.4g} ({check.gap:+.0%})")
        return True, why
    return False, check.warning  # type: ignore[return-value]


__all__ = [
    "can_trust_profile",
    "Solution",
    "solve_budget",
    "solve_argmin",
    "lagrangian_choice",
    "SelectOptions",
    "Selection",
    "select_windows",
    "build_candidates",
    "nearest_profiled",
    "resolve_budget",
]
