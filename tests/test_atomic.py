"""Atomic writes: what a path names (file, link, device, FIFO) decides how it is written, and
every failure leaves the target as it was, no temporary file, and an error naming the user's
path."""

import errno
import os
import resource
import signal
import stat

import pytest

from numbaconv import atomic
from numbaconv.atomic import UnwritablePath, atomic_file, check_writable, same_file


def write(path, data=b"new"):
    with atomic_file(path) as out:
        out.write(data)


def parts(*folders):
    """The temporary files left in ``folders``."""
    return [name for folder in folders for name in os.listdir(folder) if name.endswith(".part")]


def device(tmp_path, name, kind, major, minor):
    """A device node in ``tmp_path`` (a copy of /dev/null, /dev/full, ...), never the real one."""
    path = tmp_path / name
    try:
        os.mknod(path, kind | 0o666, os.makedev(major, minor))
    except PermissionError:
        pytest.skip("making device nodes needs root")
    return path


# --------------------------------------------------------------------------- regular files


def test_a_new_file_gets_the_umask_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        write(tmp_path / "new.bin")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "new.bin").st_mode) == 0o640
    assert (tmp_path / "new.bin").read_bytes() == b"new" and not parts(tmp_path)


def test_a_replaced_file_keeps_its_permissions(tmp_path):
    path = tmp_path / "private.npz"
    path.write_bytes(b"old")
    os.chmod(path, 0o600)
    write(path)
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
def test_a_replaced_file_keeps_its_owner(tmp_path):
    path = tmp_path / "theirs.npz"
    path.write_bytes(b"old")
    os.chown(path, 1234, 5678)
    write(path)
    assert (os.stat(path).st_uid, os.stat(path).st_gid) == (1234, 5678)


def test_the_file_and_then_its_directory_are_fsynced(tmp_path, monkeypatch):
    path = tmp_path / "out.bin"
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append((stat.S_ISDIR(os.fstat(fd).st_mode), path.exists()))
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    write(path)
    assert synced == [(False, False), (True, True)]  # the data before the rename, the dir after


# --------------------------------------------------------------------------- links


def test_a_symlink_stays_a_link_and_its_target_is_written_beside_it(tmp_path):
    (tmp_path / "store").mkdir()
    target = tmp_path / "store" / "run.npz"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    link, chained = tmp_path / "latest.npz", tmp_path / "chained.npz"
    link.symlink_to(target)
    chained.symlink_to(link)
    with atomic_file(chained) as out:
        out.write(b"new")
        assert len(parts(tmp_path / "store")) == 1 and not parts(tmp_path)
    assert link.is_symlink() and chained.is_symlink()
    assert os.readlink(chained) == str(link)
    assert target.read_bytes() == b"new" and stat.S_IMODE(os.stat(target).st_mode) == 0o640
    assert not parts(tmp_path, tmp_path / "store")


def test_a_dangling_symlink_gets_its_target_created(tmp_path):
    link = tmp_path / "link.npz"
    link.symlink_to("made.npz")
    write(link)
    assert link.is_symlink() and (tmp_path / "made.npz").read_bytes() == b"new"


def test_a_loop_of_links_is_refused_naming_the_path(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.symlink_to(b)
    b.symlink_to(a)
    with pytest.raises(OSError) as caught:
        write(a)
    assert caught.value.errno == errno.ELOOP and caught.value.filename == str(a)
    assert a.is_symlink() and b.is_symlink()


# --------------------------------------------------------------------------- special files


def test_a_character_device_is_written_through_not_replaced(tmp_path):
    null = device(tmp_path, "null", stat.S_IFCHR, 1, 3)  # /dev/null's numbers
    write(null, b"x" * 100_000)
    assert stat.S_ISCHR(os.lstat(null).st_mode) and not parts(tmp_path)


def test_a_link_to_a_character_device_is_written_through(tmp_path):
    null = device(tmp_path, "null", stat.S_IFCHR, 1, 3)
    link = tmp_path / "out.npz"
    link.symlink_to(null)
    write(link)
    assert link.is_symlink() and stat.S_ISCHR(os.lstat(null).st_mode)


def test_a_full_device_says_so_naming_the_users_path(tmp_path):
    full = device(tmp_path, "full", stat.S_IFCHR, 1, 7)  # /dev/full's: writes fail, ENOSPC
    with pytest.raises(OSError) as caught:
        write(full, b"x" * 100_000)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(full)
    assert stat.S_ISCHR(os.lstat(full).st_mode)


def test_a_fifo_is_written_through_not_replaced(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # so opening it to write won't wait
    try:
        write(fifo, b"through the pipe")
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
        assert os.read(reader, 100) == b"through the pipe"
    finally:
        os.close(reader)
    assert not parts(tmp_path)


def test_a_block_device_is_refused_untouched(tmp_path):
    disk = device(tmp_path, "loop", stat.S_IFBLK, 7, 0)  # a loop device's numbers
    with pytest.raises(OSError, match="block device") as caught:
        write(disk)
    assert caught.value.filename == str(disk)
    assert stat.S_ISBLK(os.lstat(disk).st_mode) and not parts(tmp_path)


@pytest.mark.parametrize("name", ["folder", "folder/"])
def test_a_directory_is_refused(tmp_path, name):
    (tmp_path / "folder").mkdir()
    with pytest.raises(IsADirectoryError):
        write(os.path.join(tmp_path, name))
    assert os.listdir(tmp_path) == ["folder"] and not os.listdir(tmp_path / "folder")


# --------------------------------------------------------------------------- failures


def test_a_full_disk_names_the_users_path_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "run.npz"
    path.write_bytes(b"old")
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, old_limit[1]))
    try:
        with pytest.raises(OSError) as caught:
            write(path, b"x" * 100_000)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert caught.value.errno == errno.EFBIG and caught.value.filename == str(path)
    assert ".part" not in str(caught.value)
    assert path.read_bytes() == b"old" and not parts(tmp_path)


def test_a_failed_rename_names_the_users_path(tmp_path, monkeypatch):
    path = tmp_path / "run.npz"

    def refuse(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied", src, dst)

    monkeypatch.setattr(atomic.os, "replace", refuse)
    with pytest.raises(PermissionError) as caught:
        write(path)
    assert caught.value.filename == str(path) and caught.value.filename2 is None
    assert ".part" not in str(caught.value)
    assert not os.listdir(tmp_path)


def test_a_missing_folder_names_the_users_path(tmp_path):
    path = tmp_path / "no" / "run.npz"
    with pytest.raises(FileNotFoundError) as caught:
        write(path)
    assert caught.value.filename == str(path)


def test_an_interrupt_in_the_block_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "run.npz"
    path.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt), atomic_file(path) as out:
        out.write(b"half")
        raise KeyboardInterrupt
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["run.npz"]


def test_an_interrupt_at_the_rename_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "run.npz"
    path.write_bytes(b"old")

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write(path)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["run.npz"]


# --------------------------------------------------------------------------- check_writable


def test_check_writable_makes_the_folder_and_leaves_nothing_else(tmp_path):
    check_writable(tmp_path / "new" / "run.npz", "--save")
    assert os.listdir(tmp_path / "new") == []
    (tmp_path / "new" / "run.npz").write_bytes(b"old")
    check_writable(tmp_path / "new" / "run.npz", "--save")
    assert os.listdir(tmp_path / "new") == ["run.npz"]


def test_check_writable_accepts_devices_and_fifos_without_opening_them(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    check_writable(fifo, "--metrics")  # opening a FIFO with no reader would wait forever
    check_writable(device(tmp_path, "null", stat.S_IFCHR, 1, 3), "--save")


@pytest.mark.parametrize("path, reason", [
    ("/proc/x.npz", "cannot write there: "),
    ("/dev/null/x.npz", "cannot create the folder /dev/null: Not a directory"),
    ("/", "cannot write there: Is a directory"),
])
def test_check_writable_refuses_in_one_line_naming_the_option_and_path(path, reason):
    with pytest.raises(UnwritablePath) as caught:
        check_writable(path, "--save")
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert message.startswith(f"--save {path}: {reason}"), message
    assert "\n" not in message and ".part" not in message


def test_check_writable_refuses_a_block_device(tmp_path):
    disk = device(tmp_path, "loop", stat.S_IFBLK, 7, 0)
    with pytest.raises(UnwritablePath, match=r"^--plot .*loop: cannot write there: it is a "
                                             r"block device$"):
        check_writable(disk, "--plot")


# --------------------------------------------------------------------------- same_file


def test_same_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.npz").write_bytes(b"a")
    (tmp_path / "link.npz").symlink_to(tmp_path / "a.npz")
    os.link(tmp_path / "a.npz", tmp_path / "hard.npz")
    assert same_file("a.npz", tmp_path / "a.npz")
    assert same_file("a.npz", "sub/../a.npz")
    assert same_file("link.npz", "a.npz") and same_file("hard.npz", "a.npz")
    assert same_file("new.npz", "./sub/../new.npz")  # neither exists yet
    assert not same_file("a.npz", "new.npz")
    assert not same_file("a.npz", "sub")
    assert not same_file("x.npz", "y.npz")
