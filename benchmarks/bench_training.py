"""Training on the shipped data (the UCI digits, 1797 x 64, 10 classes; see common.load_digits):
the time of an epoch through the public fastbp.fit, and the peak memory of a training run."""
import numpy as np

from . import common


def _digits():
    # setup_cache: built once in its own process, handed to every benchmark of the class, so
    # loading and converting the data counts neither in time_ nor in peakmem_.
    X, y, source = common.load_digits(np.float64)
    return {"X": X, "y": y, "source": source}


def _model(hidden, dtype):
    import fastbp

    model = fastbp.MLP([64, hidden, hidden, 10], dtype=common.DTYPES[dtype], seed=0)
    return model, fastbp.SGD(model, lr=0.01, clip_norm=5.0)


class Epoch:
    """One epoch of fastbp.fit (shuffling, gathering mini-batches, SGD with clipping) on the
    digits, network [64, hidden, hidden, 10]."""

    params = [common.cases([128, 1024], [128]), common.cases([1, 32, 256], [32, 256]),
              common.cases(["float32", "float64"], ["float32"])]
    param_names = ["hidden", "batch", "dtype"]
    repeat = (3, 10, 2.0)
    warmup_time = 0
    timeout = 180

    def setup_cache(self):
        return _digits()

    def setup(self, data, hidden, batch, dtype):
        self.X = data["X"].astype(common.DTYPES[dtype])
        self.y = data["y"]
        self.batch = batch
        self.model, self.optimizer = _model(hidden, dtype)
        self._epoch()  # compiles or loads the kernels

    def _epoch(self):
        import fastbp

        return fastbp.fit(self.model, self.X, self.y, self.optimizer, epochs=1,
                          batch_size=self.batch, seed=0)

    def time_epoch(self, data, hidden, batch, dtype):
        self._epoch()

    def track_us_per_sample(self, data, hidden, batch, dtype):
        """Microseconds per sample over an epoch, from the samples/s fit reports (best of 3
        epochs); a cost, so that asv reads a rise as a regression."""
        return 1e6 / max(self._epoch()["samples_per_s"][0] for _ in range(3))

    track_us_per_sample.unit = "µs per sample"


class PeakMemory:
    """Peak resident memory of a process that trains [64, hidden, hidden, 10] on the digits for
    one epoch with fastbp.fit. The figure includes the interpreter, numpy, Numba and fastbp's
    compiled kernels (a baseline of a few hundred MB); what fastbp adds on top is parameters +
    gradients (2 * p * itemsize) and the activation buffers (see
    bench_claims.ActivationMemory). Compare across parameters and commits."""

    params = [common.cases([128, 4096], [128]), [32, 1024],
              common.cases(["float32", "float64"], ["float32"])]
    param_names = ["hidden", "batch", "dtype"]
    timeout = 300

    def setup_cache(self):
        return _digits()

    def peakmem_fit(self, data, hidden, batch, dtype):
        import fastbp

        model, optimizer = _model(hidden, dtype)
        fastbp.fit(model, data["X"], data["y"], optimizer, epochs=1, batch_size=batch, seed=0)
