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


# -- layer kinds --------------------------------------------------------------------------------


def kinds_sizes(code):
    """Widths a layer of this kind takes, in a network of three layers all of it."""
    return [6, 6, 6, 6] if layout.LAYER_KINDS[code].same_width else [5, 7, 4, 3]


def check_layout(sizes, kinds):
    """param_offsets, n_params, weight_lengths and layer_blocks agree with the kinds' blocks:
    each layer's blocks, in order, tile its part of the flat array exactly."""
    offsets = layout.param_offsets(sizes, kinds)
    total = layout.n_params(sizes, kinds)
    assert offsets[0] == 0 and offsets[-1] == total and type(total) is int
    flat = np.arange(total, dtype=np.float64)
    views = layout.layer_blocks(flat, sizes, kinds)
    lengths = layout.weight_lengths(sizes, kinds)
    assert len(views) == len(lengths) == len(sizes) - 1
    for l, (code, blocks) in enumerate(zip(kinds, views)):
        declared = layout.LAYER_KINDS[code].blocks(sizes[l], sizes[l + 1])
        assert list(blocks) == [b.name for b in declared]
        start = offsets[l]
        for block in declared:
            view = blocks[block.name]
            assert view.shape == block.shape and np.shares_memory(view, flat)
            np.testing.assert_array_equal(view.ravel(), np.arange(start, start + view.size))
            start += view.size
        assert start == offsets[l + 1]
        assert lengths[l] == sum(np.prod(b.shape, dtype=int) for b in declared if b.penalised)


@pytest.mark.parametrize("code", range(len(layout.LAYER_KINDS)))
def test_every_layer_kind_lays_out_consistently(code):
    sizes = kinds_sizes(code)
    check_layout(sizes, [code] * (len(sizes) - 1))
    assert layout.LAYER_KIND_CODES[layout.LAYER_KINDS[code].name] == code


@pytest.mark.parametrize("code", range(len(layout.LAYER_KINDS)))
def test_every_layer_kind_has_kernels(code):
    """A kind's code is the block layer's code of its normalisation (none for dense), and a
    network with a normalised layer readies the block layer's units."""
    from fastbp.kernels import block, plan
    norm = layout.LAYER_KINDS[code].norm
    assert code == {None: 0, "layer": block._LAYER_NORM, "batch": block._BATCH_NORM}[norm]
    net, _ = plan.make_net([5, 7, 4, 3], [1, 1, 0], 4, kinds=[layout.DENSE, code, 0])
    units = plan.units_for("softmax_cross_entropy", None, net)
    assert ("block_forward" in units) == (norm is not None)
    assert all(name in fastbp.kernels._units._SPEC for name in units)


def test_dense_is_the_default_kind():
    sizes = [5, 7, 4, 3]
    dense = [layout.DENSE] * 3
    assert layout.param_offsets(sizes, dense).tolist() == layout.param_offsets(sizes).tolist()
    assert layout.weight_lengths(sizes).tolist() == [35, 28, 12]
    flat = np.arange(layout.n_params(sizes), dtype=np.float64)
    for got, want in zip(layout.layer_views(flat, sizes, dense), layout.layer_views(flat, sizes)):
        assert all(g.ctypes.data == w.ctypes.data and g.shape == w.shape
                   for g, w in zip(got, want))


def test_kinds_are_checked():
    with pytest.raises(ValueError, match="expected 3 layer kinds"):
        layout.param_offsets([5, 7, 4, 3], [layout.DENSE] * 2)
    with pytest.raises(ValueError, match="unknown layer kind 99"):
        layout.n_params([5, 7, 4, 3], [0, 99, 0])
    with pytest.raises(ValueError, match="unknown layer kind"):
        fastbp.kernels.make_net([5, 7, 3], [1, 0], 4, kinds=[0, -1])


def test_the_layout_takes_kinds_unlike_dense(monkeypatch):
    """The seam the next kinds need, with two made-up ones: one whose blocks are not (W, b)
    and not penalised (a normalisation's scale and shift), one with no parameters; both as
    wide as their input."""
    scale_shift = layout.LayerKind(
        "scale_shift", lambda n_in, n_out: (layout.Block("scale", (n_out,), False),
                                            layout.Block("shift", (n_out,), False)),
        True, None, None)
    nothing = layout.LayerKind("nothing", lambda n_in, n_out: (), True, None, None)
    monkeypatch.setattr(layout, "LAYER_KINDS", layout.LAYER_KINDS + (scale_shift, nothing))
    norm, none = len(layout.LAYER_KINDS) - 2, len(layout.LAYER_KINDS) - 1
    sizes, kinds = [5, 7, 7, 7, 3], [layout.DENSE, norm, none, layout.DENSE]
    check_layout(sizes, kinds)
    assert layout.param_offsets(sizes, kinds).tolist() == [0, 42, 56, 56, 80]
    assert layout.weight_lengths(sizes, kinds).tolist() == [35, 0, 0, 21]
    weights, biases = layout.layer_views(np.zeros(80), sizes, kinds)
    assert [w is None for w in weights] == [False, True, True, False]
    assert [b is None for b in biases] == [False, True, True, False]
    with pytest.raises(ValueError, match="as wide as its input"):
        layout.param_offsets([5, 7, 4], [layout.DENSE, norm])



def test_the_activation_plan_makes_room_for_what_a_block_layer_saves():
    """After a block layer's output (and kept pre-activation): xhat, the activation's output,
    the dropout mask (capacity rows of its width each) and its norm's statistics."""
    sizes, kinds = [5, 7, 7, 7, 3], [layout.DENSE, layout.LAYER_NORM, layout.BATCH_NORM, 0]
    act, pre, aux, size = fastbp.kernels.plan_activations(
        sizes, [1, 5, 1, 0], 10, 1, kinds, dropout=[0, 0.5, 0, 0], residual=[0, 1, 0, 0])
    layer_1 = 70 + 70 + (70 + 70 + 70 + 10)   # output, gelu's input, xhat, a, mask, rstd
    layer_2 = 70 + (70 + 2 * 7)                 # output, xhat, each feature's mean and rstd
    assert act.tolist() == [0, 70, 70 + layer_1, 70 + layer_1 + layer_2]
    assert pre.tolist() == [-1, 140, -1, -1]
    assert aux.tolist() == [-1, 210, 70 + layer_1 + 70, -1]
    assert size == 70 + layer_1 + layer_2 + 30


def test_a_penalised_block_after_another_is_refused(monkeypatch):
    late = layout.LayerKind(
        "late", lambda n_in, n_out: (layout.Block("bias", (n_out,), False),
                                     layout.Block("weight", (n_in, n_out), True)),
        False, None, None)
    monkeypatch.setattr(layout, "LAYER_KINDS", layout.LAYER_KINDS + (late,))
    with pytest.raises(ValueError, match="penalised ones must come first"):
        layout.weight_lengths([3, 2], [len(layout.LAYER_KINDS) - 1])


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_dense_init_is_the_models(activation):
    """The dense kind's init hook draws what MLP's initialisation draws, from the same
    generator: the same bits."""
    sizes, seed = [5, 7, 4, 3], 3
    model = fastbp.MLP(sizes, activation=activation, seed=seed, dtype=np.float64)
    flat = np.full(model.n_params, np.nan)
    rng = np.random.default_rng(seed)
    codes = model.engine.codes
    for views, code, n_in, n_out in zip(layout.layer_blocks(flat, sizes), codes, sizes[:-1],
                                        sizes[1:]):
        rule = fastbp.kernels.ACTIVATIONS[code].init
        layout.LAYER_KINDS[layout.DENSE].init(views, n_in, n_out, rule, rng)
    np.testing.assert_array_equal(flat, model.params)


@pytest.mark.parametrize("checkpoint_every, l2", [(1, 0.0), (2, 0.3)])
def test_explicit_dense_kinds_give_the_same_bits(checkpoint_every, l2, rng):
    """A Net made with kinds = all dense is the default Net: the same gradients and loss, bit
    for bit (and the same buffers)."""
    from fastbp import kernels
    sizes, codes = [6, 9, 8, 7, 4], [kernels.RELU, kernels.GELU, kernels.TANH, kernels.IDENTITY]
    x = rng.normal(size=(12, 6))
    y = rng.integers(0, 4, 12)
    params = rng.normal(size=layout.n_params(sizes))
    results = []
    for kinds in (None, [layout.DENSE] * 4):
        net, acts_size = kernels.make_net(sizes, codes, 12, checkpoint_every, l2=l2, kinds=kinds)
        work = kernels.make_workspace(net, acts_size, np.float64)
        grads = np.zeros_like(params)
        loss = kernels.mlp_loss_and_grad(grads, work, params, x, y, net)
        results.append((loss, grads, net, acts_size))
    (loss0, grads0, net0, size0), (loss1, grads1, net1, size1) = results
    assert loss0 == loss1 and np.array_equal(grads0, grads1) and size0 == size1
    for a, b in zip(net0, net1):
        assert np.array_equal(a, b)
    assert net1.kinds.dtype == np.int64 and net1.weight_lengths.tolist() == [54, 72, 56, 28]
