"""Turn a GGUF file into a plain transformers folder (safetensors + tokenizer), once.

transformers can read GGUF, but a GGUF-loaded model refuses `save_pretrained` and takes minutes to
dequantize, so we convert once into a cache folder and reload from there in seconds.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import gguf
import numpy as np
import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import generate_merges
from transformers.models.gemma.tokenization_gemma import GemmaTokenizer

GEMMA_ARCHITECTURES = {"gemma", "gemma2", "gemma3"}
CONTROL_TOKEN_TYPE = 3  # gguf.TokenType.CONTROL
_READERS: dict[tuple, gguf.GGUFReader] = {}  # a file's (device, inode, size, time) -> its reader


class _Reader(gguf.GGUFReader):
    """gguf's reader on a plain array view of its memory map: slicing a np.memmap costs a Python
    subclass round trip per slice, and parsing reads each of a vocabulary's tokens through a few
    slices (Gemma's 262k tokens: 10 s stock, 3 s here, on 2 cores). The same bytes, mapped the
    same way; `_get` is gguf 0.19's (pinned), with `self.data` seen as the ndarray it is."""

    def _get(self, offset: int, dtype, count: int = 1, override_order=None):
        if "_plain" not in self.__dict__:
            self._plain = self.data.view(np.ndarray)
        count = int(count)
        array = self._plain[offset:offset + np.dtype(dtype).itemsize * count].view(dtype=dtype)[:count]
        return array.view(array.dtype.newbyteorder(self.byte_order if override_order is None else override_order))


def gguf_reader(path: str | Path) -> gguf.GGUFReader:
    """A GGUF file's parsed reader, once per version of the file a process, known by its inode, size
    and time: stage 6 reads its metadata in the staging folder, its tokenizer, and again once the
    folder is swapped in; transformers' loader parses a file once for the config, once for the weights."""
    stat = Path(path).stat()
    version = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if version not in _READERS:
        if len(_READERS) >= 4:  # each holds a memory map of its file
            del _READERS[next(iter(_READERS))]
        _READERS[version] = _Reader(path)
    return _READERS[version]


def gguf_fields(path: Path) -> dict:
    """A GGUF file's metadata fields (see gguf_reader)."""
    return gguf_reader(path).fields


@contextmanager
def _parsed_once():
    """transformers' GGUF loader (`load_gguf_checkpoint`) builds its own `gguf.GGUFReader` at each
    call, two or three per model; while this block runs, it gets gguf_reader's instead."""
    stock = gguf.GGUFReader
    gguf.GGUFReader = gguf_reader
    try:
        yield
    finally:
        gguf.GGUFReader = stock


def load_gguf_model(path: Path, dtype: torch.dtype):
    """transformers' model from a GGUF file (dequantized to `dtype`), the file parsed once."""
    with _parsed_once():
        return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)


def _gemma_tokenizer(fields: dict) -> GemmaTokenizer:
    """Gemma's SentencePiece-BPE tokenizer rebuilt with its merges.

    transformers 5.3 turns a Gemma GGUF vocabulary into a BPE model with no merges, which splits
    every word into single characters and adds no <bos>: the model then scores loss ~15 on plain
    English. SentencePiece BPE merges follow from the piece scores, which is what transformers'
    own `generate_merges` computes for its slow-to-fast conversion.
    """
    tokens = fields["tokenizer.ggml.tokens"].contents()
    scores = fields["tokenizer.ggml.scores"].contents()
    types = fields["tokenizer.ggml.token_type"].contents()
    special_ids = {
        key: fields[f"tokenizer.ggml.{key}_token_id"].contents()
        for key in ("bos", "eos", "unknown", "padding")
    }
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = GemmaTokenizer(
        vocab=vocab,
        merges=generate_merges(vocab, list(zip(tokens, scores))),
        bos_token=tokens[special_ids["bos"]],
        eos_token=tokens[special_ids["eos"]],
        unk_token=tokens[special_ids["unknown"]],
        pad_token=tokens[special_ids["padding"]],
        add_bos_token=True,
    )
    # Control tokens such as <start_of_turn> must never be split into characters.
    control = [AddedToken(tokens[i], special=True, normalized=False) for i, t in enumerate(types) if t == CONTROL_TOKEN_TYPE]
    tokenizer.add_special_tokens({"additional_special_tokens": control}, replace_extra_special_tokens=False)
    return tokenizer


def _byte_level_bpe_tokenizer(fields: dict) -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE tokenizer (SmolLM2's) rebuilt from the GGUF vocabulary and merges.

    transformers 5.3 loads such a GGUF tokenizer as a CodeLlama (SentencePiece-style) tokenizer: once
    saved and reloaded it maps "\n" and every word after a space to <unk>, and decodes to "Ċ"/"Ġ"
    soup. The GGUF's `tokenizer.ggml.pre` names the pre-tokenizer; "smollm" splits digits one by one.
    """
    tokens = fields["tokenizer.ggml.tokens"].contents()
    types = fields["tokenizer.ggml.token_type"].contents()
    merges = [tuple(merge.split(" ", 1)) for merge in fields["tokenizer.ggml.merges"].contents()]
    backend = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if "tokenizer.ggml.pre" in fields and fields["tokenizer.ggml.pre"].contents() == "smollm":
        backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        backend.pre_tokenizer = byte_level
    backend.decoder = decoders.ByteLevel()
    special = {key: tokens[fields[f"tokenizer.ggml.{key}_token_id"].contents()]
               for key in ("bos", "eos", "unknown", "padding") if f"tokenizer.ggml.{key}_token_id" in fields}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=special.get("bos"), eos_token=special.get("eos"),
        unk_token=special.get("unknown"), pad_token=special.get("padding"),
        chat_template=fields["tokenizer.chat_template"].contents() if "tokenizer.chat_template" in fields else None,
    )
    control = [AddedToken(tokens[i], special=True, normalized=False) for i, t in enumerate(types) if t == CONTROL_TOKEN_TYPE]
    tokenizer.add_special_tokens({"additional_special_tokens": control}, replace_extra_special_tokens=False)
    return tokenizer


def load_gguf_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    fields = gguf_fields(path)
    if fields["general.architecture"].contents() in GEMMA_ARCHITECTURES:
        return _gemma_tokenizer(fields)
    if fields["tokenizer.ggml.model"].contents() == "gpt2":
        return _byte_level_bpe_tokenizer(fields)
    return transformers_gguf_tokenizer(path)


def transformers_gguf_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    """The tokenizer transformers builds from a GGUF file, the file parsed once."""
    with _parsed_once():
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def _align_special_tokens(tokenizer: PreTrainedTokenizerBase, model) -> None:
    """Make the tokenizer's EOS the one generation stops at, and give it a pad token.

    SmolLM2's GGUF names <|im_start|> as the tokenizer's EOS while generation stops at <|im_end|>;
    training on the former would teach the model a stop token that generation ignores.
    """
    eos_ids = model.generation_config.eos_token_id
    first_eos = eos_ids[0] if isinstance(eos_ids, list) else eos_ids
    if first_eos is not None and tokenizer.eos_token_id != first_eos:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(first_eos)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id


def convert_gguf_to_hf(path: Path, target: Path) -> None:
    """Dequantize `path` to float32 safetensors in `target` with its tokenizer and generation config."""
    loaded = load_gguf_model(path, torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # A GGUF-loaded model refuses save_pretrained; a fresh model with the same weights does not.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    tokenizer = load_gguf_tokenizer(path)
    _align_special_tokens(tokenizer, model)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
