"""Command-line values: the one place that parses what a user types, and the typer declarations of the
options that several commands share.

Parsers turn text into values and raise :class:`~sta_search.errors.UserError` naming the bad value (the CLI
prints it on one line and exits 2):

- triples ``t,h,w`` (or ``txhxw``): :func:`parse_triple`, :func:`parse_tile` (volume a multiple of 16),
  :func:`parse_window`, :func:`parse_windows` (several, separated by ``;`` or spaces), :func:`parse_canvas`,
  :func:`canvas_from_option` (``--canvas`` or ``--height/--width/--frames``, not both);
- :func:`resolve_device` / :func:`resolve_dtype` / :func:`dtype_name`: the device and dtype defaults (CUDA
  when available; bfloat16 on CUDA, float32 elsewhere);
- prompts: :func:`read_prompts` (a file, or a bundled set ``default`` / ``quick`` shipped inside the
  package) and :func:`prompts_from` (exactly one of ``--prompt TEXT`` / ``--prompts FILE``);
- :func:`positive_int` / :func:`non_negative_int`: counts where 0 (or a negative) is an error, never a
  silent "use the default";
- :func:`parse_numbers`: comma-separated numbers (the bench scripts' lists of seeds, steps, guidance scales).

The ``*_option`` functions return typer option declarations whose callbacks run these parsers while the
command line is parsed, so command modules only declare options and call the library with parsed values.
Library functions accept already-parsed values (tuples, canonical names, ``None`` for "the default").

Importing this module imports typer but not torch: the CLI rejects bad values before torch loads.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import typer

from .errors import UserError

Triple = tuple[int, int, int]

#: Accepted dtype spellings -> canonical name.
DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
               "float16": "float16", "fp16": "float16"}
#: ``sta_search.kernels.backends.BACKENDS`` spelled out here so the CLI can check a name before torch loads
#: (tests/test_backends.py keeps the two equal; the backend choice itself lives in kernels/backends.py).
BACKENDS = ("auto", "gluon", "triton", "flex", "gather", "reference")
#: ``sta_search.kernels.backends.PRECISIONS`` spelled out for the same reason (tests/test_kernel_fp8.py keeps them equal).
PRECISIONS = ("bf16", "fp8", "int8")
#: Prompt sets shipped in ``sta_search/prompts/<name>.txt``.
BUNDLED_PROMPT_SETS = ("default", "quick")


# ------------------------------------------------------------------------------------------- triples
def parse_triple(value: Any, what: str) -> Triple:
    """``"3,3,5"``, ``"3x3x5"`` or ``(3, 3, 5)`` -> ``(3, 3, 5)``: three integers, each >= 1.

    `what` names the value in the error (e.g. ``"--window"``)."""
    if isinstance(value, (tuple, list)):
        parts = list(value)
    else:
        parts = str(value).replace("x", ",").replace(" ", "").split(",")
    try:
        triple = tuple(int(p) for p in parts)
        exact = all(not isinstance(p, float) or float(p).is_integer() for p in parts)
    except (TypeError, ValueError):
        raise UserError(f"{what} {_show(value)} must be three integers t,h,w") from None
    if len(triple) != 3 or not exact or min(triple) < 1:
        raise UserError(f"{what} {_show(value)} must be three integers t,h,w, each >= 1")
    return triple  # type: ignore[return-value]


def parse_tile(value: Any, what: str = "--tile") -> Triple:
    """A tile ``t,h,w`` in tokens whose volume is a multiple of 16 (the kernels' block granularity)."""
    tile = parse_triple(value, what)
    if math.prod(tile) % 16:
        raise UserError(f"{what} {_show(value)} must be three positive integers t,h,w whose product is a "
                        "multiple of 16")
    return tile


def parse_window(value: Any, what: str = "--window") -> Triple:
    """A window ``t,h,w`` in tiles."""
    return parse_triple(value, what)


def parse_canvas(value: Any, what: str = "--canvas") -> Triple:
    """A token canvas ``T,H,W``."""
    return parse_triple(value, what)


def canvas_from_option(value: Any, height: int | None, width: int | None, frames: int | None) -> Triple | None:
    """``--canvas T,H,W`` or pixel sizes (``--height/--width/--frames``), not both: the canvas triple, the
    string ``"pixels"`` when only pixel sizes are given (the caller converts them with the model's patch size),
    or None when neither is given."""
    pixels = [name for name, v in (("--height", height), ("--width", width), ("--frames", frames)) if v is not None]
    if value is not None and pixels:
        raise UserError(f"give --canvas or {'/'.join(pixels)}, not both")
    for name, v in (("--height", height), ("--width", width), ("--frames", frames)):
        if v is not None and int(v) < 1:
            raise UserError(f"{name} must be >= 1, got {v}")
    if value is not None:
        return parse_canvas(value)
    return "pixels" if pixels else None  # type: ignore[return-value]


def parse_windows(items: Iterable[str] | str, what: str = "--windows") -> tuple[Triple, ...]:
    """Windows from CLI strings; each string may hold several separated by ``;`` or spaces."""
    if isinstance(items, str):
        items = [items]
    windows = [parse_window(piece, what) for item in items for piece in str(item).replace(";", " ").split()]
    if not windows:
        raise UserError(f"{what} needs at least one window t,h,w")
    return tuple(windows)


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else repr(tuple(value) if isinstance(value, list) else value)


# ------------------------------------------------------------------------------------------- counts
#: Upper bounds of counts and sizes: far above any real run, low enough that a typo (an extra zero or
#: three) is an error naming the value instead of an allocation that fails (or a list that fills memory).
MAX_STEPS = 10_000
MAX_PIXELS = 1 << 16  # --height / --width
MAX_FRAMES = 1 << 16
MAX_PROMPTS = 10_000
MAX_SEED = (1 << 63) - 1 - MAX_PROMPTS  # prompt i uses seed + i; torch seeds are 64-bit


def positive_int(value: int | None, what: str, maximum: int | None = None) -> int | None:
    """`value` unless it is < 1 or > `maximum` (UserError naming it); None stays None (= the default)."""
    if value is not None and int(value) < 1:
        raise UserError(f"{what} must be >= 1, got {value}")
    if value is not None and maximum is not None and int(value) > maximum:
        raise UserError(f"{what} must be <= {maximum}, got {value}")
    return value


def non_negative_int(value: int | None, what: str, maximum: int | None = None) -> int | None:
    if value is not None and int(value) < 0:
        raise UserError(f"{what} must be >= 0, got {value}")
    if value is not None and maximum is not None and int(value) > maximum:
        raise UserError(f"{what} must be <= {maximum}, got {value}")
    return value


def parse_numbers(value: str, what: str, kind: type = float) -> list:
    """Comma-separated numbers of one ``kind`` (int or float), e.g. ``--seeds 0,1000`` -> ``[0, 1000]``."""
    try:
        return [kind(v) for v in str(value).split(",")]
    except ValueError:
        noun = "integers" if kind is int else "numbers"
        raise UserError(f"{what}: expected comma-separated {noun}, got {value!r}") from None


def seed(value: int | None, what: str = "--seed") -> int | None:
    """A random seed: 0 ... MAX_SEED."""
    return non_negative_int(value, what, MAX_SEED)


def fraction(value: float | None, what: str) -> float | None:
    """A fraction in [0, 1)."""
    if value is not None and not 0 <= float(value) < 1:
        raise UserError(f"{what} {value} must be in [0, 1)")
    return value


def positive_float(value: float | None, what: str) -> float | None:
    if value is not None and not float(value) > 0:
        raise UserError(f"{what} must be > 0, got {value}")
    return value


def profile_every(value: str | int) -> str | int:
    """``--profile-steps``: ``"all"`` or a positive integer k (every k-th step)."""
    text = str(value).strip().lower()
    if text == "all":
        return "all"
    try:
        every = int(text)
    except ValueError:
        raise UserError(f"--profile-steps must be 'all' or a positive integer k (every k-th step), got {value!r}") from None
    if every < 1:
        raise UserError(f"--profile-steps must be 'all' or a positive integer k, got {value!r}")
    return every


def parse_profile_steps(value: str | int, steps: int) -> list[int]:
    """``"all"`` -> every step of `steps`; ``k`` -> every k-th step starting at 0."""
    every = profile_every(value)
    return list(range(0, steps, 1 if every == "all" else every))


def density(value: float | None, what: str) -> float | None:
    """A fraction in (0, 1]."""
    if value is not None and not 0 < float(value) <= 1:
        raise UserError(f"{what} {value} must be in (0, 1]")
    return value


# ------------------------------------------------------------------------------------------- device / dtype
def default_device() -> str:
    """``"cuda"`` when a CUDA device is available, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device=None):
    """A ``torch.device`` for ``--device`` (``None``: :func:`default_device`); UserError for text torch does not
    read as a device and for CUDA on a machine without it."""
    import torch

    if device is None:
        return torch.device(default_device())
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UserError(f"--device {str(device)!r} is not a torch device (try cpu, cuda or cuda:1)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {str(device)!r}: CUDA is not available on this machine")
    return resolved


def dtype_name(name: str | None, device=None) -> str:
    """Canonical dtype name for ``--dtype`` (``float32``, ``bfloat16``, ``float16``); ``None``: bfloat16 on a CUDA
    `device`, float32 elsewhere (a ``None`` device: the default device)."""
    if name is None:
        kind = str(device) if device is not None else default_device()
        return "bfloat16" if kind.startswith("cuda") else "float32"
    key = str(name).lower().replace("torch.", "")
    if key not in DTYPE_NAMES:
        raise UserError(f"--dtype {name!r} is not one of float32, bfloat16, float16")
    return DTYPE_NAMES[key]


def resolve_dtype(name: str | None, device=None):
    """The ``torch.dtype`` of :func:`dtype_name`."""
    import torch

    return getattr(torch, dtype_name(name, device))


# ------------------------------------------------------------------------------------------- prompts
def bundled_prompts_file(name: str):
    """The shipped prompt set `name` (a ``importlib.resources`` traversable)."""
    return resources.files("sta_search").joinpath("prompts", f"{name}.txt")


def read_prompts(source) -> tuple[str, ...]:
    """One prompt a line; ``#`` comment lines and blank lines are skipped.

    `source` is a text file, or the name of a bundled set (``default``: 16 prompts, ``quick``: 4) when no
    file of that name exists. UserError for a missing, unreadable or empty file.
    """
    path = Path(str(source)).expanduser()
    if not path.exists() and str(source) in BUNDLED_PROMPT_SETS:
        text = bundled_prompts_file(str(source)).read_text(encoding="utf-8")
    elif not path.is_file():
        names = " or ".join(repr(n) for n in BUNDLED_PROMPT_SETS)
        raise UserError(f"prompts file not found: {source} (or name a bundled set: {names})")
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read prompts file {source}: {exc}") from None
    prompts = tuple(line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))
    if not prompts:
        raise UserError(f"prompts file {source} holds no prompts (one a line; '#' lines and blank lines are skipped)")
    return prompts


def prompts_from(prompt: str | None, prompts_file: str | None) -> tuple[str, ...]:
    """The prompts of ``--prompt TEXT`` or ``--prompts FILE`` (exactly one of them)."""
    if (prompt is None) == (prompts_file is None):
        raise UserError("give exactly one of --prompt TEXT or --prompts FILE")
    if prompt is not None:
        if not prompt.strip():
            raise UserError("--prompt is empty")
        return (prompt,)
    return read_prompts(prompts_file)


# ------------------------------------------------------------------------------------------- images
def check_image_path(path: str | None) -> str | None:
    """``--image PATH``: an existing file (read and checked by :func:`read_image` where it is used)."""
    if path is None:
        return None
    if not Path(path).expanduser().is_file():
        raise UserError(f"--image {path}: no such file")
    return str(Path(path).expanduser())


def read_image(path):
    """The RGB ``PIL.Image`` in the file ``path`` (PNG, JPEG, WebP, ...; the first frame of a GIF/video
    through imageio when PIL cannot read it). UserError naming the file when it is not an image."""
    from PIL import Image, UnidentifiedImageError

    path = Path(check_image_path(str(path)))
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError):
        pass
    try:
        import imageio.v3 as iio

        frame = iio.imread(path, index=0)
    except Exception:  # noqa: BLE001 - any reader failure means "not an image"
        raise UserError(f"--image {path}: not an image file PIL or imageio can read") from None
    import numpy as np

    array = np.asarray(frame)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise UserError(f"--image {path}: not an image (array of shape {array.shape})")
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    return Image.fromarray(array[..., :3])


def image_option(help: str = "Conditioning image (image-to-video pipelines such as WanImageToVideoPipeline)."):
    return typer.Option(None, "--image", help=help, callback=_image)


PROFILE_FORWARDS = ("all", "first")


def check_profile_forwards(value: str) -> str:
    if value not in PROFILE_FORWARDS:
        raise UserError(f"--profile-forwards {value!r} is not one of {', '.join(PROFILE_FORWARDS)}")
    return value


def check_backend_name(backend: str) -> str:
    if backend not in BACKENDS:
        raise UserError(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}")
    return backend


# ------------------------------------------------------------------------------------------- typer declarations
def _name(param) -> str:
    opts = [o for o in (getattr(param, "opts", None) or []) if o.startswith("--")]
    return opts[0] if opts else f"--{param.name.replace('_', '-')}"


def _bounded(check, maximum):
    def callback(ctx: typer.Context, param: typer.CallbackParam, value):
        return check(value, _name(param), maximum)

    return callback


def _seed(ctx: typer.Context, param: typer.CallbackParam, value):
    return seed(value, _name(param))


def _fraction(ctx: typer.Context, param: typer.CallbackParam, value):
    return fraction(value, _name(param))


def _positive_float(ctx: typer.Context, param: typer.CallbackParam, value):
    return positive_float(value, _name(param))


def _density(ctx: typer.Context, param: typer.CallbackParam, value):
    return density(value, _name(param))


def _tile(ctx: typer.Context, param: typer.CallbackParam, value):
    return None if value is None else parse_tile(value, _name(param))


def _triple(ctx: typer.Context, param: typer.CallbackParam, value):
    return None if value is None else parse_triple(value, _name(param))


def _canvas(ctx: typer.Context, param: typer.CallbackParam, value):
    return None if value is None else parse_canvas(value, _name(param))


def _windows(ctx: typer.Context, param: typer.CallbackParam, value):
    return parse_windows(value, _name(param)) if value else None


def _error_windows(ctx: typer.Context, param: typer.CallbackParam, value):
    if value and [str(v).strip() for v in value] == [PROPORTIONAL_WINDOWS]:
        return [PROPORTIONAL_WINDOWS]  # a list: typer splits a returned string into characters
    return _windows(ctx, param, value)


def error_windows_setting(value):
    """The parsed ``profile --windows`` as ``ProfileSettings.windows``: None, ``"proportional"`` or windows."""
    if value is not None and list(value) == [PROPORTIONAL_WINDOWS]:
        return PROPORTIONAL_WINDOWS
    return value


def _image(ctx: typer.Context, param: typer.CallbackParam, value):
    return check_image_path(value)


def _profile_every(ctx: typer.Context, param: typer.CallbackParam, value):
    return profile_every(value)


def _profile_forwards(ctx: typer.Context, param: typer.CallbackParam, value):
    return check_profile_forwards(value)


def _dtype(ctx: typer.Context, param: typer.CallbackParam, value):
    return None if value is None else dtype_name(value)


def _backend(ctx: typer.Context, param: typer.CallbackParam, value):
    return check_backend_name(value)


def _precision(ctx: typer.Context, param: typer.CallbackParam, value):
    if value not in PRECISIONS:
        raise UserError(f"--precision {value!r} is not one of {', '.join(PRECISIONS)}")
    return value


def positive_option(default: int | None, *names: str, help: str, maximum: int | None = None):
    """An integer option that must be >= 1 (0 and negatives exit 2 naming the value) and <= `maximum`."""
    return typer.Option(default, *names, help=help, callback=_bounded(positive_int, maximum))


def non_negative_option(default: int | None, *names: str, help: str, maximum: int | None = None):
    return typer.Option(default, *names, help=help, callback=_bounded(non_negative_int, maximum))


def threads_option(maximum: int | None = 4096):
    """``--threads N``: torch's CPU thread count (``sta_search.cpu_threads`` picks one when it is not given)."""
    return positive_option(None, "--threads", help="Torch CPU threads (default on CPU: physical cores the load "
                           "average leaves idle, >= 1).", maximum=maximum)


def seed_option(default: int = 0, help: str = "Random seed."):
    """``--seed``: 0 ... MAX_SEED."""
    return typer.Option(default, "--seed", help=help, callback=_seed)


def fraction_option(default: float | None, *names: str, help: str):
    """A float in [0, 1)."""
    return typer.Option(default, *names, help=help, callback=_fraction)


def positive_float_option(default: float | None, *names: str, help: str):
    return typer.Option(default, *names, help=help, callback=_positive_float)


def steps_option(default: int | None = None, help: str = "Denoising steps."):
    return positive_option(default, "--steps", help=help, maximum=MAX_STEPS)


def size_options(what: str):
    """``--height``, ``--width``, ``--frames`` declarations (in that order); `what` ends each help text."""
    return (positive_option(None, "--height", help=f"Video height in pixels (default: {what}).", maximum=MAX_PIXELS),
            positive_option(None, "--width", help=f"Video width in pixels (default: {what}).", maximum=MAX_PIXELS),
            positive_option(None, "--frames", help=f"Number of frames (default: {what}).", maximum=MAX_FRAMES))


def density_option(default: float | None, *names: str, help: str):
    return typer.Option(default, *names, help=help, callback=_density)


def tile_option(default: str | None = None, help: str = "STA tile t,h,w in tokens (product a multiple of 16).",
                name: str = "--tile"):
    """``--tile t,h,w`` -> a tuple (or None)."""
    return typer.Option(default, name, help=help, callback=_tile)


def triple_option(default: str | None, name: str, help: str):
    """``NAME t,h,w`` -> a tuple of three integers >= 1 (or None)."""
    return typer.Option(default, name, help=help, callback=_triple)


def canvas_option(help: str = "Token canvas T,H,W (video latent grid after patchify)."):
    """``--canvas T,H,W`` -> a tuple of three integers >= 1 (or None)."""
    return typer.Option(None, "--canvas", help=help, callback=_canvas)


def windows_option(name: str = "--windows", help: str = "Windows t,h,w (repeat, or separate with ';')."):
    """Repeatable ``--windows``, each holding one or more windows -> a tuple of tuples (or None)."""
    return typer.Option(None, name, help=help, callback=_windows)


#: ``profile --windows proportional``: the default shortlist scaled to the grid (stats.proportional_error_windows)
PROPORTIONAL_WINDOWS = "proportional"


def error_windows_option(help: str):
    """``profile --windows``: windows as :func:`windows_option`, or the one word ``proportional``."""
    return typer.Option(None, "--windows", help=help, callback=_error_windows)


def device_option(help: str = "torch device: cuda, cuda:1 or cpu (default: cuda when available)."):
    # Checked where it is used (CUDA availability needs torch; under torchrun each rank picks its own).
    return typer.Option(None, "--device", help=help)


def dtype_option(help: str = "float32, bfloat16 or float16 (default: bfloat16 on CUDA, float32 on CPU)."):
    """``--dtype`` -> its canonical name (or None: the device's default)."""
    return typer.Option(None, "--dtype", help=help, callback=_dtype)


def backend_option(help: str = "STA kernel backend: auto (gluon on Hopper, else triton on CUDA; gather on CPU), "
                               "gluon, triton, flex, gather, reference."):
    return typer.Option("auto", "--backend", help=help, callback=_backend)


def precision_option(help: str = "STA compute precision: bf16 (the model's dtype); fp8 (opt-in: q, k, v in e4m3 "
                                 "with float32 block scales, FP8 tensor cores: the fastest); int8 (opt-in: q, k in "
                                 "int8 and v in e4m3: closer to bf16, a little slower). 8-bit: Hopper, gluon backend "
                                 "only; dense steps and full-window layers stay in the model's dtype."):
    return typer.Option("bf16", "--precision", help=help, callback=_precision)


def profile_steps_option(default: str = "all",
                         help: str = "'all', or k: profile every k-th step (0, k, 2k, ...)."):
    return typer.Option(default, "--profile-steps", help=help, callback=_profile_every)


def profile_forwards_option(default: str = "all"):
    return typer.Option(default, "--profile-forwards", callback=_profile_forwards,
                        help="Which transformer forwards of a profiled step to profile: 'all', or 'first' (with "
                             "classifier-free guidance run as two forwards, the conditional one; the other runs "
                             "dense). 'first' about halves the profiler's work on such pipelines; the windows "
                             "are then chosen from the conditional branch's attention alone.")


def flag(default: bool, *names: str, help: str):
    """A boolean flag (``--name``, no value)."""
    return typer.Option(default, *names, help=help)


# ------------------------------------------------------------------------------------------- step caches
#: ``sta_search.caches.CACHE_NAMES`` spelled out here so the CLI checks a name before torch loads
#: (tests/test_caches.py keeps the two equal).
CACHES = ("none", "first-block", "taylorseer", "taylorseer-lite", "mag", "faster", "pab")


def check_cache_name(cache: str) -> str:
    if cache not in CACHES:
        raise UserError(f"--cache {cache!r} is not one of {', '.join(CACHES)}")
    return cache


def _cache(ctx: typer.Context, param: typer.CallbackParam, value):
    return check_cache_name(value)


def cache_option(help: str = "diffusers step cache to run with STA: none, first-block, taylorseer, "
                             "taylorseer-lite, mag, faster, pab "
                             "(exit 2 when it cannot run on the model; see docs/mask-config.md)."):
    return typer.Option("none", "--cache", help=help, callback=_cache)
