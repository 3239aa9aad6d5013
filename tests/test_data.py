"""Datasets, loaders, shard plans and per-shard standardisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import paragrad as pg
from paragrad.core.shards import plan_shards
from paragrad.data import Standardizer, combine_moments, moments


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


# -- Dataset validation ---------------------------------------------------------------------


def test_dataset_converts_to_contiguous_float64():
    ds = pg.Dataset(np.arange(6).reshape(3, 2), [0, 1, 0])
    assert ds.X.dtype == np.float64 and ds.X.flags.c_contiguous
    assert ds.num_rows == 3 and ds.num_features == 2


@pytest.mark.parametrize(
    ("X", "y", "message"),
    [
        (np.ones(3), None, "2-D"),
        (np.ones((0, 2)), None, "no data rows"),
        (np.ones((3, 0)), None, "no feature columns"),
        (np.ones((3, 2)), np.ones(4), "3 rows of features but 4 target values"),
        (np.array([["a", "b"]]), None, "real numbers"),
        (np.ones((2, 2)) * 1j, None, "real numbers, got values of type complex128"),
        (np.ones((3, 2)), np.ones((3, 2)), "1-D"),
    ],
)
def test_dataset_rejects_bad_shapes_and_types(X, y, message):
    with pytest.raises(pg.DataError, match=message):
        pg.Dataset(X, y)


def test_dataset_names_the_first_non_finite_value():
    X = np.ones((4, 3))
    X[2, 1] = np.nan
    X[3, 0] = np.inf
    with pytest.raises(pg.DataError, match=r"2 NaN, missing or infinite.*row 3, 'b' \(NaN"):
        pg.Dataset(X, np.zeros(4), feature_names=["a", "b", "c"])


def test_dataset_rejects_infinite_target():
    with pytest.raises(pg.DataError, match="in the target; first at row 2"):
        pg.Dataset(np.ones((3, 1)), [0.0, np.inf, 1.0])


def test_dataset_refuses_values_too_large_to_square():
    X = np.ones((4, 3))
    X[2, 1] = 1e200
    X[3, 2] = -1e160
    too_large = r"2 value\(s\) in features too large to square in float64 .* first at row 3, 'b' \(1e\+200\)"
    with pytest.raises(pg.DataError, match=too_large + ": rescale the column"):
        pg.Dataset(X, np.zeros(4), feature_names=["a", "b", "c"])
    with pytest.raises(pg.DataError, match=r"in the target too large to square .* row 2, 'y'"):
        pg.Dataset(np.ones((3, 1)), [0.0, -1e200, 1.0])
    X[0, 0] = np.nan  # NaN is named first, as before
    with pytest.raises(pg.DataError, match=r"1 NaN, missing or infinite.*row 1, 'a'"):
        pg.Dataset(X, np.zeros(4), feature_names=["a", "b", "c"])
    assert pg.Dataset(X, check_finite=False).X[2, 1] == 1e200  # predicting checks its outputs instead


def test_large_values_below_the_bound_are_accepted():
    bound = pg.data.checks.MAX_MAGNITUDE
    X = np.array([[1e100, -1e149], [np.nextafter(bound, 0), 2.0]])
    np.testing.assert_array_equal(pg.Dataset(X, [1e100, -1e149]).X, X)
    with pytest.raises(pg.DataError, match="too large"):
        pg.Dataset([[bound]])


@pytest.mark.parametrize("row", [0, 300_000, 499_999])
def test_a_large_array_checked_on_several_threads_names_a_bad_value_in_any_part(monkeypatch, row):
    from paragrad.data import checks

    monkeypatch.setattr(checks, "default_workers", lambda: 3)  # three threads whatever the machine
    monkeypatch.setattr(checks, "PARALLEL_CHECK_BYTES", 1 << 20)
    X = np.zeros((500_000, 10))  # 40 MB: 4 blocks of a million values
    assert checks.within_bounds(X)
    X[row, 7] = np.nan
    assert not checks.within_bounds(X)
    with pytest.raises(pg.DataError, match=rf"1 NaN, missing or infinite.*row {row + 1}, column 7"):
        pg.Dataset(X)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_large_arrays_sum_of_squares_vouches_only_for_values_within_the_bound(monkeypatch, dtype):
    from paragrad.data import checks

    monkeypatch.setattr(checks, "PARALLEL_CHECK_BYTES", 1 << 20)
    bound = checks.magnitude_bound(np.dtype(dtype))
    X = np.full((500_000, 10), 0.9 * bound, dtype=dtype)  # within, their squares' sum past bound^2
    assert checks.within_bounds(X) and not checks._squares_within(X)
    X[:] = 0.5
    assert checks.within_bounds(X) and checks._squares_within(X)
    for bad in (np.nan, np.inf, -2 * bound):
        X[123_456, 3] = bad
        assert not checks._squares_within(X) and not checks.within_bounds(X)
        X[123_456, 3] = 0.5


def test_too_large_values_are_found_in_file_order_block_by_block():
    from paragrad.data.checks import _first_bad

    X = np.ones((9, 2))
    X[7, 1] = X[2, 0] = X[3, 1] = 1e300
    is_bad = lambda part: np.abs(part) >= 1e150  # noqa: E731
    assert _first_bad(X, 2, None, is_bad) == (3, 2, 0)
    assert _first_bad(X, 2, np.array([8, 7, 6, 5, 4, 3, 2, 1, 0]), is_bad) == (3, 7, 1)
    assert _first_bad(np.ones((5, 2)), 2, None, is_bad) == (0, 0, 0)


def test_sparse_features_too_large_are_refused():
    import scipy.sparse as sp

    X = sp.csr_matrix(np.array([[0.0, 1.0], [0.0, 0.0], [3e200, 0.0]]))
    with pytest.raises(pg.DataError, match=r"too large to square in float64 .* row 3, column 0"):
        pg.Dataset(X)


def test_a_csv_cell_too_large_names_file_column_and_row(tmp_path):
    path = write(tmp_path / "d.csv", "a,b,y\n1,2,0\n3,1e308,1\n")
    with pytest.raises(pg.DataError, match=r"d.csv: 1 value\(s\) in features too large .* row 2, 'b'"):
        pg.load(path, target="y")
    path = write(tmp_path / "t.csv", "a,b,y\n1,2,0\n3,4,-1e200\n")
    with pytest.raises(pg.DataError, match=r"t.csv: 1 value\(s\) in the target too large .* row 2, 'y'"):
        pg.load(path, target="y")


def test_a_lazy_parquet_file_names_the_first_too_large_value_in_file_order(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    values = np.arange(50, dtype=np.float64)
    values[37], values[44] = 1e200, -1e300
    pq.write_table(pa.table({"a": values, "y": np.zeros(50)}), tmp_path / "d.parquet", row_group_size=8)
    table = pg.load(tmp_path / "d.parquet", target="y", lazy=True).table
    table.read(slice(0, 30))
    with pytest.raises(pg.DataError, match=r"2 value\(s\) in features of the rows read too large .* row 38"):
        table.read(np.array([44, 3, 37]))


# -- loaders --------------------------------------------------------------------------------


def test_csv_loads_by_target_name_and_index(tmp_path):
    path = write(tmp_path / "d.csv", "a,y,b\n1,0,2.5\n3,1,4\n\n5,1,6\n")
    ds = pg.load(path, target="y")
    np.testing.assert_array_equal(ds.X, [[1, 2.5], [3, 4], [5, 6]])
    np.testing.assert_array_equal(ds.y, [0, 1, 1])
    assert ds.feature_names == ("a", "b") and ds.target_name == "y"
    assert pg.load(path, target=1).target_name == "y"


def test_a_target_text_is_a_name_first_then_an_index(tmp_path):
    named = write(tmp_path / "named.csv", "a,1,y\n1,0,2\n3,1,4\n")
    assert pg.load(named, target="1").target_name == "1"
    assert pg.load(named, target="#1").target_name == "1"  # index 1 is the column named 1
    assert pg.load(named, target="#2").target_name == "y"
    assert pg.load(named, target="#-1").target_name == "y"
    plain = write(tmp_path / "plain.csv", "a,b,y\n1,0,2\n3,1,4\n")
    assert pg.load(plain, target="2").target_name == "y"
    assert pg.load(plain, target="-3").target_name == "a"
    assert pg.load(plain, target=0).target_name == "a"
    with pytest.raises(pg.DataError, match=r"target column index 9 out of range \(3 columns\)"):
        pg.load(plain, target="#9")
    with pytest.raises(pg.DataError, match=r"'9' not found: no column .* out of range \(3 columns\)"):
        pg.load(plain, target="9")
    with pytest.raises(pg.DataError, match=r"target column '#x' not found \(columns: a, b, y\)"):
        pg.load(plain, target="#x")


def test_tsv_parquet_npz_and_svmlight_load_the_same_data(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.datasets import dump_svmlight_file

    X = np.array([[1.0, 0.0], [0.5, -2.0], [0.0, 3.0]])
    y = np.array([0.0, 1.0, 1.0])
    write(
        tmp_path / "d.tsv",
        "f0\tf1\ty\n" + "".join(f"{a}\t{b}\t{c}\n" for (a, b), c in zip(X, y, strict=False)),
    )
    pq.write_table(pa.table({"f0": X[:, 0], "f1": X[:, 1], "y": y}), tmp_path / "d.parquet")
    np.savez(tmp_path / "d.npz", X=X, y=y)
    dump_svmlight_file(X, y, str(tmp_path / "d.svm"))
    for name, target in [("d.tsv", "y"), ("d.parquet", "y"), ("d.npz", None), ("d.svm", None)]:
        ds = pg.load(tmp_path / name, target=target)
        assert ds.sparse == (name == "d.svm")  # LIBSVM stays sparse
        np.testing.assert_array_equal(ds.X.toarray() if ds.sparse else ds.X, X, err_msg=name)
        np.testing.assert_array_equal(ds.y, y, err_msg=name)


def test_save_dataset_round_trips_every_format(tmp_path):
    original = pg.make_classification(50, 3, num_classes=3, seed=0)
    for name in ("d.csv", "d.parquet", "d.npz"):
        pg.save_dataset(original, tmp_path / name)
        loaded = pg.load(tmp_path / name, target="y")
        np.testing.assert_array_equal(loaded.X, original.X, err_msg=name)
        np.testing.assert_array_equal(loaded.y, original.y, err_msg=name)
        assert loaded.feature_names == original.feature_names


def test_integers_beyond_float_precision_load_as_nearest_floats(tmp_path):
    ds = pg.load(write(tmp_path / "big.csv", "a,y\n9007199254740993,0\n3,1\n"), target="y")
    assert ds.X[0, 0] == 9007199254740992.0


def test_libsvm_file_need_not_use_the_last_feature(tmp_path):
    path = write(tmp_path / "d.svm", "0 1:0.5 2:1.0\n1 1:1.5\n")
    assert pg.load(path).num_features == 2
    np.testing.assert_array_equal(
        pg.load(path, num_features=3).X.toarray(), [[0.5, 1.0, 0.0], [1.5, 0.0, 0.0]]
    )


def test_target_cannot_also_be_a_feature(tmp_path):
    with pytest.raises(pg.DataError, match="'a' cannot be both a feature and the target"):
        pg.load(write(tmp_path / "d.csv", "a,b\n1,2\n"), target="a", features=["a", "b"])


def test_features_select_columns_in_the_given_order_and_ignore_the_rest(tmp_path):
    path = write(tmp_path / "d.csv", "a,b,y,c\n1,2,0,3\n")
    ds = pg.load(path, features=["c", "a"])
    np.testing.assert_array_equal(ds.X, [[3, 1]])
    assert ds.y is None
    with pytest.raises(pg.DataError, match="missing feature column.*'z'"):
        pg.load(path, features=["a", "z"])


@pytest.mark.parametrize(
    ("content", "target", "message"),
    [
        ("", "y", "the file is empty"),
        ("a,y\n", "y", r"no data rows \(only a header\)"),
        ("a,b\n1,2\n", "y", r"target column 'y' not found \(columns: a, b\)"),
        ("a,y\n1,0\nhello,1\n", "y", r"column 'a' is not numeric \(line 3 holds 'hello'\): drop it"),
        ("a,y\n1,0\n,1\n", "y", r"missing value in column 'a' at line 3; skip such rows with dropna=True"),
        ("a,y\n1,0\nnan,1\n", "y", "missing value in column 'a' at line 3"),
        ("a,y\ninf,0\n", "y", r"first at row 1, 'a' \(infinite\)"),
        ("a,y\n1,0\n2\n", "y", "cannot read"),
        ("y\n1\n", "y", "no feature columns besides the target 'y'"),
    ],
)
def test_bad_csv_gets_a_clear_error(tmp_path, content, target, message):
    path = write(tmp_path / "bad.csv", content)
    with pytest.raises(pg.DataError, match=message):
        pg.load(path, target=target)


def test_a_csv_read_as_numbers_from_its_first_block_reads_exactly_and_names_later_text(tmp_path):
    # The reader types columns from the file's first block (1 MB); past it, the values
    # must come out as they are, integers as floats, and text still be named by its line.
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40_000, 3)).round(6)
    counts = rng.integers(0, 1000, 40_000)
    lines = ["a,b,c,n,y"] + [
        f"{a!r},{b!r},{c!r},{n},{n % 2}" for (a, b, c), n in zip(X.tolist(), counts.tolist(), strict=True)
    ]
    path = write(tmp_path / "big.csv", "\n".join(lines) + "\n")
    assert path.stat().st_size > 1 << 20  # past the first block
    data = pg.load(path, target="y")
    np.testing.assert_array_equal(data.X, np.column_stack([X, counts]))
    np.testing.assert_array_equal(data.y, counts % 2)
    write(path, "\n".join([*lines[:-1], "0.5,0.5,0.5,many,1"]) + "\n")
    with pytest.raises(pg.DataError, match=r"column 'n' is not numeric \(line 40001 holds 'many'\)"):
        pg.load(path, target="y")


def test_float32_features_stay_float32_unless_the_target_needs_float64(tmp_path):
    X = np.random.default_rng(0).standard_normal((50, 3)).astype(np.float32)
    labels = (X[:, 0] > 0).astype(np.float64)  # class codes: float32 holds them exactly
    assert pg.Dataset(X, labels).dtype == np.float32 and pg.Dataset(X, X[:, 1]).dtype == np.float32
    target = 1e8 + X[:, 1].astype(np.float64)  # float32 would round these to steps of 8
    data = pg.Dataset(X, target)
    assert data.dtype == np.float64
    np.testing.assert_array_equal(data.y, target)
    np.testing.assert_array_equal(data.X, X.astype(np.float64))
    assert pg.Dataset(X, target, dtype="float32").dtype == np.float32  # asked for
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", target)
    np.testing.assert_array_equal(pg.load(tmp_path / "X.npy", target_file=tmp_path / "y.npy").y, target)
    np.save(tmp_path / "labels.npy", labels)
    mapped = pg.load(tmp_path / "X.npy", target_file=tmp_path / "labels.npy")
    assert mapped.dtype == np.float32 and mapped.storage is not None  # still the file, mapped


@pytest.mark.parametrize("engine", ["local", "serial"])
def test_a_mapped_file_is_checked_where_its_rows_are_first_read(tmp_path, engine):
    # The coordinator does not read a mapped file to check it: the workers do, in the
    # set-up pass, and a bad value is named as a check at loading would name it.
    X = np.random.default_rng(0).standard_normal((3000, 4)).astype(np.float32)
    X[2345, 1] = np.inf
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", (X[:, 0] > 0).astype(np.float32))
    data = pg.load(tmp_path / "X.npy", target_file=tmp_path / "y.npy")
    assert data.unchecked and data.storage is not None
    message = r"1 NaN, missing or infinite value\(s\) in features; first at row 2346, column 1 \(infinite\)"
    with pytest.raises(pg.DataError, match=message):
        pg.train(pg.models.LogisticRegression(), data, engine=engine, workers=2)
    with pytest.raises(pg.DataError, match=message):
        pg.Dataset(np.load(tmp_path / "X.npy", mmap_mode="r")).check()
    X[2345, 1] = 0.0
    np.save(tmp_path / "X.npy", X)
    data = pg.load(tmp_path / "X.npy", target_file=tmp_path / "y.npy")
    pg.train(pg.models.LogisticRegression(), data, engine=engine, workers=2)
    assert not data.unchecked


def test_missing_file_unknown_suffix_and_pickled_npz_are_refused(tmp_path):
    with pytest.raises(pg.DataError, match="file not found"):
        pg.load(tmp_path / "nope.csv", target="y")
    with pytest.raises(pg.DataError, match="unsupported file type '.docx'"):
        pg.load(write(tmp_path / "d.docx", "x"), target="y")
    with pytest.raises(pg.DataError, match="cannot read as a workbook"):
        pg.load(write(tmp_path / "d.xlsx", "x"), target="y")
    np.savez(tmp_path / "evil.npz", X=np.array([object()], dtype=object), y=np.zeros(1))
    with pytest.raises(pg.DataError, match="pickled Python objects, which are refused"):
        pg.load(tmp_path / "evil.npz")
    with pytest.raises(pg.DataError, match="not a valid .npz file$"):
        pg.load(write(tmp_path / "fake.npz", "not a zip"))


# -- synthetic data -------------------------------------------------------------------------


def test_generators_repeat_with_a_seed_and_cover_all_classes():
    a = pg.make_classification(2000, 4, num_classes=3, seed=5)
    b = pg.make_classification(2000, 4, num_classes=3, seed=5)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.y, b.y)
    assert set(np.unique(a.y)) == {0, 1, 2}
    r = pg.make_regression(100, 3, noise=0.0, seed=1)
    coef = np.linalg.lstsq(np.column_stack([r.X, np.ones(100)]), r.y, rcond=None)[0]
    np.testing.assert_allclose(np.column_stack([r.X, np.ones(100)]) @ coef, r.y, atol=1e-10)


# -- shard plans ----------------------------------------------------------------------------


@pytest.mark.parametrize(("rows", "shards"), [(10, 1), (10, 3), (7, 7), (1000, 6), (100_003, 7)])
def test_a_shard_plan_gives_workers_runs_of_near_equal_virtual_shards(rows, shards):
    plan = plan_shards(rows, shards)
    assert plan.num_virtual == min(rows, 1024)
    virtual = np.diff(np.arange(plan.num_virtual + 1) * rows // plan.num_virtual)
    assert virtual.max() - virtual.min() <= 1  # virtual shards differ by at most a row
    held = [plan.virtual(w) for w in range(shards)]
    assert max(v.count for v in held) - min(v.count for v in held) <= 1
    assert [list(range(rows))[plan.rows(w)] for w in range(shards)] == [
        list(range(*bounds)) for bounds in plan.bounds
    ]
    assert plan.bounds[0][0] == 0 and plan.bounds[-1][1] == rows
    assert all(a[1] == b[0] for a, b in zip(plan.bounds, plan.bounds[1:], strict=False))
    again = plan.regroup(1).regroup(shards)
    assert again == plan and plan.regroup(1).bounds == ((0, rows),)


def test_shuffled_shard_plan_is_a_seeded_partition():
    plan = plan_shards(100, 3, shuffle=True, seed=4)
    rows = np.concatenate([plan.rows(i) for i in range(3)])
    assert sorted(rows) == list(range(100)) and not np.array_equal(rows, np.arange(100))
    np.testing.assert_array_equal(
        rows, np.concatenate([plan_shards(100, 3, shuffle=True, seed=4).rows(i) for i in range(3)])
    )


def test_more_workers_than_rows_is_refused():
    with pytest.raises(pg.ConfigError, match="3 workers need at least 3 rows, but the data has 2"):
        plan_shards(2, 3)


# -- standardisation ------------------------------------------------------------------------


def test_moments_combined_over_uneven_shards_equal_the_whole():
    X = np.random.default_rng(0).normal(5.0, 3.0, size=(1001, 4))
    parts = [moments(X[rows]) for rows in np.array_split(np.arange(1001), 7)]
    total = combine_moments(parts)
    np.testing.assert_allclose(total.mean, X.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(total.m2 / total.count, X.var(axis=0), rtol=1e-12)
    scaled = Standardizer.from_moments(total).transform(X)
    np.testing.assert_allclose(scaled.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(scaled.std(axis=0), 1.0, rtol=1e-12)


def test_constant_feature_keeps_scale_one():
    X = np.column_stack([np.ones(5), np.arange(5.0)])
    standardizer = Standardizer.from_moments(moments(X))
    assert standardizer.scale[0] == 1.0
    assert np.isfinite(standardizer.transform(X)).all()


def test_standardizer_refuses_a_mean_or_scale_that_is_not_finite():
    stats = moments(np.array([[1.0, 1e200, 2.0], [2.0, -1e200, 3.0]]))
    assert not np.isfinite(stats.m2[1])
    with pytest.raises(pg.DataError, match=r"cannot standardize feature 1 \(counted from 0\)"):
        Standardizer.from_moments(stats)
    with pytest.raises(pg.DataError, match="feature 0 .* not finite"):
        Standardizer.from_moments(pg.data.Moments(2, np.array([np.inf]), np.array([0.0])))


def test_memory_mapped_features_remember_where_they_lie_in_their_file(tmp_path):
    np.save(tmp_path / "X.npy", np.arange(60.0).reshape(20, 3))
    mapped = np.load(tmp_path / "X.npy", mmap_mode="r")
    for X in (mapped, mapped[5:], np.asarray(mapped), pg.load(tmp_path / "X.npy").X):
        backing = pg.Dataset(X).storage
        on_disk = np.memmap(backing.path, dtype=np.float64, mode="r", offset=backing.offset, shape=X.shape)
        np.testing.assert_array_equal(on_disk, X)
    assert pg.Dataset(mapped[:, :2]).storage is None
    assert pg.Dataset(mapped, dtype=np.float32).storage is None
    assert pg.load(tmp_path / "X.npy", mmap=False).storage is None


def test_slices_of_loaded_npy_features_still_point_into_the_file(tmp_path):
    np.save(tmp_path / "X.npy", np.arange(60.0).reshape(20, 3))
    loaded = pg.load(tmp_path / "X.npy")
    chunk = loaded.take(slice(5, 12))
    backing = chunk.storage
    on_disk = np.memmap(backing.path, dtype=np.float64, mode="r", offset=backing.offset, shape=(7, 3))
    np.testing.assert_array_equal(on_disk, chunk.X)


# -- Parquet files read lazily, a worker's rows at a time -------------------------------------


def _parquet_with_row_groups(path: Path, rows: int = 103, group: int = 10) -> pg.Dataset:
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = pg.make_regression(rows, 3, seed=5)
    columns = {f"f{j}": data.X[:, j] for j in range(3)}
    columns["count"] = np.arange(rows, dtype=np.int32)  # integers are read as floats
    pq.write_table(pa.table({**columns, "y": data.y}), path, row_group_size=group)
    return pg.load(path, target="y")


def test_a_lazy_parquet_file_reads_nothing_until_asked_and_then_the_same_rows(tmp_path):
    eager = _parquet_with_row_groups(tmp_path / "d.parquet")
    lazy = pg.load(tmp_path / "d.parquet", target="y", lazy=True)
    assert lazy._X is None and lazy.has_labels and lazy.table.num_rows == 103
    assert (lazy.num_rows, lazy.num_features, lazy.feature_names) == (103, 4, ("f0", "f1", "f2", "count"))
    table = lazy.table
    rng = np.random.default_rng(0)
    picks = [slice(0, 103), slice(7, 8), slice(9, 31), slice(100, 103), rng.permutation(103)[:40]]
    for rows in picks:
        part = table.read(rows)
        np.testing.assert_array_equal(part.X, eager.X[rows])
        np.testing.assert_array_equal(part.y, eager.y[rows])
    mask = np.arange(103) % 9 == 0
    np.testing.assert_array_equal(lazy.take(mask).X, eager.X[mask])  # masks, negative rows, steps
    np.testing.assert_array_equal(lazy.take(np.array([-1, 0])).X, eager.X[[-1, 0]])
    np.testing.assert_array_equal(lazy.take(slice(90, 10, -7)).y, eager.y[90:10:-7])
    with pytest.raises(IndexError):
        lazy.take(np.array([103]))
    assert repr(lazy) == "Dataset(103 rows x 4 features, labels)"
    window = lazy.take(slice(25, 90))
    assert window._X is None and window.num_rows == 65
    np.testing.assert_array_equal(window.take(slice(5, 20)).X, eager.X[30:45])
    np.testing.assert_array_equal(window.table.read(np.array([64, 0])).y, eager.y[[89, 25]])
    assert lazy._X is None
    np.testing.assert_array_equal(lazy.X, eager.X)  # the whole file, on first use
    np.testing.assert_array_equal(lazy.y, eager.y)


def test_a_lazy_float32_parquet_file_keeps_its_type_and_drops_the_target_for_predicting(tmp_path):
    eager = _parquet_with_row_groups(tmp_path / "d.parquet")
    lazy = pg.load(tmp_path / "d.parquet", target="y", lazy=True).astype("float32")
    assert lazy._X is None and lazy.dtype == np.float32
    np.testing.assert_array_equal(lazy.take(slice(5, 25)).X, eager.X[5:25].astype(np.float32))
    features = lazy.features_only()
    assert not features.has_labels and features.take(slice(0, 3)).y is None


def test_a_lazy_read_names_the_file_row_of_a_missing_value(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    values = np.arange(50, dtype=np.float64)
    values[37] = np.nan
    pq.write_table(pa.table({"a": values, "y": np.zeros(50)}), tmp_path / "d.parquet", row_group_size=8)
    table = pg.load(tmp_path / "d.parquet", target="y", lazy=True).table
    table.read(slice(0, 30))  # rows without the gap read fine
    with pytest.raises(pg.DataError, match=r"first at row 38, 'a'"):
        table.window(slice(33, 45)).read()
    with pytest.raises(pg.DataError, match=r"d.parquet: 1 NaN, .* first at row 38, 'a'"):
        table.read(slice(30, 50))
    with pytest.raises(pg.DataError, match=r"first at row 38, 'a'"):
        table.read(np.array([3, 37, 1]))
    values[44] = np.inf  # in shuffled rows, the first bad row of the file is named
    pq.write_table(pa.table({"a": values, "y": np.zeros(50)}), tmp_path / "d.parquet", row_group_size=8)
    with pytest.raises(pg.DataError, match=r"2 NaN, .* first at row 38, 'a' \(NaN or missing\)"):
        table.read(np.array([44, 3, 37]))


def test_a_lazy_parquet_file_that_changed_since_it_was_opened_is_refused(tmp_path):
    _parquet_with_row_groups(tmp_path / "d.parquet", rows=103)
    table = pg.load(tmp_path / "d.parquet", target="y", lazy=True).table
    _parquet_with_row_groups(tmp_path / "d.parquet", rows=20)  # rewritten shorter
    with pytest.raises(pg.DataError, match="d.parquet: changed since it was opened, or differs where"):
        table.read(slice(15, 40))


def test_a_lazy_parquet_file_is_checked_against_its_schema_at_once(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"a": [1.0, 2.0], "name": ["x", "y"], "y": [0.0, 1.0]}), tmp_path / "d.parquet")
    with pytest.raises(pg.DataError, match=r"column 'name' is not numeric \(type string\)"):
        pg.load(tmp_path / "d.parquet", target="y", lazy=True)
    with pytest.raises(pg.DataError, match="target column 'z' not found"):
        pg.load(tmp_path / "d.parquet", target="z", lazy=True)
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(pg.DataError, match="bad.parquet: cannot read"):
        pg.load(tmp_path / "bad.parquet", target="y", lazy=True)
    (tmp_path / "d.csv").write_text("a,y\n1,0\n")
    with pytest.raises(pg.ConfigError, match="lazy=True reads .parquet files"):
        pg.load(tmp_path / "d.csv", target="y", lazy=True)
