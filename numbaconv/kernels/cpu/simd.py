"""SIMD vectors in Numba kernels: a vector type and its loads, stores and multiply-adds.

Numba has no vector types, and LLVM keeps no array element in a register across a loop that
may write to the same memory: a matrix product written with loops over arrays loads and
stores its sums at every step. With values of type ``Vector`` (an LLVM ``<W x float>``), a
kernel can hold a tile of sums in registers across a whole reduction and write it once.

A vector is one register of the CPU Numba compiles for: 64 bytes with AVX-512 (16 float32 or
8 float64 values; 32 registers), 32 bytes without (AVX2: 8 float32; 16 registers). Kernels
size their register tiles by :data:`REGISTERS`: a tile made for 32 registers spills on a
CPU with 16 (the output-channel kernels ran at half PyTorch's speed on an AVX2-only AMD EPYC
with 64-byte vectors). Every function takes a 1-D
C-contiguous float array (a row view) that gives the element type; indexes are in elements
and unchecked, like Numba's own array accesses.

    width(row)                  W, the values per vector for row's dtype (a constant)
    load_first(row, i, n)       row[i:i + n] and zeros after (n <= 0: nothing read)
    store_first(row, i, v, n)   row[i:i + n] = v[:n] (n <= 0: nothing written)
    splat(row, x)               W copies of x
    fma(a, b, c)                a * b + c, rounded once
    add(a, b), sub(a, b), mul(a, b)
                                a + b, a - b, a * b, lane by lane (IEEE: no reordering)
    evens_odds(row, i, n)       (row[i:i + 2n:2], row[i + 1:i + 2n:2]) and zeros after
                                (n <= W pairs)
    store_pairs(row, i, e, o, n)
                                row[i:i + 2n:2] = e[:n], row[i + 1:i + 2n:2] = o[:n]
    total(v)                    the sum of v's W values (pairwise: halves added, then
                                their halves, ...)
    transpose(block)            block[:W * W] as a W x W matrix (row-major), transposed in
                                place through registers (log2(W) rounds of shuffles)
    copy_run(src, i, dst, j, n) dst[j:j + n] = src[i:i + n], a vector at a time (the last
                                one masked); the rows must not overlap
    move_transposed(src, i, s, dst, j, t)
                                dst[j + c * t + r] = src[i + r * s + c] for r, c < W: a
                                W x W square read a row (vector) at a time, transposed in
                                registers and written a column at a time (no scratch)
    prefetch_write(row, i)      asks the CPU to fetch the cache line holding row[i] for
                                writing, ahead of the stores that need it (a hint: no
                                value changes)

With n >= W every lane is in: LLVM turns a mask known to be full into a plain load or
store, so a kernel's whole tiles (n = width(row)) cost no masking.
"""

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic, models, register_model

__all__ = ["REGISTERS", "VECTOR_BYTES", "Vector", "add", "copy_run", "evens_odds", "fma",
           "has_avx512", "load_first", "move_transposed", "mul", "prefetch_write", "splat",
           "store_first", "store_pairs", "sub", "total", "transpose", "width"]


def has_avx512() -> bool:
    """Whether Numba compiles for a CPU with AVX-512: the features it was told to use
    (``NUMBA_CPU_FEATURES``, which :mod:`numbaconv.vectors` sets on such CPUs), else the
    host's; a CPU named by ``NUMBA_CPU_NAME`` alone (``generic``, say) counts as without."""
    from numba.core import config

    if config.CPU_FEATURES is not None:
        return "+avx512f" in config.CPU_FEATURES.split(",")
    if config.CPU_NAME not in (None, "host"):
        return False
    import llvmlite.binding as llvm

    return bool(llvm.get_host_cpu_features().get("avx512f"))


_AVX512 = has_avx512()
VECTOR_BYTES = 64 if _AVX512 else 32  # one register
REGISTERS = 32 if _AVX512 else 16  # vector registers


class Vector(types.Type):
    """W values of a float dtype, held in (and computed on as) one LLVM vector."""

    def __init__(self, dtype, width):
        self.dtype, self.width = dtype, width
        super().__init__(name=f"Vector({dtype}, {width})")


@register_model(Vector)
class _VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        element = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(element, fe_type.width))


def _vector_for(row) -> Vector:
    if not (isinstance(row, types.Array) and row.ndim == 1 and row.layout == "C"
            and isinstance(row.dtype, types.Float)):
        raise TypingError(f"SIMD access needs a 1-D C-contiguous float array, got {row}")
    return Vector(row.dtype, VECTOR_BYTES // (row.dtype.bitwidth // 8))


def _address(context, builder, row_type, row, index, index_type):
    data = context.make_array(row_type)(context, builder, row).data
    return builder.gep(data, [context.cast(builder, index, index_type, types.intp)])


def _first_lanes(context, builder, vector_type, count, count_type):
    """The mask of lanes below ``count``."""
    count = context.cast(builder, count, count_type, types.int32)
    lanes = ir.Constant(ir.VectorType(ir.IntType(32), vector_type.width),
                        list(range(vector_type.width)))
    return builder.icmp_signed("<", lanes, _splat(builder, count, vector_type.width))


def _splat(builder, scalar, n):
    vector = builder.insert_element(ir.Constant(ir.VectorType(scalar.type, n), ir.Undefined),
                                    scalar, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(vector, vector,
                                  ir.Constant(ir.VectorType(ir.IntType(32), n), [0] * n))


def _vector_suffix(vector_llvm) -> str:
    """The name suffix of an LLVM intrinsic's vector type, e.g. ``v16f32``."""
    return f"v{vector_llvm.count}{vector_llvm.element.intrinsic_name}"


def _pointer_suffix(pointee: str) -> str:
    """An LLVM intrinsic's pointer suffix: ``p0`` from LLVM 17 on (opaque pointers only),
    before it ``p0`` and the pointee's name (``p0v16f32``, ``p0i8``)."""
    import llvmlite.binding as llvm

    return "p0" if llvm.llvm_version_info[0] >= 17 else f"p0{pointee}"


def _masked(builder, what, vector_llvm, pointer):
    """LLVM's masked load or store of ``vector_llvm`` values (lanes the mask leaves out are
    not touched in memory)."""
    suffix = _vector_suffix(vector_llvm)
    name = f"llvm.masked.{what}.{suffix}.{_pointer_suffix(suffix)}"
    mask = ir.VectorType(ir.IntType(1), vector_llvm.count)
    align = ir.IntType(32)
    if what == "load":
        signature = ir.FunctionType(vector_llvm, [pointer.type, align, mask, vector_llvm])
    else:
        signature = ir.FunctionType(ir.VoidType(), [vector_llvm, pointer.type, align, mask])
    return cgutils.get_or_insert_function(builder.module, signature, name)


@intrinsic
def width(typingctx, row):
    vector_type = _vector_for(row)

    def codegen(context, builder, sig, args):
        return context.get_constant(types.intp, vector_type.width)

    return types.intp(row), codegen


@intrinsic
def load_first(typingctx, row, index, count):
    vector_type = _vector_for(row)

    def codegen(context, builder, sig, args):
        vector_llvm = context.get_value_type(vector_type)
        address = _address(context, builder, row, args[0], args[1], index)
        pointer = builder.bitcast(address, vector_llvm.as_pointer())
        mask = _first_lanes(context, builder, vector_type, args[2], count)
        return builder.call(_masked(builder, "load", vector_llvm, pointer),
                            [pointer, ir.Constant(ir.IntType(32), row.dtype.bitwidth // 8),
                             mask, ir.Constant(vector_llvm, None)])

    return vector_type(row, index, count), codegen


@intrinsic
def store_first(typingctx, row, index, value, count):
    vector_type = _vector_for(row)
    if value != vector_type:
        raise TypingError(f"cannot store a {value} into a {row}")

    def codegen(context, builder, sig, args):
        vector_llvm = context.get_value_type(vector_type)
        address = _address(context, builder, row, args[0], args[1], index)
        pointer = builder.bitcast(address, vector_llvm.as_pointer())
        mask = _first_lanes(context, builder, vector_type, args[3], count)
        builder.call(_masked(builder, "store", vector_llvm, pointer),
                     [args[2], pointer, ir.Constant(ir.IntType(32), row.dtype.bitwidth // 8),
                      mask])
        return context.get_dummy_value()

    return types.none(row, index, value, count), codegen


@intrinsic
def splat(typingctx, row, value):
    vector_type = _vector_for(row)
    if not isinstance(value, (types.Float, types.Integer)):
        raise TypingError(f"cannot splat a {value}")

    def codegen(context, builder, sig, args):
        scalar = context.cast(builder, args[1], value, vector_type.dtype)
        return _splat(builder, scalar, vector_type.width)

    return vector_type(row, value), codegen


@intrinsic
def fma(typingctx, a, b, c):
    if not (isinstance(a, Vector) and a == b == c):
        raise TypingError(f"fma needs three vectors of one type, got {a}, {b}, {c}")

    def codegen(context, builder, sig, args):
        vector_llvm = context.get_value_type(a)
        name = f"llvm.fma.{_vector_suffix(vector_llvm)}"
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vector_llvm, [vector_llvm] * 3), name)
        return builder.call(function, args)

    return a(a, b, c), codegen


def _lane_op(name, build):
    """An intrinsic of two vectors of one type, lane by lane, built by ``build(builder, a,
    b)``."""
    def typer(typingctx, a, b):
        if not (isinstance(a, Vector) and a == b):
            raise TypingError(f"{name} needs two vectors of one type, got {a}, {b}")

        def codegen(context, builder, sig, args):
            return build(builder, *args)

        return a(a, b), codegen

    typer.__name__ = name
    return intrinsic(typer)


add = _lane_op("add", lambda builder, a, b: builder.fadd(a, b))
sub = _lane_op("sub", lambda builder, a, b: builder.fsub(a, b))
mul = _lane_op("mul", lambda builder, a, b: builder.fmul(a, b))


def _pair_access(context, builder, what, row_type, row, index, index_type, count,
                 count_type):
    """LLVM's masked ``what`` ("load" or "store") of a vector of ``row_type``'s values, and
    the (pointer, mask) of each of the two vectors that hold ``count`` pairs (2 * count
    values) from row[index] on."""
    vector_type = _vector_for(row_type)
    vector_llvm = context.get_value_type(vector_type)
    width = vector_type.width
    values = builder.mul(context.cast(builder, count, count_type, types.int32),
                         ir.Constant(ir.IntType(32), 2))
    rest = builder.sub(values, ir.Constant(ir.IntType(32), width))
    masks = (_first_lanes(context, builder, vector_type, values, types.int32),
             _first_lanes(context, builder, vector_type, rest, types.int32))
    first = _address(context, builder, row_type, row, index, index_type)
    second = builder.gep(first, [context.get_constant(types.intp, width)])
    pointers = (builder.bitcast(first, vector_llvm.as_pointer()),
                builder.bitcast(second, vector_llvm.as_pointer()))
    return _masked(builder, what, vector_llvm, pointers[0]), tuple(zip(pointers, masks))


@intrinsic
def evens_odds(typingctx, row, index, count):
    vector_type = _vector_for(row)

    def codegen(context, builder, sig, args):
        vector_llvm = context.get_value_type(vector_type)
        width = vector_type.width
        align = ir.Constant(ir.IntType(32), row.dtype.bitwidth // 8)
        load, halves = _pair_access(context, builder, "load", row, args[0], args[1], index,
                                    args[2], count)
        low, high = (builder.call(load, [pointer, align, mask, ir.Constant(vector_llvm, None)])
                     for pointer, mask in halves)
        index_type = ir.VectorType(ir.IntType(32), width)
        evens, odds = (builder.shuffle_vector(low, high, ir.Constant(
            index_type, list(range(first, 2 * width, 2)))) for first in (0, 1))
        return context.make_tuple(builder, sig.return_type, (evens, odds))

    return types.UniTuple(vector_type, 2)(row, index, count), codegen


@intrinsic
def store_pairs(typingctx, row, index, evens, odds, count):
    vector_type = _vector_for(row)
    if not evens == odds == vector_type:
        raise TypingError(f"cannot store {evens}, {odds} as pairs into a {row}")

    def codegen(context, builder, sig, args):
        width = vector_type.width
        align = ir.Constant(ir.IntType(32), row.dtype.bitwidth // 8)
        store, halves = _pair_access(context, builder, "store", row, args[0], args[1], index,
                                     args[4], count)
        index_type = ir.VectorType(ir.IntType(32), width)
        half = width // 2
        low = builder.shuffle_vector(args[2], args[3], ir.Constant(
            index_type, [i for j in range(half) for i in (j, width + j)]))
        high = builder.shuffle_vector(args[2], args[3], ir.Constant(
            index_type, [i for j in range(half, width) for i in (j, width + j)]))
        for value, (pointer, mask) in zip((low, high), halves, strict=True):
            builder.call(store, [value, pointer, align, mask])
        return context.get_dummy_value()

    return types.none(row, index, evens, odds, count), codegen


@intrinsic
def total(typingctx, v):
    if not isinstance(v, Vector):
        raise TypingError(f"total needs a vector, got {v}")

    def codegen(context, builder, sig, args):
        value, count = args[0], v.width
        while count > 1:  # a fixed tree of shuffles and adds: no ordered reduction
            count //= 2
            low = builder.shuffle_vector(value, value, ir.Constant(
                ir.VectorType(ir.IntType(32), count), list(range(count))))
            high = builder.shuffle_vector(value, value, ir.Constant(
                ir.VectorType(ir.IntType(32), count), list(range(count, 2 * count))))
            value = builder.fadd(low, high)
        return builder.extract_element(value, ir.Constant(ir.IntType(32), 0))

    return v.dtype(v), codegen


def _transposed(builder, rows, width):
    """The columns of the W x W matrix whose rows are the W vectors ``rows``. Round d (W/2,
    W/4, ..., 1) swaps the off-diagonal d x d blocks of every 2d x 2d block: row i and row
    i + d exchange the second d lanes of each 2d lanes with the first d."""
    rows = list(rows)
    index_type = ir.VectorType(ir.IntType(32), width)
    d = width // 2
    while d >= 1:
        first = ir.Constant(index_type, [i for g in range(0, width, 2 * d)
                                         for i in (*range(g, g + d),
                                                   *range(width + g, width + g + d))])
        second = ir.Constant(index_type, [i for g in range(0, width, 2 * d)
                                          for i in (*range(g + d, g + 2 * d),
                                                    *range(width + g + d, width + g + 2 * d))])
        for i in range(width):
            if i & d:
                continue
            top, bottom = rows[i], rows[i + d]
            rows[i] = builder.shuffle_vector(top, bottom, first)
            rows[i + d] = builder.shuffle_vector(top, bottom, second)
        d //= 2
    return rows


@intrinsic
def transpose(typingctx, block):
    vector_type = _vector_for(block)

    def codegen(context, builder, sig, args):
        vector_llvm = context.get_value_type(vector_type)
        width = vector_type.width
        align = block.dtype.bitwidth // 8
        pointers = [builder.bitcast(_address(context, builder, block, args[0],
                                             context.get_constant(types.intp, r * width),
                                             types.intp),
                                    vector_llvm.as_pointer()) for r in range(width)]
        rows = [builder.load(pointer, align=align) for pointer in pointers]
        for pointer, column in zip(pointers, _transposed(builder, rows, width), strict=True):
            builder.store(column, pointer, align=align)
        return context.get_dummy_value()

    return types.none(block), codegen


@intrinsic
def move_transposed(typingctx, src, first, row_stride, dst, out_first, out_stride):
    vector_type = _vector_for(src)
    if _vector_for(dst) != vector_type:
        raise TypingError(f"cannot move a {src} square into a {dst}")
    index_types = (first, row_stride, out_first, out_stride)
    if not all(isinstance(t, types.Integer) for t in index_types):
        raise TypingError(f"move_transposed takes integer indexes, got {index_types}")

    def codegen(context, builder, sig, args):
        vector_llvm = context.get_value_type(vector_type)
        width = vector_type.width
        align = src.dtype.bitwidth // 8
        first_i, row_i, out_i, out_step = (
            context.cast(builder, value, kind, types.intp)
            for value, kind in zip((args[1], args[2], args[4], args[5]), index_types,
                                   strict=True))

        def pointer(row_type, row, start, step, k):
            index = builder.add(start, builder.mul(step, context.get_constant(types.intp, k)))
            return builder.bitcast(_address(context, builder, row_type, row, index,
                                            types.intp), vector_llvm.as_pointer())

        rows = [builder.load(pointer(src, args[0], first_i, row_i, r), align=align)
                for r in range(width)]
        for j, column in enumerate(_transposed(builder, rows, width)):
            builder.store(column, pointer(dst, args[3], out_i, out_step, j), align=align)
        return context.get_dummy_value()

    return types.none(src, first, row_stride, dst, out_first, out_stride), codegen


@intrinsic
def prefetch_write(typingctx, row, index):
    _vector_for(row)

    def codegen(context, builder, sig, args):
        address = _address(context, builder, row, args[0], args[1], index)
        pointer = builder.bitcast(address, ir.IntType(8).as_pointer())
        int32 = ir.IntType(32)
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [pointer.type] + [int32] * 3),
            f"llvm.prefetch.{_pointer_suffix('i8')}")
        # write, keep in all cache levels, data (not instructions)
        builder.call(function, [pointer, ir.Constant(int32, 1), ir.Constant(int32, 3),
                                ir.Constant(int32, 1)])
        return context.get_dummy_value()

    return types.none(row, index), codegen


@njit(inline="always")
def copy_run(src, src_index, dst, dst_index, count):
    """dst[dst_index:dst_index + count] = src[src_index:src_index + count] by vectors, the
    last one masked: a short run (a 28-value output row) costs two vector moves, where
    LLVM's vectorised loop checks the rows for overlap and copies its remainder a value at a
    time (3x slower on LeNet's rows)."""
    w = width(dst)
    for j in range(0, count, w):
        n = min(w, count - j)
        store_first(dst, dst_index + j, load_first(src, src_index + j, n), n)
