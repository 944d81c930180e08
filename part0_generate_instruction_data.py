"""Stage 0 (optional): make instruction data with a stronger model, improve it, and clean it; make
preference pairs for stage 1b.

With no arguments (the embedded SmolLM2-135M-Instruct writes Self-Instruct data from our seed tasks,
offline on a CPU; a 135M model writes weak data: the point is the pipeline, a real generator is
one flag away):
    python part0_generate_instruction_data.py

Self-Instruct through any OpenAI-compatible server, Magpie with a local instruct model, reflection
and curation of an existing file:
    OPENAI_API_KEY=... python part0_generate_instruction_data.py --generator openai:gpt-4o-mini --num-instructions 500
    python part0_generate_instruction_data.py --generator openai:llama3 --base-url http://localhost:11434/v1
    python part0_generate_instruction_data.py --method magpie --generator hf:meta-llama/Meta-Llama-3-8B-Instruct
    python part0_generate_instruction_data.py --method reflect --data my-data.json --generator openai:gpt-4o-mini
    python part0_generate_instruction_data.py --method curate --data my-data.json --exclude outputs/data/test.json

See the first prompt and how many requests a run would send, without sending any:
    python part0_generate_instruction_data.py --generator openai:gpt-4o-mini --num-instructions 500 --dry-run

Writes outputs/generated/instruction-data.json (Alpaca records: train on it with
`python part1_instruction_finetuning.py --data outputs/generated/instruction-data.json`) and
instruction-data.meta.json (generator, method, settings, seed, versions, and how many records each
filter dropped; --keep-dropped also writes the dropped records with their reasons).
Killed halfway? Rerun the same command: logged replies are reused and the run ends with the same file.

Preference pairs for stage 1b (docs/preference.md), for the records of stage 1's training split: a
stronger model rewrites each answer worse or better (LLMs-from-scratch's polite/impolite recipe),
or the run's SFT model answers each record several times and a stronger model scores the answers
(the best and the worst are the pair). Both write outputs/generated/preference-data.json:
    python part0_generate_instruction_data.py --method pairs-rewrite --generator openai:gpt-4o-mini
    python part0_generate_instruction_data.py --method pairs-sample --samples 4 --generator openai:gpt-4o-mini
    python part1b_preference_tuning.py --data outputs/generated/preference-data.json
"""

import sys

from instructkit.cli import build_parser, print_config, run_stage
from instructkit.data.synthesis_config import PAIR_METHODS, SynthesisConfig, check


def main(config: SynthesisConfig) -> None:
    print_config(config, "stage 0: generate instruction data")
    check(config)  # bad settings refused before torch loads
    if config.method in PAIR_METHODS:
        from instructkit.data.pair_synthesis import generate_pairs

        generate_pairs(config)
    else:
        from instructkit.data.synthesis import generate_data

        generate_data(config)


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser(SynthesisConfig, __doc__)))
