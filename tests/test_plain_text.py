"""The terminal shows docstrings as text: no reST backticks or roles in listings and help."""

import re
import types

import click
import pytest
from click.testing import CliRunner

import numbaconv
from numbaconv.cli.main import _load_plugin_commands, cli
from numbaconv.plain_text import plain_text
from numbaconv.registry import manager as plugins
from numbaconv.registry.hookspecs import hookimpl

REST_MARKUP = re.compile(r"`|:(?:[\w.+-]+:)+(?=\w)")  # a backtick, or a role like :class:


@pytest.mark.parametrize("text, plain", [
    ("``y = conv(x, weight) + bias`` on NCHW arrays", "y = conv(x, weight) + bias on NCHW arrays"),
    (":class:`~numbaconv.layers.Conv2d` and :func:`f`", "Conv2d and f"),
    (":py:meth:`Layer.forward`, :ref:`the guide <guide>`", "Layer.forward, the guide"),
    ("`--repeat` times; `Numba <https://numba.org>`_", "--repeat times; Numba"),
    ("a *stressed* and **strong** word", "a stressed and strong word"),
    ("``(N, C*H*W)``, ``*args``, 2*x*y, x**2 + y**2", "(N, C*H*W), *args, 2*x*y, x**2 + y**2"),
    ("no markup: 3x3 (sections 2 to 2.2).", "no markup: 3x3 (sections 2 to 2.2)."),
])
def test_plain_text(text, plain):
    assert plain_text(text) == plain


class Shout(numbaconv.Layer):
    """``y = 2 x``, like :class:`~numbaconv.layers.Linear` with ``weight = 2``."""

    def forward(self, x, training=False):
        return 2 * x

    def backward(self, grad_y):
        return 2 * grad_y


def shout_net():
    """A :class:`~numbaconv.Sequential` of one ``Shout``."""
    return numbaconv.Sequential([Shout()])


@click.command(name="undo-shout")
@click.option("--loud", is_flag=True, help="As :func:`print` would, with ``!``.")
def shout(loud):
    """Print what :class:`Shout` does; see ``numbaconv layers``."""


def commands_with_help(group, path=()):
    """(path, ...) of every command below ``group``, subcommands included."""
    for name, command in sorted(group.commands.items()):
        yield (*path, name)
        if isinstance(command, click.Group):
            yield from commands_with_help(command, (*path, name))


def test_listings_and_every_help_are_plain_text():
    plugin = types.ModuleType("undo_shout")
    plugin.register_layers = hookimpl(lambda register: register(Shout), specname="register_layers")
    plugin.register_models = hookimpl(lambda register: register("undo-shout-net", shout_net),
                                      specname="register_models")
    plugin.register_commands = hookimpl(lambda cli: cli.add_command(shout),
                                        specname="register_commands")
    plugins.pm.register(plugin, name="undo-shout")
    try:
        _load_plugin_commands()
        runner = CliRunner()
        layers = runner.invoke(cli, ["layers"]).output
        assert "Shout            undo-shout" in layers and "y = 2 x, like Linear" in layers
        models = runner.invoke(cli, ["models"]).output
        assert "A Sequential of one Shout" in models
        outputs = {"layers": layers, "models": models}
        for path in [(), *commands_with_help(cli)]:
            result = runner.invoke(cli, [*path, "--help"])
            assert result.exit_code == 0, (path, result.output)
            outputs[" ".join((*path, "--help"))] = result.output
        assert "undo-shout --help" in outputs and "As print would, with !." in \
            outputs["undo-shout --help"]
        for name, output in outputs.items():
            assert not REST_MARKUP.search(output), (name, REST_MARKUP.search(output), output)
    finally:
        plugins.pm.unregister(name="undo-shout")
        cli.commands.pop("undo-shout", None)
