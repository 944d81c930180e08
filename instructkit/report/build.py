"""One self-contained HTML page with every stage's results, and the PNG plots beside it.

Each section reads one stage's artifact; a stage that has not run is shown as absent. Plots are
embedded as data URIs so the page can be mailed or opened anywhere on its own.

This module computes what each section shows (numbers, rows, which sections exist); the markup is in
the Jinja templates under `templates/` (`report.html.j2` and one template per section), rendered
with autoescaping on, so a value from an artifact (a response, a model's name, a judge's reply) is
always text on the page. The stylesheet and the script are `templates/report.css` and `report.js`,
inlined into the page, which a Content-Security-Policy confines to them and to data: images.
"""

from __future__ import annotations

import base64
import hashlib
import html
import os
import time
from collections import Counter
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined, TemplateError, select_autoescape
from markupsafe import Markup

from instructkit.data.responses import RESPONSE_FIELDS, RESPONSES_FILE, response_columns, response_field
from instructkit.errors import UserError
from instructkit.evaluate.config import RESULTS_FILE
from instructkit.evaluate.metrics import TEXT_METRICS
from instructkit.evaluate.stats import STEPS, agreement, describe, fmt, fmt_interval, paired_difference
from instructkit.evaluate.task_metrics import LEAD
from instructkit.export.config import EXPORT_DIR, MANIFEST_FILE, PARITY_FILE
from instructkit.judge.config import HUMAN_FILE, MT_SCORES_FILE, REFERENCE, SCORES_FILE, TASK_METRICS_FILE
from instructkit.judge.human import read_human_ratings
from instructkit.models.references import EMBEDDED_JUDGE, PREFERENCE_DIR
from instructkit.report.plots import plot_category_changes, plot_category_means, plot_score_histograms
from instructkit.runs.artifacts import read_json, write_text_atomic
from instructkit.runs.fingerprints import sha256_file, stale_on_disk
from instructkit.runs.reuse import meta_path
from instructkit.train.config import SUMMARY_FILE

REPORT_FILE = "report.html"
TEMPLATE = "report.html.j2"


def _ci(summary: dict, spec: str = ".1f") -> str:
    """A summary's 95% interval, or why it has none."""
    return fmt_interval(summary, spec, "[{}, {}]", "none (all values equal)", "n/a")


def _text(value) -> str:
    """A value shown as text: nothing for a missing one."""
    return "" if value is None else value


def _escaped(value) -> Markup:
    """Every value the templates print, escaped as html.escape escapes it (`&#x27;`, `&quot;`: the
    entities the page has always had, and that tests look for); markup the templates made (a macro's
    output) passes as it is."""
    if hasattr(value, "__html__"):
        return value
    return Markup(html.escape(str(value)))


def _inline(content: str, tag: str) -> Markup:
    """This package's own stylesheet or script, placed inside <style> or <script>: refused if it holds
    what would end that element early (or send the parser into a script's escaped state), since what
    follows would then be read as markup."""
    lowered = content.lower()
    for unsafe in (f"</{tag}", "<!--", "<script"):
        if unsafe in lowered:
            raise TemplateError(f"the report's inlined {tag} holds {unsafe!r}, which could end its <{tag}> early")
    return Markup(content)


def _csp_hash(content: str) -> str:
    """The Content-Security-Policy source that lets exactly this inlined stylesheet or script run."""
    return f"'sha256-{base64.b64encode(hashlib.sha256(str(content).encode()).digest()).decode()}'"


def _environment() -> Environment:
    """The templates, found through the installed package (importlib.resources), not the checkout."""
    env = Environment(loader=PackageLoader("instructkit.report", "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True),
                      undefined=StrictUndefined, finalize=_escaped, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(fmt=fmt, ci=_ci, text=_text, inline=_inline, csp_hash=_csp_hash)
    env.globals.update(reference=REFERENCE)
    return env


_ENV = _environment()


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_IMAGE_BYTES = 8 << 20  # our plots are 20-100 kB


def _plot_problem(path: Path, run: Path) -> str:
    """Why a plot of the run folder is not embedded in a page meant to be shared ("" if it is): a
    folder someone sent may link `loss.png`, or a folder above it, to any file of the reader's."""
    if path.is_symlink():
        return "a link"
    if not path.resolve().is_relative_to(run.resolve()):
        return "outside the run folder (a linked folder)"
    if not path.is_file():
        return "not a regular file"
    if path.stat().st_size > MAX_IMAGE_BYTES:
        return f"larger than {MAX_IMAGE_BYTES >> 20} MB"
    with open(path, "rb") as file:
        return "" if file.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE else "not a PNG image"


def _image(path: Path, alt: str, run: Path) -> dict:
    if problem := _plot_problem(path, run):
        return {"alt": alt, "data": "", "refused": f"{path.relative_to(run)} is {problem}"}
    return {"alt": alt, "data": base64.b64encode(path.read_bytes()).decode()}


def _read_optional(path: Path, read=read_json) -> dict | list | None:
    """An artifact if its stage has run; a damaged one is reported on the page, not fatal."""
    if not path.is_file():
        return None
    try:
        return read(path)
    except UserError as exc:
        return {"_error": str(exc)}


def _missing(artifact, stage: str, path: Path) -> dict | None:
    """What to show instead of a section whose artifact is absent or damaged; None if it is fine."""
    if artifact is None:
        return {"absent": {"stage": stage, "path": str(path)}}
    if isinstance(artifact, dict) and "_error" in artifact:
        return {"absent": {"error": artifact["_error"]}}
    return None


def _changed_inputs(record: dict | None, what: Path) -> list[str]:
    """What changed since `what` was made, per its record: inputs, or the file itself."""
    if not isinstance(record, dict) or "inputs" not in record:
        return []
    changed = stale_on_disk(record["inputs"])
    if "output_sha256" in record and what.is_file() and sha256_file(what) != record["output_sha256"]:
        changed.append(f"{what.name} itself")
    return changed


def _stale(record: dict | None, what: Path, rerun: str, upstream: list[str] = ()) -> dict | None:
    """A warning above a section whose inputs changed after it was made (a retrained adapter under
    old responses, say), or whose inputs are themselves out of date (`upstream`); None while
    everything it was made from is as it was. `changed` is None where the record has no inputs."""
    if isinstance(record, dict) and "inputs" not in record:
        return {"file": what.name, "changed": None}
    changed = _changed_inputs(record, what) + [f"{name} (behind {RESPONSES_FILE})" for name in upstream]
    return {"file": what.name, "changed": changed, "rerun": rerun} if changed else None


def _stage_record(path: Path) -> dict | None:
    record = _read_optional(meta_path(path))
    return record if isinstance(record, dict) and "_error" not in record else None


def _training_section(output_dir: Path) -> dict:
    path = output_dir / "finetuned" / SUMMARY_FILE
    summary = _read_optional(path)
    if missing := _missing(summary, "Stage 1 (finetuning)", path):
        return missing
    hp = summary.get("hyperparameters", {})
    rows = [("base model", summary.get("base_model")), ("prompt style", summary.get("prompt_style")),
            ("records train / val / test", " / ".join(str(v) for v in summary.get("n_records", {}).values())),
            ("optimizer steps", summary.get("steps")), ("learning rate", hp.get("lr")),
            ("validation loss before → after",
             f"{fmt(summary.get('val_loss_before'), '.3f')} → {fmt(summary.get('val_loss_after'), '.3f')}"),
            ("tokens/s", summary.get("tokens_per_second")), ("wall time (s)", summary.get("wall_time_s")),
            ("device", summary.get("device"))]
    loss_png = output_dir / "finetuned" / "loss.png"
    return {"template": "training.html.j2", "stale": _stale(summary, path, "stage 1"), "rows": rows,
            "loss_image": _image(loss_png, "training and validation loss", output_dir) if os.path.lexists(loss_png) else None}


def _preference_section(output_dir: Path) -> dict:
    """Stage 1b, when it ran: the pairs, the method, and the held-out DPO metrics before and after."""
    path = output_dir / PREFERENCE_DIR / SUMMARY_FILE
    summary = _read_optional(path)
    if summary is None:
        return {"template": "preference.html.j2", "not_run": True}
    if missing := _missing(summary, "Stage 1b (preference tuning)", path):
        return missing
    pairs, method = summary["pairs"], summary["method"]
    before, after = summary.get("val_before") or {}, summary.get("val_after") or {}
    rows = [("started from", summary.get("sft_adapter")), ("method", f"{method['loss_type']} ({method['trainer']}), beta {method['beta']}"),
            ("pairs train / held out", f"{pairs['train']} / {pairs['val']}"),
            ("pairs by source", ", ".join(f"{kind} {n}" for kind, n in pairs["by_source"].items())),
            ("optimizer steps", summary.get("steps")), ("seconds per step", summary.get("seconds_per_step"))]
    rows += [(f"held-out {label} before → after", f"{fmt(before.get(key), '.3f')} → {fmt(after.get(key), '.3f')}")
             for key, label in (("loss", "loss"), ("margin", "reward margin"), ("accuracy", "preference accuracy"))]
    image = output_dir / PREFERENCE_DIR / "preference.png"
    return {"template": "preference.html.j2", "not_run": False, "stale": _stale(summary, path, "stage 1b"), "rows": rows,
            "test_prompts": pairs["n_test_prompts"] if pairs.get("test_prompts_kept") else 0,
            "image": (_image(image, "loss and held-out reward margin (and DPO's preference accuracy)", output_dir)
                      if os.path.lexists(image) else None)}


def _benchmark_section(output_dir: Path) -> dict:
    path = output_dir / RESULTS_FILE
    results = _read_optional(path)
    if missing := _missing(results, "Stage 3 (benchmark)", path):
        return missing
    models = results.get("models", {})
    columns = [*RESPONSE_FIELDS, *(m for m in models if m not in RESPONSE_FIELDS)]  # base, finetuned, preference
    steps = [(step, before, after) for step, (before, after) in STEPS.items() if step in results and after in columns]
    tasks = list(dict.fromkeys(task for per_model in models.values() for task in per_model))
    rows = []
    for task in tasks:
        rows.append({"task": task, "subtask": False,
                     "results": [models.get(model, {}).get(task) for model in columns],
                     "differences": [results[step].get(task) for step, _, _ in steps]})
        subtasks = list(dict.fromkeys(sub for m in models.values() for sub in m.get(task, {}).get("subtasks", {})))
        rows += [{"task": sub, "subtask": True,
                  "results": [models.get(m, {}).get(task, {}).get("subtasks", {}).get(sub) for m in columns]}
                 for sub in subtasks]
    return {"template": "benchmark.html.j2", "stale": _stale(_stage_record(path), path, "stage 3"), "rows": rows,
            "columns": columns, "steps": [f"{after} − {before}" for _, before, after in steps],
            "smoke_run": bool(results.get("smoke_run"))}


def _task_metrics_section(output_dir: Path) -> dict:
    path = output_dir / TASK_METRICS_FILE
    result = _read_optional(path)
    if missing := _missing(result, "Stage 4's task metrics", path):
        return missing
    names, labels, lead = result["metrics"], _labels(result), result.get("lead", LEAD)
    rows = [{"model": model, "n": summary[lead]["n_scored"], "metrics": [summary[m] for m in names]}
            for model, summary in result["summary"].items()]
    responses = output_dir / RESPONSES_FILE
    upstream = _changed_inputs(_stage_record(responses), responses)
    return {"template": "task_metrics.html.j2",
            "stale": _stale(_stage_record(path), path, "stages 2 and 4" if upstream else "stage 4", upstream),
            "metric_names": [labels[m] for m in names], "rows": rows,
            "differences": [(after, before, [result[step][m] for m in names])
                            for step, (before, after) in STEPS.items() if step in result],
            "corpus": [(model, s["corpus"]) for model, s in result["summary"].items()],
            "lead": labels[lead], "losses": _largest_losses(result, output_dir, lead)}


def _export_section(output_dir: Path) -> dict:
    path = output_dir / EXPORT_DIR / PARITY_FILE
    parity = _read_optional(path)
    if missing := _missing(parity, "Stage 6 (export)", path):
        return missing
    manifest = _read_optional(path.with_name(MANIFEST_FILE)) or {}
    return {"template": "export.html.j2", "stale": _stale(manifest if isinstance(manifest, dict) else None, path, "stage 6"),
            "records": parity["records"], "max_new_tokens": parity["max_new_tokens"], "precision": parity["precision"],
            "model": parity["compared_with"], "runtimes": parity["template_checks"]["runtimes"],
            "rows": [{**a, "first": (a["differences"] or [None])[0]} for a in parity["artifacts"]]}


def _labels(result: dict) -> dict[str, str]:
    """Each metric's name in tables (a task_metrics.json from before --metric has the text metrics' only)."""
    return result.get("labels") or {name: label for name, (label, _) in TEXT_METRICS.items()}


def _largest_losses(result: dict, output_dir: Path, metric: str, shown: int = 5) -> list[dict] | None:
    """The records where the finetune moved furthest from the expected output against the base
    (by the run's lead metric), worst first; None where there is no base and finetune to compare."""
    responses = _read_optional(output_dir / RESPONSES_FILE)
    if not isinstance(responses, list) or "finetuned_minus_base" not in result:
        return None
    changes = [(row["finetuned"][metric] - row["base"][metric], row["index"]) for row in result["records"]
               if row.get("base") and row.get("finetuned") and row["index"] < len(responses)
               and row["base"].get(metric) is not None and row["finetuned"].get(metric) is not None]
    losses = sorted(c for c in changes if c[0] < 0)[:shown]
    reasons = {row["index"]: row.get("reasons") or {} for row in result["records"]}
    return [{"index": index, "change": change, "instruction": responses[index].get("instruction"),
             "output": responses[index].get("output"), "base": responses[index].get(RESPONSE_FIELDS["base"]),
             "finetuned": responses[index].get(RESPONSE_FIELDS["finetuned"]),
             "why": reasons[index].get("finetuned", {}).get(metric)} for change, index in losses]


def _category_section(output_dir: Path, scores: dict | None) -> dict:
    """Every model's lead metric (ROUGE-L unless --metric named another) and judge score per kind of
    task (the records' `category`), and the finetune's paired change against the base, worst first:
    which kinds of task got worse."""
    responses, metrics = _read_optional(output_dir / RESPONSES_FILE), _read_optional(output_dir / TASK_METRICS_FILE)
    if not isinstance(responses, list) or not isinstance(metrics, dict) or "_error" in metrics:
        return {}
    lead = metrics.get("lead", LEAD)
    by_category: dict[str, list[int]] = {}
    for row in metrics["records"]:
        if row["index"] < len(responses) and isinstance(category := responses[row["index"]].get("category"), str):
            by_category.setdefault(category, []).append(row["index"])
    if not by_category:
        return {"template": "categories.html.j2", "rows": []}
    measured = {row["index"]: row for row in metrics["records"]}
    judged = {r["index"]: r["scores"] for r in (scores or {}).get("records", [])}
    models = [m for m in _models(metrics["summary"]) if m in metrics["summary"]]

    def values(model: str, indexes: list[int], judge: bool = False) -> list[float | None]:
        if judge:
            return [judged.get(i, {}).get(model, {}).get("score") for i in indexes]
        return [(measured[i].get(model) or {}).get(lead) for i in indexes]

    label = _labels(metrics)[lead]
    changes = {c: paired_difference(values("base", ix), values("finetuned", ix), 0) for c, ix in by_category.items()
               if {"base", "finetuned"} <= set(models)}
    order = sorted(by_category, key=lambda c: (changes[c]["mean"] if changes and changes[c]["mean"] is not None else 0, c))
    rows = [{"category": c, "n": len(by_category[c]),
             "lead": [describe(values(m, by_category[c]), 0)["mean"] for m in models],
             "change": changes.get(c),
             "judge": [describe(values(m, by_category[c], True), 0)["mean"] for m in models] if judged else []}
            for c in order]
    chart = (_image(plot_category_changes({c: changes[c] for c in order}, output_dir / "category_changes.png", label),
                    f"finetuned minus base {label} per category", output_dir) if changes else None)
    return {"template": "categories.html.j2", "models": models, "paired": bool(changes), "judged": bool(judged),
            "rows": rows, "chart": chart, "lead": label}


def _models(columns) -> list[str]:
    """Base and finetuned, then any --compare models, in that order."""
    return response_columns(m for m in columns if m not in STEPS)


def _pairs(scores: dict) -> dict:
    """The pairwise summaries by pair ("finetuned:base"); a file from before pairs were named has none to show."""
    pairwise = scores.get("pairwise") or {}
    return {name: p for name, p in pairwise.items() if ":" in name and isinstance(p, dict)}


def _judge_section(scores: dict | None, path: Path, output_dir: Path) -> dict:
    if missing := _missing(scores, "Stage 4's judge", path):
        return missing
    judge = scores["judge"]
    responses = output_dir / RESPONSES_FILE
    upstream = _changed_inputs(_stage_record(responses), responses)
    summary = scores["summary"]
    values = {m: [r["scores"][m]["score"] for r in scores["records"] if m in r["scores"]] for m in _models(summary)}
    values = {m: v for m, v in values.items() if any(x is not None for x in v)}
    histogram = plot_score_histograms(values, output_dir / "score_histogram.png") if values else None
    pairwise = _pairs(scores)
    return {"template": "judge.html.j2",
            "stale": _stale(_stage_record(path), path, "stages 2 and 4" if upstream else "stage 4", upstream),
            "judge": judge, "embedded_judge": judge["model"] == EMBEDDED_JUDGE,
            "cards": [(model, summary[model]) for model in _models(summary) if model in summary],
            "differences": [(after, before, summary[step]) for step, (before, after) in STEPS.items() if step in summary],
            "pairwise": _pairwise_table(pairwise) if pairwise else None,
            "agreement": scores.get("agreement"),
            "histogram": _image(histogram, "judge score histogram per model", output_dir) if histogram else None}


def _pairwise_table(pairwise: dict, prefix: str = "") -> dict:
    """Each pair's verdicts and, with more than one pair, the matrix of the row model's win rate
    against the column model (element ids start with `prefix`, so two such tables can share the page)."""
    matrix = None
    if len(pairwise) >= 2:
        rates = {}
        for p in pairwise.values():
            rates[(p["a"], p["b"])] = p["win_rate"]
            rates[(p["b"], p["a"])] = None if p["win_rate"] is None else round(1 - p["win_rate"], 4)
        matrix = {"models": list(dict.fromkeys(m for pair in rates for m in pair)), "rates": rates}
    return {"pairs": pairwise, "prefix": prefix, "matrix": matrix}


def _mt_bench_section(output_dir: Path) -> dict:
    """Stage 4 --rubric mt-bench: 1-10 ratings per model, per turn and per category, and the pairs."""
    path = output_dir / MT_SCORES_FILE
    result = _read_optional(path)
    if result is None:
        return {"template": "mt_bench.html.j2", "not_run": True}
    if missing := _missing(result, "Stage 4 --rubric mt-bench", path):
        return missing
    summary = result["summary"]
    chart = plot_category_means({m: s["categories"] for m, s in summary.items()}, output_dir / "mt_bench_categories.png",
                                "1-10")
    return {"template": "mt_bench.html.j2", "not_run": False,
            "stale": _stale(_stage_record(path), path, "stage 4 --rubric mt-bench"),
            "judge": result["judge"], "summary": summary,
            "turns": sorted({t for s in summary.values() for t in s["turns"]}, key=int),
            "categories": sorted({c for s in summary.values() for c in s["categories"]}),
            "chart": _image(chart, "MT-Bench ratings per category", output_dir),
            "pairwise": _pairwise_table(result["pairwise"], "mt-") if result.get("pairwise") else None}


def _human_section(human: dict | None, scores: dict | None, path: Path) -> dict:
    if missing := _missing(human, "Human rating (part4_local_evaluation.py --human)", path):
        return missing
    ratings = human["ratings"]
    responses = Path(human.get("input") or "")
    changed = responses.is_file() and human.get("input_sha256") not in (None, sha256_file(responses))
    # base and finetuned, then any compare model rated
    rows = [(model, describe([r["rating"] for r in ratings if r["model"] == model], 0))
            for model in _models({r["model"] for r in ratings})]
    judge_vs_human = None
    if scores and "records" in scores:
        judged = {(m, r["index"]): r["scores"][m]["score"] for r in scores["records"] for m in r["scores"]}
        pairs = [(judged[(r["model"], r["index"])], r["rating"]) for r in ratings
                 if judged.get((r["model"], r["index"])) is not None]
        if pairs:
            judge_vs_human = agreement([p[0] for p in pairs], [p[1] for p in pairs])
    # How often each model's answer was preferred in the chat app (stage 5).
    picks = Counter(c.get("preference") for c in human.get("chat_ratings", []) if c.get("preference"))
    return {"template": "human.html.j2", "changed_input": str(responses) if changed else None, "rows": rows,
            "agreement": judge_vs_human,
            "chat": {"total": sum(picks.values()), "counts": picks.most_common()} if picks else None}


def _records_section(output_dir: Path, scores: dict | None, human: dict | None) -> dict:
    responses_path = output_dir / RESPONSES_FILE
    if scores and "records" in scores:
        records = scores["records"]
    else:
        responses = _read_optional(responses_path)
        if not isinstance(responses, list):
            return _missing(None, "Stage 2 (test responses)", responses_path)
        records = [{"index": i, "instruction": r.get("instruction"), "input": r.get("input"), "output": r.get("output"),
                    "responses": {m: r[response_field(m)] for m in response_columns(r) if response_field(m) in r},
                    "scores": {}} for i, r in enumerate(responses)]
    models = _models(records[0]["responses"] if records else {})
    ratings = {(r["model"], r["index"]): r["rating"] for r in (human or {}).get("ratings", [])}
    pair_names = list(_pairs(scores or {}))
    header = ["#", "instruction", "expected"] + [f"{m} {what}" for m in models for what in ("response", "score")]
    if ratings:
        header += ["human base", "human finetuned"]
    header += [f"{name.split(':')[0]} vs {name.split(':')[1]}" for name in pair_names]
    rows = []
    for record in records:
        entries = {model: record["scores"].get(model, {}) for model in models}
        pairs = [(record.get("pairwise") or {}).get(name) or {} for name in pair_names]
        rows.append({
            "index": record["index"], "instruction": record["instruction"], "input": record.get("input"),
            "output": record["output"],
            "models": [{"response": record["responses"].get(model), "score": entry.get("score"),
                        "judge_says": entry.get("reply") or entry.get("error") or entry.get("parse") or ""}
                       for model, entry in entries.items()],
            "human": [ratings.get((model, record["index"])) for model in RESPONSE_FIELDS] if ratings else [],
            "pairs": [{"outcome": p.get("outcome"), "consistent": p.get("consistent")} for p in pairs],
        })
    return {"template": "records.html.j2", "stale": _stale(_stage_record(responses_path), responses_path, "stage 2"),
            "header": header, "rows": rows}


def _section(build) -> dict:
    """A section, or in its place why it could not be built: an artifact edited by hand or cut
    short (a key missing, a value of another type) costs its own section, not the whole report."""
    try:
        return build()
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        return {"absent": {"error": f"an artifact of this section is not as its stage writes it "
                                    f"({type(exc).__name__}: {exc}); rerun the stage to write it again"}}


def build_report(output_dir: str | Path) -> Path:
    """Write `report.html` (and score_histogram.png) from whatever artifacts `output_dir` holds."""
    output_dir = Path(output_dir)
    scores_path, human_path = output_dir / SCORES_FILE, output_dir / HUMAN_FILE
    scores, human = _read_optional(scores_path), _read_optional(human_path, read_human_ratings)
    scores_ok = scores if isinstance(scores, dict) and "_error" not in scores else None
    human_ok = human if isinstance(human, dict) and "_error" not in human else None
    sections = [
        ("Training (stage 1)", lambda: _training_section(output_dir)),
        ("Preference tuning (stage 1b)", lambda: _preference_section(output_dir)),
        ("Benchmark (stage 3)", lambda: _benchmark_section(output_dir)),
        ("Task metrics (stage 4, no judge)", lambda: _task_metrics_section(output_dir)),
        ("By kind of task", lambda: _category_section(output_dir, scores_ok)),
        ("Judge scores (stage 4)", lambda: _judge_section(scores, scores_path, output_dir)),
        ("Multi-turn questions, MT-Bench style (stage 4 --rubric mt-bench)", lambda: _mt_bench_section(output_dir)),
        ("Human ratings", lambda: _human_section(human, scores if isinstance(scores, dict) else None, human_path)),
        ("Export (stage 6): does the shipped model answer as the trained one?", lambda: _export_section(output_dir)),
        ("Every test record", lambda: _records_section(output_dir, scores_ok, human_ok)),
    ]
    page = _ENV.get_template(TEMPLATE).render(
        run_dir=str(output_dir.resolve()), built=time.strftime("%Y-%m-%d %H:%M"),
        sections=[{"title": title, "template": None, "absent": None} | _section(build) for title, build in sections])
    return write_text_atomic(output_dir / REPORT_FILE, page)
