"""bench/memory.py: its argument checks, the /proc reading it builds on, and one PyTorch child
(numbaconv's child loads every ResNet-18 kernel, tens of seconds: run the script by hand)."""

from __future__ import annotations

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def memory():
    spec = importlib.util.spec_from_file_location("bench_memory",
                                                  os.path.join(ROOT, "bench", "memory.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reads_the_resident_size_and_its_peak(memory):
    rss, peak = memory._status_kib("VmRSS"), memory._status_kib("VmHWM")
    assert 0 < rss <= peak
    with pytest.raises(RuntimeError, match="no NoSuchField"):
        memory._status_kib("NoSuchField")


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps must be at least 1"),
    (["--batch", "0"], "--batch must be at least 1"),
    (["--sides", "0"], "--sides must be positive"),
])
def test_bad_arguments_are_usage_errors(memory, capsys, args, message):
    with pytest.raises(SystemExit) as error:
        memory.main(args)
    assert error.value.code == 2 and message in capsys.readouterr().err


def test_the_torch_child_reports_its_peak_and_holds_no_numba(memory, torch):
    report = memory.run_child("torch", side=33, batch=2, steps=1, threads=1)
    assert report["version"] == torch.__version__ and report["numba_loaded"] is False
    assert 0 < report["after_imports_kib"] < report["peak_kib"]
