"""SQLite databases a record refers to (a text-to-SQL record's `db_id`), opened read-only: Spider's
schemas for stage 1's prompts, and the databases stage 4's sql-execution runs queries on."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import quote


def connect_read_only(path: Path) -> sqlite3.Connection:
    """A connection that cannot change the file (SQLite URI `mode=ro`)."""
    return sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True)


def schema(path: Path) -> str:
    """The CREATE TABLE statements of a database, one line each, joined by "; " (as
    sql-create-context's `context` holds them)."""
    connection = connect_read_only(path)
    try:
        rows = connection.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND sql IS NOT NULL "
                                  "AND name NOT LIKE 'sqlite_%'").fetchall()
    finally:
        connection.close()
    return "; ".join(" ".join(sql.split()) for (sql,) in rows)
