"""A failing plugin costs its own features only: one warning line naming it, never the CLI.

The plugins here are throwaway distributions written into a temporary folder (a dist-info with
an ``entry_points.txt`` and the plugin's module), found by ``importlib.metadata`` like any
installed package, and unregistered again whatever the test's outcome.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from numbaconv.cli import cli, main
from numbaconv.registry import manager as plugins

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TWICE = '''
class Twice(Layer):
    """Doubles its input."""

    def forward(self, x, training=False):
        return 2 * x

    def backward(self, grad_y):
        return 2 * grad_y
'''


def write_distribution(folder, modules):
    """A distribution ``undo-dist 1.0`` whose entry points (group ``numbaconv``) are the
    ``modules`` ({entry-point name: module source}); the module of ``name`` is ``undo_<name>``.
    """
    dist_info = folder / "undo_dist-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: undo-dist\nVersion: 1.0\n")
    lines = [f"{name} = undo_{name.replace('-', '_')}" for name in modules]
    (dist_info / "entry_points.txt").write_text("[numbaconv]\n" + "\n".join(lines) + "\n")
    for name, source in modules.items():
        header = "from numbaconv import Layer, hookimpl\n"
        (folder / f"undo_{name.replace('-', '_')}.py").write_text(
            header + textwrap.dedent(source))


@pytest.fixture
def install(tmp_path, monkeypatch):
    """Install throwaway plugins as entry points and load plugins afresh, as a new process
    would (only these entry points: ``NUMBACONV_LOAD_PLUGINS``); take everything back after."""
    names, commands = [], dict(cli.commands)
    monkeypatch.setattr(plugins, "_command_owners", dict(plugins._command_owners))

    def install_plugins(**modules):
        write_distribution(tmp_path, modules)
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.setenv("NUMBACONV_LOAD_PLUGINS", ",".join(modules))
        monkeypatch.setattr(plugins, "_loaded", False)
        names.extend(modules)

    yield install_plugins
    for name in names:
        if plugins.pm.get_plugin(name) is not None:
            plugins.pm.unregister(name=name)
        plugins._distributions.pop(name, None)
        sys.modules.pop(f"undo_{name.replace('-', '_')}", None)
    cli.commands.clear()
    cli.commands.update(commands)


def run_main(monkeypatch, capsys, *args):
    """``numbaconv ARGS`` through the console entry: (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["numbaconv", *args])
    with pytest.raises(SystemExit) as exited:
        try:
            main()
        except KeyboardInterrupt:  # would stop pytest itself
            pytest.fail("KeyboardInterrupt escaped numbaconv's main()")
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def assert_one_warning(err, *parts):
    """``err`` is one ``Warning: ...`` line (no traceback) holding every one of ``parts``."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Warning: numbaconv plugin "), err
    for part in parts:
        assert part in lines[0], (part, lines[0])


@pytest.mark.parametrize("hook, registration, command, listed", [
    ("register_layers", "register(Twice)", "layers", "Conv2d"),
    ("register_models", "register('twice', Twice)", "models", "lenet"),
])
def test_a_raising_registry_hook_disables_its_plugin(install, monkeypatch, capsys, hook,
                                                       registration, command, listed):
    install(broken=TWICE + f'''
@hookimpl
def {hook}(register):
    {registration}
    raise ZeroDivisionError("division by zero")
''')
    status, out, err = run_main(monkeypatch, capsys, command)
    assert status == 0, err
    assert listed in out and "Twice" not in out and "twice" not in out  # its part is dropped
    assert_one_warning(err, "'broken' (undo-dist 1.0)", "disabled",
                       f"its {hook} hook raised ZeroDivisionError: division by zero")
    assert plugins.pm.get_plugin("broken") is None
    assert run_main(monkeypatch, capsys, command)[2] == ""  # warned once


def test_a_hook_calling_sys_exit_disables_its_plugin(install, monkeypatch, capsys):
    install(quitter='''
@hookimpl
def register_layers(register):
    raise SystemExit(4)
''')
    status, out, err = run_main(monkeypatch, capsys, "layers")
    assert status == 0 and "Conv2d" in out, err
    assert_one_warning(err, "'quitter'", "its register_layers hook raised it called sys.exit(4)")


def test_a_raising_register_commands_hook_leaves_the_cli_working(install, monkeypatch, capsys):
    install(**{"bad-commands": '''
import click

@hookimpl
def register_commands(cli):
    cli.add_command(click.Command("undo-half", callback=lambda: None))
    raise RuntimeError("cannot build my commands\\nsecond line")
'''})
    status, out, err = run_main(monkeypatch, capsys, "--help")
    assert status == 0, err
    assert "run" in out and "undo-half" not in out  # what it added before failing is gone
    assert_one_warning(err, "'bad-commands' (undo-dist 1.0) is disabled",
                       "register_commands hook raised RuntimeError: cannot build my commands")


def test_an_unknown_hook_disables_its_plugin_only(install, monkeypatch, capsys):
    install(typo='''
@hookimpl
def register_layer(register):
    pass

@hookimpl
def register_models(register):
    register("undo-typo-net", lambda: None)
''')
    status, out, err = run_main(monkeypatch, capsys, "--help")
    assert status == 0 and "Commands:" in out, err
    assert_one_warning(err, "'typo' (undo-dist 1.0) is disabled",
                       "unknown hook 'register_layer'", "register_layers")
    models = run_main(monkeypatch, capsys, "models")[1]
    assert "lenet" in models and "undo-typo-net" not in models


def test_sys_exit_on_import_is_named_and_skipped(install, monkeypatch, capsys):
    install(exiting="import sys\nsys.exit(3)\n")
    status, out, err = run_main(monkeypatch, capsys, "--help")
    assert status == 0 and "Commands:" in out, err
    assert_one_warning(err, "'exiting' (undo-dist 1.0) failed to load from undo_exiting",
                       "skipped: it called sys.exit(3)")


def test_ctrl_c_while_plugins_import_is_one_line_and_130(install, monkeypatch, capsys):
    install(interrupted="raise KeyboardInterrupt\n")
    status, out, err = run_main(monkeypatch, capsys, "--help")
    assert status == 130 and out == ""
    assert err == "Interrupted.\n"


def test_a_plugin_cannot_replace_or_remove_a_built_in_command(install, monkeypatch, capsys):
    built_in = {name: cli.commands[name] for name in ("run", "evaluate", "layers")}
    install(usurper='''
import click

@hookimpl
def register_commands(cli):
    @cli.command(name="run")
    def run():
        """Not numbaconv's run."""

    cli.add_command(click.Command("evaluate", callback=lambda: None))
    del cli.commands["layers"]

    @cli.command(name="undo-extra")
    def extra():
        """The plugin's own command."""
        click.echo("extra")
''')
    status, out, err = run_main(monkeypatch, capsys, "--help")
    assert status == 0, err
    assert {name: cli.commands[name] for name in built_in} == built_in
    lines = err.strip().splitlines()
    assert len(lines) == 3, err
    for line, name in zip(lines, ("evaluate", "layers", "run")):
        assert line.startswith("Warning: numbaconv plugin 'usurper' (undo-dist 1.0) tried to "
                               f"replace or remove numbaconv's own command {name!r}"), line
    assert "undo-extra" in out  # the rest of the plugin works
    assert run_main(monkeypatch, capsys, "undo-extra")[1] == "extra\n"


def test_a_plugin_claiming_a_built_in_layer_name_is_one_error_line(install, monkeypatch, capsys):
    install(clash=TWICE.replace("Twice", "Conv2d") + '''
@hookimpl
def register_layers(register):
    register(Conv2d)
''')
    status, out, err = run_main(monkeypatch, capsys, "layers")
    assert status == 1 and out == ""
    assert err.splitlines() == [
        "Error: layer 'Conv2d' is registered by both plugin 'numbaconv.registry.builtin' and "
        "plugin 'clash'; uninstall or disable one of them (NUMBACONV_LOAD_PLUGINS limits "
        "which plugins load)"]
    assert run_main(monkeypatch, capsys, "--help")[0] == 0


def test_python_m_numbaconv_help_survives_broken_plugins(tmp_path):
    write_distribution(tmp_path, {
        "exiting": "import sys\nsys.exit('bye')\n",
        "typo": "@hookimpl\ndef register_layer(register):\n    pass\n",
        "bad-commands": "@hookimpl\ndef register_commands(cli):\n    1 / 0\n",
    })
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), REPO]),
           "NUMBACONV_LOAD_PLUGINS": "exiting,typo,bad-commands"}
    proc = subprocess.run([sys.executable, "-m", "numbaconv", "--help"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "run" in proc.stdout and "Traceback" not in proc.stderr
    lines = sorted(proc.stderr.splitlines())
    assert len(lines) == 3, proc.stderr
    assert lines[0].startswith("Warning: numbaconv plugin 'bad-commands' (undo-dist 1.0) is "
                               "disabled: its register_commands hook raised ZeroDivisionError")
    assert lines[1].startswith("Warning: numbaconv plugin 'exiting' (undo-dist 1.0) failed to "
                               "load from undo_exiting and is skipped: it called sys.exit('bye')")
    assert lines[2].startswith("Warning: numbaconv plugin 'typo' (undo-dist 1.0) is disabled: "
                               "it implements the unknown hook 'register_layer'")
