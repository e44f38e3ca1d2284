"""fit: the training loop over epochs and shuffled mini-batches."""
import time

import numpy as np

from . import _validate, kernels
from ._threads import pin_kernel_blas
from .model import MLP
from .optim import SGD


class DivergenceError(FloatingPointError):
    """Training produced a NaN or Inf loss or gradient norm; the parameters keep the last
    finite values (the failing step is not applied)."""


def fit(model, X, y, optimizer, epochs, batch_size, shuffle=True, seed=None):
    """Train ``model`` on (X, y) with ``optimizer`` for ``epochs`` passes of mini-batches.

    X and y are checked and converted once (see the README on conversions). Each epoch visits
    every sample once, in a fresh random order when ``shuffle`` (reproducible from ``seed``);
    the last batch of an epoch may be smaller. Batches are gathered into one preallocated
    buffer, and each step is a single compiled call (``optimizer.train_step``).

    Returns a dict of per-epoch lists: "loss" (mean training loss over the epoch's samples, as
    seen during the epoch), "grad_norm" (mean global gradient norm before clipping),
    "samples_per_s" and "seconds".

    Raises DivergenceError (a FloatingPointError) naming the epoch and step if the loss or the
    gradient norm becomes NaN or Inf; the parameters keep their last finite values.
    """
    if not isinstance(model, MLP):
        raise TypeError(f"model: expected a fastbp.MLP, got {type(model).__name__}")
    if not isinstance(optimizer, SGD):
        raise TypeError(f"optimizer: expected a fastbp.SGD, got {type(optimizer).__name__}")
    if optimizer.model is not model:
        raise ValueError("optimizer: it was built for another model")
    epochs = _validate.positive_int("epochs", epochs)
    batch_size = _validate.positive_int("batch_size", batch_size)
    X, y = model._check_batch(X, y)
    n_samples = X.shape[0]
    batch_size = min(batch_size, n_samples)
    rng = np.random.default_rng(seed)
    x_batch = np.empty((batch_size, X.shape[1]), dtype=X.dtype)
    y_batch = np.empty((batch_size,) + y.shape[1:], dtype=y.dtype)
    pin_kernel_blas()

    history = {"loss": [], "grad_norm": [], "samples_per_s": [], "seconds": []}
    for epoch in range(epochs):
        start_time = time.perf_counter()
        order = rng.permutation(n_samples) if shuffle else np.arange(n_samples)
        loss_sum = norm_sum = 0.0
        n_steps = 0
        for start in range(0, n_samples, batch_size):
            index = order[start:start + batch_size]
            n = index.shape[0]
            xb, yb = x_batch[:n], y_batch[:n]
            kernels.take_rows(xb, X, index)
            np.take(y, index, axis=0, out=yb)
            try:
                loss, norm = optimizer._train_step_checked(xb, yb)
            except FloatingPointError as exc:
                raise DivergenceError(f"training diverged at epoch {epoch + 1}, step "
                                      f"{n_steps + 1}: {exc}") from None
            loss_sum += loss * n
            norm_sum += norm
            n_steps += 1
        seconds = time.perf_counter() - start_time
        history["loss"].append(loss_sum / n_samples)
        history["grad_norm"].append(norm_sum / n_steps)
        history["samples_per_s"].append(n_samples / seconds)
        history["seconds"].append(seconds)
    return history
