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
        "--engine",
        "local",
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
        ("a,b,y\n1,x,0\n3,4,1\n", [], "column 'b' is not numeric (line 2 holds 'x'): drop it with --drop b"),
        ("a,b,y\n1,2,0\n,4,1\n", [], "missing value in column 'a' at line 3; skip such rows with --dropna"),
        ("a,b,y\n1,2,0\n3,4,2\n5,6,1\n7,8,0\n9,1,2\n2,3,1\n", [], "takes two classes, but the target has 3"),
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


@pytest.mark.parametrize("command", ["train", "predict", "evaluate", "make-data", "export", "serve"])
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


def labelled_csv(path, labels, rows: int = 120):
    """A CSV of two features and a target ``y`` holding ``labels`` (written as given),
    the label of each row following its first feature, with some noise."""
    rng = np.random.default_rng(7)
    X = rng.standard_normal((rows, 2))
    codes = np.digitize(X[:, 0] + 0.5 * rng.standard_normal(rows), np.linspace(-1, 1, len(labels) - 1))
    lines = [f"{a:.6f},{b:.6f},{labels[code]}" for (a, b), code in zip(X, codes, strict=True)]
    path.write_text("a,b,y\n" + "\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("labels", "chosen", "typed"),
    [
        (["no", "yes"], "model: logistic (target y: 2 distinct labels, treated as classes: no, yes)", str),
        (["-1", "1"], "model: logistic (target y: 2 whole numbers, each in at least 5 of", int),
        (["1", "2"], "model: logistic (target y: 2 whole numbers, each in at least 5 of", int),
        (
            ["false", "true"],
            "model: logistic (target y: 2 distinct labels, treated as classes: False, True)",
            bool,
        ),
        (
            ["low", "mid", "high"],
            "model: softmax (target y: 3 distinct labels, treated as classes: high, low, mid)",
            str,
        ),
    ],
    ids=["yes-no", "minus-one-one", "one-two", "true-false", "three-texts"],
)
def test_zero_flag_training_predicts_and_evaluates_in_the_labels_own_type(tmp_path, labels, chosen, typed):
    data = labelled_csv(tmp_path / "data.csv", labels)
    model, out = tmp_path / "m.npz", tmp_path / "p.csv"

    trained = run_cli("train", data, "--target", "y", "--out", model, "--workers", "2")
    predicted = run_cli("predict", model, data, "--out", out, "--workers", "2")
    evaluated = run_cli("evaluate", model, data, "--json")

    assert trained.returncode == 0, trained.stderr
    assert trained.stdout.splitlines()[0].startswith(chosen)
    assert predicted.returncode == 0, predicted.stderr
    values = pacsv.read_csv(out).column("prediction").to_pylist()
    written = [str(label).lower() for label in values]
    assert set(written) <= {label.lower() for label in labels}
    assert all(type(value) is typed for value in values)
    metrics = json.loads(evaluated.stdout)
    assert evaluated.returncode == 0 and metrics["accuracy"] > 0.5, evaluated.stderr


def test_zero_flag_training_of_a_regression_file(tmp_path):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((200, 3))
    y = X @ [1.0, -2.0, 0.5] + 0.1 * rng.standard_normal(200)
    data = tmp_path / "data.csv"
    pg.save_dataset(pg.Dataset(X, y), data)
    model, out = tmp_path / "m.npz", tmp_path / "p.csv"

    trained = run_cli("train", data, "--target", "y", "--out", model)
    predicted = run_cli("predict", model, data, "--out", out)
    evaluated = run_cli("evaluate", model, data, "--json")

    assert trained.returncode == 0, trained.stderr
    assert trained.stdout.splitlines()[0] == (
        "model: linear (target y: 200 distinct values in 200 rows, treated as a quantity)"
    )
    assert predicted.returncode == 0, predicted.stderr
    assert len(pacsv.read_csv(out).column("prediction")) == 200
    assert json.loads(evaluated.stdout)["r2"] > 0.99


def test_model_overrides_the_choice_and_a_constant_target_is_refused(tmp_path):
    data = labelled_csv(tmp_path / "data.csv", ["0", "1"])
    overridden = run_cli("train", data, "--target", "y", "--model", "linear", "--engine", "serial")
    constant = write_csv(tmp_path / "constant.csv", "a,y\n1,5\n2,5\n3,5\n")

    refused = run_cli("train", constant, "--target", "y", "--engine", "serial")

    assert overridden.returncode == 0, overridden.stderr
    assert not overridden.stdout.startswith("model:")
    expect_clear_error(refused, "every value of target y is 5")


def test_text_labels_for_a_regression_model_are_one_clear_line(tmp_path):
    data = labelled_csv(tmp_path / "data.csv", ["no", "yes"])
    result = run_cli("train", data, "--target", "y", "--model", "linear", "--engine", "serial")
    expect_clear_error(
        result,
        "the linear model needs a numeric target, but it holds labels (no, yes): "
        "use --model logistic or softmax",
    )


def test_every_train_option_shows_its_default_in_help():
    from paragrad.cli.parser import build_parser

    commands = next(a for a in build_parser()._actions if a.dest == "command")
    flags = [a.option_strings[-1] for a in commands.choices["train"]._actions if a.option_strings]
    flags = [flag for flag in flags if flag not in ("--help", "--no-progress")]

    text = run_cli("train", "--help").stdout
    options = text[text.index("options:") :]

    for flag, after in zip(flags, [*flags[1:], None], strict=True):
        start = options.index(f"  {flag}")
        chunk = options[start : options.index(f"  {after}", start) if after else None]
        assert "default" in chunk, chunk


def test_train_without_out_says_nothing_was_saved(tmp_path):
    data = labelled_csv(tmp_path / "data.csv", ["no", "yes"])
    result = run_cli("train", data, "--target", "y", "--engine", "serial")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "not saved: give --out FILE to keep the model"
    assert "training loss" in result.stdout


@pytest.mark.parametrize("checkpoints", [False, True], ids=["plain", "checkpointed"])
def test_sigterm_stops_training_with_exit_status_143(tmp_path, checkpoints):
    import os
    import signal
    import subprocess
    import sys
    import time

    data = tmp_path / "data.npz"
    pg.save_dataset(pg.make_classification(20000, 20, seed=0), data)
    command = [sys.executable, "-m", "paragrad", "train", data, "--model", "logistic", "--workers", "2"]
    args = [*command, "--strategy", "sgd", "--batch-size", "1", "--epochs", "1000", "--tol", "0"]
    if checkpoints:
        args += ["--checkpoint", tmp_path / "runs"]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(4)

    os.kill(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)

    assert process.returncode == 143, stderr
    assert "Traceback" not in stderr
    hint = f"; go on from the checkpoints in {tmp_path / 'runs'} with --resume" if checkpoints else ""
    assert stderr.strip().splitlines()[-1] == f"paragrad: terminated{hint}"
