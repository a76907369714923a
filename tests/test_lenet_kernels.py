"""The kernels written for LeNet's shapes, against the float64 reference and, where they
replaced others, against those (bit for bit): the six-row tiles of the padded-width
convolution (6 output channels) and the plain product's (the dense layers', among others),
the first stage's one-pass backward (activation, pool and weight gradient) and the fused
forward on the interleaved-samples layout (conv2)."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
from support import assert_close, on_1_and_2_threads, tol

from numbaconv.kernels.cpu.conv import tiles
from numbaconv.kernels.cpu.conv.common import _taps
from numbaconv.kernels.cpu.conv.flat import weight_grad_from_rows
from numbaconv.kernels.cpu.conv.lanes import use_lanes

DTYPES = (np.float32, np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m_size", [6, 7, 9, 10, 12, 13])
@pytest.mark.parametrize("p_size", [1, 15, 64, 100, 892])
def test_six_row_product_equals_the_four_row_one(dtype, m_size, p_size):
    rng = np.random.default_rng(m_size * 1000 + p_size)
    chan, offset = _taps(2, 3, 5, 1, 2, 37)  # 2 channels, 30 taps, dilated columns
    a = rng.normal(size=(m_size, chan.shape[0])).astype(dtype)
    src = rng.normal(size=(2, p_size + 3 + offset[-1])).astype(dtype)
    start = rng.normal(size=(m_size, p_size + 5)).astype(dtype)
    c4, c6 = start.copy(), start.copy()
    tiles._shifted_matmul_acc(a, src, chan, offset, np.int64(3), c4, np.int64(2),
                              np.int64(p_size))
    tiles._shifted_matmul6_acc(a, src, chan, offset, np.int64(3), c6, np.int64(2),
                               np.int64(p_size))
    np.testing.assert_array_equal(c6, c4)
    taps = np.stack([src[chan[k], 3 + offset[k]:3 + offset[k] + p_size]
                     for k in range(chan.shape[0])]).astype(np.float64)
    expected = start.astype(np.float64)
    expected[:, 2:2 + p_size] += a.astype(np.float64) @ taps
    assert_close(c6, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m_size", [6, 7, 11, 13])
@pytest.mark.parametrize("k_size", [1, 4, 6, 25])
def test_six_row_lane_sums_equal_the_four_row_ones(dtype, m_size, k_size):
    rng = np.random.default_rng(m_size * 100 + k_size)
    w = tiles.simd.VECTOR_BYTES // np.dtype(dtype).itemsize
    n_rows, length, a_step, src_step = 5, 23, 23, 30
    chan, offset = _taps(1, 1, k_size, 1, 1, src_step)
    a = rng.normal(size=(m_size, n_rows * a_step + 2)).astype(dtype)
    src = rng.normal(size=(1, n_rows * src_step + k_size + 4)).astype(dtype)
    start = rng.normal(size=(m_size, k_size * w)).astype(dtype)
    acc4, acc6 = start.copy(), start.copy()
    args = (np.int64(2), np.int64(1), np.int64(n_rows), np.int64(a_step), np.int64(src_step),
            np.int64(length))
    tiles._abt_lanes_acc(a, src, chan, offset, acc4, *args)
    tiles._abt6_lanes_acc(a, src, chan, offset, acc6, *args)
    np.testing.assert_array_equal(acc6, acc4)
    # and the lane sums add up to their start plus the products (float64)
    got = acc6.astype(np.float64).reshape(m_size, k_size, w).sum(axis=2)
    expected = start.astype(np.float64).reshape(m_size, k_size, w).sum(axis=2)
    for r in range(n_rows):
        rows = a[:, 2 + r * a_step:2 + r * a_step + length].astype(np.float64)
        taps = np.stack([src[0, 1 + r * src_step + offset[k]:1 + r * src_step + offset[k]
                             + length] for k in range(k_size)]).astype(np.float64)
        expected += rows @ taps.T
    np.testing.assert_allclose(got, expected, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, kernel, padding", [
    # (N, C_in, H, W, C_out)
    ((3, 1, 28, 28, 6), (5, 5), 2),  # LeNet's first layer
    ((2, 1, 13, 31, 7), (3, 5), 1),
    ((2, 2, 9, 23, 10), (3, 4), (1, 0)),
    ((5, 1, 7, 19, 13), (2, 3), 0),
])
def test_convolutions_on_six_row_tiles_match_reference(nc, dtype, shape, kernel, padding):
    n, c_in, h, w, c_out = shape
    rng = np.random.default_rng(11)
    x = rng.normal(size=(n, c_in, h, w)).astype(dtype)
    weight = rng.normal(size=(c_out, c_in) + kernel).astype(dtype)
    b = rng.normal(size=c_out).astype(dtype)
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    # the padded-width kernels, and the weight gradient from gy's rows
    assert not use_lanes((n, c_in, h + 2 * ph, w + 2 * pw), x.itemsize, 1, 1, w)
    assert weight_grad_from_rows(weight.shape, 1, 1)
    y = nc.conv2d(x, weight, b, padding=padding)
    assert_close(y, ref.conv2d(x, weight, b, padding=padding), dtype, "forward")
    gy = rng.normal(size=y.shape).astype(dtype)
    _, gw, gb = nc.conv2d_backward(gy, x, weight, padding=padding, need_input_grad=False)
    _, egw, egb = ref.conv2d_backward(gy, x, weight, padding=padding)
    assert_close(gw, egw, dtype, "grad_weight")
    assert_close(gb, egb, dtype, "grad_bias")


def test_six_row_kernels_do_not_depend_on_the_thread_count(nc):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(37, 1, 28, 28)).astype(np.float32)
    w = rng.normal(size=(6, 1, 5, 5)).astype(np.float32)
    gy = rng.normal(size=(37, 6, 28, 28)).astype(np.float32)

    def compute():
        z, y = nc.conv2d_act_pool(x, w, padding=2, activation="sigmoid", pool="avg")
        return ((nc.conv2d(x, w, padding=2), z, y)
                + nc.conv2d_backward(gy, x, w, padding=2, need_input_grad=False)[1:]
                + nc.conv2d_act_pool_backward(gy[:, :, ::2, ::2], x, z, w, padding=2,
                                              activation="sigmoid", pool="avg",
                                              need_input_grad=False)[1:])

    results = on_1_and_2_threads(compute)
    for one, two in zip(*results, strict=True):
        np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m_size", [0, 1, 2, 4, 5, 6, 8, 9, 10, 11, 13, 64])
@pytest.mark.parametrize("k_size, p_size", [(1, 1), (7, 10), (130, 64), (65, 120), (3, 130),
                                            (0, 5), (9, 0)])
def test_plain_product_matches_the_reference(dtype, m_size, k_size, p_size):
    # six-row tiles and pairs (a lone last row computed twice); whole tiles of pixels and a
    # last one computed in scratch; several blocks of taps; the columns past p_size untouched
    rng = np.random.default_rng(m_size * 7 + k_size)
    a = rng.normal(size=(m_size, k_size)).astype(dtype)
    b = rng.normal(size=(k_size, p_size + 3)).astype(dtype)
    start = rng.normal(size=(m_size, p_size + 3)).astype(dtype)
    c = start.copy()
    tiles._gemm_acc(a, b, c, np.int64(p_size), 64)
    expected = start.astype(np.float64)
    expected[:, :p_size] += a.astype(np.float64) @ b[:, :p_size].astype(np.float64)
    assert_close(c, expected, dtype)
    np.testing.assert_array_equal(c[:, p_size:], start[:, p_size:])


def test_plain_product_takes_a_strided_a_and_a_slice_of_c():
    # as the unrolled kernels call it: a tap's weights read in place (a transposed view), c a
    # block of rows of one group's result; the same sums as on contiguous copies
    rng = np.random.default_rng(3)
    w = rng.normal(size=(100, 70, 9)).astype(np.float32)  # (C_out, C_in, taps)
    a = np.transpose(w, (2, 0, 1))[4, 10:100]  # tap 4's (90, 70), rows 9 * 4 bytes apart
    b = rng.normal(size=(70, 40)).astype(np.float32)
    groups = rng.normal(size=(3, 100, 40)).astype(np.float32)
    c_contiguous = groups[1, 10:100].copy()
    tiles._gemm_acc(np.ascontiguousarray(a), b, c_contiguous, np.int64(40), 64)
    before = groups.copy()
    tiles._gemm_acc(a, b, groups[1, 10:100], np.int64(40), 64)
    np.testing.assert_array_equal(groups[1, 10:100], c_contiguous)
    untouched = np.ones(groups.shape, dtype=bool)
    untouched[1, 10:100] = False
    np.testing.assert_array_equal(groups[untouched], before[untouched])


@pytest.mark.parametrize("m_size", [1, 5, 84, 120, 256, 257])
def test_matmul_does_not_depend_on_the_thread_count(m_size):
    from numbaconv.kernels.cpu.dense import matmul_acc

    rng = np.random.default_rng(m_size)
    a = rng.normal(size=(m_size, 70)).astype(np.float32)
    b = rng.normal(size=(70, 120)).astype(np.float32)

    def product():
        c = np.ones((m_size, 120), dtype=np.float32)
        matmul_acc(a, b, c)
        return c

    results = on_1_and_2_threads(product)
    np.testing.assert_array_equal(results[0], results[1])
    assert_close(results[0], 1 + a.astype(np.float64) @ b, np.float32)


@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
@pytest.mark.parametrize("pool", ["avg", "max"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size, special", [((28, 28), None), ((13, 15), None),
                                           ((12, 12), np.inf), ((12, 12), np.nan)])
def test_one_pass_first_stage_backward_equals_the_unfused_one(nc, activation, pool, dtype, size,
                                                               special):
    """A first stage's backward (no input gradient) in one pass
    (conv_act_pool.conv_act_pool_weight_grad): the activation + pool backward and the weight
    gradient bit for bit; with inf or NaN in x the unfused exact path (equal as well)."""
    from numbaconv.kernels.cpu import activation as act
    from numbaconv.kernels.cpu import conv_act_pool

    rng = np.random.default_rng(2)
    x = rng.normal(size=(37, 1) + size).astype(dtype)
    if special is not None:
        x[3, 0, 4, 5] = special
    w = rng.normal(size=(6, 1, 5, 5)).astype(dtype) * 0.3
    b = rng.normal(size=6).astype(dtype)
    z, y = nc.conv2d_act_pool(x, w, b, padding=2, activation=activation, pool=pool)
    assert conv_act_pool.weight_grad_applies((37, 1, size[0] + 4, size[1] + 4), w.shape,
                                             x.itemsize, (1, 1), 1, *z.shape[2:])
    g = rng.normal(size=y.shape).astype(dtype)
    grad_w, grad_b = np.empty_like(w), np.empty_like(b)
    got = nc.conv2d_act_pool_backward(g, x, z, w, padding=2, activation=activation, pool=pool,
                                      need_input_grad=False, grad_weight=grad_w,
                                      grad_bias=grad_b)
    assert got[0] is None and got[1] is grad_w and got[2] is grad_b
    codes = (act.SIGMOID if activation == "sigmoid" else act.RELU,
             act.AVG if pool == "avg" else act.MAX)
    grad_z = act.act_pool_backward(g, z, *codes)
    _, expected_w, expected_b = nc.conv2d_backward(grad_z, x, w, padding=2,
                                                   need_input_grad=False)
    np.testing.assert_array_equal(grad_w, expected_w)
    np.testing.assert_array_equal(grad_b, expected_b)
    if special is None:
        _, ref_w, ref_b = ref.conv2d_backward(grad_z, x, w, padding=2)
        assert_close(grad_w, ref_w, dtype, "grad_weight")
        assert_close(grad_b, ref_b, dtype, "grad_bias")


@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
@pytest.mark.parametrize("pool", ["avg", "max"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("groups, dilation, special", [(1, 1, None), (2, (2, 1), None),
                                                       (1, 1, np.nan), (1, 1, np.inf)])
def test_one_pass_forward_on_interleaved_samples_equals_the_unfused_one(
        nc, activation, pool, dtype, groups, dilation, special):
    """The fused stage's forward on the interleaved-samples layout (LeNet's conv2: 14 x 14
    maps) equals conv2d then the activation + pool pass bit for bit, NaN and inf as they
    propagate there (50 samples: a second block with 14 empty lanes)."""
    from numbaconv.kernels.cpu import activation as act
    from numbaconv.kernels.cpu.conv.lanes import use_lanes

    rng = np.random.default_rng(8)
    x = rng.normal(size=(50, 6, 14, 14)).astype(dtype)
    if special is not None:
        x[1, 2, 3:5, 4] = special
        x[45, 0, 7, 7] = -special
    w = rng.normal(size=(16, 6 // groups, 5, 5)).astype(dtype) * 0.2
    b = rng.normal(size=16).astype(dtype)
    z, y = nc.conv2d_act_pool(x, w, b, padding=(1, 0), dilation=dilation, groups=groups,
                              activation=activation, pool=pool)
    assert use_lanes((50, 6, 16, 14), x.itemsize, 1, groups, z.shape[3])
    expected_z = nc.conv2d(x, w, b, padding=(1, 0), dilation=dilation, groups=groups)
    codes = (act.SIGMOID if activation == "sigmoid" else act.RELU,
             act.AVG if pool == "avg" else act.MAX)
    expected_y = act.act_pool_forward(expected_z, *codes)  # activates expected_z in place
    np.testing.assert_array_equal(z, expected_z)
    np.testing.assert_array_equal(y, expected_y)


def test_one_pass_forward_on_interleaved_samples_only_where_the_unfused_one_takes_them():
    """LeNet's conv2 (6 -> 16, 14 x 14) takes the fused forward on the interleaved layout;
    many channels on small maps (64 -> 64, 3 x 3 on 6 x 6: the column kernels unfused) stay
    unfused."""
    from numbaconv.kernels.cpu import conv
    from numbaconv.kernels.cpu.conv_act_pool import applies

    assert conv.use_lanes((256, 6, 14, 14), 4, 1, 1, 10)
    assert applies((256, 6, 14, 14), (256, 6, 14, 14), (16, 6, 5, 5), 4, (1, 1), 1, 10, 10)
    assert conv.use_lanes((64, 64, 8, 8), 4, 1, 1, 6)
    assert conv.use_column_side((64, 64, 6, 6), (64, 64, 3, 3), 1, (1, 1), (64, 64, 6, 6))
    assert not applies((64, 64, 6, 6), (64, 64, 8, 8), (64, 64, 3, 3), 4, (1, 1), 1, 6, 6)
