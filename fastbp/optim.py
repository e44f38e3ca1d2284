"""Stochastic gradient descent with global-norm clipping, updating the parameters in place."""
import math

import numpy as np

from . import _validate, kernels
from ._threads import pin_kernel_blas
from .model import MLP


class SGD:
    """Plain SGD over ``model.params``: ``params -= lr * g``.

    When ``clip_norm`` is set and the global L2 norm of all gradients exceeds it, the step uses
    ``g * clip_norm / (norm + 1e-6)``, the rule of PyTorch's ``clip_grad_norm_``. ``model.grads``
    is left as computed.
    """

    def __init__(self, model, lr, clip_norm=None):
        if not isinstance(model, MLP):
            raise TypeError(f"model: expected a fastbp.MLP, got {type(model).__name__}")
        self.model = model
        self.lr = _validate.positive_number("lr", lr)
        self.clip_norm = _validate.positive_number("clip_norm", clip_norm, allow_none=True)

    def __repr__(self):
        return f"SGD(lr={self.lr}, clip_norm={self.clip_norm})"

    @property
    def _clip(self):
        return math.inf if self.clip_norm is None else self.clip_norm

    def step(self):
        """Update the parameters from ``model.grads``; returns the gradient norm before clipping.

        Raises FloatingPointError, leaving the parameters untouched, if the norm is NaN or Inf
        or the update would overflow the model's dtype.
        """
        m = self.model
        norm, applied = kernels.clip_sgd_update(m.params, m._work.layer_sq, m._work.partials,
                                                m.grads, m._net.param_offsets, self.lr,
                                                self._clip)
        m._grad_norms_fresh = True
        if not applied:
            raise FloatingPointError(_refusal(0.0, norm, self.lr, m.dtype))
        return norm

    def train_step(self, X, y):
        """``model.loss_and_grad(X, y)`` then ``step()``, in one compiled call. Returns the
        mean loss. (``fit`` goes one further: a whole epoch per compiled call.)

        Raises FloatingPointError, leaving the parameters untouched, if the loss or the
        gradient norm is NaN or Inf, or the update would overflow the model's dtype.
        """
        m = self.model
        X, y = m._check_batch(X, y)
        return self._train_step_checked(X, y)[0]

    def _train_step_checked(self, X, y):
        m = self.model
        m._reserve(X.shape[0])
        pin_kernel_blas()
        loss, norm, applied = kernels._from_python_train_step(
            m.params, m.grads, *m._work, X, y, *m._net, self.lr, self._clip)
        m._grad_norms_fresh = math.isfinite(loss)
        if not applied:
            raise FloatingPointError(_refusal(loss, norm, self.lr, m.dtype))
        return loss, norm

    def _train_epoch(self, X, y, order, batch_size, x_batch, y_batch, step_losses, step_norms,
                     step_layer_sq):
        """One epoch in one compiled call (fit's fast path, for checked X and y). Returns the
        number of steps applied; see kernels.mlp_train_epoch."""
        m = self.model
        m._reserve(batch_size)
        pin_kernel_blas()
        done = kernels._from_python_train_epoch(
            m.params, m.grads, *m._work, x_batch, y_batch, step_losses, step_norms, step_layer_sq,
            X, y, order, batch_size, *m._net, self.lr, self._clip)
        n_batches = -(-len(order) // batch_size)
        # After a divergence, layer_sq describes grads only if the failing step got as far as
        # the norm (its loss was finite).
        m._grad_norms_fresh = done == n_batches or math.isfinite(step_losses[done])
        return done


def _refusal(loss, norm, lr, dtype):
    """Why a step was not applied (the kernels refuse NaN/Inf and overflowing updates)."""
    if not math.isfinite(loss):
        what = f"the loss is {loss}"
    elif not math.isfinite(norm):
        what = f"the gradient norm is {norm}"
    else:
        what = (f"the update would overflow {np.dtype(dtype).name} (lr {lr:g}, gradient norm "
                f"{norm:g})")
    return what + "; parameters left unchanged"
