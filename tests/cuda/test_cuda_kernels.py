"""Convolution and pooling kernels of the CUDA backend against a float64 NumPy reference and
PyTorch (CPU), forward and backward, for every argument. Shapes stay tiny: under the
simulator each CUDA thread is a Python thread."""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("numba.cuda")

import reference_cuda as ref  # noqa: E402
from cuda_support import REPO  # noqa: E402
from cuda_support import close as close_within  # noqa: E402

from numbaconv.kernels.cuda import conv, pool  # noqa: E402
from numbaconv.kernels.cuda.device import to_device, to_host  # noqa: E402
from numbaconv.shapes import output_size  # noqa: E402

TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=2e-5, atol=2e-5)}
close = functools.partial(close_within, tol=TOL)


# ------------------------------------------------------------------------------ convolution

# (x shape, C_out, kernel, stride, padding ((t, b), (l, r)), dilation, groups, bias, dtype)
CONV_CASES = {
    "plain": ((2, 2, 5, 5), 3, (3, 3), (1, 1), ((0, 0), (0, 0)), (1, 1), 1, True, np.float64),
    "stride": ((1, 2, 7, 6), 2, (3, 2), (2, 3), ((0, 0), (0, 0)), (1, 1), 1, True, np.float64),
    "pad_sym": ((2, 1, 4, 5), 2, (3, 3), (1, 1), ((1, 1), (2, 2)), (1, 1), 1, False,
                np.float64),
    "pad_asym": ((1, 2, 5, 5), 2, (3, 2), (2, 1), ((2, 0), (1, 3)), (1, 1), 1, True,
                 np.float64),
    "dilation": ((1, 2, 7, 7), 2, (2, 3), (1, 2), ((1, 2), (0, 1)), (3, 2), 1, True,
                 np.float64),
    "groups": ((2, 4, 4, 4), 6, (3, 1), (1, 1), ((1, 1), (0, 0)), (1, 1), 2, True, np.float64),
    "depthwise": ((1, 3, 5, 4), 3, (2, 2), (2, 1), ((1, 0), (1, 1)), (2, 1), 3, False,
                  np.float64),
    "one_by_one_f32": ((2, 3, 3, 4), 2, (1, 1), (1, 2), ((0, 0), (0, 0)), (1, 1), 1, True,
                       np.float32),
    "mixed_f32": ((2, 2, 6, 5), 4, (3, 3), (2, 1), ((1, 2), (1, 0)), (1, 2), 2, True,
                  np.float32),
}


def conv_data(case, rng):
    shape, c_out, kernel, stride, padding, dilation, groups, with_bias, dtype = case
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((c_out, shape[1] // groups) + kernel).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype) if with_bias else None
    return x, w, b


def torch_conv(torch, x, w, b, stride, padding, dilation, groups):
    """PyTorch's conv2d with asymmetric padding (F.pad first) on CPU tensors."""
    (pt, pb), (pl, pr) = padding
    xp = torch.nn.functional.pad(x, (pl, pr, pt, pb))
    return torch.nn.functional.conv2d(xp, w, b, stride, 0, dilation, groups)


@pytest.mark.parametrize("name", sorted(CONV_CASES))
def test_conv2d_forward_backward(name, rng, torch):
    case = CONV_CASES[name]
    _, _, _, stride, padding, dilation, groups, with_bias, dtype = case
    x, w, b = conv_data(case, rng)
    dx, dw_ = to_device(x), to_device(w)
    db = None if b is None else to_device(b)

    y = conv.conv2d_forward(dx, dw_, db, stride, padding, dilation, groups)
    y_ref = ref.conv2d(x, w, b, stride, padding, dilation, groups)
    close(y, y_ref, dtype, f"{name}: y vs reference")

    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    tb = None if b is None else torch.tensor(b, requires_grad=True)
    ty = torch_conv(torch, tx, tw, tb, stride, padding, dilation, groups)
    close(y, ty.detach().numpy(), dtype, f"{name}: y vs torch")

    gy = rng.standard_normal(y_ref.shape).astype(dtype)
    gx, gw, gb = conv.conv2d_backward(to_device(gy), dx, dw_, stride, padding, dilation, groups)
    gx_ref, gw_ref, gb_ref = ref.conv2d_backward(gy, x, w, stride, padding, dilation, groups)
    close(gx, gx_ref, dtype, f"{name}: grad_x vs reference")
    close(gw, gw_ref, dtype, f"{name}: grad_weight vs reference")
    close(gb, gb_ref, dtype, f"{name}: grad_bias vs reference")

    ty.backward(torch.tensor(gy))
    close(gx, tx.grad.numpy(), dtype, f"{name}: grad_x vs torch")
    close(gw, tw.grad.numpy(), dtype, f"{name}: grad_weight vs torch")
    if tb is not None:
        close(gb, tb.grad.numpy(), dtype, f"{name}: grad_bias vs torch")


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_conv2d_fused_activation(activation, rng, torch):
    stride, padding, dilation = (1, 2), ((1, 0), (1, 1)), (1, 1)
    x = rng.standard_normal((2, 2, 4, 5))
    w = rng.standard_normal((3, 2, 2, 3))
    b = rng.standard_normal(3)
    y = conv.conv2d_forward(to_device(x), to_device(w), to_device(b), stride, padding,
                            dilation, 1, activation=activation)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = getattr(torch, activation)(torch_conv(torch, tx, tw, tb, stride, padding, dilation, 1))
    close(y, ty.detach().numpy(), np.float64, f"{activation}: y")

    gy = rng.standard_normal(ty.shape)
    grads = conv.conv2d_backward(to_device(gy), to_device(x), to_device(w), stride, padding,
                                 dilation, 1, y=y, activation=activation)
    ty.backward(torch.tensor(gy))
    for got, t, what in zip(grads, (tx, tw, tb), ("grad_x", "grad_weight", "grad_bias"),
                            strict=True):
        close(got, t.grad.numpy(), np.float64, f"{activation}: {what}")
    with pytest.raises(ValueError, match="needs its output"):
        conv.conv2d_backward(to_device(gy), to_device(x), to_device(w), stride, padding,
                             dilation, 1, activation=activation)


def test_conv2d_backward_options_and_determinism(rng):
    x = rng.standard_normal((2, 2, 5, 4)).astype(np.float32)
    w = rng.standard_normal((2, 2, 3, 3)).astype(np.float32)
    args = ((2, 1), ((1, 1), (1, 0)), (1, 1), 1)
    gy = to_device(rng.standard_normal((2, 2, 3, 3)).astype(np.float32))
    first = conv.conv2d_backward(gy, to_device(x), to_device(w), *args)
    again = conv.conv2d_backward(gy, to_device(x), to_device(w), *args, need_input_grad=False,
                                 with_bias=False)
    assert again[0] is None and again[2] is None
    np.testing.assert_array_equal(to_host(first[1]), to_host(again[1]))


def test_conv2d_empty_output(rng):
    x = to_device(rng.standard_normal((1, 1, 2, 2)))
    w = to_device(rng.standard_normal((2, 1, 3, 3)))
    y = conv.conv2d_forward(x, w, None, (1, 1), ((0, 0), (0, 0)), (1, 1), 1)
    assert y.shape == (1, 2, 0, 0)
    gx, gw, gb = conv.conv2d_backward(y, x, w, (1, 1), ((0, 0), (0, 0)), (1, 1), 1)
    assert not to_host(gx).any() and not to_host(gw).any() and not to_host(gb).any()


# ------------------------------------------------------------------------------ max pooling

def pool_out(shape, kernel, stride, padding, dilation, ceil_mode):
    return tuple(output_size(shape[2 + a], kernel[a], stride[a], padding[a], dilation[a],
                             ceil_mode) for a in range(2))


# (x shape, kernel, stride, padding, dilation, ceil_mode, values, dtype)
MAX_CASES = {
    "k2s2": ((2, 2, 4, 6), (2, 2), (2, 2), (0, 0), (1, 1), False, "normal", np.float32),
    "overlap_pad": ((1, 2, 5, 5), (3, 3), (1, 2), (1, 1), (1, 1), False, "normal", np.float64),
    "dilation": ((1, 2, 7, 6), (2, 3), (1, 2), (1, 1), (2, 2), False, "normal", np.float64),
    "ceil": ((2, 1, 5, 7), (2, 3), (2, 2), (1, 0), (1, 1), True, "normal", np.float64),
    "ceil_dil": ((1, 2, 6, 7), (3, 2), (2, 3), (1, 1), (2, 1), True, "normal", np.float32),
    "ties": ((2, 2, 5, 5), (3, 2), (1, 1), (1, 1), (1, 1), False, "ties", np.float32),
    "nan": ((1, 2, 5, 6), (2, 3), (1, 2), (1, 1), (1, 1), True, "nan", np.float64),
    "all_neg_inf": ((1, 1, 4, 4), (2, 2), (1, 1), (1, 0), (1, 1), False, "-inf", np.float32),
}


def pool_input(shape, values, dtype, rng):
    if values == "ties":
        return rng.integers(0, 3, shape).astype(dtype)
    x = rng.standard_normal(shape).astype(dtype)
    if values == "nan":
        x.flat[rng.choice(x.size, 6, replace=False)] = np.nan
    if values == "-inf":
        x[:] = -np.inf
        x[0, 0, 3, 3] = 1.0
    return x


@pytest.mark.parametrize("name", sorted(MAX_CASES))
def test_max_pool2d(name, rng, torch):
    shape, kernel, stride, padding, dilation, ceil_mode, values, dtype = MAX_CASES[name]
    x = pool_input(shape, values, dtype, rng)
    out_hw = pool_out(shape, kernel, stride, padding, dilation, ceil_mode)
    y, idx = pool.max_pool2d_forward(to_device(x), kernel, stride, padding, dilation, out_hw)

    y_ref, idx_ref = ref.max_pool2d(x, kernel, stride, padding, dilation, out_hw)
    np.testing.assert_array_equal(to_host(y), y_ref, err_msg=f"{name}: y vs reference")
    assert to_host(idx).dtype == np.int64
    np.testing.assert_array_equal(to_host(idx), idx_ref, err_msg=f"{name}: indices")

    tx = torch.tensor(x, requires_grad=True)
    ty, tidx = torch.nn.functional.max_pool2d(tx, kernel, stride, padding, dilation,
                                              ceil_mode=ceil_mode, return_indices=True)
    np.testing.assert_array_equal(to_host(y), ty.detach().numpy(), err_msg=f"{name}: torch y")
    np.testing.assert_array_equal(to_host(idx), tidx.numpy(), err_msg=f"{name}: torch idx")

    gy = rng.standard_normal(y_ref.shape).astype(dtype)
    ty.backward(torch.tensor(gy))
    gx_ref = ref.max_pool2d_backward(gy, idx_ref, shape)
    for geometry in (True, False):
        extra = dict(kernel=kernel, stride=stride, padding=padding, dilation=dilation) \
            if geometry else {}
        gx = pool.max_pool2d_backward(to_device(gy), idx, shape, **extra)
        what = f"{name}: grad_x ({'gather' if geometry else 'per-plane scatter'})"
        close(gx, gx_ref, dtype, what + " vs reference")
        # the same additions in the same order as PyTorch's CPU kernel: bitwise equal
        np.testing.assert_array_equal(to_host(gx), tx.grad.numpy(), err_msg=what + " vs torch")


# ------------------------------------------------------------------------------ average pooling

# (x shape, kernel, stride, padding, ceil_mode, count_include_pad, divisor, dtype)
AVG_CASES = {
    "k2s2": ((2, 2, 4, 6), (2, 2), (2, 2), (0, 0), False, True, 0, np.float32),
    "pad_include": ((1, 2, 5, 5), (3, 3), (2, 1), (1, 1), False, True, 0, np.float64),
    "pad_exclude": ((1, 2, 5, 5), (3, 3), (2, 1), (1, 1), False, False, 0, np.float64),
    "ceil_include": ((2, 1, 5, 7), (2, 3), (2, 2), (1, 1), True, True, 0, np.float64),
    "ceil_exclude": ((2, 1, 6, 5), (3, 2), (2, 2), (1, 1), True, False, 0, np.float32),
    "divisor": ((1, 2, 5, 6), (3, 2), (1, 2), (1, 0), True, True, 5, np.float64),
    "overlap_asym": ((1, 1, 6, 7), (2, 4), (1, 3), (0, 2), False, False, 0, np.float64),
}


@pytest.mark.parametrize("name", sorted(AVG_CASES))
def test_avg_pool2d(name, rng, torch):
    shape, kernel, stride, padding, ceil_mode, include, divisor, dtype = AVG_CASES[name]
    x = rng.standard_normal(shape).astype(dtype)
    out_hw = pool_out(shape, kernel, stride, padding, (1, 1), ceil_mode)
    y = pool.avg_pool2d_forward(to_device(x), kernel, stride, padding, out_hw, include, divisor)
    close(y, ref.avg_pool2d(x, kernel, stride, padding, out_hw, include, divisor), dtype,
          f"{name}: y vs reference")

    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.avg_pool2d(tx, kernel, stride, padding, ceil_mode, include,
                                        divisor or None)
    close(y, ty.detach().numpy(), dtype, f"{name}: y vs torch")

    gy = rng.standard_normal(ty.shape).astype(dtype)
    gx = pool.avg_pool2d_backward(to_device(gy), shape, kernel, stride, padding, include,
                                  divisor)
    close(gx, ref.avg_pool2d_backward(gy, shape, kernel, stride, padding, include, divisor),
          dtype, f"{name}: grad_x vs reference")
    ty.backward(torch.tensor(gy))
    close(gx, tx.grad.numpy(), dtype, f"{name}: grad_x vs torch")


# ------------------------------------------------------------------------------ real compilation

def test_kernels_compile_to_ptx():
    """The simulator runs kernels as Python and never types them: compile every kernel for
    float32 and float64 with the real CUDA compiler (NVVM, no GPU needed) for sm_80 in a
    subprocess; none may do float64 arithmetic in float32 or spill registers (ptxas; sm_90
    too with ``python bench/gpu_check.py --ptx``). Run by the plain ``python -m pytest``
    (tests/cuda/conftest.py lets it run without a device); the simulator's run skips it
    rather than compile the same again. Without NVVM or ptxas it skips, except under ``CI``
    (CI installs numba-cuda[cu12], which brings them)."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        pytest.skip("compiled with the real compiler by the run without the simulator")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bench", "gpu_check.py"), "--ptx",
                           "--cc", "8.0"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    missing = proc.stdout.strip().splitlines()[-1] if proc.returncode == 3 else None
    if proc.returncode == 0 and "ptxas not found" in proc.stdout:
        missing = "ptxas not found: registers and spills unchecked"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing}; CI installs numba-cuda[cu12], which brings NVVM and ptxas")
        pytest.skip(missing)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "float32 kernels with float64 arithmetic: none" in proc.stdout, proc.stdout[-4000:]
    assert "kernels that spill registers: none" in proc.stdout, proc.stdout[-4000:]


def test_max_pool_backward_skips_windows_wholly_in_the_padding():
    from numba import cuda

    from numbaconv import functional as F

    x = np.arange(8, dtype=np.float64).reshape(2, 1, 2, 2)
    y, idx = F.max_pool2d(x, 2, padding=1, dilation=3, return_indices=True)
    assert idx.max() >= 4  # torch's out-of-plane index for an all-padding window
    expected = F.max_pool2d_backward(np.ones_like(y), idx, x.shape)
    got = F.max_pool2d_backward(cuda.to_device(np.ones_like(y)), cuda.to_device(idx), x.shape)
    np.testing.assert_array_equal(got.copy_to_host(), expected)
