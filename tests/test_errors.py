"""Bad arguments raise ValueError or TypeError with a message naming the argument (and shapes).

Each case is ``(call, exception, patterns)``: calling raises ``exception`` and every regular
expression in ``patterns`` is found in the message. Shapes are matched loosely (their numbers in
order, any separators), so ``(1, 5, 8, 8)`` and ``1x5x8x8`` both do.
"""

from __future__ import annotations

import re

import numpy as np
import pytest


def shape_re(shape) -> str:
    """A pattern for ``shape``'s numbers in order with anything non-numeric between them."""
    return r"(?<!\d)" + r"\D+".join(str(s) for s in shape) + r"(?!\d)"


X = r"\bx\b"

f64 = np.float64
f32 = np.float32


def z(*shape, dtype=f64):
    return np.zeros(shape, dtype=dtype)


def o(*shape, dtype=f64):
    return np.ones(shape, dtype=dtype)


# (id, call(nc), exception, patterns)
CASES = [
    # --- wrong number of dimensions
    ("conv x 3-D", lambda nc: nc.conv2d(z(3, 8, 8), z(2, 3, 3, 3)),
     ValueError, [X, shape_re((3, 8, 8))]),
    ("conv x 5-D", lambda nc: nc.conv2d(z(1, 1, 3, 8, 8), z(2, 3, 3, 3)),
     ValueError, [X, shape_re((1, 1, 3, 8, 8))]),
    ("conv weight 3-D", lambda nc: nc.conv2d(z(1, 3, 8, 8), z(3, 3, 3)),
     ValueError, ["weight", shape_re((3, 3, 3))]),
    ("conv_backward x 3-D", lambda nc: nc.conv2d_backward(z(1, 2, 6, 6), z(3, 8, 8),
                                                          z(2, 3, 3, 3)),
     ValueError, [X]),
    ("max x 3-D", lambda nc: nc.max_pool2d(z(3, 8, 8), 2), ValueError, [X, shape_re((3, 8, 8))]),
    ("avg x 2-D", lambda nc: nc.avg_pool2d(z(8, 8), 2), ValueError, [X, shape_re((8, 8))]),
    ("corr2d X 3-D", lambda nc: nc.corr2d(z(1, 4, 4), z(2, 2)),
     ValueError, [r"\bX\b", shape_re((1, 4, 4))]),
    ("corr2d K 1-D", lambda nc: nc.corr2d(z(4, 4), z(2)), ValueError, [r"\bK\b"]),
    ("convolve2d K 3-D", lambda nc: nc.convolve2d(z(4, 4), z(1, 2, 2)), ValueError, [r"\bK\b"]),
    ("corr2d K larger than X", lambda nc: nc.corr2d(z(3, 4), z(4, 2)),
     ValueError, [r"\bK\b", shape_re((4, 2)), shape_re((3, 4))]),

    # --- channels and groups
    ("channel mismatch", lambda nc: nc.conv2d(z(1, 5, 8, 8), z(2, 3, 3, 3)),
     ValueError, [X, "weight", shape_re((1, 5, 8, 8)), shape_re((2, 3, 3, 3))]),
    ("channel mismatch grouped", lambda nc: nc.conv2d(z(1, 6, 8, 8), z(4, 2, 3, 3), groups=2),
     ValueError, ["weight", shape_re((1, 6, 8, 8)), shape_re((4, 2, 3, 3))]),
    ("channel mismatch backward",
     lambda nc: nc.conv2d_backward(z(1, 2, 6, 6), z(1, 5, 8, 8), z(2, 3, 3, 3)),
     ValueError, ["weight", shape_re((1, 5, 8, 8))]),
    ("groups not dividing in", lambda nc: nc.conv2d(z(1, 6, 8, 8), z(4, 2, 3, 3), groups=4),
     ValueError, ["groups"]),
    ("groups not dividing out", lambda nc: nc.conv2d(z(1, 4, 8, 8), z(3, 2, 3, 3), groups=2),
     ValueError, ["groups", shape_re((3, 2, 3, 3))]),
    ("groups zero", lambda nc: nc.conv2d(z(1, 4, 8, 8), z(4, 4, 3, 3), groups=0),
     ValueError, ["groups"]),

    # --- windows that do not fit
    ("dilated kernel too large", lambda nc: nc.conv2d(z(1, 1, 5, 5), z(1, 1, 3, 3), dilation=3),
     ValueError, [r"kernel|weight|dilation", shape_re((1, 1, 5, 5))]),
    ("kernel too large with padding",
     lambda nc: nc.conv2d(z(1, 1, 2, 9), z(1, 1, 5, 1), padding=(1, 0)),
     ValueError, [r"kernel|weight", shape_re((1, 1, 2, 9)), shape_re((1, 1, 5, 1))]),
    ("max window too large", lambda nc: nc.max_pool2d(z(1, 1, 2, 2), 3),
     ValueError, [r"kernel_size|window", shape_re((1, 1, 2, 2))]),
    ("max dilated window too large", lambda nc: nc.max_pool2d(z(1, 1, 4, 4), 2, dilation=4),
     ValueError, [r"kernel_size|window|dilation", shape_re((1, 1, 4, 4))]),

    # --- stride, dilation, kernel_size, padding values
    ("conv stride 0", lambda nc: nc.conv2d(z(1, 1, 5, 5), z(1, 1, 3, 3), stride=0),
     ValueError, ["stride"]),
    ("conv stride (1, -1)", lambda nc: nc.conv2d(z(1, 1, 5, 5), z(1, 1, 3, 3), stride=(1, -1)),
     ValueError, ["stride"]),
    ("conv dilation 0", lambda nc: nc.conv2d(z(1, 1, 5, 5), z(1, 1, 3, 3), dilation=0),
     ValueError, ["dilation"]),
    ("conv stride float", lambda nc: nc.conv2d(z(1, 1, 5, 5), z(1, 1, 3, 3), stride=1.5),
     TypeError, ["stride"]),
    ("max stride 0", lambda nc: nc.max_pool2d(z(1, 1, 5, 5), 2, stride=0), ValueError, ["stride"]),
    ("max dilation 0", lambda nc: nc.max_pool2d(z(1, 1, 5, 5), 2, dilation=(0, 1)),
     ValueError, ["dilation"]),
    ("avg stride 0", lambda nc: nc.avg_pool2d(z(1, 1, 5, 5), 2, stride=(0, 1)),
     ValueError, ["stride"]),
    ("max kernel_size 0", lambda nc: nc.max_pool2d(z(1, 1, 5, 5), 0),
     ValueError, ["kernel_size"]),
    ("avg kernel_size triple", lambda nc: nc.avg_pool2d(z(1, 1, 5, 5), (1, 2, 3)),
     TypeError, ["kernel_size"]),
    ("conv negative padding", lambda nc: nc.conv2d(z(1, 1, 5, 5), z(1, 1, 3, 3), padding=-1),
     ValueError, ["padding"]),
    ("conv negative pair padding",
     lambda nc: nc.conv2d(z(1, 1, 5, 5), z(1, 1, 3, 3), padding=(0, -2)),
     ValueError, ["padding"]),
    ("conv negative side padding",
     lambda nc: nc.conv2d(z(1, 1, 5, 5), z(1, 1, 3, 3), padding=((1, 1), (-1, 0))),
     ValueError, ["padding"]),
    ("same with stride 2",
     lambda nc: nc.conv2d(z(1, 1, 5, 5), z(1, 1, 3, 3), padding="same", stride=2),
     ValueError, ["same", "stride"]),
    ("same with stride 2 backward",
     lambda nc: nc.conv2d_backward(z(1, 1, 3, 3), z(1, 1, 5, 5), z(1, 1, 3, 3),
                                   padding="same", stride=(1, 2)),
     ValueError, ["same", "stride"]),
    ("unknown padding word",
     lambda nc: nc.conv2d(z(1, 1, 5, 5), z(1, 1, 3, 3), padding="full"),
     ValueError, ["padding", "full"]),
    ("max negative padding", lambda nc: nc.max_pool2d(z(1, 1, 5, 5), 3, padding=-1),
     ValueError, ["padding"]),

    # --- pool padding over half the window
    ("max padding over half", lambda nc: nc.max_pool2d(z(1, 1, 8, 8), 3, padding=2),
     ValueError, ["padding"]),
    ("max padding over half, one axis",
     lambda nc: nc.max_pool2d(z(1, 1, 8, 8), (4, 2), padding=(2, 2)), ValueError, ["padding"]),
    ("avg padding over half", lambda nc: nc.avg_pool2d(z(1, 1, 8, 8), 2, padding=(0, 2)),
     ValueError, ["padding"]),
    ("avg backward padding over half",
     lambda nc: nc.avg_pool2d_backward(z(1, 1, 4, 4), (1, 1, 8, 8), 2, padding=2),
     ValueError, ["padding"]),

    # --- bias
    ("bias wrong length", lambda nc: nc.conv2d(z(1, 3, 8, 8), z(2, 3, 3, 3), z(3)),
     ValueError, ["bias", r"(?<!\d)2(?!\d)", r"(?<!\d)3(?!\d)"]),
    ("bias 2-D", lambda nc: nc.conv2d(z(1, 3, 8, 8), z(2, 3, 3, 3), z(2, 1)),
     ValueError, ["bias", shape_re((2, 1))]),
    ("bias list", lambda nc: nc.conv2d(z(1, 3, 8, 8), z(2, 3, 3, 3), [0.0, 0.0]),
     TypeError, ["bias"]),

    # --- not an array
    ("conv x list", lambda nc: nc.conv2d(z(1, 1, 4, 4).tolist(), z(1, 1, 3, 3)),
     TypeError, [X]),
    ("conv weight list", lambda nc: nc.conv2d(z(1, 1, 4, 4), z(1, 1, 3, 3).tolist()),
     TypeError, ["weight"]),
    ("max x list", lambda nc: nc.max_pool2d(z(1, 1, 4, 4).tolist(), 2), TypeError, [X]),
    ("avg x list", lambda nc: nc.avg_pool2d(z(1, 1, 4, 4).tolist(), 2), TypeError, [X]),
    ("corr2d X list", lambda nc: nc.corr2d([[1.0, 2.0], [3.0, 4.0]], o(1, 1)),
     TypeError, [r"\bX\b"]),
    ("conv_backward grad_y list",
     lambda nc: nc.conv2d_backward(z(1, 1, 2, 2).tolist(), z(1, 1, 4, 4), z(1, 1, 3, 3)),
     TypeError, ["grad_y"]),

    # --- dtypes
    ("x f32 weight f64", lambda nc: nc.conv2d(z(1, 1, 4, 4, dtype=f32), z(1, 1, 3, 3)),
     TypeError, ["weight", "float32", "float64"]),
    ("x f64 weight f32", lambda nc: nc.conv2d(z(1, 1, 4, 4), z(1, 1, 3, 3, dtype=f32)),
     TypeError, ["weight", "float32", "float64"]),
    ("bias dtype", lambda nc: nc.conv2d(z(1, 1, 4, 4), z(1, 1, 3, 3), z(1, dtype=f32)),
     TypeError, ["bias", "float32"]),
    ("backward grad_y dtype",
     lambda nc: nc.conv2d_backward(z(1, 1, 2, 2, dtype=f32), z(1, 1, 4, 4), z(1, 1, 3, 3)),
     TypeError, ["grad_y", "float32"]),
    ("backward weight dtype",
     lambda nc: nc.conv2d_backward(z(1, 1, 2, 2), z(1, 1, 4, 4), z(1, 1, 3, 3, dtype=f32)),
     TypeError, ["weight", "float32"]),
    ("conv integer arrays",
     lambda nc: nc.conv2d(z(1, 1, 4, 4, dtype=np.int64), z(1, 1, 3, 3, dtype=np.int64)),
     TypeError, [X, "int64"]),
    ("conv integer weight",
     lambda nc: nc.conv2d(z(1, 1, 4, 4), z(1, 1, 3, 3, dtype=np.int32)),
     TypeError, ["weight"]),
    ("conv float16", lambda nc: nc.conv2d(z(1, 1, 4, 4, dtype=np.float16),
                                          z(1, 1, 3, 3, dtype=np.float16)),
     TypeError, [X, "float16"]),
    ("conv complex", lambda nc: nc.conv2d(z(1, 1, 4, 4, dtype=complex),
                                          z(1, 1, 3, 3, dtype=complex)),
     TypeError, [X]),
    ("max integer", lambda nc: nc.max_pool2d(z(1, 1, 4, 4, dtype=np.int32), 2),
     TypeError, [X, "int32"]),
    ("avg integer", lambda nc: nc.avg_pool2d(z(1, 1, 4, 4, dtype=np.int64), 2),
     TypeError, [X, "int64"]),
    ("avg bool", lambda nc: nc.avg_pool2d(z(1, 1, 4, 4, dtype=bool), 2), TypeError, [X]),
    ("max backward integer grad_y",
     lambda nc: nc.max_pool2d_backward(z(1, 1, 2, 2, dtype=np.int64),
                                       z(1, 1, 2, 2, dtype=np.int64), (1, 1, 4, 4)),
     TypeError, ["grad_y"]),
    ("avg backward integer grad_y",
     lambda nc: nc.avg_pool2d_backward(z(1, 1, 2, 2, dtype=np.int64), (1, 1, 4, 4), 2),
     TypeError, ["grad_y"]),

    # --- grad_y of the wrong shape
    ("conv grad_y wrong shape",
     lambda nc: nc.conv2d_backward(z(1, 2, 5, 5), z(1, 3, 8, 8), z(2, 3, 3, 3)),
     ValueError, ["grad_y", shape_re((1, 2, 6, 6)), shape_re((1, 2, 5, 5))]),
    ("conv grad_y wrong channels",
     lambda nc: nc.conv2d_backward(z(1, 3, 6, 6), z(1, 3, 8, 8), z(2, 3, 3, 3)),
     ValueError, ["grad_y", shape_re((1, 2, 6, 6)), shape_re((1, 3, 6, 6))]),
    ("conv grad_y 3-D",
     lambda nc: nc.conv2d_backward(z(2, 6, 6), z(1, 3, 8, 8), z(2, 3, 3, 3)),
     ValueError, ["grad_y"]),
    ("avg grad_y wrong shape",
     lambda nc: nc.avg_pool2d_backward(z(1, 1, 3, 3), (1, 1, 8, 8), 2),
     ValueError, ["grad_y", shape_re((1, 1, 4, 4)), shape_re((1, 1, 3, 3))]),
    ("avg grad_y wrong batch",
     lambda nc: nc.avg_pool2d_backward(z(2, 1, 4, 4), (1, 1, 8, 8), 2),
     ValueError, ["grad_y", shape_re((2, 1, 4, 4))]),
    ("max grad_y wrong channels",
     lambda nc: nc.max_pool2d_backward(z(1, 2, 2, 2), z(1, 2, 2, 2, dtype=np.int64),
                                       (1, 3, 4, 4)),
     ValueError, ["grad_y|input_shape", shape_re((1, 2, 2, 2)), shape_re((1, 3, 4, 4))]),
    ("max grad_y 3-D",
     lambda nc: nc.max_pool2d_backward(z(1, 2, 2), z(1, 2, 2, dtype=np.int64), (1, 1, 4, 4)),
     ValueError, ["grad_y"]),

    # --- indices
    ("indices wrong shape",
     lambda nc: nc.max_pool2d_backward(z(1, 1, 2, 2), z(1, 1, 2, 3, dtype=np.int64),
                                       (1, 1, 4, 4)),
     ValueError, ["indices", shape_re((1, 1, 2, 3))]),
    ("indices wrong dtype int32",
     lambda nc: nc.max_pool2d_backward(z(1, 1, 2, 2), z(1, 1, 2, 2, dtype=np.int32),
                                       (1, 1, 4, 4)),
     (ValueError, TypeError), ["indices", "int32"]),
    ("indices wrong dtype float",
     lambda nc: nc.max_pool2d_backward(z(1, 1, 2, 2), z(1, 1, 2, 2), (1, 1, 4, 4)),
     (ValueError, TypeError), ["indices", "float64"]),
    ("indices list",
     lambda nc: nc.max_pool2d_backward(z(1, 1, 2, 2), [[[[0, 1], [2, 3]]]], (1, 1, 4, 4)),
     TypeError, ["indices"]),
    ("input_shape 3-D",
     lambda nc: nc.max_pool2d_backward(z(1, 1, 2, 2), z(1, 1, 2, 2, dtype=np.int64), (1, 4, 4)),
     ValueError, ["input_shape"]),

    # --- divisor_override
    ("divisor_override 0",
     lambda nc: nc.avg_pool2d(z(1, 1, 4, 4), 2, divisor_override=0),
     ValueError, ["divisor_override"]),
    ("divisor_override float",
     lambda nc: nc.avg_pool2d(z(1, 1, 4, 4), 2, divisor_override=2.5),
     TypeError, ["divisor_override"]),
]


@pytest.mark.parametrize("call, exc, patterns", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_argument(nc, call, exc, patterns):
    with pytest.raises(exc) as info:
        call(nc)
    if isinstance(exc, tuple):
        assert info.type in exc
    message = str(info.value)
    for pattern in patterns:
        assert re.search(pattern, message), f"{pattern!r} not found in message {message!r}"


def test_the_argument_is_matched_with_pytest_raises(nc):
    """The plain ``pytest.raises(match=...)`` form, for the most common mistakes."""
    with pytest.raises(ValueError, match="weight"):
        nc.conv2d(z(1, 5, 8, 8), z(2, 3, 3, 3))
    with pytest.raises(TypeError, match=X):
        nc.conv2d([[[[0.0]]]], z(1, 1, 1, 1))
    with pytest.raises(ValueError, match="padding"):
        nc.max_pool2d(z(1, 1, 8, 8), 2, padding=2)
    with pytest.raises(ValueError, match="grad_y"):
        nc.conv2d_backward(z(1, 1, 3, 3), z(1, 1, 4, 4), z(1, 1, 3, 3))


def test_good_arguments_pass(nc):
    """The boundaries of the checks above are accepted."""
    assert nc.conv2d(z(1, 1, 5, 5), z(1, 1, 3, 3), dilation=2).shape == (1, 1, 1, 1)
    assert nc.conv2d(z(1, 1, 1, 1), z(1, 1, 3, 3), padding=1).shape == (1, 1, 1, 1)
    assert nc.conv2d(z(1, 4, 5, 5), z(6, 2, 1, 1), groups=2).shape == (1, 6, 5, 5)
    assert nc.max_pool2d(z(1, 1, 4, 4), 2, padding=1).shape == (1, 1, 3, 3)
    assert nc.avg_pool2d(z(1, 1, 4, 4), (3, 2), padding=(1, 1)).shape == (1, 1, 2, 3)
    assert nc.max_pool2d(z(1, 1, 2, 2), 2, stride=np.int64(1), dilation=(1, 1)).shape \
        == (1, 1, 1, 1)
    gx = nc.max_pool2d_backward(z(1, 1, 2, 2), z(1, 1, 2, 2, dtype=np.int64), [1, 1, 4, 4])
    assert gx.shape == (1, 1, 4, 4)


# --------------------------------------------------------------------------------------------
# the suite's own guard: parity tests skip without torch, but fail when CI is set


def test_require_torch_skips_locally_and_fails_under_ci(monkeypatch):
    import sys

    from support import require_torch

    monkeypatch.setitem(sys.modules, "torch", None)  # makes ``import torch`` raise ImportError
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        require_torch()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="torch"):
        require_torch()
