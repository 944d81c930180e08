"""Padding-free batches: a step's records laid end to end in one row, with position ids restarting
at each record, instead of padded to the longest one.

The layers then spend no work on padding (bench/train_throughput.py measures it). It is only correct
if attention stays within each record: FlashAttention 2 does so from the sequence boundaries, and
transformers' SDPA and eager paths build a block-diagonal mask from the restarting position ids when
the model's code uses its mask utilities and no KV cache is in play (TRL's loss turns the cache off).
Remote model code or custom attention kernels may not, so `records_stay_apart` checks the model
itself before a run relies on it.
"""

from __future__ import annotations

import torch
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

_PROBE_TEXTS = ("The capital of France is Paris.", "Two plus two equals four, and three plus three is six.")


@torch.no_grad()
def records_stay_apart(model: torch.nn.Module, tokenizer) -> bool:
    """Whether `model`, given two records in one row with restarting position ids, gives the second
    the logits it gets alone. Compared against the same row without position ids (the second record
    then attends to the first), so the verdict does not depend on the dtype's rounding."""
    first, second = (tokenizer(text, return_tensors="pt")["input_ids"] for text in _PROBE_TEXTS)
    device = next(model.parameters()).device
    row = torch.cat([first, second], dim=1).to(device)
    positions = torch.cat([torch.arange(first.shape[1]), torch.arange(second.shape[1])]).unsqueeze(0).to(device)
    was_training = model.training
    model.eval()  # no dropout in the comparison
    try:
        alone = model(input_ids=second.to(device), use_cache=False).logits[0].float()
        packed = model(input_ids=row, position_ids=positions, use_cache=False).logits[0, first.shape[1]:].float()
        mixed = model(input_ids=row, use_cache=False).logits[0, first.shape[1]:].float()
    finally:
        model.train(was_training)
    return bool((packed - alone).abs().max() < 0.1 * (mixed - alone).abs().max())


def padding_free_collator(tokenizer) -> DataCollatorForLanguageModeling:
    """TRL's collator in its padding-free mode (the one its packing uses), for unpacked records.
    SFTConfig(padding_free=True) would build the same one, but TRL 1.16 refuses it with a max_length
    and no packing ("max_length is not enforced") although it truncates while preparing the dataset
    either way."""
    return DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)
