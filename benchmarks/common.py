"""Helpers shared by the benchmarks: networks, data, budgets, timing and the composed backward.

Nothing here imports fastbp at module level (see __init__.py); the helpers import it when called.

Conventions used throughout the suite:

- A network of ``width`` and ``depth`` has layer sizes ``[width] * (depth + 1) + [10]``: an input
  of ``width`` features, ``depth`` hidden ReLU layers of ``width`` units, 10 classes, softmax
  cross-entropy. Its parameter count is p = depth * (width^2 + width) + 10 * width + 10.
- A training step is forward + backward + global-norm clipping + SGD update. Its FLOPs are
  counted as 6 * p * batch (2 for the forward product, 4 for the two backward products), the
  usual convention, also used by ../shared/PERF.md.
"""
import glob
import gzip
import hashlib
import importlib.util
import math
import os
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_CLASSES = 10
DTYPES = {"float32": np.float32, "float64": np.float64}
# Three sizes of network (small, mid-size, wide) for the benchmarks that sweep another axis.
SMALL_MID_WIDE = {"64-128-10 b32": ([64, 128, 10], 32),
                  "784-256-128-10 b128": ([784, 256, 128, 10], 128),
                  "1024x3-10 b256": ([1024, 1024, 1024, 1024, 10], 256)}

# Every case of every benchmark runs in a process of its own, so the full parameter grids take
# about 13 minutes on 2 cores even with --quick. By default each benchmark runs a few
# representative cases (--quick in about 2 minutes); set FASTBP_BENCH_FULL=1 in asv's
# environment for the full grids.
FULL = os.environ.get("FASTBP_BENCH_FULL", "") not in ("", "0")


def cases(full, default):
    """A parameter's values: ``full`` under FASTBP_BENCH_FULL=1, else ``default``."""
    return list(full) if FULL else list(default)

# Budgets that keep the full grid affordable on a 2-core machine (asv skips the combinations
# whose setup raises NotImplementedError): at most 2e10 FLOPs per step (about 0.1-0.2 s in
# float32 on 2 cores) and at most 4e7 parameters (params + grads under 0.7 GB in float64).
MAX_STEP_FLOPS = 2e10
MAX_PARAMS = 4e7

# Benchmarks repeat a step on one batch up to millions of times. A tiny, clipped step keeps the
# parameters near their initial values all along (at most 1e-5 per step), so the network never
# saturates: no underflow to subnormal numbers, which would slow the matrix products down.
LR = 1e-5
CLIP_NORM = 1.0


# -- networks ---------------------------------------------------------------------------------

def layer_sizes(width, depth, n_in=None, n_out=N_CLASSES):
    """[n_in or width] + [width] * depth + [n_out]."""
    return [width if n_in is None else n_in] + [width] * depth + [n_out]


def count_params(sizes):
    """Parameter count p of a network of these layer widths (fastbp.layout.n_params)."""
    from fastbp.layout import n_params
    return n_params(sizes)


def step_flops(sizes, batch):
    """FLOPs of one training step, counted as 6 * p * batch."""
    return 6 * count_params(sizes) * batch


def skip_unless_affordable(sizes, batch):
    """Raise NotImplementedError (asv: skip) for steps over the suite's budgets."""
    p = count_params(sizes)
    if p > MAX_PARAMS:
        raise NotImplementedError(f"{p:.2e} parameters: over the suite's budget of {MAX_PARAMS:.0e}")
    if step_flops(sizes, batch) > MAX_STEP_FLOPS:
        raise NotImplementedError(f"{step_flops(sizes, batch):.2e} FLOPs per step: over the "
                                  f"suite's budget of {MAX_STEP_FLOPS:.0e}")


def synthetic_batch(n_rows, n_features, dtype, seed=0):
    """Standard-normal features and labels from a fixed random linear map (learnable)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_rows, n_features)).astype(dtype)
    w = rng.standard_normal((n_features, N_CLASSES))
    y = np.argmax(X.astype(np.float64) @ w, axis=1).astype(np.int64)
    return X, y


class Net:
    """A model, its optimizer, one batch, and zero-argument callables that run fastbp's compiled
    whole-network kernels on it directly, without the validating Python layer:

    forward()       kernels.mlp_forward         (inference: every layer's dense_forward)
    loss_and_grad() kernels.mlp_loss_and_grad   (forward + loss + backward)
    train_step()    kernels.mlp_train_step      (the above + clipping + the optimizer's update)

    They call the flat-argument entry points of kernels.entry, exactly as fastbp.MLP and
    fastbp.SGD do (model.py, optim.py): this is the one place to update if those internals
    change.
    """

    def __init__(self, sizes, batch, dtype, seed=0, optimizer="sgd"):
        import fastbp
        from fastbp import kernels

        self.sizes, self.batch = list(sizes), batch
        self.dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
        self.model = m = fastbp.MLP(sizes, dtype=self.dtype, seed=seed)
        self.optimizer = o = make_optimizer(optimizer, m)
        self.X, self.y = synthetic_batch(batch, sizes[0], self.dtype, seed)
        o.train_step(self.X, self.y)  # reserves the buffers; compiles or loads the kernels
        m.loss_and_grad(self.X, self.y)
        m.forward(self.X)
        spec = o.update_spec()

        work, net = m.engine.work, m.engine.net
        self.forward = lambda: kernels.entry.forward(work.acts, m.params, self.X, *net)
        self.loss_and_grad = lambda: kernels.entry.loss_and_grad(
            m.grads, *work, m.params, self.X, self.y, *net, None, None)  # no weights, row ids
        self.train_step = lambda: kernels.entry.train_step(
            m.params, m.grads, *work, self.X, self.y, *net, *spec, None, None)
        self.forward()
        self.loss_and_grad()
        self.train_step()

    @property
    def n_params(self):
        return self.model.n_params

    @property
    def flops(self):
        return 6 * self.n_params * self.batch


OPTIMIZERS = ["sgd", "momentum", "adam", "adamw"]


def make_optimizer(name, model):
    """One of OPTIMIZERS for model, with the suite's tiny learning rate (so that thousands of
    timed steps on one batch change the model little)."""
    import fastbp
    return {"sgd": lambda: fastbp.SGD(model, lr=LR, clip_norm=CLIP_NORM),
            "momentum": lambda: fastbp.SGD(model, lr=LR, momentum=0.9, clip_norm=CLIP_NORM),
            "adam": lambda: fastbp.Adam(model, lr=LR, clip_norm=CLIP_NORM),
            "adamw": lambda: fastbp.AdamW(model, lr=LR, clip_norm=CLIP_NORM)}[name]()


# -- data -------------------------------------------------------------------------------------

def _npz_candidates():
    yield from sorted(glob.glob(os.path.join(REPO, "data", "digits*.npz")))
    spec = importlib.util.find_spec("fastbp")  # finds the package without importing it
    if spec is not None and spec.origin:
        package = os.path.dirname(spec.origin)
        for folder in ("_data", "data"):
            yield from sorted(glob.glob(os.path.join(package, folder, "digits*.npz")))


def load_digits(dtype=np.float32):
    """The UCI digits (1797 x 64, 10 classes) as (X scaled to [0, 1], y int64, source).

    Prefers the copy shipped in the repository (data/digits*.npz) or installed with fastbp,
    then ../shared/data/digits/digits.csv.gz, then synthetic data of the same shape.
    """
    for path in _npz_candidates():
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        X = next((a for k, a in arrays.items() if a.ndim == 2), None)
        y = next((a for k, a in arrays.items() if a.ndim == 1), None)
        if X is not None and y is not None and X.shape[0] == y.shape[0]:
            return (X.astype(dtype) / dtype(16)), y.astype(np.int64), path
    csv = os.path.join(os.path.dirname(REPO), "shared", "data", "digits", "digits.csv.gz")
    if os.path.exists(csv):
        with gzip.open(csv, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float64)
        return (table[:, :-1] / 16).astype(dtype), table[:, -1].astype(np.int64), csv
    X, y = synthetic_batch(1797, 64, dtype)
    return X, y, "synthetic"


# -- timing -----------------------------------------------------------------------------------

def _sample(func, number):
    start = time.perf_counter()
    for _ in range(number):
        func()
    return time.perf_counter() - start


def best_seconds(funcs, repeat=7, min_sample=0.02):
    """Best (minimum) seconds per call of each zero-argument callable.

    The callables are sampled interleaved, ``repeat`` rounds of one sample each, so that a burst
    of noise from elsewhere on the machine hits all of them alike; each sample runs a callable
    enough times to last at least ``min_sample`` seconds. The minimum is the least disturbed
    estimate of a deterministic computation's cost (as in the timeit documentation).
    """
    numbers = []
    for func in funcs:
        func()  # warm up
        number = 1
        while True:
            t = _sample(func, number)
            if t >= min_sample or number >= 1 << 20:
                break
            number *= max(2, min(10, int(math.ceil(min_sample / max(t, 1e-9)))))
        numbers.append(number)
    best = [math.inf] * len(funcs)
    for _ in range(repeat):
        for i, (func, number) in enumerate(zip(funcs, numbers)):
            best[i] = min(best[i], _sample(func, number) / number)
    return best


def matmul(dtype=np.float32, n=2048):
    """(callable, FLOPs): numpy's n x n matrix product in dtype (its own BLAS, all its threads),
    2 n^3 FLOPs per call. The machine's matrix-multiply peak as numpy reaches it."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    out = np.empty((n, n), dtype=dtype)
    return (lambda: np.matmul(a, b, out=out)), 2 * n ** 3


# -- a backward pass alone --------------------------------------------------------------------

# fastbp has no backward-only kernel: mlp_loss_and_grad runs the forward first. To time the
# backward pass alone without Python overhead, this @njit pair runs the same public layer kernels
# that mlp_loss_and_grad runs, in the same order, on buffers of its own (layer l's activations
# at n_rows * sum(sizes[1:l+1]); two ping-pong delta halves), reading params and writing grads in
# fastbp's flat layout: layer l's block starts at fastbp.layout.param_offsets(sizes)[l] and
# holds W (fan_in, fan_out) row-major, then b.
# composed_kernels() checks that its gradients equal mlp_loss_and_grad's.
#
# Compiling it costs seconds per dtype, so it is cached on disk. Numba's cache only notices
# changes to the file that holds the cached function, not to the kernels it calls, so the source
# is written to a file named by a hash of fastbp's sources, the numba version and this source:
# any change to any of them compiles afresh instead of reusing stale machine code.
_COMPOSED_SOURCE = '''\
"""Generated by fastbp's benchmarks/common.py; safe to delete."""
from numba import njit

from fastbp import kernels


@njit(cache=True)
def _layer(params, offsets, sizes, layer):
    offset = offsets[layer]
    n_in, n_out = sizes[layer], sizes[layer + 1]
    return (params[offset:offset + n_in * n_out].reshape(n_in, n_out),
            params[offset + n_in * n_out:offset + (n_in + 1) * n_out])


@njit(cache=True)
def _output(acts, sizes, n_rows, layer):
    offset = 0
    for l in range(1, layer + 1):
        offset += n_rows * sizes[l]
    width = sizes[layer + 1]
    return acts[offset:offset + n_rows * width].reshape(n_rows, width)


@njit(cache=True)
def forward(acts, params, x, offsets, sizes, activations):
    inp = x
    for layer in range(activations.shape[0]):
        weight, bias = _layer(params, offsets, sizes, layer)
        out = _output(acts, sizes, x.shape[0], layer)
        kernels.dense_forward(out, inp, weight, bias, activations[layer])
        inp = out
    return inp


@njit(cache=True)
def backward(grads, acts, deltas, losses, params, x, labels, offsets, sizes, activations):
    n_rows = x.shape[0]
    n_layers = activations.shape[0]
    half_size = deltas.shape[0] // 2
    dpre = deltas[:n_rows * sizes[n_layers]].reshape(n_rows, sizes[n_layers])
    loss = kernels.softmax_cross_entropy_forward_backward(
        dpre, losses, _output(acts, sizes, n_rows, n_layers - 1), labels)
    half = 0
    for layer in range(n_layers - 1, -1, -1):
        weight, _ = _layer(params, offsets, sizes, layer)
        dweight, dbias = _layer(grads, offsets, sizes, layer)
        if layer == 0:
            kernels.dense_backward(deltas[:0].reshape(0, sizes[0]), dweight, dbias, dpre, x,
                                   weight, kernels.IDENTITY)
        else:
            half = 1 - half
            start = half * half_size
            dinp = deltas[start:start + n_rows * sizes[layer]].reshape(n_rows, sizes[layer])
            kernels.dense_backward(dinp, dweight, dbias, dpre,
                                   _output(acts, sizes, n_rows, layer - 1), weight,
                                   activations[layer - 1])
            dpre = dinp
    return loss
'''


def _composed_module():
    import fastbp
    import numba

    digest = hashlib.sha256()
    package = os.path.dirname(os.path.abspath(fastbp.__file__))
    for name in sorted(os.listdir(package)):
        if name.endswith(".py"):
            with open(os.path.join(package, name), "rb") as f:
                digest.update(name.encode() + b"\0" + f.read())
    from fastbp.kernels import _config  # the kernels package, hashed the same way
    digest.update(_config.sources_hash().encode())
    digest.update(numba.__version__.encode() + _COMPOSED_SOURCE.encode())
    key = digest.hexdigest()[:20]
    folder = os.environ.get("FASTBP_BENCH_CACHE") or os.path.join(
        tempfile.gettempdir(), f"fastbp-benchmarks-{os.getuid() if hasattr(os, 'getuid') else 0}")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"composed_{key}.py")
    if not os.path.exists(path):
        scratch = f"{path}.{os.getpid()}.tmp"
        with open(scratch, "w") as f:
            f.write(_COMPOSED_SOURCE)
        os.replace(scratch, path)
    name = f"fastbp_bench_composed_{key}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


class ComposedBackward:
    """forward() once, then backward() as often as wanted: the backward pass of ``net`` alone
    (softmax cross-entropy gradient + every dense_backward), through fastbp's public layer
    kernels. Raises AssertionError if its gradients differ from mlp_loss_and_grad's."""

    def __init__(self, net):
        from fastbp.layout import param_offsets
        mod = _composed_module()
        m, n = net.model, net.batch
        widths = net.sizes[1:]
        self._acts = np.empty(n * sum(widths), dtype=net.dtype)
        self._deltas = np.empty(2 * n * max(widths), dtype=net.dtype)
        self._losses = np.empty(n, dtype=np.float64)
        self._grads = np.empty_like(m.params)
        offsets = param_offsets(net.sizes)
        args = (m.params, net.X, offsets, m.engine.net.sizes, m.engine.net.activations)
        mod.forward(self._acts, *args)
        net.loss_and_grad()
        self.backward = lambda: mod.backward(self._grads, self._acts, self._deltas, self._losses,
                                             m.params, net.X, net.y, offsets, m.engine.net.sizes,
                                             m.engine.net.activations)
        self.backward()
        scale = max(float(np.abs(m.grads).max()), 1e-30)
        err = float(np.abs(self._grads - m.grads).max()) / scale
        tol = 1e-4 if net.dtype == np.float32 else 1e-10
        assert err <= tol, (f"the composed backward's gradients differ from mlp_loss_and_grad's "
                            f"(max relative error {err:.2e}): update benchmarks/common.py")


# -- the O(p) sweep ---------------------------------------------------------------------------

OP_DEPTH = 2     # [w, w, w, 10]: two w x w layers and the output layer
OP_BATCH = 256


def width_for_params(p, depth=OP_DEPTH):
    """The width whose network (layer_sizes(width, depth)) has about p parameters."""
    # p = depth * w^2 + (depth + 10) * w + 10
    a, b, c = depth, depth + N_CLASSES, N_CLASSES - p
    return max(1, int(round((-b + math.sqrt(b * b - 4 * a * c)) / (2 * a))))
