"""Training on the GPU through the same layer code as on the CPU (numbaconv.devices,
Layer.to, numbaconv.functional's CUDA bodies, the captured step of kernels/cuda/steps).

Tiny models on 6x6 images with 3 classes and a handful of examples, so that the simulator
(whose barriers make the tiled matrix product slow) gets through in seconds: per-epoch loss
and accuracies, the final weights and the optimizer state must match the same epochs run on
a copy of the model on the CPU, up to float32 rounding. Both run numbaconv.training.Loop, the
one loop of `numbaconv run`.
"""

from __future__ import annotations

import copy
import gc
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("numba.cuda")

from numba import cuda  # noqa: E402

from numbaconv import functional as F  # noqa: E402
from numbaconv.devices import get_device  # noqa: E402
from numbaconv.init import as_generator, kaiming_uniform_default  # noqa: E402
from numbaconv.kernels.cuda import steps  # noqa: E402
from numbaconv.kernels.cuda.device import is_device_array, simulator_enabled  # noqa: E402
from numbaconv.layers import (  # noqa: E402
    AvgPool2d,
    Concat,
    Conv2d,
    Dropout,
    Flatten,
    Layer,
    Linear,
    MaxPool2d,
    ReLU,
    Residual,
    Sequential,
    Sigmoid,
    Tanh,
)
from numbaconv.optim import SGD, Adam  # noqa: E402
from numbaconv.training import Diverged, Loop, Settings  # noqa: E402

CLASSES = 3
BATCH = 4  # 7 training images: a full batch and a smaller last one
LOSS_TOL = dict(rtol=1e-5, atol=1e-6)
WEIGHT_TOL = dict(rtol=1e-4, atol=2e-6)


@pytest.fixture
def data():
    rng = np.random.default_rng(7)
    return SimpleNamespace(
        train_x=rng.standard_normal((7, 1, 6, 6)).astype(np.float32),
        train_y=rng.integers(0, CLASSES, 7),
        test_x=rng.standard_normal((3, 1, 6, 6)).astype(np.float32),
        test_y=rng.integers(0, CLASSES, 3))


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


class Run:
    """A model and its optimizer on one device, trained by numbaconv.training.Loop."""

    def __init__(self, device_name, model, make_optimizer, data, seed=11):
        self.device = get_device(device_name)
        self.model = model.to(self.device)
        self.optimizer = make_optimizer(self.model.named_params())
        self.loop = Loop(self.model, self.optimizer, data,
                         Settings(epochs=99, batch_size=BATCH, seed=seed), self.device)

    def epoch(self, epoch: int):
        """(mean loss, train accuracy, test accuracy) of one epoch."""
        metrics = self.loop.fit_epoch(epoch)
        return metrics.train_loss, metrics.train_acc, metrics.test_acc


def small_cnn(act=ReLU, pool=MaxPool2d, seed=3):
    rng = np.random.default_rng(seed)
    return Sequential(Conv2d(1, 2, 3, padding=1, rng=rng), act(), pool(2), Flatten(),
                      Linear(2 * 3 * 3, CLASSES, rng=rng))


def assert_runs_match(device_run, host_run, epochs=(1, 2), transfers=None):
    """The runs' epochs, weights and optimizer states agree; with ``transfers``, each device
    epoch copies one array to the host."""
    for epoch in epochs:
        if transfers is not None:
            transfers.n = 0
        got = device_run.epoch(epoch)
        if transfers is not None:
            assert transfers.n == 1, f"{transfers.n} device-to-host copies in epoch {epoch}"
        want = host_run.epoch(epoch)
        np.testing.assert_allclose(got[0], want[0], **LOSS_TOL)
        assert got[1:] == want[1:], epoch
    host = host_run.model.state_dict()
    for name, value in device_run.model.state_dict().items():
        assert isinstance(value, np.ndarray), name
        np.testing.assert_allclose(value, host[name], err_msg=name, **WEIGHT_TOL)
    host_state = host_run.optimizer.state_dict()
    device_state = device_run.optimizer.state_dict()
    assert sorted(device_state) == sorted(host_state)
    for key, value in host_state.items():
        if isinstance(value, np.ndarray):
            assert isinstance(device_state[key], np.ndarray), key
            np.testing.assert_allclose(device_state[key], value, err_msg=key, **WEIGHT_TOL)
        else:
            assert device_state[key] == value, key


def pair(build, make_optimizer, data):
    """The same model and optimizer on the GPU and on the CPU."""
    model = build()
    return (Run("cuda", copy.deepcopy(model), make_optimizer, data),
            Run("cpu", model, make_optimizer, data))


# ------------------------------------------------------------------------------------ parity

def test_sgd_relu_max_matches_the_cpu_with_one_transfer_per_epoch(data, transfers):
    device_run, host_run = pair(small_cnn, lambda p: SGD(p, lr=0.5, momentum=0.9), data)
    for epoch in (1, 2):
        transfers.n = 0
        got = device_run.epoch(epoch)
        assert transfers.n == 1, f"{transfers.n} device-to-host copies in epoch {epoch}"
        want = host_run.epoch(epoch)
        np.testing.assert_allclose(got[0], want[0], **LOSS_TOL)
        assert got[1:] == want[1:]
    assert all(is_device_array(p) for p in device_run.model.named_params().values())
    assert_runs_match(device_run, host_run, epochs=())
    assert device_run.optimizer.state_dict()["step"] == 4  # 2 batches per epoch


def test_adam_sigmoid_avg_resumes_from_cpu_state(data, transfers):
    """A checkpoint written on the CPU resumes on the GPU (model and optimizer state), and
    the GPU's state reads back as host arrays."""
    host_run = Run("cpu", small_cnn(Sigmoid, AvgPool2d, seed=5), lambda p: Adam(p, lr=0.05),
                   data)
    host_run.epoch(1)
    saved_params, saved_opt = host_run.model.state_dict(), host_run.optimizer.state_dict()
    device_run = Run("cuda", small_cnn(Sigmoid, AvgPool2d, seed=99), lambda p: Adam(p, lr=1.0),
                     data)
    device_run.model.load_state_dict(saved_params)
    device_run.optimizer.load_state_dict(saved_opt)
    assert device_run.optimizer.lr == 0.05 and device_run.optimizer.step_count == 2
    assert all(is_device_array(a) for a in device_run.optimizer.state["exp_avg"].values())
    assert_runs_match(device_run, host_run, epochs=(2,), transfers=transfers)


def test_dropout_tanh_and_momentum_variants_match_the_cpu(data, transfers):
    """Dropout's masks (drawn on the host from the same generators), a standalone Tanh,
    layers without bias, a strided convolution and a stride-1 pool; Nesterov SGD with weight
    decay, then SGD with dampening."""
    def build():
        rng = np.random.default_rng(8)
        return Sequential(Conv2d(1, 2, 3, stride=2, padding="valid", bias=False, rng=rng),
                          AvgPool2d(2, stride=1), Tanh(), Flatten(), Dropout(0.5, rng=rng),
                          Linear(2, 4, rng=rng), ReLU(), Linear(4, CLASSES, bias=False, rng=rng))

    assert_runs_match(*pair(build, lambda p: SGD(p, lr=0.2, momentum=0.9, nesterov=True,
                                                 weight_decay=0.01), data), epochs=(1,),
                      transfers=transfers)
    assert_runs_match(*pair(build, lambda p: SGD(p, lr=0.2, momentum=0.5, dampening=0.3),
                            data), epochs=(1,))


def test_residual_and_concat_networks_match_the_cpu(data, transfers):
    def build():
        rng = np.random.default_rng(4)
        return Sequential(
            Conv2d(1, 2, 3, padding=1, rng=rng), ReLU(),
            Residual([Conv2d(2, 2, 3, padding=1, rng=rng), ReLU(),
                      Conv2d(2, 2, 3, padding=1, rng=rng)]),
            Residual([Conv2d(2, 3, 3, padding=1, rng=rng)], Conv2d(2, 3, 1, rng=rng)),
            Concat([Conv2d(3, 1, 1, rng=rng)], [Conv2d(3, 2, 3, padding=1, rng=rng), Sigmoid()]),
            ReLU(), AvgPool2d(6), Flatten(), Linear(3, CLASSES, rng=rng))

    assert_runs_match(*pair(build, lambda p: SGD(p, lr=0.3), data), transfers=transfers)


class TanhLinear(Layer):
    """A plugin's layer: ``tanh(x @ weight.T)``, written to the public contract and computing
    through numbaconv.functional only (it knows nothing of devices)."""

    def __init__(self, in_features, out_features, *, rng=None):
        super().__init__()
        self.add_param("weight", kaiming_uniform_default((out_features, in_features),
                                                         in_features, as_generator(rng)))
        self.saved = None

    def forward(self, x, training=False):
        y = F.tanh(F.linear(x, self.params["weight"]))
        self.saved = x, y
        return y

    def backward(self, grad_y, need_input_grad=True):
        x, y = self.require_forward(self.saved)
        grad_x, grad_weight, _ = F.linear_backward(F.tanh_backward(grad_y, y), x,
                                                   self.params["weight"], need_input_grad,
                                                   need_bias_grad=False)
        self.set_grad("weight", grad_weight)
        return grad_x


def test_a_plugin_layer_computing_through_functional_trains_on_cuda_unchanged(data, transfers):
    def build():
        rng = np.random.default_rng(6)
        return Sequential(Flatten(), TanhLinear(36, 5, rng=rng), Linear(5, CLASSES, rng=rng))

    assert_runs_match(*pair(build, lambda p: Adam(p, lr=0.01), data), transfers=transfers)


# ------------------------------------------------------------------------------------ the step

def test_a_replayed_step_allocates_nothing_and_launches_prepared_launches(data, monkeypatch):
    run = Run("cuda", small_cnn(Sigmoid, AvgPool2d), lambda p: SGD(p, lr=0.1), data)
    run.epoch(1)  # captures each kind of step: full, last, evaluation batch
    allocated, prepared = [], []
    monkeypatch.setattr(steps.cuda, "device_array",
                        lambda *a, **k: allocated.append(a) or cuda.device_array(*a, **k))

    class Counting(steps.PreparedLaunch):
        def __init__(self, *args, **kwargs):
            prepared.append(args[0])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(steps, "PreparedLaunch", Counting)
    run.epoch(2)  # the loop's epoch: its order and totals are put, the steps replayed
    assert allocated == [] and prepared == []
    launches = steps.launches((id(run.loop.train_x), BATCH))
    assert len(launches) >= 15
    fast = not simulator_enabled()  # on a GPU each launch is one driver call
    assert [(p.name, p.fast) for p in launches] == [(p.name, fast) for p in launches]


def test_a_data_sets_step_records_go_with_it(data):
    device = get_device("cuda")
    images, labels = device.put(data.train_x), device.put(data.train_y)
    order = device.put(np.arange(7, dtype=np.int64))
    x, y = device.take(images, labels, order, 0, 4)
    np.testing.assert_array_equal(device.get(x), data.train_x[:4])
    key = (id(images), 4)
    assert [p.name for p in steps.launches(key)] == ["_gather_rows_kernel"]
    del images
    gc.collect()
    assert steps.launches(key) == []  # its buffers freed with it


def test_results_outside_a_step_are_plain_allocations(data):
    run = Run("cuda", small_cnn(), lambda p: SGD(p, lr=0.1), data)
    run.epoch(1)  # ends with totals.read(): no step is active
    assert not steps.active()
    x = run.device.put(data.test_x)
    first = run.model.forward(x)
    second = run.model.forward(x)
    assert first is not second
    np.testing.assert_array_equal(run.device.get(first), run.device.get(second))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_a_non_finite_loss_shows_in_the_epochs_totals(data):
    model = small_cnn()
    model[0].params["bias"][0] = np.inf
    with pytest.raises(Diverged, match="the loss became NaN or infinite at epoch 1;"):
        Run("cuda", model, lambda p: SGD(p, lr=0.1), data).epoch(1)


# ------------------------------------------------------------------------------------ moving

def test_models_move_both_ways_and_state_dicts_are_host_arrays(data):
    model = small_cnn()
    before = model.state_dict()
    assert model.to("cuda") is model
    for table in (model.named_params(), model.named_grads()):
        assert all(is_device_array(a) for a in table.values())
    state = model.state_dict()
    assert all(type(a) is np.ndarray for a in state.values())
    for name, value in before.items():
        np.testing.assert_array_equal(state[name], value)
    model.load_state_dict({k: v + 1 for k, v in before.items()})  # onto the device
    model.to(get_device("cpu"))
    for name, value in model.named_params().items():
        assert type(value) is np.ndarray
        np.testing.assert_array_equal(value, before[name] + 1)


def test_device_errors(data):
    cuda_device = get_device("cuda")
    with pytest.raises(ValueError, match="device must be one of cpu, cuda, got 'tpu'"):
        get_device("tpu")
    images, labels = cuda_device.put(data.train_x), cuda_device.put(data.train_y)
    order = cuda_device.put(np.arange(7, dtype=np.int64))
    with pytest.raises(TypeError, match="images must be on the device"):
        cuda_device.take(data.train_x, labels, order, 0, 4)
    with pytest.raises(TypeError, match="order must be int64"):
        cuda_device.take(images, labels, cuda_device.put(np.arange(7, dtype=np.int32)), 0, 4)
    with pytest.raises(ValueError, match="rows 4:9"):
        cuda_device.take(images, labels, order, 4, 9)
    with pytest.raises(TypeError, match="0-d CUDA device array"):
        cuda_device.totals(1).add(0, np.float64(1.0))
    model = small_cnn().to("cuda")
    optimizer = SGD(model.named_params(), lr=0.1)
    host_grads = {k: np.zeros(tuple(g.shape), np.float32) for k, g in model.named_grads().items()}
    with pytest.raises(TypeError, match="on another device than its parameter"):
        optimizer.step(host_grads)
    with pytest.raises(TypeError, match="weight must be a CUDA device array like x"):
        F.linear(cuda_device.put(np.zeros((2, 3), np.float32)), np.zeros((4, 3), np.float32))
