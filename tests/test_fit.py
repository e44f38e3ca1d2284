"""fastbp.fit beyond the core loop: validation, metrics, early stopping with restored weights,
callbacks (epoch and step hooks), Ctrl-C, the progress bar."""
import sys
import types
import warnings

import numpy as np
import pytest

import fastbp
from fastbp import training


def blobs(n=240, n_features=6, n_classes=3, seed=0, spread=1.0):
    """Separable-ish Gaussian blobs: float64 X, int labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (n_classes, n_features))
    y = np.arange(n) % n_classes
    X = centres[y] + spread * rng.normal(size=(n, n_features))
    return X, y


def make(sizes=(6, 16, 3), seed=0, lr=0.1, dtype=np.float64, **kw):
    model = fastbp.MLP(list(sizes), dtype=dtype, seed=seed, **kw)
    return model, fastbp.SGD(model, lr=lr, clip_norm=5.0)


def softmax_ce(logits, labels):
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -log_p[np.arange(len(labels)), labels].mean()


def test_history_keys_lengths_and_validation_metrics():
    X, y = blobs()
    Xv, yv = blobs(60, seed=1)
    model, opt = make()
    history = fastbp.fit(model, X, y, opt, epochs=4, batch_size=16, seed=0,
                         validation_data=(Xv, yv))
    assert isinstance(history, dict) and isinstance(history, fastbp.History)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "grad_norm",
                "layer_grad_norms", "samples_per_s", "seconds"):
        assert len(history[key]) == 4, key
    assert history.stop_reason == "completed" and not history.interrupted
    assert history.best_epoch is None
    # The last epoch's validation metrics are those of the final model, computed independently.
    logits = model.forward(Xv)
    assert history["val_loss"][-1] == pytest.approx(softmax_ce(logits, yv), rel=1e-9)
    assert history["val_loss"][-1] == pytest.approx(model.loss_value(Xv, yv), rel=1e-9)
    assert history["val_accuracy"][-1] == np.mean(model.predict(Xv) == yv)
    assert history["accuracy"][-1] == np.mean(model.predict(X) == y)
    assert history["accuracy"][-1] > 0.9  # the blobs are easy
    assert all(s > 0 for s in history["samples_per_s"])


def test_layer_grad_norms_are_the_epoch_means_of_each_steps_norms():
    X, y = blobs()
    sizes = (6, 8, 5, 3)

    class Collect:
        def __init__(self):
            self.per_step = []

        def on_step_end(self, epoch, step, loss, grad_norm, model):
            w = [np.sqrt(np.sum(dw.astype(np.float64) ** 2) + np.sum(db.astype(np.float64) ** 2))
                 for dw, db in zip(model.weight_grads, model.bias_grads)]
            self.per_step.append((epoch, w))

    model, opt = make(sizes=sizes)
    collect = Collect()                       # a step hook: fit runs step by step
    slow = fastbp.fit(model, X, y, opt, epochs=2, batch_size=32, seed=0, callbacks=[collect])
    for epoch in range(2):
        expected = np.mean([w for e, w in collect.per_step if e == epoch], axis=0)
        np.testing.assert_allclose(slow["layer_grad_norms"][epoch], expected, rtol=1e-6)
    model, opt = make(sizes=sizes)            # no hooks: whole compiled epochs, same figures
    fast = fastbp.fit(model, X, y, opt, epochs=2, batch_size=32, seed=0)
    np.testing.assert_allclose(fast["layer_grad_norms"], slow["layer_grad_norms"], rtol=1e-12)


def test_validation_fraction_holds_rows_out():
    X, y = blobs(200)
    model, opt = make()
    seen = []

    class Count:
        def on_step_end(self, epoch, step, loss, grad_norm, model):
            seen.append(step)
    fastbp.fit(model, X, y, opt, epochs=1, batch_size=10, seed=3, validation_fraction=0.25,
               callbacks=[Count()])
    assert len(seen) == 15  # 150 training rows in batches of 10
    with pytest.raises(ValueError, match="one or the other"):
        fastbp.fit(model, X, y, opt, epochs=1, batch_size=10, validation_fraction=0.2,
                   validation_data=(X, y))
    for bad in (0, 1, 1.5, -0.1):
        with pytest.raises(ValueError, match="validation_fraction"):
            fastbp.fit(model, X, y, opt, epochs=1, batch_size=10, validation_fraction=bad)
    with pytest.raises(ValueError, match="features"):
        fastbp.fit(model, X, y, opt, epochs=1, batch_size=10,
                   validation_data=(X[:, :3], y))


def fit_against_shifted_labels(early_stopping, interrupt_after=None):
    """fit with early stopping where validation labels are the training labels shifted by one
    class: the better the model fits the training rows, the worse its validation loss, so the
    best epoch is an early one. Ctrl-C is simulated after epoch interrupt_after, if given.
    Returns (model, history, a copy of the parameters after each epoch)."""
    X, y = blobs(150)
    model, opt = make(lr=0.05)
    snapshots = []

    class Snap:
        def on_epoch_end(self, epoch, history, model):
            snapshots.append(model.params.copy())
            if epoch == interrupt_after:
                raise KeyboardInterrupt

    history = fastbp.fit(model, X, y, opt, epochs=40, batch_size=16, seed=0,
                         validation_data=(X, (y + 1) % 3), early_stopping=early_stopping,
                         callbacks=[Snap()])
    return model, history, snapshots


def test_early_stopping_restores_the_best_epoch_weights():
    model, history, snapshots = fit_against_shifted_labels(early_stopping=3)
    best = int(np.argmin(history["val_loss"]))
    assert history.stop_reason == "early_stopping"
    assert history.best_epoch == best
    assert history.n_epochs == best + 4  # three epochs without improvement, then stop
    np.testing.assert_array_equal(model.params, snapshots[best])
    assert not np.array_equal(model.params, snapshots[-1])


def test_early_stopping_on_accuracy_and_without_validation():
    X, y = blobs()
    model, opt = make()
    history = fastbp.fit(model, X, y, opt, epochs=30, batch_size=16, seed=0,
                         validation_fraction=0.2, early_stopping=2, monitor="val_accuracy")
    assert history.best_epoch == int(np.argmax(history["val_accuracy"]))
    with pytest.raises(ValueError, match="needs validation rows"):
        fastbp.fit(model, X, y, opt, epochs=2, batch_size=16, early_stopping=2)
    with pytest.raises(ValueError, match="monitor"):
        fastbp.fit(model, X, y, opt, epochs=2, batch_size=16, validation_fraction=0.2,
                   early_stopping=2, monitor="loss")


def test_step_hooks_do_not_change_the_result():
    X, y = blobs(203)
    a, opt_a = make(seed=5)
    b, opt_b = make(seed=5)
    calls = []

    class Steps:
        def on_step_end(self, epoch, step, loss, grad_norm, model):
            calls.append((epoch, step, loss, grad_norm))

    ha = fastbp.fit(a, X, y, opt_a, epochs=3, batch_size=10, seed=1)
    hb = fastbp.fit(b, X, y, opt_b, epochs=3, batch_size=10, seed=1, callbacks=[Steps()])
    np.testing.assert_array_equal(a.params, b.params)
    np.testing.assert_allclose(ha["loss"], hb["loss"], rtol=1e-13)
    np.testing.assert_allclose(ha["grad_norm"], hb["grad_norm"], rtol=1e-13)
    assert len(calls) == 3 * 21
    assert [c[:2] for c in calls[:22]] == [(0, s) for s in range(21)] + [(1, 0)]
    epoch0 = [c for c in calls if c[0] == 0]
    sizes = [10] * 20 + [3]
    assert hb["loss"][0] == pytest.approx(np.dot([c[2] for c in epoch0], sizes) / 203)
    assert hb["grad_norm"][0] == pytest.approx(np.mean([c[3] for c in epoch0]))


def test_callbacks_can_stop_after_a_step_or_an_epoch():
    X, y = blobs()
    order = []

    class Log:
        def on_train_begin(self, model, history):
            order.append("begin")

        def on_epoch_end(self, epoch, history, model):
            order.append(f"epoch {epoch}")
            return epoch == 2

        def on_train_end(self, model, history):
            order.append("end")

    model, opt = make()
    history = fastbp.fit(model, X, y, opt, epochs=10, batch_size=16, seed=0, callbacks=[Log()])
    assert order == ["begin", "epoch 0", "epoch 1", "epoch 2", "end"]
    assert history.stop_reason == "callback" and history.n_epochs == 3

    class StopAtStep:
        def on_step_end(self, epoch, step, loss, grad_norm, model):
            return epoch == 1 and step == 4

    model, opt = make()
    history = fastbp.fit(model, X, y, opt, epochs=10, batch_size=16, seed=0,
                         callbacks=[StopAtStep()])
    assert history.n_epochs == 2 and history.stop_reason == "callback"
    # The stopped epoch's mean covers its 5 steps only; the accuracy is measured after them.
    assert np.isfinite(history["loss"][1])

    with pytest.raises(TypeError, match="none of the methods"):
        fastbp.fit(model, X, y, opt, epochs=1, batch_size=16, callbacks=[object()])


@pytest.mark.parametrize("where", ["step", "epoch"])
def test_keyboard_interrupt_stops_cleanly(where):
    X, y = blobs()
    model, opt = make()
    captured = {}

    class CtrlC:
        def on_step_end(self, epoch, step, loss, grad_norm, model):
            if where == "step" and epoch == 2 and step == 3:
                captured["params"] = model.params.copy()
                raise KeyboardInterrupt

        def on_epoch_end(self, epoch, history, model):
            if where == "epoch" and epoch == 2:
                captured["params"] = model.params.copy()
                raise KeyboardInterrupt

        def on_train_end(self, model, history):
            captured["ended"] = True

    history = fastbp.fit(model, X, y, opt, epochs=10, batch_size=16, seed=0,
                         validation_fraction=0.2, callbacks=[CtrlC()])
    assert history.interrupted and history.stop_reason == "interrupted"
    assert captured["ended"]
    complete = 2 if where == "step" else 3
    assert {len(v) for v in history.values()} == {complete}
    # The model is exactly what it was after the last completed step.
    np.testing.assert_array_equal(model.params, captured["params"])
    assert np.all(np.isfinite(model.params))


def test_interrupt_between_two_appends_drops_the_half_recorded_epoch(monkeypatch):
    class Trap(list):
        def append(self, value):
            if len(self) == 2:  # the third epoch's validation loss
                raise KeyboardInterrupt
            super().append(value)

    class TrappedHistory(fastbp.History):
        def __setitem__(self, key, value):
            super().__setitem__(key, Trap(value) if key == "val_loss" else value)

    monkeypatch.setattr(training, "History", TrappedHistory)
    X, y = blobs()
    model, opt = make()
    history = fastbp.fit(model, X, y, opt, epochs=10, batch_size=16, seed=0,
                         validation_fraction=0.2)
    assert history.interrupted
    assert {len(v) for v in history.values()} == {2}


def test_interrupt_with_early_stopping_restores_best():
    model, history, snapshots = fit_against_shifted_labels(early_stopping=100, interrupt_after=5)
    assert history.interrupted
    np.testing.assert_array_equal(model.params, snapshots[history.best_epoch])


def test_mse_accuracy_for_one_hot_and_binary_targets():
    X, y = blobs()
    onehot = np.eye(3)[y]
    model, opt = make(loss="mse", lr=0.05)
    history = fastbp.fit(model, X, onehot, opt, epochs=3, batch_size=16, seed=0,
                         validation_data=(X, onehot))
    assert history["val_accuracy"][-1] == np.mean(model.predict(X).argmax(axis=1) == y)
    Xb = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=float)
    yb = np.array([0, 1, 1, 0], dtype=float)
    model = fastbp.MLP([2, 4, 1], activation="tanh", output_activation="sigmoid", loss="mse",
                       dtype=np.float64, seed=0)
    history = fastbp.fit(model, Xb, yb, fastbp.SGD(model, lr=0.5), epochs=2, batch_size=4)
    assert history["accuracy"][-1] == np.mean((model.predict(Xb)[:, 0] > 0.5) == (yb > 0.5))
    # Real-valued targets: no accuracy.
    model, opt = make(sizes=(6, 4, 2), loss="mse")
    history = fastbp.fit(model, X, np.random.default_rng(0).normal(size=(240, 2)), opt,
                         epochs=1, batch_size=16)
    assert "accuracy" not in history


def bce_loss(logits, target):
    """scikit-learn's binary_log_loss of sigmoid(logits), written out."""
    p = 1.0 / (1.0 + np.exp(-logits))
    return -(target * np.log(p) + (1 - target) * np.log(1 - p)).sum() / len(target)


def test_binary_cross_entropy_metrics_for_multilabel_one_hot_and_binary_targets():
    """Multilabel 0/1 targets: accuracy is the share of rows with every label right (logits >
    0, as predict); val_loss the mean binary cross-entropy, without the L2 penalty (which the
    training loss, the objective, includes). One-hot targets: the argmax. One output: logit >
    0 against the target."""
    X, labels = blobs()
    rng = np.random.default_rng(4)
    y = np.stack([labels == 0, labels != 1, rng.random(240) < 0.5], axis=1).astype(float)
    model, opt = make(loss="binary_cross_entropy", lr=0.3, l2=0.5)
    history = fastbp.fit(model, X, y, opt, epochs=3, batch_size=16, seed=0,
                         validation_data=(X[:50], y[:50]))
    predicted = model.predict(X[:50])
    assert history["val_accuracy"][-1] == np.mean(np.all(predicted == y[:50], axis=1))
    assert 0.2 < history["val_accuracy"][-1] < 1   # the random column: not every row right
    data_loss = bce_loss(model.forward(X[:50]), y[:50])
    assert history["val_loss"][-1] == pytest.approx(data_loss, rel=1e-9)
    squares = sum((w ** 2).sum() for w in model.weights)
    assert model.loss_value(X[:50], y[:50]) == pytest.approx(data_loss + 0.5 / 100 * squares,
                                                             rel=1e-12)

    onehot = np.eye(3)[labels]
    model, opt = make(loss="binary_cross_entropy", lr=0.3)
    history = fastbp.fit(model, X, onehot, opt, epochs=2, batch_size=16, seed=0)
    assert history["accuracy"][-1] == np.mean(model.forward(X).argmax(axis=1) == labels)

    model, opt = make(sizes=(6, 4, 1), loss="binary_cross_entropy", lr=0.3)
    yb = (labels == 2).astype(float)
    history = fastbp.fit(model, X, yb, opt, epochs=2, batch_size=16, seed=0)
    assert history["accuracy"][-1] == np.mean(model.predict(X)[:, 0] == yb)
    assert history["accuracy"][-1] > 0.8


class StepCounter:
    def on_step_end(self, epoch, step, loss, grad_norm, model):
        pass


@pytest.mark.parametrize("loss", fastbp.model.LOSSES)
def test_l2_in_fit_is_the_one_batch_objective(loss, rng):
    """One step of fit over the whole set (compiled chunk, per-step callback, gradient hook)
    is SGD on the objective mean loss + l2 / (2 N) sum ||W||^2, by the naive reference; the
    history's loss is that objective."""
    import naive
    from helpers import make_targets, reference_for
    X = rng.normal(size=(37, 6))
    y = make_targets(loss, 37, 3, rng)
    results = []
    for options in ({}, {"callbacks": [StepCounter()]}, {"grad_hook": lambda m: None}):
        model = fastbp.MLP([6, 7, 3], activation="tanh", loss=loss, dtype=np.float64, seed=2,
                           l2=1.7)
        start = model.params.copy()
        history = fastbp.fit(model, X, y, fastbp.SGD(model, lr=0.1), epochs=1, batch_size=37,
                             shuffle=False, **options)
        results.append((history["loss"][0], model.params.copy()))
    ref_loss, ref_grads = reference_for(model).loss_and_grad(start, X, y)
    assert results[0][0] == pytest.approx(ref_loss, rel=1e-12)
    assert naive.normwise_error(results[0][1], start - 0.1 * ref_grads) < 1e-13
    for loss_value, params in results[1:]:
        assert loss_value == results[0][0] and np.array_equal(params, results[0][1])


def test_metrics_rows_limits_the_training_sample():
    X, y = blobs(300)
    model, opt = make()
    history = fastbp.fit(model, X, y, opt, epochs=1, batch_size=16, seed=0, metrics_rows=7)
    # Seven rows: accuracy is a multiple of 1/7.
    assert round(history["accuracy"][0] * 7, 9) == round(history["accuracy"][0] * 7)


def test_no_metrics_rows_skip_the_training_accuracy_and_change_no_step():
    X, y = blobs(300)
    runs = []
    for rows in (0, 10000):
        model, opt = make()
        history = fastbp.fit(model, X, y, opt, epochs=2, batch_size=16, seed=0,
                             metrics_rows=rows)
        runs.append((model.params.copy(), history))
    assert "accuracy" not in runs[0][1] and len(runs[1][1]["accuracy"]) == 2
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert runs[0][1]["loss"] == runs[1][1]["loss"]


def test_divergence_error_still_raised():
    X, y = blobs()
    model = fastbp.MLP([6, 16, 3], dtype=np.float32, seed=0)
    with pytest.raises(fastbp.DivergenceError, match="epoch .*step"):
        fastbp.fit(model, X * 1e30, y, fastbp.SGD(model, lr=1e30), epochs=5, batch_size=16)


class FakeBar:
    instances = []

    def __init__(self, **kwargs):
        self.kwargs, self.n, self.closed, self.postfix = kwargs, 0, False, None
        FakeBar.instances.append(self)

    def update(self, n):
        self.n += n

    def set_postfix_str(self, text, refresh=True):
        self.postfix = text

    def close(self):
        self.closed = True


def test_progress_bar_with_tqdm(monkeypatch):
    FakeBar.instances = []
    monkeypatch.setitem(sys.modules, "tqdm.auto", types.SimpleNamespace(tqdm=FakeBar))
    X, y = blobs(500)
    model, opt = make()
    fastbp.fit(model, X, y, opt, epochs=2, batch_size=8, seed=0, progress=True)
    assert len(FakeBar.instances) == 2
    for bar in FakeBar.instances:
        assert bar.closed and bar.n == 500 and bar.kwargs["total"] == 500
        assert bar.postfix.startswith("loss ")


def test_progress_without_tqdm_warns_once_and_trains(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import fails
    monkeypatch.setattr(training, "_warned_no_tqdm", False)
    X, y = blobs()
    model, opt = make()
    with pytest.warns(UserWarning, match="tqdm"):
        history = fastbp.fit(model, X, y, opt, epochs=1, batch_size=16, progress=True)
    assert history.n_epochs == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fastbp.fit(model, X, y, opt, epochs=1, batch_size=16, progress=True)


def test_float32_digits_with_validation_learns():
    ds = fastbp.data.load("digits", seed=0)
    model = fastbp.MLP([64, 64, 10], seed=0)
    opt = fastbp.SGD(model, lr=0.1, clip_norm=5.0)
    history = fastbp.fit(model, ds.X_train, ds.y_train, opt, epochs=8, batch_size=32, seed=0,
                         validation_data=(ds.X_val, ds.y_val))
    assert history["val_accuracy"][-1] > 0.9
    assert history["loss"][-1] < history["loss"][0]


def test_an_interrupt_keeps_the_complete_epochs_whatever_callbacks_store():
    """A callback that adds its own entries (a string, an empty list) to the history must not
    turn Ctrl-C into an error or drop the completed epochs."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(64, 5)), rng.integers(0, 3, 64)
    model = fastbp.MLP([5, 8, 3], dtype=np.float64, seed=0)

    class Interrupting:
        def on_train_begin(self, model, history):
            history["note"] = "mine"
            history["empty"] = []

        def on_epoch_end(self, epoch, history, model):
            if epoch == 2:
                raise KeyboardInterrupt

    history = fastbp.fit(model, X, y, fastbp.SGD(model, lr=0.1), epochs=5, batch_size=16,
                         callbacks=[Interrupting()])
    assert history.interrupted and history.n_epochs == 3 and len(history["grad_norm"]) == 3
    assert history["note"] == "mine" and history["empty"] == []
