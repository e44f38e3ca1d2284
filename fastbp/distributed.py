"""Data-parallel training over MPI: what ``fit(..., comm=)`` does with the communicator.

Every rank holds a full replica of the model. Each step's rows are the rows one process would
take (the same seeded order of all the data set's rows); each rank computes the data gradient of
its share of them, scaled by that share, and one in-place all-reduce (sum) of the gradient
buffer makes every rank's gradient that of the whole step. The L2 penalty, clipping and the
update then run on every rank alike, so the parameters stay bitwise equal (checked after each
epoch). The step's loss and a stop flag (Ctrl-C) ride in two spare slots after the gradients
(``Engine.grad_buffer``), so a step makes one MPI call.

``fit`` talks to one interface whether it trains alone or among ranks: ``Alone`` is the
single process's side of it (every agreement trivially reached, every sum its own value).

Training talks to MPI only here (the command also starts it, when mpiexec launched it); this
needs nothing of mpi4py but the communicator object handed in
(``Allreduce``, ``allgather``, ``Bcast``, ``Get_rank``, ``Get_size``, ``Abort``, ``Split_type``)
and MPI's constants.
"""
import contextlib
import math
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
import zlib

import numba
import numpy as np

from . import _threads, _validate, engine, schedules, steps
from .data.prepare import array_digest

# The step's loss and stop flag, summed with the gradients: the engine's spare slots.
LOSS_SLOT, STOP_SLOT = -2, -1
assert engine.GRAD_SPARE >= 2

_COMM_METHODS = ("Allreduce", "allgather", "Bcast", "Get_rank", "Get_size", "Abort")


class RankMismatchError(ValueError):
    """The ranks of a data-parallel fit were given different models, optimizers, settings or
    data (raised on every rank)."""


class ReplicaDriftError(RuntimeError):
    """The ranks' parameters are no longer bitwise equal (raised on every rank)."""


class Ranks:
    """The processes of a communicator training one model together (see the module docstring).

    shard (set by fit once checked): False, every rank was given the same X and y and takes
    its rows of each step by index; True, each rank was given its own part of the rows, the
    parts in rank order making up the data set.
    """

    def __init__(self, comm):
        lacks = [name for name in _COMM_METHODS if not callable(getattr(comm, name, None))]
        if lacks:
            raise TypeError(f"comm: expected an MPI communicator (mpi4py's MPI.COMM_WORLD, say), "
                            f"got {type(comm).__name__}, which lacks {', '.join(lacks)}")
        self.comm, self.shard = comm, False
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.interrupted = False
        self.offset = 0          # the first global row of this rank's part (shard)
        self.n_local = None
        self.n_total = None
        self.weights_all = None  # every row's sample weight (all ranks' parts), or None

    # Steps sum the ranks' gradients between the two stages: one compiled call each.
    compiled_epochs = False

    # -- agreement ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def agreed_errors(self):
        """Checks that each rank runs alone: when any rank's fail, every rank raises (its own
        exception, or one naming the rank that failed), so that none waits for the others in
        an MPI call."""
        failure = None
        try:
            yield
        except Exception as exc:
            failure = exc
        reports = self.comm.allgather(None if failure is None else str(failure))
        self.refusals = reports   # each rank's, None where none: for a caller reporting them
        if failure is not None:
            raise failure
        for rank, report in enumerate(reports):
            if report is not None:
                raise RankMismatchError(f"rank {rank} of {self.size} failed: {report}")

    def check_same(self, what):
        """Refuse (on every rank) when the ranks' descriptions `what` (dicts of comparable
        values) differ; names the first differing entry and the ranks."""
        everyone = self.comm.allgather(what)
        for rank, theirs in enumerate(everyone):
            for key, value in everyone[0].items():
                if theirs.get(key) != value:
                    raise RankMismatchError(
                        f"ranks 0 and {rank} differ in {key}: {value!r} against "
                        f"{theirs.get(key)!r}; every rank must be given the same model, "
                        "optimizer and settings" + ("" if self.shard else
                                                    ", and the same X and y (or shard=True)"))

    def describe(self, model, optimizer, X, y, weights, X_val, y_val, **settings):
        """What must be the same on every rank, for check_same (rank_settings)."""
        return rank_settings(model, optimizer, X, y, weights, X_val, y_val, self, **settings)

    def broadcast(self, array):
        """Rank 0's values of `array` on every rank, in place."""
        self.comm.Bcast(array, root=0)

    def shared_seed(self):
        """A seed drawn on rank 0, the same on every rank (for seed=None)."""
        return self.comm.allgather(int(np.random.SeedSequence().entropy % 2**63))[0]

    def all_of(self, flags):
        """Each of the flags (a tuple of bools) and-ed over the ranks."""
        return tuple(all(column) for column in zip(*self.comm.allgather(tuple(flags))))

    def any(self, flag):
        """Whether `flag` is true on any rank (every rank gets the same answer)."""
        return any(self.comm.allgather(bool(flag)))

    def check_replicas(self, params, epoch):
        """Raise ReplicaDriftError on every rank when the parameters are not bitwise equal."""
        sums = self.comm.allgather(zlib.crc32(params.view(np.uint8)))
        if len(set(sums)) > 1:
            raise ReplicaDriftError(
                f"after epoch {epoch + 1} the ranks' parameters differ (CRC-32 by rank: "
                f"{sums}); a callback or gradient hook changed them, or decided, differently "
                "on some rank")

    # -- rows ---------------------------------------------------------------------------------

    def set_rows(self, n_local, weights):
        """Learn how the rows are spread: sets n_total (the data set's rows) and, with shard,
        this rank's offset; returns every row's sample weight (all ranks' parts, in order;
        None when unweighted)."""
        self.n_local = n_local
        if not self.shard:
            self.n_total = n_local
            self.weights_all = weights
            return weights
        counts = self.comm.allgather(n_local)
        self.offset, self.n_total = sum(counts[:self.rank]), sum(counts)
        if weights is not None:
            self.weights_all = np.concatenate(self.comm.allgather(weights))
        return self.weights_all

    def local_rows(self, rows):
        """This rank's rows of a step's global rows, as indices into its X: with shard, those in
        its part; else its contiguous slice of them (sizes differing by at most one)."""
        if self.shard:
            mine = rows[(rows >= self.offset) & (rows < self.offset + self.n_local)]
            return mine - self.offset
        n = rows.shape[0]
        return rows[self.rank * n // self.size:(self.rank + 1) * n // self.size]

    def slice_of(self, n):
        """This rank's contiguous slice of n rows every rank holds (for scoring)."""
        return slice(self.rank * n // self.size, (self.rank + 1) * n // self.size)

    # -- the step's reduction -----------------------------------------------------------------

    def step(self, model, optimizer, grad_hook, compiled_update, X, y, rows, buffers, weights):
        """One step of fit on the step's global rows (steps.step_on_ranks): (loss, norm or
        None)."""
        step_weight = rows.shape[0] if self.weights_all is None \
            else float(self.weights_all[rows].sum())
        batches = steps.Batches(model.engine, X, y, self.local_rows(rows), buffers, weights)
        return steps.step_on_ranks(model, optimizer, grad_hook, self, batches, step_weight)

    def ready(self, task):
        """Ready the steps' compiled code (task()) one rank per node at a time
        (node_leader_first)."""
        self.node_leader_first(task)

    def sum_step(self, grad_buffer, loss_share):
        """Sum the ranks' scaled gradients in place (one MPI call) with their loss shares and
        stop flags; returns (the step's data loss, whether some rank was interrupted)."""
        grad_buffer[LOSS_SLOT] = loss_share
        grad_buffer[STOP_SLOT] = 1.0 if self.interrupted else 0.0
        self.comm.Allreduce(_in_place(), grad_buffer)
        return float(grad_buffer[LOSS_SLOT]), \
            bool(grad_buffer[STOP_SLOT] > 0)

    def sum_scores(self, sums):
        """Element-wise sums over the ranks of a small float64 vector."""
        sums = np.asarray(sums, dtype=np.float64)
        self.comm.Allreduce(_in_place(), sums)
        return sums

    def average(self, values):
        """values (float64) := their mean over the ranks, in place, alike on every rank: batch
        normalisation's running statistics after a step, each rank having folded in the
        statistics of its own rows."""
        self.comm.Allreduce(_in_place(), values)
        values /= self.size

    # -- the process ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def training(self, agreed=()):
        """begin() ... end(). An exception on this rank, unless of the `agreed` types (which
        every rank raises alike), ends the whole job: see abort()."""
        self.begin()
        try:
            yield
        except BaseException as exc:
            self.end()
            if self.size > 1 and isinstance(exc, Exception) and not isinstance(exc, agreed):
                self.abort(exc)
            raise
        self.end()

    def begin(self):
        """Ready this rank to train; end() undoes it.

        Threads: unless fastbp.set_num_threads (or NUMBA_NUM_THREADS) chose the count, this
        rank uses its share of its node's cores (cores // ranks on the node): ranks with every
        core each would oversubscribe the machine. Ctrl-C (SIGINT, which mpiexec passes to
        every rank) sets a flag that the next step's all-reduce shares, so that every rank
        stops after the same step (main thread only)."""
        self._threads_before = numba.get_num_threads()
        share = node_threads(self.comm)   # (a collective call: every rank makes it)
        if not _threads.count_chosen():
            numba.set_num_threads(share)
        self._sigint_before = None
        if threading.current_thread() is threading.main_thread():
            self._sigint_before = signal.signal(signal.SIGINT, self._hold_interrupt)

    def _hold_interrupt(self, signum, frame):
        self.interrupted = True

    def end(self):
        numba.set_num_threads(self._threads_before)
        if self._sigint_before is not None:
            signal.signal(signal.SIGINT, self._sigint_before)
            self._sigint_before = None

    def node_leader_first(self, task):
        """Run task() on the first rank of each node, then on the node's others: what the
        first compiles into Numba's cache, the others load (several ranks compiling the
        same kernels at once would share the node's cores)."""
        node = self.comm.Split_type(_mpi().COMM_TYPE_SHARED, key=self.rank)
        try:
            if node.Get_rank() == 0:
                task()
            done = node.Ibarrier()
            while not done.Test():   # waiting without spinning: MPI's Barrier would take a core
                time.sleep(0.02)
            if node.Get_rank() != 0:
                task()
        finally:
            node.Free()

    def abort(self, exc):
        """End the whole job after an exception on this rank alone (the others would wait for
        it forever in their next MPI call): the traceback on stderr, then MPI_Abort."""
        # One write, then a moment for mpiexec's forwarding of it: MPI_Abort tears the job
        # down at once, and under load the traceback's last lines were lost on the way.
        try:   # (a write that fails, to a closed pipe, must not keep the job from ending)
            sys.stderr.write(f"fastbp: rank {self.rank} of {self.size} failed; ending the MPI "
                             "job\n" + "".join(traceback.format_exception(type(exc), exc,
                                                                          exc.__traceback__)))
            sys.stderr.flush()
            time.sleep(ABORT_GRACE)
        finally:
            self.comm.Abort(1)


class Alone:
    """The Ranks interface for a fit on one process: no communicator, every agreement reached
    and every sum its own value."""
    rank, size, shard, interrupted, offset = 0, 1, False, False, 0
    # Steps need no sum between their stages: many of them run in one compiled call.
    compiled_epochs = True

    def __init__(self):
        self.n_total = None

    agreed_errors = staticmethod(contextlib.nullcontext)
    training = staticmethod(lambda agreed=(): contextlib.nullcontext())

    def shared_seed(self):
        return None

    def describe(self, *args, **settings):
        return None

    def check_same(self, what):
        pass

    def broadcast(self, array):
        pass

    def all_of(self, flags):
        return tuple(flags)

    def any(self, flag):
        return bool(flag)

    def check_replicas(self, params, epoch):
        pass

    def set_rows(self, n_local, weights):
        self.n_total = n_local
        return weights

    def slice_of(self, n):
        return slice(0, n)

    def sum_scores(self, sums):
        return sums

    def step(self, model, optimizer, grad_hook, compiled_update, X, y, rows, buffers, weights):
        """One step of fit on these rows (steps.step): (loss, norm or None)."""
        batches = steps.Batches(model.engine, X, y, rows, buffers, weights)
        return steps.step(model, optimizer, grad_hook, compiled_update, batches)

    def ready(self, task):
        pass   # compiled on first use


def node_threads(comm):
    """This rank's share of its node's cores: the cores it may run on // the communicator's
    ranks on its node (at least 1; at most NUMBA_NUM_THREADS)."""
    node = comm.Split_type(_mpi().COMM_TYPE_SHARED, key=comm.Get_rank())
    try:
        share = max(1, len(os.sched_getaffinity(0)) // node.Get_size())
    finally:
        node.Free()
    return min(share, numba.config.NUMBA_NUM_THREADS)


def data_fingerprint(X, y):
    """A description of an unsharded data set, to check that every rank has the same: the
    shapes, the dtypes, and a digest of every value of X (for a sparse X, its values, column
    indices and row starts) and of y. Every row counts: a sample of them would let ranks whose
    data differ in one row train on mixed data, and hashing is cheap beside training."""
    parts = [X] if isinstance(X, np.ndarray) else [X.data, X.indices, X.indptr]
    return {"X shape": tuple(X.shape), "X dtype": str(X.dtype), "y shape": tuple(y.shape),
            "y dtype": str(y.dtype), "X and y (BLAKE2b)": array_digest(*parts, y)}


def _mpi():
    from mpi4py import MPI   # only ever reached with an mpi4py communicator in hand
    return MPI


def _in_place():
    return _mpi().IN_PLACE


#: Seconds a failing rank leaves mpiexec to forward its traceback before ending the job.
ABORT_GRACE = 0.5
#: Seconds the ranks of a job wait for each other to start MPI before giving up
#: (FASTBP_MPI_START_TIMEOUT overrides): MPI's start waits for every rank, for ever.
START_TIMEOUT = 120.0


@contextlib.contextmanager
def start_deadline(command):
    """Around the start of MPI (importing mpi4py starts it) and the ranks' first exchange: a
    rank that never joins (started without mpi4py, or failed before MPI started) would leave
    the others waiting for ever, so past the deadline this rank says so and is ended, and
    mpiexec then ends the job. The watch is a small process of its own: MPI's start blocks
    this one inside C, holding the GIL (no thread or signal handler here could run)."""
    watch = _start_watch(command) if launched_ranks() > 1 else None
    try:
        yield
    finally:
        if watch is not None:
            watch.stdin.close()   # (the watch ends on this end of file)
            watch.wait()


def _start_watch(command):
    """The watch process of start_deadline, or None where it cannot run (not POSIX, a frozen
    application, no interpreter to start): then MPI's start has no deadline, as before."""
    seconds = start_timeout()
    message = (f"{command}: rank {launched_rank()}: the job's {launched_ranks()} ranks did "
               f"not all start MPI within {seconds:g} s: another rank did not join (started "
               "without mpi4py, or failed before MPI started; its own message says which); "
               "stopping (FASTBP_MPI_START_TIMEOUT sets the wait)")
    if os.name != "posix" or getattr(sys, "frozen", False):
        return None
    # -I: the interpreter alone (no user site, no script folder to shadow its modules); and
    # none of the launcher's variables, which would make it one of the job's ranks.
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LAUNCHER_PREFIXES)}
    try:
        return subprocess.Popen([sys.executable, "-I", "-c", _WATCH, str(os.getpid()),
                                 str(seconds), message], stdin=subprocess.PIPE, env=env)
    except OSError:
        return None


# The watch: waits for its parent to close its stdin; past the deadline, says why and kills it
# (SIGKILL: a Python-level handler of the parent could not run inside MPI's start).
_WATCH = """
import os, select, signal, sys
parent, seconds, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
if not select.select([sys.stdin], [], [], seconds)[0]:
    print(message, file=sys.stderr, flush=True)
    os.kill(parent, signal.SIGKILL)
"""


# The environment variables of MPI launchers (MPICH/Hydra's PMI, Open MPI's, MVAPICH's).
_LAUNCHER_PREFIXES = ("PMI_", "PMIX_", "OMPI_", "MV2_", "HYDRA_", "MPI_LOCAL")
# The longest wait select takes (a day); a larger FASTBP_MPI_START_TIMEOUT means that.
_LONGEST_WAIT = 86400.0


def start_timeout():
    """FASTBP_MPI_START_TIMEOUT in seconds (START_TIMEOUT when unset), at most a day; a value
    that is not a positive number is refused, naming the variable."""
    text = os.environ.get("FASTBP_MPI_START_TIMEOUT", "")
    if not text.strip():
        return START_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not seconds > 0:
        raise ValueError(f"FASTBP_MPI_START_TIMEOUT: expected a number of seconds > 0, got "
                         f"{text!r:.40}")
    return min(seconds, _LONGEST_WAIT)


def launched_rank():
    """This process's rank in the job mpiexec started (0 when not started by one)."""
    return _from_launcher(("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK"), 0)


def launched_ranks():
    """The number of processes mpiexec (MPICH, Intel MPI, Open MPI, MVAPICH) started this
    job with, from the environment it gives each; 1 when not started by one."""
    return _from_launcher(("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"), 1)


def _from_launcher(names, default):
    """The first of these environment variables that holds a count, else default."""
    for name in names:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return default


def rank_settings(model, optimizer, X, y, weights, X_val, y_val, ranks, **settings):
    """What must be the same on every rank of a data-parallel fit, as comparable values."""
    spec = optimizer.update_spec() if callable(getattr(optimizer, "update_spec", None)) \
        else None
    described = {
        "model sizes": tuple(model.sizes), "activations": tuple(model.activations),
        "output activation": model.output_activation, "loss": model.loss,
        "l2": model.l2, "dtype": np.dtype(model.dtype).name,
        "norm": tuple(model.norm), "residual": model.residual, "dropout": tuple(model.dropout),
        "optimizer": type(optimizer).__name__,
        "optimizer settings and state (CRC-32)": None if spec is None else zlib.crc32(
            spec.state.view(np.uint8), zlib.crc32(spec.hyper.view(np.uint8))),
        "optimizer schedule": schedule_described(getattr(optimizer, "lr_schedule", None)),
        **{f"optimizer {name}": getattr(optimizer, name, None)
           for name in ("base_lr", "epochs_done", "samples_seen")},
        "X columns": X.shape[1], "sparse X": isinstance(X, _validate.SparseRows),
        "y columns": y.shape[1:], "y dtype": str(y.dtype),
        "sample_weight given": weights is not None, "validation rows given": X_val is not None,
        **settings}
    if not ranks.shard:
        described.update(data_fingerprint(X, y))
        if weights is not None:
            described["sample_weight (BLAKE2b)"] = array_digest(weights)
        if X_val is not None:
            described.update({"validation " + key: value for key, value in
                              data_fingerprint(X_val, y_val).items()})
    return described


def schedule_described(schedule):
    """A learning-rate schedule as comparable values: its kind, and for fastbp's, its settings
    and state (another's may hold anything)."""
    if schedule is None or type(schedule).__module__ != schedules.__name__:
        return None if schedule is None else type(schedule).__name__
    state = schedule.state() if callable(getattr(schedule, "state", None)) else None
    return type(schedule).__name__, schedule.config(), state
