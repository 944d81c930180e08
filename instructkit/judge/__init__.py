"""Stage 4: judges (transformers, LitGPT, OpenAI-compatible servers), their prompts, MT-Bench grading, human ratings."""
