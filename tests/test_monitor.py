"""GradientMonitor: vanishing gradients in a deep sigmoid net are reported, a shallow ReLU net
with He initialisation is not; records and history hold the per-layer norms."""
import warnings

import numpy as np
import pytest

import fastbp


def _digits_like(rng, n=256, features=16, classes=4):
    X = rng.normal(size=(n, features))
    y = (X[:, :classes].argmax(axis=1)).astype(np.int64)
    return X, y


@pytest.mark.parametrize("every", ["epoch", "step"])
def test_deep_sigmoid_net_has_vanishing_gradients_and_is_reported(every, rng):
    X, y = _digits_like(rng)
    model = fastbp.MLP([16] + [32] * 9 + [4], activation="sigmoid", dtype=np.float64, seed=0)
    monitor = fastbp.GradientMonitor(ratio=100.0, every=every)
    with pytest.warns(fastbp.GradientHealthWarning, match="differ by a factor") as caught:
        history = fastbp.fit(model, X, y, fastbp.SGD(model, lr=0.1), epochs=2, batch_size=64,
                             seed=0, callbacks=[monitor])
    norms = np.array(history["layer_grad_norms"])
    assert norms.shape == (2, 10)
    # the first layer's gradient is orders of magnitude below the last one's
    assert norms[0, -1] / norms[0, 0] > 1e3
    message = str(caught[0].message)
    assert "layer 1" in message and "layer 10" in message
    assert monitor.records and monitor.records[0][2].shape == (10,)
    if every == "step":
        assert len(monitor.records) == 2 * 4 and monitor.records[1][1] == 1
        per_step = history["step_layer_grad_norms"]
        assert [len(epoch) for epoch in per_step] == [4, 4]
        # the epoch means fit records are the means of these per-step norms
        assert np.allclose(np.mean(per_step[1], axis=0), norms[1], rtol=1e-12)
    else:
        assert [r[1] for r in monitor.records] == [None, None]


def test_shallow_relu_net_is_healthy(rng):
    X, y = _digits_like(rng)
    model = fastbp.MLP([16, 64, 4], activation="relu", dtype=np.float32, seed=0)
    monitor = fastbp.GradientMonitor()
    with warnings.catch_warnings():
        warnings.simplefilter("error", fastbp.GradientHealthWarning)
        fastbp.fit(model, X, y, fastbp.SGD(model, lr=0.1, clip_norm=5.0), epochs=3,
                   batch_size=32, seed=0, callbacks=[monitor])
    assert len(monitor.records) == 3


@pytest.mark.filterwarnings("ignore:layer gradient norms differ")
def test_exploding_norms_are_reported(rng):
    X, y = _digits_like(rng)
    model = fastbp.MLP([16, 32, 4], activation="relu", dtype=np.float64, seed=0)
    model.weights[1][...] *= 1e5       # a huge last layer: huge gradients upstream
    monitor = fastbp.GradientMonitor(high=10.0)
    with pytest.warns(fastbp.GradientHealthWarning, match="above 10.*exploding"):
        fastbp.fit(model, X, y, fastbp.SGD(model, lr=1e-9, clip_norm=1.0), epochs=1,
                   batch_size=64, seed=0, callbacks=[monitor])


@pytest.mark.parametrize("kwargs, error", [({"low": 0}, ValueError), ({"high": -1}, ValueError),
                                           ({"low": 10, "high": 1}, ValueError),
                                           ({"ratio": float("nan")}, ValueError),
                                           ({"every": "batch"}, ValueError),
                                           ({"low": "x"}, TypeError)])
def test_bad_monitor_arguments(kwargs, error):
    with pytest.raises(error, match=next(iter(kwargs))):
        fastbp.GradientMonitor(**kwargs)
