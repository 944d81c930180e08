"""The adapter merged into its base: a plain transformers model folder any runtime loads, whose
tokenizer carries the run's chat template and whose generation config stops where training did."""

from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError

from instructkit.data.parity import stop_ids
from instructkit.data.prompts import PromptStyle
from instructkit.errors import UserError
from instructkit.export.templates import runtime_template
from instructkit.models.loading import load_causal_lm, load_tokenizer
from instructkit.models.references import ResolvedModel


def save_merged(base: ResolvedModel, adapter: Path, style: PromptStyle, target: Path,
                  trust_remote_code: bool = False) -> None:
    """Merge `adapter` into `base` (unquantized: a QLoRA adapter merges into the full-precision
    weights) in the precision the base is stored in, and save to `target`."""
    from peft import PeftModel

    tokenizer = load_tokenizer(base, trust_remote_code)
    model = load_causal_lm(base, trust_remote_code=trust_remote_code, dtype="auto")
    model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    end = style.stop_token(tokenizer)
    stops = stop_ids(model.generation_config, style, tokenizer)
    end_id = tokenizer.convert_tokens_to_ids(end)
    # The token training ended answers with comes first: runtimes that take one EOS take that one.
    model.generation_config.eos_token_id = [end_id] + [i for i in stops if i != end_id]
    tokenizer.eos_token = end
    tokenizer.chat_template = runtime_template(style, tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    try:
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)
    except (OSError, SafetensorError) as exc:  # a full disk: safetensors says so in its own error
        raise UserError(f"cannot write {target}: {exc}") from exc
    style.save(target)
