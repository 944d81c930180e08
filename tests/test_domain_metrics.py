"""Stage 4's metric plug-ins: text-to-SQL by execution against hand-checked expectations, unsafe
model-written SQL contained on a real SQLite file, a user's metric file through stage 4 into the
JSON and the report, and the offline text-to-SQL default data."""

import importlib.util
import json
import sqlite3

import pytest

from conftest import ROOT, run_stage
from instructkit.data.records import load_records
from instructkit.errors import UserError
from instructkit.evaluate.metrics import resolve_metrics, score
from instructkit.evaluate.sql import Database, clauses

pytestmark = pytest.mark.fast

PETS = """CREATE TABLE pets (id INTEGER PRIMARY KEY, name TEXT, species TEXT, age INTEGER, owner TEXT);
INSERT INTO pets VALUES (1, 'Rex', 'dog', 3, 'Ann'), (2, 'Tom', 'cat', 5, 'Bob'), (3, 'Fido', 'dog', 4, NULL),
                        (4, 'Kit', 'cat', 1, 'Ann'), (5, 'Rex', 'dog', 7, 'Cy');"""

# (prediction, gold, same result?): checked by hand against the five rows above
EXECUTION_CASES = [
    ("SELECT name FROM pets WHERE species='dog'", "SELECT name FROM pets WHERE species = 'dog'", True),
    ("SELECT age, name FROM pets WHERE id = 1", "SELECT name, age FROM pets WHERE id = 1", True),  # columns reordered
    ("SELECT owner, name FROM pets", "SELECT name, owner FROM pets", True),  # reordered, with a NULL
    ("SELECT DISTINCT name FROM pets WHERE species = 'dog'", "SELECT name FROM pets WHERE species = 'dog'", False),  # Rex twice
    ("SELECT name FROM pets WHERE species = 'dog' ORDER BY id DESC", "SELECT name FROM pets WHERE species = 'dog'", True),  # gold unordered
    ("SELECT name FROM pets ORDER BY age ASC", "SELECT name FROM pets ORDER BY age DESC", False),  # gold ordered
    ("SELECT name FROM pets ORDER BY age DESC, id", "SELECT name FROM pets ORDER BY age DESC, id ASC", True),
    ("SELECT owner FROM pets WHERE id = 3", "SELECT owner FROM pets WHERE id = 3", True),  # NULL equals NULL
    ("SELECT '' FROM pets WHERE id = 3", "SELECT owner FROM pets WHERE id = 3", False),  # '' is not NULL
    ("SELECT owner FROM pets ORDER BY owner ASC", "SELECT owner FROM pets ORDER BY owner DESC", False),  # NULL first vs last
    ("SELECT COUNT(*) FROM pets WHERE species = 'cat'", "SELECT COUNT(id) FROM pets WHERE species = 'cat'", True),
    ("SELECT COUNT(*) FROM pets", "SELECT COUNT(*) FROM pets WHERE species = 'cat'", False),
    ("SELECT AVG(age) FROM pets WHERE species = 'cat'", "SELECT 3", True),  # 3.0 equals 3
    ("SELECT name FROM pets WHERE age > 100", "SELECT name FROM pets WHERE age > 50", True),  # both empty
    ("SELECT name, age FROM pets", "SELECT name FROM pets", False),  # an extra column
    ("SELEC name FROM pets", "SELECT name FROM pets", False),  # a syntax error
    ("SELECT name FROM animals", "SELECT name FROM pets", False),  # no such table
    ("SELECT species, COUNT(*) FROM pets GROUP BY species ORDER BY species DESC",
     "SELECT species, COUNT(*) FROM pets GROUP BY species", True),
    ("SELECT name FROM pets ORDER BY age, id LIMIT 2", "SELECT name FROM pets ORDER BY age ASC, id ASC LIMIT 2", True),
    ("SELECT name FROM pets", "SELECT name FROM (SELECT name, age FROM pets ORDER BY age)", True),  # inner ORDER BY orders nothing
    ("SELECT name FROM pets WHERE species = 'Dog'", "SELECT name FROM pets WHERE species = 'dog'", False),  # values are case-sensitive
    ("", "SELECT name FROM pets WHERE age > 50", False),  # no query is no match, even for an empty result
    ("-- SELECT name FROM pets", "SELECT name FROM pets WHERE age > 50", False),
    ("```sql\nSELECT name FROM pets WHERE id = 2\n```", "SELECT name FROM pets WHERE id = 2", True),  # a Markdown fence
    ("SELECT id, id, id, id, id, id, id, id FROM pets", "SELECT id, id, id, id, id, id, id, id FROM pets", True),  # 8 equal columns
]


@pytest.fixture
def pets(tmp_path):
    """A Spider-layout folder: <db_id>/<db_id>.sqlite."""
    path = tmp_path / "databases" / "pets" / "pets.sqlite"
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as connection:
        connection.executescript(PETS)
    connection.close()
    return path


def _record(gold: str, **extra) -> dict:
    return {"instruction": "q", "input": "", "output": gold, "db_id": "pets", **extra}


def test_sql_execution_agrees_with_hand_checked_expectations(pets):
    metric = resolve_metrics(["sql-execution"], pets.parent.parent)[0]
    got = [score(metric, prediction, _record(gold), "case")["sql-execution"].value == 100 for prediction, gold, _ in EXECUTION_CASES]
    assert got == [expected for *_, expected in EXECUTION_CASES]
    failed = score(metric, "SELECT name FROM animals", _record("SELECT name FROM pets"), "case")["sql-execution"]
    assert failed.value == 0 and "no such table: animals" in failed.reason
    metric.close()


def test_column_matching_gives_up_at_once_when_no_order_can_match():
    import time

    from instructkit.evaluate.sql import same_result

    gold = [(0,) * 12 + (1, 1)] * 3
    predicted = [(0,) * 12 + (1, 2)] * 3  # 13 and 14 cannot both come from the one predicted column of 1s
    started = time.perf_counter()
    assert not same_result(predicted, gold, False) and time.perf_counter() - started < 1
    assert same_result([(2, 1, 0)] * 4, [(0, 1, 2)] * 4, True)


def test_sql_exact_set_match_compares_clauses_not_spelling():
    same = [("select NAME from Pets where age>3 and species='dog'", "SELECT name FROM pets WHERE species = 'dog' AND age > 3"),
            ("SELECT p.name FROM pets AS p JOIN owners AS o ON p.owner = o.name", "SELECT pets.name FROM owners JOIN pets ON pets.owner = owners.name")]
    assert all(clauses(a) == clauses(b) and clauses(a) is not None for a, b in same)
    differ = [("SELECT name FROM pets ORDER BY age", "SELECT name FROM pets ORDER BY age DESC"),
              ("SELECT a.name FROM pets AS a JOIN pets AS b ON a.owner = b.name", "SELECT name FROM pets WHERE owner = name"),
              ("SELECT name FROM pets LEFT JOIN owners ON pets.owner = owners.name",
               "SELECT name FROM pets JOIN owners ON pets.owner = owners.name"),
              ("SELECT name FROM pets LIMIT 1 OFFSET 2", "SELECT name FROM pets LIMIT 1"),
              ("SELECT name FROM pets WHERE age > 3", "SELECT name FROM pets WHERE age > 4"),
              ("SELECT DISTINCT name FROM pets", "SELECT name FROM pets")]
    assert all(clauses(a) != clauses(b) for a, b in differ)
    metric = resolve_metrics(["sql-exact-set-match"], ROOT)[0]
    assert score(metric, "SELECT", _record("SELECT name FROM pets"), "x")["sql-exact-set-match"].value == 0


UNSAFE = {
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100) SELECT zeroblob(999999999) FROM c": "too big",
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 30) SELECT zeroblob(9000000) FROM c": "more than 50 MB",
    "DROP TABLE pets": "not authorized",
    "ATTACH DATABASE '{attach}' AS y": "not authorized",
    "PRAGMA writable_schema=1": "not authorized",
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT COUNT(*) FROM c": "time limit",
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 10000000) SELECT x FROM c": "more than",
    "SELECT 1; DELETE FROM pets": "one statement at a time",
    "SELECT load_extension('/tmp/nothing')": "not authorized",
}


def test_unsafe_queries_score_zero_with_a_reason_and_leave_the_database_as_it_was(pets, tmp_path):
    before = pets.read_bytes()
    attach = tmp_path / "attached.sqlite"
    queries = [q.format(attach=attach) for q in UNSAFE]
    rows = [{"instruction": f"question {i}", "input": "", "output": "SELECT COUNT(*) FROM pets", "db_id": "pets",
             "base_model_response": "SELECT COUNT(*) FROM pets", "finetuned_model_response": query}
            for i, query in enumerate(queries)]
    (tmp_path / "test_base_model.json").write_text(json.dumps(rows))
    result = run_stage("part4_local_evaluation.py", "--output-dir", str(tmp_path), "--judge", "none",
                       "--metric", "sql-execution", "--sql-databases", str(pets.parent.parent))
    assert result.returncode == 0, result.stderr[-3000:]
    assert pets.read_bytes() == before and not attach.exists()
    metrics = json.loads((tmp_path / "task_metrics.json").read_text())
    assert metrics["metrics"][0] == "sql-execution" and metrics["lead"] == "sql-execution"
    for row, why in zip(metrics["records"], UNSAFE.values()):
        assert row["finetuned"]["sql-execution"] == 0 and row["base"]["sql-execution"] == 100
        assert why in row["reasons"]["finetuned"]["sql-execution"], row["reasons"]
    difference = metrics["finetuned_minus_base"]["sql-execution"]
    assert difference["mean"] == -100 and difference["mcnemar"]["base_only_correct"] == len(UNSAFE)
    assert "SQL execution" in (tmp_path / "report.html").read_text()

    # The database's content is fingerprinted: changed in place, the scores are computed again
    args = ["--output-dir", str(tmp_path), "--judge", "none", "--metric", "sql-execution", "--sql-databases",
            str(pets.parent.parent)]
    assert "task metrics already finished" in run_stage("part4_local_evaluation.py", *args).stdout
    with sqlite3.connect(pets) as connection:
        connection.execute("DELETE FROM pets WHERE id = 5")
    connection.close()
    again = run_stage("part4_local_evaluation.py", *args)
    assert "metric sql-execution changed since task_metrics.json was made" in again.stdout, again.stdout[-2000:]
    assert f"reused {4 * 2 * len(UNSAFE)} metric results" in again.stdout  # the text metrics' only


def test_a_gold_query_that_fails_is_an_input_error_naming_the_record(pets, tmp_path):
    rows = [{"instruction": "q", "input": "", "output": "SELECT COUNT(*) FROM pets", "db_id": "pets",
             "base_model_response": "x", "finetuned_model_response": "y"},
            {"instruction": "q2", "input": "", "output": "SELECT colour FROM pets", "db_id": "pets",
             "base_model_response": "x", "finetuned_model_response": "y"}]
    (tmp_path / "test_base_model.json").write_text(json.dumps(rows))
    result = run_stage("part4_local_evaluation.py", "--output-dir", str(tmp_path), "--judge", "none",
                       "--metric", "sql-execution", "--sql-databases", str(pets.parent.parent))
    assert result.returncode == 2
    assert "record 1, model base" in result.stderr and "the gold query (field 'output') fails" in result.stderr
    assert "no such column: colour" in result.stderr and not (tmp_path / "task_metrics.json").exists()


USER_METRICS = '''
def words(response, record):
    """Within 20% of the expected answer's length: 100, else 0."""
    return 100.0 * (abs(len(response.split()) - len(record["output"].split())) <= 0.2 * len(record["output"].split()))


def parts(response, record):
    if not response:
        return None
    return {"starts_right": 100.0 * (response[:1] == record["output"][:1]), "short": 100.0 * (len(response) < 30)}


def broken(response, record):
    if record["instruction"] == "third":
        raise KeyError("expected_sql")
    return 50


def too_big(response, record):
    return 150
'''


def test_a_user_metric_file_runs_through_stage_4_into_the_json_and_the_report(tmp_path):
    metric_file = tmp_path / "my_metrics.py"
    metric_file.write_text(USER_METRICS)
    rows = [{"instruction": name, "input": "", "output": output, "category": "c",
             "base_model_response": base, "finetuned_model_response": tuned}
            for name, output, base, tuned in [("first", "Paris is the capital.", "London.", "Paris is the capital."),
                                              ("second", "Four.", "It is four, I think, or maybe five.", "Four."),
                                              ("third", "Blue.", "Green.", "Blue.")]]
    (tmp_path / "test_base_model.json").write_text(json.dumps(rows))
    args = ["--output-dir", str(tmp_path), "--judge", "none"]
    result = run_stage("part4_local_evaluation.py", *args, "--metric", f"{metric_file}:words",
                       "--metric", f"{metric_file}:parts")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "task_metrics.json").read_text())
    assert metrics["metrics"][:3] == ["words", "parts.starts_right", "parts.short"] and metrics["lead"] == "words"
    assert [r["finetuned"]["words"] for r in metrics["records"]] == [100.0, 100.0, 100.0]
    assert [r["base"]["words"] for r in metrics["records"]] == [0.0, 0.0, 100.0]
    assert metrics["summary"]["base"]["parts.short"]["mean"] == pytest.approx(200 / 3, abs=1e-3)
    assert "words" in metrics["pass_fail"] and metrics["finetuned_minus_base"]["words"]["mcnemar"]["finetuned_only_correct"] == 2
    assert metrics["by_category"]["c"]["finetuned"]["words"] == 100.0
    page = (tmp_path / "report.html").read_text()
    assert "<th>words</th>" in page and "<th>parts.starts_right</th>" in page and "finetuned words" in page

    # Unchanged: reused whole; one metric dropped, then added again: each time only its values are
    # computed, the other 5 metrics' 6 values each are reused
    again = run_stage("part4_local_evaluation.py", *args, "--metric", f"{metric_file}:words",
                      "--metric", f"{metric_file}:parts")
    assert "task metrics already finished" in again.stdout
    fewer = run_stage("part4_local_evaluation.py", *args, "--metric", f"{metric_file}:words")
    assert fewer.returncode == 0 and "reused 30 metric results" in fewer.stdout, fewer.stdout[-2000:]
    assert "parts.short" not in json.loads((tmp_path / "task_metrics.json").read_text())["metrics"]
    back = run_stage("part4_local_evaluation.py", *args, "--metric", f"{metric_file}:words", "--metric",
                     f"{metric_file}:parts")
    assert "reused 30 metric results" in back.stdout and json.loads((tmp_path / "task_metrics.json").read_text()) == metrics

    failed = run_stage("part4_local_evaluation.py", *args, "--metric", f"{metric_file}:broken", "--overwrite")
    assert failed.returncode == 2
    assert "metric broken raised KeyError: 'expected_sql'" in failed.stderr and "record 2, model base" in failed.stderr
    out_of_range = run_stage("part4_local_evaluation.py", *args, "--metric", f"{metric_file}:too_big")
    assert out_of_range.returncode == 2 and "metric too_big returned 150" in out_of_range.stderr
    missing = run_stage("part4_local_evaluation.py", *args, "--metric", f"{metric_file}:nothing", "--metric", "bleu2")
    assert missing.returncode == 2 and "has no function 'nothing'" in missing.stderr


def test_sql_create_context_records_load_with_their_database():
    records = load_records(str(ROOT / "instructkit" / "data" / "default" / "sql-data.json"))
    assert records[0]["instruction"].startswith("List the names of the customers")
    assert records[0]["input"].startswith("CREATE TABLE customers") and records[0]["output"].startswith("SELECT")
    assert records[0]["db_id"] == "shop" and records[0]["category"] == "filter"


def test_spider_records_take_their_schema_from_the_database_shipped_beside_them(pets, tmp_path):
    spider = pets.parent.parent.parent  # <tmp>/databases/pets/pets.sqlite: Spider's database/ is "databases" here
    (spider / "database").symlink_to(spider / "databases")
    questions = [{"db_id": "pets", "question": "How many dogs are there?", "query": "SELECT count(*) FROM pets WHERE species = 'dog'",
                  "query_toks": ["SELECT"]},
                 {"db_id": "cars", "question": "How many cars?", "query": "SELECT count(*) FROM cars"}]
    (spider / "dev.json").write_text(json.dumps(questions[:1]))
    record = load_records(str(spider / "dev.json"))[0]
    assert (record["instruction"], record["output"], record["db_id"]) == (questions[0]["question"], questions[0]["query"], "pets")
    assert record["input"] == "CREATE TABLE pets (id INTEGER PRIMARY KEY, name TEXT, species TEXT, age INTEGER, owner TEXT)"
    (spider / "dev.json").write_text(json.dumps(questions))
    with pytest.raises(UserError) as info:
        load_records(str(spider / "dev.json"))
    assert f"{spider / 'dev.json'}: record 1: a Spider record" in str(info.value) and "cars/cars.sqlite is missing" in str(info.value)
    # a record in our own form with a db_id and a query field is left as it is
    (spider / "ours.json").write_text(json.dumps([{"instruction": "Count.", "output": "SELECT 1", "query": "x", "db_id": "cars"}]))
    assert load_records(str(spider / "ours.json"))[0]["input"] == ""
    # elsewhere a `query` is a question, not SQL: without a db_id it is no alias of the answer
    (spider / "chat.json").write_text(json.dumps([{"query": "Hi?", "response": "Hello."}]))
    with pytest.raises(UserError, match="record 0: missing field 'instruction'"):
        load_records(str(spider / "chat.json"))


def test_offline_sql_data_matches_its_builder_and_every_gold_query_runs(tmp_path):
    spec = importlib.util.spec_from_file_location("build_sql_data", ROOT / "instructkit" / "data" / "build_sql_data.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    script, questions = builder.build()
    assert builder.DATABASE.read_text(encoding="utf-8") == script, "run `python -m instructkit.data.build_sql_data`"
    assert json.loads(builder.QUESTIONS.read_text(encoding="utf-8")) == questions
    assert len(questions) >= 200 and {q["category"] for q in questions} >= {
        "filter", "count", "order by", "group by", "join", "nested", "aggregate"}
    path = tmp_path / "shop.sqlite"
    with sqlite3.connect(path) as connection:
        connection.executescript(script)
    connection.close()
    database = Database(path)
    outcomes = [database.run(q["answer"]) for q in questions]
    assert all(o.error is None for o in outcomes) and sum(bool(o.rows) for o in outcomes) >= len(questions) - 2
