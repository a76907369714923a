"""Results must not depend on the number of Numba threads.

The same fixed, seeded batch goes through conv2d forward and backward (each kernel path), a
fused stage's one-pass forward, both pools (forward and backward) and the dense layers'
product in two fresh interpreters, one with ``NUMBA_NUM_THREADS=1`` and one with
``NUMBA_NUM_THREADS=2``; the saved results must agree bit for bit, and with the reference.
"""

from __future__ import annotations

import os
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
    from numbaconv.kernels.cpu.dense import matmul_acc

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
        r["dense"] = np.zeros((70, 50), dtype=dtype)  # 16-row tasks, a masked pixel tail
        matmul_acc(x.reshape(8, -1)[:, :60].repeat(9, axis=0)[:70], wn.reshape(-1)[:50]
                   * x.reshape(-1)[:3000].reshape(60, 50), r["dense"])
        # many weights (24 x 27): the weight gradient copies gy onto the flat grid
        wb = rng.normal(size=(24, 3, 3, 3)).astype(dtype)
        gyb = rng.normal(size=(8, 24, 16, 16)).astype(dtype)
        r["convb_gx"], r["convb_gw"], r["convb_gb"] = nc.conv2d_backward(gyb, x, wb, padding=1)
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
