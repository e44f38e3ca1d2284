"""Smoke run of the asv suite for CI: one small case of every benchmark, in the current
environment, results not saved. Fails (non-zero exit) if a benchmark fails, or if some benchmark
has no case selected here (so new benchmarks cannot slip out of CI).

    python benchmarks/smoke.py [extra asv run arguments]

runs, from the repository root,

    asv run --python=same --quick --dry-run --show-stderr -b REGEX ...

with the regexes of SMOKE. Takes about 30 s on 2 idle cores. Run `asv machine --yes`
once before, on a machine asv has not seen.
"""
import os
import subprocess
import sys

# asv matches these against "module.Class.benchmark(param, ...)", parameters as their repr.
SMOKE = [
    r"time_(forward|backward|train_step)\(128, 2, 32, 'float32'\)",  # Forward/Backward/TrainStep
    r"Threads\.time_train_step\(1, '64-128-10 b32'\)",
    r"Optimizers\.\w+\('adam', '784-256-128-10 b128'\)",
    r"Bfloat16\.\w+\('bfloat16', '1024x3-10 b256'\)",   # (skipped without a bf16 unit)
    r"Epoch\.\w+\(128, 32, 'float32'\)",
    r"PeakMemory\.peakmem_fit\(128, 32, 'float32'\)",
    r"Throughput\.\w+\('64-128-10 b32', 'float32'\)",
    r"MatmulPeak\.track_matmul_ms\('float32'\)",
    r"Ratios\.\w+\(128, 2, 32\)",
    r"OrderP\.track_time_per_param_sample\('1e4'\)",
    r"OrderPSpread\.track_spread$",
    r"ActivationMemory\.\w+\(128, 8, 256, 'float32'\)",
    r"Allocations\.\w+\('64-128-10 b32', 'float32'\)",
    r"timeraw_import$",
    r"FirstStep\.timeraw_first_step\('warm', 'float32'\)",
    r"TrainCommand\.timeraw_train\('warm'\)",
    r"Checkpointing\.\w+\(4\)",
]


def _uncovered(benchmark_dir):
    """Benchmarks of which no case matches SMOKE (asv's own discovery, whose parameters are
    already repr strings; imports no fastbp)."""
    import itertools
    import re

    from asv_runner.discovery import disc_benchmarks

    missing = []
    for bench in disc_benchmarks(benchmark_dir):
        if bench.params:
            names = [f"{bench.name}({', '.join(case)})"
                     for case in itertools.product(*bench.params)]
        else:
            names = [bench.name]
        if not any(re.search(regex, name) for regex in SMOKE for name in names):
            missing.append(bench.name)
    return missing


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    sys.path.insert(0, root)  # discovery imports the suite as the package "benchmarks"
    missing = _uncovered(here)
    if missing:
        print("benchmarks/smoke.py: no smoke case selects " + ", ".join(missing)
              + "; add a regex to SMOKE", file=sys.stderr)
        return 1
    command = ["asv", "run", "--python=same", "--quick", "--dry-run", "--show-stderr"]
    for regex in SMOKE:
        command += ["-b", regex]
    command += argv
    print(" ".join(command), flush=True)
    return subprocess.call(command, cwd=root)


if __name__ == "__main__":
    sys.exit(main())
