"""fastbp.sklearn's conversions: data into the network's dtype, a fitted network rebuilt in
another dtype or activation (and its optimizer moved onto it), and L-BFGS's objective over a
sparse X in chunks."""
import numpy as np

from .engine import StepBuffers
from .kernels.update import STEPS
from .model import MLP
from .steps import Batches
from ._sklearn_params import NON_FINITE

def in_dtype(X, target, dtype):
    """X and float targets in the network's dtype. Values beyond a float32 network's range
    (float64 data) are refused in scikit-learn's words: the weights could not stay finite."""
    narrowed = [name for name, array in (("X", X), ("y", target))
                if array.dtype.kind == "f" and array.dtype.itemsize > np.dtype(dtype).itemsize]
    with np.errstate(over="ignore"):
        X = X.astype(dtype) if hasattr(X, "tocsr") else np.ascontiguousarray(X, dtype=dtype)
        if target.dtype.kind == "f":
            target = np.ascontiguousarray(target, dtype=dtype)
    for name, array in (("X", X.data if hasattr(X, "tocsr") else X), ("y", target)):
        if name in narrowed and not np.isfinite(array).all():
            raise ValueError(f"{NON_FINITE} (fastbp: {name} has values beyond the range of "
                             f"{np.dtype(dtype).name}, the network's dtype)")
    return X, target


def rebuilt(model, activation, dtype):
    """A network as model (layers, loss, penalty, normalisations, dropout and its masks' key)
    but of this hidden activation and dtype, with model's weights, running statistics and
    training passes."""
    with np.errstate(over="ignore", invalid="ignore"):
        params = model.params.astype(dtype)
    if (np.isfinite(model.params) & ~np.isfinite(params)).any():
        raise ValueError(f"dtype: the fitted weights do not fit {np.dtype(dtype).name}")
    new = MLP(model.sizes, activation=activation, loss=model.loss, dtype=dtype, seed=0,
              l2=model.l2, norm=model.norm, residual=model.residual, dropout=model.dropout,
              matmul_precision=model.matmul_precision)
    new.params[...] = params   # (written: a diverged network's NaN stays, as scikit-learn's)
    new.engine.running[...] = model.engine.running
    new.engine.counter[...] = model.engine.counter
    return new


def moved_optimizer(old, model):
    """old, the same optimizer (settings, state, step count, current rate), for a rebuilt
    model: partial_fit goes on with it, as scikit-learn's keeps its optimizer."""
    new = type(old)(model, **old.config())
    with np.errstate(over="ignore"):
        new.state[...] = old.state
    new.update_spec().hyper[STEPS] = old.steps
    new.lr = old.lr
    return new


# Rows per evaluation chunk of L-BFGS over a sparse X.
LBFGS_CHUNK = 4096


def chunked(model, X, target, weights):
    """The full-batch objective and gradient of a sparse X (checked), computed LBFGS_CHUNK
    rows at a time in one compiled call: a function of no arguments, for the current params."""
    chunk = min(LBFGS_CHUNK, X.shape[0])
    buffers = StepBuffers(model.engine, X, target, chunk, weighted=weights is not None,
                          accumulates=True)
    return Batches(model.engine, X, target, np.arange(X.shape[0]), buffers,
                   weights).loss_and_grad
