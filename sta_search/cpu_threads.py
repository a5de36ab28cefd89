"""How many CPU threads torch uses for a run (``--threads``), and why.

Torch defaults to one intra-op thread per logical CPU. On a small or shared machine that is the wrong
choice for this package's CPU work (the tiny model, the gather STA backend): its ops are small, and when
the cores are already busy every OpenMP parallel region waits for a thread that is not running. Measured
on a 2-core box shared with other jobs (bench/results/demo-cpu-*.json): a 4-step dense call took 26 s
with 2 threads and 6 s with 1.

:func:`choose_threads` picks ``min(physical cores, cores left idle by the 1-minute load average)``, at
least 1, unless the user asks for a number (``--threads N``) or sets ``OMP_NUM_THREADS``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class ThreadChoice:
    """The torch intra-op thread count of a run and why it was chosen (recorded in reports)."""

    threads: int
    why: str
    physical_cores: int
    logical_cpus: int
    loadavg: tuple[float, float, float] | None

    def to_json(self) -> dict:
        data = asdict(self)
        data["loadavg"] = None if self.loadavg is None else [round(x, 2) for x in self.loadavg]
        return data


def logical_cpus() -> int:
    """CPUs this process may run on (its affinity mask, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def physical_cores() -> int:
    """Physical cores among :func:`logical_cpus` (SMT siblings counted once; Linux sysfs, else logical)."""
    logical = logical_cpus()
    try:
        siblings = Path("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list").read_text().strip()
    except OSError:
        return logical
    per_core = 0
    for part in siblings.split(","):
        lo, _, hi = part.partition("-")
        per_core += int(hi) - int(lo) + 1 if hi else 1
    return max(1, logical // max(1, per_core))


def load_average() -> tuple[float, float, float] | None:
    try:
        return tuple(float(x) for x in os.getloadavg())
    except (AttributeError, OSError):
        return None


def choose_threads(requested: int | None = None) -> ThreadChoice:
    """The thread count to use: ``requested`` when given, else ``OMP_NUM_THREADS`` when set, else
    ``min(physical cores, round(physical cores - 1-minute load average))``, at least 1."""
    cores, logical, load = physical_cores(), logical_cpus(), load_average()
    if requested is not None:
        if requested < 1:
            from .errors import UserError

            raise UserError(f"--threads must be >= 1, got {requested}")
        return ThreadChoice(int(requested), "--threads", cores, logical, load)
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return ThreadChoice(int(env), "OMP_NUM_THREADS", cores, logical, load)
    if load is None:
        return ThreadChoice(cores, f"{cores} physical cores (load average unknown)", cores, logical, load)
    idle = int(cores - load[0] + 0.5)
    threads = max(1, min(cores, idle))
    return ThreadChoice(threads, f"{cores} physical cores, 1-min load average {load[0]:.2f}: "
                        f"{threads} thread{'s' if threads > 1 else ''} (busy cores make extra threads wait)",
                        cores, logical, load)


def apply_threads(requested: int | None = None) -> ThreadChoice:
    """:func:`choose_threads` and ``torch.set_num_threads`` with it; returns the choice."""
    import torch

    choice = choose_threads(requested)
    torch.set_num_threads(choice.threads)
    return choice
