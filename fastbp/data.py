"""Data sets for training: the shipped digits, MNIST and Fashion-MNIST, and your own files.

``load(source)`` returns a :class:`Dataset` with training, validation and test rows, ready for
``fastbp.fit``. ``source`` is one of

- ``"digits"``: the UCI optical handwritten digits shipped with fastbp (1,797 8x8 images, values
  0..16; see data/README.md for their origin and licence). No network.
- ``"mnist"`` or ``"fashion-mnist"``: the four IDX files of each set (28x28 images, values
  0..255, 60,000 training and 10,000 test images). With ``data_dir`` they are read from that
  folder only (``train-images-idx3-ubyte`` and so on, gzipped or not). Without it they are taken
  from the cache folder (``$FASTBP_CACHE_DIR``, else ``$XDG_CACHE_HOME/fastbp``, else
  ``~/.cache/fastbp``), downloaded there first from a public mirror when missing; every cached
  file is checked against its published SHA-256 before use.
- a path to a ``.npz`` file holding arrays ``X`` (samples first; any further axes are flattened)
  and ``y`` (integer class labels), and optionally ``X_test`` and ``y_test``. Read without
  pickle: object arrays are refused.
- a path to a ``.csv`` (or ``.csv.gz``) file: one sample per line, comma-separated numbers, the
  label in column ``label_column`` (default: the last). A first line that is not numeric is
  taken as a header. Labels are whole numbers 0..C-1, or names (any non-numeric text), which
  become classes 0..C-1 in sorted order.

Splits (reproducible): the test rows are the official test set when there is one (MNIST,
Fashion-MNIST, ``X_test``/``y_test`` in a .npz); otherwise a stratified ``test_fraction`` of the
rows, drawn with a fixed seed so that every run is scored on the same rows. The validation rows
are a stratified ``val_fraction`` of the remaining training rows, drawn with ``seed``.

Scaling (``scaling="auto"``): MNIST and Fashion-MNIST pixels are divided by 255 ("unit": every
feature in [0, 1]); the digits and features read from .npz and .csv files are standardised
("standard": each column has its mean subtracted and is divided by its standard deviation, both
measured on the training rows only; constant columns are only centred). These are the choices
that trained best in our measurements (standardising MNIST's pixels, many of them almost always
zero, cost about half a point of test accuracy; on the 8x8 digits it gained nearly a point).
``scaling`` may also be forced to "standard", "unit" (divide by the largest absolute value in
the training rows, or by the known pixel maximum) or "none". The transform is kept in
``Dataset.offset`` and ``Dataset.scale`` (``X = (raw - offset) / scale``); apply the same to new
data before ``model.predict``.

Every problem with a file (missing, truncated, a header that does not match the data, labels out
of range, pickled content) raises :class:`DataError` with a one-line message. Headers are checked
against the bytes actually present before anything of the declared size is allocated.
"""
import csv
import gzip
import hashlib
import importlib.resources
import math
import os
import tempfile
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["DataError", "Dataset", "load", "read_idx", "read_npz", "read_csv", "fetch",
           "download_verified", "cache_dir", "split_indices", "NAMED", "digits_path"]


class DataError(ValueError):
    """A data file or data source is missing, malformed or does not fit: one-line message."""


# Seed of the test split of data sets without an official test set: fixed, so that every run
# (whatever its --seed) is scored on the same rows.
TEST_SPLIT_SEED = 20240601
# Largest array a header may declare (bytes). Honest files are far smaller; this stops a corrupt
# header from making us stream gigabytes before noticing.
MAX_ARRAY_BYTES = 8 << 30
_CHUNK = 1 << 20

# -------------------------------------------------------------------------------------------------
# Named data sets

_IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class _Remote:
    mirrors: tuple
    sha256: dict  # file name (.gz) -> hex digest
    class_names: tuple


# SHA-256 of the original gzipped files (MNIST: checked here against the well-known MD5s of the
# originals; Fashion-MNIST: as published by two independent projects that verify them).
NAMED = {
    "mnist": _Remote(
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "https://storage.googleapis.com/cvdf-datasets/mnist/"),
        sha256={
            "train-images-idx3-ubyte.gz":
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train-labels-idx1-ubyte.gz":
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "t10k-images-idx3-ubyte.gz":
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "t10k-labels-idx1-ubyte.gz":
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
        class_names=tuple(str(d) for d in range(10))),
    "fashion-mnist": _Remote(
        # S3 website endpoints serve plain http; the SHA-256 check is what makes a file trusted.
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                 "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"),
        sha256={
            "train-images-idx3-ubyte.gz":
                "08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc",
            "train-labels-idx1-ubyte.gz":
                "b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc",
            "t10k-images-idx3-ubyte.gz":
                "78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229",
            "t10k-labels-idx1-ubyte.gz":
                "42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf",
        },
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                     "Sneaker", "Bag", "Ankle boot")),
}


@dataclass
class Dataset:
    """Training, validation and test rows of one data set, scaled, ready for ``fastbp.fit``.

    X arrays are C-contiguous (rows, n_features) in the requested float dtype; y arrays are int64
    class labels 0..n_classes-1. ``X_val``/``y_val`` have zero rows when ``val_fraction`` is 0.
    ``offset`` and ``scale`` (length n_features) give the scaling: ``X = (raw - offset) / scale``.
    """
    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    class_names: list
    offset: np.ndarray
    scale: np.ndarray
    scaling: str
    image_shape: tuple = None
    notes: list = field(default_factory=list)

    @property
    def n_features(self):
        return self.X_train.shape[1]

    def summary(self):
        """One line: the name and the size of each split."""
        return (f"{self.name}: {self.n_features} features, {self.n_classes} classes; "
                f"{len(self.y_train)} training, {len(self.y_val)} validation, "
                f"{len(self.y_test)} test rows")


# -------------------------------------------------------------------------------------------------
# Low-level readers


def _describe(path):
    return os.fspath(path)


def _read_exact(stream, nbytes, what):
    """Read exactly nbytes from stream into a new writable bytearray, growing it only as data
    arrives (so a header that lies about the size cannot make us allocate it up front), then make
    sure nothing follows."""
    buf = bytearray()
    try:
        while len(buf) < nbytes:
            chunk = stream.read(min(_CHUNK, nbytes - len(buf)))
            if not chunk:
                raise DataError(f"{what}: truncated: the header announces {nbytes} bytes of "
                                f"data, the file holds only {len(buf)}")
            buf += chunk
        extra = stream.read(1)
    except (EOFError, zlib.error, gzip.BadGzipFile, zipfile.BadZipFile) as exc:
        raise DataError(f"{what}: corrupt or truncated compressed data ({exc})") from None
    if extra:
        raise DataError(f"{what}: more data than the header announces ({nbytes} bytes); the "
                        "header or the file is wrong")
    return buf


# IDX type codes: the third byte of the magic number.
_IDX_TYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _open_maybe_gzip(path):
    """(stream, is_gzip, raw file). Gzip is recognised by its magic bytes, not the name."""
    try:
        raw = open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{_describe(path)}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{_describe(path)}: is a folder, expected a file") from None
    except OSError as exc:
        raise DataError(f"{_describe(path)}: cannot open ({exc.strerror or exc})") from None
    head = raw.read(2)
    raw.seek(0)
    if head == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb"), True, raw
    return raw, False, raw


# More dimensions than any image set needs (NumPy's own limit is 64).
_IDX_MAX_DIMS = 8


def read_idx(path, max_bytes=MAX_ARRAY_BYTES):
    """Read one IDX file (gzipped or raw) into a native-endian array of its declared shape.

    The format: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), the number of dimensions, then each dimension as a big-endian
    uint32, then the values in row-major order, big-endian. The data must be exactly as long as
    the dimensions say; raw files are checked against their size before reading, gzipped ones
    while decompressing. Raises DataError otherwise.
    """
    what = _describe(path)
    stream, is_gzip, raw = _open_maybe_gzip(path)
    try:
        try:
            magic = stream.read(4)
        except (EOFError, OSError, zlib.error) as exc:
            raise DataError(f"{what}: corrupt gzip data ({exc})") from None
        if len(magic) < 4:
            raise DataError(f"{what}: too short for an IDX file ({len(magic)} bytes)")
        if magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_TYPES or magic[3] == 0:
            raise DataError(f"{what}: not an IDX file (magic number {magic.hex()}; expected "
                            "0000 then a type code 08/09/0b/0c/0d/0e and a dimension count)")
        dtype, ndim = _IDX_TYPES[magic[2]], magic[3]
        if ndim > _IDX_MAX_DIMS:
            raise DataError(f"{what}: the header announces {ndim} dimensions; an IDX data set "
                            f"has at most {_IDX_MAX_DIMS}")
        try:
            dims_raw = stream.read(4 * ndim)
        except (EOFError, OSError, zlib.error) as exc:
            raise DataError(f"{what}: corrupt gzip data ({exc})") from None
        if len(dims_raw) < 4 * ndim:
            raise DataError(f"{what}: truncated header ({ndim} dimensions announced)")
        dims = tuple(int.from_bytes(dims_raw[4 * i:4 * i + 4], "big") for i in range(ndim))
        nbytes = math.prod(dims) * dtype.itemsize
        if nbytes > max_bytes:
            raise DataError(f"{what}: the header announces an array of shape {dims} "
                            f"({nbytes} bytes), more than the {max_bytes}-byte limit")
        if not is_gzip:
            size = os.fstat(raw.fileno()).st_size
            expected = 4 + 4 * ndim + nbytes
            if size != expected:
                kind = "truncated" if size < expected else "too long"
                raise DataError(f"{what}: {kind}: shape {dims} of {dtype.name} needs "
                                f"{expected} bytes, the file has {size}")
        buf = _read_exact(stream, nbytes, what)
    finally:
        stream.close()
        raw.close()
    array = np.frombuffer(buf, dtype=dtype).reshape(dims)
    if dtype.byteorder == ">":
        array = array.astype(dtype.newbyteorder("="))
    return array


def read_npz(path):
    """Arrays of a .npz file as a dict, read without pickle.

    Each member's .npy header is checked (no object dtype, a sane shape) and the data is read
    with the same guard as IDX files: exactly the announced number of bytes, never allocated on
    the header's word alone. Raises DataError for anything else.
    """
    what = _describe(path)
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise DataError(f"{what}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{what}: is a folder, expected a .npz file") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{what}: not a readable .npz file ({exc})") from None
    arrays = {}
    with archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            key = info.filename[:-4]
            member = f"{what}[{key}]"
            try:
                with archive.open(info) as stream:
                    arrays[key] = _read_npy(stream, member)
            except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError) as exc:
                raise DataError(f"{member}: corrupt data ({exc})") from None
    return arrays


def _read_npy(stream, what):
    fmt = np.lib.format
    try:
        version = fmt.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(stream)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = fmt.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except ValueError as exc:
        raise DataError(f"{what}: not a valid .npy array ({exc})") from None
    if dtype.hasobject:
        raise DataError(f"{what}: holds Python objects (pickled data), which fastbp does not "
                        "load; store numbers only")
    if dtype.itemsize == 0:
        raise DataError(f"{what}: has an unsupported dtype {dtype}")
    if any(d < 0 for d in shape) or len(shape) > _IDX_MAX_DIMS:
        raise DataError(f"{what}: the header announces an impossible shape {shape}")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > MAX_ARRAY_BYTES:
        raise DataError(f"{what}: the header announces shape {shape} ({nbytes} bytes), more "
                        f"than the {MAX_ARRAY_BYTES}-byte limit")
    buf = _read_exact(stream, nbytes, what)
    array = np.frombuffer(buf, dtype=dtype)
    if fortran:
        return array.reshape(shape[::-1]).T
    return array.reshape(shape)


def read_csv(path, label_column=-1):
    """(X float64 (N, F), labels as strings (N,)) from a comma-separated file (.csv or .csv.gz).

    A first line whose feature fields are not all numbers is skipped as a header. Every line
    must have the same number of fields. Raises DataError naming the line of the first problem.
    """
    fast = _read_numeric_csv(path, label_column)
    if fast is not None:
        return fast
    what = _describe(path)
    opener = gzip.open if os.fspath(path).endswith(".gz") else open
    rows, labels = [], []
    n_fields = None
    try:
        # utf-8-sig: a byte-order mark is not part of the first field
        with opener(path, "rt", newline="", encoding="utf-8-sig") as f:
            for line_no, fields in enumerate(csv.reader(f), start=1):
                if not fields or all(not s.strip() for s in fields):
                    continue
                if n_fields is None:
                    first_line = line_no
                    n_fields = len(fields)
                    if n_fields < 2:
                        raise DataError(f"{what}: line {line_no}: expected a label and at least "
                                        "one feature separated by commas")
                    try:
                        column = range(n_fields)[label_column]
                    except (IndexError, TypeError):
                        raise DataError(f"{what}: label column {label_column} does not exist "
                                        f"(lines have {n_fields} fields)") from None
                elif len(fields) != n_fields:
                    raise DataError(f"{what}: line {line_no}: {len(fields)} fields, the first "
                                    f"line has {n_fields}")
                label = fields.pop(column).strip()
                try:
                    values = [float(s) for s in fields]
                except ValueError:
                    if line_no == first_line:  # the one header line
                        continue
                    bad = next(s for s in fields if not _is_number(s))
                    raise DataError(f"{what}: line {line_no}: {bad!r} is not a number") from None
                rows.append(values)
                labels.append(label)
    except FileNotFoundError:
        raise DataError(f"{what}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{what}: is a folder, expected a .csv file") from None
    except (UnicodeDecodeError, EOFError, zlib.error, gzip.BadGzipFile, csv.Error) as exc:
        raise DataError(f"{what}: not a readable text file ({exc})") from None
    except OSError as exc:
        raise DataError(f"{what}: cannot read ({exc.strerror or exc})") from None
    if not rows:
        raise DataError(f"{what}: no data rows")
    return np.array(rows, dtype=np.float64), np.array(labels)


def _read_numeric_csv(path, label_column):
    """The common case, all numbers, parsed by NumPy's fast reader; None when the file needs the
    careful reader (a header, names as labels, or any problem it should explain)."""
    opener = gzip.open if os.fspath(path).endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8-sig") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "input contained no data": handled below
            table = np.loadtxt(f, delimiter=",", dtype=np.float64, ndmin=2, comments=None)
    except Exception:  # noqa: BLE001  (the careful reader reports what is wrong)
        return None
    if table.shape[0] == 0 or table.shape[1] < 2:
        return None
    try:
        column = range(table.shape[1])[label_column]
    except (IndexError, TypeError):
        return None
    labels = table[:, column]
    if not (np.all(np.abs(labels) < 2 ** 53) and np.all(labels == np.round(labels))):
        return None  # NaN, huge or fractional labels: let the careful reader explain
    return np.delete(table, column, axis=1), labels.astype(np.int64).astype(str)


def _is_number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


# -------------------------------------------------------------------------------------------------
# Labels, splits, scaling


def _labels_from_strings(labels, what):
    """int64 labels 0..C-1 and class names from the text of a label column."""
    try:
        values = labels.astype(np.float64)
    except ValueError:
        names = sorted(set(labels.tolist()))
        if any(not name for name in names):
            raise DataError(f"{what}: some labels are empty") from None
        lookup = {name: i for i, name in enumerate(names)}
        return np.array([lookup[s] for s in labels.tolist()], dtype=np.int64), names
    return _integer_labels(values, what), None


def _integer_labels(values, what):
    """Whole, non-negative numbers as int64 class labels; DataError otherwise."""
    values = np.asarray(values)
    if values.ndim != 1:
        raise DataError(f"{what}: labels must be one value per sample, got shape {values.shape}")
    if values.size == 0:
        raise DataError(f"{what}: no labels")
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)):
            raise DataError(f"{what}: labels contain NaN or Inf")
        if not np.all(values == np.round(values)):
            bad = values[values != np.round(values)][0]
            raise DataError(f"{what}: labels must be whole numbers (class indices), found "
                            f"{bad:g}")
    elif values.dtype.kind not in "iub":
        raise DataError(f"{what}: labels must be integers, got dtype {values.dtype}")
    if values.min() < 0:
        raise DataError(f"{what}: labels must be 0 or more, found {values.min():g}")
    if values.max() >= 1 << 20:
        raise DataError(f"{what}: label {values.max():g} is implausibly large for a class index")
    return values.astype(np.int64)


def split_indices(n, fraction, rng, labels=None):
    """(kept, held_out): a random ``fraction`` of range(n) held out, stratified by ``labels`` when
    given (each class contributes its share, rounded). Both index arrays are sorted."""
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction: expected a number in [0, 1), got {fraction!r}")
    if fraction == 0:
        return np.arange(n), np.arange(0)
    held = []
    if labels is None:
        held.append(rng.permutation(n)[:int(round(fraction * n))])
    else:
        for c in np.unique(labels):
            members = np.flatnonzero(labels == c)
            held.append(rng.permutation(members)[:int(round(fraction * members.size))])
    held = np.sort(np.concatenate(held))
    mask = np.ones(n, dtype=bool)
    mask[held] = False
    return np.flatnonzero(mask), held


def _standardise(X_train):
    with np.errstate(over="ignore", invalid="ignore"):   # huge features: checked by the caller
        offset = X_train.mean(axis=0)
        scale = X_train.std(axis=0)
    scale[scale < 1e-12] = 1.0
    return offset, scale


# -------------------------------------------------------------------------------------------------
# Downloads and the cache


def cache_dir():
    """Folder for downloaded data: $FASTBP_CACHE_DIR, else $XDG_CACHE_HOME/fastbp, else
    ~/.cache/fastbp."""
    if os.environ.get("FASTBP_CACHE_DIR"):
        return Path(os.environ["FASTBP_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastbp"


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_verified(urls, dest, sha256, max_bytes=256 << 20, timeout=60):
    """Download the first of ``urls`` whose content has SHA-256 ``sha256`` to ``dest``.

    Each attempt streams into a temporary file beside ``dest`` (at most ``max_bytes``), hashing
    as it goes; only a file with the right digest is renamed to ``dest``, so ``dest`` never holds
    a partial or wrong file. Raises DataError naming the last failure when every URL fails.
    """
    import urllib.request  # only needed here; keeps `import fastbp` light

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in urls:
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        try:
            digest = hashlib.sha256()
            size = 0
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                for chunk in iter(lambda: resp.read(_CHUNK), b""):
                    size += len(chunk)
                    if size > max_bytes:
                        raise DataError(f"more than {max_bytes} bytes")
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != sha256:
                failures.append(f"{url}: SHA-256 mismatch (got {digest.hexdigest()})")
                continue
            os.replace(tmp, dest)
            return dest
        except (OSError, ValueError) as exc:  # URLError and HTTPError are OSErrors
            failures.append(f"{url}: {getattr(exc, 'reason', None) or exc}")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    raise DataError(f"could not download {dest.name}: {'; '.join(failures)}")


def fetch(name, cache=None, mirrors=None, download=True, log=None):
    """Folder holding the verified IDX files of ``name`` ("mnist" or "fashion-mnist").

    Files already in the cache are used when their SHA-256 matches; missing or damaged ones are
    downloaded (when ``download``) from ``mirrors`` (default: the public mirrors in ``NAMED``).
    ``log``, if given, is called with a line before each download.
    """
    remote = NAMED[name]
    folder = Path(cache if cache is not None else cache_dir()) / name
    new_dirs = [d for d in (folder.parent, folder) if not d.exists()]
    try:
        for file_name, digest in remote.sha256.items():
            path = folder / file_name
            if path.is_file() and _sha256(path) == digest:
                continue
            if not download:
                state = "does not match its SHA-256" if path.exists() else "is missing"
                raise DataError(f"{name}: {path} {state}")
            urls = [base + file_name for base in (mirrors or remote.mirrors)]
            if log is not None:
                log(f"downloading {file_name} into {folder}")
            try:
                download_verified(urls, path, digest)
            except DataError as exc:
                raise DataError(f"{exc} (no network? fetch the four files yourself and give "
                                "their folder as data_dir / --data-dir)") from None
            except OSError as exc:   # the cache folder: not a folder, not writable, full
                raise DataError(f"{name}: cannot write the download cache {folder}: "
                                f"{exc.strerror or exc} (set FASTBP_CACHE_DIR to a writable "
                                "folder, or give the files' folder as data_dir / --data-dir)"
                                ) from None
    except BaseException:
        for d in reversed(new_dirs):  # leave no empty folders behind
            try:
                d.rmdir()
            except OSError:
                pass
        raise
    return folder


def _find_idx(folder, stem, name):
    for candidate in (stem + ".gz", stem):
        path = Path(folder) / candidate
        if path.is_file():
            return path
    raise DataError(f"{name}: neither {stem}.gz nor {stem} found in {folder}")


def read_idx_set(folder, name="IDX data", n_classes=10):
    """(X_train, y_train, X_test, y_test, image_shape) from the four IDX files in ``folder``:
    images (N, rows, cols) uint8 flattened to (N, rows*cols), labels (N,) uint8 in
    0..n_classes-1."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{name}: data folder {folder} does not exist")
    out = []
    for part in ("train", "test"):
        images_path = _find_idx(folder, _IDX_NAMES[part + "_images"], name)
        labels_path = _find_idx(folder, _IDX_NAMES[part + "_labels"], name)
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DataError(f"{images_path}: expected uint8 images (N, rows, cols), got "
                            f"{images.dtype} of shape {images.shape}")
        if labels.ndim != 1 or labels.dtype != np.uint8:
            raise DataError(f"{labels_path}: expected uint8 labels (N,), got {labels.dtype} "
                            f"of shape {labels.shape}")
        if labels.shape[0] != images.shape[0]:
            raise DataError(f"{labels_path}: {labels.shape[0]} labels for "
                            f"{images.shape[0]} images in {images_path.name}")
        if images.shape[0] == 0 or images[0].size == 0:
            raise DataError(f"{images_path}: holds no images (shape {images.shape})")
        if labels.size and labels.max() >= n_classes:
            raise DataError(f"{labels_path}: label {labels.max()} out of range 0..{n_classes - 1}")
        out += [images.reshape(images.shape[0], -1), labels]
    if out[0].shape[1] != out[2].shape[1]:
        raise DataError(f"{name}: training images have {out[0].shape[1]} pixels, test images "
                        f"{out[2].shape[1]}")
    return tuple(out) + (images.shape[1:],)


# -------------------------------------------------------------------------------------------------
# The shipped digits


def digits_path():
    """Path of the shipped digits.npz: inside the installed package (fastbp/_data), or the
    top-level data/ folder of a source checkout."""
    for package, parts in (("fastbp._data", ()), ("fastbp", ("_data",))):
        try:
            path = importlib.resources.files(package).joinpath(*parts, "digits.npz")
            if path.is_file():
                return Path(os.fspath(path))
        except (ModuleNotFoundError, TypeError, NotADirectoryError):
            pass
    path = Path(__file__).resolve().parent.parent / "data" / "digits.npz"
    if path.is_file():
        return path
    raise DataError("digits: the shipped data file digits.npz is missing from this "
                    "installation (reinstall fastbp)")


# -------------------------------------------------------------------------------------------------
# load


SCALINGS = ("auto", "standard", "unit", "none")


def load(source="digits", data_dir=None, val_fraction=0.1, test_fraction=0.2, seed=0,
         label_column=-1, dtype=np.float32, scaling="auto", download=True, log=None):
    """Load ``source`` and split and scale it (see the module docstring). Returns a Dataset.

    ``download=False`` refuses to download missing MNIST/Fashion-MNIST files; ``log`` receives a
    line before each download.

    Raises DataError for problems with the data, ValueError for bad arguments.
    """
    for arg, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not 0 <= value < 1:
            raise ValueError(f"{arg}: expected a number in [0, 1), got {value!r}")
    if scaling not in SCALINGS:
        raise ValueError(f"scaling: expected one of {', '.join(SCALINGS)}, got {scaling!r}")
    given = dtype
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        dtype = None
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype: expected float32 or float64, got {given!r:.60}")
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source: expected a data set name or a file path, got "
                        f"{type(source).__name__}")
    source = os.fspath(source)
    X_test = y_test = None
    class_names = None
    image_shape = None
    if source == "digits":
        if data_dir is not None:
            raise ValueError("data_dir: the digits are shipped with fastbp; data_dir applies "
                             "to mnist and fashion-mnist only")
        arrays = read_npz(digits_path())
        X, y = _check_xy(arrays, "digits")
        if X.dtype != np.uint8 or X.shape[1] != 64 or X.max() > 16:
            raise DataError("digits: the shipped file is damaged (reinstall fastbp)")
        name, image_shape, max_value, auto = "digits", (8, 8), 16.0, "standard"
        class_names = [str(d) for d in range(10)]
    elif source in NAMED:
        folder = data_dir if data_dir is not None else fetch(source, download=download, log=log)
        X, y, X_test, y_test, image_shape = read_idx_set(folder, source)
        name, max_value, auto = source, 255.0, "unit"
        class_names = list(NAMED[source].class_names)
    else:
        if data_dir is not None:
            raise ValueError("data_dir: applies to mnist and fashion-mnist only, not to a file")
        lower = source.lower()
        if lower.endswith(".npz"):
            arrays = read_npz(source)
            X, y = _check_xy(arrays, source)
            if ("X_test" in arrays) != ("y_test" in arrays):
                raise DataError(f"{source}: has only one of X_test and y_test; give both or "
                                "neither")
            if "X_test" in arrays:
                X_test, y_test = _check_xy(arrays, source, "X_test", "y_test")
                if X_test.shape[1] != X.shape[1]:
                    raise DataError(f"{source}: X_test has {X_test.shape[1]} features, X has "
                                    f"{X.shape[1]}")
        elif lower.endswith((".csv", ".csv.gz")):
            X, text_labels = read_csv(source, label_column)
            y, class_names = _labels_from_strings(text_labels, source)
        elif os.path.exists(source) or os.sep in source or "." in source:
            raise DataError(f"{source}: unsupported file type; expected a .npz, .csv or .csv.gz "
                            "file")
        else:
            raise DataError(f"unknown data set {source!r}; expected digits, mnist, "
                            "fashion-mnist, or a path to a .npz or .csv file")
        name, max_value, auto = os.path.basename(source), None, "standard"
        if not np.all(np.isfinite(X)) or (X_test is not None and
                                          not np.all(np.isfinite(X_test))):
            raise DataError(f"{source}: features contain NaN or Inf")

    n_classes = int(max(y.max(), -1 if y_test is None else y_test.max())) + 1
    if class_names is None:
        class_names = [str(c) for c in range(n_classes)]
    elif len(class_names) < n_classes:
        raise DataError(f"{name}: label {n_classes - 1} out of range 0..{len(class_names) - 1}")
    n_classes = max(n_classes, len(class_names))
    if n_classes < 2:
        raise DataError(f"{name}: every label is {y[0]}; a classifier needs at least 2 classes")

    if X_test is None:
        keep, test = split_indices(len(y), test_fraction,
                                   np.random.default_rng(TEST_SPLIT_SEED), y)
        if len(test) == 0:
            raise DataError(f"{name}: test_fraction {test_fraction} of {len(y)} rows leaves no "
                            "test row; give more rows or a larger fraction")
        X, y, X_test, y_test = X[keep], y[keep], X[test], y[test]
    if len(y) < 2:
        raise DataError(f"{name}: only {len(y)} training row(s) after the test split")
    train, val = split_indices(len(y), val_fraction, np.random.default_rng(seed), y)
    if len(train) == 0:
        raise DataError(f"{name}: no training rows left after the validation split")
    if val_fraction > 0 and len(val) == 0:
        raise DataError(f"{name}: val_fraction {val_fraction} of {len(y)} training rows leaves "
                        "no validation row; give more rows, a larger fraction, or 0 for none")
    X_train, y_train, X_val, y_val = X[train], y[train], X[val], y[val]

    scaling = auto if scaling == "auto" else scaling
    offset = np.zeros(X.shape[1])
    if scaling == "unit":
        if max_value is None:
            max_value = float(np.max(np.abs(X_train))) or 1.0
        scale = np.full(X.shape[1], max_value)
        description = f"features divided by {max_value:g}"
    elif scaling == "standard":
        offset, scale = _standardise(X_train.astype(np.float64))
        description = "features standardised (mean and deviation of the training rows)"
    else:
        scale = np.ones(X.shape[1])
        description = "features not scaled"

    if not (np.all(np.isfinite(offset)) and np.all(np.isfinite(scale)) and np.all(scale > 0)):
        raise DataError(f"{name}: features too large to scale (largest magnitude "
                        f"{float(np.max(np.abs(X_train))):.3g}); rescale them first")

    def prepare(a):
        with np.errstate(over="ignore"):
            if scaling == "unit" and max_value <= np.finfo(dtype).max:
                out = np.divide(a, dtype.type(max_value), dtype=dtype)  # one pass, in dtype
            elif scaling == "unit":   # a divisor beyond dtype: divide in float64 first
                out = np.ascontiguousarray(a / max_value, dtype=dtype)
            else:
                out = np.ascontiguousarray((a - offset) / scale, dtype=dtype)
        if not np.all(np.isfinite(out)):
            raise DataError(f"{name}: features beyond the range of {dtype.name} after "
                            f"{scaling} scaling; rescale them or use another --scale")
        return out

    return Dataset(name=name, X_train=prepare(X_train), y_train=y_train.astype(np.int64),
                   X_val=prepare(X_val), y_val=y_val.astype(np.int64),
                   X_test=prepare(X_test), y_test=y_test.astype(np.int64),
                   n_classes=n_classes, class_names=class_names, offset=offset, scale=scale,
                   scaling=description, image_shape=image_shape)


def _check_xy(arrays, what, x_key="X", y_key="y"):
    missing = [k for k in (x_key, y_key) if k not in arrays]
    if missing:
        have = ", ".join(sorted(arrays)) or "none"
        raise DataError(f"{what}: needs arrays {x_key} and {y_key}; missing "
                        f"{', '.join(missing)} (arrays present: {have})")
    X, y = arrays[x_key], arrays[y_key]
    if X.ndim < 2:
        raise DataError(f"{what}: {x_key} must have one row per sample (2-D or more), got shape "
                        f"{X.shape}")
    if X.dtype.kind not in "biuf":
        raise DataError(f"{what}: {x_key} must hold real numbers, got dtype {X.dtype}")
    if X.shape[0] == 0 or 0 in X.shape[1:]:
        raise DataError(f"{what}: {x_key} is empty (shape {X.shape})")
    X = X.reshape(X.shape[0], -1)
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise DataError(f"{what}: {x_key} is empty (shape {X.shape})")
    y = _integer_labels(y, f"{what}: {y_key}")
    if y.shape[0] != X.shape[0]:
        raise DataError(f"{what}: {y_key} has {y.shape[0]} labels for {X.shape[0]} rows of "
                        f"{x_key}")
    return X, y
