"""bfloat16 matmul precision: the rounding, the products (MKL's where the CPU and MKL allow,
the emulation everywhere), gradients against a NumPy reference that rounds at the same points,
training, and everywhere the precision travels (save/load, pickle, the CLI, the estimators)."""
import pickle

import numpy as np
import pytest

import fastbp
import naive
from fastbp import kernels
from helpers import ROOT
from test_cli import run, run_json
from test_norm_layers import CONFIGS, SIZES, torch_pass

EMULATED = "bfloat16-emulated"


def _mkl_runs():
    try:
        kernels.require_bfloat16()
    except kernels.Bfloat16Unavailable:
        return False
    return True


# The precisions that can run here: the emulation always, MKL's where the CPU has a unit.
PRECISIONS = [EMULATED] + (["bfloat16"] if _mkl_runs() else [])
needs_mkl = pytest.mark.skipif(not _mkl_runs(),
                               reason="no bfloat16 unit on this CPU, or MKL not installed")


# -- the rounding ------------------------------------------------------------------------------


def reference_round(x):
    """x (float32) rounded to the nearest bfloat16 (ties to the even one), as float64, found by
    comparing the two bfloat16 neighbours of each value in float64."""
    with np.errstate(invalid="ignore"):   # (NaN and Inf inputs take the last line's branch)
        return _reference_round(np.asarray(x, dtype=np.float32))


def _reference_round(x):
    bits = x.view(np.uint32).astype(np.uint64)
    low_bits = bits & 0xFFFF0000
    low = low_bits.astype(np.uint32).view(np.float32).astype(np.float64)
    magnitude_low = np.abs(low)
    # The next bfloat16 away from zero: one unit in bfloat16's last place further (2^128 past
    # the largest finite one, which float64 holds).
    exponent = ((low_bits >> 23) & 0xFF).astype(np.int64)
    ulp = np.ldexp(1.0, np.maximum(exponent, 1) - 127 - 7)
    high = np.sign(low) * (magnitude_low + ulp)
    high = np.where(low == 0, np.where(x.view(np.uint32) >> 31, -ulp, ulp), high)
    exact = x.astype(np.float64)
    to_low, to_high = np.abs(exact - low), np.abs(high - exact)
    even = ((low_bits >> 16) & 1) == 0
    result = np.where((to_low < to_high) | ((to_low == to_high) & even), low, high)
    result = np.where(np.abs(result) >= 2.0 ** 128, np.sign(result) * np.inf, result)
    return np.where(np.isnan(exact), np.nan, np.where(np.isinf(exact), exact, result))


def bits_value(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def special_values():
    patterns = [0x3F808000, 0x3F818000,          # ties: to the even neighbour, down and up
                0x3F808001, 0x3F807FFF,          # just past and just short of a tie
                0x7F7FFFFF, 0x7F7F7FFF, 0x7F7F8000, 0xFF7FFFFF,   # near the largest finite
                0x00000001, 0x00008000, 0x00018000, 0x807FFFFF,   # subnormals
                0x00000000, 0x80000000, 0x7F800000, 0xFF800000,   # zeros, infinities
                0x7FC00000, 0x7FFFFFFF, 0xFFFFFFFF, 0x7F800001]   # NaNs, payloads included
    return np.array(patterns, dtype=np.uint32).view(np.float32)


def test_rounding_matches_the_nearest_bfloat16():
    rng = np.random.default_rng(0)
    values = np.concatenate([special_values(),
                             (rng.standard_normal(4000) * 10.0 ** rng.integers(-30, 30, 4000))
                             .astype(np.float32),
                             rng.integers(0, 2 ** 32, 4000, dtype=np.uint64).astype(np.uint32)
                             .view(np.float32)])
    src = values.reshape(-1, 4)
    dst = np.zeros(src.shape, dtype=np.uint16)
    kernels.round_to_bfloat16(dst, src)
    got = bits_value(dst).ravel()
    expected = reference_round(values)
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan], expected[~nan])


def test_rounding_agrees_with_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    values = (rng.standard_normal((64, 33)) * 10.0 ** rng.integers(-20, 20, (64, 33))) \
        .astype(np.float32)
    dst = np.zeros(values.shape, dtype=np.uint16)
    kernels.round_to_bfloat16(dst, values)
    theirs = torch.from_numpy(values).to(torch.bfloat16).to(torch.float64).numpy()
    assert np.array_equal(bits_value(dst), theirs)


# -- one dense layer ---------------------------------------------------------------------------


def rounded(x):
    return reference_round(np.asarray(x, dtype=np.float32))


@pytest.mark.parametrize("bits_type", [np.int16, np.uint16])
def test_dense_forward_is_the_product_of_rounded_operands(bits_type):
    if bits_type == np.uint16 and not _mkl_runs():
        pytest.skip("MKL's product needs a bfloat16 unit and MKL")
    kernels.register_bfloat16_emulation()
    rng = np.random.default_rng(2)
    n_rows, n_in, n_out = 37, 53, 29
    inp = rng.standard_normal((n_rows, n_in)).astype(np.float32)
    weight = rng.standard_normal((n_in, n_out)).astype(np.float32)
    bias = rng.standard_normal(n_out).astype(np.float32)
    out = np.empty((n_rows, n_out), dtype=np.float32)
    inp_bits = np.zeros(n_rows * n_in, dtype=bits_type)
    weight_bits = np.zeros(n_in * n_out, dtype=bits_type)
    kernels.dense_forward_bf16(out, out[:0], inp, weight, bias, kernels.TANH, inp_bits,
                               weight_bits)
    expected = np.tanh(rounded(inp) @ rounded(weight) + bias)
    assert naive.normwise_error(out, expected) < 1e-6
    unrounded = np.tanh(inp.astype(np.float64) @ weight + bias)
    assert naive.normwise_error(out, unrounded) > 1e-4   # (the rounding is there)


# -- whole networks: gradients -----------------------------------------------------------------


def bf16_reference(model, X, y):
    """Loss and flat gradient of a plain MLP with softmax cross-entropy whose products take
    operands rounded to bfloat16 as fastbp rounds them (forward: the layer's input and weight;
    backward: its input, weight and output's gradient), everything else in float64."""
    weights, biases = naive.unflatten(model.params, model.sizes)
    names = model.activations + [model.output_activation]
    inputs, pres = [], []
    a = np.asarray(X, dtype=np.float64)
    for w, b, name in zip(weights, biases, names):
        inputs.append(a)
        pre = rounded(a) @ rounded(w) + b
        pres.append(pre)
        a = naive.activation(name, pre)
    losses, dz = naive.softmax_cross_entropy(a, y)
    grads_w, grads_b = [None] * len(weights), [None] * len(weights)
    for layer in range(len(weights) - 1, -1, -1):
        grads_w[layer] = rounded(inputs[layer]).T @ rounded(dz)
        grads_b[layer] = dz.sum(axis=0)
        if layer:
            dz = (rounded(dz) @ rounded(weights[layer]).T) \
                * naive.activation_derivative(names[layer - 1], pres[layer - 1])
    return losses.mean(), naive.flatten(grads_w, grads_b)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_gradients_match_a_reference_that_rounds_alike(precision):
    rng = np.random.default_rng(3)
    sizes = [23, 40, 31, 7]
    model = fastbp.MLP(sizes, activation=["tanh", "relu"], seed=4, matmul_precision=precision)
    X = rng.standard_normal((50, sizes[0]))
    y = rng.integers(0, sizes[-1], 50)
    loss = model.loss_and_grad(X, y)
    ref_loss, ref_grads = bf16_reference(model, X, y)
    exact = naive.Net(sizes, model.activations, "identity", model.loss) \
        .loss_and_grad(model.params.astype(np.float64), X, y)[1]
    assert abs(loss - ref_loss) < 1e-5 * abs(ref_loss)
    # The rounding moves the gradient by far more than float32's sums do.
    assert naive.normwise_error(model.grads, ref_grads) < 1e-4
    assert naive.normwise_error(ref_grads, exact) > 10 * naive.normwise_error(model.grads,
                                                                               ref_grads)
    # and stays within bfloat16's tolerance of the exact gradient (8-bit operands, sums that
    # cancel: a few percent of the largest entry)
    assert naive.normwise_error(model.grads, exact) < 0.1


@needs_mkl
def test_mkl_and_the_emulation_agree():
    rng = np.random.default_rng(5)
    sizes = [64, 96, 80, 10]
    X = rng.standard_normal((70, sizes[0]))
    y = rng.integers(0, 10, 70)
    grads = []
    for precision in ("bfloat16", EMULATED):
        model = fastbp.MLP(sizes, seed=6, matmul_precision=precision, norm="layer",
                           residual=False, dropout=0.1)
        model.loss_and_grad(X, y)
        grads.append(model.grads.copy())
    assert naive.normwise_error(grads[0], grads[1]) < 1e-5


def rounded_product(torch):
    """h @ weight with operands rounded to bfloat16 as fastbp rounds them, forward (h, weight)
    and backward (the output's gradient, h and weight), as a PyTorch function."""
    def q(t):
        return t.to(torch.float32).to(torch.bfloat16).to(t.dtype)

    class Product(torch.autograd.Function):
        @staticmethod
        def forward(ctx, h, weight):
            ctx.save_for_backward(h, weight)
            return q(h) @ q(weight)

        @staticmethod
        def backward(ctx, grad):
            h, weight = ctx.saved_tensors
            return q(grad) @ q(weight).T, q(h).T @ q(grad)

    return Product.apply


@pytest.mark.parametrize("config", ["layer", "batch", "residual", "layer-residual-dropout",
                                    "mixed"])
def test_block_layers_match_pytorch_with_rounded_products(config):
    torch = pytest.importorskip("torch")
    model = fastbp.MLP(SIZES, activation=["tanh", "gelu", "relu"], seed=3,
                       matmul_precision=EMULATED, **CONFIGS[config])
    rng = np.random.default_rng(1)
    model.params = model.params + rng.normal(0, 0.2, model.n_params)
    for _ in range(2):
        x, y = rng.normal(size=(9, 5)), rng.integers(0, 3, 9)
        before = model.engine.running.copy()
        loss = model.loss_and_grad(x, y)
        expected, grads, running, _ = torch_pass(torch, model, x, y, before, True, range(9),
                                                 rounded_product(torch))
        _, exact, _, _ = torch_pass(torch, model, x, y, before, True, range(9))
        assert loss == pytest.approx(expected, rel=1e-5)
        error = naive.normwise_error(model.grads, grads)
        assert error < 1e-4 and naive.normwise_error(exact, grads) > 10 * error
        np.testing.assert_allclose(model.engine.running, running, rtol=1e-4, atol=1e-6)


def test_float32_models_compile_no_bfloat16_unit():
    model = fastbp.MLP([4, 3, 2], seed=0)
    names = kernels.plan.units_for(model.loss, None, model.engine.net)
    assert not any("bf16" in name for name in names)
    emulated = fastbp.MLP([4, 3, 2], seed=0, matmul_precision=EMULATED)
    names = kernels.plan.units_for(model.loss, None, emulated.engine.net)
    assert "dense_forward_bf16_emulated" in names and "dense_forward_grid" not in names


# -- training ----------------------------------------------------------------------------------


def digits():
    data = np.load(ROOT / "data" / "digits.npz")
    X = (data["X"] / 16.0).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(X))
    return X[order], data["y"][order]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_training_on_digits_is_as_accurate_as_float32(precision):
    X, y = digits()
    accuracy = {}
    for name in ("float32", precision):
        model = fastbp.MLP([64, 128, 10], seed=0, matmul_precision=name)
        fastbp.fit(model, X[:1400], y[:1400], fastbp.Adam(model, lr=1e-3), epochs=15,
                   batch_size=32, seed=0)
        accuracy[name] = (model.predict(X[1400:]) == y[1400:]).mean()
    assert accuracy[precision] > 0.9
    assert accuracy[precision] >= accuracy["float32"] - 0.005   # (no worse by 0.5 points)


# -- where the precision travels ---------------------------------------------------------------


def test_bad_precisions_are_refused():
    with pytest.raises(ValueError, match="matmul_precision: expected one of"):
        fastbp.MLP([3, 2], matmul_precision="bf16")
    with pytest.raises(ValueError, match="matmul_precision: 'bfloat16-emulated' is for "
                                         "float32 models"):
        fastbp.MLP([3, 2], dtype=np.float64, matmul_precision=EMULATED)


def test_a_cpu_without_a_unit_is_named(monkeypatch):
    monkeypatch.setattr(kernels.bfloat16, "CPU_BF16", {"amx_bf16": False, "avx512_bf16": False})
    with pytest.raises(kernels.Bfloat16Unavailable, match="AMX-BF16 nor AVX512-BF16.*'float32'"):
        fastbp.MLP([3, 2], matmul_precision="bfloat16")


def test_save_load_and_pickle_keep_the_precision(tmp_path):
    model = fastbp.MLP([5, 4, 3], seed=1, matmul_precision=EMULATED)
    X = np.random.default_rng(0).standard_normal((6, 5))
    path = fastbp.save(model, tmp_path / "m.npz")
    assert int(np.load(path)["version"]) == 5
    loaded = fastbp.load(path)
    assert loaded.matmul_precision == EMULATED
    assert np.array_equal(loaded.forward(X), model.forward(X))
    assert fastbp.load(path, matmul_precision="float32").matmul_precision == "float32"
    copy = pickle.loads(pickle.dumps(model))
    assert copy.matmul_precision == EMULATED
    assert np.array_equal(copy.forward(X), model.forward(X))
    with pytest.raises(ValueError, match="matmul_precision"):
        fastbp.load(path, matmul_precision="half")
    plain = fastbp.save(fastbp.MLP([5, 3]), tmp_path / "plain.npz")
    assert int(np.load(plain)["version"]) == 3   # (older readers still read float32 models)


def test_cli_trains_and_predicts_in_bfloat16(tmp_path, capsys):
    saved = tmp_path / "m.npz"
    summary = run_json(["--matmul-precision", EMULATED, "--epochs", "3", "--save", str(saved)],
                       capsys)
    assert summary["matmul_precision"] == EMULATED
    assert summary["test_accuracy"] > 0.9
    assert fastbp.load(saved).matmul_precision == EMULATED
    out = tmp_path / "p.csv"
    code, _, err = run(["predict", str(saved), str(ROOT / "data" / "digits.npz"), "--out",
                        str(out), "--matmul-precision", "float32"], capsys)
    assert code == 0, err
    code, _, err = run(["train", "--matmul-precision", EMULATED, "--dtype", "float64"], capsys)
    assert code == 2
    assert "--matmul-precision bfloat16-emulated is for --dtype float32" in err


def test_estimators_take_the_precision():
    pytest.importorskip("sklearn")
    from fastbp.sklearn import MLPClassifier
    X, y = digits()
    clf = MLPClassifier((32,), max_iter=5, random_state=0, matmul_precision=EMULATED)
    with pytest.warns(Warning):
        clf.fit(X[:300], y[:300])
    assert clf._model.matmul_precision == EMULATED
    with pytest.raises(ValueError, match="matmul_precision"):
        MLPClassifier(dtype="float64", matmul_precision=EMULATED).fit(X[:50], y[:50])


def _as_bfloat16_file(path):
    """Rewrite a saved emulated model as a "bfloat16" one (what a machine with a unit saves)."""
    fields = dict(np.load(path))
    fields["matmul_precision"] = np.array("bfloat16")
    np.savez(path, **fields)


def test_without_a_unit_the_commands_say_so_and_float32_still_runs(tmp_path, capsys,
                                                                   monkeypatch):
    saved = tmp_path / "m.npz"
    run_json(["--matmul-precision", EMULATED, "--epochs", "1", "--save", str(saved)], capsys)
    _as_bfloat16_file(saved)
    monkeypatch.setattr(kernels.bfloat16, "CPU_BF16", {"amx_bf16": False, "avx512_bf16": False})
    code, out, err = run(["train", "--matmul-precision", "bfloat16"], capsys)
    assert code == 2 and out == ""
    assert err.startswith("fastbp train: --matmul-precision bfloat16: ") and "AMX-BF16" in err
    data = str(ROOT / "data" / "digits.npz")
    code, _, err = run(["predict", str(saved), data], capsys)
    assert code == 2 and "--matmul-precision float32" in err and "Traceback" not in err
    code, out, err = run(["predict", str(saved), data, "--matmul-precision", "float32"], capsys)
    assert code == 0, err
    with pytest.raises(kernels.Bfloat16Unavailable):
        fastbp.load(saved)
    assert fastbp.load(saved, matmul_precision=EMULATED).matmul_precision == EMULATED
