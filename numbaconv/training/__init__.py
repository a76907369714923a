"""Training: the one loop (:mod:`.loop`) and what happens around its epochs
(:mod:`.callbacks`)."""

from .loop import (
    EVAL_BATCH,
    OPTIMIZERS,
    Callback,
    Diverged,
    EpochMetrics,
    Loop,
    Settings,
    epoch_rng,
    evaluate,
    make_optimizer,
)

__all__ = ["EVAL_BATCH", "OPTIMIZERS", "Callback", "Diverged", "EpochMetrics", "Loop",
           "Settings", "epoch_rng", "evaluate", "make_optimizer"]
