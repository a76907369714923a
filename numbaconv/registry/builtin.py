"""numbaconv's own layers and models, registered through the same hooks as any plugin."""

from ..layers import LAYER_TYPES
from ..models.lenet import TRAIN_DEFAULTS, lenet
from ..models.lenet_bn import TRAIN_DEFAULTS as LENET_BN_DEFAULTS
from ..models.lenet_bn import lenet_bn
from .hookspecs import hookimpl


@hookimpl
def register_layers(register):
    for layer_class in LAYER_TYPES.values():
        register(layer_class)


@hookimpl
def register_models(register):
    register("lenet", lenet, train_defaults=TRAIN_DEFAULTS)
    register("lenet-bn", lenet_bn, train_defaults=LENET_BN_DEFAULTS,
             description="LeNet-5 with batch normalization (D2L 8.5), 1x28x28 inputs")
