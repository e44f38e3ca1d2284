"""Regression from the command line (`fastbp train --task regression`), `fastbp predict` and
`fastbp.load_predictor`: predictions in the data's own terms (class names, targets in their
units) that match the model's own, and bad input refused with one line (exit 2)."""
import csv
import os

import numpy as np
import pytest

import fastbp
from fastbp import cli
from fastbp.data import restore_targets

from test_cli import run, run_json

# A noise-free linear target: a net without hidden layers can represent it exactly.
WEIGHTS, INTERCEPT = np.array([3.0, -2.0, 0.5]), 100.0


def linear_csv(path, n=400, seed=0):
    """A CSV with a header, three features and the target y last; returns (X, y)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3)) * [1.0, 10.0, 100.0]
    y = X @ WEIGHTS + INTERCEPT
    lines = ["a,b,c,y"] + [",".join(map(repr, row)) for row in np.c_[X, y].tolist()]
    path.write_text("\n".join(lines) + "\n")
    return X, y


def read_csv_output(text):
    rows = list(csv.reader(text.splitlines()))
    return rows[0], rows[1:]


def blobs_csv(path, n=300, seed=1):
    """Three well separated classes named by text, the label in the first column."""
    rng = np.random.default_rng(seed)
    names = np.array(["left", "middle", "right"])
    labels = rng.integers(0, 3, n)
    X = rng.normal(size=(n, 2)) * 0.3 + np.c_[labels * 4.0, -labels * 2.0]
    lines = ["kind,x1,x2"] + [f"{names[c]},{a!r},{b!r}" for c, (a, b) in zip(labels, X.tolist())]
    path.write_text("\n".join(lines) + "\n")
    return X, names[labels]


# -- regression ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def regression_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("regression")
    X, y = linear_csv(folder / "linear.csv")
    code = cli.main(["train", "--data", str(folder / "linear.csv"), "--task", "regression",
                     "--layers", "none", "--epochs", "40", "--quiet", "--json",
                     "--save", str(folder / "model.npz")])
    assert code == 0
    return folder, X, y


def test_regression_trains_and_reports_r2_mae_rmse_in_the_targets_units(tmp_path, capsys):
    X, y = linear_csv(tmp_path / "linear.csv")
    summary = run_json(["--data", str(tmp_path / "linear.csv"), "--task", "regression",
                          "--layers", "none", "--epochs", "40"], capsys)
    assert summary["loss"] == "mse" and summary["sizes"] == [3, 1]
    assert "test_accuracy" not in summary and "test_correct" not in summary
    assert "accuracy" not in summary["history"]
    # The target's deviation is about 100 (the third feature's); a linear fit of a linear
    # target leaves only optimisation and float32 error: R^2 within 1e-4 of 1 means errors
    # of about 1% of that deviation at most, in the target's units.
    assert summary["test_r2"] > 0.9999
    assert 0 < summary["test_mae"] <= summary["test_rmse"] < 0.01 * y.std()
    code, out, err = run(["train", "--quiet", "--data", str(tmp_path / "linear.csv"),
                          "--task", "regression", "--layers", "4", "--epochs", "2"], capsys)
    assert code == 0, err
    assert "test R^2" in out and "MAE" in out and "RMSE" in out and "accuracy" not in out


def test_huber_regression_and_its_saved_metadata(tmp_path, capsys):
    linear_csv(tmp_path / "linear.csv")
    summary = run_json(["--data", str(tmp_path / "linear.csv"), "--task", "regression",
                          "--loss", "huber", "--layers", "8", "--epochs", "3",
                          "--save", str(tmp_path / "m.npz")], capsys)
    assert summary["loss"] == "huber"
    meta = fastbp.io.read_metadata(tmp_path / "m.npz")
    ds = fastbp.data.load(tmp_path / "linear.csv", task="regression")
    assert meta["task"] == "regression" and meta["class_names"] == []
    assert meta["target_offset"] == ds.target_offset.tolist()
    assert meta["target_scale"] == ds.target_scale.tolist()
    assert meta["test_r2"] == summary["test_r2"] and "test_accuracy" not in meta


def test_predict_gives_regression_targets_in_their_own_units(regression_model, capsys):
    folder, X, y = regression_model
    code, out, err = run(["predict", str(folder / "model.npz"), str(folder / "linear.csv")],
                         capsys)
    assert code == 0 and err == ""
    header, rows = read_csv_output(out)
    assert header == ["prediction"] and len(rows) == len(y)
    predicted = np.array(rows, dtype=np.float64)[:, 0]
    # Within 1% of the target's deviation (about 100): the bound the test R^2 above implies,
    # here over every row, training rows included.
    assert np.max(np.abs(predicted - y)) < 0.01 * y.std()
    # The Python API gives the same numbers, and .npy the same bits.
    predictor = fastbp.load_predictor(folder / "model.npz")
    assert predictor.task == "regression" and predictor.n_features == 3
    np.testing.assert_array_equal(predictor.predict(X)[:, 0], predicted)
    code, out, err = run(["predict", str(folder / "model.npz"), str(folder / "linear.csv"),
                          "--out", str(folder / "p.npy")], capsys)
    assert code == 0 and out == "" and err == ""
    np.testing.assert_array_equal(np.load(folder / "p.npy")[:, 0], predicted)


def test_predict_reads_a_csv_without_its_label_column(regression_model, tmp_path, capsys):
    folder, X, _ = regression_model
    (tmp_path / "x.csv").write_text("\n".join(",".join(map(repr, row.tolist())) for row in X))
    with_label = run(["predict", str(folder / "model.npz"), str(folder / "linear.csv")],
                     capsys)
    without = run(["predict", str(folder / "model.npz"), str(tmp_path / "x.csv")], capsys)
    assert without == with_label and with_label[0] == 0


# -- the model's own predictions on the test rows ---------------------------------------------


def digits_npz(path, n=500, n_test=100):
    raw = np.load(fastbp.data.digits_path())
    X, y = raw["X"].astype(np.float64), raw["y"]
    np.savez(path, X=X[:n], y=y[:n], X_test=X[n:n + n_test], y_test=y[n:n + n_test])
    return X[n:n + n_test]


def test_predict_matches_the_classifiers_own_predictions_on_the_test_rows(tmp_path, capsys):
    X_test = digits_npz(tmp_path / "d.npz")
    np.savez(tmp_path / "rows.npz", X=X_test)
    run_json(["--data", str(tmp_path / "d.npz"), "--layers", "16", "--epochs", "3",
                "--save", str(tmp_path / "m.npz")], capsys)
    model = fastbp.load(tmp_path / "m.npz")
    ds = fastbp.data.load(tmp_path / "d.npz")
    code, out, err = run(["predict", str(tmp_path / "m.npz"), str(tmp_path / "rows.npz")],
                         capsys)
    assert code == 0, err
    header, rows = read_csv_output(out)
    assert header == ["class"]
    assert [row[0] for row in rows] == [ds.class_names[c] for c in model.predict(ds.X_test)]
    code, out, err = run(["predict", str(tmp_path / "m.npz"), str(tmp_path / "rows.npz"),
                          "--proba", "--out", str(tmp_path / "p.npy")], capsys)
    assert code == 0, err
    proba = np.load(tmp_path / "p.npy")
    np.testing.assert_array_equal(proba, model.predict_proba(ds.X_test))
    np.testing.assert_allclose(proba.sum(axis=1), 1, atol=1e-5)   # float32 softmax


def test_predict_matches_a_two_target_regressions_own_predictions(tmp_path, capsys):
    rng = np.random.default_rng(3)
    X, X_test = rng.normal(size=(200, 3)), rng.normal(size=(50, 3))

    def targets(rows):
        return np.c_[rows @ WEIGHTS + INTERCEPT, 1000 * rows[:, 0] - 7]

    np.savez(tmp_path / "r.npz", X=X, y=targets(X), X_test=X_test, y_test=targets(X_test))
    np.savez(tmp_path / "rows.npz", X=X_test)
    summary = run_json(["--data", str(tmp_path / "r.npz"), "--task", "regression",
                          "--layers", "8", "--epochs", "3", "--save",
                          str(tmp_path / "m.npz")], capsys)
    assert summary["sizes"] == [3, 8, 2]
    model = fastbp.load(tmp_path / "m.npz")
    ds = fastbp.data.load(tmp_path / "r.npz", task="regression")
    expected = restore_targets(model.predict(ds.X_test), ds.target_offset, ds.target_scale)
    code, out, err = run(["predict", str(tmp_path / "m.npz"), str(tmp_path / "rows.npz")],
                         capsys)
    assert code == 0, err
    header, rows = read_csv_output(out)
    assert header == ["prediction_0", "prediction_1"]
    np.testing.assert_array_equal(np.array(rows, dtype=np.float64), expected)


def test_predict_names_the_classes_and_gives_probabilities(tmp_path, capsys):
    X, names = blobs_csv(tmp_path / "blobs.csv")
    run_json(["--data", str(tmp_path / "blobs.csv"), "--label-column", "0", "--layers",
                "8", "--epochs", "10", "--save", str(tmp_path / "m.npz")], capsys)
    code, out, err = run(["predict", str(tmp_path / "m.npz"), str(tmp_path / "blobs.csv")],
                         capsys)
    assert code == 0, err
    header, rows = read_csv_output(out)
    predicted = np.array([row[0] for row in rows])
    assert np.mean(predicted == names) > 0.95   # blobs 6 deviations apart
    code, out, err = run(["predict", str(tmp_path / "m.npz"), str(tmp_path / "blobs.csv"),
                          "--proba"], capsys)
    assert code == 0, err
    header, rows = read_csv_output(out)
    assert header == ["left", "middle", "right"]
    proba = np.array(rows, dtype=np.float64)
    np.testing.assert_allclose(proba.sum(axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(np.array(header)[proba.argmax(axis=1)], predicted)
    predictor = fastbp.load_predictor(tmp_path / "m.npz")
    np.testing.assert_array_equal(predictor.predict(X), predicted)


# -- refusals -------------------------------------------------------------------------------


def bad_inputs(tmp, regression_model):
    folder, _, _ = regression_model
    model, data = str(folder / "model.npz"), str(folder / "linear.csv")
    (tmp / "wide.csv").write_text("1,2,3,4,5\n6,7,8,9,10\n")
    (tmp / "junk.npz").write_bytes(b"junk")
    np.savez(tmp / "no_x.npz", features=np.ones((4, 3)))
    (tmp / "words.csv").write_text("a,b,c,y\n1,2,3,four\n5,6,7,8\n")
    digits_npz(tmp / "d.npz")
    cli.main(["train", "--quiet", "--data", str(tmp / "d.npz"), "--loss", "mse", "--layers",
              "none", "--epochs", "1", "--save", str(tmp / "mse.npz")])
    out = str(tmp / "out.csv")
    os.mkfifo(tmp / "fifo")   # (a write to it would block: it must be refused before)
    return [
        (["predict", model, data, "--out", str(tmp / "fifo")], "is a fifo"),
        (["predict", str(tmp / "none.npz"), data, "--out", out], "no such file"),
        (["predict", str(tmp / "junk.npz"), data, "--out", out], "junk.npz"),
        (["predict", model, str(tmp / "wide.csv"), "--out", out], "5 columns"),
        (["predict", model, str(tmp / "no_x.npz"), "--out", out], "needs an array X"),
        (["predict", model, str(tmp / "none.csv"), "--out", out], "no such file"),
        (["predict", model, data, "--proba", "--out", out], "regression model"),
        (["predict", str(tmp / "mse.npz"), str(tmp / "d.npz"), "--proba", "--out", out],
         "--loss mse"),
        (["predict", model, str(tmp / "d.npz"), "--out", out], "64 features"),
        (["predict", model, data, "--out", str(tmp / "no" / "p.csv")], "does not exist"),
        (["predict", model], "DATA"),
        (["train", "--task", "regression", "--loss", "softmax_cross_entropy", "--data", data],
         "--task regression takes --loss mse or huber"),
        (["train", "--task", "regression"], "digits: a classification data set"),
        (["train", "--task", "regression", "--data", str(tmp / "words.csv")], "'four'"),
        (["train", "--task", "guess"], "--task"),
    ]


def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys,
                                                            regression_model):
    cases = bad_inputs(tmp_path, regression_model)
    capsys.readouterr()
    before = sorted(p.name for p in tmp_path.iterdir())
    for argv, expected in cases:
        code, out, err = run(argv + (["--quiet"] if argv[0] == "train" else []), capsys)
        assert code == 2, (argv, err)
        assert out == "", (argv, out)
        assert err.count("\n") == 1 and "Traceback" not in err, (argv, err)
        assert expected in err, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
