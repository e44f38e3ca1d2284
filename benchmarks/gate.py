"""A performance regression gate: fastbp at two revisions, timed in turns in one sitting.

    python benchmarks/gate.py BASE [HEAD] [--rounds N] [--threshold F] [--json OUT]

BASE and HEAD are git revisions or fastbp source trees (a folder holding ``fastbp/``); HEAD
defaults to this checkout as it is, uncommitted changes included. Exit status: 0 when no
workload is slower beyond the noise, 1 when one is (a regression), 2 when the gate could not
run. A workload that one side cannot run (a revision older than the API it uses) is left out,
with a note.

Why not ``asv continuous``: it installs each revision into a virtualenv (recompiling every
kernel each time it switches) and compares one sample per benchmark, so on a 2-core machine a
claims-only comparison took 281 s and flagged 13 results of commits that changed no code
(issue 30). Here each revision is exported once into a folder of its own under
``~/.cache/fastbp-gate`` (its Numba cache stays beside it, so later gates load instead of
compiling), and every round runs one fresh process per revision, in alternating order. Each
process times the same workloads through the public API, interleaved, best of several samples
(common.best_seconds). A workload regresses when the median over rounds of HEAD's time over
BASE's (the two processes of one round ran moments apart) exceeds 1 + threshold and HEAD was
slower in at least 3/4 of the rounds. One gate at a time runs on a machine (a lock in the cache
folder): two at once would time each other's load. benchmarks/README.md gives the measured
false-alarm and detection counts.
"""
import argparse
import contextlib
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
# the same code against any revision since 2503dab (fit's metrics_rows); "step" is
# SGD.train_step (clipped), "adam" Adam's,
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
    once (its fastbp/ only) into CACHE/<commit>, where its Numba cache is kept between gates.
    Call it holding the cache's lock (cache_lock)."""
    if spec is None:
        return "working tree", ROOT
    if os.path.isdir(spec):
        if not os.path.isfile(os.path.join(spec, "fastbp", "__init__.py")):
            raise GateError(f"{spec}: not a fastbp source tree (no fastbp/__init__.py)")
        return spec, os.path.abspath(spec)
    try:
        commit = _git("rev-parse", "--verify", "--quiet", f"{spec}^{{commit}}").decode().strip()
    except GateError:
        raise GateError(f"{spec}: neither a folder holding fastbp/ nor a git revision of "
                        f"{ROOT}") from None
    folder = os.path.join(CACHE, commit)
    if not os.path.isfile(os.path.join(folder, "fastbp", "__init__.py")):
        _export(commit, folder)
    return f"{spec} ({commit[:10]})", folder


def _export(commit, folder):
    """git archive's fastbp/ of commit, unpacked into folder (through a scratch folder, removed
    whatever happens, so that an interrupted export leaves nothing half made)."""
    os.makedirs(CACHE, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=f"{commit[:12]}.", dir=CACHE)
    try:
        archive = os.path.join(scratch, "tree.tar")
        with open(archive, "wb") as f:
            f.write(_git("archive", "--format=tar", commit, "fastbp"))
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):   # Python 3.10.12+, 3.11.4+
                tar.extractall(scratch, filter="data")
            else:
                tar.extractall(scratch)
        os.remove(archive)
        shutil.rmtree(folder, ignore_errors=True)   # an incomplete one (no fastbp/__init__.py)
        os.replace(scratch, folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def cache_lock(log=print):
    """Holds CACHE/.lock for a whole gate: exports and timings of two gates never overlap."""
    os.makedirs(CACHE, exist_ok=True)
    with open(os.path.join(CACHE, ".lock"), "w") as lock:
        try:
            import fcntl
        except ImportError:   # (Windows: no lock)
            yield
            return
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another gate to finish (lock: {lock.name})")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# -- one process: every workload, timed -----------------------------------------------------------

def _workload(sizes, batch, dtype, kind):
    """A zero-argument callable running one workload once, set up and run once already."""
    import numpy as np

    import fastbp
    from common import CLIP_NORM, LR, synthetic_batch

    dtype = getattr(np, dtype)
    model = fastbp.MLP(sizes, dtype=dtype, seed=0)
    rows = {"predict": 4 * batch, "fit": 1797}.get(kind, batch)
    X, y = synthetic_batch(rows, sizes[0], dtype)   # 10 classes, as every network here
    if kind == "predict":
        run = lambda: model.predict_proba(X)  # noqa: E731
    elif kind == "fit":
        opt = fastbp.SGD(model, lr=LR, clip_norm=CLIP_NORM)
        run = lambda: fastbp.fit(model, X, y, opt, epochs=1, batch_size=batch,  # noqa: E731
                                 seed=0, metrics_rows=0)
    else:
        opt = (fastbp.Adam(model, lr=LR, clip_norm=CLIP_NORM) if kind == "adam"
               else fastbp.SGD(model, lr=LR, clip_norm=CLIP_NORM))
        run = lambda: opt.train_step(X, y)  # noqa: E731
    run()
    return run


def worker(tree, names, repeat):
    """Seconds per call of each workload (best of `repeat` interleaved samples) timed with the
    fastbp of `tree`, as JSON on stdout: {"seconds": {name: s}, "failed": {name: why}}. A
    workload this revision cannot run (its API is older) is reported, not timed."""
    import fastbp
    from common import best_seconds

    here = os.path.realpath(os.path.dirname(fastbp.__file__))
    if not here.startswith(os.path.realpath(tree) + os.sep):
        raise SystemExit(f"imported fastbp from {here}, not from {tree}")
    runs, failed = {}, {}
    for name in names:
        try:
            runs[name] = _workload(*WORKLOADS[name])
        except (TypeError, AttributeError, ValueError) as exc:
            failed[name] = f"{type(exc).__name__}: {exc}"
    seconds = best_seconds(list(runs.values()), repeat=repeat, min_sample=0.03) if runs else []
    print(json.dumps({"seconds": dict(zip(runs, seconds)), "failed": failed}))


def run_worker(tree, names, repeat, threads):
    env = dict(os.environ, PYTHONPATH=tree)
    if threads:
        env["NUMBA_NUM_THREADS"] = str(threads)
    command = [sys.executable, os.path.abspath(__file__), "--worker", tree,
               "--repeat", str(repeat), *[arg for name in names for arg in ("--workload", name)]]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    try:
        if result.returncode != 0:
            raise ValueError
        return json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise GateError(f"the workloads failed on {tree} (exit status {result.returncode}):\n"
                        f"{result.stderr[-3000:]}") from None


# -- the comparison -----------------------------------------------------------------------------

def verdict(base, head, threshold):
    """Per-round times of one workload -> (median ratio head/base, rounds HEAD was slower,
    regressed?). Regressed: the median ratio is above 1 + threshold, so that a few disturbed
    processes (one round's ratio ranged from 0.64 to 1.58 on identical code) do not decide, and
    HEAD was slower in at least 3/4 of the rounds."""
    ratios = [h / b for b, h in zip(base, head)]
    median = statistics.median(ratios)
    slower = sum(r > 1 for r in ratios)
    return median, slower, median > 1 + threshold and 4 * slower >= 3 * len(ratios)


def compare(base_tree, head_tree, names, rounds, repeat, threads, log=print):
    """Times every workload at both trees, one process per tree per round, alternating which
    goes first; returns {name: {"base": [...], "head": [...]}} in seconds, leaving out (with a
    note) the workloads that either tree cannot run."""
    log("warming up (the first gate on a revision compiles its kernels)...")
    for tree in (base_tree, head_tree):
        failed = run_worker(tree, names, 1, threads)["failed"]
        for name, why in failed.items():
            log(f"left out {name!r}: {tree} cannot run it ({why})")
        names = [name for name in names if name not in failed]
    if not names:
        raise GateError("no workload runs on both sides")
    times = {name: {"base": [], "head": []} for name in names}
    for r in range(rounds):
        order = [("base", base_tree), ("head", head_tree)]
        for side, tree in (order if r % 2 == 0 else order[::-1]):
            for name, seconds in run_worker(tree, names, repeat, threads)["seconds"].items():
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
                                     epilog="exit status: 0 no regression, 1 a regression, 2 the "
                                     "gate could not run; benchmarks/README.md says more")
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
        parser.error("--threshold must be a fraction between 0 and 10, e.g. 0.08")
    if args.threads < 0:
        parser.error("--threads must be 0 (every core) or more")
    for tree in (args.base, args.head, args.worker):
        if tree is not None and os.pathsep in tree and os.path.isdir(tree):
            parser.error(f"{tree}: a folder whose path holds {os.pathsep!r} cannot go on "
                         "PYTHONPATH; move or link it")
    if args.json:
        try:
            open(args.json, "a").close()
        except OSError as exc:
            parser.error(f"--json {args.json}: cannot write it ({exc.strerror})")
    return args


def gate(args):
    """The gate itself: 0, 1 or 2 (see the module's docstring)."""
    names = args.workload or list(WORKLOADS)
    log = lambda text: print(text, flush=True)  # noqa: E731
    with cache_lock(log):
        (base_label, base_tree), (head_label, head_tree) = (source_tree(args.base),
                                                            source_tree(args.head))
        log(f"BASE {base_label}: {base_tree}\nHEAD {head_label}: {head_tree}")
        times = compare(base_tree, head_tree, names, args.rounds, args.repeat, args.threads, log)
    regressed = report(times, args.threshold)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"base": base_label, "head": head_label, "threshold": args.threshold,
                       "rounds": args.rounds, "times": times, "regressed": regressed}, f,
                      indent=1)
    if regressed:
        print(f"PERFORMANCE REGRESSED beyond {args.threshold:.1%}: {', '.join(regressed)}")
        return 1
    print(f"no workload slower beyond {args.threshold:.1%}")
    return 0


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.worker is not None:
        worker(args.worker, args.workload or list(WORKLOADS), args.repeat)
        return 0
    try:
        return gate(args)
    except (GateError, subprocess.TimeoutExpired) as exc:
        print(f"gate: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("gate: interrupted", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 (a crash must not read as a regression: exit 1)
        print(f"gate: could not run: {type(exc).__name__}: {exc}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
