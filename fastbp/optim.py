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

``fit`` checks the protocol, computes the gradients, runs its gradient hook if one is given,
then calls the update stage: ``step()``, or the compiled update of ``update_spec()``.
"""
import math

import numpy as np

from . import _validate, kernels
from .model import MLP


class SGD:
    """Plain SGD over ``model.params``: ``params -= lr * g``.

    When ``clip_norm`` is set and the global L2 norm of all gradients exceeds it, the step uses
    ``g * clip_norm / (norm + 1e-6)``, the rule of PyTorch's ``clip_grad_norm_``. ``model.grads``
    is left as computed. ``lr`` may be changed between steps (a schedule does).
    """

    def __init__(self, model, lr, clip_norm=None):
        if not isinstance(model, MLP):
            raise TypeError(f"model: expected a fastbp.MLP, got {type(model).__name__}")
        self.model = model
        self.lr = _validate.positive_number("lr", lr)
        self.clip_norm = _validate.positive_number("clip_norm", clip_norm, allow_none=True)
        self._spec = kernels.sgd_spec(self.lr, math.inf, model.dtype)

    def __repr__(self):
        return f"SGD(lr={self.lr}, clip_norm={self.clip_norm})"

    def update_spec(self):
        """The compiled description of this update, with the current lr and clip_norm."""
        self._spec.hyper[0] = self.lr
        self._spec.hyper[1] = math.inf if self.clip_norm is None else self.clip_norm
        return self._spec

    def step(self):
        """Update the parameters from ``model.grads``; returns the gradient norm before clipping.

        Raises FloatingPointError, leaving the parameters untouched, if the norm is NaN or Inf
        or the update would overflow the model's dtype.
        """
        return apply_update(self.model, self.update_spec())

    def train_step(self, X, y):
        """``model.loss_and_grad(X, y)`` then ``step()``, in one compiled call. Returns the
        mean loss. (``fit`` goes one further: many steps per compiled call.)

        Raises FloatingPointError, leaving the parameters untouched, if the loss or the
        gradient norm is NaN or Inf, or the update would overflow the model's dtype.
        """
        X, y = self.model._check_batch(X, y)
        return train_step(self.model, self.update_spec(), X, y)[0]


def _check_kind(spec):
    if not isinstance(spec, kernels.Update) or spec.kind not in kernels.UPDATE_KINDS:
        raise TypeError(f"update: expected a fastbp.kernels.Update of a known kind "
                        f"{kernels.UPDATE_KINDS}, got {spec!r:.200}")


def apply_update(model, spec):
    """The update stage on model's current gradients, compiled: returns the gradient norm.
    Raises FloatingPointError (parameters untouched) when the step is refused."""
    _check_kind(spec)
    work = model._work
    norm, applied = model._run(kernels.entry.update, (
        model.params, model.grads, work.layer_sq, work.partials, model._net.param_offsets,
        *spec), update_kind=spec.kind)
    model._grad_norms_fresh = not math.isnan(norm)  # the norm pass ran
    if not applied:
        raise FloatingPointError(refusal(0.0, norm, spec, model.dtype))
    return norm


def train_step(model, spec, X, y):
    """Gradients then update for checked X and y, in one compiled call: (loss, norm). Raises
    FloatingPointError (parameters untouched) when the step is refused."""
    _check_kind(spec)
    model._reserve(X.shape[0])
    loss, norm, applied = model._run(kernels.entry.train_step, (
        model.params, model.grads, *model._work, X, y, *model._net, *spec),
        update_kind=spec.kind)
    model._grad_norms_fresh = math.isfinite(loss)
    if not applied:
        raise FloatingPointError(refusal(loss, norm, spec, model.dtype))
    return loss, norm


def refusal(loss, norm, spec, dtype):
    """Why a step was not applied (the kernels refuse NaN/Inf and overflowing updates)."""
    if not math.isfinite(loss):
        what = f"the loss is {loss}"
    elif not math.isfinite(norm):
        what = f"the gradient norm is {norm}"
    else:
        what = (f"the update would overflow {np.dtype(dtype).name} (lr {spec.hyper[0]:g}, "
                f"gradient norm {norm:g})")
    return what + "; parameters left unchanged"
