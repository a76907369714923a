"""2-D convolution (cross-correlation, as PyTorch) forward and backward on CUDA.

All three passes are *implicit* matrix products, per group, tiled through shared memory:

    forward      y[co, p]  = sum_k w[co, k]  * x~[k, p]    k = (ci, kh, kw), p = (n, oh, ow)
    grad input   gx[ci, q] = sum_k w~[ci, k] * gy~[k, q]   k = (co, kh, kw), q = (n, ih, iw)
    grad weight  gw[co, k] = sum_r gy[co, r] * x~[r, k]    r = (n, oh, ow),  k = (ci, kh, kw)

``x~`` and ``gy~`` are never built (no im2col buffer): the tile loaders gather them from x and
grad_y, zero outside the image. A small table per layer geometry turns a flat k into its
channel and tap offsets, so the inner loads divide nothing (Numba's integers are 64-bit and a
64-bit division costs dozens of instructions). Each block computes a BM x BN tile of the
product with SIDE x SIDE threads, each thread TM x TN outputs held in registers, reading BK-deep
slices of both operands from shared memory; the next slice is loaded from global memory into
registers while the current one is multiplied.

Every output is written by exactly one thread and the weight gradient's long reduction over r
is split into fixed ranges whose partial sums are added in a fixed order by a second kernel:
no atomics, and results do not depend on scheduling.

Shapes: x (N, C_in, H, W), weight (C_out, C_in/groups, kH, kW), bias (C_out,),
y (N, C_out, H_out, W_out). ``padding`` is ``((top, bottom), (left, right))``; only top and
left shift the windows, bottom and right only enter the output size.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from numba import cuda

from numbaconv.shapes import output_size

from . import config, steps
from .launch import prepare
from .ops import (
    _activate,
    _placeholder,
    _sum_chunks_kernel,
    activation_backward_into,
    activation_code,
    sum_over_batch_and_space,
)

# ---------------------------------------------------------------------------------------------
# Tiles
# ---------------------------------------------------------------------------------------------

class Tiles:
    """A tile shape: SIDE x SIDE threads, each TM x TN outputs; BK-deep operand slices."""

    def __init__(self, tm: int, tn: int, bk: int, side: int | None = None):
        side = side or config.CONV_SIDE
        threads = side * side
        self.tm, self.tn, self.bk, self.side = tm, tn, bk, side
        self.bm, self.bn, self.threads = side * tm, side * tn, threads
        # The loaders give each thread a fixed column of the B slice (forward, grad input) or
        # a fixed depth row of both slices (grad weight); these keep that exact.
        if threads % bk or threads % self.bn or self.bm % (threads // bk) \
                or self.bn % (threads // bk) or (bk * self.bn) % threads:
            raise ValueError(f"tile shape {self} does not fit {threads} threads")

    def key(self):
        return self.tm, self.tn, self.bk, self.side

    def __repr__(self):
        return f"Tiles(tm={self.tm}, tn={self.tn}, bk={self.bk}, side={self.side})"


def pick_tiles(rows: int, cols: int, wide: tuple[int, int, int]) -> Tiles:
    """The tile shape for a (rows, cols) product: ``wide`` (TM, TN, BK) when both are large,
    else as few idle rows and columns as the shapes allow."""
    side = config.CONV_SIDE
    wide_tm, wide_tn, wide_bk = wide
    tm = next((t for t in (1, 2) if side * t >= rows), wide_tm)
    tn = next((t for t in (1, 2) if side * t >= cols), wide_tn)
    if (tm, tn) == (wide_tm, wide_tn):
        return Tiles(*wide)  # a configured shape that does not fit raises here
    try:
        return Tiles(tm, tn, wide_bk)
    except ValueError:  # a narrow tile with too few rows for BK-deep loads
        return Tiles(tm, tn, side)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@functools.cache
def tap_table(channels: int, k_h: int, k_w: int, dh: int, dw: int):
    """(channels * kH * kW, 4) int32 device array: for each flat k = (c, kh, kw), the row
    (c, kh * dh, kw * dw, kh * kW + kw). One upload per geometry."""
    rows = [(c, kh * dh, kw * dw, kh * k_w + kw)
            for c in range(channels) for kh in range(k_h) for kw in range(k_w)]
    return cuda.to_device(np.array(rows, dtype=np.int32).reshape(len(rows), 4))


# ---------------------------------------------------------------------------------------------
# Kernels (one compiled kernel per dtype and tile shape: shared arrays need literal shapes)
# ---------------------------------------------------------------------------------------------

def _tile_functions(tiles: Tiles, elem, depth_rows: bool):
    """Device functions of one tile shape: ``clear(acc)``; ``multiply(a_s, b_s, acc, ty, tx)``,
    acc[i, j] += sum over k < BK of a_s[k, ty + i*SIDE] * b_s[k, tx + j*SIDE]; and
    ``store(a_s, b_s, a_reg, b_reg, tid)``, which puts the slices thread ``tid`` fetched into
    shared memory: its fixed column of the B slice (and a fixed depth of the A slice) for the
    forward and input gradient, its fixed depth row of both for the weight gradient
    (``depth_rows``).

    Strided (not blocked) output ownership keeps shared reads conflict-free and output
    writes coalesced."""
    tm, tn, bk, side, bm, bn = tiles.tm, tiles.tn, tiles.bk, tiles.side, tiles.bm, tiles.bn
    a_step = tiles.threads // bk
    a_loads = bm // a_step
    b_step = tiles.threads // (bk if depth_rows else bn)
    b_loads = bn // b_step if depth_rows else bk // b_step

    @cuda.jit(device=True)
    def clear(acc):
        for i in range(tm):
            for j in range(tn):
                acc[i, j] = elem(0)

    @cuda.jit(device=True)
    def multiply(a_s, b_s, acc, ty, tx):
        a_frag = cuda.local.array(tm, elem)
        b_frag = cuda.local.array(tn, elem)
        for k in range(bk):
            for i in range(tm):
                a_frag[i] = a_s[k, ty + i * side]
            for j in range(tn):
                b_frag[j] = b_s[k, tx + j * side]
            for i in range(tm):
                for j in range(tn):
                    acc[i, j] += a_frag[i] * b_frag[j]

    @cuda.jit(device=True)
    def store(a_s, b_s, a_reg, b_reg, tid):
        depth, lane = tid % bk, tid // bk
        for j in range(a_loads):
            a_s[depth, lane + j * a_step] = a_reg[j]
        if depth_rows:
            for j in range(b_loads):
                b_s[depth, lane + j * b_step] = b_reg[j]
        else:
            column, row = tid % bn, tid // bn
            for j in range(b_loads):
                b_s[row + j * b_step, column] = b_reg[j]

    return clear, multiply, store


@functools.cache
def forward_kernel(dtype_name: str, shape: tuple):
    """y = act(w @ x~ + bias), per group (grid z); grid (cols / BN, rows / BM, groups)."""
    tiles = Tiles(*shape)
    elem = numba.from_dtype(np.dtype(dtype_name))
    tm, tn, bk, side, bm, bn = tiles.tm, tiles.tn, tiles.bk, tiles.side, tiles.bm, tiles.bn
    a_loads, a_step = bm * bk // tiles.threads, tiles.threads // bk
    b_loads, b_step = bk * bn // tiles.threads, tiles.threads // bn
    clear, multiply, store = _tile_functions(tiles, elem, depth_rows=False)
    a_width, b_width = bm + 1, bn + 1  # shared arrays need literal shapes; +1 avoids conflicts

    @cuda.jit
    def conv_forward(x, w2, bias, table, y, cin_g, sh, sw, pt, pl, has_bias, act):
        """x (N, C_in, H, W); w2 (C_out, K) the weight with (ci, kh, kw) flattened;
        table (K, 4) from tap_table(cin_g, ...); y (N, C_out, H_out, W_out)."""
        n_batch, c_in, height, width = x.shape
        _, c_out, out_h, out_w = y.shape
        k_total = w2.shape[1]
        cout_g = c_out * cin_g // c_in
        plane = out_h * out_w
        cols = n_batch * plane
        g = cuda.blockIdx.z
        m0 = cuda.blockIdx.y * bm
        p0 = cuda.blockIdx.x * bn
        tid = cuda.threadIdx.x
        ty, tx = tid // side, tid % side
        zero = elem(0)
        a_s = cuda.shared.array((bk, a_width), elem)
        b_s = cuda.shared.array((bk, b_width), elem)
        acc = cuda.local.array((tm, tn), elem)
        a_reg = cuda.local.array(a_loads, elem)
        b_reg = cuda.local.array(b_loads, elem)
        clear(acc)
        # This thread loads w2[co0 + a_m + j*a_step, kk + a_k] and x~[kk + b_k + j*b_step, p].
        a_k, a_m = tid % bk, tid // bk
        b_col, b_k = tid % bn, tid // bn
        co0 = g * cout_g + m0
        p = p0 + b_col
        p_ok = p < cols
        nb = p // plane
        s = p - nb * plane
        oh = s // out_w
        ih0 = oh * sh - pt
        iw0 = (s - oh * out_w) * sw - pl
        ci0 = g * cin_g
        n_slices = (k_total + bk - 1) // bk
        for t in range(n_slices + 1):
            if t < n_slices:  # fetch slice t while slice t-1 is multiplied
                kk = t * bk
                k = kk + a_k
                for j in range(a_loads):
                    m = a_m + j * a_step
                    a_reg[j] = w2[co0 + m, k] if m0 + m < cout_g and k < k_total else zero
                for j in range(b_loads):
                    k = kk + b_k + j * b_step
                    v = zero
                    if p_ok and k < k_total:
                        ih = ih0 + table[k, 1]
                        iw = iw0 + table[k, 2]
                        if ih >= 0 and ih < height and iw >= 0 and iw < width:
                            v = x[nb, ci0 + table[k, 0], ih, iw]
                    b_reg[j] = v
            if t > 0:
                multiply(a_s, b_s, acc, ty, tx)
            cuda.syncthreads()
            if t < n_slices:
                store(a_s, b_s, a_reg, b_reg, tid)
            cuda.syncthreads()
        one = elem(1)
        for j in range(tn):
            p = p0 + tx + j * side
            if p < cols:
                nb = p // plane
                s = p - nb * plane
                oh = s // out_w
                ow = s - oh * out_w
                for i in range(tm):
                    m = m0 + ty + i * side
                    if m < cout_g:
                        co = g * cout_g + m
                        v = acc[i, j]
                        if has_bias:
                            v += bias[co]
                        y[nb, co, oh, ow] = _activate(v, act, one)

    return conv_forward


@functools.cache
def grad_input_kernel(dtype_name: str, shape: tuple):
    """gx = w~ @ gy~ per group (grid z); grid (cols / BN, rows / BM, groups).

    gy~[k, q] for k = (co, kh, kw), q = (n, ih, iw) is gy[n, co, oh, ow] where the window at
    (oh, ow) puts tap (kh, kw) on (ih, iw): oh * sh = ih + pt - kh * dh (likewise ow), zero
    where no such output exists."""
    tiles = Tiles(*shape)
    elem = numba.from_dtype(np.dtype(dtype_name))
    tm, tn, bk, side, bm, bn = tiles.tm, tiles.tn, tiles.bk, tiles.side, tiles.bm, tiles.bn
    a_loads, a_step = bm * bk // tiles.threads, tiles.threads // bk
    b_loads, b_step = bk * bn // tiles.threads, tiles.threads // bn
    clear, multiply, store = _tile_functions(tiles, elem, depth_rows=False)
    a_width, b_width = bm + 1, bn + 1  # shared arrays need literal shapes; +1 avoids conflicts

    @cuda.jit
    def conv_grad_input(gy, w3, table, gx, sh, sw, pt, pl):
        """gy (N, C_out, H_out, W_out); w3 (C_out, C_in/groups, kH*kW); table (K, 4) from
        tap_table(C_out/groups, ...); gx (N, C_in, H, W)."""
        n_batch, c_in, height, width = gx.shape
        _, c_out, out_h, out_w = gy.shape
        cin_g = w3.shape[1]
        k_total = table.shape[0]
        cout_g = c_out * cin_g // c_in
        plane = height * width
        cols = n_batch * plane
        g = cuda.blockIdx.z
        m0 = cuda.blockIdx.y * bm
        q0 = cuda.blockIdx.x * bn
        tid = cuda.threadIdx.x
        ty, tx = tid // side, tid % side
        zero = elem(0)
        a_s = cuda.shared.array((bk, a_width), elem)
        b_s = cuda.shared.array((bk, b_width), elem)
        acc = cuda.local.array((tm, tn), elem)
        a_reg = cuda.local.array(a_loads, elem)
        b_reg = cuda.local.array(b_loads, elem)
        clear(acc)
        a_k, a_m = tid % bk, tid // bk
        b_col, b_k = tid % bn, tid // bn
        co_g0 = g * cout_g
        q = q0 + b_col
        q_ok = q < cols
        nb = q // plane
        s = q - nb * plane
        ih = s // width
        th0 = ih + pt
        tw0 = s - ih * width + pl
        n_slices = (k_total + bk - 1) // bk
        for t in range(n_slices + 1):
            if t < n_slices:
                kk = t * bk
                k = kk + a_k
                for j in range(a_loads):
                    m = m0 + a_m + j * a_step
                    v = zero
                    if m < cin_g and k < k_total:
                        v = w3[co_g0 + table[k, 0], m, table[k, 3]]
                    a_reg[j] = v
                for j in range(b_loads):
                    k = kk + b_k + j * b_step
                    v = zero
                    if q_ok and k < k_total:
                        th = th0 - table[k, 1]
                        tw = tw0 - table[k, 2]
                        if th >= 0 and tw >= 0:
                            oh, ow = th, tw
                            on_grid = True
                            if sh != 1:
                                oh = th // sh
                                on_grid = oh * sh == th
                            if sw != 1:
                                ow = tw // sw
                                on_grid = on_grid and ow * sw == tw
                            if on_grid and oh < out_h and ow < out_w:
                                v = gy[nb, co_g0 + table[k, 0], oh, ow]
                    b_reg[j] = v
            if t > 0:
                multiply(a_s, b_s, acc, ty, tx)
            cuda.syncthreads()
            if t < n_slices:
                store(a_s, b_s, a_reg, b_reg, tid)
            cuda.syncthreads()
        for j in range(tn):
            q = q0 + tx + j * side
            if q < cols:
                nb = q // plane
                s = q - nb * plane
                ih = s // width
                iw = s - ih * width
                for i in range(tm):
                    m = m0 + ty + i * side
                    if m < cin_g:
                        gx[nb, g * cin_g + m, ih, iw] = acc[i, j]

    return conv_grad_input


@functools.cache
def grad_weight_kernel(dtype_name: str, shape: tuple):
    """partial[s] = gy @ x~ over the s-th range of r, per group; grid
    (cols / BN, rows / BM, groups * splits), z = group * splits + s."""
    tiles = Tiles(*shape)
    elem = numba.from_dtype(np.dtype(dtype_name))
    tm, tn, bk, side, bm, bn = tiles.tm, tiles.tn, tiles.bk, tiles.side, tiles.bm, tiles.bn
    step = tiles.threads // bk
    a_loads, b_loads = bm // step, bn // step
    clear, multiply, store = _tile_functions(tiles, elem, depth_rows=True)
    a_width, b_width = bm + 1, bn + 1  # shared arrays need literal shapes; +1 avoids conflicts

    @cuda.jit
    def conv_grad_weight(gy, x, table, partial, cin_g, sh, sw, pt, pl, r_len):
        """gy (N, C_out, H_out, W_out); x (N, C_in, H, W); table (K, 4) from
        tap_table(C_in/groups, ...); partial (splits, C_out * K): partial[s, co * K + k] sums
        gy[n, co, oh, ow] * x~[(n, oh, ow), k] over flat (n, oh, ow) in [s*r_len, (s+1)*r_len)."""
        n_batch, c_in, height, width = x.shape
        _, c_out, out_h, out_w = gy.shape
        k_total = table.shape[0]
        splits = partial.shape[0]
        cout_g = c_out * cin_g // c_in
        plane = out_h * out_w
        g = cuda.blockIdx.z // splits
        split = cuda.blockIdx.z - g * splits
        r_begin = split * r_len
        r_end = min(n_batch * plane, r_begin + r_len)
        m0 = cuda.blockIdx.y * bm
        n0 = cuda.blockIdx.x * bn
        tid = cuda.threadIdx.x
        ty, tx = tid // side, tid % side
        zero = elem(0)
        a_s = cuda.shared.array((bk, a_width), elem)
        b_s = cuda.shared.array((bk, b_width), elem)
        acc = cuda.local.array((tm, tn), elem)
        a_reg = cuda.local.array(a_loads, elem)
        b_reg = cuda.local.array(b_loads, elem)
        clear(acc)
        # Each thread loads depth row r_l of both slices, for fixed rows m and columns k:
        # their table entries are read once, and r advances without dividing.
        r_l, lane = tid % bk, tid // bk
        b_chan = cuda.local.array(b_loads, numba.int32)
        b_dh = cuda.local.array(b_loads, numba.int32)
        b_dw = cuda.local.array(b_loads, numba.int32)
        for j in range(b_loads):
            k = n0 + lane + j * step
            kc = k if k < k_total else 0
            b_chan[j] = table[kc, 0] + g * cin_g if k < k_total else -1
            b_dh[j] = table[kc, 1]
            b_dw[j] = table[kc, 2]
        r = r_begin + r_l
        nb = r // plane
        s = r - nb * plane
        oh = s // out_w
        ow = s - oh * out_w
        co0 = g * cout_g + m0
        n_slices = (r_end - r_begin + bk - 1) // bk if r_end > r_begin else 0
        for t in range(n_slices + 1):
            if t < n_slices:
                r_ok = r < r_end
                for j in range(a_loads):
                    m = lane + j * step
                    a_reg[j] = gy[nb, co0 + m, oh, ow] if r_ok and m0 + m < cout_g else zero
                ih0 = oh * sh - pt
                iw0 = ow * sw - pl
                for j in range(b_loads):
                    v = zero
                    if r_ok and b_chan[j] >= 0:
                        ih = ih0 + b_dh[j]
                        iw = iw0 + b_dw[j]
                        if ih >= 0 and ih < height and iw >= 0 and iw < width:
                            v = x[nb, b_chan[j], ih, iw]
                    b_reg[j] = v
                r += bk
                ow += bk
                while ow >= out_w:
                    ow -= out_w
                    oh += 1
                    if oh == out_h:
                        oh = 0
                        nb += 1
            if t > 0:
                multiply(a_s, b_s, acc, ty, tx)
            cuda.syncthreads()
            if t < n_slices:
                store(a_s, b_s, a_reg, b_reg, tid)
            cuda.syncthreads()
        for i in range(tm):
            m = m0 + ty + i * side
            if m < cout_g:
                for j in range(tn):
                    k = n0 + tx + j * side
                    if k < k_total:
                        partial[split, (g * cout_g + m) * k_total + k] = acc[i, j]

    return conv_grad_weight


# ---------------------------------------------------------------------------------------------
# Launches: each pass's kernel, grid and arguments, launched through the step
# (numbaconv.kernels.cuda.steps) by the backend's functions below, or prepared by the
# *_launch functions (bench/gpu_check.py times tile shapes with them)
# ---------------------------------------------------------------------------------------------

def _grid(tiles: Tiles, rows: int, cols: int, depth: int):
    return (max(1, _ceil_div(cols, tiles.bn)), max(1, _ceil_div(rows, tiles.bm)), depth), \
        tiles.threads


def _forward_call(x, weight, bias, y, stride, padding, dilation, activation=None,
                  tiles: Tiles | None = None):
    """(kernel, grid, block, arguments) writing act(conv(x, weight) + bias) into y."""
    c_out, cin_g, k_h, k_w = weight.shape
    groups = x.shape[1] // cin_g
    (sh, sw), ((pt, _), (pl, _)), (dh, dw) = stride, padding, dilation
    cols = y.shape[0] * y.shape[2] * y.shape[3]
    tiles = tiles or pick_tiles(c_out // groups, cols, config.CONV_FORWARD_TILES)
    grid, block = _grid(tiles, c_out // groups, cols, groups)
    kernel = forward_kernel(np.dtype(x.dtype).name, tiles.key())
    table = tap_table(cin_g, k_h, k_w, dh, dw)
    w2 = weight.reshape(c_out, cin_g * k_h * k_w)
    has_bias = bias is not None
    bias = bias if has_bias else _placeholder(x.dtype)
    return kernel, grid, block, (x, w2, bias, table, y, cin_g, sh, sw, pt, pl, has_bias,
                                 activation_code(activation))


def _grad_input_call(g, weight, gx, stride, padding, dilation, tiles: Tiles | None = None):
    """(kernel, grid, block, arguments) writing the gradient at the input, from g at the
    output, into gx."""
    c_out, cin_g, k_h, k_w = weight.shape
    groups = gx.shape[1] // cin_g
    (sh, sw), ((pt, _), (pl, _)), (dh, dw) = stride, padding, dilation
    cols = gx.shape[0] * gx.shape[2] * gx.shape[3]
    tiles = tiles or pick_tiles(cin_g, cols, config.CONV_GRAD_INPUT_TILES)
    grid, block = _grid(tiles, cin_g, cols, groups)
    kernel = grad_input_kernel(np.dtype(gx.dtype).name, tiles.key())
    table = tap_table(c_out // groups, k_h, k_w, dh, dw)
    w3 = weight.reshape(c_out, cin_g, k_h * k_w)
    return kernel, grid, block, (g, w3, table, gx, sh, sw, pt, pl)


def grad_weight_splits(reduced: int, blocks: int, bk: int) -> tuple[int, int]:
    """``(splits, r_len)``: split the reduction over ``reduced`` terms into ranges of r_len
    (a multiple of bk) so that about config.CONV_BLOCKS blocks run. Fixed by the shapes and
    the configuration (CONV_BLOCKS, MAX_CHUNKS; smaller under the simulator), never by the
    hardware, so the sums' order is the same on every GPU."""
    want = max(1, min(config.MAX_CHUNKS, _ceil_div(config.CONV_BLOCKS, blocks),
                      _ceil_div(reduced, 4 * bk)))
    r_len = _ceil_div(_ceil_div(max(reduced, 1), want), bk) * bk
    return _ceil_div(max(reduced, 1), r_len), r_len


def _grad_weight_calls(g, x, grad_weight, stride, padding, dilation,
                       tiles: Tiles | None = None, allocate=cuda.device_array):
    """The two (kernel, grid, block, arguments) writing the weight gradient into grad_weight:
    fixed-range partial products into a buffer from ``allocate(shape, dtype)``, then their
    sum in order (the first is None for an empty output, whose gradient is zero)."""
    c_out, cin_g, k_h, k_w = grad_weight.shape
    groups = x.shape[1] // cin_g
    (sh, sw), ((pt, _), (pl, _)), (dh, dw) = stride, padding, dilation
    k_total = cin_g * k_h * k_w
    tiles = tiles or pick_tiles(c_out // groups, k_total, config.CONV_GRAD_WEIGHT_TILES)
    (cols_blocks, rows_blocks, _), block = _grid(tiles, c_out // groups, k_total, 1)
    reduced = g.shape[0] * g.shape[2] * g.shape[3]
    splits, r_len = grad_weight_splits(reduced, cols_blocks * rows_blocks * groups, tiles.bk)
    grid = (cols_blocks, rows_blocks, groups * splits)
    kernel = grad_weight_kernel(np.dtype(x.dtype).name, tiles.key())
    table = tap_table(cin_g, k_h, k_w, dh, dw)
    n_weight = c_out * k_total
    flat = grad_weight.reshape(n_weight)
    one = np.dtype(x.dtype).type(1)
    if reduced == 0:  # an empty output: the gradient is zero
        partial = cuda.to_device(np.zeros((1, n_weight), dtype=x.dtype))
        products = None
    else:
        partial = allocate((splits, n_weight), x.dtype)
        products = (kernel, grid, block, (g, x, table, partial, cin_g, sh, sw, pt, pl, r_len))
    total = (_sum_chunks_kernel, config.blocks_for(n_weight), config.THREADS_PER_BLOCK,
             (partial, flat, one))
    return products, total


def forward_launch(x, weight, bias, y, stride, padding, dilation, activation=None,
                   tiles: Tiles | None = None):
    """A prepared launch writing act(conv(x, weight) + bias) into y; bias may be None."""
    kernel, grid, block, args = _forward_call(x, weight, bias, y, stride, padding, dilation,
                                              activation, tiles)
    return prepare(kernel, grid, block, *args)


def grad_input_launch(g, weight, gx, stride, padding, dilation, tiles: Tiles | None = None):
    """A prepared launch writing the gradient at the input, from g at the output, into gx."""
    kernel, grid, block, args = _grad_input_call(g, weight, gx, stride, padding, dilation,
                                                 tiles)
    return prepare(kernel, grid, block, *args)


def grad_weight_launch(g, x, grad_weight, stride, padding, dilation, tiles: Tiles | None = None):
    """A launch writing the weight gradient into grad_weight (two prepared kernels)."""
    calls = [call for call in _grad_weight_calls(g, x, grad_weight, stride, padding, dilation,
                                                 tiles) if call is not None]
    prepared = [prepare(kernel, grid, block, *args) for kernel, grid, block, args in calls]

    def launch(start=0):
        for one in prepared:
            one()
    return launch


# ---------------------------------------------------------------------------------------------
# The backend's functions (numbaconv.functional dispatches device arrays here)
# ---------------------------------------------------------------------------------------------

def _run(call):
    kernel, grid, block, args = call
    steps.launch(kernel, grid, block, *args)


def conv2d_forward(x, weight, bias, stride, padding, dilation, groups, activation=None):
    """2-D convolution of device arrays; returns a (N, C_out, H_out, W_out) device array.

    x (N, C_in, H, W); weight (C_out, C_in/groups, kH, kW); bias (C_out,) or None;
    stride (sh, sw); padding ((top, bottom), (left, right)); dilation (dh, dw); groups int.
    ``activation`` (None, 'relu', 'sigmoid', 'tanh') is fused after the bias.
    """
    n_batch, _, height, width = x.shape
    c_out, _, k_h, k_w = weight.shape
    (sh, sw), (pad_h, pad_w), (dh, dw) = stride, padding, dilation
    out_h = output_size(height, k_h, sh, pad_h, dh)
    out_w = output_size(width, k_w, sw, pad_w, dw)
    y = steps.empty((n_batch, c_out, out_h, out_w), x.dtype)
    if y.size:
        _run(_forward_call(x, weight, bias, y, stride, padding, dilation, activation))
    return y


def conv2d_backward(grad_y, x, weight, stride, padding, dilation, groups, y=None,
                    activation=None, with_bias=True, need_input_grad=True, grad_weight=None,
                    grad_bias=None):
    """``(grad_x, grad_weight, grad_bias)`` of :func:`conv2d_forward`.

    grad_y (N, C_out, H_out, W_out) is the gradient at the layer's output (after the fused
    activation, whose backward needs that output ``y``). grad_x has x's shape, grad_weight
    weight's (written into ``grad_weight`` when given), grad_bias is (C_out,) = grad_y summed
    over N, H_out, W_out (into ``grad_bias`` when given; None when ``with_bias`` is false;
    grad_x is None when ``need_input_grad`` is false, as a first layer needs none).
    Deterministic: no atomics, fixed-order sums.
    """
    g = activation_backward_into(grad_y, y, activation)
    c_out = weight.shape[0]
    grad_x = None
    if need_input_grad:
        grad_x = steps.empty(x.shape, x.dtype)
        if grad_x.size:
            _run(_grad_input_call(g, weight, grad_x, stride, padding, dilation))
    if grad_weight is None:
        grad_weight = steps.empty(weight.shape, x.dtype)
    for call in _grad_weight_calls(g, x, grad_weight, stride, padding, dilation,
                                   allocate=steps.empty):
        if call is not None:
            _run(call)
    if with_bias:
        grad_bias = sum_over_batch_and_space(
            g.reshape(g.shape[0], c_out, g.shape[2] * g.shape[3]), grad_bias)
    return grad_x, grad_weight, grad_bias if with_bias else None
