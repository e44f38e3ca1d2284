"""gemm, bfloat16 rounding and the dense layer's bfloat16 kernels refuse what they cannot
survive, from Python and from @njit code (see refusals.py), leaving every array as it was."""
from refusals import run_refusals

SETUP = """
f32 = np.float32
k.register_bfloat16_emulation()
c = np.zeros((3, 4)); a = np.ones((3, 5)); b = np.ones((5, 4))
wide = np.ones((5, 8))
src = np.ones((4, 3), f32); dst = np.zeros((4, 3), np.uint16)
x = np.ones((4, 3), f32); w = np.ones((3, 2), f32); bias = np.zeros(2, f32)
out = np.zeros((4, 2), f32)
x_bits = np.zeros(12, np.int16); w_bits = np.zeros(6, np.int16)
dx = np.zeros_like(x); dw = np.zeros_like(w); db = np.zeros_like(bias); dpre = np.ones_like(out)
rows_bits = np.zeros(4 * (3 + 2), np.int16)
"""

FORWARD = "out, out[:0], x, w, bias, 1"
BACKWARD = "dx, dw, db, dpre, x"

CASES = [
    # label, kernel, arguments, exception, text
    ("gemm: a's rows", "gemm", "c, a[:2], b, 1.0, 0.0, False, False", "ValueError",
     "gemm: op(a) must have as many rows as c (M)"),
    ("gemm: a transposed", "gemm", "c, a, b, 1.0, 0.0, True, False", "ValueError",
     "gemm: op(a) must have as many rows as c"),
    ("gemm: inner size", "gemm", "c, a, b[:4], 1.0, 0.0, False, False", "ValueError",
     "gemm: op(b) must have as many rows as op(a) has columns (K)"),
    ("gemm: b transposed", "gemm", "c, a, b, 1.0, 0.0, False, True", "ValueError",
     "gemm: op(b) must have as many rows as op(a) has columns"),
    ("gemm: c's columns", "gemm", "c, a, wide, 1.0, 0.0, False, False", "ValueError",
     "gemm: op(b) must have as many columns as c (N)"),
    ("gemm: strided columns", "gemm", "c, a, wide[:, ::2], 1.0, 0.0, False, False",
     "ValueError", "gemm: b must have unit stride along its last axis"),
    ("gemm: rows backwards", "gemm", "c[::-1], a, b, 1.0, 0.0, False, False", "ValueError",
     "gemm: c's rows must not overlap or run backwards"),
    ("gemm: Fortran a", "gemm", "c, np.asfortranarray(a), b, 1.0, 0.0, False, False",
     "TypeError", "gemm: a is Fortran-ordered"),
    ("gemm: dtypes", "gemm", "c, a.astype(f32), b, 1.0, 0.0, False, False", "TypeError",
     "gemm: a and b must both be of c's dtype"),
    ("gemm: bits for a float64 c", "gemm",
     "c, a.astype(np.int16), b.astype(np.int16), 1.0, 0.0, False, False", "TypeError",
     "for a float32 c; got a int16, b int16, c float64"),
    ("gemm: 1-D b", "gemm", "c, a, b[0], 1.0, 0.0, False, False", "TypeError",
     "gemm: b must be a 2-D float32 or float64 array, or uint16 or int16"),
    ("round: shapes", "round_to_bfloat16", "dst[:3], src", "ValueError",
     "round_to_bfloat16: dst must be (R, C) as src"),
    ("round: float64", "round_to_bfloat16", "dst, src.astype(np.float64)", "TypeError",
     "round_to_bfloat16: src must be a 2-D float32 array"),
    ("round: float dst", "round_to_bfloat16", "src.copy(), src", "TypeError",
     "round_to_bfloat16: dst must be a 2-D uint16 or int16 array"),
    ("forward: inp_bits short", "dense_forward_bf16", f"{FORWARD}, x_bits[:11], w_bits",
     "ValueError", "dense_forward_bf16: inp_bits must hold B * C bit patterns"),
    ("forward: weight_bits short", "dense_forward_bf16", f"{FORWARD}, x_bits, w_bits[:5]",
     "ValueError", "dense_forward_bf16: weight_bits must hold C * OC bit patterns"),
    ("forward: pre", "dense_forward_bf16", "out, out[:2], x, w, bias, 5, x_bits, w_bits",
     "ValueError", "dense_forward_bf16: pre must be (B, OC) as out, or have no rows"),
    ("forward: fan-in", "dense_forward_bf16",
     "out, out[:0], x, np.ones((4, 2), f32), bias, 1, x_bits, np.zeros(8, np.int16)",
     "ValueError", "dense_forward_bf16: weight must have as many rows as inp has columns"),
    ("forward: activation", "dense_forward_bf16", "out, out[:0], x, w, bias, 99, x_bits, w_bits",
     "ValueError", "dense_forward_bf16: activation must be one of kernels.CODES"),
    ("forward: float64", "dense_forward_bf16", "out.astype(np.float64), out[:0], x, w, bias, 1, "
     "x_bits, w_bits", "TypeError", "dense_forward_bf16: out must be a 2-D float32 array"),
    ("forward: float bits", "dense_forward_bf16", f"{FORWARD}, x_bits.astype(f32), w_bits",
     "TypeError", "dense_forward_bf16: inp_bits must be a 1-D uint16 or int16 array"),
    ("backward: weight_bits short", "dense_backward_bf16",
     f"{BACKWARD}, w_bits[:5], 1, None, rows_bits", "ValueError",
     "dense_backward_bf16: weight_bits must hold C * OC bit patterns"),
    ("backward: rows_bits short", "dense_backward_bf16",
     f"{BACKWARD}, w_bits, 1, None, rows_bits[:19]", "ValueError",
     "dense_backward_bf16: rows_bits must hold B * (C + OC) bit patterns"),
    ("backward: dweight", "dense_backward_bf16", "dx, dw[:2], db, dpre, x, w_bits, 1, None, "
     "rows_bits", "ValueError", "dense_backward_bf16: dweight must be (C, OC)"),
    ("backward: gelu without inp_pre", "dense_backward_bf16",
     f"{BACKWARD}, w_bits, 5, None, rows_bits", "ValueError", "needs inp"),
    ("backward: dtypes", "dense_backward_bf16",
     "dx, dw, db.astype(np.float64), dpre, x, w_bits, 1, None, rows_bits", "TypeError",
     "dbias is float64 but dinp is float32"),
]


def test_products_refuse_bad_arguments():
    assert run_refusals(SETUP, CASES) == []


UNREGISTERED = SETUP.replace("k.register_bfloat16_emulation()\n", "")


def test_bfloat16_layers_refuse_to_run_before_their_product_is_registered():
    """Before register_bfloat16_emulation() (or require_bfloat16()), the products' symbols
    resolve to a stand-in that computes nothing: the layers refuse instead of returning
    what the stand-in left."""
    cases = [(f"{kernel} unregistered", kernel, args, "ValueError",
              "no bfloat16 product was registered")
             for kernel, args in (("dense_forward_bf16", FORWARD + ", x_bits, w_bits"),
                                  ("dense_backward_bf16",
                                   BACKWARD + ", w_bits, 1, None, rows_bits"))]
    assert run_refusals(UNREGISTERED, cases) == []
