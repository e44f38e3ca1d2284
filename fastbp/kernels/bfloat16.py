"""bfloat16 operands for the matrix products of a float32 model: each operand rounded to
bfloat16 (8 bits of mantissa, float32's range), products accumulated in float32, as PyTorch's
bfloat16 autocast and CPUs' bfloat16 units (AMX, AVX512-BF16) do. Everything else (parameters,
gradients, the optimizer, losses, norms, activations) stays float32.

A bfloat16 value is held as its bit pattern: the upper half of the float32's. Operands are
rounded into a uint16 buffer just before their products (round to nearest, ties to even; NaN
stays NaN; a value beyond bfloat16's largest becomes Inf) and multiplied by a library's product
of bfloat16 operands with float32 sums, at one thread per call like the float32 products:
oneDNN's dnnl_gemm_bf16bf16f32 where the onednn-cpu-gomp wheel is installed, else MKL's
gemm_bf16bf16f32 (require_bfloat16). Measured on AMD Zen 5 (AVX512-BF16, README), oneDNN's ran
at about twice OpenBLAS's AVX-512 float32 rate, MKL's below OpenBLAS's AVX2 one.

Emulation: the same bit patterns viewed as int16 are multiplied by compiled loops here instead
(each product of two bfloat16 values is exact in float32, and the sums are float32's), on any
CPU and without MKL: slow, for checking results where the CPU has no bfloat16 unit. They sit
behind a gemm symbol of their own (register_bfloat16_emulation), so the layers' tiles call
_native.blas_gemm alike for every kind of operand.

Precisions, by code (a Net's ``precision``): FLOAT32 (the model's own dtype: no rounding),
BFLOAT16 (oneDNN's or MKL's products), BFLOAT16_EMULATED.
"""
import functools
import inspect
import os
import warnings

import numpy as np
from numba import carray, cfunc, njit, prange, types

from ._checks import arguments, require
from ._config import C_FUNCTION, INLINED, PARALLEL, SERIAL
from ._native import (CPU_BF16, Bfloat16Unavailable, float32_bits, float32_from_bits,
                      load_bfloat16_gemm, load_onednn, onednn_gemm_bf16, register_gemm)
from ._tiling import n_tiles, span

FLOAT32, BFLOAT16, BFLOAT16_EMULATED = 0, 1, 2
#: The precisions' names, by code.
PRECISIONS = ("float32", "bfloat16", "bfloat16-emulated")
_QUIET_NAN = 0x7FC0


def cpu_bfloat16_units():
    """This CPU's bfloat16 matrix units: {"amx_bf16": bool, "avx512_bf16": bool}."""
    return dict(CPU_BF16)


#: The libraries whose bfloat16 products require_bfloat16 can load, in the order it tries them.
BFLOAT16_LIBRARIES = ("onednn", "mkl")
_library = []   # (name, description) of the one loaded: one per process
_products = []  # the C functions registered as products


def require_bfloat16(library=None):
    """Check that BFLOAT16 products can run here and ready them (plain Python): the CPU has
    AMX-BF16 or AVX512-BF16, and a library of bfloat16 products loads: `library` ("onednn",
    "mkl"), or by default oneDNN where the onednn-cpu-gomp wheel is installed, else MKL. One
    library per process (code compiled for one calls it). Returns the library's name and
    version; raises Bfloat16Unavailable naming what is missing and the alternatives."""
    if library not in (None, *BFLOAT16_LIBRARIES):
        raise ValueError(f"library: expected one of {', '.join(map(repr, BFLOAT16_LIBRARIES))} "
                         f"or None, got {library!r}")
    if not any(CPU_BF16.values()):
        raise Bfloat16Unavailable(
            "matmul_precision='bfloat16': this CPU has no bfloat16 matrix unit (neither "
            "AMX-BF16 nor AVX512-BF16); use 'float32', or 'bfloat16-emulated' to check "
            "bfloat16 results here (slow)")
    if _library:
        name, description = _library[0]
        if library not in (None, name):
            raise Bfloat16Unavailable(f"bfloat16 products: this process runs {description}'s; "
                                      f"{library} cannot replace it (start a new process)")
        return description
    try:
        name, description = _load_library(library)
    except Bfloat16Unavailable as exc:
        raise Bfloat16Unavailable(f"matmul_precision='bfloat16': {exc}") from None
    _library.append((name, description))
    if name == "mkl" and not CPU_BF16.get("amx_bf16"):
        _warn_without_amx()
    return description


def prepare_bfloat16_product():
    """What the bfloat16 units call before they are compiled or loaded (their `prepare`): the
    product require_bfloat16 loaded in this process, or else its default library's where one
    loads (a compile worker's; else the stand-in stays, and the units refuse to run)."""
    if not _library:
        try:
            _library.append(_load_library(None))
        except Bfloat16Unavailable:
            pass


def _load_library(library):
    """(name, description) of the bfloat16 product require_bfloat16 loads and registers."""
    if library in (None, "onednn"):
        version = load_onednn()
        if version is not None:
            _products.append(_onednn_product())   # (kept: the kernels call its code)
            register_gemm(types.uint16, _products[-1].address)
            return "onednn", f"oneDNN {version}"
        if library == "onednn":
            raise Bfloat16Unavailable("oneDNN is not installed: pip install 'fastbp[bf16]' "
                                      "(or pip install onednn-cpu-gomp)")
    try:
        return "mkl", f"MKL {load_bfloat16_gemm()}"
    except Bfloat16Unavailable as exc:
        if library is None and "not installed" in str(exc):
            raise Bfloat16Unavailable(
                "bfloat16 products need oneDNN (the onednn-cpu-gomp wheel, Linux x86-64) or "
                "Intel MKL, and neither is installed: pip install 'fastbp[bf16]'") from None
        raise


def _onednn_product():
    """A C function of Fortran gemm's contract for uint16 bit patterns (what the kernels' tiles
    call through _native's symbol) that calls oneDNN's row-major product: column-major c
    (m, n) = op(a) op(b) is row-major c (n, m) = op(b) op(a), the same flags."""
    i8, i32, f32, u16 = (types.CPointer(t) for t in (types.int8, types.int32, types.float32,
                                                      types.uint16))

    def gemm_onednn(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        onednn_gemm_bf16(tb[0], ta[0], n[0], m[0], k[0], alpha[0], b, ldb[0], a, lda[0],
                         beta[0], c, ldc[0])
    return cfunc(types.void(i8, i8, i32, i32, i32, f32, u16, i32, u16, i32, f32, f32, i32),
                 **C_FUNCTION)(gemm_onednn)


@functools.lru_cache(maxsize=None)
def _warn_without_amx():
    """Once a process: measured on AVX512-BF16 without AMX, MKL's bfloat16 products ran below
    OpenBLAS's float32 ones (the README's bfloat16 section)."""
    warnings.warn("matmul_precision='bfloat16': this CPU has AVX512-BF16 but no AMX, where "
                  "MKL's bfloat16 products measured slower than float32 (fastbp's bfloat16 "
                  "step 0.68-0.81x its float32 step's speed); float32 is likely faster here, "
                  "and oneDNN's bfloat16 products are faster than MKL's (pip install "
                  "onednn-cpu-gomp)",
                  stacklevel=_first_caller_outside_fastbp())


def _first_caller_outside_fastbp():
    """The stacklevel of warnings.warn, called here, that names the first caller outside
    the fastbp package (the user's line that asked for bfloat16)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame, level = inspect.currentframe().f_back, 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    return level


@njit(**INLINED)
def bfloat16_bits(x):
    """The bfloat16 nearest to the float32 x (ties to even), as its uint32 bit pattern."""
    bits = float32_bits(x)
    if x != x:
        return np.uint32(_QUIET_NAN)   # (rounding a NaN's payload could carry into Inf)
    return (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16


@njit(**INLINED)
def bfloat16_value(bits):
    """The float32 value of a bfloat16 bit pattern (any 16-bit integer type)."""
    return float32_from_bits((np.uint32(bits) & 0xFFFF) << 16)


@njit(**SERIAL)
def _round_rows(dst, src, r0, r1):
    for i in range(r0, r1):
        out, row = dst[i], src[i]
        for j in range(row.shape[0]):
            out[j] = bfloat16_bits(row[j])


@njit(**PARALLEL)
def round_to_bfloat16(dst, src):
    """dst (R, C) := src (R, C) float32 rounded to bfloat16, as bit patterns (dst's dtype:
    uint16 or int16), split into row tiles over the threads."""
    _round_arguments(dst, src)
    require(dst.shape == src.shape, "round_to_bfloat16: dst must be (R, C) as src")
    n_rows, n_cols = src.shape
    tiles = n_tiles(n_rows, n_cols)
    if tiles == 1:
        _round_rows(dst, src, 0, n_rows)
        return
    for t in prange(tiles):
        r0, r1 = span(t, tiles, n_rows)
        _round_rows(dst, src, r0, r1)


_round_arguments = arguments("round_to_bfloat16", any_layout=True, dst="bits_matrix",
                             src="float32_matrix")


@njit(**SERIAL)
def _gemm_emulated(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """Fortran gemm's contract (column-major; a and b bfloat16 bit patterns): c := alpha *
    op(a) @ op(b) + beta * c, op(a) (m, k), op(b) (k, n), each product exact in float32, the
    sums float32's, in order over k. ta, tb: ord('N') or ord('T')."""
    for j in range(n):
        column = c[j * ldc:j * ldc + m]
        for i in range(m):
            column[i] = 0 if beta == 0 else beta * column[i]
        for p in range(k):
            scale = alpha * bfloat16_value(b[j * ldb + p] if tb == 78 else b[p * ldb + j])
            for i in range(m):
                column[i] += scale * bfloat16_value(a[p * lda + i] if ta == 78 else
                                                    a[i * lda + p])


_emulated = []   # the emulated product's cfunc, once registered


def register_bfloat16_emulation():
    """Register _gemm_emulated (compiled, or loaded from Numba's cache) as the product of int16
    bit patterns (_native's gemm symbol for them): what the emulated units call."""
    if _emulated:
        return
    i8, i32, f32, i16 = (types.CPointer(t) for t in (types.int8, types.int32, types.float32,
                                                      types.int16))

    def gemm_emulated(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        a_array = carray(a, (lda[0] * (k[0] if ta[0] == 78 else m[0]),))
        b_array = carray(b, (ldb[0] * (n[0] if tb[0] == 78 else k[0]),))
        _gemm_emulated(ta[0], tb[0], m[0], n[0], k[0], alpha[0], a_array, lda[0], b_array,
                       ldb[0], beta[0], carray(c, (ldc[0] * n[0],)), ldc[0])
    function = cfunc(types.void(i8, i8, i32, i32, i32, f32, i16, i32, i16, i32, f32, f32, i32),
                     **C_FUNCTION)(gemm_emulated)
    register_gemm(types.int16, function.address)
    _emulated.append(function)
