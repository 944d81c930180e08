"""Stage 3's faster lm-eval model against stock `hf`, side by side in one process: the embedded base
model on offline mmlu_philosophy, each question's per-choice log-likelihoods compared, accuracy and
evaluation time of each.

    python bench/benchmark_continuation.py               # all 311 questions
    python bench/benchmark_continuation.py --limit 40    # a quick look

Writes bench/results/benchmark_continuation-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from child import offline_philosophy

ROOT = Path(__file__).resolve().parent.parent


RESULTS = ROOT / "bench" / "results"


def loglikelihoods(raw: dict, task: str) -> dict[int, list[float]]:
    """doc_id -> each choice's log-likelihood, from lm-eval's logged samples."""
    return {s["doc_id"]: [float(r[0][0]) for r in s["resps"]] for s in raw["samples"][task]}


def run(model_class, path: str, device: str, task_names: dict, task_manager, limit: int, batch_size: int):
    import lm_eval

    lm = model_class(pretrained=path, batch_size=batch_size, device=device,
                     dtype="bfloat16" if device == "cuda" else "float32")
    started = time.perf_counter()
    raw = lm_eval.simple_evaluate(model=lm, tasks=list(task_names.values()), limit=limit or None,
                                  task_manager=task_manager, log_samples=True, random_seed=0,
                                  numpy_random_seed=0, torch_random_seed=0)
    return raw, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    from lm_eval.models.huggingface import HFLM

    from instructkit.evaluate.lm_eval_model import ContinuationHFLM
    from instructkit.models.references import EMBEDDED_BASE, resolve_model
    from instructkit.runs.artifacts import manifest, write_json_atomic

    device, task_names, task_manager = offline_philosophy()
    task = next(iter(task_names.values()))
    path = resolve_model(EMBEDDED_BASE).path
    stock, stock_s = run(HFLM, path, device, task_names, task_manager, args.limit, args.batch_size)
    fast, fast_s = run(ContinuationHFLM, path, device, task_names, task_manager, args.limit, args.batch_size)
    a, b = loglikelihoods(stock, task), loglikelihoods(fast, task)
    worst = max(abs(x - y) for doc in a for x, y in zip(a[doc], b[doc]))
    result = manifest(
        benchmark="stage 3: lm-eval's hf model against instructkit-hf (logits only where scored), "
                  "gemma-3-270m, offline mmlu_philosophy, zero-shot",
        command="python bench/benchmark_continuation.py " + " ".join(sys.argv[1:]), device=device,
        batch_size=args.batch_size, n_questions=len(a),
        accuracy={"hf": stock["results"][task]["acc,none"], "instructkit-hf": fast["results"][task]["acc,none"]},
        same_prediction_on_every_question=all(
            max(range(len(a[d])), key=a[d].__getitem__) == max(range(len(b[d])), key=b[d].__getitem__) for d in a),
        max_abs_loglikelihood_difference=worst,
        evaluate_s={"hf": round(stock_s, 1), "instructkit-hf": round(fast_s, 1)},
        speedup=round(stock_s / fast_s, 2),
    )
    out = write_json_atomic(RESULTS / f"benchmark_continuation-{device}.json", result)
    print(json.dumps({k: result[k] for k in ("n_questions", "accuracy", "same_prediction_on_every_question",
                                             "max_abs_loglikelihood_difference", "evaluate_s", "speedup")}, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
