"""Stage 1's settings: the data, the prompt style, LoRA/QLoRA and the training run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from instructkit.config import PRECISIONS, SEED, LocalModel, Reruns, setting_problems
from instructkit.data import packaged
from instructkit.data.prompts import STYLES
from instructkit.data.records import drop_duplicates, load_records, split_fraction_problem, split_records
from instructkit.errors import problems_error
from instructkit.models.references import EMBEDDED_BASE

DEFAULT_DATA = packaged("instruction-data.json")
SUMMARY_FILE = "training_summary.json"  # in the adapter folder: the run's settings, inputs, curves and timings
# --report-to: where TRL also sends the training metrics, and the package each needs.
TRACKERS = {"none": None, "tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}


@dataclass
class TrainingConfig(Reruns, LocalModel):
    base_model: str = field(default=EMBEDDED_BASE, metadata={"help": f"embedded name ({EMBEDDED_BASE}), .gguf file, model folder or hub id"})
    data: str = field(default=DEFAULT_DATA, metadata={"help": "Alpaca/Dolly .json, .jsonl or .csv file, or a hub dataset: alpaca, dolly, owner/name"})
    prompt_style: str = field(default="alpaca", metadata={"help": "prompt format", "choices": list(STYLES)})
    epochs: float = field(default=1.0, metadata={"help": "passes over the training split (ignored when --max-steps > 0)", "minimum": 0})
    max_steps: int = field(default=-1, metadata={"help": "stop after this many optimizer steps (-1: use --epochs)", "minimum": -1})
    batch_size: int = field(default=8, metadata={"help": "records per device per step", "minimum": 1})
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation steps", "minimum": 1})
    lr: float = field(default=5e-4, metadata={"help": "peak learning rate (cosine decay, 3%% warm-up)", "exclusive_minimum": 0})
    max_length: int = field(default=512, metadata={"help": "tokens per training sequence; longer records are truncated (counted in the summary)", "minimum": 1})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank", "minimum": 1})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)", "minimum": 1})
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA input", "minimum": 0, "exclusive_maximum": 1})
    qlora: bool = field(default=False, metadata={"help": "QLoRA: the base model in 4-bit NF4 with double quantization (bitsandbytes, on a CUDA GPU or the CPU), computing in --precision; recorded, and stages 2, 3 and 5 load the base the same way"})
    packing: bool = field(default=False, metadata={"help": "pack several records into each sequence of --max-length (TRL best-fit decreasing); needs attention that keeps packed records apart (checked)"})
    padding_free: bool = field(default=True, metadata={"help": "lay each batch's records end to end instead of padding them (same records, same loss, less memory); off by itself where the model's attention would mix records"})
    val_fraction: float = field(default=0.05, metadata={"help": "share of records held out for validation loss", "minimum": 0, "exclusive_maximum": 1})
    test_fraction: float = field(default=0.10, metadata={"help": "share of records held out for stages 2-4", "exclusive_minimum": 0, "exclusive_maximum": 1})
    seed: int = field(default=123, metadata={"help": "seed of the split, the LoRA initialisation and the data order", **SEED})
    eval_steps: int = field(default=0, metadata={"help": "evaluate validation loss every N steps (0: about 10 times per run)", "minimum": 0})
    early_stopping_patience: int = field(default=0, metadata={"help": "stop after N evaluations without a better validation loss (0: off)", "minimum": 0})
    compact_loss_head: bool = field(default=True, metadata={"help": "off CUDA, run the LM head only at response tokens (TRL's Triton path does so on CUDA); same loss, ~3x faster CPU steps"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute activations to save memory (on by itself with --qlora on a GPU)"})
    merge: bool = field(default=False, metadata={"help": "also write finetuned/merged/: base + adapter, loadable by plain transformers"})
    overwrite: bool = field(default=False, metadata={"help": "train again although the finished run has the same data and settings (the old adapter stays until the new one is finished)"})
    report_to: str = field(default="none", metadata={"help": "also send the training metrics to a tracker TRL supports (they are always in training_summary.json)", "choices": list(TRACKERS)})
    precision: str = field(default="auto", metadata={"help": "base weights in fp32 or bf16 (the LoRA weights stay fp32); auto: bf16 on a GPU that has it, and on a CPU whatever bench/precision.py measured faster there (recorded with the reason in training_summary.json)", "choices": list(PRECISIONS)})


def check(config: TrainingConfig) -> None:
    """Refuse bad settings, then a bad data file or split, before torch loads (train() reads the
    file again: milliseconds)."""
    problems = setting_problems(config)
    if problem := split_fraction_problem(config.val_fraction, config.test_fraction):
        problems.append(problem)
    if config.epochs <= 0 and config.max_steps <= 0:  # else TRL trains no step and the adapter looks finished
        problems.append(f"--epochs must be more than 0 when --max-steps is not set (got {config.epochs})")
    if problems:
        raise problems_error(problems)
    if Path(config.data).expanduser().is_file():
        records, _ = drop_duplicates(load_records(config.data))
        split_records(records, config.val_fraction, config.test_fraction, config.seed)
