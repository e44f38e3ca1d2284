"""fastbp.layout, the one statement of the flat parameter layout: offsets against a naive count,
views that share the flat buffer, and the model's per-layer views are exactly these."""
import copy

import numpy as np
import pytest

import fastbp
from fastbp import layout

SIZES = [[3, 1], [5, 7, 4, 3], [1, 1, 1], [64, 128, 10], [2, 9, 1, 6, 4]]


def naive_offsets(sizes):
    """Written out independently: W (n_in * n_out entries), then b (n_out), layer after layer."""
    offsets, total = [0], 0
    for i in range(len(sizes) - 1):
        total += sizes[i] * sizes[i + 1]  # W
        total += sizes[i + 1]             # b
        offsets.append(total)
    return offsets


@pytest.mark.parametrize("sizes", SIZES)
def test_offsets_and_count_match_a_naive_sum(sizes):
    offsets = layout.param_offsets(sizes)
    assert offsets.dtype == np.int64 and offsets.shape == (len(sizes),)
    assert offsets.tolist() == naive_offsets(sizes)
    assert layout.n_params(sizes) == naive_offsets(sizes)[-1]
    assert type(layout.n_params(sizes)) is int
    # Any sequence of integers: a tuple, an int64 array.
    assert layout.param_offsets(np.array(sizes)).tolist() == offsets.tolist()
    assert layout.n_params(tuple(sizes)) == offsets[-1]


def test_n_params_is_exact_for_huge_widths():
    """No int64 wrap-around: load() checks widths read from a file with it."""
    assert layout.n_params([2 ** 40, 2 ** 40]) == (2 ** 40 + 1) * 2 ** 40
    with pytest.raises(OverflowError):
        layout.param_offsets([2 ** 40, 2 ** 40])


@pytest.mark.parametrize("sizes", SIZES)
def test_views_share_the_flat_buffer_in_layout_order(sizes):
    flat = np.arange(layout.n_params(sizes), dtype=np.float64)
    weights, biases = layout.layer_views(flat, sizes)
    offsets = naive_offsets(sizes)
    assert len(weights) == len(biases) == len(sizes) - 1
    for l, (w, b) in enumerate(zip(weights, biases)):
        n_in, n_out = sizes[l], sizes[l + 1]
        assert w.shape == (n_in, n_out) and b.shape == (n_out,)
        start = offsets[l]
        # Views, not copies: the memory of flat, at the block's place.
        assert np.shares_memory(w, flat) and np.shares_memory(b, flat)
        assert w.ctypes.data == flat.ctypes.data + start * flat.itemsize
        assert b.ctypes.data == flat.ctypes.data + (start + n_in * n_out) * flat.itemsize
        assert w.flags.c_contiguous and w.dtype == b.dtype == flat.dtype
        # W row-major from the block's start, then b.
        np.testing.assert_array_equal(w, np.arange(start, start + n_in * n_out)
                                      .reshape(n_in, n_out))
        np.testing.assert_array_equal(b, np.arange(start + n_in * n_out, offsets[l + 1]))
    # Writing through a view writes the flat buffer, and the other way round.
    flat[:] = 0
    weights[-1][-1, -1] = 7.0
    biases[0][-1] = 5.0
    assert flat[offsets[-1] - sizes[-1] - 1] == 7.0 and flat[offsets[1] - 1] == 5.0
    assert np.count_nonzero(flat) == 2


def test_layer_views_refuses_a_buffer_of_the_wrong_size():
    with pytest.raises(ValueError, match="expected a 1-D array of 89 parameters"):
        layout.layer_views(np.zeros(88), [5, 7, 4, 3])
    with pytest.raises(ValueError, match="1-D"):
        layout.layer_views(np.zeros((89, 1)), [5, 7, 4, 3])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_model_views_are_the_layouts(dtype):
    sizes = [5, 7, 4, 3]
    model = fastbp.MLP(sizes, dtype=dtype, seed=0, activation=["tanh", "relu"])
    assert model.n_params == layout.n_params(sizes) == model.params.size == model.grads.size
    for flat, views in ((model.params, (model.weights, model.biases)),
                        (model.grads, (model.weight_grads, model.bias_grads))):
        expected = layout.layer_views(flat, sizes)
        for got_list, want_list in zip(views, expected):
            assert len(got_list) == len(want_list) == len(sizes) - 1
            for got, want in zip(got_list, want_list):
                assert np.shares_memory(got, flat)
                assert got.shape == want.shape and got.strides == want.strides
                assert got.ctypes.data == want.ctypes.data  # the same memory, element for element
    # And they stay so after a copy (views rebuilt into the copy's own buffers).
    clone = copy.deepcopy(model)
    for w, want in zip(clone.weights, layout.layer_views(clone.params, sizes)[0]):
        assert np.shares_memory(w, clone.params) and w.ctypes.data == want.ctypes.data
