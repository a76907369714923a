"""Built-in models, registered through :mod:`numbaconv.registry.builtin`: LeNet, LeNet with
batch normalization, and D2L's chapter 7 networks (AlexNet, VGG-11, NiN, GoogLeNet,
ResNet-18, DenseNet)."""

from .alexnet import alexnet
from .densenet import densenet
from .googlenet import googlenet
from .lenet import lenet
from .lenet_bn import lenet_bn
from .nin import nin
from .resnet import resnet18
from .sizes import check_input_size, smallest_input
from .vgg import vgg11

__all__ = ["lenet", "lenet_bn", "alexnet", "vgg11", "nin", "googlenet", "resnet18", "densenet",
           "smallest_input", "check_input_size"]
