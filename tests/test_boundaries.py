"""Module boundaries: no module of fastbp (or of the benchmarks) reaches into another's private
names. Modules talk through public names only (the engine's operations, steps' stages, the
optimizers' methods), so that a reader can follow a call and a change inside one module stays
there."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "fastbp"

# Private names of other libraries that fastbp uses on purpose, with why.
THIRD_PARTY = {
    # namedtuple's public API is underscored so as not to clash with field names
    "_replace", "_fields", "_asdict", "_make",
    "_exit",             # os._exit: ending the process after an interrupted compile (cli),
                         # or when MPI does not start (distributed)
    "_actions",          # argparse: listing the command's options (_cli_options)
    "_launch_threads",   # numba: starting its pool before fork (_environment)
    # numba: a dispatcher's on-disk cache (kernels.entry.in_cache, _units), and its code
    # generators' struct proxies (_native, _units)
    "_cache", "_cache_file", "_index_path", "_getvalue",
    "_locator_classes",  # numba: where its cache goes (kernels._config, for installed copies)
    # torch: forward hooks, which change what a module computes (from_torch refuses them)
    "_forward_hooks", "_forward_pre_hooks", "_global_forward_hooks",
    "_global_forward_pre_hooks",
    # scikit-learn's MLP: the weights its early stopping restores (sklearn's to_sklearn sets
    # them, as scikit-learn's own fit does)
    "_best_coefs", "_best_intercepts",
    # scikit-learn's parameter constraints of its MLPs, which fastbp's estimators extend
    # (_sklearn_params; fastbp.sklearn's estimators define their own)
    "_parameter_constraints",
}
# scikit-learn's own helpers, imported so that the estimators check as scikit-learn's do.
THIRD_PARTY_IMPORTS = {("sklearn.utils.multiclass", "_check_partial_fit_first_call"),
                       ("sklearn.utils.validation", "_check_sample_weight"),
                       # (X's width as validate_data counts it, before the data are taken in)
                       ("sklearn.utils.validation", "_num_features"),
                       # numba's allocation statistics, for the no-allocation benchmark
                       ("numba.core.runtime", "_nrt_python")}


def _private(name):
    return name.startswith("_") and not name.startswith("__")


def _own_names(tree):
    """The private names a module defines: its functions, classes and module-level names, and
    attributes it assigns on self or cls (or in a class body)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) \
                and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            names.add(node.attr)
    return {name for name in names if _private(name)}


def _is_submodule(module, name, path):
    """Whether `from module import name` in the file at path imports a module of fastbp."""
    if module is None or module.startswith(".") or module.startswith("fastbp"):
        folder = path.parent if module in (None, "") else PACKAGE
        candidates = [folder / f"{name}.py", folder / name / "__init__.py",
                      PACKAGE / "kernels" / f"{name}.py"]
        return any(c.exists() for c in candidates)
    return False


def reaches(source, path=PACKAGE / "module.py"):
    """(line, text) of each reach into another module's private name in this source."""
    tree = ast.parse(source)
    own = _own_names(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            base = node.value
            if isinstance(base, ast.Name) and base.id in ("self", "cls"):
                continue
            if isinstance(base, ast.Call) and getattr(base.func, "id", None) == "super":
                continue
            if node.attr in own or node.attr in THIRD_PARTY:
                continue
            found.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.ImportFrom):
            module = ("." * node.level) + (node.module or "")
            for alias in node.names:
                if not _private(alias.name):
                    continue
                if (node.module, alias.name) in THIRD_PARTY_IMPORTS:
                    continue
                if (node.level or (node.module or "").startswith("fastbp")) \
                        and _is_submodule(node.module, alias.name, path):
                    continue   # a private module of the package, imported by the package
                found.append((node.lineno, f"from {module} import {alias.name}"))
    return found


def _sources():
    files = sorted(PACKAGE.rglob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py"))
    return [pytest.param(path, id=str(path.relative_to(ROOT))) for path in files]


@pytest.mark.parametrize("path", _sources())
def test_no_module_reaches_into_another_modules_private_names(path):
    found = reaches(path.read_text(), path)
    assert not found, "\n".join(f"{path.name}:{line}: {text}" for line, text in found)


@pytest.mark.parametrize("source, expected", [
    ("model._net", "model._net"),
    ("engine.work._hidden.x", "engine.work._hidden"),
    ("from .steps import _step", "from .steps import _step"),
    ("from fastbp.model import _FUSED", "from fastbp.model import _FUSED"),
    ("from sklearn.utils import _safe_indexing", "from sklearn.utils import _safe_indexing"),
])
def test_the_check_finds_a_reach(source, expected):
    assert [text for _, text in reaches(source)] == [expected]


@pytest.mark.parametrize("source", [
    "self._net", "super()._check_params()", "net._replace(l2=0.0)", "from . import _validate",
    "class A:\n    def f(self):\n        self._x = 1\ndef g(a):\n    return a._x",
])
def test_the_check_lets_own_and_public_names_through(source):
    assert reaches(source) == []
