"""The number format models run in: fp32 or bf16, chosen per device and per use from measurements
(bench/precision.py), overridable with --precision. Every stage records the choice and the reason
in its manifest, and a changed precision counts as a changed setting on a rerun."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from instructkit.config import PRECISIONS
from instructkit.errors import UserError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
USES = ("training", "inference")


@dataclass(frozen=True)
class Precision:
    name: str  # "fp32" or "bf16"
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    def describe(self) -> dict:
        return {"precision": self.name, "precision_reason": self.reason}


def native_bf16_cpu() -> str | None:
    """The CPU's native bf16 instructions ("amx" or "avx512_bf16"), or None (AVX2: bf16 is emulated)."""
    from instructkit.runs.artifacts import cpu_description

    flags = set(cpu_description()["speed_flags"])
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512_bf16"
    return None


# On a CPU with native bf16, what bf16 weights did against fp32 for each use: bench/precision.py on
# AVX-512 BF16 without AMX (AMD EPYC, 2 cores): training 1.22x at the same validation loss (within
# 0.0005 per seed; the seed spread is 0.048), generation 2.01x, MMLU log-likelihoods 1.96x (accuracy
# 0.235 against 0.238 on 311 questions, stderr 0.024). On AMX (Intel, a first look filed with issue
# 20) training 1.14x, decoding no faster: there inference stays fp32.
NATIVE_BF16_GAINS = {
    ("avx512_bf16", "training"): "1.22x faster training, same validation loss",
    ("avx512_bf16", "inference"): "about 2x faster generation and log-likelihoods, MMLU accuracy within 0.003",
    ("amx", "training"): "1.14x faster training, same validation loss",
}


def resolve_precision(requested: str, use: str) -> Precision:
    """`requested` ("auto", "fp32" or "bf16") for `use` ("training" or "inference") on this machine."""
    if requested not in PRECISIONS:
        raise UserError(f"--precision {requested!r}: use one of {', '.join(PRECISIONS)}")
    if use not in USES:
        raise ValueError(f"use {use!r}: one of {USES}")
    if requested != "auto":
        return Precision(requested, f"--precision {requested}")
    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return Precision("bf16", "auto: the GPU computes in bf16 natively")
        return Precision("fp32", "auto: this GPU has no bf16")
    native = native_bf16_cpu()
    if native is None:
        return Precision("fp32", "auto: this CPU has no native bf16 (AVX2 only), where bf16 runs about 10x slower")
    gain = NATIVE_BF16_GAINS.get((native, use))
    if gain is None:
        return Precision("fp32", f"auto: on this CPU ({native}) bf16 was measured no faster for {use}")
    return Precision("bf16", f"auto: this CPU has native bf16 ({native}); measured {gain} (bench/precision.py)")


def earlier_default() -> str:
    """What every stage ran in before --precision existed: bf16 on a GPU that has it, else fp32."""
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def precision_setting(precision: Precision) -> dict:
    """The precision as a setting of a stage's fingerprint: named only where it departs from what
    earlier versions ran, so that their finished runs still stand unless the precision changed."""
    return {} if precision.name == earlier_default() else {"precision": precision.name}
