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


def test_a_tokenizer_loaded_again_is_a_copy_of_the_folders_current_version(judge_model, tmp_path, monkeypatch):
    """load_tokenizer keeps a tokenizer it loaded twice: later loads are copies of their own, and a
    folder whose files changed is read again."""
    from instructkit.models import loading

    folder = tmp_path / "model"
    load_tokenizer(judge_model).save_pretrained(folder)
    model = ResolvedModel(str(folder), str(folder), "local")
    loads, load = [], loading._load_tokenizer
    monkeypatch.setattr(loading, "_load_tokenizer", lambda *args: loads.append(args) or load(*args))
    first, second, third = (load_tokenizer(model) for _ in range(3))
    assert len(loads) == 2 and len({id(first), id(second), id(third)}) == 3  # the third: a copy of the second
    third.padding_side, third.chat_template = "left", "changed"  # the caller's own: no later load sees it
    fourth = load_tokenizer(model)
    assert len(loads) == 2
    assert (fourth.padding_side, fourth.chat_template) == (second.padding_side, second.chat_template) != ("left", "changed")
    assert fourth("a\n b 85")["input_ids"] == first("a\n b 85")["input_ids"] == [81, 198, 278, 216, 40, 37]

    fourth.chat_template = "{{ messages[0]['content'] }}"
    fourth.save_pretrained(folder)  # a new version of the folder
    assert load_tokenizer(model).chat_template == "{{ messages[0]['content'] }}" and len(loads) == 3


@pytest.mark.fast
def test_a_gemma_tokenizer_keeps_no_python_copy_of_its_vocabulary(tmp_path):
    """transformers 5 keeps the vocabulary and merges a GemmaTokenizer was built from; datasets would
    pickle them into the fingerprint of every map (seconds for Gemma's 262k tokens)."""
    from transformers import GemmaTokenizer

    built = GemmaTokenizer(vocab={"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "a": 4, "b": 5, "ab": 6, "▁": 7},
                           merges=[("a", "b")])
    assert vars(built)["_vocab"] and vars(built)["_merges"]
    built.save_pretrained(tmp_path)
    loaded = load_tokenizer(ResolvedModel(str(tmp_path), str(tmp_path), "local"))
    assert type(loaded) is GemmaTokenizer and "_vocab" not in vars(loaded) and "_merges" not in vars(loaded)
    assert loaded("ab a")["input_ids"] == built("ab a")["input_ids"] == [6, 7, 4]


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
