"""The ``fastbp`` command: ``fastbp train`` trains an MLP and reports how it learns;
``fastbp predict`` predicts with a model it saved (see _cli_predict).

Exit status: 0 on success; 2 for bad options or unusable data (one line on stderr, nothing
written); 1 when training diverges or an output file cannot be written; 130 after Ctrl-C
(with ``--save``, the last good weights are written first); 143 after SIGTERM, which stops
the command as Ctrl-C does (a preempted cluster job keeps its last good weights), unless
SIGTERM was ignored when the command started.

Started by ``mpiexec -n N``, the N processes train one model together (fit's ``comm``, see
docs/mpi.md): rank 0 alone prints and writes files; a refusal on any rank is a refusal on all,
and every rank must be given the same options (``--threads`` aside); ``--help`` and
``--version`` are for one process, refused under mpiexec.
"""
import contextlib
import io
import json
import os
import signal
import sys
import threading
import time

import numpy as np

from . import __version__, _environment, distributed, kernels
from ._cli_options import (DEFAULT_LR, RUN_OPTIONS, UsageError, build_parser, check_args,
                           given_options)
from ._environment import HeldInterrupt
from ._threads import (count_chosen, get_blas, load_free, set_blas, set_num_threads,
                       set_work_split)
from ._cli_report import metrics_table
from .metrics import balanced_sample_weight, classification_metrics, regression_metrics
from .data import DataError, LabelColumnError, restore_targets
from .data.prepare import array_digest
from .data import load as load_data
from .io import ModelFileError, load_checkpoint
from .io import save as save_model
from .model import MLP
from .optim import OPTIMIZERS
from .predictor import class_indices
from .schedules import Adaptive, Constant, Cosine, InvScaling, Step
from .training import DivergenceError, fit

EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_TERMINATED = 2, 1, 130, 143

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
    # One value stands for every hidden layer (as the model takes it).
    activation, norm, dropout = (values[0] if len(values) == 1 else values
                                 for values in (args.activation, args.norm, args.dropout))
    model = MLP(sizes, activation=activation, loss=args.loss, dtype=np.dtype(args.dtype).type,
                seed=args.seed, norm=norm, residual=args.residual, dropout=dropout,
                matmul_precision=args.matmul_precision)
    cls = OPTIMIZERS[args.optimizer]
    # Each option named after an argument of the optimizer sets it (None: the default).
    options = {name: getattr(args, name) for name in cls.arguments()
               if getattr(args, name, None) is not None}
    options.update(lr=DEFAULT_LR[args.optimizer] if args.lr is None else args.lr,
                   lr_schedule=_schedule(args))
    return model, cls(model, **options)


def _resumed_model(args):
    """The model and optimizer saved in --resume (in the --matmul-precision given, else the
    saved one)."""
    given = "matmul_precision" in getattr(args, "given", ())
    try:
        return load_checkpoint(args.resume, args.matmul_precision if given else None)
    except (ModelFileError, kernels.Bfloat16Unavailable) as exc:
        raise UsageError(f"fastbp train: --resume: {exc}") from None


def _check_resumed_model(args, ds, model, optimizer):
    if model.sizes[0] != ds.n_features or model.sizes[-1] != ds.n_outputs:
        raise UsageError(f"fastbp train: --resume {args.resume}: the model takes "
                         f"{model.sizes[0]} features and has {model.sizes[-1]} outputs; the "
                         f"data has {ds.n_features} features and {ds.n_outputs} "
                         + ("classes" if ds.task == "classification" else "targets"))
    if optimizer.epochs_done >= args.epochs:
        raise UsageError(f"fastbp train: --resume {args.resume}: {optimizer.epochs_done} "
                         f"epochs done already; --epochs is the total, so raise it above that")
    # (_check_resume saw that it is a count; only the data tells how many steps there are.)
    per_epoch = _steps_per_epoch(args, len(ds.y_train))
    epoch_steps = getattr(args, "resume_run", {}).get("epoch_steps", 0)
    if epoch_steps > per_epoch:
        raise UsageError(f"fastbp train: --resume {args.resume}: its run record says "
                         f"epoch_steps {epoch_steps}, but an epoch of this run has "
                         f"{per_epoch} steps; the file was altered")
    _check_resumed_data(args, ds)


def _check_resumed_data(args, ds):
    """The data must be the saved run's, not only its file name: the training rows must have
    the digest saved with the run, and (files saved before it had one) the scaling fitted on
    them must be the saved one. A file overwritten with other rows fails either."""
    saved = args.resume_metadata
    where = f"fastbp train: --resume {args.resume}: the data {args.data} is not the run's"
    if _saved_rows_digest(saved) not in (None, _rows_digest(ds, saved)):
        raise UsageError(f"{where}: its training rows differ from those the run trained on "
                         "(was the file changed?)")
    for name, now in (("offset", ds.offset), ("scale", ds.scale)):
        then = np.asarray(saved.get(name, now), dtype=np.float64)
        if then.shape != now.shape or not np.allclose(now, then, rtol=1e-9, atol=1e-12):
            raise UsageError(f"{where}: the feature scaling of its training rows ({name}) "
                             "differs from the run's (was the file changed?)")


def _saved_rows_digest(saved):
    """The digest of the training rows a run saved: of the rows as the file gave them
    ("raw_rows_digest"), or, saved before that, of the scaled rows ("train_rows_digest");
    None when the file has neither."""
    return saved.get("raw_rows_digest", saved.get("train_rows_digest"))


def _rows_digest(ds, saved=None):
    """The digest of the training rows and their labels or targets, as the run saves it:
    of the rows as the file gave them (ds.raw_digest: no scaling arithmetic in it, which may
    differ in the last bit between NumPy builds and would refuse a resume); of the scaled rows
    to compare with a run saved before that."""
    if saved is not None and "raw_rows_digest" not in saved:
        return array_digest(ds.X_train, ds.y_train)
    return ds.raw_digest


def _steps_per_epoch(args, n_train):
    """Steps (updates) in an epoch of n_train rows, as fit cuts it."""
    batch = min(args.batch_size, n_train)
    return -(-n_train // (batch * min(args.accumulate, -(-n_train // batch))))


def _end_finished_epoch(optimizer, model, epoch_steps, per_epoch, n_train, watched_rows):
    """Steps into the unfinished epoch, after ending an epoch whose steps have all run.

    A Ctrl-C that lands in an epoch's last compiled chunk stops fit after all the epoch's
    steps but before it ends the epoch (the schedule's step, epochs_done): end it here as fit
    would have, so that a resumed run starts the next epoch at its first step. (Files of older
    fastbp versions hold such an epoch unended, so --resume calls this too.) Only the adaptive
    schedule looks at the epoch's loss: the loss of watched_rows (validation rows, as fit
    watches; without them the training rows at the epoch's end weights, standing in for the
    mean of its steps' losses, which is lost).
    """
    if epoch_steps < per_epoch:
        return epoch_steps
    loss = 0.0
    if callable(getattr(optimizer.lr_schedule, "observe", None)):
        _, losses = model.forward_and_losses(*watched_rows)
        loss = float(losses.sum()) / len(losses)
    optimizer.end_epoch(n_train, loss)
    return 0


def _run_record(args, optimizer, history, per_epoch, position):
    """What --resume needs to continue this run: its data and batch settings, its planned
    epochs, how it stopped, and how many steps into an unfinished epoch it got (position:
    the steps of the whole run)."""
    return {**{dest: getattr(args, dest) for dest in RUN_OPTIONS}, "epochs": args.epochs,
            "schedule": getattr(optimizer.lr_schedule, "name", "constant"),
            "stop_reason": history.stop_reason,
            "epoch_steps": position - optimizer.epochs_done * per_epoch}


def _describe(optimizer):
    clip = "off" if optimizer.clip_norm is None else f"{optimizer.clip_norm:g}"
    schedule = optimizer.lr_schedule.name if optimizer.lr_schedule else "constant"
    extra = ""
    for name, value in optimizer.config().items():   # its hyper-parameters that are on
        if name in ("lr", "clip_norm") or value is False or value == 0:
            continue
        extra += f", {name.replace('_', ' ')}" + ("" if value is True else " " + (
            ",".join(f"{v:g}" for v in value) if isinstance(value, tuple) else f"{value:g}"))
    return (f"{type(optimizer).__name__} lr {optimizer.base_lr:g} ({schedule}){extra}, clip "
            f"norm {clip}")


def _warm_up(model, optimizer, X_example, y_example, batch_size, accumulate=1, ranks=None,
             weighted=False):
    """Compile (or load from Numba's cache) every kernel that training this model at this batch
    size will run (its activations, its loss, an input split if a layer can split), so that
    epoch timings measure training only: the compiled epoch over no rows (nothing changes), or
    under MPI the data-parallel step's kernels, and inference on one row (outputs alone, and
    outputs with the rows' losses, as fit scores). Not through fit
    (which ends training cleanly on Ctrl-C), so that Ctrl-C stops it at once. Under MPI, one
    rank per node goes first and the others then load what it compiled from the cache."""
    engine = model.engine
    X, y = engine.check_batch(X_example[:1], y_example[:1])
    if ranks is not None:
        def ready():
            engine.ready_steps(optimizer.update_spec(), X, y, batch_size, accumulate, weighted)
            model.forward_and_losses(X, y)   # fit scores its rows with this
            model.forward(X)
        ranks.node_leader_first(ready)
        return
    engine.ready_epoch(optimizer.update_spec(), X, y, batch_size, weighted)
    model.forward_and_losses(X, y)   # fit scores its rows with this
    model.forward(X)


def _kernels_cached():
    """Whether Numba's cache already holds fit's compiled steps (else this run compiles)."""
    return kernels.entry.in_cache(kernels.entry.train_epoch)


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
    share = None if ranks is None else distributed.node_threads(ranks.comm)   # (collective)
    set_work_split(args.work_split)
    try:
        set_blas(args.blas)
    except kernels.BlasUnavailable as exc:
        raise UsageError(f"fastbp train: --blas {args.blas}: {exc}") from None
    if args.threads is not None:
        set_num_threads(args.threads)
    elif share is not None and not count_chosen():
        set_num_threads(share)
    with _together(ranks):
        ds, model, optimizer, sizes = _data_and_model(args, say)
    kernels.raise_held_ctrl_c()   # one held in a compile on the way (a data check's)
    t_data = time.perf_counter() - t_start

    dtype = model.dtype
    if ds.task == "regression":   # the standardised targets themselves
        targets = [ds.y_train, ds.y_val, ds.y_test]
    elif kernels.LOSS_KINDS[model.loss].targets == "values":   # one output per class
        targets = [_one_hot(y, ds.n_classes, dtype) for y in (ds.y_train, ds.y_val, ds.y_test)]
    else:
        targets = [ds.y_train, ds.y_val, ds.y_test]
    y_train, y_val, y_test = targets

    import numba
    threads = numba.get_num_threads()
    by_rank = [threads] if ranks is None else ranks.comm.allgather(threads)   # (collective)
    say(f"data   {ds.summary()}; {ds.scaling}")
    say(f"model  {'-'.join(map(str, sizes))} ({_hidden_described(model)}), {model.loss}, "
        f"{np.dtype(model.dtype).name}"
        + ("" if model.matmul_precision == "float32" else
           f" ({model.matmul_precision} products)")
        + f", {model.n_params:,} parameters"
        + (f"; resumed from {args.resume}" if args.resume else ""))
    validation = (ds.X_val, y_val) if len(ds.y_val) else None
    watched_rows = validation or (ds.X_train, y_train)   # the rows whose loss fit watches
    per_epoch = _steps_per_epoch(args, len(y_train))
    first_step = 0
    if args.resume:
        first_step = _end_finished_epoch(optimizer, model,
                                         args.resume_run.get("epoch_steps", 0), per_epoch,
                                         len(y_train), watched_rows)
    first_epoch = optimizer.epochs_done
    steps_before = optimizer.steps
    epochs = args.epochs - first_epoch
    accumulate = f" x {args.accumulate} accumulated" if args.accumulate > 1 else ""
    say(f"train  {_describe(optimizer)}, batch {args.batch_size}{accumulate}, "
        + (f"epochs {first_epoch + 1}-{args.epochs}" if first_epoch else f"{epochs} epochs")
        + f", seed {args.seed}, " + _threads_described(by_rank))

    t0 = time.perf_counter()
    if not _kernels_cached():
        say("compiling kernels, first run only (later runs load them from Numba's cache)...")
    sample_weight = _sample_weight(args, ds)
    _warm_up(model, optimizer, ds.X_train, y_train, min(args.batch_size, len(y_train)),
             args.accumulate, ranks, weighted=sample_weight is not None)
    kernels.raise_held_ctrl_c()
    t_compile = time.perf_counter() - t0
    say(f"kernels ready in {t_compile:.1f} s (compiled, or loaded from Numba's cache)")

    callbacks = [_EpochReport(say, args.epochs, first_epoch)]
    t0 = time.perf_counter()
    try:
        with _together(ranks):
            history = fit(model, ds.X_train, y_train, optimizer, epochs=epochs,
                          batch_size=args.batch_size, seed=args.seed,
                          validation_data=validation, early_stopping=args.early_stopping,
                          callbacks=callbacks, progress=not args.quiet and _have_tqdm(),
                          accumulate=args.accumulate, initial_epoch=first_epoch,
                          initial_step=first_step, comm=ranks and ranks.comm,
                          sample_weight=sample_weight)
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
        scores, metrics = _test_scores(model, ds)
    except KeyboardInterrupt:
        interrupted, scores, metrics = True, dict.fromkeys(_SCORES[ds.task]), None
        say("interrupted: the test rows were not scored", force=True)
    samples = sum(s * t for s, t in zip(history["samples_per_s"], history["seconds"]))
    steps_time = sum(history["seconds"])
    throughput = samples / steps_time if steps_time > 0 else 0.0

    saved = plotted = None
    if args.save is not None:
        position = first_epoch * per_epoch + first_step + optimizer.steps - steps_before
        _end_finished_epoch(optimizer, model, position - optimizer.epochs_done * per_epoch,
                            per_epoch, len(y_train), watched_rows)
        metadata = {"data": ds.name, "task": ds.task, "class_names": list(ds.class_names),
                    "scaling": ds.scaling, "offset": ds.offset.tolist(),
                    "scale": ds.scale.tolist(), "raw_rows_digest": _rows_digest(ds),
                    "image_shape": ds.image_shape,
                    **_target_scaling(ds), **scores, "epochs": optimizer.epochs_done,
                    "interrupted": history.interrupted, "fastbp_version": __version__,
                    "run": _run_record(args, optimizer, history, per_epoch, position)}
        with HeldInterrupt() as held:
            try:
                saved = save_model(model, args.save, metadata=metadata, optimizer=optimizer)
            except OSError as exc:
                print(f"fastbp train: cannot write {args.save}: {exc.strerror or exc}",
                      file=sys.stderr)
                return EXIT_INTERRUPTED if interrupted or held.received else EXIT_FAILED
        interrupted = interrupted or held.received
    if args.plot is not None and epochs_run > 0 and interrupted == history.interrupted:
        try:
            plotted = _plot(args, ds, sizes, history, metrics)
        except KeyboardInterrupt:
            interrupted = True
            say("interrupted: no curves written", force=True)
        except OSError as exc:
            print(f"fastbp train: cannot write {args.plot}: {exc.strerror or exc}",
                  file=sys.stderr)
            return EXIT_INTERRUPTED if interrupted else EXIT_FAILED
    t_total = time.perf_counter() - t_start

    outcome = {**scores,
               "test_metrics": metrics and {"classes": list(ds.class_names), **metrics},
               "seconds": {"total": t_total, "data": t_data, "compile": t_compile,
                           "training": t_train},
               "samples_per_s": throughput, "saved": saved, "plot": plotted}
    if args.json:
        print(json.dumps(_summary(args, ds, model, optimizer, sizes, history, first_epoch,
                                  by_rank, outcome), default=_json_default))
    else:
        _say_outcome(say, ds, history, outcome)
    return EXIT_INTERRUPTED if interrupted else 0


def _hidden_described(model):
    """'hidden relu/tanh', and what else the hidden layers do, layer by layer where they
    have it: 'batch/layer norm', 'dropout 0.2/0', 'residual'."""
    if not model.activations:
        return "no hidden layer"
    parts = ["hidden " + "/".join(model.activations)]
    if any(model.norm):
        parts.append("/".join(norm or "no" for norm in model.norm) + " norm")
    if any(model.dropout):
        parts.append("dropout " + "/".join(f"{p:g}" for p in model.dropout))
    if model.residual:
        parts.append("residual")
    return ", ".join(parts)


def _threads_described(by_rank):
    """'2 threads' ('up to 2 threads' where fit follows the machine's load), or under MPI
    '1 threads on each of 2 MPI ranks' or '1-2 threads ...'."""
    low, high = min(by_rank), max(by_rank)
    if len(by_rank) == 1:
        return f"{'up to ' if load_free() else ''}{low} threads"
    return (f"{low}" if low == high else f"{low}-{high}") + \
        f" threads {'on each of' if low == high else 'per rank on'} {len(by_rank)} MPI ranks"


def _summary(args, ds, model, optimizer, sizes, history, first_epoch, by_rank, outcome):
    """The --json document: the run's settings, its history and its outcome."""
    return {
        "data": ds.name, "sizes": sizes, "activations": model.activations,
        "norm": model.norm, "dropout": model.dropout, "residual": model.residual,
        "loss": model.loss, "dtype": np.dtype(model.dtype).name,
        "matmul_precision": model.matmul_precision, "n_params": model.n_params,
        "optimizer": {"name": optimizer.name, **optimizer.config()},
        "lr": optimizer.base_lr, "lr_schedule": (optimizer.lr_schedule.name
                                                 if optimizer.lr_schedule else "constant"),
        "clip_norm": optimizer.clip_norm, "resumed_from": args.resume,
        "first_epoch": first_epoch + 1, "accumulate": args.accumulate,
        "batch_size": args.batch_size, "seed": args.seed, "threads": by_rank[0],
        "work_split": args.work_split, "blas": get_blas(),
        "ranks": len(by_rank), "threads_by_rank": by_rank, "epoch_threads": history.threads,
        "epoch_blas": history.blas,
        "rows": {"train": len(ds.y_train), "validation": len(ds.y_val), "test": len(ds.y_test)},
        "epochs_run": history.n_epochs, "stop_reason": history.stop_reason,
        "best_epoch": None if history.best_epoch is None else history.best_epoch + 1,
        **outcome, "history": {k: list(v) for k, v in history.items()},
    }


def _say_outcome(say, ds, history, outcome):
    """The closing lines: the per-class table and test accuracy (regression: R^2, MAE, RMSE),
    times, files written."""
    if outcome.get("test_metrics") is not None:
        for line in metrics_table(outcome["test_metrics"], ds.class_names):
            say(line)
    if outcome.get("test_correct") is not None:
        say(f"test accuracy {100 * outcome['test_accuracy']:.2f}% "
            f"({outcome['test_correct']}/{len(ds.y_test)})", force=True)
    if outcome.get("test_r2") is not None:
        say(f"test R^2 {outcome['test_r2']:.4f}, MAE {outcome['test_mae']:.4g}, RMSE "
            f"{outcome['test_rmse']:.4g} ({len(ds.y_test)} rows, in the targets' units)",
            force=True)
    seconds = outcome["seconds"]
    say(f"time {seconds['total']:.2f} s in all (data {seconds['data']:.2f} s, kernels "
        f"{seconds['compile']:.2f} s, training {seconds['training']:.2f} s); "
        f"{outcome['samples_per_s']:,.0f} samples/s over {history.n_epochs} epochs", force=True)
    if outcome["saved"]:
        say(f"model saved to {outcome['saved']}", force=True)
    if outcome["plot"]:
        say(f"curves written to {outcome['plot']}", force=True)


def _data_and_model(args, say):
    """The data set, and the model and optimizer (new, or those of --resume), with its
    sizes."""
    resumed = _resumed_model(args) if args.resume is not None else None
    dtype_name = np.dtype(resumed[0].dtype).name if resumed else args.dtype
    try:
        ds = load_data(args.data, data_dir=args.data_dir, val_fraction=args.val_fraction,
                       test_fraction=args.test_fraction, seed=args.seed,
                       label_column=args.label_column, dtype=dtype_name,
                       scaling=args.scale, log=say, task=args.task,
                       digest=args.save is not None or args.resume is not None)
    except LabelColumnError as exc:
        exc.remedy = "use --label-column NAME|INDEX"
        raise UsageError(f"fastbp train: {exc}") from None
    except DataError as exc:
        raise UsageError(f"fastbp train: {exc}") from None
    except ValueError as exc:  # arguments that only the loader can judge
        raise UsageError(f"fastbp train: {exc}") from None
    if args.early_stopping is not None and len(ds.y_val) == 0:
        raise UsageError("fastbp train: --early-stopping: the validation split is empty; "
                         "raise --val-fraction")
    sizes = [ds.n_features] + args.layers + [ds.n_outputs]
    try:
        if resumed:
            model, optimizer = resumed
            _check_resumed_model(args, ds, model, optimizer)
            sizes = list(model.sizes)
        else:
            _check_residual(args, sizes)
            model, optimizer = _new_model(args, sizes)
    except MemoryError:
        raise UsageError(f"fastbp train: not enough memory for a model of sizes {sizes}") \
            from None
    except (TypeError, ValueError) as exc:
        raise UsageError(f"fastbp train: {exc}") from None
    _check_batch_norm_batches(args, model, len(ds.y_train))
    return ds, model, optimizer, sizes


def _check_residual(args, sizes):
    """--residual needs a hidden layer as wide as its input (the model's rule, in the
    command's words: the input width is the data's, known only now)."""
    hidden = zip(sizes[:-2], sizes[1:-1])
    if args.residual and not any(n_in == n_out for n_in, n_out in hidden):
        raise UsageError(f"fastbp train: --residual: no hidden layer of sizes {sizes} is as "
                         "wide as its input, to add it to its output; give --layers two equal "
                         f"widths in a row, or a first width of {sizes[0]} (the features)")


def _check_batch_norm_batches(args, model, n_train):
    """Batch normalisation cannot train on a batch of 1 row. fit refuses one too, but after
    the warm-up and naming its own argument: refuse it before any work, naming the option."""
    batch = min(args.batch_size, n_train)
    if "batch" in model.norm and 1 in (batch, n_train % batch):
        raise UsageError(f"fastbp train: --batch-size {args.batch_size}: batch normalisation "
                         f"needs at least 2 rows in every training batch, and the "
                         f"{n_train} training rows in batches of {batch} leave a batch of 1 "
                         "row; choose another --batch-size")


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
    except UsageError as exc:
        # Rank 0 prints the refusals (main), and names another rank's, but a refusal of this
        # rank's own (its options, say) is said here, in full, unless rank 0 says the same.
        if ranks.rank != 0 and ranks.refusals[0] != str(exc):
            print(str(exc), file=sys.stderr)
        raise


# Options a rank may set for itself: its share of its node's cores (docs/mpi.md).
_PER_RANK_OPTIONS = ("threads",)


def _check_same_options(ranks, args):
    """Under MPI, refuse (on every rank) options that differ between the ranks: each rank
    would train on its own, or rank 0 alone would write files another rank was given."""
    if ranks is None:
        return
    options = {dest: value for dest, value in vars(args).items()
               if dest not in _PER_RANK_OPTIONS}
    everyone = ranks.comm.allgather(options)   # (collective)
    for rank, theirs in enumerate(everyone):
        for dest in sorted(set(everyone[0]) | set(theirs)):
            ours, other = everyone[0].get(dest), theirs.get(dest)
            if ours != other:
                name = "the command" if dest == "command" else "--" + dest.replace("_", "-")
                raise UsageError(f"fastbp: ranks 0 and {rank} were given different options: "
                                 f"{name} {ours!r} against {other!r}; under mpiexec every rank "
                                 "must be given the same options (but --threads)")


def _mpi_ranks():
    """distributed.Ranks of MPI's world when mpiexec started this process among several,
    else None."""
    n = distributed.launched_ranks()
    if n <= 1:
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        rank = distributed.launched_rank()
        message = (f"fastbp: rank {rank}: started by mpiexec as one of {n} processes, but "
                   "mpi4py is not installed (pip install 'fastbp[mpi]')")
        if rank != 0:   # (rank 0 says it in main; the others cannot)
            print(message, file=sys.stderr)
        raise UsageError(message) from None
    return distributed.Ranks(MPI.COMM_WORLD)


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


# The scores of the test rows that the report and the saved metadata give, by task.
_SCORES = {"classification": ("test_accuracy", "test_correct"),
           "regression": ("test_r2", "test_mae", "test_rmse")}


def _test_scores(model, ds):
    """The test rows' scores (_SCORES): how many the model classifies right, or how close its
    values come to the targets, in their own units; and a classifier's per-class figures
    (fastbp.metrics.classification_metrics; None for a regression)."""
    if ds.task == "classification":
        predictions = class_indices(model, ds.X_test)
        n_correct = int(np.sum(predictions == ds.y_test))
        metrics = classification_metrics(ds.y_test, predictions, ds.n_classes)
        return {"test_accuracy": n_correct / len(ds.y_test), "test_correct": n_correct}, metrics
    predicted, truth = (restore_targets(values, ds.target_offset, ds.target_scale)
                        for values in (model.predict(ds.X_test), ds.y_test))
    return regression_metrics(predicted, truth), None


def _target_scaling(ds):
    """What a regression's saved metadata adds: how its targets were standardised."""
    if ds.task == "classification":
        return {}
    return {"target_offset": ds.target_offset.tolist(), "target_scale": ds.target_scale.tolist()}


def _sample_weight(args, ds):
    """--class-weight balanced: each training row's weight (None: every row weighs 1)."""
    return balanced_sample_weight(ds.y_train) if args.class_weight == "balanced" else None


def _plot(args, ds, sizes, history, metrics):
    from .plotting import plot_history
    names = [f"layer {i + 1} ({a}\u2192{b})" for i, (a, b) in
             enumerate(zip(sizes[:-1], sizes[1:]))]
    return plot_history(history, args.plot, layer_names=names,
                        title=f"fastbp: {ds.name}, {'-'.join(map(str, sizes))}",
                        metrics=metrics, class_names=ds.class_names)


def _have_tqdm():
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


class _TermAsInterrupt:
    """While the command runs, SIGTERM (``kill``, a cluster scheduler preempting the job) is
    handed to whatever handles Ctrl-C at that moment: fit's clean stop, HeldInterrupt's hold
    over a save, the MPI ranks' shared stop flag. So it stops as Ctrl-C does, the last good
    weights saved, and ``received`` turns the exit status 130 into 143. Main thread only, and
    not where SIGTERM was ignored when the command started (the caller chose that)."""

    def __enter__(self):
        self.received = False
        self._previous = None
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self._previous = signal.signal(signal.SIGTERM, self._stop)
        return self

    def _stop(self, signum, frame):
        self.received = True
        on_ctrl_c = signal.getsignal(signal.SIGINT)
        if not callable(on_ctrl_c):   # Ctrl-C ignored (a background job): stop all the same
            raise KeyboardInterrupt
        on_ctrl_c(signal.SIGINT, frame)

    def status(self, code):
        """The exit status, 143 for an interrupt that SIGTERM brought."""
        return EXIT_TERMINATED if code == EXIT_INTERRUPTED and self.received else code

    def __exit__(self, *exc_info):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False


class _CtrlCHeldInCompiles:
    """While the command runs, Ctrl-C is a KeyboardInterrupt, except during a Numba compile,
    where it is held and raised once the compile returns (kernels.on_ctrl_c): raised
    inside one, it could be swallowed by an llvmlite callback and the run go on. In place of
    Python's own handler, or of the one fastbp's import put in place for the command; a caller's
    own (or Ctrl-C ignored) is left alone."""

    def __enter__(self):
        self._previous = None
        if threading.current_thread() is threading.main_thread() and signal.getsignal(
                signal.SIGINT) in (signal.default_int_handler, _environment.exit_interrupted):
            self._previous = signal.signal(signal.SIGINT, kernels.on_ctrl_c)
        return self

    def __exit__(self, *exc_info):
        if self._previous is not None:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        return False


def main(argv=None):
    """Entry point of the ``fastbp`` command; returns the exit status."""
    with _CtrlCHeldInCompiles(), _TermAsInterrupt() as term:
        return term.status(_main(argv, term))


def _main(argv, term):
    parser = build_parser()
    try:
        # MPI first: a rank refusing its options must still tell the others, which would
        # otherwise wait for it forever.
        if distributed.launched_ranks() > 1:
            try:
                distributed.start_timeout()   # (checked before any rank starts MPI)
            except ValueError as exc:
                raise UsageError(f"fastbp: {exc}") from None
        try:
            with distributed.start_deadline("fastbp"):
                ranks = _mpi_ranks()
                with _together(ranks):
                    args = _parse(parser, argv, ranks)
        except SystemExit as exc:  # --help, --version (one process alone)
            return exc.code if isinstance(exc.code, int) else 0
        _check_same_options(ranks, args)
        if args.command == "predict":
            from ._cli_predict import predict
            return predict(args)
        if args.command == "export":
            from ._cli_export import export
            return export(args)
        args.given = given_options(argv)
        with _together(ranks):
            check_args(args)
        return train(args, ranks)
    except UsageError as exc:   # (under MPI, on every rank alike: rank 0 says it)
        if distributed.launched_rank() == 0:
            print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    except kernels.UnitMissingError as exc:   # work skipped: never a success
        print(f"fastbp train: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        if distributed.launched_rank() == 0:
            print(f"fastbp: {'terminated' if term.received else 'interrupted'}; nothing "
                  "written", file=sys.stderr)
        status = term.status(EXIT_INTERRUPTED)
        _end_job(status)
        if kernels.entry.compile_interrupted:   # no teardown (see kernels.entry); nothing
            sys.stdout.flush()                  # was written, nothing is left to close
            sys.stderr.flush()
            os._exit(status)
        return EXIT_INTERRUPTED
    except BaseException as exc:   # under MPI: one rank's failure ends the job, not a hang
        if distributed.launched_ranks() > 1 and not isinstance(exc, SystemExit):
            from mpi4py import MPI
            distributed.Ranks(MPI.COMM_WORLD).abort(exc)
        raise


def _parse(parser, argv, ranks):
    """The parsed options. Under MPI, --help and --version are refused: argparse prints and
    exits (SystemExit, which the ranks do not share) on the ranks given them, and a rank given
    them alone would leave the others waiting for it for ever. A refusal (UsageError) every
    rank agrees on, and nothing printed, whichever ranks were given them."""
    if ranks is None:
        return parser.parse_args(argv)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return parser.parse_args(argv)
    except SystemExit:
        raise UsageError("fastbp: --help and --version are for one process; give them "
                         "without mpiexec") from None


def _end_job(status):
    """Under MPI, after an interrupt outside training (where the ranks agree on when to
    stop), end every rank: one may be waiting in an MPI call for this one."""
    if distributed.launched_ranks() > 1 and "mpi4py.MPI" in sys.modules:
        sys.modules["mpi4py.MPI"].COMM_WORLD.Abort(status)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
