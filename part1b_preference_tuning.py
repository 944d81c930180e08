"""Stage 1b: preference tuning (DPO) of stage 1's adapter with TRL's DPOTrainer.

After stage 1, on the embedded default (pairs of a correct and a plausible wrong answer to our
default records), offline on a CPU:
    python part1b_preference_tuning.py

The LLMs-from-scratch polite/impolite pairs (chapter 7), one epoch:
    python part1b_preference_tuning.py --data ../shared/data/instruction-data-with-preference.json

Pairs from what this pipeline collected in another run folder (stage 4 --pairwise verdicts, human
ratings, the chat app's choices; docs/preference.md says how to collect them on other records):
    python part1b_preference_tuning.py --from-run outputs-train-answers

UltraFeedback from the hub, on a GPU:
    python part1b_preference_tuning.py --data HuggingFaceH4/ultrafeedback_binarized:train_prefs --max-steps 500

Starts from <output-dir>/finetuned (the reference model is that SFT model) and writes
<output-dir>/preference/ (adapter, prompt_style.json, pairs/, training_summary.json,
preference.png). Stages 2-5 then answer with it too, as the model named `preference`. A run
trains in <output-dir>/.stage1b.partial/ and is swapped in when it finishes; rerun to resume.
"""

import sys

from instructkit.cli import build_parser, print_config, run_stage
from instructkit.train.preference_config import PreferenceConfig, check


def main(config: PreferenceConfig) -> None:
    print_config(config, "stage 1b: preference tuning")
    check(config)  # bad input refused before torch loads
    from instructkit.train.preference import train

    train(config)


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser(PreferenceConfig, __doc__)))
