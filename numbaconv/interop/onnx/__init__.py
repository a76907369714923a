"""ONNX in and out: :func:`export` writes a numbaconv model as standard ONNX operators
(opset :data:`OPSET`), :func:`load` reads an ONNX graph of the operators numbaconv has into
a numbaconv layer tree that evaluates and trains. Needs the ``onnx`` extra
(``pip install 'numbaconv[onnx]'``); see ``docs/interop.md``.
"""

from .common import INPUT, MAX_OPSET, MIN_OPSET, OPSET, OUTPUT, MissingExtra, require_onnx
from .export import GraphBuilder, OnnxExportError, export, to_onnx_model
from .importer import Imported, OnnxImportError, from_onnx_model, load, read

__all__ = [
    "OPSET", "MIN_OPSET", "MAX_OPSET", "INPUT", "OUTPUT", "MissingExtra", "require_onnx",
    "GraphBuilder", "OnnxExportError", "export", "to_onnx_model",
    "Imported", "OnnxImportError", "from_onnx_model", "load", "read",
]
