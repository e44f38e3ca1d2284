"""The fastbp command: `fastbp train` end to end, its outputs, bad input (exit 2, one line,
nothing written) and Ctrl-C (exit 130, last good weights saved)."""
import gzip
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

import fastbp
from fastbp import cli

from test_data import MNIST_DIR, idx_bytes, write_idx_set

ROOT = Path(__file__).resolve().parent.parent


def run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def run_json(argv, capsys):
    code, out, err = run(["train", "--json", "--quiet"] + argv, capsys)
    assert code == 0, err
    return json.loads(out)


def test_default_command_reaches_97_percent_on_the_shipped_digits(capsys, tmp_path):
    code, out, err = run(["train"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    epoch_lines = [line for line in lines if line.startswith("epoch ")]
    assert len(epoch_lines) == 30
    last = epoch_lines[-1]
    assert "samples/s" in last and "val" in last and "train" in last
    # Then the per-class table (class, 10 digits, 2 averages) and the summary.
    table = lines[lines.index(last) + 1:-2]
    assert table[0].startswith("class") and len(table) == 13, table
    summary = lines[-2]
    accuracy = float(summary.split()[2].rstrip("%"))
    assert accuracy >= 97.0, summary
    assert lines[-1].startswith("time ") and "samples/s" in lines[-1]
    assert err == ""


def test_json_summary(capsys):
    summary = run_json(["--epochs", "3", "--layers", "32", "--seed", "4"], capsys)
    assert summary["sizes"] == [64, 32, 10] and summary["epochs_run"] == 3
    assert summary["stop_reason"] == "completed" and summary["seed"] == 4
    assert 0.5 < summary["test_accuracy"] <= 1
    assert summary["test_correct"] == round(summary["test_accuracy"] * summary["rows"]["test"])
    assert len(summary["history"]["val_accuracy"]) == 3
    timing_parts = set(summary["seconds"])
    assert timing_parts == {"total", "data", "compile", "training"}
    # Same seed, same result (same thread count).
    again = run_json(["--epochs", "3", "--layers", "32", "--seed", "4"], capsys)
    assert again["history"]["loss"] == summary["history"]["loss"]


def test_json_keeps_stdout_machine_readable(capsys):
    code, out, err = run(["train", "--json", "--epochs", "2"], capsys)
    assert code == 0
    json.loads(out)  # nothing but the JSON document on stdout
    assert "epoch 2/2" in err and "test accuracy" not in out


def test_options_are_used(capsys):
    summary = run_json(["--epochs", "2", "--layers", "20,10", "--activation", "tanh,sigmoid",
                        "--dtype", "float64", "--batch-size", "50", "--lr", "0.05",
                        "--clip-norm", "none", "--val-fraction", "0.2", "--threads", "1",
                        "--lr-schedule", "constant", "--scale", "unit"], capsys)
    assert summary["sizes"] == [64, 20, 10, 10] and summary["activations"] == ["tanh", "sigmoid"]
    assert summary["dtype"] == "float64" and summary["batch_size"] == 50
    assert summary["clip_norm"] is None and summary["threads"] == 1
    assert abs(summary["rows"]["validation"] / (summary["rows"]["train"]
                                                + summary["rows"]["validation"]) - 0.2) < 0.01


def test_norm_residual_and_dropout_build_the_model(tmp_path, capsys):
    """The three options reach the model: the summary reports the model's own settings, and
    the saved model has them."""
    saved = tmp_path / "model.npz"
    summary = run_json(["--epochs", "5", "--layers", "32,32", "--norm", "batch", "--residual",
                        "--dropout", "0.1", "--save", str(saved)], capsys)
    assert summary["norm"] == ["batch", "batch"] and summary["dropout"] == [0.1, 0.1]
    assert summary["residual"] is True and summary["test_accuracy"] > 0.9
    model = fastbp.load(saved)
    assert model.norm == ["batch", "batch"] and model.dropout == [0.1, 0.1] and model.residual
    # One value per hidden layer; "none" leaves a layer without normalisation.
    summary = run_json(["--epochs", "2", "--layers", "32,16", "--norm", "none,layer",
                        "--dropout", "0.2,0"], capsys)
    assert summary["norm"] == [None, "layer"] and summary["dropout"] == [0.2, 0.0]
    assert summary["residual"] is False
    code, out, err = run(["train", "--epochs", "1", "--layers", "64,64", "--norm", "layer",
                          "--dropout", "0.5", "--residual"], capsys)
    assert code == 0 and "(hidden relu/relu, layer/layer norm, dropout 0.5/0.5, residual)" in out


def test_without_the_options_the_model_has_none_of_them(capsys):
    summary = run_json(["--epochs", "1"], capsys)
    assert summary["norm"] == [None] and summary["dropout"] == [0.0]
    assert summary["residual"] is False


def test_mse_loss_trains_on_one_hot_targets(capsys):
    summary = run_json(["--loss", "mse", "--epochs", "10", "--lr", "0.1"], capsys)
    assert summary["loss"] == "mse" and summary["test_accuracy"] > 0.8


def test_binary_cross_entropy_loss_trains_on_one_hot_targets(capsys, tmp_path):
    """One sigmoid per class on one-hot targets; the test rows are classified by the largest
    logit; the model saves as what it is."""
    saved = tmp_path / "bce.npz"
    summary = run_json(["--loss", "binary_cross_entropy", "--epochs", "10", "--lr", "0.3",
                        "--save", str(saved)], capsys)
    assert summary["loss"] == "binary_cross_entropy" and summary["test_accuracy"] > 0.8
    assert summary["history"]["val_accuracy"][-1] > 0.8
    model = fastbp.load(saved)
    assert model.loss == "binary_cross_entropy"


@pytest.mark.parametrize("loss", fastbp.model.LOSSES)
def test_every_loss_of_the_registry_trains_from_the_command(loss, capsys, tmp_path):
    """--loss takes each registry entry: labels for a loss of labels, one-hot targets (one
    output per class, the class predicted the largest output) for a loss of values; the model
    saves as what it is and scores the validation rows by its loss's rules."""
    saved = tmp_path / "model.npz"
    summary = run_json(["--loss", loss, "--epochs", "10", "--lr", "0.1", "--save", str(saved)],
                       capsys)
    assert summary["loss"] == loss and summary["test_accuracy"] > 0.8
    assert summary["history"]["val_accuracy"][-1] > 0.8
    assert len(summary["history"]["val_loss"]) == 10
    assert fastbp.load(saved).loss == loss


def test_early_stopping(capsys):
    summary = run_json(["--epochs", "200", "--early-stopping", "2", "--lr-schedule", "constant",
                        "--lr", "0.3"], capsys)
    assert summary["stop_reason"] == "early_stopping" and summary["epochs_run"] < 200
    val = summary["history"]["val_loss"]
    assert summary["best_epoch"] == int(np.argmin(val)) + 1
    assert summary["epochs_run"] == summary["best_epoch"] + 2


@pytest.mark.parametrize("argv", [
    ["--optimizer", "adam", "--lr-schedule", "constant"],
    ["--optimizer", "adamw", "--amsgrad", "--weight-decay", "0.05", "--betas", "0.8,0.99"],
    ["--momentum", "0.9", "--nesterov", "--lr", "0.02", "--weight-decay", "1e-4"],
    ["--lr-schedule", "adaptive", "--accumulate", "2", "--lr", "0.3"],
    ["--optimizer", "rmsprop"],
    ["--optimizer", "rmsprop", "--momentum", "0.5", "--centered", "--alpha", "0.9", "--eps",
     "1e-6", "--weight-decay", "1e-4", "--lr", "0.002"],
])
def test_optimizers_train(argv, capsys):
    summary = run_json(["--epochs", "12"] + argv, capsys)
    assert summary["test_accuracy"] >= 0.93
    expected = argv[argv.index("--optimizer") + 1] if "--optimizer" in argv else "sgd"
    assert summary["optimizer"]["name"] == expected
    for option, value in zip(argv, argv[1:] + [None]):   # each option set its argument
        name = option[2:].replace("-", "_")
        if name in fastbp.optim.OPTIMIZERS[expected].arguments():
            if value is None or value.startswith("--"):
                given = True   # a flag
            else:
                given = [float(v) for v in value.split(",")]
                given = given if len(given) > 1 else given[0]
            assert summary["optimizer"][name] == given, name


def test_step_and_invscaling_schedules(capsys):
    summary = run_json(["--epochs", "6", "--lr", "0.3", "--lr-schedule", "step", "--lr-step",
                        "2", "--lr-gamma", "0.5"], capsys)
    assert summary["history"]["lr"] == pytest.approx([0.3, 0.3, 0.15, 0.15, 0.075, 0.075])
    summary = run_json(["--epochs", "3", "--lr", "0.3", "--lr-schedule", "invscaling",
                        "--power-t", "0.25", "--val-fraction", "0"], capsys)
    n = summary["rows"]["train"]
    assert summary["history"]["lr"] == pytest.approx([0.3 / (k * n + 1) ** 0.25
                                                      for k in range(3)])


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "rmsprop"])
def test_resume_continues_the_run_exactly(optimizer, tmp_path, capsys):
    base = ["--optimizer", optimizer, "--layers", "32", "--lr-schedule", "step", "--lr-step",
            "1", "--lr-gamma", "0.7"]
    if optimizer == "sgd":
        base += ["--momentum", "0.5"]
    if optimizer == "rmsprop":
        base += ["--momentum", "0.5", "--centered", "--lr", "0.002"]
    whole, first, second = (tmp_path / f"{name}.npz" for name in ("whole", "first", "second"))
    run_json(base + ["--epochs", "4", "--save", str(whole)], capsys)
    # 2 epochs, then resumed (the schedule comes from the file) to 4.
    run_json(base + ["--epochs", "2", "--save", str(first)], capsys)
    summary = run_json(["--resume", str(first), "--epochs", "4", "--save", str(second)], capsys)
    assert summary["first_epoch"] == 3 and summary["epochs_run"] == 2
    (a, opt_a), (b, opt_b) = fastbp.load_checkpoint(whole), fastbp.load_checkpoint(second)
    assert np.array_equal(a.params, b.params)
    assert np.array_equal(opt_a.state, opt_b.state) and opt_a.steps == opt_b.steps
    assert opt_b.lr == opt_a.lr
    code, out, err = run(["train", "--resume", str(second), "--epochs", "4"], capsys)
    assert code == 2 and "4 epochs done" in err


def test_resume_continues_a_normalised_dropout_run_exactly(tmp_path, capsys):
    """The model's running statistics and dropout masks go on from the file: two runs of 2
    epochs are the run of 4."""
    base = ["--layers", "32,32", "--norm", "batch,layer", "--dropout", "0.2", "--residual",
            "--lr-schedule", "constant", "--lr", "0.1"]
    whole, first, second = (tmp_path / f"{name}.npz" for name in ("whole", "first", "second"))
    run_json(base + ["--epochs", "4", "--save", str(whole)], capsys)
    run_json(base + ["--epochs", "2", "--save", str(first)], capsys)
    summary = run_json(["--resume", str(first), "--epochs", "4", "--save", str(second)], capsys)
    assert summary["norm"] == ["batch", "layer"] and summary["dropout"] == [0.2, 0.2]
    a, b = fastbp.load(whole), fastbp.load(second)
    assert np.array_equal(a.params, b.params) and a.training_passes == b.training_passes
    assert np.array_equal(a.running_means[0], b.running_means[0])
    assert np.array_equal(a.running_vars[0], b.running_vars[0])


def test_cosine_schedule_rates(capsys):
    summary = run_json(["--epochs", "4", "--lr", "0.4", "--warmup", "1"], capsys)
    expected = [0.4 / 2] + [0.4 * 0.5 * (1 + np.cos(np.pi * e / 3)) for e in (0, 1, 2)]
    assert summary["history"]["lr"] == pytest.approx(expected, rel=1e-12)


def test_save_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    model_path, plot_path = tmp_path / "model.npz", tmp_path / "curves.png"
    summary = run_json(["--epochs", "3", "--save", str(model_path), "--plot", str(plot_path)],
                       capsys)
    assert summary["saved"] == str(model_path) and summary["plot"] == str(plot_path)
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = fastbp.load(model_path)
    meta = fastbp.io.read_metadata(model_path)
    assert meta["data"] == "digits" and meta["epochs"] == 3 and len(meta["offset"]) == 64
    # The saved model with the saved scaling reproduces the reported test accuracy.
    ds = fastbp.data.load("digits", seed=0)
    raw = ds.X_test * ds.scale + ds.offset
    X = ((raw - np.array(meta["offset"])) / np.array(meta["scale"])).astype(np.float32)
    assert np.mean(model.predict(X) == ds.y_test) == pytest.approx(meta["test_accuracy"])
    assert sorted(os.listdir(tmp_path)) == ["curves.png", "model.npz"]


def test_csv_and_npz_files(tmp_path, capsys):
    raw = np.load(fastbp.data.digits_path())
    X, y = raw["X"][:400], raw["y"][:400]
    rows = [",".join([str(label)] + [str(v) for v in x]) for x, label in zip(X, y)]
    (tmp_path / "d.csv").write_text("label," + ",".join(f"p{i}" for i in range(64)) + "\n"
                                    + "\n".join(rows) + "\n")
    summary = run_json(["--data", str(tmp_path / "d.csv"), "--label-column", "0",
                        "--epochs", "5"], capsys)
    assert summary["data"] == "d.csv" and summary["rows"]["test"] == 80
    np.savez(tmp_path / "d.npz", X=X.reshape(400, 8, 8), y=y, X_test=X[:50], y_test=y[:50])
    summary = run_json(["--data", str(tmp_path / "d.npz"), "--epochs", "5"], capsys)
    assert summary["rows"]["test"] == 50 and summary["sizes"][0] == 64


def test_mnist_from_a_data_dir(tmp_path, capsys):
    write_idx_set(tmp_path, n_train=300, n_test=50, shape=(28, 28))
    summary = run_json(["--data", "mnist", "--data-dir", str(tmp_path), "--epochs", "1",
                        "--layers", "16"], capsys)
    assert summary["sizes"] == [784, 16, 10] and summary["rows"]["test"] == 50


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason="../shared/data/mnist not present")
def test_real_mnist_one_epoch(capsys):
    summary = run_json(["--data", "mnist", "--data-dir", str(MNIST_DIR), "--layers", "256,128",
                        "--epochs", "1"], capsys)
    assert summary["rows"]["test"] == 10000 and summary["test_accuracy"] > 0.93


@pytest.mark.skipif(not MNIST_DIR.is_dir() or not os.environ.get("FASTBP_SLOW_TESTS"),
                    reason="needs ../shared/data/mnist and FASTBP_SLOW_TESTS=1")
def test_real_mnist_issue_command(capsys):
    summary = run_json(["--data", "mnist", "--data-dir", str(MNIST_DIR), "--layers", "256,128",
                        "--epochs", "5"], capsys)
    assert summary["test_accuracy"] >= 0.975


# -- bad input: exit status 2, one line on stderr, nothing written --------------------------


def bad_inputs(tmp):
    truncated = tmp / "trunc"
    write_idx_set(truncated)
    blob = (truncated / "train-images-idx3-ubyte.gz").read_bytes()
    (truncated / "train-images-idx3-ubyte.gz").write_bytes(blob[:-40])
    liar = tmp / "liar"
    write_idx_set(liar)
    (liar / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.zeros(5, np.uint8), dims=(4_000_000_000,))))
    (tmp / "junk.npz").write_bytes(b"junk")
    np.savez(tmp / "pickled.npz", X=np.zeros((3, 2)), y=np.array([1, "a", None], dtype=object))
    np.savez(tmp / "floaty.npz", X=np.zeros((4, 2)), y=np.array([0.5, 1, 0, 1]))
    (tmp / "ragged.csv").write_text("1,2,0\n3,4,1\n5,1\n")
    return [
        (["train", "--epochs", "0"], "--epochs"),
        (["train", "--epochs", "ten"], "--epochs"),
        (["train", "--batch-size", "-3"], "--batch-size"),
        (["train", "--lr", "0"], "--lr"),
        (["train", "--lr", "nan"], "--lr"),
        (["train", "--clip-norm", "-1"], "--clip-norm"),
        (["train", "--layers", "64,x"], "--layers"),
        (["train", "--layers", "0,5"], "--layers"),
        (["train", "--activation", "swish"], "swish"),
        (["train", "--activation", "relu,tanh", "--layers", "8"], "--activation"),
        (["train", "--loss", "hinge"], "--loss"),
        (["train", "--norm", "group"], "--norm: unknown normalisation 'group'"),
        (["train", "--norm", "batch,layer"], "--norm: 2 names for 1 hidden layers"),
        (["train", "--norm", "layer", "--layers", "none"], "--norm applies to hidden layers"),
        (["train", "--norm", "batch", "--batch-size", "2"], "--batch-size 2: batch norm"),
        (["train", "--norm", "batch", "--batch-size", "647"], "leave a batch of 1 row"),
        (["train", "--dropout", "1.5"], "--dropout"),
        (["train", "--dropout", "1"], "--dropout"),
        (["train", "--dropout", "-0.1"], "--dropout"),
        (["train", "--dropout", "nan"], "--dropout"),
        (["train", "--dropout", "0.1,x", "--layers", "8,8"], "--dropout"),
        (["train", "--dropout", "0.1,0.2,0.3", "--layers", "8,8"],
         "--dropout: 3 values for 2 hidden layers"),
        (["train", "--residual"], "--residual: no hidden layer of sizes [64, 128, 10]"),
        (["train", "--residual", "--layers", "none"], "--residual applies to hidden layers"),
        (["train", "--dtype", "float16"], "--dtype"),
        (["train", "--val-fraction", "1"], "--val-fraction"),
        (["train", "--test-fraction", "0"], "--test-fraction"),
        (["train", "--threads", "0"], "--threads"),
        (["train", "--threads", "100000"], "--threads"),
        (["train", "--seed", "-1"], "--seed"),
        (["train", "--early-stopping", "3", "--val-fraction", "0"], "--early-stopping"),
        (["train", "--data", "cifar"], "unknown data set"),
        (["train", "--data", str(tmp / "none.npz")], "no such file"),
        (["train", "--data", str(tmp / "junk.npz")], "not a readable .npz"),
        (["train", "--data", str(tmp / "pickled.npz")], "pickled"),
        (["train", "--data", str(tmp / "floaty.npz")], "whole numbers"),
        (["train", "--data", str(tmp / "ragged.csv")], "line 3"),
        (["train", "--data", str(tmp / "ragged.csv"), "--label-column", "9"], "label column"),
        (["train", "--data", "mnist", "--data-dir", str(tmp / "nodir")], "--data-dir"),
        (["train", "--data", "mnist", "--data-dir", str(truncated)], "truncated"),
        (["train", "--data", "mnist", "--data-dir", str(liar)], "truncated"),
        (["train", "--data-dir", str(tmp)], "--data-dir"),
        (["train", "--save", str(tmp / "no" / "m.npz")], "does not exist"),
        (["train", "--optimizer", "adagrad"], "--optimizer"),
        (["train", "--betas", "0.9"], "--betas"),
        (["train", "--betas", "0.9,1"], "--betas"),
        (["train", "--eps", "0"], "--eps"),
        (["train", "--momentum", "-0.5"], "--momentum"),
        (["train", "--weight-decay", "-1"], "--weight-decay"),
        (["train", "--nesterov"], "--nesterov"),
        (["train", "--optimizer", "adam", "--momentum", "0.9"], "--momentum"),
        (["train", "--amsgrad"], "--amsgrad"),
        (["train", "--betas", "0.8,0.9"], "--betas applies"),
        (["train", "--eps", "1e-6"], "--eps applies"),
        (["train", "--alpha", "0.9"], "--alpha applies to --optimizer rmsprop, not sgd"),
        (["train", "--centered"], "--centered applies"),
        (["train", "--optimizer", "rmsprop", "--betas", "0.8,0.9"], "--betas applies"),
        (["train", "--optimizer", "rmsprop", "--amsgrad"], "--amsgrad applies"),
        (["train", "--optimizer", "rmsprop", "--nesterov", "--momentum", "0.5"],
         "--nesterov applies"),
        (["train", "--optimizer", "adam", "--momentum", "0"], "--momentum applies"),
        (["train", "--optimizer", "rmsprop", "--alpha", "-0.1"], "--alpha"),
        (["train", "--optimizer", "rmsprop", "--alpha", "1.5"], "--alpha"),
        (["train", "--optimizer", "rmsprop", "--momentum", "1.5"], "momentum"),
        (["train", "--optimizer", "rmsprop", "--eps", "1e-320"], "eps"),
        (["train", "--lr-step", "2"], "--lr-step applies"),
        (["train", "--lr-gamma", "0.5", "--lr-schedule", "constant"], "--lr-gamma applies"),
        (["train", "--power-t", "0.3"], "--power-t applies"),
        (["train", "--resume", str(tmp)], "is a folder"),
        (["train", "--save", ""], "--save: the file name is empty"),
        (["train", "--save", str(tmp) + os.sep + "new" + os.sep], "names a folder"),
        (["train", "--save", str(tmp / "x.png"), "--plot", str(tmp / "x.png")], "same file"),
        (["train", "--accumulate", "0"], "--accumulate"),
        (["train", "--lr-schedule", "linear"], "--lr-schedule"),
        (["train", "--warmup", "2", "--lr-schedule", "constant"], "--warmup"),
        (["train", "--warmup", "30"], "--warmup"),
        (["train", "--resume", str(tmp / "none.npz")], "--resume"),
        (["train", "--resume", str(tmp / "junk.npz")], "--resume"),
        (["train", "--save", str(tmp)], "is a folder"),
        (["train", "--plot", str(tmp / "no" / "c.png")], "does not exist"),
        (["train", "--frobnicate"], "unrecognized arguments"),
        ([], "expected a command"),
    ]


def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    cases = bad_inputs(inputs)
    before = sorted(os.listdir(inputs))
    for argv, expected in cases:
        code, out, err = run(argv + ["--quiet"] if argv else argv, capsys)
        assert code == 2, (argv, err)
        assert out == "", (argv, out)
        assert err.count("\n") == 1 and "Traceback" not in err, (argv, err)
        assert expected in err, (argv, err)
    assert sorted(os.listdir(inputs)) == before
    assert not (inputs / "no").exists()


def test_plot_format_and_missing_matplotlib(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    code, _, err = run(["train", "--plot", str(tmp_path / "c.xyz")], capsys)
    assert code == 2 and "unsupported file type 'xyz'" in err
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    code, _, err = run(["train", "--plot", str(tmp_path / "c.png")], capsys)
    assert code == 2 and "pip install 'fastbp[plot]'" in err
    assert os.listdir(tmp_path) == []


def test_divergence_exits_1_and_writes_nothing(tmp_path, capsys):
    code, out, err = run(["train", "--quiet", "--lr", "1e30", "--clip-norm", "none",
                          "--scale", "none", "--save", str(tmp_path / "m.npz")], capsys)
    assert code == 1 and "diverged" in err and "--lr" in err
    assert os.listdir(tmp_path) == []


def test_interrupt_saves_last_good_weights(tmp_path, capsys, monkeypatch):
    """Ctrl-C during training (simulated at the end of epoch 3): exit 130, the model of that
    moment is saved and loads."""
    report = cli._EpochReport.on_epoch_end
    captured = {}

    def interrupting(self, epoch, history, model):
        report(self, epoch, history, model)
        if epoch == 2:
            captured["params"] = model.params.copy()
            raise KeyboardInterrupt

    monkeypatch.setattr(cli._EpochReport, "on_epoch_end", interrupting)
    path = tmp_path / "m.npz"
    code, out, err = run(["train", "--epochs", "50", "--save", str(path)], capsys)
    assert code == 130
    assert "interrupted: 3 complete epoch(s)" in out and "test accuracy" in out
    np.testing.assert_array_equal(fastbp.load(path).params, captured["params"])
    assert fastbp.io.read_metadata(path)["interrupted"] is True
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL   # main's handler, gone again


def _signal_after_the_first_epoch(tmp_path, signum):
    """Run `fastbp train --save m.npz` in a real process and send it signum once it reports its
    first epoch; returns (exit status, stdout, stderr, the save's path)."""
    path = tmp_path / "m.npz"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "fastbp", "train", "--epochs", "100000",
                             "--save", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        for line in proc.stdout:
            if line.startswith("epoch "):
                break
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, err, path


def test_sigint_in_a_real_process(tmp_path):
    """A real SIGINT while `fastbp train` runs: exit 130, no traceback, weights saved."""
    status, out, err, path = _signal_after_the_first_epoch(tmp_path, signal.SIGINT)
    assert status == 130, err
    assert "Traceback" not in err
    assert "interrupted" in out and "model saved" in out
    assert fastbp.load(path).sizes == [64, 128, 10]
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]


def test_sigterm_stops_like_ctrl_c_and_saves(tmp_path):
    """SIGTERM (a preempted cluster job) once the first epoch is reported: exit 143, no
    traceback, the last good weights saved and loadable, marked interrupted."""
    status, out, err, path = _signal_after_the_first_epoch(tmp_path, signal.SIGTERM)
    assert status == 143, err
    assert "Traceback" not in err
    assert "interrupted" in out and "model saved" in out
    assert fastbp.load(path).sizes == [64, 128, 10]
    assert fastbp.io.read_metadata(path)["interrupted"] is True


def test_sigint_while_compiling(tmp_path):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) while the first run
    compiles, with an empty Numba cache: exit 130 within seconds, one line and no traceback, no
    compile worker left running, nothing written."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.Popen([sys.executable, "-m", "fastbp", "train", "--save",
                             str(tmp_path / "m.npz")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
                            start_new_session=True)
    try:
        for line in proc.stdout:
            if line.startswith("compiling kernels"):
                break
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    leftover = subprocess.run(["ps", "-o", "pid=", "-g", str(proc.pid)], capture_output=True,
                              text=True).stdout.split()
    assert leftover == [], "compile workers still running"
    assert not (tmp_path / "m.npz").exists()


def test_python_m_and_help():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-m", "fastbp", "train", "--help"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0
    for option in ("--data", "--data-dir", "--layers", "--activation", "--loss", "--epochs",
                   "--batch-size", "--lr", "--clip-norm", "--threads", "--seed", "--dtype",
                   "--val-fraction", "--early-stopping", "--save", "--plot", "--quiet",
                   "--json", "--norm", "--residual", "--dropout"):
        assert option in result.stdout


@pytest.mark.parametrize("script, name", [("xor_boundary.py", "xor.png"),
                                          ("digits_grid.py", "grid.png")])
def test_examples_write_their_pictures(tmp_path, script, name):
    pytest.importorskip("matplotlib")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, str(ROOT / "examples" / script),
                             str(tmp_path / name)], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_warm_up_readies_everything_training_runs_and_changes_nothing():
    """The warm-up compiles (or loads) what this model's training runs, its activations' loops
    and an input split included, so that epoch timings measure training only; it leaves the
    parameters as they were. The other kinds of update's units (RMSprop's, Adam's) are not
    readied: only a run that uses one compiles it. (In a fresh interpreter: other tests fill
    the same table.)"""
    code = """
import numpy as np, fastbp
from fastbp import cli
from fastbp.kernels import _units, plan
import numba
fastbp.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
rng = np.random.default_rng(0)
model = fastbp.MLP([784, 32, 16, 10], activation=["leaky_relu", "gelu"], seed=0)
optimizer = fastbp.SGD(model, lr=0.1)
X, y = rng.normal(size=(50, 784)), rng.integers(0, 10, 50)
before = model.params.copy()
cli._warm_up(model, optimizer, X, y, 32)
names = plan.units_for(model.loss, optimizer.update_spec().kind, model.engine.net)
ready = [name for name in names if _units._table[_units._slot(name, _units.DTYPES[0])]]
others = [kind.unit for kind in fastbp.kernels.KINDS.values() if kind.unit not in names]
print(np.array_equal(model.params, before), sorted(names) == sorted(ready),
      "dense_forward_split_input" in names or fastbp.get_num_threads() == 1,
      "bias_activation_gelu" in names, "rmsprop_step" in others,
      not any(_units._table[_units._slot(name, dt)] for name in others for dt in _units.DTYPES))
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-6:] == ["True"] * 6


def test_resume_refuses_other_settings_and_model_options(tmp_path, capsys):
    saved = tmp_path / "run.npz"
    run_json(["--epochs", "1", "--batch-size", "16", "--lr-schedule", "constant", "--save",
              str(saved)], capsys)
    before = saved.read_bytes()
    for argv, expected in ((["--batch-size", "32"], "--batch-size 32 (the run's: 16)"),
                           (["--batch-size", "16", "--seed", "3"], "--seed 3 (the run's: 0)"),
                           (["--batch-size", "16", "--layers", "64", "--lr", "0.1"],
                            "drop --layers, --lr"),
                           (["--batch-size", "16", "--optimizer", "adam"], "drop --optimizer"),
                           (["--batch-size", "16", "--norm", "layer", "--residual", "--dropout",
                             "0.1"], "drop --norm, --residual, --dropout")):
        code, out, err = run(["train", "--quiet", "--epochs", "3", "--resume", str(saved),
                              "--save", str(saved)] + argv, capsys)
        assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
    assert saved.read_bytes() == before
    summary = run_json(["--epochs", "3", "--resume", str(saved), "--batch-size", "16"], capsys)
    assert summary["first_epoch"] == 2 and summary["epochs_run"] == 2


def _csv_rows(path, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(120, 4))
    path.write_text("".join(",".join(f"{v:.6f}" for v in row) + f",{i % 3}\n"
                            for i, row in enumerate(X)))


def test_resume_refuses_a_data_file_whose_rows_changed(tmp_path, capsys):
    """Same file name, other rows: refused with one line naming the file, nothing written;
    also for a file saved with the digest of the scaled rows (before the raw rows' digest), and
    for one saved without a digest (the scaling of the rows then differs)."""
    data_file, saved = tmp_path / "rows.csv", tmp_path / "run.npz"
    _csv_rows(data_file, seed=0)
    run_json(["--data", str(data_file), "--epochs", "1", "--layers", "8", "--lr-schedule",
              "constant", "--save", str(saved)],
             capsys)
    model, optimizer = fastbp.load_checkpoint(saved)
    metadata = fastbp.io.read_metadata(saved)
    raw_digest = metadata.pop("raw_rows_digest")
    older = tmp_path / "older.npz"
    fastbp.io.save(model, older, metadata=metadata, optimizer=optimizer)
    ds = fastbp.data.load(str(data_file), seed=0, digest=True)
    scaled = tmp_path / "scaled.npz"   # saved when the digest was of the scaled rows
    fastbp.io.save(model, scaled, optimizer=optimizer, metadata=dict(
        metadata, train_rows_digest=fastbp.distributed.array_digest(ds.X_train, ds.y_train)))
    assert raw_digest == ds.raw_digest
    assert fastbp.data.load(str(data_file), seed=0).raw_digest is None   # (asked for only)
    _csv_rows(data_file, seed=1)   # overwritten: other rows, same shape and classes
    for resumed, expected in ((saved, "its training rows differ"),
                              (scaled, "its training rows differ"),
                              (older, "the feature scaling of its training rows (offset)")):
        before = resumed.read_bytes()
        code, out, err = run(["train", "--quiet", "--data", str(data_file), "--epochs", "3",
                              "--resume", str(resumed), "--save", str(resumed)], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"--resume {resumed}: the data {data_file} is not the run's" in err
        assert expected in err and resumed.read_bytes() == before, err
    _csv_rows(data_file, seed=0)   # the run's rows again: it continues, from either digest
    for resumed in (saved, scaled):
        summary = run_json(["--data", str(data_file), "--epochs", "3", "--resume",
                            str(resumed)], capsys)
        assert summary["first_epoch"] == 2


def test_resume_after_ctrl_c_within_an_epoch_is_the_uninterrupted_run(tmp_path, capsys,
                                                                       monkeypatch):
    """Ctrl-C in the middle of epoch 2 (simulated after the 9th compiled chunk of steps), then
    --resume: the same parameters, state and step count as one run that never stopped."""
    base = ["--epochs", "4", "--batch-size", "8", "--optimizer", "adam"]
    whole, stopped, resumed = (tmp_path / f"{n}.npz" for n in ("whole", "stopped", "resumed"))
    run_json(base + ["--save", str(whole)], capsys)
    chunk = fastbp.engine.Engine.train_steps
    calls = []

    def interrupted(*args, **kwargs):
        done = chunk(*args, **kwargs)
        calls.append(done)
        if len(calls) == 9:
            raise KeyboardInterrupt
        return done
    monkeypatch.setattr(fastbp.engine.Engine, "train_steps", interrupted)
    code, _, _ = run(["train", "--quiet"] + base + ["--save", str(stopped)], capsys)
    monkeypatch.undo()
    assert code == 130
    run_info = fastbp.io.read_metadata(stopped)["run"]
    assert run_info["stop_reason"] == "interrupted" and run_info["epoch_steps"] > 0
    summary = run_json(["--resume", str(stopped), "--batch-size", "8", "--save", str(resumed)],
                       capsys)
    assert summary["first_epoch"] == 2
    (a, opt_a), (b, opt_b) = fastbp.load_checkpoint(whole), fastbp.load_checkpoint(resumed)
    assert np.array_equal(a.params, b.params) and np.array_equal(opt_a.state, opt_b.state)
    assert opt_a.steps == opt_b.steps and opt_a.epochs_done == opt_b.epochs_done == 4


def test_resume_refuses_a_cosine_of_another_length_and_an_early_stopped_run(tmp_path, capsys):
    cosine, stopped = tmp_path / "cosine.npz", tmp_path / "stopped.npz"
    run_json(["--epochs", "2", "--save", str(cosine)], capsys)
    code, _, err = run(["train", "--resume", str(cosine), "--epochs", "5"], capsys)
    assert code == 2 and "cosine schedule spans 2 epochs" in err
    run_json(["--epochs", "200", "--early-stopping", "1", "--lr-schedule", "constant",
              "--lr", "0.3", "--save", str(stopped)], capsys)
    code, _, err = run(["train", "--resume", str(stopped), "--epochs", "300"], capsys)
    assert code == 2 and "early stopping" in err


def test_data_that_cannot_be_read_within_memory_exits_2_with_one_line(tmp_path, capsys,
                                                                      monkeypatch):
    big = tmp_path / "big.csv.gz"
    big.write_bytes(gzip.compress(b"1,2,3,0\n" * 300_000))   # 2.4 MB of text, 10 kB on disk
    cases = [(["--data", str(big)], "1M", "characters of text"),
             (["--data", "digits"], "lots", "FASTBP_MAX_DATA_BYTES: expected a size")]
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.csv")
        cases.append((["--data", str(tmp_path / "pipe.csv")], "", "not a regular file"))
    for argv, limit, expected in cases:
        monkeypatch.setenv("FASTBP_MAX_DATA_BYTES", limit)
        code, out, err = run(["train", "--quiet", "--epochs", "1"] + argv, capsys)
        assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err


def _trained_params(path):
    return fastbp.load(path).params


def test_ctrl_c_after_training_still_saves_the_trained_weights(tmp_path, capsys, monkeypatch):
    argv = ["train", "--quiet", "--epochs", "2", "--batch-size", "64", "--save"]
    assert run(argv + [str(tmp_path / "whole.npz")], capsys)[0] == 0
    expected = _trained_params(tmp_path / "whole.npz")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    with monkeypatch.context() as patch:   # Ctrl-C while the test rows are scored
        patch.setattr(fastbp.MLP, "predict", interrupted)
        code, out, err = run(argv + [str(tmp_path / "scoring.npz")], capsys)
    assert code == 130 and "test rows were not scored" in out + err
    np.testing.assert_array_equal(_trained_params(tmp_path / "scoring.npz"), expected)

    real_savez = np.savez_compressed

    def savez_interrupted(*args, **kwargs):   # a real SIGINT in the middle of the save
        os.kill(os.getpid(), signal.SIGINT)
        return real_savez(*args, **kwargs)
    with monkeypatch.context() as patch:
        patch.setattr(np, "savez_compressed", savez_interrupted)
        code, out, err = run(argv + [str(tmp_path / "saving.npz")], capsys)
    assert code == 130 and "model saved to" in out + err, err
    np.testing.assert_array_equal(_trained_params(tmp_path / "saving.npz"), expected)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _command(args, env_update=None, code=None):
    """Run the fastbp command (python -m fastbp, or the given code) in a fresh interpreter."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(env_update or {})
    argv = [sys.executable, "-m", "fastbp"] + args if code is None else [sys.executable, "-c",
                                                                          code] + args
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600,
                          cwd=str(ROOT.parent))


NUMBA_SETTINGS = [({"NUMBA_NUM_THREADS": "0"}, "NUMBA_NUM_THREADS=0: Numba needs at least one"),
                  ({"NUMBA_DISABLE_JIT": "1"}, "NUMBA_DISABLE_JIT is set"),
                  ({"NUMBA_THREADING_LAYER": "banana"}, "NUMBA_THREADING_LAYER=banana")]
if importlib.util.find_spec("tbb") is None:
    NUMBA_SETTINGS.append(({"NUMBA_THREADING_LAYER": "tbb"}, "NUMBA_THREADING_LAYER=tbb"))


@pytest.mark.parametrize("setting, message", NUMBA_SETTINGS)
def test_numba_settings_that_stop_fastbp_are_one_line(setting, message):
    result = _command(["train", "--epochs", "1"], setting)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"fastbp: {message}")
    library = _command([], setting, code="import fastbp")
    assert library.returncode == 1 and f"ImportError: fastbp: {message}" in library.stderr


def test_ctrl_c_while_fastbp_imports_exits_130_without_a_traceback():
    # A Ctrl-C arriving while fastbp's modules load, made deterministic by an import hook.
    code = ("import sys\n"
            "class Interrupt:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'fastbp.plotting':\n"
            "            raise KeyboardInterrupt\n"
            "sys.meta_path.insert(0, Interrupt())\n"
            "sys.argv[0] = 'fastbp'\n"
            "from fastbp.cli import main\n")
    result = _command(["train"], code=code)
    assert result.returncode == 130 and result.stderr == "fastbp: interrupted\n", result.stderr


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
def test_work_split_shape_gives_the_same_run_at_any_thread_count(capsys):
    args = ["--epochs", "2", "--layers", "256", "--batch-size", "128", "--seed", "3"]
    threads = fastbp.get_num_threads()
    try:
        one, two = (run_json(args + ["--threads", n], capsys) for n in ("1", "2"))
        fast = run_json(args + ["--threads", "2", "--work-split", "threads"], capsys)
        assert fastbp.get_work_split() == "threads"
    finally:
        fastbp.set_work_split("shape")
        fastbp.set_num_threads(threads)
    assert (one["work_split"], fast["work_split"]) == ("shape", "threads")
    timings = ("seconds", "samples_per_s")
    assert ({k: v for k, v in one["history"].items() if k not in timings}
            == {k: v for k, v in two["history"].items() if k not in timings})
    assert fast["history"]["loss"] == pytest.approx(one["history"]["loss"], rel=1e-5)
    code, _, err = run(["train", "--work-split", "fast"], capsys)
    assert code == 2 and "--work-split" in err and "'fast'" in err
