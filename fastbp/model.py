"""The MLP: a flat parameter buffer, a flat gradient buffer, preallocated activations, and a
validating layer over the compiled kernels (all numerics live in fastbp.kernels)."""
import numpy as np

from . import _validate, kernels, layout
from ._threads import pin_kernel_blas
from .engine import Engine

#: Accepted activation names -> codes (from kernels.ACTIVATIONS, where each is defined).
ACTIVATIONS = dict(kernels.CODES)
#: Accepted loss names (from kernels.LOSS_KINDS, where each is defined).
LOSSES = tuple(kernels.LOSS_KINDS)
# Losses whose output activation must be the identity (the loss holds its own nonlinearity).
_FUSED = tuple(name for name, kind in kernels.LOSS_KINDS.items() if kind.fused is not None)
DTYPES = (np.float32, np.float64)
#: Accepted matmul precisions (fastbp.kernels.bfloat16), by code.
MATMUL_PRECISIONS = kernels.PRECISIONS


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
#: Accepted normalisations (each a layer kind of fastbp.layout), and None for none.
NORMS = tuple(layout.NORM_KINDS)


def _per_hidden(name, value, n_hidden, check):
    """[check(value)] for each hidden layer, or value checked entry by entry when it is a list
    or tuple of one per hidden layer."""
    if isinstance(value, (list, tuple)):
        if len(value) != n_hidden:
            raise ValueError(f"{name}: expected {n_hidden} entries (one per hidden layer), got "
                             f"{len(value)}")
        return [check(v) for v in value]
    return [check(value)] * n_hidden


def _norm_name(value):
    if value is not None and (not isinstance(value, str) or value not in NORMS):
        raise ValueError(f"norm: unknown normalisation {value!r}; expected "
                         f"{', '.join(map(repr, NORMS))} or None")
    return value


def _dropout_p(value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer,
                                                                     np.floating)):
        raise TypeError(f"dropout: expected a probability in [0, 1), got "
                        f"{type(value).__name__}")
    if not 0.0 <= float(value) < 1.0:   # (NaN fails this too)
        raise ValueError(f"dropout: expected a probability in [0, 1), got {value!r}")
    return float(value)


def _residual_layers(value, sizes):
    """One flag per layer: the hidden layers whose input and output widths are equal, when
    value is True."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"residual: expected True or False, got {type(value).__name__}")
    flags = [bool(value) and sizes[l] == sizes[l + 1] for l in range(len(sizes) - 2)] + [False]
    if value and not any(flags):
        raise ValueError(f"residual: no hidden layer of sizes {sizes} has equal input and "
                         "output widths, so none can add its input to its output")
    return flags


def _precision_code(value, dtype):
    """The code of a matmul_precision name for a model of this dtype (bfloat16 ones need
    float32; "bfloat16" also needs the CPU unit and oneDNN or MKL: kernels.require_bfloat16)."""
    if not isinstance(value, str) or value not in MATMUL_PRECISIONS:
        raise ValueError(f"matmul_precision: expected one of "
                         f"{', '.join(map(repr, MATMUL_PRECISIONS))}, got {value!r}")
    code = MATMUL_PRECISIONS.index(value)
    if code != kernels.FLOAT32 and dtype != np.float32:
        raise ValueError(f"matmul_precision: {value!r} is for float32 models (bfloat16 "
                         f"operands, float32 sums); this model's dtype is "
                         f"{np.dtype(dtype).name}")
    return code


def _dropout_seed(seed):
    """The key of the dropout masks: the model's seed, or one drawn from the OS without one."""
    if seed is None:
        return int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> np.uint64(1))
    return seed % 2 ** 63


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
        L2 penalty on the weights (not the biases, nor the normalisations' scale and shift),
        scikit-learn's alpha: for a batch of B rows the objective is the mean loss plus (l2 /
        (2 B)) sum over layers of ||W||^2, and each weight's gradient gets (l2 / B) W.
        Everywhere the objective is computed: loss_and_grad, loss_value, train_step, fit (with
        accumulate, B is the rows of the whole update). 0 (the default): none, at no cost.
    norm : None, "layer" or "batch", or one per hidden layer
        Normalisation of each hidden layer's product before its activation: "layer"
        (PyTorch's nn.LayerNorm(width): over each row's features) or "batch"
        (nn.BatchNorm1d(width): over the batch's rows when training, by running estimates
        when inferring; momentum 0.1, the running variance unbiased), eps 1e-5 and a learned
        scale and shift (initialised to 1 and 0) either way.
    residual : bool
        Each hidden layer whose input and output widths are equal adds its input to its
        output: h' = h + dropout(act(norm(h W + b))). True needs at least one such layer.
    dropout : float in [0, 1), or one per hidden layer
        Inverted dropout after each hidden layer's activation (nn.Dropout(p)) when training.
        Its masks depend only on the model's seed, the training pass and the row (its index in
        the data set under fit), so runs are reproducible at any thread count and resume
        bitwise.
    matmul_precision : "float32", "bfloat16" or "bfloat16-emulated"
        The matrix products' operands. "float32" (the default): the model's dtype. "bfloat16"
        (float32 models): each product's operands rounded to bfloat16 and their products
        summed in float32 by oneDNN or Intel MKL on the CPU's bfloat16 units (AMX or
        AVX512-BF16), as PyTorch's bfloat16 autocast does; parameters, gradients, optimizer
        state, losses and norms stay float32. It needs such a CPU and oneDNN or MKL (``pip
        install 'fastbp[bf16]'``), and raises kernels.Bfloat16Unavailable naming what is
        missing otherwise.
        "bfloat16-emulated": the same rounding, multiplied by fastbp's own loops on any CPU
        (slow: for checking results).

    Training passes (loss_and_grad, train_step, fit's steps) normalise by the batch's
    statistics, fold them into the running ones and drop; inference (forward, predict,
    predict_proba, loss_value, fit's validation) uses the running statistics and does not
    drop. A batch-normalised model trains on batches of 2 rows or more.

    Not thread-safe: one thread at a time may use a model. While a thread is inside fit, or
    any call that runs compiled code on it, another thread's call raises RuntimeError before
    changing anything (the same thread may re-enter: fit's callbacks may predict). Give each
    thread its own model, or serialise the calls.

    Attributes
    ----------
    params : 1-D array of every parameter, layer by layer: W (fan_in, fan_out) row-major, then
        b (fan_out,) (see fastbp.layout). Writing into it changes the model; assigning an array
        (``model.params = best``) copies its values in, after checking shape, type and
        finiteness: the buffer, and every view of it, stay the model's.
    grads : array of the same layout, written by ``loss_and_grad`` (assigned alike).
    weights, biases, weight_grads, bias_grads : per-layer views into params and grads (a new
        list each time; write into the views).
    norm_weights, norm_biases, norm_weight_grads, norm_bias_grads : per-layer views of the
        normalisations' scale and shift (and their gradients), None where a layer has none.
    running_means, running_vars : per-layer views of batch normalisation's running estimates
        (float64 buffers, not parameters: saved with the model, never trained), None where a
        layer has no batch normalisation.
    training_passes : the training passes so far (the dropout masks' step; saved with the
        model, so a resumed run draws the masks it would have drawn).
    sizes, activations, output_activation, loss, dtype, checkpoint_every : read-only (the
        lists are copies). l2 may be changed (checked as at construction).
    engine : the model's compiled state and the operations on it (fastbp.engine.Engine), for
        code that drives the kernels itself.
    """

    def __init__(self, sizes, activation="relu", output_activation="identity",
                 loss="softmax_cross_entropy", dtype=np.float32, seed=None, checkpoint_every=1,
                 l2=0.0, norm=None, residual=False, dropout=0.0, matmul_precision="float32"):
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
        norms = _per_hidden("norm", norm, n_layers - 1, _norm_name)
        drops = _per_hidden("dropout", dropout, n_layers - 1, _dropout_p) + [0.0]
        residuals = _residual_layers(residual, sizes)
        kinds = [layout.NORM_KINDS[n] if n else layout.DENSE for n in norms] + [layout.DENSE]
        precision = _precision_code(matmul_precision, dtype)

        self._activations = tuple(name for code in hidden for name, c in ACTIVATIONS.items()
                                  if c == code)
        self._output_activation = output_activation
        self._build(Engine(sizes, hidden + [output_code], loss, dtype, checkpoint_every, l2,
                           kinds=kinds, dropout=drops, residual=residuals,
                           seed=_dropout_seed(seed), precision=precision))
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
        """Each layer's parameters by its kind's rule (layout.LAYER_KINDS) and its
        activation's (He or Glorot)."""
        rng = np.random.default_rng(seed)
        sizes, engine = self.sizes, self._engine
        layers = layout.layer_blocks(self.params, sizes, engine.kinds)
        for layer, (views, code, kind) in enumerate(zip(layers, engine.codes, engine.kinds)):
            layout.LAYER_KINDS[kind].init(views, sizes[layer], sizes[layer + 1],
                                          kernels.ACTIVATIONS[code].init, rng)

    # -- structure and buffers ----------------------------------------------------------------
    # The structure is read-only (compiled code relies on it); the two buffers take new values,
    # checked and copied in place, never a new array (the views and workspace point into them).

    sizes = property(lambda self: list(self._engine.sizes),
                     doc="Layer widths, input first (a copy).")
    activations = property(lambda self: list(self._activations),
                           doc="Hidden-layer activations (a copy).")
    output_activation = property(lambda self: self._output_activation)
    loss = property(lambda self: self._engine.loss)
    dtype = property(lambda self: self._engine.dtype)
    checkpoint_every = property(lambda self: self._engine.checkpoint_every)
    matmul_precision = property(lambda self: MATMUL_PRECISIONS[self._engine.precision],
                                doc="The matrix products' precision (see the class).")
    norm = property(lambda self: [layout.LAYER_KINDS[k].norm for k in self._engine.kinds[:-1]],
                    doc="Each hidden layer's normalisation, or None (a copy).")
    dropout = property(lambda self: list(self._engine.dropout[:-1]),
                       doc="Each hidden layer's dropout probability (a copy).")
    residual = property(lambda self: any(self._engine.residual),
                        doc="Whether the model has residual connections.")
    norm_weights = property(lambda self: list(self._norm_weights),
                            doc="Per-layer normalisation scale views into params, or None.")
    norm_biases = property(lambda self: list(self._norm_biases),
                           doc="Per-layer normalisation shift views into params, or None.")
    norm_weight_grads = property(lambda self: list(self._norm_weight_grads),
                                 doc="Per-layer views of the scales' gradients, or None.")
    norm_bias_grads = property(lambda self: list(self._norm_bias_grads),
                               doc="Per-layer views of the shifts' gradients, or None.")
    running_means = property(lambda self: list(self._running_means),
                             doc="Per-layer views of batch norm's running means, or None.")
    running_vars = property(lambda self: list(self._running_vars),
                            doc="Per-layer views of batch norm's running variances, or None.")

    @property
    def training_passes(self):
        """The training passes so far: the step that keys the next pass's dropout masks."""
        return int(self._engine.counter[1])
    engine = property(lambda self: self._engine,
                      doc="The compiled state and its operations (fastbp.engine.Engine).")

    @property
    def l2(self):
        """L2 penalty on the weights (scikit-learn's alpha); may be changed between steps."""
        return self._engine.l2

    @l2.setter
    def l2(self, value):
        self._engine.l2 = _checked_l2(value, self.dtype)
    weights = property(lambda self: list(self._weights),
                       doc="Per-layer weight views (fan_in, fan_out) into params: write into them.")
    biases = property(lambda self: list(self._biases), doc="Per-layer bias views into params.")
    weight_grads = property(lambda self: list(self._weight_grads),
                            doc="Per-layer weight-gradient views into grads.")
    bias_grads = property(lambda self: list(self._bias_grads),
                          doc="Per-layer bias-gradient views into grads.")

    @property
    def params(self):
        return self._engine.params

    @params.setter
    def params(self, value):
        self._assign("params", self.params, value, finite=True)

    @property
    def grads(self):
        return self._engine.grads

    @grads.setter
    def grads(self, value):
        self._assign("grads", self.grads, value, finite=False)
        self._engine.grads_changed()

    def _assign(self, name, buffer, value, finite):
        """Copy value into buffer after checking it fits (shape, a real dtype, finite)."""
        converted = _validate.converted(name, value, buffer.shape, buffer.dtype,
                                        "this model's parameter count", finite)
        if converted is not buffer:
            np.copyto(buffer, converted)

    @property
    def n_params(self):
        return self.params.size

    def __repr__(self):
        extras = ""
        if any(self.norm):
            extras += f", norm={self.norm}"
        if self.residual:
            extras += ", residual=True"
        if any(self.dropout):
            extras += f", dropout={self.dropout}"
        if self.matmul_precision != "float32":
            extras += f", matmul_precision={self.matmul_precision!r}"
        return (f"MLP(sizes={self.sizes}, activation={self.activations}, output_activation="
                f"{self.output_activation!r}, loss={self.loss!r}, dtype={self.dtype.__name__}, "
                f"checkpoint_every={self.checkpoint_every}, l2={self.l2!r}{extras})")

    # -- copying ------------------------------------------------------------------------------

    # The settings a pickle holds (with the two buffers' values), as MLPs have always been
    # pickled; the engine and the per-layer views are rebuilt from them.
    _PICKLED = ("_sizes", "_loss", "_dtype", "_checkpoint_every", "_l2", "_codes", "_capacity",
                "_kinds", "_dropout", "_residual", "_running", "_counter", "_precision")
    _VIEWS = ("_engine", "_weights", "_biases", "_weight_grads", "_bias_grads", "_norm_weights",
              "_norm_biases", "_norm_weight_grads", "_norm_bias_grads", "_running_means",
              "_running_vars")

    def __getstate__(self):
        """For pickle and copy: the settings and the values of the two flat buffers. The
        engine and the per-layer views are rebuilt on the other side (see __setstate__), so
        that a copy's views point into its own buffers, not into copies of them."""
        engine = self._engine
        state = {k: v for k, v in self.__dict__.items() if k not in self._VIEWS}
        state.update(_sizes=engine.sizes, _loss=engine.loss, _dtype=engine.dtype,
                     _checkpoint_every=engine.checkpoint_every, _l2=engine.l2,
                     _codes=list(engine.codes), _capacity=engine.capacity,
                     _kinds=list(engine.kinds), _dropout=list(engine.dropout),
                     _residual=list(engine.residual), _running=engine.running.copy(),
                     _counter=engine.counter.copy(), _precision=engine.precision,
                     params=np.array(self.params), grads=np.array(self.grads))
        return state

    def __setstate__(self, state):
        state = dict(state)
        state.setdefault("_l2", 0.0)  # pickled before l2 existed
        state.setdefault("_precision", kernels.FLOAT32)   # before matmul_precision
        for name in ("_kinds", "_dropout", "_residual", "_running", "_counter"):
            state.setdefault(name, None)   # pickled before normalisation and dropout
        for stale in ("_grad_norms_fresh", "_net", "_work", "_prepared", "_optimizers"):
            state.pop(stale, None)   # (pickled by versions that kept them here)
        settings = [state.pop(name) for name in self._PICKLED]
        params, grads = state.pop("params"), state.pop("grads")
        self.__dict__.update(state)
        (sizes, loss, dtype, checkpoint_every, l2, codes, capacity, kinds, dropout, residual,
         running, counter, precision) = settings
        self._build(Engine(sizes, codes, loss, dtype, checkpoint_every, l2, max(1, capacity),
                           kinds, dropout, residual, precision=precision))
        self.params[...], self.grads[...] = params, grads
        if running is not None:
            self._engine.running[...], self._engine.counter[...] = running, counter

    # -- buffers ------------------------------------------------------------------------------

    def _build(self, engine):
        """Take this engine (its buffers zeroed) and make the per-layer views into it."""
        self._engine = engine
        sizes, kinds = engine.sizes, engine.kinds
        self._weights, self._biases = layout.layer_views(engine.params, sizes, kinds)
        self._weight_grads, self._bias_grads = layout.layer_views(engine.grads, sizes, kinds)
        params = layout.layer_blocks(engine.params, sizes, kinds)
        grads = layout.layer_blocks(engine.grads, sizes, kinds)
        self._norm_weights = [v.get("norm_weight") for v in params]
        self._norm_biases = [v.get("norm_bias") for v in params]
        self._norm_weight_grads = [v.get("norm_weight") for v in grads]
        self._norm_bias_grads = [v.get("norm_bias") for v in grads]
        offsets, _ = kernels.running_layout(sizes, kinds)
        self._running_means = [None if o < 0 else engine.running[o:o + n]
                               for o, n in zip(offsets.tolist(), sizes[1:])]
        self._running_vars = [None if o < 0 else engine.running[o + n:o + 2 * n]
                              for o, n in zip(offsets.tolist(), sizes[1:])]

    def memory_report(self, *optimizers):
        """Bytes held, by kind: "params", "grads", "optimizer" (the norm scratch, and the state of
        the fastbp optimizers given: moments, momentum buffers), "activations" (layer outputs,
        kept pre-activations, backward deltas and per-sample losses at the current capacity),
        "buffers" (batch normalisation's running statistics, the dropout key, and in bfloat16
        precision the operands' bfloat16 copies: 2 bytes a parameter, plus 2 * capacity *
        (widest input + widest output)) and "total". "capacity" is the batch size the buffers
        hold.

        Without checkpointing, activations = capacity * (sum(blocks) + 2 * max(sizes[1:])) *
        itemsize + 8 * capacity, where a layer's block is its width, twice its width for a gelu
        layer (whose gradient needs its pre-activation, kept beside the output); with
        checkpoint_every = k, only every k-th layer's block (and the output's) counts in the
        sum, plus the widest run of k - 1 layers' blocks in between.
        """
        report = self._engine.memory()
        for opt in optimizers:
            if getattr(opt, "model", None) is not self or not callable(
                    getattr(opt, "update_spec", None)):
                raise ValueError(f"optimizers: {opt!r:.80} is not a fastbp optimizer of this "
                                 "model")
            spec = opt.update_spec()
            report["optimizer"] += spec.state.nbytes + spec.hyper.nbytes
        report["total"] = sum(v for k, v in report.items() if k != "capacity")
        return report

    def grad_norms(self):
        """L2 norm of each layer's gradient (W and b together), as a new (L,) float64 array.

        After a training step these come from the same pass that computed the global norm for
        clipping; after loss_and_grad alone they cost one pass over grads. (They describe the
        gradients fastbp last computed: after writing into ``grads`` yourself, call
        ``kernels.layer_sums_of_squares`` instead.)
        """
        return self._engine.grad_norms()

    # -- checked entry points -----------------------------------------------------------------

    def loss_and_grad(self, X, y, sample_weight=None):
        """Forward and backward for one batch: overwrites ``grads``, returns the mean loss. A
        training pass (see the class docstring): batch normalisation's running statistics
        take in this batch, and the dropout masks are those of the next pass.

        sample_weight: optional, one weight >= 0 per row (not all 0): the objective is then
        scikit-learn's weighted one, sum_i w_i loss_i / sum_i w_i, with the L2 penalty over
        sum_i w_i rows (l2 / (2 sum_i w_i)) sum ||W||^2. X may be a SciPy sparse matrix: it is
        one batch, densified.
        """
        X, y = self._engine.check_batch(X, y)
        weights = _validate.sample_weight(sample_weight, X.shape[0])
        self._engine.check_training_rows(X.shape[0])
        return self._engine.loss_and_grad(X, y, weights)

    def loss_value(self, X, y, sample_weight=None):
        """Mean loss of a batch, plus the L2 penalty of its rows (the objective that
        loss_and_grad differentiates, weighted as it is by sample_weight), forward only (grads
        untouched). A sparse X is densified a chunk of rows at a time, as by forward."""
        X, y = self._engine.check_batch(X, y)
        weights = _validate.sample_weight(sample_weight, X.shape[0])
        total, rows = self._engine.data_loss(X, y, weights)
        loss = total / rows
        if self.l2 != 0:
            loss += self._engine.l2_penalty(rows)
        return loss

    def forward(self, X):
        """Output of the last layer for X (N, sizes[0]), as a new (N, sizes[-1]) array: logits for
        the cross-entropies, values for MSE. X may be a SciPy sparse matrix: it is densified
        a chunk of rows at a time (engine.INFERENCE_CHUNK at most), never whole."""
        X = _validate.features(X, self.sizes[0], self.dtype)
        out = np.empty((X.shape[0], self.sizes[-1]), dtype=self.dtype)
        return self._engine.forward(X, out)

    def forward_and_losses(self, X, y):
        """(outputs, losses): the outputs (N, sizes[-1]), bitwise those of forward(X), and each
        row's data loss (N,) float64 against y (unweighted, without the L2 penalty: the mean of
        these is loss_value's with l2 = 0, to rounding), from one forward pass, in chunks as
        forward runs it. fit scores its validation rows with this."""
        X, y = self._engine.check_batch(X, y)
        out = np.empty((X.shape[0], self.sizes[-1]), dtype=self.dtype)
        losses = np.empty(X.shape[0], dtype=np.float64)
        return self._engine.forward_and_losses(X, y, out, losses)

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

    def _require_classifier(self, what):
        if kernels.LOSS_KINDS[self.loss].proba is None:
            able = [repr(name) for name, kind in kernels.LOSS_KINDS.items()
                    if kind.proba is not None]
            raise ValueError(f"{what}: needs loss={' or '.join(able)}, this model uses "
                             f"{self.loss!r}")
