"""Data sets for training: the shipped digits, MNIST and Fashion-MNIST, and your own files.

``load(source)`` returns a :class:`Dataset` with training, validation and test rows, ready for
``fastbp.fit``. ``source`` is one of

- ``"digits"``: the UCI optical handwritten digits shipped with fastbp (1,797 8x8 images, values
  0..16; see data/README.md for their origin and licence). No network.
- ``"mnist"`` or ``"fashion-mnist"``: the four IDX files of each set (28x28 images, values
  0..255, 60,000 training and 10,000 test images). With ``data_dir`` they are read from that
  folder only (``train-images-idx3-ubyte`` and so on, gzipped or not). Without it they are taken
  from the cache folder (``$FASTBP_CACHE_DIR``, else ``$XDG_CACHE_HOME/fastbp``, else
  ``~/.cache/fastbp``), downloaded there first from a public mirror when missing; every cached
  file is checked against its published SHA-256 before use.
- a path to a ``.npz`` file holding arrays ``X`` (samples first; any further axes are flattened)
  and ``y`` (integer class labels), and optionally ``X_test`` and ``y_test``. Read without
  pickle: object arrays are refused.
- a path to a ``.csv`` (or ``.csv.gz``) file: one sample per line, comma-separated numbers, the
  label in column ``label_column``: its index (default -1, the last) or its name in the header;
  for a regression (``task="regression"``), a tuple of them for several target columns.
  A first line that names columns is taken as a header: a feature field that is not a number,
  or a label that is a name where every later label is a number (pandas writes ``0,1,2,label``
  for integer column names), or a name that never appears again in the label column after the
  features ``0,1,...`` (see ``files._is_header``). Labels are whole numbers 0..C-1, or
  names (any non-numeric text), which become classes 0..C-1 in sorted order. A label column
  that looks like a feature is refused with :class:`LabelColumnError`: numbers that are not
  whole, or more distinct values than half its rows (``MAX_CLASSES_PER_ROW``: classes of fewer
  than 2 rows on average, which the stratified splits cannot share out).

Regression (``task="regression"``): the label column of a .csv (or a .npz's ``y``, which may
have one column per target) holds numbers, the targets, which are standardised like features
(the transform in ``Dataset.target_offset`` and ``target_scale``).

Splits (reproducible): the test rows are the official test set when there is one (MNIST,
Fashion-MNIST, ``X_test``/``y_test`` in a .npz); otherwise a stratified ``test_fraction`` of the
rows, drawn with a fixed seed so that every run is scored on the same rows. The validation rows
are a stratified ``val_fraction`` of the remaining training rows, drawn with ``seed``.

Scaling (``scaling="auto"``): MNIST and Fashion-MNIST pixels are divided by 255 ("unit": every
feature in [0, 1]); the digits and features read from .npz and .csv files are standardised
("standard": each column has its mean subtracted and is divided by its standard deviation, both
measured on the training rows only; constant columns are only centred). These are the choices
that trained best in our measurements (standardising MNIST's pixels, many of them almost always
zero, cost about half a point of test accuracy; on the 8x8 digits it gained nearly a point).
``scaling`` may also be forced to "standard", "unit" (divide by the largest absolute value in
the training rows, or by the known pixel maximum) or "none". The transform is kept in
``Dataset.offset`` and ``Dataset.scale`` (``X = (raw - offset) / scale``); apply the same to new
data before ``model.predict``.

Every problem with a file (missing, truncated, a header that does not match the data, labels out
of range, pickled content) raises :class:`DataError` with a one-line message. Headers are checked
against the bytes actually present before anything of the declared size is allocated.

Memory: a file may decode to at most :func:`memory_limit` bytes (a quarter of the memory
available, or ``$FASTBP_MAX_DATA_BYTES``; a CSV counts four times its text), checked before
anything of that size is allocated, and so may the scaled arrays ``load`` returns. Running out
of memory anyway raises DataError. Devices, FIFOs and sockets are refused.

The code is split by concern: ``files`` (the readers), ``named`` (MNIST, Fashion-MNIST, the
shipped digits, downloads), ``prepare`` (labels, splits, scaling).
"""
import os
from dataclasses import dataclass, field

import numpy as np

from .files import DataError, csv_width, limit_origin, memory_limit, read_csv, read_idx, read_npz
from .named import NAMED, cache_dir, digits_path, download_verified, fetch, read_idx_set
from .prepare import (MAX_CLASSES, MAX_CLASSES_PER_ROW, LabelColumnError, apply_scaling,
                      array_digest, check_label_column, check_test_classes, fit_scaling,
                      fit_target_scaling, float_targets, integer_labels, labels_from_strings,
                      restore_targets, split_indices)

__all__ = ["DataError", "LabelColumnError", "Dataset", "load", "read_idx", "read_npz",
           "read_csv", "fetch",
           "download_verified", "cache_dir", "split_indices", "NAMED", "digits_path",
           "read_idx_set", "memory_limit", "MAX_CLASSES", "MAX_CLASSES_PER_ROW", "SCALINGS",
           "TASKS", "restore_targets", "read_features"]

# Seed of the test split of data sets without an official test set: fixed, so that every run
# (whatever its --seed) is scored on the same rows.
TEST_SPLIT_SEED = 20240601
SCALINGS = ("auto", "standard", "unit", "none")
TASKS = ("classification", "regression")


@dataclass
class Dataset:
    """Training, validation and test rows of one data set, scaled, ready for ``fastbp.fit``.

    X arrays are C-contiguous (rows, n_features) in the requested float dtype; y arrays are int64
    class labels 0..n_classes-1. ``X_val``/``y_val`` have zero rows when ``val_fraction`` is 0.
    ``offset`` and ``scale`` (length n_features) give the scaling: ``X = (raw - offset) / scale``.
    ``raw_digest``: a digest of the training rows as the file gave them (before any scaling, whose
    arithmetic may differ in the last bit between NumPy builds) and their labels or targets;
    None unless ``load(..., digest=True)``.

    With ``task="regression"``, y arrays are the targets (rows, n_targets), standardised in the
    same float dtype, ``y = (raw - target_offset) / target_scale`` (``restore_targets`` undoes
    it); ``n_classes`` is 0 and ``class_names`` empty.
    """
    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    class_names: list
    offset: np.ndarray
    scale: np.ndarray
    scaling: str
    image_shape: tuple = None
    notes: list = field(default_factory=list)
    task: str = "classification"
    target_offset: np.ndarray = None
    target_scale: np.ndarray = None
    raw_digest: str = None

    @property
    def n_features(self):
        return self.X_train.shape[1]

    @property
    def n_outputs(self):
        """The outputs a model of this data has: one per class, or one per target."""
        return self.n_classes if self.task == "classification" else self.y_train.shape[1]

    def summary(self):
        """One line: the name and the size of each split."""
        outputs = (f"{self.n_classes} classes" if self.task == "classification"
                   else f"{self.n_outputs} target{'s' * (self.n_outputs > 1)} (standardised)")
        return (f"{self.name}: {self.n_features} features, {outputs}; "
                f"{len(self.y_train)} training, {len(self.y_val)} validation, "
                f"{len(self.y_test)} test rows")


@dataclass
class _Raw:
    """What a source holds before splitting and scaling."""
    name: str
    X: np.ndarray
    y: np.ndarray
    X_test: np.ndarray = None
    y_test: np.ndarray = None
    class_names: list = None
    image_shape: tuple = None
    max_value: float = None   # the known largest feature value, for "unit" scaling
    auto: str = "standard"    # what scaling="auto" means for this source


def load(source="digits", data_dir=None, val_fraction=0.1, test_fraction=0.2, seed=0,
         label_column=-1, dtype=np.float32, scaling="auto", download=True, log=None,
         task="classification", digest=False):
    """Load ``source`` and split and scale it (see the module docstring). Returns a Dataset.

    ``download=False`` refuses to download missing MNIST/Fashion-MNIST files; ``log`` receives a
    line before each download. ``task="regression"`` reads the label column (a .npz's y, which
    may have one column per target) as float targets and standardises them (see Dataset); the
    splits are then not stratified. The named data sets are classification only.
    ``digest=True`` also fills Dataset.raw_digest (a pass over the training rows, 0.25 s for
    MNIST's: only for those who compare it, as ``fastbp train --save`` and ``--resume`` do).

    Raises DataError for problems with the data, ValueError for bad arguments.
    """
    dtype = _check_load_args(source, val_fraction, test_fraction, scaling, dtype)
    if task not in TASKS:
        raise ValueError(f"task: expected one of {', '.join(TASKS)}, got {task!r:.60}")
    source = os.fspath(source)
    try:
        raw = _read_source(source, data_dir, label_column, download, log, task)
        n_classes = _classes(raw) if task == "classification" else 0
        return _split_and_scale(raw, n_classes, val_fraction, test_fraction, seed, dtype,
                                raw.auto if scaling == "auto" else scaling, task, digest)
    except MemoryError:
        raise DataError(f"{source}: not enough memory to load it (the limit is "
                        f"{memory_limit():,} bytes)") from None


def _check_load_args(source, val_fraction, test_fraction, scaling, dtype):
    """The requested dtype, after checking the arguments that need no data."""
    for arg, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not 0 <= value < 1:
            raise ValueError(f"{arg}: expected a number in [0, 1), got {value!r}")
    if scaling not in SCALINGS:
        raise ValueError(f"scaling: expected one of {', '.join(SCALINGS)}, got {scaling!r}")
    try:
        checked = np.dtype(dtype)
    except TypeError:
        checked = None
    if checked not in (np.float32, np.float64):
        raise ValueError(f"dtype: expected float32 or float64, got {dtype!r:.60}")
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source: expected a data set name or a file path, got "
                        f"{type(source).__name__}")
    return checked


def _read_source(source, data_dir, label_column, download, log, task="classification"):
    if task == "regression" and (source == "digits" or source in NAMED):
        raise DataError(f"{source}: a classification data set (class labels, not values); "
                        "regression takes a .npz or .csv file of numeric targets")
    if source == "digits":
        if data_dir is not None:
            raise ValueError("data_dir: the digits are shipped with fastbp; data_dir applies "
                             "to mnist and fashion-mnist only")
        X, y = _check_xy(read_npz(digits_path()), "digits")
        if X.dtype != np.uint8 or X.shape[1] != 64 or X.max() > 16:
            raise DataError("digits: the shipped file is damaged (reinstall fastbp)")
        return _Raw("digits", X, y, class_names=[str(d) for d in range(10)],
                    image_shape=(8, 8), max_value=16.0)
    if source in NAMED:
        folder = data_dir if data_dir is not None else fetch(source, download=download, log=log)
        X, y, X_test, y_test, image_shape = read_idx_set(folder, source)
        return _Raw(source, X, y, X_test, y_test, list(NAMED[source].class_names),
                    image_shape, max_value=255.0, auto="unit")
    if data_dir is not None:
        raise ValueError("data_dir: applies to mnist and fashion-mnist only, not to a file")
    lower = source.lower()
    if lower.endswith(".npz"):
        raw = _read_npz_source(source, task)
    elif lower.endswith((".csv", ".csv.gz")):
        if isinstance(label_column, tuple) and task != "regression":
            raise DataError(f"{source}: several label columns {label_column} are the targets "
                            "of a regression (task='regression', fastbp train --task "
                            "regression); a classification has one")
        X, text_labels = read_csv(source, label_column)
        if task == "regression":
            y, class_names = float_targets(text_labels, source), None
        else:
            check_label_column(text_labels, _column_described(label_column, X.shape[1] + 1),
                               source)
            y, class_names = labels_from_strings(text_labels, source)
        raw = _Raw(os.path.basename(source), X, y, class_names=class_names)
    elif os.path.exists(source) or os.sep in source or "." in source:
        raise DataError(f"{source}: unsupported file type; expected a .npz, .csv or .csv.gz "
                        "file")
    else:
        raise DataError(f"unknown data set {source!r}; expected digits, mnist, fashion-mnist, "
                        "or a path to a .npz or .csv file")
    for X in (raw.X, raw.X_test):
        if X is not None and not np.all(np.isfinite(X)):
            raise DataError(f"{source}: features contain NaN or Inf")
    return raw


def read_features(source, n_features, label_column=-1):
    """The raw features (N, n_features) float64 of a file, for a model that takes n_features:
    a .csv or .csv.gz with n_features columns, or one more holding the label in
    ``label_column`` (dropped, so that a file train read can be predicted on as it is); or a
    .npz's array X (its other arrays are ignored). DataError for anything else, naming it."""
    source = os.fspath(source)
    lower = source.lower()
    if lower.endswith(".npz"):
        arrays = read_npz(source)
        if "X" not in arrays:
            raise DataError(f"{source}: needs an array X of the features (arrays present: "
                            f"{', '.join(sorted(arrays)) or 'none'})")
        X = _features(arrays["X"], source)
    elif lower.endswith((".csv", ".csv.gz")):
        width = csv_width(source)
        n_labels = len(label_column) if isinstance(label_column, tuple) else 1
        if width not in (n_features, n_features + n_labels):
            raise DataError(f"{source}: {width} columns; the model takes {n_features} "
                            f"features (and the file may add the {n_labels} label "
                            f"column{'s' if n_labels > 1 else ''})")
        X, _ = read_csv(source, label_column if width > n_features else None)
    else:
        raise DataError(f"{source}: unsupported file type; expected a .npz, .csv or .csv.gz "
                        "file")
    if X.shape[1] != n_features:
        raise DataError(f"{source}: {X.shape[1]} features; the model takes {n_features}")
    if not np.all(np.isfinite(X)):
        raise DataError(f"{source}: features contain NaN or Inf")
    return X


def _column_described(label_column, n_fields):
    """'column 13' (the index, also of a negative label_column) or "column 'kind'" (one
    column: only a regression takes several)."""
    if isinstance(label_column, str):
        return f"column {label_column!r}"
    return f"column {range(n_fields)[label_column]}"


def _read_npz_source(source, task="classification"):
    arrays = read_npz(source)
    X, y = _check_xy(arrays, source, task=task)
    if ("X_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{source}: has only one of X_test and y_test; give both or neither")
    X_test = y_test = None
    if "X_test" in arrays:
        X_test, y_test = _check_xy(arrays, source, "X_test", "y_test", task)
        if X_test.shape[1] != X.shape[1]:
            raise DataError(f"{source}: X_test has {X_test.shape[1]} features, X has "
                            f"{X.shape[1]}")
        if y_test.shape[1:] != y.shape[1:]:
            raise DataError(f"{source}: y_test has {y_test.shape[1]} targets, y has "
                            f"{y.shape[1]}")
    return _Raw(os.path.basename(source), X, y, X_test, y_test)


def _classes(raw):
    """The number of classes, after checking the labels against the class names."""
    n_classes = int(max(raw.y.max(), -1 if raw.y_test is None else raw.y_test.max())) + 1
    if raw.class_names is None:
        raw.class_names = [str(c) for c in range(n_classes)]
    elif len(raw.class_names) < n_classes:
        raise DataError(f"{raw.name}: label {n_classes - 1} out of range "
                        f"0..{len(raw.class_names) - 1}")
    n_classes = max(n_classes, len(raw.class_names))
    if n_classes < 2:
        raise DataError(f"{raw.name}: every label is {raw.y[0]}; a classifier needs at least 2 "
                        "classes")
    return n_classes


def _split_and_scale(raw, n_classes, val_fraction, test_fraction, seed, dtype, scaling,
                     task="classification", digest=False):
    name, X, y, X_test, y_test = raw.name, raw.X, raw.y, raw.X_test, raw.y_test
    output_bytes = (len(X) + (0 if X_test is None else len(X_test))) * X.shape[1] * dtype.itemsize
    if output_bytes > memory_limit():
        raise DataError(f"{name}: the scaled {dtype.name} features would take "
                        f"{output_bytes:,} bytes, more than the memory limit of "
                        f"{memory_limit():,} bytes ({limit_origin()}); float32 takes half")
    classes = y if task == "classification" else None   # strata: none for values
    if X_test is None:
        keep, test = split_indices(len(y), test_fraction,
                                   np.random.default_rng(TEST_SPLIT_SEED), classes)
        if len(test) == 0:
            raise DataError(f"{name}: test_fraction {test_fraction} of {len(y)} rows leaves no "
                            "test row; give more rows or a larger fraction")
        X, y, X_test, y_test = X[keep], y[keep], X[test], y[test]
    if len(y) < 2:
        raise DataError(f"{name}: only {len(y)} training row(s) after the test split")
    if task == "classification":
        check_test_classes(y, y_test, raw.class_names, name)
    train, val = split_indices(len(y), val_fraction, np.random.default_rng(seed),
                               y if task == "classification" else None)
    if len(train) == 0:
        raise DataError(f"{name}: no training rows left after the validation split")
    if val_fraction > 0 and len(val) == 0:
        raise DataError(f"{name}: val_fraction {val_fraction} of {len(y)} training rows leaves "
                        "no validation row; give more rows, a larger fraction, or 0 for none")
    X_train, y_train, X_val, y_val = X[train], y[train], X[val], y[val]
    raw_digest = array_digest(X_train, y_train) if digest else None
    offset, scale, description = fit_scaling(X_train, scaling, raw.max_value, name)

    def prepare(features):
        return apply_scaling(features, offset, scale, dtype, name)

    if task == "regression":
        return _regression_dataset(raw, (X_train, y_train, X_val, y_val, X_test, y_test),
                                   prepare, offset, scale, description, dtype, raw_digest)
    return Dataset(name=name, X_train=prepare(X_train), y_train=y_train.astype(np.int64),
                   X_val=prepare(X_val), y_val=y_val.astype(np.int64),
                   X_test=prepare(X_test), y_test=y_test.astype(np.int64),
                   n_classes=n_classes, class_names=raw.class_names, offset=offset,
                   scale=scale, scaling=description, image_shape=raw.image_shape,
                   raw_digest=raw_digest)


def _regression_dataset(raw, rows, prepare, offset, scale, description, dtype, raw_digest):
    """The Dataset of a regression: the features as a classification's, the targets
    standardised by the training rows'."""
    X_train, y_train, X_val, y_val, X_test, y_test = rows
    target_offset, target_scale = fit_target_scaling(y_train, raw.name)

    def targets(values):
        return apply_scaling(values, target_offset, target_scale, dtype, raw.name)

    return Dataset(name=raw.name, X_train=prepare(X_train), y_train=targets(y_train),
                   X_val=prepare(X_val), y_val=targets(y_val), X_test=prepare(X_test),
                   y_test=targets(y_test), n_classes=0, class_names=[], offset=offset,
                   scale=scale, scaling=description, image_shape=raw.image_shape,
                   task="regression", target_offset=target_offset, target_scale=target_scale,
                   raw_digest=raw_digest)


def _features(X, what, x_key="X"):
    """A .npz's features X as rows (N, F), checked: real numbers, one row per sample, not
    empty."""
    if X.ndim < 2:
        raise DataError(f"{what}: {x_key} must have one row per sample (2-D or more), got shape "
                        f"{X.shape}")
    if X.dtype.kind not in "biuf":
        raise DataError(f"{what}: {x_key} must hold real numbers, got dtype {X.dtype}")
    if X.shape[0] == 0 or 0 in X.shape[1:]:
        raise DataError(f"{what}: {x_key} is empty (shape {X.shape})")
    return X.reshape(X.shape[0], -1)


def _check_xy(arrays, what, x_key="X", y_key="y", task="classification"):
    missing = [k for k in (x_key, y_key) if k not in arrays]
    if missing:
        have = ", ".join(sorted(arrays)) or "none"
        raise DataError(f"{what}: needs arrays {x_key} and {y_key}; missing "
                        f"{', '.join(missing)} (arrays present: {have})")
    X, y = _features(arrays[x_key], what, x_key), arrays[y_key]
    if task == "regression":
        y = float_targets(y, f"{what}: {y_key}")
    else:
        y = integer_labels(y, f"{what}: {y_key}")
    if y.shape[0] != X.shape[0]:
        raise DataError(f"{what}: {y_key} has {y.shape[0]} labels for {X.shape[0]} rows of "
                        f"{x_key}")
    return X, y
