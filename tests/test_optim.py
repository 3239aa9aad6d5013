"""Optimizers and schedules against their textbook formulas."""

from __future__ import annotations

import io
import math
import subprocess
import sys

import numpy as np
import pytest

import paragrad as pg
from paragrad.optim import Constant, Cosine, StepDecay, newton

GRADS = [np.array([1.0, -2.0]), np.array([0.5, 0.5]), np.array([-1.0, 3.0])]


def run(optimizer, grads=GRADS):
    params = np.array([0.2, -0.1])
    state = optimizer.init(params)
    for grad in grads:
        params, state = optimizer.update(grad, state, params)
    return params, state


def test_plain_sgd():
    params, state = run(pg.optim.SGD(lr=0.1))
    np.testing.assert_allclose(params, np.array([0.2, -0.1]) - 0.1 * sum(GRADS))
    assert int(state.step) == 3


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_follows_the_pytorch_convention(nesterov):
    params, velocity = np.array([0.2, -0.1]), np.zeros(2)
    for grad in GRADS:
        velocity = 0.9 * velocity + grad
        params = params - 0.1 * (grad + 0.9 * velocity if nesterov else velocity)
    np.testing.assert_allclose(run(pg.optim.SGD(lr=0.1, momentum=0.9, nesterov=nesterov))[0], params)


def test_adam_matches_its_definition():
    params, m, v = np.array([0.2, -0.1]), np.zeros(2), np.zeros(2)
    for t, grad in enumerate(GRADS, start=1):
        m = 0.9 * m + 0.1 * grad
        v = 0.999 * v + 0.001 * grad**2
        params = params - 0.01 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
    np.testing.assert_allclose(run(pg.optim.Adam(lr=0.01))[0], params, rtol=1e-14)


def test_update_is_pure_and_state_is_plain_arrays():
    optimizer = pg.optim.Adam(lr=0.01)
    params = np.array([1.0, 2.0])
    state = optimizer.init(params)
    grad = np.array([0.1, 0.2])
    optimizer.update(grad, state, params)
    np.testing.assert_array_equal(params, [1.0, 2.0])
    np.testing.assert_array_equal(state.mean, 0.0)
    buffer = io.BytesIO()
    np.savez(buffer, **state._asdict())
    buffer.seek(0)
    restored = type(state)(**np.load(buffer, allow_pickle=False))
    np.testing.assert_array_equal(
        optimizer.update(grad, restored, params)[0], optimizer.update(grad, state, params)[0]
    )


def test_schedules():
    assert Constant(0.5)(100) == 0.5
    assert [StepDecay(1.0, every=2, factor=0.5)(s) for s in range(5)] == [1.0, 1.0, 0.5, 0.5, 0.25]
    cosine = Cosine(1.0, total_steps=10, final_lr=0.1)
    assert cosine(0) == 1.0 and cosine(10) == pytest.approx(0.1) and cosine(50) == pytest.approx(0.1)
    assert cosine(5) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 2)))


def test_schedule_drives_the_step_size():
    params, _ = run(pg.optim.SGD(lr=StepDecay(1.0, every=1, factor=0.5)))
    expected = np.array([0.2, -0.1]) - sum(0.5**t * g for t, g in enumerate(GRADS))
    np.testing.assert_allclose(params, expected)


@pytest.mark.parametrize("lr", [0, -0.1, float("nan"), float("inf")])
def test_learning_rate_must_be_positive(lr):
    with pytest.raises(pg.ConfigError, match="learning rate must be a positive number"):
        pg.optim.SGD(lr=lr)


def test_other_settings_are_checked():
    with pytest.raises(pg.ConfigError, match="momentum must be in"):
        pg.optim.SGD(lr=0.1, momentum=1.0)
    with pytest.raises(pg.ConfigError, match="nesterov=True needs a momentum"):
        pg.optim.SGD(lr=0.1, nesterov=True)
    with pytest.raises(pg.ConfigError, match="beta2 must be in"):
        pg.optim.Adam(beta2=1.5)


def _lapack_solve(hessian: np.ndarray, grad: np.ndarray) -> np.ndarray | None:
    """scipy's LAPACK Cholesky solve of the scaled system, as larger systems take it."""
    from scipy.linalg import lapack

    if not (np.diagonal(hessian) > 0).all():
        return None
    scale = np.sqrt(np.diagonal(hessian))
    factor, info = lapack.dpotrf(hessian / np.outer(scale, scale), lower=1)
    if info != 0 or np.diagonal(factor).min() ** 2 < newton.SINGULAR_PIVOT:
        return None
    return lapack.dpotrs(factor, grad / scale, lower=1)[0] / scale


@pytest.mark.parametrize("numpy_path", ["gufuncs", "np.linalg"])
def test_small_newton_systems_are_solved_as_scipys_cholesky_solves_them(monkeypatch, numpy_path):
    """Up to SMALL_SYSTEM parameters numpy's LAPACK solves the step, through the calls
    np.linalg makes or np.linalg itself: the same solutions as scipy's Cholesky solves to
    round-off, and the same verdicts on matrices that are not positive definite or are
    singular to within round-off."""
    if numpy_path == "np.linalg":
        monkeypatch.setattr(newton, "_GUFUNCS", None)
    rng = np.random.default_rng(0)
    for size in (1, 2, 6, 31, newton.SMALL_SYSTEM):
        A = rng.standard_normal((3 * size, size)) * np.logspace(0, 3, size)
        hessian, grad = A.T @ A, rng.standard_normal(size)
        solved, expected = newton._cholesky_solve(hessian, grad), _lapack_solve(hessian, grad)
        np.testing.assert_allclose(solved, expected, rtol=1e-10)
        np.testing.assert_allclose(hessian @ solved, grad, rtol=1e-8, atol=1e-10 * np.abs(grad).max())
        B = rng.standard_normal((3 * size, size))
        values, vectors = np.linalg.eigh(B.T @ B)
        values[0] = -values[0]  # one direction of negative curvature, the diagonal still positive
        indefinite = (vectors * values) @ vectors.T
        assert size < 6 or (np.diagonal(indefinite) > 0).all()  # the factorisation finds it
        assert newton._cholesky_solve(indefinite, grad) is None and _lapack_solve(indefinite, grad) is None
        if size > 1:
            dependent = np.column_stack([A, A[:, 0]])  # a repeated column
            singular = dependent.T @ dependent
            assert newton._cholesky_solve(singular, np.r_[grad, 0.0]) is None
            assert _lapack_solve(singular, np.r_[grad, 0.0]) is None


def test_a_singular_newton_system_gets_lstsqs_solution_of_smallest_norm():
    """Dependent features (repeated, summed, constant columns; an indefinite or zero
    matrix): the direction is numpy's lstsq's, to round-off, from H's eigenvectors."""
    rng = np.random.default_rng(3)
    for size in (2, 6, 31, 101):
        A = rng.standard_normal((3 * size, size)) * np.logspace(0, 3, size)
        A[:, -1] = A[:, 0]
        A[:, size // 2] = A[:, 0] + 2 * A[:, 1]
        weights = rng.uniform(0.1, 1.0, 3 * size)
        hessian, grad = (A * weights[:, None]).T @ A, A.T @ rng.standard_normal(3 * size)
        indefinite = hessian - 2 * np.outer(hessian[1], hessian[1]) / hessian[1, 1]
        for matrix, rhs in (
            (hessian, grad),
            (indefinite, grad),
            (np.zeros((size, size)), grad),
            (hessian * 1e-310, grad * 1e-310),  # reciprocals of its eigenvalues overflow
        ):
            direction, singular = newton.newton_direction(matrix, rhs)
            expected = -np.linalg.lstsq(matrix, rhs, rcond=None)[0]
            assert singular
            # Both are exact to round-off times the condition of H off its null space.
            values = np.linalg.svd(matrix, compute_uv=False)
            kept = values[values > np.finfo(float).eps * size * values[0]]
            bound = 100 * np.finfo(float).eps * (kept[0] / kept[-1] if len(kept) else 1.0)
            assert np.abs(direction - expected).max() <= bound * max(np.abs(expected).max(), 1e-300)
    # Near the top of float64's range: the reciprocals times the right-hand side overflowed.
    direction, _ = newton.newton_direction(np.diag([1e300, 1e290, 0.0]), np.array([1e300, 1e300, 0.0]))
    np.testing.assert_allclose(direction, [-1.0, -1e10, 0.0], rtol=1e-15)


@pytest.mark.parametrize(("rows", "features"), [(500, 5), (20_000, 100)])
def test_a_fresh_process_fits_without_scipys_linear_algebra(rows, features):
    """Importing it takes 0.15-0.2 s, more than a small fit and a fifth of a fit of
    1e6 x 100 (whose 101 parameters these have too); numpy's masked arrays, which
    ``np.unique`` imports, 30 ms."""
    code = (
        f"import sys, paragrad as pg; data = pg.make_classification({rows}, {features}, seed=0); "
        "run = pg.train(pg.models.LogisticRegression(), data, progress=False); "
        "print(run.optimizer.split()[0], 'scipy.linalg' in sys.modules, 'numpy.ma' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["newton", "False", "False"]
