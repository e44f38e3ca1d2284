"""The engine: a model's compiled state and every operation that runs compiled code on it.

An Engine owns the flat parameter and gradient buffers, the kernels' description of the
network (``kernels.Net``) and its buffers (``kernels.Workspace``), which units are readied,
and whether the per-layer gradient norms describe the current gradients. The MLP (the user's
object), the optimizers, the training loop, the command, the scikit-learn estimators and the
data-parallel layer reach compiled code through these public operations only:

    prepare            ready: compile or load what an entry needs (``ready``), or run it (``run``)
    reserve            grow the buffers to a batch size
    loss_and_grad      gradients of one batch (``accumulated_loss_and_grad``: of many)
    data_loss, forward inference in chunks
    update             the update stage, from an optimizer's ``kernels.Update``
    train_step         gradients and update, one compiled call
    train_steps        many steps over an index array, one compiled call (fit's fast path)
    add_l2_penalty     the penalty's stage after a data-parallel gradient sum
    grad_norms         per-layer norms, from the last norm pass or a fresh one

Arguments reach it checked (``check_batch``, ``dense``); it validates nothing else and holds no
numerics of its own. It knows nothing of optimizers beyond their Update, nor of MPI beyond
keeping ``GRAD_SPARE`` free slots after the gradients for a caller's own sums.
"""
import contextlib
import math
import threading

import numpy as np

from . import _validate, kernels, layout
from ._threads import get_num_threads, pin_kernel_blas

IN_USE_MESSAGE = ("model is in use by another thread: fastbp models are not thread-safe; give "
                  "each thread its own model or serialise calls")


class OneThreadAtATime:
    """A non-blocking, re-entrant hold on an engine (``with engine.in_use:``). The compiled
    calls release the GIL and share the engine's buffers, so a second thread inside would
    corrupt them without an error: it is refused with a RuntimeError instead of waiting (a
    wait would only hide the misuse). The holding thread may enter again: fit's callbacks run
    on fit's thread and may call predict, say."""

    __slots__ = ("_lock",)

    def __init__(self):
        self._lock = threading.RLock()

    def __enter__(self):
        if not self._lock.acquire(blocking=False):
            raise RuntimeError(IN_USE_MESSAGE)

    def __exit__(self, exc_type, exc, traceback):
        self._lock.release()


# Spare float slots after the gradients, in the same buffer (grad_buffer): a data-parallel step
# sums its loss and a stop flag with the gradients in one call (fastbp.distributed).
GRAD_SPARE = 2


class Engine:
    """The compiled state of a network of these layer widths (input first), activation codes
    (one per layer, the output's last), loss name, dtype, checkpoint interval and L2 penalty;
    and of each layer's kind (layout.LAYER_KINDS codes), dropout probability and residual flag
    (None: plain dense layers), with seed keying the dropout masks, and the matrix products'
    precision (a code of kernels.PRECISIONS; BFLOAT16 is checked to run here, and raises
    kernels.Bfloat16Unavailable otherwise). Its buffers hold `capacity` rows to start with and
    grow on demand (``reserve``).

    Besides the parameters it holds two buffers of training state (kept when the Net is
    rebuilt): ``running``, the batch normalisations' running means and variances (float64,
    kernels.running_layout), and ``counter``, [seed, training passes so far, row base], which
    keys the dropout masks."""

    def __init__(self, sizes, codes, loss, dtype, checkpoint_every=1, l2=0.0, capacity=1,
                 kinds=None, dropout=None, residual=None, seed=0, precision=kernels.FLOAT32):
        if precision == kernels.BFLOAT16:
            kernels.require_bfloat16()
        self.precision = precision
        self.sizes, self.codes, self.loss = tuple(sizes), tuple(codes), loss
        self.dtype, self.checkpoint_every = dtype, checkpoint_every
        n_layers = len(self.sizes) - 1
        self.kinds = tuple([layout.DENSE] * n_layers if kinds is None else map(int, kinds))
        self.dropout = tuple([0.0] * n_layers if dropout is None else map(float, dropout))
        self.residual = tuple([False] * n_layers if residual is None else map(bool, residual))
        self._l2 = float(l2)
        self.running = kernels.new_running(self.sizes, self.kinds)
        self.counter = np.array([seed, 0, 0], dtype=np.int64)
        self._saved_running, self._saved_counter = self.running.copy(), self.counter.copy()
        n_params = layout.n_params(self.sizes, self.kinds)
        self.params = kernels.aligned_zeros(n_params, dtype)
        self.grad_buffer = kernels.aligned_zeros(n_params + GRAD_SPARE, dtype)
        self.grads = self.grad_buffer[:n_params]
        self.net = self.work = None
        self.capacity = 0
        self._prepared = set()          # what ready() has readied
        self._grad_norms_fresh = False  # work.layer_sq holds the squared norms of grads
        # Held by every compiled call (run), by the operations that span several (forward,
        # data_loss, ...) and by a whole fit: one thread at a time.
        self.in_use = OneThreadAtATime()
        self.reserve(capacity)

    # -- state --------------------------------------------------------------------------------

    @property
    def trains_differently(self):
        """Whether a training pass differs from inference here (batch normalisation or
        dropout): then the objective of a training pass is not loss_value's."""
        return layout.BATCH_NORM in self.kinds or any(p > 0 for p in self.dropout)

    @property
    def l2(self):
        return self._l2

    @l2.setter
    def l2(self, value):
        self._l2 = float(value)
        self.net = self.net._replace(l2=self._l2)
        self._prepared.clear()   # a penalty, where there was none, needs its kernel readied

    def grads_changed(self):
        """Say that grads no longer match the last norm pass (written from outside)."""
        self._grad_norms_fresh = False

    def reserve(self, n_rows):
        """Grow the buffers to hold n_rows (never shrinks; smaller batches use views)."""
        if n_rows <= self.capacity:
            return
        with self.in_use:   # (another thread's compiled call may be using the old buffers)
            net, acts_size = kernels.make_net(self.sizes, self.codes, n_rows,
                                              self.checkpoint_every, self.loss, self._l2,
                                              self.kinds, self.dropout, self.residual,
                                              self.running, self.counter, self.precision)
            work = kernels.make_workspace(net, acts_size, self.dtype)
            if self.work is not None:
                work.layer_sq[:] = self.work.layer_sq
            self.net, self.work, self.capacity = net, work, n_rows

    def memory(self):
        """Bytes of the buffers, by kind (see MLP.memory_report); "optimizer" is the norm
        scratch alone."""
        work = self.work
        return {"params": self.params.nbytes, "grads": self.grads.nbytes,
                "buffers": self.running.nbytes + self.counter.nbytes + self.net.bits.nbytes,
                "optimizer": work.partials.nbytes + work.layer_sq.nbytes,
                "activations": work.acts.nbytes + work.deltas.nbytes + work.losses.nbytes,
                "capacity": self.capacity}

    # -- compiled calls -----------------------------------------------------------------------

    def run(self, entry, args, update_kind=None, weighted=False, sparse_index=None):
        """entry(*args) for one of kernels.entry's compiled entries, readied first (see ready);
        always with the kernels' BLAS at one thread. args is a tuple, not a *args parameter:
        passed on through one, each call's tuple was left to the garbage collector. Every
        compiled call on the engine's buffers comes through here: it refuses a second thread
        (see OneThreadAtATime)."""
        with self.in_use:
            self.ready(entry, args, update_kind, weighted, sparse_index)
            pin_kernel_blas()
            try:
                result, missing = entry(*args), None
            except kernels.UnitMissingError as exc:
                missing = exc
            kernels.raise_if_unfilled()   # a unit's own call skipped (and why, when one did)
            if missing is not None:
                raise missing
            return result

    def ready(self, entry, args, update_kind=None, weighted=False, sparse_index=None):
        """Ready the compiled code that entry(*args) needs (kernels.prepare: compiled, or loaded
        from Numba's cache), once for each entry, update kind, capacity, thread count,
        weighting and sparse index type (of a CSR X's indices, or None)."""
        key = (entry, update_kind, self.capacity, get_num_threads(), weighted, sparse_index)
        if key not in self._prepared:
            kernels.prepare(self.dtype, self.loss, update_kind, self.net, entry, args,
                            weighted, sparse_index)
            self._prepared.add(key)

    # -- arguments ----------------------------------------------------------------------------

    def check_batch(self, X, y):
        """(X, y) checked and converted; a sparse X as _validate.SparseRows (see dense)."""
        X = _validate.features(X, self.sizes[0], self.dtype)
        y = _validate.targets(y, X.shape[0], self.sizes[-1], self.loss, self.dtype)
        return X, y

    def check_training_rows(self, n_rows, name="X"):
        """Refuse a training batch of fewer than 2 rows in a batch-normalised network: a single
        row has no batch variance (nn.BatchNorm1d refuses it too)."""
        if n_rows < 2 and layout.BATCH_NORM in self.kinds:
            raise ValueError(f"{name}: batch normalisation needs at least 2 rows in a training "
                             f"batch, got {n_rows}")

    def dense(self, X):
        """A checked X as a dense array: itself, or a sparse one densified whole (for one
        batch: loss_and_grad, train_step)."""
        if not isinstance(X, _validate.SparseRows):
            return X
        return self.rows(X, 0, X.shape[0], kernels.aligned_zeros(X.shape, self.dtype))

    def rows(self, X, start, stop, buffer):
        """Rows start..stop-1 of a checked X: a view of a dense X, or those of a sparse X
        densified into buffer (compiled: kernels.take_csr_rows's unit)."""
        if not isinstance(X, _validate.SparseRows):
            return X[start:stop]
        out = buffer[:stop - start]
        self.run(kernels.entry.take_csr_rows,
                 (out, X.data, X.indices, X.indptr, np.arange(start, stop)),
                 sparse_index=X.indices.dtype)
        return out

    def _chunk_buffer(self, X):
        """Where rows() densifies chunks of a sparse X of at most capacity rows (None for a
        dense X: its chunks are views)."""
        if not isinstance(X, _validate.SparseRows):
            return None
        return kernels.aligned_zeros((min(X.shape[0], self.capacity), X.shape[1]), self.dtype)

    def _chunks(self, X):
        """(start, stop, rows) for X in chunks of at most the capacity, which grows to
        inference_rows (or X's rows, if fewer) first."""
        self.reserve(min(X.shape[0], max(self.capacity, INFERENCE_CHUNK)))
        buffer = self._chunk_buffer(X)
        for start in range(0, X.shape[0], self.capacity):
            stop = min(start + self.capacity, X.shape[0])
            yield start, stop, self.rows(X, start, stop, buffer)

    # -- inference ----------------------------------------------------------------------------

    def forward(self, X, out):
        """out (N, sizes[-1]) = the last layer's output for a checked X, chunk by chunk."""
        with self.in_use:   # (each chunk's output is a view of the shared activations)
            for start, stop, x in self._chunks(X):
                out[start:stop] = self.run(kernels.entry.forward, (self.work.acts, self.params,
                                                                   x, *self.net))
        return out

    def forward_and_losses(self, X, y, out, losses):
        """out as forward's, and losses (N,) float64 = each row's data loss (unweighted, without
        the L2 penalty) for a checked X and y, from the same pass, chunk by chunk."""
        with self.in_use:   # (each chunk's results are views of the shared buffers)
            for start, stop, x in self._chunks(X):
                out[start:stop] = self.run(kernels.entry.forward_and_losses, (
                    self.work.acts, self.work.losses, self.params, x, y[start:stop], *self.net))
                losses[start:stop] = self.work.losses[:stop - start]
        return out, losses

    def data_loss(self, X, y, weights=None, mode=kernels.INFER):
        """(sum of the rows' losses, weighted by weights when given, and the rows' count or
        weight) for a checked X and y, without the L2 penalty, chunk by chunk; mode: INFER, or
        REPLAY (kernels.mlp_loss; for one chunk, as batch statistics are a chunk's)."""
        with self.in_use:   # (the chunks share the engine's buffers)
            if mode != kernels.INFER:   # batch statistics: the whole X is one batch
                self.reserve(X.shape[0])
            total = 0.0
            for start, stop, x in self._chunks(X):
                # (after _chunks has grown the buffers: a Net from before would describe the
                # old ones, and the first call on a new model gave a wrong loss)
                net = self.net._replace(l2=0.0)
                # A chunk's share: its rows, or its weight (the entry returns its weighted mean).
                if weights is None:
                    share, chunk_weights = stop - start, None
                else:
                    chunk_weights = weights[start:stop]
                    share = kernels.weight_sum(chunk_weights)
                    if share == 0:
                        continue
                total += share * self.run(kernels.entry.loss, (*self.work, self.params, x,
                                                               y[start:stop], *net, chunk_weights,
                                                               mode),
                                          weighted=weights is not None)
            rows = X.shape[0] if weights is None else kernels.weight_sum(weights)
            return total, rows

    def l2_penalty(self, n_rows):
        """The L2 penalty of n_rows rows (a count or a weight). (Callers skip it when l2 is 0:
        adding 0 is not bitwise free, -0.0 + 0.0 being 0.0.)"""
        net = self.net
        return self.run(kernels.entry.l2_penalty, (self.work.partials, self.params,
                                                   net.param_offsets, net.weight_lengths,
                                                   net.l2, n_rows))

    # -- gradients ----------------------------------------------------------------------------

    def loss_and_grad(self, X, y, weights=None, penalty=True, row_ids=None):
        """The objective of one checked batch, its gradient in grads; without penalty, of the
        data loss alone (a data-parallel step adds the penalty after summing the ranks').
        row_ids: the rows' indices in their data set (int64), which key the dropout masks
        (None: their positions)."""
        X = self.dense(X)
        self.reserve(X.shape[0])
        self._grad_norms_fresh = False
        net = self.net if penalty else self.net._replace(l2=0.0)
        return self.run(kernels.entry.loss_and_grad,
                        (self.grads, *self.work, self.params, X, y, *net, weights, row_ids),
                        weighted=weights is not None)

    def skip_pass(self):
        """Count a training pass without running one (a data-parallel rank with no rows in a
        step), so that every rank keys the next step's dropout masks alike."""
        self.counter[1] += 1

    def accumulated_loss_and_grad(self, micro_grads, x_batch, y_batch, X, y, rows,
                                  weights=None, w_batch=None, penalty=True):
        """The objective over the checked X[rows], y[rows] and its gradient in grads, from
        batches of x_batch's rows (kernels.entry.accumulated_loss_and_grad)."""
        batch_size = x_batch.shape[0]
        self.reserve(batch_size)
        self._grad_norms_fresh = False
        net = self.net if penalty else self.net._replace(l2=0.0)
        sparse = isinstance(X, _validate.SparseRows)
        return self.run(kernels.entry.accumulated_loss_and_grad, (
            self.grads, micro_grads, *self.work, self.params, x_batch, y_batch, _compiled(X),
            y, rows, batch_size, *net, weights, w_batch), weighted=weights is not None,
            sparse_index=X.indices.dtype if sparse else None)

    def add_l2_penalty(self, n_rows):
        """Add the L2 penalty's gradient of n_rows rows to grads; returns the penalty: the stage
        a data-parallel step runs after summing the ranks' data gradients (when l2 is not 0)."""
        net = self.net
        return self.run(kernels.entry.add_l2_penalty, (self.grads, self.work.partials,
                                                       self.params, net.param_offsets,
                                                       net.weight_lengths, net.l2,
                                                       float(n_rows)))

    def grad_norms(self):
        """The L2 norm of each layer's gradient, as a new (L,) float64 array: from the last
        norm pass when it saw the current gradients, else from a new one."""
        with self.in_use:   # (a compiled call of its own, not through run)
            work = self.work
            if not self._grad_norms_fresh:
                kernels.layer_sums_of_squares(work.layer_sq, work.partials, self.grads,
                                              self.net.param_offsets)
                self._grad_norms_fresh = True
            return np.sqrt(work.layer_sq)

    # -- update and steps ---------------------------------------------------------------------

    def update(self, spec):
        """The update stage of a checked kernels.Update on the current gradients: (gradient
        norm, applied)."""
        work = self.work
        norm, applied = self.run(kernels.entry.update, (
            self.params, self.grads, work.layer_sq, work.partials, self.net.param_offsets,
            *spec), update_kind=spec.kind)
        self._grad_norms_fresh = not math.isnan(norm)  # the norm pass ran
        return norm, applied

    def train_step(self, spec, X, y, weights=None, row_ids=None):
        """Gradients then update for a dense checked X and y (and sample weights, float64, or
        None; row_ids as loss_and_grad's), in one compiled call: (loss, norm, applied)."""
        self.reserve(X.shape[0])
        loss, norm, applied = self.run(kernels.entry.train_step, (
            self.params, self.grads, *self.work, X, y, *self.net, *spec, weights, row_ids),
            update_kind=spec.kind, weighted=weights is not None)
        self._grad_norms_fresh = math.isfinite(loss)
        return loss, norm, applied

    def train_steps(self, spec, X, y, rows, buffers, accumulate=1, weights=None):
        """Steps over the batches of `rows` in one compiled call (fit's fast path, for checked
        X and y, and sample weights or None); buffers: a StepBuffers. Returns the number of
        steps done (applied, or skipped for weighing 0); see kernels.mlp_train_epoch."""
        b = buffers
        batch_size = b.x_batch.shape[0]
        self.reserve(batch_size)
        sparse = isinstance(X, _validate.SparseRows)
        done = self.run(kernels.entry.train_epoch, (
            self.params, self.grads, *self.work, b.x_batch, b.y_batch, b.losses, b.norms,
            b.layer_sq, _compiled(X), y, rows, batch_size, *self.net, *spec, accumulate,
            b.micro_grads, weights, b.w_batch), update_kind=spec.kind,
            weighted=weights is not None, sparse_index=X.indices.dtype if sparse else None)
        n_batches = -(-len(rows) // (batch_size * accumulate))
        # After a divergence, layer_sq describes grads only if the failing step got as far as
        # the norm (its loss was finite).
        self._grad_norms_fresh = done == n_batches or math.isfinite(b.losses[done])
        return done

    def remember_state(self):
        """Copy the running statistics and the counter aside (into buffers made once), for
        restore_state to put back: around a step that may be refused."""
        np.copyto(self._saved_running, self.running)
        np.copyto(self._saved_counter, self.counter)

    def restore_state(self):
        np.copyto(self.running, self._saved_running)
        np.copyto(self.counter, self._saved_counter)

    @contextlib.contextmanager
    def kept_state(self):
        """Run passes that must leave no trace (a warm-up, the gradient checker): the running
        statistics and the counter are put back afterwards (remember_state's buffers: no step
        inside may use them)."""
        self.remember_state()
        try:
            yield
        finally:
            self.restore_state()

    def ready_epoch(self, spec, X, y, batch_size, weighted=False):
        """Ready what train_steps runs for a kernels.Update, checked X and y (a row or more) and
        this batch size, with sample weights or (weighted False) without (a variant compiled
        apart), by running it over no rows: nothing changes."""
        fresh = self._grad_norms_fresh
        weights = np.ones(X.shape[0]) if weighted else None
        self.train_steps(spec, X, y, np.arange(0),
                         StepBuffers(self, X, y, batch_size, weighted=weighted), weights=weights)
        self._grad_norms_fresh = fresh

    def ready_steps(self, spec, X, y, batch_size, accumulate=1, weighted=False):
        """Ready what a data-parallel step runs (loss_and_grad without penalty or
        accumulated_loss_and_grad, add_l2_penalty, update) for a kernels.Update, checked X and
        y (a row or more), batch size and accumulation, with sample weights or (weighted False)
        without, changing no parameter and no optimizer state (grads are overwritten)."""
        self.reserve(max(batch_size, X.shape[0]))
        work, net = self.work, self.net
        weights = np.ones(X.shape[0]) if weighted else None
        # All the units at once (the update's too): compiled side by side (kernels.prepare).
        self.ready(kernels.entry.loss_and_grad, (self.grads, *work, self.params, X, y, *net,
                                                 weights, None), update_kind=spec.kind,
                   weighted=weighted)
        with self.kept_state():
            self.loss_and_grad(X, y, weights, penalty=False)
        self.ready(kernels.entry.update, (self.params, self.grads, work.layer_sq, work.partials,
                                          net.param_offsets, *spec), update_kind=spec.kind)
        if accumulate > 1:
            x_batch = kernels.aligned_zeros((batch_size, X.shape[1]), X.dtype)
            y_batch = np.empty((batch_size,) + y.shape[1:], dtype=y.dtype)
            w_batch = np.empty(batch_size) if weighted else None
            self.ready(kernels.entry.accumulated_loss_and_grad, (
                self.grads, kernels.aligned_zeros(self.params.size, self.dtype), *work,
                self.params, x_batch, y_batch, X, y, np.arange(1), batch_size, *net, weights,
                w_batch), weighted=weighted)
        if self.l2 != 0:
            self.add_l2_penalty(1.0)


# Inference runs in chunks of at most this many rows, so predicting on a large data set does not
# grow the training buffers to its size.
INFERENCE_CHUNK = 4096


class StepBuffers:
    """What steps over a data set gather into and record to: the batch buffers (x_batch,
    y_batch, and w_batch with sample weights), micro_grads when steps accumulate several
    batches (else None), and per-step losses, norms and per-layer squared norms for up to
    max_steps steps."""

    def __init__(self, engine, X, y, batch_size, weighted=False, accumulates=False,
                 max_steps=1):
        self.x_batch = kernels.aligned_zeros((batch_size, X.shape[1]), X.dtype)
        self.y_batch = np.empty((batch_size,) + y.shape[1:], dtype=y.dtype)
        self.w_batch = np.empty(batch_size, dtype=np.float64) if weighted else None
        self.micro_grads = (kernels.aligned_zeros(engine.params.size, engine.dtype)
                            if accumulates else None)
        self.losses = np.empty(max_steps, dtype=np.float64)
        self.norms = np.empty(max_steps, dtype=np.float64)
        self.layer_sq = np.empty((max_steps, len(engine.sizes) - 1), dtype=np.float64)


def _compiled(X):
    """A checked X as compiled code takes it: the array, or a sparse X's kernels.CSR."""
    return X.csr if isinstance(X, _validate.SparseRows) else X
