"""Model files: exact round trips, refusal of anything that is not one, atomic writes."""

from __future__ import annotations

import json

import numpy as np
import pytest

import paragrad as pg
from paragrad.core.atomic import atomic_write


@pytest.mark.parametrize(
    "model",
    [
        pg.models.LinearRegression(l2=0.1),
        pg.models.LogisticRegression(fit_intercept=False),
        pg.models.SoftmaxRegression(num_classes=5),
        pg.models.MLP(hidden=(6, 3), activation="tanh", task="regression"),
        pg.models.MLP(hidden=(4,)),
    ],
    ids=repr,
)
def test_saved_model_predicts_exactly_like_the_trained_one(model, tmp_path):
    classifier = model.is_classifier
    data = (
        pg.make_classification(120, 3, num_classes=2 if model.name == "logistic" else 3, seed=0)
        if classifier
        else pg.make_regression(120, 3)
    )
    run = pg.train(model, data, engine="serial", workers=2, epochs=3, standardize=True, tol=0)
    run.save(tmp_path / "model.npz")
    loaded = pg.load_model(tmp_path / "model.npz")
    assert type(loaded) is type(model) and loaded.get_config() == model.get_config()
    assert loaded.feature_names_ == ("x0", "x1", "x2") and loaded.target_name_ == "y"
    np.testing.assert_array_equal(loaded.params, run.params)
    np.testing.assert_array_equal(loaded.predict(data.X), run.model.predict(data.X))
    if classifier:
        np.testing.assert_array_equal(loaded.classes_, run.model.classes_)


@pytest.fixture
def saved_model(tmp_path, binary_data):
    path = tmp_path / "model.npz"
    pg.train(pg.models.LogisticRegression(), binary_data, engine="serial", workers=1, epochs=2, tol=0).save(
        path
    )
    return path


def test_truncated_model_file_is_refused(saved_model):
    saved_model.write_bytes(saved_model.read_bytes()[:200])
    with pytest.raises(pg.ModelFileError, match="not a paragrad model file or truncated"):
        pg.load_model(saved_model)


def test_files_of_other_formats_are_refused(tmp_path, binary_data):
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    with pytest.raises(pg.ModelFileError, match=r"not a paragrad model file$"):
        pg.load_model(tmp_path / "data.csv")
    pg.save_dataset(binary_data, tmp_path / "data.npz")
    with pytest.raises(pg.ModelFileError, match=r"no model metadata"):
        pg.load_model(tmp_path / "data.npz")
    with pytest.raises(pg.ModelFileError, match="model file not found"):
        pg.load_model(tmp_path / "missing.npz")


def test_pickled_content_is_refused_without_being_loaded(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, params=np.zeros(2), meta=np.array([{"format": "paragrad-model"}], dtype=object))
    with pytest.raises(pg.ModelFileError, match="pickled Python objects, which are refused"):
        pg.load_model(path)


def test_damaged_metadata_is_refused(saved_model):
    with np.load(saved_model) as archive:
        params, meta = archive["params"], json.loads(str(archive["meta"]))
    np.savez(saved_model, params=params[:-1], meta=np.array(json.dumps(meta)))
    with pytest.raises(pg.ModelFileError, match="5 parameters stored, but the model needs 6"):
        pg.load_model(saved_model)
    meta["family"] = "forest"
    np.savez(saved_model, params=params, meta=np.array(json.dumps(meta)))
    with pytest.raises(pg.ModelFileError, match="damaged model metadata"):
        pg.load_model(saved_model)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_features": "abc"}, "num_features 'abc'"),
        ({"num_features": -3}, "num_features -3"),
        ({"classes": [{"a": 1}, {"b": 2}]}, "damaged model metadata"),
        ({"feature_names": ["only", "two"]}, "2 feature names for 5 features"),
        ({"version": 99}, "version 99 is not supported"),
    ],
)
def test_damaged_metadata_values_are_refused(saved_model, change, message):
    with np.load(saved_model) as archive:
        arrays = dict(archive)
    meta = json.loads(str(arrays["meta"]))
    meta.update(change)
    np.savez(saved_model, **{**arrays, "meta": np.array(json.dumps(meta))})
    with pytest.raises(pg.ModelFileError, match=message):
        pg.load_model(saved_model)


def test_standardisation_of_the_wrong_size_is_refused(saved_model):
    with np.load(saved_model) as archive:
        arrays = dict(archive)
    np.savez(saved_model, **arrays, standardizer_mean=np.zeros(2), standardizer_scale=np.ones(2))
    with pytest.raises(pg.ModelFileError, match="standardisation arrays do not match"):
        pg.load_model(saved_model)


def test_untrained_model_cannot_be_saved(tmp_path):
    with pytest.raises(pg.ConfigError, match="has not been trained yet"):
        pg.save_model(pg.models.LinearRegression(), tmp_path / "m.npz")


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target, "w") as handle:
        handle.write("half of the new")
        raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    with atomic_write(target, "w") as handle:
        handle.write("new")
    assert target.read_text() == "new"


@pytest.mark.parametrize(
    "labels",
    [["no", "yes"], [-1, 1], [False, True], [0.5, 1.5, 2.5]],
    ids=["text", "ints", "bools", "floats"],
)
def test_a_model_file_keeps_the_classes_in_their_own_type(tmp_path, labels):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 2))
    y = np.asarray(labels)[np.arange(60) % len(labels)]
    model = pg.models.LogisticRegression(l2=0.1) if len(labels) == 2 else pg.models.SoftmaxRegression(l2=0.1)
    pg.train(model, pg.Dataset(X, y), engine="serial")

    model.save(tmp_path / "model.npz")
    loaded = pg.load_model(tmp_path / "model.npz")

    assert loaded.classes_.tolist() == labels
    assert [type(value) for value in loaded.predict(X).tolist()] == [type(labels[0])] * len(X)
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
