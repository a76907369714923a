"""softmax_cross_entropy and accuracy against torch.nn.functional.cross_entropy."""

from __future__ import annotations

import numpy as np
import pytest

from numbaconv.losses import accuracy, log_softmax, softmax, softmax_cross_entropy


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return torch


def torch_reference(torch, logits, labels):
    lt = torch.from_numpy(logits.copy()).requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(lt, torch.from_numpy(labels))
    loss.backward()
    return loss.item(), lt.grad.numpy()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,k,scale", [(1, 2, 1.0), (16, 10, 3.0), (7, 1000, 10.0)])
def test_matches_torch_cross_entropy(torch, dtype, n, k, scale):
    g = np.random.default_rng(n * k)
    logits = (g.standard_normal((n, k)) * scale).astype(dtype)
    labels = g.integers(0, k, n)
    loss, grad = softmax_cross_entropy(logits, labels)
    ref_loss, ref_grad = torch_reference(torch, logits, labels)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    assert isinstance(loss, float)
    assert loss == pytest.approx(ref_loss, rel=rtol)
    assert grad.dtype == dtype and grad.shape == logits.shape
    np.testing.assert_allclose(grad, ref_grad, rtol=rtol, atol=rtol * np.abs(ref_grad).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_logits_stay_finite(torch, dtype):
    logits = np.array([[1e4, 0.0, -1e4], [-1e4, 1e4, 1e4 - 1], [5e3, 5e3, 5e3],
                       [-1e4, -1e4, -1e4]], dtype=dtype)
    labels = np.array([0, 2, 1, 2])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss, grad = softmax_cross_entropy(logits, labels)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    ref_loss, ref_grad = torch_reference(torch, logits, labels)
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    np.testing.assert_allclose(grad, ref_grad, atol=1e-6)
    # a confidently wrong prediction costs about the logit gap
    wrong, _ = softmax_cross_entropy(np.array([[1e4, 0.0]], dtype=dtype), np.array([1]))
    assert wrong == pytest.approx(1e4)


def test_gradient_rows_sum_to_zero_and_finite_difference():
    g = np.random.default_rng(0)
    logits = g.standard_normal((5, 4))
    labels = g.integers(0, 4, 5)
    loss, grad = softmax_cross_entropy(logits, labels)
    np.testing.assert_allclose(grad.sum(axis=1), 0.0, atol=1e-15)
    eps = 1e-6
    numeric = np.zeros_like(logits)
    for idx in np.ndindex(logits.shape):
        up, down = logits.copy(), logits.copy()
        up[idx] += eps
        down[idx] -= eps
        numeric[idx] = (softmax_cross_entropy(up, labels)[0]
                        - softmax_cross_entropy(down, labels)[0]) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-10)


def test_does_not_modify_logits_and_uniform_loss_is_log_k():
    logits = np.zeros((3, 10), np.float32)
    loss, grad = softmax_cross_entropy(logits, np.array([1, 2, 3]))
    assert loss == pytest.approx(np.log(10), rel=1e-6)
    assert np.all(logits == 0)
    np.testing.assert_allclose(grad[0], (np.full(10, 0.1) - np.eye(10)[1]) / 3, rtol=1e-6)


def test_softmax_helpers_are_stable():
    x = np.array([[1e4, 1e4 - 1, -1e4]], np.float32)
    s = softmax(x)
    assert s.dtype == np.float32
    np.testing.assert_allclose(s.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.exp(log_softmax(x)), s, rtol=1e-6)
    np.testing.assert_allclose(log_softmax(x)[0, :2], [-np.log1p(np.exp(-1)),
                                                      -1 - np.log1p(np.exp(-1))], rtol=1e-6)


def test_argument_errors():
    logits = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        softmax_cross_entropy(logits, np.array([0, 3]))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        softmax_cross_entropy(logits, np.array([-1, 0]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        softmax_cross_entropy(logits, np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="integers"):
        softmax_cross_entropy(logits, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        softmax_cross_entropy(np.zeros(3, np.float32), np.array([0]))
    with pytest.raises(TypeError, match="floating"):
        softmax_cross_entropy(np.zeros((2, 3), np.int64), np.array([0, 1]))


def test_accuracy():
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], np.float32)
    assert accuracy(logits, np.array([1, 0, 0, 1])) == 0.5
    assert accuracy(logits, np.array([1, 0, 1, 0])) == 1.0
    assert isinstance(accuracy(logits, np.array([0, 1, 0, 1])), float)
    with pytest.raises(ValueError):
        accuracy(logits, np.array([1, 0]))
