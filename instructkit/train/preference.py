"""Stage 1b: preference tuning of stage 1's adapter with TRL's DPOTrainer (pairs) or KTOTrainer
(answers labelled good or bad).

The SFT adapter is trained further, and a frozen copy of it is the reference (TRL's "ref" adapter
for a PeftModel passed with a pretrained adapter): the reference is the SFT model, not the raw base,
so DPO's loss starts at ln 2 with a margin of 0, and the result is again one LoRA adapter on the
base, which stages 2-5 load as they load stage 1's.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import torch
from datasets import Dataset
from transformers import ProgressCallback, set_seed
from transformers.trainer_utils import get_last_checkpoint

from instructkit.data.parity import check_parity, stop_ids, trained_prompt_ids
from instructkit.data.preferences import (
    Pair,
    drop_repeats,
    load_pairs,
    prompt_key,
    prompt_record,
    source_kind,
    split_pairs,
)
from instructkit.data.prompts import PromptStyle, as_text, load_style
from instructkit.data.records import split_file, validate_records
from instructkit.errors import UserError
from instructkit.judge.pairs import labels_from_run, pairs_from_run
from instructkit.models.loading import load_causal_lm, load_tokenizer
from instructkit.models.precision import precision_setting, resolve_precision
from instructkit.models.references import (
    PREFERENCE_DIR,
    base_reference,
    require_adapter,
    resolve_model,
    run_adapter,
    trained_prompts,
    trained_quantization,
)
from instructkit.report.plots import plot_preference
from instructkit.runs.artifacts import is_main_process, manifest, output_lock, read_json, write_json_atomic
from instructkit.runs.fingerprints import path_input, reference_input
from instructkit.runs.reuse import why_redo
from instructkit.train.common import (
    RUN_CONFIG_FILE,
    QuietProgressCallback,
    check_resumable,
    peak_memory_mb,
    swap_in,
    trainer_arguments,
)
from instructkit.train.config import SUMMARY_FILE
from instructkit.train.loss_head import use_compact_head
from instructkit.train.preference_config import PreferenceConfig, loss_type, pair_sources

STAGING_DIR = ".stage1b.partial"
PAIRS_DIR = "pairs"  # in the adapter folder: the pairs it was tuned and evaluated on, each with its source
NOT_RUN_SETTINGS = ("overwrite", "restart", "output_dir", "report_to", "precision", "adapter", "data", "from_run",
                    "compact_loss_head", "precompute_ref")
# What TRL logs, by what the summary calls it.
METRICS = {"loss": "loss", "reward_chosen": "rewards/chosen", "reward_rejected": "rewards/rejected",
           "margin": "rewards/margins", "accuracy": "rewards/accuracies", "kl": "kl"}  # accuracy: DPO; kl: KTO
TRAINERS = {"dpo": ("DPOTrainer", "DPOConfig"), "kto": ("KTOTrainer", "KTOConfig")}


def run_settings(config: PreferenceConfig, quantization: dict | None) -> dict:
    """What the adapter depends on besides its inputs; a QLoRA SFT adapter's 4-bit base is part of
    it (and read from here by the stages that load the result, as from stage 1's summary)."""
    settings = {k: v for k, v in asdict(config).items() if k not in NOT_RUN_SETTINGS}
    # the ratings' thresholds choose pairs only from run folders (and labels only for KTO): with a
    # pair file alone they change nothing, and must not retrain
    unused = ((("rating_margin",) if not config.from_run else ())
              + (("good_rating", "bad_rating") if not config.from_run or config.method != "kto" else ()))
    settings = {k: v for k, v in settings.items() if k not in unused}
    if quantization:
        settings["quantization"] = quantization
    return settings | precision_setting(resolve_precision(config.precision, "training"))


def gather_pairs(config: PreferenceConfig, output_dir: Path) -> tuple[list[Pair], dict]:
    """The pairs from --data and --from-run (for KTO also single answers rated good or bad), repeats
    dropped, and those that ask a test record of this run dropped unless --keep-test-prompts (a pair
    on a test record would tune on the test)."""
    pairs: list[Pair] = []
    skipped: Counter = Counter()
    for source in pair_sources(config):
        pairs += load_pairs(source, config.drop_identical)
    for folder in config.from_run:
        labels = labels_from_run(folder, config.good_rating, config.bad_rating) if config.method == "kto" else []
        try:
            found, why = pairs_from_run(folder, config.rating_margin)
        except UserError:
            if not labels:  # no pair and no label: say why
                raise
            found, why = [], {}
        pairs += found + labels
        skipped.update(why)
    pairs, n_repeats = drop_repeats(pairs)
    test_file = split_file(output_dir, "test")
    test_prompts = {prompt_key(r) for r in validate_records(read_json(test_file), test_file)} if test_file.is_file() else set()
    on_test = sum(prompt_key(p) in test_prompts for p in pairs)
    if on_test and not config.keep_test_prompts:
        pairs = [p for p in pairs if prompt_key(p) not in test_prompts]
        print(f"note: {on_test} pairs ask a test record of this run ({test_file}) and are left out, so stages 2-4 "
              "measure the preference model on held-out questions (--keep-test-prompts keeps them)")
        if not pairs:
            raise UserError(f"every pair asks a test record of this run ({test_file}): stage 4 and the chat app rate "
                            "test records. Pass --keep-test-prompts to tune on them anyway (the test scores are then "
                            "not held out), or collect pairs on other records (docs/preference.md)")
    elif on_test:
        print(f"warning: {on_test} pairs ask a test record of this run: the preference model's scores on the test "
              "split are not held out (recorded in the summary)")
    kinds = Counter(source_kind(p) for p in pairs)
    return pairs, {"n_pairs": len(pairs), "by_source": dict(kinds), "n_repeats_dropped": n_repeats,
                   "n_test_prompts": on_test, "test_prompts_kept": bool(on_test and config.keep_test_prompts),
                   "skipped_judgements": dict(skipped)}


def pair_inputs(config: PreferenceConfig, sft_dir: Path, output_dir: Path) -> dict:
    """What the result is made from: the pair files or run folders' judgements, the SFT adapter, and
    the test split (it decides which pairs are left out)."""
    # keyed by place, not path: the same bytes named another way (./x.json, another clone) are the same input
    inputs = {f"pair file {n}": reference_input(source) for n, source in enumerate(pair_sources(config), start=1)}
    for n, folder in enumerate(config.from_run, start=1):
        inputs |= {f"run folder {n}'s {name}": path_input(Path(folder) / name)
                   for name in ("judge_scores.json", "human_ratings.json", "test_base_model.json")
                   if (Path(folder) / name).is_file()}
    return inputs | {"sft_adapter": path_input(sft_dir), "test_split": path_input(split_file(output_dir, "test"))}


def kto_examples(style: PromptStyle, item: Pair, tokenizer) -> list[dict]:
    """TRL's unpaired examples: a pair's answers labelled good and bad, or one rated answer (their
    text as plain text for `tokenizer`)."""
    item = as_text(item, tokenizer)
    record = prompt_record(item)
    answers = [(item["chosen"], True), (item["rejected"], False)] if "chosen" in item else [(item["completion"], item["label"])]
    if style.is_chat:
        return [{"prompt": style.prompt(record), "completion": [{"role": "assistant", "content": answer}], "label": good}
                for answer, good in answers]
    return [{"prompt": style.prompt(record), "completion": answer, "label": good} for answer, good in answers]


def dpo_example(style: PromptStyle, pair: Pair, tokenizer) -> dict:
    """A TRL preference example asked as stage 1 trained: the rendered prompt text and the answers
    for the text styles (TRL adds EOS); turns for the chat styles, rendered by the saved template;
    their text as plain text for `tokenizer`."""
    pair = as_text(pair, tokenizer)
    record = prompt_record(pair)
    if style.is_chat:
        return {"prompt": style.prompt(record), "chosen": [{"role": "assistant", "content": pair["chosen"]}],
                "rejected": [{"role": "assistant", "content": pair["rejected"]}]}
    return {"prompt": style.prompt(record), "chosen": pair["chosen"], "rejected": pair["rejected"]}


def _unique(rows: list[dict]) -> list[dict]:
    """KTO examples without repeats: a rated answer may also be half of a pair from the same rating."""
    return list({json.dumps(row, sort_keys=True): row for row in rows}.values())


def _trl_prompt_ids(style: PromptStyle, tokenizer):
    """How TRL's DPOTrainer and KTOTrainer tokenize a prompt (for the template parity check)."""
    if style.is_chat:
        return lambda record: tokenizer.apply_chat_template(style.prompt(as_text(record, tokenizer)), add_generation_prompt=True,
                                                            tokenize=True, return_dict=True)["input_ids"]
    return lambda record: trained_prompt_ids(style, record, tokenizer)


def _check_lengths(max_length: int, pairs: list[Pair], style: PromptStyle, tokenizer) -> None:
    """TRL leaves out an example whose prompt fills --max-length (no token of its answer is left to
    learn); when that is every one, refused before the model loads."""
    prompt_ids = _trl_prompt_ids(style, tokenizer)
    lengths = [len(prompt_ids(prompt_record(item))) for item in pairs]
    full = sum(length >= max_length for length in lengths)
    if lengths and full == len(lengths):
        raise UserError(f"--max-length {max_length}: every prompt is that long or longer (the shortest has "
                        f"{min(lengths)} tokens), so no answer is left to learn; raise --max-length")
    if full:
        print(f"note: {full} of {len(lengths)} pairs have a prompt of --max-length {max_length} tokens or more: "
              "TRL leaves them out")


def _trainer_class(method: str, compact_head: bool):
    """TRL's trainer for `method`, saving checkpoints that resume, and given the compact LM head
    (loss_head.py) off CUDA before its first forward: the reference pass it precomputes in
    __init__ included."""
    import trl

    class StageTrainer(getattr(trl, TRAINERS[method][0])):
        def _save(self, output_dir: str | None = None, state_dict=None):
            # The policy only: with TRL's frozen "ref" adapter saved too (in ref/), transformers
            # would resume by loading the adapter subfolders only, and train on from the SFT weights.
            super()._save(output_dir, state_dict)
            shutil.rmtree(Path(output_dir or self.args.output_dir) / "ref", ignore_errors=True)

        def _precompute_ref_logps(self, *args, **kwargs):
            if compact_head:
                use_compact_head(self)
            return super()._precompute_ref_logps(*args, **kwargs)

        def train(self, *args, **kwargs):
            if compact_head:
                use_compact_head(self)
            return super().train(*args, **kwargs)

    return StageTrainer


def train(config: PreferenceConfig) -> Path:
    """Run stage 1b and return the adapter folder (`<output_dir>/preference`)."""
    output_dir = Path(config.output_dir)
    sft_dir = run_adapter(output_dir, config.adapter)
    require_adapter(sft_dir, "--adapter")
    pairs, collected = gather_pairs(config, output_dir)
    train_pairs, val_pairs = split_pairs(pairs, config.val_fraction, config.seed)
    record = {"settings": run_settings(config, trained_quantization(sft_dir)),
              "inputs": pair_inputs(config, sft_dir, output_dir)}
    target = output_dir / PREFERENCE_DIR
    staging = output_dir / STAGING_DIR
    with output_lock(output_dir, "preference"):
        if is_main_process() and (staging / PREFERENCE_DIR / SUMMARY_FILE).is_file():
            print(f"note: completing the swap-in of the run finished in {staging}")
            swap_in(output_dir, staging, (PREFERENCE_DIR,))
        if (target / SUMMARY_FILE).is_file() and not config.overwrite:
            reason = why_redo(read_json(target / SUMMARY_FILE), record["settings"], record["inputs"],
                              "the preference adapter was trained")
            if reason is None:
                print(f"stage 1b already finished: {target / SUMMARY_FILE} (same pairs, SFT adapter and settings; "
                      "--overwrite trains again)")
                return target
            print(f"{reason}: training again")
        return _train(config, sft_dir, train_pairs, val_pairs, collected, record, output_dir, staging)


def _train(config: PreferenceConfig, sft_dir: Path, train_pairs: list[Pair], val_pairs: list[Pair], collected: dict,
           record: dict, output_dir: Path, staging: Path) -> Path:
    import trl
    from peft import PeftModel

    set_seed(config.seed)
    style = load_style(sft_dir)
    base = resolve_model(base_reference("", sft_dir))
    tokenizer = load_tokenizer(base, config.trust_remote_code)
    if style.template:  # TRL renders the chat styles' turns with it
        tokenizer.chat_template = style.template.jinja
    _check_lengths(config.max_length, train_pairs + val_pairs, style, tokenizer)
    precision = resolve_precision(config.precision, "training")
    quantization = record["settings"].get("quantization")
    model = load_causal_lm(base, quantization=quantization, trust_remote_code=config.trust_remote_code,
                           dtype=precision.dtype)
    # Before anything is written: stage 1b asks the prompts stage 1 trained on (parity.py)
    saved_prompts = trained_prompts(sft_dir)
    parity = check_parity(saved_prompts, {"stage 1b (TRL's tokenization)": _trl_prompt_ids(style, tokenizer)},
                          stop_ids(model.generation_config, style, tokenizer), tokenizer)
    model = PeftModel.from_pretrained(model, str(sft_dir), is_trainable=True)

    adapter_dir = staging / PREFERENCE_DIR
    checkpoints = adapter_dir / "checkpoints"
    resuming = check_resumable(checkpoints, record, config.restart)
    has_val = bool(val_pairs)
    if config.method == "kto":
        train_rows, val_rows = (_unique([e for item in items for e in kto_examples(style, item, tokenizer)])
                                for items in (train_pairs, val_pairs))
        # KTO reads its data in order and estimates its KL term from the next answer in the batch:
        # shuffled (seeded), or a pair's rejected answer would be estimated from its own chosen one
        random.Random(config.seed).shuffle(train_rows)
    else:
        train_rows = [dpo_example(style, p, tokenizer) for p in train_pairs]
        val_rows = [dpo_example(style, p, tokenizer) for p in val_pairs]
    method_config = getattr(trl, TRAINERS[config.method][1])
    args = method_config(**trainer_arguments(config, checkpoints, len(train_rows), has_val, resuming,
                                             quantized=bool(quantization)),
                         beta=config.beta, loss_type=[loss_type(config)] if config.method == "dpo" else loss_type(config),
                         precompute_ref_log_probs=config.precompute_ref)
    started = time.perf_counter()
    trainer = _trainer_class(config.method, config.compact_loss_head)(  # a PeftModel and no peft_config: TRL keeps a frozen copy of the adapter as the reference
        model=model, args=args, processing_class=tokenizer, train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(val_rows) if has_val else None,
    )
    setup_s = time.perf_counter() - started  # tokenizing, and the reference pass when precomputed
    if is_main_process():  # after TRL's own checks of the settings
        write_json_atomic(checkpoints / RUN_CONFIG_FILE, record)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(QuietProgressCallback({"loss": "loss", "rewards/margins": "margin",
                                                "eval_loss": "eval_loss", "eval_rewards/accuracies": "eval_accuracy"}))
    # a resumed run trains from its last checkpoint on: its time is of the steps after it
    first_step = int(Path(get_last_checkpoint(str(checkpoints))).name.split("-")[-1]) if resuming else 0
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=True if resuming else None)
    train_s = time.perf_counter() - started
    history = trainer.state.log_history
    evals = {e["step"]: e for e in history if "eval_loss" in e}
    if has_val and trainer.state.global_step not in evals:
        evals[trainer.state.global_step] = {"step": trainer.state.global_step, **trainer.evaluate()}

    final_dir = output_dir / PREFERENCE_DIR
    if not trainer.is_world_process_zero():
        return final_dir
    trainer.model.save_pretrained(adapter_dir, selected_adapters=["default"])  # not TRL's frozen "ref" copy
    tokenizer.save_pretrained(adapter_dir)
    style.save(adapter_dir)
    for name, split in (("train", train_pairs), ("val", val_pairs)):
        write_json_atomic(adapter_dir / PAIRS_DIR / f"{name}.json", split)
    train_curve = [{"step": e["step"], **{k: e[v] for k, v in METRICS.items() if v in e}} for e in history if "loss" in e]
    val_curve = [{"step": step, **{k: e[f"eval_{v}"] for k, v in METRICS.items() if f"eval_{v}" in e}}
                 for step, e in sorted(evals.items())]
    plot_preference(train_curve, val_curve, adapter_dir / "preference.png",
                    f"{config.method.upper()} ({loss_type(config)}, beta {config.beta}) on {sft_dir.name} of {base.reference}")
    steps = trainer.state.global_step
    summary = manifest(
        stage="part1b_preference_tuning",
        base_model=base.reference,
        base_model_path=base.path,
        sft_adapter=str(sft_dir),
        prompt_style=style.name,
        template_parity=saved_prompts,
        template_parity_check=parity,
        method={"method": config.method, "trainer": f"trl.{TRAINERS[config.method][0]}", "loss_type": loss_type(config),
                "beta": config.beta,
                "reference": "the SFT adapter (a frozen copy)", "reference_log_probs_precomputed": config.precompute_ref},
        settings=record["settings"],
        inputs=record["inputs"],
        pairs=collected | {"train": len(train_pairs), "val": len(val_pairs), "examples": {"train": len(train_rows), "val": len(val_rows)},
                           "files": f"{PAIRS_DIR}/train.json, {PAIRS_DIR}/val.json"},
        steps=steps,
        epochs_done=round(trainer.state.epoch or 0, 3),
        resumed=resuming,
        train_curve=train_curve,
        val_curve=val_curve,
        val_before=val_curve[0] if val_curve and val_curve[0]["step"] == 0 else None,
        val_after=val_curve[-1] if val_curve else None,
        setup_s=round(setup_s, 1),
        train_s=round(train_s, 1),
        steps_this_run=steps - first_step,
        seconds_per_step=round(train_s / (steps - first_step), 3) if steps > first_step else None,
        peak_memory=peak_memory_mb(),
        device="cuda:" + torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        **precision.describe(),
    )
    write_json_atomic(adapter_dir / SUMMARY_FILE, summary)  # it marks the run finished
    shutil.rmtree(checkpoints, ignore_errors=True)
    swap_in(output_dir, staging, (PREFERENCE_DIR,))
    _print_summary(summary, final_dir)
    return final_dir


def _print_summary(summary: dict, folder: Path) -> None:
    print(f"\n== stage 1b done: {summary['steps']} steps in {summary['train_s']} s "
          f"({summary['seconds_per_step']} s/step), {summary['pairs']['train']} training pairs")
    before, after = summary["val_before"], summary["val_after"]
    if before and after:
        for key in ("loss", "margin", "accuracy"):
            print(f"held-out {key}: {before.get(key, float('nan')):.3f} before -> {after.get(key, float('nan')):.3f} after")
    print(f"adapter: {folder}\nsummary: {folder / SUMMARY_FILE}\ncurves: {folder / 'preference.png'}\n"
          f"stages 2-5 now answer with it too (as 'preference') on {folder.parent}")

