"""The source text's lessons on the command line: ``numbaconv demo ...``, ``shape`` and ``show``.

The computations live in :mod:`numbaconv.lessons.demos`, the pictures in
:mod:`numbaconv.lessons.plotting`; this module only parses options, prints and names files.
Commands import the engine lazily, as in :mod:`numbaconv.cli`, and end a user's mistake in
one ``Error: ...`` line (exit 1).
"""

from __future__ import annotations

import click

from .errors import UserError, user_errors

# --------------------------------------------------------------------------- helpers

def _matrix_lines(array, width: int | None = None) -> list[str]:
    """A 2-D array as NumPy-like rows; integral values print without decimals."""
    import numpy as np

    array = np.asarray(array, dtype=np.float64)
    integral = np.all(array == np.round(array))
    cells = [[f"{v:g}" if integral else f"{v:.4f}" for v in row] for row in array + 0.0]
    width = width or max(len(c) for row in cells for c in row)
    rows = [", ".join(c.rjust(width) for c in row) for row in cells]
    last = len(rows) - 1
    return [("[[" if i == 0 else " [") + row + ("]]" if i == last else "]")
            for i, row in enumerate(rows)]


def _side_by_side(blocks: list[list[str]], gap: int = 6) -> list[str]:
    widths = [max(len(line) for line in block) for block in blocks]
    height = max(len(block) for block in blocks)
    lines = []
    for i in range(height):
        parts = [(block[i] if i < len(block) else "").ljust(w) for block, w in zip(blocks, widths)]
        lines.append((" " * gap).join(parts).rstrip())
    return lines


def _load_test_image(data_dir, index: int):
    """``(image uint8 (28, 28), class name, source)`` of Fashion-MNIST test image ``index``."""
    from ..data import CLASS_NAMES, SAMPLE_NOTICE, load_fashion_mnist

    dataset = load_fashion_mnist(data_dir, progress=True)
    if dataset.is_sample:
        click.echo(SAMPLE_NOTICE, err=True)
    count = len(dataset.test_images)
    if not 0 <= index < count:
        raise UserError(f"--image must be between 0 and {count - 1} (the test set of "
                          f"{dataset.source} has {count} images), got {index}")
    return dataset.test_images[index], CLASS_NAMES[int(dataset.test_labels[index])], \
        dataset.source


_DATA_OPTION = click.option("--data", "data_dir", type=click.Path(file_okay=False),
                            help="Directory with the Fashion-MNIST IDX files.")
_IMAGE_OPTION = click.option("--image", "image_index", type=int, default=0, show_default=True,
                             help="Which Fashion-MNIST test image to use.")


# --------------------------------------------------------------------------- demo

@click.group()
def demo():
    """The text's lessons as runnable demos (its sections 2 to 2.2; D2L 6.2).

    \b
    Examples:
      numbaconv demo corr2d               # 3x3 input, 2x2 kernel: [[19, 25], [37, 43]]
      numbaconv demo edges                # a Conv2d learns the edge kernel [1, -1]
      numbaconv demo kernels --out k.png  # edge, blur and sharpen kernels on an image
    """


@demo.command("corr2d", short_help="Section 2: corr2d of the 3x3 input and 2x2 kernel.")
@user_errors
def corr2d_command():
    """Section 2: the cross-correlation of the 3x3 input with the 2x2 kernel, beside the
    true convolution of the same pair (the kernel flipped both ways)."""
    from ..lessons.demos import corr2d_example

    ex = corr2d_example()
    X, K = ex.X, ex.K
    click.echo("X (input, 3x3):" + " " * 10 + "K (kernel, 2x2):")
    for line in _side_by_side([_matrix_lines(X), _matrix_lines(K)], gap=12):
        click.echo("  " + line)
    click.echo()
    corr_first = " + ".join(f"{X[a, b]:g}*{K[a, b]:g}" for a in range(2) for b in range(2))
    conv_first = " + ".join(f"{X[a, b]:g}*{K[1 - a, 1 - b]:g}" for a in range(2)
                            for b in range(2))
    left = ["cross-correlation corr2d(X, K)", "what a convolutional layer computes",
            "Y[i,j] = sum K[a,b] X[i+a,j+b]", ""] + _matrix_lines(ex.correlation)
    right = ["true convolution convolve2d(X, K)", "the same with K flipped both ways",
             "Y[i,j] = sum K[1-a,1-b] X[i+a,j+b]", ""] + _matrix_lines(ex.convolution)
    for line in _side_by_side([left, right]):
        click.echo(line)
    click.echo()
    click.echo(f"corr2d     Y[0,0] = {corr_first} = {ex.correlation[0, 0]:g}")
    click.echo(f"convolve2d Y[0,0] = {conv_first} = {ex.convolution[0, 0]:g}")


@demo.command("edges", short_help="Section 2.2: a Conv2d learns the edge kernel [1, -1].")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the layer's initial kernel.")
@user_errors
def edges_command(seed):
    """Section 2.2: a Conv2d(1, 1, kernel_size=(1, 2), bias=False) learns the edge kernel.

    The 6x8 image is white with a black band (columns 2..5); the target Y = corr2d(X, [[1, -1]])
    marks its edges. Ten steps of gradient descent (lr 3e-2) on the summed squared loss, as
    in the text; prints the loss every second step and then the learned kernel.
    """
    from ..lessons.demos import learn_edge_kernel

    result = learn_edge_kernel(seed=seed)
    click.echo("X (white 1, black 0):")
    for line in _matrix_lines(result.X):
        click.echo("  " + line)
    click.echo("Y = corr2d(X, [[1, -1]]) (1: white to black, -1: black to white):")
    for line in _matrix_lines(result.Y, width=2):
        click.echo("  " + line)
    click.echo(f"initial kernel {_matrix_lines(result.initial_kernel)[0]} (seed {seed}), "
               f"lr {result.lr:g}")
    for line in result.report_lines():
        click.echo(line)
    click.echo(f"learned kernel {_matrix_lines(result.kernel)[0]}")


@demo.command("kernels", short_help="Section 2.1: hand-designed kernels on an image.")
@_IMAGE_OPTION
@_DATA_OPTION
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default="kernels.png",
              show_default=True, help="The PNG to write.")
@user_errors
def kernels_command(image_index, data_dir, out_path):
    """Section 2.1: hand-designed kernels (edges, Laplacian, blurs, sharpen) on one image.

    Applies each kernel with conv2d (padding 'same') to a Fashion-MNIST test image and draws
    the input and every response into one PNG (needs matplotlib).
    """
    from ..lessons.demos import NAMED_KERNELS, apply_kernels
    from ..lessons.plotting import plot_kernels_grid, require_matplotlib

    require_matplotlib()
    image, class_name, _ = _load_test_image(data_dir, image_index)
    x = image.astype("float32") / 255
    picture = plot_kernels_grid(
        x, apply_kernels(x, NAMED_KERNELS), out_path,
        title=f"Hand-designed 3x3 kernels on Fashion-MNIST test image {image_index} "
              f"(conv2d, padding 'same')",
        image_title=f"input: {class_name}", kernels=NAMED_KERNELS)
    click.echo(f"wrote {picture.path} ({picture.width}x{picture.height} pixels): "
               f"test image {image_index} ({class_name}) and "
               f"{', '.join(NAMED_KERNELS)}")


# --------------------------------------------------------------------------- shape

class _IntPair(click.ParamType):
    """``N`` or ``H,W``."""

    name = "N|H,W"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        parts = str(value).replace("x", ",").split(",")
        try:
            numbers = tuple(int(p) for p in parts)
        except ValueError:
            numbers = ()
        if len(numbers) not in (1, 2):
            self.fail(f"{value!r} is not an int or a pair H,W", param, ctx)
        return numbers


def _pair(name: str, value, width):
    """``(h, w)`` from ``--name H[,W]`` and ``--name-width W``; None when neither is given."""
    if value is None:
        if width is not None:
            raise UserError(f"--{name}-width needs --{name}")
        return None
    if len(value) == 2:
        if width is not None and width != value[1]:
            raise UserError(f"--{name} {value[0]},{value[1]} and --{name}-width {width} "
                              f"disagree on the width")
        return value
    return (value[0], value[0] if width is None else width)


def _describe_pair(pair) -> str:
    return f"{pair[0]}x{pair[1]}"


def _describe_padding(p) -> str:
    if p[0] == p[1]:
        return f"padding {p[0]} on every side"
    return f"padding {p[0]} top and bottom, {p[1]} left and right"


@click.command(short_help="Output size of a convolution or pooling, with the formula.")
@click.option("--input", "input_size", type=_IntPair(), required=True,
              help="Input height, or H,W.")
@click.option("--input-width", type=int, help="Input width (default: the height).")
@click.option("--kernel", type=_IntPair(), required=True, help="Kernel height, or H,W.")
@click.option("--kernel-width", type=int, help="Kernel width (default: the height).")
@click.option("--padding", type=_IntPair(), default="0", show_default=True,
              help="Zeros added on each side: P, or PH,PW.")
@click.option("--padding-width", type=int, help="Padding of the left and right sides.")
@click.option("--stride", type=_IntPair(),
              help="Step between windows, S or SH,SW (default: 1; a pooling's window).")
@click.option("--stride-width", type=int, help="Horizontal stride.")
@click.option("--dilation", type=_IntPair(), default="1", show_default=True,
              help="Spacing of the kernel's taps, D or DH,DW.")
@click.option("--dilation-width", type=int, help="Horizontal dilation.")
@click.option("--pool", is_flag=True, help="A pooling window: stride defaults to the window.")
@click.option("--ceil-mode", is_flag=True, help="Pooling only: round the output size up.")
@user_errors
def shape(input_size, input_width, kernel, kernel_width, padding, padding_width, stride,
          stride_width, dilation, dilation_width, pool, ceil_mode):
    """Output size of a convolution or pooling, by the text's formula with the numbers in.

    floor((n - k + p + s) / s) per axis, with p the padding of both sides together (the
    text's sections 3.1 and 3.2; D2L 6.3); a dilated kernel spans d*(k-1)+1.

    \b
    The text's examples:
      numbaconv shape --input 8 --kernel 3 --padding 1                 # 8x8
      numbaconv shape --input 8 --kernel 5,3 --padding 2,1             # 8x8
      numbaconv shape --input 8 --kernel 3 --padding 1 --stride 2      # 4x4
      numbaconv shape --input 8 --kernel 3,5 --padding 0,1 --stride 3,4  # 2x2
      numbaconv shape --input 4 --kernel 3 --padding 1 --stride 2 --pool
    """
    from ..lessons.demos import conv_output_shape

    if ceil_mode and not pool:
        raise UserError("--ceil-mode is a pooling option; add --pool")
    n = _pair("input", input_size, input_width)
    k = _pair("kernel", kernel, kernel_width)
    p = _pair("padding", padding, padding_width)
    s = _pair("stride", stride, stride_width)
    d = _pair("dilation", dilation, dilation_width)
    result = conv_output_shape(n, k, p, s, d, pool=pool, ceil_mode=ceil_mode)
    h, w = result.height, result.width
    what = "pooling window" if pool else "kernel"
    click.echo(f"{'pooling' if pool else 'convolution'}: input {_describe_pair(n)}, "
               f"{what} {_describe_pair(k)}, {_describe_padding(p)}, "
               f"stride {_describe_pair((h.s, w.s))}"
               + (f", dilation {_describe_pair(d)}" if d != (1, 1) else "")
               + (", ceil mode" if ceil_mode else ""))
    click.echo(f"  n: input, k: {what}, p: padding of both sides together "
               f"(p_h = {2 * p[0]}, p_w = {2 * p[1]}), s: stride")
    if d != (1, 1):
        click.echo(f"  the dilated {what} spans d*(k-1)+1: k_h = {d[0]}*({k[0]}-1)+1 = "
                   f"{h.k_eff}, k_w = {d[1]}*({k[1]}-1)+1 = {w.k_eff}")
    for label, axis in (("height", h), ("width", w)):
        click.echo(f"{label + ':':<8}{axis.formula} = {axis.numbers} = "
                   f"{axis.size + bool(axis.note)}" + (f" - 1 = {axis.size}" if axis.note else ""))
        if axis.note:
            click.echo(f"        ({axis.note})")
    click.echo(f"output: {_describe_pair(result.size)}")


# --------------------------------------------------------------------------- show

@click.command()
@click.argument("checkpoint_path", metavar="CHECKPOINT")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              metavar="DIR",
              help="Directory for the PNGs (made if missing).")
@_IMAGE_OPTION
@_DATA_OPTION
@user_errors
def show(checkpoint_path, out_dir, image_index, data_dir):
    """Draw what a trained CHECKPOINT has learned (needs matplotlib).

    Writes into DIR the first layer's kernels (first_layer_kernels.png) and the feature maps
    of one test image after every convolution and pooling layer, one PNG per layer
    (layer00_Conv2d.png, ...), and prints the paths and the model's prediction.
    """
    import os

    import numpy as np

    from ..checkpoint import describe
    from ..data import CLASS_NAMES
    from ..lessons.demos import feature_maps, first_layer_kernels
    from ..lessons.plotting import (
        _ensure_dir,
        plot_feature_maps,
        plot_first_layer_kernels,
        require_matplotlib,
    )
    from ..network import load_model

    require_matplotlib()
    model, saved = load_model(checkpoint_path)
    name = describe(saved.model, saved.options)
    trained = f"trained {saved.epoch} epoch{'s' if saved.epoch != 1 else ''}" \
        if saved.epoch else "untrained"
    image, class_name, _ = _load_test_image(data_dir, image_index)
    x = image.astype(np.float32)[None] / np.float32(255)
    maps, output = feature_maps(model, x)
    directory = _ensure_dir(out_dir)

    index, weight = first_layer_kernels(model)
    pictures = [plot_first_layer_kernels(
        weight, os.path.join(directory, "first_layer_kernels.png"),
        title=f"{name}, {trained}\nkernels of layer {index}: {model[index]!r}")]
    for layer in maps:
        c, h, w = layer.maps.shape
        pictures.append(plot_feature_maps(
            layer.maps, os.path.join(directory, f"layer{layer.index:02d}_{layer.name}.png"),
            title=f"{name}, {trained}\nlayer {layer.index}: {layer.layer} \u2192 {c}x{h}x{w}\n"
                  f"feature maps of test image {image_index} ({class_name})",
            image=x, image_title=f"input: {class_name}"))
    for picture in pictures:
        click.echo(picture.path)
    logits = np.asarray(output, dtype=np.float64).reshape(-1)
    if logits.size == len(CLASS_NAMES):
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        guess = int(np.argmax(probs))
        click.echo(f"test image {image_index}: {class_name}; the model says "
                   f"{CLASS_NAMES[guess]} (p = {probs[guess]:.2f})")
