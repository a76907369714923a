"""What is measured: each case's numbaconv and PyTorch sides, built from the same numbers.

A :class:`Case` is a small object whose :meth:`Case.setup` builds the inputs once and returns a
:class:`Prepared` holding two zero-argument callables, one for numbaconv and one for PyTorch,
that compute the same thing from the same numbers (same shapes, float32, same weights), so
their times compare like with like. Each callable returns its result, which :func:`as_arrays`
turns into NumPy arrays for the parity checks in ``tests/test_bench_command.py``.

What the PyTorch side runs:

* forward-only cases: under ``torch.inference_mode()``;
* backward cases: the backward alone, as ``torch.autograd.grad`` on a graph built once in
  ``setup`` and kept with ``retain_graph=True``; the numbaconv side calls the matching
  ``*_backward`` function on saved inputs (and max pooling's saved indices);
* forward+backward cases: a fresh graph per call, then ``torch.autograd.grad``;
* training steps and epochs: D2L's ``nn.Sequential`` LeNet whose parameters are copied from the
  numbaconv model (the same Xavier-uniform weights and PyTorch-default biases, so the same
  init scheme and the same numbers), ``torch.optim.SGD``/``Adam`` with the same learning rate
  and ``F.cross_entropy``; an epoch visits the batches in the order numbaconv's
  :meth:`numbaconv.training.Loop.train_epoch` uses;
* evaluation: ``net.eval()`` under ``torch.inference_mode()`` in batches of
  :data:`numbaconv.training.EVAL_BATCH`, the arg-max compared with the labels, as
  :func:`numbaconv.training.evaluate` does;
* ResNet-18's convolutions, BatchNorms, step and evaluation, and the other networks' steps:
  :mod:`numbaconv.benchmarks.zoo` (where a network has dropout, each side draws its own masks:
  those cases say so, :attr:`Case.same_numbers`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .targets import CONV64, CONV64_FWDBWD, EPOCH, EVAL, LENET_LAYER, Target

__all__ = ["SIZES", "EPOCH_FRACTION", "Prepared", "Case", "CASES", "CASES_BY_NAME",
           "import_torch", "torch_lenet", "select", "as_arrays"]

#: ``full``: the documented shapes; ``quick``: the same shapes with a smaller epoch fraction;
#: ``tiny``: small shapes for the test-suite (seconds, mostly JIT compilation).
SIZES = ("full", "quick", "tiny")

DTYPE = np.float32
FASHION_MNIST_TRAIN = 60000
FASHION_MNIST_TEST = 10000
#: The fraction of an epoch timed per ``size``; times are per that fraction.
EPOCH_FRACTION = {"full": 1 / 10, "quick": 1 / 30, "tiny": None}


@dataclass
class Prepared:
    """One case, set up: call ``numbaconv()`` and ``torch()`` to run it once each.

    ``torch`` is ``None`` when PyTorch is not available (``torch_note`` says why). ``items`` is
    the number of images one call processes and ``scale`` the factor from one call's time to
    the quantity the case stands for (a whole epoch when only a fraction is timed). ``flops``
    is the floating-point operations of one call where the case counts them (convolutions;
    ResNet-18's step and evaluation count their convolutions'), else 0.
    """

    numbaconv: Callable[[], Any]
    torch: Callable[[], Any] | None
    torch_note: str | None = None
    items: int = 0
    scale: float = 1.0
    detail: str = ""
    flops: int = 0


@dataclass(frozen=True)
class Case:
    """A named benchmark: ``setup(size)`` returns a :class:`Prepared`."""

    name: str
    kind: str                      # "op", "step", "epoch" or "eval"
    description: str
    target: Target | None
    build: Callable[[str, Any], Prepared] = field(repr=False)
    same_numbers: bool = True      # whether both sides compute the same numbers (not where
                                   # each draws its own dropout masks)

    def setup(self, size: str = "full", torch: Any = "auto") -> Prepared:
        """Build inputs and both callables. ``torch``: the module, ``None`` for numbaconv
        alone, or ``"auto"`` to import it if installed."""
        if size not in SIZES:
            raise ValueError(f"size must be one of {SIZES}, got {size!r}")
        note = None
        if isinstance(torch, str) and torch == "auto":
            torch, note = import_torch()
        elif torch is None:
            note = "PyTorch not requested"
        prepared = self.build(size, torch)
        if torch is None:
            prepared.torch, prepared.torch_note = None, note
        return prepared


def import_torch():
    """``(torch, None)``, or ``(None, reason)`` when PyTorch cannot be imported."""
    try:
        import torch
    except ImportError as error:
        return None, f"PyTorch is not installed ({error}); pip install 'numbaconv[bench]'"
    return torch, None


def _data(rng: np.random.Generator, shape, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(DTYPE)


def _t(torch, array, requires_grad=False):
    tensor = torch.from_numpy(np.ascontiguousarray(array).copy())
    return tensor.requires_grad_(requires_grad)


# ------------------------------------------------------------------ operations

def _conv_shapes(spec: str, size: str):
    """(x shape, weight shape, padding, need_input_grad) of a named convolution."""
    if spec == "conv1":      # LeNet's first layer: 1->6 5x5 pad 2 on 28x28
        n = 4 if size == "tiny" else 256
        return (n, 1, 28, 28), (6, 1, 5, 5), 2, False
    if spec == "conv2":      # LeNet's second: 6->16 5x5 on 14x14
        n = 4 if size == "tiny" else 256
        return (n, 6, 14, 14), (16, 6, 5, 5), 0, True
    if spec == "conv64":     # a ResNet-like 64->64 3x3 pad 1 on 56x56
        if size == "tiny":
            return (2, 8, 10, 10), (8, 8, 3, 3), 1, True
        return (32, 64, 56, 56), (64, 64, 3, 3), 1, True
    raise ValueError(spec)


def conv_flops(x_shape, w_shape, stride, padding) -> int:
    """Floating-point operations of one forward convolution (2 per multiply-add of the
    formal convolution: ``N * C_out * OH * OW * C_in/groups * KH * KW * 2``)."""
    n, _, h, w = x_shape
    c_out, c_in, kh, kw = w_shape
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    return 2 * n * c_out * oh * ow * c_in * kh * kw


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def passes(mode: str, need_input_grad: bool) -> int:
    """A mode's work in forward passes: the backward computes the weight gradient (1 pass)
    and, where needed, the input gradient (1 more)."""
    backward = 2 if need_input_grad else 1
    return {"fwd": 1, "bwd": backward, "fwdbwd": 1 + backward}[mode]


def _conv_build(spec: str, mode: str):
    def build(size, torch):
        x_shape, w_shape, pad, need_x = _conv_shapes(spec, size)
        return conv_case(x_shape, w_shape, 1, pad, need_x, mode, torch)

    return build


def laid_out(array, pixel_major: bool):
    """The NCHW (N, C, H, W) ``array`` copied pixel-major (see
    :mod:`numbaconv.kernels.cpu.layout`) where ``pixel_major``, else itself."""
    from ..kernels.cpu import layout

    return layout.pixel_major(array) if pixel_major else array


def layout_text(layouts) -> str:
    """A case's detail on its numbaconv inputs' layouts, (x, grad_y) pixel-major or not."""
    names = [name for name, pixel_major in zip(("x", "grad_y"), layouts) if pixel_major]
    return f"; {' and '.join(names)} pixel-major, as the network gives them" if names else ""


def conv_case(x_shape, w_shape, stride, pad, need_x: bool, mode: str, torch,
              layouts=(False, False)) -> Prepared:
    """Both sides of one convolution's ``mode`` (``fwd``, ``bwd`` or ``fwdbwd``), with
    ``flops`` per call (see :func:`conv_flops` and :func:`passes`); numbaconv's x and grad_y
    pixel-major where ``layouts`` (x, grad_y) says so (PyTorch's always NCHW)."""
    from .. import functional as F

    rng = np.random.default_rng(0)
    fan_in = int(np.prod(w_shape[1:]))
    x = _data(rng, x_shape)
    w = _data(rng, w_shape, 1 / math.sqrt(fan_in))
    b = _data(rng, w_shape[:1], 0.1)
    y = F.conv2d(x, w, b, stride=stride, padding=pad)
    gy = _data(rng, y.shape)
    tx_data, tgy_data = x, gy  # PyTorch's, NCHW
    x, gy = laid_out(x, layouts[0]), laid_out(gy, layouts[1])
    items = x_shape[0]
    if mode == "fwd":
        def nc():
            return F.conv2d(x, w, b, stride=stride, padding=pad)
    elif mode == "bwd":
        def nc():
            return F.conv2d_backward(gy, x, w, stride=stride, padding=pad,
                                     need_input_grad=need_x)
    else:
        def nc():
            out = F.conv2d(x, w, b, stride=stride, padding=pad)
            return (out,) + tuple(F.conv2d_backward(gy, x, w, stride=stride, padding=pad,
                                                    need_input_grad=need_x))
    stride_text = f", stride {stride}" if stride != 1 else ""
    used = (layouts[0], layouts[1] and mode != "fwd")  # a forward takes no grad_y
    prepared = Prepared(nc, None, items=items,
                        detail=f"x {x_shape}, w {w_shape}{stride_text}, pad {pad}"
                               f"{layout_text(used)}",
                        flops=conv_flops(x_shape, w_shape, stride, pad)
                        * passes(mode, need_x))
    if torch is None:
        return prepared
    tF = torch.nn.functional
    tx, tw, tb, tgy = (_t(torch, a) for a in (tx_data, w, b, tgy_data))
    wrt = (tx, tw, tb) if need_x else (tw, tb)
    if mode == "fwd":
        def tc():
            with torch.inference_mode():
                return tF.conv2d(tx, tw, tb, stride=stride, padding=pad)
    elif mode == "bwd":
        for tensor in wrt:
            tensor.requires_grad_(True)
        ty = tF.conv2d(tx, tw, tb, stride=stride, padding=pad)

        def tc():
            return torch.autograd.grad(ty, wrt, grad_outputs=tgy, retain_graph=True)
    else:
        for tensor in wrt:
            tensor.requires_grad_(True)

        def tc():
            out = tF.conv2d(tx, tw, tb, stride=stride, padding=pad)
            grads = torch.autograd.grad(out, wrt, grad_outputs=tgy)
            return (out.detach(),) + tuple(grads)
    prepared.torch = tc
    return prepared


def _pool_shape(spec: str, size: str):
    n = 4 if size == "tiny" else 256
    return (n, 6, 28, 28) if spec == "1" else (n, 16, 10, 10)


def _pool_build(kind: str, spec: str, mode: str):
    def build(size, torch):
        from .. import functional as F

        shape = _pool_shape(spec, size)
        rng = np.random.default_rng(1)
        x = _data(rng, shape)
        y, indices = F.max_pool2d(x, 2, 2, return_indices=True)
        gy = _data(rng, y.shape)
        if kind == "max" and mode == "fwd":
            def nc():
                return F.max_pool2d(x, 2, 2)
        elif kind == "max":
            def nc():
                return F.max_pool2d_backward(gy, indices, x.shape)
        elif mode == "fwd":
            def nc():
                return F.avg_pool2d(x, 2, 2)
        else:
            def nc():
                return F.avg_pool2d_backward(gy, x.shape, 2, 2)
        prepared = Prepared(nc, None, items=shape[0], detail=f"x {shape}, 2x2 stride 2")
        if torch is None:
            return prepared
        pool = (torch.nn.functional.max_pool2d if kind == "max"
                else torch.nn.functional.avg_pool2d)
        tx, tgy = _t(torch, x), _t(torch, gy)
        if mode == "fwd":
            def tc():
                with torch.inference_mode():
                    return pool(tx, 2, 2)
        else:
            tx.requires_grad_(True)
            ty = pool(tx, 2, 2)

            def tc():
                return torch.autograd.grad(ty, (tx,), grad_outputs=tgy, retain_graph=True)
        prepared.torch = tc
        return prepared

    return build


# ------------------------------------------------------------------ LeNet

def torch_lenet(torch, activation: str = "sigmoid", pool: str = "avg", num_classes: int = 10):
    """D2L's LeNet as ``nn.Sequential`` (the layer indices match :func:`numbaconv lenet
    <numbaconv.models.lenet.lenet>`'s, so their ``state_dict`` keys agree)."""
    nn = torch.nn
    act = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}[activation]
    pool_layer = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}[pool]
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=2), act(), pool_layer(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), act(), pool_layer(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), act(),
        nn.Linear(120, 84), act(),
        nn.Linear(84, num_classes))


def _lenets(torch, activation, pool, seed=0):
    """A numbaconv LeNet (Xavier-uniform weights as D2L's ``init_cnn``) and PyTorch's copy."""
    from ..models.lenet import lenet

    model = lenet(activation, pool, rng=seed)
    if torch is None:
        return model, None
    net = torch_lenet(torch, activation, pool)
    state = {name: torch.from_numpy(p.copy()) for name, p in model.named_params().items()}
    net.load_state_dict(state, strict=True)
    return model, net


def numbaconv_step(model, optimizer, x, y):
    """A numbaconv training step on the batch (x, y) as a zero-argument callable (the body of
    :meth:`numbaconv.training.Loop.train_epoch` without the metrics); returns the loss."""
    from .. import functional as F

    def step():
        logits = model.forward(x, training=True)
        loss, grad_logits = F.cross_entropy_with_grad(logits, y)
        model.backward(grad_logits, need_input_grad=False)
        optimizer.step(model.named_grads())
        return loss

    return step


def torch_step(torch, net, optimizer, x, y):
    """A PyTorch training step on the batch (x, y) as a zero-argument callable (D2L's loop
    body: zero the gradients, cross entropy, backward, the optimizer's step); returns the
    loss."""
    tx, ty = torch.from_numpy(x.copy()), torch.from_numpy(y.copy())
    net.train()

    def step():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(tx), ty)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def _torch_optimizer(torch, name: str, net, lr: float):
    if name == "sgd":
        return torch.optim.SGD(net.parameters(), lr=lr)
    return torch.optim.Adam(net.parameters(), lr=lr)


def _images(rng: np.random.Generator, n: int):
    """Synthetic Fashion-MNIST-shaped float32 images in [0, 1) and labels in 0..9."""
    images = rng.random((n, 1, 28, 28), dtype=DTYPE)
    labels = rng.integers(0, 10, size=n).astype(np.int64)
    return images, labels


def _step_build(activation: str, pool: str, optimizer: str, lr: float):
    def build(size, torch):
        from ..training import make_optimizer

        batch = 8 if size == "tiny" else 256
        x, y = _images(np.random.default_rng(2), batch)
        model, net = _lenets(torch, activation, pool)
        nc = numbaconv_step(model, make_optimizer(optimizer, model.named_params(), lr), x, y)
        prepared = Prepared(nc, None, items=batch,
                            detail=f"batch {batch}, {activation}/{pool}/{optimizer} lr {lr:g}")
        if torch is None:
            return prepared
        prepared.torch = torch_step(torch, net, _torch_optimizer(torch, optimizer, net, lr), x,
                                    y)
        return prepared

    return build


def _epoch_build(activation: str, pool: str, optimizer: str, lr: float):
    def build(size, torch):
        from types import SimpleNamespace

        from ..training import Loop, Settings, epoch_rng, make_optimizer

        fraction = EPOCH_FRACTION[size]
        n, batch = (48, 16) if fraction is None else (round(FASHION_MNIST_TRAIN * fraction), 256)
        images, labels = _images(np.random.default_rng(3), n)
        model, net = _lenets(torch, activation, pool)
        opt = make_optimizer(optimizer, model.named_params(), lr)
        settings = Settings(epochs=1, batch_size=batch, lr=lr, optimizer=optimizer, seed=0)
        data = SimpleNamespace(train_x=images, train_y=labels, test_x=images[:1],
                               test_y=labels[:1])
        loop = Loop(model, opt, data, settings)

        def nc():
            return loop.train_epoch(epoch=1)

        scale = FASHION_MNIST_TRAIN / n
        prepared = Prepared(nc, None, items=n, scale=scale,
                            detail=f"{n} of {FASHION_MNIST_TRAIN} images, batch {batch}")
        if torch is None:
            return prepared
        tF = torch.nn.functional
        tx, ty = torch.from_numpy(images.copy()), torch.from_numpy(labels.copy())
        topt = _torch_optimizer(torch, optimizer, net, lr)

        def tc():  # D2L's train_ch6 loop body, on the batches numbaconv visits
            net.train()
            order = torch.from_numpy(epoch_rng(settings.seed, 1, 0).permutation(n))
            total_loss, correct = 0.0, 0
            for start in range(0, n, batch):
                index = order[start:start + batch]
                xb, yb = tx[index], ty[index]
                topt.zero_grad()
                logits = net(xb)
                loss = tF.cross_entropy(logits, yb)
                loss.backward()
                topt.step()
                total_loss += loss.item() * len(index)
                correct += int((logits.argmax(dim=1) == yb).sum())
            return total_loss / n, correct / n

        prepared.torch = tc
        return prepared

    return build


def _eval_build(size, torch):
    from ..training import EVAL_BATCH, evaluate

    n = 64 if size == "tiny" else FASHION_MNIST_TEST
    images, labels = _images(np.random.default_rng(4), n)
    model, net = _lenets(torch, "sigmoid", "avg")

    def nc():
        return evaluate(model, images, labels)

    prepared = Prepared(nc, None, items=n, detail=f"{n} images, batches of {EVAL_BATCH}")
    if torch is None:
        return prepared
    tx, ty = torch.from_numpy(images.copy()), torch.from_numpy(labels.copy())
    net.eval()

    def tc():
        correct = 0
        with torch.inference_mode():
            for start in range(0, n, EVAL_BATCH):
                logits = net(tx[start:start + EVAL_BATCH])
                correct += int((logits.argmax(dim=1) == ty[start:start + EVAL_BATCH]).sum())
        return correct / n

    prepared.torch = tc
    return prepared


def _cases() -> list[Case]:
    cases = []
    for spec, what in (("conv1", "LeNet conv 1->6 5x5 pad 2, 28x28, batch 256"),
                       ("conv2", "LeNet conv 6->16 5x5, 14x14, batch 256")):
        cases.append(Case(f"lenet-{spec}-fwd", "op", f"{what}: forward", LENET_LAYER,
                          _conv_build(spec, "fwd")))
        note = " (weight and bias grads; the first layer needs no input grad)" \
            if spec == "conv1" else ""
        cases.append(Case(f"lenet-{spec}-bwd", "op", f"{what}: backward{note}", LENET_LAYER,
                          _conv_build(spec, "bwd")))
    for kind in ("max", "avg"):
        for spec, shape in (("1", "6x28x28"), ("2", "16x10x10")):
            for mode, word in (("fwd", "forward"), ("bwd", "backward")):
                cases.append(Case(f"lenet-{kind}pool{spec}-{mode}", "op",
                                  f"LeNet {kind} pool 2x2 on {shape}, batch 256: {word}",
                                  LENET_LAYER, _pool_build(kind, spec, mode)))
    what = "conv 64->64 3x3 pad 1, 56x56, batch 32"
    cases += [
        Case("conv64-fwd", "op", f"{what}: forward", CONV64, _conv_build("conv64", "fwd")),
        Case("conv64-bwd", "op", f"{what}: backward", CONV64, _conv_build("conv64", "bwd")),
        Case("conv64-fwdbwd", "op", f"{what}: forward+backward", CONV64_FWDBWD,
             _conv_build("conv64", "fwdbwd")),
        Case("step-sigmoid-avg-sgd", "step",
             "LeNet training step, D2L default: sigmoid, avg pool, SGD lr 0.9, batch 256",
             None, _step_build("sigmoid", "avg", "sgd", 0.9)),
        Case("step-relu-max-adam", "step",
             "LeNet training step: ReLU, max pool, Adam lr 0.001, batch 256",
             None, _step_build("relu", "max", "adam", 0.001)),
        Case("epoch-sigmoid-avg-sgd", "epoch",
             "LeNet training epoch (D2L default) on synthetic 60000x1x28x28 data; "
             "1/10 of it timed (1/30 with --quick)",
             EPOCH, _epoch_build("sigmoid", "avg", "sgd", 0.9)),
        Case("eval-lenet", "eval", "LeNet evaluation on 10000 synthetic test images",
             EVAL, _eval_build),
    ]
    from .zoo import resnet_cases, zoo_step_cases  # zoo builds on this module's helpers

    return cases + resnet_cases() + zoo_step_cases()


#: Every case, in the order the table lists them.
CASES: tuple[Case, ...] = tuple(_cases())
CASES_BY_NAME: dict[str, Case] = {case.name: case for case in CASES}


def select(patterns: Sequence[str] = ()) -> list[Case]:
    """The cases whose name contains any of ``patterns`` (all cases when there are none)."""
    if not patterns:
        return list(CASES)
    chosen = [c for c in CASES if any(p in c.name for p in patterns)]
    if not chosen:
        raise ValueError(f"no case matches {', '.join(map(repr, patterns))}; cases are "
                         f"{', '.join(c.name for c in CASES)}")
    return chosen


def as_arrays(result) -> list[np.ndarray]:
    """A case's return value as a flat list of float64 NumPy arrays (``None`` entries dropped;
    tensors detached and converted)."""
    if result is None:
        return []
    if isinstance(result, (tuple, list)):
        return [a for item in result for a in as_arrays(item)]
    if hasattr(result, "detach"):
        result = result.detach().numpy()
    return [np.asarray(result, dtype=np.float64)]
