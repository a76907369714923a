"""Models and weights in and out of numbaconv (see ``docs/interop.md``).

* :mod:`numbaconv.interop.onnx`: ONNX export and import (the ``onnx`` extra);
* :func:`from_torch_state_dict`: a PyTorch ``state_dict`` into a numbaconv model (torch
  optional: tensors or arrays).
"""

from .torch_weights import TORCH_SUFFIXES, from_torch_state_dict, read_torch_file

__all__ = ["from_torch_state_dict", "read_torch_file", "TORCH_SUFFIXES"]
