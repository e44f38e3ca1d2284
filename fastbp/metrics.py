"""The test figures of `fastbp train`, in NumPy alone: per-class precision, recall and F1 with a
confusion matrix, scikit-learn's "balanced" class weights, and a regression's R^2, MAE and RMSE
(the same numbers as scikit-learn's ``classification_report``, ``confusion_matrix``,
``compute_class_weight``, ``r2_score``, ``mean_absolute_error`` and
``root_mean_squared_error``, without needing scikit-learn)."""
import numpy as np

__all__ = ["classification_metrics", "balanced_sample_weight", "regression_metrics"]


def _ratio(numerator, denominator):
    """numerator / denominator, 0 where the denominator is 0 (scikit-learn's zero_division=0:
    a class never predicted has precision 0, not NaN, so that averages stay defined)."""
    out = np.zeros(len(numerator), dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def classification_metrics(y_true, y_pred, n_classes):
    """Per-class precision, recall, F1 and support, their macro and weighted averages, and the
    confusion matrix, of integer labels 0..n_classes-1.

    Returns a dict of plain Python lists and numbers (ready for JSON): ``precision``,
    ``recall``, ``f1``, ``support`` (one entry per class), ``macro_avg`` and ``weighted_avg``
    (each {precision, recall, f1}), ``accuracy``, and ``confusion_matrix`` (rows: true class,
    columns: predicted class). Every class 0..n_classes-1 has its entry, also one with no
    row and no prediction (all 0), as scikit-learn gives with ``labels=range(n_classes)`` and
    ``zero_division=0``.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1 or y_true.size == 0:
        raise ValueError(f"y_true and y_pred: expected two equally long 1-D arrays of labels, "
                         f"got shapes {y_true.shape} and {y_pred.shape}")
    confusion = np.bincount(y_true * n_classes + y_pred,
                            minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    hits = np.diag(confusion)
    support = confusion.sum(axis=1)     # rows of each true class
    predicted = confusion.sum(axis=0)   # predictions of each class
    precision, recall = _ratio(hits, predicted), _ratio(hits, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    weights = support / support.sum()

    def average(weighting):
        return {name: float(np.sum(values * weighting)) for name, values in
                (("precision", precision), ("recall", recall), ("f1", f1))}

    return {"precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist(),
            "support": support.tolist(), "accuracy": float(hits.sum() / y_true.size),
            "macro_avg": average(np.full(n_classes, 1 / n_classes)),
            "weighted_avg": average(weights), "confusion_matrix": confusion.tolist()}


def balanced_sample_weight(y):
    """One weight per row, n_rows / (n_classes * rows of its class) with n_classes the classes
    present in y: scikit-learn's class_weight="balanced", so that every class weighs as much
    in the loss as the others however many rows it has."""
    y = np.asarray(y, dtype=np.int64)
    counts = np.bincount(y)
    present = np.count_nonzero(counts)
    with np.errstate(divide="ignore"):   # absent classes: no row takes their weight
        per_class = y.size / (present * counts.astype(np.float64))
    return per_class[y]


def regression_metrics(predicted, truth):
    """R^2, MAE and RMSE of each target (N, T), averaged over the targets (as scikit-learn's
    r2_score and the others do by default; R^2 of a constant target: 1 when hit, else 0), as
    {"test_r2", "test_mae", "test_rmse"}."""
    error = predicted - truth
    squares = np.sum(error ** 2, axis=0)
    spread = np.sum((truth - truth.mean(axis=0)) ** 2, axis=0)
    safe = np.where(spread > 0, spread, 1.0)
    r2 = np.where(spread > 0, 1 - squares / safe, (squares == 0).astype(float))
    return {"test_r2": float(r2.mean()), "test_mae": float(np.abs(error).mean()),
            "test_rmse": float(np.sqrt(squares / len(truth)).mean())}
