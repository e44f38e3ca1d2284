"""fastbp.kernels._units: each unit is declared in the module that defines its kernel (the
losses' still in network), under the name the cost table, units_for and the slot hashes know."""
import subprocess
import sys

import fastbp.kernels  # noqa: F401 (declares every unit)
from fastbp.kernels import _units, activations, losses, plan, update


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
