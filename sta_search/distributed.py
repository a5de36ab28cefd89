"""Several processes (GPUs) through PyTorch's own runtime: launched by ``torchrun``, joined with
``torch.distributed`` (NCCL on CUDA, gloo on CPU), sequence parallelism by diffusers' context parallelism.

    torchrun --nproc-per-node 2 -m sta_search profile MODEL --prompts default --out prof
    torchrun --nproc-per-node 2 -m sta_search generate MODEL --mask mask.yaml --prompt "..." --ulysses 2

Sharded profiling (:func:`sharded_profile`): prompt ``i`` goes to rank ``i % world_size``; each rank profiles
its prompts one at a time with :func:`sta_search.profile.run_profile` into
``<out>/shards/rank<r>/prompt<i>/`` (each written atomically; prompt ``i`` keeps seed ``seed + i``, as in a
single-process run), so a killed rank resumes where it stopped (``resume=True``) losing at most its
prompt in flight. After a barrier rank 0 merges the prompt profiles in the original prompt order with
:func:`sta_search.artifacts.merge_profiles` into ``<out>``: the same prompts, header and sums (to float
rounding) as one process profiling the whole list.

Ulysses generation (:func:`enable_ulysses`): ``transformer.enable_parallelism(ContextParallelConfig(
ulysses_degree=N))`` on every transformer of the model; the hooked Wan processors then run STA inside
diffusers' all-to-all, each rank on the full sequence for its slice of heads with the windows of its
global head indices (:mod:`sta_search.models.parallel`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UserError
from .report import write_json

if TYPE_CHECKING:
    import torch

# Importing this module stays cheap (no torch, no diffusers): the CLI calls it on its error path, and
# the functions below import torch.distributed when they need it.

#: Test-only: ``"R:I:S"`` makes rank R SIGKILL itself at the first attention call of step S of prompt I
#: (index in the whole prompt list) of a sharded profile.
KILL_RANK_ENV = "STA_SEARCH_TEST_KILL_RANK_AT"
SHARDS_DIR = "shards"
SHARD_FILE = "shard.json"


# ------------------------------------------------------------------------------------------- runtime
@dataclass(frozen=True)
class DistContext:
    """This process's place among the processes torchrun started (one process: rank 0 of 1)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # "nccl" | "gloo" | None (not distributed)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_size_from_env() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when not launched by torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise UserError(f"WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} is not an integer") from None


def launched_by_torchrun() -> bool:
    """True when this process is one of several started by torchrun (``WORLD_SIZE > 1``). Reads the
    environment only (no torch import)."""
    return world_size_from_env() > 1


def rank_from_env() -> int:
    """``RANK`` as torchrun sets it (0 when not launched by torchrun)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        raise UserError(f"RANK={os.environ.get('RANK')!r} is not an integer") from None


def is_main_process() -> bool:
    """True in the one process that prints summaries and writes shared files (rank 0, or no torchrun)."""
    return rank_from_env() == 0


def _dist():
    import torch.distributed as dist

    return dist


def init_from_env(device: str | None = None, timeout: timedelta | None = None) -> DistContext:
    """Join the process group torchrun describes in the environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``).

    On CUDA (``device`` None or ``"cuda"``, and CUDA available) each rank uses ``cuda:LOCAL_RANK`` and NCCL;
    with ``device="cpu"`` or without CUDA, gloo. Without torchrun (``WORLD_SIZE`` unset or 1) nothing is
    initialised and rank 0 of 1 is returned. Calling it again returns the same context.
    `timeout` bounds every collective (a barrier waits for the slowest rank: give profiling hours).
    """
    import torch

    dist = _dist()
    world = world_size_from_env()
    rank = rank_from_env()
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    wants_cuda = device is None and torch.cuda.is_available() or (device is not None and device.startswith("cuda"))
    if device is not None and device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine")
    if world == 1:
        from .options import resolve_device

        return DistContext(0, 1, 0, resolve_device(device), None)
    if device is not None and device.startswith("cuda") and device not in ("cuda",):
        raise UserError(f"--device {device}: under torchrun each rank uses cuda:LOCAL_RANK; pass --device cuda")
    if wants_cuda:
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices are visible")
        torch.cuda.set_device(local_rank)
        resolved, backend = torch.device("cuda", local_rank), "nccl"
    else:
        resolved, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        kwargs = {} if timeout is None else {"timeout": timeout}
        if backend == "nccl":
            kwargs["device_id"] = resolved
        dist.init_process_group(backend=backend, rank=rank, world_size=world, **kwargs)
    else:
        backend = dist.get_backend()
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, resolved, backend)


def barrier(context: DistContext) -> None:
    """Wait for every rank (no-op in one process)."""
    if not context.distributed:
        return
    dist = _dist()
    if context.backend == "nccl":
        dist.barrier(device_ids=[context.device.index])
    else:
        dist.barrier()


@contextlib.contextmanager
def checks_on_every_rank(context: DistContext | None):
    """Run a block of input checks so that every rank reports its own UserError.

    torchrun stops the other ranks as soon as one exits: a rank that finished its checks first would exit
    while a slower one (still loading the model) never got to print its message. Here each rank finishes
    the block, then the ranks agree (one all-reduce) before any of them raises: a rank whose checks
    passed while another's failed raises a UserError saying so. No-op coordination in one process.
    """
    error = None
    try:
        yield
    except UserError as exc:
        error = exc
    if context is not None and context.distributed:
        import torch

        dist = _dist()
        failed = torch.tensor([0 if error is None else 1], dtype=torch.int32, device=context.device)
        dist.all_reduce(failed, op=dist.ReduceOp.MAX)
        if error is None and int(failed.item()):
            error = UserError(f"rank {context.rank}: another rank rejected the input (its message is above)")
    if error is not None:
        error.every_rank = context is not None and context.distributed  # see exit_together
        raise error


def exit_together(error: BaseException, code: int) -> None:
    """Exit with ``code``; after an error every rank raised together (:func:`checks_on_every_rank`), only once
    every rank has reported its own. torchrun stops the remaining ranks as soon as one exits, so a rank that
    printed its message but was still shutting down Python was killed and reported as stopped, not as
    exiting with ``code``: here the ranks meet at a barrier, then leave at once (no interpreter teardown).
    Outside torchrun (checked in the environment first: no torch import) it is ``sys.exit(code)``."""
    if getattr(error, "every_rank", False) and launched_by_torchrun():
        dist = _dist()
        if dist.is_available() and dist.is_initialized():
            sys.stdout.flush()
            sys.stderr.flush()
            dist.barrier()
            os._exit(code)
    sys.exit(code)


exit_with_every_rank = exit_together  # the earlier name


def shutdown() -> None:
    """Leave the process group (if any). Without torchrun nothing was joined and torch is not imported."""
    if "torch.distributed" not in sys.modules:
        return  # nothing can have joined a process group
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def session():
    """The process group's lifetime around a command: :func:`shutdown` when the block ends, except after an
    error every rank raised together (:func:`checks_on_every_rank`), which keeps the group so that the ranks
    can leave together (:func:`exit_together`, called by the CLI)."""
    try:
        yield
    except BaseException as exc:
        if not getattr(exc, "every_rank", False):
            shutdown()
        raise
    shutdown()


# ------------------------------------------------------------------------------------------- Ulysses
@contextlib.contextmanager
def _cpu_mesh_device_count():
    """diffusers' ``_resolve_parallel_config`` computes ``rank % torch.accelerator.device_count()``, which is
    0 on a CPU-only machine; there the gloo mesh needs no device index, so count one device meanwhile."""
    import torch

    if torch.accelerator.device_count() > 0:
        yield
        return
    original = torch.accelerator.device_count
    torch.accelerator.device_count = lambda *args, **kwargs: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = original


def check_ulysses(info, degree: int, world_size: int, canvas=None) -> None:
    """UserError for a Ulysses degree this run cannot use (checked identically on every rank, before any
    collective, so every rank exits 2 with the same message)."""
    if degree < 1:
        raise UserError(f"--ulysses must be >= 1, got {degree}")
    if degree == 1:
        if world_size > 1:
            raise UserError(f"launched with {world_size} processes but --ulysses 1: pass --ulysses {world_size} "
                            "(every process would otherwise generate the same video)")
        return
    if world_size != degree:
        raise UserError(f"--ulysses {degree} needs {degree} processes (torchrun --nproc-per-node {degree}); "
                        f"this run has {world_size}")
    if info.family != "wan":
        raise UserError(f"--ulysses supports Wan transformers (diffusers ships a context-parallel plan for them); "
                        f"{info.transformer_class} has none")
    if info.num_heads % degree:
        raise UserError(f"--ulysses {degree} does not divide the {info.num_heads} attention heads of "
                        f"{info.transformer_class}")
    if canvas is not None and math.prod(canvas) % degree:
        raise UserError(f"--ulysses {degree} does not divide the {math.prod(canvas)} video tokens of canvas "
                        f"{tuple(canvas)}; choose a size whose token count is a multiple of {degree}")


def enable_ulysses(loaded, degree: int, *, canvas=None) -> None:
    """Shard the sequence of every transformer of `loaded` (a ``LoadedModel``, a pipeline or a transformer)
    over `degree` ranks with diffusers' Ulysses context parallelism. The process group must be initialised
    (:func:`init_from_env`) with ``world_size == degree``. ``degree == 1`` does nothing.

    Call it before hooking (``sta_search.accelerate`` / ``hook_attention``). UserError (on every rank) for
    a degree that does not divide the head count or the token count of `canvas`, or a model family without
    a context-parallel plan.
    """
    import torch
    from diffusers import ContextParallelConfig

    from .models import get_adapter

    dist = _dist()

    transformers = [t for t in (getattr(loaded, "transformer", None), getattr(loaded, "transformer_2", None))
                    if t is not None] if not isinstance(loaded, torch.nn.Module) else [loaded]
    transformers = [getattr(t, "_orig_mod", t) for t in transformers]
    if not transformers:
        raise TypeError(f"no transformer in {type(loaded).__name__}")
    adapter = getattr(loaded, "adapter", None) or get_adapter(transformers[0])
    info = adapter.info(transformers[0])
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    check_ulysses(info, int(degree), world, canvas)
    if degree == 1:
        return
    for transformer in transformers:
        if getattr(transformer, "_parallel_config", None) is not None:
            continue  # already parallel (e.g. loaded with parallel_config)
        with _cpu_mesh_device_count():
            transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=int(degree)))


# ------------------------------------------------------------------------------------------- profiling
def shard_indices(num_prompts: int, rank: int, world_size: int) -> list[int]:
    """Prompt indices of `rank`: round robin, ``rank, rank + world_size, ...``."""
    return list(range(rank, num_prompts, world_size))


def shard_folder(out, rank: int) -> Path:
    return Path(out) / SHARDS_DIR / f"rank{rank}"


def prompt_folder(out, index: int, world_size: int) -> Path:
    """Where prompt `index` of a sharded profile is written."""
    return shard_folder(out, index % world_size) / f"prompt{index:05d}"


class _ShardProgress:
    """Presents a rank's one-prompt `run_profile` calls to a ProgressSink as one run over its shard."""

    def __init__(self, sink, total: int, done: int):
        self.sink, self.total, self.done, self.started = sink, total, done, False

    def start(self, total_prompts, done_prompts, steps):
        if not self.started:
            self.sink.start(self.total, self.done, steps)
            self.started = True

    def prompt_started(self, index, prompt):
        self.sink.prompt_started(self.done, prompt)

    def step_done(self, step):
        self.sink.step_done(step)

    def prompt_done(self, index, profile):
        self.sink.prompt_done(self.done, profile)
        self.done += 1


def _check_shard_manifest(folder: Path, manifest: dict) -> None:
    path = folder / SHARD_FILE
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    diffs = [f"{key}: {old.get(key)!r} in the shard vs {value!r} now" for key, value in manifest.items()
             if old.get(key) != value]
    if diffs:
        raise UserError(f"cannot resume {folder}: " + "; ".join(diffs))


def combine_shards(out, prompts, world_size: int, seed: int):
    """Merge the prompt profiles of a sharded run in the original prompt order into one profile whose header
    is that of a single-process run (base seed, no merge bookkeeping). Returns the Profile (not saved)."""
    from .artifacts import STATS_FILE, Profile, merge_profiles

    parts = []
    for index, prompt in enumerate(prompts):
        folder = prompt_folder(out, index, world_size)
        if not (folder / STATS_FILE).exists():
            raise UserError(f"prompt {index} is missing from shard rank{index % world_size} ({folder}): is --out "
                            "on a filesystem every rank writes to?")
        part = Profile.load(folder)
        if part.prompts != (prompt,) or part.header.get("seed") != seed + index:
            raise UserError(f"{folder} holds prompt {part.prompts!r} with seed {part.header.get('seed')!r}, "
                            f"expected {prompt!r} with seed {seed + index}")
        parts.append(part)
    merged = merge_profiles(parts)
    header = json.loads(json.dumps(merged.header))
    header["seed"] = int(seed)  # prompt i ran with seed + i, exactly as in one process
    for key in ("merged_seeds", "merged_from"):
        header.pop(key, None)
    return Profile(header, dict(merged.tensors))


def sharded_profile(settings, out, *, resume: bool = False, progress=None, loaded=None,
                    context: DistContext | None = None):
    """Profile ``settings.prompts`` over the ranks torchrun started; rank 0 returns the combined Profile
    (also saved to `out`), the other ranks return None.

    Every rank checks the same things before any collective, so bad input ends every rank with the same
    UserError. ``resume=True`` continues each rank's shard (finished prompts are kept, the prompt in flight
    is redone) and re-combines. `loaded`: an already loaded model for this rank (tests).
    """
    from .artifacts import HEADER_FILE, STATS_FILE
    from .models import load_model
    from .options import resolve_dtype
    from .profile import ProgressSink, run_profile

    context = context or init_from_env(settings.device, timeout=timedelta(days=7))
    rank, world = context.rank, context.world_size
    out = Path(out)
    prompts = list(settings.prompts)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    if not resume and ((out / STATS_FILE).exists() or (out / HEADER_FILE).exists() or (out / SHARDS_DIR).exists()):
        raise UserError(f"{out} already holds a profile or its shards; pass --resume to continue it or choose "
                        "another --out")
    indices = shard_indices(len(prompts), rank, world)
    folder = shard_folder(out, rank)
    manifest = {"world_size": world, "rank": rank, "prompt_indices": indices, "num_prompts": len(prompts),
                "seed": int(settings.seed)}
    if resume:
        _check_shard_manifest(folder, manifest)
    barrier(context)  # every rank has checked `out` before any rank writes to it
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / SHARD_FILE, manifest, indent=1)

    device = str(context.device)
    if loaded is None and indices:
        dtype = resolve_dtype(settings.dtype, device)
        loaded = load_model(settings.model, device, dtype)
    done = sum(1 for i in indices if (prompt_folder(out, i, world) / STATS_FILE).exists())
    sink = _ShardProgress(progress or ProgressSink(), len(indices), done)
    kill = _rank_kill_point()
    for index in indices:
        target = prompt_folder(out, index, world)
        one = dataclasses.replace(settings, prompts=(prompts[index],), seed=int(settings.seed) + index, device=device)
        with _test_kill(kill, rank, index):
            run_profile(one, target, resume=True, progress=sink, loaded=loaded)
    barrier(context)
    if not context.is_main:
        return None
    profile = combine_shards(out, prompts, world, int(settings.seed))
    profile.save(out)
    return profile


def _rank_kill_point() -> tuple[int, int, int] | None:
    value = os.environ.get(KILL_RANK_ENV)
    if not value:
        return None
    rank, index, step = (int(v) for v in value.split(":"))
    return rank, index, step


@contextlib.contextmanager
def _test_kill(kill, rank: int, index: int):
    from .profile import KILL_ENV

    if kill is None or kill[:2] != (rank, index):
        yield
        return
    previous = os.environ.get(KILL_ENV)
    os.environ[KILL_ENV] = f"0:{kill[2]}"  # run_profile counts prompts of its own (one-prompt) list
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(KILL_ENV, None)
        else:
            os.environ[KILL_ENV] = previous
