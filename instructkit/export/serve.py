"""The exported GGUF behind an OpenAI-compatible endpoint on 127.0.0.1: llama.cpp's server
(llama-cpp-python's), which prompts with the chat template the GGUF carries."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from instructkit.errors import UserError
from instructkit.export.config import MANIFEST_FILE
from instructkit.runs.artifacts import read_json
from instructkit.runs.children import die_with_parent

CONTEXT = 4096


def server_command(gguf: Path, name: str, port: int) -> list[str]:
    """llama-cpp-python's server for `gguf`, answering to the model name `name`."""
    if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("sse_starlette") is None:
        raise UserError("serving the GGUF needs llama-cpp-python with its server: `make llama-cpp` builds it "
                        "(about 6 minutes on 2 cores), or pip install 'llama-cpp-python[server]'")
    return [sys.executable, "-m", "instructkit.export.serve", "--model", str(gguf), "--model_alias", name,
            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(CONTEXT)]


def unpenalised_requests() -> None:
    """No repeat penalty unless a request asks for one: llama-cpp-python's server defaults to 1.1,
    which an OpenAI client cannot turn off, and which changed 10 of 50 greedy answers of the
    embedded finetune (served q8_0: 34 of 50 equal to stage 2's with it, 44 without; docs/export.md)."""
    from llama_cpp.server import types

    for request in (types.CreateCompletionRequest, types.CreateChatCompletionRequest):
        request.model_fields["repeat_penalty"].default = 1.0
        request.model_rebuild(force=True)


def run_llama_cpp_server(argv: list[str]) -> None:
    """llama-cpp-python's server (its own command line), answering without a repeat penalty."""
    from llama_cpp.server.__main__ import main

    unpenalised_requests()
    sys.argv = ["llama_cpp.server", *argv]
    main()


def served_file(folder: Path) -> tuple[Path, str]:
    """The export's smallest GGUF (the Modelfile's) and the model's name."""
    ggufs = sorted(folder.glob("*.gguf"), key=lambda p: p.stat().st_size)
    if not ggufs:
        raise UserError(f"{folder} holds no GGUF file to serve; export with --gguf-type f16, bf16 or q8_0")
    return ggufs[0], read_json(folder / MANIFEST_FILE)["name"]


def serve(folder: Path, port: int) -> None:
    """Serve until Ctrl-C, saying how stage 2 evaluates the served model."""
    gguf, name = served_file(folder)
    command = server_command(gguf, name, port)
    print(f"serving {gguf.name} as {name!r} on http://127.0.0.1:{port}/v1 (Ctrl-C stops it). Evaluate it with:\n"
          f"  python part2_generate_test_responses.py --output-dir {folder.parent} --compare shipped=openai:{name} "
          f"--compare-base-url http://127.0.0.1:{port}/v1")
    try:
        subprocess.run(command, check=False, preexec_fn=die_with_parent)  # not left serving
    except KeyboardInterrupt:
        print("server stopped")


if __name__ == "__main__":
    run_llama_cpp_server(sys.argv[1:])
