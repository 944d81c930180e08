"""Stage 4's task metrics as named plug-ins: the built-in text metrics, text-to-SQL by execution and
by clauses, and any function a user writes (`--metric path/to/file.py:function`).

A metric is a function of (response, record) that returns
- a number on 0-100 (a pass/fail metric returns 0 or 100: stage 4 then adds McNemar's test),
- a dict of named numbers on 0-100 (each becomes a metric `function.name`),
- None: not scored (counted, never averaged in),
- or `Scored(value, reason)`: a number, or None, with why (the error of a query that failed).
`record` holds the test record's `instruction`, `input`, `output` (the expected answer) and, where
it has them, `category`, `db_id` and `messages` (RECORD_FIELDS). A function that raises stops the
stage with the record and the function named; nothing is written.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import numbers
import re
import string
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from instructkit.errors import UserError
from instructkit.runs.fingerprints import sha256_file


@dataclass(frozen=True)
class Scored:
    value: float | None
    reason: str | None = None


RECORD_FIELDS = ("instruction", "input", "output", "category", "db_id", "messages")  # what a metric is given
VERSION = 1  # of the built-in metrics' rules: a change here recomputes their stored values
RESERVED = ("corpus",)  # a key of each model's summary beside its metrics


@dataclass
class Metric:
    name: str  # as given to --metric; a user's function is named by `function` in the results
    label: str  # in tables
    function: Callable[[str, dict], Any]
    fingerprint: dict = field(default_factory=dict)  # what its values depend on besides response and record
    pass_fail: bool | None = None  # every value 0 or 100 (McNemar's test); None: decided by the values
    inputs: Callable[[list[dict]], dict] = lambda records: {}  # fingerprints of what the records point to
    close: Callable[[], None] = lambda: None


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
        return Scored(100.0 * same_result(predicted.rows, gold.rows, in_order))

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
        predicted = clauses(unfenced(response))
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


def _user_metric(spec: str) -> Metric:
    """`path/to/file.py:function`, loaded once per process (again when the file changed)."""
    file, _, name = spec.rpartition(":")
    path = Path(file).expanduser()
    if not path.is_file():
        raise UserError(f"--metric {spec}: no such file {path}")
    key = (str(path.resolve()), name, sha256_file(path))
    if key not in _LOADED:
        _LOADED[key] = _load_user_metric(spec, path, name, key[2])
    return _LOADED[key]


def _load_user_metric(spec: str, path: Path, name: str, digest: str) -> Metric:
    module_name = f"instructkit_metric_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        sys.modules[module_name] = module
        module_spec.loader.exec_module(module)
    except Exception as exc:  # the user's file: whatever it raises is theirs to see
        raise UserError(f"--metric {spec}: loading {path} raised {type(exc).__name__}: {exc}") from exc
    function = getattr(module, name, None)
    if not callable(function):
        raise UserError(f"--metric {spec}: {path} has no function {name!r}")
    if name in BUILT_IN or name in RESERVED:
        raise UserError(f"--metric {spec}: {name!r} is a built-in metric's name; rename the function")
    return Metric(name, name, function, {"file_sha256": digest, "function": name})  # by content, wherever it lies


def resolve_metrics(specs: list[str], databases: Path) -> list[Metric]:
    """The metrics to compute: those asked for, in order, then the text metrics not among them."""
    metrics = []
    for spec in specs:
        if spec in BUILT_IN:
            metrics.append(BUILT_IN[spec](databases))
        elif ":" in spec and spec.rpartition(":")[0].endswith(".py"):
            metrics.append(_user_metric(spec))
        else:
            raise UserError(f"--metric {spec}: not a built-in metric ({', '.join(BUILT_IN)}) nor a "
                            "path/to/file.py:function")
    names = [m.name for m in metrics]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"--metric: {', '.join(repeated)} given twice (a user function is named by the function)")
    return metrics + [BUILT_IN[name](databases) for name in TEXT_METRICS if name not in names]


def score(metric: Metric, response: str, record: dict, where: str) -> dict[str, Scored]:
    """The metric's values for one response, by result name (`name`, or `name.key` for a dict), each
    checked to be a number on 0-100 or None; anything else, or an exception, names `where`."""
    try:
        value = metric.function(response, {k: record[k] for k in RECORD_FIELDS if k in record})
    except UserError as exc:
        raise UserError(f"metric {metric.name} on {where}: {exc}") from exc
    except Exception as exc:  # a user's function: the record and the function are what they need
        raise UserError(f"metric {metric.name} raised {type(exc).__name__}: {exc} (on {where})") from exc
    if value is None:  # not scored
        return {}
    if isinstance(value, dict):
        return {f"{metric.name}.{key}": checked(metric, v, where, str(key)) for key, v in value.items()}
    return {metric.name: checked(metric, value, where)}


def checked(metric: Metric, value: Any, where: str, key: str | None = None) -> Scored:
    """`value` as a Scored number on 0-100 (or None), or an error naming `where`."""
    scored = value if isinstance(value, Scored) else Scored(value)
    number = scored.value
    if number is not None and (isinstance(number, bool) or not isinstance(number, numbers.Real)
                               or not math.isfinite(number) or not 0 <= number <= 100):
        raise UserError(f"metric {metric.name}{'.' + key if key else ''} returned {number!r} on {where}: a metric's "
                        "value is a number on 0-100, or None for a response it cannot score")
    return Scored(None if number is None else float(number), scored.reason)
