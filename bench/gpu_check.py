#!/usr/bin/env python
"""Check numbaconv's CUDA backend on a real GPU against PyTorch on the same card.

1. parity at full sizes (LeNet's layers at batch 256; a 64->64 3x3 pad-1 convolution on
   56x56 at batch 32, with its 2x2 max pooling) against PyTorch CUDA in float32 (TF32 off);
2. each kernel's time (median of ``--repeats`` after warm-up, synchronised) beside PyTorch's
   cuDNN/cuBLAS path;
3. one LeNet training epoch (SGD, lr 0.9, as "Dive into Deep Learning" 6.6) on synthetic data
   of Fashion-MNIST's size (60000 x 1 x 28 x 28, batch 256), numbaconv against PyTorch.

It prints markdown tables headed by the card's name, and exits 1 if a parity check fails.

``--tiny`` shrinks everything so that the whole script runs under the CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``, PyTorch then on the CPU). ``--ptx`` compiles every kernel for
float32 and float64 with the real CUDA compiler (NVVM; no GPU needed) for sm_80 and sm_90
(``--cc``), checks that the float32 kernels do no float64 arithmetic, and prints for each
kernel the registers, spilled bytes, stack frame and shared memory ``ptxas -v`` reports
(ptxas from ``numba-cuda[cu12]``'s nvidia-cuda-nvcc-cu12 wheel, ``$CUDA_HOME`` or the
PATH); it exits 1 when a kernel spills registers, 3 when no compiler is found.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    # as tests/cuda/conftest.py: the simulator busy-polls for barriers holding the GIL, and a
    # short switch interval hands it back sooner (speed only; numbaconv.kernels.cuda.simulator
    # fixes the simulator race the finer interleaving can expose)
    sys.setswitchinterval(1e-4)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="numbaconv CUDA backend: parity, kernel timings and a LeNet epoch "
                    "against PyTorch on the same GPU.")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny sizes, for a smoke run under NUMBA_ENABLE_CUDASIM=1")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per kernel, the median is reported "
                             "(default 20, 1 with --tiny)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed runs before timing (default 3, 1 with --tiny)")
    parser.add_argument("--samples", type=int, default=None,
                        help="synthetic training images (default 60000, 8 with --tiny)")
    parser.add_argument("--skip-train", action="store_true", help="skip the training epoch")
    parser.add_argument("--profile", action="store_true",
                        help="also time each launch of a LeNet training step")
    parser.add_argument("--sweep", action="store_true",
                        help="also time the 64-channel convolution's kernels for each tile shape")
    parser.add_argument("--ptx", action="store_true",
                        help="only compile every kernel to PTX (no GPU needed), print each "
                             "one's registers, spills and shared memory (ptxas) and exit")
    parser.add_argument("--cc", default="8.0,9.0",
                        help="compute capabilities for --ptx, comma-separated "
                             "(default 8.0,9.0)")
    parser.add_argument("--max-registers", type=int, default=None,
                        help="--ptx: assemble with ptxas --maxrregcount N, to see which "
                             "kernels would spill under that limit")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.tiny else 20
    if args.warmup is None:
        args.warmup = 1 if args.tiny else 3
    if args.samples is None:
        args.samples = 8 if args.tiny else 60000
    if args.repeats < 1 or args.warmup < 0 or args.samples < 1:
        parser.error("--repeats and --samples must be positive, --warmup not negative")
    return args


# ============================================================================== PTX compilation

def _kernel_signatures(dt):
    """(label, kernel dispatcher, argument types) of every kernel of the backend for float
    type dt; a convolution kernel's label names its tile shape (TM x TN x BK)."""
    from numba import types

    from numbaconv.kernels.cuda import adaptive_pool, config, conv, norm, ops, pool

    def arr(ndim):
        return types.Array(dt, ndim, "C")

    def ints(ndim):
        return types.Array(types.int64, ndim, "C")

    def f64(ndim):
        return types.Array(types.float64, ndim, "C")

    i, b = types.int64, types.boolean
    cross_entropy_mean, correct_count, nonfinite_count = ops._row_sums_kernels()
    batch_stats, grad_sums = norm._reduction_kernels()
    table = types.Array(types.int32, 2, "C")
    # the narrowest tile shape conv.pick_tiles chooses and each pass's wide one
    conv_tiles = sorted({conv.Tiles(1, 1, config.CONV_SIDE).key(),
                         *(conv.Tiles(*wide).key() for wide in (
                             config.CONV_FORWARD_TILES, config.CONV_GRAD_INPUT_TILES,
                             config.CONV_GRAD_WEIGHT_TILES))})
    conv_kernels = [
        (conv.forward_kernel, (arr(4), arr(2), arr(1), table, arr(4)) + (i,) * 5 + (b, i)),
        (conv.grad_input_kernel, (arr(4), arr(3), table, arr(4)) + (i,) * 4),
        (conv.grad_weight_kernel, (arr(4), arr(4), table, arr(2)) + (i,) * 6),
    ]
    kernels = [
        (ops._bias_act_forward_kernel, (arr(3), arr(1), arr(3), b, i)),
        (ops._act_backward_kernel, (arr(1), arr(1), arr(1), i)),
        (ops._channel_partial_kernel, (arr(3), arr(2), i)),
        (ops._sum_chunks_kernel, (arr(2), arr(1), dt)),
        (ops._xent_grad_kernel, (arr(2), ints(1), arr(2), dt)),
        (cross_entropy_mean, (arr(2), ints(1), f64(0))),
        (correct_count, (arr(2), ints(1), ints(0))),
        (nonfinite_count, (arr(1), ints(0))),
        (ops._accumulate_kernel, (f64(1), i, f64(0), types.float64)),
        (ops._accumulate_kernel, (f64(1), i, ints(0), types.float64)),
        (ops._gather_rows_kernel, (arr(2), ints(1), ints(1), arr(2), ints(1), i)),
        (ops._dropout_kernel, (arr(1), types.Array(types.uint8, 1, "C"), dt, arr(1), arr(1))),
        (ops._binary_kernel, (arr(1), arr(1), arr(1), b)),
        (ops._channels_kernel, (arr(3), arr(3), i, b)),
        (ops._act_pool2x2_backward_kernel, (arr(3), arr(3), arr(3), i, b)),
        (ops._sgd_kernel, (arr(1), arr(1), arr(1), dt, dt, dt, dt, b, b, b, b)),
        (ops._adam_kernel, (arr(1),) * 4 + (dt,) * 6 + (types.float64,) * 3 + (b, i)),
        (ops._gemm_kernel(str(dt)), (arr(2), arr(2), arr(1), arr(2), b, b, b, i)),
        (pool._max_pool_forward_kernel, (arr(3), arr(3), ints(3)) + (i,) * 8),
        (pool._max_pool_backward_gather_kernel, (arr(3), ints(3), arr(3)) + (i,) * 8),
        (pool._max_pool_backward_plane_kernel, (arr(2), ints(2), arr(2))),
        (pool._avg_pool_forward_kernel, (arr(3), arr(3)) + (i,) * 6 + (b, i)),
        (pool._avg_pool_backward_kernel, (arr(3), arr(3)) + (i,) * 6 + (b, i)),
        (batch_stats, (arr(3), arr(1), arr(1), b, b, types.float64, f64(1), f64(1), arr(2),
                       arr(1), arr(1), ints(0), b, b, types.float64)),
        (grad_sums, (arr(3), arr(3), f64(1), f64(1), arr(1), b, b, arr(1), arr(1), arr(2))),
        (norm._fixed_stats_kernel, (arr(1), arr(1), arr(1), arr(1), b, b, types.float64,
                                    f64(1), f64(1), arr(2))),
        (norm._count_batch_kernel, (ints(0),)),
        (norm._normalise_kernel, (arr(3), arr(2), arr(3))),
        (norm._input_grad_kernel, (arr(3), arr(3), arr(2), b, arr(3))),
        (adaptive_pool._avg_forward_kernel, (arr(3), arr(3))),
        (adaptive_pool._avg_backward_kernel, (arr(3), arr(3))),
        (adaptive_pool._max_forward_kernel, (arr(3), arr(3), ints(3))),
    ]
    labelled = [(kernel.py_func.__name__, kernel, signature) for kernel, signature in kernels]
    for make, signature in conv_kernels:
        for tm, tn, bk, side in conv_tiles:
            kernel = make(str(dt), (tm, tn, bk, side))
            labelled.append((f"{kernel.py_func.__name__} {tm}x{tn}x{bk}", kernel, signature))
    return labelled


@dataclass
class Resources:
    """What ptxas reports for one function: registers per thread, bytes of registers
    spilled to local memory (stores and loads), bytes of stack frame (local arrays and
    spills) and bytes of static shared memory."""

    registers: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    stack: int = 0
    smem: int = 0

    @property
    def spills(self) -> bool:
        return self.spill_stores > 0 or self.spill_loads > 0


_ENTRY = re.compile(r"Compiling entry function '([^']+)'")
_PROPERTIES = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas_report(report: str) -> dict[str, Resources]:
    """``ptxas -v``'s report (its stderr) as {function's mangled name: Resources}: every
    function with a "Function properties" block (kernels and device functions it kept), and
    for each kernel ("entry function") its registers and shared memory."""
    functions: dict[str, Resources] = {}
    entry = current = None
    for line in report.splitlines():
        if match := _ENTRY.search(line):
            entry = match.group(1)
            functions.setdefault(entry, Resources())
        elif match := _PROPERTIES.search(line):
            current = match.group(1)
            functions.setdefault(current, Resources())
        elif (match := _FRAME.search(line)) and current is not None:
            stack, stores, loads = (int(group) for group in match.groups())
            resources = functions[current]
            resources.stack, resources.spill_stores, resources.spill_loads = stack, stores, loads
        elif (match := _USED.search(line)) and entry is not None:
            functions[entry].registers = int(match.group(1))
            if smem := _SMEM.search(line):
                functions[entry].smem = int(smem.group(1))
    return functions


def find_ptxas() -> str | None:
    """ptxas from NVIDIA's wheels (numba-cuda[cu12] brings nvidia-cuda-nvcc-cu12), else
    $CUDA_HOME/bin or the PATH; None if there is none."""
    try:
        from cuda.pathfinder import find_nvidia_binary_utility

        found = find_nvidia_binary_utility("ptxas")
    except (ImportError, RuntimeError):
        found = None
    if found:
        return found
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home and os.access(os.path.join(cuda_home, "bin", "ptxas"), os.X_OK):
        return os.path.join(cuda_home, "bin", "ptxas")
    return shutil.which("ptxas")


def ptxas_resources(ptx: str, cc: tuple[int, int], ptxas: str,
                    options: tuple[str, ...] = ()) -> dict[str, Resources]:
    """Assemble ``ptx`` for sm_<cc> with ``ptxas -v`` (and ``options``, e.g.
    ``--maxrregcount``); its report parsed by :func:`parse_ptxas_report`."""
    with tempfile.TemporaryDirectory() as folder:
        source = os.path.join(folder, "kernel.ptx")
        with open(source, "w") as file:
            file.write(ptx)
        proc = subprocess.run([ptxas, "-v", f"-arch=sm_{cc[0]}{cc[1]}", *options, "-o",
                               os.path.join(folder, "kernel.cubin"), source],
                              capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"ptxas failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return parse_ptxas_report(proc.stderr)


def _pretend_device(cc: tuple[int, int]) -> None:
    """Device functions called from a kernel are compiled for the current device's compute
    capability; without a GPU, name one (this touches only this checking process)."""
    import types as pytypes

    import numba.cuda.dispatcher as dispatcher

    dispatcher.get_current_device = lambda: pytypes.SimpleNamespace(compute_capability=cc)


# Kernels whose float32 versions compute in float64 on purpose: the loss and the hits summed
# over a batch, the epoch's running totals, Adam's bias corrections (once per thread).
FLOAT64_BY_DESIGN = {"cross_entropy_mean", "correct_count", "nonfinite_count",
                     "_accumulate_kernel", "_adam_kernel",
                     # batch norm's per-channel statistics
                     "batch_stats", "grad_sums", "_fixed_stats_kernel"}


def ptx_check(cc_text: str, max_registers: int | None = None,
              signatures=_kernel_signatures) -> int:
    """Compile every kernel (of ``signatures(float type)``: (label, kernel, argument types))
    to PTX for each compute capability in ``cc_text`` ("8.0,9.0") and, with ptxas (limited
    to ``max_registers`` per thread if given), report each kernel's registers, spills, stack
    and shared memory; 0 ok, 1 a kernel failed, does float64 arithmetic in float32 or spills,
    3 no compiler (or the simulator)."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        print("--ptx needs the real numba-cuda compiler: unset NUMBA_ENABLE_CUDASIM")
        return 3
    from numba import cuda
    from numba import types as nbtypes

    ccs = [tuple(int(part) for part in cc.split(".")) for cc in cc_text.split(",")]

    def probe(a):
        a[0] = 1.0

    try:
        cuda.compile_ptx(probe, (nbtypes.float32[::1],), cc=ccs[0])
    except Exception as exc:
        print(f"no CUDA compiler (NVVM/NVRTC) found, e.g. pip install 'numba-cuda[cu12]': "
              f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        return 3
    ptxas = find_ptxas()
    if ptxas is None:
        print("ptxas not found (pip install 'numba-cuda[cu12]' brings it): registers, "
              "spills and shared memory are not reported")
    options = ("--maxrregcount", str(max_registers)) if max_registers else ()
    failures, wide, spilled = [], [], []
    for cc in ccs:
        arch = f"sm_{cc[0]}{cc[1]}"
        if not cuda.is_available():
            _pretend_device(cc)
        for dt in (nbtypes.float32, nbtypes.float64):
            for kernel_name, kernel, signature in signatures(dt):
                name = f"{kernel_name}{signature}"
                try:
                    ptx, _ = cuda.compile_ptx(kernel.py_func, signature, cc=cc)
                    functions = ptxas_resources(ptx, cc, ptxas, options) if ptxas else {}
                except Exception as exc:
                    failures.append(f"{name} for {arch}")
                    print(f"FAIL {name} for {arch}\n{exc}")
                    continue
                f64 = sum(1 for line in ptx.splitlines()
                          if ".f64" in line and not line.strip().startswith("//"))
                if (dt == nbtypes.float32 and f64 and "int64" not in str(signature[0])
                        and kernel.py_func.__name__ not in FLOAT64_BY_DESIGN):
                    wide.append(f"{kernel_name} for {arch} ({f64} lines)")
                report = ""
                if functions:  # the kernel, and any device function ptxas kept apart
                    kernel_resources = max(functions.values(), key=lambda r: r.registers)
                    stores = sum(r.spill_stores for r in functions.values())
                    loads = sum(r.spill_loads for r in functions.values())
                    report = (f": {kernel_resources.registers} registers, spills {stores}/"
                              f"{loads} bytes (stores/loads), stack {kernel_resources.stack} "
                              f"bytes, smem {kernel_resources.smem} bytes")
                    if stores or loads:
                        spilled.append(f"{kernel_name} [{dt}] {arch} ({stores}/{loads} bytes)")
                print(f"ok   {kernel_name} [{dt}] {arch}{report} ({len(ptx)} chars of PTX)")
        print(f"compiled for {arch}: {sum(f.endswith(arch) for f in failures)} failures")
    print("float32 kernels with float64 arithmetic: " + (", ".join(wide) or "none"))
    if ptxas:
        print("kernels that spill registers: " + (", ".join(spilled) or "none"))
    return 1 if failures or wide or spilled else 0


# ============================================================================== helpers

class Env:
    """The backend, PyTorch and where PyTorch runs; set up once."""

    def __init__(self, tiny: bool):
        import numpy as np
        import torch

        from numbaconv.kernels import cuda as nk

        ok, reason = nk.cuda_available()
        if not ok:
            raise SystemExit(f"numbaconv's CUDA backend is unavailable: {reason}")
        self.np, self.torch, self.nk = np, torch, nk
        self.sim = nk.simulator_enabled()
        if not self.sim and not tiny and not torch.cuda.is_available():
            raise SystemExit("PyTorch sees no CUDA device; use --tiny under the simulator")
        self.tdev = torch.device("cuda" if torch.cuda.is_available() and not self.sim
                                 else "cpu")
        if self.tdev.type == "cuda":
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.benchmark = True
        self.card = nk.device_name() if not self.sim else "CUDA simulator"
        self.torch_card = (torch.cuda.get_device_name() if self.tdev.type == "cuda"
                           else "CPU")

    def sync(self):
        self.nk.synchronize()
        if self.tdev.type == "cuda":
            self.torch.cuda.synchronize()

    def both(self, array):
        """The same host array as a numba device array and a torch tensor."""
        return self.nk.to_device(array), self.torch.from_numpy(array.copy()).to(self.tdev)

    def median_ms(self, fn, repeats, warmup):
        for _ in range(warmup):
            fn()
        self.sync()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            self.sync()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)


def rel_err(env, ours, theirs) -> float:
    """max |ours - theirs| / max |theirs| (0 for two empty arrays)."""
    np = env.np
    a = env.nk.to_host(ours).astype(np.float64)
    b = theirs.detach().cpu().numpy().astype(np.float64)
    if a.shape != b.shape:
        raise AssertionError(f"shape {a.shape} != {b.shape}")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


# ============================================================================== parity + timing

def lenet_widths(tiny: bool):
    """LeNet's two hidden fully connected widths; narrow with --tiny (the simulator's barriers
    make the tiled product slow)."""
    return (8, 6) if tiny else (120, 84)


def layer_cases(tiny: bool):
    """(name, kind, params) of the layers checked; shapes shrink with --tiny."""
    h1, h2 = lenet_widths(tiny)
    if tiny:
        lenet_n, img, big_n, big_c, big_hw = 2, 12, 2, 3, 7
    else:
        lenet_n, img, big_n, big_c, big_hw = 256, 28, 32, 64, 56
    after1 = img // 2
    after2 = (after1 - 4) // 2
    return [
        ("LeNet conv1 5x5 pad2 + sigmoid", "conv",
         dict(x=(lenet_n, 1, img, img), w=(6, 1, 5, 5), pad=2, act="sigmoid")),
        ("LeNet avgpool1 2x2", "avg", dict(x=(lenet_n, 6, img, img), k=2)),
        ("LeNet conv2 5x5 + sigmoid", "conv",
         dict(x=(lenet_n, 6, after1, after1), w=(16, 6, 5, 5), pad=0, act="sigmoid")),
        ("LeNet avgpool2 2x2", "avg", dict(x=(lenet_n, 16, after1 - 4, after1 - 4), k=2)),
        ("LeNet fc1 + sigmoid", "linear",
         dict(x=(lenet_n, 16 * after2 * after2), w=(h1, 16 * after2 * after2), act="sigmoid")),
        ("LeNet fc2 + sigmoid", "linear", dict(x=(lenet_n, h1), w=(h2, h1), act="sigmoid")),
        ("LeNet fc3", "linear", dict(x=(lenet_n, h2), w=(10, h2), act=None)),
        ("softmax cross-entropy", "xent", dict(x=(lenet_n, 10))),
        (f"conv {big_c}->{big_c} 3x3 pad1 {big_hw}x{big_hw}", "conv",
         dict(x=(big_n, big_c, big_hw, big_hw), w=(big_c, big_c, 3, 3), pad=1, act=None)),
        ("maxpool 2x2 of it", "max", dict(x=(big_n, big_c, big_hw, big_hw), k=2)),
    ]


def check_layer(env, kind, p, rng, repeats, warmup):
    """(errors {name: rel err}, ours fwd ms, torch fwd ms, ours bwd ms, torch bwd ms)."""
    np, torch, nk = env.np, env.torch, env.nk
    F = torch.nn.functional
    f32 = np.float32
    x_host = rng.standard_normal(p["x"]).astype(f32)
    x, tx = env.both(x_host)
    tx.requires_grad_(True)
    if kind in ("conv", "linear"):
        fan_in = int(np.prod(p["w"][1:]))
        w_host = (rng.standard_normal(p["w"]) / np.sqrt(fan_in)).astype(f32)
        b_host = (0.1 * rng.standard_normal(p["w"][0])).astype(f32)
        (w, tw), (b, tb) = env.both(w_host), env.both(b_host)
        tw.requires_grad_(True)
        tb.requires_grad_(True)
    if kind == "conv":
        pad = p["pad"]
        geo = ((1, 1), ((pad, pad), (pad, pad)), (1, 1), 1)

        def ours_fwd():
            return nk.conv2d_forward(x, w, b, *geo, activation=p["act"])

        def torch_fwd():
            y = F.conv2d(tx, tw, tb, 1, pad)
            return torch.sigmoid(y) if p["act"] == "sigmoid" else y
        y = ours_fwd()

        def ours_bwd():
            return nk.conv2d_backward(gy, x, w, *geo, y=y, activation=p["act"])
        inputs = (tx, tw, tb)
    elif kind == "linear":
        def ours_fwd():
            return nk.linear_forward(x, w, b, activation=p["act"])

        def torch_fwd():
            y = F.linear(tx, tw, tb)
            return torch.sigmoid(y) if p["act"] == "sigmoid" else y
        y = ours_fwd()

        def ours_bwd():
            return nk.linear_backward(gy, x, w, y=y, activation=p["act"])
        inputs = (tx, tw, tb)
    elif kind == "avg":
        k = (p["k"], p["k"])
        out_hw = (p["x"][2] // p["k"], p["x"][3] // p["k"])

        def ours_fwd():
            return nk.avg_pool2d_forward(x, k, k, (0, 0), out_hw, True, 0)

        def torch_fwd():
            return F.avg_pool2d(tx, k)
        y = ours_fwd()

        def ours_bwd():
            return (nk.avg_pool2d_backward(gy, p["x"], k, k, (0, 0), True, 0),)
        inputs = (tx,)
    elif kind == "max":
        k = (p["k"], p["k"])
        out_hw = (p["x"][2] // p["k"], p["x"][3] // p["k"])

        def ours_fwd():
            return nk.max_pool2d_forward(x, k, k, (0, 0), (1, 1), out_hw)

        def torch_fwd():
            return F.max_pool2d(tx, k)
        y, idx = ours_fwd()

        def ours_bwd():
            return (nk.max_pool2d_backward(gy, idx, p["x"], kernel=k, stride=k,
                                           padding=(0, 0), dilation=(1, 1)),)
        inputs = (tx,)
    elif kind == "xent":
        labels_host = rng.integers(0, p["x"][1], p["x"][0]).astype(np.int64)
        labels, tlabels = env.both(labels_host)

        def ours_fwd():
            return nk.cross_entropy(x, labels), nk.cross_entropy_backward(x, labels)

        def torch_fwd():
            return F.cross_entropy(tx, tlabels)
        y = ours_fwd()

        def ours_bwd():
            return (y[1],)
        inputs = (tx,)
    else:
        raise ValueError(kind)

    ty = torch_fwd()
    ours_y = y[0] if isinstance(y, tuple) else y
    errors = {"y": rel_err(env, ours_y, ty)}
    if kind == "xent":
        tgy = torch.ones((), device=env.tdev)
    else:
        gy, tgy = env.both(rng.standard_normal(tuple(ty.shape)).astype(f32))
    grads = ours_bwd()
    tgrads = torch.autograd.grad(ty, inputs, tgy, retain_graph=True)
    for name, g, tg in zip(("grad_x", "grad_w", "grad_b")[:len(grads)], grads, tgrads,
                           strict=True):
        errors[name] = rel_err(env, g, tg)

    ours_f = env.median_ms(ours_fwd, repeats, warmup)
    torch_f = env.median_ms(torch_fwd, repeats, warmup)
    ours_b = env.median_ms(ours_bwd, repeats, warmup) if kind != "xent" else float("nan")
    torch_b = env.median_ms(
        lambda: torch.autograd.grad(ty, inputs, tgy, retain_graph=True), repeats, warmup) \
        if kind != "xent" else float("nan")
    return errors, ours_f, torch_f, ours_b, torch_b


# ============================================================================== LeNet epoch

def lenet_pair(env, img, widths, seed):
    """D2L's LeNet for img x img inputs as a numbaconv Sequential (its own Xavier init) and
    as a torch nn.Sequential holding the same weights; the layer indices (hence the parameter
    names) agree."""
    torch = env.torch
    from numbaconv.init import xavier_uniform_weights_
    from numbaconv.layers import AvgPool2d, Conv2d, Flatten, Linear, Sequential, Sigmoid

    flat = 16 * ((img // 2 - 4) // 2) ** 2
    rng = env.np.random.default_rng(seed)
    ours = Sequential([
        Conv2d(1, 6, 5, padding=2, rng=rng), Sigmoid(), AvgPool2d(2, stride=2),
        Conv2d(6, 16, 5, rng=rng), Sigmoid(), AvgPool2d(2, stride=2), Flatten(),
        Linear(flat, widths[0], rng=rng), Sigmoid(), Linear(widths[0], widths[1], rng=rng),
        Sigmoid(), Linear(widths[1], 10, rng=rng)])
    xavier_uniform_weights_(ours, rng)
    theirs = torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 5, padding=2), torch.nn.Sigmoid(), torch.nn.AvgPool2d(2, 2),
        torch.nn.Conv2d(6, 16, 5), torch.nn.Sigmoid(), torch.nn.AvgPool2d(2, 2),
        torch.nn.Flatten(), torch.nn.Linear(flat, widths[0]), torch.nn.Sigmoid(),
        torch.nn.Linear(widths[0], widths[1]), torch.nn.Sigmoid(),
        torch.nn.Linear(widths[1], 10))
    theirs.load_state_dict({name: torch.from_numpy(value.copy())
                            for name, value in ours.named_params().items()})
    return ours, theirs.to(env.tdev)


def train_epoch(env, img, widths, samples, batch, lr, seed):
    """D2L's LeNet (SGD) on synthetic data of Fashion-MNIST's size on both engines, from the
    same weights and in the same shuffled orders: epoch 1 untimed (JIT compilation, cuDNN
    autotuning, the first step's buffers and prepared launches), epoch 2 timed.

    numbaconv trains as its training loop does on `--device cuda`: the model moved to the
    device, each batch gathered there by Device.take, the layers computing through
    numbaconv.functional, the step's buffers and launches captured once and replayed, one
    host transfer per epoch; PyTorch the usual loop over tensors already on the device.
    Returns ({engine: (epoch 2's train seconds, its mean training loss)}, a function running
    one more training step of ours, for profile_step).
    """
    np, torch = env.np, env.torch
    from numbaconv import functional as F
    from numbaconv.devices import get_device
    from numbaconv.kernels.cuda import config
    from numbaconv.optim import SGD
    from numbaconv.training import epoch_rng

    rng = np.random.default_rng(seed)
    images = rng.standard_normal((samples, 1, img, img)).astype(np.float32)
    teacher = rng.standard_normal((img * img, 10)).astype(np.float32)
    labels = np.argmax(images.reshape(samples, -1) @ teacher, axis=1).astype(np.int64)
    device = get_device("cuda")

    def ours_epochs(prepared):
        """(epoch 2's seconds, its mean loss, one more step, the torch twin), the launches
        prepared or through the dispatcher."""
        saved, config.PREPARED_LAUNCHES = config.PREPARED_LAUNCHES, prepared
        try:
            ours, model = lenet_pair(env, img, widths, seed)
            ours.to(device)
            optimizer = SGD(ours.named_params(), lr=lr)
            x_all, y_all = device.put(images), device.put(labels)

            def step(order, start, totals):
                x, y = device.take(x_all, y_all, order, start, min(samples, start + batch))
                logits = ours.forward(x, training=True)
                totals.add(0, F.cross_entropy(logits, y), scale=x.shape[0])
                ours.backward(F.cross_entropy_backward(logits, y), need_input_grad=False)
                optimizer.step(ours.named_grads())

            def epoch(number):
                totals = device.totals(1)
                order = device.put(epoch_rng(seed, number, 0).permutation(samples))
                for start in range(0, samples, batch):
                    step(order, start, totals)
                return totals.read()[0] / samples

            epoch(1)
            env.sync()
            begin = time.perf_counter()
            loss = epoch(2)
            seconds = time.perf_counter() - begin
            order, totals = device.put(np.arange(samples, dtype=np.int64)), device.totals(1)
            return seconds, loss, lambda: step(order, 0, totals), model
        finally:
            config.PREPARED_LAUNCHES = saved

    results = {}
    slow_seconds, slow_loss, _, _ = ours_epochs(False)
    results["numbaconv, launches through the dispatcher"] = (slow_seconds, slow_loss)
    seconds, loss, warm, model = ours_epochs(True)
    results["numbaconv"] = (seconds, loss)

    x_all = torch.from_numpy(images).to(env.tdev)
    t_all = torch.from_numpy(labels).to(env.tdev)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)

    def torch_epoch(epoch):
        order = torch.from_numpy(epoch_rng(seed, epoch, 0).permutation(samples)).to(env.tdev)
        total = torch.zeros((), device=env.tdev)
        for start in range(0, samples, batch):
            rows = order[start:start + batch]
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(x_all[rows]), t_all[rows])
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(rows)
        return total

    torch_epoch(1)
    env.sync()
    begin = time.perf_counter()
    total = torch_epoch(2)
    env.sync()
    results["torch"] = (time.perf_counter() - begin, float(total) / samples)
    return results, warm


def profile_step(env, warm, repeats):
    """Where a warm training step's time goes: each launch of the replayed step for a full
    batch timed alone (synchronized before and after; median over ``repeats`` steps), and
    the host's time to queue a whole step against the step's time with the GPU."""
    np = env.np
    from numbaconv.kernels.cuda import steps as captured

    step = warm
    replay = captured.launch
    times: dict[tuple[int, str], list[float]] = {}
    position = [0]

    def timed(kernel, griddim, blockdim, *args, start=None):
        env.sync()
        begin = time.perf_counter()
        replay(kernel, griddim, blockdim, *args, start=start)
        env.sync()
        key = (position[0], kernel.py_func.__name__)
        times.setdefault(key, []).append(1e3 * (time.perf_counter() - begin))
        position[0] += 1

    step()  # once more, so that every launch below replays a recorded one
    captured.launch = timed
    try:
        for _ in range(max(1, repeats)):
            position[0] = 0
            step()
    finally:
        captured.launch = replay
    print(f"\n| launch of a training step ({len(times)} launches) | ms, alone with a "
          "synchronize |")
    print("|---|---:|")
    for (index, name), values in times.items():
        print(f"| {index}: {name} | {np.median(values):.3f} |")
    count = 2 if env.sim else 20
    env.sync()
    begin = time.perf_counter()
    for _ in range(count):
        step()
    queued = time.perf_counter()
    env.sync()
    done = time.perf_counter()
    print(f"\nwhole step: {1e3 * (done - begin) / count:.3f} ms; the host queues it in "
          f"{1e3 * (queued - begin) / count:.3f} ms")


def sweep_tiles(env, params, rng, repeats, warmup):
    """Time the convolution kernels of one layer for each tile shape (checked against the
    default shapes' results), to choose config.CONV_*_TILES."""
    np, nk = env.np, env.nk
    from numbaconv.kernels.cuda import config, conv

    pad = params["pad"]
    geometry = ((1, 1), ((pad, pad), (pad, pad)), (1, 1))
    x = nk.to_device(rng.standard_normal(params["x"]).astype(np.float32))
    w = nk.to_device(rng.standard_normal(params["w"]).astype(np.float32) * 0.1)
    y = nk.to_device(np.zeros(params["x"][:1] + params["w"][:1] + params["x"][2:],
                              dtype=np.float32))
    gy = nk.to_device(rng.standard_normal(y.shape).astype(np.float32))
    outputs = {"forward": y, "grad input": nk.zeros_like(x), "grad weight": nk.zeros_like(w)}
    launches = {
        "forward": lambda t: conv.forward_launch(x, w, None, outputs["forward"], *geometry,
                                                 tiles=t),
        "grad input": lambda t: conv.grad_input_launch(gy, w, outputs["grad input"],
                                                       *geometry, tiles=t),
        "grad weight": lambda t: conv.grad_weight_launch(gy, x, outputs["grad weight"],
                                                         *geometry, tiles=t),
    }
    side = config.CONV_SIDE
    shapes = [(4, 4, 16), (4, 8, 16), (8, 4, 16), (4, 4, 8), (4, 8, 8), (8, 8, 8), (4, 4, 32),
              (2, 4, 16)] if not env.sim else [(1, 2, 4), (2, 2, 4), (2, 4, 4)]
    print(f"\n| tiles (TM, TN, BK), {side}x{side} threads | forward ms | grad input ms "
          "| grad weight ms |")
    print("|---|---:|---:|---:|")
    reference = {}
    for name, make in launches.items():
        make(None)()
        reference[name] = nk.to_host(outputs[name])
    for tm, tn, bk in shapes:
        try:
            tiles = conv.Tiles(tm, tn, bk)
        except ValueError:
            continue
        cells = []
        for name, make in launches.items():
            launch = make(tiles)
            ms = env.median_ms(launch, repeats, warmup)
            got = nk.to_host(outputs[name])
            err = np.max(np.abs(got - reference[name])) / np.max(np.abs(reference[name]))
            cells.append(f"{ms:.3f}" + ("" if err < 1e-4 else f" (err {err:.0e})"))
        print(f"| {tm}, {tn}, {bk} | " + " | ".join(cells) + " |")


# ============================================================================== main

def main(argv=None) -> int:
    args = parse_args(argv)
    if args.ptx:
        return ptx_check(args.cc, args.max_registers)
    env = Env(args.tiny)
    np = env.np
    rng = np.random.default_rng(args.seed)
    tolerance = 1e-4
    print(f"## numbaconv CUDA backend on {env.card} (PyTorch {env.torch.__version__} on "
          f"{env.torch_card}{', tiny sizes' if args.tiny else ''})\n")
    print("| layer | input | max rel err (y, grads) | numbaconv fwd ms | torch fwd ms "
          "| numbaconv bwd ms | torch bwd ms |")
    print("|---|---|---|---:|---:|---:|---:|")
    failed, throughput = [], ""
    for name, kind, params in layer_cases(args.tiny):
        errors, of, tf, ob, tb = check_layer(env, kind, params, rng, args.repeats, args.warmup)
        worst = max(errors.values())
        if not worst <= tolerance:
            failed.append(f"{name}: {errors}")
        print(f"| {name} | {'x'.join(map(str, params['x']))} | {worst:.1e} | {of:.3f} | "
              f"{tf:.3f} | {ob:.3f} | {tb:.3f} |")
        if kind == "conv" and params["w"][0] == params["w"][1]:  # the 64-channel layer
            n, c, h, w = params["x"]
            flops = 2 * n * c * c * 9 * h * w
            throughput = (f"{name} forward: numbaconv {flops / of / 1e9:.2f} TFLOP/s, torch "
                          f"{flops / tf / 1e9:.2f} TFLOP/s: {100 * tf / of:.1f}% of torch's "
                          f"throughput (target >= 30%)")
    print(f"\n{throughput}")
    if args.sweep:
        sweep_tiles(env, layer_cases(args.tiny)[-2][2], rng, args.repeats, args.warmup)
    if not args.skip_train:
        img, batch = (12, 2) if args.tiny else (28, 256)
        results, warm = train_epoch(env, img, lenet_widths(args.tiny), args.samples,
                                    batch, 0.9, args.seed)
        print(f"\n| LeNet epoch 2 (SGD), {args.samples} x 1 x {img} x {img}, batch {batch} "
              "| seconds | images/s | mean training loss |")
        print("|---|---:|---:|---:|")
        for engine, (seconds, loss) in results.items():
            print(f"| {engine} | {seconds:.3f} | {args.samples / seconds:,.0f} | {loss:.4f} |")
        ratio = results["numbaconv"][0] / results["torch"][0]
        print(f"\nnumbaconv's epoch takes {ratio:.2f}x PyTorch's (target <= 1)")
        if args.profile:
            profile_step(env, warm, args.repeats)
        if not np.isfinite(results["numbaconv"][1]):
            failed.append("training loss is not finite")
        if results["numbaconv"][1] != results["numbaconv, launches through the dispatcher"][1]:
            failed.append("prepared and dispatcher launches trained to different losses")
    if failed:
        print(f"\nFAILURES (parity tolerance {tolerance:.0e}):\n" + "\n".join(failed))
        return 1
    print(f"\nall parity checks within {tolerance:.0e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
