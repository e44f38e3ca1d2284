"""The per-class table that ``fastbp train`` prints after training: each class's precision,
recall, F1 and test rows beside its row of the confusion matrix."""

# Beyond this many classes the table would not fit a terminal: the command prints the averages
# alone, and the per-class figures stay in --json and --plot.
TABLE_CLASSES = 20
# Longest class name printed (longer ones are cut).
_NAME_WIDTH = 14


def class_labels(class_names):
    """How the table names each class: "3" for the digits (names that are their indices),
    "3 Dress" where the names say more, cut to _NAME_WIDTH."""
    labels = []
    for index, name in enumerate(class_names):
        label = str(name) if str(name) == str(index) else f"{index} {name}"
        labels.append(label if len(label) <= _NAME_WIDTH else label[:_NAME_WIDTH - 1] + "~")
    return labels


def metrics_table(metrics, class_names):
    """Lines of text: a header, one line per class (precision, recall, F1, rows, then how many
    of its rows went to each predicted class), and the macro and weighted averages."""
    n_classes = len(metrics["support"])
    labels = class_labels(class_names)
    width = max(len("weighted"), *(len(label) for label in labels))
    cell = len(str(max(metrics["support"]))) + 1
    shown = n_classes <= TABLE_CLASSES
    lines = []
    if shown:
        predicted = "".join(f"{c:>{cell}}" for c in range(n_classes))
        lines.append(f"{'class':<{width}} precision recall     F1  rows |{predicted}"
                     "  <- predicted as")
        for c, label in enumerate(labels):
            counts = "".join(f"{n:>{cell}}" for n in metrics["confusion_matrix"][c])
            lines.append(_figures(label, width, metrics["precision"][c], metrics["recall"][c],
                                  metrics["f1"][c], metrics["support"][c]) + f" |{counts}")
    else:
        lines.append(f"{n_classes} classes: per-class figures and the confusion matrix are in "
                     "--json and --plot")
        lines.append(f"{'':<{width}} precision recall     F1  rows")
    total = sum(metrics["support"])
    for name, key in (("macro", "macro_avg"), ("weighted", "weighted_avg")):
        average = metrics[key]
        lines.append(_figures(name, width, average["precision"], average["recall"],
                              average["f1"], total))
    return lines


def _figures(label, width, precision, recall, f1, rows):
    return f"{label:<{width}} {precision:9.3f} {recall:6.3f} {f1:6.3f} {rows:5d}"
