"""Delimited text tables (CSV, TSV, ``.txt``) as spreadsheets and tools write them.

The delimiter is read from the file, not from its suffix: a ``.csv`` written by a
spreadsheet in a comma-decimal locale holds semicolons, and tools write tabs into files
named ``.csv``. :func:`sniff` counts each candidate in the header line outside quotes and
keeps the first whose count is the same on the next few lines. It also reads, from the
same lines: the decimal mark (a comma when a file not separated by commas writes its
numbers like ``3,5``), the text encoding (UTF-8, else Windows-1252, as spreadsheets on
Windows write), and comment lines before the header (``# exported by ...``). A UTF-8 byte
order mark, CRLF line ends, quoted names holding the delimiter and compressed files
(``.gz``, ``.bz2``, ``.zst``, ``.xz``) are all read as meant.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import lzma
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paragrad.data.numbers import NumberFormat, decimal_from, guess_decimal
from paragrad.errors import ConfigError, DataError, option

TEXT_SUFFIXES = (".csv", ".tsv", ".txt")
COMPRESSED_SUFFIXES = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open, ".zst": None, ".zstd": None}
# In order of preference when several fit: a tab or a comma is rarely inside a name, a
# space often is.
CANDIDATES = ("\t", ",", ";", "|", " ")
NAMED = {"tab": "\t", "\\t": "\t", "space": " ", "comma": ",", "semicolon": ";", "pipe": "|"}
SNIFF_BYTES = 1 << 16
SNIFF_LINES = 6
FALLBACK_ENCODING = "cp1252"  # what spreadsheets on Windows write when not told UTF-8


@dataclass(frozen=True)
class TextFormat:
    """What the user says of a text table (each None: read from the file): the delimiter,
    the decimal mark, the encoding, a comment character, and extra missing-value markers."""

    delimiter: str | None = None
    decimal: str | None = None
    encoding: str | None = None
    comment: str | None = None
    na_values: tuple[str, ...] = ()


@dataclass(frozen=True)
class Dialect:
    """How a text table is written: the delimiter between cells, the quote character,
    the decimal mark, the encoding, the lines before the header (comments), the comment
    character of lines to skip anywhere, and what was read from the file, in words."""

    delimiter: str
    quote: str = '"'
    decimal: str = "."
    encoding: str = "utf-8"
    skip_lines: int = 0
    comment: str | None = None
    notes: tuple[str, ...] = field(default=(), compare=False)


def table_suffix(path: Path) -> str:
    """A file's suffix once a compression suffix is set aside: ``.csv`` for ``a.csv.gz``."""
    suffixes = [suffix.lower() for suffix in path.suffixes]
    if len(suffixes) >= 2 and suffixes[-1] in COMPRESSED_SUFFIXES:
        return suffixes[-2]
    return suffixes[-1] if suffixes else ""


def open_bytes(path: Path) -> io.BufferedReader | gzip.GzipFile | bz2.BZ2File | lzma.LZMAFile:
    """The file's bytes, decompressed when its suffix names a compression (pyarrow's zstd
    stream, untyped, reads as these binary files do)."""
    suffix = path.suffix.lower()
    if suffix not in COMPRESSED_SUFFIXES:
        return open(path, "rb")
    opener = COMPRESSED_SUFFIXES[suffix]
    if opener is None:
        import pyarrow as pa

        return pa.input_stream(str(path), compression="zstd")
    return opener(path, "rb")


def delimiter_from(text: str) -> str:
    """A delimiter given by the user: one character, or a name such as ``tab``."""
    delimiter = NAMED.get(text.lower(), text)
    if len(delimiter) != 1 or delimiter in "\r\n\"'":
        raise ConfigError(
            f"{option('delimiter', text)}: the delimiter must be one character, or tab or space"
        )
    return delimiter


def _encoding_of(head: bytes, given: str | None) -> str:
    """The text encoding: the one given, else UTF-8 when the first bytes decode as UTF-8
    (a character cut at the end aside), else Windows-1252 (latin-1 where it has holes)."""
    if given is not None:
        try:
            "".encode(given)
        except LookupError:
            raise ConfigError(f"{option('encoding', given)}: unknown text encoding") from None
        return given
    try:
        head.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError as exc:
        if len(head) == SNIFF_BYTES and exc.start >= len(head) - 3:
            return "utf-8"
    try:
        head.decode(FALLBACK_ENCODING)
        return FALLBACK_ENCODING
    except UnicodeDecodeError:
        return "latin-1"


def sniff(path: Path, text_format: TextFormat | None = None) -> Dialect:
    """The dialect of a text table, read from its first lines; ``text_format`` overrides."""
    given = text_format or TextFormat()
    with open_bytes(path) as handle:
        head = handle.read(SNIFF_BYTES)
    encoding = _encoding_of(head, given.encoding)
    text = head.decode(encoding, errors="replace").removeprefix("\ufeff")
    lines = _text_lines(text)
    if len(head) == SNIFF_BYTES and len(lines) > 1:
        lines = lines[:-1]  # the last line read may be cut short
    comment = given.comment
    if comment is not None and (len(comment) != 1 or comment in "\r\n"):
        raise ConfigError(f"{option('comment', comment)}: the comment mark is one character")
    skip = 0  # blank lines and comment lines (# by default) before the header
    while skip < len(lines) and (not lines[skip].strip() or lines[skip].lstrip().startswith(comment or "#")):
        skip += 1
    lines = [
        line for line in lines[skip:] if line.strip() and not (comment and line.lstrip().startswith(comment))
    ]
    lines = lines[:SNIFF_LINES]
    header = lines[0].strip() if lines else ""
    # Some tools (R's write.table, say) quote names with single quotes: a first name wrapped
    # in them, then a delimiter or the end (a lone ' is just a character of a name).
    quoted_first = re.match(r"'[^']*'(?:[\s,;|]|$)", header) is not None
    quote = "'" if quoted_first and '"' not in header else '"'
    delimiter = None if given.delimiter is None else delimiter_from(given.delimiter)
    if delimiter is None:
        for candidate in CANDIDATES:
            counts = [_count_outside(line, candidate, quote) for line in lines]
            if counts and counts[0] > 0 and all(count == counts[0] for count in counts):
                delimiter = candidate
                break
        else:
            delimiter = "\t" if table_suffix(path) == ".tsv" else ","
    decimal = decimal_from(given.decimal)
    notes = []
    if decimal is None:
        decimal = "."
        if delimiter != ",":
            cells = [cell.strip().strip(quote) for line in lines[1:] for cell in line.split(delimiter)]
            decimal = guess_decimal(cells)
            if decimal == ",":
                notes.append(
                    f"numbers read with decimal commas, as written ({option('decimal', '.')} if not)"
                )
    if encoding != "utf-8" and given.encoding is None:
        notes.append(_not_utf8(encoding))
    if skip and any(line.strip() for line in _text_lines(text)[:skip]):
        notes.append(f"skipped the comment lines before the header ({skip} line(s))")
    return Dialect(delimiter, quote, decimal, encoding, skip, comment, tuple(notes))


def _text_lines(text: str) -> list[str]:
    """``text``'s lines as a CSV reader sees them: broken at ``\\n``, ``\\r\\n`` and ``\\r``
    only (``str.splitlines`` breaks at form feeds and other separators too, which in a CSV
    are characters of a cell)."""
    lines = re.split(r"\r\n|\r|\n", text)
    return lines[:-1] if lines and not lines[-1] else lines


def _not_utf8(encoding: str) -> str:
    """The note for a file read in another encoding than UTF-8, which was not given."""
    name = {"cp1252": "Windows-1252", "latin-1": "Latin-1"}.get(encoding, encoding)
    return f"read as {name}: the file is not UTF-8 ({option('encoding', 'NAME')} sets the encoding)"


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


def read_text_table(path: Path, text_format: TextFormat | None = None) -> tuple[Any, Dialect]:
    """A text table as a pyarrow Table, and the dialect it was read with; empty cells, ``NA``,
    ``?`` and the other missing markers are nulls, in text columns too."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    given = text_format or TextFormat()
    dialect = sniff(path, given)
    numbers = NumberFormat(dialect.decimal, given.na_values)
    convert = pacsv.ConvertOptions(
        strings_can_be_null=True, null_values=numbers.null_values(), decimal_point=dialect.decimal
    )
    try:
        table = _read(path, dialect, convert)
        if given.encoding is None and dialect.encoding == "utf-8" and _has_binary(table):
            # Text past the first block that is not UTF-8: read it the way Windows writes.
            note = _not_utf8(FALLBACK_ENCODING)
            dialect = Dialect(
                dialect.delimiter,
                dialect.quote,
                dialect.decimal,
                FALLBACK_ENCODING,
                dialect.skip_lines,
                dialect.comment,
                (*dialect.notes, note),
            )
            table = _read(path, dialect, convert)
        return table, dialect
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "Empty CSV file" in reason:
            reason = "the file is empty"
        elif "Expected" in reason and "columns" in reason:
            line = reason.split(": ", 2)[-1].lstrip() if reason.count(": ") >= 2 else ""
            if line[:1] in ("#", "%", ";", "!", "/") and line[:1] != dialect.delimiter:
                reason += f" (a comment line? skip such lines with {option('comment', line[0])})"
            else:
                shown = {"\t": "tab", " ": "space"}.get(dialect.delimiter, dialect.delimiter)
                reason += f" (read with delimiter {shown!r}; set another with {option('delimiter', ';')})"
        raise DataError(f"{path}: cannot read: {reason}") from None


def _has_binary(table: Any) -> bool:
    import pyarrow as pa

    return any(pa.types.is_binary(column.type) for column in table.columns)


def _read(path: Path, dialect: Dialect, convert: Any) -> Any:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    if dialect.delimiter == " ":  # aligned columns: runs of spaces are one delimiter
        source = _spaces_as_commas(path, dialect)
        parse = pacsv.ParseOptions(delimiter=",", quote_char='"')
        return pacsv.read_csv(source, parse_options=parse, convert_options=convert)
    parse = pacsv.ParseOptions(delimiter=dialect.delimiter, quote_char=dialect.quote)
    if dialect.comment is not None or path.suffix.lower() == ".xz":
        # Lines to skip anywhere, or a compression pyarrow does not read: the text, as read.
        source = io.BytesIO("".join(_lines(path, dialect)).encode())
        return pacsv.read_csv(source, parse_options=parse, convert_options=convert)
    read = pacsv.ReadOptions(skip_rows=dialect.skip_lines, encoding=dialect.encoding)
    typed = _numbers_as_float64(path, read, parse, convert)
    if typed is not None:
        try:
            return pacsv.read_csv(path, read_options=read, parse_options=parse, convert_options=typed)
        except pa.ArrowInvalid:
            pass  # a later value is not a number: the read below says which, in its terms
    return pacsv.read_csv(path, read_options=read, parse_options=parse, convert_options=convert)


def _numbers_as_float64(path: Path, read: Any, parse: Any, convert: Any) -> Any:
    """Options that read the columns whose first block holds numbers as float64 straight
    away: pyarrow otherwise infers every column's type block by block, which takes more
    than half of the read. None when the first block cannot be read (the full read then
    reports why)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    try:
        with pacsv.open_csv(path, read_options=read, parse_options=parse, convert_options=convert) as reader:
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
    return pacsv.ConvertOptions(
        strings_can_be_null=True,
        column_types=numeric,
        null_values=convert.null_values,
        decimal_point=convert.decimal_point,
    )


def _lines(path: Path, dialect: Dialect) -> Iterator[str]:
    """The file's lines from the header on, decoded; comment lines and blank lines left out."""
    with open_bytes(path) as raw, io.TextIOWrapper(raw, encoding=dialect.encoding, newline="") as handle:
        for number, line in enumerate(handle):
            if number < dialect.skip_lines or not line.strip():
                continue
            if dialect.comment is not None and line.lstrip().startswith(dialect.comment):
                continue
            yield line.removeprefix("\ufeff")


def _spaces_as_commas(path: Path, dialect: Dialect) -> io.BytesIO:
    """A space-delimited file rewritten with commas, runs of spaces read as one delimiter."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for line in _lines(path, dialect):
        writer.writerow(
            next(csv.reader([line.strip()], delimiter=" ", quotechar=dialect.quote, skipinitialspace=True))
        )
    return io.BytesIO(out.getvalue().encode())


def data_lines(path: Path, dialect: Dialect | None = None) -> list[int]:
    """The line number (the file's first line = 1) of each data row of a text table: blank
    lines, comment lines and the header skipped."""
    dialect = dialect or sniff(path)
    numbers = []
    with (
        open_bytes(path) as raw,
        io.TextIOWrapper(raw, encoding=dialect.encoding, errors="replace") as handle,
    ):
        for number, line in enumerate(handle, start=1):
            if number <= dialect.skip_lines or not line.strip():
                continue
            if dialect.comment is not None and line.lstrip().startswith(dialect.comment):
                continue
            numbers.append(number)
    return numbers[1:]
