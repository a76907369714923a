"""max_pool2d / avg_pool2d and their backwards against the NumPy loop reference and PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from support import LAYOUTS, assert_close, layout

DTYPES = (np.float64, np.float32)

# --------------------------------------------------------------------------------------------
# worked examples ("Dive into Deep Learning", 6.5)

X16 = np.arange(16.0).reshape(1, 1, 4, 4)


def test_max_pool_3x3(nc):
    y = nc.max_pool2d(X16, 3)
    np.testing.assert_array_equal(y, [[[[10.0]]]])
    assert y.dtype == np.float64


def test_max_pool_padding_and_stride(nc):
    np.testing.assert_array_equal(nc.max_pool2d(X16, 3, padding=1, stride=2),
                                  [[[[5.0, 7.0], [13.0, 15.0]]]])


def test_max_pool_rectangular_window(nc):
    np.testing.assert_array_equal(nc.max_pool2d(X16, (2, 3), stride=(2, 3), padding=(0, 1)),
                                  [[[[5.0, 7.0], [13.0, 15.0]]]])


def test_max_pool_multiple_channels(nc):
    X = np.concatenate((X16, X16 + 1), axis=1)
    y = nc.max_pool2d(X, 3, padding=1, stride=2)
    assert y.shape == (1, 2, 2, 2)
    np.testing.assert_array_equal(y, [[[[5.0, 7.0], [13.0, 15.0]],
                                       [[6.0, 8.0], [14.0, 16.0]]]])


def test_avg_pool_2x2(nc):
    X = np.arange(9.0).reshape(1, 1, 3, 3)
    y = nc.avg_pool2d(X, 2, stride=1)
    np.testing.assert_array_equal(y, [[[[2.0, 3.0], [5.0, 6.0]]]])
    np.testing.assert_array_equal(nc.max_pool2d(X, 2, stride=1), [[[[4.0, 5.0], [7.0, 8.0]]]])


def test_default_stride_is_the_kernel(nc):
    np.testing.assert_array_equal(nc.max_pool2d(X16, 2), [[[[5.0, 7.0], [13.0, 15.0]]]])
    np.testing.assert_array_equal(nc.avg_pool2d(X16, 2), [[[[2.5, 4.5], [10.5, 12.5]]]])


# --------------------------------------------------------------------------------------------
# index, tie and NaN rules


def test_max_pool_indices_are_flat_plane_positions(nc):
    y, idx = nc.max_pool2d(X16, 3, padding=1, stride=2, return_indices=True)
    assert idx.dtype == np.int64
    np.testing.assert_array_equal(idx, [[[[5, 7], [13, 15]]]])
    np.testing.assert_array_equal(y.ravel(), X16.ravel()[idx.ravel()])


def test_max_pool_first_maximum_wins_a_tie(nc):
    x = np.zeros((1, 1, 3, 4))
    x[0, 0] = [[1, 3, 3, 0],
               [3, 2, 3, 3],
               [0, 3, 1, 3]]
    y, idx = nc.max_pool2d(x, (3, 2), stride=(1, 2), return_indices=True)
    np.testing.assert_array_equal(y, [[[[3.0, 3.0]]]])
    np.testing.assert_array_equal(idx, [[[[1, 2]]]])


def test_max_pool_nan_propagates_and_last_nan_wins(nc):
    x = np.zeros((1, 1, 2, 4))
    x[0, 0] = [[np.nan, 5.0, 1.0, np.nan],
               [9.0, np.nan, 2.0, 3.0]]
    y, idx = nc.max_pool2d(x, 2, return_indices=True)
    assert np.isnan(y).all()
    # window 0 holds NaNs at 0 and 5: the later one (row-major) wins; window 1 only at 3
    np.testing.assert_array_equal(idx, [[[[5, 3]]]])


def test_max_pool_all_minus_inf_window(nc):
    x = np.full((1, 1, 3, 3), -np.inf)
    y, idx = nc.max_pool2d(x, 2, stride=2, padding=1, return_indices=True)
    assert np.all(y == -np.inf)
    # nothing beats -inf: the index stays at the window's first real element
    np.testing.assert_array_equal(idx, [[[[0, 1], [3, 4]]]])


def test_max_pool_window_wholly_in_the_padding_matches_torch(nc):
    """With dilation a window can miss every real element: -inf and PyTorch's index of its
    first non-negative tap, which may lie outside the plane (then the backward passes nothing)
    or wrap onto the next row."""
    x = np.arange(4.0).reshape(1, 1, 2, 2)
    y, idx = nc.max_pool2d(x, 2, padding=1, dilation=3, return_indices=True)
    np.testing.assert_array_equal(y, [[[[-np.inf]]]])
    np.testing.assert_array_equal(idx, [[[[6]]]])  # tap (2, 2) of a 2x2 plane
    np.testing.assert_array_equal(nc.max_pool2d_backward(np.ones((1, 1, 1, 1)), idx, x.shape),
                                  np.zeros((1, 1, 2, 2)))
    x = np.arange(6.0).reshape(1, 1, 3, 2)
    y, idx = nc.max_pool2d(x, (1, 2), stride=1, padding=(0, 1), dilation=(1, 3),
                           return_indices=True)
    np.testing.assert_array_equal(y, np.full((1, 1, 3, 1), -np.inf))
    np.testing.assert_array_equal(idx, [[[[2], [4], [6]]]])  # column 2 == next row's column 0
    ey, eidx = ref.max_pool2d(x, (1, 2), stride=1, padding=(0, 1), dilation=(1, 3),
                              return_indices=True)
    np.testing.assert_array_equal(eidx, idx)


def test_max_pool_backward_accumulates_overlapping_windows(nc):
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 1, 1] = 1.0  # the centre wins all four 2x2 windows
    y, idx = nc.max_pool2d(x, 2, stride=1, return_indices=True)
    np.testing.assert_array_equal(idx, np.full((1, 1, 2, 2), 4))
    gy = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    gx = nc.max_pool2d_backward(gy, idx, x.shape)
    expected = np.zeros((1, 1, 3, 3))
    expected[0, 0, 1, 1] = 10.0
    np.testing.assert_array_equal(gx, expected)


def test_return_indices_false_returns_one_array(nc):
    y = nc.max_pool2d(X16, 2)
    assert isinstance(y, np.ndarray)
    y2, idx = nc.max_pool2d(X16, 2, return_indices=True)
    np.testing.assert_array_equal(y, y2)


# --------------------------------------------------------------------------------------------
# avg-pool counting rules


def test_avg_pool_count_include_pad(nc):
    x = np.ones((1, 1, 3, 3))
    with_pad = nc.avg_pool2d(x, 3, stride=1, padding=1)
    without = nc.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    np.testing.assert_allclose(with_pad[0, 0], [[4 / 9, 6 / 9, 4 / 9],
                                                [6 / 9, 1.0, 6 / 9],
                                                [4 / 9, 6 / 9, 4 / 9]], rtol=1e-15)
    np.testing.assert_array_equal(without, np.ones((1, 1, 3, 3)))


def test_avg_pool_ceil_mode_overhang_never_counts(nc):
    x = np.ones((1, 1, 5, 5))
    # kernel 2 stride 2, ceil_mode: a third window covers only row/col 4 (overhang past the input)
    y = nc.avg_pool2d(x, 2, ceil_mode=True)
    assert y.shape == (1, 1, 3, 3)
    np.testing.assert_array_equal(y, np.ones((1, 1, 3, 3)))
    # with padding 1: windows start at -1, 1, 3; with ceil the last (start 5 = in the padding)
    # is dropped, so still 3 outputs; the first counts its padding row, none overhangs
    y = nc.avg_pool2d(x, 2, padding=1, ceil_mode=True)
    assert y.shape == (1, 1, 3, 3)
    np.testing.assert_allclose(y[0, 0], [[0.25, 0.5, 0.5], [0.5, 1.0, 1.0], [0.5, 1.0, 1.0]])


def test_avg_pool_ceil_mode_drops_a_window_starting_in_the_padding(nc):
    x = np.ones((1, 1, 4, 4))
    # ceil((4 + 2 - 2) / 3) + 1 = 3 windows would start at -1, 2 and 5; the one at 5 starts in
    # the bottom/right padding and is dropped
    assert nc.avg_pool2d(x, 2, stride=3, padding=1, ceil_mode=True).shape == (1, 1, 2, 2)
    assert nc.max_pool2d(x, 2, stride=3, padding=1, ceil_mode=True).shape == (1, 1, 2, 2)


def test_avg_pool_divisor_override_wins(nc):
    x = np.ones((1, 1, 4, 4))
    for cip in (True, False):
        y = nc.avg_pool2d(x, 2, padding=1, count_include_pad=cip, divisor_override=3)
        np.testing.assert_allclose(y[0, 0], [[1 / 3, 2 / 3, 1 / 3],
                                             [2 / 3, 4 / 3, 2 / 3],
                                             [1 / 3, 2 / 3, 1 / 3]], rtol=1e-15)


# --------------------------------------------------------------------------------------------
# randomised parity


def _kernel_like(draw, h, w):
    return h if h == w and draw(st.booleans()) else (h, w)


@st.composite
def pool_cases(draw, kind):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    kernel = _kernel_like(draw, kh, kw)
    if draw(st.booleans()):
        stride = None
        sh, sw = kh, kw
    else:
        sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        stride = _kernel_like(draw, sh, sw)
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    padding = _kernel_like(draw, ph, pw)
    if kind == "max":
        dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        dilation = _kernel_like(draw, dh, dw)
    else:
        dh = dw = 1
        dilation = 1
    ceil_mode = draw(st.booleans())
    # with ceil_mode a window may overhang even an input smaller than it (as in PyTorch)
    h_min = 1 if ceil_mode else max(1, dh * (kh - 1) + 1 - 2 * ph)
    w_min = 1 if ceil_mode else max(1, dw * (kw - 1) + 1 - 2 * pw)
    H = draw(st.integers(h_min, h_min + 7))
    W = draw(st.integers(w_min, w_min + 7))
    assume(ref.out_len(H, kh, sh, ph, ph, dh, ceil_mode) >= 1)
    assume(ref.out_len(W, kw, sw, pw, pw, dw, ceil_mode) >= 1)
    case = dict(
        N=draw(st.integers(1, 2)), C=draw(st.integers(1, 3)), H=H, W=W,
        kernel_size=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode,
        dtype=draw(st.sampled_from(DTYPES)),
        layouts=(draw(st.sampled_from(LAYOUTS)), draw(st.sampled_from(LAYOUTS))),
        seed=draw(st.integers(0, 2**32 - 1)),
    )
    if kind == "max":
        case["dilation"] = dilation
        case["values"] = draw(st.sampled_from(["ties", "normal", "nan", "inf"]))
    else:
        case["count_include_pad"] = draw(st.booleans())
        case["divisor_override"] = draw(st.one_of(st.none(), st.integers(1, 6)))
        case["values"] = draw(st.sampled_from(["ties", "normal"]))
    return case


def make_pool_input(case):
    rng = np.random.default_rng(case["seed"])
    shape = (case["N"], case["C"], case["H"], case["W"])
    if case["values"] == "normal":
        x = rng.normal(size=shape)
    else:
        # small integers: plenty of ties inside every window
        x = rng.integers(-3, 4, size=shape).astype(np.float64)
        if case["values"] == "nan":
            x[rng.random(shape) < 0.15] = np.nan
        elif case["values"] == "inf":
            x[rng.random(shape) < 0.3] = -np.inf
            x[rng.random(shape) < 0.05] = np.inf
    return x.astype(case["dtype"]), rng


def max_args(case):
    return {k: case[k] for k in ("kernel_size", "stride", "padding", "dilation", "ceil_mode")}


def avg_args(case):
    return {k: case[k] for k in ("kernel_size", "stride", "padding", "ceil_mode",
                                 "count_include_pad", "divisor_override")}


@settings(max_examples=40)
@given(pool_cases("max"))
def test_max_pool2d_matches_reference(nc, case):
    x, rng = make_pool_input(case)
    args = max_args(case)
    lx, lg = case["layouts"]
    ey, eidx = ref.max_pool2d(x, return_indices=True, **args)
    y, idx = nc.max_pool2d(layout(x, lx), return_indices=True, **args)
    assert y.dtype == x.dtype and idx.dtype == np.int64
    np.testing.assert_array_equal(y, ey.astype(x.dtype))  # a max is exact, NaN == NaN here
    np.testing.assert_array_equal(idx, eidx)
    np.testing.assert_array_equal(nc.max_pool2d(layout(x, lx), **args), y)

    gy = rng.normal(size=y.shape).astype(x.dtype)
    gx = nc.max_pool2d_backward(layout(gy, lg), idx, x.shape)
    assert_close(gx, ref.max_pool2d_backward(gy, eidx, x.shape), x.dtype, "max_pool2d grad_x")


def torch_max_pool(torch, F, x, kernel_size, stride, padding, dilation, ceil_mode):
    xt = torch.tensor(np.ascontiguousarray(x), requires_grad=True)
    yt, it = F.max_pool2d(xt, kernel_size, stride=stride, padding=padding, dilation=dilation,
                          ceil_mode=ceil_mode, return_indices=True)
    return xt, yt, it


@settings(max_examples=40)
@given(pool_cases("max"))
def test_max_pool2d_matches_torch(nc, torch, F, case):
    x, rng = make_pool_input(case)
    args = max_args(case)
    lx, lg = case["layouts"]
    xt, yt, it = torch_max_pool(torch, F, x, **args)
    y, idx = nc.max_pool2d(layout(x, lx), return_indices=True, **args)
    np.testing.assert_array_equal(y, yt.detach().numpy())
    np.testing.assert_array_equal(idx, it.numpy())

    if idx.max() >= case["H"] * case["W"]:
        return  # PyTorch's backward writes such an index into the next plane: no reference
    gy = rng.normal(size=y.shape).astype(x.dtype)
    yt.backward(torch.tensor(gy))
    gx = nc.max_pool2d_backward(layout(gy, lg), idx, x.shape)
    assert_close(gx, xt.grad.numpy().astype(np.float64), x.dtype, "max_pool2d grad vs torch")


@given(pool_cases("max"))
def test_reference_max_pool2d_matches_torch(torch, F, case):
    x, rng = make_pool_input(case)
    args = max_args(case)
    xt, yt, it = torch_max_pool(torch, F, x, **args)
    y, idx = ref.max_pool2d(x, return_indices=True, **args)
    np.testing.assert_array_equal(y, yt.detach().numpy().astype(np.float64))
    np.testing.assert_array_equal(idx, it.numpy())
    if idx.max() >= case["H"] * case["W"]:
        return  # see test_max_pool2d_matches_torch
    gy = rng.normal(size=y.shape)
    yt.backward(torch.tensor(gy.astype(x.dtype)))
    np.testing.assert_allclose(ref.max_pool2d_backward(gy.astype(x.dtype), idx, x.shape),
                               xt.grad.numpy(), rtol=1e-6, atol=1e-6)


def torch_avg_pool(torch, F, x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                   divisor_override):
    xt = torch.tensor(np.ascontiguousarray(x), requires_grad=True)
    yt = F.avg_pool2d(xt, kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode,
                      count_include_pad=count_include_pad, divisor_override=divisor_override)
    return xt, yt


@settings(max_examples=40)
@given(pool_cases("avg"))
def test_avg_pool2d_matches_reference(nc, case):
    x, rng = make_pool_input(case)
    args = avg_args(case)
    lx, lg = case["layouts"]
    ey = ref.avg_pool2d(x, **args)
    y = nc.avg_pool2d(layout(x, lx), **args)
    assert_close(y, ey, x.dtype, "avg_pool2d forward")
    gy = rng.normal(size=y.shape).astype(x.dtype)
    gx = nc.avg_pool2d_backward(layout(gy, lg), x.shape, **args)
    assert_close(gx, ref.avg_pool2d_backward(gy, x.shape, **args), x.dtype, "avg grad_x")


@settings(max_examples=40)
@given(pool_cases("avg"))
def test_avg_pool2d_matches_torch(nc, torch, F, case):
    x, rng = make_pool_input(case)
    args = avg_args(case)
    lx, lg = case["layouts"]
    xt, yt = torch_avg_pool(torch, F, x, **args)
    y = nc.avg_pool2d(layout(x, lx), **args)
    assert_close(y, yt.detach().numpy().astype(np.float64), x.dtype, "avg_pool2d vs torch")
    gy = rng.normal(size=y.shape).astype(x.dtype)
    yt.backward(torch.tensor(gy))
    gx = nc.avg_pool2d_backward(layout(gy, lg), x.shape, **args)
    assert_close(gx, xt.grad.numpy().astype(np.float64), x.dtype, "avg grad vs torch")


@given(pool_cases("avg"))
def test_reference_avg_pool2d_matches_torch(torch, F, case):
    case = dict(case, dtype=np.float64)
    x, rng = make_pool_input(case)
    args = avg_args(case)
    xt, yt = torch_avg_pool(torch, F, x, **args)
    y = ref.avg_pool2d(x, **args)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    gy = rng.normal(size=y.shape)
    yt.backward(torch.tensor(gy))
    np.testing.assert_allclose(ref.avg_pool2d_backward(gy, x.shape, **args), xt.grad.numpy(),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", [k for k in LAYOUTS if k != "C"])
def test_pools_non_contiguous_inputs(nc, kind, dtype):
    """Every layout, deterministically (the randomised tests only sample them)."""
    rng = np.random.default_rng(11)
    x = rng.integers(-4, 5, size=(2, 3, 7, 6)).astype(dtype)
    margs = dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 1), dilation=(1, 2),
                 ceil_mode=True)
    ey, eidx = ref.max_pool2d(x, return_indices=True, **margs)
    y, idx = nc.max_pool2d(layout(x, kind), return_indices=True, **margs)
    np.testing.assert_array_equal(y, ey.astype(dtype))
    np.testing.assert_array_equal(idx, eidx)
    gy = rng.normal(size=y.shape).astype(dtype)
    assert_close(nc.max_pool2d_backward(layout(gy, kind), layout(idx, kind), x.shape),
                 ref.max_pool2d_backward(gy, eidx, x.shape), dtype, f"max grad {kind}")

    aargs = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)
    y = nc.avg_pool2d(layout(x, kind), **aargs)
    assert_close(y, ref.avg_pool2d(x, **aargs), dtype, f"avg {kind}")
    gy = rng.normal(size=y.shape).astype(dtype)
    assert_close(nc.avg_pool2d_backward(layout(gy, kind), x.shape, **aargs),
                 ref.avg_pool2d_backward(gy, x.shape, **aargs), dtype, f"avg grad {kind}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_pool_output_shapes_agree_with_shapes_module(nc, dtype):
    from numbaconv.shapes import pool2d_output_shape

    x = np.zeros((2, 3, 9, 10), dtype=dtype)
    for kernel, stride, padding, dilation, ceil_mode in [
            (3, None, 0, 1, False), ((2, 3), (2, 1), (1, 1), (2, 1), True),
            (2, 2, 1, 1, True), ((4, 1), 3, (2, 0), 1, True)]:
        y = nc.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)
        assert y.shape == pool2d_output_shape(x.shape, kernel, stride, padding, dilation,
                                              ceil_mode)
        assert y.dtype == dtype
        if dilation == 1:
            a = nc.avg_pool2d(x, kernel, stride, padding, ceil_mode)
            assert a.shape == y.shape and a.dtype == dtype


@pytest.mark.parametrize("shape, kernel, stride, padding", [
    ((1, 1, 1, 1), 2, None, 0),      # MaxPool2d(2, ceil_mode=True) of a 1x1 map
    ((1, 2, 2, 2), 3, 2, 0),         # MaxPool2d(3, 2, ceil_mode=True) of a 2x2 map
    ((2, 1, 3, 2), (4, 3), 2, (1, 0)),
])
def test_ceil_mode_window_overhanging_a_small_input_matches_torch(nc, torch, F, shape, kernel,
                                                                  stride, padding):
    """PyTorch keeps a ceil_mode window that starts inside the input even when no full window
    fits the padded input; the window is clipped to the input."""
    x = np.random.default_rng(13).normal(size=shape)
    xt = torch.tensor(x)
    ty, ti = F.max_pool2d(xt, kernel, stride, padding, ceil_mode=True, return_indices=True)
    ey, eidx = ref.max_pool2d(x, kernel, stride, padding, ceil_mode=True, return_indices=True)
    np.testing.assert_array_equal(ey, ty.numpy())
    np.testing.assert_array_equal(eidx, ti.numpy())
    y, idx = nc.max_pool2d(x, kernel, stride, padding, ceil_mode=True, return_indices=True)
    np.testing.assert_array_equal(y, ty.numpy())
    np.testing.assert_array_equal(idx, ti.numpy())
    ta = F.avg_pool2d(xt, kernel, stride, padding, ceil_mode=True).numpy()
    np.testing.assert_allclose(ref.avg_pool2d(x, kernel, stride, padding, ceil_mode=True), ta,
                               rtol=1e-12)
    np.testing.assert_allclose(nc.avg_pool2d(x, kernel, stride, padding, ceil_mode=True), ta,
                               rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, kernel, divisor", [
    ((3, 2, 28, 28), 2, None),       # LeNet's pools
    ((2, 3, 11, 9), (3, 2), None),   # windows that leave a last row and column out
    ((2, 1, 8, 8), 4, 3),            # divisor_override
])
def test_avg_pool_tiling_windows_fast_path(nc, torch, F, dtype, shape, kernel, divisor):
    """Windows that tile the input (stride = kernel, no padding) take a row-by-row path: the
    same numbers as the reference and PyTorch, and bit for bit the generic plane loops'."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=shape).astype(dtype)
    args = dict(kernel_size=kernel, divisor_override=divisor)
    y = nc.avg_pool2d(x, **args)
    assert_close(y, ref.avg_pool2d(x, **args), dtype, "avg_pool2d forward")
    gy = rng.normal(size=y.shape).astype(dtype)
    gx = nc.avg_pool2d_backward(gy, x.shape, **args)
    assert_close(gx, ref.avg_pool2d_backward(gy, x.shape, **args), dtype, "avg grad_x")
    xt, yt = torch_avg_pool(torch, F, x, kernel, None, 0, False, True, divisor)
    yt.backward(torch.tensor(gy))
    assert_close(y, yt.detach().numpy(), dtype, "avg_pool2d vs torch")
    assert_close(gx, xt.grad.numpy(), dtype, "avg grad_x vs torch")
    from numbaconv.kernels.cpu import pool as cpu_pool

    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    out_h, out_w = y.shape[2:]
    rows = cpu_pool._avg_windows(out_h, kh, kh, 0, shape[2])
    cols = cpu_pool._avg_windows(out_w, kw, kw, 0, shape[3])
    y_generic = np.empty_like(y)
    gx_generic = np.zeros_like(gx)
    for n in range(shape[0]):
        for c in range(shape[1]):
            cpu_pool._avg_forward_plane(x[n, c], y_generic[n, c], *rows, *cols, True,
                                        divisor or 0)
            cpu_pool._avg_backward_plane(gy[n, c], gx_generic[n, c], *rows, *cols, True,
                                         divisor or 0)
    np.testing.assert_array_equal(y, y_generic)
    np.testing.assert_array_equal(gx, gx_generic)
