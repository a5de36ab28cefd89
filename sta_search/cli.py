"""The ``sta-search`` command line: thin typer commands over the library.

Each pipeline stage registers its command from its own module (``sta_search/commands/<name>.py``,
a ``register(app)`` function), so the stages stay independent.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys

import typer
from rich.console import Console

from .errors import UserError

app = typer.Typer(
    name="sta-search",
    help="Find per-head Sliding Tile Attention windows for video diffusion transformers, without training, "
    "and run the model with them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

COMMAND_MODULES = ("profile", "select", "inspect", "generate", "bench", "convert", "merge", "demo")
_state = {"debug": False}
err = Console(stderr=True, soft_wrap=True)  # one error, one line, however long


@app.callback()
def main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log backend choices and other details."),
):
    _state["debug"] = debug
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(name)s: %(message)s")


for _name in COMMAND_MODULES:
    if importlib.util.find_spec(f"sta_search.commands.{_name}") is not None:
        importlib.import_module(f"sta_search.commands.{_name}").register(app)


def run() -> None:
    """Console-script entry: user errors become one line on stderr and exit code 2."""
    try:
        app(standalone_mode=False)
    except UserError as exc:
        if _state["debug"]:
            raise
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        from .distributed import exit_with_every_rank

        exit_with_every_rank(exc, 2)  # under torchrun, ranks that failed their input checks together exit together
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except Exception as exc:
        # click usage errors (typer may vendor click, so match by shape) show themselves, exit code 2
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            sys.exit(exc.exit_code)
        raise
