"""numbaconv predict: per image the top classes with probabilities, by the class names saved in
the checkpoint (Fashion-MNIST's for its runs), images resized and made gray or colour as the
model was trained."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from interop_support import require

import numbaconv
from numbaconv import checkpoint as ckpt
from numbaconv.cli import cli
from numbaconv.data.fashion_mnist import CLASS_NAMES, SAMPLE_DIR, load_dir
from numbaconv.layers import layer_spec
from numbaconv.losses import softmax
from numbaconv.network import from_spec


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """Two Fashion-MNIST test images as 28x28 gray PNGs, and the first again as a 56x56
    colour PNG (each pixel doubled, the same value in R, G and B)."""
    image_module = require("PIL.Image", "images")
    folder = tmp_path_factory.mktemp("pictures")
    images = load_dir(SAMPLE_DIR).test_images[:2]
    paths = []
    for i, pixels in enumerate(images):
        paths.append(folder / f"item{i}.png")
        image_module.fromarray(pixels).save(paths[-1])
    big = np.repeat(np.repeat(images[0], 2, axis=0), 2, axis=1)
    paths.append(folder / "big-colour.png")
    image_module.fromarray(np.stack([big] * 3, axis=-1)).save(paths[-1])
    return paths, images


def expected_lines(model, images, names, top):
    x = (images[:, None] / np.float32(255)).astype(np.float32)
    rows = softmax(model.forward(x))
    return [", ".join(f"{names[i]} {row[i]:.4f}" for i in np.argsort(-row, kind="stable")[:top])
            for row in rows]


def test_a_fashion_mnist_checkpoint_predicts_with_its_class_names(tmp_path, pictures):
    paths, images = pictures
    model = numbaconv.build_model("lenet", activation="relu", pool="max", rng=0)
    saved = tmp_path / "lenet.npz"  # as runs saved it before class names were recorded
    ckpt.save(saved, ckpt.Checkpoint(spec=layer_spec(model), params=model.state_dict(),
                                     model="lenet"))
    result = invoke("predict", saved, *paths, "--top", "2")
    assert result.exit_code == 0, result.output
    lines = expected_lines(model, images, CLASS_NAMES, 2)
    assert result.output.splitlines() == [f"{paths[0]}: {lines[0]}", f"{paths[1]}: {lines[1]}",
                                          f"{paths[2]}: {lines[0]}"]  # resized, made gray
    first = result.output.splitlines()[0]
    assert first.split(": ", 1)[1].split(" ")[0] in " ".join(CLASS_NAMES)


def test_images_are_resized_as_the_run_resized_them_and_named_by_the_checkpoint(
        tmp_path, pictures):
    paths, _ = pictures
    # this network takes 32x32 images only: the run trained it with --resize 32
    model = from_spec([{"type": "Conv2d", "in_channels": 1, "out_channels": 2,
                        "kernel_size": 3},
                       {"type": "AvgPool2d", "kernel_size": 30}, {"type": "Flatten"},
                       {"type": "Linear", "in_features": 2, "out_features": 3}], rng=0)
    saved = tmp_path / "resized.npz"
    names = ["cat", "dog", "fox"]
    ckpt.save(saved, ckpt.Checkpoint(spec=layer_spec(model), params=model.state_dict(),
                                     train={"resize": 32}, classes=names,
                                     input_shape=[1, 28, 28]))
    result = invoke("predict", saved, paths[0], "--top", "5")
    assert result.exit_code == 0, result.output
    shown = result.output.strip().split(": ", 1)[1].split(", ")
    assert sorted(item.split()[0] for item in shown) == names  # --top beyond 3 shows 3
    assert abs(sum(float(item.split()[1]) for item in shown) - 1) < 1e-3


def test_predict_errors_are_one_line(tmp_path, pictures):
    paths, _ = pictures
    model = numbaconv.build_model("lenet", rng=0)
    saved = tmp_path / "lenet.npz"
    ckpt.save(saved, ckpt.Checkpoint(spec=layer_spec(model), params=model.state_dict(),
                                     classes=["only", "two"]))
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    for args, message in [
        ((saved, paths[0]), "the checkpoint names 2 classes, its model gives 10 outputs"),
        ((tmp_path / "none.npz", paths[0]), f"checkpoint {tmp_path / 'none.npz'} does not "
                                            "exist"),
    ]:
        result = invoke("predict", *args)
        assert result.exit_code == 1 and result.output.strip() == f"Error: {message}"
    fashion = tmp_path / "fashion.npz"
    ckpt.save(fashion, ckpt.Checkpoint(spec=layer_spec(model), params=model.state_dict()))
    result = invoke("predict", fashion, not_image)
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {not_image}: not a readable PNG or JPEG image")
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("classes", [["a", "a"], ["ok", ""], ["tab\there"], []])
def test_checkpoint_class_names_are_validated(tmp_path, classes):
    model = numbaconv.build_model("lenet", rng=0)
    with pytest.raises(ckpt.CheckpointError, match="'classes'"):
        ckpt.save(tmp_path / "x.npz", ckpt.Checkpoint(
            spec=layer_spec(model), params=model.state_dict(), classes=classes))


@pytest.mark.parametrize("shape", [[0, 28, 28], [1, 28, 28, 1, 1], ["1"], 28])
def test_checkpoint_input_shapes_are_validated(tmp_path, shape):
    model = numbaconv.build_model("lenet", rng=0)
    with pytest.raises(ckpt.CheckpointError, match="'input_shape' must be 1 to 3 sizes"):
        ckpt.save(tmp_path / "x.npz", ckpt.Checkpoint(
            spec=layer_spec(model), params=model.state_dict(), input_shape=shape))
