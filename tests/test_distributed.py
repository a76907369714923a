"""Data-parallel training on MPI (numbaconv.training.distributed, ``run --workers``, ``mpiexec``).

The runs start two ranks on this machine through the ``mpiexec`` of the ``mpich`` wheel (the
``mpi`` extra), each on one Numba thread. Every run has a time limit, so that a hang fails.
Without mpi4py and mpiexec these tests skip, except where ``CI`` is set: there they fail.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from support import REPO_ROOT, TESTS_DIR
from tiny_data import write_tiny_dataset

from numbaconv.checkpoint import load
from numbaconv.cli import cli
from numbaconv.training.distributed import INSTALL_HINT, find_mpiexec, shard

FULL_SET = "/usr/share/datasets/fashion-mnist"
LIMIT_S = 300  # a cold Numba cache compiles for a minute or two on 2 busy cores
RANK_SCRIPT = os.path.join(TESTS_DIR, "distributed_rank.py")


def _mpiexec() -> str:
    """mpiexec, or skip (fail where ``CI`` is set)."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        mpiexec = None
    else:
        mpiexec = find_mpiexec()
    if mpiexec is None:
        message = f"MPI is not installed: {INSTALL_HINT}"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return mpiexec


def _env() -> dict:
    path = os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path, NUMBA_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _call(command: list, cwd=None) -> subprocess.CompletedProcess:
    """Run ``command`` to its end within :data:`LIMIT_S`; past it, stop it (mpiexec ends its
    ranks on SIGINT) and fail."""
    process = subprocess.Popen([str(part) for part in command], env=_env(), cwd=cwd,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = process.communicate(timeout=LIMIT_S)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        try:
            out, err = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        pytest.fail(f"{command[:6]} still ran after {LIMIT_S} s: a hang\n{out}\n{err}")
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def _numbaconv(*args, ranks: int = 1) -> subprocess.CompletedProcess:
    """``numbaconv ARGS`` in one process, or under ``mpiexec -n ranks``."""
    command = [sys.executable, "-m", "numbaconv", *args]
    if ranks > 1:
        command = [_mpiexec(), "-n", ranks, *command]
    return _call(command)


def _metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("Error:")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny"), 512, 256)


# --------------------------------------------------------------------------- sharding


@pytest.mark.parametrize("rows, size", [(256, 2), (255, 2), (7, 3), (1, 2), (96, 5)])
def test_shards_cover_each_batch_once_in_order(rows, size):
    shares = [shard(100, 100 + rows, rank, size) for rank in range(size)]
    assert shares[0][0] == 100 and shares[-1][1] == 100 + rows
    assert all(a[1] == b[0] for a, b in zip(shares, shares[1:]))
    sizes = [hi - lo for lo, hi in shares]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


# --------------------------------------------------------------------------- the command line


def test_workers_without_mpi_is_one_line_saying_what_to_install(monkeypatch, tiny):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py raises ImportError
    result = CliRunner().invoke(cli, ["run", "lenet", "--workers", "2", "--data", str(tiny)])
    assert result.exit_code == 1
    assert result.output == (f"Error: --workers 2: MPI is not installed: {INSTALL_HINT}\n")


def test_workers_train_on_the_cpu_only():
    result = CliRunner().invoke(cli, ["run", "lenet", "--workers", "2", "--device", "cuda"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: --workers and mpiexec train on the CPU")


# --------------------------------------------------------------------------- equivalence


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_one_step_on_two_ranks_is_one_step_of_one_process(tmp_path):
    # one global batch of 257 images: shares of 129 and 128 rows
    data = write_tiny_dataset(tmp_path / "data", 257, 64)
    common = ["run", "lenet", "--data", data, "--epochs", "1", "--batch-size", "257",
              "-o", "activation=relu", "-o", "pool=max"]
    single = _numbaconv(*common, "--save", tmp_path / "one.npz", "--threads", "1")
    assert single.returncode == 0, single.stderr
    ranks = _numbaconv(*common, "--save", tmp_path / "two.npz", ranks=2)
    assert ranks.returncode == 0, ranks.stderr
    assert "on 2 ranks" in ranks.stdout
    one, two = load(tmp_path / "one.npz"), load(tmp_path / "two.npz")
    import numbaconv

    start = numbaconv.build_model("lenet", activation="relu", pool="max", rng=0).state_dict()
    for name, expected in one.params.items():
        got = two.params[name]
        assert _relative(got, expected) <= 1e-5, name
        # the update itself, not only the weights it changed, is the one process's
        update, expected_update = got - start[name], expected - start[name]
        assert np.linalg.norm(expected_update) > 0, name
        assert _relative(update, expected_update) <= 1e-4, name
    loss_one, loss_two = one.history[0]["train_loss"], two.history[0]["train_loss"]
    assert abs(loss_two - loss_one) <= 1e-5 * loss_one
    assert two.history[0]["train_acc"] == one.history[0]["train_acc"]
    assert two.history[0]["test_acc"] == one.history[0]["test_acc"]


@pytest.fixture(scope="module")
def subset(tmp_path_factory, tiny):
    """6,000 training and 1,000 test images of Debian's Fashion-MNIST (the shipped sample's
    512 and 256 where it is not installed, outside CI)."""
    if not os.path.isdir(FULL_SET):
        if os.environ.get("CI"):
            pytest.fail(f"{FULL_SET} is missing (.ci/run installs dataset-fashion-mnist)")
        return tiny
    from numbaconv.data.fashion_mnist import FILES, load_dir
    from numbaconv.data.idx import write_idx

    full, folder = load_dir(FULL_SET), tmp_path_factory.mktemp("subset")
    for key, count in (("train_images", 6000), ("train_labels", 6000),
                       ("test_images", 1000), ("test_labels", 1000)):
        array = getattr(full, key)[:count]
        write_idx(folder / FILES[key], array.astype(np.uint8) if "labels" in key else array)
    return folder


def test_an_epoch_of_lenet_on_two_workers_matches_one_process(subset, tmp_path):
    _mpiexec()
    common = ["run", "lenet", "--data", subset, "--epochs", "1", "-o", "activation=relu",
              "-o", "pool=max", "--optimizer", "adam", "--lr", "0.001"]
    single = _numbaconv(*common, "--metrics", tmp_path / "one.jsonl", "--threads", "1")
    assert single.returncode == 0, single.stderr
    workers = _numbaconv(*common, "--metrics", tmp_path / "two.jsonl", "--workers", "2")
    assert workers.returncode == 0, workers.stderr
    assert "on 2 ranks of 1 thread each" in workers.stdout
    assert re.search(r"^communication in the last epoch: [\d.]+ ms per step", workers.stdout,
                     re.M)
    assert workers.stdout.count("epoch 1/1") == 1  # rank 0 alone prints
    (one,), (two,) = _metrics(tmp_path / "one.jsonl"), _metrics(tmp_path / "two.jsonl")
    assert abs(two["train_loss"] - one["train_loss"]) <= 0.005 * one["train_loss"]
    assert abs(two["test_acc"] - one["test_acc"]) <= 0.005
    assert one["test_acc"] > 0.5  # it learned: the comparison means something


# --------------------------------------------------------------------------- resume


def test_a_checkpoint_resumes_on_another_number_of_ranks(tiny, tmp_path):
    common = ["run", "lenet", "--data", tiny, "--batch-size", "64", "--optimizer", "adam",
              "--lr", "0.001"]
    straight = _numbaconv(*common, "--epochs", "2", "--metrics", tmp_path / "straight.jsonl",
                          "--threads", "1")
    assert straight.returncode == 0, straight.stderr
    expected = _metrics(tmp_path / "straight.jsonl")[-1]
    # written by two ranks, resumed by one process; written by one, resumed by two
    for first, then, name in ((2, 1, "two-one"), (1, 2, "one-two")):
        saved = tmp_path / f"{name}.npz"
        begun = _numbaconv(*common, "--epochs", "1", "--save", saved, ranks=first)
        assert begun.returncode == 0, begun.stderr
        resumed = _numbaconv("run", "lenet", "--data", tiny, "--resume", saved, "--epochs",
                             "2", ranks=then)
        assert resumed.returncode == 0, resumed.stderr
        assert resumed.stdout.count(f"resumed {saved} after epoch 1") == 1
        final = load(saved)
        assert final.epoch == 2 and len(final.history) == 2
        got = final.history[-1]
        assert abs(got["train_loss"] - expected["train_loss"]) <= 1e-4 * expected["train_loss"]
        assert abs(got["test_acc"] - expected["test_acc"]) <= 0.005, name


# --------------------------------------------------------------------------- failure


def test_a_rank_that_raises_ends_every_rank_with_one_line(tiny, tmp_path):
    saved = tmp_path / "run.npz"
    # 4 steps an epoch: rank 1 raises at the second step of epoch 2
    started = time.monotonic()
    result = _call([_mpiexec(), "-n", 2, sys.executable, RANK_SCRIPT, 1, 6, "raise", "--",
                    "run", "lenet", "--data", tiny, "--epochs", "3", "--batch-size", "128",
                    "--save", saved])
    assert result.returncode == 1
    lines = _error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert re.fullmatch(r"Error: rank 1: RuntimeError: made to fail at step 6 "
                        r"\(at distributed_rank\.py:\d+\)", lines[0])
    assert "Traceback" not in result.stderr
    assert "epoch 1/3" in result.stdout and "epoch 2/3" not in result.stdout
    assert time.monotonic() - started < LIMIT_S
    assert load(saved).epoch == 1  # the last checkpoint is whole


@pytest.mark.parametrize("options, message", [
    (["--data", "nowhere"], "Error: rank 0: "),
    (["--workers", "3"], "Error: rank 0: --workers 3 under mpiexec with 2 ranks: give one or "
                         "the other"),
])
def test_an_error_every_rank_meets_is_reported_once(tmp_path, options, message):
    result = _call([_mpiexec(), "-n", 2, sys.executable, "-m", "numbaconv", "run", "lenet",
                    *options], cwd=tmp_path)
    # rank 0's status; or, where rank 1 was still starting when rank 0 ended (seen once under
    # a full test run's load), the SIGKILL MPICH ended it with
    assert result.returncode in (1, 9), result.stdout
    lines = _error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr


def test_a_killed_rank_is_named_in_one_line_by_the_launcher(tiny, tmp_path):
    _mpiexec()
    saved = tmp_path / "run.npz"
    rank_command = [sys.executable, RANK_SCRIPT, "1", "6", "kill", "--", "run", "lenet",
                    "--data", str(tiny), "--epochs", "3", "--batch-size", "128", "--save",
                    str(saved)]
    launcher = ("import sys; from numbaconv.training.distributed import launch; "
                f"sys.exit(launch(2, {rank_command!r}, threads=1))")
    result = _call([sys.executable, "-c", launcher])
    assert result.returncode == signal.SIGKILL  # mpiexec's status
    lines = _error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert re.fullmatch(r"Error: rank 1 \(pid \d+ on \S+\) died: Killed \(signal 9\); "
                        r"mpiexec ended the other ranks", lines[0])
    assert "BAD TERMINATION" not in result.stdout + result.stderr
    assert "epoch 1/3" in result.stdout
    assert load(saved).epoch == 1


def _processes_with(marker: str) -> list[int]:
    """This user's processes whose environment holds ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as handle:
                    if marker.encode() in handle.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found


def _commands(marker: str) -> list[str]:
    """The command lines of this user's processes whose environment holds ``marker``."""
    commands = []
    for pid in _processes_with(marker):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                commands.append(handle.read().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return commands


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="looks for the ranks in /proc")
@pytest.mark.parametrize("signum, status, last_line", [(signal.SIGINT, 130, "Interrupted."),
                                                       (signal.SIGTERM, 143, None)])
def test_ctrl_c_and_sigterm_end_every_rank(tiny, signum, status, last_line):
    _mpiexec()
    marker = f"NUMBACONV_TEST_RUN={os.getpid()}-{time.monotonic_ns()}"
    env = dict(_env(), NUMBACONV_TEST_RUN=marker.split("=")[1])
    run = subprocess.Popen([sys.executable, "-m", "numbaconv", "run", "lenet", "--data",
                            str(tiny), "--epochs", "1000", "--workers", "2"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + LIMIT_S
        line = ""
        while "epoch 2/" not in line and time.monotonic() < deadline:
            line = run.stdout.readline()
            assert line or run.poll() is None, run.stderr.read()
        ranks = [pid for pid in _processes_with(marker) if pid != run.pid]
        assert len(ranks) >= 3  # mpiexec, its proxy and two ranks
        run.send_signal(signum)
        _, err = run.communicate(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == status
    lines = [line for line in err.splitlines() if not line.startswith("Warning:")]
    assert lines == ([last_line] if last_line else []), err
    # the ranks end within seconds, not at once: on 2 loaded cores 1 s was sometimes short
    deadline = time.monotonic() + 20
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _processes_with(marker), f"a rank outlived the signal: {_commands(marker)}"


# --------------------------------------------------------------------------- the epoch's end

_EPOCH_END = """
import json, sys
import numpy as np
from numbaconv.layers import Layer, Sequential
from numbaconv.training.distributed import Distributed, DistributedError

class Statistics(Layer):
    def __init__(self, rank):
        self.add_param("weight", np.arange(4, dtype=np.float32))
        self.buffers["running_mean"] = np.full(3, 1.0 + rank, dtype=np.float32)
        self.buffers["tracked"] = np.array(10 + rank, dtype=np.int64)

distributed = Distributed.start()
rank = distributed.rank
model = Sequential(Statistics(rank))
distributed.end_epoch(model, 1)
report = {name: value.tolist() for name, value in model.named_buffers().items()}
model.named_params()["0.weight"][0] += rank  # rank 1's weights now differ
try:
    distributed.end_epoch(model, 2)
except DistributedError as error:
    report["error"] = str(error)
class Data:
    train_x = np.zeros((4 + rank, 1, 2, 2), np.float32)
    test_x = np.zeros((2, 1, 2, 2), np.float32)
    train_y, test_y = np.zeros(4 + rank, np.int64), np.zeros(2, np.int64)
try:
    distributed.check_same_data(Data)
except DistributedError as error:
    report["data"] = str(error)
if rank == 0:
    print(json.dumps(report))
"""


def test_epoch_end_averages_statistics_and_compares_the_ranks():
    result = _call([_mpiexec(), "-n", 2, sys.executable, "-c", _EPOCH_END])
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["0.running_mean"] == [1.5, 1.5, 1.5]  # the mean of 1 and 2
    assert report["0.tracked"] == 10  # an integer counter: rank 0's
    assert report["error"].startswith("the ranks' weights differ after epoch 2 (CRC-32: "
                                      "rank 0 ")
    assert report["data"].startswith("the ranks read different data (rank 0: 4 training and "
                                     "2 test images")
