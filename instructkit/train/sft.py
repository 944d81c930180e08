"""Stage 1: supervised finetuning with TRL's SFTTrainer and a PEFT LoRA/QLoRA adapter."""

from __future__ import annotations

import gc
import importlib.util
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import EarlyStoppingCallback, ProgressCallback, TrainerCallback, set_seed
from trl import SFTConfig, SFTTrainer

from instructkit.data.parity import check_parity, parity_sample, stop_ids
from instructkit.data.prompts import PromptStyle, get_style, load_style
from instructkit.data.records import Split, drop_duplicates, load_records, split_file, split_records
from instructkit.errors import UserError
from instructkit.models.loading import load_causal_lm, load_tokenizer, qlora_quantization, qlora_settings
from instructkit.models.precision import precision_setting, resolve_precision
from instructkit.models.references import ResolvedModel, resolve_model
from instructkit.report.plots import plot_loss
from instructkit.runs.artifacts import is_main_process, manifest, output_lock, read_json, write_json_atomic
from instructkit.runs.fingerprints import reference_input
from instructkit.runs.reuse import why_redo
from instructkit.train.common import (
    RUN_CONFIG_FILE,
    QuietProgressCallback,
    check_resumable,
    last_logged,
    peak_memory_mb,
    swap_in,
    trainer_arguments,
)
from instructkit.train.config import SUMMARY_FILE, TRACKERS, TrainingConfig
from instructkit.train.loss_head import use_compact_head
from instructkit.train.padding_free import padding_free_collator, records_stay_apart

# After QLoRA --merge: greedy answers of the merged model compared with the 4-bit adapter's.
MERGE_CHECK_RECORDS, MERGE_CHECK_TOKENS = 8, 48
# A run in progress trains here, beside the finished one, and is swapped in only when it finishes.
STAGING_DIR = ".stage1.partial"
STAGED = ("data", "finetuned")
# Settings that do not change what is learned: a run may resume, or be reused, under another value.
# `precision` is recorded as what it resolved to on this machine (precision_setting), not as asked.
NOT_RUN_SETTINGS = ("overwrite", "restart", "merge", "compact_loss_head", "padding_free", "output_dir", "report_to",
                    "precision")


def _count_truncated(examples: list[dict], tokenizer, max_length: int) -> int:
    """Records whose prompt + response exceed max_length: TRL keeps their start, so their end is lost."""
    count = 0
    for example in examples:
        if "input_ids" in example:  # a tokenized conversation, its end-of-turn tokens included
            count += len(example["input_ids"]) > max_length
        else:
            count += len(tokenizer(example["prompt"] + example["completion"])["input_ids"]) + 1 > max_length  # +1: TRL's EOS
    return count


def training_examples(style: PromptStyle, records: list, tokenizer, max_length: int) -> list[dict]:
    """TRL examples: prompt-completion text for the text styles; for the chat styles the tokenized
    conversation with every answer in the loss (`PromptStyle.token_example`), up to `max_length`."""
    if style.is_chat:
        return [style.token_example(record, tokenizer, max_length) for record in records]
    return [style.training_example(record, tokenizer) for record in records]


class ThroughputCallback(TrainerCallback):
    """Tokens per second over the training steps (evaluations left out), counting real tokens of
    every process, not padding."""

    def __init__(self, trainer: SFTTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.seconds = 0.0
        self.start_tokens = last_logged(state.log_history, "num_tokens") or 0
        # TRL counts num_tokens from 0 in every process, so a resumed run's count would restart
        # below the checkpoint's: continue it from there, as the step count continues.
        self.trainer._total_train_tokens = self.start_tokens

    def on_step_begin(self, args, state, control, **kwargs):
        self.step_started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds += time.perf_counter() - self.step_started

    def on_train_end(self, args, state, control, **kwargs):
        self.tokens = self.trainer._total_train_tokens - self.start_tokens


def _final_val_loss(trainer: SFTTrainer) -> float:
    """The validation loss at the last step: reuse the evaluation made there, else run one."""
    last = [e for e in trainer.state.log_history if "eval_loss" in e and e["step"] == trainer.state.global_step]
    if last and not trainer.args.load_best_model_at_end:  # early stopping reloads the best model
        return last[-1]["eval_loss"]
    return trainer.evaluate()["eval_loss"]


def _write_split(split: Split, output_dir: Path) -> None:
    for name in ("train", "val", "test"):
        write_json_atomic(split_file(output_dir, name), getattr(split, name))


def run_settings(config: TrainingConfig) -> dict:
    """What the adapter depends on; a QLoRA run adds how its base was quantized, so that a LoRA and
    a QLoRA run are never taken for one another."""
    settings = {k: v for k, v in asdict(config).items() if k not in NOT_RUN_SETTINGS}
    precision = resolve_precision(config.precision, "training")
    if config.qlora:
        settings["quantization"] = qlora_settings(precision.dtype)
    return settings | precision_setting(precision)


def _with_record(summary: dict, path: Path) -> dict:
    """A summary written before runs recorded their inputs holds only `hyperparameters`: a retraining
    can cost GPU hours, so such a run stands when its settings and its data path are this run's."""
    if "inputs" in summary:
        return summary
    old = {k: v for k, v in summary.get("hyperparameters", {}).items() if k not in NOT_RUN_SETTINGS + ("resume",)}
    if is_main_process():
        print(f"note: {path} was written by an older version that did not fingerprint its data; "
              "comparing the data's path and the settings only")
    return {"settings": old, "inputs": {"data": reference_input(old.get("data", ""))}}


def train(config: TrainingConfig) -> Path:
    """Run stage 1 and return the adapter folder (`<output_dir>/finetuned`)."""
    style = get_style(config.prompt_style)
    records, repeats = drop_duplicates(load_records(config.data))  # validates before anything is written
    if repeats and is_main_process():
        shown = ", ".join(f"{dropped} repeats {kept}" for dropped, kept in repeats[:5])
        print(f"warning: {config.data}: {len(repeats)} records repeat an earlier one and are dropped "
              f"(record {shown}{', ...' if len(repeats) > 5 else ''}), so none is both trained on and tested")
    split = split_records(records, config.val_fraction, config.test_fraction, config.seed)
    record = {"settings": run_settings(config), "inputs": {"data": reference_input(config.data)}}
    if config.qlora:
        qlora_quantization(record["settings"]["quantization"])  # bitsandbytes is here: before anything is written
    package = TRACKERS[config.report_to]
    if package and importlib.util.find_spec(package) is None:
        raise UserError(f"--report-to {config.report_to} needs the {package} package: pip install {package}")
    base = resolve_model(config.base_model)
    output_dir = Path(config.output_dir)
    adapter_dir = output_dir / "finetuned"
    summary_path = adapter_dir / SUMMARY_FILE
    staging = output_dir / STAGING_DIR

    with output_lock(output_dir, "train"):
        if is_main_process() and (staging / "finetuned" / SUMMARY_FILE).is_file():
            print(f"note: completing the swap-in of the run finished in {staging}")
            swap_in(output_dir, staging, STAGED)
        if summary_path.is_file() and not config.overwrite:
            summary = read_json(summary_path)
            reason = why_redo(_with_record(summary, summary_path), record["settings"], record["inputs"],
                              "the adapter was trained")
            if reason is None:
                if config.merge and not (adapter_dir / "merged").is_dir():
                    summary = read_json(summary_path)
                    summary["merged_model"] = str(merge_adapter(base, adapter_dir, load_style(adapter_dir),
                                                                   config.trust_remote_code))
                    write_json_atomic(summary_path, summary)
                print(f"stage 1 already finished: {summary_path} (same data and settings; --overwrite trains again)")
                return adapter_dir
            if is_main_process():
                print(f"{reason}: training again")
        if is_main_process() and adapter_dir.exists():
            print(f"training into {staging}; {adapter_dir} stays as it is until the new run finishes")
        return _train(config, style, split, base, output_dir, staging, record, n_repeats=len(repeats))


def sft_arguments(config: TrainingConfig, checkpoints: Path, n_train: int, has_val: bool,
                  resuming: bool = False) -> SFTConfig:
    """Stage 1's SFTConfig: the shared arguments (common.trainer_arguments), the prompt-completion
    loss, packing, and early stopping's best model."""
    return SFTConfig(
        **trainer_arguments(config, checkpoints, n_train, has_val, resuming, quantized=config.qlora),
        packing=config.packing,
        completion_only_loss=True,
        load_best_model_at_end=has_val and config.early_stopping_patience > 0,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
    )


def _train(config: TrainingConfig, style: PromptStyle, split: Split, base: ResolvedModel,
           output_dir: Path, staging: Path, record: dict, n_repeats: int) -> Path:
    set_seed(config.seed)
    tokenizer = load_tokenizer(base, config.trust_remote_code)
    style = style.bind(tokenizer)
    if style.template:  # the adapter's saved tokenizer carries it too, for runtimes that read it from there
        tokenizer.chat_template = style.template.jinja
    train_examples = training_examples(style, split.train, tokenizer, config.max_length)
    val_examples = training_examples(style, split.val, tokenizer, config.max_length)
    n_truncated = _count_truncated(train_examples, tokenizer, config.max_length)
    if n_truncated and is_main_process():
        print(f"warning: {n_truncated} of {len(train_examples)} training records exceed --max-length "
              f"{config.max_length} tokens and are truncated (their end and EOS are not learned)")

    # Loaded before anything is written: a model that cannot keep packed records apart stops --packing here.
    precision = resolve_precision(config.precision, "training")
    model = load_causal_lm(base, quantization=record["settings"].get("quantization"),
                           trust_remote_code=config.trust_remote_code, dtype=precision.dtype)
    padding_free = _padding_free(config, model, tokenizer)
    # Before anything is written: the prompts inference will build are the ones trained on (parity.py)
    parity = parity_sample(style, split.train, tokenizer)
    built = {"stage 2 and the chat app (transformers)": lambda record: style.encode(style.render(record, tokenizer), tokenizer)}
    parity_check = check_parity(parity, built, stop_ids(model.generation_config, style, tokenizer), tokenizer)

    adapter_dir = staging / "finetuned"
    checkpoints = adapter_dir / "checkpoints"
    resuming = check_resumable(checkpoints, record, config.restart)  # may refuse: nothing is written before
    if is_main_process():
        _write_split(split, staging)
        write_json_atomic(checkpoints / RUN_CONFIG_FILE, record)

    has_val = bool(val_examples)
    on_gpu = torch.cuda.is_available()
    args = sft_arguments(config, checkpoints, len(train_examples), has_val, resuming)
    callbacks: list[TrainerCallback] = []
    if config.early_stopping_patience > 0 and has_val:
        callbacks.append(EarlyStoppingCallback(config.early_stopping_patience))

    trainer = SFTTrainer(
        model=model,
        args=args,
        # Packing is padding-free in TRL already; unpacked records get its padding-free collator.
        data_collator=padding_free_collator(tokenizer) if padding_free and not config.packing else None,
        train_dataset=Dataset.from_list(train_examples),
        eval_dataset=Dataset.from_list(val_examples) if has_val else None,
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
        callbacks=callbacks,
    )
    if config.compact_loss_head:
        use_compact_head(trainer)
    trainer.remove_callback(ProgressCallback)  # it prints a dict per step; ours shows them on the bar
    trainer.add_callback(QuietProgressCallback())
    trainer.add_callback(throughput := ThroughputCallback(trainer))

    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=True if resuming else None)
    val_loss_after = _final_val_loss(trainer) if has_val else None
    wall_time = time.perf_counter() - started

    final_dir = output_dir / "finetuned"
    if not trainer.is_world_process_zero():
        return final_dir
    trainer.save_model(str(adapter_dir))  # the PEFT adapter and the tokenizer
    style.save(adapter_dir)
    history = trainer.state.log_history
    train_curve = [{"step": e["step"], "loss": e["loss"]} for e in history if "loss" in e]
    evals = {e["step"]: e["eval_loss"] for e in history if "eval_loss" in e}  # the final evaluate repeats the last step
    val_loss_before = evals.get(0)
    val_curve = [{"step": step, "loss": loss} for step, loss in sorted(evals.items())]
    plot_loss(train_curve, val_curve, adapter_dir / "loss.png", f"{'QLoRA' if config.qlora else 'LoRA'} on {base.reference}")
    if config.merge:
        merge_adapter(base, adapter_dir, style, config.trust_remote_code)

    summary = manifest(
        stage="part1_instruction_finetuning",
        base_model=base.reference,
        base_model_path=base.path,
        base_model_source=base.source,
        prompt_style=style.name,
        template_parity=parity,
        template_parity_check=parity_check,
        data=config.data,
        hyperparameters=asdict(config),
        settings=record["settings"],
        inputs=record["inputs"],
        n_records={"train": len(split.train), "val": len(split.val), "test": len(split.test)},
        n_train_truncated=n_truncated,
        n_duplicates_dropped=n_repeats,
        steps=trainer.state.global_step,
        epochs_done=round(trainer.state.epoch or 0, 3),
        resumed=resuming,
        train_loss=train_curve,
        val_loss=val_curve,
        val_loss_before=val_loss_before,
        val_loss_after=val_loss_after,
        final_train_loss=result.training_loss,
        train_tokens=throughput.tokens,
        tokens_per_second=round(throughput.tokens / throughput.seconds, 2) if throughput.seconds else None,
        wall_time_s=round(wall_time, 1),
        peak_memory=peak_memory_mb(),
        device="cuda:" + torch.cuda.get_device_name() if on_gpu else "cpu",
        attention=model.config._attn_implementation,
        **precision.describe(),
        padding_free=padding_free,
        n_processes=trainer.args.world_size,  # >1 under accelerate launch / torchrun
        merged_model=str(final_dir / "merged") if config.merge else None,
    )
    if config.merge and config.qlora:  # QLoRA's known rounding gap, measured
        del trainer, model, throughput  # one model in memory at a time (the callback held the trainer)
        gc.collect()
        summary["merged_agrees_with_4bit"] = merge_agreement(base, adapter_dir, record["settings"]["quantization"],
                                                             split.test[:MERGE_CHECK_RECORDS], style, config)
    write_json_atomic(adapter_dir / SUMMARY_FILE, summary)  # it marks the run finished
    shutil.rmtree(checkpoints, ignore_errors=True)  # a finished run is never resumed; its curves are in the summary
    swap_in(output_dir, staging, STAGED)
    _print_summary(summary, final_dir)
    return final_dir


def _padding_free(config: TrainingConfig, model: torch.nn.Module, tokenizer) -> bool:
    """Whether batches go padding-free: asked for (--packing always is) and the model's attention
    keeps records in one row apart. Without that, --packing is refused and --padding-free falls back."""
    if not (config.padding_free or config.packing):
        return False
    if records_stay_apart(model, tokenizer):
        return True
    attention = model.config._attn_implementation
    if config.packing:
        raise UserError(f"--packing: under this model's attention ({attention}) records packed into one sequence "
                        "attend to each other; use FlashAttention 2 (a CUDA GPU and `pip install -r "
                        "requirements-gpu.txt`) or train without --packing")
    if is_main_process():
        print(f"note: padded batches: under this model's attention ({attention}) records laid end to end "
              "would attend to each other")
    return False


def merge_adapter(base: ResolvedModel, adapter_dir: Path, style: PromptStyle, trust_remote_code: bool = False) -> Path:
    """Base weights + LoRA update in one model folder that plain transformers loads, as stage 6
    exports it (the run's chat template, the EOS training ended answers with)."""
    from instructkit.export.merge import save_merged

    target = adapter_dir / "merged"
    staging = adapter_dir / ".merged.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    save_merged(base, adapter_dir, style, staging, trust_remote_code)
    shutil.rmtree(target, ignore_errors=True)
    staging.replace(target)
    return target


def merge_agreement(base: ResolvedModel, adapter_dir: Path, quantization: dict, records: list, style: PromptStyle,
                    config: TrainingConfig) -> dict:
    """How many greedy answers to test records the merged model (unquantized base + LoRA) gives
    exactly as the 4-bit base with the adapter does: merging dequantizes, and NF4's rounding is gone."""
    from instructkit.generate.generator import TransformersGenerator

    precision = resolve_precision(config.precision, "inference")
    answers = {}
    for name, kwargs in (("4bit", {"merged": "", "quantization": quantization}),
                         ("merged", {"merged": str(adapter_dir / "merged"), "quantization": None})):
        generator = TransformersGenerator(base, adapter_dir, trust_remote_code=config.trust_remote_code,
                                          models=["finetuned"], dtype=precision.dtype, **kwargs)
        prompts = [generator.render(style, record) for record in records]
        answers[name], _ = generator.generate("finetuned", prompts, MERGE_CHECK_TOKENS, style)
        del generator
    equal = sum(a == b for a, b in zip(answers["4bit"], answers["merged"]))
    if is_main_process():
        print(f"merged model vs the 4-bit base with the adapter: {equal} of {len(records)} greedy test answers equal")
    return {"n_records": len(records), "max_new_tokens": MERGE_CHECK_TOKENS, "equal": equal}


def _print_summary(summary: dict, adapter_dir: Path) -> None:
    before, after = summary["val_loss_before"], summary["val_loss_after"]
    print(f"\n== stage 1 done in {summary['wall_time_s']} s, {summary['steps']} steps, "
          f"{summary['tokens_per_second']} tokens/s")
    if before is not None:
        print(f"validation loss: {before:.3f} before -> {after:.3f} after")
    print(f"adapter: {adapter_dir}\nsummary: {adapter_dir / SUMMARY_FILE}\nloss curves: {adapter_dir / 'loss.png'}")
