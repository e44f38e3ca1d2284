"""The loss kernels refuse what they cannot survive, from Python and from @njit code (see
refusals.py), leaving their outputs as they were. The cases of each loss follow from its entry
in LOSS_KINDS (its kernels' names and arguments, its kind of target), as its checks do."""
import inspect

import numpy as np
import pytest

from fastbp import kernels
from fastbp.kernels import losses
from refusals import run_refusals

SETUP = """
f32 = np.float32
out = np.linspace(-2, 2, 12).reshape(4, 3); grad = np.zeros_like(out); losses = np.zeros(4)
labels = np.array([0, 2, 1, 2]); values = np.linspace(0, 1, 12).reshape(4, 3)
weights = np.ones(4); dout = np.ones((4, 3))
sizes = np.array([3, 4, 2]); offsets = np.array([0, 16, 26]); lengths = np.array([12, 8])
params = np.ones(26); grads = np.zeros(26); partials = np.zeros(k.norm_partials_size(offsets))
"""


def _loss_cases(kind):
    """The refusals of one loss's two kernels, in their own argument names."""
    forward_backward, loss = kind.forward_backward.py_func, kind.loss.py_func
    d, _, output, target = inspect.signature(forward_backward).parameters
    fb, only = forward_backward.__name__, loss.__name__
    target_ok = "labels" if kind.targets == "labels" else "values"
    cases = [
        (f"{fb} no rows", fb, f"grad[:0], losses[:0], out[:0], {target_ok}[:0]", "ValueError",
         f"{fb}: {output} must have at least one row"),
        (f"{fb} gradient", fb, f"grad[:, :2], losses, out, {target_ok}", "ValueError",
         f"{fb}: {d} must be (B, OC) as {output}"),
        (f"{fb} losses", fb, f"grad, losses[:3], out, {target_ok}", "ValueError",
         f"{fb}: losses must have B elements, one per row of {output}"),
        (f"{fb} losses longer", fb, f"grad, np.zeros(5), out, {target_ok}", "ValueError",
         f"{fb}: losses must have B elements"),
        (f"{fb} dtypes", fb, f"grad.astype(f32), losses, out, {target_ok}", "TypeError",
         f"but {d} is float32; the arrays of one call must share one dtype"),
        (f"{fb} float32 losses", fb, f"grad, losses.astype(f32), out, {target_ok}",
         "TypeError", f"{fb}: losses must be a 1-D float64 array"),
        (f"{only} losses", only, f"losses[:2], out, {target_ok}", "ValueError",
         f"{only}: losses must have B elements"),
    ]
    if kind.targets == "labels":
        bad = [("labels too high", "labels + 1", "must be in [0, OC)"),
               ("negative label", "labels - 1", "must be in [0, OC)"),
               ("labels short", "labels[:3]", "must have B elements, one per row"),
               ("labels as floats", "labels.astype(float)", "must be a 1-D int64 array")]
    else:
        bad = [("target narrow", "values[:, :2]", f"must be (B, OC) as {output}"),
               ("target short", "values[:3]", f"must be (B, OC) as {output}"),
               ("target 1-D", "values[:, 0]", "must be a 2-D float32 or float64 array")]
    for label, expr, text in bad:
        error = "TypeError" if "array" in text else "ValueError"
        cases += [(f"{fb} {label}", fb, f"grad, losses, out, {expr}", error,
                   f"{fb}: {target} {text}"),
                  (f"{only} {label}", only, f"losses, out, {expr}", error,
                   f"{only}: {target} {text}")]
    return cases


CASES = [case for kind in kernels.LOSS_KINDS.values() for case in _loss_cases(kind)] + [
    # label, kernel, arguments, exception, text
    ("softmax probs", "softmax_forward", "grad[1:], out", "ValueError",
     "softmax_forward: probs must be (B, OC) as logits"),
    ("softmax no columns", "softmax_forward", "grad[:, :0], out[:, :0]", "ValueError",
     "softmax_forward: logits must have at least one column"),
    ("softmax dtypes", "softmax_forward", "grad, out.astype(f32)", "TypeError",
     "softmax_forward: logits is float32 but probs is float64"),
    ("weights length", "sample_weights_forward_backward", "dout, losses, weights[:3], 4.0",
     "ValueError", "sample_weights_forward_backward: weights must have B elements"),
    ("weighted dout rows", "sample_weights_forward_backward", "dout[:3], losses, weights, 4.0",
     "ValueError", "sample_weights_forward_backward: dout must have B rows"),
    ("weights dtype", "sample_weights_forward_backward",
     "dout, losses, weights.astype(f32), 4.0", "TypeError",
     "sample_weights_forward_backward: weights must be a 1-D float64 array"),
    ("weighted loss", "sample_weights_loss", "losses, weights[:2], 4.0", "ValueError",
     "sample_weights_loss: weights must have B elements"),
    ("weight_sum 2-D", "weight_sum", "dout", "TypeError",
     "weight_sum: weights must be a 1-D float32 or float64 array"),
    ("l2 grads", "l2_penalty_forward_backward",
     "grads[:5], partials, params, offsets, lengths, 0.1, 4", "ValueError",
     "l2_penalty_forward_backward: grads must be as long as params, or empty"),
    ("l2 offsets past params", "l2_penalty_forward_backward",
     "grads[:20], partials, params[:20], offsets, lengths, 0.1, 4", "ValueError",
     "l2_penalty_forward_backward: param_offsets (L + 1,) must run from 0"),
    ("l2 negative offset", "l2_penalty_forward_backward",
     "grads, partials, params, offsets - 1, lengths, 0.1, 4", "ValueError",
     "l2_penalty_forward_backward: param_offsets (L + 1,) must run from 0"),
    ("l2 no offsets", "l2_penalty_forward_backward",
     "grads, partials, params, offsets[:0], lengths[:0], 0.1, 4", "ValueError",
     "l2_penalty_forward_backward: param_offsets (L + 1,) must run from 0"),
    ("l2 weight_lengths", "l2_penalty_forward_backward",
     "grads, partials, params, offsets, lengths[:1], 0.1, 4", "ValueError",
     "l2_penalty_forward_backward: weight_lengths must have L elements"),
    ("l2 partials", "l2_penalty_forward_backward",
     "grads, partials[:0], params, offsets, lengths, 0.1, 4", "ValueError",
     "l2_penalty_forward_backward: partials must have update.norm_partials_size"),
    ("l2 negative", "l2_penalty_forward_backward",
     "grads, partials, params, offsets, lengths, -0.1, 4", "ValueError",
     "l2_penalty_forward_backward: l2 must be >= 0"),
    ("l2 no rows", "l2_penalty_forward_backward",
     "grads, partials, params, offsets, lengths, 0.1, 0", "ValueError",
     "l2_penalty_forward_backward: n_rows must be > 0"),
    ("l2 int32 offsets", "l2_penalty_forward_backward",
     "grads, partials, params, offsets.astype(np.int32), lengths, 0.1, 4", "TypeError",
     "l2_penalty_forward_backward: param_offsets must be a 1-D int64 array"),
    ("l2 loss offsets", "l2_penalty_loss", "partials, params[:20], offsets, lengths, 0.1, 4",
     "ValueError", "l2_penalty_loss: param_offsets (L + 1,) must run from 0"),
    ("l2 loss partials", "l2_penalty_loss", "partials[:0], params, offsets, lengths, 0.1, 4",
     "ValueError", "l2_penalty_loss: partials must have"),
    ("l2 loss no rows", "l2_penalty_loss", "partials, params, offsets, lengths, 0.1, 0.0",
     "ValueError", "l2_penalty_loss: n_rows must be > 0"),
]


def test_loss_kernels_refuse_bad_arguments():
    assert run_refusals(SETUP, CASES) == []


def test_an_entry_whose_kernel_skips_its_checks_is_refused():
    """check_kind refuses an entry whose kernel does not call the check made from it."""
    bce = kernels.LOSS_KINDS["binary_cross_entropy"]
    with pytest.raises(ValueError, match="loss does not call its argument check, "
                                         "_check_softmax_forward"):
        losses.check_kind(bce._replace(loss=kernels.softmax_forward))


def test_loss_kernels_take_any_layout(rng):
    """Reversed rows, strided and Fortran-ordered arrays are refused nowhere, and give the values
    of the same call on contiguous copies (to rounding: the loops vectorise otherwise)."""
    out = rng.normal(size=(6, 4))
    for kind in kernels.LOSS_KINDS.values():
        target = (rng.integers(0, 4, 12)[::2] if kind.targets == "labels"
                  else np.asfortranarray(rng.random((6, 4))))
        grad, row_losses = np.empty((4, 6)).T, np.empty(12)[::2]
        mean = kind.forward_backward(grad, row_losses, out[::-1], target)
        dense_grad, dense_losses = np.empty((6, 4)), np.empty(6)
        dense_mean = kind.forward_backward(dense_grad, dense_losses,
                                           np.ascontiguousarray(out[::-1]),
                                           np.ascontiguousarray(target))
        assert mean == pytest.approx(dense_mean, rel=1e-14)
        np.testing.assert_allclose(grad, dense_grad, rtol=1e-14, atol=1e-17)
        np.testing.assert_allclose(row_losses, dense_losses, rtol=1e-14)
