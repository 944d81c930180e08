"""Stage 2: the base and the finetuned model answer every test record.

After stage 1, with no arguments (reads outputs/data/test.json and outputs/finetuned/):
    python part2_generate_test_responses.py

Another run folder: stage 1's split and adapter are read from it too
    python part2_generate_test_responses.py --output-dir runs/lr1e-4

A quick look at 5 records, finetuned model only:
    python part2_generate_test_responses.py --limit 5 --models finetuned

Llama 3 8B on a GPU, with a merged model or with vLLM (pip install vllm):
    python part2_generate_test_responses.py --batch-size 32 --max-new-tokens 256
    python part2_generate_test_responses.py --engine vllm

More models answer beside them (each in its own prompt format; one column each, <name>_model_response):
    python part2_generate_test_responses.py --compare smol=smollm2-135m-instruct
    python part2_generate_test_responses.py --compare gpt=openai:gpt-4o-mini

Writes outputs/test_base_model.json (instruction, input, output, base_model_response,
finetuned_model_response per record, and any compare model's) and test_base_model.meta.json (settings, timings, versions).
Killed halfway? Rerun the same command: finished records are kept and not generated again.
Retrained in stage 1? Rerun: the responses are made again because the adapter changed (the
manifest holds the fingerprints of the test split, the adapter and the base model).
"""

import sys

from instructkit.cli import build_parser, print_config, run_stage
from instructkit.generate.config import GenerationConfig, check


def main(config: GenerationConfig) -> None:
    print_config(config, "stage 2: test-set responses")
    check(config)  # bad input refused before torch loads
    from instructkit.generate.generator import generate_responses

    generate_responses(config)


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser(GenerationConfig, __doc__)))
