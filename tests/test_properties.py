"""Property-based tests: any CSV content or array either loads right or fails clearly."""

from __future__ import annotations

import csv
import io
import math
import re

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import paragrad as pg
from paragrad.data.checks import MAX_MAGNITUDE, magnitude_bound

NUMBER_TEXT = st.one_of(
    st.integers(-(2**63), 2**63 - 1).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)
CELL = st.one_of(
    NUMBER_TEXT, st.text(max_size=30), st.just(""), st.sampled_from(["nan", "inf", "-inf", "1e400"])
)
# A target such as "#3" is always a column index, so names of that form are not drawn.
NAME = st.text(min_size=1, max_size=20).filter(lambda name: not re.fullmatch(r"#-?[0-9]+", name))


@st.composite
def csv_tables(draw):
    """A header of unicode names, rows of mixed cells, written with CSV quoting."""
    num_columns = draw(st.integers(1, 8))
    names = draw(st.lists(NAME, min_size=num_columns, max_size=num_columns, unique=True))
    rows = draw(st.lists(st.lists(CELL, min_size=num_columns, max_size=num_columns), max_size=12))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")  # quotes any field holding \r or \n
    writer.writerow(names)
    for row in rows:
        writer.writerow(row)
        if draw(st.booleans()):
            buffer.write("\r\n")  # blank lines are skipped
    return names, rows, buffer.getvalue()


def as_finite_number(cell: str) -> float | None:
    """The number a cell holds, if finite and small enough to train on."""
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if math.isfinite(value) and abs(value) < MAX_MAGNITUDE else None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(table=csv_tables())
@example(table=(["\x0c", ":"], [["0", "0"]], "\x0c,:\r\n0,0\r\n"))  # a form feed is a name's character
def test_any_csv_loads_to_the_right_arrays_or_fails_with_a_data_error(tmp_path, table):
    names, rows, text = table
    path = tmp_path / "data.csv"
    path.write_text(text, encoding="utf-8")
    target = names[-1]
    well_formed = (
        len(names) >= 2
        and rows
        and all(
            as_finite_number(cell) is not None and cell in set(map(str, [cell]))
            for row in rows
            for cell in row
        )
        and all(cell.strip() == cell and "_" not in cell for row in rows for cell in row)
        and not any(ch in name for name in names for ch in "\n\r")
    )
    try:
        data = pg.load(path, target=target)
    except pg.DataError as error:
        assert not well_formed, f"well-formed CSV refused: {error}"
        assert str(error).startswith(str(path)) and "\n" not in str(error)
        return
    np.testing.assert_array_equal(data.X, np.array([[float(cell) for cell in row[:-1]] for row in rows]))
    targets = [row[-1] for row in rows]
    if all(as_finite_number(cell) is not None for cell in targets):
        np.testing.assert_array_equal(data.y, np.array([float(cell) for cell in targets]))
    else:  # class labels of any kind: the cells themselves (booleans as pyarrow reads them)
        assert [str(label).lower() for label in data.labels.tolist()] == [cell.lower() for cell in targets]
    assert data.feature_names == tuple(names[:-1]) and data.target_name == target


@settings(max_examples=150, deadline=None)
@given(
    X=hnp.arrays(
        dtype=st.sampled_from([np.float64, np.float32, np.int64, np.bool_, np.complex128, np.dtype("U3")]),
        shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
    ),
    num_labels=st.integers(0, 6),
)
def test_any_array_makes_a_valid_dataset_or_a_data_error(X, num_labels):
    y = np.arange(num_labels, dtype=float)
    try:
        data = pg.Dataset(X, y)
    except pg.DataError as error:
        assert "\n" not in str(error)
        return
    kept = np.float32 if X.dtype == np.float32 else np.float64  # float32 stays as it is
    assert data.X.ndim == 2 and data.X.dtype == kept and data.X.flags.c_contiguous
    assert data.num_rows == len(y) > 0 and data.num_features > 0
    assert np.isfinite(data.X).all() and (np.abs(data.X) < magnitude_bound(data.X.dtype)).all()
    np.testing.assert_array_equal(data.X, X.astype(kept))
