"""Softmax cross-entropy (``torch.nn.functional.cross_entropy``, mean reduction) and accuracy
on NumPy arrays, and the argument checks :func:`numbaconv.functional.cross_entropy` shares
(which also runs on a GPU)."""

from __future__ import annotations

import numpy as np

__all__ = ["log_softmax", "softmax", "softmax_cross_entropy", "accuracy", "check_logits",
           "check_labels"]


def check_logits(logits) -> np.ndarray:
    """``logits`` as a floating (N, K) array, else a ValueError/TypeError naming the shape."""
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (N, K), got shape {logits.shape}")
    if not np.issubdtype(logits.dtype, np.floating):
        raise TypeError(f"logits must be floating point, got dtype {logits.dtype}")
    return logits


def check_labels(labels, logits: np.ndarray) -> np.ndarray:
    """``labels`` as an int (N,) array of classes in [0, K) for ``logits`` (N, K), else an
    error naming the shapes or the values."""
    labels = np.asarray(labels)
    n, k = logits.shape
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) to match logits {logits.shape}, "
                         f"got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integers (class indices), got dtype {labels.dtype}")
    if n and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"labels must lie in [0, {k}), got values from {labels.min()} "
                         f"to {labels.max()}")
    return labels


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """``log(softmax(logits))`` over the last axis, by log-sum-exp (no overflow)."""
    logits = np.asarray(logits)
    z = logits - logits.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=-1, keepdims=True))
    z -= lse
    return z


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, stable for any finite logits."""
    logits = np.asarray(logits)
    e = logits - logits.max(axis=-1, keepdims=True)
    np.exp(e, out=e)
    e /= e.sum(axis=-1, keepdims=True)
    return e


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of ``softmax(logits)`` against integer ``labels`` and its gradient.

    ``logits`` ``(N, K)`` float, ``labels`` ``(N,)`` ints in ``[0, K)``. Returns
    ``(loss, grad_logits)``: ``loss`` a Python float, ``grad_logits = (softmax - onehot) / N``
    with the logits' shape and dtype. Stable for huge logits (log-sum-exp).
    """
    logits = check_logits(logits)
    labels = check_labels(labels, logits)
    n = logits.shape[0]
    if n == 0:
        raise ValueError("softmax_cross_entropy needs at least one example")
    rows = np.arange(n)
    logp = log_softmax(logits)
    loss = -float(logp[rows, labels].sum(dtype=np.float64)) / n
    grad = np.exp(logp, out=logp)          # softmax, reusing the buffer
    grad[rows, labels] -= 1
    grad /= n
    return loss, grad


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose arg-max logit is the label (D2L's ``accuracy`` divided by N)."""
    logits = check_logits(logits)
    labels = check_labels(labels, logits)
    if logits.shape[0] == 0:
        raise ValueError("accuracy needs at least one example")
    return float(np.mean(logits.argmax(axis=1) == labels))
