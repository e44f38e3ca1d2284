"""What a network is and where its buffers go, in plain Python: building the Net (the compiled
code's description of a network) and the Workspace (its buffers), the activation buffer's plan,
the running statistics' layout, and which units a run calls (units_for). network.py defines
the two (their types are in the Numba caches of code that uses them, so they stay there) and
holds the compiled passes over them.

Net: sizes (L+1,), activations (L,) codes, param_offsets (L+1,) (the flat parameter layout of
fastbp.layout), capacity (rows the buffers hold), checkpoint_every (k), act_offsets (L,) where
each layer's output starts in the flat activation buffer, pre_offsets (L,) where its
pre-activation starts, or -1 when it is not kept (only activations whose gradient reads their
input keep it: gelu), loss (a code of losses.LOSS_CODES, or -1: by the target's type, see
losses.DEFAULT_LOSS), l2 (the L2 penalty on the weights, scikit-learn's alpha; 0 for none),
kinds (L,) the layers' kinds (codes of fastbp.layout.LAYER_KINDS: dense, or dense with layer
or batch normalisation), weight_lengths (L,) how much of each layer's parameter block, from
its start, the L2 penalty covers (layout.weight_lengths), dropout (L,) each layer's dropout
probability, residual (L,) 1 where a layer adds its input to its output, aux_offsets (L,)
where a block layer's saved values start (-1: a plain layer), running_offsets (L,) where a
batch-normalised layer's running mean and variance start in running (float64), and counter
[seed, training passes, row base], the dropout masks' key (see make_net), precision (the
matrix products' code of bfloat16.PRECISIONS, or None for FLOAT32, whose code then holds
nothing of bfloat16) and bits, the bfloat16 operands' buffer (uint16; empty in FLOAT32
precision): each layer's rounded weight at its parameter offset, then capacity * (widest
input + widest output) for a batch's rounded rows (bfloat16_length).

Activations: with k = 1 every layer's output is kept. With k > 1 only every k-th layer's output
(and the last one's) is kept; the others share a "segment" area at the end of the buffer,
written during the forward pass and recomputed from the segment's kept input during the backward
pass. A layer's pre-activation, when kept, lives right after its output and is kept or
recomputed with it.

Workspace: acts; deltas (two halves of capacity * max width, used in turn during the backward
pass); per-sample losses (capacity,) float64; layer_sq (L,) float64, the per-layer squared
gradient norms of the last update; partials (norm scratch).
"""
import math
import numbers

import numpy as np

from .. import layout
from . import activations, block, dense
from .activations import ACTIVATIONS
from .bfloat16 import FLOAT32, PRECISIONS
from ._config import INPUT_SPLIT_RATIO
from ._tiling import tile_budget
from .dense import splits_input
from .losses import LOSS_CODES, LOSS_KINDS
from .network import UPDATE_UNITS, Net, Workspace
from .rows import aligned_zeros
from .update import norm_partials_size


# The unit that densifies a CSR matrix's rows, by the NumPy type of its indices.
CSR_UNITS = {np.dtype(np.int64): "take_csr_rows", np.dtype(np.int32): "take_csr_rows_int32"}


def units_for(loss, update_kind=None, net=None, may_split=True, weighted=False,
              sparse_index=None):
    """Names of the units that training with this loss (and update kind) calls; with a Net,
    the input-split forward only if some layer of it can split at the current tile budget
    (never without may_split: inference does not split), and the activations' loops only for
    its activations (else for all), and the L2 penalty's only if its l2 is not 0 (else
    always); the sample weights' stage only when weighted; the CSR gather for sparse data
    whose indices have the NumPy dtype sparse_index, when given."""
    names = _layer_units(net) + ["take_rows"]
    codes = range(len(ACTIVATIONS)) if net is None else sorted(set(net.activations.tolist()))
    names += activations.epilogue_units(codes)
    if may_split and (net is None or (net.precision is None and _may_split_input(net))):
        names.append("dense_forward_split_input")
    kind = LOSS_KINDS[loss]
    names += kind.units
    if kind.fused is None:   # its gradient goes through the output activation's
        names.append("activation_backward")
    if net is None or net.l2 != 0:
        names.append("l2_penalty_forward_backward")
    if weighted:
        names.append("sample_weights_forward_backward")
    if sparse_index is not None:
        names.append(CSR_UNITS[np.dtype(sparse_index)])
    if update_kind in UPDATE_UNITS:
        names.append(UPDATE_UNITS[update_kind])
    return names


# -- building (plain Python) -------------------------------------------------------------------


# The units a block layer (block.py) adds to the dense layer's.
_BLOCK_UNITS = ["block_forward", "block_backward", "activation_backward"]


def _layer_units(net):
    """The units of the layers of a Net: its precision's products, and the block layers' if it
    has any (without a Net: float32 products and every kind of layer)."""
    products = dense.PRECISION_UNITS[FLOAT32 if net is None or net.precision is None
                                     else net.precision]
    if net is None or (net.aux_offsets >= 0).any():
        return products + _BLOCK_UNITS
    return list(products)


def _may_split_input(net):
    """Whether dense_forward's input split (dense.splits_input) can trigger for some dense
    layer and some batch of at most net.capacity rows, at the current tile budget
    (_tiling.tile_budget)."""
    budget = tile_budget()
    scratch = net.capacity * int(net.sizes[1:].max())
    for n_in, n_out in zip(net.sizes[:-1].tolist(), net.sizes[1:].tolist()):
        rows = min(net.capacity, (n_in - 1) // INPUT_SPLIT_RATIO)  # the most rows that split
        if rows >= 1 and splits_input(rows, n_in, n_out, budget, scratch):
            return True
    return False


def _is_kept(layer, n_layers, checkpoint_every):
    return (layer + 1) % checkpoint_every == 0 or layer == n_layers - 1


def _block_extras(kinds, n_layers, dropout, residual):
    """Each layer's (norm code, dropout p, residual flag), checked: a residual layer's input and
    output widths are equal (make_net checks), p in [0, 1)."""
    kinds = [layout.DENSE] * n_layers if kinds is None else [int(k) for k in kinds]
    dropout = [0.0] * n_layers if dropout is None else [float(p) for p in dropout]
    residual = [0] * n_layers if residual is None else [int(bool(r)) for r in residual]
    if len(dropout) != n_layers or len(residual) != n_layers:
        raise ValueError(f"dropout, residual: expected {n_layers} entries, one per layer")
    for p in dropout:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout: expected probabilities in [0, 1), got {dropout}")
    return kinds, dropout, residual


def is_block(kind, p, residual):
    """Whether a layer runs as a block layer (block.py): it has a norm, dropout or a residual
    connection."""
    return kind != layout.DENSE or p > 0 or residual != 0


def plan_activations(sizes, activations, capacity, checkpoint_every, kinds=None, dropout=None,
                     residual=None):
    """Where each layer's output, kept pre-activation and saved values start in the flat
    activation buffer: (act_offsets (L,), pre_offsets (L,), aux_offsets (L,), buffer length).
    See the module docstring. A layer's area holds its output, then its pre-activation when
    kept, then what a block layer saves for its backward pass (block.aux_layout; -1 for a plain
    layer). kinds: the layer kinds (None: all dense); dropout (L,) and residual (L,): each
    layer's dropout probability and residual flag (None: none)."""
    n_layers = len(sizes) - 1
    kinds, dropout, residual = _block_extras(kinds, n_layers, dropout, residual)
    widths = [capacity * int(s) for s in sizes[1:]]
    keeps_pre = [ACTIVATIONS[int(code)].uses_input for code in activations]
    # (A kind's code is block.py's code of its norm: DENSE none, LAYER_NORM, BATCH_NORM.)
    saved = [block.aux_layout(kind, int(n_out), p, r, capacity)[-1] if is_block(kind, p, r)
             else 0
             for kind, n_out, p, r in zip(kinds, sizes[1:], dropout, residual)]
    blocks = [w * (2 if pre else 1) + extra for w, pre, extra in zip(widths, keeps_pre, saved)]
    act_offsets = np.zeros(n_layers, dtype=np.int64)
    kept = 0
    for layer in range(n_layers):
        if _is_kept(layer, n_layers, checkpoint_every):
            act_offsets[layer] = kept
            kept += blocks[layer]
    widest_segment = segment = 0
    for layer in range(n_layers):
        if _is_kept(layer, n_layers, checkpoint_every):
            segment = 0
        else:
            act_offsets[layer] = kept + segment
            segment += blocks[layer]
            widest_segment = max(widest_segment, segment)
    pre_offsets = np.array([offset + width if pre else -1 for offset, width, pre
                            in zip(act_offsets, widths, keeps_pre)], dtype=np.int64)
    aux_offsets = np.array([offset + width * (2 if pre else 1) if is_block(kind, p, r) else -1
                            for offset, width, pre, kind, p, r
                            in zip(act_offsets, widths, keeps_pre, kinds, dropout, residual)],
                           dtype=np.int64)
    return act_offsets, pre_offsets, aux_offsets, kept + widest_segment


def running_layout(sizes, kinds=None):
    """(running_offsets (L,), length): where each batch-normalised layer's running mean (then,
    its width later, its running variance) starts in a Net's running buffer; -1 for the
    others."""
    n_layers = len(sizes) - 1
    kinds = [layout.DENSE] * n_layers if kinds is None else [int(k) for k in kinds]
    offsets, length = [], 0
    for kind, n_out in zip(kinds, sizes[1:]):
        if layout.LAYER_KINDS[kind].norm == "batch":
            offsets.append(length)
            length += 2 * int(n_out)
        else:
            offsets.append(-1)
    return np.array(offsets, dtype=np.int64), length


def new_running(sizes, kinds=None):
    """A running buffer for a Net of these widths and kinds, as nn.BatchNorm1d starts them:
    means 0, variances 1 (float64)."""
    offsets, length = running_layout(sizes, kinds)
    running = np.zeros(length, dtype=np.float64)
    for offset, n_out in zip(offsets.tolist(), list(sizes)[1:]):
        if offset >= 0:
            running[offset + int(n_out):offset + 2 * int(n_out)] = 1.0
    return running


def bfloat16_length(sizes, capacity, n_params):
    """Length of a bfloat16 Net's bits buffer (see the module docstring)."""
    return n_params + capacity * (int(max(sizes[:-1])) + int(max(sizes[1:])))


def make_net(sizes, activations, capacity, checkpoint_every=1, loss=None, l2=0.0, kinds=None,
             dropout=None, residual=None, running=None, counter=None, precision=FLOAT32):
    """Build a Net (plain Python; call it outside compiled code). Returns (net, acts_size).
    loss: a name of losses.LOSS_CODES, or None to choose by the target's type
    (losses.DEFAULT_LOSS: integer labels take softmax cross-entropy, float targets MSE). l2:
    the L2 penalty on the weights (>= 0). kinds: the layers' kinds, codes of
    layout.LAYER_KINDS (None: all dense; checked). dropout (L,): each layer's dropout
    probability in [0, 1) (None: none); residual (L,): whether each layer adds its input to its
    output (its widths must be equal; None: none). running: the batch norms' running
    statistics (new_running's layout; None: new ones), float64, updated in place by training
    passes; counter: int64 array [seed, training passes so far, row base] that keys the
    dropout masks (None: zeros), advanced in place by each training pass (the row base is
    added to the row indices that key them: a data-parallel rank's first global row). The
    running and counter arrays are shared, not copied: a Net rebuilt for a larger capacity
    passes them on. precision: the matrix products' code of bfloat16.PRECISIONS (bfloat16 ones
    need a float32 model).
    Arguments that make no Net raise TypeError or ValueError naming them."""
    sizes = _integers("sizes", sizes)
    n_layers = len(sizes) - 1
    if n_layers < 1 or sizes.min() < 1:
        raise ValueError(f"sizes: expected 2 or more layer widths, each at least 1, got "
                         f"{sizes.tolist()}")
    activations = _integers("activations", activations)
    if len(activations) != n_layers or not all(0 <= a < len(ACTIVATIONS) for a in activations):
        raise ValueError(f"activations: expected a code of kernels.CODES (0 to "
                         f"{len(ACTIVATIONS) - 1}) per layer ({n_layers}), got "
                         f"{activations.tolist()}")
    capacity = _integer("capacity", capacity, 0)
    checkpoint_every = _integer("checkpoint_every", checkpoint_every, 1)
    if loss is not None and loss not in LOSS_CODES:
        raise ValueError(f"loss: expected None or one of {sorted(LOSS_CODES)}, got {loss!r}")
    if not (isinstance(l2, numbers.Real) and math.isfinite(l2) and l2 >= 0):
        raise ValueError(f"l2: expected a finite number >= 0, got {l2!r}")
    if precision not in range(len(PRECISIONS)):
        raise ValueError(f"precision: expected a code of kernels.PRECISIONS (0 to "
                         f"{len(PRECISIONS) - 1}), got {precision!r}")
    kinds, dropout, residual = _block_extras(kinds, n_layers, dropout, residual)
    offsets = layout.param_offsets(sizes, kinds)   # checks the kinds
    for layer, r in enumerate(residual):
        if r and sizes[layer] != sizes[layer + 1]:
            raise ValueError(f"residual: layer {layer} has widths {sizes[layer]} -> "
                             f"{sizes[layer + 1]}; a residual connection needs them equal")
    act_offsets, pre_offsets, aux_offsets, acts_size = plan_activations(
        sizes, activations, capacity, checkpoint_every, kinds, dropout, residual)
    running_offsets, running_length = running_layout(sizes, kinds)
    if running is None:
        running = new_running(sizes, kinds)
    _shared("running", running, np.float64, running_length)
    if counter is None:
        counter = np.zeros(3, dtype=np.int64)
    _shared("counter", counter, np.int64, 3)
    code = -1 if loss is None else LOSS_CODES[loss]
    kinds = np.ascontiguousarray(kinds, dtype=np.int64)
    # A float32 Net's precision is None: its code is compiled with nothing of bfloat16.
    bits = aligned_zeros(0 if precision == FLOAT32 else
                         bfloat16_length(sizes, capacity, offsets[-1]), np.uint16)
    return Net(sizes, activations, offsets, capacity, checkpoint_every, act_offsets,
               pre_offsets, code, float(l2), kinds, layout.weight_lengths(sizes, kinds),
               np.array(dropout, dtype=np.float64), np.array(residual, dtype=np.int64),
               aux_offsets, running_offsets, running, counter,
               None if precision == FLOAT32 else int(precision), bits), acts_size


def make_workspace(net, acts_size, dtype):
    """Allocate the Workspace a Net needs (plain Python): acts_size is make_net's, dtype the
    model's, float32 or float64 (TypeError or ValueError, naming the argument, otherwise)."""
    if not isinstance(net, Net):
        raise TypeError(f"net: expected a Net (make_net's), got {type(net).__name__}")
    acts_size = _integer("acts_size", acts_size, 0)
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise TypeError(f"dtype: expected float32 or float64, got {np.dtype(dtype)}")
    n_layers = net.activations.shape[0]
    return Workspace(aligned_zeros(acts_size, dtype),
                     aligned_zeros(2 * net.capacity * int(net.sizes[1:].max()), dtype),
                     np.empty(net.capacity, dtype=np.float64),
                     np.zeros(n_layers, dtype=np.float64),
                     np.empty(norm_partials_size(net.param_offsets), dtype=np.float64))


# -- checks of make_net's and make_workspace's arguments ----------------------------------------


def _integer(name, value, least):
    """value as an int, or TypeError (not an integer) or ValueError (below least) naming it."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}")
    if value < least:
        raise ValueError(f"{name}: expected at least {least}, got {value}")
    return int(value)


def _integers(name, values):
    """values as a C-contiguous int64 array, or TypeError naming it (not 1-D integers)."""
    array = np.asarray(values)
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise TypeError(f"{name}: expected a 1-D sequence of integers, got {array.dtype} "
                        f"{array.shape}")
    return np.ascontiguousarray(array, dtype=np.int64)


def _shared(name, array, dtype, length):
    """Check a buffer the Net shares (running, counter): a C-contiguous 1-D array of dtype and
    length, as the compiled code takes it."""
    if not (isinstance(array, np.ndarray) and array.dtype == dtype and array.shape == (length,)
            and array.flags.c_contiguous):
        got = f"{array.dtype} {array.shape}" if isinstance(array, np.ndarray) else type(
            array).__name__
        raise ValueError(f"{name}: expected {length} {np.dtype(dtype)} values, C-contiguous, "
                         f"got {got}")
