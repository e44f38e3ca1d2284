"""Time of the forward pass, the backward pass and a whole training step, over a grid of
width x depth x batch x dtype, and over thread counts.

The kernels are called directly (common.Net), so small networks measure the compiled code and one
Numba dispatch, not fastbp's argument checks. Combinations over the suite's budget (more than
2e10 FLOPs per step or 4e7 parameters, see common.py) are skipped: they show as "n/a".
"""
from . import common

# The full grid (FASTBP_BENCH_FULL=1) and, by default, a small and a wide net at depth 2.
WIDTHS = common.cases([128, 512, 2048, 4096], [128, 1024])
DEPTHS = common.cases([1, 2, 4, 8], [2])
BATCHES = common.cases([1, 32, 256, 1024], [32, 256])
DTYPES = common.cases(["float32", "float64"], ["float32", "float64"])


class _Grid:
    params = [WIDTHS, DEPTHS, BATCHES, DTYPES]
    param_names = ["width", "depth", "batch", "dtype"]
    # 3 to 10 samples in at most about 1 s, one process per combination: the full grid has 276
    # combinations within budget (92 per benchmark), so this keeps it near 8 minutes on 2 cores.
    repeat = (3, 10, 1.0)
    rounds = 1
    warmup_time = 0.05
    timeout = 120

    def setup(self, width, depth, batch, dtype):
        sizes = common.layer_sizes(width, depth)
        common.skip_unless_affordable(sizes, batch)
        self.net = common.Net(sizes, batch, dtype)


class Forward(_Grid):
    """Inference: every layer's dense_forward (kernels.mlp_forward)."""

    def time_forward(self, width, depth, batch, dtype):
        self.net.forward()


class Backward(_Grid):
    """The backward pass alone: the softmax cross-entropy gradient and every layer's
    dense_backward, through fastbp's public layer kernels (common.ComposedBackward, which checks
    that its gradients equal mlp_loss_and_grad's). Its time plus Forward's is the time of
    kernels.mlp_loss_and_grad."""

    def setup(self, width, depth, batch, dtype):
        super().setup(width, depth, batch, dtype)
        self.backward = common.ComposedBackward(self.net).backward

    def time_backward(self, width, depth, batch, dtype):
        self.backward()


class TrainStep(_Grid):
    """A whole training step: forward + backward + global-norm clipping + SGD update, in one
    compiled call (kernels.mlp_train_step, what SGD.train_step and fit run)."""

    def time_train_step(self, width, depth, batch, dtype):
        self.net.train_step()


class Optimizers:
    """A training step with each optimizer (common.OPTIMIZERS), on the small, mid and wide nets:
    time_train_step, and track_cost_vs_sgd, its time over plain SGD's, both timed interleaved in
    one process. The claim: Adam's fused update pass adds at most 10% to a step of the mid and
    wide nets (it moves 7 values per parameter, a memory-bound pass, against O(batch) FLOPs per
    parameter of the rest of the step)."""

    params = [common.OPTIMIZERS, common.cases(common.SMALL_MID_WIDE, ["784-256-128-10 b128"])]
    param_names = ["optimizer", "network"]
    repeat = (3, 10, 1.0)
    warmup_time = 0.05
    timeout = 180

    def setup(self, optimizer, network):
        sizes, batch = common.SMALL_MID_WIDE[network]
        self.net = common.Net(sizes, batch, "float32", optimizer=optimizer)
        self.sgd = common.Net(sizes, batch, "float32")

    def time_train_step(self, optimizer, network):
        self.net.train_step()

    def track_cost_vs_sgd(self, optimizer, network):
        step, sgd = common.best_seconds([self.net.train_step, self.sgd.train_step])
        return step / sgd

    track_cost_vs_sgd.unit = "ratio"


# Thread counts to try; those over what Numba may use here are skipped.
THREADS = [1, 2, 4, 8, 16, 32]


class Threads:
    """A training step against the size of Numba's thread pool (fastbp.set_num_threads). BLAS
    inside the kernels stays single-threaded whatever the count: one thread pool at a time."""

    params = [THREADS, common.cases(common.SMALL_MID_WIDE, ["64-128-10 b32", "1024x3-10 b256"])]
    param_names = ["threads", "network"]
    repeat = (3, 10, 2.0)
    warmup_time = 0.05
    timeout = 120

    def setup(self, threads, network):
        import numba

        if threads > numba.config.NUMBA_NUM_THREADS:
            raise NotImplementedError(f"only {numba.config.NUMBA_NUM_THREADS} threads here")
        import fastbp

        fastbp.set_num_threads(threads)
        sizes, batch = common.SMALL_MID_WIDE[network]
        self.net = common.Net(sizes, batch, "float32")

    def time_train_step(self, threads, network):
        self.net.train_step()


class Bfloat16:
    """A training step (SGD, through the public API: opt.train_step) with bfloat16 products
    (MLP(matmul_precision="bfloat16"): MKL's bf16 products on AMX or AVX512-BF16) on the small,
    mid and wide nets: time_train_step in each precision, and track_cost_vs_float32, the
    step's time over the float32 step's, both timed interleaved in one process (smaller is
    better, as asv reads every benchmark; issue 26 asks for at most 1/2.5 on the wide nets).
    Skipped where bfloat16 products cannot run (no CPU unit, or no MKL: pip install
    ".[bf16]")."""

    params = [["float32", "bfloat16"], common.cases(common.SMALL_MID_WIDE, ["1024x3-10 b256"])]
    param_names = ["precision", "network"]
    repeat = (3, 10, 1.0)
    warmup_time = 0.05
    timeout = 180

    def setup(self, precision, network):
        import numpy as np

        import fastbp
        from fastbp import kernels

        sizes, batch = common.SMALL_MID_WIDE[network]
        try:
            kernels.require_bfloat16()
        except kernels.Bfloat16Unavailable as exc:
            raise NotImplementedError(str(exc)) from None
        rng = np.random.default_rng(0)
        self.X = rng.standard_normal((batch, sizes[0])).astype(np.float32)
        self.y = rng.integers(0, sizes[-1], batch)
        self.steps = {}
        for name in ("float32", "bfloat16"):
            model = fastbp.MLP(sizes, seed=0, matmul_precision=name)
            opt = common.make_optimizer("sgd", model)
            opt.train_step(self.X, self.y)   # (compiled or loaded before timing)
            self.steps[name] = (lambda opt=opt: opt.train_step(self.X, self.y))

    def time_train_step(self, precision, network):
        self.steps[precision]()

    def track_cost_vs_float32(self, precision, network):
        step, f32 = common.best_seconds([self.steps[precision], self.steps["float32"]])
        return step / f32

    track_cost_vs_float32.unit = "ratio"
