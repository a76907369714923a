"""Pictures: training curves, kernels and feature maps as PNG files (needs matplotlib).

matplotlib is the optional extra ``numbaconv[plot]``; every function here raises
:class:`PlotError` (a ``ValueError``, so the CLI prints one ``Error: ...`` line) when it is
missing. Figures are drawn off-screen with the Agg canvas, without pyplot and without
changing matplotlib's global backend, and each PNG is written atomically: a reader never sees
a half-written file, and a failed drawing leaves the previous file in place.

Figure sizes are fixed by the layout (never cropped to content), so the pixel size of every
picture is known in advance; each function returns a :class:`Picture` with it.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = [
    "PlotError",
    "Picture",
    "DPI",
    "MISSING_MESSAGE",
    "require_matplotlib",
    "grid_shape",
    "plot_curves",
    "plot_kernels_grid",
    "plot_feature_maps",
    "plot_first_layer_kernels",
]

MISSING_MESSAGE = "matplotlib is not installed: pip install 'numbaconv[plot]'"

#: Dots per inch of every PNG.
DPI = 100
#: Size in inches of the training-curves figure.
CURVES_SIZE = (7.0, 4.5)
#: Size in inches of one panel (image, title, labels) in the kernel and feature-map grids.
KERNELS_PANEL = (2.8, 3.3)
MAPS_PANEL = (1.9, 2.2)
WEIGHTS_PANEL = (1.9, 2.0)
#: Extra height in inches for a grid's title, and extra width for a shared colour bar.
TITLE_HEIGHT = 0.7
COLORBAR_WIDTH = 0.9
#: Extra height in inches of a feature-map grid: a title of up to three lines and a legend.
MAPS_EXTRA_HEIGHT = 1.2

DIVERGING = "RdBu_r"   # signed values: blue negative, white 0, red positive
SEQUENTIAL = "gray"    # images and non-negative values: black low, white high


class PlotError(ValueError):
    """matplotlib is missing, a picture cannot be drawn from the data, or cannot be written."""


class Picture(NamedTuple):
    """A written PNG and its size in pixels."""

    path: str
    width: int
    height: int


def require_matplotlib():
    """Return the ``matplotlib`` module, or raise :class:`PlotError` saying how to install it."""
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError:
        raise PlotError(MISSING_MESSAGE) from None
    return matplotlib


# --------------------------------------------------------------------------- helpers

def _pixels(size_in: tuple[float, float]) -> tuple[int, int]:
    return (int(round(size_in[0] * DPI)), int(round(size_in[1] * DPI)))


def _figure(size_in: tuple[float, float]):
    """A constrained-layout figure on its own Agg canvas (no pyplot, no global backend)."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width, height = _pixels(size_in)
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path) -> Picture:
    """Write ``fig`` to ``path`` as a PNG, atomically; make the parent directory if needed."""
    from ..atomic import atomic_file

    target = Path(path)
    width, height = _pixels(tuple(fig.get_size_inches()))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(target) as out:
            fig.savefig(out, format="png", dpi=DPI)
    except OSError as error:
        raise PlotError(f"cannot write {path}: {error.strerror or error}") from error
    return Picture(str(target), width, height)


def _title(fig, text: str, fontsize: float) -> None:
    """``fig``'s title, each line wrapped to the figure's width (never cut off at the edges)."""
    if not text:
        return
    width_pt = fig.get_size_inches()[0] * 72
    max_chars = max(20, int(width_pt / (0.6 * fontsize)))
    lines = [textwrap.fill(line, max_chars, break_on_hyphens=False)
             for line in str(text).splitlines()]
    fig.suptitle("\n".join(lines), fontsize=fontsize)


def grid_shape(count: int, max_cols: int) -> tuple[int, int]:
    """``(rows, cols)`` for ``count`` panels: about square, at most ``max_cols`` wide."""
    if count < 1:
        raise PlotError("nothing to draw: no panels")
    cols = min(count, max_cols, max(4, math.ceil(math.sqrt(count) * 1.3)))
    return math.ceil(count / cols), cols


def _grid_axes(fig, count: int, rows: int, cols: int):
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[count:]:
        ax.set_axis_off()
    return axes[:count]


def _plain_axes(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _signed(array: np.ndarray) -> bool:
    return bool(np.nanmin(array) < 0)


def _show(ax, array: np.ndarray, signed: bool | None = None, limit: float | None = None,
          span: tuple[float, float] | None = None):
    """Draw a 2-D array with nearest-neighbour pixels; signed values on a diverging map
    centred at 0 (from -``limit`` to ``limit``, default the largest magnitude), others in grey
    from ``span`` (default their minimum and maximum)."""
    array = np.asarray(array, dtype=np.float64)
    signed = _signed(array) if signed is None else signed
    if signed:
        bound = float(np.nanmax(np.abs(array))) if limit is None else limit
        bound = bound or 1.0
        image = ax.imshow(array, cmap=DIVERGING, vmin=-bound, vmax=bound,
                          interpolation="nearest")
    else:
        low, high = (float(np.nanmin(array)), float(np.nanmax(array))) if span is None \
            else span
        if high <= low:
            high = low + 1.0
        image = ax.imshow(array, cmap=SEQUENTIAL, vmin=low, vmax=high, interpolation="nearest")
    _plain_axes(ax)
    return image


def _kernel_text(kernel: np.ndarray) -> str:
    """A small matrix as aligned text rows; a common fraction goes on a last line, so the
    Gaussian blur reads ``1 2 1 / 2 4 2 / 1 2 1`` then ``x 1/16``."""
    kernel = np.asarray(kernel, dtype=np.float64)
    scale = ""
    for denominator in range(1, 65):
        scaled = kernel * denominator
        if np.allclose(scaled, np.round(scaled), atol=1e-4):
            kernel = np.round(scaled) + 0.0  # no "-0"
            scale = f"\u00d7 1/{denominator}" if denominator > 1 else ""
            break
    cells = [[f"{v:g}" if float(v).is_integer() else f"{v:.2f}" for v in row] for row in kernel]
    width = max(len(c) for row in cells for c in row)
    lines = [" ".join(c.rjust(width) for c in row) for row in cells]
    return "\n".join(lines + ([scale] if scale else []))


def _as_3d(array, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or min(array.shape) < 1:
        raise PlotError(f"{name} must be (C, H, W) or (H, W), got shape {array.shape}")
    return array


# --------------------------------------------------------------------------- training curves

CURVE_KEYS = ("epoch", "train_loss", "train_acc", "test_acc")


def plot_curves(history: Sequence[Mapping], path, title: str = "") -> Picture:
    """D2L's training plot: train loss, train accuracy and test accuracy per epoch.

    ``history`` holds one dict per epoch with the keys ``epoch``, ``train_loss``,
    ``train_acc`` and ``test_acc`` (what ``numbaconv run`` records). Written as a PNG of
    :data:`CURVES_SIZE` inches at :data:`DPI`, atomically, after every epoch.
    """
    require_matplotlib()
    if not history:
        raise PlotError("no epochs to plot: the history is empty")
    for i, entry in enumerate(history):
        missing = [k for k in CURVE_KEYS if k not in entry]
        if missing:
            raise PlotError(f"history entry {i} lacks {', '.join(missing)}; each epoch needs "
                            f"{', '.join(CURVE_KEYS)}")
    from matplotlib.ticker import MaxNLocator

    epochs = [int(h["epoch"]) for h in history]
    series = [
        ("train loss", "train_loss", dict(color="tab:purple", linestyle="-")),
        ("train acc", "train_acc", dict(color="tab:purple", linestyle="--")),
        ("test acc", "test_acc", dict(color="tab:green", linestyle="-.")),
    ]
    fig = _figure(CURVES_SIZE)
    ax = fig.add_subplot()
    for label, key, style in series:
        ax.plot(epochs, [float(h[key]) for h in history], label=label,
                marker="o" if len(epochs) <= 30 else None, markersize=4, linewidth=2, **style)
    ax.set_xlabel("epoch")
    first, last_epoch = min(epochs), max(epochs)
    if last_epoch - first <= 20:
        ax.set_xticks(range(first, last_epoch + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    # whole markers at the ends; one epoch gets a unit-wide axis around it
    margin = 0.5 if first == last_epoch else max(0.1, 0.03 * (last_epoch - first))
    ax.set_xlim(first - margin, last_epoch + margin)
    top = max(1.0, max(float(h["train_loss"]) for h in history))
    ax.set_ylim(0, top * 1.05)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    last = history[-1]
    ax.set_title(f"epoch {int(last['epoch'])}: loss {float(last['train_loss']):.3f}, "
                 f"train acc {float(last['train_acc']):.3f}, "
                 f"test acc {float(last['test_acc']):.3f}", fontsize=10)
    _title(fig, title, 12)
    return _save(fig, path)


# --------------------------------------------------------------------------- kernels on an image

def kernels_grid_size(count: int) -> tuple[float, float]:
    """Figure size in inches of :func:`plot_kernels_grid` for ``count`` responses."""
    rows, cols = grid_shape(count + 1, 4)
    return (cols * KERNELS_PANEL[0], rows * KERNELS_PANEL[1] + TITLE_HEIGHT)


def plot_kernels_grid(image: np.ndarray, responses: Mapping[str, np.ndarray], path,
                      title: str = "", image_title: str = "input",
                      kernels: Mapping[str, np.ndarray] | None = None) -> Picture:
    """The input ``image`` (H, W) and each kernel's response to it, one titled panel each.

    A response whose kernel sums to 0 (an edge detector: 0 on flat regions) is drawn on a
    diverging map centred at 0 (red positive, blue negative); the others (blurs, sharpen)
    in grey on the input's scale, so they compare with it ("(clipped)" in the title when the
    response leaves that range). Each panel has its colour bar and, when ``kernels`` is given,
    the kernel's numbers under it.
    """
    require_matplotlib()
    if not responses:
        raise PlotError("no kernel responses to draw")
    image = np.asarray(image)
    if image.ndim != 2:
        raise PlotError(f"image must be (H, W), got shape {image.shape}")
    rows, cols = grid_shape(len(responses) + 1, 4)
    fig = _figure(kernels_grid_size(len(responses)))
    axes = _grid_axes(fig, len(responses) + 1, rows, cols)
    span = (float(np.min(image)), float(np.max(image)))
    shown = _show(axes[0], image, signed=False, span=span)
    axes[0].set_title(image_title, fontsize=11)
    fig.colorbar(shown, ax=axes[0], shrink=0.8)
    for ax, (name, response) in zip(axes[1:], responses.items()):
        kernel = None if kernels is None else kernels.get(name)
        signed = _signed(response) if kernel is None else abs(float(np.sum(kernel))) < 1e-6
        # a brightness-keeping kernel (blur, sharpen) is shown like the input, on its scale
        shown = _show(ax, response, signed=signed, span=None if signed else span)
        clipped = not signed and (np.min(response) < span[0] - 1e-6
                                  or np.max(response) > span[1] + 1e-6)
        ax.set_title(name + (" (clipped)" if clipped else ""), fontsize=11)
        fig.colorbar(shown, ax=ax, shrink=0.8)
        if kernel is not None:
            ax.set_xlabel(_kernel_text(kernel), fontsize=9, family="monospace")
    _title(fig, title, 13)
    return _save(fig, path)


# --------------------------------------------------------------------------- feature maps

def feature_maps_size(channels: int, with_image: bool = True) -> tuple[float, float]:
    """Figure size in inches of :func:`plot_feature_maps` for ``channels`` maps."""
    rows, cols = grid_shape(channels + bool(with_image), 6)
    return (cols * MAPS_PANEL[0], rows * MAPS_PANEL[1] + MAPS_EXTRA_HEIGHT)


def plot_feature_maps(maps: np.ndarray, path, title: str = "", image: np.ndarray | None = None,
                      image_title: str = "input") -> Picture:
    """One layer's feature maps (C, H, W) as a grid, after the input ``image`` when given.

    Each map is scaled to its own range (written under it): signed maps on a diverging map
    centred at 0, non-negative ones in grey. Pixels are drawn as blocks, not smoothed.
    """
    require_matplotlib()
    maps = _as_3d(maps, "maps")
    panels = len(maps) + (image is not None)
    rows, cols = grid_shape(panels, 6)
    fig = _figure(feature_maps_size(len(maps), image is not None))
    axes = list(_grid_axes(fig, panels, rows, cols))
    if image is not None:
        ax = axes.pop(0)
        _show(ax, np.asarray(image).reshape(np.shape(image)[-2:]), signed=False)
        ax.set_title(image_title, fontsize=9)
    signed = _signed(maps)  # one colour map for the whole layer
    for channel, (ax, plane) in enumerate(zip(axes, maps)):
        _show(ax, plane, signed=signed)
        ax.set_title(f"channel {channel}", fontsize=9)
        ax.set_xlabel(f"[{np.min(plane):.2g}, {np.max(plane):.2g}]", fontsize=8)
    fig.get_layout_engine().set(h_pad=0.08)
    _title(fig, title, 11)
    colours = "red > 0 (white) > blue" if signed else "black low, white high"
    fig.supxlabel(f"each map on its own scale, its range under it; {colours}", fontsize=9)
    return _save(fig, path)


# --------------------------------------------------------------------------- learned kernels

def first_layer_kernels_size(out_channels: int, in_channels: int = 1) -> tuple[float, float]:
    """Figure size in inches of :func:`plot_first_layer_kernels`."""
    rows, cols = grid_shape(out_channels * in_channels, 6)
    return (cols * WEIGHTS_PANEL[0] + COLORBAR_WIDTH, rows * WEIGHTS_PANEL[1] + TITLE_HEIGHT)


def _cell_text(value: float) -> str:
    """A weight in a kernel cell: two decimals without the leading 0 ("-.12"), never "-.00"."""
    text = f"{value:.2f}"
    if text == "-0.00":
        text = "0.00"
    return text.replace("0.", ".", 1)


def plot_first_layer_kernels(weight: np.ndarray, path, title: str = "") -> Picture:
    """A convolution's kernels, weight (C_out, C_in, kh, kw), one panel per (out, in) pair.

    All kernels share one diverging colour scale centred at 0 (red positive, blue negative),
    so their strengths compare; kernels up to 7x7 carry their values in the cells.
    """
    require_matplotlib()
    weight = np.asarray(weight, dtype=np.float64)
    if weight.ndim != 4 or min(weight.shape) < 1:
        raise PlotError(f"weight must be (C_out, C_in, kh, kw), got shape {weight.shape}")
    c_out, c_in, kh, kw = weight.shape
    count = c_out * c_in
    rows, cols = grid_shape(count, 6)
    fig = _figure(first_layer_kernels_size(c_out, c_in))
    axes = _grid_axes(fig, count, rows, cols)
    bound = float(np.max(np.abs(weight))) or 1.0
    shown = None
    annotate = kh <= 7 and kw <= 7
    fontsize = 7 if max(kh, kw) <= 5 else 5
    for i, ax in enumerate(axes):
        o, c = divmod(i, c_in)
        kernel = weight[o, c]
        shown = _show(ax, kernel, signed=True, limit=bound)
        ax.set_title(f"kernel {o}" if c_in == 1 else f"out {o} / in {c}", fontsize=9)
        if annotate:
            for (r, q), value in np.ndenumerate(kernel):
                ax.text(q, r, _cell_text(value), ha="center", va="center",
                        fontsize=fontsize,
                        color="white" if abs(value) > 0.6 * bound else "black")
    fig.colorbar(shown, ax=list(axes), shrink=0.8, label="weight")
    _title(fig, title, 11)
    return _save(fig, path)


def _ensure_dir(directory) -> Path:
    """``directory`` made if missing; :class:`PlotError` if it cannot be."""
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PlotError(f"cannot create {directory}: {error.strerror or error}") from error
    if not os.access(path, os.W_OK):
        raise PlotError(f"cannot write into {directory}: permission denied")
    return path
