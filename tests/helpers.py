"""Helpers shared by the tests."""
import hashlib
import os
import pathlib

import numba
import numpy as np

import fastbp
import naive

ROOT = pathlib.Path(__file__).resolve().parent.parent
DIGITS = ROOT.parent / "shared" / "data" / "digits" / "digits.csv.gz"


def max_threads():
    return numba.config.NUMBA_NUM_THREADS


def subprocess_env(**extra):
    """Environment for a child interpreter that imports the same fastbp as this process."""
    env = dict(os.environ)
    package_parent = str(pathlib.Path(fastbp.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([package_parent] + [p for p in
                                         env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.update(extra)
    return env


def make_targets(loss, n_rows, n_out, rng):
    """Targets of the kind the loss takes (kernels.LOSS_KINDS): labels; values in [0, 1] for a
    loss that needs them there (0/1 indicators, and a few probabilities between); else
    standard normal values."""
    kind = fastbp.kernels.LOSS_KINDS[loss]
    if kind.targets == "labels":
        return rng.integers(0, n_out, size=n_rows)
    if kind.target_range is not None:
        assert kind.target_range == (0.0, 1.0), "targets in another range: write them here"
        target = (rng.random((n_rows, n_out)) < 0.5).astype(np.float64)
        soft = rng.random((n_rows, n_out)) < 0.25
        target[soft] = rng.random(int(soft.sum()))
        return target
    return rng.normal(size=(n_rows, n_out))


def reference_for(model):
    """The naive reference network with the same architecture as a fastbp.MLP."""
    return naive.Net(model.sizes, model.activations, model.output_activation, model.loss,
                     model.l2)


def off_kink_batch(model, n_rows, rng, margin=0.05, scale=1.0):
    """(X, y) for model whose ReLU pre-activations all stay at least margin away from 0
    (checked with the float64 reference), so that finite differences see a smooth function."""
    ref = reference_for(model)
    params = model.params.astype(np.float64)
    X = rng.normal(scale=scale, size=(40 * n_rows, model.sizes[0]))
    keep = ref.min_abs_relu_preactivation(params, X) > margin
    X = X[keep][:n_rows]
    assert X.shape[0] == n_rows, "could not find enough samples away from the ReLU kink"
    y = make_targets(model.loss, n_rows, model.sizes[-1], rng)
    if model.loss == "huber":
        # Its second derivative jumps where |output - y| = delta: keep away from there too.
        diff = ref.output(params, X) - y
        near = np.abs(np.abs(diff) - fastbp.kernels.losses.HUBER_DELTA) < margin
        y = np.where(near, y + 2 * margin * np.sign(diff), y)
    return X, y


def layer_errors(model, expected_flat):
    """Normwise error of each of model's weight and bias gradients, by name, against a flat
    reference gradient."""
    weights, biases = naive.unflatten(expected_flat, model.sizes)
    errors = {}
    for l, (w, b) in enumerate(zip(weights, biases)):
        errors[f"W{l}"] = naive.normwise_error(model.weight_grads[l], w)
        errors[f"b{l}"] = naive.normwise_error(model.bias_grads[l], b)
    return errors


REPRODUCIBILITY_SIZES = (32, 64, 64, 10)


def reproducibility_rows(sizes=REPRODUCIBILITY_SIZES):
    """A batch size at which every matrix product of the network holds at least 4 tiles' worth
    of work (kernels.MIN_TILE_WORK multiply-adds each), so the kernels really split it."""
    smallest = min(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    return max(256, -(-4 * fastbp.kernels.MIN_TILE_WORK // smallest))


def reproducibility_run(dtype, threads, n_steps=4, sizes=REPRODUCIBILITY_SIZES):
    """Train a fixed model on fixed batches at the given thread count. Returns the per-step
    losses, the final params and the final grads."""
    n_rows = reproducibility_rows(sizes)
    fastbp.set_num_threads(threads)
    rng = np.random.default_rng(2024)
    model = fastbp.MLP(list(sizes), activation=["relu", "tanh"], dtype=dtype, seed=7)
    opt = fastbp.SGD(model, lr=0.05, clip_norm=1.0)
    losses = []
    for _ in range(n_steps):
        X = rng.normal(size=(n_rows, sizes[0])).astype(dtype)
        y = rng.integers(0, sizes[-1], size=n_rows)
        losses.append(opt.train_step(X, y))
    return losses, model.params.copy(), model.grads.copy()


def digest(losses, params, grads):
    """sha256 of the losses, params and grads of a reproducibility_run."""
    h = hashlib.sha256()
    for part in (np.asarray(losses, dtype=np.float64), params, grads):
        h.update(np.ascontiguousarray(part).tobytes())
    return h.hexdigest()


def assert_loss_and_grads_match_reference(model, rng, n_rows=17):
    """With random parameters (nonzero biases too): loss_and_grad's loss and every gradient
    tensor, and loss_value, within 1e-10 of the naive reference. Returns the batch X."""
    import pytest
    model.params[...] = rng.normal(scale=0.7, size=model.n_params)
    X = rng.normal(size=(n_rows, model.sizes[0]))
    y = make_targets(model.loss, n_rows, model.sizes[-1], rng)
    model.grads[...] = np.nan
    loss_value = model.loss_and_grad(X, y)
    ref_loss, ref_grads = reference_for(model).loss_and_grad(model.params, X, y)
    assert loss_value == pytest.approx(ref_loss, rel=1e-10)
    errors = layer_errors(model, ref_grads)
    assert max(errors.values()) < 1e-10, errors
    assert model.loss_value(X, y) == pytest.approx(ref_loss, rel=1e-10)
    return X


def blobs(n=96, n_features=5, n_classes=3, seed=0, spread=3.0):
    """Gaussian blobs around class centres drawn with standard deviation `spread`: float64 X,
    int labels (a well-conditioned classification problem)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, spread, (n_classes, n_features))
    y = np.arange(n) % n_classes
    X = centres[y] + rng.normal(size=(n, n_features))
    return X, y
