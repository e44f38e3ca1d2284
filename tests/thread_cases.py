"""What tests/test_threads.py's threads train: data, a model and one thread's fit (imported by
the tests and by the scripts they run in a fresh interpreter)."""
import numpy as np

import fastbp

rng = np.random.default_rng(0)
X = rng.normal(size=(2000, 20)).astype(np.float32)
y = rng.integers(0, 3, size=2000)
EPOCHS, BATCH = 20, 50   # 800 steps: fits long enough to overlap when started together


def new_model(seed=0):
    model = fastbp.MLP([20, 32, 3], seed=seed)
    return model, fastbp.Adam(model, lr=1e-3)


def train(model, opt, **kwargs):
    return fastbp.fit(model, X, y, opt, epochs=EPOCHS, batch_size=BATCH, seed=1, **kwargs)
