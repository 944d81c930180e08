"""Stage 1's training settings against plain SFTTrainer defaults: same model, data, LoRA, steps,
learning rate and schedule, each trial in its own process (clean peak memory), variants alternating.

    python bench/train_throughput.py                 # gemma-3-270m, 6 steps, batch 8, 3 trials each
    python bench/train_throughput.py --steps 10 --trials 2

Variants, each changing one thing from the one before it:
  plain_trl       SFTTrainer's defaults (gradient checkpointing, TRL's LM head, padded batches) in
                  fp32, as the issue measured them, with stage 1's cosine schedule and 3% warm-up (a
                  6-step run otherwise compares schedules, not speed); TRL's default bf16 autocast is
                  far slower on a CPU without native bf16 (2.61 tokens/s here, 6 steps in 1025 s), so
                  it is not the baseline
  ours_trl_head   stage 1's settings (no checkpointing, fp32 on a CPU) with TRL's LM head, padded
  ours_padded     plus the compact LM head (instructkit/train/loss_head.py)
  ours_grouped    plus length-grouped batches (less padding; changes the data order)
  ours            stage 1 as shipped: the compact head and padding-free batches
                  (instructkit/train/padding_free.py; no padding, same records and order as ours_padded)

Counts real tokens (not padding) per second of training steps, peak RSS, and the validation loss
after training. Trial t uses seed 42 + t for every variant, so the spread across trials is the
seed-to-seed spread the validation losses are compared within. Writes
bench/results/train_throughput-<device>.json; the README quotes it.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
from pathlib import Path

from child import alternating_trials, report

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("plain_trl", "ours_trl_head", "ours_padded", "ours_grouped", "ours")


def one_trial(variant: str, steps: int, batch_size: int, lr: float, seed: int) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from instructkit.data.prompts import get_style
    from instructkit.data.records import load_records, split_records
    from instructkit.models.loading import load_causal_lm, load_tokenizer
    from instructkit.models.references import EMBEDDED_BASE, resolve_model
    from instructkit.train.config import DEFAULT_DATA
    from instructkit.train.loss_head import use_compact_head
    from instructkit.train.padding_free import padding_free_collator
    from instructkit.train.sft import ThroughputCallback, TrainingConfig, sft_arguments

    torch.manual_seed(seed)
    split = split_records(load_records(DEFAULT_DATA), 0.05, 0.10, seed=123)
    style = get_style("alpaca")
    base = resolve_model(EMBEDDED_BASE)
    tokenizer = load_tokenizer(base)
    train = Dataset.from_list([style.training_example(r, tokenizer) for r in split.train])
    val = Dataset.from_list([style.training_example(r, tokenizer) for r in split.val])
    workdir = Path(tempfile.mkdtemp())
    if variant == "plain_trl":  # TRL's defaults, with only what every run must share set
        args = SFTConfig(output_dir=str(workdir), max_steps=steps, per_device_train_batch_size=batch_size,
                         learning_rate=lr, lr_scheduler_type="cosine", warmup_ratio=0.03, max_length=256,
                         report_to="none", save_strategy="no", seed=seed, bf16=False,
                         use_cpu=not torch.cuda.is_available())
    else:
        config = TrainingConfig(max_steps=steps, batch_size=batch_size, lr=lr, eval_steps=steps, max_length=256,
                                seed=seed)
        args = sft_arguments(config, workdir, len(split.train), has_val=False)
        args.save_strategy = "no"
        if variant == "ours_grouped":
            args.train_sampling_strategy = "group_by_length"
    trainer = SFTTrainer(
        model=load_causal_lm(base), args=args, train_dataset=train, processing_class=tokenizer,
        data_collator=padding_free_collator(tokenizer) if variant == "ours" else None,
        peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    trainer.add_callback(throughput := ThroughputCallback(trainer))
    compact_head = variant in ("ours_padded", "ours_grouped", "ours") and use_compact_head(trainer)
    trainer.train()
    val_loss = trainer.evaluate(val)["eval_loss"]
    return {
        "variant": variant,
        "seed": seed,
        "compact_head": compact_head,
        "tokens": throughput.tokens,
        "seconds": round(throughput.seconds, 2),
        "tokens_per_second": round(throughput.tokens / throughput.seconds, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "val_loss": val_loss,
        "gradient_checkpointing": args.gradient_checkpointing,
        "bf16": args.bf16,
        "padding_free": variant == "ours",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--trials", type=int, default=3)
    # A single trial, in a child process (bench/child.py)
    parser.add_argument("--one", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=42, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        report(one_trial(args.one, args.steps, args.batch_size, args.lr, args.seed))
        return

    from instructkit.runs.artifacts import manifest, write_json_atomic

    trials = alternating_trials(__file__, VARIANTS, args.trials, "--steps", str(args.steps), "--batch-size",
                                str(args.batch_size), "--lr", str(args.lr))
    summary = {}
    for variant in VARIANTS:
        rows = [t for t in trials if t["variant"] == variant]
        speeds = [t["tokens_per_second"] for t in rows]
        summary[variant] = {
            "tokens_per_second_mean": round(statistics.mean(speeds), 2),
            "tokens_per_second_range": [min(speeds), max(speeds)],
            "val_loss_mean": round(statistics.mean(t["val_loss"] for t in rows), 4),
            "val_loss_range": [round(min(t["val_loss"] for t in rows), 4), round(max(t["val_loss"] for t in rows), 4)],
            "peak_rss_mb_max": max(t["peak_rss_mb"] for t in rows),
        }
    baseline = summary["plain_trl"]["tokens_per_second_mean"]
    speedup = {variant: round(summary[variant]["tokens_per_second_mean"] / baseline, 2) for variant in VARIANTS}
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = manifest(
        benchmark="stage 1 training settings vs plain SFTTrainer defaults (gemma-3-270m, LoRA r=16 all-linear)",
        command="python bench/train_throughput.py " + " ".join(sys.argv[1:]),
        device=device, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        summary=summary, speedup=speedup, trials=trials,
    )
    path = write_json_atomic(RESULTS / f"train_throughput-{device}.json", result)
    print(json.dumps({"summary": summary, "speedup": speedup}, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
