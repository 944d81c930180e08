"""Stage 5: talk to the base model and its finetune side by side in your browser, and rate them.

After stage 1, with no arguments (the adapter in outputs/finetuned/, served on 127.0.0.1:7860):
    python part5_chat_app.py

Another run folder, another port; a merged finetune instead of base + adapter:
    python part5_chat_app.py --output-dir runs/lr1e-4 --port 7861
    python part5_chat_app.py --merged outputs/finetuned/merged

A third column with another model (stage 2's --compare models appear by themselves):
    python part5_chat_app.py --compare smol=smollm2-135m-instruct

A screenshot of the page after the first test record is answered (headless Chromium; nothing served):
    python part5_chat_app.py --screenshot outputs/chat_app.png

The same message goes to every model, each formatted as stage 2 formats it, and the answers stream in
one after the other (one model load: the base answers with the adapter switched off). Greedy by
default, so an answer to a test record is the one stage 2 stored. Pick a test record to see its
expected output, stored responses and judge scores. Ratings ("which is better", 0-100) are saved at
once to outputs/human_ratings.json; stage 4 (--compare-with) and the report read them.
The page has no login: it listens on 127.0.0.1 unless --host says otherwise, and --share is off.
"""

import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine unasked

from instructkit.app.config import ChatConfig, check  # noqa: E402
from instructkit.cli import build_parser, print_config, run_stage  # noqa: E402


def main(config: ChatConfig) -> None:
    print_config(config, "stage 5: chat app")
    check(config)  # a missing adapter refused before torch and Gradio load
    from instructkit.app.chat import serve

    serve(config)


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser(ChatConfig, __doc__)))
