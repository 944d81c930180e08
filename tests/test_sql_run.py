"""The offline text-to-SQL run end to end on the embedded model (make demo-sql, shortened): stage 1
on the shop questions with the schema in the prompt, stage 2, stage 4 with execution accuracy
first, with intervals and McNemar for base against finetuned, in the JSON and the report."""

import json

from conftest import ROOT, run_stage

SQL_DATA = str(ROOT / "instructkit" / "data" / "default" / "sql-data.json")
N = 8


def test_offline_text_to_sql_run_reports_execution_accuracy_first(tmp_path):
    run = str(tmp_path / "sql")
    stage1 = run_stage("part1_instruction_finetuning.py", "--output-dir", run, "--data", SQL_DATA, "--test-fraction",
                       "0.2", "--max-steps", "12", "--lr", "1e-3", "--eval-steps", "12")
    assert stage1.returncode == 0, stage1.stderr[-3000:]
    test = json.loads((tmp_path / "sql" / "data" / "test.json").read_text())
    assert all(r["input"].startswith("CREATE TABLE") and r["db_id"] == "shop" for r in test)  # the schema is in the prompt
    stage2 = run_stage("part2_generate_test_responses.py", "--output-dir", run, "--limit", str(N), "--max-new-tokens",
                       "64", "--batch-size", "8")
    assert stage2.returncode == 0, stage2.stderr[-3000:]
    stage4 = run_stage("part4_local_evaluation.py", "--output-dir", run, "--judge", "none", "--metric", "sql-execution",
                       "--metric", "sql-exact-set-match")
    assert stage4.returncode == 0, stage4.stderr[-3000:]
    metrics = json.loads((tmp_path / "sql" / "task_metrics.json").read_text())
    assert metrics["metrics"][:2] == ["sql-execution", "sql-exact-set-match"] and metrics["lead"] == "sql-execution"
    base, tuned = (metrics["summary"][m]["sql-execution"] for m in ("base", "finetuned"))
    assert base["n_scored"] == tuned["n_scored"] == N
    # 12 steps teach the embedded model the shop's queries; the base model writes no runnable match
    assert tuned["mean"] > base["mean"] and tuned["ci95"] is not None, (base, tuned)
    difference = metrics["finetuned_minus_base"]["sql-execution"]
    assert difference["mcnemar"]["n_paired"] == N and difference["mcnemar"]["finetuned_only_correct"] > 0
    # the base model's answers that did not run say why (a syntax error, no such column, ...)
    reasons = [r["reasons"]["base"]["sql-execution"] for r in metrics["records"] if "base" in r.get("reasons", {})]
    assert reasons and all(reasons), metrics["records"][:3]
    page = (tmp_path / "sql" / "report.html").read_text()
    table = page[page.index('<table id="task-metrics">'):page.index("</table>", page.index('<table id="task-metrics">'))]
    assert table.index("<th>SQL execution</th>") < table.index("<th>exact match</th>")
    only = difference["mcnemar"]
    assert f"{only['base_only_correct']} vs {only['finetuned_only_correct']} only-correct, p = " in table
    assert "<th>finetuned SQL execution</th>" in page  # the breakdown by kind of query
    assert "SQL execution" in stage4.stdout and "McNemar p" in stage4.stdout
