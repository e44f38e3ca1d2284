"""The optimizer protocol (fastbp.optim) as fit uses it, and fit's grad_hook between the two
stages of a step: what fit refuses, a pure-Python optimizer on the slow path, hooks that do
nothing, scale, accumulate, skip or raise, and SGD's step / train_step / update_spec."""
import math

import numpy as np
import pytest

import fastbp
import naive
from fastbp import kernels
from helpers import blobs


SIZES = [5, 12, 3]


def model_of(dtype=np.float64, seed=3, sizes=SIZES):
    return fastbp.MLP(list(sizes), activation="tanh", dtype=dtype, seed=seed)


def snapshot(model):
    return model.params.copy(), model.grads.copy()


def assert_unchanged(model, before):
    params, grads = before
    assert np.array_equal(model.params, params)
    assert np.array_equal(model.grads, grads)


class NumpySGD:
    """The protocol's minimum: ``model`` and ``step()``; plain SGD written in NumPy."""

    def __init__(self, model, lr):
        self.model, self.lr, self.steps = model, lr, 0

    def step(self):
        g = self.model.grads
        norm = math.sqrt(float(np.dot(g.astype(np.float64), g.astype(np.float64))))
        if not math.isfinite(norm):
            raise FloatingPointError(f"the gradient norm is {norm}")
        self.model.params -= self.lr * g
        self.steps += 1
        return norm


# -- what fit refuses -------------------------------------------------------------------------


class OnlyStep:
    def step(self):
        return 0.0


class OnlyModel:
    def __init__(self, model):
        self.model = model


class StepNotCallable:
    def __init__(self, model):
        self.model, self.step = model, 1.0


@pytest.mark.parametrize("make_optimizer, lacks, has", [
    pytest.param(lambda m: OnlyModel(m), ["a step() method"], "a model attribute", id="no-step"),
    pytest.param(lambda m: StepNotCallable(m), ["a step() method"], "a model attribute",
                 id="step-not-callable"),
    pytest.param(lambda m: OnlyStep(), ["a model attribute"], "a step() method", id="no-model"),
    pytest.param(lambda m: object(), ["a model attribute", "a step() method"], None, id="both"),
])
def test_fit_refuses_an_object_outside_the_protocol_naming_what_it_lacks(make_optimizer, lacks,
                                                                           has):
    X, y = blobs()
    model = model_of()
    model.loss_and_grad(X[:8], y[:8])
    before = snapshot(model)
    optimizer = make_optimizer(model)
    with pytest.raises(TypeError, match="optimizer") as info:
        fastbp.fit(model, X, y, optimizer, epochs=1, batch_size=8)
    message = str(info.value)
    assert type(optimizer).__name__ in message
    for what in lacks:
        assert what in message
    if has is not None:
        assert has not in message
    assert_unchanged(model, before)


@pytest.mark.parametrize("make_optimizer", [
    pytest.param(lambda other: fastbp.SGD(other, lr=0.1), id="SGD"),
    pytest.param(lambda other: NumpySGD(other, lr=0.1), id="numpy"),
])
def test_fit_refuses_an_optimizer_built_for_another_model(make_optimizer):
    X, y = blobs()
    model, twin = model_of(), model_of()  # equal parameters, another object
    model.loss_and_grad(X[:8], y[:8])
    before, twin_before = snapshot(model), snapshot(twin)
    with pytest.raises(ValueError, match="another model"):
        fastbp.fit(model, X, y, make_optimizer(twin), epochs=1, batch_size=8)
    assert_unchanged(model, before)
    assert_unchanged(twin, twin_before)


@pytest.mark.parametrize("hook", [3, "hook", object()])
def test_fit_refuses_a_grad_hook_that_is_not_callable(hook):
    X, y = blobs()
    model = model_of()
    model.loss_and_grad(X[:8], y[:8])
    before = snapshot(model)
    with pytest.raises(TypeError, match="grad_hook"):
        fastbp.fit(model, X, y, fastbp.SGD(model, lr=0.1), epochs=1, batch_size=8,
                   grad_hook=hook)
    assert_unchanged(model, before)


# -- a pure-Python optimizer --------------------------------------------------------------------


def test_pure_python_optimizer_trains_like_sgd_without_clipping():
    X, y = blobs(101)  # the last batch of each epoch is smaller
    a, b = model_of(), model_of()
    ours = NumpySGD(a, lr=0.1)
    ha = fastbp.fit(a, X, y, ours, epochs=3, batch_size=8, seed=11)
    hb = fastbp.fit(b, X, y, fastbp.SGD(b, lr=0.1), epochs=3, batch_size=8, seed=11)
    assert ours.steps == 3 * 13  # step() ran once per batch: the slow path
    assert not np.array_equal(a.params, model_of().params)
    assert naive.normwise_error(a.params, b.params) < 1e-12
    np.testing.assert_allclose(ha["loss"], hb["loss"], rtol=1e-12)
    np.testing.assert_allclose(ha["grad_norm"], hb["grad_norm"], rtol=1e-12)
    np.testing.assert_allclose(ha["layer_grad_norms"], hb["layer_grad_norms"], rtol=1e-12)
    assert ha["accuracy"][-1] > 0.9


def test_pure_python_optimizer_refusing_a_step_stops_fit_with_divergence_error():
    X, y = blobs()
    model = model_of()

    class RefuseThird(NumpySGD):
        def step(self):
            if self.steps == 2:
                self.before = model.params.copy()
                raise FloatingPointError("refused")
            return super().step()

    opt = RefuseThird(model, lr=0.1)
    with pytest.raises(fastbp.DivergenceError, match="epoch 1, step 3: refused"):
        fastbp.fit(model, X, y, opt, epochs=2, batch_size=8, seed=0)
    assert np.array_equal(model.params, opt.before)


# -- grad_hook ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_hook_that_does_nothing_changes_nothing(dtype):
    """The two-stage path (gradients, hook, then the compiled update) against the fast path
    (compiled chunks of fused steps), bit for bit; clipping active in some steps."""
    X, y = blobs(203)
    a, b = model_of(dtype), model_of(dtype)
    calls = []

    def hook(model):
        calls.append(model)

    ha = fastbp.fit(a, X, y, fastbp.SGD(a, lr=0.2, clip_norm=0.5), epochs=3, batch_size=10,
                    seed=1, grad_hook=hook)
    hb = fastbp.fit(b, X, y, fastbp.SGD(b, lr=0.2, clip_norm=0.5), epochs=3, batch_size=10,
                    seed=1)
    assert len(calls) == 3 * 21 and all(m is a for m in calls)
    assert np.array_equal(a.params, b.params)
    assert np.array_equal(a.grads, b.grads)
    for key in ("loss", "grad_norm", "layer_grad_norms"):
        np.testing.assert_allclose(ha[key], hb[key], rtol=1e-12, err_msg=key)
    assert max(hb["grad_norm"]) > 0.5  # clipping was active


def test_a_hook_that_halves_the_gradients_equals_halving_lr():
    X, y = blobs(101)
    a, b = model_of(), model_of()

    def halve(model):
        model.grads *= 0.5

    ha = fastbp.fit(a, X, y, fastbp.SGD(a, lr=0.2), epochs=3, batch_size=8, seed=2,
                    grad_hook=halve)
    hb = fastbp.fit(b, X, y, fastbp.SGD(b, lr=0.1), epochs=3, batch_size=8, seed=2)
    assert naive.normwise_error(a.params, b.params) < 1e-12
    np.testing.assert_allclose(ha["loss"], hb["loss"], rtol=1e-12)
    # The history's norm is that of the gradients the update saw: after the hook.
    np.testing.assert_allclose(ha["grad_norm"], 0.5 * np.asarray(hb["grad_norm"]), rtol=1e-12)


class Accumulate:
    """Gradient accumulation over k batches: sums grads / k into a buffer and skips the update
    (False) until the k-th batch, which writes the mean into model.grads and updates."""

    def __init__(self, k):
        self.k, self.calls, self.buffer = k, 0, None

    def __call__(self, model):
        if self.buffer is None:
            self.buffer = np.zeros_like(model.grads)
        self.buffer += model.grads / self.k
        self.calls += 1
        if self.calls % self.k:
            return False
        np.copyto(model.grads, self.buffer)
        self.buffer[...] = 0
        return True


@pytest.mark.parametrize("clip_norm", [None, 0.4])
def test_gradient_accumulation_equals_a_doubled_batch(clip_norm):
    X, y = blobs(96)  # 12 batches of 8, 6 of 16: the pairs never straddle two epochs
    a, b = model_of(), model_of()
    hook = Accumulate(2)
    ha = fastbp.fit(a, X, y, fastbp.SGD(a, lr=0.3, clip_norm=clip_norm), epochs=3,
                    batch_size=8, shuffle=False, grad_hook=hook)
    hb = fastbp.fit(b, X, y, fastbp.SGD(b, lr=0.3, clip_norm=clip_norm), epochs=3,
                    batch_size=16, shuffle=False)
    assert hook.calls == 3 * 12
    assert naive.normwise_error(a.params, b.params) < 1e-12
    # The mean loss over the epoch's rows, and the mean norm over the updates actually made.
    np.testing.assert_allclose(ha["loss"], hb["loss"], rtol=1e-12)
    np.testing.assert_allclose(ha["grad_norm"], hb["grad_norm"], rtol=1e-12)
    np.testing.assert_allclose(ha["layer_grad_norms"], hb["layer_grad_norms"], rtol=1e-12)
    if clip_norm is not None:
        assert max(hb["grad_norm"]) > clip_norm  # clipping was active


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("make_optimizer", [
    pytest.param(lambda m: fastbp.SGD(m, lr=0.3, clip_norm=0.5), id="SGD"),
    pytest.param(lambda m: NumpySGD(m, lr=0.3), id="numpy"),
])
def test_a_hook_that_raises_stops_fit_before_that_steps_update(make_optimizer):
    X, y = blobs()
    model = model_of()
    seen = []

    def hook(model):
        seen.append(model.params.copy())
        if len(seen) == 3:
            model.grads *= 100.0  # whatever it did to the gradients is not applied
            raise Boom("third call")

    with pytest.raises(Boom, match="third call"):
        fastbp.fit(model, X, y, make_optimizer(model), epochs=2, batch_size=8, shuffle=False,
                   grad_hook=hook)
    assert len(seen) == 3
    assert not np.array_equal(seen[1], seen[2])  # step 2 was applied ...
    assert np.array_equal(model.params, seen[2])  # ... step 3 was not
    # The same as two steps outside fit.
    twin = model_of()
    twin_opt = make_optimizer(twin)
    for start in (0, 8):
        twin.loss_and_grad(X[start:start + 8], y[start:start + 8])
        twin_opt.step()
    assert np.array_equal(model.params, twin.params)


def test_history_is_filled_with_a_hook():
    X, y = blobs(101)
    model = model_of()
    history = fastbp.fit(model, X, y, fastbp.SGD(model, lr=0.2), epochs=3, batch_size=8,
                         seed=0, grad_hook=Accumulate(2), validation_data=blobs(30, seed=1))
    for key in ("loss", "grad_norm", "layer_grad_norms", "accuracy", "val_loss",
                "val_accuracy", "samples_per_s", "seconds"):
        assert len(history[key]) == 3, key
    assert all(math.isfinite(v) and v > 0 for v in history["loss"] + history["grad_norm"])
    assert all(len(v) == 2 and all(x > 0 for x in v) for v in history["layer_grad_norms"])
    assert history["loss"][-1] < history["loss"][0]


def test_a_hook_that_skips_every_update_leaves_the_params():
    X, y = blobs()
    model = model_of()
    params = model.params.copy()
    history = fastbp.fit(model, X, y, fastbp.SGD(model, lr=0.2), epochs=2, batch_size=8,
                         seed=0, grad_hook=lambda m: False)
    assert np.array_equal(model.params, params)
    assert len(history["loss"]) == 2 and history["loss"][0] == pytest.approx(history["loss"][1])
    assert history["loss"][0] == pytest.approx(model.loss_value(X, y), rel=1e-12)
    assert all(math.isnan(v) for v in history["grad_norm"])


# -- SGD: step, train_step and update_spec -----------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("clip_norm", [None, 0.3])
def test_sgd_step_after_loss_and_grad_equals_train_step(dtype, clip_norm, rng):
    a, b = model_of(dtype), model_of(dtype)
    opt_a = fastbp.SGD(a, lr=0.3, clip_norm=clip_norm)
    opt_b = fastbp.SGD(b, lr=0.3, clip_norm=clip_norm)
    for _ in range(4):
        X = rng.normal(size=(12, SIZES[0])).astype(dtype)
        y = rng.integers(0, SIZES[-1], size=12)
        loss_a = opt_a.train_step(X, y)
        loss_b = b.loss_and_grad(X, y)
        norm_b = opt_b.step()
        assert isinstance(norm_b, float) and norm_b > 0
        assert loss_a == loss_b
        assert np.array_equal(a.params, b.params)
        assert np.array_equal(a.grads, b.grads)
        assert np.array_equal(a.grad_norms(), b.grad_norms())


def test_update_spec_follows_lr_and_clip_norm():
    model = model_of()
    opt = fastbp.SGD(model, lr=0.3)
    spec = opt.update_spec()
    assert isinstance(spec, kernels.Update)
    assert spec.kind == kernels.SGD_KIND
    assert spec.hyper.dtype == np.float64
    lr_and_clip = [kernels.update.LR, kernels.update.CLIP_NORM]
    assert list(spec.hyper[lr_and_clip]) == [0.3, math.inf]
    assert spec.state.shape[0] == 0 and spec.state.dtype == model.dtype
    opt.lr, opt.clip_norm = 0.05, 0.7
    assert list(opt.update_spec().hyper[lr_and_clip]) == [0.05, 0.7]
    opt.clip_norm = None
    assert list(opt.update_spec().hyper[lr_and_clip]) == [0.05, math.inf]


@pytest.mark.parametrize("how", ["step", "train_step"])
def test_changed_lr_and_clip_norm_are_the_ones_applied(how, rng):
    a, b = model_of(), model_of()
    changed = fastbp.SGD(a, lr=0.9)
    changed.update_spec()  # a spec taken before the change must not pin the old values
    changed.lr, changed.clip_norm = 0.2, 0.1
    fresh = fastbp.SGD(b, lr=0.2, clip_norm=0.1)
    X = rng.normal(size=(16, SIZES[0]))
    y = rng.integers(0, SIZES[-1], size=16)
    for model, opt in ((a, changed), (b, fresh)):
        if how == "step":
            model.loss_and_grad(X, y)
            norm = opt.step()
        else:
            opt.train_step(X, y)
            norm = math.sqrt(float(model.grads @ model.grads))
    assert norm > 0.1  # clipping active
    assert np.array_equal(a.params, b.params)


def test_fit_reads_lr_and_clip_norm_changed_between_epochs():
    """A schedule in on_epoch_end (the fast path, compiled chunks) is the same as fit called
    once per epoch with the values set in between."""
    X, y = blobs(96)
    schedule = [(0.3, None), (0.15, 1.0), (0.05, 0.2)]
    a, b = model_of(), model_of()
    opt_a = fastbp.SGD(a, lr=schedule[0][0], clip_norm=schedule[0][1])

    class Schedule:
        def on_epoch_end(self, epoch, history, model):
            if epoch + 1 < len(schedule):
                opt_a.lr, opt_a.clip_norm = schedule[epoch + 1]

    ha = fastbp.fit(a, X, y, opt_a, epochs=3, batch_size=8, shuffle=False,
                    callbacks=[Schedule()])
    opt_b = fastbp.SGD(b, lr=1.0)
    norms = []
    for lr, clip_norm in schedule:
        opt_b.lr, opt_b.clip_norm = lr, clip_norm
        norms += fastbp.fit(b, X, y, opt_b, epochs=1, batch_size=8, shuffle=False)["grad_norm"]
    assert np.array_equal(a.params, b.params)
    np.testing.assert_allclose(ha["grad_norm"], norms, rtol=1e-14)


def test_a_hook_raising_floating_point_error_is_not_called_divergence(rng):
    """The hook's own FloatingPointError passes through fit as it was raised."""
    model = fastbp.MLP([6, 5, 3], seed=0)
    X, y = rng.normal(size=(20, 6)), rng.integers(0, 3, 20)

    class Mine(FloatingPointError):
        pass

    def hook(m):
        raise Mine("from the hook")
    with pytest.raises(Mine, match="from the hook"):
        fastbp.fit(model, X, y, fastbp.SGD(model, lr=0.1), epochs=1, batch_size=5,
                   grad_hook=hook)


def test_an_update_spec_of_an_unknown_kind_is_refused(rng):
    model = fastbp.MLP([6, 5, 3], seed=0)
    before = model.params.copy()

    class Odd(fastbp.SGD):
        def update_spec(self):
            spec = super().update_spec()
            return spec._replace(kind=99)
    with pytest.raises(TypeError, match="update_spec"):
        fastbp.fit(model, rng.normal(size=(20, 6)), rng.integers(0, 3, 20),
                   Odd(model, lr=0.1), epochs=1, batch_size=5)
    assert np.array_equal(model.params, before)


def test_layer_grad_norms_are_nan_when_a_hook_skips_every_update(rng):
    model = fastbp.MLP([6, 5, 3], seed=0)
    history = fastbp.fit(model, rng.normal(size=(20, 6)), rng.integers(0, 3, 20),
                         fastbp.SGD(model, lr=0.1), epochs=1, batch_size=5,
                         grad_hook=lambda m: False)
    assert np.isnan(history["grad_norm"][0])
    assert all(np.isnan(v) for v in history["layer_grad_norms"][0])
