"""Native routines for ``@njit`` code: BLAS GEMM on strided 2-D views, the size of Numba's
thread pool and the work-split setting (all reached through named symbols), and a cheap matrix
view of a flat buffer.

The symbols are registered with LLVM at import time, not ctypes pointers baked into the code:
that keeps every kernel that uses them cacheable with ``cache=True``.

Numba's own ``np.dot`` needs contiguous operands and cannot accumulate into its output, so the
kernels call BLAS ``?gemm`` directly: that of the OpenBLAS in the scipy-openblas32 wheel (the
build NumPy and SciPy themselves are made with). It is loaded privately (its symbols carry a
``scipy_`` prefix and are not made global), so it cannot clash with another BLAS in the process.
``use_blas`` (``fastbp.set_blas``) can give the float products a second copy of it that runs its
AVX-512 kernels where OpenBLAS would choose AVX2 ones: the products call through a pointer it
sets, so one compiled, cached code serves either.

Callers run it from inside ``prange`` loops, one call per batch tile: it must be limited to one
thread (see ``fastbp._threads``), or its pool and Numba's fight.

Products of bfloat16 operands (fastbp.kernels.bfloat16) call oneDNN's or Intel MKL's
``gemm_bf16bf16f32`` through a third symbol, registered (``load_onednn``, ``load_bfloat16_gemm``)
only when a model asks for them: both optional extras, run at one thread per call, so that
Numba's pool stays the only one.
"""
import ctypes
import ctypes.util
import os
import shutil
import tempfile

import numba
import scipy_openblas32
from llvmlite import binding as _llvm
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.imputils import impl_ret_borrowed
from numba.extending import intrinsic, overload
from numba.np.arrayobj import populate_array

from ._checks import arguments, require
from ._config import INLINED, SERIAL
from ._units import report_skipped


def _openblas_file():
    """The path of the scipy-openblas32 wheel's shared library."""
    lib_dir = scipy_openblas32.get_lib_dir()
    names = sorted(name for name in os.listdir(lib_dir) if name.startswith("libscipy_openblas")
                   and name.endswith((".so", ".dylib", ".dll")))
    if not names:
        raise ImportError(f"scipy-openblas32 is installed, but {lib_dir} holds no OpenBLAS "
                          "library; reinstall it: pip install --force-reinstall scipy-openblas32")
    return os.path.join(lib_dir, names[0])


def _load_openblas(coretype=None):
    """The scipy-openblas32 wheel's shared library, through ctypes (RTLD_LOCAL). With a core
    type (OpenBLAS's name for a family of its kernels, e.g. "SkylakeX"), a second copy of it
    that runs that family's kernels: OpenBLAS chooses them once, when it is loaded, from
    OPENBLAS_CORETYPE, and the loader hands back the library already loaded from a file, so
    the copy is loaded from a file of its own (removed once loaded), at one thread."""
    path = _openblas_file()
    if coretype is None:
        return ctypes.CDLL(path)
    wanted = {"OPENBLAS_CORETYPE": coretype, "OPENBLAS_NUM_THREADS": "1"}
    saved = {name: os.environ.get(name) for name in wanted}
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as folder:
        copy = os.path.join(folder, os.path.basename(path))
        shutil.copyfile(path, copy)
        os.environ.update(wanted)
        try:
            return ctypes.CDLL(copy)
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def _core_name(lib):
    """The family of kernels an OpenBLAS library runs (e.g. "Haswell", "SkylakeX")."""
    name = lib.scipy_openblas_get_corename
    name.restype = ctypes.c_char_p
    return name().decode()


#: ctypes handle of the kernels' default OpenBLAS. It starts at one thread, and
#: fastbp._threads keeps it there.
openblas = _load_openblas()
openblas.scipy_openblas_set_num_threads(1)
_config = openblas.scipy_openblas_get_config
_config.restype = ctypes.c_char_p
#: The BLAS library behind the kernels' matrix products, as its build describes itself.
BLAS = _config().decode()


# The gemm symbol by (operands' dtype, output's dtype).
_SYMBOLS = {(types.float32, types.float32): "fastbp_sgemm",
            (types.float64, types.float64): "fastbp_dgemm",
            (types.uint16, types.float32): "fastbp_gemm_bf16",
            (types.int16, types.float32): "fastbp_gemm_bf16_emulated"}


def _not_ready(operands, remedy):
    """A stand-in for a bfloat16 gemm symbol until it is registered: it computes nothing and
    says so (kernels.raise_if_unfilled then raises), where a missing symbol would crash."""
    def stub(*args):
        report_skipped(f"fastbp: a bfloat16 product ({operands} operands) ran before {remedy} "
                       "in this process; it was skipped (call that first, then restart)")
    return ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 13)(stub)


_STUBS = {types.uint16: _not_ready("uint16", "kernels.require_bfloat16()"),
          types.int16: _not_ready("int16", "kernels.register_bfloat16_emulation()")}


# Flags read by bfloat16_product_ready: 0 beside a stand-in, 1 beside a product.
_READY = {ready: ctypes.c_int64(int(ready)) for ready in (False, True)}


def register_gemm(operands, address, ready=True):
    """Register the gemm of float32 outputs for operands of this Numba type (uint16, int16: both
    bfloat16 bit patterns) at a C function's address (Fortran gemm's arguments); ready: a
    product, not a stand-in (see bfloat16_product_ready)."""
    symbol = _SYMBOLS[operands, types.float32]
    _llvm.add_symbol(symbol, address)
    _llvm.add_symbol(symbol + "_ready", ctypes.addressof(_READY[ready]))


for _operands, _stub in _STUBS.items():
    register_gemm(_operands, ctypes.cast(_stub, ctypes.c_void_p).value, ready=False)


@intrinsic
def bfloat16_product_ready(typingctx, bits):
    """Whether the code this is compiled into calls a bfloat16 product for bit patterns of
    bits' type (uint16: MKL's, int16: the emulation), not the stand-in. Symbols are resolved
    when code is compiled or loaded, so code made before the product was registered keeps the
    stand-in for the rest of the process; this reads the flag register_gemm registered with
    the product that code resolved."""
    symbol = _SYMBOLS.get((bits.dtype, types.float32))
    if symbol is None:
        raise TypeError(f"bfloat16_product_ready: bits must be uint16 or int16, not {bits}")

    def codegen(context, builder, signature, args):
        flag = builder.module.globals.get(symbol + "_ready")
        if flag is None:
            flag = ir.GlobalVariable(builder.module, ir.IntType(64), symbol + "_ready")
        return builder.icmp_unsigned("!=", builder.load(flag), ir.Constant(ir.IntType(64), 0))
    return types.boolean(bits), codegen
# The float32 and float64 products are called through pointers that use_blas can change at run
# time (one compiled, cached code for every choice): symbol + "_at" holds the address of the
# Fortran ?gemm in use.
_GEMM_AT = {symbol: ctypes.c_void_p() for symbol in ("fastbp_sgemm", "fastbp_dgemm")}
for _symbol, _cell in _GEMM_AT.items():
    _llvm.add_symbol(_symbol + "_at", ctypes.addressof(_cell))

# OpenBLAS's core types with AVX-512 kernels, which multiply small products without packing
# their operands (when: _config's UNPACKED_* constants).
_AVX512_CORES = ("SkylakeX", "Cooperlake", "SapphireRapids")
# 1 when the BLAS in use is one of those (use_blas sets it), read by the tiling rules through a
# symbol, as the thread count is.
_unpacked_small_products = ctypes.c_int64(0)
_llvm.add_symbol("fastbp_unpacked_small_products", ctypes.addressof(_unpacked_small_products))

#: The BLAS builds use_blas can give the kernels' float32 and float64 products, by name: the
#: OpenBLAS core type each runs (None: the kernels OpenBLAS chooses for this CPU).
BLAS_CHOICES = {"openblas": None, "openblas-avx512": "SkylakeX"}
# What OpenBLAS's SkylakeX kernels need of the CPU, by LLVM's names.
_AVX512 = ("avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl")
_loaded = {"openblas": openblas}   # by name, each loaded once
_in_use = ["openblas"]


class BlasUnavailable(RuntimeError):
    """A BLAS build was asked for that cannot run here (fastbp.set_blas)."""


def use_blas(name):
    """Give the kernels' float32 and float64 products the BLAS build `name` (a key of
    BLAS_CHOICES), loading it the first time. Raises BlasUnavailable, the products unchanged,
    where this CPU lacks what it needs."""
    lib = _loaded.get(name)
    if lib is None:
        coretype = BLAS_CHOICES[name]
        features = _llvm.get_host_cpu_features()
        missing = [f for f in _AVX512 if not features.get(f, False)]
        if missing:
            raise BlasUnavailable(
                f"blas {name!r}: this CPU lacks {', '.join(missing)}, which OpenBLAS's "
                f"{coretype} kernels need; use blas='openblas'")
        lib = _load_openblas(coretype)
        lib.scipy_openblas_set_num_threads(1)
        if _core_name(lib) != coretype:
            raise BlasUnavailable(f"blas {name!r}: OpenBLAS ran its {_core_name(lib)} kernels "
                                  f"on this CPU, not the {coretype} ones asked for; use "
                                  "blas='openblas'")
        _loaded[name] = lib
    for symbol, cell in _GEMM_AT.items():
        cell.value = ctypes.cast(getattr(lib, symbol.replace("fastbp_", "scipy_") + "_"),
                                 ctypes.c_void_p).value
    _unpacked_small_products.value = int(_core_name(lib) in _AVX512_CORES)
    _in_use[0] = name


def blas_in_use():
    """(name, core type) of the BLAS build the kernels' float products call (fastbp.set_blas)."""
    return _in_use[0], _core_name(_loaded[_in_use[0]])


def avx512_kernels_unused():
    """Whether this CPU has what OpenBLAS's AVX-512 kernels need while the default build runs
    other ones: where set_blas("openblas-avx512") may be faster."""
    features = _llvm.get_host_cpu_features()
    return (all(features.get(f, False) for f in _AVX512)
            and _core_name(openblas) not in _AVX512_CORES)


def use_default_blas():
    """Give the kernels' float products the default build and return its name:
    "openblas-avx512" where this CPU has AVX-512 but OpenBLAS would run other kernels on it
    (AMD Zen 4 and 5; on a Zen 5 core its AVX-512 kernels multiplied about twice as fast:
    README, "Which BLAS") and that copy loads; else "openblas"."""
    if avx512_kernels_unused():
        try:
            use_blas("openblas-avx512")
            return "openblas-avx512"
        except (BlasUnavailable, OSError):   # (OSError: no folder it can be loaded from)
            pass
    use_blas("openblas")
    return "openblas"


def loaded_blas():
    """The BLAS libraries the kernels have loaded (each to be kept at one thread)."""
    return tuple(_loaded.values())   # list() of a dict view allocates ~4.6 KB on the way


use_default_blas()
# Starting Numba's thread pool registers its "get_num_threads" symbol, which num_threads calls.
numba.get_num_threads()

# 1 when the kernels cut matrix products by the thread count, 0 (the default) when by their
# shape alone (fastbp._threads.set_work_split). Read at run time through a symbol, as the
# thread count is, so that both settings run one compiled, cached code.
_split_by_threads = ctypes.c_int64(0)
_llvm.add_symbol("fastbp_split_by_threads", ctypes.addressof(_split_by_threads))


def set_split_by_threads(flag):
    """Cut matrix products by the thread count (True) or by their shape alone (False)."""
    _split_by_threads.value = int(bool(flag))


def splits_by_threads():
    """Whether the kernels cut matrix products by the thread count (set_split_by_threads)."""
    return bool(_split_by_threads.value)


class Bfloat16Unavailable(RuntimeError):
    """bfloat16 products were asked for where they cannot run (no MKL, or no CPU unit)."""


#: What this CPU has for bfloat16 products, from LLVM's view of the host: {"amx_bf16": bool,
#: "avx512_bf16": bool}.
CPU_BF16 = {name: _llvm.get_host_cpu_features().get(feature, False)
            for name, feature in (("amx_bf16", "amx-bf16"), ("avx512_bf16", "avx512bf16"))}
_MKL_SEQUENTIAL = 1   # MKL_THREADING_SEQUENTIAL
_mkl = []             # the loaded MKL, once load_bfloat16_gemm found it


def _find_mkl():
    """The path of MKL's single dynamic library (mkl_rt) from the ``mkl`` wheel, else as the
    system's loader would find it; None when neither has it."""
    from importlib import metadata
    try:
        for file in metadata.files("mkl") or ():
            if file.name.startswith(("libmkl_rt.so", "libmkl_rt.", "mkl_rt.")):
                return str(file.locate())
    except metadata.PackageNotFoundError:
        pass
    return ctypes.util.find_library("mkl_rt")


def load_bfloat16_gemm():
    """Register the bfloat16 product's symbol: MKL's gemm_bf16bf16f32 at one thread per call.
    Returns MKL's version string. Raises Bfloat16Unavailable when MKL cannot be loaded, or runs
    with another threading layer already chosen in this process (its own pool would then fight
    Numba's)."""
    if _mkl:
        return _mkl[0]
    path = _find_mkl()
    if path is None:
        raise Bfloat16Unavailable(
            "bfloat16 products need Intel MKL, which is not installed: pip install "
            "'fastbp[bf16]' (or pip install mkl)")
    try:
        lib = ctypes.CDLL(path)
        set_layer = lib.MKL_Set_Threading_Layer
        gemm_bf16 = lib.gemm_bf16bf16f32_
    except (OSError, AttributeError) as exc:
        raise Bfloat16Unavailable(f"bfloat16 products: could not load MKL's gemm_bf16bf16f32 "
                                  f"from {path}: {exc}") from None
    set_layer.argtypes, set_layer.restype = [ctypes.c_int], ctypes.c_int
    layer = set_layer(_MKL_SEQUENTIAL)
    if layer != _MKL_SEQUENTIAL:
        raise Bfloat16Unavailable(
            f"bfloat16 products: MKL in this process already runs threading layer {layer}, "
            "not the sequential one fastbp calls it with; set MKL_THREADING_LAYER=SEQUENTIAL")
    version = ctypes.create_string_buffer(256)
    lib.MKL_Get_Version_String(version, 256)
    register_gemm(types.uint16, ctypes.cast(gemm_bf16, ctypes.c_void_p).value)
    _mkl.append(version.value.decode(errors="replace").strip())
    return _mkl[0]


@intrinsic
def num_threads(typingctx):
    """Size of Numba's thread pool for the calling thread (as numba.get_num_threads())."""
    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(cgutils.intp_t, [])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "get_num_threads")
        return builder.call(fn, [])
    return types.intp(), codegen


def _flag_reader(symbol):
    """codegen of an intrinsic that reads the int64 registered as symbol."""
    def codegen(context, builder, signature, args):
        flag = builder.module.globals.get(symbol)
        if flag is None:   # a declaration, which the registered symbol resolves
            flag = ir.GlobalVariable(builder.module, ir.IntType(64), symbol)
        return builder.load(flag)
    return codegen


@intrinsic
def split_by_threads(typingctx):
    """The setting of set_split_by_threads, from compiled code: 1 or 0 (int64)."""
    return types.int64(), _flag_reader("fastbp_split_by_threads")


@intrinsic
def unpacked_small_products(typingctx):
    """From compiled code, 1 (int64) when the BLAS in use multiplies small products without
    packing their operands (OpenBLAS's AVX-512 kernels), else 0."""
    return types.int64(), _flag_reader("fastbp_unpacked_small_products")


@intrinsic
def _fortran_gemm(typingctx, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """Call Fortran ?gemm: c := alpha*op(a) @ op(b) + beta*c, column-major, every argument by
    reference. transa/transb are character codes (ord('N') or ord('T'))."""
    dtype = c.dtype
    symbol = _SYMBOLS.get((a.dtype, dtype))
    if symbol is None or b.dtype != a.dtype:   # (gemm passes its b as a, its a as b)
        raise TypeError(f"gemm: a and b must both be of c's dtype, or both bfloat16 bit "
                        f"patterns (uint16 or int16) for a float32 c; got a {b.dtype}, b "
                        f"{a.dtype}, c {dtype}")
    sig = types.void(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

    def codegen(context, builder, signature, args):
        ta, tb, m_, n_, k_, alpha_, a_, lda_, b_, ldb_, beta_, c_, ldc_ = args
        tys = signature.args
        fty = context.get_value_type(dtype)
        oty = context.get_value_type(a.dtype)   # the operands'
        i8, i32 = ir.IntType(8), ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8.as_pointer()] * 2 + [i32.as_pointer()] * 3
                               + [fty.as_pointer(), oty.as_pointer(), i32.as_pointer(),
                                  oty.as_pointer(), i32.as_pointer(), fty.as_pointer(),
                                  fty.as_pointer(), i32.as_pointer()])
        if symbol in _GEMM_AT:   # a float product: through the pointer use_blas sets
            cell = builder.module.globals.get(symbol + "_at")
            if cell is None:
                cell = ir.GlobalVariable(builder.module, fnty.as_pointer(), symbol + "_at")
            fn = builder.load(cell)
        else:
            fn = cgutils.get_or_insert_function(builder.module, fnty, symbol)

        def by_ref(value, from_type, to_llvm, to_type):
            slot = cgutils.alloca_once(builder, to_llvm)
            builder.store(context.cast(builder, value, from_type, to_type), slot)
            return slot

        def char(v, t):
            return by_ref(v, t, i8, types.int8)

        def int32(v, t):
            return by_ref(v, t, i32, types.int32)

        def scalar(v, t):
            return by_ref(v, t, fty, dtype)

        def data(arr, t):
            return builder.bitcast(context.make_array(t)(context, builder, arr).data,
                                   context.get_value_type(t.dtype).as_pointer())

        builder.call(fn, [char(ta, tys[0]), char(tb, tys[1]), int32(m_, tys[2]),
                          int32(n_, tys[3]), int32(k_, tys[4]), scalar(alpha_, tys[5]),
                          data(a_, tys[6]), int32(lda_, tys[7]), data(b_, tys[8]),
                          int32(ldb_, tys[9]), scalar(beta_, tys[10]), data(c_, tys[11]),
                          int32(ldc_, tys[12])])
        return context.get_dummy_value()

    return sig, codegen


@njit(**INLINED)
def _leading_dim(x):
    # BLAS wants the row stride in elements, at least the row length (even for one row).
    return max(x.strides[0] // x.itemsize, x.shape[1], 1)


_INT32_MAX = 2 ** 31 - 1


@njit(**INLINED)
def _blas_sized(x):
    """Whether BLAS reads x's rows where they are: its row stride a whole number of elements,
    its sizes within BLAS's 32-bit integers."""
    return (x.strides[0] % x.itemsize == 0 and x.shape[0] <= _INT32_MAX
            and _leading_dim(x) <= _INT32_MAX)


@njit(**INLINED)
def gemm(c, a, b, alpha, beta, trans_a, trans_b):
    """c (M, N) := alpha * op(a) @ op(b) + beta * c, on row-major views. a and b are of c's
    dtype, or bfloat16 bit patterns for a float32 c: uint16 for MKL's product
    (load_bfloat16_gemm first), int16 for its emulation (bfloat16.register_bfloat16_emulation
    first).

    op(a) is (M, K): a is (M, K), or (K, M) when trans_a. op(b) is (K, N): b is (K, N), or
    (N, K) when trans_b. Every view must have unit stride along its last axis; rows may be
    strided (slices of a wider matrix), not overlap nor run backwards. With beta == 0, c is
    overwritten, never read. Other shapes or strides raise ValueError, other types
    TypeError, c untouched. (c must not overlap a or b: not checked.)
    """
    _gemm_arguments(c, a, b, alpha, beta, trans_a, trans_b)
    _check_gemm(c, a, b, trans_a, trans_b)
    blas_gemm(c, a, b, alpha, beta, trans_a, trans_b)


@njit(**INLINED)
def blas_gemm(c, a, b, alpha, beta, trans_a, trans_b):
    """gemm without its checks: what the kernels' tiles call, on views they cut themselves
    (a check per tile would only repeat the kernel's own, and cost compile time in every
    tile function)."""
    m, n = c.shape
    k = a.shape[0] if trans_a else a.shape[1]
    if m == 0 or n == 0:
        return
    # Row-major c is column-major c^T = op(b)^T op(a)^T: swap the operands, keep the flags.
    _fortran_gemm(84 if trans_b else 78, 84 if trans_a else 78, n, m, k, alpha,
                  b, _leading_dim(b), a, _leading_dim(a), beta, c, _leading_dim(c))


@njit(**SERIAL)
def _check_gemm(c, a, b, trans_a, trans_b):
    """gemm's shapes and strides. A function of its own, not inlined: a caller may call gemm
    inside a prange loop, which inlined raises would keep from running in parallel."""
    m, n = c.shape
    k = a.shape[0] if trans_a else a.shape[1]
    require((a.shape[1] if trans_a else a.shape[0]) == m,
            "gemm: op(a) must have as many rows as c (M)")
    require((b.shape[1] if trans_b else b.shape[0]) == k,
            "gemm: op(b) must have as many rows as op(a) has columns (K)")
    require((b.shape[0] if trans_b else b.shape[1]) == n,
            "gemm: op(b) must have as many columns as c (N)")
    require(_blas_sized(c) and _blas_sized(a) and _blas_sized(b),
            "gemm: c's, a's and b's row strides must be whole numbers of elements, and their "
            "sizes below 2**31 (BLAS's 32-bit integers)")
    require(_product_ready(a),
            "gemm: no bfloat16 product was registered when this code was compiled: call "
            "kernels.require_bfloat16() (uint16 operands) or kernels."
            "register_bfloat16_emulation() (int16 operands) first, in a new process")


def _product_ready(operand):
    """bfloat16_product_ready for bit-pattern operands; True for float ones."""
    raise NotImplementedError("compiled code only")


@overload(_product_ready, jit_options=SERIAL)
def _product_ready_impl(operand):
    if operand.dtype in (types.uint16, types.int16):
        return lambda operand: bfloat16_product_ready(operand)
    return lambda operand: True


_gemm_arguments = arguments("gemm", c="matrix", a="operand", b="operand", alpha="number",
                            beta="number", trans_a="flag", trans_b="flag")


def _itemsize(context, dtype):
    """An element's size in bytes, as an LLVM constant of type intp."""
    return context.get_constant(types.intp,
                                context.get_abi_sizeof(context.get_data_type(dtype)))


@intrinsic
def matrix_view(typingctx, flat, start, n_rows, n_cols):
    """flat[start:start + n_rows * n_cols] as a C-contiguous (n_rows, n_cols) matrix, sharing
    flat's memory. Nothing is checked: callers pass ranges they computed. It exists because
    ``flat[a:b].reshape(...)`` calls a C helper each time (docs/kernels-notes.md), and a small
    network's step takes a dozen such views."""
    if not (isinstance(flat, types.Array) and flat.ndim == 1 and flat.layout == "C"):
        return None
    result = flat.copy(ndim=2, layout="C")

    def codegen(context, builder, signature, args):
        src = context.make_array(signature.args[0])(context, builder, args[0])
        dst = context.make_array(signature.return_type)(context, builder)
        start_, rows, cols = (context.cast(builder, v, t, types.intp)
                              for v, t in zip(args[1:], signature.args[1:]))
        itemsize = _itemsize(context, flat.dtype)
        populate_array(dst, data=builder.gep(src.data, [start_]),
                       shape=cgutils.pack_array(builder, [rows, cols]),
                       strides=cgutils.pack_array(builder, [builder.mul(cols, itemsize), itemsize]),
                       itemsize=itemsize, meminfo=src.meminfo, parent=src.parent)
        return impl_ret_borrowed(context, builder, signature.return_type, dst._getvalue())

    return result(flat, start, n_rows, n_cols), codegen


@intrinsic
def rows_view(typingctx, matrix, r0, r1):
    """Rows r0..r1-1 of a 2-D array as one C-contiguous 1-D array, sharing its memory. Only
    valid when those rows are contiguous (row stride == row length); nothing is checked. It
    lets a per-element pass over short rows (10 logits) run as one long vectorised loop."""
    if not (isinstance(matrix, types.Array) and matrix.ndim == 2):
        return None
    result = types.Array(matrix.dtype, 1, "C")

    def codegen(context, builder, signature, args):
        src = context.make_array(signature.args[0])(context, builder, args[0])
        dst = context.make_array(signature.return_type)(context, builder)
        first, stop = (context.cast(builder, v, t, types.intp)
                       for v, t in zip(args[1:], signature.args[1:]))
        _, n_cols = cgutils.unpack_tuple(builder, src.shape, 2)
        itemsize = _itemsize(context, matrix.dtype)
        row_stride, _ = cgutils.unpack_tuple(builder, src.strides, 2)
        # row_stride is in bytes; step the data pointer through i8.
        start = builder.gep(builder.bitcast(src.data, ir.IntType(8).as_pointer()),
                            [builder.mul(first, row_stride)])
        populate_array(dst, data=builder.bitcast(start, src.data.type),
                       shape=cgutils.pack_array(builder, [builder.mul(builder.sub(stop, first),
                                                                      n_cols)]),
                       strides=cgutils.pack_array(builder, [itemsize]),
                       itemsize=itemsize, meminfo=src.meminfo, parent=src.parent)
        return impl_ret_borrowed(context, builder, signature.return_type, dst._getvalue())

    return result(matrix, r0, r1), codegen


@intrinsic
def float64_from_bits(typingctx, bits):
    """The float64 whose IEEE bit pattern is the int64 bits."""
    if bits != types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@intrinsic
def float64_bits(typingctx, value):
    """The IEEE bit pattern of a float64, as an int64."""
    if value != types.float64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


# -- oneDNN's bfloat16 product ---------------------------------------------------------------

class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int),
                ("hash", ctypes.c_char_p)]


_onednn = []   # oneDNN's version, once load_onednn found it


def _find_onednn():
    """The path of oneDNN's library from the onednn-cpu-gomp wheel (built on GNU OpenMP, the
    runtime of Numba's "omp" threading layer), or None."""
    from importlib import metadata
    try:
        files = metadata.files("onednn-cpu-gomp") or ()
    except metadata.PackageNotFoundError:
        return None
    found = sorted(str(f.locate()) for f in files if f.name.startswith("libdnnl.so"))
    return found[0] if found else None


def load_onednn():
    """Register oneDNN's dnnl_gemm_bf16bf16f32 and GNU OpenMP's omp_set_num_threads under the
    symbols onednn_gemm_bf16 calls. Returns oneDNN's version ("3.2.0"), or None where the
    onednn-cpu-gomp wheel is not installed; raises Bfloat16Unavailable where it cannot load."""
    if _onednn:
        return _onednn[0]
    path = _find_onednn()
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(path)
        gomp = ctypes.CDLL(ctypes.util.find_library("gomp") or "libgomp.so.1")
        product, set_threads = lib.dnnl_gemm_bf16bf16f32, gomp.omp_set_num_threads
    except (OSError, AttributeError) as exc:
        raise Bfloat16Unavailable(f"bfloat16 products: could not load oneDNN's "
                                  f"dnnl_gemm_bf16bf16f32 from {path}: {exc}") from None
    lib.dnnl_version.restype = ctypes.POINTER(_Version)
    v = lib.dnnl_version().contents
    for symbol, function in (("fastbp_dnnl_gemm_bf16", product),
                             ("fastbp_omp_set_num_threads", set_threads)):
        _llvm.add_symbol(symbol, ctypes.cast(function, ctypes.c_void_p).value)
    _onednn.append(f"{v.major}.{v.minor}.{v.patch}")
    return _onednn[0]


@intrinsic
def onednn_gemm_bf16(typingctx, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """oneDNN's row-major c (m, n) := alpha op(a) op(b) + beta c on bfloat16 bit patterns a, b
    (uint16 pointers) and float32 c, at one thread: the calling thread's OpenMP thread count is
    set to 1 first (oneDNN runs on every core otherwise, outside a parallel region; inside one
    it runs serially anyway). ta, tb: ord('N') or ord('T'). load_onednn first."""
    sig = types.void(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

    def codegen(context, builder, signature, args):
        i8, i32, i64, f32 = ir.IntType(8), ir.IntType(32), ir.IntType(64), ir.FloatType()
        bits, out = ir.IntType(16).as_pointer(), f32.as_pointer()
        set_threads = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i32]), "fastbp_omp_set_num_threads")
        builder.call(set_threads, [ir.Constant(i32, 1)])
        fnty = ir.FunctionType(i32, [i8, i8, i64, i64, i64, f32, bits, i64, bits, i64, f32, out,
                                     i64])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "fastbp_dnnl_gemm_bf16")
        tys = signature.args
        to = [types.int8, types.int8, types.int64, types.int64, types.int64, types.float32,
              None, types.int64, None, types.int64, types.float32, None, types.int64]
        values = [builder.bitcast(v, {6: bits, 8: bits, 11: out}[i]) if to[i] is None
                  else context.cast(builder, v, tys[i], to[i]) for i, v in enumerate(args)]
        builder.call(fn, values)
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def float32_bits(typingctx, value):
    """The IEEE bit pattern of a float32, as a uint32."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


@intrinsic
def float32_from_bits(typingctx, bits):
    """The float32 whose IEEE bit pattern is the low 32 bits of the integer bits."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        value = args[0]
        if bits.bitwidth > 32:
            value = builder.trunc(value, ir.IntType(32))
        elif bits.bitwidth < 32:
            value = builder.zext(value, ir.IntType(32))
        return builder.bitcast(value, ir.FloatType())

    return types.float32(bits), codegen
