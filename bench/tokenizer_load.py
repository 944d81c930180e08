"""The embedded Gemma 3 tokenizer (262k tokens): what loading it and hashing it cost, stock against
instructkit's `load_tokenizer`, each trial in a child process of its own:

- stock: `AutoTokenizer.from_pretrained` and `datasets`' fingerprint hash of the result (what every
  `Dataset.map` over a function holding the tokenizer computes: TRL's dataset preparation in
  stages 1 and 1b runs several);
- ours: `load_tokenizer` once, the hash of its tokenizer (the Python copies of the vocabulary and
  merges dropped), and its third load in the process (a copy of the one kept at the second).

    python bench/tokenizer_load.py [--trials 3]

Writes bench/results/tokenizer_load-cpu.json with the CPU model and flags.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from child import report, run_child, save_results, timed


def one() -> dict:
    from datasets.fingerprint import Hasher
    from transformers import AutoTokenizer

    from instructkit.models.loading import load_tokenizer
    from instructkit.models.references import EMBEDDED_BASE, resolve_model

    model = resolve_model(EMBEDDED_BASE)
    stock, stock_load = timed(lambda: AutoTokenizer.from_pretrained(model.path))
    _, stock_hash = timed(lambda: Hasher.hash(stock))
    ours, our_load = timed(lambda: load_tokenizer(model))
    _, our_hash = timed(lambda: Hasher.hash(ours))
    _, second_load = timed(lambda: load_tokenizer(model))
    again, third_load = timed(lambda: load_tokenizer(model))
    text = "Hello <start_of_turn>user\nwörld 123 ```py\nx = 1```<end_of_turn>"
    same = stock(text).input_ids == ours(text).input_ids == again(text).input_ids
    return {"stock_load_s": stock_load, "stock_hash_s": stock_hash, "our_load_s": our_load,
            "our_hash_s": our_hash, "second_load_s": second_load, "third_load_s": third_load,
            "same_ids": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        report(one())
        return
    trials = []
    for _ in range(args.trials):
        result = run_child(sys.argv[0], "--one")
        if "failed" in result:
            sys.exit(result["failed"])
        trials.append(result)
        print(result, flush=True)
    medians = {key: statistics.median(t[key] for t in trials) for key in trials[0] if key.endswith("_s")}
    summary = {"median": medians, "hash_ratio": round(medians["stock_hash_s"] / medians["our_hash_s"], 1),
               "load_ratio_third": round(medians["stock_load_s"] / medians["third_load_s"], 1),
               "same_ids": all(t["same_ids"] for t in trials)}
    print(summary)
    save_results("tokenizer_load-cpu", __doc__, {"trials": trials, "summary": summary})


if __name__ == "__main__":
    main()
