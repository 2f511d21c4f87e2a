"""Errors the command-line faces turn into one line and an exit code."""


class UserError(Exception):
    """A mistake or condition the user can fix: printed as one line, exit code 1, no traceback."""
