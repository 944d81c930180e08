"""What both training stages (1: SFT, 1b: preference tuning) share: the trainer's arguments, the
progress bar, resuming from checkpoints and swapping a finished run in."""

from __future__ import annotations

import math
import resource
import shutil
from pathlib import Path

import torch
from transformers import ProgressCallback

from instructkit.errors import UserError
from instructkit.models.precision import resolve_precision
from instructkit.runs.artifacts import is_main_process, read_json
from instructkit.runs.fingerprints import changed, same_inputs, same_settings, settings_changes

RUN_CONFIG_FILE = "run_config.json"


def planned_steps(config, n_train: int) -> int:
    """Optimizer steps of a run of `config` (stage 1's or 1b's settings) over `n_train` examples."""
    if config.max_steps > 0:
        return config.max_steps
    per_epoch = math.ceil(n_train / (config.batch_size * config.grad_accum))
    return max(1, math.ceil(config.epochs * per_epoch))


class QuietProgressCallback(ProgressCallback):
    """transformers' progress bar, with the latest loss (and any other `keys`) on the bar instead of
    a printed dict per step and per evaluation (the full log is kept in training_summary.json)."""

    def __init__(self, keys: dict[str, str] | None = None):
        super().__init__()
        self.keys = keys or {"loss": "loss", "eval_loss": "eval_loss"}  # logged name -> name on the bar
        self.shown: dict[str, str] = {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and logs:
            self.shown.update({shown: f"{logs[key]:.4f}" for key, shown in self.keys.items()
                               if isinstance(logs.get(key), float)})
            if self.shown:
                self.training_bar.set_postfix(self.shown, refresh=False)


def last_logged(history: list[dict], key: str):
    values = [entry[key] for entry in history if key in entry]
    return values[-1] if values else None


def peak_memory_mb() -> dict[str, float]:
    peak = {"cpu_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if torch.cuda.is_available():
        peak["gpu_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peak


def check_resumable(checkpoints: Path, record: dict, restart: bool) -> bool:
    """Resume only a run made from the same data with the same settings; anything else would mix
    two experiments. Checkpoints from data that has changed since are discarded, saying so."""
    for partial in checkpoints.glob("checkpoint-*"):
        if not (partial / "trainer_state.json").is_file():  # killed while saving: unusable
            shutil.rmtree(partial, ignore_errors=True)  # every rank of a DDP job may get here
    if not any(checkpoints.glob("checkpoint-*")):
        return False
    saved_path = checkpoints / RUN_CONFIG_FILE
    saved = read_json(saved_path) if saved_path.is_file() else {}
    discard = None
    if restart:
        discard = "--restart"
    elif not same_inputs(saved.get("inputs"), record["inputs"]):
        discard = f"{', '.join(changed(saved.get('inputs'), record['inputs']))} changed since they were made"
    elif not same_settings(saved.get("settings"), record["settings"]):
        raise UserError(
            f"{checkpoints} holds checkpoints of an interrupted run with other settings "
            f"({'; '.join(settings_changes(saved.get('settings'), record['settings']))}); "
            "rerun with the same settings to resume, or pass --restart to discard them"
        )
    if discard is None:
        return True
    if is_main_process():
        print(f"note: discarding the checkpoints in {checkpoints}: {discard}")
        shutil.rmtree(checkpoints, ignore_errors=True)
    return False


def swap_in(output_dir: Path, staging: Path, names: tuple[str, ...]) -> None:
    """Replace the folders `names` of the run folder with the finished run's from `staging`. Each
    folder is replaced by two renames; a run killed in between finds the finished run still staged
    and completes the swap."""
    for name in names:
        new, current, old = staging / name, output_dir / name, output_dir / f".{name}.old"
        if not new.exists():
            continue
        shutil.rmtree(old, ignore_errors=True)
        if current.exists():
            current.rename(old)
        new.rename(current)
        shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)




def trainer_arguments(config, checkpoints: Path, n_train: int, has_val: bool, resuming: bool,
                      quantized: bool) -> dict:
    """The TrainingArguments both stages share. Unlike TRL's defaults: no gradient checkpointing
    unless asked (always with QLoRA on a GPU), and no bf16 autocast on a CPU, where it casts the
    weights at every step (bf16 there means bf16 base weights instead); bench/train_throughput.py
    and bench/precision.py measure it."""
    eval_steps = config.eval_steps or max(1, planned_steps(config, n_train) // 10)
    on_gpu = torch.cuda.is_available()
    return dict(
        output_dir=str(checkpoints),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr,
        lr_scheduler_type="cosine",
        warmup_ratio=0.03,
        max_length=config.max_length,
        logging_steps=1,
        eval_strategy="steps" if has_val else "no",
        # The starting model's validation metrics, logged as step 0 and kept in every checkpoint's
        # log. Evaluated inside train(): a trainer.evaluate() before train() leaves the model
        # unwrapped by DDP, and each rank then trains its own copy without syncing gradients.
        eval_on_start=has_val and not resuming,
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=eval_steps,
        save_total_limit=2,
        seed=config.seed,
        data_seed=config.seed,
        # DDP broadcasts buffers by position, and transformers 5.3 (our pin) registers Gemma 3's two RoPE
        # tables in `set` order, which differs per process: rank 1 got the wrong table (found by
        # tests/test_multiprocess.py; upstream fix huggingface/transformers#48162). The buffers are
        # functions of the config, identical on every rank, so there is nothing to broadcast.
        ddp_broadcast_buffers=False,
        bf16=on_gpu and resolve_precision(config.precision, "training").name == "bf16",
        use_cpu=not on_gpu,
        # QLoRA is for a GPU's memory: there activations are recomputed too (a CPU has the room).
        gradient_checkpointing=config.gradient_checkpointing or (quantized and on_gpu),
        report_to=config.report_to,
        disable_tqdm=False,
    )
