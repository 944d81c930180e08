"""Models: references (embedded names, .gguf files, folders, hub ids, `kind:model`), a run's base and finetune, loading, GGUF conversion, precision, and the text backends."""
