"""The argument checks of the whole-network functions (network.py, which makes each function's
check from these rules: checks()).

Each public function first calls its check with its own arguments: a typing guard (TypeError
while the caller compiles: kinds, one dtype, C-contiguous arrays as the units take them), then
the values (ValueError, each message with the function's name) before anything is written:
O(1), then O(layers) for the buffers against the Net's plan, then one pass over the labels and
the row numbers.
"""
from numba import njit, types
from numba.extending import overload

from ._checks import guard, layout_errors, requirements, type_errors
from ._config import SERIAL
from . import activations, block, rows
from .bfloat16 import FLOAT32
from .block import INFER, REPLAY
from .rows import labels_in_range
from .update import check_update, norm_partials_size


def _is_tuple(t, cls):
    return isinstance(t, types.BaseNamedTuple) and t.instance_class is cls


def _given(t):
    return not isinstance(t, (types.NoneType, types.Omitted))


def _type_errors(kernel, kinds, argtypes, tuples):
    """The messages for the arguments (name -> Numba type) not of their kinds: those of
    _checks.KINDS, or a kind of tuples (kind -> (the tuple's class, its fields' kinds)), "data"
    (a matrix or a rows.CSR) and "target" (int64 labels (B,), or values (B, OC) of params'
    dtype)."""
    flat_kinds, flat_types, targets, errors = {}, {}, {}, []
    for name, kind in kinds.items():
        t = argtypes[name]
        if kind == "data":
            kind = "csr" if _is_tuple(t, rows.CSR) else "matrix"
        if kind == "target":
            targets[name] = t
        elif kind not in tuples:
            flat_kinds[name], flat_types[name] = kind, t
        elif not _is_tuple(t, tuples[kind][0]):
            errors.append(f"{kernel}: {name} must be a {tuples[kind][0].__name__}, not {t}")
        else:
            cls, fields = tuples[kind]
            for field, field_kind in fields.items():
                flat_kinds[f"{name}.{field}"] = field_kind
                flat_types[f"{name}.{field}"] = t.types[cls._fields.index(field)]
    errors += type_errors(kernel, flat_kinds, flat_types)
    model = getattr(argtypes["params"], "dtype", None)
    for name, t in targets.items():
        if not (isinstance(t, types.Array) and (t.ndim, t.dtype) in ((1, types.int64),
                                                                      (2, model))):
            errors.append(f"{kernel}: {name} must be int64 labels (B,) or a (B, OC) array of "
                          f"params' dtype, not {t}")
    errors += _pairing_errors(kernel, argtypes)
    if not errors:   # (a Fortran-ordered matrix has its message already)
        index = [n for n, kind in flat_kinds.items() if kind.rstrip("?") == "index"]
        errors = layout_errors(kernel, {**flat_types, **targets}, exempt=index)
    return errors


def _pairing_errors(kernel, argtypes):
    """The messages for arguments that must agree: a CSR's index arrays of one dtype, y_batch
    of target's kind, w_batch given with weights."""
    errors = []
    x = argtypes.get("x")
    if _is_tuple(x, rows.CSR) and x.types[1] != x.types[2]:
        errors.append(f"{kernel}: x.indices and x.indptr must share one dtype, int32 or int64")
    if "y_batch" in argtypes and (getattr(argtypes["y_batch"], "ndim", None)
                                  != getattr(argtypes["target"], "ndim", None)):
        errors.append(f"{kernel}: y_batch must hold what target holds (labels or values), not "
                      f"{argtypes['y_batch']}")
    if "w_batch" in argtypes and _given(argtypes["weights"]) and not _given(argtypes["w_batch"]):
        errors.append(f"{kernel}: w_batch must be given with weights")
    return errors


def _length_in(a, low, high):
    """Whether low <= len(a) <= high; True for None (an optional argument left out)."""
    raise NotImplementedError("compiled code only")


@overload(_length_in, jit_options=SERIAL)
def _length_in_impl(a, low, high):
    if not _given(a):
        return lambda a, low, high: True
    return lambda a, low, high: low <= a.shape[0] <= high


def _columns_fit(a, n):
    """Whether a has n columns; True but for a matrix (labels and a CSR state none)."""
    raise NotImplementedError("compiled code only")


@overload(_columns_fit, jit_options=SERIAL)
def _columns_fit_impl(a, n):
    if isinstance(a, types.Array) and a.ndim == 2:
        return lambda a, n: a.shape[1] == n
    return lambda a, n: True


def _rows_of(x):
    """The rows of a dense matrix or of a rows.CSR."""
    raise NotImplementedError("compiled code only")


@overload(_rows_of, jit_options=SERIAL)
def _rows_of_impl(x):
    if _is_tuple(x, rows.CSR):
        return lambda x: x.indptr.shape[0] - 1
    return lambda x: x.shape[0]


def _labels_fit(target, n_out, at):
    """Whether target's labels at the row numbers `at` (all of them for None) are in
    [0, n_out); True for values."""
    raise NotImplementedError("compiled code only")


@overload(_labels_fit, jit_options=SERIAL)
def _labels_fit_impl(target, n_out, at):
    if target.ndim == 2:
        return lambda target, n_out, at: True
    if not _given(at):
        return lambda target, n_out, at: labels_in_range(target, n_out)

    def labels_at(target, n_out, at):
        ok = True
        for i in range(at.shape[0]):
            label = target[at[i]]
            ok &= (label >= 0) & (label < n_out)
        return ok
    return labels_at


def _nonnegative(a):
    """Whether every value of a is >= 0 (not NaN); True for None."""
    raise NotImplementedError("compiled code only")


@overload(_nonnegative, jit_options=SERIAL)
def _nonnegative_impl(a):
    if not _given(a):
        return lambda a: True

    def nonnegative(a):
        ok = True
        for i in range(a.shape[0]):
            ok &= a[i] >= 0
        return ok
    return nonnegative


@njit(**SERIAL)
def _codes_known(codes):
    ok = True
    for i in range(codes.shape[0]):
        ok &= activations.is_activation(codes[i])
    return ok


def _csr_fits(x, n_cols):
    """Whether a rows.CSR x is well formed with n_cols columns (rows.csr_is_valid: one pass
    over its indices); True for a dense x."""
    raise NotImplementedError("compiled code only")


@overload(_csr_fits, jit_options=SERIAL)
def _csr_fits_impl(x, n_cols):
    if _is_tuple(x, rows.CSR):
        return lambda x, n_cols: rows.csr_is_valid(x.indices, x.indptr, n_cols,
                                                   x.data.shape[0])
    return lambda x, n_cols: True


@njit(**SERIAL)
def _plan_sizes(net):
    """(acts, deltas, bits): the lengths of the buffers that the Net's plan needs at its
    capacity, as make_workspace and make_net allocate them (bits: in bfloat16 precision)."""
    capacity = net.capacity
    acts = widest_in = widest_out = 0
    for layer in range(net.activations.shape[0]):
        n_in, n_out = net.sizes[layer], net.sizes[layer + 1]
        area = capacity * n_out
        acts = max(acts, net.act_offsets[layer] + area, net.pre_offsets[layer] + area)
        if net.aux_offsets[layer] >= 0:
            saved = block.compiled_aux_layout(net.kinds[layer], n_out, net.dropout[layer],
                                              net.residual[layer], capacity)[4]
            acts = max(acts, net.aux_offsets[layer] + saved)
        widest_in, widest_out = max(widest_in, n_in), max(widest_out, n_out)
    return (acts, 2 * capacity * widest_out,
            net.param_offsets[-1] + capacity * (widest_in + widest_out))


# The rules (_checks.requirements), by what they check, O(1) ones first.
BATCH = [("x.shape[1] == net.sizes[0]", "x must have net.sizes[0] columns"),
          ("x.shape[0] <= net.capacity",
           "x must have at most net.capacity rows (make a Net of a larger capacity)")]
PARAMS = [("params.shape[0] == net.param_offsets[-1]",
            "params must have net.param_offsets[-1] elements, the Net's parameter count")]
GRADS = [("grads.shape[0] == params.shape[0]", "grads must have params' length")]
TARGET = [("x.shape[0] > 0", "x must have a row (a loss is a mean over rows)"),
           ("target.shape[0] == x.shape[0]", "target must have as many rows as x"),
           ("_columns_fit(target, net.sizes[-1])", "target must have net.sizes[-1] columns")]
WEIGHTS = [("_length_in(weights, x.shape[0], x.shape[0])",
             "weights must have one value per row of x"),
            ("_nonnegative(weights)", "weights must all be >= 0")]
ROW_IDS = [("_length_in(row_ids, x.shape[0], x.shape[0])",
             "row_ids must have one value per row of x")]
PLAN = [("_codes_known(net.activations)",
          "net.activations must hold codes of kernels.CODES (make_net's)"),
         "acts_size, deltas_size, bits_size = _plan_sizes(net)",
         ("net.precision is None or net.precision == FLOAT32 or net.bits.shape[0] >= bits_size",
          "net.bits is shorter than the Net's plan needs (make_net's)")]
ACTS = [("acts.shape[0] >= acts_size",
          "acts is shorter than the Net's plan needs (make_net's acts_size)")]
WORK = [("work.acts.shape[0] >= acts_size",
          "work.acts is shorter than the Net's plan needs (make_workspace's)"),
         ("work.deltas.shape[0] >= deltas_size",
          "work.deltas is shorter than the Net's plan needs (make_workspace's)"),
         ("work.losses.shape[0] >= net.capacity", "work.losses must have net.capacity values"),
         ("work.layer_sq.shape[0] >= net.activations.shape[0]",
          "work.layer_sq must have a value per layer"),
         ("work.partials.shape[0] >= norm_partials_size(net.param_offsets)",
          "work.partials is shorter than the Net's plan needs (make_workspace's)")]
# The update's own (update.check_update: its messages name apply_update, the stage).
UPDATE = ["check_update(params, work.layer_sq, work.partials, grads, net.param_offsets, "
           "update.kind, update.hyper, update.state)"]
LABELS = [("_labels_fit(target, net.sizes[-1], None)",
            "target's labels must be in [0, net.sizes[-1])")]
# The functions that gather rows of a data set x, target (and weights) into x_batch, y_batch
# (and w_batch), batch_size rows at a time; then, for the row numbers `at`, one pass each.
GATHER = [("batch_size >= 1 and batch_size <= net.capacity",
            "batch_size must be in [1, net.capacity]"),
           ("x_batch.shape[0] >= batch_size and x_batch.shape[1] == net.sizes[0]",
            "x_batch must have batch_size rows or more, of net.sizes[0] columns"),
           ("y_batch.shape[0] >= batch_size and _columns_fit(y_batch, net.sizes[-1])",
            "y_batch must have batch_size rows or more, of target's width"),
           ("_length_in(w_batch, batch_size, UNLIMITED)",
            "w_batch must have batch_size values or more"),
           ("_columns_fit(x, net.sizes[0])", "x must have net.sizes[0] columns"),
           ("_csr_fits(x, net.sizes[0])",
            "x, a CSR matrix, must be well formed (rows.csr_is_valid) with net.sizes[0] "
            "columns"),
           "n_data = _rows_of(x)",
           ("target.shape[0] == n_data", "target must have as many rows as x"),
           ("_columns_fit(target, net.sizes[-1])", "target must have net.sizes[-1] columns"),
           ("_length_in(weights, n_data, n_data)", "weights must have one value per row of x"),
           ("_nonnegative(weights)", "weights must all be >= 0")]


def gathered(at):
    return [(f"labels_in_range({at}, n_data)", f"{at} must hold row numbers of x, in [0, N)"),
            (f"_labels_fit(target, net.sizes[-1], {at})",
             f"target's labels at {at} must be in [0, net.sizes[-1])")]


STEPS = [("accumulate >= 1", "accumulate must be at least 1"),
          ("accumulate == 1 or micro_grads is not None",
           "micro_grads must be given when accumulate > 1"),
          ("_length_in(micro_grads, params.shape[0], params.shape[0])",
           "micro_grads must have params' length"),
          "n_steps = (order.shape[0] + accumulate * batch_size - 1) // (accumulate * batch_size)",
          ("step_losses.shape[0] >= n_steps and step_norms.shape[0] >= n_steps"
           " and step_layer_sq.shape[0] >= n_steps",
           "step_losses, step_norms and step_layer_sq must have a row per step, "
           "ceil(len(order) / (accumulate * batch_size))"),
          ("step_layer_sq.shape[1] >= work.layer_sq.shape[0]",
           "step_layer_sq must have a column per value of work.layer_sq (per layer)")]
_SCOPE = dict(_plan_sizes=_plan_sizes, _length_in=_length_in, _columns_fit=_columns_fit,
              _nonnegative=_nonnegative, _codes_known=_codes_known, _csr_fits=_csr_fits,
              INFER=INFER, REPLAY=REPLAY,
              _rows_of=_rows_of, _labels_fit=_labels_fit, labels_in_range=labels_in_range,
              norm_partials_size=norm_partials_size, check_update=check_update,
              FLOAT32=FLOAT32, UNLIMITED=1 << 62)


def checks(kernel, kinds, rules, tuples):
    """A network function's check, of its arguments name=kind (as _type_errors takes them, in
    its order, the tuples' kinds from tuples): the typing guard, then the rules."""
    names = list(kinds)
    index = [n for n, kind in kinds.items() if kind.rstrip("?") == "index"]   # any stride
    types_guard = guard(kernel, names, lambda argtypes: _type_errors(kernel, kinds, argtypes, tuples),
                        any_layout=index)
    parameters = ", ".join(names)
    return requirements(kernel, parameters, [f"types_guard({parameters})"] + rules,
                        dict(_SCOPE, types_guard=types_guard))
