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
from types import SimpleNamespace

import numpy as np

from .. import functional as F
from ..devices import copy_into, device_of, get_device
from ..optim import SGD, Adam

__all__ = ["Settings", "EpochMetrics", "Diverged", "Callback", "Loop", "make_optimizer",
           "epoch_rng", "evaluate", "OPTIMIZERS", "EVAL_BATCH"]

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
    resize: int | None = None  # the images' side after bilinear resizing, batch by batch

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
        if self.resize is not None and (isinstance(self.resize, bool) or not isinstance(
                self.resize, (int, np.integer)) or not 1 <= self.resize <= 4096):
            raise ValueError(f"resize must be a whole number of pixels from 1 to 4096, got "
                             f"{self.resize!r}")
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


def _reseed_layers(model, seed: int, epoch: int, rank: int = 0) -> None:
    # Layers that draw random numbers while training (Dropout) keep a Generator in ``rng``;
    # stream 1 + i for the i-th layer of the tree, depth first (its index in a flat model).
    # Each rank of a distributed run draws its own masks (rank 0 those of one process).
    leaves = [layer for _, layer in model.named_layers() if not layer.children()]
    for index, layer in enumerate(leaves):
        if isinstance(getattr(layer, "rng", None), np.random.Generator):
            layer.rng = epoch_rng(seed, epoch, 1 + index) if not rank else \
                np.random.default_rng([seed, epoch, 1 + index, rank])


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

    ``model`` is already on ``device`` (``model.to(device)``) and ``optimizer`` built on its
    parameters after the move. The data moves to the device once; each step gathers its batch
    there (:meth:`numbaconv.devices.Device.take`), resizes it when ``settings.resize`` asks
    (batch by batch: 60,000 images at 224x224 would take 12 GB), runs the forward, the
    cross-entropy, the backward and the update, and adds the batch's loss and correct predictions to
    device-side totals. An epoch's totals — training loss and hits, non-finite weights, test
    hits — come back in one device-to-host copy. On the CPU a non-finite loss stops the epoch at
    once; on the GPU at the epoch's end. A non-finite weight after the epoch raises
    :class:`Diverged` before any callback could save it.

    ``distributed`` (a :class:`~numbaconv.training.distributed.Distributed`, CPU only) makes
    this one rank of a data-parallel run: each global batch of ``settings.batch_size`` is
    split among the ranks, gradients are summed across them before every update, the test
    set is split, and the epoch's totals are summed; callbacks see the global numbers.
    """

    def __init__(self, model, optimizer, data, settings: Settings, device="cpu",
                 callbacks: Iterable[Callback] = (), history: list | None = None,
                 distributed=None):
        self.model, self.optimizer, self.settings = model, optimizer, settings
        self.device = get_device(device)
        self.distributed = distributed
        if distributed is not None and self.device.is_cuda:
            raise ValueError("distributed training runs on the CPU, not on cuda")
        self.callbacks = list(callbacks)
        self.history: list[dict] = list(history or [])
        if len(data.train_x) == 0:
            raise ValueError("the training set is empty")
        if len(data.test_x) == 0:
            raise ValueError("the test set is empty")
        elsewhere = [name for name, p in model.named_params().items()
                     if device_of(p).name != self.device.name]
        if elsewhere:
            raise ValueError(f"the model's parameters {elsewhere[:3]} are not on "
                             f"{self.device.name}: call model.to(device) before building the "
                             "optimizer")
        self.n_train, self.n_test = len(data.train_x), len(data.test_x)
        put = self.device.put
        self.train_x = put(data.train_x)
        self.train_y = put(np.asarray(data.train_y, dtype=np.int64))
        self.test_x = put(data.test_x)
        self.test_y = put(np.asarray(data.test_y, dtype=np.int64))
        # evaluation takes the test set in order: views on the CPU, a gather on a GPU
        self.test_order = put(np.arange(self.n_test)) if self.device.is_cuda else None
        # the test rows this process evaluates: all, or a rank's share
        self.test_rows = (0, self.n_test) if distributed is None else \
            distributed.share(0, self.n_test)
        # an epoch's order and totals live in the same arrays every epoch, so that a GPU's
        # replayed steps find the arrays they were captured with
        self.order = None
        self.totals = self.device.totals(4)

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
        """Train one epoch, check the weights, measure test accuracy: one read of the
        device's totals (training loss sum and hits, non-finite weights, test hits)."""
        totals = self.totals
        totals.reset()
        started = time.perf_counter()
        self._train(epoch, totals, loss=0, hits=1)
        if self.distributed is not None:
            self.distributed.end_epoch(self.model, epoch)
        self._count_nonfinite_weights(totals, 2)
        self.device.synchronize()
        trained = time.perf_counter()
        self._count_test_hits(totals, 3)
        loss_sum, hits, nonfinite, test_hits = self._read(totals)
        evaluated = time.perf_counter()
        self._check(epoch, loss_sum, nonfinite)
        train_seconds = trained - started
        return EpochMetrics(epoch=epoch, train_loss=float(loss_sum) / self.n_train,
                            train_acc=float(hits) / self.n_train,
                            test_acc=float(test_hits) / self.n_test,
                            train_seconds=train_seconds, eval_seconds=evaluated - trained,
                            examples_per_sec=self.n_train / train_seconds)

    def train_epoch(self, epoch: int) -> tuple[float, float]:
        """One pass over the shuffled training set and the weights' check: (mean loss,
        accuracy)."""
        totals = self.totals
        totals.reset()
        self._train(epoch, totals, loss=0, hits=1)
        if self.distributed is not None:
            self.distributed.end_epoch(self.model, epoch)
        self._count_nonfinite_weights(totals, 2)
        loss_sum, hits, nonfinite, _ = self._read(totals)
        self._check(epoch, loss_sum, nonfinite)
        return float(loss_sum) / self.n_train, float(hits) / self.n_train

    def evaluate(self) -> float:
        """Accuracy on the test set (evaluation mode, batches of :data:`EVAL_BATCH`)."""
        totals = self.device.totals(1)
        self._count_test_hits(totals, 0)
        return float(self._read(totals)[0]) / self.n_test

    def _read(self, totals) -> np.ndarray:
        """The totals on the host: this process's, or summed over the ranks (a count of
        non-finite weights then counts each rank's identical weights once per rank)."""
        values = totals.read()
        return values if self.distributed is None else self.distributed.reduce_totals(values)

    def _train(self, epoch: int, totals, loss: int, hits: int) -> None:
        settings, device, model = self.settings, self.device, self.model
        rank = 0 if self.distributed is None else self.distributed.rank
        _reseed_layers(model, settings.seed, epoch, rank)
        order = self._shuffled(epoch_rng(settings.seed, epoch, 0).permutation(self.n_train))
        grads = model.named_grads()
        if self.distributed is not None:  # the same order on every rank, a share of each batch
            self.distributed.train_epoch(self, epoch, order, grads, totals, loss, hits)
            return
        check_each_batch = not device.is_cuda  # a host read per batch costs nothing here
        for batch, start in enumerate(range(0, self.n_train, settings.batch_size), start=1):
            stop = min(start + settings.batch_size, self.n_train)
            x, y = device.take(self.train_x, self.train_y, order, start, stop)
            logits = model.forward(self._resized(x), training=True)
            batch_loss, grad_logits = F.cross_entropy_with_grad(logits, y)
            if check_each_batch and not np.isfinite(batch_loss):
                raise Diverged(epoch, settings.lr, batch)
            model.backward(grad_logits, need_input_grad=False)
            self.optimizer.step(grads)
            totals.add(loss, batch_loss, scale=stop - start)
            totals.add(hits, F.correct(logits, y))
            for callback in self.callbacks:
                callback.on_batch_end(self, stop - start)

    def _resized(self, x):
        side = self.settings.resize
        return x if side is None else F.resize_bilinear(x, side)

    def _shuffled(self, permutation: np.ndarray):
        """The epoch's order on the device, in the array of the epochs before."""
        if self.order is None or not self.device.is_cuda:
            self.order = self.device.put(permutation)
        else:
            copy_into(self.order, permutation)
        return self.order

    def _count_nonfinite_weights(self, totals, index: int) -> None:
        for value in self.model.named_params().values():
            totals.add(index, F.count_nonfinite(value))

    def _count_test_hits(self, totals, index: int) -> None:
        first, last = self.test_rows
        for start in range(first, last, EVAL_BATCH):
            stop = min(start + EVAL_BATCH, last)
            x, y = self.device.take(self.test_x, self.test_y, self.test_order, start, stop)
            logits = self.model.forward(self._resized(x), training=False)
            totals.add(index, F.correct(logits, y))

    def _check(self, epoch: int, loss_sum: float, nonfinite: float) -> None:
        if not np.isfinite(loss_sum):
            raise Diverged(epoch, self.settings.lr)
        if nonfinite:
            raise Diverged(epoch, self.settings.lr, what="weights")


def evaluate(model, images: np.ndarray, labels: np.ndarray, device="cpu",
             resize: int | None = None) -> float:
    """Accuracy of ``model`` (on ``device``) on float32 ``images`` (N, C, H, W) with int
    ``labels`` (N,), in batches of :data:`EVAL_BATCH`, each resized to ``resize`` pixels
    square if given."""
    if len(images) == 0:
        raise ValueError("the test set is empty")
    data = SimpleNamespace(train_x=images[:1], train_y=labels[:1], test_x=images,
                           test_y=labels)
    return Loop(model, None, data, Settings(resize=resize), device).evaluate()
