"""The models a run compares, for stages 2, 3 and 5: the base model and its finetune (stage 1's
adapter in the run folder, or a merged model), and stage 1b's preference-tuned adapter where it
was tuned from that finetune, resolved and fingerprinted in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from instructkit.config import Finetune
from instructkit.models.references import (
    PREFERENCE_DIR,
    ResolvedModel,
    base_reference,
    require_adapter,
    resolve_model,
    run_adapter,
    trained_quantization,
)
from instructkit.runs.artifacts import read_json
from instructkit.runs.fingerprints import finetuned_input, model_input, path_input, same_input


@dataclass(frozen=True)
class RunModels:
    base: ResolvedModel
    adapter: Path  # stage 1's adapter folder (unused when `merged` is given)
    merged: str  # a merged finetuned model instead of base + adapter, or ""
    roles: tuple[str, ...]  # which of "base" and "finetuned" the stage runs
    quantization: dict | None  # how the base loads: 4-bit as a QLoRA adapter was trained, or None

    @classmethod
    def of(cls, config: Finetune, output_dir: str | Path, which: str = "both") -> RunModels:
        """`which` ("both", "base" or "finetuned") of the run's models; a missing adapter is refused."""
        roles = ("base", "finetuned") if which == "both" else (which,)
        adapter = run_adapter(Path(output_dir), config.adapter)
        if "finetuned" in roles and not config.merged:
            require_adapter(adapter)
        quantization = None if config.unquantized_base else trained_quantization(adapter)
        return cls(resolve_model(base_reference(config.base_model, adapter)), adapter, config.merged, roles, quantization)

    @property
    def loads_base(self) -> bool:
        """Whether the base weights are loaded: for the base's answers, or under the adapter."""
        return "base" in self.roles or not self.merged

    def quantization_setting(self) -> dict:
        """The base's 4-bit loading as a setting of a stage's fingerprint (absent when unquantized, as
        every run before QLoRA reached later stages was)."""
        return {"base_quantization": self.quantization} if self.quantization and self.loads_base else {}

    def finetuned_input(self) -> dict:
        return finetuned_input(self.merged, self.adapter)

    def base_input(self) -> dict:
        return model_input(self.base)

    def preference(self, output_dir: str | Path) -> Path | None:
        """Stage 1b's adapter in the run folder, when it was tuned from this run's finetune: stages
        2, 3 and 5 add it as the model `preference`. Left out, saying why, beside another adapter
        (--adapter) or a merged model, or after stage 1 was trained again."""
        folder = Path(output_dir) / PREFERENCE_DIR
        summary = folder / "training_summary.json"
        if not summary.is_file() or "finetuned" not in self.roles:
            return None
        if self.merged:
            why = "--merged replaces the adapter it was tuned from"
        elif self.adapter.resolve() != run_adapter(Path(output_dir), "").resolve():
            why = f"--adapter {self.adapter} is not the adapter it was tuned from"
        elif not same_input((read_json(summary).get("inputs") or {}).get("sft_adapter"), path_input(self.adapter)):
            why = f"it was tuned from another adapter than {self.adapter} (stage 1 trained again since); run stage 1b again"
        else:
            return folder
        print(f"note: not answering with {folder}: {why}")
        return None
