"""``fastbp export MODEL --to onnx|torch|safetensors OUT``: a model file written by ``fastbp
train --save`` (or ``fastbp.save``) in a format other tools serve (fastbp.export). Exit status
as the command's: 2 for bad options, a model file it cannot use or a package it needs that is
not installed (one line on stderr, nothing written); 1 when OUT cannot be written."""
import os
import sys
import warnings

import numpy as np

from . import distributed
from ._cli_options import UsageError, check_output_path
from .io import ModelFileError, atomic_write
from .predictor import load_predictor

EXIT_FAILED = 1
#: What --to takes.
TARGETS = ("onnx", "torch", "safetensors")


def export(args):
    """The command; returns its exit status (raises UsageError for status 2)."""
    if distributed.launched_ranks() > 1:
        raise UsageError("fastbp export: runs as one process; start it without mpiexec")
    if args.opset is not None and args.to != "onnx":
        raise UsageError("fastbp export: --opset is for --to onnx")
    if args.to == "torch" and not args.out.endswith(".pt2"):
        raise UsageError(f"fastbp export: --to torch: OUT {args.out} should end in .pt2 "
                         "(torch.export.load reads such files)")
    check_output_path("OUT", args.out, "fastbp export")
    predictor = _predictor(args.model)
    from . import export as formats
    try:
        write = {"onnx": _onnx, "torch": _torch, "safetensors": _safetensors}[args.to]
        write(formats, predictor, args)
    except ImportError as exc:
        raise UsageError(f"fastbp export: --to {args.to}: {exc}") from None
    except formats.ExportError as exc:
        raise UsageError(f"fastbp export: {exc}") from None
    except OSError as exc:
        print(f"fastbp export: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _predictor(path):
    if not os.path.isfile(path):
        what = "is a folder" if os.path.isdir(path) else "no such file"
        raise UsageError(f"fastbp export: MODEL {path}: {what}")
    try:   # (float32 products: an export holds the weights, not how they are multiplied)
        return load_predictor(path, matmul_precision="float32")
    except ModelFileError as exc:
        raise UsageError(f"fastbp export: {exc}") from None


def _onnx(formats, predictor, args):
    """The whole predictor: raw rows in, class names or targets in their units out."""
    formats.to_onnx(predictor, args.out, opset=17 if args.opset is None else args.opset)


def _torch(formats, predictor, args):
    """A torch.export program of to_torch's module (dynamic batch), loadable without fastbp:
    torch.export.load(OUT).module()."""
    import torch
    model = predictor.model
    module = formats.to_torch(model)
    example = torch.zeros((2, model.sizes[0]), dtype=getattr(torch, model.dtype.__name__))
    batch = torch.export.Dim("batch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    atomic_write(args.out, lambda f: torch.export.save(program, f))
    _note_scaling(predictor, args.out)


def _safetensors(formats, predictor, args):
    formats.save_safetensors(predictor.model, args.out)
    _note_scaling(predictor, args.out)


def _note_scaling(predictor, out):
    """The model takes scaled features and gives what the model gives: say so when the file
    records transforms that OUT does not hold (--to onnx holds them)."""
    scaled = np.any(predictor.offset != 0) or np.any(predictor.scale != 1)
    if scaled or predictor.task == "regression":
        print(f"fastbp export: note: {out} holds the model alone: it takes features scaled as "
              "in training ((X - offset) / scale, the offset and scale in the model file's "
              "metadata: fastbp.io.read_metadata)"
              + ("; its outputs are standardised targets" if predictor.task == "regression"
                 else "") + "; --to onnx includes them", file=sys.stderr)
