"""A job's output file, by its extension: Parquet, CSV or JSON Lines.

Rows arrive part by part (from the job log) and are written as they come, so memory
stays flat however many there are: one Parquet row group per part, or appended lines.
The file is written under a temporary name and renamed when complete: a reader never
sees half an output, and one that exists is finished.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

FORMATS = (".parquet", ".csv", ".jsonl")

Row = dict[str, Any]


def check_format(path: Path) -> None:
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"--out {path}: the extension says the format, one of {', '.join(FORMATS)}")


def write_rows(path: Path, parts: Iterable[list[Row]]) -> dict[str, int]:
    """Write every row; return the counts of rows and of rows with an error."""
    check_format(path)
    counts = {"rows": 0, "errors": 0}

    def counted() -> Iterator[list[Row]]:
        for rows in parts:
            counts["rows"] += len(rows)
            counts["errors"] += sum(1 for row in rows if row.get("error"))
            yield rows

    temporary = path.with_name(f".{path.name}.tmp")
    writer = {".parquet": _parquet, ".csv": _csv, ".jsonl": _jsonl}[path.suffix.lower()]
    writer(temporary, counted())
    os.replace(temporary, path)
    return counts


def write_lines(path: Path, parts: Iterable[bytes]) -> dict[str, int]:
    """JSON Lines already encoded (the job log's parts), copied as they are: for 64 latent
    numbers a row, decoding and encoding them again cost more than writing the PNG."""
    temporary, rows = path.with_name(f".{path.name}.tmp"), 0
    with temporary.open("wb") as file:
        for lines in parts:
            file.write(lines)
            rows += lines.count(b"\n")
    os.replace(temporary, path)
    return {"rows": rows, "errors": 0}


def _jsonl(path: Path, parts: Iterator[list[Row]]) -> None:
    with path.open("w") as file:
        for rows in parts:
            file.writelines(json.dumps(row) + "\n" for row in rows)


def _csv(path: Path, parts: Iterator[list[Row]]) -> None:
    """Nested values (the top-k list) as JSON text in their cell; no value, an empty cell."""
    with path.open("w", newline="") as file:
        writer = None
        for rows in parts:
            for row in rows:
                if writer is None:
                    writer = csv.DictWriter(file, fieldnames=list(row))
                    writer.writeheader()
                writer.writerow({key: json.dumps(value) if isinstance(value, (list, dict)) else value
                                 for key, value in row.items()})


def _parquet(path: Path, parts: Iterator[list[Row]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = classification_schema()
    with pq.ParquetWriter(path, schema) as writer:
        for rows in parts:
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))


def classification_schema():
    """The classify job's columns, typed: a part of unreadable files alone has only nulls,
    from which no schema could be guessed."""
    import pyarrow as pa

    scored = pa.struct([("label", pa.string()), ("score", pa.float32())])
    return pa.schema([("path", pa.string()), ("label", pa.string()), ("score", pa.float32()),
                      ("top_k", pa.list_(scored)), ("error", pa.string()), ("model", pa.string()),
                      ("version", pa.string())])
