"""``--device cuda`` without numba-cuda says how to install it (simulated: the module hidden)."""

import sys

import numba
import pytest
from click.testing import CliRunner

from numbaconv.cli import cli
from numbaconv.kernels.cuda import device

INSTALL = "pip install 'numbaconv[cuda]'"


@pytest.fixture
def no_numba_cuda(monkeypatch):
    """Imports of numba.cuda and numba_cuda fail, as where numba-cuda is not installed."""
    monkeypatch.delattr(numba, "cuda", raising=False)
    for name in ("numba.cuda", "numba_cuda"):
        monkeypatch.setitem(sys.modules, name, None)


def test_cuda_available_names_the_install_command(no_numba_cuda):
    usable, reason = device.cuda_available()
    assert not usable
    assert reason.startswith("numba-cuda is not importable (ModuleNotFoundError: ")
    assert reason.endswith(f"; install it with: {INSTALL}")


def test_device_cuda_without_numba_cuda_is_one_error_line(no_numba_cuda):
    result = CliRunner().invoke(cli, ["run", "lenet", "--device", "cuda"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --device cuda: numba-cuda is not "
                                                   "importable"), result.output
    assert lines[0].endswith(INSTALL)


def test_numbas_own_cuda_without_numba_cuda_names_the_install_command(monkeypatch):
    # Numba (0.68 still) ships an older numba.cuda of its own, which imports without numba-cuda
    cuda = pytest.importorskip("numba.cuda")
    monkeypatch.setitem(sys.modules, "numba_cuda", None)
    monkeypatch.setattr(device, "simulator_enabled", lambda: False)
    monkeypatch.setattr(cuda, "is_available", lambda: False)
    assert device.cuda_available() == (False, f"numba-cuda is not installed; install it with: "
                                              f"{INSTALL}")
