"""fastbp.metrics against scikit-learn: per-class figures, confusion matrix, balanced class
weights and regression figures."""
import numpy as np
import pytest

from fastbp.metrics import balanced_sample_weight, classification_metrics, regression_metrics


def _labels(rng, n, n_classes, skill):
    """True labels and predictions that are right about a share `skill` of the time."""
    y_true = rng.integers(0, n_classes, n)
    guesses = rng.integers(0, n_classes, n)
    return y_true, np.where(rng.random(n) < skill, y_true, guesses)


@pytest.mark.parametrize("n, n_classes, skill", [(200, 3, 0.7), (57, 10, 0.4), (30, 6, 0.0)])
def test_metrics_match_scikit_learn(n, n_classes, skill):
    metrics_ = pytest.importorskip("sklearn.metrics")
    y_true, y_pred = _labels(np.random.default_rng(n), n, n_classes, skill)
    ours = classification_metrics(y_true, y_pred, n_classes)
    labels = list(range(n_classes))
    report = metrics_.classification_report(y_true, y_pred, labels=labels, output_dict=True,
                                            zero_division=0)
    for c in labels:
        for ours_key, theirs_key in (("precision", "precision"), ("recall", "recall"),
                                     ("f1", "f1-score"), ("support", "support")):
            assert ours[ours_key][c] == pytest.approx(report[str(c)][theirs_key], abs=1e-12)
    for ours_key, theirs_key in (("macro_avg", "macro avg"), ("weighted_avg", "weighted avg")):
        for name, theirs_name in (("precision", "precision"), ("recall", "recall"),
                                  ("f1", "f1-score")):
            assert ours[ours_key][name] == pytest.approx(report[theirs_key][theirs_name],
                                                         abs=1e-12)
    assert ours["accuracy"] == pytest.approx(metrics_.accuracy_score(y_true, y_pred))
    expected = metrics_.confusion_matrix(y_true, y_pred, labels=labels)
    assert ours["confusion_matrix"] == expected.tolist()


def test_a_class_without_rows_or_predictions_scores_zero():
    ours = classification_metrics([0, 0, 1, 1], [0, 1, 1, 1], n_classes=3)
    assert ours["support"] == [2, 2, 0]
    assert ours["precision"] == [1.0, 2 / 3, 0.0] and ours["recall"] == [0.5, 1.0, 0.0]
    assert ours["f1"][2] == 0.0 and ours["confusion_matrix"][2] == [0, 0, 0]


def test_metrics_refuse_arrays_of_different_lengths():
    with pytest.raises(ValueError, match="equally long"):
        classification_metrics([0, 1], [0], n_classes=2)


def test_balanced_weights_are_scikit_learns():
    class_weight = pytest.importorskip("sklearn.utils.class_weight")
    y = np.array([0] * 50 + [1] * 7 + [3] * 13)   # class 2 absent: counted as no class
    classes = np.unique(y)
    expected = class_weight.compute_class_weight("balanced", classes=classes, y=y)
    weights = balanced_sample_weight(y)
    for c, w in zip(classes, expected):
        np.testing.assert_allclose(weights[y == c], w, rtol=1e-15)
    assert weights.sum() == pytest.approx(len(y))   # the rows' total weight is kept


@pytest.mark.parametrize("n_targets", [1, 3])
def test_regression_metrics_match_scikit_learn(n_targets):
    metrics_ = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(n_targets)
    truth = rng.normal(size=(80, n_targets)) * [10.0, 1.0, 0.1][:n_targets]
    predicted = truth + rng.normal(size=truth.shape)
    ours = regression_metrics(predicted, truth)
    assert ours["test_r2"] == pytest.approx(metrics_.r2_score(truth, predicted), abs=1e-12)
    assert ours["test_mae"] == pytest.approx(metrics_.mean_absolute_error(truth, predicted),
                                             abs=1e-12)
    assert ours["test_rmse"] == pytest.approx(
        metrics_.root_mean_squared_error(truth, predicted), abs=1e-12)


def test_regression_metrics_of_a_constant_target():
    """scikit-learn's rule: R^2 1 when a constant target is hit exactly, else 0."""
    truth = np.full((5, 1), 2.0)
    assert regression_metrics(truth.copy(), truth)["test_r2"] == 1.0
    assert regression_metrics(truth + 0.5, truth)["test_r2"] == 0.0
