"""Inverted dropout, with masks from a counter-based generator.

Element (row, j) of a layer's output is kept when a hash of (seed, step, layer, row key, j)
gives a uniform number u in [0, 1) with u >= p, and is then scaled by 1 / (1 - p) (PyTorch's
``nn.Dropout(p)``). There is no generator state to advance: the mask of an element depends on
those five numbers only, so it is the same at any thread count, after a resume from a
checkpoint (the step is saved), when a checkpointed layer is recomputed, and under MPI for the
same global rows (the row key is the row's index in the data set where there is one).

The hash is SplitMix64's finaliser, applied per element to a per-row key; u takes its top 53
bits.
"""
import math

import numpy as np
from numba import njit, prange

from ._checks import arguments, require
from ._config import INLINED, PARALLEL, SERIAL
from ._tiling import n_tiles, span

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_UNIT = 1.0 / 9007199254740992.0   # 2 ** -53


@njit(**INLINED)
def _mix(h):
    """SplitMix64's finaliser of h (uint64)."""
    h = (h ^ (h >> _S30)) * _M1
    h = (h ^ (h >> _S27)) * _M2
    return h ^ (h >> _S31)


@njit(**INLINED)
def _row_key(seed, step, layer, row):
    """The key of one row's mask in one layer at one step (all int64 >= 0)."""
    h = _mix(np.uint64(seed) + _GOLDEN)
    h = _mix(h + np.uint64(step) * _GOLDEN)
    h = _mix(h + np.uint64(layer) * _GOLDEN)
    return _mix(h + np.uint64(row) * _GOLDEN)


@njit(**INLINED)
def dropout_uniform(seed, step, layer, row, j):
    """The uniform number in [0, 1) of element (row, j): the one dropout_mask compares with
    p (for tests and for anyone who wants to rebuild a mask)."""
    return float(_mix(_row_key(seed, step, layer, row) + np.uint64(j) * _GOLDEN) >> _S11) \
        * _UNIT


@njit(**SERIAL)
def _mask_rows(out, mask, inp, p, seed, step, layer, row_ids, row_base, r0, r1):
    """Rows r0..r1-1 of the mask, and of out = inp * mask when out has rows."""
    scale = 1.0 / (1.0 - p)
    # u >= p, as integers: u = k 2^-53 with k the hash's top 53 bits, and p 2^53 is exact.
    limit = np.int64(math.ceil(p / _UNIT))
    for i in range(r0, r1):
        row = row_ids[i] + row_base if row_ids.shape[0] > 0 else i
        key = _row_key(seed, step, layer, row)
        m = mask[i]
        for j in range(m.shape[0]):
            m[j] = scale if np.int64(_mix(key + np.uint64(j) * _GOLDEN) >> _S11) >= limit \
                else 0.0
        if out.shape[0] > 0:
            o, x = out[i], inp[i]
            for j in range(m.shape[0]):
                o[j] = x[j] * m[j]


@njit(**PARALLEL)
def _masks(out, mask, inp, p, seed, step, layer, row_ids, row_base):
    n_rows = mask.shape[0]
    tiles = n_tiles(n_rows, 8 * mask.shape[1])
    if tiles == 1:
        _mask_rows(out, mask, inp, p, seed, step, layer, row_ids, row_base, 0, n_rows)
        return
    for t in prange(tiles):
        r0, r1 = span(t, tiles, n_rows)
        _mask_rows(out, mask, inp, p, seed, step, layer, row_ids, row_base, r0, r1)


@njit(**SERIAL)
def dropout_mask(mask, p, seed, step, layer, row_ids, row_base=0):
    """mask (B, N) := 1 / (1 - p) where an element is kept, 0 where it is dropped (probability
    p in [0, 1)), for the rows keyed by row_base + row_ids (B,) int64 (their indices in the
    data set), or by their positions 0..B-1 when row_ids is empty; seed, step, layer and
    row_base: int64 >= 0. Refused: p outside [0, 1), row_ids neither empty nor (B,)."""
    _mask_arguments(mask, p, seed, step, layer, row_ids, row_base)
    require(0 <= p < 1, "dropout_mask: p must be in [0, 1)")
    require(row_ids.shape[0] == 0 or row_ids.shape[0] == mask.shape[0],
            "dropout_mask: row_ids must have B elements, one per row of mask, or none")
    _masks(mask[:0], mask, mask, p, seed, step, layer, row_ids, row_base)


@njit(**SERIAL)
def dropout_forward_masked(out, mask, inp, p, seed, step, layer, row_ids, row_base=0):
    """dropout_mask into mask, and out (B, N) = inp (B, N) * mask, in one pass; out may not be
    mask. Refused: as dropout_mask, and out or inp of another shape than mask."""
    _masked_arguments(out, mask, inp, p, seed, step, layer, row_ids, row_base)
    require(out.shape == mask.shape and inp.shape == mask.shape,
            "dropout_forward_masked: out and inp must be (B, N) as mask")
    require(0 <= p < 1, "dropout_forward_masked: p must be in [0, 1)")
    require(row_ids.shape[0] == 0 or row_ids.shape[0] == mask.shape[0],
            "dropout_forward_masked: row_ids must have B elements, one per row of mask, or "
            "none")
    _masks(out, mask, inp, p, seed, step, layer, row_ids, row_base)


@njit(**SERIAL)
def _times_rows(out, inp, mask, r0, r1):
    in_place = out.ctypes.data == inp.ctypes.data
    for i in range(r0, r1):
        o, x, m = out[i], inp[i], mask[i]
        if in_place:   # one array: the loop vectorises (with two that overlap, it did not)
            for j in range(o.shape[0]):
                o[j] *= m[j]
        else:
            for j in range(o.shape[0]):
                o[j] = x[j] * m[j]


@njit(**PARALLEL)
def dropout_forward(out, inp, mask):
    """out (B, N) = inp (B, N) * mask (B, N) (dropout_mask's); out may be inp or mask.
    Refused: arrays of other shapes."""
    _forward_arguments(out, inp, mask)
    require(out.shape == inp.shape and mask.shape == inp.shape,
            "dropout_forward: out and mask must be (B, N) as inp")
    n_rows = inp.shape[0]
    tiles = n_tiles(n_rows, 2 * inp.shape[1])
    if tiles == 1:
        _times_rows(out, inp, mask, 0, n_rows)
        return
    for t in prange(tiles):
        r0, r1 = span(t, tiles, n_rows)
        _times_rows(out, inp, mask, r0, r1)


@njit(**SERIAL)
def dropout_backward(dinp, dout, mask):
    """dinp (B, N) = dout (B, N) * mask: the gradient through dropout_forward (the same
    product); dinp may be dout or mask. Refused: arrays of other shapes."""
    _backward_arguments(dinp, dout, mask)
    require(dinp.shape == dout.shape and mask.shape == dout.shape,
            "dropout_backward: dinp and mask must be (B, N) as dout")
    dropout_forward(dinp, dout, mask)


# Their arguments' kinds (element by element, by Numba's indexing: any strides will do).
_MASK_KINDS = dict(p="number", seed="code", step="code", layer="code", row_ids="index",
                   row_base="code")
_mask_arguments = arguments("dropout_mask", any_layout=True, mask="matrix", **_MASK_KINDS)
_masked_arguments = arguments("dropout_forward_masked", any_layout=True, out="matrix",
                              mask="matrix", inp="matrix", **_MASK_KINDS)
_forward_arguments = arguments("dropout_forward", any_layout=True, out="matrix", inp="matrix",
                               mask="matrix")
_backward_arguments = arguments("dropout_backward", any_layout=True, dinp="matrix",
                                dout="matrix", mask="matrix")
