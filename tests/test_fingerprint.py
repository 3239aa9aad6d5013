"""The data's fingerprint, which a checkpoint carries and a resume checks: the hashes of a
few rows of each virtual shard, as they were defined shard by shard, cheap on sparse rows
of any width, and read in its earlier form from checkpoints made before."""

from __future__ import annotations

import hashlib
import sys
import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import relative_error, rewrite_meta

import paragrad as pg
from paragrad.core.shards import Shard, plan_shards
from paragrad.training.tasks import FingerprintShard, data_fingerprint, fingerprint_rows


def _sampled_rows(lo: int, hi: int) -> np.ndarray:
    rows = np.unique(np.linspace(lo, max(hi - 1, lo), 8).astype(np.intp))
    return rows[rows < hi]


def _fingerprint_by_shard(shard: Shard, as_stored: bool = False) -> list[str]:
    """The fingerprint's definition, a virtual shard at a time: the hash of its size, its
    width and the features and labels of its rows ``linspace(first, last, 8)``: dense
    rows as their values; with ``as_stored``, each row's non-zero count, columns and values."""
    starts = shard.held.starts() - shard.held.starts()[0]
    digests = []
    for lo, hi in zip(starts[:-1].tolist(), starts[1:].tolist(), strict=True):
        rows = _sampled_rows(lo, hi)
        X = shard.X[rows]
        X = np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float64)
        if as_stored:
            digest = hashlib.sha256(f"{hi - lo}|{shard.X.shape[1]}|csr|".encode())
            columns = [np.flatnonzero(row) for row in X]
            digest.update(np.array([len(c) for c in columns], dtype=np.int64).tobytes())
            digest.update(np.concatenate([np.zeros(0, np.int64), *columns]).astype(np.int64).tobytes())
            digest.update(
                np.concatenate([np.zeros(0), *(row[c] for row, c in zip(X, columns, strict=True))]).tobytes()
            )
        else:
            digest = hashlib.sha256(f"{hi - lo}|{shard.X.shape[1]}|".encode())
            digest.update(np.ascontiguousarray(X).tobytes())
        if shard.y is not None:
            digest.update(np.ascontiguousarray(shard.y[rows], dtype=np.float64).tobytes())
        digests.append(digest.hexdigest()[:16])
    return digests


def _shards(X, y, num_workers: int) -> list[Shard]:
    plan = plan_shards(X.shape[0], num_workers)
    return [
        Shard(
            X[plan.rows(w)], None if y is None else y[plan.rows(w)], w, num_workers, virtual=plan.virtual(w)
        )
        for w in range(num_workers)
    ]


@pytest.mark.parametrize("num_rows", [1, 7, 1023, 1030, 5000, 123_457])
@pytest.mark.parametrize("kind", ["float64", "float32", "sparse", "no labels"])
def test_the_fingerprint_is_its_definition_in_either_form(num_rows, kind):
    """The rows of every virtual shard are gathered at once; the hashes are those of the
    shard-by-shard definition (dense rows: which checkpoints written before carry; sparse
    rows: as stored), and of the other form asked for, on shards of 0 to 121 rows, on each
    of three workers."""
    rng = np.random.default_rng(num_rows)
    X = rng.standard_normal((num_rows, 3)).astype(np.float32 if kind == "float32" else np.float64)
    if kind == "sparse":
        X = sp.csr_matrix(np.where(X > 0.5, X, 0.0))
    y = None if kind == "no labels" else rng.integers(0, 3, num_rows).astype(float)
    for shard in _shards(X, y, 3 if num_rows >= 3 else 1):
        assert FingerprintShard()(shard) == _fingerprint_by_shard(shard, as_stored=kind == "sparse")
        for as_stored in (False, True):
            assert FingerprintShard(as_stored=as_stored)(shard) == _fingerprint_by_shard(shard, as_stored)


def test_dense_rows_hash_as_stored_without_scipy(monkeypatch):
    """A resume whose fingerprint differs hashes dense rows as stored too (a checkpoint of
    the same rows given sparse carries that form): with numpy alone, scipy being optional."""
    X = np.where(np.random.default_rng(5).standard_normal((3000, 7)) > 0.8, 1.5, -0.0)
    shards = _shards(X, np.arange(3000) % 2.0, 2)
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.sparse", None)
    for shard in shards:
        assert FingerprintShard(as_stored=True)(shard) == _fingerprint_by_shard(shard, as_stored=True)


def test_sparse_rows_hash_alike_however_they_are_stored_and_apart_when_a_value_differs():
    """Explicit zeros, duplicate entries that sum to the value, unsorted columns, 64-bit
    columns and float32 values store the same rows; one value changed is other data."""
    dense = np.where(np.random.default_rng(0).standard_normal((3000, 40)) > 1.0, 0.5, 0.0)
    plain = sp.csr_matrix(dense)
    coo = plain.tocoo()
    halves = sp.csr_matrix(  # each value stored as two halves, and explicit zeros beside them
        (
            np.r_[coo.data / 2, coo.data / 2, np.zeros(50)],
            (np.r_[coo.row, coo.row, np.arange(50)], np.r_[coo.col, coo.col, np.zeros(50, int)]),
        ),
        shape=dense.shape,
    )
    halves.has_canonical_format = False
    unsorted = plain.copy()
    for row in range(unsorted.shape[0]):  # each row's columns reversed
        start, stop = unsorted.indptr[row], unsorted.indptr[row + 1]
        unsorted.indices[start:stop] = unsorted.indices[start:stop][::-1].copy()
        unsorted.data[start:stop] = unsorted.data[start:stop][::-1].copy()
    unsorted.has_sorted_indices = False
    wide = sp.csr_matrix(
        (plain.data.astype(np.float32), plain.indices.astype(np.int64), plain.indptr.astype(np.int64)),
        shape=dense.shape,
    )
    y = np.arange(3000) % 2.0
    expected = data_fingerprint([FingerprintShard()(s) for s in _shards(plain, y, 2)])
    for stored in (halves, unsorted, wide):
        assert data_fingerprint([FingerprintShard()(s) for s in _shards(stored, y, 2)]) == expected
    changed = plain.copy()
    changed.data[0] += 1.0  # row 0: the first row of the first virtual shard, always sampled
    assert data_fingerprint([FingerprintShard()(s) for s in _shards(changed, y, 2)]) != expected


def test_the_fingerprints_rows_are_where_linspace_places_them():
    """Every shard size to 3000 rows, sizes about multiples of 7 to 1e6 (a 1e6-row data
    set's virtual shards hold 976 or 977 rows), each from row 0 (a worker's first virtual
    shard) and one after another from rows near 0, 2^31 and 2^40."""
    sizes = np.r_[np.arange(3000), [7 * k + d for k in (1000, 10_000, 142_857) for d in (-1, 0, 1)], 10**6]
    for offset in (None, 0, 2**31 - 5, 2**40 + 3):
        low = np.zeros_like(sizes) if offset is None else offset + np.r_[0, np.cumsum(sizes)[:-1]]
        high = low + sizes
        rows, ends = fingerprint_rows(low, high)
        for lo, hi, picked in zip(low.tolist(), high.tolist(), np.split(rows, ends[:-1]), strict=True):
            np.testing.assert_array_equal(picked, _sampled_rows(lo, hi))


@pytest.mark.parametrize("as_stored", [True, False])
def test_wide_sparse_rows_are_never_made_dense_all_at_once(as_stored):
    """Two rows in each of 1024 virtual shards, 2^15 columns: all the sampled rows made
    dense at once would take 512 MB; as stored they take kilobytes, and the earlier form
    makes a shard's two rows dense at a time (0.5 MB)."""
    rng = np.random.default_rng(0)
    num_rows, width = 2048, 1 << 15
    entries = (rng.standard_normal(5 * num_rows), rng.integers(0, width, 5 * num_rows))
    X = sp.csr_matrix((*entries, np.arange(0, 5 * num_rows + 1, 5)), shape=(num_rows, width))
    (shard,) = _shards(X, None, 1)
    tracemalloc.start()
    try:
        digests = FingerprintShard(as_stored=as_stored)(shard)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < (1 if as_stored else 8) * 2**20
    assert digests == _fingerprint_by_shard(shard, as_stored=as_stored)


def _sparse_data() -> pg.Dataset:
    data = pg.make_classification(400, 6, seed=4)
    return pg.Dataset(sp.csr_matrix(np.where(np.abs(data.X) > 0.7, data.X, 0.0)), data.y)


def _fit(data, **options):
    common = dict(strategy=pg.SGD(batch_size=32), engine="serial", workers=2, epochs=3, tol=0, seed=1)
    return pg.train(pg.models.LogisticRegression(l2=0.01), data, **{**common, **options})


def test_a_checkpoint_of_sparse_data_made_before_resumes_and_other_data_is_refused(tmp_path):
    """A checkpoint carrying the earlier fingerprint of the same sparse data (its rows made
    dense) resumes exactly, and the run's next checkpoints carry the new one; a checkpoint
    of other data is refused."""
    data = _sparse_data()
    whole = _fit(data)
    _fit(data, checkpoint_dir=tmp_path, max_rounds=5)
    (path,) = tmp_path.glob("checkpoint-*.npz")
    current = data_fingerprint([FingerprintShard()(s) for s in _shards(data.X, data.y, 1)])
    earlier = data_fingerprint([FingerprintShard(as_stored=False)(s) for s in _shards(data.X, data.y, 1)])
    assert earlier != current
    rewrite_meta(path, data="0" * 32)
    with pytest.raises(pg.ConfigError, match=r"checkpoint-000000005.npz: .*a run on other data"):
        _fit(data, checkpoint_dir=tmp_path, resume=True)
    rewrite_meta(path, data=earlier)
    resumed = _fit(data, checkpoint_dir=tmp_path, resume=True, checkpoint_every=1)
    assert relative_error(resumed.params, whole.params) <= 1e-12
    newest = max(tmp_path.glob("checkpoint-*.npz"))
    with np.load(newest) as archive:
        assert f'"data": "{current}"' in str(archive["meta"])


@pytest.mark.parametrize("first_form", ["sparse", "dense"])
def test_a_checkpoint_resumes_on_the_same_rows_given_the_other_form(tmp_path, first_form):
    """Rows given sparse for the checkpoint and dense for the resume, or the other way: the
    same data, resumed exactly."""
    sparse_data = _sparse_data()
    dense_data = pg.Dataset(sparse_data.X.toarray(), sparse_data.y)
    first, then = (sparse_data, dense_data) if first_form == "sparse" else (dense_data, sparse_data)
    whole = _fit(then)
    _fit(first, checkpoint_dir=tmp_path, max_rounds=5)
    resumed = _fit(then, checkpoint_dir=tmp_path, resume=True)
    assert relative_error(resumed.params, whole.params) <= 1e-12
