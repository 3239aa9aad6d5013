"""What paragrad decides for the user, checked on real data: the model a target calls for,
columns matched by name, separable classes, and output that survives the shell."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from conftest import run_cli
from sklearn import datasets as skdata

import paragrad as pg
from paragrad.training.settings import choose_model

# Whole-number regression targets that ship with statsmodels: counts, employment, bills.
WHOLE_NUMBER_QUANTITIES = ["stackloss", "committee", "longley", "cpunish", "strikes"]


def statsmodels_data(name: str) -> tuple[pd.DataFrame, pd.Series]:
    data = getattr(sm.datasets, name).load_pandas()
    return data.exog.astype(float), data.endog.astype(float)


@pytest.mark.parametrize("name", WHOLE_NUMBER_QUANTITIES)
def test_whole_number_quantities_are_fitted_as_least_squares(name):
    exog, endog = statsmodels_data(name)
    assert np.array_equal(endog, np.round(endog))  # whole numbers, as the rule must read them
    run = pg.train(None, pg.Dataset(exog, endog), engine="serial")
    assert isinstance(run.model, pg.models.LinearRegression), run.model_choice
    assert "treated as a quantity" in run.model_choice
    ols = sm.OLS(endog, sm.add_constant(exog)).fit()
    np.testing.assert_allclose(run.model.predict(exog), ols.fittedvalues, rtol=1e-8, atol=1e-8)


def class_targets():
    spector = sm.datasets.spector.load_pandas()
    anes = sm.datasets.anes96.load_pandas()
    return {
        "spector GRADE": (spector.exog, spector.endog, "logistic"),
        "anes96 PID": (anes.exog, anes.endog, "softmax"),
        "iris": (*skdata.load_iris(return_X_y=True), "softmax"),
        "wine": (*skdata.load_wine(return_X_y=True), "softmax"),
        "breast_cancer": (*skdata.load_breast_cancer(return_X_y=True), "logistic"),
        "digits": (*skdata.load_digits(return_X_y=True), "softmax"),
        "diabetes (a quantity)": (*skdata.load_diabetes(return_X_y=True), "linear"),
    }


@pytest.mark.parametrize("name", list(class_targets()))
def test_class_targets_are_classifiers_and_quantities_regressions(name):
    X, y, expected = class_targets()[name]
    chosen, reason = choose_model(pg.Dataset(X, y))
    assert chosen == expected, reason


def test_the_zero_flag_command_says_why_a_whole_number_target_is_a_quantity(tmp_path):
    exog, endog = statsmodels_data("stackloss")
    pd.concat([exog, endog], axis=1).to_csv(tmp_path / "stackloss.csv", index=False)
    result = run_cli(
        "train", tmp_path / "stackloss.csv", "--target", "STACKLOSS", "--out", tmp_path / "m.npz"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == (
        "model: linear (target STACKLOSS: 14 distinct whole numbers in 21 rows, treated as a quantity; "
        "--model softmax to treat them as classes)"
    )
    forced = run_cli("train", tmp_path / "stackloss.csv", "--target", "STACKLOSS", "--model", "softmax")
    assert forced.returncode == 1 and "14 classes in 21 rows" in forced.stderr
    assert "--model linear" in forced.stderr


def test_a_model_from_a_frame_matches_columns_by_name(tmp_path):
    data = pg.make_regression(200, 3, noise=0.1, seed=4)
    frame = pd.DataFrame(data.X, columns=["a", "b", "c"])
    run = pg.train(
        pg.models.LinearRegression(), pg.Dataset(frame, pd.Series(data.y, name="y")), engine="serial"
    )
    assert run.model.feature_names_ == ("a", "b", "c") and run.model.target_name_ == "y"
    run.save(tmp_path / "m.npz")
    table = frame.assign(y=data.y)
    table.to_csv(tmp_path / "same.csv", index=False)
    table[["c", "y", "a", "b"]].to_csv(tmp_path / "reordered.csv", index=False)
    same = pg.evaluate(tmp_path / "m.npz", tmp_path / "same.csv")
    reordered = pg.evaluate(tmp_path / "m.npz", tmp_path / "reordered.csv")
    assert reordered == same and same["r2"] > 0.99
    cli = run_cli("evaluate", tmp_path / "m.npz", tmp_path / "reordered.csv", "--json")
    assert cli.returncode == 0 and f'"r2": {same["r2"]}' in cli.stdout
    np.testing.assert_array_equal(pg.predict(run.model, frame[["c", "b", "a"]]), run.model.predict(data.X))
    extra = frame.assign(note=1.0)[["note", "b", "a", "c"]]
    np.testing.assert_array_equal(pg.predict(run.model, extra), run.model.predict(data.X))
    table[["c", "y", "a"]].to_csv(tmp_path / "missing.csv", index=False)
    missing = run_cli("evaluate", tmp_path / "m.npz", tmp_path / "missing.csv")
    assert missing.returncode == 1 and "missing feature column(s) 'b'" in missing.stderr
    with pytest.raises(pg.DataError, match="missing feature column"):
        pg.predict(run.model, frame[["a", "c"]])


def test_frames_keep_names_read_nullable_columns_and_name_text_columns():
    import polars as pl

    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], "b": pd.array([1, None, 3, 5], dtype="Int64")})
    y = pd.Series([1.0, 2.0, 2.5, 4.0], name="y")
    with pytest.raises(pg.DataError, match=r"first at row 2, 'b' \(NaN or missing\)"):
        pg.Dataset(frame, y)
    kept = pg.load(frame.assign(y=y), target="y", dropna=True)
    assert kept.feature_names == ("a", "b") and kept.num_rows == 3 and kept.rows_dropped == 1
    from_polars = pg.load(pl.from_pandas(frame.assign(y=y)), target="y", dropna=True)
    np.testing.assert_array_equal(from_polars.X, kept.X)
    with pytest.raises(pg.DataError, match=r"column 'city' holds (text|categories).*one_hot=\['city'\]"):
        pg.Dataset(frame.assign(city=["x", "y", "x", "y"]).drop(columns="b"), y)
    encoded = pg.load(
        frame.assign(city=pd.Categorical(["x", "y", "x", "y"]), y=y),
        target="y",
        one_hot=["city"],
        dropna=True,
    )
    assert encoded.feature_names == ("a", "b", "city=y")


def iris_csv(tmp_path):
    frame = skdata.load_iris(as_frame=True).frame
    frame.to_csv(tmp_path / "iris.csv", index=False)
    return tmp_path / "iris.csv"


def test_iris_without_a_penalty_has_no_finite_optimum(tmp_path):
    path = iris_csv(tmp_path)
    with pytest.warns(pg.ConvergenceWarning, match="separable"):
        run = pg.train(None, pg.load(path, target="target"), engine="serial")
    assert not run.converged and run.stopped == "no finite optimum"
    strict = run_cli("train", path, "--target", "target", "--strict", "--out", tmp_path / "m.npz")
    assert strict.returncode == 3 and not (tmp_path / "m.npz").exists()
    assert "no finite optimum" in strict.stderr and "--l2" in strict.stderr
    first_warning = next(line for line in strict.stderr.splitlines() if "warning" in line)
    assert "separable" in first_warning and "linearly dependent" not in strict.stderr
    penalised = run_cli("train", path, "--target", "target", "--strict", "--l2", "0.01")
    assert penalised.returncode == 0 and "(converged)" in penalised.stdout


def test_a_closed_stdout_never_loses_the_model(tmp_path):
    path = iris_csv(tmp_path)
    model = tmp_path / "m.npz"
    command = (
        f"set -o pipefail; {sys.executable} -m paragrad train {path} --target target --l2 0.01 "
        f"--out {model} | head -c1"
    )
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    same = pg.train(pg.models.SoftmaxRegression(l2=0.01), pg.load(path, target="target"), engine="serial")
    np.testing.assert_allclose(pg.load_model(model).params, same.params, rtol=1e-10, atol=1e-12)
