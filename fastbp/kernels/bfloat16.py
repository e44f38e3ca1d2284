"""bfloat16 operands for the matrix products of a float32 model: each operand rounded to
bfloat16 (8 bits of mantissa, float32's range), products accumulated in float32, as PyTorch's
bfloat16 autocast and CPUs' bfloat16 units (AMX, AVX512-BF16) do. Everything else (parameters,
gradients, the optimizer, losses, norms, activations) stays float32.

A bfloat16 value is held as its bit pattern: the upper half of the float32's. Operands are
rounded into a uint16 buffer just before their products (round to nearest, ties to even; NaN
stays NaN; a value beyond bfloat16's largest becomes Inf) and multiplied by MKL's
gemm_bf16bf16f32 (_native.load_bfloat16_gemm), at one thread per call like the float32 products.

Emulation: the same bit patterns viewed as int16 are multiplied by compiled loops here instead
(each product of two bfloat16 values is exact in float32, and the sums are float32's), on any
CPU and without MKL: slow, for checking results where the CPU has no bfloat16 unit.

Precisions, by code (a Net's ``precision``): FLOAT32 (the model's own dtype: no rounding),
BFLOAT16 (MKL), BFLOAT16_EMULATED.
"""
import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from ._config import INLINED, PARALLEL, SERIAL
from ._native import (CPU_BF16, Bfloat16Unavailable, float32_bits, float32_from_bits, gemm,
                      load_bfloat16_gemm)
from ._tiling import n_tiles, span

FLOAT32, BFLOAT16, BFLOAT16_EMULATED = 0, 1, 2
#: The precisions' names, by code.
PRECISIONS = ("float32", "bfloat16", "bfloat16-emulated")
_QUIET_NAN = 0x7FC0


def cpu_bfloat16_units():
    """This CPU's bfloat16 matrix units: {"amx_bf16": bool, "avx512_bf16": bool}."""
    return dict(CPU_BF16)


def require_bfloat16():
    """Check that BFLOAT16 products can run here and ready them (plain Python): the CPU has
    AMX-BF16 or AVX512-BF16, and MKL loads. Returns MKL's version; raises
    Bfloat16Unavailable naming what is missing and the alternatives."""
    if not any(CPU_BF16.values()):
        raise Bfloat16Unavailable(
            "matmul_precision='bfloat16': this CPU has no bfloat16 matrix unit (neither "
            "AMX-BF16 nor AVX512-BF16); use 'float32', or 'bfloat16-emulated' to check "
            "bfloat16 results here (slow)")
    try:
        return load_bfloat16_gemm()
    except Bfloat16Unavailable as exc:
        raise Bfloat16Unavailable(f"matmul_precision='bfloat16': {exc}") from None


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
    n_rows, n_cols = src.shape
    tiles = n_tiles(n_rows, n_cols)
    if tiles == 1:
        _round_rows(dst, src, 0, n_rows)
        return
    for t in prange(tiles):
        r0, r1 = span(t, tiles, n_rows)
        _round_rows(dst, src, r0, r1)


@njit(**SERIAL)
def _gemm_emulated(c, a, b, alpha, beta, trans_a, trans_b):
    """gemm's contract for bfloat16 bit patterns a and b (int16): op(a) @ op(b) in float32."""
    m, n = c.shape
    k = a.shape[0] if trans_a else a.shape[1]
    for i in range(m):
        row = c[i]
        for j in range(n):
            row[j] = 0 if beta == 0 else beta * row[j]
        for p in range(k):
            scale = np.float32(alpha) * bfloat16_value(a[p, i] if trans_a else a[i, p])
            if trans_b:
                for j in range(n):
                    row[j] += scale * bfloat16_value(b[j, p])
            else:
                other = b[p]
                for j in range(n):
                    row[j] += scale * bfloat16_value(other[j])


def product(c, a, b, alpha, beta, trans_a, trans_b):
    """gemm (c := alpha op(a) @ op(b) + beta c) for operands of any kind the layers use: the
    model's dtype (BLAS), bfloat16 bit patterns as uint16 (MKL) or as int16 (emulated)."""
    raise NotImplementedError("compiled code only")


@overload(product, jit_options=SERIAL)
def _product_impl(c, a, b, alpha, beta, trans_a, trans_b):
    if a.dtype == types.int16:
        return lambda c, a, b, alpha, beta, trans_a, trans_b: _gemm_emulated(
            c, a, b, alpha, beta, trans_a, trans_b)
    return lambda c, a, b, alpha, beta, trans_a, trans_b: gemm(
        c, a, b, alpha, beta, trans_a, trans_b)

