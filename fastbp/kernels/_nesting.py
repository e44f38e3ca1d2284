"""Nested parallelism under Numba's workqueue threading layer: run, one thread per nested region.

A kernel that opens a parallel region, called from inside a caller's own ``prange`` loop, opens a
region within a region. The OpenMP and TBB layers run that; the workqueue layer (what Numba
falls back to where neither loads) aborts the whole process ("Concurrent access has been
detected"), and an exception raised instead would be lost: Numba drops what a function called
in a ``prange`` body raises. So under workqueue, and only there, fastbp puts itself in front of
the layer's entry point (the ``numba_parallel_for`` symbol that every compiled parallel loop
calls): a loop opened on one of the pool's worker threads runs on that thread, serially, its
iterations in their order, as the layer would run them on a pool of one; every other loop goes
to the layer as before. The outer loop keeps every core busy, and the kernels' results do not
depend on how many threads ran them (their tiles follow the shapes).

Under workqueue every iteration of a parallel loop runs on a worker thread, never on the thread
that opened the loop, so a loop opened on a worker is a nested one. The workers are listed once,
at import, by a parallel loop that records the thread it runs on. This covers the loops of code
compiled or loaded from Numba's cache after fastbp's import (fastbp's own kernels and the code
that calls them), where the symbol is resolved.
"""
import ctypes
import sys

import numba
import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir
from numba import cfunc, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._config import C_FUNCTION, INLINED, PARALLEL

_MAX_WORKERS = 1024
_workers = (ctypes.c_uint64 * _MAX_WORKERS)()
_n_workers = ctypes.c_int64(0)
llvm.add_symbol("fastbp_workqueue_workers", ctypes.addressof(_workers))
llvm.add_symbol("fastbp_workqueue_n_workers", ctypes.addressof(_n_workers))


def _thread_self_address():
    """The C function that names the calling thread (pthread_self; GetCurrentThreadId)."""
    if sys.platform == "win32":
        return ctypes.cast(ctypes.windll.kernel32.GetCurrentThreadId, ctypes.c_void_p).value
    return ctypes.cast(ctypes.CDLL(None).pthread_self, ctypes.c_void_p).value


llvm.add_symbol("fastbp_thread_self", _thread_self_address())


@intrinsic
def _thread_self(typingctx):
    """The calling thread's id, as a uint64."""
    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.IntType(64), [])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "fastbp_thread_self")
        return builder.call(fn, [])
    return types.uint64(), codegen


def _global_i64(builder, name, index=None):
    """The i64 at symbol `name` (an array of them: element index)."""
    gv = builder.module.globals.get(name)
    if gv is None:
        gv = ir.GlobalVariable(builder.module, ir.IntType(64), name)
    ptr = gv if index is None else builder.gep(gv, [index])
    return builder.load(ptr)


@intrinsic
def _worker_count(typingctx):
    def codegen(context, builder, signature, args):
        return _global_i64(builder, "fastbp_workqueue_n_workers")
    return types.int64(), codegen


@intrinsic
def _worker(typingctx, i):
    def codegen(context, builder, signature, args):
        return _global_i64(builder, "fastbp_workqueue_workers", args[0])
    return types.uint64(types.int64), codegen


@njit(**INLINED)
def nested_under_workqueue():
    """Whether the calling thread is one of the workqueue layer's workers: then a parallel
    loop opened here is nested in another. Always False under the other layers."""
    n = _worker_count()
    if n == 0:
        return False
    me = _thread_self()
    for i in range(n):
        if _worker(i) == me:
            return True
    return False


@njit(**PARALLEL)
def _record_threads(out):
    for i in prange(out.shape[0]):
        out[i] = _thread_self()


@intrinsic
def _run_gufunc(typingctx, fn, args, dims, steps, data):
    """fn(args, dims, steps, data): a parallel loop's body over all of its iterations."""
    def codegen(context, builder, signature, llargs):
        i8p = ir.IntType(8).as_pointer()
        intp_p = context.get_value_type(types.intp).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i8p.as_pointer(), intp_p, intp_p, i8p])
        target = builder.bitcast(llargs[0], fnty.as_pointer())
        builder.call(target, [builder.bitcast(llargs[1], i8p.as_pointer()),
                              builder.bitcast(llargs[2], intp_p),
                              builder.bitcast(llargs[3], intp_p), llargs[4]])
        return context.get_dummy_value()
    return types.void(fn, args, dims, steps, data), codegen


@intrinsic
def _layer_parallel_for(typingctx, fn, args, dims, steps, data, inner_ndim, n_arrays, n_threads):
    """The workqueue layer's own parallel_for."""
    def codegen(context, builder, signature, llargs):
        i8p = ir.IntType(8).as_pointer()
        intp = context.get_value_type(types.intp)
        fnty = ir.FunctionType(ir.VoidType(), [i8p] * 5 + [intp] * 3)
        target = cgutils.get_or_insert_function(builder.module, fnty,
                                                "fastbp_workqueue_parallel_for")
        builder.call(target, llargs)
        return context.get_dummy_value()
    return types.void(fn, args, dims, steps, data, inner_ndim, n_arrays, n_threads), codegen


_VP = types.voidptr


def _parallel_for(fn, args, dims, steps, data, inner_ndim, n_arrays, n_threads):
    if nested_under_workqueue():
        _run_gufunc(fn, args, dims, steps, data)
    else:
        _layer_parallel_for(fn, args, dims, steps, data, inner_ndim, n_arrays, n_threads)


_shim = None   # the compiled _parallel_for (kept alive: the symbol points into it)


def install_for_workqueue():
    """Under the workqueue layer, list its worker threads and put _parallel_for in front of it
    (see the module docstring); under the others, nothing."""
    global _shim
    if numba.threading_layer() != "workqueue" or _shim is not None:
        return
    from numba.np.ufunc import workqueue
    llvm.add_symbol("fastbp_workqueue_parallel_for", workqueue.parallel_for)
    pool = numba.config.NUMBA_NUM_THREADS
    previous = numba.get_num_threads()
    numba.set_num_threads(pool)
    try:
        seen = np.zeros(64 * pool, np.uint64)
        _record_threads(seen)
    finally:
        numba.set_num_threads(previous)
    ids = sorted(set(seen.tolist()))[:_MAX_WORKERS]
    for i, thread in enumerate(ids):
        _workers[i] = thread
    _n_workers.value = len(ids)
    _shim = cfunc(types.void(_VP, _VP, _VP, _VP, _VP, types.intp, types.intp, types.intp),
                  **C_FUNCTION)(_parallel_for)
    llvm.add_symbol("numba_parallel_for", _shim.address)
