"""Stage 5's settings: the chat page, where it listens, and the models it shows."""

from __future__ import annotations

from dataclasses import dataclass, field

from instructkit.config import APIRetries, CompareModels, Finetune, LocalModel, RunFolder
from instructkit.data.responses import RESPONSES_FILE


@dataclass
class ChatConfig(RunFolder, Finetune, LocalModel, CompareModels, APIRetries):
    test_file: str = field(default="", metadata={"help": f"records offered as examples when there is no {RESPONSES_FILE} (default: <output-dir>/data/test.json)"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to serve on; 0.0.0.0 lets other machines in (there is no login)"})
    port: int = field(default=7860, metadata={"help": "port to serve on"})
    share: bool = field(default=False, metadata={"help": "also open a public gradio.live link (needs the internet; anyone with the link can use your models)"})
    max_new_tokens: int = field(default=128, metadata={"help": "the answer length the page starts with"})
    max_queue: int = field(default=16, metadata={"help": "messages that may wait for the model at once; more are turned away"})
    screenshot: str = field(default="", metadata={"help": "instead of serving: open the page in headless Chromium, send the first example, save a PNG here and exit"})
