"""numbaconv.shapes: output sizes against PyTorch, padding forms, receptive fields, FLOPs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from numbaconv.shapes import (
    as_pair,
    conv2d_flops,
    conv2d_output_shape,
    conv_padding,
    output_size,
    pool2d_output_shape,
    receptive_fields,
)

# --------------------------------------------------------------------------------------------
# output sizes


@pytest.mark.parametrize("n, k, s, p, d, expected", [
    (8, 3, 1, 1, 1, 8),   # D2L: 8x8, 3x3, pad 1 -> 8x8
    (8, 5, 1, 2, 1, 8),
    (8, 3, 2, 1, 1, 4),   # stride 2 -> 4x4
    (8, 3, 3, 0, 1, 2),   # D2L: kernel (3, 5), pad (0, 1), stride (3, 4) -> 2x2
    (8, 5, 4, 1, 1, 2),
    (28, 5, 1, 2, 1, 28),  # LeNet
    (7, 3, 1, 0, 2, 3),
    (5, 1, 1, 0, 1, 5),
])
def test_output_size_examples(n, k, s, p, d, expected):
    assert output_size(n, k, s, p, d) == expected


def test_output_size_asymmetric_padding():
    assert output_size(8, 5, 1, (2, 2)) == 8
    assert output_size(8, 4, 1, (1, 2)) == 8
    assert output_size(8, 4, 1, (0, 0)) == 5


@pytest.mark.parametrize("n, k, s, p, expected_floor, expected_ceil", [
    (5, 2, 2, 0, 2, 3),   # the overhang window counts with ceil_mode
    (4, 2, 2, 0, 2, 2),   # exact fit: no difference
    (5, 2, 2, 1, 3, 3),   # the ceil window would start in the padding: dropped
    (4, 2, 3, 1, 2, 2),
    (6, 3, 2, 1, 3, 4),
])
def test_output_size_ceil_mode(n, k, s, p, expected_floor, expected_ceil):
    assert output_size(n, k, s, p, ceil_mode=False) == expected_floor
    assert output_size(n, k, s, p, ceil_mode=True) == expected_ceil


def _torch_pool_len(torch, F, n, k, s, p, d, ceil_mode):
    x = torch.zeros(1, 1, n, 1)
    return F.max_pool2d(x, (k, 1), (s, 1), (p, 0), (d, 1), ceil_mode=ceil_mode).shape[2]


def test_pool_output_size_grid_matches_torch(torch, F):
    """Every (n, k, s, p, d, ceil_mode) in a grid where the window fits the padded input."""
    checked = 0
    for n, k, s, d, ceil_mode in itertools.product(range(1, 10), range(1, 5), range(1, 4),
                                                   range(1, 3), (False, True)):
        for p in range(0, k // 2 + 1):
            if d * (k - 1) + 1 > n + 2 * p:
                continue  # the window does not fit; see test_kernel_larger_than_input below
            expected = _torch_pool_len(torch, F, n, k, s, p, d, ceil_mode)
            assert output_size(n, k, s, p, d, ceil_mode) == expected, (n, k, s, p, d, ceil_mode)
            shape = pool2d_output_shape((2, 3, n, n + 1), (k, 1), (s, 1), (p, 0), (d, 1),
                                        ceil_mode)
            assert shape == (2, 3, expected, n + 1)
            checked += 1
    assert checked > 500


def test_pool2d_output_shape_default_stride_is_kernel(torch, F):
    x = torch.zeros(2, 3, 9, 7)
    for kernel in (2, 3, (2, 3), (4, 1)):
        for ceil_mode in (False, True):
            expected = tuple(F.max_pool2d(x, kernel, ceil_mode=ceil_mode).shape)
            assert pool2d_output_shape(x.shape, kernel, None, 0, 1, ceil_mode) == expected
            assert pool2d_output_shape(tuple(x.shape), kernel, ceil_mode=ceil_mode) == expected
            assert tuple(F.avg_pool2d(x, kernel, ceil_mode=ceil_mode).shape) == expected


def test_conv_output_shape_grid_matches_torch(torch, F):
    checked = 0
    for n, k, s, d in itertools.product(range(1, 9), range(1, 5), range(1, 4), range(1, 3)):
        for padding in (0, 1, 2, (1, 0), ((0, 2), (1, 0)), "valid", "same"):
            if padding == "same" and s != 1:
                continue
            (top, bottom), (left, right) = conv_padding(padding, (k, 2), (s, s), (d, d))
            if d * (k - 1) + 1 > n + top + bottom or d + 1 > n + 1 + left + right:
                continue
            x = torch.zeros(1, 2, n, n + 1)
            w = torch.zeros(3, 2, k, 2)
            if isinstance(padding, tuple) and isinstance(padding[0], tuple):
                y = F.conv2d(F.pad(x, (left, right, top, bottom)), w, stride=s, dilation=d)
            else:
                y = F.conv2d(x, w, stride=s, padding=padding, dilation=d)
            got = conv2d_output_shape((1, 2, n, n + 1), 3, (k, 2), s, padding, d)
            assert got == tuple(y.shape), (n, k, s, d, padding)
            checked += 1
    assert checked > 300


def test_kernel_larger_than_input():
    # no window fits: no output
    assert output_size(2, 3) == 0
    assert output_size(4, 3, dilation=2) == 0
    assert output_size(4, 3, 1, 1, dilation=2) == 2


# --------------------------------------------------------------------------------------------
# argument normalisation


def test_as_pair():
    assert as_pair(3, "stride") == (3, 3)
    assert as_pair((2, 5), "stride") == (2, 5)
    assert as_pair([2, 5], "stride") == (2, 5)
    assert as_pair(np.int64(4), "stride") == (4, 4)
    assert as_pair(0, "padding", 0) == (0, 0)
    with pytest.raises(ValueError, match="stride"):
        as_pair(0, "stride", 1)
    with pytest.raises(ValueError, match="dilation"):
        as_pair((1, 0), "dilation", 1)
    for bad in (True, 2.0, (1, 2, 3), "2", (1.0, 2), None):
        with pytest.raises(TypeError, match="kernel_size"):
            as_pair(bad, "kernel_size")


@pytest.mark.parametrize("padding, expected", [
    (0, ((0, 0), (0, 0))),
    (2, ((2, 2), (2, 2))),
    ((1, 3), ((1, 1), (3, 3))),
    ([1, 3], ((1, 1), (3, 3))),
    (((1, 2), (3, 4)), ((1, 2), (3, 4))),
    ([[0, 1], [2, 0]], ((0, 1), (2, 0))),
    ("valid", ((0, 0), (0, 0))),
])
def test_conv_padding_forms(padding, expected):
    assert conv_padding(padding, (3, 3), (1, 1), (1, 1)) == expected


@pytest.mark.parametrize("kernel, dilation, expected", [
    ((3, 3), (1, 1), ((1, 1), (1, 1))),
    ((5, 1), (1, 1), ((2, 2), (0, 0))),
    ((2, 4), (1, 1), ((0, 1), (1, 2))),   # odd totals: the extra goes bottom / right
    ((2, 2), (3, 1), ((1, 2), (0, 1))),
    ((3, 2), (2, 2), ((2, 2), (1, 1))),
])
def test_conv_padding_same(kernel, dilation, expected):
    assert conv_padding("same", kernel, (1, 1), dilation) == expected


def test_conv_padding_same_matches_torch(torch, F):
    x = torch.randn(1, 1, 7, 6, dtype=torch.float64)
    for kernel, dilation in [((2, 4), (1, 1)), ((2, 2), (3, 1)), ((4, 3), (1, 2))]:
        w = torch.randn(1, 1, *kernel, dtype=torch.float64)
        (top, bottom), (left, right) = conv_padding("same", kernel, (1, 1), dilation)
        expected = F.conv2d(x, w, padding="same", dilation=dilation)
        got = F.conv2d(F.pad(x, (left, right, top, bottom)), w, dilation=dilation)
        torch.testing.assert_close(got, expected)


def test_conv_padding_errors():
    with pytest.raises(ValueError, match="stride"):
        conv_padding("same", (3, 3), (2, 1), (1, 1))
    with pytest.raises(ValueError, match="full"):
        conv_padding("full", (3, 3), (1, 1), (1, 1))
    with pytest.raises(ValueError, match="padding"):
        conv_padding(-1, (3, 3), (1, 1), (1, 1))
    with pytest.raises(ValueError, match="padding"):
        conv_padding(((0, -1), (0, 0)), (3, 3), (1, 1), (1, 1))
    with pytest.raises(TypeError, match="padding"):
        conv_padding(1.5, (3, 3), (1, 1), (1, 1))


# --------------------------------------------------------------------------------------------
# receptive fields and FLOPs


def test_receptive_fields_lenet():
    layers = [(5, 1, 1), (2, 2, 1), (5, 1, 1), (2, 2, 1)]
    assert receptive_fields(layers) == [(5, 5), (6, 6), (14, 14), (16, 16)]


def test_receptive_fields_more():
    assert receptive_fields([(3, 1, 1)] * 3) == [(3, 3), (5, 5), (7, 7)]
    assert receptive_fields([(3, 1, 2), (1, 1, 1)]) == [(5, 5), (5, 5)]
    assert receptive_fields([((3, 1), (2, 1), 1), (3, 1, 1)]) == [(3, 1), (7, 3)]
    assert receptive_fields([]) == []


def test_receptive_field_brute_force():
    """The field of one output pixel, found by pushing a delta backwards through the stack."""
    layers = [(3, 2, 1), (2, 1, 2), (3, 2, 1), (2, 1, 1)]
    size = 64
    # which input positions can influence output position 0, along one axis
    positions = {0}
    for k, s, d in reversed(layers):
        positions = {p * s + a * d for p in positions for a in range(k)}
    field = max(positions) - min(positions) + 1
    assert field < size
    assert receptive_fields(layers)[-1] == (field, field)


def test_conv2d_flops():
    # LeNet's first layer: 6 maps of 28x28, one input channel, 5x5 kernel
    assert conv2d_flops((1, 6, 28, 28), 1, (5, 5)) == 2 * 6 * 28 * 28 * 25
    assert conv2d_flops((8, 16, 10, 10), 6, (5, 5)) == 2 * 8 * 16 * 100 * 6 * 25
    assert conv2d_flops((2, 4, 3, 5), 3, (2, 1)) == 2 * 2 * 4 * 15 * 3 * 2
    assert conv2d_flops((1, 1, 0, 5), 3, (2, 1)) == 0


def test_ceil_mode_window_larger_than_input_matches_torch(torch, F):
    """With ceil_mode PyTorch keeps a window that overhangs the (padded) input when it starts
    inside it, even if no full window fits: ``MaxPool2d(2, ceil_mode=True)`` of a 1x1 map is
    1x1 and ``MaxPool2d(3, 2, ceil_mode=True)`` of a 2x2 map is 1x1."""
    checked = 0
    for n, k, s in itertools.product(range(1, 6), range(1, 5), range(1, 4)):
        for p in range(0, k // 2 + 1):
            if k <= n + 2 * p:
                continue  # covered by the grid above
            try:
                expected = _torch_pool_len(torch, F, n, k, s, p, 1, True)
            except RuntimeError:
                continue  # PyTorch refuses it too
            assert output_size(n, k, s, p, 1, True) == expected, (n, k, s, p)
            checked += 1
    assert checked > 5
