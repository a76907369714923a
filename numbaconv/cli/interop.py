"""``numbaconv export``, ``import`` and ``predict``: models in and out (ONNX, PyTorch
weights) and predictions for image files. See ``docs/interop.md``."""

from __future__ import annotations

import os

import click

from .errors import UserError, user_errors

__all__ = ["export_command", "import_command", "predict"]


def _onnx():
    """numbaconv.interop.onnx, or the one-line error saying how to install the extra."""
    from ..interop.onnx.common import MissingExtra, require_onnx

    try:
        require_onnx()
    except MissingExtra as error:
        raise UserError(str(error)) from None
    from ..interop import onnx

    return onnx


def _shape_option(text: str | None, option: str) -> tuple | None:
    """``"3,32,32"`` -> ``(3, 32, 32)``."""
    if text is None:
        return None
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if not 1 <= len(shape) <= 3 or min(shape) < 1:
        raise UserError(f"{option} must be one example's sizes like 1,28,28, got {text!r}")
    return shape


def _classes_option(text: str | None) -> list | None:
    if text is None:
        return None
    names = [name.strip() for name in text.split(",")]
    if not all(names) or len(set(names)) != len(names):
        raise UserError(f"--classes must be distinct names separated by commas, got {text!r}")
    return names


def model_classes(saved_classes, outputs: int, data_shape: tuple) -> list[str]:
    """The names of a model's ``outputs``: those recorded, else Fashion-MNIST's for a
    10-class model of its 1x28x28 images (the runs before names were recorded), else the
    numbers."""
    from ..data import CLASS_NAMES
    from ..network import INPUT_SHAPE

    if saved_classes is not None:
        if len(saved_classes) != outputs:
            raise UserError(f"the checkpoint names {len(saved_classes)} classes, its model "
                            f"gives {outputs} outputs")
        return list(saved_classes)
    if outputs == len(CLASS_NAMES) and tuple(data_shape) == INPUT_SHAPE:
        return list(CLASS_NAMES)
    return [str(i) for i in range(outputs)]


def _model_input(saved, given: tuple | None) -> tuple:
    """One example's shape as the checkpoint's run fed it to the model (after --resize)."""
    from ..network import INPUT_SHAPE, input_shape

    if given is not None:
        return given
    return input_shape(saved.train.get("resize"), saved.input_shape or INPUT_SHAPE)


# --------------------------------------------------------------------------- export

@click.command("export")
@click.argument("checkpoint_path", metavar="CHECKPOINT")
@click.argument("output", metavar="MODEL.onnx", type=click.Path(dir_okay=False))
@click.option("--input-shape", "shape_text", metavar="C,H,W",
              help="One example's shape (default: as the checkpoint's run fed its model).")
@user_errors
def export_command(checkpoint_path, output, shape_text):
    """Write the model of CHECKPOINT to MODEL.onnx (ONNX opset 17, standard operators).

    The graph takes float32 images 'input' (N, C, H, W) as the run fed them (after --resize)
    and gives the logits 'logits' (N, classes); the class names go into its metadata.
    Layers of plugins export through their to_onnx method (docs/interop.md).
    """
    from ..atomic import check_writable, same_file
    from ..network import load_model

    onnx = _onnx()
    model, saved = load_model(checkpoint_path)
    if same_file(output, checkpoint_path):
        raise UserError(f"MODEL.onnx {output} would overwrite the checkpoint")
    check_writable(output, "MODEL.onnx")
    shape = _model_input(saved, _shape_option(shape_text, "--input-shape"))
    try:
        outputs = model.output_shape((1,) + shape)
    except ValueError as error:
        raise UserError(f"{checkpoint_path}: the model does not take {shape} inputs: "
                        f"{error}") from None
    data_shape = tuple(saved.input_shape) if saved.input_shape else shape
    classes = model_classes(saved.classes, int(outputs[-1]), data_shape) \
        if len(outputs) == 2 else None
    proto = onnx.export(model, output, shape, classes)
    click.echo(f"wrote {output}: {len(proto.graph.node)} ONNX nodes (opset {onnx.OPSET}), "
               f"input (N, {', '.join(map(str, shape))}), logits "
               f"(N, {', '.join(map(str, outputs[1:]))})")


# --------------------------------------------------------------------------- import

@click.command("import")
@click.argument("source", metavar="MODEL.onnx|WEIGHTS.pt")
@click.argument("output", metavar="CHECKPOINT.npz", type=click.Path(dir_okay=False))
@click.option("--model", "target", metavar="MODEL|SPEC.toml",
              help="For PyTorch weights: the architecture they belong to (a registered model "
              "or a spec).")
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
              help="With --model: a model option, e.g. -o activation=relu. Repeatable.")
@click.option("--input-shape", "shape_text", metavar="C,H,W",
              help="For PyTorch weights: one example's shape (default 1,28,28).")
@click.option("--classes", "classes_text", metavar="NAME,NAME,...",
              help="The classes' names, for predict (default: those an ONNX file of "
              "numbaconv holds, else Fashion-MNIST's for 10 classes of 1x28x28 images).")
@user_errors
def import_command(source, output, target, options, shape_text, classes_text):
    """Read a model into a numbaconv checkpoint: an ONNX file, or PyTorch weights (.pt/.pth,
    a state_dict; needs torch) for the architecture --model names.

    \b
    The checkpoint evaluates, predicts, exports and trains further:
      numbaconv import lenet.onnx lenet.npz
      numbaconv evaluate lenet.npz
      numbaconv run lenet.npz --epochs 2 --lr 0.1 --save tuned.npz
    """
    from .. import checkpoint as ckpt
    from ..atomic import check_writable, same_file
    from ..interop import TORCH_SUFFIXES, from_torch_state_dict, read_torch_file
    from ..layers import layer_spec
    from ..network import INPUT_SHAPE, build, check_shapes, parse_options

    if same_file(output, source):
        raise UserError(f"CHECKPOINT.npz {output} would overwrite {source}")
    check_writable(output, "CHECKPOINT.npz")
    classes = _classes_option(classes_text)
    shape = _shape_option(shape_text, "--input-shape")
    name, settings = None, {}
    if source.lower().endswith(TORCH_SUFFIXES):
        if target is None:
            raise UserError(f"{source} holds weights only: name their architecture with "
                            "--model MODEL|SPEC.toml")
        shape = shape or INPUT_SHAPE
        network = build(target, parse_options(options), 0, shape,
                        len(classes) if classes else 10)
        model, name, settings = network.model, network.name, network.options
        from_torch_state_dict(model, read_torch_file(source))
    else:
        if target is not None or options or shape is not None:
            raise UserError("--model, -o and --input-shape are for PyTorch weights; an ONNX "
                            "file holds its model and input shape")
        imported = _onnx().read(source)
        model, shape = imported.model, imported.input_shape
        classes = classes or imported.classes
    outputs = model.output_shape((1,) + tuple(shape))
    if classes is not None and (len(outputs) != 2 or outputs[1] != len(classes)):
        raise UserError(f"--classes names {len(classes)} classes, the model gives outputs of "
                        f"shape {tuple(outputs)}")
    check_shapes(model, source, None, shape, int(outputs[-1]))
    ckpt.save(output, ckpt.Checkpoint(spec=layer_spec(model), params=model.state_dict(),
                                      model=name, options=settings, classes=classes,
                                      input_shape=list(shape)))
    click.echo(f"wrote {output}: {model.num_params():,} parameters in "
               f"{sum(1 for _ in model.named_layers()) - 1} layers from {source}, input "
               f"({', '.join(map(str, shape))}), {outputs[-1]} outputs")


# --------------------------------------------------------------------------- predict

@click.command()
@click.argument("checkpoint_path", metavar="CHECKPOINT")
@click.argument("images", metavar="IMAGE...", nargs=-1, required=True)
@click.option("--top", type=click.IntRange(1), default=3, show_default=True,
              help="How many classes to show per image.")
@click.option("--threads", type=int, help="CPU threads (default: all cores).")
@user_errors
def predict(checkpoint_path, images, top, threads):
    """Print the most likely classes of each IMAGE (PNG or JPEG) with their probabilities.

    Images are read gray or colour as the model's data was and resized (bilinear) to the
    size the model was trained at; the class names are those saved in CHECKPOINT
    (Fashion-MNIST's for its runs).
    """
    import numpy as np

    from ..data import read_image
    from ..functional import resize_bilinear
    from ..losses import softmax
    from ..network import INPUT_SHAPE, load_model
    from .main import _set_threads

    _set_threads(threads)
    model, saved = load_model(checkpoint_path)
    data_shape = tuple(saved.input_shape or INPUT_SHAPE)
    shape = _model_input(saved, None)
    if len(shape) != 3:
        raise UserError(f"{checkpoint_path} holds a model of {shape} inputs, not images")
    try:
        outputs = model.output_shape((1,) + shape)
    except ValueError as error:
        raise UserError(f"{checkpoint_path}: the model does not take {shape} images: "
                        f"{error}") from None
    if len(outputs) != 2:
        raise UserError(f"{checkpoint_path}: the model gives outputs of shape "
                        f"{tuple(outputs)}, not class scores (N, classes)")
    classes = model_classes(saved.classes, int(outputs[1]), data_shape)
    batch = np.stack([resize_bilinear(read_image(path, shape[0])[None], shape[1:])[0]
                      for path in images])
    probabilities = softmax(model.forward(batch))
    top = min(top, len(classes))
    for path, row in zip(images, probabilities):
        best = np.argsort(-row, kind="stable")[:top]
        click.echo(f"{os.fspath(path)}: " + ", ".join(f"{classes[i]} {row[i]:.4f}"
                                                        for i in best))
