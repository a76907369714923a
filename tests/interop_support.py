"""Helpers of the interop tests (ONNX, PyTorch weights, own data, predict)."""

from __future__ import annotations

import importlib
import os

import numpy as np
import pytest


def require(module: str, extra: str):
    """Import ``module``, or skip the calling test; with ``CI`` set a missing module fails
    (``.ci/run`` installs the extras)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{module} is required when CI is set (pip install "
                        f"'numbaconv[{extra}]'): {exc}", pytrace=False)
        pytest.skip(f"{module} is not installed (pip install 'numbaconv[{extra}]')")


def require_layer(name: str):
    """The registered layer class ``name`` (the example plugin's ``BatchNorm2d``...), or skip
    the calling test; with ``CI`` set (which installs plugins/numbaconv-batchnorm) fail."""
    import numbaconv

    layer_class = numbaconv.get_layers().get(name)
    if layer_class is None:
        message = f"no plugin registers {name}: pip install -e plugins/numbaconv-batchnorm"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return layer_class


def sample_images(n: int = 16) -> np.ndarray:
    """The first ``n`` test images of the Fashion-MNIST sample shipped with numbaconv, as a
    float32 (n, 1, 28, 28) batch."""
    from numbaconv.data import as_float_batch
    from numbaconv.data.fashion_mnist import SAMPLE_DIR, load_dir

    return as_float_batch(load_dir(SAMPLE_DIR).test_images[:n])


def onnxruntime_logits(proto, x: np.ndarray) -> np.ndarray:
    """What onnxruntime computes for the ``onnx.ModelProto`` ``proto`` on ``x``."""
    ort = require("onnxruntime", "onnx")
    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def d2l_lenet(torch):
    """D2L's LeNet (section 6.6) in PyTorch, with D2L's Xavier initialisation."""
    nn = torch.nn
    net = nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=2), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.Sigmoid(),
        nn.Linear(120, 84), nn.Sigmoid(),
        nn.Linear(84, 10))
    for module in net:
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)
    return net
