"""The flat parameter layout, stated once. Pure Python and NumPy (no Numba).

A network of layer widths ``sizes = [n_0, n_1, ..., n_L]`` keeps every parameter in one 1-D
array, layer by layer; layer l holds its weight matrix W_l of shape (n_l, n_{l+1}) in row-major
order, then its bias b_l of shape (n_{l+1},)::

    flat = [ W_0 (row-major) | b_0 | W_1 | b_1 | ... | W_{L-1} | b_{L-1} ]

Layer l's block is ``flat[offsets[l]:offsets[l + 1]]``, (n_l + 1) * n_{l+1} long, with W_l in
its first n_l * n_{l+1} entries. The gradients use the same layout. Everything that needs to
know where a parameter lives (the model's per-layer views, the parameter count of a model file,
the compiled kernels' ``param_offsets``, the benchmarks) takes it from here.
"""
from itertools import accumulate

import numpy as np

__all__ = ["param_offsets", "n_params", "layer_views"]


def _block_lengths(sizes):
    """Each layer's parameter count, (n_in + 1) * n_out, as exact Python ints."""
    sizes = [int(s) for s in sizes]
    return [(n_in + 1) * n_out for n_in, n_out in zip(sizes[:-1], sizes[1:])]


def param_offsets(sizes):
    """Where each layer's block starts in the flat array, as an int64 array of shape (L + 1,):
    entry l is layer l's first parameter (its W_l[0, 0]), the last entry is the total count.
    ``sizes``: the L + 1 layer widths, input first."""
    return np.array([0, *accumulate(_block_lengths(sizes))], dtype=np.int64)


def n_params(sizes):
    """The number of parameters of a network of these layer widths, as an exact Python int
    (no int64 overflow, so it can check untrusted widths read from a file)."""
    return sum(_block_lengths(sizes))


def layer_views(flat, sizes):
    """Per-layer views into the flat 1-D array ``flat`` (parameters or gradients):
    ``(weights, biases)``, lists of L arrays of shapes (n_l, n_{l+1}) and (n_{l+1},) that share
    ``flat``'s memory (writing into one writes into ``flat``). ``flat`` must hold exactly
    ``n_params(sizes)`` entries."""
    sizes = [int(s) for s in sizes]
    offsets = param_offsets(sizes)
    if flat.ndim != 1 or flat.shape[0] != offsets[-1]:
        raise ValueError(f"layer_views: expected a 1-D array of {offsets[-1]} parameters for "
                         f"sizes {sizes}, got shape {flat.shape}")
    weights, biases = [], []
    for start, n_in, n_out in zip(offsets[:-1].tolist(), sizes[:-1], sizes[1:]):
        split = start + n_in * n_out
        weights.append(flat[start:split].reshape(n_in, n_out))
        biases.append(flat[split:split + n_out])
    return weights, biases
