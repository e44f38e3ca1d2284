"""Cold start: the time to import fastbp, and the time of a first training step in a fresh
process (loading the compiled kernels from Numba's on-disk cache, or compiling them when the
cache is empty). Each sample runs in a new interpreter (asv's timeraw_)."""
import importlib.util
import os

from . import common


def _path_setup():
    """Setup code that makes the subprocess import the same fastbp as this one."""
    spec = importlib.util.find_spec("fastbp")
    root = os.path.dirname(os.path.dirname(spec.origin))
    return f"import sys\nif {root!r} not in sys.path:\n    sys.path.append({root!r})\n"


# Setup code that gives the subprocess an empty Numba cache of its own.
_EMPTY_CACHE = ("import atexit, os, shutil, tempfile\n"
                "cache_dir = tempfile.mkdtemp(prefix='fastbp-cold-')\n"
                "atexit.register(shutil.rmtree, cache_dir, True)\n"
                "os.environ['NUMBA_CACHE_DIR'] = cache_dir\n")


def timeraw_import():
    """`import fastbp` in a fresh interpreter (numpy, numba, the kernels' OpenBLAS and its
    symbols, Numba's thread pool)."""
    return "import fastbp", _path_setup()


class FirstStep:
    """Import + model + the first SGD.train_step in a fresh interpreter, on the digits' shape
    ([64, 128, 10], batch 32).

    cache="warm": the kernels come from Numba's on-disk cache (every run after the first).
    cache="cold": an empty cache directory (NUMBA_CACHE_DIR), so every kernel compiles: the
    first run after installing fastbp, or after any change to its kernels."""

    params = [["warm", "cold"], common.cases(["float32", "float64"], ["float32"])]
    param_names = ["cache", "dtype"]
    # A cold sample takes tens of seconds on 2 cores: warm ones get up to 5 samples in 10 s,
    # cold ones one.
    number = 1
    repeat = (1, 5, 10.0)
    rounds = 1
    timeout = 600

    def setup(self, cache, dtype):
        if cache == "warm":
            import numpy as np

            import fastbp

            # Make sure the on-disk cache holds this dtype's kernels.
            model = fastbp.MLP([64, 128, 10], dtype=getattr(np, dtype), seed=0)
            fastbp.SGD(model, lr=0.01).train_step(np.zeros((32, 64)), np.zeros(32, dtype=int))

    def timeraw_first_step(self, cache, dtype):
        setup = _path_setup()
        if cache == "cold":
            setup += _EMPTY_CACHE
        setup += ("import numpy as np\n"
                  "X = np.random.default_rng(0).random((32, 64))\n"
                  "y = np.arange(32) % 10\n")
        code = (f"import fastbp\n"
                f"model = fastbp.MLP([64, 128, 10], dtype=np.{dtype}, seed=0)\n"
                f"fastbp.SGD(model, lr=0.01, clip_norm=5.0).train_step(X, y)\n")
        return code, setup


class TrainCommand:
    """A whole `fastbp train` (the shipped digits, default options, --quiet) in a fresh
    interpreter: what a new user's first command costs (cache="cold": an empty Numba cache, so
    it compiles every kernel training uses) and every later one (cache="warm")."""

    params = [["warm", "cold"]]
    param_names = ["cache"]
    number = 1
    repeat = (1, 5, 10.0)
    rounds = 1
    timeout = 600

    def setup(self, cache):
        if cache == "warm":
            from fastbp.cli import main
            main(["train", "--quiet", "--epochs", "1"])

    def timeraw_train(self, cache):
        setup = _path_setup()
        if cache == "cold":
            setup += _EMPTY_CACHE
        # asv reads the timing from this process's output: keep the command's own off it
        code = ("import contextlib, io\n"
                "from fastbp.cli import main\n"
                "with contextlib.redirect_stdout(io.StringIO()):\n"
                "    assert main(['train', '--quiet']) == 0\n")
        return code, setup
