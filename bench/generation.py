"""Stage 2's batched generation against a one-record-at-a-time greedy loop, as the
LLMs-from-scratch book writes it (the whole sequence re-run for every new token, no KV cache).

Both answer the same test records with the same prompts, model and max_new_tokens, in one
process, alternating, and both responses go through the same clean-up. Run by hand:

    python bench/generation.py                      # embedded gemma-3-270m, 16 records
    python bench/generation.py --records 32 --max-new-tokens 64 --batch-size 8

Writes bench/results/generation-<device>.json; the README quotes it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from instructkit.data.prompts import get_style
from instructkit.data.records import load_records, split_records
from instructkit.generate.generator import TransformersGenerator, clean_response, length_sorted_batches
from instructkit.models.references import EMBEDDED_BASE, resolve_model
from instructkit.runs.artifacts import manifest, write_json_atomic
from instructkit.train.config import DEFAULT_DATA

RESULTS = Path(__file__).resolve().parent / "results"


def book_style_generate(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """LLMs-from-scratch ch07 `generate`: argmax over the last position, full re-run each token."""
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    start = ids.shape[1]
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            next_id = model(ids).logits[:, -1].argmax(dim=-1, keepdim=True)
            if next_id.item() == tokenizer.eos_token_id:
                break
            ids = torch.cat([ids, next_id], dim=1)
    return tokenizer.decode(ids[0, start:], skip_special_tokens=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=EMBEDDED_BASE)
    parser.add_argument("--records", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    style = get_style("alpaca")
    records = split_records(load_records(DEFAULT_DATA), 0.05, 0.10, seed=123).test[:args.records]
    generator = TransformersGenerator(resolve_model(args.model), None, "", False, ["base"])
    tokenizer, model = generator.tokenizer, generator.model
    prompts = [style.render(r, tokenizer) for r in records]

    started = time.perf_counter()
    loop = [clean_response(book_style_generate(model, tokenizer, p, args.max_new_tokens), style.stop_strings) for p in prompts]
    loop_seconds = time.perf_counter() - started

    started = time.perf_counter()
    batched = [""] * len(prompts)
    lengths = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
    for batch in length_sorted_batches(lengths, args.batch_size):
        texts, _ = generator.generate("base", [prompts[i] for i in batch], args.max_new_tokens, style)
        for i, text in zip(batch, texts):
            batched[i] = text
    batched_seconds = time.perf_counter() - started

    # Tokens of the final responses: the same work product for both, so the ratio is fair.
    response_tokens = sum(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in batched)
    equal = sum(a == b for a, b in zip(loop, batched))
    result = manifest(
        benchmark="generation: batched transformers generate vs one-at-a-time greedy loop",
        command="python bench/generation.py " + " ".join(sys.argv[1:]),
        model=args.model,
        records=len(prompts),
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        device="cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})",
        loop_seconds=round(loop_seconds, 2),
        batched_seconds=round(batched_seconds, 2),
        loop_tokens_per_second=round(response_tokens / loop_seconds, 2),
        batched_tokens_per_second=round(response_tokens / batched_seconds, 2),
        speedup=round(loop_seconds / batched_seconds, 2),
        outputs_equal=equal,
        outputs_equal_fraction=round(equal / len(prompts), 3),
        differing=[{"prompt": records[i]["instruction"], "loop": loop[i], "batched": batched[i]}
                   for i in range(len(prompts)) if loop[i] != batched[i]],
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    path = write_json_atomic(RESULTS / f"generation-{device}.json", result)
    print(json.dumps({k: result[k] for k in ("loop_seconds", "batched_seconds", "speedup", "outputs_equal_fraction")}, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
