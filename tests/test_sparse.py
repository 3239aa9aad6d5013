"""Sparse CSR features: same results as dense, through every engine, and at a size dense cannot."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import relative_error

import paragrad as pg
from paragrad.data import make_sparse_classification

STRATEGIES = [pg.GradientDescent(), pg.SGD(batch_size=32), pg.LocalSGD(local_steps=4, batch_size=16)]


@pytest.fixture(scope="module")
def sparse_data():
    return make_sparse_classification(1500, 100_000, density=0.001, seed=0)


def test_generator_makes_csr_at_the_asked_density(sparse_data):
    assert sparse_data.sparse and sp.isspmatrix_csr(sparse_data.X)
    assert sparse_data.X.nnz / (1500 * 100_000) == pytest.approx(0.001, rel=0.01)


@pytest.mark.parametrize("strategy", STRATEGIES, ids=["gd", "sgd", "local-sgd"])
def test_sparse_training_matches_dense_and_every_engine(sparse_data, strategy, local_engine):
    small = pg.Dataset(sparse_data.X[:, :3000], sparse_data.y)  # dense fits at this width
    dense = pg.Dataset(small.X.toarray(), small.y)
    common = dict(strategy=strategy, workers=2, epochs=3, tol=0, seed=1)
    reference = pg.train(pg.models.LogisticRegression(l2=1e-3), dense, engine="serial", **common)
    for engine in ("serial", local_engine):
        run = pg.train(pg.models.LogisticRegression(l2=1e-3), small, engine=engine, **common)
        assert relative_error(run.params, reference.params) <= 1e-10


def test_softmax_and_mlp_take_sparse_rows(local_engine):
    data = make_sparse_classification(600, 2000, density=0.01, seed=2)
    dense = pg.Dataset(data.X.toarray(), data.y)
    for model in (lambda: pg.models.SoftmaxRegression(), lambda: pg.models.MLP(hidden=(8,))):
        sparse_run = pg.train(model(), data, strategy=pg.SGD(32), engine=local_engine, epochs=2, tol=0)
        dense_run = pg.train(model(), dense, strategy=pg.SGD(32), engine="serial", workers=2, epochs=2, tol=0)
        assert relative_error(sparse_run.params, dense_run.params) <= 1e-10
        np.testing.assert_array_equal(
            pg.predict(sparse_run.model, data.X, engine=local_engine), dense_run.model.predict(dense.X)
        )


def test_a_data_set_too_large_to_hold_densely_trains(local_engine):
    # 50,000 x 100,000 would take 40 GB dense; at 0.1% density the CSR arrays take 60 MB.
    data = make_sparse_classification(50_000, 100_000, density=0.001, seed=3)
    run = pg.train(pg.models.LogisticRegression(l2=1e-4), data, engine=local_engine, epochs=20, tol=0)
    first, last = run.history[0]["loss"], run.history[-1]["loss"]
    assert last < 0.8 * first
    assert np.mean(run.model.predict(data.X) == data.y) > 0.7


def test_libsvm_files_load_sparse_and_train(tmp_path):
    from sklearn.datasets import dump_svmlight_file

    data = make_sparse_classification(300, 1000, density=0.01, seed=4)
    dump_svmlight_file(data.X, data.y, str(tmp_path / "d.svm"))
    loaded = pg.load(tmp_path / "d.svm", num_features=1000)
    assert loaded.sparse
    np.testing.assert_allclose(loaded.X.toarray(), data.X.toarray(), rtol=1e-12)  # text keeps 16 digits
    run = pg.train(pg.models.LogisticRegression(), loaded, engine="serial", workers=2, epochs=5, tol=0)
    assert np.isfinite(run.params).all()


def test_sparse_features_refuse_standardisation_and_name_bad_values(sparse_data):
    with pytest.raises(pg.ConfigError, match="standardize=True would make sparse features dense"):
        pg.train(pg.models.LogisticRegression(), sparse_data, standardize=True, engine="serial")
    X = sparse_data.X.copy()
    X.data[5] = np.nan
    with pytest.raises(pg.DataError, match="NaN or infinite value in features; first at row 1"):
        pg.Dataset(X, sparse_data.y)


def test_moments_of_csr_rows_equal_those_of_dense_rows():
    from paragrad.data import moments

    data = make_sparse_classification(300, 50, density=0.1, seed=4)
    sparse, dense = moments(data.X), moments(data.X.toarray())
    assert sparse.count == dense.count
    np.testing.assert_allclose(sparse.mean, dense.mean, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(sparse.m2, dense.m2, rtol=1e-10, atol=1e-12)
