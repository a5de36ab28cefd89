"""Search-quality study on the bundled tiny model (docs/targets.md).

Profiles the tiny Wan-architecture model on training prompts, builds mask configs at several density
budgets with

* our budget solver (``strategy="budget"``; objective ``error`` per (step, layer, head), plus objective
  ``recall`` and granularity ``layer`` as variants),
* FastVideo's argmin rule (``strategy="argmin"``: no budget; its achieved density is reported and our
  solver and the best uniform window are also run at that density, for a matched comparison),
* the best single uniform window at or under each budget (the shortlist window with the lowest in-sample
  mean error among those whose density fits),

then generates held-out prompts (disjoint from the training prompts) densely and with every config from
the same initial noise and reports PSNR / SSIM against the dense videos (frame-averaged, per prompt and
mean), next to the model's locality (mean recall per layer and head at a few windows, from the profile).

Every config keeps the same dense steps (the selector's default: the first ``round(0.24 * steps)``).

Generation runs all held-out prompts as one batch per config (about 3x the throughput of one at a time
on a CPU). STA runs as SDPA under the reference backend's mask, cached per window table.

    nice python bench/quality.py                 # ~30 min on 2 CPU cores
    python bench/quality.py --quick              # smoke run: 2 + 2 prompts, 2 windows, one density
    python bench/quality.py --device cuda --seeds 0 1 2 3 --vary-prompts --model DIR   # several seeds, GPU

``--seeds S1 S2 ..``: the whole study (profile, selection, generation) once per seed; seed s sets the
profile's and the generation's initial noise and, with ``--vary-prompts``, also the training / held-out
prompt split (prompt seeds offset by 1000 s). With more than one seed the JSON (schema v2) holds each
seed's results under ``per_seed`` and, under ``aggregate``, mean and std (over seeds) of PSNR / SSIM
per config and of the paired differences solver - argmin (capped, matched density), solver - best uniform
and solver - argmin (matched), also pooled over (seed, prompt) pairs.

Writes ``bench/results/quality-<UTC timestamp>.json`` (+ a PNG summary). The profile lives in
``--work`` (default ``/tmp/sta-search-quality``) and is resumed when rerun with the same settings.

**Study v2 (``--plan v2``, the default for the bundled ``small`` model; issue #15).** Prompts: the profile
runs on *training* captions of `sta_search.small.data` (``sample_scenes(held_out=False)``, seeded per split)
and the evaluation on its held-out captions (``prompt_set``: only captions ``is_held_out`` keeps out of the
model's training), so the two sets are disjoint by construction (also asserted). Methods per density:

* ``solver-error-step@d``: our budget solver;
* ``uniform@d``: the best single shortlist window of density ``<= d`` (lowest in-sample error);
* ``paper-fixed@d``: a fixed schedule in the STA paper's style, chosen without the profile: the same
  dense first steps, then ONE window for every head, the window a hand-picker would take at this
  budget: among windows with odd sizes (centred, geometry.md) or a whole axis, the one of largest
  density ``<= d``, ties to the most isotropic (smallest max/min of its tile counts), then the widest;
* ``argmin-capped@d`` with ``solver-error-step@argmin-capped{d}`` (FastVideo's argmin rule over the
  shortlist windows of density ``<= d``, and our solver at the density argmin achieved), and the uncapped
  ``argmin`` with ``solver-error-step@argmin`` and ``uniform@argmin`` at its achieved density.

Metrics per held-out prompt, against the dense video of the same prompt and initial noise, on 8-bit frames
(``round(255 x)``): PSNR (dB, per frame, mean over frames), SSIM (scikit-image's default: 7x7 uniform
window, sample covariance, per channel, mean over frames; computed in torch, equal to
``sta_search.video.fidelity``), and temporal consistency:

* ``tpsnr_db``, temporal-difference PSNR: with ``D_t = x_{t+1} - x_t`` the frame differences of a video,
  ``10 log10(255^2 / mean((D_sparse - D_dense)^2))`` over all frame pairs, pixels and channels (warping
  free: it compares how each video changes between frames, so flicker or motion the dense video does not
  have lowers it, while a static offset that PSNR penalises does not);
* ``flicker_ratio``: ``mean|D_sparse| / mean|D_dense|`` (1: as much frame-to-frame change as dense;
  > 1: more).

Generation shares the dense prefix: every config with the default dense steps (the first
``round(0.24 * steps)``) starts from the latents after those steps, computed once per seed with dense
attention (the same numbers as running them again; ``--no-share-prefix`` turns this off). STA runs
through ``--sta``: ``kernel`` = ``sta_search.accelerate.MaskAttention`` (``sta_attention`` with backend
auto: Triton on CUDA for head dim 64, the gather backend on CPU), ``mask`` = SDPA under the reference
backend's boolean mask (``ConfigAttention``); ``auto`` = kernel. On CUDA ``--dtype auto`` is bfloat16
(profile and generation), on CPU float32.

Targets of v2 (in the JSON's ``targets``, on the mean over seeds): solver >= best uniform + 1.5 dB and
solver >= argmin-capped (matched density) + 0.5 dB at densities 0.2 and 0.3; at 0.42 the solver's PSNR
is reported next to the STA paper's 28.76 dB (training-free, HunyuanVideo; a different model and
resolution, so a reference point, not a like-for-like target).

    python bench/quality.py --model small --device cuda --seeds 0 1 2 3 4 --vary-prompts \
        --train-prompts 4 --heldout-prompts 16 --densities 0.1 0.2 0.3 0.42 --time-budget 170 --out X.json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"

TRAIN_PROMPT_SEED = 101
HELDOUT_PROMPT_SEED = 202
DENSITIES = (0.15, 0.3, 0.5)
# Error shortlist on the (4, 4, 4) tile grid: densities 1/64 .. 0.75, isotropic and anisotropic, plus full
# attention (whose error is 0 and costs nothing to profile).
SHORTLIST = ((1, 1, 1), (1, 2, 2), (2, 2, 2), (1, 3, 3), (4, 2, 2), (1, 4, 4), (2, 3, 3), (3, 3, 3),
             (2, 4, 4), (3, 4, 4), (4, 4, 4))
LOCALITY_WINDOWS = ((1, 1, 1), (2, 2, 2), (2, 3, 3), (3, 3, 3), (2, 4, 4))

# The small model at 16x96x160 px: canvas 16x24x40, tile (4,4,4), grid (4,6,10). Odd sizes (centred
# windows, docs/geometry.md) or a whole axis; densities 0.0375 .. 0.4375 (prod(w) / 240), plus full attention.
SMALL_DENSITIES = (0.1, 0.2, 0.3, 0.42)
SMALL_SHORTLIST = ((1, 3, 3), (1, 3, 5), (1, 3, 7), (1, 5, 5), (3, 3, 3), (4, 3, 3), (3, 3, 5), (1, 6, 10),
                   (4, 3, 5), (4, 6, 3), (3, 5, 5), (4, 3, 7), (4, 5, 5), (3, 5, 7), (4, 6, 10))
SMALL_QUICK_SHORTLIST = ((1, 3, 3), (3, 3, 3), (1, 3, 5), (3, 3, 5), (4, 6, 10))
SMALL_LOCALITY_WINDOWS = ((1, 3, 3), (3, 3, 3), (3, 3, 5), (3, 5, 5), (4, 5, 5))
PAPER_PSNR_DB = 28.76  # the STA paper's training-free PSNR the brief compares density 0.42 with
V2_TARGETS = {"solver_minus_best_uniform": 1.5, "solver_minus_argmin_capped_matched": 0.5}
V2_TARGET_DENSITIES = (0.2, 0.3)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-prompts", type=int, default=8)
    p.add_argument("--heldout-prompts", type=int, default=8)
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's, 8)")
    p.add_argument("--profile-every", type=int, default=2, help="profile every k-th step")
    p.add_argument("--densities", type=float, nargs="+", default=None,
                   help=f"density budgets (default: {' '.join(map(str, DENSITIES))}; small model: "
                        f"{' '.join(map(str, SMALL_DENSITIES))})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="run the study once per seed (overrides --seed)")
    p.add_argument("--vary-prompts", action="store_true", help="a different prompt split per seed")
    p.add_argument("--model", default="tiny", help="bundled name or tiny pipeline folder (e.g. freshly trained weights)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--profile-backend", default="auto",
                   help="recall/error statistics backend of the profile: auto (Triton on CUDA), triton or reference")
    p.add_argument("--work", default="/tmp/sta-search-quality")
    p.add_argument("--out", default=None, help="result JSON (default bench/results/quality-<timestamp>.json)")
    p.add_argument("--quick", action="store_true", help="smoke run (tests): tiny prompt counts and shortlist")
    p.add_argument("--profile-only", action="store_true")
    p.add_argument("--no-variants", action="store_true", help="skip objective recall / granularity layer")
    p.add_argument("--objectives", nargs="+", default=[], choices=("squared-error", "recall"),
                   help="study v2: also the solver with these objectives, at argmin-capped's density (the 0.5 dB "
                        "target's comparison)")
    p.add_argument("--solver-variants", nargs="+", default=[], choices=tuple(SOLVER_VARIANTS),
                   help="study v2: also these solver variants at argmin-capped's density: budget-per-step (every "
                        "sparse step holds the budget on its own), layer (one window per layer and head), step-calibrated "
                        "(each profiled step's costs weighted by its measured effect on the final video, "
                        "sta_search.sensitivity)")
    p.add_argument("--uniform-windows", nargs="+", default=[],
                   help="also run these uniform windows t,h,w (whatever their in-sample error)")
    p.add_argument("--configs", nargs="+", default=None, help="run only the configs with these names")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds: start no further config (they run in priority order) once this much has passed")
    p.add_argument("--plan", choices=("auto", "v1", "v2"), default="auto",
                   help="config plan: v1 (tiny study), v2 (issue #15: paper-fixed schedule, v2 targets); "
                        "auto: v2 for the small model, v1 otherwise")
    p.add_argument("--height", type=int, default=None, help="override the model's recommended height (px)")
    p.add_argument("--width", type=int, default=None, help="override the model's recommended width (px)")
    p.add_argument("--frames", type=int, default=None, help="override the model's recommended frame count")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="profile and generation dtype (auto: bfloat16 on CUDA, float32 elsewhere)")
    p.add_argument("--sta", default="auto", choices=("auto", "kernel", "mask"),
                   help="STA for generation: kernel (MaskAttention, sta_attention backend auto), mask (SDPA under "
                        "the reference boolean mask); auto = kernel")
    p.add_argument("--no-share-prefix", action="store_true",
                   help="run every config from the initial noise (default: configs start after the shared dense steps)")
    return p.parse_args(argv)


def model_kind(folder) -> str:
    """The kind of model in ``folder``: small (a small-model pipeline folder, bundled or a checkpoint) or tiny."""
    from sta_search.small import is_small_folder

    return "small" if is_small_folder(folder) else "tiny"


def study_settings(args, folder):
    """The model folder's recommended settings with --height/--width/--frames/--steps applied."""
    import dataclasses

    from sta_search.tiny import recommended_settings

    settings = recommended_settings(folder)
    changes = {k: getattr(args, k) for k in ("height", "width", "frames", "steps") if getattr(args, k, None)}
    return dataclasses.replace(settings, **changes)


def resolve_dtype(args) -> str:
    dtype = getattr(args, "dtype", "auto")
    if dtype == "auto":
        return "bfloat16" if str(getattr(args, "device", "cpu")).startswith("cuda") else "float32"
    return dtype


def prompt_seeds(split: int = 0) -> tuple[int, int]:
    return TRAIN_PROMPT_SEED + 1000 * split, HELDOUT_PROMPT_SEED + 1000 * split


def prompts(train: int, heldout: int, split: int = 0, kind: str = "tiny") -> tuple[list[str], list[str]]:
    """(training prompts to profile, held-out prompts to evaluate), disjoint. For the small model: training
    captions of its grammar (never `is_held_out`) and held-out captions (always `is_held_out`)."""
    train_seed, heldout_seed = prompt_seeds(split)
    if kind == "small":
        from sta_search.small import data as small_data

        generator = torch.Generator().manual_seed(train_seed)
        training: list[str] = []
        while len(training) < train:
            caption = small_data.sample_scenes(1, generator, held_out=False)[0].caption
            if caption not in training:
                training.append(caption)
        heldout_list = small_data.prompt_set(heldout, heldout_seed)
        assert not set(training) & set(heldout_list), "training and held-out captions overlap"
        return training, heldout_list
    from sta_search.tiny import data

    training = data.prompt_set(train, train_seed)
    others = [p for p in data.prompt_set(heldout + train, heldout_seed) if p not in training]
    return training, others[:heldout]


def profile_stage(args, loaded, settings, training, shortlist, console=print, seed=None, suffix=""):
    from sta_search.profile import ProfileSettings, run_profile

    seed = args.seed if seed is None else seed
    folder = Path(args.work) / (("profile-quick" if args.quick else "profile") + suffix)
    t0 = time.perf_counter()
    profile = run_profile(
        ProfileSettings(model=getattr(args, "model", "tiny"), prompts=tuple(training), steps=args.steps or settings.steps,
                        height=settings.height, width=settings.width, frames=settings.frames, seed=seed,
                        profile_steps=args.profile_every, tile=settings.tile, windows=tuple(shortlist),
                        device=getattr(args, "device", "cpu"), dtype=resolve_dtype(args),
                        backend=getattr(args, "profile_backend", "auto")),
        folder, resume=True, loaded=loaded)
    console(f"profile: {profile.num_prompts} prompts in {time.perf_counter() - t0:.0f} s -> {folder}")
    return profile, folder, time.perf_counter() - t0


# ----------------------------------------------------------------------------------- STA for generation
class ConfigAttention:
    """AttentionFn of a MaskConfig: dense on its dense steps and all-full layers; elsewhere SDPA under the
    reference backend's STA mask (``sta_search.kernels.sta.reference.sta_mask``, docs/geometry.md), built once
    per distinct layer window table and broadcast over the batch (the same numbers as
    ``sta_attention(backend="reference")``, without rebuilding a (B, H, S, S) mask every call)."""

    def __init__(self, config):
        from sta_search.kernels.geometry import Geometry

        self.config = config
        self.geometry = Geometry(tuple(config.canvas), tuple(config.tile))
        self.masks: dict[bytes, torch.Tensor] = {}

    def __call__(self, call):
        from sta_search.kernels.sta.reference import sta_mask
        from sta_search.models import dense_attention

        if call.text_len:
            raise ValueError("the quality bench handles video-only self-attention (Wan)")
        table = self.config.window_table(call.step)
        if table is None:
            return dense_attention(call)
        windows = np.asarray([self.geometry.clip_window(tuple(w)) for w in np.asarray(table)[call.layer].tolist()],
                             dtype=np.int64)
        if all(self.geometry.is_full(tuple(w)) for w in windows.tolist()):
            return dense_attention(call)
        key = windows.tobytes()
        mask = self.masks.get(key)
        if mask is None:
            mask = sta_mask(self.geometry.canvas, self.geometry.tile, torch.from_numpy(windows), batch=1,
                            device=call.q.device)
            self.masks[key] = mask
        return torch.nn.functional.scaled_dot_product_attention(call.q, call.k, call.v, attn_mask=mask)


def generate_batch(loaded, settings, prompt_list, steps: int, seed: int, attention_fn) -> np.ndarray:
    """``(prompts, frames, height, width, 3)`` float in [0, 1]; the same seed gives the same initial noise."""
    from sta_search.models import hook_attention

    generator = torch.Generator(device="cpu").manual_seed(seed)
    kwargs = dict(loaded.adapter.pipeline_kwargs(list(prompt_list), settings.height, settings.width, settings.frames,
                                                 steps, generator))
    kwargs.update(output_type="np", guidance_scale=settings.guidance_scale)
    with hook_attention(loaded, attention_fn, loaded.adapter):
        with torch.inference_mode():
            return np.asarray(loaded.pipeline(**kwargs).frames)


@contextlib.contextmanager
def _start_at(pipeline, first_step: int):
    """Inside: the pipeline's scheduler skips its first `first_step` steps (timesteps and sigmas sliced after
    ``set_timesteps``), so a call with ``latents=`` the latents after those steps continues the same
    trajectory."""
    scheduler = pipeline.scheduler
    original = scheduler.set_timesteps

    def set_timesteps(*args, **kwargs):
        original(*args, **kwargs)
        scheduler.timesteps = scheduler.timesteps[first_step:]
        scheduler.sigmas = scheduler.sigmas[first_step:]

    scheduler.set_timesteps = set_timesteps
    try:
        yield
    finally:
        del scheduler.set_timesteps  # the instance attribute; the class method is back


def _shift_steps(attention_fn, offset: int):
    """`attention_fn` seeing the pipeline's steps numbered from `offset` (the hook counts from 0 per call)."""
    if not offset:
        return attention_fn

    def shifted(call):
        return attention_fn(dataclasses.replace(call, step=call.step + offset))

    return shifted


class HeldoutGenerator:
    """Generates one batch of prompts from one seed's initial noise under different attention functions.

    ``prefix_steps`` > 0: the first that many steps run once with dense attention and are cached; a config
    whose dense steps are exactly ``range(prefix_steps)`` continues from there (`run`); any other runs from
    the noise. Videos come back as float32 tensors ``(prompts, frames, 3, height, width)`` in [0, 1] on the
    model's device.
    """

    def __init__(self, loaded, settings, prompt_list, steps: int, seed: int, prefix_steps: int = 0):
        self.loaded, self.settings, self.prompts = loaded, settings, list(prompt_list)
        self.steps, self.seed, self.prefix_steps = int(steps), int(seed), int(prefix_steps)
        self._prefix = None

    def _call(self, attention_fn, *, latents=None, first_step: int = 0, stop_after: int | None = None,
              output_type: str = "pt"):
        from sta_search.models import hook_attention

        loaded = self.loaded
        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        kwargs = dict(loaded.adapter.pipeline_kwargs(self.prompts, self.settings.height, self.settings.width,
                                                     self.settings.frames, self.steps, generator))
        kwargs.update(output_type=output_type, guidance_scale=self.settings.guidance_scale)
        if latents is not None:
            kwargs["latents"] = latents
        captured = {}
        if stop_after is not None:
            def on_step_end(pipe, step, timestep, callback_kwargs):
                if step == stop_after - 1:
                    captured["latents"] = callback_kwargs["latents"].clone()
                    pipe._interrupt = True  # the remaining steps are skipped
                return callback_kwargs

            kwargs["callback_on_step_end"] = on_step_end
        with contextlib.ExitStack() as stack:
            if first_step:
                stack.enter_context(_start_at(loaded.pipeline, first_step))
            stack.enter_context(hook_attention(loaded, _shift_steps(attention_fn, first_step), loaded.adapter))
            stack.enter_context(torch.inference_mode())
            frames = loaded.pipeline(**kwargs).frames
        return captured["latents"] if stop_after is not None else frames

    def prefix(self):
        """Latents after the dense prefix (computed on first use)."""
        from sta_search.models import dense_attention

        if self._prefix is None:
            self._prefix = self._call(dense_attention, stop_after=self.prefix_steps, output_type="latent")
        return self._prefix

    def run(self, attention_fn, dense_steps=None) -> torch.Tensor:
        dense_steps = tuple(range(self.prefix_steps)) if dense_steps is None else tuple(dense_steps)
        if self.prefix_steps and dense_steps == tuple(range(self.prefix_steps)):
            video = self._call(attention_fn, latents=self.prefix(), first_step=self.prefix_steps)
        else:
            video = self._call(attention_fn)
        return torch.as_tensor(video).float()


# ----------------------------------------------------------------------------------- metrics
def _uint8_levels(video: torch.Tensor) -> torch.Tensor:
    """[0, 1] float -> the 8-bit levels ``sta_search.video.to_uint8_frames`` gives, as float64."""
    return (video.double() * 255.0).round().clamp(0, 255)


def _ssim_frames(x: torch.Tensor, y: torch.Tensor, win: int) -> torch.Tensor:
    """scikit-image's default SSIM (uniform win x win window, sample covariance, K1 0.01, K2 0.03, data
    range 255) of ``(N, C, H, W)`` float64 frames, mean over channels -> ``(N,)``. The valid part of the
    filter is exactly the region scikit-image averages over (it crops (win - 1) // 2 on every side)."""
    import torch.nn.functional as F

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    n = win * win
    cov_norm = n / (n - 1)

    def mean(t):
        return F.avg_pool2d(t, win, stride=1)

    ux, uy = mean(x), mean(y)
    uxx, uyy, uxy = mean(x * x), mean(y * y), mean(x * y)
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(dim=(2, 3)).mean(dim=1)


def video_metrics(videos: torch.Tensor, references: torch.Tensor) -> list[dict]:
    """Per video of ``(N, F, 3, H, W)`` in [0, 1] against ``references`` (same shape, same device): PSNR and
    SSIM per frame averaged over frames (as ``sta_search.video.fidelity``; an identical frame counts PSNR
    inf and SSIM 1), ``tpsnr_db`` (PSNR of the frame differences, pooled over the video) and
    ``flicker_ratio`` (mean |frame difference| over the reference's); see the module docstring."""
    x, y = _uint8_levels(videos), _uint8_levels(references)
    if x.shape != y.shape:
        raise ValueError(f"videos differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    n, f, c, h, w = x.shape
    side = min(h, w)
    win = min(7, side if side % 2 else side - 1)
    mse = ((x - y) ** 2).mean(dim=(2, 3, 4))  # (N, F)
    psnr = torch.where(mse > 0, 10 * torch.log10(255.0 ** 2 / mse.clamp_min(1e-300)), torch.full_like(mse, math.inf))
    ssim = _ssim_frames(x.reshape(n * f, c, h, w), y.reshape(n * f, c, h, w), win).reshape(n, f)
    ssim = torch.where(mse > 0, ssim, torch.ones_like(ssim))
    out = []
    for i in range(n):
        dx, dy = x[i, 1:] - x[i, :-1], y[i, 1:] - y[i, :-1]
        if f > 1:
            tmse = float(((dx - dy) ** 2).mean())
            tpsnr = 10 * math.log10(255.0 ** 2 / tmse) if tmse > 0 else math.inf
            ref_change = float(dy.abs().mean())
            flicker = float(dx.abs().mean()) / ref_change if ref_change > 0 else None
        else:
            tpsnr, flicker = None, None
        out.append({"psnr_db": float(psnr[i].mean()), "ssim": float(ssim[i].mean()), "tpsnr_db": tpsnr,
                    "flicker_ratio": flicker})
    return out


# ----------------------------------------------------------------------------------- configs
def window_histogram(config) -> dict[str, float]:
    """Share of (sparse step, layer, head) slots per window."""
    from collections import Counter

    rows = [tuple(int(x) for x in w) for s in config.sparse_steps for w in np.asarray(config.window_table(s)).reshape(-1, 3)]
    counts = Counter(rows)
    return {",".join(map(str, w)): round(c / len(rows), 4) for w, c in sorted(counts.items(), key=lambda kv: -kv[1])}


def insample_cost(profile, config, objective: str = "error") -> float | None:
    """Mean over (sparse step, layer, head) of the profile's mean cost of the config's window (the nearest
    profiled step's statistics), for windows on the shortlist (error) or any window (recall)."""
    from sta_search.select import nearest_profiled

    g = profile.geometry
    sparse = list(config.sparse_steps)
    step_map = nearest_profiled(sparse, profile.profile_steps)
    if objective == "recall":
        recall = profile.mean_recall().double().numpy()
        vals = [recall[step_map[i], l, h, w[0] - 1, w[1] - 1, w[2] - 1]
                for i, s in enumerate(sparse) for l, row in enumerate(np.asarray(config.window_table(s)))
                for h, w in enumerate((g.clip_window(tuple(x)) for x in row.tolist()))]
        return float(np.mean(vals))
    index = {g.clip_window(w): i for i, w in enumerate(profile.error_windows)}
    error = profile.mean_error().double().numpy()
    vals = []
    for i, s in enumerate(sparse):
        for l, row in enumerate(np.asarray(config.window_table(s))):
            for h, w in enumerate(row.tolist()):
                w = g.clip_window(tuple(w))
                if g.is_full(w):
                    vals.append(0.0)
                elif w in index:
                    vals.append(error[step_map[i], l, h, index[w]])
                else:
                    return None
    return float(np.mean(vals))


def best_uniform(profile, info, budget: float, dense_steps, note: str):
    """The shortlist window with the lowest in-sample mean error among those of density <= budget."""
    from sta_search.maskconfig import MaskConfig

    g = profile.geometry
    best = None
    for window in profile.error_windows:
        w = g.clip_window(tuple(window))
        if g.density(w) > budget + 1e-12:
            continue
        config = MaskConfig.uniform(info, profile.canvas, profile.tile, int(profile.header.get("text_len") or 0),
                                    profile.steps, w, dense_steps=dense_steps)
        cost = insample_cost(profile, config)
        if best is None or cost < best[0]:
            best = (cost, w, config)
    if best is None:
        return None
    cost, w, config = best
    return config.replace(summary={"strategy": "uniform", "window": list(w), "selected_by": note,
                                   "predicted_error": cost, "density": config.density()})


def capped_argmin(profile, info, budget: float, dense_steps):
    """FastVideo's argmin rule restricted to the shortlist windows of density <= budget (its candidate list
    built for that budget): per (sparse step, layer, head) the allowed window of lowest mean error."""
    from sta_search.maskconfig import MaskConfig
    from sta_search.select import build_candidates, nearest_profiled, solve_argmin

    cands = build_candidates(profile, "error", "shortlist")
    allowed = (~cands.is_full) & (cands.densities <= budget + 1e-12)
    sparse = [s for s in range(profile.steps) if s not in set(dense_steps)]
    step_map = nearest_profiled(sparse, profile.profile_steps)
    K = cands.mean_cost.shape[-1]
    choice = solve_argmin(cands.mean_cost[step_map].reshape(-1, K), allowed[None, :])
    L, H = profile.num_layers, profile.num_heads
    windows = np.empty((profile.steps, L, H, 3), dtype=np.int32)
    windows[:] = np.asarray(profile.grid, dtype=np.int32)
    windows[sparse] = np.asarray(cands.windows, dtype=np.int32)[choice.reshape(len(sparse), L, H)]
    config = MaskConfig(model={k: profile.model[k] for k in ("family", "transformer_class", "num_layers", "num_heads")},
                        canvas=profile.canvas, tile=profile.tile, text_len=int(profile.header.get("text_len") or 0),
                        steps=profile.steps, dense_steps=tuple(dense_steps), windows=windows, summary={})
    return config.replace(summary={"strategy": "argmin (candidates: shortlist windows of density <= budget)",
                                   "budget_cap": budget, "density": config.density()})


def build_configs(profile, info, densities, variants: bool):
    """Ordered (name, method, target density, config) list: the most important comparisons first."""
    from sta_search.select import DEFAULT_FULL_STEP_FRACTION, SelectOptions, select_windows
    from sta_search.errors import UserError

    dense_steps = tuple(range(round(DEFAULT_FULL_STEP_FRACTION * profile.steps)))
    full_steps = len(dense_steps)
    out = []

    def solver(budget, **kw):
        try:
            return select_windows(profile, SelectOptions(budget=budget, full_steps=full_steps, **kw)).config
        except UserError as exc:
            print(f"skip solver at {budget} {kw}: {exc}")
            return None

    order = sorted(densities, key=lambda d: (abs(d - 0.3), d))  # 0.3 first

    def against_argmin_capped(d):
        capped = capped_argmin(profile, info, d, dense_steps)
        ad = capped.density()
        return [(f"argmin-capped@{d:g}", "argmin, candidates <= budget", d, capped),
                (f"solver-error-step@argmin-capped{d:g}", "budget solver at argmin-capped's density", ad, solver(ad))]

    def solver_and_uniform(d):
        return [(f"solver-error-step@{d:g}", "budget solver (error, step)", d, solver(d)),
                (f"uniform@{d:g}", "best uniform window", d,
                 best_uniform(profile, info, d, dense_steps, f"density <= {d:g}"))]

    def variants_at(d):
        return [(f"solver-recall-step@{d:g}", "budget solver (recall, step, all windows)", d, solver(d, objective="recall")),
                (f"solver-error-layer@{d:g}", "budget solver (error, layer)", d, solver(d, granularity="layer"))]

    first, rest = order[0], order[1:]
    out += solver_and_uniform(first) + against_argmin_capped(first)
    argmin = select_windows(profile, SelectOptions(strategy="argmin", full_steps=full_steps)).config
    md = argmin.density()
    out += [("argmin", "argmin (FastVideo rule, whole shortlist)", None, argmin),
            ("solver-error-step@argmin", "budget solver at argmin's density", md, solver(md)),
            ("uniform@argmin", "best uniform window at argmin's density", md,
             best_uniform(profile, info, md, dense_steps, f"density <= argmin's {md:.4f}"))]
    for d in rest:
        out += solver_and_uniform(d)
    if variants:
        out += variants_at(first)
        for extra in (0, 1, 3):  # number of dense steps (the default is round(0.24 * steps))
            if extra != full_steps and extra < profile.steps:
                try:
                    cfg = select_windows(profile, SelectOptions(budget=first, full_steps=extra)).config
                except UserError as exc:
                    print(f"skip dense-steps variant {extra}: {exc}")
                    continue
                out.append((f"solver-error-step-dense{extra}@{first:g}",
                            f"budget solver (error, step) with {extra} dense steps", first, cfg))
    for d in rest:
        out += against_argmin_capped(d)
    if variants:
        for d in rest:
            out += variants_at(d)
    return [(n, m, d, c) for n, m, d, c in out if c is not None]


def paper_window(geometry, budget: float) -> tuple[int, int, int] | None:
    """The single window a hand-picked schedule in the STA paper's style takes at `budget`, chosen without
    any profile: every window whose sizes are odd (centred) or a whole axis, of exact density <= budget;
    the densest, ties to the most isotropic (smallest max / min tile count), then the widest (W, then H)."""
    import itertools

    grid = geometry.grid
    sizes = [sorted({w for w in range(1, n + 1) if w % 2 == 1 or w == n}) for n in grid]
    best = None
    for w in itertools.product(*sizes):
        d = geometry.density(w)
        if d > budget + 1e-12 or geometry.is_full(w):
            continue
        key = (-round(d, 12), max(w) / min(w), -w[2], -w[1], -w[0])
        if best is None or key < best[0]:
            best = (key, tuple(int(x) for x in w))
    return None if best is None else best[1]


def paper_fixed(profile, info, budget: float, dense_steps):
    """`paper_window` for every head of every sparse step, after the same dense steps as the other configs."""
    from sta_search.maskconfig import MaskConfig

    window = paper_window(profile.geometry, budget)
    if window is None:
        return None
    config = MaskConfig.uniform(info, profile.canvas, profile.tile, int(profile.header.get("text_len") or 0),
                                profile.steps, window, dense_steps=dense_steps)
    return config.replace(summary={"strategy": "paper-fixed", "window": list(window),
                                   "selected_by": f"densest odd/whole-axis window of density <= {budget:g}, "
                                                  "most isotropic on ties (no profile)",
                                   "predicted_error": insample_cost(profile, config), "density": config.density()})


#: study v2 solver variants (--solver-variants): config name stem -> SelectOptions fields
SOLVER_VARIANTS = {"budget-per-step": ("solver-error-step-per-step", dict(budget_scope="step")),
                   "layer": ("solver-error-layer", dict(granularity="layer")),
                   # step weights measured per seed on the profiled prompts (sta_search.sensitivity; run_seed)
                   "step-calibrated": ("solver-error-step-calibrated", dict()),
                   # step weights times layer weights, both measured per seed (sta_search.sensitivity)
                   "step-layer-calibrated": ("solver-error-step-layer-calibrated", dict())}


def build_configs_v2(profile, info, densities, extra_objectives=(), solver_variants=(), variant_options=None):
    """Ordered (name, method, target density, config) list of study v2 (module docstring): the target
    comparisons at 0.3 and 0.2 first (argmin capped runs at these only), then 0.42, argmin (uncapped) and
    the remaining densities. ``extra_objectives`` (e.g. ``squared-error``): the solver with that objective too,
    at argmin-capped's density (``solver-<objective>-step@argmin-capped<d>``); ``solver_variants`` likewise,
    with ``variant_options`` (variant -> SelectOptions fields) in place of `SOLVER_VARIANTS`' fields."""
    variant_options = {v: SOLVER_VARIANTS[v][1] for v in solver_variants} | dict(variant_options or {})
    from sta_search.errors import UserError
    from sta_search.select import DEFAULT_FULL_STEP_FRACTION, SelectOptions, select_windows

    dense_steps = tuple(range(round(DEFAULT_FULL_STEP_FRACTION * profile.steps)))
    full_steps = len(dense_steps)

    def solver(budget, **kw):
        try:
            return select_windows(profile, SelectOptions(budget=budget, full_steps=full_steps, **kw)).config
        except UserError as exc:
            print(f"skip solver at {budget} {kw}: {exc}")
            return None

    def at(d):
        calibrated = ([(f"solver-error-step-calibrated@{d:g}", "budget solver (error, step, measured step weights)", d,
                        solver(d, **variant_options["step-calibrated"]))]
                      if "step-calibrated" in variant_options and d in V2_TARGET_DENSITIES else [])
        return calibrated + [(f"solver-error-step@{d:g}", "budget solver (error, step)", d, solver(d)),
                (f"uniform@{d:g}", "best uniform window", d, best_uniform(profile, info, d, dense_steps, f"density <= {d:g}")),
                (f"paper-fixed@{d:g}", "fixed schedule, paper style (dense steps, then one window)", d,
                 paper_fixed(profile, info, d, dense_steps))]

    def capped(d):
        config = capped_argmin(profile, info, d, dense_steps)
        ad = config.density()
        return [(f"argmin-capped@{d:g}", "argmin, candidates <= budget", d, config),
                (f"solver-error-step@argmin-capped{d:g}", "budget solver at argmin-capped's density", ad, solver(ad))] + [
                (f"solver-{objective}-step@argmin-capped{d:g}", f"budget solver ({objective}) at argmin-capped's density",
                 ad, solver(ad, objective=objective)) for objective in extra_objectives] + [
                (f"{SOLVER_VARIANTS[v][0]}@argmin-capped{d:g}", f"budget solver ({v}) at argmin-capped's density",
                 ad, solver(ad, **variant_options[v])) for v in solver_variants]

    targeted = [d for d in sorted(densities, key=lambda d: (abs(d - 0.3), d)) if d in V2_TARGET_DENSITIES]
    rest = sorted(d for d in densities if d not in V2_TARGET_DENSITIES)
    rest.sort(key=lambda d: (abs(d - 0.42), d))  # 0.42 (the paper comparison) before the others
    out = []
    for d in targeted:
        out += at(d) + capped(d)
    if rest:
        out += at(rest[0])
    argmin = select_windows(profile, SelectOptions(strategy="argmin", full_steps=full_steps)).config
    md = argmin.density()
    out += [("argmin", "argmin (FastVideo rule, whole shortlist)", None, argmin),
            ("solver-error-step@argmin", "budget solver at argmin's density", md, solver(md)),
            ("uniform@argmin", "best uniform window at argmin's density", md,
             best_uniform(profile, info, md, dense_steps, f"density <= argmin's {md:.4f}"))]
    for d in rest[1:]:
        out += at(d)
    return [(n, m, d, c) for n, m, d, c in out if c is not None]


# ----------------------------------------------------------------------------------- locality
def locality(profile, windows) -> dict:
    g = profile.geometry
    recall = profile.mean_recall().double().numpy()  # (P, L, H, nt, nh, nw)
    out = {"windows": [list(w) for w in windows],
           "window_density": [g.density(w) for w in windows],
           "profile_steps": list(profile.profile_steps),
           "per_layer_head": {}, "per_layer": {}, "per_step": {}}
    for w in windows:
        key = ",".join(map(str, w))
        r = recall[..., w[0] - 1, w[1] - 1, w[2] - 1]  # (P, L, H)
        out["per_layer_head"][key] = np.round(r.mean(0), 4).tolist()
        out["per_layer"][key] = np.round(r.mean((0, 2)), 4).tolist()
        out["per_step"][key] = np.round(r.mean((1, 2)), 4).tolist()
    return out


# ----------------------------------------------------------------------------------- main
def _versions() -> dict:
    import diffusers

    return {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "numpy": np.__version__}


def summarize(results: dict) -> dict:
    """The search-quality target checks (docs/targets.md) from the mean held-out PSNRs."""
    cfg = results["configs"]

    def psnr(name):
        return cfg.get(name, {}).get("mean_psnr_db")

    checks = {}
    s, u = psnr("solver-error-step@0.3"), psnr("uniform@0.3")
    if s is not None and u is not None:
        checks["solver_minus_uniform_at_0.3_db"] = s - u
        checks["target_solver_beats_uniform_by_1db"] = bool(s - u >= 1.0)
    a, sa = psnr("argmin-capped@0.3"), psnr("solver-error-step@argmin-capped0.3")
    if a is not None and sa is not None:
        checks["solver_minus_argmin_capped_matched_db"] = sa - a
        checks["target_solver_no_worse_than_argmin_capped_matched"] = bool(sa >= a - 0.05)
    a, sa = psnr("argmin"), psnr("solver-error-step@argmin")
    if a is not None and sa is not None:
        checks["solver_minus_argmin_matched_db"] = sa - a
        checks["target_solver_no_worse_than_argmin_matched"] = bool(sa >= a - 0.05)
    for a_name, b_name in (("solver-error-step@0.3", "uniform@0.3"),
                           ("solver-error-step@argmin-capped0.3", "argmin-capped@0.3"),
                           ("solver-error-step@argmin", "argmin")):
        if a_name in cfg and b_name in cfg:
            wins = sum(x["psnr_db"] > y["psnr_db"] for x, y in zip(cfg[a_name]["per_prompt"], cfg[b_name]["per_prompt"]))
            checks[f"prompts_where_{a_name}_beats_{b_name}"] = f"{wins}/{len(cfg[a_name]['per_prompt'])}"
    if (results.get("settings") or {}).get("plan") == "v2":
        for label, a_name, b_name in comparisons((results.get("settings") or {}).get("densities", []), "v2"):
            if psnr(a_name) is not None and psnr(b_name) is not None:
                checks[f"{label}_db"] = psnr(a_name) - psnr(b_name)
        for label, goal in v2_targets(results).items():
            checks[f"target_{label}"] = goal["holds"]
    pairs = [(e["insample_error"], e["mean_psnr_db"]) for e in cfg.values()
             if e.get("insample_error") is not None and e.get("mean_psnr_db") is not None and "same_as" not in e]
    if len(pairs) >= 3:
        from scipy.stats import spearmanr

        rho = spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).correlation
        checks["spearman_insample_error_vs_psnr"] = float(rho)
    return checks


def config_attention(args, config):
    """The attention function generation runs a config with: the STA kernel entry (``--sta kernel``, the default)
    or SDPA under the reference mask (``--sta mask``)."""
    from sta_search.accelerate import MaskAttention

    sta = "kernel" if getattr(args, "sta", "auto") == "auto" else args.sta
    return MaskAttention(config, backend="auto") if sta == "kernel" else ConfigAttention(config)


def calibrate_steps(args, loaded, settings, profile, training, seed: int, densities, layers: bool = False):
    """(step `sta_search.sensitivity.StepSensitivity`, layer one or None, seconds): step (and with ``layers``
    layer) weights measured on the profiled prompts from their profiling seed, with the plain solver's selection at
    the first target density as the probe."""
    from sta_search.models import dense_attention
    from sta_search.select import SelectOptions, select_windows
    from sta_search.sensitivity import measure_step_sensitivity

    t0 = time.perf_counter()
    steps = args.steps or settings.steps
    targeted = [d for d in sorted(densities, key=lambda d: (abs(d - 0.3), d)) if d in V2_TARGET_DENSITIES] or list(densities)
    probe = select_windows(profile, SelectOptions(budget=targeted[0])).config  # select's default dense steps
    generator = HeldoutGenerator(loaded, settings, training, steps, seed)
    dense = []  # the step and the layer measurement share one dense run

    def render(config):
        if config is None:
            if not dense:
                dense.append(generator.run(dense_attention, dense_steps=()))
            return dense[0]
        return generator.run(config_attention(args, config), dense_steps=config.dense_steps)

    sensitivity = measure_step_sensitivity(profile, probe, render, progress=lambda m: print(f"[seed {seed}] calibrate: {m}", flush=True))
    print(f"[seed {seed}] step weights {[round(w, 3) for w in sensitivity.weights]} (profiled steps "
          f"{list(sensitivity.profile_steps)}) in {time.perf_counter() - t0:.1f} s", flush=True)
    per_layer = None
    if layers:
        from sta_search.sensitivity import measure_layer_sensitivity

        per_layer = measure_layer_sensitivity(profile, probe, render)
        print(f"[seed {seed}] layer weights {[round(w, 3) for w in per_layer.weights]} "
              f"({time.perf_counter() - t0:.1f} s in all)", flush=True)
    return sensitivity, per_layer, time.perf_counter() - t0


def study_plan(args, kind: str) -> str:
    plan = getattr(args, "plan", "auto")
    return ("v2" if kind == "small" else "v1") if plan == "auto" else plan


def run_seed(args, loaded, settings, seed: int, split: int, suffix: str, out: dict, write, t_start: float,
             kind: str = "tiny"):
    """The study for one seed into `out` (a per-seed results dict, filled in as configs finish; `write()`
    saves everything so far)."""
    from sta_search.kernels.geometry import Geometry
    from sta_search.maskconfig import MaskConfig
    from sta_search.models import dense_attention
    from sta_search.stats import clip_windows

    steps = args.steps or settings.steps
    info = loaded.info
    plan = study_plan(args, kind)
    counts = (2, 2) if args.quick else (args.train_prompts, args.heldout_prompts)
    training, heldout = prompts(*counts, split=split, kind=kind)
    geometry = Geometry(tuple(int(c) for c in loaded.canvas(settings.height, settings.width, settings.frames)),
                        tuple(settings.tile))
    if kind == "small":
        shortlist = clip_windows(geometry, SMALL_QUICK_SHORTLIST if args.quick else SMALL_SHORTLIST)
        locality_windows = sorted({geometry.clip_window(w) for w in SMALL_LOCALITY_WINDOWS},
                                  key=lambda w: (geometry.density(w), w))
    else:
        shortlist = ((1, 2, 2), (2, 3, 3), (4, 4, 4)) if args.quick else SHORTLIST
        locality_windows = ([(1, 2, 2), (2, 3, 3)] if args.quick
                            else [w for w in LOCALITY_WINDOWS if geometry.clip_window(w) == w])
    densities = study_densities(args, kind)
    profile, folder, profile_s = profile_stage(args, loaded, settings, training, shortlist, seed=seed, suffix=suffix)
    if args.profile_only:
        return None
    canvas = tuple(profile.canvas)
    out["profile_folder"] = str(folder)

    t0 = time.perf_counter()
    if plan == "v2":
        variant_options = {}
        calibrated = {"step-calibrated", "step-layer-calibrated"} & set(args.solver_variants)
        if calibrated:
            sensitivity, layers, calibrate_s = calibrate_steps(args, loaded, settings, profile, training, seed, densities,
                                                               layers="step-layer-calibrated" in calibrated)
            out["step_sensitivity"] = sensitivity.to_dict() | {"seconds": round(calibrate_s, 1)}
            variant_options["step-calibrated"] = dict(step_weights=sensitivity.weights)
            if layers is not None:
                out["layer_sensitivity"] = layers.to_dict()
                variant_options["step-layer-calibrated"] = dict(
                    step_weights=tuple(map(tuple, np.outer(sensitivity.weights, layers.weights).tolist())))
        configs = build_configs_v2(profile, info, densities, tuple(args.objectives), tuple(args.solver_variants),
                                   variant_options)
    else:
        configs = build_configs(profile, info, densities, variants=not (args.no_variants or args.quick))
    for text in args.uniform_windows:
        window = geometry.clip_window(tuple(int(x) for x in text.split(",")))
        fixed = MaskConfig.uniform(info, canvas, profile.tile, 0, profile.steps, window,
                                   dense_steps=configs[0][3].dense_steps)
        configs.append((f"uniform-fixed@{text}", "uniform window (fixed, not selected)", None,
                        fixed.replace(summary={"strategy": "uniform", "window": list(window), "selected_by": "--uniform-windows",
                                               "predicted_error": insample_cost(profile, fixed)})))
    if args.configs is not None:
        configs = [c for c in configs if c[0] in set(args.configs)]
    select_s = time.perf_counter() - t0
    train_seed, heldout_seed = prompt_seeds(split)
    on_cuda = str(args.device).startswith("cuda")
    sta = "kernel" if getattr(args, "sta", "auto") == "auto" else args.sta
    prefix_steps = 0 if getattr(args, "no_share_prefix", False) else len(configs[0][3].dense_steps)
    out.update({
        "settings": {"model": str(getattr(args, "model", "tiny")), "model_kind": kind, "plan": plan,
                     "canvas": list(canvas), "tile": list(profile.tile), "grid": list(geometry.grid),
                     "height": settings.height, "width": settings.width, "frames": settings.frames, "steps": steps,
                     "guidance_scale": settings.guidance_scale, "dtype": resolve_dtype(args), "generation_seed": seed,
                     "profile_seed": seed, "profile_steps": list(profile.profile_steps),
                     "dense_steps": list(configs[0][3].dense_steps), "error_shortlist": [list(w) for w in profile.error_windows],
                     "densities": densities, "objectives": list(getattr(args, "objectives", [])), "quick": bool(args.quick),
                     "sta_for_generation": ("sta_search.accelerate.MaskAttention: sta_attention, backend auto"
                                            if sta == "kernel" else
                                            "SDPA under the reference backend's STA mask (cached per layer window table)"),
                     "shared_dense_prefix_steps": prefix_steps,
                     "fidelity": "PSNR / SSIM per frame (8-bit RGB, scikit-image's definitions, computed in torch), "
                                 "averaged over frames, vs dense, same initial noise (all held-out prompts in one "
                                 "batch); tpsnr_db: PSNR of frame differences; flicker_ratio: mean |frame difference| "
                                 "over dense's (module docstring)"},
        "prompts": {"training": training, "heldout": heldout, "training_seed": train_seed,
                    "heldout_seed": heldout_seed,
                    "heldout_source": ("sta_search.small.data.prompt_set (captions kept out of training)"
                                       if kind == "small" else "sta_search.tiny.data.prompt_set")},
        "locality": locality(profile, locality_windows),
        "timings": {"profile_s": round(profile_s, 1), "select_s": round(select_s, 1)},
        "configs": {},
        "checks": {},
    })

    def save():
        out["checks"] = summarize(out)
        write()

    sync = torch.cuda.synchronize if on_cuda else (lambda: None)
    t0 = time.perf_counter()
    generator = HeldoutGenerator(loaded, settings, heldout, steps, seed, prefix_steps)
    dense = generator.run(dense_attention, dense_steps=tuple(range(prefix_steps)))
    sync()
    out["timings"]["dense_generate_s"] = round(time.perf_counter() - t0, 1)
    print(f"[seed {seed}] dense: {len(heldout)} prompts in {time.perf_counter() - t0:.1f} s", flush=True)

    done: dict[bytes, str] = {}
    skipped = []
    for name, method, target, config in configs:
        if args.time_budget is not None and time.perf_counter() - t_start > args.time_budget:
            skipped.append(name)
            out["skipped_for_time"] = skipped
            continue
        entry = {"method": method, "target_density": target, "density": config.density(),
                 "overall_density": config.overall_density(),
                 "insample_error": insample_cost(profile, config, "error"),
                 "insample_recall": insample_cost(profile, config, "recall"),
                 "selection_summary": {k: v for k, v in dict(config.summary or {}).items()
                                       if k in ("strategy", "objective", "granularity", "candidates", "budget",
                                                "predicted_error", "predicted_recall", "heldout_error",
                                                "cv_insample_error", "window", "selected_by")},
                 "windows_used": window_histogram(config)}
        key = np.asarray(config.windows)[list(config.sparse_steps)].tobytes() + repr(config.dense_steps).encode()
        if key in done:
            same = out["configs"][done[key]]
            entry.update({k: same[k] for k in ("per_prompt", "mean_psnr_db", "mean_ssim", "mean_tpsnr_db",
                                               "mean_flicker_ratio") if k in same}, same_as=done[key])
            out["configs"][name] = entry
            print(f"[seed {seed}] {name}: same windows as {done[key]}", flush=True)
            save()
            continue
        t0 = time.perf_counter()
        attention = config_attention(args, config)
        video = generator.run(attention, dense_steps=config.dense_steps)
        per = video_metrics(video, dense)
        sync()
        entry.update(per_prompt=[{"prompt": p, "psnr_db": f["psnr_db"], "ssim": round(f["ssim"], 5),
                                  "tpsnr_db": f["tpsnr_db"], "flicker_ratio": f["flicker_ratio"]}
                                 for p, f in zip(heldout, per)],
                     mean_psnr_db=float(np.mean([f["psnr_db"] for f in per])),
                     mean_ssim=float(np.mean([f["ssim"] for f in per])),
                     mean_tpsnr_db=_mean_or_none([f["tpsnr_db"] for f in per]),
                     mean_flicker_ratio=_mean_or_none([f["flicker_ratio"] for f in per]),
                     generate_s=round(time.perf_counter() - t0, 1))
        if sta == "kernel":
            entry["attention_calls"] = dict(attention.calls)
        out["configs"][name] = entry
        done[key] = name
        print(f"[seed {seed}] {name}: density {entry['density']:.4f} PSNR {entry['mean_psnr_db']:.2f} dB SSIM "
              f"{entry['mean_ssim']:.4f} tPSNR {_fmt(entry['mean_tpsnr_db'])} (in-sample error {_fmt(entry['insample_error'], 4)}) "
              f"[{entry['generate_s']:.1f} s]", flush=True)
        save()
    save()
    return out


def _fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _mean_or_none(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


# Paired comparisons aggregated over seeds: (label, config a, config b) -> a - b.
def comparisons(densities, plan: str = "v1") -> list[tuple[str, str, str]]:
    out = []
    for d in densities:
        out.append((f"solver_minus_argmin_capped_matched@{d:g}", f"solver-error-step@argmin-capped{d:g}",
                    f"argmin-capped@{d:g}"))
        out.append((f"solver_minus_best_uniform@{d:g}", f"solver-error-step@{d:g}", f"uniform@{d:g}"))
        if plan == "v2":
            out.append((f"solver_minus_paper_fixed@{d:g}", f"solver-error-step@{d:g}", f"paper-fixed@{d:g}"))
            # --objectives squared-error (reported where it ran)
            out.append((f"solver_squared_error_minus_argmin_capped_matched@{d:g}",
                        f"solver-squared-error-step@argmin-capped{d:g}", f"argmin-capped@{d:g}"))
            out.append((f"solver_squared_error_minus_solver_error_matched@{d:g}",
                        f"solver-squared-error-step@argmin-capped{d:g}", f"solver-error-step@argmin-capped{d:g}"))
            out.append((f"solver_error_step_calibrated_minus_best_uniform@{d:g}", f"solver-error-step-calibrated@{d:g}",
                        f"uniform@{d:g}"))
            out.append((f"solver_error_step_calibrated_minus_solver_error@{d:g}", f"solver-error-step-calibrated@{d:g}",
                        f"solver-error-step@{d:g}"))
            for stem, _ in SOLVER_VARIANTS.values():  # --solver-variants (reported where they ran)
                label = stem.replace("-", "_")
                out.append((f"{label}_minus_argmin_capped_matched@{d:g}", f"{stem}@argmin-capped{d:g}",
                            f"argmin-capped@{d:g}"))
                out.append((f"{label}_minus_solver_error_matched@{d:g}", f"{stem}@argmin-capped{d:g}",
                            f"solver-error-step@argmin-capped{d:g}"))
    out.append(("solver_minus_argmin_matched", "solver-error-step@argmin", "argmin"))
    if plan == "v2":
        out.append(("solver_minus_uniform_at_argmin_density", "solver-error-step@argmin", "uniform@argmin"))
    return out


def v2_targets(results: dict) -> dict:
    """Study v2's targets (module docstring) on `results`: one seed's results (its ``configs``) or a
    multi-seed results dict (the mean over seeds of ``aggregate``). Each entry: value, goal, holds (None
    when the configs it needs did not run), and with several seeds the seeds it holds in."""
    multi = "per_seed" in results
    if multi:
        agg = results.get("aggregate") or {}
        diffs, configs = agg.get("differences", {}), agg.get("configs", {})

        def diff(label):
            d = diffs.get(label)
            return (d["psnr_db"]["mean"], d["psnr_db"]["n"],
                    sum(v["psnr_db"] >= 0 for v in d["per_seed"].values())) if d else (None, 0, 0)

        def psnr(name):
            c = configs.get(name)
            return c["psnr_db"]["mean"] if c else None
    else:
        cfg = results.get("configs", {})

        def psnr(name):
            return cfg.get(name, {}).get("mean_psnr_db")

    def entry(label, a, b, goal):
        """The target entry (value and holds None where its configs did not run)."""
        if multi:
            mean, n, _ = diff(label)
            per = (diffs.get(label) or {}).get("per_seed", {})
            held = sum(v["psnr_db"] >= goal for v in per.values())
            return {"value_db": mean, "goal_db": f">= +{goal}", "seeds": n,
                    "holds": None if mean is None else bool(mean >= goal), "holds_in_seeds": f"{held}/{n}"}
        pa, pb = psnr(a), psnr(b)
        value = None if pa is None or pb is None else pa - pb
        return {"value_db": value, "goal_db": f">= +{goal}", "holds": None if value is None else bool(value >= goal)}

    out = {}
    for d in V2_TARGET_DENSITIES:
        for label, a, b in ((f"solver_minus_best_uniform@{d:g}", f"solver-error-step@{d:g}", f"uniform@{d:g}"),
                            (f"solver_minus_argmin_capped_matched@{d:g}", f"solver-error-step@argmin-capped{d:g}",
                             f"argmin-capped@{d:g}")):
            out[label] = entry(label, a, b, V2_TARGETS[label.split("@")[0]])
    # the solver with measured step weights (--solver-variants step-calibrated; profile --calibrate-steps in the
    # CLI), only where it ran: the same goals
    for d in V2_TARGET_DENSITIES:
        for label, a, b, stem in (
                (f"solver_error_step_calibrated_minus_argmin_capped_matched@{d:g}",
                 f"solver-error-step-calibrated@argmin-capped{d:g}", f"argmin-capped@{d:g}", "solver_minus_argmin_capped_matched"),
                (f"solver_error_step_calibrated_minus_best_uniform@{d:g}",
                 f"solver-error-step-calibrated@{d:g}", f"uniform@{d:g}", "solver_minus_best_uniform")):
            found = entry(label, a, b, V2_TARGETS[stem])
            if found["value_db"] is not None:
                out[label] = found
    value = psnr("solver-error-step@0.42")
    out["solver_psnr@0.42_vs_paper"] = {
        "value_db": value, "paper_db": PAPER_PSNR_DB,
        "holds": None if value is None else bool(value >= PAPER_PSNR_DB),
        "note": "the paper's number is HunyuanVideo 720p vs its own dense output; a reference point, not like for like"}
    return out


def _stats(values) -> dict:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    n = len(v)
    std = float(v.std(ddof=1)) if n > 1 else None
    return {"mean": float(v.mean()) if n else None, "std": std, "n": n,
            "sem": std / math.sqrt(n) if std is not None else None,
            "min": float(v.min()) if n else None, "max": float(v.max()) if n else None}


def aggregate(per_seed: dict, densities, plan: str = "v1") -> dict:
    """Mean / std over seeds of every config's mean PSNR / SSIM (and tPSNR / flicker ratio where measured), and
    of the paired differences (per seed, and pooled over (seed, prompt) pairs)."""
    seeds = [s for s, r in per_seed.items() if r.get("configs")]
    names = []
    for s in seeds:
        names += [n for n in per_seed[s]["configs"] if n not in names]
    configs = {}
    for name in names:
        rows = [per_seed[s]["configs"][name] for s in seeds if name in per_seed[s]["configs"]]
        configs[name] = {"seeds": len(rows), "density": _stats([r["density"] for r in rows]),
                         "psnr_db": _stats([r["mean_psnr_db"] for r in rows]),
                         "ssim": _stats([r["mean_ssim"] for r in rows])}
        for key, field in (("tpsnr_db", "mean_tpsnr_db"), ("flicker_ratio", "mean_flicker_ratio")):
            if any(r.get(field) is not None for r in rows):
                configs[name][key] = _stats([r.get(field) for r in rows])
    diffs = {}
    for label, a, b in comparisons(densities, plan):
        per, pooled, wins = {}, [], 0
        for s in seeds:
            cfg = per_seed[s]["configs"]
            if a in cfg and b in cfg:
                per[s] = {"psnr_db": cfg[a]["mean_psnr_db"] - cfg[b]["mean_psnr_db"],
                          "ssim": cfg[a]["mean_ssim"] - cfg[b]["mean_ssim"],
                          "density_a": cfg[a]["density"], "density_b": cfg[b]["density"]}
                if cfg[a].get("mean_tpsnr_db") is not None and cfg[b].get("mean_tpsnr_db") is not None:
                    per[s]["tpsnr_db"] = cfg[a]["mean_tpsnr_db"] - cfg[b]["mean_tpsnr_db"]
                for x, y in zip(cfg[a]["per_prompt"], cfg[b]["per_prompt"]):
                    pooled.append(x["psnr_db"] - y["psnr_db"])
                    wins += x["psnr_db"] > y["psnr_db"]
        if not per:
            continue
        diffs[label] = {"a": a, "b": b, "per_seed": per,
                        "psnr_db": _stats([v["psnr_db"] for v in per.values()]),
                        "ssim": _stats([v["ssim"] for v in per.values()]),
                        "pooled_prompt_psnr_db": _stats(pooled),
                        "prompts_where_a_beats_b": f"{wins}/{len(pooled)}"}
        if any("tpsnr_db" in v for v in per.values()):
            diffs[label]["tpsnr_db"] = _stats([v.get("tpsnr_db") for v in per.values()])
    return {"seeds": [int(s) for s in seeds], "configs": configs, "differences": diffs}


def study_densities(args, kind: str) -> list[float]:
    densities = list(args.densities or (SMALL_DENSITIES if kind == "small" else DENSITIES))
    if not args.quick:
        return densities
    if kind == "small":
        return [d for d in densities if d in V2_TARGET_DENSITIES] or [0.3]
    return [0.3]


def main(argv=None) -> dict:
    args = parse_args(argv)
    from sta_search.models import load_model

    t_start = time.perf_counter()
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_path = Path(args.out) if args.out else RESULTS_DIR / f"quality-{stamp}.json"
    from sta_search.models import resolve_model_path

    folder, _ = resolve_model_path(args.model)
    kind = model_kind(folder)
    plan = study_plan(args, kind)
    settings = study_settings(args, folder)
    loaded = load_model(args.model, args.device, getattr(torch, resolve_dtype(args)))
    seeds = list(args.seeds) if args.seeds else [args.seed]
    multi = len(seeds) > 1
    device = {"type": str(args.device), "processor": platform.processor() or platform.machine(),
              "torch_threads": torch.get_num_threads()}
    if str(args.device).startswith("cuda"):
        device["name"] = torch.cuda.get_device_name()
    densities = study_densities(args, kind)
    if multi:
        results = {"schema": "sta-search/quality/v2", "created_utc": stamp, "versions": _versions(),
                   "device": device, "model": str(args.model), "seeds": seeds, "vary_prompts": bool(args.vary_prompts),
                   "seed_meaning": "seed s: profile + generation noise seed s" + (
                       "; prompt split: prompt seeds + 1000 s" if args.vary_prompts else "; same prompts for every seed"),
                   "per_seed": {}, "aggregate": {}, "timings": {}}
    else:
        results = {"schema": "sta-search/quality/v1", "created_utc": stamp, "versions": _versions(), "device": device}

    results.update(model_kind=kind, plan=plan)
    if args.time_budget is not None:
        results["time_budget_s"] = args.time_budget

    def write():
        results.setdefault("timings", {})["total_s"] = round(time.perf_counter() - t_start, 1)
        if multi:
            results["aggregate"] = aggregate(results["per_seed"], densities, plan)
        if plan == "v2":
            results["targets"] = v2_targets(results)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_name(out_path.name + ".tmp")
        tmp.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        tmp.replace(out_path)

    seed_floor_s = 0.0  # time a seed needs for its profile, dense run and first 5 configs (from the last seed)
    for seed in seeds:
        elapsed = time.perf_counter() - t_start
        if args.time_budget is not None and elapsed + seed_floor_s > args.time_budget:
            results.setdefault("seeds_skipped_for_time", []).append(seed)
            print(f"time budget: seed {seed} skipped ({elapsed:.0f} s spent, a seed needs ~{seed_floor_s:.0f} s "
                  f"for its first configs)", flush=True)
            continue
        split = seed if args.vary_prompts else 0
        suffix = "" if (seed == 0 and split == 0) else f"-s{seed}" + ("p" if args.vary_prompts else "")
        if multi:
            target = results["per_seed"].setdefault(str(seed), {})
        else:
            target = results
        done = run_seed(args, loaded, settings, seed, split, suffix, target, write, t_start, kind=kind)
        if done is None:  # --profile-only
            continue
        timings, ran = done.get("timings", {}), [c["generate_s"] for c in done.get("configs", {}).values()
                                                   if c.get("generate_s") is not None]
        seed_floor_s = (timings.get("profile_s", 0.0) + timings.get("dense_generate_s", 0.0)
                        + 5 * (float(np.mean(ran)) if ran else 0.0))
        write()
        if multi:
            agg = aggregate(results["per_seed"], densities, plan)["differences"]
            print(f"after seed {seed}: " + "; ".join(f"{k} {v['psnr_db']['mean']:+.2f} dB (n={v['psnr_db']['n']})"
                                                     for k, v in agg.items()), flush=True)
    if args.profile_only:
        return {}
    write()
    try:
        plot(results, out_path.with_suffix(".png"))
    except Exception as exc:  # the plot is a convenience; the JSON is the result
        print(f"plot skipped: {exc}")
    print(json.dumps(results["aggregate"]["differences"] if multi else results["checks"], indent=1))
    if plan == "v2":
        print("targets: " + json.dumps(results["targets"], indent=1))
    print(f"wrote {out_path}")
    return results


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    multi = "per_seed" in results
    groups = {}
    if multi:
        for name, e in results["aggregate"]["configs"].items():
            groups.setdefault(name.split("@")[0], []).append(
                (e["density"]["mean"], e["psnr_db"]["mean"], e["psnr_db"]["std"] or 0.0))
    else:
        for name, e in results["configs"].items():
            groups.setdefault(name.split("@")[0], []).append((e["density"], e["mean_psnr_db"], 0.0))
    for family, pts in sorted(groups.items()):
        pts.sort()
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts],
                    fmt="o-" if len(pts) > 1 else "o", capsize=3, label=family)
    ax.set_xlabel("density of the sparse steps")
    ylabel = "mean PSNR vs dense (dB), held-out prompts"
    if multi:
        ylabel += f"\nmean +- std over {len(results['aggregate']['seeds'])} seeds"
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    first = next(iter(results["per_seed"].values())) if multi else results
    loc = first["locality"]
    key = "2,3,3" if "2,3,3" in loc["per_layer_head"] else next(iter(loc["per_layer_head"]))
    im = ax2.imshow(np.asarray(loc["per_layer_head"][key]), vmin=0, vmax=1, cmap="viridis")
    ax2.set_title(f"mean recall of window ({key}) per layer/head" + (" (first seed)" if multi else ""))
    ax2.set_xlabel("head")
    ax2.set_ylabel("layer")
    fig.colorbar(im, ax=ax2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
