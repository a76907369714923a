"""Built-in models, registered through :mod:`numbaconv.registry.builtin`."""

from .lenet import lenet

__all__ = ["lenet"]
