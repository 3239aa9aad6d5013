"""Smaller and faster models: compression (float16, int8, pruning) and knowledge transfer.

The acceptance figures are measured on scikit-learn's digits, a quarter held out: a
teacher MLP(256) and a student MLP(16).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from conftest import run_cli
from serving import outputs, running

import paragrad as pg
from paragrad.models import MLP, LinearRegression, LogisticRegression, SoftmaxRegression
from paragrad.models.crossentropy import softmax
from paragrad.training.model_compression import CompressionRefused, measure, prune_mask

sklearn_datasets = pytest.importorskip("sklearn.datasets")


@pytest.fixture(scope="module")
def digits() -> tuple[pg.Dataset, pg.Dataset]:
    """Digits scaled to [0, 1]: three quarters to train on, a quarter held out (stratified)."""
    X, y = sklearn_datasets.load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    X, y = X[order] / 16.0, y[order]
    held = len(y) // 4
    return pg.Dataset(X[held:], y[held:]), pg.Dataset(X[:held], y[:held])


@pytest.fixture(scope="module")
def teacher(digits) -> pg.models.Model:
    """An MLP(256) trained for a few epochs: about 97% on the held-out quarter."""
    train, _ = digits
    strategy = pg.SGD(batch_size=64)
    options = dict(optimizer=pg.optim.Adam(lr=1e-2), epochs=10, tol=0.0, seed=0)
    return pg.train(MLP(hidden=(256,)), train, strategy=strategy, engine="serial", workers=2, **options).model


@pytest.fixture(scope="module")
def files(tmp_path_factory, digits, teacher):
    folder = tmp_path_factory.mktemp("digits")
    train, test = digits
    pg.save_dataset(train, folder / "train.npz")
    pg.save_dataset(test, folder / "test.npz")
    teacher.save(folder / "teacher.npz")
    return folder


def accuracy(model, data: pg.Dataset) -> float:
    return float(np.mean(model.predict(data.X) == data.y))


# -- compression ------------------------------------------------------------------------------


def test_int8_teacher_is_small_and_as_accurate(digits, teacher, files):
    _, test = digits
    small = pg.compress(teacher, "int8", data=test, max_drop=0.01)
    before, after = measure([teacher, small], test, repeats=1)
    assert after.size_bytes <= 0.35 * before.size_bytes
    assert before.metric - after.metric <= 0.01
    assert small.params.dtype == np.float64 and small.params.flags.c_contiguous  # dequantized once
    small.save(files / "int8.npz")
    loaded = pg.load_model(files / "int8.npz")
    assert loaded.storage_ == "int8"
    assert np.array_equal(loaded.params, small.params)
    assert np.array_equal(loaded.predict_proba(test.X), small.predict_proba(test.X))


def test_int8_scale_is_per_output_unit(teacher):
    small = pg.compress(teacher, "int8")
    codes, scales = small.stored_["int8_weights"], small.stored_["int8_scales"]
    assert codes.dtype == np.int8 and scales.dtype == np.float32
    assert len(scales) == sum(cols for *_, cols in teacher.weight_matrices())  # 256 + 10
    W = teacher.layers(teacher.params)[0][0]
    assert np.allclose(scales[:256], np.abs(W).max(axis=0) / 127)
    W_small = small.layers(small.params)[0][0]
    assert np.all(np.abs(W_small - W) <= scales[:256] / 2 * (1 + 1e-6))  # round to nearest


def test_int8_model_serves_the_same_answers(digits, files):
    _, test = digits
    model = pg.load_model(files / "int8.npz")
    X = test.X[:50]
    with running(str(files / "int8.npz")) as server:
        answer = outputs(server.infer("int8", X))
    assert np.array_equal(answer["predict"], model.predict(X))
    assert np.array_equal(answer["proba"], model.predict_proba(X))  # bit for bit


def test_int8_model_exports_to_onnx_with_int8_weights(digits, files, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    _, test = digits
    model = pg.load_model(files / "int8.npz")
    done = run_cli("export", files / "int8.npz", "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert done.returncode == 0, done.stderr
    graph = onnx.load(tmp_path / "m.onnx").graph
    assert sum(node.op_type == "DequantizeLinear" for node in graph.node) == 2
    assert {init.data_type for init in graph.initializer} >= {onnx.TensorProto.INT8}
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    labels, proba = session.run(["predict", "proba"], {"X": test.X})
    assert np.array_equal(labels, model.predict(test.X))
    assert np.allclose(proba, model.predict_proba(test.X), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method", ["float16", "int8", "prune"])
@pytest.mark.parametrize("family", ["linear", "logistic", "softmax", "mlp"])
def test_every_family_compresses_and_reloads(family, method, tmp_path):
    data = (
        pg.make_regression(300, 6, seed=1)
        if family == "linear"
        else pg.make_classification(300, 6, num_classes=2 if family == "logistic" else 3, seed=1)
    )
    model = {
        "linear": LinearRegression(),
        "logistic": LogisticRegression(l2=0.01),
        "softmax": SoftmaxRegression(l2=0.01),
        "mlp": MLP(hidden=(8,)),
    }[family]
    epochs = 20 if family == "mlp" else None
    model = pg.train(model, data, engine="serial", workers=2, epochs=epochs, tol=0.0, standardize=True).model
    sparsity = 0.5 if method == "prune" else None
    small = pg.compress(model, method, sparsity=sparsity, data=data if method == "prune" else None)
    assert type(small) is type(model) and small is not model
    small.save(tmp_path / "m.npz")
    loaded = pg.load_model(tmp_path / "m.npz")
    assert np.array_equal(loaded.predict(data.X), small.predict(data.X))
    assert sum(array.nbytes for array in small.stored_.values()) < model.params.nbytes
    if method == "prune":
        kept = prune_mask(model, 0.5)
        assert np.all(loaded.params[~kept] == 0.0)
    if method == "int8" and family != "linear":  # standardised, through DequantizeLinear
        ort = pytest.importorskip("onnxruntime")
        from paragrad.onnx_export import export_onnx

        export_onnx(loaded, tmp_path / "m.onnx")
        session = ort.InferenceSession(str(tmp_path / "m.onnx"))
        labels, proba = session.run(["predict", "proba"], {"X": data.X})
        assert np.array_equal(labels, loaded.predict(data.X))
        assert np.allclose(proba, loaded.predict_proba(data.X), rtol=1e-9, atol=1e-12)


def test_pruning_keeps_the_zeros_through_the_fine_tune(digits, teacher):
    train, test = digits
    pruned = pg.compress(teacher, "prune", sparsity=0.9, data=train)
    kept = prune_mask(teacher, 0.9)
    weights = np.zeros(teacher.num_params, dtype=bool)
    for offset, rows, cols in teacher.weight_matrices():
        weights[offset : offset + rows * cols] = True
    assert np.count_nonzero(pruned.params[weights]) <= 0.1 * weights.sum() + 1
    assert np.all(pruned.params[~kept] == 0.0)
    assert not np.array_equal(pruned.params[kept], teacher.params[kept])  # the rest was tuned
    assert accuracy(pruned, test) >= accuracy(teacher, test) - 0.05


def test_pruning_too_far_is_refused_without_a_file(files):
    out = files / "pruned.npz"
    done = run_cli(
        "compress", files / "teacher.npz", "--method", "prune", "--sparsity", "0.995",
        "--data", files / "test.npz", "--max-drop", "0.01", "--out", out,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "more than --max-drop 0.01" in done.stderr
    assert not out.exists()


def test_refusal_in_python_names_the_drop(digits, teacher):
    train, _ = digits
    with pytest.raises(CompressionRefused, match="lost"):
        pg.compress(teacher, "prune", sparsity=0.995, data=train, max_drop=0.01, epochs=1)


def test_compress_command_prints_before_and_after(files):
    done = run_cli(
        "compress", files / "teacher.npz", "--method", "int8", "--data", files / "test.npz",
        "--out", files / "cli-int8.npz",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for row in ("file size", "accuracy", "loss", "predict time"):
        assert row in done.stdout
    assert pg.load_model(files / "cli-int8.npz").storage_ == "int8"
    done = run_cli("evaluate", files / "cli-int8.npz", files / "test.npz", "--target", "y")
    assert done.returncode == 0 and "accuracy" in done.stdout


def test_compress_refuses_settings_that_do_not_fit(teacher, digits):
    train, _ = digits
    with pytest.raises(pg.ConfigError, match="sparsity"):
        pg.compress(teacher, "prune", data=train)
    with pytest.raises(pg.ConfigError, match="give the data"):
        pg.compress(teacher, "int8", max_drop=0.01)
    with pytest.raises(pg.ConfigError, match="choose one of"):
        pg.compress(teacher, "int4")


# -- knowledge transfer -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def distilled(digits, teacher):
    """A student MLP(16) distilled from the teacher, with the same student trained on the
    labels alone in the same call (the baseline)."""
    train, test = digits
    return pg.distill(teacher, MLP(hidden=(16,)), train, test=test, engine="serial", workers=2, seed=0)


def test_distilled_student_keeps_accuracy_and_follows_the_teacher(distilled):
    teacher, student, baseline = distilled.standings
    assert (teacher.name, student.name, baseline.name) == ("teacher", "student", "student on labels")
    assert student.metric >= baseline.metric - 0.01
    assert student.fidelity >= baseline.fidelity
    assert student.size_bytes < teacher.size_bytes / 5
    summary = distilled.summary()
    assert "student on labels" in summary and "agreement" in summary


def test_distilled_student_predicts_three_times_faster(digits, teacher, distilled):
    _, test = digits
    X = np.tile(test.X, (100_000 // test.num_rows + 1, 1))[:100_000]
    best = {"teacher": np.inf, "student": np.inf}
    for _ in range(5):  # best of several, taking turns, so a busy machine slows both alike
        for name, model in (("teacher", teacher), ("student", distilled.model)):
            start = time.perf_counter()
            model.predict(X)
            best[name] = min(best[name], time.perf_counter() - start)
    assert best["teacher"] >= 3 * best["student"]


def test_the_student_is_a_plain_model_of_its_family(distilled, tmp_path, digits):
    _, test = digits
    student = distilled.model
    assert type(student) is type(MLP(hidden=(16,)))
    student.save(tmp_path / "s.npz")
    assert np.array_equal(pg.load_model(tmp_path / "s.npz").predict(test.X), student.predict(test.X))


def test_soft_targets_stay_with_the_shard():
    from paragrad.core.shards import Shard
    from paragrad.training.distillation import SoftTargets

    data = pg.make_classification(200, 4, num_classes=3, seed=2)
    teacher = pg.train(SoftmaxRegression(l2=0.1), data, engine="serial", workers=1).model
    shard = Shard(data.X, data.y.astype(np.float64), 0, 1)
    SoftTargets(teacher, 2.0, 0.5, (0, 1, 2))(shard)
    assert shard.y.shape == (200, 4)
    assert np.array_equal(shard.y[:, 0], data.y)
    expected = softmax(teacher.decision_function(teacher.params, data.X) / 2.0)
    assert np.allclose(shard.y[:, 1:], expected)


def test_distillation_loss_matches_finite_differences():
    from paragrad.training.distillation import DistilledSoftmaxRegression

    data = pg.make_classification(50, 3, num_classes=3, seed=4)
    model = DistilledSoftmaxRegression()
    model.setup(3, data.y)
    model.temperature, model.alpha = 3.0, 0.3
    soft = np.random.default_rng(0).dirichlet(np.ones(3), size=50)
    y = np.column_stack([data.y.astype(np.float64), soft])
    params = np.random.default_rng(1).standard_normal(model.num_params)
    _, grad = model.loss_grad(params, data.X, y)
    step = 1e-6
    for index in range(model.num_params):
        shift = np.zeros(model.num_params)
        shift[index] = step
        numeric = (
            model.loss_grad(params + shift, data.X, y)[0] - model.loss_grad(params - shift, data.X, y)[0]
        ) / (2 * step)
        assert numeric == pytest.approx(grad[index], rel=1e-5, abs=1e-6)


def test_distillation_is_the_same_on_worker_processes():
    data = pg.make_classification(400, 5, num_classes=2, seed=3)
    teacher = pg.train(MLP(hidden=(32,)), data, engine="serial", workers=2, epochs=5, tol=0.0).model
    options = dict(workers=2, epochs=2, seed=1, baseline=False)
    serial = pg.distill(teacher, LogisticRegression(), data, engine="serial", **options)
    local = pg.distill(teacher, LogisticRegression(), data, engine="local", **options)
    assert np.allclose(serial.params, local.params, rtol=1e-12, atol=1e-14)


def test_regression_student_learns_the_mix(tmp_path):
    data = pg.make_regression(300, 4, seed=5)
    teacher = pg.train(LinearRegression(), data, engine="serial", workers=1).model
    full_batch = dict(strategy=pg.GradientDescent(), optimizer=pg.optim.LBFGS(), epochs=100)
    run = pg.distill(teacher, LinearRegression(), data, alpha=1.0, engine="serial", workers=1, **full_batch)
    teacher_r2 = next(s for s in run.standings if s.name == "student").fidelity
    assert teacher_r2 > 0.99  # alpha 1: the student learns the teacher's predictions


def test_distill_refuses_a_student_that_does_not_fit(teacher, digits):
    train, _ = digits
    with pytest.raises(pg.ConfigError, match="regression"):
        pg.distill(teacher, LinearRegression(), train)
    with pytest.raises(pg.ConfigError, match="gradients"):
        pg.distill(teacher, SoftmaxRegression(), train, optimizer=pg.optim.Newton())


def test_distill_command(files):
    done = run_cli(
        "distill", files / "teacher.npz", files / "train.npz", "--student", "mlp:16", "--test",
        files / "test.npz", "--epochs", "3", "--engine", "serial", "--workers", "2", "--out", files / "s.npz",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "student on labels" in done.stdout and "agreement" in done.stdout
    assert pg.load_model(files / "s.npz").hidden == (16,)


# -- starting from a trained model ------------------------------------------------------------


def test_init_starts_from_the_model(digits, teacher):
    train, _ = digits
    options = dict(strategy=pg.SGD(batch_size=64), engine="serial", workers=2, epochs=1, tol=0.0)
    fresh = pg.train(MLP(hidden=(256,)), train, **options)
    warm = pg.train(MLP(hidden=(256,)), train, init=teacher, **options)
    assert warm.history[0]["loss"] < fresh.history[0]["loss"] / 5


def test_init_refuses_a_model_that_does_not_fit(digits, teacher, files):
    train, _ = digits
    with pytest.raises(pg.ConfigError, match="parameters"):
        pg.train(MLP(hidden=(16,)), train, init=teacher, engine="serial", workers=1, epochs=1)
    two = pg.Dataset(train.X, train.y % 2)
    with pytest.raises(pg.DataError, match="classes"):
        pg.train(MLP(hidden=(256,)), two, init=teacher, engine="serial", workers=1, epochs=1)
    done = run_cli(
        "train", files / "train.npz", "--model", "softmax", "--init", files / "teacher.npz", "--out",
        files / "x.npz",
    )  # fmt: skip
    assert done.returncode == 1 and "init: a mlp model cannot start a softmax" in done.stderr


def test_a_torch_model_teaches(digits):
    pytest.importorskip("torch")
    from test_torch import small_net

    train, test = digits
    teacher_options = dict(
        strategy=pg.SGD(batch_size=64), optimizer=pg.optim.Adam(lr=1e-2), epochs=3, tol=0.0
    )
    teacher = pg.train(
        pg.models.Torch(small_net(64, 10)), train, engine="serial", workers=1, **teacher_options
    ).model
    run = pg.distill(
        teacher, SoftmaxRegression(), train, test=test, engine="serial", workers=2, epochs=5, seed=0
    )
    student = next(standing for standing in run.standings if standing.name == "student")
    assert student.fidelity > 0.85


def test_an_onnx_file_teaches(digits, files, tmp_path):
    pytest.importorskip("onnxruntime")
    train, test = digits
    assert run_cli("export", files / "teacher.npz", "--out", tmp_path / "t.onnx").returncode == 0
    from paragrad.models.onnx_model import load_onnx

    onnx_teacher = load_onnx(tmp_path / "t.onnx")
    teacher = pg.load_model(files / "teacher.npz")
    assert np.array_equal(onnx_teacher.predict(test.X), teacher.predict(test.X))
    assert np.allclose(onnx_teacher.predict_proba(test.X), teacher.predict_proba(test.X))
    options = dict(test=test, engine="local", workers=2, epochs=2, seed=0, baseline=False)
    from_onnx = pg.distill(tmp_path / "t.onnx", SoftmaxRegression(), train, **options)
    from_model = pg.distill(teacher, SoftmaxRegression(), train, **options)
    assert np.allclose(from_onnx.params, from_model.params, rtol=1e-6, atol=1e-9)


def test_the_pruning_fine_tune_is_the_same_on_worker_processes():
    data = pg.make_classification(600, 6, num_classes=3, seed=6)
    model = pg.train(SoftmaxRegression(l2=0.01), data, engine="serial", workers=1).model
    options = dict(sparsity=0.5, data=data, workers=2, epochs=2)
    serial = pg.compress(model, "prune", engine="serial", **options)
    local = pg.compress(model, "prune", engine="local", **options)
    assert np.count_nonzero(serial.params[:18] == 0.0) == 9  # half of the 6 x 3 weights
    assert np.allclose(serial.params, local.params, rtol=1e-6, atol=1e-7)  # float32 storage


def test_train_init_from_the_command_line(files):
    done = run_cli(
        "train", files / "train.npz", "--model", "mlp", "--hidden", "256", "--strategy", "sgd",
        "--epochs", "1", "--init", files / "teacher.npz", "--engine", "serial", "--workers", "1",
        "--out", files / "warm.npz",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "energy" in done.stdout
    assert pg.load_model(files / "warm.npz").num_params == pg.load_model(files / "teacher.npz").num_params
