"""functional.resize_bilinear on device arrays: the CPU kernel's results."""

import numpy as np
import pytest

pytest.importorskip("numba.cuda")

from numbaconv import functional as F  # noqa: E402
from numbaconv.devices import get_device  # noqa: E402


@pytest.mark.parametrize("size", [9, (5, 3)])
def test_resize_on_the_device_matches_the_cpu(size):
    device = get_device("cuda")
    x = np.random.default_rng(1).random((2, 2, 6, 4)).astype(np.float32)
    got = device.get(F.resize_bilinear(device.put(x), size))
    np.testing.assert_allclose(got, F.resize_bilinear(x, size), rtol=1e-6, atol=1e-7)
