"""instructkit: instruction finetuning with TRL + PEFT, and measuring what it did."""

__version__ = "0.1.0"
