"""Checkpoints: round trip, atomic writes, clear errors."""

import io
import json
import os
import zipfile
import zlib

import numpy as np
import pytest

import numbaconv
from numbaconv import checkpoint as ckpt
from numbaconv.layers import layer_spec
from numbaconv.optim import Adam


def _checkpoint(epoch=1):
    model = numbaconv.build_model("lenet", rng=0)
    opt = Adam(model.named_params(), lr=0.01)
    model.forward(np.ones((2, 1, 28, 28), np.float32), training=True)
    model.backward(np.ones((2, 10), np.float32))
    opt.step(model.named_grads())
    return model, ckpt.Checkpoint(spec=layer_spec(model), params=model.state_dict(), epoch=epoch,
                                  model="lenet", options={"pool": "avg"},
                                  optimizer=opt.state_dict(), train={"lr": 0.01},
                                  history=[{"epoch": 1, "test_acc": 0.5}])


def test_round_trip(tmp_path):
    model, saved = _checkpoint()
    path = tmp_path / "run.npz"
    ckpt.save(path, saved)
    loaded = ckpt.load(path)
    assert loaded.spec == layer_spec(model)
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


# --------------------------------------------------------------------------- crafted files

BASE_META = {"format": 1, "spec": [{"type": "Flatten"}], "epoch": 1, "model": None,
             "options": {}, "train": {"batch_size": 64, "lr": 0.1, "optimizer": "sgd", "seed": 0},
             "history": [{"epoch": 1, "train_loss": 0.7, "test_acc": 0.5}],
             "optimizer": {"optimizer": "SGD", "step": 3, "lr": 0.1, "nesterov": False}}
WEIGHTS = {"param/0.weight": np.ones((2, 3), np.float32), "param/0.bias": np.zeros(2, np.float32)}
WHAT_IT_IS = "a .npz written by `numbaconv run --save`, holding the weights under param/"


def craft(path, meta=None, **changes):
    """Write ``meta`` (BASE_META with ``changes``; a key set to ... is left out) and WEIGHTS."""
    arrays = dict(WEIGHTS)
    arrays.update({k: v for k, v in changes.items() if "/" in k})
    meta = dict(BASE_META) if meta is None else meta
    meta.update({k: v for k, v in changes.items() if "/" not in k})
    meta = {k: v for k, v in meta.items() if v is not ...}
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)
    return path


def refusal(path, **load_args) -> str:
    with pytest.raises(ckpt.CheckpointError) as caught:
        ckpt.load(path, **load_args)
    message = str(caught.value)
    assert "\n" not in message and "pickle" not in message, message
    return message


def test_a_crafted_checkpoint_loads(tmp_path):
    loaded = ckpt.load(craft(tmp_path / "ok.npz"))
    assert loaded.spec == BASE_META["spec"] and loaded.epoch == 1
    assert loaded.optimizer["step"] == 3 and set(loaded.params) == {"0.weight", "0.bias"}
    tree = ckpt.load(craft(tmp_path / "tree.npz", spec={"type": "Sequential", "children": []}))
    assert tree.spec == {"type": "Sequential", "children": []}
    counter = ckpt.load(craft(tmp_path / "bn.npz", **{"param/2.count": np.int64(7)}))
    assert counter.params["2.count"] == 7  # integer buffers (BatchNorm's num_batches_tracked)


def _zip(path):
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")


def _npy(path, array, **kwargs):
    with open(path, "wb") as file:  # np.save would add .npy to the name
        np.save(file, array, **kwargs)


def _object_npy(path):
    _npy(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)


def _object_meta(path):
    np.savez(path, meta=np.array([{"format": 1}], dtype=object), allow_pickle=True)


def _object_weight(path):
    craft(path, **{"param/w": np.array([1, "x"], dtype=object)})


def _flipped(path):
    """A checkpoint with one bit of a weight flipped (its CRC no longer matches)."""
    craft(path, **{"param/0.weight": np.full((2, 3), 0.25, np.float32)})
    data = bytearray(path.read_bytes())
    at = data.index(np.float32(0.25).tobytes())
    data[at] ^= 1
    path.write_bytes(bytes(data))


NOT_CHECKPOINTS = {
    "an empty file": lambda p: p.write_bytes(b""),
    "a text file": lambda p: p.write_text("epoch 1 loss 0.5\n"),
    "a bare .npy": lambda p: _npy(p, np.zeros(3)),
    "a pickled object .npy": _object_npy,
    "a zip of text": _zip,
    "an npz of random arrays": lambda p: np.savez(p, a=np.random.rand(3), b=np.arange(4)),
    "an npz with object metadata": _object_meta,
    "an npz with a pickled weight": _object_weight,
    "meta that is not JSON": lambda p: np.savez(p, meta=np.array("{not json")),
    "meta that is a JSON list": lambda p: np.savez(p, meta=np.array("[1, 2]")),
    "meta nested too deep": lambda p: np.savez(p, meta=np.array("[" * 100_000)),
    "meta that is an array": lambda p: np.savez(p, meta=np.zeros(3)),
    "meta without a format": lambda p: craft(p, format=...),
    "an entry beside the weights": lambda p: craft(p, **{"extra/x": np.zeros(2)}),
    "a damaged checkpoint": _flipped,
}


@pytest.mark.parametrize("make", NOT_CHECKPOINTS.values(), ids=NOT_CHECKPOINTS.keys())
def test_what_is_not_a_checkpoint_is_said_in_one_line(tmp_path, make):
    path = tmp_path / "x.npz"
    make(path)
    message = refusal(path)
    assert message.startswith(f"{path} is not a numbaconv checkpoint ("), message
    assert WHAT_IT_IS in message


def test_a_folder_is_not_a_checkpoint(tmp_path):
    assert "is not a numbaconv checkpoint (it is not a regular file)" in refusal(tmp_path)


def test_another_format_is_named(tmp_path):
    message = refusal(craft(tmp_path / "x.npz", format=2))
    assert message.endswith("is a checkpoint of format 2; this numbaconv reads format 1")


BAD_META = [
    ({"spec": "lenet"}, "'spec' must be a list of layers or an object, got 'lenet'"),
    ({"spec": 3}, "'spec' must be a list"),
    ({"spec": None}, "'spec' must be a list"),
    ({"spec": [1]}, "'spec' layer 0 must be an object with a 'type' name, got 1"),
    ({"spec": [{"type": "Flatten"}, [2]]}, "'spec' layer 1 must be an object"),
    ({"spec": [{"type": ["Flatten"]}]}, "'spec' layer 0 must be an object with a 'type'"),
    ({"epoch": "3"}, "'epoch' must be a whole number >= 0, got '3'"),
    ({"epoch": 1.5}, "'epoch' must be a whole number"),
    ({"epoch": -1}, "'epoch' must be a whole number"),
    ({"epoch": True}, "'epoch' must be a whole number"),
    ({"model": 3}, "'model' must be a name or null"),
    ({"options": "pool=max"}, "'options' must be an object"),
    ({"options": [1]}, "'options' must be an object"),
    ({"train": [1]}, "'train' must be an object"),
    ({"train": {"epochs": 3}}, "'train' holds an unknown setting 'epochs'"),
    ({"train": {"lr": "fast"}}, "'train' setting 'lr' must be a finite number > 0, got 'fast'"),
    ({"train": {"lr": -1}}, "'train' setting 'lr' must be"),
    ({"train": {"lr": float("nan")}}, "'train' setting 'lr' must be"),
    ({"train": {"lr": float("inf")}}, "'train' setting 'lr' must be"),
    ({"train": {"batch_size": 0}}, "'train' setting 'batch_size' must be a whole number >= 1"),
    ({"train": {"batch_size": 6.5}}, "'train' setting 'batch_size' must be"),
    ({"train": {"optimizer": "rmsprop"}}, "'train' setting 'optimizer' must be one of sgd, adam"),
    ({"train": {"seed": "zero"}}, "'train' setting 'seed' must be a whole number >= 0"),
    ({"history": {"epoch": 1}}, "'history' must be a list of objects"),
    ({"history": [1, 2]}, "'history' must be a list of objects"),
    ({"history": [{"epoch": "one"}]}, "'history' entry 0 has 'epoch' = 'one', not a number"),
    ({"history": [{"test_acc": [0.5]}]}, "'history' entry 0 has 'test_acc'"),
    ({"optimizer": "SGD"}, "'optimizer' must be an object"),
    ({"optimizer": {"step": "3"}}, "'optimizer' entry 'step' must be a whole number >= 0"),
    ({"optimizer": {"lr": {}}}, "'optimizer' entry 'lr' must be a finite number, got {}"),
    ({"optimizer": {"optimizer": 1}}, "'optimizer' entry 'optimizer' must be a name"),
    ({"spec": "x" * 1000}, "got 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx..."),
]


@pytest.mark.parametrize("changes, expected", BAD_META, ids=[str(c) for c, _ in BAD_META])
def test_crafted_metadata_is_refused_in_one_line(tmp_path, changes, expected):
    path = craft(tmp_path / "x.npz", **changes)
    message = refusal(path)
    assert message.startswith(f"{path}: "), message
    assert expected in message, message


@pytest.mark.parametrize("dtype", [np.complex64, np.bool_, "U3", "S3", "V4"])
@pytest.mark.parametrize("where", ["param/0.weight", "optim/momentum_buffer.0.weight"])
def test_weights_that_are_not_real_numbers_are_refused(tmp_path, where, dtype):
    path = craft(tmp_path / "x.npz", **{where: np.zeros((2, 3), dtype)})
    message = refusal(path)
    name = where.split("/", 1)[1]
    assert f"{name!r} has dtype" in message and "real numbers only" in message, message


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused_on_load(tmp_path, bad):
    weight = np.ones((2, 3), np.float32)
    weight[1, 2] = bad
    path = craft(tmp_path / "x.npz", **{"param/0.weight": weight})
    assert refusal(path) == (f"{path} holds non-finite weights (NaN or inf): the run that saved "
                             "it diverged")
    path = craft(tmp_path / "y.npz", **{"optim/momentum_buffer.0.weight": weight})
    assert refusal(path).endswith("holds non-finite optimizer state (NaN or inf): the run that "
                                  "saved it diverged")


def test_non_finite_weights_are_not_saved_and_the_last_good_checkpoint_is_kept(tmp_path):
    model, good = _checkpoint()
    path = tmp_path / "run.npz"
    ckpt.save(path, good)
    before = path.read_bytes()
    _, diverged = _checkpoint(epoch=2)
    next(iter(diverged.params.values()))[0] = np.nan
    with pytest.raises(ckpt.CheckpointError, match=r"^not saving .*run.npz: NaN or inf in the "
                                                     r"weights, the run diverged; an earlier"):
        ckpt.save(path, diverged)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["run.npz"]
    with pytest.raises(ckpt.CheckpointError, match="'train' holds an unknown setting 'speed'"):
        ckpt.save(tmp_path / "other.npz", ckpt.Checkpoint(spec=good.spec, params=good.params,
                                                          train={"speed": 1}))
    assert os.listdir(tmp_path) == ["run.npz"]


def test_evaluate_says_non_finite_weights_diverged(tmp_path):
    from click.testing import CliRunner

    from numbaconv.cli import cli

    _, saved = _checkpoint()
    path = tmp_path / "nan.npz"
    next(iter(saved.params.values()))[0] = np.nan
    np.savez(path, meta=np.array(json.dumps({"format": 1, "spec": saved.spec})),
             **{"param/" + k: v for k, v in saved.params.items()})
    result = CliRunner().invoke(cli, ["evaluate", str(path), "--data", str(tmp_path / "none")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1] == (
        f"Error: {path} holds non-finite weights (NaN or inf): the run that saved it diverged")


def _lenet_with(path, **changes):
    """A LeNet checkpoint as ``save`` writes it, then its metadata changed."""
    ckpt.save(path, _checkpoint()[1])
    with np.load(path) as archive:
        arrays = {name: archive[name] for name in archive.files}
    meta = json.loads(str(arrays.pop("meta")))
    np.savez(path, meta=np.array(json.dumps({**meta, **changes})), **arrays)


CLI_CASES = {
    "evaluate a pickle": (["evaluate"], NOT_CHECKPOINTS["a pickled object .npy"]),
    "evaluate a spec of numbers": (["evaluate"], lambda p: craft(p, spec=[1])),
    "resume unknown settings": (["run", "lenet", "--resume"],
                                lambda p: _lenet_with(p, train={"speed": 1})),
}


@pytest.mark.parametrize("command, make", CLI_CASES.values(), ids=CLI_CASES.keys())
def test_the_cli_refuses_crafted_files_in_one_line(tmp_path, command, make):
    from click.testing import CliRunner

    from numbaconv.cli import cli

    path = tmp_path / "x.npz"
    make(path)
    result = CliRunner().invoke(cli, [*command, str(path), "--data", str(tmp_path / "none")])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {path}"), result.output
    assert "pickle" not in result.output


# --------------------------------------------------------------------------- size limits


def test_the_default_limit_is_sane():
    assert ckpt.DEFAULT_MAX_BYTES >= 1 << 30 and ckpt.BOMB_RATIO >= 100


def test_a_checkpoint_over_the_size_limit_is_refused(tmp_path, monkeypatch):
    path = craft(tmp_path / "x.npz", **{"param/big": np.zeros(20_000, np.float32)})
    assert ckpt.load(path).params["big"].shape == (20_000,)
    assert "over the limit of 50,000 for a checkpoint" in refusal(path, max_bytes=50_000)
    monkeypatch.setenv(ckpt.MAX_BYTES_ENV, "50000")
    assert f"set {ckpt.MAX_BYTES_ENV} to allow more" in refusal(path)


def test_entries_inflating_over_the_limit_are_refused_before_inflating(tmp_path, monkeypatch):
    path = tmp_path / "x.npz"
    np.savez_compressed(path, meta=np.array(json.dumps(BASE_META)),
                        **{"param/w": np.full(100_000, 0.5, np.float32)})
    assert os.path.getsize(path) < 50_000
    monkeypatch.setattr(ckpt.zipfile.ZipFile, "open", _no_inflating)
    message = refusal(path, max_bytes=50_000)
    assert "its entries would inflate to 40" in message and "over the limit of 50,000" in message


@pytest.mark.parametrize("value", ["lots", "0", "-5"])
def test_a_bad_limit_in_the_environment_is_named(tmp_path, monkeypatch, value):
    monkeypatch.setenv(ckpt.MAX_BYTES_ENV, value)
    message = refusal(craft(tmp_path / "x.npz"))
    assert f"{ckpt.MAX_BYTES_ENV} must be a positive whole number" in message


def _no_inflating(*args, **kwargs):
    raise AssertionError("an entry was inflated")


def test_an_entry_with_an_absurd_compression_ratio_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "zeros.npz"
    zeros = np.zeros((ckpt.BOMB_MIN_BYTES + (1 << 20)) // 4, np.float32)
    np.savez_compressed(path, meta=np.array(json.dumps(BASE_META)), **{"param/w": zeros})
    monkeypatch.setattr(ckpt.zipfile.ZipFile, "open", _no_inflating)
    assert "a zip bomb" in refusal(path)  # under the size limit, but ~1000x


class _RepeatingDeflate:
    """zlib's raw deflate, except that ``block`` is compressed once and the output reused.

    Each output ends in a full flush, which resets the compressor, so every copy of ``block``
    compresses to the same bytes: the stream is the one zlib would write, in milliseconds.
    """

    def __init__(self, block: bytes):
        self._zlib = zlib.compressobj(9, zlib.DEFLATED, -15)
        self._block, self._packed = block, None

    def compress(self, data) -> bytes:
        if data is self._block and self._packed is not None:
            return self._packed
        packed = self._zlib.compress(data) + self._zlib.flush(zlib.Z_FULL_FLUSH)
        if data is self._block:
            self._packed = packed
        return packed

    def flush(self) -> bytes:
        return self._zlib.flush()


def _write_bomb(path, gib: int) -> None:
    """A checkpoint whose weight ``param/w`` is ``gib`` GiB of float32 zeros, deflated."""
    header, meta = io.BytesIO(), io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": ((gib << 30) // 4,)})
    np.save(meta, np.array(json.dumps(BASE_META)))
    zeros = bytes(1 << 20)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("meta.npy", meta.getvalue())
        info = zipfile.ZipInfo("param/w.npy")
        info.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(info, "w", force_zip64=True) as entry:
            entry._compressor = _RepeatingDeflate(zeros)  # zipfile's own: minutes for GiBs
            entry.write(header.getvalue())
            for _ in range(gib << 10):
                entry.write(zeros)


def test_a_zip_bomb_is_refused_before_inflating(tmp_path, monkeypatch):
    path = tmp_path / "bomb.npz"
    _write_bomb(path, 3)
    assert os.path.getsize(path) < 4 << 20
    with zipfile.ZipFile(path) as archive:  # a real bomb: 3 GiB of zeros behind a .npy header
        info = archive.getinfo("param/w.npy")
        assert info.file_size == (3 << 30) + len(b"\x93NUMPY") + 122
        with archive.open(info) as entry:
            assert np.lib.format.read_magic(entry) == (1, 0)
            assert np.lib.format.read_array_header_1_0(entry)[0] == ((3 << 30) // 4,)
            assert entry.read(1 << 20) == bytes(1 << 20)
    monkeypatch.setattr(ckpt.zipfile.ZipFile, "open", _no_inflating)
    message = refusal(path)
    assert "would inflate" in message and "3,221,225," in message


def test_an_entry_whose_header_claims_more_than_it_holds_is_refused(tmp_path):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False,
                                                  "shape": (10**12,)})
    with zipfile.ZipFile(tmp_path / "x.npz", "w") as archive:
        meta = io.BytesIO()
        np.save(meta, np.array(json.dumps(BASE_META)))
        archive.writestr("meta.npy", meta.getvalue())
        archive.writestr("param/w.npy", header.getvalue() + bytes(80))
    message = refusal(tmp_path / "x.npz")
    assert "is not a numbaconv checkpoint (it is damaged: entry 'param/w' holds 80 bytes, " \
           "its header claims 8,000,000,000,000)" in message


def test_entries_claiming_more_than_the_file_holds_are_refused(tmp_path):
    path = craft(tmp_path / "x.npz")
    data = bytearray(path.read_bytes())
    record = data.index(b"PK\x01\x02", data.index(b"PK\x01\x02") + 1)  # param/0.weight's
    data[record + 20:record + 28] = (10**9).to_bytes(4, "little") * 2  # sizes: 1 GB, stored
    path.write_bytes(bytes(data))
    assert "(it is damaged: its entries claim more bytes than it holds)" in refusal(path)


def test_a_dangling_link_does_not_exist(tmp_path):
    (tmp_path / "link.npz").symlink_to(tmp_path / "gone.npz")
    assert refusal(tmp_path / "link.npz").endswith("link.npz does not exist")
