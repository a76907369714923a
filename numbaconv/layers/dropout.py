"""Inverted dropout (``torch.nn.Dropout``), computed by ``numbaconv.functional``."""

from __future__ import annotations

import numpy as np

from .. import functional as F
from ..init import as_generator
from .base import Layer

__all__ = ["Dropout"]


class Dropout(Layer):
    """Zero each element with probability ``p`` and scale the rest by ``1 / (1 - p)``.

    Active only in ``forward(x, training=True)``; otherwise the identity (the input array
    itself is returned, and backward passes the gradient through). The kept-and-scaled mask
    of the last training forward is stored and reused by backward, so the gradient flows
    through exactly the elements that were kept. ``rng`` (a Generator or seed) makes the
    masks reproducible; they are drawn on the host, so a model on a GPU draws the same masks
    as on the CPU (:func:`numbaconv.functional.dropout`).
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
        y, self._mask = F.dropout(x, self.p, training, rng=self.rng, return_mask=True)
        return y

    def backward(self, grad_y: np.ndarray, need_input_grad: bool = True) -> np.ndarray:
        if not self._forwarded:
            raise RuntimeError("Dropout.backward called before forward")
        return F.dropout_backward(grad_y, self._mask)

    @property
    def mask(self) -> np.ndarray | None:
        """The scaled mask (0 or ``1/(1-p)``) of the last training forward, else ``None``."""
        return self._mask

    def config(self) -> dict:
        return {"p": self.p}
