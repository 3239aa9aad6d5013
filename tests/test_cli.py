"""The command line in real subprocesses: round trips and one clear line for bad input."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.csv as pacsv
import pytest
from conftest import run_cli

import paragrad as pg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A generated CSV, a model trained on it through the CLI, and a held-out file."""
    folder = tmp_path_factory.mktemp("cli")
    made = run_cli(
        "make-data",
        "classification",
        "--rows",
        400,
        "--features",
        4,
        "--classes",
        3,
        "--seed",
        1,
        "--out",
        folder / "train.csv",
        "--test-rows",
        100,
        "--test-out",
        folder / "test.csv",
    )
    assert made.returncode == 0, made.stderr
    trained = run_cli(
        "train",
        folder / "train.csv",
        "--target",
        "y",
        "--model",
        "softmax",
        "--strategy",
        "sgd",
        "--batch-size",
        32,
        "--epochs",
        5,
        "--standardize",
        "--workers",
        2,
        "--out",
        folder / "model.npz",
    )
    assert trained.returncode == 0, trained.stderr
    assert "local engine, 2 workers" in trained.stdout
    return folder


def test_train_predict_evaluate_round_trip(trained):
    model = pg.load_model(trained / "model.npz")
    result = run_cli(
        "predict", trained / "model.npz", trained / "test.csv", "--workers", 2, "--out", trained / "preds.csv"
    )
    assert result.returncode == 0, result.stderr
    predictions = pacsv.read_csv(trained / "preds.csv").column("prediction").to_numpy()
    test = pg.load(trained / "test.csv", target="y")
    np.testing.assert_array_equal(predictions, model.predict(test.X))

    result = run_cli("evaluate", trained / "model.npz", trained / "test.csv", "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    expected = pg.evaluate(model, test)
    assert metrics["accuracy"] == pytest.approx(expected["accuracy"]) and metrics["rows"] == 100
    assert metrics["loss"] == pytest.approx(expected["loss"])
    assert metrics["accuracy"] > 0.5


def test_predict_probabilities_to_npy(trained):
    out = trained / "proba.npy"
    result = run_cli(
        "predict", trained / "model.npz", trained / "test.csv", "--proba", "--engine", "serial", "--out", out
    )
    assert result.returncode == 0, result.stderr
    proba = np.load(out)
    assert proba.shape == (100, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


def test_regression_through_the_cli(tmp_path):
    assert (
        run_cli(
            "make-data", "regression", "--rows", 300, "--features", 3, "--out", tmp_path / "r.parquet"
        ).returncode
        == 0
    )
    result = run_cli(
        "train",
        tmp_path / "r.parquet",
        "--target",
        "y",
        "--model",
        "linear",
        "--optimizer",
        "sgd",
        "--lr",
        0.3,
        "--epochs",
        500,
        "--workers",
        2,
        "--engine",
        "serial",
        "--out",
        tmp_path / "m.npz",
    )
    assert result.returncode == 0, result.stderr
    assert "converged" in result.stdout
    result = run_cli("evaluate", tmp_path / "m.npz", tmp_path / "r.parquet")
    assert result.returncode == 0, result.stderr
    assert "rmse" in result.stdout and "r2" in result.stdout


def write_csv(path, text):
    path.write_text(text)
    return path


def expect_clear_error(result, phrase: str, *unwritten) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("paragrad: error: ") and phrase in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    for path in unwritten:
        assert not path.exists()


@pytest.mark.parametrize(
    ("content", "extra", "phrase"),
    [
        (None, [], "file not found"),
        ("a,b,label\n1,2,0\n3,4,1\n", [], "target column 'y' not found (columns: a, b, label)"),
        ("a,b,y\n1,x,0\n3,4,1\n", [], "column 'b' is not numeric (row 1 holds 'x')"),
        ("a,b,y\n1,2,0\n,4,1\n", [], "first at row 2, 'a'"),
        ("a,b,y\n1,2,0\n3,4,2\n5,6,1\n", [], "takes two classes, but the target has 3"),
        ("a,b,y\n1,2,0\n3,4,1\n", ["--workers", "3"], "3 workers need at least 3 rows, but the data has 2"),
        ("a,b,y\n1,2,0\n3,4,1\n", ["--lr", "0"], "learning rate must be a positive number"),
    ],
    ids=["missing-file", "missing-target", "non-numeric", "nan", "labels", "workers", "lr"],
)
def test_bad_training_input_gets_one_clear_line(tmp_path, content, extra, phrase):
    data = tmp_path / "data.csv"
    if content is not None:
        write_csv(data, content)
    out = tmp_path / "model.npz"
    result = run_cli(
        "train", data, "--target", "y", "--model", "logistic", "--engine", "serial", "--out", out, *extra
    )
    expect_clear_error(result, phrase, out)


@pytest.mark.parametrize(
    ("header", "target", "picked"),
    [("a,1,y", "1", "1"), ("a,1,y", "#1", "1"), ("a,b,y", "2", "y"), ("a,b,y", "#2", "y")],
    ids=["name-of-digits", "hash-index", "index", "hash-index-plain"],
)
def test_target_is_a_column_name_first(tmp_path, header, target, picked):
    data = write_csv(tmp_path / "data.csv", f"{header}\n1,0,0\n3,1,1\n2,0,1\n")
    out = tmp_path / "model.npz"
    args = ("--model", "linear", "--engine", "serial", "--epochs", "1", "--out", out)
    result = run_cli("train", data, "--target", target, *args)
    assert result.returncode == 0, result.stderr
    assert pg.load_model(out).target_name_ == picked
    result = run_cli("evaluate", out, data, "--target", target, "--json")
    assert result.returncode == 0, result.stderr


def test_evaluate_finds_the_models_target_by_name_only(tmp_path):
    data = write_csv(tmp_path / "data.csv", "a,#0,y\n1,0,0\n3,1,1\n2,0,1\n")
    out = tmp_path / "model.npz"
    args = ("--model", "linear", "--engine", "serial", "--epochs", "1", "--out", out)
    assert run_cli("train", data, "--target", "1", *args).returncode == 0
    assert pg.load_model(out).target_name_ == "#0"
    result = run_cli("evaluate", out, data, "--json")  # '#0', the model's column, not index 0
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["rows"] == 3


def test_target_index_out_of_range_gets_one_clear_line(tmp_path):
    data = write_csv(tmp_path / "data.csv", "a,b,y\n1,2,0\n3,4,1\n")
    out = tmp_path / "model.npz"
    result = run_cli("train", data, "--target", "#9", "--model", "linear", "--engine", "serial", "--out", out)
    expect_clear_error(result, "target column index 9 out of range (3 columns)", out)


@pytest.mark.parametrize("extra", [[], ["--standardize"]], ids=["plain", "standardize"])
def test_a_value_too_large_to_square_is_refused_not_trained_to_zeros(tmp_path, extra):
    data = write_csv(tmp_path / "data.csv", "a,b,y\n1,2,0\n3,1e308,1\n2,1,1\n")
    out = tmp_path / "model.npz"
    result = run_cli(
        "train", data, "--target", "y", "--model", "logistic", "--engine", "serial", "--out", out, *extra
    )
    assert result.returncode == 1
    expect_clear_error(result, "too large to square in float64", out)
    assert "first at row 2, 'b' (1e+308): rescale the column" in result.stderr


def test_feature_count_that_differs_at_predict_time(trained, tmp_path):
    data = write_csv(tmp_path / "few.csv", "x0,x1,x2\n1,2,3\n")
    out = tmp_path / "preds.csv"
    expect_clear_error(
        run_cli("predict", trained / "model.npz", data, "--out", out), "missing feature column(s) 'x3'", out
    )
    np.save(tmp_path / "few.npy", np.ones((2, 3)))
    result = run_cli("predict", trained / "model.npz", tmp_path / "few.npy", "--out", out)
    expect_clear_error(result, "has 3 features, but the model was trained with 4", out)


def test_bad_model_files_get_one_clear_line(trained, tmp_path):
    out = tmp_path / "preds.csv"
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes((trained / "model.npz").read_bytes()[:100])
    expect_clear_error(run_cli("predict", truncated, trained / "test.csv", "--out", out), "truncated", out)
    expect_clear_error(
        run_cli("evaluate", trained / "test.csv", trained / "test.csv"), "not a paragrad model file"
    )


def test_output_directory_must_exist(trained, tmp_path):
    result = run_cli(
        "predict", trained / "model.npz", trained / "test.csv", "--out", tmp_path / "no" / "p.csv"
    )
    expect_clear_error(result, "output directory")


def test_make_data_checks_every_output_before_writing_any(tmp_path):
    out = tmp_path / "a.csv"
    common = ["make-data", "regression", "--rows", 10, "--features", 2, "--out", out]
    expect_clear_error(run_cli(*common, "--test-rows", 5), "--test-rows and --test-out go together", out)
    result = run_cli(*common, "--test-rows", 5, "--test-out", tmp_path / "no" / "t.csv")
    expect_clear_error(result, "output directory", out)
    expect_clear_error(run_cli(*common[:-1], tmp_path / "a.xlsx"), "unsupported output type")


def test_train_refuses_a_directory_as_output_before_training(tmp_path, trained):
    result = run_cli("train", trained / "train.csv", "--target", "y", "--model", "softmax", "--out", tmp_path)
    expect_clear_error(result, "is a directory")


@pytest.mark.parametrize("command", ["train", "predict", "evaluate", "make-data"])
def test_every_command_has_help(command):
    result = run_cli(command, "--help")
    assert result.returncode == 0 and "usage: paragrad" in result.stdout


@pytest.mark.parametrize("suffix", [".npy", ".csv", ".parquet"])
def test_predict_streams_chunks_of_a_memory_mapped_npy_into_any_output(tmp_path, suffix):
    from paragrad.inference import predict_to_file

    data = pg.make_classification(1000, 4, num_classes=3, seed=0)
    run = pg.train(pg.models.SoftmaxRegression(), data, engine="serial", workers=2, epochs=3, tol=0)
    np.save(tmp_path / "X.npy", data.X.astype(np.float32))
    out = tmp_path / f"proba{suffix}"
    rows = predict_to_file(run.model, tmp_path / "X.npy", out, workers=2, proba=True, chunk_rows=300)
    assert rows == 1000
    expected = run.model.predict_proba(data.X.astype(np.float32))
    if suffix == ".npy":
        written = np.load(out)
    else:
        table = (
            pacsv.read_csv(out) if suffix == ".csv" else __import__("pyarrow.parquet").parquet.read_table(out)
        )
        written = np.column_stack([table.column(f"proba_{k}").to_numpy() for k in range(3)])
    np.testing.assert_array_equal(written.astype(expected.dtype), expected)


def test_predict_converts_a_float16_npy_chunk_by_chunk(tmp_path):
    from paragrad.inference import predict_to_file

    data = pg.make_regression(500, 6, seed=2)
    run = pg.train(pg.models.LinearRegression(), data, engine="serial", workers=2, epochs=20, tol=0)
    X16 = data.X.astype(np.float16)
    np.save(tmp_path / "X16.npy", X16)
    predict_to_file(run.model, tmp_path / "X16.npy", tmp_path / "p.npy", workers=2, chunk_rows=128)
    np.testing.assert_allclose(
        np.load(tmp_path / "p.npy"), run.model.predict(X16.astype(np.float64)), rtol=1e-12
    )
