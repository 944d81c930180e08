"""Tiny random-weight models of the architectures we ship, for tests of mechanics (TRL's habit:
`tiny-Qwen2ForCausalLM` and friends). Each is the real model's config shrunk to two layers of
width 64, with the real tokenizer and chat template, built offline from the embedded models'
converted folders, once per recipe and library versions, in the model cache (seconds).

The tiny Llama is written as a GGUF file by llama.cpp's own converter with the real vocabulary (as
stage 6 writes one), so it enters every stage by the same path as the embedded default (a `.gguf`
reference, converted once) and exports to GGUF again. The tiny Gemma 3 is a transformers folder:
rebuilding its 262k-token vocabulary from a GGUF costs a minute per test run, and the real Gemma 3
takes the GGUF path in the golden run anyway."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

# Two layers (Gemma 3: one sliding-window, one global), 2 query heads sharing 1 key/value head (GQA
# as in both real models), widths that llama.cpp's q8_0 blocks of 32 divide. The usual initialiser
# (0.02): next-token logits then lie within hundredths of each other, so a greedy answer can flip on
# bf16 rounding; compare answers of two paths in fp32. (Wider weights were tried: the answers
# collapse onto one token, often a newline, and say nothing about the code.)
SHRUNK = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
          "num_key_value_heads": 1, "head_dim": 32, "max_position_embeddings": 2048}
SEED = 0
RECIPE = 2  # raised with every change of _build that changes the weights (it names the cached files)


def tiny_model(reference: str, as_gguf: bool) -> Path:
    """The tiny model of the embedded model `reference`'s architecture, built on first use: a .gguf
    file, or a transformers folder. Its name carries a digest of the recipe and of the versions that
    make the weights (the GGUF conversion cache is keyed by file name and size)."""
    import torch
    import transformers

    from instructkit.models.references import build_once, cache_dir

    recipe = json.dumps([reference, SHRUNK, SEED, RECIPE, as_gguf, torch.__version__, transformers.__version__],
                        sort_keys=True)
    name = f"tiny-{reference}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"
    marker = f"{name}.gguf" if as_gguf else "config.json"
    folder = build_once(cache_dir() / "tiny" / name, marker,
                        lambda staging: _build(reference, staging, marker if as_gguf else None), f"building {name} (once)")
    return folder / marker if as_gguf else folder


def _build(reference: str, target: Path, gguf_name: str | None) -> None:
    """The tiny model in the folder `target`: as transformers files, or as the file `gguf_name`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    from instructkit.export.gguf_files import convert
    from instructkit.models.loading import load_tokenizer
    from instructkit.models.references import EMBEDDED_GGUF, resolve_model

    real = resolve_model(reference)
    config = AutoConfig.from_pretrained(real.path)
    for key, value in SHRUNK.items():
        setattr(config, key, value)
    if getattr(config, "layer_types", None):
        config.layer_types = ["sliding_attention", "full_attention"]
    if getattr(config, "sliding_window", None):
        config.sliding_window = 64  # shorter than many test prompts, so the window is exercised
    # An output layer of its own where the architecture has one (llama.cpp's Gemma converter always
    # ties): tied to the input embeddings, a random model's likeliest next token is the token it just
    # read, here the prompt's closing newline, and its answers were blank.
    if not config.model_type.startswith("gemma"):
        config.tie_word_embeddings = False
    torch.manual_seed(SEED)

    def save(folder: Path) -> None:
        AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)
        load_tokenizer(real).save_pretrained(folder)
        if (Path(real.path) / "generation_config.json").is_file():
            GenerationConfig.from_pretrained(real.path).save_pretrained(folder)

    if gguf_name is None:
        save(target)
        return
    with tempfile.TemporaryDirectory(dir=target.parent) as hf:
        save(Path(hf))
        convert(Path(hf), target / gguf_name, "f32", EMBEDDED_GGUF[reference](), Path(gguf_name).stem)
