"""LeNet training and evaluation benchmarks, numbaconv beside PyTorch.

* ``step-*``: one training step at batch 256 (forward, softmax cross-entropy, backward,
  optimizer step) for D2L's default LeNet (sigmoid, average pooling, SGD lr 0.9) and a
  ReLU/max-pool/Adam variant;
* ``epoch-sigmoid-avg-sgd``: a training epoch on synthetic Fashion-MNIST-sized data
  (60000x1x28x28). Only a fraction is timed to keep the suite short: 1/10 of the epoch
  (6000 images, 24 batches), 1/30 with ``--bench-size quick``; the ratio is unaffected and
  the ``--ratio-report`` projects the full epoch;
* ``eval-lenet``: evaluation of 10000 synthetic test images in batches of 1024 (the report
  gives images/s);
* ``resnet18-{28,96}-step`` and ``-eval``: a ResNet-18 training step (batch 64, SGD lr 0.05)
  and the evaluation of a batch of 64, at 28x28 and 96x96, against D2L's PyTorch ResNet-18
  holding the same weights.

PyTorch runs D2L's ``nn.Sequential`` LeNet with the numbaconv model's initial parameters, with
``torch.optim.SGD``/``Adam`` and ``F.cross_entropy``.
"""

from __future__ import annotations

import pytest

from numbaconv.benchmarks import CASES

TRAINING_CASES = [case for case in CASES if case.kind in ("step", "epoch", "eval")]


@pytest.mark.training
@pytest.mark.parametrize("case, side", [
    pytest.param(case, side, id=f"{case.name}-{side}",
                 marks=pytest.mark.benchmark(group=case.name))
    for case in TRAINING_CASES for side in ("numbaconv", "torch")
])
def test_training(run_case, case, side):
    run_case(case, side)
