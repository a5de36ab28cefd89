"""User-facing errors: the CLI turns these into one line on stderr and exit code 2."""


class UserError(ValueError):
    """Bad user input (a value, file, model or option). The message names the bad value."""
