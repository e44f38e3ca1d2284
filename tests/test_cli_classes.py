"""fastbp train on classes: the per-class table, --json's test_metrics and the plot's panels,
--class-weight balanced, --label-column by name and label columns refused as features, and
the help's defaults."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastbp
from fastbp import _cli_options, cli
from fastbp._cli_report import TABLE_CLASSES, metrics_table
from fastbp.metrics import classification_metrics

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--epochs", "2", "--layers", "16"]


def run(argv, capsys):
    code = cli.main(["train"] + argv)
    out, err = capsys.readouterr()
    return code, out, err


# -- metrics: printed, in --json, plotted ---------------------------------------------------


def test_json_test_metrics_agree_with_the_printed_table_and_the_accuracy(capsys):
    code, out, err = run(["--json", "--quiet"] + TINY, capsys)
    assert code == 0, err
    summary = json.loads(out)
    metrics = summary["test_metrics"]
    assert metrics["classes"] == [str(d) for d in range(10)]
    confusion = np.array(metrics["confusion_matrix"])
    assert confusion.sum() == summary["rows"]["test"]
    assert np.trace(confusion) == summary["test_correct"]
    assert metrics["accuracy"] == pytest.approx(summary["test_accuracy"])
    assert metrics["support"] == confusion.sum(axis=1).tolist()
    # The table of the same run (same seed) without --json: each class's figures and its
    # confusion row.
    code, out, err = run(TINY, capsys)
    assert code == 0, err
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("class "))
    for c in range(10):
        fields = lines[header + 1 + c].replace("|", " ").split()
        assert fields[0] == str(c)
        assert [float(v) for v in fields[1:4]] == pytest.approx(
            [metrics[k][c] for k in ("precision", "recall", "f1")], abs=5e-4)
        assert [int(v) for v in fields[4:]] == [metrics["support"][c]] + confusion[c].tolist()
    assert lines[header + 11].split()[0] == "macro" and lines[header + 12].split()[0] == "weighted"


def test_quiet_prints_no_table(capsys):
    code, out, err = run(["--quiet"] + TINY, capsys)
    assert code == 0 and not any(line.startswith("class ") for line in out.splitlines())
    assert "test accuracy" in out


def test_the_table_names_classes_that_have_names_and_summarises_many_classes():
    metrics = classification_metrics([0, 1, 2, 2], [0, 1, 2, 1], 3)
    lines = metrics_table(metrics, ["cat", "dog", "a very long class name"])
    assert [line.split()[:2] for line in lines[1:4]] == [["0", "cat"], ["1", "dog"],
                                                         ["2", "a"]]
    assert "~" in lines[3]   # the long name is cut
    assert lines[3].split("|")[1].split() == ["0", "1", "1"]
    n = TABLE_CLASSES + 1
    many = metrics_table(classification_metrics(np.arange(n), np.arange(n), n),
                         [str(c) for c in range(n)])
    assert len(many) == 4 and "--json and --plot" in many[0]


def test_plot_draws_metrics_whole_epochs_and_the_restored_epoch():
    pytest.importorskip("matplotlib")
    from fastbp.plotting import history_figure
    history = fastbp.training.History(loss=[1.0, 0.8, 0.7, 0.75], val_loss=[1.0, 0.9, 0.95, 1.0],
                                      layer_grad_norms=[[1.0, 2.0]] * 4,
                                      grad_norm=[2.2] * 4)
    history.best_epoch = 1   # early stopping restored epoch 2 of 4
    metrics = classification_metrics([0, 1, 1, 2], [0, 1, 2, 2], 3)
    fig = history_figure(history, metrics=metrics, class_names=["a", "b", "c"])
    axes = fig.get_axes()
    assert len(axes) == 5
    by_title = {ax.get_title().split("\n")[0]: ax for ax in axes}
    for title in ("loss", "gradient norm per layer"):
        ax = by_title[title]
        assert "restored (epoch 2)" in [line.get_label() for line in ax.get_lines()]
        ticks = [t for t in ax.get_xticks() if 1 <= t <= 4]
        assert ticks and all(t == int(t) for t in ticks), ticks
    assert "mean" in by_title["gradient norm per layer"].get_ylabel()
    confusion = by_title["test rows: confusion matrix"]
    assert [t.get_text() for t in confusion.get_xticklabels()] == ["a", "b", "c"]
    assert np.array(confusion.get_images()[0].get_array()).tolist() == [
        [1, 0, 0], [0, 0.5, 0.5], [0, 0, 1]]
    # Without early stopping's restore, no mark.
    history.best_epoch = None
    fig = history_figure(history)
    assert len(fig.get_axes()) == 3
    assert all("restored" not in line.get_label() for ax in fig.get_axes()
               for line in ax.get_lines())


# -- --class-weight ------------------------------------------------------------------------


def test_balanced_class_weight_passes_scikit_learns_weights_to_fit(capsys, monkeypatch):
    class_weight = pytest.importorskip("sklearn.utils.class_weight")
    seen = {}
    real_fit = cli.fit

    def spy(model, X, y, *args, **kwargs):
        seen["y"], seen["weights"] = y, kwargs["sample_weight"]
        return real_fit(model, X, y, *args, **kwargs)

    monkeypatch.setattr(cli, "fit", spy)
    code, out, err = run(["--quiet"] + TINY, capsys)
    assert code == 0 and seen["weights"] is None
    code, out, err = run(["--quiet", "--class-weight", "balanced"] + TINY, capsys)
    assert code == 0, err
    labels = np.asarray(seen["y"])
    classes = np.unique(labels)
    expected = class_weight.compute_class_weight("balanced", classes=classes, y=labels)
    np.testing.assert_allclose(seen["weights"], expected[np.searchsorted(classes, labels)],
                               rtol=1e-12)


def _imbalanced_digits(path):
    """Digits 1 (class 0) and 8 (class 1), 8 a rare class in training: 5 rows to 140; the test
    rows hold 42 ones and 40 eights."""
    raw = np.load(fastbp.data.digits_path())
    X, y = raw["X"].reshape(len(raw["y"]), -1), raw["y"]
    ones, eights = np.flatnonzero(y == 1), np.flatnonzero(y == 8)
    train = np.concatenate([ones[:140], eights[:5]])
    test = np.concatenate([ones[140:], eights[-40:]])
    np.savez(path, X=X[train], y=(y[train] == 8).astype(int), X_test=X[test],
             y_test=(y[test] == 8).astype(int))
    return path


def test_balanced_class_weight_raises_the_rare_class_recall(tmp_path, capsys):
    path = _imbalanced_digits(tmp_path / "rare.npz")
    common = ["--data", str(path), "--json", "--quiet", "--layers", "16", "--epochs", "3",
              "--val-fraction", "0", "--lr-schedule", "constant"]
    recall = {}
    for weighting in ("none", "balanced"):
        code, out, err = run(common + ["--class-weight", weighting], capsys)
        assert code == 0, err
        recall[weighting] = json.loads(out)["test_metrics"]["recall"]
    # Unweighted, most eights are called ones (0.125 when written); balanced, most are found.
    assert recall["balanced"][1] > recall["none"][1] + 0.3, recall


def test_resume_refuses_another_class_weight(tmp_path, capsys):
    saved = tmp_path / "run.npz"
    code, out, err = run(["--quiet", "--save", str(saved), "--lr-schedule", "constant"] + TINY,
                         capsys)
    assert code == 0, err
    code, out, err = run(["--quiet", "--resume", str(saved), "--epochs", "3",
                          "--class-weight", "balanced"], capsys)
    assert code == 2 and "--class-weight balanced (the run's: none)" in err


# -- --label-column ------------------------------------------------------------------------


def _label_first_csv(path):
    """Digits with their label first and a header, as UCI wine and many other files are."""
    raw = np.load(fastbp.data.digits_path())
    X, y = raw["X"][:300].reshape(300, -1).astype(np.int64), raw["y"][:300]
    header = "digit," + ",".join(f"p{i}" for i in range(X.shape[1] - 1)) + ",serial"
    X[:, -1] = 1000 + np.arange(300)   # the last column: a serial number, no label
    rows = [",".join(map(str, [label, *x])) for label, x in zip(y, X)]
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("extra", [[], ["--val-fraction", "0"]])
def test_a_label_column_that_is_a_feature_stops_with_one_line_naming_the_option(
        tmp_path, capsys, extra):
    path = _label_first_csv(tmp_path / "d.csv")
    code, out, err = run(["--data", str(path), "--quiet"] + TINY + extra, capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1
    assert "column 64 has 300 distinct values in 300 rows: is the label in another column? " \
           "use --label-column NAME|INDEX" in err


def test_a_fractional_label_column_stops_with_one_line(tmp_path, capsys):
    path = tmp_path / "f.csv"
    path.write_text("".join(f"{i % 3},{i % 5},{0.5 + i % 4}\n" for i in range(40)))
    code, out, err = run(["--data", str(path), "--quiet"] + TINY, capsys)
    assert code == 2 and err.count("\n") == 1
    assert "column 2 holds numbers that are not class indices (such as 0.5)" in err
    assert err.rstrip().endswith("use --label-column NAME|INDEX")


def test_label_column_by_name_trains_as_by_index(tmp_path, capsys):
    path = _label_first_csv(tmp_path / "d.csv")
    results = []
    for column in ("digit", "0"):
        code, out, err = run(["--data", str(path), "--label-column", column, "--json",
                              "--quiet"] + TINY, capsys)
        assert code == 0, err
        results.append(json.loads(out))
    assert results[0]["history"]["loss"] == results[1]["history"]["loss"]
    assert results[0]["test_metrics"]["classes"] == [str(d) for d in range(10)]
    code, out, err = run(["--data", str(path), "--label-column", "label", "--quiet"] + TINY,
                         capsys)
    assert code == 2 and "no column named 'label' in the header (digit, p0," in err


# -- --help ----------------------------------------------------------------------------------


def _option_help(help_text, option):
    start = help_text.index("\n  " + option)
    end = help_text.find("\n  --", start + 1)
    return " ".join(help_text[start:end].split())


def test_help_shows_real_defaults_and_no_default_of_none(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    text = _cli_options.build_parser().train_parser.format_help()
    assert "(default: None)" not in " ".join(text.split())
    defaults = _cli_options.DEFAULTS
    for option, dest in (("--epochs", "epochs"), ("--batch-size", "batch_size"),
                         ("--dtype", "dtype"), ("--optimizer", "optimizer"),
                         ("--class-weight", "class_weight"),
                         ("--label-column", "label_column")):
        assert f"(default: {defaults[dest]})" in _option_help(text, option), option
    # Options without a default still say what happens without them.
    assert "default: sgd 0.2" in _option_help(text, "--lr")


def test_warm_up_readies_the_weighted_epoch_that_class_weight_trains():
    """--class-weight trains fit's weighted variant of the compiled epoch (a signature of its
    own): the warm-up readies it, so that the first epoch's timing holds no compile. In a fresh
    interpreter, where no other test has readied it."""
    code = """
import numpy as np, fastbp
from fastbp import cli, kernels
rng = np.random.default_rng(0)
# Each case in its own dtype: a signature the other case cannot have compiled.
for weighted, dtype in ((False, np.float64), (True, np.float32)):
    X, y = rng.normal(size=(40, 20)).astype(dtype), rng.integers(0, 3, 40)
    model = fastbp.MLP([20, 8, 3], seed=0, dtype=dtype)
    optimizer = fastbp.SGD(model, lr=0.1)
    cli._warm_up(model, optimizer, X, y, 8, weighted=weighted)
    before = len(kernels.entry.train_epoch.signatures)
    fastbp.fit(model, X, y, optimizer, epochs=1, batch_size=8, sample_weight=np.ones(40))
    print(len(kernels.entry.train_epoch.signatures) - before)
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["1", "0"]   # unweighted warm-up: fit compiles; else not
