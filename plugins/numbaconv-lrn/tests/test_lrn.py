"""Tests of numbaconv-lrn: LocalResponseNorm against PyTorch and numbaconv.testing.check_layer,
its CUDA kernels (under Numba's CUDA simulator, and compiled by the real CUDA compiler), the
lenet-lrn model, and the plugin's life inside numbaconv (registries, entry point, command,
broken and clashing plugins).

The plugin must be installed (``pip install -e plugins/numbaconv-lrn``): several tests check
what numbaconv finds through the entry point. PyTorch parity tests skip without torch, except
when ``CI`` is set, where a missing torch fails.
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
from numbaconv.losses import softmax_cross_entropy
from numbaconv.optim import SGD
from numbaconv.registry import manager as plugins
from numbaconv.testing import check_layer

import numbaconv_lrn
from numbaconv_lrn import LocalResponseNorm, local_response_norm, local_response_norm_backward
from numbaconv_lrn.models import alexnet_lrn_layer

TOL = {np.dtype(np.float32): dict(rtol=1e-5, atol=1e-6),
       np.dtype(np.float64): dict(rtol=1e-12, atol=1e-13)}


@pytest.fixture(scope="module")
def torch():
    if os.environ.get("CI"):
        import torch
    else:
        torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return torch


def to_np(tensor):
    return tensor.detach().cpu().numpy()


def run_python(code: str, env=None, timeout=600):
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=timeout)


# ------------------------------------------------------------------------ parity with torch

@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", [(2, 7, 3, 4), (3, 4, 5), (2, 3, 2, 2, 2)],
                         ids=["NCHW", "NCL", "NCDHW"])
@pytest.mark.parametrize("size", [1, 2, 5, 9])
def test_functions_match_torch(torch, shape, size, dtype):
    """Odd and even windows, one wider than the channels; large inputs so that the
    normalization matters."""
    rng = np.random.default_rng(size)
    x = (rng.normal(size=shape) * 10).astype(dtype)
    args = dict(alpha=5e-3, beta=0.75, k=2.0)
    tx = torch.from_numpy(x).requires_grad_()
    ty = torch.nn.functional.local_response_norm(tx, size, **args)
    y, scale = local_response_norm(x, size, **args)
    assert y.dtype == scale.dtype == dtype and y.shape == scale.shape == shape
    np.testing.assert_allclose(y, to_np(ty), **TOL[np.dtype(dtype)])
    grad_y = rng.normal(size=shape).astype(dtype)
    ty.backward(torch.from_numpy(grad_y))
    grad_x = local_response_norm_backward(grad_y, x, y, scale, size, args["alpha"],
                                          args["beta"])
    np.testing.assert_allclose(grad_x, to_np(tx.grad), **TOL[np.dtype(dtype)])


def test_layer_matches_torch_and_keeps_no_state(torch):
    rng = np.random.default_rng(1)
    ours, theirs = alexnet_lrn_layer(), torch.nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75,
                                                                   k=2.0)
    assert repr(ours) == repr(theirs)
    assert repr(LocalResponseNorm(3)) == repr(torch.nn.LocalResponseNorm(3))
    x = np.abs(rng.normal(size=(2, 8, 4, 4)) * 30).astype(np.float32)  # rectified maps
    tx = torch.from_numpy(x).requires_grad_()
    ty = theirs(tx)
    np.testing.assert_allclose(ours.forward(x), to_np(ty), rtol=1e-5, atol=1e-6)
    grad_y = rng.normal(size=x.shape).astype(np.float32)
    ty.backward(torch.from_numpy(grad_y))
    np.testing.assert_allclose(ours.backward(grad_y), to_np(tx.grad), rtol=1e-5, atol=1e-6)
    assert ours.params == {} and ours.buffers == {}


@pytest.mark.parametrize("layer,shape", [
    (LocalResponseNorm(3, alpha=0.5, beta=0.75, k=2.0), (2, 5, 3, 2)),
    (LocalResponseNorm(4, alpha=1.0, beta=1.5, k=1.0), (3, 3, 4)),
    (alexnet_lrn_layer(), (2, 6, 2, 3)),
], ids=["odd", "even-wide", "alexnet"])
def test_the_layer_keeps_the_layer_contract(layer, shape):
    """numbaconv.testing.check_layer: finite differences of the input, float32 against
    float64, the spec and state round trips, the same bits on 1 thread and on all."""
    check_layer(layer, shape, layer_types=numbaconv.get_layers(),
                input_values=lambda rng, s: rng.normal(size=s) * 2)


def test_shape_and_argument_errors():
    layer = LocalResponseNorm(2)
    with pytest.raises(ShapeError, match=r"LocalResponseNorm\(2.*expects an \(N, C, \*spatial\) "
                                         r"input, got shape \(4, 3\)"):
        layer.forward(np.zeros((4, 3), np.float32))
    assert layer.output_shape((1, 2, 3)) == (1, 2, 3)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="size must be a positive int"):
            LocalResponseNorm(bad)
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        local_response_norm(np.ones((1, 2, 2)), 2, alpha=float("nan"))
    with pytest.raises(TypeError, match="float32 or float64"):
        local_response_norm(np.ones((1, 2, 2), np.int64), 2)
    with pytest.raises(TypeError, match="numpy.ndarray or a CUDA device array"):
        local_response_norm([[[1.0]]], 2)
    x = np.ones((1, 2, 3))
    y, scale = local_response_norm(x, 2)
    with pytest.raises(ValueError, match=r"grad_y must have x's shape \(1, 2, 3\)"):
        local_response_norm_backward(np.ones((1, 2, 2)), x, y, scale, 2)
    with pytest.raises(TypeError, match="scale has dtype float32 but x has dtype float64"):
        local_response_norm_backward(y, x, y, scale.astype(np.float32), 2)
    with pytest.raises(RuntimeError, match="backward called before forward"):
        LocalResponseNorm(2).backward(np.ones((1, 2, 3)))
    assert LocalResponseNorm(2).config() == {"size": 2, "alpha": 1e-4, "beta": 0.75, "k": 1.0}


# ------------------------------------------------------------------------ the CUDA kernels

SIMULATED = textwrap.dedent("""
    import copy
    from types import SimpleNamespace

    import numpy as np
    from numbaconv.devices import get_device
    from numbaconv.kernels.cuda.device import is_device_array, to_device, to_host
    from numbaconv.layers import Conv2d, Flatten, Linear, ReLU, Sequential
    from numbaconv.optim import SGD
    from numbaconv.training import Loop, Settings
    from numbaconv_lrn import LocalResponseNorm, local_response_norm, local_response_norm_backward

    rng = np.random.default_rng(0)
    tol = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}
    for dtype in (np.float32, np.float64):
        for shape, size in (((2, 5, 2, 3), 3), ((2, 3, 4), 4)):
            x = (rng.normal(size=shape) * 5).astype(dtype)
            g = rng.normal(size=shape).astype(dtype)
            y, scale = local_response_norm(x, size, 0.05, 0.75, 2.0)
            dy, dscale = local_response_norm(to_device(x), size, 0.05, 0.75, 2.0)
            assert is_device_array(dy) and is_device_array(dscale)
            np.testing.assert_allclose(to_host(dy), y, **tol[dtype])
            np.testing.assert_allclose(to_host(dscale), scale, **tol[dtype])
            got = local_response_norm_backward(to_device(g), to_device(x), dy, dscale, size,
                                               0.05, 0.75)
            want = local_response_norm_backward(g, x, y, scale, size, 0.05, 0.75)
            np.testing.assert_allclose(to_host(got), want, **tol[dtype])

    # a network with the layer, trained by numbaconv's loop on the device and on the CPU;
    # the second batch replays the first's step (buffers and prepared launches)
    data = SimpleNamespace(train_x=rng.standard_normal((7, 1, 6, 6)).astype(np.float32) * 3,
                           train_y=rng.integers(0, 3, 7),
                           test_x=rng.standard_normal((3, 1, 6, 6)).astype(np.float32) * 3,
                           test_y=rng.integers(0, 3, 3))
    model = Sequential(Conv2d(1, 4, 3, rng=1), ReLU(), LocalResponseNorm(3, 0.5, 0.75, 2.0),
                       Flatten(), Linear(64, 3, rng=2))
    runs = []
    for name, net in (("cuda", copy.deepcopy(model)), ("cpu", model)):
        device = get_device(name)
        net.to(device)
        loop = Loop(net, SGD(net.named_params(), lr=0.1), data,
                    Settings(epochs=2, batch_size=3, seed=5), device)
        runs.append((net, [loop.fit_epoch(epoch) for epoch in (1, 2)]))
    (device_net, device_epochs), (host_net, host_epochs) = runs
    for got, want in zip(device_epochs, host_epochs):
        np.testing.assert_allclose(got.train_loss, want.train_loss, rtol=1e-5)
        assert (got.train_acc, got.test_acc) == (want.train_acc, want.test_acc)
    host = host_net.state_dict()
    for key, value in device_net.state_dict().items():
        np.testing.assert_allclose(value, host[key], rtol=1e-4, atol=1e-6, err_msg=key)
    print("cuda ok")
""")


def test_cuda_kernels_match_the_cpu_under_the_simulator():
    """The layer's CUDA kernels under numba-cuda's simulator (switched on before Numba loads,
    hence a fresh interpreter): the functions against the CPU's, and a network with the layer
    trained on the device as on the CPU."""
    pytest.importorskip("numba.cuda")
    done = run_python(SIMULATED, env=dict(os.environ, NUMBA_ENABLE_CUDASIM="1"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "cuda ok" in done.stdout


COMPILE = textwrap.dedent("""
    import sys
    from numba import cuda, types
    from numbaconv_lrn import cuda as kernels

    def probe(a):
        a[0] = 1.0

    try:
        cuda.compile_ptx(probe, (types.float32[::1],), cc=(8, 0))
    except Exception as exc:
        print(f"no CUDA compiler: {type(exc).__name__}")
        sys.exit(3)
    for dt in (types.float32, types.float64):
        arr = types.Array(dt, 3, "C")
        i = types.int64
        for kernel, signature in (
                (kernels._forward_kernel, (arr, i, dt, dt, dt, arr, arr)),
                (kernels._share_kernel, (arr, arr, arr, arr)),
                (kernels._backward_kernel, (arr, arr, arr, arr, i, dt, dt, arr))):
            ptx, _ = cuda.compile_ptx(kernel.py_func, signature, cc=(8, 0))
            wide = [line for line in ptx.splitlines()
                    if ".f64" in line and not line.strip().startswith("//")]
            assert dt == types.float64 or not wide, (kernel.py_func.__name__, wide[:3])
    print("compiled")
""")


def test_cuda_kernels_compile_to_ptx():
    """The simulator never types kernels: compile them with the real CUDA compiler (NVVM, no
    GPU needed) for float32 and float64; the float32 ones must not compute in float64.
    Without a compiler this skips, except under CI."""
    pytest.importorskip("numba.cuda")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    done = run_python(COMPILE, env=env)
    if done.returncode == 3 and not os.environ.get("CI"):
        pytest.skip(done.stdout.strip())
    assert done.returncode == 0, done.stdout + done.stderr
    assert "compiled" in done.stdout


# ------------------------------------------------------------------------ the model

def torch_lenet_lrn(torch):
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=2), nn.ReLU(),
        nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0), nn.MaxPool2d(2, 2),
        nn.Conv2d(6, 16, kernel_size=5), nn.ReLU(),
        nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0), nn.MaxPool2d(2, 2),
        nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, 10))


def test_lenet_lrn_registered_with_its_defaults(torch):
    entry = plugins.model_entries()["lenet-lrn"]
    assert entry.plugin == "lrn"
    assert entry.train_defaults == {"optimizer": "sgd", "lr": 0.5, "batch_size": 256,
                                    "epochs": 10}
    model = numbaconv.build_model("lenet-lrn", rng=0)
    assert model.output_shape((3, 1, 28, 28)) == (3, 10)
    assert [type(layer).__name__ for layer in model][:4] == ["Conv2d", "ReLU",
                                                             "LocalResponseNorm", "MaxPool2d"]
    assert model.num_params() == sum(p.numel() for p in torch_lenet_lrn(torch).parameters())
    assert numbaconv.build_model("lenet-lrn", num_classes=5).output_shape((1, 1, 28, 28)) \
        == (1, 5)
    rebuilt = numbaconv.Sequential.from_config(model.config(),
                                               layer_types=numbaconv.get_layers())
    assert rebuilt.config() == model.config()


def test_lenet_lrn_matches_torch(torch):
    model = numbaconv.build_model("lenet-lrn", rng=5)
    reference = torch_lenet_lrn(torch)
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    rng = np.random.default_rng(6)
    x = (rng.normal(size=(8, 1, 28, 28)) * 20).astype(np.float32)  # LRN has a visible effect
    labels = rng.integers(0, 10, size=8)
    logits = model.forward(x, training=True)
    loss, grad = softmax_cross_entropy(logits, labels)
    model.backward(grad)
    t_logits = reference(torch.from_numpy(x))
    torch.nn.functional.cross_entropy(t_logits, torch.from_numpy(labels)).backward()
    np.testing.assert_allclose(logits, to_np(t_logits), rtol=1e-4, atol=1e-4)
    for key, p in reference.named_parameters():
        np.testing.assert_allclose(model.named_grads()[key], to_np(p.grad), rtol=1e-3,
                                   atol=1e-5, err_msg=key)


def test_sgd_steps_on_lenet_lrn_lower_the_loss():
    rng = np.random.default_rng(8)
    model = numbaconv.build_model("lenet-lrn", rng=8)
    x = rng.normal(size=(32, 1, 28, 28)).astype(np.float32)
    labels = rng.integers(0, 10, size=32)
    optimizer = SGD(model.named_params(), lr=0.1)
    losses = []
    for _ in range(10):
        loss, grad = softmax_cross_entropy(model.forward(x, training=True), labels)
        losses.append(loss)
        model.backward(grad, need_input_grad=False)
        optimizer.step(model.named_grads())
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.9 * losses[0], losses


# ------------------------------------------------------------------------ the plugin

def test_registered_through_the_entry_point():
    layers = numbaconv.get_layers()
    assert layers["LocalResponseNorm"] is LocalResponseNorm
    assert "Conv2d" in layers and "BatchNorm2d" in layers  # the built-ins are still there
    assert set(numbaconv.get_models()) >= {"lenet", "lenet-bn", "lenet-lrn"}
    assert plugins.layer_entries()["LocalResponseNorm"][1] == "lrn"
    (entry,) = [e for e in importlib.metadata.entry_points(group="numbaconv")
                if e.name == "lrn"]
    assert entry.value == "numbaconv_lrn" and entry.load() is numbaconv_lrn


def test_plugin_info_names_package_and_version():
    info = {item["name"]: item for item in plugins.plugin_info()}
    assert "lrn" in info, info
    assert info["lrn"]["hooks"] == ["register_commands", "register_layers", "register_models"]
    assert info["lrn"]["package"] == "numbaconv-lrn", info["lrn"]
    assert info["lrn"]["version"] == importlib.metadata.version("numbaconv-lrn")


@pytest.mark.parametrize("allowed,expected", [("", False), ("lrn", True),
                                              (" other , lrn ", True), ("other", False)])
def test_numbaconv_load_plugins_limits_entry_points(allowed, expected):
    code = ("import numbaconv; layers = numbaconv.get_layers(); "
            "assert 'BatchNorm2d' in layers; print('LocalResponseNorm' in layers, "
            "'lenet-lrn' in numbaconv.get_models())")
    done = run_python(code, env=dict(os.environ, NUMBACONV_LOAD_PLUGINS=allowed), timeout=120)
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
        assert layers["LocalResponseNorm"] is LocalResponseNorm and "Conv2d" in layers
        assert "lenet-lrn" in numbaconv.get_models()
    finally:
        sys.modules.pop("undo_broken_mod", None)
        if plugins.pm.get_plugin("undo-broken") is not None:
            plugins.pm.unregister(name="undo-broken")


class _ClashingLayers:
    @numbaconv.hookimpl
    def register_layers(self, register):
        register(type("LocalResponseNorm", (Layer,), {}))


class _ClashingModels:
    @numbaconv.hookimpl
    def register_models(self, register):
        register("lenet-lrn", lambda: None)


@pytest.mark.parametrize("plugin,kind,name,lookup", [
    (_ClashingLayers, "layer", "LocalResponseNorm", numbaconv.get_layers),
    (_ClashingModels, "model", "lenet-lrn", numbaconv.get_models),
], ids=["layer", "model"])
def test_two_plugins_claiming_a_name_raise(plugin, kind, name, lookup):
    plugins.load_plugins()
    plugins.pm.register(plugin(), name="undo-clash")
    try:
        with pytest.raises(plugins.RegistryError) as error:
            lookup()
        message = str(error.value)
        assert f"{kind} {name!r}" in message
        assert "'lrn'" in message and "'undo-clash'" in message, message
    finally:
        plugins.pm.unregister(name="undo-clash")
    assert name in lookup()


def test_lrn_info_command():
    click = pytest.importorskip("click")
    from click.testing import CliRunner

    @click.group()
    def cli():
        pass

    numbaconv_lrn.register_commands(cli=cli)
    result = CliRunner().invoke(cli, ["lrn-info"])
    assert result.exit_code == 0, result.output
    version = importlib.metadata.version("numbaconv-lrn")
    assert f"numbaconv-lrn {version}" in result.output
    for text in ("LocalResponseNorm", "lenet-lrn", "lr=0.5", "batch_size=256"):
        assert text in result.output


def test_lrn_info_in_the_numbaconv_cli():
    """The real command line: ``python -m numbaconv lrn-info`` finds the plugin's command."""
    if importlib.util.find_spec("numbaconv.cli") is None:
        pytest.skip("numbaconv has no command line yet")
    done = subprocess.run([sys.executable, "-m", "numbaconv", "lrn-info"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "LocalResponseNorm" in done.stdout and "lenet-lrn" in done.stdout
