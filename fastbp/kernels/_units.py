"""Units: the heavy kernels, each compiled once per dtype and called by the network through a
table of addresses.

Why: a Numba function that calls another links a copy of the callee's code into its own and
optimises and generates machine code for all of it again, at every level of the call tree. The
whole-network functions sit on the parallel kernels, which sit on tile loops, so a first run
compiled most of the code several times over. A unit is a kernel wrapped as a C-ABI function (a
Numba ``cfunc`` with its own place in Numba's on-disk cache) whose address goes into a table; a
caller's compile sees only a call through that table. Only the units a run uses are compiled.

Arguments travel as one tuple, stored in the caller's stack frame, whose address is passed; the
unit reads it with the same Numba types (the ``SPECS`` below), so both sides agree on its
layout. The table is filled from Python (``ensure``) before fastbp's entry points run; compiled
code that finds a slot empty (a user's own ``@njit`` code calling the network functions) asks
Python to fill it through a callback, and skips the call if that fails.
"""
import ctypes
import types as pytypes
from collections import namedtuple

import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir
from numba import cfunc, njit, types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

from . import activations, dense, losses, rows, update
from ._config import INLINED

_M = {dt: types.Array(dt, 2, "C") for dt in (types.float32, types.float64)}   # matrices
_V = {dt: types.Array(dt, 1, "C") for dt in (types.float32, types.float64)}   # vectors
_LOSSES = types.Array(types.float64, 1, "C")
_LABELS = types.Array(types.int64, 1, "C")
_INDEX = types.Array(types.int64, 1, "A")
_i64, _f64 = types.int64, types.float64

Spec = namedtuple("Spec", ["name", "kernel", "argtypes", "restype"])
SPECS = (
    Spec("dense_forward", dense.dense_forward,
         lambda dt: (_M[dt], _M[dt], _M[dt], _V[dt], _i64, _V[dt], _M[dt]), types.none),
    Spec("dense_backward", dense.dense_backward,
         lambda dt: (_M[dt], _M[dt], _V[dt], _M[dt], _M[dt], _M[dt], _i64, _M[dt]), types.none),
    Spec("softmax_cross_entropy_forward_backward",
         losses.softmax_cross_entropy_forward_backward,
         lambda dt: (_M[dt], _LOSSES, _M[dt], _LABELS), _f64),
    Spec("softmax_cross_entropy_loss", losses.softmax_cross_entropy_loss,
         lambda dt: (_LOSSES, _M[dt], _LABELS), _f64),
    Spec("mse_forward_backward", losses.mse_forward_backward,
         lambda dt: (_M[dt], _LOSSES, _M[dt], _M[dt]), _f64),
    Spec("mse_loss", losses.mse_loss, lambda dt: (_LOSSES, _M[dt], _M[dt]), _f64),
    Spec("activation_backward", activations.activation_backward,
         lambda dt: (_M[dt], _M[dt], _M[dt], _i64, _M[dt]), types.none),
    Spec("take_rows", rows.take_rows, lambda dt: (_M[dt], _M[dt], _INDEX), types.none),
    Spec("clip_sgd_update", update.clip_sgd_update,
         lambda dt: (_V[dt], _LOSSES, _LOSSES, _V[dt], _LABELS, _f64, _f64),
         types.Tuple((_f64, types.boolean))),
)
DTYPES = (types.float32, types.float64)
_SLOTS = {(spec.name, dt): i * len(DTYPES) + k
          for i, spec in enumerate(SPECS) for k, dt in enumerate(DTYPES)}
_SPEC = {spec.name: spec for spec in SPECS}

_table = (ctypes.c_void_p * len(_SLOTS))()
_compiled = {}  # slot -> the cfunc (kept alive: the table points into its code)
llvm.add_symbol("fastbp_unit_table", ctypes.addressof(_table))


# -- the unit side: a cfunc per (kernel, dtype) ------------------------------------------------


@intrinsic
def _load(typingctx, argp, argtypes):
    """The argument tuple at address argp (a borrowed reference, so take a new one)."""
    tup = argtypes.instance_type

    def codegen(context, builder, signature, args):
        value = builder.load(builder.bitcast(args[0], context.get_value_type(tup).as_pointer()))
        context.nrt.incref(builder, tup, value)
        return value
    return tup(argp, argtypes), codegen


@intrinsic
def _store(typingctx, retp, value):
    """*retp = value (nothing for None)."""
    def codegen(context, builder, signature, args):
        if value != types.none:
            builder.store(args[1], builder.bitcast(
                args[0], context.get_value_type(value).as_pointer()))
        return context.get_dummy_value()
    return types.void(retp, value), codegen


def _unit_template(argp, retp):
    _store(retp, KERNEL(*_load(argp, ARGS)))  # noqa: F821 (globals of each unit)


def _make_unit(spec, dtype):
    """The cfunc of one (kernel, dtype): compiled now, or loaded from Numba's cache."""
    name = f"unit_{spec.name}_{dtype}"
    scope = {"KERNEL": spec.kernel, "ARGS": types.Tuple(spec.argtypes(dtype)),
             "_load": _load, "_store": _store, "__name__": __name__}
    # A function of its own name (Numba's cache files are named after it), made from one
    # template: its globals, not closure cells, carry the kernel, so its cache key is stable.
    fn = pytypes.FunctionType(_unit_template.__code__, scope, name)
    fn.__qualname__ = name
    fn.__module__ = __name__
    return cfunc(types.void(types.voidptr, types.voidptr), cache=True)(fn)


def ensure(names, dtype):
    """Compile (or load from Numba's cache) the units with these names for a NumPy dtype, and
    put their addresses in the table. Cheap once done."""
    dt = types.float32 if dtype.itemsize == 4 else types.float64
    for name in names:
        slot = _SLOTS[name, dt]
        if not _table[slot]:
            unit = _make_unit(_SPEC[name], dt)
            _compiled[slot] = unit
            _table[slot] = unit.address


def _fill_slot(slot):
    spec, dt = SPECS[slot // len(DTYPES)], DTYPES[slot % len(DTYPES)]
    ensure([spec.name], np.dtype(str(dt)))


_ensure_callback = ctypes.CFUNCTYPE(None, ctypes.c_int64)(_fill_slot)
llvm.add_symbol("fastbp_unit_ensure", ctypes.cast(_ensure_callback, ctypes.c_void_p).value)


# -- the caller side ---------------------------------------------------------------------------


def caller(name):
    """An @njit-callable function that calls unit `name` with the kernel's arguments (they are
    converted to the unit's types: a C-contiguous array passes where 'A' layout is declared, an
    integer literal where int64 is)."""
    spec = _SPEC[name]

    @intrinsic
    def call(typingctx, args):
        arrays = [a for a in args if isinstance(a, types.Array) and a.dtype in DTYPES]
        if not arrays:
            raise TypingError(f"{name}: no float32 or float64 array among the arguments")
        dt = arrays[0].dtype
        declared = spec.argtypes(dt)
        if len(args) != len(declared) or any(
                typingctx.can_convert(a, d) is None for a, d in zip(args, declared)):
            raise TypingError(f"{name}: arguments {args} do not convert to {declared}")
        slot = _SLOTS[name, dt]

        def codegen(context, builder, signature, llargs):
            values = [context.cast(builder, builder.extract_value(llargs[0], i), a, d)
                      for i, (a, d) in enumerate(zip(args, declared))]
            tupty = types.Tuple(declared)
            arg_slot = cgutils.alloca_once(builder, context.get_value_type(tupty))
            builder.store(context.make_tuple(builder, tupty, values), arg_slot)
            restype = signature.return_type
            ret_slot = (cgutils.alloca_once(builder, context.get_value_type(restype))
                        if restype != types.none else arg_slot)
            _call_slot(builder, slot, arg_slot, ret_slot)
            if restype == types.none:
                return context.get_dummy_value()
            return builder.load(ret_slot)

        return spec.restype(args), codegen

    # A plain function of the kernel's arity around call, inlined where it is used.
    params = ", ".join(spec.kernel.py_func.__code__.co_varnames[
        :spec.kernel.py_func.__code__.co_argcount])
    scope = {"call": call}
    source = f"def {name}({params}):\n    return call(({params},))\n"
    exec(compile(source, __file__, "exec"), scope)  # this file: Numba wants a real one
    return njit(**INLINED)(scope[name])


def _call_slot(builder, slot, arg_slot, ret_slot):
    """Call the table's entry `slot` as void(i8*, i8*); fill an empty entry first."""
    module = builder.module
    i8p = ir.IntType(8).as_pointer()
    table = module.globals.get("fastbp_unit_table")
    if table is None:
        table = ir.GlobalVariable(module, ir.ArrayType(i8p, len(_SLOTS)), "fastbp_unit_table")
    entry = builder.gep(table, [ir.Constant(ir.IntType(32), 0),
                                ir.Constant(ir.IntType(32), slot)])
    with builder.if_then(cgutils.is_null(builder, builder.load(entry)), likely=False):
        fill = cgutils.get_or_insert_function(
            module, ir.FunctionType(ir.VoidType(), [ir.IntType(64)]), "fastbp_unit_ensure")
        builder.call(fill, [ir.Constant(ir.IntType(64), slot)])
    address = builder.load(entry)
    with builder.if_then(cgutils.is_not_null(builder, address), likely=True):
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i8p])
        builder.call(builder.bitcast(address, fnty.as_pointer()),
                     [builder.bitcast(arg_slot, i8p), builder.bitcast(ret_slot, i8p)])
