"""One training step's stages, as fit runs them: the rows of a step gathered into the batch
buffers, the gradients of their objective, the update; a step of a data-parallel fit
(distributed.Ranks); and many steps in one compiled call (fit's fast path).
"""
import math

import numpy as np

from . import _validate, kernels, optim


def _train_steps(model, spec, X, y, rows, batch_size, x_batch, y_batch, step_losses,
                 step_norms, step_layer_sq, accumulate=1, micro_grads=None, weights=None,
                 w_batch=None, sparse_index=None):
    """Steps over the batches of `rows` in one compiled call (fit's fast path, for checked X
    and y, and sample weights or None). Returns the number of steps done (applied, or skipped
    for weighing 0); see kernels.mlp_train_epoch."""
    model._reserve(batch_size)
    done = model._run(kernels.entry.train_epoch, (
        model.params, model.grads, *model._work, x_batch, y_batch, step_losses, step_norms,
        step_layer_sq, _compiled_x(X), y, rows, batch_size, *model._net, *spec, accumulate,
        micro_grads, weights, w_batch), update_kind=spec.kind, weighted=weights is not None,
        sparse_index=sparse_index)
    n_batches = -(-len(rows) // (batch_size * accumulate))
    # After a divergence, layer_sq describes grads only if the failing step got as far as
    # the norm (its loss was finite).
    model._grad_norms_fresh = done == n_batches or math.isfinite(step_losses[done])
    return done


class _HookError(Exception):
    """Carries an exception of the gradient hook past the step's divergence handling."""


def _compiled_x(X):
    """A checked X as compiled code takes it: the array, or a sparse X's kernels.CSR."""
    return X.csr if isinstance(X, _validate.SparseRows) else X


class _Batches:
    """The rows of one step, gathered batch_size (x_batch's rows) at a time, with their sample
    weights (into w_batch) when there are any."""

    def __init__(self, model, X, y, rows, x_batch, y_batch, micro_grads, weights=None,
                 w_batch=None):
        self.model, self.X, self.y, self.rows = model, X, y, rows
        self.x_batch, self.y_batch, self.micro_grads = x_batch, y_batch, micro_grads
        self.weights, self.w_batch = weights, w_batch

    def one(self):
        """(x, y, weights or None) of a step of at most one batch."""
        n = self.rows.shape[0]
        xb, yb = self.x_batch[:n], self.y_batch[:n]
        if isinstance(self.X, _validate.SparseRows):   # densified into x_batch
            self.model._run(kernels.entry.take_csr_rows, (
                xb, self.X.data, self.X.indices, self.X.indptr, self.rows),
                sparse_index=self.X.indices.dtype)
        else:
            kernels.take_rows(xb, self.X, self.rows)
        np.take(self.y, self.rows, axis=0, out=yb)
        wb = None
        if self.weights is not None:
            wb = self.w_batch[:n]
            np.take(self.weights, self.rows, out=wb)
        return xb, yb, wb

    def weightless(self):
        """Whether every row of the step weighs 0 (the step is then skipped)."""
        return self.weights is not None and not self.weights[self.rows].any()


def _loss_and_grad(model, batches, penalty=True):
    """The step's objective, and its gradient in model.grads: one batch's, or, over several,
    as kernels.mlp_train_epoch accumulates them (one compiled call: the same arithmetic, and
    the L2 penalty of all the step's rows). Without penalty, the data loss alone."""
    if batches.rows.shape[0] <= batches.x_batch.shape[0]:
        return model._loss_and_grad_checked(*batches.one(), penalty=penalty)
    batch_size = batches.x_batch.shape[0]
    model._reserve(batch_size)
    model._grad_norms_fresh = False
    net = model._net if penalty else model._net._replace(l2=0.0)
    sparse = isinstance(batches.X, _validate.SparseRows)
    return model._run(kernels.entry.accumulated_loss_and_grad, (
        model.grads, batches.micro_grads, *model._work, model.params, batches.x_batch,
        batches.y_batch, _compiled_x(batches.X), batches.y, batches.rows, batch_size,
        *net, batches.weights, batches.w_batch), weighted=batches.weights is not None,
        sparse_index=batches.X.indices.dtype if sparse else None)


def _step(model, optimizer, grad_hook, compiled_update, batches):
    """One step on a step's rows: (loss, gradient norm, or None when the hook skipped the
    update or the rows all weigh 0). Raises FloatingPointError (parameters untouched) when the
    step is refused, and _HookError around whatever the hook raised."""
    if batches.weightless():   # as kernels.mlp_train_epoch: nothing to learn from
        return 0.0, None
    if grad_hook is None and compiled_update and batches.micro_grads is None:
        return optim.train_step(model, optimizer.update_spec(), *batches.one())
    loss = _loss_and_grad(model, batches)
    return loss, _hook_and_update(model, optimizer, grad_hook, loss)


def _hook_and_update(model, optimizer, grad_hook, loss):
    """The stages after the gradients, for a step of this objective: refuse a NaN or Inf loss
    (FloatingPointError, parameters untouched), run the hook (its exception wrapped in
    _HookError), update unless it said False. Returns the gradient norm, or None."""
    if not math.isfinite(loss):
        raise FloatingPointError(f"the loss is {loss}; parameters left unchanged")
    if grad_hook is not None:
        try:
            apply = grad_hook(model)
        except Exception as exc:
            raise _HookError() from exc
        if apply is False:
            return None
    return float(optimizer.step())


def _step_on_ranks(model, optimizer, grad_hook, ranks, batches, step_weight):
    """_step's data-parallel twin: batches holds this rank's rows of a step whose rows weigh
    step_weight in all (their count, or their sample weights' sum; the same on every rank).
    This rank's data gradient is scaled by its share of that weight, the ranks' are summed,
    then the L2 penalty of all the step's rows is added and the update applied, on every rank
    alike. Raises KeyboardInterrupt after the step when Ctrl-C reached some rank."""
    if step_weight == 0:   # as _step: every row of the step weighs 0
        return 0.0, None
    rows = batches.rows
    weight = rows.shape[0] if batches.weights is None else batches.weights[rows].sum()
    if weight > 0:
        share = float(weight) / step_weight
        loss_share = _loss_and_grad(model, batches, penalty=False) * share
        np.multiply(model.grads, share, out=model.grads)
    else:
        loss_share = 0.0
        model.grads.fill(0)
    model._grad_norms_fresh = False
    loss, interrupted = ranks.sum_step(model._grad_buffer, loss_share)
    if model.l2 != 0:
        net = model._net
        loss += model._run(kernels.entry.add_l2_penalty, (
            model.grads, model._work.partials, model.params, net.param_offsets, net.sizes,
            net.l2, float(step_weight)))
    norm = _hook_and_update(model, optimizer, grad_hook, loss)   # (the sum: alike everywhere)
    if interrupted:
        raise KeyboardInterrupt
    return loss, norm


def ready_step_on_ranks(model, optimizer, X, y, batch_size, accumulate=1):
    """Compile (or load from Numba's cache) what _step_on_ranks runs for this model,
    optimizer (fastbp's), checked X, y (a row or more), batch size and accumulation, changing
    no parameter and no optimizer state (the gradients are overwritten)."""
    spec = optimizer.update_spec()
    model._reserve(max(batch_size, X.shape[0]))
    work, net = model._work, model._net
    # All the units at once (the update's too): compiled side by side (kernels.prepare).
    model._ready(kernels.entry.loss_and_grad, (model.grads, *work, model.params, X, y, *net,
                                               None), update_kind=spec.kind)
    model._loss_and_grad_checked(X, y, penalty=False)
    model._ready(kernels.entry.update, (model.params, model.grads, work.layer_sq, work.partials,
                                        net.param_offsets, *spec), update_kind=spec.kind)
    if accumulate > 1:
        x_batch = kernels.aligned_zeros((batch_size, X.shape[1]), X.dtype)
        y_batch = np.empty((batch_size,) + y.shape[1:], dtype=y.dtype)
        model._ready(kernels.entry.accumulated_loss_and_grad, (
            model.grads, kernels.aligned_zeros(model.n_params, model.dtype), *work,
            model.params, x_batch, y_batch, X, y, np.arange(1), batch_size, *net, None, None))
    if model.l2 != 0:
        model._run(kernels.entry.add_l2_penalty, (model.grads, work.partials, model.params,
                                                  net.param_offsets, net.sizes, net.l2, 1.0))
