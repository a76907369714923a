"""Downloading from hostile mirrors (served on 127.0.0.1): bounded in bytes and in time.

Every download runs under :func:`download_within`, so a downloader that hangs fails the
test after a few seconds instead of hanging the suite.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import os
import threading
import time

import pytest

from numbaconv.data import DataError
from numbaconv.data import download as download_mod

NAME = "tiny-idx1-ubyte.gz"
PAYLOAD = bytes(range(256)) * 4
TABLE = {"sha256": {NAME: hashlib.sha256(PAYLOAD).hexdigest()}, "sizes": {NAME: len(PAYLOAD)}}
GUARD_S = 8.0  # how long a test lets one download run before calling it hung
DRIP_S = 0.3  # a slow mirror's pause between two bytes


@pytest.fixture
def mirror():
    """``start(respond) -> base URL`` of a server whose GET handler is ``respond(handler, stop)``.

    ``stop`` is set when the test ends, so that no slow or endless answer outlives it.
    """
    stop = threading.Event()
    running = []

    def start(respond):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                with contextlib.suppress(OSError):  # the client hung up: what a limit does
                    respond(self, stop)

            def log_message(self, *args):
                pass

        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        running.append((httpd, thread))
        return f"http://127.0.0.1:{httpd.server_address[1]}/"

    yield start
    stop.set()
    for httpd, thread in running:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def download_within(seconds, dest, url, **kwargs):
    """Run ``download_fashion_mnist(dest, url, **TABLE, **kwargs)`` quietly in a thread.

    Returns ``(result or exception, seconds taken)``; fails the test if it is still running
    after ``seconds``.
    """
    outcome = []

    def target():
        try:
            outcome.append(
                download_mod.download_fashion_mnist(dest, url, progress=False, **TABLE, **kwargs)
            )
        except Exception as exc:  # handed to the test
            outcome.append(exc)

    start = time.monotonic()
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"download still running after {seconds} s: it would hang")
    return outcome[0], time.monotonic() - start


def one_line_naming(exc, url):
    message = str(exc)
    return url + NAME in message and "\n" not in message


def send_headers(handler, length=None):
    handler.protocol_version = "HTTP/1.0"
    handler.send_response(200)
    if length is not None:
        handler.send_header("Content-Length", str(length))
    handler.end_headers()


def test_endless_stream_is_cut_at_the_files_size(mirror, tmp_path):
    sent = []

    def endless(handler, stop):
        send_headers(handler)  # no Content-Length: the end is wherever the mirror says
        chunk = b"\xff" * (1 << 16)
        # 256 MiB, not forever: a downloader without a limit still ends, in a few seconds.
        for _ in range(4096):
            if stop.is_set():
                return
            handler.wfile.write(chunk)
            sent.append(len(chunk))

    url = mirror(endless)
    error, _ = download_within(GUARD_S, tmp_path / "dest", url)
    assert isinstance(error, DataError) and not isinstance(error, download_mod.DownloadError)
    assert f"more than the file's {len(PAYLOAD)} bytes" in str(error)
    assert one_line_naming(error, url)
    assert os.listdir(tmp_path / "dest") == []
    # It stopped reading: what the mirror got out is what the socket buffers hold, not 256 MiB.
    assert sum(sent) < 64 << 20


@pytest.mark.parametrize("announced", [len(PAYLOAD) + 1, len(PAYLOAD) - 1, 10**12])
def test_content_length_must_be_the_files_size(mirror, tmp_path, announced):
    def lying(handler, stop):
        send_headers(handler, announced)
        handler.wfile.write(PAYLOAD)  # the right bytes under a wrong announcement

    url = mirror(lying)
    error, _ = download_within(GUARD_S, tmp_path / "dest", url)
    assert isinstance(error, DataError)
    assert f"announces '{announced}' bytes (Content-Length), the file has {len(PAYLOAD)}" in str(
        error
    )
    assert one_line_naming(error, url)
    assert os.listdir(tmp_path / "dest") == []


def test_slow_body_hits_the_files_deadline(mirror, tmp_path):
    def drip(handler, stop):
        send_headers(handler, len(PAYLOAD))
        for byte in PAYLOAD:  # each read gets a byte in time: only a whole-file limit helps
            if stop.wait(DRIP_S):
                return
            handler.wfile.write(bytes([byte]))

    url = mirror(drip)
    error, took = download_within(GUARD_S, tmp_path / "dest", url, file_timeout_s=1)
    assert isinstance(error, download_mod.DownloadError)
    assert "not done within the 1 s limit for one file" in str(error)
    assert f"of {len(PAYLOAD)} bytes arrived" in str(error)
    assert one_line_naming(error, url)
    assert 1 <= took < 3  # the deadline, long before the drip would end
    assert os.listdir(tmp_path / "dest") == []


def test_slow_headers_hit_the_files_deadline(mirror, tmp_path):
    def drip_status_line(handler, stop):
        for byte in b"HTTP/1.0 200 OK\r\nX-Slow: " + b"." * 100 + b"\r\n\r\n":
            if stop.wait(DRIP_S):
                return
            handler.wfile.write(bytes([byte]))

    url = mirror(drip_status_line)
    error, took = download_within(GUARD_S, tmp_path / "dest", url, file_timeout_s=1)
    assert isinstance(error, download_mod.DownloadError)
    assert "not done within the 1 s limit for one file (0 of 1024 bytes arrived)" in str(error)
    assert one_line_naming(error, url)
    assert 1 <= took < 3  # the deadline, long before the drip would end
    assert os.listdir(tmp_path / "dest") == []


def test_silent_mirror_hits_the_socket_timeout(mirror, tmp_path):
    def silent(handler, stop):
        send_headers(handler, len(PAYLOAD))
        stop.wait()

    url = mirror(silent)
    error, took = download_within(
        GUARD_S, tmp_path / "dest", url, file_timeout_s=30, socket_timeout_s=0.5
    )
    assert isinstance(error, download_mod.DownloadError)
    assert "download failed (timed out)" in str(error)
    assert one_line_naming(error, url)
    assert took < 3
    assert os.listdir(tmp_path / "dest") == []


def test_exact_file_without_content_length_is_accepted(mirror, tmp_path):
    def plain(handler, stop):
        send_headers(handler)
        handler.wfile.write(PAYLOAD)

    dest, _ = download_within(GUARD_S, tmp_path / "dest", mirror(plain), file_timeout_s=5)
    assert (dest / NAME).read_bytes() == PAYLOAD
    assert os.listdir(dest) == [NAME]


@pytest.mark.parametrize("name", ["file_timeout_s", "socket_timeout_s"])
@pytest.mark.parametrize("value", [0, -1, float("inf"), float("nan"), "1"])
def test_limits_are_checked(tmp_path, name, value):
    with pytest.raises(ValueError, match=name):
        download_mod.download_fashion_mnist(tmp_path, "http://127.0.0.1:9/", **{name: value})
    assert not tmp_path.joinpath("train-images-idx3-ubyte.gz").exists()


def test_every_file_needs_a_size(tmp_path):
    with pytest.raises(ValueError, match=f"sizes has no entry for {NAME}"):
        download_mod.download_fashion_mnist(
            tmp_path, "http://127.0.0.1:9/", sha256=TABLE["sha256"], sizes={}
        )


def test_upstream_sizes_cover_the_four_files():
    assert sorted(download_mod.SIZES) == sorted(download_mod.SHA256)
    assert download_mod.SIZES["train-images-idx3-ubyte.gz"] == 26421880
    assert download_mod.SIZES["t10k-labels-idx1-ubyte.gz"] == 5148
