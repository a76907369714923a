"""Your own data for --data: an .npz in Keras' mnist.npz layout and folders of PNG/JPEG
images (made here), their shapes and classes taken from the data, one-line errors naming the
file."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from click.testing import CliRunner
from interop_support import require

from numbaconv import checkpoint as ckpt
from numbaconv.cli import cli
from numbaconv.data import DataError, describe_data, load_own_data
from numbaconv.data import own as own_data

FAST = ["--epochs", "1", "--batch-size", "32", "--threads", "1"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("Error: "), result.output
    return lines[-1]


def write_npz(path, n_train=96, n_test=32, shape=(12, 12), classes=3, dtype=np.uint8,
              compressed=False, **extra):
    """Images whose class is visible (a bright row at ``2 * label``), Keras' keys."""
    rng = np.random.default_rng(0)

    def split(n):
        labels = rng.integers(0, classes, n)
        images = rng.integers(0, 60, (n,) + shape).astype(np.uint8)
        images[np.arange(n), 2 * labels] = 255
        return (images if dtype == np.uint8 else (images / 255).astype(dtype)), labels

    (x_train, y_train), (x_test, y_test) = split(n_train), split(n_test)
    save = np.savez_compressed if compressed else np.savez
    save(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, **extra)
    return path


def test_an_npz_is_memory_mapped_and_scaled(tmp_path):
    path = write_npz(tmp_path / "mnist.npz")
    info = describe_data(path)
    assert (info.shape, info.classes, info.kind) == ((1, 12, 12), ("0", "1", "2"), "npz")
    with zipfile.ZipFile(path) as archive:
        entry = archive.getinfo("x_train.npy")
        assert isinstance(own_data._npz_array(path, archive, entry), np.memmap)
    data = load_own_data(path)
    raw = np.load(path)
    assert data.train_x.shape == (96, 1, 12, 12) and data.train_x.dtype == np.float32
    np.testing.assert_array_equal(data.train_x[:, 0], raw["x_train"] / np.float32(255))
    np.testing.assert_array_equal(data.test_y, raw["y_test"])


def test_a_compressed_colour_npz_with_class_names(tmp_path):
    path = write_npz(tmp_path / "colour.npz", shape=(8, 10, 3), classes=2, dtype=np.float32,
                     compressed=True, class_names=np.array(["left", "right", "none"]))
    info = describe_data(path)
    assert info.shape == (3, 8, 10) and info.classes == ("left", "right", "none")
    data = load_own_data(path, info)
    raw = np.load(path)
    np.testing.assert_array_equal(data.test_x, raw["x_test"].transpose(0, 3, 1, 2))


@pytest.mark.parametrize("arrays, message", [
    ({"x_train": np.zeros((2, 4, 4), np.uint8)}, "has no y_train, x_test, y_test; an .npz "
                                                 "needs x_train, y_train, x_test, y_test"),
    ({"x_train": np.zeros((2, 4, 4), np.uint8), "y_train": np.array([0, 5]),
      "x_test": np.zeros((1, 4, 4), np.uint8), "y_test": np.array([0]),
      "class_names": np.array(["a", "b"])}, "label 5 is beyond its 2 class_names"),
    ({"x_train": np.zeros((2, 4, 4), np.uint8), "y_train": np.array([0]),
      "x_test": np.zeros((1, 4, 4), np.uint8), "y_test": np.array([0])},
     "1 labels in y_train but 2 images in x_train"),
    ({"x_train": np.zeros((2, 4, 4, 2), np.uint8), "y_train": np.array([0, 1]),
      "x_test": np.zeros((1, 4, 4, 2), np.uint8), "y_test": np.array([0])},
     r"x_train has shape \(2, 4, 4, 2\); images are N x H x W or N x H x W x C"),
])
def test_npz_errors_name_the_file_and_the_entry(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=f"^{path}: {message}"):
        load_own_data(path)


def write_folder(root, classes=("cat", "dog"), per_class=12, size=(28, 28), colour=(),
                 test="test", suffix=".png"):
    """``root/train/<class>/*.png`` and ``root/<test>/<class>/*``: each class a bright band
    at its own place; the images named in ``colour`` are RGB."""
    image_module = require("PIL.Image", "images")
    rng = np.random.default_rng(1)
    for split, count in (("train", per_class), (test, per_class // 2)):
        for index, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 50, (size[1], size[0])).astype(np.uint8)
                pixels[6 * index:6 * index + 4] = 250
                file = folder / f"{i}{suffix if split == 'train' else '.jpg'}"
                image = image_module.fromarray(pixels)
                if file.name in colour:
                    image = image.convert("RGB")
                image.save(file)
    (root / "train" / classes[0] / "notes.txt").write_text("not an image")
    return root


def test_an_image_folder_gives_classes_and_shape(tmp_path):
    root = write_folder(tmp_path / "pets", size=(20, 16), test="val")
    info = describe_data(root)
    assert info.shape == (1, 16, 20) and info.classes == ("cat", "dog")
    data = load_own_data(root, info)
    assert data.train_x.shape == (24, 1, 16, 20) and data.test_x.shape == (12, 1, 16, 20)
    assert data.train_y.tolist() == [0] * 12 + [1] * 12
    assert 0 <= data.train_x.min() and data.train_x.max() <= 1
    colour = write_folder(tmp_path / "colour", colour=("3.png",))
    assert describe_data(colour).shape == (3, 28, 28)  # one colour image makes the set RGB
    rgb = load_own_data(colour)
    np.testing.assert_array_equal(rgb.train_x[:, 0], rgb.train_x[:, 2])  # gray repeated


def test_corrupt_and_odd_images_are_named(tmp_path):
    root = write_folder(tmp_path / "set")
    broken = root / "train" / "dog" / "5.png"
    broken.write_bytes(broken.read_bytes()[:60])  # truncated: the header still reads
    with pytest.raises(DataError, match=f"^{broken}: not a readable PNG or JPEG image"):
        load_own_data(root)
    broken.write_bytes(b"GIF89a junk")
    with pytest.raises(DataError, match=f"^{broken}: not a readable PNG or JPEG image"):
        describe_data(root)
    image_module = require("PIL.Image", "images")
    image_module.new("L", (30, 28)).save(broken)
    with pytest.raises(DataError, match=f"^{broken}: is 30x28 pixels, .* is 28x28; the images"):
        describe_data(root)
    (root / "test").rename(root / "elsewhere")
    with pytest.raises(DataError, match="has train/ but neither test/ nor val/"):
        describe_data(root)


def test_run_takes_channels_and_classes_from_an_image_folder(tmp_path):
    root = write_folder(tmp_path / "pets", classes=("cat", "dog", "fox"),
                        colour=("0.png",))
    saved = tmp_path / "pets.npz"
    result = invoke("run", "lenet", "--data", root, *FAST, "--save", saved)
    assert result.exit_code == 0, result.output
    assert "training lenet on 36 images from" in result.output
    checkpoint = ckpt.load(saved)
    assert checkpoint.classes == ["cat", "dog", "fox"] and checkpoint.input_shape == [3, 28, 28]
    assert checkpoint.params["0.weight"].shape == (6, 3, 5, 5)
    assert checkpoint.params["11.weight"].shape == (3, 84)
    evaluated = invoke("evaluate", saved, "--data", root)
    assert evaluated.exit_code == 0 and evaluated.output.startswith("test_acc ")
    other = write_folder(tmp_path / "other", classes=("ant", "bee", "cow"), colour=("0.png",))
    assert one_line_error(invoke("evaluate", saved, "--data", other)) == (
        f"Error: {saved} classifies cat, dog, fox; the data's classes are ant, bee, cow")


SPEC = """
layers = [
  {type = "Conv2d", in_channels = 1, out_channels = 4, kernel_size = 3, padding = 1},
  {type = "ReLU"},
  {type = "MaxPool2d", kernel_size = 2},
  {type = "Flatten"},
  {type = "Linear", in_features = 144, out_features = 3},
]
[train]
optimizer = "adam"
lr = 0.01
"""


def test_a_spec_trains_on_an_npz_and_is_checked_against_it(tmp_path):
    data = write_npz(tmp_path / "rows.npz")
    spec = tmp_path / "net.toml"
    spec.write_text(SPEC)
    saved = tmp_path / "net.npz"
    result = invoke("run", spec, "--data", data, *FAST, "--save", saved)
    assert result.exit_code == 0, result.output
    assert ckpt.load(saved).classes == ["0", "1", "2"]
    wrong = tmp_path / "wrong.toml"
    wrong.write_text(SPEC.replace("out_features = 3", "out_features = 10"))
    assert one_line_error(invoke("run", wrong, "--data", data, *FAST)).endswith(
        "but classifying 3 classes needs (N, 3)")
    colour = write_npz(tmp_path / "colour.npz", shape=(12, 12, 3))
    assert "layer 0 (Conv2d): expects 1 input channels, got 3" in one_line_error(
        invoke("run", spec, "--data", colour, *FAST))
    assert one_line_error(invoke("run", spec, "--data", data, *FAST, "--save", data)) == (
        f"Error: --save {data} would overwrite the data file {data}")
