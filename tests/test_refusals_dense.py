"""The dense kernels refuse what they cannot survive, from Python and from @njit code (see
refusals.py), leaving their outputs as they were."""
from refusals import run_refusals

SETUP = """
f32 = np.float32
x = np.ones((4, 3), f32); w = np.ones((3, 2), f32); b = np.zeros(2, f32)
out = np.zeros((4, 2), f32)
dx = np.zeros_like(x); dw = np.zeros_like(w); db = np.zeros_like(b); dpre = np.ones_like(out)
wide_w = np.ones((3, 4), f32)
"""

CASES = [
    # label, kernel, arguments, exception, text
    ("fan-in", "dense_forward", "out, x, np.ones((5, 2), f32), b, 1", "ValueError",
     "weight must have as many rows as inp has columns"),
    ("out too small", "dense_forward", "out[:2], x, w, b, 1", "ValueError",
     "out must be (B, OC)"),
    ("bias", "dense_forward", "out, x, w, np.zeros(5, f32), 1", "ValueError",
     "bias must have OC elements"),
    ("activation code", "dense_forward", "out, x, w, b, 99", "ValueError",
     "activation must be one of kernels.CODES"),
    ("negative code", "dense_forward", "out, x, w, b, -1", "ValueError",
     "activation must be one of kernels.CODES"),
    ("pre shape", "dense_forward", "out, x, w, b, 5, None, np.zeros((3, 2), f32)", "ValueError",
     "pre must be (B, OC)"),
    ("dtypes", "dense_forward", "out, x.astype(np.float64), w, b, 1", "TypeError",
     "inp is float64 but out is float32"),
    ("Fortran weight", "dense_forward", "out, x, np.asfortranarray(wide_w)[:, :2], b, 1",
     "TypeError", "weight is Fortran-ordered"),
    ("strided columns", "dense_forward", "out, x, wide_w[:, ::2], b, 1", "ValueError",
     "weight must have unit stride along its last axis"),
    ("rows backwards", "dense_forward", "out[::-1], x, w, b, 1", "ValueError",
     "out's rows must not overlap or run backwards"),
    ("integer x", "dense_forward", "out, x.astype(np.int64), w, b, 1", "TypeError",
     "inp must be a 2-D float32 or float64 array"),
    ("1-D weight", "dense_forward", "out, x, b, b, 1", "TypeError",
     "weight must be a 2-D float32 or float64 array"),
    ("code as float", "dense_forward", "out, x, w, b, 1.0", "TypeError",
     "activation must be an integer"),
    ("backward code", "dense_backward", "dx, dw, db, dpre, x, w, 99", "ValueError",
     "inp_activation must be one of kernels.CODES"),
    ("backward dpre rows", "dense_backward", "dx, dw, db, dpre[:3], x, w, 1", "ValueError",
     "dpre must have as many rows as inp"),
    ("backward dweight", "dense_backward", "dx, dw[:2], db, dpre, x, w, 1", "ValueError",
     "dweight must be (C, OC)"),
    ("backward dbias", "dense_backward", "dx, dw, db[:1], dpre, x, w, 1", "ValueError",
     "dbias must have OC elements"),
    ("backward dinp", "dense_backward", "dx[:, :2], dw, db, dpre, x, w, 1", "ValueError",
     "dinp must be (B, C) as inp"),
    ("backward weight", "dense_backward", "dx, dw, db, dpre, x, wide_w, 1", "ValueError",
     "weight must be (C, OC)"),
    ("backward gelu without inp_pre", "dense_backward", "dx, dw, db, dpre, x, w, 5",
     "ValueError", "needs inp"),
    ("backward inp_pre", "dense_backward", "dx, dw, db, dpre, x, w, 5, x[:2]", "ValueError",
     "inp_pre must be (B, C)"),
    ("backward dtypes", "dense_backward", "dx, dw, db.astype(np.float64), dpre, x, w, 1",
     "TypeError", "dbias is float64 but dinp is float32"),
]


def test_dense_kernels_refuse_bad_arguments():
    assert run_refusals(SETUP, CASES) == []
