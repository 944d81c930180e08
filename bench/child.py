"""Shared by the bench scripts: one trial in a child process of its own, so peak memory and
warmed-up state are the trial's alone (the child prints its result as one `RESULT {json}` line);
timers (a function's, a module's forwards); stage 3's offline task; and the result file, written with the machine it was measured on."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

PREFIX = "RESULT "


def report(result: dict) -> None:
    """Called in the child: hand the trial's result to the parent."""
    print(PREFIX + json.dumps(result), flush=True)


def run_child(script: str, *args: str) -> dict:
    """Run `script` with `args` in a new interpreter and return what it reported; a failed child's
    error tail is returned under "failed" rather than stopping the other trials."""
    child = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    lines = [line[len(PREFIX):] for line in child.stdout.splitlines() if line.startswith(PREFIX)]
    if child.returncode != 0 or not lines:
        return {"failed": child.stderr[-2000:]}
    return json.loads(lines[-1])


def alternating_trials(script: str, variants: tuple[str, ...], trials: int, *args: str) -> list[dict]:
    """`trials` rounds of every variant, alternating (so drift in the machine's speed spreads over
    all of them), each in a child given `--one VARIANT --seed 42+round` and `args`; stops at a failure."""
    results = []
    for trial in range(trials):
        for variant in variants:
            result = run_child(script, "--one", variant, *args, "--seed", str(42 + trial))
            if "failed" in result:
                sys.exit(f"{variant} failed:\n{result['failed']}")
            results.append({"trial": trial, **result})
            print(json.dumps(results[-1]), flush=True)
    return results


class Stopwatch:
    """Seconds spent between a module's forward pre-hook and its forward hook, summed over calls."""

    def __init__(self, module):
        self.seconds, self.calls = 0.0, 0
        module.register_forward_pre_hook(self._start)
        module.register_forward_hook(self._stop)

    def _start(self, module, args):
        self.started = time.perf_counter()

    def _stop(self, module, args, output):
        self.seconds += time.perf_counter() - self.started
        self.calls += 1


def timed(fn):
    """(fn(), seconds it took)."""
    started = time.perf_counter()
    value = fn()
    return value, round(time.perf_counter() - started, 2)


def offline_philosophy() -> tuple[str, dict, object]:
    """(device, task names, task manager): offline mmlu_philosophy exactly as stage 3 runs it."""
    import torch

    from instructkit.evaluate.benchmark import BenchmarkConfig, resolve_tasks
    from instructkit.models.references import cache_dir

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return device, *resolve_tasks(BenchmarkConfig(), offline=True, workdir=cache_dir() / "lm_eval_tasks")


def save_results(name: str, doc: str, results: dict) -> Path:
    """bench/results/<name>.json: the results, the command that made them, versions, CPU model and flags."""
    from instructkit.runs.artifacts import manifest

    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    command = f"python bench/{Path(sys.argv[0]).name} " + " ".join(sys.argv[1:])
    path.write_text(json.dumps(manifest(benchmark=doc.splitlines()[0], command=command.strip(), **results), indent=2) + "\n")
    print(f"results: {path}")
    return path
