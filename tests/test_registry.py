"""The pluggy registry: built-ins as plugins, entry points, conflicts, broken plugins."""

import types

import pytest
from click.testing import CliRunner

import numbaconv
from numbaconv.layers import Layer
from numbaconv.registry import manager as plugins
from numbaconv.registry.hookspecs import hookimpl


class Twice(Layer):
    """Doubles its input."""

    def forward(self, x, training=False):
        return 2 * x

    def backward(self, grad_y, need_input_grad=True):
        return 2 * grad_y


def _plugin(**hooks):
    module = types.ModuleType("undo_plugin")
    for name, function in hooks.items():
        setattr(module, name, hookimpl(function, specname=name))
    return module


@pytest.fixture
def registered():
    """Register throwaway plugins; unregister them whatever happens."""
    names = []

    def register(name, plugin):
        plugins.pm.register(plugin, name=name)
        names.append(name)

    yield register
    for name in names:
        plugins.pm.unregister(name=name)


def test_builtins_are_registered_through_the_hooks():
    layers = plugins.layer_entries()
    assert {"Conv2d", "MaxPool2d", "AvgPool2d", "Linear", "ReLU", "Sigmoid", "Tanh", "Flatten",
            "Dropout"} <= set(layers)
    assert layers["Conv2d"][1] == "numbaconv.registry.builtin"
    assert numbaconv.get_models()["lenet"] is plugins.get_model("lenet").factory
    info = {i["name"]: i for i in plugins.plugin_info()}
    assert info["numbaconv.registry.builtin"]["hooks"] == ["register_layers", "register_models"]


def test_build_model_options():
    model = numbaconv.build_model("lenet", activation="relu", pool="max")
    names = [type(layer).__name__ for layer in model]
    assert names[:3] == ["Conv2d", "ReLU", "MaxPool2d"] and len(model) == 12
    with pytest.raises(ValueError, match="activation"):
        numbaconv.build_model("lenet", activation="gelu")
    with pytest.raises(ValueError, match="does not accept"):
        numbaconv.build_model("lenet", width=3)


def test_unknown_names_list_the_known_ones():
    with pytest.raises(KeyError, match="unknown model 'resnet'.*lenet"):
        plugins.get_model("resnet")
    with pytest.raises(KeyError, match="unknown layer 'Conv3d'.*Conv2d"):
        plugins.get_layer("Conv3d")


def test_a_plugin_adds_layers_models_and_commands(registered):
    import click

    @click.command(name="undo-hello")
    def hello():
        click.echo("hello from a plugin")

    registered("undo-twice", _plugin(
        register_layers=lambda register: register(Twice),
        register_models=lambda register: register(
            "undo-net", lambda: numbaconv.Sequential([Twice()]),
            train_defaults={"lr": 0.1}),
        register_commands=lambda cli: cli.add_command(hello)))
    assert numbaconv.get_layers()["Twice"] is Twice
    assert plugins.get_model("undo-net").plugin == "undo-twice"
    assert plugins.get_model("undo-net").train_defaults == {"lr": 0.1}
    assert len(numbaconv.build_model("undo-net")) == 1

    from numbaconv.cli.main import _load_plugin_commands, cli
    _load_plugin_commands()
    try:
        result = CliRunner().invoke(cli, ["undo-hello"])
        assert result.output == "hello from a plugin\n"
        listing = CliRunner().invoke(cli, ["layers"]).output
        assert "Twice" in listing and "undo-twice" in listing
    finally:
        cli.commands.pop("undo-hello", None)


def test_two_plugins_with_one_name_are_an_error_naming_both(registered):
    registered("undo-a", _plugin(register_layers=lambda register: register(Twice)))
    registered("undo-b", _plugin(register_layers=lambda register: register(Twice)))
    with pytest.raises(plugins.RegistryError, match="'Twice'.*'undo-a'.*'undo-b'"):
        numbaconv.get_layers()


def test_a_model_name_clash_is_an_error(registered):
    registered("undo-c", _plugin(
        register_models=lambda register: register("lenet", lambda: None)))
    with pytest.raises(plugins.RegistryError, match="'lenet'.*numbaconv.registry.builtin"):
        numbaconv.get_models()


def test_registering_a_non_layer_is_an_error(registered):
    registered("undo-d", _plugin(register_layers=lambda register: register(dict)))
    with pytest.raises(plugins.RegistryError, match="undo-d.*not a numbaconv.Layer"):
        numbaconv.get_layers()


def test_a_broken_plugin_warns_and_the_rest_works(monkeypatch):
    class BrokenEntryPoint:
        name, value = "undo-broken", "no_such_module_xyz"

        def load(self):
            raise ImportError("No module named 'no_such_module_xyz'")

    monkeypatch.setattr(plugins, "_loaded", False)
    monkeypatch.setattr(plugins, "entry_points", lambda group: [BrokenEntryPoint()])
    with pytest.warns(UserWarning, match="'undo-broken'.*no_such_module_xyz.*skipped"):
        plugins.load_plugins()
    assert "lenet" in numbaconv.get_models()


def test_load_plugins_env_limits_entry_points(monkeypatch):
    loaded = []

    class EntryPoint:
        name, value = "undo-limited", "x"

        def load(self):
            loaded.append(self.name)
            return _plugin()

    monkeypatch.setattr(plugins, "_loaded", False)
    monkeypatch.setattr(plugins, "entry_points", lambda group: [EntryPoint()])
    monkeypatch.setenv("NUMBACONV_LOAD_PLUGINS", "")
    plugins.load_plugins()
    assert loaded == []


def test_a_misspelled_hook_fails_loudly(registered):
    module = types.ModuleType("undo_typo")
    module.register_layer = hookimpl(lambda register: None, specname=None)
    module.register_layer.__name__ = "register_layer"
    with pytest.raises(Exception, match="register_layer"):
        registered("undo-typo", module)
        plugins.pm.check_pending()
