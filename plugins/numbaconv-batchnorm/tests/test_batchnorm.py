"""Tests of numbaconv-batchnorm: the layers against PyTorch and numbaconv.testing.check_layer,
the model, and the plugin's life inside numbaconv (registries, entry point, command, broken and
clashing plugins).

The plugin must be installed (``pip install -e plugins/numbaconv-batchnorm``): several tests
check what numbaconv finds through the entry point. PyTorch parity tests skip without torch,
except when ``CI`` is set, where a missing torch fails.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import textwrap

import numbaconv
import numpy as np
import pytest
from numbaconv.layers import Layer, ShapeError
from numbaconv.layers.containers import summary
from numbaconv.losses import softmax_cross_entropy
from numbaconv.optim import SGD
from numbaconv.registry import manager as plugins
from numbaconv.testing import check_layer

import numbaconv_batchnorm
from numbaconv_batchnorm import BatchNorm1d, BatchNorm2d, batch_norm, batch_norm_backward

TOL = {np.dtype(np.float32): dict(rtol=1e-5, atol=1e-5),
       np.dtype(np.float64): dict(rtol=1e-12, atol=1e-12)}


@pytest.fixture(scope="module")
def torch():
    if os.environ.get("CI"):
        import torch
    else:
        torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return torch


def close(got, expected, dtype, what):
    got = np.asarray(got)
    expected = np.asarray(expected)
    assert got.shape == expected.shape, f"{what}: shape {got.shape} != {expected.shape}"
    np.testing.assert_allclose(got.astype(np.float64), expected.astype(np.float64),
                               err_msg=what, **TOL[np.dtype(dtype)])


def to_np(tensor):
    return tensor.detach().cpu().numpy()


def make_pair(torch, cls, num_features, dtype, rng, **options):
    """A numbaconv layer and the torch layer of the same class with identical parameters."""
    ours = cls(num_features, dtype=dtype, **options)
    theirs = getattr(torch.nn, cls.__name__)(num_features, **options).to(
        {np.float32: torch.float32, np.float64: torch.float64}[dtype])
    if ours.affine:
        for name in ("weight", "bias"):
            value = rng.normal(1.0 if name == "weight" else 0.0, 0.5, size=num_features)
            ours.params[name][...] = value
            with torch.no_grad():
                getattr(theirs, name).copy_(torch.from_numpy(ours.params[name]))
    return ours, theirs


def step_both(torch, ours, theirs, x, grad_y, training):
    """One forward and backward through both layers; returns both sides' results."""
    y = ours.forward(x, training=training)
    grad_x = ours.backward(grad_y)
    theirs.train(training)
    tx = torch.from_numpy(x.copy()).requires_grad_()
    ty = theirs(tx)
    if theirs.affine:
        theirs.weight.grad = None
        theirs.bias.grad = None
    ty.backward(torch.from_numpy(grad_y))
    return (y, grad_x), (to_np(ty), to_np(tx.grad))


def assert_layers_agree(torch, ours, theirs, x, grad_y, training, dtype, what):
    (y, grad_x), (ty, tgrad_x) = step_both(torch, ours, theirs, x, grad_y, training)
    assert y.dtype == dtype and grad_x.dtype == dtype
    close(y, ty, dtype, f"{what}: y")
    close(grad_x, tgrad_x, dtype, f"{what}: grad_x")
    if ours.affine:
        close(ours.grads["weight"], to_np(theirs.weight.grad), dtype, f"{what}: grad weight")
        close(ours.grads["bias"], to_np(theirs.bias.grad), dtype, f"{what}: grad bias")
    if ours.track_running_stats:
        close(ours.running_mean, to_np(theirs.running_mean), dtype, f"{what}: running_mean")
        close(ours.running_var, to_np(theirs.running_var), dtype, f"{what}: running_var")
        assert int(ours.buffers["num_batches_tracked"]) == int(theirs.num_batches_tracked)


# ------------------------------------------------------------------------ parity with torch

SHAPES = [(BatchNorm2d, (4, 3, 5, 6)), (BatchNorm1d, (8, 5)), (BatchNorm1d, (4, 3, 7))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cls,shape", SHAPES, ids=["2d", "1d-NC", "1d-NCL"])
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
    for name, value in before.items():  # eval leaves the running statistics alone
        np.testing.assert_array_equal(ours.buffers[name], value, err_msg=name)


@pytest.mark.parametrize("options", [
    dict(affine=False),
    dict(track_running_stats=False),
    dict(momentum=None),
    dict(momentum=0.5, eps=1e-3),
], ids=["no-affine", "no-running-stats", "cumulative-average", "momentum-eps"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_options_match_torch(torch, options, dtype):
    rng = np.random.default_rng(1)
    shape = (3, 4, 4, 5)
    ours, theirs = make_pair(torch, BatchNorm2d, 4, dtype, rng, **options)
    for step, training in enumerate((True, True, True, False)):
        x = (rng.normal(size=shape) * 2 - 1).astype(dtype)
        grad_y = rng.normal(size=shape).astype(dtype)
        assert_layers_agree(torch, ours, theirs, x, grad_y, training, dtype,
                            f"{options} step {step} training={training}")
    assert set(ours.params) == ({"weight", "bias"} if ours.affine else set())
    assert (ours.buffers == {}) == (not ours.track_running_stats)


def test_functional_matches_torch(torch):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5, 3, 4)).astype(np.float64)
    rm, rv = rng.normal(size=3), rng.uniform(0.5, 2, size=3)
    w, b = rng.normal(size=3), rng.normal(size=3)
    trm, trv = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())
    y, mean, invstd = batch_norm(x, rm, rv, w, b, training=True, momentum=0.3, eps=1e-4)
    ty = torch.nn.functional.batch_norm(torch.from_numpy(x), trm, trv, torch.from_numpy(w),
                                        torch.from_numpy(b), training=True, momentum=0.3,
                                        eps=1e-4)
    close(y, to_np(ty), np.float64, "y")
    close(rm, trm.numpy(), np.float64, "running_mean updated in place")
    close(rv, trv.numpy(), np.float64, "running_var updated in place")
    close(mean, x.mean(axis=(0, 2)), np.float64, "save_mean")
    close(invstd, 1 / np.sqrt(x.var(axis=(0, 2)) + 1e-4), np.float64, "save_invstd")
    # backward of the training forward, against autograd through the same call
    tx, tw, tb = (torch.from_numpy(a.copy()).requires_grad_() for a in (x, w, b))
    ty = torch.nn.functional.batch_norm(tx, None, None, tw, tb, training=True, eps=1e-4)
    grad_y = rng.normal(size=x.shape)
    ty.backward(torch.from_numpy(grad_y))
    grads = batch_norm_backward(grad_y, x, mean, invstd, w, batch_stats=True)
    for got, tensor, name in zip(grads, (tx, tw, tb), ("x", "weight", "bias"), strict=True):
        close(got, to_np(tensor.grad), np.float64, f"grad {name}")
    # no weight/bias: scale 1, shift 0
    y, _, _ = batch_norm(x, rm, rv, training=False)
    ty = torch.nn.functional.batch_norm(torch.from_numpy(x), trm, trv, training=False)
    close(y, to_np(ty), np.float64, "eval without weight")


# ------------------------------------------------------------------------ finite differences

@pytest.mark.parametrize("training", [True, False], ids=["batch-stats", "running-stats"])
@pytest.mark.parametrize("cls,shape", [(BatchNorm2d, (2, 3, 3, 2)), (BatchNorm1d, (5, 3))],
                         ids=["2d", "1d"])
def test_the_layers_keep_the_layer_contract(cls, shape, training):
    """numbaconv.testing.check_layer: finite differences of the input and both parameters,
    float32 against float64, the spec and state round trips, thread-count independence."""
    rng = np.random.default_rng(3)
    layer = cls(shape[1])
    layer.params["weight"][...] = rng.normal(1, 0.5, size=shape[1])
    layer.params["bias"][...] = rng.normal(size=shape[1])
    layer.buffers["running_mean"][...] = rng.normal(size=shape[1])
    layer.buffers["running_var"][...] = rng.uniform(0.5, 2, size=shape[1])
    check_layer(layer, shape, training=training, layer_types=numbaconv.get_layers())


def test_batch_statistics_make_the_input_gradient_sum_to_zero_per_channel():
    rng = np.random.default_rng(4)
    layer = BatchNorm2d(3, dtype=np.float64)
    x = rng.normal(size=(2, 3, 3, 2))
    layer.forward(x, training=True)
    grad_x = layer.backward(rng.normal(size=x.shape))
    np.testing.assert_allclose(grad_x.sum(axis=(0, 2, 3)), 0, atol=1e-12)


# ------------------------------------------------------------------------ layer behaviour

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
    # the weights' gradients are overwritten, not accumulated
    a.forward(x, training=True)
    first = a.grads["weight"]
    g1 = a.backward(np.ones_like(x)).copy()
    a.forward(x, training=True)
    a.backward(np.ones_like(x))
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
    assert layer.output_shape((2, 3, 5, 5)) == (2, 3, 5, 5)
    assert BatchNorm1d(5).output_shape((2, 5, 7)) == (2, 5, 7)
    with pytest.raises(ShapeError, match="layer 1 .BatchNorm2d.: expects 6 channels"):
        numbaconv.Sequential([numbaconv.layers.Conv2d(1, 4, 3), BatchNorm2d(6)]) \
            .output_shape((1, 1, 8, 8))
    with pytest.raises(TypeError, match="float64 does not match the layer's dtype float32"):
        layer.forward(np.zeros((2, 3, 2, 2)))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        BatchNorm1d(3).forward(np.zeros((1, 3), np.float32), training=True)
    BatchNorm1d(3).forward(np.zeros((1, 3), np.float32))  # eval with one sample is fine
    empty = np.zeros((0, 3, 2, 2), np.float32)
    assert BatchNorm2d(3).forward(empty).shape == (0, 3, 2, 2)  # as PyTorch in eval
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        BatchNorm2d(3).forward(empty, training=True)
    with pytest.raises(RuntimeError, match="backward called before forward"):
        BatchNorm2d(3).backward(np.zeros((2, 3, 2, 2), np.float32))
    for bad in (dict(num_features=0), dict(num_features=2.5), dict(num_features=2, eps=-1),
                dict(num_features=2, momentum=1.5)):
        with pytest.raises(ValueError):
            BatchNorm2d(**bad)
    with pytest.raises(TypeError, match="float32 or float64"):
        BatchNorm2d(2, dtype=np.int32)
    layer.forward(np.ones((2, 3, 2, 2), np.float32), training=True)
    with pytest.raises(ValueError, match=r"grad_y must have the forward output's shape"):
        layer.backward(np.ones((2, 3, 2, 1), np.float32))
    with pytest.raises(ValueError, match="needs running_mean and running_var"):
        batch_norm(np.ones((2, 3)), training=False)


def test_config_round_trip_and_summary():
    layer = BatchNorm2d(4, eps=1e-3, momentum=None, affine=False, dtype=np.float64)
    cfg = layer.config()
    assert cfg == {"num_features": 4, "eps": 1e-3, "momentum": None, "affine": False,
                   "track_running_stats": True, "dtype": "float64"}
    clone = BatchNorm2d(**cfg)
    assert clone.config() == cfg and repr(clone) == repr(layer)
    assert repr(BatchNorm2d(6)) == ("BatchNorm2d(6, eps=1e-05, momentum=0.1, affine=True, "
                                    "track_running_stats=True)")
    model = numbaconv.build_model("lenet-bn", rng=0)
    rebuilt = numbaconv.Sequential.from_config(model.config(), layer_types=numbaconv.get_layers())
    assert rebuilt.config() == model.config()
    rows = summary(model, (2, 1, 28, 28))[1:]
    assert [r.output_shape for r in rows][:2] == [(2, 6, 24, 24), (2, 6, 24, 24)]
    assert rows[1].n_params == 12 and rows[1].flops == 2 * 2 * 6 * 24 * 24


THREADS_SCRIPT = textwrap.dedent("""
    import sys
    import numba
    import numpy as np
    from numbaconv_batchnorm import BatchNorm1d, BatchNorm2d

    rng = np.random.default_rng(7)
    out = {"threads": np.array(numba.get_num_threads())}
    for dtype in (np.float32, np.float64):
        for name, layer, shape in (("2d", BatchNorm2d(5, dtype=dtype), (9, 5, 11, 13)),
                                   ("1d", BatchNorm1d(7, dtype=dtype), (33, 7))):
            x = (rng.normal(size=shape) * 5 + 3).astype(dtype)
            g = rng.normal(size=shape).astype(dtype)
            key = f"{name}_{np.dtype(dtype).name}"
            out[key + "_y"] = layer.forward(x, training=True)
            out[key + "_gx"] = layer.backward(g)
            out[key + "_gw"] = layer.grads["weight"].copy()
            out[key + "_rv"] = layer.running_var.copy()
            out[key + "_eval"] = layer.forward(x)
            out[key + "_eval_gx"] = layer.backward(g)
    np.savez(sys.argv[1], **out)
""")


def test_results_do_not_depend_on_thread_count(tmp_path):
    results = []
    for threads in (1, 2):
        path = tmp_path / f"threads{threads}.npz"
        env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
        done = subprocess.run([sys.executable, "-c", THREADS_SCRIPT, str(path)], env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        results.append(dict(np.load(path)))
    one, two = results
    assert int(one.pop("threads")) == 1 and int(two.pop("threads")) == 2
    assert one.keys() == two.keys()
    for key in one:
        np.testing.assert_array_equal(one[key], two[key], err_msg=key)


# ------------------------------------------------------------------------ the model

def test_lenet_bn_registered_with_d2l_defaults():
    entry = plugins.model_entries()["lenet-bn"]
    assert entry.plugin == "batchnorm"
    assert entry.train_defaults == {"optimizer": "sgd", "lr": 0.1, "batch_size": 128,
                                    "epochs": 10}
    model = numbaconv.build_model("lenet-bn", rng=0)
    assert model.output_shape((3, 1, 28, 28)) == (3, 10)
    names = [type(layer).__name__ for layer in model]
    assert names == ["Conv2d", "BatchNorm2d", "Sigmoid", "AvgPool2d",
                     "Conv2d", "BatchNorm2d", "Sigmoid", "AvgPool2d", "Flatten",
                     "Linear", "BatchNorm1d", "Sigmoid", "Linear", "BatchNorm1d", "Sigmoid",
                     "Linear"]
    assert numbaconv.build_model("lenet-bn", num_classes=5).output_shape((1, 1, 28, 28)) \
        == (1, 5)


def test_lenet_bn_matches_torch(torch):
    nn = torch.nn
    model = numbaconv.build_model("lenet-bn", rng=5)
    reference = nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5), nn.BatchNorm2d(6), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), nn.BatchNorm2d(16), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2), nn.Flatten(),
        nn.Linear(256, 120), nn.BatchNorm1d(120), nn.Sigmoid(),
        nn.Linear(120, 84), nn.BatchNorm1d(84), nn.Sigmoid(), nn.Linear(84, 10))
    ours = model.named_params()
    for key, value in reference.state_dict().items():
        index, name = key.split(".")
        source = ours.get(key)
        if source is None:
            source = getattr(model[int(index)], "buffers", {})[name]
        value.copy_(torch.from_numpy(np.asarray(source)))
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
        t_loss = nn.functional.cross_entropy(t_logits, torch.from_numpy(labels))
        t_loss.backward()
        np.testing.assert_allclose(logits, to_np(t_logits), rtol=1e-4, atol=1e-5)
        assert loss == pytest.approx(t_loss.item(), rel=1e-5)
        t_grads = {k: to_np(p.grad) for k, p in reference.named_parameters()}
        assert t_grads.keys() == model.named_grads().keys()
        for key, g in model.named_grads().items():
            np.testing.assert_allclose(g, t_grads[key], rtol=1e-3, atol=1e-5, err_msg=key)
        for index, name in (("1", "running_mean"), ("10", "running_var")):
            np.testing.assert_allclose(model[int(index)].buffers[name],
                                       to_np(getattr(reference[int(index)], name)),
                                       rtol=1e-5, atol=1e-6)


def test_sgd_steps_on_lenet_bn_lower_the_loss():
    rng = np.random.default_rng(8)
    model = numbaconv.build_model("lenet-bn", rng=8)
    x = rng.normal(size=(32, 1, 28, 28)).astype(np.float32)
    labels = rng.integers(0, 10, size=32)
    optimizer = SGD(model.named_params(),
                    lr=plugins.model_entries()["lenet-bn"].train_defaults["lr"])
    losses = []
    for _ in range(8):
        loss, grad = softmax_cross_entropy(model.forward(x, training=True), labels)
        losses.append(loss)
        model.backward(grad)
        optimizer.step(model.named_grads())
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.9 * losses[0], losses
    # training moved the running statistics of every batch-norm layer
    for layer in model:
        if isinstance(layer, (BatchNorm1d, BatchNorm2d)):
            assert int(layer.buffers["num_batches_tracked"]) == 8
            assert not np.allclose(layer.running_mean, 0)


def test_buffers_carry_the_running_statistics_through_a_checkpoint(tmp_path):
    """The documented recipe: save ``params`` and ``buffers`` by ``index.name``, restore with
    ``np.copyto`` into a fresh model, and evaluation gives the same logits."""
    rng = np.random.default_rng(9)
    model = numbaconv.build_model("lenet-bn", rng=1)
    x = rng.normal(size=(16, 1, 28, 28)).astype(np.float32)
    for _ in range(3):
        model.forward(x * rng.uniform(0.5, 2) + rng.normal(), training=True)
    expected = model.forward(x)

    def state(m):
        return {f"{i}.{k}": v for i, layer in enumerate(m)
                for k, v in {**layer.params, **getattr(layer, "buffers", {})}.items()}

    np.savez(tmp_path / "ckpt.npz", **{k: v.copy() for k, v in state(model).items()})
    fresh = numbaconv.build_model("lenet-bn", rng=2)
    assert not np.allclose(fresh.forward(x), expected)
    with np.load(tmp_path / "ckpt.npz") as saved:
        target = state(fresh)
        assert set(saved.files) == set(target)
        assert "1.running_var" in target and "13.num_batches_tracked" in target
        for key, array in target.items():
            np.copyto(array, saved[key])
    np.testing.assert_array_equal(fresh.forward(x), expected)


# ------------------------------------------------------------------------ the plugin

def test_registered_through_the_entry_point():
    layers = numbaconv.get_layers()
    assert layers["BatchNorm2d"] is BatchNorm2d and layers["BatchNorm1d"] is BatchNorm1d
    assert "Conv2d" in layers  # the built-ins are still there
    assert set(numbaconv.get_models()) >= {"lenet", "lenet-bn"}
    assert plugins.layer_entries()["BatchNorm2d"][1] == "batchnorm"
    (eps,) = [e for e in importlib.metadata.entry_points(group="numbaconv")
              if e.name == "batchnorm"]
    assert eps.value == "numbaconv_batchnorm" and eps.load() is numbaconv_batchnorm


def test_plugin_info_names_package_and_version():
    info = {item["name"]: item for item in plugins.plugin_info()}
    assert "batchnorm" in info, info
    assert info["batchnorm"]["hooks"] == ["register_commands", "register_layers",
                                          "register_models"]
    assert info["batchnorm"]["package"] == "numbaconv-batchnorm", info["batchnorm"]
    assert info["batchnorm"]["version"] == importlib.metadata.version("numbaconv-batchnorm")


@pytest.mark.parametrize("allowed,expected", [("", False), ("batchnorm", True),
                                              (" other , batchnorm ", True), ("other", False)])
def test_numbaconv_load_plugins_limits_entry_points(allowed, expected):
    code = ("import numbaconv; layers = numbaconv.get_layers(); "
            "assert 'Conv2d' in layers; print('BatchNorm2d' in layers, "
            "'lenet-bn' in numbaconv.get_models())")
    env = dict(os.environ, NUMBACONV_LOAD_PLUGINS=allowed)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(expected)] * 2


def test_broken_plugin_warns_and_the_rest_still_loads(tmp_path, monkeypatch):
    # A real distribution on sys.path whose numbaconv entry point fails to import.
    dist_info = tmp_path / "undo_broken-0.0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: undo-broken\n"
                                        "Version: 0.0.1\n")
    (dist_info / "entry_points.txt").write_text("[numbaconv]\nundo-broken = undo_broken_mod\n")
    (tmp_path / "undo_broken_mod.py").write_text("raise ImportError('deliberately broken')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("NUMBACONV_LOAD_PLUGINS", raising=False)
    monkeypatch.setattr(plugins, "_loaded", False)  # load the entry points again
    try:
        with pytest.warns(UserWarning, match=r"'undo-broken'.*deliberately broken"):
            layers = numbaconv.get_layers()
        assert plugins.pm.get_plugin("undo-broken") is None
        assert layers["BatchNorm2d"] is BatchNorm2d and "Conv2d" in layers
        assert "lenet-bn" in numbaconv.get_models()
    finally:
        sys.modules.pop("undo_broken_mod", None)
        if plugins.pm.get_plugin("undo-broken") is not None:
            plugins.pm.unregister(name="undo-broken")


class _ClashingLayers:
    @numbaconv.hookimpl
    def register_layers(self, register):
        register(type("BatchNorm2d", (Layer,), {}))


class _ClashingModels:
    @numbaconv.hookimpl
    def register_models(self, register):
        register("lenet-bn", lambda: None)


@pytest.mark.parametrize("plugin,kind,name,lookup", [
    (_ClashingLayers, "layer", "BatchNorm2d", numbaconv.get_layers),
    (_ClashingModels, "model", "lenet-bn", numbaconv.get_models),
], ids=["layer", "model"])
def test_two_plugins_claiming_a_name_raise(plugin, kind, name, lookup):
    plugins.load_plugins()
    plugins.pm.register(plugin(), name="undo-clash")
    try:
        with pytest.raises(plugins.RegistryError) as error:
            lookup()
        message = str(error.value)
        assert f"{kind} {name!r}" in message
        assert "'batchnorm'" in message and "'undo-clash'" in message, message
    finally:
        plugins.pm.unregister(name="undo-clash")
    assert name in lookup()


def test_bn_info_command():
    click = pytest.importorskip("click")
    from click.testing import CliRunner

    @click.group()
    def cli():
        pass

    numbaconv_batchnorm.register_commands(cli=cli)
    result = CliRunner().invoke(cli, ["bn-info"])
    assert result.exit_code == 0, result.output
    version = importlib.metadata.version("numbaconv-batchnorm")
    assert f"numbaconv-batchnorm {version}" in result.output
    for text in ("BatchNorm1d", "BatchNorm2d", "lenet-bn", "lr=0.1", "batch_size=128"):
        assert text in result.output


def test_bn_info_in_the_numbaconv_cli():
    """The real command line: ``python -m numbaconv bn-info`` finds the plugin's command."""
    if importlib.util.find_spec("numbaconv.cli") is None:
        pytest.skip("numbaconv has no command line yet")
    done = subprocess.run([sys.executable, "-m", "numbaconv", "bn-info"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "BatchNorm2d" in done.stdout and "lenet-bn" in done.stdout
