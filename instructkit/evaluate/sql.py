"""Text-to-SQL measured by what the query does: the predicted and the gold query run on the record's
database and their results are compared (`sql-execution`), and their clauses compared after
parsing (`sql-exact-set-match`, sqlglot).

Model-written SQL is untrusted. Each database is opened read-only (SQLite URI `mode=ro`, `PRAGMA
query_only`), under an authorizer that allows reading and nothing else (no ATTACH, writes, DDL,
pragmas, transactions, virtual tables or extension loading), one statement per query, with limits:
5 seconds (a progress handler, and a timer that interrupts an operation the handler never sees),
values of at most 10 MB (SQLite's length limit), 100,000 rows and 50 MB of result (counted as the
rows arrive), and SQLite's heap and temporary storage held in memory under 256 MB (a limit for the
whole process, set once).
A query that breaks a rule scores 0 with the reason kept.

Results are compared as Spider's execution accuracy does: as multisets of rows (duplicates count,
NULL equals NULL), in order only when the gold query orders its result (a top-level ORDER BY), and
with the columns in any order (a permutation of the predicted columns may match).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from instructkit.data.databases import connect_read_only
from instructkit.errors import UserError

TIME_LIMIT = 5.0  # seconds per query
ROW_LIMIT = 100_000  # rows a query may return
BYTE_LIMIT = 50_000_000  # bytes of result a query may return
VALUE_LIMIT = 10_000_000  # bytes of one string or blob (SQLite's length limit)
HEAP_LIMIT = 256 * 2**20  # SQLite's memory, sorts and temporary tables included
_CHECK_EVERY = 1_000  # SQLite virtual machine steps between two looks at the clock
_WORK = 2_000_000  # rows rebuilt at most while looking for the order of the predicted columns
LIMITS = {"time_s": TIME_LIMIT, "rows": ROW_LIMIT, "bytes": BYTE_LIMIT, "value_bytes": VALUE_LIMIT}
# What a query may do: read. Everything else (writes, DDL, ATTACH, PRAGMA, transactions) is refused.
_ALLOWED = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
_REFUSED_FUNCTIONS = {"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"}
_FENCE = re.compile(r"^\s*```[a-zA-Z]*\s*\n(.*?)\n?\s*```\s*$", re.S)
# sqlglot logs a warning for each text it reads as an opaque command (a model's prose): the score says it
logging.getLogger("sqlglot").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Outcome:
    rows: list[tuple] | None
    error: str | None = None


class Database:
    """One SQLite database, opened read-only under the rules above."""

    _heap_limited = False  # SQLite's heap limit is the process's: set once, and it can only go down

    def __init__(self, path: Path):
        self.path = path
        self.connection = connect_read_only(path)
        # Set before the authorizer refuses every PRAGMA: SQLite's heap, sorts and temporary tables in
        # memory under HEAP_LIMIT, never temporary files
        if not Database._heap_limited:
            self.connection.execute(f"PRAGMA hard_heap_limit = {HEAP_LIMIT}")
            Database._heap_limited = True
        self.connection.execute("PRAGMA temp_store = MEMORY")
        self.connection.execute("PRAGMA query_only = ON")
        self.connection.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, VALUE_LIMIT)
        self.connection.set_authorizer(_authorize)

    def run(self, query: str, time_limit: float = TIME_LIMIT) -> Outcome:
        """The rows `query` returns, or why it gave none (never an exception)."""
        deadline = time.monotonic() + time_limit
        self.connection.set_progress_handler(lambda: int(time.monotonic() > deadline), _CHECK_EVERY)
        running, lock = [True], threading.Lock()

        def stop() -> None:  # never the next query: only while this one runs
            with lock:
                if running[0]:
                    self.connection.interrupt()

        timer = threading.Timer(time_limit, stop)
        timer.start()
        try:
            cursor = self.connection.execute(query)
            if cursor.description is None:
                return Outcome(None, "not a query: it returns no result")
            rows, size = [], 0
            for row in cursor:  # the limits row by row: a few rows of large values must not pile up first
                rows.append(tuple(row))
                size += sum(_size(value) for value in row)
                if len(rows) > ROW_LIMIT:
                    return Outcome(None, f"returned more than {ROW_LIMIT} rows")
                if size > BYTE_LIMIT:
                    return Outcome(None, f"returned more than {BYTE_LIMIT // 1_000_000} MB")
            return Outcome(rows)
        except (sqlite3.Error, ValueError, OverflowError, MemoryError) as exc:  # refused, malformed, too big
            if time.monotonic() > deadline:
                return Outcome(None, f"ran past the time limit of {time_limit:g} s")
            return Outcome(None, f"{type(exc).__name__}: {exc}")
        finally:
            with lock:
                running[0] = False
            timer.cancel()
            timer.join()
            self.connection.set_progress_handler(None, 0)

    def close(self) -> None:
        self.connection.close()


def _size(value) -> int:
    return len(value) if isinstance(value, str | bytes) else 8


def _authorize(action: int, arg1, arg2, database, trigger) -> int:
    if action not in _ALLOWED:
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION and str(arg2).lower() in _REFUSED_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def unfenced(text: str) -> str:
    """A query as a model writes it in Markdown (```sql ... ```), without the fence."""
    found = _FENCE.match(text)
    return found.group(1) if found else text


def database_path(folder: Path, db_id: str, built: Path) -> Path:
    """A record's database in `folder`: <db_id>.sqlite, .db, Spider's <db_id>/<db_id>.sqlite, or a
    <db_id>.sql script (built once into `built`, a SQLite file named by the script's digest)."""
    if "/" in db_id or "\\" in db_id or db_id.startswith("."):
        raise UserError(f"db_id {db_id!r} is not a database name")
    for candidate in database_files(folder, db_id):
        if candidate.suffix != ".sql":
            return candidate
    script = folder / f"{db_id}.sql"
    if not script.is_file():
        raise UserError(f"no database {db_id!r} in {folder} (looked for {db_id}.sqlite, {db_id}.db, "
                        f"{db_id}/{db_id}.sqlite and {db_id}.sql)")
    text = script.read_text(encoding="utf-8")
    target = built / f"{db_id}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.sqlite"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.partial")  # two stages building at once do not collide
        partial.unlink(missing_ok=True)  # left by a build that was killed
        try:
            connection = sqlite3.connect(partial)
            try:
                connection.executescript(text)
            finally:
                connection.close()
            partial.replace(target)
        except sqlite3.Error as exc:
            raise UserError(f"{script}: building the database failed: {exc}") from exc
        finally:
            partial.unlink(missing_ok=True)
    return target


def database_files(folder: Path, db_id: str) -> list[Path]:
    """The files that can hold database `db_id` in `folder`, those that exist, in the order looked for."""
    candidates = (folder / f"{db_id}.sqlite", folder / f"{db_id}.db", folder / db_id / f"{db_id}.sqlite",
                  folder / f"{db_id}.sql")
    return [path for path in candidates if path.is_file()]


def ordered(query: str) -> bool:
    """Whether the query orders its result: a top-level ORDER BY (one inside a subquery does not
    order what comes out)."""
    import sqlglot

    try:
        tree = sqlglot.parse_one(query, read="sqlite")
    except (sqlglot.errors.SqlglotError, RecursionError):  # cannot tokenize or parse it; nested too deep
        return False
    return tree.args.get("order") is not None


def same_result(predicted: list[tuple], gold: list[tuple], in_order: bool) -> bool:
    """Whether two results are equal as the module docstring says: multisets of rows (lists when
    `in_order`), the predicted columns in any order."""
    if len(predicted) != len(gold):
        return False
    if not gold:
        return True
    width = len(gold[0])
    if any(len(row) != width for row in predicted):
        return False
    # Each gold column can only come from a predicted column holding the same values (in order, when
    # the result is ordered); columns fall in groups of equals, which must be as large on both sides
    def column(rows: list[tuple], c: int):
        values = [row[c] for row in rows]
        return values if in_order else Counter(values)

    gold_columns = [column(gold, c) for c in range(width)]
    predicted_columns = [column(predicted, c) for c in range(width)]
    options = [[p for p in range(width) if predicted_columns[p] == gold_columns[g]] for g in range(width)]
    if any(len(options[g]) != sum(gold_columns[h] == gold_columns[g] for h in range(width)) for g in range(width)):
        return False
    wanted = gold if in_order else Counter(gold)
    for n, order in enumerate(_column_orders(options)):
        if n * len(gold) >= _WORK:
            break
        rows = [tuple(row[p] for p in order) for row in predicted]
        if (rows if in_order else Counter(rows)) == wanted:
            return True
    return False


def _column_orders(options: list[list[int]], taken: tuple[int, ...] = ()):
    """Each way to give every gold column a different predicted column from its options (the
    columns as they stand first, when they can)."""
    if len(taken) == len(options):
        yield taken
        return
    choices = options[len(taken)]
    for column in sorted(choices, key=lambda c: c != len(taken)):
        if column not in taken:
            yield from _column_orders(options, (*taken, column))


def clauses(query: str) -> dict | None:
    """A query's parts as sets where their order carries no meaning (selected expressions, tables,
    AND-ed conditions of WHERE and JOIN ... ON, grouping, HAVING), a list where it does (ORDER BY),
    the kinds of join, DISTINCT, LIMIT and OFFSET; identifiers in lower case and table aliases
    resolved (dropped where one table is read once). Values are compared too (Spider's exact set
    match leaves them out). None when sqlglot cannot parse it."""
    import sqlglot

    try:
        return _clauses(sqlglot.parse_one(query, read="sqlite"))
    # cannot tokenize or parse it (some parse errors come while resolving aliases); nested too deep
    except (sqlglot.errors.SqlglotError, RecursionError):
        return None


def _clauses(tree) -> dict:
    from sqlglot import exp

    tree = tree.transform(lambda n: exp.to_identifier(n.name.lower()) if isinstance(n, exp.Identifier) else n)
    references = list(tree.find_all(exp.Table))
    counts = Counter(t.name for t in references)
    tables = {t.alias_or_name: t.name for t in references if counts[t.name] == 1}  # a self-join keeps its aliases
    single = len(references) == 1

    def resolve(node):
        if isinstance(node, exp.Column):
            return exp.column(node.name, None if single else tables.get(node.table, node.table) or None)
        return exp.to_table(node.name) if isinstance(node, exp.Table) and counts[node.name] == 1 else node

    tree = tree.transform(resolve)
    if not isinstance(tree, exp.Select):  # a UNION, INTERSECT, ...: compared whole
        return {"query": tree.sql(dialect="sqlite")}

    def sql(nodes) -> list[str]:
        return [node.sql(dialect="sqlite") for node in nodes]

    def conditions(node) -> list[str]:
        return sql(node.flatten()) if isinstance(node, exp.And) else sql([node]) if node is not None else []

    where, joins = tree.args.get("where"), tree.args.get("joins") or []
    joined = [condition for join in joins for condition in conditions(join.args.get("on"))]
    having, group, order = tree.args.get("having"), tree.args.get("group"), tree.args.get("order")
    return {
        "select": frozenset(sql(tree.expressions)),
        "distinct": tree.args.get("distinct") is not None,
        "from": frozenset(sql(tree.find_all(exp.Table))),
        "joins": sorted(f"{join.side} {join.kind}".strip() for join in joins),
        "where": frozenset(conditions(where.this if where else None) + joined),
        "group": frozenset(sql(group.expressions) if group else []),
        "having": frozenset(conditions(having.this if having else None)),
        "order": sql(order.expressions) if order else [],
        "limit": tree.args["limit"].sql(dialect="sqlite") if tree.args.get("limit") else None,
        "offset": tree.args["offset"].sql(dialect="sqlite") if tree.args.get("offset") else None,
    }
