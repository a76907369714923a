"""Compile the CPU kernels a model needs before training, several processes at once.

On an empty Numba cache a LeNet run has about 14 s of compiling to do (35 s before the
compile-time cuts of docs/performance.md), and a process compiles on one core. The kernels are
independent, and
``cache=True`` writes what one process compiles to the on-disk cache that another then loads in
milliseconds. So :func:`precompile` lists what is not cached yet and works through the list in
this process and in one child process per further available core at the same time: each
process claims the next unclaimed unit (a file created exclusively in a shared folder) and
compiles it, so the processes finish together whatever the real compile times are. With a warm
cache it only reads the cache's small index files and starts nothing.

The units are finer than kernels (:func:`units`): a convolution kernel's per-job function (its
job, see :mod:`numbaconv.kernels.cpu.jobs`) and the products several jobs share
(:data:`SHARED`) are compiled on their own. The list runs the shared products first, then the
units that call none of them, while those compile, then the rest, each stage longest first:
so no two processes compile one product at the same time.

The children must compile this very copy of numbaconv: Numba's cache is kept per source file,
so what a child compiled from another copy (``python -m`` puts the current folder first on the
module path, and from a checkout that holds one) would be of no use here, and this process
would compile everything again. A child therefore puts this copy's folder first on its path
and checks that it imported this copy before it compiles anything.

Each kernel is compiled for exactly the argument types the public functions pass it (NumPy
scalars and Python ints are int64, flags bool, arrays C-contiguous), so the real calls find it;
``tests/test_precompile.py`` checks the two agree. A child that fails costs nothing but time:
the kernel then compiles on its first call, as without this module.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable

import numpy as np

from .kernels.cpu.conv.tiles import WIDE

__all__ = ["precompile", "kernels_for", "optimizer_kernels", "compile_message", "KERNELS"]

JOB_PREFIX = "job:"
#: compile unit (see :func:`units`) -> rough compile seconds on an empty cache (CPU seconds on
#: the machine of docs/performance.md, LeNet's units one after the other in one process), used
#: to order the work, longest first, and for the announced estimate; a process's first
#: parallel kernel also carries Numba's set-up of parallel loops, and the first caller of a
#: small helper (the taps, the partial sums) compiles it.
KERNELS = {
    "conv2d_forward": 1.5,
    "conv2d_forward_lanes": 0.5,
    "conv2d_weight_grad": 1.5,
    "conv2d_weight_grad_rows": 1.5,
    "conv2d_weight_grad_lanes": 0.7,
    "conv2d_input_grad_lanes": 0.5,
    "avg_pool2d_forward": 1.5,
    "avg_pool2d_backward": 1.8,
    "max_pool2d_forward": 0.8,
    "max_pool2d_backward": 0.6,
    # the fused activation + pool kernels, a pair per activation and pool (fused_kernel_names)
    **{f"{activation}_{pool}_pool_{direction}": seconds
       for activation in ("sigmoid", "relu") for pool in ("avg", "max")
       for direction, seconds in (("forward", 0.9), ("backward", 1.2))},
    # the one-pass convolution + activation + pool forwards (one_pass_kernel_name)
    **{f"conv2d_{activation}_{pool}_pool_forward": 1.5
       for activation in ("sigmoid", "relu") for pool in ("avg", "max")},
    # and on the interleaved-samples layout (one_pass_lanes_kernel_name)
    **{f"conv2d_{activation}_{pool}_pool_forward_lanes": 0.6
       for activation in ("sigmoid", "relu") for pool in ("avg", "max")},
    # the one-pass activation + pool backward and weight gradient of a first stage
    # (one_pass_weight_grad_name)
    **{f"conv2d_{activation}_{pool}_pool_weight_grad": 1.5
       for activation in ("sigmoid", "relu") for pool in ("avg", "max")},
    # and the one-pass backward on the interleaved-samples layout (one_pass_backward_lanes_name)
    **{f"conv2d_{activation}_{pool}_pool_backward_lanes": 0.8
       for activation in ("sigmoid", "relu") for pool in ("avg", "max")},
    "sigmoid_forward": 0.8,
    "sigmoid_backward": 0.4,
    "matmul_acc": 1.3,
    # the pointwise kernels (numbaconv.kernels.cpu.conv.pointwise: 1x1 layers)
    "conv2d_forward_pointwise": 1.0,
    "conv2d_weight_grad_pointwise": 1.2,
    "transpose_samples": 0.3,
    "channel_sums": 0.3,
    # the unrolled kernels (numbaconv.kernels.cpu.conv.unrolled: small maps); the products
    # also with the forward's weights read in place (VARIANTS: a strided view, another compile)
    "swap_outer": 1.3,  # 1.25-1.4 on the Zen 4 EPYC
    "transpose_pixels": 1.1,  # 1.05-1.15 on the Zen 4 EPYC
    "_live_weights": 0.7,
    "_live_weights_transposed": 0.7,
    "_taps_gradient": 0.8,
    "_pair_products": 1.1,
    "_pair_products_in_place": 2.7,
    "packed_matmul_acc": 3.0,  # 5.8-6.0 on the Zen 4 EPYC (5.1-5.4 before its register squares)
    # the jobs (see numbaconv.kernels.cpu.jobs)
    **{f"{JOB_PREFIX}conv2d_{activation}_{pool}_pool_forward": 3.7
       for activation in ("sigmoid", "relu") for pool in ("avg", "max")},
    **{f"{JOB_PREFIX}conv2d_{activation}_{pool}_pool_weight_grad": 1.3
       for activation in ("sigmoid", "relu") for pool in ("avg", "max")},
    **{f"{JOB_PREFIX}conv2d_{activation}_{pool}_pool_forward_lanes": 0.8
       for activation in ("sigmoid", "relu") for pool in ("avg", "max")},
    **{f"{JOB_PREFIX}conv2d_{activation}_{pool}_pool_backward_lanes": 1.5
       for activation in ("sigmoid", "relu") for pool in ("avg", "max")},
    JOB_PREFIX + "conv2d_forward": 0.5,
    JOB_PREFIX + "conv2d_forward_lanes": 0.4,
    JOB_PREFIX + "conv2d_weight_grad": 0.5,
    JOB_PREFIX + "conv2d_weight_grad_rows": 0.5,
    JOB_PREFIX + "conv2d_weight_grad_lanes": 0.5,
    JOB_PREFIX + "conv2d_input_grad_lanes": 0.5,
    # the column kernels (numbaconv.kernels.cpu.conv.columns), their jobs and the parallel
    # padding (large inputs: see _places_in_parallel)
    "conv2d_forward_columns": 1.8,
    "conv2d_weight_grad_columns": 1.1,
    "conv2d_input_grad_columns": 1.0,
    "_place_planes": 1.5,
    JOB_PREFIX + "conv2d_forward_columns": 0.3,
    JOB_PREFIX + "conv2d_weight_grad_columns": 0.7,
    JOB_PREFIX + "conv2d_input_grad_columns": 0.9,
    # the output-channel kernels (numbaconv.kernels.cpu.conv.channels) and their jobs
    "conv2d_forward_channels": 0.5,
    "conv2d_weight_grad_channels": 1.2,
    JOB_PREFIX + "conv2d_forward_channels": 0.3,
    JOB_PREFIX + "conv2d_weight_grad_channels": 0.2,
    # Winograd's F(2x2, 3x3) (numbaconv.kernels.cpu.conv.winograd), its jobs and its weights'
    # transform (first calls on an empty cache: forward 6.1-6.4 s, weight gradient 7.3-7.6)
    "conv2d_forward_winograd": 1.0,
    JOB_PREFIX + "conv2d_forward_winograd": 4.0,
    "transform_weights": 0.8,
    "conv2d_weight_grad_winograd": 2.0,
    JOB_PREFIX + "conv2d_weight_grad_winograd": 4.5,
    # the shared products (SHARED)
    "_shifted_matmul_acc": 1.1,
    "_shifted_matmul6_acc": 2.5,
    "_abt_acc": 0.8,
    "_abt_lanes_acc": 0.7,
    "_abt6_lanes_acc": 0.8,
    "_interleave": 0.4,
    "_deinterleave": 0.4,
    "_gemm_acc": 1.5,
    "_columns_task": 0.7,
    "_gy_columns": 1.2,
    "add_tile": 0.3,
    "add_weight_grad_tile": 0.5,
    "_gy_blocks": 1.3,
    # SGD's update (numbaconv.kernels.cpu.optim), serial and parallel
    "_sgd_into": 0.5,
    "_sgd_parallel": 0.8,
}
#: the jobs of the one-pass backwards on the interleaved-samples layout
_BACKWARD_LANES_JOBS = tuple(f"{JOB_PREFIX}conv2d_{activation}_{pool}_pool_backward_lanes"
                             for activation in ("sigmoid", "relu") for pool in ("avg", "max"))
#: functions that units call, compiled as units of their own before those -> their callers:
#: those several units call (else two processes could compile one at the same time, each for a
#: unit of its own), and the output-channel kernels' functions, one caller each, so that two
#: processes can share their callers' work (the weight gradient with _gy_blocks in it: 2.6 s)
SHARED = {
    "_shifted_matmul_acc": (
        JOB_PREFIX + "conv2d_forward", JOB_PREFIX + "conv2d_forward_lanes",
        JOB_PREFIX + "conv2d_input_grad_lanes", *_BACKWARD_LANES_JOBS,
        *(f"{JOB_PREFIX}conv2d_{activation}_{pool}_pool_forward_lanes"
          for activation in ("sigmoid", "relu") for pool in ("avg", "max")),
        *(f"{JOB_PREFIX}conv2d_{activation}_{pool}_pool_forward"
          for activation in ("sigmoid", "relu") for pool in ("avg", "max"))),
    # the six-row tiles (tiles.shifted_products_acc: LeNet's 6 and 16 channels)
    "_shifted_matmul6_acc": (
        JOB_PREFIX + "conv2d_forward", JOB_PREFIX + "conv2d_forward_lanes",
        JOB_PREFIX + "conv2d_input_grad_lanes", *_BACKWARD_LANES_JOBS,
        *(f"{JOB_PREFIX}conv2d_{activation}_{pool}_pool_forward{layout}"
          for activation in ("sigmoid", "relu") for pool in ("avg", "max")
          for layout in ("", "_lanes"))),
    "_abt_acc": (JOB_PREFIX + "conv2d_weight_grad", JOB_PREFIX + "conv2d_weight_grad_columns"),
    "_abt6_lanes_acc": (JOB_PREFIX + "conv2d_weight_grad_rows",
                        *(f"{JOB_PREFIX}conv2d_{activation}_{pool}_pool_weight_grad"
                          for activation in ("sigmoid", "relu") for pool in ("avg", "max"))),
    "_abt_lanes_acc": (JOB_PREFIX + "conv2d_weight_grad_rows",
                       JOB_PREFIX + "conv2d_weight_grad_lanes",
                       JOB_PREFIX + "conv2d_weight_grad_columns", *_BACKWARD_LANES_JOBS,
                       *(f"{JOB_PREFIX}conv2d_{activation}_{pool}_pool_weight_grad"
                         for activation in ("sigmoid", "relu") for pool in ("avg", "max"))),
    "_interleave": (JOB_PREFIX + "conv2d_forward_lanes", JOB_PREFIX + "conv2d_weight_grad_lanes",
                    JOB_PREFIX + "conv2d_input_grad_lanes", *_BACKWARD_LANES_JOBS,
                    *(f"{JOB_PREFIX}conv2d_{activation}_{pool}_pool_forward_lanes"
                      for activation in ("sigmoid", "relu") for pool in ("avg", "max"))),
    "_deinterleave": (JOB_PREFIX + "conv2d_forward_lanes", JOB_PREFIX + "conv2d_input_grad_lanes",
                      *_BACKWARD_LANES_JOBS,
                      *(f"{JOB_PREFIX}conv2d_{activation}_{pool}_pool_forward_lanes"
                        for activation in ("sigmoid", "relu") for pool in ("avg", "max"))),
    "_gemm_acc": (JOB_PREFIX + "conv2d_forward_columns", JOB_PREFIX + "conv2d_input_grad_columns",
                  "_pair_products", "conv2d_forward_pointwise", "conv2d_weight_grad_pointwise",
                  "matmul_acc"),
    # the columns of a chunk of samples: conv2d_forward_columns's first job (COLUMN_JOBS), and
    # called by the weight gradient's job
    "_columns_task": ("conv2d_forward_columns", JOB_PREFIX + "conv2d_weight_grad_columns"),
    # gy laid out on the columns' pixels, called by both backward column kernels
    "_gy_columns": ("conv2d_weight_grad_columns", "conv2d_input_grad_columns"),
    # the output-channel kernels' tiles, called by their jobs (and Winograd's), and gy laid
    # out in blocks of channels, called by the weight gradient
    "add_tile": (JOB_PREFIX + "conv2d_forward_channels", JOB_PREFIX + "conv2d_forward_winograd"),
    "add_weight_grad_tile": (JOB_PREFIX + "conv2d_weight_grad_channels",
                             JOB_PREFIX + "conv2d_weight_grad_winograd"),
    "_gy_blocks": ("conv2d_weight_grad_channels",),
}
if not WIDE:  # the six-row tiles are never called on a CPU with 16 vector
    # registers (tiles.WIDE): nothing to compile
    del SHARED["_shifted_matmul6_acc"], SHARED["_abt6_lanes_acc"]
#: kernels that take a job before their own (see :func:`job`): the shared function that job
#: runs (its unit), by kernel
COLUMN_JOBS = {"conv2d_forward_columns": "_columns_task"}
#: seconds a child process takes to start (Python, NumPy, Numba) before it compiles, for the
#: announced estimate
STARTUP_SECONDS = 1.0


def fused_kernel_names(activation: int, pool: int) -> list[str]:
    """The names of the fused kernels for activation and pool codes (see
    :mod:`numbaconv.kernels.cpu.activation`), forward first."""
    from .kernels.cpu.activation import FUSED

    return [kernel.py_func.__name__ for kernel in FUSED[activation, pool]]


def one_pass_kernel_name(activation: int, pool: int) -> str:
    """The name of the one-pass convolution + activation + pool forward kernel (see
    :mod:`numbaconv.kernels.cpu.conv_act_pool`) for activation and pool codes."""
    from .kernels.cpu.conv_act_pool import FUSED

    return FUSED[activation, pool].py_func.__name__


def one_pass_lanes_kernel_name(activation: int, pool: int) -> str:
    """The name of the one-pass forward kernel on the interleaved-samples layout (see
    :mod:`numbaconv.kernels.cpu.conv_act_pool`) for activation and pool codes."""
    from .kernels.cpu.conv_act_pool import FUSED_LANES

    return FUSED_LANES[activation, pool].py_func.__name__


def one_pass_weight_grad_name(activation: int, pool: int) -> str:
    """The name of the one-pass activation + pool backward and weight gradient kernel of a
    first stage (see :mod:`numbaconv.kernels.cpu.conv_act_pool`) for activation and pool
    codes."""
    from .kernels.cpu.conv_act_pool import FUSED_WEIGHT_GRAD

    return FUSED_WEIGHT_GRAD[activation, pool].py_func.__name__


def one_pass_backward_lanes_name(activation: int, pool: int) -> str:
    """The name of the one-pass activation + pool backward, weight and input gradient kernel
    on the interleaved-samples layout (see :mod:`numbaconv.kernels.cpu.conv_act_pool`) for
    activation and pool codes."""
    from .kernels.cpu.conv_act_pool import FUSED_BACKWARD_LANES

    return FUSED_BACKWARD_LANES[activation, pool].py_func.__name__


def job(name: str, dtype):
    """The :class:`~numbaconv.kernels.cpu.jobs.Job` kernel ``name`` takes as its last
    argument for arrays of ``dtype`` (its per-job function, compiled on its own), or None.
    (A kernel of :data:`COLUMN_JOBS` takes another before it: :func:`_column_job`.)"""
    from .kernels.cpu import conv_act_pool
    from .kernels.cpu.conv import channels, columns, flat, lanes, winograd

    jobs = {"conv2d_forward": flat.forward_job, "conv2d_weight_grad": flat.weight_grad_job,
            "conv2d_weight_grad_rows": flat.weight_grad_rows_job,
            "conv2d_forward_lanes": lanes.forward_lanes_job,
            "conv2d_weight_grad_lanes": lanes.weight_grad_lanes_job,
            "conv2d_input_grad_lanes": lanes.input_grad_lanes_job,
            "conv2d_forward_columns": columns.forward_columns_job,
            "conv2d_weight_grad_columns": columns.weight_grad_columns_job,
            "conv2d_input_grad_columns": columns.input_grad_columns_job,
            "conv2d_forward_channels": channels.forward_channels_job,
            "conv2d_weight_grad_channels": channels.weight_grad_channels_job,
            "conv2d_forward_winograd": winograd.forward_winograd_job,
            "conv2d_weight_grad_winograd": winograd.weight_grad_winograd_job}
    if name in jobs:
        return jobs[name](np.dtype(dtype))
    for kernels, family_job in ((conv_act_pool.FUSED, conv_act_pool.block_job),
                                (conv_act_pool.FUSED_WEIGHT_GRAD, conv_act_pool.weight_grad_job),
                                (conv_act_pool.FUSED_LANES, conv_act_pool.lanes_job),
                                (conv_act_pool.FUSED_BACKWARD_LANES,
                                 conv_act_pool.backward_lanes_job)):
        for codes, kernel in kernels.items():
            if kernel.py_func.__name__ == name:
                return family_job(*codes, np.dtype(dtype))
    return None


def _column_job(dtype):
    """The job the kernels of :data:`COLUMN_JOBS` take before their own, for ``dtype``: the
    columns of a chunk of samples (:func:`numbaconv.kernels.cpu.conv.columns.columns_job`)."""
    from .kernels.cpu.conv import columns

    return columns.columns_job(np.dtype(dtype))


def units(name: str) -> list[str]:
    """What compiling kernel ``name`` takes, each a task of its own in :func:`precompile`:
    the :data:`SHARED` functions it calls, its job (``"job:" + name``, where it takes one:
    see :func:`job`), then the kernel."""
    own = ([JOB_PREFIX + name] if job(name, np.float32) is not None else []) + [name]
    return [shared for shared, users in SHARED.items() if set(own) & set(users)] + own


def _stage(unit: str) -> int:
    """When :func:`precompile` compiles ``unit``: the shared functions first (0), then the
    units that call none of them (1), while the shared ones compile, then those that do (2),
    which then find them in the cache instead of compiling them again."""
    if unit in SHARED:
        return 0
    return 2 if any(unit in users for users in SHARED.values()) else 1


#: units that compile another signature of a kernel: unit -> the kernel's name
VARIANTS = {"_pair_products_in_place": "_pair_products"}


def _dispatcher(name: str):
    from .kernels.cpu import activation, conv, conv_act_pool, dense, layout, optim, pool

    if name.startswith(JOB_PREFIX):
        return job(name[len(JOB_PREFIX):], np.float32).dispatcher
    name = VARIANTS.get(name, name)
    for module in (conv, conv.tiles, conv.lanes, conv.columns, conv.channels, conv.pointwise,
                   conv.unrolled, conv.winograd, layout, pool, activation, dense, optim):
        if hasattr(module, name):
            return getattr(module, name)
    for kernels in (*activation.FUSED.values(), conv_act_pool.FUSED.values(),
                    conv_act_pool.FUSED_WEIGHT_GRAD.values(), conv_act_pool.FUSED_LANES.values(),
                    conv_act_pool.FUSED_BACKWARD_LANES.values()):
        for kernel in kernels:
            if kernel.py_func.__name__ == name:
                return kernel
    raise KeyError(name)


def signature(name: str, dtype) -> tuple:
    """The argument types the public functions call kernel ``name`` with, for ``dtype``
    (for ``"job:" + name``, those of its job)."""
    from numba import typeof

    if name.startswith(JOB_PREFIX):
        return tuple(job(name[len(JOB_PREFIX):], dtype).signature().args)
    if name in COLUMN_JOBS.values():  # a job's function, compiled as the job compiles it
        return tuple(_column_job(dtype).signature().args)
    kernel_job = job(name, dtype)
    if kernel_job is None:
        return _signature(name, dtype)
    jobs = ((_column_job(dtype),) if name in COLUMN_JOBS else ()) + (kernel_job,)
    return _signature(name, dtype) + tuple(typeof(each) for each in jobs)


def _signature(name: str, dtype) -> tuple:
    """:func:`signature` without a kernel's job."""
    from numba import typeof, types

    from .kernels.cpu.conv import columns

    array = {d: typeof(np.empty((1,) * d, dtype=dtype)) for d in (1, 2, 3, 4, 5)}
    a1, a2, a3, a4, a5 = array[1], array[2], array[3], array[4], array[5]
    i64 = types.int64
    taps = typeof(np.empty(1, dtype=np.int64))
    indices4 = typeof(np.empty((1,) * 4, dtype=np.int64))  # a max pool's
    # SGD's update: the parameter, its gradient and its buffer, four hyperparameters in the
    # dtype, three flags
    sgd = (a1, a1, a1) + (a1.dtype,) * 4 + (types.boolean,) * 3
    return {
        "_sgd_into": sgd,
        "_sgd_parallel": sgd,
        "_shifted_matmul_acc": (a2, a2, taps, taps, i64, a2, i64, i64),
        "_abt_acc": (a2, a2, taps, taps, a2) + (i64,) * 6,
        "_abt_lanes_acc": (a2, a2, taps, taps, a2) + (i64,) * 6,
        "_shifted_matmul6_acc": (a2, a2, taps, taps, i64, a2, i64, i64),
        "_abt6_lanes_acc": (a2, a2, taps, taps, a2) + (i64,) * 6,
        "_interleave": (a4, i64, i64, i64, a2),
        "_deinterleave": (a2, i64, i64, i64, a4),
        # the column jobs pass the module's constant K_BLOCK: typed as that literal
        "_gemm_acc": (a2, a2, a2, i64, types.literal(columns.K_BLOCK)),
        "_gy_columns": (a4, i64, i64),
        "_place_planes": (a4, a4) + (i64,) * 8,
        # the forward's tile takes the stride along a row as a literal (the job's stride-1
        # calls: its stride-2 and stride-4 ones compile with the job)
        "add_tile": (a1, a1, taps, i64, i64, i64, types.literal(1), a1, i64),
        # the weight gradient's tile at stride 1, the stride a literal (its stride-2 and -4 calls
        # compile with the job)
        "add_weight_grad_tile": (a2, a3, taps) + (i64,) * 7 + (types.literal(1), a1),
        "_gy_blocks": (a4, i64, a3),
        "conv2d_forward": (a4, a4, a1) + (i64,) * 7,
        "conv2d_forward_lanes": (a4, a4, a1) + (i64,) * 6,
        "conv2d_weight_grad": (a4, a4) + (i64,) * 7,
        "conv2d_weight_grad_rows": (a4, a4) + (i64,) * 6,
        "conv2d_weight_grad_lanes": (a4, a4) + (i64,) * 6,
        "conv2d_input_grad_lanes": (a4, a5) + (i64,) * 5,
        "conv2d_forward_columns": (a4, a4, a1) + (i64,) * 9,
        "conv2d_weight_grad_columns": (a4, a4) + (i64,) * 9,
        "conv2d_input_grad_columns": (a4, a4) + (i64,) * 9,
        "conv2d_forward_channels": (a4, a3, a1, taps) + (i64,) * 7 + (a4,),
        "conv2d_forward_winograd": (a4, a3, a1) + (i64,) * 4 + (a4, typeof(np.empty(1, bool))),
        "transform_weights": (a4, a3),
        "conv2d_weight_grad_winograd": (a4, a4, i64, i64, a4, a4),
        "conv2d_forward_pointwise": (a4, a2, a1, i64, a3),
        "conv2d_weight_grad_pointwise": (a3, a3, i64, a3, a2),
        "transpose_samples": (a4, i64, a3),
        "channel_sums": (a3,),
        "swap_outer": (a1, i64, i64, i64, i64, i64, a3),
        "transpose_pixels": (a3, a3),
        "_live_weights": (a3, taps, a3),
        "_live_weights_transposed": (a3, taps, a3),
        "_taps_gradient": (a3, taps, a3),
        "_pair_products": (a3, a3, taps, taps, taps, a1, a3),
        # the weights in place: w (C_out, C_in, T) seen tap-major, a strided view
        "_pair_products_in_place": (a3.copy(layout="A"), a3, taps, taps, taps, a1, a3),
        "conv2d_weight_grad_channels": (a4, a2, taps) + (i64,) * 4 + (a3,),
        "avg_pool2d_forward": (a4,) + (i64,) * 6 + (types.boolean, i64, a4),
        "avg_pool2d_backward": (a4,) + (i64,) * 6 + (types.boolean, i64, a4),
        "max_pool2d_forward": (a4,) + (i64,) * 8 + (a4, indices4),
        "max_pool2d_backward": (a4, indices4, a3),
        "sigmoid_forward": (a1,),
        "sigmoid_backward": (a1, a1),
        "matmul_acc": (a2, a2, a2),
        "packed_matmul_acc": (a2, a2, a2, types.boolean, types.boolean),
        "fused_forward": (a4,),
        "fused_backward": (a4, a4),
        "one_pass": (a4, a4, a1) + (i64,) * 8,
        "one_pass_weight_grad": (a4, a4, a4) + (i64,) * 8,
        "one_pass_lanes": (a4, a4, a1) + (i64,) * 5,
        "one_pass_backward_lanes": (a4, a4, a4, a5) + (i64,) * 4,
    }["one_pass" if name.startswith("conv2d_") and name.endswith("_pool_forward") else
      "one_pass_lanes" if name.endswith("_pool_forward_lanes") else
      "one_pass_backward_lanes" if name.endswith("_pool_backward_lanes") else
      "one_pass_weight_grad" if name.endswith("_pool_weight_grad") else
      name if not name.endswith(("_pool_forward", "_pool_backward")) else
      "fused_" + name.rsplit("_", 1)[1]]


def _conv_geometry(layer, input_shape) -> tuple:
    """(stride, dilation, padding ((top, bottom), (left, right)), padded input shape, output
    shape) of a ``Conv2d`` for inputs of ``input_shape``: what
    :mod:`numbaconv.kernels.cpu.conv` chooses its kernels by."""
    from .shapes import as_pair, conv_padding

    stride, dilation = as_pair(layer.stride, "stride"), as_pair(layer.dilation, "dilation")
    kernel = tuple(layer.params["weight"].shape[2:])
    padding = conv_padding(layer.padding, kernel, stride, dilation)
    (top, bottom), (left, right) = padding
    n, c_in, height, width = input_shape
    padded = (n, c_in, height + top + bottom, width + left + right)
    output = tuple(int(s) for s in layer.output_shape(input_shape))
    return stride, dilation, padding, padded, output


def _places_in_parallel(shape) -> list[str]:
    """``["_place_planes"]`` where :func:`numbaconv.kernels.cpu.conv.place` fills an array of
    ``shape`` (N, C, H, W) by that parallel kernel (a million values and more), else ``[]``."""
    from .kernels.cpu import conv

    return ["_place_planes"] if int(np.prod(shape)) >= conv.PLACE_IN_PARALLEL else []


def _pad_kernels(input_shape, padding) -> list[str]:
    """The kernels :func:`numbaconv.kernels.cpu.conv.pad` calls to pad inputs of
    ``input_shape`` by ``padding`` ((top, bottom), (left, right))."""
    (top, bottom), (left, right) = padding
    if top == bottom == left == right == 0:
        return []
    n, channels, height, width = input_shape
    return _places_in_parallel((n, channels, height + top + bottom, width + left + right))


def _conv_kernels(layer, input_shape, need_input_grad: bool) -> tuple[list[str], list[str]]:
    """The kernels a ``Conv2d`` calls, (its forward's, its backward's), its input gradient's
    only with ``need_input_grad``: for inputs of ``input_shape`` the ones
    :mod:`numbaconv.kernels.cpu.conv` chooses for that shape; for ``None`` every one its
    inputs' widths could choose (the parallel padding of large inputs aside)."""
    from .kernels.cpu import conv
    from .shapes import as_pair, conv_padding

    weight = layer.params["weight"]
    columns_backward = ["conv2d_weight_grad_columns"] + (
        ["conv2d_input_grad_columns"] if need_input_grad else [])
    if input_shape is None:
        forward, backward = _conv_kernels_any_width(layer)
        if conv.use_columns(weight.shape, layer.groups, (2, 2), 1):  # at some stride or width
            forward, backward = ["conv2d_forward_columns"] + forward, columns_backward + backward
        stride = as_pair(layer.stride, "stride")
        padding = conv_padding(layer.padding, tuple(weight.shape[2:]), stride,
                               as_pair(layer.dilation, "dilation"))
        if conv.use_pointwise((1, weight.shape[1], 8 * stride[0], 8 * stride[1]), weight.shape,
                              layer.groups, stride, padding, weight.itemsize):  # 8x8 outputs
            forward = ["conv2d_forward_pointwise"] + forward
            backward = _pointwise_backward(layer, need_input_grad) + backward
        return forward, backward
    stride, dilation, padding, padded, output = _conv_geometry(layer, input_shape)
    if conv.use_pointwise(input_shape, weight.shape, layer.groups, stride, padding,
                          weight.itemsize):
        backward = _pointwise_backward(layer, need_input_grad)
        if need_input_grad and stride[0] != 1:  # placed on x's grid
            backward += _places_in_parallel(input_shape)
        return ["conv2d_forward_pointwise"], backward
    if conv.use_column_side(input_shape, weight.shape, layer.groups, stride, output):
        # the forward by row tiles (padding each sample itself)
        strided = conv.use_strided_channel_vectors(weight.shape, layer.groups, stride,
                                                   output[3], weight.itemsize)
        forward = ["conv2d_forward_channels"] if strided else []
        if conv.use_unrolled(input_shape, weight.shape, layer.groups, output):
            unrolled_forward, unrolled_backward = _unrolled_kernels(
                layer, input_shape, stride, dilation, padding, output, need_input_grad)
            return forward or unrolled_forward, unrolled_backward
        plan = conv._ColumnsPlan(input_shape, weight.shape, padding, stride, dilation,
                                 *output[2:])
        if plan.empty:  # every tap reads padding: the bias alone, no kernel (but the
            # strided forward's)
            return forward, []
        if strided:
            return forward, _pad_kernels(input_shape, padding) + [
                "conv2d_weight_grad_channels"] + (
                ["conv2d_input_grad_columns"] if need_input_grad else [])
        pads = []
        if plan.wide:  # the part of x the live taps read, padded
            n, channels, height, width = input_shape
            pads = _pad_kernels((n, channels, height - plan.x_rows.start,
                                 width - plan.x_cols.start), plan.padding)
        return pads + ["conv2d_forward_columns"], pads + columns_backward
    pads = _pad_kernels(input_shape, padding)
    forward = _forward_kernels(weight.shape, layer.groups, stride, dilation, padded,
                               *output[2:], weight.itemsize)
    if not set(forward) & PADDING_THEMSELVES:
        forward = pads + forward
    backward = pads + _weight_grad_kernels(layer, padded, output)
    if not need_input_grad:
        return forward, backward
    if conv.use_lanes(padded, weight.itemsize, stride[1], layer.groups, output[3]):
        return forward, backward + ["conv2d_input_grad_lanes"]
    # a convolution of gy spread onto the input's grid plus the kernel's reach (at stride 1
    # gy padded), with the transposed weights
    n, height, width = input_shape[0], input_shape[2], input_shape[3]
    reach = (dilation[0] * (weight.shape[2] - 1), dilation[1] * (weight.shape[3] - 1))
    spread = (n, weight.shape[0], height + reach[0], width + reach[1])
    input_grad = _forward_kernels(_transposed_shape(weight.shape, layer.groups), layer.groups,
                                  (1, 1), dilation, spread, height, width, weight.itemsize)
    if (set(input_grad) & PADDING_THEMSELVES
            and conv.input_grad_frame(padding, stride, reach) is not None):
        return forward, backward + input_grad
    return forward, backward + _places_in_parallel(spread) + input_grad


def _unrolled_kernels(layer, input_shape, stride, dilation, padding, output_shape,
                      need_input_grad: bool) -> tuple[list[str], list[str]]:
    """The kernels of :func:`numbaconv.kernels.cpu.conv.unrolled.forward_unrolled` and
    ``backward_unrolled`` for a ``Conv2d`` (forward, backward): the forward's products read
    the weights in place or rearranged, as ``_weights_in_place`` says."""
    from .kernels.cpu.conv import unrolled

    weight = layer.params["weight"]
    live, by_output, _, _ = unrolled._plan_of(input_shape, weight.shape, *output_shape[2:],
                                              unrolled.geometry(stride, dilation, padding))
    forward = ["swap_outer"] + (["_pair_products_in_place"]
                                 if unrolled._weights_in_place(by_output, live)
                                 else ["_live_weights", "_pair_products"])
    backward = ["swap_outer", "transpose_pixels", "_pair_products", "_taps_gradient"] + (
        ["channel_sums"] if layer.params.get("bias") is not None else []) + (
        ["_live_weights_transposed"] if need_input_grad else [])
    return forward, backward


def _pointwise_backward(layer, need_input_grad: bool) -> list[str]:
    """The kernels of :func:`numbaconv.kernels.cpu.conv.backward_pointwise` for a ``Conv2d``:
    the input gradient's is the forward's."""
    return (["transpose_samples", "conv2d_weight_grad_pointwise"]
            + (["channel_sums"] if layer.params.get("bias") is not None else [])
            + (["conv2d_forward_pointwise"] if need_input_grad else []))


#: the forward kernels that pad each sample themselves (x's padding takes no kernel)
PADDING_THEMSELVES = {"conv2d_forward_channels", "conv2d_forward_winograd"}
#: the kernels :func:`numbaconv.kernels.cpu.conv.winograd.forward_winograd` calls (where an
#: output is not finite it calls the output-channel forward too: compiled then)
WINOGRAD = ("transform_weights", "conv2d_forward_winograd")
#: and its weight gradient's (the bias's by channel_sums); likewise
WINOGRAD_WEIGHT_GRAD = ("conv2d_weight_grad_winograd", "channel_sums")


def _forward_kernels(weight_shape, groups, stride, dilation, padded_shape, out_h, out_w,
                     itemsize) -> list[str]:
    """The kernels :func:`numbaconv.kernels.cpu.conv.forward` takes for weights of
    ``weight_shape`` and a padded input of ``padded_shape`` (N, C, Hp, Wp)."""
    from .kernels.cpu import conv

    if conv.use_winograd(weight_shape, groups, stride, dilation, out_h, out_w, itemsize):
        return list(WINOGRAD)
    if conv.use_channel_vectors(weight_shape, groups, stride, out_h, out_w, padded_shape[3],
                                itemsize):
        return ["conv2d_forward_channels"]
    if conv.use_lanes(padded_shape, itemsize, stride[1], groups, out_w):
        return ["conv2d_forward_lanes"]
    return ["conv2d_forward"]


def _weight_grad_kernels(layer, padded_shape, output_shape) -> list[str]:
    """The kernels :func:`numbaconv.kernels.cpu.conv.weight_grad` takes for a ``Conv2d`` with
    a padded input of ``padded_shape`` and outputs of ``output_shape`` (N, C, H, W)."""
    from .kernels.cpu import conv
    from .shapes import as_pair

    weight = layer.params["weight"]
    stride = as_pair(layer.stride, "stride")
    if conv.use_winograd_weight_grad(weight.shape, layer.groups, stride,
                                     as_pair(layer.dilation, "dilation"), *output_shape[2:],
                                     weight.itemsize):
        return list(WINOGRAD_WEIGHT_GRAD)
    if conv.use_channel_vectors(weight.shape, layer.groups, stride, *output_shape[2:],
                                padded_shape[3], weight.itemsize):
        return ["conv2d_weight_grad_channels"]
    if conv.use_lanes(padded_shape, weight.itemsize, stride[1], layer.groups, output_shape[3]):
        return ["conv2d_weight_grad_lanes"]
    return [_flat_weight_grad(layer, padded_shape[0])]


def _transposed_shape(weight_shape, groups) -> tuple:
    """The shape of :func:`numbaconv.kernels.cpu.conv.transposed_weights` of weights of
    ``weight_shape``: the input gradient's convolution's weights."""
    c_out, c_in_g, kh, kw = weight_shape
    return (groups * c_in_g, c_out // groups, kh, kw)


def _flat_weight_grad(layer, batch: int | None) -> str:
    """The weight-gradient kernel :func:`numbaconv.kernels.cpu.conv.weight_grad` takes for a
    layer outside the interleaved-samples kernels, at ``batch`` samples (None: the most)."""
    from .kernels.cpu import conv
    from .shapes import as_pair

    weight = layer.params["weight"]
    chunks = conv.WEIGHT_GRAD_CHUNKS if batch is None else min(batch, conv.WEIGHT_GRAD_CHUNKS)
    if conv.weight_grad_by_columns(weight.shape, layer.groups, weight.itemsize, chunks):
        return "conv2d_weight_grad_columns"
    if conv.weight_grad_from_rows(weight.shape, as_pair(layer.stride, "stride")[1],
                                  layer.groups):
        return "conv2d_weight_grad_rows"
    return "conv2d_weight_grad"


#: output rows and columns, and padded columns, of a map larger than any: whether the
#: output-channel kernels serve a layer at some size (a map's size decides only whether one
#: tile fits its grid)
ANY_SIZE = 1 << 20


def _conv_kernels_any_width(layer) -> tuple[list[str], list[str]]:
    """:func:`_conv_kernels` on the flat, interleaved-samples and output-channel side, for
    inputs of any width (the input gradient's whether needed or not, as before this walk
    knew stages)."""
    from .kernels.cpu import conv
    from .kernels.cpu.conv.winograd import winograd_fits
    from .shapes import as_pair

    weight = layer.params["weight"]
    forward = ["conv2d_forward", "conv2d_forward_lanes"]
    backward = [_flat_weight_grad(layer, None), "conv2d_weight_grad_lanes",
                "conv2d_input_grad_lanes"]
    grid = (ANY_SIZE,) * 3
    stride, dilation = as_pair(layer.stride, "stride"), as_pair(layer.dilation, "dilation")
    transposed = _transposed_shape(weight.shape, layer.groups)
    if conv.use_channel_vectors(weight.shape, layer.groups, stride, *grid, weight.itemsize):
        forward = ["conv2d_forward_channels"] + forward
        backward = ["conv2d_weight_grad_channels"] + backward
    elif conv.use_channel_vectors(transposed, layer.groups, (1, 1), *grid, weight.itemsize):
        # the input gradient's (the forward's kernel: listed above where that serves)
        backward = backward + ["conv2d_forward_channels"]
    if winograd_fits(weight.shape, layer.groups, stride, dilation, weight.itemsize):
        forward = [*WINOGRAD, *forward]
        backward = [*WINOGRAD_WEIGHT_GRAD, *backward]
    if winograd_fits(transposed, layer.groups, (1, 1), dilation, weight.itemsize):
        backward = [*backward, *WINOGRAD]
    return forward, backward


def _leaf_kernels(layer, input_shape, need_input_grad: bool) -> list[str]:
    """The kernels a layer without children calls (a ``Conv2d``: see :func:`_conv_kernels`)."""
    from .layers import AvgPool2d, Conv2d, Linear, MaxPool2d, Sigmoid

    if isinstance(layer, Conv2d):
        forward, backward = _conv_kernels(layer, input_shape, need_input_grad)
        return forward + backward
    if isinstance(layer, Linear):
        return _linear_kernels(layer, input_shape)
    needs = {
        AvgPool2d: ("avg_pool2d_forward", "avg_pool2d_backward"),
        MaxPool2d: ("max_pool2d_forward", "max_pool2d_backward"),
        Sigmoid: ("sigmoid_forward", "sigmoid_backward"),
    }
    return [kernel for cls, kernels in needs.items() if isinstance(layer, cls)
            for kernel in kernels]


def _linear_kernels(layer, input_shape) -> list[str]:
    """The products a ``Linear`` calls (:func:`numbaconv.kernels.cpu.dense.product_acc`, by the
    size of their b): its weight is the b of the forward and the input gradient, its input
    (rows x in_features) that of the weight gradient, which a shorter last batch may leave
    on :func:`~numbaconv.kernels.cpu.dense.matmul_acc`; without ``input_shape``, any rows."""
    from .kernels.cpu.dense import uses_packed

    out_features, in_features = layer.params["weight"].shape
    itemsize = layer.params["weight"].itemsize
    packed = (input_shape is None or uses_packed(in_features, out_features, itemsize)
              or uses_packed(math.prod(input_shape[:-1]), in_features, itemsize))
    return ["matmul_acc"] + (["packed_matmul_acc"] if packed else [])


def _fused_kernels(fused, input_shape, need_input_grad: bool) -> list[str]:
    """The kernels a fused ``Conv2d -> activation -> pool`` stage calls: the convolution's
    and the fused activation + pool ones, or for its forward the one-pass kernel where that
    serves (a unit stride; narrow images on the interleaved-samples layout)."""
    from .kernels.cpu import conv as cpu_conv

    conv = fused.layers[0]
    codes = (fused.activation_code, fused.pool_code)
    forward, backward = _conv_kernels(conv, input_shape, need_input_grad)
    act_pool_forward, act_pool_backward = fused_kernel_names(*codes)
    if input_shape is None:
        return forward + backward + [one_pass_kernel_name(*codes),
                                     one_pass_lanes_kernel_name(*codes), act_pool_forward,
                                     act_pool_backward, one_pass_backward_lanes_name(*codes)] + (
            [] if need_input_grad else [one_pass_weight_grad_name(*codes)])
    # the one-pass kernels pad x themselves, a block at a time
    if not need_input_grad and _one_pass_weight_grad_applies(conv, input_shape):
        backward, act_pool_backward = [one_pass_weight_grad_name(*codes)], None
    elif _one_pass_backward_lanes_applies(conv, input_shape):  # which pads x first
        _, _, padding, _, _ = _conv_geometry(conv, input_shape)
        backward = _pad_kernels(input_shape, padding) + [one_pass_backward_lanes_name(*codes)]
        act_pool_backward = None
    if _one_pass_applies(conv, input_shape):
        _, _, padding, padded, output = _conv_geometry(conv, input_shape)
        if cpu_conv.use_lanes(padded, conv.params["weight"].itemsize, 1, conv.groups,
                              output[3]):  # which pads x first
            forward = _pad_kernels(input_shape, padding) + [one_pass_lanes_kernel_name(*codes)]
        else:
            forward = [one_pass_kernel_name(*codes)]
        act_pool_forward = None
    return [kernel for kernel in forward + backward + [act_pool_forward, act_pool_backward]
            if kernel is not None]


def kernels_for(model, input_shape=None) -> list[str]:
    """Names of the CPU kernels that training and evaluating ``model`` (a layer tree, or a
    list of layers for a ``Sequential``) calls, for every layer of the tree (see
    :data:`KERNELS`); layers computed in NumPy need none. The model's input gradient is not
    computed (a training step's), so its first convolution computes none.

    With ``input_shape`` (N, C, H, W), those that batches of that shape call (each layer for
    the shape it sees: a ``Residual``'s body and shortcut and a ``Concat``'s branches see the
    container's input); without it, every kernel that inputs of any width could call."""
    from .layers import Layer, Sequential

    if not isinstance(model, Layer):
        model = Sequential(model)
    names: list[str] = []
    shape = None if input_shape is None else tuple(int(s) for s in input_shape)
    _tree_kernels(model, shape, False, names)
    return names


def _tree_kernels(layer, input_shape, need_input_grad: bool, names: list[str]):
    """Append the kernels of ``layer`` and the layers below it for inputs of ``input_shape``
    (see :func:`kernels_for`) to ``names``, those not there yet, in the order of the
    forward; returns the layer's output shape (None for None). ``need_input_grad``: whether
    the layer's backward computes its input's gradient (as ``Sequential.backward`` passes it:
    not for the model's first stage, nor for every first stage within)."""
    from .layers import Sequential
    from .layers.fusion import ConvActPool

    def add(kernels):
        for kernel in kernels:
            if kernel not in names:
                names.append(kernel)

    def output_shape(child, shape):
        return None if shape is None else tuple(int(s) for s in child.output_shape(shape))

    shape = input_shape
    if isinstance(layer, Sequential):  # stage by stage, each on the one before's output
        for stage in layer.stages():
            need = need_input_grad or stage.start > 0
            if not isinstance(stage.fused, ConvActPool):  # a layer, or a batch norm and its
                # ReLU (their kernels, those of the layers)
                for i in range(stage.start, stage.stop):
                    shape = _tree_kernels(layer.layers[i], shape, need or i > stage.start,
                                          names)
                continue
            add(_fused_kernels(stage.fused, shape, need))
            for child in layer.layers[stage.start:stage.stop]:
                shape = output_shape(child, shape)
        return shape
    children = layer.children()
    for _, child in children:  # Residual's body and shortcut, Concat's branches: on the input
        _tree_kernels(child, shape, need_input_grad, names)
    if not children:
        add(_leaf_kernels(layer, shape, need_input_grad))
    return output_shape(layer, shape)


def _one_pass_applies(conv, input_shape) -> bool:
    """Whether a fused stage's forward takes the one-pass kernel for inputs of
    ``input_shape``: the test ``functional._conv2d_act_pool`` makes at run time,
    :func:`numbaconv.kernels.cpu.conv_act_pool.applies`."""
    from .kernels.cpu import conv_act_pool

    stride, _, _, padded, output = _conv_geometry(conv, input_shape)
    weight = conv.params["weight"]
    return conv_act_pool.applies(input_shape, padded, weight.shape, weight.itemsize, stride,
                                 conv.groups, *output[2:])


def _one_pass_weight_grad_applies(conv, input_shape) -> bool:
    """Whether a first stage's backward takes the one-pass weight-gradient kernel for inputs
    of ``input_shape``: the tests ``functional._one_pass_weight_grad`` makes at run time."""
    from .kernels.cpu import conv as cpu_conv
    from .kernels.cpu import conv_act_pool

    stride, _, _, padded, output = _conv_geometry(conv, input_shape)
    weight = conv.params["weight"]
    return (not cpu_conv.use_column_side(input_shape, weight.shape, conv.groups, stride, output)
            and conv_act_pool.weight_grad_applies(padded, weight.shape, weight.itemsize, stride,
                                                  conv.groups, *output[2:]))


def _one_pass_backward_lanes_applies(conv, input_shape) -> bool:
    """Whether a fused stage's backward takes the one-pass kernel on the interleaved-samples
    layout for inputs of ``input_shape``: the test ``functional._one_pass_backward_lanes``
    makes at run time."""
    from .kernels.cpu import conv_act_pool

    stride, _, _, padded, output = _conv_geometry(conv, input_shape)
    weight = conv.params["weight"]
    return conv_act_pool.backward_lanes_applies(input_shape, padded, weight.shape,
                                                weight.itemsize, stride, conv.groups,
                                                *output[2:])


def optimizer_kernels(model, optimizer: str | None) -> list[str]:
    """Names of the CPU kernels optimizer ``optimizer`` ('sgd', 'adam' or None) calls to
    update ``model``'s parameters (see :data:`KERNELS`): SGD's serial update, and its
    parallel one where a parameter is larger than a chunk on more than one thread; Adam
    computes in NumPy."""
    from .kernels.cpu.elementwise import serial

    if optimizer != "sgd":
        return []
    sizes = [p.size for p in model.named_params().values()]
    return ["_sgd_into"] + (["_sgd_parallel"] if not all(map(serial, sizes)) else [])


def _model_dtypes(model) -> list[str]:
    dtypes = sorted({p.dtype.name for p in model.named_params().values()})
    return dtypes or ["float32"]


def is_cached(name: str, dtype) -> bool:
    """Whether the on-disk cache holds kernel ``name`` for ``dtype``, without loading it.

    Reads Numba's cache index (the private API of Numba's ``Dispatcher.compile``); with another
    Numba whose internals differ it answers False, and the kernel is compiled again.
    """
    dispatcher = _dispatcher(name)
    try:
        cache = dispatcher._cache
        key = cache._index_key(signature(name, dtype), dispatcher.targetctx.codegen())
        return key in cache._cache_file._load_index()
    except Exception:  # noqa: BLE001 - any change in Numba's internals means "unknown"
        return False


def compile_kernels(tasks: Iterable[tuple[str, str]], claims: str | None = None) -> None:
    """Compile (or load from the cache) each ``(kernel name, dtype name)`` in this process;
    with a ``claims`` folder, only those this process claims there first."""
    for name, dtype in tasks:
        if claims is None or _claim(claims, name, dtype):
            _dispatcher(name).compile(signature(name, np.dtype(dtype)))


def _claim(claims: str, name: str, dtype: str) -> bool:
    """Whether this process is the first to claim ``(name, dtype)`` in folder ``claims``."""
    try:
        os.close(os.open(os.path.join(claims, f"{name}-{dtype}"),
                         os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except OSError:  # claimed already, or the folder is gone (the parent stopped)
        return False
    return True


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def compile_message(tasks: list[tuple[str, str]], processes: int) -> str:
    """The line :func:`precompile` announces before compiling ``tasks`` ((kernel name, dtype
    name) pairs) on ``processes`` processes, with about the time it takes."""
    # fsum: the same figure whatever the tasks' order (a plain sum that lands near x.5 could
    # round either way)
    seconds = math.fsum(KERNELS[name] for name, _ in tasks) / processes + STARTUP_SECONDS
    return f"compiling kernels for this model (first run only, about {seconds:.0f} s)..."


def precompile(model, processes: int | None = None, meanwhile=None, input_shape=None,
               announce=None, optimizer: str | None = None) -> int:
    """Make sure every CPU kernel ``model`` needs (for batches of ``input_shape``, if given:
    see :func:`kernels_for`) is compiled and cached, with its job and the shared functions it
    calls (:func:`units`), and those of ``optimizer`` (:func:`optimizer_kernels`); returns how
    many of those units were missing from the cache.

    ``processes`` (default: the usable cores) caps the processes compiling at once, this one
    included. ``meanwhile``, a function of no arguments, runs in this process once the child
    processes compile (at once when nothing needs compiling) and before this process takes its
    share: work to overlap with the compiling, such as reading the data. If it raises, the
    children are stopped and the exception propagates. ``announce``, a function of one
    string, is called with :func:`compile_message` before anything is compiled (not at all
    with a warm cache): for a command to tell its user why its first run waits.
    """
    tasks = [task for task in dict.fromkeys(
        (unit, dtype) for dtype in _model_dtypes(model)
        for name in kernels_for(model, input_shape) + optimizer_kernels(model, optimizer)
        for unit in units(name))
        if not is_cached(*task)]
    if not tasks:
        if meanwhile is not None:
            meanwhile()
        return 0
    # by stage, and in each the longest first: the ends even out
    tasks.sort(key=lambda task: (_stage(task[0]), -KERNELS[task[0]]))
    n_processes = max(1, min(processes or _cores(), len(tasks)))
    if announce is not None:
        announce(compile_message(tasks, n_processes))
    env = dict(os.environ)
    if "NUMBA_CPU_FEATURES" not in env:  # this process kept Numba's default CPU features
        env["NUMBACONV_WIDE_VECTORS"] = "0"  # (see numbaconv.vectors): so must the children
    claims = tempfile.mkdtemp(prefix="numbaconv-precompile-")
    children = []
    try:
        for _ in range(n_processes - 1):
            children.append(subprocess.Popen(_child_command(json.dumps(tasks), claims), env=env,
                                             stdout=subprocess.DEVNULL,
                                             stderr=subprocess.DEVNULL))
        if meanwhile is not None:
            meanwhile()
        compile_kernels(tasks, claims)
        for child in children:
            child.wait()
    except BaseException:
        for child in children:  # what they would compile is not needed now
            child.kill()
            child.wait()
        raise
    finally:
        shutil.rmtree(claims, ignore_errors=True)
    return len(tasks)


def _package_root() -> str:
    """The folder this copy of numbaconv is imported from."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _child_command(tasks_json: str, claims: str) -> list[str]:
    """The command line of a child process of :func:`precompile`: ``-c`` rather than ``-m``
    (which would put the current folder, maybe another checkout, first on the module path),
    with this copy's folder put first before anything is imported."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "from numbaconv.precompile import _child_main; _child_main(sys.argv[2:])")
    return [sys.executable, "-c", code, _package_root(), os.path.abspath(__file__), tasks_json,
            claims]


def _child_main(argv: list[str]) -> None:
    """A child of :func:`precompile`: its share of the tasks given as JSON, if it imported the
    parent's copy of numbaconv (``argv``: that copy's ``precompile.py``, the tasks, the claims
    folder); else it exits with an error at once, leaving every task to the parent."""
    parent_file, tasks_json, claims = argv
    if os.path.abspath(__file__) != parent_file:
        sys.exit(f"numbaconv.precompile: imported {__file__}, not the parent's {parent_file}")
    compile_kernels([tuple(task) for task in json.loads(tasks_json)], claims)
