"""Training on the GPU: the CPU training loop of :mod:`numbaconv.train`, run on the device.

:class:`DeviceTrainer` takes a CPU :class:`~numbaconv.layers.Sequential` of built-in layers
(``Conv2d``, ``MaxPool2d``, ``AvgPool2d``, ``Linear``, ``ReLU``, ``Sigmoid``, ``Tanh``,
``Flatten``, ``Dropout``; anything else, a plugin's layer included, is a ``ValueError``) and
trains it with the CUDA kernels of :mod:`numbaconv.kernels.cuda`:

* The weights are copied to the device once, into one flat buffer that also holds the
  optimizer state; the gradients live in a second flat buffer. The train and test sets are
  uploaded once. Activations, gradients and per-row losses live in buffers allocated once,
  sized for the largest batch; a smaller (last) batch uses views of them.
* Each step: one launch gathers the batch (images and labels) through the epoch's permutation
  (uploaded once per epoch), the forward runs with convolution/linear + bias + activation
  fused when an activation follows, one launch computes the softmax cross-entropy, its
  gradient, the per-row loss and the per-row hit, the backward fuses each activation's
  gradient with the bias-gradient reduction, and a single SGD/Adam launch updates every
  parameter (the flat buffers make all parameters one array). For LeNet that is 33 launches
  per step (gather 1, forward 7, loss 1, backward 23, optimizer 1), no allocation and no host
  transfer; evaluation takes 9 launches per 1024 test images.
* Per epoch, one kernel sums the per-row losses and hits of the training pass and the hits of
  the test pass, and that one 3-number array is the epoch's only device-to-host transfer.

It computes what the CPU loop (:func:`numbaconv.train.fit_epoch`) computes: the same shuffles
(``epoch_rng(seed, epoch, 0).permutation``), the same dropout masks (drawn on the host from
``epoch_rng(seed, epoch, 1 + layer index)`` exactly as the CPU layer draws them, one upload
per epoch), SGD/Adam with :mod:`numbaconv.optim`'s formulas, and matching per-epoch metrics up
to float32 rounding (sums run in another order, and the GPU may fuse multiply-adds).

One difference: a non-finite loss is detected once per epoch, not per batch. The epoch runs
to its end, then :class:`~numbaconv.train.Diverged` is raised naming the first bad batch
(found with one extra transfer, only then); the device weights are then unusable, as they are
after a CPU divergence.

Importing this module imports numba-cuda (``numbaconv`` itself never imports it). Check
:func:`numbaconv.kernels.cuda.cuda_available` first.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Mapping

import numba
import numpy as np
from numba import cuda

from .kernels.cuda import config
from .kernels.cuda import conv as _conv
from .kernels.cuda import ops as _ops
from .kernels.cuda import pool as _pool
from .kernels.cuda.device import small_grids_allowed
from .kernels.cuda.launch import prepare
from .kernels.cuda.ops import _activate_grad, _first_argmax, _softmax_xent_row
from .kernels.cuda.pool import _planes
from .layers import AvgPool2d, Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU, Sigmoid, Tanh
from .optim import SGD, Adam, Optimizer
from .shapes import as_pair, conv_padding
from .training import EVAL_BATCH, Diverged, EpochMetrics, Loop, epoch_rng, make_optimizer

__all__ = ["DeviceTrainer", "DeviceLoop", "run_on_device", "SUPPORTED_LAYERS", "check_supported"]


_ACTIVATIONS = {ReLU: "relu", Sigmoid: "sigmoid", Tanh: "tanh"}
#: The layer classes the device trainer runs (exact classes: a subclass may change the maths).
SUPPORTED_LAYERS = (Conv2d, MaxPool2d, AvgPool2d, Linear, ReLU, Sigmoid, Tanh, Flatten, Dropout)


# ---------------------------------------------------------------------------------------------
# Kernels of the training step (the layers' own kernels are numbaconv.kernels.cuda's)
# ---------------------------------------------------------------------------------------------

@cuda.jit
def _gather_kernel(src_x, src_y, index, dst_x, dst_y, start):
    """dst_x[r, f] = src_x[index[start + r], f]; dst_y[r] = src_y[index[start + r]].

    src_x (N, F), dst_x (B, F) with B the batch's rows; one thread per element of dst_x.
    """
    rows, feats = dst_x.shape
    for i in range(cuda.grid(1), rows * feats, cuda.gridsize(1)):
        f = i % feats
        r = i // feats
        j = index[start + r]
        dst_x[r, f] = src_x[j, f]
        if f == 0:
            dst_y[r] = src_y[j]


@cuda.jit
def _xent_hits_kernel(z, labels, grad, row_loss, hits, start):
    """Softmax cross-entropy of the batch's logits z (B, K), one thread per row i:

    row_loss[start + i] = logsumexp(z[i]) - z[i, labels[i]] (shifted by the row maximum),
    hits[start + i] = 1 where the first argmax of z[i] is the label, else 0,
    grad[i, j] = (softmax(z[i])[j] - [j == labels[i]]) / B: the gradient of the batch mean.
    """
    rows = z.shape[0]
    n_rows = grad.dtype.type(rows)
    for i in range(cuda.grid(1), rows, cuda.gridsize(1)):
        label = labels[i]
        row_loss[start + i] = _softmax_xent_row(z, i, label, grad, n_rows, True)
        hits[start + i] = 1 if _first_argmax(z, i) == label else 0


@cuda.jit
def _hits_kernel(z, labels, hits, start):
    """hits[start + i] = 1 where the first argmax of z[i] (B, K) is labels[i], else 0."""
    for i in range(cuda.grid(1), z.shape[0], cuda.gridsize(1)):
        hits[start + i] = 1 if _first_argmax(z, i) == labels[i] else 0


@cuda.jit
def _act_bias_partial_kernel(gy, y, g, partial, chunk, act):
    """Activation backward fused with the first pass of the bias gradient:

    g[n, c, l] = act'(.) * gy[n, c, l] (from the activation's output y), and
    partial[k, c] = sum of g[n, c, l] over the k-th chunk of the flat (n, l) range, in order.
    gy, y, g (N, C, L); partial (K, C). Every element of g is written by exactly one thread.
    """
    n_batch, n_chan, length = gy.shape
    reduced = n_batch * length
    one = g.dtype.type(1)
    for i in range(cuda.grid(1), partial.shape[0] * n_chan, cuda.gridsize(1)):
        c = i % n_chan
        k = i // n_chan
        acc = partial.dtype.type(0)
        for r in range(k * chunk, min(reduced, (k + 1) * chunk)):
            n = r // length
            pos = r % length
            v = _activate_grad(gy[n, c, pos], y[n, c, pos], act, one)
            g[n, c, pos] = v
            acc += v
        partial[k, c] = acc


@cuda.jit
def _dropout_kernel(src, mask, scale, dst, start):
    """dst[r, f] = src[r, f] * (scale if mask[start + r, f] else 0): inverted dropout with the
    epoch's keep mask (rows indexed by position in the epoch); src, dst (B, F)."""
    rows, feats = dst.shape
    zero = dst.dtype.type(0)
    for i in range(cuda.grid(1), rows * feats, cuda.gridsize(1)):
        f = i % feats
        r = i // feats
        m = scale if mask[start + r, f] != 0 else zero
        dst[r, f] = src[r, f] * m


@functools.cache
def _epoch_sums_kernel():
    """One block: out = [sum of row_loss (float64), sum of train hits, sum of test hits].

    Each thread sums a fixed strided subset in float64, thread 0 adds the partial sums in
    order, so the result is deterministic.
    """
    threads = config.THREADS_PER_BLOCK  # a closure constant: shared array shapes are literal

    @cuda.jit
    def epoch_sums(row_loss, train_hits, test_hits, out):
        s_loss = cuda.shared.array(threads, numba.float64)
        s_train = cuda.shared.array(threads, numba.float64)
        s_test = cuda.shared.array(threads, numba.float64)
        t = cuda.threadIdx.x
        loss = 0.0
        for i in range(t, row_loss.shape[0], threads):
            loss += float(row_loss[i])
        train = 0.0
        for i in range(t, train_hits.shape[0], threads):
            train += float(train_hits[i])
        test = 0.0
        for i in range(t, test_hits.shape[0], threads):
            test += float(test_hits[i])
        s_loss[t] = loss
        s_train[t] = train
        s_test[t] = test
        cuda.syncthreads()
        if t == 0:
            for j in range(1, threads):
                loss += s_loss[j]
                train += s_train[j]
                test += s_test[j]
            out[0] = loss
            out[1] = train
            out[2] = test

    return epoch_sums


# ---------------------------------------------------------------------------------------------
# Launch plumbing
# ---------------------------------------------------------------------------------------------

def _grid(total: int) -> tuple[int, int]:
    return config.blocks_for(total), config.THREADS_PER_BLOCK


def _bind(kernel, dims, *args):
    """A launch as a callable of the batch's ``start`` (ignored: the arguments are fixed)."""
    return prepare(kernel, *dims, *args)


def _bind_start(kernel, dims, *args):
    """A launch whose last argument is the batch's ``start`` (its rows' epoch position)."""
    return prepare(kernel, *dims, *args, with_start=True)


def _gemm(a, b, bias, c, trans_a, trans_b, act):
    """Launch of the backend's tiled product: c = act(op(a) @ op(b) + bias)."""
    blocks, threads = _ops._gemm_grid(*c.shape)
    kernel = _ops._gemm_kernel(np.dtype(c.dtype).name)
    has_bias = bias is not None
    bias = bias if has_bias else _ops._placeholder(c.dtype)
    return prepare(kernel, blocks, threads, a, b, bias, c, trans_a, trans_b, has_bias,
                   _ops.activation_code(act))


def _bias_grad(gy3, y3, g3, act, grad_bias):
    """Launches for grad_bias (C,) = sum over (N, L) of g (N, C, L), where g is gy3 itself
    without an activation, else act'(.) * gy3 written into g3 on the way (fused)."""
    n_batch, n_chan, length = gy3.shape
    chunks, chunk = config.chunking(n_chan, n_batch * length)
    partial = cuda.device_array((chunks, n_chan), dtype=gy3.dtype)
    if act:
        first = _bind(_act_bias_partial_kernel, _grid(chunks * n_chan), gy3, y3, g3, partial,
                      chunk, _ops.activation_code(act))
    else:
        first = _bind(_ops._channel_partial_kernel, _grid(chunks * n_chan), gy3, partial, chunk)
    return [first, _bind(_ops._sum_chunks_kernel, _grid(n_chan), partial, grad_bias,
                         np.dtype(gy3.dtype).type(1))]


def _act_backward(gy, y, g, act):
    """Launch for g = act'(.) * gy from the activation's output y (any shape, flat)."""
    return _bind(_ops._act_backward_kernel, _grid(gy.size), gy.reshape(gy.size),
                 y.reshape(y.size), g.reshape(g.size), _ops.activation_code(act))


# ---------------------------------------------------------------------------------------------
# Stages: one per layer, or per Conv2d/Linear with the activation that follows it
# ---------------------------------------------------------------------------------------------

class _Stage:
    """A layer's device passes. ``forward``/``backward`` return ``(launches, output view)``
    for a batch of ``rows`` rows; buffers come from :meth:`allocate`, done once."""

    index = 0
    params: tuple[str, ...] = ()

    def __init__(self, in_shape: tuple, out_shape: tuple, dtype):
        self.in_shape, self.out_shape, self.dtype = in_shape, out_shape, np.dtype(dtype)

    def _buffer(self, rows, shape, dtype=None):
        return cuda.device_array((rows,) + tuple(shape), dtype=dtype or self.dtype)

    def allocate(self, rows_forward: int, rows_train: int, need_input_grad: bool) -> None:
        self.y = self._buffer(rows_forward, self.out_shape)
        self.gx = self._buffer(rows_train, self.in_shape) if need_input_grad else None

    def forward(self, x, rows, training):
        raise NotImplementedError

    def backward(self, gy, x, y, rows, need_input_grad):
        raise NotImplementedError


class _ConvStage(_Stage):
    def __init__(self, layer: Conv2d, act, in_shape, out_shape, views, grads):
        super().__init__(in_shape, out_shape, layer.params["weight"].dtype)
        self.act = act
        self.weight, self.bias = views["weight"], views.get("bias")
        self.grad_weight, self.grad_bias = grads["weight"], grads.get("bias")
        self.stride, self.dilation = tuple(layer.stride), tuple(layer.dilation)
        self.padding = conv_padding(layer.padding, tuple(layer.kernel_size), self.stride,
                                    self.dilation)
        self.geometry = (self.stride, self.padding, self.dilation)

    def allocate(self, rows_forward, rows_train, need_input_grad):
        super().allocate(rows_forward, rows_train, need_input_grad)
        self.g = self._buffer(rows_train, self.out_shape) if self.act else None

    def forward(self, x, rows, training):
        y = self.y[:rows]
        return [_conv.forward_launch(x, self.weight, self.bias, y, *self.geometry, self.act)], y

    def backward(self, gy, x, y, rows, need_input_grad):
        launches = []
        c_out, oh, ow = self.out_shape
        g = self.g[:rows] if self.act else gy
        if self.grad_bias is not None:
            shape3 = (rows, c_out, oh * ow)
            launches += _bias_grad(gy.reshape(shape3), y.reshape(shape3), g.reshape(shape3),
                                   self.act, self.grad_bias)
        elif self.act:
            launches.append(_act_backward(gy, y, g, self.act))
        gx = None
        if need_input_grad:
            gx = self.gx[:rows]
            launches.append(_conv.grad_input_launch(g, self.weight, gx, *self.geometry))
        launches.append(_conv.grad_weight_launch(g, x, self.grad_weight, *self.geometry))
        return launches, gx


class _LinearStage(_Stage):
    """Linear over the last axis; leading axes beyond the batch fold into the rows."""

    def __init__(self, layer: Linear, act, in_shape, out_shape, views, grads):
        super().__init__(in_shape, out_shape, layer.params["weight"].dtype)
        self.act = act
        self.weight, self.bias = views["weight"], views.get("bias")
        self.grad_weight, self.grad_bias = grads["weight"], grads.get("bias")
        self.lead = int(np.prod(in_shape[:-1], dtype=np.int64))
        self.f_in, self.f_out = in_shape[-1], out_shape[-1]

    def allocate(self, rows_forward, rows_train, need_input_grad):
        super().allocate(rows_forward, rows_train, need_input_grad)
        self.g = self._buffer(rows_train, self.out_shape) if self.act else None

    def forward(self, x, rows, training):
        y = self.y[:rows]
        m = rows * self.lead
        return [_gemm(x.reshape(m, self.f_in), self.weight, self.bias, y.reshape(m, self.f_out),
                      False, True, self.act)], y

    def backward(self, gy, x, y, rows, need_input_grad):
        launches = []
        m = rows * self.lead
        g = self.g[:rows] if self.act else gy
        if self.grad_bias is not None:
            shape3 = (m, self.f_out, 1)
            launches += _bias_grad(gy.reshape(shape3), y.reshape(shape3), g.reshape(shape3),
                                   self.act, self.grad_bias)
        elif self.act:
            launches.append(_act_backward(gy, y, g, self.act))
        g2 = g.reshape(m, self.f_out)
        gx = None
        if need_input_grad:
            gx = self.gx[:rows]
            launches.append(_gemm(g2, self.weight, None, gx.reshape(m, self.f_in), False, False,
                                  None))
        launches.append(_gemm(g2, x.reshape(m, self.f_in), None, self.grad_weight, True, False,
                              None))
        return launches, gx


class _ActStage(_Stage):
    """An activation that does not follow a Conv2d or Linear (it runs on its own)."""

    def __init__(self, act, in_shape, out_shape, dtype):
        super().__init__(in_shape, out_shape, dtype)
        self.act = act

    def forward(self, x, rows, training):
        y = self.y[:rows]
        return [_bind(_ops._bias_act_forward_kernel, _grid(x.size), x.reshape(1, 1, x.size),
                      _ops._placeholder(self.dtype), y.reshape(1, 1, y.size), False,
                      _ops.activation_code(self.act))], y

    def backward(self, gy, x, y, rows, need_input_grad):
        gx = self.gx[:rows]
        return [_act_backward(gy, y, gx, self.act)], gx


class _MaxPoolStage(_Stage):
    def __init__(self, layer: MaxPool2d, in_shape, out_shape, dtype):
        super().__init__(in_shape, out_shape, dtype)
        self.window = (*as_pair(layer.kernel_size, "kernel_size"), *as_pair(layer.stride, "stride"),
                       *as_pair(layer.padding, "padding"), *as_pair(layer.dilation, "dilation"))

    def allocate(self, rows_forward, rows_train, need_input_grad):
        super().allocate(rows_forward, rows_train, need_input_grad)
        self.indices = self._buffer(rows_forward, self.out_shape, np.int64)

    def forward(self, x, rows, training):
        y = self.y[:rows]
        return [_bind(_pool._max_pool_forward_kernel, _grid(y.size), _planes(x),
                      _planes(y), _planes(self.indices[:rows]), *self.window)], y

    def backward(self, gy, x, y, rows, need_input_grad):
        gx = self.gx[:rows]
        return [_bind(_pool._max_pool_backward_gather_kernel, _grid(gx.size), _planes(gy),
                      _planes(self.indices[:rows]), _planes(gx), *self.window)], gx


class _AvgPoolStage(_Stage):
    def __init__(self, layer: AvgPool2d, in_shape, out_shape, dtype):
        super().__init__(in_shape, out_shape, dtype)
        self.window = (*as_pair(layer.kernel_size, "kernel_size"), *as_pair(layer.stride, "stride"),
                       *as_pair(layer.padding, "padding"), bool(layer.count_include_pad),
                       int(layer.divisor_override or 0))

    def forward(self, x, rows, training):
        y = self.y[:rows]
        return [_bind(_pool._avg_pool_forward_kernel, _grid(y.size), _planes(x),
                      _planes(y), *self.window)], y

    def backward(self, gy, x, y, rows, need_input_grad):
        gx = self.gx[:rows]
        return [_bind(_pool._avg_pool_backward_kernel, _grid(gx.size), _planes(gy),
                      _planes(gx), *self.window)], gx


class _ReshapeStage(_Stage):
    """Flatten: a view both ways, no launch, no buffer."""

    def allocate(self, rows_forward, rows_train, need_input_grad):
        pass

    def forward(self, x, rows, training):
        return [], x.reshape((rows,) + self.out_shape)

    def backward(self, gy, x, y, rows, need_input_grad):
        return [], gy.reshape((rows,) + self.in_shape)


class _DropoutStage(_Stage):
    """Inverted dropout with the CPU layer's masks: per epoch, the host draws the keep mask
    of every training row at once from the same generator (``rng.random`` in float32, which
    gives the same numbers in one draw as in the CPU's per-batch draws) and uploads it."""

    def __init__(self, layer: Dropout, index, in_shape, out_shape, dtype):
        super().__init__(in_shape, out_shape, dtype)
        self.index, self.p = index, float(layer.p)
        self.active = self.p > 0.0
        self.feats = int(np.prod(in_shape, dtype=np.int64))
        self.scale = self.dtype.type(0 if self.p >= 1.0 else 1.0 / (1.0 - self.p))
        self.mask = None

    def allocate_mask(self, n_train):
        if self.active:
            self.mask = cuda.device_array((n_train, self.feats), dtype=np.uint8)
            self._host = np.empty((n_train, self.feats), dtype=np.uint8)

    def new_epoch(self, seed, epoch, n_train):
        """Upload this epoch's keep mask (rows in the epoch's order, as the CPU draws them)."""
        if not self.active:
            return
        if self.p >= 1.0:
            self._host[...] = 0
        else:
            rng = epoch_rng(seed, epoch, 1 + self.index)
            np.greater_equal(rng.random((n_train, self.feats), dtype=np.float32), self.p,
                             out=self._host.view(bool))
        self.mask.copy_to_device(self._host)

    def allocate(self, rows_forward, rows_train, need_input_grad):
        if self.active:
            super().allocate(rows_train, rows_train, need_input_grad)

    def _apply(self, src, dst, rows):
        return _bind_start(_dropout_kernel, _grid(rows * self.feats),
                           src.reshape(rows, self.feats), self.mask, self.scale,
                           dst.reshape(rows, self.feats))

    def forward(self, x, rows, training):
        if not (training and self.active):
            return [], x
        y = self.y[:rows]
        return [self._apply(x, y, rows)], y

    def backward(self, gy, x, y, rows, need_input_grad):
        if not self.active:
            return [], gy
        gx = self.gx[:rows]
        return [self._apply(gy, gx, rows)], gx


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------

def check_supported(model) -> None:
    """``ValueError`` naming the first layer of ``model`` the device trainer cannot run."""
    for i, layer in enumerate(model):
        if type(layer) not in SUPPORTED_LAYERS:
            names = ", ".join(cls.__name__ for cls in SUPPORTED_LAYERS)
            raise ValueError(f"layer {i} ({type(layer).__name__}) is not supported on --device "
                             f"cuda, which runs only numbaconv's built-in {names}; train this "
                             "model with --device cpu")


class _Plan:
    """The launches of one step (or one evaluation batch) of ``rows`` rows."""

    __slots__ = ("forward", "backward")

    def __init__(self, forward, backward):
        self.forward, self.backward = forward, backward


class DeviceTrainer:
    """Train ``model`` (a ``Sequential`` of built-in layers) on the CUDA device.

    ``settings`` is a :class:`numbaconv.train.Settings`; ``data`` has ``train_x`` (N, C, H, W)
    in the parameters' dtype, ``train_y`` (N,) ints in [0, classes), ``test_x``, ``test_y``.
    The optimizer is ``optimizer`` (a :class:`numbaconv.optim.SGD` or ``Adam`` over
    ``model.named_params()``: its hyperparameters and state are used, and :meth:`sync_to_host`
    writes the device's state back into it), else a fresh ``make_optimizer(settings.optimizer,
    model.named_params(), settings.lr)`` loaded with ``optimizer_state`` (a ``state_dict()``) if
    given. The model's arrays are only read here and written by :meth:`sync_to_host`.
    """

    def __init__(self, model, settings, data, optimizer_state: Mapping | None = None, *,
                 optimizer: Optimizer | None = None):
        check_supported(model)
        self.model, self.settings = model, settings
        params = model.named_params()
        if not params:
            raise ValueError("the model has no parameters to train")
        dtypes = {p.dtype for p in params.values()}
        if len(dtypes) != 1:
            raise ValueError(f"the device trainer needs one parameter dtype, got "
                             f"{sorted(map(str, dtypes))}")
        self.dtype = np.dtype(dtypes.pop())
        self._init_optimizer(params, optimizer, optimizer_state)
        self._check_data(data)
        self._build_stages(tuple(int(s) for s in data.train_x.shape[1:]))
        self._upload(params, data)
        self._plans: dict[tuple[int, bool], _Plan] = {}
        self._sgd = None  # (hyperparameters, prepared SGD launch)

    # setup -----------------------------------------------------------------------------

    def _init_optimizer(self, params, optimizer, optimizer_state):
        if optimizer is None:
            optimizer = make_optimizer(self.settings.optimizer, params, self.settings.lr)
            if optimizer_state is not None:
                optimizer.load_state_dict(optimizer_state)
        elif optimizer_state is not None:
            raise ValueError("give the optimizer or its state, not both")
        if type(optimizer) not in (SGD, Adam):
            raise ValueError(f"the device trainer runs numbaconv.optim.SGD or Adam, not "
                             f"{type(optimizer).__name__}")
        if set(optimizer.params) != set(params) or any(
                optimizer.params[k].shape != p.shape for k, p in params.items()):
            raise ValueError("the optimizer's parameters are not the model's")
        if isinstance(optimizer, SGD) and optimizer.dampening != 0.0:
            raise ValueError("SGD with dampening is not supported on --device cuda")
        self.optimizer = optimizer
        self.step_count = int(optimizer.step_count)
        self._buffers = optimizer._buffers if (isinstance(optimizer, Adam)
                                               or optimizer.momentum != 0.0) else ()

    def _check_data(self, data):
        for name in ("train_x", "test_x"):
            array = np.asarray(getattr(data, name))
            if array.dtype != self.dtype or array.ndim < 2:
                raise ValueError(f"data.{name} must be a {self.dtype} array (N, ...) like the "
                                 f"parameters, got {array.dtype} {array.shape}")
        if data.train_x.shape[1:] != data.test_x.shape[1:]:
            raise ValueError(f"train and test images differ in shape: {data.train_x.shape[1:]} "
                             f"and {data.test_x.shape[1:]}")
        if len(data.train_x) == 0 or len(data.train_y) != len(data.train_x) \
                or len(data.test_y) != len(data.test_x):
            raise ValueError("data needs a non-empty train set and as many labels as images")

    def _build_stages(self, sample_shape):
        layers = list(self.model)
        params, views, grads = self.model.named_params(), {}, {}
        self._offsets, offset = {}, 0
        for name, p in params.items():
            self._offsets[name] = (offset, p.size, p.shape)
            offset += p.size
        self.n_params = offset
        n_state = 1 + len(self._buffers)
        # params, then the optimizer's buffers, in one array: one transfer to sync them all
        self._state = cuda.device_array(n_state * offset, dtype=self.dtype)
        self._grads = cuda.device_array(offset, dtype=self.dtype)
        self._flat = [self._state[k * offset:(k + 1) * offset] for k in range(n_state)]
        for name, (start, size, shape) in self._offsets.items():
            views[name] = self._flat[0][start:start + size].reshape(shape)
            grads[name] = self._grads[start:start + size].reshape(shape)

        def mine(index, table):
            prefix = f"{index}."
            return {k[len(prefix):]: v for k, v in table.items() if k.startswith(prefix)}

        self.stages: list[_Stage] = []
        shape, i = sample_shape, 0
        while i < len(layers):
            layer = layers[i]
            try:
                out = tuple(int(s) for s in layer.output_shape((1,) + shape))[1:]
            except ValueError as exc:
                raise ValueError(f"layer {i} ({type(layer).__name__}): {exc}") from exc
            act = None
            if type(layer) in (Conv2d, Linear) and i + 1 < len(layers) \
                    and type(layers[i + 1]) in _ACTIVATIONS:
                act = _ACTIVATIONS[type(layers[i + 1])]
            if type(layer) is Conv2d:
                stage = _ConvStage(layer, act, shape, out, mine(i, views), mine(i, grads))
            elif type(layer) is Linear:
                stage = _LinearStage(layer, act, shape, out, mine(i, views), mine(i, grads))
            elif type(layer) in _ACTIVATIONS:
                stage = _ActStage(_ACTIVATIONS[type(layer)], shape, out, self.dtype)
            elif type(layer) is MaxPool2d:
                stage = _MaxPoolStage(layer, shape, out, self.dtype)
            elif type(layer) is AvgPool2d:
                stage = _AvgPoolStage(layer, shape, out, self.dtype)
            elif type(layer) is Flatten:
                stage = _ReshapeStage(shape, out, self.dtype)
            else:
                stage = _DropoutStage(layer, i, shape, out, self.dtype)
            stage.index = i
            stage.params = tuple(layer.params)
            self.stages.append(stage)
            shape = out
            i += 2 if act else 1
        if len(shape) != 1:
            raise ValueError(f"the model's output for one image has shape {shape}; softmax "
                             "cross-entropy needs (classes,) (end with Flatten/Linear)")
        self.n_classes = shape[0]
        self._first_param = next(k for k, s in enumerate(self.stages) if s.params)

    def _upload(self, params, data):
        n_train, n_test = len(data.train_x), len(data.test_x)
        labels = np.asarray(data.train_y)
        if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 \
                or labels.max() >= self.n_classes:
            raise ValueError(f"data.train_y must be ints in [0, {self.n_classes})")
        self.n_train, self.n_test = n_train, n_test
        self.rows_train = min(int(self.settings.batch_size), n_train)
        self.rows_forward = max(self.rows_train, min(EVAL_BATCH, n_test))
        feats = int(np.prod(data.train_x.shape[1:], dtype=np.int64))
        self._train_x = cuda.to_device(np.ascontiguousarray(data.train_x).reshape(n_train, feats))
        self._train_y = cuda.to_device(labels.astype(np.int64))
        self._test_x = cuda.to_device(np.ascontiguousarray(data.test_x).reshape(n_test, feats)) \
            if n_test else None
        self._test_y = cuda.to_device(np.asarray(data.test_y, dtype=np.int64)) if n_test else None
        self._test_order = cuda.to_device(np.arange(n_test, dtype=np.int64)) if n_test else None
        self._perm = cuda.device_array(n_train, dtype=np.int64)
        self._row_loss = cuda.device_array(n_train, dtype=self.dtype)
        self._train_hits = cuda.device_array(n_train, dtype=np.int64)
        self._test_hits = cuda.device_array(max(n_test, 1), dtype=np.int64)
        self._sums = cuda.device_array(3, dtype=np.float64)
        self._x_in = cuda.device_array((self.rows_forward,) + tuple(data.train_x.shape[1:]),
                                       dtype=self.dtype)
        self._y_in = cuda.device_array(self.rows_forward, dtype=np.int64)
        self._grad_logits = cuda.device_array((self.rows_train, self.n_classes), dtype=self.dtype)
        for k, stage in enumerate(self.stages):
            stage.allocate(self.rows_forward, self.rows_train, k > self._first_param)
            if isinstance(stage, _DropoutStage):
                stage.allocate_mask(n_train)
        # weights and optimizer state: one upload
        host = np.zeros((len(self._flat), self.n_params), dtype=self.dtype)
        for name, (start, size, _) in self._offsets.items():
            host[0, start:start + size] = params[name].ravel()
            for k, buffer in enumerate(self._buffers, start=1):
                saved = self.optimizer.state.get(buffer, {}).get(name)
                if saved is not None:
                    host[k, start:start + size] = np.asarray(saved, dtype=self.dtype).ravel()
        self._state.copy_to_device(host.reshape(-1))
        self._synced = True

    # plans -----------------------------------------------------------------------------

    def _plan(self, rows: int, training: bool) -> _Plan:
        key = (rows, training)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        x = self._x_in[:rows]
        source = (self._train_x, self._train_y, self._perm) if training \
            else (self._test_x, self._test_y, self._test_order)
        # the batch's rows, gathered from the data set through the epoch's order
        forward = [_bind_start(_gather_kernel, _grid(x.size), *source,
                               x.reshape(rows, x.size // rows), self._y_in[:rows])]
        backward, saved = [], []
        for stage in self.stages:
            launches, y = stage.forward(x, rows, training)
            forward += launches
            saved.append((x, y))
            x = y
        logits = x
        if training:
            forward.append(_bind_start(_xent_hits_kernel, _grid(rows), logits, self._y_in[:rows],
                                       self._grad_logits[:rows], self._row_loss,
                                       self._train_hits))
            gy = self._grad_logits[:rows]
            for k in range(len(self.stages) - 1, self._first_param - 1, -1):
                x, y = saved[k]
                launches, gy = self.stages[k].backward(gy, x, y, rows, k > self._first_param)
                backward += launches
        else:
            forward.append(_bind_start(_hits_kernel, _grid(rows), logits, self._y_in[:rows],
                                       self._test_hits))
        plan = self._plans[key] = _Plan(forward, backward)
        return plan

    def _optimizer_step(self):
        opt, t = self.optimizer, self.step_count + 1
        params, grads = self._flat[0], self._grads
        if isinstance(opt, SGD):
            hyper = (opt.lr, opt.momentum, opt.weight_decay, opt.nesterov)
            if self._sgd is None or self._sgd[0] != hyper:  # prepared once, unless they change
                self._sgd = hyper, _ops.sgd_launch(
                    params, grads, self._flat[1] if self._buffers else None, *hyper)
            self._sgd[1]()
        else:
            _ops.adam_step(params, grads, self._flat[1], self._flat[2], t, opt.lr, opt.beta1,
                           opt.beta2, opt.eps, opt.weight_decay)
        self.step_count = t
        self._synced = False

    # training --------------------------------------------------------------------------

    def _train_pass(self, epoch, on_batch):
        order = epoch_rng(self.settings.seed, epoch, 0).permutation(self.n_train)
        self._perm.copy_to_device(order.astype(np.int64, copy=False))
        for stage in self.stages:
            if isinstance(stage, _DropoutStage):
                stage.new_epoch(self.settings.seed, epoch, self.n_train)
        batch = self.rows_train
        for start in range(0, self.n_train, batch):
            rows = min(batch, self.n_train - start)
            plan = self._plan(rows, True)
            for launch in plan.forward:
                launch(start)
            for launch in plan.backward:
                launch(start)
            self._optimizer_step()
            if on_batch is not None:
                on_batch(rows)

    def _eval_pass(self):
        for start in range(0, self.n_test, self.rows_forward):
            rows = min(self.rows_forward, self.n_test - start)
            plan = self._plan(rows, False)
            for launch in plan.forward:
                launch(start)

    def _fetch_sums(self) -> np.ndarray:
        """The one device-to-host transfer: [loss sum, train hits, test hits]."""
        _epoch_sums_kernel()[1, config.THREADS_PER_BLOCK](
            self._row_loss, self._train_hits, self._test_hits, self._sums)
        return self._sums.copy_to_host()

    def fit_epoch(self, epoch: int, on_batch=None) -> EpochMetrics:
        """Train one epoch (1-based, it seeds the shuffle and dropout), then measure the test
        accuracy: :func:`numbaconv.train.fit_epoch`'s metrics, with one host transfer.

        ``on_batch(rows)`` is called as each batch is queued (the GPU runs asynchronously).
        Raises :class:`~numbaconv.train.Diverged` after an epoch whose loss is not finite.
        """
        with small_grids_allowed():
            started = time.perf_counter()
            self._train_pass(epoch, on_batch)
            cuda.synchronize()
            trained = time.perf_counter()
            self._eval_pass()
            loss_sum, train_hits, test_hits = self._fetch_sums()
            done = time.perf_counter()
        if not math.isfinite(loss_sum):
            bad = np.flatnonzero(~np.isfinite(self._row_loss.copy_to_host()))
            position = int(bad[0]) if bad.size else self.n_train - 1
            raise Diverged(epoch, self.settings.lr, position // self.rows_train + 1)
        train_seconds = trained - started
        return EpochMetrics(epoch=epoch, train_loss=float(loss_sum) / self.n_train,
                            train_acc=float(train_hits) / self.n_train,
                            test_acc=float(test_hits) / self.n_test if self.n_test else math.nan,
                            train_seconds=train_seconds, eval_seconds=done - trained,
                            examples_per_sec=self.n_train / train_seconds)

    def evaluate(self) -> float:
        """Test accuracy of the device weights (one host transfer)."""
        if not self.n_test:
            return math.nan
        with small_grids_allowed():
            self._eval_pass()
            _, _, test_hits = self._fetch_sums()
        return float(test_hits) / self.n_test

    # host copies -----------------------------------------------------------------------

    def sync_to_host(self) -> None:
        """Copy the device weights into the model's parameter arrays (in place) and the
        optimizer state into ``self.optimizer`` (so ``optimizer.state_dict()`` is current);
        one transfer."""
        host = self._state.copy_to_host().reshape(len(self._flat), self.n_params)
        params = self.model.named_params()
        opt = self.optimizer
        for name, (start, size, shape) in self._offsets.items():
            np.copyto(params[name], host[0, start:start + size].reshape(shape))
        opt.step_count = self.step_count
        opt.state = {b: {} for b in opt._buffers}
        if self.step_count:
            for k, buffer in enumerate(self._buffers, start=1):
                opt.state[buffer] = {name: host[k, start:start + size].reshape(shape).copy()
                                     for name, (start, size, shape) in self._offsets.items()}
        self._synced = True

    def optimizer_state_dict(self) -> dict:
        """The optimizer state in :mod:`numbaconv.optim`'s ``state_dict`` format."""
        if not self._synced:
            self.sync_to_host()
        return self.optimizer.state_dict()


def run_on_device(model, settings, data, start_epoch: int = 1, *, optimizer=None,
                  optimizer_state=None, on_epoch=None, on_batch=None) -> list[EpochMetrics]:
    """Train epochs ``start_epoch..settings.epochs`` on the device; returns their metrics.

    ``on_epoch(metrics, trainer)`` runs after each epoch (call ``trainer.sync_to_host()``
    there before saving a checkpoint); ``on_batch(epoch)`` may return a per-batch callback
    (progress bars). The model's arrays hold the final weights on return.
    """
    trainer = DeviceTrainer(model, settings, data, optimizer_state, optimizer=optimizer)
    history = []
    for epoch in range(start_epoch, settings.epochs + 1):
        metrics = trainer.fit_epoch(epoch, on_batch(epoch) if on_batch else None)
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics, trainer)
    trainer.sync_to_host()
    return history


class DeviceLoop(Loop):
    """The training loop with its epochs run by a :class:`DeviceTrainer`: the same settings,
    callbacks and checks as on the CPU. After each epoch the weights and optimizer state come
    back to the host (one more transfer per epoch), where the weight check and the callbacks
    (checkpoints) read them."""

    def __init__(self, model, optimizer, data, settings, callbacks=(), history=None):
        super().__init__(model, optimizer, data, settings, callbacks=callbacks, history=history)
        self.trainer = DeviceTrainer(model, settings, data, optimizer=optimizer)

    def fit_epoch(self, epoch: int) -> EpochMetrics:
        def on_batch(rows):
            for callback in self.callbacks:
                callback.on_batch_end(self, rows)

        metrics = self.trainer.fit_epoch(epoch, on_batch=on_batch)
        self.trainer.sync_to_host()
        self._check_weights(epoch)
        return metrics
