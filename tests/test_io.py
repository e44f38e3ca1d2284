"""fastbp.save / fastbp.load: round trips, no pickle, atomic writes, validation on load."""
import os
import re
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import fastbp
from fastbp import io as fio
from fastbp._tempfiles import create_beside
from fastbp.io import ModelFileError

ROOT = Path(__file__).resolve().parent.parent


def trained(sizes=(5, 7, 4, 3), dtype=np.float32, **kw):
    model = fastbp.MLP(list(sizes), dtype=dtype, seed=1, **kw)
    X = np.random.default_rng(0).normal(size=(40, sizes[0]))
    if model.loss == "mse":
        y = np.random.default_rng(1).normal(size=(40, sizes[-1]))
    elif model.loss == "binary_cross_entropy":
        y = (np.random.default_rng(1).random((40, sizes[-1])) < 0.5).astype(np.float64)
    else:
        y = np.arange(40) % sizes[-1]
    fastbp.fit(model, X, y, fastbp.SGD(model, lr=0.05), epochs=2, batch_size=8, seed=0)
    return model, X


def fields(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def rewrite(path, **changes):
    arrays = fields(path)
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    np.savez(path, **arrays)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", [
    {},
    {"activation": ["tanh", "sigmoid"]},
    {"activation": "identity", "output_activation": "sigmoid", "loss": "mse"},
    {"activation": "tanh", "loss": "binary_cross_entropy", "l2": 0.25},
    {"l2": 1e-4},
])
def test_round_trip(tmp_path, dtype, kw):
    model, X = trained(dtype=dtype, **kw)
    path = tmp_path / "m.npz"
    assert fastbp.save(model, path) == str(path)
    loaded = fastbp.load(path)
    assert loaded.sizes == model.sizes and loaded.activations == model.activations
    assert loaded.output_activation == model.output_activation and loaded.loss == model.loss
    assert loaded.dtype == model.dtype and loaded.params.dtype == model.params.dtype
    assert loaded.checkpoint_every == model.checkpoint_every == 1
    assert loaded.l2 == model.l2 == kw.get("l2", 0.0)
    np.testing.assert_array_equal(loaded.params, model.params)
    np.testing.assert_array_equal(loaded.forward(X), model.forward(X))
    if model.loss != "mse":
        np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
        np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
    # Plain arrays: NumPy reads the file with pickle disabled.
    assert set(fields(path)) == {"format", "version", "sizes", "activations",
                                 "output_activation", "loss", "dtype", "checkpoint_every",
                                 "l2", "params"}
    # A model without normalisation, dropout or residuals is written as version 3 (which a
    # fastbp from before version 4 reads).
    assert int(fields(path)["version"]) == 3 and fio.VERSION == 5


@pytest.mark.parametrize("make_optimizer", [
    pytest.param(lambda m: fastbp.Adam(m, lr=0.05), id="adam"),
    pytest.param(lambda m: fastbp.RMSprop(m, lr=0.005, momentum=0.5, centered=True),
                 id="rmsprop"),
])
def test_l2_and_binary_cross_entropy_survive_a_checkpoint(make_optimizer, tmp_path):
    """load_checkpoint brings l2 back with the model: the resumed steps are the uninterrupted
    run's, bit for bit (they would not be without the penalty)."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(30, 5))
    y = (rng.random((30, 3)) < 0.5).astype(float)
    model = fastbp.MLP([5, 6, 3], activation="tanh", loss="binary_cross_entropy",
                       dtype=np.float64, seed=1, l2=0.6)
    opt = make_optimizer(model)
    fastbp.fit(model, X, y, opt, epochs=2, batch_size=8, seed=0)
    fastbp.save(model, tmp_path / "c.npz", optimizer=opt)
    fastbp.fit(model, X, y, opt, epochs=2, batch_size=8, seed=0, initial_epoch=2)
    loaded, loaded_opt = fastbp.load_checkpoint(tmp_path / "c.npz")
    assert loaded.l2 == 0.6 and loaded.loss == "binary_cross_entropy"
    fastbp.fit(loaded, X, y, loaded_opt, epochs=2, batch_size=8, seed=0, initial_epoch=2)
    assert loaded.params.tobytes() == model.params.tobytes()


@pytest.mark.parametrize("version", [1, 2])
def test_files_without_l2_load_with_none(tmp_path, version):
    model, X = trained(activation="tanh", loss="binary_cross_entropy", l2=0.5)
    path = tmp_path / "m.npz"
    fastbp.save(model, path)
    rewrite(path, version=np.array(version), l2=None)
    loaded = fastbp.load(path)
    assert loaded.l2 == 0.0 and loaded.loss == "binary_cross_entropy"
    assert loaded.params.tobytes() == model.params.tobytes()


@pytest.mark.parametrize("value, message", [
    (None, "missing the field 'l2'"),
    (np.array(-0.5), "l2: expected a number in"),
    (np.array(np.nan), "l2: expected a number in"),
    (np.array(np.inf), "l2: expected a number in"),
    (np.array([0.5, 0.5]), r"'l2' must be a number, got float64 of shape \(2,\)"),
    (np.array(True), "'l2' must be a number, got bool"),
    (np.array("0.5"), "'l2' must be a number, got <U3"),
])
def test_bad_l2_is_refused(tmp_path, value, message):
    model, _ = trained(l2=0.5)
    path = tmp_path / "m.npz"
    fastbp.save(model, path)
    rewrite(path, l2=value)
    with pytest.raises(ModelFileError) as info:
        fastbp.load(path)
    text = str(info.value)
    assert "\n" not in text and text.startswith(str(path))
    assert re.search(message, text), text


def test_round_trip_keeps_every_constructor_argument(tmp_path):
    """checkpoint_every (lost by format version 1) and mixed hidden activations come back, with
    the parameters bit for bit; only the seed is not stored (params replace what it chose)."""
    kw = dict(activation=["tanh", "relu", "sigmoid", "identity"], output_activation="sigmoid",
              loss="mse", checkpoint_every=3, l2=0.3)
    model, X = trained(sizes=(5, 7, 6, 4, 5, 3), dtype=np.float64, **kw)
    path = tmp_path / "m.npz"
    fastbp.save(model, path)
    loaded = fastbp.load(path)
    assert loaded.sizes == model.sizes == [5, 7, 6, 4, 5, 3]
    assert loaded.activations == model.activations == ["tanh", "relu", "sigmoid", "identity"]
    assert loaded.output_activation == model.output_activation == "sigmoid"
    assert loaded.loss == model.loss == "mse"
    assert loaded.dtype is model.dtype is np.float64
    assert loaded.checkpoint_every == model.checkpoint_every == 3
    assert loaded.l2 == model.l2 == 0.3
    assert repr(loaded) == repr(model)
    assert loaded.params.tobytes() == model.params.tobytes()
    assert int(fields(path)["checkpoint_every"]) == 3
    # The same checkpointed buffers, hence the same gradients.
    y = np.random.default_rng(1).normal(size=(40, 3))
    assert loaded.loss_and_grad(X, y) == model.loss_and_grad(X, y)
    assert loaded.grads.tobytes() == model.grads.tobytes()
    assert loaded.memory_report() == model.memory_report()


def test_version_1_files_still_load(tmp_path):
    """A file as fastbp wrote it before checkpoint_every was stored (written here by hand)."""
    model, X = trained(activation=["sigmoid", "tanh"])
    path = tmp_path / "v1.npz"
    np.savez(path, format=np.array("fastbp.MLP"), version=np.array(1, dtype=np.int64),
             sizes=np.array(model.sizes, dtype=np.int64),
             activations=np.array(model.activations, dtype=str),
             output_activation=np.array(model.output_activation), loss=np.array(model.loss),
             dtype=np.array("float32"), params=model.params)
    loaded = fastbp.load(path)
    assert loaded.checkpoint_every == 1
    assert loaded.sizes == model.sizes and loaded.activations == ["sigmoid", "tanh"]
    assert loaded.params.tobytes() == model.params.tobytes()
    np.testing.assert_array_equal(loaded.forward(X), model.forward(X))
    # A version-1 file that does carry the field is held to the same rules.
    rewrite(path, checkpoint_every=np.array(2))
    assert fastbp.load(path).checkpoint_every == 2
    rewrite(path, checkpoint_every=np.array(0))
    with pytest.raises(ModelFileError, match="'checkpoint_every' must be a positive integer"):
        fastbp.load(path)


@pytest.mark.parametrize("value, message", [
    (np.array(0), "got 0$"),
    (np.array(-3), "got -3$"),
    (np.array(2.0), "got float64 of shape"),
    (np.array([2, 2]), r"got int64 of shape \(2,\)"),
    (np.array(True), "got bool of shape"),
    (np.array("3"), "got <U1 of shape"),
    (None, "missing the field 'checkpoint_every'"),
])
def test_bad_checkpoint_every_is_refused(tmp_path, value, message):
    model, _ = trained(checkpoint_every=2)
    path = tmp_path / "m.npz"
    fastbp.save(model, path)
    rewrite(path, checkpoint_every=value)
    with pytest.raises(ModelFileError) as info:
        fastbp.load(path)
    text = str(info.value)
    assert "\n" not in text and text.startswith(str(path))
    if value is not None:
        assert "'checkpoint_every' must be a positive integer" in text
    assert re.search(message, text), text


def test_no_hidden_layer_and_metadata(tmp_path):
    model, _ = trained(sizes=(4, 2))
    meta = {"data": "x", "offset": [0.5, 1.0], "nested": {"a": [1, 2]}}
    fastbp.save(model, tmp_path / "m", metadata=meta)  # the exact name is kept
    assert (tmp_path / "m").exists() and not (tmp_path / "m.npz").exists()
    assert fastbp.load(tmp_path / "m").sizes == [4, 2]
    assert fio.read_metadata(tmp_path / "m") == meta
    fastbp.save(model, tmp_path / "n.npz")
    assert fio.read_metadata(tmp_path / "n.npz") == {}
    with pytest.raises(ValueError, match="metadata"):
        fastbp.save(model, tmp_path / "o.npz", metadata={"x": object()})
    with pytest.raises(ValueError, match="metadata"):
        fastbp.save(model, tmp_path / "o.npz", metadata={"x": float("nan")})
    assert not (tmp_path / "o.npz").exists()


def test_save_is_atomic(tmp_path, monkeypatch):
    model, _ = trained()
    path = tmp_path / "m.npz"
    fastbp.save(model, path)
    before = path.read_bytes()
    model.params[:] = 0

    def broken(f, **arrays):
        f.write(b"PK partial")
        raise KeyboardInterrupt  # Ctrl-C in the middle of writing

    monkeypatch.setattr(np, "savez_compressed", broken)
    with pytest.raises(KeyboardInterrupt):
        fastbp.save(model, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.npz"]  # no temporary file left behind
    monkeypatch.undo()
    fastbp.save(model, path)
    assert np.all(fastbp.load(path).params == 0)
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]


def test_save_errors(tmp_path):
    model, _ = trained()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fastbp.save(model, tmp_path / "missing" / "m.npz")
    with pytest.raises(IsADirectoryError):
        fastbp.save(model, tmp_path)
    with pytest.raises(TypeError, match="fastbp.MLP"):
        fastbp.save("model", tmp_path / "m.npz")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("changes, message", [
    ({"params": np.zeros(5, np.float32)}, "5 parameters, but sizes"),
    ({"params": np.zeros(97, np.float64)}, "should be a 1-D float32"),
    ({"dtype": np.array("float16")}, "dtype 'float16'"),
    ({"activations": np.array(["relu", "swish"])}, "unknown activation 'swish'"),
    ({"activations": np.array(["relu"])}, "1 hidden activations for 2 hidden layers"),
    ({"loss": np.array("hinge")}, "unknown loss 'hinge'"),
    ({"output_activation": np.array("relu")}, "must be 'identity'"),
    ({"sizes": np.array([5, 0, 4, 3])}, "positive layer widths"),
    ({"sizes": np.array([5.0, 7.0, 4.0, 3.0])}, "positive layer widths"),
    ({"format": np.array("something.else")}, "format is 'something.else'"),
    ({"version": np.array(6)}, "format version 6; this fastbp reads versions 1, 2, 3, 4, 5"),
    ({"version": np.array(0)}, "format version 0"),
    ({"loss": None}, "missing the field 'loss'"),
    ({"params": None}, "not a fastbp model file"),
])
def test_load_validates_every_field(tmp_path, changes, message):
    model, _ = trained()  # 5-7-4-3: 97 parameters
    path = tmp_path / "m.npz"
    fastbp.save(model, path)
    rewrite(path, **changes)
    with pytest.raises(ModelFileError, match=message):
        fastbp.load(path)


def test_load_rejects_nonfinite_pickles_and_garbage(tmp_path):
    model, _ = trained()
    path = tmp_path / "m.npz"
    fastbp.save(model, path)
    params = model.params.copy()
    params[3] = np.nan
    rewrite(path, params=params)
    with pytest.raises(ModelFileError, match="NaN or Inf"):
        fastbp.load(path)
    np.savez(tmp_path / "p.npz", format=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(ModelFileError, match="pickled"):
        fastbp.load(tmp_path / "p.npz")
    (tmp_path / "g.npz").write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="not a readable .npz"):
        fastbp.load(tmp_path / "g.npz")
    with pytest.raises(ModelFileError, match="no such file"):
        fastbp.load(tmp_path / "absent.npz")
    # Truncated archive.
    blob = (tmp_path / "m.npz").read_bytes()
    (tmp_path / "t.npz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ModelFileError):
        fastbp.load(tmp_path / "t.npz")


def test_file_is_a_plain_zip_of_npy(tmp_path):
    model, _ = trained()
    fastbp.save(model, tmp_path / "m.npz")
    with zipfile.ZipFile(tmp_path / "m.npz") as z:
        assert all(name.endswith(".npy") for name in z.namelist())


def test_save_refuses_nonfinite_params_and_writes_nothing(tmp_path):
    model = fastbp.MLP([3, 4, 2], seed=0)
    model.weights[0][0, 0] = np.nan   # through a view: the setter would refuse it
    with pytest.raises(ValueError, match="NaN or Inf"):
        fastbp.save(model, tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()


def test_metadata_that_is_not_json_or_too_deep_is_refused(tmp_path):
    model = fastbp.MLP([3, 4, 2], seed=0)
    deep = current = {}
    for _ in range(100_000):
        current["a"] = current = {}
    with pytest.raises(ValueError, match="metadata"):
        fastbp.save(model, tmp_path / "deep.npz", metadata=deep)
    path = fastbp.save(model, tmp_path / "m.npz", metadata={"x": 1})
    with np.load(path) as f:
        arrays = {key: f[key] for key in f.files}
    for text, message in (('{"x": NaN}', "not valid JSON"),
                          ("[" * 100_000, "nested too deeply|not valid")):
        arrays["metadata"] = np.array(text)
        np.savez(tmp_path / "bad.npz", **arrays)
        with pytest.raises(fastbp.ModelFileError, match=message):
            fastbp.io.read_metadata(tmp_path / "bad.npz")


def test_a_save_killed_midway_leaves_a_temporary_file_that_the_next_save_removes(tmp_path):
    path = tmp_path / "m.npz"
    killed = subprocess.run([sys.executable, "-c", (
        "import os, signal, sys\n"
        "from fastbp._tempfiles import create_beside\n"
        "create_beside(sys.argv[1], '.tmp')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"), str(path)], cwd=ROOT)
    assert killed.returncode == -signal.SIGKILL
    stale = [p.name for p in tmp_path.iterdir()]
    assert len(stale) == 1 and stale[0].startswith(".m.npz.")
    live_fd, live = create_beside(path, ".tmp")   # this process is still writing its own
    os.close(live_fd)
    other_fd, other = create_beside(tmp_path / "other.npz", ".tmp")   # another file's
    os.close(other_fd)
    fastbp.save(fastbp.MLP([3, 2], seed=0), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["m.npz", os.path.basename(live), os.path.basename(other)])
