"""Tests for numbaconv.data: IDX I/O, corruption checks, look-up order, download, sample."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import os
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from numbaconv.data import (
    CLASS_NAMES,
    SAMPLE_NOTICE,
    DataError,
    FashionMNIST,
    as_float_batch,
    cache_dir,
    load_fashion_mnist,
)
from numbaconv.data import download as download_mod
from numbaconv.data.fashion_mnist import FILES, SAMPLE_DIR, SYSTEM_DIR, load_dir
from numbaconv.data.idx import read_idx, write_idx
from numbaconv.data.sample_builder import build_sample

GZ_NAMES = [f"{stem}.gz" for stem in FILES.values()]


def make_set(directory: Path, n_train=20, n_test=10, gz=True, seed=0) -> dict[str, np.ndarray]:
    """Write a small valid fake Fashion-MNIST set; return its arrays by FILES field."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": (np.arange(n_train) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": (np.arange(n_test)[::-1] % 10).astype(np.uint8),
    }
    for field, array in arrays.items():
        write_idx(directory / (FILES[field] + (".gz" if gz else "")), array)
    return arrays


def assert_same(ds: FashionMNIST, arrays: dict[str, np.ndarray]) -> None:
    for field, array in arrays.items():
        np.testing.assert_array_equal(getattr(ds, field), array)
    assert ds.train_labels.dtype == np.int64 and ds.test_labels.dtype == np.int64
    assert ds.train_images.dtype == np.uint8


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No real cache, no $NUMBACONV_DATA, and any unplanned download hits a closed port."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("NUMBACONV_DATA", raising=False)
    monkeypatch.setenv("NUMBACONV_MIRROR", closed_port_url())


@pytest.fixture
def server(tmp_path):
    """A local HTTP server on an ephemeral port; yields (base_url, directory it serves)."""
    root = tmp_path / "served"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(root))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", root
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def serve_set(root: Path, monkeypatch) -> dict[str, np.ndarray]:
    """Put a fake set in ``root`` and make the downloader expect exactly its sizes and SHA-256s."""
    arrays = make_set(root)
    digests = {name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in GZ_NAMES}
    monkeypatch.setattr(download_mod, "SHA256", digests)
    sizes = {name: (root / name).stat().st_size for name in GZ_NAMES}
    monkeypatch.setattr(download_mod, "SIZES", sizes)
    return arrays


# --- IDX reading and writing ---------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("shape", [(7,), (5, 28, 28), (2, 3, 4, 5), (0, 28, 28)])
def test_idx_round_trip(tmp_path, suffix, shape):
    array = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    path = tmp_path / f"a{suffix}"
    write_idx(path, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")
    back = read_idx(path)
    assert back.dtype == np.uint8 and back.shape == shape
    np.testing.assert_array_equal(back, array)
    assert back.flags.writeable and back.flags.c_contiguous
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left


def test_idx_gzip_detected_by_magic_not_name(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x.gz", array)
    (tmp_path / "x.gz").rename(tmp_path / "compressed-without-suffix")
    write_idx(tmp_path / "raw", array)
    (tmp_path / "raw").rename(tmp_path / "raw-with-suffix.gz")
    for name in ("compressed-without-suffix", "raw-with-suffix.gz"):
        np.testing.assert_array_equal(read_idx(tmp_path / name), array)


def test_idx_header_layout(tmp_path):
    write_idx(tmp_path / "x", np.zeros((3, 2), np.uint8))
    assert (tmp_path / "x").read_bytes() == bytes.fromhex("000008020000000300000002") + bytes(6)


def test_write_idx_rejects_other_dtypes(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_idx(tmp_path / "x", np.zeros(3, np.int64))
    assert list(tmp_path.iterdir()) == []


GOOD = bytes.fromhex("00000803000000020000000200000002") + bytes(range(8))


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"\x00\x00", "too short"),
        (b"\x12\x34" + GOOD[2:], "bad IDX magic number 0x12340803"),
        (GOOD[:2] + b"\x0d" + GOOD[3:], "dtype code 0x0d is not 0x08"),
        (GOOD[:3] + b"\x00", "ndim 0"),
        (GOOD[:10], "truncated header"),
        (GOOD[:-1], "truncated payload: header size 2x2x2 needs 8 bytes, file has 7"),
        (GOOD + b"\x00\x00", "2 trailing bytes"),
        (gzip.compress(GOOD)[:-12], "corrupt gzip stream"),
        (gzip.compress(GOOD[:-3]), "truncated payload"),
    ],
    ids=["short", "magic", "dtype", "ndim0", "header", "payload", "trailing", "gzip", "gz-payload"],
)
def test_idx_corruption_names_file(tmp_path, data, fragment):
    path = tmp_path / "broken-idx3-ubyte"
    path.write_bytes(data)
    with pytest.raises(DataError) as info:
        read_idx(path)
    message = str(info.value)
    assert str(path) in message and fragment in message and "\n" not in message


def test_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "nope")


def test_the_good_fixture_is_good(tmp_path):
    (tmp_path / "g").write_bytes(GOOD)
    np.testing.assert_array_equal(read_idx(tmp_path / "g"), np.arange(8).reshape(2, 2, 2))


# --- Set-level checks ----------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_load_dir_gz_and_raw(tmp_path, gz):
    arrays = make_set(tmp_path / "d", gz=gz)
    ds = load_dir(tmp_path / "d")
    assert_same(ds, arrays)
    assert ds.source == str(tmp_path / "d") and not ds.is_sample


def test_count_mismatch_names_labels_file(tmp_path):
    make_set(tmp_path)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    write_idx(path, np.zeros(9, np.uint8))
    with pytest.raises(DataError, match="9 labels but t10k-images-idx3-ubyte.gz has 10") as info:
        load_dir(tmp_path)
    assert str(path) in str(info.value)


def test_bad_label_names_file(tmp_path):
    make_set(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    labels = np.arange(20, dtype=np.uint8) % 10
    labels[13] = 10
    write_idx(path, labels)
    with pytest.raises(DataError, match="label 10 at index 13 is outside 0..9") as info:
        load_dir(tmp_path)
    assert str(path) in str(info.value)


def test_wrong_image_shape_names_file(tmp_path):
    make_set(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    write_idx(path, np.zeros((20, 28, 27), np.uint8))
    with pytest.raises(DataError, match=r"not \(N, 28, 28\)") as info:
        load_dir(tmp_path)
    assert str(path) in str(info.value)


def test_truncated_real_layout_file_in_set(tmp_path):
    make_set(tmp_path, gz=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated payload") as info:
        load_dir(tmp_path)
    assert str(path) in str(info.value)


# --- Look-up order -------------------------------------------------------------------------


def test_explicit_dir_beats_env_cache_and_system(tmp_path, monkeypatch):
    explicit = make_set(tmp_path / "explicit", seed=1)
    make_set(tmp_path / "env", seed=2)
    make_set(cache_dir(), seed=3)
    make_set(tmp_path / "system", seed=4)
    monkeypatch.setenv("NUMBACONV_DATA", str(tmp_path / "env"))
    ds = load_fashion_mnist(tmp_path / "explicit", system_dir=tmp_path / "system")
    assert_same(ds, explicit)
    assert ds.source == str(tmp_path / "explicit")


@pytest.mark.parametrize("exists", [True, False])
def test_explicit_dir_without_files_is_an_error(tmp_path, exists):
    make_set(cache_dir())
    data_dir = tmp_path / "empty"
    if exists:
        data_dir.mkdir()
        write_idx(data_dir / "train-images-idx3-ubyte.gz", np.zeros((1, 28, 28), np.uint8))
    with pytest.raises(DataError) as info:
        load_fashion_mnist(data_dir, system_dir=None, allow_sample=True)
    assert str(data_dir) in str(info.value)


def test_env_dir_beats_cache_and_must_hold_files(tmp_path, monkeypatch):
    env = make_set(tmp_path / "env", seed=2)
    make_set(cache_dir(), seed=3)
    monkeypatch.setenv("NUMBACONV_DATA", str(tmp_path / "env"))
    assert_same(load_fashion_mnist(system_dir=None), env)
    monkeypatch.setenv("NUMBACONV_DATA", str(tmp_path / "nothing-here"))
    with pytest.raises(DataError, match="nothing-here"):
        load_fashion_mnist(system_dir=None)


def test_cache_beats_system_dir(tmp_path):
    cached = make_set(tmp_path / "xdg" / "numbaconv" / "fashion-mnist", seed=3)
    make_set(tmp_path / "system", seed=4)
    ds = load_fashion_mnist(system_dir=tmp_path / "system")
    assert_same(ds, cached)
    assert ds.source == str(tmp_path / "xdg" / "numbaconv" / "fashion-mnist")


@pytest.mark.parametrize("xdg", [None, "", "relative/path"])
def test_cache_falls_back_to_home_without_usable_xdg(tmp_path, monkeypatch, xdg):
    if xdg is None:
        monkeypatch.delenv("XDG_CACHE_HOME")
    else:
        monkeypatch.setenv("XDG_CACHE_HOME", xdg)
    home_cache = tmp_path / "home" / ".cache" / "numbaconv" / "fashion-mnist"
    assert cache_dir() == home_cache
    cached = make_set(home_cache)
    assert_same(load_fashion_mnist(system_dir=None, download=False, allow_sample=False), cached)


def test_system_dir_used_when_cache_empty(tmp_path):
    system = make_set(tmp_path / "system", gz=False, seed=4)
    ds = load_fashion_mnist(system_dir=tmp_path / "system", allow_sample=False)
    assert_same(ds, system)
    assert ds.source == str(tmp_path / "system")


def test_partial_cache_is_skipped(tmp_path):
    make_set(cache_dir())
    (cache_dir() / "t10k-labels-idx1-ubyte.gz").unlink()
    system = make_set(tmp_path / "system", seed=4)
    assert_same(load_fashion_mnist(system_dir=tmp_path / "system"), system)


def test_nothing_found_without_download_or_sample(tmp_path):
    with pytest.raises(DataError, match="download disabled"):
        load_fashion_mnist(system_dir=tmp_path / "none", download=False, allow_sample=False)
    ds = load_fashion_mnist(system_dir=tmp_path / "none", download=False)
    assert ds.is_sample


# --- Download ------------------------------------------------------------------------------


def test_download_into_cache(server, monkeypatch, capsys):
    url, root = server
    arrays = serve_set(root, monkeypatch)
    ds = load_fashion_mnist(mirror=url, system_dir=None, allow_sample=False, progress=True)
    assert_same(ds, arrays)
    assert ds.source == str(cache_dir())
    assert sorted(os.listdir(cache_dir())) == sorted(GZ_NAMES)
    for name in GZ_NAMES:
        assert (cache_dir() / name).read_bytes() == (root / name).read_bytes()
    err = capsys.readouterr().err
    assert all(name in err for name in GZ_NAMES)
    # The mirror is not needed any more: the cache answers.
    for name in GZ_NAMES:
        (root / name).unlink()
    assert_same(load_fashion_mnist(mirror=url, system_dir=None, allow_sample=False), arrays)


def test_download_mirror_from_env_and_quiet(server, monkeypatch, capsys):
    url, root = server
    arrays = serve_set(root, monkeypatch)
    monkeypatch.setenv("NUMBACONV_MIRROR", url.rstrip("/"))
    assert_same(load_fashion_mnist(system_dir=None, allow_sample=False, progress=False), arrays)
    assert capsys.readouterr().err == ""


def test_download_keeps_verified_cached_file(server, monkeypatch):
    url, root = server
    arrays = serve_set(root, monkeypatch)
    cache_dir().mkdir(parents=True)
    kept = "t10k-labels-idx1-ubyte.gz"
    os.replace(root / kept, cache_dir() / kept)  # the server no longer has it
    assert_same(load_fashion_mnist(mirror=url, system_dir=None, allow_sample=False), arrays)


@pytest.mark.parametrize("allow_sample", [True, False])
def test_download_sha_mismatch_is_an_error_and_leaves_nothing(server, monkeypatch, allow_sample):
    url, root = server
    serve_set(root, monkeypatch)
    download_mod.SHA256["t10k-images-idx3-ubyte.gz"] = "0" * 64
    with pytest.raises(DataError, match="SHA-256 mismatch") as info:
        load_fashion_mnist(mirror=url, system_dir=None, allow_sample=allow_sample, progress=False)
    assert "t10k-images-idx3-ubyte.gz" in str(info.value)
    assert os.listdir(cache_dir()) == []


def test_download_404_falls_back_to_sample_or_raises(server, monkeypatch):
    url, root = server
    serve_set(root, monkeypatch)
    (root / "train-labels-idx1-ubyte.gz").unlink()
    ds = load_fashion_mnist(mirror=url, system_dir=None, progress=False)
    assert ds.is_sample and ds.source == "sample"
    assert os.listdir(cache_dir()) == []
    with pytest.raises(DataError, match="404") as info:
        load_fashion_mnist(mirror=url, system_dir=None, allow_sample=False, progress=False)
    assert "train-labels-idx1-ubyte.gz" in str(info.value)
    assert os.listdir(cache_dir()) == []


def test_download_unreachable_falls_back_to_sample():
    ds = load_fashion_mnist(mirror=closed_port_url(), system_dir=None, progress=False)
    assert ds.is_sample
    with pytest.raises(DataError, match="download failed"):
        load_fashion_mnist(system_dir=None, allow_sample=False, progress=False)


def test_download_cut_short_is_a_download_error(tmp_path, monkeypatch):
    class Short(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(download_mod.SIZES[self.path.lstrip("/")]))
            self.end_headers()
            self.wfile.write(b"x" * 10)
            self.close_connection = True

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Short)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(download_mod.DownloadError, match="10 of 26421880 bytes"):
            download_mod.download_fashion_mnist(
                tmp_path / "dest", f"http://127.0.0.1:{httpd.server_address[1]}", progress=False
            )
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
    assert os.listdir(tmp_path / "dest") == []


def test_upstream_checksums_cover_the_four_files():
    assert sorted(download_mod.SHA256) == sorted(GZ_NAMES)
    assert all(len(h) == 64 and int(h, 16) >= 0 for h in download_mod.SHA256.values())


# --- Shipped sample, builder, real data, float batches ---------------------------------------


def test_shipped_sample_is_small_balanced_and_valid():
    total = sum(p.stat().st_size for p in SAMPLE_DIR.iterdir())
    assert total < 3_000_000
    ds = load_dir(SAMPLE_DIR, source="sample")
    assert ds.is_sample
    assert ds.train_images.shape == (3000, 28, 28) and ds.test_images.shape == (1000, 28, 28)
    assert np.bincount(ds.train_labels, minlength=10).tolist() == [300] * 10
    assert np.bincount(ds.test_labels, minlength=10).tolist() == [100] * 10
    assert ds.train_images.max() > 200  # real pictures, not blank


def test_sample_notice_says_how_to_get_the_full_set():
    assert "sample" in SAMPLE_NOTICE
    for hint in ("apt-get install dataset-fashion-mnist", "--data", "download"):
        assert hint in SAMPLE_NOTICE
    assert len(CLASS_NAMES) == 10


def test_build_sample_is_balanced_deterministic_subset(tmp_path):
    source = make_set(tmp_path / "full", n_train=200, n_test=100)
    out_a = build_sample(tmp_path / "full", tmp_path / "a", n_train=50, n_test=20, seed=7)
    out_b = build_sample(tmp_path / "full", tmp_path / "b", n_train=50, n_test=20, seed=7)
    a, b = load_dir(out_a), load_dir(out_b)
    for field in FILES:
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert np.bincount(a.train_labels).tolist() == [5] * 10
    assert np.bincount(a.test_labels).tolist() == [2] * 10
    rows = {
        img.tobytes(): lab
        for img, lab in zip(source["train_images"], source["train_labels"], strict=True)
    }
    assert all(
        rows[img.tobytes()] == lab for img, lab in zip(a.train_images, a.train_labels, strict=True)
    )
    assert len({img.tobytes() for img in a.train_images}) == 50  # no repeats
    c = load_dir(build_sample(tmp_path / "full", tmp_path / "c", n_train=50, n_test=20, seed=8))
    assert not np.array_equal(a.train_images, c.train_images)
    with pytest.raises(ValueError, match="multiples of 10"):
        build_sample(tmp_path / "full", tmp_path / "d", n_train=55)


needs_debian = pytest.mark.skipif(
    not SYSTEM_DIR.is_dir(), reason=f"{SYSTEM_DIR} (dataset-fashion-mnist) not installed"
)


@needs_debian
def test_real_debian_set_loads():
    ds = load_fashion_mnist(download=False, allow_sample=False)
    assert ds.source == str(SYSTEM_DIR) and not ds.is_sample
    assert ds.train_images.shape == (60000, 28, 28) and ds.train_labels.shape == (60000,)
    assert ds.test_images.shape == (10000, 28, 28) and ds.test_labels.shape == (10000,)
    assert np.bincount(ds.train_labels).tolist() == [6000] * 10
    assert np.bincount(ds.test_labels).tolist() == [1000] * 10


@needs_debian
def test_shipped_sample_is_rebuilt_from_debian_set(tmp_path):
    rebuilt = load_dir(build_sample(SYSTEM_DIR, tmp_path / "sample"))
    shipped = load_dir(SAMPLE_DIR)
    for field in FILES:
        np.testing.assert_array_equal(getattr(rebuilt, field), getattr(shipped, field))


def test_as_float_batch():
    images = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)
    batch = as_float_batch(images)
    assert batch.dtype == np.float32 and batch.shape == (1, 1, 2, 2)
    assert batch.flags.c_contiguous
    np.testing.assert_array_equal(batch[0, 0], np.array([[0, 1], [0.2, 0.4]], np.float32))
    with pytest.raises(ValueError):
        as_float_batch(images.astype(np.float32))
    with pytest.raises(ValueError):
        as_float_batch(images[0])
