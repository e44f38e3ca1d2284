"""fastbp.sklearn's parameters: scikit-learn's activation names and constraints, fastbp's own,
and the checks of what a constraint cannot say (one value per hidden layer)."""
from numbers import Integral, Real

import numpy as np
from sklearn import neural_network
from sklearn.utils._param_validation import (Interval, InvalidParameterError, Options,
                                             StrOptions)

from .model import MATMUL_PRECISIONS, NORMS

# scikit-learn's activation names, and the fastbp activation of each ("logistic" is fastbp's
# "sigmoid"); fastbp's other activations are accepted under their own names.
ACTIVATIONS = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu",
               "leaky_relu": "leaky_relu", "gelu": "gelu"}
# The hidden activations scikit-learn's MLPs have (its MLPs' "activation" options).
SKLEARN_ACTIVATIONS = ("identity", "logistic", "tanh", "relu")
# scikit-learn's words when a fit leaves non-finite weights (fastbp's detail may follow them).
NON_FINITE = ("Solver produced non-finite parameter weights. The input data may contain "
              "large values and need to be preprocessed.")


# Parameter checks (at fit, scikit-learn's convention)

# scikit-learn's own constraints for its parameters (its InvalidParameterError, its messages),
# and fastbp's for its own, checked by BaseEstimator._validate_params as scikit-learn's
# estimators check theirs. What a constraint cannot say (a list of one value per hidden layer,
# settings that exclude each other) is checked by _check_params after it.
PARAMETER_CONSTRAINTS = {
    **neural_network.MLPClassifier._parameter_constraints,
    "activation": [StrOptions(set(ACTIVATIONS))],
    "dtype": [None, StrOptions({"float32", "float64"}), Options(type, {np.float32, np.float64}),
              Options(np.dtype, {np.dtype(np.float32), np.dtype(np.float64)})],
    "clip_norm": [None, Interval(Real, 0, None, closed="neither")],
    "n_threads": [None, Interval(Integral, 1, None, closed="left")],
    "norm": [None, StrOptions(set(NORMS)), list, tuple],
    "residual": ["boolean"],
    "dropout": [Interval(Real, 0, 1, closed="left"), list, tuple],
    "matmul_precision": [StrOptions(set(MATMUL_PRECISIONS))],
}


def hidden_sizes(value):
    """hidden_layer_sizes as a list of ints (its type checked by the constraints), refused as
    scikit-learn refuses sizes below 1."""
    sizes = list(value) if np.iterable(value) and not isinstance(value, str) else [value]
    if any(not isinstance(size, Integral) or isinstance(size, bool) for size in sizes):
        raise ValueError(f"hidden_layer_sizes must be integers, got {sizes}.")
    if any(size <= 0 for size in sizes):
        raise ValueError(f"hidden_layer_sizes must be > 0, got {sizes}.")
    return [int(s) for s in sizes]


def per_hidden(estimator, name, value, n_hidden, accepts, expected):
    """value as a list of one per hidden layer, each checked by accepts: a list or tuple is
    one per hidden layer already, anything else is for every hidden layer (the constraints
    have checked a single value)."""
    values = list(value) if isinstance(value, (list, tuple)) else [value] * n_hidden
    if len(values) != n_hidden or not all(accepts(v) for v in values):
        raise InvalidParameterError(
            f"The {name!r} parameter of {type(estimator).__name__} must be {expected}, or a "
            f"list of {n_hidden} of them (one per hidden layer). Got {value!r} instead.")
    return values


def is_norm(value):
    return value is None or (isinstance(value, str) and value in NORMS)


def is_probability(value):
    return isinstance(value, Real) and not isinstance(value, bool) and 0 <= value < 1
