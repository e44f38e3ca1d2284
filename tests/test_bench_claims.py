"""The asv suite's exact claims, as tests that fail: its benchmarks record these values for
history, but asv cannot fail a tracked value (issue 30). Each test runs the benchmark's own
measurement (benchmarks/bench_claims.py), so the figure asv records is the one tested here:

- Allocations.track_allocations_per_step: Numba runtime allocations per training step inside a
  compiled loop must be 0 (and the counter does see an allocating loop);
- ActivationMemory.track_bytes_beyond_formula: the array bytes a new model and its first step
  leave allocated, less parameters, gradients, optimizer scratch and the formula's activation
  bytes, must be a fixed overhead that does not grow with the batch or the width.

(The timing claims, backward about 2x forward and O(p), stay benchmarks: no test asserts on
time.)
"""
import pathlib

import numpy as np
import pytest
from numba import njit

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def bench_claims(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import bench_claims
    return bench_claims


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("network", ["64-128-10 b32", "784-256-128-10 b128"])
def test_a_training_step_makes_no_allocation(bench_claims, network, dtype):
    bench = bench_claims.Allocations()
    bench.setup(network, dtype)
    assert bench.track_allocations_per_step(network, dtype) == 0


@njit
def _allocating_loop(n, x):
    total = 0.0
    for _ in range(n):
        copy = x.copy()
        total += copy[0]
    return total


def test_the_allocation_count_sees_allocations(bench_claims):
    """The measurement can fail: a loop that allocates one array per step counts 1."""
    bench = bench_claims.Allocations()
    bench.setup("64-128-10 b32", "float64")
    x = np.ones(3)
    bench.loop = lambda n: _allocating_loop(n, x)
    assert bench.track_allocations_per_step("64-128-10 b32", "float64") == 1


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("depth", [1, 3, 8])
def test_activation_memory_is_the_formula_plus_a_fixed_overhead(bench_claims, depth, dtype):
    """Beyond the formula only a fixed overhead: the same bytes at 1 and 256 rows and at width
    64 and 128 (alignment padding and descriptor arrays), and under 2 KB."""
    beyond = {}
    for width, batch in [(128, 1), (128, 256), (64, 33)]:
        bench = bench_claims.ActivationMemory()
        bench.setup(width, depth, batch, dtype)
        beyond[width, batch] = bench.track_bytes_beyond_formula(width, depth, batch, dtype)
    assert len(set(beyond.values())) == 1, beyond
    assert 0 <= beyond[128, 1] < 2048, beyond
