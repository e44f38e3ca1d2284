"""Entry points for fastbp's Python layer, and ``prepare``, which readies the units a run needs.

The entries run the whole-network functions' bodies without their argument checks (the Python
layer checks what it passes). They take a Workspace's, a Net's and an Update's fields as plain
arguments (Python passes ``*work, *net, *update``) and rebuild the tuples in compiled code,
where that is free: Numba types tuple arguments in Python, which costs time on every call and
leaves garbage. Those entries are written from the tuples' fields (``_ENTRIES``), so their
argument lists follow the tuples. Those that compute an objective take the sample weights
last: None for none (then they run the code from before weights, see network's docstring),
else a float64 array.
"""
import contextlib
import os
import signal
import threading

import numpy as np
from numba import njit

from . import _units
from ._config import SERIAL
from . import network
from .network import Net, Workspace, l2_penalty_unit, take_x_rows
from .plan import units_for
from .rows import CSR
from .update import Update


def prepare(dtype, loss, update_kind=None, net=None, entry=None, args=(), weighted=False,
            sparse_index=None):
    """Compile, or load from Numba's cache, what a call entry(*args) runs: the entry itself and
    the units that a model of this dtype and loss (and an optimizer of this update kind, and
    this Net at the current thread count, and sample weights when weighted, and a CSR matrix
    whose indices are of the NumPy dtype sparse_index, when given) calls. On a first run the
    units compile in worker processes while this one compiles the entry (see
    _units.ensure)."""
    def compile_entry():
        if entry is not None:
            entry.compile(tuple(entry.typeof_pyval(a) for a in args))
    inference = entry in (forward, forward_and_losses, take_csr_rows)   # (no input split)
    names = units_for(loss, update_kind, net, may_split=not inference,
                      weighted=weighted, sparse_index=sparse_index)
    with _ctrl_c_between_compile_steps():
        _units.ensure(names, np.dtype(dtype), meanwhile=compile_entry)


# Set when Ctrl-C stopped a compile: the command then ends its process without the
# interpreter's teardown (cli.main), in case Numba's objects were left half-built (a double free
# was seen once, under load, when the interrupt was raised inside a compile).
compile_interrupted = False


@contextlib.contextmanager
def _ctrl_c_between_compile_steps():
    """Ctrl-C while the units and the entry compile: held during each compile and raised as
    KeyboardInterrupt between them (_units.on_ctrl_c), never swallowed inside one. Only on the
    main thread, and only in place of Python's own Ctrl-C handler (the command installs
    on_ctrl_c itself; a caller's own handler is left alone)."""
    ours = (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
    if ours:
        signal.signal(signal.SIGINT, _units.on_ctrl_c)
    try:
        yield
        _units.raise_held_ctrl_c()   # a press held during the last compile step
    except KeyboardInterrupt:
        global compile_interrupted
        compile_interrupted = True
        raise
    finally:
        if ours:
            signal.signal(signal.SIGINT, signal.default_int_handler)


@njit(**SERIAL)
def l2_penalty(partials, params, param_offsets, weight_lengths, l2, n_rows):
    """The L2 penalty of n_rows rows (losses.l2_penalty_loss), through its unit."""
    return l2_penalty_unit(params[:0], partials, params, param_offsets, weight_lengths, l2, n_rows)


@njit(**SERIAL)
def add_l2_penalty(grads, partials, params, param_offsets, weight_lengths, l2, n_rows):
    """Adds the L2 penalty's gradient of n_rows rows to grads; returns the penalty: the stage a
    data-parallel step runs after summing the ranks' data gradients."""
    return l2_penalty_unit(grads, partials, params, param_offsets, weight_lengths, l2, n_rows)


@njit(**SERIAL)
def take_csr_rows(out, data, indices, indptr, index):
    """out = rows index of the CSR matrix (data, indices, indptr), densified, through the
    network's unit (network.take_x_rows): fit's per-step path and inference on sparse X."""
    take_x_rows(out, CSR(data, indices, indptr), index)


# -- the entries that take whole tuples, written from their fields -----------------------------
#
# Each is (parameters, the call it makes, docstring). In the parameters, *work, *net and *update
# stand for the fields of a Workspace, a Net and an Update, in their order (as Python spreads
# them); in the call, work, net and update are those tuples, rebuilt from the fields. So a field
# added to one of the tuples needs no edit here.
_TUPLES = {"work": Workspace, "net": Net, "update": Update}
_ENTRIES = {
    "forward": (
        "acts, params, x, *net",
        "unchecked_mlp_forward(acts, params, x, net)",
        """network.mlp_forward: the output view (B, sizes[-1]) into acts."""),
    "forward_and_losses": (
        "acts, losses, params, x, target, *net",
        "unchecked_mlp_forward_and_losses(acts, losses, params, x, target, net)",
        """network.mlp_forward_and_losses: the outputs, and each row's data loss into
    losses."""),
    "loss": (
        "*work, params, x, target, *net, weights, mode",
        "unchecked_mlp_loss(work, params, x, target, net, weights, mode)",
        """network.mlp_loss: the batch's mean loss, plus the L2 penalty (mode: block.INFER, or
    REPLAY: the last training pass's objective)."""),
    "loss_and_grad": (
        "grads, *work, params, x, target, *net, weights, row_ids",
        "unchecked_mlp_loss_and_grad(grads, work, params, x, target, net, weights,"
        " row_ids)",
        """network.mlp_loss_and_grad: the objective, and its gradient in grads."""),
    "accumulated_loss_and_grad": (
        "grads, micro_grads, *work, params, x_batch, y_batch, x, target, rows, batch_size, *net,"
        " weights, w_batch",
        "unchecked_mlp_accumulated_loss_and_grad(grads, micro_grads, work, x_batch, y_batch,"
        " x, target, rows, batch_size, net, params, weights, w_batch)",
        """The mean loss over x[rows], target[rows] and its gradient in grads, from batches of
    batch_size rows, as one step of train_epoch with accumulation computes them (fit's path
    with a gradient hook or step callbacks)."""),
    "train_step": (
        "params, grads, *work, x, target, *net, *update, weights, row_ids",
        "unchecked_mlp_train_step(params, grads, work, x, target, net, update, weights,"
        " row_ids)",
        """network.mlp_train_step: (loss, gradient norm, applied)."""),
    "train_epoch": (
        "params, grads, *work, x_batch, y_batch, step_losses, step_norms, step_layer_sq, x,"
        " target, order, batch_size, *net, *update, accumulate, micro_grads, weights, w_batch",
        "unchecked_mlp_train_epoch(params, grads, work, x_batch, y_batch, step_losses,"
        " step_norms, step_layer_sq, x, target, order, batch_size, net, update, accumulate,"
        " micro_grads, weights, w_batch)",
        """network.mlp_train_epoch: the number of steps applied."""),
    "update": (
        "params, grads, layer_sq, partials, param_offsets, *update",
        "unchecked_apply_update(params, layer_sq, partials, grads, param_offsets, update)",
        """The update stage alone (network.apply_update): (gradient norm, applied)."""),
}


def entry_parameters(parameters, tuples=_TUPLES):
    """The parameter names of an entry's parameter list, each *name spread into the fields of
    its tuple (tuples: name -> namedtuple class)."""
    names = []
    for part in parameters.split(","):
        part = part.strip()
        names += tuples[part[1:]]._fields if part.startswith("*") else [part]
    return names


def entry_source(name, parameters, call, tuples=_TUPLES):
    """The source of one entry: def name(<parameters, spread>), which rebuilds the tuples its
    parameters spread and returns call."""
    names = entry_parameters(parameters, tuples)
    spread = [part.strip()[1:] for part in parameters.split(",") if part.strip()[0] == "*"]
    # A field named like a tuple or a function the body uses would shadow it.
    clashes = set(names) & (set(tuples) | {cls.__name__ for cls in tuples.values()}
                            | set(call[:call.index("(")].split()))
    if clashes or len(set(names)) != len(names):
        raise ValueError(f"entry {name}: parameter names {names} repeat or shadow {clashes}")
    lines = [f"def {name}({', '.join(names)}):"]
    lines += [f"    {t} = {tuples[t].__name__}({', '.join(tuples[t]._fields)})" for t in spread]
    lines.append(f"    return {call}")
    return "\n".join(lines) + "\n"


def _make_entries():
    # The public functions' bodies, without their argument checks (network.UNCHECKED): fastbp's
    # Python layer checks what it passes (and builds the Net, Workspace and Update itself), so a
    # first run compiles none of the checks that guard the kernels for other callers.
    scope = {"__name__": __name__, "Net": Net, "Workspace": Workspace, "Update": Update,
             **{f"unchecked_{name}": body for name, body in network.UNCHECKED.items()}}
    made = {}
    for name, (parameters, call, doc) in _ENTRIES.items():
        source = entry_source(name, parameters, call)
        exec(compile(source, __file__, "exec"), scope)  # this file: Numba wants a real one
        function = scope.pop(name)
        function.__doc__ = doc
        made[name] = njit(**SERIAL)(function)
    return made


_made = _make_entries()
forward = _made["forward"]
forward_and_losses = _made["forward_and_losses"]
loss = _made["loss"]
loss_and_grad = _made["loss_and_grad"]
accumulated_loss_and_grad = _made["accumulated_loss_and_grad"]
train_step = _made["train_step"]
train_epoch = _made["train_epoch"]
update = _made["update"]
del _made


def in_cache(entry):
    """Whether Numba's on-disk cache holds compiled code of this entry (True when that cannot
    be told: a cache layout this code does not know)."""
    try:
        return os.path.exists(entry._cache._cache_file._index_path)
    except AttributeError:
        return True
