"""Compiled forward and backward kernels for multilayer perceptrons.

Every kernel is a Numba ``@njit`` function that writes into outputs given by the caller (outputs
first, read-only inputs next, scalars last) and allocates nothing, so it can be called from
Python or from a user's own ``@njit`` code. Each works in float32 and in float64; the arrays of
one call must share one dtype. The kernels that hand arrays to BLAS (dense, gemm, bfloat16
products) need unit stride along the last axis of a 2-D array (rows may be strided) and
contiguous 1-D arrays; the elementwise and row-wise ones take any strides; the whole-network
functions (``mlp_*``) need C-contiguous arrays throughout, x included (index arrays excepted).
They run fastest on arrays that start on a cache line (``aligned_zeros`` makes them).

Every kernel refuses what it cannot use before it writes anything (_checks): a wrong type,
dtype or layout raises TypeError while the caller is compiled, naming the argument and what
would do; a wrong shape, capacity, label, code or spec raises ValueError. Inside a ``prange``
body Numba drops what a called function raises, so check a call outside the loop first. A
whole-network function calls its heavy kernels through units (_units), which cannot raise: it
checks everything they need first, and a unit that compiled code cannot load (a stale cache of a
caller's own code) raises UnitMissingError in that code. Under Numba's workqueue threading
layer, a kernel's parallel loop opened inside a caller's ``prange`` runs on the caller's thread
(_nesting).

Shapes: B = batch rows, C = input features, OC = output features (classes for the losses).

Losses: each an entry of the registry ``LOSS_KINDS`` (softmax cross-entropy on integer labels,
MSE, binary cross-entropy with a sigmoid per output fused in, ...); the L2 penalty on the
weights, and sample weights, are stages after the loss's gradient.

Modules, by concern: ``activations`` (each activation defined once; codes ``IDENTITY``,
``RELU``, ``SIGMOID``, ``TANH``, ``LEAKY_RELU``, ``GELU``), ``dense`` (the layer),
``bfloat16`` (bfloat16 operands for a float32 model's products: rounding, oneDNN's or MKL's
product or its emulation), ``normalization`` (layer and batch normalisation), ``dropout`` (inverted
dropout, masks from a counter-based hash), ``block`` (the hidden layer with normalisation,
dropout and a residual connection, built from those), ``losses``
(``LOSS_KINDS``, the registry of losses), ``update`` (norms, clipping, parameter updates;
``KINDS``, the registry of update kinds), ``rows`` (row gathering, from dense and from CSR
sparse matrices, and input checks), ``plan`` (building a Net and its Workspace, the buffers'
plan, in plain Python), ``network`` (Net, Workspace, whole-network functions, each
layer kind's steps), ``entry`` (what fastbp's Python layer calls); ``_config`` holds every
compiler flag and tuning constant, ``_tiling`` the thread split, ``_native`` BLAS and views,
``_units`` the table through which the network calls the heavy kernels, ``_checks`` the
argument checks (``_network_checks`` the whole-network functions' rules), ``_nesting`` nested loops under the workqueue layer. Every name below is
importable from ``fastbp.kernels`` itself.

Parallelism: matrix products are split into a grid of output tiles that the threads share out;
row-wise passes are ``prange`` over row tiles; weight gradients are split over their own
elements. No element is written by two threads. A product's tiles follow its shape, the
scratch given and ``tile_budget()``: ``GRID_TILES`` by default, whatever the thread count, so
results are bitwise the same at any thread count (BLAS rounds a tile's sums by the tile's
shape); after ``fastbp.set_work_split("threads")``, the thread count, and then only the same
thread count gives the same bits. Row-wise passes compute each row alike in any tile.

Precision: matrix products and the sums over the batch in dW and db accumulate in the working
dtype, as BLAS does (a float32 Net in bfloat16 precision rounds the products' operands to
bfloat16 first; bfloat16.py). Losses and the softmax denominator accumulate in float64;
gradient norms sum squares in the working dtype over blocks of 512, and the blocks in float64.
"""
from . import _config, _nesting
from ._config import GRID_TILES, MIN_TILE_WORK, NORM_CHUNK
from ._native import BlasUnavailable, gemm
from ._tiling import tile_budget
from ._units import UnitMissingError, on_ctrl_c, raise_held_ctrl_c, raise_if_unfilled
from .activations import (ACTIVATIONS, CODES, Activation, activation_backward,
                          activation_forward, relu_backward, relu_forward, sigmoid_backward,
                          sigmoid_forward, tanh_backward, tanh_forward, uses_input)
from .activations import GELU, IDENTITY, LEAKY_RELU, RELU, SIGMOID, TANH  # noqa: F401
from .bfloat16 import (BFLOAT16, BFLOAT16_EMULATED, FLOAT32, PRECISIONS, Bfloat16Unavailable,
                       cpu_bfloat16_units, register_bfloat16_emulation, require_bfloat16,
                       round_to_bfloat16)
from .block import INFER, REPLAY, TRAIN, add_forward, aux_layout, block_backward, block_forward
from .dense import (dense_backward, dense_backward_bf16, dense_forward, dense_forward_bf16,
                    splits_input)
from .dropout import (dropout_backward, dropout_forward, dropout_forward_masked, dropout_mask,
                      dropout_uniform)
from .entry import prepare
from .losses import (LOSS_CODES, LOSS_KINDS, LossKind, l2_penalty_forward_backward,
                     l2_penalty_loss, sample_weights_forward_backward, sample_weights_loss,
                     softmax_forward, weight_sum)
from .network import (Net, Workspace, apply_update, mlp_forward, mlp_loss, mlp_loss_and_grad,
                      mlp_train_epoch, mlp_train_step)
from .plan import (is_block, make_net, make_workspace, new_running, plan_activations,
                   running_layout)
from .normalization import (BATCH_NORM_MOMENTUM, NORM_EPS, batch_norm_backward,
                            batch_norm_forward, batch_norm_inference, layer_norm_backward,
                            layer_norm_forward)
from .rows import (CACHE_LINE, CSR, aligned_zeros, all_finite, csr_is_valid, labels_in_range,
                   take_csr_rows, take_rows)
from .update import (ADAM_KIND, KINDS, SGD_KIND, UPDATE_KINDS, Update, UpdateKind, adam_spec,
                     adam_step, add_scaled, layer_sums_of_squares, norm_partials_size, sgd_spec,
                     sgd_step, sgd_update, update_spec)

# Each loss's two kernels (softmax_cross_entropy_forward_backward, mse_loss, ...), by their
# names: from the registry, so that a loss added there is exported with it.
_LOSS_KERNELS = {kernel.py_func.__name__: kernel for kind in LOSS_KINDS.values()
                 for kernel in (kind.forward_backward, kind.loss)}
globals().update(_LOSS_KERNELS)

__all__ = [
    "ACTIVATIONS", "CODES", "Activation", *(a.name.upper() for a in ACTIVATIONS),
    "dense_forward", "dense_backward",
    "dense_forward_bf16", "dense_backward_bf16", "round_to_bfloat16", "PRECISIONS", "FLOAT32",
    "BFLOAT16", "BFLOAT16_EMULATED", "Bfloat16Unavailable", "require_bfloat16",
    "register_bfloat16_emulation", "cpu_bfloat16_units",
    "layer_norm_forward", "layer_norm_backward", "batch_norm_forward", "batch_norm_backward",
    "batch_norm_inference", "NORM_EPS", "BATCH_NORM_MOMENTUM",
    "dropout_mask", "dropout_forward", "dropout_forward_masked", "dropout_backward",
    "dropout_uniform", "add_forward",
    "block_forward", "block_backward", "aux_layout", "is_block", "INFER", "TRAIN", "REPLAY",
    "new_running", "running_layout",
    "activation_forward", "activation_backward", "uses_input",
    "relu_forward", "relu_backward", "sigmoid_forward", "sigmoid_backward",
    "tanh_forward", "tanh_backward",
    "softmax_forward", *_LOSS_KERNELS, "l2_penalty_forward_backward", "l2_penalty_loss",
    "LOSS_CODES", "LOSS_KINDS", "LossKind",
    "sample_weights_forward_backward", "sample_weights_loss", "weight_sum",
    "layer_sums_of_squares", "sgd_update", "norm_partials_size",
    "sgd_step", "adam_step", "add_scaled",
    "Update", "SGD_KIND", "ADAM_KIND", "UPDATE_KINDS", "sgd_spec", "adam_spec", "apply_update",
    "KINDS", "UpdateKind", "update_spec",
    "Net", "Workspace", "make_net", "make_workspace", "plan_activations", "aligned_zeros",
    "mlp_forward", "mlp_loss", "mlp_loss_and_grad", "mlp_train_step", "mlp_train_epoch",
    "take_rows", "take_csr_rows", "CSR", "csr_is_valid", "all_finite", "labels_in_range",
    "gemm", "BlasUnavailable", "prepare", "UnitMissingError", "raise_if_unfilled",
    "on_ctrl_c", "raise_held_ctrl_c",
    "MIN_TILE_WORK", "GRID_TILES", "tile_budget", "splits_input", "NORM_CHUNK", "CACHE_LINE",
]

_config.guard_cache(getattr(getattr(mlp_forward, "_cache", None), "_cache_path", None))
_nesting.install_for_workqueue()
