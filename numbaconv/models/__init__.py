"""Built-in models, registered through :mod:`numbaconv.registry.builtin`."""

from .lenet import lenet
from .lenet_bn import lenet_bn

__all__ = ["lenet", "lenet_bn"]
