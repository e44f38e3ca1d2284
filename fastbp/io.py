"""Saving and loading models: ``fastbp.save(model, path)`` and ``fastbp.load(path)``.

The file is a NumPy ``.npz`` archive with plain arrays only (no pickle, so loading a file cannot
run code):

=====================  ====================================================================
``format``             the text "fastbp.MLP"
``version``            format version: 5 for a model whose matmul precision is not float32;
                       else 4 for one with normalisation, dropout or residual connections;
                       else 3 (so that an older fastbp reads every file it can load as written)
``sizes``              int64 layer widths, input first
``activations``        text, one per hidden layer
``output_activation``  text
``loss``               text
``dtype``              "float32" or "float64"
``checkpoint_every``   int64, at least 1 (absent from version 1 files, which load with 1)
``l2``                 float64, at least 0: the L2 penalty (absent from versions 1 and 2,
                       which load with 0)
``params``             the flat parameter array (``model.params``), in that dtype and in the
                       layout of :mod:`fastbp.layout`
``norm``               version 4: text, one per hidden layer: "layer", "batch" or "" (none)
``dropout``            version 4: float64, one probability per hidden layer
``residual``           version 4: int64, 1 when the model has residual connections
``running``            version 4: float64, batch normalisation's running means and variances
                       (``fastbp.kernels.running_layout``; empty without batch norm)
``dropout_key``        version 4: int64 [seed, training passes]: what keys the dropout masks,
                       so that a loaded model goes on drawing the masks it would have drawn
``matmul_precision``   version 5: text, "bfloat16" or "bfloat16-emulated" (``MLP``'s; version 5
                       files also hold every version 4 field)
``metadata``           optional: JSON text given to ``save``
``optimizer``          optional (``save(..., optimizer=opt)``): JSON text: the optimizer's
                       name (a key of ``fastbp.optim.OPTIMIZERS``: "sgd", "adam", "adamw",
                       "rmsprop"), its constructor arguments, current
                       ``lr``, ``steps`` taken, schedule position (``epochs_done``,
                       ``samples_seen``) and schedule (name, arguments, state)
``optimizer_state``    with ``optimizer``: its per-parameter buffers (momentum, moments,
                       averages: the rows its kind of update names, see
                       ``fastbp.kernels.update.KINDS``), shape (buffers, parameters), in the
                       model's dtype and layout
=====================  ====================================================================

Together these are every argument of ``MLP(...)`` (``seed`` only as the dropout masks' key; its
other use, the initial values, ``params`` replaces): ``load(save(model))`` builds the same
model, and versions 1 to 3 load as models without normalisation, dropout or residuals,
versions 1 to 4 as float32-precision ones. ``load(path, matmul_precision=...)`` overrides the
stored precision (a bfloat16 model on a machine without a bfloat16 unit, say).

``save`` writes to a temporary file in the destination folder, flushes it to disk and renames
it over ``path`` in one step, so ``path`` always holds either the previous file or the complete
new one, never a partial write. A symbolic link at ``path`` has its target replaced; what is
not a regular file (folder, fifo, device, socket) or a link to nothing is refused
(``destination``). ``load`` checks every field (sizes, activations, loss, dtype,
checkpoint_every, l2, parameter count, finite values) and raises :class:`ModelFileError` with a
one-line message when something does not fit. It reads versions 1 to 5. (Version 3 added l2: a
fastbp that reads only version 2 refuses such a file rather than load it without its penalty,
which a resumed run would then train without.) ``load_checkpoint``
also rebuilds the optimizer, after checking its fields against the model.
"""
import json
import os
import stat

import numpy as np

from .data import DataError, read_npz
from .layout import DENSE, NORM_KINDS, n_params
from .model import ACTIVATIONS, LOSSES, MATMUL_PRECISIONS, MLP
from . import optim, schedules
from ._validate import number_in
from ._tempfiles import create_beside, name_max
from .kernels.update import KINDS, LR, STEPS

__all__ = ["save", "load", "load_checkpoint", "read_metadata", "atomic_write", "destination",
           "ModelFileError", "DestinationError",
           "FORMAT", "VERSION",
           "READABLE_VERSIONS"]

FORMAT = "fastbp.MLP"
VERSION = 5
# Versions that load() reads. Version 1 had no checkpoint_every (it loads as 1); versions 1 and
# 2 had no l2 (they load with 0); versions 1 to 3 no normalisation, dropout or residuals;
# versions 1 to 4 no matmul precision (float32).
READABLE_VERSIONS = (1, 2, 3, 4, 5)
# The fields version 4 added.
_EXTRAS = ("norm", "dropout", "residual", "running", "dropout_key")


class ModelFileError(ValueError):
    """A model file is missing, unreadable, or not a valid fastbp model: one-line message."""


def save(model, path, metadata=None, optimizer=None):
    """Write ``model`` to ``path`` (exactly that name; ``.npz`` is the usual suffix), atomically.

    ``metadata``: an optional JSON-serialisable dict stored beside the weights (for example how
    the inputs were scaled); read it back with ``read_metadata``. ``optimizer``: a fastbp
    optimizer of this model, whose state (moments, step count, schedule position) is stored
    too, for ``load_checkpoint`` to resume from. The folder must exist. ``path`` may name a
    regular file, which is replaced, or a symbolic link, whose target is (``destination``); a
    folder, fifo, device, socket or link to nothing raises DestinationError (an OSError) naming
    it, and is left as it was. Returns the path.
    """
    if not isinstance(model, MLP):
        raise TypeError(f"model: expected a fastbp.MLP, got {type(model).__name__}")
    if not np.all(np.isfinite(model.params)):
        raise ValueError("model: its params contain NaN or Inf; load would refuse the file")
    if optimizer is not None:
        if not isinstance(optimizer, optim.Optimizer) or optimizer.name not in optim.OPTIMIZERS:
            names = ", ".join(cls.__name__ for cls in optim.OPTIMIZERS.values())
            raise TypeError(f"optimizer: expected a fastbp optimizer ({names}), got "
                            f"{type(optimizer).__name__}")
        if optimizer.model is not model:
            raise ValueError("optimizer: it was built for another model")
        schedule = optimizer.lr_schedule
        if schedule is not None and schedules.SCHEDULES.get(getattr(schedule, "name", None)) \
                is not type(schedule):
            raise TypeError(f"optimizer: its lr_schedule, a {type(schedule).__name__}, is not "
                            "one of fastbp.schedules, so it cannot be saved")
    path = os.fspath(path)
    precision = model.matmul_precision != "float32"
    extras = precision or any(model.norm) or model.residual or any(model.dropout)
    arrays = {
        "format": np.array(FORMAT),
        "version": np.array(5 if precision else 4 if extras else 3, dtype=np.int64),
        "sizes": np.array(model.sizes, dtype=np.int64),
        "activations": np.array(model.activations, dtype=str),
        "output_activation": np.array(model.output_activation),
        "loss": np.array(model.loss),
        "dtype": np.array(np.dtype(model.dtype).name),
        "checkpoint_every": np.array(model.checkpoint_every, dtype=np.int64),
        "l2": np.array(model.l2, dtype=np.float64),
        "params": model.params,
    }
    if extras:
        engine = model.engine
        arrays.update(norm=np.array([n or "" for n in model.norm], dtype=str),
                      dropout=np.array(model.dropout, dtype=np.float64),
                      residual=np.array(int(model.residual), dtype=np.int64),
                      running=engine.running.copy(), dropout_key=engine.counter[:2].copy())
    if precision:
        arrays["matmul_precision"] = np.array(model.matmul_precision)
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise TypeError(f"metadata: expected a dict, got {type(metadata).__name__}")
        try:
            arrays["metadata"] = np.array(json.dumps(metadata, allow_nan=False))
        except (TypeError, ValueError, RecursionError) as exc:
            raise ValueError(f"metadata: cannot be stored as JSON ({exc})") from None
    if optimizer is not None:
        arrays["optimizer"] = np.array(json.dumps(_optimizer_record(optimizer), allow_nan=False))
        arrays["optimizer_state"] = optimizer.state
    return atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def _optimizer_record(opt):
    schedule = opt.lr_schedule
    return {"name": opt.name, "config": opt.config(), "lr": opt.lr, "steps": opt.steps,
            "epochs_done": opt.epochs_done, "samples_seen": opt.samples_seen,
            "schedule": None if schedule is None else {
                "name": schedule.name, "config": schedule.config(),
                "state": schedule.state() if hasattr(schedule, "state") else {}}}


def load_checkpoint(path, matmul_precision=None):
    """Read a model and its optimizer written by ``save(model, path, optimizer=opt)``: returns
    (model, optimizer), the optimizer with the saved hyper-parameters, state and schedule
    position, so that training continues as if never stopped. Raises ModelFileError when the
    file has no optimizer, or its optimizer does not fit the model (kind, buffer shapes, dtype,
    values); nothing is returned half-loaded. matmul_precision: as load's."""
    what = path = _path(path)
    model = load(path, matmul_precision)
    arrays = _read(path)
    if "optimizer" not in arrays:
        raise ModelFileError(f"{what}: holds no optimizer state (saved without optimizer=); "
                             "use fastbp.load for the model alone")
    try:
        record = json.loads(_text(arrays, "optimizer", what))
        opt = _rebuild_optimizer(model, record, arrays.get("optimizer_state"))
    except ModelFileError:
        raise
    except KeyError as exc:
        raise ModelFileError(f"{what}: optimizer: its record lacks the field {exc}") from None
    except (TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise ModelFileError(f"{what}: optimizer: {exc}") from None
    except RecursionError:
        raise ModelFileError(f"{what}: optimizer: its record is nested too deeply") from None
    return model, opt


def _rebuild_optimizer(model, record, state):
    if not isinstance(record, dict):
        raise ValueError("its record is not a JSON object")
    cls = optim.OPTIMIZERS.get(record["name"])
    if cls is None:
        raise ValueError(f"unknown optimizer {record['name']!r}")
    # JSON has no tuples: a pair (betas) comes back a list.
    config = {name: tuple(value) if isinstance(value, list) else value
              for name, value in dict(record["config"]).items()}
    schedule = record["schedule"]
    if schedule is not None:
        if not isinstance(schedule, dict) or not isinstance(schedule["config"], dict):
            raise ValueError("its schedule is not a JSON object with a config")
        schedule = schedules.from_config(schedule["name"], schedule["config"], schedule["state"])
    opt = cls(model, **config, lr_schedule=schedule)
    if state is None or state.shape != opt.state.shape or state.dtype != opt.state.dtype:
        got = "none" if state is None else f"{state.dtype} of shape {state.shape}"
        raise ValueError(f"its state should be {opt.state.dtype} of shape {opt.state.shape} "
                         f"for this model, got {got}")
    if not np.all(np.isfinite(state)):
        raise ValueError("its state contains NaN or Inf")
    kind = KINDS[opt.update_spec().kind]
    for row, name in enumerate(kind.state(opt.update_spec().hyper)):
        if name in kind.non_negative and np.any(state[row] < 0):
            raise ValueError(f"its state row {row} ({name}) contains negative values; that "
                             "row never goes below 0")
    steps = _count("steps", record["steps"])
    opt.state[...] = state
    hyper = opt.update_spec().hyper
    hyper[STEPS] = steps
    hyper[LR] = number_in("lr", record["lr"], 0)  # 0: the end of a cosine
    opt.set_position(_count("epochs_done", record["epochs_done"]),
                     _count("samples_seen", record["samples_seen"]))
    return opt


def _count(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 2 ** 53:
        raise ValueError(f"{name} should be a count, got {value!r:.50}")
    return value


class DestinationError(OSError):
    """A path that a write must not replace: str() says why, without the path."""


class _FolderError(DestinationError, IsADirectoryError):
    """A folder where a file should be written (an IsADirectoryError, as before)."""


# What a path may hold other than a regular file, for the refusal to name it.
_NOT_FILES = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a fifo"), (stat.S_ISSOCK, "a socket"),
              (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def destination(path):
    """The file that writing ``path`` atomically replaces, as an absolute path: ``path``
    itself, or the file a symbolic link there points to (the link stays, its target gets the
    new data, as writing through a link does). Raises DestinationError for what a rename must
    not replace, nor a write create: something other than a regular file (a folder, a fifo, a
    device such as /dev/null, a socket), a link to nothing (refused rather than followed: it
    may be a typo, and where it points is not the file the user sees), and a name longer than
    the file system takes."""
    path = os.fspath(path)
    if os.path.islink(path):
        try:
            target = os.path.realpath(path, strict=True)
        except FileNotFoundError:
            raise DestinationError(f"is a symbolic link to {os.path.realpath(path)}, which "
                                   "does not exist; name the file itself") from None
        except OSError as exc:   # a loop of links
            raise DestinationError(f"is a symbolic link that cannot be followed "
                                   f"({exc.strerror})") from None
    else:
        target = os.path.abspath(path)
    mode = os.stat(target).st_mode if os.path.exists(target) else stat.S_IFREG
    if not stat.S_ISREG(mode):
        kind = next((kind for is_kind, kind in _NOT_FILES if is_kind(mode)), "something else")
        error = _FolderError if stat.S_ISDIR(mode) else DestinationError
        raise error(f"is {kind}, not a regular file; refusing to replace it")
    folder, name = os.path.split(target)
    limit = name_max(folder) if os.path.isdir(folder) else 255
    if len(os.fsencode(name)) > limit:
        raise DestinationError(f"the file name is {len(os.fsencode(name))} bytes long; the "
                               f"file system takes at most {limit}")
    return target


def atomic_write(path, write):
    """Call ``write(f)`` on a binary file object, then put the result at ``path`` in one rename.

    The data goes to a temporary file in the same folder, is flushed to disk, and replaces
    ``path`` only once ``write`` has returned: on any error (or Ctrl-C) the temporary file is
    removed and ``path`` is left as it was; one left by a killed process is removed by the next
    write to ``path``. ``path`` may be a symbolic link: its target is replaced (see
    ``destination``, which also says what is refused, with DestinationError, an OSError,
    before anything is written). Returns ``path``.
    """
    path = os.fsdecode(os.fspath(path))   # (bytes too: temporary names are built as text)
    try:
        target = destination(path)
    except DestinationError as exc:
        raise type(exc)(f"path: {path} {exc}") from None
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{path}: the folder {folder} does not exist")
    fd, tmp = create_beside(target, ".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _path(path):
    """A file path (str, bytes or os.PathLike) as text."""
    try:
        return os.fsdecode(os.fspath(path))
    except TypeError:
        raise TypeError(f"path: expected a file path, got {type(path).__name__}") from None


def _read(path):
    try:
        return read_npz(path)
    except DataError as exc:
        raise ModelFileError(str(exc)) from None


def _text(arrays, key, what):
    value = arrays.get(key)
    if value is None:
        raise ModelFileError(f"{what}: missing the field {key!r}; not a fastbp model file")
    if value.dtype.kind != "U" or value.ndim != 0:
        raise ModelFileError(f"{what}: field {key!r} should be text, got {value.dtype} of shape "
                             f"{value.shape}")
    return str(value)


def check_matmul_precision(value):
    """Refuse a loader's matmul_precision other than None (the file's) or a precision's name."""
    if value is not None and value not in MATMUL_PRECISIONS:
        raise ValueError(f"matmul_precision: expected None or one of "
                         f"{', '.join(map(repr, MATMUL_PRECISIONS))}, got {value!r}")


def load(path, matmul_precision=None):
    """Read a model written by ``save``. Returns a new MLP with the stored parameters.

    matmul_precision: the loaded model's (see MLP), in place of the stored one (None: the
    stored one). Raises ModelFileError (a ValueError) naming the file and the problem when the
    file is missing, is not a fastbp model, or its fields do not agree with each other; a
    bfloat16 model where bfloat16 products cannot run raises kernels.Bfloat16Unavailable.
    """
    check_matmul_precision(matmul_precision)
    what = path = _path(path)
    arrays = _read(path)
    if "format" not in arrays or "params" not in arrays:
        raise ModelFileError(f"{what}: not a fastbp model file (no 'format' and 'params' "
                             "arrays)")
    if _text(arrays, "format", what) != FORMAT:
        raise ModelFileError(f"{what}: format is {str(arrays['format'])!r}, expected {FORMAT!r}")
    version = arrays.get("version")
    if version is None or version.shape != () or version.dtype.kind not in "iu":
        raise ModelFileError(f"{what}: missing or malformed 'version'")
    version = int(version)
    if version not in READABLE_VERSIONS:
        raise ModelFileError(f"{what}: format version {version}; this fastbp reads versions "
                             f"{', '.join(map(str, READABLE_VERSIONS))} (a newer fastbp wrote "
                             "it?)")

    sizes = arrays.get("sizes")
    if sizes is None or sizes.ndim != 1 or sizes.dtype.kind not in "iu" or sizes.size < 2 \
            or np.any(sizes < 1):
        raise ModelFileError(f"{what}: 'sizes' must list at least two positive layer widths")
    sizes = [int(s) for s in sizes]
    activations = arrays.get("activations")
    if activations is None or activations.ndim != 1 or activations.dtype.kind != "U":
        raise ModelFileError(f"{what}: 'activations' must be a list of names")
    activations = [str(a) for a in activations]
    if len(activations) != len(sizes) - 2:
        raise ModelFileError(f"{what}: {len(activations)} hidden activations for "
                             f"{len(sizes) - 2} hidden layers")
    output_activation = _text(arrays, "output_activation", what)
    for name in activations + [output_activation]:
        if name not in ACTIVATIONS:
            raise ModelFileError(f"{what}: unknown activation {name!r}")
    loss = _text(arrays, "loss", what)
    if loss not in LOSSES:
        raise ModelFileError(f"{what}: unknown loss {loss!r}")
    dtype_name = _text(arrays, "dtype", what)
    if dtype_name not in ("float32", "float64"):
        raise ModelFileError(f"{what}: dtype {dtype_name!r}, expected float32 or float64")
    checkpoint_every = _checkpoint_every(arrays, version, what)
    l2 = _l2(arrays, version, what)

    norm, dropout, residual, running, key = _extras(arrays, version, len(sizes) - 2, what)
    if matmul_precision is None:
        matmul_precision = _matmul_precision(arrays, version, what)
    params = arrays["params"]
    expected = n_params(sizes, [NORM_KINDS[n] if n else DENSE for n in norm] + [DENSE])
    if params.ndim != 1 or params.dtype != np.dtype(dtype_name):
        raise ModelFileError(f"{what}: 'params' should be a 1-D {dtype_name} array, got "
                             f"{params.dtype} of shape {params.shape}")
    if params.size != expected:
        raise ModelFileError(f"{what}: {params.size} parameters, but sizes {sizes} need "
                             f"{expected}")
    if not np.all(np.isfinite(params)):
        raise ModelFileError(f"{what}: parameters contain NaN or Inf")
    try:
        model = MLP(sizes, activation=activations, output_activation=output_activation,
                    loss=loss, dtype=np.dtype(dtype_name).type,
                    checkpoint_every=checkpoint_every, l2=l2, norm=norm, residual=residual,
                    dropout=dropout, seed=key[0], matmul_precision=matmul_precision)
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{what}: {exc}") from None
    engine = model.engine
    if running is not None:
        if running.shape != engine.running.shape:
            raise ModelFileError(f"{what}: 'running' holds {running.size} values, the model's "
                                 f"batch normalisations {engine.running.size}")
        engine.running[...] = running
        if any(np.any(v < 0) for v in model.running_vars if v is not None):
            raise ModelFileError(f"{what}: 'running' holds a negative running variance")
    engine.counter[1] = key[1]
    model.params[...] = params
    return model


def _extras(arrays, version, n_hidden, what):
    """(norm, dropout, residual, running or None, [seed, passes]) of a version 4 file, checked;
    none of them for older ones."""
    if version < 4:
        return [None] * n_hidden, 0.0, False, None, (0, 0)
    missing = [name for name in _EXTRAS if name not in arrays]
    if missing:
        raise ModelFileError(f"{what}: missing the field {missing[0]!r}; not a version 4 "
                             "fastbp model file")
    norm, dropout, residual = arrays["norm"], arrays["dropout"], arrays["residual"]
    running, key = arrays["running"], arrays["dropout_key"]
    if norm.ndim != 1 or norm.dtype.kind != "U" or norm.size != n_hidden:
        raise ModelFileError(f"{what}: 'norm' must be {n_hidden} names, one per hidden layer")
    if dropout.ndim != 1 or dropout.dtype.kind != "f" or dropout.size != n_hidden:
        raise ModelFileError(f"{what}: 'dropout' must be {n_hidden} probabilities, one per "
                             "hidden layer")
    if residual.shape != () or residual.dtype.kind not in "iu" or int(residual) not in (0, 1):
        raise ModelFileError(f"{what}: 'residual' must be 0 or 1")
    if running.ndim != 1 or running.dtype != np.float64 or not np.all(np.isfinite(running)):
        raise ModelFileError(f"{what}: 'running' must be finite float64 values")
    if key.shape != (2,) or key.dtype.kind not in "iu" or np.any(key < 0):
        raise ModelFileError(f"{what}: 'dropout_key' must be two non-negative integers")
    for name in norm:
        if str(name) and str(name) not in NORM_KINDS:
            raise ModelFileError(f"{what}: unknown normalisation {str(name)!r}")
    return ([str(n) or None for n in norm], [float(p) for p in dropout], bool(residual),
            running, [int(k) for k in key])


def _matmul_precision(arrays, version, what):
    """The stored matmul precision; "float32" for files before version 5."""
    if version < 5:
        return "float32"
    if "matmul_precision" not in arrays:
        raise ModelFileError(f"{what}: missing the field 'matmul_precision'; not a version 5 "
                             "fastbp model file")
    value = _text(arrays, "matmul_precision", what)
    if value not in MATMUL_PRECISIONS:
        raise ModelFileError(f"{what}: unknown matmul_precision {value!r}")
    return value


def _checkpoint_every(arrays, version, what):
    """The stored checkpoint_every as a positive int; 1 for version 1 files, which lack it."""
    value = arrays.get("checkpoint_every")
    if value is None:
        if version == 1:
            return 1
        raise ModelFileError(f"{what}: missing the field 'checkpoint_every'; not a version "
                             f"{version} fastbp model file")
    if value.shape != () or value.dtype.kind not in "iu":
        raise ModelFileError(f"{what}: 'checkpoint_every' must be a positive integer, got "
                             f"{value.dtype} of shape {value.shape}")
    if int(value) < 1:
        raise ModelFileError(f"{what}: 'checkpoint_every' must be a positive integer, got "
                             f"{int(value)}")
    return int(value)


def _l2(arrays, version, what):
    """The stored l2 as a float; 0 for versions 1 and 2, which lack it. (MLP checks the rest:
    not negative, finite, within the dtype.)"""
    value = arrays.get("l2")
    if value is None:
        if version < 3:
            return 0.0
        raise ModelFileError(f"{what}: missing the field 'l2'; not a version {version} fastbp "
                             "model file")
    if value.shape != () or value.dtype.kind not in "iuf":
        raise ModelFileError(f"{what}: 'l2' must be a number, got {value.dtype} of shape "
                             f"{value.shape}")
    return float(value)


def _no_constant(name):
    raise ValueError(f"{name} is not JSON (save refuses it too)")


def read_metadata(path):
    """The metadata dict stored by ``save(..., metadata=...)``, or {} when there is none."""
    what = path = _path(path)
    arrays = _read(path)
    if "metadata" not in arrays:
        return {}
    try:
        value = json.loads(_text(arrays, "metadata", what), parse_constant=_no_constant)
    except (json.JSONDecodeError, ValueError) as exc:
        raise ModelFileError(f"{what}: metadata is not valid JSON ({exc})") from None
    except RecursionError:
        raise ModelFileError(f"{what}: metadata is nested too deeply") from None
    if not isinstance(value, dict):
        raise ModelFileError(f"{what}: metadata is not a JSON object")
    return value
