"""The profile artifact (docs/profile-format.md): a folder holding ``header.json`` and ``stats.safetensors``.

A :class:`Profile` is an immutable pair of a JSON header and a dict of float tensors:

- ``recall_sum``      ``(P, L, H, nt, nh, nw)``  summed mean recall of window ``(i+1, j+1, k+1)``
- ``offset_mass_sum`` ``(P, L, H, 2nt-1, 2nh-1, 2nw-1)``  summed attention mass by key-minus-query tile offset
- ``error``           ``(N, P, L, H, K)``  per prompt relative L2 error of each shortlist window
- ``recall``          ``(N, P, L, H, K)``  per prompt recall of each shortlist window
- ``count``           ``(P,)`` float64  samples summed into the ``*_sum`` tensors

Sums, not means, are stored so that profiles of the same setup merge exactly (:func:`merge_profiles`).

Saving is atomic: a new folder is built beside the target and renamed into place; an existing folder
is updated by replacing ``stats.safetensors`` first and ``header.json`` second, each through
write-temp, fsync, rename. The stats file carries its own copy of the header in its safetensors
metadata, which is authoritative on load, so a crash between the two renames still leaves a
consistent profile.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from .errors import UserError
from .report import atomic_write_text, tool_version
from .report import fsync_dir as _fsync_dir
from .report import umask as _umask

PROFILE_SCHEMA = "sta-search/profile/v1"
HEADER_FILE = "header.json"
STATS_FILE = "stats.safetensors"
_METADATA_KEY = "sta_search_header"
_DIGEST_KEY = "stats_sha256"  # in the saved header: sha256 of header and tensors, checked on load (absent in old profiles)

SUM_KEYS = ("recall_sum", "offset_mass_sum")
PER_PROMPT_KEYS = ("error", "recall")
COUNT_KEY = "count"
TENSOR_KEYS = SUM_KEYS + PER_PROMPT_KEYS + (COUNT_KEY,)

REQUIRED_HEADER_KEYS = (
    "schema",
    "model",
    "canvas",
    "tile",
    "text_len",
    "steps",
    "profile_steps",
    "error_windows",
    "prompts",
)
REQUIRED_MODEL_KEYS = ("family", "transformer_class", "num_layers", "num_heads")

# Header fields that must agree for two profiles to be merged (besides the model, compared without `source`).
# Two-expert models (Wan 2.2): the step the second expert takes over, then each expert's layers and steps.
_MERGE_KEYS = ("canvas", "tile", "text_len", "text_first", "steps", "profile_steps", "error_windows",
               "expert_switch_step", "experts", "cache", "profile_forwards")
_MODEL_MERGE_KEYS = ("family", "transformer_class", "num_layers", "num_heads", "head_dim", "patch_size")


def _triple(value, what: str) -> tuple[int, int, int]:
    try:
        triple = tuple(int(v) for v in value)
        ok = (len(triple) == 3 and all(int(v) == v and not isinstance(v, bool) for v in value)
              and min(triple) >= 1 and max(triple) <= 1_000_000)
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise UserError(f"{what} must be three positive integers, got {value!r}")
    return triple  # type: ignore[return-value]


@dataclass(frozen=True)
class Profile:
    """Attention statistics of one model setup over a set of prompts (see module docstring).

    ``header`` is the JSON header of docs/profile-format.md; ``tensors`` maps the five names above to
    CPU tensors. Build one with :meth:`empty` and :meth:`add_prompt`, or :meth:`load` it.
    """

    header: dict
    tensors: dict = field(repr=False)

    def __post_init__(self):
        _validate(self.header, self.tensors, source="profile")

    # ------------------------------------------------------------------ header views
    @property
    def model(self) -> dict:
        return self.header["model"]

    @property
    def canvas(self) -> tuple[int, int, int]:
        return tuple(self.header["canvas"])  # type: ignore[return-value]

    @property
    def tile(self) -> tuple[int, int, int]:
        return tuple(self.header["tile"])  # type: ignore[return-value]

    @property
    def geometry(self):
        from .kernels.geometry import Geometry

        return Geometry(self.canvas, self.tile)

    @property
    def grid(self) -> tuple[int, int, int]:
        return _grid(self.header)

    @property
    def steps(self) -> int:
        return int(self.header["steps"])

    @property
    def profile_steps(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.header["profile_steps"])

    @property
    def error_windows(self) -> tuple[tuple[int, int, int], ...]:
        return tuple(tuple(int(v) for v in w) for w in self.header["error_windows"])  # type: ignore[misc]

    @property
    def prompts(self) -> tuple[str, ...]:
        return tuple(self.header["prompts"])

    @property
    def num_prompts(self) -> int:
        return len(self.header["prompts"])

    @property
    def num_layers(self) -> int:
        return int(self.model["num_layers"])

    @property
    def num_heads(self) -> int:
        return int(self.model["num_heads"])

    # ------------------------------------------------------------------ constructors
    @classmethod
    def empty(cls, header: Mapping[str, Any]) -> "Profile":
        """A profile with no prompts yet: zero sums and counts, per-prompt tensors with 0 rows.

        ``header`` needs the fields of docs/profile-format.md (``schema`` and ``prompts`` may be omitted;
        ``prompts`` is reset to an empty list).
        """
        header = json.loads(json.dumps(dict(header)))  # a deep, JSON-clean copy
        header.setdefault("schema", PROFILE_SCHEMA)
        header.setdefault("tool_version", tool_version())
        header["prompts"] = []
        _validate_header(header, source="profile header")
        shapes = expected_shapes(header)
        tensors = {
            name: torch.zeros(shape, dtype=torch.float64 if name == COUNT_KEY else torch.float32)
            for name, shape in shapes.items()
        }
        return cls(header, tensors)

    def add_prompt(
        self,
        prompt: str,
        *,
        recall_sum: torch.Tensor,
        offset_mass_sum: torch.Tensor,
        error: torch.Tensor,
        recall: torch.Tensor,
        count,
    ) -> "Profile":
        """A new profile with one more prompt: sums and counts added, per-prompt rows appended.

        ``recall_sum``/``offset_mass_sum``: this prompt's sums ``(P, L, H, ...)``; ``error``/``recall``:
        ``(P, L, H, K)`` (or ``(1, P, L, H, K)``); ``count``: ``(P,)`` or a scalar, the samples summed.
        """
        shapes = expected_shapes(self.header)
        count_t = torch.as_tensor(count, dtype=torch.float64).expand(shapes[COUNT_KEY]).clone()
        rows = {}
        for name, value in (("error", error), ("recall", recall)):
            value = torch.as_tensor(value).detach().to("cpu", torch.float32)
            if value.shape == shapes[name][1:]:
                value = value.unsqueeze(0)
            if tuple(value.shape) != (1, *shapes[name][1:]):
                raise ValueError(f"{name} of one prompt must have shape {shapes[name][1:]}, got {tuple(value.shape)}")
            rows[name] = torch.cat([self.tensors[name], value], dim=0)
        sums = {}
        for name, value in (("recall_sum", recall_sum), ("offset_mass_sum", offset_mass_sum)):
            value = torch.as_tensor(value).detach().to("cpu", torch.float32)
            if tuple(value.shape) != shapes[name]:
                raise ValueError(f"{name} must have shape {shapes[name]}, got {tuple(value.shape)}")
            sums[name] = self.tensors[name] + value
        header = dict(self.header, prompts=[*self.header["prompts"], str(prompt)])
        return Profile(header, {**sums, **rows, COUNT_KEY: self.tensors[COUNT_KEY] + count_t})

    # ------------------------------------------------------------------ statistics
    def mean_recall(self) -> torch.Tensor:
        """``(P, L, H, nt, nh, nw)`` mean recall of every window (``recall_sum / count``)."""
        return self._mean_of_sum("recall_sum")

    def mean_offset_mass(self) -> torch.Tensor:
        """``(P, L, H, 2nt-1, 2nh-1, 2nw-1)`` mean attention mass by tile offset."""
        return self._mean_of_sum("offset_mass_sum")

    def mean_error(self) -> torch.Tensor:
        """``(P, L, H, K)`` mean over prompts of the relative L2 error of each shortlist window."""
        return self._mean_over_prompts("error")

    def mean_shortlist_recall(self) -> torch.Tensor:
        """``(P, L, H, K)`` mean over prompts of the recall of each shortlist window."""
        return self._mean_over_prompts("recall")

    def _mean_of_sum(self, name: str) -> torch.Tensor:
        count = self.tensors[COUNT_KEY]
        if not bool((count > 0).all()):
            raise UserError("the profile holds no samples yet (count is 0): profile at least one prompt")
        shape = (-1,) + (1,) * (self.tensors[name].ndim - 1)
        return (self.tensors[name].double() / count.view(shape)).float()

    def _mean_over_prompts(self, name: str) -> torch.Tensor:
        if self.num_prompts == 0:
            raise UserError("the profile holds no prompts yet: profile at least one prompt")
        return self.tensors[name].mean(dim=0)

    def select_prompts(self, indices: Iterable[int]) -> "Profile":
        """Per-prompt tensors restricted to ``indices`` (sums kept as they are: they are not per prompt)."""
        idx = [int(i) for i in indices]
        tensors = dict(self.tensors)
        for name in PER_PROMPT_KEYS:
            tensors[name] = self.tensors[name][idx] if idx else self.tensors[name][:0]
        header = dict(self.header, prompts=[self.header["prompts"][i] for i in idx])
        return Profile(header, tensors)

    # ------------------------------------------------------------------ files
    @classmethod
    def load(cls, path) -> "Profile":
        """Read a profile folder; UserError for a missing, corrupt, truncated or inconsistent one."""
        folder = Path(path)
        if not folder.exists():
            raise UserError(f"profile not found: {folder}")
        if not folder.is_dir():
            raise UserError(f"a profile is a folder with {HEADER_FILE} and {STATS_FILE}; {folder} is a file")
        stats_path = folder / STATS_FILE
        if not stats_path.is_file():
            raise UserError(f"{folder} is not a profile: {STATS_FILE} is missing")
        try:
            from safetensors import safe_open

            with safe_open(str(stats_path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        except Exception as exc:  # safetensors raises its own error types for truncated/corrupt files
            raise UserError(f"{stats_path} is corrupt or truncated ({type(exc).__name__}: {exc})") from None
        header = None
        if not isinstance(metadata, dict):
            raise UserError(f"{stats_path} is corrupt: its metadata is not a mapping")
        if _METADATA_KEY in metadata:
            header = _parse_header(metadata[_METADATA_KEY], f"{stats_path} (embedded header)")
        header_path = folder / HEADER_FILE
        if header is None:
            if not header_path.is_file():
                raise UserError(f"{folder} is not a profile: {HEADER_FILE} is missing")
            try:
                text = header_path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise UserError(f"cannot read {header_path}: {exc}") from None
            header = _parse_header(text, str(header_path))
        digest = header.pop(_DIGEST_KEY, None)
        _validate(header, tensors, source=str(folder))
        if digest is not None and digest != _stats_digest(header, tensors):
            raise UserError(f"{stats_path} does not match the checksum in its header: the profile is corrupted")
        return cls(header, tensors)

    def save(self, path) -> None:
        """Write atomically (see module docstring); the folder is created if needed."""
        folder = Path(path)
        header_text = json.dumps({**self.header, _DIGEST_KEY: _stats_digest(self.header, self.tensors)}, indent=1, ensure_ascii=False) + "\n"
        if folder.exists() and not folder.is_dir():
            raise UserError(f"cannot write a profile to {folder}: it is a file")
        if not folder.exists():
            folder.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
            os.chmod(staging, 0o777 & ~_umask())
            try:
                self._write_stats(staging / STATS_FILE, header_text)
                _write_text(staging / HEADER_FILE, header_text)
                _fsync_dir(staging)
                os.rename(staging, folder)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            _fsync_dir(folder.parent)
            return
        # A failure (a full disk) before a rename leaves that file as it was and removes its temporary copy;
        # after the stats rename the new stats file alone is a consistent profile (its header is authoritative).
        tmp_stats = folder / f".{STATS_FILE}.tmp"
        tmp_header = folder / f".{HEADER_FILE}.tmp"
        try:
            self._write_stats(tmp_stats, header_text)
            os.replace(tmp_stats, folder / STATS_FILE)
            _write_text(tmp_header, header_text)
            os.replace(tmp_header, folder / HEADER_FILE)
        except BaseException:
            tmp_stats.unlink(missing_ok=True)
            tmp_header.unlink(missing_ok=True)
            raise
        _fsync_dir(folder)

    def _write_stats(self, target: Path, header_text: str) -> None:
        from safetensors.torch import save_file

        tensors = {name: t.detach().to("cpu").contiguous() for name, t in self.tensors.items()}
        save_file(tensors, str(target), metadata={_METADATA_KEY: header_text})
        os.chmod(target, 0o666 & ~_umask())
        with open(target, "rb+") as handle:
            os.fsync(handle.fileno())


# ---------------------------------------------------------------------- merge
def merge_key(header: Mapping[str, Any]) -> dict:
    """The header fields that must agree for two profiles to merge."""
    model = {k: header["model"].get(k) for k in _MODEL_MERGE_KEYS}
    return {"model": model, **{k: header.get(k) for k in _MERGE_KEYS}}


def merge_profiles(profiles: Iterable[Profile]) -> Profile:
    """Exact merge: sums and counts added, per-prompt tensors concatenated, prompts appended in order.

    UserError when the profiles differ in model, canvas, tile, text tokens, steps, profiled steps or
    shortlist windows (each difference is named), or when the same prompt with the same seed appears
    twice (that would count identical samples twice).
    """
    profiles = list(profiles)
    if not profiles:
        raise UserError("no profiles to merge")
    first = profiles[0]
    key = merge_key(first.header)
    for index, other in enumerate(profiles[1:], start=1):
        other_key = merge_key(other.header)
        if other_key != key:
            diffs = []
            for name in key:
                if name == "model":
                    diffs += [
                        f"model.{k}: {key['model'][k]!r} vs {other_key['model'][k]!r}"
                        for k in _MODEL_MERGE_KEYS
                        if key["model"][k] != other_key["model"][k]
                    ]
                elif key[name] != other_key[name]:
                    diffs.append(f"{name}: {key[name]!r} vs {other_key[name]!r}")
            raise UserError(f"cannot merge profile 1 with profile {index + 1}: " + "; ".join(diffs))
    seen: set[tuple[str, Any]] = set()
    for p in profiles:
        for prompt in p.prompts:
            item = (prompt, json.dumps(p.header.get("seed")))
            if item in seen:
                raise UserError(
                    f"prompt {prompt!r} with seed {p.header.get('seed')!r} appears in more than one profile; "
                    "merging would count the same samples twice"
                )
            seen.add(item)
    if len(profiles) == 1:
        return first
    tensors = {}
    for name in SUM_KEYS + (COUNT_KEY,):
        total = profiles[0].tensors[name].double()
        for p in profiles[1:]:
            total = total + p.tensors[name].double()
        tensors[name] = total.to(profiles[0].tensors[name].dtype)
    for name in PER_PROMPT_KEYS:
        tensors[name] = torch.cat([p.tensors[name] for p in profiles], dim=0)
    header = json.loads(json.dumps(first.header))
    header["prompts"] = [prompt for p in profiles for prompt in p.prompts]
    seeds = [p.header.get("seed") for p in profiles]
    if any(s != seeds[0] for s in seeds):
        header["seed"] = seeds[0]
        header["merged_seeds"] = [s for p in profiles for s in [p.header.get("seed")] * p.num_prompts]
    header["merged_from"] = [p.header.get("model", {}).get("source") for p in profiles]
    if first.header.get("computed_steps") is not None:  # step cache: computed in every merged profile
        header["computed_steps"] = [all(c) for c in zip(*(p.header["computed_steps"] for p in profiles))]
    return Profile(header, tensors)


# ---------------------------------------------------------------------- validation
def _grid(header: Mapping[str, Any]) -> tuple[int, int, int]:
    canvas = _triple(header["canvas"], "canvas")
    tile = _triple(header["tile"], "tile")
    return tuple(-(-c // t) for c, t in zip(canvas, tile))  # type: ignore[return-value]


def expected_shapes(header: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Tensor shapes implied by a header."""
    nt, nh, nw = _grid(header)
    P = len(header["profile_steps"])
    L = int(header["model"]["num_layers"])
    H = int(header["model"]["num_heads"])
    K = len(header["error_windows"])
    N = len(header["prompts"])
    return {
        "recall_sum": (P, L, H, nt, nh, nw),
        "offset_mass_sum": (P, L, H, 2 * nt - 1, 2 * nh - 1, 2 * nw - 1),
        "error": (N, P, L, H, K),
        "recall": (N, P, L, H, K),
        "count": (P,),
    }


def _stats_digest(header: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 of the header (without the digest itself) and of every tensor's name, dtype, shape and bytes."""
    import hashlib

    digest = hashlib.sha256(json.dumps(header, sort_keys=True, ensure_ascii=False).encode() + b"\0")
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _parse_header(text: str, where: str) -> dict:
    try:
        header = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise UserError(f"{where} is not valid JSON ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
    if not isinstance(header, dict):
        raise UserError(f"{where} must hold a JSON object, got {type(header).__name__}")
    return header


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value <= 10**9


def _validate_header(header: Mapping[str, Any], source: str) -> None:
    missing = [k for k in REQUIRED_HEADER_KEYS if k not in header]
    if missing:
        raise UserError(f"{source}: header lacks {', '.join(missing)}")
    if header["schema"] != PROFILE_SCHEMA:
        raise UserError(f"{source}: schema {header['schema']!r} is not {PROFILE_SCHEMA!r}")
    model = header["model"]
    if not isinstance(model, dict) or any(k not in model for k in REQUIRED_MODEL_KEYS):
        raise UserError(f"{source}: header.model must hold {', '.join(REQUIRED_MODEL_KEYS)}")
    problems = []
    for k in ("num_layers", "num_heads"):
        if not _is_count(model[k]) or model[k] < 1:
            problems.append(f"model.{k} must be a positive integer, got {model[k]!r}")
    try:
        _grid(header)
    except UserError as exc:
        problems.append(str(exc))
    steps = header["steps"]
    if not _is_count(steps) or steps < 1:
        problems.append(f"steps must be a positive integer, got {steps!r}")
    ps = header["profile_steps"]
    if not isinstance(ps, list) or not ps or not all(_is_count(s) for s in ps):
        problems.append(f"profile_steps must be a non-empty list of integers, got {ps!r}")
    elif _is_count(steps) and (sorted(set(ps)) != ps or ps[0] < 0 or ps[-1] >= steps):
        problems.append(f"profile_steps must be increasing step indices in [0, {steps}), got {ps!r}")
    ew = header["error_windows"]
    if not isinstance(ew, list):
        problems.append(f"error_windows must be a list of windows, got {ew!r}")
    else:
        for w in ew:
            try:
                _triple(w, "error window")
            except UserError as exc:
                problems.append(str(exc))
                break
    if not isinstance(header["prompts"], list) or not all(isinstance(p, str) for p in header["prompts"]):
        problems.append("prompts must be a list of strings")
    if not _is_count(header["text_len"]) or header["text_len"] < 0:
        problems.append(f"text_len must be a non-negative integer, got {header['text_len']!r}")
    if problems:
        raise UserError(f"{source}: " + "; ".join(problems))


def _validate(header: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], source: str) -> None:
    _validate_header(header, source)
    shapes = expected_shapes(header)
    problems = []
    missing = [k for k in TENSOR_KEYS if k not in tensors]
    if missing:
        raise UserError(f"{source}: stats lack {', '.join(missing)}")
    for name, shape in shapes.items():
        t = tensors[name]
        if not isinstance(t, torch.Tensor):
            problems.append(f"{name} is not a tensor")
        elif tuple(t.shape) != shape:
            problems.append(f"{name} has shape {tuple(t.shape)}, header implies {shape}")
        elif not t.is_floating_point():
            problems.append(f"{name} must be floating point, got {t.dtype}")
        elif t.numel() and not bool(torch.isfinite(t).all()):
            problems.append(f"{name} holds non-finite values")
    if problems:
        raise UserError(f"{source}: " + "; ".join(problems))


# ---------------------------------------------------------------------- io helpers
def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


# ---------------------------------------------------------------------- what headers record
MODEL_CONFIG_FILES = ("model_index.json", "transformer/config.json", "transformer_2/config.json", "config.json")


def model_identity(model) -> dict:
    """What a header records about the model it was made with: ``{"source": name, "config_sha256": hash}``.

    ``name`` is the bundled model's name or the model folder's base name, never a local path (a path is
    private and useless on another machine); ``config_sha256`` hashes the folder's diffusers config files
    (``model_index.json``, ``transformer/config.json``, ``transformer_2/config.json``, ``config.json``, those
    that exist, each with its relative name), so two headers tell whether they describe the same model.
    """
    from .models.loading import resolve_model_path

    folder, source = resolve_model_path(str(model))
    name = str(source) if str(source) != str(folder) else (Path(folder).resolve().name or str(source))
    import hashlib

    digest = hashlib.sha256()
    for relative in MODEL_CONFIG_FILES:
        path = Path(folder) / relative
        if path.is_file():
            digest.update(relative.encode() + b"\0" + path.read_bytes() + b"\0")
    return {"source": name, "config_sha256": digest.hexdigest()}


def display_path(path) -> str:
    """A path as a record may show it: relative to the working directory when inside it, else its last
    two parts (``results/kernel.json``), never the absolute local path."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve())) or "."
    except ValueError:
        return str(Path(*path.resolve().parts[-2:]))


__all__ = [
    "PROFILE_SCHEMA",
    "Profile",
    "merge_profiles",
    "merge_key",
    "expected_shapes",
    "atomic_write_text",  # kept here for callers of the old location; it lives in sta_search.report
    "model_identity",
    "display_path",
]

