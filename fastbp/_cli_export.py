"""``fastbp export MODEL --to onnx|torch|safetensors OUT``: a model file written by ``fastbp
train --save`` (or ``fastbp.save``) in a format other tools serve (fastbp.export). Exit status
as the command's: 2 for bad options, a model file it cannot use or a package it needs that is
not installed (one line on stderr, nothing written); 1 when OUT cannot be written; 130 when
interrupted (nothing written, or, where Ctrl-C came while PyTorch wrote, OUT written whole)."""
import os
import sys
import warnings

import numpy as np

from . import distributed, kernels
from ._cli_options import UsageError, check_input_file, check_output_path
from ._environment import HeldInterrupt
from .io import ModelFileError, atomic_write, destination
from .predictor import load_predictor

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
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
    check_input_file("MODEL", args.model, "fastbp export")
    check_output_path("OUT", args.out, "fastbp export")
    if os.path.realpath(args.model) == os.path.realpath(destination(args.out)):
        raise UsageError(f"fastbp export: OUT {args.out} is MODEL {args.model}; writing it "
                         "would replace the model")
    predictor, precision = _predictor(args.model)
    kernels.raise_held_ctrl_c()   # a press held while the model's compiled code loaded
    from . import export as formats
    write = {"onnx": _onnx, "torch": _torch, "safetensors": _safetensors}[args.to]
    try:
        status = write(formats, predictor, precision, args)
    except ImportError as exc:
        raise UsageError(f"fastbp export: --to {args.to}: {exc}") from None
    except formats.ExportError as exc:
        message = str(exc)
        raise UsageError(f"fastbp export: {'--' if message.startswith('opset') else ''}"
                         f"{message}") from None
    except OSError as exc:
        print(f"fastbp export: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    _notes(predictor, precision, args)
    return status


def _predictor(path):
    """(Predictor, the model's matmul precision as the file records it). A bfloat16 model
    exports where the CPU has no bfloat16 unit too: an export holds weights, not how they are
    multiplied, so it is then loaded to multiply in float32."""
    try:
        try:
            predictor = load_predictor(path)
        except kernels.Bfloat16Unavailable:
            return load_predictor(path, matmul_precision="float32"), "bfloat16"
    except ModelFileError as exc:
        raise UsageError(f"fastbp export: {exc}") from None
    return predictor, predictor.model.matmul_precision


def _onnx(formats, predictor, precision, args):
    """The whole predictor: raw rows in, class names or targets in their units out."""
    formats.to_onnx(predictor, args.out, opset=17 if args.opset is None else args.opset)
    return 0


def _torch(formats, predictor, precision, args):
    """A torch.export program of to_torch's module (dynamic batch), loadable without fastbp:
    torch.export.load(OUT).module(). PyTorch's writer aborts the process when Ctrl-C lands
    inside it, so Ctrl-C is held until it is done."""
    model = predictor.model
    module = formats.to_torch(model)   # (first: its ImportError names the package)
    import torch
    example = torch.zeros((2, model.sizes[0]), dtype=getattr(torch, model.dtype.__name__))
    saved = False
    with HeldInterrupt() as held:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(module, (example,),
                                          dynamic_shapes=({0: torch.export.Dim("batch")},))
        if not held.received:
            atomic_write(args.out, lambda f: torch.export.save(program, f))
            saved = True
    if held.received:
        print(f"fastbp export: interrupted; "
              f"{args.out + ' written whole' if saved else 'nothing written'}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def _safetensors(formats, predictor, precision, args):
    formats.save_safetensors(predictor.model, args.out, matmul_precision=precision)
    return 0


def _notes(predictor, precision, args):
    """What OUT does not hold that MODEL does, on stderr (the export itself succeeded)."""
    def note(text):
        print(f"fastbp export: note: {text}", file=sys.stderr)
    scaled = np.any(predictor.offset != 0) or np.any(predictor.scale != 1)
    if args.to != "onnx" and (scaled or predictor.task == "regression"):
        note(f"{args.out} holds the model alone: it takes features scaled as in training "
             "((X - offset) / scale, the offset and scale in the model file's metadata: "
             "fastbp.io.read_metadata)"
             + ("; its outputs are standardised targets" if predictor.task == "regression"
                else "") + "; --to onnx includes them")
    if args.to != "safetensors" and precision != "float32":
        note(f"the model multiplies in {precision}; {args.out} multiplies its weights in "
             f"{np.dtype(predictor.model.dtype).name}, so its outputs differ from fastbp's by "
             "bfloat16 rounding")
    if args.to == "onnx" and predictor.model.dtype == np.float64 \
            and "gelu" in predictor.model.activations + [predictor.model.output_activation]:
        note("onnxruntime's CPU provider has no float64 Erf or Gelu: it cannot run this float64 "
             "GELU graph (onnx's reference evaluator can)")
