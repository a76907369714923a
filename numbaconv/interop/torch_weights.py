"""PyTorch weights into a numbaconv model of the same architecture.

numbaconv keys a tree's arrays by path as PyTorch's ``state_dict`` does (``"0.weight"``,
``"3.body.0.bias"``), so an ``nn.Sequential`` twin's keys are the model's own. Where the
names differ (a module with named attributes, ``self.conv1``...), tensors are paired by
position: both walk the layers depth first, each layer's parameters before its buffers, as
``state_dict`` orders them. Each pair must agree on the last part of the name (``weight``,
``bias``, ``running_mean``...) and on the shape, or a ``ValueError`` names the parameter.

PyTorch stays optional: :func:`from_torch_state_dict` takes tensors or NumPy arrays and never
imports torch; :func:`read_torch_file` (``.pt``/``.pth``) needs it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from ..layers import Layer

__all__ = ["from_torch_state_dict", "read_torch_file", "TORCH_SUFFIXES"]

#: File name endings read as PyTorch files.
TORCH_SUFFIXES = (".pt", ".pth")
#: Keys under which training scripts commonly nest the weights in a saved dict.
_NESTED = ("state_dict", "model_state_dict", "model")


def from_torch_state_dict(model: Layer, state_dict: Mapping) -> dict[str, str]:
    """Copy the PyTorch ``state_dict`` (tensors or arrays) into ``model``'s parameters and
    buffers, in place; returns ``{numbaconv key: state_dict key}``.

    Keys are used as they are when they are the model's (after dropping a ``"module."``
    prefix that ``nn.DataParallel`` adds), else paired by position (see the module
    docstring). Nothing is changed when any tensor does not fit: ``ValueError`` names the
    model's parameter, the state_dict's key and both shapes.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of names to tensors, got "
                        f"{type(state_dict).__name__}")
    given = {_strip(key, state_dict): _as_array(key, value) for key, value in state_dict.items()}
    targets = _torch_order(model)
    if set(given) == set(targets):
        pairs = {key: key for key in targets}
    else:
        pairs = _by_position(targets, list(given))
    state = {}
    for ours, theirs in pairs.items():
        target, value = targets[ours], given[theirs]
        where = ours if ours == theirs else f"{ours} (the state_dict's {theirs})"
        if value.shape != target.shape:
            raise ValueError(f"parameter {where} has shape {value.shape} in the state_dict, "
                             f"the model's is {target.shape}")
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise ValueError(f"parameter {where} holds NaN or inf in the state_dict")
        state[ours] = value.astype(target.dtype, copy=False)
    model.load_state_dict(state)
    return pairs


def read_torch_file(path) -> dict:
    """The ``state_dict`` saved in the PyTorch file ``path`` (``torch.save(model.state_dict(),
    path)``, or a dict holding it under ``state_dict``/``model_state_dict``/``model``), read
    with ``weights_only=True`` (no code runs). Needs torch."""
    shown = os.fspath(path)
    try:
        import torch
    except ImportError:
        raise ValueError(f"reading {shown} needs PyTorch (pip install torch); it stays "
                         "optional for everything else") from None
    if not os.path.isfile(shown):
        raise ValueError(f"PyTorch file {shown} does not exist")
    try:
        saved = torch.load(shown, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle's and torch's many errors: one line
        reason = " ".join(str(error).split())[:160]
        raise ValueError(f"cannot read {shown} as PyTorch weights (save model.state_dict() "
                         f"with torch.save): {reason}") from None
    if isinstance(saved, Mapping):
        for key in _NESTED:
            if isinstance(saved.get(key), Mapping):
                saved = saved[key]
                break
    if not isinstance(saved, Mapping) or not all(hasattr(v, "shape") for v in saved.values()):
        raise ValueError(f"{shown} holds no state_dict (a dict of tensors); save "
                         "model.state_dict() with torch.save")
    return dict(saved)


def _as_array(key, value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.dtype.kind not in "fiu":
        raise ValueError(f"state_dict entry {key!r} holds {array.dtype}, not numbers")
    return array


def _strip(key: str, state_dict: Mapping) -> str:
    prefix = "module."
    if all(isinstance(k, str) and k.startswith(prefix) for k in state_dict):
        return key[len(prefix):]
    return key


def _torch_order(model: Layer) -> dict[str, np.ndarray]:
    """The model's arrays keyed by path in ``state_dict`` order: layer by layer, depth first,
    each layer's parameters, then its buffers."""
    order = {}
    for path, layer in model.named_layers():
        for table in (layer.params, layer.buffers):
            for name, array in table.items():
                order[f"{path}{name}"] = array
    return order


def _by_position(targets: dict, keys: list[str]) -> dict[str, str]:
    ours = list(targets)
    for position, (mine, theirs) in enumerate(zip(ours, keys)):
        if mine.rsplit(".", 1)[-1] != theirs.rsplit(".", 1)[-1]:
            raise ValueError(f"the state_dict's names are not the model's, and by position "
                             f"its {theirs!r} (entry {position}) faces the model's {mine!r}: "
                             "not the same architecture")
    if len(ours) != len(keys):
        longer, which = (ours, "model's") if len(ours) > len(keys) else (keys, "state_dict's")
        raise ValueError(f"the state_dict holds {len(keys)} tensors, the model {len(ours)}: "
                         f"the {which} {longer[min(len(ours), len(keys))]!r} has no "
                         "counterpart")
    return dict(zip(ours, keys))
