"""numbaconv: a convolutional-network engine whose compute is Numba.

    >>> import numbaconv
    >>> model = numbaconv.build_model("lenet", activation="relu", pool="max")
    >>> {"Conv2d", "BatchNorm2d", "AdaptiveAvgPool2d"} <= set(numbaconv.get_layers())
    True
"""

__version__ = "0.1.0"

from .threading_layer import prefer_tbb  # noqa: E402
from .vectors import prefer_wide_vectors  # noqa: E402

prefer_wide_vectors()  # before the kernels below are defined: see numbaconv.vectors
prefer_tbb()  # before the first parallel kernel runs: see numbaconv.threading_layer

from . import functional, shapes  # noqa: E402
from .interop import from_torch_state_dict  # noqa: E402
from .layers import Concat, Layer, Residual, Sequential  # noqa: E402
from .registry import build_model, get_layers, get_models, hookimpl  # noqa: E402

__all__ = [
    "__version__", "functional", "shapes", "hookimpl", "Layer", "Sequential", "Residual", "Concat",
    "build_model", "get_layers", "get_models", "from_torch_state_dict",
]
