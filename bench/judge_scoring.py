"""Stage 4's ways of getting a 0-100 score from a local judge, on the same prompts (batched by length, as stage 4 does), in one run:

- hf generate (baseline): transformers `generate`, greedy, batched, the reply parsed strictly;
- hf probability: the expected score from the judge's token probabilities, one forward pass over
  the prompt and the tree of all 101 scores (instructkit.judges.ScoreTree);
- litgpt generate: LitGPT's `LLM.generate`, one prompt at a time (the default judge's path).

    python bench/judge_scoring.py                     # 16 records x 2 responses of outputs/test_base_model.json
    python bench/judge_scoring.py --records 8 --judge-model smollm2-135m-instruct

Model loading is timed apart from scoring. Writes bench/results/judge_scoring-<device>.json; the
README quotes it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from child import save_results, timed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", default="outputs/test_base_model.json")
    parser.add_argument("--records", type=int, default=16)
    parser.add_argument("--judge-model", default="smollm2-135m-instruct")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()

    import torch

    from instructkit.judge_prompts import SCORE_PREFILL, parse_score, score_prompt
    from instructkit.judges import HFJudge, LitGPTJudge
    from instructkit.judging import read_responses

    records, models = read_responses(args.input)
    prompts = sorted((score_prompt(r, r[m]) for r in records[:args.records] for m in models if r[m] is not None), key=len)
    batches = [prompts[i:i + args.batch_size] for i in range(0, len(prompts), args.batch_size)]
    results: dict = {"prompts": len(prompts), "judge": args.judge_model, "batch_size": args.batch_size,
                     "device": "cuda" if torch.cuda.is_available() else "cpu", "threads": torch.get_num_threads()}

    hf, results["hf_load_s"] = timed(lambda: HFJudge(args.judge_model))
    replies, seconds = timed(lambda: [r for b in batches for r in hf.replies(b, args.max_new_tokens, SCORE_PREFILL)])
    generated = [parse_score(r.text).value for r in replies]
    results["hf_generate"] = {"seconds": seconds, "parsed": sum(v is not None for v in generated)}
    expected, seconds = timed(lambda: [e for b in batches for e in hf.expected_scores(b, SCORE_PREFILL)])
    results["hf_probability"] = {"seconds": seconds, "parsed": sum(e is not None for e, _ in expected),
                                 "mean_coverage": round(sum(c for _, c in expected) / len(expected), 4)}
    hf = None  # free it before LitGPT loads its copy

    litgpt, results["litgpt_load_s"] = timed(lambda: LitGPTJudge(args.judge_model))
    replies, seconds = timed(lambda: litgpt.replies(prompts, args.max_new_tokens, SCORE_PREFILL))
    results["litgpt_generate"] = {"seconds": seconds, "parsed": sum(parse_score(r.text).value is not None for r in replies)}

    baseline = results["hf_generate"]["seconds"]
    for variant in ("hf_generate", "hf_probability", "litgpt_generate"):
        entry = results[variant]
        entry["per_prompt_ms"] = round(1000 * entry["seconds"] / len(prompts), 1)
        entry["speedup_vs_hf_generate"] = round(baseline / entry["seconds"], 2)
        print(f"{variant:16s} {entry['seconds']:7.2f} s  {entry['per_prompt_ms']:7.1f} ms/prompt  "
              f"x{entry['speedup_vs_hf_generate']}  parsed {entry['parsed']}/{len(prompts)}")
    save_results(f"judge_scoring-{results['device']}", __doc__, results)


if __name__ == "__main__":
    main()
