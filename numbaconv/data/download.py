"""Downloading the four Fashion-MNIST ``.gz`` files from a mirror, size and SHA-256 checked.

All four files land in the destination directory together or not at all: each is streamed
to a temporary file beside its target and only moved into place (``os.replace``) once every
file has arrived and matched its checksum.

A mirror is not trusted to end a transfer: each file's size is known, so no more than that is
ever read (an announced ``Content-Length`` must agree with it), and each file has a deadline
for its whole transfer, connection and headers included, not only a timeout per socket read.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import math
import os
import socket
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

import click

from ..atomic import atomic_file
from .idx import DataError

DEFAULT_MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
MIRROR_ENV = "NUMBACONV_MIRROR"
# Default limits of download_fashion_mnist. 900 s for the whole of one file lets the largest
# (26 MB) arrive at 30 kB/s; 30 s is how long one connection attempt or socket read may wait.
FILE_TIMEOUT_S = 900.0
SOCKET_TIMEOUT_S = 30.0
CHUNK = 1 << 16

# SHA-256 and size in bytes of the upstream files (zalandoresearch/fashion-mnist,
# data/fashion/). Debian's dataset-fashion-mnist ships the same deflate streams under a gzip
# header without the stored file name and with another mtime, so its .gz files hash
# differently; putting the upstream header back reproduces these.
_UPSTREAM_FILES = """\
3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84 26421880 train-images-idx3-ubyte.gz
a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845 29515 train-labels-idx1-ubyte.gz
346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073 4422102 t10k-images-idx3-ubyte.gz
67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5 5148 t10k-labels-idx1-ubyte.gz
"""
SHA256 = {name: digest for digest, _, name in map(str.split, _UPSTREAM_FILES.splitlines())}
SIZES = {name: int(size) for _, size, name in map(str.split, _UPSTREAM_FILES.splitlines())}


class DownloadError(DataError):
    """The mirror could not be reached or did not deliver a file (not an integrity failure)."""


def mirror_url(mirror: str | None = None) -> str:
    """The base URL to use: ``mirror``, else ``$NUMBACONV_MIRROR``, else :data:`DEFAULT_MIRROR`."""
    return mirror or os.environ.get(MIRROR_ENV) or DEFAULT_MIRROR


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_fashion_mnist(
    dest_dir: str | os.PathLike[str],
    mirror: str | None = None,
    *,
    sha256: Mapping[str, str] | None = None,
    sizes: Mapping[str, int] | None = None,
    progress: bool = True,
    file_timeout_s: float = FILE_TIMEOUT_S,
    socket_timeout_s: float = SOCKET_TIMEOUT_S,
) -> Path:
    """Fetch the files named in ``sha256`` (default :data:`SHA256`) into ``dest_dir``.

    ``sizes`` (default :data:`SIZES`) gives each file's length in bytes: a mirror that
    announces another length or sends more is refused as soon as it does. Each file must
    arrive within ``file_timeout_s`` seconds in all (default :data:`FILE_TIMEOUT_S`, 900 s),
    and no connection attempt or socket read may wait longer than ``socket_timeout_s``
    (default :data:`SOCKET_TIMEOUT_S`, 30 s).

    Files already there with the right size and checksum are kept. Returns ``dest_dir``.
    Raises :class:`DownloadError` when the mirror is unreachable, answers with an HTTP
    error, cuts a transfer short or runs out of time, and :class:`DataError` when a file's
    length or SHA-256 is wrong. Either way nothing new is left in ``dest_dir``.
    """
    for name, value in (("file_timeout_s", file_timeout_s), ("socket_timeout_s", socket_timeout_s)):
        if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    dest = Path(dest_dir)
    base = mirror_url(mirror).rstrip("/") + "/"
    wanted = SHA256 if sha256 is None else sha256
    lengths = SIZES if sizes is None else sizes
    unsized = sorted(set(wanted) - set(lengths))
    if unsized:
        raise ValueError(f"sizes has no entry for {', '.join(unsized)}")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"{dest}: cannot create download directory ({exc})") from exc
    missing = {
        name: digest
        for name, digest in wanted.items()
        if not (
            (dest / name).is_file()
            and (dest / name).stat().st_size == lengths[name]
            and sha256_of(dest / name) == digest
        )
    }
    with contextlib.ExitStack() as staged:
        for name, digest in missing.items():
            f = staged.enter_context(atomic_file(dest / name))
            _fetch(base + name, f, digest, lengths[name], progress, file_timeout_s,
                   socket_timeout_s)
    return dest


def _fetch(
    url: str,
    out: BinaryIO,
    expected_sha256: str,
    size: int,
    progress: bool,
    file_timeout_s: float,
    socket_timeout_s: float,
) -> None:
    """Stream ``url`` into the open binary file ``out``: at most ``size`` bytes, in time."""
    digest = hashlib.sha256()
    received = 0
    with _Deadline(file_timeout_s) as deadline:
        opener = urllib.request.build_opener(_HTTPHandler(deadline), _HTTPSHandler(deadline))
        # A connection attempt is not watched by the deadline: bound it by the deadline too.
        timeout = min(socket_timeout_s, file_timeout_s)
        try:
            with opener.open(url, timeout=timeout) as response:
                announced = response.headers.get("Content-Length")
                if announced is not None and announced.strip() != str(size):
                    raise DataError(
                        f"{url}: the mirror announces {announced.strip()!r} bytes "
                        f"(Content-Length), the file has {size}"
                    )
                with _bar(url.rsplit("/", 1)[-1], size, progress) as update:
                    # Ask for one byte past the end: a mirror that has more is refused.
                    while not deadline.expired and (
                        chunk := response.read1(min(CHUNK, size - received + 1))
                    ):
                        received += len(chunk)
                        if received > size:
                            raise DataError(
                                f"{url}: the mirror sent more than the file's {size} bytes; "
                                "stopped reading"
                            )
                        out.write(chunk)
                        digest.update(chunk)
                        update(len(chunk))
        except urllib.error.HTTPError as exc:
            raise DownloadError(f"{url}: download failed (HTTP {exc.code} {exc.reason})") from exc
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            if deadline.expired:
                raise _out_of_time(url, file_timeout_s, received, size) from exc
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise DownloadError(f"{url}: download failed ({reason})") from exc
    if received < size:
        if deadline.expired:
            raise _out_of_time(url, file_timeout_s, received, size)
        raise DownloadError(f"{url}: download cut short ({received} of {size} bytes)")
    if digest.hexdigest() != expected_sha256:
        raise DataError(
            f"{url}: SHA-256 mismatch (got {digest.hexdigest()}, expected {expected_sha256})"
        )


def _out_of_time(url: str, limit_s: float, received: int, size: int) -> DownloadError:
    return DownloadError(
        f"{url}: download not done within the {limit_s:g} s limit for one file "
        f"({received} of {size} bytes arrived)"
    )


class _Deadline:
    """A file's time limit: when it passes, every connection made for the file is shut down.

    Shutting a socket down wakes a read blocked on it in another thread wherever the transfer
    is (status line, headers, body), which a timeout per socket read cannot do against a
    mirror that sends a byte just often enough.
    """

    def __init__(self, seconds: float):
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._timer.cancel()

    def watch(self, sock: socket.socket) -> None:
        """Shut ``sock`` down when the time is up (at once if it already is)."""
        with self._lock:
            self._sockets.append(sock)
            expired = self.expired
        if expired:
            _shut_down(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shut_down(sock)


def _shut_down(sock: socket.socket) -> None:
    # The plain socket's shutdown, also for TLS: SSLSocket.shutdown would also drop its TLS
    # state, which the thread blocked in a read is using.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Watched:
    """Mixin for http.client connections: hand each new socket to the file's deadline."""

    def __init__(self, *args, deadline: _Deadline, **kwargs):
        super().__init__(*args, **kwargs)
        self.deadline = deadline

    def connect(self) -> None:
        super().connect()
        self.deadline.watch(self.sock)


class _HTTPConnection(_Watched, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_Watched, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline):
        super().__init__()
        self.deadline = deadline

    def http_open(self, req):
        return self.do_open(_HTTPConnection, req, deadline=self.deadline)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline):
        super().__init__()
        self.deadline = deadline

    def https_open(self, req):
        return self.do_open(_HTTPSConnection, req, deadline=self.deadline)


@contextlib.contextmanager
def _bar(label: str, total: int, enabled: bool):
    """Yield ``update(n_bytes)``: a click progress bar on a terminal, one plain line otherwise."""
    if not enabled:
        yield lambda n: None
    elif sys.stderr.isatty():
        with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
            yield bar.update
    else:
        click.echo(f"Downloading {label} ({total} bytes)", err=True)
        yield lambda n: None
