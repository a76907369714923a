"""Devices: where a model's arrays live and its training steps run, the CPU or a CUDA GPU.

A model moves with :meth:`numbaconv.layers.Layer.to`; from then on its layers compute through
:mod:`numbaconv.functional` on the arrays' device, the same layer code on both. A training
loop talks to the device only through this module, so it is one loop for both::

    device = get_device("cuda")                    # or "cpu"
    model.to(device)
    optimizer = SGD(model.named_params(), lr=0.1)  # built after the move
    images, labels = device.put(train_x), device.put(train_y)
    totals = device.totals(2)
    order = device.put(rng.permutation(len(train_x)))          # once per epoch
    for start in range(0, len(train_x), batch):
        x, y = device.take(images, labels, order, start, start + batch)
        logits = model.forward(x, training=True)
        loss, grad_logits = F.cross_entropy_with_grad(logits, y)
        totals.add(0, loss, scale=len(x))
        model.backward(grad_logits, need_input_grad=False)
        optimizer.step(model.named_grads())
        totals.add(1, F.correct(logits, y))
    loss_sum, hits = totals.read()                 # the epoch's one device-to-host copy

On a GPU, :meth:`Device.take` starts a *step* (:mod:`numbaconv.kernels.cuda.steps`): every
batch of one size from one data set replays the buffers and prepared kernel launches of the
first, for any layer, so a step allocates nothing and each launch is one driver call. A step
lasts until the next ``take``, :meth:`Totals.read` or :meth:`Device.get`; its arrays are
written again by the same step of a later batch (keep what must last in a layer's
``params``, ``grads`` or ``buffers``, or copy it to the host). Evaluation batches should come
from ``take`` too (with ``order = device.put(numpy.arange(n))``). Nothing is copied to the
host until ``read``/``get``.
"""

from __future__ import annotations

import numpy as np

from .kernels.cuda.device import cuda_available, is_device_array

__all__ = ["Device", "Totals", "get_device", "device_of", "host_copy", "copy_into",
           "DEVICE_NAMES"]

DEVICE_NAMES = ("cpu", "cuda")


class Totals:
    """Running sums on a device (an epoch's loss and hit counts): :meth:`add` costs no
    transfer, :meth:`read` is one copy to the host."""

    def __init__(self, device: Device, n: int):
        self.device = device
        self.n = int(n)
        if self.n < 1:
            raise ValueError(f"totals need at least one entry, got {n}")
        self._values = device.zeros(self.n, np.float64)

    def _index(self, i) -> int:
        if not 0 <= int(i) < self.n:
            raise IndexError(f"total {i} out of range for {self.n} totals")
        return int(i)

    def add(self, i: int, value, scale: float = 1.0) -> None:
        """``totals[i] += float(value) * scale`` for a 0-d array (a loss, a count) on this
        device, in float64."""
        i = self._index(i)
        if self.device.name == "cpu":
            self._values[i] += float(value) * scale
            return
        if not is_device_array(value) or tuple(value.shape) != ():
            raise TypeError(f"value must be a 0-d CUDA device array (e.g. cross_entropy's), "
                            f"got {type(value).__name__} of shape {np.shape(value)}")
        from .kernels.cuda import ops

        ops.accumulate(self._values, i, value, scale)

    def reset(self) -> None:
        """All totals back to zero, in the same array (a replayed step's launches stay
        valid)."""
        copy_into(self._values, np.zeros(self.n, dtype=np.float64))

    def read(self) -> np.ndarray:
        """The totals as a float64 host array (n,): one device-to-host copy on a GPU (which
        also ends the current step)."""
        return self.device.get(self._values).copy()


class Device:
    """The CPU (``name == "cpu"``) or the CUDA GPU (``"cuda"``); see the module docstring."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"Device({self.name!r})"

    @property
    def is_cuda(self) -> bool:
        return self.name == "cuda"

    def put(self, array):
        """``array`` on this device: a host array is copied to the GPU (C-contiguous, its
        dtype kept), a device array to the host on the CPU; an array already here is
        returned as it is."""
        if self.is_cuda:
            if is_device_array(array):
                return array
            from numba import cuda

            return cuda.to_device(np.asarray(array, order="C"))  # a 0-d array stays 0-d
        return self.get(array)

    def get(self, array) -> np.ndarray:
        """``array`` as a host ``numpy.ndarray`` (a copy from a device array, which also ends
        the current step; a host array as it is)."""
        if is_device_array(array):
            from .kernels.cuda import steps

            steps.end()
            return array.copy_to_host()
        return np.asarray(array)

    def zeros(self, shape, dtype=np.float32):
        """A new array of zeros on this device (not a step's buffer: it lasts)."""
        return self.put(np.zeros(shape, dtype=dtype))

    def take(self, images, labels, order, start: int, stop: int):
        """The batch ``(images[order[start:stop]], labels[order[start:stop]])``.

        ``images`` (N, ...) and ``labels`` (N,) are on this device (``put`` once), ``order``
        an int64 array of indices into them, put once per epoch (a permutation; ``arange``
        for evaluation; on the CPU ``None`` takes rows ``start:stop`` as views). On a GPU
        the rows are gathered on the device in one launch, and a step starts (see the module
        docstring).
        """
        start, stop = int(start), int(stop)
        if order is None and not self.is_cuda:  # rows in order: views, no copy
            if not 0 <= start < stop <= len(images):
                raise ValueError(f"take: rows {start}:{stop} are not a non-empty range of "
                                 f"the {len(images)} images")
            return images[start:stop], labels[start:stop]
        if order is None:
            raise TypeError("take: a GPU gathers through an int64 order on the device "
                            "(put numpy.arange(n) once)")
        if not 0 <= start < stop <= len(order):
            raise ValueError(f"take: rows {start}:{stop} are not a non-empty range of the "
                             f"order's {len(order)}")
        if len(labels) != len(images):
            raise ValueError(f"take: {len(labels)} labels for {len(images)} images")
        if not self.is_cuda:
            index = order[start:stop]
            return images[index], labels[index]
        for name, array in (("images", images), ("labels", labels), ("order", order)):
            if not is_device_array(array):
                raise TypeError(f"take: {name} must be on the device (Device.put it once), "
                                f"got {type(array).__name__}")
        if np.dtype(order.dtype) != np.int64:
            raise TypeError(f"take: order must be int64, got {order.dtype}")
        from .kernels.cuda import ops, steps

        steps.begin((id(images), stop - start), owner=images)
        return ops.take_rows(images, labels, order, start, stop)

    def totals(self, n: int) -> Totals:
        """``n`` running sums, zero, on this device."""
        return Totals(self, n)

    def synchronize(self) -> None:
        """Wait until the device has finished what was queued (timings); nothing on the CPU."""
        if self.is_cuda:
            from .kernels.cuda.device import synchronize

            synchronize()


_DEVICES: dict[str, Device] = {}


def get_device(name) -> Device:
    """The device named ``"cpu"`` or ``"cuda"`` (a :class:`Device` is returned as it is).
    ``ValueError`` for another name; ``RuntimeError`` with the reason when CUDA is not usable
    here."""
    if isinstance(name, Device):
        return name
    if name not in DEVICE_NAMES:
        raise ValueError(f"device must be one of {', '.join(DEVICE_NAMES)}, got {name!r}")
    device = _DEVICES.get(name)
    if device is None:
        if name == "cuda":
            usable, reason = cuda_available()
            if not usable:
                raise RuntimeError(f"the CUDA device is not usable: {reason}")
        device = _DEVICES[name] = Device(name)
    return device


def device_of(array) -> Device:
    """The device ``array`` lives on."""
    return get_device("cuda" if is_device_array(array) else "cpu")


def host_copy(array) -> np.ndarray:
    """A new host array with ``array``'s values (from either device)."""
    if is_device_array(array):
        return array.copy_to_host()
    return np.array(array, copy=True)


def copy_into(target, values) -> None:
    """Overwrite ``target``'s values in place (its array object and dtype kept) with
    ``values`` of the same shape, from either device."""
    if tuple(np.shape(target)) != tuple(np.shape(values)):
        raise ValueError(f"cannot copy values of shape {tuple(np.shape(values))} into an "
                         f"array of shape {tuple(np.shape(target))}")
    if not is_device_array(target):
        np.copyto(target, host_copy(values) if is_device_array(values) else np.asarray(values),
                  casting="same_kind")
    elif is_device_array(values):
        if values.dtype != target.dtype:
            raise TypeError(f"cannot copy {values.dtype} values into a {target.dtype} array")
        target.copy_to_device(values)
    else:
        target.copy_to_device(np.asarray(values, dtype=target.dtype, order="C"))
