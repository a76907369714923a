"""What happens around the training loop's epochs: progress, the epoch lines, checkpoints,
metrics, plots and the check that the network learns. Each is a
:class:`~numbaconv.training.loop.Callback`; ``numbaconv run`` picks them from its options."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable

from .loop import Callback, EpochMetrics, Loop

__all__ = ["ProgressBar", "EpochPrinter", "Checkpointing", "MetricsWriter", "PlotWriter",
           "ChanceWatch", "eta_seconds"]


def eta_seconds(done: int, total: int, first_rows: int, first_done_at: float,
                now: float) -> float | None:
    """Seconds left at ``done`` of ``total`` examples, from the speed of the batches after the
    first (which also pays for warming caches and, on a first run, compiling): ``first_rows``
    examples were done at time ``first_done_at``. ``None`` until a steady batch has run."""
    steady = done - first_rows
    if steady <= 0 or now <= first_done_at:
        return None
    return (total - done) * (now - first_done_at) / steady


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else \
        f"{rest // 60}:{rest % 60:02d}"


class ProgressBar(Callback):
    """A one-line bar on ``stream`` (a terminal) with the examples done and an ETA from the
    steady batches (:func:`eta_seconds`)."""

    def __init__(self, stream=None, clock: Callable[[], float] = time.perf_counter,
                 width: int = 30):
        self.stream = stream or sys.stderr
        self.clock, self.width = clock, width

    def on_epoch_begin(self, loop: Loop, epoch: int) -> None:
        self.label = f"epoch {epoch}/{loop.settings.epochs}"
        self.done, self.first_rows, self.first_done_at = 0, 0, 0.0
        self._draw(loop.n_train, None)

    def on_batch_end(self, loop: Loop, rows: int) -> None:
        self.done += rows
        now = self.clock()
        if not self.first_rows:
            self.first_rows, self.first_done_at = rows, now
        self._draw(loop.n_train, eta_seconds(self.done, loop.n_train, self.first_rows,
                                             self.first_done_at, now))

    def on_epoch_end(self, loop: Loop, metrics: EpochMetrics) -> None:
        self.stream.write("\r\033[K")  # the epoch line replaces the bar
        self.stream.flush()

    def on_train_end(self, loop: Loop, error) -> None:
        if error is not None:
            self.stream.write("\n")

    def _draw(self, total: int, eta: float | None) -> None:
        filled = self.width * self.done // max(total, 1)
        bar = "#" * filled + "-" * (self.width - filled)
        left = "" if eta is None else f"  eta {_clock(eta)}"
        self.stream.write(f"\r{self.label}  [{bar}]  {self.done}/{total}{left}\033[K")
        self.stream.flush()


class EpochPrinter(Callback):
    """One line per epoch: loss, accuracies, speed."""

    def __init__(self, echo: Callable[[str], None]):
        self.echo = echo

    def on_epoch_end(self, loop: Loop, metrics: EpochMetrics) -> None:
        self.echo(f"epoch {metrics.epoch}/{loop.settings.epochs}  "
                  f"loss {metrics.train_loss:.4f}  train_acc {metrics.train_acc:.4f}  "
                  f"test_acc {metrics.test_acc:.4f}  "
                  f"{metrics.examples_per_sec:,.0f} examples/s  "
                  f"({metrics.train_seconds:.1f} s)")


class _Writer(Callback):
    """A callback that writes a file after every epoch and says, at the end, what it wrote."""

    what = "file"

    def __init__(self, path, echo: Callable[[str], None]):
        self.path, self.echo = str(path), echo
        self.written_epoch: int | None = None

    def on_epoch_end(self, loop: Loop, metrics: EpochMetrics) -> None:
        self.write(loop, metrics)
        self.written_epoch = metrics.epoch

    def on_train_end(self, loop: Loop, error) -> None:
        if self.written_epoch is not None:
            self.echo(f"wrote {self.path} ({self.what} after epoch {self.written_epoch})")

    def write(self, loop: Loop, metrics: EpochMetrics) -> None:
        raise NotImplementedError


class Checkpointing(_Writer):
    """Saves the model, the optimizer state and the history after every epoch
    (``make_checkpoint(loop, epoch)`` builds the :class:`~numbaconv.checkpoint.Checkpoint`)."""

    what = "checkpoint"

    def __init__(self, path, make_checkpoint, echo):
        super().__init__(path, echo)
        self.make_checkpoint = make_checkpoint

    def write(self, loop: Loop, metrics: EpochMetrics) -> None:
        from ..checkpoint import save

        save(self.path, self.make_checkpoint(loop, metrics.epoch))


class MetricsWriter(_Writer):
    """The history as JSON lines, one object per epoch."""

    what = "metrics"

    def write(self, loop: Loop, metrics: EpochMetrics) -> None:
        from ..atomic import atomic_file

        with atomic_file(self.path) as out:
            out.write("".join(json.dumps(m) + "\n" for m in loop.history).encode())


class PlotWriter(_Writer):
    """D2L's training curves as a PNG (needs matplotlib)."""

    what = "plot"

    def __init__(self, path, title: str, echo):
        super().__init__(path, echo)
        self.title = title

    def write(self, loop: Loop, metrics: EpochMetrics) -> None:
        from ..lessons.plotting import plot_curves

        plot_curves(loop.history, self.path, title=self.title)


class ChanceWatch(Callback):
    """Says so when, after the first epoch of a run, the loss has not moved from chance
    (``ln K`` for K classes within 2%) and the test accuracy is below ``2/K``: the network
    does not learn with these settings."""

    def __init__(self, num_classes: int, warn: Callable[[str], None]):
        self.num_classes, self.warn = num_classes, warn
        self.first_epoch: int | None = None

    def on_epoch_begin(self, loop: Loop, epoch: int) -> None:
        if self.first_epoch is None:
            self.first_epoch = epoch

    def on_epoch_end(self, loop: Loop, metrics: EpochMetrics) -> None:
        if metrics.epoch != self.first_epoch:
            return
        chance = math.log(self.num_classes)
        if metrics.train_loss >= 0.98 * chance and metrics.test_acc < 2 / self.num_classes:
            self.warn(f"the loss ({metrics.train_loss:.4f}) has not moved from chance "
                      f"(ln {self.num_classes} = {chance:.4f}) after epoch {metrics.epoch}: if "
                      f"it stays there, the network does not learn with "
                      f"{loop.settings.optimizer} lr {loop.settings.lr:g}; try another --lr "
                      "or --optimizer adam")
