"""The flat parameter layout, stated once. Pure Python and NumPy (no Numba).

A network of layer widths ``sizes = [n_0, n_1, ..., n_L]`` keeps every parameter in one 1-D
array, layer by layer; layer l's block is ``flat[offsets[l]:offsets[l + 1]]``::

    flat = [ layer 0's block | layer 1's block | ... | layer L-1's block ]

What a block holds is up to the layer's kind (``LAYER_KINDS``, by code; a Net carries one code
per layer). A kind lists its parameter blocks as a function of (fan_in, fan_out) = (n_l,
n_{l+1}): their names, shapes (each row-major) and whether the L2 penalty covers them (its
"weights"); those come first, so the penalty covers a prefix of each layer's block
(``weight_lengths``). The dense layer holds W_l (n_l, n_{l+1}) then b_l
(n_{l+1},)::

    dense block = [ W_l (row-major) | b_l ]      (n_l + 1) * n_{l+1} entries, W_l penalised

A layer with normalisation (layer or batch) holds its dense parameters, then the
normalisation's scale and shift (initialised to 1 and 0; the L2 penalty does not cover them)::

    normalised block = [ W_l | b_l | scale_l (n_{l+1},) | shift_l (n_{l+1},) ]

Other kinds may have no blocks (a layer without parameters), blocks that are not (W, b), and
may require their output to be as wide as their input (``same_width``). Each kind brings its
initialisation (``init``); its forward and backward steps are in fastbp.kernels.network.

The gradients use the same layout. Everything that needs to know where a parameter lives (the
model's per-layer views, the parameter count of a model file, the compiled kernels'
``param_offsets`` and ``weight_lengths``, the benchmarks) takes it from here.
"""
import math
from collections import namedtuple
from itertools import accumulate

import numpy as np

__all__ = ["Block", "LayerKind", "LAYER_KINDS", "LAYER_KIND_CODES", "DENSE", "LAYER_NORM",
           "BATCH_NORM", "NORM_KINDS", "param_offsets",
           "n_params", "weight_lengths", "layer_blocks", "layer_views"]

Block = namedtuple("Block", ["name", "shape", "penalised"])
Block.__doc__ = """One named parameter tensor of a layer: its shape (a tuple of ints, stored
row-major) and whether the L2 penalty covers it."""


class LayerKind(namedtuple("LayerKind", ["name", "blocks", "same_width", "init", "norm"])):
    """An entry of LAYER_KINDS. name; blocks(fan_in, fan_out): its parameter Blocks, in their
    order in the layer's block, the penalised ones first; same_width: its output must be as
    wide as its input; init(views, fan_in, fan_out, rule, rng): fills its blocks (views: name
    -> array) for a layer whose activation initialises by rule ("he" or "glorot",
    activations.Activation.init), drawing from the NumPy Generator rng; norm: the
    normalisation after its product ("layer", "batch", or None)."""
    __slots__ = ()


def _dense_blocks(fan_in, fan_out):
    return Block("weight", (fan_in, fan_out), True), Block("bias", (fan_out,), False)


def _dense_init(views, fan_in, fan_out, rule, rng):
    """W: He (normal, std sqrt(2 / fan_in)) or Glorot (uniform, limit sqrt(6 / (fan_in +
    fan_out))); b: 0."""
    weight = views["weight"]
    if rule == "he":
        weight[...] = rng.normal(0.0, np.sqrt(2.0 / fan_in), weight.shape)
    else:
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        weight[...] = rng.uniform(-limit, limit, weight.shape)
    views["bias"][...] = 0


def _normalised_blocks(fan_in, fan_out):
    return _dense_blocks(fan_in, fan_out) + (Block("norm_weight", (fan_out,), False),
                                             Block("norm_bias", (fan_out,), False))


def _normalised_init(views, fan_in, fan_out, rule, rng):
    """The dense layer's, then scale 1 and shift 0 (nn.LayerNorm's and nn.BatchNorm1d's)."""
    _dense_init(views, fan_in, fan_out, rule, rng)
    views["norm_weight"][...] = 1
    views["norm_bias"][...] = 0


DENSE, LAYER_NORM, BATCH_NORM = 0, 1, 2
#: The layer kinds, by code (the index; a Net's kinds).
LAYER_KINDS = (
    LayerKind("dense", _dense_blocks, False, _dense_init, None),
    LayerKind("layer_norm", _normalised_blocks, False, _normalised_init, "layer"),
    LayerKind("batch_norm", _normalised_blocks, False, _normalised_init, "batch"),
)
#: A normalisation's name -> the code of the layer kind that has it.
NORM_KINDS = {kind.norm: code for code, kind in enumerate(LAYER_KINDS) if kind.norm}
#: Layer kind name -> code.
LAYER_KIND_CODES = {kind.name: code for code, kind in enumerate(LAYER_KINDS)}


def _kinds(sizes, kinds):
    """(widths, kind codes) as Python ints, checked: one known kind per layer (None: all
    dense), and the widths that same_width kinds require."""
    sizes = [int(s) for s in sizes]
    n_layers = len(sizes) - 1
    kinds = [DENSE] * n_layers if kinds is None else [int(k) for k in kinds]
    if len(kinds) != n_layers:
        raise ValueError(f"kinds: expected {n_layers} layer kinds, one per layer, got "
                         f"{len(kinds)}")
    for layer, code in enumerate(kinds):
        if not 0 <= code < len(LAYER_KINDS):
            raise ValueError(f"kinds: unknown layer kind {code} (layer {layer})")
        if LAYER_KINDS[code].same_width and sizes[layer] != sizes[layer + 1]:
            raise ValueError(f"kinds: a {LAYER_KINDS[code].name} layer's output is as wide as "
                             f"its input; layer {layer} has widths {sizes[layer]} -> "
                             f"{sizes[layer + 1]}")
    return sizes, kinds


def _layer_blocks(sizes, kinds):
    """Each layer's Blocks."""
    sizes, kinds = _kinds(sizes, kinds)
    return [LAYER_KINDS[code].blocks(n_in, n_out)
            for code, n_in, n_out in zip(kinds, sizes[:-1], sizes[1:])]


def _length(block):
    return math.prod(block.shape)


def _block_lengths(sizes, kinds=None):
    """Each layer's parameter count (for a dense layer (n_in + 1) * n_out), as exact Python
    ints."""
    return [sum(map(_length, blocks)) for blocks in _layer_blocks(sizes, kinds)]


def param_offsets(sizes, kinds=None):
    """Where each layer's block starts in the flat array, as an int64 array of shape (L + 1,):
    entry l is layer l's first parameter (a dense layer's W_l[0, 0]), the last entry is the
    total count. ``sizes``: the L + 1 layer widths, input first; ``kinds``: the L layer kind
    codes (None: all dense)."""
    return np.array([0, *accumulate(_block_lengths(sizes, kinds))], dtype=np.int64)


def n_params(sizes, kinds=None):
    """The number of parameters of a network of these layer widths (and kinds), as an exact
    Python int (no int64 overflow, so it can check untrusted widths read from a file)."""
    return sum(_block_lengths(sizes, kinds))


def weight_lengths(sizes, kinds=None):
    """How many of each layer's parameters, from its block's start, the L2 penalty covers (a
    dense layer's W: n_in * n_out), as an int64 array of shape (L,)."""
    lengths = []
    for blocks in _layer_blocks(sizes, kinds):
        flags = [block.penalised for block in blocks]
        if flags != sorted(flags, reverse=True):
            raise ValueError(f"layer blocks {[b.name for b in blocks]}: the penalised ones "
                             "must come first")
        lengths.append(sum(_length(block) for block in blocks if block.penalised))
    return np.array(lengths, dtype=np.int64)


def layer_blocks(flat, sizes, kinds=None):
    """Per-layer views into the flat 1-D array ``flat`` (parameters or gradients): a list of L
    dicts, block name -> array of the block's shape that shares ``flat``'s memory (writing into
    one writes into ``flat``); empty for a layer without parameters. ``flat`` must hold exactly
    ``n_params(sizes, kinds)`` entries."""
    sizes = [int(s) for s in sizes]
    offsets = param_offsets(sizes, kinds)
    if flat.ndim != 1 or flat.shape[0] != offsets[-1]:
        raise ValueError(f"layer views: expected a 1-D array of {offsets[-1]} parameters for "
                         f"sizes {sizes}, got shape {flat.shape}")
    views = []
    for start, blocks in zip(offsets[:-1].tolist(), _layer_blocks(sizes, kinds)):
        layer = {}
        for block in blocks:
            stop = start + _length(block)
            layer[block.name] = flat[start:stop].reshape(block.shape)
            start = stop
        views.append(layer)
    return views


def layer_views(flat, sizes, kinds=None):
    """Per-layer views into the flat 1-D array ``flat`` (parameters or gradients):
    ``(weights, biases)``, lists of L arrays, a dense layer's of shapes (n_l, n_{l+1}) and
    (n_{l+1},), that share ``flat``'s memory (writing into one writes into ``flat``); None for
    a layer whose kind has no "weight" or "bias" block. ``flat`` must hold exactly
    ``n_params(sizes, kinds)`` entries."""
    views = layer_blocks(flat, sizes, kinds)
    return [v.get("weight") for v in views], [v.get("bias") for v in views]
