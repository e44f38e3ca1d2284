"""How long a library author's own @njit function over fastbp's kernels takes to compile, with
fastbp's own Numba cache warm: the cost of compiling against the kernels (issue 32).

    python benchmarks/kernel_compile.py [--runs 5] [--json FILE]

Each run is a fresh interpreter that imports fastbp (its cache warmed beforehand by one run)
and then compiles, without a cache of its own, two functions written as a user would:
- `step`: one training step from the layer kernels (dense_forward and dense_backward for two
  layers, the softmax cross-entropy loss, sgd_update);
- `loop`: the training loop of examples/own_training_loop.py (mlp_loss_and_grad, sgd_update).
It reports each one's compile-and-first-call time, min / median / max over the runs.
"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

CHILD = r"""
import json, time
import numpy as np
from numba import njit
import fastbp.kernels as k

@njit
def step(params_w1, b1, w2, b2, dw1, db1, dw2, db2, x, y, h, out, dh, dout, losses, lr):
    k.dense_forward(h, x, params_w1, b1, k.RELU)
    k.dense_forward(out, h, w2, b2, k.IDENTITY)
    loss = k.softmax_cross_entropy_forward_backward(dout, losses, out, y)
    k.dense_backward(dh, dw2, db2, dout, h, w2, k.RELU)
    k.dense_backward(dh[:0], dw1, db1, dh, x, params_w1, k.IDENTITY)
    k.sgd_update(params_w1.ravel(), dw1.ravel(), lr)   # views: the arrays are C-contiguous
    k.sgd_update(b1, db1, lr)
    k.sgd_update(w2.ravel(), dw2.ravel(), lr)
    k.sgd_update(b2, db2, lr)
    return loss

@njit
def loop(params, grads, work, x, y, net, lr, steps):
    total = 0.0
    for _ in range(steps):
        total += k.mlp_loss_and_grad(grads, work, params, x, y, net)
        k.sgd_update(params, grads, lr)
    return total

f32 = np.float32
rng = np.random.default_rng(0)
x = rng.normal(size=(32, 64)).astype(f32); y = rng.integers(0, 10, 32)
w1, b1 = rng.normal(size=(64, 128)).astype(f32) * f32(0.1), np.zeros(128, f32)
w2, b2 = rng.normal(size=(128, 10)).astype(f32) * f32(0.1), np.zeros(10, f32)
grads = [np.zeros_like(a) for a in (w1, b1, w2, b2)]
bufs = [np.zeros((32, 128), f32), np.zeros((32, 10), f32), np.zeros((32, 128), f32),
        np.zeros((32, 10), f32), np.zeros(32)]
start = time.perf_counter()
step(w1, b1, w2, b2, *grads, x, y, bufs[0], bufs[1], bufs[2], bufs[3], bufs[4], f32(0.1))
step_s = time.perf_counter() - start

net, size = k.make_net([64, 128, 10], [k.RELU, k.IDENTITY], 32, loss="softmax_cross_entropy")
work = k.make_workspace(net, size, f32)
params = np.zeros(net.param_offsets[-1], f32); params[:] = 0.01
start = time.perf_counter()
loop(params, np.zeros_like(params), work, x, y, net, f32(0.1), 2)
loop_s = time.perf_counter() - start
print(json.dumps({"step": step_s, "loop": loop_s}))
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", help="write the runs here")
    args = parser.parse_args(argv)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def run():
        out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                             env=env, check=True)
        return json.loads(out.stdout.splitlines()[-1])

    run()   # warms fastbp's own cache
    runs = [run() for _ in range(args.runs)]
    for name in ("step", "loop"):
        times = sorted(r[name] for r in runs)
        print(f"{name}: compile and first call {times[0]:.2f} / "
              f"{statistics.median(times):.2f} / {times[-1]:.2f} s (min / median / max, "
              f"{len(times)} runs)")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(runs, indent=1) + "\n")


if __name__ == "__main__":
    main()
