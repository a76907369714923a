"""CUDA kernel for bilinear resizing, as :mod:`numbaconv.kernels.cpu.resize` computes it (one
thread per output element, PyTorch's source positions)."""

from numba import cuda

from . import config, steps


@cuda.jit
def _resize_bilinear_kernel(x, out):
    """x (P, H, W) -> out (P, OH, OW), align_corners=False, in float64 as the CPU kernel."""
    planes, height, width = x.shape
    _, out_h, out_w = out.shape
    scale_h = height / out_h
    scale_w = width / out_w
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        ox = i % out_w
        oy = (i // out_w) % out_h
        p = i // (out_w * out_h)
        sy = max((oy + 0.5) * scale_h - 0.5, 0.0)
        sx = max((ox + 0.5) * scale_w - 0.5, 0.0)
        y0 = int(sy)
        x0 = int(sx)
        y1 = y0 + 1 if y0 < height - 1 else y0
        x1 = x0 + 1 if x0 < width - 1 else x0
        wy = sy - y0
        wx = sx - x0
        top = (1.0 - wx) * x[p, y0, x0] + wx * x[p, y0, x1]
        bottom = (1.0 - wx) * x[p, y1, x0] + wx * x[p, y1, x1]
        out[p, oy, ox] = (1.0 - wy) * top + wy * bottom


def resize_bilinear(x, out_h: int, out_w: int):
    """x (N, C, H, W) device array -> (N, C, out_h, out_w)."""
    n, c, h, w = x.shape
    out = steps.empty((n, c, out_h, out_w), x.dtype)
    planes_in = x.reshape(n * c, h, w)
    planes_out = out.reshape(n * c, out_h, out_w)
    steps.launch(_resize_bilinear_kernel, config.blocks_for(planes_out.size),
                 config.THREADS_PER_BLOCK, planes_in, planes_out)
    return out
