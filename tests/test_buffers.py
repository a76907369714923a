"""The CPU kernels' large arrays (numbaconv.kernels.cpu.buffers): aligned, NumPy's, and their
memory reused once every view of them is gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from numbaconv import functional as F
from numbaconv.kernels.cpu import buffers

BIG = (4, 64, 64, 64)  # 4 MiB of float32: the smallest size buffers keeps


@pytest.fixture(autouse=True)
def empty_cache():
    buffers.release()
    yield
    buffers.release()


def test_small_arrays_are_plain_numpy_and_never_kept():
    a = buffers.empty((3, 5), np.float64)
    assert a.shape == (3, 5) and a.dtype == np.float64 and a.flags.c_contiguous
    del a
    assert buffers.held_bytes() == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_large_arrays_start_on_a_cache_line_and_are_writable(dtype):
    a = buffers.empty(BIG, dtype)
    assert a.shape == BIG and a.dtype == dtype
    assert a.flags.c_contiguous and a.flags.writeable and a.flags.aligned
    assert a.ctypes.data % buffers.LINE == 0
    a[...] = 7
    assert (a == 7).all()
    assert buffers.empty(BIG[0] * BIG[1], dtype).shape == (BIG[0] * BIG[1],)  # an int shape


def test_memory_returns_when_the_last_view_is_gone_and_is_reused():
    a = buffers.empty(BIG, np.float32)
    address = a.ctypes.data
    view = a[1:3].reshape(2, -1)
    del a
    assert buffers.held_bytes() == 0  # the view still uses the block
    view[...] = 1
    del view
    held = buffers.held_bytes()
    assert held >= np.prod(BIG) * 4
    b = buffers.empty(BIG, np.float32)  # the same size class: the same block
    assert b.ctypes.data == address and buffers.held_bytes() == 0
    c = buffers.empty(BIG, np.float32)  # none left: a new one
    assert not np.shares_memory(b, c)


def test_no_more_than_the_cap_is_kept(monkeypatch):
    monkeypatch.setattr(buffers, "MAX_HELD_BYTES", 0)
    a = buffers.empty(BIG, np.float32)
    del a
    assert buffers.held_bytes() == 0
    monkeypatch.setattr(buffers, "MAX_HELD_BYTES", 10 << 20)  # room for one 6 MiB block
    arrays = [buffers.empty(BIG, np.float32) for _ in range(3)]
    del arrays
    assert 0 < buffers.held_bytes() <= 10 << 20


def test_kernels_results_do_not_share_memory_while_alive():
    x = np.random.default_rng(0).standard_normal(BIG).astype(np.float32)
    outputs = [F.relu(x) for _ in range(3)]
    outputs.append(F.batch_norm(x, np.zeros(64, np.float32), np.ones(64, np.float32))[0])
    for i, a in enumerate(outputs):
        for b in outputs[i + 1:]:
            assert not np.shares_memory(a, b)
    np.testing.assert_array_equal(outputs[0], np.maximum(x, 0))
    del outputs
    again = F.relu(-x)  # on a reused block: every value written
    np.testing.assert_array_equal(again, np.maximum(-x, 0))


def test_threads_never_get_a_block_in_use():
    errors = []

    def work(seed):
        rng = np.random.default_rng(seed)
        try:
            for _ in range(50):
                value = rng.integers(1 << 30)
                a = buffers.empty(BIG, np.int64)
                a[...] = value
                b = buffers.empty(BIG, np.int64)
                b[...] = value + 1
                if not ((a == value).all() and (b == value + 1).all()):
                    errors.append(seed)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() only")
def test_a_forked_child_uses_the_pool_while_a_parent_thread_holds_its_lock():
    a = buffers.empty(BIG, np.float32)
    del a  # a kept block, which the child reuses
    with buffers._POOL.lock:  # as another thread of the parent might at the fork
        pid = os.fork()
        if pid == 0:  # the child: must not wait for the parent's lock
            try:
                b = buffers.empty(BIG, np.float32)
                b[...] = 1
                del b
                os._exit(0 if buffers.held_bytes() > 0 else 3)
            finally:
                os._exit(4)
    for _ in range(200):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the child waited for the parent's lock")
    assert os.waitstatus_to_exitcode(status) == 0


def test_an_array_alive_at_exit_ends_quietly():
    # passed to a Numba function, the array outlives buffers' globals at exit (seen: "Exception
    # ignored in _Lease.__del__ ... TypeError")
    script = ("import numpy as np\nfrom numba import njit\n"
              "from numbaconv.kernels.cpu import buffers\n"
              "@njit\ndef touch(a):\n    a[0] = 1\n"
              "kept = buffers.empty((2 << 20,), np.float32)\ntouch(kept)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "Exception ignored" not in done.stderr, done.stderr
