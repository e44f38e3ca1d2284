"""Record training runs bit for bit, to check that a refactoring changes no result.

``python tests/record_runs.py OUT.npz`` trains a grid of small runs (every optimizer, loss and
dtype; sample weights, sparse X, accumulation, checkpointing, L2, a gradient hook, step
callbacks, validation and early stopping, save and resume, the command) and writes every
parameter, optimizer state and history value to OUT.npz. ``python tests/record_runs.py NEW.npz
--compare OLD.npz`` records again and lists every array whose bytes differ. Results depend
on the CPU (BLAS kernels) and the work split (fastbp.set_work_split: "shape", the default,
gives the same bits at any thread count; "threads" only at the same NUMBA_NUM_THREADS), so
compare only records made on one machine with the same split; this is a tool for a
developer, not a test.
"""
import os
import subprocess
import sys
import tempfile

import numpy as np

import fastbp



def _data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(150, 12))
    labels = rng.integers(0, 4, 150)
    values = rng.normal(size=(150, 4))
    indicators = (rng.random((150, 4)) < 0.4).astype(float)
    weights = rng.uniform(0, 2, 150)
    weights[rng.random(150) < 0.2] = 0.0
    return X, {"softmax_cross_entropy": labels, "mse": values,
               "binary_cross_entropy": indicators}, weights


# History entries that are clock readings, not results.
TIMINGS = ("seconds", "samples_per_s")

OPTIMIZERS = {
    "sgd": lambda m: fastbp.SGD(m, lr=0.05),
    "sgd_momentum": lambda m: fastbp.SGD(m, lr=0.05, momentum=0.9, nesterov=True,
                                         weight_decay=1e-3, clip_norm=0.5),
    "sgd_dampening": lambda m: fastbp.SGD(m, lr=0.05, momentum=0.8, dampening=0.3),
    "adam": lambda m: fastbp.Adam(m, lr=0.01),
    "adam_amsgrad_clipped": lambda m: fastbp.Adam(m, lr=0.01, amsgrad=True, clip_norm=0.3,
                                                  weight_decay=1e-3),
    "adamw": lambda m: fastbp.AdamW(m, lr=0.01, weight_decay=0.1),
}


def _optimizer(name, model):
    return OPTIMIZERS[name](model)


def _record(out, name, model, opt, history):
    out[f"{name}/params"] = model.params.copy()
    state = getattr(opt, "state", None)
    if state is not None:
        out[f"{name}/state"] = np.asarray(state).copy()
    for key, values in sorted(history.items()):
        if key in TIMINGS:
            continue
        try:
            out[f"{name}/history/{key}"] = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            out[f"{name}/history/{key}"] = np.frombuffer(repr(values).encode(), dtype=np.uint8)


def _run(out, name, loss, opt_name, dtype=np.float64, model_options=None, sparse=False,
         weighted=False, **fit_options):
    X, targets, weights = _data()
    y = targets[loss]
    model = fastbp.MLP([12, 16, 8, 4], activation=["gelu", "tanh"], loss=loss, dtype=dtype,
                       seed=1, **(model_options or {}))
    opt = _optimizer(opt_name, model)
    if sparse:
        import scipy.sparse
        X = scipy.sparse.csr_matrix(np.where(np.abs(X) > 0.8, X, 0.0))
    options = dict(epochs=3, batch_size=16, seed=3)
    options.update(fit_options)
    history = fastbp.fit(model, X, y, opt, sample_weight=weights if weighted else None,
                         **options)
    _record(out, name, model, opt, history)


class _StepCounter:
    def __init__(self):
        self.losses = []

    def on_step_end(self, epoch, step, loss, grad_norm, model):
        self.losses.append(loss if grad_norm is None else loss + grad_norm)


def record():
    out = {}
    for loss in ("softmax_cross_entropy", "mse", "binary_cross_entropy"):
        for opt_name in OPTIMIZERS:
            for dtype in (np.float32, np.float64):
                _run(out, f"{loss}-{opt_name}-{np.dtype(dtype).name}", loss, opt_name, dtype)
    for loss in ("softmax_cross_entropy", "mse"):
        _run(out, f"{loss}-weighted", loss, "adam", weighted=True)
        _run(out, f"{loss}-sparse", loss, "sgd_momentum", sparse=True)
        _run(out, f"{loss}-sparse-weighted-acc", loss, "adamw", sparse=True, weighted=True,
             accumulate=2)
        _run(out, f"{loss}-accumulate", loss, "adam_amsgrad_clipped", accumulate=3)
        _run(out, f"{loss}-checkpoint-l2", loss, "sgd_momentum",
             model_options=dict(checkpoint_every=2, l2=0.05))
        _run(out, f"{loss}-l2-weighted", loss, "adam", model_options=dict(l2=0.02),
             weighted=True, dtype=np.float32)
        _run(out, f"{loss}-hook", loss, "adam", grad_hook=lambda m: m.grads.__imul__(0.5))
        counter = _StepCounter()
        _run(out, f"{loss}-callbacks", loss, "sgd_momentum", callbacks=[counter])
        out[f"{loss}-callbacks/step_losses"] = np.asarray(counter.losses, dtype=np.float64)
        _run(out, f"{loss}-validation", loss, "adam", epochs=8, validation_fraction=0.2,
             early_stopping=2)
    _resume(out)
    _command(out)
    return out


def _resume(out):
    X, targets, _ = _data()
    y = targets["softmax_cross_entropy"]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "ck.npz")
        for opt_name in ("sgd_momentum", "adam_amsgrad_clipped", "adamw"):
            model = fastbp.MLP([12, 16, 4], loss="softmax_cross_entropy", dtype=np.float64,
                               seed=2)
            opt = _optimizer(opt_name, model)
            fastbp.fit(model, X, y, opt, epochs=2, batch_size=20, seed=5)
            fastbp.save(model, path, optimizer=opt)
            model, opt = fastbp.load_checkpoint(path)
            history = fastbp.fit(model, X, y, opt, epochs=4, batch_size=20, seed=5,
                                 initial_epoch=2)
            _record(out, f"resume-{opt_name}", model, opt, history)


def _command(out):
    with tempfile.TemporaryDirectory() as folder:
        for optimizer in ("sgd", "adam", "adamw"):
            path = os.path.join(folder, f"{optimizer}.npz")
            subprocess.run([sys.executable, "-m", "fastbp", "train", "--epochs", "2",
                            "--optimizer", optimizer, "--save", path, "--quiet"], check=True,
                           stdout=subprocess.DEVNULL)
            with np.load(path) as saved:
                for key in saved.files:
                    out[f"command-{optimizer}/{key}"] = saved[key]


def compare(new, old):
    differing = []
    for key in sorted(set(new) | set(old)):
        a, b = new.get(key), old.get(key)
        if a is None or b is None or a.dtype != b.dtype or a.shape != b.shape \
                or a.tobytes() != b.tobytes():
            differing.append(key)
    return differing


if __name__ == "__main__":
    target = sys.argv[1]
    arrays = record()
    np.savez(target, **arrays)
    print(f"{len(arrays)} arrays written to {target}")
    if "--compare" in sys.argv:
        with np.load(sys.argv[sys.argv.index("--compare") + 1], allow_pickle=False) as old:
            old = {key: old[key] for key in old.files}
        differing = compare(arrays, old)
        for key in differing:
            print("DIFFERS:", key)
        print(f"{len(differing)} of {len(set(arrays) | set(old))} arrays differ")
        sys.exit(1 if differing else 0)
