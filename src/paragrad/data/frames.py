"""Data frames (pandas, polars, and anything that speaks Arrow's C stream or the
``__dataframe__`` interchange protocol) as Arrow tables, keeping their column names.

A frame's columns are read by name and by type: numbers and booleans as numbers, nullable
columns (pandas' ``Int64``/``Float64``, polars' nulls) with their missing values as NaN,
and a text or category column is an error that names it and the ``one_hot=`` that
encodes it; frames are never read positionally once their names are known.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from paragrad.data.columns import float_values
from paragrad.errors import DataError


def is_frame(obj: Any) -> bool:
    """Whether ``obj`` is a data frame (not an array, not a single column)."""
    if isinstance(obj, np.ndarray) or not hasattr(obj, "columns"):
        return False
    return hasattr(obj, "__arrow_c_stream__") or hasattr(obj, "__dataframe__") or hasattr(obj, "dtypes")


def is_column(obj: Any) -> bool:
    """Whether ``obj`` is a frame's column (a pandas or polars Series, an Arrow array)."""
    if isinstance(obj, np.ndarray):
        return False
    kind = type(obj).__module__.split(".")[0]
    return kind in ("pandas", "polars", "pyarrow") and not hasattr(obj, "columns")


def frame_table(frame: Any) -> Any:
    """A frame as an Arrow table with text column names (the index of pandas left out)."""
    import pyarrow as pa

    module = type(frame).__module__.split(".")[0]
    if module == "pandas":
        table = pa.Table.from_pandas(frame, preserve_index=False)
    elif hasattr(frame, "to_arrow"):
        table = frame.to_arrow()
    elif hasattr(frame, "__arrow_c_stream__"):
        table = pa.table(frame)
    else:
        from pyarrow.interchange import from_dataframe

        table = from_dataframe(frame)
    return table.rename_columns([str(name) for name in table.column_names])


def frame_matrix(frame: Any, source: str) -> tuple[np.ndarray, list[str]]:
    """A frame's columns as a float64 matrix (missing values as NaN) and their names; a
    text or category column is an error naming it."""
    table = frame_table(frame)
    matrix = np.empty((table.num_rows, table.num_columns))
    for j, name in enumerate(table.column_names):
        matrix[:, j] = _numbers(table.column(j), name, source)
    return matrix, list(table.column_names)


def column_values(column: Any) -> np.ndarray:
    """A frame's column as numpy: numbers as float64 (missing as NaN), text and booleans
    as they are (a missing one as None, which the target's check then names)."""
    import pyarrow as pa

    array = pa.Array.from_pandas(column) if type(column).__module__.startswith("pandas") else column
    if hasattr(array, "to_arrow"):
        array = array.to_arrow()
    if not isinstance(array, (pa.Array, pa.ChunkedArray)):
        return np.asarray(column)
    kind = array.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        return _float64(array)
    if pa.types.is_dictionary(kind):
        array = array.cast(pa.string())
    return np.array(array.to_pylist(), dtype=object)


def _float64(array: Any) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    return float_values(pc.cast(array, pa.float64()))


def _numbers(column: Any, name: str, source: str) -> np.ndarray:
    import pyarrow as pa

    kind = column.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        return _float64(column)
    if pa.types.is_boolean(kind):
        return _float64(column.cast(pa.uint8()))
    what = "categories" if pa.types.is_dictionary(kind) else "text" if "string" in str(kind) else f"{kind}"
    raise DataError(
        f"{source}: column {name!r} holds {what}, not numbers: encode it with "
        f"pg.load(frame, target=..., one_hot=[{name!r}]), or leave it out of the frame"
    )
