"""Stage 1's training settings against plain SFTTrainer defaults: same model, data, LoRA,
steps and learning rate, each trial in its own process (clean peak memory), alternating.

    python bench/train_throughput.py                 # gemma-3-270m, 6 steps, batch 8, 2 trials each
    python bench/train_throughput.py --steps 10 --trials 3

Counts real tokens (not padding) per second of training, peak RSS, and the validation loss after
training. Writes bench/results/train_throughput-<device>.json; the README quotes it.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("ours", "plain_trl")


def one_trial(variant: str, steps: int, batch_size: int, lr: float) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from instructkit.data import load_records, split_records
    from instructkit.models import EMBEDDED_BASE, load_causal_lm, load_tokenizer, resolve_model
    from instructkit.prompts import get_style
    from instructkit.training import DEFAULT_DATA, ThroughputCallback, TrainingConfig, sft_arguments

    torch.manual_seed(0)
    split = split_records(load_records(DEFAULT_DATA), 0.05, 0.10, seed=123)
    style = get_style("alpaca")
    train = Dataset.from_list([style.training_example(r) for r in split.train])
    val = Dataset.from_list([style.training_example(r) for r in split.val])
    base = resolve_model(EMBEDDED_BASE)
    workdir = Path(tempfile.mkdtemp())
    if variant == "ours":
        config = TrainingConfig(max_steps=steps, batch_size=batch_size, lr=lr, eval_steps=steps, max_length=256)
        args = sft_arguments(config, workdir, len(split.train), has_val=False)
    else:  # TRL's defaults, with only what both runs must share set
        args = SFTConfig(output_dir=str(workdir), max_steps=steps, per_device_train_batch_size=batch_size,
                         learning_rate=lr, max_length=256, report_to="none", save_strategy="no", seed=42,
                         use_cpu=not torch.cuda.is_available())
    throughput = ThroughputCallback()
    trainer = SFTTrainer(
        model=load_causal_lm(base), args=args, train_dataset=train, processing_class=load_tokenizer(base),
        peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"),
        callbacks=[throughput],
    )
    trainer.train()
    val_loss = trainer.evaluate(val)["eval_loss"]
    return {
        "variant": variant,
        "tokens": throughput.tokens,
        "seconds": round(throughput.seconds, 2),
        "tokens_per_second": round(throughput.tokens / throughput.seconds, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "val_loss": val_loss,
        "gradient_checkpointing": args.gradient_checkpointing,
        "bf16": args.bf16,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--one", choices=VARIANTS, help=argparse.SUPPRESS)  # a single trial, in a child process
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one_trial(args.one, args.steps, args.batch_size, args.lr)))
        return

    from instructkit.artifacts import manifest, write_json_atomic

    trials = []
    for trial in range(args.trials):
        for variant in VARIANTS:
            child = subprocess.run([sys.executable, __file__, "--one", variant, "--steps", str(args.steps),
                                    "--batch-size", str(args.batch_size), "--lr", str(args.lr)],
                                   capture_output=True, text=True, check=True)
            result = json.loads(next(line[7:] for line in child.stdout.splitlines() if line.startswith("RESULT ")))
            trials.append({"trial": trial, **result})
            print(json.dumps(trials[-1]), flush=True)
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
    speedup = round(summary["ours"]["tokens_per_second_mean"] / summary["plain_trl"]["tokens_per_second_mean"], 2)
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
