"""Bad input raises ValueError or TypeError naming the argument and leaves params and grads
bitwise unchanged; inputs of another dtype or layout are converted, never misread."""
import re

import os

import numpy as np
import pytest

import fastbp

N_IN, N_OUT = 4, 3


def classifier(dtype=np.float64):
    return fastbp.MLP([N_IN, 6, N_OUT], activation="tanh", dtype=dtype, seed=0)


def regressor(dtype=np.float64, n_out=N_OUT):
    return fastbp.MLP([N_IN, 6, n_out], activation="tanh", loss="mse", dtype=dtype, seed=0)


def binary_classifier(dtype=np.float64, n_out=N_OUT):
    return fastbp.MLP([N_IN, 6, n_out], activation="tanh", loss="binary_cross_entropy",
                      dtype=dtype, seed=0)


def good_batch(model, n=8):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(n, N_IN))
    if model.loss == "mse":
        return X, rng.normal(size=(n, model.sizes[-1]))
    if model.loss == "binary_cross_entropy":
        return X, (rng.random((n, model.sizes[-1])) < 0.5).astype(np.float64)
    return X, rng.integers(0, N_OUT, size=n)


def with_nan(a, value):
    a = np.array(a, dtype=np.float64)
    a.flat[a.size // 2] = value
    return a


# (id, model kind, function of a good (X, y) returning a bad (X, y), argument named)
BAD_BATCHES = [
    ("X-1d", "clf", lambda X, y: (X[0], y), "X"),
    ("X-3d", "clf", lambda X, y: (X[:, :, None], y), "X"),
    ("X-scalar", "clf", lambda X, y: (np.float64(1.0), y), "X"),
    ("X-too-few-features", "clf", lambda X, y: (X[:, :-1], y), "X"),
    ("X-too-many-features", "clf", lambda X, y: (np.hstack([X, X]), y), "X"),
    ("X-strings", "clf", lambda X, y: (X.astype(str), y), "X"),
    ("X-complex", "clf", lambda X, y: (X.astype(complex), y), "X"),
    ("X-nan", "clf", lambda X, y: (with_nan(X, np.nan), y), "X"),
    ("X-inf", "clf", lambda X, y: (with_nan(X, np.inf), y), "X"),
    ("X-minus-inf", "mse", lambda X, y: (with_nan(X, -np.inf), y), "X"),
    ("X-empty", "clf", lambda X, y: (X[:0], y[:0]), "X"),
    ("y-too-short", "clf", lambda X, y: (X, y[:-1]), "y"),
    ("y-too-long", "clf", lambda X, y: (X, np.concatenate([y, y])), "y"),
    ("y-scalar", "clf", lambda X, y: (X, np.int64(1)), "y"),
    ("labels-too-large", "clf", lambda X, y: (X, np.where(np.arange(len(y)) == 2, N_OUT, y)), "y"),
    ("labels-negative", "clf", lambda X, y: (X, np.where(np.arange(len(y)) == 2, -1, y)), "y"),
    ("labels-float", "clf", lambda X, y: (X, y.astype(np.float64)), "y"),
    ("labels-2d", "clf", lambda X, y: (X, y[:, None]), "y"),
    ("labels-nan", "clf", lambda X, y: (X, with_nan(y, np.nan)), "y"),
    ("labels-strings", "clf", lambda X, y: (X, y.astype(str)), "y"),
    ("mse-y-nan", "mse", lambda X, y: (X, with_nan(y, np.nan)), "y"),
    ("mse-y-inf", "mse", lambda X, y: (X, with_nan(y, np.inf)), "y"),
    ("mse-y-wrong-width", "mse", lambda X, y: (X, y[:, :-1]), "y"),
    ("mse-y-1d-for-3-outputs", "mse", lambda X, y: (X, y[:, 0]), "y"),
    ("mse-y-too-short", "mse", lambda X, y: (X, y[:-1]), "y"),
    ("bce-y-nan", "bce", lambda X, y: (X, with_nan(y, np.nan)), "y"),
    ("bce-y-inf", "bce", lambda X, y: (X, with_nan(y, np.inf)), "y"),
    ("bce-y-above-1", "bce", lambda X, y: (X, with_nan(y, 1.5)), "y"),
    ("bce-y-negative", "bce", lambda X, y: (X, with_nan(y, -0.25)), "y"),
    ("bce-y-labels", "bce", lambda X, y: (X, np.arange(len(y)) % N_OUT), "y"),   # 1-D, C=3
    ("bce-y-wrong-width", "bce", lambda X, y: (X, y[:, :-1]), "y"),
    ("bce-y-3d", "bce", lambda X, y: (X, y[:, :, None]), "y"),
    ("bce-y-strings", "bce", lambda X, y: (X, y.astype(str)), "y"),
    ("bce-y-too-short", "bce", lambda X, y: (X, y[:-1]), "y"),
]


def names_argument(message, name):
    return re.search(rf"(^|\W){re.escape(name)}(\W|$)", message) is not None


def call(entry, model, X, y):
    if entry == "loss_and_grad":
        model.loss_and_grad(X, y)
    elif entry == "loss_value":
        model.loss_value(X, y)
    elif entry == "train_step":
        fastbp.SGD(model, lr=0.1, clip_norm=1.0).train_step(X, y)
    elif entry == "fit":
        fastbp.fit(model, X, y, optimizer=fastbp.SGD(model, lr=0.1), epochs=2, batch_size=3)
    elif entry == "gradcheck":
        fastbp.gradcheck(model, X, y)


@pytest.mark.parametrize("entry", ["loss_and_grad", "train_step", "fit", "loss_value",
                                   "gradcheck"])
@pytest.mark.parametrize("case_id, kind, spoil, name", BAD_BATCHES,
                         ids=[c[0] for c in BAD_BATCHES])
def test_bad_batch_raises_and_changes_nothing(entry, case_id, kind, spoil, name):
    model = {"clf": classifier, "mse": regressor, "bce": binary_classifier}[kind]()
    X, y = good_batch(model)
    model.loss_and_grad(X, y)          # grads hold real values
    model.params[0] = 0.125            # and params are not just the initialisation
    params, grads = model.params.copy(), model.grads.copy()
    bad_X, bad_y = spoil(X, y)
    with pytest.raises((ValueError, TypeError)) as info:
        call(entry, model, bad_X, bad_y)
    assert names_argument(str(info.value), name), str(info.value)
    assert np.array_equal(model.params, params), "params changed"
    assert np.array_equal(model.grads, grads), "grads changed"


@pytest.mark.parametrize("spoil, name", [
    (lambda X: X[0], "X"), (lambda X: X[:, :-1], "X"), (lambda X: with_nan(X, np.nan), "X"),
    (lambda X: X[:0], "X")])
@pytest.mark.parametrize("method", ["forward", "predict", "predict_proba"])
def test_bad_inference_input(method, spoil, name):
    model = classifier()
    X, _ = good_batch(model)
    with pytest.raises((ValueError, TypeError)) as info:
        getattr(model, method)(spoil(X))
    assert names_argument(str(info.value), name), str(info.value)


# ---------------------------------------------------------------------------------------------
# Constructor and optimizer arguments


@pytest.mark.parametrize("kwargs, name", [
    (dict(activation="softplus"), "activation"),
    (dict(activation="RELU"), "activation"),
    (dict(activation=None), "activation"),
    (dict(activation=["relu", "tanh"]), "activation"),       # one hidden layer, two names
    (dict(activation=["relu", "swish", "tanh"], sizes=[4, 5, 5, 5, 3]), "activation"),
    (dict(output_activation="softmax"), "output_activation"),
    (dict(output_activation="sigmoid"), "output_activation"),    # with softmax-CE
    (dict(output_activation="tanh"), "output_activation"),       # with softmax-CE
    (dict(output_activation="sigmoid", loss="binary_cross_entropy"), "output_activation"),
    (dict(l2=-0.1), "l2"), (dict(l2=float("nan")), "l2"), (dict(l2=float("inf")), "l2"),
    (dict(l2="0.1"), "l2"), (dict(l2=None), "l2"), (dict(l2=True), "l2"),
    (dict(l2=1e300, dtype=np.float32), "l2"),
    (dict(loss="hinge"), "loss"),
    (dict(loss="cross_entropy"), "loss"),
    (dict(loss=None), "loss"),
    (dict(dtype=np.int32), "dtype"),
    (dict(dtype=np.float16), "dtype"),
    (dict(dtype="complex128"), "dtype"),
    (dict(sizes=[4]), "sizes"),
    (dict(sizes=[4, 0, 3]), "sizes"),
    (dict(sizes=[4, -2, 3]), "sizes"),
    (dict(sizes=[4, 2.5, 3]), "sizes"),
    (dict(sizes=5), "sizes"),
    (dict(seed=1.5), "seed"),
])
def test_bad_model_arguments(kwargs, name):
    kwargs = dict(kwargs)
    sizes = kwargs.pop("sizes", [4, 5, 3])
    with pytest.raises((ValueError, TypeError)) as info:
        fastbp.MLP(sizes, **kwargs)
    assert names_argument(str(info.value), name), str(info.value)


def test_output_activation_with_mse_is_allowed():
    for out in ("identity", "relu", "sigmoid", "tanh"):
        fastbp.MLP([2, 3, 2], loss="mse", output_activation=out)


def test_l2_accepts_numbers_and_keeps_them_as_floats():
    for value in (0, 0.0, 3, np.float32(0.5), np.int64(2), 1e300):
        model = fastbp.MLP([2, 3, 2], l2=value, dtype=np.float64)
        assert model.l2 == float(value) and type(model.l2) is float


def test_binary_cross_entropy_targets_are_converted():
    """0/1 targets as bools, ints, another float dtype, or (N,) for one output, give the
    result of the float array (N, C) itself."""
    model = binary_classifier()
    X, y = good_batch(model)
    expected = outcome(model, X, y, "train_step")
    for variant in (y.astype(bool), y.astype(np.int8), y.astype(np.float32), y.tolist(),
                    np.asfortranarray(y)):
        assert_same_outcome(outcome(model, X, variant, "train_step"), expected)
    single = binary_classifier(n_out=1)
    assert_same_outcome(outcome(single, X, y[:, 0], "train_step"),
                        outcome(single, X, y[:, :1], "train_step"))


@pytest.mark.parametrize("kwargs, name", [
    (dict(lr=0.0), "lr"), (dict(lr=-0.1), "lr"), (dict(lr=float("nan")), "lr"),
    (dict(lr=float("inf")), "lr"), (dict(lr="0.1"), "lr"), (dict(lr=None), "lr"),
    (dict(lr=True), "lr"),
    (dict(lr=0.1, clip_norm=0.0), "clip_norm"), (dict(lr=0.1, clip_norm=-1.0), "clip_norm"),
    (dict(lr=0.1, clip_norm=float("nan")), "clip_norm"),
    (dict(lr=0.1, clip_norm="1"), "clip_norm"),
])
def test_bad_optimizer_arguments(kwargs, name):
    model = classifier()
    params, grads = model.params.copy(), model.grads.copy()
    with pytest.raises((ValueError, TypeError)) as info:
        fastbp.SGD(model, **kwargs)
    assert names_argument(str(info.value), name), str(info.value)
    assert np.array_equal(model.params, params) and np.array_equal(model.grads, grads)


def test_optimizer_accepts_numpy_scalars():
    opt = fastbp.SGD(classifier(), lr=np.float32(0.5), clip_norm=np.int64(2))
    assert opt.lr == 0.5 and opt.clip_norm == 2.0


@pytest.mark.parametrize("kwargs, name", [
    (dict(epochs=0), "epochs"), (dict(epochs=-1), "epochs"), (dict(epochs=1.5), "epochs"),
    (dict(batch_size=0), "batch_size"), (dict(batch_size=2.0), "batch_size"),
    (dict(batch_size=None), "batch_size"),
])
def test_bad_fit_arguments(kwargs, name):
    model = classifier()
    X, y = good_batch(model)
    params, grads = model.params.copy(), model.grads.copy()
    args = dict(epochs=1, batch_size=4)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError)) as info:
        fastbp.fit(model, X, y, optimizer=fastbp.SGD(model, 0.1), **args)
    assert names_argument(str(info.value), name), str(info.value)
    assert np.array_equal(model.params, params) and np.array_equal(model.grads, grads)


def test_fit_rejects_a_foreign_optimizer_or_model():
    model, other = classifier(), classifier()
    X, y = good_batch(model)
    params = model.params.copy()
    with pytest.raises((ValueError, TypeError)) as info:
        fastbp.fit(model, X, y, optimizer=fastbp.SGD(other, 0.1), epochs=1, batch_size=4)
    assert names_argument(str(info.value), "optimizer")
    with pytest.raises(TypeError) as info:
        fastbp.fit(model, X, y, optimizer="sgd", epochs=1, batch_size=4)
    assert names_argument(str(info.value), "optimizer")
    with pytest.raises(TypeError) as info:
        fastbp.fit("model", X, y, optimizer=fastbp.SGD(model, 0.1), epochs=1, batch_size=4)
    assert names_argument(str(info.value), "model")
    with pytest.raises(TypeError) as info:
        fastbp.SGD("model", 0.1)
    assert names_argument(str(info.value), "model")
    assert np.array_equal(model.params, params)


# ---------------------------------------------------------------------------------------------
# Conversions: another dtype or layout gives exactly the result of the converted input


def layouts(X):
    """Views and copies of X with other dtypes and memory layouts (all the same values)."""
    wide = np.zeros((X.shape[0], 2 * X.shape[1]), dtype=X.dtype)
    wide[:, ::2] = X
    reversed_rows = np.ascontiguousarray(X[::-1])[::-1]
    read_only = X.copy()
    read_only.flags.writeable = False
    tall = np.zeros((2 * X.shape[0], X.shape[1]), dtype=X.dtype)
    tall[::2] = X
    return {
        "column-strided": wide[:, ::2],
        "fortran": np.asfortranarray(X),
        "negative-row-stride": reversed_rows,
        "row-strided": tall[::2],
        "read-only": read_only,
        "list": X.tolist(),
    }


def outcome(model, X, y, entry):
    model = fastbp.MLP(model.sizes, activation=model.activations,
                       output_activation=model.output_activation, loss=model.loss,
                       dtype=model.dtype, seed=0, l2=model.l2)
    if entry == "loss_and_grad":
        loss = model.loss_and_grad(X, y)
    elif entry == "train_step":
        loss = fastbp.SGD(model, 0.1, clip_norm=1.0).train_step(X, y)
    else:
        loss = fastbp.fit(model, X, y, optimizer=fastbp.SGD(model, 0.1), epochs=1, batch_size=3,
                          seed=0)["loss"][0]
    return loss, model.params.copy(), model.grads.copy()


def assert_same_outcome(a, b):
    assert a[0] == b[0]
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])


@pytest.mark.parametrize("entry", ["loss_and_grad", "train_step", "fit"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layouts_of_X_give_the_same_result(dtype, entry):
    model = classifier(dtype)
    X, y = good_batch(model)
    X = X.astype(dtype)
    expected = outcome(model, X, y, entry)
    for name, variant in layouts(X).items():
        assert_same_outcome(outcome(model, variant, y, entry), expected)


@pytest.mark.parametrize("entry", ["loss_and_grad", "train_step", "fit"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_other_dtypes_of_X_are_converted(dtype, entry):
    model = classifier(dtype)
    rng = np.random.default_rng(3)
    X_int = rng.integers(-3, 4, size=(8, N_IN))
    _, y = good_batch(model)
    other = np.float64 if dtype == np.float32 else np.float32
    X_other = rng.normal(size=(8, N_IN)).astype(other)
    for given in (X_int, X_int.astype(np.int8), X_int.astype(bool), X_other,
                  X_other.astype(np.float16)):
        assert_same_outcome(outcome(model, given, y, entry),
                            outcome(model, given.astype(dtype), y, entry))


def test_label_dtypes_and_layouts_are_converted():
    model = classifier()
    X, y = good_batch(model)
    expected = outcome(model, X, y, "train_step")
    wide = np.zeros(2 * len(y), dtype=np.int64)
    wide[::2] = y
    for variant in (y.astype(np.int32), y.astype(np.uint8), y.astype(np.int16), wide[::2],
                    y.tolist()):
        assert_same_outcome(outcome(model, X, variant, "train_step"), expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_regression_target_dtypes_and_layouts_are_converted(dtype):
    model = regressor(dtype)
    X, y = good_batch(model)
    y = y.astype(dtype)
    expected = outcome(model, X, y, "train_step")
    for variant in layouts(y).values():
        assert_same_outcome(outcome(model, X, variant, "train_step"), expected)
    other = np.float64 if dtype == np.float32 else np.float32
    assert_same_outcome(outcome(model, X, y.astype(other), "train_step"),
                        outcome(model, X, y.astype(other).astype(dtype), "train_step"))


def test_inference_converts_too():
    model = classifier(np.float32)
    X, _ = good_batch(model)
    expected = model.forward(X.astype(np.float32))
    for variant in layouts(X).values():
        assert np.array_equal(model.forward(variant), expected)
    assert np.array_equal(model.predict(np.asfortranarray(X)), expected.argmax(axis=1))


# ---------------------------------------------------------------------------------------------
# Reassigning a model's attributes: structure is read-only, buffers take values in place


# (l2 may be set: test_model.test_l2_can_be_changed_between_steps)
STRUCTURE = ["sizes", "activations", "output_activation", "loss", "dtype", "checkpoint_every",
             "weights", "biases", "weight_grads", "bias_grads"]


@pytest.mark.parametrize("name", STRUCTURE)
def test_structure_attributes_are_read_only(name):
    model = fastbp.MLP([4, 6, 3], seed=0)
    before = repr(getattr(model, name))
    with pytest.raises(AttributeError):
        setattr(model, name, [4, 1000, 3])
    assert repr(getattr(model, name)) == before


def test_mutating_the_returned_lists_changes_nothing():
    model = fastbp.MLP([4, 6, 3], seed=0)
    model.sizes[0] = 100
    model.activations[0] = "tanh"
    model.weights[0] = np.zeros(3)
    assert model.sizes == [4, 6, 3] and model.activations == ["relu"]
    assert model.weights[0].shape == (4, 6)
    model.loss_and_grad(np.ones((2, 4)), np.array([0, 2]))   # still runs on its own buffers


@pytest.mark.parametrize("name", ["params", "grads"])
@pytest.mark.parametrize("value, error", [
    (np.zeros(3, np.float32), ValueError),            # too short: compiled code read past it
    (np.zeros((1, 51), np.float32), ValueError),      # the right size, the wrong shape
    (np.array(["a"] * 51), TypeError),
    (np.zeros(51, dtype=bool), TypeError),
    ("abc", (TypeError, ValueError)),
])
def test_assigning_a_buffer_that_does_not_fit_is_refused(name, value, error):
    model = fastbp.MLP([4, 6, 3], seed=0)
    assert model.n_params == 51
    before = getattr(model, name).copy()
    with pytest.raises(error, match=name):
        setattr(model, name, value)
    assert np.array_equal(getattr(model, name), before)
    model.loss_and_grad(np.ones((2, 4)), np.array([0, 2]))


def test_assigning_params_copies_in_place_and_keeps_the_views():
    model = fastbp.MLP([4, 6, 3], seed=0)
    buffer, first_weight = model.params, model.weights[0]
    best = np.arange(51, dtype=np.float64) / 51   # another dtype: converted
    model.params = best
    assert model.params is buffer and np.array_equal(model.params, best.astype(np.float32))
    first_weight[0, 0] = 7.0
    assert model.params[0] == 7.0                     # the views still point into params
    with pytest.raises(ValueError, match="params: contains NaN"):
        model.params = np.full(51, np.nan)
    with pytest.raises(ValueError, match="params"):
        model.params = np.full(51, 1e300)            # beyond float32
    assert model.params[0] == 7.0


def test_assigning_grads_refreshes_the_gradient_norms():
    model = fastbp.MLP([4, 6, 3], seed=0)
    model.loss_and_grad(np.ones((2, 4)), np.array([0, 2]))
    model.grad_norms()
    model.grads = np.ones(51)
    expected = [np.sqrt(w.size + b.size) for w, b in zip(model.weight_grads, model.bias_grads)]
    np.testing.assert_allclose(model.grad_norms(), expected, rtol=1e-6)


@pytest.mark.parametrize("call, error, name", [
    (lambda m, X, y: fastbp.fit(m, X, y, fastbp.SGD(m, 0.1), 1, 2, seed=-1), ValueError, "seed"),
    (lambda m, X, y: fastbp.fit(m, X, y, fastbp.SGD(m, 0.1), 1, 2, seed="a"), TypeError, "seed"),
    (lambda m, X, y: fastbp.fit(m, X, y, fastbp.SGD(m, 0.1), 1, 2, monitor=["val_loss"]),
     ValueError, "monitor"),
    (lambda m, X, y: fastbp.gradcheck(m, X, y, seed="a"), TypeError, "seed"),
    (lambda m, X, y: fastbp.MLP([4, 3, 2], seed=-1), ValueError, "seed"),
    (lambda m, X, y: fastbp.SGD(m, 10 ** 400), ValueError, "lr"),
    (lambda m, X, y: fastbp.data.load("digits", dtype="banana"), ValueError, "dtype"),
    (lambda m, X, y: fastbp.data.load(None), TypeError, "source"),
    (lambda m, X, y: fastbp.load(3.5), TypeError, "path"),
])
def test_small_arguments_are_refused_naming_them(call, error, name):
    model = fastbp.MLP([4, 3, 2], seed=0)
    before = model.params.copy()
    X, y = np.ones((4, 4)), np.array([0, 1, 0, 1])
    with pytest.raises(error, match=name):
        call(model, X, y)
    assert np.array_equal(model.params, before)


def test_a_bytes_path_is_a_path(tmp_path):
    model = fastbp.MLP([4, 3, 2], seed=0)
    path = fastbp.save(model, tmp_path / "m.npz")
    assert np.array_equal(fastbp.load(os.fsencode(path)).params, model.params)


# ---------------------------------------------------------------------------------------------
# Messages that say what is wrong


def test_values_beyond_float32_are_said_to_overflow_it_not_to_be_nan():
    X, y = good_batch(classifier())
    X[2, 1] = 1e39   # finite in float64, Inf in float32
    for call in (classifier(np.float32).predict,
                 lambda X: classifier(np.float32).loss_value(X, y)):
        with pytest.raises(ValueError, match=r"X: values up to 1e\+39 overflow float32 .*"
                                             r"float64 would hold them"):
            call(X)
    X_ok, values = good_batch(regressor())
    values[0, 0] = -1e39
    with pytest.raises(ValueError, match=r"y: values up to 1e\+39 overflow float32"):
        regressor(np.float32).loss_value(X_ok, values)
    with pytest.raises(ValueError, match="X: contains NaN or Inf"):   # a true NaN still is one
        classifier(np.float32).predict(with_nan(X_ok, np.nan))
    assert np.all(np.isfinite(classifier(np.float64).predict_proba(X)))   # float64 holds it


def test_uint64_label_beyond_int64_is_a_clear_value_error():
    model = classifier()
    X, y = good_batch(model)
    labels = y.astype(np.uint64)
    labels[3] = 2 ** 63
    with pytest.raises(ValueError, match=rf"y: class labels must be in 0..{N_OUT - 1}, got "
                                         rf"{2 ** 63}, beyond int64"):
        model.loss_value(X, labels)
