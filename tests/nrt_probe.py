"""Run by test_design.py in a child interpreter with NUMBA_NRT_STATS=1 (the statistics exist only
when that is set before numba is imported). Prints, as JSON, how many NRT allocations a user's
@njit loop makes when it runs a compiled training step n times, for several n.

Every array passed from Python into compiled code gets one NRT MemInfo, so the calls from Python
are wrapped in one @njit loop: its allocation count must not depend on n. Also with sample
weights: weighted steps, and weighted epochs of fit's compiled loop (with a step of weight 0,
which is skipped), with and without gradient accumulation.
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
def weighted_train_steps(n, params, grads, work, x, target, net, update, weights):
    total = 0.0
    for _ in range(n):
        loss, norm, applied = kernels.mlp_train_step(params, grads, work, x, target, net, update,
                                                     weights)
        total += loss + norm
    return total


@njit(cache=True)
def weighted_train_epochs(n, params, grads, work, x_batch, y_batch, step_losses, step_norms,
                          step_layer_sq, x, target, order, batch_size, net, update, accumulate,
                          micro_grads, weights, w_batch):
    total = 0
    for _ in range(n):
        total += kernels.mlp_train_epoch(params, grads, work, x_batch, y_batch, step_losses,
                                         step_norms, step_layer_sq, x, target, order,
                                         batch_size, net, update, accumulate, micro_grads,
                                         weights, w_batch)
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
             (np.float64, "softmax_cross_entropy", [256, 256, 10], 64,
              lambda m: fastbp.RMSprop(m, momentum=0.9, centered=True, weight_decay=0.01,
                                       clip_norm=1.0), 0.0),
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
        engine = model.engine
        args = (model.params, model.grads, engine.work, X, y, engine.net, opt.update_spec())
        train_steps(1, *args)               # compile the loop before counting
        report[f"{np.dtype(dtype).name}-{loss}-{sizes[0]}-l2={l2}-{opt!r}"] = {
            str(n): counts(lambda: train_steps(n, *args)) for n in repeats}
    # sample weights: (dtype, loss, rows, accumulate)
    for dtype, loss, n_rows, accumulate in ((np.float64, "softmax_cross_entropy", 64, 1),
                                            (np.float32, "binary_cross_entropy", 64, 2)):
        sizes = [32, 64, 10]
        model = fastbp.MLP(sizes, activation="relu", loss=loss, dtype=dtype, seed=0, l2=0.1)
        opt = fastbp.SGD(model, lr=1e-3, momentum=0.9, clip_norm=1.0)
        X = rng.normal(size=(n_rows, sizes[0])).astype(dtype)
        y = (rng.integers(0, 10, size=n_rows) if loss == "softmax_cross_entropy"
             else (rng.random((n_rows, 10)) < 0.5).astype(dtype))
        weights = rng.random(n_rows)
        weights[16:32] = 0   # rows 16-31 weigh 0: in the epochs, skipped steps
        opt.train_step(X, y, sample_weight=weights)
        engine = model.engine
        args = (model.params, model.grads, engine.work, X, y, engine.net, opt.update_spec(),
                weights)
        weighted_train_steps(1, *args)
        report[f"weighted-step-{np.dtype(dtype).name}-{loss}"] = {
            str(n): counts(lambda: weighted_train_steps(n, *args)) for n in repeats}
        batch_size = 8
        n_steps = -(-n_rows // (batch_size * accumulate))
        micro_grads = (kernels.aligned_zeros(model.n_params, dtype) if accumulate > 1
                       else None)
        args = (model.params, model.grads, model.engine.work,
                kernels.aligned_zeros((batch_size, sizes[0]), dtype),
                np.empty((batch_size,) + y.shape[1:], dtype=y.dtype),
                np.empty(n_steps), np.empty(n_steps), np.empty((n_steps, 2)), X, y,
                np.arange(n_rows), batch_size, model.engine.net, opt.update_spec(), accumulate,
                micro_grads, weights, np.empty(batch_size))
        assert weighted_train_epochs(1, *args) == n_steps
        report[f"weighted-epoch-{np.dtype(dtype).name}-{loss}-accumulate={accumulate}"] = {
            str(n): counts(lambda: weighted_train_epochs(n, *args)) for n in repeats}
    x = rng.normal(size=(4, 4))
    allocating_steps(1, x)
    report["control"] = {str(n): counts(lambda: allocating_steps(n, x)) for n in repeats}
    report["threads"] = fastbp.get_num_threads()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
