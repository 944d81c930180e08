"""Stage 4's ways of getting a 0-100 score from the embedded judge, on the same prompts, in one run:

- litgpt generate (the default before): LitGPT's `LLM.generate`, one prompt at a time, the reply
  parsed strictly and asked once more where it could not be read, as stage 4 does;
- hf generate: transformers `generate`, greedy, batched by length, the same parse and retry;
- hf probability (the default now): the expected score from the judge's token probabilities, one
  forward pass over the prompt and the tree of all 101 scores (instructkit.judges.ScoreTree).

Two sets of prompts: the models' responses of stage 2 (what stage 4 judges; timed), and a check
that needs no reference scores: each test record's expected output against another record's
expected output given as the response to the same instruction. A judge worth using scores the
right answer higher; `discrimination` is the share of records where it did (a tie or a missing
score counts as a miss), `usable` the pairs where both got a number.

    python bench/judge_scoring.py                     # 16 records x 2 responses of outputs/test_base_model.json
    python bench/judge_scoring.py --input RUN/test_base_model.json --records 32

Model loading is timed apart from scoring. Writes bench/results/judge_scoring-<device>.json; the
README quotes it.
"""

from __future__ import annotations

import argparse

from child import save_results, timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", default="outputs/test_base_model.json")
    parser.add_argument("--records", type=int, default=16)
    parser.add_argument("--judge-model", default="smollm2-135m-instruct")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()

    import torch

    from instructkit.data.responses import read_responses
    from instructkit.judge.judges import HFJudge, LitGPTJudge
    from instructkit.judge.prompts import SCORE_PREFILL, SCORE_RETRY, SYSTEM, parse_score, score_prompt
    from instructkit.judge.scoring import read_with_retry
    from instructkit.models.backends import user_turn

    records, models = read_responses(args.input)
    records = records[:args.records]
    judged = [score_prompt(r, r[m]) for r in records for m in models if r[m] is not None]
    # The right answer, then another record's answer, to each record's instruction.
    right = [score_prompt(r, r["output"]) for r in records]
    wrong = [score_prompt(r, records[(i + len(records) // 2) % len(records)]["output"]) for i, r in enumerate(records)]
    results: dict = {"records": len(records), "judged_prompts": len(judged), "check_pairs": len(records),
                     "judge": args.judge_model, "batch_size": args.batch_size,
                     "device": "cuda" if torch.cuda.is_available() else "cpu", "threads": torch.get_num_threads()}

    def batched(prompts: list[str], score_batch) -> list[float | None]:
        """Scores in the prompts' order, computed in batches of similar length as stage 4 does."""
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        scores: list = [None] * len(prompts)
        for start in range(0, len(order), args.batch_size):
            chunk = order[start:start + args.batch_size]
            for i, score in zip(chunk, score_batch([prompts[i] for i in chunk])):
                scores[i] = score
        return scores

    def generated(judge):
        return lambda prompts: [e["value"] for e in read_with_retry(judge, prompts, SCORE_RETRY, parse_score,
                                                                     args.max_new_tokens, SCORE_PREFILL)]

    def measure(name: str, score_batch) -> None:
        scores, seconds = timed(lambda: batched(judged, score_batch))
        check = batched(right + wrong, score_batch)
        pairs = list(zip(check[:len(right)], check[len(right):]))
        results[name] = {"seconds": seconds, "per_prompt_ms": round(1000 * seconds / len(judged), 1),
                         "scored": sum(s is not None for s in scores),
                         "discrimination": round(sum(a is not None and b is not None and a > b for a, b in pairs) / len(pairs), 3),
                         "usable": sum(a is not None and b is not None for a, b in pairs)}

    litgpt, results["litgpt_load_s"] = timed(lambda: LitGPTJudge(args.judge_model))
    measure("litgpt_generate", generated(litgpt))
    litgpt = None  # free it before transformers loads its copy

    hf, results["hf_load_s"] = timed(lambda: HFJudge(args.judge_model, attention="sdpa"))
    measure("hf_generate", generated(hf))
    measure("hf_probability", lambda prompts: [e for e, _ in hf.expected_scores(prompts, SCORE_PREFILL)])
    # What computing the judge's fixed instructions once (a shared KV-cache prefix) could save: the
    # share of the tokens a probability-scoring forward pass runs that every prompt has in common.
    ids = [hf.tokenizer(hf.chat_text(user_turn(p, SYSTEM), SCORE_PREFILL), add_special_tokens=False)["input_ids"]
           for p in judged]
    shared = next((n for n in range(min(map(len, ids))) if len({tuple(i[:n + 1]) for i in ids}) > 1), min(map(len, ids)))
    tree = len(hf._score_tree.nodes)
    mean = sum(map(len, ids)) / len(ids)
    results["tokens_per_forward"] = {"mean_prompt": round(mean, 1), "shared_prefix": shared, "score_tree": tree,
                                     "shared_share": round(shared / (mean + tree), 3)}

    baseline = results["litgpt_generate"]["seconds"]
    for variant in ("litgpt_generate", "hf_generate", "hf_probability"):
        entry = results[variant]
        entry["speedup_vs_litgpt_generate"] = round(baseline / entry["seconds"], 2)
        print(f"{variant:16s} {entry['seconds']:7.2f} s  {entry['per_prompt_ms']:7.1f} ms/prompt  "
              f"x{entry['speedup_vs_litgpt_generate']}  scored {entry['scored']}/{len(judged)}  "
              f"right > wrong {entry['discrimination']:.3f} (both scored: {entry['usable']}/{len(records)})")
    print("tokens per forward pass:", results["tokens_per_forward"])
    save_results(f"judge_scoring-{results['device']}", __doc__, results)


if __name__ == "__main__":
    main()
