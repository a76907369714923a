"""The plugin manager: built-in plugins, entry-point plugins, and the registries they fill.

Built-ins are plugins too: :data:`DEFAULT_PLUGINS` are registered exactly like third-party
packages found under the entry-point group ``numbaconv``. ``$NUMBACONV_LOAD_PLUGINS`` (a comma
separated list of entry-point names, possibly empty) limits which third-party plugins load.

A plugin never takes numbaconv down: one that fails to import, implements an unknown hook or
whose hook raises is skipped or disabled with one :class:`PluginWarning` naming it and the
cause, and the rest goes on. Two plugins claiming one layer or model name are an error
(:class:`RegistryError`) for the user to resolve.
"""

from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass, field
from importlib.metadata import entry_points

import pluggy

from ..plain_text import first_line, plain_text
from . import hookspecs

ENTRY_POINT_GROUP = "numbaconv"
DEFAULT_PLUGINS = ("numbaconv.registry.builtin",)

pm = pluggy.PluginManager("numbaconv")
pm.add_hookspecs(hookspecs)
_loaded = False
_distributions: dict = {}  # entry-point name -> importlib.metadata.Distribution
_command_owners: dict = {}  # command name -> the plugin that added it to the numbaconv group


class RegistryError(ValueError):
    """Two plugins registered one name, or a registration is malformed."""


class UnknownNameError(KeyError):
    """A layer or model name that no plugin registered. ``str()`` lists the known names."""

    def __str__(self) -> str:
        return self.args[0]


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: ``factory(**options)`` builds a ``Sequential``; ``description`` is one
    line of plain text (reST markup stripped). ``train_defaults`` are ``numbaconv run``'s
    defaults for it (:data:`numbaconv.network.TRAIN_KEYS`); ``input_size``, when set, is the
    side its recipe resizes the images to (D2L's 224 for AlexNet), ``None`` for the data's
    own size."""

    name: str
    factory: object
    plugin: str
    description: str = ""
    train_defaults: dict = field(default_factory=dict)
    input_size: int | None = None


class PluginWarning(UserWarning):
    """A plugin failed and was skipped or disabled; the message names it and the cause."""


def load_plugins() -> None:
    """Register the built-in plugins and every installed entry-point plugin (once).

    A plugin that fails to import (``sys.exit()`` included) or implements a hook that does not
    exist is skipped with a :class:`PluginWarning` naming it and the cause; the rest load.
    """
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module_name in DEFAULT_PLUGINS:
        if pm.get_plugin(module_name) is None:
            pm.register(importlib.import_module(module_name), name=module_name)
    allowed = os.environ.get("NUMBACONV_LOAD_PLUGINS")
    allowed = None if allowed is None else {n.strip() for n in allowed.split(",") if n.strip()}
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        if allowed is not None and entry_point.name not in allowed:
            continue
        if pm.get_plugin(entry_point.name) is not None:
            continue
        dist = getattr(entry_point, "dist", None)
        try:
            pm.register(entry_point.load(), name=entry_point.name)
        except (Exception, SystemExit) as error:  # a broken plugin must not take us down
            _warn(f"numbaconv plugin {_describe(entry_point.name, dist)} failed to load from "
                  f"{entry_point.value} and is skipped: {_cause(error)}")
            continue
        _distributions[entry_point.name] = dist
    for name, plugin in pm.list_name_plugin():
        unknown = _unknown_hooks(plugin)
        if unknown:  # pluggy's check_pending would fail every command for this one plugin
            known = ", ".join(sorted(n for n, caller in vars(pm.hook).items()
                                     if caller.has_spec()))
            _disable(name, f"it implements the unknown hook {', '.join(map(repr, unknown))} "
                           f"(the hooks are {known})")


def _unknown_hooks(plugin) -> list[str]:
    """The hooks ``plugin`` implements that no hookspec declares (optional ones aside)."""
    return sorted(caller.name for caller in pm.get_hookcallers(plugin) or []
                  if not caller.has_spec()
                  and any(impl.plugin is plugin and not impl.optionalhook
                          for impl in caller.get_hookimpls()))


def _cause(error: BaseException) -> str:
    """``error`` in one line: its type and the first line of its message."""
    if isinstance(error, SystemExit):
        return f"it called sys.exit({'' if error.code is None else repr(error.code)})"
    message = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _describe(plugin_name: str, dist=None) -> str:
    """``'name'`` and, for an installed package, ``(distribution version)``."""
    dist = dist or _distributions.get(plugin_name)
    return f"{plugin_name!r} ({dist.metadata['Name']} {dist.version})" if dist \
        else repr(plugin_name)


def _warn(message: str) -> None:
    warnings.warn(message, PluginWarning, stacklevel=3)


def _disable(plugin_name: str, cause: str) -> None:
    """Unregister a plugin that failed, and say which and why."""
    _warn(f"numbaconv plugin {_describe(plugin_name)} is disabled: {cause}")
    pm.unregister(name=plugin_name)


def _collect(hook_name: str, registry: dict, owners: dict, make_register) -> None:
    """Call every implementation of ``hook_name`` with a ``register`` that knows its plugin.

    A conflict (:class:`RegistryError`) is the user's to resolve and propagates; any other
    exception disables the plugin that raised it and drops what it registered.
    """
    load_plugins()
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        try:
            impl.function(register=make_register(impl.plugin_name))
        except RegistryError:
            raise
        except (Exception, SystemExit) as error:
            for name in [n for n, plugin in owners.items() if plugin == impl.plugin_name]:
                del registry[name], owners[name]
            _disable(impl.plugin_name, f"its {hook_name} hook raised {_cause(error)}")


def add_commands(group) -> None:
    """Let every plugin's ``register_commands`` add commands to the Click ``group``.

    A plugin may not replace or remove a command it did not add (numbaconv's own, or another
    plugin's): that command stays, and the plugin is named in a warning. A hook that raises
    disables its plugin and takes back the commands it added.
    """
    load_plugins()
    for impl in pm.hook.register_commands.get_hookimpls():
        plugin = impl.plugin_name
        before = dict(group.commands)
        try:
            impl.function(cli=group)
        except (Exception, SystemExit) as error:
            group.commands.clear()
            group.commands.update(before)
            _disable(plugin, f"its register_commands hook raised {_cause(error)}")
            continue
        for name in sorted(before.keys() | group.commands.keys()):
            if group.commands.get(name) is before.get(name):
                continue
            owner = _command_owners.get(name) if name in before else plugin  # None: ours
            if owner == plugin:
                _command_owners[name] = plugin
                continue
            group.commands[name] = before[name]
            whose = "numbaconv's own" if owner is None else f"plugin {owner!r}'s"
            _warn(f"numbaconv plugin {_describe(plugin)} tried to replace or remove {whose} "
                  f"command {name!r}; that command stays and the plugin's is skipped")


def _claim(kind: str, registry: dict, name: str, plugin: str, owners: dict) -> None:
    if not isinstance(name, str) or not name:
        raise RegistryError(f"plugin {plugin!r} registered a {kind} with an invalid name "
                            f"{name!r}")
    if name in registry:
        raise RegistryError(f"{kind} {name!r} is registered by both plugin {owners[name]!r} "
                            f"and plugin {plugin!r}; uninstall or disable one of them "
                            f"(NUMBACONV_LOAD_PLUGINS limits which plugins load)")
    owners[name] = plugin


def layer_entries() -> dict[str, tuple[type, str]]:
    """``{name: (layer class, plugin name)}`` of every registered layer."""
    from ..layers import Layer

    registry: dict[str, tuple[type, str]] = {}
    owners: dict[str, str] = {}

    def make_register(plugin):
        def register(layer_class):
            if not (isinstance(layer_class, type) and issubclass(layer_class, Layer)):
                raise RegistryError(f"plugin {plugin!r} registered {layer_class!r}, which is "
                                    "not a numbaconv.Layer subclass")
            name = layer_class.__name__
            _claim("layer", registry, name, plugin, owners)
            registry[name] = (layer_class, plugin)
        return register

    _collect("register_layers", registry, owners, make_register)
    return registry


def model_entries() -> dict[str, ModelEntry]:
    """``{name: ModelEntry}`` of every registered model."""
    registry: dict[str, ModelEntry] = {}
    owners: dict[str, str] = {}

    def make_register(plugin):
        def register(name, factory, *, description="", train_defaults=None, input_size=None):
            if not callable(factory):
                raise RegistryError(f"plugin {plugin!r} registered model {name!r} with a "
                                    f"factory that is not callable: {factory!r}")
            if input_size is not None and (isinstance(input_size, bool)
                                           or not isinstance(input_size, int) or input_size < 1):
                raise RegistryError(f"plugin {plugin!r} registered model {name!r} with "
                                    f"input_size {input_size!r}; it must be a positive int")
            _claim("model", registry, name, plugin, owners)
            doc = plain_text(description) if description else first_line(factory)
            registry[name] = ModelEntry(name, factory, plugin, doc, dict(train_defaults or {}),
                                        input_size)
        return register

    _collect("register_models", registry, owners, make_register)
    return registry


def get_layers() -> dict[str, type]:
    """Every registered layer class by name."""
    return {name: cls for name, (cls, _) in layer_entries().items()}


def get_models() -> dict[str, object]:
    """Every registered model factory by name."""
    return {name: entry.factory for name, entry in model_entries().items()}


def get_layer(name: str) -> type:
    """The layer class registered as ``name``; :class:`UnknownNameError` lists the known ones."""
    layers = get_layers()
    if name not in layers:
        raise UnknownNameError(f"unknown layer {name!r}; known layers: "
                               f"{', '.join(sorted(layers))}")
    return layers[name]


def get_model(name: str) -> ModelEntry:
    """The model registered as ``name``; :class:`UnknownNameError` lists the known ones."""
    models = model_entries()
    if name not in models:
        raise UnknownNameError(f"unknown model {name!r}; known models: "
                               f"{', '.join(sorted(models))}")
    return models[name]


def build_model(name: str, **options):
    """Build the registered model ``name`` with its ``options`` (e.g. ``activation='relu'``)."""
    entry = get_model(name)
    try:
        return entry.factory(**options)
    except TypeError as error:
        shown = {k: v for k, v in options.items() if k != "rng"}  # the seed is not the user's
        raise ValueError(f"model {name!r} does not accept the options {shown}: {error}") \
            from error


def plugin_info() -> list[dict]:
    """Name, version and hooks of every loaded plugin, built-ins included."""
    load_plugins()
    info = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: item[0]):
        dist = _distributions.get(name)  # None for the built-ins
        info.append({
            "name": name,
            "package": dist.metadata["Name"] if dist else "numbaconv",
            "version": dist.version if dist else _own_version(),
            "hooks": sorted(h.name for h in pm.get_hookcallers(plugin) or []),
        })
    return info


def _own_version() -> str:
    from .. import __version__
    return __version__
