"""The source text's lessons as computations: pure functions that return data.

``numbaconv demo ...``, ``numbaconv shape`` and ``numbaconv show`` print and draw what these
return (see :mod:`numbaconv.cli.demos` and :mod:`numbaconv.lessons.plotting`); nothing here
prints, draws or touches files.

* :func:`corr2d_example` -- section 2: the 3x3 input, the 2x2 kernel, ``[[19, 25], [37, 43]]``,
  and the true convolution of the same pair.
* :data:`NAMED_KERNELS` and :func:`apply_kernels` -- section 2.1: hand-designed kernels.
* :func:`learn_edge_kernel` -- section 2.2: a ``Conv2d`` learns the kernel ``[1, -1]``.
* :func:`conv_output_shape` -- sections 3.1 and 3.2: the output-size formulas, with numbers.
* :func:`feature_maps` and :func:`first_layer_kernels` -- section 2.3: what a trained
  network's layers see.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import functional as F
from .. import shapes

__all__ = [
    "NAMED_KERNELS",
    "Corr2dExample",
    "EdgeLearning",
    "AxisShape",
    "ShapeResult",
    "LayerMaps",
    "corr2d_example",
    "edge_image",
    "edge_target",
    "learn_edge_kernel",
    "apply_kernels",
    "conv_output_shape",
    "feature_maps",
    "first_layer_kernels",
    "is_map_layer",
]


# --------------------------------------------------------------------------- section 2

@dataclass(frozen=True)
class Corr2dExample:
    """The text's example pair and both ways of sliding one over the other."""

    X: np.ndarray          # (3, 3) input, arange(9)
    K: np.ndarray          # (2, 2) kernel, arange(4)
    correlation: np.ndarray  # corr2d(X, K): what a convolutional layer computes
    convolution: np.ndarray  # convolve2d(X, K): the true convolution, K flipped both ways


def corr2d_example() -> Corr2dExample:
    """Section 2: ``corr2d(arange(9).reshape(3, 3), arange(4).reshape(2, 2))``."""
    X = np.arange(9, dtype=np.float32).reshape(3, 3)
    K = np.arange(4, dtype=np.float32).reshape(2, 2)
    return Corr2dExample(X, K, F.corr2d(X, K), F.convolve2d(X, K))


# --------------------------------------------------------------------------- section 2.1

def _kernel(rows, scale=1.0) -> np.ndarray:
    kernel = np.array(rows, dtype=np.float32) * np.float32(scale)
    kernel.setflags(write=False)
    return kernel


#: Hand-designed 3x3 kernels (section 2.1), by name. The two edge detectors are Sobel
#: kernels: "horizontal edge" responds to a change from one row to the next (bright above
#: dark is positive), "vertical edge" to a change from one column to the next (bright left of
#: dark is positive). Kernels that sum to 0 (the edge detectors, the Laplacian) answer 0 on a
#: flat region; the blurs sum to 1 and keep the brightness, and so does sharpen.
NAMED_KERNELS: dict[str, np.ndarray] = {
    "horizontal edge": _kernel([[1, 2, 1], [0, 0, 0], [-1, -2, -1]]),
    "vertical edge": _kernel([[1, 0, -1], [2, 0, -2], [1, 0, -1]]),
    "Laplacian": _kernel([[0, 1, 0], [1, -4, 1], [0, 1, 0]]),
    "box blur": _kernel(np.ones((3, 3)), 1 / 9),
    "Gaussian blur": _kernel([[1, 2, 1], [2, 4, 2], [1, 2, 1]], 1 / 16),
    "sharpen": _kernel([[0, -1, 0], [-1, 5, -1], [0, -1, 0]]),
}


def apply_kernels(image: np.ndarray, kernels: dict[str, np.ndarray] | None = None
                  ) -> dict[str, np.ndarray]:
    """Each kernel's response to ``image`` (H, W): ``conv2d`` with ``padding='same'``.

    Returns ``{name: float32 (H, W)}`` in the order of ``kernels`` (default
    :data:`NAMED_KERNELS`). Outside the image counts as 0, as in a padded convolution layer.
    """
    kernels = NAMED_KERNELS if kernels is None else kernels
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D (height, width), got shape {image.shape}")
    x = np.ascontiguousarray(image, dtype=np.float32)[None, None]
    responses = {}
    for name, kernel in kernels.items():
        kernel = np.asarray(kernel, dtype=np.float32)
        if kernel.ndim != 2:
            raise ValueError(f"kernel {name!r} must be 2-D, got shape {kernel.shape}")
        responses[name] = F.conv2d(x, np.ascontiguousarray(kernel)[None, None],
                                   padding="same")[0, 0]
    return responses


# --------------------------------------------------------------------------- section 2.2

def edge_image() -> np.ndarray:
    """The text's 6x8 image: white (1) with a black (0) band in columns 2..5, float32."""
    X = np.ones((6, 8), dtype=np.float32)
    X[:, 2:6] = 0
    return X


def edge_target() -> np.ndarray:
    """The edges of :func:`edge_image`: ``corr2d(X, [[1, -1]])``, 6x7, +1 white-to-black
    (column 1) and -1 black-to-white (column 5)."""
    return F.corr2d(edge_image(), np.array([[1.0, -1.0]], dtype=np.float32))


@dataclass
class EdgeLearning:
    """What :func:`learn_edge_kernel` did: inputs, losses per step and the kernels."""

    X: np.ndarray              # (6, 8)
    Y: np.ndarray              # (6, 7) target
    lr: float
    initial_kernel: np.ndarray  # (1, 2)
    kernel: np.ndarray          # (1, 2), after the last step
    losses: list[float] = field(default_factory=list)  # summed squared loss before each step

    def report_lines(self) -> list[str]:
        """D2L's lines: ``epoch {i+1}, loss {l:.3f}`` every second step."""
        return [f"epoch {i + 1}, loss {loss:.3f}" for i, loss in enumerate(self.losses)
                if (i + 1) % 2 == 0]


def learn_edge_kernel(seed: int = 0, steps: int = 10, lr: float = 3e-2) -> EdgeLearning:
    """Section 2.2 on numbaconv's own layer: learn the kernel that made :func:`edge_target`.

    ``Conv2d(1, 1, kernel_size=(1, 2), bias=False)`` initialised from ``seed``; per step
    ``l = (Y_hat - Y) ** 2`` summed, its gradient ``2 (Y_hat - Y)`` through the layer's
    backward, then ``weight -= lr * grad``. All float32, as in the text.
    """
    from ..layers import Conv2d

    conv = Conv2d(1, 1, kernel_size=(1, 2), bias=False, rng=seed)
    X = edge_image()
    Y = edge_target()
    x, y = X.reshape(1, 1, 6, 8), Y.reshape(1, 1, 6, 7)
    weight = conv.params["weight"]
    result = EdgeLearning(X=X, Y=Y, lr=lr, initial_kernel=weight.reshape(1, 2).copy(),
                          kernel=weight.reshape(1, 2).copy())
    step = np.float32(lr)
    for _ in range(steps):
        y_hat = conv.forward(x)
        diff = y_hat - y
        result.losses.append(float((diff ** 2).sum()))
        conv.backward(2 * diff, need_input_grad=False)
        weight -= step * conv.grads["weight"]
    result.kernel = weight.reshape(1, 2).copy()
    return result


# --------------------------------------------------------------------------- sections 3.1, 3.2

@dataclass(frozen=True)
class AxisShape:
    """One axis of :func:`conv_output_shape`: the text's formula with the numbers in it."""

    axis: str            # "h" or "w"
    n: int
    k: int               # kernel size as given
    k_eff: int           # d*(k-1)+1, the span of a dilated kernel
    p: int               # padding per side
    s: int
    d: int
    size: int
    formula: str         # e.g. "floor((n_h - k_h + p_h + s_h) / s_h)"
    numbers: str         # e.g. "floor((8 - 3 + 2 + 2) / 2)"
    note: str = ""       # ceil mode: why the last window was dropped


@dataclass(frozen=True)
class ShapeResult:
    height: AxisShape
    width: AxisShape
    pool: bool
    ceil_mode: bool

    @property
    def size(self) -> tuple[int, int]:
        return (self.height.size, self.width.size)


def _axis_shape(axis: str, n: int, k: int, p: int, s: int, d: int, ceil_mode: bool) -> AxisShape:
    k_eff = d * (k - 1) + 1
    p_total = 2 * p
    rounding = "ceil" if ceil_mode else "floor"
    top = n - k_eff + p_total + s
    size = -(-top // s) if ceil_mode else top // s
    note = ""
    if ceil_mode and size > 0 and (size - 1) * s >= n + p:
        note = (f"the last window would start at {(size - 1) * s} of the padded input, in "
                f"the trailing padding (the input ends at {p} + {n} = {p + n}), so it is "
                f"dropped, as in PyTorch")
        size -= 1
    formula = f"{rounding}((n_{axis} - k_{axis} + p_{axis} + s_{axis}) / s_{axis})"
    numbers = f"{rounding}(({n} - {k_eff} + {p_total} + {s}) / {s})"
    return AxisShape(axis, n, k, k_eff, p, s, d, max(size, 0), formula, numbers, note)


def conv_output_shape(input_size, kernel_size, padding=0, stride=None, dilation=1,
                      pool: bool = False, ceil_mode: bool = False) -> ShapeResult:
    """Output height and width by the text's formula ``floor((n - k + p + s) / s)``.

    ``p`` is the total padding of an axis (``padding`` is per side, as in ``Conv2d``); a
    dilated kernel spans ``k = d*(k-1)+1``. Each argument is an int or an ``(h, w)`` pair.
    ``stride`` defaults to 1, or to the window for a pooling (``pool=True``), as in PyTorch.
    ``ceil_mode`` (pooling only) rounds up, but drops a last window that would start in the
    trailing padding, as PyTorch does. Agrees with :func:`numbaconv.shapes.output_size`.
    Raises ``ValueError`` when the window does not fit the padded input.
    """
    if ceil_mode and not pool:
        raise ValueError("ceil_mode is a pooling option; add pool=True (--pool)")
    n = shapes.as_pair(input_size, "input size", 1)
    k = shapes.as_pair(kernel_size, "kernel size", 1)
    p = shapes.as_pair(padding, "padding", 0)
    s = (k if pool else (1, 1)) if stride is None else shapes.as_pair(stride, "stride", 1)
    d = shapes.as_pair(dilation, "dilation", 1)
    if pool:
        for axis in range(2):
            if 2 * p[axis] > k[axis]:
                raise ValueError(f"a pooling's padding must be at most half its window: "
                                 f"padding {p[axis]} with a window of {k[axis]}")
    axes = [_axis_shape(name, n[i], k[i], p[i], s[i], d[i], ceil_mode)
            for i, name in enumerate("hw")]
    for a in axes:
        if a.size < 1:
            raise ValueError(f"the window spans {a.k_eff} but the padded input is only "
                             f"{a.n} + {2 * a.p} = {a.n + 2 * a.p} along {a.axis}: "
                             f"{a.numbers} = 0 outputs")
    return ShapeResult(axes[0], axes[1], pool, ceil_mode)


# --------------------------------------------------------------------------- section 2.3

@dataclass(frozen=True)
class LayerMaps:
    """The output of one layer for one image: ``maps`` is (C, H, W)."""

    index: int
    name: str     # the layer's type name
    layer: str    # its repr
    maps: np.ndarray


def is_map_layer(layer) -> bool:
    """Convolutions and poolings (built-in or a plugin's ``...Pool2d``): layers whose output
    is a stack of feature maps worth drawing."""
    from ..layers import AvgPool2d, Conv2d, MaxPool2d

    return isinstance(layer, (Conv2d, MaxPool2d, AvgPool2d)) \
        or type(layer).__name__.endswith("Pool2d")


def feature_maps(model, image: np.ndarray):
    """Run ``image`` (C, H, W) through ``model`` layer by layer.

    Returns ``(maps, output)``: a :class:`LayerMaps` for every convolution and pooling layer
    (see :func:`is_map_layer`) and the network's final output for the image, shape (1, ...).
    The model's layers must accept ``(1, C, H, W)``; a mismatch raises the model's
    ``ShapeError`` (a ``ValueError``) before anything is computed.
    """
    x = np.ascontiguousarray(image, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {x.shape}")
    x = x[None]
    model.output_shape(x.shape)
    maps = []
    for index, layer in enumerate(model):
        x = layer.forward(x)
        if is_map_layer(layer) and x.ndim == 4:
            maps.append(LayerMaps(index, type(layer).__name__, repr(layer), x[0].copy()))
    return maps, x


def first_layer_kernels(model) -> tuple[int, np.ndarray]:
    """``(index, weight)`` of the first convolution in ``model``: weight (C_out, C_in, kh, kw)."""
    from ..layers import Conv2d

    for index, layer in enumerate(model):
        if isinstance(layer, Conv2d):
            return index, layer.params["weight"].copy()
    raise ValueError("the model has no Conv2d layer, so it has no kernels to show")
