"""One benchmark trial in a child process of its own, so peak memory and warmed-up state are the
trial's alone; the child prints its result as one `RESULT {json}` line."""

from __future__ import annotations

import json
import subprocess
import sys

PREFIX = "RESULT "


def report(result: dict) -> None:
    """Called in the child: hand the trial's result to the parent."""
    print(PREFIX + json.dumps(result), flush=True)


def run_child(script: str, *args: str) -> dict:
    """Run `script` with `args` in a new interpreter and return what it reported; a failed child's
    error tail is returned under "failed" rather than stopping the other trials."""
    child = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    lines = [line[len(PREFIX):] for line in child.stdout.splitlines() if line.startswith(PREFIX)]
    if child.returncode != 0 or not lines:
        return {"failed": child.stderr[-2000:]}
    return json.loads(lines[-1])
