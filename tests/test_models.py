"""Model references: embedded names, GGUF files, folders, hub ids; the conversion cache."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from instructkit.errors import UserError
from instructkit.models.loading import load_causal_lm, load_tokenizer
from instructkit.models.references import CONVERSION_VERSION, ResolvedModel, resolve_model


def test_embedded_base_tokenizes_like_gemma(base_model, base_tokenizer):
    assert base_model.source == "embedded"
    # Gemma 3's own tokenizer gives these ids; a merge-less GGUF conversion gives one id per character.
    assert base_tokenizer("The capital of France is")["input_ids"] == [2, 818, 5279, 529, 7001, 563]
    assert (base_tokenizer.eos_token, base_tokenizer.pad_token) == ("<eos>", "<pad>")
    assert base_tokenizer.tokenize("<start_of_turn>user") == ["<start_of_turn>", "user"]


def test_embedded_base_is_a_working_language_model(base_model, base_tokenizer):
    model = load_causal_lm(base_model)
    inputs = base_tokenizer("The capital of France is Paris. The capital of Germany is", return_tensors="pt")
    with torch.no_grad():
        loss = model(**inputs, labels=inputs["input_ids"]).loss.item()
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert loss < 5.0
    assert "Berlin" in base_tokenizer.decode(out[0, inputs["input_ids"].shape[1]:])


def test_embedded_judge_stops_at_im_end_and_answers(judge_model):
    tokenizer = load_tokenizer(judge_model)
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token is not None
    # Byte-level BPE with SmolLM2's one-digit-per-token split: newlines and spaced words are real
    # tokens, not <unk> (transformers 5.3's own GGUF import got both wrong).
    assert tokenizer("a\n b 85")["input_ids"] == [81, 198, 278, 216, 40, 37]
    assert tokenizer.decode(tokenizer("Héllo\n world 100")["input_ids"]) == "Héllo\n world 100"
    model = load_causal_lm(judge_model)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, inputs["input_ids"].shape[1]:])


def test_a_tokenizer_loaded_again_is_a_copy_of_the_folders_current_version(judge_model, tmp_path):
    """load_tokenizer keeps a tokenizer it loaded twice: later loads get a copy of their own, and a
    folder whose files changed is read again."""
    folder = tmp_path / "model"
    load_tokenizer(judge_model).save_pretrained(folder)
    model = ResolvedModel(str(folder), str(folder), "local")
    first, second, third = (load_tokenizer(model) for _ in range(3))
    assert len({id(first), id(second), id(third)}) == 3
    third.padding_side, third.chat_template = "left", "changed"  # the caller's own: no later load sees it
    fourth = load_tokenizer(model)
    assert (fourth.padding_side, fourth.chat_template) == (second.padding_side, second.chat_template) != ("left", "changed")
    assert fourth("a\n b 85")["input_ids"] == first("a\n b 85")["input_ids"] == [81, 198, 278, 216, 40, 37]
    assert "_vocab" not in vars(fourth) and "_merges" not in vars(fourth)  # datasets would hash them in every map

    edited = load_tokenizer(model)
    edited.chat_template = "{{ messages[0]['content'] }}"
    edited.save_pretrained(folder)  # a new version of the folder
    assert load_tokenizer(model).chat_template == "{{ messages[0]['content'] }}"


def test_local_folder_and_errors(tmp_path, base_model):
    assert resolve_model(base_model.path).source == "local"
    with pytest.raises(UserError, match="has no config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(UserError, match="does not exist"):
        resolve_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(UserError, match="not an embedded name"):
        resolve_model("gemma 3")
    assert resolve_model("meta-llama/Meta-Llama-3-8B").source == "hub"


def test_unreachable_hub_model_is_a_clear_error():
    with pytest.raises(UserError, match="could not load 'meta-llama/Meta-Llama-3-8B' from the Hugging Face hub"):
        load_tokenizer(ResolvedModel("meta-llama/Meta-Llama-3-8B", "meta-llama/Meta-Llama-3-8B", "hub"))


def test_two_processes_converting_at_once_share_one_conversion(tmp_path, tiny_llama):
    """Two first runs on an empty cache: one converts, the other waits and reuses it (the tiny
    Llama's GGUF file: the lock is the subject, not the weights)."""
    script = textwrap.dedent(f"""
        from instructkit.models.references import resolve_model
        print(resolve_model({tiny_llama!r}).path)
    """)
    env = {**os.environ, "INSTRUCTKIT_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [r[1][-2000:] for r in results]
    paths = {r[0].strip().splitlines()[-1] for r in results}
    assert len(paths) == 1
    assert sum(r[0].startswith("converting ") for r in results) == 1, "exactly one process converts"
    models = tmp_path / "cache" / f"models-v{CONVERSION_VERSION}"
    gguf = Path(tiny_llama)
    assert sorted(p.name for p in models.iterdir() if not p.name.endswith(".lock")) == [
        f"{gguf.stem}-{gguf.stat().st_size}"]
