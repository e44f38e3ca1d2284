"""A performance regression gate: fastbp at two revisions, timed in turns in one sitting.

    python benchmarks/gate.py BASE [HEAD] [--rounds N] [--threshold F] [--json OUT]

BASE and HEAD are git revisions or fastbp source trees (a folder holding ``fastbp/``); HEAD
defaults to this checkout as it is, uncommitted changes included. Exits 0 when no workload is
slower beyond the noise, 1 when one is (a regression), 2 when the gate could not run.

Why not ``asv continuous``: it installs each revision into a virtualenv (recompiling every
kernel each time it switches) and compares one sample per benchmark, so on a 2-core machine a
claims-only comparison took 281 s and flagged 13 results of commits that changed no code
(issue 30). Here each revision is exported once into a folder of its own under
``~/.cache/fastbp-gate`` (its Numba cache stays beside it, so later gates load instead of
compiling), and every round runs one fresh process per revision, in alternating order. Each
process times the same workloads through the public API, interleaved, best of several samples
(common.best_seconds). A workload regresses when the median over rounds of HEAD's time over
BASE's (the two processes of one round ran moments apart) exceeds 1 + threshold and HEAD was
slower in at least 3/4 of the rounds. benchmarks/README.md gives the measured false-alarm and
detection counts.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                     "fastbp-gate")

# name: (layer sizes, batch, dtype, what is timed). Public API calls only, so that the gate runs
# the same code against any revision; "step" is SGD.train_step (clipped), "adam" Adam's,
# "predict" MLP.predict_proba on 4 batches' rows, "fit" one epoch of fastbp.fit (compiled
# loop) over 1797 rows, the digits' shape.
WORKLOADS = {
    "step 64-128-10 b32": ([64, 128, 10], 32, "float32", "step"),
    "step 784-256-128-10 b128": ([784, 256, 128, 10], 128, "float32", "step"),
    "step 784-256-128-10 b128 f64": ([784, 256, 128, 10], 128, "float64", "step"),
    "step 1024x3-10 b256": ([1024, 1024, 1024, 1024, 10], 256, "float32", "step"),
    "adam 784-256-128-10 b128": ([784, 256, 128, 10], 128, "float32", "adam"),
    "predict 784-256-128-10 b512": ([784, 256, 128, 10], 512, "float32", "predict"),
    "fit 64-128-128-10 b32": ([64, 128, 128, 10], 32, "float32", "fit"),
}


class GateError(Exception):
    """The gate cannot run (bad revision, a worker failed): exit status 2."""


# -- the sides ------------------------------------------------------------------------------------

def _git(*args):
    result = subprocess.run(["git", *args], cwd=ROOT, capture_output=True)
    if result.returncode != 0:
        raise GateError(f"git {' '.join(args)}: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout


def source_tree(spec):
    """(label, folder) of a side: a folder holding fastbp/ as it is, or a git revision exported
    once (its fastbp/ only) into CACHE/<commit>, where its Numba cache is kept between gates."""
    if spec is None:
        return "working tree", ROOT
    if os.path.isdir(spec):
        if not os.path.isfile(os.path.join(spec, "fastbp", "__init__.py")):
            raise GateError(f"{spec}: not a fastbp source tree (no fastbp/__init__.py)")
        return spec, os.path.abspath(spec)
    commit = _git("rev-parse", "--verify", "--quiet", f"{spec}^{{commit}}").decode().strip()
    folder = os.path.join(CACHE, commit)
    if not os.path.isfile(os.path.join(folder, "fastbp", "__init__.py")):
        os.makedirs(CACHE, exist_ok=True)
        scratch = tempfile.mkdtemp(prefix=f"{commit[:12]}.", dir=CACHE)
        archive = os.path.join(scratch, "tree.tar")
        with open(archive, "wb") as f:
            f.write(_git("archive", "--format=tar", commit, "fastbp"))
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):   # Python 3.10.12+, 3.11.4+
                tar.extractall(scratch, filter="data")
            else:
                tar.extractall(scratch)
        os.remove(archive)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(scratch, folder)
    return f"{spec} ({commit[:10]})", folder


# -- one process: every workload, timed -----------------------------------------------------------

def _workload(sizes, batch, dtype, kind):
    """A zero-argument callable running one workload once, set up and run once already."""
    import numpy as np

    import fastbp
    from common import synthetic_batch

    dtype = getattr(np, dtype)
    model = fastbp.MLP(sizes, dtype=dtype, seed=0)
    rows = {"predict": 4 * batch, "fit": 1797}.get(kind, batch)
    X, y = synthetic_batch(rows, sizes[0], dtype)
    y = y % sizes[-1]
    if kind == "predict":
        run = lambda: model.predict_proba(X)  # noqa: E731
    elif kind == "fit":
        opt = fastbp.SGD(model, lr=1e-5, clip_norm=1.0)
        run = lambda: fastbp.fit(model, X, y, opt, epochs=1, batch_size=batch,  # noqa: E731
                                 seed=0, metrics_rows=0)
    else:
        opt = (fastbp.Adam(model, lr=1e-5, clip_norm=1.0) if kind == "adam"
               else fastbp.SGD(model, lr=1e-5, clip_norm=1.0))
        run = lambda: opt.train_step(X, y)  # noqa: E731
    run()
    return run


def worker(tree, names, repeat):
    """Seconds per call of each workload (best of `repeat` interleaved samples), as JSON on
    stdout, timed with the fastbp of `tree`."""
    import fastbp
    from common import best_seconds

    here = os.path.realpath(os.path.dirname(fastbp.__file__))
    if not here.startswith(os.path.realpath(tree) + os.sep):
        raise SystemExit(f"imported fastbp from {here}, not from {tree}")
    runs = [_workload(*WORKLOADS[name]) for name in names]
    seconds = best_seconds(runs, repeat=repeat, min_sample=0.03)
    print(json.dumps(dict(zip(names, seconds))))


def run_worker(tree, names, repeat, threads):
    env = dict(os.environ, PYTHONPATH=tree)
    if threads:
        env["NUMBA_NUM_THREADS"] = str(threads)
    command = [sys.executable, os.path.abspath(__file__), "--worker", tree,
               "--repeat", str(repeat), *[arg for name in names for arg in ("--workload", name)]]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise GateError(f"the workloads failed on {tree}:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# -- the comparison -----------------------------------------------------------------------------

def verdict(base, head, threshold):
    """Per-round times of one workload -> (median ratio head/base, rounds HEAD was slower,
    regressed?). Regressed: the median ratio is above 1 + threshold and HEAD was slower in at
    least 3/4 of the rounds (one disturbed process can swing a round's ratio by 15%)."""
    ratios = [h / b for b, h in zip(base, head)]
    median = statistics.median(ratios)
    slower = sum(r > 1 for r in ratios)
    return median, slower, median > 1 + threshold and 4 * slower >= 3 * len(ratios)


def compare(base_tree, head_tree, names, rounds, repeat, threads, log=print):
    """Times every workload at both trees, one process per tree per round, alternating which
    goes first; returns {name: {"base": [...], "head": [...]}} in seconds."""
    log("warming up (the first gate on a revision compiles its kernels)...")
    for tree in (base_tree, head_tree):
        run_worker(tree, names, 1, threads)
    times = {name: {"base": [], "head": []} for name in names}
    for r in range(rounds):
        order = [("base", base_tree), ("head", head_tree)]
        for side, tree in (order if r % 2 == 0 else order[::-1]):
            for name, seconds in run_worker(tree, names, repeat, threads).items():
                times[name][side].append(seconds)
        log(f"round {r + 1}/{rounds} done")
    return times


def report(times, threshold, log=print):
    """Prints the table; returns the names of the workloads that regressed."""
    log(f"{'workload':32} {'base ms':>9} {'head ms':>9} {'head/base':>9} {'slower':>7}  verdict")
    regressed = []
    for name, t in times.items():
        median, slower, bad = verdict(t["base"], t["head"], threshold)
        if bad:
            regressed.append(name)
        log(f"{name:32} {statistics.median(t['base']) * 1e3:9.3f} "
            f"{statistics.median(t['head']) * 1e3:9.3f} {median:9.3f} "
            f"{slower:>3}/{len(t['base']):<3}  {'REGRESSED' if bad else 'ok'}")
    return regressed


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", nargs="?", help="git revision or fastbp source tree")
    parser.add_argument("head", nargs="?", help="git revision or source tree (default: this "
                        "checkout as it is)")
    parser.add_argument("--rounds", type=int, default=8,
                        help="processes per side, in alternating order (default 8)")
    parser.add_argument("--repeat", type=int, default=5,
                        help="interleaved samples per workload in each process (default 5)")
    parser.add_argument("--threshold", type=float, default=0.08,
                        help="flag a median slowdown above this fraction (default 0.08)")
    parser.add_argument("--threads", type=int, default=0,
                        help="Numba threads (default: Numba's own, every core)")
    parser.add_argument("--workload", action="append", choices=list(WORKLOADS),
                        help="time only these (repeatable; default: all)")
    parser.add_argument("--json", metavar="OUT", help="write the times and verdicts here")
    parser.add_argument("--worker", metavar="TREE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is None and args.base is None:
        parser.error("BASE is required")
    for name in ("rounds", "repeat"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.rounds < 3 and args.worker is None:
        parser.error("--rounds must be at least 3: the verdict needs a median over rounds")
    if not 0 < args.threshold < 10:
        parser.error("--threshold must be a fraction above 0, e.g. 0.08")
    if args.threads < 0:
        parser.error("--threads must be 0 (every core) or more")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    names = args.workload or list(WORKLOADS)
    sys.path.append(HERE)  # common.py; appended, so that it cannot shadow the tree's fastbp
    if args.worker is not None:
        worker(args.worker, names, args.repeat)
        return 0
    try:
        (base_label, base_tree), (head_label, head_tree) = (source_tree(args.base),
                                                            source_tree(args.head))
        print(f"BASE {base_label}: {base_tree}\nHEAD {head_label}: {head_tree}", flush=True)
        times = compare(base_tree, head_tree, names, args.rounds, args.repeat, args.threads,
                        log=lambda text: print(text, flush=True))
    except (GateError, subprocess.TimeoutExpired) as exc:
        print(f"gate: {exc}", file=sys.stderr)
        return 2
    regressed = report(times, args.threshold)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"base": base_label, "head": head_label, "threshold": args.threshold,
                       "rounds": args.rounds, "times": times, "regressed": regressed}, f,
                      indent=1)
    if regressed:
        print(f"PERFORMANCE REGRESSED beyond {args.threshold:.0%}: {', '.join(regressed)}")
        return 1
    print(f"no workload slower beyond {args.threshold:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
