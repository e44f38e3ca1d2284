"""fastbp's asv benchmark suite. See benchmarks/README.md for what each module measures.

Rules for every module here:

- Never import fastbp (or run anything that starts Numba's thread pool) at module level. asv
  imports every module of this package in its fork server and forks one process per benchmark
  from it; fastbp launches Numba's threading layer on import, and Numba's threading layers are
  not fork-safe (workqueue threads do not survive fork; GNU OpenMP aborts a child forked after a
  parallel region). Import fastbp inside ``setup`` or the benchmark itself.
- Nothing but benchmarks may carry asv's prefixes (time_, timeraw_, peakmem_, mem_, track_):
  asv would collect such helpers as benchmarks.
"""
import importlib.util
import os
import sys

# `asv run --python=same` benchmarks whatever fastbp the current environment imports. Where it
# has none (no `pip install -e .`), fall back to the checkout that holds this suite, so a quick
# local run works from a fresh clone. asv's own environments always have fastbp installed.
if importlib.util.find_spec("fastbp") is None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# fastbp's heavy dependencies, imported once here, in asv's fork server, rather than in each of
# the hundreds of benchmark processes forked from it (0.7 s each). None of them starts a thread
# pool that breaks fork (NumPy's OpenBLAS shuts its pool down around fork).
try:
    import numba  # noqa: F401
    import threadpoolctl  # noqa: F401
except ImportError:  # asv check / discovery without the dependencies: fail later, clearly
    pass
