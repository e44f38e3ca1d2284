"""Several regression targets from one CSV (issue 33): `fastbp train --task regression
--label-column price,volume` (names or indices), fastbp.data.load(label_column=(...)), and
`fastbp predict` on the same file (its target columns dropped)."""
import json

import numpy as np
import pytest

import fastbp
from fastbp import cli, data
from fastbp._cli_options import _label_column
from fastbp.data import DataError
from fastbp.data.files import read_csv


@pytest.fixture
def linear(tmp_path):
    """600 rows of 5 features and two targets linear in them, in columns 2 and 6, with and
    without a header line."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 5))
    Y = X @ rng.normal(size=(5, 2)) + [10.0, -3.0]
    table = np.column_stack([X[:, :2], Y[:, 0], X[:, 2:], Y[:, 1]])
    named, plain = tmp_path / "named.csv", tmp_path / "plain.csv"
    rows = "\n".join(",".join(repr(float(v)) for v in row) for row in table) + "\n"
    named.write_text("a,b,price,c,d,e,volume\n" + rows)
    plain.write_text(rows)
    return X, Y, named, plain


@pytest.mark.parametrize("which, columns", [("named", ("price", "volume")),
                                            ("plain", (2, -1)), ("named", (2, 6)),
                                            ("plain", (-1, 2))])
def test_read_csv_takes_several_label_columns(linear, which, columns):
    X, Y, named, plain = linear
    features, labels = read_csv(named if which == "named" else plain, columns)
    np.testing.assert_array_equal(features, X)
    expected = Y if columns[0] in ("price", 2) else Y[:, ::-1]
    np.testing.assert_array_equal(labels.astype(np.float64), expected)   # exact round trip


def test_one_label_column_as_a_tuple_reads_as_that_column(tmp_path):
    """pandas' '0,1,price' header (numbers, then a name) over numeric rows: skipped as with
    the column given alone, the targets one column of (N, 1)."""
    path = tmp_path / "numbered.csv"
    path.write_text("0,1,price\n1.5,2,3.25\n2.5,3,4.5\n")
    alone, one = read_csv(path, 2), read_csv(path, (2,))
    np.testing.assert_array_equal(one[0], alone[0])
    assert one[1].tolist() == [[label] for label in alone[1].tolist()] == [["3.25"], ["4.5"]]


@pytest.mark.parametrize("columns, message", [((2, 2), "a column twice"),
                                              ((0, 1, 2, 3, 4, 5, 6), "leave no feature"),
                                              ((2, 9), "does not exist"),
                                              (("price", "nope"), "no column named 'nope'")])
def test_bad_label_columns_are_refused(linear, columns, message):
    with pytest.raises(DataError, match=message):
        read_csv(linear[2], columns)


def test_several_columns_load_as_float_targets_and_only_for_a_regression(linear):
    X, Y, named, _ = linear
    ds = data.load(str(named), task="regression", label_column=("price", "volume"),
                   dtype=np.float64)
    assert ds.y_train.shape[1] == ds.y_test.shape[1] == 2
    assert len(ds.y_train) + len(ds.y_val) + len(ds.y_test) == 600
    with pytest.raises(DataError, match="several label columns .* regression"):
        data.load(str(named), label_column=("price", "volume"))


@pytest.mark.parametrize("text, parsed", [("price,volume", ("price", "volume")),
                                          ("2,-1", (2, -1)), ("3", 3), ("kind", "kind")])
def test_the_option_reads_one_or_several_columns(text, parsed):
    assert _label_column(text) == parsed


def test_an_empty_item_is_refused(capsys):
    assert cli.main(["train", "--label-column", "price,"]) == 2
    assert "--label-column" in capsys.readouterr().err


def test_train_and_predict_two_targets_end_to_end(linear, tmp_path, capsys):
    X, Y, named, _ = linear
    model = tmp_path / "m.npz"
    assert cli.main(["train", "--data", str(named), "--task", "regression", "--label-column",
                     "price,volume", "--epochs", "40", "--seed", "0", "--save", str(model),
                     "--quiet", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["test_r2"] > 0.95        # a linear target, learned by a ReLU net
    out = tmp_path / "p.csv"
    assert cli.main(["predict", str(model), str(named), "--out", str(out)]) == 0
    predicted = np.loadtxt(out, delimiter=",", skiprows=1)
    expected = fastbp.load_predictor(model).predict(X)
    np.testing.assert_allclose(predicted, expected, rtol=1e-12)
    assert predicted.shape == (600, 2)
    assert np.corrcoef(predicted[:, 0], Y[:, 0])[0, 1] > 0.97
