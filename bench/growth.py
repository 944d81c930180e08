"""How stages 2 and 4 grow with the number of test records: each stage, as a user runs it, at three
test-set sizes, timed from the stage's own log of the work (model loading left out, reported apart).

    python bench/growth.py                                   # after stage 1 wrote outputs/finetuned
    python bench/growth.py --sizes 8 16 32 --adapter outputs/finetuned --test-file outputs/data/test.json

A straight line through the origin fits the times when cost per record is constant; the result
reports seconds per record at each size and the least-squares slope. Stage 4 judges the responses
stage 2 wrote at the largest size, with --limit. Writes bench/results/growth-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

RESULTS = ROOT / "bench" / "results"


def run_stage(script: str, *args: str) -> float:
    started = time.perf_counter()
    run = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if run.returncode != 0:
        sys.exit(f"{script} {' '.join(args)} failed:\n{run.stderr[-2000:]}")
    return time.perf_counter() - started


def fit(sizes: list[int], seconds: list[float]) -> dict:
    """Least-squares line through the origin and how far each point is from it."""
    slope = sum(n * s for n, s in zip(sizes, seconds)) / sum(n * n for n in sizes)
    return {
        "seconds_per_record": round(slope, 2),
        "relative_residuals": [round(s / (slope * n) - 1, 3) for n, s in zip(sizes, seconds)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs=3, default=[8, 16, 32])
    parser.add_argument("--adapter", default="outputs/finetuned")
    parser.add_argument("--test-file", default="outputs/data/test.json")
    args = parser.parse_args()
    if not (ROOT / args.adapter / "adapter_config.json").is_file():
        sys.exit(f"error: {args.adapter} holds no adapter: run stage 1 first (python part1_instruction_finetuning.py)")

    from instructkit.runs.artifacts import manifest, read_json, write_json_atomic

    work = Path(tempfile.mkdtemp(prefix="growth-"))
    stage2, stage4 = {}, {}
    for n in args.sizes:
        out = work / f"stage2-{n}"
        wall = run_stage("part2_generate_test_responses.py", "--adapter", args.adapter, "--test-file", args.test_file,
                         "--limit", str(n), "--output-dir", str(out))
        timings = read_json(out / "test_base_model.meta.json")["timings"]
        generating = sum(t["seconds"] for t in timings.values())
        stage2[n] = {"wall_s": round(wall, 1), "generation_s": round(generating, 1),
                     "generated_tokens": sum(t["generated_tokens"] for t in timings.values())}
        print(f"stage 2, {n} records: {stage2[n]}", flush=True)
    responses = work / f"stage2-{max(args.sizes)}" / "test_base_model.json"
    for n in args.sizes:
        out = work / f"stage4-{n}"
        wall = run_stage("part4_local_evaluation.py", "--input", str(responses), "--limit", str(n),
                         "--output-dir", str(out))
        meta = read_json(out / "judge_scores.meta.json")
        stage4[n] = {"wall_s": round(wall, 1), "judging_s": round(meta["seconds_this_run"], 1),
                     "items_judged": meta["items_judged_this_run"]}
        print(f"stage 4, {n} records: {stage4[n]}", flush=True)

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    sizes = args.sizes
    result = manifest(
        benchmark="stages 2 and 4 at three test-set sizes (embedded models, both responses per record)",
        command="python bench/growth.py " + " ".join(sys.argv[1:]), device=device, sizes=sizes,
        stage2={"by_size": stage2, "fit_generation": fit(sizes, [stage2[n]["generation_s"] for n in sizes])},
        stage4={"by_size": stage4, "fit_judging": fit(sizes, [stage4[n]["judging_s"] for n in sizes])},
    )
    path = write_json_atomic(RESULTS / f"growth-{device}.json", result)
    print(json.dumps({"stage2": result["stage2"]["fit_generation"], "stage4": result["stage4"]["fit_judging"]}))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
