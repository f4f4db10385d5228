"""Raw file → Parquet conversion (aperio_assets.conversion.formats): contents, types, nulls and failures."""

from __future__ import annotations

import datetime as dt
import json
import os
import pathlib

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xlsxwriter

from aperio_assets.conversion.formats import (
    ConversionError,
    Converted,
    convert_file,
    format_of,
    inspect_parquet,
)
from aperio_assets.errors import AperioError


@pytest.fixture
def raw(tmp_path: pathlib.Path) -> pathlib.Path:
    d = tmp_path / "raw"
    d.mkdir()
    return d


@pytest.fixture
def out(tmp_path: pathlib.Path) -> pathlib.Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


def _write(path: pathlib.Path, text: str) -> pathlib.Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def _columns(df: pl.DataFrame) -> tuple[tuple[str, str], ...]:
    return tuple((name, str(dtype)) for name, dtype in df.schema.items())


def _check_result(result: Converted, target: pathlib.Path) -> pl.DataFrame:
    """The returned summary matches the file actually written; return the written data."""
    df = pl.read_parquet(target)
    assert result.row_count == df.height
    assert result.columns == _columns(df)
    meta = pq.read_metadata(target)
    for i in range(meta.num_row_groups):
        assert meta.row_group(i).column(0).compression == "ZSTD"
    return df


# --- format_of -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("planes.csv", "csv"),
        ("PLANES.CSV", "csv"),
        ("a.b.tsv", "tsv"),
        ("x.json", "json"),
        ("x.JSONL", "jsonl"),
        ("x.ndjson", "jsonl"),
        ("book.Xlsx", "xlsx"),
        ("t.parquet", "parquet"),
        ("dir/sub/x.csv", "csv"),
        ("notes.txt", None),
        ("old.xls", None),
        ("csv", None),
        (".csv", None),  # a dot-file named ".csv" has no suffix
        ("archive.csv.gz", None),
    ],
)
def test_format_of(name: str, expected: str | None) -> None:
    assert format_of(name) == expected


# --- successful conversions ----------------------------------------------------------------------------


def test_csv_nulls_and_quoted_comma(raw: pathlib.Path, out: pathlib.Path) -> None:
    source = _write(
        raw / "people.csv",
        'id,name,score,note\n1,alice,1.5,"x, y"\n2,NA,,plain\n3,,N/A,NULL\n4,"",2,"say ""hi"""\n',
    )
    target = out / "people.parquet"
    result = convert_file(source, "csv", target)
    df = _check_result(result, target)
    assert result == Converted(
        row_count=4, columns=(("id", "Int64"), ("name", "String"), ("score", "Float64"), ("note", "String"))
    )
    assert df.to_dict(as_series=False) == {
        "id": [1, 2, 3, 4],
        "name": ["alice", None, None, None],
        "score": [1.5, None, None, 2.0],
        "note": ["x, y", "plain", None, 'say "hi"'],
    }
    assert list(out.iterdir()) == [target]


def test_csv_header_only_gives_zero_rows(raw: pathlib.Path, out: pathlib.Path) -> None:
    source = _write(raw / "h.csv", "a,b\n")
    result = convert_file(source, "csv", out / "h.parquet")
    df = _check_result(result, out / "h.parquet")
    assert result.row_count == 0
    assert df.columns == ["a", "b"]


def test_tsv(raw: pathlib.Path, out: pathlib.Path) -> None:
    source = _write(raw / "t.tsv", "code\tlabel\tqty\nA1\thello, world\t3\nB2\tNA\t\nC3\tsemi;colon\t7\n")
    target = out / "t.parquet"
    result = convert_file(source, "tsv", target)
    df = _check_result(result, target)
    assert result.columns == (("code", "String"), ("label", "String"), ("qty", "Int64"))
    assert df.rows() == [("A1", "hello, world", 3), ("B2", None, None), ("C3", "semi;colon", 7)]


def test_json_array(raw: pathlib.Path, out: pathlib.Path) -> None:
    records = [
        {"id": 1, "name": "a", "flag": True, "tags": ["x", "y"], "pos": {"x": 1.5}},
        {"id": 2, "name": None, "flag": False, "tags": [], "pos": {"x": None}},
        {"id": 3, "flag": None, "tags": None, "pos": None},  # "name" missing entirely
    ]
    source = _write(raw / "r.json", json.dumps(records, indent=2))
    target = out / "r.parquet"
    result = convert_file(source, "json", target)
    df = _check_result(result, target)
    assert result.row_count == 3
    assert dict(result.columns) == {
        "id": "Int64",
        "name": "String",
        "flag": "Boolean",
        "tags": "List(String)",
        "pos": "Struct({'x': Float64})",
    }
    assert df["id"].to_list() == [1, 2, 3]
    assert df["name"].to_list() == ["a", None, None]
    assert df["flag"].to_list() == [True, False, None]
    assert df["tags"].to_list() == [["x", "y"], [], None]
    assert df["pos"].to_list()[0] == {"x": 1.5}


def test_json_types_inferred_over_all_rows(raw: pathlib.Path, out: pathlib.Path) -> None:
    # Polars' default inference looks at 100 rows and then fails on a later string; the whole array is read.
    records = [{"v": i} for i in range(500)] + [{"v": "late string"}]
    source = _write(raw / "late.json", json.dumps(records))
    result = convert_file(source, "json", out / "late.parquet")
    df = _check_result(result, out / "late.parquet")
    assert result.row_count == 501
    assert result.columns == (("v", "String"),)
    assert df["v"][-1] == "late string"


def test_jsonl(raw: pathlib.Path, out: pathlib.Path) -> None:
    source = _write(
        raw / "e.jsonl",
        '{"id": 1, "kind": "click", "value": 0.5}\n'
        '{"id": 2, "kind": null}\n'
        "\n"  # blank lines are skipped
        '{"id": 3, "kind": "view", "value": 2, "extra": "x"}\n',
    )
    target = out / "e.parquet"
    result = convert_file(source, "jsonl", target)
    df = _check_result(result, target)
    assert result.row_count == 3
    assert dict(result.columns)["id"] == "Int64"
    assert df["id"].to_list() == [1, 2, 3]
    assert df["kind"].to_list() == ["click", None, "view"]
    assert df["value"].to_list() == [0.5, None, 2.0]
    assert df["extra"].to_list() == [None, None, "x"]


def test_ndjson_suffix_is_jsonl(raw: pathlib.Path, out: pathlib.Path) -> None:
    source = _write(raw / "e.ndjson", '{"a": 1}\n{"a": 2}\n')
    fmt = format_of(source.name)
    assert fmt == "jsonl"
    result = convert_file(source, fmt, out / "e.parquet")
    assert _check_result(result, out / "e.parquet")["a"].to_list() == [1, 2]


@pytest.fixture
def workbook(raw: pathlib.Path) -> pathlib.Path:
    path = raw / "book.xlsx"
    with xlsxwriter.Workbook(path) as wb:
        pl.DataFrame(
            {"id": [1, 2, 3], "name": ["a", None, "c"], "score": [1.5, 2.25, None], "day": [dt.date(2024, 1, 2)] * 3}
        ).write_excel(wb, worksheet="first")
        pl.DataFrame({"k": ["x", "y"], "v": [10, 20]}).write_excel(wb, worksheet="Second Sheet")
        wb.add_worksheet("blank")
    return path


def test_xlsx_first_sheet_by_default(workbook: pathlib.Path, out: pathlib.Path) -> None:
    target = out / "book.parquet"
    result = convert_file(workbook, "xlsx", target)
    df = _check_result(result, target)
    assert result.row_count == 3
    assert result.columns == (("id", "Int64"), ("name", "String"), ("score", "Float64"), ("day", "Date"))
    assert df.rows() == [
        (1, "a", 1.5, dt.date(2024, 1, 2)),
        (2, None, 2.25, dt.date(2024, 1, 2)),
        (3, "c", None, dt.date(2024, 1, 2)),
    ]


@pytest.mark.parametrize("sheet", ["Second Sheet", 2])
def test_xlsx_sheet_by_name_or_index(workbook: pathlib.Path, out: pathlib.Path, sheet: str | int) -> None:
    target = out / "second.parquet"
    result = convert_file(workbook, "xlsx", target, sheet=sheet)
    df = _check_result(result, target)
    assert result == Converted(row_count=2, columns=(("k", "String"), ("v", "Int64")))
    assert df.rows() == [("x", 10), ("y", 20)]


def test_xlsx_sheet_one_is_first(workbook: pathlib.Path, out: pathlib.Path) -> None:
    result = convert_file(workbook, "xlsx", out / "one.parquet", sheet=1)
    assert result.row_count == 3
    assert result.columns[0] == ("id", "Int64")


def test_hostile_column_names_survive(raw: pathlib.Path, out: pathlib.Path) -> None:
    names = ['we"ird', "semi;colon", "with space", "ünï©ødé 名前", "a,b", "DROP TABLE x; --", "tab\there"]
    header = ",".join('"' + n.replace('"', '""') + '"' for n in names)
    source = _write(raw / "hostile.csv", header + "\n" + ",".join(str(i) for i in range(len(names))) + "\n")
    target = out / "hostile.parquet"
    result = convert_file(source, "csv", target)
    df = _check_result(result, target)
    assert df.columns == names
    assert [name for name, _ in result.columns] == names
    assert df.row(0) == tuple(range(len(names)))

    json_source = _write(raw / "hostile.json", json.dumps([dict.fromkeys(names, "v")]))
    result = convert_file(json_source, "json", out / "hostile_json.parquet")
    assert pl.read_parquet(out / "hostile_json.parquet").columns == names
    assert [name for name, _ in result.columns] == names


def test_existing_target_is_replaced(raw: pathlib.Path, out: pathlib.Path) -> None:
    target = out / "t.parquet"
    pl.DataFrame({"old": [1, 2, 3]}).write_parquet(target)
    result = convert_file(_write(raw / "n.csv", "new\nx\n"), "csv", target)
    assert result == Converted(row_count=1, columns=(("new", "String"),))
    assert pl.read_parquet(target).to_dict(as_series=False) == {"new": ["x"]}
    assert sorted(p.name for p in out.iterdir()) == ["t.parquet"]


def test_large_csv_streams(raw: pathlib.Path, out: pathlib.Path) -> None:
    n = 200_000
    source = raw / "big.csv"
    source.write_text("id,grp,val\n" + "".join(f"{i},g{i % 7},{i * 0.5}\n" for i in range(n)))
    target = out / "big.parquet"
    result = convert_file(source, "csv", target)
    assert result == Converted(row_count=n, columns=(("id", "Int64"), ("grp", "String"), ("val", "Float64")))
    assert pq.read_metadata(target).num_rows == n
    tail = pl.read_parquet(target).tail(1)
    assert tail.row(0) == (n - 1, f"g{(n - 1) % 7}", (n - 1) * 0.5)


def test_csv_late_type_change_falls_back_to_strings(raw: pathlib.Path, out: pathlib.Path) -> None:
    # The first 10,000 rows say "id" is an integer; row 20,000 says otherwise.
    rows = [f"{i},{i % 3}" for i in range(1, 20_000)] + ["not-a-number,1", "20001,2"]
    source = _write(raw / "late.csv", "id,k\n" + "\n".join(rows) + "\n")
    target = out / "late.parquet"
    result = convert_file(source, "csv", target)
    df = _check_result(result, target)
    assert result.row_count == 20_001
    assert result.columns == (("id", "String"), ("k", "String"))
    assert df["id"][0] == "1"
    assert df["id"][19_999] == "not-a-number"
    assert df["id"][-1] == "20001"
    assert sorted(p.name for p in out.iterdir()) == ["late.parquet"]


def test_jsonl_late_type_change_is_inferred_over_whole_file(raw: pathlib.Path, out: pathlib.Path) -> None:
    lines = [json.dumps({"v": i}) for i in range(10_500)] + [json.dumps({"v": "x"})]
    source = _write(raw / "late.jsonl", "\n".join(lines) + "\n")
    result = convert_file(source, "jsonl", out / "late.parquet")
    df = _check_result(result, out / "late.parquet")
    assert result.row_count == 10_501
    assert result.columns == (("v", "String"),)
    assert df["v"][-1] == "x"


@pytest.mark.parametrize(
    ("name", "fmt", "body"),
    [
        ("bom.csv", "csv", "a,b\n1,x\n"),
        ("bom.json", "json", '[{"a": 1, "b": "x"}]'),
        ("bom.jsonl", "jsonl", '{"a": 1, "b": "x"}\n'),
    ],
)
def test_utf8_bom_is_ignored(raw: pathlib.Path, out: pathlib.Path, name: str, fmt: str, body: str) -> None:
    source = raw / name
    source.write_bytes(b"\xef\xbb\xbf" + body.encode())
    target = out / "t.parquet"
    result = convert_file(source, fmt, target)
    df = _check_result(result, target)
    assert df.to_dict(as_series=False) == {"a": [1], "b": ["x"]}  # "a", not "\ufeffa"
    assert sorted(p.name for p in out.iterdir()) == ["t.parquet"]


def test_json_array_after_much_whitespace(raw: pathlib.Path, out: pathlib.Path) -> None:
    source = _write(raw / "ws.json", " " * 100_000 + '\n[{"a": 1}]')
    assert convert_file(source, "json", out / "t.parquet") == Converted(row_count=1, columns=(("a", "Int64"),))


# --- failures ------------------------------------------------------------------------------------------


BROKEN: list[tuple[str, str, bytes]] = [
    ("random.xlsx", "xlsx", os.urandom(4096)),
    ("zipish.xlsx", "xlsx", b"PK\x03\x04" + os.urandom(2048)),
    ("empty.xlsx", "xlsx", b""),
    ("empty.csv", "csv", b""),
    ("blank_lines.csv", "csv", b"\n\n"),
    ("empty.tsv", "tsv", b""),
    ("empty.json", "json", b""),
    ("empty.jsonl", "jsonl", b""),
    ("object.json", "json", b'{"a": 1}'),
    ("scalar.json", "json", b"42"),
    ("scalars.json", "json", b"[1, 2, 3]"),
    ("empty_array.json", "json", b"[]"),
    ("truncated.json", "json", b'[{"a": 1}, {"a": '),
    ("malformed.jsonl", "jsonl", b'{"a": 1}\n{"a": \n{"a": 3}\n'),
    ("arrays.jsonl", "jsonl", b"[1, 2]\n[3, 4]\n"),
    ("latin1.csv", "csv", "name\ncafé\n".encode("latin-1")),
    ("ragged.csv", "csv", b"a,b\n1,2\n3,4,5,6\n"),
]


@pytest.mark.parametrize(("name", "fmt", "content"), BROKEN, ids=[b[0] for b in BROKEN])
def test_unparseable_file_raises_conversion_error(
    raw: pathlib.Path, out: pathlib.Path, name: str, fmt: str, content: bytes
) -> None:
    source = raw / name
    source.write_bytes(content)
    target = out / "t.parquet"
    with pytest.raises(ConversionError) as info:
        convert_file(source, fmt, target)
    message = str(info.value)
    assert isinstance(info.value, AperioError)
    assert message
    assert "\n" not in message
    assert len(message) <= 300
    assert "Traceback" not in message
    assert name in message  # the message says which file
    assert list(out.iterdir()) == []  # no target, no temp file


def test_json_object_message(raw: pathlib.Path, out: pathlib.Path) -> None:
    source = _write(raw / "o.json", '  {"a": 1}')
    with pytest.raises(ConversionError, match="expected a JSON array of objects"):
        convert_file(source, "json", out / "o.parquet")


def test_empty_file_message(raw: pathlib.Path, out: pathlib.Path) -> None:
    with pytest.raises(ConversionError, match="empty"):
        convert_file(_write(raw / "e.csv", ""), "csv", out / "e.parquet")


def test_failure_keeps_existing_target(raw: pathlib.Path, out: pathlib.Path) -> None:
    target = out / "t.parquet"
    pl.DataFrame({"old": [1]}).write_parquet(target)
    before = target.read_bytes()
    with pytest.raises(ConversionError):
        convert_file(_write(raw / "bad.jsonl", "{nope\n"), "jsonl", target)
    assert target.read_bytes() == before
    assert list(out.iterdir()) == [target]


@pytest.mark.parametrize("sheet", ["missing", 9, 0])
def test_xlsx_bad_sheet(workbook: pathlib.Path, out: pathlib.Path, sheet: str | int) -> None:
    with pytest.raises(ConversionError) as info:
        convert_file(workbook, "xlsx", out / "t.parquet", sheet=sheet)
    assert "\n" not in str(info.value)
    assert list(out.iterdir()) == []


def test_xlsx_empty_sheet(workbook: pathlib.Path, out: pathlib.Path) -> None:
    with pytest.raises(ConversionError, match="empty"):
        convert_file(workbook, "xlsx", out / "t.parquet", sheet="blank")
    assert list(out.iterdir()) == []


def test_long_error_is_capped(raw: pathlib.Path, out: pathlib.Path) -> None:
    source = raw / ("x" * 250 + ".json")  # the message names the file, so it would run past the cap
    source.write_text('{"a": 1}')
    with pytest.raises(ConversionError) as info:
        convert_file(source, "json", out / "t.parquet")
    assert len(str(info.value)) == 300
    assert str(info.value).endswith("…")


def test_parquet_and_unknown_formats_are_not_converted(raw: pathlib.Path, out: pathlib.Path) -> None:
    source = raw / "p.parquet"
    pl.DataFrame({"a": [1]}).write_parquet(source)
    with pytest.raises(ValueError, match="passed through"):
        convert_file(source, "parquet", out / "t.parquet")
    with pytest.raises(ValueError, match="unknown raw format"):
        convert_file(source, "xls", out / "t.parquet")
    assert list(out.iterdir()) == []


def test_missing_source_is_not_a_conversion_error(raw: pathlib.Path, out: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError):
        convert_file(raw / "nope.csv", "csv", out / "t.parquet")


# --- inspect_parquet -----------------------------------------------------------------------------------


def test_inspect_parquet(raw: pathlib.Path) -> None:
    path = raw / "p.parquet"
    df = pl.DataFrame(
        {
            "id": pl.Series([1, 2, None], dtype=pl.Int32),
            "name": ["a", "b", None],
            "when": [dt.datetime(2024, 1, 1), None, dt.datetime(2024, 1, 3)],
            'odd name; "q"': [1.0, 2.0, 3.0],
        }
    )
    df.write_parquet(path, row_group_size=1)  # several row groups: num_rows is the total
    result = inspect_parquet(path)
    assert result == Converted(
        row_count=3,
        columns=(
            ("id", "Int32"),
            ("name", "String"),
            ("when", "Datetime(time_unit='us', time_zone=None)"),
            ('odd name; "q"', "Float64"),
        ),
    )


def test_inspect_parquet_written_by_pyarrow(raw: pathlib.Path) -> None:
    path = raw / "pa.parquet"
    table = pa.table(
        {
            "ts": pa.array([1, 2], pa.timestamp("ns", tz="UTC")),
            "cat": pa.array(["x", "y"]).dictionary_encode(),
            "big": pa.array(["a", "b"], pa.large_string()),
        }
    )
    pq.write_table(table, path)
    result = inspect_parquet(path)
    assert result.row_count == 2
    assert result.columns == _columns(pl.read_parquet(path))


def test_inspect_parquet_rejects_junk(raw: pathlib.Path) -> None:
    path = raw / "junk.parquet"
    path.write_bytes(os.urandom(256))
    with pytest.raises(ConversionError) as info:
        inspect_parquet(path)
    assert "\n" not in str(info.value)
    assert "junk.parquet" in str(info.value)
