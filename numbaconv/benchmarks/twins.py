"""PyTorch twins of numbaconv's models, as D2L's PyTorch code writes them (d2l-en v0.17,
chapter 7, with explicit in-channels), for the benchmarks, bench/zoo_accuracy.py and the
parity tests.

This module imports nothing from numbaconv (nor torch itself: the functions take the module),
so that ``bench/memory.py`` and ``bench/zoo_accuracy.py`` can load it by its path into a process
that holds PyTorch alone. Where D2L hard-codes the first Linear's input for 224x224 images
(AlexNet's 6400, VGG's ``out_channels * 7 * 7``), the twin takes what its convolutions leave of
an ``input_size`` image, as D2L's later ``nn.LazyLinear`` does: the same number at 224.
"""

__all__ = ["TWINS", "torch_alexnet", "torch_vgg11", "torch_nin", "torch_googlenet",
           "torch_resnet18", "torch_densenet"]


def _flat_features(torch, features, in_channels, input_size):
    """What ``features`` (ending in Flatten) make of one ``input_size`` image (on the device
    of their parameters: the meta device counts without allocating)."""
    with torch.no_grad():
        x = torch.zeros(1, in_channels, input_size, input_size,
                        device=next(features.parameters()).device)
        return features(x).shape[1]


def _dense_head(torch, features, in_channels, input_size, num_classes):
    """AlexNet's and VGG's: ``features`` (ending in Flatten), then D2L's three Linear layers,
    the first taking what the features leave of an ``input_size`` image (D2L's 6400 and
    128 x 7 x 7 at 224)."""
    nn = torch.nn
    flat = _flat_features(torch, nn.Sequential(*features), in_channels, input_size)
    return nn.Sequential(
        *features,
        nn.Linear(flat, 4096), nn.ReLU(), nn.Dropout(p=0.5),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(p=0.5),
        nn.Linear(4096, num_classes))


def torch_alexnet(torch, input_size: int = 224, num_classes: int = 10, in_channels: int = 1):
    """D2L's PyTorch AlexNet (section 7.1)."""
    nn = torch.nn
    return _dense_head(torch, [
        nn.Conv2d(in_channels, 96, kernel_size=11, stride=4, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(96, 256, kernel_size=5, padding=2), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(256, 384, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 384, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Flatten()], in_channels, input_size, num_classes)


def torch_vgg11(torch, ratio: int = 4, input_size: int = 224, num_classes: int = 10,
                in_channels: int = 1):
    """D2L's PyTorch VGG-11 (section 7.2) with its channels divided by ``ratio`` (D2L trains
    with 4)."""
    nn = torch.nn
    blocks, channels = [], in_channels
    for num_convs, out_channels in ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512)):
        layers = []
        for _ in range(num_convs):
            layers += [nn.Conv2d(channels, out_channels // ratio, kernel_size=3, padding=1),
                       nn.ReLU()]
            channels = out_channels // ratio
        layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        blocks.append(nn.Sequential(*layers))
    return _dense_head(torch, blocks + [nn.Flatten()], in_channels, input_size, num_classes)


def torch_nin(torch, num_classes: int = 10, in_channels: int = 1):
    """D2L's PyTorch NiN (section 7.3)."""
    nn = torch.nn

    def nin_block(in_c, out_c, kernel_size, strides, padding):
        return nn.Sequential(
            nn.Conv2d(in_c, out_c, kernel_size, strides, padding), nn.ReLU(),
            nn.Conv2d(out_c, out_c, kernel_size=1), nn.ReLU(),
            nn.Conv2d(out_c, out_c, kernel_size=1), nn.ReLU())

    return nn.Sequential(
        nin_block(in_channels, 96, kernel_size=11, strides=4, padding=0),
        nn.MaxPool2d(3, stride=2),
        nin_block(96, 256, kernel_size=5, strides=1, padding=2),
        nn.MaxPool2d(3, stride=2),
        nin_block(256, 384, kernel_size=3, strides=1, padding=1),
        nn.MaxPool2d(3, stride=2),
        nn.Dropout(0.5),
        nin_block(384, num_classes, kernel_size=3, strides=1, padding=1),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten())


def torch_googlenet(torch, num_classes: int = 10, in_channels: int = 1):
    """D2L's PyTorch GoogLeNet (section 7.4)."""
    nn, F = torch.nn, torch.nn.functional

    class Inception(nn.Module):
        def __init__(self, in_c, c1, c2, c3, c4):
            super().__init__()
            self.p1_1 = nn.Conv2d(in_c, c1, kernel_size=1)
            self.p2_1 = nn.Conv2d(in_c, c2[0], kernel_size=1)
            self.p2_2 = nn.Conv2d(c2[0], c2[1], kernel_size=3, padding=1)
            self.p3_1 = nn.Conv2d(in_c, c3[0], kernel_size=1)
            self.p3_2 = nn.Conv2d(c3[0], c3[1], kernel_size=5, padding=2)
            self.p4_1 = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
            self.p4_2 = nn.Conv2d(in_c, c4, kernel_size=1)

        def forward(self, x):
            p1 = F.relu(self.p1_1(x))
            p2 = F.relu(self.p2_2(F.relu(self.p2_1(x))))
            p3 = F.relu(self.p3_2(F.relu(self.p3_1(x))))
            p4 = F.relu(self.p4_2(self.p4_1(x)))
            return torch.cat((p1, p2, p3, p4), dim=1)

    def pool():
        return nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    b1 = nn.Sequential(nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3),
                       nn.ReLU(), pool())
    b2 = nn.Sequential(nn.Conv2d(64, 64, kernel_size=1), nn.ReLU(),
                       nn.Conv2d(64, 192, kernel_size=3, padding=1), nn.ReLU(), pool())
    b3 = nn.Sequential(Inception(192, 64, (96, 128), (16, 32), 32),
                       Inception(256, 128, (128, 192), (32, 96), 64), pool())
    b4 = nn.Sequential(Inception(480, 192, (96, 208), (16, 48), 64),
                       Inception(512, 160, (112, 224), (24, 64), 64),
                       Inception(512, 128, (128, 256), (24, 64), 64),
                       Inception(512, 112, (144, 288), (32, 64), 64),
                       Inception(528, 256, (160, 320), (32, 128), 128), pool())
    b5 = nn.Sequential(Inception(832, 256, (160, 320), (32, 128), 128),
                       Inception(832, 384, (192, 384), (48, 128), 128),
                       nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten())
    return nn.Sequential(b1, b2, b3, b4, b5, nn.Linear(1024, num_classes))


def torch_densenet(torch, num_classes: int = 10, in_channels: int = 1):
    """D2L's PyTorch DenseNet (section 7.7)."""
    nn = torch.nn

    def conv_block(in_c, out_c):
        return nn.Sequential(nn.BatchNorm2d(in_c), nn.ReLU(),
                             nn.Conv2d(in_c, out_c, kernel_size=3, padding=1))

    class DenseBlock(nn.Module):
        def __init__(self, num_convs, in_c, out_c):
            super().__init__()
            self.net = nn.Sequential(*[conv_block(out_c * i + in_c, out_c)
                                       for i in range(num_convs)])

        def forward(self, x):
            for blk in self.net:  # each block's input and output joined along the channels
                x = torch.cat((x, blk(x)), dim=1)
            return x

    def transition_block(in_c, out_c):
        return nn.Sequential(nn.BatchNorm2d(in_c), nn.ReLU(),
                             nn.Conv2d(in_c, out_c, kernel_size=1),
                             nn.AvgPool2d(kernel_size=2, stride=2))

    b1 = nn.Sequential(nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3),
                       nn.BatchNorm2d(64), nn.ReLU(),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    channels, growth_rate, arch = 64, 32, (4, 4, 4, 4)
    blocks = []
    for i, num_convs in enumerate(arch):
        blocks.append(DenseBlock(num_convs, channels, growth_rate))
        channels += num_convs * growth_rate
        if i != len(arch) - 1:  # a transition halving the channels between dense blocks
            blocks.append(transition_block(channels, channels // 2))
            channels //= 2
    return nn.Sequential(b1, *blocks, nn.BatchNorm2d(channels), nn.ReLU(),
                         nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(),
                         nn.Linear(channels, num_classes))


def torch_resnet18(torch, num_classes: int = 10, in_channels: int = 1):
    """D2L's PyTorch ResNet-18 (d2l-en v0.17, section 7.6, explicit in-channels): the twin of
    ``numbaconv.build_model("resnet18")``, its parameters named as
    :func:`numbaconv.benchmarks.zoo.resnet_name` says."""
    nn, F = torch.nn, torch.nn.functional

    class Residual(nn.Module):
        def __init__(self, input_channels, num_channels, use_1x1conv=False, strides=1):
            super().__init__()
            self.conv1 = nn.Conv2d(input_channels, num_channels, kernel_size=3, padding=1,
                                   stride=strides)
            self.conv2 = nn.Conv2d(num_channels, num_channels, kernel_size=3, padding=1)
            self.conv3 = nn.Conv2d(input_channels, num_channels, kernel_size=1,
                                   stride=strides) if use_1x1conv else None
            self.bn1 = nn.BatchNorm2d(num_channels)
            self.bn2 = nn.BatchNorm2d(num_channels)

        def forward(self, X):
            Y = F.relu(self.bn1(self.conv1(X)))
            Y = self.bn2(self.conv2(Y))
            if self.conv3:
                X = self.conv3(X)
            Y += X
            return F.relu(Y)

    def resnet_block(input_channels, num_channels, num_residuals, first_block=False):
        return [Residual(input_channels, num_channels, use_1x1conv=True, strides=2)
                if i == 0 and not first_block else Residual(num_channels, num_channels)
                for i in range(num_residuals)]

    b1 = nn.Sequential(nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3),
                       nn.BatchNorm2d(64), nn.ReLU(),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b2 = nn.Sequential(*resnet_block(64, 64, 2, first_block=True))
    b3 = nn.Sequential(*resnet_block(64, 128, 2))
    b4 = nn.Sequential(*resnet_block(128, 256, 2))
    b5 = nn.Sequential(*resnet_block(256, 512, 2))
    return nn.Sequential(b1, b2, b3, b4, b5, nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(),
                         nn.Linear(512, num_classes))


#: model name -> its twin, called as ``TWINS[name](torch, **options)`` with numbaconv's model
#: options (``input_size`` for AlexNet and VGG, ``ratio`` for VGG, ``num_classes``,
#: ``in_channels``)
TWINS = {"alexnet": torch_alexnet, "vgg11": torch_vgg11, "nin": torch_nin,
         "googlenet": torch_googlenet, "resnet18": torch_resnet18, "densenet": torch_densenet}
