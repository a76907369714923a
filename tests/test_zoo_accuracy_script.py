"""bench/zoo_accuracy.py, the PyTorch side of docs/results.md's zoo table: its recipes are
numbaconv's, its networks have numbaconv's parameter counts at the recorded sizes, its
arguments are checked, and a tiny run on a few images trains and prints the epoch line."""

from __future__ import annotations

import gzip
import importlib
import importlib.util
import os
import re

import numpy as np
import pytest

import numbaconv

torch = pytest.importorskip("torch")

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench",
                      "zoo_accuracy.py")

#: The sizes docs/results.md records each network at (model options as `numbaconv run -o`).
RECORDED = {"googlenet": (28, {}), "densenet": (29, {}), "nin": (67, {}),
            "vgg11": (32, {"input_size": 32}), "alexnet": (65, {"input_size": 65}),
            "resnet18": (28, {})}


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("zoo_accuracy", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_recipe_is_numbaconvs(script, name):
    module = {"vgg11": "vgg", "resnet18": "resnet"}.get(name, name)
    defaults = importlib.import_module(f"numbaconv.models.{module}").TRAIN_DEFAULTS
    assert defaults["optimizer"] == "sgd"
    assert script.RECIPES[name] == {"lr": defaults["lr"], "batch_size": defaults["batch_size"]}


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_twin_has_numbaconvs_parameters(script, name):
    size, options = RECORDED[name]
    ours = numbaconv.build_model(name, **options)
    theirs = script.build(name, size, torch)
    assert sum(p.numel() for p in theirs.parameters()) == \
        sum(v.size for v in ours.named_params().values())


def test_defaults_come_from_the_recipe(script):
    args = script.parse_args(["densenet", "--size", "29"])
    assert (args.lr, args.batch_size, args.epochs, args.seed, args.threads) == \
        (0.1, 256, 1, 0, 1)
    assert script.parse_args(["alexnet", "--size", "65", "--lr", "0.5"]).lr == 0.5


@pytest.mark.parametrize("argv, message", [
    (["googlenet"], "--size"),
    (["lenet", "--size", "28"], "invalid choice"),
    (["nin", "--size", "0"], "--size must be at least 1"),
    (["nin", "--size", "67", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["nin", "--size", "67", "--lr", "-1"], "--lr must be positive"),
])
def test_bad_arguments(script, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_data(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 12), ("t10k", 6)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz",
                   rng.integers(0, 256, size=(count, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, size=count))
    return tmp_path


def test_reads_and_scales_like_numbaconv(script, tiny_data):
    from numbaconv.data import as_float_batch, load_fashion_mnist

    train_x, train_y, test_x, test_y = script.load_fashion_mnist(str(tiny_data))
    theirs = load_fashion_mnist(str(tiny_data))
    np.testing.assert_array_equal(train_x, as_float_batch(theirs.train_images))
    np.testing.assert_array_equal(test_x, as_float_batch(theirs.test_images))
    np.testing.assert_array_equal(train_y, theirs.train_labels)
    np.testing.assert_array_equal(test_y, theirs.test_labels)


def test_tiny_run_prints_each_epoch(script, tiny_data, capsys):
    threads = torch.get_num_threads()
    try:
        assert script.main(["vgg11", "--size", "32", "--epochs", "2", "--batch-size", "4",
                            "--data", str(tiny_data)]) == 0
    finally:
        torch.set_num_threads(threads)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("training PyTorch") and "vgg11 on 12 images at 32x32" in lines[0]
    assert "sgd lr 0.05, batch 4, 2 epochs" in lines[0]
    for epoch, line in enumerate(lines[1:], start=1):
        found = re.fullmatch(rf"epoch {epoch}/2  loss \d+\.\d{{4}}  train_acc (\S+)  "
                             r"test_acc (\S+)  [\d,]+ examples/s  \(\d+\.\d s\)", line)
        assert found, line
        assert float(found[2]) * 6 == pytest.approx(round(float(found[2]) * 6), abs=1e-3)
    assert len(lines) == 3


def test_too_small_size_is_one_line(script, tiny_data, capsys):
    threads = torch.get_num_threads()
    try:
        assert script.main(["nin", "--size", "40", "--data", str(tiny_data)]) == 1
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert err.startswith("Error: nin does not take 40x40 images") and err.count("\n") == 1
