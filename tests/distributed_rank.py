"""One rank of a test of numbaconv on MPI: ``numbaconv`` itself, made to fail on one rank.

``python distributed_rank.py RANK STEP raise|kill|exit -- run lenet ...`` runs
``numbaconv run lenet ...`` as ``numbaconv`` does; on rank ``RANK`` (``PMI_RANK``), the
``STEP``-th training step (counted from 1 over the whole run) raises a ``RuntimeError``, is
killed with SIGKILL, or leaves with ``sys.exit(3)`` just before its gradients travel. Every other
rank runs the command unchanged. (tests/test_distributed.py starts it under ``mpiexec``.)
"""

from __future__ import annotations

import os
import signal
import sys


def main(argv: list[str]) -> None:
    rank, step, how = int(argv[0]), int(argv[1]), argv[2]
    command = argv[argv.index("--") + 1:]
    if int(os.environ.get("PMI_RANK", "0")) == rank:
        from numbaconv.training.distributed import Distributed

        allreduce = Distributed._allreduce
        steps = []

        def failing_allreduce(self, arrays):
            steps.append(1)
            if len(steps) == step:
                if how == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                if how == "exit":
                    sys.exit(3)
                raise RuntimeError(f"made to fail at step {step}")
            allreduce(self, arrays)

        Distributed._allreduce = failing_allreduce
    sys.argv = ["numbaconv", *command]
    from numbaconv.cli import main as numbaconv_main

    numbaconv_main()


if __name__ == "__main__":
    main(sys.argv[1:])
