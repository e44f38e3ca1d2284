"""Predictions from a model file: ``fastbp.load_predictor(path)``.

A model (``fastbp.load``) takes scaled features and gives class indices or standardised
targets. The metadata that ``fastbp train --save`` stores beside it records the rest: the
features' scaling (``offset``, ``scale``), the ``task``, the ``class_names``, and for a regression
the targets' scaling (``target_offset``, ``target_scale``). A :class:`Predictor` applies them, so
that it takes rows as the data file holds them and answers in the data's own terms. A field
that a file lacks (one saved from Python without metadata) means no transform: features taken
as they are, classes named 0..C-1, targets as the model outputs them, task classification.
"""
import math

import numpy as np

from . import kernels
from .data import TASKS, restore_targets
from .data.prepare import apply_scaling
from .io import ModelFileError, load, read_metadata

__all__ = ["Predictor", "load_predictor", "class_indices"]


def load_predictor(path, matmul_precision=None):
    """The Predictor of a model file written by ``fastbp train --save`` (or ``fastbp.save``).
    Raises ModelFileError (one line) when the file or its metadata does not fit.
    matmul_precision: as fastbp.load's (None: the model's)."""
    return Predictor(load(path, matmul_precision), read_metadata(path), what=str(path))


def class_indices(model, X):
    """The class of each row of scaled features X: the model's own prediction for a loss on
    labels; else its largest output (one output per class, trained on one-hot targets), or
    with a single output, whether it is above the loss's threshold (0/1 targets, as fit scores
    them)."""
    kind = kernels.LOSS_KINDS[model.loss]
    if kind.targets == "labels":
        return model.predict(X)
    if model.sizes[-1] == 1:
        return (model.forward(X)[:, 0] > kind.threshold).astype(np.int64)
    return model.forward(X).argmax(axis=1)


class Predictor:
    """A trained model and the transforms its metadata records (see the module docstring).

    ``model``, ``task`` ("classification" or "regression"), ``n_features``, ``class_names``
    (classification; else empty), ``label_column`` (the CSV column that held the label when
    the model was trained: -1 where the file does not say).
    """

    def __init__(self, model, metadata, what="model"):
        self.model = model
        self.task = metadata.get("task", "classification")
        if self.task not in TASKS:
            raise ModelFileError(f"{what}: metadata: task {self.task!r:.40} is not one of "
                                 f"{', '.join(TASKS)}")
        n_in, n_out = model.sizes[0], model.sizes[-1]
        self.offset = _numbers(metadata, "offset", n_in, 0.0, what)
        self.scale = _numbers(metadata, "scale", n_in, 1.0, what, positive=True)
        self.class_names = []
        if self.task == "classification":
            self.class_names = _class_names(metadata, max(n_out, 2), what)
        else:
            self.target_offset = _numbers(metadata, "target_offset", n_out, 0.0, what)
            self.target_scale = _numbers(metadata, "target_scale", n_out, 1.0, what,
                                         positive=True)
        run = metadata.get("run")
        column = run.get("label_column", -1) if isinstance(run, dict) else -1
        # (several target columns are saved as a JSON list)
        self.label_column = tuple(column) if isinstance(column, list) else column

    @property
    def n_features(self):
        return self.model.sizes[0]

    def predict(self, X):
        """For rows of raw features X (N, n_features): the class names (N,) of a classifier (a
        NumPy text array), or the targets (N, n_targets) float64 of a regression, in their
        own units."""
        scaled = self._scaled(X)
        if self.task == "regression":
            return restore_targets(self.model.predict(scaled), self.target_offset,
                                   self.target_scale)
        return np.asarray(self.class_names)[class_indices(self.model, scaled)]

    def predict_proba(self, X):
        """Class probabilities (N, C), columns in the order of ``class_names``: the model's
        predict_proba (softmax cross-entropy: rows summing to 1; binary cross-entropy: each
        class's sigmoid, one-vs-rest; a single output p of two classes: 1 - p and p, as
        scikit-learn gives them). ValueError for a regression, or a loss that gives no
        probabilities (MSE, Huber)."""
        if self.task == "regression":
            raise ValueError("predict_proba: a regression model predicts values, not class "
                             "probabilities")
        probabilities = self.model.predict_proba(self._scaled(X))
        if self.one_output_two_classes:
            return np.hstack([1 - probabilities, probabilities])
        return probabilities

    @property
    def one_output_two_classes(self):
        """Whether the model has a single output for two classes (its probability of the
        second): predict_proba then gives both columns, 1 - p and p."""
        return self.model.sizes[-1] == 1 and len(self.class_names) == 2

    def _scaled(self, X):
        """X scaled as the training rows were, in the model's dtype."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"X: expected rows of {self.n_features} features (N, "
                             f"{self.n_features}), got shape {X.shape}")
        return apply_scaling(X, self.offset, self.scale, np.dtype(self.model.dtype), "X")


def _numbers(metadata, key, length, absent, what, positive=False):
    """metadata[key] as a float64 array of length numbers (each ``absent`` when the key is
    missing), checked: finite, and above 0 when ``positive``."""
    value = metadata.get(key)
    if value is None:
        return np.full(length, absent)
    ok = isinstance(value, list) and len(value) == length and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        and (v > 0 or not positive) for v in value)
    if not ok:
        kind = "positive numbers" if positive else "finite numbers"
        raise ModelFileError(f"{what}: metadata: {key} should be {length} {kind}, one per "
                             f"{'feature' if 'target' not in key else 'output'}")
    return np.array(value, dtype=np.float64)


def _class_names(metadata, n_outputs, what):
    """The saved class names (one per output; two for a single 0/1 output), or 0..C-1 where
    none were saved."""
    names = metadata.get("class_names")
    if names is None:
        return [str(c) for c in range(n_outputs)]
    if not isinstance(names, list) or len(names) != n_outputs \
            or not all(isinstance(name, str) for name in names):
        raise ModelFileError(f"{what}: metadata: class_names should be {n_outputs} names, one "
                             "per class")
    return names
