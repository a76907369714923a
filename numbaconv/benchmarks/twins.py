"""PyTorch twins of numbaconv's models, as D2L's PyTorch code writes them, for the benchmarks.

This module imports nothing from numbaconv (nor torch itself: the functions take the module),
so that ``bench/memory.py`` can load it by its path into a process that holds PyTorch alone.
"""

__all__ = ["torch_resnet18"]


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
