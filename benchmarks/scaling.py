"""Training-step time against parameter count on a log-log scale: the O(p) claim.

    python benchmarks/scaling.py [--batch 256] [--depth 2] [--dtype float32] [--points 10]
                                 [--pmin 1e4] [--pmax 1e7] [--threads N] [--out docs/scaling.png]
                                 [--json FILE] [--from-json FILE]

Networks [w] * (depth + 1) + [10] with parameter counts p log-spaced from pmin to pmax are timed
at a fixed batch (best of interleaved samples; fastbp's compiled kernels called directly, as in
the asv suite): the forward pass, forward + backward, and a whole training step. The script
prints a table, the least-squares slope of log(step time) against log(p) (the claim: 1.0), the
spread of the time per parameter per sample around its median (the claim: within +-25%), and
the backward/forward and step/inference ratios (claims: about 2 and about 3); it writes a plot.
Needs matplotlib for the plot (pip install matplotlib, or fastbp's "bench" extra); --json saves
the measurements, and --from-json plots saved ones (measure on one machine, plot on another).

Measure on an otherwise idle machine: Numba's threads wait for each other at every parallel
loop, so a core busy with other work stretches a 100-microsecond step to milliseconds.
"""
import argparse
import importlib.util
import json
import os
import platform
import sys

import numpy as np

try:
    from . import common
except ImportError:  # run as a script
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common  # noqa: E402

    if importlib.util.find_spec("fastbp") is None:  # not installed: use this checkout
        sys.path.insert(0, common.REPO)


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=common.OP_BATCH)
    parser.add_argument("--depth", type=int, default=common.OP_DEPTH)
    parser.add_argument("--dtype", choices=sorted(common.DTYPES), default="float32")
    parser.add_argument("--points", type=int, default=10)
    parser.add_argument("--pmin", type=float, default=1e4)
    parser.add_argument("--pmax", type=float, default=1e7)
    parser.add_argument("--repeat", type=int, default=7, help="interleaved samples per point")
    parser.add_argument("--threads", type=int, default=None,
                        help="fastbp.set_num_threads (default: all Numba may use)")
    parser.add_argument("--out", default=os.path.join(common.REPO, "docs", "scaling.png"),
                        help="PNG to write ('' for none)")
    parser.add_argument("--json", default="", help="also write the measurements to this file")
    parser.add_argument("--from-json", default="",
                        help="measure nothing: report and plot the measurements in this file "
                             "(written by --json, possibly on another machine)")
    return parser.parse_args(argv)


def _plot(path, rows, slope, intercept, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = np.array([r["p"] for r in rows], dtype=float)
    step = np.array([r["step"] for r in rows])
    per = np.array([r["per_param_sample"] for r in rows]) * 1e9
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.loglog(p, step * 1e3, "o-", label="training step")
    left.loglog(p, np.array([r["forward_backward"] for r in rows]) * 1e3, "s--",
                label="forward + backward")
    left.loglog(p, np.array([r["forward"] for r in rows]) * 1e3, "^--", label="forward")
    fit = np.exp(intercept) * p ** slope
    left.loglog(p, fit * 1e3, "k:", label=f"fit: time ~ p^{slope:.2f}")
    left.set_xlabel("parameters p")
    left.set_ylabel("ms per call")
    left.set_title("time against p (log-log)")
    left.grid(True, which="both", alpha=0.3)
    left.legend()
    median = np.median(per)
    right.semilogx(p, per, "o-")
    right.axhline(median, color="k", lw=0.8)
    right.axhspan(0.75 * median, 1.25 * median, color="g", alpha=0.12, label="median +-25%")
    right.set_xlabel("parameters p")
    right.set_ylabel("ns per parameter per sample")
    right.set_ylim(0, max(per.max(), 1.25 * median) * 1.1)
    right.set_title("training step: time / (p x batch)")
    right.grid(True, which="both", alpha=0.3)
    right.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _measure(args):
    import fastbp

    if args.threads is not None:
        fastbp.set_num_threads(args.threads)
    targets = np.geomspace(args.pmin, args.pmax, args.points)
    widths = sorted({common.width_for_params(t, args.depth) for t in targets})
    setting = (f"fastbp {fastbp.__version__}, {args.dtype}, batch {args.batch}, "
               f"[w]*{args.depth + 1}+[10], {fastbp.get_num_threads()} threads of "
               f"{os.cpu_count()} CPUs ({_cpu_model()})")
    print(setting)
    print(_HEADER)
    rows = []
    for width in widths:
        net = common.Net(common.layer_sizes(width, args.depth), args.batch, args.dtype)
        forward, forward_backward, step = common.best_seconds(
            [net.forward, net.loss_and_grad, net.train_step], repeat=args.repeat)
        rows.append(dict(width=width, p=net.n_params, batch=args.batch, forward=forward,
                         forward_backward=forward_backward, step=step))
        print(_line(rows[-1]), flush=True)
        del net
    return setting, rows


_HEADER = (f"{'width':>6} {'p':>10} {'forward':>11} {'fwd+bwd':>11} {'step':>11} "
           f"{'ns/p/sample':>12} {'bwd/fwd':>8} {'step/inf':>9} {'GFLOP/s':>8}")


def _derive(row):
    row["per_param_sample"] = row["step"] / (row["p"] * row["batch"])
    row["backward_forward"] = (row["forward_backward"] - row["forward"]) / row["forward"]
    row["step_inference"] = row["step"] / row["forward"]
    row["gflops"] = 6 * row["p"] * row["batch"] / row["step"] / 1e9
    return row


def _line(row):
    r = _derive(row)
    return (f"{r['width']:>6} {r['p']:>10,} {r['forward'] * 1e6:>9.1f}us "
            f"{r['forward_backward'] * 1e6:>9.1f}us {r['step'] * 1e6:>9.1f}us "
            f"{r['per_param_sample'] * 1e9:>12.4f} {r['backward_forward']:>8.2f} "
            f"{r['step_inference']:>9.2f} {r['gflops']:>8.1f}")


def main(argv=None):
    args = _parse(argv)
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        setting, rows = saved["setting"], saved["rows"]
        print(f"{setting} (from {args.from_json}, measured on {saved.get('machine', '?')})")
        print(_HEADER)
        for row in rows:
            print(_line(row))
    else:
        setting, rows = _measure(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"setting": setting, "machine": platform.node(), "rows": rows}, f,
                      indent=1)

    log_p = np.log([r["p"] for r in rows])
    slope, intercept = np.polyfit(log_p, np.log([r["step"] for r in rows]), 1)
    per = np.array([r["per_param_sample"] for r in rows])
    spread = np.abs(per / np.median(per) - 1).max()
    bf = [r["backward_forward"] for r in rows]
    si = [r["step_inference"] for r in rows]
    print(f"\nslope of log(step time) against log(p), p = {rows[0]['p']:,} ... {rows[-1]['p']:,}: "
          f"{slope:.3f} (claim: 1.0)")
    print(f"time per parameter per sample: median {np.median(per) * 1e9:.4f} ns, largest "
          f"deviation from it {spread * 100:.0f}% (claim: within 25%)")
    print(f"backward / forward: median {np.median(bf):.2f} (range {min(bf):.2f} ... "
          f"{max(bf):.2f}; claim: about 2)")
    print(f"training step / inference: median {np.median(si):.2f} (range {min(si):.2f} ... "
          f"{max(si):.2f}; claim: about 3)")
    if args.out:
        title = f"{setting}: slope {slope:.2f}, largest deviation {spread * 100:.0f}%"
        try:
            _plot(args.out, rows, slope, intercept, title)
            print(f"plot: {args.out}")
        except ImportError:
            print("plot: skipped (matplotlib is not installed)")
    return rows, slope


if __name__ == "__main__":
    main()
