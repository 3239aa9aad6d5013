"""The real-data references themselves: shapes, agreement with lstsq, losses, optimality."""

from __future__ import annotations

import numpy as np
import pytest
from realdata import (
    CASES,
    KINDS,
    LINEAR,
    SOFTMAX,
    cases_of,
    comparable,
    condition_number,
    load,
    mean_loss,
    reference_vector,
)
from realdata import write_csv as write_case_csv

import paragrad as pg

pytest.importorskip("statsmodels")
pytest.importorskip("sklearn")

# NIST StRD certified least-squares solution for Longley: [w (GNPDEFL .. YEAR), b].
LONGLEY_CERTIFIED = np.array(
    [
        15.0618722713733,
        -0.358191792925910e-01,
        -2.02022980381683,
        -1.03322686717359,
        -0.511041056535807e-01,
        1829.15146461355,
        -3482258.63459582,
    ]
)


def setup_model(case) -> pg.models.Model:
    model = pg.models.get_model(case.kind)()
    labels = None if case.kind == LINEAR else np.arange(case.num_classes, dtype=np.float64)
    model.setup(case.d, labels)
    return model


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("name", CASES)
def test_case_shapes(name):
    case = load(name)
    assert case.kind == KINDS[name]
    assert case.X.dtype == np.float64 and case.y.dtype == np.float64
    assert case.X.shape == (case.n, case.d) and case.y.shape == (case.n,)
    assert len(case.feature_names) == case.d
    assert np.all(np.ptp(case.X, axis=0) > 0), "a constant column duplicates the intercept"
    assert len(case.params) == (case.d + 1) * case.num_outputs == setup_model(case).num_params
    if case.kind == SOFTMAX:
        assert len(reference_vector(case)) == (case.d + 1) * (case.num_classes - 1)
    else:
        assert len(reference_vector(case)) == case.d + 1
    if case.kind != LINEAR:
        assert set(np.unique(case.y)) == set(range(case.num_classes))
    assert np.isfinite(condition_number(case)) and condition_number(case) >= 1
    assert load(name) is case  # built once


@pytest.mark.parametrize("name", cases_of(LINEAR))
def test_linear_reference_is_lstsq(name):
    case = load(name)
    design = np.column_stack([case.X, np.ones(case.n)])
    lstsq = np.linalg.lstsq(design, case.y, rcond=None)[0]
    assert rel(case.params, lstsq) < 1e-6
    assert case.info["ols_vs_lstsq"] < 1e-6  # statsmodels' own fit agrees too


def test_longley_matches_certified_values():
    assert rel(load("longley").params, LONGLEY_CERTIFIED) < 1e-8


@pytest.mark.parametrize("name", CASES)
def test_reference_loss_recomputed(name):
    case = load(name)
    loss_sum, _ = setup_model(case).loss_grad(case.params, case.X, case.y)
    assert loss_sum / case.n == pytest.approx(case.loss, rel=1e-10)
    assert mean_loss(case, case.params) == pytest.approx(case.loss, rel=1e-10)


@pytest.mark.parametrize("name", CASES)
def test_reference_is_stationary(name):
    """The gradient at the reference, relative to the gradient at zero, vanishes."""
    case = load(name)
    model = setup_model(case)
    _, grad = model.loss_grad(case.params, case.X, case.y)
    _, grad0 = model.loss_grad(np.zeros_like(case.params), case.X, case.y)
    assert np.linalg.norm(grad) / np.linalg.norm(grad0) < 1e-6


@pytest.mark.parametrize("name", cases_of(SOFTMAX))
def test_softmax_comparison_ignores_the_free_shift(name):
    case = load(name)
    d, k = case.d, case.num_classes
    shifted = case.params.copy()
    shifted[: d * k].reshape(d, k)[:] += np.linspace(-1, 1, d)[:, None]
    shifted[d * k :] += 3.0
    assert np.allclose(comparable(case, shifted), reference_vector(case), rtol=1e-12, atol=1e-12)
    assert mean_loss(case, shifted) == pytest.approx(case.loss, rel=1e-12)


@pytest.mark.parametrize("name", CASES)
def test_csv_round_trip(name, tmp_path):
    case = load(name)
    path = tmp_path / f"{name}.csv"
    write_case_csv(case, path)
    data = pg.load(path, target="y")
    assert data.X.shape == case.X.shape
    assert np.array_equal(data.X, case.X) and np.array_equal(data.y, case.y)
