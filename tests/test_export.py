"""fastbp.export and `fastbp export`: ONNX graphs that onnxruntime runs to predict_proba's
values, PyTorch modules that compute forward and load strictly, safetensors files PyTorch reads,
round trips that give the parameters back bitwise, and every refusal with one clear error."""
import os

import numpy as np
import pytest

import fastbp
from fastbp import export, kernels
from fastbp.io import ModelFileError

from test_cli import run

HIDDEN = [name for name in kernels.CODES]
LOSSES = list(kernels.LOSS_KINDS)
DTYPES = (np.float32, np.float64)
# Agreement with predict_proba that the issue asks of an ONNX runtime: float32, and float64.
TOLERANCE = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-10, atol=1e-10)}


def output_activation(loss, hidden):
    """A model's output activation: the identity for the fused losses, else ``hidden``'s."""
    return "identity" if kernels.LOSS_KINDS[loss].fused else hidden


def make_model(dtype=np.float32, activation="relu", loss="softmax_cross_entropy", sizes=None,
               rng=None, **extras):
    """A model with non-trivial parameters everywhere (biases, scales, shifts and running
    statistics drawn, not their initial 0 / 1)."""
    rng = rng or np.random.default_rng(0)
    model = fastbp.MLP(sizes or [6, 8, 8, 3], activation=activation, loss=loss, dtype=dtype,
                       output_activation=output_activation(loss, activation), seed=1, **extras)
    model.params = (model.params + 0.1 * rng.standard_normal(model.n_params)).astype(dtype)
    for mean, var in zip(model.running_means, model.running_vars):
        if mean is not None:
            mean[...] = rng.standard_normal(mean.shape)
            var[...] = rng.uniform(0.2, 2.0, var.shape)
    return model


def rows(model, n=40, seed=3):
    """Held-out rows, one row alone, and rows large enough to give very large logits."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, model.sizes[0])).astype(model.dtype)
    return {"held-out": X, "one row": X[:1].copy(), "large": (X[:8] * 300).astype(model.dtype)}


# -- ONNX -------------------------------------------------------------------------------------

def onnx_session(path):
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_onnx(path, X, reference=False):
    """{output name: array} of the graph at path on X (onnxruntime, or onnx's reference
    evaluator)."""
    if reference:
        from onnx.reference import ReferenceEvaluator
        evaluator = ReferenceEvaluator(str(path))
        return dict(zip(evaluator.output_names, evaluator.run(None, {"X": X})))
    session = onnx_session(path)
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"X": X})))


def check_onnx_outputs(model, results, X, tolerance):
    kind = kernels.LOSS_KINDS[model.loss]
    if kind.fused:
        np.testing.assert_allclose(results["probabilities"], model.predict_proba(X),
                                   **tolerance)
        np.testing.assert_array_equal(results["label"], model.predict(X))
        assert "outputs" not in results
    else:
        np.testing.assert_allclose(results["outputs"], model.forward(X), **tolerance)
        assert set(results) == {"outputs"}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", HIDDEN)
def test_onnx_matches_predict_proba_for_every_activation_and_loss(tmp_path, activation, loss,
                                                                  dtype):
    pytest.importorskip("onnx")
    model = make_model(dtype, activation, loss)
    path = tmp_path / "m.onnx"
    # onnxruntime has no float64 Erf or Gelu: onnx's own evaluator runs those graphs, to its
    # Erf's accuracy (about 1e-8).
    reference = dtype == np.float64 and activation == "gelu"
    tolerance = dict(rtol=1e-6, atol=1e-7) if reference else TOLERANCE[dtype]
    for opset in (17, 20):
        export.to_onnx(model, path, opset=opset)
        for X in rows(model).values():
            check_onnx_outputs(model, run_onnx(path, X, reference), X, tolerance)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("extras", [
    dict(norm="layer"), dict(norm="batch"), dict(norm=["layer", "batch"], residual=True),
    dict(residual=True, dropout=0.3), dict(norm="batch", dropout=[0.2, 0.0], residual=True)],
    ids=["layer", "batch", "mixed+residual", "residual+dropout", "batch+dropout+residual"])
def test_onnx_matches_every_layer_kind(tmp_path, extras, dtype):
    """Normalisations (batch: the running statistics), residuals, and dropout left out."""
    pytest.importorskip("onnx")
    model = make_model(dtype, "tanh", **extras)
    path = tmp_path / "m.onnx"
    export.to_onnx(model, path)
    for X in rows(model).values():
        check_onnx_outputs(model, run_onnx(path, X), X, TOLERANCE[dtype])


def test_onnx_gelu_is_the_operator_from_opset_20_and_erf_before(tmp_path):
    onnx = pytest.importorskip("onnx")
    model = make_model(activation="gelu")
    for opset, has_gelu in ((17, False), (19, False), (20, True)):
        export.to_onnx(model, tmp_path / "m.onnx", opset=opset)
        ops = {node.op_type for node in onnx.load(str(tmp_path / "m.onnx")).graph.node}
        assert ("Gelu" in ops) == has_gelu and ("Erf" in ops) != has_gelu, (opset, ops)


def test_onnx_graph_names_a_dynamic_batch_and_the_models_dtype(tmp_path):
    onnx = pytest.importorskip("onnx")
    for dtype, elem in ((np.float32, onnx.TensorProto.FLOAT),
                        (np.float64, onnx.TensorProto.DOUBLE)):
        export.to_onnx(make_model(dtype, loss="binary_cross_entropy"), tmp_path / "m.onnx")
        graph = onnx.load(str(tmp_path / "m.onnx")).graph
        (x,) = graph.input
        assert x.name == "X" and x.type.tensor_type.elem_type == elem
        assert [d.dim_param or d.dim_value for d in x.type.tensor_type.shape.dim] == ["batch", 6]
        assert [o.name for o in graph.output] == ["label", "probabilities"]
        assert not any(node.op_type == "Dropout" for node in graph.node)


def save_with_metadata(tmp_path, model, metadata):
    path = tmp_path / "trained.npz"
    fastbp.save(model, path, metadata=metadata)
    return fastbp.load_predictor(path)


@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "binary_cross_entropy", "mse"])
def test_onnx_of_a_predictor_takes_raw_rows_and_gives_class_names(tmp_path, loss):
    pytest.importorskip("onnx")
    n_out = 1 if loss == "binary_cross_entropy" else 3
    model = make_model(loss=loss, sizes=[6, 8, n_out])
    names = ["no", "yes"] if n_out == 1 else ["cat", "dog", "emu"]
    predictor = save_with_metadata(tmp_path, model, {
        "offset": [1.0, -2.0, 0.5, 0.0, 3.0, 10.0], "scale": [2.0, 0.5, 1.0, 4.0, 1.0, 100.0],
        "class_names": names})
    export.to_onnx(predictor, tmp_path / "p.onnx")
    X = np.random.default_rng(5).normal(size=(50, 6)) * 3 + 1
    results = run_onnx(tmp_path / "p.onnx", X)
    np.testing.assert_array_equal(results["label"], predictor.predict(X))
    if kernels.LOSS_KINDS[loss].proba is not None:
        np.testing.assert_allclose(results["probabilities"], predictor.predict_proba(X),
                                   **TOLERANCE[np.float32])
        # One column per class name: a single output's p is [1 - p, p].
        assert results["probabilities"].shape == (50, len(names))
    assert len(set(results["label"].tolist())) > 1   # (not one class for every row)


def test_onnx_of_a_regression_predictor_gives_targets_in_their_units(tmp_path):
    pytest.importorskip("onnx")
    model = make_model(np.float64, loss="huber", sizes=[6, 8, 2])
    predictor = save_with_metadata(tmp_path, model, {
        "task": "regression", "offset": [0.0] * 6, "scale": [3.0] * 6,
        "target_offset": [100.0, -5.0], "target_scale": [20.0, 0.1]})
    export.to_onnx(predictor, tmp_path / "r.onnx")
    X = np.random.default_rng(6).normal(size=(30, 6)) * 3
    results = run_onnx(tmp_path / "r.onnx", X)
    assert set(results) == {"outputs"}
    np.testing.assert_allclose(results["outputs"], predictor.predict(X), rtol=1e-12)


@pytest.mark.parametrize("opset", [16, 10, 10 ** 6, "17", 17.0, True, None])
def test_onnx_refuses_an_opset_it_does_not_write(tmp_path, opset):
    pytest.importorskip("onnx")
    with pytest.raises(export.ExportError, match="opset: expected an integer from 17"):
        export.to_onnx(make_model(), tmp_path / "m.onnx", opset=opset)
    assert os.listdir(tmp_path) == []


def test_onnx_refuses_what_is_not_a_model_and_paths_it_cannot_write(tmp_path):
    pytest.importorskip("onnx")
    with pytest.raises(TypeError, match="model: expected a fastbp.MLP or Predictor"):
        export.to_onnx("model.npz", tmp_path / "m.onnx")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export.to_onnx(make_model(), tmp_path / "missing" / "m.onnx")
    with pytest.raises(IsADirectoryError, match="is a folder"):
        export.to_onnx(make_model(), tmp_path)
    assert os.listdir(tmp_path) == []


def test_a_missing_package_is_named(monkeypatch, tmp_path):
    import builtins
    import importlib
    real_import, real_import_module = builtins.__import__, importlib.import_module
    missing = ("onnx", "safetensors", "torch")

    def no_onnx(name, *args, **kwargs):
        if name.split(".")[0] in missing:
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    def import_module(name, package=None):
        if name.split(".")[0] in missing:
            raise ImportError(name)
        return real_import_module(name, package)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    monkeypatch.setattr(importlib, "import_module", import_module)
    for call, package in ((lambda: export.to_onnx(make_model(), tmp_path / "m.onnx"), "onnx"),
                          (lambda: export.to_torch(make_model()), "torch"),
                          (lambda: export.save_safetensors(make_model(), tmp_path / "m"),
                           "safetensors")):
        with pytest.raises(ImportError, match=rf"needs the {package} package: pip install "):
            call()
    assert os.listdir(tmp_path) == []


def test_every_activation_has_an_onnx_and_a_torch_form():
    """A new activation must say how it leaves fastbp."""
    assert set(export._ONNX_ACTIVATIONS) == set(kernels.CODES)
    torch_names = {a.torch[0] for a in kernels.ACTIVATIONS if a.torch is not None}
    assert torch_names == set(export._TORCH_MODULES)


# -- PyTorch ----------------------------------------------------------------------------------

LAYER_CASES = [dict(), dict(norm="layer"), dict(norm="batch", dropout=0.2),
               dict(norm=["batch", "layer"], residual=True), dict(residual=True, dropout=0.1)]
LAYER_IDS = ["plain", "layer", "batch+dropout", "mixed+residual", "residual+dropout"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("extras", LAYER_CASES, ids=LAYER_IDS)
@pytest.mark.parametrize("activation", HIDDEN)
def test_to_torch_computes_forward_and_from_torch_gives_the_params_back(activation, extras,
                                                                        dtype):
    torch = pytest.importorskip("torch")
    model = make_model(dtype, activation, **extras)
    module = export.to_torch(model)
    assert isinstance(module, torch.nn.Sequential) and not module.training
    X = rows(model)["held-out"]
    with torch.no_grad():
        out = module(torch.from_numpy(X)).numpy()
    assert out.dtype == dtype
    np.testing.assert_allclose(out, model.forward(X), rtol=1e-5 if dtype == np.float32
                               else 1e-12, atol=1e-5 if dtype == np.float32 else 1e-12)
    back = export.from_torch(module, loss=model.loss)
    assert back.params.tobytes() == model.params.tobytes()
    assert (back.sizes, back.activations, back.output_activation, back.norm, back.residual,
            back.dropout, back.dtype) == (model.sizes, model.activations,
                                          model.output_activation, model.norm, model.residual,
                                          model.dropout, model.dtype)
    for ours, theirs in zip(model.running_vars, back.running_vars):
        if ours is not None:   # (running statistics pass through the module's dtype)
            np.testing.assert_array_equal(theirs, ours.astype(dtype))


def test_to_torch_state_dict_has_pytorch_names_and_loads_strictly():
    torch = pytest.importorskip("torch")
    model = make_model(norm=["batch", "layer"], residual=True, dropout=0.1)
    state = export.to_torch(model).state_dict()
    # Layer 0 (6 -> 8): Linear, BatchNorm1d, ReLU, Dropout; layer 1 (8 -> 8) a Residual block
    # of the same with LayerNorm; the output layer.
    assert list(state) == [
        "0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
        "1.num_batches_tracked", "4.0.weight", "4.0.bias", "4.1.weight", "4.1.bias",
        "5.weight", "5.bias"]
    assert tuple(state["5.weight"].shape) == (3, 8)   # (out, in)
    other = export.to_torch(make_model(norm=["batch", "layer"], residual=True, dropout=0.1,
                                       rng=np.random.default_rng(9)))
    other.load_state_dict(state, strict=True)
    for name, value in other.state_dict().items():
        assert torch.equal(value, state[name]), name


def test_from_torch_reads_a_sequential_written_by_hand():
    """A PyTorch user's own module: bias-free Linear, a LayerNorm without affine parameters,
    nn.Identity, trained a little in PyTorch."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Linear(5, 7, bias=False), torch.nn.LayerNorm(7, elementwise_affine=False),
        torch.nn.GELU(), torch.nn.Identity(), torch.nn.Linear(7, 7), torch.nn.BatchNorm1d(7),
        torch.nn.Tanh(), torch.nn.Dropout(0.25), torch.nn.Linear(7, 2)).double()
    module.train()
    module(torch.randn(16, 5, dtype=torch.float64))   # (running statistics move)
    module.eval()
    model = export.from_torch(module, loss="mse")
    assert model.activations == ["gelu", "tanh"] and model.norm == ["layer", "batch"]
    assert model.dropout == [0.0, 0.25] and model.dtype == np.float64
    X = np.random.default_rng(1).standard_normal((9, 5))
    with torch.no_grad():
        expected = module(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(model.forward(X), expected, rtol=1e-12, atol=1e-12)


def refusal_cases(torch):
    nn = torch.nn
    return [
        (nn.Linear(3, 2), "expected a torch.nn.Sequential"),
        (nn.Sequential(), "holds no Linear layer"),
        (nn.Sequential(nn.ReLU(), nn.Linear(3, 2)), r"module 0 \(ReLU\): the first layer must "
                                                    "be a Linear"),
        (nn.Sequential(nn.Linear(3, 4), nn.Conv1d(1, 1, 1), nn.Linear(4, 2)),
         r"module 1 \(Conv1d\): not a layer fastbp has"),
        (nn.Sequential(nn.Linear(3, 2), nn.Softmax(dim=1)),
         r"module 1 \(Softmax\).*applies the softmax"),
        (nn.Sequential(nn.Linear(3, 4), nn.LeakyReLU(0.2), nn.Linear(4, 2)),
         r"module 1 \(LeakyReLU\): fastbp's leaky_relu has \{'negative_slope': 0.01\}"),
        (nn.Sequential(nn.Linear(3, 4), nn.GELU(approximate="tanh"), nn.Linear(4, 2)),
         r"module 1 \(GELU\).*approximate"),
        (nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4, eps=1e-6), nn.Linear(4, 2)),
         r"module 1 \(LayerNorm\): eps 1e-06; fastbp's is 1e-05"),
        (nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, momentum=0.2), nn.Linear(4, 2)),
         r"module 1 \(BatchNorm1d\): momentum 0.2"),
        (nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False),
                       nn.Linear(4, 2)), "track_running_stats=False"),
        (nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.LayerNorm(4), nn.Linear(4, 2)),
         r"module 2 \(LayerNorm\): out of fastbp's order"),
        (nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.ReLU(), nn.Linear(4, 2)),
         r"module 2 \(ReLU\): out of fastbp's order"),
        (nn.Sequential(nn.Linear(3, 4), nn.Linear(5, 2)),
         r"module 1 \(Linear\): takes 5 inputs, the layer before gives 4"),
        (nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4)), "the output layer .* takes no norm"),
        (nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2).double()), "should all be float32 or all float64"),
        (nn.Sequential(nn.Linear(3, 4).half(), nn.Linear(4, 2).half()),
         "should all be float32 or all float64"),
    ]


def test_from_torch_refuses_what_fastbp_cannot_express_naming_the_module():
    torch = pytest.importorskip("torch")
    for module, message in refusal_cases(torch):
        with pytest.raises(export.ExportError, match=message):
            export.from_torch(module)


def test_from_torch_refuses_residual_blocks_fastbp_cannot_place():
    torch = pytest.importorskip("torch")
    from fastbp._torch_modules import Residual
    nn = torch.nn
    unequal = nn.Sequential(Residual(nn.Linear(3, 4), nn.ReLU()), nn.Linear(4, 2))
    with pytest.raises(export.ExportError, match="in a Residual block, which needs equal"):
        export.from_torch(unequal)
    partial = nn.Sequential(Residual(nn.Linear(4, 4), nn.ReLU()), nn.Linear(4, 4), nn.ReLU(),
                            nn.Linear(4, 2))
    with pytest.raises(export.ExportError, match=r"module 1 \(Linear, 4 -> 4\): not in a "
                                                 "Residual block, while others are"):
        export.from_torch(partial)
    two = nn.Sequential(Residual(nn.Linear(4, 4), nn.Linear(4, 4)), nn.Linear(4, 2))
    with pytest.raises(export.ExportError, match="should hold one layer"):
        export.from_torch(two)
    # A block holds its whole layer: nothing but a Linear after it, a Linear first in it.
    for after in (nn.ReLU(), nn.LayerNorm(8)):
        with pytest.raises(export.ExportError, match="follows a Residual block"):
            export.from_torch(nn.Sequential(nn.Linear(4, 8), Residual(nn.Linear(8, 8)), after,
                                            nn.Linear(8, 2)))
    with pytest.raises(export.ExportError, match=r"module 1 \(Residual\): should start with its "
                                                 "Linear"):
        export.from_torch(nn.Sequential(nn.Linear(4, 8), Residual(nn.ReLU(), nn.Linear(8, 8)),
                                        nn.Linear(8, 2)))


def test_from_torch_refuses_modules_whose_forward_may_differ():
    """Subclasses (their forward is their own) and forward hooks are refused; a parametrized
    Linear (weight norm) is a Linear."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Scaled(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 10

    class Doubled(nn.Sequential):
        pass

    with pytest.raises(export.ExportError, match=r"module 0 \(Scaled\): not a layer"):
        export.from_torch(nn.Sequential(Scaled(3, 2)))
    with pytest.raises(export.ExportError, match="expected a torch.nn.Sequential, got Doubled"):
        export.from_torch(Doubled(nn.Linear(3, 2)))
    hooked = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    hooked[2].register_forward_hook(lambda module, inputs, output: output * 3)
    with pytest.raises(export.ExportError, match="module 2: has forward hooks"):
        export.from_torch(hooked)
    normed = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(3, 4)), nn.Tanh(),
                           nn.Linear(4, 2))
    X = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    with torch.no_grad():
        expected = normed(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(export.from_torch(normed).forward(X), expected, rtol=1e-5,
                               atol=1e-6)


def test_to_torch_refuses_what_is_not_a_model_and_residual_is_exported():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="model: expected a fastbp.MLP, got str"):
        export.to_torch("model.npz")
    module = export.to_torch(make_model(residual=True))
    assert isinstance(module[2], export.Residual) and isinstance(module[2], torch.nn.Sequential)


def test_from_torch_refuses_non_finite_weights_and_bad_model_arguments():
    torch = pytest.importorskip("torch")
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with pytest.raises(export.ExportError, match="from_torch: loss: unknown loss 'hinge'"):
        export.from_torch(module, loss="hinge")
    with torch.no_grad():
        module[2].weight[0, 0] = float("nan")
    with pytest.raises(export.ExportError, match="tensor 2.weight holds NaN or Inf"):
        export.from_torch(module)


# -- safetensors ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("extras", LAYER_CASES, ids=LAYER_IDS)
def test_safetensors_round_trip_is_bitwise(tmp_path, extras, dtype):
    pytest.importorskip("safetensors")
    model = make_model(dtype, "gelu", l2=0.01, checkpoint_every=2, **extras)
    path = tmp_path / "m.safetensors"
    assert export.save_safetensors(model, path) == str(path)
    back = export.load_safetensors(path)
    assert back.params.tobytes() == model.params.tobytes()
    assert back.engine.running.tobytes() == model.engine.running.tobytes()
    assert repr(back) == repr(model)


def test_safetensors_is_read_by_pytorch_into_to_torch_strictly(tmp_path):
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    model = make_model(norm="batch", residual=True)
    export.save_safetensors(model, tmp_path / "m.safetensors")
    state = st.load_file(str(tmp_path / "m.safetensors"))
    module = export.to_torch(make_model(norm="batch", residual=True,
                                        rng=np.random.default_rng(7)))
    module.load_state_dict(state, strict=True)
    X = rows(model)["held-out"]
    with torch.no_grad():
        np.testing.assert_allclose(module(torch.from_numpy(X)).numpy(), model.forward(X),
                                   rtol=1e-5, atol=1e-5)


def tampered(tmp_path, model, change_header=None, change_tensors=None):
    st = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "good.safetensors"
    export.save_safetensors(model, path)
    from safetensors import safe_open
    with safe_open(str(path), framework="numpy") as f:
        header = dict(f.metadata())
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    if change_header:
        change_header(header)
    if change_tensors:
        change_tensors(tensors)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(st.save(tensors, metadata=header))
    return bad


def test_load_safetensors_refuses_files_that_do_not_fit(tmp_path):
    pytest.importorskip("safetensors")
    model = make_model(norm="batch")   # 0 Linear, 1 BatchNorm1d, 2 ReLU, 3 ..., 6 Linear
    cases = [
        (dict(change_header=lambda h: h.pop("format")), "not a fastbp safetensors file"),
        (dict(change_header=lambda h: h.update(version="2")), "version '2'"),
        (dict(change_header=lambda h: h.update(fastbp="{")), "metadata 'fastbp' should be JSON"),
        (dict(change_header=lambda h: h.update(fastbp=h["fastbp"].replace('"relu"', '"swish"'))),
         "unknown activation 'swish'"),
        (dict(change_header=lambda h: h.update(fastbp=h["fastbp"].replace('"float32"',
                                                                          '"float16"'))),
         "dtype should be float32 or float64, got 'float16'"),
        (dict(change_tensors=lambda t: t.pop("6.bias")), r"missing: 6.bias"),
        (dict(change_tensors=lambda t: t.update(extra=np.zeros(2, np.float32))),
         "unexpected: extra"),
        (dict(change_tensors=lambda t: t.update({"0.weight": np.zeros((6, 8), np.float32)})),
         r"tensor 0.weight has shape \(6, 8\), expected \(8, 6\)"),
        (dict(change_tensors=lambda t: t.update({"0.weight": t["0.weight"].astype(np.float64)})),
         "tensor 0.weight is float64, expected float32"),
        (dict(change_tensors=lambda t: t["6.weight"].__setitem__((0, 0), np.inf)),
         "tensor 6.weight holds NaN or Inf"),
        (dict(change_tensors=lambda t: t["1.running_var"].__setitem__(0, -1.0)),
         "a running variance is negative"),
    ]
    for change, message in cases:
        with pytest.raises(ModelFileError, match=message):
            export.load_safetensors(tampered(tmp_path, model, **change))
    (tmp_path / "junk").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(ModelFileError, match="not a readable safetensors file"):
        export.load_safetensors(tmp_path / "junk")
    with pytest.raises(ModelFileError, match="no such file"):
        export.load_safetensors(tmp_path / "missing.safetensors")
    os.mkfifo(tmp_path / "fifo")   # (reading it would block for ever)
    for path in (tmp_path / "fifo", tmp_path):
        with pytest.raises(ModelFileError, match="not a regular file"):
            export.load_safetensors(path)


def test_load_safetensors_refuses_sizes_beyond_its_tensors_before_allocating(tmp_path):
    """A small file whose header asks for a huge model is refused from the arithmetic alone
    (it took 19 GB before the tensors were checked)."""
    pytest.importorskip("safetensors")
    model = make_model()
    for sizes, message in (([6, 40000, 40000, 3], r"need 1,600,440,003 weights and biases; "
                                                  r"the file holds 155 values"),
                           ([6, 10 ** 12, 3], "need"), ("abc", "sizes should be a list"),
                           ([6, 0, 3], "sizes should be a list of positive widths")):
        def change(header, sizes=sizes):
            import json
            structure = json.loads(header["fastbp"])
            structure["sizes"] = sizes
            header["fastbp"] = json.dumps(structure)
        with pytest.raises(ModelFileError, match=message):
            export.load_safetensors(tampered(tmp_path, model, change_header=change))
    deep = dict(change_header=lambda h: h.update(fastbp="[" * 100000 + "]" * 100000))
    with pytest.raises(ModelFileError, match="should be JSON"):
        export.load_safetensors(tampered(tmp_path, model, **deep))


def test_exports_refuse_a_model_with_nan_params(tmp_path):
    model = make_model()
    model.params[3] = np.nan
    calls = []
    try:
        import onnx  # noqa: F401
        calls.append(lambda: export.to_onnx(model, tmp_path / "m.onnx"))
    except ImportError:
        pass
    try:
        import safetensors  # noqa: F401
        calls.append(lambda: export.save_safetensors(model, tmp_path / "m.st"))
    except ImportError:
        pass
    for call in calls:
        with pytest.raises(export.ExportError, match="params contain NaN or Inf"):
            call()
    assert os.listdir(tmp_path) == []


def test_float64_layer_norm_in_onnx_keeps_its_epsilon(tmp_path):
    """ONNX's LayerNormalization keeps epsilon as a float32: on rows of small variance that
    was 1e-8 relative off; a float64 graph spells the normalisation out."""
    pytest.importorskip("onnx")
    model = make_model(np.float64, loss="mse", sizes=[3, 4, 2], norm="layer")
    model.weights[0][...] *= 1e-4
    for opset in (17, 18):
        export.to_onnx(model, tmp_path / "m.onnx", opset=opset)
        X = rows(model)["held-out"]
        np.testing.assert_allclose(run_onnx(tmp_path / "m.onnx", X)["outputs"],
                                   model.forward(X), rtol=1e-12)


# -- the command ------------------------------------------------------------------------------

@pytest.fixture
def trained(tmp_path, capsys):
    path = tmp_path / "m.npz"
    code, _, err = run(["train", "--quiet", "--epochs", "2", "--save", str(path)], capsys)
    assert code == 0, err
    return path


def test_export_command_writes_an_onnx_graph_that_predicts_as_fastbp_predict(trained, tmp_path,
                                                                            capsys):
    pytest.importorskip("onnx")
    out = tmp_path / "m.onnx"
    code, stdout, err = run(["export", str(trained), "--to", "onnx", str(out)], capsys)
    assert code == 0 and stdout == "" and err == "", err
    X = fastbp.data.load("digits").X_test * 16   # (rows of the digits' own range)
    predictor = fastbp.load_predictor(trained)
    results = run_onnx(out, X.astype(np.float64))
    np.testing.assert_array_equal(results["label"], predictor.predict(X))
    np.testing.assert_allclose(results["probabilities"], predictor.predict_proba(X),
                               rtol=1e-5, atol=1e-6)


def test_export_command_torch_and_safetensors(trained, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    model = fastbp.load(trained)
    code, _, err = run(["export", str(trained), "--to", "torch", str(tmp_path / "m.pt2")],
                       capsys)
    assert code == 0 and "takes features scaled as in training" in err, err
    program = torch.export.load(str(tmp_path / "m.pt2")).module()
    X = np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32)
    np.testing.assert_allclose(program(torch.from_numpy(X)).detach().numpy(), model.forward(X),
                               rtol=1e-5, atol=1e-5)
    code, _, err = run(["export", str(trained), "--to", "safetensors",
                        str(tmp_path / "m.safetensors")], capsys)
    assert code == 0, err
    assert export.load_safetensors(tmp_path / "m.safetensors").params.tobytes() == \
        model.params.tobytes()


def test_export_command_refusals_exit_2_with_one_line(trained, tmp_path, capsys):
    (tmp_path / "bad.npz").write_bytes(b"not a model")
    cases = [
        (["export", str(tmp_path / "none.npz"), "--to", "onnx", "o.onnx"], "no such file"),
        (["export", str(tmp_path / "bad.npz"), "--to", "onnx", str(tmp_path / "o.onnx")],
         "bad.npz"),
        (["export", str(trained), "--to", "torch", str(tmp_path / "m.pt")], "should end in .pt2"),
        (["export", str(trained), "--to", "safetensors", str(tmp_path / "x"), "--opset", "18"],
         "--opset is for --to onnx"),
        (["export", str(trained), "--to", "onnx", str(tmp_path / "no" / "o.onnx")],
         "does not exist"),
        (["export", str(trained), "--to", "onnx", str(tmp_path)], "is a folder"),
    ]
    try:
        import onnx  # noqa: F401   (without it, --to onnx says which package to install)
        cases.append((["export", str(trained), "--to", "onnx", str(tmp_path / "o.onnx"),
                       "--opset", "12"], "opset: expected an integer from 17"))
    except ImportError:
        cases.append((["export", str(trained), "--to", "onnx", str(tmp_path / "o.onnx")],
                      "needs the onnx package"))
    before = sorted(os.listdir(tmp_path) + ["fifo", "folder-link", "link.npz"])
    for argv, message in cases:
        code, out, err = run(argv, capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (argv, err)
    os.symlink(trained, tmp_path / "link.npz")
    os.mkfifo(tmp_path / "fifo")
    os.symlink(tmp_path, tmp_path / "folder-link")   # OUT through a linked folder is MODEL too
    for argv, message in (
            (["export", str(trained), "--to", "safetensors",
              str(tmp_path / "folder-link" / trained.name)], "is MODEL"),
            (["export", str(trained), "--to", "safetensors", str(trained)],
             "is MODEL"),
            (["export", str(trained), "--to", "onnx", str(tmp_path / "link.npz")], "is MODEL"),
            (["export", str(tmp_path / "fifo"), "--to", "onnx", "o.onnx"],
             "is not a regular file")):
        before_model = trained.read_bytes()
        code, out, err = run(argv, capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (argv, err)
        assert trained.read_bytes() == before_model
    code, _, err = run(["export", str(trained), "--to", "keras", "o"], capsys)
    assert code == 2 and "invalid choice" in err
    assert sorted(os.listdir(tmp_path)) == before


def test_export_command_notes_what_the_output_does_not_hold(tmp_path, capsys):
    """A bfloat16 model's weights are exported to be multiplied in float32; a float64 GELU
    graph cannot run in onnxruntime: each said on stderr, the export itself done."""
    pytest.importorskip("onnx")
    bf16 = make_model(matmul_precision="bfloat16-emulated")
    fastbp.save(bf16, tmp_path / "bf16.npz")
    code, _, err = run(["export", str(tmp_path / "bf16.npz"), "--to", "onnx",
                        str(tmp_path / "bf16.onnx")], capsys)
    assert code == 0 and "multiplies in bfloat16-emulated" in err, err
    if __import__("importlib").util.find_spec("safetensors"):
        code, _, err = run(["export", str(tmp_path / "bf16.npz"), "--to", "safetensors",
                            str(tmp_path / "bf16.st")], capsys)
        assert code == 0 and err == ""
        assert export.load_safetensors(tmp_path / "bf16.st").matmul_precision == \
            "bfloat16-emulated"
    fastbp.save(make_model(np.float64, "gelu"), tmp_path / "gelu.npz")
    code, _, err = run(["export", str(tmp_path / "gelu.npz"), "--to", "onnx",
                        str(tmp_path / "gelu.onnx")], capsys)
    assert code == 0 and "no float64 Erf or Gelu" in err, err


def test_onnx_of_a_predictor_scales_in_its_arithmetic(tmp_path):
    """One divisor and no offset: the Predictor divides X in the model's dtype
    (data.prepare.apply_scaling), and so does the graph, bitwise on the scaled rows; with
    offsets, in float64 then the model's dtype, as the Predictor."""
    pytest.importorskip("onnx")
    onnx = pytest.importorskip("onnx")
    X = np.random.default_rng(8).normal(size=(300, 6)) * 10
    for offset, scale in (([0.0] * 6, [7.3] * 6), ([1.5, 0, 0, 0, 0, -2], [7.3] * 6)):
        model = make_model(sizes=[6, 3])
        predictor = save_with_metadata(tmp_path, model, {"offset": offset, "scale": scale})
        export.to_onnx(predictor, tmp_path / "p.onnx")
        graph = onnx.load(str(tmp_path / "p.onnx"))
        graph.graph.output.insert(0, onnx.helper.make_tensor_value_info(
            graph.graph.node[1].output[0] if not any(offset) else graph.graph.node[2].output[0],
            onnx.TensorProto.FLOAT, ["batch", 6]))
        onnx.save(graph, str(tmp_path / "scaled.onnx"))
        scaled = run_onnx(tmp_path / "scaled.onnx", X)
        first = next(iter(scaled.values()))
        assert first.tobytes() == predictor._scaled(X).tobytes()


def test_load_safetensors_takes_another_matmul_precision(tmp_path):
    pytest.importorskip("safetensors")
    model = make_model(matmul_precision="bfloat16-emulated")
    export.save_safetensors(model, tmp_path / "m.st")
    assert export.load_safetensors(tmp_path / "m.st").matmul_precision == "bfloat16-emulated"
    back = export.load_safetensors(tmp_path / "m.st", matmul_precision="float32")
    assert back.matmul_precision == "float32"
    assert back.params.tobytes() == model.params.tobytes()
    with pytest.raises(ValueError, match="matmul_precision: expected None or one of"):
        export.load_safetensors(tmp_path / "m.st", matmul_precision="fp8")
