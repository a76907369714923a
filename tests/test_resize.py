"""Bilinear resizing (``--resize``): functional.resize_bilinear against PyTorch, and the loop
resizing batch by batch."""

import numpy as np
import pytest
from support import require_torch
from tiny_data import write_tiny_dataset

import numbaconv
from numbaconv import functional as F
from numbaconv.data import as_float_batch
from numbaconv.data.fashion_mnist import load_dir
from numbaconv.layers import AvgPool2d, Conv2d, Flatten, Linear, Sequential
from numbaconv.models import smallest_input
from numbaconv.network import SpecError, check_shapes
from numbaconv.training import Loop, Settings, make_optimizer


@pytest.mark.parametrize("size", [96, (40, 57), 17, 3, (28, 28)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_resize_matches_torch_interpolate(size, dtype):
    torch = require_torch()
    x = np.random.default_rng(0).random((2, 3, 28, 28)).astype(dtype)
    got = F.resize_bilinear(x, size)
    expected = torch.nn.functional.interpolate(torch.from_numpy(x), size=size,
                                               mode="bilinear", align_corners=False).numpy()
    assert got.dtype == dtype and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_resize_checks_its_arguments():
    with pytest.raises(ValueError, match="size must be at least 1"):
        F.resize_bilinear(np.zeros((1, 1, 4, 4), np.float32), 0)
    with pytest.raises(ValueError, match=r"x must have 4 dimensions"):
        F.resize_bilinear(np.zeros((4, 4), np.float32), 8)


def test_the_loop_resizes_each_batch(tmp_path, monkeypatch):
    ds = load_dir(write_tiny_dataset(tmp_path, 96, 32))

    class Data:
        train_x, train_y = as_float_batch(ds.train_images), ds.train_labels
        test_x, test_y = as_float_batch(ds.test_images), ds.test_labels

    seen = []
    original = F.resize_bilinear

    def spy(x, size):
        seen.append(x.shape[0])
        return original(x, size)

    monkeypatch.setattr(F, "resize_bilinear", spy)
    model = Sequential(Conv2d(1, 2, 5, stride=5, rng=0), AvgPool2d(8), Flatten(),
                       Linear(2, 10, rng=0))  # needs 40x40 images
    settings = Settings(epochs=1, batch_size=32, lr=0.1, resize=40)
    loop = Loop(model, make_optimizer("sgd", model.named_params(), 0.1), Data, settings)
    loop.run()
    assert seen == [32, 32, 32, 32]  # three training batches and one test batch, never all
    assert numbaconv.training.evaluate(model, Data.test_x, Data.test_y, resize=40) == \
        loop.history[-1]["test_acc"]


def test_too_small_images_name_the_smallest_size_that_works():
    model = Sequential(Conv2d(1, 2, 11, stride=4, rng=0), AvgPool2d(3, stride=2), Flatten(),
                       Linear(2 * 6 * 6, 10, rng=0))
    assert smallest_input(model) == 59  # (59 - 11) // 4 + 1 = 13, (13 - 3) // 2 + 1 = 6
    with pytest.raises(SpecError, match=r"net: .*the smallest images it takes are 59x59 "
                                        r"\(--resize 59\)"):
        check_shapes(model, "net", 28)
    check_shapes(model, "net", 59)
