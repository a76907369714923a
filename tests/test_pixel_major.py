"""The pixel-major layout of CPU activations (numbaconv.kernels.cpu.layout): the moves between
it and NCHW, the unrolled convolutions that compute on it, and every functional operation a
network runs, which take either layout and give the same values (batch norm's sums run in
another order there: to rounding)."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
from support import on_1_and_2_threads

from numbaconv import functional as F
from numbaconv.kernels.cpu import conv as cpu_conv
from numbaconv.kernels.cpu import layout

DTYPES = (np.float32, np.float64)


def pixel_major(array):
    """A pixel-major copy of the NCHW (N, C, H, W) array."""
    assert array.flags.c_contiguous
    return layout.pixel_major(array)


def bits(array):
    return np.ascontiguousarray(array).view(np.uint8)


def assert_near(got, want):
    """got within float32 rounding of the float64 ``want``, relative to its largest value
    (a weight gradient sums thousands of products)."""
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())


def data(shape, seed, dtype=np.float32, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


# ------------------------------------------------------------------------------ the layouts

def test_layouts_are_told_apart():
    x = data((3, 4, 5, 6), 0)
    assert not layout.is_pixel_major(x)
    pm = pixel_major(x)
    assert layout.is_pixel_major(pm) and pm.shape == x.shape
    np.testing.assert_array_equal(pm, x)
    assert pm.strides == (4, 3 * 4, 6 * 4 * 3 * 4, 4 * 3 * 4)
    assert not layout.is_pixel_major(pm[:, 1:3])  # a channel slice: neither layout
    one = data((1, 4, 1, 1), 1)  # a sample on a 1x1 map is both: NCHW
    assert not layout.is_pixel_major(pixel_major(one))
    assert not layout.is_pixel_major(x.reshape(3, 4, 30))  # 4-D arrays only


@pytest.mark.parametrize("dtype", DTYPES)
# (33, 20, ...): samples and channels past whole squares (of 16 float32 or 8 float64 lanes
# with AVX-512, 8 or 4 without)
@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (64, 32, 1, 1), (2, 1, 7, 3), (0, 3, 2, 2),
                                   (33, 20, 3, 2)])
def test_moves_between_layouts_keep_the_values(dtype, shape):
    x = data(shape, 2, dtype)
    pm = pixel_major(x)
    n, c, h, w = shape
    matrix = layout.to_pixel_matrix(x)
    assert matrix.flags.c_contiguous and matrix.shape == (h * w, c, n)
    np.testing.assert_array_equal(matrix, x.transpose(2, 3, 1, 0).reshape(h * w, c, n))
    for source in (x, pm):
        back = layout.nchw(source)
        assert back.flags.c_contiguous
        np.testing.assert_array_equal(back, x)
        rows = layout.pixel_rows(source)
        np.testing.assert_array_equal(rows, x.transpose(2, 3, 0, 1).reshape(h * w, n, c))
        for like in (x, pm):
            moved = layout.same_layout(source, like)
            np.testing.assert_array_equal(moved, x)
            assert layout.is_pixel_major(moved) == layout.is_pixel_major(like) or n * c == 0
        flat = layout.memory_flat(source)
        np.testing.assert_array_equal(layout.shaped_like(flat.copy(), source), x)
        np.testing.assert_array_equal(layout.like(layout.channel_matrix(source).copy(),
                                                  source), x)


@pytest.mark.parametrize("shape", [(5, 3, 4), (130, 3, 33), (64, 2, 16), (1, 5, 17), (65, 1, 1)])
def test_a_swap_moves_every_value_across_its_tiles_edges(shape):
    a = data(shape, 3)
    np.testing.assert_array_equal(layout.swapped(a), a.transpose(2, 1, 0))


# ------------------------------------------------------------------------------ convolutions

# small maps at batch 32 (the unrolled kernels'), a 1x1 layer (the pointwise kernels') and a
# 12x12 map (the output-channel kernels')
CONVS = [((32, 64, 7, 7), (64, 64, 3, 3), 1, 1), ((32, 64, 7, 7), (128, 64, 3, 3), 2, 1),
         ((32, 128, 2, 2), (64, 128, 3, 3), 2, 1), ((32, 64, 4, 4), (64, 64, 1, 1), 2, 0),
         ((32, 32, 12, 12), (64, 32, 3, 3), 1, 1)]


@pytest.mark.parametrize("x_shape,w_shape,stride,padding", CONVS)
def test_convolutions_take_either_layout(x_shape, w_shape, stride, padding):
    """The same bits from NCHW and pixel-major x and grad_y; the unrolled kernels' outputs
    pixel-major, against the float64 reference."""
    x, w, b = data(x_shape, 5), data(w_shape, 6, scale=0.05), data(w_shape[:1], 7)
    args = dict(stride=stride, padding=padding)
    y = F.conv2d(x, w, b, **args)
    unrolled = cpu_conv.use_unrolled(x_shape, w_shape, 1, y.shape)
    assert layout.is_pixel_major(y) == unrolled
    assert_near(y, ref.conv2d(x.astype(np.float64), w.astype(np.float64),
                              b.astype(np.float64), **args))
    np.testing.assert_array_equal(bits(F.conv2d(pixel_major(x), w, b, **args)), bits(y))
    gy = data(y.shape, 8)
    grads = F.conv2d_backward(gy, x, w, **args)
    assert grads[0].flags.c_contiguous  # grad_x in x's layout
    assert layout.is_pixel_major(F.conv2d_backward(gy, pixel_major(x), w, **args)[0]) == unrolled
    expected = ref.conv2d_backward(gy.astype(np.float64), x.astype(np.float64),
                                   w.astype(np.float64), **args)
    for got, want in zip(grads, expected):
        assert_near(got, want)
    for gy_in, x_in in ((pixel_major(gy), x), (gy, pixel_major(x)),
                        (pixel_major(gy), pixel_major(x))):
        for got, want in zip(F.conv2d_backward(gy_in, x_in, w, **args), grads):
            np.testing.assert_array_equal(bits(got), bits(want))


def test_the_unrolled_kernels_do_not_depend_on_the_thread_count():
    x, w, b = data((32, 64, 4, 4), 9), data((64, 64, 3, 3), 10, scale=0.05), data((64,), 11)
    gy = pixel_major(data((32, 64, 4, 4), 12))
    first, second = on_1_and_2_threads(
        lambda: (F.conv2d(pixel_major(x), w, b, padding=1),)
        + F.conv2d_backward(gy, pixel_major(x), w, padding=1))
    for a, b_ in zip(first, second):
        np.testing.assert_array_equal(bits(a), bits(b_))


# ------------------------------------------------------------------------------ the others

@pytest.mark.parametrize("shape", [(32, 64, 7, 7), (64, 512, 1, 1), (64, 256, 2, 2)])
@pytest.mark.parametrize("relu", [False, True])
def test_batch_norm_keeps_the_layout(shape, relu):
    x, gy = data(shape, 13), data(shape, 14)
    weight, bias = 1 + data(shape[1:2], 15, scale=0.1), data(shape[1:2], 16, scale=0.1)
    norm = F.batch_norm_relu if relu else F.batch_norm
    outputs = {}
    for name, x_in, gy_in in (("nchw", x, gy), ("pm", pixel_major(x), pixel_major(gy))):
        mean, var = np.zeros(shape[1], np.float32), np.ones(shape[1], np.float32)
        y, save_mean, save_invstd = norm(x_in, mean, var, weight, bias, training=True)
        grads = F.batch_norm_backward(gy_in, x_in, save_mean, save_invstd, weight)
        assert layout.is_pixel_major(y) == layout.is_pixel_major(grads[0]) == (name == "pm")
        fixed, _, _ = norm(x_in, mean, var, weight, bias, training=False)
        assert layout.is_pixel_major(fixed) == (name == "pm")
        outputs[name] = (y, fixed, mean, var) + tuple(grads)
    for got, want in zip(outputs["pm"], outputs["nchw"]):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise_operations_keep_the_layout_and_numpys_bits(dtype):
    x, g = data((32, 64, 3, 3), 17, dtype), data((32, 64, 3, 3), 18, dtype)
    px, pg = pixel_major(x), pixel_major(g)
    y, s = F.relu(px), F.sigmoid(px)
    assert layout.is_pixel_major(y) and layout.is_pixel_major(s)
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    np.testing.assert_array_equal(bits(s), bits(F.sigmoid(x)))
    for grad in (g, pg):  # the gradient in either layout: the result in y's
        gx = F.relu_backward(grad, y)
        assert layout.is_pixel_major(gx)
        np.testing.assert_array_equal(bits(gx), bits(F.relu_backward(g, F.relu(x))))
        np.testing.assert_array_equal(bits(F.sigmoid_backward(grad, s)),
                                      bits(F.sigmoid_backward(g, F.sigmoid(x))))
    for a, b in ((px, g), (x, pg), (px, pg)):  # the sum pixel-major where either is
        total = F.add(a, b)
        assert layout.is_pixel_major(total)
        np.testing.assert_array_equal(bits(total), bits(x + g))
    small = data((2, 3, 2, 2), 19, dtype)  # below a chunk: NumPy's sum, the layout kept
    assert layout.is_pixel_major(F.add(small, pixel_major(small)))


def test_pools_and_concatenations_take_either_layout():
    x = data((32, 16, 6, 6), 20)
    px = pixel_major(x)
    for pool in (F.max_pool2d, F.avg_pool2d):
        y = pool(px, 2, 2)
        np.testing.assert_array_equal(y, pool(x, 2, 2))
        np.testing.assert_array_equal(F.adaptive_avg_pool2d(px, 1), F.adaptive_avg_pool2d(x, 1))
    gy = pixel_major(data((32, 16, 3, 3), 21))
    _, indices = F.max_pool2d(x, 2, 2, return_indices=True)
    np.testing.assert_array_equal(F.max_pool2d_backward(gy, indices, x.shape),
                                  F.max_pool2d_backward(np.ascontiguousarray(gy), indices,
                                                        x.shape))
    np.testing.assert_array_equal(F.avg_pool2d_backward(gy, x.shape, 2, 2),
                                  F.avg_pool2d_backward(np.ascontiguousarray(gy), x.shape, 2, 2))
    other = data((32, 8, 6, 6), 22)
    joined = F.concat_channels([px, pixel_major(other)])
    assert layout.is_pixel_major(joined)
    np.testing.assert_array_equal(joined, np.concatenate([x, other], axis=1))
    np.testing.assert_array_equal(F.concat_channels([px, other]),
                                  np.concatenate([x, other], axis=1))
    parts = F.split_channels(joined, [16, 8])
    assert all(layout.is_pixel_major(part) for part in parts)
    np.testing.assert_array_equal(parts[0], x)
    np.testing.assert_array_equal(parts[1], other)


@pytest.mark.parametrize("activation,pool", [("relu", "max"), ("sigmoid", "avg")])
def test_a_fused_stage_on_a_small_map_pools_the_convolutions_output(activation, pool):
    """VGG's and NiN's convolution, activation and 2x2 pool on small maps: the convolution's
    output (pixel-major from the unrolled kernels) pooled as the three layers would."""
    x, w, b = data((32, 64, 4, 4), 23), data((64, 64, 3, 3), 24, scale=0.05), data((64,), 25)
    z, y = F.conv2d_act_pool(pixel_major(x), w, b, padding=1, activation=activation, pool=pool)
    act = F.relu if activation == "relu" else F.sigmoid
    pooled = (F.max_pool2d if pool == "max" else F.avg_pool2d)(act(F.conv2d(x, w, b, padding=1)),
                                                             2, 2)
    np.testing.assert_array_equal(bits(y), bits(pooled))
    gy = data(y.shape, 26)
    grads = F.conv2d_act_pool_backward(gy, pixel_major(x), z, w, padding=1,
                                       activation=activation, pool=pool)
    unfused_z = act(F.conv2d(x, w, b, padding=1))  # pixel-major: the unrolled kernels'
    assert layout.is_pixel_major(unfused_z)
    for got, want in zip(F.conv2d_act_pool_backward(gy, x, unfused_z, w, padding=1,
                                                    activation=activation, pool=pool), grads):
        np.testing.assert_array_equal(bits(got), bits(want))
