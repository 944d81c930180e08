"""Seconds per DPO step (stage 1b) against an SFT step (stage 1) on the same records, and what
precomputing the reference's log-probabilities and the compact LM head save.

    python bench/dpo_step.py                 # gemma-3-270m, 6 steps of batch 8, 2 trials each
    python bench/dpo_step.py --steps 4 --trials 1

Same model, LoRA (r 16, alpha 32, all linear layers), batch, learning rate and the default
preference pairs; each trial in its own process, variants alternating:
  sft              stage 1's step (compact head, padding-free) on prompt + chosen answer
  dpo_trl_head     DPOTrainer with TRL's LM head (every position projected on a CPU), the reference
                   computed at every step (a second forward pass, without gradients)
  dpo              stage 1b's step: the compact LM head (instructkit/train/loss_head.py), the
                   reference at every step
  dpo_precomputed  stage 1b as shipped: the compact head, the reference's log-probabilities
                   computed once before training (TRL's precompute_ref_log_probs); that pass is
                   timed apart (`setup_s`) and is the price of the faster steps

The DPO variants train a new LoRA adapter whose reference is the model without it: stage 1b's
reference (a frozen copy of the SFT adapter) costs the same forward pass. Writes
bench/results/dpo_step-<device>.json; docs/preference.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from child import alternating_trials, report

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("sft", "dpo_trl_head", "dpo", "dpo_precomputed")


def one_trial(variant: str, steps: int, batch_size: int, seed: int) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import DPOConfig, SFTTrainer

    from instructkit.data.preferences import load_pairs, prompt_record
    from instructkit.data.prompts import get_style
    from instructkit.models.loading import load_causal_lm, load_tokenizer
    from instructkit.models.references import EMBEDDED_BASE, resolve_model
    from instructkit.train.common import trainer_arguments
    from instructkit.train.loss_head import use_compact_head
    from instructkit.train.padding_free import padding_free_collator
    from instructkit.train.preference import _trainer_class, dpo_example
    from instructkit.train.preference_config import DEFAULT_PAIRS, PreferenceConfig
    from instructkit.train.sft import TrainingConfig, sft_arguments

    class StepTimer(TrainerCallback):
        seconds = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step > 1:  # the first step warms up (allocations, kernel choice)
                self.seconds += time.perf_counter() - self.started

    torch.manual_seed(seed)
    pairs = load_pairs(DEFAULT_PAIRS)[: steps * batch_size]
    style = get_style("alpaca")
    base = resolve_model(EMBEDDED_BASE)
    tokenizer = load_tokenizer(base)
    workdir = Path(tempfile.mkdtemp())
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    setup = time.perf_counter()
    if variant == "sft":
        config = TrainingConfig(max_steps=steps, batch_size=batch_size, eval_steps=steps, seed=seed)
        args = sft_arguments(config, workdir, len(pairs), has_val=False)
        examples = [style.training_example(prompt_record(p), tokenizer) for p in pairs]
        trainer = SFTTrainer(model=load_causal_lm(base), args=args, train_dataset=Dataset.from_list(examples),
                             processing_class=tokenizer, data_collator=padding_free_collator(tokenizer), peft_config=lora)
        use_compact_head(trainer)
    else:
        config = PreferenceConfig(max_steps=steps, batch_size=batch_size, eval_steps=steps, seed=seed)
        args = DPOConfig(**trainer_arguments(config, workdir, len(pairs), False, False, quantized=False),
                         beta=config.beta, precompute_ref_log_probs=variant == "dpo_precomputed")
        examples = [dpo_example(style, p, tokenizer) for p in pairs]
        trainer = _trainer_class("dpo", variant != "dpo_trl_head")(model=load_causal_lm(base), args=args, processing_class=tokenizer,
                                                            train_dataset=Dataset.from_list(examples), peft_config=lora)
    setup_s = time.perf_counter() - setup
    args.save_strategy = "no"
    trainer.add_callback(timer := StepTimer())
    trainer.train()
    return {"variant": variant, "seed": seed, "setup_s": round(setup_s, 2),
            "seconds_per_step": round(timer.seconds / (steps - 1), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--one", choices=VARIANTS, help=argparse.SUPPRESS)  # a single trial, in a child process
    parser.add_argument("--seed", type=int, default=42, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        report(one_trial(args.one, args.steps, args.batch_size, args.seed))
        return

    from instructkit.runs.artifacts import manifest, write_json_atomic

    trials = alternating_trials(__file__, VARIANTS, args.trials, "--steps", str(args.steps), "--batch-size",
                                str(args.batch_size))
    summary = {}
    for variant in VARIANTS:
        rows = [t for t in trials if t["variant"] == variant]
        summary[variant] = {"seconds_per_step_mean": round(statistics.mean(t["seconds_per_step"] for t in rows), 3),
                            "seconds_per_step_range": [min(t["seconds_per_step"] for t in rows),
                                                       max(t["seconds_per_step"] for t in rows)],
                            "setup_s_mean": round(statistics.mean(t["setup_s"] for t in rows), 2)}
    sft = summary["sft"]["seconds_per_step_mean"]
    ratios = {variant: round(summary[variant]["seconds_per_step_mean"] / sft, 2) for variant in VARIANTS}
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    path = write_json_atomic(RESULTS / f"dpo_step-{device}.json", manifest(
        benchmark="dpo_step", steps=args.steps, batch_size=args.batch_size, trials=args.trials,
        summary=summary, seconds_per_step_vs_sft=ratios, runs=trials))
    print(json.dumps({"summary": summary, "vs_sft": ratios}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
