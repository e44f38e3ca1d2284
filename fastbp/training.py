"""fit: the training loop over epochs and shuffled mini-batches, with validation, early
stopping, callbacks and an optional progress bar.

Callbacks
---------
A callback is any object with some of these methods (all optional; a missing one costs nothing):

``on_train_begin(model, history)``
    Once, before the first step.
``on_step_end(epoch, step, loss, grad_norm, model)``
    After every optimizer step: ``epoch`` and ``step`` count from 0 (``step`` within the
    epoch), ``loss`` is the batch's mean loss, ``grad_norm`` the global gradient norm before
    clipping; ``model.grads`` holds that step's gradients and ``model.params`` the updated
    parameters. Keep it cheap: it runs once per batch. Only when some callback defines it does
    ``fit`` return to Python after every step; otherwise steps run in compiled chunks.
``on_epoch_end(epoch, history, model)``
    After each epoch's metrics are appended to ``history``.
``on_train_end(model, history)``
    Once at the end, also after an interruption or early stop (after the best weights are
    restored).

``on_step_end`` and ``on_epoch_end`` may return True to stop training: after that step (the
epoch's metrics then cover the steps taken) or after that epoch.
"""
import contextlib
import math
import numbers
import time
import warnings

import numpy as np

from . import _validate, distributed, kernels, layout, optim
from ._threads import (count_restored, fit_threads, get_blas, get_num_threads, load_free,
                       pin_kernel_blas)
from .model import MLP
from .engine import StepBuffers
from .steps import HookError


class DivergenceError(FloatingPointError):
    """Training produced a NaN or Inf loss or gradient norm; the parameters keep the last
    finite values (the failing step is not applied)."""


class History(dict):
    """What ``fit`` returns: a dict of per-epoch lists (see ``fit``), plus attributes:

    ``best_epoch``: index of the epoch whose weights the model holds when early stopping
    restored them, else None. ``stop_reason``: "completed", "early_stopping", "callback" or
    "interrupted". ``interrupted``: True when a KeyboardInterrupt (Ctrl-C) ended training.
    ``threads``: the thread count each recorded epoch ran on (see ``fit``). ``blas``: the BLAS
    build its matrix products ran on (``fastbp.set_blas``).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.best_epoch = None
        self.stop_reason = "completed"
        self.threads = []
        self.blas = []

    @property
    def interrupted(self):
        return self.stop_reason == "interrupted"

    @property
    def n_epochs(self):
        """Number of epochs recorded."""
        return len(self.get("loss", ()))


_MONITORS = {"val_loss": min, "val_accuracy": max}


def fit(model, X, y, optimizer, epochs, batch_size, shuffle=True, seed=None, *,
        validation_data=None, validation_fraction=None, early_stopping=None,
        monitor="val_loss", callbacks=(), progress=False, metrics_rows=10000, grad_hook=None,
        accumulate=1, initial_epoch=0, initial_step=0, sample_weight=None, comm=None,
        shard=False):
    """Train ``model`` on (X, y) with ``optimizer`` for ``epochs`` passes of mini-batches.

    X and y are checked and converted once (see the README on conversions). X may be a SciPy
    sparse matrix or array (CSR; another format is converted to CSR once, which copies it): it
    is never densified whole, each batch is densified into the batch buffer, in the compiled
    steps, and the parameters are bitwise those of a fit on X.toarray(). Each epoch visits
    every training sample once, in a fresh random order when ``shuffle`` (reproducible from
    ``seed``); the last batch of an epoch may be smaller. Batches are gathered into one
    preallocated buffer. Steps run in compiled chunks of many batches, one call per chunk (about
    20 chunks per epoch, at least 32 steps each); when a callback defines ``on_step_end``, they
    run one compiled call per step instead, with the same results.

    Each step has two stages: the gradients of the batch's mean loss go to ``model.grads``,
    then the optimizer's update stage changes ``model.params`` (see fastbp.optim for the
    optimizer protocol). After each epoch, an optimizer with ``end_epoch`` (fastbp's) advances
    its learning-rate schedule, watching the validation loss when there are validation rows,
    else the training loss.

    Parameters (beyond the model, data, optimizer and loop sizes)
    ----------
    optimizer : an object following the optimizer protocol (fastbp.optim), e.g. fastbp.Adam
    sample_weight : array (N,), optional
        One weight >= 0 per row of X (not all 0), gathered with the rows: each step's
        objective is then scikit-learn's weighted mean over its rows, sum_i w_i loss_i /
        sum_i w_i, plus the L2 penalty over sum_i w_i rows (with ``accumulate``, the sums run
        over all the rows of the update). A step whose rows all weigh 0 is skipped: no
        gradient, no update (an optimizer's step count and state stay), and no call of the
        gradient hook; it counts 0 in the epoch's "loss", and step callbacks get loss 0.0 and
        grad_norm None. The epoch's "loss" is the mean of its steps' objectives weighted by
        their rows, as scikit-learn's ``loss_`` is. With ``validation_fraction`` the held-out
        rows' weights are dropped: validation scores, and the training accuracy, are
        unweighted.
    accumulate : int, default 1
        Gradient accumulation: each update uses the gradient of ``accumulate`` consecutive
        batches together (the mean loss over all their rows, each batch's gradient weighted by
        its share of the rows, plus the L2 penalty of the model's ``l2`` over all those rows, as
        for one batch of them), computed one batch at a time: the effective batch is
        ``accumulate * batch_size`` rows while the activations take the memory of one batch
        (plus one gradient-sized buffer). Steps, step callbacks and the gradient hook then
        count updates.
    grad_hook : callable, optional
        ``grad_hook(model)``, called between the two stages of every step: it may change
        ``model.grads`` in place (scale, accumulate over batches, all-reduce across processes)
        and returns None or True to apply the update, False to skip it for this batch. If it
        raises, training stops with that exception and the parameters are those from before
        that step. With a hook, steps run one compiled call each (gradients), then the update.
    initial_epoch : int, default 0
        When continuing a run that has done this many epochs with the same data and ``seed``
        (e.g. after ``load_checkpoint``): the batch order picks up where that run left off, so
        that the continued run is the uninterrupted one. At most the optimizer's
        ``epochs_done``, when it has one.
    initial_step : int, default 0
        With ``initial_epoch``, for a run stopped within an epoch after this many steps (e.g.
        by Ctrl-C): the first epoch starts at its next step. Its history entry then covers the
        remaining steps only.
    validation_data : (X_val, y_val), optional
        Rows scored after every epoch, never trained on.
    validation_fraction : float in (0, 1), optional
        Instead of ``validation_data``: hold out this share of (X, y), drawn with ``seed``
        (stratified by class for softmax cross-entropy).
    early_stopping : int, optional
        Patience: stop when ``monitor`` has not improved for this many epochs in a row. The
        weights of the best epoch are then restored (also when the last epoch is reached first,
        or on Ctrl-C). Needs validation rows.
    monitor : "val_loss" (lower is better) or "val_accuracy" (higher is better)
    callbacks : sequence of callback objects (see the module docstring)
    progress : bool
        Show a progress bar per epoch (needs the optional tqdm package; without it a warning is
        issued once and training runs without a bar).
    metrics_rows : int
        Training accuracy is measured at the end of each epoch on at most this many training
        rows (a fixed sample drawn with ``seed``), to keep its cost small on large sets; 0 for
        none (no "accuracy" in the history: a forward pass less per epoch).
    comm : an MPI communicator (mpi4py's, e.g. MPI.COMM_WORLD), optional
        Data-parallel training (docs/mpi.md): every process of the communicator calls fit
        with the same model, optimizer and settings; the parameters start as rank 0's and
        every step is the step one process would take on the same rows (to rounding: the
        sums run in another order), on every rank alike. Each rank computes the gradient of
        its share of the step's rows; one all-reduce sums them. The history, early stopping
        and every stop decision are the same on every rank. Only rank 0 may show a progress
        bar (but not when its output is not a terminal, as under mpiexec). While fit runs,
        each rank uses its node's cores divided by its ranks on the node, unless
        ``set_num_threads`` or NUMBA_NUM_THREADS chose a count (the count is restored after).
        ``grad_hook`` sees the summed gradient on every rank and must decide alike on all
        (the parameters are compared after each epoch: distributed.ReplicaDriftError).
        Mismatched settings or data raise RankMismatchError on every rank, and a refusal of
        one rank's arguments raises there and RankMismatchError (naming that rank and why)
        on the others. Once training has started, an exception on a rank (in a callback,
        say) ends the whole job (MPI_Abort), since the others would wait for it forever.
    shard : bool, default False
        With ``comm``: False, every rank passes the same X and y (and sample_weight,
        validation_data); True, each passes its own part of the rows, the parts in rank
        order making up the data set (and its own part of the validation rows;
        ``validation_fraction`` is refused). The step order is drawn over the whole set, so
        the result does not depend on how it was split.

    Returns
    -------
    History, a dict of per-epoch lists:
        "loss": mean training loss over the epoch's batches, as seen during the epoch;
        "grad_norm": mean global gradient norm before clipping;
        "layer_grad_norms": per layer, the L2 norm of (dW, db), averaged over the epoch's steps
        (each from the step's own clipping pass);
        "samples_per_s": training throughput (steps only) and "seconds": the steps' wall time;
        "accuracy": accuracy on the training rows after the epoch (classifiers: softmax
        cross-entropy, or MSE or binary cross-entropy on one-hot or 0/1 targets; binary
        cross-entropy on 0/1 multilabel targets: the share of rows with every label right);
        "val_loss", "val_accuracy": the same on the validation rows, when there are any
        ("val_loss" is the data loss alone, without the model's L2 penalty, which "loss",
        the training objective, includes);
        "lr": the optimizer's learning rate during the epoch (when it has a numeric ``lr``).
    Its attributes ``best_epoch``, ``stop_reason`` and ``interrupted`` say how training ended.

    Threads: without ``comm``, unless a count was chosen (``set_num_threads``,
    NUMBA_NUM_THREADS) or ``set_work_split("threads")`` is in force, each epoch runs on the
    cores that other processes left free lately (/proc/stat, read before the epoch; where it
    cannot be read, on the count fit started with):
    a parallel region waits for its slowest thread, and one that shares a core with a busy
    process stalls it. Results are bitwise the same at any count; the caller's count is put
    back after fit.

    Ctrl-C (KeyboardInterrupt) ends training cleanly: every step is one compiled call that
    finishes before Python sees the interrupt, so the parameters are those after the last
    completed step (or of the best epoch, with early stopping); the history keeps the complete
    epochs, and ``fit`` returns normally with ``stop_reason == "interrupted"``.

    Raises DivergenceError (a FloatingPointError) naming the epoch and step if the loss or the
    gradient norm becomes NaN or Inf; the parameters keep their last finite values.
    """
    # One thread at a time: a second thread's fit is refused before it changes anything
    # (engine.OneThreadAtATime); callbacks, on this thread, may still use the model.
    with _held(model):
        ranks = distributed.Alone() if comm is None else distributed.Ranks(comm)
        # rank 0's draw, for seed=None (each step's rows must be the same on every rank)
        shared_seed = ranks.shared_seed()
        # With comm, a refusal on one rank is a refusal on every rank (none waits for another).
        with ranks.agreed_errors():
            run = _Run(model, optimizer, ranks)
            run.check(X, y, shared_seed, epochs=epochs, batch_size=batch_size, shuffle=shuffle,
                      seed=seed, validation_data=validation_data,
                      validation_fraction=validation_fraction, early_stopping=early_stopping,
                      monitor=monitor, callbacks=callbacks, progress=progress,
                      metrics_rows=metrics_rows, grad_hook=grad_hook, accumulate=accumulate,
                      initial_epoch=initial_epoch, initial_step=initial_step,
                      sample_weight=sample_weight, shard=shard)
        run.place_rows()   # (with comm, every rank gets here, for the same collective calls)
        # With comm: threads per rank and Ctrl-C held for the ranks to share, from here on; an
        # exception on one rank ends the job (the others would wait for it forever), but for those
        # every rank raises alike.
        with ranks.training(agreed=(DivergenceError, distributed.ReplicaDriftError)), \
                count_restored():   # (fit_threads may change this thread's count)
            return run.train()


def _held(model):
    """model's engine held for this thread (see fit); nothing for a non-model, which
    _Run.check refuses."""
    return model.engine.in_use if isinstance(model, MLP) else contextlib.nullcontext()


class _Run:
    """One fit: its checked arguments (check), how its rows spread over steps and ranks
    (place_rows), and the epoch loop (train). ranks: a distributed.Ranks, or Alone."""

    def __init__(self, model, optimizer, ranks):
        self.model, self.optimizer, self.ranks = model, optimizer, ranks

    # -- arguments ----------------------------------------------------------------------------

    def check(self, X, y, shared_seed, *, epochs, batch_size, shuffle, seed, validation_data,
              validation_fraction, early_stopping, monitor, callbacks, progress, metrics_rows,
              grad_hook, accumulate, initial_epoch, initial_step, sample_weight, shard):
        """Check and keep fit's arguments (raising as fit documents); with ranks, describe
        them for place_rows to compare across the ranks."""
        model, optimizer, ranks = self.model, self.optimizer, self.ranks
        if not isinstance(shard, bool):
            raise TypeError(f"shard: expected True or False, got {type(shard).__name__}")
        if shard and isinstance(ranks, distributed.Alone):
            raise ValueError("shard: needs comm (data-parallel training over MPI)")
        if shard and getattr(X, "shape", (1,))[0] == 0:
            raise ValueError("X: this rank's part has no rows; with shard=True every rank "
                             "needs at least one")
        ranks.shard = shard
        if not isinstance(model, MLP):
            raise TypeError(f"model: expected a fastbp.MLP, got {type(model).__name__}")
        _check_optimizer(optimizer, model)
        if grad_hook is not None and not callable(grad_hook):
            raise TypeError(f"grad_hook: expected a callable, got {type(grad_hook).__name__}")
        self.epochs = _validate.positive_int("epochs", epochs)
        self.batch_size = _validate.positive_int("batch_size", batch_size)
        self.accumulate = _validate.positive_int("accumulate", accumulate)
        self.initial_epoch = _validate.non_negative_int("initial_epoch", initial_epoch)
        self.initial_step = _validate.non_negative_int("initial_step", initial_step)
        self.metrics_rows = _validate.non_negative_int("metrics_rows", metrics_rows)
        if early_stopping is not None:
            early_stopping = _validate.positive_int("early_stopping", early_stopping)
        seed_given = _validate.seed("seed", seed)
        self.seed = shared_seed if seed_given is None else seed_given
        if not isinstance(monitor, str) or monitor not in _MONITORS:
            raise ValueError(f"monitor: expected one of {', '.join(_MONITORS)}, got {monitor!r}")
        self.callbacks = _check_callbacks(callbacks)
        X, y = model.engine.check_batch(X, y)
        weights = _validate.sample_weight(sample_weight, X.shape[0], may_all_be_0=shard)
        X, y, X_val, y_val, weights = self._validation_rows(
            X, y, weights, validation_data, validation_fraction, early_stopping, monitor)
        done = getattr(optimizer, "epochs_done", None)
        if isinstance(done, int) and self.initial_epoch > done:
            raise ValueError(f"initial_epoch: {self.initial_epoch}, but the optimizer has "
                             f"ended {done} epochs (a run continued must have done them)")
        self.X, self.y, self.weights, self.X_val, self.y_val = X, y, weights, X_val, y_val
        self.shuffle, self.progress, self.grad_hook = shuffle, progress, grad_hook
        self.early_stopping, self.monitor = early_stopping, monitor
        self.described = ranks.describe(
            model, optimizer, X, y, weights, X_val, y_val, epochs=self.epochs,
            batch_size=self.batch_size, shuffle=shuffle, seed=seed_given, shard=shard,
            accumulate=self.accumulate, initial_epoch=self.initial_epoch,
            initial_step=self.initial_step, metrics_rows=self.metrics_rows,
            early_stopping=early_stopping, monitor=monitor,
            validation_fraction=validation_fraction, grad_hook=grad_hook is not None,
            step_callbacks=any(callable(getattr(cb, "on_step_end", None))
                               for cb in self.callbacks))

    def _validation_rows(self, X, y, weights, validation_data, validation_fraction,
                         early_stopping, monitor):
        """(X, y, X_val, y_val, weights): the training rows (less those held out) and the
        validation rows (None without)."""
        model = self.model
        if validation_data is not None and validation_fraction is not None:
            raise ValueError("validation_data, validation_fraction: give one or the other")
        if self.ranks.shard and validation_fraction is not None:
            raise ValueError("validation_fraction: refused with shard=True (the rows held out "
                             "would depend on the split); give each rank's validation_data")
        if validation_fraction is not None:
            X, y, X_val, y_val, weights = _hold_out(model, X, y, validation_fraction, self.seed,
                                                    weights)
        elif validation_data is not None:
            X_val, y_val = _unpack_validation(model, validation_data)
        else:
            X_val = y_val = None
        if early_stopping is not None and X_val is None:
            raise ValueError("early_stopping: needs validation rows (validation_data or "
                             "validation_fraction)")
        if monitor == "val_accuracy" and early_stopping is not None \
                and _accuracy_kind(model, y_val) is None:
            raise ValueError("monitor: val_accuracy needs class labels or one-hot targets")
        return X, y, X_val, y_val, weights

    def place_rows(self):
        """Agree across the ranks (settings, rows, starting parameters) and size the steps:
        n_samples (all the ranks' rows), batch_size, accumulate, rows_per_step."""
        ranks = self.ranks
        ranks.check_same(self.described)
        weights_all = ranks.set_rows(self.X.shape[0], self.weights)
        if weights_all is not None and not weights_all.any():   # (with shard, every part)
            raise ValueError("sample_weight: every weight of every rank's part is 0 (the "
                             "weighted mean loss 0/0 is undefined)")
        ranks.broadcast(self.model.params)
        # Rank 0's running statistics and dropout key too (a seed=None model draws its own).
        ranks.broadcast(self.model.engine.running)
        ranks.broadcast(self.model.engine.counter)
        n_samples = self.n_samples = ranks.n_total
        self.batch_size = min(self.batch_size, n_samples)
        # No step spans more than an epoch.
        self.accumulate = min(self.accumulate, -(-n_samples // self.batch_size))
        self.rows_per_step = self.batch_size * self.accumulate
        if layout.BATCH_NORM in self.model.engine.kinds and 1 in self._batch_rows(ranks):
            raise ValueError(f"batch_size: batch normalisation needs at least 2 rows in every "
                             f"training batch; {n_samples} rows in batches of "
                             f"{self.batch_size}" + (f" shared by {ranks.size} ranks"
                                                     if ranks.size > 1 else "")
                             + " leave a batch of 1 row (choose another batch_size)")
        # The dropout masks are keyed by the rows' global indices.
        self.model.engine.counter[2] = ranks.offset if ranks.shard else 0
        if self.initial_step * self.rows_per_step >= n_samples:   # (on every rank alike)
            raise ValueError(f"initial_step: {self.initial_step}, but an epoch has "
                             f"{-(-n_samples // self.rows_per_step)} steps")

    def _batch_rows(self, ranks):
        """The row counts of the batches a rank computes, over an epoch's steps: each step's
        rows (rows_per_step, and the last step's), this rank's share of them (without shard,
        a contiguous slice: the floor or the ceiling of an equal share), cut into batches of
        batch_size. (With shard, a share depends on where the rows fall: not foreseen.)"""
        steps = {self.rows_per_step, self.n_samples % self.rows_per_step} - {0}
        size = 1 if ranks.shard else ranks.size
        shares = {n // size for n in steps} | {-(-n // size) for n in steps}
        return {rows for share in shares
                for rows in [min(self.batch_size, share), share % self.batch_size]
                if rows or not share}

    # -- the epoch loop -----------------------------------------------------------------------

    def train(self):
        """The epochs: steps, then recording, stop decisions and callbacks; returns the
        History."""
        model, optimizer, ranks = self.model, self.optimizer, self.ranks
        rng = np.random.default_rng(self.seed)
        for _ in range(self.initial_epoch if self.shuffle else 0):
            rng.permutation(self.n_samples)  # the orders of the epochs done
        max_steps = -(-self.n_samples // self.rows_per_step)
        self.buffers = StepBuffers(model.engine, self.X, self.y, self.batch_size,
                                   self.weights is not None, self.accumulate > 1, max_steps)
        pin_kernel_blas()
        recorder = _Recorder(self, optimizer)
        history = recorder.history
        self.step_hooks = [cb.on_step_end for cb in self.callbacks
                           if callable(getattr(cb, "on_step_end", None))]
        epoch_hooks = [cb.on_epoch_end for cb in self.callbacks
                       if callable(getattr(cb, "on_epoch_end", None))]
        bar_factory = _progress_factory(self.progress and ranks.rank == 0)
        watch = None
        if self.early_stopping is not None:
            watch = _BestWeights(model, self.monitor, self.early_stopping)
        # Without per-step hooks, steps run in compiled chunks of many batches (one call each,
        # when the optimizer describes its update to compiled code); chunks keep the progress
        # bar moving and Ctrl-C answered quickly.
        self.compiled_update = _has_compiled_update(optimizer)
        chunked = (not self.step_hooks and self.grad_hook is None and self.compiled_update
                   and ranks.compiled_epochs)
        self.chunk_steps = max(32, -(-max_steps // 20))
        if self.compiled_update and not isinstance(self.X, _validate.SparseRows):
            # With ranks, one per node compiles (or loads) the step's kernels, then the others
            # load them from Numba's cache: side by side, they would share the node's cores.
            ranks.ready(lambda: model.engine.ready_steps(
                optimizer.update_spec(), self.X[:1], self.y[:1], self.batch_size,
                self.accumulate, self.weights is not None))
        # One process alone, no thread count chosen (asked each epoch: a callback may choose
        # one): each epoch runs on the cores other processes left free lately (a parallel
        # region waits for a thread that shares its core). The count changes no result.
        most = get_num_threads()
        alone = isinstance(ranks, distributed.Alone)
        for cb in self.callbacks:
            if callable(getattr(cb, "on_train_begin", None)):
                cb.on_train_begin(model, history)
        self.bar = None
        try:
            for epoch in range(self.epochs):
                history.threads.append(fit_threads(most) if alone and load_free()
                                       else get_num_threads())
                history.blas.append(get_blas())
                start_time = time.perf_counter()
                epoch_lr = _current_lr(optimizer)
                order = (rng.permutation(self.n_samples) if self.shuffle
                         else np.arange(self.n_samples))
                skipped = self.initial_step * self.rows_per_step if epoch == 0 else 0
                order = order[skipped:]
                tally = _Tally(len(model.sizes) - 1)
                if bar_factory is not None:
                    self.bar = bar_factory(total=order.shape[0],
                                           desc=f"epoch {epoch + 1}/{self.epochs}",
                                           unit="sample", unit_scale=True, leave=False,
                                           dynamic_ncols=True,
                                           disable=None)  # None: no bar when not on a terminal
                if chunked:
                    self._chunked_steps(epoch, order, tally)
                    stop = False
                else:
                    stop = self._steps(epoch, order, tally)
                    if stop:
                        history.stop_reason = "callback"
                seconds = time.perf_counter() - start_time
                if self.bar is not None:
                    self.bar.close()
                    self.bar = None
                record = recorder.record(tally, seconds, epoch_lr)
                # Only a whole epoch moves the schedule on (a step callback may stop one early).
                if callable(getattr(optimizer, "end_epoch", None)) \
                        and tally.n_seen == order.shape[0]:
                    optimizer.end_epoch(skipped + tally.n_seen,
                                        record.get("val_loss", record["loss"]))
                if watch is not None and watch.update(epoch, record[self.monitor]):
                    history.stop_reason = "early_stopping"
                    stop = True
                for hook in epoch_hooks:
                    if hook(epoch, history, model) is True:
                        stop = True
                ranks.check_replicas(model.params, epoch)
                stop = ranks.any(stop)
                if stop and history.stop_reason == "completed":
                    history.stop_reason = "callback"
                if stop:
                    break
        except KeyboardInterrupt:
            history.stop_reason = "interrupted"
            if self.bar is not None:
                self.bar.close()
            recorder.drop_partial_epoch()
        if history.stop_reason != "interrupted" \
                and ranks.any(ranks.interrupted):   # Ctrl-C after the last step (ranks)
            history.stop_reason = "interrupted"
        del history.threads[history.n_epochs:]   # (an epoch cut short is not recorded)
        del history.blas[history.n_epochs:]
        if watch is not None:
            history.best_epoch = watch.restore()
        for cb in self.callbacks:
            if callable(getattr(cb, "on_train_end", None)):
                cb.on_train_end(model, history)
        return history

    def _chunked_steps(self, epoch, order, tally):
        """An epoch's steps in compiled chunks (Engine.train_steps); raises DivergenceError."""
        model, b, rows_per_step = self.model, self.buffers, self.rows_per_step
        for first in range(0, order.shape[0], self.chunk_steps * rows_per_step):
            rows = order[first:first + self.chunk_steps * rows_per_step]
            spec = self.optimizer.update_spec()
            optim.check_update(spec, model)
            done = model.engine.train_steps(spec, self.X, self.y, rows, b, self.accumulate,
                                            self.weights)
            wanted = -(-rows.shape[0] // rows_per_step)
            if done < wanted:
                raise DivergenceError(
                    f"training diverged at epoch {epoch + 1}, step "
                    f"{tally.n_steps + done + 1}: " + optim.refusal(
                        b.losses[done], b.norms[done], spec, model.dtype))
            tally.add_chunk(b, done, rows.shape[0], rows_per_step, self.weights is not None)
            if self.bar is not None:
                self.bar.set_postfix_str(f"loss {b.losses[done - 1]:.4f}", refresh=False)
                self.bar.update(rows.shape[0])

    def _steps(self, epoch, order, tally):
        """An epoch's steps one at a time (alone or among ranks), with the gradient hook and
        step callbacks; returns whether a callback asked to stop. Raises DivergenceError."""
        model, ranks = self.model, self.ranks
        for start in range(0, order.shape[0], self.rows_per_step):
            rows = order[start:start + self.rows_per_step]
            try:
                loss, norm = ranks.step(model, self.optimizer, self.grad_hook,
                                        self.compiled_update, self.X, self.y, rows,
                                        self.buffers, self.weights)
            except FloatingPointError as exc:
                raise DivergenceError(f"training diverged at epoch {epoch + 1}, step "
                                      f"{tally.n_steps + 1}: {exc}") from None
            except HookError as exc:
                raise exc.__cause__ from None  # the hook's own exception
            tally.add_step(loss, norm, rows.shape[0], model)
            stop = False
            for hook in self.step_hooks:
                if hook(epoch, tally.n_steps - 1, loss, norm, model) is True:
                    stop = True
            if self.step_hooks:
                stop = ranks.any(stop)
            if stop:
                return True
            if self.bar is not None:
                self.bar.set_postfix_str(f"loss {loss:.4f}", refresh=False)
                self.bar.update(rows.shape[0])
        return False


class _Tally:
    """What an epoch's steps add up to: their rows-weighted loss, norms and counts."""

    def __init__(self, n_layers):
        self.loss_sum = self.norm_sum = 0.0
        self.layer_norm_sum = np.zeros(n_layers)
        self.n_steps = self.n_seen = self.n_updates = 0

    def add_chunk(self, buffers, done, n_rows, rows_per_step, weighted):
        """The first `done` steps recorded in buffers, over n_rows rows."""
        losses, norms, layer_sq = buffers.losses, buffers.norms, buffers.layer_sq
        sizes = np.full(done, rows_per_step, dtype=np.float64)
        sizes[-1] = n_rows - rows_per_step * (done - 1)
        self.loss_sum += float(losses[:done] @ sizes)
        if not weighted:
            self.norm_sum += float(norms[:done].sum())
            self.layer_norm_sum += np.sqrt(layer_sq[:done]).sum(axis=0)
            self.n_updates += done
        else:   # steps of weight 0 were skipped: their norms are NaN
            applied = ~np.isnan(norms[:done])
            self.norm_sum += float(norms[:done][applied].sum())
            self.layer_norm_sum += np.sqrt(layer_sq[:done][applied]).sum(axis=0)
            self.n_updates += int(applied.sum())
        self.n_steps += done
        self.n_seen += n_rows

    def add_step(self, loss, norm, n_rows, model):
        """A step over n_rows rows; norm None when no update was applied."""
        self.loss_sum += loss * n_rows
        if norm is not None:
            self.norm_sum += norm
            self.layer_norm_sum += model.grad_norms()  # from the step's own norm pass
            self.n_updates += 1
        self.n_steps += 1
        self.n_seen += n_rows


class _Recorder:
    """The History of a run, and the scores it records after each epoch."""

    def __init__(self, run, optimizer):
        model, ranks = run.model, run.ranks
        self.scorers = []
        if run.metrics_rows > 0:
            self.scorers.append(("", _Scorer(model, *_metric_rows(
                run.X, run.y, run.metrics_rows, run.seed, ranks), ranks)))
        if run.X_val is not None:
            self.scorers.append(("val_", _Scorer(model, run.X_val, run.y_val, ranks)))
        history = History(loss=[], grad_norm=[], layer_grad_norms=[], samples_per_s=[],
                          seconds=[])
        if _current_lr(optimizer) is not None:
            history["lr"] = []
        for prefix, scorer in self.scorers:
            if prefix:
                history[prefix + "loss"] = []
            if scorer.kind is not None:
                history[prefix + "accuracy"] = []
        self.history, self.keys = history, tuple(history)

    def record(self, tally, seconds, epoch_lr):
        """Append an epoch's entries (from its tally, then the scores); returns them."""
        updates = max(tally.n_updates, 1)
        record = {"loss": tally.loss_sum / tally.n_seen,
                  "grad_norm": tally.norm_sum / updates if tally.n_updates else math.nan,
                  "layer_grad_norms": [float(v) if tally.n_updates else math.nan
                                       for v in tally.layer_norm_sum / updates],
                  "samples_per_s": tally.n_seen / seconds if seconds > 0 else math.inf,
                  "seconds": seconds}
        if epoch_lr is not None:
            record["lr"] = epoch_lr
        for prefix, scorer in self.scorers:
            loss_value, accuracy = scorer.score()
            if prefix:
                record[prefix + "loss"] = loss_value
            if scorer.kind is not None:
                record[prefix + "accuracy"] = accuracy
        for key, value in record.items():
            self.history[key].append(value)
        return record

    def drop_partial_epoch(self):
        """An interrupt between two appends leaves an epoch half-recorded: drop it (from the
        lists fit fills; a callback's own entries are its business)."""
        ours = [self.history[key] for key in self.keys
                if isinstance(self.history.get(key), list)]
        complete = min((len(values) for values in ours), default=0)
        for values in ours:
            del values[complete:]


# ---------------------------------------------------------------------------------------------


def _check_optimizer(optimizer, model):
    """The optimizer protocol (fastbp.optim): a model attribute and a step() method."""
    lacks = [what for what, ok in (("a model attribute", hasattr(optimizer, "model")),
                                   ("a step() method", callable(getattr(optimizer, "step",
                                                                        None))))
             if not ok]
    if lacks:
        raise TypeError(f"optimizer: {type(optimizer).__name__} does not follow the optimizer "
                        f"protocol (fastbp.optim): it lacks {' and '.join(lacks)}")
    if optimizer.model is not model:
        raise ValueError("optimizer: it was built for another model")


def _has_compiled_update(optimizer):
    """Whether the optimizer describes its update to compiled code (update_spec), checked."""
    if not callable(getattr(optimizer, "update_spec", None)):
        return False
    try:
        optim.check_update(optimizer.update_spec(), optimizer.model)
    except TypeError as exc:
        raise TypeError(f"optimizer: {type(optimizer).__name__}.update_spec(): {exc}") from None
    return True


def _current_lr(optimizer):
    """The optimizer's learning rate, when it has one as a number."""
    lr = getattr(optimizer, "lr", None)
    return float(lr) if isinstance(lr, numbers.Real) and not isinstance(lr, bool) else None


def _check_callbacks(callbacks):
    if callbacks is None:
        return []
    try:
        callbacks = list(callbacks)
    except TypeError:
        raise TypeError("callbacks: expected a sequence of callback objects") from None
    names = ("on_train_begin", "on_step_end", "on_epoch_end", "on_train_end")
    for cb in callbacks:
        if not any(callable(getattr(cb, name, None)) for name in names):
            raise TypeError(f"callbacks: {cb!r} has none of the methods {', '.join(names)}")
    return callbacks


def _split_rng(seed):
    # A stream of its own, so that holding out rows does not change the batch order.
    return np.random.default_rng(None if seed is None else [int(seed), 0x5EED])


def _hold_out(model, X, y, fraction, seed, weights=None):
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
            or not 0 < fraction < 1:
        raise ValueError(f"validation_fraction: expected a number in (0, 1), got {fraction!r}")
    from .data import split_indices  # local: fastbp.data is only needed here
    labels = y if kernels.LOSS_KINDS[model.loss].targets == "labels" else None
    keep, held = split_indices(X.shape[0], fraction, _split_rng(seed), labels)
    if held.size == 0 or keep.size == 0:
        raise ValueError(f"validation_fraction: {fraction} of {X.shape[0]} rows leaves "
                         f"{keep.size} for training and {held.size} for validation; both need "
                         "at least one")
    if weights is not None:   # the held-out rows' weights are dropped (see fit)
        weights = weights[keep]
        if not weights.any():
            raise ValueError(f"sample_weight: the {keep.size} rows that validation_fraction "
                             f"{fraction} leaves for training all weigh 0")
    return X[keep], y[keep], X[held], y[held], weights


def _unpack_validation(model, validation_data):
    try:
        X_val, y_val = validation_data
    except (TypeError, ValueError):
        raise TypeError("validation_data: expected a pair (X_val, y_val)") from None
    X_val = _validate.features(X_val, model.sizes[0], model.dtype, name="validation_data X")
    y_val = _validate.targets(y_val, X_val.shape[0], model.sizes[-1], model.loss, model.dtype,
                              name="validation_data y")
    return X_val, y_val


def _metric_rows(X, y, limit, seed, ranks):
    """At most limit training rows, drawn with seed (with shard: those of this rank's part,
    of the rows drawn from the whole set, as one process draws them)."""
    shard = ranks.shard
    n = ranks.n_total if shard else X.shape[0]
    if n <= limit:
        return X, y
    rows = np.sort(_split_rng(seed).choice(n, limit, replace=False))
    if shard:
        rows = rows[(rows >= ranks.offset) & (rows < ranks.offset + X.shape[0])] - ranks.offset
    return X[rows], y[rows]


def _accuracy_kind(model, y, ranks=None):
    """How to score accuracy for these targets: "labels", "onehot", "binary", "multilabel" or
    None: the kind these targets are, if the model's loss scores it (its accuracy in
    kernels.LOSS_KINDS). With shard ranks, for the targets of all the parts (every rank must
    call)."""
    if y is None:
        return None
    loss = kernels.LOSS_KINDS[model.loss]
    if loss.targets == "labels":
        found = "labels"
    else:
        zero_one = bool(np.all((y == 0) | (y == 1)))
        one_hot = zero_one and bool(np.all(y.sum(axis=1) == 1))
        if ranks is not None and ranks.shard:
            zero_one, one_hot = ranks.all_of((zero_one, one_hot))
        if y.shape[1] == 1:
            found = "binary" if zero_one else None
        elif one_hot:
            found = "onehot"
        else:
            found = "multilabel" if zero_one else None
    return found if found in loss.accuracy else None


class _Scorer:
    """Loss and accuracy of the model on fixed rows, from one forward pass.

    The loss is the model's own, each row's computed by its compiled loss kernel beside the
    outputs (MLP.forward_and_losses); the accuracy follows the loss's rules in
    kernels.LOSS_KINDS (for 0/1 targets, an output above its threshold reads as 1: a binary
    cross-entropy model's logit above 0, an MSE model's output above 1/2). The loss is the
    data loss alone: the model's L2 penalty, a term of the training objective, is left out.
    """

    def __init__(self, model, X, y, ranks):
        self.kind = _accuracy_kind(model, y, ranks)
        if ranks.size > 1 and not ranks.shard:   # each rank scores a slice; sums shared
            rows = np.arange(y.shape[0])[ranks.slice_of(y.shape[0])]
            X, y = X[rows], y[rows]
        self.model, self.X, self.y, self.ranks = model, X, y, ranks
        if self.kind == "onehot":
            self.target_labels = y.argmax(axis=1)

    def score(self):
        """(mean loss, accuracy or None) over the rows (all the ranks' rows, with ranks)."""
        sums = self._sums() if self.y.shape[0] else (0.0, 0.0, 0)
        sums = [float(value) for value in self.ranks.sum_scores(sums)]
        loss_sum, correct, n = sums
        return loss_sum / n, None if self.kind is None else correct / n

    def _sums(self):
        """(sum of the rows' losses, rows right, rows)."""
        model, n = self.model, self.y.shape[0]
        out, losses = model.engine.forward_and_losses(   # (X and y were checked once)
            self.X, self.y, np.empty((n, model.sizes[-1]), model.dtype), np.empty(n))
        y = self.y
        if self.kind == "labels":
            right = out.argmax(axis=1) == y
        elif self.kind == "onehot":
            right = out.argmax(axis=1) == self.target_labels
        elif self.kind in ("binary", "multilabel"):
            threshold = kernels.LOSS_KINDS[self.model.loss].threshold
            if threshold is None:
                raise ValueError(f"loss {self.model.loss!r}: scores {self.kind} accuracy but "
                                 "has no threshold")
            # multilabel: every output of the row right (scikit-learn's)
            right = np.all((out > threshold) == (y > 0.5), axis=1)
        elif self.kind is None:
            right = np.zeros(0)
        else:
            raise ValueError(f"no accuracy rule {self.kind!r}")
        return float(np.sum(losses)), float(np.count_nonzero(right)), out.shape[0]


class _BestWeights:
    """Early stopping: remembers the parameters (and batch normalisation's running statistics)
    of the best epoch and counts epochs since."""

    def __init__(self, model, monitor, patience):
        self.model = model
        self.better = _MONITORS[monitor]
        self.patience = patience
        self.best_value = None
        self.best_epoch = None
        self.saved = np.empty_like(model.params)
        self.saved_running = np.empty_like(model.engine.running)

    def update(self, epoch, value):
        """Record this epoch's value; True when patience has run out."""
        if self.best_value is None or (value != self.best_value
                                       and self.better(value, self.best_value) == value):
            np.copyto(self.saved, self.model.params)
            np.copyto(self.saved_running, self.model.engine.running)
            self.best_value, self.best_epoch = value, epoch
            return False
        return epoch - self.best_epoch >= self.patience

    def restore(self):
        if self.best_epoch is not None:
            np.copyto(self.model.params, self.saved)
            np.copyto(self.model.engine.running, self.saved_running)
        return self.best_epoch


_warned_no_tqdm = False


def _progress_factory(progress):
    """tqdm's class when a bar is wanted and tqdm is installed, else None."""
    global _warned_no_tqdm
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if not _warned_no_tqdm:
            warnings.warn("progress=True needs tqdm (pip install 'fastbp[progress]'); training "
                          "without a progress bar", stacklevel=3)
            _warned_no_tqdm = True
        return None
    return tqdm
