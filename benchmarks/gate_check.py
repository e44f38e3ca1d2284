"""How often the regression gate (gate.py) cries wolf, and how often it catches a real slowdown,
on this machine.

    python benchmarks/gate_check.py [REV] [--runs 5] [--slowdown 0.15] [--json OUT]

Takes fastbp at REV (default HEAD) and makes two copies of its tree: an identical one, and one
whose public training step (Optimizer.train_step, the method every optimizer inherits) busy-waits
after its work until it has taken (1 + slowdown) times as long, so each step is that much slower
whatever the network (the patch is INJECTED below). Then it runs the gate `--runs` times REV
against the identical copy (any alarm is a false alarm) and `--runs` times against the slowed
copy (an alarm on a train-step workload is a detection), alternating the two, and prints the
counts. Exits 1 if any false alarm was raised or fewer than 4 in 5 slowdowns were caught.
"""
import argparse
import json
import os
import shutil
import sys

if __package__:   # imported by asv's discovery, as benchmarks.gate_check
    from . import gate
else:
    import gate

# The slowdown, inserted as the first lines of Optimizer.train_step's body (after its
# docstring): the method's own lines become a new method, _unpadded_train_step, which the
# padded train_step calls and times.
ANCHOR = "        engine = self.model.engine\n        X, y = engine.check_batch(X, y)\n"
INJECTED = '''        import time
        started = time.perf_counter()
        result = self._unpadded_train_step(X, y, sample_weight)
        padded = started + (1 + {slowdown!r}) * (time.perf_counter() - started)
        while time.perf_counter() < padded:
            pass
        return result

    def _unpadded_train_step(self, X, y, sample_weight=None):
'''


def copy_tree(source, destination, slowdown=None):
    """Copy source's fastbp/ (not its Numba cache) to destination; with slowdown, patch it."""
    if not os.path.isdir(destination):
        scratch = destination + ".tmp"
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.copytree(os.path.join(source, "fastbp"), os.path.join(scratch, "fastbp"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        if slowdown is not None:
            path = os.path.join(scratch, "fastbp", "optim.py")
            with open(path) as f:
                text = f.read()
            if text.count(ANCHOR) != 1:
                raise gate.GateError("cannot inject the slowdown: Optimizer.train_step's first "
                                     "lines are not the expected ones; update gate_check.ANCHOR")
            with open(path, "w") as f:
                f.write(text.replace(ANCHOR, INJECTED.format(slowdown=slowdown) + ANCHOR))
        os.replace(scratch, destination)
    return destination


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rev", nargs="?", default="HEAD")
    parser.add_argument("--runs", type=int, default=5, help="gates of each kind (default 5)")
    parser.add_argument("--slowdown", type=float, default=0.15,
                        help="the injected slowdown of the training step (default 0.15)")
    parser.add_argument("--rounds", type=int, default=8, help="the gate's --rounds")
    parser.add_argument("--threshold", type=float, default=0.08, help="the gate's --threshold")
    parser.add_argument("--json", metavar="OUT", help="write every gate's times here")
    args = parser.parse_args(argv)
    if args.runs < 1 or not 0 < args.slowdown < 10:
        parser.error("--runs must be at least 1 and --slowdown a fraction above 0")

    label, base = gate.source_tree(args.rev)
    same = copy_tree(base, base + ".same")
    slow = copy_tree(base, base + f".slow{args.slowdown:g}", args.slowdown)
    steps = [name for name, spec in gate.WORKLOADS.items() if spec[3] in ("step", "adam")]
    false_alarms = detections = 0
    records = []
    for run in range(args.runs):
        for kind, head in (("same", same), ("slowed", slow)):
            print(f"\n== run {run + 1}/{args.runs}: {label} against the {kind} copy", flush=True)
            times = gate.compare(base, head, list(gate.WORKLOADS), args.rounds, 5, 0,
                                 log=lambda text: None)
            regressed = gate.report(times, args.threshold)
            records.append({"kind": kind, "times": times, "regressed": regressed})
            if kind == "same":
                false_alarms += bool(regressed)
            else:
                detections += any(name in regressed for name in steps)
    print(f"\nfalse alarms: {false_alarms} of {args.runs} gates of {label} against itself")
    print(f"detections: {detections} of {args.runs} gates against a {args.slowdown:.0%} slower "
          f"training step")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rev": label, "slowdown": args.slowdown, "rounds": args.rounds,
                       "threshold": args.threshold, "gates": records}, f, indent=1)
    return int(false_alarms > 0 or 5 * detections < 4 * args.runs)


if __name__ == "__main__":
    sys.exit(main())
