"""The parallel kernels' jobs, compiled once on their own and called through their address.

A ``parallel=True`` kernel whose ``prange`` body calls a compiled function links that
function's code into its own, and Numba's parfor lowering builds four libraries around the
loop (the body, two gufunc wrappers, the kernel), each of which optimises and generates the
linked code again: for a convolution kernel's job, with the products it calls, about 1 s of
compile time per kernel. So the convolution kernels take their job as an argument, a
:class:`Job`: Numba types it as a first-class function and the kernel calls it through its
address, so that the job's code is compiled (or loaded from the cache) once, by itself.

A job's signature is given here, in the types its kernel passes (Numba checks them when it
compiles the kernel); a kernel compiles once per job signature, i.e. per dtype.
"""

from __future__ import annotations

import numba.experimental.function_type  # noqa: F401 - types Job objects as functions
import numpy as np
from numba import from_dtype, types

__all__ = ["Job", "array", "INT", "INTS"]

INT = types.int64
INTS = types.Array(types.int64, 1, "C")  # the taps' channels and offsets


def array(dtype, ndim: int, layout: str = "C") -> types.Array:
    """Numba's type of an ``ndim``-dimensional array of ``dtype``."""
    return types.Array(from_dtype(np.dtype(dtype)), ndim, layout)


class Job(types.WrapperAddressProtocol):
    """A job function (a cached ``njit`` dispatcher) for the argument types ``argtypes``, as a
    parallel kernel's argument: the kernel calls it through :meth:`__wrapper_address__`, the
    address of its compiled code, compiled or loaded from the cache on first use."""

    def __init__(self, dispatcher, argtypes):
        self.dispatcher = dispatcher
        self._signature = types.none(*argtypes)
        self._numba_type_ = types.FunctionType(self._signature)  # Numba's quick typeof
        self._address = None

    def signature(self):
        return self._signature

    def compile(self) -> None:
        """Compile the job (or load it from the cache)."""
        self.dispatcher.compile(self._signature.args)

    def __wrapper_address__(self) -> int:
        if self._address is None:
            self.compile()  # by its argument types, the cache's key (a whole signature is another)
            result = self.dispatcher.overloads[self._signature.args]
            self._address = result.library.get_pointer_to_function(
                result.fndesc.llvm_cfunc_wrapper_name)
        return self._address
