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
float32 and float64 with the real CUDA compiler (NVVM; no GPU needed) and checks that the
float32 kernels do no float64 arithmetic; it exits 3 when no compiler is found.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

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
    parser.add_argument("--ptx", action="store_true",
                        help="only compile every kernel to PTX (no GPU needed) and exit")
    parser.add_argument("--cc", default="8.0",
                        help="compute capability for --ptx, e.g. 8.0 or 9.0 (default 8.0)")
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
    """(kernel dispatcher, argument types) of every kernel of the backend for float type dt."""
    from numba import types

    from numbaconv.kernels.cuda import conv, ops, pool

    def arr(ndim):
        return types.Array(dt, ndim, "C")

    def ints(ndim):
        return types.Array(types.int64, ndim, "C")

    i, b = types.int64, types.boolean
    return [
        (ops._bias_act_forward_kernel, (arr(3), arr(1), arr(3), b, i)),
        (ops._act_backward_kernel, (arr(1), arr(1), arr(1), i)),
        (ops._channel_partial_kernel, (arr(3), arr(2), i)),
        (ops._channel_partial_kernel, (ints(3), ints(2), i)),
        (ops._sum_chunks_kernel, (arr(2), arr(1), dt)),
        (ops._sum_chunks_kernel, (ints(2), ints(1), types.int64)),
        (ops._softmax_xent_rows_kernel, (arr(2), ints(1), arr(2), arr(1), dt)),
        (ops._argmax_match_kernel, (arr(2), ints(1), ints(2))),
        (ops._sgd_kernel, (arr(1), arr(1), arr(1), dt, dt, dt, b, b)),
        (ops._adam_kernel, (arr(1),) * 4 + (dt,) * 8 + (b,)),
        (ops._gemm_kernel(str(dt)), (arr(2), arr(2), arr(1), arr(2), b, b, b, i)),
        (conv._conv2d_forward_kernel, (arr(4), arr(4), arr(1), arr(4)) + (i,) * 6 + (b, i)),
        (conv._conv2d_grad_input_kernel, (arr(4), arr(4), arr(4)) + (i,) * 6),
        (conv._conv2d_grad_weight_partial_kernel, (arr(4), arr(4), arr(2)) + (i,) * 9),
        (pool._max_pool_forward_kernel, (arr(3), arr(3), ints(3)) + (i,) * 8),
        (pool._max_pool_backward_gather_kernel, (arr(3), ints(3), arr(3)) + (i,) * 8),
        (pool._max_pool_backward_plane_kernel, (arr(2), ints(2), arr(2))),
        (pool._avg_pool_forward_kernel, (arr(3), arr(3)) + (i,) * 6 + (b, i)),
        (pool._avg_pool_backward_kernel, (arr(3), arr(3)) + (i,) * 6 + (b, i)),
    ]


def ptx_check(cc_text: str) -> int:
    """Compile every kernel to PTX; 0 ok, 1 a kernel failed, 3 no compiler (or simulator)."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        print("--ptx needs the real numba-cuda compiler: unset NUMBA_ENABLE_CUDASIM")
        return 3
    import types as pytypes

    from numba import cuda
    from numba import types as nbtypes

    cc = tuple(int(part) for part in cc_text.split("."))

    def probe(a):
        a[0] = 1.0

    try:
        cuda.compile_ptx(probe, (nbtypes.float32[::1],), cc=cc)
    except Exception as exc:
        print(f"no CUDA compiler (NVVM/NVRTC) found, e.g. pip install nvidia-nvvm "
              f"nvidia-cuda-nvrtc: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        return 3
    if not cuda.is_available():
        # Device functions called from a kernel are compiled for the current device's compute
        # capability; without a GPU, name one (this touches only this checking process).
        import numba.cuda.dispatcher as dispatcher

        dispatcher.get_current_device = lambda: pytypes.SimpleNamespace(compute_capability=cc)
    failures, wide = [], []
    for dt in (nbtypes.float32, nbtypes.float64):
        for kernel, signature in _kernel_signatures(dt):
            name = f"{kernel.py_func.__name__}{signature}"
            try:
                ptx, _ = cuda.compile_ptx(kernel.py_func, signature, cc=cc)
            except Exception as exc:
                failures.append(name)
                print(f"FAIL {name}\n{exc}")
                continue
            f64 = sum(1 for line in ptx.splitlines()
                      if ".f64" in line and not line.strip().startswith("//"))
            if dt == nbtypes.float32 and f64 and "int64" not in str(signature[0]):
                wide.append(f"{kernel.py_func.__name__} ({f64} lines)")
            print(f"ok   {kernel.py_func.__name__} [{dt}] ({len(ptx)} chars of PTX)")
    print(f"compiled for sm_{cc[0]}{cc[1]}: {len(failures)} failures")
    print("float32 kernels with float64 arithmetic: " + (", ".join(wide) or "none"))
    return 1 if failures or wide else 0


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
            return nk.softmax_cross_entropy(x, labels)

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
    errors = {"y": rel_err(env, ours_y, ty.reshape(-1) if kind == "xent" else ty)}
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

def train_epoch(env, img, widths, samples, batch, lr, seed, warmup_steps):
    """One epoch of D2L's LeNet on both engines from the same initial weights and data order.

    Returns {engine: (seconds, first loss, mean loss of the last 10% of steps, steps)}; the
    first ``warmup_steps`` steps of each engine (JIT compilation, cuDNN autotuning) are not
    timed, and the epoch then restarts from the initial weights.
    """
    np, torch, nk = env.np, env.torch, env.nk
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((samples, 1, img, img)).astype(np.float32)
    teacher = rng.standard_normal((img * img, 10)).astype(np.float32)
    labels = np.argmax(images.reshape(samples, -1) @ teacher, axis=1).astype(np.int64)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 5, padding=2), torch.nn.Sigmoid(), torch.nn.AvgPool2d(2, 2),
        torch.nn.Conv2d(6, 16, 5), torch.nn.Sigmoid(), torch.nn.AvgPool2d(2, 2),
        torch.nn.Flatten(), torch.nn.Linear(16 * ((img // 2 - 4) // 2) ** 2, widths[0]),
        torch.nn.Sigmoid(), torch.nn.Linear(widths[0], widths[1]), torch.nn.Sigmoid(),
        torch.nn.Linear(widths[1], 10)).to(env.tdev)
    host_params = [p.detach().cpu().numpy().copy() for p in model.parameters()]
    params = [nk.to_device(p) for p in host_params]
    x_all, t_all = nk.to_device(images), nk.to_device(labels)
    tx_all = torch.from_numpy(images).to(env.tdev)
    tt_all = torch.from_numpy(labels).to(env.tdev)
    pad2, pad0 = ((2, 2), (2, 2)), ((0, 0), (0, 0))
    one, two = (1, 1), (2, 2)

    def ours_step(xb, tb):
        w1, b1, w2, b2, w3, b3, w4, b4, w5, b5 = params
        n = xb.shape[0]
        a1 = nk.conv2d_forward(xb, w1, b1, one, pad2, one, 1, activation="sigmoid")
        p1 = nk.avg_pool2d_forward(a1, two, two, (0, 0), (img // 2, img // 2), True, 0)
        a2 = nk.conv2d_forward(p1, w2, b2, one, pad0, one, 1, activation="sigmoid")
        side = a2.shape[2] // 2
        p2 = nk.avg_pool2d_forward(a2, two, two, (0, 0), (side, side), True, 0)
        f = p2.reshape(n, p2.size // n)
        h3 = nk.linear_forward(f, w3, b3, activation="sigmoid")
        h4 = nk.linear_forward(h3, w4, b4, activation="sigmoid")
        z = nk.linear_forward(h4, w5, b5)
        loss, gz = nk.softmax_cross_entropy(z, tb)
        gh4, gw5, gb5 = nk.linear_backward(gz, h4, w5)
        gh3, gw4, gb4 = nk.linear_backward(gh4, h3, w4, y=h4, activation="sigmoid")
        gf, gw3, gb3 = nk.linear_backward(gh3, f, w3, y=h3, activation="sigmoid")
        ga2 = nk.avg_pool2d_backward(gf.reshape(p2.shape), a2.shape, two, two, (0, 0), True, 0)
        gp1, gw2, gb2 = nk.conv2d_backward(ga2, p1, w2, one, pad0, one, 1, y=a2,
                                           activation="sigmoid")
        ga1 = nk.avg_pool2d_backward(gp1, a1.shape, two, two, (0, 0), True, 0)
        _, gw1, gb1 = nk.conv2d_backward(ga1, xb, w1, one, pad2, one, 1, y=a1,
                                         activation="sigmoid", need_input_grad=False)
        for param, grad in zip(params, (gw1, gb1, gw2, gb2, gw3, gb3, gw4, gb4, gw5, gb5),
                               strict=True):
            nk.sgd_step(param, grad, None, lr)
        return loss

    optimizer = torch.optim.SGD(model.parameters(), lr=lr)

    def torch_step(xb, tb):
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(xb), tb)
        loss.backward()
        optimizer.step()
        return loss.detach()

    results = {}
    for engine, step, xs, ts in (("numbaconv", ours_step, x_all, t_all),
                                 ("torch", torch_step, tx_all, tt_all)):
        for start in range(0, min(warmup_steps, samples // batch) * batch, batch):
            step(xs[start:start + batch], ts[start:start + batch])
        if engine == "numbaconv":  # restart both from the same weights
            for param, host in zip(params, host_params, strict=True):
                param.copy_to_device(host)
        else:
            with torch.no_grad():
                for param, host in zip(model.parameters(), host_params, strict=True):
                    param.copy_(torch.from_numpy(host))
            optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        env.sync()
        begin = time.perf_counter()
        losses = [step(xs[s:s + batch], ts[s:s + batch])
                  for s in range(0, samples - batch + 1, batch)]
        env.sync()
        seconds = time.perf_counter() - begin
        tail = losses[-max(1, len(losses) // 10):]
        if engine == "numbaconv":
            final = float(np.mean([nk.to_host(v)[0] for v in tail]))
            first = float(nk.to_host(losses[0])[0])
        else:
            final = float(torch.stack(tail).mean())
            first = float(losses[0])
        results[engine] = (seconds, first, final, len(losses))
    return results


# ============================================================================== main

def main(argv=None) -> int:
    args = parse_args(argv)
    if args.ptx:
        return ptx_check(args.cc)
    env = Env(args.tiny)
    np = env.np
    rng = np.random.default_rng(args.seed)
    tolerance = 1e-4
    print(f"## numbaconv CUDA backend on {env.card} (PyTorch {env.torch.__version__} on "
          f"{env.torch_card}{', tiny sizes' if args.tiny else ''})\n")
    print("| layer | input | max rel err (y, grads) | numbaconv fwd ms | torch fwd ms "
          "| numbaconv bwd ms | torch bwd ms |")
    print("|---|---|---|---:|---:|---:|---:|")
    failed = []
    for name, kind, params in layer_cases(args.tiny):
        errors, of, tf, ob, tb = check_layer(env, kind, params, rng, args.repeats, args.warmup)
        worst = max(errors.values())
        if not worst <= tolerance:
            failed.append(f"{name}: {errors}")
        print(f"| {name} | {'x'.join(map(str, params['x']))} | {worst:.1e} | {of:.3f} | "
              f"{tf:.3f} | {ob:.3f} | {tb:.3f} |")
    if not args.skip_train:
        img, batch = (12, 2) if args.tiny else (28, 256)
        results = train_epoch(env, img, lenet_widths(args.tiny), args.samples, batch, 0.9,
                              args.seed, 1 if args.tiny else 3)
        print(f"\n| LeNet epoch, {args.samples} x 1 x {img} x {img}, batch {batch} | seconds "
              "| images/s | first loss | last-10% loss |")
        print("|---|---:|---:|---:|---:|")
        for engine, (seconds, first, final, steps) in results.items():
            print(f"| {engine} | {seconds:.2f} | {steps * batch / seconds:,.0f} | "
                  f"{first:.4f} | {final:.4f} |")
        if not np.isfinite(results["numbaconv"][2]):
            failed.append("training loss is not finite")
    if failed:
        print(f"\nPARITY FAILURES (tolerance {tolerance:.0e}):\n" + "\n".join(failed))
        return 1
    print(f"\nall parity checks within {tolerance:.0e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
