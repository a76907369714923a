"""The training loop: mini-batch SGD/Adam over a dataset, per-epoch metrics, determinism.

Every random choice derives from one seed: the initial weights, and each epoch's shuffle and
dropout masks from ``(seed, epoch)``. So the same seed and thread count give the same metrics,
and a run resumed from a checkpoint ends exactly where an uninterrupted one would.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from .losses import softmax_cross_entropy
from .optim import SGD, Adam

OPTIMIZERS = ("sgd", "adam")
EVAL_BATCH = 1024


class Diverged(Exception):
    """The loss stopped being finite."""

    def __init__(self, epoch: int, batch: int, lr: float):
        super().__init__(f"the loss became NaN or infinite at epoch {epoch}, batch {batch}; "
                         f"try a lower learning rate than {lr:g} (--lr)")
        self.epoch, self.batch = epoch, batch


@dataclass
class Settings:
    """How to train: D2L's LeNet recipe by default."""

    epochs: int = 10
    batch_size: int = 256
    lr: float = 0.9
    optimizer: str = "sgd"
    seed: int = 0

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if not self.lr > 0 or not np.isfinite(self.lr):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")


@dataclass
class EpochMetrics:
    """One epoch's results, as written to ``--metrics`` (one JSON object per line)."""

    epoch: int
    train_loss: float
    train_acc: float
    test_acc: float
    train_seconds: float
    eval_seconds: float
    examples_per_sec: float

    def as_dict(self) -> dict:
        return asdict(self)


def make_optimizer(name: str, params: dict, lr: float):
    """``sgd`` (plain, as D2L trains LeNet) or ``adam`` (PyTorch's defaults) over ``params``."""
    if name == "sgd":
        return SGD(params, lr=lr)
    if name == "adam":
        return Adam(params, lr=lr)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def epoch_rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
    """The generator for one purpose (``stream``) in one epoch of a seeded run."""
    return np.random.default_rng([seed, epoch, stream])


def _reseed_layers(model, seed: int, epoch: int) -> None:
    # Layers that draw random numbers while training (Dropout) keep a Generator in ``rng``.
    for index, layer in enumerate(model):
        if isinstance(getattr(layer, "rng", None), np.random.Generator):
            layer.rng = epoch_rng(seed, epoch, 1 + index)


def predict(model, images: np.ndarray, batch_size: int = EVAL_BATCH) -> np.ndarray:
    """Class indices (N,) for float32 images (N, C, H, W), in evaluation mode."""
    out = np.empty(len(images), dtype=np.int64)
    for start in range(0, len(images), batch_size):
        logits = model.forward(images[start:start + batch_size], training=False)
        out[start:start + batch_size] = logits.argmax(axis=1)
    return out


def evaluate(model, images: np.ndarray, labels: np.ndarray,
             batch_size: int = EVAL_BATCH) -> float:
    """Accuracy of ``model`` on float32 ``images`` (N, C, H, W) with int ``labels`` (N,)."""
    if len(images) == 0:
        raise ValueError("the test set is empty")
    return float((predict(model, images, batch_size) == labels).mean())


def train_epoch(model, optimizer, images, labels, settings: Settings, epoch: int,
                on_batch=None) -> tuple[float, float]:
    """One pass over shuffled ``images``; returns (mean loss, accuracy) over the epoch.

    ``on_batch(n_done)`` is called after each batch (progress bars). Raises :class:`Diverged`
    as soon as the loss is not finite.
    """
    if len(images) == 0:
        raise ValueError("the training set is empty")
    _reseed_layers(model, settings.seed, epoch)
    order = epoch_rng(settings.seed, epoch, 0).permutation(len(images))
    total_loss = 0.0
    correct = 0
    for batch, start in enumerate(range(0, len(images), settings.batch_size), start=1):
        index = order[start:start + settings.batch_size]
        x, y = images[index], labels[index]
        logits = model.forward(x, training=True)
        loss, grad = softmax_cross_entropy(logits, y)
        if not np.isfinite(loss):
            raise Diverged(epoch, batch, settings.lr)
        model.backward(grad, need_input_grad=False)  # nobody needs the image gradient
        optimizer.step(model.named_grads())
        total_loss += loss * len(index)
        correct += int((logits.argmax(axis=1) == y).sum())
        if on_batch is not None:
            on_batch(len(index))
    return total_loss / len(images), correct / len(images)


def fit_epoch(model, optimizer, data, settings: Settings, epoch: int,
              on_batch=None) -> EpochMetrics:
    """Train one epoch on ``data.train_*`` and measure test accuracy on ``data.test_*``."""
    started = time.perf_counter()
    loss, acc = train_epoch(model, optimizer, data.train_x, data.train_y, settings, epoch,
                            on_batch)
    trained = time.perf_counter()
    test_acc = evaluate(model, data.test_x, data.test_y)
    train_seconds = trained - started
    return EpochMetrics(epoch=epoch, train_loss=loss, train_acc=acc, test_acc=test_acc,
                        train_seconds=train_seconds,
                        eval_seconds=time.perf_counter() - trained,
                        examples_per_sec=len(data.train_x) / train_seconds)
