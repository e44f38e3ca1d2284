"""fastbp.sklearn against scikit-learn's own MLPClassifier: fit time and test accuracy, in one run.

    python -m fastbp.bench_sklearn                                    # the shipped digits
    python -m fastbp.bench_sklearn --letters ../shared/data/letters/letter-recognition.data \\
        --mnist ../shared/data/mnist --json results.json

Each case fits both estimators with the same parameters, the same number of epochs (tol=0 and
n_iter_no_change=max_iter, so neither stops early) and random_state=0, for the Adam and the SGD
solver, and scores both on the same held-out rows. Both get X in ``--dtype`` (float32 by
default; "both" runs each), so that both compute in it, as scikit-learn's MLP and fastbp's
estimators (dtype=None) follow X: like for like. fastbp runs on ``--threads`` threads;
scikit-learn's matrix products get the same number of BLAS threads.
fastbp is compiled (or loaded from Numba's cache) by a short fit before the timed one. Each fit is
timed ``--repeats`` times, alternating the two libraries, each after a pause that lets the
previous one's threads go idle; the figure is the fastest.

fastbp's matrix products run on the BLAS build ``--blas`` names (fastbp.set_blas: "auto", the
default, "openblas" or "openblas-avx512"; the results record the build); scikit-learn's on
NumPy's BLAS, as always.

The ceiling: every fit also gets the time its matrix products alone would take ("products s"):
the products of one step in X's dtype (each layer's forward product and weight gradient, and
every input gradient but the first layer's) through fastbp's kernels.gemm, the BLAS fastbp
runs, on one thread, timed at the case's batch size (and at the last, smaller batch of an
epoch), times the fit's steps, divided by the threads (a perfect split). A trainer that does
those products densely, with that BLAS, cannot fit in less, so scikit-learn's time over it ("at
most x") bounds the speed-up such a trainer can offer. "at peak x" is the looser bound of the
fit's flops at that BLAS's peak rate in X's dtype (one thread's rate on a large square product,
times the threads). Both are timed between the fits, so a slow spell of a shared machine falls
on them as on the fits.

The data: the shipped digits (fastbp.data's test split, features standardised on the training
rows); UCI letters (the usual split: the first 16,000 rows train, the last 4,000 test;
standardised); MNIST (the official split; pixels divided by 255).
"""
import argparse
import functools
import json
import os
import time
import warnings

import numpy as np

# Seconds each timed fit waits first, so that the threads of what ran before it are idle
# (OpenBLAS's, NumPy's and so scikit-learn's, spin a while after a product before they sleep).
# It does not remove every slow spell: a digits fit right after the other library's still took
# up to twice its usual time now and then, hence the repeats.
IDLE_PAUSE = 0.5

# name, hidden layers, batch size, epochs, SGD's learning rate
CASES = {"digits": ((100,), 200, 100, 0.01), "letters": ((256, 128), 64, 20, 0.01),
         "mnist": ((256, 128), 200, 5, 0.01)}


def load_case(name, path=None):
    """(X_train, y_train, X_test, y_test) in float64, scaled as the module docstring says."""
    from fastbp import data
    if name == "digits":
        ds = data.load("digits", val_fraction=0, dtype="float64")
        return ds.X_train, ds.y_train, ds.X_test, ds.y_test
    if name == "mnist":
        ds = data.load("mnist", data_dir=path, val_fraction=0, dtype="float64")
        return ds.X_train, ds.y_train, ds.X_test, ds.y_test
    X, labels = data.read_csv(path, label_column=0)
    X_train, X_test = X[:16000], X[16000:]
    mean, std = X_train.mean(axis=0), X_train.std(axis=0)
    return (X_train - mean) / std, labels[:16000], (X_test - mean) / std, labels[16000:]


def _params(case, solver):
    hidden, batch, epochs, sgd_lr = CASES[case]
    params = dict(hidden_layer_sizes=hidden, batch_size=batch, max_iter=epochs, tol=0.0,
                  n_iter_no_change=epochs, solver=solver, random_state=0)
    if solver == "sgd":
        params["learning_rate_init"] = sgd_lr
    return params


def fit_flops(sizes, rows, epochs):
    """Floating-point operations of a fit's matrix products (2 per multiply-add): per row and
    epoch, each layer's forward product and weight gradient, and every input gradient but the
    first layer's."""
    products = sum(n_in * n_out for n_in, n_out in zip(sizes[:-1], sizes[1:]))
    return 2 * (3 * products - sizes[0] * sizes[1]) * rows * epochs


def _fastest(fn, runs):
    """Seconds per call of fn: the fastest of `runs` timed runs of about 0.05 s each
    (fastbp.bench.interleaved_times)."""
    from fastbp.bench import interleaved_times
    return min(interleaved_times({"fn": fn}, 0.05 * runs, rounds=runs)["fn"])


@functools.lru_cache(maxsize=None)
def _compiled_products():
    """Two compiled functions that multiply through fastbp's kernels.gemm (the BLAS the
    kernels call, on the calling thread alone): (step, square). step(inputs, weights, deltas,
    weight_grads, input_grads, repeats) runs the products of a training step (operands as
    step_operands makes them) `repeats` times; square(out, a) is out = a @ a."""
    from numba import njit

    from fastbp.kernels import gemm

    @njit
    def step(inputs, weights, deltas, weight_grads, input_grads, repeats):
        for _ in range(repeats):
            for layer in range(len(weights)):
                gemm(deltas[layer], inputs[layer], weights[layer], 1.0, 0.0, False, False)
                gemm(weight_grads[layer], inputs[layer], deltas[layer], 1.0, 0.0, True, False)
                if layer > 0:
                    gemm(input_grads[layer], deltas[layer], weights[layer], 1.0, 0.0, False,
                         True)

    @njit
    def square(out, a):
        gemm(out, a, a, 1.0, 0.0, False, False)
    return step, square


def step_operands(sizes, batch, dtype):
    """Random operands of one step's products, as five numba typed lists (each layer's input,
    weight, delta, weight gradient and input gradient): every layer's forward product and
    weight gradient, and every input gradient but the first layer's (which no trainer needs)."""
    from numba.typed import List
    rng = np.random.default_rng(0)
    lists = [List() for _ in range(5)]
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        x = rng.standard_normal((batch, n_in)).astype(dtype)
        w = rng.standard_normal((n_in, n_out)).astype(dtype)
        for where, array in zip(lists, (x, w, np.empty((batch, n_out), dtype), np.empty_like(w),
                                        np.empty_like(x))):
            where.append(array)
    return lists


def _step_products_seconds(sizes, batch, dtype):
    """The seconds of one step's matrix products on one thread with the kernels' BLAS, at
    best."""
    step, _ = _compiled_products()
    operands = step_operands(sizes, batch, dtype)
    step(*operands, 1)
    return _fastest(lambda: step(*operands, 10), 5) / 10


def products_seconds(sizes, batch, rows, epochs, dtype, threads):
    """How long a fit spends in its matrix products alone, at best, on `threads` threads: per
    epoch, rows // batch full batches and one of the remaining rows, each at its step's
    products on one thread with the kernels' BLAS, divided by the threads (a perfect split)."""
    full, rest = divmod(rows, batch)
    epoch = full * _step_products_seconds(sizes, batch, dtype)
    if rest:
        epoch += _step_products_seconds(sizes, rest, dtype)
    return epochs * epoch / threads


def peak_gflops(dtype, threads):
    """The machine's matrix-product rate in dtype with the kernels' BLAS: one thread's rate on
    a PEAK_SIZE x PEAK_SIZE product (fastbp.bench.PEAK_SIZE), times the threads."""
    from fastbp.bench import PEAK_SIZE
    _, square = _compiled_products()
    a = np.random.default_rng(0).standard_normal((PEAK_SIZE, PEAK_SIZE)).astype(dtype)
    out = np.empty_like(a)
    square(out, a)
    return threads * 2 * PEAK_SIZE ** 3 / _fastest(lambda: square(out, a), 3) / 1e9


def compare(case, data, solver, threads, repeats):
    """Fit time and test accuracy of both estimators on one case."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier as Reference
    from threadpoolctl import threadpool_limits

    from fastbp.sklearn import MLPClassifier

    X_train, y_train, X_test, y_test = data
    params = _params(case, solver)
    estimators = {"fastbp": lambda: MLPClassifier(**params, n_threads=threads),
                  "sklearn": lambda: Reference(**params)}
    seconds = {name: [] for name in estimators}
    products, peak = [], []
    n_classes = len(np.unique(y_train))
    sizes = [X_train.shape[1], *params["hidden_layer_sizes"], n_classes if n_classes > 2 else 1]
    accuracy = {}
    with warnings.catch_warnings(), threadpool_limits(limits=threads, user_api="blas"):
        warnings.simplefilter("ignore", ConvergenceWarning)
        MLPClassifier(**dict(params, max_iter=1), n_threads=threads).fit(X_train[:500],
                                                                         y_train[:500])
        for _ in range(repeats):
            for name, make in estimators.items():
                estimator = make()
                time.sleep(IDLE_PAUSE)
                start = time.perf_counter()
                estimator.fit(X_train, y_train)
                seconds[name].append(time.perf_counter() - start)
                accuracy[name] = estimator.score(X_test, y_test)
            products.append(products_seconds(sizes, params["batch_size"], len(y_train),
                                             params["max_iter"], X_train.dtype, threads))
            peak.append(peak_gflops(X_train.dtype, threads))
    fastbp_s, sklearn_s = min(seconds["fastbp"]), min(seconds["sklearn"])
    products_s = min(products)
    flops = fit_flops(sizes, len(y_train), params["max_iter"])
    peak_s = flops / max(peak) / 1e9
    return {"case": case, "solver": solver, "hidden": list(params["hidden_layer_sizes"]),
            "batch": params["batch_size"], "epochs": params["max_iter"],
            "train_rows": len(y_train), "test_rows": len(y_test),
            "fastbp_fit_s": fastbp_s, "sklearn_fit_s": sklearn_s, "speedup": sklearn_s / fastbp_s,
            "fastbp_accuracy": accuracy["fastbp"], "sklearn_accuracy": accuracy["sklearn"],
            "sizes": sizes, "products_s": products_s,
            "products_gflops": flops / products_s / 1e9,
            "speedup_ceiling": sklearn_s / products_s, "peak_gflops": max(peak),
            "peak_s": peak_s, "speedup_ceiling_at_peak": sklearn_s / peak_s}


def main(argv=None):
    from fastbp._threads import BLAS_CHOICES
    parser = argparse.ArgumentParser(prog="python -m fastbp.bench_sklearn",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--letters", metavar="FILE", help="UCI letter-recognition.data")
    parser.add_argument("--mnist", metavar="DIR", help="folder of the four MNIST IDX files")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for both libraries (default: all cores)")
    parser.add_argument("--repeats", type=int, default=3, help="fits per estimator (default 3)")
    parser.add_argument("--dtype", choices=("float32", "float64", "both"), default="float32",
                        help="X's dtype for both libraries, which both compute in (default "
                        "float32)")
    parser.add_argument("--blas", choices=BLAS_CHOICES, default="auto",
                        help="the BLAS build of fastbp's products (fastbp.set_blas; default "
                        "auto)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    import fastbp
    try:
        fastbp.set_blas(args.blas)
    except fastbp.kernels.BlasUnavailable as exc:
        parser.error(f"--blas {args.blas}: {exc}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = args.threads or cores

    from fastbp.bench import machine
    info = machine()
    dtypes = ("float32", "float64") if args.dtype == "both" else (args.dtype,)
    print(f"{info['cpu']}, {threads} threads; both libraries compute in X's dtype; fastbp's "
          f"BLAS: {info['kernel_blas']}")
    print(f"{'case':<9}{'dtype':<8}{'solver':<7}{'net':<10}{'batch':>6}{'epochs':>7}"
          f"{'fastbp s':>10}{'sklearn s':>10}{'x faster':>9}{'fastbp acc':>11}{'sklearn acc':>12}"
          f"{'products s':>11}{'at most x':>10}{'at peak x':>10}")
    rows = []
    for case, path in (("digits", None), ("letters", args.letters), ("mnist", args.mnist)):
        if case != "digits" and path is None:
            continue
        loaded = load_case(case, path)
        for dtype, solver in ((d, s) for d in dtypes for s in ("adam", "sgd")):
            data = tuple(a.astype(dtype) if a.dtype.kind == "f" else a for a in loaded)
            row = dict(compare(case, data, solver, threads, args.repeats), dtype=dtype)
            rows.append(row)
            print(f"{case:<9}{dtype:<8}{solver:<7}{'-'.join(map(str, row['hidden'])):<10}"
                  f"{row['batch']:>6}{row['epochs']:>7}{row['fastbp_fit_s']:>10.3f}"
                  f"{row['sklearn_fit_s']:>10.3f}{row['speedup']:>9.1f}"
                  f"{100 * row['fastbp_accuracy']:>10.2f}%{100 * row['sklearn_accuracy']:>11.2f}%"
                  f"{row['products_s']:>11.3f}{row['speedup_ceiling']:>10.1f}"
                  f"{row['speedup_ceiling_at_peak']:>10.1f}")
    result = {"machine": info, "threads": threads, "cases": rows}
    if args.json:
        with open(args.json, "w") as f:
            f.write(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
