"""One self-contained HTML page with every stage's results, and the PNG plots beside it.

Each section reads one stage's artifact; a stage that has not run is shown as absent. Plots are
embedded as data URIs so the page can be mailed or opened anywhere on its own.
"""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path

from .artifacts import read_json, write_text_atomic
from .errors import UserError
from .human import HUMAN_FILE
from .judging import RESPONSE_FIELDS, SCORES_FILE
from .models import EMBEDDED_JUDGE
from .plots import plot_score_histograms
from .stats import agreement, describe

REPORT_FILE = "report.html"
RESPONSES_FILE = "test_base_model.json"

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1300px; color: #222; padding: 0 1em; }
h1 { margin-bottom: 0; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
.meta, .absent, .note { color: #666; } .absent { font-style: italic; }
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


def _ci(ci) -> str:
    return f"[{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "n/a"


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _read_optional(path: Path) -> dict | list | None:
    """An artifact if its stage has run; a damaged one is reported on the page, not fatal."""
    if not path.is_file():
        return None
    try:
        return read_json(path)
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


def _training_section(output_dir: Path) -> str:
    path = output_dir / "finetuned" / "training_summary.json"
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
    return f"<table>{table}</table>{image}"


def _benchmark_section(output_dir: Path) -> str:
    path = output_dir / "benchmark_results.json"
    results = _read_optional(path)
    if note := _missing(results, "Stage 3 (benchmark)", path):
        return note
    models = results.get("models", {})
    tasks = sorted({task for per_model in models.values() for task in per_model})
    rows = []
    for task in tasks:
        cells = []
        for model in ("base", "finetuned"):
            r = models.get(model, {}).get(task)
            cells.append(f'<td class="num">{r["accuracy"]:.4f} ± {r["stderr"]:.4f} (n={r["n_questions"]})</td>'
                         if r else "<td>not run</td>")
        diff = results.get("finetuned_minus_base", {}).get(task)
        diff_cell = (f'<td class="num">{diff["accuracy_difference"]:+.4f} (McNemar p={diff["mcnemar"]["p_value"]:.3f})</td>'
                     if diff else "<td>n/a</td>")
        rows.append(f"<tr><td>{_e(task)}</td>{''.join(cells)}{diff_cell}</tr>")
    smoke = '<p class="note">Smoke run (--limit): not a full benchmark.</p>' if results.get("smoke_run") else ""
    return ("<table><tr><th>task</th><th>base accuracy</th><th>finetuned accuracy</th><th>finetuned − base</th></tr>"
            + "".join(rows) + "</table>" + smoke)


def _judge_section(scores: dict | None, path: Path, output_dir: Path) -> str:
    if note := _missing(scores, "Stage 4's judge", path):
        return note
    judge = scores["judge"]
    parts = [f'<p class="meta">Judge: {_e(judge["kind"])}:{_e(judge["model"])}, scoring by {_e(judge["scoring"])}, '
             f'seed {_e(judge["seed"])}. Unscored responses are counted, never averaged in as zeros.</p>',
             EMBEDDED_JUDGE_NOTE if judge["model"] == EMBEDDED_JUDGE else "",
             '<div class="cards">']
    summary = scores["summary"]
    for model in RESPONSE_FIELDS:
        if model in summary:
            s = summary[model]
            parts.append(f'<div class="card" id="judge-{model}">{_e(model)} mean score<b>{_fmt(s["mean"])}</b>'
                         f'95% CI {_ci(s["ci95"])}<br>median {_fmt(s["median"])}, scored {s["n_scored"]}/{s["n_total"]}</div>')
    if "finetuned_minus_base" in summary:
        d = summary["finetuned_minus_base"]
        parts.append(f'<div class="card">finetuned − base<b>{_fmt(d["mean"])}</b>95% CI {_ci(d["ci95"])}'
                     f'<br>over {d["n_pairs"]} paired records</div>')
    parts.append("</div>")
    pairwise = scores.get("pairwise")
    if pairwise:
        words = pairwise["mean_response_words"]
        parts.append(
            f'<h3>Pairwise (both orders)</h3><table><tr><th>finetuned wins</th><th>ties</th><th>finetuned losses</th>'
            f'<th>win rate (95% CI)</th><th>order flips</th><th>mean words base / finetuned</th></tr>'
            f'<tr><td class="num">{pairwise["finetuned_wins"]}</td><td class="num">{pairwise["ties"]}</td>'
            f'<td class="num">{pairwise["finetuned_losses"]}</td>'
            f'<td class="num">{_fmt(pairwise["win_rate"], 3)} {_ci(pairwise["ci95"]) if pairwise["ci95"] else ""}</td>'
            f'<td class="num">{pairwise["inconsistent"]}/{pairwise["n_judged"]}</td>'
            f'<td class="num">{words["base"]} / {words["finetuned"]}</td></tr></table>'
            f'<p class="note">{_e(pairwise["note"])}. A verdict that changes when the answers swap places counts as a tie.</p>')
    if scores.get("agreement"):
        a = scores["agreement"]
        parts.append(f'<p>Agreement with the --compare-with scores: Spearman {a["spearman"]}, Pearson {a["pearson"]}, '
                     f'mean absolute difference {a["mean_absolute_difference"]} over {a["n"]} responses.</p>')
    values = {m: [r["scores"][m]["score"] for r in scores["records"] if m in r["scores"]] for m in RESPONSE_FIELDS}
    values = {m: v for m, v in values.items() if any(x is not None for x in v)}
    if values:
        histogram = plot_score_histograms(values, output_dir / "score_histogram.png")
        parts.append(_image(histogram, "judge score histogram per model"))
    return "".join(parts)


def _human_section(human: dict | None, scores: dict | None, path: Path) -> str:
    if note := _missing(human, "Human rating (part4_local_evaluation.py --human)", path):
        return note
    ratings = human["ratings"]
    rows = []
    for model in RESPONSE_FIELDS:
        s = describe([r["rating"] for r in ratings if r["model"] == model], 0)
        rows.append(f'<tr><td>{model}</td><td class="num">{_fmt(s["mean"])}</td><td class="num">{_ci(s["ci95"])}</td>'
                    f'<td class="num">{s["n_scored"]}</td></tr>')
    text = ("<table><tr><th>model</th><th>mean rating</th><th>95% CI</th><th>rated</th></tr>" + "".join(rows) + "</table>")
    if scores and "records" in scores:
        judged = {(m, r["index"]): r["scores"][m]["score"] for r in scores["records"] for m in r["scores"]}
        pairs = [(judged[(r["model"], r["index"])], r["rating"]) for r in ratings
                 if judged.get((r["model"], r["index"])) is not None]
        if pairs:
            a = agreement([p[0] for p in pairs], [p[1] for p in pairs])
            text += (f'<p>Judge vs human on {a["n"]} responses: Spearman {a["spearman"]}, Pearson {a["pearson"]}, '
                     f'mean absolute difference {a["mean_absolute_difference"]}.</p>')
    return text


def _records_section(output_dir: Path, scores: dict | None, human: dict | None) -> str:
    responses_path = output_dir / RESPONSES_FILE
    if scores and "records" in scores:
        rows = scores["records"]
    else:
        responses = _read_optional(responses_path)
        if not isinstance(responses, list):
            return _missing(None, "Stage 2 (test responses)", responses_path)
        rows = [{"index": i, "instruction": r.get("instruction"), "input": r.get("input"), "output": r.get("output"),
                 "responses": {m: r.get(key) for m, key in RESPONSE_FIELDS.items()}, "scores": {}} for i, r in enumerate(responses)]
    ratings = {(r["model"], r["index"]): r["rating"] for r in (human or {}).get("ratings", [])}
    has_pairwise = any("pairwise" in r for r in rows)
    header = ["#", "instruction", "expected", "base response", "base score", "finetuned response", "finetuned score"]
    if ratings:
        header += ["human base", "human finetuned"]
    if has_pairwise:
        header.append("pairwise (finetuned)")
    body = []
    for row in rows:
        cells = [f'<td class="num" data-sort="{row["index"]}">{row["index"]}</td>',
                 f"<td>{_e(row['instruction'])}{'<br><i>' + _e(row['input']) + '</i>' if row.get('input') else ''}</td>",
                 f"<td>{_e(row['output'])}</td>"]
        for model in RESPONSE_FIELDS:
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
        if has_pairwise:
            p = row.get("pairwise") or {}
            flag = " (order flip)" if p.get("consistent") is False else ""
            cells.append(f"<td>{_e(p.get('outcome') or '—')}{flag}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    return (f'<input id="filter" placeholder="filter records by any text"> <span class="meta">'
            f'<span id="shown">{len(rows)}</span> of {len(rows)} records shown; click a column to sort; '
            f'hover a score for the judge\'s reply</span>'
            f'<table id="records"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')


def build_report(output_dir: str | Path) -> Path:
    """Write `report.html` (and score_histogram.png) from whatever artifacts `output_dir` holds."""
    output_dir = Path(output_dir)
    scores_path, human_path = output_dir / SCORES_FILE, output_dir / HUMAN_FILE
    scores, human = _read_optional(scores_path), _read_optional(human_path)
    sections = [
        ("Training (stage 1)", _training_section(output_dir)),
        ("Benchmark (stage 3)", _benchmark_section(output_dir)),
        ("Judge scores (stage 4)", _judge_section(scores, scores_path, output_dir)),
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

