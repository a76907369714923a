"""numbaconv run's OpenMP wait policy: threads sleep at once only on a busy machine, and
only where Numba's threading layer may be OpenMP."""

from __future__ import annotations

import os

import numba
import pytest

from numbaconv import threading_layer, threads


@pytest.fixture
def machine(monkeypatch):
    """A 2-CPU machine whose other processes keep ``load`` CPUs busy during the sample (and
    whose load average says the same where /proc/stat is missing); no policy chosen yet, and
    Numba's threading layer not started and set to OpenMP."""
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(threading_layer, "_layer_started", lambda: False)
    monkeypatch.setattr(numba.config, "THREADING_LAYER", "omp")
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(threads.time, "sleep", lambda seconds: None)

    def with_load(load, proc_stat=True):
        samples = iter([(1000, 500), (1100, 500 + round(50 * (2 - load)))])

        def jiffies():
            if not proc_stat:
                raise OSError("no /proc/stat")
            return next(samples)

        monkeypatch.setattr(threads, "_cpu_jiffies", jiffies)
        monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))

    return with_load


@pytest.mark.parametrize("proc_stat", [True, False])
@pytest.mark.parametrize("load, n_threads, policy", [
    (0.2, 2, None),        # quiet: OpenMP's default (spin a little, then sleep)
    (1.0, 2, "PASSIVE"),   # another process holds a core: sleep at once
    (1.0, 1, None),        # one thread has no idle workers to park
    (2.0, 2, "PASSIVE"),
])
def test_passive_only_when_busy(machine, load, n_threads, policy, proc_stat):
    machine(load, proc_stat)
    assert threads.choose_wait_policy(n_threads) == policy
    assert os.environ.get("OMP_WAIT_POLICY") == policy


def test_busy_reads_this_machine():
    assert threads.busy(1, interval=0.01) in (True, False)


def test_the_users_policy_wins(machine, monkeypatch):
    machine(3.0)
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert threads.choose_wait_policy(2) is None
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


@pytest.mark.parametrize("layer, tbb_usable, policy", [
    ("tbb", True, None),
    ("workqueue", True, None),
    ("default", True, None),  # Numba's default order picks TBB first
    ("default", False, "PASSIVE"),  # ... and OpenMP where TBB cannot load
])
def test_a_policy_only_where_the_layer_may_be_openmp(machine, monkeypatch, layer, tbb_usable,
                                                     policy):
    machine(2.0)
    monkeypatch.setattr(numba.config, "THREADING_LAYER", layer)
    monkeypatch.setattr(threading_layer, "_tbb_usable", lambda: tbb_usable)
    assert threads.choose_wait_policy(2) == policy
    assert os.environ.get("OMP_WAIT_POLICY") == policy
