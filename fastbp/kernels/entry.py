"""Entry points for fastbp's Python layer, and ``prepare``, which readies the units a run needs.

The entries take a Workspace's, a Net's and an Update's fields as plain arguments (Python passes
``*work, *net, *update``) and rebuild the tuples in compiled code, where that is free: Numba
types tuple arguments in Python, which costs about 3 us a call and leaves garbage. Those that
compute an objective take the sample weights last: None for none (then they run the code from
before weights, see network's docstring), else a float64 array.
"""
import contextlib
import os
import signal
import threading

import numpy as np
from numba import njit

from . import _units
from ._config import SERIAL
from .network import (Net, Workspace, _accumulated_loss_and_grad, _l2_penalty, apply_update,
                      mlp_forward, mlp_forward_and_losses, mlp_loss, mlp_loss_and_grad,
                      mlp_train_epoch, mlp_train_step, take_x_rows, units_for)
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
    with _ctrl_c_is_keyboard_interrupt():
        _units.ensure(names, np.dtype(dtype), meanwhile=compile_entry)


# Set when Ctrl-C stopped a compile: the half-built LLVM objects it leaves may not survive the
# interpreter's teardown (a double free was seen once, under load), so the command then ends
# its process without one (cli.main).
compile_interrupted = False


@contextlib.contextmanager
def _ctrl_c_is_keyboard_interrupt():
    """Ctrl-C in the middle of a compile can surface from Numba as another error (a half-built
    library): report it as the KeyboardInterrupt it is. Only on the main thread, and only while
    Python's own Ctrl-C handler is in place."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    pressed = []

    def on_ctrl_c(signum, frame):
        pressed.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        yield
    except BaseException:
        if pressed:
            global compile_interrupted
            compile_interrupted = True
            raise KeyboardInterrupt from None
        raise
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@njit(**SERIAL)
def forward(acts, params, x, sizes, activations, param_offsets, capacity, checkpoint_every,
            act_offsets, pre_offsets, loss_code, l2):
    net = Net(sizes, activations, param_offsets, capacity, checkpoint_every, act_offsets,
              pre_offsets, loss_code, l2)
    return mlp_forward(acts, params, x, net)


@njit(**SERIAL)
def forward_and_losses(acts, losses, params, x, target, sizes, activations, param_offsets,
                       capacity, checkpoint_every, act_offsets, pre_offsets, loss_code, l2):
    """The outputs, and each row's data loss into losses (network.mlp_forward_and_losses)."""
    net = Net(sizes, activations, param_offsets, capacity, checkpoint_every, act_offsets,
              pre_offsets, loss_code, l2)
    return mlp_forward_and_losses(acts, losses, params, x, target, net)


@njit(**SERIAL)
def loss(acts, deltas, losses, layer_sq, partials, params, x, target, sizes, activations,
         param_offsets, capacity, checkpoint_every, act_offsets, pre_offsets, loss_code, l2,
         weights):
    work = Workspace(acts, deltas, losses, layer_sq, partials)
    net = Net(sizes, activations, param_offsets, capacity, checkpoint_every, act_offsets,
              pre_offsets, loss_code, l2)
    return mlp_loss(work, params, x, target, net, weights)


@njit(**SERIAL)
def l2_penalty(partials, params, param_offsets, sizes, l2, n_rows):
    """The L2 penalty of n_rows rows (losses.l2_penalty_loss), through its unit."""
    return _l2_penalty(params[:0], partials, params, param_offsets, sizes, l2, n_rows)


@njit(**SERIAL)
def add_l2_penalty(grads, partials, params, param_offsets, sizes, l2, n_rows):
    """Adds the L2 penalty's gradient of n_rows rows to grads; returns the penalty: the stage
    a data-parallel step runs after summing the ranks' data gradients."""
    return _l2_penalty(grads, partials, params, param_offsets, sizes, l2, n_rows)


@njit(**SERIAL)
def loss_and_grad(grads, acts, deltas, losses, layer_sq, partials, params, x, target, sizes,
                  activations, param_offsets, capacity, checkpoint_every, act_offsets,
                  pre_offsets, loss_code, l2, weights):
    work = Workspace(acts, deltas, losses, layer_sq, partials)
    net = Net(sizes, activations, param_offsets, capacity, checkpoint_every, act_offsets,
              pre_offsets, loss_code, l2)
    return mlp_loss_and_grad(grads, work, params, x, target, net, weights)


@njit(**SERIAL)
def accumulated_loss_and_grad(grads, micro_grads, acts, deltas, losses, layer_sq, partials,
                              params, x_batch, y_batch, x, target, rows, batch_size, sizes,
                              activations, param_offsets, capacity, checkpoint_every,
                              act_offsets, pre_offsets, loss_code, l2, weights, w_batch):
    """The mean loss over x[rows], target[rows] and its gradient in grads, from batches of
    batch_size rows, as one step of train_epoch with accumulation computes them (fit's path
    with a gradient hook or step callbacks)."""
    work = Workspace(acts, deltas, losses, layer_sq, partials)
    net = Net(sizes, activations, param_offsets, capacity, checkpoint_every, act_offsets,
              pre_offsets, loss_code, l2)
    return _accumulated_loss_and_grad(grads, micro_grads, work, x_batch, y_batch, x, target,
                                      rows, batch_size, net, params, weights, w_batch)


@njit(**SERIAL)
def train_step(params, grads, acts, deltas, losses, layer_sq, partials, x, target, sizes,
               activations, param_offsets, capacity, checkpoint_every, act_offsets, pre_offsets,
               loss_code, l2, kind, hyper, state, weights):
    work = Workspace(acts, deltas, losses, layer_sq, partials)
    net = Net(sizes, activations, param_offsets, capacity, checkpoint_every, act_offsets,
              pre_offsets, loss_code, l2)
    return mlp_train_step(params, grads, work, x, target, net, Update(kind, hyper, state),
                          weights)


@njit(**SERIAL)
def train_epoch(params, grads, acts, deltas, losses, layer_sq, partials, x_batch, y_batch,
                step_losses, step_norms, step_layer_sq, x, target, order, batch_size, sizes,
                activations, param_offsets, capacity, checkpoint_every, act_offsets,
                pre_offsets, loss_code, l2, kind, hyper, state, accumulate, micro_grads,
                weights, w_batch):
    work = Workspace(acts, deltas, losses, layer_sq, partials)
    net = Net(sizes, activations, param_offsets, capacity, checkpoint_every, act_offsets,
              pre_offsets, loss_code, l2)
    return mlp_train_epoch(params, grads, work, x_batch, y_batch, step_losses, step_norms,
                           step_layer_sq, x, target, order, batch_size, net,
                           Update(kind, hyper, state), accumulate, micro_grads, weights,
                           w_batch)


@njit(**SERIAL)
def take_csr_rows(out, data, indices, indptr, index):
    """out = rows index of the CSR matrix (data, indices, indptr), densified, through the
    network's unit (network.take_x_rows): fit's per-step path and inference on sparse X."""
    take_x_rows(out, CSR(data, indices, indptr), index)


@njit(**SERIAL)
def update(params, grads, layer_sq, partials, param_offsets, kind, hyper, state):
    """The update stage alone (network.apply_update): (gradient norm, applied)."""
    return apply_update(params, layer_sq, partials, grads, param_offsets,
                        Update(kind, hyper, state))


def in_cache(entry):
    """Whether Numba's on-disk cache holds compiled code of this entry (True when that cannot
    be told: a cache layout this code does not know)."""
    try:
        return os.path.exists(entry._cache._cache_file._index_path)
    except AttributeError:
        return True
