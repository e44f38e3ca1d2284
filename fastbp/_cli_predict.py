"""``fastbp predict MODEL DATA [--proba] [--out FILE]``: the predictions of a model that
``fastbp train --save`` wrote, through ``fastbp.load_predictor``, as CSV (stdout or FILE) or
.npy. Exit status as the command's (cli's docstring): 2 for bad options, a model file or data
it cannot use (one line on stderr, nothing written); 1 when FILE cannot be written."""
import csv
import io
import sys

import numpy as np

from . import distributed
from ._cli_options import UsageError, check_input_file, check_output_path
from .data import DataError, read_features
from .io import ModelFileError, atomic_write
from .kernels import Bfloat16Unavailable, raise_held_ctrl_c
from .predictor import load_predictor

EXIT_FAILED = 1


def predict(args):
    """The command; returns its exit status (raises UsageError for status 2)."""
    if distributed.launched_ranks() > 1:
        raise UsageError("fastbp predict: runs as one process; start it without mpiexec")
    _check_out(args.out)
    predictor = _predictor(args.model, args.matmul_precision)
    raise_held_ctrl_c()   # a press held while the model's compiled code loaded
    if args.proba:
        _check_proba(args, predictor)
    try:
        X = read_features(args.data, predictor.n_features, predictor.label_column)
        values = predictor.predict_proba(X) if args.proba else predictor.predict(X)
    except (DataError, ValueError) as exc:   # (ValueError: outputs that overflow)
        raise UsageError(f"fastbp predict: {exc}") from None
    header = _header(predictor, values, args.proba)
    try:
        _write(args.out, values, header)
    except OSError as exc:
        print(f"fastbp predict: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _predictor(path, matmul_precision):
    check_input_file("MODEL", path, "fastbp predict")
    try:
        return load_predictor(path, matmul_precision)
    except ModelFileError as exc:
        raise UsageError(f"fastbp predict: {exc}") from None
    except Bfloat16Unavailable as exc:
        raise UsageError(f"fastbp predict: {path}: {exc}; or predict with --matmul-precision "
                         "float32") from None


def _check_proba(args, predictor):
    """--proba needs class probabilities, which only a classifier with a cross-entropy loss
    gives (refused here, before the data is read)."""
    if predictor.task == "regression":
        raise UsageError(f"fastbp predict: --proba: {args.model} is a regression model; it "
                         "predicts values, not class probabilities (drop --proba)")
    from .kernels import LOSS_KINDS
    if LOSS_KINDS[predictor.model.loss].proba is None:
        raise UsageError(f"fastbp predict: --proba: {args.model} was trained with --loss "
                         f"{predictor.model.loss}, which gives no probabilities (drop --proba)")


def _check_out(path):
    """Refuse an output path that cannot be written before any work (as train's --save)."""
    if path is not None:
        check_output_path("--out", path, "fastbp predict")


def _header(predictor, values, proba):
    """The CSV's column names: the class names for probabilities; else 'class', or
    'prediction' (one per target: prediction_0, prediction_1, ...)."""
    if proba:
        return list(predictor.class_names)
    if predictor.task == "classification":
        return ["class"]
    n_targets = values.shape[1]
    return ["prediction"] if n_targets == 1 else [f"prediction_{j}" for j in range(n_targets)]


def _write(path, values, header):
    """values to path (.npy, else CSV) atomically, or as CSV to stdout."""
    if path is not None and path.lower().endswith(".npy"):
        atomic_write(path, lambda f: np.save(f, values, allow_pickle=False))
        return
    text = _csv_text(values, header)
    if path is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _csv_text(values, header):
    """A header line, then one line per row; numbers in their shortest exact form (str of a
    NumPy number of their dtype), names quoted where CSV needs it."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    rows = values.reshape(len(values), -1)
    writer.writerows([str(v) for v in row] for row in rows)
    return out.getvalue()
