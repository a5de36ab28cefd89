"""User-facing errors: the CLI turns these into one line on stderr and exit code 2."""


class UserError(ValueError):
    """Bad user input (a value, file, model or option). The message names the bad value."""


class Interrupted(Exception):
    """Ctrl-C (SIGINT) stopped a command; the message says what was kept. The CLI prints it on one line and
    exits 130 (128 + SIGINT), the shell's code for an interrupted program."""

    exit_code = 130
