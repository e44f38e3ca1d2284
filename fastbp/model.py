"""The MLP: a flat parameter buffer, a flat gradient buffer, preallocated activations, and a
validating layer over the compiled kernels (all numerics live in fastbp.kernels)."""
import weakref

import numpy as np

from . import _validate, kernels, layout
from ._threads import get_num_threads, pin_kernel_blas

#: Accepted activation names -> codes (from kernels.ACTIVATIONS, where each is defined).
ACTIVATIONS = dict(kernels.CODES)
#: Accepted loss names (from kernels.LOSS_KINDS, where each is defined).
LOSSES = tuple(kernels.LOSS_KINDS)
# Losses whose output activation must be the identity (the loss holds its own nonlinearity).
_FUSED = tuple(name for name, kind in kernels.LOSS_KINDS.items() if kind.fused is not None)
DTYPES = (np.float32, np.float64)
# Inference runs in chunks of at most this many rows, so predicting on a large data set does not
# grow the training buffers to its size.
INFERENCE_CHUNK = 4096


def _checked_l2(value, dtype):
    l2 = _validate.number_in("l2", value, 0)
    if l2 > float(np.finfo(dtype).max):
        raise ValueError(f"l2: {l2:g} does not fit the model's {np.dtype(dtype).name} "
                         "parameters")
    return l2


def _activation_code(name, value):
    if not isinstance(value, str) or value not in ACTIVATIONS:
        raise ValueError(f"{name}: unknown activation {value!r}; expected one of "
                         f"{', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[value]


# Widest layer: the kernels' BLAS takes 32-bit matrix dimensions.
MAX_WIDTH = 2 ** 31 - 1


class MLP:
    """A multilayer perceptron trained by backpropagation.

    Parameters
    ----------
    sizes : sequence of int
        Layer widths, input first: ``[64, 128, 10]`` is 64 inputs, one hidden layer of 128 and
        10 outputs. At least two entries.
    activation : str or sequence of str
        Hidden-layer activation ("relu", "sigmoid", "tanh", "identity", "leaky_relu" (slope
        0.01), "gelu" (exact, erf form)), or one per hidden layer.
    output_activation : str
        Activation of the last layer. Must be "identity" with softmax and binary cross-entropy
        (the softmax or sigmoid is fused into the loss).
    loss : str
        "softmax_cross_entropy": mean over the batch, integer labels 0..C-1.
        "mse": 1/2 sum_j (yhat_j - y_j)^2 averaged over the batch; y of shape (N, C), or (N,) if C=1.
        "huber": sum_j h(yhat_j - y_j) averaged over the batch, h(d) = d^2 / 2 for |d| <= 1 and
        |d| - 1/2 beyond (PyTorch's HuberLoss(reduction="sum", delta=1.0) / B); y as MSE's.
        "binary_cross_entropy": a sigmoid per output and its cross-entropy, summed over the C
        outputs and averaged over the batch (scikit-learn's binary_log_loss); y of shape (N, C)
        (or (N,) if C=1) with values in [0, 1]: 0/1 indicators for multilabel or binary
        classification. predict gives the indicators of logits > 0, predict_proba sigmoid(logits).
    dtype : np.float32 or np.float64
    seed : int or None
        Seed of the initialisation: He normal for ReLU, leaky ReLU and GELU layers, Glorot
        uniform for the others (each activation's rule in kernels.ACTIVATIONS), zero biases.
    checkpoint_every : int
        Gradient checkpointing: keep the activations of every k-th layer only (and the
        output's), and recompute the others segment by segment during the backward pass. 1 (the
        default) keeps them all. Gradients are bitwise the same; see memory_report().
    l2 : float
        L2 penalty on the weights (not the biases), scikit-learn's alpha: for a batch of B rows
        the objective is the mean loss plus (l2 / (2 B)) sum over layers of ||W||^2, and each
        weight's gradient gets (l2 / B) W. Everywhere the objective is computed: loss_and_grad,
        loss_value, train_step, fit (with accumulate, B is the rows of the whole update). 0 (the
        default): none, at no cost.

    Attributes
    ----------
    params : 1-D array of every parameter, layer by layer: W (fan_in, fan_out) row-major, then
        b (fan_out,) (see fastbp.layout). Writing into it changes the model; assigning an array
        (``model.params = best``) copies its values in, after checking shape, type and
        finiteness: the buffer, and every view of it, stay the model's.
    grads : array of the same layout, written by ``loss_and_grad`` (assigned alike).
    weights, biases, weight_grads, bias_grads : per-layer views into params and grads (a new
        list each time; write into the views).
    sizes, activations, output_activation, loss, dtype, checkpoint_every : read-only (the
        lists are copies). l2 may be changed (checked as at construction).
    """

    def __init__(self, sizes, activation="relu", output_activation="identity",
                 loss="softmax_cross_entropy", dtype=np.float32, seed=None, checkpoint_every=1,
                 l2=0.0):
        sizes = self._check_sizes(sizes)
        n_layers = len(sizes) - 1
        if isinstance(activation, str):
            hidden = [_activation_code("activation", activation)] * (n_layers - 1)
        else:
            try:
                activation = list(activation)
            except TypeError:
                raise TypeError(f"activation: expected a name or a list of names, got "
                                f"{type(activation).__name__}") from None
            hidden = [_activation_code("activation", a) for a in activation]
            if len(hidden) != n_layers - 1:
                raise ValueError(f"activation: expected {n_layers - 1} entries (one per hidden "
                                 f"layer), got {len(hidden)}")
        if not isinstance(loss, str) or loss not in LOSSES:
            raise ValueError(f"loss: unknown loss {loss!r}; expected one of {', '.join(LOSSES)}")
        output_code = _activation_code("output_activation", output_activation)
        if loss in _FUSED and output_code != kernels.IDENTITY:
            raise ValueError(f"output_activation: must be 'identity' with {loss} (the "
                             f"{kernels.LOSS_KINDS[loss].fused} is part of the loss), got "
                             f"{output_activation!r}")
        try:
            dtype = np.dtype(dtype).type
        except TypeError:
            dtype = None
        if dtype not in DTYPES:
            raise TypeError("dtype: expected np.float32 or np.float64")
        seed = _validate.seed("seed", seed)
        checkpoint_every = _validate.positive_int("checkpoint_every", checkpoint_every)
        l2 = _checked_l2(l2, dtype)

        self._sizes = tuple(sizes)
        self._loss = loss
        self._dtype = dtype
        self._activations = tuple(name for code in hidden for name, c in ACTIVATIONS.items()
                                  if c == code)
        self._output_activation = output_activation
        self._checkpoint_every = checkpoint_every
        self._l2 = l2
        self._codes = hidden + [output_code]

        self._allocate(layout.n_params(sizes), capacity=1)
        self._initialise(seed)
        pin_kernel_blas()

    @staticmethod
    def _check_sizes(sizes):
        try:
            sizes = list(sizes)
        except TypeError:
            raise TypeError("sizes: expected a sequence of layer widths") from None
        if len(sizes) < 2:
            raise ValueError(f"sizes: expected at least an input and an output width, got {sizes}")
        for s in sizes:
            if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1:
                raise ValueError(f"sizes: every width must be a positive integer, got {sizes}")
            if s > MAX_WIDTH:
                raise ValueError(f"sizes: a width of {s} is more than the {MAX_WIDTH} that the "
                                 "kernels' BLAS (32-bit dimensions) can multiply")
        return [int(s) for s in sizes]

    def _initialise(self, seed):
        rng = np.random.default_rng(seed)
        for weight, code in zip(self.weights, self._codes):
            fan_in, fan_out = weight.shape
            if kernels.ACTIVATIONS[code].init == "he":
                weight[...] = rng.normal(0.0, np.sqrt(2.0 / fan_in), weight.shape)
            else:
                limit = np.sqrt(6.0 / (fan_in + fan_out))
                weight[...] = rng.uniform(-limit, limit, weight.shape)

    # -- structure and buffers ----------------------------------------------------------------
    # The structure is read-only (compiled code relies on it); the two buffers take new values,
    # checked and copied in place, never a new array (the views and workspace point into them).

    sizes = property(lambda self: list(self._sizes), doc="Layer widths, input first (a copy).")
    activations = property(lambda self: list(self._activations),
                           doc="Hidden-layer activations (a copy).")
    output_activation = property(lambda self: self._output_activation)
    loss = property(lambda self: self._loss)
    dtype = property(lambda self: self._dtype)
    checkpoint_every = property(lambda self: self._checkpoint_every)

    @property
    def l2(self):
        """L2 penalty on the weights (scikit-learn's alpha); may be changed between steps."""
        return self._l2

    @l2.setter
    def l2(self, value):
        self._l2 = _checked_l2(value, self.dtype)
        self._net = self._net._replace(l2=self._l2)
        self._prepared.clear()   # a penalty, where there was none, needs its kernel readied
    weights = property(lambda self: list(self._weights),
                       doc="Per-layer weight views (fan_in, fan_out) into params: write into them.")
    biases = property(lambda self: list(self._biases), doc="Per-layer bias views into params.")
    weight_grads = property(lambda self: list(self._weight_grads),
                            doc="Per-layer weight-gradient views into grads.")
    bias_grads = property(lambda self: list(self._bias_grads),
                          doc="Per-layer bias-gradient views into grads.")

    @property
    def params(self):
        return self._params

    @params.setter
    def params(self, value):
        self._assign("params", self._params, value, finite=True)

    @property
    def grads(self):
        return self._grads

    @grads.setter
    def grads(self, value):
        self._assign("grads", self._grads, value, finite=False)
        self._grad_norms_fresh = False

    def _assign(self, name, buffer, value, finite):
        """Copy value into buffer after checking it fits (shape, a real dtype, finite)."""
        value = _validate.as_array(name, value)
        if value.shape != buffer.shape:
            raise ValueError(f"{name}: expected shape {buffer.shape} (this model's parameter "
                             f"count), got {value.shape}")
        if value.dtype.kind not in "fiu" or value.dtype == np.bool_:
            raise TypeError(f"{name}: expected real numbers, got {value.dtype}")
        with np.errstate(over="ignore"):
            converted = value.astype(buffer.dtype, copy=False)
        if finite and not np.all(np.isfinite(converted)):
            raise ValueError(f"{name}: contains NaN or Inf (or values beyond "
                             f"{np.dtype(buffer.dtype).name})")
        if converted is not buffer:
            np.copyto(buffer, converted)

    @property
    def n_params(self):
        return self._params.size

    def __repr__(self):
        return (f"MLP(sizes={self.sizes}, activation={self.activations}, output_activation="
                f"{self.output_activation!r}, loss={self.loss!r}, dtype={self.dtype.__name__}, "
                f"checkpoint_every={self.checkpoint_every}, l2={self.l2!r})")

    # -- copying ------------------------------------------------------------------------------

    _REBUILT = ("_params", "_grads", "_weights", "_biases", "_weight_grads", "_bias_grads",
                "_net", "_work", "_prepared", "_optimizers", "_grad_buffer")

    def __getstate__(self):
        """For pickle and copy: the settings and the values of the two flat buffers. The
        per-layer views and the workspace are rebuilt on the other side (see __setstate__), so
        that a copy's views point into its own buffers, not into copies of them."""
        state = {k: v for k, v in self.__dict__.items() if k not in self._REBUILT}
        state["params"], state["grads"] = np.array(self.params), np.array(self.grads)
        return state

    def __setstate__(self, state):
        state = dict(state)
        state.setdefault("_l2", 0.0)  # pickled before l2 existed
        params, grads = state.pop("params"), state.pop("grads")
        self.__dict__.update(state)
        self._allocate(params.size, capacity=max(1, self._capacity))
        self.params[...], self.grads[...] = params, grads

    # -- buffers ------------------------------------------------------------------------------

    def _allocate(self, n_params, capacity):
        """Fresh, aligned, zeroed params and grads with their per-layer views, and a workspace
        for `capacity` rows (its gradient norms not yet computed)."""
        self._params = kernels.aligned_zeros(n_params, self.dtype)
        # Spare slots after the gradients: data-parallel training sums the step's loss and a
        # stop flag with them, in one MPI call on one buffer (fastbp.distributed).
        self._grad_buffer = kernels.aligned_zeros(n_params + layout.GRAD_TAIL, self.dtype)
        self._grads = self._grad_buffer[:n_params]
        self._weights, self._biases = layout.layer_views(self._params, self._sizes)
        self._weight_grads, self._bias_grads = layout.layer_views(self._grads, self._sizes)
        self._net = self._work = None
        self._capacity = 0
        self._prepared = set()  # what _run has readied
        self._optimizers = weakref.WeakSet()  # whose state memory_report counts
        self._grad_norms_fresh = False  # work.layer_sq holds the squared norms of grads
        self._reserve(capacity)

    def _reserve(self, n_rows):
        """Grow the buffers to hold n_rows (never shrinks; smaller batches use views)."""
        if n_rows <= self._capacity:
            return
        net, acts_size = kernels.make_net(self._sizes, self._codes, n_rows, self.checkpoint_every,
                                          self._loss, self._l2)
        work = kernels.make_workspace(net, acts_size, self.dtype)
        if self._work is not None:
            work.layer_sq[:] = self._work.layer_sq
        self._net, self._work, self._capacity = net, work, n_rows

    def memory_report(self):
        """Bytes held, by kind: "params", "grads", "optimizer" (the norm scratch, and the state of
        every live fastbp optimizer of this model: moments, momentum buffers), "activations"
        (layer outputs, kept pre-activations, backward deltas and
        per-sample losses at the current capacity) and "total". "capacity" is the batch size the
        buffers hold.

        Without checkpointing, activations = capacity * (sum(blocks) + 2 * max(sizes[1:])) *
        itemsize + 8 * capacity, where a layer's block is its width, twice its width for a gelu
        layer (whose gradient needs its pre-activation, kept beside the output); with
        checkpoint_every = k, only every k-th layer's block (and the output's) counts in the
        sum, plus the widest run of k - 1 layers' blocks in between.
        """
        work = self._work
        report = {"params": self.params.nbytes, "grads": self.grads.nbytes,
                  "optimizer": work.partials.nbytes + work.layer_sq.nbytes + sum(
                      opt.state.nbytes + opt.update_spec().hyper.nbytes
                      for opt in list(self._optimizers)),
                  "activations": work.acts.nbytes + work.deltas.nbytes + work.losses.nbytes,
                  "capacity": self._capacity}
        report["total"] = sum(v for k, v in report.items() if k != "capacity")
        return report

    def grad_norms(self):
        """L2 norm of each layer's gradient (W and b together), as a new (L,) float64 array.

        After a training step these come from the same pass that computed the global norm for
        clipping; after loss_and_grad alone they cost one pass over grads. (They describe the
        gradients fastbp last computed: after writing into ``grads`` yourself, call
        ``kernels.layer_sums_of_squares`` instead.)
        """
        work = self._work
        if not self._grad_norms_fresh:
            kernels.layer_sums_of_squares(work.layer_sq, work.partials, self.grads,
                                          self._net.param_offsets)
            self._grad_norms_fresh = True
        return np.sqrt(work.layer_sq)

    # -- checked entry points -----------------------------------------------------------------

    def _check_batch(self, X, y):
        """(X, y) checked and converted; a sparse X as _validate.SparseRows (see _dense)."""
        X = _validate.features(X, self._sizes[0], self.dtype)
        y = _validate.targets(y, X.shape[0], self._sizes[-1], self.loss, self.dtype)
        return X, y

    def _dense(self, X):
        """A checked X as a dense array: itself, or a sparse one densified whole (for one
        batch: loss_and_grad, train_step)."""
        if not isinstance(X, _validate.SparseRows):
            return X
        return self._rows(X, 0, X.shape[0], kernels.aligned_zeros(X.shape, self.dtype))

    def _chunk_buffer(self, X):
        """Where _rows densifies chunks of a sparse X of at most capacity rows (None for a
        dense X: its chunks are views)."""
        if not isinstance(X, _validate.SparseRows):
            return None
        return kernels.aligned_zeros((min(X.shape[0], self._capacity), X.shape[1]), self.dtype)

    def _rows(self, X, start, stop, buffer):
        """Rows start..stop-1 of a checked X: a view of a dense X, or those of a sparse X
        densified into buffer (compiled: kernels.take_csr_rows's unit)."""
        if not isinstance(X, _validate.SparseRows):
            return X[start:stop]
        out = buffer[:stop - start]
        self._run(kernels.entry.take_csr_rows,
                  (out, X.data, X.indices, X.indptr, np.arange(start, stop)),
                  sparse_index=X.indices.dtype)
        return out

    def loss_and_grad(self, X, y, sample_weight=None):
        """Forward and backward for one batch: overwrites ``grads``, returns the mean loss.

        sample_weight: optional, one weight >= 0 per row (not all 0): the objective is then
        scikit-learn's weighted one, sum_i w_i loss_i / sum_i w_i, with the L2 penalty over
        sum_i w_i rows (l2 / (2 sum_i w_i)) sum ||W||^2. X may be a SciPy sparse matrix: it is
        one batch, densified.
        """
        X, y = self._check_batch(X, y)
        weights = _validate.sample_weight(sample_weight, X.shape[0])
        return self._loss_and_grad_checked(X, y, weights)

    def _loss_and_grad_checked(self, X, y, weights=None, penalty=True):
        """loss_and_grad on checked arguments; without penalty, of the data loss alone (a
        data-parallel step adds the penalty after summing the ranks' gradients)."""
        X = self._dense(X)
        self._reserve(X.shape[0])
        self._grad_norms_fresh = False
        net = self._net if penalty else self._net._replace(l2=0.0)
        return self._run(kernels.entry.loss_and_grad,
                         (self.grads, *self._work, self.params, X, y, *net, weights),
                         weighted=weights is not None)

    def loss_value(self, X, y, sample_weight=None):
        """Mean loss of a batch, plus the L2 penalty of its rows (the objective that
        loss_and_grad differentiates, weighted as it is by sample_weight), forward only (grads
        untouched). A sparse X is densified a chunk of rows at a time, as by forward."""
        X, y = self._check_batch(X, y)
        weights = _validate.sample_weight(sample_weight, X.shape[0])
        self._reserve(min(X.shape[0], max(self._capacity, INFERENCE_CHUNK)))
        # In chunks without the penalty, which is of all the rows: added once, below.
        net = self._net._replace(l2=0.0)
        buffer = self._chunk_buffer(X)
        total = 0.0
        for start in range(0, X.shape[0], self._capacity):
            stop = min(start + self._capacity, X.shape[0])
            # A chunk's share: its rows, or its weight (the entry returns its weighted mean).
            if weights is None:
                share, chunk_weights = stop - start, None
            else:
                chunk_weights = weights[start:stop]
                share = kernels.weight_sum(chunk_weights)
                if share == 0:
                    continue
            total += share * self._run(kernels.entry.loss, (
                *self._work, self.params, self._rows(X, start, stop, buffer), y[start:stop],
                *net, chunk_weights), weighted=weights is not None)
        rows = X.shape[0] if weights is None else kernels.weight_sum(weights)
        loss = total / rows
        if self._net.l2 != 0:
            loss += self._run(kernels.entry.l2_penalty, (
                self._work.partials, self.params, self._net.param_offsets, self._net.sizes,
                self._net.l2, rows))
        return loss

    def forward(self, X):
        """Output of the last layer for X (N, sizes[0]), as a new (N, sizes[-1]) array: logits for
        the cross-entropies, values for MSE. X may be a SciPy sparse matrix: it is densified
        a chunk of rows at a time (INFERENCE_CHUNK at most), never whole."""
        X = _validate.features(X, self._sizes[0], self.dtype)
        out = np.empty((X.shape[0], self._sizes[-1]), dtype=self.dtype)
        self._reserve(min(X.shape[0], max(self._capacity, INFERENCE_CHUNK)))
        buffer = self._chunk_buffer(X)
        for start in range(0, X.shape[0], self._capacity):
            stop = min(start + self._capacity, X.shape[0])
            out[start:stop] = self._run(kernels.entry.forward, (
                self._work.acts, self.params, self._rows(X, start, stop, buffer), *self._net))
        return out

    def forward_and_losses(self, X, y):
        """(outputs, losses): the outputs (N, sizes[-1]), bitwise those of forward(X), and each
        row's data loss (N,) float64 against y (unweighted, without the L2 penalty: the mean of
        these is loss_value's with l2 = 0, to rounding), from one forward pass, in chunks as
        forward runs it. fit scores its validation rows with this."""
        X, y = self._check_batch(X, y)
        out = np.empty((X.shape[0], self._sizes[-1]), dtype=self.dtype)
        losses = np.empty(X.shape[0], dtype=np.float64)
        self._reserve(min(X.shape[0], max(self._capacity, INFERENCE_CHUNK)))
        buffer = self._chunk_buffer(X)
        for start in range(0, X.shape[0], self._capacity):
            stop = min(start + self._capacity, X.shape[0])
            out[start:stop] = self._run(kernels.entry.forward_and_losses, (
                self._work.acts, self._work.losses, self.params,
                self._rows(X, start, stop, buffer), y[start:stop], *self._net))
            losses[start:stop] = self._work.losses[:stop - start]
        return out, losses

    def predict_proba(self, X):
        """Probabilities (N, C): of each class (softmax cross-entropy: the softmax of the
        logits, rows summing to 1), or of each output being 1 (binary cross-entropy: the sigmoid
        of each logit). Only for losses that give probabilities (their proba in
        kernels.LOSS_KINDS: the cross-entropies)."""
        self._require_classifier("predict_proba")
        out = self._finite_forward(X)
        kernels.LOSS_KINDS[self.loss].proba(out, out)
        return out

    def predict(self, X):
        """Class labels (N,) int64 for softmax cross-entropy; 0/1 indicators (N, C) int64 of
        logits > 0 (probability > 1/2) for binary cross-entropy; output values for MSE (each
        loss's predict rule in kernels.LOSS_KINDS)."""
        out = self._finite_forward(X)
        return kernels.LOSS_KINDS[self.loss].predictions(out)

    def _finite_forward(self, X):
        """forward(X), refusing outputs that overflowed: a NaN has no class (argmax would say
        0) and no probability."""
        out = self.forward(X)
        bad = ~np.isfinite(out).all(axis=1)
        if bad.any():
            rows = np.flatnonzero(bad)
            raise ValueError(f"X: the outputs of {rows.size} row(s) (the first: row {rows[0]}) "
                             f"overflow to Inf or NaN in {np.dtype(self.dtype).name}; their "
                             "values are too large for this model's weights (scale them)")
        return out

    def _run(self, entry, args, update_kind=None, weighted=False, sparse_index=None):
        """entry(*args) for one of kernels.entry's compiled entries. args is a tuple, not a
        *args parameter: passed on through one, each call's tuple was left to the garbage
        collector. The first time for an entry, update kind, capacity, thread count, weighting
        and sparse index type (of a CSR X's indices, or None), it readies the compiled code
        this needs (kernels.prepare: compiled, or loaded from Numba's cache); always, it keeps
        the kernels' BLAS at one thread."""
        self._ready(entry, args, update_kind, weighted, sparse_index)
        pin_kernel_blas()
        return entry(*args)

    def _ready(self, entry, args, update_kind=None, weighted=False, sparse_index=None):
        """What _run readies before its call, without the call."""
        key = (entry, update_kind, self._capacity, get_num_threads(), weighted, sparse_index)
        if key not in self._prepared:
            kernels.prepare(self.dtype, self.loss, update_kind, self._net, entry, args,
                            weighted, sparse_index)
            self._prepared.add(key)

    def _require_classifier(self, what):
        if kernels.LOSS_KINDS[self.loss].proba is None:
            able = [repr(name) for name, kind in kernels.LOSS_KINDS.items()
                    if kind.proba is not None]
            raise ValueError(f"{what}: needs loss={' or '.join(able)}, this model uses "
                             f"{self.loss!r}")
