"""Window tables on the kernel's device, without making the host wait for the GPU."""

from __future__ import annotations

import functools

import torch


def device_windows(windows: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``(heads, 3)`` int32 window table on ``device``, contiguous.

    A host table bound for a GPU is copied once per distinct table and then reused: a copy from pageable host
    memory is ordered on the GPU stream, so making it on every attention call would stop the host until the GPU
    has caught up (bench/NOTES.md, session 9). Callers must not write to the returned table."""
    device = torch.device(device)
    if windows.device.type in ("cpu", "meta") and device.type not in ("cpu", "meta"):
        return _cached(tuple(map(tuple, windows.tolist())), device)
    return windows.to(device=device, dtype=torch.int32).contiguous()


@functools.lru_cache(maxsize=256)
def _cached(rows: tuple[tuple[int, int, int], ...], device: torch.device) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.int32, device=device)
