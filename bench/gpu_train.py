"""Stage 1 on an 8B-shaped Llama on one GPU: LoRA in bf16 and QLoRA NF4 with stage 1's settings,
against plain SFTTrainer defaults, each variant in its own process (clean peak memory).

    python bench/gpu_train.py                              # Llama-3-8B shape, sequence 2048, 10 steps
    python bench/gpu_train.py --tiny                       # 2-layer shape: checks the script on a CPU

Weights are random (real weights cannot travel to the machine); speed and memory do not depend on
their values. Attention is stage 1's choice: FlashAttention 2 when flash-attn is installed
(requirements-gpu.txt), else SDPA; the result names it. Reports tokens/s, model FLOPs utilisation (TRL's compute_flops_per_token, 6N-style
including the attention term) against the bf16 matmul rate measured in the same run, and peak GPU
memory. Writes bench/results/gpu-<device name>.json (or tiny-<device>.json with --tiny).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

from child import report, run_child

ROOT = Path(__file__).resolve().parent.parent


RESULTS = ROOT / "bench" / "results"
VARIANTS = ("plain_trl_lora", "ours_lora_bf16", "ours_qlora_nf4")
LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, max_position_embeddings=8192)
TINY = dict(LLAMA3_8B, hidden_size=256, intermediate_size=896, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2)


def save_random_model(tiny: bool, folder: Path) -> None:
    """A random-weight Llama saved once, so the QLoRA variant quantizes it through from_pretrained."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM._from_config(LlamaConfig(**(TINY if tiny else LLAMA3_8B)), dtype=torch.bfloat16)
    model.save_pretrained(folder)


def matmul_tflops() -> float:
    """Dense bf16 matmul rate of this device, the denominator of MFU."""
    import torch

    if not torch.cuda.is_available():
        return 0.0
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ a
    torch.cuda.synchronize()
    started, repeats = time.perf_counter(), 20
    for _ in range(repeats):
        a @ a
    torch.cuda.synchronize()
    return 2 * 8192**3 * repeats / (time.perf_counter() - started) / 1e12


def one_trial(variant: str, model_dir: str, seq: int, steps: int, batch_size: int) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer
    from trl.trainer.utils import compute_flops_per_token

    from instructkit.models.loading import load_causal_lm, load_tokenizer, qlora_settings
    from instructkit.models.references import EMBEDDED_BASE, ResolvedModel, resolve_model
    from instructkit.train.loss_head import use_compact_head
    from instructkit.train.sft import ThroughputCallback, TrainingConfig, sft_arguments

    on_gpu = torch.cuda.is_available()
    qlora = variant == "ours_qlora_nf4"
    # Only the pad id is read from the tokenizer; the embedded one is at hand offline.
    tokenizer = load_tokenizer(resolve_model(EMBEDDED_BASE))
    model = load_causal_lm(ResolvedModel(model_dir, model_dir, "local"),
                           quantization=qlora_settings(torch.bfloat16) if qlora else None)
    generator = torch.Generator().manual_seed(0)
    n_records = steps * batch_size
    ids = torch.randint(10, model.config.vocab_size, (n_records, seq), generator=generator)
    half = [0] * (seq // 2) + [1] * (seq - seq // 2)  # loss on the second half, as on a response
    data = Dataset.from_dict({"input_ids": ids.tolist(), "completion_mask": [half] * n_records})
    workdir = tempfile.mkdtemp()
    if variant == "plain_trl_lora":
        args = SFTConfig(output_dir=workdir, max_steps=steps, per_device_train_batch_size=batch_size,
                         max_length=seq, report_to="none", save_strategy="no", use_cpu=not on_gpu,
                         bf16=on_gpu)
    else:
        config = TrainingConfig(max_steps=steps, batch_size=batch_size, max_length=seq, qlora=qlora, eval_steps=steps)
        args = sft_arguments(config, Path(workdir), n_records, has_val=False)
        args.save_strategy = "no"
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                         peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainer.add_callback(throughput := ThroughputCallback(trainer))
    if variant != "plain_trl_lora":
        use_compact_head(trainer)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    tokens_per_second = throughput.tokens / throughput.seconds
    flops_per_token = compute_flops_per_token(model.config, seq)
    return {
        "variant": variant,
        "tokens_per_second": round(tokens_per_second, 1),
        "model_tflops": round(tokens_per_second * flops_per_token / 1e12, 2),
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if on_gpu else None,
        "gradient_checkpointing": args.gradient_checkpointing,
        "bf16": args.bf16,
        "attention": model.config._attn_implementation,
        "final_train_loss": trainer.state.log_history[-1].get("train_loss"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="2-layer Llama shape, sequence 256: a CPU check of the script")
    parser.add_argument("--one", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        report(one_trial(args.one, args.model_dir, args.seq, args.steps, args.batch_size))
        return

    import torch

    from instructkit.runs.artifacts import manifest, write_json_atomic

    seq = 256 if args.tiny else args.seq
    model_dir = Path(tempfile.mkdtemp(prefix="llama-random-"))
    save_random_model(args.tiny, model_dir)
    peak_tflops = matmul_tflops()
    trials = []
    for variant in VARIANTS:
        trials.append({"variant": variant, **run_child(__file__, "--one", variant, "--model-dir", str(model_dir),
                                                       "--seq", str(seq), "--steps", str(args.steps),
                                                       "--batch-size", str(args.batch_size))})
        if peak_tflops and "model_tflops" in trials[-1]:
            trials[-1]["mfu"] = round(trials[-1]["model_tflops"] / peak_tflops, 3)
        print(json.dumps(trials[-1])[:600], flush=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    speeds = {t["variant"]: t["tokens_per_second"] for t in trials if "tokens_per_second" in t}
    result = manifest(
        benchmark="LoRA bf16 / QLoRA NF4 on a random-weight Llama-3-8B shape vs plain SFTTrainer defaults",
        command="python bench/gpu_train.py " + " ".join(sys.argv[1:]), device=device,
        shape="tiny" if args.tiny else "llama-3-8b", seq=seq, steps=args.steps, batch_size=args.batch_size,
        bf16_matmul_tflops=round(peak_tflops, 1), trials=trials,
        speedup_vs_plain_trl={v: round(s / speeds["plain_trl_lora"], 2) for v, s in speeds.items()}
        if "plain_trl_lora" in speeds else None,
    )
    name = ("tiny-" if args.tiny else "gpu-") + re.sub(r"[^A-Za-z0-9]+", "-", device).strip("-").lower()
    print(f"written to {write_json_atomic(RESULTS / f'{name}.json', result)}")


if __name__ == "__main__":
    main()
