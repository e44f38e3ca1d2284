"""Units: the heavy kernels, each compiled once per dtype and called by the network through a
table of addresses.

Why: a Numba function that calls another links a copy of the callee's code into its own and
optimises and generates machine code for all of it again, at every level of the call tree. The
whole-network functions sit on the parallel kernels, which sit on tile loops, so a first run
compiled most of the code several times over. A unit is a kernel wrapped as a C-ABI function (a
Numba ``cfunc`` with its own place in Numba's on-disk cache) whose address goes into a table; a
caller's compile sees only a call through that table. Only the units a run uses are compiled.

Arguments travel as one tuple, stored in the caller's stack frame, whose address is passed; the
unit reads it with the same Numba types (its ``register``-ed ones), so both sides agree on its
layout. The table is filled from Python (``ensure``) before fastbp's entry points run; compiled
code that finds a slot empty (a user's own ``@njit`` code calling the network functions) asks
Python to fill it through a callback, and raises UnitMissingError if that fails (the callback
keeps the reason, which raise_if_unfilled raises). Inside a unit, a C function that cannot
raise, Numba prints the exception and the unit returns: fastbp's Python layer then raises the
reason (raise_if_unfilled) rather than return what such a call left.
"""
import ctypes
import hashlib
import os
import subprocess
import sys
import threading
import types as pytypes
from collections import namedtuple

import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir
from numba import cfunc, njit, types
from numba.core import cgutils
from numba.core.compiler_lock import global_compiler_lock
from numba.core.errors import TypingError
from numba.extending import intrinsic

from ._config import C_FUNCTION, CACHE, INLINED

DTYPES = (types.float32, types.float64)
TABLE_SIZE = 4096  # slots; a unit's slot is a hash of what it is, see register

# Argument types for declaring units: by dtype, the model's matrices and vectors; the others as
# they are.
MATRIX = {dt: types.Array(dt, 2, "C") for dt in DTYPES}
VECTOR = {dt: types.Array(dt, 1, "C") for dt in DTYPES}
FLOAT64S = types.Array(types.float64, 1, "C")
INT64S = types.Array(types.int64, 1, "C")
INT32S = types.Array(types.int32, 1, "C")
INDEX = types.Array(types.int64, 1, "A")   # row numbers, maybe a slice of a longer array

Spec = namedtuple("Spec", ["name", "kernel", "argtypes", "restype", "packed"])
Spec.__doc__ = """A unit: kernel(*args) (packed: kernel(args), one tuple), args of the types
argtypes(dtype), returning restype."""
_SPEC = {}      # name -> Spec
_SLOTS = {}     # (name, dtype) -> slot
_BY_SLOT = {}   # slot -> (name, dtype)
_PREPARE = {}   # name -> what to call before compiling or loading it


def register(name, kernel, argtypes, restype=types.none, packed=False, cost=None, prepare=None):
    """Declare a unit. Its slot in each dtype is a hash of its name, dtype and types (probing on
    the rare collision), so compiled code that has a slot built in (fastbp's, or a user's own
    cached @njit code calling the network functions) finds the same unit in every process and
    version, or, if that unit changed or went, an empty slot and a clear message (_fill_slot),
    never another unit. cost: its compile time in seconds, for ensure to share the units out
    between processes (see _COST; left out: that of an activation's loop). prepare: called
    before the unit is compiled or loaded, in whichever process does it (registers a native
    symbol its code calls)."""
    if name in _SPEC:
        return
    if cost is not None:
        _COST[name] = cost
    if prepare is not None:
        _PREPARE[name] = prepare
    spec = Spec(name, kernel, argtypes, restype, packed)
    _SPEC[name] = spec
    for dt in DTYPES:
        key = f"{name}|{dt}|{argtypes(dt)}|{restype}|{packed}".encode()
        slot = int(hashlib.sha256(key).hexdigest()[:12], 16) % TABLE_SIZE
        while slot in _BY_SLOT:
            slot = (slot + 1) % TABLE_SIZE
        _SLOTS[name, dt] = slot
        _BY_SLOT[slot] = (name, dt)


def _slot(name, dt):
    return _SLOTS[name, dt]


_table = (ctypes.c_void_p * TABLE_SIZE)()
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


def _packed_unit_template(argp, retp):
    _store(retp, KERNEL(_load(argp, ARGS)))  # noqa: F821 (globals of each unit)


def _unit_function(spec, dtype):
    """The Python function of the unit of one (kernel, dtype)."""
    name = f"unit_{spec.name}_{dtype}"
    scope = {"KERNEL": spec.kernel, "ARGS": types.Tuple(spec.argtypes(dtype)),
             "_load": _load, "_store": _store, "__name__": __name__}
    # A function of its own name (Numba's cache files are named after it), made from one
    # template: its globals, not closure cells, carry the kernel, so its cache key is stable.
    template = _packed_unit_template if spec.packed else _unit_template
    fn = pytypes.FunctionType(template.__code__, scope, name)
    fn.__qualname__ = name
    fn.__module__ = __name__
    return fn


def _make_unit(spec, dtype):
    """The cfunc of one (kernel, dtype): compiled now, or loaded from Numba's cache."""
    if spec.name in _PREPARE:
        _PREPARE[spec.name]()
    return cfunc(types.void(types.voidptr, types.voidptr), **C_FUNCTION)(
        _unit_function(spec, dtype))


# Compile times in seconds, used only to share the units out between processes (so only their
# ratios matter): of each unit (others: 0.25, an activation's loop; the losses' units give
# theirs where they are registered, in losses.py); of what the calling process compiles
# meanwhile (an entry); of a worker's start (its imports). Where they come from:
# docs/kernels-notes.md.
_COST = {"dense_backward": 3.8,
         "sgd_step": 4.5, "adam_step": 4.5, "dense_forward_split_input": 2.4,
         "dense_forward_grid": 1.9,
         "activation_backward": 2, "take_rows": 1,
         # Guessed from adam_step (docs/kernels-notes.md).
         "rmsprop_step": 4.5,
         "take_csr_rows": 1, "take_csr_rows_int32": 1}
_MEANWHILE_COST = 3.5
_WORKER_START_COST = 0.8


def ensure(names, dtype, meanwhile=None):
    """Compile (or load from Numba's cache) the units with these names for a NumPy dtype, and
    put their addresses in the table; call meanwhile() (if given) on the way. Cheap once done.

    When several units are missing from the cache and the machine has several cores, worker
    processes compile a share of them into the cache while this process compiles its own share
    and runs meanwhile(); then it loads theirs. FASTBP_COMPILE_WORKERS sets the most workers
    (0: none); by default one per core but one.
    """
    dt = types.float32 if np.dtype(dtype).itemsize == 4 else types.float64
    missing = [name for name in names if not _table[_slot(name, dt)]]
    cold = [name for name in missing if not _cached(_SPEC[name], dt)]
    # Workers hand their units over through the cache: without one, this process does all.
    mine, theirs = _share(cold, _max_workers() if CACHE else 0)
    workers = []
    try:
        for group in theirs:   # in the try: a Ctrl-C while spawning ends those spawned
            worker = _spawn(group, dt)
            if worker:
                workers.append(worker)
        if meanwhile is not None:
            meanwhile()
            raise_held_ctrl_c()
        for name in missing:
            if not any(name in group for group in theirs):
                _install(name, dt)
                raise_held_ctrl_c()
        for worker in workers:
            worker.wait()
    except BaseException:
        for worker in workers:
            worker.kill()
        for worker in workers:
            worker.wait()   # gone before this process is (a Ctrl-C ends it soon after)
        raise
    for name in missing:
        _install(name, dt)  # from the cache, or compiled here if a worker failed
        raise_held_ctrl_c()


# -- Ctrl-C during a compile -------------------------------------------------------------------
# Python runs a signal handler at the next bytecode its main thread executes. In the middle of a
# Numba compile that is often a ctypes callback of llvmlite's, which prints a KeyboardInterrupt
# raised there as "Exception ignored" and goes on (a first run went on to train to the end and
# exit 0), or else Numba code that the exception leaves half-built. So a Ctrl-C that arrives while
# this thread compiles is held, and raised from plain Python once the compile step returns.
_held_ctrl_c = []


def on_ctrl_c(signum, frame):
    """A SIGINT handler: KeyboardInterrupt, held back (raise_held_ctrl_c) while this thread
    compiles (holds Numba's compiler lock)."""
    if global_compiler_lock.is_locked():
        _held_ctrl_c.append(signum)
        return
    raise KeyboardInterrupt


def raise_held_ctrl_c():
    """Raise the KeyboardInterrupt that on_ctrl_c held back during a compile, if any."""
    if _held_ctrl_c and not global_compiler_lock.is_locked():
        _held_ctrl_c.clear()
        raise KeyboardInterrupt


_install_lock = threading.Lock()


def _install(name, dt):
    slot = _slot(name, dt)
    with _install_lock:  # the callback can run on several of Numba's threads at once
        if _table[slot]:
            return
        unit = _make_unit(_SPEC[name], dt)
        _compiled[slot] = unit
        _table[slot] = unit.address


def _cached(spec, dt):
    """Whether Numba's cache holds this unit (an index file for it). Unknown: True."""
    from numba.core.caching import FunctionCache
    try:
        return os.path.exists(FunctionCache(_unit_function(spec, dt))._cache_file._index_path)
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
    loads = [_MEANWHILE_COST] + [_WORKER_START_COST] * (n_groups - 1)
    groups = [[] for _ in range(n_groups)]
    for name in sorted(cold, key=lambda n: -_COST.get(n, 0.25)):
        k = loads.index(min(loads))
        groups[k].append(name)
        loads[k] += _COST.get(name, 0.25)
    return groups[0], [g for g in groups[1:] if g]


def _spawn(names, dt):
    """A worker process that compiles these units into Numba's cache. It must import this very
    fastbp (or it would fill another cache): -I keeps the working folder and PYTHONPATH out of
    its path, and this copy's folder goes first."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = (f"import sys; sys.path.insert(0, {root!r}); import fastbp.kernels; "
            "from fastbp.kernels import _units; _units.compile_group(sys.argv[1:])")
    try:
        return subprocess.Popen([sys.executable, "-I", "-c", code, str(dt), *names],
                                env=dict(os.environ, FASTBP_COMPILE_WORKERS="0"),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    except OSError:
        return None  # no worker: its units are compiled here, as a failed worker's are


def compile_group(args):
    """A worker's job: args = [dtype name, unit names...]."""
    dt = getattr(types, args[0])
    for name in args[1:]:
        _make_unit(_SPEC[name], dt)


class UnitMissingError(RuntimeError):
    """Compiled code called a unit that could not be compiled or found: that call did nothing."""


_unfilled = []   # why slots could not be filled, since the last raise_if_unfilled


def _fill_slot(slot):
    # Called from compiled code through ctypes, where an exception would only be printed: so
    # the reason is kept, for raise_if_unfilled, and the compiled caller raises
    # UnitMissingError when it finds the slot still empty (_call_slot).
    try:
        if slot not in _BY_SLOT:
            raise UnitMissingError(
                f"fastbp: compiled code called unit slot {slot}, which this version of fastbp "
                "does not have: it is a stale Numba cache of your own @njit code, compiled "
                "against another version; delete that cache (__pycache__/*.nbi and *.nbc, or "
                "the NUMBA_CACHE_DIR folder).")
        _install(*_BY_SLOT[slot])
    except BaseException as exc:
        _unfilled.append(str(exc) or repr(exc))
        # One line now too: inside a prange body Numba drops the caller's exception.
        sys.stderr.write(f"fastbp: {_unfilled[-1]}\n")


def report_skipped(message):
    """Record that compiled code skipped work (a native routine it calls was not ready), for
    raise_if_unfilled to raise from Python."""
    _unfilled.append(message)


def raise_if_unfilled():
    """Raise UnitMissingError if compiled code found a unit it could not fill since the last
    call: its work was skipped, so what the call returned must not be used."""
    if _unfilled:
        reasons = list(dict.fromkeys(_unfilled))
        _unfilled.clear()
        raise UnitMissingError("; ".join(reasons))


_ensure_callback = ctypes.CFUNCTYPE(None, ctypes.c_int64)(_fill_slot)
llvm.add_symbol("fastbp_unit_ensure", ctypes.cast(_ensure_callback, ctypes.c_void_p).value)


# -- the caller side ---------------------------------------------------------------------------


def _unit_types(typingctx, name, args):
    """(declared argument types, dtype) of unit `name` for these argument types: the dtype in
    which every argument converts to the unit's types, or a TypingError."""
    for dt in DTYPES:
        declared = _SPEC[name].argtypes(dt)
        if len(args) == len(declared) and all(
                typingctx.can_convert(a, d) is not None for a, d in zip(args, declared)):
            return declared, dt
    raise TypingError(f"{name}: arguments {args} convert to none of its types "
                      f"{[_SPEC[name].argtypes(dt) for dt in DTYPES]}")


def _pack(context, builder, args, declared, values):
    """The arguments as the declared tuple, in a stack slot: its address."""
    values = [_borrowed(context, builder, d, context.cast(builder, v, a, d))
              for v, a, d in zip(values, args, declared)]
    tupty = types.Tuple(declared)
    arg_slot = cgutils.alloca_once(builder, context.get_value_type(tupty))
    builder.store(context.make_tuple(builder, tupty, values), arg_slot)
    return arg_slot


def _call_packed(context, builder, restype, slot, arg_slot):
    # Zeroed: a unit that raised inside (Numba prints what a C function raises, and it returns)
    # returns zeros, not whatever the stack held (for the clipped update: not applied).
    ret_slot = (cgutils.alloca_once(builder, context.get_value_type(restype), zfill=True)
                if restype != types.none else arg_slot)
    _call_slot(context, builder, slot, arg_slot, ret_slot)
    if restype == types.none:
        return context.get_dummy_value()
    return builder.load(ret_slot)


def caller(name):
    """An @njit-callable function that calls unit `name` with the kernel's arguments (they are
    converted to the unit's types: a C-contiguous array passes where 'A' layout is declared, an
    integer literal where int64 is)."""
    spec = _SPEC[name]

    @intrinsic
    def call(typingctx, args):
        declared, dt = _unit_types(typingctx, name, args)
        slot = _slot(name, dt)

        def codegen(context, builder, signature, llargs):
            values = [builder.extract_value(llargs[0], i) for i in range(len(args))]
            arg_slot = _pack(context, builder, args, declared, values)
            return _call_packed(context, builder, signature.return_type,
                                context.get_constant(types.int64, slot), arg_slot)

        return spec.restype(args), codegen

    # A plain function of the kernel's arity around call, inlined where it is used.
    code = spec.kernel.py_func.__code__
    params = ", ".join(code.co_varnames[:code.co_argcount])
    scope = {"call": call}
    source = f"def {name}({params}):\n    return call(({params},))\n"
    exec(compile(source, __file__, "exec"), scope)  # this file: Numba wants a real one
    return njit(**INLINED)(scope[name])


def unit(name, kernel, argtypes, restype=types.none, packed=False, cost=None, prepare=None):
    """Declare a unit (register) and return its caller: how a kernel's module declares the unit
    of a kernel beside it, so that the network calls ``module.<name>_unit(...)``."""
    register(name, kernel, argtypes, restype, packed, cost, prepare)
    return caller(name)


def caller_by_code(names):
    """An @njit-callable f(code, args) that calls unit names[code] with the tuple args (the
    units of names are packed, with equal argument types); names[0] for a code outside."""
    first = names[0]

    @intrinsic
    def call(typingctx, code, args):
        declared, dt = _unit_types(typingctx, first, args)
        slots = [_slot(name, dt) for name in names]

        def codegen(context, builder, signature, llargs):
            values = [builder.extract_value(llargs[1], i) for i in range(len(args))]
            arg_slot = _pack(context, builder, args, declared, values)
            i64 = ir.IntType(64)
            table = ir.Constant(ir.ArrayType(i64, len(slots)), slots)
            lookup = cgutils.global_constant(builder, f"fastbp_slots_{first}_{dt}", table)
            code_ = context.cast(builder, llargs[0], signature.args[0], types.int64)
            # A code outside the table takes names[0]'s unit (the identity), never a slot
            # read from beyond the lookup table.
            known = builder.icmp_unsigned("<", code_, ir.Constant(i64, len(slots)))
            code_ = builder.select(known, code_, ir.Constant(i64, 0))
            slot = builder.load(builder.gep(lookup, [ir.Constant(ir.IntType(32), 0), code_]))
            return _call_packed(context, builder, types.none, slot, arg_slot)

        return types.none(code, args), codegen
    return call


def _borrowed(context, builder, ty, value):
    """An array as the unit sees it: without its reference-counting handle, so that the
    unit's taking and dropping a reference costs nothing (the caller keeps it alive)."""
    if not isinstance(ty, types.Array):
        return value
    array = context.make_array(ty)(context, builder, value=value)
    array.meminfo = cgutils.get_null_value(array.meminfo.type)
    array.parent = cgutils.get_null_value(array.parent.type)
    return array._getvalue()


# What compiled code raises when a slot stays empty: the caller stops there. (Inside a unit, a
# C function, Numba prints it instead and the unit returns; fastbp's Python layer then raises
# the reason through raise_if_unfilled.)
_UNFILLED_MESSAGE = (
    "fastbp: compiled code called a fastbp kernel (a unit) that could not be loaded, and "
    "stopped. Most often your own @njit code was cached against another version of fastbp: "
    "delete that cache (its __pycache__/*.nbi and *.nbc files, or the NUMBA_CACHE_DIR folder) "
    "and run again. fastbp.kernels.raise_if_unfilled() raises the reason.")


def _call_slot(context, builder, slot, arg_slot, ret_slot):
    """Call the table's entry `slot` (an int64 value) as void(i8*, i8*); fill an empty entry
    first, and raise UnitMissingError if it stays empty."""
    module = builder.module
    i8p = ir.IntType(8).as_pointer()
    table = module.globals.get("fastbp_unit_table")
    if table is None:
        table = ir.GlobalVariable(module, ir.ArrayType(i8p, TABLE_SIZE), "fastbp_unit_table")
    entry = builder.gep(table, [ir.Constant(ir.IntType(32), 0), slot])
    with builder.if_then(cgutils.is_null(builder, builder.load(entry)), likely=False):
        fill = cgutils.get_or_insert_function(
            module, ir.FunctionType(ir.VoidType(), [ir.IntType(64)]), "fastbp_unit_ensure")
        builder.call(fill, [slot])
    address = builder.load(entry)
    with builder.if_then(cgutils.is_null(builder, address), likely=False):
        context.call_conv.return_user_exc(builder, UnitMissingError, (_UNFILLED_MESSAGE,))
    fnty = ir.FunctionType(ir.VoidType(), [i8p, i8p])
    builder.call(builder.bitcast(address, fnty.as_pointer()),
                 [builder.bitcast(arg_slot, i8p), builder.bitcast(ret_slot, i8p)])
