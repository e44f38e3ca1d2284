"""The ``fastbp`` command: ``fastbp train`` trains an MLP and reports how it learns.

Exit status: 0 on success; 2 for bad options or unusable data (one line on stderr, nothing
written); 1 when training diverges or an output file cannot be written; 130 after Ctrl-C
(with ``--save``, the last good weights are written first).

Started by ``mpiexec -n N``, the N processes train one model together (fit's ``comm``, see
docs/mpi.md): rank 0 alone prints and writes files; a refusal on any rank is a refusal on all.
"""
import argparse
import contextlib
import json
import math
import os
import signal
import sys
import threading
import time

import numpy as np

from . import __version__, distributed, kernels
from ._threads import set_num_threads
from .data import NAMED, SCALINGS, DataError
from .data import load as load_data
from .io import ModelFileError, load_checkpoint, read_metadata
from .io import save as save_model
from .model import ACTIVATIONS, LOSSES, MLP
from .optim import OPTIMIZERS
from .schedules import SCHEDULES, Adaptive, Constant, Cosine, InvScaling, Step
from .training import DivergenceError, _train_steps, fit, ready_step_on_ranks

EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130

# Defaults: chosen so that `fastbp train` (the shipped digits) reaches 97% test accuracy or more
# within seconds, and `--data mnist --layers 256,128 --epochs 5` reaches 97.5% or more.
DEFAULTS = dict(data="digits", layers="128", activation="relu", loss="softmax_cross_entropy",
                epochs=30, batch_size=32, clip_norm="5", seed=0, dtype="float32",
                val_fraction=0.1, test_fraction=0.2, lr_schedule="cosine", scale="auto",
                optimizer="sgd", momentum=0.0, betas="0.9,0.999", eps=1e-8, accumulate=1,
                warmup=0, lr_gamma=0.1, power_t=0.5)
# Learning rates when --lr is not given: SGD's reaches the accuracy above; Adam's is PyTorch's.
DEFAULT_LR = {"sgd": 0.2, "adam": 1e-3, "adamw": 1e-3}


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


# -- option types (argparse reports their ValueErrors as "invalid <name> value") -------------


def _int_type(name, low, high=None):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f"from {low} to {high}" if high is not None else f"{low} or more"
            raise argparse.ArgumentTypeError(f"expected an integer {bounds}, got {value}")
        return value
    parse.__name__ = name
    return parse


def _float_type(name, low, high, low_open=True, high_open=True):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        ok = math.isfinite(value) and (value > low if low_open else value >= low) \
            and (high is None or (value < high if high_open else value <= high))
        if not ok:
            lo = f"{'>' if low_open else '>='} {low:g}"
            hi = "" if high is None else f" and {'<' if high_open else '<='} {high:g}"
            raise argparse.ArgumentTypeError(f"expected a number {lo}{hi}, got {text!r}")
        return value
    parse.__name__ = name
    return parse


def _layers(text):
    text = text.strip()
    if text in ("", "none", "0"):
        return []
    widths = []
    for part in text.split(","):
        try:
            width = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected hidden-layer widths separated by commas, like 256,128; got "
                f"{text!r}") from None
        if not 1 <= width <= 1_000_000:
            raise argparse.ArgumentTypeError(f"every width must be from 1 to 1000000, got "
                                             f"{width}")
        widths.append(width)
    return widths


def _activations(text):
    names = [s.strip() for s in text.split(",")]
    for name in names:
        if name not in ACTIVATIONS:
            raise argparse.ArgumentTypeError(f"unknown activation {name!r}; expected one of "
                                             f"{', '.join(ACTIVATIONS)} (or one per hidden "
                                             "layer, separated by commas)")
    return names


def _betas(text):
    parse = _float_type("beta", 0, 1, low_open=False)
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected two numbers like 0.9,0.999, got {text!r}")
    return tuple(parse(part) for part in parts)


def _clip(text):
    if text.strip().lower() in ("none", "off", "0"):
        return None
    return _float_type("clip", 0, None)(text)


_layers.__name__ = "layers"
_betas.__name__ = "betas"
_activations.__name__ = "activation"


def build_parser():
    parser = _Parser(prog="fastbp", description="Train multilayer perceptrons on the CPU with "
                     "fastbp's compiled kernels.")
    parser.add_argument("--version", action="version", version=f"fastbp {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    train = commands.add_parser(
        "train", help="train an MLP classifier and report its test accuracy",
        description="Train an MLP classifier with mini-batch SGD, Adam or AdamW and report its "
        "test accuracy. "
        "Without options: the UCI digits shipped with fastbp, one hidden layer of 128 ReLU "
        "units, 30 epochs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = DEFAULTS
    data = train.add_argument_group("data")
    data.add_argument("--data", default=d["data"], metavar="NAME|PATH",
                      help="digits (shipped), mnist, fashion-mnist, or a .npz (arrays X, y, "
                      "optionally X_test, y_test) or .csv file")
    data.add_argument("--data-dir", metavar="DIR",
                      help="read the mnist/fashion-mnist IDX files from DIR only (no download); "
                      "without it they are downloaded once into a cache folder and verified")
    data.add_argument("--label-column", type=int, default=-1, metavar="N",
                      help="CSV column holding the label (0 = first, -1 = last)")
    data.add_argument("--val-fraction", type=_float_type("fraction", 0, 1, low_open=False),
                      default=d["val_fraction"], metavar="F",
                      help="share of the training rows held out for validation (0: none)")
    data.add_argument("--test-fraction", type=_float_type("fraction", 0, 1),
                      default=d["test_fraction"], metavar="F",
                      help="share of the rows held out for testing, for data without a test "
                      "set of its own (the digits, files without X_test)")
    data.add_argument("--scale", choices=SCALINGS, default=d["scale"],
                      help="feature scaling: auto = pixels/255 for mnist and fashion-mnist, "
                      "standardised (training rows' mean and deviation) otherwise")
    model = train.add_argument_group("model")
    model.add_argument("--layers", type=_layers, default=d["layers"], metavar="W1,W2,...",
                       help="hidden-layer widths ('none' for no hidden layer)")
    model.add_argument("--activation", type=_activations, default=d["activation"],
                       metavar="NAME", help=f"hidden activation: {', '.join(ACTIVATIONS)}; or "
                       "one per hidden layer, comma-separated")
    model.add_argument("--loss", choices=LOSSES, default=d["loss"],
                       help="mse trains on one-hot targets with a linear output layer, "
                       "binary_cross_entropy on one-hot targets with a sigmoid per class "
                       "(one-vs-rest; the class predicted is the largest logit)")
    model.add_argument("--dtype", choices=("float32", "float64"), default=d["dtype"])
    optim = train.add_argument_group("training")
    optim.add_argument("--epochs", type=_int_type("epochs", 1), default=d["epochs"], metavar="N")
    optim.add_argument("--batch-size", type=_int_type("batch size", 1), default=d["batch_size"],
                       metavar="N")
    optim.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default=d["optimizer"])
    optim.add_argument("--lr", type=_float_type("learning rate", 0, None),
                       help="learning rate (the initial one, with a schedule); default: "
                       + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items()))
    optim.add_argument("--momentum", type=_float_type("momentum", 0, None, low_open=False),
                       default=d["momentum"], help="SGD momentum")
    optim.add_argument("--nesterov", action="store_true", help="SGD: Nesterov momentum")
    optim.add_argument("--weight-decay", type=_float_type("weight decay", 0, None,
                                                          low_open=False), metavar="WD",
                       help="L2 penalty (sgd, adam) or decoupled decay (adamw); default: 0, "
                       "adamw 0.01")
    optim.add_argument("--betas", type=_betas, default=d["betas"], metavar="B1,B2",
                       help="Adam's moment decay rates")
    optim.add_argument("--eps", type=_float_type("eps", 0, None), default=d["eps"],
                       help="Adam's term added to the denominator")
    optim.add_argument("--amsgrad", action="store_true", help="Adam: the AMSGrad variant")
    optim.add_argument("--lr-schedule", choices=tuple(SCHEDULES), default=d["lr_schedule"],
                       help="per epoch: cosine falls from --lr towards 0 along a half cosine "
                       "(after --warmup epochs of linear rise); step multiplies it by "
                       "--lr-gamma every --lr-step epochs; invscaling divides it by (samples "
                       "seen + 1) ** --power-t; adaptive divides it by 5 after more than 10 "
                       "epochs in a row without the validation (else training) loss improving")
    optim.add_argument("--warmup", type=_int_type("warmup", 0), default=d["warmup"],
                       metavar="N", help="cosine: epochs of linear warm-up")
    optim.add_argument("--lr-step", type=_int_type("lr step", 1), metavar="N",
                       help="step: epochs between decays (default: a third of --epochs)")
    optim.add_argument("--lr-gamma", type=_float_type("lr gamma", 0, 1, high_open=False),
                       default=d["lr_gamma"], metavar="G", help="step: decay factor")
    optim.add_argument("--power-t", type=_float_type("power_t", 0, None, low_open=False),
                       default=d["power_t"], metavar="P", help="invscaling: exponent")
    optim.add_argument("--accumulate", type=_int_type("accumulate", 1), default=d["accumulate"],
                       metavar="K", help="each update uses the gradient of K batches together "
                       "(their mean over all their rows: an effective batch of K x --batch-size "
                       "rows, with the memory of one batch)")
    optim.add_argument("--clip-norm", type=_clip, default=d["clip_norm"], metavar="X",
                       help="clip the global gradient norm to X ('none' to disable)")
    optim.add_argument("--early-stopping", type=_int_type("patience", 1), metavar="N",
                       help="stop when the validation loss has not improved for N epochs, and "
                       "keep the best epoch's weights")
    optim.add_argument("--seed", type=_int_type("seed", 0, 2 ** 63 - 1), default=d["seed"],
                       help="seed of the initialisation, the validation split and the batch "
                       "order")
    optim.add_argument("--threads", type=_int_type("threads", 1), metavar="N",
                       help="threads for the kernels (default: all cores)")
    optim.add_argument("--resume", metavar="PATH",
                       help="continue the run saved in PATH (by --save, also after Ctrl-C): its "
                       "model, optimizer state, schedule and position, to the run's planned "
                       "--epochs (or a given larger total); bitwise the uninterrupted run")
    out = train.add_argument_group("output")
    out.add_argument("--save", metavar="PATH", help="write the trained model and its optimizer "
                     "state (.npz) to PATH")
    out.add_argument("--plot", metavar="PATH", help="write training curves and per-layer "
                     "gradient norms to PATH (.png, .pdf, .svg; needs matplotlib)")
    out.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    out.add_argument("--json", action="store_true",
                     help="print a machine-readable summary (JSON) on stdout; the other lines "
                     "go to stderr")
    parser.train_parser = train
    return parser


def _given_options(argv):
    """The dests of the options argv gives explicitly (a default is not given)."""
    unset = object()
    probe = build_parser()
    probe.train_parser.set_defaults(**{action.dest: unset for action in
                                       probe.train_parser._actions if action.dest != "help"})
    return {dest for dest, value in vars(probe.parse_args(argv)).items() if value is not unset}


# What --resume takes from the file, and the settings of the run that it must continue alike.
MODEL_OPTIONS = ("layers", "activation", "loss", "dtype", "optimizer", "lr", "momentum",
                 "nesterov", "weight_decay", "betas", "eps", "amsgrad", "lr_schedule", "warmup",
                 "lr_step", "lr_gamma", "power_t", "clip_norm")
RUN_OPTIONS = ("data", "label_column", "val_fraction", "test_fraction", "scale", "seed",
               "batch_size", "accumulate")


def _flag(dest):
    return "--" + dest.replace("_", "-")


def _check_resume(args):
    """--resume continues a run: the model and optimizer come from the file, and the data and
    batches must be the run's (as saved with it) for the continuation to be that run's."""
    given = [_flag(dest) for dest in MODEL_OPTIONS if dest in getattr(args, "given", ())]
    if given:
        raise UsageError(f"fastbp train: --resume takes the model and the optimizer from "
                         f"{args.resume}; drop {', '.join(given)}")
    try:
        run = read_metadata(args.resume).get("run")
    except ModelFileError as exc:
        raise UsageError(f"fastbp train: --resume: {exc}") from None
    args.resume_run = run if isinstance(run, dict) else {}
    if not isinstance(run, dict):
        return  # saved by fastbp.save from Python: nothing to compare
    if run.get("stop_reason") == "early_stopping":
        raise UsageError(f"fastbp train: --resume {args.resume}: that run ended by early "
                         "stopping and holds its best epoch's weights: nothing to continue")
    planned = run.get("epochs")
    if "epochs" not in getattr(args, "given", ()) and isinstance(planned, int):
        args.epochs = planned
    elif run.get("schedule") == "cosine" and planned != args.epochs:
        raise UsageError(f"fastbp train: --resume {args.resume}: its cosine schedule spans "
                         f"{planned} epochs; resume with --epochs {planned} (or without "
                         "--epochs)")
    differ = [f"{_flag(dest)} {getattr(args, dest)} (the run's: {run[dest]})"
              for dest in RUN_OPTIONS if dest in run and run[dest] != getattr(args, dest)]
    if differ:
        raise UsageError(f"fastbp train: --resume {args.resume}: give the settings of the run "
                         f"it continues: {'; '.join(differ)}")


# -- checks that must pass before any work is done ----------------------------------------


def _check_output_path(option, path):
    folder = os.path.dirname(os.path.abspath(path))
    where = f"fastbp train: {option} {path}"
    if not path.strip():
        raise UsageError(f"fastbp train: {option}: the file name is empty")
    if path.endswith(os.sep) or (os.altsep and path.endswith(os.altsep)):
        raise UsageError(f"{where}: names a folder; give a file name")
    if os.path.isdir(path):
        raise UsageError(f"{where}: is a folder; give a file name")
    if not os.path.isdir(folder):
        raise UsageError(f"{where}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{where}: the folder {folder} is not writable")


def _check_args(args):
    if args.command != "train":
        raise UsageError("fastbp: expected a command, e.g. 'fastbp train' (see fastbp --help)")
    import numba
    limit = numba.config.NUMBA_NUM_THREADS
    if args.threads is not None and args.threads > limit:
        raise UsageError(f"fastbp train: --threads {args.threads}: at most {limit} on this "
                         "machine")
    if args.early_stopping is not None and args.val_fraction == 0:
        raise UsageError("fastbp train: --early-stopping needs validation rows; set "
                         "--val-fraction above 0")
    n_hidden = len(args.layers)
    if len(args.activation) not in (1, n_hidden) or (len(args.activation) > 1 and n_hidden == 0):
        raise UsageError(f"fastbp train: --activation: {len(args.activation)} names for "
                         f"{n_hidden} hidden layers; give one, or one per hidden layer")
    if args.data_dir is not None and args.data not in NAMED:
        raise UsageError(f"fastbp train: --data-dir applies to {' and '.join(NAMED)} only, "
                         f"not to --data {args.data}")
    if args.data_dir is not None and not os.path.isdir(args.data_dir):
        raise UsageError(f"fastbp train: --data-dir {args.data_dir}: no such folder")
    if args.nesterov and (args.optimizer != "sgd" or args.momentum == 0):
        raise UsageError("fastbp train: --nesterov needs --optimizer sgd and a --momentum")
    if args.optimizer != "sgd" and args.momentum != 0:
        raise UsageError(f"fastbp train: --momentum applies to --optimizer sgd, not "
                         f"{args.optimizer}")
    given = getattr(args, "given", set())
    for dests, applies, to in ((("amsgrad", "betas", "eps"), args.optimizer != "sgd",
                                "--optimizer adam or adamw"),
                               (("lr_step", "lr_gamma"), args.lr_schedule == "step",
                                "--lr-schedule step"),
                               (("power_t",), args.lr_schedule == "invscaling",
                                "--lr-schedule invscaling")):
        for dest in dests:
            if not applies and (dest in given if dest != "amsgrad" else args.amsgrad):
                raise UsageError(f"fastbp train: {_flag(dest)} applies to {to}")
    if args.warmup and args.lr_schedule != "cosine":
        raise UsageError("fastbp train: --warmup applies to --lr-schedule cosine")
    if args.warmup >= args.epochs and args.lr_schedule == "cosine":
        raise UsageError(f"fastbp train: --warmup {args.warmup} leaves no epoch of the "
                         f"{args.epochs} for the cosine")
    if args.resume is not None:
        if not os.path.isfile(args.resume):
            what = "is a folder" if os.path.isdir(args.resume) else "no such file"
            raise UsageError(f"fastbp train: --resume {args.resume}: {what}")
        _check_resume(args)
    if args.save is not None:
        _check_output_path("--save", args.save)
    if args.plot is not None:
        _check_output_path("--plot", args.plot)
        if args.save is not None and os.path.abspath(args.save) == os.path.abspath(args.plot):
            raise UsageError(f"fastbp train: --save and --plot name the same file "
                             f"({args.plot}); one would overwrite the other")
        try:
            from .plotting import require_matplotlib
            Figure = require_matplotlib()
        except ImportError as exc:
            raise UsageError(f"fastbp train: --plot: {exc}") from None
        suffix = os.path.splitext(args.plot)[1].lstrip(".").lower()
        supported = Figure().canvas.get_supported_filetypes()
        if suffix not in supported:
            raise UsageError(f"fastbp train: --plot {args.plot}: unsupported file type "
                             f"{suffix!r}; use one of {', '.join(sorted(supported))}")


# -- output -------------------------------------------------------------------------------


class _Printer:
    """Human-readable lines: stdout normally, stderr with --json, nothing with --quiet."""

    def __init__(self, quiet, to_stderr, silent=False):
        self.quiet, self.silent = quiet, silent
        self.stream = sys.stderr if to_stderr else sys.stdout

    def __call__(self, line="", force=False):
        if (force or not self.quiet) and not self.silent:
            print(line, file=self.stream, flush=True)


class _EpochReport:
    """Callback: one line per epoch."""

    def __init__(self, say, epochs, first_epoch=0):
        self.say, self.width = say, len(str(epochs))
        self.epochs, self.first_epoch = epochs, first_epoch

    def on_epoch_end(self, epoch, history, model):
        parts = [f"epoch {self.first_epoch + epoch + 1:>{self.width}}/{self.epochs}",
                 f"loss {history['loss'][-1]:.4f}"]
        if "accuracy" in history:
            parts.append(f"train {100 * history['accuracy'][-1]:6.2f}%")
        if "val_accuracy" in history:
            parts.append(f"val {100 * history['val_accuracy'][-1]:6.2f}%")
        if "val_loss" in history:
            parts.append(f"val loss {history['val_loss'][-1]:.4f}")
        parts.append(f"{history['samples_per_s'][-1]:>9,.0f} samples/s")
        self.say("  ".join(parts))


def _schedule(args):
    name = args.lr_schedule
    if name == "cosine":
        return Cosine(args.epochs, warmup=args.warmup)
    if name == "step":
        return Step(args.lr_step or max(1, args.epochs // 3), args.lr_gamma)
    if name == "invscaling":
        return InvScaling(args.power_t)
    if name == "adaptive":
        return Adaptive()
    return Constant()


def _new_model(args, sizes):
    """The model and optimizer the options describe."""
    activation = args.activation[0] if len(args.activation) == 1 else args.activation
    model = MLP(sizes, activation=activation, loss=args.loss, dtype=np.dtype(args.dtype).type,
                seed=args.seed)
    options = dict(lr=DEFAULT_LR[args.optimizer] if args.lr is None else args.lr,
                   clip_norm=args.clip_norm, lr_schedule=_schedule(args))
    if args.weight_decay is not None:
        options["weight_decay"] = args.weight_decay
    if args.optimizer == "sgd":
        options.update(momentum=args.momentum, nesterov=args.nesterov)
    else:
        options.update(betas=args.betas, eps=args.eps, amsgrad=args.amsgrad)
    return model, OPTIMIZERS[args.optimizer](model, **options)


def _resumed_model(args):
    """The model and optimizer saved in --resume."""
    try:
        return load_checkpoint(args.resume)
    except ModelFileError as exc:
        raise UsageError(f"fastbp train: --resume: {exc}") from None


def _check_resumed_model(args, ds, model, optimizer):
    if model.sizes[0] != ds.n_features or model.sizes[-1] != ds.n_classes:
        raise UsageError(f"fastbp train: --resume {args.resume}: the model takes "
                         f"{model.sizes[0]} features and {model.sizes[-1]} classes; the data "
                         f"has {ds.n_features} and {ds.n_classes}")
    if optimizer.epochs_done >= args.epochs:
        raise UsageError(f"fastbp train: --resume {args.resume}: {optimizer.epochs_done} "
                         f"epochs done already; --epochs is the total, so raise it above that")


def _run_record(args, optimizer, history, n_train, first_epoch, first_step, steps):
    """What --resume needs to continue this run: its data and batch settings, its planned
    epochs, how it stopped, and how many steps into an unfinished epoch it got."""
    batch = min(args.batch_size, n_train)
    per_epoch = -(-n_train // (batch * min(args.accumulate, -(-n_train // batch))))
    position = first_epoch * per_epoch + first_step + steps
    return {**{dest: getattr(args, dest) for dest in RUN_OPTIONS}, "epochs": args.epochs,
            "schedule": getattr(optimizer.lr_schedule, "name", "constant"),
            "stop_reason": history.stop_reason,
            "epoch_steps": position - optimizer.epochs_done * per_epoch}


def _describe(optimizer):
    clip = "off" if optimizer.clip_norm is None else f"{optimizer.clip_norm:g}"
    schedule = optimizer.lr_schedule.name if optimizer.lr_schedule else "constant"
    extra = ""
    if optimizer.name == "sgd" and optimizer.momentum:
        extra = f", momentum {optimizer.momentum:g}" + (" (Nesterov)" if optimizer.nesterov
                                                       else "")
    elif optimizer.name != "sgd":
        extra = f", betas {optimizer.betas[0]:g},{optimizer.betas[1]:g}" + (
            " (AMSGrad)" if optimizer.amsgrad else "")
    if optimizer.weight_decay:
        extra += f", weight decay {optimizer.weight_decay:g}"
    return (f"{type(optimizer).__name__} lr {optimizer.base_lr:g} ({schedule}){extra}, clip "
            f"norm {clip}")


def _warm_up(model, optimizer, X_example, y_example, batch_size, ranks=None):
    """Compile (or load from Numba's cache) every kernel that training this model at this batch
    size will run (its activations, its loss, an input split if a layer can split), so that
    epoch timings measure training only: the compiled epoch over no rows (nothing changes), or
    under MPI the data-parallel step's kernels, and inference on one row. Not through fit
    (which ends training cleanly on Ctrl-C), so that Ctrl-C stops it at once. Under MPI, one
    rank per node goes first and the others then load what it compiled from the cache."""
    X, y = model._check_batch(X_example[:1], y_example[:1])
    if ranks is not None:
        def ready():
            model._reserve(batch_size)
            ready_step_on_ranks(model, optimizer, X, y)
            model.forward(X)
        ranks.node_leader_first(ready)
        return
    x_batch = kernels.aligned_zeros((batch_size, X.shape[1]), model.dtype)
    y_batch = np.empty((batch_size,) + y.shape[1:], dtype=y.dtype)
    norms_fresh = model._grad_norms_fresh
    _train_steps(model, optimizer.update_spec(), X, y, np.arange(0), batch_size, x_batch,
                 y_batch, np.empty(1), np.empty(1), np.empty((1, len(model.sizes) - 1)))
    model._grad_norms_fresh = norms_fresh
    model.forward(X)


def _kernels_cached():
    """Whether Numba's cache already holds fit's compiled steps (else this run compiles)."""
    try:
        folder = kernels.entry.train_epoch._cache._cache_path
        return any(name.startswith("entry.train_epoch") for name in os.listdir(folder))
    except (AttributeError, OSError):
        return True  # unknown: say nothing


def _one_hot(labels, n_classes, dtype):
    out = np.zeros((labels.shape[0], n_classes), dtype=dtype)
    out[np.arange(labels.shape[0]), labels] = 1
    return out


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__}")


# -- the command --------------------------------------------------------------------------


def train(args, ranks=None):
    """The command, on one process or (ranks: distributed.Ranks) on each of an MPI job's."""
    t_start = time.perf_counter()
    lead = ranks is None or ranks.rank == 0
    say = _Printer(args.quiet, to_stderr=args.json, silent=not lead)
    if args.threads is not None:
        set_num_threads(args.threads)
    elif ranks is not None:
        set_num_threads(distributed.node_threads(ranks.comm))
    with _together(ranks):
        ds, model, optimizer, sizes = _data_and_model(args, say)
    t_data = time.perf_counter() - t_start

    dtype = model.dtype
    if model.loss != "softmax_cross_entropy":   # mse, binary_cross_entropy
        targets = [_one_hot(y, ds.n_classes, dtype) for y in (ds.y_train, ds.y_val, ds.y_test)]
    else:
        targets = [ds.y_train, ds.y_val, ds.y_test]
    y_train, y_val, y_test = targets

    import numba
    threads = numba.get_num_threads()
    say(f"data   {ds.summary()}; {ds.scaling}")
    hidden = ("hidden " + "/".join(model.activations)) if model.activations else "no hidden layer"
    say(f"model  {'-'.join(map(str, sizes))} ({hidden}), {model.loss}, "
        f"{np.dtype(model.dtype).name}, {model.n_params:,} parameters"
        + (f"; resumed from {args.resume}" if args.resume else ""))
    first_epoch = optimizer.epochs_done
    first_step = getattr(args, "resume_run", {}).get("epoch_steps", 0) if args.resume else 0
    steps_before = optimizer.steps
    epochs = args.epochs - first_epoch
    accumulate = f" x {args.accumulate} accumulated" if args.accumulate > 1 else ""
    say(f"train  {_describe(optimizer)}, batch {args.batch_size}{accumulate}, "
        + (f"epochs {first_epoch + 1}-{args.epochs}" if first_epoch else f"{epochs} epochs")
        + f", seed {args.seed}, {threads} threads")

    t0 = time.perf_counter()
    if not _kernels_cached():
        say("compiling kernels, first run only (later runs load them from Numba's cache)...")
    _warm_up(model, optimizer, ds.X_train, y_train, min(args.batch_size, len(y_train)), ranks)
    t_compile = time.perf_counter() - t0
    say(f"kernels ready in {t_compile:.1f} s (compiled, or loaded from Numba's cache)")

    callbacks = [_EpochReport(say, args.epochs, first_epoch)]
    validation = (ds.X_val, y_val) if len(ds.y_val) else None
    t0 = time.perf_counter()
    try:
        with _together(ranks):
            history = fit(model, ds.X_train, y_train, optimizer, epochs=epochs,
                          batch_size=args.batch_size, seed=args.seed,
                          validation_data=validation, early_stopping=args.early_stopping,
                          callbacks=callbacks, progress=not args.quiet and _have_tqdm(),
                          accumulate=args.accumulate, initial_epoch=first_epoch,
                          initial_step=first_step, comm=ranks and ranks.comm)
    except DivergenceError as exc:   # (on every rank alike)
        if lead:
            print(f"fastbp train: {exc}; try a lower --lr or a --clip-norm", file=sys.stderr)
        return EXIT_FAILED
    t_train = time.perf_counter() - t0
    if not lead:   # rank 0 reports and writes the files
        return EXIT_INTERRUPTED if history.interrupted else 0

    epochs_run = history.n_epochs
    _report_stop(say, args, history)
    # From here on the trained weights must not be lost: a Ctrl-C skips what is left to do but
    # the save, which it cannot interrupt.
    interrupted = history.interrupted
    try:
        n_correct = _n_correct(model, ds)
    except KeyboardInterrupt:
        interrupted, n_correct = True, None
        say("interrupted: the test rows were not scored", force=True)
    test_accuracy = None if n_correct is None else n_correct / len(ds.y_test)
    samples = sum(s * t for s, t in zip(history["samples_per_s"], history["seconds"]))
    steps_time = sum(history["seconds"])
    throughput = samples / steps_time if steps_time > 0 else 0.0

    saved = plotted = None
    if args.save is not None:
        metadata = {"data": ds.name, "class_names": list(ds.class_names),
                    "scaling": ds.scaling, "offset": ds.offset.tolist(),
                    "scale": ds.scale.tolist(), "image_shape": ds.image_shape,
                    "test_accuracy": test_accuracy, "epochs": first_epoch + epochs_run,
                    "interrupted": history.interrupted, "fastbp_version": __version__,
                    "run": _run_record(args, optimizer, history, len(y_train),
                                       first_epoch, first_step, optimizer.steps - steps_before)}
        with _HeldInterrupt() as held:
            try:
                saved = save_model(model, args.save, metadata=metadata, optimizer=optimizer)
            except OSError as exc:
                print(f"fastbp train: cannot write {args.save}: {exc.strerror or exc}",
                      file=sys.stderr)
                return EXIT_INTERRUPTED if interrupted or held.received else EXIT_FAILED
        interrupted = interrupted or held.received
    if args.plot is not None and epochs_run > 0 and interrupted == history.interrupted:
        try:
            plotted = _plot(args, ds, sizes, history)
        except KeyboardInterrupt:
            interrupted = True
            say("interrupted: no curves written", force=True)
        except OSError as exc:
            print(f"fastbp train: cannot write {args.plot}: {exc.strerror or exc}",
                  file=sys.stderr)
            return EXIT_INTERRUPTED if interrupted else EXIT_FAILED
    t_total = time.perf_counter() - t_start

    if args.json:
        summary = {
            "data": ds.name, "sizes": sizes, "activations": model.activations,
            "loss": model.loss, "dtype": np.dtype(model.dtype).name,
            "n_params": model.n_params, "optimizer": {"name": optimizer.name,
                                                      **optimizer.config()},
            "lr": optimizer.base_lr, "lr_schedule": (optimizer.lr_schedule.name
                                                     if optimizer.lr_schedule else "constant"),
            "clip_norm": optimizer.clip_norm, "resumed_from": args.resume,
            "first_epoch": first_epoch + 1, "accumulate": args.accumulate,
            "batch_size": args.batch_size, "seed": args.seed, "threads": threads,
            "rows": {"train": len(ds.y_train), "validation": len(ds.y_val),
                     "test": len(ds.y_test)},
            "epochs_run": epochs_run, "stop_reason": history.stop_reason,
            "best_epoch": None if history.best_epoch is None else history.best_epoch + 1,
            "test_accuracy": test_accuracy, "test_correct": n_correct,
            "seconds": {"total": t_total, "data": t_data, "compile": t_compile,
                        "training": t_train},
            "samples_per_s": throughput, "saved": saved, "plot": plotted,
            "history": {k: list(v) for k, v in history.items()},
        }
        print(json.dumps(summary, default=_json_default))
    else:
        if n_correct is not None:
            say(f"test accuracy {100 * test_accuracy:.2f}% ({n_correct}/{len(ds.y_test)})",
                force=True)
        say(f"time {t_total:.2f} s in all (data {t_data:.2f} s, kernels {t_compile:.2f} s, "
            f"training {t_train:.2f} s); {throughput:,.0f} samples/s over {epochs_run} "
            "epochs", force=True)
        if saved:
            say(f"model saved to {saved}", force=True)
        if plotted:
            say(f"curves written to {plotted}", force=True)
    return EXIT_INTERRUPTED if interrupted else 0


def _data_and_model(args, say):
    """The data set, and the model and optimizer (new, or those of --resume), with its
    sizes."""
    resumed = _resumed_model(args) if args.resume is not None else None
    dtype_name = np.dtype(resumed[0].dtype).name if resumed else args.dtype
    try:
        ds = load_data(args.data, data_dir=args.data_dir, val_fraction=args.val_fraction,
                       test_fraction=args.test_fraction, seed=args.seed,
                       label_column=args.label_column, dtype=dtype_name,
                       scaling=args.scale, log=say)
    except DataError as exc:
        raise UsageError(f"fastbp train: {exc}") from None
    except ValueError as exc:  # arguments that only the loader can judge
        raise UsageError(f"fastbp train: {exc}") from None
    if args.early_stopping is not None and len(ds.y_val) == 0:
        raise UsageError("fastbp train: --early-stopping: the validation split is empty; "
                         "raise --val-fraction")
    sizes = [ds.n_features] + args.layers + [ds.n_classes]
    try:
        if resumed:
            model, optimizer = resumed
            _check_resumed_model(args, ds, model, optimizer)
            sizes = list(model.sizes)
        else:
            model, optimizer = _new_model(args, sizes)
    except MemoryError:
        raise UsageError(f"fastbp train: not enough memory for a model of sizes {sizes}") \
            from None
    except (TypeError, ValueError) as exc:
        raise UsageError(f"fastbp train: {exc}") from None
    return ds, model, optimizer, sizes


@contextlib.contextmanager
def _together(ranks):
    """Under MPI, a refusal on one rank is a refusal on every rank (a UsageError), so that
    none waits for another; alone, nothing."""
    if ranks is None:
        yield
        return
    try:
        with ranks.agreed_errors():
            yield
    except distributed.RankMismatchError as exc:
        raise UsageError(f"fastbp train: {exc}") from None


def _mpi_ranks():
    """distributed.Ranks of MPI's world when mpiexec started this process among several,
    else None."""
    n = distributed.launched_ranks()
    if n <= 1:
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        raise UsageError(f"fastbp train: started by mpiexec as one of {n} processes, but "
                         "mpi4py is not installed (pip install 'fastbp[mpi]')") from None
    return distributed.Ranks(MPI.COMM_WORLD, shard=False)


def _report_stop(say, args, history):
    """A line on why training stopped before its last epoch, or which weights it kept."""
    epochs_run = history.n_epochs
    if history.interrupted:
        say(f"interrupted: {epochs_run} complete epoch(s); the model holds the last good "
            "weights" + (f" (best epoch {history.best_epoch + 1})"
                         if history.best_epoch is not None else ""), force=True)
    elif history.stop_reason == "early_stopping":
        say(f"early stop after epoch {epochs_run}: no validation improvement for "
            f"{args.early_stopping} epochs; weights of epoch {history.best_epoch + 1} restored")
    elif history.best_epoch is not None and history.best_epoch + 1 != epochs_run:
        say(f"weights of the best epoch ({history.best_epoch + 1}) restored")


def _n_correct(model, ds):
    """How many test rows the model classifies right."""
    if model.loss == "softmax_cross_entropy":
        predictions = model.predict(ds.X_test)
    else:   # one output per class: the largest (binary cross-entropy: its logit)
        predictions = model.forward(ds.X_test).argmax(axis=1)
    return int(np.sum(predictions == ds.y_test))


def _plot(args, ds, sizes, history):
    from .plotting import plot_history
    names = [f"layer {i + 1} ({a}\u2192{b})" for i, (a, b) in
             enumerate(zip(sizes[:-1], sizes[1:]))]
    return plot_history(history, args.plot, layer_names=names,
                        title=f"fastbp: {ds.name}, {'-'.join(map(str, sizes))}")


class _HeldInterrupt:
    """Holds Ctrl-C (SIGINT) back until the block ends and records it in ``received``: a save
    must finish, or the trained weights are lost."""

    def __enter__(self):
        self.received = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._hold)
        return self

    def _hold(self, signum, frame):
        self.received = True

    def __exit__(self, *exc_info):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def _have_tqdm():
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv=None):
    """Entry point of the ``fastbp`` command; returns the exit status."""
    parser = build_parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help, --version
            return exc.code if isinstance(exc.code, int) else 0
        args.given = _given_options(argv)
        ranks = _mpi_ranks()
        with _together(ranks):
            _check_args(args)
        return train(args, ranks)
    except UsageError as exc:   # (under MPI, on every rank alike: rank 0 says it)
        if distributed.launched_rank() == 0:
            print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        if distributed.launched_rank() == 0:
            print("fastbp: interrupted; nothing written", file=sys.stderr)
        _end_job(EXIT_INTERRUPTED)
        return EXIT_INTERRUPTED
    except BaseException as exc:   # under MPI: one rank's failure ends the job, not a hang
        if distributed.launched_ranks() > 1 and not isinstance(exc, SystemExit):
            from mpi4py import MPI
            distributed.Ranks(MPI.COMM_WORLD, shard=False).abort(exc)
        raise


def _end_job(status):
    """Under MPI, after an interrupt outside training (where the ranks agree on when to
    stop), end every rank: one may be waiting in an MPI call for this one."""
    if distributed.launched_ranks() > 1 and "mpi4py.MPI" in sys.modules:
        sys.modules["mpi4py.MPI"].COMM_WORLD.Abort(status)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
