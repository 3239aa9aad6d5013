"""The round loop: history, convergence, divergence, standardisation, progress and settings."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import relative_error

import paragrad as pg
from paragrad.training.tasks import TrainStep
from paragrad.training.trainer import HISTORY_KEYS


def test_history_has_one_record_per_round_with_the_documented_keys(binary_data):
    run = pg.train(
        pg.models.LogisticRegression(),
        binary_data,
        strategy=pg.SGD(batch_size=100),
        engine="serial",
        workers=2,
        epochs=2,
        tol=0,
    )
    # 301 rows in global batches of 100: 4 rounds per epoch, whatever the workers.
    assert [record["round"] for record in run.history] == list(range(8))
    assert [record["epoch"] for record in run.history] == [0] * 4 + [1] * 4
    for record in run.history:
        assert tuple(record) == HISTORY_KEYS
        assert record["bytes_sent"] == 2 * (run.params.nbytes + 8)
        assert record["wall_s"] >= record["compute_s"] >= 0
    assert run.final_loss == run.history[-1]["loss"]
    assert "rounds        8" in run.summary()


def test_gradient_descent_does_not_depend_on_how_rows_are_sharded(regression_data):
    def fit(**options):
        return pg.train(
            pg.models.LinearRegression(), regression_data, engine="serial", epochs=20, tol=0, **options
        ).params

    assert relative_error(fit(workers=3, shuffle=True, seed=9), fit(workers=1)) <= 1e-12


def test_divergence_stops_with_the_setting_to_lower_and_keeps_finite_parameters(regression_data):
    model = pg.models.LinearRegression()
    with pytest.raises(
        pg.TrainingDiverged, match=r"diverged at round \d+ .*lower the learning rate \(now lr=1e\+06\)"
    ) as caught:
        pg.train(
            model, regression_data, optimizer=pg.optim.SGD(lr=1e6), engine="serial", workers=2, epochs=1000
        )
    assert np.isfinite(caught.value.params).all()
    np.testing.assert_array_equal(model.params_, caught.value.params)


def test_stopping_at_the_limit_warns_and_converging_does_not(regression_data):
    with pytest.warns(pg.ConvergenceWarning, match="stopped after 3 rounds without converging"):
        run = pg.train(
            pg.models.LinearRegression(),
            regression_data,
            optimizer=pg.optim.LBFGS(),  # the default, exact least squares, is solved in one round
            engine="serial",
            workers=2,
            epochs=3,
        )
    assert not run.converged
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run = pg.train(
            pg.models.LinearRegression(),
            regression_data,
            optimizer=pg.optim.SGD(lr=0.5),
            engine="serial",
            workers=2,
            epochs=1000,
        )
    assert run.converged and len(run.history) < 1000


def test_max_rounds_caps_the_epochs(binary_data):
    run = pg.train(
        pg.models.LogisticRegression(),
        binary_data,
        strategy=pg.SGD(batch_size=10),
        engine="serial",
        workers=2,
        epochs=5,
        max_rounds=7,
        tol=0,
    )
    assert len(run.history) == 7


def test_standardisation_equals_training_on_standardised_data(regression_data):
    X = regression_data.X * [1.0, 10.0, 100.0, 0.1, 1.0, 5.0] + 3.0
    common = dict(optimizer=pg.optim.SGD(lr=0.1), engine="serial", epochs=30, tol=0)
    run = pg.train(
        pg.models.LinearRegression(), pg.Dataset(X, regression_data.y), standardize=True, workers=3, **common
    )
    scaled = (X - X.mean(axis=0)) / X.std(axis=0)
    plain = pg.train(pg.models.LinearRegression(), pg.Dataset(scaled, regression_data.y), workers=3, **common)
    np.testing.assert_allclose(run.model.standardizer_.mean, X.mean(axis=0), rtol=1e-13)
    assert relative_error(run.params, plain.params) <= 1e-10
    np.testing.assert_allclose(run.model.predict(X), plain.model.predict(scaled), rtol=1e-10)
    np.testing.assert_array_equal(X, regression_data.X * [1.0, 10.0, 100.0, 0.1, 1.0, 5.0] + 3.0)


def test_progress_bar_is_silent_unless_asked(binary_data, capsys):
    pg.train(pg.models.LogisticRegression(), binary_data, engine="serial", workers=2, epochs=3, tol=0)
    assert capsys.readouterr().err == ""
    pg.train(
        pg.models.LogisticRegression(),
        binary_data,
        engine="serial",
        workers=2,
        epochs=3,
        tol=0,
        progress=True,
    )
    assert "0/3 [" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"epochs": 0}, "epochs must be a positive integer, got 0"),
        ({"workers": -1}, "workers= must be a positive integer, .min, max. or 'auto', got -1"),
        ({"max_rounds": 1.5}, "max_rounds must be a positive integer"),
        ({"tol": -1}, "tol must be a non-negative number"),
        ({"workers": 400}, "400 workers need at least 400 rows, but the data has 301"),
        ({"dtype": "int8"}, "dtype must be float32 or float64"),
        ({"engine": "cloud"}, "unknown engine 'cloud'"),
    ],
)
def test_bad_settings_are_refused(binary_data, options, message):
    with pytest.raises(pg.ConfigError, match=message):
        pg.train(pg.models.LogisticRegression(), binary_data, **{"engine": "serial", **options})


def test_data_must_be_a_labelled_dataset(binary_data):
    with pytest.raises(pg.ConfigError, match="data must be a paragrad.Dataset"):
        pg.train(pg.models.LogisticRegression(), (binary_data.X, binary_data.y), engine="serial")
    with pytest.raises(pg.DataError, match="no target values to train on"):
        pg.train(pg.models.LogisticRegression(), pg.Dataset(binary_data.X), engine="serial")


def test_float32_training_stays_close_to_float64(binary_data):
    common = dict(engine="serial", workers=2, epochs=50, tol=0)
    single = pg.train(pg.models.LogisticRegression(), binary_data, dtype="float32", **common)
    double = pg.train(pg.models.LogisticRegression(), binary_data, **common)
    assert relative_error(single.params, double.params) <= 1e-5


INLINE_CASES = {
    "logistic": (pg.models.LogisticRegression, {}, "binary", {}),
    "logistic l2, no intercept": (
        pg.models.LogisticRegression,
        {"l2": 0.01, "fit_intercept": False},
        "binary",
        {},
    ),
    "logistic float32": (pg.models.LogisticRegression, {}, "binary", {"dtype": "float32"}),
    "softmax": (pg.models.SoftmaxRegression, {"l2": 0.001}, "multiclass", {}),
    "linear newton": (pg.models.LinearRegression, {}, "regression", {"optimizer": pg.optim.Newton()}),
    "linear qr": (
        pg.models.LinearRegression,
        {"l2": 0.1},
        "regression",
        {"optimizer": pg.optim.LeastSquares()},
    ),
    "linear sgd": (
        pg.models.LinearRegression,
        {},
        "regression",
        {"strategy": pg.SGD(batch_size=64), "epochs": 2},
    ),
}


@pytest.mark.parametrize("case", sorted(INLINE_CASES))
def test_a_pass_called_in_place_matches_the_engines_pass(case, monkeypatch, request):
    # Prepare: the serial engine's one worker is called in place unless inline_shard says None.
    from paragrad.engines.serial import SerialEngine

    family, settings, data_name, options = INLINE_CASES[case]
    data = request.getfixturevalue(f"{data_name}_data")

    def fit():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", pg.errors.ConvergenceWarning)
            return pg.train(family(**settings), data, engine="serial", workers=1, progress=False, **options)

    tasks = []
    call_each = SerialEngine._call_each
    monkeypatch.setattr(
        SerialEngine, "_call_each", lambda self, task, args: tasks.append(task) or call_each(self, task, args)
    )

    # Execute
    inline = fit()
    in_place = not any(isinstance(task, TrainStep) for task in tasks)
    monkeypatch.setattr(SerialEngine, "inline_shard", lambda self: None)
    general = fit()

    # Assert: the passes ran in place, and gave the same parameters, losses and counts, bit for bit.
    assert in_place and any(isinstance(task, TrainStep) for task in tasks)

    assert np.array_equal(inline.params, general.params)
    assert inline.stopped == general.stopped
    for key in ("round", "epoch", "loss", "bytes_sent", "bytes_received", "samples", "workers"):
        assert [r[key] for r in inline.history] == [r[key] for r in general.history], key


def test_only_an_engine_of_one_in_process_worker_offers_its_shard(binary_data):
    plan = pg.core.shards.plan_shards(binary_data.num_rows, 2, shuffle=False, seed=0)
    with pg.engines.make_engine("serial", 2) as engine:
        engine.start(binary_data, plan)
        assert engine.inline_shard() is None
        engine.resize(1)
        engine.between_rounds(0)
        assert engine.inline_shard() is engine.shards[0]


def test_a_shard_makes_the_small_design_once_while_it_holds_its_features():
    """Newton's passes over small data take the design (X beside a column of ones) the
    shard made at the first pass: the same arrays, bit for bit, made again only when the
    features are replaced, and never one made for another layout."""
    # Prepare
    from paragrad.core.shards import Shard

    rng = np.random.default_rng(5)
    X, y = rng.standard_normal((40, 3)), (rng.random(40) < 0.5) * 1.0
    model = pg.models.LogisticRegression()
    model.setup(3, np.array([0.0, 1.0]))
    params = rng.standard_normal(4)
    shard = Shard(X, y, 0, 1)
    # Execute
    design = model.kept_design(shard)
    # Assert
    assert design is not None and model.kept_design(shard) is design
    np.testing.assert_array_equal(design, np.column_stack([X, np.ones(40)]))
    kept = model.loss_grad_hess(params, X, y, design=design)
    made = model.loss_grad_hess(params, X, y)
    assert kept[0] == made[0] and all(np.array_equal(a, b) for a, b in zip(kept[1:], made[1:], strict=True))
    without = pg.models.LogisticRegression(fit_intercept=False)
    without.setup(3, np.array([0.0, 1.0]))
    assert without.kept_design(shard) is X  # its own layout: no column of ones
    softmax = pg.models.SoftmaxRegression()
    softmax.setup(3, np.array([0.0, 1.0, 2.0]))
    assert softmax.kept_design(shard) is None  # several outputs: the block loop's
    shard.X = 2.0 * X  # standardised, say
    again = model.kept_design(shard)
    assert again is not design
    np.testing.assert_array_equal(again[:, :-1], 2.0 * X)


@pytest.mark.parametrize(
    "parts",
    [
        [np.array([0.0, 1.0]), np.array([1.0, 2.0]), np.array([])],
        [np.array([-1.0, 1.0]), np.array([-1.0])],
        [np.array(["a", "c"]), np.array(["b", "c"])],
        [np.array([3, 7]), np.array([1]), np.array([7, 9])],
    ],
)
def test_the_shards_labels_merge_as_np_unique_merges_them(parts):
    from paragrad.training.trainer import merged_labels

    merged = merged_labels(parts)
    expected = np.unique(np.concatenate(parts))
    np.testing.assert_array_equal(merged, expected)
    assert merged.dtype == expected.dtype
