"""Every convolution tile shape the CUDA backend can choose compiles to PTX without spilling.

``bench/gpu_check.py --ptx`` (tests/cuda/test_cuda_kernels.py::test_kernels_compile_to_ptx)
compiles each pass's wide tile shape and the narrowest one, but ``conv.pick_tiles`` also
picks in between, for a layer with at most 32 output channels or a product with at most 32
columns: LeNet's first convolution (6 channels) runs the forward with 1x8 tiles, and every
model of the zoo uses one of them somewhere (found by walking each built-in model's
convolutions at its D2L input size and every batch size up to its recipe's). Each shape is
its own kernel (shared arrays need literal shapes), so each is compiled here, in float32 (the
zoo's type), with the real compiler for sm_80 and checked by the same ptx_check.

Here, not in tests/cuda, so that the plain ``python -m pytest`` runs it without a GPU. Needs
NVVM and ptxas (``numba-cuda[cu12]``); without them it skips, except where ``CI`` is set.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest
from support import REPO_ROOT

spec = importlib.util.spec_from_file_location(
    "gpu_check", os.path.join(REPO_ROOT, "bench", "gpu_check.py"))
gpu_check = sys.modules.get("gpu_check") or importlib.util.module_from_spec(spec)
if "gpu_check" not in sys.modules:
    sys.modules["gpu_check"] = gpu_check  # dataclasses look their module up there
    spec.loader.exec_module(gpu_check)


def every_tile_shape(conv, config):
    """{pass's kernel factory: the tile shapes pick_tiles can choose for it} under the
    current configuration (rows and columns of 1, just over CONV_SIDE and just over twice
    it reach every branch)."""
    sizes = (1, config.CONV_SIDE + 1, 2 * config.CONV_SIDE + 1)
    shapes = {}
    for make, wide in ((conv.forward_kernel, config.CONV_FORWARD_TILES),
                       (conv.grad_input_kernel, config.CONV_GRAD_INPUT_TILES),
                       (conv.grad_weight_kernel, config.CONV_GRAD_WEIGHT_TILES)):
        shapes[make] = {conv.pick_tiles(rows, cols, wide).key()
                        for rows in sizes for cols in sizes}
    return shapes


def test_every_conv_tile_shape_compiles_to_ptx_without_spills(capsys):
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        pytest.skip("needs the real CUDA compiler, not the simulator")
    missing = None
    try:
        from numba import cuda, types

        cuda.compile_ptx(lambda a: None, (types.float32[::1],), cc=(8, 0))
    except Exception as exc:  # numba-cuda or NVVM missing
        missing = f"no CUDA compiler (NVVM): {type(exc).__name__}: {exc}"
    if missing is None and gpu_check.find_ptxas() is None:
        missing = "no ptxas"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing}; CI installs numba-cuda[cu12], which brings it")
        pytest.skip(missing)
    import numba.cuda.dispatcher as dispatcher

    from numbaconv.kernels.cuda import config, conv

    # the signatures gpu_check compiles for each pass: one kernel, other tile shapes
    listed = {kernel.py_func.__name__: signature
              for _, kernel, signature in gpu_check._kernel_signatures(types.float32)}
    already = {kernel for _, kernel, _ in gpu_check._kernel_signatures(types.float32)}
    labelled = []
    for make, shapes in every_tile_shape(conv, config).items():
        for shape in sorted(shapes):
            kernel = make("float32", shape)
            if kernel not in already:
                labelled.append((f"{kernel.py_func.__name__} {'x'.join(map(str, shape))}",
                                 kernel, listed[kernel.py_func.__name__]))

    original = dispatcher.get_current_device
    try:
        status = gpu_check.ptx_check(
            "8.0", signatures=lambda dt: labelled if dt == types.float32 else [])
    finally:
        dispatcher.get_current_device = original  # ptx_check names a device without a GPU
    out = capsys.readouterr().out
    assert status == 0, out[-4000:]
    assert out.count("ok   conv_") == len(labelled), out[-4000:]
    assert "kernels that spill registers: none" in out, out[-4000:]
