"""Labels, splits and scaling: from the arrays a file holds to the rows a model trains on.

Scaling works through blocks of rows, so that it never holds a float64 copy of a whole data set
beside the raw array and the result.
"""
import hashlib

import numpy as np

from .files import DataError, is_number

__all__ = ["MAX_CLASSES", "split_indices", "array_digest"]

# Most classes a data set may have. Labels are class indices 0..C-1, so one stray large label
# would otherwise build a model with that many outputs.
MAX_CLASSES = 1 << 16
# Rows per block when scaling.
_BLOCK_ROWS = 4096
# A label column with more distinct values than this share of its rows is refused as most likely
# not the label: its classes would average fewer than 2 rows, too few for the stratified test
# and validation splits to take one row of a class (they round each class's share), let alone
# to learn it. Such a column is typically a feature (an ID, a measurement) read as the label.
MAX_CLASSES_PER_ROW = 0.5


# -------------------------------------------------------------------------------------------------
# Labels


class LabelColumnError(DataError):
    """The column read as the label does not look like one (see check_label_column). Its
    message ends with ``remedy``, which a caller may set in its own words (the command names
    its option)."""

    def __init__(self, reason, remedy="pass label_column=NAME or INDEX"):
        super().__init__(reason)
        self.reason, self.remedy = reason, remedy

    def __str__(self):
        return f"{self.reason} {self.remedy}"


def check_label_column(labels, column, what):
    """Refuse a column of label text that is most likely a feature: numbers that are not whole,
    or more distinct values than MAX_CLASSES_PER_ROW of the rows. ``column`` names it in the
    message ("column 3", "column 'kind'")."""
    distinct = np.unique(labels)
    try:
        numbers = distinct.astype(np.float64)
    except ValueError:
        numbers = None   # names: classes, whatever they say
    if numbers is not None and np.all(np.isfinite(numbers)):
        fractional = numbers[numbers != np.round(numbers)]
        if fractional.size:
            raise LabelColumnError(f"{what}: {column} holds numbers that are not class indices "
                                   f"(such as {fractional[0]:g}): is the label in another "
                                   "column?")
    if distinct.size > MAX_CLASSES_PER_ROW * labels.size:
        raise LabelColumnError(f"{what}: {column} has {distinct.size:,} distinct values in "
                               f"{labels.size:,} rows: is the label in another column?")


def labels_from_strings(labels, what):
    """int64 labels 0..C-1 and the class names (None for numeric labels) from the text of a
    label column. Names become classes in sorted order."""
    try:
        values = labels.astype(np.float64)
    except ValueError:
        names = sorted(set(labels.tolist()))
        if any(not name for name in names):
            raise DataError(f"{what}: some labels are empty") from None
        if len(names) > MAX_CLASSES:
            raise DataError(f"{what}: {len(names):,} different labels; fastbp takes at most "
                            f"{MAX_CLASSES:,} classes")
        lookup = {name: i for i, name in enumerate(names)}
        return np.array([lookup[s] for s in labels.tolist()], dtype=np.int64), names
    return integer_labels(values, what), None


def integer_labels(values, what):
    """Whole numbers 0..MAX_CLASSES-1 as int64 class labels; DataError otherwise."""
    values = np.asarray(values)
    if values.ndim != 1:
        raise DataError(f"{what}: labels must be one value per sample, got shape {values.shape}")
    if values.size == 0:
        raise DataError(f"{what}: no labels")
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)):
            raise DataError(f"{what}: labels contain NaN or Inf")
        if not np.all(values == np.round(values)):
            bad = values[values != np.round(values)][0]
            raise DataError(f"{what}: labels must be whole numbers (class indices), found "
                            f"{bad:g}")
    elif values.dtype.kind not in "iub":
        raise DataError(f"{what}: labels must be integers, got dtype {values.dtype}")
    if values.min() < 0:
        raise DataError(f"{what}: labels must be 0 or more, found {values.min():g}")
    if values.max() >= MAX_CLASSES:
        largest = values.max().item()   # a Python number: no overflow in the message
        shown = f"{largest:.6g}" if abs(largest) >= 1e15 else f"{largest:.0f}"
        raise DataError(f"{what}: label {shown} is not a class index: labels are 0..C-1 and "
                        f"fastbp takes at most {MAX_CLASSES:,} classes (labels given as names "
                        "are numbered for you)")
    return values.astype(np.int64)


def float_targets(values, what):
    """Regression targets as float64 (N, T): one column per target (a 1-D array is one target);
    DataError for text that is not a number, NaN or Inf."""
    values = np.asarray(values)
    if values.dtype.kind in "US":
        try:
            values = values.astype(np.float64)
        except ValueError:
            bad = next(s for s in values.tolist() if not is_number(s))
            raise DataError(f"{what}: target {bad!r} is not a number (regression takes "
                            "numeric targets)") from None
    if values.dtype.kind not in "biuf":
        raise DataError(f"{what}: targets must be numbers, got dtype {values.dtype}")
    if values.ndim not in (1, 2) or values.size == 0:
        raise DataError(f"{what}: targets must be one value or one row of values per sample, "
                        f"got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise DataError(f"{what}: targets contain NaN or Inf")
    return values.astype(np.float64).reshape(len(values), -1)


def check_test_classes(y_train, y_test, class_names, what):
    """Refuse test rows of a class that no training row has: the model could not learn it."""
    unseen = np.setdiff1d(np.unique(y_test), np.unique(y_train))
    if unseen.size:
        names = ", ".join(repr(class_names[c]) for c in unseen[:5])
        more = f" and {unseen.size - 5} more" if unseen.size > 5 else ""
        raise DataError(f"{what}: the test rows hold class {names}{more}, which no training row "
                        "has; the model cannot learn a class it never sees")


# -------------------------------------------------------------------------------------------------
# Splits


def split_indices(n, fraction, rng, labels=None):
    """(kept, held_out): a random ``fraction`` of range(n) held out, stratified by ``labels`` when
    given (each class contributes its share, rounded). Both index arrays are sorted."""
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction: expected a number in [0, 1), got {fraction!r}")
    if fraction == 0:
        return np.arange(n), np.arange(0)
    held = []
    if labels is None:
        held.append(rng.permutation(n)[:int(round(fraction * n))])
    else:
        for c in np.unique(labels):
            members = np.flatnonzero(labels == c)
            held.append(rng.permutation(members)[:int(round(fraction * members.size))])
    held = np.sort(np.concatenate(held))
    mask = np.ones(n, dtype=bool)
    mask[held] = False
    return np.flatnonzero(mask), held


# -------------------------------------------------------------------------------------------------
# Scaling


def _blocks(n_rows):
    return (slice(start, start + _BLOCK_ROWS) for start in range(0, n_rows, _BLOCK_ROWS))


def _standardise(X_train):
    """(offset, scale): column means and standard deviations (1 for constant columns)."""
    with np.errstate(over="ignore", invalid="ignore"):  # huge features: checked by the caller
        total = sum(X_train[rows].sum(axis=0, dtype=np.float64) for rows in _blocks(len(X_train)))
        offset = total / len(X_train)
        squares = sum(np.square(X_train[rows] - offset).sum(axis=0)
                      for rows in _blocks(len(X_train)))
        scale = np.sqrt(squares / len(X_train))
    scale[scale < 1e-12] = 1.0
    return offset, scale


def fit_scaling(X_train, scaling, max_value, name):
    """(offset, scale, description) for ``X = (raw - offset) / scale`` measured on the training
    rows; ``max_value`` is the known largest value for "unit" scaling, or None to measure it."""
    n_features = X_train.shape[1]
    offset = np.zeros(n_features)
    if scaling == "unit":
        if max_value is None:
            max_value = float(max(np.abs(X_train[rows]).max() for rows in _blocks(len(X_train))))
        scale = np.full(n_features, max_value or 1.0)
        description = f"features divided by {scale[0]:g}"
    elif scaling == "standard":
        offset, scale = _standardise(X_train)
        description = "features standardised (mean and deviation of the training rows)"
    else:
        scale = np.ones(n_features)
        description = "features not scaled"
    if not (np.all(np.isfinite(offset)) and np.all(np.isfinite(scale)) and np.all(scale > 0)):
        largest = max(float(np.abs(X_train[rows]).max()) for rows in _blocks(len(X_train)))
        raise DataError(f"{name}: features too large to scale (largest magnitude "
                        f"{largest:.3g}); rescale them first")
    return offset, scale, description


def fit_target_scaling(y_train, name):
    """(offset, scale) that standardise regression targets (N, T) by the training rows' mean
    and deviation, as features are: a net learns targets of unit size best, whatever their
    units (a constant target is only centred)."""
    offset, scale, _ = fit_scaling(y_train, "standard", None, name)
    return offset, scale


def restore_targets(values, offset, scale):
    """Standardised targets or predictions (N, T) back in the targets' own units, float64."""
    return np.asarray(values, dtype=np.float64) * scale + offset


def divides_in_dtype(offset, scale, dtype):
    """Whether apply_scaling scales by dividing X, converted to dtype, by one divisor in dtype
    (no offset, one scale that dtype holds as a normal number), rather than computing
    (X - offset) / scale in float64."""
    dtype = np.dtype(dtype)
    return (not np.any(offset) and bool(np.all(scale == scale[0]))
            and np.finfo(dtype).tiny <= scale[0] <= np.finfo(dtype).max)


def apply_scaling(X, offset, scale, dtype, name):
    """``(X - offset) / scale`` as a new C-contiguous array of ``dtype``, block by block;
    DataError when a value falls outside the range of ``dtype``."""
    out = np.empty(X.shape, dtype=dtype)
    divide_only = divides_in_dtype(offset, scale, dtype)
    with np.errstate(over="ignore"):
        for rows in _blocks(len(X)):
            if divide_only:
                np.divide(X[rows], dtype.type(scale[0]), out=out[rows], dtype=dtype)
            else:
                out[rows] = (X[rows] - offset) / scale
            if not np.all(np.isfinite(out[rows])):
                wider = " (float64 would hold them)" if dtype == np.float32 else ""
                raise DataError(f"{name}: features beyond the range of {dtype.name} after "
                                f"scaling{wider}; rescale them or use another --scale")
    return out


# Bytes hashed at a time from an array that is not C-contiguous.
_HASH_CHUNK_BYTES = 1 << 24


def array_digest(*arrays):
    """A BLAKE2b digest of the arrays' values, in C order whatever their memory layout."""
    digest = hashlib.blake2b(digest_size=16)
    for array in arrays:
        array = np.asarray(array)
        if array.flags.c_contiguous:   # its buffer as it is: no copy
            digest.update(array.reshape(-1).view(np.uint8))
            continue
        # A C-ordered copy of a few rows at a time: memory bounded, whatever the array's size.
        rows = max(1, _HASH_CHUNK_BYTES // max(1, array[:1].nbytes))
        for start in range(0, array.shape[0], rows):
            digest.update(np.ascontiguousarray(array[start:start + rows]).reshape(-1)
                          .view(np.uint8))
    return digest.hexdigest()
