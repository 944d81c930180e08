"""Stage 6: ship the finetune, and prove the shipped files answer as the trained model did.

After stages 1 and 2, with no arguments (reads outputs/finetuned/ and outputs/test_base_model.json):
    python part6_export.py

Stage 1b's preference-tuned adapter instead, a q8_0 GGUF only, named for Ollama:
    python part6_export.py --model preference --gguf-type q8_0 --name my-assistant

Serve the GGUF on an OpenAI-compatible endpoint (llama.cpp's server; `make llama-cpp` installs it),
and in another shell evaluate the served model beside the finetune:
    python part6_export.py --serve --port 8000
    python part2_generate_test_responses.py --compare shipped=openai:outputs-finetuned --compare-base-url http://127.0.0.1:8000/v1

Writes outputs/export/: merged/ (a transformers model with the run's chat template and EOS),
<name>-f16.gguf and <name>-q8_0.gguf (llama.cpp's converter), Modelfile (Ollama), README.md (a model
card with stages 3-4's results), parity.json (each file's greedy answers to 20 test records against
stage 2's: identical share, first differing token), leaderboard/ (AlpacaEval and FastChat answer
files) and export.json. A prompt that a runtime renders differently from training stops the stage
with both prompts shown. Killed halfway? Rerun: finished files are kept.
"""

import sys

from instructkit.cli import build_parser, print_config, run_stage
from instructkit.export.config import ExportConfig, check


def main(config: ExportConfig) -> None:
    print_config(config, "stage 6: export")
    check(config)  # bad input refused before torch loads
    from instructkit.export.serve import serve
    from instructkit.export.stage import export

    folder = export(config)
    if config.serve:
        serve(folder, config.port)


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser(ExportConfig, __doc__)))
