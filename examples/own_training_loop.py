"""A training loop written in your own @njit code over fastbp's kernels.

    python examples/own_training_loop.py

Trains the shipped digits with plain SGD in a loop of one's own (`train`), then an ensemble of
networks side by side, one per thread, each with its own parameters, gradients and Workspace
(`train_ensemble`). Both functions are cached (cache=True): a second run loads them.

What the kernels need (see fastbp.kernels and the README's kernel table):
- `make_net(sizes, activations, capacity, loss=...)` returns `(net, acts_size)`: `activations`
  holds one code per layer, the output layer's included; `capacity` is the largest batch the
  buffers hold.
- `make_workspace(net, acts_size, dtype)` allocates the buffers one thread's passes write: a
  Workspace each for passes that run at the same time.
- Class labels are int64; X and the parameters share one float dtype; X's rows are
  C-contiguous. A kernel refuses arguments it cannot use (ValueError, TypeError) before it
  writes anything; inside a prange body, though, Numba drops what a called function raises, so
  such a call just returns: call a kernel once outside the loop to check its arguments.
- The kernels open parallel loops of their own. Inside your prange they run nested: under
  Numba's OpenMP and TBB threading layers as they do, under its workqueue layer (which cannot
  nest loops) each on its own thread (fastbp runs a nested loop there serially).
"""
import time

import numpy as np
from numba import njit, prange

import fastbp
from fastbp import kernels


@njit(cache=True)
def train(params, grads, work, X, y, net, lr, epochs, batch):
    """Plain SGD over X in order, batch rows a step; returns each epoch's mean loss."""
    n_steps = X.shape[0] // batch
    losses = np.empty(epochs)
    for epoch in range(epochs):
        total = 0.0
        for step in range(n_steps):
            rows = slice(step * batch, (step + 1) * batch)
            total += kernels.mlp_loss_and_grad(grads, work, params, X[rows], y[rows], net)
            kernels.sgd_update(params, grads, lr)
        losses[epoch] = total / n_steps
    return losses


@njit(cache=True, parallel=True)
def train_ensemble(params, grads, acts, deltas, row_losses, layer_sq, partials, X, y, net, lr,
                   epochs, batch):
    """train for each member (a row of params), members in parallel: each thread builds its
    member's Workspace from that member's rows of the stacked buffers."""
    for member in prange(params.shape[0]):
        work = kernels.Workspace(acts[member], deltas[member], row_losses[member],
                                 layer_sq[member], partials[member])
        train(params[member], grads[member], work, X, y, net, lr, epochs, batch)


def accuracy(model, params, data):
    model.params = params
    return (model.predict(data.X_test) == data.y_test).mean()


def main(epochs=20, members=4, batch=32):
    data = fastbp.data.load("digits")   # float32, standardised, int64 labels
    sizes = [64, 128, 10]
    codes = [kernels.RELU, kernels.IDENTITY]   # one per layer: the output's included
    net, acts_size = kernels.make_net(sizes, codes, batch, loss="softmax_cross_entropy")
    model = fastbp.MLP(sizes, seed=0)          # its initialisation, and predict, for scoring

    work = kernels.make_workspace(net, acts_size, np.float32)
    params, grads = model.params.copy(), np.zeros_like(model.params)
    start = time.perf_counter()
    losses = train(params, grads, work, data.X_train, data.y_train, net, np.float32(0.1),
                   epochs, batch)
    print(f"own loop: loss {losses[0]:.3f} -> {losses[-1]:.3f}, test accuracy "
          f"{accuracy(model, params, data):.2%} ({time.perf_counter() - start:.2f} s with "
          "compiling or loading it)")

    params = np.stack([fastbp.MLP(sizes, seed=seed).params for seed in range(members)])
    grads = np.zeros_like(params)
    works = [kernels.make_workspace(net, acts_size, np.float32) for _ in range(members)]
    stacked = [np.stack([w[i] for w in works]) for i in range(len(works[0]))]
    start = time.perf_counter()
    train_ensemble(params, grads, *stacked, data.X_train, data.y_train, net, np.float32(0.1),
                   epochs, batch)
    scores = [accuracy(model, p, data) for p in params]
    print(f"ensemble of {members}: test accuracy " + ", ".join(f"{s:.2%}" for s in scores)
          + f" ({time.perf_counter() - start:.2f} s)")


if __name__ == "__main__":
    main()
