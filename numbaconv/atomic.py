"""Writing output files safely: atomically where a file is replaced, never over special files.

What the path names decides how :func:`atomic_file` writes it:

* a regular file, or nothing yet: a temporary ``.NAME.XXXXXXXX.part`` file in the same
  directory is written, fsynced, renamed over the target with ``os.replace``, and the
  directory is fsynced; a reader never sees a half-written file and a crash keeps the old
  one. A replaced file keeps its permission bits (and, where allowed, its owner); a new file
  gets ``0o666 & ~umask``.
* a symbolic link: the file it finally points to is written as above, in that file's
  directory; the link stays a link.
* a character device (``/dev/null``, a terminal) or a FIFO: written through, directly, as a
  shell's ``>`` would: a rename would put a regular file in place of the device or pipe.
  A FIFO blocks until something reads it.
* a directory, a block device or a socket: refused with an ``OSError`` naming the path (an
  output written onto a disk device would destroy its file system).

Every ``OSError`` raised by the writing names the user's path, never the temporary file.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import secrets
import stat
from collections.abc import Iterator
from typing import BinaryIO

_TRIES = 100  # random temporary names to try before giving up


class UnwritablePath(ValueError):
    """An output path that cannot be written, found before the work that would fill it."""


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Yield a binary file whose content becomes ``path``'s only when the block succeeds.

    See the module's docstring for links and special files. If the block raises (including
    ``KeyboardInterrupt``), ``path`` is left as it was and the temporary file is removed.
    """
    shown = os.fspath(path)
    with _naming(shown):
        real = _resolve(shown)
        status = _stat(real)
    if status is not None and _writes_through(status):
        with _write_through(real, shown) as out:
            yield out
        return
    _refuse_special(status, shown)
    directory = os.path.dirname(real)
    with _naming(shown):
        fd, tmp = _create_temp(directory, os.path.basename(real))
    out = io.BufferedWriter(_NamedFileIO(fd, shown))
    try:
        if status is not None:
            with _naming(shown):
                _keep_owner_and_mode(out.fileno(), status)
        yield out
        with _naming(shown):
            out.flush()
            os.fsync(out.fileno())
            out.close()
            os.replace(tmp, real)
            _fsync_directory(directory)
    except BaseException:
        with contextlib.suppress(OSError):
            out.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_writable(path: str | os.PathLike[str], option: str) -> None:
    """Raise :class:`UnwritablePath` unless :func:`atomic_file` could write ``path``.

    Missing parent folders are created, as the writers do. For a regular or new file a
    temporary file is created and removed in the target's directory; an existing character
    device or FIFO must be writable (a FIFO is not opened: that would wait for a reader).
    The one-line message names ``option`` and the user's ``path``, e.g. ``--save
    /proc/x.npz: cannot write there: No such file or directory``.
    """
    shown = os.fspath(path)

    def refuse(reason: str) -> UnwritablePath:
        return UnwritablePath(f"{option} {shown}: {reason}")

    try:
        real = _resolve(shown)
        status = _stat(real)
        if status is not None and _writes_through(status):
            if not os.access(real, os.W_OK):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), shown)
            return
        _refuse_special(status, shown)
    except OSError as error:
        raise refuse(f"cannot write there: {error.strerror}") from None
    directory = os.path.dirname(real)
    if os.path.lexists(directory) and not os.path.isdir(directory):
        raise refuse(f"cannot create the folder {directory}: {os.strerror(errno.ENOTDIR)}")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        raise refuse(f"cannot create the folder {directory}: {error.strerror}") from None
    try:
        fd, tmp = _create_temp(directory, os.path.basename(real))
        os.close(fd)
        os.unlink(tmp)
    except OSError as error:
        raise refuse(f"cannot write there: {error.strerror}") from None


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether paths ``a`` and ``b`` name one file, existing or not.

    True when they resolve (links, ``..``, relative to the working directory) to the same
    path, or, when both exist, to the same file (hard links, bind mounts).
    """
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


# --------------------------------------------------------------------------- helpers


class _NamedFileIO(io.FileIO):
    """A raw file whose write errors (disk full, quota) name the user's path."""

    def __init__(self, fd: int, shown: str):
        super().__init__(fd, "wb")
        self._shown = shown

    def write(self, data) -> int | None:
        try:
            return super().write(data)
        except OSError as error:
            raise _named(error, self._shown) from None


def _named(error: OSError, shown: str) -> OSError:
    """``error`` with the same type, errno and reason, naming ``shown``."""
    if error.errno is None:
        return error
    return type(error)(error.errno, error.strerror, shown)


@contextlib.contextmanager
def _naming(shown: str) -> Iterator[None]:
    """Re-raise the ``OSError``s of the block as naming ``shown``, not an internal path."""
    try:
        yield
    except OSError as error:
        raise _named(error, shown) from None


def _resolve(shown: str) -> str:
    """The absolute path that ``shown`` finally names, through every symbolic link."""
    if shown.endswith(os.sep):  # as a shell's `> dir/` does: the name is a folder's
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), shown)
    real = os.path.realpath(shown)
    if os.path.islink(real):  # realpath stops at a loop of links
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), shown)
    return real


def _stat(real: str) -> os.stat_result | None:
    """``os.stat(real)``, or None where nothing exists yet (or a file stands for a folder)."""
    try:
        return os.stat(real)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _writes_through(status: os.stat_result) -> bool:
    return stat.S_ISCHR(status.st_mode) or stat.S_ISFIFO(status.st_mode)


def _refuse_special(status: os.stat_result | None, shown: str) -> None:
    """Raise for what neither a rename nor a direct write may replace."""
    if status is None or stat.S_ISREG(status.st_mode):
        return
    if stat.S_ISDIR(status.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), shown)
    kind = "a block device" if stat.S_ISBLK(status.st_mode) else "not a regular file"
    raise OSError(errno.EINVAL, f"it is {kind}", shown)


@contextlib.contextmanager
def _write_through(real: str, shown: str) -> Iterator[BinaryIO]:
    """The character device or FIFO ``real`` opened for writing, without O_CREAT or O_TRUNC."""
    with _naming(shown):
        fd = os.open(real, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
        if not _writes_through(os.fstat(fd)):  # replaced since it was looked at
            os.close(fd)
            raise OSError(errno.EAGAIN, "it changed while being opened", shown)
    out = io.BufferedWriter(_NamedFileIO(fd, shown))
    try:
        yield out
    except BaseException:
        with contextlib.suppress(OSError):
            out.close()
        raise
    out.close()


def _create_temp(directory: str, name: str) -> tuple[int, str]:
    """A new, empty ``.NAME.XXXXXXXX.part`` file in ``directory``, opened for writing.

    ``os.open``'s mode ``0o666`` lets the kernel apply the umask (``mkstemp`` would give
    ``0o600``, and reading the umask means changing it, which races with other threads).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    for _ in range(_TRIES):
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.part")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary name", directory)


def _keep_owner_and_mode(fd: int, status: os.stat_result) -> None:
    """Give the temporary file the replaced file's owner (where allowed) and permission bits.

    Set-user-ID, set-group-ID and sticky bits are dropped, as a write by another user drops
    them.
    """
    with contextlib.suppress(PermissionError):  # only root may give a file away
        os.fchown(fd, status.st_uid, status.st_gid)
    os.fchmod(fd, stat.S_IMODE(status.st_mode) & 0o777)


def _fsync_directory(directory: str) -> None:
    """Make the rename durable; file systems that cannot sync a directory are let be."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)
