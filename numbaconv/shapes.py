"""Pure-Python argument normalisation and shape arithmetic for convolution and pooling.

Everything here follows PyTorch 2.x and the formulas of "Dive into Deep Learning", chapter 6:
an input of size ``n``, kernel ``k``, dilation ``d``, padding ``p_lo + p_hi`` and stride ``s``
gives ``floor((n + p_lo + p_hi - d*(k-1) - 1) / s) + 1`` outputs (``ceil`` with ``ceil_mode``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Pair = tuple[int, int]
Padding2d = tuple[Pair, Pair]  # ((top, bottom), (left, right))

PADDING_WORDS = ("valid", "same")

#: The largest size, index or step an argument may hold: the kernels index with 32-bit ints
#: on the GPU, and nothing real comes near it.
MAX_INT = 2 ** 31 - 1


def _is_int(value) -> bool:
    # bool is an int subclass but never a meaningful size; numpy integers are welcome.
    return not isinstance(value, bool) and hasattr(value, "__index__")


def as_int(value, name: str, minimum: int | None = None) -> int:
    """``value`` as an int (NumPy integers welcome, bools not), checked against ``minimum``
    and, in size, against :data:`MAX_INT`."""
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    _check_size(int(value), name)
    return int(value)


def _check_size(value: int, name: str) -> None:
    if abs(value) > MAX_INT:
        raise ValueError(f"{name} must be at most {MAX_INT} in size, got {value}")


def as_divisor(divisor_override) -> int:
    """Average pooling's ``divisor_override`` for the kernels: 0 for None, else the non-zero
    int (PyTorch allows negative ones)."""
    if divisor_override is None:
        return 0
    divisor = as_int(divisor_override, "divisor_override")
    if divisor == 0:
        raise ValueError("divisor_override must not be 0")
    return divisor


def as_pair(value, name: str, minimum: int | None = None) -> Pair:
    """Normalise an int or a pair of ints to ``(h, w)``; check each against ``minimum``."""
    if _is_int(value):
        pair = (int(value), int(value))
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2 \
            and all(_is_int(v) for v in value):
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if minimum is not None and min(pair) < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value!r}")
    for v in pair:
        _check_size(v, name)
    return pair


def conv_padding(padding, kernel_size: Pair, stride: Pair, dilation: Pair) -> Padding2d:
    """Normalise a convolution's ``padding`` to ``((top, bottom), (left, right))``.

    Accepted forms: an int, ``(ph, pw)``, ``((top, bottom), (left, right))``, ``'valid'``
    (no padding) and ``'same'`` (output size equals input size; stride must be 1; an odd total
    puts the extra row/column at the bottom/right, as PyTorch does).
    """
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0), (0, 0))
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(
                    f"padding='same' needs stride 1, got stride={stride}; "
                    "use an explicit padding with strided convolutions")
            sides = []
            for k, d in zip(kernel_size, dilation):
                total = d * (k - 1)
                sides.append((total // 2, total - total // 2))
            return (sides[0], sides[1])
        raise ValueError(f"padding must be an int, a pair, a pair of pairs, or one of "
                         f"{PADDING_WORDS}; got the unknown word {padding!r}")
    if isinstance(padding, Sequence) and len(padding) == 2 \
            and all(isinstance(p, Sequence) and not isinstance(p, str) for p in padding):
        sides = tuple(as_pair(p, "padding") for p in padding)
    else:
        ph, pw = as_pair(padding, "padding")
        sides = ((ph, ph), (pw, pw))
    if min(min(s) for s in sides) < 0:
        raise ValueError(f"padding must not be negative, got {padding!r}")
    return sides


def output_size(n: int, kernel: int, stride: int = 1, padding: int | Pair = 0,
                dilation: int = 1, ceil_mode: bool = False) -> int:
    """Output length along one axis of a convolution or pooling window.

    ``padding`` is one int (both sides) or ``(before, after)``. With ``ceil_mode`` the count
    rounds up, but a last window that would start inside the after-padding is dropped, as in
    PyTorch's pooling; a window wider than the padded input then still gives one output.
    """
    lo, hi = (padding, padding) if _is_int(padding) else padding
    span = n + lo + hi - dilation * (kernel - 1) - 1  # negative: the window overhangs
    if ceil_mode:
        out = -(-span // stride) + 1
        if (out - 1) * stride >= n + lo:
            out -= 1
    else:
        out = span // stride + 1
    return max(out, 0)


def conv2d_output_shape(input_shape: Sequence[int], out_channels: int, kernel_size,
                        stride=1, padding=0, dilation=1) -> tuple[int, int, int, int]:
    """``(N, C_out, H_out, W_out)`` of a convolution of an ``(N, C, H, W)`` input."""
    n, _, h, w = input_shape
    kernel = as_pair(kernel_size, "kernel_size", 1)
    stride = as_pair(stride, "stride", 1)
    dilation = as_pair(dilation, "dilation", 1)
    pad = conv_padding(padding, kernel, stride, dilation)
    return (n, out_channels,
            output_size(h, kernel[0], stride[0], pad[0], dilation[0]),
            output_size(w, kernel[1], stride[1], pad[1], dilation[1]))


def pool2d_output_shape(input_shape: Sequence[int], kernel_size, stride=None, padding=0,
                        dilation=1, ceil_mode=False) -> tuple[int, int, int, int]:
    """``(N, C, H_out, W_out)`` of a pooling of an ``(N, C, H, W)`` input."""
    n, c, h, w = input_shape
    kernel = as_pair(kernel_size, "kernel_size", 1)
    stride = kernel if stride is None else as_pair(stride, "stride", 1)
    pad = as_pair(padding, "padding", 0)
    dilation = as_pair(dilation, "dilation", 1)
    return (n, c,
            output_size(h, kernel[0], stride[0], pad[0], dilation[0], ceil_mode),
            output_size(w, kernel[1], stride[1], pad[1], dilation[1], ceil_mode))


def receptive_fields(layers: Sequence[tuple]) -> list[Pair]:
    """Receptive field ``(h, w)`` on the input of each layer's output in a stack.

    ``layers`` holds ``(kernel_size, stride, dilation)`` per layer (ints or pairs); a layer that
    does not look at neighbours (activation, 1x1 conv) is ``(1, 1, 1)``. A layer with kernel
    ``k``, dilation ``d`` widens the field by ``d*(k-1)`` times the product of the strides
    before it.
    """
    field = [1, 1]
    jump = [1, 1]
    fields = []
    for kernel_size, stride, dilation in layers:
        kernel = as_pair(kernel_size, "kernel_size", 1)
        stride = as_pair(stride, "stride", 1)
        dilation = as_pair(dilation, "dilation", 1)
        for axis in range(2):
            field[axis] += dilation[axis] * (kernel[axis] - 1) * jump[axis]
            jump[axis] *= stride[axis]
        fields.append((field[0], field[1]))
    return fields


def conv2d_flops(output_shape: Sequence[int], in_channels_per_group: int, kernel: Pair) -> int:
    """Floating-point operations (a multiply and an add each) of a convolution's forward."""
    return 2 * math.prod(output_shape) * in_channels_per_group * kernel[0] * kernel[1]
