"""Stage 4: a judge model scores each response 0-100 against the expected output; the report.

After stage 2, with no arguments (the embedded SmolLM2-135M-Instruct judge through transformers,
each score the expected value of its probabilities over 0-100):
    python part4_local_evaluation.py

The reference setup (LitGPT), an API judge, a local judge's written replies:
    python part4_local_evaluation.py --judge litgpt:meta-llama/Meta-Llama-3-8B-Instruct --pairwise
    python part4_local_evaluation.py --judge openai:gpt-4o-mini --pairwise finetuned:base,finetuned:output
    python part4_local_evaluation.py --judge litgpt:smollm2-135m-instruct      # LitGPT, the reply parsed
    python part4_local_evaluation.py --scoring generate                        # transformers, the reply parsed
    OPENAI_API_KEY=... python part4_local_evaluation.py --judge openai:gpt-4o-mini --concurrency 8
    python part4_local_evaluation.py --judge openai:llama3 --judge-base-url http://localhost:11434/v1

MT-Bench style, after stage 2 --questions (multi-turn, graded 1-10 per turn; pairwise [[A]]/[[B]]/[[C]]):
    python part4_local_evaluation.py --rubric mt-bench --judge openai:gpt-4o --pairwise finetuned:mistral

Rate responses yourself (blind, shuffled, resumable), then compare a judge with your ratings:
    python part4_local_evaluation.py --human
    python part4_local_evaluation.py --compare-with outputs/human_ratings.json

Writes outputs/task_metrics.json first (exact match, ROUGE-L, chrF, BLEU against the expected output:
no judge needed), then outputs/judge_scores.json (every score with the judge's raw reply; per-model
mean, median and 95% bootstrap interval; finetuned - base; pairwise win rates, raw and
length-controlled), judge_scores.meta.json, and
outputs/report.html with every stage's results on one page. A written reply that is not a clear
score is retried once, then kept as null with its text: counted, never averaged in as 0.
Killed halfway? Rerun the same command: finished judgements are kept. A rerun with new responses
judges again; one with a new --pairwise, --limit or --compare-with asks only what is new.
"""

import sys

from instructkit.cli import build_parser, print_config, run_stage
from instructkit.judge.config import JudgeConfig, check


def main(config: JudgeConfig) -> None:
    print_config(config, "stage 4: judge and report")
    check(config)  # bad input refused before torch loads
    from instructkit.judge.human import rate_in_terminal
    from instructkit.judge.mt_bench import judge_mt_bench
    from instructkit.judge.scoring import judge_responses
    from instructkit.report.build import build_report

    if config.human:
        rate_in_terminal(config)
    elif config.rubric == "mt-bench":
        judge_mt_bench(config)
    else:
        judge_responses(config)
    print(f"report: {build_report(config.output_dir)}")


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser(JudgeConfig, __doc__)))
