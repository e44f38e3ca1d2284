"""Training throughput: samples/s, GFLOP/s, the fraction of the machine's matrix-multiply peak,
and how much of a step its matrix products alone would take (the BLAS floor).

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
    params = [list(NETWORKS), ["float32", "float64"]]
    param_names = ["network", "dtype"]
    timeout = 180

    def setup(self, network, dtype):
        sizes, batch = NETWORKS[network]
        self.net = common.Net(sizes, batch, dtype)

    def _step_seconds(self):
        return common.best_seconds([self.net.train_step], repeat=5, min_sample=0.05)[0]

    def track_samples_per_s(self, network, dtype):
        return self.net.batch / self._step_seconds()

    track_samples_per_s.unit = "samples/s"

    def track_gflops(self, network, dtype):
        return self.net.flops / self._step_seconds() / 1e9

    track_gflops.unit = "GFLOP/s"

    def track_peak_fraction(self, network, dtype):
        """GFLOP/s of the training step over numpy's GFLOP/s on a 2048 x 2048 matrix product in
        the same dtype, both measured here, interleaved (best of 5 samples each)."""
        product, product_flops = common.matmul(self.net.dtype)
        step, product_seconds = common.best_seconds([self.net.train_step, product], repeat=5,
                                                    min_sample=0.05)
        return (self.net.flops / step) / (product_flops / product_seconds)

    track_peak_fraction.unit = "fraction of matmul peak"

    def track_gemm_floor_fraction(self, network, dtype):
        """The time the step's matrix products take on their own, as NumPy matmuls with all
        threads (fastbp.bench.step_products), over the step's time: how close the step comes to
        this machine's BLAS floor, 1 meaning nothing but the products. Interleaved, best of 5."""
        from fastbp.bench import step_products
        products = step_products(self.net.sizes, self.net.batch, self.net.dtype)

        def all_products():
            for product in products:
                product()
        step, floor = common.best_seconds([self.net.train_step, all_products], repeat=5,
                                          min_sample=0.05)
        return floor / step

    track_gemm_floor_fraction.unit = "fraction of the step"


class MatmulPeak:
    """The reference itself: numpy's 2048 x 2048 matrix product (its own BLAS, all threads)."""

    params = [["float32", "float64"]]
    param_names = ["dtype"]
    timeout = 120

    def track_matmul_gflops(self, dtype):
        return common.matmul_peak_gflops(common.DTYPES[dtype])

    track_matmul_gflops.unit = "GFLOP/s"
