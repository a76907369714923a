"""PyTorch weights into numbaconv: numbaconv.from_torch_state_dict (names kept or paired by
position, shapes checked, a mismatch names the parameter) and ``numbaconv import WEIGHTS.pt``."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from interop_support import d2l_lenet, require_layer, sample_images

import numbaconv
from numbaconv import checkpoint as ckpt
from numbaconv.cli import cli
from numbaconv.data.fashion_mnist import SAMPLE_DIR, load_dir
from numbaconv.layers import Conv2d, Flatten, Linear, ReLU, Sequential
from numbaconv.network import load_model


def trained_torch_lenet(torch, steps: int = 5):
    """D2L's LeNet after a few steps of D2L's SGD (lr 0.9) on the shipped sample."""
    torch.manual_seed(0)
    net = d2l_lenet(torch)
    sample = load_dir(SAMPLE_DIR)
    images = torch.from_numpy(sample.train_images[:64 * steps]).float()[:, None] / 255
    labels = torch.from_numpy(sample.train_labels[:64 * steps])
    optimizer = torch.optim.SGD(net.parameters(), lr=0.9)
    for step in range(steps):
        batch = slice(64 * step, 64 * (step + 1))
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(images[batch]), labels[batch]).backward()
        optimizer.step()
    return net.eval()


def torch_logits(torch, net, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


def test_a_lenet_trained_in_pytorch_predicts_the_same(torch):
    net = trained_torch_lenet(torch)
    model = numbaconv.build_model("lenet", rng=1)
    pairs = numbaconv.from_torch_state_dict(model, net.state_dict())
    assert pairs == {key: key for key in net.state_dict()}  # nn.Sequential keys are ours
    x = sample_images(64)
    expected = torch_logits(torch, net, x)
    got = model.forward(x)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_named_modules_are_paired_by_position_with_batch_norm_buffers(torch):
    bn2d = require_layer("BatchNorm2d")
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(1, 4, 3)
            self.norm = nn.BatchNorm2d(4)
            self.head = nn.Linear(4 * 26 * 26, 10)

        def forward(self, x):
            return self.head(torch.relu(self.norm(self.stem(x))).flatten(1))

    torch.manual_seed(1)
    net = Net()
    with torch.no_grad():
        net.norm.running_mean.uniform_(-1, 1)
        net.norm.running_var.uniform_(0.5, 2)
        net.norm.num_batches_tracked.fill_(7)
    net.eval()
    model = Sequential([Conv2d(1, 4, 3), bn2d(4), ReLU(), Flatten(), Linear(4 * 26 * 26, 10)])
    pairs = numbaconv.from_torch_state_dict(model, net.state_dict())
    assert pairs["1.running_var"] == "norm.running_var"
    assert pairs["4.weight"] == "head.weight"
    assert int(model[1].buffers["num_batches_tracked"]) == 7
    x = sample_images(8)
    np.testing.assert_allclose(model.forward(x), torch_logits(torch, net, x), atol=1e-4)


def test_a_mismatch_names_the_parameter_and_changes_nothing(torch):
    net = trained_torch_lenet(torch, steps=1)
    model = numbaconv.build_model("lenet", num_classes=5, rng=0)
    before = model.state_dict()
    with pytest.raises(ValueError) as caught:
        numbaconv.from_torch_state_dict(model, net.state_dict())
    assert str(caught.value) == ("parameter 11.weight has shape (10, 84) in the state_dict, "
                                 "the model's is (5, 84)")
    assert all((before[k] == v).all() for k, v in model.state_dict().items())


def test_another_architecture_is_named_by_position():
    model = Sequential([Conv2d(1, 4, 3), ReLU(), Flatten(), Linear(4 * 26 * 26, 10)])
    other = {"features.weight": np.zeros((4, 1, 3, 3), np.float32),
             "classifier.weight": np.zeros((10, 2704), np.float32),
             "classifier.bias": np.zeros(10, np.float32)}
    with pytest.raises(ValueError, match=r"'classifier.weight' \(entry 1\) faces the model's "
                                         r"'0.bias'"):
        numbaconv.from_torch_state_dict(model, other)


def test_numpy_arrays_need_no_torch():
    source = numbaconv.build_model("lenet", activation="relu", rng=2)
    model = numbaconv.build_model("lenet", activation="relu", rng=3)
    numbaconv.from_torch_state_dict(model, {f"module.{k}": v
                                            for k, v in source.state_dict().items()})
    x = sample_images(4)
    np.testing.assert_array_equal(model.forward(x), source.forward(x))


def test_the_cli_imports_a_pt_file_for_a_named_model(torch, tmp_path):
    net = trained_torch_lenet(torch, steps=2)
    weights = tmp_path / "lenet.pth"
    torch.save({"epoch": 2, "model_state_dict": net.state_dict()}, weights)
    out = tmp_path / "lenet.npz"
    result = CliRunner().invoke(cli, ["import", str(weights), str(out), "--model", "lenet"])
    assert result.exit_code == 0, result.output
    model, saved = load_model(out)
    assert saved.model == "lenet" and saved.input_shape == [1, 28, 28]
    x = sample_images(32)
    np.testing.assert_allclose(model.forward(x), torch_logits(torch, net, x), atol=1e-4)

    missing = CliRunner().invoke(cli, ["import", str(weights), str(tmp_path / "x.npz")])
    assert missing.exit_code == 1
    assert missing.output.strip() == (f"Error: {weights} holds weights only: name their "
                                      "architecture with --model MODEL|SPEC.toml")
    pickled = tmp_path / "module.pt"
    torch.save(net, pickled)  # a whole module: not read, as it would run pickled code
    refused = CliRunner().invoke(cli, ["import", str(pickled), str(tmp_path / "y.npz"),
                                       "--model", "lenet"])
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    lines = refused.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: cannot read {pickled} as PyTorch")
    wrong = CliRunner().invoke(cli, ["import", str(weights), str(tmp_path / "z.npz"),
                                     "--model", "lenet", "-o", "num_classes=4"])
    assert wrong.output.strip().splitlines() == [
        "Error: parameter 11.weight has shape (10, 84) in the state_dict, the model's is "
        "(4, 84)"]
    assert not (tmp_path / "z.npz").exists()
    assert ckpt.load(out).epoch == 0
