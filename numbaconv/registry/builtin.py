"""numbaconv's own layers and models, registered through the same hooks as any plugin."""

from ..layers import LAYER_TYPES
from ..models.lenet import TRAIN_DEFAULTS, lenet
from .hookspecs import hookimpl


@hookimpl
def register_layers(register):
    for layer_class in LAYER_TYPES.values():
        register(layer_class)


@hookimpl
def register_models(register):
    register("lenet", lenet, train_defaults=TRAIN_DEFAULTS)
