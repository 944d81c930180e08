"""The models a run compares, for stages 2, 3 and 5: the base model and its finetune (stage 1's
adapter in the run folder, or a merged model), resolved and fingerprinted in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from instructkit.config import Finetune
from instructkit.models.references import (
    ResolvedModel,
    base_reference,
    require_adapter,
    resolve_model,
    run_adapter,
    trained_quantization,
)
from instructkit.runs.fingerprints import finetuned_input, model_input


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
