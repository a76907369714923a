"""``LocalResponseNorm``: a numbaconv layer with PyTorch's arguments and numbers, computed by
:mod:`numbaconv_lrn.functional` on either device (a model moved with ``model.to("cuda")``
runs it on the GPU)."""

from __future__ import annotations

import numpy as np
from numbaconv.layers import Layer

from .functional import local_response_norm, local_response_norm_backward

__all__ = ["LocalResponseNorm"]


class LocalResponseNorm(Layer):
    """Local response normalization across channels, as ``torch.nn.LocalResponseNorm``.

    ``y[:, c] = x[:, c] / (k + alpha / size * sum of x[:, c']**2)**beta`` over the ``size``
    channels around c. AlexNet's (Krizhevsky et al. 2012, 3.3: ``n = 5, k = 2, alpha = 1e-4,
    beta = 0.75``, with alpha not divided by n) is ``LocalResponseNorm(5, alpha=5e-4,
    beta=0.75, k=2.0)``. No parameters; inputs (N, C, *spatial) of any float dtype.
    """

    def __init__(self, size, alpha=1e-4, beta=0.75, k=1.0):
        super().__init__()
        if isinstance(size, bool) or not hasattr(size, "__index__") or int(size) < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        self.size = int(size)
        self.alpha, self.beta, self.k = float(alpha), float(beta), float(k)
        #: (x, y, scale) of the last forward, which the backward needs
        self.saved = None

    def forward(self, x, training: bool = False):
        self.output_shape(np.shape(x))
        y, scale = local_response_norm(x, self.size, self.alpha, self.beta, self.k)
        self.saved = (x, y, scale)
        return y

    def backward(self, grad_y, need_input_grad: bool = True):
        x, y, scale = self.require_forward(self.saved)
        return local_response_norm_backward(grad_y, x, y, scale, self.size, self.alpha,
                                            self.beta)

    def output_shape(self, input_shape) -> tuple:
        shape = tuple(int(s) for s in input_shape)
        if len(shape) < 3:
            raise self.shape_error(f"expects an (N, C, *spatial) input, got shape {shape}")
        return shape

    def flops(self, input_shape) -> int:
        """Per element: ``size`` multiply-adds for the window, 3 for the scale, a power and
        a division counted as 2."""
        return (2 * self.size + 5) * int(np.prod(self.output_shape(input_shape)))

    def config(self) -> dict:
        return {"size": self.size, "alpha": self.alpha, "beta": self.beta, "k": self.k}

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"
