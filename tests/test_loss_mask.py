"""Stage 1 learns the answers only: in a batch as its trainer builds it (its SFTConfig, its training
examples, its padding-free collator), every label is -100 but the answer's tokens and the end token.
Direct, on the tiny Llama (its 49k-token tokenizer keeps TRL's dataset preparation quick): the
loss-side tests compare our loss with TRL's and would pass with the mask gone from both."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize("style_name", ["alpaca", "chatml"])
def test_only_the_answer_and_its_end_token_carry_labels(tiny_llama, tmp_path, style_name):
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTTrainer

    from instructkit.data.prompts import get_style
    from instructkit.data.records import load_records
    from instructkit.models.loading import load_causal_lm, load_tokenizer
    from instructkit.models.references import resolve_model
    from instructkit.train.config import DEFAULT_DATA, TrainingConfig
    from instructkit.train.padding_free import padding_free_collator
    from instructkit.train.sft import sft_arguments, training_examples

    base = resolve_model(tiny_llama)
    tokenizer = load_tokenizer(base)
    style = get_style(style_name).bind(tokenizer)
    if style.template:
        tokenizer.chat_template = style.template.jinja
    records = [r for r in load_records(DEFAULT_DATA) if r["input"]][:2] + load_records(DEFAULT_DATA)[:2]
    config = TrainingConfig(base_model=tiny_llama, output_dir=str(tmp_path), max_steps=1, batch_size=len(records),
                            prompt_style=style_name)
    trainer = SFTTrainer(model=load_causal_lm(base), args=sft_arguments(config, tmp_path / "checkpoints", len(records), False),
                         data_collator=padding_free_collator(tokenizer),
                         train_dataset=Dataset.from_list(training_examples(style, records, tokenizer, config.max_length)),
                         processing_class=tokenizer, peft_config=LoraConfig(r=4, target_modules="all-linear",
                                                                            task_type="CAUSAL_LM"))
    batch = next(iter(trainer.get_train_dataloader()))
    labels, ids = batch["labels"][0], batch["input_ids"][0]  # padding-free: one row, records end to end
    learned = labels != -100
    assert torch.equal(labels[learned], ids[learned])
    # Record by record (a new record starts where position_ids return to 0), the learned tokens are the
    # answer as stage 2 compares it and the token the model stops on, and nothing of the prompt.
    starts = [*(batch["position_ids"][0] == 0).nonzero().flatten().tolist(), len(ids)]
    answers = sorted(tokenizer.decode(ids[a:b][learned[a:b]]) for a, b in zip(starts, starts[1:]))
    stop = style.stop_token(tokenizer)
    assert answers == sorted(r["output"] + stop for r in records)
