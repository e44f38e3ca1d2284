"""fastbp.data: IDX, .npz and .csv readers, named data sets, splits, scaling, verified downloads.

Small IDX files are written here by the tests; the real files in ../shared/data are used when
present and skipped cleanly otherwise. Nothing is downloaded: downloads are exercised with
file:// URLs.
"""
import contextlib
import gzip
import hashlib
import io
import os
import re
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from fastbp import data
from fastbp.data import DataError

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
MNIST_DIR = SHARED / "mnist"
IDX_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D,
             np.float64: 0x0E}


def idx_bytes(array, dims=None, code=None):
    """The IDX encoding of array; dims and code override the header (to make it lie)."""
    array = np.asarray(array)
    code = IDX_CODES[array.dtype.type] if code is None else code
    dims = array.shape if dims is None else dims
    header = bytes([0, 0, code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path, payload, gz=False):
    path = Path(path)
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def write_idx_set(folder, n_train=120, n_test=40, shape=(6, 5), n_classes=10, gz=True, seed=0):
    """The four MNIST-named IDX files of a small random data set; returns the arrays."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for part, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n,) + shape, dtype=np.uint8)
        labels = (np.arange(n) % n_classes).astype(np.uint8)
        suffix = ".gz" if gz else ""
        write(folder / f"{part}-images-idx3-ubyte{suffix}", idx_bytes(images), gz)
        write(folder / f"{part}-labels-idx1-ubyte{suffix}", idx_bytes(labels), gz)
        out[part] = (images, labels)
    return out


# -- IDX ----------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32,
                                   np.float64])
def test_idx_round_trip(tmp_path, gz, dtype):
    array = (np.arange(2 * 3 * 4) * 7 - 20).astype(dtype).reshape(2, 3, 4)
    if dtype == np.uint8:
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4) * 10
    got = data.read_idx(write(tmp_path / "a.idx", idx_bytes(array), gz))
    assert got.shape == array.shape
    assert got.dtype == np.dtype(dtype)  # native byte order, same type
    assert got.dtype.isnative
    np.testing.assert_array_equal(got, array)
    got[0, 0, 0] = 1  # writable


def test_idx_gzip_is_recognised_by_content_not_name(tmp_path):
    array = np.arange(10, dtype=np.uint8)
    got = data.read_idx(write(tmp_path / "labels.raw", idx_bytes(array), gz=True))
    np.testing.assert_array_equal(got, array)


@pytest.mark.parametrize("payload, message", [
    (b"", "too short"),
    (b"\x00\x00", "too short"),
    (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "not an IDX file"),
    (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "not an IDX file"),  # unknown type code
    (b"\x00\x00\x08\x00", "not an IDX file"),  # zero dimensions
    (b"\x00\x00\x08\x03\x00\x00\x00\x02", "truncated header"),
])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_bad_headers(tmp_path, payload, message, gz):
    with pytest.raises(DataError, match=message):
        data.read_idx(write(tmp_path / "bad", payload, gz))


@pytest.mark.parametrize("gz", [False, True])
def test_idx_truncated_and_too_long(tmp_path, gz):
    good = idx_bytes(np.arange(100, dtype=np.uint8).reshape(10, 10))
    with pytest.raises(DataError, match="truncated"):
        data.read_idx(write(tmp_path / "short", good[:-1], gz))
    with pytest.raises(DataError, match="too long|more data than the header"):
        data.read_idx(write(tmp_path / "long", good + b"\x00", gz))


def test_idx_corrupt_gzip_stream(tmp_path):
    blob = gzip.compress(idx_bytes(np.arange(5000, dtype=np.int32)))
    path = write(tmp_path / "cut.gz", blob[: len(blob) // 2])
    with pytest.raises(DataError, match="corrupt|truncated"):
        data.read_idx(path)
    damaged = bytearray(blob)
    damaged[len(blob) // 2] ^= 0xFF
    with pytest.raises(DataError):
        data.read_idx(write(tmp_path / "flipped.gz", bytes(damaged)))


@pytest.mark.parametrize("gz", [False, True])
def test_idx_lying_header_allocates_nothing_large(tmp_path, gz):
    # The header announces 60000 x 28 x 28 bytes (47 MB) but 100 bytes follow.
    payload = idx_bytes(np.zeros(100, dtype=np.uint8), dims=(60000, 28, 28))
    path = write(tmp_path / "liar", payload, gz)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="truncated"):
            data.read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"reading a lying header allocated {peak} bytes"


def test_idx_absurd_header_is_refused_before_reading(tmp_path):
    payload = idx_bytes(np.zeros(4, dtype=np.uint8), dims=(2 ** 32 - 1,) * 3)
    with pytest.raises(DataError, match="impossible shape"):   # beyond any index
        data.read_idx(write(tmp_path / "huge", payload))
    payload = idx_bytes(np.zeros(4, dtype=np.uint8), dims=(2 ** 31, 2 ** 20))
    with pytest.raises(DataError, match="memory limit"):       # possible, but too large
        data.read_idx(write(tmp_path / "large", payload))


def test_idx_missing_file_and_folder(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        data.read_idx(tmp_path / "nope")
    with pytest.raises(DataError, match="folder"):
        data.read_idx(tmp_path)


def test_idx_set_checks(tmp_path):
    write_idx_set(tmp_path / "ok")
    X, y, X_test, y_test, shape = data.read_idx_set(tmp_path / "ok")
    assert X.shape == (120, 30) and X_test.shape == (40, 30) and shape == (6, 5)

    folder = tmp_path / "bad_label"
    write_idx_set(folder)
    write(folder / "train-labels-idx1-ubyte.gz",
          idx_bytes(np.full(120, 10, dtype=np.uint8)), gz=True)
    with pytest.raises(DataError, match="label 10 out of range 0..9"):
        data.read_idx_set(folder)

    folder = tmp_path / "count"
    write_idx_set(folder)
    write(folder / "t10k-labels-idx1-ubyte.gz", idx_bytes(np.zeros(39, dtype=np.uint8)), True)
    with pytest.raises(DataError, match="39 labels for 40 images"):
        data.read_idx_set(folder)

    folder = tmp_path / "missing"
    write_idx_set(folder)
    os.remove(folder / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        data.read_idx_set(folder)

    folder = tmp_path / "floats"
    write_idx_set(folder)
    write(folder / "train-images-idx3-ubyte.gz",
          idx_bytes(np.zeros((120, 6, 5), dtype=np.float32)), True)
    with pytest.raises(DataError, match="expected uint8 images"):
        data.read_idx_set(folder)


def test_idx_set_accepts_uncompressed_files(tmp_path):
    arrays = write_idx_set(tmp_path, gz=False)
    X, y, _, _, _ = data.read_idx_set(tmp_path)
    np.testing.assert_array_equal(X, arrays["train"][0].reshape(120, -1))
    np.testing.assert_array_equal(y, arrays["train"][1])


# -- npz ----------------------------------------------------------------------------------


def test_npz_reads_plain_arrays(tmp_path):
    X = np.arange(12, dtype=np.float32).reshape(3, 4)
    F = np.asfortranarray(np.arange(6.0).reshape(2, 3))
    np.savez_compressed(tmp_path / "a.npz", X=X, y=np.array([0, 1, 2]), F=F)
    arrays = data.read_npz(tmp_path / "a.npz")
    np.testing.assert_array_equal(arrays["X"], X)
    np.testing.assert_array_equal(arrays["F"], F)
    assert set(arrays) == {"X", "y", "F"}


def test_npz_refuses_pickled_objects(tmp_path):
    np.savez(tmp_path / "obj.npz", X=np.zeros((2, 2)), y=np.array([{"a": 1}, None],
                                                                   dtype=object))
    with pytest.raises(DataError, match="pickled"):
        data.read_npz(tmp_path / "obj.npz")


def test_npz_not_a_zip(tmp_path):
    write(tmp_path / "junk.npz", b"this is not a zip file at all")
    with pytest.raises(DataError, match="not a readable .npz"):
        data.read_npz(tmp_path / "junk.npz")
    with pytest.raises(DataError, match="no such file"):
        data.read_npz(tmp_path / "absent.npz")


def test_npz_lying_npy_header_allocates_nothing_large(tmp_path):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False,
                                               "shape": (100_000_000,)})
    member = buf.getvalue() + b"\x00" * 64
    import zipfile
    with zipfile.ZipFile(tmp_path / "liar.npz", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("X.npy", member)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="truncated"):
            data.read_npz(tmp_path / "liar.npz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


# -- csv ----------------------------------------------------------------------------------


def test_csv_label_column_header_and_names(tmp_path):
    (tmp_path / "a.csv").write_text("f1,f2,label\n1,2,0\n3,4,1\n5,6,1\n")
    X, labels = data.read_csv(tmp_path / "a.csv")
    np.testing.assert_array_equal(X, [[1, 2], [3, 4], [5, 6]])
    assert labels.tolist() == ["0", "1", "1"]
    (tmp_path / "b.csv").write_text("cat,1.5,2\ndog,3,4\ncat,5,6\n")
    X, labels = data.read_csv(tmp_path / "b.csv", label_column=0)
    np.testing.assert_array_equal(X, [[1.5, 2], [3, 4], [5, 6]])
    assert labels.tolist() == ["cat", "dog", "cat"]
    with gzip.open(tmp_path / "c.csv.gz", "wt") as f:
        f.write("1,2,3\n4,5,6\n")
    X, labels = data.read_csv(tmp_path / "c.csv.gz")
    assert X.shape == (2, 2) and labels.tolist() == ["3", "6"]


def test_csv_header_of_integer_column_names_as_pandas_writes_it(tmp_path):
    # pandas' to_csv(index=False) of a frame with integer column names: a numeric header.
    rows = "".join(f"{i},{i + 1},{i + 2},{i % 3}\n" for i in range(300))
    (tmp_path / "pandas.csv").write_text("0,1,2,label\n" + rows)
    X, labels = data.read_csv(tmp_path / "pandas.csv")
    assert X.shape == (300, 3) and sorted(set(labels.tolist())) == ["0", "1", "2"]
    assert X[0].tolist() == [0, 1, 2]
    ds = data.load(str(tmp_path / "pandas.csv"), val_fraction=0)
    assert ds.n_classes == 3 and len(ds.y_train) + len(ds.y_test) == 300
    # The label in front; and names as labels, the header's name never among them.
    named = "".join(f"{['cat', 'dog'][i % 2]},{i},{i + 1}\n" for i in range(10))
    (tmp_path / "front.csv").write_text("label,0,1\n" + named)
    X, labels = data.read_csv(tmp_path / "front.csv", label_column=0)
    assert X.shape == (10, 2) and set(labels.tolist()) == {"cat", "dog"}


@pytest.mark.parametrize("text, n_rows", [
    ("5.1,3.5,setosa\n4.9,3.0,setosa\n6.3,2.9,virginica\n", 3),   # names among names
    ("0,1,cat\n2,3,dog\n4,5,cat\n", 3),   # a first row like pandas' names, its name again
    ("1,2,0\n3,4,1\n", 2),                 # all numbers
    ("0,1,2,3\n4,5,6,1\n", 2),             # a header of numbers only: a row
])
def test_csv_first_row_that_is_data_stays(tmp_path, text, n_rows):
    (tmp_path / "rows.csv").write_text(text)
    X, labels = data.read_csv(tmp_path / "rows.csv")
    assert X.shape[0] == n_rows == len(labels)


@pytest.mark.parametrize("text, label_column, message", [
    ("1,2,0\n3,4\n", -1, "line 2: 2 fields"),
    ("1,2,0\n3,x,1\n", -1, "line 2: 'x' is not a number"),
    ("1,2,0\n", 5, "label column 5 does not exist"),
    ("", -1, "no data rows"),
    ("a,b,c\n", -1, "no data rows"),
    ("7\n8\n", -1, "at least one feature"),
])
def test_csv_errors(tmp_path, text, label_column, message):
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(DataError, match=message):
        data.read_csv(tmp_path / "bad.csv", label_column)


def test_csv_binary_garbage(tmp_path):
    write(tmp_path / "bin.csv", bytes(range(256)) * 4)
    with pytest.raises(DataError):
        data.read_csv(tmp_path / "bin.csv")


# -- load: named sets, files, splits, scaling ----------------------------------------------


def test_digits_shipped_and_split():
    ds = data.load("digits")
    total = len(ds.y_train) + len(ds.y_val) + len(ds.y_test)
    assert total == 1797 and ds.n_features == 64 and ds.n_classes == 10
    assert ds.image_shape == (8, 8)
    assert 0.19 < len(ds.y_test) / total < 0.21
    assert ds.X_train.dtype == np.float32 and ds.X_train.flags.c_contiguous
    assert ds.y_train.dtype == np.int64
    # Standardised with the training rows' statistics.
    assert np.allclose(ds.X_train.mean(axis=0), 0, atol=1e-5)
    raw = np.load(data.digits_path(), allow_pickle=False)
    assert raw["X"].dtype == np.uint8 and raw["X"].shape == (1797, 64)
    # Every class is in every split (stratified).
    for y in (ds.y_train, ds.y_val, ds.y_test):
        assert set(np.unique(y)) == set(range(10))


def test_splits_are_reproducible_and_test_rows_do_not_depend_on_seed():
    a, b, c = data.load("digits", seed=1), data.load("digits", seed=1), data.load("digits", seed=2)
    np.testing.assert_array_equal(a.X_val, b.X_val)
    assert not np.array_equal(a.y_val, c.y_val) or not np.array_equal(a.X_val, c.X_val)
    # Same test rows whatever the seed; scaling depends on the training rows, so compare the
    # unscaled values.
    raw_a = a.X_test * a.scale + a.offset
    raw_c = c.X_test * c.scale + c.offset
    np.testing.assert_allclose(raw_a, raw_c, atol=1e-4)
    np.testing.assert_array_equal(a.y_test, c.y_test)


def test_val_fraction_zero_and_bad_arguments():
    ds = data.load("digits", val_fraction=0)
    assert len(ds.y_val) == 0 and ds.X_val.shape == (0, 64)
    with pytest.raises(ValueError, match="val_fraction"):
        data.load("digits", val_fraction=1.0)
    with pytest.raises(ValueError, match="scaling"):
        data.load("digits", scaling="log")
    with pytest.raises(ValueError, match="data_dir"):
        data.load("digits", data_dir="/tmp")


def test_unknown_source():
    with pytest.raises(DataError, match="unknown data set"):
        data.load("imagenet")
    with pytest.raises(DataError, match="unsupported file type"):
        data.load("table.xlsx")


def test_split_indices_stratified():
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    keep, held = data.split_indices(100, 0.1, np.random.default_rng(0), labels)
    assert sorted(np.bincount(labels[held]).tolist()) == [1, 2, 3, 4]
    assert np.intersect1d(keep, held).size == 0 and keep.size + held.size == 100


def test_load_npz_with_own_test_set_and_standardisation(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(5.0, 3.0, (200, 3, 2))  # extra axes are flattened
    y = rng.integers(0, 3, 200)
    np.savez(tmp_path / "d.npz", X=X, y=y, X_test=X[:20], y_test=y[:20])
    ds = data.load(tmp_path / "d.npz", val_fraction=0.25)
    assert ds.n_features == 6 and len(ds.y_test) == 20 and len(ds.y_val) == 50
    assert np.allclose(ds.X_train.mean(axis=0), 0, atol=1e-5)
    assert np.allclose(ds.X_train.std(axis=0), 1, atol=1e-4)
    np.testing.assert_allclose(ds.X_test * ds.scale + ds.offset, X[:20].reshape(20, 6),
                               rtol=1e-5)


@pytest.mark.parametrize("arrays, message", [
    ({"X": np.zeros((4, 2))}, "missing y"),
    ({"X": np.zeros((4, 2)), "y": np.array([0, 1, 0.5, 1])}, "whole numbers"),
    ({"X": np.zeros((4, 2)), "y": np.array([0, 1, -1, 1])}, "0 or more"),
    ({"X": np.zeros((4, 2)), "y": np.array([0, 1, 1])}, "3 labels for 4 rows"),
    ({"X": np.zeros(4), "y": np.array([0, 1, 1, 0])}, "one row per sample"),
    ({"X": np.zeros((4, 2)), "y": np.zeros(4, dtype=int)}, "at least 2 classes"),
    ({"X": np.array([[0, np.nan]] * 4), "y": np.array([0, 1, 0, 1])}, "NaN or Inf"),
    ({"X": np.zeros((4, 2)), "y": np.array([0, 1, 0, 1]), "X_test": np.zeros((2, 2))},
     "only one of X_test and y_test"),
    ({"X": np.zeros((4, 2)), "y": np.array([0, 1, 0, 1]), "X_test": np.zeros((2, 3)),
      "y_test": np.array([0, 1])}, "X_test has 3 features"),
    ({"X": np.array([["a", "b"]] * 4), "y": np.array([0, 1, 0, 1])}, "real numbers"),
])
def test_load_npz_errors(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        data.load(tmp_path / "bad.npz")


def test_load_csv_with_names(tmp_path):
    lines = [f"{'ab'[i % 2]},{i},{i % 7}" for i in range(60)]
    (tmp_path / "t.csv").write_text("kind,x1,x2\n" + "\n".join(lines) + "\n")
    ds = data.load(tmp_path / "t.csv", label_column=0)
    assert ds.class_names == ["a", "b"] and ds.n_classes == 2 and ds.n_features == 2
    assert len(ds.y_train) + len(ds.y_val) + len(ds.y_test) == 60


def test_load_mnist_layout_from_data_dir(tmp_path):
    arrays = write_idx_set(tmp_path / "m")
    ds = data.load("mnist", data_dir=tmp_path / "m", val_fraction=0.25)
    assert len(ds.y_test) == 40 and len(ds.y_train) + len(ds.y_val) == 120
    assert ds.n_features == 30 and ds.image_shape == (6, 5)
    np.testing.assert_allclose(ds.X_test * 255, arrays["t10k"][0].reshape(40, -1), atol=1e-4)
    assert ds.X_train.min() >= 0 and ds.X_train.max() <= 1
    with pytest.raises(DataError, match="does not exist"):
        data.load("mnist", data_dir=tmp_path / "absent")


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason="../shared/data/mnist not present")
def test_real_mnist_files():
    ds = data.load("mnist", data_dir=MNIST_DIR, val_fraction=0.1)
    assert len(ds.y_train) + len(ds.y_val) == 60000 and len(ds.y_test) == 10000
    assert ds.n_features == 784 and ds.image_shape == (28, 28)
    assert np.bincount(ds.y_test).tolist()[:2] == [980, 1135]
    # The published SHA-256 digests fastbp verifies downloads against are those of these files.
    for name, digest in data.NAMED["mnist"].sha256.items():
        assert hashlib.sha256((MNIST_DIR / name).read_bytes()).hexdigest() == digest


@pytest.mark.skipif(not (SHARED / "digits").is_dir(), reason="../shared/data/digits absent")
def test_shipped_digits_equal_the_source_csv():
    with gzip.open(SHARED / "digits" / "digits.csv.gz", "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    raw = np.load(data.digits_path(), allow_pickle=False)
    np.testing.assert_array_equal(raw["X"], table[:, :64])
    np.testing.assert_array_equal(raw["y"], table[:, 64])


# -- downloads (file:// URLs only) ---------------------------------------------------------


def _served(tmp_path, name, payload):
    folder = tmp_path / "mirror"
    folder.mkdir(exist_ok=True)
    (folder / name).write_bytes(payload)
    return folder.as_uri() + "/"


def test_download_verified_accepts_only_the_right_digest(tmp_path):
    payload = b"some file content" * 100
    base = _served(tmp_path, "f.gz", payload)
    dest = tmp_path / "cache" / "f.gz"
    good = hashlib.sha256(payload).hexdigest()
    with pytest.raises(DataError, match="SHA-256 mismatch"):
        data.download_verified([base + "f.gz"], dest, "0" * 64)
    assert not dest.exists() and os.listdir(dest.parent) == []  # no partial file left
    missing = (tmp_path / "nowhere").as_uri() + "/f.gz"
    assert data.download_verified([missing, base + "f.gz"], dest, good) == dest
    assert dest.read_bytes() == payload
    with pytest.raises(DataError, match="more than 10 bytes"):
        data.download_verified([base + "f.gz"], tmp_path / "x", good, max_bytes=10)


def test_fetch_uses_verified_cache_and_replaces_damaged_files(tmp_path, monkeypatch):
    arrays = {}
    payloads = {}
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        n = 30 if stem.startswith("train") else 10
        arr = (np.zeros((n, 4, 4), np.uint8) if "images" in stem
               else (np.arange(n) % 10).astype(np.uint8))
        arrays[stem] = arr
        payloads[stem + ".gz"] = gzip.compress(idx_bytes(arr))
    for name, payload in payloads.items():
        base = _served(tmp_path, name, payload)
    remote = data.named._Remote(mirrors=(base,), class_names=tuple("0123456789"),
                          sha256={k: hashlib.sha256(v).hexdigest() for k, v in payloads.items()})
    monkeypatch.setitem(data.NAMED, "mnist", remote)
    monkeypatch.setenv("FASTBP_CACHE_DIR", str(tmp_path / "cache"))
    logged = []
    ds = data.load("mnist", val_fraction=0, log=logged.append)
    assert len(logged) == 4 and len(ds.y_train) == 30 and len(ds.y_test) == 10
    # Second time: all from the cache, nothing downloaded even with the mirror gone.
    for name in payloads:
        os.remove(tmp_path / "mirror" / name)
    logged.clear()
    data.load("mnist", val_fraction=0, log=logged.append)
    assert logged == []
    # A damaged cached file is detected and cannot be replaced: clear error.
    cached = tmp_path / "cache" / "mnist" / "t10k-labels-idx1-ubyte.gz"
    cached.write_bytes(b"damaged")
    with pytest.raises(DataError, match="could not download t10k-labels"):
        data.load("mnist")
    with pytest.raises(DataError, match="does not match its SHA-256"):
        data.load("mnist", download=False)


def test_cache_dir_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTBP_CACHE_DIR", str(tmp_path / "c"))
    assert data.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("FASTBP_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert data.cache_dir() == tmp_path / "x" / "fastbp"


def test_failed_download_leaves_no_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTBP_CACHE_DIR", str(tmp_path / "cache"))
    gone = (tmp_path / "no-mirror").as_uri() + "/"
    with pytest.raises(DataError, match="could not download train-images.*--data-dir"):
        data.fetch("fashion-mnist", mirrors=[gone])
    assert os.listdir(tmp_path) == []


def test_splits_that_leave_a_part_empty_are_refused(tmp_path):
    path = tmp_path / "tiny.csv"
    path.write_text("1,2,0\n3,4,1\n5,6,0\n7,8,1\n")
    with pytest.raises(DataError, match=r"test_fraction 0.2 of 4 rows"):
        data.load(str(path))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "small.npz", X=rng.normal(size=(12, 3)), y=np.arange(12) % 2)
    with pytest.raises(DataError, match=r"val_fraction 0.05 of 10 training rows"):
        data.load(str(tmp_path / "small.npz"), val_fraction=0.05)
    ds = data.load(str(tmp_path / "small.npz"), val_fraction=0.0)   # no validation: asked for
    assert len(ds.y_val) == 0 and len(ds.y_test) > 0


@pytest.mark.parametrize("scaling, message", [("standard", "too large to scale"),
                                              ("none", r"beyond the range of float32 after "
                                                       r"scaling \(float64 would hold them\)")])
def test_features_that_cannot_be_scaled_or_held_are_refused(tmp_path, scaling, message):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "huge.npz", X=rng.normal(size=(60, 3)) * 1e200, y=np.arange(60) % 2)
    with pytest.raises(DataError, match=message):
        data.load(str(tmp_path / "huge.npz"), scaling=scaling)
    ds = data.load(str(tmp_path / "huge.npz"), scaling="unit")   # divided by the largest: fine
    assert np.all(np.isfinite(ds.X_train)) and np.abs(ds.X_train).max() <= 1


def test_an_unusable_download_cache_is_a_data_error(tmp_path, monkeypatch):
    """A cache folder under a file (or unwritable): one DataError, before any network access."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("FASTBP_CACHE_DIR", str(blocker / "cache"))
    with pytest.raises(DataError, match="cannot write the download cache"):
        data.fetch("mnist", mirrors=["http://127.0.0.1:9/"])


def _npy_with_header(shape_text):
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': %s, }" % shape_text
    header += " " * (63 - len(header) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode()


def test_loader_edge_cases_are_data_errors_naming_the_file(tmp_path):
    import zipfile
    np.savez(tmp_path / "zero.npz", X=np.zeros((0, 3)), y=np.zeros(0, np.int64))
    with pytest.raises(DataError, match=r"zero.npz: X is empty"):
        data.load(str(tmp_path / "zero.npz"))
    with zipfile.ZipFile(tmp_path / "neg.npz", "w") as archive:
        archive.writestr("X.npy", _npy_with_header("(-1, 3)"))
        archive.writestr("y.npy", _npy_with_header("(2,)") + bytes(16))
    with pytest.raises(DataError, match="impossible shape"):
        data.read_npz(tmp_path / "neg.npz")
    deep = tmp_path / "deep-idx"
    deep.write_bytes(bytes([0, 0, 8, 70]) + (1).to_bytes(4, "big") * 70 + b"\0")
    with pytest.raises(DataError, match="70 dimensions"):
        data.read_idx(deep)


def test_csv_with_a_byte_order_mark_keeps_its_first_row_and_allows_one_header(tmp_path):
    rows = "".join(f"{i},{i + 1},{i % 2}\n" for i in range(10))
    (tmp_path / "bom.csv").write_text(rows, encoding="utf-8-sig")
    X, labels = data.read_csv(tmp_path / "bom.csv")
    assert X.shape == (10, 2) and X[0, 0] == 0
    (tmp_path / "bom-text.csv").write_text("a,b,c\n" + rows.replace("0,1,0", "0,1,zero"),
                                           encoding="utf-8-sig")
    X, labels = data.read_csv(tmp_path / "bom-text.csv")   # the careful reader
    assert X.shape == (10, 2) and labels[0] == "zero"
    (tmp_path / "two.csv").write_text("a,b,c\nx,y,z\n" + rows)
    with pytest.raises(DataError, match="line 2: 'x' is not a number"):
        data.read_csv(tmp_path / "two.csv")


# -- memory limit and file kinds ------------------------------------------------------------


def _peak_of(call):
    """(exception raised by call, peak bytes traced while it ran)."""
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as caught:
            call()
        return caught.value, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("text, expected", [("12345", 12345), ("500M", 500 << 20),
                                            ("16G", 16 << 30), ("2KiB", 2048)])
def test_memory_limit_from_the_environment(monkeypatch, text, expected):
    monkeypatch.setenv("FASTBP_MAX_DATA_BYTES", text)
    assert data.memory_limit() == expected


def test_memory_limit_default_and_bad_setting(monkeypatch):
    monkeypatch.delenv("FASTBP_MAX_DATA_BYTES", raising=False)
    assert 0 < data.memory_limit() < 1 << 50
    monkeypatch.setenv("FASTBP_MAX_DATA_BYTES", "lots")
    with pytest.raises(DataError, match="FASTBP_MAX_DATA_BYTES.*'lots'"):
        data.memory_limit()


def _gzipped_csv(path, n_rows):
    row = "0," * 63 + "1\n"
    path.write_bytes(gzip.compress((row * n_rows).encode()))
    return path


def _npz_of(path, **arrays):
    np.savez_compressed(path, **arrays)
    return path


# Files of a few kilobytes that inflate to 2-5 MB, past a 1 MiB limit, and what refuses them.
INFLATING = {
    "gzipped IDX": (lambda p: write(p / "big.gz", idx_bytes(np.zeros((6000, 28, 28), np.uint8)),
                                    gz=True), data.read_idx, "shape \\(6000, 28, 28\\)"),
    "npz member": (lambda p: _npz_of(p / "one.npz", X=np.zeros((300, 2000))),
                   data.read_npz, "shape \\(300, 2000\\)"),
    "npz members together": (lambda p: _npz_of(p / "two.npz", X=np.zeros((100, 1250)),
                                                X_test=np.zeros((100, 1250))),
                             data.read_npz, "X_test.*shape \\(100, 1250\\)"),
    "gzipped CSV": (lambda p: _gzipped_csv(p / "big.csv.gz", 40_000), data.read_csv,
                    "characters of text"),
}


@pytest.mark.parametrize("kind", INFLATING)
def test_small_files_that_inflate_past_the_limit_are_refused_before_inflating(
        tmp_path, monkeypatch, kind):
    make, reader, message = INFLATING[kind]
    path = make(tmp_path)
    assert path.stat().st_size < 64 << 10
    monkeypatch.setenv("FASTBP_MAX_DATA_BYTES", "1M")
    error, peak = _peak_of(lambda: reader(path))
    assert str(path) in str(error) and re.search(message, str(error)), error
    assert "FASTBP_MAX_DATA_BYTES" in str(error)
    # Up to the limit may be read before the refusal (the first member of a pair), no more.
    assert peak < 1.5 * (1 << 20), f"{kind}: {peak} bytes traced before refusing"
    monkeypatch.setenv("FASTBP_MAX_DATA_BYTES", "64M")
    reader(path)  # the same file within a larger limit


def test_a_plain_csv_counts_four_times_its_text(tmp_path, monkeypatch):
    path = tmp_path / "x.csv"
    path.write_text("0,1\n" * 1000)                # 4,000 bytes of text
    monkeypatch.setenv("FASTBP_MAX_DATA_BYTES", "15999")
    with pytest.raises(DataError, match="4,000 bytes of text"):
        data.read_csv(path)
    monkeypatch.setenv("FASTBP_MAX_DATA_BYTES", "16000")
    assert data.read_csv(path)[0].shape == (1000, 1)


def test_the_scaled_arrays_are_held_to_the_limit_too(monkeypatch):
    # The digits decode to 115 kB of uint8; as float64 they take 920 kB.
    monkeypatch.setenv("FASTBP_MAX_DATA_BYTES", "500K")
    with pytest.raises(DataError, match="scaled float64 features.*set by FASTBP_MAX_DATA_BYTES.*float32"):
        data.load("digits", dtype="float64")
    monkeypatch.setenv("FASTBP_MAX_DATA_BYTES", "2M")
    assert data.load("digits", dtype="float64").X_train.dtype == np.float64


def test_running_out_of_memory_is_a_data_error(tmp_path, monkeypatch):
    path = write(tmp_path / "ok", idx_bytes(np.zeros((3, 4), np.uint8)))

    def no_memory(*args):
        raise MemoryError
    monkeypatch.setattr(data.files, "_read_exact", no_memory)
    with pytest.raises(DataError, match="not enough memory"):
        data.read_idx(path)
    monkeypatch.undo()
    monkeypatch.setattr(data, "apply_scaling", no_memory)
    with pytest.raises(DataError, match="digits: not enough memory"):
        data.load("digits")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
@pytest.mark.parametrize("name, reader", [("x", data.read_idx), ("x.npz", data.read_npz),
                                          ("x.csv", data.read_csv), ("x.csv", data.load)])
def test_fifos_and_devices_are_refused_without_blocking(tmp_path, name, reader):
    fifo = tmp_path / name
    os.mkfifo(fifo)   # opening it to read would block until a writer comes
    with pytest.raises(DataError, match="not a regular file"):
        reader(fifo)
    if os.path.exists("/dev/zero"):
        endless = tmp_path / ("zero-" + name)
        endless.symlink_to("/dev/zero")
        with pytest.raises(DataError, match="not a regular file"):
            reader(endless)


@pytest.mark.parametrize("label", [65_536, 1_000_000])
def test_the_class_count_is_capped(tmp_path, label):
    path = _npz_of(tmp_path / "x.npz", X=np.zeros((4, 2)), y=np.array([0, 1, 1, label]))
    with pytest.raises(DataError, match="at most 65,536 classes"):
        data.load(path)
    csv_path = tmp_path / "x.csv"
    csv_path.write_text("".join(f"{i},{c}\n" for i, c in enumerate([0, 1, 1, label] * 3)))
    with pytest.raises(DataError, match=f"label {label}.*at most 65,536 classes"):
        data.load(csv_path)


def test_test_rows_of_a_class_never_seen_in_training_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    path = _npz_of(tmp_path / "x.npz", X=rng.normal(size=(20, 3)), y=np.arange(20) % 2,
                   X_test=rng.normal(size=(4, 3)), y_test=np.array([0, 1, 2, 2]))
    with pytest.raises(DataError, match="class '2'.*no training row"):
        data.load(path)
    # A split can do the same: a class of one row, test_fraction rounding it into the test rows.
    alone = _npz_of(tmp_path / "alone.npz", X=rng.normal(size=(21, 3)),
                    y=np.r_[np.arange(20) % 2, 2])
    with pytest.raises(DataError, match="class '2'.*no training row"):
        data.load(alone, test_fraction=0.6)


def test_blockwise_standardisation_matches_numpy(monkeypatch):
    X = np.random.default_rng(1).normal(3.0, 2.0, size=(10_000, 5)) * [1, 10, 1e-3, 1e5, 0]
    monkeypatch.setattr(data.prepare, "_BLOCK_ROWS", 999)
    offset, scale, _ = data.prepare.fit_scaling(X, "standard", None, "x")
    np.testing.assert_allclose(offset, X.mean(axis=0), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(scale[:4], X.std(axis=0)[:4], rtol=1e-12)
    assert scale[4] == 1.0   # a constant column is only centred
    scaled = data.prepare.apply_scaling(X, offset, scale, np.dtype(np.float64), "x")
    np.testing.assert_array_equal(scaled, (X - offset) / scale)


def test_tiny_features_scale_by_their_maximum_and_huge_labels_read_well(tmp_path):
    path = _npz_of(tmp_path / "tiny.npz", X=np.full((13, 1), 1e-232) * np.arange(1, 14)[:, None],
                   y=np.arange(13) % 2)
    ds = data.load(path, scaling="unit", dtype=np.float32, val_fraction=0)
    assert np.all(np.isfinite(ds.X_train)) and ds.X_train.max() <= 1.0
    for label in (np.uint64(2 ** 64 - 1), 1e300):
        huge = _npz_of(tmp_path / "huge.npz", X=np.zeros((3, 1)),
                       y=np.array([0, 1, label], dtype=np.array(label).dtype))
        with pytest.raises(DataError, match=r"label (1.84467e\+19|1e\+300) is not a "
                                            r"class index") as caught:
            data.load(huge)
        assert len(str(caught.value)) < 300


# -- the label column: by name, and refused when it looks like a feature --------------------


def _wine_like_csv(path, n_rows=60):
    """Label first (3 classes), then a measurement with decimals and an integer-valued one
    with nearly as many values as rows: the shape of UCI wine, which puts its label first."""
    rng = np.random.default_rng(1)
    lines = [f"{rng.integers(0, 3)},{rng.normal(13, 1):.2f},{300 + 7 * i}" for i in range(n_rows)]
    path.write_text("class,alcohol,proline\n" + "\n".join(lines) + "\n")
    return path


def test_label_column_by_header_name_equals_by_index(tmp_path):
    path = _wine_like_csv(tmp_path / "w.csv")
    by_name, by_index = (data.load(path, label_column=c) for c in ("class", 0))
    np.testing.assert_array_equal(by_name.y_train, by_index.y_train)
    np.testing.assert_array_equal(by_name.X_test, by_index.X_test)
    X, labels = data.read_csv(path, label_column=" proline ")   # spaces around it ignored
    assert labels[0] == "300" and X.shape == (60, 2)


@pytest.mark.parametrize("text, name, message", [
    ("a,b,c\n1,2,0\n", "d", r"no column named 'd' in the header \(a, b, c\)"),
    ("1,2,0\n3,4,1\n", "c", "no header line"),
    ("a,b,a\n1,2,0\n", "a", "names 'a' 2 times"),
])
def test_label_column_names_that_do_not_fit_the_header(tmp_path, text, name, message):
    (tmp_path / "x.csv").write_text(text)
    with pytest.raises(DataError, match=message):
        data.read_csv(tmp_path / "x.csv", label_column=name)


@pytest.mark.parametrize("label_column, message", [
    (-1, r"column 2 has 60 distinct values in 60 rows: is the label in another column\?"),
    ("proline", r"column 'proline' has 60 distinct values"),
    (1, r"column 1 holds numbers that are not class indices \(such as 1\d\.\d+\)"),
])
def test_a_label_column_that_looks_like_a_feature_is_refused(tmp_path, label_column, message):
    path = _wine_like_csv(tmp_path / "w.csv")
    with pytest.raises(data.LabelColumnError, match=message) as caught:
        data.load(path, label_column=label_column, val_fraction=0)
    assert str(caught.value).endswith("pass label_column=NAME or INDEX")


def test_label_columns_at_the_distinct_value_threshold(tmp_path):
    # 40 rows: 20 classes (2 rows each on average) pass, 21 are refused.
    for n_classes, refused in ((20, False), (21, True)):
        labels = [i % n_classes for i in range(40)]
        path = tmp_path / f"c{n_classes}.csv"
        path.write_text("".join(f"{i},{c}\n" for i, c in enumerate(labels)))
        with pytest.raises(data.LabelColumnError) if refused else contextlib.nullcontext():
            data.read_csv(path)  # reading never judges the column
            data.load(path, val_fraction=0, test_fraction=0.5)
