"""Checkpoints: a model's weights, its architecture, the optimizer state and the epoch, in one
``.npz`` file, written atomically so that a crash mid-write never destroys the previous one."""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field

import numpy as np

from .atomic import atomic_file

FORMAT = 1
_PARAM, _OPTIM = "param/", "optim/"


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable, or does not fit the model at hand."""


@dataclass
class Checkpoint:
    """What a checkpoint holds. ``spec`` is ``Sequential.config()``: the architecture."""

    spec: list
    params: dict
    epoch: int = 0
    model: str | None = None
    options: dict = field(default_factory=dict)
    optimizer: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    history: list = field(default_factory=list)


def save(path, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` to ``path`` (a temporary file beside it, then an atomic rename)."""
    meta = {"format": FORMAT, "spec": checkpoint.spec, "epoch": checkpoint.epoch,
            "model": checkpoint.model, "options": checkpoint.options, "train": checkpoint.train,
            "history": checkpoint.history,
            "optimizer": {k: v for k, v in checkpoint.optimizer.items()
                          if not isinstance(v, np.ndarray)}}
    arrays = {_PARAM + k: v for k, v in checkpoint.params.items()}
    arrays.update({_OPTIM + k: v for k, v in checkpoint.optimizer.items()
                   if isinstance(v, np.ndarray)})
    arrays["meta"] = np.array(json.dumps(meta))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_file(path) as out:
        np.savez(out, **arrays)


def load(path) -> Checkpoint:
    """Read a checkpoint written by :func:`save`; :class:`CheckpointError` says what is wrong."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):  # a bare .npy array
            raise ValueError("not an .npz archive")
        with archive:
            meta = json.loads(str(archive["meta"]))
            if not isinstance(meta, dict):
                raise ValueError("its metadata is not a JSON object")
            params = {k[len(_PARAM):]: archive[k] for k in archive.files if k.startswith(_PARAM)}
            optimizer = dict(meta.get("optimizer", {}))
            optimizer.update({k[len(_OPTIM):]: archive[k] for k in archive.files
                              if k.startswith(_OPTIM)})
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"{path} is not a numbaconv checkpoint ({error})") from error
    if meta.get("format") != FORMAT or not isinstance(meta.get("spec"), (list, dict)):
        raise CheckpointError(f"{path} is not a numbaconv checkpoint of format {FORMAT}")
    return Checkpoint(spec=meta["spec"], params=params, epoch=int(meta.get("epoch", 0)),
                      model=meta.get("model"), options=meta.get("options") or {},
                      optimizer=optimizer, train=meta.get("train") or {},
                      history=meta.get("history") or [])


def describe(spec_model: str | None, options: dict) -> str:
    """A short name for an architecture: ``lenet (activation=relu)`` or ``a TOML spec``."""
    if spec_model is None:
        return "a network from a TOML spec"
    opts = ", ".join(f"{k}={v}" for k, v in sorted(options.items()))
    return f"{spec_model} ({opts})" if opts else spec_model
