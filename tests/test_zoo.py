"""D2L's chapter 7 models: registered with D2L's recipe, PyTorch's parameter counts, and the
same forward and backward as their PyTorch twins (numbaconv.benchmarks.twins) holding the same
weights.
"""

import functools

import numpy as np
import pytest

import numbaconv
from numbaconv.benchmarks.twins import TWINS
from numbaconv.benchmarks.zoo import load_twin, twin_name
from numbaconv.layers import Dropout, build_layer, layer_spec
from numbaconv.layers.containers import format_summary, summary
from numbaconv.models import check_input_size, smallest_input
from numbaconv.registry import get_model
from numbaconv.training import Settings

ZOO = ("alexnet", "vgg11", "nin", "googlenet", "resnet18", "densenet")

#: D2L's recipes (d2l-en v0.17, chapter 7): lr, batch size, epochs, and the resized side.
RECIPES = {
    "alexnet": (0.01, 128, 10, 224),
    "vgg11": (0.05, 128, 10, 224),
    "nin": (0.1, 128, 10, 224),
    "googlenet": (0.1, 128, 10, 96),
    "resnet18": (0.05, 256, 10, 96),
    "densenet": (0.1, 256, 10, 96),
}


@pytest.fixture(scope="module")
def zoo(torch):
    """Model name -> its PyTorch twin's constructor (:data:`numbaconv.benchmarks.twins.TWINS`)."""
    return {name: functools.partial(twin, torch) for name, twin in TWINS.items()}


def torch_twin(zoo, name, options):
    """The PyTorch twin of ``numbaconv.build_model(name, **options)``."""
    return zoo[name](**options)


@pytest.mark.parametrize("name", ZOO)
def test_each_model_is_registered_with_d2ls_recipe_and_input_size(name):
    entry = get_model(name)
    lr, batch_size, epochs, side = RECIPES[name]
    assert entry.train_defaults == {"optimizer": "sgd", "lr": lr, "batch_size": batch_size,
                                    "epochs": epochs}
    assert entry.input_size == side
    # what ``numbaconv run`` makes of them: a Settings without a stray key
    assert Settings(**{**Settings().__dict__, **entry.train_defaults}).lr == lr


# ------------------------------------------------------------------------ parameter counts

# VGG-11 itself (ratio 1) at 32x32: its 224x224 twin holds 129 million weights (10 s to draw);
# the first Linear's input at 224 is checked with D2L's ratio 4
@pytest.mark.parametrize("name, options", [
    ("alexnet", {}), ("vgg11", {}), ("vgg11", {"ratio": 1, "input_size": 32}), ("nin", {}),
    ("googlenet", {}), ("resnet18", {}), ("densenet", {}),
    ("resnet18", {"in_channels": 3, "num_classes": 100})])
def test_num_params_equals_pytorchs_at_d2ls_input_size(torch, zoo, name, options):
    model = numbaconv.build_model(name, rng=0, **options)
    with torch.device("meta"):  # counts without allocating the weights
        twin = torch_twin(zoo, name, options)
    assert model.num_params() == sum(p.numel() for p in twin.parameters())
    # and the tree shows at that size, the classes at the end
    side = options.get("input_size", get_model(name).input_size)
    rows = summary(model, (1, options.get("in_channels", 1), side, side))
    assert rows[0].output_shape == (1, options.get("num_classes", 10))
    assert rows[0].n_params == model.num_params()
    assert format_summary(rows).splitlines()[-1].split()[1] == f"{model.num_params():,}"


# ------------------------------------------------------------------------ input sizes

def torch_smallest(torch, build, largest=80):
    """The smallest side the PyTorch twin ``build(side)`` takes (shapes only: meta device)."""
    for side in range(1, largest + 1):
        with torch.device("meta"):
            try:
                build(side)(torch.zeros(2, 1, side, side))
            except RuntimeError:
                continue
        return side
    raise AssertionError(f"no side up to {largest}")


SMALL = {"alexnet": {"input_size": 65}, "vgg11": {"input_size": 32}}


@pytest.mark.parametrize("name", ZOO)
def test_smallest_input_is_pytorchs(torch, zoo, name):
    model = numbaconv.build_model(name, rng=0, **SMALL.get(name, {}))
    side = smallest_input(model)
    if name in SMALL:
        expected = torch_smallest(torch, lambda s: zoo[name](input_size=s))
    else:
        expected = torch_smallest(torch, lambda s: zoo[name]())
    assert side == expected
    check_input_size(model, side, name)
    if side > 1:
        with pytest.raises(ValueError) as error:
            check_input_size(model, side - 1, name)
        assert str(error.value) == (f"{name} needs images of at least {side}x{side} pixels, "
                                    f"got {side - 1}x{side - 1}")


@pytest.mark.parametrize("name, smallest", [("alexnet", 65), ("vgg11", 32)])
def test_a_model_built_for_too_small_images_is_a_one_line_error(name, smallest):
    with pytest.raises(ValueError, match=f"^{name} needs images of at least {smallest}x"
                                         f"{smallest} pixels, got 28x28$"):
        numbaconv.build_model(name, input_size=28)


def test_an_image_size_the_built_linear_does_not_take_names_the_model():
    model = numbaconv.build_model("alexnet", input_size=65, rng=0)
    with pytest.raises(ValueError, match=r"^alexnet does not take 128x128 images: layer 14 "
                                         r"\(Linear\)") as error:
        check_input_size(model, 128, "alexnet")
    assert "\n" not in str(error.value)


# ------------------------------------------------------------------------ parity with PyTorch

def masked_dropout(torch, mask):
    """A module multiplying by numbaconv's dropout ``mask`` (0 or 1/(1-p)): the same drops."""

    class Mask(torch.nn.Module):
        def forward(self, x):
            return x * torch.from_numpy(mask)

    return Mask()


def assert_close(ours, theirs, what, rtol=1e-4, floor=0.0):
    """Equal to float32 rounding, relative to the tensor's largest element (or ``floor``)."""
    theirs = theirs.detach().numpy()
    assert ours.shape == theirs.shape, what
    scale = max(float(np.abs(theirs).max()) if theirs.size else 0.0, floor)
    error = float(np.abs(ours - theirs).max()) if theirs.size else 0.0
    assert error <= rtol * scale + 1e-6, f"{what}: max error {error:.3g} (scale {scale:.3g})"


def training_side(model, side, batch=2, values=8):
    """The smallest side from ``side`` at which every BatchNorm2d of ``model`` normalizes at
    least ``values`` values per channel in a training batch of ``batch``: with 2 values (a 1x1
    map), batch statistics turn any difference, float32 rounding too, into +-1."""
    while any(row.name == "BatchNorm2d" and batch * row.output_shape[2] * row.output_shape[3]
              < values for row in summary(model, (batch, 1, side, side))):
        side += 1
    return side


@pytest.mark.parametrize("name", ZOO)
def test_forward_and_backward_match_the_pytorch_twin(torch, zoo, name):
    rng = np.random.default_rng(7)
    options = SMALL.get(name, {})
    model = numbaconv.build_model(name, rng=1, **options)
    twin = torch_twin(zoo, name, options)
    for path, array in model.named_buffers().items():  # running statistics to evaluate with
        if path.endswith("running_mean"):
            array[...] = rng.normal(0, 0.5, array.shape)
        elif path.endswith("running_var"):
            array[...] = rng.uniform(0.5, 2.0, array.shape)
    torch_name = twin_name(name)
    load_twin(torch, model, twin, torch_name)

    # evaluation at the smallest input: dropout off, running statistics
    side = smallest_input(model)
    x = rng.standard_normal((2, 1, side, side)).astype(np.float32)
    twin.eval()
    assert_close(model.forward(x, training=False), twin(torch.from_numpy(x)), "eval forward")

    # training: batch statistics, and the twin's dropout takes numbaconv's masks
    side = training_side(model, side)
    x = rng.standard_normal((2, 1, side, side)).astype(np.float32)
    y = model.forward(x, training=True)
    for path, layer in model.named_layers():
        if isinstance(layer, Dropout):
            parent, _, child = torch_name(path.rstrip(".")).rpartition(".")
            twin.get_submodule(parent).register_module(child, masked_dropout(torch, layer.mask))
    twin.train()
    x_torch = torch.from_numpy(x).requires_grad_(True)
    y_torch = twin(x_torch)
    assert_close(y, y_torch, "training forward")
    grad_y = rng.standard_normal(y.shape).astype(np.float32)
    grad_x = model.backward(grad_y)
    y_torch.backward(torch.from_numpy(grad_y))
    assert_close(grad_x, x_torch.grad, "input gradient")
    twin_params = dict(twin.named_parameters())
    grads = model.named_grads()
    layer_scale = {}  # a layer's largest gradient element, over its parameters
    for path, grad in grads.items():
        layer = path.rpartition(".")[0]
        layer_scale[layer] = max(layer_scale.get(layer, 0.0), float(np.abs(grad).max()))
    for path, grad in grads.items():
        # a parameter whose effect later batch statistics take out again (a convolution's
        # bias before a BatchNorm; in DenseNet every bias, and the stem's BatchNorm scale,
        # which ReLU and max-pool pass on unchanged) has gradient 0 but for rounding, on both
        # sides: measured against its layer's largest gradient
        assert_close(grad, twin_params[torch_name(path)].grad, f"gradient of {path}",
                     floor=layer_scale[path.rpartition(".")[0]])
    twin_buffers = dict(twin.named_buffers())
    for path, buffer in model.named_buffers().items():
        assert_close(buffer, twin_buffers[torch_name(path)], f"{path} after the training step")




def test_numbaconv_summary_shows_the_tree_of_a_zoo_model():
    from click.testing import CliRunner

    from numbaconv.cli import cli

    result = CliRunner().invoke(cli, ["summary", "resnet18"])  # at 1x28x28, the CLI's size
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.split()[:2] == ["1.0.0", "Residual"] for line in lines)
    assert any(line.split()[:2] == ["1.0.0.body.1", "BatchNorm2d"] for line in lines)
    assert lines[-1].split()[:2] == ["Total", "11,178,378"]


@pytest.mark.parametrize("name", ["nin", "googlenet", "resnet18", "densenet"])
def test_a_zoo_model_rebuilds_from_its_spec_as_checkpoints_do(name):
    model = numbaconv.build_model(name, rng=0)
    rebuilt = build_layer(layer_spec(model))
    assert layer_spec(rebuilt) == layer_spec(model)
    rebuilt.load_state_dict(model.state_dict())
    x = np.random.default_rng(0).standard_normal((2, 1, 67, 67)).astype(np.float32)
    np.testing.assert_array_equal(rebuilt.forward(x), model.forward(x))


@pytest.mark.parametrize("input_size", [0, 2.5, True, "96"])
def test_a_plugin_registering_a_model_with_a_bad_input_size_is_an_error(input_size):
    from numbaconv.registry import manager
    from numbaconv.registry.hookspecs import hookimpl

    class Plugin:
        @hookimpl
        def register_models(self, register):
            register("zoo-test-model", numbaconv.models.lenet, input_size=input_size)

    manager.pm.register(Plugin(), name="zoo-test-plugin")
    try:
        with pytest.raises(manager.RegistryError, match="'zoo-test-plugin' registered model "
                                                        "'zoo-test-model' with input_size"):
            manager.model_entries()
    finally:
        manager.pm.unregister(name="zoo-test-plugin")
