"""Batch normalization in the core: BatchNorm1d/2d and functional.batch_norm(_backward) against
PyTorch, numbaconv.testing.check_layer, the running statistics in the buffers (and so in
checkpoints), and the lenet-bn model against the same network in PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
from support import require_torch

import numbaconv
from numbaconv import functional as F
from numbaconv.layers import (
    LAYER_TYPES,
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    Sequential,
    ShapeError,
)
from numbaconv.layers.containers import summary
from numbaconv.losses import softmax_cross_entropy
from numbaconv.optim import SGD
from numbaconv.registry import manager as plugins
from numbaconv.testing import check_layer

TOL = {np.dtype(np.float32): dict(rtol=1e-5, atol=1e-5),
       np.dtype(np.float64): dict(rtol=1e-12, atol=1e-12)}


@pytest.fixture(scope="module")
def torch():
    return require_torch()


def close(got, expected, dtype, what):
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.shape == expected.shape, f"{what}: shape {got.shape} != {expected.shape}"
    np.testing.assert_allclose(got.astype(np.float64), expected.astype(np.float64),
                               err_msg=what, **TOL[np.dtype(dtype)])


def to_np(tensor):
    return tensor.detach().cpu().numpy()


def make_pair(torch, cls, num_features, dtype, rng, **options):
    """A numbaconv layer and the torch layer of the same class with the same parameters."""
    ours = cls(num_features, dtype=dtype, **options)
    theirs = getattr(torch.nn, cls.__name__)(num_features, **options).to(
        {np.float32: torch.float32, np.float64: torch.float64}[dtype])
    for name, param in ours.params.items():
        param[...] = rng.normal(1.0 if name == "weight" else 0.0, 0.5, size=num_features)
        with torch.no_grad():
            getattr(theirs, name).copy_(torch.from_numpy(param))
    return ours, theirs


def assert_layers_agree(torch, ours, theirs, x, grad_y, training, dtype, what):
    y = ours.forward(x, training=training)
    grad_x = ours.backward(grad_y)
    theirs.train(training)
    tx = torch.from_numpy(x.copy()).requires_grad_()
    ty = theirs(tx)
    ty.backward(torch.from_numpy(grad_y))
    assert y.dtype == dtype and grad_x.dtype == dtype
    close(y, to_np(ty), dtype, f"{what}: y")
    close(grad_x, to_np(tx.grad), dtype, f"{what}: grad_x")
    for name, grad in ours.grads.items():
        close(grad, to_np(getattr(theirs, name).grad), dtype, f"{what}: grad {name}")
        getattr(theirs, name).grad = None
    if ours.track_running_stats:
        for name in ("running_mean", "running_var"):
            close(ours.buffers[name], to_np(getattr(theirs, name)), dtype, f"{what}: {name}")
        assert int(ours.buffers["num_batches_tracked"]) == int(theirs.num_batches_tracked)


# ------------------------------------------------------------------------ parity with torch

# (N, C, 1, 1) and (N, C) run the row kernels; 70 channels make two blocks of them
SHAPES = [(BatchNorm2d, (4, 3, 5, 6)), (BatchNorm2d, (5, 70, 1, 1)), (BatchNorm1d, (8, 5)),
          (BatchNorm1d, (6, 70)), (BatchNorm1d, (4, 3, 7))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cls,shape", SHAPES, ids=["2d", "2d-1x1", "1d-NC", "1d-NC-wide",
                                                   "1d-NCL"])
def test_training_steps_then_eval_match_torch(torch, cls, shape, dtype):
    rng = np.random.default_rng(0)
    ours, theirs = make_pair(torch, cls, shape[1], dtype, rng)
    for step in range(3):
        # shifted and scaled per channel, so that the running statistics move visibly
        shift = rng.normal(0, 2, size=(1, shape[1]) + (1,) * (len(shape) - 2))
        x = (rng.normal(size=shape) * 3 + shift).astype(dtype)
        grad_y = rng.normal(size=shape).astype(dtype)
        assert_layers_agree(torch, ours, theirs, x, grad_y, True, dtype, f"train step {step}")
    assert not np.allclose(ours.running_mean, 0)
    x = (rng.normal(size=shape) * 2 + 1).astype(dtype)
    grad_y = rng.normal(size=shape).astype(dtype)
    before = {k: v.copy() for k, v in ours.buffers.items()}
    assert_layers_agree(torch, ours, theirs, x, grad_y, False, dtype, "eval")
    for name, value in before.items():  # evaluation leaves the running statistics alone
        np.testing.assert_array_equal(ours.buffers[name], value, err_msg=name)


@pytest.mark.parametrize("options", [
    dict(affine=False),
    dict(track_running_stats=False),
    dict(momentum=None),
    dict(momentum=0.5, eps=1e-3),
    dict(bias=False),
], ids=["no-affine", "no-running-stats", "cumulative-average", "momentum-eps", "no-bias"])
@pytest.mark.parametrize("shape", [(3, 4, 4, 5), (6, 4, 1, 1)], ids=["planes", "rows"])
def test_options_match_torch(torch, options, shape):
    rng = np.random.default_rng(1)
    ours, theirs = make_pair(torch, BatchNorm2d, 4, np.float64, rng, **options)
    for step, training in enumerate((True, True, True, False)):
        x = (rng.normal(size=shape) * 2 - 1).astype(np.float64)
        grad_y = rng.normal(size=shape)
        assert_layers_agree(torch, ours, theirs, x, grad_y, training, np.float64,
                            f"{options} step {step} training={training}")
    assert set(ours.params) == {name for name, _ in theirs.named_parameters()}
    assert (ours.buffers == {}) == (not ours.track_running_stats)


def test_functional_matches_torch(torch):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5, 3, 4))
    rm, rv = rng.normal(size=3), rng.uniform(0.5, 2, size=3)
    w, b = rng.normal(size=3), rng.normal(size=3)
    trm, trv = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())
    count = np.zeros((), np.int64)
    y, mean, invstd = F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.3, eps=1e-4,
                                   num_batches_tracked=count)
    ty = torch.nn.functional.batch_norm(torch.from_numpy(x), trm, trv, torch.from_numpy(w),
                                        torch.from_numpy(b), training=True, momentum=0.3,
                                        eps=1e-4)
    close(y, to_np(ty), np.float64, "y")
    close(rm, trm.numpy(), np.float64, "running_mean updated in place")
    close(rv, trv.numpy(), np.float64, "running_var updated in place")
    assert int(count) == 1
    close(mean, x.mean(axis=(0, 2)), np.float64, "save_mean")
    close(invstd, 1 / np.sqrt(x.var(axis=(0, 2)) + 1e-4), np.float64, "save_invstd")
    tx, tw, tb = (torch.from_numpy(a.copy()).requires_grad_() for a in (x, w, b))
    ty = torch.nn.functional.batch_norm(tx, None, None, tw, tb, training=True, eps=1e-4)
    grad_y = rng.normal(size=x.shape)
    ty.backward(torch.from_numpy(grad_y))
    out_w, out_b = np.empty(3), np.empty(3)
    grads = F.batch_norm_backward(grad_y, x, mean, invstd, w, batch_stats=True,
                                  grad_weight=out_w, grad_bias=out_b)
    assert grads[1] is out_w and grads[2] is out_b  # written into the given arrays
    for got, tensor, name in zip(grads, (tx, tw, tb), ("x", "weight", "bias"), strict=True):
        close(got, to_np(tensor.grad), np.float64, f"grad {name}")
    skipped = F.batch_norm_backward(grad_y, x, mean, invstd, w, need_input_grad=False)
    assert skipped[0] is None
    np.testing.assert_array_equal(skipped[1], grads[1])
    # no weight or bias: scale 1, shift 0; evaluation by the running statistics
    y, _, _ = F.batch_norm(x, rm, rv, training=False)
    ty = torch.nn.functional.batch_norm(torch.from_numpy(x), trm, trv, training=False)
    close(y, to_np(ty), np.float64, "eval without weight")


def test_cumulative_average_counts_the_batches():
    """momentum=None: after k batches the running mean is the plain mean of their means."""
    rng = np.random.default_rng(3)
    layer = BatchNorm1d(2, momentum=None, dtype=np.float64)
    means = []
    for _ in range(4):
        x = rng.normal(size=(6, 2)) + rng.normal(size=2)
        means.append(x.mean(axis=0))
        layer.forward(x, training=True)
    np.testing.assert_allclose(layer.running_mean, np.mean(means, axis=0), rtol=1e-12)
    assert int(layer.buffers["num_batches_tracked"]) == 4
    with pytest.raises(ValueError, match="needs num_batches_tracked"):
        F.batch_norm(np.ones((3, 2)), np.zeros(2), np.ones(2), training=True, momentum=None)


# ------------------------------------------------------------------------ the layer contract

@pytest.mark.parametrize("training", [True, False], ids=["batch-stats", "running-stats"])
@pytest.mark.parametrize("cls,shape", [(BatchNorm2d, (2, 3, 3, 2)), (BatchNorm1d, (5, 3)),
                                       (BatchNorm1d, (3, 66))], ids=["2d", "1d", "1d-wide"])
def test_the_layers_keep_the_layer_contract(cls, shape, training):
    """Finite differences of the input and both parameters, float32 against float64, the spec
    and state round trips, results independent of the thread count."""
    rng = np.random.default_rng(3)
    layer = cls(shape[1])
    layer.params["weight"][...] = rng.normal(1, 0.5, size=shape[1])
    layer.params["bias"][...] = rng.normal(size=shape[1])
    layer.buffers["running_mean"][...] = rng.normal(size=shape[1])
    layer.buffers["running_var"][...] = rng.uniform(0.5, 2, size=shape[1])
    check_layer(layer, shape, training=training, points=12)


def test_batch_statistics_make_the_input_gradient_sum_to_zero_per_channel():
    rng = np.random.default_rng(4)
    layer = BatchNorm2d(3, dtype=np.float64)
    x = rng.normal(size=(2, 3, 3, 2))
    layer.forward(x, training=True)
    grad_x = layer.backward(rng.normal(size=x.shape))
    np.testing.assert_allclose(grad_x.sum(axis=(0, 2, 3)), 0, atol=1e-12)


def test_layout_and_state_handling():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 2, 4, 5)).astype(np.float32)
    a, b = BatchNorm2d(2), BatchNorm2d(2)
    running = a.running_mean
    y = a.forward(x, training=True)
    strided = np.asfortranarray(x)[:, :, ::-1, :][:, :, ::-1, :]
    assert not strided.flags.c_contiguous
    np.testing.assert_array_equal(b.forward(strided, training=True), y)
    np.testing.assert_array_equal(a.backward(x), b.backward(np.asfortranarray(x)))
    assert a.running_mean is running, "running statistics must be updated in place"
    assert int(a.buffers["num_batches_tracked"]) == 1
    a.reset_running_stats()
    np.testing.assert_array_equal(a.running_mean, 0)
    np.testing.assert_array_equal(a.running_var, 1)
    assert int(a.buffers["num_batches_tracked"]) == 0
    # the parameter gradients are overwritten in place, not accumulated
    a.forward(x, training=True)
    first = a.grads["weight"]
    g1 = a.backward(np.ones_like(x)).copy()
    a.forward(x, training=True)
    assert a.backward(np.ones_like(x), need_input_grad=False) is None
    assert a.grads["weight"] is first
    np.testing.assert_array_equal(a.backward(np.ones_like(x)), g1)


def test_shape_and_argument_errors():
    layer = BatchNorm2d(3)
    with pytest.raises(ShapeError, match=r"expects 3 channels on axis 1, got 4 from shape "
                                         r"\(2, 4, 5, 5\)"):
        layer.output_shape((2, 4, 5, 5))
    with pytest.raises(ShapeError, match=r"4-D \(N, C, H, W\) input, got shape \(2, 3\)"):
        layer.forward(np.zeros((2, 3), np.float32))
    with pytest.raises(ShapeError, match=r"BatchNorm1d\(5.*got 3 from shape \(8, 3\)"):
        BatchNorm1d(5).output_shape((8, 3))
    assert BatchNorm1d(5).output_shape((2, 5, 7)) == (2, 5, 7)
    with pytest.raises(ShapeError, match="layer 1 .BatchNorm2d.: expects 6 channels"):
        Sequential([Conv2d(1, 4, 3), BatchNorm2d(6)]).output_shape((1, 1, 8, 8))
    with pytest.raises(TypeError, match="float64 does not match the layer's dtype float32"):
        layer.forward(np.zeros((2, 3, 2, 2)))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        BatchNorm1d(3).forward(np.zeros((1, 3), np.float32), training=True)
    BatchNorm1d(3).forward(np.zeros((1, 3), np.float32))  # evaluation with one sample is fine
    empty = np.zeros((0, 3, 2, 2), np.float32)
    assert BatchNorm2d(3).forward(empty).shape == (0, 3, 2, 2)  # as PyTorch in evaluation
    with pytest.raises(RuntimeError, match="backward called before forward"):
        BatchNorm2d(3).backward(np.zeros((2, 3, 2, 2), np.float32))
    for bad in (dict(num_features=0), dict(num_features=2.5), dict(num_features=2, eps=-1),
                dict(num_features=2, momentum=1.5)):
        with pytest.raises(ValueError):
            BatchNorm2d(**bad)
    with pytest.raises(TypeError, match="float32 or float64"):
        BatchNorm2d(2, dtype=np.int32)
    layer.forward(np.ones((2, 3, 2, 2), np.float32), training=True)
    with pytest.raises(ValueError, match=r"grad_y must have x's shape"):
        layer.backward(np.ones((2, 3, 2, 1), np.float32))
    with pytest.raises(ValueError, match="needs running_mean and running_var"):
        F.batch_norm(np.ones((2, 3)), training=False)
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\)"):
        F.batch_norm(np.ones((2, 3)), weight=np.ones(4), training=True)
    with pytest.raises(TypeError, match="bias has dtype float32 but x has dtype float64"):
        F.batch_norm(np.ones((2, 3)), bias=np.ones(3, np.float32), training=True)
    with pytest.raises(ValueError, match="num_batches_tracked must be a 0-d int64"):
        F.batch_norm(np.ones((2, 3)), np.zeros(3), np.ones(3), training=True,
                     num_batches_tracked=np.zeros(1, np.int64))
    with pytest.raises(ValueError, match=r"save_invstd must have shape \(3,\)"):
        F.batch_norm_backward(np.ones((2, 3)), np.ones((2, 3)), np.zeros(3), np.ones(2))


def test_config_repr_registry_and_summary(torch):
    layer = BatchNorm2d(4, eps=1e-3, momentum=None, affine=False, dtype=np.float64)
    cfg = layer.config()
    assert cfg == {"num_features": 4, "eps": 1e-3, "momentum": None, "affine": False,
                   "bias": True, "track_running_stats": True, "dtype": "float64"}
    assert BatchNorm2d(**cfg).config() == cfg
    for ours, theirs in ((BatchNorm2d(6), torch.nn.BatchNorm2d(6)),
                         (BatchNorm1d(3, momentum=None, affine=False),
                          torch.nn.BatchNorm1d(3, momentum=None, affine=False)),
                         (BatchNorm2d(2, bias=False), torch.nn.BatchNorm2d(2, bias=False))):
        assert repr(ours) == repr(theirs)
    layers = numbaconv.get_layers()
    assert LAYER_TYPES["BatchNorm2d"] is BatchNorm2d and layers["BatchNorm1d"] is BatchNorm1d
    assert plugins.layer_entries()["BatchNorm2d"][1] == "numbaconv.registry.builtin"
    model = numbaconv.build_model("lenet-bn", rng=0)
    rebuilt = Sequential.from_config(model.config(), layer_types=layers)
    assert rebuilt.config() == model.config()
    rows = summary(model, (2, 1, 28, 28))[1:]
    assert [r.output_shape for r in rows][:2] == [(2, 6, 24, 24), (2, 6, 24, 24)]
    assert rows[1].n_params == 12 and rows[1].flops == 2 * 2 * 6 * 24 * 24


# ------------------------------------------------------------------------ the model

def torch_lenet_bn(torch):
    """D2L 8.5's BNLeNet (its lazy layers written out for a 1x28x28 input)."""
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5), nn.BatchNorm2d(6), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), nn.BatchNorm2d(16), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2), nn.Flatten(),
        nn.Linear(256, 120), nn.BatchNorm1d(120), nn.Sigmoid(),
        nn.Linear(120, 84), nn.BatchNorm1d(84), nn.Sigmoid(), nn.Linear(84, 10))


def test_lenet_bn_registered_with_d2l_defaults(torch):
    entry = plugins.model_entries()["lenet-bn"]
    assert entry.plugin == "numbaconv.registry.builtin"
    assert entry.train_defaults == {"optimizer": "sgd", "lr": 0.1, "batch_size": 128,
                                    "epochs": 10}
    model = numbaconv.build_model("lenet-bn", rng=0)
    assert model.output_shape((3, 1, 28, 28)) == (3, 10)
    assert [type(layer).__name__ for layer in model] == [
        "Conv2d", "BatchNorm2d", "Sigmoid", "AvgPool2d", "Conv2d", "BatchNorm2d", "Sigmoid",
        "AvgPool2d", "Flatten", "Linear", "BatchNorm1d", "Sigmoid", "Linear", "BatchNorm1d",
        "Sigmoid", "Linear"]
    assert model.num_params() == sum(p.numel() for p in torch_lenet_bn(torch).parameters())
    assert numbaconv.build_model("lenet-bn", num_classes=5).output_shape((1, 1, 28, 28)) \
        == (1, 5)


def test_lenet_bn_matches_torch(torch):
    model = numbaconv.build_model("lenet-bn", rng=5)
    reference = torch_lenet_bn(torch)
    state = model.state_dict()
    assert state.keys() == reference.state_dict().keys()  # buffers included, PyTorch's keys
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    rng = np.random.default_rng(6)
    x = rng.normal(size=(16, 1, 28, 28)).astype(np.float32)
    labels = rng.integers(0, 10, size=16)
    for training in (True, False):
        reference.train(training)
        reference.zero_grad()
        logits = model.forward(x, training=training)
        loss, grad = softmax_cross_entropy(logits, labels)
        model.backward(grad)
        t_logits = reference(torch.from_numpy(x))
        t_loss = torch.nn.functional.cross_entropy(t_logits, torch.from_numpy(labels))
        t_loss.backward()
        np.testing.assert_allclose(logits, to_np(t_logits), rtol=1e-4, atol=1e-5)
        assert loss == pytest.approx(t_loss.item(), rel=1e-5)
        t_grads = {k: to_np(p.grad) for k, p in reference.named_parameters()}
        assert t_grads.keys() == model.named_grads().keys()
        for key, g in model.named_grads().items():
            np.testing.assert_allclose(g, t_grads[key], rtol=1e-3, atol=1e-5, err_msg=key)
        t_state = reference.state_dict()
        for key, value in model.named_buffers().items():
            np.testing.assert_allclose(value, to_np(t_state[key]), rtol=1e-5, atol=1e-6,
                                       err_msg=key)


def test_sgd_steps_on_lenet_bn_lower_the_loss():
    rng = np.random.default_rng(8)
    model = numbaconv.build_model("lenet-bn", rng=8)
    x = rng.normal(size=(32, 1, 28, 28)).astype(np.float32)
    labels = rng.integers(0, 10, size=32)
    optimizer = SGD(model.named_params(), lr=0.1)
    losses = []
    for _ in range(8):
        loss, grad = softmax_cross_entropy(model.forward(x, training=True), labels)
        losses.append(loss)
        model.backward(grad, need_input_grad=False)
        optimizer.step(model.named_grads())
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.9 * losses[0], losses
    for layer in model:  # training moved the running statistics of every batch norm
        if isinstance(layer, (BatchNorm1d, BatchNorm2d)):
            assert int(layer.buffers["num_batches_tracked"]) == 8
            assert not np.allclose(layer.running_mean, 0)


def test_state_dict_carries_the_running_statistics(tmp_path):
    rng = np.random.default_rng(9)
    model = numbaconv.build_model("lenet-bn", rng=1)
    x = rng.normal(size=(16, 1, 28, 28)).astype(np.float32)
    for _ in range(3):
        model.forward(x * rng.uniform(0.5, 2) + rng.normal(), training=True)
    expected = model.forward(x)
    np.savez(tmp_path / "state.npz", **model.state_dict())
    fresh = numbaconv.build_model("lenet-bn", rng=2)
    assert not np.allclose(fresh.forward(x), expected)
    with np.load(tmp_path / "state.npz") as saved:
        assert "1.running_var" in saved.files and saved["13.num_batches_tracked"].shape == ()
        fresh.load_state_dict(saved)
    np.testing.assert_array_equal(fresh.forward(x), expected)
