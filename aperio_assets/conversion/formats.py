"""Convert one raw file on local disk (CSV, TSV, JSON, JSON Lines, Excel) into one Parquet file on local disk.

No storage code here: the caller downloads the raw file, calls :func:`convert_file`, and uploads the result.
Parquet raw files are passed through untouched; :func:`inspect_parquet` reads their footer for lineage.

A path is always one file: Polars expands glob characters in a source path (``star*.csv`` would also read
``starx.csv``), so a source whose path holds any is read through a plain-named link in a temporary folder.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import fastexcel
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from polars.exceptions import NoDataError, PanicException, PolarsError

from aperio_assets.errors import AperioError
from aperio_assets.state.arrow import empty_table

__all__ = [
    "RAW_FORMATS",
    "ConversionError",
    "Converted",
    "convert_file",
    "format_of",
    "inspect_parquet",
]

RAW_FORMATS: dict[str, str] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".xlsx": "xlsx",
    ".parquet": "parquet",
}

CSV_NULL_VALUES = ["NA", "N/A", "NULL", ""]
GLOB_CHARACTERS = frozenset("*?[]{}")
INFER_SCHEMA_LENGTH = 10_000
UTF8_BOM = b"\xef\xbb\xbf"
_MAX_MESSAGE = 300

# What the parsers raise for bytes they cannot read. PanicException derives from BaseException (pyo3), so it
# must be named explicitly; a Rust panic on hostile input is still "this file cannot be parsed".
_PARSE_ERRORS: tuple[type[BaseException], ...] = (
    PolarsError,
    PanicException,
    fastexcel.FastExcelError,
    pa.ArrowException,
    UnicodeDecodeError,
)


class ConversionError(AperioError):
    """The file cannot be parsed; ``str(error)`` is one line saying why."""

    def __init__(self, message: str) -> None:
        super().__init__(_one_line(message))


@dataclass(frozen=True)
class Converted:
    """What a conversion produced: rows and (name, Polars dtype string) columns in file order."""

    row_count: int
    columns: tuple[tuple[str, str], ...]


def format_of(filename: str) -> str | None:
    """Format name from the file name's suffix (case-insensitive), None if not a raw format aperio reads."""
    return RAW_FORMATS.get(pathlib.PurePath(filename).suffix.lower())


def convert_file(source: pathlib.Path, fmt: str, target: pathlib.Path, *, sheet: str | int | None = None) -> Converted:
    """Read ``source`` as ``fmt`` and write ``target`` as Parquet (zstd).

    Raises :class:`ConversionError` for a file that cannot be parsed, ``ValueError`` for a format that is not
    converted here (unknown, or "parquet", which callers pass through), and ``FileNotFoundError`` if
    ``source`` is missing (a caller bug, not a bad file). ``target`` is only ever replaced by a complete file.
    """
    source = pathlib.Path(source)
    target = pathlib.Path(target)
    if fmt == "parquet":
        raise ValueError("Parquet files are passed through, not converted: use inspect_parquet()")
    writer = _WRITERS.get(fmt)
    if writer is None:
        raise ValueError(f"unknown raw format {fmt!r}; expected one of {sorted(set(RAW_FORMATS.values()))}")
    if not source.is_file():
        raise FileNotFoundError(f"raw file not found: {source}")

    # Polars' sinks leave a partial file behind when a later row fails, so write beside the target under a
    # hidden unique name and rename into place only once the whole file is written.
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with _plain_path(source) as readable:
            try:
                writer(readable, tmp, sheet)
            except _PARSE_ERRORS as exc:
                raise ConversionError(f"cannot read {fmt} file {source.name!r}: {_reason(exc)}") from None
            except ConversionError as exc:
                if readable is source:
                    raise
                # the reader named the link: name the file
                raise ConversionError(str(exc).replace(repr(readable.name), repr(source.name))) from None
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    # Row count and columns from the footer of what was written: no second read of the data.
    return _inspect(target)


def inspect_parquet(path: pathlib.Path) -> Converted:
    """Row count and columns of an existing Parquet file, from its footer only (for Parquet pass-through).

    Raises :class:`ConversionError` if the file is not readable Parquet, ``FileNotFoundError`` if missing.
    """
    path = pathlib.Path(path)
    try:
        return _inspect(path)
    except pa.ArrowException as exc:
        raise ConversionError(f"cannot read parquet file {path.name!r}: {_reason(exc)}") from None


FOOTER_GUESS_BYTES = 64 * 1024  # one ranged read of a file's end holds most footers whole


def inspect_parquet_remote(read_range: Callable[[int, int], bytes], size: int, name: str) -> Converted:
    """Row count and columns of a Parquet file that is not on local disk, from its footer alone:
    one ranged read of its last 64 KiB, and a second of exactly the footer if it is larger. The
    file itself is never fetched. Raises :class:`ConversionError` if it is not readable Parquet."""
    if size < 12:
        raise ConversionError(f"cannot read parquet file {name!r}: {size} bytes is too small for Parquet")
    tail = read_range(size - min(size, FOOTER_GUESS_BYTES), min(size, FOOTER_GUESS_BYTES))
    if len(tail) < 8 or tail[-4:] != b"PAR1":
        raise ConversionError(f"cannot read parquet file {name!r}: it does not end with Parquet's magic bytes")
    needed = int.from_bytes(tail[-8:-4], "little") + 8
    if needed > size - 4:
        raise ConversionError(f"cannot read parquet file {name!r}: its footer length is larger than the file")
    if needed > len(tail):
        tail = read_range(size - needed, needed)
    try:
        # the magic a reader expects at the start, then the footer as the file's end: all it reads
        meta = pq.read_metadata(pa.BufferReader(b"PAR1" + tail[-needed:]))
        return Converted(row_count=meta.num_rows, columns=_polars_columns(meta.schema.to_arrow_schema()))
    except pa.ArrowException as exc:
        raise ConversionError(f"cannot read parquet file {name!r}: {_reason(exc)}") from None


# --- readers -------------------------------------------------------------------------------------------


def _write_csv(source: pathlib.Path, tmp: pathlib.Path, fmt: str, separator: str) -> None:
    def sink(**schema_options: object) -> None:
        pl.scan_csv(
            source,
            glob=False,
            separator=separator,
            has_header=True,
            null_values=CSV_NULL_VALUES,
            empty_string_is_null=True,
            with_column_names=_unescape_header,
            **schema_options,
        ).sink_parquet(tmp, compression="zstd")

    try:
        # Stream: the schema comes from the first rows and the file is never held in memory as a whole.
        sink(infer_schema_length=INFER_SCHEMA_LENGTH)
    except NoDataError:
        raise ConversionError(f"cannot read {fmt} file {source.name!r}: empty file, no header row") from None
    except (PolarsError, PanicException):
        # A later row did not fit the types inferred from the first 10,000 (e.g. "n/a" in an int column).
        # Rather than fail the file or buffer it all to infer over every row, retry once with every column
        # as a string: all the data lands, and views or downstream models can cast. A file that fails this
        # way too (bad UTF-8, ragged rows) is really unparseable and the error propagates.
        sink(infer_schema=False)


def _unescape_header(names: list[str]) -> list[str]:
    # Polars 2.1 strips the quotes around a quoted header field but keeps doubled quotes inside it
    # ('"a""b"' becomes 'a""b', while data fields become 'a"b'); undo that so the name is the one written.
    return [name.replace('""', '"') for name in names]


def _write_jsonl(source: pathlib.Path, tmp: pathlib.Path, _sheet: object) -> None:
    if _first_byte(source) is None:  # Polars' own message for this is about "empty string" inference
        raise ConversionError(f"cannot read jsonl file {source.name!r}: empty file")
    with source.open("rb") as fh:
        has_bom = fh.read(3) == UTF8_BOM
    # Polars' NDJSON reader (unlike its CSV and JSON readers) rejects a UTF-8 byte-order mark, which Windows
    # tools write; stream a copy without it beside the temp target rather than fail the file.
    unbommed = tmp.with_name(tmp.name + ".nobom")
    try:
        if has_bom:
            with source.open("rb") as src, unbommed.open("wb") as dst:
                src.seek(3)
                shutil.copyfileobj(src, dst, 1024 * 1024)
        with _plain_path(unbommed if has_bom else source) as readable:  # (the copy is beside the target)
            try:
                pl.scan_ndjson(readable, infer_schema_length=INFER_SCHEMA_LENGTH).sink_parquet(tmp, compression="zstd")
            except (PolarsError, PanicException):
                # A later line whose value does not fit the inferred type: retry once inferring over the whole
                # file (still streamed, just a second pass). Malformed JSON fails again and propagates.
                pl.scan_ndjson(readable, infer_schema_length=None).sink_parquet(tmp, compression="zstd")
    finally:
        unbommed.unlink(missing_ok=True)


def _write_json(source: pathlib.Path, tmp: pathlib.Path, _sheet: object) -> None:
    # pl.read_json accepts a top-level object as a one-row frame; aperio wants an array of records, so look at
    # the first significant byte before parsing.
    first = _first_byte(source)
    if first is None:
        raise ConversionError(f"cannot read json file {source.name!r}: empty file")
    if first != b"[":
        found = _JSON_KINDS.get(first, "something else")
        raise ConversionError(f"cannot read json file {source.name!r}: expected a JSON array of objects, found {found}")
    # A JSON array cannot be streamed (Polars has no incremental reader for it), so it is read whole; infer over
    # every row since it is in memory anyway. Large exports should use JSON Lines, which is streamed.
    try:
        df = pl.read_json(source, infer_schema_length=None)
    except PolarsError as exc:
        if "only deserialize json objects" in str(exc):  # an array of scalars or arrays
            raise ConversionError(
                f"cannot read json file {source.name!r}: expected a JSON array of objects, found other values"
            ) from None
        raise
    if df.width == 0:
        raise ConversionError(f"cannot read json file {source.name!r}: the array holds no fields, nothing to convert")
    df.write_parquet(tmp, compression="zstd")


def _write_xlsx(source: pathlib.Path, tmp: pathlib.Path, sheet: str | int | None) -> None:
    if sheet is None:
        selector: dict[str, object] = {"sheet_id": 1}
    elif isinstance(sheet, bool) or not isinstance(sheet, (str, int)):
        raise ValueError(f"sheet must be a sheet name or a 1-based index, not {sheet!r}")
    elif isinstance(sheet, int):
        # Polars reads sheet_id=0 as "every sheet"; aperio's index is 1-based and always one sheet.
        if sheet < 1:
            raise ConversionError(f"cannot read xlsx file {source.name!r}: sheet index {sheet} (sheets count from 1)")
        selector = {"sheet_id": sheet}
    else:
        selector = {"sheet_name": sheet}
    try:
        df = pl.read_excel(source, engine="calamine", has_header=True, raise_if_empty=True, **selector)
    except NoDataError:
        raise ConversionError(f"cannot read xlsx file {source.name!r}: the sheet is empty") from None
    except ValueError as exc:
        # Polars raises a plain ValueError for a sheet name or index that the workbook does not have.
        if "no matching sheet" in str(exc):
            raise ConversionError(f"cannot read xlsx file {source.name!r}: {_reason(exc)}") from None
        raise
    assert isinstance(df, pl.DataFrame)  # one sheet selected, so never the dict form
    df.write_parquet(tmp, compression="zstd")


_WRITERS: dict[str, Callable[[pathlib.Path, pathlib.Path, str | int | None], None]] = {
    "csv": lambda source, tmp, _sheet: _write_csv(source, tmp, "csv", ","),
    "tsv": lambda source, tmp, _sheet: _write_csv(source, tmp, "tsv", "\t"),
    "jsonl": _write_jsonl,
    "json": _write_json,
    "xlsx": _write_xlsx,
}


# --- helpers -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _plain_path(source: pathlib.Path) -> Iterator[pathlib.Path]:
    """``source``, or a link to it whose path holds no glob character (readers would expand one)."""
    absolute = source.absolute()
    if not GLOB_CHARACTERS & set(str(absolute)):
        yield source
        return
    with tempfile.TemporaryDirectory(prefix="aperio-source-") as folder:
        link = pathlib.Path(folder) / ("source" + "".join(source.suffixes[-1:]))
        if GLOB_CHARACTERS & set(str(link)):  # the temporary folder itself: Polars cannot be told
            raise ConversionError(f"cannot read {source.name!r}: the temporary folder {folder!r} holds glob characters")
        os.symlink(absolute, link)
        yield link


_JSON_KINDS = {b"{": "an object", b'"': "a string", b"t": "a boolean", b"f": "a boolean", b"n": "null"}
_JSON_KINDS.update(dict.fromkeys([b"-", *(str(d).encode() for d in range(10))], "a number"))


def _first_byte(path: pathlib.Path) -> bytes | None:
    """The first byte that is not whitespace or a UTF-8 BOM, or None for a blank file. Reads only that far."""
    with path.open("rb") as fh:
        chunk = fh.read(64 * 1024)
        if chunk.startswith(UTF8_BOM):
            chunk = chunk[3:]
        while chunk:
            stripped = chunk.lstrip(b" \t\r\n")
            if stripped:
                return stripped[:1]
            chunk = fh.read(64 * 1024)
    return None


def _inspect(path: pathlib.Path) -> Converted:
    meta = pq.read_metadata(path)
    return Converted(row_count=meta.num_rows, columns=_polars_columns(meta.schema.to_arrow_schema()))


def _polars_columns(schema: pa.Schema) -> tuple[tuple[str, str], ...]:
    """(name, str(Polars dtype)) per field, by converting an empty table: Polars' own Arrow mapping, no data."""
    try:
        frame = pl.from_arrow(empty_table(schema))
        assert isinstance(frame, pl.DataFrame)
        return tuple((name, str(dtype)) for name, dtype in frame.schema.items())
    except (PolarsError, PanicException, pa.ArrowException, TypeError, ValueError):
        pass
    # Duplicate names or a type Polars cannot represent (written by another tool): map field by field and
    # fall back to the Arrow type's name, so pass-through lineage never fails on an exotic column.
    columns = []
    for field in schema:
        try:
            single = pl.from_arrow(empty_table(pa.schema([field])))
            assert isinstance(single, pl.DataFrame)
            dtype = str(single.dtypes[0])
        except (PolarsError, PanicException, pa.ArrowException, TypeError, ValueError):
            dtype = str(field.type)
        columns.append((field.name, dtype))
    return tuple(columns)


def _reason(exc: BaseException) -> str:
    """The first meaningful line of a library error (Polars appends multi-line hints and context)."""
    for line in str(exc).splitlines():
        line = line.strip()
        if line:
            return line
    return type(exc).__name__


def _one_line(message: str) -> str:
    text = " ".join(message.split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"
