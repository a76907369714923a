"""The training loop: determinism, resuming, divergence, settings."""

import numpy as np
import pytest
from tiny_data import write_tiny_dataset

import numbaconv
from numbaconv.data import as_float_batch
from numbaconv.data.fashion_mnist import load_dir
from numbaconv.training import Diverged, Loop, Settings, make_optimizer


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    ds = load_dir(write_tiny_dataset(tmp_path_factory.mktemp("tiny"), 384, 128))

    class Arrays:
        train_x = as_float_batch(ds.train_images)
        train_y = ds.train_labels
        test_x = as_float_batch(ds.test_images)
        test_y = ds.test_labels

    return Arrays


def _run(data, settings, epochs, model=None, optimizer=None, start=1):
    model = model or numbaconv.build_model("lenet", activation="relu", pool="max",
                                           rng=settings.seed)
    optimizer = optimizer or make_optimizer(settings.optimizer, model.named_params(), settings.lr)
    settings = Settings(**{**settings.__dict__, "epochs": epochs})
    history = Loop(model, optimizer, data, settings).run(start)
    return model, optimizer, history


def _without_times(history):
    return [{k: v for k, v in m.items() if "sec" not in k} for m in history]


def test_same_seed_same_metrics(data):
    settings = Settings(epochs=2, batch_size=64, lr=0.01, optimizer="adam", seed=3)
    model_a, _, first = _run(data, settings, 2)
    model_b, _, second = _run(data, settings, 2)
    assert _without_times(first) == _without_times(second)
    for name, value in model_a.named_params().items():
        np.testing.assert_array_equal(value, model_b.named_params()[name])


def test_different_seed_differs(data):
    _, _, first = _run(data, Settings(batch_size=64, lr=0.01, optimizer="adam", seed=1), 1)
    _, _, second = _run(data, Settings(batch_size=64, lr=0.01, optimizer="adam", seed=2), 1)
    assert _without_times(first) != _without_times(second)


def test_learning_lowers_the_loss(data):
    _, _, history = _run(data, Settings(batch_size=32, lr=0.003, optimizer="adam"), 3)
    losses = [m["train_loss"] for m in history]
    assert losses[-1] < losses[0] < 2.4
    assert history[-1]["train_acc"] > 0.5


def test_resume_ends_where_an_uninterrupted_run_does(data):
    settings = Settings(epochs=2, batch_size=64, lr=0.01, optimizer="adam", seed=5)
    straight, _, history = _run(data, settings, 2)

    half, optimizer, first = _run(data, settings, 1)
    resumed = numbaconv.build_model("lenet", activation="relu", pool="max", rng=99)
    resumed.load_state_dict(half.state_dict())
    opt = make_optimizer("adam", resumed.named_params(), settings.lr)
    opt.load_state_dict(optimizer.state_dict())
    _, _, second = _run(data, settings, 2, resumed, opt, start=2)

    assert _without_times(first + second) == _without_times(history)
    for name, value in straight.named_params().items():
        np.testing.assert_array_equal(value, resumed.named_params()[name])


def test_nan_loss_stops_with_epoch_and_batch(data):
    settings = Settings(batch_size=64, lr=1e9, optimizer="sgd")
    with pytest.raises(Diverged, match=r"epoch 1, batch \d+.*lower learning rate"):
        _run(data, settings, 1)


class Blowup:
    """An optimizer whose update leaves one weight infinite (a diverged last step)."""

    def __init__(self, params):
        self.params = params

    def step(self, grads):
        next(iter(self.params.values())).flat[0] = np.inf


def test_non_finite_weights_after_the_last_step_are_divergence(data):
    settings = Settings(epochs=1, batch_size=512, lr=0.1)  # one step, whose loss is finite
    model = numbaconv.build_model("lenet", rng=0)
    saved = []

    class Saver(numbaconv.training.Callback):
        def on_epoch_end(self, loop, metrics):
            saved.append(metrics)

    loop = Loop(model, Blowup(model.named_params()), data, settings, callbacks=[Saver()])
    with pytest.raises(Diverged, match=r"the weights became NaN or infinite at epoch 1;"):
        loop.run()
    assert saved == []  # no callback (no checkpoint) saw the broken weights


def test_callbacks_hear_each_batch_and_the_end(data):
    events = []

    class Recorder(numbaconv.training.Callback):
        def on_epoch_begin(self, loop, epoch):
            events.append(("begin", epoch))

        def on_batch_end(self, loop, rows):
            events.append(("batch", rows))

        def on_epoch_end(self, loop, metrics):
            events.append(("end", metrics.epoch))

        def on_train_end(self, loop, error):
            events.append(("done", error))

    model = numbaconv.build_model("lenet", rng=0)
    settings = Settings(epochs=1, batch_size=256, lr=0.1)
    Loop(model, make_optimizer("sgd", model.named_params(), 0.1), data, settings,
         callbacks=[Recorder()]).run()
    assert events == [("begin", 1), ("batch", 256), ("batch", 128), ("end", 1), ("done", None)]


@pytest.mark.parametrize("field, value", [("lr", 0.0), ("lr", -1.0), ("lr", float("nan")),
                                          ("lr", 1e300), ("lr", 1e-300),
                                          ("epochs", 0), ("batch_size", 0),
                                          ("batch_size", 10 ** 20), ("epochs", 2.5),
                                          ("optimizer", "rmsprop")])
def test_settings_reject_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        Settings(**{field: value})
