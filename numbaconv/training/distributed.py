"""Data-parallel training on MPI: every rank holds the whole model and takes its share of every
global batch; the gradients are summed across the ranks before each update.

A run starts on N ranks with ``mpiexec -n N numbaconv run MODEL ...`` (on one machine, or on
several with ``mpiexec -f hostfile``), or on one machine with ``numbaconv run MODEL --workers
N``, which starts the same through the ``mpiexec`` of the ``mpich`` wheel (:func:`launch`).
What the ranks share, per step and per epoch:

* every rank shuffles the training set with the same seed, so all see the same global batches;
  :func:`shard` gives each rank its contiguous rows of each (sizes differ by at most one);
* after its backward, a rank scales its gradients by its share of the batch's rows and packs
  them into one flat buffer per dtype (one in practice), with its share of the batch's loss
  at the end; one ``Allreduce`` sums it in place; every rank unpacks the same sums, checks the
  global loss (so all ranks stop at the same batch when it is not finite) and applies the same
  update, so the weights stay identical;
* at each epoch's end the float buffers (BatchNorm's running statistics, which each rank
  gathers from its own share) are averaged and integer ones (counters) take rank 0's values,
  a CRC-32 of every rank's weights and buffers is compared (:class:`DistributedError` if they
  differ), and the epoch's totals (training loss and hits, test hits: each rank evaluates its
  share of the test set) are summed.

Failure: a rank that raises prints one ``Error: rank R: ...`` line and ends its process at once
(:meth:`Distributed.fail`), and ``mpiexec`` then ends the others; a rank that is killed ends the
others through ``mpiexec`` too, and :func:`launch` turns MPICH's report of it into one line
naming the rank.

This module imports ``mpi4py`` (which starts MPI) only in :meth:`Distributed.start`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib

import numpy as np

from .. import functional as F

__all__ = ["Distributed", "DistributedError", "MissingMPI", "INSTALL_HINT", "shard",
           "launched_size", "launched_rank", "usable_cores", "find_mpiexec", "require_mpi",
           "launch"]

#: what to install for MPI
INSTALL_HINT = "pip install 'numbaconv[mpi]' (mpi4py, and MPICH with its mpiexec)"
#: set by :func:`launch` for its ranks: the folder where each rank leaves its pid, and that the
#: launcher, not rank 0, reports an interruption
PIDS_ENV = "NUMBACONV_RANK_PIDS"
#: seconds a rank other than 0 waits before it reports a failure: an error that every rank
#: meets (a diverged loss, a missing file) is then reported once, by rank 0, as mpiexec ends
#: the others when the first rank exits
REPORT_DELAY_S = 1.5
# (variable, launcher) pairs: MPICH's and Intel MPI's Hydra, Open MPI
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
_RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK")


class DistributedError(Exception):
    """The ranks disagree: their weights after an epoch, or the data they read."""


class MissingMPI(Exception):
    """mpi4py or mpiexec is not installed; the message says what to install."""


def _from_env(names, default: int) -> int:
    for name in names:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return default


def launched_size() -> int:
    """How many ranks ``mpiexec`` started this process among (1 when it did not), from the
    launcher's environment, before MPI starts."""
    return _from_env(_SIZE_VARIABLES, 1)


def launched_rank() -> int:
    """This process's rank as ``mpiexec`` started it (0 when it did not start it)."""
    return _from_env(_RANK_VARIABLES, 0)


def shard(start: int, stop: int, rank: int, size: int) -> tuple[int, int]:
    """The rows ``[lo, hi)`` of the rows ``[start, stop)`` that ``rank`` of ``size`` takes:
    contiguous shares whose sizes differ by at most one, the lower ranks taking the larger
    (as ``numpy.array_split``); a share may be empty when there are fewer rows than ranks."""
    base, extra = divmod(stop - start, size)
    lo = start + rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def find_mpiexec() -> str | None:
    """The ``mpiexec`` beside this Python (the ``mpich`` wheel's, in a virtual environment),
    else the first on ``PATH``, else None."""
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which("mpiexec")


def require_mpi() -> str:
    """The path of ``mpiexec``, once mpi4py imports; :class:`MissingMPI` otherwise."""
    try:
        import mpi4py  # noqa: F401  (does not start MPI: mpi4py.MPI does)
    except ImportError:
        raise MissingMPI(f"MPI is not installed: {INSTALL_HINT}") from None
    mpiexec = find_mpiexec()
    if mpiexec is None:
        raise MissingMPI(f"mpi4py is installed but mpiexec is not: {INSTALL_HINT}")
    return mpiexec


class _FlatGradients:
    """The gradients of a model in one flat array per dtype (one in practice), for one
    ``Allreduce`` each, with one more element at the end of the first: the batch's loss sum."""

    def __init__(self, grads: dict):
        by_dtype: dict[np.dtype, list[str]] = {}
        for name, grad in grads.items():
            by_dtype.setdefault(np.dtype(grad.dtype), []).append(name)
        self.arrays, self.views = [], {}
        for index, (dtype, names) in enumerate(by_dtype.items()):
            sizes = [grads[name].size for name in names]
            flat = np.empty(sum(sizes) + (index == 0), dtype=dtype)
            offset = 0
            for name, size in zip(names, sizes):
                self.views[name] = flat[offset:offset + size].reshape(grads[name].shape)
                offset += size
            self.arrays.append(flat)
        self.nbytes = sum(flat.nbytes for flat in self.arrays)

    def pack(self, grads: dict, scale: float, loss_sum: float) -> None:
        """Copy ``grads`` times ``scale`` in, and ``loss_sum`` into the last element."""
        for name, view in self.views.items():
            np.multiply(grads[name], scale, out=view)
        self.arrays[0][-1] = loss_sum

    def zero(self) -> None:
        """A rank without rows in this batch adds nothing."""
        for flat in self.arrays:
            flat.fill(0)

    def unpack(self, grads: dict) -> float:
        """Copy the sums into ``grads``; returns the loss sum."""
        for name, view in self.views.items():
            np.copyto(grads[name], view)
        return float(self.arrays[0][-1])


class Distributed:
    """This process's place among the ranks of ``comm`` (an mpi4py communicator), and what the
    training loop asks of them. Build it with :meth:`start`."""

    def __init__(self, comm):
        from mpi4py import MPI

        self._mpi = MPI
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        # the ranks on this machine, to take turns at what they share (caches, the data)
        self.node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = self.node.Get_rank(), self.node.Get_size()
        self.host = MPI.Get_processor_name()
        self._flat: _FlatGradients | None = None
        # the steps of the current (or last) epoch, and the time they spent in Allreduce
        self.steps = 0
        self.allreduce_seconds = 0.0

    @classmethod
    def start(cls) -> Distributed:
        """Start MPI (import mpi4py.MPI) on ``COMM_WORLD``; :class:`MissingMPI` without it.
        A rank started by :func:`launch` leaves its pid where the launcher looks for it."""
        require_mpi()
        from mpi4py import MPI

        distributed = cls(MPI.COMM_WORLD)
        folder = os.environ.get(PIDS_ENV)
        if folder:
            with open(os.path.join(folder, str(os.getpid())), "w") as note:
                note.write(str(distributed.rank))
        return distributed

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def share(self, start: int, stop: int) -> tuple[int, int]:
        """This rank's rows of ``[start, stop)`` (:func:`shard`)."""
        return shard(start, stop, self.rank, self.size)

    def threads_per_rank(self, cores: int) -> int:
        """Numba threads for each rank of this machine: its ``cores`` split among them."""
        return max(1, cores // self.local_size)

    # ----------------------------------------------------------------------- setting up

    def in_turn_on_node(self, work):
        """``work()`` on this machine's first rank, then on its others at once: what the first
        compiles into Numba's cache or downloads into the data cache, the others find there."""
        if self.local_rank == 0:
            result = work()
            self.node.Barrier()
        else:
            self.node.Barrier()
            result = work()
        return result

    def broadcast(self, value):
        """Rank 0's ``value`` (any picklable object) on every rank."""
        return self.comm.bcast(value, root=0)

    def broadcast_state(self, model) -> None:
        """Rank 0's parameters and buffers, in place, on every rank (as PyTorch's DDP starts):
        identical weights even where the ranks' libraries would initialise them otherwise."""
        for array in _named_arrays(model):
            self.comm.Bcast(_buffer(array), root=0)

    def check_same_data(self, data) -> None:
        """:class:`DistributedError` unless every rank read the same data set (sizes, labels,
        and a sample of the images, compared by CRC-32)."""
        step = max(1, len(data.train_x) // 1000)
        print_ = (len(data.train_x), len(data.test_x),
                  _crc(data.train_y, data.test_y, data.train_x[::step], data.test_x[::step]))
        prints = self.comm.allgather(print_)
        if any(other != prints[0] for other in prints):
            found = "; ".join(f"rank {rank}: {n_train} training and {n_test} test images "
                              f"(CRC {crc:08x})"
                              for rank, (n_train, n_test, crc) in enumerate(prints))
            raise DistributedError(f"the ranks read different data ({found}): every machine "
                                   "needs the same data set at the path --data names")

    # ----------------------------------------------------------------------- training

    def train_epoch(self, loop, epoch: int, order, grads: dict, totals, loss: int,
                    hits: int) -> None:
        """One epoch of ``loop`` (a :class:`~numbaconv.training.Loop`) over the global batches
        of ``order``, this rank computing its share of each; ``totals[loss]`` and
        ``totals[hits]`` gather this rank's sums (:meth:`reduce_totals` adds them up)."""
        from .loop import Diverged

        settings, device, model = loop.settings, loop.device, loop.model
        if self._flat is None:
            self._flat = _FlatGradients(grads)
        flat = self._flat
        self.steps, self.allreduce_seconds = 0, 0.0
        for batch, start in enumerate(range(0, loop.n_train, settings.batch_size), start=1):
            stop = min(start + settings.batch_size, loop.n_train)
            lo, hi = self.share(start, stop)
            if hi > lo:
                x, y = device.take(loop.train_x, loop.train_y, order, lo, hi)
                logits = model.forward(loop._resized(x), training=True)
                # the mean over this rank's rows, and its gradient
                share_loss, grad_logits = F.cross_entropy_with_grad(logits, y)
                model.backward(grad_logits, need_input_grad=False)
                # the batch's mean gradient is the sum of the shares' means, each weighted by
                # its share of the rows
                flat.pack(grads, (hi - lo) / (stop - start), float(share_loss) * (hi - lo))
                totals.add(loss, share_loss, scale=hi - lo)
                totals.add(hits, F.correct(logits, y))
            else:
                flat.zero()
            self._allreduce(flat.arrays)
            if not np.isfinite(flat.unpack(grads)):
                raise Diverged(epoch, settings.lr, batch)
            loop.optimizer.step(grads)
            for callback in loop.callbacks:
                callback.on_batch_end(loop, stop - start)

    def _allreduce(self, arrays) -> None:
        started = time.perf_counter()
        for flat in arrays:
            self.comm.Allreduce(self._mpi.IN_PLACE, flat, op=self._mpi.SUM)
        self.allreduce_seconds += time.perf_counter() - started
        self.steps += 1

    @property
    def gradient_bytes(self) -> int:
        """Bytes each rank sends into the ``Allreduce`` of a step (0 before the first)."""
        return 0 if self._flat is None else self._flat.nbytes

    def end_epoch(self, model, epoch: int) -> None:
        """Average the float buffers (running statistics), take rank 0's integer ones, then
        compare the ranks' weights and buffers: :class:`DistributedError` if they differ."""
        for array in model.named_buffers().values():
            if np.issubdtype(array.dtype, np.floating):
                self.comm.Allreduce(self._mpi.IN_PLACE, _buffer(array), op=self._mpi.SUM)
                array /= self.size
            else:
                self.comm.Bcast(_buffer(array), root=0)
        checksums = self.comm.allgather(_crc(*_named_arrays(model)))
        if any(other != checksums[0] for other in checksums):
            found = ", ".join(f"rank {rank} {crc:08x}" for rank, crc in enumerate(checksums))
            raise DistributedError(f"the ranks' weights differ after epoch {epoch} (CRC-32: "
                                   f"{found}); they should be identical: a rank computed "
                                   "another update (different numbaconv, NumPy or CPU code)")

    def reduce_totals(self, values: np.ndarray) -> np.ndarray:
        """Every rank's ``values`` (float64 totals) summed, on every rank."""
        summed = np.array(values, dtype=np.float64)
        self.comm.Allreduce(self._mpi.IN_PLACE, summed, op=self._mpi.SUM)
        return summed

    # ----------------------------------------------------------------------- failing

    def fail(self, message: str | None, code: int):
        """End this rank now with exit status ``code``, after one ``Error: rank R: message``
        line on stderr (none if ``message`` is None). It skips ``MPI_Finalize``, which would
        wait for the other ranks: ``mpiexec`` ends them once this one has gone. Ranks other
        than 0 report after :data:`REPORT_DELAY_S`, so that an error all ranks meet is
        reported once."""
        for stream in (sys.stdout, sys.__stdout__):
            with contextlib.suppress(Exception):
                stream.flush()
        if message is not None:
            if self.rank:
                time.sleep(REPORT_DELAY_S)
            with contextlib.suppress(Exception):
                sys.__stderr__.write(f"Error: rank {self.rank}: {message}\n")
                sys.__stderr__.flush()
        elif self.rank and code == 130:
            time.sleep(REPORT_DELAY_S)  # rank 0 says "Interrupted."
        os._exit(code)

    def _fail_for(self, error: BaseException):
        """:meth:`fail` as :meth:`session` says, for ``error``."""
        import click

        if isinstance(error, click.ClickException):
            self.fail(error.format_message(), error.exit_code)
        if isinstance(error, KeyboardInterrupt):
            if self.is_root and not os.environ.get(PIDS_ENV):
                sys.__stderr__.write("Interrupted.\n")
            self.fail(None, 130)
        if isinstance(error, SystemExit):
            self.fail(None, error.code if isinstance(error.code, int) else 1)
        self.fail(_describe(error), 1)  # a bug: say where

    @contextlib.contextmanager
    def session(self):
        """Run a rank's command inside: ranks other than 0 print nothing (their stdout and
        stderr go to ``os.devnull``); any exception ends the rank through :meth:`fail` — a
        Click exception with its message and status, Ctrl-C with 130 ("Interrupted." from
        rank 0, unless :func:`launch` started the ranks and says it itself), ``SystemExit``
        silently with its status, anything else with its type and message. An interruption
        that arrived inside a compiled kernel (a ``SystemError`` caused by it) counts as the
        interruption."""
        from ..cli.errors import wrapped_interruption

        quiet = open(os.devnull, "w") if self.rank else None
        try:
            with contextlib.ExitStack() as stack:
                if quiet is not None:
                    stack.enter_context(contextlib.redirect_stdout(quiet))
                    stack.enter_context(contextlib.redirect_stderr(quiet))
                yield self
        except BaseException as error:
            self._fail_for(wrapped_interruption(error) or error)
        finally:
            if quiet is not None:
                quiet.close()


def _named_arrays(model) -> list:
    """The model's parameters and buffers in the order of their names."""
    arrays = {**model.named_params(), **model.named_buffers()}
    return [arrays[name] for name in sorted(arrays)]


def _buffer(array: np.ndarray) -> np.ndarray:
    """``array`` as a 1-d view for MPI (0-d counters included); it must be contiguous."""
    if not array.flags.c_contiguous:
        raise ValueError(f"an array of shape {array.shape} that MPI must update in place is "
                         "not contiguous")
    return array.reshape(-1)


def _crc(*arrays) -> int:
    crc = 0
    for array in arrays:
        crc = zlib.crc32(np.ascontiguousarray(array).view(np.uint8).reshape(-1), crc)
    return crc


def _describe(error: BaseException) -> str:
    """``Type: message (at file.py:line)`` of the innermost frame of ``error``."""
    where = ""
    trace = error.__traceback__
    while trace is not None and trace.tb_next is not None:
        trace = trace.tb_next
    if trace is not None:
        code = trace.tb_frame.f_code
        where = f" (at {os.path.basename(code.co_filename)}:{trace.tb_lineno})"
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}{where}" if text else \
        f"{type(error).__name__}{where}"


# --------------------------------------------------------------------------- the launcher

# MPICH's Hydra reports a rank that died in a banner on stdout, and Ctrl-C in two lines
_BANNER_RULE = re.compile(r"^={20,}\s*$")
_BANNER_PID = re.compile(r"^=\s+PID (\d+) RUNNING AT (\S+)")
_BANNER_LINE = re.compile(r"^=\s")
_EXIT_STRING = re.compile(r"^YOUR APPLICATION TERMINATED WITH THE EXIT STRING: (.*)$")
_HYDRA_NOISE = re.compile(r"^(This typically refers to a problem with your application\.|"
                          r"Please see the FAQ page for debugging suggestions|"
                          r"\[mpiexec@\S+\] (Sending Ctrl-C to processes as requested|"
                          r"Press Ctrl-C again to force abort))\s*$")


class _Relay:
    """Copies what ``mpiexec`` writes to one of its streams onto ours, line by line, keeping
    back MPICH's banner about a rank that died (its pid, host and exit string are kept)."""

    def __init__(self, source, target):
        self.source, self.target = source, target
        self.deaths: list[dict] = []
        self._blank = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for line in self.source:
            self._line(line)
        if self._blank:
            self._write("\n")

    def _line(self, line: str) -> None:
        text = line.rstrip("\n")
        pid = _BANNER_PID.match(text)
        exit_string = _EXIT_STRING.match(text)
        if pid:
            self.deaths.append({"pid": int(pid.group(1)), "host": pid.group(2)})
        elif exit_string and self.deaths:
            self.deaths[-1]["cause"] = exit_string.group(1).strip()
        elif text == "":
            if self._blank:  # one blank line is held back: the banner starts with one
                self._write("\n")
            self._blank = True
            return
        elif not (_BANNER_RULE.match(text) or _BANNER_LINE.match(text)
                  or _HYDRA_NOISE.match(text)):
            if self._blank:
                self._write("\n")
            self._write(line)
        self._blank = False

    def _write(self, text: str) -> None:
        self.target.write(text)
        self.target.flush()


def launch(workers: int, rank_command: list[str], threads: int, stdout=None,
           stderr=None) -> int:
    """Run ``rank_command`` (an argv) on ``workers`` ranks through ``mpiexec`` on this machine,
    each with ``threads`` Numba threads, relaying their output to ``stdout`` and ``stderr``
    (default: this process's); returns the exit status.

    A rank that dies without a word (killed by a signal) is reported in one line naming its
    rank and cause instead of MPICH's banner; Ctrl-C here (or SIGINT to this process) ends
    every rank, prints "Interrupted." and returns 130; SIGTERM to this process is passed on
    to mpiexec, which ends the ranks (status 143). :class:`MissingMPI` without MPI.
    """
    mpiexec = require_mpi()
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    pids = tempfile.mkdtemp(prefix="numbaconv-ranks-")
    env = {**os.environ, "NUMBA_NUM_THREADS": str(threads), PIDS_ENV: pids}
    interrupted = False
    try:
        process = subprocess.Popen([mpiexec, "-n", str(workers), *rank_command], env=env,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, errors="replace")
        relays = [_Relay(process.stdout, stdout), _Relay(process.stderr, stderr)]
        on_main_thread = threading.current_thread() is threading.main_thread()
        if on_main_thread:
            previous = signal.signal(signal.SIGTERM,
                                     lambda signum, frame: process.send_signal(signum))
        try:
            code = process.wait()
        except KeyboardInterrupt:
            interrupted = True
            code = _stop(process)
        finally:
            if on_main_thread:
                signal.signal(signal.SIGTERM, previous)
        for relay in relays:
            relay.thread.join(timeout=5)
        for death in (death for relay in relays for death in relay.deaths):
            stderr.write(_death_line(death, _rank_of(pids, death["pid"])) + "\n")
        if interrupted:
            stderr.write("Interrupted.\n")
            return 130
        return code
    finally:
        shutil.rmtree(pids, ignore_errors=True)


def _stop(process: subprocess.Popen) -> int:
    """Ctrl-C reaches mpiexec too when it came from the terminal; a SIGINT sent to this process
    alone does not: pass it on (a second one makes mpiexec end the ranks at once)."""
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def _rank_of(folder: str, pid: int) -> int | None:
    try:
        with open(os.path.join(folder, str(pid))) as note:
            return int(note.read())
    except (OSError, ValueError):
        return None


def _death_line(death: dict, rank: int | None) -> str:
    who = f"rank {rank}" if rank is not None else "a rank"
    cause = death.get("cause", "it ended")
    return (f"Error: {who} (pid {death['pid']} on {death['host']}) died: {cause}; mpiexec "
            "ended the other ranks")
