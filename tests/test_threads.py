"""Numba's threads: results that do not depend on their number, and a threading layer that
survives ``fork()`` and Python threads.

The same fixed, seeded batch goes through conv2d forward and backward (each kernel path), a
fused stage's one-pass forward, both pools (forward and backward) and the dense layers'
product in two fresh interpreters, one with ``NUMBA_NUM_THREADS=1`` and one with
``NUMBA_NUM_THREADS=2``; the saved results must agree bit for bit, and with the reference.

The threading layer (numbaconv.threading_layer): in fresh interpreters, each with a time
limit so that a hang fails, a ``multiprocessing`` fork pool whose workers run kernels after
the parent did, and two Python threads running kernels at once.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import reference as ref
from support import REPO_ROOT, tol

SCRIPT = textwrap.dedent("""
    import sys
    import numba
    import numpy as np
    import numbaconv.functional as nc
    from numbaconv.kernels.cpu.dense import matmul_acc, packed_matmul_acc

    out_path = sys.argv[1]
    rng = np.random.default_rng(1234)
    x64 = rng.normal(size=(8, 3, 16, 16))
    w64 = rng.normal(size=(4, 3, 3, 3))
    b64 = rng.normal(size=4)
    wg64 = rng.normal(size=(6, 1, 3, 2))
    results = {"threads": np.array([numba.get_num_threads(), numba.config.NUMBA_NUM_THREADS])}
    for name, dtype in (("f64", np.float64), ("f32", np.float32)):
        x, w, b, wg = (a.astype(dtype) for a in (x64, w64, b64, wg64))
        r = {}
        r["conv"] = nc.conv2d(x, w, b, padding=1)
        gy = rng.normal(size=r["conv"].shape).astype(dtype)
        r["conv_gx"], r["conv_gw"], r["conv_gb"] = nc.conv2d_backward(gy, x, w, padding=1)
        # strided, dilated, grouped
        args = dict(stride=2, padding=((1, 0), (2, 1)), dilation=(2, 1), groups=3)
        r["convg"] = nc.conv2d(x, wg, None, **args)
        gyg = rng.normal(size=r["convg"].shape).astype(dtype)
        r["convg_gx"], r["convg_gw"], r["convg_gb"] = nc.conv2d_backward(gyg, x, wg, **args)
        # narrow images, more than one block of interleaved samples (the "lanes" kernels)
        xn, wn = x[:, :, :7, :9].repeat(5, axis=0), w[:, :, :, :2]
        r["convn"] = nc.conv2d(xn, wn, b, dilation=(1, 4))
        gyn = rng.normal(size=r["convn"].shape).astype(dtype)
        r["convn_gx"], r["convn_gw"], r["convn_gb"] = nc.conv2d_backward(gyn, xn, wn,
                                                                         dilation=(1, 4))
        r["max"], r["max_idx"] = nc.max_pool2d(x, 3, stride=2, padding=1, ceil_mode=True,
                                               return_indices=True)
        gym = rng.normal(size=r["max"].shape).astype(dtype)
        r["max_gx"] = nc.max_pool2d_backward(gym, r["max_idx"], x.shape)
        r["avg"] = nc.avg_pool2d(x, 3, stride=2, padding=1, ceil_mode=True,
                                 count_include_pad=False)
        gya = rng.normal(size=r["avg"].shape).astype(dtype)
        r["avg_gx"] = nc.avg_pool2d_backward(gya, x.shape, 3, stride=2, padding=1,
                                             ceil_mode=True, count_include_pad=False)
        r["dense"] = np.zeros((70, 50), dtype=dtype)  # one task (a small product), a last
        # tile of pixels computed in scratch
        matmul_acc(x.reshape(8, -1)[:, :60].repeat(9, axis=0)[:70], wn.reshape(-1)[:50]
                   * x.reshape(-1)[:3000].reshape(60, 50), r["dense"])
        # packed panels: three blocks of columns (a masked tail) x rows split in three
        r["packed"] = np.zeros((70, 530), dtype=dtype)
        packed_matmul_acc(np.cos(np.arange(70 * 40)).reshape(70, 40).astype(dtype),
                          np.sin(np.arange(530 * 40)).reshape(530, 40).astype(dtype),
                          r["packed"], True, True)
        # many weights (24 x 27): the weight gradient copies gy onto the flat grid
        wb = rng.normal(size=(24, 3, 3, 3)).astype(dtype)
        gyb = rng.normal(size=(8, 24, 16, 16)).astype(dtype)
        r["convb_gx"], r["convb_gw"], r["convb_gb"] = nc.conv2d_backward(gyb, x, wb, padding=1)
        # a 1x1 layer at stride 2 (the pointwise kernels: a product per sample; the weight
        # gradient's tasks own six output channels each)
        xq, wq = np.tile(x, (1, 6, 1, 1))[:, :17], rng.normal(size=(40, 17, 1, 1)).astype(dtype)
        r["convq"] = nc.conv2d(xq, wq, None, stride=2)
        gyq = rng.normal(size=r["convq"].shape).astype(dtype)
        r["convq_gx"], r["convq_gw"], r["convq_gb"] = nc.conv2d_backward(gyq, xq, wq, stride=2)
        r["wq"], r["gyq"] = wq, gyq
        # a fused stage's convolution, sigmoid (code 0) and average pool (0) in one pass
        r["cap_z"], r["cap_y"] = nc._conv2d_act_pool(x, w, b, 1, 1, 1, 1, 0, 0)
        r["gy"], r["gyg"], r["gym"], r["gya"], r["gyn"] = gy, gyg, gym, gya, gyn
        results.update({f"{name}_{k}": v for k, v in r.items()})
    np.savez(out_path, **results)
""")


def _launch(tmp_path, threads):
    env = dict(os.environ)
    env["NUMBA_NUM_THREADS"] = str(threads)
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    out = tmp_path / f"threads{threads}.npz"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(out)], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("threads")
    launched = {t: _launch(tmp_path, t) for t in (1, 2)}  # both run at once
    results = {}
    for threads, (proc, out) in launched.items():
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"NUMBA_NUM_THREADS={threads} run failed:\n{stderr}"
        with np.load(out) as data:
            results[threads] = {k: data[k] for k in data.files}
    return results


def test_thread_count_took_effect(runs):
    np.testing.assert_array_equal(runs[1]["threads"], [1, 1])
    np.testing.assert_array_equal(runs[2]["threads"], [2, 2])


def test_results_identical_across_thread_counts(runs):
    one, two = runs[1], runs[2]
    assert set(one) == set(two)
    for key in sorted(one):
        if key == "threads":
            continue
        assert one[key].dtype == two[key].dtype, key
        assert np.array_equal(one[key], two[key]), f"{key} differs between 1 and 2 threads"


@pytest.mark.parametrize("prefix, dtype", [("f64", np.float64), ("f32", np.float32)])
def test_threaded_results_match_reference(runs, prefix, dtype):
    r = {k[len(prefix) + 1:]: v for k, v in runs[2].items() if k.startswith(prefix + "_")}
    rng = np.random.default_rng(1234)
    x = rng.normal(size=(8, 3, 16, 16)).astype(dtype).astype(np.float64)
    w = rng.normal(size=(4, 3, 3, 3)).astype(dtype).astype(np.float64)
    b = rng.normal(size=4).astype(dtype).astype(np.float64)
    wg = rng.normal(size=(6, 1, 3, 2)).astype(dtype).astype(np.float64)
    t = tol(dtype)

    def check(got, expected, what):
        assert got.dtype == dtype, what
        np.testing.assert_allclose(got, expected, err_msg=what, **t)

    check(r["conv"], ref.conv2d(x, w, b, padding=1), "conv")
    for got, exp, name in zip((r["conv_gx"], r["conv_gw"], r["conv_gb"]),
                              ref.conv2d_backward(r["gy"], x, w, padding=1),
                              ("conv_gx", "conv_gw", "conv_gb"), strict=True):
        check(got, exp, name)
    args = dict(stride=2, padding=((1, 0), (2, 1)), dilation=(2, 1), groups=3)
    check(r["convg"], ref.conv2d(x, wg, None, **args), "convg")
    for got, exp, name in zip((r["convg_gx"], r["convg_gw"], r["convg_gb"]),
                              ref.conv2d_backward(r["gyg"], x, wg, **args),
                              ("convg_gx", "convg_gw", "convg_gb"), strict=True):
        check(got, exp, name)
    xn, wn = x[:, :, :7, :9].repeat(5, axis=0), w[:, :, :, :2]
    check(r["convn"], ref.conv2d(xn, wn, b, dilation=(1, 4)), "convn")
    for got, exp, name in zip((r["convn_gx"], r["convn_gw"], r["convn_gb"]),
                              ref.conv2d_backward(r["gyn"], xn, wn, dilation=(1, 4)),
                              ("convn_gx", "convn_gw", "convn_gb"), strict=True):
        check(got, exp, name)
    xq, wq = np.tile(x, (1, 6, 1, 1))[:, :17], r["wq"]
    check(r["convq"], ref.conv2d(xq, wq, None, stride=2), "convq")
    for got, exp, name in zip((r["convq_gx"], r["convq_gw"], r["convq_gb"]),
                              ref.conv2d_backward(r["gyq"], xq, wq, stride=2),
                              ("convq_gx", "convq_gw", "convq_gb"), strict=True):
        check(got, exp, name)
    ey, eidx = ref.max_pool2d(x, 3, stride=2, padding=1, ceil_mode=True, return_indices=True)
    check(r["max"], ey, "max")
    np.testing.assert_array_equal(r["max_idx"], eidx)
    check(r["max_gx"], ref.max_pool2d_backward(r["gym"], eidx, x.shape), "max_gx")
    aargs = dict(stride=2, padding=1, ceil_mode=True, count_include_pad=False)
    check(r["avg"], ref.avg_pool2d(x, 3, **aargs), "avg")
    check(r["avg_gx"], ref.avg_pool2d_backward(r["gya"], x.shape, 3, **aargs), "avg_gx")
    wn = w[:, :, :, :2]
    dense = x.reshape(8, -1)[:, :60].repeat(9, axis=0)[:70] @ (
        wn.reshape(-1)[:50] * x.reshape(-1)[:3000].reshape(60, 50))
    check(r["dense"], dense, "dense")
    packed = (np.cos(np.arange(70 * 40)).reshape(70, 40).astype(dtype).astype(np.float64)
              @ np.sin(np.arange(530 * 40)).reshape(530, 40).astype(dtype).astype(np.float64).T)
    check(r["packed"], packed, "packed")


# ------------------------------------------------------------------------- threading layer

#: Where ``pip install numbaconv`` brings TBB (pyproject.toml's marker on ``tbb``).
TBB_PLATFORM = (sys.platform, platform.machine()) in {("linux", "x86_64"), ("win32", "AMD64")}
needs_tbb = pytest.mark.skipif(not TBB_PLATFORM, reason="no TBB wheel for this platform")

#: Numba's default layer where GNU OpenMP is missing (a slim image without libgomp1) is
#: ``workqueue``; the script simulates that machine by making Numba's OpenMP layer
#: unimportable before anything loads it.
WITHOUT_OPENMP = 'sys.modules["numba.np.ufunc.omppool"] = None'

KERNELS = textwrap.dedent("""
    import sys
    {machine}
    import numba
    import numpy as np
    import numbaconv.functional as nc

    def kernels(seed):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(4, 3, 12, 12))
        w = rng.normal(size=(5, 3, 3, 3))
        y = nc.conv2d(x, w, None, padding=1)
        gx, gw, gb = nc.conv2d_backward(np.ones_like(y), x, w, padding=1)
        return y, gx, gw, gb, nc.max_pool2d(y, 2)

    def same(a, b):
        return all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))

    expected = [kernels(seed) for seed in range(4)]  # the parent's parallel kernels first
""")

FORK_POOL = KERNELS + textwrap.dedent("""
    import multiprocessing
    with multiprocessing.get_context("fork").Pool(2) as pool:
        got = pool.map(kernels, range(4))
    assert all(same(g, e) for g, e in zip(got, expected, strict=True)), "wrong results"
    print(numba.threading_layer())
""")

TWO_THREADS = KERNELS + textwrap.dedent("""
    import threading
    start, failures = threading.Barrier(2), []

    def run(first):
        start.wait()
        for i in range(40):
            seed = (first + i) % 4
            if not same(kernels(seed), expected[seed]):
                failures.append(seed)

    threads = [threading.Thread(target=run, args=(first,)) for first in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, f"wrong results for seeds {failures}"
    print(numba.threading_layer())
""")


def _run_script(script, machine="", timeout=300, **env_changes):
    """Run ``script`` in a fresh interpreter (in its own process group, so that a pool's
    workers go too when it hangs); (return code, stdout, stderr), return code None on a
    hang."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_THREADING_LAYER", "NUMBA_THREADING_LAYER_PRIORITY")}
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["NUMBA_NUM_THREADS"] = "2"
    env.update(env_changes)
    proc = subprocess.Popen([sys.executable, "-c", script.replace("{machine}", machine)], env=env,
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        return None, stdout, stderr
    return proc.returncode, stdout, stderr


def _survived(what, result):
    code, stdout, stderr = result
    assert code is not None, f"{what} hung (killed after its time limit):\n{stderr[-3000:]}"
    assert code == 0, f"{what} failed with exit status {code}:\n{stderr[-3000:]}"
    return stdout.strip().splitlines()[-1]


MACHINES = pytest.mark.parametrize("machine", ["", WITHOUT_OPENMP],
                                   ids=["this-machine", "without-openmp"])


@needs_tbb
@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork")
@MACHINES
def test_fork_pool_runs_kernels_after_the_parent_did(machine):
    """GNU OpenMP's child killed itself with SIGTERM and the pool waited forever."""
    layer = _survived("the fork pool", _run_script(FORK_POOL, machine))
    assert layer == "tbb"


@needs_tbb
@MACHINES
def test_two_threads_run_kernels_at_once(machine):
    """Numba's workqueue layer aborted the process ("Concurrent access has been detected")."""
    layer = _survived("two threads", _run_script(TWO_THREADS, machine))
    assert layer == "tbb"


@pytest.mark.parametrize("layer", ["omp", "workqueue"])
def test_the_users_threading_layer_wins(layer):
    if layer == "omp":
        pytest.importorskip("numba.np.ufunc.omppool", reason="no OpenMP runtime here")
    script = "import numbaconv.functional as nc, numba, numpy as np\n" \
             "nc.conv2d(np.ones((2, 1, 8, 8)), np.ones((2, 1, 3, 3)))\n" \
             "print(numba.threading_layer())"
    assert _survived(layer, _run_script(script, NUMBA_THREADING_LAYER=layer)) == layer


@pytest.fixture
def fresh_layer(monkeypatch):
    """Numba's threading layer not started, nothing chosen: what ``import numbaconv`` meets."""
    import numba

    from numbaconv import threading_layer

    for name in ("NUMBA_THREADING_LAYER", "NUMBA_THREADING_LAYER_PRIORITY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threading_layer, "_layer_started", lambda: False)
    monkeypatch.setattr(numba.config, "THREADING_LAYER", "default")
    return threading_layer


@needs_tbb
def test_prefer_tbb_selects_tbb(fresh_layer):
    import numba

    assert fresh_layer.prefer_tbb()
    assert numba.config.THREADING_LAYER == "tbb"


@pytest.mark.parametrize("variable, value", [("NUMBA_THREADING_LAYER", "omp"),
                                             ("NUMBA_THREADING_LAYER", "tbb"),
                                             ("NUMBA_THREADING_LAYER_PRIORITY",
                                              "omp tbb workqueue")])
def test_prefer_tbb_leaves_the_users_choice(fresh_layer, monkeypatch, variable, value):
    import numba

    monkeypatch.setenv(variable, value)
    assert not fresh_layer.prefer_tbb()
    assert numba.config.THREADING_LAYER == "default"


def test_prefer_tbb_leaves_a_started_layer(fresh_layer, monkeypatch):
    import numba

    monkeypatch.setattr(fresh_layer, "_layer_started", lambda: True)
    assert not fresh_layer.prefer_tbb()
    assert numba.config.THREADING_LAYER == "default"
