"""Harness for the kernels' argument checks: each case calls a kernel with one bad argument, from
Python and from an @njit function, in a child process (a crash, which is what an unchecked bad
argument tends to give, then fails the test instead of ending pytest), and expects the exception
named, with the text given, and every array argument unchanged.

A case is (label, kernel name in fastbp.kernels, argument expressions as one string, exception
class name, text the message must hold). The expressions are evaluated in the namespace the
setup code (a string run in the child) leaves, which holds np, k (fastbp.kernels) and
numba; an expression given as "*name" spreads a tuple (a Net, a Workspace).
"""
import json
import subprocess
import sys
import textwrap

from helpers import subprocess_env

_CHILD = r"""
import json, sys
import numpy as np, numba
import fastbp.kernels as k

def snapshot(args):
    return [a.copy() for a in args if isinstance(a, np.ndarray)]

def unchanged(before, args):
    after = [a for a in args if isinstance(a, np.ndarray)]
    return all(np.array_equal(b, a, equal_nan=True) for b, a in zip(before, after))

_wrappers = {}

def via_njit(kernel, n_args):
    key = (kernel, n_args)
    if key not in _wrappers:
        params = ", ".join(f"a{i}" for i in range(n_args))
        scope = {"KERNEL": getattr(k, kernel)}
        exec(f"def call({params}):\n    return KERNEL({params})\n", scope)
        _wrappers[key] = numba.njit(scope["call"])
    return _wrappers[key]

def spread(expr, ns):
    out = []
    for part in expr:
        value = eval(part[1:] if part.startswith("*") else part, ns)
        out.extend(value if part.startswith("*") else [value])
    return out

ns = {"np": np, "k": k, "numba": numba}
exec(SETUP, ns)
results = []
for label, kernel, arg_exprs, caller in CASES:
    print("CASE", label, caller, file=sys.stderr, flush=True)
    args = spread(arg_exprs, ns)
    before = snapshot(args)
    fn = getattr(k, kernel) if caller == "python" else via_njit(kernel, len(args))
    try:
        fn(*args)
        raised = (None, "")
    except Exception as exc:
        cause = exc.__cause__ or exc.__context__
        if type(exc).__name__ == "SystemError" and cause is not None:
            exc = cause   # raised in a parallel region: Numba wraps it
        raised = (type(exc).__name__, str(exc))
    results.append([label, caller, *raised, unchanged(before, args)])
print(json.dumps(results))
"""


def _split(arg_string):
    """'a, b[0], f(x, y)' -> ['a', 'b[0]', 'f(x, y)']: commas at depth 0 only."""
    parts, depth, current = [], 0, ""
    for ch in arg_string:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current.strip())
    return parts


def run_refusals(setup, cases, callers=("python", "njit"), timeout=900):
    """Run the cases (see the module docstring) in one child; return the failures as text
    (an empty list when every case raised what it should and left its arrays alone)."""
    runs = [(label, kernel, _split(args), caller)
            for label, kernel, args, _, _ in cases for caller in callers]
    code = f"SETUP = {textwrap.dedent(setup)!r}\nCASES = {runs!r}\n" + _CHILD
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=timeout, env=subprocess_env())
    if child.returncode != 0:
        last = [line for line in child.stderr.splitlines() if line.startswith("CASE ")]
        return [f"the child ended with {child.returncode} during {last[-1] if last else '?'}:"
                f"\n{child.stderr[-3000:]}"]
    results = {(label, caller): rest
               for label, caller, *rest in json.loads(child.stdout.splitlines()[-1])}
    failures = []
    for label, _, _, exc_name, text in cases:
        for caller in callers:
            name, message, kept = results[label, caller]
            if name != exc_name or text not in message:
                failures.append(f"{label} ({caller}): expected {exc_name} with {text!r}, "
                                f"got {name}: {message[:300]!r}")
            elif not kept:
                failures.append(f"{label} ({caller}): raised, but changed an array")
    return failures
