"""Run by test_design.py in a child interpreter with NUMBA_NRT_STATS=1 (the statistics exist only
when that is set before numba is imported). Prints, as JSON, how many NRT allocations a user's
@njit loop makes when it runs a compiled training step n times, for several n.

Every array passed from Python into compiled code gets one NRT MemInfo, so the calls from Python
are wrapped in one @njit loop: its allocation count must not depend on n.
"""
import json
import os
import sys

assert os.environ.get("NUMBA_NRT_STATS") == "1", "set NUMBA_NRT_STATS=1 before importing numba"

import numpy as np  # noqa: E402
from numba import njit  # noqa: E402
from numba.core.runtime import rtsys  # noqa: E402

import fastbp  # noqa: E402
from fastbp import kernels  # noqa: E402


@njit(cache=True)
def train_steps(n, params, grads, work, x, target, net, update):
    total = 0.0
    for _ in range(n):
        loss, norm, applied = kernels.mlp_train_step(params, grads, work, x, target, net, update)
        total += loss + norm
    return total


@njit(cache=True)
def allocating_steps(n, x):
    """Control: allocates one array per iteration, so its count must grow with n."""
    total = 0.0
    for _ in range(n):
        scratch = np.empty_like(x)
        scratch[:] = x
        total += scratch[0, 0]
    return total


def counts(run):
    before = rtsys.get_allocation_stats()
    run()
    after = rtsys.get_allocation_stats()
    return {"alloc": after.alloc - before.alloc, "free": after.free - before.free,
            "mi_alloc": after.mi_alloc - before.mi_alloc,
            "mi_free": after.mi_free - before.mi_free}


def main():
    repeats = [int(v) for v in sys.argv[1:]] or [1, 50]
    rng = np.random.default_rng(0)
    report = {}
    # enough rows for the first layer's products to split into tiles on several threads
    n_rows = max(256, -(-2 * kernels.MIN_TILE_WORK // (32 * 64)))
    sgd = lambda m: fastbp.SGD(m, lr=1e-3, clip_norm=1.0)  # noqa: E731
    adam = lambda m: fastbp.Adam(m, amsgrad=True, weight_decay=0.01, clip_norm=1.0)  # noqa: E731
    # (dtype, loss, sizes, rows, optimizer, l2)
    cases = ((np.float64, "softmax_cross_entropy", [32, 64, 48, 10], n_rows, sgd, 0.0),
             (np.float32, "mse", [32, 64, 48, 10], n_rows, sgd, 0.0),
             # a first layer that splits its forward product over its inputs (2+ threads)
             (np.float32, "softmax_cross_entropy", [1024, 64, 10], 8, sgd, 0.0),
             # the optimizers' fused passes; over 4 chunks of parameters: parallel on 2 threads
             (np.float64, "mse", [32, 64, 48, 10], n_rows,
              lambda m: fastbp.SGD(m, lr=1e-3, momentum=0.9, nesterov=True, weight_decay=0.1,
                                   clip_norm=1.0), 0.0),
             (np.float32, "softmax_cross_entropy", [256, 256, 10], 64, adam, 0.0),
             (np.float32, "softmax_cross_entropy", [256, 256, 10], 64, fastbp.AdamW, 0.0),
             # binary cross-entropy and the L2 stage: serial, and (over 4 chunks of
             # parameters) parallel on 2 threads
             (np.float64, "binary_cross_entropy", [32, 64, 48, 10], n_rows, sgd, 0.1),
             (np.float32, "binary_cross_entropy", [256, 256, 10], 64, adam, 0.1))
    for dtype, loss, sizes, n_rows, make_optimizer, l2 in cases:
        model = fastbp.MLP(sizes, activation="relu", loss=loss, dtype=dtype, seed=0, l2=l2)
        opt = make_optimizer(model)
        X = rng.normal(size=(n_rows, sizes[0])).astype(dtype)
        if loss == "softmax_cross_entropy":
            y = rng.integers(0, 10, size=n_rows)
        elif loss == "mse":
            y = rng.normal(size=(n_rows, 10)).astype(dtype)
        else:
            y = (rng.random((n_rows, 10)) < 0.5).astype(dtype)
        opt.train_step(X, y)                # grows the buffers, compiles
        args = (model.params, model.grads, model._work, X, y, model._net, opt.update_spec())
        train_steps(1, *args)               # compile the loop before counting
        report[f"{np.dtype(dtype).name}-{loss}-{sizes[0]}-l2={l2}-{opt!r}"] = {
            str(n): counts(lambda: train_steps(n, *args)) for n in repeats}
    x = rng.normal(size=(4, 4))
    allocating_steps(1, x)
    report["control"] = {str(n): counts(lambda: allocating_steps(n, x)) for n in repeats}
    report["threads"] = fastbp.get_num_threads()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
