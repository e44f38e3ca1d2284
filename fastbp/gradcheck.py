"""Gradient checking: backpropagation against central finite differences."""
import numpy as np

from . import _validate, kernels
from .model import MLP


def gradcheck(model, X, y, eps=None, max_params=2000, seed=0, floor=1e-7, sample_weight=None):
    """Largest relative error between ``model.loss_and_grad`` and central differences.

    The function differentiated is the objective that ``loss_and_grad`` differentiates: the
    mean loss (any of the model's losses) plus the model's L2 penalty (both weighted by
    ``sample_weight`` when it is given). That is ``model.loss_value``, but for a model with
    batch normalisation or dropout, whose training pass differs from inference: then it is that
    training pass replayed (the batch's statistics, the same dropout masks).

    For each checked parameter the numeric derivative is the fourth-order central difference
    (-L(+2h) + 8 L(+h) - 8 L(-h) + L(-2h)) / (12 h), h = ``eps``. Its truncation error is
    O(h^4) instead of the two-point rule's O(h^2), so h can be large enough (1e-3) for rounding
    in the loss to stay near 1e-13: float64 errors of 1e-10 and below become measurable. The
    error is |analytic - numeric| / max(|analytic|, |numeric|, floor); ``floor`` is the size
    under which gradients are compared absolutely, so that zero gradients (dead ReLUs) do not
    divide noise by noise.

    Every parameter is checked when there are at most ``max_params``; otherwise a sample of that
    many, drawn with ``seed``. ``eps`` defaults to 1e-3 in float64 and 1e-2 in float32. Use
    float64 models for real checks: float32 rounding alone gives errors around 1e-3 to 1e-2.
    Keep the data away from ReLU's kink: no pre-activation within 2 * eps * |x| of zero.

    params, grads, running statistics and the dropout counter are restored exactly before
    returning.
    """
    if not isinstance(model, MLP):
        raise TypeError(f"model: expected a fastbp.MLP, got {type(model).__name__}")
    seed = _validate.seed("seed", seed)
    if eps is None:
        eps = 1e-3 if model.dtype == np.float64 else 1e-2
    eps = _validate.positive_number("eps", eps)
    max_params = _validate.positive_int("max_params", max_params)
    floor = _validate.positive_number("floor", floor)
    X, y = model.engine.check_batch(X, y)
    X = model.engine.dense(X)   # a sparse X once, not at every evaluation
    weights = _validate.sample_weight(sample_weight, X.shape[0])
    weighted = {} if weights is None else {"sample_weight": weights}
    params = model.params
    saved_params, saved_grads = params.copy(), model.grads.copy()
    engine = model.engine
    try:
        with engine.kept_state():
            return _worst_error(model, X, y, weights, weighted, eps, max_params, seed, floor)
    finally:
        params[...] = saved_params
        model.grads[...] = saved_grads


def _objective(model, X, y, weights, weighted):
    """What loss_and_grad differentiates, without its gradient (see gradcheck)."""
    engine = model.engine
    if not engine.trains_differently:
        return model.loss_value(X, y, **weighted)
    total, rows = engine.data_loss(X, y, weights, mode=kernels.REPLAY)
    loss = total / rows
    if model.l2 != 0:
        loss += engine.l2_penalty(rows)
    return loss


def _worst_error(model, X, y, weights, weighted, eps, max_params, seed, floor):
    params = model.params
    model.loss_and_grad(X, y, **weighted)
    analytic = model.grads.astype(np.float64)
    if params.size <= max_params:
        checked = np.arange(params.size)
    else:
        checked = np.sort(np.random.default_rng(seed).choice(params.size, max_params,
                                                             replace=False))
    worst = 0.0
    for i in checked:
        original = params[i]
        loss_at = []
        for step in (2 * eps, eps, -eps, -2 * eps):
            params[i] = original + step
            loss_at.append(_objective(model, X, y, weights, weighted))
        params[i] = original
        # Differences first: four equal losses (a zero gradient) then give exactly 0.
        numeric = (8 * (loss_at[1] - loss_at[2]) - (loss_at[0] - loss_at[3])) / (12 * eps)
        scale = max(abs(analytic[i]), abs(numeric), floor)
        worst = max(worst, abs(analytic[i] - numeric) / scale)
    return worst
