"""Peak resident memory of ResNet-18 training: numbaconv against PyTorch, each in a fresh process.

    PYTHONPATH=$PWD python bench/memory.py                     # 3 steps at 96x96 and 28x28
    PYTHONPATH=$PWD python bench/memory.py --sides 96 --steps 5 --threads 2

For each side and each framework, a new Python process imports only its framework, builds
ResNet-18 (D2L's, 1-channel images, 10 classes), and runs ``--steps`` training steps on random
data at batch ``--batch`` (forward, cross entropy, backward, SGD lr 0.05; numbaconv's step is
the body of ``numbaconv.training.Loop.train_epoch``). The parent reads the child's peak
resident set size from ``os.wait4``'s ``ru_maxrss``; the child reports its resident size after
its imports (before the model exists), so the table shows both the whole peak and what the
training itself added (for numbaconv that includes loading its kernels from Numba's cache,
which happens at their first call).

Before numbaconv's measured run, one unmeasured child runs a step at the same size so that
Numba's on-disk cache holds every kernel: the measured run then loads machine code instead of
compiling it (compiling would add LLVM's memory, a one-time cost). ``--no-warmup`` skips it.

The PyTorch child loads ``numbaconv/benchmarks/twins.py`` by its path, so that it holds no
numbaconv (nor Numba) at all.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LR = 0.05


def _status_kib(field: str) -> int:
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _data(np, batch, side):
    rng = np.random.default_rng(0)
    images = rng.random((batch, 1, side, side), dtype=np.float32)
    labels = rng.integers(0, 10, size=batch).astype(np.int64)
    return images, labels


def child_numbaconv(side: int, batch: int, steps: int) -> dict:
    import numpy as np

    import numbaconv
    from numbaconv import functional as F
    from numbaconv.training import make_optimizer

    after_imports = _status_kib("VmRSS")
    x, y = _data(np, batch, side)
    model = numbaconv.build_model("resnet18", rng=0)
    opt = make_optimizer("sgd", model.named_params(), LR)
    for _ in range(steps):  # the body of numbaconv.training.Loop.train_epoch
        logits = model.forward(x, training=True)
        F.cross_entropy(logits, y)
        model.backward(F.cross_entropy_backward(logits, y), need_input_grad=False)
        opt.step(model.named_grads())
    return {"after_imports_kib": after_imports, "version": numbaconv.__version__}


def child_torch(side: int, batch: int, steps: int) -> dict:
    import importlib.util

    import numpy as np
    import torch

    after_imports = _status_kib("VmRSS")
    spec = importlib.util.spec_from_file_location(
        "twins", os.path.join(ROOT, "numbaconv", "benchmarks", "twins.py"))
    twins = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(twins)
    x, y = (torch.from_numpy(a) for a in _data(np, batch, side))
    torch.manual_seed(0)
    net = twins.torch_resnet18(torch)
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    net.train()
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
    return {"after_imports_kib": after_imports, "version": torch.__version__,
            "numba_loaded": "numba" in sys.modules}


CHILDREN = {"numbaconv": child_numbaconv, "torch": child_torch}


def run_child(framework: str, side: int, batch: int, steps: int, threads: int) -> dict:
    """Run one child; its report plus ``peak_kib``, the child's ru_maxrss from wait4."""
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    command = [sys.executable, os.path.abspath(__file__), "--child", framework,
               "--sides", str(side), "--batch", str(batch), "--steps", str(steps),
               "--threads", str(threads)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"Error: the {framework} child at {side}x{side} exited with status "
                         f"{process.returncode}")
    report = json.loads(out.strip().splitlines()[-1])
    report["peak_kib"] = usage.ru_maxrss  # KiB on Linux
    return report


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mib(kib: int) -> str:
    return f"{kib / 1024:,.0f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[96, 28],
                        help="image sides to train at (default: 96 28)")
    parser.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--steps", type=int, default=3, help="training steps (default 3)")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads for Numba and PyTorch alike (default 1)")
    parser.add_argument("--no-warmup", action="store_true",
                        help="measure numbaconv without filling Numba's cache first")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("batch", "steps", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if any(side < 1 for side in args.sides):
        parser.error("--sides must be positive")
    if sys.platform != "linux":
        parser.error("needs Linux (/proc/self/status, ru_maxrss in KiB)")
    if args.child:
        report = CHILDREN[args.child](args.sides[0], args.batch, args.steps)
        print(json.dumps(report))
        return 0

    print(f"ResNet-18 training, batch {args.batch}, {args.steps} steps, {args.threads} "
          f"thread(s), each framework in a fresh process; CPU: {cpu_model()}, "
          f"Python {platform.python_version()}")
    rows = [("side", "framework", "peak RSS MiB", "after imports MiB", "training added MiB",
             "version")]
    for side in args.sides:
        if not args.no_warmup:
            run_child("numbaconv", side, args.batch, 1, args.threads)
        for framework in ("numbaconv", "torch"):
            report = run_child(framework, side, args.batch, args.steps, args.threads)
            rows.append((f"{side}x{side}", framework, _mib(report["peak_kib"]),
                         _mib(report["after_imports_kib"]),
                         _mib(report["peak_kib"] - report["after_imports_kib"]),
                         report["version"]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(w) if c < 2 else cell.rjust(w)
                        for c, (cell, w) in enumerate(zip(row, widths))).rstrip())
        if i == 0:
            print("-" * (sum(widths) + 2 * (len(widths) - 1)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
