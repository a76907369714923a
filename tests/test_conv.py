"""conv2d / conv2d_backward / corr2d / convolve2d against the NumPy loop reference and PyTorch."""

from __future__ import annotations

import contextlib
from unittest import mock

import numpy as np
import pytest
import reference as ref
from hypothesis import assume, given
from hypothesis import strategies as st
from support import LAYOUTS, assert_close, layout, on_1_and_2_threads

DTYPES = (np.float64, np.float32)

# --------------------------------------------------------------------------------------------
# worked examples ("Dive into Deep Learning", chapter 6)


def test_corr2d_worked_example(nc):
    X = np.arange(9.0).reshape(3, 3)
    K = np.arange(4.0).reshape(2, 2)
    Y = nc.corr2d(X, K)
    np.testing.assert_array_equal(Y, [[19.0, 25.0], [37.0, 43.0]])
    assert Y.dtype == np.float64


def test_convolve2d_is_corr2d_with_flipped_kernel(nc):
    X = np.arange(9.0).reshape(3, 3)
    K = np.arange(4.0).reshape(2, 2)
    Y = nc.convolve2d(X, K)
    np.testing.assert_array_equal(Y, nc.corr2d(X, K[::-1, ::-1]))
    # by hand: the flipped kernel is [[3, 2], [1, 0]]
    np.testing.assert_array_equal(Y, [[5.0, 11.0], [23.0, 29.0]])


def test_corr2d_edge_detection(nc):
    X = np.ones((6, 8))
    X[:, 2:6] = 0
    K = np.array([[1.0, -1.0]])
    expected = np.zeros((6, 7))
    expected[:, 1] = 1
    expected[:, 5] = -1
    np.testing.assert_array_equal(nc.corr2d(X, K), expected)
    # the kernel only sees vertical edges
    np.testing.assert_array_equal(nc.corr2d(X.T, K), np.zeros((8, 5)))


def test_corr2d_non_square_kernel_shape(nc):
    X = np.random.default_rng(0).normal(size=(7, 5))
    K = np.ones((3, 2))
    assert nc.corr2d(X, K).shape == (5, 4)
    assert nc.convolve2d(X, K).shape == (5, 4)


def test_multi_input_channel_worked_example(nc):
    X = np.array([[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 8.0]],
                  [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]])
    K = np.array([[[0.0, 1.0], [2.0, 3.0]], [[1.0, 2.0], [3.0, 4.0]]])
    Y = nc.conv2d(X[None], K[None])
    np.testing.assert_array_equal(Y, [[[[56.0, 72.0], [104.0, 120.0]]]])
    # multiple output channels: K, K + 1, K + 2
    K3 = np.stack([K, K + 1, K + 2])
    Y3 = nc.conv2d(X[None], K3)
    assert Y3.shape == (1, 3, 2, 2)
    np.testing.assert_array_equal(Y3[0, 0], [[56.0, 72.0], [104.0, 120.0]])
    np.testing.assert_array_equal(Y3[0, 1], [[76.0, 100.0], [148.0, 172.0]])
    np.testing.assert_array_equal(Y3[0, 2], [[96.0, 128.0], [192.0, 224.0]])


def test_1x1_conv_is_a_matmul(nc):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(3, 3, 3))
    K = rng.normal(size=(2, 3, 1, 1))
    Y = nc.conv2d(X[None], K)[0]
    expected = (K.reshape(2, 3) @ X.reshape(3, 9)).reshape(2, 3, 3)
    np.testing.assert_allclose(Y, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel, padding, stride, expected", [
    ((3, 3), 1, 1, (8, 8)),
    ((5, 3), (2, 1), 1, (8, 8)),
    ((3, 3), 1, 2, (4, 4)),
    ((3, 5), (0, 1), (3, 4), (2, 2)),
    ((3, 3), "same", 1, (8, 8)),
    ((4, 2), "same", 1, (8, 8)),
    ((3, 3), "valid", 1, (6, 6)),
])
def test_padding_and_stride_worked_examples(nc, kernel, padding, stride, expected):
    X = np.random.default_rng(2).random((8, 8))
    K = np.random.default_rng(3).random(kernel)
    Y = nc.conv2d(X.reshape(1, 1, 8, 8), K.reshape(1, 1, *kernel), padding=padding,
                  stride=stride)
    assert Y.shape == (1, 1) + expected
    np.testing.assert_allclose(
        Y, ref.conv2d(X.reshape(1, 1, 8, 8), K.reshape(1, 1, *kernel), padding=padding,
                      stride=stride), rtol=1e-12, atol=1e-12)


def test_bias_is_added_per_output_channel(nc):
    x = np.zeros((2, 3, 4, 5))
    w = np.zeros((4, 3, 3, 3))
    b = np.array([1.0, -2.0, 3.5, 0.25])
    y = nc.conv2d(x, w, b, padding=1)
    assert y.shape == (2, 4, 4, 5)
    np.testing.assert_array_equal(y, np.broadcast_to(b[None, :, None, None], y.shape))


def test_padding_forms_agree(nc):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(1, 2, 7, 6))
    w = rng.normal(size=(3, 2, 3, 3))
    a = nc.conv2d(x, w, padding=1)
    np.testing.assert_array_equal(a, nc.conv2d(x, w, padding=(1, 1)))
    np.testing.assert_array_equal(a, nc.conv2d(x, w, padding=((1, 1), (1, 1))))
    np.testing.assert_array_equal(a, nc.conv2d(x, w, padding="same"))
    np.testing.assert_array_equal(nc.conv2d(x, w), nc.conv2d(x, w, padding="valid"))
    np.testing.assert_array_equal(nc.conv2d(x, w, padding=(2, 0)),
                                  nc.conv2d(x, w, padding=((2, 2), (0, 0))))


def test_same_padding_puts_the_odd_extra_bottom_right(nc):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(1, 1, 5, 6))
    w = rng.normal(size=(1, 1, 2, 4))  # totals 1 and 3: extra row at the bottom, col right
    y = nc.conv2d(x, w, padding="same")
    assert y.shape == x.shape
    expected = ref.conv2d(np.pad(x, ((0, 0), (0, 0), (0, 1), (1, 2))), w)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y, nc.conv2d(x, w, padding=((0, 1), (1, 2))),
                               rtol=1e-12, atol=1e-12)


def test_groups_equal_channels_is_depthwise(nc):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, 3, 6, 6))
    w = rng.normal(size=(3, 1, 3, 3))
    y = nc.conv2d(x, w, groups=3, padding=1)
    for c in range(3):
        np.testing.assert_allclose(
            y[:, c:c + 1], nc.conv2d(x[:, c:c + 1], w[c:c + 1], padding=1),
            rtol=1e-12, atol=1e-12)


def test_inputs_are_not_modified(nc):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, 2, 5, 5))
    w = rng.normal(size=(2, 2, 3, 3))
    b = rng.normal(size=2)
    gy = rng.normal(size=(2, 2, 3, 3))
    copies = [a.copy() for a in (x, w, b, gy)]
    nc.conv2d(x, w, b)
    nc.conv2d_backward(gy, x, w)
    for a, c in zip((x, w, b, gy), copies, strict=True):
        np.testing.assert_array_equal(a, c)


# --------------------------------------------------------------------------------------------
# randomised parity


def _ints_or_pairs(lo, hi):
    return st.one_of(st.integers(lo, hi), st.tuples(st.integers(lo, hi), st.integers(lo, hi)))


@st.composite
def conv_cases(draw, max_hw=11):
    groups = draw(st.integers(1, 3))
    cin_g = draw(st.integers(1, 3))
    cout_g = draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    form = draw(st.sampled_from(["int", "pair", "sides", "valid", "same"]))
    # 'same' needs stride 1; otherwise stride 1 stays common (it takes its own kernel path)
    stride = draw(st.sampled_from([1, (1, 1)]) if form == "same"
                  else st.one_of(st.just(1), _ints_or_pairs(1, 3)))
    dilation = draw(_ints_or_pairs(1, 3))
    dh, dw = ref.pair(dilation)
    if form == "int":
        padding = draw(st.integers(0, 3))
    elif form == "pair":
        padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    elif form == "sides":
        padding = ((draw(st.integers(0, 3)), draw(st.integers(0, 3))),
                   (draw(st.integers(0, 3)), draw(st.integers(0, 3))))
    else:
        padding = form
    (pt, pb), (pl, pr) = ref.conv_sides(padding, (kh, kw), (dh, dw))
    h_min = max(1, dh * (kh - 1) + 1 - pt - pb)
    w_min = max(1, dw * (kw - 1) + 1 - pl - pr)
    H = draw(st.integers(h_min, max(h_min, max_hw)))
    W = draw(st.integers(w_min, max(w_min, max_hw)))
    return dict(
        N=draw(st.integers(1, 2)), C=cin_g * groups, H=H, W=W, F=cout_g * groups,
        kernel=(kh, kw), stride=stride, padding=padding, dilation=dilation, groups=groups,
        bias=draw(st.booleans()),
        dtype=draw(st.sampled_from(DTYPES)),
        layouts=(draw(st.sampled_from(LAYOUTS)), draw(st.sampled_from(LAYOUTS)),
                 draw(st.sampled_from(LAYOUTS))),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def make_conv_arrays(case):
    rng = np.random.default_rng(case["seed"])
    dtype = case["dtype"]
    x = rng.normal(size=(case["N"], case["C"], case["H"], case["W"])).astype(dtype)
    w = rng.normal(size=(case["F"], case["C"] // case["groups"]) + case["kernel"]).astype(dtype)
    b = rng.normal(size=case["F"]).astype(dtype) if case["bias"] else None
    return x, w, b, rng


def conv_args(case):
    return dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
                groups=case["groups"])


@given(conv_cases())
def test_conv2d_forward_backward_match_reference(nc, case):
    check_conv_against_reference(nc, case)


@given(conv_cases(max_hw=8), st.integers(16, 40))
def test_conv2d_many_samples_match_reference(nc, case, n):
    """Batches of several interleaved blocks, where narrow images take the lanes kernels."""
    check_conv_against_reference(nc, dict(case, N=n))


@pytest.mark.parametrize("kernel, stride, padding, dilation", [
    ((1, 1), 1, 2, 1),                    # padding beyond a 1x1 kernel's reach (0)
    ((3, 3), 4, (5, 5), 1),               # outputs whose windows see padding only
    ((2, 3), (2, 3), ((3, 0), (0, 4)), 1),  # asymmetric, beyond the reach on one side
    ((3, 2), (3, 1), (4, 3), (1, 2)),     # dilated, ragged strides
])
@pytest.mark.parametrize("dtype", DTYPES)
def test_input_gradient_where_padding_exceeds_the_kernels_reach(nc, kernel, stride, padding,
                                                                 dilation, dtype):
    """The input gradient is computed for the input's rows and columns only: gy rows whose
    windows lie in the padding are dropped, not misplaced."""
    check_conv_against_reference(nc, dict(
        N=3, C=2, H=7, W=9, F=3, kernel=kernel, stride=stride, padding=padding,
        dilation=dilation, groups=1, bias=True, dtype=dtype, layouts=(LAYOUTS[0],) * 3,
        seed=5))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, kernel, stride, padding, dilation, groups", [
    # (N, C_in, H, W, C_out): which weight-gradient path each takes
    ((3, 2, 9, 23, 5), (3, 4), 1, 1, 1, 1),  # gy's rows, lane sums kept (5 x 24 <= 256)
    ((3, 2, 9, 23, 5), (3, 4), (2, 1), 1, (1, 2), 1),  # the same, row stride 2
    ((3, 5, 9, 23, 7), (3, 3), 1, 1, 1, 1),  # copied onto the flat grid (7 x 45 > 256)
    ((2, 10, 7, 21, 18), (2, 3), 1, (0, 2), 1, 2),  # the same, 2 groups of 9 x 30
    ((3, 5, 9, 23, 7), (3, 3), (1, 2), 1, 1, 1),  # column stride 2: the flat grid
    ((64, 3, 10, 10, 6), (3, 3), 1, 0, 1, 1),  # narrow: interleaved samples (lanes)
])
def test_weight_gradient_paths_match_reference(nc, dtype, shape, kernel, stride, padding,
                                               dilation, groups):
    """Each of the weight gradient's kernel paths, with rows and taps that fill no whole
    4 x 4 tile and rows that fill no whole vector."""
    n, c_in, h, w, c_out = shape
    check_conv_against_reference(nc, dict(
        N=n, C=c_in, H=h, W=w, F=c_out, kernel=kernel, stride=stride, padding=padding,
        dilation=dilation, groups=groups, bias=True, dtype=dtype, layouts=("C", "C", "C"),
        seed=7))


def check_conv_against_reference(nc, case):
    x, w, b, rng = make_conv_arrays(case)
    args = conv_args(case)
    dtype = case["dtype"]
    lx, lw, lg = case["layouts"]
    expected = ref.conv2d(x, w, b, **args)
    assert expected.size > 0
    y = nc.conv2d(layout(x, lx), layout(w, lw), b, **args)
    assert_close(y, expected, dtype, "conv2d forward")
    if case["padding"] == "same":
        assert y.shape[2:] == x.shape[2:]

    gy = rng.normal(size=expected.shape).astype(dtype)
    egx, egw, egb = ref.conv2d_backward(gy, x, w, **args)
    x_view, w_view, gy_view = layout(x, lx), layout(w, lw), layout(gy, lg)
    gx, gw, gb = nc.conv2d_backward(gy_view, x_view, w_view, **args)
    assert_close(gx, egx, dtype, "conv2d grad_x")
    assert_close(gw, egw, dtype, "conv2d grad_weight")
    assert_close(gb, egb, dtype, "conv2d grad_bias")
    # the (possibly non-contiguous) inputs were left alone
    np.testing.assert_array_equal(x_view, x)
    np.testing.assert_array_equal(w_view, w)
    np.testing.assert_array_equal(gy_view, gy)


def torch_conv2d(torch, F, x, w, b, stride, padding, dilation, groups):
    """PyTorch forward; the ``((t, b), (l, r))`` padding form goes through ``F.pad``."""
    xt = torch.tensor(np.ascontiguousarray(x), requires_grad=True)
    wt = torch.tensor(np.ascontiguousarray(w), requires_grad=True)
    bt = None if b is None else torch.tensor(b, requires_grad=True)
    xin = xt
    tpad = padding
    if not isinstance(padding, (str, int)) and not isinstance(padding[0], int):
        (top, bottom), (left, right) = padding
        xin = F.pad(xt, (left, right, top, bottom))
        tpad = 0
    y = F.conv2d(xin, wt, bt, stride=stride, padding=tpad, dilation=dilation, groups=groups)
    return y, xt, wt, bt


@given(conv_cases())
def test_conv2d_forward_backward_match_torch(nc, torch, F, case):
    x, w, b, rng = make_conv_arrays(case)
    args = conv_args(case)
    dtype = case["dtype"]
    lx, lw, lg = case["layouts"]
    yt, xt, wt, bt = torch_conv2d(torch, F, x, w, b, **args)
    y = nc.conv2d(layout(x, lx), layout(w, lw), b, **args)
    assert_close(y, yt.detach().numpy().astype(np.float64), dtype, "conv2d forward vs torch")

    gy = rng.normal(size=y.shape).astype(dtype)
    yt.backward(torch.tensor(gy))
    gx, gw, gb = nc.conv2d_backward(layout(gy, lg), layout(x, lx), layout(w, lw), **args)
    assert_close(gx, xt.grad.numpy().astype(np.float64), dtype, "grad_x vs torch")
    assert_close(gw, wt.grad.numpy().astype(np.float64), dtype, "grad_weight vs torch")
    assert_close(gb, gy.astype(np.float64).sum(axis=(0, 2, 3)), dtype, "grad_bias")
    if bt is not None:
        assert_close(gb, bt.grad.numpy().astype(np.float64), dtype, "grad_bias vs torch")


@given(conv_cases())
def test_reference_conv2d_matches_torch(torch, F, case):
    """Validates the NumPy reference itself (float64 throughout)."""
    case = dict(case, dtype=np.float64)
    x, w, b, rng = make_conv_arrays(case)
    args = conv_args(case)
    yt, xt, wt, bt = torch_conv2d(torch, F, x, w, b, **args)
    y = ref.conv2d(x, w, b, **args)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-10)
    gy = rng.normal(size=y.shape)
    yt.backward(torch.tensor(gy))
    gx, gw, gb = ref.conv2d_backward(gy, x, w, **args)
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gw, wt.grad.numpy(), rtol=1e-10, atol=1e-10)
    if bt is not None:
        np.testing.assert_allclose(gb, bt.grad.numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", [k for k in LAYOUTS if k != "C"])
def test_conv2d_non_contiguous_inputs(nc, kind, dtype):
    """Every layout, deterministically (the randomised tests only sample them)."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=(2, 4, 7, 6)).astype(dtype)
    w = rng.normal(size=(6, 2, 3, 2)).astype(dtype)
    b = rng.normal(size=6).astype(dtype)
    args = dict(stride=(2, 1), padding=((1, 0), (2, 1)), dilation=(1, 2), groups=2)
    y = nc.conv2d(layout(x, kind), layout(w, kind), b, **args)
    assert_close(y, ref.conv2d(x, w, b, **args), dtype, f"conv2d {kind}")
    gy = rng.normal(size=y.shape).astype(dtype)
    grads = nc.conv2d_backward(layout(gy, kind), layout(x, kind), layout(w, kind), **args)
    for got, exp, name in zip(grads, ref.conv2d_backward(gy, x, w, **args),
                              ("grad_x", "grad_weight", "grad_bias"), strict=True):
        assert_close(got, exp, dtype, f"{name} {kind}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_output_shape_agrees_with_shapes_module(nc, dtype):
    from numbaconv.shapes import conv2d_output_shape

    x = np.zeros((2, 3, 9, 10), dtype=dtype)
    for kernel, stride, padding, dilation in [
            ((3, 3), 1, 0, 1), ((2, 4), (2, 3), (1, 2), (2, 1)), ((3, 1), 1, "same", 3),
            ((1, 5), 2, ((0, 3), (2, 1)), 1)]:
        w = np.zeros((4, 3) + kernel, dtype=dtype)
        y = nc.conv2d(x, w, stride=stride, padding=padding, dilation=dilation)
        assert y.shape == conv2d_output_shape(x.shape, 4, kernel, stride, padding, dilation)
        assert y.dtype == dtype


# --------------------------------------------------------------------------------------------
# corr2d / convolve2d


@st.composite
def corr_cases(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    H, W = draw(st.integers(kh, 9)), draw(st.integers(kw, 9))
    return (H, W), (kh, kw), draw(st.sampled_from(DTYPES)), draw(st.sampled_from(LAYOUTS)), \
        draw(st.integers(0, 2**32 - 1))


@given(corr_cases())
def test_corr2d_convolve2d_match_reference_and_scipy(nc, case):
    from scipy import signal

    xshape, kshape, dtype, kind, seed = case
    rng = np.random.default_rng(seed)
    X = rng.normal(size=xshape).astype(dtype)
    K = rng.normal(size=kshape).astype(dtype)
    c = nc.corr2d(layout(X, kind), layout(K, kind))
    v = nc.convolve2d(layout(X, kind), layout(K, kind))
    assert_close(c, ref.corr2d(X, K), dtype, "corr2d")
    assert_close(v, ref.convolve2d(X, K), dtype, "convolve2d")
    X64, K64 = X.astype(np.float64), K.astype(np.float64)
    assert_close(c, signal.correlate2d(X64, K64, mode="valid"), dtype, "corr2d vs scipy")
    assert_close(v, signal.convolve2d(X64, K64, mode="valid"), dtype, "convolve2d vs scipy")


def test_corr2d_equals_single_channel_conv2d(nc):
    rng = np.random.default_rng(9)
    X = rng.normal(size=(6, 7))
    K = rng.normal(size=(2, 3))
    np.testing.assert_allclose(nc.corr2d(X, K), nc.conv2d(X[None, None], K[None, None])[0, 0],
                               rtol=1e-12, atol=1e-12)


def test_reference_corr2d_matches_scipy():
    from scipy import signal

    rng = np.random.default_rng(10)
    X = rng.normal(size=(7, 6))
    K = rng.normal(size=(3, 2))
    np.testing.assert_allclose(ref.corr2d(X, K), signal.correlate2d(X, K, mode="valid"))
    np.testing.assert_allclose(ref.convolve2d(X, K), signal.convolve2d(X, K, mode="valid"))


# --------------------------------------------------------------------------------------------
# non-finite values propagate exactly as in the loop reference (and PyTorch): an inf or NaN
# reaches only the outputs and gradients whose sums actually contain it


NONFINITE_CASES = [
    # (where, value, position, args)
    ("x", np.inf, (0, 0, 1, 5), dict()),
    ("x", np.nan, (0, 0, 1, 5), dict()),
    ("x", np.inf, (1, 1, 4, 0), dict(dilation=(1, 2))),
    ("x", np.nan, (0, 1, 2, 2), dict(stride=2)),
    ("x", -np.inf, (1, 0, 0, 5), dict(stride=(1, 2), padding=1)),
    ("weight", np.inf, (1, 0, 0, 1), dict()),
    ("weight", np.nan, (0, 1, 1, 0), dict(stride=2)),
    ("grad_y", np.inf, (1, 0, 2, 1), dict(padding=1)),
    ("grad_y", np.nan, (0, 1, 0, 1), dict(stride=(2, 1), dilation=2)),
]


@pytest.fixture
def parallel_placement(monkeypatch):
    """Padding and the input gradient's spread through the parallel kernel at any size."""
    from numbaconv.kernels.cpu import conv as cpu_conv

    monkeypatch.setattr(cpu_conv, "PLACE_IN_PARALLEL", 0)
    return cpu_conv


def test_parallel_placement_equals_numpys(parallel_placement):
    rng = np.random.default_rng(8)
    for trial in range(100):
        n, c, height, width = rng.integers(1, 4), rng.integers(1, 4), *rng.integers(1, 9, 2)
        src = rng.normal(size=(n, c, height, width)).astype(np.float32)
        if trial % 4 == 0:
            src[rng.integers(n), rng.integers(c), rng.integers(height), rng.integers(width)] = \
                (np.inf, -np.inf, np.nan)[trial % 3]
        out_h, out_w = rng.integers(1, 14, 2)
        rows = parallel_placement._placement(int(rng.integers(-3, 4)), int(rng.integers(1, 4)),
                                             height, out_h)
        cols = parallel_placement._placement(int(rng.integers(-3, 4)), int(rng.integers(1, 4)),
                                             width, out_w)
        got, finite = parallel_placement.place(src, out_h, out_w, rows, cols, True)
        want = np.zeros((n, c, out_h, out_w), np.float32)
        placed = src[:, :, rows[1], cols[1]]
        want[:, :, rows[0], cols[0]] = placed
        np.testing.assert_array_equal(got, want)
        assert finite == bool(np.isfinite(placed).all())


@pytest.mark.parametrize("kernel, stride, padding, dilation, groups", [
    ((3, 3), 1, 1, 1, 1), ((5, 5), 1, 2, 1, 2), ((2, 3), (2, 3), ((3, 0), (0, 4)), 1, 1),
    ((3, 2), (3, 1), (4, 3), (1, 2), 1)])
def test_conv2d_with_parallel_placement_matches_reference(nc, parallel_placement, kernel,
                                                          stride, padding, dilation, groups):
    check_conv_against_reference(nc, dict(
        N=3, C=2 * groups, H=9, W=8, F=2 * groups, kernel=kernel, stride=stride,
        padding=padding, dilation=dilation, groups=groups, bias=True, dtype=np.float32,
        layouts=(LAYOUTS[0],) * 3, seed=6))


def _nonfinite_arrays(where, value, position):
    rng = np.random.default_rng(12)
    x = rng.normal(size=(2, 2, 5, 6))
    w = rng.normal(size=(2, 2, 2, 2))
    if where != "grad_y":
        (x if where == "x" else w)[position] = value
    return x, w, rng


def assert_non_finite_like_reference(got, expected):
    """(y, grad_x, grad_weight, grad_bias) equal to the reference's, NaN where it has NaN."""
    for one, exp, what in zip(got, expected, ("y", "grad_x", "grad_weight", "grad_bias"),
                              strict=True):
        np.testing.assert_array_equal(np.isnan(one), np.isnan(exp),
                                      err_msg=f"{what}: NaN positions differ")
        np.testing.assert_allclose(one, exp, rtol=1e-10, atol=1e-10, equal_nan=True,
                                   err_msg=what)


def _nonfinite_grad(rng, shape, where, value, position):
    gy = rng.normal(size=shape)
    if where == "grad_y":
        gy[position] = value
    return gy


@pytest.mark.parametrize("parallel", [False, True], ids=["numpy-pad", "parallel-pad"])
@pytest.mark.parametrize("where, value, position, args", NONFINITE_CASES,
                         ids=[f"{c[0]}={c[1]}@{c[2]}-{c[3]}" for c in NONFINITE_CASES])
def test_conv2d_non_finite_values_propagate_like_reference(nc, monkeypatch, where, value,
                                                           position, args, parallel):
    from numbaconv.kernels.cpu import conv as cpu_conv

    if parallel:  # the parallel pad also tells the backward that x holds inf or NaN
        monkeypatch.setattr(cpu_conv, "PLACE_IN_PARALLEL", 0)
    x, w, rng = _nonfinite_arrays(where, value, position)
    with np.errstate(invalid="ignore"):
        expected = ref.conv2d(x, w, **args)
        gy = _nonfinite_grad(rng, expected.shape, where, value, position)
        egx, egw, egb = ref.conv2d_backward(gy, x, w, **args)
    y = nc.conv2d(x, w, **args)
    gx, gw, gb = nc.conv2d_backward(gy, x, w, **args)
    assert_non_finite_like_reference((y, gx, gw, gb), (expected, egx, egw, egb))


@pytest.mark.parametrize("where, value, position, args", NONFINITE_CASES,
                         ids=[f"{c[0]}={c[1]}@{c[2]}-{c[3]}" for c in NONFINITE_CASES])
def test_reference_non_finite_matches_torch(torch, F, where, value, position, args):
    x, w, rng = _nonfinite_arrays(where, value, position)
    with np.errstate(invalid="ignore"):
        expected = ref.conv2d(x, w, **args)
        gy = _nonfinite_grad(rng, expected.shape, where, value, position)
        egx, egw, _ = ref.conv2d_backward(gy, x, w, **args)
    yt, xt, wt, _ = torch_conv2d(torch, F, x, w, None, groups=1,
                                 **{"stride": 1, "padding": 0, "dilation": 1, **args})
    yt.backward(torch.tensor(gy))
    for got, exp in ((yt.detach().numpy(), expected), (xt.grad.numpy(), egx),
                     (wt.grad.numpy(), egw)):
        np.testing.assert_allclose(got, exp, rtol=1e-10, atol=1e-10, equal_nan=True)


def test_a_shifted_input_gives_a_shifted_output(nc):
    """Translation equivariance (the text's 1.1-1.2): conv(shift(x)) == shift(conv(x))."""
    rng = np.random.default_rng(0)
    x = np.zeros((1, 2, 16, 16))
    x[:, :, 4:9, 3:8] = rng.normal(size=(1, 2, 5, 5))  # content away from the borders
    w = rng.normal(size=(3, 2, 3, 3))
    shifted = np.roll(x, (2, 5), axis=(2, 3))
    y = nc.conv2d(x, w, padding="same")
    np.testing.assert_allclose(nc.conv2d(shifted, w, padding="same"),
                               np.roll(y, (2, 5), axis=(2, 3)), atol=1e-12)


# --------------------------------------------------------------------------------------------
# the column kernels (im2col and blocked products: many channels on small maps)


@contextlib.contextmanager
def columns_for_every_size():
    """Route every groups-1 convolution through the column kernels, small ones included."""
    from numbaconv.kernels.cpu.conv import columns

    with mock.patch.multiple(columns, MIN_K=1, MIN_C_OUT=1, MIN_FLAT_WIDTH=1 << 30):
        yield


@given(conv_cases())
def test_column_kernels_match_reference(nc, case):
    """Every geometry of the randomised cases (the groups-1 ones) through the column kernels:
    wide and exact layouts, live-tap cropping, negative effective padding."""
    with columns_for_every_size():
        check_conv_against_reference(nc, dict(case, groups=1, F=case["F"] // case["groups"],
                                               C=case["C"] // case["groups"]))


@given(conv_cases())
def test_weight_gradient_by_columns_beside_the_flat_kernels_matches_reference(nc, case):
    """Layers whose forward and input gradient stay on the flat kernels, their weight
    gradient on the column kernels (where the flat kernel's partial sums would be large)."""
    from numbaconv.kernels.cpu.conv import columns

    with mock.patch.object(columns, "PARTIALS_BYTES", 0):
        check_conv_against_reference(nc, case)


@given(conv_cases(max_hw=6), st.integers(17, 70))
def test_column_kernels_chunk_many_samples_like_the_reference(nc, case, n):
    """Many samples per chunk and output channels split into blocks (tiny maps)."""
    with columns_for_every_size():
        check_conv_against_reference(nc, dict(case, N=n, groups=1, F=20, C=3))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, stride, padding, dilation, unrolled", [
    # (N, C_in, H, W, C_out), ResNet-18's shapes scaled down, K = C_in x 9 >= 256;
    # unrolled: None (columns), "rearranged" or "in place" (the weights the forward reads)
    ((5, 32, 3, 3, 24), 1, 1, 1, None),     # 3x3 maps, few samples: exact layout
    ((36, 32, 3, 3, 24), 1, 1, 1, "rearranged"),  # 3x3 maps: unrolled, 49 of 81 pairs
    ((5, 32, 7, 7, 24), 2, 1, 1, None),     # stride 2: exact layout
    ((33, 32, 6, 6, 24), 2, 1, 1, "rearranged"),  # 6x6 -> 3x3 at stride 2: unrolled
    ((70, 32, 1, 1, 64), 1, 1, 1, "in place"),  # 1x1 maps: unrolled (the middle tap alone)
    ((40, 32, 2, 2, 24), 1, 1, 1, "in place"),  # 2x2 maps: unrolled, 4 taps per output
    ((33, 80, 2, 2, 104), 1, 1, 1, "in place"),  # more rows than a task's block (96)
    ((6, 32, 2, 2, 24), 1, 1, 1, None),     # 2x2 maps, few samples: columns
    ((32, 32, 2, 1, 24), 1, (2, 1), (2, 1), "in place"),  # dilated, padding beyond reach
    ((40, 32, 2, 2, 40), 2, 1, 1, "in place"),  # 2x2 -> 1x1 at stride 2: four taps live
    ((32, 64, 16, 16, 24), 2, 1, 1, "rearranged"),  # 16x16 -> 8x8 at stride 2, 64 channels
    ((32, 32, 16, 16, 24), 2, 1, 1, None),  # the same with 32 channels: columns
    ((3, 32, 9, 8, 20), 2, 2, 2, None),     # dilated
    ((3, 30, 8, 9, 20), (2, 1), ((2, 0), (0, 3)), 1, None),  # asymmetric padding and stride
])
def test_column_kernels_at_resnet_like_shapes_match_reference(nc, dtype, shape, stride, padding,
                                                              dilation, unrolled):
    from numbaconv.kernels.cpu.conv import use_columns
    from numbaconv.kernels.cpu.conv.unrolled import _plan_of, _weights_in_place, use_unrolled
    from numbaconv.shapes import conv2d_output_shape

    n, c_in, h, w, c_out = shape
    out_shape = conv2d_output_shape((n, c_in, h, w), c_out, 3, stride, padding, dilation)
    assert use_columns((c_out, c_in, 3, 3), 1, ref.pair(stride), out_shape[3])
    assert use_unrolled((n, c_in, h, w), (c_out, c_in, 3, 3), 1, out_shape) == bool(unrolled)
    if unrolled:
        (top, _), (left, _) = ref.conv_sides(padding, (3, 3), ref.pair(dilation))
        geometry = (*ref.pair(stride), *ref.pair(dilation), top, left)
        live, by_output, _, _ = _plan_of((n, c_in, h, w), (c_out, c_in, 3, 3), *out_shape[2:],
                                         geometry)
        assert _weights_in_place(by_output, live) == (unrolled == "in place")
    check_conv_against_reference(nc, dict(
        N=n, C=c_in, H=h, W=w, F=c_out, kernel=(3, 3), stride=stride, padding=padding,
        dilation=dilation, groups=1, bias=True, dtype=dtype, layouts=("C", "C", "C"), seed=3))


@pytest.mark.parametrize("where, value, position, args", NONFINITE_CASES,
                         ids=[f"{c[0]}={c[1]}@{c[2]}-{c[3]}" for c in NONFINITE_CASES])
def test_column_kernels_propagate_non_finite_values_like_reference(nc, where, value, position,
                                                                    args):
    x, w, rng = _nonfinite_arrays(where, value, position)
    with np.errstate(invalid="ignore"):
        expected = ref.conv2d(x, w, **args)
        gy = _nonfinite_grad(rng, expected.shape, where, value, position)
        egx, egw, egb = ref.conv2d_backward(gy, x, w, **args)
    with columns_for_every_size():
        y = nc.conv2d(x, w, **args)
        gx, gw, gb = nc.conv2d_backward(gy, x, w, **args)
    assert_non_finite_like_reference((y, gx, gw, gb), (expected, egx, egw, egb))


@pytest.mark.parametrize("side", [5, 3, 2], ids=["columns", "unrolled-3x3", "unrolled-2x2"])
def test_column_kernels_do_not_depend_on_the_thread_count(nc, side):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(40, 40, side, side)).astype(np.float32)
    w = rng.normal(size=(104, 40, 3, 3)).astype(np.float32)  # 2 row blocks of the products
    gy = rng.normal(size=(40, 104, side, side)).astype(np.float32)
    results = on_1_and_2_threads(lambda: (nc.conv2d(x, w, padding=1),)
                                 + nc.conv2d_backward(gy, x, w, padding=1))
    for one, two in zip(*results, strict=True):
        np.testing.assert_array_equal(one, two)


# --------------------------------------------------------------------------------------------
# the output-channel kernels (output channels along the vectors: stride 1, many channels)


def without_winograd():
    """No convolution takes Winograd's kernels (they serve 3x3 layers at stride 1 on maps of
    12x12 and more, which the output-channel kernels' tests below want for themselves)."""
    from numbaconv.kernels.cpu.conv import winograd

    return mock.patch.object(winograd, "MIN_OUT_MAP", 1 << 30)


@contextlib.contextmanager
def channel_vectors_for_every_size():
    """Route every stride-1 convolution with whole blocks of output channels through the
    output-channel kernels, and count the calls (``calls.count``)."""
    from numbaconv.kernels.cpu.conv import channels

    with mock.patch.multiple(channels, MIN_K=1, MIN_C_OUT=1), without_winograd(), \
            mock.patch.object(channels, "conv2d_forward_channels",
                              wraps=channels.conv2d_forward_channels) as calls:
        yield calls


@contextlib.contextmanager
def counting_channel_vector_calls():
    """The calls of the output-channel forward and weight-gradient kernels, counted (none of
    Winograd's)."""
    from numbaconv.kernels.cpu.conv import channels

    with without_winograd(), mock.patch.object(channels, "conv2d_forward_channels",
                                               wraps=channels.conv2d_forward_channels) as forward, \
            mock.patch.object(channels, "conv2d_weight_grad_channels",
                              wraps=channels.conv2d_weight_grad_channels) as weight_grad:
        yield forward, weight_grad


@given(conv_cases())
def test_channel_vector_kernels_match_reference(nc, case):
    """The randomised geometries at stride 1 with 32 input and output channels: the forward
    and the input gradient (a convolution of gy with 32 output channels) where the flat grid
    holds a tile."""
    with channel_vectors_for_every_size():
        check_conv_against_reference(nc, dict(case, groups=1, F=32, C=32, stride=1))


@given(conv_cases(max_hw=30))
def test_channel_vector_kernels_at_stride_2_match_reference(nc, case):
    """The randomised geometries at stride 2 with 32 output channels: rows of at least a
    tile (TILE_PIXELS outputs) take the forward by row tiles (the backward stays on the columns)."""
    assume(case["padding"] != "same")  # 'same' needs stride 1
    with channel_vectors_for_every_size() as calls:
        check_conv_against_reference(nc, dict(case, groups=1, F=32, C=3, stride=2))
    if calls.call_count:
        assert calls.call_args.args[8] == 2  # the kernel's stride


@given(conv_cases(max_hw=7), st.integers(3, 9))
def test_channel_vector_kernels_sum_many_samples_and_taps_like_the_reference(nc, case, n):
    """The weight gradient's sums carried across chunks of one sample each, a task per
    tile of taps (the last tile's taps repeated where K is not a whole number of tiles), 64
    output channels (two blocks of float32, four of float64)."""
    from numbaconv.kernels.cpu.conv import channels

    with channel_vectors_for_every_size(), mock.patch.multiple(
            channels, GY_SAMPLES_BYTES=1, TASKS=1 << 20):
        check_conv_against_reference(nc, dict(case, N=n, groups=1, F=64, C=5, stride=1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, padding, dilation, by_rows", [
    # (N, C_in, H, W, C_out): ResNet-18's stride-1 layers scaled down; the forward's tiles
    # along the flat grid, or along the rows where they compute fewer positions, for tiles
    # of 12 outputs (32 vector registers) and of 6 (16 registers): {TILE_PIXELS: by rows}
    ((3, 64, 6, 6, 64), 1, 1, {12: False, 6: True}),
    ((3, 64, 7, 7, 64), 1, 1, {12: False, 6: False}),
    ((2, 64, 12, 12, 128), 1, 1, {12: True, 6: True}),
    ((2, 96, 7, 5, 64), ((2, 0), (0, 3)), 1, {12: False, 6: True}),  # asymmetric padding
    ((2, 64, 9, 8, 64), 2, 2, {12: False, 6: False}),                # dilated
    ((2, 64, 10, 12, 64), 2, 2, {12: True, 6: True}),
])
def test_channel_vector_kernels_at_resnet_like_shapes_match_reference(nc, dtype, shape,
                                                                      padding, dilation,
                                                                      by_rows):
    from numbaconv.kernels.cpu.conv import channels

    by_rows = by_rows[channels.TILE_PIXELS]
    n, c_in, h, w, c_out = shape
    with counting_channel_vector_calls() as (forward, weight_grad):
        check_conv_against_reference(nc, dict(
            N=n, C=c_in, H=h, W=w, F=c_out, kernel=(3, 3), stride=1, padding=padding,
            dilation=dilation, groups=1, bias=True, dtype=dtype, layouts=("C", "C", "C"),
            seed=5))
    # at their real routing: the forward, the input gradient and the weight gradient
    assert (forward.call_count, weight_grad.call_count) == (2, 1)
    assert forward.call_args_list[0].args[9] == by_rows


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("padding", [1, ((2, 0), (0, 3))])
def test_channel_vector_forward_is_the_same_however_tasks_share_a_samples_blocks(nc, dtype,
                                                                                padding):
    """Each task pads its sample itself and computes one block of channels (a small batch)
    or all of them (a large one): the same bits either way, and the reference's values."""
    from numbaconv.kernels.cpu.conv import channels

    rng = np.random.default_rng(12)
    x = rng.normal(size=(3, 40, 13, 14)).astype(dtype)
    w = rng.normal(size=(128, 40, 3, 3)).astype(dtype)  # 4 float32 blocks, 8 float64
    b = rng.normal(size=128).astype(dtype)
    results = []
    for tasks in (1, 1 << 20):  # all of a sample's blocks in one task; a block per task
        with mock.patch.object(channels, "FORWARD_TASKS", tasks), \
                counting_channel_vector_calls() as (forward, _):
            results.append(nc.conv2d(x, w, b, padding=padding))
        per_task = forward.call_args.args[10]
        assert per_task == (128 // channels.block_channels(x.itemsize) if tasks == 1 else 1)
    np.testing.assert_array_equal(results[0], results[1])
    expected = ref.conv2d(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64),
                          padding=padding)
    assert_close(results[0], expected, dtype, "forward")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, kernel, padding, stride", [
    ((3, 1, 30, 29, 64), 7, 3, 2),   # a stem: 7x7/2, one input channel
    ((2, 16, 24, 25, 64), 3, 1, 2),  # ResNet's 3x3/2 onto 12x12
    ((2, 64, 2, 34, 64), 1, 0, 2),   # a 1x1/2 onto one row of 17 (too few for pointwise)
    ((2, 1, 67, 67, 96), 11, 0, 4),  # NiN's stem, 11x11/4 onto 15x15
    ((2, 3, 65, 62, 96), 11, 1, 4),  # AlexNet's, three input channels, a narrower row
])
def test_channel_vector_forward_at_strides_2_and_4_matches_reference(nc, dtype, shape, kernel,
                                                                     padding, stride):
    n, c_in, h, w, c_out = shape
    with counting_channel_vector_calls() as (forward, weight_grad):
        check_conv_against_reference(nc, dict(
            N=n, C=c_in, H=h, W=w, F=c_out, kernel=(kernel, kernel), stride=stride,
            padding=padding, dilation=1, groups=1, bias=True, dtype=dtype,
            layouts=("C", "C", "C"), seed=9))
    assert forward.call_count == 1 and forward.call_args.args[8] == stride
    assert weight_grad.call_count == 1 and weight_grad.call_args.args[4] == stride


# --------------------------------------------------------------------------------------------
# the pointwise kernels (1x1, no padding: a matrix product per sample)


@contextlib.contextmanager
def counting_pointwise_calls():
    """The calls of the pointwise forward (also the input gradient's) and weight-gradient
    kernels, counted."""
    from numbaconv.kernels.cpu.conv import pointwise

    with mock.patch.object(pointwise, "conv2d_forward_pointwise",
                           wraps=pointwise.conv2d_forward_pointwise) as forward, \
            mock.patch.object(pointwise, "conv2d_weight_grad_pointwise",
                              wraps=pointwise.conv2d_weight_grad_pointwise) as weight_grad:
        yield forward, weight_grad


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, stride", [
    ((3, 16, 7, 7, 20), 1),     # NiN's 1x1 layers on 7x7 maps, scaled down: 49 pixels
    ((2, 24, 10, 12, 40), 1),   # 120 pixels: a whole tile and a masked one
    ((2, 33, 15, 15, 17), 1),   # odd channel counts: the tiles' row and tap tails
    ((2, 32, 14, 13, 64), 2),   # ResNet's shortcut: every other row and column, 7x7
    ((2, 16, 23, 24, 16), 2),   # an odd height at stride 2: 12x12
    ((2, 16, 22, 23, 16), 3),   # stride 3: 8x8
])
def test_pointwise_kernels_match_reference(nc, dtype, shape, stride):
    n, c_in, h, w, c_out = shape
    with counting_pointwise_calls() as (forward, weight_grad):
        check_conv_against_reference(nc, dict(
            N=n, C=c_in, H=h, W=w, F=c_out, kernel=(1, 1), stride=stride, padding=0,
            dilation=1, groups=1, bias=True, dtype=dtype, layouts=("C", "C", "C"), seed=3))
    # the forward, the input gradient and the weight gradient
    assert (forward.call_count, weight_grad.call_count) == (2, 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, stride", [
    ((2, 33, 7, 7), 1),    # a channel tail and a pixel tail of the W x W squares
    ((3, 16, 15, 15), 1),
    ((2, 20, 9, 8), 2),    # sampled: 5 x 4 pixels
    ((1, 5, 3, 3), 3),     # fewer channels than a square: 1 pixel
])
def test_transpose_samples_is_numpys_transpose_of_the_sampled_pixels(dtype, shape, stride):
    from numbaconv.kernels.cpu.conv.pointwise import transpose_samples

    x = np.random.default_rng(5).normal(size=shape).astype(dtype)
    sampled = x[:, :, ::stride, ::stride]
    pixels = sampled.shape[2] * sampled.shape[3]
    out = np.full((shape[0], pixels, shape[1]), np.nan, dtype=dtype)
    transpose_samples(x, stride, out)
    np.testing.assert_array_equal(out, sampled.reshape(shape[0], shape[1], pixels)
                                  .transpose(0, 2, 1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stride", [1, 2])
def test_pointwise_kernels_match_torch(nc, torch, F, dtype, stride):
    rng = np.random.default_rng(16)
    x = rng.normal(size=(4, 48, 8 * stride, 8 * stride)).astype(dtype)
    w = rng.normal(size=(40, 48, 1, 1)).astype(dtype)
    b = rng.normal(size=40).astype(dtype)
    yt, xt, wt, bt = torch_conv2d(torch, F, x, w, b, stride, 0, 1, 1)
    with counting_pointwise_calls() as (forward, weight_grad):
        y = nc.conv2d(x, w, b, stride=stride)
        gy = rng.normal(size=y.shape).astype(dtype)
        gx, gw, gb = nc.conv2d_backward(gy, x, w, stride=stride)
    assert (forward.call_count, weight_grad.call_count) == (2, 1)
    yt.backward(torch.tensor(gy))
    assert_close(y, yt.detach().numpy().astype(np.float64), dtype, "forward vs torch")
    assert_close(gx, xt.grad.numpy().astype(np.float64), dtype, "grad_x vs torch")
    assert_close(gw, wt.grad.numpy().astype(np.float64), dtype, "grad_weight vs torch")
    assert_close(gb, bt.grad.numpy().astype(np.float64), dtype, "grad_bias vs torch")


@pytest.mark.parametrize("x_shape, weight_shape, groups, stride, padding, takes", [
    ((8, 64, 7, 7), (64, 64, 1, 1), 1, (1, 1), ((0, 0), (0, 0)), True),
    ((8, 64, 8, 8), (32, 64, 1, 1), 1, (1, 1), ((0, 0), (0, 0)), True),
    ((8, 64, 24, 24), (128, 64, 1, 1), 1, (2, 2), ((0, 0), (0, 0)), True),
    ((8, 64, 7, 7), (64, 64, 3, 3), 1, (1, 1), ((0, 0), (0, 0)), False),  # not 1x1
    ((8, 64, 7, 7), (64, 64, 1, 1), 1, (1, 1), ((1, 1), (1, 1)), False),  # padded
    ((8, 64, 7, 7), (64, 32, 1, 1), 2, (1, 1), ((0, 0), (0, 0)), False),  # grouped
    ((8, 64, 8, 8), (64, 64, 1, 1), 1, (1, 2), ((0, 0), (0, 0)), False),  # two strides
    ((8, 8, 7, 7), (64, 8, 1, 1), 1, (1, 1), ((0, 0), (0, 0)), False),    # few channels
    ((8, 64, 3, 3), (64, 64, 1, 1), 1, (1, 1), ((0, 0), (0, 0)), False),  # 9 pixels
    ((8, 64, 12, 12), (128, 64, 1, 1), 1, (2, 2), ((0, 0), (0, 0)), False),  # 36 pixels
])
def test_use_pointwise(x_shape, weight_shape, groups, stride, padding, takes):
    from numbaconv.kernels.cpu.conv import use_pointwise

    for itemsize in (4, 8):  # 49 pixels fill 49 of 64 lanes, or of 64 and 32
        assert use_pointwise(x_shape, weight_shape, groups, stride, padding, itemsize) == takes


@pytest.mark.parametrize("where", ["x", "w", "grad_y"])
@pytest.mark.parametrize("value", [np.inf, np.nan])
def test_pointwise_kernels_propagate_non_finite_values_like_reference(nc, where, value):
    rng = np.random.default_rng(14)
    x = rng.normal(size=(2, 16, 8, 8))
    w = rng.normal(size=(18, 16, 1, 1))
    if where == "x":
        x[1, 3, 5, 2] = value
    elif where == "w":
        w[4, 7, 0, 0] = value
    with counting_pointwise_calls() as (forward, _):
        y = nc.conv2d(x, w)
        gy = rng.normal(size=y.shape)
        if where == "grad_y":
            gy[0, 5, 2, 6] = value
        got = (y,) + tuple(nc.conv2d_backward(gy, x, w))
    assert forward.call_count == 2
    with np.errstate(invalid="ignore"):
        expected = (ref.conv2d(x, w),) + tuple(ref.conv2d_backward(gy, x, w))
    assert_non_finite_like_reference(got, expected)


@pytest.mark.parametrize("value", [np.inf, np.nan])
def test_channel_vector_kernels_at_stride_2_propagate_non_finite_values_like_reference(nc,
                                                                                       value):
    rng = np.random.default_rng(10)
    x = rng.normal(size=(2, 3, 26, 27))
    w = rng.normal(size=(32, 3, 3, 3))  # two float64 blocks, on the column side
    x[1, 2, 7, 11] = value
    with channel_vectors_for_every_size() as calls:
        y = nc.conv2d(x, w, stride=2, padding=1)
        gy = rng.normal(size=y.shape)
        gx, gw, gb = nc.conv2d_backward(gy, x, w, stride=2, padding=1)
    assert calls.call_count == 1
    with np.errstate(invalid="ignore"):
        expected = (ref.conv2d(x, w, stride=2, padding=1),) + tuple(
            ref.conv2d_backward(gy, x, w, stride=2, padding=1))
    assert_non_finite_like_reference((y, gx, gw, gb), expected)


@pytest.mark.parametrize("where, value, position, args",
                         [case for case in NONFINITE_CASES if "stride" not in case[3]],
                         ids=[f"{c[0]}={c[1]}@{c[2]}-{c[3]}" for c in NONFINITE_CASES
                              if "stride" not in c[3]])
def test_channel_vector_kernels_propagate_non_finite_values_like_reference(
        nc, where, value, position, args):
    x, w, rng = _nonfinite_arrays(where, value, position)
    x, w = np.tile(x, (1, 8, 1, 1)), np.tile(w, (8, 8, 1, 1))  # 16 channels: a float64 block
    with np.errstate(invalid="ignore"):
        expected = ref.conv2d(x, w, **args)
        gy = _nonfinite_grad(rng, expected.shape, where, value, position)
        egx, egw, egb = ref.conv2d_backward(gy, x, w, **args)
    with channel_vectors_for_every_size() as calls:
        y = nc.conv2d(x, w, **args)
        gx, gw, gb = nc.conv2d_backward(gy, x, w, **args)
    # the forward at least (a backward whose x or w holds inf or NaN takes the exact loops)
    assert calls.call_count >= 1
    assert_non_finite_like_reference((y, gx, gw, gb), (expected, egx, egw, egb))


def test_channel_vector_kernels_do_not_depend_on_the_thread_count(nc):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(5, 64, 8, 8)).astype(np.float32)
    w = rng.normal(size=(64, 64, 3, 3)).astype(np.float32)
    gy = rng.normal(size=(5, 64, 8, 8)).astype(np.float32)
    results = on_1_and_2_threads(lambda: nc.conv2d(x, w, padding=1).tobytes()
                                 + nc.conv2d_backward(gy, x, w, padding=1)[0].tobytes())
    assert results[0] == results[1]


@pytest.mark.parametrize("dtype", DTYPES)
def test_column_weight_gradient_splits_the_samples_of_a_one_channel_stem(nc, dtype):
    """A stem's one input channel is one block of the weight gradient's columns: its samples
    are split among tasks, their gradients added in order (like the reference, and the
    same on 1 and 2 threads)."""
    case = dict(N=20, C=1, H=40, W=40, F=32, kernel=(7, 7), stride=2, padding=3, dilation=1,
                groups=1, bias=True, dtype=dtype, layouts=("C", "C", "C"), seed=8)
    check_conv_against_reference(nc, case)
    x, w, _, rng = make_conv_arrays(case)
    gy = rng.normal(size=(20, 32, 20, 20)).astype(dtype)
    grads = on_1_and_2_threads(lambda: nc.conv2d_backward(gy, x, w, stride=2, padding=3)[1])
    np.testing.assert_array_equal(grads[0], grads[1])


# --------------------------------------------------------------------------------------------
# Winograd's F(2x2, 3x3) (3x3 layers at stride 1 on maps of 12x12 and more)


@contextlib.contextmanager
def counting_winograd_calls():
    """The calls of Winograd's forward kernel, counted (``calls.weight_grad``: its weight
    gradient's)."""
    from numbaconv.kernels.cpu.conv import winograd

    with mock.patch.object(winograd, "conv2d_forward_winograd",
                           wraps=winograd.conv2d_forward_winograd) as calls, \
            mock.patch.object(winograd, "conv2d_weight_grad_winograd",
                              wraps=winograd.conv2d_weight_grad_winograd) as weight_grad:
        calls.weight_grad = weight_grad
        yield calls


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, padding", [
    # (N, C_in, H, W, C_out): ResNet's 3x3 layers at 96x96 input, scaled down in batch
    ((2, 32, 24, 24, 64), 1),
    ((3, 64, 12, 12, 128), 1),               # the weight gradient's products too short
    ((2, 64, 14, 14, 32), 1),                # ... and long enough: 49 tiles a sample
    ((5, 40, 13, 12, 32), 1),                # odd rows: the last row of tiles half outside
    ((2, 33, 15, 14, 64), ((0, 2), (2, 1))),  # asymmetric padding, an odd input width
    ((17, 8, 14, 14, 64), 0),                # no padding; more samples than forward tasks
])
def test_winograd_forward_and_gradients_match_reference(nc, dtype, shape, padding):
    """The forward, the input gradient (a stride-1 3x3 convolution of gy with the transposed
    weights) and the weight gradient by Winograd's transforms, the reference's values within
    the tolerance of the direct kernels."""
    n, c_in, h, w, c_out = shape
    with counting_winograd_calls() as calls:
        check_conv_against_reference(nc, dict(
            N=n, C=c_in, H=h, W=w, F=c_out, kernel=(3, 3), stride=1, padding=padding,
            dilation=1, groups=1, bias=True, dtype=dtype, layouts=("C", "C", "C"), seed=6))
    # the forward; the input gradient where its channels fit too (c_in output channels)
    from numbaconv.kernels.cpu.conv.winograd import use_winograd, use_winograd_weight_grad

    itemsize = np.dtype(dtype).itemsize
    out_h, out_w = calls.call_args_list[0].args[7].shape[2:]
    assert use_winograd((c_out, c_in, 3, 3), 1, (1, 1), (1, 1), out_h, out_w, itemsize)
    assert calls.call_count == 1 + use_winograd((c_in, c_out, 3, 3), 1, (1, 1), (1, 1), h, w,
                                                itemsize)
    assert calls.weight_grad.call_count == use_winograd_weight_grad(
        (c_out, c_in, 3, 3), 1, (1, 1), (1, 1), out_h, out_w, itemsize)


@pytest.mark.parametrize("dtype", DTYPES)
def test_winograd_matches_torch(nc, torch, F, dtype):
    rng = np.random.default_rng(21)
    x = rng.normal(size=(3, 32, 14, 13)).astype(dtype)
    w = rng.normal(size=(32, 32, 3, 3)).astype(dtype)
    b = rng.normal(size=32).astype(dtype)
    with counting_winograd_calls() as calls:
        y = nc.conv2d(x, w, b, padding=1)
        yt, xt, wt, _ = torch_conv2d(torch, F, x, w, b, 1, 1, 1, 1)
        assert_close(y, yt.detach().numpy().astype(np.float64), dtype, "forward vs torch")
        gy = rng.normal(size=y.shape).astype(dtype)
        yt.backward(torch.tensor(gy))
        gx, gw, _ = nc.conv2d_backward(gy, x, w, padding=1)
    assert_close(gx, xt.grad.numpy().astype(np.float64), dtype, "grad_x vs torch")
    assert_close(gw, wt.grad.numpy().astype(np.float64), dtype, "grad_weight vs torch")
    assert (calls.call_count, calls.weight_grad.call_count) == (2, 1)


def test_winograd_weight_gradient_is_the_same_on_1_and_2_threads(nc):
    """Its tasks (groups of samples, WEIGHT_GRAD_TASKS of them whatever the threads) add
    their partial sums in order: the same bits on any number of threads."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=(19, 32, 14, 14)).astype(np.float32)
    w = rng.normal(size=(32, 32, 3, 3)).astype(np.float32)
    gy = rng.normal(size=(19, 32, 14, 14)).astype(np.float32)
    with counting_winograd_calls() as calls:
        grads = on_1_and_2_threads(lambda: nc.conv2d_backward(gy, x, w, padding=1)[1])
    assert calls.weight_grad.call_count == 2
    np.testing.assert_array_equal(grads[0], grads[1])


def test_winograd_groups_small_maps_samples_into_whole_tiles(nc):
    """On 12x13 outputs (42 tiles a sample) a task takes two samples (84 tiles, 7 of the
    products' tiles of 12 positions; with AVX2's 6, one sample): a last group with one
    sample, its other tiles zero, gives the reference's values."""
    from numbaconv.kernels.cpu.conv import winograd

    assert winograd.samples_per_task(12, 13) == (2 if winograd.TILE_PIXELS == 12 else 1)
    assert winograd.samples_per_task(24, 24) == 1
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, 32, 12, 13))
    w = rng.normal(size=(32, 32, 3, 3))
    with mock.patch.object(winograd, "samples_per_task", return_value=3), \
            counting_winograd_calls() as calls:
        y = nc.conv2d(x, w, padding=1)
    assert calls.call_args.args[5] == 3  # samples a task
    assert_close(y, ref.conv2d(x, w, padding=1), np.float64, "groups of three samples")


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("where", ["x", "weight", "grad_y"])
def test_winograd_leaves_non_finite_values_to_the_direct_kernels(nc, value, where):
    """The transforms would turn an inf into NaN and spread it to the tile's neighbours: where
    an output (or a weight's gradient) is not finite the direct kernels compute it, bit for
    bit as without Winograd (the results the value does not reach: within rounding)."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 32, 14, 14)).astype(np.float32)
    w = rng.normal(size=(32, 32, 3, 3)).astype(np.float32)
    gy = rng.normal(size=(2, 32, 14, 14)).astype(np.float32)
    {"x": x, "weight": w, "grad_y": gy}[where][1, 5, 2, 2] = value
    results = []
    for routing in (counting_winograd_calls, without_winograd):
        with routing():
            results.append([nc.conv2d(x, w, padding=1),
                            *nc.conv2d_backward(gy, x, w, padding=1)])
    for got, expected in zip(*results, strict=True):
        if np.isfinite(expected).all():
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
        else:
            np.testing.assert_array_equal(got, expected)
    assert not np.isfinite(np.concatenate([a.ravel() for a in results[0]])).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_winograd_weight_gradient_in_bands_of_rows_matches_reference(nc, dtype):
    """Where a sample's transformed input would outgrow MAX_SCRATCH_BYTES the weight
    gradient takes its rows of tiles a band at a time (here 3 rows of 7, the last band one
    row, an odd output height): the reference's values."""
    from numbaconv.kernels.cpu.conv import winograd

    itemsize = np.dtype(dtype).itemsize
    one_row = 16 * 32 * 7 * itemsize  # 32 input channels, 7 tiles a row (13 or 14 wide)
    with mock.patch.multiple(winograd, MAX_SCRATCH_BYTES=3 * one_row, MIN_WEIGHT_GRAD_TILES=1), \
            counting_winograd_calls() as calls:
        assert winograd.band_rows(32, 13, 14, itemsize) == 3
        check_conv_against_reference(nc, dict(
            N=3, C=32, H=13, W=14, F=32, kernel=(3, 3), stride=1, padding=1, dilation=1,
            groups=1, bias=True, dtype=dtype, layouts=("C", "C", "C"), seed=11))
    assert calls.weight_grad.call_count == 1
    assert calls.weight_grad.call_args.args[3] == 3  # rows a band


def test_winograd_weights_are_g_w_g_transposed():
    from numbaconv.kernels.cpu.conv import winograd
    from numbaconv.kernels.cpu.conv.channels import block_channels

    g = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
    rng = np.random.default_rng(5)
    w = rng.normal(size=(64, 3, 3, 3))
    size = block_channels(8)
    packed = np.empty((16, 64 // size, 3 * size))
    winograd.transform_weights(w, packed)
    expected = np.einsum("ik,ockl,jl->ijoc", g, w, g).reshape(16, 64 // size, size, 3)
    np.testing.assert_allclose(packed, expected.transpose(0, 1, 3, 2).reshape(packed.shape),
                               rtol=1e-15, atol=1e-15)


def test_use_winograd_takes_3x3_stride_1_layers_on_maps_of_12_and_more():
    from numbaconv.kernels.cpu.conv import winograd

    resnet = (64, 64, 3, 3)
    assert winograd.use_winograd(resnet, 1, (1, 1), (1, 1), 24, 24, 4)
    assert winograd.use_winograd((128, 128, 3, 3), 1, (1, 1), (1, 1), 12, 12, 4)
    # the weight gradient from 48 tiles a sample (with AVX-512's tiles of 12 positions)
    assert winograd.use_winograd_weight_grad(resnet, 1, (1, 1), (1, 1), 24, 24, 4)
    assert (winograd.use_winograd_weight_grad((128, 128, 3, 3), 1, (1, 1), (1, 1), 12, 12, 4)
            == (winograd.TILE_PIXELS == 6))
    assert not winograd.use_winograd(resnet, 1, (1, 1), (1, 1), 7, 7, 4)  # small: unrolled
    assert not winograd.use_winograd(resnet, 1, (2, 2), (1, 1), 24, 24, 4)
    assert not winograd.use_winograd(resnet, 1, (1, 1), (2, 2), 24, 24, 4)
    assert not winograd.use_winograd((64, 64, 5, 5), 1, (1, 1), (1, 1), 24, 24, 4)
    assert not winograd.use_winograd((64, 32, 3, 3), 2, (1, 1), (1, 1), 24, 24, 4)
    assert not winograd.use_winograd((40, 64, 3, 3), 1, (1, 1), (1, 1), 24, 24, 4)  # blocks
    # a sample's transformed input past MAX_SCRATCH_BYTES (64 channels on 56x56): the
    # forward's direct kernels; the weight gradient in bands of rows
    assert not winograd.use_winograd(resnet, 1, (1, 1), (1, 1), 56, 56, 4)
    assert winograd.use_winograd_weight_grad(resnet, 1, (1, 1), (1, 1), 56, 56, 4)
    # a task's partial sums past MAX_PARTIAL_BYTES (256 channels)
    assert not winograd.use_winograd_weight_grad((256, 256, 3, 3), 1, (1, 1), (1, 1), 14, 14,
                                                 4)
