"""fastbp.sklearn's conversions to and from scikit-learn's own MLPs: to_sklearn() and
from_sklearn(). The same weights either way, so the same predictions to rounding (the same
classes); refusals name what the other side cannot express. Skipped without scikit-learn.
"""
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn import neural_network                                      # noqa: E402
from sklearn.datasets import load_digits                                # noqa: E402
from sklearn.exceptions import ConvergenceWarning, NotFittedError       # noqa: E402
from sklearn.linear_model import LinearRegression                       # noqa: E402

import fastbp                                                            # noqa: E402
from fastbp.sklearn import MLPClassifier, MLPRegressor, from_sklearn    # noqa: E402

TASKS = ("binary", "multiclass", "multilabel", "regression", "regression-2")
DTYPES = ("float32", "float64")
ACTIVATIONS = ("relu", "tanh", "logistic", "identity")
# Tolerances (rtol, atol) of the predictions of the same weights in the two libraries, which
# sum in other orders and take exp and tanh from other libraries; measured over these tests:
# at most 1.8e-7 apart in float32 and 4e-16 in float64. atol is for the values near 0:
# probabilities (whose relative error is the absolute error of their logits) and regression
# values (differences of larger terms; the layers' values here are about 1).
TOLERANCES = {"float32": (1e-6, 3e-7), "float64": (1e-12, 1e-15)}
FITTED = ("n_features_in_", "n_outputs_", "n_layers_", "out_activation_", "n_iter_", "t_",
          "loss_", "loss_curve_", "best_loss_", "validation_scores_", "best_validation_score_")


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:200] / 16.0, y[:200]


def _task_data(digits, task, dtype):
    """(X in dtype, y) of a task: binary, multiclass, multilabel, 1 or 2 regression outputs."""
    X, y = digits
    targets = {"binary": y % 2, "multiclass": y,
               "multilabel": np.stack([y % 2, y > 4, y == 3], axis=1).astype(int),
               "regression": y / 10.0,
               "regression-2": np.stack([y / 10.0, np.sin(y)], axis=1)}
    return X.astype(dtype), targets[task]


def _fit(estimator, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return estimator.fit(X, y)


def _ours(task, **params):
    return (MLPRegressor if task.startswith("regression") else MLPClassifier)(**params)


def _theirs(task, **params):
    return (neural_network.MLPRegressor if task.startswith("regression")
            else neural_network.MLPClassifier)(**params)


def _assert_same_predictions(ours, theirs, X, y, dtype):
    rtol, atol = TOLERANCES[dtype]
    if hasattr(ours, "predict_proba"):
        np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
        np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=rtol,
                                   atol=atol)
        assert ours.score(X, y) == theirs.score(X, y)
    else:
        np.testing.assert_allclose(ours.predict(X), theirs.predict(X), rtol=rtol, atol=atol)
        assert ours.score(X, y) == pytest.approx(theirs.score(X, y), rel=rtol)


def _assert_same_fitted_attributes(ours, theirs):
    for name in FITTED:
        assert hasattr(ours, name) == hasattr(theirs, name), name
        if hasattr(ours, name):
            assert getattr(ours, name) == getattr(theirs, name), name   # (copied exactly)
    if hasattr(ours, "classes_"):
        np.testing.assert_array_equal(ours.classes_, theirs.classes_)
        assert ours._label_binarizer.y_type_ == theirs._label_binarizer.y_type_


def _assert_bitwise(arrays, others):
    assert len(arrays) == len(others)
    for array, other in zip(arrays, others):
        assert array.dtype == other.dtype and array.shape == other.shape
        assert array.tobytes() == other.tobytes()


def _common_params(ours, theirs):
    mine, other = ours.get_params(), theirs.get_params()
    return {name for name in mine if name in other}


# -- fastbp -> scikit-learn -> fastbp -------------------------------------------------------------


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("task", TASKS)
def test_to_sklearn_predicts_as_fastbp_and_comes_back_bitwise(digits, task, dtype, activation):
    X, y = _task_data(digits, task, dtype)
    ours = _fit(_ours(task, hidden_layer_sizes=(12, 7), activation=activation, max_iter=5,
                      dtype=dtype, random_state=0, alpha=0.01, clip_norm=5.0), X, y)
    theirs = ours.to_sklearn()
    assert type(theirs) is ours._sklearn_class
    _assert_bitwise(theirs.coefs_ + theirs.intercepts_, ours.coefs_ + ours.intercepts_)
    assert theirs.coefs_[0].dtype == np.dtype(dtype)
    _assert_same_predictions(ours, theirs, X, y, dtype)
    _assert_same_fitted_attributes(ours, theirs)
    assert {name: theirs.get_params()[name] for name in _common_params(ours, theirs)} == \
        {name: ours.get_params()[name] for name in _common_params(ours, theirs)}

    back = from_sklearn(theirs)
    assert type(back) is type(ours) and back.dtype == dtype
    _assert_bitwise(back.coefs_ + back.intercepts_, ours.coefs_ + ours.intercepts_)
    _assert_same_fitted_attributes(back, ours)
    # the parameters come back as they were, but fastbp's own, at their defaults (clip_norm)
    assert back.get_params() == dict(ours.get_params(), clip_norm=None)
    np.testing.assert_array_equal(back.predict(X), ours.predict(X))


@pytest.mark.parametrize("solver, early_stopping", [("lbfgs", False), ("sgd", True)])
def test_to_sklearn_carries_each_solvers_attributes(digits, solver, early_stopping):
    X, y = _task_data(digits, "multiclass", "float64")
    ours = _fit(MLPClassifier(hidden_layer_sizes=(10,), solver=solver, max_iter=8,
                              early_stopping=early_stopping, random_state=0, dtype="float64"),
                X, y)
    theirs = ours.to_sklearn()
    _assert_same_fitted_attributes(ours, theirs)
    assert (theirs.solver, theirs.early_stopping) == (solver, early_stopping)
    assert hasattr(theirs, "loss_curve_") == (solver != "lbfgs")
    _assert_same_predictions(ours, theirs, X, y, "float64")


def test_to_sklearn_leaves_the_fastbp_estimator_as_it_was(digits):
    X, y = _task_data(digits, "multiclass", "float32")
    ours = _fit(MLPClassifier(hidden_layer_sizes=(10,), solver="sgd", max_iter=3,
                              random_state=np.random.RandomState(0)), X, y)
    params, optimizer = ours._model.params.tobytes(), ours._optimizer
    curve, n_iter, t = list(ours.loss_curve_), ours.n_iter_, ours.t_
    random_state = ours.random_state.get_state()[1].tobytes()

    theirs = ours.to_sklearn()
    for array in theirs.coefs_ + theirs.intercepts_:   # copies, not views of the model
        assert not any(np.shares_memory(array, mine) for mine in ours.coefs_ + ours.intercepts_)
    assert theirs.random_state is not ours.random_state
    assert theirs.loss_curve_ is not ours.loss_curve_
    theirs.partial_fit(X, y)   # trains its own copies (and its own RandomState)
    theirs.set_params(warm_start=True, max_iter=2)
    _fit(theirs, X, y)

    assert ours._model.params.tobytes() == params
    assert (list(ours.loss_curve_), ours.n_iter_, ours.t_) == (curve, n_iter, t)
    assert ours.random_state.get_state()[1].tobytes() == random_state
    assert ours._optimizer is optimizer


def test_to_sklearn_takes_the_fitted_network_not_later_parameters(digits):
    X, y = _task_data(digits, "multiclass", "float64")
    ours = _fit(MLPClassifier(hidden_layer_sizes=(10,), activation="tanh", max_iter=3,
                              random_state=0, dtype="float64"), X, y)
    ours.set_params(hidden_layer_sizes=(5, 5), activation="relu")   # (predict ignores these)
    theirs = ours.to_sklearn()
    assert (theirs.hidden_layer_sizes, theirs.activation) == ((10,), "tanh")
    _assert_same_predictions(ours, theirs, X, y, "float64")


def test_feature_names_are_copied(digits):
    X, y = _task_data(digits, "binary", "float64")
    ours = _fit(MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, random_state=0), X, y)
    names = np.array([f"pixel{i}" for i in range(X.shape[1])], dtype=object)
    ours.feature_names_in_ = names   # (as a fit on a DataFrame sets it; pandas is optional)
    theirs = ours.to_sklearn()
    back = from_sklearn(theirs)
    for converted in (theirs, back):
        np.testing.assert_array_equal(converted.feature_names_in_, names)
        assert converted.feature_names_in_ is not names


def test_a_network_without_hidden_layers_converts(digits):
    X, y = _task_data(digits, "multiclass", "float64")
    ours = _fit(MLPClassifier(hidden_layer_sizes=(), max_iter=3, random_state=0,
                              dtype="float64"), X, y)
    theirs = ours.to_sklearn()
    assert theirs.n_layers_ == 2
    _assert_same_predictions(ours, theirs, X, y, "float64")
    _assert_bitwise(from_sklearn(theirs).coefs_, ours.coefs_)


# -- scikit-learn -> fastbp -> scikit-learn -------------------------------------------------------


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("task", TASKS)
def test_from_sklearn_predicts_as_scikit_learn_and_goes_back_bitwise(digits, task, dtype,
                                                                     activation):
    X, y = _task_data(digits, task, dtype)   # (scikit-learn's weights take X's dtype)
    theirs = _fit(_theirs(task, hidden_layer_sizes=(12, 7), activation=activation,
                          max_iter=5, random_state=0, alpha=0.01), X, y)
    ours = from_sklearn(theirs)
    assert type(ours) is not type(theirs) and ours._sklearn_class is type(theirs)
    assert ours.dtype == dtype and ours._model.dtype == np.dtype(dtype)
    _assert_bitwise(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_)
    _assert_same_predictions(ours, theirs, X, y, dtype)
    _assert_same_fitted_attributes(ours, theirs)
    assert {name: ours.get_params()[name] for name in _common_params(ours, theirs)} == \
        {name: theirs.get_params()[name] for name in _common_params(ours, theirs)}

    again = ours.to_sklearn()
    _assert_bitwise(again.coefs_ + again.intercepts_, theirs.coefs_ + theirs.intercepts_)
    assert again.get_params() == theirs.get_params()
    np.testing.assert_array_equal(again.predict(X), theirs.predict(X))


def test_from_sklearn_leaves_scikit_learns_estimator_as_it_was(digits):
    X, y = _task_data(digits, "multilabel", "float64")
    theirs = _fit(neural_network.MLPClassifier(hidden_layer_sizes=(8,), max_iter=3,
                                               random_state=0), X, y)
    before = [array.copy() for array in theirs.coefs_ + theirs.intercepts_]
    curve = list(theirs.loss_curve_)
    ours = from_sklearn(theirs)
    for mine in ours.coefs_ + ours.intercepts_:
        assert not any(np.shares_memory(mine, array) for array in theirs.coefs_)
    ours.partial_fit(X, y)
    _assert_bitwise(theirs.coefs_ + theirs.intercepts_, before)
    assert theirs.loss_curve_ == curve and len(ours.loss_curve_) == len(curve) + 1


# Plain full-batch SGD: fastbp's training is scikit-learn's to rounding (tests/test_sklearn.py),
# so a converted network trained on by either library stays the same network.
CONTINUED_SGD = dict(solver="sgd", shuffle=False, batch_size=200, learning_rate_init=0.05,
                     momentum=0.9, alpha=1e-3, random_state=0, n_iter_no_change=100,
                     hidden_layer_sizes=(12,), max_iter=4)


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel", "regression-2"])
def test_training_continues_from_converted_weights_in_either_library(digits, task):
    X, y = _task_data(digits, task, "float64")
    theirs = _fit(_theirs(task, **CONTINUED_SGD), X, y)
    ours = from_sklearn(theirs)
    # The optimizer's state is not carried over: partial_fit starts a new one, as scikit-learn
    # does without its old one.
    assert not hasattr(ours, "_optimizer")
    del theirs._optimizer

    # partial_fit: one epoch (no classes needed: classes_ is set)
    ours.partial_fit(X, y)
    theirs.partial_fit(X, y)
    for mine, reference in zip(ours.coefs_ + ours.intercepts_,
                               theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_allclose(mine, reference, rtol=1e-9, atol=1e-12)
    assert ours.t_ == theirs.t_ == 5 * len(y) and len(ours.loss_curve_) == 5

    # warm_start: fit goes on from the weights, and back in scikit-learn too
    for estimator in (ours, theirs):
        _fit(estimator.set_params(warm_start=True, max_iter=3), X, y)
    for mine, reference in zip(ours.coefs_ + ours.intercepts_,
                               theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_allclose(mine, reference, rtol=1e-9, atol=1e-12)
    assert ours.n_iter_ == theirs.n_iter_ == 3 and len(ours.loss_curve_) == 8
    again = _fit(ours.to_sklearn(), X, y)   # (warm_start=True: goes on from ours)
    _fit(ours, X, y)
    for mine, reference in zip(ours.coefs_, again.coefs_):
        np.testing.assert_allclose(mine, reference, rtol=1e-9, atol=1e-12)


def test_a_float32_network_from_scikit_learn_trains_on_in_float32(digits):
    X, y = _task_data(digits, "multiclass", "float32")
    theirs = _fit(neural_network.MLPClassifier(hidden_layer_sizes=(12,), max_iter=3,
                                               learning_rate_init=0.01, random_state=0), X, y)
    ours = from_sklearn(theirs).set_params(warm_start=True, max_iter=30)
    _fit(ours, X, y)
    assert ours.coefs_[0].dtype == np.float32 and len(ours.loss_curve_) == 33
    assert ours.loss_curve_[3] < theirs.loss_curve_[-1]   # (from where scikit-learn left off)
    assert ours.score(X, y) > 0.9 > theirs.score(X, y)


def test_lbfgs_and_early_stopping_attributes_come_across(digits):
    X, y = _task_data(digits, "multiclass", "float64")
    for params in (dict(solver="lbfgs"), dict(solver="adam", early_stopping=True)):
        theirs = _fit(neural_network.MLPClassifier(hidden_layer_sizes=(10,), max_iter=8,
                                                   random_state=0, **params), X, y)
        ours = from_sklearn(theirs)
        _assert_same_fitted_attributes(ours, theirs)
        _assert_same_predictions(ours, theirs, X, y, "float64")


# -- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize("params, message", [
    (dict(norm="layer"), "norm: it has no normalisation layers"),
    (dict(norm=[None, "batch"]), r"norm: .*\[None, 'batch'\]"),
    (dict(residual=True), "residual: it has no residual connections"),
    (dict(dropout=0.2), r"dropout: it has none \(this network's: \[0.2, 0.2\]\)"),
    (dict(matmul_precision="bfloat16-emulated"), "matmul_precision: .*'bfloat16-emulated'"),
    (dict(activation="gelu"), "activation: it has no 'gelu'"),
    (dict(activation="leaky_relu"), "activation: it has no 'leaky_relu'"),
])
@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_to_sklearn_refuses_what_scikit_learn_cannot_express(digits, task, params, message):
    X, y = _task_data(digits, task, "float32")
    ours = _fit(_ours(task, hidden_layer_sizes=(8, 8), max_iter=2, random_state=0, **params),
                X, y)
    name = "MLPRegressor" if task == "regression" else "MLPClassifier"
    with pytest.raises(ValueError, match=f"to_sklearn: scikit-learn's {name} cannot express "
                                         f"this network: {message}"):
        ours.to_sklearn()


def test_to_sklearn_names_every_problem_at_once(digits):
    X, y = _task_data(digits, "multiclass", "float32")
    ours = _fit(MLPClassifier(hidden_layer_sizes=(8, 8), norm="batch", dropout=0.1,
                              activation="gelu", max_iter=2, random_state=0), X, y)
    with pytest.raises(ValueError, match="norm: .*; dropout: .*; activation: it has no 'gelu'"):
        ours.to_sklearn()


def test_to_sklearn_refuses_a_loss_scikit_learn_lacks(digits):
    # fastbp's estimators build none: a network given another loss (huber) by hand
    X, y = _task_data(digits, "regression", "float32")
    ours = _fit(MLPRegressor(hidden_layer_sizes=(8,), max_iter=2, random_state=0), X, y)
    ours._model = fastbp.MLP(ours._model.sizes, loss="huber", l2=ours.alpha)
    with pytest.raises(ValueError, match="loss: the network's is 'huber', where scikit-learn's "
                                         "is 'mse'"):
        ours.to_sklearn()


def test_to_sklearn_before_fit_is_not_fitted():
    for estimator in (MLPClassifier(), MLPRegressor()):
        with pytest.raises(NotFittedError, match="not fitted yet"):
            estimator.to_sklearn()


@pytest.mark.parametrize("estimator, message", [
    (LinearRegression(), "got sklearn.linear_model._base.LinearRegression"),
    (MLPClassifier(), "got fastbp.sklearn.MLPClassifier"),
    ("MLPClassifier", "got builtins.str"),
])
def test_from_sklearn_refuses_anything_but_scikit_learns_mlps(estimator, message):
    with pytest.raises(TypeError, match="from_sklearn: expected scikit-learn's MLPClassifier or "
                                        f"MLPRegressor .*{message}"):
        from_sklearn(estimator)


def test_from_sklearn_refuses_an_unfitted_mlp():
    with pytest.raises(NotFittedError, match="This MLPRegressor instance is not fitted yet"):
        from_sklearn(neural_network.MLPRegressor())


def test_from_sklearn_refuses_the_poisson_loss(digits):
    X, y = _task_data(digits, "regression", "float64")
    theirs = _fit(neural_network.MLPRegressor(loss="poisson", hidden_layer_sizes=(4,),
                                              max_iter=2, random_state=0), X, y + 0.1)
    with pytest.raises(ValueError, match="loss: fastbp's MLPRegressor supports 'squared_error' "
                                         "only, got 'poisson'"):
        from_sklearn(theirs)
    theirs.set_params(loss="squared_error")   # (after fit: the network still ends in exp)
    with pytest.raises(ValueError, match="out_activation_: the network's outputs are 'exp'"):
        from_sklearn(theirs)


@pytest.mark.parametrize("damage, message", [
    (lambda est: est.coefs_.__setitem__(0, est.coefs_[0].astype(np.float16)),
     "coefs_, intercepts_: fastbp's weights are all float32 or all float64; these are "
     "float16, float64"),
    (lambda est: est.intercepts_.__setitem__(1, est.intercepts_[1].astype(np.float32)),
     "these are float32, float64"),
    (lambda est: est.coefs_[1].__setitem__((0, 0), np.nan),
     "coefs_, intercepts_: contain NaN or Inf"),
    (lambda est: est.coefs_.__setitem__(1, est.coefs_[1][:-1]),
     r"coefs_, intercepts_: shapes \[\(64, 6\), \(5, 10\)\] and \[\(6,\), \(10,\)\] are not "
     "the layers of a network"),
    (lambda est: est.set_params(activation="softplus"),
     "The 'activation' parameter of MLPClassifier must be a str among"),
])
def test_from_sklearn_refuses_weights_and_settings_fastbp_cannot_take(digits, damage, message):
    X, y = _task_data(digits, "multiclass", "float64")
    theirs = _fit(neural_network.MLPClassifier(hidden_layer_sizes=(6,), max_iter=2,
                                               random_state=0), X, y)
    damage(theirs)
    with pytest.raises(ValueError, match=message):
        from_sklearn(theirs)
