"""Stage 1 against `litgpt finetune_lora`, the peer a user would pick instead: same model, data,
steps, batch, sequence length, LoRA (r16/a32 on every linear layer of the blocks) and bf16,
alternating, whole commands timed from the shell's point of view and per step from each tool's own log.

    python bench/litgpt_compare.py                    # SmolLM2-135M-Instruct, 12 steps, 2 rounds
    python bench/litgpt_compare.py --rounds 3 --steps 24

LitGPT has no config for gemma-3-270m, so on it only our stage 1 runs (its per-step figure is
quoted beside). Both validate: LitGPT once at the start (2 iterations) and at the end, ours
before and after. Writes bench/results/litgpt_compare-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from child import save_results

ROOT = Path(__file__).resolve().parent.parent
SMOL = "smollm2-135m-instruct"


def timed_command(command: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return result, round(time.perf_counter() - started, 2)


def ours(model: str, steps: int, batch: int, length: int, out: Path) -> dict:
    _, seconds = timed_command([sys.executable, "part1_instruction_finetuning.py", "--output-dir", str(out),
                                "--base-model", model, "--max-steps", str(steps), "--batch-size", str(batch),
                                "--max-length", str(length), "--lora-r", "16", "--lora-alpha", "32",
                                "--eval-steps", str(steps), "--precision", "bf16"])
    summary = json.loads((out / "finetuned" / "training_summary.json").read_text())
    step = summary["train_tokens"] / summary["tokens_per_second"] / summary["steps"]
    return {"tool": "instructkit", "model": model, "command_s": seconds, "training_s": summary["wall_time_s"],
            "step_s": round(step, 3), "val_loss_after": round(summary["val_loss_after"], 4)}


def litgpt(checkpoint: Path, data: Path, steps: int, batch: int, length: int, out: Path) -> dict:
    result, seconds = timed_command([
        sys.executable, "-m", "litgpt", "finetune_lora", str(checkpoint), "--out_dir", str(out),
        "--data", "JSON", "--data.json_path", str(data), "--data.val_split_fraction", "0.05",
        "--data.prompt_style", "alpaca", "--train.max_steps", str(steps), "--train.micro_batch_size", str(batch),
        "--train.global_batch_size", str(batch), "--train.max_seq_length", str(length), "--train.save_interval",
        str(10 * steps), "--train.lr_warmup_steps", "1", "--eval.interval", str(10 * steps),
        "--eval.max_iters", "2", "--lora_r", "16", "--lora_alpha", "32", "--lora_query", "true", "--lora_key", "true",
        "--lora_value", "true", "--lora_projection", "true", "--lora_mlp", "true", "--lora_head", "false",
        "--precision", "bf16-true", "--devices", "1", "--logger_name", "csv"])
    log = result.stdout + result.stderr
    times = [float(t) for t in re.findall(r"iter time: ([\d.]+) ?ms", log)]
    training = re.search(r"Training time: ([\d.]+)s", log)
    return {"tool": "litgpt", "model": SMOL, "command_s": seconds,
            "training_s": float(training.group(1)) if training else None,
            "step_s": round(statistics.median(times) / 1000, 3) if times else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from instructkit.judge.judges import litgpt_checkpoint
    from instructkit.models.references import EMBEDDED_BASE
    from instructkit.train.config import DEFAULT_DATA

    checkpoint = litgpt_checkpoint(SMOL)  # converted once into the cache, as stage 4's LitGPT judge uses it
    work = Path(tempfile.mkdtemp(prefix="litgpt-compare-"))
    runs = []
    for number in range(args.rounds):
        runs.append(litgpt(Path(checkpoint), Path(DEFAULT_DATA), args.steps, args.batch_size, args.max_length,
                           work / f"litgpt-{number}"))
        runs.append(ours(SMOL, args.steps, args.batch_size, args.max_length, work / f"ours-smol-{number}"))
        runs.append(ours(EMBEDDED_BASE, args.steps, args.batch_size, args.max_length, work / f"ours-gemma-{number}"))
        for run in runs[-3:]:
            print(json.dumps(run), flush=True)

    def mean(tool: str, model: str, key: str) -> float | None:
        values = [r[key] for r in runs if r["tool"] == tool and r["model"] == model and r[key] is not None]
        return round(statistics.mean(values), 3) if values else None
    summary = {f"{tool}:{model}": {key: mean(tool, model, key) for key in ("command_s", "training_s", "step_s")}
               for tool, model in (("litgpt", SMOL), ("instructkit", SMOL), ("instructkit", EMBEDDED_BASE))}
    ratios = {key: round(summary[f"instructkit:{SMOL}"][key] / summary[f"litgpt:{SMOL}"][key], 3)
              for key in ("command_s", "step_s") if summary[f"litgpt:{SMOL}"][key]}
    results = {"settings": vars(args), "summary": summary, "ours_over_litgpt_smollm2": ratios, "runs": runs}
    print(json.dumps({"summary": summary, "ours_over_litgpt_smollm2": ratios}, indent=2))
    save_results("litgpt_compare-cpu", __doc__, results)


if __name__ == "__main__":
    main()
