"""Downloading the four Fashion-MNIST ``.gz`` files from a mirror, SHA-256 checked.

All four files land in the destination directory together or not at all: each is streamed
to a temporary file beside its target and only moved into place (``os.replace``) once every
file has arrived and matched its checksum.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import sys
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
TIMEOUT_S = 30
CHUNK = 1 << 16

# SHA-256 of the upstream files (zalandoresearch/fashion-mnist, data/fashion/; sizes
# 26421880, 29515, 4422102 and 5148 bytes). Debian's dataset-fashion-mnist ships the same
# deflate streams under a gzip header without the stored file name and with another mtime,
# so its .gz files hash differently; putting the upstream header back reproduces these.
_SHA256SUMS = """\
3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84  train-images-idx3-ubyte.gz
a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845  train-labels-idx1-ubyte.gz
346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073  t10k-images-idx3-ubyte.gz
67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5  t10k-labels-idx1-ubyte.gz
"""
SHA256 = {name: digest for digest, name in map(str.split, _SHA256SUMS.splitlines())}


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
    progress: bool = True,
) -> Path:
    """Fetch the files named in ``sha256`` (default :data:`SHA256`) into ``dest_dir``.

    Files already there with the right checksum are kept. Returns ``dest_dir``.
    Raises :class:`DownloadError` when the mirror is unreachable, answers with an HTTP
    error or cuts a transfer short, and :class:`DataError` when a file arrives whole but
    its SHA-256 is wrong. Either way nothing new is left in ``dest_dir``.
    """
    dest = Path(dest_dir)
    base = mirror_url(mirror).rstrip("/") + "/"
    wanted = SHA256 if sha256 is None else sha256
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"{dest}: cannot create download directory ({exc})") from exc
    missing = {
        name: digest
        for name, digest in wanted.items()
        if not ((dest / name).is_file() and sha256_of(dest / name) == digest)
    }
    with contextlib.ExitStack() as staged:
        for name, digest in missing.items():
            f = staged.enter_context(atomic_file(dest / name))
            _fetch(base + name, f, digest, progress)
    return dest


def _fetch(url: str, out: BinaryIO, expected_sha256: str, progress: bool) -> None:
    """Stream ``url`` into the open binary file ``out`` and check its SHA-256."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            received = 0
            with _bar(url.rsplit("/", 1)[-1], total, progress) as update:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    update(len(chunk))
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"{url}: download failed (HTTP {exc.code} {exc.reason})") from exc
    except urllib.error.URLError as exc:
        raise DownloadError(f"{url}: download failed ({exc.reason})") from exc
    except (http.client.HTTPException, OSError) as exc:
        raise DownloadError(f"{url}: download failed ({exc})") from exc
    if total is not None and received != total:
        raise DownloadError(f"{url}: download cut short ({received} of {total} bytes)")
    if digest.hexdigest() != expected_sha256:
        raise DataError(
            f"{url}: SHA-256 mismatch (got {digest.hexdigest()}, expected {expected_sha256})"
        )


@contextlib.contextmanager
def _bar(label: str, total: int | None, enabled: bool):
    """Yield ``update(n_bytes)``: a click progress bar on a terminal, one plain line otherwise."""
    if not enabled:
        yield lambda n: None
    elif total is not None and sys.stderr.isatty():
        with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
            yield bar.update
    else:
        size = "unknown size" if total is None else f"{total} bytes"
        click.echo(f"Downloading {label} ({size})", err=True)
        yield lambda n: None
