"""scikit-learn's MLPClassifier and MLPRegressor, trained by fastbp.

    from fastbp.sklearn import MLPClassifier      # instead of sklearn.neural_network

Same parameters (names, meanings, defaults), fitted attributes, methods, warnings and stopping
rules as scikit-learn's, so that code, pipelines and grid searches run unchanged; the training
runs in fastbp's compiled kernels, on every free core. Needs scikit-learn and SciPy
(``pip install "fastbp[sklearn]"``).

fastbp's own parameters: ``dtype`` (None by default: scikit-learn's, X's float32 or float64,
and float64 for L-BFGS; "float32" or "float64" to choose), ``clip_norm`` (global
gradient-norm clipping, none by default), ``n_threads`` (default: fastbp's, see
``fastbp.fit``), the hidden layers' ``norm``, ``residual`` and ``dropout`` (none by default),
the products' ``matmul_precision`` ("float32" by default) and
the classifier's ``class_weight``: see the estimators' docstrings. In the worker processes of
``cross_val_score(n_jobs=k)`` or ``GridSearchCV(n_jobs=k)``, joblib sets ``NUMBA_NUM_THREADS``
to cores / k, so that the k processes share the cores instead of each taking all of them:
fastbp then uses that many threads (``n_threads`` cannot exceed it).

Where the arithmetic differs from scikit-learn's (Adam's epsilon, SGD's momentum under a
changing rate, the multi-output regressor's loss_), and by how much: docs/sklearn.md.

A fitted estimator converts to scikit-learn's own fitted MLP, the same weights, with
``to_sklearn()``, and ``from_sklearn(est)`` converts back (see their docstrings).
"""
import copy
import warnings
from contextlib import contextmanager

import numpy as np
import scipy.optimize
from sklearn import get_config, neural_network
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, is_classifier
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import _check_partial_fit_first_call, type_of_target, unique_labels
from sklearn.utils.validation import (_check_sample_weight, _num_features, check_is_fitted,
                                      column_or_1d, validate_data)

from . import _threads, _validate, kernels
from .model import MLP, NORMS
from .optim import SGD, Adam
from ._sklearn_convert import chunked, in_dtype, moved_optimizer, rebuilt
from ._sklearn_params import (ACTIVATIONS, NON_FINITE, PARAMETER_CONSTRAINTS,
                              SKLEARN_ACTIVATIONS, hidden_sizes, is_norm, is_probability,
                              per_hidden)
from .training import DivergenceError
from .training import fit as _train

__all__ = ["MLPClassifier", "MLPRegressor", "from_sklearn"]

# scikit-learn's adaptive rate stops dividing below this.
_MIN_ADAPTIVE_LR = 1e-6


class _Layers(list):
    """coefs_ or intercepts_: views of the network's weights, one per layer. Assigning an item
    (``est.coefs_[0] = w``) copies w's values into that layer, checked, as scikit-learn's list
    of arrays takes a new array."""

    def __init__(self, views, name):
        super().__init__(views)
        self._name = name

    def __setitem__(self, index, value):
        if isinstance(index, slice):
            raise TypeError(f"{self._name}: assign one layer (est.{self._name}[i] = array) or "
                            f"all of them (est.{self._name} = [...])")
        view = self[index]
        view[...] = _checked_layer(f"{self._name}[{index}]", view, value)


def _checked_layer(name, view, value):
    """value as the layer view's new values: its shape, in the network's dtype, finite."""
    return _validate.converted(name, value, view.shape, view.dtype,
                               "the fitted network's layer")


# -------------------------------------------------------------------------------------------------
# The shared estimator


class _BaseMLP(BaseEstimator):
    """What MLPClassifier and MLPRegressor share: parameters, checks, the training loops."""

    _parameter_constraints = PARAMETER_CONSTRAINTS

    def _check_params(self):
        """scikit-learn's checks of each parameter (InvalidParameterError), unless its
        skip_parameter_validation is set, then what they cannot say: the values per hidden
        layer and the settings that exclude each other."""
        if not get_config()["skip_parameter_validation"]:
            self._validate_params()
        hidden_sizes(self.hidden_layer_sizes)
        if self.matmul_precision != "float32" and self.dtype is not None \
                and np.dtype(self.dtype) != np.float32:
            raise ValueError(f"matmul_precision: {self.matmul_precision!r} is for "
                             f"dtype='float32' (or None), not {self.dtype!r}")
        _, dropout = self._layer_options()   # (norm is checked there too)
        if self.solver == "lbfgs" and any(dropout):
            raise ValueError("dropout: the lbfgs solver needs an objective that does not change "
                             "between evaluations, which dropout's masks do; use solver='sgd' "
                             "or 'adam'")

    def _layer_options(self):
        """(norm, dropout), checked, as lists of one per hidden layer."""
        n_hidden = len(hidden_sizes(self.hidden_layer_sizes))
        norms = " or ".join(map(repr, NORMS))
        return (per_hidden(self, "norm", self.norm, n_hidden, is_norm, f"None, {norms}"),
                [float(p) for p in per_hidden(self, "dropout", self.dropout, n_hidden,
                                              is_probability, "a float in [0, 1)")])

    def _check_residual(self, X):
        """residual=True needs a hidden layer as wide as its input, the first one's being X's
        width: checked before the data are taken in, so that a refused fit changes nothing."""
        try:
            n_features = _num_features(X)
        except TypeError:
            return   # (X is refused by the data checks)
        widths = [n_features] + hidden_sizes(self.hidden_layer_sizes)
        if not any(a == b for a, b in zip(widths[:-1], widths[1:])):
            raise ValueError(f"residual: no hidden layer is as wide as its input (widths "
                             f"{widths}: X's {n_features} features, then hidden_layer_sizes), "
                             "so none can add its input to its output")

    def _compute_dtype(self, X_dtype):
        """The dtype of a new network: the dtype parameter, or scikit-learn's: X's (float32
        or float64, after its conversion) for the stochastic solvers, float64 for L-BFGS
        (scikit-learn's runs on SciPy's float64 point and leaves float64 coefs_ whatever X's
        dtype); float32 under a bfloat16 matmul_precision, which is for float32 networks."""
        if self.dtype is not None:
            return np.dtype(self.dtype).type
        if self.matmul_precision != "float32":
            return np.float32
        if self.solver == "lbfgs":
            return np.float64
        return np.dtype(X_dtype).type

    def _continued_dtype(self):
        """The dtype a warm start or partial_fit trains in: the fitted network's (scikit-learn
        keeps its weights' dtype whatever X's), unless the rules of a new one name another."""
        return self._compute_dtype(self._model.dtype)

    # -- fitted attributes that are views of the model -------------------------------------------

    @property
    def coefs_(self):
        """Weight matrices (n_in, n_out), one per layer: views of the model's parameters.
        Assignable, as scikit-learn's: ``est.coefs_ = [...]`` or ``est.coefs_[i] = w`` copies
        the values into the network (same shapes, cast to its dtype, finite)."""
        return _Layers(self._fitted_model().weights, "coefs_")

    @coefs_.setter
    def coefs_(self, arrays):
        self._assign_layers("coefs_", self._fitted_model().weights, arrays)

    @property
    def intercepts_(self):
        """Bias vectors (n_out,), one per layer: views of the model's parameters. Assignable
        as coefs_ is."""
        return _Layers(self._fitted_model().biases, "intercepts_")

    @intercepts_.setter
    def intercepts_(self, arrays):
        self._assign_layers("intercepts_", self._fitted_model().biases, arrays)

    @staticmethod
    def _assign_layers(name, views, arrays):
        """Every layer's new values checked before any is written: a refusal changes none."""
        arrays = list(arrays)
        if len(arrays) != len(views):
            raise ValueError(f"{name}: expected {len(views)} arrays (one per layer of the "
                             f"fitted network), got {len(arrays)}")
        checked = [_checked_layer(f"{name}[{i}]", view, array)
                   for i, (view, array) in enumerate(zip(views, arrays))]
        for view, values in zip(views, checked):
            view[...] = values

    def _fitted_model(self):
        model = self.__dict__.get("_model")
        if model is None:
            raise NotFittedError("not fitted yet: coefs_ and intercepts_ exist after fit")
        return model

    # -- conversion to scikit-learn's own MLP -------------------------------------------------------

    def to_sklearn(self):
        """This fitted network as scikit-learn's own fitted MLPClassifier or MLPRegressor
        (sklearn.neural_network), with the same weights: its predict, predict_proba and score
        give this estimator's results to rounding (the same classes). The weights are copies,
        in the model's dtype (float32 or float64 arrays, as scikit-learn's are after fitting
        on X of that dtype); scikit-learn computes in X's dtype, so give a float32 network
        float32 X to compute as fastbp does.

        Its parameters are this estimator's wherever scikit-learn has them (copies), but for
        hidden_layer_sizes and activation, which are the fitted network's (scikit-learn reads
        activation at predict). fastbp's own parameters (dtype, clip_norm, n_threads,
        class_weight, and norm, residual, dropout and matmul_precision at their defaults) are
        dropped. The fitted attributes are copied: classes_, n_features_in_ (and
        feature_names_in_), n_outputs_, n_layers_, out_activation_, n_iter_, t_, loss_,
        loss_curve_, best_loss_, validation_scores_, best_validation_score_ (not fastbp's
        validation_loss_curve_). The optimizer's state (Adam's moments, SGD's
        momentum) is not: a partial_fit of the result starts a new optimizer, as a first
        partial_fit does.

        Raises sklearn's NotFittedError before fit, and a ValueError naming all that
        scikit-learn's MLP cannot express: normalisation layers (norm), residual connections,
        dropout (scikit-learn would train on without it), a matmul_precision other than
        "float32" (its predictions would not be these), an activation other than identity,
        logistic, tanh or relu.
        """
        check_is_fitted(self)
        self._check_expressible_in_sklearn()
        sklearn_class = self._sklearn_class
        names = sklearn_class().get_params(deep=False)
        # Copies, so that a RandomState given as random_state is not shared between the two.
        params = copy.deepcopy({name: value for name, value in self.get_params(deep=False).items()
                                if name in names})
        params["hidden_layer_sizes"] = _hidden_param(self.hidden_layer_sizes,
                                                     self._model.sizes[1:-1])
        params["activation"] = self._fitted_activation()
        theirs = sklearn_class(**params)
        _copy_fitted_attributes(self, theirs)
        theirs.coefs_ = [np.array(weight) for weight in self._model.weights]
        theirs.intercepts_ = [np.array(bias) for bias in self._model.biases]
        # scikit-learn's early stopping restores these if no epoch of a warm-started fit
        # improves on best_validation_score_ (its first fit sets them to the initial weights).
        theirs._best_coefs = [coef.copy() for coef in theirs.coefs_]
        theirs._best_intercepts = [intercept.copy() for intercept in theirs.intercepts_]
        return theirs

    def _fitted_activation(self):
        """The fitted network's hidden activation, by the estimator's name (the parameter when
        the network has no hidden layer, whose activation is then never applied)."""
        fitted = self._model.activations
        if not fitted:
            return self.activation
        names = {fastbp_name: name for name, fastbp_name in ACTIVATIONS.items()}
        return names.get(fitted[0], fitted[0])   # (the estimator gives every layer one)

    def _check_expressible_in_sklearn(self):
        model = self._model
        problems = []
        if any(model.norm):
            problems.append(f"norm: it has no normalisation layers (this network's: "
                            f"{model.norm})")
        if model.residual:
            problems.append("residual: it has no residual connections")
        if any(model.dropout):
            problems.append(f"dropout: it has none (this network's: {model.dropout}), and "
                            "would train the weights on without it")
        if model.matmul_precision != "float32":
            problems.append(f"matmul_precision: it multiplies in the weights' dtype, not in "
                            f"{model.matmul_precision!r}, so its predictions would differ")
        activation = self._fitted_activation()
        if activation not in SKLEARN_ACTIVATIONS:
            problems.append(f"activation: it has no {activation!r} (only "
                            f"{', '.join(map(repr, SKLEARN_ACTIVATIONS))})")
        if model.loss != self._loss():
            problems.append(f"loss: the network's is {model.loss!r}, where scikit-learn's is "
                            f"{self._loss()!r} (fastbp's name) for these targets")
        if problems:
            raise ValueError(f"to_sklearn: scikit-learn's {self._sklearn_class.__name__} cannot "
                             f"express this network: {'; '.join(problems)}")

    # -- fit ----------------------------------------------------------------------------------------

    def _fit(self, X, y, sample_weight, incremental):
        self._check_params()
        first = not hasattr(self, "_model") or (not self.warm_start and not incremental)
        if first and self.residual:
            self._check_residual(X)
        X, y = self._validate_input(X, y, incremental, reset=first)
        sample_weight = self._row_weights(X, y, sample_weight)
        dtype = self._compute_dtype(X.dtype) if first else self._continued_dtype()
        X, target = in_dtype(X, self._target(y, dtype), dtype)
        n_outputs = len(self.classes_) if target.ndim == 1 else target.shape[1]
        sizes = [X.shape[1]] + hidden_sizes(self.hidden_layer_sizes) + [n_outputs]
        if not first:
            self._check_continued(sizes)
        self._random_state = check_random_state(self.random_state)
        if first:
            self._initialize(sizes, dtype)
        else:
            self._take_changed_settings(dtype)
        with self._threads():
            if self.solver == "lbfgs":
                detail = self._fit_lbfgs(X, target, sample_weight)
            else:
                detail = self._fit_stochastic(X, target, sample_weight, incremental)
        if not np.isfinite(self._model.params).all():   # (scikit-learn's last check)
            raise ValueError(NON_FINITE + detail)
        return self

    def _row_weights(self, X, y, sample_weight):
        """Each row's weight in the objective (None: all 1)."""
        if sample_weight is None:
            return None
        return _check_sample_weight(sample_weight, X, dtype=np.float64)

    def _check_continued(self, sizes):
        """warm_start and partial_fit continue the fitted network: this call's parameters must
        describe it."""
        model = self._model
        if model.sizes != sizes:
            raise ValueError(f"warm_start and partial_fit continue the fitted network of layer "
                             f"sizes {model.sizes}; this call asks for {sizes}")
        norm, dropout = self._layer_options()
        for name, asked in (("norm", norm), ("dropout", dropout),
                            ("residual", bool(self.residual)),
                            ("matmul_precision", self.matmul_precision)):
            if getattr(model, name) != asked:
                raise ValueError(f"{name}: warm_start and partial_fit continue the fitted "
                                 f"network, whose {name} is {getattr(model, name)}; this call "
                                 f"asks for {asked}")

    def _take_changed_settings(self, dtype):
        """A warm start or partial_fit trains the fitted weights with this call's alpha and
        activation (scikit-learn reads both at every pass) and dtype. fastbp's network has its
        activation and dtype built in: it is rebuilt around the weights when either changed."""
        model = self._model
        activation = ACTIVATIONS[self.activation]
        if model.dtype != dtype or any(name != activation for name in model.activations):
            self._model = rebuilt(model, activation, dtype)
        self._model.l2 = float(self.alpha)

    def _initialize(self, sizes, dtype):
        """A new model, initialised as scikit-learn's is: Glorot uniform weights and biases
        (bound sqrt(6 / (fan_in + fan_out)), sqrt(2 / ...) for logistic), drawn from
        random_state in scikit-learn's order, so that a seed gives its initial weights. The
        normalisations start at scale 1 and shift 0."""
        factor = 2.0 if self.activation == "logistic" else 6.0
        draws = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = np.sqrt(factor / (fan_in + fan_out))
            draws.append((self._random_state.uniform(-bound, bound, (fan_in, fan_out)),
                          self._random_state.uniform(-bound, bound, fan_out)))
        norm, dropout = self._layer_options()
        # The dropout masks' key comes from random_state too: drawn after the weights (so
        # that dropout leaves them as they are) and only with dropout (so that without it
        # every draw is scikit-learn's).
        seed = int(self._random_state.randint(np.iinfo(np.int32).max)) if any(dropout) else 0
        self._model = MLP(sizes, activation=ACTIVATIONS[self.activation], loss=self._loss(),
                          dtype=dtype, seed=seed, l2=float(self.alpha), norm=norm,
                          residual=bool(self.residual), dropout=dropout,
                          matmul_precision=self.matmul_precision)
        for weight, bias, (weight_draw, bias_draw) in zip(self._model.weights,
                                                          self._model.biases, draws):
            weight[...], bias[...] = weight_draw, bias_draw
        self.n_outputs_ = sizes[-1]
        self.n_layers_ = len(sizes)
        self.out_activation_ = self._output_activation()
        self.n_iter_ = 0
        self.t_ = 0
        if self.solver != "lbfgs":
            self.loss_curve_ = []
            self._no_improvement_count = 0
            if self.early_stopping:
                self.validation_scores_ = []
                self.validation_loss_curve_ = []
                self.best_validation_score_ = -np.inf
                self.best_loss_ = None
            else:
                self.best_loss_ = np.inf
                self.validation_scores_ = None
                self.validation_loss_curve_ = None
                self.best_validation_score_ = None

    @contextmanager
    def _threads(self):
        """fastbp's thread count for this fit: n_threads, or fastbp's default (the cores that
        other processes leave free, at most all of them, or NUMBA_NUM_THREADS, as joblib's
        worker processes set it)."""
        if self.n_threads is None:
            yield
            return
        import numba
        with _threads.chosen_count(min(int(self.n_threads), numba.config.NUMBA_NUM_THREADS)):
            yield

    def _new_optimizer(self):
        model = self._model
        if self.solver == "sgd":
            return SGD(model, self.learning_rate_init, momentum=self.momentum,
                       nesterov=self.nesterovs_momentum and self.momentum > 0,
                       clip_norm=self.clip_norm)
        return Adam(model, self.learning_rate_init, betas=(self.beta_1, self.beta_2),
                    eps=self.epsilon, clip_norm=self.clip_norm)

    def _check_batch_norm_rows(self, n_samples):
        if n_samples < 2 and "batch" in self._model.norm:
            raise ValueError(f"X: batch normalisation (norm='batch') trains on 2 rows or more, "
                             f"got n_samples = {n_samples}")

    def _batch_size(self, n_samples):
        self._check_batch_norm_rows(n_samples)
        batch_norm = "batch" in self._model.norm
        if self.batch_size == "auto":
            batch = min(200, n_samples)
            # Batch normalisation cannot train on a batch of 1 row: "auto" then takes the next
            # size that leaves none (scikit-learn's size wherever it leaves none).
            while batch_norm and n_samples % batch == 1:
                batch += 1
            return batch
        if self.batch_size > n_samples:
            warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going "
                          "to be clipped")
        batch = int(np.clip(self.batch_size, 1, n_samples))
        if batch_norm and 1 in (batch, n_samples % batch):
            raise ValueError(f"batch_size: batch normalisation (norm='batch') needs at least 2 "
                             f"rows in every training batch; the {n_samples} training rows in "
                             f"batches of {batch} leave a batch of 1 row. Choose a batch_size "
                             "that leaves none, or 'auto', which does")
        return batch

    def _fit_stochastic(self, X, target, sample_weight, incremental):
        """scikit-learn's epochs, their steps in fastbp's compiled chunks. Returns fastbp's
        detail of a divergence, for the message of non-finite weights ("" without one)."""
        if not incremental or not hasattr(self, "_optimizer"):
            self._optimizer = self._new_optimizer()
        elif self._optimizer.model is not self._model:   # (rebuilt: a new activation or dtype)
            self._optimizer = moved_optimizer(self._optimizer, self._model)
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        validation = None
        if self.early_stopping:
            X, target, sample_weight, validation = self._hold_out(X, target, sample_weight)
        batch_size = self._batch_size(X.shape[0])
        self.n_iter_ = 0   # each call counts its own epochs, as scikit-learn's (t_ goes on)
        epochs = _Epochs(self, validation, X.shape[0], incremental)
        seed = int(self._random_state.randint(np.iinfo(np.int32).max))
        detail = ""
        try:
            history = _train(self._model, X, target, self._optimizer,
                             epochs=epochs.n_epochs, batch_size=batch_size, shuffle=self.shuffle,
                             seed=seed, callbacks=[epochs], sample_weight=sample_weight,
                             metrics_rows=0)   # scikit-learn scores no training accuracy
            if history.interrupted:
                warnings.warn("Training interrupted by user.")
        except DivergenceError as exc:
            # fastbp refuses the step; scikit-learn takes it, and its weights are non-finite
            # from there on: so are these, for the epochs scikit-learn goes on with.
            detail = f" (fastbp: {str(exc).removesuffix('; parameters left unchanged')})"
            self._model.params[...] = np.nan
            epochs.finish_diverged()
        if self.early_stopping:   # (written, not assigned: the best may be NaN, as scikit-learn's)
            self._model.params[...] = epochs.best_params
            self._model.engine.running[...] = epochs.best_running
        if not incremental and not epochs.stopped and self.n_iter_ == self.max_iter:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached "
                          "and the optimization hasn't converged yet.", ConvergenceWarning)
        return detail

    def _hold_out(self, X, target, sample_weight):
        """(X, target, sample_weight) to train on, and the validation rows (X, target, weights):
        scikit-learn's split, its own train_test_split drawing from random_state after the
        initial weights, stratified where scikit-learn stratifies: a classifier's single output
        (binary targets; a multiclass target is one output per class to it, and it does not
        stratify multilabel targets)."""
        stratify = target.astype(bool) if is_classifier(self) and self.n_outputs_ == 1 else None
        arrays = (X, target) if sample_weight is None else (X, target, sample_weight)
        parts = train_test_split(*arrays, random_state=self._random_state,
                                 test_size=self.validation_fraction, stratify=stratify)
        X, X_val, target, y_val = parts[:4]
        sample_weight, val_weight = parts[4:] if sample_weight is not None else (None, None)
        if X_val.shape[0] < 2:
            raise ValueError("The validation set is too small. Increase 'validation_fraction' "
                             "or the size of your dataset.")
        return X, target, sample_weight, (X_val, y_val, val_weight)

    def _validation_scores(self, X, y, weights):
        """(score, loss) of the network on the validation rows, from one forward pass:
        scikit-learn's score (accuracy or R^2, weighted; NaN where scikit-learn's is), and the
        mean data loss of loss_curve_ (weighted likewise; without the alpha penalty)."""
        outputs, losses = self._model.forward_and_losses(X, y)
        return self._score_outputs(outputs, y, weights), float(np.average(losses,
                                                                          weights=weights))

    def _fit_lbfgs(self, X, target, sample_weight):
        """Full-batch L-BFGS (SciPy's L-BFGS-B, as scikit-learn) over fastbp's loss and
        gradient: each evaluation writes the point into the model's parameter buffer and reads
        the gradient from its gradient buffer. A sparse X is evaluated in chunks of
        _sklearn_convert.LBFGS_CHUNK rows (the gradient accumulated as fit's accumulate does),
        never densified whole, but
        under batch normalisation, whose statistics are the whole batch's. Returns "" (no
        detail for the message of non-finite weights)."""
        model = self._model
        X, target = model.engine.check_batch(X, target)
        weights = _validate.sample_weight(sample_weight, X.shape[0])
        self._check_batch_norm_rows(X.shape[0])
        in_chunks = isinstance(X, _validate.SparseRows) and "batch" not in model.norm
        evaluate = chunked(model, X, target, weights) if in_chunks else \
            (lambda: model.engine.loss_and_grad(X, target, weights))

        def loss_and_grad(point):
            model.params[...] = point
            return evaluate(), model.grads.astype(np.float64)

        result = scipy.optimize.minimize(
            loss_and_grad, model.params.astype(np.float64), method="L-BFGS-B", jac=True,
            options={"maxfun": self.max_fun, "maxiter": self.max_iter, "gtol": self.tol})
        if result.status != 0:
            warnings.warn(f"lbfgs failed to converge after {result.nit} iteration(s) "
                          f"(status={result.status}): {result.message}. Increase the number of "
                          "iterations (max_iter) or scale the data.", ConvergenceWarning)
        self.n_iter_ = min(int(result.nit), self.max_iter)
        self.loss_ = float(result.fun)
        with np.errstate(over="ignore", invalid="ignore"):
            model.params[...] = result.x   # (written: fit refuses a non-finite point after)
        return ""

    # -- prediction -----------------------------------------------------------------------------

    def _checked_X(self, X):
        """X after scikit-learn's checks, in the model's dtype (a sparse X stays sparse)."""
        check_is_fitted(self)
        X = validate_data(self, X, accept_sparse=["csr", "csc"],
                          dtype=(np.float64, np.float32), reset=False)
        return X.astype(self._model.dtype, copy=False)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags

    def _check_solver(self):
        if self.solver not in ("sgd", "adam"):
            raise AttributeError(f"partial_fit is only available for stochastic optimizers. "
                                 f"{self.solver} is not stochastic.")
        return True


class _Epochs:
    """fit's epoch callback: scikit-learn's bookkeeping after each epoch (loss_curve_, t_,
    n_iter_, validation_scores_ and validation_loss_curve_), its learning-rate rules (SGD's)
    and its stopping rule (n_iter_no_change epochs without an improvement by tol, of the
    training loss or, with early_stopping, the validation score)."""

    def __init__(self, estimator, validation, n_train, incremental):
        self.estimator, self.validation = estimator, validation
        self.n_train, self.incremental = n_train, incremental
        self.n_epochs = 1 if incremental else estimator.max_iter
        self.best_params = estimator._model.params.copy()
        self.best_running = estimator._model.engine.running.copy()
        self.stopped = False

    def on_epoch_end(self, epoch, history, model):
        return self.end_epoch(history["loss"][-1])

    def finish_diverged(self):
        """The epochs scikit-learn goes on with after its weights became non-finite (they
        stay so): from the epoch that diverged on, each records a NaN loss and the scores of
        a non-finite network until the stopping rule or max_iter ends them. (A NaN validation
        score, a regressor's, never counts as a lack of improvement, so that such a fit runs
        to max_iter: scikit-learn issue 29504.)"""
        while self.estimator.n_iter_ < self.n_epochs:
            if self.end_epoch(np.nan):
                return

    def end_epoch(self, loss):
        """The bookkeeping of an epoch whose loss_ is loss; True to stop."""
        est = self.estimator
        est.n_iter_ += 1
        est.loss_ = loss
        est.t_ += self.n_train
        est.loss_curve_.append(loss)
        if est.verbose:
            print(f"Iteration {est.n_iter_}, loss = {loss:.8f}")
        self._count_no_improvement(est)
        opt = est._optimizer
        sgd = est.solver == "sgd"   # (scikit-learn's learning_rate rules are SGD's only)
        if sgd and est.learning_rate == "invscaling":
            opt.lr = est.learning_rate_init / (est.t_ + 1) ** est.power_t
        if est._no_improvement_count > est.n_iter_no_change:
            watched = "Validation score" if est.early_stopping else "Training loss"
            message = (f"{watched} did not improve more than tol={est.tol:f} for "
                       f"{est.n_iter_no_change} consecutive epochs.")
            if sgd and est.learning_rate == "adaptive" and opt.lr > _MIN_ADAPTIVE_LR:
                opt.lr = opt.lr / 5.0
                if est.verbose:
                    print(f"{message} Setting learning rate to {opt.lr:f}")
                est._no_improvement_count = 0
            else:
                if est.verbose:
                    small = sgd and est.learning_rate == "adaptive"
                    print(message + (" Learning rate too small." if small else "") + " Stopping.")
                self.stopped = True
                return True
        return self.incremental

    def _count_no_improvement(self, est):
        if est.early_stopping:
            score, loss = est._validation_scores(*self.validation)
            est.validation_scores_.append(score)
            est.validation_loss_curve_.append(loss)
            if est.verbose:
                print(f"Validation score: {score:f}")
            if score < est.best_validation_score_ + est.tol:
                est._no_improvement_count += 1
            else:
                est._no_improvement_count = 0
            if score > est.best_validation_score_:
                est.best_validation_score_ = score
                self.best_params = est._model.params.copy()
                self.best_running = est._model.engine.running.copy()
        else:
            if est.loss_curve_[-1] > est.best_loss_ - est.tol:
                est._no_improvement_count += 1
            else:
                est._no_improvement_count = 0
            est.best_loss_ = min(est.best_loss_, est.loss_curve_[-1])


# -------------------------------------------------------------------------------------------------
# The classifier


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """scikit-learn's MLPClassifier, trained by fastbp (see the module docstring).

    Multiclass targets train a softmax output with cross-entropy; binary and multilabel
    (indicator matrix) targets logistic outputs with binary cross-entropy, as scikit-learn.
    to_sklearn() gives scikit-learn's own fitted MLPClassifier, from_sklearn() takes one.

    Parameters beyond scikit-learn's
    --------------------------------
    dtype : None, "float32" or "float64"
        The precision of the weights and the arithmetic. None (the default): scikit-learn's,
        X's dtype (float32 X: float32; float64 X, and any other that scikit-learn converts,
        float64), and float64 for solver="lbfgs" (scikit-learn's L-BFGS leaves float64
        coefs_ whatever X's dtype). A warm start or partial_fit goes on in the fitted
        network's dtype whatever X's (as scikit-learn's weights keep theirs), unless dtype
        names another: the network is then converted to it.
    clip_norm, n_threads : see the module docstring.
    norm : None, "layer" or "batch", or a list of one per hidden layer
        Normalisation of each hidden layer's product before its activation (PyTorch's
        LayerNorm or BatchNorm1d; see fastbp.MLP). Batch normalisation trains on batches of 2
        rows or more: with it, batch_size="auto" takes the size after min(200, n_samples)
        that leaves no batch of 1 row, and a batch_size that leaves one is refused.
    residual : bool
        Hidden layers as wide as their input add it to their output; True needs one.
    dropout : float in [0, 1), or a list of one per hidden layer
        Dropout after each hidden activation, when training (predict does not drop). Its
        masks are keyed by a seed drawn from random_state. Not with solver="lbfgs".
    matmul_precision : "float32", "bfloat16" or "bfloat16-emulated"
        The matrix products' operands (fastbp.MLP's): "bfloat16" rounds them to bfloat16 and
        sums in float32 on the CPU's bfloat16 units, in a float32 network (dtype None or
        "float32").
    class_weight : None, "balanced", a dict {class: weight}, or a list of dicts
        Weights of the classes in the objective, as scikit-learn's other classifiers define
        them (sklearn.utils.class_weight.compute_sample_weight of y): each row's is its class's,
        multiplied with its sample_weight. "balanced": n_samples / (n_classes * the class's
        count in y). Multilabel targets: "balanced" (per label, the weights multiplied), or a
        list of one dict per label, {0: w0, 1: w1}. The validation rows of early stopping are
        weighted alike. partial_fit refuses "balanced" (one call's rows do not give the
        classes' frequencies), as SGDClassifier's does.

    Attributes beyond scikit-learn's
    --------------------------------
    validation_loss_curve_ : list of float, or None
        With early_stopping: the validation rows' loss after each epoch, beside
        validation_scores_: the data loss of loss_curve_ (log-loss), without the alpha
        penalty, weighted as the score is. None without early_stopping.
    """

    # scikit-learn's own estimator (to_sklearn's); not a parameter.
    _sklearn_class = neural_network.MLPClassifier
    _parameter_constraints = {**PARAMETER_CONSTRAINTS,
                              "class_weight": [None, StrOptions({"balanced"}), dict, list]}

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 dtype=None, clip_norm=None, n_threads=None, norm=None, residual=False,
                 dropout=0.0, matmul_precision="float32", class_weight=None):
        for name, value in locals().items():
            if name != "self":
                setattr(self, name, value)

    def _multiclass(self):
        return self._label_binarizer.y_type_ == "multiclass"

    def _loss(self):
        return "softmax_cross_entropy" if self._multiclass() else "binary_cross_entropy"

    def _output_activation(self):
        return "softmax" if self._multiclass() else "logistic"

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                             dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer().fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError(f"warm_start can only be used where `y` has the same "
                                     f"classes as in the previous call to fit. Previously got "
                                     f"{self.classes_}, `y` has {classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has "
                                 f"{self.classes_}. 'y' has {classes}.")
        return X, y

    def _target(self, y, dtype):
        """The network's targets: class indices (softmax), or the label indicators."""
        if self._multiclass():
            return np.searchsorted(self.classes_, y).astype(np.int64)
        return self._label_binarizer.transform(y).astype(dtype)

    def _row_weights(self, X, y, sample_weight):
        weights = super()._row_weights(X, y, sample_weight)
        if self.class_weight is None:
            return weights
        by_class = compute_sample_weight(self.class_weight, y)
        return by_class if weights is None else weights * by_class

    def _score_outputs(self, outputs, y, weights):
        """scikit-learn's validation score: the accuracy of predict's labels."""
        truth = self._label_binarizer.inverse_transform(y) if y.ndim == 2 else self.classes_[y]
        return accuracy_score(truth, self._labels(outputs), sample_weight=weights)

    def _labels(self, outputs):
        """predict's labels for the network's outputs (logits); for outputs that overflowed,
        scikit-learn's: its softmax of a row holding a NaN or +Inf is NaN throughout, whose
        argmax is the first class, and a NaN probability is not above 1/2."""
        kind = kernels.LOSS_KINDS[self._model.loss]
        if self._multiclass():
            overflowed = np.isnan(outputs).any(axis=1) | np.isposinf(outputs).any(axis=1)
            return self.classes_[np.where(overflowed, 0, kind.predictions(outputs))]
        probabilities = outputs
        kind.proba(probabilities, outputs)   # (in place)
        if self.n_outputs_ == 1:
            probabilities = probabilities.ravel()
        return self._label_binarizer.inverse_transform(probabilities)

    def fit(self, X, y, sample_weight=None):
        """Fit the model to data matrix X and target(s) y (class labels, or a label indicator
        matrix for multilabel classification), each row weighted by ``sample_weight`` (and
        by its class's ``class_weight``) when given (scikit-learn's weighted loss). Returns
        self."""
        return self._fit(X, y, sample_weight, incremental=False)

    @available_if(lambda est: est._check_solver())
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over (X, y). ``classes``, all the classes of the task, is required on the
        first call. Returns self."""
        if isinstance(self.class_weight, str) and self.class_weight == "balanced":
            raise ValueError("class_weight 'balanced' is not supported for partial_fit. In "
                             "order to use 'balanced' weights, use compute_class_weight("
                             "'balanced', classes=classes, y=y). In place of y you can use a "
                             "large enough sample of the full training set target to properly "
                             "estimate the class frequency distributions. Pass the resulting "
                             "weights as the class_weight parameter.")
        if _check_partial_fit_first_call(self, classes):
            self._label_binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                self._label_binarizer.fit(y)
            else:
                self._label_binarizer.fit(classes)
        return self._fit(X, y, sample_weight, incremental=True)

    def predict(self, X):
        """Class labels (n_samples,), or an indicator matrix for multilabel targets."""
        return self._predict_checked(self._checked_X(X))

    def _predict_checked(self, X):
        if self._multiclass():
            return self.classes_[self._model.predict(X)]
        probabilities = self._model.predict_proba(X)
        if self.n_outputs_ == 1:
            probabilities = probabilities.ravel()
        return self._label_binarizer.inverse_transform(probabilities)

    def predict_proba(self, X):
        """Probability of each class (n_samples, n_classes), in the order of classes_."""
        X = self._checked_X(X)
        probabilities = self._model.predict_proba(X)
        if self.n_outputs_ == 1:
            return np.hstack([1 - probabilities, probabilities])
        return probabilities

    def predict_log_proba(self, X):
        """The logarithm of predict_proba."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


# -------------------------------------------------------------------------------------------------
# The regressor


class MLPRegressor(RegressorMixin, _BaseMLP):
    """scikit-learn's MLPRegressor (squared error, identity output), trained by fastbp (see the
    module docstring). to_sklearn() gives scikit-learn's own fitted MLPRegressor,
    from_sklearn() takes one.

    Parameters beyond scikit-learn's
    --------------------------------
    dtype, clip_norm, n_threads : see the module docstring and MLPClassifier's.
    norm, residual, dropout, matmul_precision : the hidden layers' normalisation, residual
        connections and dropout, and the products' precision, as MLPClassifier's (see its
        docstring).

    Attributes beyond scikit-learn's
    --------------------------------
    validation_loss_curve_ : list of float, or None
        With early_stopping: the validation rows' loss after each epoch (the squared-error
        data loss of loss_curve_, without the alpha penalty); None without.
    """

    # scikit-learn's own estimator (to_sklearn's); not a parameter.
    _sklearn_class = neural_network.MLPRegressor
    _parameter_constraints = {**PARAMETER_CONSTRAINTS,
                              "loss": neural_network.MLPRegressor._parameter_constraints["loss"]}

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *,
                 solver="adam", alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 dtype=None, clip_norm=None, n_threads=None, norm=None, residual=False,
                 dropout=0.0, matmul_precision="float32"):
        for name, value in locals().items():
            if name != "self":
                setattr(self, name, value)

    def _check_params(self):
        super()._check_params()
        if self.loss != "squared_error":
            raise ValueError(f"loss: fastbp's MLPRegressor supports 'squared_error' only, got "
                             f"{self.loss!r}")

    def _loss(self):
        return "mse"

    def _output_activation(self):
        return "identity"

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                             y_numeric=True, dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return X, y

    def _target(self, y, dtype):
        return y.reshape(-1, 1) if y.ndim == 1 else y

    def _score_outputs(self, outputs, y, weights):
        """scikit-learn's validation score: R^2, or NaN for outputs that overflowed (its
        _score_with_function's rule)."""
        if not np.isfinite(outputs).all():
            return np.nan
        return r2_score(y, outputs, sample_weight=weights)

    def fit(self, X, y, sample_weight=None):
        """Fit the model to data matrix X and targets y, each row weighted by ``sample_weight``
        when given (scikit-learn's weighted loss). Returns self."""
        return self._fit(X, y, sample_weight, incremental=False)

    @available_if(lambda est: est._check_solver())
    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y). Returns self."""
        return self._fit(X, y, sample_weight, incremental=True)

    def predict(self, X):
        """Predicted values (n_samples,), or (n_samples, n_outputs) for several outputs."""
        X = self._checked_X(X)
        values = self._model.predict(X)
        return values.ravel() if self.n_outputs_ == 1 else values


# -------------------------------------------------------------------------------------------------
# Conversion from scikit-learn's own MLPs (to them: the estimators' to_sklearn)

# The fitted attributes that the two libraries' estimators share, copied either way (the
# weights apart). _no_improvement_count is the stopping rule's count, which warm_start and
# partial_fit go on with, as loss_curve_ and best_loss_.
_FITTED_ATTRIBUTES = ("n_features_in_", "feature_names_in_", "n_outputs_", "n_layers_",
                      "out_activation_", "n_iter_", "t_", "loss_", "loss_curve_", "best_loss_",
                      "validation_scores_", "best_validation_score_", "_no_improvement_count",
                      "_label_binarizer")


def from_sklearn(estimator):
    """fastbp's fitted MLPClassifier or MLPRegressor from scikit-learn's own fitted one
    (sklearn.neural_network), with the same weights (coefs_ and intercepts_ bitwise) and
    parameters (wherever both have them; copies): predict, predict_proba and score give
    scikit-learn's results to rounding. The estimator's dtype is its weights' (float32 or
    float64). Its fitted attributes are copied as to_sklearn copies them; fit with
    warm_start=True and partial_fit continue training from these weights, with a new optimizer
    (scikit-learn's optimizer state is not carried over).

    Raises TypeError for anything but scikit-learn's MLPClassifier or MLPRegressor, sklearn's
    NotFittedError before its fit, and ValueError naming what fastbp's estimator cannot take:
    loss="poisson" (or its "exp" output), weights not all float32 or all float64, weights that
    are not finite or whose shapes do not chain, a parameter fastbp's fit would refuse.
    """
    ours_class = _fastbp_class(estimator)
    check_is_fitted(estimator, ["coefs_", "intercepts_"])
    dtype = _weights_dtype(estimator)
    sizes = _fitted_sizes(estimator)
    names = ours_class().get_params(deep=False)
    params = copy.deepcopy({name: value for name, value
                            in estimator.get_params(deep=False).items() if name in names})
    params["hidden_layer_sizes"] = _hidden_param(params["hidden_layer_sizes"], sizes[1:-1])
    ours = ours_class(**params, dtype=dtype.name)
    ours._check_params()   # (names scikit-learn's settings that fastbp has not: loss="poisson")
    _copy_fitted_attributes(estimator, ours)
    if estimator.out_activation_ != ours._output_activation():
        raise ValueError(f"out_activation_: the network's outputs are "
                         f"{estimator.out_activation_!r}; fastbp's {ours_class.__name__} has "
                         f"{ours._output_activation()!r} outputs for these targets")
    ours._model = MLP(sizes, activation=ACTIVATIONS[ours.activation], loss=ours._loss(),
                      dtype=dtype.type, seed=0, l2=float(ours.alpha))
    if hasattr(ours, "validation_scores_"):   # (scikit-learn keeps no validation losses)
        scores = ours.validation_scores_
        ours.validation_loss_curve_ = None if scores is None else [np.nan] * len(scores)
    for weight, bias, coef, intercept in zip(ours._model.weights, ours._model.biases,
                                             estimator.coefs_, estimator.intercepts_):
        weight[...], bias[...] = coef, intercept
    return ours


def _fastbp_class(estimator):
    for ours_class in (MLPClassifier, MLPRegressor):
        if isinstance(estimator, ours_class._sklearn_class):
            return ours_class
    raise TypeError(f"from_sklearn: expected scikit-learn's MLPClassifier or MLPRegressor "
                    f"(sklearn.neural_network), got {type(estimator).__module__}."
                    f"{type(estimator).__qualname__}")


def _weights_dtype(estimator):
    arrays = list(estimator.coefs_) + list(estimator.intercepts_)
    dtypes = {np.asarray(array).dtype for array in arrays}
    if len(dtypes) != 1 or next(iter(dtypes)) not in (np.float32, np.float64):
        raise ValueError(f"coefs_, intercepts_: fastbp's weights are all float32 or all "
                         f"float64; these are {', '.join(sorted(map(str, dtypes)))}")
    return next(iter(dtypes))


def _fitted_sizes(estimator):
    """The layer widths that coefs_ and intercepts_ describe, input first, checked."""
    coefs, intercepts = list(estimator.coefs_), list(estimator.intercepts_)
    shapes = [np.shape(coef) for coef in coefs]
    bias_shapes = [np.shape(intercept) for intercept in intercepts]
    chained = shapes and all(len(shape) == 2 for shape in shapes)
    sizes = [shapes[0][0]] + [shape[1] for shape in shapes] if chained else []
    if (not chained or shapes != list(zip(sizes[:-1], sizes[1:]))
            or bias_shapes != [(size,) for size in sizes[1:]]):
        raise ValueError(f"coefs_, intercepts_: shapes {shapes} and {bias_shapes} are not the "
                         "layers of a network")
    if not all(np.isfinite(array).all() for array in coefs + intercepts):
        raise ValueError("coefs_, intercepts_: contain NaN or Inf")
    return [int(size) for size in sizes]


def _hidden_param(asked, fitted):
    """hidden_layer_sizes for a converted estimator: the parameter as it was (an int stays an
    int) if it describes the fitted network, else the network's sizes. (set_params after fit
    changes the parameter, not the network; the converted estimator describes the network, so
    that warm_start continues it.)"""
    try:
        same = hidden_sizes(asked) == list(fitted)
    except (TypeError, ValueError):
        same = False
    return asked if same else tuple(fitted)


def _copy_fitted_attributes(source, target):
    for name in _FITTED_ATTRIBUTES:
        if hasattr(source, name):
            setattr(target, name, copy.deepcopy(getattr(source, name)))
    if hasattr(target, "_label_binarizer"):   # (one array, as each library's fit leaves it)
        target.classes_ = target._label_binarizer.classes_
