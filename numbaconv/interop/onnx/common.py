"""What ONNX export and import share: the opset, the graph's tensor names, the extra."""

from __future__ import annotations

#: The opset of the default domain that :func:`~numbaconv.interop.onnx.export` writes.
OPSET = 17
#: The oldest and newest default-domain opsets :func:`~numbaconv.interop.onnx.load` reads.
MIN_OPSET, MAX_OPSET = 7, 23
#: Names of the graph's input and output in exported files.
INPUT, OUTPUT = "input", "logits"
#: The model's metadata key holding the class names (JSON), when they are known.
CLASSES_KEY = "numbaconv.classes"
INSTALL_HINT = "pip install 'numbaconv[onnx]'"


class MissingExtra(ImportError):
    """ONNX support without the ``onnx`` package (or onnxruntime for checks)."""


def require_onnx():
    """The ``onnx`` module, or :class:`MissingExtra` saying how to install it."""
    try:
        import onnx
    except ImportError:
        raise MissingExtra(f"ONNX support needs the onnx package: {INSTALL_HINT}") from None
    return onnx
