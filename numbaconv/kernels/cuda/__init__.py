"""The CUDA backend: Numba CUDA kernels for convolution, pooling and training ops.

Importing ``numbaconv`` imports only this package's ``device`` helpers, and neither imports
numba-cuda: the kernel modules (``conv``, ``pool``, ``ops``, ``steps``) load on first use
of one of the names below, and ``device`` imports numba-cuda inside its functions. Check
``cuda_available()`` before using the kernels.

All functions take numba CUDA device arrays (C-contiguous, float32 or float64, already
validated by ``numbaconv.functional``) and return device arrays of the input dtype, from the
current step's buffers when a step is captured or replayed (``steps``).
"""

from __future__ import annotations

import importlib

from .device import (
    cuda_available,
    device_name,
    is_device_array,
    simulator_enabled,
    synchronize,
    to_device,
    to_host,
    zeros,
    zeros_like,
)

_LAZY = {
    "conv": ("conv2d_forward", "conv2d_backward"),
    "pool": ("max_pool2d_forward", "max_pool2d_backward",
             "avg_pool2d_forward", "avg_pool2d_backward"),
    "ops": ("bias_act_forward", "bias_act_backward", "activation_forward",
            "activation_backward", "relu_forward", "relu_backward", "sigmoid_forward",
            "sigmoid_backward", "tanh_forward", "tanh_backward", "matmul", "linear_forward",
            "linear_backward", "cross_entropy", "cross_entropy_backward", "correct",
            "count_nonfinite",
            "accumulate", "take_rows", "dropout_forward", "add", "multiply", "concat_channels",
            "split_channels", "pool2x2_forward", "act_pool2x2_backward", "sgd_step",
            "adam_step", "sum_over_batch_and_space"),
    "norm": ("batch_norm_forward", "batch_norm_backward"),
    "adaptive_pool": ("adaptive_avg_pool2d_forward", "adaptive_avg_pool2d_backward",
                      "adaptive_max_pool2d_forward"),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}

__all__ = [
    "cuda_available", "device_name", "is_device_array", "simulator_enabled", "synchronize",
    "to_device", "to_host", "zeros", "zeros_like", *_WHERE,
]


def __getattr__(name):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE))
