"""One training step's stages, as fit runs them: the rows of a step gathered into the batch
buffers, the gradients of their objective, the update; and a step of a data-parallel fit
(distributed.Ranks). Many steps in one compiled call are the engine's (Engine.train_steps).
"""
import math

import numpy as np

from . import _validate, kernels, optim


class HookError(Exception):
    """Carries an exception of the gradient hook past the step's divergence handling."""


class Batches:
    """The rows of one step of a checked X and y, gathered into buffers (an engine.StepBuffers:
    batch_size rows at a time, with their sample weights when there are any)."""

    def __init__(self, engine, X, y, rows, buffers, weights=None):
        self.engine, self.X, self.y, self.rows = engine, X, y, rows
        self.buffers, self.weights = buffers, weights

    def one(self):
        """(x, y, weights or None) of a step of at most one batch."""
        n, b = self.rows.shape[0], self.buffers
        xb, yb = b.x_batch[:n], b.y_batch[:n]
        if isinstance(self.X, _validate.SparseRows):   # densified into x_batch
            self.engine.run(kernels.entry.take_csr_rows, (
                xb, self.X.data, self.X.indices, self.X.indptr, self.rows),
                sparse_index=self.X.indices.dtype)
        else:
            kernels.take_rows(xb, self.X, self.rows)
        np.take(self.y, self.rows, axis=0, out=yb)
        wb = None
        if self.weights is not None:
            wb = b.w_batch[:n]
            np.take(self.weights, self.rows, out=wb)
        return xb, yb, wb

    def weightless(self):
        """Whether every row of the step weighs 0 (the step is then skipped)."""
        return self.weights is not None and not self.weights[self.rows].any()

    def loss_and_grad(self, penalty=True):
        """The step's objective, and its gradient in grads: one batch's, or, over several, as
        kernels.mlp_train_epoch accumulates them (one compiled call: the same arithmetic, and
        the L2 penalty of all the step's rows). Without penalty, the data loss alone."""
        b = self.buffers
        if self.rows.shape[0] <= b.x_batch.shape[0]:
            return self.engine.loss_and_grad(*self.one(), penalty=penalty, row_ids=self.rows)
        return self.engine.accumulated_loss_and_grad(
            b.micro_grads, b.x_batch, b.y_batch, self.X, self.y, self.rows, self.weights,
            b.w_batch, penalty)


def step(model, optimizer, grad_hook, compiled_update, batches):
    """One step on a step's rows: (loss, gradient norm, or None when the hook skipped the
    update or the rows all weigh 0). Raises FloatingPointError (parameters untouched) when the
    step is refused, and HookError around whatever the hook raised."""
    if batches.weightless():   # as kernels.mlp_train_epoch: nothing to learn from
        return 0.0, None
    if grad_hook is None and compiled_update and batches.buffers.micro_grads is None:
        return optim.train_step(model, optimizer.update_spec(), *batches.one(),
                                row_ids=batches.rows)
    loss = batches.loss_and_grad()
    return loss, _hook_and_update(model, optimizer, grad_hook, loss)


def _hook_and_update(model, optimizer, grad_hook, loss):
    """The stages after the gradients, for a step of this objective: refuse a NaN or Inf loss
    (FloatingPointError, parameters untouched), run the hook (its exception wrapped in
    HookError), update unless it said False. Returns the gradient norm, or None."""
    if not math.isfinite(loss):
        raise FloatingPointError(f"the loss is {loss}; parameters left unchanged")
    if grad_hook is not None:
        try:
            apply = grad_hook(model)
        except Exception as exc:
            raise HookError() from exc
        if apply is False:
            return None
    return float(optimizer.step())


def step_on_ranks(model, optimizer, grad_hook, ranks, batches, step_weight):
    """step's data-parallel twin: batches holds this rank's rows of a step whose rows weigh
    step_weight in all (their count, or their sample weights' sum; the same on every rank).
    This rank's data gradient is scaled by its share of that weight, the ranks' are summed,
    then the L2 penalty of all the step's rows is added and the update applied, on every rank
    alike. Raises KeyboardInterrupt after the step when Ctrl-C reached some rank."""
    if step_weight == 0:   # as step: every row of the step weighs 0
        return 0.0, None
    engine, rows = model.engine, batches.rows
    weight = rows.shape[0] if batches.weights is None else batches.weights[rows].sum()
    if weight > 0:
        share = float(weight) / step_weight
        loss_share = batches.loss_and_grad(penalty=False) * share
        np.multiply(engine.grads, share, out=engine.grads)
    else:
        loss_share = 0.0
        engine.grads.fill(0)
        engine.skip_pass()   # as the other ranks' passes
    engine.grads_changed()
    loss, interrupted = ranks.sum_step(engine.grad_buffer, loss_share)
    if engine.l2 != 0:
        loss += engine.add_l2_penalty(step_weight)
    norm = _hook_and_update(model, optimizer, grad_hook, loss)   # (the sum: alike everywhere)
    if engine.running.size:
        ranks.average(engine.running)
    if interrupted:
        raise KeyboardInterrupt
    return loss, norm
