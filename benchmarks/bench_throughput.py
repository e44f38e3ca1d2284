"""Training throughput, as costs: microseconds per sample, the step's time over what its FLOPs
would take at the machine's matrix-multiply peak, and over the time its matrix products alone
take (the BLAS floor).

asv reads a larger value as worse for every benchmark, so every figure here is a cost (smaller is
better) rather than a rate: samples/s = 1e6 / track_us_per_sample, GFLOP/s = 6 p / (1e3 *
track_us_per_sample), the fraction of peak = 1 / track_step_over_peak.

The networks are those of ../shared/PERF.md, so the figures compare with PyTorch's and JAX's
there. Each value comes from the best of interleaved samples of the compiled training step
(common.best_seconds). FLOPs per step are counted as 6 * p * batch.
"""
from . import common

NETWORKS = {
    "64-128-10 b32": ([64, 128, 10], 32),
    "784-256-128-10 b64": ([784, 256, 128, 10], 64),
    "784-512-256-10 b128": ([784, 512, 256, 10], 128),
    "784-1024-1024-10 b256": ([784, 1024, 1024, 10], 256),
    "2048x4-10 b512": ([2048, 2048, 2048, 2048, 10], 512),
}


class Throughput:
    params = [common.cases(NETWORKS, ["64-128-10 b32", "784-512-256-10 b128"]),
              common.cases(["float32", "float64"], ["float32"])]
    param_names = ["network", "dtype"]
    timeout = 180

    def setup(self, network, dtype):
        sizes, batch = NETWORKS[network]
        self.net = common.Net(sizes, batch, dtype)

    def track_us_per_sample(self, network, dtype):
        step, = common.best_seconds([self.net.train_step], repeat=5, min_sample=0.05)
        return step / self.net.batch * 1e6

    track_us_per_sample.unit = "µs per sample"

    def track_step_over_peak(self, network, dtype):
        """The step's time over the time its FLOPs would take at numpy's rate on a 2048 x 2048
        matrix product in the same dtype (1 would be the machine's peak), both measured here,
        interleaved (best of 5 samples each)."""
        product, product_flops = common.matmul(self.net.dtype)
        step, product_seconds = common.best_seconds([self.net.train_step, product], repeat=5,
                                                    min_sample=0.05)
        return step / (self.net.flops * product_seconds / product_flops)

    track_step_over_peak.unit = "ratio"

    def track_step_over_gemm_floor(self, network, dtype):
        """The step's time over the time its matrix products take on their own, as NumPy
        matmuls with all threads (fastbp.bench.step_products): how far the step is from this
        machine's BLAS floor, 1 meaning nothing but the products. Interleaved, best of 5."""
        from fastbp.bench import step_products
        products = step_products(self.net.sizes, self.net.batch, self.net.dtype)

        def all_products():
            for product in products:
                product()
        step, floor = common.best_seconds([self.net.train_step, all_products], repeat=5,
                                          min_sample=0.05)
        return step / floor

    track_step_over_gemm_floor.unit = "ratio"


class MatmulPeak:
    """The reference itself: numpy's 2048 x 2048 matrix product (its own BLAS, all threads)."""

    params = [["float32", "float64"]]
    param_names = ["dtype"]
    timeout = 120

    def track_matmul_ms(self, dtype):
        """Milliseconds per product, best of 5 (GFLOP/s = 2 * 2048**3 / 1e6 / this)."""
        product, _ = common.matmul(common.DTYPES[dtype])
        return common.best_seconds([product], repeat=5, min_sample=0)[0] * 1e3

    track_matmul_ms.unit = "ms"
