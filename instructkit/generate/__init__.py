"""Stage 2: the base, the finetune and any compared model answer the test split (or multi-turn questions)."""
