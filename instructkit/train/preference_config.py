"""Stage 1b's settings: the preference pairs, the method (DPO or KTO) and the training run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from instructkit.config import SEED, LocalModel, Reruns, option, setting_problems
from instructkit.data import packaged
from instructkit.data.preferences import FORMS, drop_repeats, load_pairs, split_pairs
from instructkit.errors import problems_error
from instructkit.models.references import require_adapter, run_adapter
from instructkit.train.config import TRACKERS

DEFAULT_PAIRS = packaged("preference-data.json")
# Each method's TRL trainer losses, its own first: DPO's sigmoid is DPO itself (ipo, hinge, robust,
# ... are its variants); KTO's kto is KTO.
LOSS_TYPES = {
    # (exo_pair and robust are left out: they need label smoothing, which stage 1b does not set)
    "dpo": ("sigmoid", "hinge", "ipo", "nca_pair", "bco_pair", "sppo_hard", "aot", "aot_unpaired", "apo_zero",
            "apo_down", "discopop", "sigmoid_norm"),
    "kto": ("kto", "apo_zero_unpaired"),
}


@dataclass
class PreferenceConfig(Reruns, LocalModel):
    data: str = option("", f"preference pairs: a .json/.jsonl file or a hub dataset (owner/name[:split]) in one of these forms: {'; '.join(FORMS)} (default: {DEFAULT_PAIRS}, unless --from-run is given)")
    from_run: list[str] = option([], "also take pairs from run folders: stage 4's --pairwise verdicts that hold in both orders (judge_scores.json), 0-100 ratings of two answers to one record that differ by --rating-margin (human_ratings.json), the chat app's 'A better' choices")
    drop_identical: bool = option(False, "leave out pairs whose two answers are the same, saying which, instead of refusing the file (6 of LLMs-from-scratch's 1,100 are)")
    rating_margin: float = option(20.0, "two ratings of answers to one record make a pair when they differ by this much", minimum=0)
    keep_test_prompts: bool = option(False, "keep pairs whose prompt is a test record of this run (stage 4 and the chat app rate test records): the preference model's test scores are then not held out, and the summary and report say so")
    adapter: str = option("", "the SFT adapter to start from, and the reference model (default: <output-dir>/finetuned)")
    method: str = option("dpo", "dpo: TRL's DPOTrainer on pairs; kto: TRL's KTOTrainer on answers labelled good or bad (each pair's two answers, and with --from-run single ratings of one answer)", choices=list(LOSS_TYPES))
    loss_type: str = option("", f"the method's TRL loss (default: its own): dpo {', '.join(LOSS_TYPES['dpo'])}; kto {', '.join(LOSS_TYPES['kto'])}")
    good_rating: float = option(70.0, "--method kto with --from-run: a single 0-100 rating this high or higher labels the answer good", minimum=0, maximum=100)
    bad_rating: float = option(30.0, "--method kto with --from-run: a single 0-100 rating this low or lower labels the answer bad", minimum=0, maximum=100)
    beta: float = option(0.1, "how far the model may move from the reference (higher: closer to the SFT model)", exclusive_minimum=0)
    epochs: float = option(1.0, "passes over the training pairs (ignored when --max-steps > 0)", minimum=0)
    max_steps: int = option(-1, "stop after this many optimizer steps (-1: use --epochs)", minimum=-1)
    batch_size: int = option(8, "pairs (DPO: two sequences each) or labelled answers (KTO) per device per step", minimum=1)
    grad_accum: int = option(1, "gradient accumulation steps", minimum=1)
    lr: float = option(5e-5, "peak learning rate (cosine decay, 3%% warm-up); DPO wants a smaller one than SFT", exclusive_minimum=0)
    max_length: int = option(512, "tokens per prompt + answer; longer ones are cut at the end", minimum=1)
    val_fraction: float = option(0.1, "share of prompts held out for the preference accuracy", minimum=0, exclusive_maximum=1)
    seed: int = option(123, "seed of the split and the data order", **SEED)
    eval_steps: int = option(0, "evaluate every N steps (0: about 10 times per run)", minimum=0)
    precompute_ref: bool = option(True, "compute the reference model's log-probabilities once, before training (TRL's precompute_ref_log_probs): one forward pass per step instead of two")
    compact_loss_head: bool = option(True, "off CUDA, run the LM head only at answer tokens (as stage 1; TRL's Triton path does so on CUDA): same log-probabilities, faster CPU steps")
    gradient_checkpointing: bool = option(False, "recompute activations to save memory (on by itself on a GPU after QLoRA)")
    report_to: str = option("none", "also send the metrics to a tracker TRL supports", choices=list(TRACKERS))


def pair_sources(config: PreferenceConfig) -> list[str]:
    """The files or datasets the pairs are read from: --data, else the default unless --from-run."""
    return [config.data] if config.data else ([] if config.from_run else [DEFAULT_PAIRS])


def check(config: PreferenceConfig) -> None:
    """Refuse bad settings, a missing SFT adapter and bad pair files before torch loads."""
    problems = setting_problems(config)
    if config.loss_type and config.loss_type not in LOSS_TYPES[config.method]:
        problems.append(f"--loss-type {config.loss_type} is not a {config.method} loss; use one of "
                        f"{', '.join(LOSS_TYPES[config.method])}")
    if config.method == "kto" and config.batch_size < 2:  # its KL estimate pairs answers within a batch
        problems.append("--method kto needs --batch-size 2 or more (KTO's KL term mismatches answers within a batch)")
    if config.bad_rating >= config.good_rating:
        problems.append(f"--bad-rating {config.bad_rating:g} must be below --good-rating {config.good_rating:g}")
    if config.epochs <= 0 and config.max_steps <= 0:
        problems.append(f"--epochs must be more than 0 when --max-steps is not set (got {config.epochs})")
    problems += [f"--from-run {folder}: no such folder" for folder in config.from_run if not Path(folder).is_dir()]
    if problems:
        raise problems_error(problems)
    for source in pair_sources(config):
        if Path(source).expanduser().is_file():
            pairs, _ = drop_repeats(load_pairs(source, config.drop_identical))
            if not config.from_run:
                split_pairs(pairs, config.val_fraction, config.seed)
    require_adapter(run_adapter(Path(config.output_dir), config.adapter), "--adapter")


def loss_type(config: PreferenceConfig) -> str:
    """The loss asked for, else the method's own."""
    return config.loss_type or LOSS_TYPES[config.method][0]
