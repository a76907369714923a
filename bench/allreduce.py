"""Time MPI's Allreduce of a float32 gradient buffer, as numbaconv's distributed training does
once per step, without the step around it (so without waiting for a slower rank).

    mpiexec -n 2 python bench/allreduce.py                 # LeNet's and ResNet-18's sizes
    mpiexec -n 2 python bench/allreduce.py 61706 1000000   # parameter counts of your own

For each size: the median over ``--repeats`` Allreduces, each started together (a barrier
before it), and the bus bandwidth of a ring allreduce, 2 (N - 1) / N x bytes / time, the number
docs/distributed.md's cost model takes.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from mpi4py import MPI

SIZES = {"LeNet": 61_706, "ResNet-18": 11_200_000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("params", nargs="*", type=int,
                        help="parameter counts (default: LeNet's and ResNet-18's)")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    size = comm.Get_size()
    sizes = {f"{n:,} params": n for n in args.params} or SIZES
    for name, count in sizes.items():
        buffer = np.ones(count + 1, dtype=np.float32)  # + the loss, as a step sends
        times = []
        for _ in range(args.repeats + 2):
            comm.Barrier()
            started = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
            times.append(time.perf_counter() - started)
        seconds = float(np.median(times[2:]))  # the first two warm up
        bus = 2 * (size - 1) / size * buffer.nbytes / seconds
        if comm.Get_rank() == 0:
            print(f"{name:>20}: {buffer.nbytes / 1e6:8.2f} MB  {seconds * 1e3:8.3f} ms  "
                  f"bus {bus / 1e9:6.2f} GB/s ({bus * 8 / 1e9:5.1f} Gbit/s) on {size} ranks")


if __name__ == "__main__":
    main()
