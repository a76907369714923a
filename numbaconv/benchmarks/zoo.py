"""ResNet-18 cases: its convolutions and BatchNorms one by one, a training step, evaluation;
and a training step of each other network of D2L's chapters 7-8 (:data:`ZOO_STEPS`).

The shapes come from the model itself (``numbaconv.build_model("resnet18")``, D2L's
architecture, 1-channel images) at batch :data:`BATCH` and the input sides :data:`SIDES`:
every convolution once per distinct shape (:func:`resnet18_convs`), every BatchNorm2d's input
at 96x96 (:func:`resnet18_batch_norms`). The PyTorch side of the step and evaluation is D2L's
PyTorch ResNet-18 (:func:`numbaconv.benchmarks.twins.torch_resnet18`) holding the numbaconv
model's weights and buffers.

``tiny`` keeps the kinds of work and shrinks the sizes for the test-suite: convolutions and
BatchNorms at batch 2 with a sixteenth of the channels (and BatchNorm maps of at most 8x8);
the step and evaluation at batch 2 on 40x40 images, where every BatchNorm of a training batch
still normalises 8 values per channel (fewer turn float32 rounding into large differences).
"""

from __future__ import annotations

import functools
import re
import types

import numpy as np

from .cases import (
    DTYPE,
    Case,
    Prepared,
    _data,
    _t,
    conv_case,
    conv_flops,
    laid_out,
    layout_text,
    numbaconv_step,
    passes,
    torch_step,
)
from .targets import BATCH_NORM, CONV3X3_PEAK, RESNET_EVAL, RESNET_STEP
from .twins import TWINS, torch_resnet18

__all__ = ["BATCH", "SIDES", "LR", "ZOO_STEPS", "WITH_DROPOUT", "resnet18_convs",
           "resnet18_batch_norms", "network_layouts", "resnet_name", "googlenet_name",
           "densenet_name", "twin_name", "load_twin", "resnet_cases", "zoo_step_cases"]

BATCH = 64
SIDES = (28, 96)
LR = 0.05          # D2L's ResNet-18 recipe: SGD without momentum
TINY_BATCH, TINY_SIDE = 2, 40
#: The other networks' training steps, at the smallest square image each takes (D2L's 224 and
#: 96 do not fit this machine's runs; docs/results.md trains them at these sizes), in D2L's
#: batch size with SGD at D2L's learning rate (each model's ``train_defaults``)
ZOO_STEPS = {"alexnet": 65, "vgg11": 32, "nin": 67, "googlenet": 28, "densenet": 29}
#: Their batch at the test-suite's size: DenseNet's last BatchNorms see 1x1 maps, and with
#: 2 values per channel after a step the sides' float32 roundings part by percents
ZOO_TINY_BATCH = 8
#: Those with dropout: there each side draws its own masks, so the two steps do not compute
#: the same numbers (their cost is the same)
WITH_DROPOUT = frozenset({"alexnet", "vgg11", "nin"})


@functools.cache
def _architecture():
    """ResNet-18's layer tree, to read its shapes from (built once: 11 million weights)."""
    from ..models import resnet18

    return resnet18(rng=0)


def _layer_inputs(layer, shape, kinds, found):
    """Append ``(layer, input shape)`` for every layer of ``kinds`` under ``layer`` (in the
    order the forward runs them); return ``layer``'s output shape."""
    from ..layers import Sequential
    from ..layers.containers import summary

    if isinstance(layer, kinds):
        found.append((layer, shape))
    children = layer.children()
    if isinstance(layer, Sequential):
        for _, child in children:
            shape = _layer_inputs(child, shape, kinds, found)
        return shape
    for _, child in children:  # Residual: body and shortcut both read the input
        _layer_inputs(child, shape, kinds, found)
    return summary(layer, shape)[0].output_shape


def resnet18_convs(side: int, batch: int = BATCH) -> list[tuple]:
    """ResNet-18's distinct convolutions at ``side`` x ``side``, in the order of the forward:
    ``(x shape, weight shape, stride, padding, need_input_grad, count)`` with ``count`` the
    convolutions of that shape. The first layer needs no input gradient."""
    from ..layers import Conv2d

    found = []
    _layer_inputs(_architecture(), (batch, 1, side, side), Conv2d, found)
    shapes: dict[tuple, int] = {}
    for i, (conv, x_shape) in enumerate(found):
        (ph, pw), (sh, sw) = conv.padding, conv.stride  # ResNet-18's are square: one number
        key = (tuple(x_shape), (conv.out_channels, conv.in_channels, *conv.kernel_size),
               sh if sh == sw else conv.stride, ph if ph == pw else conv.padding, i > 0)
        shapes[key] = shapes.get(key, 0) + 1
    return [key + (count,) for key, count in shapes.items()]


def resnet18_batch_norms(side: int = 96, batch: int = BATCH) -> list[tuple]:
    """The distinct input shapes of ResNet-18's BatchNorm2d layers at ``side`` x ``side``."""
    from ..layers import BatchNorm2d

    found = []
    _layer_inputs(_architecture(), (batch, 1, side, side), BatchNorm2d, found)
    return list(dict.fromkeys(tuple(shape) for _, shape in found))


@functools.cache
def network_layouts(side: int, batch: int = BATCH) -> types.MappingProxyType:
    """How numbaconv's ResNet-18 lays out what its convolutions and batch norms get (see
    :mod:`numbaconv.kernels.cpu.layout`): ``{(input shape, weight shape or None, stride):
    (x pixel-major, grad_y pixel-major)}``, by the layers of that shape (most of them where
    they differ: the first 3x3 convolution after the max pool gets NCHW, the three others of
    its shape pixel-major), recorded in one training step of the network itself on random
    images at ``batch`` x ``side`` x ``side``."""
    from .. import functional as F
    from ..kernels.cpu.layout import is_pixel_major
    from ..layers import BatchNorm2d, Conv2d
    from ..models import resnet18

    model = resnet18(rng=0)
    seen: dict[tuple, list] = {}  # shape -> (forward or not, pixel-major) per call
    found = []
    _layer_inputs(model, (batch, 1, side, side), (Conv2d, BatchNorm2d), found)
    for layer, shape in found:
        conv = isinstance(layer, Conv2d)
        calls = seen.setdefault((tuple(shape), tuple(layer.params["weight"].shape)
                                 if conv else None, layer.stride[0] if conv else None), [])
        for name in ("forward", "forward_relu", "backward"):
            method = getattr(layer, name, None)
            if method is None:
                continue

            def traced(array, *args, _method=method, _calls=calls,
                       _forward=name != "backward", **kwargs):
                _calls.append((_forward, is_pixel_major(array)))
                return _method(array, *args, **kwargs)

            setattr(layer, name, traced)
    rng = np.random.default_rng(6)
    images = rng.random((batch, 1, side, side), dtype=DTYPE)
    labels = rng.integers(0, 10, size=batch)
    logits = model.forward(images, training=True)
    model.backward(F.cross_entropy_backward(logits, labels))
    for layer, _ in found:  # the class's methods again: no wrapper keeps a layer alive
        for name in ("forward", "forward_relu", "backward"):
            layer.__dict__.pop(name, None)
    layouts = {}
    for key, calls in seen.items():
        forward = [pm for is_forward, pm in calls if is_forward]
        backward = [pm for is_forward, pm in calls if not is_forward]
        layouts[key] = (2 * sum(forward) > len(forward), 2 * sum(backward) > len(backward))
    return types.MappingProxyType(layouts)  # cached: read-only for every caller


def _tiny_channels(c: int) -> int:
    return max(1, c // 16)


# ------------------------------------------------------------------------------ convolutions

def _conv_name(side, w_shape, stride, mode):
    c_out, c_in, kh, kw = w_shape
    return f"resnet18-{side}-conv-{c_in}to{c_out}-{kh}x{kw}s{stride}-{mode}"


def _resnet_conv_build(side, x_shape, w_shape, stride, pad, need_x, mode):
    """A convolution case with x and grad_y laid out as the network lays them out
    (:func:`network_layouts`; at the test-suite's size, batch 2, it lays out none
    pixel-major)."""
    def build(size, torch):
        if size == "tiny":
            n, c_in, h, w = x_shape
            tiny_x = (TINY_BATCH, _tiny_channels(c_in), h, w)
            tiny_w = (_tiny_channels(w_shape[0]), _tiny_channels(w_shape[1]), *w_shape[2:])
            return conv_case(tiny_x, tiny_w, stride, pad, need_x, mode, torch)
        return conv_case(x_shape, w_shape, stride, pad, need_x, mode, torch,
                         network_layouts(side)[x_shape, w_shape, stride])

    return build


# ------------------------------------------------------------------------------ BatchNorm

def _batch_norm_build(shape):
    def build(size, torch):
        from .. import functional as F

        if size == "tiny":
            x_shape = (TINY_BATCH, _tiny_channels(shape[1]), min(shape[2], 8), min(shape[3], 8))
        else:
            x_shape = shape
        channels = x_shape[1]
        rng = np.random.default_rng(4)
        x = _data(rng, x_shape)
        weight = (1 + _data(rng, (channels,), 0.1)).astype(DTYPE)
        bias = _data(rng, (channels,), 0.1)
        gy = _data(rng, x_shape)
        mean, var = np.zeros(channels, DTYPE), np.ones(channels, DTYPE)
        layouts = (False, False) if size == "tiny" else network_layouts(96)[shape, None, None]
        nx, ngy = (laid_out(a, pixel_major) for a, pixel_major in zip((x, gy), layouts))

        def nc():  # what BatchNorm2d's forward and backward in training compute
            y, save_mean, save_invstd = F.batch_norm(nx, mean, var, weight, bias, training=True)
            return (y,) + tuple(F.batch_norm_backward(ngy, nx, save_mean, save_invstd, weight))

        prepared = Prepared(nc, None, items=x_shape[0],
                            detail=f"x {x_shape}{layout_text(layouts)}")
        if torch is None:
            return prepared
        tF = torch.nn.functional
        tx, tw, tb = (_t(torch, a, requires_grad=True) for a in (x, weight, bias))
        tmean, tvar, tgy = _t(torch, mean), _t(torch, var), _t(torch, gy)

        def tc():
            y = tF.batch_norm(tx, tmean, tvar, tw, tb, training=True)
            grads = torch.autograd.grad(y, (tx, tw, tb), grad_outputs=tgy)
            return (y.detach(),) + tuple(grads)

        prepared.torch = tc
        return prepared

    return build


# ------------------------------------------------------------------------------ the network

def resnet_name(path: str) -> str:
    """numbaconv's ResNet-18 parameter path -> the twin's (D2L's Residual: conv1, bn1, conv2,
    bn2, conv3)."""
    match = re.fullmatch(r"([1-4])\.(\d)\.0\.body\.([0134])\.(\w+)", path)
    if match:
        stage, block, layer, param = match.groups()
        part = {"0": "conv1", "1": "bn1", "3": "conv2", "4": "bn2"}[layer]
        return f"{stage}.{block}.{part}.{param}"
    return re.sub(r"^([1-4])\.(\d)\.0\.shortcut\.", r"\1.\2.conv3.", path)


INCEPTION_BRANCHES = {("0", "0"): "p1_1", ("1", "0"): "p2_1", ("1", "2"): "p2_2",
                      ("2", "0"): "p3_1", ("2", "2"): "p3_2", ("3", "1"): "p4_2"}


def googlenet_name(path: str) -> str:
    """numbaconv's GoogLeNet path -> the twin's (Inception's p1_1 ... p4_2)."""
    match = re.fullmatch(r"([234])\.(\d)\.(\d)\.(\d)\.(\w+)", path)
    if not match:
        return path
    stage, block, branch, layer, param = match.groups()
    return f"{stage}.{block}.{INCEPTION_BRANCHES[branch, layer]}.{param}"


def densenet_name(path: str) -> str:
    """numbaconv's DenseNet path -> the twin's: dense block ``k``'s ``Concat(Identity(),
    conv_block)`` number ``i`` is D2L's ``k.net.i``."""
    return re.sub(r"^([1357])\.(\d)\.1\.", r"\1.net.\2.", path)


def twin_name(name: str):
    """The path map from zoo model ``name``'s parameters to its twin's (the same path where
    the layer trees agree)."""
    return {"resnet18": resnet_name, "googlenet": googlenet_name,
            "densenet": densenet_name}.get(name, lambda path: path)


def load_twin(torch, model, twin, torch_name=resnet_name):
    """Copy ``model``'s parameters and buffers into ``twin`` by ``torch_name``: every tensor
    of the twin gets one."""
    state = {torch_name(k): torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()}
    twin.load_state_dict(state, strict=True)


def _networks(torch):
    """A numbaconv ResNet-18 (seeded) and its PyTorch twin with the same weights."""
    from ..models import resnet18

    model = resnet18(rng=0)
    if torch is None:
        return model, None
    twin = torch_resnet18(torch)
    load_twin(torch, model, twin)
    return model, twin


def _images(size, side, seed):
    batch, side = (TINY_BATCH, TINY_SIDE) if size == "tiny" else (BATCH, side)
    rng = np.random.default_rng(seed)
    images = rng.random((batch, 1, side, side), dtype=DTYPE)
    labels = rng.integers(0, 10, size=batch).astype(np.int64)
    return images, labels


def _conv_flops(side, size, mode) -> int:
    """The convolutions' FLOPs in one ``mode`` (``fwd`` or ``fwdbwd``) pass of ResNet-18 at
    the case's batch and side (the other layers' are not counted)."""
    batch, side = (TINY_BATCH, TINY_SIDE) if size == "tiny" else (BATCH, side)
    return sum(count * conv_flops(x, w, stride, pad) * passes(mode, need_x)
               for x, w, stride, pad, need_x, count in resnet18_convs(side, batch))


def _step_build(side):
    def build(size, torch):
        from ..training import make_optimizer

        x, y = _images(size, side, 5)
        model, twin = _networks(torch)
        nc = numbaconv_step(model, make_optimizer("sgd", model.named_params(), LR), x, y)
        prepared = Prepared(nc, None, items=x.shape[0],
                            detail=f"batch {x.shape[0]}, {x.shape[2]}x{x.shape[3]}, SGD lr {LR:g}",
                            flops=_conv_flops(side, size, "fwdbwd"))
        if torch is None:
            return prepared
        prepared.torch = torch_step(torch, twin, torch.optim.SGD(twin.parameters(), lr=LR), x,
                                    y)
        return prepared

    return build


def _eval_build(side):
    def build(size, torch):
        x, _ = _images(size, side, 6)
        model, twin = _networks(torch)

        def nc():
            return model.forward(x, training=False)

        prepared = Prepared(nc, None, items=x.shape[0],
                            detail=f"batch {x.shape[0]}, {x.shape[2]}x{x.shape[3]}",
                            flops=_conv_flops(side, size, "fwd"))
        if torch is None:
            return prepared
        tx = torch.from_numpy(x.copy())
        twin.eval()

        def tc():
            with torch.inference_mode():
                return twin(tx)

        prepared.torch = tc
        return prepared

    return build


def resnet_cases() -> list[Case]:
    """ResNet-18's cases, in the order the table lists them."""
    cases = []
    for side in SIDES:
        for x_shape, w_shape, stride, pad, need_x, count in resnet18_convs(side):
            kh, kw = w_shape[2:]
            target = CONV3X3_PEAK if (kh, kw) == (3, 3) else None
            grads = "input, weight and bias grads" if need_x else \
                "weight and bias grads; the first layer needs no input grad"
            what = (f"ResNet-18 at {side}x{side}: conv {w_shape[1]}->{w_shape[0]} {kh}x{kw} "
                    f"stride {stride} pad {pad} on {x_shape[2]}x{x_shape[3]}, batch "
                    f"{x_shape[0]} ({count} in the network)")
            for mode, word in (("fwd", "forward"), ("bwd", f"backward ({grads})")):
                cases.append(Case(_conv_name(side, w_shape, stride, mode), "op",
                                  f"{what}: {word}", target,
                                  _resnet_conv_build(side, x_shape, w_shape, stride, pad,
                                                     need_x, mode)))
    for shape in resnet18_batch_norms(96):
        n, c, h, w = shape
        cases.append(Case(f"resnet18-96-bn-{c}x{h}x{w}-fwdbwd", "op",
                          f"ResNet-18 at 96x96: BatchNorm2d in training on {shape}, forward "
                          "and backward (input, weight and bias grads)", BATCH_NORM,
                          _batch_norm_build(shape)))
    for side in SIDES:
        cases.append(Case(f"resnet18-{side}-step", "step",
                          f"ResNet-18 training step at {side}x{side}, batch {BATCH}, SGD lr "
                          f"{LR:g}, cross entropy", RESNET_STEP, _step_build(side)))
        cases.append(Case(f"resnet18-{side}-eval", "eval",
                          f"ResNet-18 evaluation of a batch of {BATCH} at {side}x{side} "
                          "(images/s)", RESNET_EVAL, _eval_build(side)))
    return cases


def _zoo_step_build(name):
    def build(size, torch):
        from ..registry import build_model, get_model
        from ..training import make_optimizer

        side, defaults = ZOO_STEPS[name], get_model(name).train_defaults
        lr = defaults["lr"]
        batch = ZOO_TINY_BATCH if size == "tiny" else defaults["batch_size"]
        rng = np.random.default_rng(7)
        x = rng.random((batch, 1, side, side), dtype=DTYPE)
        y = rng.integers(0, 10, size=batch).astype(np.int64)
        options = {"input_size": side} if name in ("alexnet", "vgg11") else {}
        model = build_model(name, rng=0, **options)
        nc = numbaconv_step(model, make_optimizer("sgd", model.named_params(), lr), x, y)
        prepared = Prepared(nc, None, items=batch,
                            detail=f"batch {batch}, {side}x{side}, SGD lr {lr:g}")
        if torch is None:
            return prepared
        twin = TWINS[name](torch, num_classes=10, in_channels=1, **options)
        load_twin(torch, model, twin, twin_name(name))
        prepared.torch = torch_step(torch, twin, torch.optim.SGD(twin.parameters(), lr=lr), x,
                                    y)
        return prepared

    return build


def zoo_step_cases() -> list[Case]:
    """A training step of each network of :data:`ZOO_STEPS`, the twin holding the same weights
    (no target: the issue's speed targets are ResNet-18's and LeNet's)."""
    return [Case(f"{name}-{side}-step", "step",
                 f"{name} training step at {side}x{side}, D2L's batch size, SGD at its learning "
                 "rate, cross entropy" + (" (each side draws its own dropout masks)"
                                          if name in WITH_DROPOUT else ""),
                 None, _zoo_step_build(name), same_numbers=name not in WITH_DROPOUT)
            for name, side in ZOO_STEPS.items()]
