"""Stage 4's settings: the judge, what it is asked, and the human rater."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from instructkit.config import SEED, APIClient, LocalModel, Reruns, setting_problems
from instructkit.data import packaged
from instructkit.data.responses import RESPONSES_FILE, read_responses, responses_path
from instructkit.errors import problems_error
from instructkit.evaluate.metrics import TIME_LIMIT as METRIC_TIME_LIMIT
from instructkit.evaluate.metrics import resolve_metrics
from instructkit.models.references import EMBEDDED_JUDGE, backend_kind

SCORES_FILE = "judge_scores.json"
TASK_METRICS_FILE = "task_metrics.json"
MT_SCORES_FILE = "mt_bench_scores.json"
HUMAN_FILE = "human_ratings.json"
REFERENCE = "output"  # the expected answer, as a column a model can be compared with (AlpacaEval's setup)
EACH_STEP = "each-step"  # --pairwise alone: finetuned:base, and preference:finetuned after stage 1b
NO_JUDGE = "none"  # --judge none: the task metrics only
SQL_DATABASES = packaged("sql")  # the default text-to-SQL data's database, as a script


@dataclass
class JudgeConfig(Reruns, LocalModel, APIClient):
    input: str = field(default="", metadata={"help": f"stage 2's responses to score (default: <output-dir>/{RESPONSES_FILE})"})
    judge: str = field(default=f"hf:{EMBEDDED_JUDGE}", metadata={"help": f"hf:<model> (transformers), litgpt:<model> or openai:<model>; {NO_JUDGE}: the task metrics only"})
    metric: list[str] = field(default_factory=list, metadata={"help": "a task metric to compute, and lead with, beside exact match, ROUGE-L, chrF and BLEU (repeatable): sql-execution (the predicted and the gold query run on the record's database, results compared), sql-exact-set-match (their clauses compared, sqlglot), or path/to/file.py:function, your function of (response, record) returning a number on 0-100 or a dict of them (docs/domain-metrics.md)"})
    metric_time_limit: float = field(default=METRIC_TIME_LIMIT, metadata={"help": "seconds a --metric path/to/file.py:function may take on one answer; past it the answer scores 0 with the reason", "exclusive_minimum": 0})
    sql_databases: str = field(default=SQL_DATABASES, metadata={"help": "where sql-execution finds a record's database (its db_id): <db_id>.sqlite, <db_id>.db, Spider's <db_id>/<db_id>.sqlite, or a <db_id>.sql script (default: the shipped text-to-SQL data's)"})
    judge_base_url: str = field(default="", metadata={"help": "an OpenAI-compatible server for openai: judges (vLLM, Ollama, litgpt serve); the key comes from OPENAI_API_KEY"})
    scoring: str = field(default="auto", metadata={"help": "generate: parse the judge's reply; probability: expected score from its token probabilities (hf: judges; always a number, no retries); auto: probability for hf: judges, generate for the others (bench/judge_scoring.py)", "choices": ["auto", "generate", "probability"]})
    pairwise: str = field(default="", metadata={"nargs": "?", "const": EACH_STEP, "help": f"also ask which of two answers is better, in both orders (MT-Bench style): --pairwise alone compares finetuned with base (and preference with finetuned after stage 1b); --pairwise A:B[,C:D] any response columns, or {REFERENCE} (the expected answer, as AlpacaEval's reference); the win rate is A's"})
    rubric: str = field(default="default", metadata={"help": "default: 0-100 against the expected output of stage 2's test records; mt-bench: stage 2 --questions answers graded per turn 1-10 ([[rating]], against the reference answer for math, reasoning and coding), --pairwise as [[A]]/[[B]]/[[C]], into mt_bench_scores.json", "choices": ["default", "mt-bench"]})
    compare_with: str = field(default="", metadata={"help": "another judge_scores.json or human_ratings.json to measure agreement with"})
    human: bool = field(default=False, metadata={"help": "rate responses yourself in the terminal (blind, shuffled) instead of running the judge"})
    limit: int = field(default=0, metadata={"help": "score only the first N records (0: all)", "minimum": 0})
    batch_size: int = field(default=8, metadata={"help": "prompts per batch for local judges", "minimum": 1})
    max_new_tokens: int = field(default=16, metadata={"help": "longest judge reply, in tokens (the reply is one number or word)", "minimum": 1})
    seed: int = field(default=0, metadata={"help": "judge seed (API), human-rating order and bootstrap resampling", **SEED})


def resolve_scoring(config: JudgeConfig) -> str:
    """--scoring auto: probability for hf: judges (a number for every response from one forward
    pass, where a small judge's reply often is no number), generate for the others."""
    if config.judge == NO_JUDGE:
        return "none"
    if config.scoring != "auto":
        return config.scoring
    return "probability" if backend_kind(config.judge) == "hf" else "generate"


def check_settings(config: JudgeConfig) -> None:
    problems = setting_problems(config)
    if resolve_scoring(config) == "probability" and backend_kind(config.judge) != "hf":
        problems.append("--scoring probability reads the judge's token probabilities: use an hf: judge "
                        f"(for example --judge hf:{EMBEDDED_JUDGE})")
    if config.judge == NO_JUDGE and (config.pairwise or config.compare_with or config.rubric != "default"):
        problems.append(f"--judge {NO_JUDGE} computes the task metrics only: --pairwise, --compare-with and "
                        "--rubric mt-bench need a judge")
    if config.metric and (config.human or config.rubric != "default"):
        problems.append("--metric scores stage 2's answers to the test records (--rubric default), not --human "
                        "ratings or MT-Bench questions")
    if problems:
        raise problems_error(problems)
    resolve_metrics(config.metric, Path(config.sql_databases), config.metric_time_limit)  # a bad spec or metric file, before torch loads


def check(config: JudgeConfig) -> None:
    """Refuse bad settings, then a bad responses file, before torch loads."""
    check_settings(config)
    if config.rubric == "default":
        read_responses(responses_path(config.output_dir, config.input))
