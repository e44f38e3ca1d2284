"""fastbp.kernels._units: each unit is declared in the module that defines its kernel (the
losses' still in network), under the name the cost table, units_for and the slot hashes know."""
import subprocess
import sys

import fastbp.kernels  # noqa: F401 (declares every unit)
from fastbp.kernels import _units, activations, losses, plan, update
from helpers import subprocess_env


def test_units_are_declared_beside_their_kernels():
    """A unit of a kernel outside losses has its caller in the kernel's module: <name>_unit,
    or, for the update kinds' steps and the activations' epilogues, that module's table."""
    by_table = {kind.unit for kind in update.KINDS.values()} | set(
        activations.epilogue_units(range(len(activations.ACTIVATIONS))))
    for name, spec in _units._SPEC.items():
        module = sys.modules[spec.kernel.py_func.__module__]
        if module is losses:
            continue
        assert name in by_table or callable(getattr(module, f"{name}_unit", None)), name
    assert set(update.STEP_UNITS) == set(update.KINDS)


def test_cost_table_names_declared_units():
    assert set(_units._COST) <= set(_units._SPEC)


def test_units_for_names_declared_units():
    assert set(plan.units_for("mse", update_kind=0, weighted=True,
                                 sparse_index="int32")) <= set(_units._SPEC)


# A unit that compiled code finds missing and cannot fill (a stale cache, a failed compile):
# the call is skipped inside compiled code, so fastbp's Python layer must raise, never return
# what the skipped call left (a training step that did nothing).
UNFILLABLE = """
import numpy as np, fastbp
from fastbp.kernels import _units
model = fastbp.MLP([4, 8, 3], seed=0)
X = np.ones((5, 4), np.float32)
model.forward(X)                      # every unit it calls, ready
def cannot(*args):
    raise RuntimeError("no compiler here")
_units._make_unit = cannot
for slot in range(_units.TABLE_SIZE):  # as if none were filled yet
    _units._table[slot] = None
try:
    model.forward(X)
except _units.UnitMissingError as exc:
    assert "no compiler here" in str(exc), exc
    print("raised")
"""


def test_a_unit_that_cannot_be_filled_raises_instead_of_skipping_work():
    result = subprocess.run([sys.executable, "-c", UNFILLABLE], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "raised", result.stderr


# A user's own @njit code calling the network, whose unit slot this fastbp does not have (as
# after an upgrade, with that code cached against the old version): the call must stop the
# caller with UnitMissingError, not skip the work and go on (it used to print a traceback per
# skipped call, exit 0 and leave the parameters untrained).
STALE_SLOT = """
import numpy as np, numba
from fastbp import kernels
from fastbp.kernels import _units
net, size = kernels.make_net([4, 8, 3], [1, 0], 16)
work = kernels.make_workspace(net, size, np.float32)
params = np.full(net.param_offsets[-1], 0.1, np.float32)
grads = np.zeros_like(params)
x, y = np.ones((5, 4), np.float32), np.zeros(5, np.int64)

@numba.njit
def train(params, grads, work, x, y, net):
    for _ in range(3):
        kernels.mlp_loss_and_grad(grads, work, params, x, y, net)
        kernels.sgd_update(params, grads, 0.1)

train(params, grads, work, x, y, net)
slot = _units._slot("dense_backward", numba.types.float32)
del _units._BY_SLOT[slot]        # this version has no such unit
_units._table[slot] = None
before = params.copy()
try:
    train(params, grads, work, x, y, net)
except kernels.UnitMissingError as exc:
    assert "cached against another version" in str(exc), exc
    assert (params == before).all()   # stopped at the first call: no update ran
    try:
        kernels.raise_if_unfilled()
    except kernels.UnitMissingError as reason:
        assert "which this version of fastbp does not have" in str(reason), reason
        print("raised")
"""


def test_a_stale_unit_slot_stops_the_callers_own_compiled_code():
    result = subprocess.run([sys.executable, "-c", STALE_SLOT], capture_output=True, text=True,
                            timeout=300, env=subprocess_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "raised", result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
