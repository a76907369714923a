"""Start-up: how long ``numbaconv run MODEL`` takes to train its first step.

A fresh interpreter runs ``python -m numbaconv run lenet --epochs 1`` (and ``run resnet18
--resize 28 --epochs 1``: :data:`MODELS`) on a 256-image data set
(one training step, then the evaluation of 256 test images), first with an empty Numba cache
(``NUMBA_CACHE_DIR`` pointing at an empty folder: everything compiles), then again with the
cache that run left (everything loads); three such pairs, each with a new empty cache, and the
medians. The time to the first step is when the command prints its ``training ...`` line, once
the kernels are compiled and the data is read, right before the first step; the whole run's
wall time is printed beside it. Twice: from the repository's root (the current folder holds
the checkout's numbaconv, where the README's Quick start leaves a user) and from another
folder. Targets, LeNet's only, on the first step's medians: 10 s empty, 2 s warm (issue 20);
printed always, enforced with ``--ratio-strict``. ResNet-18's times are printed (its cold start
compiles the column kernels as well).

    pytest bench/test_bench_startup.py --benchmark-only -s
    pytest bench/test_bench_startup.py --benchmark-only -s -k "resnet18 and elsewhere"
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import numbaconv

#: model -> the options of ``numbaconv run`` after its name (each run trains one epoch)
MODELS = {"lenet": [], "resnet18": ["--resize", "28"]}
#: the first step's targets, by model (the others: none)
TARGETS = {"lenet": {"empty": 10.0, "warm": 2.0}}
ROUNDS = 3
SOURCE_ROOT = Path(numbaconv.__file__).resolve().parent.parent


def _tiny_data(directory: Path) -> Path:
    from numbaconv.data.fashion_mnist import FILES, SAMPLE_DIR, load_dir
    from numbaconv.data.idx import write_idx

    sample = load_dir(SAMPLE_DIR)
    directory.mkdir(parents=True)
    for key, array in {"train_images": sample.train_images[:256],
                       "train_labels": sample.train_labels[:256].astype(np.uint8),
                       "test_images": sample.test_images[:256],
                       "test_labels": sample.test_labels[:256].astype(np.uint8)}.items():
        write_idx(directory / FILES[key], array)
    return directory


def _run(model: str, data: Path, cache: Path, cwd: Path) -> tuple[float, float]:
    """(seconds to the first training step, seconds for the whole run of ``model``), run from
    ``cwd``."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    env["PYTHONPATH"] = os.pathsep.join([str(SOURCE_ROOT)] + [
        p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    started = time.perf_counter()
    first_step = None
    with subprocess.Popen([sys.executable, "-m", "numbaconv", "run", model, *MODELS[model],
                           "--epochs", "1", "--data", str(data)], env=env, cwd=cwd,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          text=True) as command:
        for line in command.stdout:
            if first_step is None and line.startswith("training "):
                first_step = time.perf_counter() - started
    whole = time.perf_counter() - started
    assert command.returncode == 0 and first_step is not None, f"numbaconv run {model} failed"
    return first_step, whole


@pytest.mark.startup
@pytest.mark.parametrize("where", ["from the repository root", "from elsewhere"])
@pytest.mark.parametrize("model", list(MODELS))
def test_startup(benchmark, tmp_path, request, model, where):
    data = _tiny_data(tmp_path / "data")
    cwd = SOURCE_ROOT if where == "from the repository root" else tmp_path
    runs = {"empty": [], "warm": []}
    loads = {"empty": [], "warm": []}  # the 1-minute load average as each run starts

    def pairs():
        for round_ in range(ROUNDS):
            cache = tmp_path / f"numba-cache-{round_}"
            cache.mkdir()
            for which in ("empty", "warm"):
                loads[which].append(os.getloadavg()[0])
                runs[which].append(_run(model, data, cache, cwd))

    load = os.getloadavg()[0]
    benchmark.pedantic(pairs, rounds=1, iterations=1)
    medians = {which: tuple(statistics.median(run[i] for run in results) for i in (0, 1))
               for which, results in runs.items()}
    benchmark.extra_info.update({f"{which}_{part}": s for which, (first, whole) in
                                 medians.items() for part, s in (("first_step", first),
                                                                 ("whole_run", whole))})
    targets = TARGETS.get(model, {})
    lines = [f"{model} start-up {where}, {which} Numba cache: first step after "
             f"{medians[which][0]:.1f} s (median of "
             f"{', '.join(f'{first:.1f}' for first, _ in runs[which])} at load average "
             f"{', '.join(f'{load:.1f}' for load in loads[which])}"
             + (f"; target {targets[which]:g} s" if which in targets else "")
             + f"), whole run {medians[which][1]:.1f} s"
             for which in runs]
    lines.append(f"(load average {load:.1f} before, {os.getloadavg()[0]:.1f} after)")
    print("\n" + "\n".join(lines))
    strict = request.config.getoption("--ratio-strict") or \
        os.environ.get("NUMBACONV_RATIO_STRICT", "").strip().lower() not in ("", "0", "false",
                                                                            "no")
    if strict:
        assert all(medians[w][0] <= targets[w] for w in targets), "; ".join(lines)
