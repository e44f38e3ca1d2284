"""Training curves from a ``fit`` history (needs the optional matplotlib: ``fastbp[plot]``)."""
import os

from .io import atomic_write

__all__ = ["plot_history", "require_matplotlib"]


def require_matplotlib():
    """Import matplotlib's Figure, or raise ImportError with the command that installs it."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'fastbp[plot]'") from None
    return Figure


def plot_history(history, path, title=None, layer_names=None):
    """Write training curves to ``path`` (its suffix picks the format: .png, .pdf, .svg, ...).

    Three panels over the epochs: the loss (training, and validation when recorded), the
    accuracy (when recorded), and each layer's gradient norm (``history["layer_grad_norms"]``,
    log scale). ``layer_names`` labels the layers (default "layer 1", "layer 2", ...). The file
    is written atomically (see ``fastbp.io.atomic_write``). Returns ``path``.
    """
    Figure = require_matplotlib()
    fmt = os.path.splitext(os.fspath(path))[1].lstrip(".").lower() or "png"
    losses = list(history.get("loss", []))
    epochs = list(range(1, len(losses) + 1))
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    ax_loss, ax_acc, ax_grad = fig.subplots(1, 3)

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
    for ax in (ax_loss, ax_acc, ax_grad):
        if ax.axison:
            ax.grid(alpha=0.3)
    return atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=110))


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
        ax.plot(epochs, global_norms, color="0.4", ls="--", label="global (mean over steps)")
    ax.set(xlabel="epoch", ylabel="L2 norm of the layer's gradient", yscale="log",
           title="gradient norm per layer\n(mean over each epoch's steps)")
    ax.legend(fontsize="small")
