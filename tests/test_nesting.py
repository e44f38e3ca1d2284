"""Kernels called inside a caller's own prange loop (nested parallel loops) run under every
threading layer: under workqueue, which cannot nest loops, fastbp runs the inner ones serially
on the worker thread (kernels._nesting). Each layer runs in a child process, as Numba picks
its layer once a process."""
import json
import subprocess
import sys

import pytest

from helpers import subprocess_env

NESTED = """
import json
import numpy as np, numba
from numba import njit, prange
import fastbp.kernels as k

rng = np.random.default_rng(0)
x = rng.normal(size=(256, 384)).astype(np.float32)
w = rng.normal(size=(4, 384, 320)).astype(np.float32)
b = np.zeros(320, np.float32)

@njit(parallel=True)
def nested(outs, x, w, b):
    for i in prange(outs.shape[0]):
        k.dense_forward(outs[i], x, w[i], b, k.RELU)

serial = np.zeros((4, 256, 320), np.float32)
for i in range(4):
    k.dense_forward(serial[i], x, w[i], b, k.RELU)
outs = np.zeros_like(serial)
nested(outs, x, w, b)
print(json.dumps([numba.threading_layer(), bool((outs == serial).all())]))
"""


@pytest.mark.parametrize("layer", ["workqueue", "omp"])
def test_a_kernel_inside_a_callers_prange_runs_under_each_layer(layer):
    result = subprocess.run([sys.executable, "-c", NESTED], capture_output=True, text=True,
                            timeout=600, env=subprocess_env(NUMBA_THREADING_LAYER=layer,
                                                            NUMBA_NUM_THREADS="2"))
    if layer == "omp" and "No threading layer could be loaded" in result.stderr:
        pytest.skip("no OpenMP runtime here")
    assert result.returncode == 0, result.stderr[-3000:]
    chosen, equal = json.loads(result.stdout.splitlines()[-1])
    assert chosen == layer
    assert equal   # the same bits as one call at a time
