"""Built-in models, registered through :mod:`numbaconv.builtin_plugin`."""

from .lenet import lenet

__all__ = ["lenet"]
