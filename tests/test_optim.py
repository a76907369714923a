"""SGD and Adam against torch.optim, in-place float32 updates, and state round trips."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from support import on_1_and_2_threads

from numbaconv.layers import Linear, Sequential
from numbaconv.losses import accuracy, softmax_cross_entropy
from numbaconv.optim import SGD, Adam

STEPS = 5
TOL = dict(rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return torch


def make_params(seed=0, dtype=np.float32):
    g = np.random.default_rng(seed)
    return {"0.weight": g.standard_normal((6, 3, 3, 3)).astype(dtype),
            "0.bias": g.standard_normal(6).astype(dtype),
            "2.weight": g.standard_normal((4, 10)).astype(dtype)}


def make_grads(params, step, dtype=np.float32):
    g = np.random.default_rng(100 + step)
    return {k: g.standard_normal(p.shape).astype(dtype) for k, p in params.items()}


def run_ours(cls, kwargs, steps=STEPS, dtype=np.float32):
    params = make_params(dtype=dtype)
    held = {k: v for k, v in params.items()}
    opt = cls(params, **kwargs)
    for step in range(steps):
        opt.step(make_grads(params, step, dtype))
    for k, v in params.items():
        assert v is held[k] and v.dtype == dtype  # updated in place, dtype kept
    return params, opt


def run_torch(torch, cls_name, kwargs, steps=STEPS, dtype=np.float32):
    params = {k: torch.from_numpy(v).requires_grad_(True)
              for k, v in make_params(dtype=dtype).items()}
    opt = getattr(torch.optim, cls_name)(list(params.values()), **kwargs)
    for step in range(steps):
        for k, g in make_grads(params, step, dtype).items():
            params[k].grad = torch.from_numpy(g)
        opt.step()
    return {k: v.detach().numpy() for k, v in params.items()}


SGD_CASES = [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, weight_decay=1e-2),
    dict(lr=0.05, momentum=0.9, weight_decay=1e-2, nesterov=True),
    dict(lr=0.05, momentum=0.5, dampening=0.3),
    dict(lr=0.01, weight_decay=0.1),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kwargs", SGD_CASES, ids=str)
def test_sgd_matches_torch(torch, kwargs, dtype):
    ours, _ = run_ours(SGD, kwargs, dtype=dtype)
    ref = run_torch(torch, "SGD", kwargs, dtype=dtype)
    for k in ours:
        np.testing.assert_allclose(ours[k], ref[k], err_msg=k, **TOL)


@pytest.mark.parametrize("kwargs", SGD_CASES, ids=str)
def test_sgd_on_parameters_of_many_chunks_matches_torch_on_any_thread_count(torch, kwargs):
    """Parameters over one chunk take the parallel kernel: torch's numbers, and the same bits
    on 1 and 2 threads (each chunk is one iteration's)."""
    from numbaconv.kernels.cpu.elementwise import CHUNK

    rng = np.random.default_rng(7)
    start = rng.standard_normal(3 * CHUNK + 5).astype(np.float32)
    grads = [rng.standard_normal(start.size).astype(np.float32) for _ in range(3)]

    def trained():
        params = {"w": start.copy()}
        opt = SGD(params, **kwargs)
        for g in grads:
            opt.step({"w": g})
        return params["w"]

    results = on_1_and_2_threads(trained)
    np.testing.assert_array_equal(results[0], results[1])
    w = torch.from_numpy(start.copy()).requires_grad_(True)
    opt = torch.optim.SGD([w], **kwargs)
    for g in grads:
        w.grad = torch.from_numpy(g)
        opt.step()
    np.testing.assert_allclose(results[0], w.detach().numpy(), **TOL)


def test_sgd_refuses_parameters_its_kernel_cannot_update():
    with pytest.raises(TypeError, match="'w' is float16"):
        SGD({"w": np.zeros(4, np.float16)}, lr=0.1)
    with pytest.raises(TypeError, match="'w' is float32, not C-contiguous"):
        SGD({"w": np.zeros((4, 3), np.float32).T}, lr=0.1)


ADAM_CASES = [
    dict(),
    dict(lr=1e-2, weight_decay=1e-2),
    dict(lr=3e-2, betas=(0.3, 0.9), eps=1e-6),  # beta1 < 0.5: torch's other lerp formula
    dict(lr=1e-3, betas=(0.0, 0.99)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kwargs", ADAM_CASES, ids=str)
def test_adam_matches_torch(torch, kwargs, dtype):
    ours, opt = run_ours(Adam, kwargs, dtype=dtype)
    ref = run_torch(torch, "Adam", kwargs, dtype=dtype)
    for k in ours:
        np.testing.assert_allclose(ours[k], ref[k], err_msg=k, **TOL)
    assert opt.step_count == STEPS


def test_sgd_plain_update_by_hand():
    p = {"w": np.array([1.0, -2.0], np.float32)}
    opt = SGD(p, lr=0.5, momentum=0.9)
    opt.step({"w": np.array([1.0, 1.0], np.float32)})   # buf = g
    np.testing.assert_allclose(p["w"], [0.5, -2.5])
    opt.step({"w": np.array([1.0, 1.0], np.float32)})   # buf = 0.9 + 1
    np.testing.assert_allclose(p["w"], [0.5 - 0.95, -2.5 - 0.95], rtol=1e-6)


def test_adam_first_step_moves_each_weight_by_lr():
    # bias correction makes the first update lr * g / (|g| + eps') = lr * sign(g)
    p = {"w": np.array([0.0, 1.0, 2.0], np.float32)}
    Adam(p, lr=0.1).step({"w": np.array([3.0, -0.5, 1e-3], np.float32)})
    np.testing.assert_allclose(p["w"], [-0.1, 1.1, 1.9], rtol=1e-5)


@pytest.mark.parametrize("make", [
    lambda p: SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1, nesterov=True),
    lambda p: SGD(p, lr=0.1, momentum=0.9, dampening=0.5, weight_decay=0.1),
    lambda p: Adam(p, weight_decay=0.1),
])
def test_step_allocates_no_parameter_sized_temporaries(make):
    n = 1_000_000
    params = {"w": np.ones(n, np.float32), "b": np.ones(10, np.float32)}
    grads = {"w": np.full(n, 0.5, np.float32), "b": np.ones(10, np.float32)}
    opt = make(params)
    opt.step(grads)  # the first step allocates the state and the scratch buffers
    tracemalloc.start()
    try:
        opt.step(grads)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * n // 10, f"a step allocated {peak} bytes (a float32 parameter is {4 * n})"
    assert params["w"].dtype == np.float32


@pytest.mark.parametrize("cls,kwargs", [
    (SGD, dict(lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=True)),
    (Adam, dict(lr=1e-2, weight_decay=1e-3)),
])
def test_state_dict_round_trip_through_npz(tmp_path, cls, kwargs):
    straight, _ = run_ours(cls, kwargs, steps=6)

    params = make_params()
    opt = cls(params, **kwargs)
    for step in range(3):
        opt.step(make_grads(params, step))
    np.savez(tmp_path / "opt.npz", **opt.state_dict())
    saved = {k: v.copy() for k, v in params.items()}

    resumed_params = {k: v.copy() for k, v in saved.items()}
    resumed = cls(resumed_params, lr=123.0)  # hyperparameters come back from the state
    with np.load(tmp_path / "opt.npz") as state:
        resumed.load_state_dict(state)
    assert resumed.step_count == 3 and resumed.lr == kwargs["lr"]
    for step in range(3, 6):
        resumed.step(make_grads(resumed_params, step))
    for k in straight:
        np.testing.assert_array_equal(resumed_params[k], straight[k], err_msg=k)


def test_state_dict_is_a_copy_with_scalars():
    params = make_params()
    opt = Adam(params)
    opt.step(make_grads(params, 0))
    state = opt.state_dict()
    assert state["step"] == 1 and state["optimizer"] == "Adam"
    assert set(state) >= {"lr", "beta1", "beta2", "eps", "weight_decay",
                          "exp_avg.0.weight", "exp_avg_sq.2.weight"}
    state["exp_avg.0.weight"][...] = 99
    assert not np.any(opt.state["exp_avg"]["0.weight"] == 99)


def test_load_state_dict_errors():
    params = make_params()
    opt = SGD(params, lr=0.1, momentum=0.9)
    opt.step(make_grads(params, 0))
    state = opt.state_dict()
    bad = dict(state)
    bad["momentum_buffer.0.weight"] = np.zeros((6, 3), np.float32)
    bad["momentum_buffer.9.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError) as info:
        SGD(make_params(), lr=0.1, momentum=0.9).load_state_dict(bad)
    assert "momentum_buffer.0.weight" in str(info.value) and "(6, 3)" in str(info.value)
    assert "momentum_buffer.9.weight" in str(info.value)
    with pytest.raises(ValueError, match="state is for SGD, not Adam"):
        Adam(make_params()).load_state_dict(state)


def test_argument_and_gradient_checks():
    params = make_params()
    with pytest.raises(ValueError, match="Nesterov"):
        SGD(params, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="learning rate"):
        SGD(params, lr=-1)
    with pytest.raises(ValueError, match="beta"):
        Adam(params, betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="empty"):
        Adam({})
    with pytest.raises(TypeError, match="floating-point"):
        SGD({"w": np.zeros(3, np.int64)}, lr=0.1)
    opt = SGD(params, lr=0.1)
    grads = make_grads(params, 0)
    del grads["0.bias"]
    with pytest.raises(ValueError, match=r"missing \['0.bias'\]"):
        opt.step(grads)
    grads = make_grads(params, 0)
    grads["2.weight"] = grads["2.weight"].T
    with pytest.raises(ValueError, match="'2.weight' has shape"):
        opt.step(grads)


@pytest.mark.parametrize("make_opt", [lambda p: SGD(p, lr=0.5, momentum=0.9),
                                      lambda p: Adam(p, lr=0.05)])
def test_training_a_softmax_classifier_reduces_the_loss(make_opt):
    g = np.random.default_rng(0)
    centers = g.standard_normal((3, 5)) * 3
    labels = g.integers(0, 3, 300)
    x = (centers[labels] + g.standard_normal((300, 5))).astype(np.float32)
    net = Sequential(Linear(5, 3, rng=1))
    opt = make_opt(net.named_params())
    first = None
    for _ in range(60):
        loss, grad = softmax_cross_entropy(net.forward(x, training=True), labels)
        first = loss if first is None else first
        net.backward(grad)
        opt.step(net.named_grads())
    assert loss < 0.5 * first
    assert accuracy(net.forward(x), labels) > 0.9
