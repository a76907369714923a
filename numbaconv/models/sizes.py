"""Which square image sizes a model takes: the smallest one, and a one-line error otherwise."""

from __future__ import annotations

from ..layers import Layer
from ..shapes import as_int

__all__ = ["smallest_input", "check_input_size", "LARGEST_SIDE"]

#: How far :func:`smallest_input` looks (D2L's largest input side is 224).
LARGEST_SIDE = 4096


def _takes(model: Layer, side: int, in_channels: int) -> bool:
    try:
        model.output_shape((1, in_channels, side, side))
    except ValueError:  # ShapeError, or a layer's own ValueError
        return False
    return True


def smallest_input(model: Layer, in_channels: int = 1) -> int:
    """The smallest side ``s`` for which ``model`` takes a ``(N, in_channels, s, s)`` input.

    Found by asking ``output_shape`` for ``s = 1, 2, ...`` (no computation). A model whose
    ``Linear`` follows a fixed feature map (``alexnet``, ``vgg11``: built for one
    ``input_size``) takes only the sizes that give that map; the factories check their
    convolutional part, whose smallest side is the architecture's.
    ``ValueError`` when no side up to :data:`LARGEST_SIDE` fits.
    """
    for side in range(1, LARGEST_SIDE + 1):
        if _takes(model, side, in_channels):
            return side
    raise ValueError(f"the model takes no {in_channels}-channel square input of side 1 to "
                     f"{LARGEST_SIDE}")


def check_input_size(model: Layer, side: int, name: str, in_channels: int = 1) -> None:
    """Nothing when ``model`` (registered as ``name``) takes ``side`` x ``side`` images; else a
    one-line ``ValueError`` naming the model and the smallest side that works."""
    side = as_int(side, "input_size", 1)
    try:
        model.output_shape((1, in_channels, side, side))
    except ValueError as error:
        smallest = smallest_input(model, in_channels)
        if side < smallest:
            raise ValueError(f"{name} needs images of at least {smallest}x{smallest} pixels, "
                             f"got {side}x{side}") from None
        raise ValueError(f"{name} does not take {side}x{side} images: "
                         f"{str(error).splitlines()[0]}") from None
