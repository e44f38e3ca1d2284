"""Train on the UCI digits shipped with fastbp and show test images with the predicted labels.

    python examples/digits_grid.py [OUTPUT.png]

Needs matplotlib (pip install 'fastbp[plot]'). Writes digits_predictions.png by default: the
first test images with the network's label (green when right, red with the true label when
wrong), and a last row of further mistakes.
"""
import sys

import numpy as np
from matplotlib.figure import Figure

import fastbp

ROWS, COLS = 6, 10


def main(path="digits_predictions.png"):
    ds = fastbp.data.load("digits", seed=0)  # standardised pixels, fixed test rows
    model = fastbp.MLP([ds.n_features, 128, ds.n_classes], activation="relu", seed=0)
    optimizer = fastbp.SGD(model, lr=0.1, clip_norm=5.0)
    history = fastbp.fit(model, ds.X_train, ds.y_train, optimizer, epochs=30, batch_size=32,
                         seed=0, validation_data=(ds.X_val, ds.y_val))
    predicted = model.predict(ds.X_test)
    confidence = model.predict_proba(ds.X_test).max(axis=1)
    wrong = np.flatnonzero(predicted != ds.y_test)
    accuracy = 1 - wrong.size / ds.y_test.size
    print(f"validation accuracy {history['val_accuracy'][-1]:.2%}; test accuracy {accuracy:.2%}"
          f" ({wrong.size} mistakes in {ds.y_test.size})")

    # The first test images, then a last row of mistakes that are not among them (filled up
    # with the next images when there are fewer).
    first = list(range((ROWS - 1) * COLS))
    extra = [i for i in wrong if i >= len(first)][:COLS]
    extra += [i for i in range(len(first), ds.y_test.size) if i not in extra][:COLS - len(extra)]
    shown = first + sorted(extra)
    images = (ds.X_test * ds.scale + ds.offset).reshape(-1, *ds.image_shape)  # back to 0..16

    fig = Figure(figsize=(COLS * 0.95, ROWS * 1.12 + 0.5), layout="constrained")
    fig.suptitle(f"fastbp on the UCI digits: 64-128-10 MLP, test accuracy {accuracy:.1%} "
                 f"({wrong.size} of {ds.y_test.size} wrong; mistakes in red)")
    for ax, i in zip(fig.subplots(ROWS, COLS).ravel(), shown):
        ax.imshow(images[i], cmap="gray_r", vmin=0, vmax=16, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ok = predicted[i] == ds.y_test[i]
        label = f"{predicted[i]}" if ok else f"{predicted[i]} (is {ds.y_test[i]})"
        ax.set_title(f"{label}  {confidence[i]:.0%}", fontsize=8,
                     color="tab:green" if ok else "tab:red")
        if not ok:
            for spine in ax.spines.values():
                spine.set_color("tab:red")
                spine.set_linewidth(2)
    fastbp.io.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    print(f"wrote {path}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
