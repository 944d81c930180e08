"""Stage 4's task metrics as named plug-ins: the built-in text metrics, text-to-SQL by execution and
by clauses, and any function a user writes (`--metric path/to/file.py:function`).

A metric is a function of (response, record) that returns
- a number on 0-100 (a pass/fail metric returns 0 or 100: stage 4 then adds McNemar's test),
- a dict of named numbers on 0-100 (each becomes a metric `function.name`),
- None: not scored (counted, never averaged in),
- or `Scored(value, reason)`: a number, or None, with why (the error of a query that failed).
`record` holds the test record's `instruction`, `input`, `output` (the expected answer) and, where
it has them, `category`, `db_id` and `messages` (RECORD_FIELDS). A function that raises (or calls
sys.exit) stops the stage with the record and the function named; nothing is written.

Answers are untrusted (a stage 2 file, a served model): the built-in metrics read at most
MAX_ANSWER_CHARS of an answer (a longer one scores 0 with the reason), and a query sqlglot fails on
in any way, or a result too wide to compare, is that answer's 0 with the reason. A user's function
may take `time_limit` seconds per call (stage 4's --metric-time-limit; enforced by SIGALRM in the
main thread, so a call stuck inside C code ends when it returns to Python); past it the answer
scores 0 with the reason, under each result the function gave so far (its name before any). It runs
in stage 4's process, with no limit on its memory.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import numbers
import re
import signal
import string
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from instructkit.errors import UserError, not_unicode
from instructkit.runs.fingerprints import sha256_file


@dataclass(frozen=True)
class Scored:
    value: float | None
    reason: str | None = None


RECORD_FIELDS = ("instruction", "input", "output", "category", "db_id", "messages")  # what a metric is given
VERSION = 1  # of the built-in metrics' rules: a change here recomputes their stored values
RESERVED = ("corpus",)  # a key of each model's summary beside its metrics
MAX_ANSWER_CHARS = 100_000  # what a built-in metric reads of one answer (ROUGE-L: 0.5 s and 0.1 GB at most)
MAX_REASON_CHARS = 500
TIME_LIMIT = 60.0  # seconds a user's function may take on one answer (--metric-time-limit)


@dataclass
class Metric:
    name: str  # as given to --metric; a user's function is named by `function` in the results
    label: str  # in tables
    function: Callable[[str, dict], Any]
    fingerprint: dict = field(default_factory=dict)  # what its values depend on besides response and record
    pass_fail: bool | None = None  # every value 0 or 100 (McNemar's test); None: decided by the values
    inputs: Callable[[list[dict]], dict] = lambda records: {}  # fingerprints of what the records point to
    close: Callable[[], None] = lambda: None
    time_limit: float | None = None  # seconds per call: a user's function; None: a built-in one


def _versions(*packages: str) -> dict:
    from importlib.metadata import version

    return {"version": VERSION, **{package: version(package) for package in packages}}


# --- the built-in text metrics --------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize(text: str) -> str:
    """SQuAD's answer normalization: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(response: str, record: dict) -> float:
    return 100.0 * (normalize(response) == normalize(record["output"]))


def rouge_l(response: str, record: dict) -> float:
    return round(100 * _rouge_scorer().score(record["output"], response)["rougeL"].fmeasure, 4)


def chrf(response: str, record: dict) -> float:
    import sacrebleu

    return round(sacrebleu.sentence_chrf(response, [record["output"]]).score, 4)


def bleu(response: str, record: dict) -> float:
    import sacrebleu

    return round(sacrebleu.sentence_bleu(response, [record["output"]]).score, 4)


@functools.cache
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


# The four every run gets, in the order the report shows them after any --metric.
TEXT_METRICS = {"exact_match": ("exact match", exact_match), "rouge_l": ("ROUGE-L", rouge_l),
                "chrf": ("chrF", chrf), "bleu": ("BLEU", bleu)}


def _text_metric(name: str, databases: Path) -> Metric:
    return Metric(name, *TEXT_METRICS[name], _versions("rouge-score", "sacrebleu"), pass_fail=name == "exact_match")


# --- text-to-SQL ----------------------------------------------------------------------------------

def _sql_execution(databases: Path) -> Metric:
    from instructkit.evaluate.sql import LIMITS, Database, database_files, database_path, ordered, same_result, unfenced
    from instructkit.models.references import cache_dir

    opened: dict[str, Database] = {}
    golds: dict[tuple[str, str], tuple] = {}  # a record's gold result, run once for all the models that answered it

    def database(record: dict) -> Database:
        db_id = record.get("db_id")
        if not isinstance(db_id, str):
            raise UserError("sql-execution runs queries on the record's database: the record has no 'db_id' "
                            "(sql-create-context records hold a schema but no rows: use sql-exact-set-match)")
        if db_id not in opened:
            opened[db_id] = Database(database_path(databases, db_id, cache_dir() / "sql-databases"))
        return opened[db_id]

    def score(response: str, record: dict) -> Scored:
        db = database(record)
        key = (record["db_id"], record["output"])
        if key not in golds:
            golds[key] = (db.run(record["output"]), ordered(record["output"]))
        gold, in_order = golds[key]
        if gold.error is not None:
            raise UserError(f"the gold query (field 'output') fails on {db.path}: {gold.error}")
        predicted = db.run(unfenced(response))
        if predicted.error is not None:
            return Scored(0.0, predicted.error)
        try:
            return Scored(100.0 * same_result(predicted.rows, gold.rows, in_order))
        except RecursionError:  # a result of more columns than Python's stack allows to match
            return Scored(0.0, f"cannot compare a result of {len(predicted.rows[0])} columns")

    def used(records: list[dict]) -> dict:  # each database the records run on, by content
        ids = sorted({r["db_id"] for r in records if isinstance(r.get("db_id"), str)})
        return {"databases": {db_id: [sha256_file(f) for f in database_files(databases, db_id)] for db_id in ids}}

    def close() -> None:
        for db in opened.values():
            db.close()

    return Metric("sql-execution", "SQL execution", score, {**_versions("sqlglot"), "limits": LIMITS},
                  pass_fail=True, inputs=used, close=close)


def _sql_exact_set_match(databases: Path) -> Metric:
    from instructkit.evaluate.sql import clauses, unfenced

    def score(response: str, record: dict) -> Scored:
        gold = clauses(record["output"])
        if gold is None:
            raise UserError("sqlglot cannot parse the gold query (field 'output')")
        try:
            predicted = clauses(unfenced(response))
        except Exception as exc:  # sqlglot on model-written text: this answer's 0, never the stage
            return Scored(0.0, _clip(f"sqlglot failed on the query: {type(exc).__name__}: {exc}"))
        if predicted is None:
            return Scored(0.0, "sqlglot cannot parse the query")
        return Scored(100.0 * (predicted == gold))

    return Metric("sql-exact-set-match", "SQL exact set match", score, _versions("sqlglot"), pass_fail=True)


BUILT_IN: dict[str, Callable[[Path], Metric]] = {
    "sql-execution": _sql_execution,
    "sql-exact-set-match": _sql_exact_set_match,
    **{name: functools.partial(_text_metric, name) for name in TEXT_METRICS},
}


# --- a user's own -------------------------------------------------------------------------------

_LOADED: dict[tuple, Metric] = {}


def _user_metric(spec: str, time_limit: float) -> Metric:
    """`path/to/file.py:function`, loaded once per process (again when the file changed)."""
    file, _, name = spec.rpartition(":")
    path = Path(file).expanduser()
    if not path.is_file():
        raise UserError(f"--metric {spec}: no such file {path}")
    key = (str(path.resolve()), name, sha256_file(path))
    if key not in _LOADED:
        _LOADED[key] = _load_user_metric(spec, path, name, key[2])
    loaded = _LOADED[key]
    return Metric(loaded.name, loaded.label, loaded.function, {**loaded.fingerprint, "time_limit_s": time_limit},
                  time_limit=time_limit)


def _load_user_metric(spec: str, path: Path, name: str, digest: str) -> Metric:
    module_name = f"instructkit_metric_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        sys.modules[module_name] = module
        module_spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # the user's file: whatever it raises is theirs to see
        raise UserError(f"--metric {spec}: loading {path} raised {type(exc).__name__}: {exc}") from exc
    function = getattr(module, name, None)
    if not callable(function):
        raise UserError(f"--metric {spec}: {path} has no function {name!r}")
    if name in BUILT_IN or name in RESERVED:
        raise UserError(f"--metric {spec}: {name!r} is a built-in metric's name; rename the function")
    return Metric(name, name, function, {"file_sha256": digest, "function": name})  # by content, wherever it lies


def resolve_metrics(specs: list[str], databases: Path, time_limit: float = TIME_LIMIT) -> list[Metric]:
    """The metrics to compute: those asked for, in order, then the text metrics not among them;
    `time_limit`: seconds a user's function may take per call."""
    metrics = []
    for spec in specs:
        if spec in BUILT_IN:
            metrics.append(BUILT_IN[spec](databases))
        elif ":" in spec and spec.rpartition(":")[0].endswith(".py"):
            metrics.append(_user_metric(spec, time_limit))
        else:
            raise UserError(f"--metric {spec}: not a built-in metric ({', '.join(BUILT_IN)}) nor a "
                            "path/to/file.py:function")
    names = [m.name for m in metrics]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"--metric: {', '.join(repeated)} given twice (a user function is named by the function)")
    return metrics + [BUILT_IN[name](databases) for name in TEXT_METRICS if name not in names]


class _TimeUp(BaseException):  # not an Exception: a user's `except Exception` cannot swallow it
    pass


@contextmanager
def _time_limited(seconds: float | None) -> Iterator[None]:
    """Raise _TimeUp in the block after `seconds` (SIGALRM: the main thread only; elsewhere, no limit)."""
    if seconds is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def up(signum, frame):
        raise _TimeUp

    previous = signal.signal(signal.SIGALRM, up)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def score(metric: Metric, response: str, record: dict, where: str, names: Iterable[str] = ()) -> dict[str, Scored]:
    """The metric's values for one response, by result name (`name`, or `name.key` for a dict), each
    checked to be a number on 0-100 or None; anything else, or an exception, names `where`.
    `names`: the results the metric gave so far, which a call past its time limit scores 0."""
    if metric.time_limit is None and len(response) > MAX_ANSWER_CHARS:  # a built-in one
        return {metric.name: Scored(0.0, f"the answer is longer than {MAX_ANSWER_CHARS:,} characters: not read")}
    try:
        with _time_limited(metric.time_limit):
            value = metric.function(response, {k: record[k] for k in RECORD_FIELDS if k in record})
    except _TimeUp:
        reason = f"the function ran past the time limit of {metric.time_limit:g} s (--metric-time-limit)"
        return {name: Scored(0.0, reason) for name in (list(names) or [metric.name])}
    except UserError as exc:
        raise UserError(f"metric {metric.name} on {where}: {exc}") from exc
    except SystemExit as exc:
        raise UserError(f"metric {metric.name} called sys.exit({exc.code!r}) on {where}: a metric returns its "
                        "value") from exc
    except Exception as exc:  # a user's function: the record and the function are what they need
        raise UserError(f"metric {metric.name} raised {type(exc).__name__}: {exc} (on {where})") from exc
    if value is None:  # not scored
        return {}
    if isinstance(value, dict):
        return {f"{metric.name}.{key}": checked(metric, v, where, str(key)) for key, v in value.items()}
    return {metric.name: checked(metric, value, where)}


def _clip(text: str) -> str:
    return text if len(text) <= MAX_REASON_CHARS else text[:MAX_REASON_CHARS - 1] + "…"


def checked(metric: Metric, value: Any, where: str, key: str | None = None) -> Scored:
    """`value` as a Scored number on 0-100 (or None) with a reason in text (or None), or an error
    naming `where`."""
    scored = value if isinstance(value, Scored) else Scored(value)
    number, name = scored.value, f"metric {metric.name}{'.' + key if key else ''}"
    try:
        finite = number is None or (not isinstance(number, bool) and isinstance(number, numbers.Real)
                                    and math.isfinite(number) and 0 <= number <= 100)
    except OverflowError:  # an int too large for a float
        finite = False
    if not finite:
        shown = repr(number) if not isinstance(number, int) or abs(number) < 10**20 else "an integer beyond 1e20"
        raise UserError(f"{name} returned {shown} on {where}: a metric's value is a number on 0-100, or None for a "
                        "response it cannot score")
    if scored.reason is not None and not isinstance(scored.reason, str):
        raise UserError(f"{name} returned a reason of type {type(scored.reason).__name__} on {where}: "
                        "Scored's reason is text")
    if scored.reason is not None and (why := not_unicode(scored.reason)):
        raise UserError(f"{name} returned a reason that {why} on {where}")
    return Scored(None if number is None else float(number), None if scored.reason is None else _clip(scored.reason))
