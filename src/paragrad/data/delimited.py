"""Delimited text tables (CSV, TSV, ``.txt``) as spreadsheets and tools write them.

The delimiter is read from the file, not from its suffix: a ``.csv`` written by a
spreadsheet in a comma-decimal locale holds semicolons, and tools write tabs into files
named ``.csv``. :func:`sniff` counts each candidate in the header line outside quotes and
keeps the first whose count is the same on the next few lines. A UTF-8 byte order mark,
CRLF line ends and quoted names holding the delimiter are all read as meant.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

from paragrad.errors import ConfigError, DataError, option

TEXT_SUFFIXES = (".csv", ".tsv", ".txt")
# In order of preference when several fit: a tab or a comma is rarely inside a name, a
# space often is.
CANDIDATES = ("\t", ",", ";", "|", " ")
NAMED = {"tab": "\t", "\\t": "\t", "space": " ", "comma": ",", "semicolon": ";", "pipe": "|"}
SNIFF_BYTES = 1 << 16
SNIFF_LINES = 6


@dataclass(frozen=True)
class Dialect:
    """How a text table is written: the delimiter between cells and the quote character."""

    delimiter: str
    quote: str = '"'


def delimiter_from(text: str) -> str:
    """A delimiter given by the user: one character, or a name such as ``tab``."""
    delimiter = NAMED.get(text.lower(), text)
    if len(delimiter) != 1 or delimiter in "\r\n\"'":
        raise ConfigError(
            f"{option('delimiter', text)}: the delimiter must be one character, or tab or space"
        )
    return delimiter


def sniff(path: Path, delimiter: str | None = None) -> Dialect:
    """The dialect of a text table, read from its first lines; ``delimiter`` overrides."""
    with open(path, "rb") as handle:
        head = handle.read(SNIFF_BYTES)
    text = head.decode("utf-8-sig", errors="replace")
    lines = text.splitlines()
    if len(head) == SNIFF_BYTES and len(lines) > 1:
        lines = lines[:-1]  # the last line read may be cut short
    lines = [line for line in lines if line.strip()][:SNIFF_LINES]
    header = lines[0].strip() if lines else ""
    # Some tools (R's write.table, say) quote names with single quotes: a first name wrapped
    # in them, then a delimiter or the end (a lone ' is just a character of a name).
    quoted_first = re.match(r"'[^']*'(?:[\s,;|]|$)", header) is not None
    quote = "'" if quoted_first and '"' not in header else '"'
    if delimiter is not None:
        return Dialect(delimiter_from(delimiter), quote)
    for candidate in CANDIDATES:
        counts = [_count_outside(line, candidate, quote) for line in lines]
        if counts and counts[0] > 0 and all(count == counts[0] for count in counts):
            return Dialect(candidate, quote)
    return Dialect("\t" if path.suffix.lower() == ".tsv" else ",", quote)


def _count_outside(line: str, delimiter: str, quote: str) -> int:
    """How many cells the delimiter separates in ``line``, outside quotes; runs of spaces
    count once, and spaces at either end not at all."""
    if delimiter == " ":
        line = line.strip()
    count, quoted, previous = 0, False, ""
    for char in line:
        if char == quote:
            quoted = not quoted
        elif char == delimiter and not quoted and not (delimiter == " " and previous == " "):
            count += 1
        previous = char
    return count


def read_text_table(path: Path, delimiter: str | None = None):
    """A text table as a pyarrow Table; empty cells and ``NA`` are nulls, in text columns too."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    dialect = sniff(path, delimiter)
    convert = pacsv.ConvertOptions(strings_can_be_null=True)
    try:
        if dialect.delimiter == " ":  # aligned columns: runs of spaces are one delimiter
            source = _spaces_as_commas(path, dialect.quote)
            parse = pacsv.ParseOptions(delimiter=",", quote_char='"')
            return pacsv.read_csv(source, parse_options=parse, convert_options=convert)
        parse = pacsv.ParseOptions(delimiter=dialect.delimiter, quote_char=dialect.quote)
        typed = _numbers_as_float64(path, parse, convert)
        if typed is not None:
            try:
                return pacsv.read_csv(path, parse_options=parse, convert_options=typed)
            except pa.ArrowInvalid:
                pass  # a later value is not a number: the read below says which, in its terms
        return pacsv.read_csv(path, parse_options=parse, convert_options=convert)
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "Empty CSV file" in reason:
            reason = "the file is empty"
        elif "Expected" in reason and "columns" in reason:
            shown = {"\t": "tab", " ": "space"}.get(dialect.delimiter, dialect.delimiter)
            reason += f" (read with delimiter {shown!r}; set another with {option('delimiter', ';')})"
        raise DataError(f"{path}: cannot read: {reason}") from None


def _numbers_as_float64(path: Path, parse, convert):
    """Options that read the columns whose first block holds numbers as float64 straight
    away: pyarrow otherwise infers every column's type block by block, which takes more
    than half of the read. None when the first block cannot be read (the full read then
    reports why)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    try:
        with pacsv.open_csv(path, parse_options=parse, convert_options=convert) as reader:
            schema = reader.schema
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError):
        return None
    numeric = {
        field.name: pa.float64()
        for field in schema
        if pa.types.is_integer(field.type) or pa.types.is_floating(field.type)
    }
    if not numeric or len(set(schema.names)) != len(schema.names):
        return None  # no numbers, or a header with a repeated name: read as before
    return pacsv.ConvertOptions(strings_can_be_null=True, column_types=numeric)


def _spaces_as_commas(path: Path, quote: str) -> io.BytesIO:
    """A space-delimited file rewritten with commas, runs of spaces read as one delimiter."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    with open(path, encoding="utf-8-sig", newline="") as handle:
        for line in handle:
            if line.strip():
                writer.writerow(
                    next(csv.reader([line.strip()], delimiter=" ", quotechar=quote, skipinitialspace=True))
                )
    return io.BytesIO(out.getvalue().encode())


def data_lines(path: Path) -> list[int]:
    """The line number (header = line 1) of each data row of a text table, blank lines skipped."""
    with open(path, encoding="utf-8-sig", errors="replace", newline=None) as handle:
        numbers = [number for number, line in enumerate(handle, start=1) if line.strip()]
    return numbers[1:]
