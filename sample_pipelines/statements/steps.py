"""Steps of the statements sample: choreograph's README example on an SQLite database.

Each record is one bank statement line, e.g.
``{"statement_id": "ST-0001", "line_no": 1, "amount": 12.5}``.

Step "create statement": the precheck skips the job when the statement is already in
the database, and hands the job's successor the statement's row id as precheck data;
otherwise the job inserts the statement and returns its new row id.
Step "create statement line": the precheck skips lines already loaded; the job takes the
statement's row id from the data bag (the first step's job data, or its precheck data
when that step was skipped) and inserts the line.

A record's writes are committed by its last job, or rolled back when that job fails, so
a record is loaded whole or not at all, and a crash loses nothing already reported.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

from choreo_cli import Cancel, Skip

SCHEMA = """
CREATE TABLE IF NOT EXISTS statements (
    id INTEGER PRIMARY KEY,
    statement_id TEXT UNIQUE,
    currency TEXT
);
CREATE TABLE IF NOT EXISTS statement_lines (
    id INTEGER PRIMARY KEY,
    statement_ref INTEGER,
    line_no INTEGER,
    amount REAL,
    UNIQUE (statement_ref, line_no)
);
"""


def connect(path: str) -> Iterator[sqlite3.Connection]:
    """Resource factory: open the database, create the tables, yield; commit and close."""
    # choreo may tear a resource down on another thread than the one that built it.
    conn = sqlite3.connect(path, check_same_thread=False)
    try:
        # WAL with synchronous=NORMAL: a commit survives a crash of the process (not
        # necessarily a power cut) without an fsync per record.
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(SCHEMA)
        yield conn
        conn.commit()
    finally:
        conn.close()


def _check(ctx: Any, record: dict, sql: str, *fields: str) -> Any:
    """Run a precheck's query; return the first row or None.

    Any other exception a precheck raises would only skip its job (choreograph parity),
    and the record would pass as succeeded with nothing loaded. A record that cannot be
    checked is cancelled instead, like the reference's ErrExecutionCanceled.
    """
    missing = [field for field in fields if field not in record]
    if missing:
        raise Cancel(f"record has no {', '.join(missing)}")
    try:
        return ctx.resources.db.execute(sql, [record[field] for field in fields]).fetchone()
    except sqlite3.Error as exc:
        raise Cancel(f"cannot query the database: {exc}") from exc


def statement_exists(ctx: Any, record: dict) -> None:
    """Precheck of "create statement": skip the job when the statement is already loaded."""
    row = _check(ctx, record, "SELECT id FROM statements WHERE statement_id = ?", "statement_id")
    if row is not None:
        # Like the reference example: the error skips the job, the data is the row id.
        raise Skip("statement exists", data=row[0])


def create_statement(ctx: Any, record: dict) -> int:
    """Job of "create statement": insert the statement, return its row id."""
    cursor = ctx.resources.db.execute(
        "INSERT INTO statements (statement_id, currency) VALUES (?, ?)",
        (record["statement_id"], ctx.values["currency"]),
    )
    return int(cursor.lastrowid)


def line_exists(ctx: Any, record: dict) -> None:
    """Precheck of "create statement line": skip lines already loaded."""
    row = _check(
        ctx,
        record,
        "SELECT 1 FROM statement_lines AS l JOIN statements AS s ON s.id = l.statement_ref"
        " WHERE s.statement_id = ? AND l.line_no = ?",
        "statement_id",
        "line_no",
    )
    if row is not None:
        raise Skip("statement line exists")


def create_line(ctx: Any, record: dict) -> int:
    """Job of "create statement line": insert the line under its statement, commit."""
    db = ctx.resources.db
    amount = record.get("amount")
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        db.rollback()  # undo this record's statement insert, if it made one
        raise ValueError(f"amount must be a number, got {amount!r}")

    # The statement's row id: the first step's job returned it when it created the
    # statement; when that step was skipped, its precheck left the existing row id.
    statement_ref = ctx.bag.job("create statement")
    if statement_ref is None:
        statement_ref = ctx.bag.precheck("create statement")
    if statement_ref is None:
        raise LookupError(f"no row id for statement {record['statement_id']!r} in the data bag")

    cursor = db.execute(
        "INSERT INTO statement_lines (statement_ref, line_no, amount) VALUES (?, ?, ?)",
        (statement_ref, record["line_no"], float(amount)),
    )
    db.commit()
    return int(cursor.lastrowid)
