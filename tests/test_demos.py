"""The text's lessons as demos: their numbers, their command lines and their pictures.

Pictures are checked as files: a PNG signature, the IHDR width and height the layout
promises, and content that is not one flat colour. Fashion-MNIST comes from the sample that
numbaconv ships (always there, small and fast), except in the one test of the default search,
which takes Debian's set when installed and the sample otherwise, never the network.
"""

from __future__ import annotations

import itertools
import re
import struct
import sys

import click
import numpy as np
import pytest
from click.testing import CliRunner

from numbaconv import shapes
from numbaconv.data import CLASS_NAMES
from numbaconv.data.fashion_mnist import SAMPLE_DIR, load_dir
from numbaconv.layers import layer_spec
from numbaconv.lessons import demos

MISSING = "Error: matplotlib is not installed: pip install 'numbaconv[plot]'"


# --------------------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def app():
    """The real ``numbaconv`` group with this issue's commands added, as cli.py will."""
    from numbaconv.cli import cli
    from numbaconv.cli.demos import demo, shape, show

    group = click.Group("numbaconv", commands=dict(cli.commands))
    for command in (demo, shape, show):
        group.add_command(command)
    return group


def invoke(app, *args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def mpl():
    return pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def sample():
    return load_dir(SAMPLE_DIR)


def png_size(path) -> tuple[int, int]:
    data = open(path, "rb").read(24)
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def check_png(path, size) -> np.ndarray:
    """``path`` is a PNG of ``size`` (width, height) pixels that is not one flat colour."""
    import matplotlib.image

    assert png_size(path) == tuple(size)
    pixels = matplotlib.image.imread(str(path))
    assert pixels.shape[:2] == (size[1], size[0])
    rgb = pixels[..., :3]
    assert rgb.std() > 0.05, f"{path} is nearly one colour"
    # more than a few distinct colours: real pictures, not an empty frame with text
    codes = (rgb * 255).round().astype(np.uint32) @ np.array([65536, 256, 1], np.uint32)
    assert len(np.unique(codes)) > 50
    return pixels


def pixels_of(size_in) -> tuple[int, int]:
    from numbaconv.lessons.plotting import DPI

    return (round(size_in[0] * DPI), round(size_in[1] * DPI))


def no_temporary_files(directory) -> None:
    leftovers = [p.name for p in directory.iterdir() if p.name.endswith(".part")]
    assert not leftovers, f"temporary files left behind: {leftovers}"


def corr2d_loops(X, K) -> np.ndarray:
    """The text's definition, in plain loops."""
    kh, kw = K.shape
    Y = np.zeros((X.shape[0] - kh + 1, X.shape[1] - kw + 1))
    for i in range(Y.shape[0]):
        for j in range(Y.shape[1]):
            Y[i, j] = sum(K[a, b] * X[i + a, j + b] for a in range(kh) for b in range(kw))
    return Y


# --------------------------------------------------------------------------- section 2: corr2d

def test_corr2d_example_values():
    ex = demos.corr2d_example()
    np.testing.assert_array_equal(ex.X, np.arange(9).reshape(3, 3))
    np.testing.assert_array_equal(ex.K, np.arange(4).reshape(2, 2))
    np.testing.assert_array_equal(ex.correlation, [[19, 25], [37, 43]])
    # true convolution: sum_{a,b} K[a,b] X[i-a+1, j-b+1] over the valid part = flipped kernel
    np.testing.assert_array_equal(ex.convolution, corr2d_loops(ex.X, ex.K[::-1, ::-1]))
    np.testing.assert_array_equal(ex.convolution, [[5, 11], [23, 29]])


def test_demo_corr2d_prints_both_results(app):
    result = invoke(app, "demo", "corr2d")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    both = [line for line in lines if "[[19, 25]" in line]
    assert len(both) == 1 and "[[ 5, 11]" in both[0], result.output
    below = lines[lines.index(both[0]) + 1]
    assert "[37, 43]]" in below and "[23, 29]]" in below
    assert "corr2d     Y[0,0] = 0*0 + 1*1 + 3*2 + 4*3 = 19" in lines
    assert "convolve2d Y[0,0] = 0*3 + 1*2 + 3*1 + 4*0 = 5" in lines


# --------------------------------------------------------------------------- section 2.2: edges

def test_edge_image_and_target():
    X, Y = demos.edge_image(), demos.edge_target()
    assert X.shape == (6, 8) and X.dtype == np.float32
    np.testing.assert_array_equal(X[:, 2:6], 0)
    np.testing.assert_array_equal(X[:, [0, 1, 6, 7]], 1)
    expected = np.zeros((6, 7))
    expected[:, 1], expected[:, 5] = 1, -1
    np.testing.assert_array_equal(Y, expected)
    np.testing.assert_array_equal(Y, corr2d_loops(X, np.array([[1, -1]])))


def test_learn_edge_kernel_converges():
    result = demos.learn_edge_kernel(seed=0)
    assert len(result.losses) == 10
    assert all(b < a for a, b in zip(result.losses, result.losses[1:])), result.losses
    assert result.losses[-1] < 0.05 * result.losses[0]
    assert result.kernel.shape == (1, 2) and result.kernel.dtype == np.float32
    np.testing.assert_allclose(result.kernel, [[1, -1]], atol=0.05)
    assert not np.allclose(result.initial_kernel, result.kernel, atol=0.1)
    # other seeds: 10 steps leave at most 0.8**10 of the (1, 1) direction of the start
    for seed in range(1, 6):
        np.testing.assert_allclose(demos.learn_edge_kernel(seed=seed).kernel, [[1, -1]],
                                   atol=0.1, err_msg=f"seed {seed}")


def test_learn_edge_kernel_matches_the_texts_pytorch_loop(torch):
    """D2L's code verbatim, started from numbaconv's initial kernel."""
    result = demos.learn_edge_kernel(seed=0)
    conv2d = torch.nn.Conv2d(1, 1, kernel_size=(1, 2), bias=False)
    with torch.no_grad():
        conv2d.weight[:] = torch.tensor(result.initial_kernel.reshape(1, 1, 1, 2))
    X = torch.ones((6, 8))
    X[:, 2:6] = 0
    Y = torch.zeros((6, 7))
    Y[:, 1] = 1
    Y[:, -2] = -1
    X, Y = X.reshape((1, 1, 6, 8)), Y.reshape((1, 1, 6, 7))
    lr, losses = 3e-2, []
    for _ in range(10):
        Y_hat = conv2d(X)
        loss = (Y_hat - Y) ** 2
        conv2d.zero_grad()
        loss.sum().backward()
        conv2d.weight.data[:] -= lr * conv2d.weight.grad
        losses.append(loss.sum().item())
    np.testing.assert_allclose(result.losses, losses, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(result.kernel, conv2d.weight.data.reshape((1, 2)).numpy(),
                               rtol=1e-4, atol=1e-6)


def test_demo_edges_prints_the_texts_lines(app):
    result = invoke(app, "demo", "edges")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    expected = demos.learn_edge_kernel(seed=0)
    epoch_lines = [line for line in lines if line.startswith("epoch ")]
    assert epoch_lines == [f"epoch {i}, loss {expected.losses[i - 1]:.3f}"
                           for i in (2, 4, 6, 8, 10)]
    assert all(re.fullmatch(r"epoch (2|4|6|8|10), loss \d+\.\d{3}", line)
               for line in epoch_lines)
    last = re.fullmatch(r"learned kernel \[\[ ?(-?\d\.\d{4}), ?(-?\d\.\d{4})\]\]", lines[-1])
    assert last, lines[-1]
    np.testing.assert_allclose([float(last[1]), float(last[2])], [1, -1], atol=0.05)
    np.testing.assert_allclose([float(last[1]), float(last[2])], expected.kernel[0],
                               atol=1e-4)
    other = invoke(app, "demo", "edges", "--seed", "3")
    assert other.exit_code == 0 and other.output.splitlines()[-1] != lines[-1]


# --------------------------------------------------------------------------- section 2.1: kernels

def test_named_kernels_do_what_their_names_say():
    assert list(demos.NAMED_KERNELS) == ["horizontal edge", "vertical edge", "Laplacian",
                                         "box blur", "Gaussian blur", "sharpen"]
    flat = np.full((9, 9), 0.5, dtype=np.float32)
    rows = np.zeros((9, 9), dtype=np.float32)
    rows[:4] = 1  # bright above dark: a horizontal edge
    cols = rows.T.copy()  # bright left of dark: a vertical edge
    r = {name: demos.apply_kernels(image) for name, image in
         [("flat", flat), ("rows", rows), ("cols", cols)]}
    inner = (slice(1, -1), slice(1, -1))
    for name in ("horizontal edge", "vertical edge", "Laplacian"):
        np.testing.assert_allclose(r["flat"][name][inner], 0, atol=1e-6)
    for name in ("box blur", "Gaussian blur", "sharpen"):
        np.testing.assert_allclose(r["flat"][name][inner], 0.5, atol=1e-6)
    # Sobel: a full step gives 1 + 2 + 1 = 4 along the edge, nothing across it
    assert r["rows"]["horizontal edge"].max() == 4
    assert np.abs(r["cols"]["horizontal edge"][inner]).max() == 0
    assert r["cols"]["vertical edge"].max() == 4
    assert np.abs(r["rows"]["vertical edge"][inner]).max() == 0
    assert r["rows"]["horizontal edge"][3:5, 1:-1].min() == 4  # rows 3, 4 straddle the step


def test_apply_kernels_is_a_same_padded_correlation(sample):
    image = sample.test_images[0].astype(np.float32) / 255
    responses = demos.apply_kernels(image)
    padded = np.pad(image.astype(np.float64), 1)
    for name, kernel in demos.NAMED_KERNELS.items():
        assert responses[name].shape == (28, 28) and responses[name].dtype == np.float32
        np.testing.assert_allclose(responses[name], corr2d_loops(padded, kernel), atol=1e-5,
                                   err_msg=name)
    with pytest.raises(ValueError, match="2-D"):
        demos.apply_kernels(np.zeros((1, 28, 28)))


def test_demo_kernels_writes_one_titled_grid(app, mpl, sample, tmp_path):
    from numbaconv.lessons.plotting import kernels_grid_size

    out = tmp_path / "pics" / "kernels.png"
    result = invoke(app, "demo", "kernels", "--image", 5, "--data", SAMPLE_DIR, "--out", out)
    assert result.exit_code == 0, result.output
    assert str(out) in result.stdout
    assert CLASS_NAMES[sample.test_labels[5]] in result.stdout
    size = pixels_of(kernels_grid_size(len(demos.NAMED_KERNELS)))
    assert size == (1120, 730)
    check_png(out, size)
    no_temporary_files(out.parent)


def test_demo_kernels_default_data_search(app, mpl, tmp_path, monkeypatch):
    """Without --data: Debian's set when installed, else the shipped sample; no network."""
    from numbaconv.data import download, fashion_mnist

    def offline(*args, **kwargs):
        raise download.DownloadError("offline in the tests")

    monkeypatch.setattr(fashion_mnist, "download_fashion_mnist", offline)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("NUMBACONV_DATA", raising=False)
    out = tmp_path / "k.png"
    result = invoke(app, "demo", "kernels", "--out", out)
    assert result.exit_code == 0, result.output
    found = fashion_mnist.find_files(fashion_mnist.SYSTEM_DIR) is not None
    assert ("sample" in result.stderr) != found
    assert png_size(out) == (1120, 730)


def test_demo_kernels_image_out_of_range(app, mpl, tmp_path):
    result = invoke(app, "demo", "kernels", "--image", 1000, "--data", SAMPLE_DIR,
                    "--out", tmp_path / "k.png")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: --image must be between 0 and 999 (the test set of "
        f"{SAMPLE_DIR} has 1000 images), got 1000"]
    assert not (tmp_path / "k.png").exists()


# --------------------------------------------------------------------------- sections 3.1, 3.2

@pytest.mark.parametrize("args, expected", [
    (dict(input_size=8, kernel_size=3, padding=1), (8, 8)),                 # 3.1
    (dict(input_size=8, kernel_size=(5, 3), padding=(2, 1)), (8, 8)),       # 3.1
    (dict(input_size=8, kernel_size=3, padding=1, stride=2), (4, 4)),       # 3.2
    (dict(input_size=8, kernel_size=(3, 5), padding=(0, 1), stride=(3, 4)), (2, 2)),  # D2L
    (dict(input_size=4, kernel_size=3, padding=1, stride=2, pool=True), (2, 2)),  # 5.3
    (dict(input_size=4, kernel_size=(2, 3), padding=(0, 1), stride=(2, 3), pool=True),
     (2, 2)),                                                                  # 5.2
    (dict(input_size=3, kernel_size=2), (2, 2)),                             # 2
    (dict(input_size=28, kernel_size=2, pool=True), (14, 14)),               # LeNet
])
def test_shape_reproduces_the_texts_examples(args, expected):
    assert demos.conv_output_shape(**args).size == expected


def test_shape_agrees_with_shapes_output_size_over_a_grid():
    grid = list(itertools.product(range(1, 10), range(1, 5), range(3), range(1, 4), (1, 2),
                                  (False, True), (False, True)))
    checked = 0
    for (n, k, p, s, d, pool, ceil), other in zip(grid, reversed(grid)):
        if ceil and not pool or pool and 2 * p > k:
            continue
        want = shapes.output_size(n, k, s, p, d, ceil_mode=ceil)
        if want < 1:
            with pytest.raises(ValueError, match="padded input"):
                demos.conv_output_shape(n, k, p, s, d, pool=pool, ceil_mode=ceil)
            continue
        # the width axis gets other numbers, to show the axes do not mix
        n2, k2, p2, s2, d2 = other[:5]
        if pool and 2 * p2 > k2 or shapes.output_size(n2, k2, s2, p2, d2, ceil) < 1:
            n2, k2, p2, s2, d2 = n, k, p, s, d
        got = demos.conv_output_shape((n, n2), (k, k2), (p, p2), (s, s2), (d, d2),
                                      pool=pool, ceil_mode=ceil)
        assert got.size == (want, shapes.output_size(n2, k2, s2, p2, d2, ceil)), \
            (n, k, p, s, d, pool, ceil)
        if pool and s == k and d == 1:  # a pooling's stride defaults to its window
            assert demos.conv_output_shape(n, k, p, None, pool=True,
                                           ceil_mode=ceil).height.size == want
        checked += 1
    assert checked > 1000


def test_shape_rejects_what_does_not_fit():
    with pytest.raises(ValueError, match="pool"):
        demos.conv_output_shape(8, 3, ceil_mode=True)
    with pytest.raises(ValueError, match="at most half"):
        demos.conv_output_shape(8, 3, padding=2, pool=True)
    with pytest.raises(ValueError, match="spans 5 but the padded input is only 2"):
        demos.conv_output_shape(2, 5)


@pytest.mark.parametrize("args, formula, output", [
    (["--input", 8, "--kernel", 3, "--padding", 1],
     "floor((n_h - k_h + p_h + s_h) / s_h) = floor((8 - 3 + 2 + 1) / 1) = 8", "8x8"),
    (["--input", 8, "--kernel", 5, "--kernel-width", 3, "--padding", 2, "--padding-width", 1],
     "floor((n_w - k_w + p_w + s_w) / s_w) = floor((8 - 3 + 2 + 1) / 1) = 8", "8x8"),
    (["--input", 8, "--kernel", "5,3", "--padding", "2,1"],
     "floor((n_h - k_h + p_h + s_h) / s_h) = floor((8 - 5 + 4 + 1) / 1) = 8", "8x8"),
    (["--input", 8, "--kernel", 3, "--padding", 1, "--stride", 2],
     "floor((n_h - k_h + p_h + s_h) / s_h) = floor((8 - 3 + 2 + 2) / 2) = 4", "4x4"),
    (["--input", 8, "--kernel", "3,5", "--padding", "0,1", "--stride", "3,4"],
     "floor((n_w - k_w + p_w + s_w) / s_w) = floor((8 - 5 + 2 + 4) / 4) = 2", "2x2"),
    (["--input", 8, "--input-width", 6, "--kernel", 3, "--dilation", 2],
     "floor((n_w - k_w + p_w + s_w) / s_w) = floor((6 - 5 + 0 + 1) / 1) = 2", "4x2"),
    (["--input", 5, "--kernel", 2, "--padding", 1, "--pool", "--ceil-mode"],
     "ceil((n_h - k_h + p_h + s_h) / s_h) = ceil((5 - 2 + 2 + 2) / 2) = 4 - 1 = 3", "3x3"),
])
def test_shape_command_prints_the_formula(app, args, formula, output):
    result = invoke(app, "shape", *args)
    assert result.exit_code == 0, result.output
    assert any(line.endswith(formula) for line in result.output.splitlines()), result.output
    assert result.output.splitlines()[-1] == f"output: {output}"


@pytest.mark.parametrize("args, message", [
    (["--input", 8, "--kernel", 3, "--ceil-mode"], "--ceil-mode is a pooling option"),
    (["--input", 2, "--kernel", 5], "the padded input is only 2"),
    (["--input", 8, "--kernel", "3,5", "--kernel-width", 4], "disagree"),
    (["--input", 8, "--kernel", 0], "kernel size must be at least 1"),
])
def test_shape_command_errors_are_one_line(app, args, message):
    result = invoke(app, "shape", *args)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], lines


# --------------------------------------------------------------------------- pictures

HISTORY = [
    {"epoch": 1, "train_loss": 2.31, "train_acc": 0.10, "test_acc": 0.10},
    {"epoch": 2, "train_loss": 1.20, "train_acc": 0.55, "test_acc": 0.58},
    {"epoch": 3, "train_loss": 0.70, "train_acc": 0.73, "test_acc": 0.71},
]


def test_plot_curves(mpl, tmp_path):
    from numbaconv.lessons.plotting import CURVES_SIZE, PlotError, plot_curves

    picture = plot_curves(HISTORY, tmp_path / "curves.png", title="lenet")
    assert (picture.width, picture.height) == pixels_of(CURVES_SIZE) == (700, 450)
    first = check_png(tmp_path / "curves.png", (700, 450))
    plot_curves(HISTORY[:1], tmp_path / "curves.png", title="lenet")  # one epoch: markers
    assert not np.array_equal(check_png(tmp_path / "curves.png", (700, 450)), first)
    with pytest.raises(PlotError, match="empty"):
        plot_curves([], tmp_path / "x.png")
    with pytest.raises(PlotError, match="test_acc"):
        plot_curves([{"epoch": 1, "train_loss": 1.0, "train_acc": 0.5}], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
    no_temporary_files(tmp_path)


def test_a_failed_drawing_keeps_the_previous_file(mpl, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from numbaconv.lessons.plotting import plot_curves

    path = tmp_path / "curves.png"
    plot_curves(HISTORY, path)
    before = path.read_bytes()

    def broken(self, *args, **kwargs):
        kwargs.get("fname", args[0]).write(b"half a picture")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        plot_curves(HISTORY[:2], path)
    assert path.read_bytes() == before
    no_temporary_files(tmp_path)


def test_unwritable_target_is_a_plot_error(mpl, tmp_path):
    from numbaconv.lessons.plotting import PlotError, plot_curves

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(PlotError, match="cannot write"):
        plot_curves(HISTORY, blocker / "curves.png")


def test_plot_first_layer_kernels_and_feature_maps(mpl, tmp_path):
    from numbaconv.lessons.plotting import (
        feature_maps_size,
        first_layer_kernels_size,
        plot_feature_maps,
        plot_first_layer_kernels,
    )

    rng = np.random.default_rng(0)
    picture = plot_first_layer_kernels(rng.normal(size=(6, 1, 5, 5)), tmp_path / "w.png",
                                       title="kernels")
    assert (picture.width, picture.height) == pixels_of(first_layer_kernels_size(6))
    check_png(picture.path, (picture.width, picture.height))
    picture = plot_first_layer_kernels(rng.normal(size=(4, 3, 3, 3)), tmp_path / "w3.png")
    assert (picture.width, picture.height) == pixels_of(first_layer_kernels_size(4, 3))
    check_png(picture.path, (picture.width, picture.height))
    picture = plot_feature_maps(rng.random((16, 5, 5)), tmp_path / "m.png", title="maps",
                                image=rng.random((1, 28, 28)))
    assert (picture.width, picture.height) == pixels_of(feature_maps_size(16))
    check_png(picture.path, (picture.width, picture.height))


# --------------------------------------------------------------------------- show

@pytest.fixture(scope="module")
def lenet_checkpoint(tmp_path_factory):
    import numbaconv
    from numbaconv.checkpoint import Checkpoint, save

    model = numbaconv.build_model("lenet", rng=0)
    path = tmp_path_factory.mktemp("ckpt") / "lenet.npz"
    save(path, Checkpoint(spec=layer_spec(model), params=model.state_dict(), model="lenet"))
    return path, model


def test_feature_maps_are_the_layers_outputs(lenet_checkpoint, sample):
    _, model = lenet_checkpoint
    image = sample.test_images[:1].astype(np.float32) / 255
    maps, output = demos.feature_maps(model, image)
    assert [(m.index, m.name) for m in maps] == [(0, "Conv2d"), (2, "AvgPool2d"),
                                                 (3, "Conv2d"), (5, "AvgPool2d")]
    assert [m.maps.shape for m in maps] == [(6, 28, 28), (6, 14, 14), (16, 10, 10),
                                            (16, 5, 5)]
    x = image[None]
    for m in maps:
        np.testing.assert_allclose(m.maps, model[:m.index + 1].forward(x)[0], rtol=1e-6)
    np.testing.assert_allclose(output, model.forward(x), rtol=1e-6)
    index, weight = demos.first_layer_kernels(model)
    assert index == 0 and weight.shape == (6, 1, 5, 5)
    with pytest.raises(ValueError, match="shape"):
        demos.feature_maps(model, np.zeros((1, 20, 20), np.float32))


def test_show_writes_kernels_and_one_picture_per_layer(app, mpl, lenet_checkpoint, tmp_path):
    from numbaconv.lessons.plotting import feature_maps_size, first_layer_kernels_size

    path, _ = lenet_checkpoint
    out = tmp_path / "show"
    result = invoke(app, "show", path, "--out", out, "--image", 2, "--data", SAMPLE_DIR)
    assert result.exit_code == 0, result.output
    expected = {
        "first_layer_kernels.png": first_layer_kernels_size(6),
        "layer00_Conv2d.png": feature_maps_size(6),
        "layer02_AvgPool2d.png": feature_maps_size(6),
        "layer03_Conv2d.png": feature_maps_size(16),
        "layer05_AvgPool2d.png": feature_maps_size(16),
    }
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)
    printed = result.stdout.splitlines()
    for name, size in expected.items():
        assert str(out / name) in printed
        check_png(out / name, pixels_of(size))
    assert re.fullmatch(r"test image 2: .+; the model says .+ \(p = \d\.\d\d\)", printed[-1])


def test_show_errors_are_one_line(app, mpl, lenet_checkpoint, tmp_path):
    path, _ = lenet_checkpoint
    for args, message in [
        ([tmp_path / "missing.npz"], "does not exist"),
        ([path, "--image", -1], "--image must be between 0 and 999"),
    ]:
        result = invoke(app, "show", *args, "--out", tmp_path / "o", "--data", SAMPLE_DIR)
        assert result.exit_code == 1
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], \
            result.output


# --------------------------------------------------------------------------- without matplotlib

@pytest.fixture
def no_matplotlib(monkeypatch):
    """Every ``import matplotlib...`` fails, as where the extra is not installed."""
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def test_require_matplotlib_says_how_to_install(no_matplotlib):
    from numbaconv.lessons.plotting import PlotError, plot_curves, require_matplotlib

    assert issubclass(PlotError, ValueError)
    with pytest.raises(PlotError) as info:
        require_matplotlib()
    assert str(info.value) == "matplotlib is not installed: pip install 'numbaconv[plot]'"
    with pytest.raises(PlotError):
        plot_curves(HISTORY, "never.png")


def test_picture_commands_without_matplotlib(app, no_matplotlib, lenet_checkpoint, tmp_path):
    path, _ = lenet_checkpoint
    for args in (["demo", "kernels", "--data", SAMPLE_DIR, "--out", tmp_path / "k.png"],
                 ["show", path, "--out", tmp_path / "show", "--data", SAMPLE_DIR],
                 ["run", "lenet", "--data", SAMPLE_DIR, "--plot", tmp_path / "c.png"]):
        result = invoke(app, *args)
        assert result.exit_code == 1, (args, result.output)
        assert result.output.strip().splitlines() == [MISSING], (args, result.output)
    assert list(tmp_path.iterdir()) == []
    # the text-only demos do not need it
    assert invoke(app, "demo", "corr2d").exit_code == 0
    assert invoke(app, "shape", "--input", 8, "--kernel", 3).exit_code == 0


# --------------------------------------------------------------------------- run --plot

def test_run_plot_draws_the_curves_after_every_epoch(app, mpl, sample, tmp_path):
    from numbaconv.data.fashion_mnist import FILES
    from numbaconv.data.idx import write_idx
    from numbaconv.lessons.plotting import CURVES_SIZE

    data = tmp_path / "tiny"
    data.mkdir()
    for key, count in (("train", 192), ("test", 64)):
        write_idx(data / FILES[f"{key}_images"], getattr(sample, f"{key}_images")[:count])
        write_idx(data / FILES[f"{key}_labels"],
                  getattr(sample, f"{key}_labels")[:count].astype(np.uint8))
    plot = tmp_path / "curves.png"
    result = invoke(app, "run", "lenet", "-o", "activation=relu", "--optimizer", "adam",
                    "--lr", "0.003", "--batch-size", 64, "--epochs", 2, "--data", data,
                    "--plot", plot)
    assert result.exit_code == 0, result.output
    assert "epoch 2/2" in result.output
    check_png(plot, pixels_of(CURVES_SIZE))
    no_temporary_files(tmp_path)
