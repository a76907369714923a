"""The one door from layers to kernels: convolution, pooling, dense products, activations,
dropout and the loss as plain functions, forward and backward, with PyTorch's semantics.

Every function checks its arguments, so a mistake surfaces as a ``ValueError`` or
``TypeError`` that names the argument and the shapes involved, then dispatches by the type of
its arrays: NumPy arrays run on the CPU (:mod:`numbaconv.kernels.cpu`), Numba CUDA device
arrays on the GPU (:mod:`numbaconv.kernels.cuda`, needs the ``numbaconv[cuda]`` extra), and
the result lives where the inputs do. All arrays of one call must live on one device. A layer
that computes only through these functions runs on both devices unchanged
(:meth:`numbaconv.layers.Layer.to`, :mod:`numbaconv.devices`).

Arrays are float32 or float64 (the result has the input's dtype), in NCHW layout for images.
Shapes: ``x`` (N, C_in, H, W); ``weight`` (C_out, C_in // groups, kH, kW); ``bias`` (C_out,);
outputs (N, C_out, H_out, W_out) with ``H_out = floor((H + pad_top + pad_bottom
- dilation*(kH-1) - 1) / stride) + 1`` (see :mod:`numbaconv.shapes`).

On a GPU, arrays computed during a training step come from the step's buffers
(:func:`numbaconv.devices.Device.take` starts a step): the same step of the next batch
writes them again, so a layer keeps nothing across steps but in its ``params``, ``grads``
and ``buffers``.
"""

from __future__ import annotations

import importlib
import math

import numpy as np

from . import shapes
from .kernels.cpu import activation as cpu_activation
from .kernels.cpu import adaptive_pool as cpu_adaptive_pool
from .kernels.cpu import buffers as cpu_buffers
from .kernels.cpu import conv as cpu_conv
from .kernels.cpu import conv_act_pool
from .kernels.cpu import elementwise as cpu_elementwise
from .kernels.cpu import layout as cpu_layout
from .kernels.cpu import norm as cpu_norm
from .kernels.cpu import pool as cpu_pool
from .kernels.cpu.dense import product_acc
from .kernels.cuda.device import is_device_array as _is_device_array
from .losses import check_labels, check_logits, log_softmax

__all__ = [
    "conv2d", "conv2d_backward",
    "conv2d_act_pool", "conv2d_act_pool_backward",
    "max_pool2d", "max_pool2d_backward",
    "avg_pool2d", "avg_pool2d_backward",
    "linear", "linear_backward",
    "relu", "relu_backward", "sigmoid", "sigmoid_backward", "tanh", "tanh_backward",
    "dropout", "dropout_backward",
    "cross_entropy", "cross_entropy_backward", "cross_entropy_with_grad", "correct",
    "corr2d", "convolve2d",
    "add", "concat_channels", "split_channels", "count_nonfinite", "resize_bilinear",
    "batch_norm", "batch_norm_relu", "batch_norm_backward",
    "adaptive_pool2d_output_shape", "adaptive_avg_pool2d", "adaptive_avg_pool2d_backward",
    "adaptive_max_pool2d", "adaptive_max_pool2d_backward",
]

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# --------------------------------------------------------------------------- argument checks

def _cuda(module: str = "ops"):
    """A module of the CUDA backend (imported on first use: numbaconv never imports
    numba-cuda unless device arrays reach it)."""
    return importlib.import_module(f"{__package__}.kernels.cuda.{module}")


def _check_array(array, name: str, ndim: int | None, layout: str):
    """``array``, a float ndarray or device array of ``ndim`` dimensions (any number when
    None), else an error."""
    if not isinstance(array, np.ndarray) and not _is_device_array(array):
        raise TypeError(f"{name} must be a numpy.ndarray of shape {layout}, "
                        f"got {type(array).__name__}")
    if np.dtype(array.dtype) not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got dtype {array.dtype} "
                        f"(shape {tuple(array.shape)})")
    if ndim is not None and array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions {layout}, "
                         f"got shape {tuple(array.shape)}")
    return array


def _check_like(array, name: str, reference, reference_name: str):
    """``array`` must have the shape and dtype of ``reference`` and live on its device."""
    _check_array(array, name, None, f"{tuple(reference.shape)}")
    if tuple(array.shape) != tuple(reference.shape):
        raise ValueError(f"{name} must have {reference_name}'s shape {tuple(reference.shape)}, "
                         f"got {tuple(array.shape)}")
    _check_same_dtype(reference, reference_name, array, name)
    _check_device(reference, {name: array})


def _check_same_dtype(reference, reference_name: str, other, other_name: str) -> None:
    if other.dtype != reference.dtype:
        raise TypeError(f"{other_name} has dtype {other.dtype} but {reference_name} has dtype "
                        f"{reference.dtype}; convert one with .astype()")


def _check_device(x, others: dict) -> bool:
    """True when ``x`` lives on the GPU; every array in ``others`` must live with it."""
    on_device = _is_device_array(x)
    for name, array in others.items():
        if array is not None and _is_device_array(array) != on_device:
            where = "a CUDA device array" if on_device else "a numpy.ndarray"
            raise TypeError(f"{name} must be {where} like x, got {type(array).__name__}")
    return on_device


def _check_grad(grad_y, expected_shape, reference, reference_name: str):
    _check_array(grad_y, "grad_y", 4, "(N, C, H_out, W_out)")
    _check_same_dtype(reference, reference_name, grad_y, "grad_y")
    if tuple(grad_y.shape) != tuple(expected_shape):
        raise ValueError(f"grad_y must have the forward output's shape {tuple(expected_shape)}, "
                         f"got {tuple(grad_y.shape)}")


class _ConvGeometry:
    """Checked and normalised arguments of one convolution."""

    def __init__(self, x, weight, stride, padding, dilation, groups):
        _check_array(x, "x", 4, "(N, C_in, H, W)")
        _check_array(weight, "weight", 4, "(C_out, C_in // groups, kH, kW)")
        _check_same_dtype(x, "x", weight, "weight")
        self.groups = shapes.as_int(groups, "groups", 1)
        self.stride = shapes.as_pair(stride, "stride", 1)
        self.dilation = shapes.as_pair(dilation, "dilation", 1)
        n, c_in, height, width = x.shape
        c_out, c_in_g, kh, kw = weight.shape
        self.kernel = (kh, kw)
        self.padding = shapes.conv_padding(padding, self.kernel, self.stride, self.dilation)
        if min(self.kernel) < 1:
            raise ValueError(f"weight must have a kernel of at least 1x1, got weight shape "
                             f"{tuple(weight.shape)}")
        if c_in % self.groups or c_out % self.groups:
            raise ValueError(f"groups={self.groups} must divide both the input channels "
                             f"({c_in}, x shape {tuple(x.shape)}) and the output channels "
                             f"({c_out}, weight shape {tuple(weight.shape)})")
        if c_in_g * self.groups != c_in:
            raise ValueError(
                f"weight expects {c_in_g * self.groups} input channels ({c_in_g} per group x "
                f"groups={self.groups}) but x has {c_in}: x shape {tuple(x.shape)}, "
                f"weight shape {tuple(weight.shape)}")
        (top, bottom), (left, right) = self.padding
        self.padded = (height + top + bottom, width + left + right)
        reach = tuple(d * (k - 1) + 1 for d, k in zip(self.dilation, self.kernel))
        if reach[0] > self.padded[0] or reach[1] > self.padded[1]:
            raise ValueError(
                f"the kernel spans {reach[0]}x{reach[1]} (dilation {self.dilation}) but the "
                f"padded input is only {self.padded[0]}x{self.padded[1]}: x shape "
                f"{tuple(x.shape)}, weight shape {tuple(weight.shape)}, padding {self.padding}")
        self.output_shape = (n, c_out,
                             shapes.output_size(height, kh, self.stride[0], self.padding[0],
                                                self.dilation[0]),
                             shapes.output_size(width, kw, self.stride[1], self.padding[1],
                                                self.dilation[1]))

    def crop(self, grad_xp):
        """The part of a padded-input gradient that belongs to the real input."""
        (top, bottom), (left, right) = self.padding
        hp, wp = self.padded
        return np.ascontiguousarray(grad_xp[:, :, top:hp - bottom, left:wp - right])


# --------------------------------------------------------------------------- convolution

def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation, as ``torch.nn.functional.conv2d``.

    Parameters
    ----------
    x : ndarray (N, C_in, H, W), float32 or float64
    weight : ndarray (C_out, C_in // groups, kH, kW), the dtype of ``x``
    bias : ndarray (C_out,) or None
    stride, dilation : int or (h, w), at least 1
    padding : int, (h, w), ((top, bottom), (left, right)), 'valid' or 'same'
    groups : int dividing C_in and C_out

    Returns
    -------
    y : ndarray (N, C_out, H_out, W_out), the dtype of ``x``. On the CPU, where the small
        maps' kernels compute it, laid out pixel-major (not C-contiguous: see
        :mod:`numbaconv.kernels.cpu.layout`); x may come in that layout too.
    """
    geo = _ConvGeometry(x, weight, stride, padding, dilation, groups)
    _check_bias(bias, x, weight)
    if _check_device(x, {"weight": weight, "bias": bias}):
        return _cuda("conv").conv2d_forward(x, weight, bias, geo.stride, geo.padding,
                                              geo.dilation, geo.groups)
    return _conv2d_cpu(x, weight, bias, geo)


def _conv2d_cpu(x, weight, bias, geo):
    if 0 in geo.output_shape:
        return np.zeros(geo.output_shape, dtype=x.dtype)
    b = np.zeros(weight.shape[0], dtype=x.dtype) if bias is None else np.ascontiguousarray(bias)
    out_h, out_w = geo.output_shape[2:]
    w = np.ascontiguousarray(weight)
    if cpu_conv.use_pointwise(x.shape, w.shape, geo.groups, geo.stride, geo.padding,
                              x.itemsize):
        return cpu_conv.forward_pointwise(cpu_layout.nchw(x), w, b, geo.stride[0])
    if cpu_conv.use_column_side(x.shape, w.shape, geo.groups, geo.stride, geo.output_shape):
        return cpu_conv.forward_columns(x, w, b, geo.padding, geo.stride, geo.dilation, out_h,
                                        out_w)
    return cpu_conv.forward(cpu_layout.nchw(x), w, b, geo.padding, geo.stride, geo.dilation,
                            geo.groups, out_h, out_w)


def _check_bias(bias, x, weight):
    c_out = weight.shape[0]
    if bias is not None:
        _check_array(bias, "bias", 1, f"(C_out,) = ({c_out},)")
        _check_same_dtype(x, "x", bias, "bias")
        if bias.shape[0] != c_out:
            raise ValueError(f"bias must have C_out={c_out} entries (weight shape "
                             f"{tuple(weight.shape)}), got shape {tuple(bias.shape)}")


def _conv2d_act_pool(x, weight, bias, stride, padding, dilation, groups, activation, pool):
    """``(z, y)`` of :func:`conv2d_act_pool` by one fused CPU pass
    (:mod:`numbaconv.kernels.cpu.conv_act_pool`; activation and pool codes as in
    :mod:`numbaconv.kernels.cpu.activation`), or None where that kernel does not serve the
    convolution (device arrays, a stride, narrow images), which then runs in two passes."""
    if not (isinstance(x, np.ndarray) and isinstance(weight, np.ndarray)):
        return None
    geo = _ConvGeometry(x, weight, stride, padding, dilation, groups)
    _check_bias(bias, x, weight)
    return _one_pass(x, weight, bias, geo, activation, pool)


def _one_pass(x, weight, bias, geo, activation, pool):
    out_h, out_w = geo.output_shape[2:]
    padded_shape = (x.shape[0], x.shape[1]) + geo.padded
    if 0 in geo.output_shape or not conv_act_pool.applies(x.shape, padded_shape, weight.shape,
                                                          x.itemsize, geo.stride, geo.groups,
                                                          out_h, out_w):
        return None
    b = np.zeros(weight.shape[0], dtype=x.dtype) if bias is None else np.ascontiguousarray(bias)
    return conv_act_pool.conv_act_pool_forward(np.ascontiguousarray(x),
                                               np.ascontiguousarray(weight), b, geo.padding,
                                               geo.dilation, geo.groups, out_h, out_w,
                                               activation, pool)


def conv2d_backward(grad_y, x, weight, stride=1, padding=0, dilation=1, groups=1,
                    need_input_grad=True, need_bias_grad=True, *, grad_weight=None,
                    grad_bias=None):
    """Gradients of :func:`conv2d` with respect to its input, weight and bias.

    Parameters
    ----------
    grad_y : ndarray (N, C_out, H_out, W_out), the gradient of the loss at conv2d's output
    x, weight, stride, padding, dilation, groups : as given to :func:`conv2d`
    need_input_grad : bool, default True. False skips grad_x (a network's first layer needs
        none) and returns None in its place.
    need_bias_grad : bool, default True. False returns None for grad_bias (no bias).
    grad_weight, grad_bias : arrays of the gradients' shapes and dtype on x's device, or None.
        Given, the gradients are written into them (a layer's ``grads``) and they are returned.

    Returns
    -------
    (grad_x, grad_weight, grad_bias) : shapes (N, C_in, H, W), (C_out, C_in // groups, kH, kW)
        and (C_out,); grad_x, where the small maps' kernels compute it, in x's layout
        (:func:`conv2d`)
    """
    geo = _ConvGeometry(x, weight, stride, padding, dilation, groups)
    _check_grad(grad_y, geo.output_shape, x, "x")
    on_device = _check_device(x, {"weight": weight, "grad_y": grad_y})
    _check_outputs(x, grad_weight=(grad_weight, weight.shape),
                   grad_bias=(grad_bias, (weight.shape[0],)))
    if on_device:
        return _cuda("conv").conv2d_backward(
            grad_y, x, weight, geo.stride, geo.padding, geo.dilation, geo.groups,
            with_bias=need_bias_grad, need_input_grad=need_input_grad,
            grad_weight=grad_weight, grad_bias=grad_bias)
    if 0 in geo.output_shape:
        grad_x = np.zeros_like(x) if need_input_grad else None
        grad_w, grad_b = np.zeros_like(weight), np.zeros(weight.shape[0], dtype=x.dtype)
    else:
        w = np.ascontiguousarray(weight)
        if cpu_conv.use_pointwise(x.shape, w.shape, geo.groups, geo.stride, geo.padding,
                                  x.itemsize):
            grad_x, grad_w, grad_b = cpu_conv.backward_pointwise(
                cpu_layout.nchw(grad_y), cpu_layout.nchw(x), w, geo.stride[0],
                need_input_grad, need_bias_grad, grad_weight)
            grad_b = _into(grad_bias, grad_b) if need_bias_grad else None
            return grad_x, _into(grad_weight, grad_w), grad_b
        if cpu_conv.use_column_side(x.shape, w.shape, geo.groups, geo.stride,
                                    geo.output_shape):
            grad_x, grad_w, grad_b = cpu_conv.backward_columns(
                grad_y, x, w, geo.padding, geo.stride, geo.dilation, need_input_grad,
                need_bias_grad, grad_weight)
            grad_b = _into(grad_bias, grad_b) if need_bias_grad else None
            return grad_x, _into(grad_weight, grad_w), grad_b
        gy, x = cpu_layout.nchw(grad_y), cpu_layout.nchw(x)
        xp, finite = cpu_conv.pad(x, geo.padding, check_finite=True)
        if not (finite and np.isfinite(w.sum())):  # rare: an exact, slow path
            grad_xp, grad_w, grad_b = cpu_conv.conv2d_backward_direct(
                gy, xp, w, *geo.stride, *geo.dilation, geo.groups)
            grad_x = geo.crop(grad_xp) if need_input_grad else None
        else:
            grad_w, grad_b = cpu_conv.weight_grad(gy, xp, geo.kernel, geo.stride, geo.dilation,
                                                  geo.groups)
            grad_x = None
            if need_input_grad:
                grad_x = cpu_conv.conv2d_input_grad(gy, w, x.shape, geo.padding, geo.stride,
                                                    geo.dilation, geo.groups)
    grad_b = _into(grad_bias, grad_b) if need_bias_grad else None
    return grad_x, _into(grad_weight, grad_w), grad_b


def _check_outputs(x, **outputs):
    """Each ``name=(array or None, shape)``: an array given to write a result into must have
    that shape, x's dtype, live on x's device and be C-contiguous."""
    for name, (array, shape) in outputs.items():
        if array is None:
            continue
        _check_array(array, name, len(shape), f"{tuple(shape)}")
        if tuple(array.shape) != tuple(shape):
            raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(array.shape)}")
        _check_same_dtype(x, "x", array, name)
        _check_device(x, {name: array})
        if isinstance(array, np.ndarray) and not array.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous to be written into")


def _into(out, value):
    """``value``, copied into ``out`` when given (then ``out`` is returned; a kernel may have
    written into it already)."""
    if out is None or out is value:
        return value
    np.copyto(out, value)
    return out


# --------------------------------------------------------------------------- fused stage

#: The fused stage's activations and pools, by name, with the CPU kernels' codes.
FUSED_ACTIVATIONS = {"sigmoid": cpu_activation.SIGMOID, "relu": cpu_activation.RELU}
FUSED_POOLS = {"avg": cpu_activation.AVG, "max": cpu_activation.MAX}


def _fused_codes(activation, pool):
    if activation not in FUSED_ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(FUSED_ACTIVATIONS)}, got "
                         f"{activation!r}")
    if pool not in FUSED_POOLS:
        raise ValueError(f"pool must be one of {sorted(FUSED_POOLS)}, got {pool!r}")
    return FUSED_ACTIVATIONS[activation], FUSED_POOLS[pool]


def conv2d_act_pool(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                    activation="relu", pool="max"):
    """``pool(activation(conv2d(x, ...)))`` with a 2x2 pool (stride 2, no padding, floor mode):
    a Conv2d, activation, pool stage in fewer passes over memory, with the unfused functions'
    results bit for bit on the CPU.

    Parameters
    ----------
    x, weight, bias, stride, padding, dilation, groups : as for :func:`conv2d`
    activation : 'sigmoid' or 'relu'
    pool : 'avg' or 'max'

    Returns
    -------
    (z, y) : z (N, C_out, H_out, W_out) the activated convolution, which
        :func:`conv2d_act_pool_backward` takes, and y (N, C_out, H_out // 2, W_out // 2)
    """
    codes = _fused_codes(activation, pool)
    geo = _ConvGeometry(x, weight, stride, padding, dilation, groups)
    _check_bias(bias, x, weight)
    if min(geo.output_shape[2:]) < 2:
        raise ValueError(f"the 2x2 pool needs a convolution output of at least 2x2, got "
                         f"{geo.output_shape[2:]} from x shape {tuple(x.shape)}")
    if _check_device(x, {"weight": weight, "bias": bias}):
        z = _cuda("conv").conv2d_forward(x, weight, bias, geo.stride, geo.padding,
                                         geo.dilation, geo.groups, activation=activation)
        return z, _cuda().pool2x2_forward(z, pool)
    fused = _one_pass(x, weight, bias, geo, *codes)
    if fused is not None:  # all three in one pass
        return fused
    z = cpu_layout.nchw(_conv2d_cpu(x, weight, bias, geo))  # the pool's kernel reads NCHW
    return z, cpu_activation.act_pool_forward(z, *codes)  # activates z in place


def conv2d_act_pool_backward(grad_y, x, z, weight, stride=1, padding=0, dilation=1, groups=1,
                             activation="relu", pool="max", need_input_grad=True,
                             need_bias_grad=True, *, grad_weight=None, grad_bias=None):
    """Gradients of :func:`conv2d_act_pool` from grad_y (N, C_out, H_out // 2, W_out // 2), its
    input ``x`` and activated convolution ``z``: ``(grad_x, grad_weight, grad_bias)`` as
    :func:`conv2d_backward` returns them (with the same options and outputs)."""
    codes = _fused_codes(activation, pool)
    _check_array(z, "z", 4, "(N, C_out, H_out, W_out)")
    _check_array(grad_y, "grad_y", 4, "(N, C_out, H_out // 2, W_out // 2)")
    if grad_y.dtype != z.dtype:
        raise TypeError(f"grad_y has dtype {grad_y.dtype} but the fused stage computes in "
                        f"{z.dtype}; convert it with .astype()")
    expected = tuple(z.shape[:2]) + (z.shape[2] // 2, z.shape[3] // 2)
    if tuple(grad_y.shape) != expected:
        raise ValueError(f"grad_y has shape {tuple(grad_y.shape)}, the fused stage's output "
                         f"has {expected}")
    if _check_device(z, {"grad_y": grad_y}):
        grad_z = _cuda().act_pool2x2_backward(grad_y, z, activation, pool)
    else:
        if not need_input_grad:  # a first stage: maybe in one pass
            grads = _one_pass_weight_grad(grad_y, x, z, weight, stride, padding, dilation,
                                          groups, codes, grad_weight, grad_bias)
            if grads is not None:
                grad_w, grad_b = grads
                return None, grad_w, grad_b if need_bias_grad else None
        grads = _one_pass_backward_lanes(grad_y, x, z, weight, stride, padding, dilation,
                                         groups, codes, need_input_grad, grad_weight,
                                         grad_bias)
        if grads is not None:
            grad_x, grad_w, grad_b = grads
            return grad_x, grad_w, grad_b if need_bias_grad else None
        grad_z = cpu_activation.act_pool_backward(cpu_layout.nchw(grad_y), cpu_layout.nchw(z),
                                                  *codes)  # z may be an unfused conv's
    return conv2d_backward(grad_z, x, weight, stride, padding, dilation, groups,
                           need_input_grad, need_bias_grad, grad_weight=grad_weight,
                           grad_bias=grad_bias)


def _one_pass_geometry(grad_y, x, z, weight, stride, padding, dilation, groups):
    """(geometry, padded input shape) of a fused stage's convolution for its one-pass
    backwards, or None where they cannot serve: not NumPy arrays, not of one dtype, z not of
    the output's shape, an empty output (the unfused functions then also raise the errors)."""
    if not (isinstance(x, np.ndarray) and isinstance(weight, np.ndarray)):
        return None
    geo = _ConvGeometry(x, weight, stride, padding, dilation, groups)
    if (tuple(z.shape) != tuple(geo.output_shape) or 0 in geo.output_shape
            or not x.dtype == weight.dtype == z.dtype == grad_y.dtype):
        return None
    return geo, (x.shape[0], x.shape[1]) + geo.padded


def _finite_for_one_pass(x, weight, grad_weight, grad_bias) -> bool:
    """Whether x and weight are finite (else the unfused exact path serves), after checking
    the output arrays given: x value by value (faster than its sum), the weight by its sum (a
    sum that overflows takes the exact path as well)."""
    _check_outputs(x, grad_weight=(grad_weight, weight.shape),
                   grad_bias=(grad_bias, (weight.shape[0],)))
    return bool(np.isfinite(x).all() and np.isfinite(weight.sum()))


def _one_pass_weight_grad(grad_y, x, z, weight, stride, padding, dilation, groups, codes,
                          grad_weight, grad_bias):
    """(grad_weight, grad_bias) of a fused stage without its input gradient by
    :func:`conv_act_pool.conv_act_pool_weight_grad` (the gradient at z never written out),
    where it applies and the arrays are finite and of one dtype; else None (the unfused
    functions, which also raise the errors)."""
    found = _one_pass_geometry(grad_y, x, z, weight, stride, padding, dilation, groups)
    if found is None:
        return None
    geo, padded_shape = found
    if (cpu_conv.use_column_side(x.shape, weight.shape, geo.groups, geo.stride,
                                 geo.output_shape)
            or not conv_act_pool.weight_grad_applies(padded_shape, weight.shape, x.itemsize,
                                                     geo.stride, geo.groups,
                                                     *geo.output_shape[2:])
            or not _finite_for_one_pass(x, weight, grad_weight, grad_bias)):
        return None
    grad_w, grad_b = conv_act_pool.conv_act_pool_weight_grad(
        np.ascontiguousarray(grad_y), np.ascontiguousarray(z), np.ascontiguousarray(x),
        geo.padding, geo.kernel, geo.dilation, *codes)
    return _into(grad_weight, grad_w), _into(grad_bias, grad_b)


def _one_pass_backward_lanes(grad_y, x, z, weight, stride, padding, dilation, groups, codes,
                             need_input_grad, grad_weight, grad_bias):
    """(grad_x or None, grad_weight, grad_bias) of a fused stage on the interleaved-samples
    layout by :func:`conv_act_pool.conv_act_pool_backward_lanes` (the gradient at z never
    written out), where it applies and the arrays are finite and of one dtype; else None (the
    unfused functions, which also raise the errors)."""
    found = _one_pass_geometry(grad_y, x, z, weight, stride, padding, dilation, groups)
    if found is None:
        return None
    geo, padded_shape = found
    if (not conv_act_pool.backward_lanes_applies(x.shape, padded_shape, weight.shape,
                                                 x.itemsize, geo.stride, geo.groups,
                                                 *geo.output_shape[2:])
            or not _finite_for_one_pass(x, weight, grad_weight, grad_bias)):
        return None
    grad_xp, grad_w, grad_b = conv_act_pool.conv_act_pool_backward_lanes(
        np.ascontiguousarray(grad_y), np.ascontiguousarray(z), np.ascontiguousarray(x),
        np.ascontiguousarray(weight), geo.padding, geo.stride, geo.dilation, geo.groups,
        need_input_grad, *codes)
    grad_x = geo.crop(grad_xp) if need_input_grad else None
    return grad_x, _into(grad_weight, grad_w), _into(grad_bias, grad_b)


# --------------------------------------------------------------------------- pooling

class _PoolGeometry:
    """Checked and normalised arguments of one pooling."""

    def __init__(self, input_shape, kernel_size, stride, padding, dilation, ceil_mode):
        self.kernel = shapes.as_pair(kernel_size, "kernel_size", 1)
        self.stride = self.kernel if stride is None else shapes.as_pair(stride, "stride", 1)
        self.padding = shapes.as_pair(padding, "padding", 0)
        self.dilation = shapes.as_pair(dilation, "dilation", 1)
        for p, k in zip(self.padding, self.kernel):
            if 2 * p > k:
                raise ValueError(f"padding {self.padding} must be at most half of kernel_size "
                                 f"{self.kernel}")
        self.output_shape = shapes.pool2d_output_shape(
            input_shape, self.kernel, self.stride, self.padding, self.dilation, bool(ceil_mode))
        if min(self.output_shape[2:]) < 1:
            reach = tuple(d * (k - 1) + 1 for d, k in zip(self.dilation, self.kernel))
            raise ValueError(f"the pooling window spans {reach[0]}x{reach[1]}, more than the "
                             f"padded input: input shape {tuple(input_shape)}, kernel_size "
                             f"{self.kernel}, padding {self.padding}, dilation {self.dilation} "
                             f"give output size {self.output_shape[2:]}")

    def args(self):
        """Kernel arguments: kernel, stride and padding pairs, flattened."""
        return (*self.kernel, *self.stride, *self.padding)


def _check_input_shape(input_shape):
    if len(input_shape) != 4 or not all(hasattr(s, "__index__") and s >= 0
                                        for s in input_shape):
        raise ValueError(f"input_shape must be (N, C, H, W), got {tuple(input_shape)!r}")
    return tuple(int(s) for s in input_shape)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """2-D max pooling, as ``torch.nn.functional.max_pool2d``.

    Padding counts as -inf; the first maximum (row-major) wins a tie; NaN propagates.

    Parameters
    ----------
    x : ndarray (N, C, H, W), float32 or float64
    kernel_size, stride, dilation : int or (h, w); stride defaults to kernel_size
    padding : int or (h, w), at most half of kernel_size
    ceil_mode : bool, round the output size up instead of down
    return_indices : bool, also return the position of each maximum

    Returns
    -------
    y : ndarray (N, C, H_out, W_out), and with ``return_indices`` also
    indices : int64 ndarray (N, C, H_out, W_out), flat ``h * W + w`` inside each (n, c) plane
    """
    _check_array(x, "x", 4, "(N, C, H, W)")
    geo = _PoolGeometry(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    out_h, out_w = geo.output_shape[2:]
    if _is_device_array(x):
        y, indices = _cuda("pool").max_pool2d_forward(
            x, geo.kernel, geo.stride, geo.padding, geo.dilation, (out_h, out_w))
    else:
        y = cpu_buffers.empty(geo.output_shape, x.dtype)
        indices = cpu_buffers.empty(geo.output_shape, np.int64)
        cpu_pool.max_pool2d_forward(cpu_layout.nchw(x), *geo.args(), *geo.dilation, y,
                                    indices)
    return (y, indices) if return_indices else y


def _check_max_indices(indices, grad_y, on_device: bool) -> None:
    """A max pool's ``indices``: int64 with ``grad_y``'s shape, on ``grad_y``'s device."""
    if not isinstance(indices, np.ndarray) and not on_device:
        raise TypeError(f"indices must be a numpy.ndarray, got {type(indices).__name__}")
    if np.dtype(indices.dtype) != np.int64 or tuple(indices.shape) != tuple(grad_y.shape):
        raise ValueError(f"indices must be int64 with grad_y's shape {tuple(grad_y.shape)}, "
                         f"got {indices.dtype} {tuple(indices.shape)}")


def max_pool2d_backward(grad_y, indices, input_shape, kernel_size=None, stride=None,
                        padding=0, dilation=1):
    """Gradient of :func:`max_pool2d` with respect to its input.

    Parameters
    ----------
    grad_y : ndarray (N, C, H_out, W_out)
    indices : int64 ndarray (N, C, H_out, W_out), as returned by ``max_pool2d``
    input_shape : (N, C, H, W) of the pooled input
    kernel_size, stride, padding, dilation : optionally, the forward's window. The result is
        the same; on a GPU it is then a gather over the windows, many threads per plane.

    Returns
    -------
    grad_x : ndarray (N, C, H, W), the dtype of ``grad_y``. An index outside the plane (a
        window wholly in the padding, which pools to -inf) passes no gradient.
    """
    _check_array(grad_y, "grad_y", 4, "(N, C, H_out, W_out)")
    input_shape = _check_input_shape(input_shape)
    on_device = _check_device(grad_y, {"indices": indices})
    _check_max_indices(indices, grad_y, on_device)
    if tuple(grad_y.shape[:2]) != input_shape[:2]:
        raise ValueError(f"grad_y shape {tuple(grad_y.shape)} does not match input_shape "
                         f"{input_shape} in N and C")
    if on_device:
        if kernel_size is None:
            return _cuda("pool").max_pool2d_backward(grad_y, indices, input_shape)
        geo = _PoolGeometry(input_shape, kernel_size, stride, padding, dilation, False)
        return _cuda("pool").max_pool2d_backward(grad_y, indices, input_shape, geo.kernel,
                                                 geo.stride, geo.padding, geo.dilation)
    return _max_pool_backward_cpu(grad_y, indices, input_shape)


def _max_pool_backward_cpu(grad_y, indices, input_shape):
    """grad_x (N, C, H, W) of a max pool (plain or adaptive) on the CPU."""
    n, channels, height, width = input_shape
    grad_x = cpu_buffers.empty(input_shape, grad_y.dtype)
    cpu_pool.max_pool2d_backward(cpu_layout.nchw(grad_y), np.ascontiguousarray(indices),
                                 grad_x.reshape(n, channels, height * width))
    return grad_x


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None):
    """2-D average pooling, as ``torch.nn.functional.avg_pool2d``.

    Parameters
    ----------
    x : ndarray (N, C, H, W), float32 or float64
    kernel_size, stride : int or (h, w); stride defaults to kernel_size
    padding : int or (h, w), at most half of kernel_size
    ceil_mode : bool, round the output size up; the overhang past the padding never counts
    count_include_pad : bool, divide by a window size that includes the explicit padding
    divisor_override : non-zero int or None, divide by this instead

    Returns
    -------
    y : ndarray (N, C, H_out, W_out), the dtype of ``x``
    """
    _check_array(x, "x", 4, "(N, C, H, W)")
    geo = _PoolGeometry(x.shape, kernel_size, stride, padding, 1, ceil_mode)
    divisor = shapes.as_divisor(divisor_override)
    out_h, out_w = geo.output_shape[2:]
    if _is_device_array(x):
        return _cuda("pool").avg_pool2d_forward(
            x, geo.kernel, geo.stride, geo.padding, (out_h, out_w), bool(count_include_pad),
            divisor)
    y = cpu_buffers.empty(geo.output_shape, x.dtype)
    cpu_pool.avg_pool2d_forward(cpu_layout.nchw(x), *geo.args(), bool(count_include_pad),
                                divisor, y)
    return y


def avg_pool2d_backward(grad_y, input_shape, kernel_size, stride=None, padding=0,
                        ceil_mode=False, count_include_pad=True, divisor_override=None):
    """Gradient of :func:`avg_pool2d` with respect to its input.

    Parameters
    ----------
    grad_y : ndarray (N, C, H_out, W_out)
    input_shape : (N, C, H, W) of the pooled input
    kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override :
        as given to :func:`avg_pool2d`

    Returns
    -------
    grad_x : ndarray (N, C, H, W), the dtype of ``grad_y``
    """
    _check_array(grad_y, "grad_y", 4, "(N, C, H_out, W_out)")
    input_shape = _check_input_shape(input_shape)
    geo = _PoolGeometry(input_shape, kernel_size, stride, padding, 1, ceil_mode)
    divisor = shapes.as_divisor(divisor_override)
    if tuple(grad_y.shape) != geo.output_shape:
        raise ValueError(f"grad_y must have the forward output's shape {geo.output_shape}, "
                         f"got {tuple(grad_y.shape)}")
    if _is_device_array(grad_y):
        return _cuda("pool").avg_pool2d_backward(
            grad_y, input_shape, geo.kernel, geo.stride, geo.padding, bool(count_include_pad),
            divisor)
    grad_x = cpu_buffers.empty(input_shape, grad_y.dtype)
    cpu_pool.avg_pool2d_backward(cpu_layout.nchw(grad_y), *geo.args(),
                                 bool(count_include_pad), divisor, grad_x)
    return grad_x


# --------------------------------------------------------------------------- dense

def linear(x, weight, bias=None):
    """``x @ weight.T + bias`` over the last axis of x, as ``torch.nn.functional.linear``.

    Parameters
    ----------
    x : ndarray (*, in_features), float32 or float64
    weight : ndarray (out_features, in_features), the dtype of ``x``
    bias : ndarray (out_features,) or None

    Returns
    -------
    y : ndarray (*, out_features)
    """
    rows = _check_linear(x, weight, bias)
    out_features = weight.shape[0]
    shape = tuple(x.shape[:-1]) + (out_features,)
    if _check_device(x, {"weight": weight, "bias": bias}):
        return _cuda().linear_forward(x.reshape(rows, weight.shape[1]), weight,
                                      bias).reshape(shape)
    y = np.empty((rows, out_features), dtype=x.dtype)
    if bias is not None:
        y[:] = bias  # the product adds to it
    product_acc(np.ascontiguousarray(x.reshape(rows, -1)), np.ascontiguousarray(weight), y,
                transposed=True, overwrite=bias is None)
    return y.reshape(shape)


def _check_linear(x, weight, bias) -> int:
    """The rows of x's (rows, in_features) view, after checking the arguments."""
    _check_array(x, "x", None, "(*, in_features)")
    _check_array(weight, "weight", 2, "(out_features, in_features)")
    _check_same_dtype(weight, "weight", x, "x")
    if x.ndim < 1 or tuple(x.shape)[-1] != weight.shape[1]:
        raise ValueError(f"x must have in_features={weight.shape[1]} on its last axis "
                         f"(weight shape {tuple(weight.shape)}), got shape {tuple(x.shape)}")
    if bias is not None:
        _check_array(bias, "bias", 1, f"(out_features,) = ({weight.shape[0]},)")
        _check_same_dtype(weight, "weight", bias, "bias")
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias must have out_features={weight.shape[0]} entries (weight "
                             f"shape {tuple(weight.shape)}), got shape {tuple(bias.shape)}")
    return math.prod(x.shape[:-1])


def linear_backward(grad_y, x, weight, need_input_grad=True, need_bias_grad=True, *,
                    grad_weight=None, grad_bias=None):
    """Gradients of :func:`linear` with respect to its input, weight and bias.

    Parameters
    ----------
    grad_y : ndarray (*, out_features), the gradient at linear's output
    x, weight : as given to :func:`linear`
    need_input_grad : bool, default True. False returns None for grad_x (a first layer).
    need_bias_grad : bool, default True. False returns None for grad_bias (no bias).
    grad_weight, grad_bias : arrays to write the gradients into (a layer's ``grads``), or None
        for new ones; as :func:`conv2d_backward`'s.

    Returns
    -------
    (grad_x, grad_weight, grad_bias) : shapes (*, in_features), (out_features, in_features)
        and (out_features,)
    """
    rows = _check_linear(x, weight, None)
    out_features, in_features = weight.shape
    _check_array(grad_y, "grad_y", None, "(*, out_features)")
    expected = tuple(x.shape[:-1]) + (out_features,)
    if tuple(grad_y.shape) != expected:
        raise ValueError(f"grad_y must have the forward output's shape {expected}, got "
                         f"{tuple(grad_y.shape)}")
    _check_same_dtype(x, "x", grad_y, "grad_y")
    on_device = _check_device(x, {"weight": weight, "grad_y": grad_y})
    _check_outputs(x, grad_weight=(grad_weight, weight.shape),
                   grad_bias=(grad_bias, (out_features,)))
    if on_device:
        grad_x, grad_w, grad_b = _cuda().linear_backward(
            grad_y.reshape(rows, out_features), x.reshape(rows, in_features), weight,
            with_bias=need_bias_grad, need_input_grad=need_input_grad,
            grad_weight=grad_weight, grad_bias=grad_bias)
        return (None if grad_x is None else grad_x.reshape(x.shape)), grad_w, grad_b
    gy = np.ascontiguousarray(grad_y.reshape(rows, out_features))
    x_rows = np.ascontiguousarray(x.reshape(rows, in_features))
    grad_w = np.empty(weight.shape, dtype=x.dtype) if grad_weight is None else grad_weight
    product_acc(np.ascontiguousarray(gy.T), x_rows, grad_w, overwrite=True)
    grad_b = None
    if need_bias_grad:
        grad_b = np.sum(gy, axis=0, out=grad_bias)
    grad_x = None
    if need_input_grad:
        grad_x = np.empty((rows, in_features), dtype=x.dtype)
        product_acc(gy, np.ascontiguousarray(weight), grad_x, overwrite=True)
        grad_x = grad_x.reshape(x.shape)
    return grad_x, grad_w, grad_b


# --------------------------------------------------------------------------- activations
#
# Each backward takes the forward's *output* y (as PyTorch's threshold_backward,
# sigmoid_backward and tanh_backward do), so a layer keeps only its output.

def relu(x):
    """``max(x, 0)`` elementwise (NaN stays NaN), any shape."""
    _check_array(x, "x", None, "(*)")
    if _is_device_array(x):
        return _cuda().relu_forward(x)
    flat = cpu_layout.memory_flat(x)  # one compiled kernel for every shape; y in x's layout
    y = cpu_elementwise.empty(flat.size, flat)
    cpu_elementwise.relu_forward(flat, y)
    return cpu_layout.shaped_like(y, x)


def relu_backward(grad_y, y):
    """The gradient at ReLU's input from ``grad_y`` and its output ``y``: 0 where y <= 0
    (where y is NaN the gradient passes, as in PyTorch)."""
    _check_activation_grad(grad_y, y)
    if _is_device_array(y):
        return _cuda().relu_backward(grad_y, y)
    flat_y = cpu_layout.memory_flat(y)  # grad_x in y's layout
    grad_x = cpu_elementwise.empty(flat_y.size, flat_y)
    cpu_elementwise.relu_backward(cpu_layout.memory_flat(cpu_layout.same_layout(grad_y, y)),
                                  flat_y, grad_x)
    return cpu_layout.shaped_like(grad_x, y)


def sigmoid(x):
    """``1 / (1 + exp(-x))`` elementwise, computed without overflow: large inputs of either
    sign give exactly 0 or 1, NaN stays NaN. On the CPU in one pass (float32 within 2.5 ulps
    of the exact value, float64 with libm's ``exp``)."""
    _check_array(x, "x", None, "(*)")
    if _is_device_array(x):
        return _cuda().sigmoid_forward(x)
    return cpu_layout.shaped_like(cpu_activation.sigmoid_forward(cpu_layout.memory_flat(x)), x)


def sigmoid_backward(grad_y, y):
    """The gradient at the sigmoid's input, ``grad_y * (1 - y) * y`` (PyTorch's order), from
    its output ``y``."""
    _check_activation_grad(grad_y, y)
    if _is_device_array(y):
        return _cuda().sigmoid_backward(grad_y, y)
    # flat views: one compiled kernel for every shape; grad_x in y's layout
    grad_x = cpu_activation.sigmoid_backward(
        cpu_layout.memory_flat(cpu_layout.same_layout(grad_y, y)), cpu_layout.memory_flat(y))
    return cpu_layout.shaped_like(grad_x, y)


def tanh(x):
    """``tanh(x)`` elementwise, any shape."""
    _check_array(x, "x", None, "(*)")
    if _is_device_array(x):
        return _cuda().tanh_forward(x)
    return np.tanh(x)


def tanh_backward(grad_y, y):
    """The gradient at tanh's input, ``grad_y * (1 - y**2)``, from its output ``y``."""
    _check_activation_grad(grad_y, y)
    if _is_device_array(y):
        return _cuda().tanh_backward(grad_y, y)
    grad_x = np.multiply(y, y)
    np.subtract(1, grad_x, out=grad_x)
    return np.multiply(grad_y, grad_x, out=grad_x)


def _check_activation_grad(grad_y, y):
    _check_array(y, "y", None, "(*)")
    _check_like(grad_y, "grad_y", y, "the output y")


# --------------------------------------------------------------------------- dropout

def dropout(x, p=0.5, training=True, *, rng=None, return_mask=False):
    """Inverted dropout, as ``torch.nn.functional.dropout``: each element zeroed with
    probability ``p``, the rest scaled by ``1 / (1 - p)``; the identity (``x`` itself) when
    not ``training`` or ``p`` is 0.

    The keep mask is drawn on the host from ``rng`` (a ``numpy.random.Generator``) as
    ``rng.random(x.shape, dtype=float32) >= p``, on either device: the same generator gives
    the same masks on the CPU and on a GPU (where the mask is uploaded, one host-to-device
    copy per call).

    Returns
    -------
    y, and with ``return_mask`` also the scaled mask (0 or ``1 / (1 - p)``, x's dtype and
    device; None for the identity), which :func:`dropout_backward` takes.
    """
    if isinstance(p, bool) or not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p!r}")
    p = float(p)
    on_device = _is_device_array(x)
    if not on_device and not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy.ndarray or a CUDA device array, got "
                        f"{type(x).__name__}")
    if not training or p == 0.0:
        return (x, None) if return_mask else x
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if on_device:
        _check_array(x, "x", None, "(*)")
        keep = np.zeros(tuple(x.shape), dtype=np.bool_) if p == 1.0 else \
            rng.random(tuple(x.shape), dtype=np.float32) >= p
        y, mask = _cuda().dropout_forward(x, keep, 0.0 if p == 1.0 else 1.0 / (1.0 - p))
        return (y, mask) if return_mask else y
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.dtype(np.float64)
    if p == 1.0:
        mask = np.zeros(x.shape, dtype=dtype)
    else:
        # keep where u >= p with u ~ U[0, 1), so P(keep) = 1 - p
        mask = (rng.random(x.shape, dtype=np.float32) >= p).astype(dtype)
        mask *= 1.0 / (1.0 - p)
    y = x * mask
    return (y, mask) if return_mask else y


def dropout_backward(grad_y, mask):
    """The gradient at dropout's input: ``grad_y * mask`` with the forward's scaled mask
    (``grad_y`` itself when the mask is None: the forward was the identity)."""
    if mask is None:
        return grad_y
    if _check_device(mask, {"grad_y": grad_y}):
        _check_like(grad_y, "grad_y", mask, "the mask")
        return _cuda().multiply(grad_y, mask)
    if np.shape(grad_y) != mask.shape:
        raise ValueError(f"grad_y must have the mask's shape {mask.shape}, got "
                         f"{np.shape(grad_y)}")
    return grad_y * mask


# --------------------------------------------------------------------------- the loss

def _loss_arguments(logits, labels, what: str):
    """``(logits, labels, on_device)`` checked. A range check of device labels would cost a
    transfer: there a label outside [0, K) gives a NaN loss and gradient row instead."""
    if not _is_device_array(logits):
        logits = check_logits(logits)
        labels = check_labels(labels, logits)
        on_device = False
    else:
        _check_array(logits, "logits", 2, "(N, K)")
        _check_device(logits, {"labels": labels})
        if tuple(labels.shape) != (logits.shape[0],):
            raise ValueError(f"labels must have shape ({logits.shape[0]},) to match logits "
                             f"{tuple(logits.shape)}, got shape {tuple(labels.shape)}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(f"labels must be integers (class indices), got dtype "
                            f"{labels.dtype}")
        on_device = True
    if what and logits.shape[0] == 0:
        raise ValueError(f"{what} needs at least one example")
    return logits, labels, on_device


def cross_entropy(logits, labels):
    """The batch mean of softmax cross-entropy, as ``torch.nn.functional.cross_entropy``
    (mean reduction), stable for huge logits (log-sum-exp).

    Parameters
    ----------
    logits : ndarray (N, K), N >= 1
    labels : int ndarray (N,), class indices in [0, K)

    Returns
    -------
    loss : 0-d float64 array on the logits' device (per-row losses in the logits' dtype,
        summed in float64): ``float(loss)`` on the CPU, or accumulated on the GPU without a
        transfer (:meth:`numbaconv.devices.Device.totals`)
    """
    logits, labels, on_device = _loss_arguments(logits, labels, "cross_entropy")
    if on_device:
        return _cuda().cross_entropy(logits, labels)
    return _mean_loss(log_softmax(logits), labels)


def cross_entropy_backward(logits, labels):
    """The gradient of :func:`cross_entropy` with respect to the logits:
    ``(softmax(logits) - one_hot(labels)) / N``, the logits' shape and dtype."""
    logits, labels, on_device = _loss_arguments(logits, labels, "cross_entropy_backward")
    if on_device:
        return _cuda().cross_entropy_backward(logits, labels)
    return _loss_grad(log_softmax(logits), labels)


def cross_entropy_with_grad(logits, labels):
    """``(cross_entropy(logits, labels), cross_entropy_backward(logits, labels))``, the same
    values, with the arguments checked and (on the CPU) the log-softmax computed once: a
    training step's loss and the gradient its backward starts from."""
    logits, labels, on_device = _loss_arguments(logits, labels, "cross_entropy_with_grad")
    if on_device:
        cuda = _cuda()
        return cuda.cross_entropy(logits, labels), cuda.cross_entropy_backward(logits, labels)
    logp = log_softmax(logits)
    loss = _mean_loss(logp, labels)
    return loss, _loss_grad(logp, labels)


def _mean_loss(logp, labels):
    """The 0-d float64 mean of -logp[i, labels[i]] (per-row values summed in float64)."""
    n = logp.shape[0]
    return np.array(-float(logp[np.arange(n), labels].sum(dtype=np.float64)) / n)


def _loss_grad(logp, labels):
    """(exp(logp) - one_hot(labels)) / N, computed in logp's array."""
    grad = np.exp(logp, out=logp)
    grad[np.arange(logp.shape[0]), labels] -= 1
    grad /= logp.shape[0]
    return grad


def correct(logits, labels):
    """0-d int64 array on the logits' device: how many rows of logits (N, K) have their
    first maximum (NumPy's ``argmax``; a NaN counts as the largest) at the label."""
    logits, labels, on_device = _loss_arguments(logits, labels, "")
    if on_device:
        return _cuda().correct(logits, labels)
    return np.array((logits.argmax(axis=1) == labels).sum(), dtype=np.int64)


# --------------------------------------------------------------------------- the text's 2-D forms

def _check_matrix(array, name: str):
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name} must be a 2-D numpy.ndarray, got {type(array).__name__}")
    if array.ndim != 2:
        raise ValueError(f"{name} must have 2 dimensions (height, width), got shape "
                         f"{array.shape}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")


def corr2d(X, K):
    """2-D cross-correlation of one plane ``X`` (h, w) with a kernel ``K`` (kh, kw).

    ``Y[i, j] = sum_{a, b} K[a, b] * X[i + a, j + b]``, shape (h - kh + 1, w - kw + 1): the
    operation a convolutional layer computes ("Dive into Deep Learning", 6.2). Integer inputs
    are computed in float64; float inputs keep the wider of their dtypes.
    """
    _check_matrix(X, "X")
    _check_matrix(K, "K")
    if K.shape[0] > X.shape[0] or K.shape[1] > X.shape[1]:
        raise ValueError(f"K shape {K.shape} must fit inside X shape {X.shape}")
    dtype = np.result_type(X.dtype, K.dtype, np.float32)
    return conv2d(X.astype(dtype)[None, None], K.astype(dtype)[None, None])[0, 0]


def convolve2d(X, K):
    """True 2-D convolution ``(f * g)(i, j) = sum_{a, b} f(a, b) g(i - a, j - b)``, 'valid' part.

    The cross-correlation of ``X`` with ``K`` flipped both ways; shapes as :func:`corr2d`.
    """
    _check_matrix(K, "K")
    return corr2d(X, K[::-1, ::-1])


# --------------------------------------------------------------------------- joining branches

def add(a, b):
    """``a + b`` of two arrays of the same shape and dtype (a residual connection's sum, and
    the sum of the gradients of an input that two branches read)."""
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"add: shapes differ, {tuple(a.shape)} and {tuple(b.shape)}")
    _check_same_dtype(a, "a", b, "b")
    if _check_device(a, {"b": b}):
        return _cuda().add(a, b)
    if cpu_layout.is_pixel_major(b) and not cpu_layout.is_pixel_major(a):
        a, b = b, a  # the sum in the pixel-major layout: the small maps' layers keep it
    if np.dtype(a.dtype) not in FLOAT_DTYPES or cpu_elementwise.serial(a.size):
        return np.add(a, cpu_layout.same_layout(b, a) if cpu_layout.is_pixel_major(a) else b)
    flat_a = cpu_layout.memory_flat(a)
    total = cpu_elementwise.empty(flat_a.size, flat_a)
    cpu_elementwise.add(flat_a, cpu_layout.memory_flat(cpu_layout.same_layout(b, a)), total)
    return cpu_layout.shaped_like(total, a)


def concat_channels(arrays):
    """The arrays (N, C_i, ...) joined along axis 1 into (N, sum C_i, ...): ``torch.cat(...,
    dim=1)``; every other axis and the dtype must agree."""
    arrays = list(arrays)
    if not arrays:
        raise ValueError("concat_channels needs at least one array")
    first = arrays[0]
    for i, array in enumerate(arrays[1:], start=1):
        if array.ndim != first.ndim or tuple(array.shape[:1]) + tuple(array.shape[2:]) != \
                tuple(first.shape[:1]) + tuple(first.shape[2:]):
            raise ValueError(f"concat_channels: array {i} has shape {tuple(array.shape)}, "
                             f"which does not fit {tuple(first.shape)} beside axis 1")
        _check_same_dtype(first, "array 0", array, f"array {i}")
    if _check_device(first, {f"array {i}": a for i, a in enumerate(arrays[1:], start=1)}):
        return _cuda().concat_channels(arrays)
    if np.dtype(first.dtype) not in FLOAT_DTYPES or first.ndim < 2:
        return np.concatenate(arrays, axis=1)
    if all(cpu_layout.is_pixel_major(a) for a in arrays):  # pixel-major, as the branches
        joined = np.concatenate([cpu_layout.pixel_matrix(a) for a in arrays], axis=1)
        return cpu_layout.from_pixel_matrix(joined, *first.shape[2:])
    return cpu_elementwise.concat_channels([cpu_layout.nchw(a) if cpu_layout.is_pixel_major(a)
                                            else a for a in arrays])


def split_channels(array, sizes):
    """The inverse of :func:`concat_channels`: ``array`` (N, sum(sizes), ...) cut along axis 1
    into arrays of ``sizes[i]`` channels (views on the CPU; copies of a pixel-major array,
    see :mod:`numbaconv.kernels.cpu.layout`)."""
    sizes = [int(s) for s in sizes]
    if array.ndim < 2 or sum(sizes) != array.shape[1]:
        raise ValueError(f"split_channels: {sizes} channels do not add up to the "
                         f"{tuple(array.shape)} array's axis 1")
    if _is_device_array(array):
        return _cuda().split_channels(array, sizes)
    bounds = np.cumsum([0] + sizes)
    if cpu_layout.is_pixel_major(array):  # each part a pixel-major copy (a view would be
        # neither layout, and a later NCHW copy of it NumPy's slow one)
        matrix = cpu_layout.pixel_matrix(array)
        return [cpu_layout.from_pixel_matrix(np.ascontiguousarray(matrix[:, lo:hi]),
                                             *array.shape[2:])
                for lo, hi in zip(bounds[:-1], bounds[1:])]
    return [array[:, lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]


# --------------------------------------------------------------------------- divergence

def count_nonfinite(array):
    """How many elements of ``array`` (any shape, float) are NaN or infinite: a 0-d int64
    array on the array's device (an epoch's divergence check, summed without a transfer)."""
    if _is_device_array(array):
        return _cuda().count_nonfinite(array)
    array = np.asarray(array)
    return np.array(array.size - np.count_nonzero(np.isfinite(array)), dtype=np.int64)


# --------------------------------------------------------------------------- resizing

def resize_bilinear(x, size):
    """x (N, C, H, W) resized to ``size`` (an int for square outputs, or (out_h, out_w)) by
    bilinear interpolation: ``torch.nn.functional.interpolate(x, size, mode="bilinear",
    align_corners=False)`` (which ``torchvision.transforms.Resize`` matches when it
    enlarges). Same dtype and device as ``x``; no backward (it transforms inputs)."""
    _check_array(x, "x", 4, "(N, C, H, W)")
    out_h, out_w = shapes.as_pair(size, "size", 1)
    if tuple(x.shape[2:]) == (out_h, out_w):
        return x
    if _is_device_array(x):
        return _cuda("resize").resize_bilinear(x, out_h, out_w)
    from .kernels.cpu import resize

    n, c, h, w = x.shape
    planes = np.ascontiguousarray(x).reshape(n * c, h, w)
    return resize.resize_bilinear(planes, out_h, out_w).reshape(n, c, out_h, out_w)


# --------------------------------------------------------------------------- batch norm

def _channels_of(x, name: str = "x") -> tuple[int, int, int]:
    """``(N, C, L)`` of x (N, C, *rest), after checking it; L is 1 for (N, C)."""
    _check_array(x, name, None, "(N, C, ...)")
    if x.ndim < 2:
        raise ValueError(f"{name} must have shape (N, C, ...) with at least 2 dimensions, got "
                         f"shape {tuple(x.shape)}")
    n, c = (int(s) for s in x.shape[:2])
    return n, c, math.prod(int(s) for s in x.shape[2:])  # (NumPy's prod: 3 us a call)


def _check_per_channel(x, channels: int, **arrays) -> None:
    """Each given array is (C,), of x's dtype and on x's device."""
    on_cpu = type(x) is np.ndarray
    for name, array in arrays.items():
        if array is None or (on_cpu and type(array) is np.ndarray and array.ndim == 1
                             and array.shape[0] == channels and array.dtype == x.dtype):
            continue  # the common case, accepted at once (the checks below cost 1 us each)
        _check_array(array, name, 1, f"(C,) = ({channels},)")
        if tuple(array.shape) != (channels,):
            raise ValueError(f"{name} must have shape ({channels},) for x of shape "
                             f"{tuple(x.shape)}, got {tuple(array.shape)}")
        _check_same_dtype(x, "x", array, name)
        _check_device(x, {name: array})


def _check_count(x, num_batches_tracked) -> None:
    if num_batches_tracked is None:
        return
    if not isinstance(num_batches_tracked, np.ndarray) and \
            not _is_device_array(num_batches_tracked):
        raise TypeError(f"num_batches_tracked must be a 0-d int64 array, got "
                        f"{type(num_batches_tracked).__name__}")
    if tuple(num_batches_tracked.shape) != () or \
            np.dtype(num_batches_tracked.dtype) != np.int64:
        raise ValueError(f"num_batches_tracked must be a 0-d int64 array, got "
                         f"{num_batches_tracked.dtype} of shape "
                         f"{tuple(num_batches_tracked.shape)}")
    _check_device(x, {"num_batches_tracked": num_batches_tracked})


def batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, num_batches_tracked=None):
    """Batch normalization per channel, as ``torch.nn.functional.batch_norm`` (with the
    running-statistics bookkeeping of ``torch.nn.BatchNorm2d``).

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` per channel, with the batch's mean
    and biased variance over N and the other axes when ``training``, else the running ones.

    Parameters
    ----------
    x : ndarray (N, C) or (N, C, *spatial), float32 or float64
    running_mean, running_var : (C,) arrays of x's dtype on x's device, or None. With
        ``training`` they are updated in place (when given): ``running = (1 - momentum) *
        running + momentum * batch``, with the batch's *unbiased* variance. Without
        ``training`` x is normalised by them (both required).
    weight, bias : (C,) or None (scale 1, shift 0)
    training : bool, normalise by the batch's statistics (more than one value per channel)
    momentum : float in [0, 1], or None for the cumulative average (momentum
        ``1 / num_batches_tracked``, counting this batch)
    eps : non-negative float added to the variance
    num_batches_tracked : 0-d int64 array on x's device, or None. With ``training`` and the
        running statistics it is incremented in place; ``momentum=None`` needs it.

    Returns
    -------
    (y, save_mean, save_invstd) : y with x's shape and dtype; the float64 (C,) mean and
        ``1 / sqrt(var + eps)`` that normalised x, on x's device, for
        :func:`batch_norm_backward`
    """
    return _batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps,
                       num_batches_tracked, relu=False)


def batch_norm_relu(x, running_mean=None, running_var=None, weight=None, bias=None,
                    training=False, momentum=0.1, eps=1e-5, *, num_batches_tracked=None):
    """``relu(batch_norm(x, ...))``, with :func:`batch_norm`'s arguments and bookkeeping, the
    same values bit for bit; on the CPU in one pass (``Sequential``'s fused
    ``BatchNorm -> ReLU`` stage: the normalised values are never written).

    Returns
    -------
    (y, save_mean, save_invstd) : as :func:`batch_norm`'s, y its max with 0 (NaN stays NaN)
    """
    return _batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps,
                       num_batches_tracked, relu=True)


def _batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps,
                num_batches_tracked, relu):
    n, channels, length = _channels_of(x)
    _check_per_channel(x, channels, running_mean=running_mean, running_var=running_var,
                       weight=weight, bias=bias)
    _check_count(x, num_batches_tracked)
    if isinstance(eps, bool) or not float(eps) >= 0.0:
        raise ValueError(f"eps must be a non-negative number, got {eps!r}")
    eps = float(eps)
    update = False
    if training:
        if n * length <= 1:
            raise ValueError(f"batch norm needs more than 1 value per channel when training, "
                             f"got input of shape {tuple(x.shape)}")
        if (running_mean is None) != (running_var is None):
            raise ValueError("give both running_mean and running_var, or neither")
        update = running_mean is not None
        if momentum is None:
            if update and num_batches_tracked is None:
                raise ValueError("momentum=None (the cumulative average) needs "
                                 "num_batches_tracked")
        elif isinstance(momentum, bool) or not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"momentum must be in [0, 1] or None, got {momentum!r}")
    elif running_mean is None or running_var is None:
        raise ValueError("batch_norm with training=False needs running_mean and running_var")
    if _is_device_array(x):
        y, mean, invstd = _cuda("norm").batch_norm_forward(
            x.reshape(n, channels, length), weight, bias, running_mean, running_var,
            num_batches_tracked, bool(training), momentum, eps)
        if relu:
            y = _cuda().relu_forward(y)
        return y.reshape(x.shape), mean, invstd
    x3 = cpu_layout.channel_matrix(x)  # y keeps x's layout (pixel-major or NCHW)
    by_rows = cpu_norm.long_rows(*x3.shape[::2], cpu_layout.is_pixel_major(x))
    weight = np.ones(channels, x.dtype) if weight is None else np.ascontiguousarray(weight)
    bias = np.zeros(channels, x.dtype) if bias is None else np.ascontiguousarray(bias)
    y = cpu_buffers.empty(x3.shape, x3.dtype)
    invstd = np.empty(channels, dtype=np.float64)
    if training:
        mean = np.empty(channels, dtype=np.float64)
        var = np.empty(channels, dtype=np.float64)
        factor = 0.0
        if update:
            if num_batches_tracked is not None:
                num_batches_tracked += 1
            factor = 1.0 / int(num_batches_tracked) if momentum is None else float(momentum)
        else:  # (0,) arrays: no running statistics to update
            running_mean = running_var = np.empty(0, dtype=x.dtype)
        cpu_norm.batch_norm_forward_batch_stats(x3, weight, bias, eps, relu, y, mean, var,
                                                invstd, running_mean, running_var, factor,
                                                by_rows)
    else:
        mean = np.empty(channels, dtype=np.float64)
        cpu_norm.batch_norm_forward_fixed_stats(x3, weight, bias, eps,
                                                np.ascontiguousarray(running_mean),
                                                np.ascontiguousarray(running_var), relu, y,
                                                mean, invstd, by_rows)
    return cpu_layout.like(y, x), mean, invstd


def batch_norm_backward(grad_y, x, save_mean, save_invstd, weight=None, batch_stats=True,
                        need_input_grad=True, *, grad_weight=None, grad_bias=None):
    """Gradients of :func:`batch_norm` with respect to its input, weight and bias.

    Parameters
    ----------
    grad_y : ndarray of x's shape, the gradient at batch_norm's output
    x, weight : as given to :func:`batch_norm`
    save_mean, save_invstd : the float64 (C,) arrays :func:`batch_norm` returned
    batch_stats : bool, whether the forward normalised by the batch's own statistics (its
        ``training``); their dependence on x then enters grad_x
    need_input_grad : bool, default True. False returns None for grad_x (a first layer).
    grad_weight, grad_bias : (C,) arrays to write the gradients into (a layer's ``grads``), or
        None for new ones; as :func:`conv2d_backward`'s.

    Returns
    -------
    (grad_x, grad_weight, grad_bias) : x's shape, (C,) and (C,), x's dtype (the parameter
        gradients whether or not the forward had a weight and a bias)
    """
    n, channels, length = _channels_of(x)
    _check_like(grad_y, "grad_y", x, "x")
    _check_per_channel(x, channels, weight=weight)
    _check_outputs(x, grad_weight=(grad_weight, (channels,)), grad_bias=(grad_bias, (channels,)))
    on_device = _is_device_array(x)
    saved = []
    for name, array in (("save_mean", save_mean), ("save_invstd", save_invstd)):
        _check_device(x, {name: array})
        if tuple(np.shape(array)) != (channels,):
            raise ValueError(f"{name} must have shape ({channels},) for x of shape "
                             f"{tuple(x.shape)}, got {tuple(array.shape)}")
        if on_device and np.dtype(array.dtype) != np.float64:
            raise TypeError(f"{name} must be float64, as batch_norm returns it, got "
                            f"{array.dtype}")
        saved.append(array if on_device else np.ascontiguousarray(array, dtype=np.float64))
    if on_device:
        grad_x, grad_w, grad_b = _cuda("norm").batch_norm_backward(
            grad_y.reshape(n, channels, length), x.reshape(n, channels, length), *saved,
            weight, bool(batch_stats), bool(need_input_grad), grad_weight, grad_bias)
        return (None if grad_x is None else grad_x.reshape(x.shape)), grad_w, grad_b
    x3 = cpu_layout.channel_matrix(x)  # grad_x keeps x's layout
    g3 = cpu_layout.channel_matrix(cpu_layout.same_layout(grad_y, x))
    weight = np.ones(channels, x.dtype) if weight is None else np.ascontiguousarray(weight)
    grad_x = cpu_buffers.empty(x3.shape, x3.dtype) if need_input_grad else \
        np.empty((0, 0, 1), dtype=x.dtype)
    grad_w = np.empty(channels, dtype=x.dtype) if grad_weight is None else grad_weight
    grad_b = np.empty(channels, dtype=x.dtype) if grad_bias is None else grad_bias
    cpu_norm.batch_norm_backward(g3, x3, *saved, weight, bool(batch_stats),
                                 bool(need_input_grad), grad_x, grad_w, grad_b,
                                 cpu_norm.long_rows(*x3.shape[::2],
                                                    cpu_layout.is_pixel_major(x)))
    return (cpu_layout.like(grad_x, x) if need_input_grad else None), grad_w, grad_b


# --------------------------------------------------------------------------- adaptive pooling

def adaptive_output_size(output_size) -> tuple:
    """``output_size`` of an adaptive pooling as ``(h, w)``: from an int, or a pair whose
    entries are ints or None (None keeps that input size); sizes are at least 1."""
    def entry(value, allow_none: bool):
        if value is None and allow_none:
            return None
        return shapes.as_int(value, "output_size", 1)

    if isinstance(output_size, (tuple, list)):
        if len(output_size) != 2:
            raise TypeError(f"output_size must be an int or a pair of ints or None, got "
                            f"{output_size!r}")
        return tuple(entry(v, True) for v in output_size)
    try:
        size = entry(output_size, False)
    except TypeError:
        raise TypeError(f"output_size must be an int or a pair of ints or None, got "
                        f"{output_size!r}") from None
    return (size, size)


def adaptive_pool2d_output_shape(input_shape, output_size) -> tuple:
    """``(N, C, out_h, out_w)`` of an adaptive pooling of an (N, C, H, W) input to
    ``output_size`` (see :func:`adaptive_output_size`); H and W must be at least 1."""
    shape = _check_input_shape(input_shape)
    size = adaptive_output_size(output_size)
    if min(shape[2:]) < 1:
        raise ValueError(f"adaptive pooling needs an input of at least 1x1, got shape {shape}")
    return shape[:2] + tuple(shape[2 + i] if s is None else s for i, s in enumerate(size))


def _planes(array, height, width):
    """A host (N, C, H, W) array as C-contiguous (N * C, H, W)."""
    return cpu_layout.nchw(array).reshape(-1, height, width)


def adaptive_avg_pool2d(x, output_size):
    """2-D adaptive average pooling, as ``torch.nn.functional.adaptive_avg_pool2d``.

    Output row ``i`` averages input rows ``floor(i * H / out_h)`` to ``ceil((i + 1) * H /
    out_h)`` (exclusive), likewise for columns; ``output_size=1`` is the global average.

    Parameters
    ----------
    x : ndarray (N, C, H, W), float32 or float64
    output_size : int or (h, w), each an int >= 1 or None (keep the input's size)

    Returns
    -------
    y : ndarray (N, C, out_h, out_w), the dtype of ``x``
    """
    _check_array(x, "x", 4, "(N, C, H, W)")
    shape = adaptive_pool2d_output_shape(x.shape, output_size)
    if _is_device_array(x):
        return _cuda("adaptive_pool").adaptive_avg_pool2d_forward(x, shape[2:])
    n, c, height, width = x.shape
    if height * width == 1 and shape[2:] == (1, 1):  # the mean of one value is that value
        return np.array(x, order="C", copy=True)  # (a kernel call per plane: 1.5x PyTorch)
    if shape[2:] == (1, 1):  # global pooling: one pass over each plane
        y = np.empty(n * c, dtype=x.dtype)
        cpu_adaptive_pool.global_avg_pool(_planes(x, 1, height * width)[:, 0], y)
        return y.reshape(shape)
    y = np.empty((n * c,) + shape[2:], dtype=x.dtype)
    cpu_adaptive_pool.adaptive_avg_pool(_planes(x, height, width), y)
    return y.reshape(shape)


def _check_adaptive_grad(grad_y, input_shape) -> tuple:
    _check_array(grad_y, "grad_y", 4, "(N, C, out_h, out_w)")
    input_shape = _check_input_shape(input_shape)
    if tuple(grad_y.shape[:2]) != input_shape[:2] or min(input_shape[2:]) < 1 \
            or min(grad_y.shape[2:]) < 1:
        raise ValueError(f"grad_y shape {tuple(grad_y.shape)} does not fit input_shape "
                         f"{input_shape}: N and C must match, and no spatial size be 0")
    return input_shape


def adaptive_avg_pool2d_backward(grad_y, input_shape):
    """Gradient of :func:`adaptive_avg_pool2d` with respect to its input.

    Parameters
    ----------
    grad_y : ndarray (N, C, out_h, out_w); its spatial size is the forward's output_size
    input_shape : (N, C, H, W) of the pooled input

    Returns
    -------
    grad_x : ndarray (N, C, H, W), the dtype of ``grad_y``
    """
    n, c, height, width = _check_adaptive_grad(grad_y, input_shape)
    if _is_device_array(grad_y):
        return _cuda("adaptive_pool").adaptive_avg_pool2d_backward(grad_y, (n, c, height,
                                                                            width))
    grad_x = np.empty((n * c, height, width), dtype=grad_y.dtype)
    if tuple(grad_y.shape[2:]) == (1, 1):
        cpu_adaptive_pool.global_avg_pool_backward(
            cpu_layout.nchw(grad_y).reshape(n * c), grad_x.reshape(n * c, height * width))
    else:
        cpu_adaptive_pool.adaptive_avg_pool_backward(_planes(grad_y, *grad_y.shape[2:]),
                                                     grad_x)
    return grad_x.reshape(n, c, height, width)


def adaptive_max_pool2d(x, output_size, return_indices=False):
    """2-D adaptive max pooling, as ``torch.nn.functional.adaptive_max_pool2d``.

    The windows of :func:`adaptive_avg_pool2d`; the first maximum (row-major) wins a tie and
    a NaN always wins, as in PyTorch.

    Parameters
    ----------
    x : ndarray (N, C, H, W), float32 or float64
    output_size : int or (h, w), each an int >= 1 or None (keep the input's size)
    return_indices : bool, also return the position of each maximum

    Returns
    -------
    y : ndarray (N, C, out_h, out_w), and with ``return_indices`` also
    indices : int64 ndarray (N, C, out_h, out_w), flat ``h * W + w`` inside each (n, c) plane
        (PyTorch's), which :func:`adaptive_max_pool2d_backward` takes
    """
    _check_array(x, "x", 4, "(N, C, H, W)")
    shape = adaptive_pool2d_output_shape(x.shape, output_size)
    if _is_device_array(x):
        y, indices = _cuda("adaptive_pool").adaptive_max_pool2d_forward(x, shape[2:])
    else:
        n, c, height, width = x.shape
        y = np.empty((n * c,) + shape[2:], dtype=x.dtype)
        indices = np.empty((n * c,) + shape[2:], dtype=np.int64)
        cpu_adaptive_pool.adaptive_max_pool(_planes(x, height, width), y, indices)
        y, indices = y.reshape(shape), indices.reshape(shape)
    return (y, indices) if return_indices else y


def adaptive_max_pool2d_backward(grad_y, indices, input_shape):
    """Gradient of :func:`adaptive_max_pool2d` with respect to its input: each output's
    gradient goes to its maximum (summed where windows share one).

    Parameters
    ----------
    grad_y : ndarray (N, C, out_h, out_w)
    indices : int64 ndarray (N, C, out_h, out_w), as returned by ``adaptive_max_pool2d``
    input_shape : (N, C, H, W) of the pooled input

    Returns
    -------
    grad_x : ndarray (N, C, H, W), the dtype of ``grad_y``
    """
    input_shape = _check_adaptive_grad(grad_y, input_shape)
    on_device = _check_device(grad_y, {"indices": indices})
    _check_max_indices(indices, grad_y, on_device)
    if on_device:
        return _cuda("pool").max_pool2d_backward(grad_y, indices, input_shape)
    return _max_pool_backward_cpu(grad_y, indices, input_shape)
