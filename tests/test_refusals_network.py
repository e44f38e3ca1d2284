"""The network's kernels (network.py, block.py) and their builders (plan.py) refuse what they
cannot survive, from Python and from @njit code (see refusals.py), leaving their arrays as they
were; valid calls of the block kernels give the network's own results."""
import subprocess
import sys

import numpy as np
import pytest

from fastbp import kernels
from helpers import subprocess_env
from refusals import run_refusals

SETUP = """
f32 = np.float32
# (Not exported by fastbp.kernels: reached here through the module the harness looks in.)
k.mlp_forward_and_losses = k.network.mlp_forward_and_losses
k.mlp_accumulated_loss_and_grad = k.network.mlp_accumulated_loss_and_grad
net, size = k.make_net([4, 8, 3], [k.RELU, k.IDENTITY], 16)
vnet, _ = k.make_net([4, 8, 3], [k.RELU, k.IDENTITY], 16, loss="mse")
work = k.make_workspace(net, size, f32)
P = int(net.param_offsets[-1])
params = np.full(P, 0.1, f32); grads = np.zeros_like(params)
x = np.ones((5, 4), f32); y = np.array([0, 1, 2, 0, 1]); v = np.zeros((5, 3), f32)
bad_y = np.array([0, 1, 3, 0, 1]); negative_y = np.array([0, -1, 2, 0, 1])
big = np.ones((64, 4), f32); big_y = np.zeros(64, np.int64)
def replaced(work, **fields):
    return work._replace(**fields)
short_acts = k.make_workspace(net, size // 2, f32)
work64 = k.make_workspace(net, size, np.float64)
upd = k.sgd_spec(0.1, np.inf, f32)
upd64 = k.sgd_spec(0.1, np.inf, np.float64, momentum=0.9, n_params=P)
# An epoch: 20 rows, batches of 4 (5 steps).
X = np.ones((20, 4), f32); Y = np.arange(20) % 3; order = np.arange(20)
xb = np.zeros((4, 4), f32); yb = np.zeros(4, np.int64)
sl = np.zeros(5); sn = np.zeros(5); slq = np.zeros((5, 2))
csr = k.CSR(np.ones(20, f32), np.zeros(20, np.int32), np.arange(21))
# A block layer (layer norm, dropout, residual), then a plain one.
bnet, bsize = k.make_net([4, 4, 3], [k.RELU, k.IDENTITY], 8, kinds=[1, 0], dropout=[0.5, 0.0],
                         residual=[1, 0])
bwork = k.make_workspace(bnet, bsize, f32)
bparams = np.full(int(bnet.param_offsets[-1]), 0.1, f32)
bx = np.ones((3, 4), f32)
def layer(**changes):
    args = dict(n_in=4, n_out=4, activation=k.RELU, param_offset=0,
                act_offset=int(bnet.act_offsets[0]), pre_offset=int(bnet.pre_offsets[0]),
                aux_offset=int(bnet.aux_offsets[0]), running_offset=int(bnet.running_offsets[0]),
                capacity=8, norm=1, p=0.5, residual=1)
    args.update(changes)
    return args
def fwd(**changes):
    a = dict(acts=bwork.acts, running=bnet.running, params=bparams, inp=bx,
             scratch=bwork.deltas[:0], row_ids=bnet.sizes[:0])
    a.update(layer())
    a.update(seed=0, step=0, row_base=0, layer=0, mode=k.TRAIN, bits=bnet.bits, rows_at=0,
             precision=0)
    a.update(changes)
    return tuple(a.values())
def bwd(**changes):
    a = dict(dinp=np.zeros((3, 4), f32), grads=np.zeros_like(bparams), dout=np.ones((3, 4), f32),
             inp=bx, inp_pre=bx, inp_activation=k.IDENTITY, acts=bwork.acts,
             running=bnet.running, params=bparams)
    a.update(layer())
    a.update(bits=bnet.bits, rows_at=0, precision=0)
    a.update(changes)
    return tuple(a.values())
aux_end = int(bnet.aux_offsets[0]) + 1
"""

# The epoch's arguments, then the accumulated gradient's, with one of them replaced.
EPOCH = ("params, grads, work, {xb}, {yb}, {sl}, sn, {slq}, {X}, {Y}, {order}, {batch}, net, "
         "{upd}, {acc}, {micro}, {weights}, {wb}")
EPOCH_DEFAULTS = dict(xb="xb", yb="yb", sl="sl", slq="slq", X="X", Y="Y", order="order",
                      batch="4", upd="upd", acc="1", micro="None", weights="None", wb="None")


def epoch(**changes):
    return EPOCH.format(**dict(EPOCH_DEFAULTS, **changes))


def accumulated(rows="order", micro="np.zeros_like(params)"):
    return f"grads, {micro}, work, xb, yb, X, Y, {rows}, 4, net, params, None, None"


CASES = [
    # label, kernel, arguments, exception, text
    ("forward: batch above capacity", "mlp_forward", "work.acts, params, big, net",
     "ValueError", "mlp_forward: x must have at most net.capacity rows"),
    ("forward: x's columns", "mlp_forward", "work.acts, params, np.ones((5, 3), f32), net",
     "ValueError", "mlp_forward: x must have net.sizes[0] columns"),
    ("forward: params short", "mlp_forward", "work.acts, params[:10], x, net", "ValueError",
     "mlp_forward: params must have net.param_offsets[-1] elements"),
    ("forward: acts short", "mlp_forward", "work.acts[:8], params, x, net", "ValueError",
     "mlp_forward: acts is shorter than the Net's plan needs"),
    ("forward: float64 x", "mlp_forward", "work.acts, params, x.astype(np.float64), net",
     "TypeError", "mlp_forward: x is float64 but acts is float32"),
    ("forward: strided x", "mlp_forward", "work.acts, params, np.ones((5, 8), f32)[:, ::2], net",
     "TypeError", "mlp_forward: x must be C-contiguous"),
    ("forward: not a Net", "mlp_forward", "work.acts, params, x, work", "TypeError",
     "mlp_forward: net must be a Net"),
    ("forward: bfloat16 without its buffer", "mlp_forward",
     "work.acts, params, x, net._replace(precision=2)", "ValueError",
     "mlp_forward: net.bits is shorter than the Net's plan needs"),
    ("forward_and_losses: labels", "mlp_forward_and_losses",
     "work.acts, work.losses, params, x, bad_y, net", "ValueError",
     "mlp_forward_and_losses: target's labels must be in [0, net.sizes[-1])"),
    ("forward_and_losses: losses short", "mlp_forward_and_losses",
     "work.acts, np.zeros(2), params, x, y, net", "ValueError",
     "mlp_forward_and_losses: losses must have a value per row of x"),
    ("forward_and_losses: target rows", "mlp_forward_and_losses",
     "work.acts, work.losses, params, x, y[:4], net", "ValueError",
     "target must have as many rows as x"),
    ("loss: values' width", "mlp_loss", "work, params, x, np.zeros((5, 2), f32), vnet",
     "ValueError", "mlp_loss: target must have net.sizes[-1] columns"),
    ("loss: weights", "mlp_loss", "work, params, x, y, net, np.ones(4)", "ValueError",
     "mlp_loss: weights must have one value per row of x"),
    ("loss: short acts", "mlp_loss", "short_acts, params, x, y, net", "ValueError",
     "mlp_loss: work.acts is shorter than the Net's plan needs"),
    ("loss: int32 labels", "mlp_loss", "work, params, x, y.astype(np.int32), net", "TypeError",
     "mlp_loss: target must be int64 labels (B,) or a (B, OC) array of params' dtype, not "
     "array(int32, 1d, C)"),
    ("loss: float64 values", "mlp_loss", "work, params, x, v.astype(np.float64), vnet",
     "TypeError", "target must be int64 labels (B,) or a (B, OC) array of params' dtype"),
    ("loss_and_grad: batch above capacity", "mlp_loss_and_grad",
     "grads, work, params, big, big_y, net", "ValueError",
     "mlp_loss_and_grad: x must have at most net.capacity rows"),
    ("loss_and_grad: params half", "mlp_loss_and_grad",
     "grads[:P // 2], work, params[:P // 2], x, y, net", "ValueError",
     "mlp_loss_and_grad: params must have net.param_offsets[-1] elements"),
    ("loss_and_grad: grads short", "mlp_loss_and_grad", "grads[:10], work, params, x, y, net",
     "ValueError", "mlp_loss_and_grad: grads must have params' length"),
    ("loss_and_grad: label above", "mlp_loss_and_grad", "grads, work, params, x, bad_y, net",
     "ValueError", "mlp_loss_and_grad: target's labels must be in [0, net.sizes[-1])"),
    ("loss_and_grad: negative label", "mlp_loss_and_grad",
     "grads, work, params, x, negative_y, net", "ValueError", "target's labels must be in"),
    ("loss_and_grad: row_ids", "mlp_loss_and_grad",
     "grads, work, params, x, y, net, None, np.arange(4)", "ValueError",
     "mlp_loss_and_grad: row_ids must have one value per row of x"),
    ("loss_and_grad: float64 x", "mlp_loss_and_grad",
     "grads, work, params, x.astype(np.float64), y, net", "TypeError",
     "mlp_loss_and_grad: x is float64 but grads is float32"),
    ("loss_and_grad: int32 labels", "mlp_loss_and_grad",
     "grads, work, params, x, y.astype(np.int32), net", "TypeError",
     "mlp_loss_and_grad: target must be int64 labels (B,)"),
    ("loss_and_grad: float64 Workspace", "mlp_loss_and_grad", "grads, work64, params, x, y, net",
     "TypeError", "work.acts, work.deltas are float64 but grads is float32"),
    ("loss_and_grad: deltas short", "mlp_loss_and_grad",
     "grads, replaced(work, deltas=work.deltas[:8]), params, x, y, net", "ValueError",
     "mlp_loss_and_grad: work.deltas is shorter than the Net's plan needs"),
    ("loss_and_grad: losses short", "mlp_loss_and_grad",
     "grads, replaced(work, losses=work.losses[:2]), params, x, y, net", "ValueError",
     "mlp_loss_and_grad: work.losses must have net.capacity values"),
    ("loss_and_grad: partials short", "mlp_loss_and_grad",
     "grads, replaced(work, partials=work.partials[:0]), params, x, y, net", "ValueError",
     "mlp_loss_and_grad: work.partials is shorter"),
    ("loss_and_grad: a Net of a larger capacity", "mlp_loss_and_grad",
     "grads, work, params, x, y, net._replace(capacity=64)", "ValueError",
     "mlp_loss_and_grad: work.acts is shorter than the Net's plan needs"),
    ("train_step: labels", "mlp_train_step", "params, grads, work, x, bad_y, net, upd",
     "ValueError", "mlp_train_step: target's labels must be in [0, net.sizes[-1])"),
    ("train_step: state's dtype", "mlp_train_step", "params, grads, work, x, y, net, upd64",
     "TypeError", "mlp_train_step: update.state is float64 but params is float32"),
    ("train_step: update kind", "mlp_train_step",
     "params, grads, work, x, y, net, k.Update(99, upd.hyper, upd.state)", "ValueError",
     "kind"),
    ("epoch: order above", "mlp_train_epoch", epoch(order="np.arange(1, 21)"), "ValueError",
     "mlp_train_epoch: order must hold row numbers of x, in [0, N)"),
    ("epoch: order negative", "mlp_train_epoch", epoch(order="np.arange(-1, 19)"), "ValueError",
     "order must hold row numbers of x"),
    ("epoch: batch above capacity", "mlp_train_epoch",
     epoch(xb="np.zeros((32, 4), f32)", yb="np.zeros(32, np.int64)", batch="32"), "ValueError",
     "mlp_train_epoch: batch_size must be in [1, net.capacity]"),
    ("epoch: batch of 0", "mlp_train_epoch", epoch(batch="0"), "ValueError",
     "batch_size must be in [1, net.capacity]"),
    ("epoch: x_batch short", "mlp_train_epoch", epoch(xb="xb[:2]"), "ValueError",
     "mlp_train_epoch: x_batch must have batch_size rows or more"),
    ("epoch: x_batch's columns", "mlp_train_epoch", epoch(xb="np.zeros((4, 3), f32)"),
     "ValueError", "x_batch must have batch_size rows or more, of net.sizes[0] columns"),
    ("epoch: y_batch short", "mlp_train_epoch", epoch(yb="yb[:2]"), "ValueError",
     "mlp_train_epoch: y_batch must have batch_size rows or more"),
    ("epoch: step arrays short", "mlp_train_epoch", epoch(sl="sl[:2]"), "ValueError",
     "mlp_train_epoch: step_losses, step_norms and step_layer_sq must have a row per step"),
    ("epoch: step_layer_sq's columns", "mlp_train_epoch", epoch(slq="np.zeros((5, 1))"),
     "ValueError", "mlp_train_epoch: step_layer_sq must have a column per value of "
     "work.layer_sq"),
    ("epoch: accumulate 0", "mlp_train_epoch", epoch(acc="0"), "ValueError",
     "mlp_train_epoch: accumulate must be at least 1"),
    ("epoch: accumulation without micro_grads", "mlp_train_epoch", epoch(acc="2"),
     "ValueError", "mlp_train_epoch: micro_grads must be given when accumulate > 1"),
    ("epoch: micro_grads short", "mlp_train_epoch",
     epoch(acc="2", micro="np.zeros(3, f32)"), "ValueError",
     "mlp_train_epoch: micro_grads must have params' length"),
    ("epoch: labels", "mlp_train_epoch", epoch(Y="np.arange(20) % 4"), "ValueError",
     "mlp_train_epoch: target's labels at order must be in [0, net.sizes[-1])"),
    ("epoch: target's rows", "mlp_train_epoch", epoch(Y="Y[:10]"), "ValueError",
     "mlp_train_epoch: target must have as many rows as x"),
    ("epoch: x's columns", "mlp_train_epoch", epoch(X="np.ones((20, 3), f32)"), "ValueError",
     "mlp_train_epoch: x must have net.sizes[0] columns"),
    ("epoch: weights", "mlp_train_epoch", epoch(weights="np.ones(10)", wb="np.zeros(4)"),
     "ValueError", "mlp_train_epoch: weights must have one value per row of x"),
    ("epoch: weights without w_batch", "mlp_train_epoch", epoch(weights="np.ones(20)"),
     "TypeError", "mlp_train_epoch: w_batch must be given with weights"),
    ("epoch: w_batch short", "mlp_train_epoch", epoch(weights="np.ones(20)", wb="np.zeros(2)"),
     "ValueError", "mlp_train_epoch: w_batch must have batch_size values or more"),
    ("epoch: int32 y_batch", "mlp_train_epoch", epoch(yb="yb.astype(np.int32)"), "TypeError",
     "mlp_train_epoch: y_batch must be int64 labels (B,)"),
    ("epoch: CSR of two index types", "mlp_train_epoch",
     epoch(X="k.CSR(csr.data, csr.indices, csr.indptr.astype(np.int64))"), "TypeError",
     "mlp_train_epoch: x.indices and x.indptr must share one dtype"),
    ("epoch: CSR rows", "mlp_train_epoch",
     epoch(X="k.CSR(csr.data, csr.indices, csr.indptr[:11].astype(np.int32))", Y="Y[:10]"),
     "ValueError", "mlp_train_epoch: order must hold row numbers of x"),
    ("accumulated: rows above", "mlp_accumulated_loss_and_grad", accumulated("order + 1"),
     "ValueError", "mlp_accumulated_loss_and_grad: rows must hold row numbers of x"),
    ("accumulated: micro_grads short", "mlp_accumulated_loss_and_grad",
     accumulated(micro="np.zeros(3, f32)"), "ValueError",
     "mlp_accumulated_loss_and_grad: micro_grads must have params' length"),
    ("block_forward: rows above capacity", "block_forward",
     "*fwd(inp=np.ones((9, 4), f32))", "ValueError",
     "block_forward: inp must have at most capacity rows"),
    ("block_forward: inp's columns", "block_forward", "*fwd(inp=np.ones((3, 5), f32))",
     "ValueError", "block_forward: inp must have n_in columns"),
    ("block_forward: params short", "block_forward", "*fwd(params=bparams[:10])",
     "ValueError", "block_forward: params must hold the layer's parameters"),
    ("block_forward: acts short", "block_forward", "*fwd(acts=bwork.acts[:20])", "ValueError",
     "block_forward: acts must hold the layer's output"),
    ("block_forward: saved values", "block_forward", "*fwd(acts=bwork.acts[:aux_end])",
     "ValueError", "block_forward: acts must hold the layer's saved values"),
    ("block_forward: norm", "block_forward", "*fwd(norm=3)", "ValueError",
     "block_forward: norm must be 0 (none), 1 (layer) or 2 (batch)"),
    ("block_forward: p", "block_forward", "*fwd(p=1.0)", "ValueError",
     "block_forward: p must be in [0, 1)"),
    ("block_forward: residual", "block_forward", "*fwd(n_out=3)", "ValueError",
     "block_forward: residual must be 0 unless n_in == n_out"),
    ("block_forward: activation", "block_forward", "*fwd(activation=99)", "ValueError",
     "block_forward: activation must be one of kernels.CODES"),
    ("block_forward: mode", "block_forward", "*fwd(mode=5)", "ValueError",
     "block_forward: mode must be INFER, TRAIN or REPLAY"),
    ("block_forward: row_ids", "block_forward", "*fwd(row_ids=np.arange(2))", "ValueError",
     "block_forward: row_ids must be empty or have one key per row of inp"),
    ("block_forward: precision", "block_forward", "*fwd(precision=7)", "ValueError",
     "block_forward: precision must be a code of kernels.PRECISIONS"),
    ("block_forward: bits", "block_forward", "*fwd(precision=2)", "ValueError",
     "block_forward: bits must hold the layer's rounded weight"),
    ("block_forward: running", "block_forward",
     "*fwd(norm=2, p=0.0, residual=0, running=np.zeros(1))", "ValueError",
     "block_forward: running must hold the layer's running mean and variance"),
    ("block_forward: float64 inp", "block_forward", "*fwd(inp=bx.astype(np.float64))",
     "TypeError", "block_forward: inp is float64 but acts is float32"),
    ("block_forward: strided inp", "block_forward", "*fwd(inp=np.ones((3, 8), f32)[:, ::2])",
     "TypeError", "block_forward: inp must be C-contiguous"),
    ("block_forward: int16 bits", "block_forward", "*fwd(bits=bnet.bits.view(np.int16))",
     "TypeError", "block_forward: bits must be uint16"),
    ("block_backward: dout's columns", "block_backward", "*bwd(dout=np.ones((3, 3), f32))",
     "ValueError", "block_backward: dout must have n_out columns"),
    ("block_backward: inp's rows", "block_backward", "*bwd(inp=bx[:2], inp_pre=bx[:2])",
     "ValueError", "block_backward: inp must be (B, n_in)"),
    ("block_backward: inp_pre", "block_backward", "*bwd(inp_pre=bx[:2])", "ValueError",
     "block_backward: inp_pre must be (B, n_in) as inp"),
    ("block_backward: dinp", "block_backward", "*bwd(dinp=np.zeros((2, 4), f32))",
     "ValueError", "block_backward: dinp must be (B, n_in), or have no rows"),
    ("block_backward: grads short", "block_backward", "*bwd(grads=np.zeros(3, f32))",
     "ValueError", "block_backward: grads must have params' length"),
    ("block_backward: inp_activation", "block_backward", "*bwd(inp_activation=99)",
     "ValueError", "block_backward: inp_activation must be one of kernels.CODES"),
    ("block_backward: saved values", "block_backward", "*bwd(acts=bwork.acts[:aux_end])",
     "ValueError", "block_backward: acts must hold the layer's saved values"),
    ("add_forward: shapes", "add_forward",
     "np.zeros((4, 3), f32), np.ones((4, 3), f32), np.ones((3, 3), f32)", "ValueError",
     "add_forward: a and b must have out's shape (B, N)"),
    ("add_forward: dtypes", "add_forward",
     "np.zeros((4, 3), f32), np.ones((4, 3), f32), np.ones((4, 3))", "TypeError",
     "add_forward: b is float64 but out is float32"),
]


def test_network_kernels_refuse_bad_arguments():
    assert run_refusals(SETUP, CASES) == []


# The Net's counter (a training pass's key) must not advance on a refused pass; the harness sees
# the arrays passed, not those inside the Net.
COUNTER = """
import numpy as np, numba
from fastbp import kernels as k
net, size = k.make_net([4, 8, 3], [1, 0], 16)
work = k.make_workspace(net, size, np.float32)
params = np.zeros(net.param_offsets[-1], np.float32); grads = np.zeros_like(params)
x, bad = np.ones((5, 4), np.float32), np.array([0, 1, 3, 0, 1])
upd = k.sgd_spec(0.1, np.inf, np.float32)

@numba.njit
def step(params, grads, work, x, y, net, upd):
    return k.mlp_train_step(params, grads, work, x, y, net, upd)

for call in (lambda: k.mlp_loss_and_grad(grads, work, params, x, bad, net),
             lambda: k.mlp_train_step(params, grads, work, x, bad, net, upd),
             lambda: step(params, grads, work, x, bad, net, upd)):
    try:
        call()
    except ValueError as exc:
        assert "target's labels" in str(exc), exc
    assert net.counter.tolist() == [0, 0, 0], net.counter
print("kept")
"""


def test_a_refused_training_pass_leaves_the_counter():
    result = subprocess.run([sys.executable, "-c", COUNTER], capture_output=True, text=True,
                            timeout=600, env=subprocess_env())
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "kept", result.stdout + result.stderr


@pytest.mark.parametrize("call, error, text", [
    (lambda: kernels.make_net([4], [], 8), ValueError, "sizes: expected 2 or more"),
    (lambda: kernels.make_net([4, 0], [0], 8), ValueError, "sizes: expected 2 or more"),
    (lambda: kernels.make_net([4, 2.5], [0], 8), TypeError, "sizes: expected a 1-D sequence"),
    (lambda: kernels.make_net([4, 3], [0, 0], 8), ValueError, "activations: expected a code"),
    (lambda: kernels.make_net([4, 3], [99], 8), ValueError, "activations: expected a code"),
    (lambda: kernels.make_net([4, 3], [0], -1), ValueError, "capacity: expected at least 0"),
    (lambda: kernels.make_net([4, 3], [0], 8.0), TypeError, "capacity: expected an integer"),
    (lambda: kernels.make_net([4, 3], [0], 8, 0), ValueError, "checkpoint_every"),
    (lambda: kernels.make_net([4, 3], [0], 8, loss="nope"), ValueError, "loss: expected"),
    (lambda: kernels.make_net([4, 3], [0], 8, l2=-1.0), ValueError, "l2: expected"),
    (lambda: kernels.make_net([4, 3], [0], 8, counter=np.zeros(3)), ValueError,
     "counter: expected 3 int64 values"),
    (lambda: kernels.make_net([4, 3], [0], 8, running=np.zeros(2)), ValueError,
     "running: expected 0 float64 values"),
    (lambda: kernels.make_net([4, 3], [0], 8, precision=7), ValueError, "precision: expected"),
    (lambda: kernels.make_workspace(None, 10, np.float32), TypeError, "net: expected a Net"),
    (lambda: kernels.make_workspace(kernels.make_net([4, 3], [0], 8)[0], -1, np.float32),
     ValueError, "acts_size: expected at least 0"),
    (lambda: kernels.make_workspace(kernels.make_net([4, 3], [0], 8)[0], 10, np.int32),
     TypeError, "dtype: expected float32 or float64"),
])
def test_make_net_and_make_workspace_name_the_bad_argument(call, error, text):
    with pytest.raises(error, match=text.replace("(", r"\(")):
        call()


def test_block_kernels_give_the_networks_results(rng):
    """block_forward called directly (checked) computes the network's block layer, and
    block_backward the gradient of its outputs (against finite differences, in float64)."""
    net, size = kernels.make_net([4, 4, 3], [kernels.TANH, kernels.IDENTITY], 8, kinds=[1, 0],
                                 dropout=[0.25, 0.0], residual=[1, 0])
    work = kernels.make_workspace(net, size, np.float64)
    params = rng.normal(size=int(net.param_offsets[-1]))
    x, y = rng.normal(size=(6, 4)), rng.integers(0, 3, 6)
    kernels.mlp_loss_and_grad(np.zeros_like(params), work, params, x, y, net)   # step 1
    layer = dict(n_in=4, n_out=4, activation=kernels.TANH, param_offset=0,
                 act_offset=int(net.act_offsets[0]), pre_offset=int(net.pre_offsets[0]),
                 aux_offset=int(net.aux_offsets[0]), running_offset=-1, capacity=8, norm=1,
                 p=0.25, residual=1)
    out = slice(layer["act_offset"], layer["act_offset"] + 6 * 4)

    def forward(params, x):
        acts = np.zeros_like(work.acts)
        kernels.block_forward(acts, net.running, params, x, acts[:0], net.sizes[:0], **layer,
                              seed=0, step=1, row_base=0, layer=0, mode=kernels.REPLAY,
                              bits=net.bits, rows_at=0, precision=kernels.FLOAT32)
        return acts

    acts = forward(params, x)
    np.testing.assert_allclose(acts[out], work.acts[out], rtol=1e-12, atol=1e-12)
    weights = rng.normal(size=(6, 4))   # the objective: sum(weights * the block's output)
    grads, dinp = np.zeros_like(params), np.zeros_like(x)
    kernels.block_backward(dinp, grads, weights.copy(), x, x, kernels.IDENTITY, acts,
                           net.running, params, **layer, bits=net.bits, rows_at=0,
                           precision=kernels.FLOAT32)
    assert not grads[28:].any()   # the layer's own block alone: W, b, scale, shift (28)
    h = 1e-6
    for i in (0, 7, 16, 21, 25):
        up, down = params.copy(), params.copy()
        up[i] += h
        down[i] -= h
        numeric = (weights * (forward(up, x)[out] - forward(down, x)[out]).reshape(6, 4)).sum()
        assert grads[i] == pytest.approx(numeric / (2 * h), rel=1e-5, abs=1e-8), i
    up, down = x.copy(), x.copy()
    up[2, 1] += h
    down[2, 1] -= h
    numeric = (weights * (forward(params, up)[out] - forward(params, down)[out]).reshape(6, 4))
    assert dinp[2, 1] == pytest.approx(numeric.sum() / (2 * h), rel=1e-5, abs=1e-8)
    total = np.zeros((2, 3))
    kernels.add_forward(total, np.ones((2, 3)), np.full((2, 3), 2.0))
    assert (total == 3).all()
