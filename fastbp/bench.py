"""Training-step benchmark: fastbp side by side with PyTorch (and JAX) in one process.

    python -m fastbp.bench                       # default configs, all threads
    python -m fastbp.bench --threads 1 --configs 64-128-10:32,784-256-128-10:128
    python -m fastbp.bench --json results.json   # machine-readable, for CI and comparisons
    python -m fastbp.bench --cold-start          # import-to-first-step time, cold and warm cache
    python -m fastbp.bench --mnist DIR           # whole epochs on the MNIST IDX files in DIR
    python -m fastbp.bench --optimizer adam      # Adam steps (beside SGD's) against torch's
    python -m fastbp.bench --matmul-precision bfloat16   # bfloat16 products (AMX, AVX512-BF16)

One step = forward + backward + global-norm clipping + SGD update, float32, ReLU hidden layers,
softmax cross-entropy. FLOPs per step = 6 * p * batch (the products'; a config's extras add
their own work on top, not counted).

A config may name extras for every hidden layer after a second colon, joined by "+": "layer"
or "batch" (normalisation), "residual", "dropoutP" (dropout with probability P), e.g.
784-1024-1024-10:256:layer+dropout0.1. PyTorch then runs the same layers (nn.LayerNorm or
nn.BatchNorm1d after each hidden Linear, nn.Dropout after its ReLU, the input added where
widths allow); JAX is left out; and fastbp's plain step of the same sizes is timed in the same
rounds, for "x plain", the step's cost over the plain one. "Peak" is the float32 product of two
2048 x 2048 matrices as the kernels make theirs (the BLAS ``--blas`` chose, one column tile per
thread), timed alongside each config (see below).

Two fastbp figures: "step" calls ``SGD.train_step`` from Python once per step (input checks
included); "fit" is the per-step time inside ``fit``'s compiled epoch loop (batch gathering
included, no per-step Python). PyTorch runs an eager loop (zero_grad, forward, loss, backward,
clip_grad_norm_, SGD step) on preallocated tensors; JAX, when installed, the whole step under one
``jax.jit``.

With ``--optimizer adam`` (or adamw) fastbp and PyTorch take Adam steps instead (torch.optim's
default implementation for CPU tensors; JAX is left out), and more figures are timed in the
same rounds: PyTorch with its fused Adam kernel (``fused=True``), fastbp's and PyTorch's SGD
steps (for the Adam / SGD cost ratio and SGD's x torch), fastbp's update pass alone
(``optimizer.step()`` on fixed gradients: the norm pass, then the update), and a copy moving as
many bytes as the update must (it reads parameters, gradients and both moments and writes back
all but the gradients: 7 values per parameter) on the same threads: the memory-bandwidth bar
of the update.

Everything of one config is timed in interleaved rounds: each round runs fastbp, PyTorch, JAX,
the NumPy products and the peak product one after another, so that a slow spell of a shared
machine falls on all of them. Each time is the median over the rounds, and each ratio (x torch,
x jax, % peak, % gemm) the median of the ratios taken within a round.

"gemm us" is the time the step's matrix products take on their own, each as one NumPy matmul
with the same threads (forward, weight gradient and input gradient of every layer but the first
layer's input gradient); "% gemm" is that time as a percentage of fastbp's step. On large nets it
is the floor this machine's BLAS sets; on small nets NumPy's cost per call dominates it.

With ``--matmul-precision bfloat16`` fastbp's steps take bfloat16 operands (the products of
the library kernels.require_bfloat16 loads: oneDNN's where installed, else MKL's); PyTorch's
run under ``torch.autocast("cpu", dtype=torch.bfloat16)``; JAX is left out; and more figures
are timed in the same rounds: fastbp's float32 step of the same config ("x f32") and that
library's bfloat16 product of two 2048 x 2048 matrices cut into one column tile per thread, as
the kernels call it ("bf16 peak"; "% bf16 peak" holds the step's FLOPs against it).

With ``--threads N`` smaller than the machine's cores, the process is pinned to N cores (Linux),
so that every library gets the same N.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

DEFAULT_CONFIGS = ["64-128-10:32", "784-256-128-10:128", "784-512-256-10:128",
                   "784-1024-1024-10:256", "2048-2048-2048-2048-10:512",
                   "784-256-128-10:128:layer+dropout0.1", "784-1024-1024-10:256:layer+dropout0.1"]
LR, CLIP = 0.01, 5.0
ADAM_LR = 1e-3
# Batches per timed epoch of the "fit" figure: 16, fewer for large steps (at least 2).
EPOCH_FLOPS = 4e10
# Timed runs of each callable per config; every figure is the median over them.
ROUNDS = 5


def parse_config(text):
    """'784-256-10:128' -> ([784, 256, 10], 128, {}); '784-256-10:128:layer+dropout0.1' ->
    (..., {"norm": "layer", "dropout": 0.1}): the MLP's keyword arguments of the extras."""
    try:
        sizes, batch, *extras = text.split(":")
        sizes = [int(s) for s in sizes.split("-")]
        batch = int(batch)
        if len(extras) > 1:
            raise ValueError
        extras = _extras(extras[0]) if extras else {}
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad config {text!r}: expected sizes:batch, e.g. "
                                         "784-256-10:128, or sizes:batch:extras, e.g. "
                                         "784-256-10:128:layer+dropout0.1") from None
    if len(sizes) < 2 or min(sizes) < 1 or batch < 1:
        raise argparse.ArgumentTypeError(f"bad config {text!r}: sizes and batch must be >= 1")
    return sizes, batch, extras


def _extras(text):
    """The MLP keyword arguments of a config's extras (ValueError for an unknown one)."""
    extras = {}
    for token in text.split("+"):
        if token in ("layer", "batch"):
            extras["norm"] = token
        elif token == "residual":
            extras["residual"] = True
        elif token.startswith("dropout") and 0 < float(token[len("dropout"):]) < 1:
            extras["dropout"] = float(token[len("dropout"):])
        else:
            raise ValueError(token)
    return extras


def config_name(sizes, batch, extras):
    """The text of a config, as parse_config reads it."""
    text = f"{'-'.join(map(str, sizes))}:{batch}"
    tokens = ([extras["norm"]] if "norm" in extras else []) + (
        ["residual"] if extras.get("residual") else []) + (
        [f"dropout{extras['dropout']:g}"] if "dropout" in extras else [])
    return text + (":" + "+".join(tokens) if tokens else "")


def _calls_per_run(fn, seconds):
    """How many calls of fn last about `seconds` (at least 1), after two warm-up calls."""
    fn()
    fn()
    calls = 1
    while calls < 1 << 20:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        if time.perf_counter() - start >= seconds:
            break
        calls *= 2
    return calls


def interleaved_times(fns, min_time, rounds=ROUNDS):
    """Seconds per call of each callable in `fns` (name -> fn), one figure per round.

    The callables take turns: every round runs each of them once for about min_time / rounds
    seconds, so a slow spell of a shared machine falls on all of them alike, and ratios taken
    within a round compare like with like. Each timed run follows an untimed one half as long,
    which lets the previous callable's thread pool go idle first."""
    calls = {name: _calls_per_run(fn, min_time / rounds) for name, fn in fns.items()}
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(max(1, calls[name] // 2)):
                fn()
            start = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            times[name].append((time.perf_counter() - start) / calls[name])
    return times


PEAK_SIZE = 2048


def peak_product(bfloat16=False):
    """The product of two PEAK_SIZE x PEAK_SIZE matrices as the kernels make theirs, as a
    callable: through kernels.gemm (the BLAS --blas chose, or for bfloat16 bit patterns the
    product require_bfloat16 loaded), one column tile per thread, each one single-threaded
    call. The
    "peak" every config is held against, timed in the same rounds as the config."""
    from numba import njit, prange

    from .kernels import gemm
    from .kernels._config import PARALLEL
    from .kernels._native import num_threads

    @njit(**dict(PARALLEL, cache=False))
    def product(c, a, b):
        n = c.shape[1]
        tiles = num_threads()
        for t in prange(tiles):
            c0, c1 = t * n // tiles, (t + 1) * n // tiles
            gemm(c[:, c0:c1], a, b[:, c0:c1], 1.0, 0.0, False, False)
    rng = np.random.default_rng(0)
    if bfloat16:   # bit patterns of values in [0.5, 2)
        a = rng.integers(0x3F00, 0x4000, (PEAK_SIZE, PEAK_SIZE), dtype=np.uint16)
    else:
        a = rng.standard_normal((PEAK_SIZE, PEAK_SIZE)).astype(np.float32)
    out = np.empty((PEAK_SIZE, PEAK_SIZE), dtype=np.float32)
    product(out, a, a)
    return lambda: product(out, a, a)


def step_products(sizes, batch, dtype=np.float32):
    """The matrix products of one training step as NumPy matmuls on random operands, one
    callable each: every layer's forward product and weight gradient, and every input gradient
    but the first layer's (which no trainer needs)."""
    rng = np.random.default_rng(0)
    products = []
    for layer, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        x = rng.standard_normal((batch, n_in)).astype(dtype)
        w = rng.standard_normal((n_in, n_out)).astype(dtype)
        d = rng.standard_normal((batch, n_out)).astype(dtype)
        out, dw, dx = np.empty_like(d), np.empty_like(w), np.empty_like(x)
        products += [lambda x=x, w=w, out=out: np.matmul(x, w, out=out),
                     lambda x=x, d=d, dw=dw: np.matmul(x.T, d, out=dw)]
        if layer > 0:
            products.append(lambda d=d, w=w, dx=dx: np.matmul(d, w.T, out=dx))
    return products


def _fastbp_optimizer(name, model):
    import fastbp
    if name == "sgd":
        return fastbp.SGD(model, lr=LR, clip_norm=CLIP)
    return {"adam": fastbp.Adam, "adamw": fastbp.AdamW}[name](model, lr=ADAM_LR, clip_norm=CLIP)


def fastbp_steps(sizes, batch, optimizer="sgd", extras=None, precision="float32"):
    """(train_step callable, one-epoch callable, batches per epoch, parameter count, update
    callable: the update pass alone), for an MLP with these extras (keyword arguments) and
    matmul precision."""
    import fastbp
    from fastbp.layout import n_params
    from fastbp.engine import StepBuffers
    rng = np.random.default_rng(0)
    n_batches = int(max(2, min(16, EPOCH_FLOPS // (6 * batch * n_params(sizes)))))
    n = batch * n_batches
    X = rng.standard_normal((n, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], n)
    model = fastbp.MLP(sizes, seed=0, matmul_precision=precision, **(extras or {}))
    opt = _fastbp_optimizer(optimizer, model)
    xb, yb = X[:batch], y[:batch]

    Xc, yc = model.engine.check_batch(X, y)
    buffers = StepBuffers(model.engine, Xc, yc, batch, max_steps=n_batches)   # as fit's
    order = np.arange(n)

    def epoch():
        done = model.engine.train_steps(opt.update_spec(), Xc, yc, order, buffers)
        assert done == n_batches, "the benchmark diverged"
    return lambda: opt.train_step(xb, yb), epoch, n_batches, model.n_params, opt.step


def update_copy(n_params):
    """A copy of as many bytes as Adam's update pass moves over n_params float32 values (7 reads
    and writes per parameter), over the same threads and chunks as the update, as a callable."""
    from numba import njit, prange

    from .kernels._config import NORM_CHUNK, PARALLEL

    @njit(**dict(PARALLEL, cache=False))
    def copy(dst, src):
        for c in prange((src.shape[0] + NORM_CHUNK - 1) // NORM_CHUNK):
            start = c * NORM_CHUNK
            dst[start:start + NORM_CHUNK] = src[start:start + NORM_CHUNK]
    src = np.ones(7 * n_params // 2, dtype=np.float32)
    dst = np.empty_like(src)
    copy(dst, src)
    return lambda: copy(dst, src)


def torch_optimizer(name, params, lr=None, fused=False):
    """torch.optim's optimizer of this name: its default implementation for CPU tensors, or with
    fused=True its fused kernel."""
    import torch
    if name == "sgd":
        return torch.optim.SGD(params, lr=LR if lr is None else lr)
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    return cls(params, lr=ADAM_LR if lr is None else lr, **({"fused": True} if fused else {}))


def torch_net(sizes, extras=None):
    """PyTorch's MLP of these sizes with ReLU hidden layers and these extras (see the module
    docstring), in train() mode."""
    import torch
    extras = extras or {}

    class Hidden(torch.nn.Module):
        def __init__(self, n_in, n_out):
            super().__init__()
            norm = {"layer": torch.nn.LayerNorm, "batch": torch.nn.BatchNorm1d}.get(
                extras.get("norm"))
            parts = [torch.nn.Linear(n_in, n_out)] + ([norm(n_out)] if norm else []) + [
                torch.nn.ReLU()] + ([torch.nn.Dropout(extras["dropout"])]
                                    if "dropout" in extras else [])
            self.body = torch.nn.Sequential(*parts)
            self.residual = extras.get("residual") and n_in == n_out

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    hidden = [Hidden(n_in, n_out) for n_in, n_out in zip(sizes[:-2], sizes[1:-1])]
    return torch.nn.Sequential(*hidden, torch.nn.Linear(sizes[-2], sizes[-1])).train()


def torch_step(sizes, batch, threads, optimizer="sgd", fused=False, extras=None,
               autocast=False):
    """A callable that runs one PyTorch eager training step (its forward pass and loss under
    bfloat16 autocast when autocast)."""
    import contextlib
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = torch_net(sizes, extras)
    opt = torch_optimizer(optimizer, net.parameters(), fused=fused)
    loss_fn = torch.nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    X = torch.from_numpy(rng.standard_normal((batch, sizes[0])).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, sizes[-1], batch))

    def precision():
        if autocast:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step():
        opt.zero_grad(set_to_none=False)
        with precision():
            loss = loss_fn(net(X), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), CLIP)
        opt.step()
    return step


def jax_step(sizes, batch):
    """A callable that runs one JAX training step (one jax.jit call)."""
    import jax
    import jax.numpy as jnp
    key = jax.random.PRNGKey(0)
    params = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        key, sub = jax.random.split(key)
        params.append((jax.random.normal(sub, (n_in, n_out), jnp.float32)
                       * np.sqrt(2.0 / n_in), jnp.zeros(n_out, jnp.float32)))

    def loss_fn(params, x, y):
        for w, b in params[:-1]:
            x = jax.nn.relu(x @ w + b)
        logits = x @ params[-1][0] + params[-1][1]
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    @jax.jit
    def step(params, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        norm = jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree_util.tree_leaves(grads)))
        scale = jnp.minimum(1.0, CLIP / (norm + 1e-6))
        return jax.tree_util.tree_map(lambda p, g: p - LR * scale * g, params, grads), loss

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, sizes[0])).astype(np.float32))
    y = jnp.asarray(rng.integers(0, sizes[-1], batch).astype(np.int32))
    state = [params]

    def run():
        state[0], loss = step(state[0], x, y)
        loss.block_until_ready()
    return run


MNIST_LR = {"sgd": 0.1, "adam": 1e-3, "adamw": 1e-3}


def mnist_epochs(data_dir, threads, epochs=3, batch=128, have_torch=False, optimizer="sgd"):
    """Training throughput on real MNIST, 784-256-128-10, clip 5, SGD lr 0.1 (or Adam/AdamW lr
    1e-3): samples/s over whole epochs (shuffling and batch gathering included) and test
    accuracy, for fastbp.fit and for a plain PyTorch loop with the same optimizer (Adam: its fused
    kernel, PyTorch's fastest on CPU) and batch."""
    import fastbp
    data = fastbp.data.load("mnist", data_dir=data_dir, val_fraction=0.0, download=False)
    sizes = [784, 256, 128, 10]
    lr = MNIST_LR[optimizer]
    make = {"sgd": fastbp.SGD, "adam": fastbp.Adam, "adamw": fastbp.AdamW}[optimizer]
    model = fastbp.MLP(sizes, seed=0)
    opt = make(model, lr=lr, clip_norm=5.0)
    fastbp.fit(model, data.X_train[:batch * 4], data.y_train[:batch * 4], opt, epochs=1,
               batch_size=batch, seed=0)  # compile outside the timing
    model = fastbp.MLP(sizes, seed=0)
    opt = make(model, lr=lr, clip_norm=5.0)
    start = time.perf_counter()
    fastbp.fit(model, data.X_train, data.y_train, opt, epochs=epochs, batch_size=batch, seed=0)
    seconds = time.perf_counter() - start
    result = {"optimizer": optimizer, "lr": lr, "epochs": epochs, "batch": batch,
              "fastbp_samples_per_s": epochs * len(data.y_train) / seconds,
              "fastbp_test_accuracy": float((model.predict(data.X_test) == data.y_test).mean())}
    if have_torch:
        import torch
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(),
                                  torch.nn.Linear(256, 128), torch.nn.ReLU(),
                                  torch.nn.Linear(128, 10))
        topt = torch_optimizer(optimizer, net.parameters(), lr, fused=optimizer != "sgd")
        loss_fn = torch.nn.CrossEntropyLoss()
        X, y = torch.from_numpy(data.X_train), torch.from_numpy(data.y_train)
        start = time.perf_counter()
        for _ in range(epochs):
            order = torch.randperm(len(y))
            for i in range(0, len(y), batch):
                index = order[i:i + batch]
                topt.zero_grad(set_to_none=False)
                loss_fn(net(X[index]), y[index]).backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
                topt.step()
        seconds = time.perf_counter() - start
        with torch.no_grad():
            predicted = net(torch.from_numpy(data.X_test)).argmax(1).numpy()
        result["torch_samples_per_s"] = epochs * len(y) / seconds
        result["torch_test_accuracy"] = float((predicted == data.y_test).mean())
    return result


def cold_start():
    """Seconds from `import fastbp` to the end of the first training step, in fresh processes:
    once with an empty Numba cache, once with the cache that run filled."""
    code = ("import time; t0 = time.perf_counter(); import numpy as np, fastbp; "
            "m = fastbp.MLP([64, 128, 10], seed=0); o = fastbp.SGD(m, lr=0.1, clip_norm=5.0); "
            "X = np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32); "
            "o.train_step(X, np.arange(32) % 10); print(time.perf_counter() - t0)")
    result = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for label in ("cold", "warm"):
            out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                 capture_output=True, text=True).stdout
            result[label] = float(out.split()[-1])
    return result


def machine():
    import numba

    from .kernels import cpu_bfloat16_units
    from .kernels._native import BLAS, blas_in_use
    name, core = blas_in_use()
    info = {"date": time.strftime("%Y-%m-%d"), "python": platform.python_version(),
            "numpy": np.__version__, "numba": numba.__version__,
            "kernel_blas": f"{BLAS} ({name}: {core} kernels)", "blas": name,
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "cpu_bfloat16": cpu_bfloat16_units()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def main(argv=None):
    from ._threads import BLAS_CHOICES, WORK_SPLITS

    parser = argparse.ArgumentParser(prog="python -m fastbp.bench", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for every library (default: all cores)")
    parser.add_argument("--configs", type=lambda s: [parse_config(c) for c in s.split(",")],
                        default=[parse_config(c) for c in DEFAULT_CONFIGS],
                        help="comma-separated sizes:batch, e.g. 64-128-10:32,784-256-10:128")
    parser.add_argument("--min-time", type=float, default=1.0,
                        help="seconds of timed calls per figure (default 1.0)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON ('-' for "
                        "standard output)")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    parser.add_argument("--no-jax", action="store_true", help="skip JAX")
    parser.add_argument("--optimizer", choices=("sgd", "adam", "adamw"), default="sgd",
                        help="the optimizer of every step (see above)")
    parser.add_argument("--matmul-precision", choices=("float32", "bfloat16"), default="float32",
                        help="fastbp's products (bfloat16: against PyTorch's bfloat16 autocast "
                        "and fastbp float32; see above)")
    parser.add_argument("--work-split", choices=WORK_SPLITS, default="shape",
                        help="how fastbp's kernels cut products for the threads "
                        "(fastbp.set_work_split; default shape)")
    parser.add_argument("--blas", choices=BLAS_CHOICES, default="auto",
                        help="the BLAS build of fastbp's float products (fastbp.set_blas; "
                        "default auto)")
    parser.add_argument("--mnist", metavar="DIR", help="also time whole training epochs on the "
                        "MNIST IDX files in DIR, against a plain PyTorch loop")
    parser.add_argument("--mnist-epochs", type=int, default=3, metavar="N",
                        help="epochs of the MNIST run (default 3)")
    parser.add_argument("--cold-start", action="store_true",
                        help="also time import to first step with a cold and a warm Numba cache")
    args = parser.parse_args(argv)

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = args.threads or cores
    if not 1 <= threads <= cores:
        parser.error(f"--threads: expected 1..{cores}, got {threads}")
    if threads < cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:threads])
    # Not NUMBA_NUM_THREADS: `python -m fastbp.bench` has imported fastbp (and started Numba's
    # pool) before this line, and changing it now makes Numba refuse to compile.
    import fastbp
    from .kernels._native import avx512_kernels_unused
    fastbp.set_num_threads(threads)
    fastbp.set_work_split(args.work_split)
    try:
        fastbp.set_blas(args.blas)
    except fastbp.kernels.BlasUnavailable as exc:
        parser.error(f"--blas {args.blas}: {exc}")

    os.environ["JAX_PLATFORMS"] = "cpu"  # before JAX is imported: a GPU must not stand in
    have = {}
    adam = args.optimizer != "sgd"
    bf16 = args.matmul_precision == "bfloat16"
    if bf16:
        try:
            info_mkl = fastbp.kernels.require_bfloat16()
        except fastbp.kernels.Bfloat16Unavailable as exc:
            parser.error(f"--matmul-precision bfloat16: {exc}")
    for name, skip in (("torch", args.no_torch), ("jax", args.no_jax or adam or bf16)):
        if not skip:
            try:
                __import__(name)
                have[name] = True
            except ImportError:
                print(f"{name} is not installed: its column is left empty")

    info = machine()
    info["work_split"] = args.work_split
    units = [name for name, present in info["cpu_bfloat16"].items() if present]
    print(f"{info['cpu']}, {threads} threads (work split: {args.work_split}), "
          f"numba {info['numba']}, numpy {info['numpy']}; "
          f"kernels' BLAS: {info['kernel_blas']}; bfloat16 units: "
          f"{', '.join(units) if units else 'none'}")
    if info["blas"] == "openblas" and avx512_kernels_unused():
        print("(this CPU has AVX-512, but OpenBLAS chose other kernels: --blas openblas-avx512 "
              "may be faster; README, \"Which BLAS\")")
    if bf16:
        info["bf16_blas"] = info_mkl
        print(f"bfloat16 products: {info_mkl}")
    header = (f"{'config':<28}{'params':>11}{'step us':>10}{'fit us':>10}{'torch us':>10}"
              f"{'jax us':>9}{'x torch':>9}{'x jax':>7}{'GFLOP/s':>9}{'% peak':>8}"
              f"{'gemm us':>10}{'% gemm':>8}")
    print(header)
    rows = []
    from threadpoolctl import threadpool_limits
    for sizes, batch, extras in args.configs:
        step, epoch, n_batches, p, update = fastbp_steps(sizes, batch, args.optimizer, extras,
                                                         args.matmul_precision)
        fns = {"step": step, "fit": epoch, "peak": peak_product()}
        if bf16:
            fns["f32"] = fastbp_steps(sizes, batch, args.optimizer, extras)[1]
            fns["bf16 peak"] = peak_product(bfloat16=True)
        if extras:
            fns["plain"] = fastbp_steps(sizes, batch, args.optimizer, None,
                                        args.matmul_precision)[1]
        if adam:
            fns["fit sgd"] = fastbp_steps(sizes, batch, extras=extras)[1]
            fns["update"], fns["copy"] = update, update_copy(p)
        if have.get("torch"):
            fns["torch"] = torch_step(sizes, batch, threads, args.optimizer, extras=extras,
                                      autocast=bf16)
            if adam:
                fns["torch fused"] = torch_step(sizes, batch, threads, args.optimizer, True,
                                                extras)
                fns["torch sgd"] = torch_step(sizes, batch, threads, extras=extras)
        if have.get("jax") and not extras:
            fns["jax"] = jax_step(sizes, batch)
        products = step_products(sizes, batch)
        fns.update((f"gemm {i}", product) for i, product in enumerate(products))
        # NumPy's BLAS gets the same threads; fastbp's own stays at one (every step re-pins it).
        with threadpool_limits(limits=threads, user_api="blas"):
            runs = {name: np.array(times)
                    for name, times in interleaved_times(fns, args.min_time).items()}
        runs["fit"] /= n_batches
        for name in ("fit sgd", "plain", "f32"):
            if name in runs:
                runs[name] /= n_batches
        runs["gemm"] = sum(runs.pop(f"gemm {i}") for i in range(len(products)))
        fit = runs["fit"]  # what fit runs; the ratios and GFLOP/s use it
        row = {"config": config_name(sizes, batch, extras), "params": p,
               "step_us": np.median(runs["step"]) * 1e6, "fit_step_us": np.median(fit) * 1e6,
               "threads": threads, "matmul_precision": args.matmul_precision}
        if bf16:
            bf16_peak = 2 * PEAK_SIZE ** 3 / runs["bf16 peak"] / 1e9
            row.update(f32_fit_step_us=np.median(runs["f32"]) * 1e6,
                       speedup_vs_f32=np.median(runs["f32"] / fit),
                       bf16_peak_gflops=np.median(bf16_peak),
                       percent_of_bf16_peak=100 * np.median(6 * p * batch / fit / 1e9
                                                            / bf16_peak))
        if extras:
            row["plain_fit_step_us"] = np.median(runs["plain"]) * 1e6
            row["cost_vs_plain"] = np.median(fit / runs["plain"])
        row["gflops"] = 6 * p * batch / row["fit_step_us"] / 1e3
        peak_gflops = 2 * PEAK_SIZE ** 3 / runs["peak"] / 1e9
        row["peak_gflops"] = np.median(peak_gflops)
        row["percent_of_peak"] = 100 * np.median(6 * p * batch / fit / 1e9 / peak_gflops)
        # Ratios are medians of per-round ratios: each compares runs made moments apart.
        for name in ("torch", "jax"):
            if name in runs:
                row[f"{name}_us"] = np.median(runs[name]) * 1e6
                row[f"speedup_vs_{name}"] = np.median(runs[name] / fit)
        row["numpy_gemm_us"] = np.median(runs["gemm"]) * 1e6
        row["percent_of_gemm"] = 100 * np.median(runs["gemm"] / fit)
        if adam:
            row.update(optimizer=args.optimizer,
                       sgd_fit_step_us=np.median(runs["fit sgd"]) * 1e6,
                       cost_vs_sgd=np.median(fit / runs["fit sgd"]),
                       update_us=np.median(runs["update"]) * 1e6,
                       copy_us=np.median(runs["copy"]) * 1e6,
                       update_gb_per_s=28 * p / np.median(runs["update"]) / 1e9,
                       percent_of_copy=100 * np.median(runs["copy"] / runs["update"]))
            if "torch sgd" in runs:
                row["sgd_speedup_vs_torch"] = np.median(runs["torch sgd"] / runs["fit sgd"])
                row["torch_fused_us"] = np.median(runs["torch fused"]) * 1e6
                row["speedup_vs_torch_fused"] = np.median(runs["torch fused"] / fit)
        rows.append(row)

        def cell(key, width, fmt):
            return f"{format(row[key], fmt) if key in row else '-':>{width}}"
        print(f"{row['config']:<28}{p:>11,}{cell('step_us', 10, '.0f')}"
              f"{cell('fit_step_us', 10, '.0f')}{cell('torch_us', 10, '.0f')}"
              f"{cell('jax_us', 9, '.0f')}{cell('speedup_vs_torch', 9, '.2f')}"
              f"{cell('speedup_vs_jax', 7, '.2f')}{cell('gflops', 9, '.1f')}"
              f"{cell('percent_of_peak', 8, '.0f')}{cell('numpy_gemm_us', 10, '.0f')}"
              f"{cell('percent_of_gemm', 8, '.0f')}")
        if extras:
            print(f"{'':<28}x plain {row['cost_vs_plain']:.3f} (the plain step of these "
                  f"sizes: {row['plain_fit_step_us']:.0f} us)")
        if bf16:
            print(f"{'':<28}x f32 {row['speedup_vs_f32']:.2f} (fastbp's float32 step: "
                  f"{row['f32_fit_step_us']:.0f} us); {row['percent_of_bf16_peak']:.0f}% of "
                  f"the bf16 product ({row['bf16_peak_gflops']:.0f} GFLOP/s); torch: "
                  "bf16 autocast")
        if adam:
            versus = (f", x torch {row['sgd_speedup_vs_torch']:.2f}; x torch fused "
                      f"{args.optimizer} {row['speedup_vs_torch_fused']:.2f}"
                      if "sgd_speedup_vs_torch" in row else "")
            print(f"{'':<28}{args.optimizer} step / SGD step {row['cost_vs_sgd']:.3f} (SGD fit "
                  f"{row['sgd_fit_step_us']:.0f} us{versus}); update pass "
                  f"{row['update_us']:.0f} us, "
                  f"{row['update_gb_per_s']:.1f} GB/s, {row['percent_of_copy']:.0f}% of a copy "
                  f"of the same bytes ({row['copy_us']:.0f} us)")
    print(f"peak: the kernels' float32 {PEAK_SIZE}x{PEAK_SIZE} product ({info['blas']}), timed "
          "in each config's rounds: "
          + ", ".join(f"{row['peak_gflops']:.0f}" for row in rows) + " GFLOP/s")
    result = {"machine": info, "threads": threads, "configs": rows}
    if args.mnist:
        runs = [args.optimizer] + (["sgd"] if adam else [])
        result["mnist"] = [mnist_epochs(args.mnist, threads, args.mnist_epochs,
                                        have_torch=have.get("torch"), optimizer=name)
                           for name in runs]
    for m in result.get("mnist", ()):
        line = (f"MNIST 784-256-128-10, {m['optimizer']} lr {m['lr']:g}, batch {m['batch']}, "
                f"{m['epochs']} epochs: fastbp "
                f"{m['fastbp_samples_per_s']:,.0f} samples/s, test accuracy "
                f"{m['fastbp_test_accuracy']:.4f}")
        if "torch_samples_per_s" in m:
            line += (f"; PyTorch {m['torch_samples_per_s']:,.0f} samples/s, test accuracy "
                     f"{m['torch_test_accuracy']:.4f}")
        print(line)
    if args.cold_start:
        result["cold_start_s"] = cold_start()
        print(f"import to first step: cold cache {result['cold_start_s']['cold']:.1f} s, "
              f"warm cache {result['cold_start_s']['warm']:.2f} s")
    if args.json:
        text = json.dumps(result, indent=2)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    return result


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("fastbp.bench: interrupted", file=sys.stderr)
        sys.exit(130)
