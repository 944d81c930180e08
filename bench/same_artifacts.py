"""Does a code change leave the demo's artifacts as they were? Stages 1-4 with small limits in fp32,
run on two commits, and every JSON artifact compared except timings, timestamps and paths; then
the newer code reruns every stage in the older commit's run folder, which must be reused, not redone.

    python bench/same_artifacts.py --before 2265f9c            # the working tree against that commit
    python bench/same_artifacts.py --before v0.1 --after HEAD  # two commits

Each side runs in its own git worktree under --work (default /tmp/instructkit-same-artifacts), with
this interpreter. The result goes to bench/results/same_artifacts-cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from instructkit.runs.artifacts import cpu_description, write_json_atomic

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
STAGES = [
    ("part1_instruction_finetuning.py", ["--max-steps", "4", "--batch-size", "4", "--eval-steps", "2"]),
    ("part2_generate_test_responses.py", ["--limit", "6", "--max-new-tokens", "24"]),
    ("part3_benchmark_evaluation.py", ["--limit", "12"]),
    ("part4_local_evaluation.py", ["--limit", "6"]),
]
# PEFT writes adapter_config.json's target_modules from a set: a fixed hash seed fixes their order.
ENV = {**os.environ, "PYTHONHASHSEED": "0"}
# Keys whose values differ between two runs of the same computation.
VOLATILE = {"created_at", "wall_time_s", "tokens_per_second", "seconds", "elapsed_s", "peak_memory", "run_id",
            "output_sha256", "platform", "path", "base_model_path", "merged_model", "data", "seeds", "input",
            "test_file", "include_path", "versions", "duration_s", "seconds_per_record", "time_s", "seconds_this_run",
            "timings"}
HARNESS_DIR = "benchmark"  # lm-eval's own dumps, named by model path and time: their content is in benchmark_results.json


def checkout(ref: str | None, where: Path) -> Path:
    """A worktree of `ref`, or this working tree when `ref` is None."""
    if ref is None:
        return ROOT
    if where.exists():
        subprocess.run(["git", "worktree", "remove", "--force", str(where)], cwd=ROOT, check=False)
        shutil.rmtree(where, ignore_errors=True)
    subprocess.run(["git", "worktree", "add", "--detach", str(where), ref], cwd=ROOT, check=True,
                   capture_output=True)
    return where


def commit(ref: str) -> str:
    return subprocess.run(["git", "rev-parse", "--short", ref], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def run_stages(tree: Path, output_dir: Path) -> list[dict]:
    """Stages 1-4 of `tree` into `output_dir`; each stage's exit code, seconds and last line."""
    runs = []
    for script, args in STAGES:
        started = time.perf_counter()
        done = subprocess.run([sys.executable, script, *args, "--precision", "fp32", "--output-dir", str(output_dir)],
                              cwd=tree, capture_output=True, text=True, env=ENV)
        lines = (done.stdout + done.stderr).strip().splitlines()
        runs.append({"script": script, "returncode": done.returncode, "seconds": round(time.perf_counter() - started, 1),
                     "output": lines})
        print(f"{tree.name}: {script} exit {done.returncode} in {runs[-1]['seconds']} s", flush=True)
        if done.returncode:
            print("\n".join(lines[-30:]))
            break
    return runs


def comparable(value, roots: list[str]):
    """`value` without volatile keys, and with the run's own folders written as placeholders."""
    if isinstance(value, dict):
        return {k: comparable(v, roots) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [comparable(v, roots) for v in value]
    if isinstance(value, str):
        for index, root in enumerate(roots):
            value = value.replace(root, f"<root{index}>")
    return value


def differences(a, b, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        found = []
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                found.append(f"{where}.{key}: only in {'after' if key in b else 'before'}")
            else:
                found += differences(a[key], b[key], f"{where}.{key}")
        return found
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {json.dumps(a)[:120]} != {json.dumps(b)[:120]}"]


def compare_folders(before: Path, after: Path, roots: tuple[list[str], list[str]]) -> dict[str, list[str]]:
    """Every JSON file of either run folder (hidden logs and checkpoints aside) and how it differs."""
    names = sorted({p.relative_to(folder).as_posix() for folder in (before, after) for p in folder.rglob("*.json")
                    if not any(part.startswith(".") or part in ("checkpoints", HARNESS_DIR)
                               for part in p.relative_to(folder).parts)})
    result = {}
    for name in names:
        if not (before / name).is_file() or not (after / name).is_file():
            result[name] = ["missing on one side"]
            continue
        a, b = (comparable(json.loads((folder / name).read_text()), r) for folder, r in zip((before, after), roots))
        result[name] = differences(a, b)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="the older commit")
    parser.add_argument("--after", default=None, help="the newer commit (default: this working tree)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/instructkit-same-artifacts"))
    parser.add_argument("--keep-before", action="store_true", help="reuse the older commit's run folder from an earlier call")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    keep = args.keep_before and (args.work / "run-before" / "report.html").is_file()
    trees = [args.work / "before" if keep else checkout(args.before, args.work / "before"),
             checkout(args.after, args.work / "after")]
    outputs = [args.work / "run-before", args.work / "run-after"]
    runs = {}
    for tree, output in zip(trees, outputs):
        if keep and output == outputs[0]:
            continue
        shutil.rmtree(output, ignore_errors=True)
        runs[output.name] = run_stages(tree, output)
    roots = tuple([str(output.resolve()), str(tree.resolve())] for tree, output in zip(trees, outputs))
    compared = compare_folders(outputs[0], outputs[1], roots)
    # The newer code in the older run folder: every stage must say it already finished.
    before_files = {p: p.read_bytes() for p in outputs[0].rglob("*.json")}
    rerun = run_stages(trees[1], outputs[0])
    reused = {r["script"]: any("already finished" in line for line in r["output"]) for r in rerun}
    untouched = all(p.read_bytes() == data for p, data in before_files.items())
    result = {
        "cpu": cpu_description(), "before": commit(args.before), "after": commit(args.after) if args.after else "working tree",
        "runs": {name: [{k: v for k, v in r.items() if k != "output"} for r in rs] for name, rs in runs.items()},
        "files_compared": len(compared), "files_equal": sum(not d for d in compared.values()),
        "differences": {name: d for name, d in compared.items() if d},
        "old_folder_reused_by_new_code": reused, "old_folder_files_unchanged": untouched,
    }
    write_json_atomic(RESULTS / "same_artifacts-cpu.json", result)
    print(json.dumps({k: result[k] for k in ("files_compared", "files_equal", "differences",
                                             "old_folder_reused_by_new_code", "old_folder_files_unchanged")}, indent=2))


if __name__ == "__main__":
    main()
