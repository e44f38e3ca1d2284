"""The claims backpropagation is famous for, measured: backward ~ 2x forward, a training step ~ 3x
inference, cost O(p) per sample, activation memory ~ depth x batch x width, and no allocation in
the training step.
"""
import gc
import tracemalloc

import numpy as np

from . import common


class Ratios:
    """track_backward_forward: (t(mlp_loss_and_grad) - t(mlp_forward)) / t(mlp_forward), the
    backward pass including the loss gradient, over the forward pass. The claim: about 2, since
    each layer's backward is two matrix products (dW and dinp) to the forward's one. The first
    layer needs no dinp, so for [w] * (depth + 1) + [10] the FLOP ratio is (2 depth - 1) / depth:
    1.5 at depth 2, 1.875 at depth 8.
    track_step_inference: t(mlp_train_step) / t(mlp_forward) (the claim: about 3; by FLOPs,
    (3 depth - 1) / depth plus the clipping and update, which are O(p)).

    Forward, forward+backward and step are timed interleaved in one process (best of 7 samples
    each): ratios of times taken minutes apart on a shared machine mean little.
    """

    params = [common.cases([128, 512, 2048], [128, 512]), common.cases([2, 8], [2]),
              common.cases([32, 256], [32])]
    param_names = ["width", "depth", "batch"]
    timeout = 180

    def setup(self, width, depth, batch):
        sizes = common.layer_sizes(width, depth)
        common.skip_unless_affordable(sizes, batch)
        self.net = common.Net(sizes, batch, "float32")

    def _times(self):
        return common.best_seconds([self.net.forward, self.net.loss_and_grad,
                                    self.net.train_step])

    def track_backward_forward(self, width, depth, batch):
        forward, forward_backward, _ = self._times()
        return (forward_backward - forward) / forward

    track_backward_forward.unit = "ratio"

    def track_step_inference(self, width, depth, batch):
        forward, _, step = self._times()
        return step / forward

    track_step_inference.unit = "ratio"


OP_TARGETS = common.cases(["1e4", "3e4", "1e5", "3e5", "1e6", "3e6", "1e7"], ["1e4", "1e5", "1e6"])


class OrderP:
    """Seconds per parameter per sample of a float32 training step at batch 256, across networks
    [w, w, w, 10] whose widths give p = 1e4 ... 1e7 parameters (w = 68 ... 2233). The O(p)
    claim: flat, within +-25% over that range. track_time_per_param_sample gives each point (in
    ns); track_spread gives max |value / median - 1| over the whole sweep (must be <= 0.25).
    benchmarks/scaling.py fits the slope of log(step time) against log(p) (claim: 1.0)."""

    params = [OP_TARGETS]
    param_names = ["p"]
    timeout = 300

    def setup(self, p):
        width = common.width_for_params(float(p))
        self.net = common.Net(common.layer_sizes(width, common.OP_DEPTH), common.OP_BATCH,
                              "float32")

    def track_time_per_param_sample(self, p):
        step, = common.best_seconds([self.net.train_step], repeat=5, min_sample=0.05)
        return step / (self.net.n_params * self.net.batch) * 1e9

    track_time_per_param_sample.unit = "ns"


class OrderPSpread:
    """See OrderP: the whole sweep in one process, and its largest relative deviation from the
    sweep's median."""

    timeout = 600

    def setup(self):
        self.nets = [common.Net(common.layer_sizes(common.width_for_params(float(p)),
                                                   common.OP_DEPTH), common.OP_BATCH, "float32")
                     for p in OP_TARGETS]

    def track_spread(self):
        values = []
        for net in self.nets:
            step, = common.best_seconds([net.train_step], repeat=5, min_sample=0.05)
            values.append(step / (net.n_params * net.batch))
        median = np.median(values)
        return float(max(abs(v / median - 1) for v in values))

    track_spread.unit = "relative deviation"


def _numpy_bytes(snapshot):
    """Bytes of numpy array data alive in a tracemalloc snapshot."""
    domain = np.lib.tracemalloc_domain
    traces = snapshot.filter_traces([tracemalloc.DomainFilter(True, domain)])
    return sum(stat.size for stat in traces.statistics("filename"))


class ActivationMemory:
    """Bytes of array data that a new model and its first training step leave allocated
    (tracemalloc, numpy's domain) less its parameters, gradients and optimizer scratch (as
    memory_report gives them): that is its activation, delta and per-sample loss buffers,
    against the formula

        itemsize * batch * (depth * width + 10 + 2 * width) + 8 * batch

    depth x batch x width activations plus the 10-wide output layer, two width-wide delta buffers
    that every layer reuses, and one float64 loss per sample. track_bytes_beyond_formula is the
    rest: a fixed overhead of about a kilobyte (a cache line of alignment padding per buffer and
    the network's small descriptor arrays, a few per layer) that must not grow with batch or
    width (tests/test_bench_claims.py checks that it does not)."""

    params = [common.cases([128, 2048], [128]), [1, 8], common.cases([1, 256], [256]),
              common.cases(["float32", "float64"], ["float32"])]
    param_names = ["width", "depth", "batch", "dtype"]
    timeout = 120

    def setup(self, width, depth, batch, dtype):
        import fastbp

        sizes = common.layer_sizes(width, depth)
        common.skip_unless_affordable(sizes, batch)
        self.dtype = common.DTYPES[dtype]
        common.Net([8, 8, 10], 2, dtype)  # compile/load the kernels on another model first
        self.sizes = sizes
        self.X, self.y = common.synthetic_batch(batch, width, self.dtype)
        self.formula = (np.dtype(self.dtype).itemsize * batch * (depth * width + 10 + 2 * width)
                        + 8 * batch)

    def _measure(self):
        import fastbp

        gc.collect()
        tracemalloc.start()
        try:
            before = _numpy_bytes(tracemalloc.take_snapshot())
            model = fastbp.MLP(self.sizes, dtype=self.dtype, seed=0)
            fastbp.SGD(model, lr=common.LR, clip_norm=common.CLIP_NORM).train_step(self.X,
                                                                                   self.y)
            gc.collect()
            after = _numpy_bytes(tracemalloc.take_snapshot())
        finally:
            tracemalloc.stop()
        report = model.memory_report()
        return after - before - report["params"] - report["grads"] - report["optimizer"]

    def track_activation_bytes(self, width, depth, batch, dtype):
        return self._measure()

    track_activation_bytes.unit = "bytes"

    def track_bytes_beyond_formula(self, width, depth, batch, dtype):
        return self._measure() - self.formula

    track_bytes_beyond_formula.unit = "bytes"


class Allocations:
    """Memory allocated while training.

    track_allocations_per_step: NRT allocations (Numba's runtime counters, switched on here at
    run time) per training step, measured as the difference between 201 and 1 steps run inside
    one compiled loop, so that the boxing of arguments from Python does not count. The claim: 0.
    track_heap_peak_bytes: the peak of everything tracemalloc traces (numpy arrays, Numba's
    allocations, which go through CPython's allocator, and Python objects) above its level
    before 200 public SGD.train_step calls. Any per-step array would show as at least its size;
    about a kilobyte of Python objects is expected.
    """

    params = [common.cases(common.SMALL_MID_WIDE, ["64-128-10 b32"]), ["float32", "float64"]]
    param_names = ["network", "dtype"]
    timeout = 120
    n_steps = 200

    def setup(self, network, dtype):
        from numba import njit

        sizes, batch = common.SMALL_MID_WIDE[network]
        self.net = common.Net(sizes, batch, dtype)
        self.step = lambda: self.net.optimizer.train_step(self.net.X, self.net.y)
        for _ in range(3):
            self.step()
        from fastbp import kernels

        train_step = kernels.mlp_train_step

        @njit
        def loop(n, params, grads, work, x, target, net, update):
            # steps run from compiled code: Python's argument boxing (one NRT MemInfo per
            # array argument per call) is paid once per loop, not per step
            for _ in range(n):
                train_step(params, grads, work, x, target, net, update)

        m = self.net.model
        update = kernels.sgd_spec(1e-12, self.net.optimizer.clip_norm, m.dtype)
        self.loop = lambda n: loop(n, m.params, m.grads, m.engine.work, self.net.X, self.net.y,
                                   m.engine.net, update)
        self.loop(1)  # compile

    def track_allocations_per_step(self, network, dtype):
        from numba.core.runtime import _nrt_python, rtsys

        def count(n):
            before = rtsys.get_allocation_stats().alloc
            self.loop(n)
            return rtsys.get_allocation_stats().alloc - before

        _nrt_python.memsys_enable_stats()
        try:
            return (count(self.n_steps + 1) - count(1)) / self.n_steps
        finally:
            _nrt_python.memsys_disable_stats()

    track_allocations_per_step.unit = "allocations"

    def track_heap_peak_bytes(self, network, dtype):
        gc.collect()
        tracemalloc.start()
        try:
            start, _ = tracemalloc.get_traced_memory()
            for _ in range(self.n_steps):
                self.step()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return peak - start

    track_heap_peak_bytes.unit = "bytes"


class Checkpointing:
    """Gradient checkpointing on a deep net: activation memory (memory_report) and training
    step time with every layer's output kept (k = 1) and with every k-th only, the others
    recomputed during the backward pass. The usual claim: much less memory for 20-30% more
    time. track_step_time_ratio is the step time over k = 1's, measured in the same setup."""

    params = [common.cases([1, 2, 4, 8], [1, 4])]
    param_names = ["checkpoint_every"]
    timeout = 300
    SIZES = [256] + [512] * 16 + [10]
    BATCH = 256

    def setup(self, k):
        import fastbp

        self.X, self.y = common.synthetic_batch(self.BATCH, self.SIZES[0], np.float32)
        self.runs = {}
        for every in sorted({1, k}):
            model = fastbp.MLP(self.SIZES, seed=0, checkpoint_every=every)
            opt = fastbp.SGD(model, lr=common.LR, clip_norm=common.CLIP_NORM)
            opt.train_step(self.X, self.y)
            self.runs[every] = (model, opt)

    def _step(self, k):
        model, opt = self.runs[k]
        return opt.train_step(self.X, self.y)

    def time_train_step(self, k):
        self._step(k)

    def track_activation_bytes(self, k):
        return self.runs[k][0].memory_report()["activations"]

    track_activation_bytes.unit = "bytes"

    def track_step_time_ratio(self, k):
        if k == 1:
            return 1.0
        plain, checkpointed = common.best_seconds([lambda: self._step(1), lambda: self._step(k)])
        return checkpointed / plain

    track_step_time_ratio.unit = "ratio"
