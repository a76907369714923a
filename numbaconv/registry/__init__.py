"""The registry: the hook specifications (:mod:`.hookspecs`), the plugin manager that loads
built-ins and third-party plugins alike (:mod:`.manager`), and numbaconv's own plugin
(:mod:`.builtin`)."""

from .hookspecs import hookimpl
from .manager import (
    DEFAULT_PLUGINS,
    ENTRY_POINT_GROUP,
    ModelEntry,
    PluginWarning,
    RegistryError,
    UnknownNameError,
    add_commands,
    build_model,
    get_layer,
    get_layers,
    get_model,
    get_models,
    layer_entries,
    load_plugins,
    model_entries,
    plugin_info,
    pm,
)

__all__ = ["hookimpl", "DEFAULT_PLUGINS", "ENTRY_POINT_GROUP", "ModelEntry", "PluginWarning",
           "RegistryError", "UnknownNameError", "add_commands", "build_model", "get_layer",
           "get_layers", "get_model", "get_models", "layer_entries", "load_plugins",
           "model_entries", "plugin_info", "pm"]
