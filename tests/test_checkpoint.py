"""Checkpoints: round trip, atomic writes, clear errors."""

import os

import numpy as np
import pytest

import numbaconv
from numbaconv import checkpoint as ckpt
from numbaconv.optim import Adam


def _checkpoint(epoch=1):
    model = numbaconv.build_model("lenet", rng=0)
    opt = Adam(model.named_params(), lr=0.01)
    model.forward(np.ones((2, 1, 28, 28), np.float32), training=True)
    model.backward(np.ones((2, 10), np.float32))
    opt.step(model.named_grads())
    return model, ckpt.Checkpoint(spec=model.config(), params=model.state_dict(), epoch=epoch,
                                  model="lenet", options={"pool": "avg"},
                                  optimizer=opt.state_dict(), train={"lr": 0.01},
                                  history=[{"epoch": 1, "test_acc": 0.5}])


def test_round_trip(tmp_path):
    model, saved = _checkpoint()
    path = tmp_path / "run.npz"
    ckpt.save(path, saved)
    loaded = ckpt.load(path)
    assert loaded.spec == model.config()
    assert (loaded.epoch, loaded.model, loaded.options) == (1, "lenet", {"pool": "avg"})
    assert loaded.history == saved.history and loaded.train == {"lr": 0.01}
    for name, value in saved.params.items():
        np.testing.assert_array_equal(loaded.params[name], value)
    opt = Adam(model.named_params(), lr=0.5)
    opt.load_state_dict(loaded.optimizer)
    assert opt.step_count == 1 and opt.lr == 0.01


def test_a_crash_mid_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "run.npz"
    ckpt.save(path, _checkpoint(epoch=1)[1])
    before = path.read_bytes()

    def crash(file, **arrays):
        file.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save(path, _checkpoint(epoch=2)[1])
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["run.npz"]  # no temporary file left behind


def test_missing_checkpoint(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.load(tmp_path / "nope.npz")


@pytest.mark.parametrize("content", [b"", b"not a zip file at all"])
def test_corrupt_checkpoint(tmp_path, content):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(ckpt.CheckpointError, match="not a numbaconv checkpoint"):
        ckpt.load(path)


def test_foreign_npz_is_refused(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, weights=np.zeros(3))
    with pytest.raises(ckpt.CheckpointError, match="not a numbaconv checkpoint"):
        ckpt.load(path)
