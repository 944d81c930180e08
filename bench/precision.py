"""bf16 against fp32 on this machine, for each use the stages make of a model, each trial in a child
process of its own with the two precisions alternating:

- training (stage 1): stage 1's settings, 6 steps; bf16 stores the base weights in bf16 and keeps
  the LoRA weights in fp32 (PEFT's default), with no autocast (TRL's autocast casts the weights
  every step); real tokens/s and the validation loss after training, per seed;
- generation (stage 2): TransformersGenerator, greedy, the first test records, base model; seconds
  and how many answers are identical to fp32's;
- loglikelihood (stage 3): instructkit-hf on the first offline mmlu_philosophy questions; seconds,
  the largest per-choice log-likelihood difference from fp32, accuracy.

    python bench/precision.py                                # all three, 2 seeds of training
    python bench/precision.py --uses generation loglikelihood --records 16 --questions 40

instructkit/models/precision.py's `auto` rule follows these numbers. Writes
bench/results/precision-<device>.json with the CPU model and flags; the README quotes it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from child import offline_philosophy, report, run_child, save_results

USES = ("training", "generation", "loglikelihood")
PRECISIONS = ("fp32", "bf16")


def train_trial(precision: str, steps: int, seed: int) -> dict:
    """Stage 1's own training path with the given --precision, in a fresh folder."""
    import tempfile

    from instructkit.runs.artifacts import read_json
    from instructkit.train.config import SUMMARY_FILE
    from instructkit.train.sft import TrainingConfig, train

    out = Path(tempfile.mkdtemp())
    train(TrainingConfig(output_dir=str(out), max_steps=steps, eval_steps=steps, seed=seed, precision=precision))
    summary = read_json(out / "finetuned" / SUMMARY_FILE)
    return {"tokens_per_second": summary["tokens_per_second"], "val_loss": summary["val_loss_after"],
            "precision": summary["precision"]}


def generation_trial(precision: str, records: int, max_new_tokens: int, batch_size: int) -> dict:
    from instructkit.data.prompts import get_style
    from instructkit.data.records import load_records, split_records
    from instructkit.generate.generator import TransformersGenerator, length_sorted_batches
    from instructkit.models.precision import DTYPES
    from instructkit.models.references import EMBEDDED_BASE, resolve_model
    from instructkit.train.config import DEFAULT_DATA

    style = get_style("alpaca")
    test = split_records(load_records(DEFAULT_DATA), 0.05, 0.10, seed=123).test[:records]
    generator = TransformersGenerator(resolve_model(EMBEDDED_BASE), None, "", False, ["base"], DTYPES[precision])
    prompts = [generator.render(style, r) for r in test]
    answers = [""] * len(prompts)
    started = time.perf_counter()
    for batch in length_sorted_batches(generator.lengths(prompts), batch_size):
        texts, _ = generator.generate("base", [prompts[i] for i in batch], max_new_tokens, style)
        for i, text in zip(batch, texts):
            answers[i] = text
    return {"seconds": round(time.perf_counter() - started, 2), "answers": answers}


def loglikelihood_trial(precision: str, questions: int, batch_size: int) -> dict:
    import lm_eval

    from instructkit.evaluate.lm_eval_model import ContinuationHFLM
    from instructkit.models.references import EMBEDDED_BASE, resolve_model

    device, task_names, task_manager = offline_philosophy()
    task = next(iter(task_names.values()))
    lm = ContinuationHFLM(pretrained=resolve_model(EMBEDDED_BASE).path, batch_size=batch_size, device=device,
                          dtype={"fp32": "float32", "bf16": "bfloat16"}[precision])
    started = time.perf_counter()
    raw = lm_eval.simple_evaluate(model=lm, tasks=[task], limit=questions, task_manager=task_manager,
                                  log_samples=True, random_seed=0, numpy_random_seed=0, torch_random_seed=0)
    return {"seconds": round(time.perf_counter() - started, 2), "accuracy": raw["results"][task]["acc,none"],
            "loglikelihoods": {s["doc_id"]: [float(r[0][0]) for r in s["resps"]] for s in raw["samples"][task]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uses", nargs="+", choices=USES, default=list(USES))
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--records", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32, help="stage 2's batch (stage 3 uses 8, as it does)")
    parser.add_argument("--questions", type=int, default=80)
    # One trial, in a child process (bench/child.py)
    parser.add_argument("--one", choices=USES, help=argparse.SUPPRESS)
    parser.add_argument("--precision", choices=PRECISIONS, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=42, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one == "training":
        return report(train_trial(args.precision, args.steps, args.seed))
    if args.one == "generation":
        return report(generation_trial(args.precision, args.records, args.max_new_tokens, args.batch_size))
    if args.one == "loglikelihood":
        return report(loglikelihood_trial(args.precision, args.questions, 8))

    common = ["--steps", str(args.steps), "--records", str(args.records), "--max-new-tokens", str(args.max_new_tokens),
              "--batch-size", str(args.batch_size), "--questions", str(args.questions)]

    def trial(use: str, precision: str, seed: int = 42) -> dict:
        result = run_child(__file__, "--one", use, "--precision", precision, "--seed", str(seed), *common)
        if "failed" in result:
            sys.exit(f"{use} {precision} failed:\n{result['failed']}")
        print(use, precision, json.dumps({k: v for k, v in result.items() if k not in ("answers", "loglikelihoods")}),
              flush=True)
        return result

    results: dict = {"settings": vars(args) | {"one": None}}
    if "training" in args.uses:
        runs = {p: [] for p in PRECISIONS}
        for seed in range(42, 42 + args.seeds):
            for p in PRECISIONS:
                runs[p].append({"seed": seed, **trial("training", p, seed)})
        results["training"] = {p: {"trials": rows,
                                   "tokens_per_second_mean": round(statistics.mean(r["tokens_per_second"] for r in rows), 2),
                                   "val_loss": [round(r["val_loss"], 4) for r in rows]} for p, rows in runs.items()}
        results["training"]["bf16_speedup"] = round(results["training"]["bf16"]["tokens_per_second_mean"]
                                                    / results["training"]["fp32"]["tokens_per_second_mean"], 2)
    if "generation" in args.uses:
        fp32, bf16 = trial("generation", "fp32"), trial("generation", "bf16")
        results["generation"] = {"fp32_s": fp32["seconds"], "bf16_s": bf16["seconds"],
                                 "bf16_speedup": round(fp32["seconds"] / bf16["seconds"], 2),
                                 "identical_answers": sum(a == b for a, b in zip(fp32["answers"], bf16["answers"])),
                                 "records": len(fp32["answers"])}
    if "loglikelihood" in args.uses:
        fp32, bf16 = trial("loglikelihood", "fp32"), trial("loglikelihood", "bf16")
        a, b = fp32["loglikelihoods"], bf16["loglikelihoods"]
        results["loglikelihood"] = {
            "fp32_s": fp32["seconds"], "bf16_s": bf16["seconds"], "bf16_speedup": round(fp32["seconds"] / bf16["seconds"], 2),
            "accuracy": {"fp32": fp32["accuracy"], "bf16": bf16["accuracy"]}, "questions": len(a),
            "same_prediction": sum(max(range(4), key=a[d].__getitem__) == max(range(4), key=b[d].__getitem__) for d in a),
            "max_abs_loglikelihood_difference": round(max(abs(x - y) for d in a for x, y in zip(a[d], b[d])), 4)}
    print(json.dumps({k: v for k, v in results.items() if k != "settings"}, indent=1)[:3000])
    import torch

    save_results(f"precision-{'cuda' if torch.cuda.is_available() else 'cpu'}", __doc__, results)


if __name__ == "__main__":
    main()
