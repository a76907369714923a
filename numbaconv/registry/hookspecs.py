"""The plugin contract: the hooks a numbaconv plugin may implement.

A plugin is a module (or object) with functions marked ``@numbaconv.hookimpl`` whose names are
the hooks below. Built-in layers and models are registered through these same hooks. A
third-party package makes itself known under the entry-point group ``numbaconv``::

    [project.entry-points.numbaconv]
    my_plugin = "my_package.plugin"

A plugin that implements a hook not declared here, or whose hook raises, is disabled as a whole
with a warning naming it; numbaconv goes on without it.
"""

import pluggy

hookspec = pluggy.HookspecMarker("numbaconv")
hookimpl = pluggy.HookimplMarker("numbaconv")


@hookspec
def register_layers(register):
    """Register layer classes: ``register(LayerClass)``; the registry name is the class name."""


@hookspec
def register_models(register):
    """Register models: ``register("name", factory)``; ``factory(**options)`` -> Sequential.

    Optional keywords: ``description``, ``train_defaults`` (``numbaconv run``'s defaults: a
    dict of optimizer, lr, batch_size, epochs) and ``input_size`` (the side the model's recipe
    resizes the images to)."""


@hookspec
def register_commands(cli):
    """Add commands to the ``numbaconv`` Click group ``cli``.

    A command may not replace or remove numbaconv's own commands (``run``, ``evaluate``, ...)
    or another plugin's: such a change is undone, with a warning naming the plugin.
    """
