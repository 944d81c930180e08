"""LoRA against QLoRA (NF4, double quantization) through the real stages, alternating, one run folder each.

    python bench/qlora.py                     # gemma-3-270m, 24 steps, batch 8, seeds 1-3
    python bench/qlora.py --steps 12 --seeds 1

Stage 1 runs as a user would run it (its own process: the peak RSS is the training process's),
with `--precision bf16` for both, so the only difference is the 4-bit base; its summary gives
tokens per second of training steps, peak RSS and the validation loss after the same steps. Then
stage 2 answers the first `--limit` test records in each run folder: the LoRA adapter on its bf16
base, the QLoRA adapter on its 4-bit base (the default) and on its base unquantized
(`--unquantized-base`), and says how many greedy answers of the last two are equal. Writes
bench/results/qlora-cpu.json (or -cuda) with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from child import save_results

ROOT = Path(__file__).resolve().parent.parent


def stage(script: str, *args: str) -> None:
    result = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{script} {' '.join(args)} failed:\n{result.stderr[-3000:]}")


def train(run: Path, qlora: bool, steps: int, batch_size: int, seed: int) -> dict:
    stage("part1_instruction_finetuning.py", "--output-dir", str(run), "--max-steps", str(steps), "--batch-size",
          str(batch_size), "--eval-steps", str(steps), "--seed", str(seed), "--precision", "bf16",
          *(["--qlora"] if qlora else []))
    summary = json.loads((run / "finetuned" / "training_summary.json").read_text())
    return {"seed": seed, "tokens_per_second": summary["tokens_per_second"], "wall_time_s": summary["wall_time_s"],
            "peak_rss_mb": summary["peak_memory"]["cpu_rss_mb"], "val_loss_before": round(summary["val_loss_before"], 4),
            "val_loss_after": round(summary["val_loss_after"], 4)}


def answer(run: Path, limit: int, *extra: str) -> tuple[list[str], dict]:
    out = run / ("unquantized" if extra else "as-trained")
    stage("part2_generate_test_responses.py", "--output-dir", str(run), "--models", "finetuned", "--limit", str(limit),
          "--max-new-tokens", "64", "--precision", "bf16", *extra)
    rows = json.loads((run / "test_base_model.json").read_text())
    timing = json.loads((run / "test_base_model.meta.json").read_text())["timings"]["finetuned"]
    out.mkdir()
    for name in ("test_base_model.json", "test_base_model.meta.json"):
        (run / name).rename(out / name)
    return [r["finetuned_model_response"] for r in rows], {"seconds": timing["seconds"],
                                                            "tokens_per_second": timing["generated_tokens_per_second"]}


def summarize(rows: list[dict]) -> dict:
    return {key: {"mean": round(statistics.mean(r[key] for r in rows), 4),
                  "range": [min(r[key] for r in rows), max(r[key] for r in rows)]}
            for key in ("tokens_per_second", "wall_time_s", "peak_rss_mb", "val_loss_before", "val_loss_after")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--limit", type=int, default=16, help="test records stage 2 answers in each run")
    args = parser.parse_args()

    import torch

    work = Path(tempfile.mkdtemp(prefix="qlora-bench-"))
    trials: dict[str, list[dict]] = {"lora_bf16": [], "qlora_nf4": []}
    for seed in range(1, args.seeds + 1):  # alternating, so that a slower minute hits both
        for name in trials:
            trials[name].append(train(work / f"{name}-{seed}", name == "qlora_nf4", args.steps, args.batch_size, seed))
            print(json.dumps({name: trials[name][-1]}), flush=True)
    lora_answers, lora_speed = answer(work / "lora_bf16-1", args.limit)
    fourbit_answers, fourbit_speed = answer(work / "qlora_nf4-1", args.limit)
    unquantized_answers, unquantized_speed = answer(work / "qlora_nf4-1", args.limit, "--unquantized-base")
    summary = {name: summarize(rows) for name, rows in trials.items()}
    results = {
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "settings": {"steps": args.steps, "batch_size": args.batch_size, "precision": "bf16", "seeds": args.seeds},
        "training": summary,
        "qlora_over_lora": {"tokens_per_second": round(summary["qlora_nf4"]["tokens_per_second"]["mean"]
                                                       / summary["lora_bf16"]["tokens_per_second"]["mean"], 3),
                            "peak_rss": round(summary["qlora_nf4"]["peak_rss_mb"]["mean"]
                                              / summary["lora_bf16"]["peak_rss_mb"]["mean"], 3)},
        "generation": {"records": args.limit, "max_new_tokens": 64, "lora_bf16": lora_speed,
                       "qlora_4bit_base": fourbit_speed, "qlora_unquantized_base": unquantized_speed,
                       "qlora_answers_equal_4bit_vs_unquantized": sum(
                           a == b for a, b in zip(fourbit_answers, unquantized_answers)),
                       "lora_answers_nonempty": sum(bool(a) for a in lora_answers)},
        "trials": trials,
    }
    print(json.dumps(results, indent=2))
    save_results(f"qlora-{results['device']}", __doc__, results)


if __name__ == "__main__":
    main()
