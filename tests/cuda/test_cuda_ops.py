"""Training ops of the CUDA backend (matrix product, linear, activations, cross-entropy,
hits, elementwise and channel ops, the fused pool's backward, SGD, Adam, device helpers)
against PyTorch (CPU), and one training step of a tiny conv net matched against the same step
in PyTorch. Feature sizes stay tiny: the simulator's
barriers make the tiled product slow there."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import types

import numpy as np
import pytest

pytest.importorskip("numba.cuda")

from cuda_support import REPO  # noqa: E402
from cuda_support import close as close_within  # noqa: E402

from numbaconv.kernels import cuda as nk  # noqa: E402
from numbaconv.kernels.cuda import config, ops  # noqa: E402
from numbaconv.kernels.cuda.device import to_device, to_host  # noqa: E402

TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=2e-5, atol=2e-6)}
close = functools.partial(close_within, tol=TOL)


# ------------------------------------------------------------------------------ device helpers

def test_device_helpers(rng):
    ok, reason = nk.cuda_available()
    assert ok and reason
    host = rng.standard_normal((2, 3)).astype(np.float32)
    dev = nk.to_device(host)
    assert nk.is_device_array(dev) and not nk.is_device_array(host)
    assert nk.to_device(dev) is dev
    np.testing.assert_array_equal(nk.to_host(dev), host)
    np.testing.assert_array_equal(nk.to_host(nk.to_device(dev, np.float64)), host)
    assert nk.to_host(nk.zeros_like(dev)).dtype == np.float32
    assert not nk.to_host(nk.zeros((2, 2), np.float64)).any()
    nk.synchronize()


def test_a_numba_cuda_that_cannot_compile_is_reported_in_one_line(monkeypatch):
    from numba import cuda

    from numbaconv.kernels.cuda import device

    def broken_jit(*args, **kwargs):
        raise AttributeError("module 'numpy' has no attribute 'row_stack'\nmore detail")

    # as on a GPU machine whose numba-cuda is older than its NumPy
    monkeypatch.setattr(device, "simulator_enabled", lambda: False)
    monkeypatch.setattr(cuda, "is_available", lambda: True)
    monkeypatch.setattr(cuda, "get_current_device", lambda: types.SimpleNamespace(name=b"GPU"))
    monkeypatch.setattr(cuda, "jit", broken_jit)
    ok, reason = nk.cuda_available()
    assert not ok
    assert reason == ("numba-cuda cannot compile or launch a kernel on GPU "
                      "(AttributeError: module 'numpy' has no attribute 'row_stack')")


def test_importing_the_backend_does_not_import_numba_cuda():
    code = ("import sys, numbaconv, numbaconv.kernels.cuda as k; "
            "bad = [m for m in sys.modules if m.startswith(('numba.cuda', 'numba_cuda'))]; "
            "assert not bad, bad; "
            "print(k.cuda_available()[1])")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()


# ------------------------------------------------------------------------------ matmul, linear

@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_matmul_tiles_and_transposes(trans_a, trans_b, rng):
    # sizes straddle the tile so that partial tiles and several k-steps are exercised
    m, d, n = config.TILE + 1, 2 * config.TILE + 1, config.TILE - 1
    a = rng.standard_normal((d, m) if trans_a else (m, d))
    b = rng.standard_normal((n, d) if trans_b else (d, n))
    c = ops.matmul(to_device(a), to_device(b), trans_a, trans_b)
    close(c, (a.T if trans_a else a) @ (b.T if trans_b else b), np.float64,
          f"trans_a={trans_a} trans_b={trans_b}")
    with pytest.raises(ValueError, match="inner sizes"):
        ops.matmul(to_device(a), to_device(b), not trans_a, trans_b)


@pytest.mark.parametrize("activation", [None, "relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_forward_backward(activation, dtype, rng, torch):
    x = rng.standard_normal((3, 5)).astype(dtype)
    w = rng.standard_normal((4, 5)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    y = ops.linear_forward(to_device(x), to_device(w), to_device(b), activation)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.linear(tx, tw, tb)
    if activation:
        ty = getattr(torch, activation)(ty)
    close(y, ty.detach().numpy(), dtype, "y")
    gy = rng.standard_normal(ty.shape).astype(dtype)
    grads = ops.linear_backward(to_device(gy), to_device(x), to_device(w), y=y,
                                activation=activation)
    ty.backward(torch.tensor(gy))
    for got, t, what in zip(grads, (tx, tw, tb), ("grad_x", "grad_weight", "grad_bias"),
                            strict=True):
        close(got, t.grad.numpy(), dtype, what)
    no_bias = ops.linear_forward(to_device(x), to_device(w))
    close(no_bias, x @ w.T, dtype, "no bias")
    assert ops.linear_backward(to_device(gy), to_device(x), to_device(w), y=y,
                               activation=activation, with_bias=False)[2] is None


# ------------------------------------------------------------------------------ activations

@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_activations(activation, rng, torch):
    x = rng.standard_normal((2, 3, 2, 3)).astype(np.float32) * 4
    x[0, 0, 0, :3] = (0.0, np.nan, -np.inf)
    y = getattr(ops, f"{activation}_forward")(to_device(x))
    tx = torch.tensor(x, requires_grad=True)
    ty = getattr(torch, activation)(tx)
    close(y, ty.detach().numpy(), np.float32, "forward")
    gy = rng.standard_normal(x.shape).astype(np.float32)
    gx = getattr(ops, f"{activation}_backward")(to_device(gy), y)
    ty.backward(torch.tensor(gy))
    close(gx, tx.grad.numpy(), np.float32, "backward")


def test_bias_act_on_channels(rng, torch):
    x = rng.standard_normal((2, 3, 2, 2))
    b = rng.standard_normal(3)
    y = ops.bias_act_forward(to_device(x), to_device(b), "tanh")
    tx, tb = torch.tensor(x, requires_grad=True), torch.tensor(b, requires_grad=True)
    ty = torch.tanh(tx + tb[None, :, None, None])
    close(y, ty.detach().numpy(), np.float64, "y")
    gy = rng.standard_normal(x.shape)
    gx, gb = ops.bias_act_backward(to_device(gy), y, "tanh")
    ty.backward(torch.tensor(gy))
    close(gx, tx.grad.numpy(), np.float64, "grad_x")
    close(gb, tb.grad.numpy(), np.float64, "grad_bias")
    gx, gb = ops.bias_act_backward(to_device(gy), None, None)  # identity: a copy of grad_y
    close(gx, gy, np.float64, "identity grad_x")
    close(gb, gy.sum(axis=(0, 2, 3)), np.float64, "identity grad_bias")
    with pytest.raises(ValueError, match="unknown activation"):
        ops.bias_act_forward(to_device(x), None, "gelu")


def test_channel_sum_many_chunks(rng):
    g = rng.standard_normal((5, 2, 9))  # 45 terms per channel: several chunks
    out = ops.sum_over_batch_and_space(to_device(g))
    close(out, g.sum(axis=(0, 2)), np.float64, "sum")


# ------------------------------------------------------------------------------ loss, accuracy

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_and_its_gradient(dtype, rng, torch):
    z = rng.standard_normal((5, 4)).astype(dtype) * 3
    z[1] += 1000  # stability: a naive exp overflows
    z[2, 0] = -1000
    labels = np.array([0, 3, 0, 2, 1], np.int64)
    loss = ops.cross_entropy(to_device(z), to_device(labels))
    grad = ops.cross_entropy_backward(to_device(z), to_device(labels))
    tz = torch.tensor(z, requires_grad=True)
    tloss = torch.nn.functional.cross_entropy(tz, torch.tensor(labels))
    tloss.backward()
    assert to_host(loss).shape == () and to_host(loss).dtype == np.float64
    np.testing.assert_allclose(to_host(loss), tloss.item(), **TOL[dtype])
    close(grad, tz.grad.numpy(), dtype, "grad")
    # a label outside [0, K) cannot be checked without a transfer: it gives NaN instead
    bad = to_device(np.array([0, 4, 0, 2, -1], np.int64))
    assert np.isnan(to_host(ops.cross_entropy(to_device(z), bad)))
    bad_grad = to_host(ops.cross_entropy_backward(to_device(z), bad))
    assert np.isnan(bad_grad[[1, 4]]).all() and np.isfinite(bad_grad[[0, 2, 3]]).all()


def test_correct_counts_first_maxima(rng):
    z = rng.standard_normal((7, 3))
    z[0] = (1.0, 1.0, 0.0)  # tie: the first maximum counts
    z[1] = (0.0, np.nan, 5.0)  # NaN counts as the largest
    labels = np.argmax(z, axis=1)
    labels[[0, 1]] = (0, 1)
    labels[[5, 6]] = (labels[5] + 1) % 3, (labels[6] + 2) % 3
    count = to_host(ops.correct(to_device(z), to_device(labels.astype(np.int64))))
    assert count.dtype == np.int64 and count.shape == () and count == 5
    totals = nk.zeros(2, np.float64)
    ops.accumulate(totals, 1, ops.correct(to_device(z), to_device(labels)), 2.0)
    np.testing.assert_array_equal(to_host(totals), [0.0, 10.0])


def test_elementwise_channels_and_fused_pool_backward(rng, torch):
    a, b = rng.standard_normal((2, 3, 2)), rng.standard_normal((2, 3, 2))
    close(ops.add(to_device(a), to_device(b)), a + b, np.float64, "add")
    close(ops.multiply(to_device(a), to_device(b)), a * b, np.float64, "multiply")
    parts = [rng.standard_normal((2, c, 3)) for c in (1, 3, 2)]
    whole = ops.concat_channels([to_device(p) for p in parts])
    close(whole, np.concatenate(parts, axis=1), np.float64, "concat")
    for got, want in zip(ops.split_channels(whole, [1, 3, 2]), parts, strict=True):
        close(got, want, np.float64, "split")
    x = rng.standard_normal((2, 1, 5, 4)).astype(np.float32)
    keep = rng.random(x.shape) >= 0.5
    y, mask = ops.dropout_forward(to_device(x), keep, 2.0)
    close(mask, keep * np.float32(2.0), np.float32, "mask")
    close(y, x * keep * 2, np.float32, "dropout")
    for activation in ("relu", "sigmoid"):
        for pool in ("avg", "max"):
            z = rng.standard_normal((2, 3, 5, 7)).astype(np.float32)
            z[0, 0, :2, :2] = 0.5  # a tie: the first maximum wins
            tz = torch.tensor(z, requires_grad=True)
            act = getattr(torch, activation)(tz)
            pooled = (torch.nn.functional.avg_pool2d if pool == "avg"
                      else torch.nn.functional.max_pool2d)(act, 2)
            close(ops.pool2x2_forward(to_device(act.detach().numpy()), pool),
                  pooled.detach().numpy(), np.float32, f"{activation} {pool} forward")
            gy = rng.standard_normal(pooled.shape).astype(np.float32)
            pooled.backward(torch.tensor(gy))
            grad_z = ops.act_pool2x2_backward(to_device(gy), to_device(act.detach().numpy()),
                                              activation, pool)
            close(grad_z, tz.grad.numpy(), np.float32, f"{activation} {pool} backward")


# ------------------------------------------------------------------------------ optimizers

@pytest.mark.parametrize("momentum,weight_decay,nesterov,dampening",
                         [(0.0, 0.0, False, 0.0), (0.9, 0.0, False, 0.0),
                          (0.8, 0.01, True, 0.0), (0.9, 0.01, False, 0.3)])
def test_sgd_matches_torch(momentum, weight_decay, nesterov, dampening, rng, torch):
    p = rng.standard_normal((3, 4)).astype(np.float32)
    grads = [rng.standard_normal(p.shape).astype(np.float32) for _ in range(3)]
    dp = to_device(p)
    # NaN: the first step sets the buffer without reading it, as torch's does
    velocity = to_device(np.full(p.shape, np.nan, np.float32)) if momentum else None
    tp = torch.tensor(p, requires_grad=True)
    opt = torch.optim.SGD([tp], lr=0.1, momentum=momentum, weight_decay=weight_decay,
                          nesterov=nesterov, dampening=dampening)
    for step, g in enumerate(grads):
        ops.sgd_step(dp, to_device(g), velocity, 0.1, momentum, weight_decay, nesterov,
                     dampening, first=step == 0)
        tp.grad = torch.tensor(g)
        opt.step()
    close(dp, tp.detach().numpy(), np.float32, "param")
    if momentum:
        close(velocity, opt.state[tp]["momentum_buffer"].numpy(), np.float32, "velocity")
        with pytest.raises(ValueError, match="velocity"):
            ops.sgd_step(dp, to_device(grads[0]), None, 0.1, momentum)


@pytest.mark.parametrize("weight_decay,decoupled", [(0.0, False), (0.1, False), (0.1, True)])
def test_adam_matches_torch(weight_decay, decoupled, rng, torch):
    p = rng.standard_normal(6).astype(np.float32)
    grads = [rng.standard_normal(6).astype(np.float32) for _ in range(3)]
    dp, m, v = to_device(p), nk.zeros((6,), np.float32), nk.zeros((6,), np.float32)
    tp = torch.tensor(p, requires_grad=True)
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    opt = cls([tp], lr=0.01, betas=(0.8, 0.9), eps=1e-6, weight_decay=weight_decay)
    for step, g in enumerate(grads, start=1):
        ops.adam_step(dp, to_device(g), m, v, step, 0.01, 0.8, 0.9, 1e-6, weight_decay,
                      decoupled)
        tp.grad = torch.tensor(g)
        opt.step()
    close(dp, tp.detach().numpy(), np.float32, "param")
    close(m, opt.state[tp]["exp_avg"].numpy(), np.float32, "m")
    close(v, opt.state[tp]["exp_avg_sq"].numpy(), np.float32, "v")
    with pytest.raises(ValueError, match="step"):
        ops.adam_step(dp, to_device(grads[0]), m, v, 0)


# ------------------------------------------------------------------------------ a training step

def test_tiny_convnet_training_step_matches_torch(rng, torch):
    """conv(1->2, 3x3, pad 1) -> relu -> maxpool 2 -> flatten -> linear(18->3) -> CE -> SGD
    on a batch of 2: the same loss and updated weights as PyTorch, and the loss goes down."""
    x = rng.standard_normal((2, 1, 6, 6)).astype(np.float32)
    labels = np.array([2, 0], np.int64)
    w1 = (rng.standard_normal((2, 1, 3, 3)) / 3).astype(np.float32)
    b1 = (0.1 * rng.standard_normal(2)).astype(np.float32)
    w2 = (rng.standard_normal((3, 18)) / 4).astype(np.float32)
    b2 = (0.1 * rng.standard_normal(3)).astype(np.float32)
    lr, momentum = 0.2, 0.5
    params = [to_device(a) for a in (w1, b1, w2, b2)]
    velocities = [nk.zeros_like(p) for p in params]
    dx, dlabels = to_device(x), to_device(labels)
    geometry = ((1, 1), ((1, 1), (1, 1)), (1, 1), 1)
    pool = dict(kernel=(2, 2), stride=(2, 2), padding=(0, 0), dilation=(1, 1))

    def step():
        a1 = nk.conv2d_forward(dx, params[0], params[1], *geometry, activation="relu")
        p1, idx = nk.max_pool2d_forward(a1, pool["kernel"], pool["stride"], pool["padding"],
                                        pool["dilation"], (3, 3))
        z = nk.linear_forward(p1.reshape(2, 18), params[2], params[3])
        loss, gz = nk.cross_entropy(z, dlabels), nk.cross_entropy_backward(z, dlabels)
        gf, gw2, gb2 = nk.linear_backward(gz, p1.reshape(2, 18), params[2])
        ga1 = nk.max_pool2d_backward(gf.reshape(p1.shape), idx, a1.shape, **pool)
        _, gw1, gb1 = nk.conv2d_backward(ga1, dx, params[0], *geometry, y=a1,
                                         activation="relu", need_input_grad=False)
        for p, g, v in zip(params, (gw1, gb1, gw2, gb2), velocities, strict=True):
            nk.sgd_step(p, g, v, lr, momentum)
        return float(to_host(loss))

    tparams = [torch.tensor(a, requires_grad=True) for a in (w1, b1, w2, b2)]
    opt = torch.optim.SGD(tparams, lr=lr, momentum=momentum)

    def torch_step():
        opt.zero_grad()
        a1 = torch.relu(torch.nn.functional.conv2d(torch.tensor(x), tparams[0], tparams[1],
                                                   padding=1))
        z = torch.nn.functional.linear(torch.nn.functional.max_pool2d(a1, 2).reshape(2, 18),
                                       tparams[2], tparams[3])
        loss = torch.nn.functional.cross_entropy(z, torch.tensor(labels))
        loss.backward()
        opt.step()
        return loss.item()

    losses = []
    for _ in range(3):
        ours, theirs = step(), torch_step()
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
        for p, t in zip(params, tparams, strict=True):
            np.testing.assert_allclose(to_host(p), t.detach().numpy(), rtol=1e-4, atol=1e-5)
        losses.append(ours)
    assert losses[2] < losses[1] < losses[0], losses


# ------------------------------------------------------------------------------ the GPU script

def test_gpu_check_script_runs_tiny():
    """bench/gpu_check.py end to end at tiny sizes on the simulator (or the GPU)."""
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "bench", "gpu_check.py"), "--tiny", "--repeats",
         "1", "--warmup", "0", "--samples", "2", "--profile"],
        cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "all parity checks within" in proc.stdout
    assert "| numbaconv |" in proc.stdout and "| torch |" in proc.stdout
