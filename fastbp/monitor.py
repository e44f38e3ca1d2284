"""Gradient health: watch per-layer gradient norms during fit and say when they look wrong."""
import math
import warnings

import numpy as np

from . import _validate


class GradientHealthWarning(Warning):
    """A layer's gradient norm left its expected range (vanishing or exploding gradients)."""


class GradientMonitor:
    """A ``fit`` callback that records per-layer gradient norms and warns about them.

    Each check looks at the L2 norm of every layer's gradient (W and b together, as
    ``model.grad_norms()`` gives them: computed in the clipping pass, no extra sweep). It emits a
    :class:`GradientHealthWarning` naming the layer and the figure when a norm is below ``low``
    (vanishing), above ``high`` (exploding), or when the largest layer norm is more than
    ``ratio`` times the smallest (gradients fading or growing with depth).

    ``every="epoch"`` (the default) checks once per epoch, on the mean over the epoch's steps of
    each layer's norm, and keeps fit on its fastest path (a whole epoch per compiled call).
    ``every="step"`` checks after every step (fit then returns to Python between steps).
    ``records`` holds what was checked: (epoch, step or None, norms) tuples; ``fit`` keeps the
    per-epoch means in ``history["layer_grad_norms"]``, and with ``every="step"`` the monitor
    adds ``history["step_layer_grad_norms"]``: per epoch, a list of each step's layer norms. Each kind of problem is reported
    once per layer per epoch at most.
    """

    def __init__(self, low=1e-7, high=1e3, ratio=1e4, every="epoch"):
        self.low = _validate.positive_number("low", low)
        self.high = _validate.positive_number("high", high)
        self.ratio = _validate.positive_number("ratio", ratio)
        if self.low >= self.high:
            raise ValueError(f"low, high: expected low < high, got {low} and {high}")
        if every not in ("epoch", "step"):
            raise ValueError(f"every: expected 'epoch' or 'step', got {every!r}")
        self.every = every
        self.records = []
        self._reported = set()
        if every == "step":
            self.on_step_end = self._on_step_end

    def on_epoch_end(self, epoch, history, model):
        if self.every == "epoch":
            self.check(np.asarray(history["layer_grad_norms"][-1]), epoch, None)
        else:
            steps = [norms.tolist() for e, _, norms in self.records if e == epoch]
            history.setdefault("step_layer_grad_norms", []).append(steps)

    def _on_step_end(self, epoch, step, loss, grad_norm, model):
        self.check(model.grad_norms(), epoch, step)

    def check(self, norms, epoch, step):
        """Record one set of per-layer norms and warn about what is out of bounds."""
        self.records.append((epoch, step, norms.copy()))
        where = f"epoch {epoch + 1}" + ("" if step is None else f", step {step + 1}")
        for layer, norm in enumerate(norms):
            if not math.isfinite(norm):
                continue  # fit's divergence guard reports NaN and Inf
            if norm < self.low:
                self._warn((epoch, layer, "low"), f"layer {layer + 1} gradient norm {norm:.3g} "
                           f"is below {self.low:g} ({where}): vanishing gradients")
            elif norm > self.high:
                self._warn((epoch, layer, "high"), f"layer {layer + 1} gradient norm "
                           f"{norm:.3g} is above {self.high:g} ({where}): exploding gradients")
        finite = np.where(np.isfinite(norms), norms, np.nan)
        if np.count_nonzero(np.isfinite(finite)) > 1:
            smallest, largest = int(np.nanargmin(finite)), int(np.nanargmax(finite))
            low, high = finite[smallest], finite[largest]
            if low == 0 or high / low > self.ratio:
                spread = math.inf if low == 0 else high / low
                self._warn((epoch, None, "ratio"), f"layer gradient norms differ by a factor "
                           f"of {spread:.3g}, more than {self.ratio:g} (layer {largest + 1}: "
                           f"{high:.3g}, layer {smallest + 1}: {low:.3g}; {where})")

    def _warn(self, key, message):
        if key not in self._reported:
            self._reported.add(key)
            warnings.warn(message, GradientHealthWarning, stacklevel=3)
