"""Real files as spreadsheets and tools write them, read through the real command line.

Each either trains to the least-squares fit of the intended numeric data, or fails with
one line naming the cause and the flag that fixes it, leaving no output file.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import paragrad as pg
from paragrad.data.columns import _variable_width, arrow_array, float_values
from paragrad.training.checkpoint import load_model
from tests.conftest import run_cli

X = np.array([[1.0, 2.0], [2.0, 0.5], [3.5, 1.0], [4.0, 3.0], [5.0, 2.5], [6.5, 0.0]])
Y = np.array([3.0, 1.5, 4.0, 9.0, 7.5, 6.0])


def lstsq(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    design = np.column_stack([X, np.ones(len(X))])
    return np.linalg.lstsq(design, y, rcond=None)[0]


def table(delimiter: str = ",", names=("a", "b", "y"), rows=None, newline: str = "\n") -> str:
    rows = rows if rows is not None else [[*map(str, x), str(y)] for x, y in zip(X, Y, strict=True)]
    return newline.join(delimiter.join(row) for row in [list(names), *rows]) + newline


def train(tmp_path: Path, name: str, text: str | bytes, *flags: str):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    out = tmp_path / "m.npz"
    result = run_cli("train", path, "--target", "y", "--model", "linear", "--out", out, *flags)
    return result, out


def coefficients(out: Path) -> np.ndarray:
    return load_model(out).params_


GOOD = {
    "comma": ("d.csv", table(","), ()),
    "semicolon": ("d.csv", table(";"), ()),
    "tab in a .csv": ("d.csv", table("\t"), ()),
    "tsv": ("d.tsv", table("\t"), ()),
    "pipe": ("d.txt", table("|"), ()),
    "space": ("d.txt", table(" "), ()),
    "aligned spaces": ("d.txt", table("   ").replace("\n", "  \n"), ()),
    "BOM and CRLF": ("d.csv", b"\xef\xbb\xbf" + table(",", newline="\r\n").encode(), ()),
    "quoted header with commas": ("d.csv", table(",", names=('"a, cm"', '"b, kg"', "y")), ()),
    "semicolon, quoted header": ("d.csv", table(";", names=('"a;1"', "b", "y")), ()),
    "column named 1": ("d.csv", table(",", names=("1", "b", "y")), ()),
    "explicit delimiter": ("d.csv", table(";"), ("--delimiter", ";")),
}


@pytest.mark.parametrize("case", GOOD, ids=list(GOOD))
def test_files_as_tools_write_them_train_to_the_least_squares_fit(tmp_path, case):
    name, text, flags = GOOD[case]
    result, out = train(tmp_path, name, text, *flags)
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(coefficients(out), lstsq(X, Y), atol=1e-8)


def with_id(missing: str | None = None) -> str:
    rows = [[f"r{i}", *map(str, x), str(y)] for i, (x, y) in enumerate(zip(X, Y, strict=True))]
    if missing is not None:
        rows[2][1] = missing
        rows.append(["extra", "1", missing, "2"])
    return table(",", names=("id", "a", "b", "y"), rows=rows)


def test_a_text_id_column_is_named_with_the_flag_that_drops_it(tmp_path):
    result, out = train(tmp_path, "d.csv", with_id())
    expect_one_line(result, out, "column 'id' is not numeric (line 2 holds 'r0'): drop it with --drop id")
    result, out = train(tmp_path, "d.csv", with_id(), "--drop", "id")
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(coefficients(out), lstsq(X, Y), atol=1e-8)


def test_features_picks_the_columns(tmp_path):
    result, out = train(tmp_path, "d.csv", with_id(), "--features", "a,b")
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(coefficients(out), lstsq(X, Y), atol=1e-8)


@pytest.mark.parametrize("missing", ["NA", ""])
def test_missing_cells_are_named_by_line_and_skipped_with_dropna(tmp_path, missing):
    result, out = train(tmp_path, "d.csv", with_id(missing), "--drop", "id")
    # Header is line 1, so the third data row is line 4.
    expect_one_line(result, out, "missing value in column 'a' at line 4 (2 rows have missing values); ")
    assert "--dropna" in result.stderr
    result, out = train(tmp_path, "d.csv", with_id(missing), "--drop", "id", "--dropna")
    assert result.returncode == 0, result.stderr
    assert "dropped 2 rows with missing values" in result.stdout
    keep = np.arange(len(X)) != 2
    np.testing.assert_allclose(coefficients(out), lstsq(X[keep], Y[keep]), atol=1e-8)


def test_a_file_read_with_the_wrong_delimiter_names_the_flag(tmp_path):
    result, out = train(tmp_path, "d.csv", table(";"), "--delimiter", ",")
    expect_one_line(result, out, "target column 'y' not found")


def test_parquet_takes_the_same_options(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    a = X[:, 0].tolist()
    a[1] = None
    columns = {"id": [f"r{i}" for i in range(len(X))], "a": a, "b": X[:, 1], "y": Y}
    pq.write_table(pa.table(columns), tmp_path / "d.parquet")
    out = tmp_path / "m.npz"
    base = ("train", tmp_path / "d.parquet", "--target", "y", "--model", "linear", "--out", out)
    expect_one_line(run_cli(*base), out, "column 'id' is not numeric")
    expect_one_line(run_cli(*base, "--drop", "id"), out, "missing value in column 'a' at row 2")
    result = run_cli(*base, "--drop", "id", "--dropna")
    assert result.returncode == 0, result.stderr
    keep = np.arange(len(X)) != 1
    np.testing.assert_allclose(coefficients(out), lstsq(X[keep], Y[keep]), atol=1e-8)


COLORS = ["red", "blue", "red", "green", "blue", "green"]


def test_one_hot_round_trip_through_predict(tmp_path):
    rows = [[str(x[0]), c, str(y)] for x, c, y in zip(X, COLORS, Y, strict=True)]
    text = table(",", names=("a", "color", "y"), rows=rows)
    result, out = train(tmp_path, "d.csv", text, "--one-hot", "color")
    assert result.returncode == 0, result.stderr
    assert load_model(out).feature_names_ == ("a", "color=green", "color=red")  # blue: the reference
    new = tmp_path / "new.csv"
    new.write_text("color,a\nred,0.5\ngreen,2\nblue,7\n")
    predicted = tmp_path / "p.npy"
    result = run_cli("predict", out, new, "--out", predicted)
    assert result.returncode == 0, result.stderr
    categories = ["blue", "green", "red"]
    design = np.column_stack([X[:, 0], [[c == k for k in categories] for c in COLORS]]).astype(float)
    w = lstsq(design, Y)
    new_design = np.array([[0.5, 0, 0, 1], [2, 0, 1, 0], [7, 1, 0, 0]], dtype=float)
    np.testing.assert_allclose(np.load(predicted), new_design @ w[:-1] + w[-1], atol=1e-8)
    new.write_text("color,a\npurple,1\n")
    result = run_cli("predict", out, new, "--out", tmp_path / "q.npy")
    expect_one_line(result, tmp_path / "q.npy", "column 'color' holds 'purple' at line 2")


def test_one_hot_refuses_too_many_categories(tmp_path):
    rows = [[f"v{i}", str(i % 7), str(i)] for i in range(120)]
    result, out = train(
        tmp_path, "d.csv", table(",", names=("name", "a", "y"), rows=rows), "--one-hot", "name"
    )
    expect_one_line(result, out, "column 'name' has 120 distinct values in 120 rows, mostly distinct")


def test_target_file_round_trip(tmp_path):
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", Y)
    out = tmp_path / "m.npz"
    base = ("train", tmp_path / "X.npy", "--model", "linear", "--out", out)
    expect_one_line(
        run_cli(*base), out, "a .npy holds features only: give the targets with --target-file y.npy"
    )
    result = run_cli(*base, "--target-file", tmp_path / "y.npy")
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(coefficients(out), lstsq(X, Y), atol=1e-8)


def test_statsmodels_space_and_semicolon_files(tmp_path):
    datasets = pytest.importorskip("statsmodels.datasets")
    root = Path(datasets.__file__).parent
    spector = np.loadtxt(root / "spector" / "spector.csv", skiprows=1)
    out = tmp_path / "m.npz"
    result = run_cli(
        "train", root / "spector" / "spector.csv", "--target", "GRADE", "--model", "linear",
        "--drop", "OBS", "--out", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(coefficients(out), lstsq(spector[:, 1:4], spector[:, 4]), atol=1e-8)
    result = run_cli(
        "train", root / "modechoice" / "modechoice.csv", "--target", "choice", "--model", "linear"
    )
    assert result.returncode == 0, result.stderr


def expect_one_line(result, out: Path, message: str) -> None:
    assert result.returncode != 0
    assert result.stderr.startswith("paragrad: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_a_file_with_the_target_column_predicts_with_a_model_trained_on_bare_arrays(tmp_path):
    data = pg.make_regression(200, 4, seed=3)
    model = pg.train(pg.models.LinearRegression(), pg.Dataset(data.X, data.y), engine="serial").model
    pg.save_dataset(data, tmp_path / "test.csv")  # x0..x3 and y
    np.testing.assert_allclose(
        pg.predict(model, tmp_path / "test.csv", engine="serial"), model.predict(data.X)
    )
    pg.save_dataset(pg.Dataset(np.column_stack([data.X, data.y])), tmp_path / "other.csv")  # x0..x4
    with pytest.raises(
        pg.DataError, match=r"has 5 features, but the model was trained with 4: is 'x4' the target"
    ):
        pg.predict(model, tmp_path / "other.csv", engine="serial")


def test_evaluate_takes_the_targets_of_npy_features_and_skips_rows_with_missing_values(tmp_path):
    data = pg.make_regression(300, 3, seed=5)
    np.save(tmp_path / "X.npy", data.X)
    np.save(tmp_path / "y.npy", data.y)
    trained = run_cli(
        "train", tmp_path / "X.npy", "--target-file", tmp_path / "y.npy", "--out", tmp_path / "m.npz"
    )
    assert trained.returncode == 0, trained.stderr
    scored = run_cli("evaluate", tmp_path / "m.npz", tmp_path / "X.npy", "--target-file", tmp_path / "y.npy")
    assert scored.returncode == 0, scored.stderr
    assert scored.stdout.splitlines()[0].split() == ["rows", "300"]
    (tmp_path / "t.csv").write_text("x0,x1,x2,y\n1,2,3,4\n,1,1,1\n2,2,2,2\n")
    run_cli("train", tmp_path / "t.csv", "--target", "y", "--dropna", "--out", tmp_path / "small.npz")
    missing = run_cli("predict", tmp_path / "small.npz", tmp_path / "t.csv", "--out", tmp_path / "p.csv")
    assert missing.returncode == 1 and "at line 3; fill or remove such rows" in missing.stderr
    kept = run_cli("evaluate", tmp_path / "small.npz", tmp_path / "t.csv", "--dropna")
    assert kept.returncode == 0 and kept.stdout.splitlines()[0].split() == ["rows", "2"]


def test_arrow_columns_become_the_numbers_pyarrow_gives():
    """Columns in several chunks, sliced, with nulls within and across chunks (bits past
    the first byte), empty and all null: the values of pyarrow's ``to_numpy``, nulls as
    NaN, read from the buffers."""
    import pyarrow as pa

    with_nulls = pa.array([None if i % 3 == 0 else i / 4 for i in range(40)], pa.float64())
    cases = [
        pa.chunked_array([pa.array([1.5, None, 3.0]), pa.array([], pa.float64()), pa.array([None, 4.0])]),
        pa.chunked_array(
            [with_nulls.slice(13, 20), with_nulls.slice(2, 5), pa.array(np.arange(9.0)).slice(4)]
        ),
        pa.chunked_array([pa.array(np.arange(10.0)).slice(3)]),
        with_nulls.slice(11),
        pa.array([None, None], pa.float64()),
        pa.chunked_array([], pa.float64()),
    ]
    for column in cases:
        values = float_values(column)
        np.testing.assert_array_equal(values, column.to_numpy(zero_copy_only=False))
        assert values.dtype == np.float64
    assert not float_values(pa.chunked_array([pa.array([1.0, 2.0])])).flags.writeable  # Arrow's memory


def test_numpy_arrays_become_the_arrow_arrays_pyarrow_makes():
    """Predictions as pyarrow would turn them into a file's column: numbers of each
    width and byte order, booleans past a byte, text (non-ASCII too), empty arrays, a
    column of a matrix."""
    import pyarrow as pa

    proba = np.arange(12.0).reshape(6, 2) / 11
    cases = [
        np.array([1.5, -0.0, 1e300, 3.0]),
        np.arange(5, dtype=np.int64),
        np.arange(3, dtype=np.float32),
        np.arange(4, dtype=">f8"),
        np.arange(11) % 3 == 0,
        np.array(["setosa", "\u00e9t\u00e9", "", "virginica"]),
        np.array(["a", "bb"], dtype=object),
        np.array([b"yes", b"no", b""]),
        np.zeros(0),
        np.array([], dtype=str),
        proba[:, 1],
    ]
    for values in cases:
        made = arrow_array(values)
        assert made.equals(pa.array(values.astype(values.dtype.newbyteorder("=")))), (
            values
        )  # pyarrow: native only


def test_text_past_arrows_32_bit_offsets_comes_in_pieces_of_one_type():
    """Text of more bytes than 32-bit offsets reach (2 GiB; 10 bytes here) is split into
    pieces of the same type, not made ``large_string``: a file's chunks keep one schema."""
    import pyarrow as pa

    items = [f"label-{i % 7}".encode() * (i % 3) for i in range(40)]
    whole = _variable_width(pa.string(), items)
    pieces = _variable_width(pa.string(), items, piece_bytes=10)
    assert whole.type == pieces.type == pa.string() and pieces.num_chunks > 1
    assert all(sum(map(len, chunk.to_pylist())) <= 10 or len(chunk) == 1 for chunk in pieces.chunks)
    assert pieces.to_pylist() == whole.to_pylist() == [item.decode() for item in items]
    assert _variable_width(pa.string(), [], piece_bytes=10).to_pylist() == []


def test_a_fresh_process_loads_a_csv_and_predicts_without_importing_pandas(tmp_path):
    """pyarrow's own conversions to and from numpy import pandas, 0.2 s of a first call."""
    path, model = tmp_path / "data.csv", tmp_path / "model.npz"
    path.write_text(table())
    pg.train("linear", pg.load(path, target="y"), progress=False).save(model)
    code = (
        f"import sys, paragrad as pg; data = pg.load({str(path)!r}, target='y'); "
        f"from paragrad.inference import predict_to_file; "
        f"predict_to_file({str(model)!r}, {str(path)!r}, {str(tmp_path / 'out.csv')!r}); "
        "print('pandas' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == "False\n"
    np.testing.assert_allclose(np.loadtxt(tmp_path / "out.csv", skiprows=1), pg.predict(load_model(model), X))
