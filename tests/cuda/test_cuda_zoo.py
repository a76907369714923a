"""Every built-in model (LeNet, LeNet-BN and D2L's chapter 7 zoo) on the CUDA device against
the same model, the same weights, on the CPU: the evaluation forward, the training forward
(batch statistics, the same dropout masks), the backward (input and parameter gradients),
BatchNorm's running statistics after it, and the parameters after one SGD step with
momentum and weight decay, all within float32 rounding. The simulator's run of this file
takes about 3 minutes on a 2-core machine, over half of it the two LeNets at 28x28 (marked
``slow``: ``-m "not slow"`` leaves them out).

What runs, and what does not. Under the simulator every kernel runs as Python, one Python
thread per CUDA thread: on this project's 2-core box a tiled product costs about 35 us per
multiply-add (LeNet's first convolution, 188k of them for 2 images: 6.2 s) and an
elementwise kernel about 7 us per element, so D2L's exact chapter 7 networks do not fit a
test run: ResNet-18 at full width took 51 s for the stem and the first two of its four
stages of an evaluation forward of one 1x1 image (the later stages are 4x and 16x wider);
AlexNet's 4096-wide head alone is 16.8M multiply-adds and 16.8M weights to step. So:

* LeNet and LeNet-BN run exactly as registered (1x28x28).
* The chapter 7 models run with their ``width_divisor`` option (:data:`MODELS`): the same
  layers in the same order, kernel sizes, strides, padding, pooling, dropout, batch norm,
  residual and concatenated branches, global pooling and head, with every channel count and
  AlexNet's/VGG's 4096 hidden units divided (each at least 1; some layers get 1 or 2
  channels). Every layer type and kernel the full-width network launches runs here; the
  full widths do not: no test runs D2L's exact chapter 7 networks on a CUDA device.
* Under the simulator the tile sizes and grid limits are the simulator's own
  (numbaconv/kernels/cuda/config.py), so the GPU's tile shapes, many-block grids and long
  split reductions run only on a GPU (this file runs unchanged there, without
  ``NUMBA_ENABLE_CUDASIM``). That each tile shape compiles for a GPU without spilling is
  tests/test_conv_tiles_ptx.py; every other kernel, tests/cuda/test_cuda_kernels.py.
* Each model at the smallest square input it takes (``numbaconv.models.smallest_input``),
  one image for evaluation and for training, except with batch norm: then 4 images, so that
  every batch norm normalises at least 4 values per channel (with 2, the input gradient is
  a difference of nearly equal terms that float32 rounding decides).
* The input gradient is checked where it is cheap. For the first convolution of AlexNet,
  NiN and DenseNet (11x11 stride 4, 7x7 stride 2, over the whole image) it would add 15 s
  (DenseNet) to 70 s (NiN, measured) here, and the training loop never asks for it; strided
  convolutions' input gradients are checked in GoogLeNet's first layer and inside ResNet-18.
* "Within float32 rounding" is measured against the same model in float64 on the CPU (its
  spec rebuilt in float64, the same weights and dropout masks): the device's largest error
  must be at most RTOL of the tensor's largest element, or CPU_ERROR_FACTOR times the CPU's
  own float32 error where the network amplifies rounding (batch norm over 4 values per
  channel on ResNet-18's 1x1 maps: the CPU's input gradient is off by 1e-4 of its size).
"""

from __future__ import annotations

import copy
import inspect
from typing import NamedTuple

import numpy as np
import pytest

pytest.importorskip("numba.cuda")

import numbaconv  # noqa: E402
from numbaconv.devices import get_device  # noqa: E402
from numbaconv.kernels.cuda.device import is_device_array, to_device, to_host  # noqa: E402
from numbaconv.layers import LAYER_TYPES, Dropout, build_layer, layer_spec  # noqa: E402
from numbaconv.layers.containers import summary  # noqa: E402
from numbaconv.models import smallest_input  # noqa: E402
from numbaconv.optim import SGD  # noqa: E402
from numbaconv.registry import model_entries  # noqa: E402


class Case(NamedTuple):
    """How a model runs here (see the module's docstring)."""

    options: dict  # for numbaconv.build_model
    train_batch: int  # 1, or 4 where batch norm needs BATCH_NORM_VALUES values per channel
    input_grad: bool  # whether the backward computes (and the test checks) the input gradient


MODELS = {
    "lenet": Case({}, 1, True),
    "lenet-bn": Case({}, 4, False),
    "alexnet": Case({"input_size": 65, "width_divisor": 32}, 1, False),
    "vgg11": Case({"input_size": 32, "width_divisor": 32}, 1, True),
    "nin": Case({"width_divisor": 32}, 1, False),
    "googlenet": Case({"width_divisor": 16}, 1, True),
    "resnet18": Case({"width_divisor": 32}, 4, True),
    "densenet": Case({"width_divisor": 32}, 4, False),
}
#: The fewest values a batch norm normalises per channel in a training batch here: with 2,
#: the input gradient is a difference of nearly equal terms that float32 rounding decides.
BATCH_NORM_VALUES = 4
#: A tensor's largest error, relative to its largest element: float32 rounding of sums taken
#: in another order (the CPU's tiles, the GPU's shared-memory tiles and split reductions)...
RTOL = 1e-4
#: ...or this many times the CPU's own float32 error, where the network amplifies rounding
#: (batch norm over few values: ResNet-18 on 1x1 maps has input gradients of 100 and more,
#: which the CPU gets to 1e-4 of their size).
CPU_ERROR_FACTOR = 4


def test_every_built_in_model_is_covered():
    built_in = {name for name, entry in model_entries().items()
                if entry.plugin == "numbaconv.registry.builtin"}
    assert built_in == set(MODELS)


def float64_twin(model):
    """``model`` rebuilt in float64 from its spec, with its weights and buffers, and its
    Dropout layers' generators in their current state (the same masks): the exact result
    that float32 rounding is measured against."""
    def widen(spec):
        if isinstance(spec, list):
            return [widen(item) for item in spec]
        if not isinstance(spec, dict):
            return spec
        spec = {key: widen(value) for key, value in spec.items()}
        if "dtype" in inspect.signature(LAYER_TYPES[spec["type"]]).parameters:
            spec["dtype"] = "float64"
        return spec

    twin = build_layer(widen(layer_spec(model)))
    twin.load_state_dict(model.state_dict())
    twin_layers = dict(twin.named_layers())
    for path, layer in model.named_layers():
        if isinstance(layer, Dropout):
            twin_layers[path].rng = copy.deepcopy(layer.rng)
    return twin


def assert_close(got, want, exact, what, floor=0.0):
    """``got`` (a device array) is as close to ``exact`` (float64) as float32 rounding
    allows: within RTOL of ``exact``'s largest element (or ``floor``, if larger), or within
    CPU_ERROR_FACTOR times the distance of the CPU's float32 result ``want``."""
    assert is_device_array(got), f"{what}: not a device array: {type(got).__name__}"
    got = to_host(got)
    assert got.shape == want.shape == exact.shape, \
        f"{what}: shape {got.shape} != {want.shape}, {exact.shape}"
    assert got.dtype == want.dtype == np.float32, f"{what}: dtype {got.dtype}, {want.dtype}"
    scale = max(float(np.abs(exact).max()), floor)
    cpu_error = float(np.abs(want - exact).max())
    error = float(np.abs(got - exact).max())
    assert error <= max(RTOL * scale, CPU_ERROR_FACTOR * cpu_error) + 1e-7, \
        f"{what}: max error {error:.3g}, the CPU's {cpu_error:.3g} (scale {scale:.3g})"


def fewest_batch_norm_values(model, input_shape) -> int | None:
    """The fewest values per channel any batch norm of ``model`` normalises for an input of
    ``input_shape`` (None without batch norm)."""
    counts = [int(np.prod(row.output_shape)) // row.output_shape[1]
              for row in summary(model, input_shape) if row.name.startswith("BatchNorm")]
    return min(counts, default=None)


def layer_of(path: str) -> str:
    """The layer a parameter path belongs to."""
    return path.rpartition(".")[0]


def block_of(path: str) -> str:
    """The residual block (a ``Residual``'s path) a parameter belongs to, else its layer."""
    for branch in (".body.", ".shortcut."):
        if branch in path:
            return path.partition(branch)[0]
    return layer_of(path)


def assert_params_close(device, host, exact, what, floors=None):
    """The models' parameters and buffers agree (see :func:`assert_close`); ``floors`` maps
    a parameter's path to the scale its error is measured against when larger than its
    own."""
    floors = floors or {}
    exact_params, exact_buffers = exact.named_params(), exact.named_buffers()
    for path, want in host.named_params().items():
        assert_close(device.named_params()[path], want, exact_params[path], f"{path} {what}",
                     floor=floors.get(path, 0.0))
    for path, want in host.named_buffers().items():
        if np.issubdtype(want.dtype, np.integer):  # BatchNorm's num_batches_tracked
            assert to_host(device.named_buffers()[path]) == want, f"{path} {what}"
        else:
            assert_close(device.named_buffers()[path], want, exact_buffers[path],
                         f"{path} {what}")


#: Over half of this file's time under the simulator (1x28x28 is their only size).
SLOWEST = {"lenet", "lenet-bn"}


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=[pytest.mark.slow] if name in SLOWEST else [])
    for name in MODELS])
def test_model_on_the_device_matches_the_cpu(name):
    case = MODELS[name]
    rng = np.random.default_rng(17)
    host = numbaconv.build_model(name, rng=1, **case.options)
    for path, array in host.named_buffers().items():  # running statistics to evaluate with
        if path.endswith("running_mean"):
            array[...] = rng.normal(0, 0.5, array.shape)
        elif path.endswith("running_var"):
            array[...] = rng.uniform(0.5, 2.0, array.shape)
    device = copy.deepcopy(host).to(get_device("cuda"))
    exact = float64_twin(host)
    assert_params_close(device, host, exact, "moved to the device")

    side = smallest_input(host)
    x = rng.standard_normal((1, 1, side, side)).astype(np.float32)
    assert_close(device.forward(to_device(x), training=False), host.forward(x, training=False),
                 exact.forward(x.astype(np.float64), training=False),
                 f"evaluation forward at {x.shape}")

    # training: the Dropout layers' generators were copied with the model, so both sides
    # draw the same masks
    x = rng.standard_normal((case.train_batch, 1, side, side)).astype(np.float32)
    fewest = fewest_batch_norm_values(host, x.shape)
    assert (case.train_batch == 1) == (fewest is None), "a batch of 1 unless batch norm"
    assert fewest is None or fewest >= BATCH_NORM_VALUES, f"batch norm over {fewest} values"
    want = host.forward(x, training=True)
    assert_close(device.forward(to_device(x), training=True), want,
                 exact.forward(x.astype(np.float64), training=True),
                 f"training forward at {x.shape}")
    grad_y = rng.standard_normal(want.shape).astype(np.float32)
    grad_x = device.backward(to_device(grad_y), need_input_grad=case.input_grad)
    want = host.backward(grad_y, need_input_grad=case.input_grad)
    exact_grad_x = exact.backward(grad_y.astype(np.float64), need_input_grad=case.input_grad)
    if case.input_grad:
        assert_close(grad_x, want, exact_grad_x, "input gradient")
    else:
        assert grad_x is None and want is None
    exact_grads = exact.named_grads()
    scale = {}  # a layer's, and a residual block's, largest gradient element
    for path, grad in exact_grads.items():
        for part in (layer_of(path), block_of(path)):
            scale[part] = max(scale.get(part, 0.0), float(np.abs(grad).max()))
    grad_floors = {path: max(scale[layer_of(path)], scale[block_of(path)])
                   for path in exact_grads}
    device_grads = device.named_grads()
    for path, grad in host.named_grads().items():
        # a bias whose effect a later batch norm takes out again has gradient 0 but for
        # rounding: measured against its layer's largest gradient; and a weight gradient that
        # cancels to a small fraction of its residual block's against the block's (the
        # narrowed ResNet-18's first block: 1.4e-4 beside 7.9, where float32 sums in any
        # order are 1e-5 off: the CPU's 1.6e-5 with one BatchNorm kernel, 2e-6 with another)
        assert_close(device_grads[path], grad, exact_grads[path], f"gradient of {path}",
                     floor=grad_floors[path])

    lr = model_entries()[name].train_defaults["lr"]
    for model in (host, device, exact):
        SGD(model.named_params(), lr=lr, momentum=0.9, weight_decay=1e-3).step(
            model.named_grads())
    # a step moves a parameter by lr times its gradient, whose error is measured as above
    assert_params_close(device, host, exact, "after a training step",
                        {path: lr * floor for path, floor in grad_floors.items()})
