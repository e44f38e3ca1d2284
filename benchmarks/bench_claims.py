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

    params = [[128, 512, 2048], [2, 8], [32, 256]]
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


OP_TARGETS = ["1e4", "3e4", "1e5", "3e5", "1e6", "3e6", "1e7"]


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
    """Bytes of array data that a model keeps after its first training step (tracemalloc, numpy's
    domain), that is its activation, delta and per-sample loss buffers, against the formula

        itemsize * batch * (depth * width + 10 + 2 * width) + 8 * batch

    depth x batch x width activations plus the 10-wide output layer, two width-wide delta buffers
    that every layer reuses, and one float64 loss per sample. track_activation_bytes_vs_formula
    must be 1.0: anything above it is memory the formula does not explain."""

    params = [[128, 2048], [1, 2, 8], [1, 256], ["float32", "float64"]]
    param_names = ["width", "depth", "batch", "dtype"]
    timeout = 120

    def setup(self, width, depth, batch, dtype):
        import fastbp

        sizes = common.layer_sizes(width, depth)
        common.skip_unless_affordable(sizes, batch)
        self.dtype = common.DTYPES[dtype]
        common.Net([8, 8, 10], 2, dtype)  # compile/load the kernels on another model first
        self.model = fastbp.MLP(sizes, dtype=self.dtype, seed=0)
        self.optimizer = fastbp.SGD(self.model, lr=common.LR, clip_norm=common.CLIP_NORM)
        self.X, self.y = common.synthetic_batch(batch, width, self.dtype)
        self.formula = (np.dtype(self.dtype).itemsize * batch * (depth * width + 10 + 2 * width)
                        + 8 * batch)

    def _measure(self):
        gc.collect()
        tracemalloc.start()
        try:
            before = _numpy_bytes(tracemalloc.take_snapshot())
            self.optimizer.train_step(self.X, self.y)
            gc.collect()
            after = _numpy_bytes(tracemalloc.take_snapshot())
        finally:
            tracemalloc.stop()
        return after - before

    def track_activation_bytes(self, width, depth, batch, dtype):
        return self._measure()

    track_activation_bytes.unit = "bytes"

    def track_activation_bytes_vs_formula(self, width, depth, batch, dtype):
        return self._measure() / self.formula

    track_activation_bytes_vs_formula.unit = "ratio"


class Allocations:
    """Memory allocated while training, over 200 public SGD.train_step calls after a warm-up.

    track_allocations_per_step: allocations made by Numba's runtime per step, from Numba's own
    counters (NUMBA_NRT_STATS, switched on here at run time): arrays created inside compiled
    code, and also the two small scheduling arrays that Numba's parfor lowering allocates each
    time a prange loop runs (numba 0.68: 2 per parallel region per call, whatever the sizes).
    The claim is 0; a count that does not grow with width or batch and a flat
    track_heap_peak_bytes mean only those scheduling arrays.
    track_heap_peak_bytes: the peak of everything tracemalloc traces (numpy arrays, Numba's
    allocations, which go through CPython's allocator, and Python objects) above its level
    before the steps. Any per-step array would show as at least its size; about a kilobyte of
    Python objects and scheduling arrays is expected.
    """

    params = [["64-128-10 b32", "784-256-128-10 b128", "1024x3-10 b256"],
              ["float32", "float64"]]
    param_names = ["network", "dtype"]
    timeout = 120
    n_steps = 200

    NETWORKS = {"64-128-10 b32": ([64, 128, 10], 32),
                "784-256-128-10 b128": ([784, 256, 128, 10], 128),
                "1024x3-10 b256": ([1024, 1024, 1024, 1024, 10], 256)}

    def setup(self, network, dtype):
        sizes, batch = self.NETWORKS[network]
        self.net = common.Net(sizes, batch, dtype)
        self.step = lambda: self.net.optimizer.train_step(self.net.X, self.net.y)
        for _ in range(3):
            self.step()

    def track_allocations_per_step(self, network, dtype):
        from numba.core.runtime import _nrt_python, rtsys

        _nrt_python.memsys_enable_stats()
        try:
            before = rtsys.get_allocation_stats().alloc
            for _ in range(self.n_steps):
                self.step()
            after = rtsys.get_allocation_stats().alloc
        finally:
            _nrt_python.memsys_disable_stats()
        return (after - before) / self.n_steps

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
