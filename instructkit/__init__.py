"""instructkit: instruction finetuning with TRL + PEFT, and measuring what it did."""

import logging

__version__ = "0.7.0"


class _OptionalKernelNotice(logging.Filter):
    """bitsandbytes warns on every import on a CPU with AVX-512 BF16 that an optional 4-bit kernel
    package (`kernels`) is missing. We never run 4-bit on a CPU (QLoRA needs CUDA), so the line is
    noise that reads like a failure; it is dropped here and nowhere else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to load CPU gemm_4bit_forward")


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_OptionalKernelNotice())
