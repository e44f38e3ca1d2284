"""fastbp.sklearn: scikit-learn's MLPClassifier and MLPRegressor on fastbp's kernels.

Checked against scikit-learn itself: its estimator checks, and, in float64 with the same seed,
its training to rounding wherever the arithmetic is defined the same way (plain SGD, momentum
at a constant rate, L-BFGS). Skipped without scikit-learn.
"""
import pickle
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn import neural_network                                      # noqa: E402
from sklearn.base import clone                                          # noqa: E402
from sklearn.datasets import load_digits, make_multilabel_classification  # noqa: E402
from sklearn.exceptions import ConvergenceWarning, NotFittedError       # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score      # noqa: E402
from sklearn.pipeline import make_pipeline                               # noqa: E402
from sklearn.preprocessing import StandardScaler                        # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks      # noqa: E402

import fastbp                                                            # noqa: E402
from fastbp.sklearn import MLPClassifier, MLPRegressor                  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return StandardScaler().fit_transform(X), y


def _both(fastbp_class, sklearn_class, **params):
    """The same estimator from fastbp (float64) and from scikit-learn."""
    return fastbp_class(dtype="float64", **params), sklearn_class(**params)


def _assert_same_network(ours, theirs, rtol, atol=None):
    assert ours.n_iter_ == theirs.n_iter_
    for mine, reference in zip(ours.coefs_ + ours.intercepts_,
                               theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_allclose(mine, reference, rtol=rtol,
                                   atol=rtol * 1e-3 if atol is None else atol)


# -- the same training as scikit-learn's, in float64 ----------------------------------------------

FULL_BATCH_SGD = dict(solver="sgd", shuffle=False, learning_rate_init=0.05, max_iter=15,
                      alpha=1e-3, random_state=3, n_iter_no_change=100, hidden_layer_sizes=(20,))


@pytest.mark.parametrize("momentum, activation", [(0.0, "relu"), (0.9, "tanh"),
                                                  (0.5, "logistic")])
@pytest.mark.parametrize("task", ["multiclass", "binary", "multilabel", "regression"])
def test_sgd_at_a_constant_rate_is_scikit_learns_to_rounding(digits, task, momentum,
                                                             activation):
    X, y = digits[0][:300], digits[1][:300]
    if task == "binary":
        y = y % 2
    elif task == "multilabel":
        y = np.stack([y % 2, y > 4, y == 3], axis=1).astype(int)
    params = dict(FULL_BATCH_SGD, momentum=momentum, activation=activation,
                  batch_size=64 if task == "multiclass" else 300)
    if task == "regression":
        ours, theirs = _both(MLPRegressor, neural_network.MLPRegressor, **params)
        y = np.stack([y / 10.0, np.sin(y)], axis=1)
    else:
        ours, theirs = _both(MLPClassifier, neural_network.MLPClassifier, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours.fit(X, y)
        theirs.fit(X, y)
    _assert_same_network(ours, theirs, rtol=1e-9)
    if task != "regression":   # the regressor's loss_ differs by design with 2 outputs
        np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-10)
        np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
        np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=1e-9,
                                   atol=1e-12)


@pytest.mark.parametrize("solver", ["sgd", "lbfgs"])
def test_sample_weights_train_as_scikit_learns(digits, solver):
    X, y = digits[0][:300], digits[1][:300]
    weights = np.random.default_rng(0).uniform(0, 3, size=300)
    weights[:20] = 0
    params = dict(FULL_BATCH_SGD, batch_size=300, momentum=0.9) if solver == "sgd" else \
        dict(solver="lbfgs", max_iter=15, alpha=1e-2, random_state=0, hidden_layer_sizes=(16,))
    ours, theirs = _both(MLPClassifier, neural_network.MLPClassifier, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours.fit(X, y, sample_weight=weights)
        theirs.fit(X, y, sample_weight=weights)
    _assert_same_network(ours, theirs, rtol=1e-9 if solver == "sgd" else 1e-6)


@pytest.mark.parametrize("solver", ["sgd", "lbfgs"])
def test_warm_start_with_a_new_alpha_trains_as_scikit_learns(digits, solver):
    """A warm-started fit takes that call's alpha (scikit-learn reads it at every fit)."""
    X, y = digits[0][:300], digits[1][:300]
    params = dict(FULL_BATCH_SGD, batch_size=300, alpha=0.0) if solver == "sgd" else \
        dict(solver="lbfgs", max_iter=10, alpha=0.0, random_state=0, hidden_layer_sizes=(16,))
    ours, theirs = _both(MLPClassifier, neural_network.MLPClassifier, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for alpha in (0.0, 0.5, 0.05):
            for model in (ours, theirs):
                model.set_params(alpha=alpha, warm_start=True).fit(X, y)
    _assert_same_network(ours, theirs, rtol=1e-9 if solver == "sgd" else 1e-6)


@pytest.mark.parametrize("norm", [None, "batch"])
@pytest.mark.parametrize("solver", ["adam", "lbfgs"])
def test_sparse_X_trains_as_dense_X(digits, solver, norm, monkeypatch):
    """(Under batch normalisation L-BFGS takes a sparse X whole: the statistics are the whole
    batch's, not a chunk's.)"""
    import scipy.sparse

    from fastbp import _sklearn_convert
    monkeypatch.setattr(_sklearn_convert, "LBFGS_CHUNK", 128)   # several chunks
    X, y = digits
    X = np.where(np.abs(X) > 1.0, X, 0.0)   # about 80% zeros
    params = dict(max_iter=5, random_state=0, hidden_layer_sizes=(32,), solver=solver,
                  dtype="float64", norm=norm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        dense = MLPClassifier(**params).fit(X, y)
        sparse = MLPClassifier(**params).fit(scipy.sparse.csr_matrix(X), y)
    # Adam: the same batches densified from CSR, bitwise; L-BFGS: the full batch summed in
    # chunks, to rounding.
    _assert_same_network(sparse, dense, rtol=0 if solver == "adam" else 1e-6,
                         atol=0 if solver == "adam" else 1e-8)
    np.testing.assert_array_equal(sparse.predict(scipy.sparse.csc_matrix(X)), dense.predict(X))


def test_lbfgs_follows_scikit_learns_path(digits):
    X, y = digits[0][:300], digits[1][:300]
    ours, theirs = _both(MLPClassifier, neural_network.MLPClassifier, solver="lbfgs",
                         max_iter=15, alpha=1e-2, random_state=0, hidden_layer_sizes=(16,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours.fit(X, y)
        theirs.fit(X, y)
    _assert_same_network(ours, theirs, rtol=1e-6)
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=1e-8)


def test_adam_differs_from_scikit_learns_only_by_where_epsilon_goes(digits):
    # scikit-learn adds epsilon before the bias correction of the second moment, PyTorch (and
    # fastbp) after it: with epsilon negligible the two runs agree closely. Not to rounding:
    # where a gradient is nearly 0, Adam's step (lr times about +-1) follows its rounding.
    X, y = digits[0][:300], digits[1][:300]
    ours, theirs = _both(MLPClassifier, neural_network.MLPClassifier, solver="adam",
                         shuffle=False, max_iter=10, epsilon=1e-15, random_state=1,
                         hidden_layer_sizes=(16,), n_iter_no_change=100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours.fit(X, y)
        theirs.fit(X, y)
    _assert_same_network(ours, theirs, rtol=1e-6, atol=1e-3 * ours.learning_rate_init)


# -- scikit-learn's behaviour ---------------------------------------------------------------------


def test_stopping_rules_warnings_and_verbose_output(digits, capsys):
    X, y = digits
    with pytest.warns(ConvergenceWarning, match="Maximum iterations \\(3\\)"):
        model = MLPClassifier(max_iter=3, random_state=0, verbose=True).fit(X, y)
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == [f"Iteration {i}, loss = {loss:.8f}"
                       for i, loss in zip((1, 2, 3), model.loss_curve_)]
    assert model.n_iter_ == 3 and model.t_ == 3 * len(y)

    # A tolerance no epoch can beat stops at scikit-learn's epoch, without a warning; adaptive
    # divides the rate by 5 at each trigger instead, until it is below 1e-6.
    for params in (dict(tol=100.0, n_iter_no_change=2),
                   dict(solver="sgd", learning_rate="adaptive", tol=100.0, n_iter_no_change=1)):
        with warnings.catch_warnings():
            warnings.simplefilter("error", ConvergenceWarning)
            ours = MLPClassifier(random_state=0, **params).fit(X, y)
            theirs = neural_network.MLPClassifier(random_state=0, **params).fit(X, y)
        assert ours.n_iter_ == theirs.n_iter_ < 200
    assert ours._optimizer.lr == pytest.approx(theirs._optimizer.learning_rate, rel=1e-12)


def test_early_stopping_keeps_the_best_validation_weights(digits):
    X, y = digits
    model = MLPClassifier(early_stopping=True, n_iter_no_change=3, max_iter=60,
                          random_state=0, learning_rate_init=0.05).fit(X, y)
    assert model.best_loss_ is None and len(model.validation_scores_) == model.n_iter_
    assert model.best_validation_score_ == max(model.validation_scores_)
    assert model.n_iter_ < 60


def test_warm_start_and_partial_fit_continue_the_network(digits):
    X, y = digits
    model = MLPClassifier(max_iter=2, warm_start=True, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X, y)
        first = model.coefs_[0].copy()
        model.fit(X, y)
    # each fit counts its own epochs (scikit-learn 1.9's n_iter_); the loss curve goes on
    assert model.n_iter_ == 2 and len(model.loss_curve_) == 4
    assert not np.array_equal(model.coefs_[0], first)
    with pytest.raises(ValueError, match="same classes"):
        model.fit(X, y % 3)

    partial = MLPClassifier(random_state=0)
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        partial.partial_fit(X[:100], y[:100])
    partial.partial_fit(X[:100], y[:100], classes=np.arange(10))
    partial.partial_fit(X[100:200], y[100:200])
    assert partial.n_iter_ == 1 and len(partial.loss_curve_) == 2
    assert list(partial.classes_) == list(range(10))
    params = np.concatenate([c.ravel() for c in partial.coefs_])
    with pytest.raises(ValueError, match="classes not in"):
        partial.partial_fit(X[:10], y[:10] + 20)
    assert np.array_equal(params, np.concatenate([c.ravel() for c in partial.coefs_]))
    assert not hasattr(MLPClassifier(solver="lbfgs"), "partial_fit")


def test_string_labels_probabilities_and_scores(digits):
    X, y = digits
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                      "nine"])[y]
    model = MLPClassifier(max_iter=30, random_state=0).fit(X, names)
    assert set(model.predict(X[:50])) <= set(names)
    proba = model.predict_proba(X[:50])
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(np.exp(model.predict_log_proba(X[:50])), proba, rtol=1e-5)
    assert model.score(X, names) > 0.97
    assert [c.shape for c in model.coefs_] == [(64, 100), (100, 10)]
    assert model.n_layers_ == 3 and model.n_outputs_ == 10 and model.out_activation_ == "softmax"


def test_multilabel_and_multi_output_regression():
    X, Y = make_multilabel_classification(n_samples=300, n_features=10, n_classes=4,
                                          random_state=0)
    model = MLPClassifier(max_iter=300, random_state=0).fit(X, Y)
    assert model.predict(X).shape == (300, 4) and model.out_activation_ == "logistic"
    assert model.score(X, Y) > 0.5
    regressor = MLPRegressor(max_iter=500, random_state=0).fit(X, Y * 2.0 - 1.0)
    assert regressor.predict(X).shape == (300, 4) and regressor.score(X, Y * 2.0 - 1.0) > 0.5


def test_pipelines_searches_pickles_and_worker_processes(digits):
    X, y = digits
    pipeline = make_pipeline(StandardScaler(), MLPClassifier(max_iter=20, random_state=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search = GridSearchCV(pipeline, {"mlpclassifier__alpha": [1e-4, 1e-2]}, cv=2).fit(X, y)
        scores = cross_val_score(MLPClassifier(max_iter=20, random_state=0), X, y, cv=2,
                                 n_jobs=2)
    assert search.best_score_ > 0.85 and np.all(scores > 0.85)
    model = search.best_estimator_
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(again.predict_proba(X), model.predict_proba(X))


def _threads_in_a_fit(X, y, n_threads=None):
    """(fastbp's threads during a fit, after it), seen by an epoch callback."""
    seen = []

    class Recorder:
        def on_epoch_end(self, epoch, history, model):
            seen.append(fastbp.get_num_threads())
    import fastbp.sklearn as estimators
    real_train = estimators._train
    estimators._train = lambda *a, callbacks, **k: real_train(*a, callbacks=callbacks
                                                              + [Recorder()], **k)
    try:
        MLPClassifier(max_iter=1, n_threads=n_threads).fit(X, y)
    finally:
        estimators._train = real_train
    return seen[0], fastbp.get_num_threads()


def test_worker_processes_share_the_cores(digits):
    import os

    from joblib import Parallel, delayed
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    X, y = digits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        in_workers = Parallel(n_jobs=2)(delayed(_threads_in_a_fit)(X, y) for _ in range(2))
        before = fastbp.get_num_threads()
        here = _threads_in_a_fit(X, y, n_threads=1)
    assert [during for during, _ in in_workers] == [max(1, cores // 2)] * 2
    assert here == (1, before)   # n_threads holds for the fit only


# -- fastbp's normalisation, residual connections and dropout -----------------------------------


def test_the_defaults_leave_the_network_and_its_training_as_they_were(digits):
    X, y = digits[0][:300], digits[1][:300]
    params = dict(max_iter=3, random_state=0, hidden_layer_sizes=(16, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        implicit = MLPClassifier(**params).fit(X, y)
        explicit = MLPClassifier(norm=None, residual=False, dropout=0.0, **params).fit(X, y)
    model = explicit._model
    assert model.norm == [None, None] and model.dropout == [0.0, 0.0] and not model.residual
    for mine, other in zip(explicit.coefs_ + explicit.intercepts_,
                           implicit.coefs_ + implicit.intercepts_):
        np.testing.assert_array_equal(mine, other)
    assert explicit.loss_curve_ == implicit.loss_curve_


def _split(digits):
    X, y = digits
    return X[:1400], y[:1400], X[1400:], y[1400:]


@pytest.mark.parametrize("params", [dict(norm="batch", dropout=0.2),
                                    dict(norm="layer", residual=True, dropout=[0.1, 0.0],
                                         hidden_layer_sizes=(64, 64)),
                                    dict(norm=["batch", None], solver="sgd",
                                         learning_rate_init=0.05, hidden_layer_sizes=(64, 32))])
def test_normalised_residual_and_dropout_networks_train_and_predict_deterministically(
        digits, params):
    X, y, X_test, y_test = _split(digits)
    hidden = len(params.get("hidden_layer_sizes", (100,)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = MLPClassifier(max_iter=30, random_state=0, **params).fit(X, y)
    norm, dropout = params.get("norm"), params.get("dropout", 0.0)
    assert model._model.norm == (norm if isinstance(norm, list) else [norm] * hidden)
    assert model._model.dropout == (dropout if isinstance(dropout, list) else [dropout] * hidden)
    assert model._model.residual == params.get("residual", False)
    assert model.score(X_test, y_test) > 0.85   # (the default network: 0.89)
    # Inference: running statistics, no dropout; the same outputs every time.
    np.testing.assert_array_equal(model.predict_proba(X_test), model.predict_proba(X_test))
    np.testing.assert_array_equal(model.predict(X_test), model.predict(X_test))


def test_dropout_masks_follow_random_state(digits):
    X, y = digits[0][:300], digits[1][:300]
    params = dict(max_iter=3, hidden_layer_sizes=(32,), dropout=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        first, again, other = (MLPClassifier(random_state=seed, **params).fit(X, y)
                               for seed in (0, 0, 1))
        without = MLPClassifier(random_state=0, **dict(params, dropout=0.0)).fit(X, y)
    np.testing.assert_array_equal(first.coefs_[0], again.coefs_[0])
    assert not np.array_equal(first.coefs_[0], other.coefs_[0])
    assert not np.array_equal(first.coefs_[0], without.coefs_[0])


def test_regressor_takes_the_same_parameters(digits):
    X, y = digits
    target = np.stack([y / 10.0, np.sin(y)], axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = MLPRegressor(max_iter=100, random_state=0, hidden_layer_sizes=(64, 64),
                             norm="layer", residual=True, dropout=0.1).fit(X, target)
    assert model._model.norm == ["layer", "layer"] and model._model.residual
    assert model.score(X, target) > 0.8
    np.testing.assert_array_equal(model.predict(X), model.predict(X))


def test_lbfgs_trains_a_batch_normalised_network_and_refuses_dropout(digits):
    X, y, X_test, y_test = _split(digits)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = MLPClassifier(solver="lbfgs", max_iter=100, random_state=0,
                              hidden_layer_sizes=(32,), norm="batch").fit(X, y)
    assert model.score(X_test, y_test) > 0.9
    with pytest.raises(ValueError, match="dropout: the lbfgs solver"):
        MLPClassifier(solver="lbfgs", dropout=0.1).fit(X, y)


def test_batch_norm_batches_of_one_row(digits):
    """scikit-learn's batch_size="auto", min(200, n_samples), would leave a last batch of 1
    row of 201: under batch normalisation "auto" takes a size that leaves none; a batch_size
    that leaves one is refused, naming it."""
    X, y = digits[0][:201], digits[1][:201]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = MLPClassifier(norm="batch", max_iter=2, random_state=0).fit(X, y)
        plain = MLPClassifier(max_iter=2, random_state=0).fit(X, y)
    assert model._batch_size(201) == 201 and model._batch_size(1000) == 200
    assert model._batch_size(150) == 150 and plain._batch_size(201) == 200
    with pytest.raises(ValueError, match="batch_size: .* 201 training rows in batches of 100"):
        MLPClassifier(norm="batch", batch_size=100).fit(X, y)
    with pytest.raises(ValueError, match="n_samples = 1"):
        MLPRegressor(norm="batch", hidden_layer_sizes=(4,)).fit(X[:1], [1.0])
    with pytest.raises(ValueError, match="n_samples = 1"):
        MLPRegressor(norm="batch", hidden_layer_sizes=(4,), solver="lbfgs").fit(X[:1], [1.0])


class _RecordingValidation(MLPClassifier):
    """MLPClassifier that keeps the validation rows early stopping scores."""

    def _validation_scores(self, X, y, weights):
        self.validation_rows_ = X, y
        return super()._validation_scores(X, y, weights)


def test_early_stopping_restores_the_best_epochs_running_statistics(digits):
    X, y = digits
    model = _RecordingValidation(norm="batch", early_stopping=True, n_iter_no_change=3,
                                 max_iter=60, random_state=0, learning_rate_init=0.05,
                                 hidden_layer_sizes=(32,)).fit(X, y)
    scores = model.validation_scores_
    assert scores.index(model.best_validation_score_) < len(scores) - 1   # not the last
    X_val, y_val = model.validation_rows_
    assert model.score(X_val, model.classes_[y_val]) == model.best_validation_score_


def test_get_params_set_params_and_clone_carry_them():
    model = MLPClassifier(norm=["batch", None], residual=True, dropout=0.25)
    params = model.get_params()
    assert (params["norm"], params["residual"], params["dropout"]) == (["batch", None], True,
                                                                       0.25)
    copy = clone(model).set_params(norm="layer", dropout=[0.1, 0.2])
    assert (copy.norm, copy.residual, copy.dropout) == ("layer", True, [0.1, 0.2])
    assert model.norm == ["batch", None]


@pytest.mark.parametrize("params, message", [
    # (scikit-learn's InvalidParameterError and words: "The 'norm' parameter of ...")
    (dict(norm="group"), "'norm' parameter .* must be None, a str among .*'batch'.*'group'"),
    (dict(norm=["batch"], hidden_layer_sizes=(8, 8)),
     "'norm' parameter .* or a list of 2 of them \\(one per hidden layer\\). Got \\['batch'\\]"),
    (dict(norm=1), "'norm' parameter"),
    (dict(dropout=1.0), "'dropout' parameter .* must be a float in the range \\[0.0, 1.0\\)"),
    (dict(dropout=-0.1), "'dropout' parameter"),
    (dict(dropout=float("nan")), "'dropout' parameter"),
    (dict(dropout="0.1"), "'dropout' parameter"),
    (dict(dropout=[0.1, 1.5], hidden_layer_sizes=(8, 8)), "'dropout' parameter"),
    (dict(residual="yes"), "'residual' parameter"),
    (dict(residual=True, hidden_layer_sizes=(32, 16)), "residual: no hidden layer"),
    (dict(solver="lbfgs", dropout=0.5), "dropout"),
])
def test_bad_layer_options_are_refused_and_the_fitted_model_kept(digits, params, message):
    X, y = digits
    model = MLPClassifier(max_iter=2, random_state=0, hidden_layer_sizes=(8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X, y)
    fitted, before = model._model, [c.copy() for c in model.coefs_]
    state = {k: v for k, v in vars(model).items() if k.endswith("_")}
    with pytest.raises(ValueError, match=message):
        model.set_params(**params).fit(X[:, :20], y % 2)   # (other data: not taken in)
    assert model._model is fitted and model.n_features_in_ == 64
    assert {k: v for k, v in vars(model).items() if k.endswith("_")}.keys() == state.keys()
    assert list(model.classes_) == list(range(10))
    for mine, old in zip(model.coefs_, before):
        np.testing.assert_array_equal(mine, old)


@pytest.mark.parametrize("change", [dict(norm="layer"), dict(dropout=0.2),
                                    dict(residual=True, hidden_layer_sizes=(16, 16))])
def test_warm_start_refuses_another_network(digits, change):
    X, y = digits
    model = MLPClassifier(max_iter=2, random_state=0, warm_start=True,
                          hidden_layer_sizes=(16, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X, y)
    name = next(iter(change))
    with pytest.raises(ValueError, match=f"{name}: warm_start and partial_fit continue"):
        model.set_params(**change).fit(X, y)


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("params, message", [
    (dict(hidden_layer_sizes=(10, 0)), "hidden_layer_sizes"),
    (dict(activation="softplus"), "activation"),
    (dict(solver="newton"), "solver"),
    (dict(alpha=-1.0), "alpha"),
    (dict(batch_size=0), "batch_size"),
    (dict(learning_rate_init=0.0), "learning_rate_init"),
    (dict(momentum=1.5), "momentum"),
    (dict(validation_fraction=1.0), "validation_fraction"),
    (dict(beta_2=1.0), "beta_2"),
    (dict(dtype="float16"), "dtype"),
    (dict(clip_norm=-1.0), "clip_norm"),
    (dict(n_threads=0), "n_threads"),
])
def test_bad_parameters_are_refused_at_fit_naming_them(digits, params, message):
    model = MLPClassifier(**params)   # scikit-learn's convention: constructing checks nothing
    with pytest.raises(ValueError, match=message):
        model.fit(*digits)


def test_bad_data_is_refused_and_the_fitted_model_kept(digits):
    X, y = digits
    model = MLPClassifier(max_iter=5, random_state=0)
    with pytest.raises(NotFittedError):
        model.predict(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X, y)
    before = [c.copy() for c in model.coefs_]
    bad = X.copy()
    bad[3, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.fit(bad, y)
    with pytest.raises(ValueError, match="features"):
        model.predict(X[:, :10])
    for mine, old in zip(model.coefs_, before):
        np.testing.assert_array_equal(mine, old)


# -- scikit-learn's own estimator checks ----------------------------------------------------------


# With the default dtype (X's, as scikit-learn's), every check passes as the estimators are,
# the sample-weight equivalence checks (float64 data, float64 tolerance) included.
@parametrize_with_checks([MLPClassifier(max_iter=100), MLPRegressor(max_iter=100)])
def test_scikit_learn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


def _not_sample_weights(estimator):
    """Batch statistics and dropout masks depend on the rows themselves: a row repeated is not
    a row weighted 2 (as in PyTorch), which these checks assume."""
    reason = "batch statistics and dropout masks depend on the rows, not their weights"
    return {"check_sample_weight_equivalence_on_dense_data": reason,
            "check_sample_weight_equivalence_on_sparse_data": reason}


@parametrize_with_checks([MLPClassifier(max_iter=100, norm="batch", dropout=0.1),
                          MLPRegressor(max_iter=100, norm="layer", residual=True,
                                       dropout=[0.2, 0.0], hidden_layer_sizes=(32, 32))],
                         expected_failed_checks=_not_sample_weights)
def test_scikit_learn_estimator_checks_with_the_layer_options(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)
