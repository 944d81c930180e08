"""Stage 0's settings: how instruction data is made (Self-Instruct, Magpie, reflection) and cleaned,
and how preference pairs are made for stage 1b (a rewrite, or the best and worst of sampled answers)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from instructkit.config import SEED, APIClient, Reruns, setting_problems
from instructkit.data import packaged
from instructkit.errors import problems_error
from instructkit.models.references import EMBEDDED_JUDGE, backend_kind, parse_backend

OUTPUT_FILE = Path("generated") / "instruction-data.json"
DEFAULT_SEEDS = packaged("seed_tasks.jsonl")
PAIR_METHODS = ("pairs-rewrite", "pairs-sample")
METHODS = ("self-instruct", "magpie", "reflect", "curate", *PAIR_METHODS)


@dataclass
class SynthesisConfig(Reruns, APIClient):
    method: str = field(default="self-instruct", metadata={"help": "self-instruct: new tasks from seed tasks; magpie: an instruct model writes instructions from its bare user header; reflect: a model improves --data; curate: only de-duplicate and check --data for contamination; pairs-rewrite: preference pairs, the generator rewrites each answer of --data better or worse; pairs-sample: preference pairs, the run's SFT model answers each record --samples times and the generator scores them (best and worst)", "choices": list(METHODS)})
    generator: str = field(default=f"hf:{EMBEDDED_JUDGE}", metadata={"help": "hf:<model> (a local transformers model, hub id or folder) or openai:<model> (any OpenAI-compatible server)"})
    base_url: str = field(default="", metadata={"help": "an OpenAI-compatible server for openai: generators (vLLM, Ollama, litgpt serve); the key comes from OPENAI_API_KEY"})
    seeds: str = field(default=DEFAULT_SEEDS, metadata={"help": "seed tasks for self-instruct: Self-Instruct's seed_tasks.jsonl format (instruction, instances, is_classification) or any Alpaca file"})
    data: str = field(default="", metadata={"help": "the Alpaca/Dolly file that reflect improves and curate cleans, and whose records the pairs- methods make pairs for (for those the default is <output-dir>/data/train.json, stage 1's training split)"})
    direction: str = field(default="both", metadata={"help": "pairs-rewrite: rewrite each answer worse (the answer is chosen), better (it is rejected), or one of the two per record, drawn by --seed (LLMs-from-scratch's recipe)", "choices": ["worse", "better", "both"]})
    better: str = field(default="more polite", metadata={"help": "pairs-rewrite: what a better answer is, as in 'rewrite the response to be ...'"})
    worse: str = field(default="impolite", metadata={"help": "pairs-rewrite: what a worse answer is, as in 'rewrite the response to be ...'"})
    policy: str = field(default="", metadata={"help": "pairs-sample: the SFT adapter whose answers are sampled (default: <output-dir>/finetuned), asked in the prompt style it was trained with"})
    samples: int = field(default=4, metadata={"help": "pairs-sample: answers sampled per record", "minimum": 2})
    min_score_gap: float = field(default=10.0, metadata={"help": "pairs-sample: the best and worst answer's 0-100 scores must differ by this much to make a pair", "minimum": 0})
    max_records: int = field(default=0, metadata={"help": "pairs- methods: make pairs for the first N records only (0: all that --max-requests allows)", "minimum": 0})
    reflect: str = field(default="both", metadata={"help": "what reflection rewrites: the instruction (and a new response to it), the response, or both in turn", "choices": ["instruction", "response", "both"]})
    num_instructions: int = field(default=20, metadata={"help": "how many new instructions self-instruct and magpie aim for", "minimum": 1})
    max_requests: int = field(default=1000, metadata={"help": "the most requests the run may send (a budget for paid APIs)", "minimum": 1})
    batch_size: int = field(default=8, metadata={"help": "requests per round (one batch for hf:, sent concurrently for openai:); pairs-sample: records per round (their --samples answers are one batch)", "minimum": 1})
    max_new_tokens: int = field(default=256, metadata={"help": "longest reply, in tokens", "minimum": 1})
    temperature: float | None = field(default=None, metadata={"help": "sampling temperature (default: 0.7 for self-instruct's new tasks, 1.0 for magpie's instructions, 0.8 for pairs-sample's answers; answers, rewrites and scores are greedy)", "minimum": 0})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling for the sampled requests", "exclusive_minimum": 0, "maximum": 1})
    seed: int = field(default=0, metadata={"help": "seeds the examples shown in each prompt and the sampling", **SEED})
    examples_per_prompt: int = field(default=8, metadata={"help": "example tasks in each self-instruct prompt", "minimum": 1})
    generated_examples: int = field(default=2, metadata={"help": "of those, how many are already generated ones (once there are some)", "minimum": 0})
    min_words: int = field(default=3, metadata={"help": "drop instructions of this many words or fewer", "minimum": 0})
    max_words: int = field(default=150, metadata={"help": "drop instructions of more words than this", "minimum": 1})
    rouge_threshold: float = field(default=0.7, metadata={"help": "drop a new instruction whose ROUGE-L F with any kept one is above this", "exclusive_minimum": 0, "maximum": 1})
    near_duplicate_threshold: float = field(default=0.9, metadata={"help": "drop a record whose instruction+input has this character n-gram TF-IDF cosine with an earlier one", "exclusive_minimum": 0, "maximum": 1})
    exclude: list[str] = field(default_factory=list, metadata={"help": "evaluation files (e.g. outputs/data/test.json) whose records must not reappear in the data"})
    contamination_threshold: float = field(default=0.8, metadata={"help": "a record this similar (TF-IDF cosine) to an --exclude record is contaminated", "exclusive_minimum": 0, "maximum": 1})
    contamination: str = field(default="drop", metadata={"help": "drop contaminated records, or keep them and list them in the manifest", "choices": ["drop", "flag"]})
    keep_dropped: bool = field(default=False, metadata={"help": "also write every dropped record, with its reason, to generated/instruction-data.dropped.json (pairs- methods: generated/pairs-rewrite.dropped.json, pairs-sample.dropped.json)"})
    dry_run: bool = field(default=False, metadata={"help": "print the first prompt and how many requests the run would send; send none"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow model code from the hub for hf: generators"})


def pairs_file(method: str) -> Path:
    """Where a pairs- method writes its pairs (generated/pairs-sample.json): one file per method."""
    return OUTPUT_FILE.parent / f"{method}.json"


def parse_generator(reference: str) -> tuple[str, str]:
    return parse_backend(reference, "--generator", ("hf", "openai"),
                         f"hf:{EMBEDDED_JUDGE}, hf:meta-llama/Meta-Llama-3-8B-Instruct or openai:gpt-4o-mini")


def check(config: SynthesisConfig) -> None:
    """Every problem with the flags at once, before anything is loaded or written."""
    problems = setting_problems(config, writes=not config.dry_run)
    if config.method not in METHODS:
        problems.append(f"--method {config.method!r}: choose one of {', '.join(METHODS)}")
    if config.method == "pairs-sample" and config.temperature == 0:
        problems.append("--method pairs-sample needs --temperature above 0: greedy answers to one prompt are all the same")
    if config.method in PAIR_METHODS and config.exclude:
        problems.append(f"--exclude is for the instruction-data methods; --method {config.method} makes pairs for the "
                        "records of --data (by default stage 1's training split, which holds no test record)")
    if config.method in ("reflect", "curate") and not config.data:
        problems.append(f"--method {config.method} needs --data FILE (the Alpaca file to {'improve' if config.method == 'reflect' else 'clean'})")
    if config.method in ("self-instruct", "magpie"):
        if config.max_requests < 2 * config.num_instructions + config.batch_size:
            problems.append(f"--max-requests {config.max_requests} is too few for --num-instructions {config.num_instructions}: "
                            f"{config.method} needs a round of {config.batch_size} requests for instructions and "
                            f"{'2' if config.method == 'self-instruct' else '1'} more per instruction kept")
    if config.method == "magpie" and backend_kind(config.generator) == "openai":
        problems.append("--method magpie writes instructions from the model's bare user header, which a chat API does not "
                        "take: use an hf: generator (any local instruct model)")
    if config.generated_examples > config.examples_per_prompt:
        problems.append("--generated-examples must be between 0 and --examples-per-prompt")
    if config.max_words <= config.min_words:  # else every instruction is dropped, after the requests are paid
        problems.append(f"--max-words {config.max_words} must be more than --min-words {config.min_words}")
    if problems:
        raise problems_error(problems)
    if config.method != "curate":
        parse_generator(config.generator)
