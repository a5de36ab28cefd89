"""Synthetic profiles for tests: planted per-head locality, no model needed.

Every (profiled step, layer, head) gets a locality scale per axis; the recall of a window is the product
over axes of ``(1 - exp(-w/s)) / (1 - exp(-n/s))`` (1 at the full window, growing with the window), each
prompt jitters the scales, and the output error of a shortlist window is ``sqrt(1 - recall)`` times a
per-prompt factor (0 at the full window). The attention mass by tile offset decays with the offset.
"""

from __future__ import annotations

import numpy as np
import torch

from sta_search.artifacts import PROFILE_SCHEMA, Profile

DEFAULT_WINDOWS = ((1, 1, 1), (1, 2, 2), (2, 1, 2), (1, 1, 4), (2, 2, 2), (1, 2, 3), (2, 2, 4))


def synthetic_header(
    *,
    num_layers: int = 2,
    num_heads: int = 3,
    steps: int = 8,
    profile_steps=None,
    canvas=(4, 8, 8),
    tile=(2, 4, 2),
    error_windows=DEFAULT_WINDOWS,
    seed: int = 0,
    family: str = "wan",
    transformer_class: str = "WanTransformer3DModel",
) -> dict:
    grid = [-(-c // t) for c, t in zip(canvas, tile)]
    windows = [[min(w, n) for w, n in zip(window, grid)] for window in error_windows]
    return {
        "schema": PROFILE_SCHEMA,
        "tool_version": "0.1.0",
        "model": {
            "family": family,
            "transformer_class": transformer_class,
            "source": "synthetic",
            "num_layers": num_layers,
            "num_heads": num_heads,
            "head_dim": 16,
            "patch_size": [1, 2, 2],
        },
        "canvas": list(canvas),
        "tile": list(tile),
        "text_len": 0,
        "text_first": False,
        "height": canvas[1] * 16,
        "width": canvas[2] * 16,
        "frames": canvas[0] * 4 - 3,
        "steps": steps,
        "seed": seed,
        "dtype": "float32",
        "profile_steps": list(profile_steps if profile_steps is not None else range(0, steps, 2)),
        "error_windows": windows,
        "prompts": [],
        "forwards_per_step": 2,
    }


def _axis_recall(n: int, scale: np.ndarray) -> np.ndarray:
    """(..., n) recall along one axis for window 1..n."""
    w = np.arange(1, n + 1)
    return (1 - np.exp(-w / scale[..., None])) / (1 - np.exp(-n / scale[..., None]))


def synthetic_profile(prompts: int = 3, rng: np.random.Generator | int | None = 0, **header_kwargs) -> Profile:
    """A profile with ``prompts`` prompts of planted locality (see module docstring)."""
    rng = np.random.default_rng(rng)
    header = synthetic_header(**header_kwargs)
    profile = Profile.empty(header)
    P = len(header["profile_steps"])
    L, H = header["model"]["num_layers"], header["model"]["num_heads"]
    nt, nh, nw = (-(-c // t) for c, t in zip(header["canvas"], header["tile"]))
    base = rng.uniform(0.3, 3.0, size=(P, L, H, 3))
    for index in range(prompts):
        scales = base * rng.uniform(0.8, 1.25, size=base.shape)
        rt, rh, rw = (_axis_recall(n, scales[..., d]) for d, n in enumerate((nt, nh, nw)))
        recall_grid = rt[..., :, None, None] * rh[..., None, :, None] * rw[..., None, None, :]  # (P,L,H,nt,nh,nw)
        windows = header["error_windows"]
        recall_short = np.stack([recall_grid[..., w[0] - 1, w[1] - 1, w[2] - 1] for w in windows], axis=-1)
        error = np.sqrt(np.clip(1 - recall_short, 0, None)) * rng.uniform(0.5, 1.5, size=recall_short.shape)
        offsets = [np.abs(np.arange(-(n - 1), n)) for n in (nt, nh, nw)]
        mass = np.exp(
            -offsets[0][:, None, None] / scales[..., 0, None, None, None]
            - offsets[1][None, :, None] / scales[..., 1, None, None, None]
            - offsets[2][None, None, :] / scales[..., 2, None, None, None]
        )
        mass = mass / mass.sum(axis=(-3, -2, -1), keepdims=True)
        forwards = 2
        profile = profile.add_prompt(
            f"synthetic prompt {index}",
            recall_sum=torch.from_numpy(recall_grid * forwards).float(),
            offset_mass_sum=torch.from_numpy(mass * forwards).float(),
            error=torch.from_numpy(error).float(),
            recall=torch.from_numpy(recall_short).float(),
            count=torch.full((P,), float(forwards), dtype=torch.float64),
        )
    return profile
