"""Where fastbp.save and fastbp train --save write: only a regular file is replaced (a
symbolic link's target, written through the link), and a long but legal name is written."""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastbp
from test_cli import ROOT

TRAIN = ["train", "--quiet", "--epochs", "1", "--layers", "8"]


def name_max(folder):
    return os.pathconf(folder, "PC_NAME_MAX")


def _model():
    return fastbp.MLP([3, 4, 2], seed=0)


def _fastbp(args, cwd):
    """fastbp in a process of its own: a write to a fifo would block for ever in this one."""
    return subprocess.run([sys.executable, "-m", "fastbp"] + args, capture_output=True,
                          text=True, timeout=300, cwd=cwd,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))


def _things(tmp_path):
    """Paths that are not regular files (and are not to be replaced), with their kind."""
    fifo, folder = tmp_path / "fifo", tmp_path / "folder"
    os.mkfifo(fifo)
    folder.mkdir()
    dangling, to_fifo = tmp_path / "dangling", tmp_path / "to-fifo"
    dangling.symlink_to(tmp_path / "nothing.npz")
    to_fifo.symlink_to(fifo)
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    return [(fifo, "is a fifo"), (folder, "is a folder"), (to_fifo, "is a fifo"),
            (dangling, "which does not exist"), (loop, "cannot be followed")]


def _state(path):
    return (os.path.islink(path), os.lstat(path).st_mode)


def test_save_refuses_what_is_not_a_regular_file(tmp_path):
    for path, expected in _things(tmp_path):
        before = _state(path)
        # In a process of its own: before the check, a fifo blocked the write... or was
        # replaced.
        code = (f"import fastbp\ntry:\n    fastbp.save(fastbp.MLP([3, 2]), {str(path)!r})\n"
                "except OSError as exc:\n    print(type(exc).__name__, exc)\n")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert result.stdout.startswith("DestinationError path: ") \
            or result.stdout.startswith("_FolderError path: "), (path, result)
        assert str(path) in result.stdout and expected in result.stdout, result.stdout
        assert _state(path) == before
    assert not (tmp_path / "nothing.npz").exists()


def test_train_refuses_what_is_not_a_regular_file_before_training(tmp_path):
    for path, expected in _things(tmp_path):
        before = _state(path)
        result = _fastbp(TRAIN + ["--save", str(path)], tmp_path)
        assert result.returncode == 2, (path, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr
        assert str(path) in result.stderr and result.stdout == ""
        assert _state(path) == before


def test_a_symbolic_link_has_its_target_replaced(tmp_path):
    target, link = tmp_path / "target.npz", tmp_path / "link.npz"
    target.write_bytes(b"old")
    link.symlink_to(target)
    model = _model()
    assert fastbp.save(model, link) == str(link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert np.array_equal(fastbp.load(target).params, model.params)
    assert sorted(os.listdir(tmp_path)) == ["link.npz", "target.npz"]


def test_a_name_of_the_longest_length_is_written(tmp_path):
    longest = name_max(str(tmp_path))
    path = tmp_path / ("m" * (longest - 4) + ".npz")
    model = _model()
    fastbp.save(model, path)
    fastbp.save(model, path)   # and replaced
    assert np.array_equal(fastbp.load(path).params, model.params)
    assert os.listdir(tmp_path) == [path.name]
    result = _fastbp(TRAIN + ["--save", path.name], tmp_path)
    assert result.returncode == 0, result.stderr
    assert os.listdir(tmp_path) == [path.name]


def test_a_name_too_long_is_refused_before_training(tmp_path):
    name = "m" * (name_max(str(tmp_path)) - 3) + ".npz"
    result = _fastbp(TRAIN + ["--save", name], tmp_path)
    assert result.returncode == 2 and "bytes long" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""
    with pytest.raises(OSError, match="bytes long"):
        fastbp.save(_model(), tmp_path / name)
    assert os.listdir(tmp_path) == []
