"""numbaconv's own layers and models, registered through the same hooks as any plugin."""

from importlib import import_module

from ..layers import LAYER_TYPES
from ..models.lenet import TRAIN_DEFAULTS, lenet
from ..models.lenet_bn import TRAIN_DEFAULTS as LENET_BN_DEFAULTS
from ..models.lenet_bn import lenet_bn
from .hookspecs import hookimpl

#: D2L's chapter 7 models: (registry name, module of numbaconv.models, factory). Each module
#: holds D2L's recipe (TRAIN_DEFAULTS) and the side it resizes the images to (INPUT_SIZE).
ZOO = (("alexnet", "alexnet", "alexnet"), ("vgg11", "vgg", "vgg11"), ("nin", "nin", "nin"),
       ("googlenet", "googlenet", "googlenet"), ("resnet18", "resnet", "resnet18"),
       ("densenet", "densenet", "densenet"))


@hookimpl
def register_layers(register):
    for layer_class in LAYER_TYPES.values():
        register(layer_class)


@hookimpl
def register_models(register):
    register("lenet", lenet, train_defaults=TRAIN_DEFAULTS)
    register("lenet-bn", lenet_bn, train_defaults=LENET_BN_DEFAULTS,
             description="LeNet-5 with batch normalization (D2L 8.5), 1x28x28 inputs")
    for name, module_name, factory in ZOO:
        module = import_module(f"numbaconv.models.{module_name}")
        register(name, getattr(module, factory), train_defaults=module.TRAIN_DEFAULTS,
                 input_size=module.INPUT_SIZE)
