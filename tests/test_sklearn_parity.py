"""fastbp.sklearn against scikit-learn itself, where their behaviour is defined alike: the
compute dtype, divergence (with and without early stopping), the early-stopping split and its
scores, the learning-rate rules, warm starts after set_params, assignable weights, parameter
validation; and fastbp's class_weight and validation_loss_curve_, defined by scikit-learn's
functions. Small data: 300 rows of digits, a hidden layer of 10. Skipped without scikit-learn.
"""
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn import neural_network                                      # noqa: E402
from sklearn.datasets import load_digits                                 # noqa: E402
from sklearn.exceptions import ConvergenceWarning                        # noqa: E402
from sklearn.linear_model import SGDClassifier                           # noqa: E402
from sklearn.metrics import log_loss                                     # noqa: E402
from sklearn.preprocessing import StandardScaler                        # noqa: E402
from sklearn.utils._param_validation import InvalidParameterError       # noqa: E402
from sklearn.utils.class_weight import compute_sample_weight            # noqa: E402

from fastbp.sklearn import MLPClassifier, MLPRegressor                  # noqa: E402

OURS = {"classifier": MLPClassifier, "regressor": MLPRegressor}
THEIRS = {"classifier": neural_network.MLPClassifier,
          "regressor": neural_network.MLPRegressor}
NON_FINITE = ("Solver produced non-finite parameter weights. The input data may contain large "
              "values and need to be preprocessed.")


@pytest.fixture(scope="module")
def data():
    X, y = load_digits(return_X_y=True)
    return StandardScaler().fit_transform(X)[:300], y[:300]


def _targets(y, task):
    return {"multiclass": y, "binary": y % 2,
            "multilabel": np.stack([y % 2, y > 4, y == 3], axis=1).astype(int),
            "regression": y / 10.0}[task]


def _kind(task):
    return "regressor" if task == "regression" else "classifier"


def _fit_both(kind, X, y, sample_weight=None, **params):
    """(ours, theirs), each fitted with these parameters; (ConvergenceWarning silenced)."""
    fitted = []
    for library in (OURS, THEIRS):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            fitted.append(library[kind](**params).fit(X, y, sample_weight=sample_weight))
    return fitted


def _weights(estimator):
    return list(estimator.coefs_) + list(estimator.intercepts_)


def _assert_same_weights(ours, theirs, rtol, atol=0.0):
    for mine, reference in zip(_weights(ours), _weights(theirs)):
        assert mine.dtype == reference.dtype
        np.testing.assert_allclose(mine, reference, rtol=rtol, atol=atol)


# Plain SGD without shuffling: fastbp's steps are scikit-learn's to rounding (float64).
SGD = dict(solver="sgd", shuffle=False, learning_rate_init=0.05, batch_size=64, random_state=0,
           hidden_layer_sizes=(10,), n_iter_no_change=100, max_iter=6)


# -- 1. the compute dtype -------------------------------------------------------------------------


@pytest.mark.parametrize("X_dtype", [np.float32, np.float64, np.int64, np.float16])
@pytest.mark.parametrize("solver", ["sgd", "adam", "lbfgs"])
@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_the_weights_take_scikit_learns_dtype(data, kind, solver, X_dtype):
    """dtype=None computes as scikit-learn does: in X's dtype after its conversion (float32
    stays, the others become float64), and float64 for L-BFGS (scikit-learn's runs on SciPy's
    float64 point and leaves float64 coefs_)."""
    X, y = data
    X = (X * 4).astype(X_dtype)
    ours, theirs = _fit_both(kind, X, y, solver=solver, max_iter=2, random_state=0,
                             hidden_layer_sizes=(10,))
    assert [w.dtype for w in _weights(ours)] == [w.dtype for w in _weights(theirs)]
    if kind == "regressor":
        assert ours.predict(X).dtype == theirs.predict(X).dtype


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_an_explicit_dtype_is_kept_whatever_X(data, dtype):
    X, y = data
    for X_dtype in (np.float32, np.float64):
        model = MLPClassifier(dtype=dtype, max_iter=2, hidden_layer_sizes=(10,))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(X.astype(X_dtype), y)
        assert {w.dtype for w in _weights(model)} == {np.dtype(dtype)}


@pytest.mark.parametrize("first, then", [(np.float32, np.float64), (np.float64, np.float32)])
def test_partial_fit_and_warm_start_go_on_in_the_fitted_dtype(data, first, then):
    X, y = data
    ours, theirs = (library(random_state=0, hidden_layer_sizes=(10,), warm_start=True,
                            max_iter=2)
                    for library in (MLPClassifier, neural_network.MLPClassifier))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for model in (ours, theirs):
            model.partial_fit(X.astype(first), y, classes=np.unique(y))
            model.partial_fit(X.astype(then), y)
            model.fit(X.astype(then), y)
    assert [w.dtype for w in _weights(ours)] == [w.dtype for w in _weights(theirs)] \
        == [np.dtype(first)] * 4


def test_a_new_dtype_converts_the_fitted_network(data):
    """fastbp's own choice (scikit-learn has no dtype parameter): set_params(dtype=...) before
    a warm start or partial_fit converts the fitted weights, and training goes on in that
    dtype: here as scikit-learn's from the same weights made float64 by hand."""
    X, y = data
    ours, theirs = _fit_both("classifier", X.astype(np.float32), y,
                             **dict(SGD, momentum=0.0, max_iter=2))
    ours.coefs_, ours.intercepts_ = theirs.coefs_, theirs.intercepts_   # (the same weights)
    ours.set_params(dtype="float64").partial_fit(X, y)
    theirs.coefs_ = [w.astype(np.float64) for w in theirs.coefs_]
    theirs.intercepts_ = [w.astype(np.float64) for w in theirs.intercepts_]
    theirs.partial_fit(X, y)
    _assert_same_weights(ours, theirs, rtol=1e-9, atol=1e-12)   # (both float64)
    ours.coefs_[0][0, 0] = 1e300   # (beyond float32: refused, the network kept)
    with pytest.raises(ValueError, match="dtype: the fitted weights do not fit float32"):
        ours.set_params(dtype="float32").partial_fit(X, y)
    assert ours.coefs_[0].dtype == np.float64 and ours.coefs_[0][0, 0] == 1e300


# -- 2, 3, 5. divergence ---------------------------------------------------------------------------


def _diverging(kind, X, y, **params):
    """(ours, theirs, what each fit raised or None) for SGD that diverges in its first epoch."""
    params = dict(SGD, momentum=0.0, max_iter=12, n_iter_no_change=3, batch_size=50, **params)
    results = []
    for library in (OURS, THEIRS):
        model = library[kind](**params)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            try:
                model.fit(X, y)
                raised = None
            except ValueError as exc:
                raised = str(exc)
        results.append((model, raised))
    return results


def test_a_diverging_regressor_with_early_stopping_stops_as_scikit_learns(data):
    """scikit-learn issue 29504: NaN validation scores, which never count as a lack of
    improvement, so that the fit runs to max_iter and keeps its best (here the initial)
    weights; no error."""
    X, y = data
    y = np.stack([y / 10.0, np.sin(y)], axis=1)
    (ours, our_error), (theirs, their_error) = _diverging("regressor", X, y,
                                                          learning_rate_init=10.0,
                                                          early_stopping=True)
    assert our_error is None and their_error is None
    assert ours.n_iter_ == theirs.n_iter_ == 12
    np.testing.assert_array_equal(ours.validation_scores_, theirs.validation_scores_)
    assert np.isnan(ours.validation_scores_).all()
    # (scikit-learn's first loss is Inf, or a huge number: fastbp refuses the step whose loss or
    # gradient norm overflows, and its epoch's loss is then NaN; the next ones are NaN in both)
    assert not np.isfinite(ours.loss_curve_).any() and not np.isfinite(theirs.loss_curve_).any()
    assert ours.best_validation_score_ == theirs.best_validation_score_ == -np.inf
    _assert_same_weights(ours, theirs, rtol=0)
    assert np.isnan(ours.validation_loss_curve_).all()


@pytest.mark.parametrize("task", ["multiclass", "binary"])
def test_a_diverging_classifier_with_early_stopping_is_scikit_learns(data, task):
    """A classifier's non-finite outputs still predict (its first class): the scores are
    constant, the stopping rule ends the fit, and the weights it keeps (the first epoch's:
    better than -Inf) are non-finite, so that fit raises scikit-learn's error after the same
    epochs."""
    X, y = data
    (ours, our_error), (theirs, their_error) = _diverging("classifier", X * 1e100,
                                                          _targets(y, task),
                                                          early_stopping=True)
    assert their_error == NON_FINITE and our_error.startswith(NON_FINITE + " (fastbp: ")
    assert ours.n_iter_ == theirs.n_iter_ < 12
    assert ours.validation_scores_ == theirs.validation_scores_
    assert ours.best_validation_score_ == theirs.best_validation_score_
    np.testing.assert_array_equal(ours.loss_curve_, theirs.loss_curve_)   # (all NaN)


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_divergence_raises_scikit_learns_error_and_later_fits_go_on_as_its(data, kind):
    X, y = data
    (ours, our_error), (theirs, their_error) = _diverging(kind, X * 1e100, y)
    assert their_error == NON_FINITE and our_error.startswith(NON_FINITE + " (fastbp: ")
    assert ours.n_iter_ == theirs.n_iter_ and ours.t_ == theirs.t_
    np.testing.assert_array_equal(ours.loss_curve_, theirs.loss_curve_)   # (all NaN)
    # The weights are non-finite, as scikit-learn's: a warm start and a partial_fit on sane
    # data go on from them and raise again; a new fit starts anew.
    for model in (ours, theirs):
        model.set_params(warm_start=True)
        with pytest.raises(ValueError, match="^Solver produced non-finite parameter weights"):
            model.fit(X, y)
        with pytest.raises(ValueError, match="^Solver produced non-finite parameter weights"):
            model.partial_fit(X, y)
    assert ours.t_ == theirs.t_ and ours.n_iter_ == theirs.n_iter_
    ours_again, theirs_again = _fit_both(kind, X, y, **SGD)
    _assert_same_weights(ours_again, theirs_again, rtol=1e-9, atol=1e-12)


def test_float32_data_that_overflows_raises_scikit_learns_error(data):
    X, y = data
    X = (X * 1e20).astype(np.float32)
    for library in (OURS, THEIRS):
        with pytest.raises(ValueError) as raised:
            library["classifier"](**dict(SGD, max_iter=2)).fit(X, y)
        assert str(raised.value).startswith(NON_FINITE)


def test_data_beyond_a_float32_networks_range_raises_scikit_learns_error(data):
    """A float32 network (float32 X) given float64 data beyond float32's range: scikit-learn's
    SGD raises its error; fastbp, which computes in the network's dtype, refuses the data in
    the same words before changing anything."""
    X, y = data
    models = [library["classifier"](**dict(SGD, max_iter=1)) for library in (OURS, THEIRS)]
    for model in models:
        model.partial_fit(X.astype(np.float32), y, classes=np.unique(y))
    before = [w.copy() for w in _weights(models[0])]
    for model in reversed(models):   # (ours last: its detail is checked below)
        with pytest.raises(ValueError) as raised:
            model.partial_fit(X * 1e39, y)
        assert str(raised.value).startswith(NON_FINITE)
    assert str(raised.value).endswith("(fastbp: X has values beyond the range of float32, "
                                      "the network's dtype)")
    for mine, old in zip(_weights(models[0]), before):
        np.testing.assert_array_equal(mine, old)


# -- 4, 7. the early-stopping split ---------------------------------------------------------------


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("task", ["multiclass", "binary", "multilabel", "regression"])
def test_early_stopping_holds_out_scikit_learns_rows(data, task, weighted):
    """scikit-learn's own train_test_split, random_state drawn as it draws it, stratified
    where it stratifies (binary targets only): the validation scores of each epoch agree to
    rounding, and the weights the fit keeps."""
    X, y = data
    weights = np.random.default_rng(0).uniform(0.2, 2.0, len(y)) if weighted else None
    ours, theirs = _fit_both(_kind(task), X, _targets(y, task), sample_weight=weights,
                             early_stopping=True, **dict(SGD, max_iter=10))
    assert ours.n_iter_ == theirs.n_iter_ == 10
    np.testing.assert_allclose(ours.validation_scores_, theirs.validation_scores_, rtol=1e-12,
                               atol=1e-14)
    assert ours.best_validation_score_ == pytest.approx(theirs.best_validation_score_,
                                                        rel=1e-12, abs=1e-14)
    _assert_same_weights(ours, theirs, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("task, refused", [("multiclass", False), ("binary", True)])
def test_a_class_of_one_row_is_refused_where_scikit_learn_stratifies(data, task, refused):
    X, y = data
    y = _targets(y, task).copy()
    y[0] = 42 if task == "multiclass" else 1 - y[0]
    if task == "binary":
        y[:] = 0
        y[0] = 1
    messages = []
    for library in (OURS, THEIRS):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                library["classifier"](early_stopping=True, max_iter=2, random_state=0,
                                      hidden_layer_sizes=(10,)).fit(X, y)
            messages.append(None)
        except ValueError as exc:
            messages.append(str(exc))
    assert messages[0] == messages[1]
    assert (messages[0] is not None) == refused
    if refused:
        assert messages[0].startswith("The least populated classes in y have only 1 member")


@pytest.mark.parametrize("task", ["multiclass", "binary", "regression"])
def test_validation_loss_curve_is_the_held_out_rows_data_loss(data, task):
    """validation_loss_curve_: the validation rows' loss after each epoch, as scikit-learn's
    metrics give it (log_loss; half the squared error), without the alpha penalty."""
    X, y = data
    target = _targets(y, task)
    estimator = OURS[_kind(task)]
    rows = {}

    class Recording(estimator):
        def _validation_scores(self, X, y, weights):
            rows["X"], rows["y"] = X, y
            return super()._validation_scores(X, y, weights)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = Recording(early_stopping=True, alpha=0.5,
                          **dict(SGD, n_iter_no_change=2, max_iter=30)).fit(X, target)
    assert len(model.validation_loss_curve_) == len(model.validation_scores_) == model.n_iter_
    best = model.validation_scores_.index(model.best_validation_score_)
    X_val, y_val = rows["X"], rows["y"]   # the fitted network is the best epoch's
    if task == "regression":
        expected = 0.5 * np.mean((model.predict(X_val) - y_val.ravel()) ** 2)
    else:
        labels = (model._label_binarizer.inverse_transform(y_val) if y_val.ndim == 2
                  else model.classes_[y_val])
        expected = log_loss(labels, model.predict_proba(X_val), labels=model.classes_)
    assert model.validation_loss_curve_[best] == pytest.approx(expected, rel=1e-10)
    plain = MLPClassifier(max_iter=1, hidden_layer_sizes=(4,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        assert plain.fit(X, y).validation_loss_curve_ is None


# -- 6, 9. the learning-rate rules ----------------------------------------------------------------


@pytest.mark.parametrize("learning_rate", ["invscaling", "adaptive"])
def test_learning_rate_is_for_sgd_only(data, learning_rate):
    """scikit-learn's Adam ignores learning_rate: its loss curve is constant's, bitwise, and
    the stopping rule stops where scikit-learn's does (Adam's epsilon apart, see
    docs/sklearn.md, the two runs are the same)."""
    X, y = data
    params = dict(solver="adam", shuffle=False, random_state=0, hidden_layer_sizes=(10,),
                  learning_rate_init=0.01, max_iter=60, tol=0.02, n_iter_no_change=2,
                  epsilon=1e-15)
    ours, theirs = _fit_both("classifier", X, y, learning_rate=learning_rate, **params)
    constant, _ = _fit_both("classifier", X, y, learning_rate="constant", **params)
    assert ours.loss_curve_ == constant.loss_curve_
    assert ours.n_iter_ == theirs.n_iter_ < 60


@pytest.mark.parametrize("power_t", [0.5, 0.25])
def test_invscaling_is_scikit_learns_rate(data, power_t):
    """learning_rate_init / (t_ + 1) ** power_t after each epoch (t_ the rows seen): float64
    SGD (without momentum, whose buffer fastbp scales by the current rate) gives scikit-learn's
    weights to rounding (measured: 1e-14)."""
    X, y = data
    ours, theirs = _fit_both("classifier", X, y, learning_rate="invscaling", power_t=power_t,
                             momentum=0.0, **dict(SGD, learning_rate_init=0.5, max_iter=8))
    assert ours._optimizer.lr == pytest.approx(theirs._optimizer.learning_rate, rel=1e-15)
    _assert_same_weights(ours, theirs, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-12)


# -- 8. warm starts after set_params ---------------------------------------------------------------


@pytest.mark.parametrize("how", ["warm_start", "partial_fit"])
def test_a_new_activation_trains_the_fitted_weights(data, how):
    """scikit-learn reads activation at every pass: after set_params(activation=...), a warm
    start or partial_fit trains the fitted weights with the new activation (partial_fit with
    its optimizer as it was: here SGD's momentum)."""
    X, y = data
    params = dict(SGD, momentum=0.9, max_iter=3, warm_start=True)
    ours, theirs = (library(**params) for library in (MLPClassifier,
                                                      neural_network.MLPClassifier))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for model in (ours, theirs):
            for activation in ("relu", "tanh", "logistic"):
                model.set_params(activation=activation)
                if how == "warm_start":
                    model.fit(X, y)
                else:
                    model.partial_fit(X, y, classes=np.unique(y))
    assert ours._model.activations == ["sigmoid"] and ours.to_sklearn().activation == "logistic"
    _assert_same_weights(ours, theirs, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=1e-9,
                               atol=1e-12)


# -- 10. assignable weights, parameter validation -------------------------------------------------


def test_coefs_and_intercepts_are_assignable_as_scikit_learns(data):
    X, y = data
    ours, theirs = _fit_both("classifier", X, y, **dict(SGD, max_iter=2))
    rng = np.random.default_rng(0)
    coefs = [rng.normal(size=w.shape) for w in theirs.coefs_]
    for model in (ours, theirs):
        model.coefs_ = [c.copy() for c in coefs]
        model.intercepts_[1] = np.full(10, 0.5)
        model.coefs_[0][0, :] = 0.0
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=1e-12)
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
    # checked: shapes, count, finite values; a refusal changes nothing
    before = [w.copy() for w in _weights(ours)]
    with pytest.raises(ValueError, match=r"coefs_: expected 2 arrays"):
        ours.coefs_ = coefs[:1]
    with pytest.raises(ValueError, match=r"coefs_\[1\]: expected shape \(10, 10\)"):
        ours.coefs_ = [coefs[0], coefs[0]]
    with pytest.raises(ValueError, match=r"intercepts_\[0\]: contains NaN"):
        ours.intercepts_[0] = np.full(10, np.nan)
    with pytest.raises(ValueError, match=r"intercepts_\[1\]: contains NaN"):
        ours.intercepts_ = [np.zeros(10), np.full(10, np.inf)]
    for mine, old in zip(_weights(ours), before):
        np.testing.assert_array_equal(mine, old)


# (parameters, of either estimator, that scikit-learn's MLPs refuse)
BAD_PARAMETERS = [dict(n_iter_no_change=2.5), dict(n_iter_no_change=0), dict(alpha=-1.0),
                  dict(activation="softplus"), dict(solver="newton"), dict(batch_size=0),
                  dict(batch_size="big"), dict(learning_rate="cyclic"),
                  dict(learning_rate_init=0.0), dict(momentum=1.5), dict(shuffle="yes"),
                  dict(validation_fraction=1.0), dict(beta_2=1.0), dict(epsilon=0.0),
                  dict(max_iter=2.0), dict(max_fun=0), dict(tol=-1.0), dict(verbose=-1),
                  dict(hidden_layer_sizes="100"), dict(random_state="seed")]


@pytest.mark.parametrize("params", BAD_PARAMETERS, ids=repr)
@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_bad_parameters_raise_scikit_learns_invalid_parameter_error(data, kind, params):
    X, y = data
    errors = []
    for library in (OURS, THEIRS):
        with pytest.raises(InvalidParameterError) as raised:
            library[kind](**params).fit(X, y)
        errors.append(str(raised.value))
    if "activation" not in params:   # (fastbp names its two activations more)
        assert errors[0] == errors[1]


def test_hidden_layer_sizes_below_1_are_refused_as_scikit_learn_refuses_them(data):
    X, y = data
    errors = []
    for library in (OURS, THEIRS):
        with pytest.raises(ValueError) as raised:
            library["classifier"](hidden_layer_sizes=(10, 0)).fit(X, y)
        errors.append(str(raised.value))
    assert errors[0] == errors[1] == "hidden_layer_sizes must be > 0, got [10, 0]."


@pytest.mark.parametrize("params", [dict(dtype="float16"), dict(dtype=np.int32),
                                    dict(clip_norm=0.0), dict(n_threads=0),
                                    dict(norm="group"), dict(residual=1), dict(dropout=1.0),
                                    dict(matmul_precision="int8"), dict(class_weight="even"),
                                    dict(class_weight=np.ones(10))], ids=repr)
def test_fastbps_own_parameters_are_validated_alike(data, params):
    with pytest.raises(InvalidParameterError, match=f"The '{next(iter(params))}' parameter of "
                                                    "MLPClassifier must be"):
        MLPClassifier(**params).fit(*data)


# -- class_weight ----------------------------------------------------------------------------------


@pytest.mark.parametrize("task, class_weight", [
    ("multiclass", {0: 5.0, 3: 0.1}),
    ("multiclass", "balanced"),
    ("binary", {0: 0.2, 1: 3.0}),
    ("multilabel", "balanced"),
    ("multilabel", [{0: 1.0, 1: 2.0}, {0: 0.5, 1: 1.0}, {0: 1.0, 1: 4.0}]),
])
def test_class_weight_is_compute_sample_weights_times_sample_weight(data, task, class_weight):
    """Defined as scikit-learn's other classifiers define it: each row weighs its
    compute_sample_weight(class_weight, y), times its sample_weight."""
    X, y = data
    target = _targets(y, task)
    rows = np.random.default_rng(1).uniform(0.5, 1.5, len(y))
    params = dict(SGD, max_iter=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        weighted = MLPClassifier(class_weight=class_weight, **params).fit(X, target,
                                                                         sample_weight=rows)
        by_hand = MLPClassifier(**params).fit(
            X, target, sample_weight=rows * compute_sample_weight(class_weight, target))
        plain = MLPClassifier(**params).fit(X, target, sample_weight=rows)
    _assert_same_weights(weighted, by_hand, rtol=0)
    assert not np.array_equal(weighted.coefs_[0], plain.coefs_[0])


def test_class_weight_refusals_are_scikit_learns(data):
    X, y = data
    # a dict for multilabel targets: compute_sample_weight's error
    Y = _targets(y, "multilabel")
    with pytest.raises(ValueError, match="For multi-output, class_weight should be a list of "
                                         "dicts, or the string 'balanced'"):
        MLPClassifier(class_weight={0: 1.0, 1: 2.0}, max_iter=1).fit(X, Y)
    # "balanced" in partial_fit: SGDClassifier's refusal, word for word
    with pytest.raises(ValueError) as theirs:
        SGDClassifier(class_weight="balanced").partial_fit(X, y, classes=np.unique(y))
    with pytest.raises(ValueError) as ours:
        MLPClassifier(class_weight="balanced").partial_fit(X, y, classes=np.unique(y))
    assert str(ours.value) == str(theirs.value)
    # a dict goes to partial_fit's rows
    model = MLPClassifier(class_weight={0: 3.0}, **dict(SGD, max_iter=1))
    model.partial_fit(X, y, classes=np.unique(y))
    assert model.t_ == len(y)


def test_balanced_class_weight_raises_the_minority_classs_recall():
    """What "balanced" is for, on an imbalanced problem (5% positives), as it does for
    scikit-learn's LogisticRegression. (scikit-learn's check_class_weight_balanced_classifiers
    compares weighted F1, which the majority class dominates; scikit-learn does not run it,
    and its own LogisticRegression, SVC and trees fail it on most such data sets.)"""
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import train_test_split
    X, y = make_classification(n_samples=600, n_features=5, n_informative=2, n_redundant=0,
                               weights=[0.95], flip_y=0.0, class_sep=0.6, random_state=0)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.5, random_state=0,
                                                        stratify=y)
    for estimator in (MLPClassifier(hidden_layer_sizes=(10,), random_state=0, max_iter=1000),
                      LogisticRegression()):
        scores = [balanced_accuracy_score(y_test, estimator.set_params(class_weight=weight)
                                          .fit(X_train, y_train).predict(X_test))
                  for weight in (None, "balanced")]
        assert scores[1] > scores[0] + 0.1
