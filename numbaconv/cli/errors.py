"""How the command line ends: one line on stderr for every failure, and an exit status by cause.

Exit statuses (all commands, plugins' too):

* 0: done (``--help`` and ``--version`` included);
* 1: a user error, e.g. a missing data folder or an unknown model: ``Error: ...``;
* 2: a usage error, e.g. an unknown option or a value of the wrong type: ``Error: ...`` with
  Click's message and where to find ``--help``;
* 130: interrupted (Ctrl-C), as shells report a process that SIGINT ended.

None of them prints a traceback. :class:`CommandGroup` gives its commands and subcommands the
one-line usage errors and 130; :func:`user_errors` turns a command's engine errors into 1.
"""

from __future__ import annotations

import contextlib
import functools

import click

from ..plain_text import plain_text

# Click >= 8.2 raises it for a group called without a command: it shows the help, as it should.
_HELP_FOR_NO_ARGUMENTS = getattr(click.exceptions, "NoArgsIsHelpError", ())


class UserError(click.ClickException):
    """One clear line for the user; exit status 1."""


class UsageLineError(click.UsageError):
    """Click's usage error in one line, ``Error: <Click's message> Try '... --help' for help.``,
    instead of Click's usage block; exit status 2."""

    def __init__(self, error: click.UsageError):
        super().__init__(" ".join(error.format_message().split()), error.ctx)

    def show(self, file=None) -> None:
        hint = ""
        if self.ctx is not None and self.ctx.command.get_help_option(self.ctx) is not None:
            option = max(self.ctx.command.get_help_option_names(self.ctx), key=len)
            stop = "" if self.message.endswith((".", "?", "!", ")")) else "."
            hint = f"{stop} Try '{self.ctx.command_path} {option}' for help."
        click.echo(f"Error: {self.message}{hint}", err=True)


class Interrupted(click.ClickException):
    """Ctrl-C: one line and exit status 130, rather than Click's 'Aborted!' and 1 (which is a
    user error here)."""

    exit_code = 130

    def __init__(self):
        super().__init__("interrupted")

    def show(self, file=None) -> None:
        click.echo("Interrupted.", err=True)


class CommandGroup(click.Group):
    """The ``numbaconv`` group: one-line usage errors (exit 2) and exit 130 on Ctrl-C for every
    command below it, and help texts without the docstrings' reST markup.

    Usage errors are raised while a context is made (the group's own options) or while the
    group invokes a command (the command's options and arguments, subcommands, plugins'
    commands): both pass through here.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _plain_help(self)

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        _plain_help(cmd)
        super().add_command(cmd, name)

    def make_context(self, *args, **kwargs) -> click.Context:
        with _one_line_usage_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: click.Context):
        with _one_line_usage_errors():
            return super().invoke(ctx)


@contextlib.contextmanager
def _one_line_usage_errors():
    try:
        yield
    except (UsageLineError, _HELP_FOR_NO_ARGUMENTS):
        raise
    except click.UsageError as error:
        raise UsageLineError(error) from None
    except KeyboardInterrupt:
        raise Interrupted() from None


def _plain_help(command: click.Command) -> None:
    """Strip reST markup from the help texts of ``command``, its options and subcommands."""
    for holder in (command, *command.params):
        for attribute in ("help", "short_help", "epilog"):
            text = getattr(holder, attribute, None)
            if text:
                setattr(holder, attribute, plain_text(text))
    for subcommand in getattr(command, "commands", {}).values():
        _plain_help(subcommand)


#: The interruptions the CLI's signal handlers raised, in order (see :func:`raise_noted`).
RAISED_BY_SIGNALS: list[BaseException] = []


def raise_noted(interruption: BaseException):
    """Raise ``interruption`` from a signal handler, noting it first."""
    RAISED_BY_SIGNALS.append(interruption)
    raise interruption


def wrapped_interruption(error: BaseException) -> BaseException | None:
    """The ``KeyboardInterrupt`` or ``SystemExit`` (Ctrl-C, SIGTERM) that ``error`` stands for,
    if any. A signal handler that raises while a compiled kernel runs can make Numba's
    dispatcher return with that exception set, which Python reports as a ``SystemError``,
    caused by it or (the exception already consumed) by nothing: then the last one the CLI's
    handlers raised."""
    if isinstance(error, SystemError):
        cause = error.__cause__ or error.__context__
        if isinstance(cause, (KeyboardInterrupt, SystemExit)):
            return cause
        if "returned a result with an exception set" in str(error) and RAISED_BY_SIGNALS:
            return RAISED_BY_SIGNALS[-1]
    return None


def user_errors(command):
    """Turn the engine's user-facing exceptions into :class:`UserError`, and an interruption
    that arrived inside a kernel back into the interruption."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from ..checkpoint import CheckpointError
        from ..data import DataError
        from ..registry import RegistryError, UnknownNameError
        from ..training import Diverged

        try:
            return command(*args, **kwargs)
        except (CheckpointError, DataError, RegistryError, UnknownNameError, Diverged,
                ValueError, OSError) as error:
            raise UserError(str(error)) from None
        except SystemError as error:
            interruption = wrapped_interruption(error)
            if interruption is None:
                raise
            raise interruption from None

    return wrapper
