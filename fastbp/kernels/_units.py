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
import os
import subprocess
import sys
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
    Spec("dense_forward_grid", dense._dense_forward_grid,
         lambda dt: (_M[dt], _M[dt], _M[dt], _M[dt], _V[dt], _i64), types.none),
    Spec("dense_forward_split_input", dense._dense_forward_split_input,
         lambda dt: (_M[dt], _M[dt], _M[dt], _M[dt], _M[dt], _V[dt], _i64), types.none),
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


def _unit_function(spec, dtype):
    """The Python function of the unit of one (kernel, dtype)."""
    name = f"unit_{spec.name}_{dtype}"
    scope = {"KERNEL": spec.kernel, "ARGS": types.Tuple(spec.argtypes(dtype)),
             "_load": _load, "_store": _store, "__name__": __name__}
    # A function of its own name (Numba's cache files are named after it), made from one
    # template: its globals, not closure cells, carry the kernel, so its cache key is stable.
    fn = pytypes.FunctionType(_unit_template.__code__, scope, name)
    fn.__qualname__ = name
    fn.__module__ = __name__
    return fn


def _make_unit(spec, dtype):
    """The cfunc of one (kernel, dtype): compiled now, or loaded from Numba's cache."""
    return cfunc(types.void(types.voidptr, types.voidptr), cache=True)(
        _unit_function(spec, dtype))


# Relative compile times of the units (measured on 2 cores), to share them out between processes.
_COST = {"dense_backward": 6, "dense_forward_grid": 5, "dense_forward_split_input": 5,
         "softmax_cross_entropy_forward_backward": 3, "clip_sgd_update": 2,
         "mse_forward_backward": 2, "activation_backward": 3}
# The compile time, in the same units, of what the calling process compiles meanwhile.
_MEANWHILE_COST = 5


def ensure(names, dtype, meanwhile=None):
    """Compile (or load from Numba's cache) the units with these names for a NumPy dtype, and
    put their addresses in the table; call meanwhile() (if given) on the way. Cheap once done.

    When several units are missing from the cache and the machine has several cores, worker
    processes compile a share of them into the cache while this process compiles its own share
    and runs meanwhile(); then it loads theirs. FASTBP_COMPILE_WORKERS sets the most workers
    (0: none); by default one per core but one.
    """
    dt = types.float32 if np.dtype(dtype).itemsize == 4 else types.float64
    missing = [name for name in names if not _table[_SLOTS[name, dt]]]
    cold = [name for name in missing if not _cached(_SPEC[name], dt)]
    mine, theirs = _share(cold, _max_workers())
    workers = [_spawn(group, dt) for group in theirs]
    try:
        if meanwhile is not None:
            meanwhile()
        for name in missing:
            if not any(name in group for group in theirs):
                _install(name, dt)
        for worker in workers:
            worker.wait()
    except BaseException:
        for worker in workers:
            worker.kill()
        raise
    for name in missing:
        _install(name, dt)  # from the cache, or compiled here if a worker failed


def _install(name, dt):
    slot = _SLOTS[name, dt]
    if not _table[slot]:
        unit = _make_unit(_SPEC[name], dt)
        _compiled[slot] = unit
        _table[slot] = unit.address


def _cached(spec, dt):
    """Whether Numba's cache holds this unit (an index file for it). Unknown: True."""
    from numba.core.caching import FunctionCache
    try:
        return os.path.exists(FunctionCache(_unit_function(spec, dt))._index_path)
    except Exception:  # a cache layout this code does not know
        return True


def _max_workers():
    setting = os.environ.get("FASTBP_COMPILE_WORKERS")
    if setting is not None and setting.strip().isdigit():
        return int(setting)
    return len(os.sched_getaffinity(0)) - 1 if hasattr(os, "sched_getaffinity") \
        else (os.cpu_count() or 1) - 1


def _share(cold, max_workers):
    """(this process's units, [each worker's units]): the costliest first, each to the least
    loaded, this process starting with what meanwhile() costs."""
    n_groups = min(max_workers, len(cold) - 1) + 1 if len(cold) > 1 else 1
    loads = [_MEANWHILE_COST] + [0] * (n_groups - 1)
    groups = [[] for _ in range(n_groups)]
    for name in sorted(cold, key=lambda n: -_COST.get(n, 1)):
        k = loads.index(min(loads))
        groups[k].append(name)
        loads[k] += _COST.get(name, 1)
    return groups[0], [g for g in groups[1:] if g]


def _spawn(names, dt):
    """A worker process that compiles these units into Numba's cache."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, FASTBP_COMPILE_WORKERS="0",
               PYTHONPATH=os.pathsep.join([root] + [p for p in os.environ.get(
                   "PYTHONPATH", "").split(os.pathsep) if p]))
    code = "import sys; from fastbp.kernels import _units; _units.compile_group(sys.argv[1:])"
    return subprocess.Popen([sys.executable, "-c", code, str(dt), *names], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # failures: this process compiles it


def compile_group(args):
    """A worker's job: args = [dtype name, unit names...]."""
    dt = getattr(types, args[0])
    for name in args[1:]:
        _make_unit(_SPEC[name], dt)


def _fill_slot(slot):
    spec, dt = SPECS[slot // len(DTYPES)], DTYPES[slot % len(DTYPES)]
    _install(spec.name, dt)


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
            values = [_borrowed(context, builder, d, context.cast(
                builder, builder.extract_value(llargs[0], i), a, d))
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


def _borrowed(context, builder, ty, value):
    """An array as the unit sees it: without its reference-counting handle, so that the
    unit's taking and dropping a reference costs nothing (the caller keeps it alive)."""
    if not isinstance(ty, types.Array):
        return value
    array = context.make_array(ty)(context, builder, value=value)
    array.meminfo = cgutils.get_null_value(array.meminfo.type)
    array.parent = cgutils.get_null_value(array.parent.type)
    return array._getvalue()


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
