"""Training curves from a ``fit`` history (needs the optional matplotlib: ``fastbp[plot]``)."""
import os

from .io import atomic_write

__all__ = ["plot_history", "history_figure", "require_matplotlib"]


def require_matplotlib():
    """Import matplotlib's Figure, or raise ImportError with the command that installs it."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'fastbp[plot]'") from None
    return Figure


def plot_history(history, path, title=None, layer_names=None, metrics=None,
                 class_names=None):
    """Write training curves to ``path`` (its suffix picks the format: .png, .pdf, .svg, ...).

    Three panels over the epochs: the loss (training, and validation when recorded), the
    accuracy (when recorded), and each layer's gradient norm, the mean over each epoch's steps
    (``history["layer_grad_norms"]``, log scale). ``layer_names`` labels the layers (default
    "layer 1", "layer 2", ...). When early stopping restored an earlier epoch's weights
    (``history.best_epoch``), a dotted line marks that epoch on each panel. ``metrics``
    (``fastbp.metrics.classification_metrics`` of the test rows) adds a second row: the
    confusion matrix and each class's precision, recall and F1, its classes named by
    ``class_names``. The file is written atomically (see ``fastbp.io.atomic_write``). Returns
    ``path``.
    """
    fmt = os.path.splitext(os.fspath(path))[1].lstrip(".").lower() or "png"
    fig = history_figure(history, title, layer_names, metrics, class_names)
    return atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=110))


def history_figure(history, title=None, layer_names=None, metrics=None, class_names=None):
    """The matplotlib Figure that plot_history writes (its arguments are plot_history's)."""
    Figure = require_matplotlib()
    losses = list(history.get("loss", []))
    epochs = list(range(1, len(losses) + 1))
    if metrics is None:
        fig = Figure(figsize=(13, 3.8), layout="constrained")
        ax_loss, ax_acc, ax_grad = fig.subplots(1, 3)
    else:
        fig = Figure(figsize=(13, 8.6), layout="constrained")
        panels = fig.subplot_mosaic([["loss", "acc", "grad"], ["confusion", "classes", "classes"]],
                                    height_ratios=[1, 1.3])
        ax_loss, ax_acc, ax_grad = panels["loss"], panels["acc"], panels["grad"]
        _plot_confusion(panels["confusion"], metrics["confusion_matrix"], class_names)
        _plot_per_class(panels["classes"], metrics, class_names)

    ax_loss.plot(epochs, losses, marker="o", ms=3, label="training (mean over the epoch)")
    if history.get("val_loss"):
        ax_loss.plot(epochs, history["val_loss"], marker="o", ms=3, label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss", yscale="log")
    ax_loss.legend(fontsize="small")

    if history.get("accuracy"):
        ax_acc.plot(epochs, [100 * a for a in history["accuracy"]], marker="o", ms=3,
                    label="training")
        if history.get("val_accuracy"):
            ax_acc.plot(epochs, [100 * a for a in history["val_accuracy"]], marker="o", ms=3,
                        label="validation")
        ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
        ax_acc.legend(fontsize="small")
    else:
        ax_acc.set_axis_off()
        ax_acc.text(0.5, 0.5, "no accuracy recorded", ha="center", va="center")

    per_epoch = history.get("layer_grad_norms") or []
    if per_epoch:
        _plot_layer_norms(ax_grad, epochs, per_epoch, layer_names, history.get("grad_norm"))
    else:
        ax_grad.set_axis_off()
    if title:
        fig.suptitle(title)
    restored = _restored_epoch(history, len(losses))
    for ax in (ax_loss, ax_acc, ax_grad):
        if ax.axison:
            _epoch_axis(ax, restored)
    return fig


def _restored_epoch(history, n_epochs):
    """The epoch (from 1) whose weights early stopping restored, or None when the model holds
    the last epoch's."""
    best = getattr(history, "best_epoch", None)
    return None if best is None or best + 1 == n_epochs else best + 1


def _epoch_axis(ax, restored):
    """Whole epochs on the x axis (never 2.5), a grid, and the restored epoch's mark."""
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if restored is not None:
        ax.axvline(restored, color="0.3", ls=":", label=f"restored (epoch {restored})")
        ax.legend(fontsize="small")


# More layers than this get colours by depth and a legend of the first, middle and last only.
_NAMED_LAYERS = 8


def _plot_layer_norms(ax, epochs, per_epoch, layer_names, global_norms):
    """Each layer's gradient norm per epoch (the mean over the epoch's steps), log scale."""
    import matplotlib
    n_layers = len(per_epoch[0])
    names = list(layer_names) if layer_names else [f"layer {i + 1}" for i in range(n_layers)]
    many = n_layers > _NAMED_LAYERS
    colours = matplotlib.colormaps["viridis"] if many else None
    labelled = {0, n_layers // 2, n_layers - 1} if many else set(range(n_layers))
    for i in range(n_layers):
        ax.plot(epochs, [norms[i] for norms in per_epoch], marker=None if many else "o", ms=3,
                color=colours(i / (n_layers - 1)) if many else None,
                label=names[i] if i in labelled else None)
    if global_norms:
        ax.plot(epochs, global_norms, color="0.4", ls="--", label="global")
    ax.set(xlabel="epoch", ylabel="L2 norm of the gradient\n(mean of the epoch's steps' norms)",
           yscale="log", title="gradient norm per layer\n(mean over each epoch's steps)")
    ax.legend(fontsize="small")


def _class_names(class_names, n_classes):
    return [str(name) for name in class_names] if class_names is not None else \
        [str(c) for c in range(n_classes)]


# More classes than this: the confusion matrix's cells carry no numbers (they would not fit).
_ANNOTATED_CLASSES = 15


def _plot_confusion(ax, confusion, class_names):
    """The test rows' confusion matrix, coloured by the share of each true class's rows (so
    that a small class's errors show as much as a large one's), with the counts written in."""
    import numpy as np
    counts = np.asarray(confusion)
    n_classes = counts.shape[0]
    rows = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    names = _class_names(class_names, n_classes)
    if n_classes <= _ANNOTATED_CLASSES:
        long_names = n_classes > 6 and max(map(len, names)) > 2
        ax.set_xticks(range(n_classes), names, rotation=90 if long_names else 0)
        ax.set_yticks(range(n_classes), names)
        for (true, predicted), count in np.ndenumerate(counts):
            if count:
                ax.text(predicted, true, str(count), ha="center", va="center",
                        fontsize="small", color="white" if shares[true, predicted] > 0.5
                        else "black")
    ax.set(xlabel="predicted class", ylabel="true class",
           title="test rows: confusion matrix\n(colour: share of the true class's rows)")


def _plot_per_class(ax, metrics, class_names):
    """Each class's precision, recall and F1 on the test rows, side by side."""
    import numpy as np
    n_classes = len(metrics["support"])
    positions = np.arange(n_classes)
    width = 0.27
    for offset, key in zip((-width, 0, width), ("precision", "recall", "f1")):
        ax.bar(positions + offset, metrics[key], width, label=key if key != "f1" else "F1")
    names = _class_names(class_names, n_classes)
    if n_classes <= 3 * _ANNOTATED_CLASSES:
        ax.set_xticks(positions, names, rotation=90 if n_classes > 10 else 0)
    ax.set(xlabel="class", ylabel="score", ylim=(0, 1.15),   # (room for the legend)
           title=f"test rows: per class (macro F1 {metrics['macro_avg']['f1']:.3f})")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize="small", loc="upper center", ncol=3)
