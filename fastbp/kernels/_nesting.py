"""Nested parallel loops under Numba's workqueue threading layer: run, each on its own thread.

A kernel that opens a parallel region, called from inside a caller's own ``prange`` loop, opens a
region within a region. The OpenMP and TBB layers run that; the workqueue layer (what Numba
falls back to where neither loads) aborts the whole process ("Concurrent access has been
detected"), and an exception raised instead would be lost: Numba drops what a function called
in a ``prange`` body raises. So under workqueue, and only there, fastbp puts itself in front of
the layer's entry point (the ``numba_parallel_for`` symbol that every compiled parallel loop
calls): a loop opened while another holds the pool runs on the thread that opens it, serially,
its iterations in their order, as the layer would run them on a pool of one; every other loop
goes to the layer as before. The outer loop keeps every core busy, and the kernels' results do not
depend on how many threads ran them (their tiles follow the shapes).

Under workqueue one loop at a time can hold the pool (a loop opened while another runs is nested
in it, or comes from another thread, which also aborted): a flag, set and cleared by the one
loop that holds the pool (an atomic compare-and-swap), tells the others, and after a fork the
child starts with it clear. This covers the loops of code compiled or loaded from Numba's cache
after fastbp's import (fastbp's own kernels and the code that calls them), where the symbol is
resolved.
"""
import ctypes
import os

import numba
from llvmlite import binding as llvm
from llvmlite import ir
from numba import cfunc, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._config import C_FUNCTION

# 1 while a loop holds the workqueue layer's pool (only under workqueue; see install).
_busy = ctypes.c_int64(0)
llvm.add_symbol("fastbp_workqueue_busy", ctypes.addressof(_busy))


def _busy_flag(builder):
    flag = builder.module.globals.get("fastbp_workqueue_busy")
    if flag is None:
        flag = ir.GlobalVariable(builder.module, ir.IntType(64), "fastbp_workqueue_busy")
    return flag


@intrinsic
def _take_pool(typingctx):
    """Set the busy flag if it is clear; whether this call set it (then this loop holds the
    pool, and must give it back)."""
    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        pair = builder.cmpxchg(_busy_flag(builder), ir.Constant(i64, 0), ir.Constant(i64, 1),
                               "seq_cst", "seq_cst")
        return builder.extract_value(pair, 1)
    return types.boolean(), codegen


@intrinsic
def _give_pool(typingctx):
    def codegen(context, builder, signature, args):
        builder.store_atomic(ir.Constant(ir.IntType(64), 0), _busy_flag(builder), "seq_cst",
                             align=8)
        return context.get_dummy_value()
    return types.void(), codegen


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
    if _take_pool():
        _layer_parallel_for(fn, args, dims, steps, data, inner_ndim, n_arrays, n_threads)
        _give_pool()
    else:   # nested in the loop that holds the pool (or beside it, from another thread)
        _run_gufunc(fn, args, dims, steps, data)


_shim = None   # the compiled _parallel_for (kept alive: the symbol points into it)


def _clear_after_fork():
    _busy.value = 0


def install_for_workqueue():
    """Under the workqueue layer, put _parallel_for in front of it (see the module docstring);
    under the others, nothing."""
    global _shim
    if numba.threading_layer() != "workqueue" or _shim is not None:
        return
    from numba.np.ufunc import workqueue
    llvm.add_symbol("fastbp_workqueue_parallel_for", workqueue.parallel_for)
    _shim = cfunc(types.void(_VP, _VP, _VP, _VP, _VP, types.intp, types.intp, types.intp),
                  **C_FUNCTION)(_parallel_for)
    llvm.add_symbol("numba_parallel_for", _shim.address)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_clear_after_fork)
