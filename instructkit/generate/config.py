"""Stage 2's settings: which models answer the test split (or multi-turn questions), and how."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from instructkit.config import (
    MODEL_CHOICES,
    APIClient,
    CompareModels,
    Finetune,
    LocalModel,
    PromptLimit,
    Reruns,
    setting_problems,
)
from instructkit.data.questions import EMBEDDED_QUESTIONS, MT_RESPONSES_FILE, questions_file, read_questions
from instructkit.data.records import split_file, validate_records
from instructkit.errors import problems_error
from instructkit.models.references import require_adapter, run_adapter
from instructkit.runs.artifacts import read_json


@dataclass
class GenerationConfig(Reruns, Finetune, LocalModel, PromptLimit, CompareModels, APIClient):
    test_file: str = field(default="", metadata={"help": "Alpaca records to answer (default: stage 1's split, <output-dir>/data/test.json)"})
    models: str = field(default="both", metadata={"help": "which models answer", "choices": list(MODEL_CHOICES)})
    max_new_tokens: int = field(default=128, metadata={"help": "longest response, in tokens", "minimum": 1})
    batch_size: int = field(default=32, metadata={"help": "prompts per generate() call (grouped by length); decoding streams the weights once per step for the whole batch, so on a CPU 32 answers about 2x faster than 8 (bench/generation_speed.py)", "minimum": 1})
    limit: int = field(default=0, metadata={"help": "answer only the first N test records (0: all)", "minimum": 0})
    engine: str = field(default="transformers", metadata={"help": "transformers (default, tested) or vllm (GPU, if installed)", "choices": ["transformers", "vllm"]})
    questions: str = field(default="", metadata={"help": f"a FastChat question.jsonl (question_id, category, turns, optional reference), or {EMBEDDED_QUESTIONS} (our sample): answer its conversations turn by turn, each model seeing its own earlier answers, into <output-dir>/{MT_RESPONSES_FILE} (MT-Bench; grade with stage 4 --rubric mt-bench)"})


def check(config: GenerationConfig) -> None:
    """Refuse bad settings, a missing adapter, bad test records or questions before torch loads."""
    if problems := setting_problems(config):
        raise problems_error(problems)
    if config.models != "base" and not config.merged:
        require_adapter(run_adapter(Path(config.output_dir), config.adapter))
    if config.questions:
        read_questions(questions_file(config.questions))
    else:
        test_file = split_file(config.output_dir, "test", config.test_file)
        validate_records(read_json(test_file), str(test_file))
