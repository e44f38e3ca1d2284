"""Argument checks of the public kernels, for callers in Python and in their own @njit code alike.

A kernel refuses what it cannot survive (a shape that would read or write outside an array, a
row stride BLAS would misread, a code no branch knows, a label outside the classes) before it
touches anything, so a refused call leaves every output as it was. Two stages:

- Types, while the caller is compiled: ``arguments(kernel, name=kind, ...)`` makes a function
  that a kernel calls first with its own arguments. Its typing raises TypeError naming the
  kernel, the argument and the types that would do (a plain exception, not Numba's TypingError,
  so Numba passes it up unchanged, into the caller's traceback rather than its own internals).
  It compiles to nothing, except a stride test for arrays whose layout Numba does not know.
  ``guard`` makes one from a function of the types, for what kinds cannot state (tuples).
- Values, at run time: ``require(ok, message)`` raises ValueError. The messages are constants:
  a check then costs one comparison, and adds no string formatting to the code of every caller
  that compiles a kernel into its own. ``requirements`` writes the checks that several kernels
  share, each kernel's name in its messages.
"""
from numba import njit, types
from numba.extending import overload

from ._config import GUARD, INLINED

FLOATS = (types.float32, types.float64)
BITS = (types.uint16, types.int16)


@njit(**INLINED)
def require(ok, message):
    """ValueError(message) unless ok."""
    if not ok:
        raise ValueError(message)


# What each kind of argument must be: (a test of its Numba type, what to tell the caller).
def _is_float_array(ndim):
    return lambda t: isinstance(t, types.Array) and t.ndim == ndim and t.dtype in FLOATS


def _is_array_of(ndim, dtypes):
    return lambda t: isinstance(t, types.Array) and t.ndim == ndim and t.dtype in dtypes


KINDS = {
    "matrix": (_is_float_array(2), "a 2-D float32 or float64 array"),
    "vector": (_is_float_array(1), "a 1-D float32 or float64 array"),
    "labels": (_is_array_of(1, (types.int64,)), "a 1-D int64 array (np.int64 labels)"),
    "index": (_is_array_of(1, (types.int64,)), "a 1-D int64 array"),
    "int_index": (_is_array_of(1, (types.int32, types.int64)), "a 1-D int32 or int64 array"),
    "float64s": (_is_array_of(1, (types.float64,)), "a 1-D float64 array"),
    "float64_matrix": (_is_array_of(2, (types.float64,)), "a 2-D float64 array"),
    "bits": (_is_array_of(1, BITS), "a 1-D uint16 or int16 array (bfloat16 bit patterns)"),
    "bits_matrix": (_is_array_of(2, BITS),
                    "a 2-D uint16 or int16 array (bfloat16 bit patterns)"),
    "float32_matrix": (_is_array_of(2, (types.float32,)), "a 2-D float32 array"),
    "operand": (_is_array_of(2, FLOATS + BITS),
                "a 2-D float32 or float64 array, or uint16 or int16 (bfloat16 bit patterns)"),
    "code": (lambda t: isinstance(t, types.Integer), "an integer"),
    "number": (lambda t: isinstance(t, (types.Integer, types.Float)), "a number"),
    "flag": (lambda t: isinstance(t, (types.Boolean, types.Integer)), "a bool"),
}
# Kinds whose arrays hold the model's numbers: those of one call share one dtype.
_MODEL_DTYPE = ("matrix", "vector", "float32_matrix")


def _absent(t):
    return t is None or isinstance(t, (types.NoneType, types.Omitted))


def _type_error(kernel, name, kind, t, any_layout=False):
    """The message for argument `name` of type t, which is not of `kind`, or None if it is
    (any_layout: a Fortran-ordered matrix is of its kind)."""
    base, optional = kind.rstrip("?"), kind.endswith("?")
    if optional and _absent(t):
        return None
    test, wanted = KINDS[base]
    if not test(t):
        return (f"{kernel}: {name} must be {wanted}{' or None' if optional else ''}, "
                f"not {t}")
    if not any_layout and isinstance(t, types.Array) and t.ndim == 2 and t.layout == "F":
        return (f"{kernel}: {name} is Fortran-ordered; its rows must be contiguous "
                f"(pass np.ascontiguousarray({name}))")
    return None


def type_errors(kernel, kinds, argtypes, any_layout=False):
    """The messages for every argument of argtypes (name -> Numba type) that is not of its kind
    (kinds: name -> kind), then for float arrays that do not share one dtype."""
    errors = [e for e in (_type_error(kernel, n, kinds[n], t, any_layout)
                          for n, t in argtypes.items()) if e]
    model = {n: t.dtype for n, t in argtypes.items()
             if kinds[n].rstrip("?") in _MODEL_DTYPE and not _absent(t)}
    if not errors and len(set(model.values())) > 1:
        first = next(iter(model))
        odd = [n for n in model if model[n] != model[first]]
        errors.append(f"{kernel}: {', '.join(odd)} {'is' if len(odd) == 1 else 'are'} "
                      f"{model[odd[0]]} but {first} is {model[first]}; the arrays of one call "
                      "must share one dtype, float32 or float64")
    return errors


_CHECK = """def {name}({params}):
    pass
"""
_IMPL = """def impl({params}):
{lines}
"""
# (Raised here, not through require: Numba keeps a message passed as an argument as a runtime
# value, which a function loaded from its cache could not rebuild.)
_STRIDE_TESTS = {
    1: "    if not ({a}.shape[0] <= 1 or {a}.strides[0] == {a}.itemsize):\n"
       "        raise ValueError(\"{kernel}: {a} must be contiguous\")",
    2: "    if not ({a}.shape[1] <= 1 or {a}.strides[1] == {a}.itemsize):\n"
       "        raise ValueError(\"{kernel}: {a} must have unit stride along its last axis "
       "(contiguous rows)\")\n"
       "    if not ({a}.shape[0] <= 1 or {a}.strides[0] >= {a}.shape[1] * {a}.itemsize):\n"
       "        raise ValueError(\"{kernel}: {a}'s rows must not overlap or run backwards\")",
}


def arguments(kernel, any_layout=False, **kinds):
    """A function of the arguments name=kind (in the kernel's order; kinds in KINDS, "kind?"
    where None may be passed) that a kernel calls first with its own: its typing raises
    TypeError for an argument of another kind, a Fortran-ordered matrix, or float arrays of
    two dtypes; its code tests the strides of arrays of unknown layout (Numba's "A": views)
    and raises ValueError when they are not as the kernels read them. any_layout: the kernel
    reads its arrays by Numba's indexing, which follows any strides, so no layout is refused
    or tested."""
    return guard(kernel, list(kinds),
                 lambda argtypes: type_errors(kernel, kinds, argtypes, any_layout), any_layout)


def guard(kernel, names, errors, any_layout=False):
    """arguments' function, for checks that its kinds cannot state (a tuple's fields, a type
    that depends on another argument's): its typing raises TypeError with the messages that
    errors(argtypes) returns (argtypes: name -> Numba type, for the arguments `names`, in the
    kernel's order); its code tests the strides of arrays of unknown layout, but those that
    any_layout names (True: all of them)."""
    free = set(names) if any_layout is True else set(any_layout or ())
    scope = {}
    exec(compile(_CHECK.format(name=f"check_{kernel}", params=", ".join(names)), __file__,
                 "exec"), scope)
    stub = scope[f"check_{kernel}"]

    def typing(*argtypes):
        found = errors(dict(zip(names, argtypes)))
        if found:
            raise TypeError("; ".join(found))
        lines = [_STRIDE_TESTS[t.ndim].format(a=n, kernel=kernel)
                 for n, t in zip(names, argtypes)
                 if isinstance(t, types.Array) and t.layout == "A" and t.ndim in (1, 2)
                 and n not in free]
        source = _IMPL.format(params=", ".join(names), lines="\n".join(lines) or "    pass")
        impl_scope = {}
        exec(compile(source, __file__, "exec"), impl_scope)
        return impl_scope["impl"]

    # The typing function must take the stub's parameters by name.
    signature = ", ".join(names)
    shim = {}
    exec(compile(f"def typing_shim({signature}):\n    return typing({signature})\n",
                 __file__, "exec"), {"typing": typing}, shim)
    overload(stub, jit_options=GUARD, prefer_literal=False)(shim["typing_shim"])
    return stub


def layout_errors(kernel, argtypes, exempt=()):
    """The messages for the arrays of argtypes (name -> Numba type; but those named in exempt)
    that are not C-contiguous: what a kernel that hands them to units (_units, which take only
    those) refuses."""
    return [f"{kernel}: {n} must be C-contiguous, not {t} (pass np.ascontiguousarray({n}))"
            for n, t in argtypes.items()
            if n not in exempt and isinstance(t, types.Array) and t.layout != "C"]


def requirements(kernel, parameters, rules, scope):
    """An inlined function of `parameters` (as a def lists them) that raises ValueError
    "<kernel>: <message>" for the first rule (condition, message) whose condition, an
    expression of them and of scope's names, is false; a rule that is a string is a statement
    (it names a value for the later rules). For checks that several kernels share, each with
    its own name in the messages (constants in the code, as require needs them)."""
    lines = [f"def requirements_{kernel}({parameters}):"]
    for rule in rules:
        if isinstance(rule, str):
            lines.append(f"    {rule}")
        else:
            condition, message = rule
            lines += [f"    if not ({condition}):",
                      f"        raise ValueError({f'{kernel}: {message}'!r})"]
    namespace = dict(scope, __name__=__name__)   # (see update._compiled_check)
    exec(compile("\n".join(lines) + "\n", __file__, "exec"), namespace)
    return njit(**INLINED)(namespace[f"requirements_{kernel}"])
