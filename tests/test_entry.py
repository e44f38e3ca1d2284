"""fastbp.kernels.entry: the entries that take a Net's, a Workspace's and an Update's fields are
written from those tuples' fields, so their argument lists are the tuples' fields, in order,
and a field added to a tuple needs no edit in entry.py."""
import inspect
from collections import namedtuple

import numpy as np
import pytest

import fastbp
from fastbp.kernels import Net, Update, Workspace, entry

NET, WORK, UPDATE = list(Net._fields), list(Workspace._fields), list(Update._fields)

# Each generated entry's arguments, as the Python layer passes them (*work, *net, *spec).
EXPECTED = {
    "forward": ["acts", "params", "x", *NET],
    "forward_and_losses": ["acts", "losses", "params", "x", "target", *NET],
    "loss": [*WORK, "params", "x", "target", *NET, "weights", "mode"],
    "loss_and_grad": ["grads", *WORK, "params", "x", "target", *NET, "weights", "row_ids"],
    "accumulated_loss_and_grad": ["grads", "micro_grads", *WORK, "params", "x_batch",
                                  "y_batch", "x", "target", "rows", "batch_size", *NET,
                                  "weights", "w_batch"],
    "train_step": ["params", "grads", *WORK, "x", "target", *NET, *UPDATE, "weights",
                   "row_ids"],
    "train_epoch": ["params", "grads", *WORK, "x_batch", "y_batch", "step_losses",
                    "step_norms", "step_layer_sq", "x", "target", "order", "batch_size", *NET,
                    *UPDATE, "accumulate", "micro_grads", "weights", "w_batch"],
    "update": ["params", "grads", "layer_sq", "partials", "param_offsets", *UPDATE],
}


def parameters(function):
    return list(inspect.signature(function).parameters)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_entry_arguments_are_the_tuples_fields(name):
    function = getattr(entry, name)
    assert parameters(function.py_func) == EXPECTED[name]
    assert function.py_func.__doc__, f"{name} lost its docstring"
    # Compiled in entry.py's name, as Numba's cache files are named after it.
    assert function.py_func.__module__ == entry.__name__
    assert inspect.getfile(function.py_func) == entry.__file__


def test_every_tuple_entry_is_generated():
    assert set(entry._ENTRIES) == set(EXPECTED)


def test_a_new_field_needs_no_edit_in_entry():
    """A Net with one more field: the source written for an entry takes it in its place and
    rebuilds the Net with it."""
    Wider = namedtuple("Net", NET + ["extra"])
    tuples = dict(entry._TUPLES, net=Wider)
    params, call, _ = entry._ENTRIES["loss_and_grad"]
    assert entry.entry_parameters(params, tuples) == [
        "grads", *WORK, "params", "x", "target", *NET, "extra", "weights", "row_ids"]
    scope = {"Net": Wider, "Workspace": Workspace, "Update": Update,
             "unchecked_mlp_loss_and_grad": lambda *args: args}
    exec(entry.entry_source("loss_and_grad", params, call, tuples), scope)
    names = entry.entry_parameters(params, tuples)
    got = scope["loss_and_grad"](*names)   # each argument: its own name
    grads, work, params_, x, target, net, weights, row_ids = got
    assert net == Wider(*NET, "extra") and work == Workspace(*WORK)
    assert (grads, params_, x, target, weights, row_ids) == ("grads", "params", "x", "target",
                                                             "weights", "row_ids")


def test_a_field_that_would_shadow_the_body_is_refused():
    Clashing = namedtuple("Net", NET + ["unchecked_mlp_forward"])
    with pytest.raises(ValueError, match="shadow"):
        entry.entry_source("forward", *entry._ENTRIES["forward"][:2],
                           dict(entry._TUPLES, net=Clashing))
    Repeating = namedtuple("Net", NET + ["acts"])
    with pytest.raises(ValueError, match="repeat"):
        entry.entry_source("forward", *entry._ENTRIES["forward"][:2],
                           dict(entry._TUPLES, net=Repeating))


def test_entries_run_as_the_python_layer_calls_them(rng):
    """The calling convention, *work, *net and *spec positional: the same bits as the model's
    own calls."""
    model = fastbp.MLP([4, 5, 3], seed=0)
    opt = fastbp.SGD(model, lr=0.1)
    X, y = rng.normal(size=(6, 4)).astype(model.dtype), rng.integers(0, 3, 6)
    loss = model.loss_and_grad(X, y)
    grads = np.array(model.grads)
    net, work = model.engine.net, model.engine.work
    assert entry.loss_and_grad(model.grads, *work, model.params, X, y, *net, None,
                               None) == loss
    np.testing.assert_array_equal(model.grads, grads)
    np.testing.assert_array_equal(entry.forward(work.acts, model.params, X, *net),
                                  model.forward(X))
    params = np.array(model.params)
    step_loss, _, applied = entry.train_step(model.params, model.grads, *work, X, y, *net,
                                             *opt.update_spec(), None, None)
    assert step_loss == loss and applied
    assert not np.array_equal(params, model.params)
