"""fastbp train --resume and the run record that --save writes: a Ctrl-C that lands in an
epoch's last compiled chunk, and run records whose numbers were tampered with."""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastbp

from test_cli import ROOT, run, run_json

BASE = ["--epochs", "4", "--batch-size", "8", "--optimizer", "adam"]


def _interrupt_after_chunk(monkeypatch, last):
    """Ctrl-C just after the compiled chunk numbered `last` (from 1) returns, as a real SIGINT
    during that chunk is delivered. (Calls that take no step, fit's warm-up, do not count.)"""
    chunk = fastbp.engine.Engine.train_steps
    calls = []

    def interrupted(*args, **kwargs):
        done = chunk(*args, **kwargs)
        calls.extend([done] if done else [])
        if done and len(calls) == last:
            raise KeyboardInterrupt
        return done
    monkeypatch.setattr(fastbp.engine.Engine, "train_steps", interrupted)


def _chunks_per_epoch(steps_per_epoch):
    chunk_steps = max(32, -(-steps_per_epoch // 20))   # as fit cuts an epoch
    return -(-steps_per_epoch // chunk_steps)


def _rewrite_run(path, dest, **changes):
    """A copy of the checkpoint at path with some fields of its run record changed."""
    model, opt = fastbp.load_checkpoint(path)
    metadata = fastbp.io.read_metadata(path)
    metadata["run"].update(changes)
    fastbp.save(model, dest, metadata=metadata, optimizer=opt)
    return dest


@pytest.fixture
def whole_run(tmp_path_factory, capsys):
    path = tmp_path_factory.mktemp("whole") / "whole.npz"
    run_json(BASE + ["--save", str(path)], capsys)
    return path


def test_ctrl_c_in_an_epochs_last_chunk_resumes_as_the_uninterrupted_run(
        whole_run, tmp_path, capsys, monkeypatch):
    _, opt_whole = fastbp.load_checkpoint(whole_run)
    per_epoch = opt_whole.steps // 4
    stopped, resumed = tmp_path / "stopped.npz", tmp_path / "resumed.npz"
    _interrupt_after_chunk(monkeypatch, 2 * _chunks_per_epoch(per_epoch))   # epoch 2's last
    code, _, _ = run(["train", "--quiet"] + BASE + ["--save", str(stopped)], capsys)
    monkeypatch.undo()
    assert code == 130
    # Written as a closed epoch: the next starts at its first step.
    _, opt = fastbp.load_checkpoint(stopped)
    assert opt.epochs_done == 2 and opt.steps == 2 * per_epoch
    assert fastbp.io.read_metadata(stopped)["run"]["epoch_steps"] == 0
    summary = run_json(["--resume", str(stopped), "--batch-size", "8", "--save", str(resumed)],
                       capsys)
    assert summary["first_epoch"] == 3 and summary["epochs_run"] == 2
    _same_as(whole_run, resumed)

    # A file of an older fastbp: the epoch's steps all taken, the epoch not ended.
    model, opt = fastbp.load_checkpoint(stopped)
    opt.set_position(opt.epochs_done - 1, opt.samples_seen - opt.samples_seen // 2)
    metadata = fastbp.io.read_metadata(stopped)
    metadata["run"]["epoch_steps"] = per_epoch
    old = tmp_path / "old.npz"
    fastbp.save(model, old, metadata=metadata, optimizer=opt)
    code, out, err = run(["train", "--quiet", "--resume", str(old), "--batch-size", "8",
                          "--save", str(resumed)], capsys)
    assert code == 0, err
    _same_as(whole_run, resumed)


def _same_as(expected, got):
    (a, opt_a), (b, opt_b) = fastbp.load_checkpoint(expected), fastbp.load_checkpoint(got)
    assert np.array_equal(a.params, b.params) and np.array_equal(opt_a.state, opt_b.state)
    assert opt_a.steps == opt_b.steps and opt_a.epochs_done == opt_b.epochs_done == 4
    assert opt_a.samples_seen == opt_b.samples_seen


@pytest.mark.parametrize("changes, expected", [
    ({"epoch_steps": -1}, "epoch_steps"), ({"epoch_steps": "3"}, "epoch_steps"),
    ({"epoch_steps": 2.5}, "epoch_steps"), ({"epoch_steps": True}, "epoch_steps"),
    ({"epoch_steps": 10 ** 6, "epochs": 8}, "epoch_steps"),
    ({"epochs": 10 ** 30}, "epochs"), ({"epochs": 0}, "epochs"), ({"epochs": "4"}, "epochs"),
])
def test_a_tampered_run_record_is_a_one_line_refusal(whole_run, tmp_path, capsys, changes,
                                                     expected):
    bad = _rewrite_run(whole_run, tmp_path / "bad.npz", **changes)
    before = bad.read_bytes()
    # In a process of its own: before the check, "epochs": 10**30 trained for ever.
    result = subprocess.run([sys.executable, "-m", "fastbp", "train", "--quiet", "--resume",
                             str(bad), "--batch-size", "8", "--save", str(bad)],
                            capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    code, err = result.returncode, result.stderr
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"fastbp train: --resume {bad}: ") and expected in err, err
    assert bad.read_bytes() == before
