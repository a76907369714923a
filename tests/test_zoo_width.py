"""The chapter 7 models' ``width_divisor`` option: the same tree as D2L's network, every
width divided (each at least 1) but the class scores; 1, the default, is D2L's network
(tests/test_zoo.py checks that one against PyTorch)."""

import re

import numpy as np
import pytest

import numbaconv
from numbaconv.layers import Conv2d, Linear
from numbaconv.models import smallest_input

SMALL = {"alexnet": {"input_size": 65}, "vgg11": {"input_size": 32}}
CLASSES = 10


def widths(model):
    """{tree path: output channels or units} of every Conv2d and Linear."""
    return {path: layer.params["weight"].shape[0] for path, layer in model.named_layers()
            if isinstance(layer, (Conv2d, Linear))}


ZOO = ["alexnet", "vgg11", "nin", "googlenet", "resnet18", "densenet"]


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("divisor", [8, 16])
def test_width_divisor_narrows_every_layer_but_the_class_scores(name, divisor):
    full = numbaconv.build_model(name, rng=0, **SMALL.get(name, {}))
    narrow = numbaconv.build_model(name, rng=0, width_divisor=divisor, **SMALL.get(name, {}))
    full_widths, narrow_widths = widths(full), widths(narrow)
    assert list(narrow_widths) == list(full_widths)  # the same tree of layers
    for path, width in full_widths.items():
        want = CLASSES if width == CLASSES else max(1, width // divisor)
        assert narrow_widths[path] == want, path
    side = smallest_input(narrow)
    assert side == smallest_input(full)
    x = np.random.default_rng(0).standard_normal((2, 1, side, side)).astype(np.float32)
    assert narrow.forward(x).shape == (2, CLASSES)
    assert narrow.num_params() < full.num_params()


@pytest.mark.parametrize("name", ZOO)
def test_a_huge_width_divisor_leaves_every_layer_a_channel(name):
    # DenseNet's transitions halve what its narrowed blocks add up to, so there the rule
    # above holds only for divisors that divide its widths
    model = numbaconv.build_model(name, rng=0, width_divisor=10**6, **SMALL.get(name, {}))
    assert min(widths(model).values()) == 1
    side = smallest_input(model)
    x = np.random.default_rng(0).standard_normal((2, 1, side, side)).astype(np.float32)
    assert model.forward(x).shape == (2, CLASSES)


def test_width_divisor_one_is_the_default():
    for name in ("nin", "densenet"):
        default = numbaconv.build_model(name, rng=3).state_dict()
        same = numbaconv.build_model(name, rng=3, width_divisor=1).state_dict()
        assert list(same) == list(default)
        for key, value in default.items():
            np.testing.assert_array_equal(same[key], value, err_msg=key)


@pytest.mark.parametrize("value, message", [
    (0, "width_divisor must be at least 1, got 0"),
    (2.5, "width_divisor must be an int, got 2.5"),
    (True, "width_divisor must be an int, got True"),
])
def test_a_bad_width_divisor_is_a_one_line_error(value, message):
    for name in ZOO:
        # build_model names the model and the options before a factory's TypeError
        with pytest.raises(ValueError, match=f"{re.escape(message)}$") as error:
            numbaconv.build_model(name, width_divisor=value, **SMALL.get(name, {}))
        assert "\n" not in str(error.value)


def test_numbaconv_summary_takes_the_option():
    from click.testing import CliRunner

    from numbaconv.cli import cli

    result = CliRunner().invoke(cli, ["summary", "resnet18", "-o", "width_divisor=16"])
    assert result.exit_code == 0, result.output
    params = numbaconv.build_model("resnet18", width_divisor=16).num_params()
    assert result.output.splitlines()[-1].split()[:2] == ["Total", f"{params:,}"]
