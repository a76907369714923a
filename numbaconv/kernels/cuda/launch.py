"""Kernel launches whose arguments are fixed ahead: :func:`prepare`.

``kernel[grid, block](*args)`` makes numba-cuda type every argument, look up the overload,
marshal each array into its pointer, shape and strides and build a launch configuration, at
every call: 60-90 us of host time per launch on the H100 and H200 hosts measured, more than
most of LeNet's kernels take on the GPU, so a training step was bound by the host
(docs/performance.md, "On a GPU"). The device trainer launches the same kernels on the same
buffers every step, so :func:`prepare` does that work once and each call is one driver launch.

The fast path reuses numba-cuda's own overload resolution and argument marshalling (written
against numba-cuda 0.30). Under the simulator, for debug or cooperative kernels, where
numba-cuda lacks those internals, or with ``config.PREPARED_LAUNCHES`` off, a prepared launch
calls the dispatcher instead: slower, same results.
"""

from __future__ import annotations

import ctypes

from . import config
from .device import simulator_enabled


def _internals():
    """numba-cuda's launch internals, or None where they are not the ones expected (or
    config.PREPARED_LAUNCHES is off)."""
    if simulator_enabled() or not config.PREPARED_LAUNCHES:
        return None
    try:
        from numba.cuda import dispatcher as nb_dispatcher
        from numba.cuda.cudadrv import driver
    except ImportError:
        return None
    needed = (hasattr(nb_dispatcher, name) for name in (
        "launch", "LaunchConfig", "CUDA_CORE_GE_1_0", "normalize_kernel_dimensions", "_Kernel"))
    if not all(needed) or not hasattr(driver, "_to_core_stream") \
            or not hasattr(nb_dispatcher._Kernel, "_prepare_args"):
        return None
    return nb_dispatcher, driver


class PreparedLaunch:
    """``kernel[griddim, blockdim](*args)``, or ``(*args, start)`` when ``with_start``, as a
    callable ``launch(start=0)``. ``fast`` says whether it skips numba-cuda's dispatcher;
    ``name`` is the kernel's.

    The arguments (device arrays and scalars) are held, so the buffers outlive the launch.
    With ``hold=False`` they are not: the caller then passes, at each call, arguments that it
    checked are the prepared ones (the same device addresses, shapes and scalars:
    :mod:`~numbaconv.kernels.cuda.steps`), ``launch(start, args)``; the dispatcher's path
    launches those.
    """

    __slots__ = ("fast", "name", "_args", "_call")

    def __init__(self, kernel, griddim, blockdim, args, with_start=False, hold=True):
        self.name = kernel.py_func.__name__
        args = tuple(args)
        internals = _internals()
        call = internals and self._driver_call(internals, kernel, griddim, blockdim, args,
                                               with_start)
        self.fast = call is not None
        self._call = call or self._dispatcher_call(kernel, griddim, blockdim, with_start)
        self._args = args if hold else None

    def __call__(self, start: int = 0, args: tuple | None = None) -> None:
        self._call(start, self._args if args is None else args)

    def _dispatcher_call(self, kernel, griddim, blockdim, with_start):
        # configured at each call: the simulator's kernel[...] sets the grid on the kernel
        # itself, so a configuration kept for later is overwritten by the next one
        if with_start:
            return lambda start, args: kernel[griddim, blockdim](*args, start)
        return lambda start, args: kernel[griddim, blockdim](*args)

    def _driver_call(self, internals, kernel, griddim, blockdim, args, with_start):
        """The driver-only launch, or None for a kernel the dispatcher must launch (debug
        kernels, e.g. under NUMBA_CUDA_DEBUGINFO=1, check an error flag after each launch;
        cooperative ones need another launch call)."""
        nb_dispatcher, driver = internals
        griddim, blockdim = nb_dispatcher.normalize_kernel_dimensions(griddim, blockdim)
        typed = args + ((0,) if with_start else ())  # start is typed as an int64
        overload = kernel.compile(tuple(kernel.typeof_pyval(a) for a in typed))
        if overload.debug or overload.cooperative:
            return None
        stream = driver._to_core_stream(0)
        marshalled, write_backs = [], []
        for arg_type, value in zip(overload.argument_types, args):
            overload._prepare_args(arg_type, value, stream, write_backs, marshalled)
        if write_backs:
            raise TypeError(f"{self.name}: a prepared launch takes device "
                            "arrays only (a host array would be copied once, then go stale)")
        cooperative = ("is_cooperative" if nb_dispatcher.CUDA_CORE_GE_1_0
                       else "cooperative_launch")
        launch_config = nb_dispatcher.LaunchConfig(grid=griddim, block=blockdim, shmem_size=0,
                                                   **{cooperative: False})
        handle = overload._codelibrary.get_cufunc().kernel
        driver_launch = nb_dispatcher.launch
        fixed = tuple(marshalled)
        if with_start:
            return lambda start, _: driver_launch(stream, launch_config, handle, *fixed,
                                                  ctypes.c_int64(start))
        return lambda start, _: driver_launch(stream, launch_config, handle, *fixed)


def prepare(kernel, griddim, blockdim, *args, with_start=False) -> PreparedLaunch:
    """A launch of ``kernel`` over ``griddim`` x ``blockdim`` with ``args`` fixed; with
    ``with_start`` the call's ``start`` is appended as the last (int64) argument."""
    return PreparedLaunch(kernel, griddim, blockdim, args, with_start)
