"""Readers of data files: IDX (gzipped or not), .npz without pickle, and CSV (gzipped or not).

Each reader checks what a file announces before allocating it: an array header against the bytes
present and against :func:`memory_limit`, a compressed stream while it inflates, so that a small
file cannot make fastbp allocate gigabytes. Devices, FIFOs and sockets are refused (reading one
would never end or never start). Every problem raises :class:`DataError` naming the file.
"""
import array
import contextlib
import csv
import functools
import gzip
import io
import math
import os
import re
import stat
import warnings
import zipfile
import zlib

import numpy as np

__all__ = ["DataError", "memory_limit", "read_idx", "read_npz", "read_csv", "csv_width", "CHUNK"]

CHUNK = 1 << 20
# Environment variable that sets the memory limit, in bytes or with a K/M/G/T suffix.
LIMIT_VARIABLE = "FASTBP_MAX_DATA_BYTES"
# More dimensions than any data set needs (NumPy's own limit is 64).
MAX_DIMS = 8
# A value of a CSV takes at least 2 characters ("0,") and 8 bytes once parsed.
CSV_EXPANSION = 4


class DataError(ValueError):
    """A data file or data source is missing, malformed or does not fit: one-line message."""


# -------------------------------------------------------------------------------------------------
# The memory limit


def _available_memory():
    """Bytes of memory available now (Linux: MemAvailable, within the cgroup's limit), or None."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            cap = f.read().strip()
        if cap != "max":
            with open("/sys/fs/cgroup/memory.current") as f:
                found.append(int(cap) - int(f.read().strip()))
    except (OSError, ValueError):
        pass
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None
    return max(min(found), 0)


_SIZE = re.compile(r"\s*(\d+)\s*([KMGT]?)i?B?\s*", re.IGNORECASE)


def memory_limit():
    """Most bytes one data file may decode to: ``$FASTBP_MAX_DATA_BYTES`` when set (a number of
    bytes, or with a K/M/G/T suffix: ``500M``, ``16G``), else a quarter of the memory available
    when asked (8 GiB where that is unknown).

    Arrays count their size; a CSV counts four times its text (what its values can take once
    parsed). ``fastbp.data.load`` also holds the scaled arrays it returns to the limit.
    """
    text = os.environ.get(LIMIT_VARIABLE)
    if text:
        match = _SIZE.fullmatch(text)
        if not match:
            raise DataError(f"{LIMIT_VARIABLE}: expected a size in bytes such as 500M or 16G, "
                            f"got {text!r:.40}")
        return int(match[1]) << (10 * " KMGT".index(match[2].upper() or " "))
    available = _available_memory()
    return 8 << 30 if available is None else available // 4


def limit_origin():
    """Where the memory limit comes from, for messages."""
    if os.environ.get(LIMIT_VARIABLE):
        return f"set by {LIMIT_VARIABLE}"
    return f"a quarter of the memory available; set {LIMIT_VARIABLE} to change it"


def _check_size(nbytes, what, announced, limit):
    if nbytes > limit:
        raise DataError(f"{what}: {announced} ({nbytes:,} bytes), more than the memory limit of "
                        f"{limit:,} bytes ({limit_origin()})")


def _memory_safe(reader):
    """A reader whose MemoryError becomes a DataError naming the file."""
    @functools.wraps(reader)
    def guarded(path, *args, **kwargs):
        try:
            return reader(path, *args, **kwargs)
        except MemoryError:
            raise DataError(f"{os.fspath(path)}: not enough memory to read it (set "
                            f"{LIMIT_VARIABLE} below what is free)") from None
    return guarded


def _check_shape(shape, itemsize, what):
    """Refuse a header's shape that no array can have: too many axes, a negative or non-integer
    length, or more bytes than an index can count (even beside a zero-length axis)."""
    if len(shape) > MAX_DIMS or any(isinstance(d, bool) or not isinstance(d, int) or d < 0
                                    for d in shape) \
            or math.prod(d for d in shape if d) * itemsize >= np.iinfo(np.intp).max:
        raise DataError(f"{what}: the header announces an impossible shape {shape}")


# -------------------------------------------------------------------------------------------------
# Opening files


def _open_regular(path, what):
    """A binary file object, refusing what is not a regular file before opening it (a FIFO
    would block in open, a device would never end)."""
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise DataError(f"{what}: is a folder, expected a file")
        if not stat.S_ISREG(mode):
            raise DataError(f"{what}: not a regular file (a device, FIFO or socket); give a "
                            "file")
        return open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{what}: no such file") from None
    except OSError as exc:
        raise DataError(f"{what}: cannot open ({exc.strerror or exc})") from None


def _open_maybe_gzip(path, what):
    """(stream, is_gzip, raw file). Gzip is recognised by its magic bytes, not the name."""
    raw = _open_regular(path, what)
    head = raw.read(2)
    raw.seek(0)
    if head == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb"), True, raw
    return raw, False, raw


_COMPRESSION_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile, zipfile.BadZipFile)


# Small reads: a compressed stream's readinto reads a chunk, then copies it into the buffer.
_READ_CHUNK = 1 << 16
# The most that deflate (gzip, zip) can expand its input: about 1032 to 1.
_DEFLATE_RATIO = 1032


def _read_exact(stream, nbytes, what, most):
    """Exactly nbytes from stream into a new writable bytearray, and nothing after them.

    ``most`` bounds what the stream can hold (its size, or its compressed size times deflate's
    largest ratio), so a header that announces more is refused before anything is allocated and
    the buffer is allocated once, at its final size.
    """
    if nbytes > most:
        raise DataError(f"{what}: truncated: the header announces {nbytes} bytes of data, the "
                        f"file can hold at most {most}")
    buf = bytearray(nbytes)
    view = memoryview(buf)
    got = 0
    try:
        while got < nbytes:
            count = stream.readinto(view[got:got + _READ_CHUNK])
            if not count:
                raise DataError(f"{what}: truncated: the header announces {nbytes} bytes of "
                                f"data, the file holds only {got}")
            got += count
        extra = stream.read(1)
    except _COMPRESSION_ERRORS as exc:
        raise DataError(f"{what}: corrupt or truncated compressed data ({exc})") from None
    finally:
        view.release()
    if extra:
        raise DataError(f"{what}: more data than the header announces ({nbytes} bytes); the "
                        "header or the file is wrong")
    return buf


# -------------------------------------------------------------------------------------------------
# IDX


# IDX type codes: the third byte of the magic number.
_IDX_TYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _read_header(stream, nbytes, what):
    try:
        head = stream.read(nbytes)
    except (*_COMPRESSION_ERRORS, OSError) as exc:
        raise DataError(f"{what}: corrupt gzip data ({exc})") from None
    return head


@_memory_safe
def read_idx(path, max_bytes=None):
    """Read one IDX file (gzipped or raw) into a native-endian array of its declared shape.

    The format: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), the number of dimensions, then each dimension as a big-endian
    uint32, then the values in row-major order, big-endian. The data must be exactly as long as
    the dimensions say (raw files are checked against their size before reading, gzipped ones
    while inflating) and at most ``max_bytes`` (default :func:`memory_limit`).
    """
    what = os.fspath(path)
    limit = memory_limit() if max_bytes is None else max_bytes
    stream, is_gzip, raw = _open_maybe_gzip(path, what)
    try:
        magic = _read_header(stream, 4, what)
        if len(magic) < 4:
            raise DataError(f"{what}: too short for an IDX file ({len(magic)} bytes)")
        if magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_TYPES or magic[3] == 0:
            raise DataError(f"{what}: not an IDX file (magic number {magic.hex()}; expected "
                            "0000 then a type code 08/09/0b/0c/0d/0e and a dimension count)")
        dtype, ndim = _IDX_TYPES[magic[2]], magic[3]
        if ndim > MAX_DIMS:
            raise DataError(f"{what}: the header announces {ndim} dimensions; an IDX data set "
                            f"has at most {MAX_DIMS}")
        dims_raw = _read_header(stream, 4 * ndim, what)
        if len(dims_raw) < 4 * ndim:
            raise DataError(f"{what}: truncated header ({ndim} dimensions announced)")
        dims = tuple(int.from_bytes(dims_raw[4 * i:4 * i + 4], "big") for i in range(ndim))
        _check_shape(dims, dtype.itemsize, what)
        nbytes = math.prod(dims) * dtype.itemsize
        _check_size(nbytes, what, f"the header announces an array of shape {dims}", limit)
        size = os.fstat(raw.fileno()).st_size
        if not is_gzip:
            expected = 4 + 4 * ndim + nbytes
            if size != expected:
                kind = "truncated" if size < expected else "too long"
                raise DataError(f"{what}: {kind}: shape {dims} of {dtype.name} needs "
                                f"{expected} bytes, the file has {size}")
        buf = _read_exact(stream, nbytes, what, size * _DEFLATE_RATIO if is_gzip else nbytes)
    finally:
        stream.close()
        raw.close()
    values = np.frombuffer(buf, dtype=dtype).reshape(dims)
    if dtype.byteorder == ">":
        values = values.astype(dtype.newbyteorder("="))
    return values


# -------------------------------------------------------------------------------------------------
# .npz


@_memory_safe
def read_npz(path):
    """Arrays of a .npz file as a dict, read without pickle.

    Each member's .npy header is checked (no object dtype, a sane shape, all members together
    within :func:`memory_limit`) and its data read with the same guard as IDX files: exactly the
    announced number of bytes, never allocated on the header's word alone.
    """
    what = os.fspath(path)
    raw = _open_regular(path, what)
    try:
        archive = zipfile.ZipFile(raw)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError) as exc:
        raw.close()  # RuntimeError: zipfile's NotImplementedError for unknown versions
        raise DataError(f"{what}: not a readable .npz file ({exc})") from None
    arrays = {}
    budget = memory_limit()
    with raw, archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            key = info.filename[:-4]
            member = f"{what}[{key}]"
            try:
                with archive.open(info) as stream:
                    arrays[key] = _read_npy(stream, member, budget, _most(info))
            except DataError:
                raise
            except (*_COMPRESSION_ERRORS, RuntimeError, OSError, ValueError) as exc:
                raise DataError(f"{member}: corrupt data ({exc})") from None
            budget -= arrays[key].nbytes
    return arrays


def _most(info):
    """The most a zip member can inflate to (other methods than deflate: its declared size)."""
    ratio = {zipfile.ZIP_STORED: 1, zipfile.ZIP_DEFLATED: _DEFLATE_RATIO}
    if info.compress_type in ratio:
        return info.compress_size * ratio[info.compress_type]
    return info.file_size


def _read_npy(stream, what, limit, most):
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
    if dtype.itemsize == 0 or dtype.subdtype is not None:
        raise DataError(f"{what}: has an unsupported dtype {dtype}")
    _check_shape(shape, dtype.itemsize, what)
    nbytes = math.prod(shape) * dtype.itemsize
    _check_size(nbytes, what, f"the header announces shape {shape}", limit)
    buf = _read_exact(stream, nbytes, what, most)
    values = np.frombuffer(buf, dtype=dtype)
    if fortran:
        return values.reshape(shape[::-1]).T
    return values.reshape(shape)


# -------------------------------------------------------------------------------------------------
# CSV


class _CappedLines:
    """The lines of a text stream, refusing to read more than ``limit`` characters in all (a
    line is read at most to the limit, so one endless line cannot fill memory either)."""

    def __init__(self, stream, limit, what):
        self._stream, self._limit, self._left, self._what = stream, limit, limit, what

    def __iter__(self):
        return self

    def __next__(self):
        line = self._stream.readline(self._left + 1)
        self._left -= len(line)
        if self._left < 0:
            raise DataError(f"{self._what}: more than {self._limit:,} characters of text, over "
                            f"the memory limit (a CSV counts {CSV_EXPANSION} times its text; "
                            f"the limit is {limit_origin()})")
        if not line:
            raise StopIteration
        return line


@contextlib.contextmanager
def _csv_lines(path, what):
    """The lines of a .csv or .csv.gz file, capped at the memory limit: a plain file by its size
    up front, a gzipped one as it inflates."""
    limit = memory_limit()
    with _open_regular(path, what) as raw:
        if os.fspath(path).endswith(".gz"):
            text = gzip.open(raw, "rt", encoding="utf-8-sig")
        else:
            size = os.fstat(raw.fileno()).st_size
            _check_size(size * CSV_EXPANSION, what, f"a CSV of {size:,} bytes of text", limit)
            text = io.TextIOWrapper(raw, encoding="utf-8-sig")
        with text:  # utf-8-sig: a byte-order mark is not part of the first field
            yield _CappedLines(text, limit // CSV_EXPANSION, what)


_TEXT_ERRORS = (UnicodeDecodeError, *_COMPRESSION_ERRORS, csv.Error)


@_memory_safe
def read_csv(path, label_column=-1):
    """(X float64 (N, F), labels as strings (N,)) from a comma-separated file (.csv or .csv.gz).

    ``label_column`` is the label's index (negative: from the end), or its name in the header
    line (a str); a tuple of those for several columns (regression targets: labels are then
    (N, T) text); None: no label, every field is a feature (labels None). With a name, the first
    line must be that header; otherwise the first line is a header (skipped) when it names
    columns, by :func:`_is_header` (feature fields that are not all numbers, or a label field
    that is a name where the labels are numbers). Every line must have the same number of
    fields. Raises DataError naming the line of the first problem.
    """
    what = os.fspath(path)
    # A name needs the header, which NumPy's fast reader cannot read: the careful reader.
    named = any(isinstance(c, str) for c in _columns(label_column))
    fast = None if named else _read_numeric_csv(path, what, label_column)
    if fast is not None:
        return fast
    try:
        with _csv_lines(path, what) as lines:
            values, labels, n_features, n_rows = _parse_csv(csv.reader(lines), what,
                                                            label_column)
    except _TEXT_ERRORS as exc:
        raise DataError(f"{what}: not a readable text file ({exc})") from None
    except OSError as exc:
        raise DataError(f"{what}: cannot read ({exc.strerror or exc})") from None
    if not n_rows:
        raise DataError(f"{what}: no data rows")
    X = np.frombuffer(values, dtype=np.float64).reshape(n_rows, n_features)
    return X, None if label_column is None else np.array(labels)


def _parse_csv(rows, what, label_column):
    """(values as array('d'), labels, number of features, number of rows): the careful reader,
    which explains the first problem it meets. Without a label column, labels stay empty."""
    values, labels = array.array("d"), []
    n_fields = first_line = column = first_fields = None
    n_rows = 0
    for line_no, fields in enumerate(rows, start=1):
        if not fields or all(not s.strip() for s in fields):
            continue
        if n_fields is None:
            first_line, n_fields = line_no, len(fields)
            if label_column is not None:
                column = [_label_column(what, line_no, fields, c)
                          for c in _columns(label_column)]
                if len(set(column)) < len(column):
                    raise DataError(f"{what}: label columns {label_column}: a column twice")
                if len(column) >= n_fields:
                    raise DataError(f"{what}: label columns {label_column} leave no feature "
                                    f"(lines have {n_fields} fields)")
                if any(isinstance(c, str) for c in _columns(label_column)):
                    continue   # the header that names the label columns
        elif len(fields) != n_fields:
            raise DataError(f"{what}: line {line_no}: {len(fields)} fields, the first line has "
                            f"{n_fields}")
        label = None
        if column is not None:
            label = [fields[c].strip() for c in column]
            for c in sorted(column, reverse=True):
                del fields[c]
            label = label[0] if not isinstance(label_column, tuple) else tuple(label)
        try:
            row = [float(s) for s in fields]
        except ValueError:
            if line_no == first_line:  # the one header line
                continue
            bad = next(s for s in fields if not is_number(s))
            raise DataError(f"{what}: line {line_no}: {bad!r} is not a number") from None
        if line_no == first_line:
            first_fields = fields
        values.extend(row)
        labels.append(label)
        n_rows += 1
    n_features = (n_fields or 1) - (0 if column is None else len(column))
    # Whether a numeric first line is a header can only be told from the labels below it.
    several = isinstance(label_column, tuple)   # (labels are then tuples, one per row)
    if first_fields is not None and column is not None and all(
            _is_header(first_fields, [row[t] for row in labels] if several else labels)
            for t in range(len(column))):
        del values[:n_features]
        del labels[0]
        n_rows -= 1
    return values, labels, n_features, n_rows


def _is_header(features, labels):
    """Whether a first line whose feature fields are numbers (``features``, the text) and whose
    label is ``labels[0]`` is a header all the same (``labels``: the label column's text, this
    line's first). Its label must be a name (not blank, not a number), and either

    - every later label is a number: one name among numbers names the column (pandas writes
      ``0,1,2,3,label`` for a frame with integer column names), or
    - the feature fields are ``0, 1, ..., F-1``, pandas' integer column names, and the name
      never appears again in the label column (labels that are names themselves).

    A data row whose label is a name among names (``5.1,3.5,setosa``) stays a data row. A header
    of numbers only (``0,1,2,3,4``) cannot be told from data and is read as a row.
    """
    name, later = labels[0], labels[1:]
    if not name or is_number(name):
        return False
    if later and all(is_number(label) for label in later):
        return True
    pandas_names = [str(i) for i in range(len(features))]
    return [field.strip() for field in features] == pandas_names and name not in later


def _columns(label_column):
    """The label columns as a tuple (one column, a tuple of them, or none)."""
    if label_column is None:
        return ()
    return label_column if isinstance(label_column, tuple) else (label_column,)


def _label_column(what, line_no, fields, label_column):
    """The index of the label among the first line's fields (label_column: index or name)."""
    n_fields = len(fields)
    if n_fields < 2:
        raise DataError(f"{what}: line {line_no}: expected a label and at least one feature "
                        "separated by commas")
    if isinstance(label_column, str):
        return _named_column(what, fields, label_column)
    try:
        return range(n_fields)[label_column]
    except (IndexError, TypeError):
        raise DataError(f"{what}: label column {label_column} does not exist (lines have "
                        f"{n_fields} fields)") from None


def _named_column(what, header, name):
    """The index of the column called ``name`` in the header line's fields."""
    names = [field.strip() for field in header]
    matches = [i for i, field in enumerate(names) if field == name.strip()]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise DataError(f"{what}: the header names {name!r} {len(matches)} times; give the "
                        "label column's index instead")
    if all(is_number(field) for field in names):
        raise DataError(f"{what}: label column {name!r}: the file has no header line to find "
                        "it in; give the label column's index instead")
    shown = ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")
    raise DataError(f"{what}: no column named {name!r} in the header ({shown})")


def _read_numeric_csv(path, what, label_column):
    """The common case, all numbers, parsed by NumPy's fast reader; None when the file needs the
    careful reader (a header, names as labels, or any problem it should explain)."""
    try:
        with _csv_lines(path, what) as lines, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "input contained no data": handled below
            table = np.loadtxt(lines, delimiter=",", dtype=np.float64, ndmin=2, comments=None)
    except (DataError, MemoryError):
        raise
    except Exception:  # noqa: BLE001  (the careful reader reports what is wrong)
        return None
    if label_column is None:
        return (table, None) if table.size else None
    if table.shape[0] == 0 or table.shape[1] < 2:
        return None
    if isinstance(label_column, tuple):   # regression targets: any numbers
        try:
            columns = [range(table.shape[1])[c] for c in label_column]
        except (IndexError, TypeError):
            return None
        if len(set(columns)) < len(columns) or len(columns) >= table.shape[1]:
            return None
        return np.delete(table, columns, axis=1), table[:, columns].astype(str)
    try:
        column = range(table.shape[1])[label_column]
    except (IndexError, TypeError):
        return None
    labels = table[:, column]
    if not (np.all(np.abs(labels) < 2 ** 53) and np.all(labels == np.round(labels))):
        return None  # NaN, huge or fractional labels: let the careful reader explain
    return np.delete(table, column, axis=1), labels.astype(np.int64).astype(str)


def csv_width(path):
    """The number of fields on the first line of a .csv or .csv.gz file that is not blank (0
    for a file without one)."""
    what = os.fspath(path)
    try:
        with _csv_lines(path, what) as lines:
            return next((len(fields) for fields in csv.reader(lines)
                         if any(s.strip() for s in fields)), 0)
    except _TEXT_ERRORS as exc:
        raise DataError(f"{what}: not a readable text file ({exc})") from None
    except OSError as exc:
        raise DataError(f"{what}: cannot read ({exc.strerror or exc})") from None


def is_number(text):
    """Whether text reads as a float (Python's float(): NaN and Inf too)."""
    try:
        float(text)
        return True
    except ValueError:
        return False
