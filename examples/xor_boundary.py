"""Train a 2-4-1 network on XOR and draw the decision boundary it learns.

    python examples/xor_boundary.py [OUTPUT.png]

Needs matplotlib (pip install 'fastbp[plot]'). Writes xor_boundary.png by default.
"""
import sys

import numpy as np
from matplotlib.figure import Figure

import fastbp

X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
y = np.array([0, 1, 1, 0], dtype=np.float64)  # XOR


def main(path="xor_boundary.png"):
    # Two inputs, four tanh units, one sigmoid output trained with the squared error: the
    # classic backpropagation set-up. float64 and a fixed seed make the run reproducible.
    model = fastbp.MLP([2, 4, 1], activation="tanh", output_activation="sigmoid", loss="mse",
                       dtype=np.float64, seed=0)
    history = fastbp.fit(model, X, y, fastbp.SGD(model, lr=0.5), epochs=3000, batch_size=4,
                         seed=0)
    outputs = model.predict(X)[:, 0]
    print(f"final loss {history['loss'][-1]:.5f}; outputs "
          + ", ".join(f"{a:g}{b:g} -> {o:.3f}" for (a, b), o in zip(X.astype(int), outputs)))
    assert np.all((outputs > 0.5) == (y > 0.5)), "XOR not learnt"

    # The network's output over a grid around the unit square.
    ticks = np.linspace(-0.5, 1.5, 301)
    gx, gy = np.meshgrid(ticks, ticks)
    grid = np.column_stack([gx.ravel(), gy.ravel()])
    surface = model.predict(grid)[:, 0].reshape(gx.shape)

    fig = Figure(figsize=(9.5, 4.2), layout="constrained")
    ax, ax_loss = fig.subplots(1, 2, width_ratios=[1.15, 1])
    filled = ax.contourf(gx, gy, surface, levels=np.linspace(0, 1, 21), cmap="RdBu_r")
    ax.contour(gx, gy, surface, levels=[0.5], colors="k", linewidths=2)
    fig.colorbar(filled, ax=ax, label="network output")
    for label, marker in ((0, "o"), (1, "s")):
        pts = X[y == label]
        ax.scatter(pts[:, 0], pts[:, 1], s=140, marker=marker, c="white", edgecolors="k",
                   linewidths=2, label=f"XOR = {label}", zorder=3)
    ax.set(xlabel="$x_1$", ylabel="$x_2$", aspect="equal",
           title="decision boundary (output = 0.5, black)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize="small")

    ax_loss.plot(np.arange(1, len(history["loss"]) + 1), history["loss"])
    ax_loss.set(xscale="log", yscale="log", xlabel="epoch (one batch of the 4 points)",
                ylabel="loss  ½(ŷ − y)²", title="training loss")
    ax_loss.grid(alpha=0.3)
    fastbp.io.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    print(f"wrote {path}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
