"""Where stage 3's time goes: one lm-eval run of the base model on offline mmlu_philosophy, with
its time split into model loading, the transformer layers, the LM head, lm-eval's log_softmax over
the vocabulary, and everything else lm-eval does (building requests, batching, scoring).

    python bench/benchmark_breakdown.py               # first 80 questions (320 loglikelihood requests)
    python bench/benchmark_breakdown.py --limit 0     # all 311

Timings come from hooks on the real modules and a timed log_softmax, so the run is the one stage 3
makes. Writes bench/results/benchmark_breakdown-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from child import Stopwatch, offline_philosophy

ROOT = Path(__file__).resolve().parent.parent


RESULTS = ROOT / "bench" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    import lm_eval
    import torch.nn.functional as F
    from lm_eval.models.huggingface import HFLM

    from instructkit.models.references import EMBEDDED_BASE, resolve_model
    from instructkit.runs.artifacts import manifest, write_json_atomic

    device, task_names, task_manager = offline_philosophy()
    started = time.perf_counter()
    lm = HFLM(pretrained=resolve_model(EMBEDDED_BASE).path, batch_size=args.batch_size, device=device,
              dtype="bfloat16" if device == "cuda" else "float32")
    load_s = time.perf_counter() - started
    whole_model = Stopwatch(lm.model)
    head = Stopwatch(lm.model.get_output_embeddings())

    softmax_s = 0.0
    log_softmax = F.log_softmax

    def timed_log_softmax(*a, **k):
        nonlocal softmax_s
        t = time.perf_counter()
        out = log_softmax(*a, **k)
        softmax_s += time.perf_counter() - t
        return out

    F.log_softmax = timed_log_softmax
    started = time.perf_counter()
    try:
        raw = lm_eval.simple_evaluate(model=lm, tasks=list(task_names.values()), limit=args.limit or None,
                                      task_manager=task_manager, random_seed=0, numpy_random_seed=0,
                                      torch_random_seed=0)
    finally:
        F.log_softmax = log_softmax
    evaluate_s = time.perf_counter() - started

    parts = {
        "transformer_layers": whole_model.seconds - head.seconds,
        "lm_head": head.seconds,
        "log_softmax_over_vocabulary": softmax_s,
        "rest_of_lm_eval": evaluate_s - whole_model.seconds - softmax_s,
    }
    name = next(iter(task_names.values()))
    result = manifest(
        benchmark="where stage 3's time goes (lm-eval hf model, gemma-3-270m, offline mmlu_philosophy)",
        command="python bench/benchmark_breakdown.py " + " ".join(sys.argv[1:]), device=device,
        limit=args.limit, batch_size=args.batch_size, n_questions=len(raw["samples"][name]),
        accuracy=raw["results"][name]["acc,none"], model_load_s=round(load_s, 1), evaluate_s=round(evaluate_s, 1),
        seconds={k: round(v, 1) for k, v in parts.items()},
        share_of_evaluate={k: round(v / evaluate_s, 3) for k, v in parts.items()},
    )
    path = write_json_atomic(RESULTS / f"benchmark_breakdown-{device}.json", result)
    print(json.dumps({k: result[k] for k in ("n_questions", "model_load_s", "evaluate_s", "seconds", "share_of_evaluate")},
                     indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
