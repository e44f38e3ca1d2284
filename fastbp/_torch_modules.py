"""The PyTorch side of fastbp.export (imports torch: imported only by to_torch and from_torch).

``Residual``, the block of a hidden layer that adds its input to its output; ``module``, which
builds one module of to_torch's Sequential; ``read_sequential``, which reads a Sequential back
into fastbp's structure and tensors.
"""
import numpy as np
import torch

__all__ = ["Residual", "module", "read_sequential"]


class Residual(torch.nn.Sequential):
    """A hidden layer with a residual connection: its input plus the output of its modules
    (Linear, its normalisation, activation and dropout)."""

    def forward(self, x):
        return x + super().forward(x)


def module(kind, args, tensors, dtype):
    """The torch.nn module ``kind`` built with ``args`` (positional, or a dict of keyword
    arguments), in ``dtype`` ("float32" or "float64"), its tensors (state_dict name -> NumPy
    array) copied in."""
    keywords = args if isinstance(args, dict) else {}
    args = () if isinstance(args, dict) else args
    if kind in ("Linear", "LayerNorm", "BatchNorm1d"):   # (norms: eps 1e-5, momentum 0.1)
        keywords = dict(keywords, dtype=getattr(torch, dtype))
    made = getattr(torch.nn, kind)(*args, **keywords)
    with torch.no_grad():
        for name, value in tensors.items():
            target = made.get_buffer(name) if name in dict(made.named_buffers()) else \
                made.get_parameter(name)
            target.copy_(torch.from_numpy(np.array(value)))
    return made


def read_sequential(sequential, activations, eps, momentum):
    """(structure, per-layer tensors) of a Sequential of fastbp's layers. structure: MLP's
    arguments (sizes, activations, output_activation, dtype, norm, residual, dropout,
    matmul_precision); tensors: one dict per layer, "<module kind>.<name>" -> NumPy array.
    activations: torch.nn class name -> (fastbp name, keyword arguments the module must have).
    Raises export.ExportError naming the module that fastbp cannot take."""
    from .export import ExportError
    _check_no_hooks(sequential, ExportError)
    found = []
    for path, child in sequential.named_children():
        if type(child) is Residual:
            inner = list(child.named_children())
            if not inner or _class(inner[0][1]) is not torch.nn.Linear:
                raise ExportError(f"module {path} (Residual): should start with its Linear")
            start = len(found)
            for name, grandchild in inner:
                _take(found, f"{path}.{name}", grandchild, activations, ExportError)
            if len(found) != start + 1:
                raise ExportError(f"module {path} (Residual): should hold one layer (a Linear "
                                  f"and what follows it), holds {len(found) - start}")
            found[-1]["residual"] = path   # (closed: only a Linear may follow the block)
        else:
            _take(found, path, child, activations, ExportError)
    if not found:
        raise ExportError("module: holds no Linear layer")
    return _structure(found, eps, momentum, ExportError)


def _check_no_hooks(sequential, error):
    """Refuse forward hooks, which change what a module computes (fastbp would not)."""
    from torch.nn.modules import module as torch_module
    hooked = [name or "module" for name, m in sequential.named_modules()
              if m._forward_hooks or m._forward_pre_hooks]
    if hooked:
        raise error(f"module {hooked[0]}: has forward hooks, which fastbp cannot express")
    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        raise error("module: global forward hooks are registered (torch.nn.modules.module."
                    "register_module_forward_hook), which fastbp cannot express")


def _class(child):
    """The torch.nn class a module is: its own, or for a parametrized one (weight norm, ...)
    the class torch.nn.utils.parametrize derived it from. A subclass of a torch.nn class is
    not that class: its forward may compute something else."""
    cls = type(child)
    if torch.nn.utils.parametrize.is_parametrized(child):
        cls = cls.__mro__[1]
    return cls


def _take(found, path, child, activations, error):
    """Add ``child`` to the layers found so far (a Linear starts a layer; its norm, activation
    and dropout follow it, in that order)."""
    kind, cls = type(child).__name__, _class(child)
    if cls is torch.nn.Identity:
        return
    if cls is torch.nn.Linear:
        found.append({"linear": (path, child)})
        return
    order = ("linear", "norm", "activation", "dropout")
    if cls in (torch.nn.LayerNorm, torch.nn.BatchNorm1d):
        slot = "norm"
    elif kind in activations and cls is getattr(torch.nn, kind):
        slot = "activation"
        name, kwargs = activations[kind]
        wrong = {k: getattr(child, k) for k, v in kwargs.items() if getattr(child, k) != v}
        if getattr(child, "approximate", "none") != "none":
            wrong["approximate"] = child.approximate
        if wrong:
            raise error(f"module {path} ({kind}): fastbp's {name} has "
                        f"{kwargs or {'approximate': 'none'}}, this module {wrong}")
    elif cls is torch.nn.Dropout:
        slot = "dropout"
    else:
        hint = (" (fastbp's softmax_cross_entropy loss applies the softmax: end the module "
                "with the last Linear)" if kind in ("Softmax", "LogSoftmax") else "")
        raise error(f"module {path} ({kind}): not a layer fastbp has (Linear, LayerNorm, "
                    f"BatchNorm1d, {', '.join(sorted(activations))}, Dropout, Residual, "
                    f"Identity){hint}")
    if not found:
        raise error(f"module {path} ({kind}): the first layer must be a Linear")
    layer = found[-1]
    if "residual" in layer:
        raise error(f"module {path} ({kind}): follows a Residual block, which holds its whole "
                    "layer; only a Linear may come next")
    if any(order.index(s) >= order.index(slot) for s in layer if s in order[1:]):
        raise error(f"module {path} ({kind}): out of fastbp's order (Linear, normalisation, "
                    "activation, dropout), or a second one in the same layer")
    layer[slot] = (path, child)
    if slot == "activation":
        layer["activation_name"] = activations[kind][0]


def _structure(found, eps, momentum, error):
    """The structure and tensors of the layers found (see read_sequential), checked."""
    last = found[-1]
    for slot in ("norm", "dropout", "residual"):
        if slot in last:
            raise error(f"module {last[slot] if slot == 'residual' else last[slot][0]}: the "
                        f"output layer (the last Linear) takes no {slot} in fastbp")
    dtypes = {p.dtype for layer in found for p in layer["linear"][1].parameters()}
    if len(dtypes) != 1 or next(iter(dtypes)) not in (torch.float32, torch.float64):
        raise error(f"module: parameters should all be float32 or all float64, got "
                    f"{sorted(map(str, dtypes))}")
    dtype = str(next(iter(dtypes))).replace("torch.", "")
    sizes = [found[0]["linear"][1].in_features]
    tensors = []
    for layer in found:
        path, linear = layer["linear"]
        if linear.in_features != sizes[-1]:
            raise error(f"module {path} (Linear): takes {linear.in_features} inputs, the "
                        f"layer before gives {sizes[-1]}")
        sizes.append(linear.out_features)
        tensors.append(_layer_tensors(layer, linear, eps, momentum, error))
    activation_names = [layer.get("activation_name", "identity") for layer in found]
    residual = [bool(layer.get("residual")) for layer in found[:-1]]
    _check_residual(found, sizes, residual, error)
    return ({"sizes": sizes, "activations": activation_names[:-1],
             "output_activation": activation_names[-1], "dtype": dtype,
             "norm": [_norm_of(layer) for layer in found[:-1]], "residual": any(residual),
             "dropout": [layer["dropout"][1].p if "dropout" in layer else 0.0
                         for layer in found[:-1]],
             "matmul_precision": "float32"}, tensors)


def _norm_of(layer):
    if "norm" not in layer:
        return None
    return "layer" if isinstance(layer["norm"][1], torch.nn.LayerNorm) else "batch"


def _check_residual(found, sizes, residual, error):
    """fastbp's residual=True adds the input of every hidden layer of equal widths: a module
    whose blocks are elsewhere cannot be taken."""
    if not any(residual):
        return
    for l, (layer, flag) in enumerate(zip(found[:-1], residual)):
        if flag != (sizes[l] == sizes[l + 1]):
            path = layer["linear"][0]
            raise error(f"module {path} (Linear, {sizes[l]} -> {sizes[l + 1]}): "
                        + ("in a Residual block, which needs equal input and output widths"
                           if flag else "not in a Residual block, while others are: fastbp's "
                           "residual connections are on every hidden layer of equal widths"))


def _array(tensor):
    if tensor.is_meta:
        from .export import ExportError
        raise ExportError("module: its tensors are on the meta device (shapes without values)")
    return tensor.detach().cpu().numpy().copy()


def _layer_tensors(layer, linear, eps, momentum, error):
    """{"<module kind>.<name>": array} of one layer; a Linear without bias has zero biases, a
    normalisation without affine parameters scale 1 and shift 0 (the same function)."""
    out = {"Linear.weight": _array(linear.weight),
           "Linear.bias": _array(linear.bias) if linear.bias is not None
           else np.zeros(linear.out_features, _array(linear.weight).dtype)}
    if "norm" not in layer:
        return out
    path, norm = layer["norm"]
    kind, width = type(norm).__name__, linear.out_features
    shape = tuple(norm.normalized_shape) if kind == "LayerNorm" else (norm.num_features,)
    if shape != (width,):
        raise error(f"module {path} ({kind}): normalises {shape}, the layer is {width} wide")
    if norm.eps != eps:
        raise error(f"module {path} ({kind}): eps {norm.eps:g}; fastbp's is {eps:g}")
    dtype = out["Linear.weight"].dtype
    scale = norm.weight if norm.weight is not None else None
    shift = norm.bias if norm.bias is not None else None
    out[f"{kind}.weight"] = _array(scale) if scale is not None else np.ones(width, dtype)
    out[f"{kind}.bias"] = _array(shift) if shift is not None else np.zeros(width, dtype)
    if kind == "BatchNorm1d":
        if norm.running_mean is None:
            raise error(f"module {path} (BatchNorm1d): track_running_stats=False; fastbp infers "
                        "with running statistics")
        if norm.momentum != momentum:
            raise error(f"module {path} (BatchNorm1d): momentum {norm.momentum}; fastbp's is "
                        f"{momentum}")
        out.update({f"{kind}.{name}": _array(getattr(norm, name)) for name in (
            "running_mean", "running_var", "num_batches_tracked")})
    return out
