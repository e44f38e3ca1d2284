"""How often the regression gate (gate.py) cries wolf, and how often it catches a real slowdown,
on this machine.

    python benchmarks/gate_check.py [REV] [--runs 5] [--slowdown 0.15] [--json OUT]

Takes fastbp at REV (a git revision or a folder holding fastbp/; default HEAD) and makes two
copies of its tree in the gate's cache folder: an identical one, and one whose public training
step (Optimizer.train_step, the method every optimizer inherits) busy-waits after its work until
it has taken (1 + slowdown) times as long, so each step is that much slower whatever the network
(SLOWDOWN below, appended to the copy's optim.py). Then it runs the gate `--runs` times REV
against the identical copy (any alarm is a false alarm) and `--runs` times against the slowed
copy (an alarm on a train-step workload is a detection), alternating the two, and prints the
counts. Exit status: 0 when no false alarm was raised and at least 4 in 5 slowdowns were
caught, 1 otherwise, 2 when it could not run.
"""
import argparse
import hashlib
import json
import os
import shutil
import sys

if __package__:   # imported by asv's discovery, as benchmarks.gate_check
    from . import gate
else:
    import gate

# Appended to the slowed copy's fastbp/optim.py: Optimizer.train_step, whatever its parameters,
# wrapped so that it returns only once (1 + slowdown) times its own time has passed.
SLOWDOWN = '''

def _padded(train_step, slowdown={slowdown!r}):
    import functools
    import time

    @functools.wraps(train_step)
    def padded_train_step(*args, **kwargs):
        started = time.perf_counter()
        result = train_step(*args, **kwargs)
        until = started + (1 + slowdown) * (time.perf_counter() - started)
        while time.perf_counter() < until:
            pass
        return result
    return padded_train_step


Optimizer.train_step = _padded(Optimizer.train_step)
'''


def _digest(folder, extra):
    """A hash of folder's fastbp/*.py sources and of extra: names a copy, so that a copy of
    changed sources (or of another slowdown) is made afresh instead of reused."""
    digest = hashlib.sha256(extra.encode())
    package = os.path.join(folder, "fastbp")
    for dirpath, dirnames, filenames in sorted(os.walk(package)):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                with open(path, "rb") as f:
                    digest.update(os.path.relpath(path, package).encode() + b"\0" + f.read())
    return digest.hexdigest()[:16]


def copy_tree(source, cache, slowdown=None):
    """A copy of source's fastbp/ (not its Numba cache) under cache, slowed when slowdown is
    given; made once per content, then reused with its own Numba cache."""
    patch = "" if slowdown is None else SLOWDOWN.format(slowdown=slowdown)
    destination = os.path.join(cache, "check-" + _digest(source, patch) +
                               ("" if slowdown is None else f"-slow{slowdown:g}"))
    if not os.path.isdir(destination):
        scratch = destination + ".tmp"
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.copytree(os.path.join(source, "fastbp"), os.path.join(scratch, "fastbp"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        if patch:
            with open(os.path.join(scratch, "fastbp", "optim.py"), "a") as f:
                f.write(patch)
        os.replace(scratch, destination)
    return destination


def passed(false_alarms, detections, runs):
    """The check's verdict: no false alarm, and at least 4 in 5 slowdowns caught."""
    return false_alarms == 0 and 5 * detections >= 4 * runs


def check(args, log=print):
    """The runs; returns the exit status."""
    with gate.cache_lock(log):
        label, base = gate.source_tree(args.rev)
        same = copy_tree(base, gate.CACHE)
        slow = copy_tree(base, gate.CACHE, args.slowdown)
        steps = [name for name, spec in gate.WORKLOADS.items() if spec[3] in ("step", "adam")]
        false_alarms = detections = 0
        records = []
        for run in range(args.runs):
            for kind, head in (("same", same), ("slowed", slow)):
                log(f"\n== run {run + 1}/{args.runs}: {label} against the {kind} copy")
                times = gate.compare(base, head, list(gate.WORKLOADS), args.rounds, 5, 0,
                                     log=lambda text: None)
                regressed = gate.report(times, args.threshold, log)
                records.append({"kind": kind, "times": times, "regressed": regressed})
                if kind == "same":
                    false_alarms += bool(regressed)
                else:
                    detections += any(name in regressed for name in steps)
    log(f"\nfalse alarms: {false_alarms} of {args.runs} gates of {label} against itself")
    log(f"detections: {detections} of {args.runs} gates against a {args.slowdown:.0%} slower "
        f"training step")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rev": label, "slowdown": args.slowdown, "rounds": args.rounds,
                       "threshold": args.threshold, "gates": records}, f, indent=1)
    return 0 if passed(false_alarms, detections, args.runs) else 1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rev", nargs="?", default="HEAD")
    parser.add_argument("--runs", type=int, default=5, help="gates of each kind (default 5)")
    parser.add_argument("--slowdown", type=float, default=0.15,
                        help="the injected slowdown of the training step (default 0.15)")
    parser.add_argument("--rounds", type=int, default=8, help="the gate's --rounds (default 8)")
    parser.add_argument("--threshold", type=float, default=0.08,
                        help="the gate's --threshold (default 0.08)")
    parser.add_argument("--json", metavar="OUT", help="write every gate's times here")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.rounds < 3:
        parser.error("--runs must be at least 1 and --rounds at least 3")
    if not (0 < args.slowdown < 10 and 0 < args.threshold < 10):
        parser.error("--slowdown and --threshold must be fractions between 0 and 10")
    log = lambda text: print(text, flush=True)  # noqa: E731
    try:
        return check(args, log)
    except (gate.GateError, OSError) as exc:
        print(f"gate_check: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("gate_check: interrupted", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
