"""Batch norm on CUDA device arrays (the simulator or a GPU) against the same calls on the CPU:
numbaconv.functional, the layers, and a batch-norm network trained by numbaconv.training.Loop,
whose running statistics stay on the device. Tiny shapes: the simulator is slow."""

from __future__ import annotations

import copy
import functools
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("numba.cuda")

from cuda_support import close as close_within  # noqa: E402
from numba import cuda  # noqa: E402

from numbaconv import functional as F  # noqa: E402
from numbaconv.devices import get_device  # noqa: E402
from numbaconv.kernels.cuda.device import is_device_array, to_device, to_host  # noqa: E402
from numbaconv.layers import (  # noqa: E402
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    Flatten,
    Linear,
    ReLU,
    Sequential,
)
from numbaconv.optim import SGD  # noqa: E402
from numbaconv.training import Loop, Settings  # noqa: E402

TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=2e-5, atol=2e-6)}
close = functools.partial(close_within, tol=TOL)


def randn(shape, rng, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def assert_same(device_result, host_result, what=""):
    if host_result is None:
        assert device_result is None, what
        return
    close(device_result, host_result, host_result.dtype.type, what)


# (N, C, L) with channels over both simulated blocks and more, and an (N, C) input
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 5, 2, 3), (6, 3)])
def test_batch_norm_matches_the_cpu(shape, dtype, rng):
    channels = shape[1]
    x = (randn(shape, rng, dtype) * 2 + 1)
    w, b = randn(channels, rng, dtype), randn(channels, rng, dtype)
    host = {"rm": np.zeros(channels, dtype), "rv": np.ones(channels, dtype),
            "count": np.zeros((), np.int64)}
    device = {k: to_device(v) for k, v in host.items()}
    for momentum in (0.1, None, 0.1):
        want = F.batch_norm(x, host["rm"], host["rv"], w, b, True, momentum,
                            num_batches_tracked=host["count"])
        got = F.batch_norm(to_device(x), device["rm"], device["rv"], to_device(w),
                           to_device(b), True, momentum, num_batches_tracked=device["count"])
        assert_same(got[0], want[0], f"y, momentum {momentum}")
        for name, a, e in zip(("mean", "invstd"), got[1:], want[1:], strict=True):
            assert to_host(a).dtype == np.float64, name  # float64 statistics of x's values
            np.testing.assert_allclose(to_host(a), e, err_msg=name, **TOL[dtype])
        for name in ("rm", "rv", "count"):  # updated in place on the device
            np.testing.assert_allclose(to_host(device[name]), host[name], **TOL[dtype])
        g = randn(shape, rng, dtype)
        grad_w = to_device(np.zeros_like(w))
        got_grads = F.batch_norm_backward(to_device(g), to_device(x), got[1], got[2],
                                          to_device(w), grad_weight=grad_w)
        assert got_grads[1] is grad_w
        for name, a, e in zip(("grad_x", "grad_weight", "grad_bias"), got_grads,
                              F.batch_norm_backward(g, x, want[1], want[2], w), strict=True):
            assert_same(a, e, name)
    assert int(host["count"]) == 3
    # evaluation: the running statistics, no weight; its backward, with and without grad_x
    want = F.batch_norm(x, host["rm"], host["rv"], None, b, False)
    got = F.batch_norm(to_device(x), device["rm"], device["rv"], None, to_device(b), False)
    assert_same(got[0], want[0], "eval y")
    for need in (True, False):
        got_grads = F.batch_norm_backward(to_device(g), to_device(x), got[1], got[2],
                                          batch_stats=False, need_input_grad=need)
        want_grads = F.batch_norm_backward(g, x, want[1], want[2], batch_stats=False,
                                           need_input_grad=need)
        for name, a, e in zip(("grad_x", "grad_weight", "grad_bias"), got_grads, want_grads,
                              strict=True):
            assert_same(a, e, f"eval {name}, need_input_grad={need}")


def test_batch_norm_argument_errors_on_the_device(rng):
    x = to_device(randn((2, 3), rng))
    with pytest.raises(TypeError, match="running_mean must be a CUDA device array like x"):
        F.batch_norm(x, np.zeros(3, np.float32), to_device(np.ones(3, np.float32)),
                     training=True)
    with pytest.raises(TypeError, match="save_mean must be float64"):
        F.batch_norm_backward(x, x, to_device(np.zeros(3, np.float32)),
                              to_device(np.ones(3)))


def test_layers_on_the_device_keep_their_state_there(rng):
    """Moved batch norms train with their buffers on the device (the same arrays, updated in
    place, the 0-d batch count included), give the CPU's results, and their state_dict loads
    into a CPU twin (and a CPU state into a device model)."""
    model = Sequential(Conv2d(2, 3, 3, padding=1, rng=0), BatchNorm2d(3, momentum=None),
                       ReLU(), Flatten(), BatchNorm1d(36))
    twin = copy.deepcopy(model)
    model.to("cuda")
    buffers = model.named_buffers()
    assert all(is_device_array(b) for b in buffers.values())
    assert buffers["1.num_batches_tracked"].shape == ()
    for step in range(2):
        x = randn((4, 2, 3, 4), rng)
        want = twin.forward(x, training=True)
        got = model.forward(to_device(x), training=True)
        assert_same(got, want, f"forward {step}")
        g = randn(want.shape, rng)
        assert_same(model.backward(to_device(g)), twin.backward(g), f"backward {step}")
        for name, grad in twin.named_grads().items():  # 0.bias's is 0 up to rounding
            np.testing.assert_allclose(to_host(model.named_grads()[name]), grad, rtol=1e-4,
                                       atol=1e-5, err_msg=name)
    assert all(model.named_buffers()[k] is v for k, v in buffers.items())
    state = model.state_dict()
    assert state["1.num_batches_tracked"].shape == () and int(state["1.num_batches_tracked"]) == 2
    for name, value in twin.state_dict().items():
        np.testing.assert_allclose(state[name], value, rtol=2e-5, atol=2e-6, err_msg=name)
    fresh = copy.deepcopy(twin)
    fresh.load_state_dict(state)
    moved = copy.deepcopy(twin).to("cuda")
    moved.load_state_dict(twin.state_dict())  # host values into device arrays, 0-d too
    x = randn((2, 2, 3, 4), rng)
    assert_same(model.forward(to_device(x)), fresh.forward(x), "evaluation")
    assert_same(moved.forward(to_device(x)), twin.forward(x), "evaluation after loading")


# ------------------------------------------------------------------------ training

@pytest.fixture
def transfers(monkeypatch):
    """Counts device-to-host copies."""
    cls = type(cuda.device_array(1))
    original = cls.copy_to_host
    counter = SimpleNamespace(n=0)

    def counting(self, *args, **kwargs):
        counter.n += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "copy_to_host", counting)
    return counter


def test_training_a_batch_norm_network_matches_the_cpu(transfers):
    """numbaconv.training.Loop on both devices: the running statistics (the cumulative
    average too, which counts batches on the device) follow the CPU's, with one
    device-to-host copy per epoch."""
    rng = np.random.default_rng(7)
    data = SimpleNamespace(train_x=rng.standard_normal((7, 1, 6, 6)).astype(np.float32),
                           train_y=rng.integers(0, 3, 7),
                           test_x=rng.standard_normal((3, 1, 6, 6)).astype(np.float32),
                           test_y=rng.integers(0, 3, 3))
    model = Sequential(Conv2d(1, 2, 3, padding=1, rng=3), BatchNorm2d(2), ReLU(),
                       AvgPool2d(3), Flatten(), Linear(8, 4, rng=4),
                       BatchNorm1d(4, momentum=None), ReLU(), Linear(4, 3, rng=5))
    runs = []
    for device, net in (("cuda", copy.deepcopy(model)), ("cpu", model)):
        net.to(get_device(device))
        loop = Loop(net, SGD(net.named_params(), lr=0.3, momentum=0.9), data,
                    Settings(epochs=9, batch_size=4, seed=11), get_device(device))
        runs.append((net, loop))
    (device_net, device_loop), (host_net, host_loop) = runs
    for epoch in (1, 2):
        transfers.n = 0
        got = device_loop.fit_epoch(epoch)
        assert transfers.n == 1, f"{transfers.n} device-to-host copies in epoch {epoch}"
        want = host_loop.fit_epoch(epoch)
        np.testing.assert_allclose(got.train_loss, want.train_loss, rtol=1e-5, atol=1e-6)
        assert (got.train_acc, got.test_acc) == (want.train_acc, want.test_acc)
    host = host_net.state_dict()
    assert int(host["6.num_batches_tracked"]) == 4  # 2 batches per epoch
    for name, value in device_net.state_dict().items():
        np.testing.assert_allclose(value, host[name], rtol=1e-4, atol=2e-6, err_msg=name)
