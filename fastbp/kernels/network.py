"""The whole network's passes: forward, loss, gradient and training-step functions over a Net
and its Workspace (defined here; described, built and laid out in plan.py). Callable from
Python through fastbp's entry points (``entry``) and from a user's own ``@njit`` code.

Layers: a layer with none of normalisation, dropout or a residual connection is plain: the
dense kernels, its activation fused into the product. The others are block layers (block.py:
two units). A plain layer's backward step takes dL/d(its pre-activation) and writes the layer
below's through that layer's activation (fused into its product); a block layer's takes dL/d(
its output) and applies its own activation's gradient, so the layer above gives it the plain
dL/d(input).

Training and inference: a training pass (mlp_loss_and_grad and what calls it) advances the
Net's counter, normalises by the batch's statistics (folding them into batch normalisation's
running ones) and drops; inference (mlp_forward, mlp_forward_and_losses, mlp_loss) uses the
running statistics and does not drop (block.INFER, TRAIN, REPLAY).

Losses (the registry losses.LOSS_KINDS): integer labels (B,) and float targets (B, OC) are
told apart by their type when the code is compiled; the losses that take the same kind of
target (MSE, binary cross-entropy, ...), by the Net's loss code, in a runtime branch (one
comparison a loss a step). Each branch calls its loss through a unit, so a run still compiles
only its own loss's units (plan.units_for). The L2 penalty is a stage after the data loss's
gradient, also a unit, and skipped (no bit changed, nothing compiled) when l2 is 0; it lives
in the Net alone, so every path that computes the objective (mlp_loss, mlp_loss_and_grad,
the training step and epoch, accumulation) reads it from there.

Sample weights: the functions that compute the objective take an optional ``weights`` (B,)
float64 array, one weight >= 0 per row (the Python layer checks them). The objective is then
scikit-learn's, sum_i w_i loss_i / sum_i w_i plus the L2 penalty with the weights' sum in
place of B (losses.sample_weights_forward_backward, a unit, rescales the output's delta after
the loss). Without them (None, or left out) each function runs the code it ran before weights
existed: a compile-time branch, so the unweighted results are bitwise unchanged and cost no
extra pass, and the weighted code is compiled only when used. A batch whose weights sum to 0
has no weighted mean: its loss is NaN (0/0), so a training step refuses it; ``fit`` skips
such steps instead (see mlp_train_epoch).

Sparse x: the functions that gather a batch's rows from the data set (mlp_train_epoch) take a
rows.CSR in place of a dense x; each batch is densified into x_batch (rows.take_csr_rows, a
unit for each index type, compiled only when used) and the rest of the step is the dense one.

The heavy kernels are called through units (see _units): compiled once each, not once per
caller.

Argument checks: each public function refuses, before it writes anything (the Net's counter
included), arguments that do not fit the Net or one another (TypeError while the caller
compiles, ValueError when it runs): the rules are in _network_checks, and the end of this
module makes each function's check from them. The units then run unchecked.
"""
import math
from collections import namedtuple

from numba import njit, types
from numba.extending import overload

from ._config import INLINED, SERIAL
from ._network_checks import (ACTS, BATCH, GATHER, GRADS, LABELS, PARAMS, PLAN, ROW_IDS, STEPS,
                              TARGET, UPDATE, WEIGHTS, WORK, checks, gathered)
from ._native import matrix_view
from . import activations, block, dense, losses, rows, update
from .bfloat16 import FLOAT32
from ._units import caller
from .activations import IDENTITY
from .block import INFER, REPLAY, TRAIN
from .losses import DEFAULT_LOSS, LOSS_KINDS, TARGETS, weight_sum
from .update import check_update


Net = namedtuple("Net", ["sizes", "activations", "param_offsets", "capacity",
                         "checkpoint_every", "act_offsets", "pre_offsets", "loss", "l2",
                         "kinds", "weight_lengths", "dropout", "residual", "aux_offsets",
                         "running_offsets", "running", "counter", "precision", "bits"])
Workspace = namedtuple("Workspace", ["acts", "deltas", "losses", "layer_sq", "partials"])

# Every unit is declared beside its kernel (dense, activations, rows, update, losses); the
# network calls these through their callers.
l2_penalty_unit = losses.l2_penalty_unit
sample_weights_unit = losses.sample_weights_unit
_activation_backward = activations.activation_backward_unit   # the output's, after MSE
# The unit of each update kind.
UPDATE_UNITS = {code: kind.unit for code, kind in update.KINDS.items()}


# -- views -------------------------------------------------------------------------------------


@njit(**INLINED)
def _dense_params(params, net, layer):
    """A dense layer's (weight (C, OC), bias (OC,)) views into the flat params (or grads): its
    blocks of layout.LAYER_KINDS[DENSE], in their order."""
    start = net.param_offsets[layer]
    n_in, n_out = net.sizes[layer], net.sizes[layer + 1]
    weight = matrix_view(params, start, n_in, n_out)
    bias = params[start + n_in * n_out:start + (n_in + 1) * n_out]
    return weight, bias


@njit(**INLINED)
def _precision_code(precision):
    """A Net's precision as a code (FLOAT32 for a float32 Net's None). Pruned as
    dense.dense_forward_layer's branches are: precision must be an argument of the compiled
    function this is inlined into (so _forward_layers and _data_loss_and_grad take it)."""
    if precision is None:
        return FLOAT32
    return precision


@njit(**INLINED)
def _layer_output(acts, net, n_rows, layer):
    return matrix_view(acts, net.act_offsets[layer], n_rows, net.sizes[layer + 1])


@njit(**INLINED)
def _layer_pre(acts, net, n_rows, layer):
    """The layer's kept pre-activation, or a view with no rows when it keeps none."""
    if net.pre_offsets[layer] < 0:
        return matrix_view(acts, 0, 0, net.sizes[layer + 1])
    return matrix_view(acts, net.pre_offsets[layer], n_rows, net.sizes[layer + 1])


@njit(**INLINED)
def _delta_half(deltas, half):
    """Half 0 or 1 of the delta buffer, as a flat view."""
    size = deltas.shape[0] // 2
    return deltas[half * size:(half + 1) * size]


@njit(**INLINED)
def _delta(deltas, n_rows, width, half):
    return matrix_view(_delta_half(deltas, half), 0, n_rows, width)


# -- layers: plain dense, or a block layer (block.py) -------------------------------------------


@njit(**INLINED)
def _layer_forward(acts, inp, params, net, layer, scratch, mode, row_ids, precision):
    """Layer `layer`'s forward pass from inp (B, C) into its area of acts: a plain layer's
    output act(inp @ weight + bias) (and its pre-activation, when kept); a block layer's in
    mode (block.INFER, TRAIN or REPLAY), keying its dropout masks by row_ids (B,) (empty: the
    rows' positions) and the Net's counter. scratch: as dense_forward's (empty for none)."""
    n_rows = inp.shape[0]
    if net.aux_offsets[layer] < 0:
        weight, bias = _dense_params(params, net, layer)
        dense.dense_forward_layer(_layer_output(acts, net, n_rows, layer),
                                  _layer_pre(acts, net, n_rows, layer), inp, weight, bias,
                                  net.activations[layer], scratch, net.bits,
                                  net.param_offsets[layer], net.param_offsets[-1], precision)
        return
    block.block_forward_unit(
        acts, net.running, params, inp, scratch, row_ids, net.sizes[layer],
        net.sizes[layer + 1], net.activations[layer], net.param_offsets[layer],
        net.act_offsets[layer], net.pre_offsets[layer], net.aux_offsets[layer],
        net.running_offsets[layer], net.capacity, net.kinds[layer], net.dropout[layer],
        net.residual[layer], net.counter[0], net.counter[1], net.counter[2], layer, mode,
        net.bits, net.param_offsets[-1], _precision_code(precision))


@njit(**INLINED)
def _layer_backward(dinp, grads, dpre, inp, inp_pre, inp_activation, acts, params, net, layer,
                    precision):
    """From dpre (B, OC): dL/d(pre-activation) for a plain layer, dL/d(output) for a block
    layer (which applies its own activation's gradient). The layer's parameter gradients go
    into grads, and dinp (B, C) = dL/d(inp) * act'(inp_pre) for inp = act(inp_pre), act the
    code inp_activation (IDENTITY: the plain dL/d(inp), what a block layer below takes; dinp
    without rows: skipped)."""
    if net.aux_offsets[layer] < 0:
        weight, _ = _dense_params(params, net, layer)
        dweight, dbias = _dense_params(grads, net, layer)
        dense.dense_backward_layer(dinp, dweight, dbias, dpre, inp, weight, inp_activation,
                                   inp_pre, net.bits, net.param_offsets[layer],
                                   net.param_offsets[-1], precision)
        return
    block.block_backward_unit(
        dinp, grads, dpre, inp, inp_pre, inp_activation, acts, net.running, params,
        net.sizes[layer], net.sizes[layer + 1], net.activations[layer],
        net.param_offsets[layer], net.act_offsets[layer], net.pre_offsets[layer],
        net.aux_offsets[layer], net.running_offsets[layer], net.capacity, net.kinds[layer],
        net.dropout[layer], net.residual[layer], net.bits, net.param_offsets[-1],
        _precision_code(precision))


# -- forward and loss --------------------------------------------------------------------------


def _unliteral(value):
    """value, typed as a plain int64 where compiled code passes a constant: Numba compiles a
    function once more for each constant int it is called with (it types them as literals), and
    _forward_layers, called with three constant modes (and a first layer of 0 or a variable),
    compiled three times in a training run."""
    return value


@overload(_unliteral, jit_options=SERIAL, prefer_literal=False)
def _unliteral_impl(value):
    return lambda value: value


@njit(**SERIAL)
def _forward_layers(acts, params, x, net, first, stop, scratch, mode, row_ids, precision):
    """Layers first..stop-1, reading layer first-1's output (x when first == 0), in mode
    (block.INFER, TRAIN or REPLAY; see _layer_forward). scratch: as dense_forward's (an empty
    one for none). precision: net.precision, as an argument (see _precision_code)."""
    n_rows = x.shape[0]
    for layer in range(first, stop):
        inp = x if layer == 0 else _layer_output(acts, net, n_rows, layer - 1)
        _layer_forward(acts, inp, params, net, layer, scratch, mode, row_ids, precision)


@njit(**INLINED)
def _forward(acts, params, x, net, scratch, mode, row_ids):
    """mlp_forward with a scratch for dense_forward, in mode (see _forward_layers)."""
    n_layers = net.activations.shape[0]
    _forward_layers(acts, params, x, net, _unliteral(0), n_layers, scratch,
                    _unliteral(mode), row_ids, net.precision)
    return _layer_output(acts, net, x.shape[0], n_layers - 1)


@njit(**SERIAL)
def mlp_forward(acts, params, x, net):
    """Forward pass of a whole MLP; returns the output view (B, sizes[-1]) into acts.
    x (B, sizes[0]) with B <= net.capacity; params of net.param_offsets[-1] elements; acts: the
    Workspace's activation buffer (or as long). It infers: batch normalisation uses its running
    statistics, dropout is off. Arguments that do not fit the Net raise (see "argument checks"
    below) before anything is written."""
    _check_forward(acts, params, x, net)
    return _infer(acts, params, x, net)


@njit(**SERIAL)
def _infer(acts, params, x, net):
    """mlp_forward on checked arguments."""
    return _forward(acts, params, x, net, acts[:0], INFER, net.sizes[:0])


# The loss stage is written from the registry (losses.LOSS_KINDS), as apply_update is from
# update.KINDS below. Integer labels (B,) and float values (B, OC) are told apart by their type
# when the code is compiled; the losses that take the same kind of target, by the Net's loss
# code, in a runtime branch, one per loss, each calling its loss's unit (so a run compiles only
# the units of its own loss: units_for). The kind's default loss (losses.DEFAULT_LOSS) comes
# last and takes any other code (-1: a Net made without a loss).
_LOSS_STAGE = """def {name}({params}):
{branches}"""
_STAGE_PARAMS = {True: "dout, losses, output, target, acts, net",
                 False: "losses, output, target, net"}


def _loss_call(kind, with_grad, indent):
    """The lines of a loss stage's branch for one loss."""
    forward_backward, loss = kind.units
    if not with_grad:
        return [f"{indent}return {loss}(losses, output, target)"]
    lines = [f"{indent}loss = {forward_backward}(dout, losses, output, target)"]
    if kind.fused is None:   # a fused loss's output activation is the identity
        lines.append(f"{indent}_output_activation_backward(dout, output, acts, net)")
    return lines + [f"{indent}return loss"]


def _loss_stage(targets, with_grad):
    """The loss stage for one kind of target: with_grad, f(dout, losses, output, target, acts,
    net) -> the mean loss, its gradient with respect to the last pre-activation in dout;
    else f(losses, output, target, net) -> the mean loss. Each row's loss goes to losses."""
    name = f"_{targets}_loss" + ("_and_output_grad" if with_grad else "")
    default = LOSS_KINDS[DEFAULT_LOSS[targets]]
    scope = {"_output_activation_backward": _output_activation_backward,
             "__name__": __name__}
    lines = []
    for kind in [k for k in LOSS_KINDS.values() if k.targets == targets and k is not default]:
        lines.append(f"    if net.loss == {kind.code}:")
        lines += _loss_call(kind, with_grad, " " * 8)
    lines += _loss_call(default, with_grad, " " * 4)
    for kind in LOSS_KINDS.values():
        if kind.targets == targets:
            scope.update({unit: caller(unit) for unit in kind.units})
    source = _LOSS_STAGE.format(name=name, params=_STAGE_PARAMS[with_grad],
                                branches="\n".join(lines))
    exec(compile(source, __file__, "exec"), scope)  # this file: Numba wants a real one
    return njit(**INLINED)(scope[name])


@njit(**INLINED)
def _output_activation_backward(dout, output, acts, net):
    """dout := the gradient with respect to the last pre-activation, from dout, that with
    respect to output (the last layer's); in place, nothing done for the identity."""
    last = net.activations.shape[0] - 1
    code = net.activations[last]
    if code != IDENTITY:
        pre = output
        if net.pre_offsets[last] >= 0:
            pre = _layer_pre(acts, net, output.shape[0], last)
        _activation_backward(dout, dout, output, code, pre)


_labels_loss_and_output_grad = _loss_stage("labels", True)
_values_loss_and_output_grad = _loss_stage("values", True)
_labels_loss = _loss_stage("labels", False)
_values_loss = _loss_stage("values", False)
assert TARGETS == ("labels", "values")   # the two kinds these stages are written for


def _loss_and_output_grad(dout, losses, output, target, acts, net):
    """Mean loss, and dL/d(last pre-activation) into dout: the loss stage of the target's
    kind (see above)."""
    raise NotImplementedError("compiled code only")


@overload(_loss_and_output_grad, jit_options=SERIAL)
def _loss_and_output_grad_impl(dout, losses, output, target, acts, net):
    if target.ndim == 1:
        return lambda dout, losses, output, target, acts, net: _labels_loss_and_output_grad(
            dout, losses, output, target, acts, net)
    return lambda dout, losses, output, target, acts, net: _values_loss_and_output_grad(
        dout, losses, output, target, acts, net)


def _batch_loss(losses, output, target, net):
    """Mean loss without gradient; the loss is picked as above."""
    raise NotImplementedError("compiled code only")


@overload(_batch_loss, jit_options=SERIAL)
def _batch_loss_impl(losses, output, target, net):
    if target.ndim == 1:
        return lambda losses, output, target, net: _labels_loss(losses, output, target, net)
    return lambda losses, output, target, net: _values_loss(losses, output, target, net)


@njit(**SERIAL)
def mlp_forward_and_losses(acts, losses, params, x, target, net):
    """mlp_forward, and each row's data loss (unweighted, without the L2 penalty) into losses
    (B,) float64, from that one forward pass; returns the output view (B, sizes[-1]) into acts.
    target: labels (B,) or values (B, OC), as the Net's loss takes them. The outputs are
    bitwise mlp_forward's (its products are not split over the inputs); the losses those of
    mlp_loss, whose products may be, to rounding. Checked as mlp_forward, and target must fit x
    and the Net (labels in [0, sizes[-1])), losses have x's rows."""
    _check_forward_and_losses(acts, losses, params, x, target, net)
    return _forward_and_losses(acts, losses, params, x, target, net)


@njit(**SERIAL)
def _forward_and_losses(acts, losses, params, x, target, net):
    """mlp_forward_and_losses on checked arguments."""
    output = _forward(acts, params, x, net, acts[:0], INFER, net.sizes[:0])
    _batch_loss(losses[:x.shape[0]], output, target, net)
    return output


@njit(**SERIAL)
def mlp_loss(work, params, x, target, net, weights=None, mode=INFER):
    """Mean loss of the batch (forward only), plus the L2 penalty when net.l2 is not 0.
    mode: INFER (batch normalisation by its running statistics, no dropout), or REPLAY: the
    objective of the last training pass's kind (batch statistics, and the dropout masks of the
    Net's counter as it stands: those of the last training pass), running statistics
    untouched; what the gradient checker differentiates.
    target: integer labels (B,) or values (B, OC), as the Net's loss takes them (see
    losses.LossKind); the per-sample losses (without the penalty, unweighted) go to work.losses.
    Its forward pass splits products as mlp_loss_and_grad's does, so the two losses agree to
    rounding. weights (B,) float64, optional: the weighted mean instead, and the penalty over
    the weights' sum (see the module docstring). Checked as mlp_forward_and_losses; the
    Workspace must be as make_workspace allocates it for the Net (or larger), weights (B,)."""
    _check_loss(work, params, x, target, net, weights, mode)
    return _loss(work, params, x, target, net, weights, mode)


@njit(**SERIAL)
def _loss(work, params, x, target, net, weights, mode):
    """mlp_loss on checked arguments."""
    output = _forward(work.acts, params, x, net, work.deltas, mode, net.sizes[:0])
    losses = work.losses[:x.shape[0]]
    loss = _batch_loss(losses, output, target, net)
    if weights is None:   # compile-time: the code from before weights
        if net.l2 != 0:
            loss += l2_penalty_unit(params[:0], work.partials, params, net.param_offsets,
                                net.weight_lengths, net.l2, x.shape[0])
        return loss
    total_weight = weight_sum(weights)
    loss = sample_weights_unit(matrix_view(work.deltas, 0, 0, output.shape[1]), losses, weights,
                           total_weight)
    if net.l2 != 0 and total_weight != 0:
        loss += l2_penalty_unit(params[:0], work.partials, params, net.param_offsets,
                            net.weight_lengths, net.l2, total_weight)
    return loss


# -- gradients, then update --------------------------------------------------------------------


@njit(**SERIAL)
def mlp_loss_and_grad(grads, work, params, x, target, net, weights=None, row_ids=None):
    """Forward and backward of a whole MLP; overwrites grads (same layout as params) and
    returns the mean loss. A training pass: it advances the Net's counter by one first (see
    make_net), then batch normalisation uses the batch's statistics (and folds them into its
    running ones) and dropout drops, keying each row's mask by row_ids (B,) int64 when given
    (the rows' indices in a data set), else by its position in x. With
    net.checkpoint_every = k > 1, each segment of k layers but the last is recomputed from its
    kept input just before its backward pass. With net.l2 > 0 the objective is the mean loss
    plus the L2 penalty of the batch's B rows, (l2 / (2 B)) sum ||W||^2, and (l2 / B) W is
    added to each weight's gradient (losses.l2_penalty_forward_backward). With weights (B,)
    float64 (optional), the objective is sum_i w_i loss_i / W + (l2 / (2 W)) sum ||W_l||^2,
    W = sum_i w_i (scikit-learn's; see the module docstring). Checked as mlp_loss, and grads
    and row_ids: arguments that do not fit raise before anything (the counter included) is
    written."""
    _check_loss_and_grad(grads, work, params, x, target, net, weights, row_ids)
    return _loss_and_grad(grads, work, params, x, target, net, weights, row_ids)


@njit(**SERIAL)
def _loss_and_grad(grads, work, params, x, target, net, weights, row_ids):
    """mlp_loss_and_grad on checked arguments."""
    net.counter[1] += 1
    ids = _row_keys(row_ids, net)
    if weights is None:   # compile-time: the code from before weights
        loss = _data_loss_and_grad(grads, work, params, x, target, net, None, 0.0, ids,
                                   net.precision)
        if net.l2 != 0:   # skipped, not added as 0: no bit changes without a penalty
            loss += l2_penalty_unit(grads, work.partials, params, net.param_offsets,
                                net.weight_lengths, net.l2, x.shape[0])
        return loss
    total_weight = weight_sum(weights)
    loss = _data_loss_and_grad(grads, work, params, x, target, net, weights, total_weight, ids,
                               net.precision)
    if net.l2 != 0 and total_weight != 0:   # (of no weight: the loss is NaN already)
        loss += l2_penalty_unit(grads, work.partials, params, net.param_offsets,
                            net.weight_lengths, net.l2, total_weight)
    return loss


def _row_keys(row_ids, net):
    """row_ids, or an empty int64 array for None (the masks are then keyed by position)."""
    raise NotImplementedError("compiled code only")


@overload(_row_keys, jit_options=SERIAL)
def _row_keys_impl(row_ids, net):
    if row_ids is None or isinstance(row_ids, types.NoneType):
        return lambda row_ids, net: net.sizes[:0]
    return lambda row_ids, net: row_ids


@njit(**SERIAL)
def _data_loss_and_grad(grads, work, params, x, target, net, weights, total_weight, row_ids,
                        precision):
    """mlp_loss_and_grad without the L2 penalty and without advancing the counter; with
    weights (else None), the weighted mean over total_weight (their sum, or that of all the
    rows of an accumulated update). row_ids: the rows' dropout keys (empty: positions)."""
    acts, deltas = work.acts, work.deltas
    n_rows = x.shape[0]
    n_layers = net.activations.shape[0]
    k = net.checkpoint_every
    # deltas are free until the loss gradient is written: the forward pass's scratch.
    output = _forward(acts, params, x, net, deltas, TRAIN, row_ids)
    dpre = _delta(deltas, n_rows, net.sizes[n_layers], 0)
    loss = _loss_and_output_grad(dpre, work.losses[:n_rows], output, target, acts, net)
    if weights is not None:   # compile-time
        loss = sample_weights_unit(dpre, work.losses[:n_rows], weights, total_weight)
    half = 0
    for layer in range(n_layers - 1, -1, -1):
        segment_start = layer - layer % k
        if k > 1 and layer % k == k - 1 and layer < n_layers - 1:
            # Entering a new segment from its top: recompute the outputs it did not keep.
            # The scratch is the half of deltas that dpre is not in: free until dinp is
            # written. (Big enough for the same input splits as the first pass, so the
            # recomputed outputs are bitwise the first ones.)
            _forward_layers(acts, params, x, net, segment_start, layer,
                            _delta_half(deltas, 1 - half), _unliteral(REPLAY), row_ids,
                            precision)
        if layer == 0:   # x: no activation, and no gradient wanted (dinp without rows)
            inp, inp_pre, inp_activation = x, x, IDENTITY
            dinp = _delta(deltas, 0, net.sizes[0], 1 - half)
        else:
            inp = _layer_output(acts, net, n_rows, layer - 1)
            inp_pre = inp
            if net.pre_offsets[layer - 1] >= 0:
                inp_pre = _layer_pre(acts, net, n_rows, layer - 1)
            # A block layer below applies its own activation's gradient (after its dropout).
            inp_activation = net.activations[layer - 1]
            if net.aux_offsets[layer - 1] >= 0:
                inp_activation = IDENTITY
            dinp = _delta(deltas, n_rows, net.sizes[layer], 1 - half)
        _layer_backward(dinp, grads, dpre, inp, inp_pre, inp_activation, acts, params, net,
                        layer, precision)
        dpre = dinp
        half = 1 - half
    return loss


# apply_update is written from the registry (update.KINDS): one branch per update kind, calling
# its unit. Compiling it compiles no unit (each branch is a call through the table), so the
# kinds a run does not use cost it nothing.
_APPLY_UPDATE = """def {name}(params, layer_sq, partials, grads, param_offsets, update):
{check}{branches}
    return math.nan, False
"""
_UPDATE_BRANCH = """    if update.kind == {code}:
        return {unit}(params, layer_sq, partials, grads, param_offsets, update.hyper,
                      update.state)"""


def _apply_update(name, checked):
    """apply_update, or (checked False) the same stage for callers that ran its check first."""
    # (__name__: the module Numba records for the code's globals, in its cache.)
    scope = {"math": math, "check_update": check_update, "__name__": __name__}
    branches = []
    for code, unit in UPDATE_UNITS.items():
        scope[unit] = update.STEP_UNITS[code]
        branches.append(_UPDATE_BRANCH.format(code=code, unit=unit))
    check = ("    check_update(params, layer_sq, partials, grads, param_offsets, update.kind,\n"
             "                 update.hyper, update.state)\n") if checked else ""
    source = _APPLY_UPDATE.format(name=name, check=check, branches="\n".join(branches))
    exec(compile(source, __file__, "exec"), scope)  # this file: Numba wants a real one
    function = scope[name]
    function.__doc__ = """The update stage: update params in place from grads by the
    optimizer's Update. Returns (gradient norm before clipping, applied); the per-layer squared
    norms are left in layer_sq (partials: their scratch; both a Workspace's). Arguments its
    step would refuse, or an update kind this build does not know, raise ValueError first
    (update.check_update): a step's unit cannot raise to its caller."""
    return njit(**INLINED)(function)


apply_update = _apply_update("apply_update", True)
_update_step = _apply_update("_update_step", False)


@njit(**SERIAL)
def mlp_train_step(params, grads, work, x, target, net, update, weights=None, row_ids=None):
    """mlp_loss_and_grad, then apply_update: one training step. Returns (loss, gradient norm,
    applied). When the loss is NaN or Inf the update is not tried (so a batch whose weights
    sum to 0 is refused); see the update kernels (update.KINDS' steps) for when they
    refuse one. weights: optional sample weights (B,) float64, as mlp_loss_and_grad's.
    Checked as mlp_loss_and_grad and apply_update, both before anything is written."""
    _check_train_step(params, grads, work, x, target, net, update, weights, row_ids)
    return _train_step(params, grads, work, x, target, net, update, weights, row_ids)


@njit(**SERIAL)
def _train_step(params, grads, work, x, target, net, update, weights, row_ids):
    """mlp_train_step on checked arguments."""
    loss = _loss_and_grad(grads, work, params, x, target, net, weights, row_ids)
    if not math.isfinite(loss):
        return loss, math.nan, False
    norm, applied = _update_step(params, work.layer_sq, work.partials, grads, net.param_offsets,
                                 update)
    return loss, norm, applied


def _take_targets(out, y, index):
    """out[i] = y[index[i]] for labels (B,) or target rows (B, OC)."""
    raise NotImplementedError("compiled code only")


@overload(_take_targets, jit_options=SERIAL)
def _take_targets_impl(out, y, index):
    if y.ndim == 1:
        def take_labels(out, y, index):
            for i in range(index.shape[0]):
                out[i] = y[index[i]]
        return take_labels
    return lambda out, y, index: rows.take_rows_unit(out, y, index)


def take_x_rows(out, x, index):
    """out (B, C) = rows index (B,) of x: a dense (M, C) matrix (rows.take_rows), or a
    rows.CSR (densified: rows.take_csr_rows), through their units."""
    raise NotImplementedError("compiled code only")


@overload(take_x_rows, jit_options=SERIAL)
def _take_x_rows_impl(out, x, index):
    if isinstance(x, types.BaseTuple):   # a CSR: its indices' type picks the unit
        if x.types[1].dtype == types.int32:
            return lambda out, x, index: rows.take_csr_rows_int32_unit(
                out, x.data, x.indices, x.indptr, index)
        return lambda out, x, index: rows.take_csr_rows_unit(out, x.data, x.indices, x.indptr,
                                                             index)
    return lambda out, x, index: rows.take_rows_unit(out, x, index)


@njit(**SERIAL)
def _gather(xb, yb, x, target, index):
    take_x_rows(xb, x, index)
    _take_targets(yb, target, index)


@njit(**SERIAL)
def mlp_accumulated_loss_and_grad(grads, micro_grads, work, x_batch, y_batch, x, target, rows,
                               batch_size, net, params, weights, w_batch):
    """The mean loss over `rows` and its gradient in grads, from micro-batches of batch_size
    rows: grads = sum over micro-batches of (rows in it / all rows) * its gradient, each
    computed into micro_grads; then the L2 penalty of all those rows, as one batch of them
    would have it. Stops at the first NaN or Inf loss and returns it.

    With sample weights (weights (N,) float64, gathered into w_batch (>= batch_size,); else
    both None): the weighted mean over all of them, each micro-batch's weighted sum divided
    by the weight W of all the rows (whose sum must not be 0) and added as it is, and the
    penalty over W.

    One training pass (the Net's counter advances by one), its dropout masks keyed by the
    rows' indices. Checked as mlp_train_epoch (but its steps' buffers), before anything is
    written."""
    _check_accumulated(grads, micro_grads, work, x_batch, y_batch, x, target, rows, batch_size,
                       net, params, weights, w_batch)
    return _accumulated_loss_and_grad(grads, micro_grads, work, x_batch, y_batch, x, target,
                                      rows, batch_size, net, params, weights, w_batch)


@njit(**SERIAL)
def _accumulated_loss_and_grad(grads, micro_grads, work, x_batch, y_batch, x, target, rows,
                               batch_size, net, params, weights, w_batch):
    """mlp_accumulated_loss_and_grad on checked arguments."""
    grads[:] = 0
    total = 0.0
    net.counter[1] += 1
    if weights is None:   # compile-time: the code from before weights
        for start in range(0, rows.shape[0], batch_size):
            stop = min(start + batch_size, rows.shape[0])
            xb, yb = x_batch[:stop - start], y_batch[:stop - start]
            _gather(xb, yb, x, target, rows[start:stop])
            loss = _data_loss_and_grad(micro_grads, work, params, xb, yb, net, None, 0.0,
                                       rows[start:stop], net.precision)
            if not math.isfinite(loss):
                return loss
            weight = (stop - start) / rows.shape[0]
            update.add_scaled(grads, micro_grads, weight)
            total += weight * loss
        if net.l2 != 0:
            total += l2_penalty_unit(grads, work.partials, params, net.param_offsets,
                                 net.weight_lengths, net.l2, rows.shape[0])
        return total
    total_weight = _rows_weight(weights, rows)
    for start in range(0, rows.shape[0], batch_size):
        stop = min(start + batch_size, rows.shape[0])
        xb, yb, wb = x_batch[:stop - start], y_batch[:stop - start], w_batch[:stop - start]
        _gather(xb, yb, x, target, rows[start:stop])
        _take_targets(wb, weights, rows[start:stop])
        loss = _data_loss_and_grad(micro_grads, work, params, xb, yb, net, wb, total_weight,
                                   rows[start:stop], net.precision)
        if not math.isfinite(loss):
            return loss
        update.add_scaled(grads, micro_grads, 1.0)
        total += loss
    if net.l2 != 0:
        total += l2_penalty_unit(grads, work.partials, params, net.param_offsets,
                             net.weight_lengths, net.l2, total_weight)
    return total


@njit(**SERIAL)
def _rows_weight(weights, rows):
    """sum of weights[rows], in float64 (0 exactly when every one of them is 0)."""
    total = 0.0
    for i in range(rows.shape[0]):
        total += weights[rows[i]]
    return total


@njit(**SERIAL)
def mlp_train_epoch(params, grads, work, x_batch, y_batch, step_losses, step_norms,
                    step_layer_sq, x, target, order, batch_size, net, update, accumulate,
                    micro_grads, weights=None, w_batch=None):
    """Many training steps in one call, so that small networks pay no per-step call.

    Each step takes the next accumulate * batch_size rows of ``order`` (row numbers into x and
    target), gathered batch_size rows at a time into x_batch (>= batch_size, C) and y_batch.
    x: a dense (N, C) matrix, or a rows.CSR of N rows and C columns (its structure checked
    beforehand: rows.csr_is_valid), whose batches are densified into x_batch. With
    accumulate = 1 a step is mlp_train_step on one batch; with accumulate > 1
    the gradients of its batches are summed, weighted by their share of its rows, into grads
    (the gradient of the mean loss over all its rows; micro_grads, of params' shape, holds
    each batch's; pass None when accumulate is 1: that code is then not compiled), then
    apply_update.
    Step k's loss, gradient norm and per-layer squared norms go to step_losses[k],
    step_norms[k] and step_layer_sq[k] (float64 arrays with at least
    ceil(len(order) / (accumulate * batch_size)) rows). Returns the number of steps applied:
    when a step is not applied (NaN or Inf loss or norm, or an update that would overflow) the
    epoch stops there, its values recorded at that index.

    Sample weights (optional): weights (N,) float64, one per row of x, gathered with the rows
    into w_batch (>= batch_size,) float64; each step's objective is then the weighted mean
    over its rows (with accumulation, over all the rows of the step). A step whose rows all
    weigh 0 has nothing to learn from and is skipped: no gradient, no update, grads and
    params untouched; it counts as done, with loss 0 and NaN for its norm and per-layer
    squared norms (the mark that it was skipped: an applied step's norm is finite).

    Checked first, nothing written before: the buffers against the Net as mlp_train_step's,
    1 <= batch_size <= net.capacity, accumulate >= 1 (micro_grads given when above 1), the
    batch buffers' and the step arrays' sizes, order's row numbers in [0, N) and their labels
    in [0, sizes[-1]) (one pass over order).
    """
    _check_train_epoch(params, grads, work, x_batch, y_batch, step_losses, step_norms,
                       step_layer_sq, x, target, order, batch_size, net, update, accumulate,
                       micro_grads, weights, w_batch)
    return _train_epoch(params, grads, work, x_batch, y_batch, step_losses, step_norms,
                        step_layer_sq, x, target, order, batch_size, net, update, accumulate,
                        micro_grads, weights, w_batch)


@njit(**SERIAL)
def _train_epoch(params, grads, work, x_batch, y_batch, step_losses, step_norms,
                 step_layer_sq, x, target, order, batch_size, net, update, accumulate,
                 micro_grads, weights, w_batch):
    """mlp_train_epoch on checked arguments."""
    n_samples = order.shape[0]
    rows_per_step = accumulate * batch_size
    step = 0
    for start in range(0, n_samples, rows_per_step):
        rows = order[start:min(start + rows_per_step, n_samples)]
        if weights is not None:   # compile-time, as the other tests of weights
            if _rows_weight(weights, rows) == 0.0:
                step_losses[step] = 0.0
                step_norms[step] = math.nan
                step_layer_sq[step, :] = math.nan
                step += 1
                continue
        if micro_grads is None:   # a compile-time branch: the other is not compiled
            xb, yb = x_batch[:rows.shape[0]], y_batch[:rows.shape[0]]
            _gather(xb, yb, x, target, rows)
            if weights is None:
                loss = _loss_and_grad(grads, work, params, xb, yb, net, None, rows)
            else:
                wb = w_batch[:rows.shape[0]]
                _take_targets(wb, weights, rows)
                loss = _loss_and_grad(grads, work, params, xb, yb, net, wb, rows)
        else:
            loss = _accumulated_loss_and_grad(grads, micro_grads, work, x_batch, y_batch, x,
                                              target, rows, batch_size, net, params, weights,
                                              w_batch)
        norm, applied = math.nan, False
        if math.isfinite(loss):   # as mlp_train_step
            norm, applied = _update_step(params, work.layer_sq, work.partials, grads,
                                         net.param_offsets, update)
        step_losses[step] = loss
        step_norms[step] = norm
        for layer in range(work.layer_sq.shape[0]):
            step_layer_sq[step, layer] = work.layer_sq[layer]
        if not applied:
            return step
        step += 1
    return step


#: The public functions' bodies, without their argument checks: for a caller that checks its
#: own arguments (fastbp's Python layer: kernels.entry).
UNCHECKED = {"mlp_forward": _infer, "mlp_forward_and_losses": _forward_and_losses,
             "mlp_loss": _loss, "mlp_loss_and_grad": _loss_and_grad,
             "mlp_accumulated_loss_and_grad": _accumulated_loss_and_grad,
             "mlp_train_step": _train_step, "mlp_train_epoch": _train_epoch,
             "apply_update": _update_step}


# -- argument checks (_network_checks) ---------------------------------------------------------

# The tuples the functions take: their class, and the kinds of the fields they check (which
# join the check of one dtype, under names such as work.acts).
_TUPLES = {"net": (Net, {}),
           "work": (Workspace, dict(acts="vector", deltas="vector", losses="float64s",
                                    layer_sq="float64s", partials="float64s")),
           "update": (update.Update, dict(kind="code", hyper="float64s", state="matrix")),
           "csr": (rows.CSR, dict(data="vector", indices="int_index", indptr="int_index"))}


def _check(kernel, kinds, rules):
    return checks(kernel, kinds, rules, _TUPLES)


_check_forward = _check(
    "mlp_forward", dict(acts="vector", params="vector", x="matrix", net="net"),
    BATCH + PARAMS + PLAN + ACTS)
_check_forward_and_losses = _check(
    "mlp_forward_and_losses",
    dict(acts="vector", losses="float64s", params="vector", x="matrix", target="target",
         net="net"),
    BATCH + PARAMS + TARGET + [("losses.shape[0] >= x.shape[0]",
                                   "losses must have a value per row of x")]
    + PLAN + ACTS + LABELS)
_check_loss = _check(
    "mlp_loss", dict(work="work", params="vector", x="matrix", target="target", net="net",
                     weights="float64s?", mode="code"),
    BATCH + PARAMS + TARGET + WEIGHTS + [("mode == INFER or mode == REPLAY",
                                               "mode must be INFER or REPLAY")]
    + PLAN + WORK + LABELS)
_check_loss_and_grad = _check(
    "mlp_loss_and_grad", dict(grads="vector", work="work", params="vector", x="matrix",
                              target="target", net="net", weights="float64s?",
                              row_ids="index?"),
    BATCH + PARAMS + GRADS + TARGET + WEIGHTS + ROW_IDS + PLAN + WORK + LABELS)
_check_train_step = _check(
    "mlp_train_step", dict(params="vector", grads="vector", work="work", x="matrix",
                           target="target", net="net", update="update", weights="float64s?",
                           row_ids="index?"),
    BATCH + PARAMS + GRADS + TARGET + WEIGHTS + ROW_IDS + PLAN + WORK + UPDATE
    + LABELS)
_check_accumulated = _check(
    "mlp_accumulated_loss_and_grad",
    dict(grads="vector", micro_grads="vector", work="work", x_batch="matrix",
         y_batch="target", x="data", target="target", rows="index", batch_size="code",
         net="net", params="vector", weights="float64s?", w_batch="float64s?"),
    GATHER + PARAMS + GRADS + [("micro_grads.shape[0] == params.shape[0]",
                                   "micro_grads must have params' length")]
    + PLAN + WORK + gathered("rows"))
_check_train_epoch = _check(
    "mlp_train_epoch",
    dict(params="vector", grads="vector", work="work", x_batch="matrix", y_batch="target",
         step_losses="float64s", step_norms="float64s", step_layer_sq="float64_matrix",
         x="data", target="target", order="index", batch_size="code", net="net",
         update="update", accumulate="code", micro_grads="vector?", weights="float64s?",
         w_batch="float64s?"),
    GATHER + STEPS + PARAMS + GRADS + PLAN + WORK + UPDATE + gathered("order"))
