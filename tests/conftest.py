"""Shared fixtures: each real model is converted/loaded once per session; one real training run
(interrupted and resumed) serves every test that needs a finetuned adapter and real weights; tiny
random-weight models of the same architectures (tests/tiny_models.py) serve the tests of mechanics.
docs/testing.md says which to use."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

# Tests never reach the hub: the offline paths are the ones under test.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
# The public LLMs-from-scratch dataset sits beside our checkout in development and CI, not in a
# user's clone: the tests that read it skip without it; everything else uses the project's own data.
SHARED_DATA = ROOT.parent / "shared" / "data" / "instruction-data.json"
needs_shared_data = pytest.mark.skipif(not SHARED_DATA.is_file(),
                                       reason=f"the public dataset {SHARED_DATA} is not beside this checkout")
PROJECT_DATA = ROOT / "instructkit" / "data" / "default" / "instruction-data.json"

# Small but real: enough steps for the validation loss to move, short enough for CI. No LoRA
# dropout, so runs that split the same batches differently (test_multiprocess) must agree exactly.
TRAIN_ARGS = ["--max-steps", "8", "--batch-size", "4", "--lr", "1e-3", "--eval-steps", "4", "--lora-dropout", "0", "--merge"]
STAGE2_ARGS = ["--limit", "6", "--max-new-tokens", "32", "--batch-size", "2"]


def run_script(script: str, *args: str, timeout: int = 900, cwd: Path = ROOT, **kwargs) -> subprocess.CompletedProcess:
    """The script in a new interpreter: only for tests where the process is the subject (exit
    codes, kills, servers, what gets imported); run_stage for every other."""
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, **kwargs,
    )


@contextmanager
def _environment(env: dict | None):
    """os.environ as `env` (a whole environment, as subprocess.run takes it; None: as it is) while the
    block runs, and as it was afterwards (a --config file's `env:` sets variables)."""
    saved = dict(os.environ)
    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextmanager
def _log_streams(old: tuple, new: tuple):
    """Logging handlers writing to `old` streams write to `new` ones while the block runs; those the
    block made on `new` streams write to `old` ones afterwards (a stream handler keeps the stream it
    was made with, and `new` is gone after the block)."""
    def repoint(source, target):
        loggers = [logging.getLogger(), *(found for found in logging.Logger.manager.loggerDict.values()
                                           if isinstance(found, logging.Logger))]
        for handler in {h for logger in loggers for h in logger.handlers}:
            if type(handler) is logging.StreamHandler and handler.stream in source:
                handler.setStream(target[source.index(handler.stream)])

    repoint(old, new)
    try:
        yield
    finally:
        repoint(new, old)


def run_stage(script: str, *args: str, input: str | None = None, env: dict | None = None, cwd: Path = ROOT,
              **_subprocess_only) -> subprocess.CompletedProcess:
    """`run_script` without the new interpreter: the script runs as __main__ in this process, its
    stdout, stderr (its loggers' too) and exit code captured; an uncaught exception is a traceback on
    stderr and exit 1, as in a process. For tests where the process is not the subject (a refusal, a
    reuse line, a stage's files): it saves the 5-8 s of imports a subprocess pays each time."""
    out, err = io.StringIO(), io.StringIO()
    argv, here, stdin, streams = sys.argv, os.getcwd(), sys.stdin, (sys.stdout, sys.stderr)
    sys.argv, sys.stdin = [str(ROOT / script), *args], io.StringIO(input or "")
    code = 0
    try:
        os.chdir(cwd)
        with (_environment(env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err),
              _log_streams(streams, (out, err))):
            runpy.run_path(str(ROOT / script), run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, int | None):
            err.write(str(exc.code))
    except Exception:  # what the interpreter would print before exiting 1
        err.write(traceback.format_exc())
        code = 1
    finally:
        sys.argv, sys.stdin = argv, stdin
        os.chdir(here)
    return subprocess.CompletedProcess([script, *args], code, out.getvalue(), err.getvalue())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def chat_app_served(log: Path, *args: str):
    """Stage 5 serving with `args` on a free local port; yields its URL once it takes connections."""
    port = free_port()
    with log.open("w") as out:
        app = subprocess.Popen([sys.executable, str(ROOT / "part5_chat_app.py"), "--port", str(port), *args],
                               cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and app.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        assert app.poll() is None, log.read_text()[-3000:]
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.terminate()
        app.wait(timeout=30)


def lora_sft_trainer(base_model, tokenizer, output_dir: Path, n_records: int, batch_size: int = 8):
    """TRL's SFTTrainer on `base_model` and the default data, LoRA on all linear layers, no dropout:
    the reference that our loss-side levers (compact head, padding-free batches) must match."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from instructkit.data.prompts import get_style
    from instructkit.data.records import load_records
    from instructkit.models.loading import load_causal_lm
    from instructkit.train.config import DEFAULT_DATA

    style = get_style("alpaca")
    examples = [style.training_example(r, tokenizer) for r in load_records(DEFAULT_DATA)[:n_records]]
    args = SFTConfig(output_dir=str(output_dir), per_device_train_batch_size=batch_size, max_length=128,
                     completion_only_loss=True, use_cpu=True, report_to="none", gradient_checkpointing=False)
    torch.manual_seed(0)
    return SFTTrainer(model=load_causal_lm(base_model), args=args, train_dataset=Dataset.from_list(examples),
                      processing_class=tokenizer,
                      peft_config=LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))


def loss_grads_metrics(trainer, batch) -> tuple[float, dict, dict]:
    """One training forward and backward through the trainer's own compute_loss: the loss, every
    gradient, and the per-step metrics TRL logs (read from its private _metrics store)."""
    trainer.model.zero_grad()
    trainer.model.train()
    trainer._metrics["train"].clear()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items() if k in ("entropy", "mean_token_accuracy")}
    return loss.item(), grads, metrics


@pytest.fixture(scope="session")
def base_model():
    from instructkit.models.references import EMBEDDED_BASE, resolve_model

    return resolve_model(EMBEDDED_BASE)


@pytest.fixture(scope="session")
def base_tokenizer(base_model):
    from instructkit.models.loading import load_tokenizer

    return load_tokenizer(base_model)


@pytest.fixture(scope="session")
def tiny_gemma() -> str:
    """A model reference (--base-model): a two-layer random-weight Gemma 3 with gemma-3-270m's
    tokenizer, as a transformers folder, for mechanics where Gemma's attention matters
    (tests/tiny_models.py)."""
    from tiny_models import tiny_model

    from instructkit.models.references import EMBEDDED_BASE

    return str(tiny_model(EMBEDDED_BASE, as_gguf=False))


@pytest.fixture(scope="session")
def tiny_llama() -> str:
    """A model reference: a two-layer random-weight Llama with SmolLM2's tokenizer and chat template,
    as a GGUF file: the model of every other test of mechanics."""
    from tiny_models import tiny_model

    from instructkit.models.references import EMBEDDED_JUDGE

    return str(tiny_model(EMBEDDED_JUDGE, as_gguf=True))


@pytest.fixture(scope="session")
def tiny_base(tiny_llama):
    """The tiny Llama as a loaded reference (what base_model is for the embedded model)."""
    from instructkit.models.references import resolve_model

    return resolve_model(tiny_llama)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_base):
    from instructkit.models.loading import load_tokenizer

    return load_tokenizer(tiny_base)


@pytest.fixture(scope="session")
def judge_model():
    from instructkit.models.references import EMBEDDED_JUDGE, resolve_model

    return resolve_model(EMBEDDED_JUDGE)


def kill_when(command: list[str], cwd: Path, ready: Callable[[], bool]) -> None:
    """Run `command` and SIGKILL it as soon as `ready()` holds (polled every 10 ms: a tiny model's
    next step comes soon after), or once it ended or ten minutes passed."""
    first = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not ready() and first.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.wait()


def kill_at_checkpoint(command: list[str], cwd: Path, output_dir: Path, step: int,
                       staged: str = ".stage1.partial/finetuned") -> None:
    """Run a training stage (stage 1; stage 1b with `staged` ".stage1b.partial/preference") and
    SIGKILL it once the checkpoint of `step` is saved in its staging folder."""
    state = output_dir / staged / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json"
    kill_when(command, cwd, state.exists)
    assert state.exists(), f"stage 1 ended before its checkpoint {step} was saved"


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, base_model) -> Path:
    """Stage 1 on the embedded model, SIGKILLed once its first checkpoint is saved, then rerun.

    Returns the output folder; the rerun must have resumed and finished all 8 steps.
    """
    output_dir = tmp_path_factory.mktemp("stage1")
    command = [sys.executable, str(ROOT / "part1_instruction_finetuning.py"), "--output-dir", str(output_dir), *TRAIN_ARGS]
    kill_at_checkpoint(command, ROOT, output_dir, 4)
    assert not (output_dir / "finetuned" / "training_summary.json").exists(), "killed too late to test resuming"
    second = run_stage("part1_instruction_finetuning.py", *command[2:])  # the kill was the subject; the rerun is not
    assert second.returncode == 0, second.stderr[-3000:]
    # Quiet progress: the loss rides on the progress bar, not a printed dict per step.
    assert "'loss':" not in second.stdout + second.stderr and ", loss=" in second.stderr and "eval_loss=" in second.stderr
    return output_dir


TINY_TRAIN_ARGS = [*TRAIN_ARGS, "--precision", "fp32"]


@pytest.fixture(scope="session")
def tiny_trained_run(tmp_path_factory, tiny_llama) -> Path:
    """Stage 1 on the tiny Llama (TINY_TRAIN_ARGS: merged, in fp32 on every CPU): a finished run
    folder for the tests of what comes after stage 1 (reuse, refusals, plumbing) that do not need
    real weights. The Llama, not the Gemma 3: its 49k-token vocabulary makes every later stage and
    the GGUF export several times cheaper. Copy what you change (copy_run)."""
    output_dir = tmp_path_factory.mktemp("tiny-stage1")
    result = run_stage("part1_instruction_finetuning.py", "--output-dir", str(output_dir), "--base-model", tiny_llama,
                       *TINY_TRAIN_ARGS)
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir


@pytest.fixture(scope="session")
def tiny_responses_dir(tiny_trained_run, tmp_path_factory) -> Path:
    """Stage 2 (STAGE2_ARGS) on tiny_trained_run: a finished test_base_model.json for mechanics."""
    return answered(tiny_trained_run, tmp_path_factory.mktemp("tiny-stage2"))


def _link_or_copy(source: str, target: str) -> None:
    """Weights hard-linked (stages replace them by rename, never write into them), the rest copied,
    so that a test editing a JSON file in place spoils no other test's run."""
    if os.path.getsize(source) > 1 << 20:
        os.link(source, target)
    else:
        shutil.copy2(source, target)


def copy_run(run: Path, target: Path, names: tuple[str, ...] = ("data", "finetuned")) -> Path:
    """`target` holding `names` (folders or files) of the finished run folder `run`, cheaply."""
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        if (run / name).is_dir():
            shutil.copytree(run / name, target / name, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(run / name), str(target / name))
    return target


def stage2_args(stage1: Path, output_dir: Path) -> list[str]:
    return ["--test-file", str(stage1 / "data" / "test.json"), "--adapter", str(stage1 / "finetuned"),
            "--output-dir", str(output_dir), *STAGE2_ARGS]


def answered(stage1: Path, output_dir: Path, *extra: str) -> Path:
    """`output_dir` after stage 2 (STAGE2_ARGS, then `extra`: the later flags win) on the run `stage1`."""
    result = run_stage("part2_generate_test_responses.py", *stage2_args(stage1, output_dir), *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir


@pytest.fixture(scope="session")
def responses_dir(trained_run, tmp_path_factory) -> Path:
    """Stage 2's test_base_model.json for 6 test records, from the adapter trained above."""
    return answered(trained_run, tmp_path_factory.mktemp("stage2"))


class JSONHandler(BaseHTTPRequestHandler):
    """A quiet request handler that answers JSON: the base of our local OpenAI-compatible servers."""

    def log_message(self, *args):  # keep the test output quiet
        pass

    def handle(self):
        # A stage that stops (all requests failed, a kill) drops its other connections; the server
        # runs in the test's process, so its traceback would land in the stage's captured stderr.
        with contextlib.suppress(ConnectionError):
            super().handle()

    def reply(self, status: int, payload, headers: dict | None = None):
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


    def reply_chat(self, content: str) -> None:
        """One OpenAI chat completion whose message is `content`."""
        self.reply(200, {"id": "x", "object": "chat.completion", "created": 0, "model": "local",
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": content}}]})

    def chat_messages(self) -> list[dict]:
        return json.loads(self.rfile.read(int(self.headers["Content-Length"])))["messages"]


class EchoChat(JSONHandler):
    """An OpenAI-compatible chat model that says how many messages it was sent and repeats the last:
    what a served compare model was asked, turn by turn."""

    def do_POST(self):
        messages = self.chat_messages()
        self.reply_chat(f"{len(messages)} messages; last: {messages[-1]['content']}")


class LocalServer(ThreadingHTTPServer):
    """A real HTTP server on a free port of 127.0.0.1, answering with `handler`."""

    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        super().__init__(("127.0.0.1", 0), handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


@pytest.fixture
def local_servers():
    """start(ServerClass, **kwargs): a real HTTP server on 127.0.0.1, serving until the test ends."""
    servers = []

    def start(server_cls, **kwargs):
        servers.append(server_cls(**kwargs))
        threading.Thread(target=servers[-1].serve_forever, daemon=True).start()
        return servers[-1]

    yield start
    for server in servers:
        server.shutdown()
