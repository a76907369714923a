"""A training step captured once and replayed: buffers and launches for any layer on the GPU.

A training loop computes the same thing on every batch of one size: the same kernels, on
arrays of the same shapes. The CUDA backend allocates and launches only through
:func:`empty` and :func:`launch`, so whatever a layer computes through
:mod:`numbaconv.functional` is captured by its position in the step:

* inside a step (from :func:`begin` to the next ``begin`` or :func:`end`), the n-th
  :func:`empty` of a step with key ``k`` returns the buffer that the n-th ``empty`` of the
  previous step with key ``k`` got, when shape and dtype agree (else a new one, which takes
  its place): from the second step of each key on, nothing is allocated;
* and the n-th :func:`launch` reuses that step's prepared launch
  (:class:`~numbaconv.kernels.cuda.launch.PreparedLaunch`: overload found and arguments
  marshalled once, one driver call) when kernel, grid and arguments are the same: arrays by
  device address, shape, strides and dtype, scalars by type and value. ``start``, an int64
  given at the call (a batch's offset, a step count), is not compared.

So a step's buffers are written again by the same step of the next batch: results of a step
are valid until then (a layer keeps state across steps in its ``params``, ``grads`` and
``buffers``, never in a step's arrays). The key says which steps repeat each other (the
data set and batch size of :meth:`numbaconv.devices.Device.take`): a training batch, the
last smaller one and evaluation batches each replay their own, and a data set's records go
with it. Outside a step both functions are plain numba-cuda calls.
"""

from __future__ import annotations

import weakref

from numba import cuda

from .launch import PreparedLaunch

__all__ = ["begin", "end", "active", "empty", "launch", "launches"]


class _Step:
    """What one key's steps allocate and launch, in order."""

    __slots__ = ("buffers", "launches")

    def __init__(self):
        self.buffers: list = []
        self.launches: list[tuple] = []  # (kernel, griddim, blockdim, fingerprint, prepared)


_steps: dict = {}
_active: _Step | None = None
_n_buffers = 0
_n_launches = 0


def begin(key, owner=None) -> None:
    """Start a step that replays the last step of the same ``key`` (any hashable). The
    record of a new key lives as long as ``owner`` does, when given (the data set: the
    records hold no reference to what their launches read, only their own buffers)."""
    global _active, _n_buffers, _n_launches
    _active = _steps.get(key)
    if _active is None:
        _active = _steps[key] = _Step()
        if owner is not None:
            weakref.finalize(owner, _steps.pop, key, None)
    _n_buffers = _n_launches = 0


def end() -> None:
    """Leave the current step: from here on allocations and launches are plain ones."""
    global _active
    _active = None


def active() -> bool:
    """Whether a step is being captured or replayed."""
    return _active is not None


def empty(shape, dtype):
    """An uninitialised device array: the step's n-th buffer inside a step."""
    global _n_buffers
    if _active is None:
        return cuda.device_array(shape, dtype=dtype)
    buffers, n = _active.buffers, _n_buffers
    _n_buffers = n + 1
    shape = tuple(int(s) for s in shape) if isinstance(shape, (tuple, list)) else (int(shape),)
    if n < len(buffers):
        buffer = buffers[n]
        if buffer.shape == shape and buffer.dtype == dtype:
            return buffer
        buffers[n] = buffer = cuda.device_array(shape, dtype=dtype)
        return buffer
    buffer = cuda.device_array(shape, dtype=dtype)
    buffers.append(buffer)
    return buffer


def _address(array) -> int:
    data = getattr(array, "gpu_data", None)
    if data is not None:  # a numba-cuda device array
        return data.device_pointer_value or 0
    return array.__array_interface__["data"][0]  # the simulator's (a NumPy array inside)


def _fingerprint(args) -> tuple:
    return tuple((_address(a), tuple(a.shape), tuple(a.strides), a.dtype)
                 if getattr(a, "__cuda_ndarray__", False) else (type(a), a) for a in args)


def launch(kernel, griddim, blockdim, *args, start=None) -> None:
    """``kernel[griddim, blockdim](*args)``, or ``(*args, start)`` with an int64 ``start``;
    inside a step by the step's prepared launch when the arguments match."""
    global _n_launches
    if _active is None:
        if start is None:
            kernel[griddim, blockdim](*args)
        else:
            kernel[griddim, blockdim](*args, start)
        return
    recorded, n = _active.launches, _n_launches
    _n_launches = n + 1
    fingerprint = _fingerprint(args)
    if n < len(recorded):
        old_kernel, old_grid, old_block, old_fingerprint, prepared = recorded[n]
        if old_kernel is kernel and old_grid == griddim and old_block == blockdim \
                and old_fingerprint == fingerprint:
            prepared(0 if start is None else start, args)
            return
    # not held: the fingerprint says the arrays passed at each call are the prepared ones
    prepared = PreparedLaunch(kernel, griddim, blockdim, args, with_start=start is not None,
                              hold=False)
    entry = (kernel, griddim, blockdim, fingerprint, prepared)
    if n < len(recorded):
        recorded[n] = entry
    else:
        recorded.append(entry)
    prepared(0 if start is None else start, args)


def launches(key) -> list[PreparedLaunch]:
    """The prepared launches recorded for ``key``'s steps, in order (for tests)."""
    step = _steps.get(key)
    return [] if step is None else [entry[-1] for entry in step.launches]
