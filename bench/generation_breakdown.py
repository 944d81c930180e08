"""Where stage 2's time goes: TransformersGenerator.generate as stage 2 runs it (batch 32, grouped by
length, 128 new tokens, greedy, our stop check) on the test records, for the base model and, with
--adapter, the finetuned one (LoRA wrappers on), split into the prompt's forward pass (prefill),
the decode steps' forward passes (their transformer layers, attention and MLP, and LM head), the
stop check, and the rest of `generate` (logits processing, cache bookkeeping, Python).

    python bench/generation_breakdown.py                                # base model, 32 records
    python bench/generation_breakdown.py --adapter outputs/finetuned

Timings come from hooks on the real modules, so the run is the one stage 2 makes. Writes
bench/results/generation_breakdown-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from child import Stopwatch, save_results


class PhaseStopwatch:
    """A module's forward time, split into prefill (more than one new position) and decode calls."""

    def __init__(self, module):
        self.seconds = {"prefill": 0.0, "decode": 0.0}
        self.calls = {"prefill": 0, "decode": 0}
        module.register_forward_pre_hook(self._start, with_kwargs=True)
        module.register_forward_hook(self._stop, with_kwargs=True)

    def _start(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.phase = "prefill" if ids is not None and ids.shape[1] > 1 else "decode"
        self.started = time.perf_counter()

    def _stop(self, module, args, kwargs, output):
        self.seconds[self.phase] += time.perf_counter() - self.started
        self.calls[self.phase] += 1


def breakdown(generator, model: str, prompts: list[str], batch_size: int, max_new_tokens: int, style) -> dict:
    from instructkit.generate import generator as generation
    from instructkit.generate.generator import length_sorted_batches

    with generator._answering(model) as answering:
        inner = answering.get_base_model() if hasattr(answering, "get_base_model") else answering
    whole = PhaseStopwatch(inner)
    head = Stopwatch(inner.get_output_embeddings())
    layers = inner.model.layers if hasattr(inner.model, "layers") else inner.model.language_model.layers
    attention = [Stopwatch(layer.self_attn) for layer in layers]
    mlp = [Stopwatch(layer.mlp) for layer in layers]
    stop_s = 0.0
    check = generation.StopAtStrings.__call__

    def timed_check(self, *a, **k):
        nonlocal stop_s
        t = time.perf_counter()
        out = check(self, *a, **k)
        stop_s += time.perf_counter() - t
        return out

    generation.StopAtStrings.__call__ = timed_check
    generated, started = 0, time.perf_counter()
    try:
        for batch in length_sorted_batches(generator.lengths(prompts), batch_size):
            _, n = generator.generate(model, [prompts[i] for i in batch], max_new_tokens, style)
            generated += n
    finally:
        generation.StopAtStrings.__call__ = check
    total = time.perf_counter() - started
    forward = sum(whole.seconds.values())
    parts = {
        "prefill_forward": whole.seconds["prefill"],
        "decode_forward": whole.seconds["decode"],
        "stop_check": stop_s,
        "rest_of_generate": total - forward - stop_s,
    }
    # The head, attention and MLP timers run in both phases: shares of all forward time.
    inside = {"lm_head": head.seconds, "attention": sum(s.seconds for s in attention), "mlp": sum(s.seconds for s in mlp)}
    inside["rest_of_layers"] = forward - sum(inside.values())
    return {"seconds": round(total, 2), "generated_tokens": generated, "decode_steps": whole.calls["decode"],
            "ms_per_decode_step": round(1000 * whole.seconds["decode"] / max(1, whole.calls["decode"]), 1),
            "parts_s": {k: round(v, 2) for k, v in parts.items()},
            "parts_share": {k: round(v / total, 3) for k, v in parts.items()},
            "forward_s": {k: round(v, 2) for k, v in inside.items()},
            "forward_share": {k: round(v / forward, 3) for k, v in inside.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--adapter", default="", help="stage 1's adapter folder: the finetuned model too")
    args = parser.parse_args()

    import torch

    from instructkit.data.prompts import get_style
    from instructkit.data.records import load_records, split_records
    from instructkit.generate.generator import TransformersGenerator
    from instructkit.models.references import EMBEDDED_BASE, resolve_model
    from instructkit.train.config import DEFAULT_DATA

    style = get_style("alpaca")
    records = split_records(load_records(DEFAULT_DATA), 0.05, 0.10, seed=123).test[:args.records]
    adapter = Path(args.adapter) if args.adapter else None
    models = ["base", "finetuned"] if adapter else ["base"]
    generator = TransformersGenerator(resolve_model(EMBEDDED_BASE), adapter, "", False, models)
    prompts = [generator.render(style, r) for r in records]
    results = {"records": len(prompts), "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
               "threads": torch.get_num_threads(), "device": "cuda" if torch.cuda.is_available() else "cpu"}
    for model in models:
        results[model] = breakdown(generator, model, prompts, args.batch_size, args.max_new_tokens, style)
        print(model, json.dumps(results[model], indent=1), flush=True)
    save_results(f"generation_breakdown-{results['device']}", __doc__, results)


if __name__ == "__main__":
    main()
