"""Per-operation benchmarks: LeNet's layers at batch 256, a 64->64 3x3 convolution, and
ResNet-18's distinct convolutions (28x28 and 96x96) and BatchNorms (96x96) at batch 64.

Each case from :mod:`numbaconv.benchmarks` is a benchmark group holding a numbaconv test and a
PyTorch test on the same inputs. Forward cases time PyTorch under ``inference_mode``; backward
cases time its backward alone (``torch.autograd.grad`` on a retained graph) against numbaconv's
``*_backward`` function; ``conv64-fwdbwd`` and the BatchNorm cases time both passes on both
sides.
"""

from __future__ import annotations

import pytest

from numbaconv.benchmarks import CASES

OP_CASES = [case for case in CASES if case.kind == "op"]


@pytest.mark.op
@pytest.mark.parametrize("case, side", [
    pytest.param(case, side, id=f"{case.name}-{side}",
                 marks=pytest.mark.benchmark(group=case.name))
    for case in OP_CASES for side in ("numbaconv", "torch")
])
def test_op(run_case, case, side):
    run_case(case, side)
