"""The device trainer (numbaconv.device_train) against the CPU training loop.

Tiny models on 6x6 images with 3 classes and a handful of examples, so that the simulator
(whose barriers make the tiled matrix product slow) gets through in seconds: per-epoch loss
and accuracies and the final weights and optimizer state must match
numbaconv.training.Loop.fit_epoch on a copy of the same model, up to float32 rounding.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("numba.cuda")

from cuda_support import REPO  # noqa: E402
from numba import cuda  # noqa: E402

from numbaconv.device_train import DeviceTrainer, check_supported, run_on_device  # noqa: E402
from numbaconv.layers import (  # noqa: E402
    AvgPool2d,
    Conv2d,
    Dropout,
    Flatten,
    Layer,
    Linear,
    MaxPool2d,
    ReLU,
    Sequential,  # noqa: E402
    Sigmoid,
    Tanh,
)
from numbaconv.optim import SGD, Adam  # noqa: E402
from numbaconv.training import Diverged, Loop, Settings, make_optimizer  # noqa: E402


def fit_epoch(model, optimizer, data, settings, epoch):
    """One epoch of the CPU training loop (numbaconv.training.Loop)."""
    return Loop(model, optimizer, data, settings).fit_epoch(epoch)

CLASSES = 3
LOSS_TOL = dict(rtol=1e-5, atol=1e-6)
WEIGHT_TOL = dict(rtol=1e-4, atol=2e-6)


@pytest.fixture
def data():
    rng = np.random.default_rng(7)
    # 7 training images with batch 4: a full batch and a smaller last one
    return SimpleNamespace(
        train_x=rng.standard_normal((7, 1, 6, 6)).astype(np.float32),
        train_y=rng.integers(0, CLASSES, 7),
        test_x=rng.standard_normal((3, 1, 6, 6)).astype(np.float32),
        test_y=rng.integers(0, CLASSES, 3))


def small_cnn(act=ReLU, pool=MaxPool2d, seed=3):
    rng = np.random.default_rng(seed)
    return Sequential(Conv2d(1, 2, 3, padding=1, rng=rng), act(), pool(2), Flatten(),
                      Linear(2 * 3 * 3, CLASSES, rng=rng))


@pytest.fixture
def transfers(monkeypatch):
    """Counts device-to-host copies (explicit ones, and the write-backs of host arrays passed
    to kernels, which also go through copy_to_host)."""
    cls = type(cuda.device_array(1))
    original = cls.copy_to_host
    counter = SimpleNamespace(n=0)

    def counting(self, *args, **kwargs):
        counter.n += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "copy_to_host", counting)
    return counter


def assert_metrics_match(device, host):
    assert device.epoch == host.epoch
    np.testing.assert_allclose(device.train_loss, host.train_loss, **LOSS_TOL)
    assert device.train_acc == host.train_acc
    assert device.test_acc == host.test_acc
    assert device.train_seconds > 0 and device.examples_per_sec > 0


def assert_params_match(device_model, host_model):
    host = host_model.named_params()
    for name, p in device_model.named_params().items():
        np.testing.assert_allclose(p, host[name], err_msg=name, **WEIGHT_TOL)


def assert_state_match(device_state, host_state):
    assert sorted(device_state) == sorted(host_state)
    for key, value in host_state.items():
        if isinstance(value, np.ndarray):
            assert device_state[key].shape == value.shape, key
            np.testing.assert_allclose(device_state[key], value, err_msg=key, **WEIGHT_TOL)
        else:
            assert device_state[key] == value, key


def test_sgd_relu_max_matches_cpu_loop_with_one_transfer_per_epoch(data, transfers):
    settings = Settings(epochs=2, batch_size=4, lr=0.5, optimizer="sgd", seed=11)
    host_model = small_cnn()
    device_model = copy.deepcopy(host_model)
    host_opt = make_optimizer("sgd", host_model.named_params(), settings.lr)
    before = {k: p.copy() for k, p in device_model.named_params().items()}

    trainer = DeviceTrainer(device_model, settings, data)
    for epoch in (1, 2):
        transfers.n = 0
        metrics = trainer.fit_epoch(epoch)
        assert transfers.n <= 2, f"{transfers.n} device-to-host copies in epoch {epoch}"
        assert transfers.n == 1
        assert_metrics_match(metrics, fit_epoch(host_model, host_opt, data, settings, epoch))
    # the model's arrays stay untouched until sync_to_host
    for name, p in device_model.named_params().items():
        np.testing.assert_array_equal(p, before[name])
    transfers.n = 0
    assert trainer.evaluate() == metrics.test_acc and transfers.n == 1

    arrays = {k: id(p) for k, p in device_model.named_params().items()}
    trainer.sync_to_host()
    assert {k: id(p) for k, p in device_model.named_params().items()} == arrays  # in place
    assert_params_match(device_model, host_model)
    state = trainer.optimizer_state_dict()
    assert_state_match(state, host_opt.state_dict())
    assert state["step"] == 4  # 2 batches per epoch


def test_adam_sigmoid_avg_resumes_from_cpu_state_and_round_trips(data):
    settings = Settings(epochs=2, batch_size=4, lr=0.05, optimizer="adam", seed=2)
    host_model = small_cnn(Sigmoid, AvgPool2d, seed=5)
    host_opt = make_optimizer("adam", host_model.named_params(), settings.lr)
    fit_epoch(host_model, host_opt, data, settings, 1)  # epoch 1 on the CPU, as a checkpoint
    saved_params, saved_opt = host_model.state_dict(), host_opt.state_dict()

    device_model = small_cnn(Sigmoid, AvgPool2d, seed=99)
    device_model.load_state_dict(saved_params)
    trainer = DeviceTrainer(device_model, settings, data, optimizer_state=saved_opt)
    assert trainer.step_count == 2
    assert_state_match(trainer.optimizer_state_dict(), saved_opt)  # uploaded as given

    assert_metrics_match(trainer.fit_epoch(2),
                         fit_epoch(host_model, host_opt, data, settings, 2))
    state = trainer.optimizer_state_dict()  # syncs by itself
    assert_state_match(state, host_opt.state_dict())
    assert_params_match(device_model, host_model)

    # and back into a CPU optimizer, as a checkpoint written on the GPU is resumed on the CPU
    restored = Adam(device_model.named_params(), lr=1.0)
    restored.load_state_dict(state)
    assert restored.lr == settings.lr and restored.step_count == 4
    for key in ("exp_avg", "exp_avg_sq"):
        for name, buf in host_opt.state[key].items():
            np.testing.assert_allclose(restored.state[key][name], buf, **WEIGHT_TOL)


def test_dropout_mlp_and_momentum_optimizer_match_cpu(data):
    """Dropout masks, a standalone activation, Linear + activation fusion, Nesterov SGD with
    weight decay given as an optimizer object, and run_on_device."""
    settings = Settings(epochs=1, batch_size=4, lr=0.2, optimizer="sgd", seed=4)

    def build():
        rng = np.random.default_rng(8)
        return Sequential(Conv2d(1, 2, 3, stride=2, padding="valid", bias=False, rng=rng),
                          AvgPool2d(2, stride=1), Tanh(), Flatten(), Dropout(0.5, rng=rng),
                          Linear(2, 4, rng=rng), ReLU(), Linear(4, CLASSES, rng=rng))

    host_model, device_model = build(), build()
    host_opt = SGD(host_model.named_params(), lr=0.2, momentum=0.9, nesterov=True,
                   weight_decay=0.01)
    device_opt = SGD(device_model.named_params(), lr=0.2, momentum=0.9, nesterov=True,
                     weight_decay=0.01)
    expected = fit_epoch(host_model, host_opt, data, settings, 1)

    seen = []
    history = run_on_device(device_model, settings, data, 1, optimizer=device_opt,
                            on_epoch=lambda metrics, trainer: seen.append(trainer.step_count))
    assert seen == [2] and len(history) == 1
    assert_metrics_match(history[0], expected)
    assert_params_match(device_model, host_model)  # run_on_device syncs at the end
    assert device_opt.step_count == 2
    assert_state_match(device_opt.state_dict(), host_opt.state_dict())


class Scale(Layer):
    """A plugin's layer."""

    def forward(self, x, training=False):
        return 2 * x

    def backward(self, grad_y, need_input_grad=True):
        return 2 * grad_y


class MyReLU(ReLU):
    pass


@pytest.mark.parametrize("extra", [Scale, MyReLU])
def test_unsupported_layer_is_a_clear_error(data, extra):
    rng = np.random.default_rng(0)
    model = Sequential(Conv2d(1, 2, 3, rng=rng), extra(), Flatten(), Linear(32, CLASSES, rng=rng))
    with pytest.raises(ValueError, match=rf"layer 1 \({extra.__name__}\) is not supported on "
                                         r"--device cuda.*--device cpu"):
        check_supported(model)
    with pytest.raises(ValueError, match=extra.__name__):
        DeviceTrainer(model, Settings(epochs=1, batch_size=4), data)


def test_bad_inputs_are_value_errors(data):
    settings = Settings(epochs=1, batch_size=4, lr=0.1)
    with pytest.raises(ValueError, match="float32"):
        DeviceTrainer(small_cnn(), settings, SimpleNamespace(
            train_x=data.train_x.astype(np.float64), train_y=data.train_y,
            test_x=data.test_x, test_y=data.test_y))
    with pytest.raises(ValueError, match=r"train_y must be ints in \[0, 3\)"):
        DeviceTrainer(small_cnn(), settings, SimpleNamespace(
            train_x=data.train_x, train_y=data.train_y + 5, test_x=data.test_x,
            test_y=data.test_y))
    no_head = Sequential(Conv2d(1, 2, 3, rng=np.random.default_rng(0)))
    with pytest.raises(ValueError, match="softmax cross-entropy"):
        DeviceTrainer(no_head, settings, data)
    model = small_cnn()
    with pytest.raises(ValueError, match="dampening"):
        DeviceTrainer(model, settings, data,
                      optimizer=SGD(model.named_params(), lr=0.1, momentum=0.5, dampening=0.1))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_non_finite_loss_raises_diverged(data):
    settings = Settings(epochs=1, batch_size=4, lr=0.1, seed=0)
    model = small_cnn()
    model[0].params["bias"][0] = np.inf
    with pytest.raises(Diverged) as cpu:
        fit_epoch(copy.deepcopy(model), make_optimizer("sgd", model.named_params(), 0.1), data,
                  settings, 1)
    with pytest.raises(Diverged) as device:
        DeviceTrainer(model, settings, data).fit_epoch(1)
    assert (device.value.epoch, device.value.batch) == (cpu.value.epoch, cpu.value.batch) == (1, 1)


PTX_CHECK = r"""
import sys
import types as pytypes

from numba import cuda, types

cc = (8, 0)


def probe(a):
    a[0] = 1.0


try:
    cuda.compile_ptx(probe, (types.float32[::1],), cc=cc)
except Exception as exc:
    print(f"no CUDA compiler (NVVM) found: {type(exc).__name__}")
    sys.exit(3)
if not cuda.is_available():  # device functions compile for the current device: name one
    import numba.cuda.dispatcher as dispatcher

    dispatcher.get_current_device = lambda: pytypes.SimpleNamespace(compute_capability=cc)

from numbaconv import device_train as dt

i, u8, f64 = types.int64, types.uint8, types.float64
ints = types.Array(i, 1, "C")
wide = []
for f in (types.float32, types.float64):
    def arr(ndim):
        return types.Array(f, ndim, "C")

    kernels = [
        (dt._gather_kernel, (arr(2), ints, ints, arr(2), ints, i)),
        (dt._xent_hits_kernel, (arr(2), ints, arr(2), arr(1), ints, i)),
        (dt._hits_kernel, (arr(2), ints, ints, i)),
        (dt._act_bias_partial_kernel, (arr(3), arr(3), arr(3), arr(2), i, i)),
        (dt._dropout_kernel, (arr(2), types.Array(u8, 2, "C"), f, arr(2), i)),
        (dt._epoch_sums_kernel(), (arr(1), ints, ints, types.Array(f64, 1, "C"))),
    ]
    for kernel, signature in kernels:
        ptx, _ = cuda.compile_ptx(kernel.py_func, signature, cc=cc)
        f64_lines = [line for line in ptx.splitlines()
                     if ".f64" in line and not line.strip().startswith("//")]
        if f == types.float32 and f64_lines and kernel.py_func.__name__ != "epoch_sums":
            wide.append(kernel.py_func.__name__)
        print("ok", kernel.py_func.__name__, f)
print("float32 kernels with float64 arithmetic:", ", ".join(wide) or "none")
"""


def test_device_train_kernels_compile_to_ptx():
    """The simulator never types kernels: compile the trainer's own kernels for float32 and
    float64 with the real CUDA compiler (NVVM, no GPU needed) in a subprocess."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    proc = subprocess.run([sys.executable, "-c", PTX_CHECK], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode == 3:
        pytest.skip(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "float32 kernels with float64 arithmetic: none" in proc.stdout, proc.stdout


def test_every_launch_of_a_step_is_prepared_on_a_gpu(data):
    """On a GPU each launch of the trainer's plans skips numba-cuda's dispatcher, so a
    numba-cuda upgrade that changes its internals cannot turn the fast path off unnoticed."""
    from numbaconv.kernels.cuda.device import simulator_enabled
    from numbaconv.kernels.cuda.launch import PreparedLaunch

    def prepared(launch):  # a prepared launch, or a closure over several (the weight gradient)
        if isinstance(launch, PreparedLaunch):
            return [launch]
        return [cell.cell_contents for cell in launch.__closure__ or ()
                if isinstance(cell.cell_contents, PreparedLaunch)]

    trainer = DeviceTrainer(small_cnn(), Settings(epochs=1, batch_size=4, lr=0.5), data)
    trainer.fit_epoch(1)
    launches = [p for plan in trainer._plans.values() for launch in plan.forward + plan.backward
                for p in prepared(launch)]
    assert len(launches) >= 10 and trainer._sgd is not None
    fast = not simulator_enabled()
    assert [(p.name, p.fast) for p in launches + [trainer._sgd[1]]] == \
        [(p.name, fast) for p in launches + [trainer._sgd[1]]]
