"""Prompt styles, and label masking as TRL's real SFT pipeline builds it from our examples."""

import pytest
from datasets import Dataset

from instructkit.data.prompts import get_style, load_style
from instructkit.errors import UserError
from instructkit.models.loading import load_causal_lm, load_tokenizer

WITH_INPUT = {"instruction": "Add the numbers.", "input": "2, 3", "output": "5"}
NO_INPUT = {"instruction": "Name a colour.", "input": "", "output": "Blue."}


@pytest.mark.fast
def test_alpaca_matches_the_book_format():
    style = get_style("alpaca")
    assert style.prompt(WITH_INPUT) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nAdd the numbers.\n\n### Input:\n2, 3\n\n### Response:\n"
    )
    assert "### Input:" not in style.prompt(NO_INPUT)


@pytest.mark.fast
def test_phi3_format():
    style = get_style("phi3")
    assert style.prompt(WITH_INPUT) == "<|user|>\nAdd the numbers.\n2, 3\n<|assistant|>\n"
    assert style.prompt(NO_INPUT) == "<|user|>\nName a colour.\n<|assistant|>\n"


def test_chat_uses_the_tokenizers_template(judge_model):
    tokenizer = load_tokenizer(judge_model)  # SmolLM2-Instruct ships a ChatML template
    style = get_style("chat").bind(tokenizer)
    assert style.template.jinja == tokenizer.chat_template and style.template.end_of_turn == "<|im_end|>"
    assert style.prompt(WITH_INPUT) == [{"role": "user", "content": "Add the numbers.\n\n2, 3"}]
    rendered = style.render(WITH_INPUT, tokenizer)
    assert rendered.endswith("<|im_start|>user\nAdd the numbers.\n\n2, 3<|im_end|>\n<|im_start|>assistant\n")
    example = style.token_example(WITH_INPUT, tokenizer)  # the answer and its end of turn are learned
    learned = [i for i, m in zip(example["input_ids"], example["completion_mask"]) if m]
    assert tokenizer.decode(learned) == "5<|im_end|>"


def test_chat_without_template_is_a_clear_error(base_tokenizer):
    with pytest.raises(UserError, match="needs a tokenizer with a chat template"):
        get_style("chat").bind(base_tokenizer)


@pytest.mark.fast
def test_style_round_trips_through_the_checkpoint_folder(tmp_path):
    get_style("phi3").save(tmp_path)
    assert load_style(tmp_path).name == "phi3"
    with pytest.raises(UserError, match="unknown prompt style"):
        get_style("vicuna")


@pytest.mark.parametrize("style_name", ["alpaca", "phi3"])
def test_labels_mask_prompt_and_padding_but_not_eos(base_model, base_tokenizer, style_name):
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    style = get_style(style_name)
    records = [WITH_INPUT, NO_INPUT, {"instruction": "Say a long sentence please.", "input": "", "output": "This one is longer than the others."}]
    trainer = SFTTrainer(
        model=load_causal_lm(base_model),
        args=SFTConfig(output_dir="/tmp/unused", use_cpu=True, bf16=False, report_to="none", completion_only_loss=True),
        train_dataset=Dataset.from_list([style.training_example(r, base_tokenizer) for r in records]),
        processing_class=base_tokenizer,
        peft_config=LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(records))])
    eos, pad = base_tokenizer.eos_token_id, base_tokenizer.pad_token_id
    for row, record in enumerate(records):
        ids, labels, mask = batch["input_ids"][row].tolist(), batch["labels"][row].tolist(), batch["attention_mask"][row].tolist()
        prompt_len = len(base_tokenizer(style.prompt(record))["input_ids"])
        real = sum(mask)
        assert all(label == -100 for label in labels[:prompt_len]), "prompt tokens must not be learned"
        assert all(label == -100 for label, m in zip(labels, mask) if m == 0), "padding must not be learned"
        assert ids[real - 1] == eos and labels[real - 1] == eos, "EOS must end every record and be learned"
        assert labels[prompt_len:real] == ids[prompt_len:real]
        assert base_tokenizer.decode(ids[prompt_len:real - 1]) == record["output"]
    assert pad != eos and (batch["input_ids"] == pad).any(), "the batch should contain padding to check"
