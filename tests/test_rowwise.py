"""Products for prediction: a row's result is the same whatever rows come with it and
whatever threads BLAS may use (a served batch, a shard, a call in a user's process)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from paragrad.models.rowwise import CALL_ROWS, row_product


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(("width", "outputs"), [(33, 32), (100, 40), (257, 128), (64, 3), (70, None)])
def test_a_rows_product_does_not_depend_on_the_rows_or_threads_beside_it(dtype, width, outputs):
    # Prepare
    rng = np.random.default_rng(width)
    X = rng.standard_normal((300, width)).astype(dtype)
    W = rng.standard_normal(width if outputs is None else (width, outputs)).astype(dtype)
    # Execute
    together = row_product(X, W)
    with threadpool_limits(1):
        one_thread = row_product(X, W)
    # Assert
    assert together.dtype == dtype
    np.testing.assert_allclose(together, X.astype(np.float64) @ W.astype(np.float64), rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(one_thread, together)
    for start, count in [(0, 1), (5, 1), (3, 2), (1, 15), (2, 16), (7, 17), (17, 33), (40, 64), (99, 201)]:
        alone = row_product(X[start : start + count].copy(), W)
        np.testing.assert_array_equal(alone, together[start : start + count])
    columns = np.asfortranarray(X)  # another layout of the same rows: a DataFrame's values
    np.testing.assert_array_equal(row_product(columns, W), together)
    np.testing.assert_array_equal(row_product(columns[5:40], W), together[5:40])


def test_rows_beyond_one_call_are_the_rows_of_a_call():
    rng = np.random.default_rng(0)
    X, W = rng.standard_normal((CALL_ROWS + 21, 20)), rng.standard_normal((20, 64))
    together = row_product(X, W)
    np.testing.assert_array_equal(row_product(X[CALL_ROWS - 3 :], W), together[CALL_ROWS - 3 :])
    assert row_product(X[:0], W).shape == (0, 64)


def test_threads_predicting_at_once_get_their_rows_and_leave_blas_as_it_was():
    """The BLAS limit is the process's: products of several threads at once must neither
    run on the threads another put back nor leave the process on one thread."""
    # Prepare
    rng = np.random.default_rng(3)
    X, W = rng.standard_normal((512, 257)), rng.standard_normal((257, 128))
    expected = row_product(X, W)
    before = [info["num_threads"] for info in threadpool_info()]

    def predict(start: int) -> bool:
        rows = slice(start, start + 64)
        return all(np.array_equal(row_product(X[rows], W), expected[rows]) for _ in range(100))

    # Execute
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(predict, [0, 64, 128, 448]))
    # Assert
    assert results == [True] * 4
    assert [info["num_threads"] for info in threadpool_info()] == before
