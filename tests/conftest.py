"""Shared fixtures for the numbaconv test suite (helpers live in ``support.py``).

* the ``torch`` fixture: see ``support.require_torch``.
* ``nc``: the module under test, ``numbaconv.functional`` (a missing module fails, never skips).
"""

from __future__ import annotations

import os
import sys

import pytest
from hypothesis import HealthCheck, settings

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TESTS_DIR)
for _path in (REPO_ROOT, TESTS_DIR):
    if _path not in sys.path:
        sys.path.insert(0, _path)

settings.register_profile(
    "numbaconv",
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "numbaconv"))

from support import require_torch  # noqa: E402  (needs TESTS_DIR on sys.path)


def pytest_configure(config):
    # PyTorch warns that padding='same' with an even kernel may copy the input; expected here.
    config.addinivalue_line("filterwarnings",
                            "ignore:Using padding='same':UserWarning")


@pytest.fixture(scope="session")
def torch():
    return require_torch()


@pytest.fixture(scope="session")
def F(torch):
    import torch.nn.functional as F

    return F


@pytest.fixture(scope="session")
def nc():
    """``numbaconv.functional``; an ImportError here is an error of the test, not a skip."""
    import numbaconv.functional as nc

    return nc
