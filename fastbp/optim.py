"""Optimizers, and the protocol ``fit`` uses for any optimizer.

The optimizer protocol
----------------------
An optimizer is any object with

``model``
    The ``fastbp.MLP`` whose parameters it updates.
``step()``
    Update ``model.params`` in place from ``model.grads`` (computed by the caller, e.g.
    ``model.loss_and_grad``); return the global gradient norm before clipping, as a float.
    When it refuses a step (NaN or Inf gradients, an update that would overflow) it raises
    FloatingPointError and leaves the parameters unchanged.

and optionally

``update_spec()``
    A ``fastbp.kernels.Update`` that describes the same update to compiled code. With it, ``fit``
    and ``train_step`` compute gradients and apply the update inside one compiled call (many
    steps per call in ``fit``), with the same results as ``step()``.

``end_epoch(samples, loss)``
    Called by ``fit`` after each epoch (the rows it trained on, the loss a schedule watches):
    where a learning-rate schedule advances.
``lr``
    A number: ``fit`` records it per epoch in ``history["lr"]``.

``fit`` checks the protocol, computes the gradients, runs its gradient hook if one is given,
then calls the update stage: ``step()``, or the compiled update of ``update_spec()`` (which
must fit the model: ``check_update``).

fastbp's optimizers (``SGD``, ``Adam``, ``AdamW``, ``RMSprop``) have all of these, and
``train_step``. Each is a kind of compiled update (an entry of ``kernels.update.KINDS``, which
names its hyper-parameters and state rows) and a class here that checks its arguments.
"""
import inspect
import math
import numbers

import numpy as np

from . import _validate, kernels
from .kernels.update import (CLIP_NORM, KINDS, LR, RMSPROP_KIND, STEPS, UPDATE_KINDS,
                             WEIGHT_DECAY, state_rows, update_spec)
from .model import MLP

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "OPTIMIZERS"]


class Optimizer:
    """What fastbp's optimizers share. Each keeps its hyper-parameters and its state (moment
    buffers, in the parameters' layout, and the step count) in one ``kernels.Update``, which the
    compiled update reads and advances in place: ``step()``, ``train_step`` and ``fit`` all run
    the same compiled pass.

    ``lr`` (the current rate) and ``clip_norm`` may be changed between steps; the other
    hyper-parameters are fixed at construction. With an ``lr_schedule`` (fastbp.schedules),
    ``lr`` follows it: set for epoch 0 here and after each epoch by ``fit`` (``end_epoch``),
    from ``base_lr``, the ``lr`` given.
    """
    name = None  # the name save() stores and OPTIMIZERS maps back

    def __init__(self, model, spec, lr_schedule):
        if lr_schedule is not None and (isinstance(lr_schedule, type)
                                        or not callable(getattr(lr_schedule, "rate", None))):
            raise TypeError(f"lr_schedule: expected a schedule object of fastbp.schedules "
                            f"(e.g. Cosine(30)), got {lr_schedule!r:.100}")
        self._model = model
        self._spec = spec
        self._base_lr = float(spec.hyper[LR])
        self._lr_schedule = lr_schedule
        self._epochs_done = 0   # the schedule's position
        self._samples_seen = 0
        if lr_schedule is not None:
            self._set_scheduled_lr()

    @property
    def model(self):
        """The model whose parameters this optimizer updates (fixed: its state fits them)."""
        return self._model

    # The schedule and its position: read-only (end_epoch advances them; load_checkpoint
    # restores them).
    base_lr = property(lambda self: self._base_lr, doc="The lr given; a schedule starts here.")
    lr_schedule = property(lambda self: self._lr_schedule)
    epochs_done = property(lambda self: self._epochs_done, doc="Epochs ended (end_epoch).")
    samples_seen = property(lambda self: self._samples_seen, doc="Rows of those epochs.")

    # -- hyper-parameters ---------------------------------------------------------------------

    @property
    def lr(self):
        return float(self._spec.hyper[LR])

    @lr.setter
    def lr(self, value):
        self._spec.hyper[LR] = self._stable_lr(_validate.positive_number("lr", value),
                                               self.weight_decay)

    # The largest lr * weight_decay that keeps the decay from amplifying the parameters: each
    # SGD step multiplies them by 1 - lr * weight_decay, each AdamW step too (which must stay
    # positive); None where decay cannot amplify them (Adam's L2 term goes through the moments).
    _max_lr_decay = None

    @classmethod
    def _stable_lr(cls, lr, weight_decay):
        if cls._max_lr_decay is not None and lr * weight_decay > cls._max_lr_decay:
            raise ValueError(f"lr: lr x weight_decay = {lr * weight_decay:g} is more than "
                             f"{cls._max_lr_decay:g}, where every step of {cls.__name__} would "
                             "make the parameters grow instead of decay")
        return lr

    @property
    def clip_norm(self):
        """Global-norm clipping threshold (the rule of PyTorch's clip_grad_norm_), or None."""
        value = float(self._spec.hyper[CLIP_NORM])
        return None if value == math.inf else value

    @clip_norm.setter
    def clip_norm(self, value):
        value = _validate.positive_number("clip_norm", value, allow_none=True)
        self._spec.hyper[CLIP_NORM] = math.inf if value is None else value

    @property
    def weight_decay(self):
        return float(self._spec.hyper[WEIGHT_DECAY])

    @property
    def steps(self):
        """Updates applied so far."""
        return int(self._spec.hyper[STEPS])

    @property
    def state(self):
        """The per-parameter state, (n_buffers, n_params) in the model's dtype (a view)."""
        return self._spec.state

    def _hyper(self, name):
        """The hyper-parameter of this name of the update (KINDS' names), as a float."""
        return float(self._spec.hyper[KINDS[self._spec.kind].hyper.index(name)])

    @classmethod
    def arguments(cls):
        """The names of its constructor's arguments but model and lr_schedule: its
        hyper-parameters (what config() returns, and the command's options set)."""
        return tuple(name for name in inspect.signature(cls).parameters
                     if name not in ("model", "lr_schedule"))

    def config(self):
        """The keyword arguments that build this optimizer again (but model and schedule):
        each of arguments(), read back from the attribute of its name (lr: the lr given,
        base_lr)."""
        return {name: self.base_lr if name == "lr" else getattr(self, name)
                for name in self.arguments()}

    def __repr__(self):
        options = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({options})"

    # -- the update stage ---------------------------------------------------------------------

    def update_spec(self):
        """The compiled description of this update (the live one: steps advance it)."""
        return self._spec

    def step(self):
        """Update the parameters from ``model.grads``; returns the gradient norm before clipping.

        Raises FloatingPointError, leaving the parameters and the state untouched, if the norm
        is NaN or Inf or the update would overflow the model's dtype.
        """
        return apply_update(self.model, self._spec)

    def train_step(self, X, y, sample_weight=None):
        """``model.loss_and_grad(X, y, sample_weight)`` then ``step()``, in one compiled call.
        Returns the mean loss (weighted by sample_weight when given). (``fit`` goes one
        further: many steps per compiled call.) A sparse X (SciPy) is densified: it is one
        batch.

        Raises FloatingPointError, leaving the parameters and the state untouched, if the loss
        or the gradient norm is NaN or Inf, or the update would overflow the model's dtype.
        """
        engine = self.model.engine
        X, y = engine.check_batch(X, y)
        weights = _validate.sample_weight(sample_weight, X.shape[0])
        return train_step(self.model, self._spec, engine.dense(X), y, weights)[0]

    def set_position(self, epochs_done, samples_seen):
        """Put the schedule's position where a saved run left it (load_checkpoint does):
        epochs ended and rows seen, counts >= 0. lr is not changed."""
        self._epochs_done = _validate.non_negative_int("epochs_done", epochs_done)
        self._samples_seen = _validate.non_negative_int("samples_seen", samples_seen)

    def end_epoch(self, samples, loss):
        """Advance the schedule past an epoch of ``samples`` rows whose watched loss was
        ``loss`` (fit calls this); with a schedule, sets ``lr`` for the next epoch (replacing
        any value set by hand)."""
        samples = _validate.non_negative_int("samples", samples)
        if isinstance(loss, bool) or not isinstance(loss, numbers.Real):
            raise TypeError(f"loss: expected a number, got {type(loss).__name__}")
        self._epochs_done += 1
        self._samples_seen += samples
        if self.lr_schedule is None:
            return
        if callable(getattr(self.lr_schedule, "observe", None)):
            self.lr_schedule.observe(float(loss))
        self._set_scheduled_lr()

    def _set_scheduled_lr(self):
        # A schedule may end at 0 (a cosine's last value, after its planned epochs).
        lr = self.lr_schedule.rate(self.base_lr, self.epochs_done, self.samples_seen)
        self._spec.hyper[LR] = _validate.number_in("lr_schedule rate", lr, 0)


def _hyper_property(name, convert=float):
    """A read-only attribute: the update's hyper-parameter of this name."""
    return property(lambda self: convert(self._hyper(name)))


def _betas(betas):
    try:
        if not isinstance(betas, (tuple, list, np.ndarray)):
            raise TypeError
        beta1, beta2 = betas
    except (TypeError, ValueError):
        raise TypeError(f"betas: expected a pair (beta1, beta2), got {betas!r:.100}") from None
    return (_validate.number_in("betas[0]", beta1, 0, 1, high_open=True),
            _validate.number_in("betas[1]", beta2, 0, 1, high_open=True))


def _fits(name, value, model):
    """value, if the model's dtype can hold it (the kernels use hyper-parameters in it)."""
    if value > float(np.finfo(model.dtype).max):
        raise ValueError(f"{name}: {value:g} does not fit the model's "
                         f"{np.dtype(model.dtype).name} parameters")
    return value


def _common(model, lr, weight_decay, clip_norm):
    """The model and the arguments every optimizer takes, checked: (lr, weight_decay,
    clip_norm, inf for none)."""
    if not isinstance(model, MLP):
        raise TypeError(f"model: expected a fastbp.MLP, got {type(model).__name__}")
    lr = _validate.positive_number("lr", lr)
    weight_decay = _fits("weight_decay", _validate.number_in("weight_decay", weight_decay, 0),
                         model)
    clip_norm = _validate.positive_number("clip_norm", clip_norm, allow_none=True)
    return lr, weight_decay, math.inf if clip_norm is None else clip_norm


def _flag(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {type(value).__name__}")
    return bool(value)


def _eps(eps, model, who):
    """eps, checked: positive and a normal number of the model's dtype (who divides by it)."""
    eps = _validate.positive_number("eps", eps)
    tiny = float(np.finfo(model.dtype).tiny)
    if eps < tiny:
        raise ValueError(f"eps: {eps:g} is below the smallest normal number of the model's "
                         f"dtype ({tiny:g}); {who} divides by it")
    return eps


class SGD(Optimizer):
    """Stochastic gradient descent, with the options and arithmetic of ``torch.optim.SGD``.

    Each step: clip (when ``clip_norm`` is set and the global L2 norm of all gradients exceeds
    it, the gradients are scaled by ``clip_norm / (norm + 1e-6)``, the rule of PyTorch's
    ``clip_grad_norm_``); add ``weight_decay * params`` (L2); with ``momentum``, update the
    buffer ``b = momentum * b + (1 - dampening) * g`` (on the first step ``b = g``) and step
    along ``g + momentum * b`` (``nesterov``) or ``b``; then ``params -= lr * step``.
    ``model.grads`` is left as computed.
    """
    name = "sgd"

    _max_lr_decay = 2.0

    def __init__(self, model, lr, momentum=0.0, dampening=0.0, nesterov=False,
                 weight_decay=0.0, clip_norm=None, lr_schedule=None):
        lr, weight_decay, clip_norm = _common(model, lr, weight_decay, clip_norm)
        self._stable_lr(lr, weight_decay)
        momentum = _validate.number_in("momentum", momentum, 0, 1)
        dampening = _validate.number_in("dampening", dampening, 0, 1)
        nesterov = _flag("nesterov", nesterov)
        if nesterov and (momentum == 0 or dampening != 0):
            raise ValueError(f"nesterov: needs a momentum and no dampening (momentum "
                             f"{momentum}, dampening {dampening})")
        momentum = _fits("momentum", momentum, model)
        spec = kernels.sgd_spec(lr, clip_norm, model.dtype, momentum, dampening, nesterov,
                                weight_decay, model.n_params)
        super().__init__(model, spec, lr_schedule)

    momentum = _hyper_property("momentum")
    dampening = _hyper_property("dampening")
    nesterov = _hyper_property("nesterov", bool)


class Adam(Optimizer):
    """Adam (and AMSGrad), with the options and arithmetic of ``torch.optim.Adam``: clip as
    SGD does; add ``weight_decay * params`` to the gradient (L2); ``m += (1 - beta1) * (g - m)``;
    ``v = beta2 * v + (1 - beta2) * g * g`` (with ``amsgrad``, its running maximum is used);
    ``params -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)`` at step t."""
    name = "adam"
    _decoupled = False

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, clip_norm=None, lr_schedule=None):
        lr, weight_decay, clip_norm = _common(model, lr, weight_decay, clip_norm)
        self._stable_lr(lr, weight_decay)
        betas = _betas(betas)
        eps = _eps(eps, model, "Adam")
        amsgrad = _flag("amsgrad", amsgrad)
        spec = kernels.adam_spec(lr, clip_norm, model.dtype, model.n_params, betas, eps,
                                 weight_decay, amsgrad, self._decoupled)
        super().__init__(model, spec, lr_schedule)

    betas = property(lambda self: (self._hyper("beta1"), self._hyper("beta2")))
    eps = _hyper_property("eps")
    amsgrad = _hyper_property("amsgrad", bool)


class AdamW(Adam):
    """Adam with decoupled weight decay, as ``torch.optim.AdamW``: each step first multiplies
    the parameters by ``1 - lr * weight_decay``, and the gradient gets no L2 term."""
    name = "adamw"
    _decoupled = True
    _max_lr_decay = 1.0

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, clip_norm=None, lr_schedule=None):
        super().__init__(model, lr, betas, eps, weight_decay, amsgrad, clip_norm, lr_schedule)


class RMSprop(Optimizer):
    """RMSprop, with the options and arithmetic of ``torch.optim.RMSprop``: clip as SGD does;
    add ``weight_decay * params`` to the gradient (L2); ``s = alpha * s + (1 - alpha) * g * g``;
    with ``centered``, ``a`` moves toward ``g`` by ``1 - alpha`` (torch's lerp) and the
    denominator is ``sqrt(s - a * a) + eps``, else ``sqrt(s) + eps``; with ``momentum``,
    ``b = momentum * b + g / denominator`` and ``params -= lr * b``, else
    ``params -= lr * g / denominator``. State rows: ``s``, then ``b`` with momentum, then ``a``
    when centered. One difference: where rounding takes ``s - a * a`` below 0 (it cannot be
    in exact arithmetic; it happens after steps of near-constant gradients), torch's root
    gives NaN and fastbp's 0."""
    name = "rmsprop"

    def __init__(self, model, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, clip_norm=None, lr_schedule=None):
        lr, weight_decay, clip_norm = _common(model, lr, weight_decay, clip_norm)
        self._stable_lr(lr, weight_decay)
        alpha = _validate.number_in("alpha", alpha, 0, 1)
        eps = _eps(eps, model, "RMSprop")
        momentum = _validate.number_in("momentum", momentum, 0, 1)
        centered = _flag("centered", centered)
        spec = update_spec(RMSPROP_KIND, model.dtype, model.n_params, lr=lr,
                           clip_norm=clip_norm, weight_decay=weight_decay, alpha=alpha, eps=eps,
                           momentum=momentum, centered=float(centered))
        super().__init__(model, spec, lr_schedule)

    alpha = _hyper_property("alpha")
    eps = _hyper_property("eps")
    momentum = _hyper_property("momentum")
    centered = _hyper_property("centered", bool)


#: The optimizers by the name save() stores.
OPTIMIZERS = {cls.name: cls for cls in (SGD, Adam, AdamW, RMSprop)}


def check_update(spec, model):
    """Refuse, with a TypeError, an Update that compiled code cannot safely apply to model's
    parameters: an unknown kind, or hyper-parameters or state of the wrong type or shape (the
    kernels index them without bounds checks)."""
    if not isinstance(spec, kernels.Update) or spec.kind not in UPDATE_KINDS:
        raise TypeError(f"update: expected a fastbp.kernels.Update of a known kind "
                        f"{UPDATE_KINDS}, got {spec!r:.200}")
    hyper, state = spec.hyper, spec.state
    size = len(KINDS[spec.kind].hyper)
    if not (isinstance(hyper, np.ndarray) and hyper.dtype == np.float64 and hyper.ndim == 1
            and hyper.shape[0] >= size and hyper.flags.c_contiguous):
        raise TypeError(f"update: hyper must be a contiguous float64 array of {size} values "
                        f"for kind {spec.kind}")
    rows = state_rows(spec.kind, hyper)
    if not (isinstance(state, np.ndarray) and state.dtype == model.dtype and state.ndim == 2
            and state.shape[0] >= rows and (rows == 0 or state.shape[1] == model.n_params)
            and state.flags.c_contiguous and state.flags.writeable):
        raise TypeError(f"update: state must be a writable C-contiguous "
                        f"{np.dtype(model.dtype).name} array of shape ({rows}, "
                        f"{model.n_params}) for this update and model, got "
                        f"{getattr(state, 'dtype', type(state).__name__)} of shape "
                        f"{getattr(state, 'shape', None)}")


def apply_update(model, spec):
    """The update stage on model's current gradients, compiled: returns the gradient norm.
    Raises FloatingPointError (parameters untouched) when the step is refused."""
    check_update(spec, model)
    norm, applied = model.engine.update(spec)
    if not applied:
        raise FloatingPointError(refusal(0.0, norm, spec, model.dtype))
    return norm


def train_step(model, spec, X, y, weights=None, row_ids=None):
    """Gradients then update for checked X and y (and sample weights, float64, or None; row_ids:
    the rows' indices in their data set, keying the dropout masks, or None), in one compiled
    call: (loss, norm). Raises FloatingPointError (parameters, running statistics and the
    dropout counter untouched) when the step is refused."""
    check_update(spec, model)
    engine = model.engine
    engine.check_training_rows(X.shape[0])
    engine.remember_state()   # a refused step leaves no running statistics, no pass counted
    loss, norm, applied = engine.train_step(spec, X, y, weights, row_ids)
    if not applied:
        engine.restore_state()
        raise FloatingPointError(refusal(loss, norm, spec, model.dtype))
    return loss, norm


def refusal(loss, norm, spec, dtype):
    """Why a step was not applied (the kernels refuse NaN/Inf and overflowing updates)."""
    if not math.isfinite(loss):
        what = f"the loss is {loss}"
    elif not math.isfinite(norm):
        what = f"the gradient norm is {norm}"
    else:
        kind = KINDS[spec.kind]
        bound = "".join(f"{name} {spec.hyper[kind.hyper.index(name)]:g}, "
                        for name in kind.bound_by)
        what = (f"the update would overflow {np.dtype(dtype).name} ({bound}gradient norm "
                f"{norm:g})")
    return what + "; parameters left unchanged"
