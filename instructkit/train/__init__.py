"""Stage 1: supervised finetuning with TRL's SFTTrainer and a PEFT LoRA/QLoRA adapter."""
