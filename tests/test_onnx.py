"""ONNX export: onnxruntime predicts what ``model.predict`` and ``predict_proba`` do."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
from conftest import run_cli

import paragrad as pg
from paragrad.core.model_file import write_arrays
from paragrad.models import MLP, LinearRegression, LogisticRegression, SoftmaxRegression
from paragrad.onnx_export import export_onnx

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

ROWS = 120
# Features in different units and far from 0, so that the standardisation matters.
SCALES = np.array([1.0, 10.0, 300.0, 0.01])
OFFSETS = np.array([5.0, -40.0, 1000.0, 0.0])


def features(rows: int = ROWS, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, len(SCALES))) * SCALES + OFFSETS


def signal(X: np.ndarray) -> np.ndarray:
    """A target that depends on every feature, in its own units."""
    standard = (X - OFFSETS) / SCALES
    return standard @ np.array([1.0, -0.5, 0.8, 0.3]) + 0.3 * np.random.default_rng(9).standard_normal(len(X))


def three_bins(z: np.ndarray, labels) -> np.ndarray:
    return np.asarray(labels)[np.digitize(z, [-0.5, 0.5])]


# name: (model, targets from the signal, standardize)
CASES = {
    "linear": (lambda: LinearRegression(), lambda z: 3.0 * z + 7.0, True),
    "linear-raw-no-intercept": (lambda: LinearRegression(fit_intercept=False), lambda z: z, False),
    "logistic-text": (lambda: LogisticRegression(l2=0.01), lambda z: np.where(z > 0, "yes", "no"), True),
    "logistic-minus-one-one": (lambda: LogisticRegression(l2=0.01), lambda z: np.where(z > 0, 1, -1), True),
    "logistic-bool": (lambda: LogisticRegression(l2=0.01), lambda z: z > 0.2, True),
    "softmax-floats": (lambda: SoftmaxRegression(l2=0.01), lambda z: three_bins(z, [0.5, 1.5, 2.5]), True),
    "softmax-text": (lambda: SoftmaxRegression(l2=0.01), lambda z: three_bins(z, ["a", "b", "c"]), False),
    "mlp-regression": (
        lambda: MLP(hidden=(8, 4), activation="tanh", task="regression", l2=1e-3),
        lambda z: z**2,
        True,
    ),
    "mlp-classifier": (
        lambda: MLP(hidden=(8,), activation="relu", l2=1e-3),
        lambda z: three_bins(z, [0, 1, 2]),
        True,
    ),
}


@pytest.fixture(scope="module", params=list(CASES))
def model_file(request, tmp_path_factory):
    """A model trained on generated data and read back from its file, as export reads it."""
    make_model, make_targets, standardize = CASES[request.param]
    X = features()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pg.ConvergenceWarning)  # close enough is enough here
        run = pg.train(
            make_model(),
            pg.Dataset(X, make_targets(signal(X))),
            engine="serial",
            standardize=standardize,
            max_rounds=40,
        )
    path = tmp_path_factory.mktemp(request.param) / "model.npz"
    run.save(path)
    return path


def onnx_outputs(path, X: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, {"X": X}), strict=True))


def test_float64_export_predicts_as_paragrad_does(model_file, tmp_path):
    model = pg.load_model(model_file)
    export_onnx(model, tmp_path / "model.onnx")
    X = features(50, seed=1)
    got = onnx_outputs(tmp_path / "model.onnx", X)
    expected = model.predict(X)
    if model.is_classifier:
        assert sorted(got) == ["predict", "proba"]
        assert got["predict"].tolist() == expected.tolist()  # equal labels, of the same Python type
        assert [type(label) for label in got["predict"].tolist()] == [type(v) for v in expected.tolist()]
        np.testing.assert_allclose(got["proba"], model.predict_proba(X), rtol=1e-6, atol=1e-6)
    else:
        assert list(got) == ["predict"] and got["predict"].shape == (50,)
        np.testing.assert_allclose(got["predict"], expected, rtol=1e-6, atol=1e-6)


def test_float32_export_agrees_to_float32_precision(model_file, tmp_path):
    """float32 keeps about 7 significant digits, and a product of d terms (one per layer)
    rounds once per term: 1e-4 of the outputs' scale leaves a wide margin over that."""
    model = pg.load_model(model_file)
    export_onnx(model, tmp_path / "model.onnx", dtype="float32")
    X = features(50, seed=1)
    got = onnx_outputs(tmp_path / "model.onnx", X.astype(np.float32))
    expected = model.predict(X)
    if not model.is_classifier:
        assert got["predict"].dtype == np.float32
        scale = np.max(np.abs(expected))
        np.testing.assert_allclose(got["predict"], expected, rtol=1e-4, atol=1e-4 * scale)
        return
    proba = model.predict_proba(X)
    assert got["proba"].dtype == np.float32
    np.testing.assert_allclose(got["proba"], proba, rtol=1e-4, atol=1e-4)
    top_two = np.sort(proba, axis=1)[:, -2:]
    clear = top_two[:, 1] - top_two[:, 0] > 1e-3  # rows whose label round-off cannot flip
    assert clear.sum() > 40
    assert got["predict"][clear].tolist() == expected[clear].tolist()


def test_the_graph_declares_its_input_outputs_and_metadata(tmp_path):
    X = features()
    dataset = pg.Dataset(X, np.where(signal(X) > 0, "yes", "no"), feature_names=("a", "b", "c", "d"))
    run = pg.train(LogisticRegression(l2=0.01), dataset, engine="serial", standardize=True)
    export_onnx(run.model, tmp_path / "model.onnx")
    proto = onnx.load(str(tmp_path / "model.onnx"))
    onnx.checker.check_model(proto)
    [x] = proto.graph.input
    assert x.name == "X" and x.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    assert [d.dim_param or d.dim_value for d in x.type.tensor_type.shape.dim] == ["N", 4]
    outputs = {output.name: output.type.tensor_type.elem_type for output in proto.graph.output}
    assert outputs == {"predict": onnx.TensorProto.STRING, "proba": onnx.TensorProto.DOUBLE}
    meta = {prop.key: prop.value for prop in proto.metadata_props}
    assert meta["feature_names"] == '["a", "b", "c", "d"]' and meta["classes"] == '["no", "yes"]'
    assert meta["paragrad_version"] == pg.__version__ and meta["family"] == "logistic"
    assert meta["encoding"] == "null"  # no one-hot columns


def test_cli_exports_a_trained_model(tmp_path):
    data, model_path, out = tmp_path / "train.csv", tmp_path / "model.npz", tmp_path / "model.onnx"
    pg.save_dataset(pg.make_classification(200, 4, num_classes=3, seed=4), data)
    trained = run_cli(
        "train", data, "--target", "y", "--standardize", "--engine", "serial", "--out", model_path
    )
    assert trained.returncode == 0, trained.stderr
    result = run_cli("export", model_path, "--format", "onnx", "--out", out)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote {out} (onnx, float64): input X, outputs predict, proba"
    model, X = pg.load_model(model_path), pg.load(data, target="y").X
    got = onnx_outputs(out, X)
    assert got["predict"].tolist() == model.predict(X).tolist()
    np.testing.assert_allclose(got["proba"], model.predict_proba(X), rtol=1e-6, atol=1e-6)


def expect_one_line(result, phrase: str) -> None:
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
    assert result.stderr.startswith("paragrad: error: ") and phrase in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_cli_mistakes_get_one_clear_line(tmp_path):
    out = tmp_path / "model.onnx"
    expect_one_line(run_cli("export", tmp_path / "none.npz", "--out", out), "model file not found")
    torch_file = tmp_path / "torch.npz"  # the arrays pg.models.Torch.save writes
    write_arrays(torch_file, {"params": np.zeros(3), "classes": np.array([]), "num_features": np.array(2)})
    expect_one_line(run_cli("export", torch_file, "--out", out), "save it again with the onnx package")
    expect_one_line(run_cli("export", torch_file, "--out", tmp_path / "m.txt"), "use .onnx")
    usage = run_cli("export", torch_file, "--format", "pmml", "--out", out)
    assert usage.returncode == 2 and usage.stderr.startswith("paragrad export: error: argument --format")
    assert not out.exists()


def test_without_onnx_the_cli_says_how_to_install_it(tmp_path):
    args = ["export", "m.npz", "--out", str(tmp_path / "m.onnx")]
    code = (
        "import sys; sys.modules['onnx'] = None\n"  # as if it were not installed
        f"from paragrad.cli import main; sys.exit(main({args!r}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    expect_one_line(result, "export needs onnx: pip install 'paragrad[onnx]'")


def test_untrained_models_and_unknown_float_types_are_refused(tmp_path):
    with pytest.raises(pg.ConfigError, match="has not been trained yet"):
        export_onnx(LinearRegression(), tmp_path / "m.onnx")
    model = pg.train(LinearRegression(), pg.make_regression(50, 3, seed=0), engine="serial").model
    with pytest.raises(pg.ConfigError, match="dtype must be one of float64, float32"):
        export_onnx(model, tmp_path / "m.onnx", dtype="float16")
    assert not (tmp_path / "m.onnx").exists()


def test_a_torch_model_file_exports_with_the_answers_predict_gives(tmp_path):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    X = rng.standard_normal((80, 3))
    y = X @ np.array([1.0, -2.0, 0.5])
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.ReLU(), torch.nn.Linear(6, 1))
    run = pg.train(pg.models.Torch(net, loss="mse"), pg.Dataset(X, y), engine="serial", epochs=2, tol=0)
    run.save(tmp_path / "net.npz")
    out = tmp_path / "net.onnx"
    result = run_cli("export", tmp_path / "net.npz", "--format", "onnx", "--out", out)
    assert result.returncode == 0, result.stderr
    got = onnx_outputs(out, X)["predict"]
    assert got.shape == (80,)
    np.testing.assert_allclose(got, run.model.predict(X), rtol=1e-6, atol=1e-6)  # the module's float32
