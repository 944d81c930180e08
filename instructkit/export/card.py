"""The model card (`README.md` with the Hugging Face metadata block) of an exported model: what it
was made from, how to prompt it, and what stages 3 and 4 measured, with their intervals."""

from __future__ import annotations

import html
import re
from pathlib import Path

import yaml

from instructkit.data.responses import RESPONSES_FILE
from instructkit.evaluate.config import RESULTS_FILE
from instructkit.evaluate.stats import fmt, fmt_interval
from instructkit.judge.config import TASK_METRICS_FILE
from instructkit.models.references import HUB_ID, ResolvedModel
from instructkit.runs.artifacts import read_json
from instructkit.runs.fingerprints import stale_on_disk
from instructkit.runs.reuse import meta_path

Z95 = 1.96  # a normal 95% interval from lm-eval's standard error


def evaluation_results(output_dir: Path, model: str) -> tuple[list[dict], list[str]]:
    """Stage 3's benchmark scores and stage 4's task metrics of `model` as rows (source, task,
    metric, value, interval), and a note for each file left out because its inputs changed."""
    rows, notes = [], []
    for path, read in ((output_dir / RESULTS_FILE, _benchmark_rows), (output_dir / TASK_METRICS_FILE, _metric_rows)):
        if not path.is_file():
            continue
        stale = stale_on_disk((_meta(path) or {}).get("inputs"))
        if path.name == TASK_METRICS_FILE:  # scored from stage 2's answers: those must be current too
            stale += stale_on_disk((_meta(output_dir / RESPONSES_FILE) or {}).get("inputs"))
        if stale:
            notes.append(f"{path.name} left out: made before {', '.join(stale)} changed")
        else:
            rows += read(read_json(path), model)
    return rows, notes


def _meta(path: Path) -> dict | None:
    meta = meta_path(path)
    return read_json(meta) if meta.is_file() else None


def _benchmark_rows(results: dict, model: str) -> list[dict]:
    rows = []
    for task, entry in (results.get("models", {}).get(model) or {}).items():
        value, stderr = entry.get("value"), entry.get("stderr")
        interval = [value - Z95 * stderr, value + Z95 * stderr] if None not in (value, stderr) else None
        rows.append({"source": "stage 3 (lm-evaluation-harness)", "task": task, "metric": entry.get("metric"),
                     "value": value, "interval": interval, "n": entry.get("n")})
    return rows


def _metric_rows(result: dict, model: str) -> list[dict]:
    summary, labels = result.get("summary", {}).get(model) or {}, result.get("labels") or {}
    return [{"source": "stage 4 (task metrics)", "task": "test split", "metric": labels.get(name, name),
             "value": summary[name]["mean"], "interval": summary[name].get("ci95"), "n": summary[name].get("n_scored")}
            for name in result.get("metrics", []) if name in summary]


_MARKDOWN = re.compile(r"([\\`*\[\]#|!~])")  # not _: names hold it, and GitHub never reads it inside a word


def _md(value) -> str:
    """Text from a run's artifacts (a task's or a metric's name, a note) as literal Markdown on one
    line: a `|` cannot split a table cell, a `<img>` or `# heading` is shown, never rendered."""
    return _MARKDOWN.sub(r"\\\1", html.escape(" ".join(str(value).split()), quote=False))


def _code(value) -> str:
    """Text as an inline code span, fenced by more backticks than it holds."""
    text = " ".join(str(value).split())
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    return f"{fence} {text} {fence}" if text.startswith("`") or text.endswith("`") else f"{fence}{text}{fence}"


def model_card(*, name: str, base: ResolvedModel, training: dict, preference: dict | None, license_id: str,
               style_name: str, files: dict[str, str], parity: dict | None, results: list[dict], notes: list[str]) -> str:
    """The README.md text: YAML metadata (base model, datasets, license, model-index) and the body."""
    base_model = base.reference
    data = [training.get("data")] + ([preference.get("data")] if preference else [])
    datasets = [d.partition(":")[0] for d in data if isinstance(d, str) and HUB_ID.match(d.partition(":")[0])
                and not Path(d).exists()]  # a hub id, not a local file that looks like one
    metadata: dict = {"library_name": "transformers", "license": license_id, "pipeline_tag": "text-generation",
                      "tags": ["instructkit", "lora" if not training.get("settings", {}).get("quantization") else "qlora",
                               *(["dpo"] if preference else []), *(["gguf"] if any(f.endswith(".gguf") for f in files) else [])]}
    if base.source == "hub":
        metadata["base_model"] = base_model
    if datasets:
        metadata["datasets"] = datasets
    scored = [r for r in results if r["value"] is not None]
    if scored:
        metadata["model-index"] = [{"name": name, "results": [
            {"task": {"type": "text-generation"}, "dataset": {"name": r["task"], "type": r["task"]},
             "metrics": [{"type": r["metric"], "value": round(r["value"], 4), "name": f"{r['metric']} ({r['source']})"}]}
            for r in scored]}]
    lines = ["---", yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
             f"# {name}", "",
             f"A finetune of {_code(base_model)} made with instructkit: LoRA{' on a 4-bit base (QLoRA, merged into the unquantized weights)' if 'qlora' in metadata['tags'] else ''} "
             f"on {_code(training.get('data') or 'the embedded default records')}"
             + (f", then preference-tuned ({_md(preference.get('settings', {}).get('method', 'dpo'))}) on "
                f"{_code(preference.get('data'))}" if preference else "")
             + f". Prompt format: `{style_name}` (the chat template in `merged/` and in each GGUF file renders it).", "",
             "## Files", "", "| file | what it is for |", "|---|---|"]
    lines += [f"| `{file}` | {use} |" for file, use in files.items()]
    lines += ["", "## Evaluation", ""]
    if scored:
        lines += ["| source | task | metric | value | 95% interval | n |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['source']} | {_md(r['task'])} | {_md(r['metric'])} | {fmt(r['value'], '.4f')} | "
                  f"{fmt_interval({'ci95': r['interval']}, '.4f', missing='n/a')} | {r['n'] if r['n'] is not None else 'n/a'} |"
                  for r in scored]
    else:
        lines.append("No current results of stages 3 and 4 for this model (run them before exporting).")
    lines += [f"- {_md(note)}" for note in notes]
    if parity:
        lines += ["", "## Does the shipped model answer as the trained one?", "",
                  f"Greedy answers to {parity['records']} test records, compared with stage 2's (`parity.json`):", "",
                  "| artifact | identical answers | identical prompt ids |", "|---|---|---|"]
        lines += [f"| {a['artifact']} | {a['identical']}/{a['records']} | {a['prompt_ids_identical']}/{a['records']} |"
                  for a in parity["artifacts"]]
    return "\n".join(lines) + "\n"
