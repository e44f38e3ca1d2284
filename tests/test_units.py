"""fastbp.kernels._units: each unit is declared in the module that defines its kernel (the
losses' still in network), under the name the cost table, units_for and the slot hashes know."""
import sys

import fastbp.kernels  # noqa: F401 (declares every unit)
from fastbp.kernels import _units, activations, losses, network, update


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
    assert set(network.units_for("mse", update_kind=0, weighted=True,
                                 sparse_index="int32")) <= set(_units._SPEC)
