"""The one training loop: mini-batch SGD/Adam over a dataset, on the CPU or the GPU.

:class:`Loop` trains any model (a tree of layers) on any device the same way; what happens
around the epochs — a progress bar, checkpoints, metrics files, plots, the check that the
network learns — are :mod:`callbacks <numbaconv.training.callbacks>`.

Every random choice derives from one seed: the initial weights, and each epoch's shuffle and
dropout masks from ``(seed, epoch)``. So the same seed and thread count give the same metrics,
and a run resumed from a checkpoint ends exactly where an uninterrupted one would.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

from .. import functional as F
from ..devices import get_device
from ..optim import SGD, Adam

__all__ = ["Settings", "EpochMetrics", "Diverged", "Callback", "Loop", "make_optimizer",
           "epoch_rng", "predict", "evaluate", "OPTIMIZERS", "EVAL_BATCH"]

OPTIMIZERS = ("sgd", "adam")
EVAL_BATCH = 1024
_FLOAT32 = np.finfo(np.float32)


class Diverged(Exception):
    """Training stopped being finite: the loss, or the weights after an update."""

    def __init__(self, epoch: int, lr: float, batch: int | None = None, what: str = "loss"):
        where = f"epoch {epoch}, batch {batch}" if batch is not None else f"epoch {epoch}"
        super().__init__(f"the {what} became NaN or infinite at {where}; try a lower learning "
                         f"rate than {lr:g} (--lr)")
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
        for name in ("epochs", "batch_size", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            if not 0 <= value < 2 ** 63 or (name != "seed" and value < 1):
                raise ValueError(f"{name} must be a positive integer below 2**63, got {value}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float, np.floating)) \
                or not np.isfinite(self.lr) or not self.lr > 0:
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        # the weights are float32: an lr that float32 cannot hold is inf or 0 there
        if not float(_FLOAT32.tiny) <= float(self.lr) <= float(_FLOAT32.max):
            raise ValueError(f"lr {self.lr:g} is outside what float32 weights can use "
                             f"({_FLOAT32.tiny:.3g} to {_FLOAT32.max:.3g})")
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
    # Layers that draw random numbers while training (Dropout) keep a Generator in ``rng``;
    # stream 1 + i for the i-th layer of the tree, depth first (its index in a flat model).
    leaves = [layer for _, layer in model.named_layers() if not layer.children()]
    for index, layer in enumerate(leaves):
        if isinstance(getattr(layer, "rng", None), np.random.Generator):
            layer.rng = epoch_rng(seed, epoch, 1 + index)


class Callback:
    """Something that happens around the loop's epochs. Every method does nothing by default.

    ``loop`` is the running :class:`Loop` (its ``model``, ``optimizer``, ``settings`` and
    ``history`` — the metrics of every epoch so far, resumed ones included).
    """

    def on_epoch_begin(self, loop: Loop, epoch: int) -> None:
        """Before the epoch's first batch."""

    def on_batch_end(self, loop: Loop, rows: int) -> None:
        """After each training step, with the number of examples it took."""

    def on_epoch_end(self, loop: Loop, metrics: EpochMetrics) -> None:
        """After the epoch's evaluation; the model's weights are finite (checked)."""

    def on_train_end(self, loop: Loop, error: BaseException | None) -> None:
        """Once, when the loop ends: normally (``error`` None) or by an exception."""


class Loop:
    """Trains ``model`` with ``optimizer`` on ``data`` (``train_x``, ``train_y``, ``test_x``,
    ``test_y``: float32 images (N, C, H, W) and int labels (N,), host arrays) on ``device``.

    The data and the model move to the device once; each step gathers its batch there, runs
    the forward, the cross-entropy, the backward and the update, and adds the batch's loss and
    correct predictions to device-side totals, read back once per epoch. On the CPU a
    non-finite loss stops the epoch at once; on the GPU at the epoch's end. After every epoch
    the weights are checked: a non-finite weight raises :class:`Diverged` before any callback
    could save it.
    """

    def __init__(self, model, optimizer, data, settings: Settings, device="cpu",
                 callbacks: Iterable[Callback] = (), history: list | None = None):
        self.model, self.optimizer, self.settings = model, optimizer, settings
        self.device = get_device(device) if isinstance(device, str) else device
        self.callbacks = list(callbacks)
        self.history: list[dict] = list(history or [])
        if len(data.train_x) == 0:
            raise ValueError("the training set is empty")
        if len(data.test_x) == 0:
            raise ValueError("the test set is empty")
        self.n_train, self.n_test = len(data.train_x), len(data.test_x)
        put = self.device.put
        self.train_x, self.train_y = put(data.train_x), put(data.train_y)
        self.test_x, self.test_y = put(data.test_x), put(data.test_y)

    def run(self, start_epoch: int = 1) -> list[dict]:
        """Epochs ``start_epoch..settings.epochs``; returns the history (one dict per epoch)."""
        error = None
        try:
            # overflow and NaN are watched for (Diverged), not warned about by NumPy
            with np.errstate(over="ignore", invalid="ignore"):
                self._epochs(start_epoch)
        except BaseException as exc:
            error = exc
            raise
        finally:
            for callback in self.callbacks:
                callback.on_train_end(self, error)
        return self.history

    def _epochs(self, start_epoch: int) -> None:
        for epoch in range(start_epoch, self.settings.epochs + 1):
            for callback in self.callbacks:
                callback.on_epoch_begin(self, epoch)
            metrics = self.fit_epoch(epoch)
            self.history.append(metrics.as_dict())
            for callback in self.callbacks:
                callback.on_epoch_end(self, metrics)

    def fit_epoch(self, epoch: int) -> EpochMetrics:
        """Train one epoch, check the weights, measure test accuracy."""
        started = time.perf_counter()
        loss, acc = self.train_epoch(epoch)
        trained = time.perf_counter()
        test_acc = self.evaluate()
        train_seconds = trained - started
        return EpochMetrics(epoch=epoch, train_loss=loss, train_acc=acc, test_acc=test_acc,
                            train_seconds=train_seconds,
                            eval_seconds=time.perf_counter() - trained,
                            examples_per_sec=self.n_train / train_seconds)

    def train_epoch(self, epoch: int) -> tuple[float, float]:
        """One pass over the shuffled training set: (mean loss, accuracy)."""
        settings, device, model = self.settings, self.device, self.model
        _reseed_layers(model, settings.seed, epoch)
        order = device.put(epoch_rng(settings.seed, epoch, 0).permutation(self.n_train))
        totals = device.totals(2)  # loss sum, correct predictions
        grads = model.named_grads()
        check_each_batch = not device.is_gpu  # a host read per batch costs nothing here
        for batch, start in enumerate(range(0, self.n_train, settings.batch_size), start=1):
            stop = min(start + settings.batch_size, self.n_train)
            x, y = device.take(self.train_x, self.train_y, order, start, stop)
            logits = model.forward(x, training=True)
            loss = F.cross_entropy(logits, y)
            if check_each_batch and not np.isfinite(loss):
                raise Diverged(epoch, settings.lr, batch)
            model.backward(F.cross_entropy_backward(logits, y), need_input_grad=False)
            self.optimizer.step(grads)
            totals.add(0, loss, scale=stop - start)
            totals.add(1, F.correct(logits, y))
            for callback in self.callbacks:
                callback.on_batch_end(self, stop - start)
        loss_sum, correct = totals.read()
        if not np.isfinite(loss_sum):
            raise Diverged(epoch, settings.lr)
        self._check_weights(epoch)
        return float(loss_sum) / self.n_train, float(correct) / self.n_train

    def _check_weights(self, epoch: int) -> None:
        totals = self.device.totals(1)
        for value in self.model.named_params().values():
            totals.add(0, F.count_nonfinite(value))
        if totals.read()[0]:
            raise Diverged(epoch, self.settings.lr, what="weights")

    def evaluate(self) -> float:
        """Accuracy on the test set (evaluation mode, batches of :data:`EVAL_BATCH`)."""
        return _accuracy(self.model, self.test_x, self.test_y, self.n_test, self.device)


def _accuracy(model, images, labels, n: int, device, batch_size: int = EVAL_BATCH) -> float:
    totals = device.totals(1)
    order = None
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        x, y = device.take(images, labels, order, start, stop)
        totals.add(0, F.correct(model.forward(x, training=False), y))
    return float(totals.read()[0]) / n


def predict(model, images: np.ndarray, batch_size: int = EVAL_BATCH) -> np.ndarray:
    """Class indices (N,) for float32 images (N, C, H, W), in evaluation mode (CPU)."""
    out = np.empty(len(images), dtype=np.int64)
    for start in range(0, len(images), batch_size):
        logits = model.forward(images[start:start + batch_size], training=False)
        out[start:start + batch_size] = logits.argmax(axis=1)
    return out


def evaluate(model, images: np.ndarray, labels: np.ndarray, batch_size: int = EVAL_BATCH,
             device="cpu") -> float:
    """Accuracy of ``model`` on float32 ``images`` (N, C, H, W) with int ``labels`` (N,)."""
    if len(images) == 0:
        raise ValueError("the test set is empty")
    device = get_device(device) if isinstance(device, str) else device
    return _accuracy(model, device.put(images), device.put(labels), len(images), device,
                     batch_size)
