"""Workbooks (``.xlsx``, ``.xls``, ``.ods``) and Arrow/Feather files, read as Arrow tables.

Workbooks are read with python-calamine (the ``excel`` extra): the first sheet, or the
one named or numbered (from 0) by ``sheet``; its first row holds the column names. Cells
keep their types: a column of numbers is float64, a column of booleans is boolean, and a
column of mixed cells is text, read by the same rules as a text file's cells (missing
markers such as ``?``, thousands separators, percentages).
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from paragrad.errors import ConfigError, DataError, option

SHEET_SUFFIXES = (".xlsx", ".xlsm", ".xls", ".ods")
ARROW_SUFFIXES = (".feather", ".arrow", ".ipc")


def read_arrow_file(path: Path) -> Any:
    """A Feather (v1 or v2) or Arrow IPC file as a table."""
    import pyarrow.feather as feather

    return feather.read_table(str(path), memory_map=True)


def read_sheet(path: Path, sheet: str | int | None = None) -> tuple[Any, str]:
    """One sheet of a workbook as a table of its cells, typed column by column, and which
    sheet it is when the workbook has others (for messages; empty when it has one)."""
    try:
        from python_calamine import CalamineWorkbook
    except ImportError:
        raise ConfigError(
            f"{path}: reading workbooks needs python-calamine: pip install 'paragrad[excel]'"
        ) from None
    try:
        workbook = CalamineWorkbook.from_path(str(path))
    except Exception as exc:  # calamine raises its own types for damaged or foreign files
        raise DataError(f"{path}: cannot read as a workbook ({str(exc).splitlines()[0][:200]})") from None
    names = list(workbook.sheet_names)
    chosen = _sheet_name(path, names, sheet)
    rows = workbook.get_sheet_by_name(chosen).to_python(skip_empty_area=True)
    rows = [row for row in rows if any(cell not in ("", None) for cell in row)]
    if not rows:
        raise DataError(f"{path}: sheet {chosen!r} is empty")
    header = [_header_name(cell, j) for j, cell in enumerate(rows[0])]
    body = rows[1:]
    columns = [[row[j] if j < len(row) else "" for row in body] for j in range(len(header))]
    which = ""
    if len(names) > 1:
        which = f"sheet {chosen!r} of {', '.join(map(repr, names))}; {option('sheet', 'NAME')} picks another"
    return _typed_table(header, columns), which


def _sheet_name(path: Path, names: list[str], sheet: str | int | None) -> str:
    if sheet is None:
        if not names:
            raise DataError(f"{path}: the workbook has no sheets")
        return names[0]
    if isinstance(sheet, int) or (isinstance(sheet, str) and sheet.isdigit() and sheet not in names):
        index = int(sheet)
        if not 0 <= index < len(names):
            raise ConfigError(f"{path}: {option('sheet', sheet)}: there are {len(names)} sheet(s), from 0")
        return names[index]
    if sheet not in names:
        raise ConfigError(
            f"{path}: no sheet named {sheet!r} ({option('sheet', sheet)}; sheets: {', '.join(names)})"
        )
    return sheet


def _header_name(cell: Any, index: int) -> str:
    if isinstance(cell, float) and cell.is_integer():
        return str(int(cell))
    return str(cell).strip() if cell not in ("", None) else ""


def _typed_table(header: list[str], columns: list[list[Any]]) -> Any:
    """Arrow columns from a sheet's cells: numbers, booleans, or text (empty cells: null)."""
    import pyarrow as pa

    arrays = []
    for cells in columns:
        present = [cell for cell in cells if cell not in ("", None)]
        if all(isinstance(cell, bool) for cell in present) and present:
            arrays.append(pa.array([None if cell in ("", None) else cell for cell in cells], pa.bool_()))
        elif all(isinstance(cell, (int, float)) and not isinstance(cell, bool) for cell in present):
            arrays.append(
                pa.array([None if cell in ("", None) else float(cell) for cell in cells], pa.float64())
            )
        else:
            arrays.append(pa.array([_as_text(cell) for cell in cells], pa.string()))
    return pa.Table.from_arrays(arrays, names=header)


def _as_text(cell: Any) -> str | None:
    """A cell as text: numbers as Python writes them (``3.5``), dates in ISO form."""
    if cell in ("", None):
        return None
    if isinstance(cell, float) and cell.is_integer():
        return str(int(cell))
    if isinstance(cell, (datetime.date, datetime.time)):
        return cell.isoformat()
    return str(cell)
