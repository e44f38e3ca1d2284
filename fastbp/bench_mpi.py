"""What data-parallel training costs per step: ``fit`` alone against ``fit(comm=)`` over MPI.

    python -m fastbp.bench_mpi --json one.json                  # one process, all its threads
    mpiexec -n 2 python -m fastbp.bench_mpi --json two.json     # two ranks (a core each here)

For each of fastbp.bench's standard configs (float32, ReLU, softmax cross-entropy, SGD with
global-norm clipping; the config's batch is the global batch, split over the ranks) it times,
in µs per step:

- "fit": a step inside ``fit`` (its seconds over its steps, several epochs after a warm-up
  epoch). One process: fit's compiled chunks of steps; under MPI: the data-parallel step
  (this rank's gradient, the all-reduce, the update), one Python round per step.
- "per-step fit" (one process only): ``fit`` with a gradient hook that does nothing, which
  takes the same one-round-per-step Python path as the data-parallel step, without MPI.
- "allreduce" (under MPI): the all-reduce of the gradient buffer alone, as the step calls it
  (median of many, after a barrier); "share": its part of the data-parallel step.

Rank 0 prints a line per config and writes ``--json``. Timings are medians over ``--repeats`` runs.

    python -m fastbp.bench_mpi --cost-model one.json

prints instead what the cost model (docs/mpi.md) predicts for a step on N machines from the
one-process step times in one.json (this module's, or fastbp.bench's ``fit_step_us``): the
step's compute divided by N, plus a ring all-reduce that moves 2 (N - 1) / N times the gradient
bytes over each link, at 10 and 100 Gbit/s.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

from .bench import DEFAULT_CONFIGS, parse_config

EPOCH_FLOPS = 2e10   # flops of a timed epoch: 6 p B per step (fewer steps for large nets)


def _data(sizes, batch):
    """Rows for a few steps of this config (at least 4 steps, at most 100 per epoch)."""
    n_params = sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))
    steps = int(max(4, min(100, EPOCH_FLOPS // (6 * batch * n_params))))
    rng = np.random.default_rng(0)
    X = rng.standard_normal((steps * batch, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], steps * batch)
    return X, y, steps


_THREADS_IN_FIT = [None]   # the threads fit used (fit(comm=) may lower them)


class _RecordThreads:
    def on_epoch_end(self, epoch, history, model):
        import numba
        _THREADS_IN_FIT[0] = numba.get_num_threads()


def fit_step_us(sizes, batch, comm=None, per_step=False, epochs=3):
    """Median µs per step of fit, on this process or with comm."""
    import fastbp
    X, y, steps = _data(sizes, batch)
    model = fastbp.MLP(sizes, seed=0)
    optimizer = fastbp.SGD(model, lr=0.01, clip_norm=5.0)
    options = dict(batch_size=batch, seed=0, metrics_rows=0, callbacks=[_RecordThreads()])
    if comm is not None:
        options["comm"] = comm
    if per_step:
        options["grad_hook"] = lambda m: None
    fastbp.fit(model, X, y, optimizer, epochs=1, **options)   # compiles, or loads the cache
    history = fastbp.fit(model, X, y, optimizer, epochs=epochs, **options)
    return float(np.median(history["seconds"])) / steps * 1e6


def allreduce_us(n_values, comm, calls=200):
    """Median µs of one in-place all-reduce (sum) of n_values float32, as a step makes it."""
    from mpi4py import MPI
    buffer = np.zeros(n_values, dtype=np.float32)
    times = []
    for _ in range(calls):
        comm.Barrier()
        start = time.perf_counter()
        comm.Allreduce(MPI.IN_PLACE, buffer)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e6


MACHINES = (2, 4, 8, 16, 32, 64)
LINKS_GBIT = (10, 100)


def predicted_step_us(step_us, n_params, machines, gbit):
    """The cost model: compute / N + ring all-reduce of the float32 gradient (µs)."""
    seconds = 2 * (machines - 1) / machines * 4 * n_params / (gbit * 1e9 / 8)
    return step_us / machines + seconds * 1e6


def cost_model(path):
    """Markdown: per config, the predicted speed-up over one machine for each link and N."""
    with open(path) as f:
        measured = json.load(f)
    rows = measured.get("results") or measured.get("configs")
    lines = ["| config | params | 1 machine | link | " + " | ".join(f"N={n}" for n in MACHINES)
             + " |", "|---|---:|---:|---|" + "---:|" * len(MACHINES)]
    for row in rows:
        step_us = row.get("fit_us") or row.get("fit_step_us")
        n_params = row.get("n_params") or row.get("params")
        for gbit in LINKS_GBIT:
            speedups = [step_us / predicted_step_us(step_us, n_params, n, gbit)
                        for n in MACHINES]
            lines.append(f"| {row['config']} | {n_params:,} | {step_us:,.0f} µs | {gbit} Gbit/s | "
                         + " | ".join(f"{s:.2g}x" for s in speedups) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastbp.bench_mpi", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    plain = [config for config in DEFAULT_CONFIGS if config.count(":") == 1]
    parser.add_argument("--configs", default=",".join(plain),
                        help="comma-separated sizes:batch configs")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--json", metavar="PATH", help="write the results here (rank 0)")
    parser.add_argument("--cost-model", metavar="PATH", help="print the cost model's "
                        "predictions from the one-process results in PATH, and stop")
    args = parser.parse_args(argv)
    if args.cost_model:
        print(cost_model(args.cost_model))
        return 0
    configs = [parse_config(text) for text in args.configs.split(",")]
    if any(extras for _, _, extras in configs):
        parser.error("--configs: the MPI benchmark times plain nets only (no :extras)")

    from . import distributed
    import numba
    comm = None
    if distributed.launched_ranks() > 1:
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
    ranks = 1 if comm is None else comm.Get_size()
    lead = comm is None or comm.Get_rank() == 0
    rows = []
    for sizes, batch, _ in configs:
        n_params = sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))
        row = {"config": f"{'-'.join(map(str, sizes))}:{batch}", "n_params": n_params,
               "ranks": ranks}
        row["fit_us"] = float(np.median([fit_step_us(sizes, batch, comm)
                                         for _ in range(args.repeats)]))
        if comm is None:
            row["per_step_fit_us"] = float(np.median([fit_step_us(sizes, batch, per_step=True)
                                                      for _ in range(args.repeats)]))
        else:
            row["allreduce_us"] = allreduce_us(n_params + 2, comm)
            row["allreduce_share"] = row["allreduce_us"] / row["fit_us"]
        rows.append(row)
        if lead:
            print("  ".join(f"{k} {v:,.4g}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in row.items()), flush=True)
    threads = [_THREADS_IN_FIT[0]] if comm is None else comm.allgather(_THREADS_IN_FIT[0])
    if lead and args.json:
        with open(args.json, "w") as f:
            json.dump({"ranks": ranks, "threads_per_rank": threads,
                       "cores": len(os.sched_getaffinity(0)), "numba": numba.__version__,
                       "python": sys.version.split()[0], "results": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
