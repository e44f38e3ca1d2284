"""Which library multiplies bfloat16 operands: kernels.require_bfloat16(library=...) loads
oneDNN's product (where the onednn-cpu-gomp wheel is installed) or MKL's, one per process, and
the model's layers call the one it loaded. Each case runs in a process of its own."""
import json
import subprocess
import sys

import numpy as np
import pytest

import naive
from fastbp import kernels

HAS_UNIT = any(kernels.cpu_bfloat16_units().values())


def _installed(distribution):
    from importlib import metadata
    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


LIBRARIES = [name for name, dist in (("onednn", "onednn-cpu-gomp"), ("mkl", "mkl"))
             if _installed(dist)]

_GRADIENT = """
import json, sys
import numpy as np
import fastbp
from fastbp.kernels import _native
said = fastbp.kernels.require_bfloat16({library!r})
rng = np.random.default_rng(5)
sizes = [64, 96, 80, 10]
X = rng.standard_normal((70, sizes[0])).astype(np.float32)
y = rng.integers(0, 10, 70)
model = fastbp.MLP(sizes, seed=6, matmul_precision="bfloat16")
loss = model.loss_and_grad(X, y)
json.dump({{"said": said, "loss": loss, "grads": model.grads.tolist(),
           "mkl_loaded": bool(_native._mkl)}}, sys.stdout)
"""


def _run(code):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("bad", ["oneDNN", "openblas", 1])
def test_an_unknown_library_is_refused_naming_the_argument(bad):
    with pytest.raises(ValueError, match=r"^library: expected one of 'onednn', 'mkl' or None"):
        kernels.require_bfloat16(bad)


@pytest.mark.skipif(not HAS_UNIT, reason="no bfloat16 unit on this CPU")
@pytest.mark.parametrize("library", LIBRARIES)
def test_the_layers_call_the_library_that_was_loaded(library):
    result = json.loads(_run(_GRADIENT.format(library=library)))
    assert result["said"].startswith({"onednn": "oneDNN ", "mkl": "MKL "}[library])
    # MKL is loaded only when it was asked for: the layers' units call oneDNN's otherwise.
    assert result["mkl_loaded"] == (library == "mkl")


@pytest.mark.skipif(not HAS_UNIT or len(LIBRARIES) < 2,
                    reason="needs a bfloat16 unit, oneDNN and MKL")
def test_onednn_and_mkl_compute_the_same_gradient_to_float32_sums():
    results = [json.loads(_run(_GRADIENT.format(library=name))) for name in LIBRARIES]
    a, b = (np.array(r["grads"]) for r in results)
    assert naive.normwise_error(a, b) < 1e-6
    assert results[0]["loss"] == pytest.approx(results[1]["loss"], rel=1e-6)


@pytest.mark.skipif(not HAS_UNIT or len(LIBRARIES) < 2,
                    reason="needs a bfloat16 unit, oneDNN and MKL")
def test_a_second_library_is_refused_in_the_same_process():
    code = ("import fastbp\n"
            "fastbp.kernels.require_bfloat16('onednn')\n"
            "try:\n"
            "    fastbp.kernels.require_bfloat16('mkl')\n"
            "except fastbp.kernels.Bfloat16Unavailable as exc:\n"
            "    print(exc)\n")
    said = _run(code)
    assert "runs oneDNN" in said and "mkl cannot replace it" in said


_WARNINGS = """
import json, sys, warnings
import fastbp
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    fastbp.kernels.require_bfloat16({library!r})
    fastbp.kernels.require_bfloat16({library!r})   # once a process
json.dump([str(w.message) for w in caught if issubclass(w.category, UserWarning)], sys.stdout)
"""
_NO_AMX = HAS_UNIT and not kernels.cpu_bfloat16_units().get("amx_bf16")


@pytest.mark.skipif(not _NO_AMX, reason="needs AVX512-BF16 without AMX")
@pytest.mark.parametrize("library", LIBRARIES)
def test_only_mkl_without_amx_warns_that_float32_is_likely_faster(library):
    said = json.loads(_run(_WARNINGS.format(library=library)))
    if library == "mkl":
        assert len(said) == 1 and "float32 is likely faster" in said[0]
        assert "onednn-cpu-gomp" in said[0]
    else:
        assert said == []
