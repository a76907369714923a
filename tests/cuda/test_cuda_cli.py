"""``numbaconv run --device cuda`` end to end (the simulator, or a GPU), against --device cpu."""

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_data import write_tiny_dataset  # noqa: E402

from numbaconv.cli import cli  # noqa: E402

SPEC = """layers = [
  {type = "Conv2d", in_channels = 1, out_channels = 2, kernel_size = 4, stride = 4},
  {type = "ReLU"},
  {type = "Flatten"},
  {type = "Linear", in_features = 98, out_features = 10},
]
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuda-cli")
    spec = root / "tiny.toml"
    spec.write_text(SPEC)
    return spec, write_tiny_dataset(root / "data", 24, 8)


def test_run_on_the_device_matches_the_cpu(setup, tmp_path):
    spec, data = setup
    metrics = {}
    for device in ("cpu", "cuda"):
        path = tmp_path / f"{device}.jsonl"
        result = CliRunner().invoke(cli, [
            "run", str(spec), "--device", device, "--data", str(data), "--epochs", "2",
            "--batch-size", "8", "--lr", "0.05", "--metrics", str(path),
            "--save", str(tmp_path / f"{device}.npz")])
        assert result.exit_code == 0, result.output
        metrics[device] = [json.loads(line) for line in path.read_text().splitlines()]
    for cpu, gpu in zip(metrics["cpu"], metrics["cuda"]):
        assert gpu["train_loss"] == pytest.approx(cpu["train_loss"], rel=1e-4)
        assert (gpu["train_acc"], gpu["test_acc"]) == (cpu["train_acc"], cpu["test_acc"])
    evaluated = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "cuda.npz"),
                                         "--data", str(data)])
    assert evaluated.output.strip().endswith(f"test_acc {metrics['cuda'][-1]['test_acc']:.4f}")


RESNET_SPEC = """\
[[layers]]
type = "Conv2d"
in_channels = 1
out_channels = 4
kernel_size = 4
stride = 4

[[layers]]
type = "ReLU"

[[layers]]
type = "Residual"
  [[layers.body]]
  type = "Conv2d"
  in_channels = 4
  out_channels = 4
  kernel_size = 3
  padding = 1
  [[layers.body]]
  type = "ReLU"
  [[layers.body]]
  type = "Conv2d"
  in_channels = 4
  out_channels = 4
  kernel_size = 3
  padding = 1

[[layers]]
type = "ReLU"

[[layers]]
type = "Residual"
  [[layers.body]]
  type = "Conv2d"
  in_channels = 4
  out_channels = 8
  kernel_size = 3
  stride = 2
  padding = 1
  [[layers.body]]
  type = "ReLU"
  [[layers.body]]
  type = "Conv2d"
  in_channels = 8
  out_channels = 8
  kernel_size = 3
  padding = 1
  [[layers.shortcut]]
  type = "Conv2d"
  in_channels = 4
  out_channels = 8
  kernel_size = 1
  stride = 2

[[layers]]
type = "ReLU"

[[layers]]
type = "AvgPool2d"
kernel_size = 4

[[layers]]
type = "Flatten"

[[layers]]
type = "Linear"
in_features = 8
out_features = 10
"""


def test_a_resnet_style_spec_trains_on_the_device_as_on_the_cpu(setup, tmp_path):
    """A stem, two Residual blocks (identity and 1x1-conv shortcuts), a pool over the whole
    map, Flatten, Linear: the CLI trains it on both devices to the same metrics."""
    _, data = setup
    spec = tmp_path / "resnet.toml"
    spec.write_text(RESNET_SPEC)
    metrics = {}
    for device in ("cpu", "cuda"):
        path = tmp_path / f"{device}.jsonl"
        result = CliRunner().invoke(cli, [
            "run", str(spec), "--device", device, "--data", str(data), "--epochs", "1",
            "--batch-size", "8", "--optimizer", "adam", "--lr", "0.01",
            "--metrics", str(path)])
        assert result.exit_code == 0, result.output
        metrics[device] = json.loads(path.read_text())
    assert metrics["cuda"]["train_loss"] == pytest.approx(metrics["cpu"]["train_loss"],
                                                          rel=1e-4)
    assert metrics["cuda"]["test_acc"] == metrics["cpu"]["test_acc"]
