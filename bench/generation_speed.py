"""Stage 2's decode speed, the earlier paths against today's, side by side in one process: the same
test records, prompts, model and max_new_tokens through TransformersGenerator.generate, with

- "stop_strings, batch 8": stage 2 as it was (transformers' `stop_strings` check, one `generate`
  call per batch of 8),
- "one call, batch B": our StopAtStrings, one `generate` call per batch, for each batch size B,
- "spans of S, batch 32": today's stage 2: decoding S steps at a time, the finished rows leaving
  the batch (and the KV cache) between spans, for each S asked for.

    python bench/generation_speed.py                                   # 32 records, 128 new tokens, base model
    python bench/generation_speed.py --adapter outputs/finetuned --batch-sizes 8 32 --spans 16

Each configuration's greedy answers are compared with the baseline's (a larger batch pads prompts
differently, and a smaller one after a span multiplies other shapes, which can change a
floating-point sum and so, rarely, a token). Writes bench/results/generation_speed-[finetuned-]<device>.json;
the README quotes it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from instructkit.data.prompts import get_style
from instructkit.data.records import load_records, split_records
from instructkit.generate import generator as generation
from instructkit.generate.generator import TransformersGenerator, length_sorted_batches
from instructkit.models.references import EMBEDDED_BASE, resolve_model
from instructkit.runs.artifacts import manifest, write_json_atomic
from instructkit.train.config import DEFAULT_DATA

RESULTS = Path(__file__).resolve().parent / "results"


class OneCall(TransformersGenerator):
    """One `generate` call per batch: every row stays until the batch's longest answer ends."""

    def _new_tokens(self, model, inputs, max_new_tokens, style, temperature=0.0, top_p=1.0):
        output = model.generate(**inputs, **self._decoding_kwargs(max_new_tokens, style, inputs["input_ids"].shape[1]))
        return list(output[:, inputs["input_ids"].shape[1]:])


class TransformersStopStrings(OneCall):
    """The baseline: transformers' own stop_strings check, as stage 2 generated before."""

    def _decoding_kwargs(self, max_new_tokens, style, prompt_length, temperature=0.0, top_p=1.0):
        kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=self.tokenizer.pad_token_id)
        if style.stop_strings:
            kwargs.update(stop_strings=list(style.stop_strings), tokenizer=self.tokenizer)
        return kwargs


def answer(generator, model: str, prompts: list[str], batch_size: int, max_new_tokens: int, style) -> tuple[list[str], float, int]:
    answers, steps = [""] * len(prompts), 0
    started = time.perf_counter()
    for batch in length_sorted_batches(generator.lengths(prompts), batch_size):
        texts, _ = generator.generate(model, [prompts[i] for i in batch], max_new_tokens, style)
        for i, text in zip(batch, texts):
            answers[i] = text
        steps += 1
    return answers, time.perf_counter() - started, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--spans", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--adapter", default="", help="stage 1's adapter folder: time the finetuned model (default: the base)")
    args = parser.parse_args()

    style = get_style("alpaca")
    records = split_records(load_records(DEFAULT_DATA), 0.05, 0.10, seed=123).test[:args.records]
    base = resolve_model(EMBEDDED_BASE)
    adapter = Path(args.adapter) if args.adapter else None
    model = "finetuned" if adapter else "base"
    baseline = TransformersStopStrings(base, adapter, "", False, [model])
    prompts = [baseline.render(style, r) for r in records]

    def sharing_weights(cls, **attributes):
        generator = cls.__new__(cls)  # one copy of the weights for all
        generator.model, generator.tokenizer, generator.merged = baseline.model, baseline.tokenizer, None
        generator.__dict__.update(attributes)
        return generator

    reference, seconds, _ = answer(baseline, model, prompts, 8, args.max_new_tokens, style)
    runs = {"stop_strings, batch 8": {"seconds": round(seconds, 2), "speedup": 1.0, "answers_equal_fraction": 1.0}}
    variants = [(f"one call, batch {b}", sharing_weights(OneCall), b) for b in args.batch_sizes]
    variants += [(f"spans of {s}, batch 32", sharing_weights(TransformersGenerator, span=s), 32) for s in args.spans]
    for name, generator, batch_size in variants:
        answers, seconds_b, _ = answer(generator, model, prompts, batch_size, args.max_new_tokens, style)
        equal = sum(a == b for a, b in zip(answers, reference))
        runs[name] = {
            "seconds": round(seconds_b, 2), "speedup": round(seconds / seconds_b, 2),
            "answers_equal_fraction": round(equal / len(prompts), 3),
            "differing": [i for i, (a, b) in enumerate(zip(answers, reference)) if a != b]}
        print(name, runs[name], flush=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = manifest(
        benchmark="stage 2 decode: transformers' stop_strings at batch 8 (before) against our stop check in one "
                  "generate call per batch, and in spans with finished rows leaving the batch; same prompts, greedy",
        command="python bench/generation_speed.py " + " ".join(sys.argv[1:]), device=device,
        model=f"{EMBEDDED_BASE}{' + adapter' if adapter else ''}", records=len(prompts),
        max_new_tokens=args.max_new_tokens, runs=runs, stopping=generation.StopAtStrings.__doc__.split(".")[0],
    )
    path = write_json_atomic(RESULTS / f"generation_speed-{'finetuned-' if adapter else ''}{device}.json", result)
    print(json.dumps(runs, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
