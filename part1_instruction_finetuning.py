"""Stage 1: instruction finetuning with TRL's SFTTrainer and a LoRA/QLoRA adapter.

Embedded default, offline on a CPU (gemma-3-270m, our 500-record dataset):
    python part1_instruction_finetuning.py

The public LLMs-from-scratch dataset, a quick 5-step run:
    python part1_instruction_finetuning.py --data ../shared/data/instruction-data.json --max-steps 5

Llama 3 8B with QLoRA on a CUDA GPU (pip install -r requirements-gpu.txt for FlashAttention 2):
    python part1_instruction_finetuning.py --base-model meta-llama/Meta-Llama-3-8B --data alpaca \\
        --qlora --batch-size 4 --grad-accum 4 --lr 2e-4 --max-length 1024 --merge

Several processes (DDP; see README for FSDP):
    accelerate launch --num_processes 2 part1_instruction_finetuning.py ...

Writes outputs/data/{train,val,test}.json and outputs/finetuned/ (adapter, tokenizer,
prompt_style.json, training_summary.json, loss.png). A run trains in outputs/.stage1.partial/ and
replaces data/ and finetuned/ only when it finishes. Rerun the same command to resume an interrupted
run (--restart discards its checkpoints); a finished run is reused while its data and settings are
the same, and trained again, saying why, when they changed.
"""

import sys

from instructkit.cli import build_parser, print_config, run_stage
from instructkit.train.config import TrainingConfig, check


def main(config: TrainingConfig) -> None:
    print_config(config, "stage 1: instruction finetuning")
    check(config)  # bad input refused before torch loads
    from instructkit.train.sft import train

    train(config)


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser(TrainingConfig, __doc__)))
