"""Models that leave fastbp, and models that come in: ONNX, PyTorch and safetensors.

``to_onnx(model, path)`` writes the inference graph; ``to_torch(model)`` gives an equivalent
``torch.nn.Sequential`` and ``from_torch(module)`` reads one back; ``save_safetensors`` and
``load_safetensors`` write and read PyTorch's tensor names with fastbp's structure in the
header. Each imports its library (onnx, torch, safetensors) only when called.

All of them read a model through ``layers(model)``: one plain description of its inference
computation (a hidden layer is dense, then its normalisation, activation and dropout, then the
residual; the output layer is dense and its activation).
"""
import json
import math
import os
from collections import namedtuple

import numpy as np

from . import kernels
from .io import FORMAT, ModelFileError, atomic_write, check_matmul_precision
from .model import MLP
from .data.prepare import divides_in_dtype
from .predictor import Predictor

__all__ = ["Layer", "layers", "to_onnx", "to_torch", "from_torch", "save_safetensors",
           "load_safetensors", "ExportError", "MIN_ONNX_OPSET"]   # (and Residual, with torch)


def __getattr__(name):
    """``Residual``, to_torch's block for a layer with a residual connection: defined with
    torch, so imported (with torch) when asked for."""
    if name == "Residual":
        _require("torch", "fastbp.export.Residual", "torch")
        from ._torch_modules import Residual
        return Residual
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ExportError(ValueError):
    """A model, module or argument that an export or import cannot take: one-line message."""


Layer = namedtuple("Layer", ["weight", "bias", "norm", "scale", "shift", "running_mean",
                             "running_var", "activation", "dropout", "residual"])
Layer.__doc__ = """One layer of a model's inference computation, in its order: weight (fan_in,
fan_out) and bias (fan_out,) of the product; norm ("layer", "batch" or None) with its scale and
shift, and for "batch" its running mean and variance (float64); the activation's name; the
dropout probability (training only); residual: whether the layer adds its input to its output.
The arrays are views into the model."""

# Normalisations' epsilon (as nn.LayerNorm's and nn.BatchNorm1d's default) and batch norm's
# momentum: fixed in fastbp, so a module with others cannot be imported.
NORM_EPS, BATCH_NORM_MOMENTUM = kernels.NORM_EPS, kernels.BATCH_NORM_MOMENTUM


def layers(model):
    """The model's layers (see Layer), input first."""
    if not isinstance(model, MLP):
        raise TypeError(f"model: expected a fastbp.MLP, got {type(model).__name__}")
    acts = model.activations + [model.output_activation]
    norms = model.norm + [None]
    drops = model.dropout + [0.0]
    return [Layer(w, b, norm, model.norm_weights[l], model.norm_biases[l],
                  model.running_means[l], model.running_vars[l], acts[l], drops[l],
                  bool(model.engine.residual[l]))
            for l, (w, b, norm) in enumerate(zip(model.weights, model.biases, norms))]


# -- ONNX -----------------------------------------------------------------------------------

#: The first opset to_onnx writes (the first with LayerNormalization); the last is the newest
#: the installed onnx package knows.
MIN_ONNX_OPSET = 17
# ONNX keeps epsilon as a float32, 1e-5 - 2.5e-14: batch normalisation's running variances
# carry the difference, so that variance + epsilon is fastbp's in float64 too.
_EPS_ROUNDING = NORM_EPS - float(np.float32(NORM_EPS))
# GELU is an operator from opset 20; before, it is written with Erf.
_GELU_OPSET = 20
# Each activation's ONNX operator and attributes (None: the identity; GELU: see _gelu).
_ONNX_ACTIVATIONS = {"identity": None, "relu": ("Relu", {}), "sigmoid": ("Sigmoid", {}),
                     "tanh": ("Tanh", {}),
                     "leaky_relu": ("LeakyRelu", {"alpha": kernels.activations.LEAKY_SLOPE}),
                     "gelu": "gelu"}


def to_onnx(model, path, opset=17):
    """Write the inference graph of ``model`` to ``path`` as an ONNX model; returns the path.

    ``model``: a fastbp.MLP, or a Predictor (``fastbp.load_predictor``), whose graph also takes
    raw rows (float64, scaled as its metadata says) and gives class names or targets in their
    own units. Input "X" (batch, features), the batch dimension dynamic, in the model's dtype
    (float64 for a Predictor). Outputs, as predict and predict_proba give them:
    "label" (a softmax model's class, a binary cross-entropy model's 0/1 indicators; a
    Predictor's class names), "probabilities" (cross-entropy models), "outputs" (MSE and Huber
    models: the outputs; a Predictor's regression: the targets, float64). Dropout is left out
    (inference); batch normalisation uses the running statistics. GELU is the Gelu operator
    from opset 20, Erf arithmetic before. The graph is checked by onnx.checker (full check)
    before anything is written; the file is written atomically. Needs the ``onnx`` package.
    """
    predictor = model if isinstance(model, Predictor) else None
    mlp = predictor.model if predictor else model
    if not isinstance(mlp, MLP):
        raise TypeError(f"model: expected a fastbp.MLP or Predictor, got {type(model).__name__}")
    onnx = _require("onnx", "to_onnx", "onnx")
    opset = _checked_opset(opset, onnx)
    _finite(mlp)
    graph = _OnnxGraph(onnx, mlp.dtype, opset)
    x = graph.input("X", np.float64 if predictor else mlp.dtype, mlp.sizes[0])
    if predictor:
        x = graph.scaled_input(x, predictor.offset, predictor.scale, mlp.dtype)
    out = x
    for layer in layers(mlp):
        out = graph.layer(out, layer)
    _onnx_outputs(graph, mlp, out, predictor)
    proto = graph.model(f"fastbp {mlp!r}"[:200])
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:   # (onnx's checker raises its own error types)
        raise ExportError(f"model: the ONNX graph fails onnx.checker ({exc})") from None
    return atomic_write(path, lambda f: f.write(proto.SerializeToString()))


def _finite(model):
    """Refuse a model whose parameters are not all finite, before a file is written (as
    fastbp.save does: nothing could load it)."""
    if not np.all(np.isfinite(model.params)):
        raise ExportError("model: its params contain NaN or Inf")


def _checked_opset(opset, onnx):
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) \
            or not MIN_ONNX_OPSET <= opset <= newest:
        raise ExportError(f"opset: expected an integer from {MIN_ONNX_OPSET} (the first with "
                          f"LayerNormalization) to {newest} (the newest this onnx "
                          f"{onnx.__version__} knows), got {opset!r}")
    return int(opset)


def _onnx_outputs(graph, mlp, out, predictor):
    """The graph's outputs from the last layer's output (see to_onnx)."""
    kind, width = kernels.LOSS_KINDS[mlp.loss], mlp.sizes[-1]
    regression = predictor is not None and predictor.task == "regression"
    if regression:
        graph.output("outputs", graph.unscaled(out, predictor.target_offset,
                                               predictor.target_scale), np.float64, width)
        return
    if predictor is not None:
        graph.output("label", graph.class_names(graph.class_indices(out, kind, width),
                                                predictor.class_names), str)
    elif kind.predict != "values":
        graph.output("label", graph.predictions(out, kind), np.int64,
                     width if kind.predict == "indicators" else None)
    if kind.fused is not None:
        op = {"softmax": ("Softmax", {"axis": -1}), "sigmoid": ("Sigmoid", {})}[kind.fused]
        probabilities = graph.node(op[0], [out], **op[1])
        if predictor is not None and predictor.one_output_two_classes:
            probabilities, width = graph.both_classes(probabilities), 2   # (as the Predictor)
        graph.output("probabilities", probabilities, mlp.dtype, width)
    elif predictor is None or kind.predict == "values":
        graph.output("outputs", out, mlp.dtype, width)


class _OnnxGraph:
    """The nodes, constants, inputs and outputs of a graph being built; each method returns
    the name of the value it makes."""

    def __init__(self, onnx, dtype, opset):
        self.onnx, self.dtype, self.opset = onnx, np.dtype(dtype), opset
        self.nodes, self.constants, self.inputs, self.outputs = [], [], [], []

    def _name(self, stem):
        return f"{stem}_{len(self.nodes) + len(self.constants)}"

    def constant(self, stem, value):
        name = self._name(stem)
        self.constants.append(self.onnx.numpy_helper.from_array(np.array(value, order="C"),
                                                                name))
        return name

    def node(self, op, inputs, **attributes):
        name = self._name(op.lower())
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), [name], **attributes))
        return name

    def _tensor_type(self, dtype):
        if dtype is str:
            return self.onnx.TensorProto.STRING
        return self.onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))

    def input(self, name, dtype, width):
        self.inputs.append(self.onnx.helper.make_tensor_value_info(
            name, self._tensor_type(dtype), ["batch", width]))
        return name

    def output(self, name, value, dtype, width=None):
        """An output (batch,), or (batch, width)."""
        self.nodes.append(self.onnx.helper.make_node("Identity", [value], [name]))
        self.outputs.append(self.onnx.helper.make_tensor_value_info(
            name, self._tensor_type(dtype), ["batch"] + ([width] if width else [])))

    def model(self, doc):
        helper = self.onnx.helper
        graph = helper.make_graph(self.nodes, "fastbp_mlp", self.inputs, self.outputs,
                                  self.constants, doc_string=doc)
        return helper.make_model(graph, producer_name="fastbp",
                                 opset_imports=[helper.make_opsetid("", self.opset)])

    def typed(self, value):
        return np.asarray(value, dtype=self.dtype)

    # -- layers

    def layer(self, x, layer):
        out = self.node("Gemm", [x, self.constant("weight", self.typed(layer.weight)),
                                 self.constant("bias", self.typed(layer.bias))])
        if layer.norm == "layer":
            out = self.layer_norm(out, layer.scale, layer.shift)
        elif layer.norm == "batch":
            out = self.node("BatchNormalization", [
                out, self.constant("scale", layer.scale), self.constant("shift", layer.shift),
                self.constant("mean", self.typed(layer.running_mean)),
                self.constant("var", self.typed(layer.running_var + _EPS_ROUNDING))],
                epsilon=NORM_EPS)
        out = self.activation(out, layer.activation)
        return self.node("Add", [x, out]) if layer.residual else out

    def layer_norm(self, x, scale, shift):
        """LayerNormalization over the last axis; for a float64 model spelled out, since the
        operator's epsilon is a float32 (1e-5 - 2.5e-14, off by 1e-8 relative on rows of small
        variance), with fastbp's order: mean, then the mean square of x - mean."""
        scale, shift = self.constant("scale", scale), self.constant("shift", shift)
        if self.dtype != np.float64:
            return self.node("LayerNormalization", [x, scale, shift], axis=-1,
                             epsilon=NORM_EPS)
        centred = self.node("Sub", [x, self.mean_of_rows(x)])
        variance = self.mean_of_rows(self.node("Mul", [centred, centred]))
        rstd = self.node("Reciprocal", [self.node("Sqrt", [self.node(
            "Add", [variance, self.constant("eps", self.typed(NORM_EPS))])])])
        return self.node("Add", [self.node("Mul", [self.node("Mul", [centred, rstd]), scale]),
                                 shift])

    def mean_of_rows(self, x):
        """ReduceMean over the last axis, kept (axes an attribute before opset 18)."""
        if self.opset < 18:
            return self.node("ReduceMean", [x], axes=[-1], keepdims=1)
        return self.node("ReduceMean", [x, self.constant("axes", np.array([-1], np.int64))],
                         keepdims=1)

    def activation(self, x, name):
        op = _ONNX_ACTIVATIONS[name]
        if op is None:
            return x
        if op == "gelu":
            return self.gelu(x)
        if name == "leaky_relu" and self.dtype == np.float64:
            # onnxruntime's CPU LeakyRelu is float32 only; max(z, slope z) is the same values.
            slope = self.constant("slope", self.typed(op[1]["alpha"]))
            return self.node("Max", [x, self.node("Mul", [x, slope])])
        return self.node(op[0], [x], **op[1])

    def gelu(self, x):
        """x * Phi(x), exact (erf) form."""
        if self.opset >= _GELU_OPSET:
            return self.node("Gelu", [x], approximate="none")
        half = self.constant("half", self.typed(0.5))
        one = self.constant("one", self.typed(1.0))
        erf = self.node("Erf", [self.node("Mul", [x, self.constant(
            "rsqrt2", self.typed(1 / math.sqrt(2)))])])
        return self.node("Mul", [x, self.node("Mul", [half, self.node("Add", [one, erf])])])

    # -- the ends

    def scaled_input(self, x, offset, scale, dtype):
        """The Predictor's scaling (data.prepare.apply_scaling), in the same arithmetic: x in
        the model's dtype divided by one divisor in it, or (x - offset) / scale in float64 and
        then in the model's dtype."""
        to_dtype = self._tensor_type(dtype)
        if divides_in_dtype(offset, scale, dtype):
            return self.node("Div", [self.node("Cast", [x], to=to_dtype), self.constant(
                "scale", np.asarray(scale[0], dtype=dtype))])
        x = self.node("Div", [self.node("Sub", [x, self.constant("offset", offset)]),
                              self.constant("scale", scale)])
        return self.node("Cast", [x], to=to_dtype)

    def unscaled(self, out, offset, scale):
        out = self.node("Cast", [out], to=self._tensor_type(np.float64))
        return self.node("Add", [self.node("Mul", [out, self.constant("target_scale", scale)]),
                                 self.constant("target_offset", offset)])

    def predictions(self, out, kind):
        """What MLP.predict gives (kernels.LossKind.predict)."""
        if kind.predict == "argmax":
            return self.node("ArgMax", [out], axis=1, keepdims=0)
        above = self.node("Greater", [out, self.constant("threshold",
                                                         self.typed(kind.threshold))])
        return self.node("Cast", [above], to=self._tensor_type(np.int64))

    def class_indices(self, out, kind, n_outputs):
        """predictor.class_indices: the loss's prediction for labels; else the largest output,
        or for one output whether it is above the loss's threshold."""
        if kind.targets == "labels" or n_outputs > 1:
            return self.node("ArgMax", [out], axis=1, keepdims=0)
        column = self.node("Squeeze", [out, self.constant("axis", np.array([1], np.int64))])
        above = self.node("Greater", [column, self.constant("threshold",
                                                            self.typed(kind.threshold))])
        return self.node("Cast", [above], to=self._tensor_type(np.int64))

    def both_classes(self, p):
        """[1 - p, p] of a single column p."""
        return self.node("Concat", [self.node("Sub", [self.constant("one", self.typed(1.0)),
                                                      p]), p], axis=1)

    def class_names(self, indices, names):
        return self.node("Gather", [self.constant("class_names", np.array(names, dtype=object)),
                                    indices], axis=0)


# -- PyTorch --------------------------------------------------------------------------------

# Each activation's torch.nn module (from its torch.nn.functional name in kernels.ACTIVATIONS,
# whose keyword arguments the module takes too); the identity has none.
_TORCH_MODULES = {"relu": "ReLU", "sigmoid": "Sigmoid", "tanh": "Tanh",
                  "leaky_relu": "LeakyReLU", "gelu": "GELU"}
_NORM_MODULES = {"layer": "LayerNorm", "batch": "BatchNorm1d"}

# One module of the Sequential that to_torch builds: its index path ("3" or "2.0" inside a
# residual block), the torch.nn class name, its constructor's arguments, and its tensors by
# state_dict name (NumPy arrays, in PyTorch's layout).
_Module = namedtuple("_Module", ["path", "kind", "args", "tensors"])


def _torch_modules(model):
    """The modules of to_torch's Sequential, in order (see _Module): per hidden layer Linear,
    its norm, its activation (none for the identity) and its Dropout (when p > 0), in a
    Residual block when the layer adds its input; the output layer's Linear and activation."""
    modules, index = [], 0
    for layer in layers(model):
        block = _layer_modules(layer)
        prefix = f"{index}." if layer.residual else ""
        modules += [m._replace(path=prefix + str(i if layer.residual else index + i))
                    for i, m in enumerate(block)]
        index += 1 if layer.residual else len(block)
    return modules


def _layer_modules(layer):
    fan_in, fan_out = layer.weight.shape
    block = [_Module(None, "Linear", (fan_in, fan_out),
                     {"weight": np.ascontiguousarray(layer.weight.T), "bias": layer.bias})]
    if layer.norm == "layer":
        block.append(_Module(None, "LayerNorm", (fan_out,),
                             {"weight": layer.scale, "bias": layer.shift}))
    elif layer.norm == "batch":
        block.append(_Module(None, "BatchNorm1d", (fan_out,), {
            "weight": layer.scale, "bias": layer.shift, "running_mean": layer.running_mean,
            "running_var": layer.running_var, "num_batches_tracked": np.array(0, np.int64)}))
    torch_ref = kernels.ACTIVATIONS[kernels.CODES[layer.activation]].torch
    if torch_ref is not None:   # (its keyword arguments: LeakyReLU's slope)
        block.append(_Module(None, _TORCH_MODULES[torch_ref[0]], dict(torch_ref[1]), {}))
    if layer.dropout > 0:
        block.append(_Module(None, "Dropout", (layer.dropout,), {}))
    return block


def _state_names(model):
    """{state_dict name: array} of to_torch's module."""
    return {f"{m.path}.{name}": value for m in _torch_modules(model)
            for name, value in m.tensors.items()}


def to_torch(model):
    """A ``torch.nn.Sequential`` computing ``model.forward`` (the outputs: logits for the
    cross-entropies; no softmax), in the model's dtype, in eval mode, its tensors copies of
    the model's: Linear (weight (out, in)), LayerNorm / BatchNorm1d (eps 1e-5, momentum 0.1,
    the running statistics in the model's dtype), ReLU, Sigmoid, Tanh, LeakyReLU(0.01),
    GELU(), Dropout(p); a hidden layer with a residual connection is a
    ``fastbp.export.Residual`` block (a Sequential whose output is added to its input). Its
    state_dict has PyTorch's names and loads strictly into the same structure. A bfloat16
    model's module multiplies its weights in float32. Needs torch."""
    if not isinstance(model, MLP):
        raise TypeError(f"model: expected a fastbp.MLP, got {type(model).__name__}")
    _require("torch", "to_torch", "torch")
    from ._torch_modules import Residual, module
    torch_dtype = {np.float32: "float32", np.float64: "float64"}[model.dtype]
    top, blocks = [], {}
    for spec in _torch_modules(model):
        made = module(spec.kind, spec.args, spec.tensors, torch_dtype)
        outer, _, inner = spec.path.partition(".")
        if inner:
            if outer not in blocks:
                blocks[outer] = Residual()
                top.append(blocks[outer])
            blocks[outer].append(made)
        else:
            top.append(made)
    import torch
    return torch.nn.Sequential(*top).eval()


def from_torch(module, loss="softmax_cross_entropy", l2=0.0, checkpoint_every=1):
    """An MLP with the structure and parameters of ``module``: a ``torch.nn.Sequential`` of
    what to_torch builds (Linear, LayerNorm, BatchNorm1d, the activations fastbp has, Dropout,
    Residual blocks). ``loss`` and the other MLP arguments are not in a module, so they are
    given here (the output activation is the module's last). The dtype is the module's
    (float32 or float64). ``from_torch(to_torch(m))`` has ``m``'s params bitwise (and its
    running statistics, to the model's dtype). Anything else raises ExportError naming the
    module and what fastbp cannot take."""
    torch = _require("torch", "from_torch", "torch")
    from ._torch_modules import read_sequential
    if type(module) is not torch.nn.Sequential:   # (a subclass may compute something else)
        raise ExportError(f"module: expected a torch.nn.Sequential, got "
                          f"{type(module).__name__}")
    structure, grouped = read_sequential(module, _torch_activations(), NORM_EPS,
                                         BATCH_NORM_MOMENTUM)
    structure.update(loss=loss, l2=l2, checkpoint_every=checkpoint_every)
    model = _new_model(structure, "from_torch", ExportError)
    return _load_tensors(model, _canonical_names(model, grouped), "module", ExportError)


def _torch_activations():
    """torch.nn class name -> (fastbp activation name, the module's keyword arguments)."""
    return {_TORCH_MODULES[a.torch[0]]: (a.name, a.torch[1])
            for a in kernels.ACTIVATIONS if a.torch is not None}


# -- safetensors ----------------------------------------------------------------------------

# The header's metadata keys.
_SAFETENSORS_FORMAT = FORMAT + ".safetensors"
_SAFETENSORS_VERSION = 1
# Model settings kept in the header (the rest of the structure is in the tensors' shapes).
_STRUCTURE = ("sizes", "activations", "output_activation", "loss", "dtype", "checkpoint_every",
              "l2", "norm", "residual", "dropout", "matmul_precision")


def save_safetensors(model, path, matmul_precision=None):
    """Write ``model`` to ``path`` as safetensors: the tensors of ``to_torch(model)``'s
    state_dict, by the same names (weights (out, in)), running statistics in float64, and
    fastbp's structure (sizes, activations, loss, dtype, norm, residual, dropout, ...) as JSON
    under the header's metadata key "fastbp". PyTorch users read it with
    ``safetensors.torch.load_file``; ``load_safetensors`` gives the model back. Written
    atomically. ``matmul_precision``: the one recorded (None: the model's). Needs the
    ``safetensors`` package."""
    if not isinstance(model, MLP):
        raise TypeError(f"model: expected a fastbp.MLP, got {type(model).__name__}")
    check_matmul_precision(matmul_precision)
    st = _require("safetensors.numpy", "save_safetensors", "safetensors")
    _finite(model)
    structure = {key: getattr(model, key) for key in _STRUCTURE}
    structure["dtype"] = np.dtype(model.dtype).name
    structure["matmul_precision"] = matmul_precision or model.matmul_precision
    header = {"format": _SAFETENSORS_FORMAT, "version": str(_SAFETENSORS_VERSION),
              "fastbp": json.dumps(structure)}
    tensors = {name: np.array(value, order="C") for name, value in _state_names(model).items()}
    data = st.save(tensors, metadata=header)
    return atomic_write(path, lambda f: f.write(data))


def load_safetensors(path, matmul_precision=None):
    """The MLP of a file written by save_safetensors. ModelFileError (one line) when the file
    is missing, is not such a file, or its tensors do not fit its structure. matmul_precision:
    as fastbp.load's (None: the file's; a bfloat16 model where bfloat16 products cannot run
    raises kernels.Bfloat16Unavailable, and "float32" runs it)."""
    check_matmul_precision(matmul_precision)
    st = _require("safetensors", "load_safetensors", "safetensors")
    what = os.fsdecode(os.fspath(path))
    if not os.path.isfile(path):   # (a fifo would block the read for ever)
        raise ModelFileError(f"{what}: " + ("no such file" if not os.path.exists(path)
                                            else "not a regular file"))
    try:
        with st.safe_open(path, framework="numpy") as f:
            header = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (OSError, ValueError, TypeError, st.SafetensorError) as exc:
        raise ModelFileError(f"{what}: not a readable safetensors file ({exc})") from None
    if header.get("format") != _SAFETENSORS_FORMAT:
        raise ModelFileError(f"{what}: not a fastbp safetensors file (no metadata format "
                             f"{_SAFETENSORS_FORMAT!r})")
    if header.get("version") != str(_SAFETENSORS_VERSION):
        raise ModelFileError(f"{what}: version {header.get('version')!r:.20}; this fastbp "
                             f"reads version {_SAFETENSORS_VERSION}")
    try:
        structure = json.loads(header.get("fastbp", ""))
    except (ValueError, RecursionError):
        structure = None
    if not isinstance(structure, dict) or set(structure) != set(_STRUCTURE):
        raise ModelFileError(f"{what}: metadata 'fastbp' should be JSON with the keys "
                             f"{', '.join(_STRUCTURE)}")
    _check_held(structure.get("sizes"), tensors, what)
    if matmul_precision is not None:
        structure["matmul_precision"] = matmul_precision
    return _load_tensors(_new_model(structure, what, ModelFileError), tensors, what,
                         ModelFileError)


def _check_held(sizes, tensors, what):
    """Refuse sizes whose weights and biases alone are more values than the file holds, before
    a model of those sizes is allocated (a small file must not ask for gigabytes)."""
    if not isinstance(sizes, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
        raise ModelFileError(f"{what}: metadata 'fastbp': sizes should be a list of positive "
                             f"widths, got {str(sizes):.60}")
    needed = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    held = sum(int(np.prod(t.shape)) for t in tensors.values())
    if needed > held:
        raise ModelFileError(f"{what}: sizes {str(sizes):.60} need {needed:,} weights and "
                             f"biases; the file holds {held:,} values")


# -- shared ---------------------------------------------------------------------------------

def _new_model(structure, what, error):
    """The MLP of a structure (MLP's arguments by name; dtype by name, activations as a
    list), its parameters zero; ``error`` naming ``what`` when it is not a model's."""
    arguments = dict(structure)
    dtypes = {"float32": np.float32, "float64": np.float64}
    if str(arguments.get("dtype")) not in dtypes:
        raise error(f"{what}: dtype should be float32 or float64, got "
                    f"{arguments.get('dtype')!r:.40}")
    try:
        arguments["dtype"] = dtypes[str(arguments["dtype"])]
        arguments["activation"] = arguments.pop("activations")
        return MLP(**arguments)
    except KeyError as exc:
        raise error(f"{what}: its structure lacks {exc}") from None
    except (TypeError, ValueError) as exc:
        raise error(f"{what}: {exc}") from None


def _load_tensors(model, tensors, what, error):
    """Copy the state_dict tensors (to_torch's names) into the model, each checked first:
    names, shapes, dtypes (parameters in the model's exactly: nothing rounds on the way in),
    finiteness. The model is new, so a refusal leaves nothing behind."""
    expected = _state_names(model)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise error(f"{what}: tensors do not fit the structure (missing: "
                    f"{', '.join(missing) or 'none'}; unexpected: "
                    f"{', '.join(unexpected) or 'none'})")
    for name, value in tensors.items():
        want = expected[name]
        if value.shape != want.shape:
            raise error(f"{what}: tensor {name} has shape {value.shape}, expected "
                        f"{want.shape}")
        parameter = name.rsplit(".", 1)[1] in ("weight", "bias")
        if value.dtype != want.dtype if parameter else value.dtype.kind != want.dtype.kind:
            raise error(f"{what}: tensor {name} is {value.dtype}, expected {want.dtype}")
        if not np.all(np.isfinite(value)):
            raise error(f"{what}: tensor {name} holds NaN or Inf")
    for layer, own in zip(layers(model), _by_layer(model, tensors)):
        _fill(layer, own, what, error)
    return model


def _canonical_names(model, grouped):
    """Per-layer tensors ({"<module kind>.<name>": tensor}, as _by_layer gives) under to_torch's
    state_dict names."""
    flat, layer = {}, -1
    for spec in _torch_modules(model):
        layer += spec.kind == "Linear"
        flat.update({f"{spec.path}.{name}": grouped[layer][f"{spec.kind}.{name}"]
                     for name in spec.tensors})
    return flat


def _by_layer(model, tensors):
    """tensors grouped by layer, each as {"<module kind>.<name>": tensor}."""
    grouped = []
    for spec in _torch_modules(model):
        if spec.kind == "Linear":
            grouped.append({})
        grouped[-1].update({f"{spec.kind}.{name}": tensors[f"{spec.path}.{name}"]
                            for name in spec.tensors})
    return grouped


def _fill(layer, tensors, what, error):
    layer.weight[...] = tensors["Linear.weight"].T
    layer.bias[...] = tensors["Linear.bias"]
    norm = _NORM_MODULES.get(layer.norm)
    if norm:
        layer.scale[...] = tensors[f"{norm}.weight"]
        layer.shift[...] = tensors[f"{norm}.bias"]
    if layer.norm == "batch":
        if np.any(tensors["BatchNorm1d.running_var"] < 0):
            raise error(f"{what}: a running variance is negative")
        layer.running_mean[...] = tensors["BatchNorm1d.running_mean"]
        layer.running_var[...] = tensors["BatchNorm1d.running_var"]


def _require(module, what, extra):
    """Import ``module`` for ``what``, or ImportError saying which package to install."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{what} needs the {extra} package: pip install {extra} "
                          f"(or pip install \"fastbp[{extra}]\")") from None
