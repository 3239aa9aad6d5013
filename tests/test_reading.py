"""Files as spreadsheets and lab tools write them, read to the model numpy's lstsq gives.

Each case writes the same regression data the way one tool writes it, trains with the
zero-flag command (or with the one flag its first error names), predicts on a file of
the same kind, and compares the predictions with ``numpy.linalg.lstsq``'s fitted values
on the numbers a careful reader gets from the file.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pytest
from conftest import run_cli

import paragrad as pg

ROWS = 80


def base_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two features on different scales (thousands and ones) and a noisy linear target."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(ROWS, 2)) * [1500.0, 1.0] + [5000.0, 0.0]
    y = X @ [0.002, 3.0] + rng.normal(size=ROWS)
    return X, y


def fitted(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    design = np.column_stack([X, np.ones(len(X))])
    return design @ np.linalg.lstsq(design, y, rcond=None)[0]


@dataclass
class Case:
    """How one tool writes a table: its text (or bytes), the suffix, the numbers a careful
    reader gets from it, the flag its first error names (if any), and rows it drops."""

    name: str
    write: Callable[[Path, np.ndarray, np.ndarray, bool], None]
    suffix: str = ".csv"
    flag: tuple[str, ...] = ()
    first_error: str = ""
    values: Callable[[np.ndarray], np.ndarray] | None = None  # None: the numbers as written
    drops_rows: tuple[int, ...] = ()

    def numbers(self, X: np.ndarray) -> np.ndarray:
        return X if self.values is None else self.values(X)


def lines(path: Path, header: str, rows: list[str], encoding: str = "utf-8", opener=open) -> None:
    with opener(path, "wb") as handle:
        handle.write((header + "\n" + "\n".join(rows) + "\n").encode(encoding))


def comma(value: float) -> str:
    return repr(float(value)).replace(".", ",")


def write_decimal_comma(path, X, y, with_target):
    rows = [
        ";".join(comma(v) for v in (*x, *([t] if with_target else [])))
        for x, t in zip(X.tolist(), y.tolist(), strict=True)
    ]
    lines(path, "x1;x2" + (";y" if with_target else ""), rows)


def write_thousands(path, X, y, with_target):
    rows = [
        f'"{x[0]:,}",{x[1]!r}' + (f',"{t:,}"' if with_target else "")
        for x, t in zip(X.tolist(), y.tolist(), strict=True)
    ]
    lines(path, "x1,x2" + (",y" if with_target else ""), rows)


def write_percent(path, X, y, with_target):
    rows = [
        f"{x[0]!r},{x[1]!r}%" + (f",{t!r}" if with_target else "")
        for x, t in zip(X.tolist(), y.tolist(), strict=True)
    ]
    lines(path, "x1,rate" + (",y" if with_target else ""), rows)


MISSING_ROWS = (3, 11)


def write_missing_markers(path, X, y, with_target):
    rows = []
    for i, (x, t) in enumerate(zip(X.tolist(), y.tolist(), strict=True)):
        first = "?" if (with_target and i == MISSING_ROWS[0]) else repr(x[0])
        second = "-" if (with_target and i == MISSING_ROWS[1]) else repr(x[1])
        rows.append(f"{first},{second}" + (f",{t!r}" if with_target else ""))
    lines(path, "x1,x2" + (",y" if with_target else ""), rows)


def write_comment_lines(path, X, y, with_target):
    rows = [
        f"{x[0]!r},{x[1]!r}" + (f",{t!r}" if with_target else "")
        for x, t in zip(X.tolist(), y.tolist(), strict=True)
    ]
    lines(path, "# exported by a lab tool\n# units: kg, m\nx1,x2" + (",y" if with_target else ""), rows)


def write_comments_inside(path, X, y, with_target):
    rows = [
        f"{x[0]!r},{x[1]!r}" + (f",{t!r}" if with_target else "")
        for x, t in zip(X.tolist(), y.tolist(), strict=True)
    ]
    rows.insert(10, "# calibration changed here")
    lines(path, "x1,x2" + (",y" if with_target else ""), rows)


def write_trailing_delimiter(path, X, y, with_target):
    rows = [
        f"{x[0]!r},{x[1]!r}," + (f"{t!r}," if with_target else "")
        for x, t in zip(X.tolist(), y.tolist(), strict=True)
    ]
    lines(path, "x1,x2," + ("y," if with_target else ""), rows)


def write_duplicate_names(path, X, y, with_target):
    rows = [
        f"{x[0]!r},{x[1]!r}" + (f",{t!r}" if with_target else "")
        for x, t in zip(X.tolist(), y.tolist(), strict=True)
    ]
    lines(path, "x,x" + (",y" if with_target else ""), rows)


def compressed(opener):
    def write(path, X, y, with_target):
        rows = [
            f'"{x[0]:,}",{x[1]!r}' + (f',"{t:,}"' if with_target else "")
            for x, t in zip(X.tolist(), y.tolist(), strict=True)
        ]
        lines(path, "x1,x2" + (",y" if with_target else ""), rows, opener=opener)

    return write


CITIES = ("São Paulo", "Zürich")


def with_city(encoding):
    def write(path, X, y, with_target):
        rows = [
            f"{x[0]!r},{x[1]!r},{CITIES[i % 2]}" + (f",{t!r}" if with_target else "")
            for i, (x, t) in enumerate(zip(X.tolist(), y.tolist(), strict=True))
        ]
        lines(path, "x1,x2,city" + (",y" if with_target else ""), rows, encoding=encoding)

    return write


def city_values(X):
    return np.column_stack([X, np.arange(len(X)) % 2])  # city=Zürich, São Paulo the reference


def write_xlsx(path, X, y, with_target):
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["x1", "x2", *(["y"] if with_target else [])])
    for x, t in zip(X.tolist(), y.tolist(), strict=True):
        sheet.append([float(x[0]), float(x[1]), *([float(t)] if with_target else [])])
    book.save(path)


def write_feather(path, X, y, with_target):
    import pyarrow as pa
    import pyarrow.feather as feather

    columns = {"x1": X[:, 0], "x2": X[:, 1], **({"y": y} if with_target else {})}
    feather.write_feather(pa.table(columns), str(path))


def percent_values(X):
    return np.column_stack([X[:, 0], [float(repr(float(v))) / 100 for v in X[:, 1]]])


CASES = [
    Case("decimal-comma", write_decimal_comma),
    Case("thousands", write_thousands),
    Case("percent", write_percent, values=percent_values),
    Case(
        "missing-markers",
        write_missing_markers,
        flag=("--dropna",),
        first_error="--dropna",
        drops_rows=MISSING_ROWS,
    ),
    Case("comment-lines", write_comment_lines),
    Case("comments-inside", write_comments_inside, flag=("--comment", "#"), first_error="--comment #"),
    Case("trailing-delimiter", write_trailing_delimiter),
    Case("duplicate-names", write_duplicate_names),
    Case("gzip", compressed(gzip.open), suffix=".csv.gz"),
    Case("bzip2", compressed(bz2.open), suffix=".csv.bz2"),
    Case("xz", compressed(lzma.open), suffix=".csv.xz"),
    Case(
        "windows-1252",
        with_city("cp1252"),
        flag=("--one-hot", "city"),
        first_error="--one-hot city",
        values=city_values,
    ),
    Case(
        "latin-1",
        with_city("latin-1"),
        flag=("--one-hot", "city"),
        first_error="--one-hot city",
        values=city_values,
    ),
    Case("xlsx", write_xlsx, suffix=".xlsx"),
    Case("feather", write_feather, suffix=".feather"),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_files_as_tools_write_them_train_to_lstsq_and_predict(tmp_path, case):
    X, y = base_data()
    data, model, out = tmp_path / f"train{case.suffix}", tmp_path / "m.npz", tmp_path / "p.csv"
    case.write(data, X, y, True)

    trained = run_cli("train", data, "--target", "y", "--out", model)
    if case.flag:  # the zero-flag command fails in one line naming the flag that fixes it
        assert trained.returncode == 1 and not model.exists()
        assert trained.stderr.startswith("paragrad: error: ") and trained.stderr.count("\n") == 1
        assert case.first_error in trained.stderr, trained.stderr
        trained = run_cli("train", data, "--target", "y", "--out", model, *case.flag)
    assert trained.returncode == 0, trained.stderr
    assert "Traceback" not in trained.stderr
    assert trained.stdout.startswith(("note: ", "model: linear", "dropped")), trained.stdout

    new = tmp_path / f"new{case.suffix}"
    X_new, _ = base_data(seed=1)
    case.write(new, X_new, np.zeros(ROWS), False)
    predicted = run_cli("predict", model, new, "--out", out)
    assert predicted.returncode == 0, predicted.stderr

    keep = np.setdiff1d(np.arange(ROWS), case.drops_rows)
    values = case.numbers(X)[keep]
    design = np.column_stack([values, np.ones(len(values))])
    coefficients = np.linalg.lstsq(design, y[keep], rcond=None)[0]
    expected = np.column_stack([case.numbers(X_new), np.ones(ROWS)]) @ coefficients
    predictions = np.asarray(pacsv.read_csv(out).column("prediction"))
    np.testing.assert_allclose(predictions, expected, rtol=1e-8, atol=1e-8 * np.abs(expected).max())


def test_numbers_written_in_a_format_not_read_name_the_format_and_the_flag(tmp_path):
    X, y = base_data()
    rows = [
        f'"{comma(x[0])}",{x[1]!r},{t!r}' for x, t in zip(X.tolist(), y.tolist(), strict=True)
    ]  # decimal commas, quoted
    lines(tmp_path / "t.csv", "x1,x2,y", rows)
    result = run_cli("train", tmp_path / "t.csv", "--target", "y")
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "column 'x1' holds numbers written as" in result.stderr and "--decimal ," in result.stderr
    assert "--drop" not in result.stderr and "--one-hot" not in result.stderr


def test_one_hot_refuses_numbers_and_mostly_distinct_values(tmp_path):
    X, y = base_data()
    write_percent(tmp_path / "p.csv", X, y, True)
    result = run_cli("train", tmp_path / "p.csv", "--target", "y", "--one-hot", "rate")
    assert result.returncode == 1 and "column 'rate' holds numbers, not categories" in result.stderr
    ids = "\n".join(
        f"{x[0]!r},id{i},{t!r}" for i, (x, t) in enumerate(zip(X.tolist(), y.tolist(), strict=True))
    )
    (tmp_path / "i.csv").write_text("x1,name,y\n" + ids + "\n")
    result = run_cli("train", tmp_path / "i.csv", "--target", "y", "--one-hot", "name")
    assert result.returncode == 1 and "mostly distinct" in result.stderr and "--drop name" in result.stderr
    result = run_cli("train", tmp_path / "i.csv", "--target", "y")
    assert result.returncode == 1 and "--drop name" in result.stderr and "--one-hot" not in result.stderr


def test_a_model_remembers_the_decimal_comma_of_its_training_file(tmp_path):
    X, y = base_data()
    write_decimal_comma(tmp_path / "d.csv", X, y, True)
    trained = run_cli("train", tmp_path / "d.csv", "--target", "y", "--out", tmp_path / "m.npz")
    assert trained.returncode == 0 and "decimal commas" in trained.stdout
    # Its first lines hold whole numbers only: nothing there says how fractions are written.
    X_new = np.round(X[:40], 2)
    X_new[:20] = np.round(X_new[:20])
    write_decimal_comma(tmp_path / "new.csv", X_new, y[:40], False)
    predicted = run_cli("predict", tmp_path / "m.npz", tmp_path / "new.csv", "--out", tmp_path / "p.csv")
    assert predicted.returncode == 0, predicted.stderr
    expected = (
        np.column_stack([X_new, np.ones(40)])
        @ np.linalg.lstsq(np.column_stack([X, np.ones(ROWS)]), y, rcond=None)[0]
    )
    predictions = np.asarray(pacsv.read_csv(tmp_path / "p.csv").column("prediction"))
    np.testing.assert_allclose(predictions, expected, rtol=1e-8)


def test_a_workbook_reads_its_first_sheet_or_the_one_named(tmp_path):
    import openpyxl

    X, y = base_data()
    book = openpyxl.Workbook()
    book.active.title = "about"
    book.active.append(["exported by a lab tool"])
    sheet = book.create_sheet("data")
    sheet.append(["x1", "x2", "y"])
    for x, t in zip(X.tolist(), y.tolist(), strict=True):
        sheet.append([*x, t])
    book.save(tmp_path / "two.xlsx")
    first = run_cli("train", tmp_path / "two.xlsx", "--target", "y")
    assert first.returncode == 1 and "sheet 'about' of 'about', 'data'; --sheet NAME" in first.stderr
    for sheet_option in ("data", "1"):
        dataset = pg.load(
            tmp_path / "two.xlsx", target="y", sheet=sheet_option if sheet_option == "data" else 1
        )
        np.testing.assert_allclose(dataset.X, X, rtol=1e-15)  # to the last bit, as stored
    named = run_cli(
        "train", tmp_path / "two.xlsx", "--target", "y", "--sheet", "data", "--out", tmp_path / "m.npz"
    )
    assert named.returncode == 0, named.stderr
    np.testing.assert_allclose(pg.load_model(tmp_path / "m.npz").predict(X), fitted(X, y), rtol=1e-8)
