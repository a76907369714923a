"""The CPU kernels' paths chosen by size and shape, each against a NumPy reference: ReLU and
add (serial below one chunk and on one thread, parallel above), batch norm (short rows summed
by columns, long rows per channel; a plain loop for small inputs, parallel tasks for larger
ones) and the 3x3 stride-2 max pool of ResNet's stem. Results must not depend on the number
of threads."""

from __future__ import annotations

import numba
import numpy as np
import pytest
import reference as ref

from numbaconv import functional as F
from numbaconv.kernels.cpu import buffers, elementwise, norm
from numbaconv.threads import set_threads

DTYPES = (np.float32, np.float64)
# both sides of the serial/parallel threshold
SIZES = (1000, elementwise.CHUNK, 3 * elementwise.CHUNK + 5)
THREADS = sorted({1, numba.config.NUMBA_NUM_THREADS})


@pytest.fixture(params=THREADS)
def threads(request):
    before = numba.get_num_threads()
    set_threads(request.param)
    yield request.param
    set_threads(before)


def bits(array):
    """The array's bytes: equal bits, signed zeros and NaNs included."""
    return np.ascontiguousarray(array).view(np.uint8)


def special_values(size, dtype, seed):
    """Normal values with zeros of both signs, NaNs and infinities sprinkled in."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=size)
    picks = rng.random(size)
    x[picks < 0.05] = 0.0
    x[(picks >= 0.05) & (picks < 0.1)] = -0.0
    x[(picks >= 0.1) & (picks < 0.12)] = np.nan
    x[(picks >= 0.12) & (picks < 0.14)] = np.inf
    x[(picks >= 0.14) & (picks < 0.16)] = -np.inf
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", SIZES)
def test_relu_and_add_are_numpys_bit_for_bit(threads, dtype, size):
    x = special_values(size, dtype, 1).reshape(size, 1)
    g = special_values(size, dtype, 2).reshape(size, 1)
    y = F.relu(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    np.testing.assert_array_equal(bits(y), bits(np.maximum(x, 0)))
    with np.errstate(invalid="ignore"):  # inf * 0 and inf - inf: NaN, as in the kernels
        np.testing.assert_array_equal(bits(F.relu_backward(g, y)),
                                      bits(np.multiply(g, ~(y <= 0), dtype=dtype)))
        np.testing.assert_array_equal(bits(F.add(x, g)), bits(np.add(x, g)))


@pytest.mark.parametrize("size", [3 * elementwise.CHUNK + 5, buffers.HUGE_PAGE_BYTES // 4])
def test_outputs_above_one_chunk_start_on_a_cache_line(size):
    x = special_values(size, np.float32, 4)
    outputs = [F.relu(x), F.relu_backward(x, x)]
    if not elementwise.serial(size):  # (serially the sum is NumPy's own)
        outputs.append(F.add(x, x))
    for y in outputs:
        assert y.ctypes.data % buffers.LINE == 0 and y.flags.c_contiguous
        assert y.shape == x.shape


def test_elementwise_functions_take_non_contiguous_arrays():
    x = special_values(4 * elementwise.CHUNK, np.float32, 3).reshape(-1, 4)[:, ::2]
    np.testing.assert_array_equal(bits(F.relu(x)), bits(np.maximum(x, 0)))
    np.testing.assert_array_equal(bits(F.add(x, x.T.T)), bits(x + x))


# --------------------------------------------------------------------------- batch norm

# (N, C, *spatial): long rows (L >= norm.ROW_LENGTH) and short ones (L = 9, 4, 1), each small
# enough for the plain loop and large enough for parallel tasks
BN_SHAPES = [(4, 3, 12, 12), (16, 8, 12, 12), (4, 5, 3, 3), (64, 40, 3, 3), (6, 7, 2, 2),
             (64, 130, 2, 2), (8, 9), (96, 700)]


def reference_batch_norm(x, weight, bias, eps, grad_y):
    """y, mean, var, invstd and the gradients in float64, by the formulas of
    numbaconv.kernels.cpu.norm."""
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    x, g = x.astype(np.float64), grad_y.astype(np.float64)
    mean = x.mean(axis=axes)
    var = ((x - mean.reshape(shape)) ** 2).mean(axis=axes)
    invstd = 1 / np.sqrt(var + eps)
    xhat = (x - mean.reshape(shape)) * invstd.reshape(shape)
    y = xhat * weight.reshape(shape) + bias.reshape(shape)
    count = x.size // x.shape[1]
    grad_bias = g.sum(axis=axes)
    grad_weight = (g * xhat).sum(axis=axes)
    grad_x = (weight * invstd).reshape(shape) * (
        g - (grad_bias / count).reshape(shape) - xhat * (grad_weight / count).reshape(shape))
    return y, mean, var, invstd, grad_x, grad_weight, grad_bias


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batch_norm_paths_match_the_float64_reference(threads, dtype, shape):
    rng = np.random.default_rng(4)
    channels = shape[1]
    x = (rng.normal(size=shape) * 3 + 5).astype(dtype)
    grad_y = rng.normal(size=shape).astype(dtype)
    weight = rng.normal(1, 0.5, channels).astype(dtype)
    bias = rng.normal(0, 0.5, channels).astype(dtype)
    running_mean = np.zeros(channels, dtype)
    running_var = np.ones(channels, dtype)
    y, mean, invstd = F.batch_norm(x, running_mean, running_var, weight, bias, training=True,
                                   momentum=0.1, eps=1e-5)
    grad_x, grad_weight, grad_bias = F.batch_norm_backward(grad_y, x, mean, invstd, weight)
    expected = reference_batch_norm(x, weight, bias, 1e-5, grad_y)
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-11)
    for got, want, what in zip((y, mean, invstd, grad_x, grad_weight, grad_bias),
                               expected[:2] + expected[3:], ("y", "mean", "invstd", "grad_x",
                                                             "grad_weight", "grad_bias")):
        np.testing.assert_allclose(np.asarray(got, np.float64), want, err_msg=what, **tol)
    count = x.size // channels
    np.testing.assert_allclose(running_var, 0.9 + 0.1 * expected[2] * count / (count - 1),
                               **tol)
    # evaluation with the running statistics, and the gradient through fixed statistics
    y_eval, _, invstd_eval = F.batch_norm(x, running_mean, running_var, weight, bias)
    scale = weight.astype(np.float64) / np.sqrt(running_var.astype(np.float64) + 1e-5)
    stat_shape = (1, -1) + (1,) * (x.ndim - 2)
    want_eval = (x - running_mean.reshape(stat_shape)) * scale.reshape(stat_shape) \
        + bias.reshape(stat_shape)
    np.testing.assert_allclose(y_eval.astype(np.float64), want_eval, **tol)
    grad_fixed, _, _ = F.batch_norm_backward(grad_y, x, running_mean.astype(np.float64),
                                             invstd_eval, weight, batch_stats=False)
    np.testing.assert_allclose(grad_fixed.astype(np.float64),
                               grad_y * scale.reshape(stat_shape), **tol)


@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batch_norm_does_not_depend_on_the_thread_count(shape):
    if len(THREADS) < 2:
        pytest.skip("one Numba thread only")
    rng = np.random.default_rng(5)
    x = rng.normal(size=shape).astype(np.float32)
    grad_y = rng.normal(size=shape).astype(np.float32)
    weight = rng.normal(size=shape[1]).astype(np.float32)
    results = []
    before = numba.get_num_threads()
    try:
        for count in THREADS:
            set_threads(count)
            stats = [np.zeros(shape[1], np.float32), np.ones(shape[1], np.float32)]
            y, mean, invstd = F.batch_norm(x, *stats, weight, None, training=True)
            results.append([y, mean, invstd, *stats,
                            *F.batch_norm_backward(grad_y, x, mean, invstd, weight),
                            F.batch_norm(x, *stats, weight)[0]])
    finally:
        set_threads(before)
    for first, other in zip(*results):
        np.testing.assert_array_equal(bits(first), bits(other))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum", [0.1, None])
def test_running_statistics_round_as_numpy_does(dtype, momentum):
    rng = np.random.default_rng(6)
    x = rng.normal(3, 2, size=(64, 40, 3, 3)).astype(dtype)
    running_mean = rng.normal(size=40).astype(dtype)
    running_var = rng.random(40).astype(dtype) + 0.5
    tracked = np.array(2, dtype=np.int64)
    expected_mean, expected_var = running_mean.copy(), running_var.copy()
    _, mean, _ = F.batch_norm(x, running_mean, running_var, training=True, momentum=momentum,
                              num_batches_tracked=tracked)
    var = x.astype(np.float64).var(axis=(0, 2, 3))
    factor = 1 / 3 if momentum is None else momentum
    count = x.size // 40
    # what functional.batch_norm computed in NumPy before the update moved into the kernel
    expected_mean[...] = (1.0 - factor) * expected_mean + factor * mean
    expected_var[...] = (1.0 - factor) * expected_var + factor * (var * (count / (count - 1)))
    assert int(tracked) == 3
    np.testing.assert_array_equal(running_mean, expected_mean)
    np.testing.assert_allclose(running_var, expected_var, rtol=1e-13 if dtype == np.float64
                               else 0, atol=0 if dtype == np.float64 else 1e-7)


def test_batch_norm_tasks_cover_every_channel_once():
    for n_batch, channels, length in [(64, 512, 1), (64, 512, 9), (2, 3, 5), (64, 64, 2304)]:
        per_task = norm._channels_per_task(n_batch, channels, length)
        assert 1 <= per_task <= channels
        if n_batch * channels * length > norm.SERIAL_ELEMENTS and channels >= norm.MIN_TASKS:
            assert -(-channels // per_task) >= norm.MIN_TASKS


# --------------------------------------------------------------------------- stem max pool

def pool_input(shape, values, dtype, seed):
    rng = np.random.default_rng(seed)
    if values == "normal":
        return rng.normal(size=shape).astype(dtype)
    x = rng.integers(-3, 4, size=shape).astype(np.float64)  # ties in every window
    if values == "nan":
        x[rng.random(shape) < 0.15] = np.nan
    elif values == "inf":
        x[rng.random(shape) < 0.3] = -np.inf
        x[rng.random(shape) < 0.05] = np.inf
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("values", ["ties", "nan", "inf", "normal"])
@pytest.mark.parametrize("padding", [1, (0, 1)])
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_stem_max_pool_matches_the_reference(dtype, values, padding, ceil_mode):
    """3x3 windows, stride 2, padding 1 at the left, over even widths: the vectorised path."""
    pad_h = padding if isinstance(padding, int) else padding[0]
    for height in range(3 - 2 * pad_h, 10):  # the window fits the padded height
        for width in (2, 4, 6, 10, 14):
            x = pool_input((2, 3, height, width), values, dtype, height * 16 + width)
            args = dict(kernel_size=3, stride=2, padding=padding, ceil_mode=ceil_mode)
            y, idx = F.max_pool2d(x, return_indices=True, **args)
            ey, eidx = ref.max_pool2d(x, return_indices=True, dilation=1, **args)
            np.testing.assert_array_equal(y, ey.astype(dtype))
            np.testing.assert_array_equal(idx, eidx)


def test_stem_max_pool_on_many_planes_matches_the_reference(threads):
    x = pool_input((8, 16, 24, 24), "ties", np.float32, 7)
    y, idx = F.max_pool2d(x, 3, stride=2, padding=1, return_indices=True)
    ey, eidx = ref.max_pool2d(x, 3, stride=2, padding=1, return_indices=True)
    np.testing.assert_array_equal(y, ey.astype(np.float32))
    np.testing.assert_array_equal(idx, eidx)


# --------------------------------------------------------------------------- global pool

@pytest.mark.parametrize("dtype", DTYPES)
def test_global_average_of_1x1_maps_is_a_copy(dtype):
    x = special_values(4 * 6, dtype, 8).reshape(4, 6, 1, 1)
    for source in (x, x[:, ::2], np.asfortranarray(x)):
        y = F.adaptive_avg_pool2d(source, (1, 1))
        assert y.shape == source.shape and y.flags.c_contiguous
        np.testing.assert_array_equal(bits(y), bits(source))
        assert not np.shares_memory(y, source)
    np.testing.assert_array_equal(F.adaptive_avg_pool2d(x, 1), x)
    # a larger output repeats the one value
    np.testing.assert_array_equal(F.adaptive_avg_pool2d(x, (2, 3)),
                                  np.broadcast_to(x, (4, 6, 2, 3)))
