"""One self-contained HTML page with every stage's results, and the PNG plots beside it.

Each section reads one stage's artifact; a stage that has not run is shown as absent. Plots are
embedded as data URIs so the page can be mailed or opened anywhere on its own.
"""

from __future__ import annotations

import base64
import html
import time
from collections import Counter
from pathlib import Path

from instructkit.data.responses import RESPONSE_FIELDS, RESPONSES_FILE, response_columns, response_field
from instructkit.errors import UserError
from instructkit.evaluate.benchmark import RESULTS_FILE
from instructkit.evaluate.stats import agreement, describe, paired_difference
from instructkit.evaluate.task_metrics import METRIC_NAMES
from instructkit.judge.human import HUMAN_FILE, read_human_ratings
from instructkit.judge.mt_bench import MT_SCORES_FILE
from instructkit.judge.scoring import REFERENCE, SCORES_FILE, TASK_METRICS_FILE
from instructkit.models.references import EMBEDDED_JUDGE
from instructkit.report.plots import plot_category_changes, plot_category_means, plot_score_histograms
from instructkit.runs.artifacts import read_json, write_text_atomic
from instructkit.runs.fingerprints import sha256_file, stale_on_disk
from instructkit.runs.reuse import meta_path
from instructkit.train.sft import SUMMARY_FILE

REPORT_FILE = "report.html"

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1300px; color: #222; padding: 0 1em; }
h1 { margin-bottom: 0; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
.meta, .absent, .note { color: #666; } .absent { font-style: italic; }
.stale { background: #fff3cd; border: 1px solid #e0b100; padding: .4em .8em; border-radius: 4px; }
table { border-collapse: collapse; margin: .5em 0; } td, th { border: 1px solid #ddd; padding: 4px 8px; vertical-align: top; }
th { background: #f4f4f4; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
#records th { cursor: pointer; user-select: none; } #records th:after { content: " \\2195"; color: #aaa; }
#records td { max-width: 26em; white-space: pre-wrap; word-wrap: break-word; font-size: 13px; }
img { max-width: 100%; border: 1px solid #eee; } .cards { display: flex; gap: 1em; flex-wrap: wrap; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: .6em 1em; min-width: 12em; }
.card b { font-size: 1.5em; display: block; } #filter { width: 30em; padding: 4px; margin: .5em 0; }
"""

SCRIPT = """
const table = document.getElementById('records');
if (table) {
  const body = table.tBodies[0];
  const filter = document.getElementById('filter');
  const applyFilter = () => {
    const needle = filter.value.toLowerCase();
    let shown = 0;
    for (const row of body.rows) {
      const hit = row.textContent.toLowerCase().includes(needle);
      row.hidden = !hit; shown += hit;
    }
    document.getElementById('shown').textContent = shown;
  };
  filter.addEventListener('input', applyFilter);
  // report.html#filter=capital opens with the table filtered: a link to the records you mean.
  if (location.hash.startsWith('#filter=')) {
    filter.value = decodeURIComponent(location.hash.slice(8));
    applyFilter();
  }
  table.querySelectorAll('th').forEach((th, column) => {
    let ascending = true;
    th.addEventListener('click', () => {
      const key = row => row.cells[column].dataset.sort ?? row.cells[column].textContent;
      const rows = Array.from(body.rows);
      rows.sort((a, b) => {
        const x = key(a), y = key(b), nx = parseFloat(x), ny = parseFloat(y);
        const order = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : (isNaN(nx) - isNaN(ny)) || x.localeCompare(y);
        return ascending ? order : -order;
      });
      ascending = !ascending;
      rows.forEach(row => body.appendChild(row));
    });
  });
}
"""


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def _fmt(value, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _signed(value, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:+.{digits}f}"


def _ci(summary: dict, digits: int = 1) -> str:
    """A summary's 95% interval, or why it has none."""
    ci = summary.get("ci95")
    if ci:
        return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
    return "none (all values equal)" if summary.get("ci95_note") else "n/a"


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _read_optional(path: Path, read=read_json) -> dict | list | None:
    """An artifact if its stage has run; a damaged one is reported on the page, not fatal."""
    if not path.is_file():
        return None
    try:
        return read(path)
    except UserError as exc:
        return {"_error": str(exc)}


EMBEDDED_JUDGE_NOTE = ('<p class="note">This is the embedded 135M-parameter judge: it makes the pipeline run '
                       'offline, but it cannot grade (it copies numbers from the question and favours answer A). '
                       'Do not read these scores as quality; judge with Llama-3-8B-Instruct or an API model.</p>')


def _missing(artifact, stage: str, path: Path) -> str | None:
    """What to show instead of a section whose artifact is absent or damaged; None if it is fine."""
    if artifact is None:
        return f'<p class="absent">{stage} has not run here: {_e(path)} not found.</p>'
    if isinstance(artifact, dict) and "_error" in artifact:
        return f'<p class="absent">{_e(artifact["_error"])}</p>'
    return None


def _changed_inputs(record: dict | None, what: Path) -> list[str]:
    """What changed since `what` was made, per its record: inputs, or the file itself."""
    if not isinstance(record, dict) or "inputs" not in record:
        return []
    changed = stale_on_disk(record["inputs"])
    if "output_sha256" in record and what.is_file() and sha256_file(what) != record["output_sha256"]:
        changed.append(f"{what.name} itself")
    return changed


def _stale(record: dict | None, what: Path, rerun: str, upstream: list[str] = ()) -> str:
    """A warning above a section whose inputs changed after it was made (a retrained adapter under
    old responses, say), or whose inputs are themselves out of date (`upstream`); empty while
    everything it was made from is as it was."""
    if isinstance(record, dict) and "inputs" not in record:
        return f'<p class="stale">{_e(what.name)} has no record of what it was made from (an older version wrote it).</p>'
    changed = _changed_inputs(record, what) + [f"{name} (behind {RESPONSES_FILE})" for name in upstream]
    if not changed:
        return ""
    return (f'<p class="stale">Out of date: {_e(", ".join(changed))} changed since {_e(what.name)} was made. '
            f'These results may belong to another model; rerun {_e(rerun)}.</p>')


def _stage_record(path: Path) -> dict | None:
    record = _read_optional(meta_path(path))
    return record if isinstance(record, dict) and "_error" not in record else None


def _training_section(output_dir: Path) -> str:
    path = output_dir / "finetuned" / SUMMARY_FILE
    summary = _read_optional(path)
    if note := _missing(summary, "Stage 1 (finetuning)", path):
        return note
    hp = summary.get("hyperparameters", {})
    rows = [("base model", summary.get("base_model")), ("prompt style", summary.get("prompt_style")),
            ("records train / val / test", " / ".join(str(v) for v in summary.get("n_records", {}).values())),
            ("optimizer steps", summary.get("steps")), ("learning rate", hp.get("lr")),
            ("validation loss before → after", f"{_fmt(summary.get('val_loss_before'), 3)} → {_fmt(summary.get('val_loss_after'), 3)}"),
            ("tokens/s", summary.get("tokens_per_second")), ("wall time (s)", summary.get("wall_time_s")),
            ("device", summary.get("device"))]
    table = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    loss_png = output_dir / "finetuned" / "loss.png"
    image = _image(loss_png, "training and validation loss") if loss_png.is_file() else ""
    return _stale(summary, path, "stage 1") + f"<table>{table}</table>{image}"


def _benchmark_cell(r: dict | None) -> str:
    if not r:
        return "<td>not run</td>"
    stderr = "" if r["stderr"] is None else f" ± {r['stderr']:.4f}"
    value = "n/a" if r["value"] is None else f"{r['value']:.4f}"
    return f'<td class="num">{_e(r["metric"])} {value}{stderr} (n={r["n_questions"]})</td>'


def _benchmark_section(output_dir: Path) -> str:
    path = output_dir / RESULTS_FILE
    results = _read_optional(path)
    if note := _missing(results, "Stage 3 (benchmark)", path):
        return note
    models = results.get("models", {})
    tasks = list(dict.fromkeys(task for per_model in models.values() for task in per_model))
    rows = []
    for task in tasks:
        cells = "".join(_benchmark_cell(models.get(model, {}).get(task)) for model in RESPONSE_FIELDS)
        diff = results.get("finetuned_minus_base", {}).get(task)
        if diff and diff["difference"] is not None:
            test = f' (McNemar p={diff["mcnemar"]["p_value"]:.3f})' if diff.get("mcnemar") else ""
            diff_cell = f'<td class="num">{diff["difference"]:+.4f}{test}</td>'
        else:
            diff_cell = "<td>n/a</td>"
        rows.append(f"<tr><td>{_e(task)}</td>{cells}{diff_cell}</tr>")
        subtasks = list(dict.fromkeys(sub for m in models.values() for sub in m.get(task, {}).get("subtasks", {})))
        for sub in subtasks:
            sub_cells = "".join(_benchmark_cell(models.get(m, {}).get(task, {}).get("subtasks", {}).get(sub))
                                for m in RESPONSE_FIELDS)
            rows.append(f'<tr class="subtask"><td>&nbsp;&nbsp;{_e(sub)}</td>{sub_cells}<td></td></tr>')
    smoke = '<p class="note">Smoke run (--limit): not a full benchmark.</p>' if results.get("smoke_run") else ""
    return (_stale(_stage_record(path), path, "stage 3")
            + "<table><tr><th>task</th><th>base</th><th>finetuned</th><th>finetuned − base</th></tr>"
            + "".join(rows) + "</table>" + smoke)


def _task_metrics_section(output_dir: Path) -> str:
    path = output_dir / TASK_METRICS_FILE
    result = _read_optional(path)
    if note := _missing(result, "Stage 4's task metrics", path):
        return note
    head = "".join(f"<th>{_e(name)}</th>" for name in METRIC_NAMES.values())
    rows = []
    for model, summary in result["summary"].items():
        cells = "".join(f'<td class="num">{_fmt(summary[m]["mean"])} <span class="meta">{_ci(summary[m])}</span></td>'
                        for m in METRIC_NAMES)
        n = summary["rouge_l"]["n_scored"]
        rows.append(f'<tr id="metrics-{_e(model)}"><th>{_e(model)} <span class="meta">(n={n})</span></th>{cells}</tr>')
    if difference := result.get("finetuned_minus_base"):
        cells = "".join(f'<td class="num">{_signed(difference[m]["mean"])} <span class="meta">{_ci(difference[m])}</span></td>'
                        for m in METRIC_NAMES)
        rows.append(f'<tr id="metrics-difference"><th>finetuned − base <span class="meta">(paired)</span></th>{cells}</tr>')
    corpus = "; ".join(f"{model}: BLEU {_fmt(s['corpus']['bleu'])}, chrF {_fmt(s['corpus']['chrf'])}"
                       for model, s in result["summary"].items())
    responses = output_dir / RESPONSES_FILE
    upstream = _changed_inputs(_stage_record(responses), responses)
    return (_stale(_stage_record(path), path, "stages 2 and 4" if upstream else "stage 4", upstream)
            + '<p class="meta">How close each response is to the expected output, on a 0-100 scale with 95% bootstrap '
            'intervals: exact match after normalization (case, punctuation, articles), ROUGE-L F (rouge-score), chrF '
            'and sentence BLEU (sacrebleu). No judge is involved, so these are the numbers to read first when the '
            'judge is a small local model. Sentence BLEU is noisy on short answers; read ROUGE-L and chrF first.</p>'
            + f'<table id="task-metrics"><tr><th>model</th>{head}</tr>{"".join(rows)}</table>'
            + f'<p class="note">Corpus-level: {_e(corpus)}.</p>' + _largest_losses(result, output_dir))


def _largest_losses(result: dict, output_dir: Path, shown: int = 5) -> str:
    """The records where the finetune moved furthest from the expected output against the base
    (ROUGE-L), both answers side by side: where to start reading when the averages disappoint."""
    responses = _read_optional(output_dir / RESPONSES_FILE)
    if not isinstance(responses, list) or "finetuned_minus_base" not in result:
        return ""
    changes = [(row["finetuned"]["rouge_l"] - row["base"]["rouge_l"], row["index"]) for row in result["records"]
               if row.get("base") and row.get("finetuned") and row["index"] < len(responses)]
    losses = sorted(c for c in changes if c[0] < 0)[:shown]
    if not losses:
        return '<p class="note">The finetune is at least as close to the expected output as the base on every record.</p>'
    rows = []
    for change, index in losses:
        r = responses[index]
        rows.append(f'<tr><td class="num">{index}</td><td>{_e(r.get("instruction"))}</td><td>{_e(r.get("output"))}</td>'
                    f'<td>{_e(r.get(RESPONSE_FIELDS["base"]))}</td><td>{_e(r.get(RESPONSE_FIELDS["finetuned"]))}</td>'
                    f'<td class="num">{change:+.1f}</td></tr>')
    return (f'<h3>Where the finetune lost most against the base (ROUGE-L)</h3><table id="largest-losses">'
            '<tr><th>#</th><th>instruction</th><th>expected</th><th>base response</th><th>finetuned response</th>'
            f'<th>ROUGE-L change</th></tr>{"".join(rows)}</table>')


def _category_section(output_dir: Path, scores: dict | None) -> str:
    """Every model's ROUGE-L and judge score per kind of task (the records' `category`), and the
    finetune's paired change against the base, worst first: which kinds of task got worse."""
    responses, metrics = _read_optional(output_dir / RESPONSES_FILE), _read_optional(output_dir / TASK_METRICS_FILE)
    if not isinstance(responses, list) or not isinstance(metrics, dict) or "_error" in metrics:
        return ""
    by_category: dict[str, list[int]] = {}
    for row in metrics["records"]:
        if row["index"] < len(responses) and isinstance(category := responses[row["index"]].get("category"), str):
            by_category.setdefault(category, []).append(row["index"])
    if not by_category:
        return ('<p class="note">The records carry no <code>category</code>, so there is no breakdown by kind of task '
                "(our default data and Dolly have one).</p>")
    rouge = {row["index"]: row for row in metrics["records"]}
    judged = {r["index"]: r["scores"] for r in (scores or {}).get("records", [])}
    models = [m for m in _models(metrics["summary"]) if m in metrics["summary"]]

    def values(model: str, indexes: list[int], judge: bool = False) -> list[float | None]:
        if judge:
            return [judged.get(i, {}).get(model, {}).get("score") for i in indexes]
        return [(rouge[i].get(model) or {}).get("rouge_l") for i in indexes]

    changes = {c: paired_difference(values("base", ix), values("finetuned", ix), 0) for c, ix in by_category.items()
               if {"base", "finetuned"} <= set(models)}
    order = sorted(by_category, key=lambda c: (changes[c]["mean"] if changes and changes[c]["mean"] is not None else 0, c))
    head = "".join(f"<th>{_e(m)} ROUGE-L</th>" for m in models) + ("<th>finetuned − base (95% CI)</th>" if changes else "")
    head += "".join(f"<th>{_e(m)} judge</th>" for m in models if judged)
    rows = []
    for category in order:
        ix = by_category[category]
        cells = "".join(f'<td class="num">{_fmt(describe(values(m, ix), 0)["mean"])}</td>' for m in models)
        if changes:
            cells += f'<td class="num">{_signed(changes[category]["mean"])} <span class="meta">{_ci(changes[category])}</span></td>'
        if judged:
            cells += "".join(f'<td class="num">{_fmt(describe(values(m, ix, True), 0)["mean"])}</td>' for m in models)
        rows.append(f'<tr id="category-{_e(category)}"><th>{_e(category)} <span class="meta">(n={len(ix)})</span></th>{cells}</tr>')
    chart = (_image(plot_category_changes({c: changes[c] for c in order}, output_dir / "category_changes.png", "ROUGE-L"),
                    "finetuned minus base ROUGE-L per category") if changes else "")
    return (f'<table id="categories"><tr><th>category</th>{head}</tr>{"".join(rows)}</table>'
            '<p class="note">Means per kind of task, worst change first. Few records per category make wide '
            "intervals: read these as where to look, then read the records.</p>" + chart)


def _models(columns) -> list[str]:
    """Base and finetuned, then any --compare models, in that order."""
    return response_columns(m for m in columns if m != "finetuned_minus_base")


def _pairs(scores: dict) -> dict:
    """The pairwise summaries by pair ("finetuned:base"); a file from before pairs were named has none to show."""
    pairwise = scores.get("pairwise") or {}
    return {name: p for name, p in pairwise.items() if ":" in name and isinstance(p, dict)}


def _judge_section(scores: dict | None, path: Path, output_dir: Path) -> str:
    if note := _missing(scores, "Stage 4's judge", path):
        return note
    judge = scores["judge"]
    responses = output_dir / RESPONSES_FILE
    upstream = _changed_inputs(_stage_record(responses), responses)
    parts = [_stale(_stage_record(path), path, "stages 2 and 4" if upstream else "stage 4", upstream),
             f'<p class="meta">Judge: {_e(judge["kind"])}:{_e(judge["model"])}, scoring by {_e(judge["scoring"])}, '
             f'seed {_e(judge["seed"])}. Unscored responses are counted, never averaged in as zeros.</p>',
             EMBEDDED_JUDGE_NOTE if judge["model"] == EMBEDDED_JUDGE else "",
             '<div class="cards">']
    summary = scores["summary"]
    for model in _models(summary):
        if model in summary:
            s = summary[model]
            parts.append(f'<div class="card" id="judge-{model}">{_e(model)} mean score<b>{_fmt(s["mean"])}</b>'
                         f'95% CI {_ci(s)}<br>median {_fmt(s["median"])}, scored {s["n_scored"]}/{s["n_total"]}</div>')
    if "finetuned_minus_base" in summary:
        d = summary["finetuned_minus_base"]
        parts.append(f'<div class="card">finetuned − base<b>{_fmt(d["mean"])}</b>95% CI {_ci(d)}'
                     f'<br>over {d["n_pairs"]} paired records</div>')
    parts.append("</div>")
    if pairwise := _pairs(scores):
        parts.append(_pairwise_table(pairwise))
    if scores.get("agreement"):
        a = scores["agreement"]
        parts.append(f'<p>Agreement with the --compare-with scores: Spearman {a["spearman"]}, Pearson {a["pearson"]}, '
                     f'mean absolute difference {a["mean_absolute_difference"]} over {a["n"]} responses.</p>')
    values = {m: [r["scores"][m]["score"] for r in scores["records"] if m in r["scores"]] for m in _models(summary)}
    values = {m: v for m, v in values.items() if any(x is not None for x in v)}
    if values:
        histogram = plot_score_histograms(values, output_dir / "score_histogram.png")
        parts.append(_image(histogram, "judge score histogram per model"))
    return "".join(parts)


def _pairwise_table(pairwise: dict, prefix: str = "") -> str:
    """Each pair's verdicts in both orders, the win rate raw and length-controlled, and the matrix
    (element ids start with `prefix`, so that two such tables can share the page)."""
    rows = []
    for name, p in pairwise.items():
        lc = p.get("length_controlled") or {}
        words = p["mean_response_words"]
        lc_note = f' title="{_e(lc["note"])}"' if lc.get("note") else ""
        rows.append(f'<tr id="{prefix}pair-{_e(name)}"><th>{_e(p["a"])} vs {_e(p["b"])}</th><td class="num">{p["wins"]}</td>'
                    f'<td class="num">{p["ties"]}</td><td class="num">{p["losses"]}</td>'
                    f'<td class="num">{_fmt(p["win_rate"], 3)} {_ci(p, 3)}</td>'
                    f'<td class="num"{lc_note}>{_fmt(lc.get("win_rate"), 3)}{" *" if lc.get("note") else ""}</td>'
                    f'<td class="num">{p["inconsistent"]}/{p["n_judged"]}</td>'
                    f'<td class="num">{words[p["a"]]} / {words[p["b"]]}</td></tr>')
    notes = [f"* {p['a']} vs {p['b']}: {p['length_controlled']['note']}" for p in pairwise.values()
             if (p.get("length_controlled") or {}).get("note")]
    return (
        f'<h3>Pairwise (both orders)</h3><table id="{prefix}pairwise"><tr><th>A vs B</th><th>A wins</th><th>ties</th>'
        '<th>A losses</th><th>A\'s win rate (95% CI)</th><th>length-controlled</th><th>order flips</th>'
        '<th>mean words A / B</th></tr>' + "".join(rows) + '</table>'
        '<p class="note">A win rate counts a tie as half a win; a verdict that changes when the answers swap places '
        f'counts as a tie. "{REFERENCE}" is the expected answer, judged as a response (AlpacaEval\'s reference). '
        'Judges favour longer answers: the length-controlled win rate (AlpacaEval 2\'s idea) is the one a logistic '
        'model of the verdicts on the length difference predicts for answers of equal length.'
        + "".join(f"<br>{_e(n)}" for n in notes) + '</p>' + _pairwise_matrix(pairwise, prefix))


def _pairwise_matrix(pairwise: dict, prefix: str = "") -> str:
    """With more than one pair: row model's win rate against the column model, every pair at a glance."""
    if len(pairwise) < 2:
        return ""
    rates = {}
    for p in pairwise.values():
        rates[(p["a"], p["b"])] = p["win_rate"]
        rates[(p["b"], p["a"])] = None if p["win_rate"] is None else round(1 - p["win_rate"], 4)
    models = list(dict.fromkeys(m for pair in rates for m in pair))
    head = "".join(f"<th>{_e(m)}</th>" for m in models)
    rows = "".join(f"<tr><th>{_e(a)}</th>" + "".join(
        f'<td class="num">{_fmt(rates[(a, b)], 3) if (a, b) in rates else ("" if a == b else "·")}</td>' for b in models)
        + "</tr>" for a in models)
    return (f'<h3>Pairwise matrix</h3><table id="{prefix}pairwise-matrix"><tr><th>win rate of ↓ against →</th>'
            f'{head}</tr>{rows}</table>')


def _mt_bench_section(output_dir: Path) -> str:
    """Stage 4 --rubric mt-bench: 1-10 ratings per model, per turn and per category, and the pairs."""
    path = output_dir / MT_SCORES_FILE
    result = _read_optional(path)
    if result is None:
        return ('<p class="note">Not run here. Multi-turn questions (FastChat\'s question.jsonl): '
                "<code>part2_generate_test_responses.py --questions FILE.jsonl</code>, then "
                "<code>part4_local_evaluation.py --rubric mt-bench</code>.</p>")
    if note := _missing(result, "Stage 4 --rubric mt-bench", path):
        return note
    summary = result["summary"]
    turns = sorted({t for s in summary.values() for t in s["turns"]}, key=int)
    head = "".join(f"<th>turn {_e(t)}</th>" for t in turns)
    rows = "".join(
        f'<tr id="mt-{_e(model)}"><th>{_e(model)}</th><td class="num">{_fmt(s["mean"], 2)} <span class="meta">{_ci(s, 2)}</span></td>'
        + "".join(f'<td class="num">{_fmt(s["turns"].get(t, {}).get("mean"), 2)}</td>' for t in turns)
        + f'<td class="num">{s["n_scored"]}/{s["n_total"]}</td></tr>' for model, s in summary.items())
    categories = sorted({c for s in summary.values() for c in s["categories"]})
    category_rows = "".join(
        f'<tr id="mt-category-{_e(c)}"><th>{_e(c)}</th>' + "".join(
            f'<td class="num">{_fmt(s["categories"].get(c, {}).get("mean"), 2)} '
            f'<span class="meta">{_ci(s["categories"].get(c, {}), 2)}</span></td>' for s in summary.values()) + "</tr>"
        for c in categories)
    chart = plot_category_means({m: s["categories"] for m, s in summary.items()}, output_dir / "mt_bench_categories.png", "1-10")
    judge = result["judge"]
    return (_stale(_stage_record(path), path, "stage 4 --rubric mt-bench")
            + f'<p class="meta">Judge: {_e(judge["kind"])}:{_e(judge["model"])}; every answer of every turn rated 1-10 '
            "([[rating]]), math, reasoning and coding against the reference answer; a reply without a readable rating "
            "is counted, never averaged in.</p>"
            + f'<table id="mt-bench"><tr><th>model</th><th>mean (95% CI)</th>{head}<th>rated</th></tr>{rows}</table>'
            + "<h3>By category</h3>"
            + f'<table id="mt-categories"><tr><th>category</th>{"".join(f"<th>{_e(m)}</th>" for m in summary)}</tr>'
            + f"{category_rows}</table>" + _image(chart, "MT-Bench ratings per category")
            + (_pairwise_table(result["pairwise"], "mt-") if result.get("pairwise") else ""))


def _human_section(human: dict | None, scores: dict | None, path: Path) -> str:
    if note := _missing(human, "Human rating (part4_local_evaluation.py --human)", path):
        return note
    ratings = human["ratings"]
    responses = Path(human.get("input") or "")
    stale = ""
    if responses.is_file() and human.get("input_sha256") not in (None, sha256_file(responses)):
        stale = (f'<p class="stale">Out of date: {_e(responses)} changed since these ratings were given; '
                 "they rate other responses.</p>")
    rows = []
    for model in _models({r["model"] for r in ratings}):  # base and finetuned, then any compare model rated
        s = describe([r["rating"] for r in ratings if r["model"] == model], 0)
        rows.append(f'<tr><td>{model}</td><td class="num">{_fmt(s["mean"])}</td><td class="num">{_ci(s)}</td>'
                    f'<td class="num">{s["n_scored"]}</td></tr>')
    text = (stale + "<table><tr><th>model</th><th>mean rating</th><th>95% CI</th><th>rated</th></tr>"
            + "".join(rows) + "</table>")
    if scores and "records" in scores:
        judged = {(m, r["index"]): r["scores"][m]["score"] for r in scores["records"] for m in r["scores"]}
        pairs = [(judged[(r["model"], r["index"])], r["rating"]) for r in ratings
                 if judged.get((r["model"], r["index"])) is not None]
        if pairs:
            a = agreement([p[0] for p in pairs], [p[1] for p in pairs])
            text += (f'<p>Judge vs human on {a["n"]} responses: Spearman {a["spearman"]}, Pearson {a["pearson"]}, '
                     f'mean absolute difference {a["mean_absolute_difference"]}.</p>')
    return text + _chat_preferences(human.get("chat_ratings", []))


def _chat_preferences(chats: list[dict]) -> str:
    """How often each model's answer was preferred in the chat app (stage 5)."""
    picks = Counter(c.get("preference") for c in chats if c.get("preference"))
    if not picks:
        return ""
    counts = ", ".join(f"{name} {n}" for name, n in picks.most_common())
    return (f'<p id="chat-preferences">Preferred in the chat app (part5_chat_app.py), {sum(picks.values())} '
            f"exchanges: {_e(counts)}. Free messages, not the test split: a first impression, not a score.</p>")


def _records_section(output_dir: Path, scores: dict | None, human: dict | None) -> str:
    responses_path = output_dir / RESPONSES_FILE
    if scores and "records" in scores:
        rows = scores["records"]
    else:
        responses = _read_optional(responses_path)
        if not isinstance(responses, list):
            return _missing(None, "Stage 2 (test responses)", responses_path)
        rows = [{"index": i, "instruction": r.get("instruction"), "input": r.get("input"), "output": r.get("output"),
                 "responses": {m: r[response_field(m)] for m in response_columns(r) if response_field(m) in r},
                 "scores": {}} for i, r in enumerate(responses)]
    models = _models(rows[0]["responses"] if rows else {})
    ratings = {(r["model"], r["index"]): r["rating"] for r in (human or {}).get("ratings", [])}
    pair_names = list(_pairs(scores or {}))
    header = ["#", "instruction", "expected"] + [f"{m} {what}" for m in models for what in ("response", "score")]
    if ratings:
        header += ["human base", "human finetuned"]
    header += [f"{name.split(':')[0]} vs {name.split(':')[1]}" for name in pair_names]
    body = []
    for row in rows:
        cells = [f'<td class="num" data-sort="{row["index"]}">{row["index"]}</td>',
                 f"<td>{_e(row['instruction'])}{'<br><i>' + _e(row['input']) + '</i>' if row.get('input') else ''}</td>",
                 f"<td>{_e(row['output'])}</td>"]
        for model in models:
            entry = row["scores"].get(model, {})
            score = entry.get("score")
            title = _e(entry.get("reply") or entry.get("error") or entry.get("parse") or "")
            cells.append(f"<td>{_e(row['responses'].get(model))}</td>")
            cells.append(f'<td class="num" title="{title}" data-sort="{"" if score is None else score}">'
                         f'{"—" if score is None else _e(score)}</td>')
        if ratings:
            for model in RESPONSE_FIELDS:
                rating = ratings.get((model, row["index"]))
                cells.append(f'<td class="num">{"—" if rating is None else rating}</td>')
        for name in pair_names:
            p = (row.get("pairwise") or {}).get(name) or {}
            flag = " (order flip)" if p.get("consistent") is False else ""
            cells.append(f"<td>{_e(p.get('outcome') or '—')}{flag}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    return (_stale(_stage_record(responses_path), responses_path, "stage 2")
            + f'<input id="filter" placeholder="filter records by any text"> <span class="meta">'
            f'<span id="shown">{len(rows)}</span> of {len(rows)} records shown; click a column to sort; '
            f'hover a score for the judge\'s reply</span>'
            f'<table id="records"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')


def build_report(output_dir: str | Path) -> Path:
    """Write `report.html` (and score_histogram.png) from whatever artifacts `output_dir` holds."""
    output_dir = Path(output_dir)
    scores_path, human_path = output_dir / SCORES_FILE, output_dir / HUMAN_FILE
    scores, human = _read_optional(scores_path), _read_optional(human_path, read_human_ratings)
    sections = [
        ("Training (stage 1)", _training_section(output_dir)),
        ("Benchmark (stage 3)", _benchmark_section(output_dir)),
        ("Task metrics (stage 4, no judge)", _task_metrics_section(output_dir)),
        ("By kind of task", _category_section(output_dir, scores if isinstance(scores, dict) and "_error" not in scores else None)),
        ("Judge scores (stage 4)", _judge_section(scores, scores_path, output_dir)),
        ("Multi-turn questions, MT-Bench style (stage 4 --rubric mt-bench)", _mt_bench_section(output_dir)),
        ("Human ratings", _human_section(human, scores if isinstance(scores, dict) else None, human_path)),
        ("Every test record", _records_section(output_dir, scores if isinstance(scores, dict) and "_error" not in scores else None,
                                               human if isinstance(human, dict) and "_error" not in human else None)),
    ]
    page = (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>instructkit report</title>"
            f"<style>{STYLE}</style></head><body><h1>instructkit report</h1>"
            f'<p class="meta">{_e(output_dir.resolve())} · {time.strftime("%Y-%m-%d %H:%M")}</p>'
            + "".join(f"<h2>{_e(title)}</h2>{content}" for title, content in sections)
            + f"<script>{SCRIPT}</script></body></html>")
    return write_text_atomic(output_dir / REPORT_FILE, page)

