"""How the command line reports a user's mistake: one ``Error: ...`` line, exit status 1."""

from __future__ import annotations

import functools

import click


class UserError(click.ClickException):
    """One clear line for the user; exit status 1."""


def user_errors(command):
    """Turn the engine's user-facing exceptions into :class:`UserError`."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from .checkpoint import CheckpointError
        from .data import DataError
        from .plugins import RegistryError, UnknownNameError
        from .training import Diverged

        try:
            return command(*args, **kwargs)
        except (CheckpointError, DataError, RegistryError, UnknownNameError, Diverged,
                ValueError, OSError) as error:
            raise UserError(str(error)) from None

    return wrapper
