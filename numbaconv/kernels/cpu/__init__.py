"""Numba CPU kernels. Private: call them through :mod:`numbaconv.functional`."""

import os

import numba

# numba's OpenMP layer spin-waits between parallel regions; on a busy machine (or beside
# OpenBLAS's own spinning threads) that made kernels 5-20x slower than on one thread. The
# workqueue layer has no such cliff. A user's NUMBA_THREADING_LAYER still wins.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"
