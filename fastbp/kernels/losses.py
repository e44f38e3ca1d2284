"""Losses, fused with their gradient where training needs it. Each returns the mean loss over the
batch, summed in float64 in row order; per-sample losses go to a float64 array.

Softmax cross-entropy takes integer labels (B,) in [0, OC); MSE and Huber take targets (B, OC);
binary cross-entropy (a sigmoid per logit, fused into the loss) takes targets (B, OC) in [0, 1],
not checked here. The softmax's float32 exp is a polynomial that vectorises, within 1 ulp of the
correctly rounded value.

Each loss kernel first checks its arguments, by a check made from its entry in the registry
(see the end of this module): B > 0, the gradient (B, OC) as the outputs, losses (B,), and the
target by its kind (labels (B,) in [0, OC), values (B, OC)); it refuses anything else before it
writes.

Each loss is defined once, in the registry ``LOSS_KINDS`` (name -> ``LossKind``) at the end of
this module: its kernels (and their units), the targets it takes, whether it holds its own
output nonlinearity, how a model predicts with it and scores its accuracy, and its PyTorch
reference for the tests. Everything else derives from it: the network's loss stage and the
units a run compiles (network), the names MLP(loss=...) takes and its checks, predict and
predict_proba, the targets' checks, fit's accuracy, the command's --loss. Adding a loss: its
kernels and one entry (and its tests and docs).

The L2 penalty on the weights (scikit-learn's ``alpha``) is a term of the objective too:
``l2_penalty_forward_backward`` adds it, and its gradient, after a data loss's.

Sample weights are a stage after the loss too (``sample_weights_forward_backward``): it turns
the mean loss and its gradient into the weighted mean's, sum_i w_i loss_i / sum_i w_i.

Codes of the losses, as a Net carries them (plan.make_net): ``LOSS_CODES``.
"""
import math
from collections import namedtuple

import numpy as np
from numba import njit, prange, types

from . import _units
from ._checks import arguments, require, requirements
from ._config import ELEMENTWISE, INLINED, PARALLEL, SERIAL, STRICT
from ._native import float64_bits, float64_from_bits, num_threads, rows_view
from ._tiling import n_tiles, span
from .activations import sigmoid_forward
from .rows import labels_in_range
from .update import axpy, chunk_bounds, norm_partials_size, sum_of_squares

SOFTMAX_CROSS_ENTROPY = 0
MSE = 1
BINARY_CROSS_ENTROPY = 2
HUBER = 3

# Row helpers take the 2-D array and a row number: on rows as short as these (10 logits),
# indexing x[i, j] from 0 beat slicing out the row x[i] first (docs/kernels-notes.md).

@njit(**SERIAL)
def _row_max(x, i):
    top = x[i, 0]
    for j in range(1, x.shape[1]):
        if x[i, j] > top:
            top = x[i, j]
    return top


_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453


@njit(**INLINED)
def _exp_float32(x):
    """exp(x) for float32, in code LLVM can inline and vectorise (libm's expf is an opaque
    call). In float64: x = k ln2 + r with |r| <= ln2/2, e^r by its Taylor series to r^8
    (relative error below 3e-10, far under float32's half ulp), 2^k from its bit pattern; then
    rounded to float32. NaN passes through; it saturates to 0 below -120 and to inf above 100,
    where float32 has nothing left either way."""
    v = np.float64(x)
    v = v if not (v < -120.0) else -120.0  # written so that NaN is kept
    v = v if not (v > 100.0) else 100.0
    k = math.floor(v * _LOG2E + 0.5)
    k = k if k == k else 0.0  # NaN: any exponent will do, r carries the NaN
    r = v - k * _LN2
    p = 1.0 + r * (1.0 + r * (1 / 2 + r * (1 / 6 + r * (1 / 24 + r * (
        1 / 120 + r * (1 / 720 + r * (1 / 5040 + r * (1 / 40320))))))))
    return np.float32(p * float64_from_bits((np.int64(k) + 1023) << 52))


# ln 2 in two parts for the float64 reduction: the first has 32 significant bits, so k times it
# is exact for the |k| <= 1077 used here (Cody and Waite's split).
_LN2_HIGH = 6.93147180369123816490e-01
_LN2_LOW = 1.90821492927058770002e-10
_LOG_MAX = 709.782712893384   # the largest float64 whose exp is finite
_TWO_TO_MINUS_60 = 2.0 ** -60


@njit(**STRICT)
def _exp_float64(x):
    """exp(x) for float64, in code LLVM can inline and vectorise (libm's exp is an opaque call;
    docs/kernels-notes.md has the timings). x = k ln2 + r with |r| <= ln2/2 (the reduction in
    two parts), e^r by its Taylor series to r^13 (truncation below 5e-18 relative), then k added
    to its exponent bits. Results below the smallest normal number are made 2^60 larger, then
    multiplied by 2^-60, so that they round once into the subnormals (one multiplication:
    reassoc cannot reorder it). Within 1 ulp of NumPy's exp (tests/test_kernels.py). NaN
    passes through; 0 below -745.14 and inf above 709.79, as exp itself."""
    v = x if not (x < -746.0) else -746.0  # written so that NaN is kept
    v = v if not (v > 709.79) else 709.79
    k = np.floor(v * _LOG2E + 0.5)   # a float (math.floor's int64 of NaN is garbage)
    k = k if k == k else 0.0  # NaN: any exponent will do, r carries the NaN
    r = (v - k * _LN2_HIGH) - k * _LN2_LOW
    p = 1.0 + r * (1.0 + r * (1 / 2 + r * (1 / 6 + r * (1 / 24 + r * (1 / 120 + r * (
        1 / 720 + r * (1 / 5040 + r * (1 / 40320 + r * (1 / 362880 + r * (
            1 / 3628800 + r * (1 / 39916800 + r * (1 / 479001600 + r * (
                1 / 6227020800)))))))))))))
    exponent = np.int64(k)
    tiny = exponent < -1000
    exponent = exponent + 60 if tiny else exponent
    scaled = float64_from_bits(float64_bits(p) + (exponent << 52)) * (_TWO_TO_MINUS_60 if tiny
                                                                      else 1.0)
    return scaled if not (x > _LOG_MAX) else math.inf


@njit(**INLINED)
def _exp_rows(x, r0, r1):
    """x[r0:r1] := exp(x[r0:r1]), in place; as one flat loop when those rows are contiguous."""
    if x.strides[1] == x.itemsize and x.strides[0] == x.shape[1] * x.itemsize:
        _exp_inplace(rows_view(x, r0, r1))
        return
    for i in range(r0, r1):
        _exp_inplace(x[i])


@njit(**SERIAL)
def _exp_inplace(x):
    """x (N,) := exp(x)."""
    if x.itemsize == 4:
        for k in range(x.shape[0]):
            x[k] = _exp_float32(x[k])
    else:
        for k in range(x.shape[0]):
            x[k] = _exp_float64(x[k])


@njit(**INLINED)
def _shift_rows(out, x, r0, r1):
    """out[i] := x[i] - max(x[i]) for rows r0..r1-1; out may be x."""
    for i in range(r0, r1):
        top = _row_max(x, i)
        for j in range(x.shape[1]):
            out[i, j] = x[i, j] - top


@njit(**INLINED)
def _normalise_row(x, i, scale):
    """x[i] *= scale / sum(x[i]); returns the sum (float64)."""
    total = 0.0
    for j in range(x.shape[1]):
        total += x[i, j]
    inv = scale / total
    for j in range(x.shape[1]):
        x[i, j] *= inv
    return total


@njit(**INLINED)
def _softmax_ce_rows(dlogits, losses, logits, labels, scale, r0, r1):
    """Rows r0..r1-1 of the fused softmax cross-entropy (scale = 1/B). In passes over the whole
    span, not row by row, so that the exponentials run as one vectorised loop
    (docs/kernels-notes.md)."""
    for i in range(r0, r1):
        # Before dlogits, which may be logits, is written; in float64, as the log is added.
        # exp(x - max) <= 1: no overflow.
        losses[i] = np.float64(_row_max(logits, i)) - logits[i, labels[i]]
    _shift_rows(dlogits, logits, r0, r1)
    _exp_rows(dlogits, r0, r1)
    for i in range(r0, r1):
        losses[i] += math.log(_normalise_row(dlogits, i, scale))
        dlogits[i, labels[i]] -= scale


@njit(**PARALLEL)
def softmax_cross_entropy_forward_backward(dlogits, losses, logits, labels):
    """Fused softmax + cross-entropy, forward and backward in one pass over the logits.

    losses (B,) = logsumexp(logits_i) - logits_i[labels_i]; dlogits (B, OC) = (softmax(logits)
    - onehot(labels)) / B, the gradient of the mean loss. logits (B, OC); labels (B,) int64 in
    [0, OC). dlogits may be logits. Returns the mean loss.
    """
    _check_softmax_cross_entropy_forward_backward(  # noqa: F821 (made from LOSS_KINDS below)
        dlogits, losses, logits, labels)
    n_rows = logits.shape[0]
    scale = 1.0 / n_rows
    tiles = n_tiles(n_rows, 8 * logits.shape[1])
    if tiles == 1:
        _softmax_ce_rows(dlogits, losses, logits, labels, scale, 0, n_rows)
        return _mean(losses)
    for t in prange(tiles):
        r0, r1 = span(t, tiles, n_rows)
        _softmax_ce_rows(dlogits, losses, logits, labels, scale, r0, r1)
    return _mean(losses)


@njit(**SERIAL)
def softmax_cross_entropy_loss(losses, logits, labels):
    """losses (B,) as in softmax_cross_entropy_forward_backward, no gradient; returns the mean.
    (The same operations, but the sum of exponentials may be added in another order: the two
    can differ by about 1e-16 of the largest term.)"""
    _check_softmax_cross_entropy_loss(losses, logits, labels)  # noqa: F821
    for i in range(logits.shape[0]):
        top = _row_max(logits, i)
        total = 0.0
        if logits.itemsize == 4:
            for j in range(logits.shape[1]):
                total += _exp_float32(logits[i, j] - top)
        else:
            for j in range(logits.shape[1]):
                total += _exp_float64(logits[i, j] - top)
        losses[i] = (np.float64(top) - logits[i, labels[i]]) + math.log(total)
    return _mean(losses)


@njit(**SERIAL)
def softmax_forward(probs, logits):
    """probs (B, OC) = softmax of each row of logits (B, OC); probs may be logits. Refused:
    probs of another shape, logits without columns."""
    _softmax_arguments(probs, logits)
    require(probs.shape == logits.shape, "softmax_forward: probs must be (B, OC) as logits")
    require(logits.shape[1] > 0, "softmax_forward: logits must have at least one column")
    n_rows = logits.shape[0]
    _shift_rows(probs, logits, 0, n_rows)
    _exp_rows(probs, 0, n_rows)
    for i in range(n_rows):
        _normalise_row(probs, i, 1.0)


@njit(**PARALLEL)
def mse_forward_backward(dpred, losses, pred, target):
    """losses (B,) = 1/2 sum_j (pred - target)^2; dpred (B, OC) = (pred - target) / B.

    pred, target (B, OC); dpred may be pred. Returns the mean loss.
    """
    _check_mse_forward_backward(dpred, losses, pred, target)  # noqa: F821
    n_rows = pred.shape[0]
    scale = 1.0 / n_rows
    tiles = n_tiles(n_rows, 4 * pred.shape[1])
    if tiles == 1:
        _mse_rows(dpred, losses, pred, target, scale)
        return _mean(losses)
    for t in prange(tiles):
        r0, r1 = span(t, tiles, n_rows)
        _mse_rows(dpred[r0:r1], losses[r0:r1], pred[r0:r1], target[r0:r1], scale)
    return _mean(losses)


@njit(**SERIAL)
def _mse_rows(dpred, losses, pred, target, scale):
    for i in range(pred.shape[0]):
        total = 0.0
        for j in range(pred.shape[1]):
            diff = pred[i, j] - target[i, j]
            total += diff * diff
            dpred[i, j] = diff * scale
        losses[i] = 0.5 * total


@njit(**SERIAL)
def mse_loss(losses, pred, target):
    """losses (B,) as in mse_forward_backward, no gradient; returns the mean."""
    _check_mse_loss(losses, pred, target)  # noqa: F821
    for i in range(pred.shape[0]):
        total = 0.0
        for j in range(pred.shape[1]):
            diff = pred[i, j] - target[i, j]
            total += diff * diff
        losses[i] = 0.5 * total
    return _mean(losses)


#: Huber's delta: where its loss turns from quadratic to linear (PyTorch's default).
HUBER_DELTA = 1.0


@njit(**PARALLEL)
def huber_forward_backward(dpred, losses, pred, target):
    """losses (B,) = sum_j h(pred - target) with h(d) = d^2 / 2 where |d| <= delta, else
    delta (|d| - delta / 2) (delta = HUBER_DELTA: MSE near the target, linear beyond, so that
    outliers pull with a bounded force); dpred (B, OC) = clip(pred - target, -delta, delta) / B,
    the gradient of the mean loss.

    pred, target (B, OC); dpred may be pred. Each row's loss is summed in float64. Returns the
    mean loss (PyTorch's HuberLoss(reduction="sum", delta=delta)(pred, target) / B).
    """
    _check_huber_forward_backward(dpred, losses, pred, target)  # noqa: F821
    n_rows = pred.shape[0]
    scale = 1.0 / n_rows
    # Weighed as MSE's rows (a comparison and a select more per element; not measured).
    tiles = n_tiles(n_rows, 4 * pred.shape[1])
    if tiles == 1:
        _huber_rows(dpred, losses, pred, target, scale)
        return _mean(losses)
    for t in prange(tiles):
        r0, r1 = span(t, tiles, n_rows)
        _huber_rows(dpred[r0:r1], losses[r0:r1], pred[r0:r1], target[r0:r1], scale)
    return _mean(losses)


@njit(**INLINED)
def _huber_element(diff):
    """h(diff) in float64 (see huber_forward_backward). Written so that NaN gives NaN."""
    a = abs(np.float64(diff))
    if a > HUBER_DELTA:
        return HUBER_DELTA * (a - 0.5 * HUBER_DELTA)
    return 0.5 * a * a


@njit(**SERIAL)
def _huber_rows(dpred, losses, pred, target, scale):
    delta = pred.dtype.type(HUBER_DELTA)
    for i in range(pred.shape[0]):
        # The row's loss in a loop of its own, before dpred (which may be pred) is written:
        # a loop that also stores is compiled in two versions, for dpred apart from pred and
        # for dpred on it, whose sums of the row (reordered, vectorised) could differ.
        total = 0.0
        for j in range(pred.shape[1]):
            total += _huber_element(pred[i, j] - target[i, j])
        losses[i] = total
        for j in range(pred.shape[1]):
            diff = pred[i, j] - target[i, j]
            # The clipped difference; NaN, which neither comparison holds for, stays NaN.
            grad = diff
            if diff > delta:
                grad = delta
            elif diff < -delta:
                grad = -delta
            dpred[i, j] = grad * scale


@njit(**SERIAL)
def huber_loss(losses, pred, target):
    """losses (B,) as in huber_forward_backward, no gradient; returns the mean."""
    _check_huber_loss(losses, pred, target)  # noqa: F821
    for i in range(pred.shape[0]):
        total = 0.0
        for j in range(pred.shape[1]):
            total += _huber_element(pred[i, j] - target[i, j])
        losses[i] = total
    return _mean(losses)


@njit(**INLINED)
def _bce_element(z, t):
    """(loss, sigmoid(z)) in float64 for one logit z and target t: max(z, 0) - z t +
    log1p(exp(-|z|)), stable for any finite z (exp never overflows). NaN propagates."""
    z = np.float64(z)
    e = math.exp(-abs(z))
    loss = (z if z > 0.0 else 0.0) - z * t + math.log1p(e)
    # 1 / (1 + e^-z) for z >= 0, e^z / (1 + e^z) below: no overflow either way.
    prob = 1.0 / (1.0 + e) if z >= 0.0 else e / (1.0 + e)
    return loss, prob


@njit(**SERIAL)
def _bce_rows(dlogits, losses, logits, target, scale):
    for i in range(logits.shape[0]):
        total = 0.0
        for j in range(logits.shape[1]):
            t = np.float64(target[i, j])
            loss, prob = _bce_element(logits[i, j], t)  # read before dlogits (maybe logits)
            total += loss
            dlogits[i, j] = (prob - t) * scale
        losses[i] = total


@njit(**PARALLEL)
def binary_cross_entropy_forward_backward(dlogits, losses, logits, target):
    """Fused sigmoid + binary cross-entropy, forward and backward in one pass over the logits.

    losses (B,) = sum_j max(z, 0) - z t + log1p(exp(-|z|)) with z = logits[i, j], t =
    target[i, j] (the cross-entropy of sigmoid(z) against t, stable for any finite z);
    dlogits (B, OC) = (sigmoid(logits) - target) / B, the gradient of the mean loss. logits,
    target (B, OC), target in [0, 1] (not checked here); dlogits may be logits. Each element is
    computed in float64. Returns the mean loss (scikit-learn's binary_log_loss; PyTorch's
    binary_cross_entropy_with_logits(logits, target, reduction="sum") / B).
    """
    _check_binary_cross_entropy_forward_backward(  # noqa: F821
        dlogits, losses, logits, target)
    n_rows = logits.shape[0]
    scale = 1.0 / n_rows
    # An exp and a log1p per logit: weighed above mse's 4 and softmax's 8 (not measured).
    tiles = n_tiles(n_rows, 16 * logits.shape[1])
    if tiles == 1:
        _bce_rows(dlogits, losses, logits, target, scale)
        return _mean(losses)
    for t in prange(tiles):
        r0, r1 = span(t, tiles, n_rows)
        _bce_rows(dlogits[r0:r1], losses[r0:r1], logits[r0:r1], target[r0:r1], scale)
    return _mean(losses)


@njit(**SERIAL)
def binary_cross_entropy_loss(losses, logits, target):
    """losses (B,) as in binary_cross_entropy_forward_backward, no gradient; returns the
    mean."""
    _check_binary_cross_entropy_loss(losses, logits, target)  # noqa: F821
    for i in range(logits.shape[0]):
        total = 0.0
        for j in range(logits.shape[1]):
            total += _bce_element(logits[i, j], np.float64(target[i, j]))[0]
        losses[i] = total
    return _mean(losses)


@njit(**ELEMENTWISE)   # a total_weight of 0 gives NaN, not an exception
def sample_weights_forward_backward(dout, losses, weights, total_weight):
    """Sample weights, applied after a loss: the weighted mean of the per-row losses, and its
    gradient in place of the plain mean's.

    dout (B, OC) holds the gradient of the batch's mean loss, each row carrying a factor 1/B
    (as every loss here, and an output activation's backward after an unfused one, leave
    it); row i is multiplied by w_i / (total_weight / B), so that it carries w_i /
    total_weight instead.
    Returns sum_i w_i losses_i / total_weight. losses (B,) float64, the rows' unweighted
    losses; weights (B,) float64 (refused: another length), >= 0 (not checked here);
    total_weight: their sum, or, when several batches make one update (accumulation), the sum
    over all its rows (0 makes the loss NaN, 0/0, which a training step refuses). A row of
    weight 0 counts as absent: its dout row is set to 0 and its loss left out (an Inf there
    gives no NaN). dout may be empty (no gradient: sample_weights_loss); refused: rows other
    than B (or none).

    A stage of its own rather than a weight argument of each loss kernel: one small kernel
    serves every loss (and the output activations that follow the unfused ones: a row's
    factor passes through them), compiled only when weights are used, and the loss kernels
    (so every unweighted result) stay as they are. Its cost is one pass over the output's
    delta (B x OC), in weighted steps only.
    """
    _sample_weights_arguments(dout, losses, weights, total_weight)
    require(weights.shape[0] == losses.shape[0],
            "sample_weights_forward_backward: weights must have B elements, one per loss")
    require(dout.shape[0] == losses.shape[0] or dout.shape[0] == 0,
            "sample_weights_forward_backward: dout must have B rows, one per loss, or none")
    mean_weight = total_weight / losses.shape[0]
    for i in range(dout.shape[0]):
        w = weights[i]
        scale = w / mean_weight   # float64: each product is rounded once, into dout
        for j in range(dout.shape[1]):
            dout[i, j] = dout[i, j] * scale if w != 0.0 else 0.0
    return sample_weights_loss(losses, weights, total_weight)


@njit(**ELEMENTWISE)
def sample_weights_loss(losses, weights, total_weight):
    """The weighted mean of sample_weights_forward_backward, which calls this, no gradient:
    sum_i w_i losses_i / total_weight, rows of weight 0 left out, summed in float64 in row
    order. Refused: weights of another length than losses."""
    _sample_weights_loss_arguments(losses, weights, total_weight)
    require(weights.shape[0] == losses.shape[0],
            "sample_weights_loss: weights must have B elements, one per loss")
    total = 0.0
    for i in range(losses.shape[0]):
        w = weights[i]
        if w != 0.0:
            total += w * losses[i]
    return total / total_weight


@njit(**SERIAL)
def weight_sum(weights):
    """The sum of weights (B,), in float64: the total_weight of
    sample_weights_forward_backward (fastbp computes every total with this function, so that
    all its paths agree on it to the bit)."""
    _weight_sum_arguments(weights)
    total = 0.0
    for i in range(weights.shape[0]):
        total += weights[i]
    return total


@njit(**SERIAL)
def _l2_chunk(grads, partials, params, param_offsets, weight_lengths, scale, c):
    """Chunk c (of update.layer_sums_of_squares's chunks): partials[c] = the sum of squares of
    its weights (not biases), and grads += scale * params over them when grads is not empty."""
    start, stop, layer = chunk_bounds(param_offsets, c)
    stop = min(stop, param_offsets[layer] + weight_lengths[layer])
    if stop <= start:  # biases only
        partials[c] = 0.0
        return
    partials[c] = sum_of_squares(params[start:stop])
    if grads.shape[0] > 0:
        axpy(grads[start:stop], -scale, params[start:stop])  # grads += scale * params


@njit(**PARALLEL)
def l2_penalty_forward_backward(grads, partials, params, param_offsets, weight_lengths, l2,
                                n_rows):
    """The L2 penalty on the weights (not the biases) of a batch of B = n_rows rows, as
    scikit-learn's alpha: adds (l2 / B) W to each weight's gradient in grads, in place (bias
    gradients are left alone), and returns the penalty (l2 / (2 B)) sum_layers ||W||^2, to add
    to the batch's mean loss. With sample weights, B is the rows' total weight (n_rows may be
    a float).

    grads, params (P,) in the layout of param_offsets (L+1,), whose layer l has its weights in
    the first weight_lengths[l] entries of its block (weight_lengths (L,) int64; a dense
    layer's n_l * n_{l+1}: fastbp.layout.weight_lengths); grads may be empty (no gradient:
    l2_penalty_loss). partials: float64 scratch of update.norm_partials_size(param_offsets).
    Squares are summed as update.layer_sums_of_squares sums them, over fixed-size chunks (in
    parallel when there are many) added in order, so the value does not depend on the thread
    count. l2 >= 0, n_rows > 0. Refused: param_offsets reaching outside params,
    weight_lengths of another length than L, grads of another length than params (but 0),
    partials too short, l2 < 0, n_rows <= 0.
    """
    _check_l2_penalty_forward_backward(grads, partials, params, param_offsets, weight_lengths,
                                       l2, n_rows)
    n_chunks = norm_partials_size(param_offsets)
    scale = params.dtype.type(l2 / n_rows)
    if n_chunks < 2 * num_threads():
        for c in range(n_chunks):
            _l2_chunk(grads, partials, params, param_offsets, weight_lengths, scale, c)
    else:
        for c in prange(n_chunks):
            _l2_chunk(grads, partials, params, param_offsets, weight_lengths, scale, c)
    total = 0.0
    for c in range(n_chunks):
        total += partials[c]
    return 0.5 * l2 * total / n_rows


@njit(**SERIAL)
def l2_penalty_loss(partials, params, param_offsets, weight_lengths, l2, n_rows):
    """The penalty of l2_penalty_forward_backward (bitwise the same), no gradient; refused as
    it refuses."""
    _check_l2_penalty_loss(partials, params, param_offsets, weight_lengths, l2, n_rows)
    return l2_penalty_forward_backward(params[:0], partials, params, param_offsets,
                                       weight_lengths, l2, n_rows)


@njit(**SERIAL)
def _mean(x):
    total = 0.0
    for i in range(x.shape[0]):
        total += x[i]
    return total / x.shape[0]


# -- argument checks ---------------------------------------------------------------------------
# Every kernel here indexes its arrays element by element, which Numba does at any strides: no
# layout is refused (any_layout).

_softmax_arguments = arguments("softmax_forward", any_layout=True, probs="matrix",
                               logits="matrix")
_sample_weights_arguments = arguments(
    "sample_weights_forward_backward", any_layout=True, dout="matrix", losses="float64s",
    weights="float64s", total_weight="number")
_sample_weights_loss_arguments = arguments(
    "sample_weights_loss", any_layout=True, losses="float64s", weights="float64s",
    total_weight="number")
_weight_sum_arguments = arguments("weight_sum", any_layout=True, weights="vector")


def _made_check(kernel, kinds, tests, scope=()):
    """An inlined check(args) of the @njit kernel's arguments (their kinds: name -> kind, as
    _checks.arguments takes them), then a ValueError "<kernel's name>: <message>" for the first
    (test, message) of tests whose test (an expression of the arguments, in scope) fails
    (_checks.requirements, which writes each message as a constant)."""
    code = kernel.py_func.__code__
    params = ", ".join(code.co_varnames[:code.co_argcount])
    name = kernel.py_func.__name__
    guard = arguments(name, any_layout=True, **kinds)
    return requirements(name, params, [f"guard({params})", *tests], dict(scope, guard=guard))


def _l2_check(kernel, grads):
    """The check of l2_penalty_forward_backward (grads) or l2_penalty_loss (no grads)."""
    kinds = dict(grads="vector") if grads else {}
    kinds.update(partials="float64s", params="vector", param_offsets="index",
                 weight_lengths="index", l2="number", n_rows="number")
    tests = [("param_offsets.shape[0] > 0 and param_offsets[0] >= 0 and "
              "param_offsets[param_offsets.shape[0] - 1] <= params.shape[0]",
              "param_offsets (L + 1,) must run from 0 or more to at most params' length"),
             ("weight_lengths.shape[0] == param_offsets.shape[0] - 1",
              "weight_lengths must have L elements, one per layer of param_offsets"),
             ("partials.shape[0] >= norm_partials_size(param_offsets)",
              "partials must have update.norm_partials_size(param_offsets) elements"),
             ("l2 >= 0", "l2 must be >= 0"),
             ("n_rows > 0", "n_rows must be > 0")]
    if grads:
        tests.insert(0, ("grads.shape[0] == params.shape[0] or grads.shape[0] == 0",
                         "grads must be as long as params, or empty"))
    return _made_check(kernel, kinds, tests, dict(norm_partials_size=norm_partials_size))


_check_l2_penalty_forward_backward = _l2_check(l2_penalty_forward_backward, True)
_check_l2_penalty_loss = _l2_check(l2_penalty_loss, False)


# -- the registry ------------------------------------------------------------------------------

#: The kinds of target a loss takes: integer labels (B,), or float values (B, OC).
TARGETS = ("labels", "values")
#: What MLP.predict can give: the class of the largest output, 0/1 indicators of the outputs
#: above the loss's threshold, or the outputs themselves.
PREDICT_RULES = ("argmax", "indicators", "values")
#: The kinds of targets whose accuracy fit can score (see LossKind), by the kind of target.
ACCURACY_KINDS = {"labels": ("labels",), "values": ("binary", "onehot", "multilabel")}


class LossKind(namedtuple("LossKind", ["code", "name", "forward_backward", "loss", "targets",
                                       "target_range", "fused", "predict", "proba",
                                       "threshold", "accuracy", "torch"])):
    """An entry of LOSS_KINDS: one loss, and what fastbp derives from it.

    code: the Net's loss code; name: MLP(loss=...)'s name.
    forward_backward(dout, losses, output, target) -> the mean loss: each row's loss into
    losses (B,) float64, the gradient of the mean loss with respect to output (B, OC) into dout
    (which may be output). loss(losses, output, target) -> the mean: the same, no gradient.
    The network calls both through units named after them (see _units).
    targets: "labels" (integers (B,) in [0, OC)) or "values" (floats (B, OC); (B,) is taken
    when OC is 1). target_range: (low, high) that values must lie in, or None.
    fused: the nonlinearity that the loss applies to the outputs itself ("softmax",
    "sigmoid"), with which the output activation must be the identity; None: the output
    activation's gradient follows the loss's.
    predict: what MLP.predict gives, one of PREDICT_RULES ("indicators": int64 0/1 of
    output > threshold). proba: the kernel proba(probs, outputs) (probs may be outputs) of
    MLP.predict_proba, or None: no probabilities.
    threshold: the output value above which an output reads as 1 (for "indicators", and for
    the accuracy of 0/1 targets), or None.
    accuracy: the kinds of targets (ACCURACY_KINDS) whose accuracy fit scores: "labels",
    "binary" (one output, 0/1 targets), "onehot" (the largest output against the one 1),
    "multilabel" (0/1 targets, a row right when all its outputs are).
    torch: its PyTorch reference, for the tests (PyTorch is never imported here): (name of a
    torch.nn.functional loss, keyword arguments, scale); a row's loss is scale times the sum
    over its outputs of name(output, target, reduction="none", **kwargs) (for labels, that
    call gives one value a row already).
    """
    __slots__ = ()

    @property
    def units(self):
        """The names of its two units (see _units): its kernels'."""
        return self.forward_backward.py_func.__name__, self.loss.py_func.__name__

    def predictions(self, out):
        """What MLP.predict gives for the outputs out (N, OC)."""
        if self.predict == "argmax":
            return out.argmax(axis=1)
        if self.predict == "indicators":
            return (out > self.threshold).astype(np.int64)
        if self.predict == "values":
            return out
        raise ValueError(f"loss {self.name!r}: no predict rule {self.predict!r}")


def _check_name(kernel):
    """The name of the argument check that a loss kernel calls first (made below)."""
    return f"_check_{kernel.py_func.__name__}"


def check_kind(kind):
    """Raise ValueError if an entry misses a rule that another of its fields needs, or names
    one that does not exist: a loss is refused where it is declared, not taken for another
    where it is used."""
    problems = []
    if kind.targets not in TARGETS:
        problems.append(f"targets {kind.targets!r} is not one of {TARGETS}")
    if kind.predict not in PREDICT_RULES:
        problems.append(f"predict {kind.predict!r} is not one of {PREDICT_RULES}")
    if kind.predict == "argmax" and kind.targets != "labels":
        problems.append("predict 'argmax' gives labels, and its targets are not labels")
    scorable = ACCURACY_KINDS.get(kind.targets, ())
    wrong = [a for a in kind.accuracy if a not in scorable]
    if wrong:
        problems.append(f"accuracy {wrong} cannot be scored on {kind.targets} targets "
                        f"(those: {scorable})")
    needs_threshold = kind.predict == "indicators" or any(
        a in kind.accuracy for a in ("binary", "multilabel"))
    if needs_threshold and kind.threshold is None:
        problems.append("no threshold, which its predict or accuracy rule reads")
    if kind.target_range is not None and kind.targets != "values":
        problems.append("a target_range applies to values only")
    if kind.fused is not None and not isinstance(kind.fused, str):
        problems.append("fused must name the nonlinearity, or be None")
    if kind.torch is None or len(kind.torch) != 3:
        problems.append("no PyTorch reference (name, keyword arguments, scale)")
    for field in ("forward_backward", "loss"):
        kernel = getattr(kind, field)
        if not hasattr(kernel, "py_func"):
            problems.append(f"{field} is not an @njit kernel")
        elif _check_name(kernel) not in kernel.py_func.__code__.co_names:
            problems.append(f"{field} does not call its argument check, {_check_name(kernel)}")
    if problems:
        raise ValueError(f"loss {kind.name!r}: " + "; ".join(problems))


#: The registry of losses, by name (MLP(loss=...)).
LOSS_KINDS = {kind.name: kind for kind in (
    LossKind(SOFTMAX_CROSS_ENTROPY, "softmax_cross_entropy",
             softmax_cross_entropy_forward_backward, softmax_cross_entropy_loss,
             "labels", None, "softmax", "argmax", softmax_forward, None, ("labels",),
             ("cross_entropy", {}, 1.0)),
    LossKind(MSE, "mse", mse_forward_backward, mse_loss, "values", None, None, "values", None,
             0.5, ("binary", "onehot"), ("mse_loss", {}, 0.5)),
    # Its outputs are logits: above 0, a probability above 1/2.
    LossKind(BINARY_CROSS_ENTROPY, "binary_cross_entropy",
             binary_cross_entropy_forward_backward, binary_cross_entropy_loss, "values",
             (0.0, 1.0), "sigmoid", "indicators", sigmoid_forward, 0.0,
             ("binary", "onehot", "multilabel"),
             ("binary_cross_entropy_with_logits", {}, 1.0)),
    LossKind(HUBER, "huber", huber_forward_backward, huber_loss, "values", None, None, "values",
             None, 0.5, ("binary", "onehot"), ("huber_loss", {"delta": HUBER_DELTA}, 1.0)),
)}
for _kind in LOSS_KINDS.values():
    check_kind(_kind)

# Each loss kernel's argument check, made from its entry and named _check_<kernel>, which the
# kernel calls before anything else (check_kind refuses a kernel that does not call it). Its
# tests, in the kernel's argument names: B > 0, the gradient (if any) as the outputs, losses
# one per row, and the target by its kind.
_TARGET_CHECKS = {
    "labels": ("labels", lambda t, out: [
        (f"{t}.shape[0] == {out}.shape[0]", f"{t} must have B elements, one per row of {out}"),
        (f"labels_in_range({t}, {out}.shape[1])",   # one pass, before anything is written
         f"{t} must be in [0, OC), OC the columns of {out}")]),
    "values": ("matrix", lambda t, out: [
        (f"{t}.shape == {out}.shape", f"{t} must be (B, OC) as {out}")]),
}
assert set(_TARGET_CHECKS) == set(TARGETS)


def _loss_check(kernel, targets):
    """The check of a loss kernel of (dout,) losses, output, target for targets."""
    code = kernel.py_func.__code__
    *grad, losses, output, target = code.co_varnames[:code.co_argcount]
    target_kind, target_tests = _TARGET_CHECKS[targets]
    kinds = {**dict.fromkeys(grad, "matrix"), losses: "float64s", output: "matrix",
             target: target_kind}
    tests = [(f"{output}.shape[0] > 0", f"{output} must have at least one row (B > 0)"),
             *[(f"{g}.shape == {output}.shape", f"{g} must be (B, OC) as {output}")
               for g in grad],
             (f"{losses}.shape[0] == {output}.shape[0]",
              f"{losses} must have B elements, one per row of {output}"),
             *target_tests(target, output)]
    return _made_check(kernel, kinds, tests, dict(labels_in_range=labels_in_range))


for _kind in LOSS_KINDS.values():
    for _kernel in (_kind.forward_backward, _kind.loss):
        globals()[_check_name(_kernel)] = _loss_check(_kernel, _kind.targets)

#: The losses by name, as MLP(loss=...) takes them, and their codes.
LOSS_CODES = {name: kind.code for name, kind in LOSS_KINDS.items()}
#: The loss that a Net made without one (plan.make_net's loss=None, code -1) takes, by the
#: kind of its targets; any code not in the table takes it too.
DEFAULT_LOSS = {"labels": "softmax_cross_entropy", "values": "mse"}


# The units of this module's kernels (see _units), with the types the network calls them with,
# and their compile times in seconds (see _units._COST): those not measured are guessed from
# the kernels they resemble.
_M = {dt: types.Array(dt, 2, "C") for dt in _units.DTYPES}   # matrices
_V = {dt: types.Array(dt, 1, "C") for dt in _units.DTYPES}   # vectors
_LOSSES = types.Array(types.float64, 1, "C")
_INTS = types.Array(types.int64, 1, "C")                      # labels, offsets, sizes
_TARGET_TYPES = {"labels": lambda dt: _INTS, "values": lambda dt: _M[dt]}
_COMPILE_COST = {"softmax_cross_entropy_forward_backward": 3.0,
                 "softmax_cross_entropy_loss": 0.6, "mse_forward_backward": 1.5,
                 "mse_loss": 0.5, "binary_cross_entropy_forward_backward": 1.5,
                 "binary_cross_entropy_loss": 0.5, "l2_penalty_forward_backward": 1.5,
                 "huber_forward_backward": 1.5, "huber_loss": 0.5}


def _register_units(kind):
    target = _TARGET_TYPES[kind.targets]
    forward_backward, loss = kind.units
    _units.register(forward_backward, kind.forward_backward,
                    lambda dt: (_M[dt], _LOSSES, _M[dt], target(dt)), types.float64,
                    cost=_COMPILE_COST.get(forward_backward))
    _units.register(loss, kind.loss, lambda dt: (_LOSSES, _M[dt], target(dt)), types.float64,
                    cost=_COMPILE_COST.get(loss))


for _kind in LOSS_KINDS.values():
    _register_units(_kind)
# n_rows is a float: the rows' count, or their total weight.
l2_penalty_unit = _units.unit(
    "l2_penalty_forward_backward", l2_penalty_forward_backward,
    lambda dt: (_V[dt], _LOSSES, _V[dt], _INTS, _INTS, types.float64, types.float64),
    types.float64, cost=_COMPILE_COST["l2_penalty_forward_backward"])
sample_weights_unit = _units.unit(
    "sample_weights_forward_backward", sample_weights_forward_backward,
    lambda dt: (_M[dt], _LOSSES, _LOSSES, types.float64), types.float64)
