"""The ``sta-search`` command line: thin typer commands over the library.

Each pipeline stage registers its command from its own module (``sta_search/commands/<name>.py``,
a ``register(app)`` function), so the stages stay independent; the values they take are parsed by
:mod:`sta_search.options`.

Errors: a :class:`~sta_search.errors.UserError` is printed as one line on stderr (its text literally, never
read as rich markup) and ends the process with exit code 2; ``--debug`` (before or after the command) shows
the traceback instead. Ctrl-C ends with exit code 130 and one line (:class:`~sta_search.errors.Interrupted`
says what was kept).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from .errors import Interrupted, UserError

DEBUG_FLAG = "--debug"


class _FlagsShowNoType:
    """Boolean flags take no value, so their help row shows no ``<bool>`` type (typer >= 0.20 prints one)."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) and not getattr(param, "count", False) and param.metavar is None:
                param.metavar = ""
        return params


class _Command(_FlagsShowNoType, TyperCommand):
    pass


class _Group(_FlagsShowNoType, TyperGroup):
    pass


app = typer.Typer(
    name="sta-search",
    help="Find per-head Sliding Tile Attention windows for video diffusion transformers, without training, "
    "and run the model with them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_Group,
)

COMMAND_MODULES = ("profile", "select", "inspect", "generate", "bench", "convert", "merge", "demo", "models")
_state = {"debug": False}
err = Console(stderr=True, soft_wrap=True)  # one error, one line, however long


@app.callback()
def main(
    debug: bool = typer.Option(False, DEBUG_FLAG, help="Show full tracebacks instead of one-line errors (also "
                               "accepted after the command)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log backend choices and other details."),
):
    _state["debug"] = _state["debug"] or debug
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(name)s: %(message)s")


for _name in COMMAND_MODULES:
    if importlib.util.find_spec(f"sta_search.commands.{_name}") is not None:
        importlib.import_module(f"sta_search.commands.{_name}").register(app)
for _info in app.registered_commands:
    if _info.cls in (None, TyperCommand):
        _info.cls = _Command


def split_debug(args: list[str]) -> tuple[list[str], bool]:
    """(`args` without ``--debug``, whether it was there): ``--debug`` works before and after the command.
    Arguments after a ``--`` separator are left alone."""
    end = args.index("--") if "--" in args else len(args)
    head = [a for a in args[:end] if a != DEBUG_FLAG]
    return head + args[end:], len(head) != end


def print_error(exc: BaseException) -> None:
    """``error: <message>`` on stderr; the message is printed literally (a path holding ``[/b]`` or ``[bold]``
    is neither a markup error nor styled)."""
    err.print(Text.assemble(("error:", "bold red"), " ", str(exc)), highlight=False)


def _exit_after_error(exc: BaseException, code: int) -> None:
    # Under torchrun, ranks that failed their input checks together exit together (distributed.exit_together);
    # otherwise nothing distributed is touched, so an error exit costs no torch import.
    if "WORLD_SIZE" in os.environ or "LOCAL_RANK" in os.environ:
        from .distributed import exit_together

        exit_together(exc, code)
    sys.exit(code)


def run(argv: list[str] | None = None) -> None:
    """Console-script entry: user errors become one line on stderr and exit code 2."""
    args, debug = split_debug(list(sys.argv[1:] if argv is None else argv))
    _state["debug"] = debug
    try:
        app(args=args, prog_name="sta-search", standalone_mode=False)
    except UserError as exc:
        if _state["debug"]:
            raise
        print_error(exc)
        _exit_after_error(exc, 2)
    except typer.Exit as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):  # typer's answer to Ctrl-C: Exit(130), silently
            err.print("interrupted", highlight=False)
        sys.exit(exc.exit_code)
    except Interrupted as exc:
        if _state["debug"]:
            raise
        err.print(Text.assemble(("interrupted:", "bold yellow"), " ", str(exc)), highlight=False)
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted", highlight=False)
        sys.exit(130)
    except Exception as exc:
        # click usage errors (typer may vendor click, so match by shape) show themselves, exit code 2
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int):
            if _state["debug"]:
                exc.show()
            else:  # one line, like every other input error: the message and where the options are listed
                message = exc.format_message() if callable(getattr(exc, "format_message", None)) else str(exc)
                ctx = getattr(exc, "ctx", None)
                path = getattr(ctx, "command_path", None) or "sta-search"
                listed = "commands" if " " not in path else "options"
                print_error(f"{message} (`{path} --help` lists the {listed})")
            sys.exit(exc.exit_code)
        raise
