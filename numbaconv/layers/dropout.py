"""Inverted dropout (``torch.nn.Dropout``)."""

from __future__ import annotations

import numpy as np

from ..init import as_generator
from .base import Layer

__all__ = ["Dropout"]


class Dropout(Layer):
    """Zero each element with probability ``p`` and scale the rest by ``1 / (1 - p)``.

    Active only in ``forward(x, training=True)``; otherwise the identity (the input array
    itself is returned, and backward passes the gradient through). The kept-and-scaled mask
    of the last training forward is stored and reused by backward, so the gradient flows
    through exactly the elements that were kept. ``rng`` (a Generator or seed) makes the
    masks reproducible.
    """

    def __init__(self, p=0.5, *, rng=None):
        super().__init__()
        if isinstance(p, bool) or not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p!r}")
        self.p = float(p)
        self.rng = as_generator(rng)
        self._mask = None
        self._forwarded = False

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        self._forwarded = True
        x = np.asarray(x)
        if not training or self.p == 0.0:
            self._mask = None
            return x
        dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.dtype(np.float64)
        if self.p == 1.0:
            mask = np.zeros(x.shape, dtype=dtype)
        else:
            # keep where u >= p with u ~ U[0, 1), so P(keep) = 1 - p
            mask = (self.rng.random(x.shape, dtype=np.float32) >= self.p).astype(dtype)
            mask *= 1.0 / (1.0 - self.p)
        self._mask = mask
        return x * mask

    def backward(self, grad_y: np.ndarray, need_input_grad: bool = True) -> np.ndarray:
        if not self._forwarded:
            raise RuntimeError("Dropout.backward called before forward")
        if self._mask is None:
            return grad_y
        return grad_y * self._mask

    @property
    def mask(self) -> np.ndarray | None:
        """The scaled mask (0 or ``1/(1-p)``) of the last training forward, else ``None``."""
        return self._mask

    def config(self) -> dict:
        return {"p": self.p}
