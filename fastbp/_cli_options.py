"""The options of ``fastbp train`` and ``fastbp predict``: the parser, its option types and
defaults, and the checks of train's that must pass before any work is done (each failure a
UsageError: one line, exit status 2)."""
import argparse
import inspect
import math
import os

from . import __version__
from .data import NAMED, SCALINGS, TASKS
from .io import DestinationError, ModelFileError, destination, read_metadata
from .kernels import LOSS_KINDS, Bfloat16Unavailable, require_bfloat16
from .model import ACTIVATIONS, LOSSES, MATMUL_PRECISIONS, NORMS
from .optim import OPTIMIZERS
from ._threads import BLAS_CHOICES, WORK_SPLITS
from .schedules import SCHEDULES

# Defaults: chosen so that `fastbp train` (the shipped digits) reaches 97% test accuracy or more
# within seconds, and `--data mnist --layers 256,128 --epochs 5` reaches 97.5% or more.
DEFAULTS = dict(data="digits", layers="128", activation="relu", loss="softmax_cross_entropy",
                epochs=30, batch_size=32, clip_norm="5", seed=0, dtype="float32",
                val_fraction=0.1, test_fraction=0.2, lr_schedule="cosine", scale="auto",
                optimizer="sgd", momentum=0.0, betas="0.9,0.999", eps=1e-8, accumulate=1,
                warmup=0, lr_gamma=0.1, power_t=0.5, alpha=0.99, norm="none", dropout="0",
                task="classification", label_column=-1, class_weight="none",
                matmul_precision="float32")
# Learning rates when --lr is not given: SGD's (its constructor has none) reaches the accuracy
# above; the others' are their constructors' defaults (PyTorch's).
_CHOSEN_LR = {"sgd": 0.2}
DEFAULT_LR = {name: _CHOSEN_LR.get(name, inspect.signature(cls).parameters["lr"].default)
              for name, cls in OPTIMIZERS.items()}


# The losses that take values, not labels: the command trains them on one-hot targets.
_ONE_HOT_LOSSES = [name for name, kind in LOSS_KINDS.items() if kind.targets == "values"]
# The losses whose outputs are the values predicted (not logits): those --task regression takes;
# the first, its default.
REGRESSION_LOSSES = [name for name, kind in LOSS_KINDS.items() if kind.predict == "values"]
# The most epochs a run may plan (--epochs, or a run record that --resume reads): a bound far
# above any real run, so that a typo or an altered file cannot start a run that never ends.
MAX_EPOCHS = 1_000_000


def optimizers_taking(dest):
    """The names of the optimizers whose constructor takes the argument dest: the options
    named after one (--momentum, --eps, ...) apply to those alone."""
    return [name for name, cls in OPTIMIZERS.items() if dest in cls.arguments()]


def _for(dest):
    return "(" + ", ".join(optimizers_taking(dest)) + ")"


def _one_of(names):
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit status 2."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default in its help, but not a default of None: such an option's help says
    what happens without it (a default chosen elsewhere, or none at all)."""

    def _get_help_string(self, action):   # (the hook ArgumentDefaultsHelpFormatter overrides)
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


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


def _norms(text):
    names = [s.strip() for s in text.split(",")]
    for name in names:
        if name not in NORMS + ("none",):
            raise argparse.ArgumentTypeError(f"unknown normalisation {name!r}; expected "
                                             f"{', '.join(NORMS)} or none (or one per hidden "
                                             "layer, separated by commas)")
    return [None if name == "none" else name for name in names]


def _dropouts(text):
    parse = _float_type("dropout", 0, 1, low_open=False)
    try:
        return [parse(part) for part in text.split(",")]
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (a probability, or one per hidden layer, "
                                         "separated by commas)") from None


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


def _label_column(text):
    """An index (negative: from the end) when the text is an integer, else a header name;
    several, comma-separated, as a tuple (the targets of a regression)."""
    if "," in text:
        return tuple(_label_column(item) for item in text.split(","))
    try:
        return int(text)
    except ValueError:
        pass
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a column index or a header name, got ''")
    return text


_label_column.__name__ = "label column"
_layers.__name__ = "layers"
_betas.__name__ = "betas"
_activations.__name__ = "activation"
_norms.__name__ = "norm"
_dropouts.__name__ = "dropout"


def build_parser():
    parser = _Parser(prog="fastbp", description="Train multilayer perceptrons on the CPU with "
                     "fastbp's compiled kernels.")
    parser.add_argument("--version", action="version", version=f"fastbp {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    train = commands.add_parser(
        "train", help="train an MLP classifier (or regressor: --task regression) and report "
        "its test accuracy (R^2, MAE, RMSE)",
        description="Train an MLP classifier with mini-batch " + _one_of(
            [cls.__name__ for cls in OPTIMIZERS.values()]) + " and report its test accuracy. "
        "Without options: the UCI digits shipped with fastbp, one hidden layer of 128 ReLU "
        "units, 30 epochs.",
        formatter_class=_HelpFormatter)
    d = DEFAULTS
    data = train.add_argument_group("data")
    data.add_argument("--data", default=d["data"], metavar="NAME|PATH",
                      help="digits (shipped), mnist, fashion-mnist, or a .npz (arrays X, y, "
                      "optionally X_test, y_test) or .csv file")
    data.add_argument("--data-dir", metavar="DIR",
                      help="read the mnist/fashion-mnist IDX files from DIR only (no download); "
                      "without it they are downloaded once into a cache folder and verified")
    data.add_argument("--label-column", type=_label_column, default=d["label_column"],
                      metavar="NAME|INDEX",
                      help="CSV column holding the label: its name in the header line, or its "
                      "index (0 = first, -1 = last); with --task regression, several, "
                      "comma-separated (price,volume), one target each. A classification label "
                      "column of fractional "
                      "numbers, or with more distinct values than half the rows, is refused as "
                      "most likely not the label")
    data.add_argument("--task", choices=TASKS, default=d["task"],
                      help="regression: the label column holds numbers to predict (a .npz's y "
                      "may hold several columns), standardised for training; the report gives "
                      "R^2, MAE and RMSE in their units")
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
    model.add_argument("--norm", type=_norms, default=d["norm"], metavar="NAME",
                       help=f"normalisation of each hidden layer before its activation: "
                       f"{', '.join(NORMS)} or none; or one per hidden layer, comma-separated "
                       "(batch: every training batch needs 2 rows or more)")
    model.add_argument("--residual", action="store_true",
                       help="hidden layers as wide as their input add it to their output")
    model.add_argument("--dropout", type=_dropouts, default=d["dropout"], metavar="P",
                       help="dropout probability after each hidden activation, in [0, 1), when "
                       "training; or one per hidden layer, comma-separated")
    model.add_argument("--loss", choices=LOSSES, default=d["loss"],
                       help=f"{', '.join(_ONE_HOT_LOSSES)}: trained on one-hot targets, one "
                       "output per class with a linear output layer (one-vs-rest, with a "
                       "loss that holds a sigmoid); the class predicted is the largest output. "
                       f"--task regression takes {_one_of(REGRESSION_LOSSES)}, by default "
                       f"{REGRESSION_LOSSES[0]}")
    model.add_argument("--dtype", choices=("float32", "float64"), default=d["dtype"],
                       help="floating-point type of the parameters and the data")
    model.add_argument("--matmul-precision", choices=MATMUL_PRECISIONS,
                       default=d["matmul_precision"],
                       help="the matrix products' operands: bfloat16 rounds them to bfloat16 "
                       "and sums in float32 on the CPU's bfloat16 units (AMX or AVX512-BF16; "
                       "needs oneDNN or MKL: pip install 'fastbp[bf16]'), with --dtype float32; "
                       "bfloat16-emulated does the same on any CPU, slowly. With --resume: "
                       "the saved model's unless given")
    optim = train.add_argument_group("training")
    optim.add_argument("--epochs", type=_int_type("epochs", 1, MAX_EPOCHS), default=d["epochs"],
                       metavar="N",
                       help="passes over the training rows (the most, with --early-stopping)")
    optim.add_argument("--batch-size", type=_int_type("batch size", 1), default=d["batch_size"],
                       metavar="N", help="rows per training step")
    optim.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default=d["optimizer"],
                       help="the update rule; the options below named after one of its "
                       "arguments set it")
    optim.add_argument("--class-weight", choices=("none", "balanced"),
                       default=d["class_weight"],
                       help="balanced: each training row weighs rows / (classes x rows of its "
                       "class) in the loss (scikit-learn's 'balanced'), so that a rare class "
                       "counts as much as a common one; validation scores stay unweighted")
    optim.add_argument("--lr", type=_float_type("learning rate", 0, None),
                       help="learning rate (the initial one, with a schedule); default: "
                       + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items()))
    # Each of these options sets the constructor argument of its name, and applies to the
    # optimizers that take one (optimizers_taking).
    optim.add_argument("--momentum", type=_float_type("momentum", 0, None, low_open=False),
                       default=d["momentum"], help=f"momentum {_for('momentum')}")
    optim.add_argument("--nesterov", action="store_true",
                       help=f"Nesterov momentum {_for('nesterov')}")
    optim.add_argument("--weight-decay", type=_float_type("weight decay", 0, None,
                                                          low_open=False), metavar="WD",
                       help="L2 penalty added to the gradient, or the decoupled decay of "
                       "adamw; default: the optimizer's own (0; adamw 0.01)")
    optim.add_argument("--betas", type=_betas, default=d["betas"], metavar="B1,B2",
                       help=f"the moments' decay rates {_for('betas')}")
    optim.add_argument("--eps", type=_float_type("eps", 0, None), default=d["eps"],
                       help=f"term added to the denominator {_for('eps')}")
    optim.add_argument("--amsgrad", action="store_true",
                       help=f"the AMSGrad variant {_for('amsgrad')}")
    optim.add_argument("--alpha", type=_float_type("alpha", 0, 1, low_open=False,
                                                   high_open=False),
                       default=d["alpha"], help="decay rate of the squared gradients' average "
                       f"{_for('alpha')}")
    optim.add_argument("--centered", action="store_true",
                       help="divide by the gradients' estimated deviation, not their root mean "
                       f"square {_for('centered')}")
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
                       help="threads for the kernels (default: the cores other processes "
                       "leave free, read before each epoch; under mpiexec, each rank's share "
                       "of its node's cores)")
    optim.add_argument("--work-split", choices=WORK_SPLITS, default="shape",
                       help="how the kernels cut matrix products for the threads: by their "
                       "shape (default: the same results at any thread count) or by the "
                       "thread count (faster on mid-size nets at a few threads; results then "
                       "depend on it)")
    optim.add_argument("--blas", choices=BLAS_CHOICES, default="auto",
                       help="the BLAS build of the float matrix products (fastbp.set_blas): "
                       "openblas (the kernels OpenBLAS picks for the CPU), openblas-avx512 "
                       "(its AVX-512 kernels: about twice as fast on AMD Zen 5, results that "
                       "differ in the last bits) or auto (default: openblas-avx512 where the "
                       "CPU has AVX-512 and OpenBLAS would not use it, else openblas)")
    optim.add_argument("--resume", metavar="PATH",
                       help="continue the run saved in PATH (by --save, also after Ctrl-C): its "
                       "model, optimizer state, schedule and position, to the run's planned "
                       "--epochs (or a given larger total); bitwise the uninterrupted run")
    out = train.add_argument_group("output")
    out.add_argument("--save", metavar="PATH", help="write the trained model and its optimizer "
                     "state (.npz) to PATH")
    out.add_argument("--plot", metavar="PATH", help="write training curves, per-layer "
                     "gradient norms, the test rows' confusion matrix and per-class precision, "
                     "recall and F1 to PATH (.png, .pdf, .svg; needs matplotlib)")
    out.add_argument("--quiet", action="store_true", help="no progress bar, per-epoch lines or "
                     "per-class table")
    out.add_argument("--json", action="store_true",
                     help="print a machine-readable summary (JSON) on stdout; the other lines "
                     "go to stderr")
    parser.train_parser = train
    _add_predict_parser(commands)
    _add_export_parser(commands)
    return parser


def _add_export_parser(commands):
    export = commands.add_parser(
        "export", help="write a model saved by fastbp train --save as ONNX, PyTorch or "
        "safetensors",
        description="Write the model MODEL saved by fastbp train --save in another format. "
        "onnx: the inference graph with the model file's feature scaling, class names and "
        "target scaling (input X: raw rows, float64; outputs label, probabilities or outputs), "
        "for onnxruntime. torch: a torch.export program of the model "
        "(torch.export.load(OUT).module(): scaled features in, outputs (logits) out). "
        "safetensors: PyTorch's tensor names, fastbp's structure in the header "
        "(fastbp.export.load_safetensors). Needs the package of the format (pip install "
        "onnx, torch or safetensors).")
    export.add_argument("model", metavar="MODEL", help="the .npz file fastbp train --save wrote")
    export.add_argument("--to", required=True, choices=("onnx", "torch", "safetensors"),
                        help="the format to write")
    export.add_argument("out", metavar="OUT", help="the file to write (replaced if it exists)")
    export.add_argument("--opset", type=int, metavar="N",
                        help="the ONNX opset (--to onnx; default: 17; GELU as an operator from "
                        "20)")


def _add_predict_parser(commands):
    predict = commands.add_parser(
        "predict", help="predict with a model saved by fastbp train --save",
        description="Predict the rows of DATA with the model MODEL saved by fastbp train "
        "--save: its feature scaling applied, classes named as in training, regression targets "
        "in their own units. Writes CSV (a header line, then a row per row of DATA), or .npy "
        "when FILE ends in .npy.")
    predict.add_argument("model", metavar="MODEL", help="the .npz file fastbp train --save wrote")
    predict.add_argument("data", metavar="DATA", help="a .csv, .csv.gz or .npz file (array X): "
                         "the model's features, in a CSV with or without the label column "
                         "(told apart by the number of columns)")
    predict.add_argument("--proba", action="store_true",
                         help="write each class's probability instead of the class "
                         "(classifiers trained with a cross-entropy loss)")
    predict.add_argument("--out", metavar="FILE",
                         help="write to FILE (.csv, or .npy) instead of stdout")
    predict.add_argument("--matmul-precision", choices=MATMUL_PRECISIONS,
                         help="the matrix products' operands (default: the model's; float32 "
                         "runs a bfloat16 model where the CPU has no bfloat16 unit)")


def given_options(argv):
    """The dests of the options argv gives explicitly (a default is not given)."""
    unset = object()
    probe = build_parser()
    probe.train_parser.set_defaults(**{action.dest: unset for action in
                                       probe.train_parser._actions if action.dest != "help"})
    return {dest for dest, value in vars(probe.parse_args(argv)).items() if value is not unset}


# What --resume takes from the file (the model, and the optimizer: every argument of one), and
# the settings of the run that it must continue alike.
MODEL_OPTIONS = ("layers", "activation", "norm", "residual", "dropout", "loss", "dtype",
                 "optimizer",
                 *dict.fromkeys(name for cls in OPTIMIZERS.values() for name in cls.arguments()),
                 "lr_schedule", "warmup", "lr_step", "lr_gamma", "power_t")
RUN_OPTIONS = ("data", "label_column", "task", "val_fraction", "test_fraction", "scale", "seed",
               "batch_size", "accumulate", "class_weight")


def _flag(dest):
    return "--" + dest.replace("_", "-")


def _check_resume(args):
    """--resume continues a run: the model and optimizer come from the file, and the data and
    batches must be the run's (as saved with it) for the continuation to be that run's."""
    given = [_flag(dest) for dest in MODEL_OPTIONS if dest in getattr(args, "given", ())]
    if given:
        raise UsageError(f"fastbp train: --resume takes the model and the optimizer from "
                         f"{args.resume}; drop {', '.join(given)}")
    try:   # (kept: the data check after loading compares it too)
        args.resume_metadata = read_metadata(args.resume)
    except ModelFileError as exc:
        raise UsageError(f"fastbp train: --resume: {exc}") from None
    run = args.resume_metadata.get("run")
    args.resume_run = run if isinstance(run, dict) else {}
    if not isinstance(run, dict):
        return  # saved by fastbp.save from Python: nothing to compare
    _check_run_counts(args.resume, run)
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
    differ = [f"{_flag(dest)} {getattr(args, dest)} (the run's: {_shown(run[dest])})"
              for dest in RUN_OPTIONS if dest in run and run[dest] != getattr(args, dest)]
    if differ:
        raise UsageError(f"fastbp train: --resume {args.resume}: give the settings of the run "
                         f"it continues: {'; '.join(differ)}")


def _check_matmul_precision(args):
    """--matmul-precision bfloat16 needs float32, and a CPU and a library (oneDNN or MKL) that
    run it: said before the data are read. (With --resume, --dtype is the file's: the model
    checks that.)"""
    if args.matmul_precision == "float32":
        return
    if args.dtype != "float32" and args.resume is None:
        raise UsageError(f"fastbp train: --matmul-precision {args.matmul_precision} is for "
                         f"--dtype float32, not {args.dtype}")
    if args.matmul_precision == "bfloat16":
        try:
            require_bfloat16()
        except Bfloat16Unavailable as exc:
            raise UsageError(f"fastbp train: --matmul-precision bfloat16: {exc}") from None


def _shown(value):
    """A run record's value for a one-line message: as it is when printable, else its repr (a
    file altered by hand may hold line breaks or control characters); at most 40 characters."""
    text = value if isinstance(value, str) and value.isprintable() else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_run_counts(path, run):
    """The run record's numbers that --resume acts on, as --save writes them: a file altered
    by hand must not crash the command, nor make it train for ever."""
    where = f"fastbp train: --resume {path}: its run record"
    for name, low, high in (("epochs", 1, MAX_EPOCHS), ("epoch_steps", 0, None)):
        value = run.get(name, low)
        if isinstance(value, bool) or not isinstance(value, int) or value < low \
                or (high is not None and value > high):
            bounds = f"from {low} to {high}" if high is not None else f"{low} or more"
            raise UsageError(f"{where}: {name} should be an integer {bounds}, got "
                             f"{value!r:.40}; the file was altered")


# -- checks that must pass before any work is done ----------------------------------------


def check_input_file(option, path, command):
    """Refuse an input that is not a regular file (a folder, a fifo, a device), by what it
    is, before reading it."""
    if not os.path.exists(path):
        raise UsageError(f"{command}: {option} {path}: no such file")
    if not os.path.isfile(path):
        what = "a folder" if os.path.isdir(path) else "not a regular file"
        raise UsageError(f"{command}: {option} {path}: is {what}")


def check_output_path(option, path, command="fastbp train"):
    """Refuse an output path that cannot be written, before any work is done (a write that
    would fail after training loses the model)."""
    where = f"{command}: {option} {path}"
    if not path.strip():
        raise UsageError(f"{command}: {option}: the file name is empty")
    if path.endswith(os.sep) or (os.altsep and path.endswith(os.altsep)):
        raise UsageError(f"{where}: names a folder; give a file name")
    if os.path.isdir(path):
        raise UsageError(f"{where}: is a folder; give a file name")
    try:
        folder = os.path.dirname(destination(path))
    except DestinationError as exc:
        raise UsageError(f"{where}: {exc}") from None
    if not os.path.isdir(folder):
        raise UsageError(f"{where}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{where}: the folder {folder} is not writable")


def _check_task(args):
    """--task regression trains on values: a loss whose outputs are the values (the first of
    REGRESSION_LOSSES unless --loss names one)."""
    if args.task != "regression":
        return
    if args.class_weight != "none":
        raise UsageError(f"fastbp train: --class-weight {args.class_weight}: weighs classes; "
                         "--task regression has none")
    if "loss" not in getattr(args, "given", ()):
        args.loss = REGRESSION_LOSSES[0]
    elif args.loss not in REGRESSION_LOSSES:
        raise UsageError(f"fastbp train: --loss {args.loss} is a classification loss; --task "
                         f"regression takes --loss {_one_of(REGRESSION_LOSSES)}")


def check_args(args):
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
    given = getattr(args, "given", set())
    _check_task(args)
    _check_matmul_precision(args)
    n_hidden = len(args.layers)
    for dest, what in (("activation", "names"), ("norm", "names"), ("dropout", "values")):
        values = getattr(args, dest)
        if len(values) not in (1, n_hidden) or (len(values) > 1 and n_hidden == 0):
            raise UsageError(f"fastbp train: {_flag(dest)}: {len(values)} {what} for "
                             f"{n_hidden} hidden layers; give one, or one per hidden layer")
    for dest in ("norm", "dropout", "residual"):
        if n_hidden == 0 and dest in given:
            raise UsageError(f"fastbp train: {_flag(dest)} applies to hidden layers, and "
                             "--layers gives none")
    if args.data_dir is not None and args.data not in NAMED:
        raise UsageError(f"fastbp train: --data-dir applies to {' and '.join(NAMED)} only, "
                         f"not to --data {args.data}")
    if args.data_dir is not None and not os.path.isdir(args.data_dir):
        raise UsageError(f"fastbp train: --data-dir {args.data_dir}: no such folder")
    # (With --resume the optimizer is the file's, and _check_resume refuses these options.)
    for dest in MODEL_OPTIONS if args.resume is None else ():
        takers = optimizers_taking(dest)
        if dest in given and takers and args.optimizer not in takers:
            raise UsageError(f"fastbp train: {_flag(dest)} applies to --optimizer "
                             f"{_one_of(takers)}, not {args.optimizer}")
    if args.nesterov and args.momentum == 0:
        raise UsageError("fastbp train: --nesterov needs a --momentum")
    for dests, applies, to in ((("lr_step", "lr_gamma"), args.lr_schedule == "step",
                                "--lr-schedule step"),
                               (("power_t",), args.lr_schedule == "invscaling",
                                "--lr-schedule invscaling")):
        for dest in dests:
            if not applies and dest in given:
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
        check_output_path("--save", args.save)
    if args.plot is not None:
        check_output_path("--plot", args.plot)
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
