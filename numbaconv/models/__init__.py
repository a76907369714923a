"""Built-in models, registered through :mod:`numbaconv.registry.builtin`: LeNet and D2L's
chapter 7 networks (AlexNet, VGG-11, NiN, GoogLeNet, ResNet-18, DenseNet)."""

from .alexnet import alexnet
from .lenet import lenet
from .lenet_bn import lenet_bn
from .sizes import check_input_size, smallest_input
from .vgg import vgg11

__all__ = ["lenet", "lenet_bn", "alexnet", "vgg11", "smallest_input", "check_input_size"]
