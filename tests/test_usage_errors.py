"""Click's usage errors follow the project's convention: one ``Error: ...`` line, exit status 2.

1 stays for the user's errors (tests/test_cli.py), 0 for ``--help`` and ``--version``, 130 for
Ctrl-C; never a usage block, never a traceback.
"""

import os
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from numbaconv.cli import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def invoke(*args):
    return CliRunner().invoke(cli, list(args), prog_name="numbaconv")


def assert_usage_error(result, message, command):
    """Exit status 2 and one line: ``Error: <Click's message>`` and where the help is."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), f"traceback: {result.exception!r}"
    assert result.output.endswith(f" Try 'numbaconv{command} --help' for help.\n"), \
        result.output
    assert result.output.count("\n") == 1 and result.output.startswith(f"Error: {message}"), \
        result.output


@pytest.mark.parametrize("args, message, command", [
    (["run", "--epoch", "3"], "No such option '--epoch'. (Did you mean one of: '--epochs'",
     " run"),
    (["run"], "Missing argument 'MODEL|SPEC.toml'.", " run"),
    (["run", "lenet", "--epochs", "abc"],
     "Invalid value for '--epochs': 'abc' is not a valid integer.", " run"),
    (["run", "lenet", "--optimizer", "rmsprop"],
     "Invalid value for '--optimizer': 'rmsprop' is not one of 'sgd', 'adam'.", " run"),
    (["evaluate", "a.npz", "b.npz"], "Got unexpected extra argument (b.npz)", " evaluate"),
    (["trian"], "No such command 'trian'.", ""),
    (["--verbose"], "No such option '--verbose'.", ""),
    (["demo", "edgse"], "No such command 'edgse'.", " demo"),
    (["demo", "edges", "--steps", "x"], "No such option '--steps'", " demo edges"),
])
def test_usage_errors_are_one_line_with_exit_status_2(args, message, command):
    assert_usage_error(invoke(*args), message, command)


def test_a_plugin_command_gets_the_same_one_line_usage_errors():
    @click.command(name="undo-greet")
    @click.argument("name")
    @click.option("--times", type=int, default=1)
    def greet(name, times):
        click.echo(f"hello {name}\n" * times, nl=False)

    cli.add_command(greet)
    try:
        assert invoke("undo-greet", "ada", "--times", "2").output == "hello ada\n" * 2
        assert_usage_error(invoke("undo-greet", "ada", "--times", "two"),
                           "Invalid value for '--times': 'two' is not a valid integer.",
                           " undo-greet")
        assert_usage_error(invoke("undo-greet"), "Missing argument 'NAME'.", " undo-greet")
    finally:
        cli.commands.pop("undo-greet", None)


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["--version"], ["run", "--help"],
                                  ["demo", "edges", "--help"]])
def test_help_and_version_still_exit_0(args):
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(("Usage: numbaconv", "numbaconv, version"))


def test_ctrl_c_in_a_command_is_one_line_and_exit_status_130():
    @click.command(name="undo-wait")
    def wait():
        raise KeyboardInterrupt

    cli.add_command(wait)
    try:
        result = invoke("undo-wait")
    finally:
        cli.commands.pop("undo-wait", None)
    assert result.exit_code == 130 and result.output == "Interrupted.\n"


def test_python_m_numbaconv_usage_error_is_one_line_on_stderr():
    proc = subprocess.run([sys.executable, "-m", "numbaconv", "run", "lenet", "--epoch", "3"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("Error: No such option '--epoch'.") \
        and proc.stderr.count("\n") == 1, proc.stderr


def test_an_interruption_inside_a_kernel_is_the_interruption():
    """Ctrl-C while a compiled kernel runs reaches Python as a SystemError caused by the
    KeyboardInterrupt; the CLI treats it as Ctrl-C, not as a crash."""
    from numbaconv.cli.errors import wrapped_interruption

    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as interrupt:
            raise SystemError("CPUDispatcher(...) returned a result with an exception set") \
                from interrupt
    except SystemError as error:
        assert isinstance(wrapped_interruption(error), KeyboardInterrupt)
    assert wrapped_interruption(SystemError("a real one")) is None
    assert wrapped_interruption(ValueError("x")) is None
