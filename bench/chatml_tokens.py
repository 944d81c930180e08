"""ChatML on a base model: with turn tokens the vocabulary has (our `--prompt-style chatml`) against
new `<|im_start|>`/`<|im_end|>` tokens (what TRL's `clone_chat_template` does), each trial in its
own process.

    python bench/chatml_tokens.py                  # gemma-3-270m, default conversations, 40 steps, batch 8
    python bench/chatml_tokens.py --steps 20

Both trials train the same LoRA (r=16, all linear layers) with TRL's SFTTrainer on the same
tokenized conversations (every answer in the loss, `PromptStyle.token_example`), same seed and
steps. The new-token trials add the two tokens and resize the embeddings (transformers' mean
resizing), then train besides LoRA either the two new rows (PEFT's `trainable_token_indices`) or
the whole tied embedding matrix (`modules_to_save`), the two ways recipes teach new tokens. Each
reports: trainable parameters, adapter size on disk, seconds per step, validation loss before and
after, and how many greedy answers to validation conversations end with the end-of-turn token
within the token limit (a model that never learned its stop runs to the limit). Writes
bench/results/chatml_tokens-cpu.json (or -cuda) with the machine it ran on.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from child import report, run_child, save_results

NEW_TOKENS = ("<|im_start|>", "<|im_end|>")
VARIANTS = ("existing-tokens", "new-tokens-rows", "new-tokens-embeddings")


def trial(variant: str, steps: int, batch_size: int, n_train: int, n_val: int, max_new_tokens: int) -> dict:
    import tempfile
    import time

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    from instructkit.data import packaged
    from instructkit.data.prompts import get_style
    from instructkit.data.records import load_records
    from instructkit.models.loading import load_causal_lm, load_tokenizer
    from instructkit.models.references import EMBEDDED_BASE, resolve_model

    set_seed(0)
    base = resolve_model(EMBEDDED_BASE)
    tokenizer = load_tokenizer(base)
    model = load_causal_lm(base, dtype=torch.float32)
    extra: dict = {}
    if variant != "existing-tokens":
        tokenizer.add_tokens(list(NEW_TOKENS), special_tokens=True)
        model.resize_token_embeddings(len(tokenizer))
    if variant == "new-tokens-rows":  # only the two new rows of the (tied) embedding matrix train
        extra["trainable_token_indices"] = {"embed_tokens": tokenizer.convert_tokens_to_ids(list(NEW_TOKENS))}
    elif variant == "new-tokens-embeddings":  # the whole (tied) embedding matrix trains, as recipes without PEFT's rows do
        extra["modules_to_save"] = ["embed_tokens"]
    style = get_style("chatml").bind(tokenizer)  # picks <|im_start|>/<|im_end|> once they are in the vocabulary
    records = load_records(packaged("conversation-data.json"))
    train, val = records[:n_train], records[n_train:n_train + n_val]
    examples = {name: Dataset.from_list([style.token_example(r, tokenizer) for r in part])
                for name, part in (("train", train), ("val", val))}
    with tempfile.TemporaryDirectory() as folder:
        args = SFTConfig(output_dir=folder, max_steps=steps, per_device_train_batch_size=batch_size,
                         per_device_eval_batch_size=batch_size, learning_rate=5e-4, lr_scheduler_type="cosine",
                         warmup_ratio=0.03, completion_only_loss=True, max_length=512, logging_steps=1,
                         eval_strategy="no", save_strategy="no", use_cpu=not torch.cuda.is_available(),
                         report_to="none", gradient_checkpointing=False, seed=0, disable_tqdm=True)
        trainer = SFTTrainer(model=model, args=args, train_dataset=examples["train"], eval_dataset=examples["val"],
                             processing_class=tokenizer,
                             peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                                    task_type="CAUSAL_LM", **extra))
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        before = trainer.evaluate()["eval_loss"]
        started = time.perf_counter()
        trainer.train()
        seconds_per_step = (time.perf_counter() - started) / steps
        after = trainer.evaluate()["eval_loss"]
        trainer.save_model(folder + "/adapter")
        adapter_mb = sum(f.stat().st_size for f in Path(folder, "adapter").glob("adapter_model*")) / 2**20
    model = trainer.model.eval()
    end = tokenizer.convert_tokens_to_ids(style.template.end_of_turn)
    stops = [end] + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])
    stopped = 0
    for record in val:
        ids = torch.tensor([style.encode(style.render(record, tokenizer), tokenizer)])
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)
        stopped += out[0, -1].item() == end
    return {"variant": variant, "end_of_turn": style.template.end_of_turn,
            "vocabulary": len(tokenizer), "trainable_parameters": trainable, "adapter_mb": round(adapter_mb, 2),
            "seconds_per_step": round(seconds_per_step, 3), "val_loss_before": round(before, 4),
            "val_loss_after": round(after, 4), "answers_ending_their_turn": f"{stopped}/{len(val)}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--train", type=int, default=320, help="training conversations")
    parser.add_argument("--val", type=int, default=24, help="validation conversations (loss and stops)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated: {', '.join(VARIANTS)}")
    parser.add_argument("--child", default="")
    args = parser.parse_args()
    numbers = [str(args.steps), str(args.batch_size), str(args.train), str(args.val), str(args.max_new_tokens)]
    if args.child:
        report(trial(args.child, *map(int, numbers)))
        return
    trials = []
    for variant in args.variants.split(","):
        print(f"{variant} ...", flush=True)
        trials.append(run_child(__file__, "--child", variant, "--steps", numbers[0], "--batch-size", numbers[1],
                                "--train", numbers[2], "--val", numbers[3], "--max-new-tokens", numbers[4]))
        if "failed" in trials[-1]:  # its last line says why: keep that, not the traceback
            trials[-1] = {"variant": variant, "failed": trials[-1]["failed"].strip().splitlines()[-1]}
        print(trials[-1], flush=True)
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    save_results(f"chatml_tokens-{device}", __doc__, {"steps": args.steps, "batch_size": args.batch_size,
                                                      "n_train": args.train, "n_val": args.val, "trials": trials})


if __name__ == "__main__":
    main()
